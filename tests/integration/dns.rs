//! The ServiceLB DNS steps against a real knotd on a loopback port: TSIG-signed RFC 2136
//! updates (and the command and manual providers, made with knsupdate), checked from the
//! outside with kdig while the rollout runs against the simulator.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Random, SimProcess, apply_via, free_port, noderoll};

/// The key knotd knows; the tests' own, good for nothing else.
const KEY: &str = "bm9kZXJvbGwtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2Q=";
/// A key knotd does not know.
const WRONG_KEY: &str = "c29tZS1vdGhlci1rZXktdGhhdC1pcy1ub3QtcmlnaHQ=";
/// The simulator's control-plane nodes' InternalIPs.
const SERVICE_ADDRESSES: [&str; 3] = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
const RECORD: &str = "juno.example.test.";

/// knotd serving `example.test` from a temp dir; dropping it kills the server.
struct Knot {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Knot {
    /// A zone whose `juno` record holds `addresses`, with TTL 1.
    fn start(addresses: &[&str]) -> Knot {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let root = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("run")).expect("run dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        let config = format!(
            "server:\n    rundir: \"{root}/run\"\n    listen: 127.0.0.1@{port}\nlog:\n  - target: stderr\n    any: info\ndatabase:\n    storage: \"{root}/storage\"\nkey:\n  - id: noderoll\n    algorithm: hmac-sha256\n    secret: {KEY}\nacl:\n  - id: upd\n    address: 127.0.0.1\n    key: noderoll\n    action: update\nzone:\n  - domain: example.test\n    storage: \"{root}/storage\"\n    file: example.test.zone\n    acl: upd\n"
        );
        std::fs::write(dir.path().join("knot.conf"), config).expect("knot.conf");
        let mut zone = String::from(
            "$ORIGIN example.test.\n$TTL 1\n@ IN SOA ns.example.test. admin.example.test. 1 3600 900 604800 1\n@ IN NS ns.example.test.\nns IN A 127.0.0.1\n",
        );
        for address in addresses {
            zone.push_str(&format!("juno 1 IN A {address}\n"));
        }
        std::fs::write(dir.path().join("storage/example.test.zone"), zone).expect("zone file");
        let check = Command::new("knotc")
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .arg("conf-check")
            .output()
            .expect("knotc runs (scripts/test installs knot)");
        assert!(check.status.success(), "knot.conf: {}", String::from_utf8_lossy(&check.stderr));
        let mut knot = Knot { dir, port, child: None };
        knot.run();
        knot
    }

