//! API outages on the real control plane: kube-apiserver stopped for 3 s while a service
//! node upgrades, and two kube-apiservers on one etcd with the kubeconfig naming the one
//! that goes away: the rollout goes on unattended.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::Value;

use crate::control_plane::{self, ControlPlane, Shape, Studio};
use crate::harness::{Cluster, apply_via};

/// cp1..3 one at a time and ws01; `spec` goes under `spec`.
fn plan(dir: &Path, name: &str, spec: &str, hook: String) -> PathBuf {
    let batches = "    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}\n    - {name: workstations, role: workstation, nodes: [ws01]}\n";
    control_plane::plan(dir, name, &Shape { spec, hook, batches: batches.to_owned(), ..Shape::default() })
}

/// Runs apply; when the step `at` starts, restarts `component` after `seconds` down.
/// Returns apply's exit code, stderr and whether the restart succeeded.
fn apply_with_outage(
    plane: &ControlPlane,
    plan: &Path,
    at: &str,
    component: &str,
    seconds: f64,
) -> (Option<i32>, String, bool) {
    let mut child: Child = apply_via(&plane.kubeconfig(), plan, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut restart = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        if restart.is_none() && event["event"] == "step-started" && event["step"] == at {
            restart = Some(plane.restart(component, seconds));
        }
    }
    let out = child.wait_with_output().expect("apply ends");
    let restarted = restart.map(|r| r.wait_with_output().expect("restart ends"));
    let restarted_ok = restarted.as_ref().is_some_and(|r| r.status.success());
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(r) = restarted.filter(|r| !r.status.success()) {
        stderr.push_str(&format!("\nrestart failed: {}", String::from_utf8_lossy(&r.stderr)));
    }
    (out.status.code(), stderr, restarted_ok)
}

#[test]
fn a_three_second_outage_of_the_real_kube_apiserver_while_a_service_node_upgrades_is_ridden_out() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 1 };
    plane.studio(&studio);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), "outage", "", control_plane::upgrade_hook());
    let apiserver = plane.pid("kube-apiserver");
    let (code, stderr, restarted) = apply_with_outage(&plane, &plan, "cp2/wait-ready", "kube-apiserver", 3.0);
    assert!(restarted, "the API server came back: {stderr}");
    assert_ne!(plane.pid("kube-apiserver"), apiserver, "it was a new kube-apiserver process");
    assert_eq!(code, Some(0), "the rollout went on by itself: {stderr}");
    plane.assert_upgraded_once(&studio);
}

#[test]
fn with_two_real_kube_apiservers_the_rollout_fails_over_when_the_kubeconfigs_server_goes_away() {
    let plane = ControlPlane::up_with_two_apiservers();
    let studio = Studio { workstations: 1 };
    plane.studio(&studio);
    let dir = tempfile::tempdir().expect("temp dir");
    let second = plane.second_server();
    // The hook reaches the nodes through the server that stays, as a real hook reaches
    // the node itself.
    let hook = crate::control_plane::upgrade_hook_with(&plane.dir().join("kubeconfig-2"));
    let plan = plan(dir.path(), "failover", &format!("  apiServers: [\"{second}\"]\n"), hook);
    // The kubeconfig's server is gone for 25 s from cp1's drain on: longer than any retry
    // of a single request, so only the failover carries the rollout through.
    let (code, stderr, restarted) = apply_with_outage(&plane, &plan, "cp1/drain", "kube-apiserver", 25.0);
    assert!(restarted, "{stderr}");
    assert_eq!(code, Some(0), "the rollout went on through the second API server: {stderr}");
    plane.assert_upgraded_once(&studio);
    let audit = std::fs::read_to_string(plane.dir().join("kube-apiserver-2-audit.log")).unwrap_or_default();
    let noderoll_there = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["verb"] == "patch" && e["objectRef"]["resource"] == "nodes" && e["objectRef"]["subresource"].is_null()
        })
        .filter(|e| e["userAgent"].as_str().is_some_and(|a| !a.starts_with("kubectl")))
        .count();
    assert!(noderoll_there > 0, "noderoll's cordons and uncordons reached the second API server");
}
