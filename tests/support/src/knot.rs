//! A real knotd for the DNS tests and the chaos suite: an authoritative `example.test` zone
//! on a free loopback port that takes TSIG-signed RFC 2136 updates, and a watcher that asks
//! it and the API server, over and over, whether the rollout keeps its DNS promises.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, SIM_UPGRADE, apply_via, free_port};

/// The key knotd knows; the tests' own, good for nothing else.
pub const KEY: &str = "bm9kZXJvbGwtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2Q=";
/// A key knotd does not know.
pub const WRONG_KEY: &str = "c29tZS1vdGhlci1rZXktdGhhdC1pcy1ub3QtcmlnaHQ=";
/// The simulator's control-plane nodes' InternalIPs.
pub const SERVICE_ADDRESSES: [&str; 3] = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
pub const RECORD: &str = "juno.example.test.";

/// knotd serving `example.test` from a temp dir; dropping it kills the server.
pub struct Knot {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Knot {
    /// A zone whose `juno` record holds `addresses`, with TTL 1.
    pub fn start(addresses: &[&str]) -> Knot {
        Knot::start_keyed(addresses, "hmac-sha256")
    }

    /// `start` with the key's algorithm (`hmac-sha256`, `hmac-sha512`).
    pub fn start_keyed(addresses: &[&str], algorithm: &str) -> Knot {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let root = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("run")).expect("run dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        let config = format!(
            "server:\n    rundir: \"{root}/run\"\n    listen: 127.0.0.1@{port}\nlog:\n  - target: stderr\n    any: info\ndatabase:\n    storage: \"{root}/storage\"\nkey:\n  - id: noderoll\n    algorithm: {algorithm}\n    secret: {KEY}\nacl:\n  - id: upd\n    address: 127.0.0.1\n    key: noderoll\n    action: update\nzone:\n  - domain: example.test\n    storage: \"{root}/storage\"\n    file: example.test.zone\n    acl: upd\n"
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
        // The port can be taken before knotd binds it (suites run side by side): then our
        // knotd exits, and another may answer on the port; start again on a new one.
        for _ in 0..3 {
            if knot.try_run() {
                return knot;
            }
            knot.stop();
            let config = std::fs::read_to_string(knot.dir.path().join("knot.conf")).expect("knot.conf");
            let port = free_port();
            let config = config.replace(&format!("127.0.0.1@{}", knot.port), &format!("127.0.0.1@{port}"));
            std::fs::write(knot.dir.path().join("knot.conf"), config).expect("knot.conf");
            knot.port = port;
        }
        panic!("knotd kept exiting at start (port taken?); its log:\n{}", knot.log())
    }

