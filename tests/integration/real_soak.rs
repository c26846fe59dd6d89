//! Soak on the real control plane: a workstation whose Ready condition flaps while it soaks
//! fails its soak and holds the next node of its lane; the next `apply` soaks it again from
//! the start and goes on. The flap is written as a kubelet writes one: Ready False with a
//! reason, and Ready True again 300 ms later, so only a soak that watches the node, rather
//! than looking now and then, can see it.

use std::io::BufRead;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::control_plane::{ControlPlane, NEW_KUBELET, OLD_KUBELET, Shape, Studio, halted, plan};
use crate::harness::{Cluster, apply_via};

/// Writes ws01's Ready condition as its kubelet would.
fn ready(kubeconfig: &std::path::Path, status: &str, reason: &str, message: &str) {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason,
        "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    let patched = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["patch", "node", "ws01", "--subresource", "status", "--type", "strategic", "-p"])
        .arg(patch.to_string())
        .status()
        .expect("kubectl runs");
    assert!(patched.success(), "ws01's Ready condition is written");
}

/// `step` of `event` kind, by position in a run's JSON events.
fn position(events: &[Value], event: &str, step: &str) -> Option<usize> {
    events.iter().position(|e| e["event"] == event && e["step"] == step)
}

#[test]
fn on_the_real_control_plane_a_node_that_flaps_while_it_soaks_halts_its_lane_and_is_soaked_again() {
    let plane = ControlPlane::up();
    plane.studio(&Studio { workstations: 2 });
    let dir = plane.dir().to_owned();
    let batches = "    - {name: workstations, role: workstation, nodes: [ws01, ws02], maxUnavailable: 1, soak: 20s}\n";
    let path = plan(&dir, "soak", &Shape { batches: batches.to_owned(), ..Shape::default() });

    let mut child = apply_via(&plane.kubeconfig(), &path, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let kubeconfig = plane.kubeconfig();
    let reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            if event["event"] == "step-started" && event["step"] == "ws01/soak" {
                ready(&kubeconfig, "False", "KubeletNotReady", "PLEG is not healthy");
                std::thread::sleep(std::time::Duration::from_millis(300));
                ready(&kubeconfig, "True", "KubeletReady", "kubelet is posting ready status");
            }
            events.push(event);
        }
        events
    });
    let out = child.wait_with_output().expect("apply ends");
    let events = reader.join().expect("reader");
    let stdout: Vec<u8> = events.iter().flat_map(|e| format!("{e}\n").into_bytes()).collect();
    assert_eq!(out.status.code(), Some(4), "the failed soak halts: {}", String::from_utf8_lossy(&out.stderr));
    let halt = halted(&stdout);
    let failed: Vec<&str> =
        halt["failed"].as_array().expect("failed").iter().filter_map(|f| f["step"].as_str()).collect();
    assert_eq!(failed, ["ws01/soak"], "{halt}");
    let error = events
        .iter()
        .find(|e| e["event"] == "step-failed" && e["step"] == "ws01/soak")
        .and_then(|e| e["error"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("ws01 stopped being Ready (Ready False: KubeletNotReady: PLEG is not healthy)"),
        "the soak says what it saw: {error}"
    );
    // The flap's two status patches are kubectl's too, so the audit log counts them as reboots.
    assert_eq!(plane.reboots(), ["ws01", "ws01", "ws01"], "ws02 waits for ws01's soak, so it never started");
    let kubelet =
        |node: &str| plane.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.status.nodeInfo.kubeletVersion}"]);
    assert_eq!(kubelet("ws02"), OLD_KUBELET, "ws02 was not upgraded");
    let unschedulable = |node: &str| plane.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable("ws01"), "", "ws01 came back into service before its soak");
    assert_eq!(unschedulable("ws02"), "", "ws02 was never cordoned");

    let out = apply_via(&plane.kubeconfig(), &path, &[]).output().expect("apply runs");
    let failures: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"step-failed\"") || l.contains("\"halted\""))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the second apply: {failures:#?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let soaked = position(&events, "step-started", "ws01/soak").expect("ws01 is soaked again, from the start");
    let done = position(&events, "step-finished", "ws01/soak").expect("its soak finishes");
    let next = position(&events, "step-started", "ws02/cordon").expect("ws02 starts");
    assert!(soaked < done && done < next, "ws02 leaves only once ws01 has soaked");
    position(&events, "step-finished", "ws02/soak").expect("ws02 soaks too");
    let mut reboots = plane.reboots();
    reboots.sort();
    assert_eq!(reboots, ["ws01", "ws01", "ws01", "ws02"], "ws02 rebooted once, ws01 not again");
    assert_eq!(kubelet("ws02"), NEW_KUBELET);
}
