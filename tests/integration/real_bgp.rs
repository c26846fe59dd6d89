//! Cilium BGP on the real control plane: the `CiliumBGPNodeConfig` CRD served by the real
//! API server, and a stand-in for Cilium's operator and agent (a thread of the test, with
//! kubectl) that keeps one `CiliumBGPNodeConfig` per labelled node with an established
//! peer, as Cilium 1.18's agent writes `status.bgpInstances[].peers[]`, and deletes it a
//! second after the node loses its label. `bgp-withdraw` must wait for that deletion
//! before the node is upgraded, and `bgp-restore` for the peer to be established again;
//! a node whose session never goes down halts the rollout before its upgrade.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::control_plane::{ControlPlane, Shape, Studio, plan};
use crate::harness::{Cluster, apply_via, kubectl_binary};

/// The CRD as Cilium installs it, reduced to what the API server needs to serve it: the
/// names, the scope and the status subresource (its schema left open).
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: ciliumbgpnodeconfigs.cilium.io}
spec:
  group: cilium.io
  scope: Cluster
  names: {kind: CiliumBGPNodeConfig, listKind: CiliumBGPNodeConfigList, plural: ciliumbgpnodeconfigs, singular: ciliumbgpnodeconfig, shortNames: [cbgpnode]}
  versions:
    - name: v2
      served: true
      storage: true
      subresources: {status: {}}
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
";

const LABEL: &str = "bgp-policy";

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(kubectl_binary())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// One pass of the stand-in operator and agent over `nodes`: a labelled node without a
/// `CiliumBGPNodeConfig` gets one, then its established peer; an unlabelled node's is
/// deleted after a second, unless the node is in `stuck`.
fn reconcile(kubeconfig: &Path, nodes: &[&str], stuck: &[&str]) {
    for &node in nodes {
        let label =
            kubectl(kubeconfig, &["get", "node", node, "-o", &format!("jsonpath={{.metadata.labels.{LABEL}}}")]);
        let selected = !String::from_utf8_lossy(&label.stdout).trim().is_empty();
        let exists = kubectl(kubeconfig, &["get", "ciliumbgpnodeconfig", node]).status.success();
        if selected && !exists {
            let object = serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumBGPNodeConfig",
                "metadata": {"name": node}, "spec": {"bgpInstances": [{"name": "tor", "localASN": 65001,
                "peers": [{"name": "tor-a", "peerAddress": "127.0.0.1", "peerASN": 65000}]}]}});
            let file = std::env::temp_dir().join(format!("bgp-{}-{node}.json", std::process::id()));
            std::fs::write(&file, object.to_string()).expect("write");
            kubectl(kubeconfig, &["create", "-f", file.to_str().expect("utf-8")]);
            std::thread::sleep(Duration::from_millis(500));
            let status = serde_json::json!({"status": {"bgpInstances": [{"name": "tor", "localASN": 65001,
                "peers": [{"name": "tor-a", "peerAddress": "127.0.0.1", "peerASN": 65000,
                "peeringState": "established", "routeCount": [{"afi": "ipv4", "safi": "unicast", "advertised": 2, "received": 0}]}]}]}});
            kubectl(
                kubeconfig,
                &[
                    "patch",
                    "ciliumbgpnodeconfig",
                    node,
                    "--subresource",
                    "status",
                    "--type",
                    "merge",
                    "-p",
                    &status.to_string(),
                ],
            );
        } else if !selected && exists && !stuck.contains(&node) {
            std::thread::sleep(Duration::from_secs(1));
            kubectl(kubeconfig, &["delete", "ciliumbgpnodeconfig", node, "--wait=false"]);
        }
    }
}

/// The plan `name` for `nodes`, in cilium-bgp mode with the test's label.
fn bgp_plan(dir: &Path, name: &str, nodes: &str, timeout: &str) -> PathBuf {
    let batches = format!("    - {{name: farm, role: workstation, nodes: [{nodes}], maxUnavailable: 1}}\n");
    let path = plan(dir, name, &Shape { batches, ..Shape::default() });
    let text = std::fs::read_to_string(&path).expect("read plan").replace(
        "loadBalancer: {mode: external}",
        &format!("loadBalancer: {{mode: cilium-bgp, bgp: {{nodeLabel: {LABEL}=default, peeringTimeout: {timeout}}}}}"),
    );
    std::fs::write(&path, text).expect("write plan");
    path
}

