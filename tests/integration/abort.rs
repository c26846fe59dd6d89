//! `noderoll abort` against the simulator, through the real binary: a running apply asked
//! to abort at random points stops, the abort (itself killed half-way at times, and run
//! again) puts back every node whose upgrade had not begun and leaves the others cordoned,
//! `status` says so, `apply` refuses to go on until `--resume-aborted`, which finishes the
//! rollout with every node upgraded once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;

use serde_json::Value;

use crate::harness::{Cluster, Random, SimProcess, apply_via, noderoll};

/// The studio's nodes in three batches; `late` waits for an approval before each uncordon,
/// so no run finishes before the abort reaches it. ws02 is cordoned before the rollout.
fn plan(dir: &Path) -> PathBuf {
    let text = "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: aborted}\nspec:\n  loadBalancer: {mode: external}\n  defaults:\n    upgrade:\n      command: [noderoll, sim, ctl, upgrade, \"{node}\", --kubelet-version, v1.31.4+k3s1]\n      timeout: 1m\n    verify: {kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}\n  batches:\n    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3]}\n    - {name: early, role: workstation, nodes: [ws01, ws02, ws03], maxUnavailable: 2}\n    - {name: late, role: workstation, nodes: [ws04, ws05, ws06], maxUnavailable: 3, uncordon: approve}\n";
    let path = dir.join("aborted.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

fn abort_cmd(sim: &SimProcess, plan: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("noderoll"));
    cmd.arg("abort").arg(plan).arg("--kubeconfig").arg(sim.kubeconfig()).args(["--output", "json"]);
    cmd.env("PATH", crate::harness::path_with_binary()).stdin(Stdio::null());
    cmd
}

/// Runs the abort; with `kill_after_first`, kills it -9 once it has put one node back.
/// Returns its last JSON line (the outcome) if it ran to its end.
fn run_abort(sim: &SimProcess, plan: &Path, kill_after_first: bool) -> Option<Value> {
    let mut child = abort_cmd(sim, plan).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("abort");
    let stdout = child.stdout.take().expect("piped");
    let mut last = None;
    for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        if kill_after_first && event["event"] == "node-restored" {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            return None;
        }
        last = Some(event);
    }
    let out = child.wait_with_output().expect("abort ends");
    assert!(out.status.success(), "abort: {}", String::from_utf8_lossy(&out.stderr));
    last
}

/// Node name → (cordoned, phase label).
fn nodes(sim: &SimProcess) -> BTreeMap<String, (bool, Option<String>)> {
    let nodes = sim.nodes();
    nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let name = n["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let phase = n["metadata"]["labels"]["noderoll.io/phase"].as_str().map(str::to_owned);
            (name, (n["spec"]["unschedulable"] == true, phase))
        })
        .collect()
}

#[test]
fn an_abort_at_random_points_puts_back_nodes_before_their_upgrade_and_the_resume_finishes_the_rollout() {
    let mut random = Random::from_env();
    let seed = random.seed;
    for run in 0..3 {
        let sim = SimProcess::start(&["--sessions-per-node", "0"]);
        sim.kubectl_ok(&["cordon", "ws02"]);
        let plan = plan(sim.dir.path());
        // The plan has about 95 steps; late's nodes stop at their approval, which no one gives.
        let stop = 1 + random.below(70) as usize;
        let kill_abort = random.below(2) == 0;
        let context = format!("seed {seed} run {run}: abort after step-started #{stop}, abort killed: {kill_abort}");
        let mut apply = apply_via(&sim.kubeconfig(), &plan, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apply starts");
        let stdout = apply.stdout.take().expect("piped");
        let (reached, at_stop) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut seen = 0;
            let mut events = Vec::new();
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line).unwrap_or_default();
                seen += usize::from(event["event"] == "step-started");
                let waits = event["event"] == "awaiting-approval";
                if seen == stop || waits {
                    let _ = reached.send(());
                }
                events.push(event);
            }
            events
        });
        at_stop.recv().expect("apply reaches the stop point");
        if kill_abort {
            let _ = run_abort(&sim, &plan, true);
        }
        let outcome = run_abort(&sim, &plan, false).expect("the abort runs to its end");
        let code = apply.wait().expect("apply ends").code();
        let events = reader.join().expect("reader");
        assert_eq!(code, Some(8), "{context}: apply stops for the abort with exit 8");
        assert!(events.iter().any(|e| e["event"] == "stopped-for-abort"), "{context}: {events:?}");

        // The abort's word and the cluster agree: the nodes left are cordoned, and their
        // upgrade had begun; every other node is schedulable but ws02, cordoned before.
        let reboots = sim.state()["reboots"].as_object().cloned().unwrap_or_default();
        let left: BTreeSet<String> = match outcome["outcome"].as_str() {
            Some("aborted") | Some("already-aborted") => outcome["left"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| l["node"].as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => panic!("{context}: the abort's outcome: {outcome}"),
        };
        for (name, (cordoned, phase)) in nodes(&sim) {
            assert_eq!(phase, None, "{context}: {name} still shows a rollout phase");
            let expected = left.contains(&name) || name == "ws02";
            assert_eq!(cordoned, expected, "{context}: {name} cordoned = {cordoned}, left = {left:?}");
        }
        let journal = std::fs::read_to_string(sim.dir.path().join(".noderoll/aborted.journal")).expect("journal");
        for node in &left {
            assert!(
                journal.contains(&format!("\"step\":\"{node}/upgrade\"")),
                "{context}: {node} left before its upgrade"
            );
        }
        for (node, count) in &reboots {
            assert_eq!(count, 1, "{context}: {node} upgraded more than once before the abort");
        }

        let status = noderoll().arg("status").arg(&plan).args(["--output", "json"]).output().expect("status");
        let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
        assert_eq!(status["summary"]["abort"]["state"], "done", "{context}: {status}");
        assert!(status["summary"]["last"].as_str().is_some_and(|l| l.starts_with("aborted at")), "{status}");

        let refused = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
        assert_eq!(refused.status.code(), Some(8), "{context}: apply refuses an aborted rollout");
        // miette wraps the message, at spaces or after a hyphen: compare without either.
        let said: String = String::from_utf8_lossy(&refused.stderr)
            .chars()
            .filter(|c| !c.is_whitespace() && !"│×".contains(*c))
            .collect();
        assert!(said.contains("runitwith--resume-abortedtogoon"), "{context}: the refusal says how to go on: {said}");
        assert_eq!(
            sim.state()["reboots"].as_object().map(|r| r.len()),
            Some(reboots.len()),
            "{context}: it changed nothing"
        );

        noderoll().arg("approve").arg(&plan).args(["ws04", "ws05", "ws06"]).assert().success();
        let out = apply_via(&sim.kubeconfig(), &plan, &["--resume-aborted"]).output().expect("apply runs");
        assert_eq!(out.status.code(), Some(0), "{context}: {}", String::from_utf8_lossy(&out.stderr));
        for (name, (cordoned, _)) in nodes(&sim) {
            assert_eq!(cordoned, name == "ws02", "{context}: after the resume {name} cordoned = {cordoned}");
        }
        let reboots = sim.state()["reboots"].as_object().cloned().unwrap_or_default();
        assert_eq!(reboots.len(), 9, "{context}: every node upgraded: {reboots:?}");
        assert!(reboots.values().all(|r| r == 1), "{context}: a node was upgraded twice: {reboots:?}");
    }
}

#[test]
fn an_abort_with_no_rollout_to_abort_says_so() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(sim.dir.path());
    let out = abort_cmd(&sim, &plan).output().expect("abort runs");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no rollout to abort"));
}
