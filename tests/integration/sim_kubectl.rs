//! The simulator, driven by real kubectl: what operators run in the runbook works against
//! it as against a cluster.

use crate::harness::{Cluster, SimProcess};

#[test]
fn kubectl_lists_nodes_and_pods_with_server_side_columns() {
    let sim = SimProcess::start(&["--workstations", "4"]);
    let nodes = sim.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    let header = nodes.lines().next().expect("header");
    for column in ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "OS-IMAGE", "CONTAINER-RUNTIME"] {
        assert!(header.contains(column), "{column} missing from {header}");
    }
    assert!(nodes.contains("cp1") && nodes.contains("ws04") && !nodes.contains("ws05"), "{nodes}");
    assert!(nodes.lines().any(|l| l.starts_with("cp2") && l.contains("control-plane,etcd,master")), "{nodes}");
    sim.eventually("every pod runs", || {
        let pods = sim.kubectl_ok(&["get", "pods", "-A", "-o", "wide", "--no-headers"]);
        !pods.is_empty() && pods.lines().all(|l| l.contains("Running"))
    });
    let sessions = sim.kubectl_ok(&["get", "pods", "-n", "juno-sessions", "-o", "wide", "--no-headers"]);
    assert_eq!(sessions.lines().count(), 8, "2 sessions on each of 4 workstations:\n{sessions}");
    assert!(sessions.lines().all(|l| l.contains(" ws0")), "sessions run on workstations only:\n{sessions}");
    let on_ws01 = sim.kubectl_ok(&["get", "pods", "-A", "--field-selector", "spec.nodeName=ws01", "--no-headers"]);
    assert_eq!(on_ws01.lines().count(), 3, "two sessions and the ServiceLB pod:\n{on_ws01}");
    let workstations = sim.kubectl_ok(&["get", "nodes", "-l", "juno-innovations.com/workstation=true", "-o", "name"]);
    assert_eq!(workstations.lines().count(), 4, "{workstations}");
    let pdbs = sim.kubectl_ok(&["get", "pdb", "-A"]);
    assert!(pdbs.contains("ALLOWED DISRUPTIONS") && pdbs.contains("juno-service-1"), "{pdbs}");
}

#[test]
fn cordon_drain_and_uncordon_move_the_workload() {
    let sim = SimProcess::start(&["--workstations", "3"]);
    sim.eventually("every pod runs", || {
        let pods = sim.kubectl_ok(&["get", "pods", "-A", "--no-headers"]);
        pods.lines().all(|l| l.contains("Running"))
    });
    assert!(sim.kubectl_ok(&["cordon", "ws01"]).contains("node/ws01 cordoned"));
    let node = sim.kubectl_ok(&["get", "node", "ws01", "--no-headers"]);
    assert!(node.contains("Ready,SchedulingDisabled"), "{node}");
    let drain =
        sim.kubectl(&["drain", "ws01", "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout", "60s"]);
    let stderr = String::from_utf8_lossy(&drain.stderr);
    let stdout = String::from_utf8_lossy(&drain.stdout);
    assert!(drain.status.success(), "drain failed: {stderr}");
    assert!(stdout.contains("node/ws01 drained"), "{stdout}");
    assert!(stderr.contains("ignoring DaemonSet-managed Pods: kube-system/svclb-traefik-"), "{stderr}");
    let left = sim.kubectl_ok(&["get", "pods", "-A", "--field-selector", "spec.nodeName=ws01", "--no-headers"]);
    assert_eq!(left.lines().count(), 1, "only the DaemonSet pod stays:\n{left}");
    assert!(left.contains("svclb-traefik"), "{left}");
    // Ended sessions come back (after the 30 s simulated reconnect delay) elsewhere.
    sim.eventually("the sessions are recreated on other workstations", || {
        let sessions = sim.kubectl_ok(&["get", "pods", "-n", "juno-sessions", "-o", "wide", "--no-headers"]);
        sessions.lines().count() == 6 && sessions.lines().all(|l| l.contains("Running") && !l.contains("ws01"))
    });
    assert!(sim.kubectl_ok(&["uncordon", "ws01"]).contains("node/ws01 uncordoned"));
    let unschedulable = sim.kubectl_ok(&["get", "node", "ws01", "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable, "");
}

#[test]
fn a_drain_blocked_by_a_pdb_retries_then_times_out() {
    let sim = SimProcess::start(&["--workstations", "1", "--services", "1"]);
    sim.eventually("the service runs", || {
        sim.kubectl_ok(&["get", "pods", "-n", "juno", "--no-headers"]).lines().filter(|l| l.contains("1/1")).count()
            == 2
    });
    sim.kubectl_ok(&["delete", "pdb", "-n", "juno", "juno-service-1"]);
    sim.create(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: juno-service-1, namespace: juno}\n\
         spec: {minAvailable: 2, selector: {matchLabels: {app: juno-service-1}}}\n",
    );
    sim.eventually("the budget allows no disruption", || {
        sim.kubectl_ok(&["get", "pdb", "-n", "juno", "juno-service-1", "-o", "jsonpath={.status.disruptionsAllowed}"])
            == "0"
    });
    let node = sim.kubectl_ok(&["get", "pods", "-n", "juno", "-o", "jsonpath={.items[0].spec.nodeName}"]);
    let drain = sim.kubectl(&["drain", &node, "--ignore-daemonsets", "--timeout", "7s"]);
    let stderr = String::from_utf8_lossy(&drain.stderr);
    assert!(!drain.status.success(), "the drain must fail");
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "kubectl prints the API server's refusal: {stderr}"
    );
    assert!(stderr.contains("will retry after 5s"), "kubectl retried: {stderr}");
    assert!(stderr.contains("global timeout reached: 7s"), "{stderr}");
    let still = sim.kubectl_ok(&["get", "pods", "-n", "juno", "--field-selector", &format!("spec.nodeName={node}")]);
    assert!(still.contains("juno-service-1"), "the protected pod stays: {still}");
}