    /// Starts knotd on the existing config and storage (a restart keeps the zone's state).
    fn run(&mut self) {
        let child = Command::new("knotd")
            .arg("-c")
            .arg(self.dir.path().join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("knotd.log")).expect("log file"))
            .spawn()
            .expect("knotd starts (scripts/test installs knot)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.kdig(&["example.test.", "SOA"]).contains("SOA") {
            assert!(Instant::now() < deadline, "knotd did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// kdig over TCP (a UDP probe at a port not bound yet stalls), answer section only.
    fn kdig(&self, question: &[&str]) -> String {
        let out = Command::new("kdig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+tcp", "+timeout=1", "+retry=0", "+noall", "+answer"])
            .args(question)
            .output()
            .expect("kdig runs (scripts/test installs knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The record's answer as (TTL, address), sorted.
    fn answer(&self) -> Vec<(String, String)> {
        let mut records: Vec<(String, String)> = self
            .kdig(&[RECORD, "A"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() == 5 && fields[3] == "A").then(|| (fields[1].to_owned(), fields[4].to_owned()))
            })
            .collect();
        records.sort();
        records
    }

    fn addresses(&self) -> BTreeSet<String> {
        self.answer().into_iter().map(|(_, a)| a).collect()
    }

    /// knsupdate's `-y` argument.
    fn key_argument() -> String {
        format!("hmac-sha256:noderoll:{KEY}")
    }

    /// Sends nsupdate text (without `server`) with knsupdate, as an operator would.
    fn nsupdate(&self, text: &str) {
        let mut child = Command::new("knsupdate")
            .args(["-y", &Self::key_argument()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("knsupdate runs");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            writeln!(stdin, "server 127.0.0.1 {}\nzone example.test.\n{text}", self.port).expect("write");
        }
        let out = child.wait_with_output().expect("knsupdate ends");
        assert!(out.status.success(), "knsupdate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ServiceLB plan for the simulator's control plane (cp1..3; workstations add nothing
/// to the DNS steps, and their sessions take a minute to move), with `provider` (YAML lines under `provider:`) and `extra` lines under `dns:`.
fn plan(dir: &Path, provider: &str, extra: &str) -> PathBuf {
    plan_with(dir, "round-robin", provider, extra)
}

/// `plan` with a record strategy.
fn plan_with(dir: &Path, strategy: &str, provider: &str, extra: &str) -> PathBuf {
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: dns}}\nspec:\n  loadBalancer:\n    mode: servicelb\n    dns:\n      name: {RECORD}\n      strategy: {strategy}\n      provider:\n{provider}{extra}  defaults:\n    upgrade:\n      command: [noderoll, sim, ctl, upgrade, \"{{node}}\", --kubelet-version, v1.31.4+k3s1]\n      timeout: 1m\n    verify: {{kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}}\n  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}}\n"
    );
    let path = dir.join("dns.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

/// The rfc2136 provider lines, with the secret in `dir/tsig.secret`.
fn rfc2136(dir: &Path, knot: &Knot, secret: &str) -> String {
    std::fs::write(dir.join("tsig.secret"), format!("{secret}\n")).expect("secret file");
    format!(
        "        rfc2136:\n          server: {}\n          zone: example.test.\n          tsig: {{name: noderoll, algorithm: hmac-sha256, secretFile: tsig.secret}}\n",
        knot.server()
    )
}

fn start_apply(sim: &SimProcess, plan: &Path) -> Child {
    apply_via(&sim.kubeconfig(), plan, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("apply starts")
}

fn finish(child: Child) -> (i32, Vec<Value>, String) {
    let out = child.wait_with_output().expect("apply ends");
    let events = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The service nodes cordoned now.
fn cordoned(sim: &SimProcess) -> BTreeSet<String> {
    let text = sim.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.unschedulable}{\"\\n\"}{end}",
    ]);
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(name, value)| name.starts_with("cp") && *value == "true")
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// stderr without miette's frame and line breaks, to search sentences in.
fn flat(stderr: &str) -> String {
    stderr.replace(['│', '×'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn address_of(node: &str) -> String {
    let index: usize = node.trim_start_matches("cp").parse().expect("cpN");
    SERVICE_ADDRESSES[index - 1].to_owned()
}

fn initial() -> Vec<&'static str> {
    SERVICE_ADDRESSES.to_vec()
}

/// A simulator, a knotd whose record holds `addresses`, its answer now, and a folder for
/// the plan: what every test here starts from.
fn setup(addresses: &[&str]) -> (SimProcess, Knot, Vec<(String, String)>, tempfile::TempDir) {
    let sim = SimProcess::start(&[]);
    let knot = Knot::start(addresses);
    let before = knot.answer();
    (sim, knot, before, tempfile::tempdir().expect("temp dir"))
}

/// Runs apply to its end while asking knotd and the API server, over and over, what they
/// hold; asserts the record is never empty and never serves a cordoned service node.
/// Returns the exit code, the events, stderr, and the nodes seen cordoned.
fn roll_and_watch(sim: &SimProcess, knot: &Knot, plan: &Path) -> (i32, Vec<Value>, String, BTreeSet<String>) {
    watch(sim, knot, start_apply(sim, plan))
}

/// `roll_and_watch` of an apply already started.
fn watch(sim: &SimProcess, knot: &Knot, mut child: Child) -> (i32, Vec<Value>, String, BTreeSet<String>) {
    let mut seen_out: BTreeSet<String> = BTreeSet::new();
    let mut samples = 0;
    while child.try_wait().expect("poll apply").is_none() {
        // Cordoned before and after the question: cordoned throughout it, since a node is
        // cordoned once per rollout; its address must not be served meanwhile.
        let first = cordoned(sim);
        let served = knot.addresses();
        let second = cordoned(sim);
        samples += 1;
        assert!(!served.is_empty(), "the record set was empty (sample {samples})");
        for node in first.intersection(&second) {
            assert!(!served.contains(&address_of(node)), "{node} is cordoned but {RECORD} still serves its address");
            seen_out.insert(node.clone());
        }
    }
    let (code, events, stderr) = finish(child);
    (code, events, stderr, seen_out)
}

/// The record changes the run reported.
fn changes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step-progress")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with(RECORD))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_round_robin_rollout_keeps_the_record_served_and_each_node_out_of_it_while_cordoned() {
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let (code, events, stderr, seen_out) = roll_and_watch(&sim, &knot, &plan);
    assert_eq!(code, 0, "apply failed: {stderr}");
    assert_eq!(seen_out.len(), 3, "every service node was seen cordoned and out of the record: {seen_out:?}");
    assert_eq!(knot.answer(), before, "the record ends as it began, TTLs included");
    assert_eq!(changes(&events).len(), 6, "one withdraw and one restore per service node: {:?}", changes(&events));
    let journal = std::fs::read_to_string(dir.path().join(".noderoll/dns.journal")).expect("journal");
    let output = serde_json::to_string(&events).expect("events");
    assert!(!journal.contains(KEY) && !stderr.contains(KEY) && !output.contains(KEY), "the TSIG secret leaked");
}

#[test]
fn a_single_record_is_repointed_while_its_node_is_out_and_moved_back() {
    let (sim, knot, before, dir) = setup(&SERVICE_ADDRESSES[..1]);
    let plan = plan_with(dir.path(), "single-record", &rfc2136(dir.path(), &knot, KEY), "");
    let (code, events, stderr, seen_out) = roll_and_watch(&sim, &knot, &plan);
    assert_eq!(code, 0, "apply failed: {stderr}");
    assert!(seen_out.contains("cp1"), "cp1 was seen cordoned with the record elsewhere: {seen_out:?}");
    assert_eq!(
        changes(&events),
        [format!("{RECORD}: 10.0.0.11 → 10.0.0.12"), format!("{RECORD}: 10.0.0.12 → 10.0.0.11"),],
        "only the node the record names is repointed, and back"
    );
    assert_eq!(knot.answer(), before);
}

#[test]
fn a_record_is_not_repointed_to_a_node_out_of_service() {
    let (sim, knot, before, dir) = setup(&SERVICE_ADDRESSES[..1]);
    sim.kubectl_ok(&["cordon", "cp2"]);
    let plan = plan_with(dir.path(), "single-record", &rfc2136(dir.path(), &knot, KEY), "");
    let (code, events, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 4, "{stderr}");
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "step-failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["step"], "cp1/dns-repoint");
    assert!(failed[0]["error"].as_str().is_some_and(|e| e.contains("cannot be moved to cp2")), "{failed:?}");
    assert_eq!(knot.answer(), before);
    assert_eq!(cordoned(&sim), BTreeSet::from(["cp2".to_owned()]), "cp1 was never taken out");
}

#[test]
fn a_rollout_killed_at_random_moments_resumes_with_every_record_restored() {
    // Up to three SIGKILLs at random events of one rollout (a 3-node plan reports about 90
    // events; each resume reports only what is left, so a late run may finish first), then
    // a last resume; the record is watched from outside throughout.
    let mut random = Random::from_env();
    let seed = random.seed;
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    for kill in 0..3 {
        let mut child = start_apply(&sim, &plan);
        let stop = 1 + random.below(30) as usize;
        let stdout = child.stdout.take().expect("stdout");
        let pid = child.id().to_string();
        let killer = std::thread::spawn(move || {
            let killed_at = BufReader::new(stdout).lines().map_while(Result::ok).nth(stop - 1);
            if killed_at.is_some() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            killed_at
        });
        let (code, _, stderr, _) = watch(&sim, &knot, child);
        let killed_at = killer.join().expect("killer thread");
        assert!(
            killed_at.is_some() || (code == 0 && kill > 0),
            "seed {seed}: run {kill} ended before event {stop} (exit {code}): {stderr}"
        );
        assert!(code == -1 || code == 0, "seed {seed}, kill {kill} at event {stop} ({killed_at:?}): {stderr}");
    }
    let (code, _, stderr, _) = roll_and_watch(&sim, &knot, &plan);
    assert_eq!(code, 0, "seed {seed}: the last resume finishes: {stderr}");
    sim.assert_upgraded_once(3);
    assert_eq!(knot.answer(), before, "seed {seed}: every record is back, TTLs included");
    let journal = std::fs::read_to_string(dir.path().join(".noderoll/dns.journal")).expect("journal");
    assert!(journal.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "seed {seed}: a journal line is broken");
}

#[test]
fn a_wrong_tsig_key_is_named_and_changes_nothing() {
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, WRONG_KEY), "");
    let (code, _, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        flat(&stderr).contains("rejected the TSIG key `noderoll` (its answer is not signed with that key"),
        "{stderr}"
    );
    assert!(!stderr.contains(WRONG_KEY), "{stderr}");
    assert_eq!(knot.answer(), before);
    assert!(cordoned(&sim).is_empty());
}

#[test]
fn a_record_that_differs_from_the_plan_is_refused_before_anything_changes() {
    let (sim, knot, _, dir) = setup(&SERVICE_ADDRESSES[..2]);
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let (code, _, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        flat(&stderr).contains("serves 10.0.0.11, 10.0.0.12, but the plan expects 10.0.0.11, 10.0.0.12, 10.0.0.13"),
        "{stderr}"
    );
    assert_eq!(knot.addresses().len(), 2);
    assert!(cordoned(&sim).is_empty());
}

#[test]
fn the_dns_server_going_down_halts_and_the_resume_restores_the_record() {
    let (sim, mut knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let child = start_apply(&sim, &plan);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cordoned(&sim).contains("cp1") {
        assert!(Instant::now() < deadline, "cp1 was not cordoned within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    knot.stop();
    let (code, events, stderr) = finish(child);
    assert_eq!(code, 4, "halted: {stderr}");
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "step-failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["step"], "cp1/dns-restore");
    assert!(failed[0]["error"].as_str().is_some_and(|e| e.contains("cannot reach the DNS server")), "{failed:?}");
    assert!(!cordoned(&sim).contains("cp1"), "cp1 serves again; only its record is out");
    knot.run();
    assert_eq!(knot.addresses(), BTreeSet::from(["10.0.0.12".to_owned(), "10.0.0.13".to_owned()]));
    let (code, _, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 0, "the resume finishes: {stderr}");
    assert_eq!(knot.answer(), before);
}

#[test]
fn the_command_provider_runs_the_plans_commands_and_waits_for_the_resolver() {
    let (sim, knot, before, dir) = setup(&initial());
    let script = |verb: &str, ttl: &str| {
        format!(
            "[sh, -c, \"printf 'server 127.0.0.1 {}\\\\nzone example.test.\\\\nupdate {verb} %s {ttl} A %s\\\\nsend\\\\n' $0 $1 | knsupdate -y {}\", \"{{record}}\", \"{{address}}\"]",
            knot.port,
            Knot::key_argument()
        )
    };
    let provider = format!(
        "        command:\n          withdraw: {}\n          restore: {}\n",
        script("delete", ""),
        script("add", "1")
    );
    let plan = plan(dir.path(), &provider, &format!("      resolvers: [\"{}\"]\n", knot.server()));
    let (code, _, stderr, seen_out) = roll_and_watch(&sim, &knot, &plan);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(seen_out.len(), 3, "{seen_out:?}");
    assert_eq!(knot.answer(), before);
}

#[test]
fn the_manual_provider_prints_each_change_and_goes_on_once_it_is_approved_and_served() {
    let (sim, knot, before, dir) = setup(&initial());
    let plan =
        plan(dir.path(), "        manual: {}\n", &format!("      ttl: 1\n      resolvers: [\"{}\"]\n", knot.server()));
    let mut child = start_apply(&sim, &plan);
    let stdout = child.stdout.take().expect("stdout");
    let mut made = 0;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        match event["event"].as_str() {
            Some("awaiting-dns-change") => {
                let step = event["step"].as_str().expect("step");
                let change = event["change"].as_str().expect("change");
                knot.nsupdate(change);
                noderoll().arg("approve").arg(&plan).arg(step).assert().success();
                made += 1;
            }
            Some("awaiting-approval") => {
                let node = event["node"].as_str().expect("node");
                noderoll().arg("approve").arg(&plan).arg(node).assert().success();
            }
            _ => {}
        }
    }
    let status = child.wait().expect("apply ends");
    assert!(status.success(), "apply failed");
    assert_eq!(made, 6, "one change by hand per withdraw and restore");
    assert_eq!(knot.answer(), before);
}
