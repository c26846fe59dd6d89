//! A real 3-member etcd cluster on loopback ports, members named after the simulator's
//! control-plane nodes (cp1..cp3) so the executor maps them to nodes by name. Dropping it
//! kills every member.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, http_exchange};

/// Three etcd members in a temp dir; dropping it kills them all.
pub(crate) struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<(String, u16, u16)>,
    running: Vec<Option<Child>>,
}

impl EtcdCluster {
    /// Starts the members on free ports. A port `free_port` offered can be taken by another
    /// process before etcd binds it (suites run side by side): the member then exits, and
    /// another process may even answer on its port, so the cluster counts as started only
    /// with all three of its own members running; otherwise it starts again on new ports.
    pub(crate) fn start() -> EtcdCluster {
        let mut errors = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let members: Vec<(String, u16, u16)> =
                (1..=3).map(|i| (format!("cp{i}"), free_port(), free_port())).collect();
            let mut cluster = EtcdCluster { dir, members, running: Vec::new() };
            cluster.running = (0..3).map(|i| Some(cluster.spawn(i))).collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            while cluster.all_running() && !(0..3).all(|i| cluster.healthy(i)) {
                assert!(Instant::now() < deadline, "etcd did not become healthy within 30 s");
                std::thread::sleep(Duration::from_millis(100));
            }
            if cluster.all_running() {
                return cluster;
            }
            errors = cluster.log_errors();
        }
        panic!("etcd members kept exiting at start; the last attempt's errors:\n{errors}")
    }

    /// The error lines of every member's log.
    fn log_errors(&self) -> String {
        self.members
            .iter()
            .map(|(name, _, _)| {
                std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
            })
            .flat_map(|log| {
                log.lines()
                    .filter(|l| l.contains("\"level\":\"error\"") || l.contains("\"level\":\"fatal\""))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn all_running(&mut self) -> bool {
        self.running.iter_mut().all(|c| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    }

    fn spawn(&self, i: usize) -> Child {
        let initial: Vec<String> =
            self.members.iter().map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}")).collect();
        let (name, client, peer) = &self.members[i];
        let data = self.dir.path().join(name);
        let state = if data.exists() { "existing" } else { "new" };
        Command::new("etcd")
            .args(["--name", name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-token", "noderoll"])
            .args(["--initial-cluster-state", state, "--logger", "zap", "--log-outputs"])
            .arg(self.dir.path().join(format!("{name}.log")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts (scripts/test installs etcd-server)")
    }

    /// One HTTP/1.0 request to member `i`'s client port; the whole answer.
    pub(crate) fn http(&self, i: usize, method: &str, path: &str, body: &str) -> String {
        let url = format!("127.0.0.1:{}", self.members[i].1);
        let request =
            format!("{method} {path} HTTP/1.0\r\nHost: {url}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        http_exchange(&url, &request, Duration::from_secs(1))
    }

    pub(crate) fn healthy(&self, i: usize) -> bool {
        self.http(i, "GET", "/health", "").contains("\"health\":\"true\"")
    }

    pub(crate) fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|(_, client, _)| format!("\"http://127.0.0.1:{client}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.running[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn restart(&mut self, i: usize) {
        self.kill(i);
        self.running[i] = Some(self.spawn(i));
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.running.len() {
            self.kill(i);
        }
    }
}
