//! The chaos suites: ServiceLB rollouts against the simulator and a real knotd under
//! random API faults, watched from outside the whole time. They count what must never
//! happen (an empty record set, a cordoned node still served, two etcd members' nodes out
//! at once, a node left cordoned, a record not restored, a node upgraded twice or not at
//! all, a broken journal line) and report the rollouts that needed a human.
//!
//! - `--suite kill` (the default): a plan of fixed size; every `apply` is killed with
//!   SIGKILL at a random event, then resumed (up to three times) until it finishes. Each run
//!   draws the record strategy, the workstations' batches (one to three, 1 to 8 at a time), a
//!   fault profile (none, 5% 500s, 5% 429s, 3% dropped connections, 3% answers lost after
//!   the request was carried out, or a mix) and a 2 s
//!   outage of the whole API at a random event.
//! - `--suite random`: the plan's size is drawn too (1 to `--workstations` workstations), the
//!   outage lasts 0.5 to 3 s, half the runs take quorum from a real 3-member etcd on loopback
//!   ports, half are killed, and one run in three loses a node for good at a random event: a
//!   workstation, or a control-plane node with its etcd member. Such a rollout cannot finish;
//!   it must stop without taking a second member out, emptying the record or leaving another
//!   node cordoned, and is counted as needing a human.
//!
//! `--cluster real` runs either suite against the real control plane (scripts/control-plane)
//! instead of the simulator: a Juno-shaped studio whose pods kwok runs, the test upgrade hook
//! that reboots a node through the API, outages made by stopping kube-apiserver for the
//! drawn time, and a lost node that kwok stops acting for. The real API server takes no
//! injected error profile: its faults are the outages.
//!
//! `cargo test` runs a short version of each against the simulator (2 runs of a 13-node
//! plan) and one kill run of a 7-node plan against the real control plane. The full
//! suites: `cargo test --release --test chaos -- --suite kill --runs 200 --workstations 27
//! --minutes 120` (a 30-node plan) and `... -- --suite random --runs 1000 --workstations 12
//! --minutes 600`; `--seed N` replays a suite. All traffic stays on loopback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use test_support::control_plane::{self, ControlPlane, Studio};
use test_support::etcd::EtcdCluster;
use test_support::harness::{self, Cluster, Random, SimCtl, SimProcess, kill_when};
use test_support::knot::{
    KEY, Knot, PlanExtra, SERVICE_ADDRESSES, rfc2136, roll_and_watch, servicelb_plan, start_apply, watch,
};

/// Which suite runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Suite {
    /// A plan of fixed size, every apply killed and resumed: what a crash must not break.
    Kill,
    /// Plans, faults and losses drawn at random: what must never be seen from outside.
    Random,
}

/// What the suite runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Against {
    /// `noderoll sim`, with injected API faults.
    Simulator,
    /// The real control plane of scripts/control-plane.
    Real,
}

/// How a suite runs.
struct Settings {
    suite: Suite,
    target: Against,
    runs: usize,
    workstations: usize,
    minutes: u64,
    seed: Option<u64>,
}

fn settings() -> Settings {
    let mut settings =
        Settings { suite: Suite::Kill, target: Against::Simulator, runs: 2, workstations: 10, minutes: 20, seed: None };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = || pair[1].parse::<u64>().unwrap_or_else(|_| panic!("{} takes a number", pair[0]));
        match pair[0].as_str() {
            "--suite" => {
                settings.suite = match pair[1].as_str() {
                    "kill" => Suite::Kill,
                    "random" => Suite::Random,
                    other => panic!("--suite takes kill or random, not {other}"),
                }
            }
            "--cluster" => {
                settings.target = match pair[1].as_str() {
                    "sim" => Against::Simulator,
                    "real" => Against::Real,
                    other => panic!("--cluster takes sim or real, not {other}"),
                }
            }
            "--runs" => settings.runs = value() as usize,
            "--workstations" => settings.workstations = value() as usize,
            "--minutes" => settings.minutes = value(),
            "--seed" => settings.seed = Some(value()),
            _ => {}
        }
    }
    settings
}

