//! `apply`, `status`, `approve` and `rehearse` through the real binary, against the
//! simulator: full rollouts, kill -9 and resume, faults, lock contention, a PDB that never
//! gives way, and a changed plan.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::Value;

use crate::harness::{Cluster, Random, SimProcess, apply_via, kill_when, noderoll, yaml_files};

/// A plan for the generated studio (cp1..3, ws01..06) with an external LB and the
/// simulator's upgrade as hook (reaching it through KUBECONFIG, which apply sets from
/// --kubeconfig). `extra` goes under `defaults`.
fn plan(dir: &Path, name: &str, extra: &str) -> PathBuf {
    plan_with(dir, name, "", "", extra)
}

/// `plan` with `spec` lines (`spec_extra`) and arguments for `noderoll sim ctl` before
/// `upgrade` (`ctl_args`).
fn plan_with(dir: &Path, name: &str, spec_extra: &str, ctl_args: &str, extra: &str) -> PathBuf {
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec:\n  loadBalancer: {{mode: external}}\n{spec_extra}  defaults:\n    upgrade:\n      command: [noderoll, sim, ctl, {ctl_args}upgrade, \"{{node}}\", --kubelet-version, v1.31.4+k3s1]\n      timeout: 1m\n    verify: {{kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}}\n{extra}  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}}\n    - {{name: workstations, role: workstation, nodes: [ws01, ws02, ws03, ws04, ws05, ws06], maxUnavailable: 2}}\n"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write plan");
    path
}

fn apply_command(sim: &SimProcess, plan: &Path, extra: &[&str]) -> std::process::Command {
    apply_via(&sim.kubeconfig(), plan, extra)
}

fn apply(sim: &SimProcess, plan: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let out = apply_command(sim, plan, extra).output().expect("apply runs");
    let events = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn apply_runs_a_plan_to_the_end_and_status_says_so() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), "full", "");
    let (code, events, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(events.first().map(|e| e["event"].clone()), Some("started".into()));
    assert_eq!(events.last().map(|e| e["event"].clone()), Some("finished".into()));
    assert_eq!(events.iter().filter(|e| e["event"] == "node-done").count(), 9);
    sim.assert_upgraded_once(9);
    let events_on_nodes = sim.kubectl_ok(&["get", "events", "-n", "default", "-o", "json"]);
    assert!(events_on_nodes.contains("NoderollCordon") && events_on_nodes.contains("NoderollUncordon"));
    assert!(sim.dir.path().join(".noderoll/full.logs/cp1/upgrade.log").is_file(), "the hook's output is kept");

    let status = noderoll().args(["status", "--output", "json"]).arg(&plan).assert().success();
    let status: Value = serde_json::from_slice(&status.get_output().stdout).expect("JSON");
    assert_eq!(status["summary"]["last"], "finished");
    assert_eq!(status["summary"]["done"], 9);

    // Running it again finds everything done and changes nothing.
    let (code, events, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(events[0]["done"], events[0]["steps"]);
    sim.assert_upgraded_once(9);
}

#[test]
fn a_batch_soak_holds_the_next_batch_until_every_node_of_the_batch_has_soaked() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), "soaked", "    soak: 3s\n    soakPer: batch\n");
    let (code, events, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 0, "{stderr}");
    let at = |event: &str, step: &str| {
        events
            .iter()
            .position(|e| e["event"] == event && e["step"] == step)
            .unwrap_or_else(|| panic!("{event} {step} in {events:#?}"))
    };
    let soak = at("step-started", "batch/control-plane/soak");
    for node in ["cp1", "cp2", "cp3"] {
        assert!(at("step-finished", &format!("{node}/uncordon")) < soak, "{node} is back before the soak");
    }
    assert!(at("step-finished", "batch/control-plane/soak") < at("step-started", "ws01/cordon"));
    let soaking: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step-progress" && e["step"] == "batch/workstations/soak")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(soaking, ["soaking ws01, ws02, ws03, ws04, ws05, ws06 for 3s"], "every node that came back");
    at("step-finished", "batch/workstations/soak");
    assert!(
        events.iter().all(|e| !e["step"].as_str().is_some_and(|s| s.ends_with("/soak") && !s.starts_with("batch/"))),
        "no node soaks on its own"
    );
    sim.assert_upgraded_once(9);
}

