//! The simulator, driven by kube-rs (the client noderoll itself uses): watch streams,
//! resourceVersion semantics, eviction, patching, pagination and graceful deletion.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use noderoll::sim::{GenerateOptions, Population, SimConfig, Simulator};
use serde_json::json;

struct Running {
    simulator: Simulator,
    client: kube::Client,
    _dir: tempfile::TempDir,
}

async fn start(config: SimConfig, options: GenerateOptions) -> Running {
    let simulator = Simulator::start(SimConfig { time_scale: 0.01, ..config }, Population::Generate(options))
        .await
        .expect("the simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    simulator.write_kubeconfig(&path).expect("kubeconfig");
    let client = noderoll::world::kube::connect(Some(&path)).await.expect("kube-rs connects");
    Running { simulator, client, _dir: dir }
}

fn small() -> GenerateOptions {
    GenerateOptions { workstations: 2, services: 1, ..GenerateOptions::default() }
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn service_pods_ready(pods: &Api<Pod>) -> bool {
    let list = pods.list(&ListParams::default().labels("app=juno-service-1")).await.expect("list");
    list.items.len() == 2
        && list.items.iter().all(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_the_initial_list_and_then_changes() {
    let sim = start(SimConfig::default(), small()).await;
    let nodes: Api<Node> = Api::all(sim.client.clone());
    let mut stream = watcher(nodes.clone(), watcher::Config::default()).applied_objects().boxed();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 5 {
        let node = stream.try_next().await.expect("watch").expect("an event");
        seen.insert(node.metadata.name.clone().unwrap_or_default());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["cp1", "cp2", "cp3", "ws01", "ws02"]);
    nodes
        .patch("ws02", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"unschedulable": true}})))
        .await
        .expect("cordon");
    let cordoned = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let node = stream.try_next().await.expect("watch").expect("an event");
            if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
                return node;
            }
        }
    })
    .await
    .expect("the cordon arrives through the watch");
    assert_eq!(cordoned.metadata.name.as_deref(), Some("ws02"));
    sim.simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_honours_the_disruption_budget() {
    let sim = start(SimConfig::default(), small()).await;
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "juno");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(sim.client.clone(), "juno");
    eventually("the service runs", || service_pods_ready(&pods)).await;
    budgets
        .patch(
            "juno-service-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": null, "minAvailable": 2}})),
        )
        .await
        .expect("tighten the budget");
    eventually("the budget allows nothing", || async {
        let pdb = budgets.get("juno-service-1").await.expect("get");
        pdb.status.is_some_and(|s| s.disruptions_allowed == 0 && s.current_healthy == 2)
    })
    .await;
    let victim = pods.list(&ListParams::default().labels("app=juno-service-1")).await.expect("list").items[0]
        .metadata
        .name
        .clone()
        .expect("name");
    let refused = pods.evict(&victim, &EvictParams::default()).await.expect_err("the budget forbids it");
    let kube::Error::Api(status) = refused else { panic!("an API error, not {refused:?}") };
    assert_eq!(status.code, 429);
    assert_eq!(status.reason, "TooManyRequests");
    assert_eq!(status.message, "Cannot evict pod as it would violate the pod's disruption budget.");

    budgets
        .patch("juno-service-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 1}})))
        .await
        .expect("relax the budget");
    eventually("the budget allows one", || async {
        budgets.get("juno-service-1").await.expect("get").status.is_some_and(|s| s.disruptions_allowed == 1)
    })
    .await;
    let done = pods.evict(&victim, &EvictParams::default()).await.expect("allowed now");
    assert!(done.is_success());
    let terminating = pods.get(&victim).await.expect("still there while terminating");
    assert!(terminating.metadata.deletion_timestamp.is_some(), "the evicted pod terminates gracefully");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    eventually("the evicted pod is gone (30 s simulated = 0.3 s)", || async {
        pods.get_opt(&victim).await.expect("get").is_none()
    })
    .await;
    eventually("the ReplicaSet replaced it", || service_pods_ready(&pods)).await;
    sim.simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_merge_and_strategic_patches_apply() {
    let sim = start(SimConfig::default(), small()).await;
    let nodes: Api<Node> = Api::all(sim.client.clone());
    let params = PatchParams::default();
    let patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/rack", "value": "a"}])).expect("patch");
    nodes.patch("ws01", &params, &Patch::<()>::Json(patch)).await.expect("json patch");
    nodes.patch("ws01", &params, &Patch::Merge(json!({"metadata": {"labels": {"gpu": "a100"}}}))).await.expect("merge");
    let node = nodes
        .patch(
            "ws01",
            &params,
            &Patch::Strategic(json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoSchedule"}]}})),
        )
        .await
        .expect("strategic");
    let labels = node.metadata.labels.expect("labels");
    assert_eq!(labels.get("rack").map(String::as_str), Some("a"));
    assert_eq!(labels.get("gpu").map(String::as_str), Some("a100"));
    assert_eq!(node.spec.and_then(|s| s.taints).map(|t| t.len()), Some(1));
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/nothing"}])).expect("patch");
    let error = nodes.patch("ws01", &params, &Patch::<()>::Json(bad)).await.expect_err("invalid path");
    assert!(matches!(error, kube::Error::Api(s) if s.code == 422));
    let missing = nodes.patch("nope", &params, &Patch::Merge(json!({}))).await.expect_err("no such node");
    assert!(matches!(missing, kube::Error::Api(s) if s.is_not_found()));
    sim.simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_resource_versions_are_gone_and_bookmarks_arrive() {
    let config = SimConfig { watch_history: 10, bookmark_interval: Duration::from_millis(100), ..SimConfig::default() };
    let sim = start(config, small()).await;
    let nodes: Api<Node> = Api::all(sim.client.clone());
    let mut events = nodes.watch(&WatchParams::default(), "2").await.expect("watch").boxed();
    match events.try_next().await.expect("stream").expect("an event") {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    let current = nodes.list(&ListParams::default()).await.expect("list").metadata.resource_version.expect("rv");
    let mut events = nodes.watch(&WatchParams::default(), &current).await.expect("watch").boxed();
    let bookmark = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("a bookmark within 5 s")
        .expect("stream")
        .expect("event");
    let WatchEvent::Bookmark(bookmark) = bookmark else { panic!("expected a bookmark, got {bookmark:?}") };
    let rv: u64 = bookmark.metadata.resource_version.parse().expect("numeric");
    assert!(rv >= current.parse::<u64>().expect("numeric"));
    sim.simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_continue_tokens_and_selectors() {
    let options = GenerateOptions { workstations: 10, sessions_per_node: 3, ..GenerateOptions::default() };
    let sim = start(SimConfig::default(), options).await;
    let pods: Api<Pod> = Api::all(sim.client.clone());
    let all = pods.list(&ListParams::default()).await.expect("list").items.len();
    let mut paged = Vec::new();
    let mut params = ListParams::default().limit(7);
    loop {
        let page = pods.list(&params).await.expect("page");
        assert!(page.items.len() <= 7);
        paged.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = ListParams::default().limit(7).continue_token(&token),
            None => break,
        }
    }
    assert_eq!(paged.len(), all);
    let unique: std::collections::BTreeSet<_> = paged.iter().collect();
    assert_eq!(unique.len(), all, "no pod twice");
    let sessions = Api::<Pod>::namespaced(sim.client.clone(), "juno-sessions");
    let count = sessions.list(&ListParams::default().labels("app=juno-session")).await.expect("list").items.len();
    assert_eq!(count, 30);
    let bad = pods.list(&ListParams::default().fields("spec.bogus=1")).await.expect_err("unsupported field");
    assert!(matches!(bad, kube::Error::Api(s) if s.code == 400 && s.message.contains("field label not supported")));
    sim.simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_waits_for_the_grace_period() {
    let sim = start(SimConfig::default(), small()).await;
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "juno-sessions");
    let name = pods.list(&ListParams::default()).await.expect("list").items[0].metadata.name.clone().expect("name");
    let deleted = pods.delete(&name, &DeleteParams::default().grace_period(200)).await.expect("delete");
    let pod = deleted.left().expect("a pod with a grace period is returned, not a Status");
    assert!(pod.metadata.deletion_timestamp.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pods.get_opt(&name).await.expect("get").is_some(), "200 s simulated is 2 s real: still terminating");
    pods.delete(&name, &DeleteParams::default().grace_period(0)).await.expect("shorten the grace");
    assert!(pods.get_opt(&name).await.expect("get").is_none(), "grace 0 deletes at once");
    sim.simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_configmaps_and_events_keep_optimistic_concurrency() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Event};
    use kube::api::PostParams;
    let sim = start(SimConfig::default(), small()).await;
    let leases: Api<Lease> = Api::namespaced(sim.client.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "noderoll-plan"}, "spec": {"holderIdentity": "apply-1", "leaseDurationSeconds": 30}
    }))
    .expect("lease");
    let created = leases.create(&PostParams::default(), &lease).await.expect("create");
    let again = leases.create(&PostParams::default(), &lease).await.expect_err("exists");
    assert!(matches!(again, kube::Error::Api(s) if s.is_already_exists()));
    let mut mine = created.clone();
    mine.spec.as_mut().expect("spec").holder_identity = Some("apply-2".into());
    leases.replace("noderoll-plan", &PostParams::default(), &mine).await.expect("update with the current version");
    let stale = leases.replace("noderoll-plan", &PostParams::default(), &created).await.expect_err("stale version");
    assert!(matches!(stale, kube::Error::Api(s) if s.is_conflict()));
    let holder = leases.get("noderoll-plan").await.expect("get").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("apply-2"));

    let maps: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "m"}, "data": {"k": "v"}})).expect("cm");
    maps.create(&PostParams::default(), &map).await.expect("create configmap");
    let missing_ns: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "nope");
    let error = missing_ns.create(&PostParams::default(), &map).await.expect_err("no such namespace");
    assert!(matches!(error, kube::Error::Api(s) if s.is_not_found()));

    let events: Api<Event> = Api::namespaced(sim.client.clone(), "default");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "ws01."}, "involvedObject": {"kind": "Node", "name": "ws01"},
        "reason": "Cordoned", "message": "noderoll cordoned ws01", "type": "Normal"
    }))
    .expect("event");
    let posted = events.create(&PostParams::default(), &event).await.expect("create event");
    assert!(posted.metadata.name.is_some_and(|n| n.starts_with("ws01.") && n.len() == 10));
    let found =
        events.list(&ListParams::default().fields("involvedObject.name=ws01,reason=Cordoned")).await.expect("list");
    assert_eq!(found.items.len(), 1);
    sim.simulator.stop().await;
}