/// API faults for one run, as `noderoll sim ctl faults` arguments.
fn faults(random: &mut Random) -> Vec<String> {
    let profiles: [&[&str]; 6] = [
        &[],
        &["--error-rate", "0.05"],
        &["--throttle-rate", "0.05"],
        &["--drop-rate", "0.03"],
        &["--lost-answer-rate", "0.03"],
        &["--error-rate", "0.03", "--throttle-rate", "0.03", "--drop-rate", "0.02", "--lost-answer-rate", "0.02"],
    ];
    profiles[random.below(profiles.len() as u64) as usize].iter().map(|s| (*s).to_owned()).collect()
}

/// A cluster the suites run against: the simulator or the real control plane.
trait Target: Cluster + Sized {
    /// Started with cp1..3 and `workstations` workstations.
    fn start(workstations: usize) -> Self;
    /// A handle for the thread that reads apply's events.
    fn steer(&self) -> Steer;
    /// Reboots per node since the run began.
    fn reboots(&self) -> BTreeMap<String, u64>;
    /// The plan's upgrade hook, as YAML argv.
    fn upgrade_hook() -> String;
    /// Lines under the plan's `defaults`.
    fn defaults() -> &'static str;
    /// Injects the run's API faults (the real API server takes none).
    fn set_faults(&self, faults: &[String]);
    /// Whether `faults` take effect here (for the run's log).
    fn takes_faults() -> bool;
}

impl Target for SimProcess {
    fn start(workstations: usize) -> Self {
        SimProcess::start(&["--workstations", &workstations.to_string(), "--sessions-per-node", "0"])
    }

    fn steer(&self) -> Steer {
        Steer::Sim(Arc::new(self.controller()))
    }

    fn reboots(&self) -> BTreeMap<String, u64> {
        let state = self.state();
        state["reboots"].as_object().into_iter().flatten().map(|(n, c)| (n.clone(), c.as_u64().unwrap_or(0))).collect()
    }

    fn upgrade_hook() -> String {
        harness::SIM_UPGRADE.to_owned()
    }

    // A drain held by a budget whose other replica was lost would otherwise wait 15 minutes.
    fn defaults() -> &'static str {
        "    drain: {timeout: 30s}\n"
    }

    fn set_faults(&self, faults: &[String]) {
        let mut args = vec!["faults"];
        args.extend(faults.iter().map(String::as_str));
        self.ctl(&args).success();
    }

    fn takes_faults() -> bool {
        true
    }
}

impl Target for ControlPlane {
    fn start(workstations: usize) -> Self {
        let plane = ControlPlane::up();
        plane.studio(&Studio { workstations });
        plane
    }

    fn steer(&self) -> Steer {
        Steer::Real { dir: self.dir().to_owned(), kubeconfig: self.kubeconfig(), restarts: Arc::default() }
    }

    fn reboots(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for node in ControlPlane::reboots(self) {
            *counts.entry(node).or_insert(0) += 1;
        }
        counts
    }

    fn upgrade_hook() -> String {
        control_plane::upgrade_hook()
    }

    // The studio's sessions are drained after 2 s: no user logs out in a chaos run; its
    // bare debug-shell pod declares no controller, so the drain needs force.
    fn defaults() -> &'static str {
        "    drain: {timeout: 30s, force: true}\n    sessions: {timeout: 2s, onTimeout: drain}\n"
    }

    fn set_faults(&self, _: &[String]) {}

    fn takes_faults() -> bool {
        false
    }
}

/// Steers the cluster from the thread that reads apply's events.
#[derive(Clone)]
enum Steer {
    Sim(Arc<SimCtl>),
    Real { dir: PathBuf, kubeconfig: PathBuf, restarts: Arc<Mutex<Vec<Child>>> },
}