#[test]
fn bgp_check_commands_hold_the_upgrade_until_the_routes_are_withdrawn_and_halt_when_they_never_are() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let dir = sim.dir.path();
    let bgp = |name: &str, withdrawn: &str, timeout: &str| {
        let path = plan(dir, name, "");
        let text = std::fs::read_to_string(&path).expect("read plan").replace(
            "loadBalancer: {mode: external}",
            &format!("loadBalancer: {{mode: cilium-bgp, bgp: {{nodeLabel: bgp-policy=default, peeringTimeout: {timeout}, withdrawnCommand: {withdrawn}, announcedCommand: [\"true\"]}}}}"),
        );
        std::fs::write(&path, text).expect("write plan");
        path
    };
    let flag = dir.join("withdrawn");
    let plan = bgp("bgp", &format!("[test, -e, \"{}\"]", flag.display()), "1m");
    let creator = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(2));
            std::fs::write(flag, "").expect("create the flag");
        })
    };
    let (code, events, stderr) = apply(&sim, &plan, &[]);
    creator.join().expect("flag thread");
    assert_eq!(code, 0, "{stderr}");
    let waited = events
        .iter()
        .position(|e| {
            e["event"] == "step-progress"
                && e["step"] == "cp1/bgp-withdraw"
                && e["message"].as_str().is_some_and(|m| m.starts_with("waiting for cp1's BGP peering to go down: "))
        })
        .expect("cp1's withdrawal waited for the command");
    let upgraded = events.iter().position(|e| e["event"] == "step-started" && e["step"] == "cp1/upgrade");
    assert!(upgraded.is_some_and(|u| u > waited), "cp1 is upgraded after the wait");
    sim.assert_upgraded_once(9);

    let plan = bgp("never", "[\"false\"]", "3s");
    let (code, events, _) = apply(&sim, &plan, &[]);
    assert_eq!(code, 4, "the routes are never withdrawn: {events:#?}");
    let failed = events.iter().find(|e| e["event"] == "step-failed").expect("a step failed");
    assert_eq!(failed["step"], "cp1/bgp-withdraw");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cp1's BGP peering going down did not happen within 3s; the bgp-withdrawn command still fails"),
        "{error}"
    );
}

