//! noderoll's drain against `kubectl drain`, side by side against the same cluster: wall
//! time and API requests (counted from the API server's audit log, by user agent), for a
//! node with 100 pods, and for a node whose 3 pods a PodDisruptionBudget lets go one at a
//! time. Against the simulator (at its real time scale, since kubectl's waits are in real
//! time) and against the real control plane (scripts/control-plane: kwok's pods are Ready
//! as soon as they are scheduled, and leave at the end of their grace period).
//!
//! `cargo bench --bench drain` (needs kubectl on PATH and the control plane built, as
//! `scripts/test` ensures); `-- --cluster sim` or `-- --cluster real` runs one of the two.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::control_plane::{self, ControlPlane, Studio};
use test_support::harness::{Cluster, SimProcess};

const NEW_VERSION: &str = "v1.31.4+k3s1";
/// Simulated (and, at time scale 1, real) time from scheduling to Ready.
const POD_START_SECONDS: f64 = 2.0;
/// Grace period of the benchmark's pods: how long an evicted pod stays Terminating.
const GRACE_SECONDS: f64 = 1.0;
/// Runs of each contender per scenario; the median is reported.
const RUNS: usize = 3;

/// The simulator for one scenario: at time scale 1, pods Ready in 2 s, nodes rebooting in
/// 1 s, no sessions or services of its own.
fn start_sim() -> SimProcess {
    SimProcess::start_at(
        "1",
        &[
            "--control-planes",
            "3",
            "--workstations",
            "2",
            "--sessions-per-node",
            "0",
            "--services",
            "0",
            "--pod-start",
            &format!("{POD_START_SECONDS}s"),
            "--reboot-time",
            "1s",
        ],
    )
}

/// A cluster the benchmark drains in: what it needs beyond kubectl.
trait Bench: Cluster {
    /// The upgrade hook, as YAML argv.
    fn hook(&self) -> String;
    /// Each request in the audit log: when it came and who sent it.
    fn requests(&self) -> Vec<(jiff::Timestamp, Who)>;
    /// The pods' scheduling: what a bench Deployment's pod spec adds.
    fn placement(&self) -> &'static str;
}

impl Bench for SimProcess {
    fn hook(&self) -> String {
        format!(
            "[{}, sim, ctl, upgrade, \"{{node}}\", --kubelet-version, {NEW_VERSION}]",
            env!("CARGO_BIN_EXE_noderoll")
        )
    }

    fn requests(&self) -> Vec<(jiff::Timestamp, Who)> {
        // Only the two contenders talk to the simulator: its controllers run inside it.
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        audit_lines(&text, "time", |_| true)
    }

    fn placement(&self) -> &'static str {
        ""
    }
}

impl Bench for ControlPlane {
    fn hook(&self) -> String {
        control_plane::upgrade_hook()
    }

    fn requests(&self) -> Vec<(jiff::Timestamp, Who)> {
        // The controllers, the scheduler and kwok talk to the real server too, each as its
        // own user; kubectl and noderoll both use the admin's certificate.
        let text = std::fs::read_to_string(self.dir().join("kube-apiserver-audit.log")).unwrap_or_default();
        audit_lines(&text, "requestReceivedTimestamp", |e| e["user"]["username"] == "noderoll-admin")
    }

    fn placement(&self) -> &'static str {
        "      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n"
    }
}

/// Who sent a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Kubectl,
    Noderoll,
}

/// The audit log's requests by a contender (`contender` says which entries are), timed by
/// the field `time`; kubectl by its user agent, noderoll the others.
fn audit_lines(text: &str, time: &str, contender: impl Fn(&Value) -> bool) -> Vec<(jiff::Timestamp, Who)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| contender(e))
        .filter_map(|e| {
            let at = e[time].as_str()?.parse().ok()?;
            let kubectl = e["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl"));
            Some((at, if kubectl { Who::Kubectl } else { Who::Noderoll }))
        })
        .collect()
}

/// Requests between two instants by one contender.
fn requests_between(cluster: &impl Bench, from: jiff::Timestamp, to: jiff::Timestamp, who: Who) -> usize {
    cluster.requests().iter().filter(|(at, by)| *at >= from && *at <= to && *by == who).count()
}

