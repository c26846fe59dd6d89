//! The quorum gate against a real 3-member etcd on loopback ports (`etcd.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::etcd::{EtcdCluster, certificate_authority, write_certificate};
use crate::harness::{Cluster, SimProcess, apply_via, noderoll};

/// A plan for the simulator's control plane with etcd as quorum source (and, for a TLS
/// cluster, its CA and client certificate).
fn plan(dir: &Path, etcd: &EtcdCluster, timeout: &str) -> PathBuf {
    let tls = etcd.tls();
    let settings = etcd_settings(etcd, tls.map(|t| t.ca.as_path()), tls.map(|t| (t.cert.as_path(), t.key.as_path())));
    plan_with(dir, &settings, timeout)
}

/// The plan's `etcd:` mapping: `etcd`'s endpoints, and the TLS files given.
fn etcd_settings(etcd: &EtcdCluster, ca: Option<&Path>, client: Option<(&Path, &Path)>) -> String {
    let ca = ca.map_or_else(String::new, |ca| format!(", caFile: {}", ca.display()));
    let client = client
        .map_or_else(String::new, |(cert, key)| format!(", certFile: {}, keyFile: {}", cert.display(), key.display()));
    format!("{{endpoints: [{}]{ca}{client}}}", etcd.endpoints())
}

/// `plan` with the given `etcd:` settings.
fn plan_with(dir: &Path, etcd: &str, timeout: &str) -> PathBuf {
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: quorum}}\nspec:\n  loadBalancer: {{mode: external}}\n  quorum:\n    etcd: {etcd}\n    timeout: {timeout}\n  defaults:\n    upgrade:\n      command: [noderoll, sim, ctl, upgrade, \"{{node}}\", --kubelet-version, v1.31.4+k3s1]\n      timeout: 1m\n    verify: {{kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}}\n  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}}\n",
    );
    let path = dir.join("quorum.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

fn apply(sim: &SimProcess, plan: &Path) -> Child {
    apply_via(&sim.kubeconfig(), plan, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("apply starts")
}

fn unschedulable(sim: &SimProcess, node: &str) -> bool {
    sim.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"]) == "true"
}

/// `preview --etcd` of `plan`: its text.
fn live_preview(plan: &Path) -> String {
    let preview = noderoll().arg("preview").arg(plan).arg("--etcd").assert().success();
    String::from_utf8_lossy(&preview.get_output().stdout).into_owned()
}

/// `live_preview` until its text contains `want`, for up to 30 s: right after a member
/// stops, or on a busy machine, a call may take longer than the 1 s it is allowed.
fn live_preview_until(plan: &Path, want: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = live_preview(plan);
        if text.contains(want) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "no {want:?} within 30 s: {text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Rolls the control plane through the gate of a healthy `etcd`; `preview --etcd` of the
/// plan then shows every member healthy.
fn roll_through(etcd: &EtcdCluster) -> (SimProcess, PathBuf) {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), etcd, "20s");
    let out = apply(&sim, &plan).wait_with_output().expect("apply ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(events.iter().any(|e| e["event"] == "step-finished" && e["step"] == "batch/control-plane/quorum"));
    for node in ["cp1", "cp2", "cp3"] {
        assert!(!unschedulable(&sim, node));
    }
    live_preview_until(&plan, "etcd (live): 3 member(s), 3 healthy");
    (sim, plan)
}

#[test]
fn a_healthy_etcd_lets_the_control_plane_roll_through() {
    roll_through(&EtcdCluster::start());
}

#[test]
fn an_etcd_served_over_tls_as_k3s_serves_it_gates_the_control_plane() {
    // k3s's etcd takes only clients with a certificate its CA signed; the plan names the
    // files as k3s keeps them.
    let mut etcd = EtcdCluster::start_tls();
    let (_sim, plan) = roll_through(&etcd);
    etcd.kill(2);
    let text = live_preview_until(&plan, "etcd (live): 3 member(s), 2 healthy");
    assert!(text.contains("unhealthy: cp3"), "{text}");
}

#[test]
fn an_etcd_served_over_tls_refuses_a_client_without_the_right_certificates() {
    let etcd = EtcdCluster::start_tls();
    let tls = etcd.tls().expect("TLS");
    let dir = tempfile::tempdir().expect("temp dir");
    let other_ca = certificate_authority();
    let other_ca_file = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca_file, other_ca.pem()).expect("write CA");
    let (other_cert, other_key) = write_certificate(dir.path(), "other-client", &["noderoll"], &other_ca);
    // Each refusal says which setting to change, not only the TLS alert.
    let refused = |ca: &Path, client: Option<(&Path, &Path)>, hint: &str| {
        let settings = etcd_settings(&etcd, Some(ca), client);
        let text = live_preview_until(&plan_with(dir.path(), &settings, "20s"), hint);
        assert!(text.contains("etcd (live): cannot read it"), "{text}");
    };
    refused(&tls.ca, None, "set certFile and keyFile");
    refused(&other_ca_file, Some((&tls.cert, &tls.key)), "caFile does not verify");
    refused(&tls.ca, Some((&other_cert, &other_key)), "etcd refused certFile");
}

#[test]
fn an_alarm_makes_a_member_unhealthy_in_the_live_preview() {
    let etcd = EtcdCluster::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), &etcd, "20s");
    let status = etcd.http(2, "POST", "/v3/maintenance/status", "{}");
    let id = status.split("\"member_id\":\"").nth(1).and_then(|r| r.split('"').next()).expect("member id").to_owned();
    let raised = etcd.http(
        2,
        "POST",
        "/v3/maintenance/alarm",
        &format!("{{\"action\":\"ACTIVATE\",\"memberID\":\"{id}\",\"alarm\":\"NOSPACE\"}}"),
    );
    assert!(raised.contains("NOSPACE"), "{raised}");
    let text = live_preview(&plan);
    // etcd raises an alarm cluster-wide: every member's /health turns false, and its status
    // names the alarm.
    assert!(text.contains("unhealthy: cp3") && text.contains("alarm:NOSPACE"), "{text}");
}