/// Reads `apply -o json` events until `stop` events of kind `kind` have been seen, then
/// kills the process with SIGKILL.
fn kill_after(mut child: Child, kind: &'static str, stop: usize) {
    let mut seen = 0;
    let reader = kill_when(&mut child, move |_, line| {
        let event: Value = serde_json::from_str(line).unwrap_or_default();
        if event["event"] == kind {
            seen += 1;
        }
        seen == stop
    });
    let _ = reader.join();
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

#[test]
fn a_rollout_killed_at_any_point_resumes_and_upgrades_each_node_exactly_once() {
    // Four kills at random points of the run (a 9-node plan has 91 steps); the seed is in
    // every failure message, and NODEROLL_TEST_SEED replays a run.
    let mut random = Random::from_env();
    let seed = random.seed;
    for _ in 0..4 {
        let kind = if random.below(2) == 0 { "step-started" } else { "step-finished" };
        let stop = 1 + random.below(85) as usize;
        let sim = SimProcess::start(&["--sessions-per-node", "0"]);
        let plan = plan(sim.dir.path(), "killed", "");
        let child =
            apply_command(&sim, &plan, &[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
        kill_after(child, kind, stop);
        // The killed run's Lease is still fresh, but its process is gone from this machine:
        // the resume takes the lock over without --break-lock.
        let (code, _, stderr) = apply(&sim, &plan, &[]);
        assert_eq!(code, 0, "seed {seed}: resume after {kind} #{stop}: {stderr}");
        sim.assert_upgraded_once(9);
        let journal = std::fs::read_to_string(sim.dir.path().join(".noderoll/killed.journal")).expect("journal");
        assert!(
            journal.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()),
            "seed {seed}: every journal line is a record"
        );
    }
}

#[test]
fn a_second_apply_is_refused_while_the_lock_is_held() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), "locked", "");
    let renew = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string();
    sim.create(&format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: noderoll-locked, namespace: kube-system}}\nspec: {{holderIdentity: alice@laptop/4242, leaseDurationSeconds: 3600, renewTime: \"{renew}\"}}\n"));
    let (code, _, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("alice@laptop/4242") && stderr.contains("--break-lock"), "{stderr}");
    let nodes = sim.nodes();
    assert!(
        nodes["items"].as_array().expect("items").iter().all(|n| n["spec"]["unschedulable"] != true),
        "nothing changed"
    );

    let (code, events, stderr) = apply(&sim, &plan, &["--break-lock"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(events.iter().any(|e| e["event"] == "warning" && e["message"].as_str().unwrap_or_default().contains("alice@laptop/4242")));
}

#[test]
fn a_budget_that_never_allows_eviction_halts_at_once_with_the_pdb_named_and_the_node_cordoned() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    sim.create(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: coredns-strict, namespace: kube-system}\nspec: {maxUnavailable: 0, selector: {matchLabels: {k8s-app: kube-dns}}}\n",
    );
    // The drain's timeout is the default 15 minutes: a budget that can never allow the
    // eviction halts the drain in seconds, naming the budget, its numbers and the fix.
    let plan = plan(sim.dir.path(), "blocked", "    drain: {ignoreDaemonSets: true, deleteEmptyDirData: true}\n");
    let started = std::time::Instant::now();
    let (code, events, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 4, "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "halted after {:?}", started.elapsed());
    let halted = events.iter().find(|e| e["event"] == "halted").expect("a halted event");
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("kube-system/coredns-strict") && error.contains("coredns"), "{error}");
    assert!(
        error.contains("maxUnavailable 0 with 1 pod(s)") && error.contains("can never allow an eviction"),
        "{error}"
    );
    assert!(error.contains("set maxUnavailable to at least 1"), "{error}");
    let cordoned: Vec<String> = serde_json::from_value(halted["cordoned"].clone()).expect("list");
    assert_eq!(cordoned.len(), 1, "{halted}");
    let node = &cordoned[0];
    let shown = sim.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(shown, "true");
    // Nothing else was started.
    let others = sim.nodes();
    let unschedulable =
        others["items"].as_array().expect("items").iter().filter(|n| n["spec"]["unschedulable"] == true).count();
    assert_eq!(unschedulable, 1);
    let status = noderoll().args(["status"]).arg(&plan).assert().success();
    let text = String::from_utf8_lossy(&status.get_output().stdout).into_owned();
    assert!(text.contains("halted") && text.contains("failed"), "{text}");

    // Once the budget is relaxed, running apply again finishes the rollout.
    sim.kubectl_ok(&["delete", "pdb", "-n", "kube-system", "coredns-strict"]);
    let (code, _, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 0, "{stderr}");
    sim.assert_upgraded_once(9);
}

/// Each node's `noderoll.io/phase` label and `noderoll.io/step` annotation, as
/// `PHASE STEP` (empty where there are none).
fn phases(sim: &SimProcess) -> std::collections::BTreeMap<String, String> {
    let nodes = sim.nodes();
    let items = nodes["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .map(|n| {
            let meta = &n["metadata"];
            let shown = format!(
                "{} {}",
                meta["labels"]["noderoll.io/phase"].as_str().unwrap_or_default(),
                meta["annotations"]["noderoll.io/step"].as_str().unwrap_or_default()
            );
            (meta["name"].as_str().unwrap_or_default().to_owned(), shown.trim().to_owned())
        })
        .collect()
}

