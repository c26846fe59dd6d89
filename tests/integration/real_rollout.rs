//! Whole rollouts on the real control plane (scripts/control-plane): a Juno-shaped studio
//! whose sessions are recreated by the real StatefulSet controller and placed by the real
//! scheduler, PDBs kept by the real disruption controller, DNS on a real knotd.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::control_plane::{ControlPlane, SESSION_ANNOTATION, Studio, upgrade_hook};
use crate::harness::{Cluster, noderoll};
use crate::knot::{KEY, Knot, PlanExtra, SERVICE_ADDRESSES, Watched, rfc2136, servicelb_plan, start_apply, watch};

/// The workstations' batch: two at a time. Sessions wait for their users for up to three
/// minutes: the users act within a second or two, but the whole suite shares two cores.
const WORKSTATIONS: &str =
    "    - {name: workstations, role: workstation, nodes: [ws01, ws02, ws03, ws04], maxUnavailable: 2}\n";

/// Users who log out of the sessions on cordoned workstations a moment after the cordon,
/// as the runbook asks them to; the StatefulSet controller recreates each session, and the
/// scheduler places it on a workstation that is still schedulable. Runs until dropped.
struct Users {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Users {
    fn start(plane: &ControlPlane) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = plane.kubeconfig();
        let scratch = plane.dir().to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ended = 0;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                let kubectl = |args: &[&str]| {
                    std::process::Command::new(crate::harness::kubectl_binary())
                        .args(args)
                        .env("KUBECONFIG", &kubeconfig)
                        .env("HOME", &scratch)
                        .output()
                        .ok()
                        .filter(|o| o.status.success())
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                };
                let Some(nodes) = kubectl(&["get", "nodes", "-o", "json"]) else { continue };
                let nodes: Value = serde_json::from_str(&nodes).unwrap_or_default();
                let cordoned: BTreeSet<&str> = nodes["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["spec"]["unschedulable"] == true)
                    .filter_map(|n| n["metadata"]["name"].as_str())
                    .collect();
                let Some(pods) = kubectl(&["get", "pods", "-n", "juno", "-o", "json"]) else { continue };
                let pods: Value = serde_json::from_str(&pods).unwrap_or_default();
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let on = pod["spec"]["nodeName"].as_str().unwrap_or_default();
                    let session = pod["metadata"]["annotations"][SESSION_ANNOTATION].is_string();
                    let deleting = pod["metadata"]["deletionTimestamp"].is_string();
                    if session && !deleting && cordoned.contains(on) {
                        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                        if kubectl(&["delete", "pod", "-n", "juno", name, "--wait=false"]).is_some() {
                            ended += 1;
                        }
                    }
                }
            }
            ended
        });
        Users { stop, thread: Some(thread) }
    }

    /// Sessions the users ended.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map_or(0, |t| t.join().expect("users thread"))
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Every session Running once more, one per StatefulSet, on a workstation.
fn assert_sessions_serve(plane: &ControlPlane, studio: &Studio) {
    plane.eventually("every session runs again", || {
        let pods: Value =
            serde_json::from_str(&plane.kubectl_ok(&["get", "pods", "-n", "juno", "-o", "json"])).unwrap_or_default();
        let running = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["annotations"][SESSION_ANNOTATION].is_string())
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| n.starts_with("ws")))
            .count();
        running == studio.workstations
    });
}

#[test]
fn a_servicelb_round_robin_rollout_upgrades_a_juno_studio_on_the_real_control_plane() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 4 };
    plane.studio(&studio);
    let knot = Knot::start(&SERVICE_ADDRESSES);
    let before = knot.answer();
    let dir = tempfile::tempdir().expect("temp dir");
    let hook = upgrade_hook();
    let extra = PlanExtra {
        upgrade: &hook,
        batches: WORKSTATIONS,
        defaults: "    sessions: {timeout: 3m}\n    drain: {timeout: 3m, force: true}\n",
        ..PlanExtra::default()
    };
    let plan = servicelb_plan(dir.path(), "round-robin", &rfc2136(dir.path(), &knot, KEY), &extra);
    let users = Users::start(&plane);
    let watched = watch(&plane, &knot, start_apply(&plane, &plan));
    let ended = users.stop();
    assert_eq!(watched.code, 0, "apply failed: {}", watched.failure());
    let Watched { seen_out, violations, samples, .. } = watched;
    assert!(violations.is_empty(), "{violations:?}");
    assert!(samples > 20, "the watcher asked knotd and the API server throughout: {samples} samples");
    assert_eq!(seen_out.len(), 3, "each service node seen cordoned and out of the record: {seen_out:?}");
    assert_eq!(knot.answer(), before, "the record set ends as it began");
    plane.assert_upgraded_once(&studio);
    assert!(ended >= studio.workstations, "the users ended each workstation's session at least once: {ended}");
    assert_sessions_serve(&plane, &studio);
    // The last service node's evicted pod is recreated after apply ends: the Deployment
    // controller's status catches up a moment later.
    plane.eventually("the Deployment's pods were recreated on the service nodes", || {
        plane.kubectl_ok(&["get", "deployment", "-n", "juno", "juno-web", "-o", "jsonpath={.status.readyReplicas}"])
            == "3"
    });
}

#[test]
fn a_single_record_rollout_with_approval_repoints_the_record_and_moves_it_back() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let knot = Knot::start(&SERVICE_ADDRESSES[..1]);
    let before = knot.answer();
    let dir = tempfile::tempdir().expect("temp dir");
    let hook = upgrade_hook();
    let extra = PlanExtra {
        upgrade: &hook,
        batches: "    - {name: workstations, role: workstation, nodes: [ws01, ws02], maxUnavailable: 1}\n",
        defaults: "    uncordon: approve\n    sessions: {timeout: 3s, onTimeout: drain}\n    drain: {timeout: 1m, force: true}\n",
        ..PlanExtra::default()
    };
    let plan = servicelb_plan(dir.path(), "single-record", &rfc2136(dir.path(), &knot, KEY), &extra);
    let mut child = start_apply(&plane, &plan);
    let stdout = child.stdout.take().expect("stdout");
    let approver = {
        let plan = plan.clone();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                if event["event"] == "awaiting-approval" {
                    let node = event["node"].as_str().expect("node").to_owned();
                    noderoll().arg("approve").arg(&plan).arg(&node).assert().success();
                }
                events.push(event);
            }
            events
        })
    };
    let watched = watch(&plane, &knot, child);
    let events = approver.join().expect("approver");
    assert_eq!(watched.code, 0, "apply failed: {}", watched.failure());
    let Watched { seen_out, violations, .. } = watched;
    assert!(violations.is_empty(), "{violations:?}");
    assert!(seen_out.contains("cp1"), "cp1 was seen cordoned with the record elsewhere: {seen_out:?}");
    let approvals: Vec<&str> =
        events.iter().filter(|e| e["event"] == "awaiting-approval").filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(approvals.len(), 5, "each node waited for its approval: {approvals:?}");
    let changes: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step-progress")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains(" → "))
        .collect();
    assert_eq!(changes.len(), 2, "only cp1's record is repointed, and back: {changes:?}");
    assert_eq!(knot.answer(), before);
    plane.assert_upgraded_once(&studio);
    assert_sessions_serve(&plane, &studio);
}