/// Pods of the bench's app that are Running and Ready on `node`.
fn ready_on(sim: &impl Cluster, node: &str) -> usize {
    let pods: Value =
        serde_json::from_str(&sim.kubectl_ok(&["get", "pods", "-l", "app=bench", "-o", "json"])).expect("pods JSON");
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count()
}

fn wait_ready_on(sim: &impl Cluster, node: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready_on(sim, node) < count {
        assert!(Instant::now() < deadline, "{count} bench pods did not become Ready on {node}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One drain: wall seconds and API requests.
#[derive(Clone, Copy)]
struct Measured {
    seconds: f64,
    requests: usize,
}

fn kubectl_drain(cluster: &impl Bench, node: &str) -> Measured {
    std::thread::sleep(Duration::from_millis(300));
    let from = jiff::Timestamp::now();
    let started = Instant::now();
    cluster.kubectl_ok(&["drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5m"]);
    let seconds = started.elapsed().as_secs_f64();
    let to = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(300));
    Measured { seconds, requests: requests_between(cluster, from, to, Who::Kubectl) }
}

/// A plan of `node` alone, with the cluster's upgrade hook.
fn plan(dir: &Path, node: &str, hook: &str) -> PathBuf {
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: bench}}\nspec:\n  loadBalancer: {{mode: external}}\n  defaults:\n    drain: {{timeout: 5m, ignoreDaemonSets: true, deleteEmptyDirData: true}}\n    upgrade:\n      command: {hook}\n      timeout: 2m\n    verify: {{readyTimeout: 2m}}\n  batches:\n    - {{name: one, role: workstation, nodes: [{node}]}}\n"
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

fn timestamp(text: &str) -> jiff::Timestamp {
    text.parse().unwrap_or_else(|e| panic!("not a timestamp: {text}: {e}"))
}

/// noderoll's drain step, inside a whole `apply` of a one-node plan: its time from the
/// journal, its requests from the audit log between the step's start and end.
fn noderoll_drain(sim: &impl Bench, node: &str, run: usize) -> Measured {
    let plan = plan(sim.scratch(), node, &sim.hook());
    let journal = sim.scratch().join(format!("bench-{run}.journal"));
    let out = Command::new(env!("CARGO_BIN_EXE_noderoll"))
        .arg("apply")
        .arg(&plan)
        .arg("--kubeconfig")
        .arg(sim.kubeconfig())
        .arg("--journal")
        .arg(&journal)
        .args(["--yes", "--output", "json"])
        .env("KUBECONFIG", sim.kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("apply runs");
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let records: Vec<Value> = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step = format!("{node}/drain");
    let at = |kind: &str| {
        records
            .iter()
            .find(|r| r["event"] == kind && r["step"] == step)
            .and_then(|r| r["at"].as_str())
            .map(timestamp)
            .unwrap_or_else(|| panic!("no {kind} record for {step}"))
    };
    let (from, to) = (at("step-started"), at("step-finished"));
    Measured {
        seconds: (to - from).total(jiff::Unit::Second).unwrap_or(0.0),
        requests: requests_between(sim, from, to, Who::Noderoll),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Row {
    cluster: &'static str,
    scenario: &'static str,
    kubectl: Vec<Measured>,
    noderoll: Vec<Measured>,
    lower_bound: Option<f64>,
}

/// Alternates kubectl and noderoll on the same node, `reset` putting the pods back before
/// each run.
fn compare(
    cluster: &'static str,
    scenario: &'static str,
    sim: &impl Bench,
    node: &str,
    reset: &dyn Fn(),
    lower_bound: Option<f64>,
) -> Row {
    let mut row = Row { cluster, scenario, kubectl: Vec::new(), noderoll: Vec::new(), lower_bound };
    for run in 0..RUNS {
        reset();
        row.kubectl.push(kubectl_drain(sim, node));
        reset();
        row.noderoll.push(noderoll_drain(sim, node, run));
        eprintln!(
            "  {scenario}, run {}: kubectl {:.2} s / {} requests, noderoll {:.2} s / {} requests",
            run + 1,
            row.kubectl[run].seconds,
            row.kubectl[run].requests,
            row.noderoll[run].seconds,
            row.noderoll[run].requests
        );
    }
    row
}

fn deployment(replicas: usize, node_selector: &str, placement: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: bench, namespace: default}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: bench}}}}\n  template:\n    metadata: {{labels: {{app: bench}}}}\n    spec:\n      terminationGracePeriodSeconds: {GRACE_SECONDS}\n{node_selector}{placement}      containers: [{{name: app, image: registry.example/bench:1}}]\n"
    )
}

