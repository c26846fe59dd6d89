//! A failure budget on the real control plane: a workstation whose upgrade fails within its
//! batch's `maxFailures` is left cordoned on its old kubelet while the batch goes on; the
//! failure beyond the next batch's budget halts the rollout before its last node starts;
//! mended, `apply` retries only the failed nodes. Each node's `noderoll.io/phase` label
//! says where it stands: failed, queued, or nothing once it is done.

use crate::control_plane::{ControlPlane, NEW_KUBELET, OLD_KUBELET, Shape, Studio, halted, plan};
use crate::harness::{Cluster, apply_via, repo};

#[test]
fn on_the_real_control_plane_a_failure_budget_leaves_the_failed_node_cordoned_and_goes_on() {
    let plane = ControlPlane::up();
    plane.studio(&Studio { workstations: 6 });
    let dir = plane.dir().to_owned();
    // The reboot hook, failing for a node with a `broken-NODE` file in the test's directory.
    let hook = format!(
        "[sh, -c, 'if test -e \"$0/broken-$1\"; then echo \"disk of $1 is broken\" >&2; exit 1; fi; exec \"$2\" \"$1\" \"$3\"', \"{}\", \"{{node}}\", \"{}\", {NEW_KUBELET}]",
        dir.display(),
        repo().join("testbed/upgrade-node").display()
    );
    let batches = "    - {name: first, role: workstation, nodes: [ws01, ws02, ws03, ws04], maxUnavailable: 1, maxFailures: 1}\n    - {name: second, role: workstation, nodes: [ws05, ws06], maxUnavailable: 1}\n";
    let path = plan(&dir, "budget", &Shape { hook, batches: batches.to_owned(), ..Shape::default() });
    for node in ["ws02", "ws05"] {
        std::fs::write(dir.join(format!("broken-{node}")), "").expect("break a node");
    }

    let out = apply_via(&plane.kubeconfig(), &path, &[]).output().expect("apply runs");
    assert_eq!(
        out.status.code(),
        Some(4),
        "ws05 is beyond the second batch's budget: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let halt = halted(&out.stdout);
    let failed: Vec<&str> =
        halt["failed"].as_array().expect("failed").iter().filter_map(|f| f["step"].as_str()).collect();
    assert_eq!(failed, ["ws02/upgrade", "ws05/upgrade"], "{halt}");
    assert_eq!(halt["cordoned"], serde_json::json!(["ws02", "ws05"]), "{halt}");

    let field = |node: &str, path: &str| plane.kubectl_ok(&["get", "node", node, "-o", &format!("jsonpath={path}")]);
    let phase =
        |node: &str| field(node, "{.metadata.labels.noderoll\\.io/phase} {.metadata.annotations.noderoll\\.io/step}");
    let expected = [
        ("ws01", "", NEW_KUBELET, ""),
        ("ws02", "true", OLD_KUBELET, "failed ws02/upgrade"),
        ("ws03", "", NEW_KUBELET, ""),
        ("ws04", "", NEW_KUBELET, ""),
        ("ws05", "true", OLD_KUBELET, "failed ws05/upgrade"),
        ("ws06", "", OLD_KUBELET, "queued"),
    ];
    for (node, unschedulable, kubelet, shown) in expected {
        assert_eq!(field(node, "{.spec.unschedulable}"), unschedulable, "{node}'s spec.unschedulable");
        assert_eq!(field(node, "{.status.nodeInfo.kubeletVersion}"), kubelet, "{node}'s kubelet");
        assert_eq!(phase(node).trim(), shown, "{node}'s phase and step");
    }
    let listed = plane.kubectl_ok(&["get", "nodes", "-L", "noderoll.io/phase", "--no-headers"]);
    assert!(listed.lines().any(|l| l.starts_with("ws02 ") && l.trim_end().ends_with("failed")), "{listed}");
    let mut reboots = plane.reboots();
    reboots.sort();
    assert_eq!(reboots, ["ws01", "ws03", "ws04"], "the failed nodes were never rebooted, ws06 never started");

    for node in ["ws02", "ws05"] {
        std::fs::remove_file(dir.join(format!("broken-{node}"))).expect("mend a node");
    }
    let out = apply_via(&plane.kubeconfig(), &path, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for node in ["ws01", "ws02", "ws03", "ws04", "ws05", "ws06"] {
        assert_eq!(field(node, "{.spec.unschedulable}"), "", "{node} is uncordoned");
        assert_eq!(field(node, "{.status.nodeInfo.kubeletVersion}"), NEW_KUBELET, "{node} is upgraded");
        assert_eq!(phase(node).trim(), "", "{node}'s phase is removed at the end");
    }
    let mut reboots = plane.reboots();
    reboots.sort();
    assert_eq!(reboots, ["ws01", "ws02", "ws03", "ws04", "ws05", "ws06"], "each node rebooted once");
}
