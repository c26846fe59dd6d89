//! Nodes someone cordoned before the rollout: noderoll never uncordons them. Against the
//! simulator, through the real binary, with apply killed at random points and resumed.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::harness::{Cluster, Random, SimProcess, apply_via, kill_when, noderoll};

/// The generated studio's nodes in three batches: `early` upgrades nodes cordoned already
/// (the default), `late` skips them.
fn plan(dir: &Path) -> PathBuf {
    let text = "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: cordoned}\nspec:\n  loadBalancer: {mode: external}\n  defaults:\n    upgrade:\n      command: [noderoll, sim, ctl, upgrade, \"{node}\", --kubelet-version, v1.31.4+k3s1]\n      timeout: 1m\n    verify: {kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}\n  batches:\n    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3]}\n    - {name: early, role: workstation, nodes: [ws01, ws02, ws03], maxUnavailable: 2}\n    - {name: late, role: workstation, nodes: [ws04, ws05, ws06], maxUnavailable: 2, alreadyCordoned: skip}\n";
    let path = dir.join("cordoned.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

/// Node name → (cordoned, kubelet version).
fn nodes(sim: &SimProcess) -> Vec<(String, bool, String)> {
    let nodes = sim.nodes();
    let items = nodes["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .map(|n| {
            let name = n["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let version = n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or_default().to_owned();
            (name, n["spec"]["unschedulable"] == true, version)
        })
        .collect()
}

/// After the rollout: ws02 and ws05 (cordoned before it) are still cordoned, every other
/// node is schedulable; every node but ws05 (skipped) was upgraded exactly once.
fn assert_outcome(sim: &SimProcess, context: &str) {
    for (name, cordoned, version) in nodes(sim) {
        let was_cordoned = name == "ws02" || name == "ws05";
        assert_eq!(cordoned, was_cordoned, "{context}: {name} cordoned = {cordoned}");
        let upgraded = version == "v1.31.4+k3s1";
        assert_eq!(upgraded, name != "ws05", "{context}: {name} runs {version}");
    }
    let reboots = sim.state()["reboots"].as_object().cloned().unwrap_or_default();
    assert_eq!(reboots.len(), 8, "{context}: reboots {reboots:?}");
    assert!(!reboots.contains_key("ws05"), "{context}: the skipped node was rebooted: {reboots:?}");
    assert!(reboots.values().all(|r| r == 1), "{context}: a node was upgraded twice: {reboots:?}");
}

#[test]
fn preview_names_the_nodes_cordoned_already_and_what_the_rollout_does_with_them() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    sim.kubectl_ok(&["cordon", "ws02", "ws05"]);
    let plan = plan(sim.dir.path());
    let out =
        noderoll().args(["preview", "--output", "json", "--kubeconfig"]).arg(sim.kubeconfig()).arg(&plan).assert();
    let doc: Value = serde_json::from_slice(&out.success().get_output().stdout).expect("JSON");
    assert_eq!(
        doc["survey"]["alreadyCordoned"],
        serde_json::json!([{"node": "ws02", "policy": "upgrade"}, {"node": "ws05", "policy": "skip"}])
    );
    let out = noderoll().args(["preview", "--kubeconfig"]).arg(sim.kubeconfig()).arg(&plan).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("cordoned already (upgraded, then left cordoned): ws02"), "{text}");
    assert!(text.contains("cordoned already (skipped, left as they are): ws05"), "{text}");
}

#[test]
fn a_node_cordoned_before_the_rollout_is_never_uncordoned_even_across_kills() {
    // A clean run first, then three runs killed at random points (the plan has about 90
    // steps) and resumed; NODEROLL_TEST_SEED replays them.
    let mut random = Random::from_env();
    let seed = random.seed;
    for run in 0..4 {
        let sim = SimProcess::start(&["--sessions-per-node", "0"]);
        sim.kubectl_ok(&["cordon", "ws02", "ws05"]);
        let plan = plan(sim.dir.path());
        let context = if run == 0 {
            "uninterrupted".to_owned()
        } else {
            let kind = if random.below(2) == 0 { "step-started" } else { "step-finished" };
            let stop = 1 + random.below(80) as usize;
            let mut child = apply_via(&sim.kubeconfig(), &plan, &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            let mut seen = 0;
            let reader = kill_when(&mut child, move |_, line| {
                let event: Value = serde_json::from_str(line).unwrap_or_default();
                seen += usize::from(event["event"] == kind);
                seen == stop
            });
            let _ = reader.join();
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            format!("seed {seed}: killed after {kind} #{stop}")
        };
        let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
        assert_eq!(out.status.code(), Some(0), "{context}: {}", String::from_utf8_lossy(&out.stderr));
        assert_outcome(&sim, &context);
        let journal = std::fs::read_to_string(sim.dir.path().join(".noderoll/cordoned.journal")).expect("journal");
        assert!(journal.contains("\"leftCordoned\":true"), "{context}: ws02's uncordon says it left the node cordoned");
        assert!(journal.contains("\"skipped\":"), "{context}: ws05's steps journal that they skipped it");
    }
}
