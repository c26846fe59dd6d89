//! `noderoll abort` on the real control plane, with the journal in a real ConfigMap: the
//! running apply reads the abort another process wrote there (and takes it for a request,
//! not for a second rollout), stops; the nodes whose upgrade had not begun are
//! schedulable again with no phase label, the others cordoned; the resume finishes.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;

use serde_json::Value;

use crate::control_plane::{ControlPlane, Shape, Studio, plan};
use crate::harness::{Cluster, Random, apply_via, noderoll};

const JOURNAL: &str = "kube-system/noderoll-journal";

#[test]
fn on_the_real_control_plane_an_abort_stops_apply_and_puts_back_the_nodes_not_yet_upgraded() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), "aborted", &Shape::default());
    let args = ["--journal-configmap", JOURNAL];
    let mut random = Random::from_env();
    // The abort comes when a random one of the first nodes' cordons starts (cp1..cp3,
    // ws01, ws02 in turn): each is then two seconds or more from its upgrade.
    let stop = 1 + random.below(5) as usize;
    let context = format!("seed {}: abort at cordon #{stop}", random.seed);
    let mut apply = apply_via(&plane.kubeconfig(), &plan, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = apply.stdout.take().expect("piped");
    let (reached, at_stop) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut cordons = 0;
        let mut events = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            if event["event"] == "step-started" && event["action"] == "cordon" {
                cordons += 1;
                if cordons == stop {
                    let _ = reached.send(());
                }
            }
            events.push(event);
        }
        events
    });
    at_stop.recv().expect("apply reaches the stop point");
    let abort = noderoll()
        .arg("abort")
        .arg(&plan)
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("abort runs");
    assert!(abort.status.success(), "{context}: {}", String::from_utf8_lossy(&abort.stderr));
    let outcome: Value = String::from_utf8_lossy(&abort.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    assert_eq!(outcome["outcome"], "aborted", "{context}: {outcome}");
    let apply = apply.wait_with_output().expect("apply ends");
    let events = reader.join().expect("reader");
    assert_eq!(apply.status.code(), Some(8), "{context}: {}", String::from_utf8_lossy(&apply.stderr));
    assert!(events.iter().any(|e| e["event"] == "stopped-for-abort"), "{context}: {events:?}");

    let names = |key: &str| -> BTreeSet<String> {
        outcome[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().or_else(|| v["node"].as_str()).map(str::to_owned))
            .collect()
    };
    let (restored, left) = (names("restored"), names("left"));
    assert!(!restored.is_empty() || !left.is_empty(), "{context}: the abort found a node at work: {outcome}");
    let nodes = plane.nodes();
    for node in nodes["items"].as_array().expect("items") {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let cordoned = node["spec"]["unschedulable"] == true;
        assert_eq!(cordoned, left.contains(name), "{context}: {name} cordoned = {cordoned}; {outcome}");
        assert_eq!(node["metadata"]["labels"]["noderoll.io/phase"], Value::Null, "{context}: {name} keeps a phase");
    }
    let reboots = plane.reboots();
    for name in &restored {
        assert!(!reboots.contains(name), "{context}: {name} was put back, yet rebooted: {reboots:?}");
    }
    eprintln!("{context}: put back {restored:?}, left {left:?}");

    let refused = apply_via(&plane.kubeconfig(), &plan, &args).output().expect("apply runs");
    assert_eq!(refused.status.code(), Some(8), "{context}: apply refuses the aborted rollout");
    let out = apply_via(&plane.kubeconfig(), &plan, &[&args[..], &["--resume-aborted"]].concat())
        .output()
        .expect("apply runs");
    assert!(
        out.status.success(),
        "{context}: the resume: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("\"halted\"") || l.contains("failed"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\npods:\n"
            + &plane.pods_report()
    );
    plane.assert_upgraded_once(&studio);
}