/// The audit log's position of the first event `matches` picks.
fn first(audit: &[Value], matches: impl Fn(&Value) -> bool) -> Option<usize> {
    audit.iter().position(matches)
}

#[test]
fn on_the_real_control_plane_bgp_withdraw_waits_for_the_sessions_to_go_down_and_restore_for_them_to_come_back() {
    let plane = ControlPlane::up();
    plane.studio(&Studio { workstations: 2 });
    plane.apply_manifest(CRD);
    plane.kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/ciliumbgpnodeconfigs.cilium.io",
        "--timeout",
        "60s",
    ]);
    plane.kubectl_ok(&["label", "node", "ws01", "ws02", &format!("{LABEL}=default")]);
    let kubeconfig = plane.kubeconfig();
    let dir = plane.dir().to_owned();
    let stop = AtomicBool::new(false);
    let stuck: std::sync::Mutex<Vec<&str>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let stuck = stuck.lock().expect("lock").clone();
                reconcile(&kubeconfig, &["ws01", "ws02"], &stuck);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let established = || {
            ["ws01", "ws02"].iter().all(|n| {
                let state = kubectl(
                    &kubeconfig,
                    &[
                        "get",
                        "ciliumbgpnodeconfig",
                        n,
                        "-o",
                        "jsonpath={.status.bgpInstances[0].peers[0].peeringState}",
                    ],
                );
                String::from_utf8_lossy(&state.stdout) == "established"
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !established() {
            assert!(std::time::Instant::now() < deadline, "the stand-in agent establishes both nodes' peers");
            std::thread::sleep(Duration::from_millis(200));
        }

        let path = bgp_plan(&dir, "bgp", "ws01, ws02", "30s");
        let out = apply_via(&kubeconfig, &path, &[]).output().expect("apply runs");
        let events: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(out.status.code(), Some(0), "{}\n{events:#?}", String::from_utf8_lossy(&out.stderr));
        let progress = |step: &str| -> Vec<String> {
            events
                .iter()
                .filter(|e| e["event"] == "step-progress" && e["step"] == step)
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .collect()
        };
        for node in ["ws01", "ws02"] {
            assert_eq!(
                progress(&format!("{node}/bgp-withdraw")),
                [format!("waiting for {node}'s BGP peering to go down: still established: tor/tor-a (127.0.0.1)")],
                "the withdrawal was awaited"
            );
            assert!(
                progress(&format!("{node}/bgp-restore"))
                    .iter()
                    .any(|m| m.starts_with(&format!("waiting for {node}'s BGP peering to go up"))),
                "the restore was awaited"
            );
            let audit = plane.audit();
            let deleted = first(&audit, |e| {
                e["verb"] == "delete"
                    && e["objectRef"]["resource"] == "ciliumbgpnodeconfigs"
                    && e["objectRef"]["name"] == node
            })
            .expect("the stand-in operator deleted the node's config");
            let rebooted = first(&audit, |e| {
                e["verb"] == "patch"
                    && e["objectRef"]["resource"] == "nodes"
                    && e["objectRef"]["subresource"] == "status"
                    && e["objectRef"]["name"] == node
                    && e["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl"))
            })
            .expect("the node was rebooted");
            assert!(deleted < rebooted, "{node} was upgraded only once its sessions were down");
        }
        assert!(established(), "both nodes announce again");

        // A node whose session never goes down: the rollout halts before its upgrade.
        stuck.lock().expect("lock").push("ws01");
        let path = bgp_plan(&dir, "stuck", "ws01", "3s");
        let out = apply_via(&kubeconfig, &path, &[]).output().expect("apply runs");
        stop.store(true, Ordering::SeqCst);
        assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
        let halt = crate::control_plane::halted(&out.stdout);
        let failed = &halt["failed"][0];
        assert_eq!(failed["step"], "ws01/bgp-withdraw", "{halt}");
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(
                "ws01's BGP peering going down did not happen within 3s; still established: tor/tor-a (127.0.0.1)"
            ),
            "{error}"
        );
        assert_eq!(halt["cordoned"], serde_json::json!(["ws01"]), "{halt}");
    });
    let mut reboots = plane.reboots();
    reboots.sort();
    assert_eq!(reboots, ["ws01", "ws02"], "the stuck node was not upgraded a second time");
}
