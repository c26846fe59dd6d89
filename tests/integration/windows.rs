//! Maintenance windows against the simulator, on a plan clock that runs at the simulator's
//! speed (`apply --time-scale --clock-start`, `rehearse --from`): no node starts outside a
//! window, nodes in progress finish (or stop, with `onWindowEnd: halt`), and a run started
//! outside a window waits for the next one.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{Cluster, SimProcess, apply_via, noderoll};

/// Real seconds per simulated second, for the simulator and the plan clock alike: a
/// 20-minute gap between windows passes in 6 s.
const SCALE: &str = "0.005";

/// Six workstations, two at a time, inside `window`.
fn plan(dir: &Path, window: &str) -> PathBuf {
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: windowed}}\nspec:\n  loadBalancer: {{mode: external}}\n  window: {window}\n  defaults:\n    upgrade:\n      command: [noderoll, sim, ctl, upgrade, \"{{node}}\", --kubelet-version, v1.31.4+k3s1]\n    verify: {{kubeletVersion: v1.31.4+k3s1}}\n  batches:\n    - {{name: workstations, role: workstation, nodes: [ws01, ws02, ws03, ws04, ws05, ws06], maxUnavailable: 2}}\n"
    );
    let path = dir.join("windowed.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

/// `apply --until-window-end` (or not) on a clock starting at `clock_start`.
fn apply(sim: &SimProcess, plan: &Path, clock_start: &str, until_window_end: bool) -> (i32, Vec<Value>) {
    let mut args = vec!["--time-scale", SCALE, "--clock-start", clock_start];
    if until_window_end {
        args.push("--until-window-end");
    }
    let out = apply_via(&sim.kubeconfig(), plan, &args).output().expect("apply runs");
    let events = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(out.status.code().is_some(), "apply was killed: {}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), events)
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn nodes_started(events: &[Value]) -> Vec<String> {
    of_kind(events, "step-started")
        .iter()
        .filter(|e| e["action"] == "cordon")
        .map(|e| e["node"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn cordoned(sim: &SimProcess) -> Vec<String> {
    sim.nodes()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|n| n["spec"]["unschedulable"] == true)
        .map(|n| n["metadata"]["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_window_that_closes_stops_new_nodes_and_the_next_run_resumes_in_the_next_window() {
    let sim = SimProcess::start_at(SCALE, &["--sessions-per-node", "0"]);
    // Windows of 4 minutes every 20; a node takes about 2.5 simulated minutes.
    let plan = plan(sim.dir.path(), "{cron: \"*/20 * * * *\", duration: 4m, onWindowEnd: finish}");

    // Started a minute before the window: it waits, runs until the window closes, lets
    // the nodes in progress finish, then stops.
    let (code, first) = apply(&sim, &plan, "2026-11-27T21:59:00Z", true);
    assert_eq!(code, 0, "a scheduled run that ends with its window exits 0: {first:?}");
    let waits = of_kind(&first, "waiting-for-window");
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert_eq!(waits[0]["opens"], "2026-11-27T22:00:00Z");
    assert_eq!(waits[0]["nodesLeft"], 6);
    let paused = of_kind(&first, "paused");
    assert_eq!(paused.len(), 1, "the run pauses: {:?}", first.last());
    assert_eq!(paused[0]["opens"], "2026-11-27T22:20:00Z");
    assert_eq!(paused[0]["cordoned"], serde_json::json!([]));
    let started = nodes_started(&first);
    let done = of_kind(&first, "node-done").len();
    assert!((2..6).contains(&started.len()), "some nodes, not all, started in the window: {started:?}");
    assert_eq!(done, started.len(), "every node that started finished (onWindowEnd: finish)");
    assert!(cordoned(&sim).is_empty(), "a paused run leaves nothing cordoned");
    let reboots = sim.state()["reboots"].as_object().cloned().unwrap_or_default();
    assert_eq!(reboots.len(), started.len(), "nodes not started are untouched: {reboots:?}");

    let status = noderoll().args(["status", "--output", "json"]).arg(&plan).assert().success();
    let status: Value = serde_json::from_slice(&status.get_output().stdout).expect("JSON");
    assert_eq!(status["summary"]["last"], "paused until the next window");

    // The next run starts between windows: it starts no node before 22:20, then finishes.
    let (code, second) = apply(&sim, &plan, "2026-11-27T22:10:00Z", false);
    assert_eq!(code, 0, "{:?}", second.last());
    let first_wait = second.iter().position(|e| e["event"] == "waiting-for-window").expect("it waits");
    let first_node = second.iter().position(|e| e["event"] == "step-started" && e["node"].is_string());
    assert!(first_node.is_some_and(|n| n > first_wait), "no node starts before the window opens");
    assert_eq!(second[first_wait]["opens"], "2026-11-27T22:20:00Z");
    assert_eq!(second[first_wait]["nodesLeft"], 6 - done);
    let mut all = started.clone();
    all.extend(nodes_started(&second));
    all.sort();
    assert_eq!(all, ["ws01", "ws02", "ws03", "ws04", "ws05", "ws06"], "each node started in exactly one run");
    assert_eq!(second.last().map(|e| e["event"].clone()), Some("finished".into()));
    sim.assert_upgraded_once(6);
}

#[test]
fn on_window_end_halt_stops_nodes_in_progress_where_they_are_until_the_next_window() {
    let sim = SimProcess::start_at(SCALE, &["--sessions-per-node", "0"]);
    // A one-minute window is shorter than a node's reboot: the first two nodes are
    // still coming back when it closes.
    let plan = plan(sim.dir.path(), "{cron: \"*/20 * * * *\", duration: 1m, onWindowEnd: halt}");
    let (code, first) = apply(&sim, &plan, "2026-11-27T22:00:00Z", true);
    assert_eq!(code, 0, "{:?}", first.last());
    let paused = of_kind(&first, "paused");
    assert_eq!(paused.len(), 1, "{:?}", first.last());
    assert_eq!(paused[0]["cordoned"], serde_json::json!(["ws01", "ws02"]), "they stop cordoned");
    assert_eq!(cordoned(&sim), ["ws01", "ws02"]);
    assert!(of_kind(&first, "node-done").is_empty(), "no node finished its chain after the window");
    assert!(
        !of_kind(&first, "step-started").iter().any(|e| e["action"] == "uncordon"),
        "nothing past the step in flight at the close ran"
    );

    // Resumed in the next window, they finish and the rest follow.
    let (code, second) = apply(&sim, &plan, "2026-11-27T22:19:50Z", false);
    assert_eq!(code, 0, "{:?}", second.last());
    assert_eq!(second.last().map(|e| e["event"].clone()), Some("finished".into()));
    sim.assert_upgraded_once(6);
}

#[test]
fn rehearse_from_an_instant_counts_the_windows_a_rollout_takes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), "{cron: \"*/20 * * * *\", duration: 4m, timezone: Europe/London}");
    let out = noderoll()
        .arg("rehearse")
        .arg(&plan)
        .args(["--from", "2026-11-27T21:59:00Z", "--time-scale", "0.002", "--sessions-per-node", "0", "-o", "json"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let report: Value = stdout.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()).expect("report");
    let report = &report["report"];
    assert_eq!(report["outcome"], "finished");
    assert_eq!(report["windowsCounted"], true);
    let windows = report["windowsNeeded"].as_u64().expect("windows");
    assert!((2..=3).contains(&windows), "6 nodes of ~2.5 min, 2 at a time, in 4-minute windows: {windows}");
    let ends: jiff::Timestamp = report["endsAt"].as_str().expect("endsAt").parse().expect("instant");
    let last_window_opens: jiff::Timestamp =
        if windows == 2 { "2026-11-27T22:20:00Z" } else { "2026-11-27T22:40:00Z" }.parse().expect("instant");
    assert!(ends > last_window_opens, "it ends in its last window, at {ends}");
}