#[test]
fn a_node_that_fails_within_max_failures_is_left_cordoned_and_the_rest_is_upgraded() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let dir = sim.dir.path();
    // The hook writes down the phase its node shows, then fails for a node with a
    // `broken-NODE` file beside it.
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        "node=$1; dir=$(dirname \"$0\")\nkubectl get node \"$node\" -o jsonpath='{.metadata.labels.noderoll\\.io/phase} {.metadata.annotations.noderoll\\.io/step}' > \"$dir/phase-$node\"\nif test -e \"$dir/broken-$node\"; then echo \"disk of $node is broken\" >&2; exit 1; fi\nexec noderoll sim ctl upgrade \"$node\" --kubelet-version v1.31.4+k3s1\n",
    )
    .expect("write the hook");
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: budget}}\nspec:\n  loadBalancer: {{mode: external}}\n  defaults:\n    upgrade:\n      command: [sh, \"{}\", \"{{node}}\"]\n      timeout: 1m\n    verify: {{kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}}\n  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}}\n    - {{name: workstations, role: workstation, nodes: [ws01, ws02, ws03, ws04, ws05, ws06], maxUnavailable: 2, maxFailures: 1}}\n",
        hook.display()
    );
    let plan = dir.join("budget.yaml");
    std::fs::write(&plan, text).expect("write plan");
    let broken = dir.join("broken-ws03");
    std::fs::write(&broken, "").expect("break ws03");

    let (code, events, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 7, "every node tried, one failed within the budget: {stderr}");
    let given_up = events.iter().find(|e| e["event"] == "node-failed").expect("a node-failed event");
    assert_eq!(
        (given_up["node"].as_str(), given_up["spent"].as_u64(), given_up["budget"].as_u64()),
        (Some("ws03"), Some(1), Some(1))
    );
    let last = events.last().expect("events");
    assert_eq!(last["event"], "finished", "{last}");
    assert_eq!(last["failed"][0]["step"], "ws03/upgrade", "{last}");
    assert!(
        last["failed"][0]["error"].as_str().unwrap_or_default().contains("the upgrade hook of ws03 failed"),
        "{last}"
    );
    let log = std::fs::read_to_string(dir.join(".noderoll/budget.logs/ws03/upgrade.log")).expect("the hook's log");
    assert!(log.contains("disk of ws03 is broken"), "{log}");
    assert_eq!(last["cordoned"], serde_json::json!(["ws03"]));
    // The nodes after ws03 in its lane went on: all but ws03 are done.
    assert_eq!(events.iter().filter(|e| e["event"] == "node-done").count(), 8);
    let shown = sim.kubectl_ok(&["get", "node", "ws03", "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(shown, "true", "the failed node stays cordoned");
    // Each node showed its phase while upgrading; only the failed one shows one now.
    let during = std::fs::read_to_string(dir.join("phase-ws01")).expect("the hook ran on ws01");
    assert_eq!(during, "upgrading ws01/upgrade");
    let now = phases(&sim);
    assert_eq!(now["ws03"], "failed ws03/upgrade");
    assert!(now.iter().all(|(node, shown)| node == "ws03" || shown.is_empty()), "{now:?}");
    let status = noderoll().args(["status", "--output", "json"]).arg(&plan).assert().success();
    let status: Value = serde_json::from_slice(&status.get_output().stdout).expect("JSON");
    assert!(status["summary"]["last"].as_str().unwrap_or_default().starts_with("incomplete"), "{status}");
    assert_eq!((status["summary"]["done"].as_u64(), status["summary"]["failed"].as_u64()), (Some(8), Some(1)));

    // Mended, apply retries only ws03.
    std::fs::remove_file(&broken).expect("mend ws03");
    let (code, events, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 0, "{stderr}");
    let started: Vec<&str> =
        events.iter().filter(|e| e["event"] == "step-started").filter_map(|e| e["node"].as_str()).collect();
    assert!(!started.is_empty() && started.iter().all(|n| *n == "ws03"), "only ws03 is retried: {started:?}");
    sim.assert_upgraded_once(9);
    assert!(phases(&sim).values().all(String::is_empty), "the phase is removed at the end: {:?}", phases(&sim));
}

/// Two replicas pinned to `node` under a budget of minAvailable 1: once the first is
/// evicted its replacement cannot start on the cordoned node, so the budget holds the
/// second for good, though it is not one that can never allow an eviction.
fn pin_under_a_budget(sim: &SimProcess, node: &str) {
    sim.create(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: pinned, namespace: juno}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: pinned}}}}\n  template:\n    metadata: {{labels: {{app: pinned}}}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {node}}}\n      containers: [{{name: app, image: example.invalid/pinned:1}}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: hold, namespace: juno}}\nspec: {{minAvailable: 1, selector: {{matchLabels: {{app: pinned}}}}}}\n"
    ));
}