/// The real control plane with cp1..3, ws01 and ws02 and nothing running on them.
fn start_real() -> ControlPlane {
    let plane = ControlPlane::up();
    plane.studio_nodes(&Studio { workstations: 2 });
    plane
}

/// kubectl create (the simulator serves no OpenAPI document to validate against).
fn create(cluster: &impl Cluster, yaml: &str) {
    let path = cluster.scratch().join("bench-manifest.yaml");
    std::fs::write(&path, yaml).expect("write manifest");
    cluster.kubectl_ok(&["create", "--validate=false", "-f", path.to_str().expect("utf-8")]);
}

/// 100 pods pinned to ws01: every eviction is allowed at once.
fn hundred_pods(name: &'static str, sim: &impl Bench) -> Row {
    create(sim, &deployment(100, "      nodeSelector: {kubernetes.io/hostname: ws01}\n", sim.placement()));
    wait_ready_on(sim, "ws01", 100);
    let reset = || {
        sim.kubectl_ok(&["uncordon", "ws01"]);
        wait_ready_on(sim, "ws01", 100);
    };
    compare(name, "100 pods, no budget", sim, "ws01", &reset, None)
}

/// 3 pods on ws01 under a budget of minAvailable 2, their replacements going to ws02: the
/// budget lets one go at a time, each after the previous replacement is Ready.
fn budgeted(name: &'static str, sim: &impl Bench, lower_bound: Option<f64>) -> Row {
    for node in ["cp1", "cp2", "cp3", "ws02"] {
        sim.kubectl_ok(&["cordon", node]);
    }
    create(sim, &deployment(3, "", sim.placement()));
    create(
        sim,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bench, namespace: default}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: bench}}\n",
    );
    wait_ready_on(sim, "ws01", 3);
    let reset = || {
        // Back to three pods on ws01: only ws01 schedulable, the pods elsewhere deleted.
        sim.kubectl_ok(&["uncordon", "ws01"]);
        sim.kubectl_ok(&["cordon", "ws02"]);
        sim.kubectl_ok(&[
            "delete",
            "pods",
            "-l",
            "app=bench",
            "--field-selector",
            "spec.nodeName=ws02",
            "--wait=false",
        ]);
        wait_ready_on(sim, "ws01", 3);
        sim.kubectl_ok(&["uncordon", "ws02"]);
    };
    compare(name, "3 pods, PDB minAvailable 2", sim, "ws01", &reset, lower_bound)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::args().skip_while(|a| a != "--cluster").nth(1);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    eprintln!("drain: noderoll vs kubectl drain, {RUNS} runs each, medians");
    let mut rows = Vec::new();
    if wanted("sim") {
        rows.push(hundred_pods("simulator", &start_sim()));
        // Two replacements must become Ready one after the other before the last pod may
        // go, and the last pod then terminates: the simulator cannot do it faster.
        rows.push(budgeted("simulator", &start_sim(), Some(2.0 * POD_START_SECONDS + GRACE_SECONDS)));
    }
    if wanted("real") {
        rows.push(hundred_pods("real control plane", &start_real()));
        rows.push(budgeted("real control plane", &start_real(), None));
    }
    println!();
    println!(
        "| cluster | scenario | kubectl drain | noderoll drain | time ratio | kubectl requests | noderoll requests | request ratio | lower bound |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let k_time = median(row.kubectl.iter().map(|m| m.seconds).collect());
        let n_time = median(row.noderoll.iter().map(|m| m.seconds).collect());
        let k_requests = median(row.kubectl.iter().map(|m| m.requests as f64).collect());
        let n_requests = median(row.noderoll.iter().map(|m| m.requests as f64).collect());
        let bound = row
            .lower_bound
            .map_or_else(|| "-".to_owned(), |b| format!("{b:.1} s (noderoll +{:.0}%)", (n_time / b - 1.0) * 100.0));
        println!(
            "| {} | {} | {k_time:.2} s | {n_time:.2} s | {:.2} | {k_requests:.0} | {n_requests:.0} | {:.2} | {bound} |",
            row.cluster,
            row.scenario,
            n_time / k_time,
            n_requests / k_requests
        );
    }
}
