//! Crash safety on the real control plane: `apply` SIGKILLed at random moments and
//! resumed with the journal in a real ConfigMap, a Lease held by a second `apply`, and the
//! ConfigMap size limit the real API server enforces.

use std::process::Stdio;

use serde_json::Value;

use crate::control_plane::{ControlPlane, Shape, Studio, plan};
use crate::harness::{Cluster, Random, apply_via, kill_when};
use crate::incluster::journal_lines;

const JOURNAL: &str = "kube-system/noderoll-journal";

/// The journal's records, from its ConfigMap, and their compressed size.
fn journal(plane: &ControlPlane) -> (Vec<Value>, usize) {
    let (object, records) = journal_lines(plane);
    let packed = object["binaryData"][noderoll::executor::journal_store::KEY].as_str().expect("binaryData");
    (records, base64::Engine::decode(&base64::engine::general_purpose::STANDARD, packed).expect("base64").len())
}

#[test]
fn apply_killed_at_random_moments_resumes_from_its_configmap_journal_on_the_real_control_plane() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), "killed", &Shape::default());
    let args = ["--journal-configmap", JOURNAL];
    let mut random = Random::from_env();
    let seed = random.seed;
    // Three kills, each at a random step event of the run it interrupts, then a resume that
    // runs to the end. The plan has 37 steps (5 nodes and 5 gates), so 74 step events: three
    // kills of at most 20 each always leave the run killed something to do.
    for kill in 0..3 {
        let stop = 1 + random.below(20) as usize;
        let mut child = apply_via(&plane.kubeconfig(), &plan, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut seen = 0;
        let killed = kill_when(&mut child, move |_, line| {
            let event: Value = serde_json::from_str(line).unwrap_or_default();
            if event["event"] == "step-started" || event["event"] == "step-finished" {
                seen += 1;
            }
            seen == stop
        });
        let killed = killed.join().expect("reader");
        let _ = child.wait();
        assert!(killed, "seed {seed}: kill {kill} at step event {stop} happened before the rollout ended");
    }
    let out = apply_via(&plane.kubeconfig(), &plan, &args).output().expect("apply runs");
    assert!(out.status.success(), "seed {seed}: the resume failed: {}", String::from_utf8_lossy(&out.stderr));
    plane.assert_upgraded_once(&studio);
    let (records, packed) = journal(&plane);
    assert!(records.iter().any(|r| r["event"] == "finished"), "seed {seed}: the journal says finished");
    let holder = plane.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "noderoll-killed",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "", "seed {seed}: the finished run released its Lease");
    eprintln!("journal of 5 nodes after 3 kills: {} records, {packed} bytes compressed", records.len());
}

#[test]
fn a_second_apply_on_the_real_control_plane_is_refused_while_the_first_holds_the_lease() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), "locked", &Shape::default());
    let mut first =
        apply_via(&plane.kubeconfig(), &plan, &[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let mut stdout = std::io::BufReader::new(first.stdout.take().expect("stdout"));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).is_ok_and(|n| n > 0) && !line.contains("\"step-started\"")
    {
        line.clear();
    }
    let holder = plane.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "noderoll-locked",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty(), "the first apply holds the Lease");
    // The holder's process still runs, so the second run must not take the lock over.
    let second = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("--break-lock") && stderr.contains(&holder), "{stderr}");
    std::io::copy(&mut stdout, &mut std::io::sink()).expect("drain stdout");
    assert!(first.wait().expect("first apply ends").success(), "the first rollout finished");
    plane.assert_upgraded_once(&studio);
}

#[test]
fn the_real_api_server_refuses_a_configmap_over_one_mebibyte_and_the_journal_stays_under_it() {
    let plane = ControlPlane::up();
    // Incompressible bytes, as the journal's gzip is: the journal's own cap (900 KiB)
    // is accepted, 1 MiB and a byte is not.
    let mut random = Random::with_seed(1);
    let mut bytes = |n: usize| -> String {
        let data: Vec<u8> = (0..n).map(|_| random.below(256) as u8).collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data)
    };
    let write = |name: &str, encoded: String| {
        let object = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "kube-system"},
            "binaryData": {noderoll::executor::journal_store::KEY: encoded},
        });
        let path = plane.dir().join(format!("{name}.json"));
        std::fs::write(&path, object.to_string()).expect("write");
        plane.kubectl(&["create", "-f", path.to_str().expect("utf-8")])
    };
    let accepted = write("at-the-cap", bytes(900 * 1024));
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    let refused = write("over-the-limit", bytes(1024 * 1024 + 1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a ConfigMap over 1 MiB is refused");
    assert!(stderr.contains("1048576"), "the API server names its limit: {stderr}");
}