#[test]
fn a_stopped_member_blocks_the_next_control_plane_node_until_it_is_back() {
    let mut etcd = EtcdCluster::start();
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), &etcd, "2m");
    etcd.kill(2);
    let mut child = apply(&sim, &plan);
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let mut reason = String::new();
    for line in lines.by_ref() {
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        if event["event"] == "step-progress"
            && event["message"].as_str().is_some_and(|m| m.contains("waiting for etcd"))
        {
            reason = event["message"].as_str().unwrap_or_default().to_owned();
            break;
        }
    }
    assert!(reason.contains("cp3"), "the wait names the unhealthy member: {reason}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!unschedulable(&sim, "cp1"), "no control-plane node is taken out while a member is down");
    etcd.restart(2);
    let rest: Vec<String> = lines.collect();
    let status = child.wait().expect("apply ends");
    assert!(status.success(), "{}", rest.join("\n"));
    for node in ["cp1", "cp2", "cp3"] {
        assert!(!unschedulable(&sim, node));
    }
}

#[test]
fn a_member_that_never_comes_back_halts_with_its_node_cordoned() {
    let mut etcd = EtcdCluster::start();
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), &etcd, "3s");
    let mut child = apply(&sim, &plan);
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    for line in lines.by_ref() {
        if line.contains("\"step-started\"") && line.contains("cp1/upgrade") {
            break;
        }
    }
    etcd.kill(0); // cp1's member goes down with its node and stays down
    let rest: Vec<String> = lines.collect();
    let status = child.wait().expect("apply ends");
    assert_eq!(status.code(), Some(4), "{}", rest.join("\n"));
    let halted: Value = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "halted")
        .expect("halted");
    assert_eq!(halted["cordoned"], serde_json::json!(["cp1"]));
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cp1's etcd member") && error.contains("stays cordoned"), "{error}");
    assert!(unschedulable(&sim, "cp1") && !unschedulable(&sim, "cp2"));
    let journal = std::fs::read_to_string(sim.dir.path().join(".noderoll/quorum.journal")).expect("journal");
    assert!(
        journal.contains("\"step-failed\"") && journal.contains("cp1/wait-ready") && journal.contains("\"halted\"")
    );
}

#[test]
fn without_etcd_endpoints_a_control_plane_node_lost_mid_batch_stops_the_next_one() {
    // No `quorum.etcd`: etcd-role nodes' readiness stands in for member health. cp3 dies
    // for good while cp1 is upgraded; taking cp2 out then would leave one member of three.
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan =
        crate::harness::small_plan(sim.dir.path(), "lossy", "quorum: {timeout: 3s}", crate::harness::SIM_UPGRADE);
    let mut child = apply(&sim, &plan);
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = stdout.lines().map_while(Result::ok);
    assert!(
        lines.by_ref().any(|l| l.contains("\"step-started\"") && l.contains("\"cp1/upgrade\"")),
        "cp1's upgrade starts"
    );
    sim.ctl(&["reboot", "cp3", "--fails"]).success();
    let rest: Vec<Value> = lines.filter_map(|l| serde_json::from_str(&l).ok()).collect();
    let status = child.wait().expect("apply exits");
    assert_eq!(status.code(), Some(4), "{:?}", rest.last());
    assert!(
        !rest.iter().any(|e| e["event"] == "step-finished" && e["node"] == "cp2"),
        "cp2 was not taken out while cp3 is down"
    );
    let failed = rest.iter().find(|e| e["event"] == "step-failed").expect("a step failed");
    assert_eq!(failed["step"], "cp2/cordon", "{failed}");
    assert!(
        failed["error"].as_str().unwrap_or_default().contains("cp3"),
        "the error names the lost member's node: {failed}"
    );
    assert!(!unschedulable(&sim, "cp1") && !unschedulable(&sim, "cp2"), "cp1 finished, cp2 untouched");
}