async fn pod_names(pods: &Api<Pod>) -> Vec<String> {
    pods.list(&ListParams::default()).await.expect("list").items.into_iter().filter_map(|p| p.metadata.name).collect()
}

async fn advance(client: &kube::Client, by: &str) {
    let body = serde_json::to_vec(&json!({"by": by})).expect("json");
    let request = http::Request::post("/sim/v1/clock/advance").body(body).expect("request");
    client.request_text(request).await.expect("advance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_same_cluster_and_advancing_time_fires_timers() {
    let names = |sim: &Running| {
        let pods: Api<Pod> = Api::all(sim.client.clone());
        async move {
            let mut names: Vec<String> = pods
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
                .into_iter()
                .filter_map(|p| p.metadata.uid)
                .collect();
            names.sort();
            names
        }
    };
    let config = || SimConfig { seed: 42, time_scale: 1.0, ..SimConfig::default() };
    let first = start(config(), small()).await;
    let second = start(config(), small()).await;
    assert_eq!(names(&first).await, names(&second).await, "same seed, same uids");
    let sessions: Api<Pod> = Api::namespaced(first.client.clone(), "juno-sessions");
    let before = pod_names(&sessions).await;
    advance(&first.client, "3h").await;
    // Every session lives at most 2 h, so each has ended and is terminating; a minute on,
    // its 30 s grace is over and it is gone; a minute later still, past the 30 s reconnect
    // delay, its user has started a new one.
    for _ in 0..2 {
        advance(&first.client, "1m").await;
    }
    let after = pod_names(&sessions).await;
    assert_eq!(after.len(), before.len(), "as many sessions as before");
    assert!(after.iter().all(|n| !before.contains(n)), "every session was replaced: {before:?} -> {after:?}");
    first.simulator.stop().await;
    second.simulator.stop().await;
}