impl Steer {
    /// The control API is outside the injected faults: a failure is the harness's own,
    /// said in the run's log rather than ending an hour-long suite.
    fn ctl(ctl: &SimCtl, number: usize, args: &[&str]) {
        let output = ctl.run(args).get_output().clone();
        if !output.status.success() {
            eprintln!("run {number}: sim ctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
    }

    /// The whole API unreachable for `ms` milliseconds, the run's faults kept.
    fn outage(&self, number: usize, faults: &[String], ms: u64) {
        match self {
            Steer::Sim(ctl) => {
                let ms = format!("{ms}ms");
                let mut args = vec!["faults"];
                args.extend(faults.iter().map(String::as_str));
                args.extend(["--outage", &ms]);
                Steer::ctl(ctl, number, &args);
            }
            Steer::Real { dir, restarts, .. } => {
                let child = control_plane::restart(dir, "kube-apiserver", ms as f64 / 1000.0);
                restarts.lock().expect("restarts").push(child);
            }
        }
    }

    /// `node` lost for good.
    fn lose(&self, number: usize, node: &str) {
        match self {
            Steer::Sim(ctl) => Steer::ctl(ctl, number, &["reboot", node, "--fails"]),
            Steer::Real { kubeconfig, .. } => lose_real_node(kubeconfig, node),
        }
    }

    /// Waits for outages still under way (kube-apiserver restarting).
    fn settle(&self, number: usize) {
        if let Steer::Real { restarts, .. } = self {
            for child in restarts.lock().expect("restarts").drain(..) {
                let out = child.wait_with_output().expect("restart ends");
                if !out.status.success() {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    eprintln!("run {number}: restarting kube-apiserver failed: {}", stderr.trim());
                }
            }
        }
    }
}

/// A node of the real control plane lost for good: kwok stops acting for it (its
/// annotation removed) and its Ready condition goes False, as a node that does not come
/// back from its reboot. Failures are said in the run's log, not raised.
fn lose_real_node(kubeconfig: &std::path::Path, node: &str) {
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(harness::kubectl_binary())
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .output()
            .expect("kubectl runs");
        if !out.status.success() {
            eprintln!("losing {node}: kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    };
    kubectl(&["annotate", "node", node, "kwok.x-k8s.io/node-"]);
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"False","reason":"NodeLost","message":"lost for good","lastHeartbeatTime":"{now}","lastTransitionTime":"{now}"}}]}}}}"#
    );
    kubectl(&["patch", "node", node, "--subresource", "status", "--type", "strategic", "-p", &patch]);
}

/// What one run left behind.
#[derive(Default)]
struct Tally {
    violations: Vec<String>,
    left_cordoned: usize,
    /// Nodes a stopped rollout left cordoned and named in its last `halted` event.
    left_cordoned_named: usize,
    records_not_restored: usize,
    upgraded_twice: usize,
    not_upgraded: usize,
    broken_journal_lines: usize,
    extra_resumes: usize,
    needed_a_human: usize,
    lost_nodes: usize,
    double_outages: usize,
    samples: usize,
}