/// Two pods of a Deployment pinned to `node` under a budget keeping one of them: the first
/// is evicted, its replacement cannot start on the cordoned node, so the second is held
/// until the budget `hold` is deleted. (A budget that could never allow an eviction, such as
/// maxUnavailable 0, would halt the drain at once instead of holding it.)
fn hold_drain_of(sim: &SimProcess, node: &str) {
    sim.create(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: pinned, namespace: juno}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: pinned}}}}\n  template:\n    metadata: {{labels: {{app: pinned}}}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {node}}}\n      containers: [{{name: app, image: example.invalid/pinned:1}}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: hold, namespace: juno}}\nspec: {{minAvailable: 1, selector: {{matchLabels: {{app: pinned}}}}}}\n"
    ));
}

/// Runs apply until `node`'s drain is held by the budget `hold`, calls `lose` there (after
/// the node's chain began, and so after its first quorum check), releases the drain and
/// returns apply's exit code and every event.
fn lose_a_member_during_the_drain_of(
    sim: &SimProcess,
    plan: &Path,
    node: &str,
    lose: impl FnOnce(),
) -> (i32, Vec<Value>) {
    let mut child = apply(sim, plan);
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut events: Vec<Value> = Vec::new();
    let mut lines = stdout.lines().map_while(Result::ok);
    let drain = format!("{node}/drain");
    for line in lines.by_ref() {
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        let held = event["event"] == "step-progress"
            && event["step"] == drain.as_str()
            && event["message"]
                .as_str()
                .is_some_and(|m| m.contains("held by a disruption budget") && !m.contains(" 0 held"));
        events.push(event);
        if held {
            break;
        }
    }
    assert!(
        events.iter().any(|e| e["event"] == "step-progress" && e["step"] == drain.as_str()),
        "{node}'s drain was held: {events:?}"
    );
    lose();
    sim.kubectl_ok(&["delete", "pdb", "-n", "juno", "hold"]);
    events.extend(lines.filter_map(|l| serde_json::from_str(&l).ok()));
    let status = child.wait().expect("apply exits");
    (status.code().unwrap_or(-1), events)
}

/// The run halted at `node`'s upgrade, naming `lost`, without taking `node` down.
fn assert_the_upgrade_was_refused(sim: &SimProcess, code: i32, events: &[Value], node: &str, lost: &str) {
    assert_eq!(code, 4, "{:?}", events.last());
    assert!(
        events.iter().any(|e| e["event"] == "step-finished" && e["step"] == format!("{node}/drain")),
        "the drain finished once released"
    );
    let failed = events.iter().find(|e| e["event"] == "step-failed").expect("a step failed");
    assert_eq!(failed["step"], format!("{node}/upgrade"), "{failed}");
    assert!(failed["error"].as_str().unwrap_or_default().contains(lost), "the error names {lost}: {failed}");
    let reboots = sim.state()["reboots"].clone();
    assert!(reboots.get(node).is_none(), "{node} was not taken down: {reboots}");
    assert!(unschedulable(sim, node), "{node} stays cordoned, as the halt says");
    let halted = events.iter().find(|e| e["event"] == "halted").expect("halted");
    assert!(halted.to_string().contains(node), "the halt names {node}: {halted}");
}

#[test]
fn a_member_lost_during_the_drain_stops_the_upgrade() {
    // The quorum check before cp2's chain passed; cp3's member dies while cp2 drains. The
    // upgrade, which takes cp2's member down, must see it.
    let mut etcd = EtcdCluster::start();
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    hold_drain_of(&sim, "cp2");
    let plan = plan(sim.dir.path(), &etcd, "3s");
    let (code, events) = lose_a_member_during_the_drain_of(&sim, &plan, "cp2", || etcd.kill(2));
    assert_the_upgrade_was_refused(&sim, code, &events, "cp2", "cp3");
}

#[test]
fn without_etcd_endpoints_a_control_plane_node_lost_during_the_drain_stops_the_upgrade() {
    // Run 35 of the chaos suite of 2026-11-25: cp3 was lost after cp2's chain began.
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    hold_drain_of(&sim, "cp2");
    let plan =
        crate::harness::small_plan(sim.dir.path(), "lossy", "quorum: {timeout: 3s}", crate::harness::SIM_UPGRADE);
    let (code, events) = lose_a_member_during_the_drain_of(&sim, &plan, "cp2", || {
        sim.ctl(&["reboot", "cp3", "--fails"]).success();
    });
    assert_the_upgrade_was_refused(&sim, code, &events, "cp2", "cp3");
}
