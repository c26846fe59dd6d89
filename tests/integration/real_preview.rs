//! `preview --kubeconfig` and `init --kubeconfig` against the real control plane: what the
//! survey reads from real objects (pods with their owners, sessions, budgets the real
//! disruption controller keeps) and a starting plan that `check` accepts, its load-balancer
//! mode read from Cilium's objects where the cluster serves them.

use serde_json::Value;

use crate::control_plane::{ControlPlane, Studio};
use crate::harness::{Cluster, noderoll};

/// cp1..3 and ws01..04, selector batches resolved against the cluster.
const PLAN: &str = "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: surveyed}\nspec:\n  loadBalancer: {mode: external}\n  defaults:\n    upgrade: {command: [\"true\"]}\n  batches:\n    - {name: control-plane, role: service, selector: \"juno-innovations.com/service=true\", maxUnavailable: 1}\n    - {name: workstations, role: workstation, selector: \"juno-innovations.com/workstation=true\", maxUnavailable: 2}\n";

#[test]
fn preview_and_init_read_the_real_control_plane() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 4 };
    plane.studio(&studio);
    // A budget that allows no disruption now: the real disruption controller says so.
    plane.apply_manifest(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: strict, namespace: juno}\nspec: {maxUnavailable: 0, selector: {matchLabels: {app: juno-web}}}\n",
    );
    plane.eventually("the disruption controller counts the budget's pods", || {
        plane.kubectl_ok(&["get", "pdb", "-n", "juno", "strict", "-o", "jsonpath={.status.expectedPods}"]) == "3"
    });
    let plan = plane.dir().join("surveyed.yaml");
    std::fs::write(&plan, PLAN).expect("write plan");
    let out = noderoll()
        .args(["preview", "--output", "json", "--kubeconfig"])
        .arg(plane.kubeconfig())
        .arg(&plan)
        .assert()
        .success();
    let preview: Value = serde_json::from_slice(&out.get_output().stdout).expect("JSON");
    let cordons: Vec<&str> = preview["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["action"] == "cordon")
        .filter_map(|s| s["node"].as_str())
        .collect();
    assert_eq!(cordons, studio.node_names(), "the selectors resolve to the studio's nodes");
    let survey = &preview["survey"];
    let nodes = survey["nodes"].as_array().expect("nodes");
    let cp1 = nodes.iter().find(|n| n["node"] == "cp1").expect("cp1");
    assert!(
        cp1["blockingBudgets"].as_array().is_some_and(|b| b.iter().any(|b| b == "juno/strict")),
        "the budget that allows nothing blocks cp1's drain now: {cp1}"
    );
    assert!(
        cp1["leftAlone"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p.as_str().is_some_and(|p| p.contains("node-exporter")))),
        "the DaemonSet pod is left alone: {cp1}"
    );
    let ws01 = nodes.iter().find(|n| n["node"] == "ws01").expect("ws01");
    assert_eq!(ws01["sessions"].as_array().map(Vec::len), Some(1), "ws01's session: {ws01}");

    let text = noderoll().args(["preview", "--kubeconfig"]).arg(plane.kubeconfig()).arg(&plan).assert().success();
    let text = String::from_utf8_lossy(&text.get_output().stdout).into_owned();
    assert!(text.contains("juno/strict"), "the text preview names the budget: {text}");

    let init_yaml = || {
        let out = noderoll()
            .args(["init", "--batch-size", "2", "--name", "studio", "--kubeconfig"])
            .arg(plane.kubeconfig())
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let yaml = init_yaml();
    assert!(yaml.contains("nodes: [cp1, cp2, cp3]") && yaml.contains("nodes: [ws01, ws02]"), "{yaml}");
    let init = plane.dir().join("init.yaml");
    std::fs::write(&init, &yaml).expect("write");
    let checked = noderoll().arg("check").arg(&init).assert().success();
    let text = String::from_utf8_lossy(&checked.get_output().stdout).into_owned();
    assert!(text.contains("7 node(s) by name"), "{text}");
    // No Cilium: the API server answers 404 for its kinds, and init writes `external`.
    assert!(yaml.contains("    mode: external\n"), "{yaml}");

    // Cilium's BGP kind as a CRD (its group, kind, plural and scope; the schema left open),
    // and a cluster config selecting nodes by a label: init reads the mode and the label.
    plane.apply_manifest(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: ciliumbgpclusterconfigs.cilium.io}\nspec:\n  group: cilium.io\n  scope: Cluster\n  names: {kind: CiliumBGPClusterConfig, plural: ciliumbgpclusterconfigs, singular: ciliumbgpclusterconfig, listKind: CiliumBGPClusterConfigList}\n  versions:\n  - name: v2\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
    );
    plane.eventually("the CRD is established", || plane.kubectl(&["get", "ciliumbgpclusterconfigs"]).status.success());
    plane.apply_manifest(
        "apiVersion: cilium.io/v2\nkind: CiliumBGPClusterConfig\nmetadata: {name: studio}\nspec:\n  nodeSelector: {matchLabels: {bgp-policy: default}}\n  bgpInstances: [{name: instance-65000, localASN: 65000}]\n",
    );
    let yaml = init_yaml();
    assert!(yaml.contains("# Cilium BGP: CiliumBGPClusterConfig `studio`."), "{yaml}");
    assert!(
        yaml.contains("    mode: cilium-bgp\n    # ") && yaml.contains("      nodeLabel: bgp-policy=default\n"),
        "{yaml}"
    );
    std::fs::write(&init, &yaml).expect("write");
    noderoll().arg("check").arg(&init).assert().success();
}
