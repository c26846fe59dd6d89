//! A rollout as the CronJob of `noderoll manifests` runs it: the journal in a ConfigMap of
//! the simulator, `approve` and `status` through the API, kill -9 and resume, and a second
//! writer losing to resourceVersion.

use std::io::{Read, Write};
use std::process::Stdio;

use serde_json::Value;

use crate::harness::{Cluster, SIM_UPGRADE, SimProcess, apply_via, kill_when, noderoll, small_plan};

const JOURNAL: &str = "kube-system/noderoll-journal";

fn journal_args(sim: &SimProcess) -> Vec<String> {
    vec!["--journal-configmap".into(), JOURNAL.into(), "--kubeconfig".into(), sim.kubeconfig().display().to_string()]
}

/// The ConfigMap's journal lines, read with kubectl, and the ConfigMap.
pub(crate) fn journal_lines(sim: &impl Cluster) -> (Value, Vec<Value>) {
    let object: Value = serde_json::from_str(&sim.kubectl_ok(&[
        "get",
        "configmap",
        "noderoll-journal",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]))
    .expect("JSON");
    let packed = object["binaryData"][noderoll::executor::journal_store::KEY].as_str().expect("binaryData");
    let packed = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, packed).expect("base64");
    let mut text = String::new();
    flate2::read::GzDecoder::new(packed.as_slice()).read_to_string(&mut text).expect("gzip");
    let lines = text.lines().map(|l| serde_json::from_str(l).expect("record")).collect();
    (object, lines)
}

/// A small plan whose control-plane nodes each wait for approval before their uncordon.
fn approving_plan(sim: &SimProcess, name: &str) -> std::path::PathBuf {
    let plan = small_plan(sim.dir.path(), name, "", SIM_UPGRADE);
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("nodes: [cp1, cp2, cp3]}", "nodes: [cp1, cp2, cp3], uncordon: approve}");
    std::fs::write(&plan, text).expect("write");
    plan
}

#[test]
fn a_configmap_journal_takes_approvals_survives_kill_9_and_reports_status() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = approving_plan(&sim, "incluster");
    let args = ["--journal-configmap", JOURNAL];

    // First run: killed at the second approval prompt (cp1 approved through the API).
    let mut child = apply_via(&sim.kubeconfig(), &plan, &args).stdout(Stdio::piped()).spawn().expect("apply");
    let approver = {
        let plan = plan.clone();
        let journal = journal_args(&sim);
        kill_when(&mut child, move |_, line| {
            let event: Value = serde_json::from_str(line).unwrap_or_default();
            if event["event"] != "awaiting-approval" {
                return false;
            }
            if event["node"] == "cp1" {
                noderoll().arg("approve").arg(&plan).arg("cp1").args(&journal).assert().success();
                return false;
            }
            true
        })
    };
    assert!(approver.join().expect("reader"), "killed at cp2's approval");
    let _ = child.wait();
    let (object, lines) = journal_lines(&sim);
    assert_eq!(object["metadata"]["labels"]["app.kubernetes.io/managed-by"], "noderoll");
    assert!(lines.iter().any(|r| r["event"] == "approved" && r["node"] == "cp1"), "the approval is in the ConfigMap");
    assert!(lines.iter().any(|r| r["event"] == "step-finished" && r["step"] == "cp1/uncordon"));

    // Resumed: cp2 and cp3 approved up front, the rest runs to the end.
    noderoll().arg("approve").arg(&plan).args(["cp2", "cp3"]).args(journal_args(&sim)).assert().success();
    let out = apply_via(&sim.kubeconfig(), &plan, &args).output().expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    sim.assert_upgraded_once(5);
    let status = noderoll().arg("status").arg(&plan).args(journal_args(&sim)).args(["-o", "json"]).assert().success();
    let status: Value = serde_json::from_slice(&status.get_output().stdout).expect("JSON");
    assert_eq!(status["summary"]["last"], "finished");
    assert_eq!(status["summary"]["done"], 5);
    assert_eq!(status["summary"]["journal"], "configmap/noderoll-journal in namespace kube-system");
}

#[test]
fn a_second_writer_wins_and_the_running_rollout_stops() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = approving_plan(&sim, "raced");
    let mut child = apply_via(&sim.kubeconfig(), &plan, &["--journal-configmap", JOURNAL])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).is_ok_and(|n| n > 0)
        && !line.contains("\"awaiting-approval\"")
    {
        line.clear();
    }
    // Another writer adds a record that is not an approval, guarded by the version it read.
    let (mut object, lines) = journal_lines(&sim);
    let mut text: String = lines.iter().map(|r| format!("{r}\n")).collect();
    text.push_str("{\"event\":\"step-finished\",\"at\":\"t\",\"step\":\"ws01/cordon\"}\n");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip");
    let packed = encoder.finish().expect("gzip");
    object["binaryData"]["journal.jsonl.gz"] =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, packed).into();
    let path = sim.dir.path().join("foreign.json");
    std::fs::write(&path, object.to_string()).expect("write");
    sim.kubectl_ok(&["replace", "--validate=false", "-f", path.to_str().expect("utf-8")]);

    let status = child.wait().expect("apply exits");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("changed by another writer"), "{stderr}");
    // The loser wrote nothing after the foreign record.
    let (_, after) = journal_lines(&sim);
    assert_eq!(after.last().map(|r| r["step"].clone()), Some("ws01/cordon".into()));
}

#[test]
fn a_journal_whose_create_answer_was_lost_is_adopted() {
    // The create is carried out, its answer lost; the retry finds the ConfigMap there.
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = small_plan(sim.dir.path(), "lost-create", "", SIM_UPGRADE);
    sim.ctl(&["faults", "--lose-next-answer", "POST /api/v1/namespaces/kube-system/configmaps"]).success();
    let out = apply_via(&sim.kubeconfig(), &plan, &["--journal-configmap", JOURNAL]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sim.state()["faults"]["loseNextAnswer"].is_null(), "the answer was lost: {}", sim.state()["faults"]);
    sim.assert_upgraded_once(5);
    let (_, lines) = journal_lines(&sim);
    assert!(lines.iter().any(|l| l["event"] == "finished"), "the journal says finished");
}

#[test]
fn answers_lost_after_the_write_do_not_stop_a_rollout() {
    // One request in twenty is carried out and its answer dropped: retried writes find
    // their objects there, their pods gone, their journal lines stored.
    let sim = SimProcess::start(&["--sessions-per-node", "1"]);
    let plan = small_plan(sim.dir.path(), "lossy-answers", "", SIM_UPGRADE);
    sim.ctl(&["faults", "--lost-answer-rate", "0.05"]).success();
    let out = apply_via(&sim.kubeconfig(), &plan, &["--journal-configmap", JOURNAL]).output().expect("apply runs");
    let lost = std::fs::read_to_string(sim.dir.path().join("audit.jsonl"))
        .expect("audit log")
        .lines()
        .filter(|l| l.contains("\"status\":0"))
        .count();
    sim.ctl(&["faults"]).success();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lost > 0, "some answers were lost");
    sim.assert_upgraded_once(5);
}