fn run<C: Target>(number: usize, settings: &Settings, random: &mut Random) -> Tally {
    let randomized = settings.suite == Suite::Random;
    let count =
        if randomized { 1 + random.below(settings.workstations as u64) as usize } else { settings.workstations };
    let sim = C::start(count);
    // The plan's shape is drawn: the record strategy, and the workstations in one to three
    // batches of random width; in the random suite, quorum from etcd or from node readiness.
    let single = random.below(2) == 0;
    let (strategy, record) =
        if single { ("single-record", &SERVICE_ADDRESSES[..1]) } else { ("round-robin", &SERVICE_ADDRESSES[..]) };
    let knot = Knot::start(record);
    let before = knot.answer();
    let etcd = (randomized && random.below(2) == 0).then(|| Arc::new(Mutex::new(EtcdCluster::start())));
    let endpoints = etcd.as_ref().map(|e| e.lock().expect("etcd").endpoints()).unwrap_or_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let width = count.to_string().len().max(2);
    let workstations: Vec<String> = (1..=count).map(|i| format!("ws{i:0width$}")).collect();
    let batches = 1 + random.below(3) as usize;
    let mut batch_lines = String::new();
    for (i, chunk) in workstations.chunks(workstations.len().div_ceil(batches).max(1)).enumerate() {
        let at_once = 1 + random.below(8);
        batch_lines.push_str(&format!(
            "    - {{name: ws-{i}, role: workstation, nodes: [{}], maxUnavailable: {at_once}}}\n",
            chunk.join(", ")
        ));
    }
    let upgrade = C::upgrade_hook();
    let extra = PlanExtra {
        etcd_endpoints: &endpoints,
        defaults: C::defaults(),
        batches: &batch_lines,
        upgrade: &upgrade,
        ..PlanExtra::default()
    };
    let plan = servicelb_plan(dir.path(), strategy, &rfc2136(dir.path(), &knot, KEY), &extra);
    // Drawn on either cluster, so that a seed draws the same plans on both.
    let drawn = faults(random);
    let faults = if C::takes_faults() { drawn } else { Vec::new() };
    sim.set_faults(&faults);
    // A rollout reports about two events per step and nine steps per node.
    let events = 2 * 9 * (3 + count) as u64;
    let kill_at = (!randomized || random.below(2) == 0).then(|| 1 + random.below(events) as usize);
    let outage_at = 1 + random.below(events) as usize;
    let outage_ms = if randomized { 500 + random.below(2501) } else { 2000 };
    // The random suite loses a node for good in one run of three, at a random event (at the
    // kill at the latest): a workstation that never comes back, or a control-plane node and
    // its etcd member. Such a rollout cannot finish; it must stop safely and say so.
    let lost = match randomized.then(|| random.below(6)) {
        Some(0) => Some(workstations[random.below(workstations.len() as u64) as usize].clone()),
        Some(1) => Some(format!("cp{}", 1 + random.below(3))),
        _ => None,
    };
    let lost_at = 1 + random.below(events) as usize;
    let mut child = start_apply(&sim, &plan);
    let steer = sim.steer();
    let steering = steer.clone();
    let outage_faults = faults.clone();
    let node_lost = lost.clone();
    let member_of_lost = etcd.clone();
    let lost_happened = Arc::new(AtomicBool::new(false));
    let lose = lost_happened.clone();
    let killer = kill_when(&mut child, move |line, _| {
        if line == outage_at {
            steering.outage(number, &outage_faults, outage_ms);
        }
        let due = line == lost_at || (Some(line) == kill_at && lost_at > line);
        if let Some(node) = node_lost.as_deref().filter(|_| due && !lose.load(Ordering::SeqCst)) {
            steering.lose(number, node);
            if let (Some(etcd), Some(index)) = (&member_of_lost, node.strip_prefix("cp")) {
                etcd.lock().expect("etcd").kill(index.parse::<usize>().expect("cpN") - 1);
            }
            lose.store(true, Ordering::SeqCst);
        }
        Some(line) == kill_at
    });
    let first = watch(&sim, &knot, child);
    let killed = killer.join().expect("killer thread");
    steer.settle(number);
    let lost = lost.filter(|_| lost_happened.load(Ordering::SeqCst));
    let mut tally = Tally {
        violations: first.violations,
        double_outages: first.double_outages,
        samples: first.samples,
        ..Tally::default()
    };
    // A lost node cannot be brought back by running apply again: one resume shows the
    // rollout stops safely; without a loss, up to three resumes finish it.
    let tries = if lost.is_some() { 1 } else { 3 };
    let mut code = first.code;
    if code != 0 && !killed {
        // Stopped by itself: what stopped it is what the resume has to get past. Its
        // events went to the killer's reader; the journal has the failure.
        let journal = std::fs::read_to_string(dir.path().join(".noderoll/dns.journal")).unwrap_or_default();
        let failed = journal.lines().rev().find(|l| l.contains("\"step-failed\""));
        eprintln!("run {number}: apply stopped by itself (exit {code}): {}", failed.unwrap_or_default());
    }
    let mut resumes: usize = 0;
    let mut named: Vec<String> = Vec::new();
    let mut halted_at: Vec<String> = Vec::new();
    while code != 0 && resumes < tries {
        let resumed = roll_and_watch(&sim, &knot, &plan);
        let halt = resumed.events.iter().rev().find(|e| e["event"] == "halted");
        let strings = |values: Option<&Vec<Value>>, field: Option<&str>| -> Vec<String> {
            values
                .into_iter()
                .flatten()
                .filter_map(|v| field.map_or(v, |f| &v[f]).as_str().map(str::to_owned))
                .collect()
        };
        named = strings(halt.and_then(|e| e["cordoned"].as_array()), None);
        halted_at = strings(halt.and_then(|e| e["failed"].as_array()), Some("step"));
        tally.violations.extend(resumed.violations);
        tally.double_outages += resumed.double_outages;
        tally.samples += resumed.samples;
        resumes += 1;
        code = resumed.code;
        if code != 0 && resumes == tries && lost.is_none() {
            let last = resumed.events.iter().rev().find(|e| e["event"] == "halted" || e["event"] == "step-failed");
            eprintln!(
                "run {number}: still not finished after {tries} resumes (exit {code}): {} {}",
                last.map(Value::to_string).unwrap_or_default(),
                resumed.stderr.trim()
            );
        }
    }
    let finished = code == 0;
    if lost.is_none() {
        tally.extra_resumes = resumes.saturating_sub(usize::from(killed));
    }
    tally.needed_a_human = usize::from(!finished);
    steer.settle(number);
    sim.set_faults(&[]);
    let nodes = sim.nodes();
    // The lost node may stay cordoned: it never came back, and it is not served again. A
    // stopped rollout may leave others cordoned if its halt says so (the operator is told
    // which); any other cordoned node is a broken promise.
    let cordoned: Vec<String> = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["spec"]["unschedulable"] == true && n["metadata"]["name"].as_str() != lost.as_deref())
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let (told, untold): (Vec<String>, Vec<String>) = cordoned.into_iter().partition(|n| !finished && named.contains(n));
    if !untold.is_empty() || !told.is_empty() {
        eprintln!(
            "run {number}: left cordoned {untold:?}; left cordoned and named by the halt {told:?}; it halted at {halted_at:?}"
        );
    }
    tally.left_cordoned = untold.len();
    tally.left_cordoned_named = told.len();
    let reboots = sim.reboots();
    tally.upgraded_twice = reboots.iter().filter(|(node, r)| **r > 1 && Some(node.as_str()) != lost.as_deref()).count();
    if lost.is_none() {
        tally.records_not_restored = usize::from(knot.answer() != before);
        tally.not_upgraded = (3 + count).saturating_sub(reboots.len());
    }
    let journal = std::fs::read_to_string(dir.path().join(".noderoll/dns.journal")).unwrap_or_default();
    tally.broken_journal_lines = journal.lines().filter(|l| serde_json::from_str::<Value>(l).is_err()).count();
    eprintln!(
        "run {number}: {} nodes, {strategy}, {batches} workstation batch(es), quorum from {}, faults {:?}, {}, {outage_ms} ms outage at event {outage_at}, {}, {resumes} resume(s), {}, {} violation(s) in {} samples",
        3 + count,
        if etcd.is_some() { "etcd" } else { "node readiness" },
        faults,
        match (kill_at, killed) {
            (Some(at), true) => format!("killed at event {at}"),
            (Some(_), false) => "finished before the kill".to_owned(),
            (None, _) => "not killed".to_owned(),
        },
        lost.as_deref().map_or_else(|| "no node lost".to_owned(), |n| format!("{n} lost at event {lost_at}")),
        if finished { "finished" } else { "stopped: needs a human" },
        tally.violations.len(),
        tally.samples
    );
    tally.lost_nodes = usize::from(lost.is_some());
    tally
}

