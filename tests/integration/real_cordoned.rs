//! Nodes cordoned before the rollout, on the real control plane: the one the batch upgrades
//! comes back on the new kubelet and still cordoned, the one it skips is never rebooted,
//! and both stay cordoned while the node noderoll cordoned itself is uncordoned.

use crate::control_plane::{ControlPlane, NEW_KUBELET, OLD_KUBELET, Shape, Studio, plan};
use crate::harness::{Cluster, apply_via};

#[test]
fn on_the_real_control_plane_nodes_cordoned_before_the_rollout_stay_cordoned() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 3 };
    plane.studio(&studio);
    plane.kubectl_ok(&["cordon", "ws02", "ws03"]);
    let batches = "    - {name: upgraded, role: workstation, nodes: [ws01, ws02], maxUnavailable: 2}\n    - {name: skipped, role: workstation, nodes: [ws03], alreadyCordoned: skip}\n";
    let path = plan(plane.dir(), "cordoned", &Shape { batches: batches.to_owned(), ..Shape::default() });
    let out = apply_via(&plane.kubeconfig(), &path, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let field = |node: &str, path: &str| plane.kubectl_ok(&["get", "node", node, "-o", &format!("jsonpath={path}")]);
    let expected = [("ws01", "", NEW_KUBELET), ("ws02", "true", NEW_KUBELET), ("ws03", "true", OLD_KUBELET)];
    for (node, unschedulable, kubelet) in expected {
        assert_eq!(field(node, "{.spec.unschedulable}"), unschedulable, "{node}'s spec.unschedulable");
        assert_eq!(field(node, "{.status.nodeInfo.kubeletVersion}"), kubelet, "{node}'s kubelet");
    }
    let mut reboots = plane.reboots();
    reboots.sort();
    assert_eq!(reboots, ["ws01", "ws02"], "the skipped node is never rebooted");
}
