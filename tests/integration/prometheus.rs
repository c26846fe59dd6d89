//! noderoll and a real Prometheus (Debian's `prometheus`, on a free loopback port, with its
//! own temp dir): Prometheus scrapes `apply --metrics-addr` and its query API must show the
//! rollout's state.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, SIM_UPGRADE, SimProcess, apply_via, free_port, noderoll, small_plan};

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
    prometheus.wait_for("noderoll_nodes{state=\"in-progress\"}", 1.0);
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

/// A plan with `health` settings (a YAML flow mapping).
fn gated_plan(sim: &SimProcess, health: &str) -> std::path::PathBuf {
    small_plan(sim.dir.path(), "gated", &format!("health: {health}"), SIM_UPGRADE)
}

fn events(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Prometheus evaluating `rules` every second, and waiting until `alert` fires.
fn alerting(rules: &str, alert: &str) -> Prometheus {
    let prometheus = Prometheus::start("global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n", rules);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prometheus.api("/api/v1/alerts");
        let firing = alerts["data"]["alerts"].as_array().into_iter().flatten();
        if firing.clone().any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing") {
            return prometheus;
        }
        assert!(Instant::now() < deadline, "{alert} does not fire: {alerts}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_firing_alert_holds_the_batch_until_it_resolves_and_unmatched_alerts_do_not() {
    // `Blocker` fires for the next 6 seconds; `Watchdog` always fires, but the filter
    // leaves it out.
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 6;
    let rules = format!(
        "groups:\n  - name: t\n    rules:\n      - {{alert: Blocker, expr: 'vector(time()) < {end}', labels: {{severity: critical}}}}\n      - {{alert: Watchdog, expr: 'vector(1)', labels: {{severity: none}}}}\n"
    );
    let prometheus = alerting(&rules, "Blocker");
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = gated_plan(
        &sim,
        &format!(
            "{{prometheus: {{url: \"http://127.0.0.1:{}\", alerts: \"severity=critical\"}}, interval: 1s, timeout: 2m}}",
            prometheus.port
        ),
    );
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events(&out);
    let waited = events
        .iter()
        .position(|e| e["event"] == "step-progress" && e["message"] == "waiting for health: alerts firing: Blocker")
        .expect("the gate names the firing alert, and only the one the filter matches");
    let first_node = events.iter().position(|e| e["event"] == "step-started" && e["node"].is_string());
    assert!(first_node.is_some_and(|n| n > waited), "no node started while the alert fired");
    assert_eq!(events.last().map(|e| e["event"].clone()), Some("finished".into()));
    sim.assert_upgraded_once(5);
}

#[test]
fn an_alert_that_keeps_firing_halts_before_anything_changes() {
    let prometheus = alerting(
        "groups:\n  - name: t\n    rules:\n      - {alert: DiskFull, expr: 'vector(1)', labels: {severity: critical}}\n",
        "DiskFull",
    );
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = gated_plan(
        &sim,
        &format!("{{prometheus: {{url: \"http://127.0.0.1:{}\"}}, interval: 1s, timeout: 3s}}", prometheus.port),
    );
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events(&out);
    let failed = events.iter().find(|e| e["event"] == "step-failed").expect("a step failed");
    assert_eq!(failed["step"], "batch/control-plane/health");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("alerts firing: DiskFull"), "{error}");
    assert!(!events.iter().any(|e| e["event"] == "step-started" && e["node"].is_string()), "no node was touched");
    assert!(sim.state()["reboots"].as_object().is_none_or(serde_json::Map::is_empty));
}

#[test]
fn an_alert_that_fires_while_a_node_soaks_fails_the_soak_before_the_next_node_starts() {
    // `Regression` starts firing 8 s from now: after the batch's gate has passed, while
    // cp1 soaks (or before its soak begins, whose first look then sees it).
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 8;
    let rules = format!(
        "groups:\n  - name: t\n    rules:\n      - {{alert: Regression, expr: 'vector(time()) > {start}', labels: {{severity: critical}}}}\n"
    );
    let prometheus = Prometheus::start("global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n", &rules);
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = gated_plan(
        &sim,
        &format!("{{prometheus: {{url: \"http://127.0.0.1:{}\"}}, interval: 1s, timeout: 1m}}", prometheus.port),
    );
    let text =
        std::fs::read_to_string(&plan).expect("read plan").replace("  defaults:\n", "  defaults:\n    soak: 1h\n");
    std::fs::write(&plan, text).expect("write plan");
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events(&out);
    let failed = events.iter().find(|e| e["event"] == "step-failed").expect("a step failed");
    assert_eq!(failed["step"], "cp1/soak", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("the health gate failed (alerts firing: Regression)"), "{error}");
    assert!(!events.iter().any(|e| e["event"] == "step-started" && e["node"] == "cp2"), "cp2 waits for cp1's soak");
    let reboots = sim.state()["reboots"].clone();
    assert_eq!(reboots, serde_json::json!({"cp1": 1}), "only cp1 was upgraded");
}

#[test]
fn the_previous_batch_must_be_ready_and_the_command_gate_must_pass() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let flag = sim.dir.path().join("healthy");
    // The command gate passes once the file exists; a thread creates it a little later.
    let plan =
        gated_plan(&sim, &format!("{{command: [test, -e, \"{}\"], interval: 200ms, timeout: 1m}}", flag.display()));
    // cp3's verify hook reboots it once more after its upgrade: when the workstations'
    // batch is about to start, cp3 is not Ready yet.
    let text = std::fs::read_to_string(&plan).expect("read plan").replace(
        "    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3]}",
        "    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3], verify: {command: [noderoll, sim, ctl, reboot, \"{node}\"]}}",
    );
    std::fs::write(&plan, text).expect("write plan");
    let creator = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            std::fs::write(flag, "").expect("create the flag");
        })
    };
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    creator.join().expect("flag thread");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events(&out);
    let messages: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step-progress" && e["step"].as_str().is_some_and(|s| s.ends_with("/health")))
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(messages.iter().any(|m| m.contains("the health hook")), "the command gate waited: {messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("waiting for health: not Ready: cp3")),
        "the workstations waited for cp3: {messages:?}"
    );
    assert_eq!(events.last().map(|e| e["event"].clone()), Some("finished".into()));
}

#[test]
fn before_node_runs_the_gate_before_every_node_with_its_name() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = gated_plan(&sim, "{before: node, command: [echo, \"gate for {node} of {batch}\"], timeout: 1m}");
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let logs = sim.dir.path().join(".noderoll/gated.logs");
    for (node, batch) in [("cp1", "control-plane"), ("cp3", "control-plane"), ("ws02", "workstations")] {
        let log = std::fs::read_to_string(logs.join(node).join("health.log")).unwrap_or_else(|e| panic!("{node}: {e}"));
        assert!(log.contains(&format!("gate for {node} of {batch}")), "{node}: {log}");
    }
    let batch_log = std::fs::read_to_string(logs.join("health.log")).expect("the batch gates' log");
    assert!(batch_log.contains("gate for  of workstations"), "before a batch `{{node}}` is empty: {batch_log}");
}