    /// Starts knotd on the existing config and storage (a restart keeps the zone's state).
    /// The port is the one the plan names, so it cannot move, and it may still be held: CI
    /// on a busy machine saw knotd's TCP bind fail with "address already in use" for over
    /// 10 s after a stop (a killed server's side of a connection can linger in TIME_WAIT for
    /// 60 s). It tries again for up to 75 s.
    pub fn run(&mut self) {
        for _ in 0..150 {
            if self.try_run() {
                return;
            }
            self.stop();
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("knotd kept exiting at start; its log:\n{}", self.log());
    }

    /// `run`; false if our knotd exited instead of answering (its port was taken).
    fn try_run(&mut self) -> bool {
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
            if !self.running() {
                return false;
            }
            assert!(Instant::now() < deadline, "knotd did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.running()
    }

    /// The last attempt's log (the temp dir goes with a failing test).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// kdig over TCP (a UDP probe at a port not bound yet stalls), answer section only.
    pub fn kdig(&self, question: &[&str]) -> String {
        let out = Command::new("kdig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+tcp", "+timeout=1", "+retry=0", "+noall", "+answer"])
            .args(question)
            .output()
            .expect("kdig runs (scripts/test installs knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The record's answer as (TTL, address), sorted.
    pub fn answer(&self) -> Vec<(String, String)> {
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

    pub fn addresses(&self) -> BTreeSet<String> {
        self.answer().into_iter().map(|(_, a)| a).collect()
    }

    /// knsupdate's `-y` argument.
    pub fn key_argument() -> String {
        format!("hmac-sha256:noderoll:{KEY}")
    }

    /// Sends nsupdate text (without `server`) with knsupdate, as an operator would.
    pub fn nsupdate(&self, text: &str) {
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

/// The service nodes cordoned now.
pub fn cordoned(sim: &impl Cluster) -> BTreeSet<String> {
    try_cordoned(sim).expect("kubectl get nodes")
}

/// `cordoned`, or `None` when the API answered with an error (the chaos suite injects them).
pub fn try_cordoned(sim: &impl Cluster) -> Option<BTreeSet<String>> {
    try_service_nodes(sim).map(|s| s.cordoned)
}

/// Service nodes out of service as the API server shows them.
#[derive(Clone)]
pub struct ServiceNodes {
    /// Cordoned (taken out by the rollout).
    pub cordoned: BTreeSet<String>,
    /// Not Ready (rebooting, or lost).
    pub not_ready: BTreeSet<String>,
}

/// The service nodes (cp*) cordoned or not Ready, if the API server answered. The watcher
/// asks thousands of times a run, so it reads the node list over plain HTTP: a kubectl
/// process per question cost a CPU core and sampled five times a second.
pub fn try_service_nodes(sim: &impl Cluster) -> Option<ServiceNodes> {
    let list: Value = serde_json::from_str(&sim.get("/api/v1/nodes")?).ok()?;
    let mut nodes = ServiceNodes { cordoned: BTreeSet::new(), not_ready: BTreeSet::new() };
    for node in list["items"].as_array()? {
        let Some(name) = node["metadata"]["name"].as_str().filter(|n| n.starts_with("cp")) else { continue };
        if node["spec"]["unschedulable"] == true {
            nodes.cordoned.insert(name.to_owned());
        }
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if !ready {
            nodes.not_ready.insert(name.to_owned());
        }
    }
    Some(nodes)
}

pub fn address_of(node: &str) -> String {
    let index: usize = node.trim_start_matches("cp").parse().expect("cpN");
    SERVICE_ADDRESSES[index - 1].to_owned()
}

/// What a ServiceLB plan adds to the one every DNS test shares.
#[derive(Default)]
pub struct PlanExtra<'a> {
    /// Lines under `dns:`.
    pub dns: &'a str,
    /// etcd client URLs (quoted, comma-separated) for `quorum.etcd`; none: node readiness.
    pub etcd_endpoints: &'a str,
    /// Lines under `defaults:`.
    pub defaults: &'a str,
    /// Batches after the control plane's.
    pub batches: &'a str,
    /// The upgrade hook as YAML argv; empty: the simulator's.
    pub upgrade: &'a str,
}

/// A ServiceLB plan for the simulator's cp1..3 with `provider` (YAML lines under
/// `provider:`) and `extra`.
pub fn servicelb_plan(dir: &Path, strategy: &str, provider: &str, extra: &PlanExtra) -> PathBuf {
    let etcd = if extra.etcd_endpoints.is_empty() {
        String::new()
    } else {
        format!("etcd: {{endpoints: [{}]}}, ", extra.etcd_endpoints)
    };
    let PlanExtra { dns, defaults, batches, .. } = extra;
    let upgrade = if extra.upgrade.is_empty() { SIM_UPGRADE } else { extra.upgrade };
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: dns}}\nspec:\n  loadBalancer:\n    mode: servicelb\n    dns:\n      name: {RECORD}\n      strategy: {strategy}\n      provider:\n{provider}{dns}  quorum: {{{etcd}timeout: 20s}}\n  defaults:\n{defaults}    upgrade:\n      command: {upgrade}\n      timeout: 1m\n    verify: {{kubeletVersion: v1.31.4+k3s1, readyTimeout: 20s}}\n  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}}\n{batches}"
    );
    let path = dir.join("dns.yaml");
    std::fs::write(&path, text).expect("write plan");
    path
}

/// The rfc2136 provider lines, with the secret in `dir/tsig.secret`.
pub fn rfc2136(dir: &Path, knot: &Knot, secret: &str) -> String {
    rfc2136_keyed(dir, knot, secret, "hmac-sha256")
}

/// `rfc2136` with the key's algorithm.
pub fn rfc2136_keyed(dir: &Path, knot: &Knot, secret: &str, algorithm: &str) -> String {
    std::fs::write(dir.join("tsig.secret"), format!("{secret}\n")).expect("secret file");
    format!(
        "        rfc2136:\n          server: {}\n          zone: example.test.\n          tsig: {{name: noderoll, algorithm: {algorithm}, secretFile: tsig.secret}}\n",
        knot.server()
    )
}

pub fn start_apply(sim: &impl Cluster, plan: &Path) -> Child {
    apply_via(&sim.kubeconfig(), plan, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("apply starts")
}

pub fn finish(child: Child) -> (i32, Vec<Value>, String) {
    let out = child.wait_with_output().expect("apply ends");
    let events = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What a watched apply did and what was seen from outside meanwhile.
pub struct Watched {
    /// Exit code; -1 when killed by a signal.
    pub code: i32,
    pub events: Vec<Value>,
    pub stderr: String,
    /// Service nodes seen cordoned (and, so, out of the record).
    pub seen_out: BTreeSet<String>,
    /// Broken promises: an empty record, a cordoned node still served, two service nodes
    /// cordoned at once, one taken out while another was down.
    pub violations: Vec<String>,
    /// Samples with two service nodes out at once through a loss during the rollout.
    pub double_outages: usize,
    /// Questions answered by both knotd and the API server.
    pub samples: usize,
}

impl Watched {
    /// Why the apply failed, for an assertion's message: its stderr and, since `-o json`
    /// reports a halt on stdout, the events that say what failed.
    pub fn failure(&self) -> String {
        let failed = self
            .events
            .iter()
            .filter(|e| matches!(e["event"].as_str(), Some("step-failed" | "node-failed" | "halted" | "warning")))
            .map(Value::to_string)
            .collect::<Vec<_>>();
        format!("{} {}", self.stderr.split_whitespace().collect::<Vec<_>>().join(" "), failed.join("\n"))
    }
}

/// Runs apply to its end, asking knotd and the API server over and over what they hold.
pub fn roll_and_watch(sim: &impl Cluster, knot: &Knot, plan: &Path) -> Watched {
    watch(sim, knot, start_apply(sim, plan))
}

/// `roll_and_watch` of an apply already started.
pub fn watch(sim: &impl Cluster, knot: &Knot, mut child: Child) -> Watched {
    // Read as apply writes: a pipe left unread fills at 64 KiB and blocks apply's next
    // event, stalling its steps while their timeouts run on.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let mut seen_out: BTreeSet<String> = BTreeSet::new();
    let mut violations = Vec::new();
    let mut samples = 0;
    let mut previous: Option<ServiceNodes> = None;
    let mut double_outages = 0;
    while child.try_wait().expect("poll apply").is_none() {
        // Cordoned before and after the question: cordoned throughout it, since a node is
        // cordoned once per rollout; its address must not be served meanwhile.
        let first = try_service_nodes(sim);
        let served = knot.addresses();
        let second = try_service_nodes(sim);
        // A question costs a kdig process and three TCP connections, each leaving a socket
        // in TIME_WAIT for a minute: ask about twenty times a second, not as fast as the
        // machine allows (suites side by side ran the loopback's ephemeral ports low).
        std::thread::sleep(Duration::from_millis(40));
        let (Some(first), Some(second)) = (first, second) else { continue };
        samples += 1;
        if served.is_empty() {
            violations.push(format!("sample {samples}: {RECORD} served no address"));
        }
        // Out of service throughout the question: cordoned by the rollout, or down (a
        // reboot, or a member lost to a fault).
        let down: BTreeSet<&String> = first.not_ready.intersection(&second.not_ready).collect();
        let out: BTreeSet<&String> = first.cordoned.intersection(&second.cordoned).collect();
        if out.len() > 1 {
            violations.push(format!("sample {samples}: {} etcd members' nodes cordoned at once: {out:?}", out.len()));
        }
        // Taking a member out while another is already down loses quorum: a node cordoned
        // since the last sample, when another was down and not cordoned by the rollout.
        if let Some(before) = &previous {
            for node in second.cordoned.difference(&before.cordoned) {
                let already: Vec<&String> =
                    before.not_ready.iter().filter(|n| *n != node && !before.cordoned.contains(*n)).collect();
                if !already.is_empty() {
                    violations.push(format!("sample {samples}: {node} was taken out while {already:?} was down"));
                }
            }
        }
        // Two out at once can also be a member lost while the rollout has one out, which
        // no rollout can prevent: counted, not a violation.
        if out.union(&down).count() > 1 {
            double_outages += 1;
        }
        previous = Some(second.clone());
        for node in out {
            if served.contains(&address_of(node)) {
                violations.push(format!("sample {samples}: {node} is cordoned but {RECORD} still serves its address"));
            }
            seen_out.insert(node.clone());
        }
    }
    let code = child.wait().expect("apply ends").code().unwrap_or(-1);
    let text = |reader: Option<std::thread::JoinHandle<String>>| {
        reader.map(|r| r.join().expect("pipe reader")).unwrap_or_default()
    };
    let events = text(stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let stderr = text(stderr);
    Watched { code, events, stderr, seen_out, violations, double_outages, samples }
}
