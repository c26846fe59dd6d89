//! The simulator at facility scale: memory, and list and watch latency through kube-rs, at
//! 500 nodes / ~15,500 pods and at 5,000 nodes / ~155,000 pods, side by side with their
//! ratios. Each size runs in a child process of its own, so its memory is its own.
//!
//! `cargo bench --bench sim_scale`

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use noderoll::sim::{GenerateOptions, Population, SimConfig, Simulator};
use serde_json::{Value, json};

const CHILD: &str = "NODEROLL_SIM_SCALE_WORKSTATIONS";

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

async fn timed<F: std::future::Future<Output = T>, T>(runs: usize, mut f: impl FnMut() -> F) -> (f64, T) {
    let mut samples = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(f().await);
        samples.push(started.elapsed());
    }
    (median(samples), last.expect("at least one run"))
}

async fn measure(workstations: usize) -> Value {
    let before = rss_mib();
    let started = Instant::now();
    let options = GenerateOptions { workstations, sessions_per_node: 30, ..GenerateOptions::default() };
    let simulator = Simulator::start(SimConfig::default(), Population::Generate(options)).await.expect("start");
    let startup = started.elapsed().as_secs_f64();
    let memory = rss_mib() - before;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    simulator.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let client = noderoll::world::kube::connect(Some(&kubeconfig)).await.expect("client");
    let width = workstations.to_string().len().max(2);
    let (ws42, ws7) = (format!("ws{:0width$}", 42), format!("ws{:0width$}", 7));
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());

    let (list_all, all) = timed(3, || async { pods.list(&ListParams::default()).await.expect("list") }).await;
    let (list_raw, bytes) = timed(3, || async {
        let request = http::Request::get("/api/v1/pods").body(Vec::new()).expect("request");
        client.request_text(request).await.expect("raw list").len()
    })
    .await;
    let (list_page, _) = timed(5, || async { pods.list(&ListParams::default().limit(500)).await.expect("page") }).await;
    let (list_node, on_node) = timed(10, || async {
        pods.list(&ListParams::default().fields(&format!("spec.nodeName={ws42}"))).await.expect("list by node")
    })
    .await;
    let (list_nodes, node_list) = timed(5, || async { nodes.list(&ListParams::default()).await.expect("nodes") }).await;

    let mut watch_samples = Vec::new();
    for i in 0..10 {
        let rv = nodes.list(&ListParams::default().limit(1)).await.expect("rv").metadata.resource_version.expect("rv");
        let mut events = nodes.watch(&WatchParams::default().disable_bookmarks(), &rv).await.expect("watch").boxed();
        let started = Instant::now();
        let patch = Patch::Merge(json!({"metadata": {"labels": {"bench": i.to_string()}}}));
        nodes.patch(&ws7, &PatchParams::default(), &patch).await.expect("patch");
        loop {
            match events.next().await.expect("stream").expect("event") {
                WatchEvent::Modified(node) if node.metadata.name.as_deref() == Some(ws7.as_str()) => break,
                _ => {}
            }
        }
        watch_samples.push(started.elapsed());
    }
    simulator.stop().await;
    json!({
        "nodes": node_list.items.len(),
        "pods": all.items.len(),
        "startupSeconds": startup,
        "memoryMiB": memory,
        "listAllPodsMs": list_all,
        "listAllPodsRawMs": list_raw,
        "listAllPodsMiB": bytes as f64 / 1_048_576.0,
        "listPodsPage500Ms": list_page,
        "listPodsOnOneNodeMs": list_node,
        "podsOnOneNode": on_node.items.len(),
        "listAllNodesMs": list_nodes,
        "watchPatchToEventMs": median(watch_samples),
    })
}

fn child(workstations: usize) -> Value {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD, workstations.to_string())
        .output()
        .expect("the measuring child runs");
    assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the child prints JSON")
}

fn main() {
    if let Ok(workstations) = std::env::var(CHILD) {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let result = runtime.block_on(measure(workstations.parse().expect("a number")));
        println!("{result}");
        return;
    }
    let small = child(497);
    let large = child(4_997);
    println!("{:<24} {:>14} {:>14} {:>8}", "", "500 nodes", "5,000 nodes", "ratio");
    for (key, unit) in [
        ("pods", ""),
        ("startupSeconds", "s"),
        ("memoryMiB", "MiB"),
        ("listAllPodsMs", "ms"),
        ("listAllPodsRawMs", "ms"),
        ("listAllPodsMiB", "MiB"),
        ("listPodsPage500Ms", "ms"),
        ("listPodsOnOneNodeMs", "ms"),
        ("listAllNodesMs", "ms"),
        ("watchPatchToEventMs", "ms"),
    ] {
        let (a, b) = (small[key].as_f64().unwrap_or(0.0), large[key].as_f64().unwrap_or(0.0));
        let ratio = if a > 0.0 { b / a } else { 0.0 };
        println!("{key:<24} {:>11.1} {unit:<3}{:>11.1} {unit:<3}{ratio:>7.2}", a, b);
    }
}
