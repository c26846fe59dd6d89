//! noderoll and a real Prometheus (Debian's `prometheus`, on a free loopback port, with its
//! own temp dir): Prometheus scrapes `apply --metrics-addr` and its query API must show the
//! rollout's state.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{SimProcess, apply_via, free_port, noderoll};

/// A Prometheus server; dropping it kills it.
pub(crate) struct Prometheus {
    pub(crate) port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML; `rule_files` relative to its temp dir, where
    /// `rules` is written as `rules.yml`) and waits until it is ready.
    pub(crate) fn start(config: &str, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (scripts/test installs Debian's prometheus)");
        let prometheus = Prometheus { port, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// `GET /api/v1/...` as JSON.
    pub(crate) fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.port, path_and_query).expect("prometheus answers");
        assert_eq!(status, 200, "{path_and_query}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// The value of an instant query with a single result, if it has one.
    pub(crate) fn query(&self, promql: &str) -> Option<f64> {
        let query: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let answer = self.api(&format!("/api/v1/query?query={query}"));
        answer["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok())
    }

    /// Polls `promql` until it equals `want`, for up to 30 s.
    pub(crate) fn wait_for(&self, promql: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.query(promql);
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{promql} is {got:?}, not {want}, after 30 s");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback: status and body.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

#[test]
fn prometheus_scrapes_the_rollouts_metrics() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let metrics_port = free_port();
    let prometheus = Prometheus::start(
        &format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: noderoll\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
        ),
        "groups: []\n",
    );
    // Every node waits for approval before its uncordon: the rollout holds still at cp1.
    let plan = sim.dir.path().join("watched.yaml");
    std::fs::write(
        &plan,
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: watched}\nspec:\n  loadBalancer: {mode: external}\n  defaults:\n    upgrade: {command: [noderoll, sim, ctl, upgrade, \"{node}\", --kubelet-version, v1.31.4+k3s1]}\n    verify: {kubeletVersion: v1.31.4+k3s1}\n    uncordon: approve\n  batches:\n    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3]}\n    - {name: workstations, role: workstation, nodes: [ws01, ws02, ws03, ws04, ws05, ws06], maxUnavailable: 3}\n",
    )
    .expect("write plan");
    let mut child = apply_via(&sim.kubeconfig(), &plan, &["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply starts");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = stdout.lines().map_while(Result::ok);
    assert!(lines.by_ref().any(|l| l.contains("\"awaiting-approval\"")), "the run reaches cp1's approval");

    prometheus.wait_for("up{job=\"noderoll\"}", 1.0);
    prometheus.wait_for("noderoll_nodes{state=\"in_progress\"}", 1.0);
    assert_eq!(prometheus.query("noderoll_nodes{state=\"pending\"}"), Some(8.0));
    assert_eq!(prometheus.query("noderoll_nodes{state=\"done\"}"), Some(0.0));
    assert_eq!(prometheus.query("noderoll_rollout_state{state=\"running\"}"), Some(1.0));
    assert_eq!(prometheus.query("noderoll_batch_running{batch=\"control-plane\"}"), Some(1.0));
    assert!(
        prometheus.query("sum(noderoll_step_duration_seconds_count{action=\"upgrade\"})").is_some_and(|n| n >= 1.0),
        "cp1's upgrade is in the step histogram"
    );

    let mut approve = noderoll();
    approve.arg("approve").arg(&plan);
    for node in ["cp1", "cp2", "cp3", "ws01", "ws02", "ws03", "ws04", "ws05", "ws06"] {
        approve.arg(node);
    }
    approve.assert().success();
    let rest: Vec<String> = lines.collect();
    assert!(rest.last().is_some_and(|l| l.contains("\"finished\"")), "{:?}", rest.last());
    assert!(child.wait().expect("apply exits").success());
}
