//! A real 3-member etcd cluster on loopback ports, members named after the simulator's
//! control-plane nodes (cp1..cp3) so the executor maps them to nodes by name. Plain HTTP by
//! default; `start_tls` serves clients over TLS with client-certificate auth, as k3s does.
//! Dropping it kills every member.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, Issuer, KeyPair};

use crate::harness::{free_port, http_exchange};

/// One member's name and loopback ports.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    /// Where `/health` answers over plain HTTP: the client port, or with TLS a metrics port.
    health: u16,
}

/// The files of a TLS cluster, named as k3s keeps them in `server/tls/etcd/`.
pub struct EtcdTls {
    /// `server-ca.crt`: signed the members' and the client's certificates.
    pub ca: PathBuf,
    /// `client.crt` / `client.key`: what noderoll presents.
    pub cert: PathBuf,
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A new self-signed certificate authority.
pub fn certificate_authority() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

/// A key and a certificate for `names` signed by `ca`, written as `STEM.crt` and `STEM.key`
/// in `dir`; their paths.
pub fn write_certificate(dir: &Path, stem: &str, names: &[&str], ca: &Issuer<'_, KeyPair>) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names).expect("parameters").signed_by(&key, ca).expect("signed");
    let paths = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    std::fs::write(&paths.0, cert.pem()).expect("write certificate");
    std::fs::write(&paths.1, key.serialize_pem()).expect("write key");
    paths
}

impl EtcdTls {
    /// A CA and, signed by it, a serving certificate for 127.0.0.1 and a client certificate.
    fn write(dir: &Path) -> EtcdTls {
        let ca = certificate_authority();
        let (server_cert, server_key) = write_certificate(dir, "server-client", &["127.0.0.1", "localhost"], &ca);
        let (cert, key) = write_certificate(dir, "client", &["noderoll"], &ca);
        let ca_path = dir.join("server-ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write CA");
        EtcdTls { ca: ca_path, cert, key, server_cert, server_key }
    }
}

/// Three etcd members in a temp dir; dropping it kills them all.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    running: Vec<Option<Child>>,
    tls: Option<EtcdTls>,
}

impl EtcdCluster {
    /// Starts the members on free ports, serving clients over plain HTTP.
    pub fn start() -> EtcdCluster {
        EtcdCluster::start_with(false)
    }

    /// Starts the members serving clients over TLS, requiring a client certificate signed
    /// by the cluster's CA (see `tls`).
    pub fn start_tls() -> EtcdCluster {
        EtcdCluster::start_with(true)
    }

    /// A port `free_port` offered can be taken by another process before etcd binds it
    /// (suites run side by side): the member then exits, and another process may even answer
    /// on its port, so the cluster counts as started only with all three of its own members
    /// running; otherwise it starts again on new ports.
    fn start_with(tls: bool) -> EtcdCluster {
        let mut errors = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let members: Vec<Member> = (1..=3)
                .map(|i| {
                    let client = free_port();
                    let health = if tls { free_port() } else { client };
                    Member { name: format!("cp{i}"), client, peer: free_port(), health }
                })
                .collect();
            let tls = tls.then(|| EtcdTls::write(dir.path()));
            let mut cluster = EtcdCluster { dir, members, running: Vec::new(), tls };
            cluster.running = (0..3).map(|i| Some(cluster.spawn(i))).collect();
            if cluster.become_healthy(0..3) {
                return cluster;
            }
            errors = cluster.log_errors();
        }
        panic!("etcd members kept exiting at start; the last attempt's errors:\n{errors}")
    }

    /// The certificates, for a cluster started with `start_tls`.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The error lines of every member's log.
    fn log_errors(&self) -> String {
        self.members
            .iter()
            .map(|m| std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default())
            .flat_map(|log| {
                log.lines()
                    .filter(|l| l.contains("\"level\":\"error\"") || l.contains("\"level\":\"fatal\""))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits up to 30 s until `members` are healthy; false if one of them exited instead.
    fn become_healthy(&mut self, members: std::ops::Range<usize>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !members.clone().all(|i| self.member_running(i)) {
                return false;
            }
            if members.clone().all(|i| self.healthy(i)) {
                return true;
            }
            assert!(Instant::now() < deadline, "etcd members {members:?} did not become healthy within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn member_running(&mut self, i: usize) -> bool {
        self.running[i].as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&self, i: usize) -> Child {
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        let member = &self.members[i];
        let client = format!("{}://127.0.0.1:{}", self.scheme(), member.client);
        let data = self.dir.path().join(&member.name);
        let state = if data.exists() { "existing" } else { "new" };
        let mut command = Command::new("etcd");
        command
            .args(["--name", &member.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", member.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", member.peer)])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-token", "noderoll"])
            .args(["--initial-cluster-state", state, "--logger", "zap", "--log-outputs"])
            .arg(self.dir.path().join(format!("{}.log", member.name)));
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth")
                .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", member.health)]);
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts (scripts/test installs etcd-server)")
    }

    /// One HTTP/1.0 request to member `i`'s client port (plain-HTTP clusters); the whole
    /// answer.
    pub fn http(&self, i: usize, method: &str, path: &str, body: &str) -> String {
        let url = format!("127.0.0.1:{}", self.members[i].client);
        let request =
            format!("{method} {path} HTTP/1.0\r\nHost: {url}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        http_exchange(&url, &request, Duration::from_secs(1))
    }

    pub fn healthy(&self, i: usize) -> bool {
        let url = format!("127.0.0.1:{}", self.members[i].health);
        let request = format!("GET /health HTTP/1.0\r\nHost: {url}\r\n\r\n");
        http_exchange(&url, &request, Duration::from_secs(1)).contains("\"health\":\"true\"")
    }

    /// The client URLs, quoted and comma-separated for a plan's `endpoints: [...]`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("\"{}://127.0.0.1:{}\"", self.scheme(), m.client))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.running[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its own ports (its peers know them). Another process's
    /// socket may hold one of them for a moment, and the member then exits: it tries again
    /// for up to 10 s.
    pub fn restart(&mut self, i: usize) {
        for _ in 0..20 {
            self.kill(i);
            self.running[i] = Some(self.spawn(i));
            if self.become_healthy(i..i + 1) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("etcd member {i} kept exiting at restart; the errors:\n{}", self.log_errors())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.running.len() {
            self.kill(i);
        }
    }
}