#[test]
fn the_audit_log_records_every_request_with_verb_and_user_agent() {
    let sim = SimProcess::start(&["--workstations", "1"]);
    sim.kubectl_ok(&["get", "nodes"]);
    sim.kubectl_ok(&["cordon", "ws01"]);
    let audit = sim.dir.path().join("audit.jsonl");
    sim.eventually("the audit log has the patch", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"verb\":\"patch\""))
    });
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let entries: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    let list = entries.iter().find(|e| e["verb"] == "list" && e["path"] == "/api/v1/nodes").expect("the list");
    assert_eq!(list["status"], 200);
    assert!(list["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl")), "{list}");
    assert!(list["query"].as_str().is_some_and(|q| q.contains("limit=500")), "{list}");
    for field in ["time", "method", "latencyMs"] {
        assert!(!list[field].is_null(), "{field} missing: {list}");
    }
    let patch = entries.iter().find(|e| e["verb"] == "patch").expect("the cordon patch");
    assert_eq!(patch["path"], "/api/v1/nodes/ws01");
}

#[test]
fn ctl_upgrades_reboots_and_injects_faults() {
    let sim = SimProcess::start(&["--workstations", "1", "--reboot-time", "60s"]);
    let boot_id = || sim.kubectl_ok(&["get", "node", "ws01", "-o", "jsonpath={.status.nodeInfo.bootID}"]);
    let before = boot_id();
    sim.ctl(&["upgrade", "ws01", "--kubelet-version", "v1.31.4+k3s1", "--os-image", "Debian GNU/Linux 13 (trixie)"])
        .success();
    let status = sim.kubectl_ok(&["get", "node", "ws01", "--no-headers"]);
    assert!(status.contains("NotReady"), "the node reboots at once: {status}");
    sim.eventually("the node is back, upgraded", || {
        let line = sim.kubectl_ok(&["get", "node", "ws01", "-o", "wide", "--no-headers"]);
        line.contains(" Ready ") && line.contains("v1.31.4+k3s1") && line.contains("Debian GNU/Linux 13 (trixie)")
    });
    assert_ne!(boot_id(), before, "a reboot changes the bootID");

    sim.ctl(&["faults", "--error-rate", "1"]).success();
    let failed = sim.kubectl(&["get", "nodes", "--request-timeout", "5s"]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("simulated internal error"), "{failed:?}");
    // kubectl retries dropped connections, so only an outage longer than its timeout shows.
    sim.ctl(&["faults", "--outage", "60s"]).success();
    let refused = sim.kubectl(&["get", "nodes", "--request-timeout", "2s"]);
    assert!(!refused.status.success(), "no answer during the outage");
    sim.ctl(&["faults"]).success();
    sim.kubectl_ok(&["get", "nodes"]);
    let state: serde_json::Value =
        serde_json::from_slice(&sim.ctl(&["state"]).success().get_output().stdout).expect("state is JSON");
    assert_eq!(state["nodes"], 4);
    assert_eq!(state["faults"]["errorRate"], 0.0);

    sim.ctl(&["reboot", "nonexistent"]).failure().stderr(predicates::str::contains("nodes \"nonexistent\" not found"));
}

#[test]
fn a_snapshot_of_a_cluster_serves_the_same_objects() {
    let first = SimProcess::start(&["--workstations", "2"]);
    first.eventually("every pod runs", || {
        first.kubectl_ok(&["get", "pods", "-A", "--no-headers"]).lines().all(|l| l.contains("Running"))
    });
    let mut snapshot = first.kubectl_ok(&["get", "nodes,pods,pdb,deploy,sts,ds", "-A", "-o", "yaml"]);
    snapshot = snapshot.replacen(
        "items:\n",
        "items:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: juno, namespace: juno}\n  spec: {}\n",
        1,
    );
    let path = first.dir.path().join("snapshot.yaml");
    std::fs::write(&path, &snapshot).expect("write snapshot");
    let pods_before = first.kubectl_ok(&["get", "pods", "-A", "-o", "name"]);
    let second = SimProcess::start(&["--snapshot", path.to_str().expect("utf-8")]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pods_after = second.kubectl_ok(&["get", "pods", "-A", "-o", "name"]);
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&pods_after), sorted(&pods_before), "the copy adopts every pod and starts none");
    let deployments = second.kubectl_ok(&["get", "deploy", "-n", "juno", "--no-headers"]);
    assert!(deployments.lines().all(|l| l.contains("2/2")), "{deployments}");
    let (status, stderr) = second.terminate();
    assert!(status.success(), "SIGTERM stops the simulator cleanly: {status}");
    assert!(stderr.contains("v1 Service juno): not simulated, skipped"), "{stderr}");
    assert!(stderr.contains("noderoll sim: stopped"), "{stderr}");
}