#[test]
fn a_drain_that_times_out_deletes_what_is_left_in_the_listed_namespaces_with_on_timeout_delete() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    pin_under_a_budget(&sim, "cp1");
    let drain = "    drain: {timeout: 15s, ignoreDaemonSets: true, deleteEmptyDirData: true, onTimeout: delete, deleteNamespaces: [juno]}\n";
    let escalate = plan(sim.dir.path(), "escalate", drain);
    let (code, events, stderr) = apply(&sim, &escalate, &[]);
    assert_eq!(code, 0, "{stderr}");
    let warning =
        events.iter().find(|e| e["event"] == "warning" && e["message"].as_str().is_some_and(|m| m.contains("deleted")));
    let warning = warning.expect("the deletion is reported");
    assert!(
        warning["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cp1: deleted 1 pod(s) the drain could not evict in time: juno/pinned-"),
        "{warning}"
    );
    let journal = std::fs::read_to_string(sim.dir.path().join(".noderoll/escalate.journal")).expect("journal");
    let deletions: Vec<Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "pod-deleted")
        .collect();
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    assert_eq!(deletions[0]["step"], "cp1/drain");
    assert!(deletions[0]["pod"].as_str().is_some_and(|p| p.starts_with("juno/pinned-")), "{deletions:?}");
    sim.assert_upgraded_once(9);

    // A pod left outside the listed namespaces is never deleted: the drain halts on it.
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    pin_under_a_budget(&sim, "cp1");
    let drain = "    drain: {timeout: 15s, ignoreDaemonSets: true, deleteEmptyDirData: true, onTimeout: delete, deleteNamespaces: [kube-system]}\n";
    let escalate = plan(sim.dir.path(), "escalate", drain);
    let (code, events, stderr) = apply(&sim, &escalate, &[]);
    assert_eq!(code, 4, "{stderr}");
    let halted = events.iter().find(|e| e["event"] == "halted").expect("a halted event");
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("outside drain.deleteNamespaces (kube-system), so none is deleted")
            && error.contains("juno/pinned-"),
        "{error}"
    );
    let journal = std::fs::read_to_string(sim.dir.path().join(".noderoll/escalate.journal")).expect("journal");
    assert!(!journal.contains("pod-deleted"), "nothing was deleted");
}

#[test]
fn api_faults_and_a_short_outage_do_not_stop_a_rollout() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), "faulty", "");
    sim.ctl(&["faults", "--error-rate", "0.05", "--throttle-rate", "0.03", "--drop-rate", "0.03"]).success();
    let mut child =
        apply_command(&sim, &plan, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    // A 3 s outage once the control plane is under way.
    for line in lines.by_ref() {
        if line.contains("\"step-started\"") && line.contains("cp2/") {
            break;
        }
    }
    sim.ctl(&["faults", "--error-rate", "0.05", "--throttle-rate", "0.03", "--drop-rate", "0.03", "--outage", "3s"])
        .success();
    let rest: Vec<String> = lines.collect();
    let status = child.wait().expect("apply ends");
    assert!(status.success(), "apply failed: {}", rest.join("\n"));
    sim.ctl(&["faults"]).success();
    sim.assert_upgraded_once(9);
}