/// Runs one suite; returns whether every safety count was 0.
fn suite(settings: &Settings, random: &mut Random) -> bool {
    match settings.target {
        Against::Simulator => suite_on::<SimProcess>(settings, random),
        Against::Real => suite_on::<ControlPlane>(settings, random),
    }
}

fn suite_on<C: Target>(settings: &Settings, random: &mut Random) -> bool {
    let nodes = 3 + settings.workstations;
    let size = if settings.suite == Suite::Random { format!("up to {nodes}") } else { format!("{nodes}") };
    eprintln!(
        "chaos ({:?}, {:?}): up to {} run(s) of a ServiceLB plan of {size} nodes, at most {} minute(s), seed {}",
        settings.suite, settings.target, settings.runs, settings.minutes, random.seed
    );
    let started = Instant::now();
    let mut total = Tally::default();
    let mut done = 0;
    while done < settings.runs && started.elapsed() < Duration::from_secs(settings.minutes * 60) {
        let tally = run::<C>(done + 1, settings, random);
        for violation in &tally.violations {
            eprintln!("  run {}: {violation}", done + 1);
        }
        total.violations.extend(tally.violations);
        total.left_cordoned += tally.left_cordoned;
        total.left_cordoned_named += tally.left_cordoned_named;
        total.records_not_restored += tally.records_not_restored;
        total.upgraded_twice += tally.upgraded_twice;
        total.not_upgraded += tally.not_upgraded;
        total.broken_journal_lines += tally.broken_journal_lines;
        total.extra_resumes += tally.extra_resumes;
        total.needed_a_human += tally.needed_a_human;
        total.lost_nodes += tally.lost_nodes;
        total.double_outages += tally.double_outages;
        total.samples += tally.samples;
        done += 1;
    }
    let safety = [
        (
            "record set empty, cordoned node served, two members cordoned, or one taken out while another was down (observations)",
            total.violations.len(),
        ),
        ("nodes left cordoned (but the lost one, and those a stopped rollout's halt names)", total.left_cordoned),
        ("records not restored", total.records_not_restored),
        ("nodes upgraded twice", total.upgraded_twice),
        ("nodes not upgraded", total.not_upgraded),
        ("broken journal lines", total.broken_journal_lines),
    ];
    println!(
        "chaos ({:?}, {:?}): {done} run(s) of {size} nodes in {:.0} s, seed {}; {} samples of DNS and nodes",
        settings.suite,
        settings.target,
        started.elapsed().as_secs_f64(),
        random.seed,
        total.samples
    );
    for (what, count) in safety {
        println!("  {what}: {count}");
    }
    println!("  resumes beyond the ones a kill needs (a human would have run apply again): {}", total.extra_resumes);
    println!(
        "  rollouts that stopped and need a human: {} (runs that lost a node for good: {}); nodes they left cordoned, named in the halt: {}",
        total.needed_a_human, total.lost_nodes, total.left_cordoned_named
    );
    println!(
        "  samples with two control-plane nodes out through a loss while one was out (no rollout can prevent it): {}",
        total.double_outages
    );
    safety.iter().all(|(_, count)| *count == 0)
}

fn main() {
    let mut settings = settings();
    let mut random = Random::from_env();
    if let Some(seed) = settings.seed {
        random = Random::with_seed(seed);
    }
    // Without --suite, `cargo test`'s short run: both suites on the simulator, then one
    // kill run of a 7-node plan on the real control plane.
    let short: Vec<(Suite, Against, usize, usize)> = if std::env::args().any(|a| a == "--suite") {
        vec![(settings.suite, settings.target, settings.runs, settings.workstations)]
    } else {
        vec![
            (Suite::Kill, Against::Simulator, settings.runs, settings.workstations),
            (Suite::Random, Against::Simulator, settings.runs, settings.workstations),
            (Suite::Kill, Against::Real, 1, 4),
        ]
    };
    let mut safe = true;
    for (suite_kind, target, runs, workstations) in short {
        settings.suite = suite_kind;
        settings.target = target;
        settings.runs = runs;
        settings.workstations = workstations;
        safe &= suite(&settings, &mut random);
    }
    if !safe {
        std::process::exit(1);
    }
}