#[test]
fn a_changed_plan_is_refused_with_a_diff_unless_forced() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), "changing", "    drain: {timeout: 3s}\n");
    sim.create(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: hold, namespace: kube-system}\nspec: {maxUnavailable: 0, selector: {matchLabels: {k8s-app: kube-dns}}}\n",
    );
    let (code, _, _) = apply(&sim, &plan, &[]);
    assert_eq!(code, 4);
    let text = std::fs::read_to_string(&plan).expect("plan").replace("timeout: 3s", "timeout: 20s");
    std::fs::write(&plan, text).expect("edit plan");
    let (code, _, stderr) = apply(&sim, &plan, &[]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("-    drain: {timeout: 3s}") && stderr.contains("+    drain: {timeout: 20s}"), "{stderr}");
    sim.kubectl_ok(&["delete", "pdb", "-n", "kube-system", "hold"]);
    let (code, _, stderr) = apply(&sim, &plan, &["--force"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn approve_releases_a_node_waiting_for_approval() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path(), "approving", "    uncordon: approve\n");
    let mut child =
        apply_command(&sim, &plan, &[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut approvals = 0;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        if event["event"] == "awaiting-approval" {
            let node = event["node"].as_str().expect("node").to_owned();
            noderoll().arg("approve").arg(&plan).arg(&node).assert().success();
            approvals += 1;
        }
    }
    assert!(child.wait().expect("apply ends").success());
    assert_eq!(approvals, 9);
    sim.assert_upgraded_once(9);
}

#[test]
fn every_example_plan_rehearses_to_the_end() {
    for plan in yaml_files("plans") {
        if plan.ends_with("large-facility.yaml") {
            // 323 nodes take about three minutes of rehearsal; docs/executor.md has its run.
            continue;
        }
        let out = noderoll().arg("rehearse").arg(&plan).args(["--output", "json"]).output().expect("rehearse runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["event"] == "report").unwrap_or_else(|| {
            panic!("{}: no report\n{}", plan.display(), String::from_utf8_lossy(&out.stderr))
        })["report"]
            .clone();
        assert!(out.status.success(), "{}: {report}", plan.display());
        assert_eq!(report["outcome"], "finished", "{}", plan.display());
        let reboots = report["reboots"].as_object().expect("reboots");
        assert_eq!(reboots.len() as u64, report["nodes"].as_u64().expect("nodes"), "{}", plan.display());
        assert!(reboots.values().all(|r| r == 1), "{}: {reboots:?}", plan.display());
        // The critical path through the measured step durations bounds the makespan from
        // below; the executor's own dispatch and start-up cost is the gap.
        let bound = report["criticalPathSeconds"].as_f64().expect("criticalPathSeconds");
        let makespan = report["simulatedSeconds"].as_f64().expect("simulatedSeconds");
        assert!(bound > 0.0 && bound <= makespan, "{}: bound {bound} s, makespan {makespan} s", plan.display());
        if let Some(dns) = report["dns"].as_object() {
            assert!(dns["fewest"].as_u64() >= Some(1), "{}: the record set was emptied", plan.display());
            assert_eq!(dns["initial"], dns["last"], "{}: the records were not restored", plan.display());
        }
    }
}

/// A TCP proxy on a free loopback port in front of `target`. `stop` closes the listener
/// and every connection, as an API server whose node goes down for its upgrade does.
struct Proxy {
    address: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stopped, open) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                let mut list = open.lock().expect("lock");
                for stream in [&client, &server] {
                    list.push(stream.try_clone().expect("clone"));
                }
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { address, stop, connections }
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn apply_fails_over_to_the_next_api_server_when_the_one_in_use_goes_away() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let kubeconfig = std::fs::read_to_string(sim.kubeconfig()).expect("kubeconfig");
    let direct = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("server").to_owned();
    let target = direct.trim_start_matches("http://").parse().expect("address");
    let proxy = Proxy::start(target);
    let through_proxy = sim.dir.path().join("proxy.kubeconfig");
    std::fs::write(&through_proxy, kubeconfig.replace(&direct, &format!("http://{}", proxy.address))).expect("write");
    let servers = format!("  apiServers: [\"http://{}\", \"{direct}\"]\n", proxy.address);
    // The hook talks to the simulator directly: it stands for a machine-level upgrade.
    let ctl = format!("--kubeconfig, \"{}\", ", sim.kubeconfig().display());
    let plan = plan_with(sim.dir.path(), "failover", &servers, &ctl, "");
    let mut child =
        apply_via(&through_proxy, &plan, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    for line in lines.by_ref() {
        if line.contains("\"step-finished\"") && line.contains("cp1/drain") {
            break;
        }
    }
    proxy.stop();
    let rest: Vec<String> = lines.collect();
    let status = child.wait().expect("apply ends");
    assert!(status.success(), "apply failed after the API server went away: {}", rest.join("\n"));
    sim.assert_upgraded_once(9);
    let log = std::fs::read_to_string(sim.dir.path().join(".noderoll/failover.log")).expect("log");
    assert!(log.contains("failing over"), "the log says nothing of the failover");
}

#[test]
fn apply_finds_every_node_of_a_cluster_listed_in_pages() {
    // 1,103 nodes take three pages of 500: a selector batch must still get all of them.
    let sim = SimProcess::start(&["--workstations", "1100", "--sessions-per-node", "0"]);
    let plan = sim.dir.path().join("paged.yaml");
    std::fs::write(
        &plan,
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: paged}\nspec:\n  loadBalancer: {mode: external}\n  defaults:\n    upgrade: {command: [noderoll, sim, ctl, upgrade, \"{node}\"], timeout: 1m}\n  batches:\n    - {name: workstations, role: workstation, selector: juno-innovations.com/workstation=true, maxUnavailable: 10}\n",
    )
    .expect("write plan");
    let mut child =
        apply_command(&sim, &plan, &[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let started = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|e| e["event"] == "started");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let started = started.expect("a started event");
    assert_eq!(started["batches"][0]["nodes"], 1100, "{started}");
}

#[test]
fn a_lost_answer_to_an_eviction_or_a_cordon_is_retried_safely() {
    // Each write is carried out and its answer lost; the retry must find the pod gone or
    // going, the node already cordoned, and go on. cp1's first PATCH shows it queued when
    // its batch begins; the second is its cordon.
    for (request, after) in [("POST /api/v1/namespaces/juno/pods/", "0"), ("PATCH /api/v1/nodes/cp1", "1")] {
        let sim = SimProcess::start(&["--sessions-per-node", "0"]);
        let plan = plan(sim.dir.path(), "lost-answer", "");
        sim.ctl(&["faults", "--lose-next-answer", request, "--lose-after", after]).success();
        let (code, _, stderr) = apply(&sim, &plan, &[]);
        assert_eq!(code, 0, "{request}: {stderr}");
        assert!(sim.state()["faults"]["loseNextAnswer"].is_null(), "{request}: the answer was lost");
        sim.assert_upgraded_once(9);
    }
}

#[test]
fn every_cluster_command_reaches_the_cluster_of_the_context_it_is_given_as_kubectl_does() {
    // A kubeconfig whose current context is not one of its contexts, and whose
    // `noderoll-sim` context names the simulator: with `--context noderoll-sim` each
    // command gets as far as the cluster's answer, without it none finds a cluster.
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let kubeconfig = sim.dir.path().join("other-current-context");
    let text = std::fs::read_to_string(sim.kubeconfig()).expect("kubeconfig");
    let text = text.replace("current-context: noderoll-sim", "current-context: nowhere");
    std::fs::write(&kubeconfig, text).expect("write kubeconfig");
    // A plan naming a node the cluster lacks: the commands that plan say so, and apply
    // changes nothing.
    let plan = sim.dir.path().join("ghost.yaml");
    let text = "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: ghost}\nspec:\n  loadBalancer: {mode: external}\n  defaults:\n    upgrade: {command: [\"true\"], timeout: 1m}\n  batches:\n    - {name: ws, role: workstation, nodes: [ws01, ghost]}\n";
    std::fs::write(&plan, text).expect("write plan");
    let journal = ["--journal-configmap", "kube-system/no-such-journal"];
    let no_ghost = "the cluster has no node named ghost";
    let commands: [(&str, Vec<&str>, &str); 5] = [
        ("preview", vec![], "plan nodes the cluster does not have: ghost"),
        ("status", journal.to_vec(), "no rollout has started"),
        ("approve", [&journal[..], &["ws01"]].concat(), "does not exist"),
        ("abort", journal.to_vec(), no_ghost),
        ("apply", vec!["--yes"], no_ghost),
    ];
    for (command, extra, answer) in commands {
        let run = |context: Option<&str>| {
            let mut cmd = noderoll();
            cmd.arg(command).arg(&plan).arg("--kubeconfig").arg(&kubeconfig).args(&extra);
            if let Some(context) = context {
                cmd.args(["--context", context]);
            }
            let out = cmd.output().expect("noderoll runs");
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        };
        let flat = |s: String| s.replace(['│', '×'], " ").split_whitespace().collect::<Vec<_>>().join(" ");
        let with = flat(run(Some("noderoll-sim")));
        assert!(with.contains(answer), "{command} --context noderoll-sim: {with}");
        let without = flat(run(None));
        assert!(!without.contains(answer), "{command} on the current context reached no cluster: {without}");
    }
}
