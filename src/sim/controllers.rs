//! What reacts to changes in the simulated cluster, each a small stand-in for its real
//! counterpart: the scheduler (cordons, taints, nodeSelector), the kubelet (pods start,
//! go unready with their node, vanish after their grace period), the Deployment,
//! ReplicaSet, StatefulSet and DaemonSet controllers, the disruption controller (live PDB
//! status), the garbage collector, and Juno users whose sessions end and start again.
//!
//! Controllers see changes through the store's change stream and keep indexes of their own,
//! so a tick costs in proportion to what changed, not to the size of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rand::RngExt;
use serde_json::{Value, json};

use super::clock::rfc3339;
use super::cluster::{Cluster, Timer};
use super::resources::{RESOURCES, idx};
use super::store::{Event, EventType, Key, Meta, Object};
use crate::labels::selector_matches;

/// Tolerations every DaemonSet pod gets, as the DaemonSet controller adds them.
const DAEMONSET_TOLERATIONS: &[&str] = &[
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/network-unavailable",
];

/// What the scheduler and the DaemonSet controller need to know of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeInfo {
    ready: bool,
    unschedulable: bool,
    labels: BTreeMap<String, String>,
    taints: Vec<Value>,
    max_pods: usize,
}

/// Indexes built from the change stream.
#[derive(Debug, Default)]
pub(crate) struct Index {
    nodes: BTreeMap<String, NodeInfo>,
    node_pods: HashMap<String, BTreeSet<Key>>,
    /// Dependents by the uid of their controller.
    owned: HashMap<String, BTreeSet<(usize, Key)>>,
    /// Workloads by uid.
    workloads: HashMap<String, (usize, Key)>,
    pending: BTreeSet<Key>,
    dirty_workloads: BTreeSet<(usize, Key)>,
    dirty_namespaces: BTreeSet<String>,
    daemonsets_dirty: bool,
}

fn is_workload(resource: usize) -> bool {
    matches!(resource, idx::DEPLOYMENTS | idx::REPLICASETS | idx::STATEFULSETS | idx::DAEMONSETS)
}

/// Fills what the API server defaults on creation.
pub(crate) fn defaults(cluster: &mut Cluster, resource: usize, value: &mut Value) {
    match resource {
        idx::PODS => {
            let spec = &mut value["spec"];
            for (field, default) in [
                ("terminationGracePeriodSeconds", json!(30)),
                ("schedulerName", json!("default-scheduler")),
                ("restartPolicy", json!("Always")),
                ("dnsPolicy", json!("ClusterFirst")),
            ] {
                if spec[field].is_null() {
                    spec[field] = default;
                }
            }
            if value["status"]["phase"].is_null() {
                value["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        idx::NAMESPACES if value["status"]["phase"].is_null() => {
            value["status"] = json!({"phase": "Active"});
        }
        idx::NODES if value["status"]["nodeInfo"]["bootID"].is_null() => {
            value["status"]["nodeInfo"]["bootID"] = json!(cluster.uid());
        }
        _ => {}
    }
}

/// Runs the cluster forward to now: due timers, then the controllers, until nothing changes.
pub(crate) fn tick(cluster: &mut Cluster) {
    for timer in cluster.due_timers() {
        fire(cluster, timer);
    }
    // Each pass reacts to the previous pass's writes; a handful always settles the chains
    // (Deployment → ReplicaSet → Pod → PDB), the bound only guards against a feedback bug.
    for _ in 0..8 {
        let events = cluster.store.take_unreconciled();
        if events.is_empty() {
            break;
        }
        for event in &events {
            observe(cluster, event);
        }
        run_controllers(cluster);
    }
}

fn fire(cluster: &mut Cluster, timer: Timer) {
    match timer {
        Timer::PodReady { key, uid } => start_pod(cluster, &key, &uid),
        Timer::PodGone { key, uid } => {
            if cluster.store.get(idx::PODS, &key).is_some_and(|p| p.meta.uid == uid) {
                cluster.store.remove(idx::PODS, &key);
            }
        }
        Timer::SessionEnds { key, uid } => {
            if cluster.store.get(idx::PODS, &key).is_some_and(|p| p.meta.uid == uid && !p.meta.deleting) {
                // The pod exists: deletion cannot fail.
                let _ = cluster.delete(idx::PODS, &key, None);
            }
        }
        Timer::SessionReconnect { template } => {
            if let Ok(pod) = serde_json::from_str::<Value>(&template) {
                // The namespace may have been deleted since; then the user stays away.
                let _ = cluster.create(idx::PODS, pod);
            }
        }
        Timer::NodeBack { name, generation } => cluster.node_back(&name, generation),
    }
}

/// Readiness and labels come from the store's index; the rest is read from the node.
fn node_info(node: &Object) -> NodeInfo {
    let value = node.value();
    NodeInfo {
        ready: node.meta.ready,
        unschedulable: value["spec"]["unschedulable"].as_bool().unwrap_or(false),
        labels: node.meta.labels.clone(),
        taints: value["spec"]["taints"].as_array().cloned().unwrap_or_default(),
        max_pods: value["status"]["allocatable"]["pods"].as_str().and_then(|p| p.parse().ok()).unwrap_or(110),
    }
}

fn observe(cluster: &mut Cluster, event: &Arc<Event>) {
    let meta = &event.object.meta;
    match event.resource {
        idx::NODES => observe_node(cluster, event),
        idx::PODS => observe_pod(cluster, event),
        idx::PDBS => {
            cluster.index.dirty_namespaces.insert(meta.namespace.clone());
        }
        r if is_workload(r) => {
            let entry = (r, meta.key());
            if event.kind == EventType::Deleted {
                cluster.index.workloads.remove(&meta.uid);
                collect_garbage(cluster, &meta.uid);
            } else {
                cluster.index.workloads.insert(meta.uid.clone(), entry.clone());
                cluster.index.dirty_workloads.insert(entry);
            }
            // A ReplicaSet's status is its Deployment's.
            if let Some((_, _, owner)) = &meta.controller
                && let Some(parent) = cluster.index.workloads.get(owner).cloned()
            {
                cluster.index.dirty_workloads.insert(parent);
            }
            if r == idx::REPLICASETS {
                track_owner(cluster, event, r);
            }
        }
        _ => {}
    }
}

fn observe_node(cluster: &mut Cluster, event: &Event) {
    let name = event.object.meta.name.clone();
    let old = cluster.index.nodes.get(&name).cloned();
    if event.kind == EventType::Deleted {
        cluster.index.nodes.remove(&name);
        cluster.index.daemonsets_dirty = true;
        return;
    }
    let info = node_info(&event.object);
    if old.as_ref() == Some(&info) {
        return;
    }
    let was_ready = old.as_ref().is_some_and(|o| o.ready);
    let pods: Vec<Key> = cluster.index.node_pods.get(&name).into_iter().flatten().cloned().collect();
    if was_ready && !info.ready {
        for key in &pods {
            set_pod_ready(cluster, key, false);
        }
    } else if !was_ready && info.ready {
        let delay = cluster.behaviour.pod_start;
        for key in pods {
            if let Some(pod) = cluster.store.get(idx::PODS, &key).filter(|p| !p.meta.deleting && !p.meta.ready) {
                let uid = pod.meta.uid.clone();
                cluster.at(delay, Timer::PodReady { key, uid });
            }
        }
    }
    cluster.index.daemonsets_dirty = true;
    cluster.index.nodes.insert(name, info);
}

fn node_of(meta: &Meta) -> &str {
    meta.field(&RESOURCES[idx::PODS], "spec.nodeName").unwrap_or_default()
}

fn observe_pod(cluster: &mut Cluster, event: &Arc<Event>) {
    let meta = &event.object.meta;
    let key = meta.key();
    let node = node_of(meta).to_owned();
    let previous_node = event.previous.as_deref().map(node_of).unwrap_or_default().to_owned();
    cluster.index.dirty_namespaces.insert(meta.namespace.clone());
    if let Some((_, _, owner)) = &meta.controller
        && let Some(workload) = cluster.index.workloads.get(owner).cloned()
    {
        cluster.index.dirty_workloads.insert(workload);
    }
    track_owner(cluster, event, idx::PODS);
    if !previous_node.is_empty()
        && (previous_node != node || event.kind == EventType::Deleted)
        && let Some(set) = cluster.index.node_pods.get_mut(&previous_node)
    {
        set.remove(&key);
    }
    let session = meta.annotations.contains_key(&cluster.behaviour.session_annotation);
    if event.kind == EventType::Deleted {
        cluster.index.pending.remove(&key);
        if session {
            let template = session_template(&event.object.value());
            let delay = cluster.behaviour.session_reconnect;
            cluster.at(delay, Timer::SessionReconnect { template });
        }
        return;
    }
    if node.is_empty() {
        if meta.deleting {
            cluster.index.pending.remove(&key);
        } else {
            cluster.index.pending.insert(key.clone());
        }
    } else {
        cluster.index.pending.remove(&key);
        cluster.index.node_pods.entry(node.clone()).or_default().insert(key.clone());
        let newly_placed = previous_node.is_empty();
        let phase = meta.field(&RESOURCES[idx::PODS], "status.phase").unwrap_or_default();
        if newly_placed && !meta.ready && !meta.deleting && !matches!(phase, "Succeeded" | "Failed") {
            let delay = cluster.behaviour.pod_start;
            cluster.at(delay, Timer::PodReady { key: key.clone(), uid: meta.uid.clone() });
        }
    }
    if event.kind == EventType::Added && session && !meta.deleting {
        let (low, high) = cluster.behaviour.session_lifetime;
        let lifetime = if high > low { cluster.rng.random_range(low..=high) } else { low };
        cluster.at(lifetime, Timer::SessionEnds { key, uid: meta.uid.clone() });
    }
}

/// Keeps the owner → dependents index for pods and ReplicaSets.
fn track_owner(cluster: &mut Cluster, event: &Event, resource: usize) {
    let meta = &event.object.meta;
    let Some((_, _, owner)) = &meta.controller else { return };
    let entry = (resource, meta.key());
    if event.kind == EventType::Deleted {
        if let Some(set) = cluster.index.owned.get_mut(owner) {
            set.remove(&entry);
        }
    } else {
        cluster.index.owned.entry(owner.clone()).or_default().insert(entry);
    }
}

fn collect_garbage(cluster: &mut Cluster, owner: &str) {
    for (resource, key) in cluster.index.owned.remove(owner).into_iter().flatten() {
        // A dependent already gone needs nothing.
        let _ = cluster.delete(resource, &key, None);
    }
}

/// A new session from an ended one: same spec and labels, a fresh name, no node yet.
fn session_template(pod: &Value) -> String {
    let mut template = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": pod["spec"].clone()});
    let metadata = &pod["metadata"];
    let name = metadata["name"].as_str().unwrap_or("session");
    let prefix = match metadata["generateName"].as_str() {
        Some(prefix) => prefix.to_owned(),
        None => match name.rsplit_once('-') {
            Some((stem, tail)) if tail.len() == 5 => format!("{stem}-"),
            _ => format!("{name}-"),
        },
    };
    for field in ["namespace", "labels", "annotations", "ownerReferences"] {
        template["metadata"][field] = metadata[field].clone();
    }
    template["metadata"]["generateName"] = json!(prefix);
    if let Some(spec) = template["spec"].as_object_mut() {
        spec.remove("nodeName");
    }
    if let Some(m) = template["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    template.to_string()
}

fn start_pod(cluster: &mut Cluster, key: &Key, uid: &str) {
    let Some(pod) = cluster.store.get(idx::PODS, key) else { return };
    if pod.meta.uid != uid || pod.meta.deleting {
        return;
    }
    let node = node_of(&pod.meta).to_owned();
    if !cluster.index.nodes.get(&node).is_some_and(|n| n.ready) {
        return;
    }
    let now = rfc3339(cluster.now());
    let ip = cluster.pod_ip();
    let host_ip = cluster
        .store
        .get_named(idx::NODES, "", &node)
        .and_then(|n| {
            n.value()["status"]["addresses"].as_array().and_then(|a| {
                a.iter().find(|a| a["type"] == "InternalIP").and_then(|a| a["address"].as_str().map(str::to_owned))
            })
        })
        .unwrap_or_default();
    cluster.store.update(idx::PODS, key, |pod| {
        let status = &mut pod["status"];
        status["phase"] = json!("Running");
        if status["podIP"].is_null() {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        status["hostIP"] = json!(host_ip);
        if status["startTime"].is_null() {
            status["startTime"] = json!(now);
        }
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({"name": c["name"], "image": c["image"], "imageID": image_id(&c["image"]), "ready": true,
                       "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
            })
            .collect();
        pod["status"]["containerStatuses"] = json!(containers);
        set_conditions(pod, true, &now);
    });
}

/// The image's digest as a kubelet reports it (`imageID` is required in a container's
/// status): made up from the image's name, the same for the same image.
fn image_id(image: &Value) -> String {
    use sha2::Digest;
    let image = image.as_str().unwrap_or_default();
    let digest = sha2::Sha256::digest(image.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}@sha256:{hex}", image.split(':').next().unwrap_or(image))
}

fn set_pod_ready(cluster: &mut Cluster, key: &Key, ready: bool) {
    let now = rfc3339(cluster.now());
    cluster.store.update(idx::PODS, key, |pod| {
        for c in pod["status"]["containerStatuses"].as_array_mut().into_iter().flatten() {
            c["ready"] = json!(ready);
        }
        set_conditions(pod, ready, &now);
    });
}

fn set_conditions(pod: &mut Value, ready: bool, now: &str) {
    let status = if ready { "True" } else { "False" };
    let mut conditions = vec![json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now})];
    for kind in ["Initialized", "ContainersReady", "Ready"] {
        let previous =
            pod["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind).cloned());
        let since = match &previous {
            Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
            _ => json!(now),
        };
        let s = if kind == "Initialized" { "True" } else { status };
        conditions.push(json!({"type": kind, "status": s, "lastTransitionTime": since}));
    }
    pod["status"]["conditions"] = json!(conditions);
}

fn run_controllers(cluster: &mut Cluster) {
    if std::mem::take(&mut cluster.index.daemonsets_dirty) {
        let all: Vec<(usize, Key)> =
            cluster.store.iter(idx::DAEMONSETS, None).map(|o| (idx::DAEMONSETS, o.meta.key())).collect();
        cluster.index.dirty_workloads.extend(all);
    }
    for (resource, key) in std::mem::take(&mut cluster.index.dirty_workloads) {
        let Some(object) = cluster.store.get(resource, &key) else { continue };
        let value = object.value();
        let uid = object.meta.uid.clone();
        match resource {
            idx::DEPLOYMENTS => deployment(cluster, &key, &uid, &value),
            idx::REPLICASETS => replicaset(cluster, &key, &uid, &value),
            idx::STATEFULSETS => statefulset(cluster, &key, &uid, &value),
            idx::DAEMONSETS => daemonset(cluster, &key, &uid, &value),
            _ => {}
        }
    }
    schedule(cluster);
    for namespace in std::mem::take(&mut cluster.index.dirty_namespaces) {
        let budgets: Vec<Key> = cluster.store.iter(idx::PDBS, Some(&namespace)).map(|o| o.meta.key()).collect();
        for key in budgets {
            update_budget(cluster, &key);
        }
    }
}

fn owner_reference(resource: usize, key: &Key, uid: &str) -> Value {
    let rt = &RESOURCES[resource];
    json!([{"apiVersion": rt.api_version(), "kind": rt.kind, "name": key.1, "uid": uid,
            "controller": true, "blockOwnerDeletion": true}])
}

/// A pod (or ReplicaSet) from a workload's template.
fn from_template(template: &Value, namespace: &str, owner: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "namespace": namespace,
            "labels": template["metadata"]["labels"].clone(),
            "annotations": template["metadata"]["annotations"].clone(),
            "ownerReferences": owner,
        },
        "spec": template["spec"].clone(),
    })
}

fn dependents(cluster: &Cluster, uid: &str, resource: usize) -> Vec<Key> {
    cluster.index.owned.get(uid).into_iter().flatten().filter(|(r, _)| *r == resource).map(|(_, k)| k.clone()).collect()
}

fn replicas(value: &Value) -> usize {
    value["spec"]["replicas"].as_u64().map_or(1, |r| usize::try_from(r).unwrap_or(usize::MAX))
}

/// Live pods among `keys`: (all not terminating, of which ready).
fn live(cluster: &Cluster, keys: &[Key]) -> (Vec<Key>, usize) {
    let alive: Vec<Key> =
        keys.iter().filter(|k| cluster.store.get(idx::PODS, k).is_some_and(|p| !p.meta.deleting)).cloned().collect();
    let ready = alive.iter().filter(|k| cluster.store.get(idx::PODS, k).is_some_and(|p| p.meta.ready)).count();
    (alive, ready)
}

fn set_status(cluster: &mut Cluster, resource: usize, key: &Key, status: Value) {
    cluster.store.update(resource, key, |v| {
        let generation = v["metadata"]["generation"].clone();
        v["status"] = status;
        v["status"]["observedGeneration"] = generation;
    });
}

/// A stable short hash of a pod template, as `pod-template-hash` is.
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..10).map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char).collect()
}

fn deployment(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
    let wanted = replicas(value);
    // The Deployment keeps the ReplicaSet it owns (one from a snapshot keeps its name);
    // template changes do not roll out, the simulator has no use for rollouts.
    let rs_key = match dependents(cluster, uid, idx::REPLICASETS).into_iter().next() {
        Some(existing) => {
            cluster.store.update(idx::REPLICASETS, &existing, |rs| rs["spec"]["replicas"] = json!(wanted));
            existing
        }
        None => {
            let hash = template_hash(&value["spec"]["template"]);
            let name = format!("{}-{hash}", key.1);
            let mut template = value["spec"]["template"].clone();
            template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = value["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let rs = json!({
                "metadata": {"name": name, "namespace": key.0, "labels": template["metadata"]["labels"].clone(),
                             "ownerReferences": owner_reference(idx::DEPLOYMENTS, key, uid)},
                "spec": {"replicas": wanted, "selector": selector, "template": template},
            });
            // A name clash with a foreign ReplicaSet leaves the Deployment without pods.
            let _ = cluster.create(idx::REPLICASETS, rs);
            (key.0.clone(), name)
        }
    };
    let status =
        cluster.store.get(idx::REPLICASETS, &rs_key).map(|rs| rs.value()["status"].clone()).unwrap_or_default();
    let ready = status["readyReplicas"].as_u64().unwrap_or(0);
    let total = status["replicas"].as_u64().unwrap_or(0);
    set_status(
        cluster,
        idx::DEPLOYMENTS,
        key,
        json!({"replicas": total, "updatedReplicas": total, "readyReplicas": ready, "availableReplicas": ready,
               "unavailableReplicas": (wanted as u64).saturating_sub(ready)}),
    );
}

fn replicaset(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
    let wanted = replicas(value);
    let (mut alive, _) = live(cluster, &dependents(cluster, uid, idx::PODS));
    let owner = owner_reference(idx::REPLICASETS, key, uid);
    while alive.len() < wanted {
        let mut pod = from_template(&value["spec"]["template"], &key.0, owner.clone());
        pod["metadata"]["generateName"] = json!(format!("{}-", key.1));
        match cluster.create(idx::PODS, pod) {
            Ok(created) => alive.push(created.meta.key()),
            Err(_) => break,
        }
    }
    if alive.len() > wanted {
        // Unscheduled pods go first, then the newest, as the ReplicaSet controller prefers.
        alive.sort_by_key(|k| {
            let p = cluster.store.get(idx::PODS, k);
            let placed = p.is_some_and(|p| !node_of(&p.meta).is_empty());
            (placed, std::cmp::Reverse(p.map(|p| p.meta.resource_version).unwrap_or_default()))
        });
        for k in alive.drain(..alive.len() - wanted).collect::<Vec<_>>() {
            let _ = cluster.delete(idx::PODS, &k, None);
        }
    }
    let (alive, ready) = live(cluster, &dependents(cluster, uid, idx::PODS));
    set_status(
        cluster,
        idx::REPLICASETS,
        key,
        json!({"replicas": alive.len(), "fullyLabeledReplicas": alive.len(), "readyReplicas": ready, "availableReplicas": ready}),
    );
}

fn statefulset(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
    let wanted = replicas(value);
    let owner = owner_reference(idx::STATEFULSETS, key, uid);
    for ordinal in 0..wanted {
        let name = format!("{}-{ordinal}", key.1);
        if cluster.store.get_named(idx::PODS, &key.0, &name).is_some() {
            continue;
        }
        let mut pod = from_template(&value["spec"]["template"], &key.0, owner.clone());
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
        pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
        let _ = cluster.create(idx::PODS, pod);
    }
    for k in dependents(cluster, uid, idx::PODS) {
        let ordinal = k.1.rsplit_once('-').and_then(|(_, o)| o.parse::<usize>().ok());
        if ordinal.is_none_or(|o| o >= wanted) {
            let _ = cluster.delete(idx::PODS, &k, None);
        }
    }
    let (alive, ready) = live(cluster, &dependents(cluster, uid, idx::PODS));
    set_status(
        cluster,
        idx::STATEFULSETS,
        key,
        json!({"replicas": alive.len(), "readyReplicas": ready, "currentReplicas": alive.len(),
               "updatedReplicas": alive.len(), "availableReplicas": ready}),
    );
}

/// Whether `tolerations` tolerate every NoSchedule/NoExecute taint of `node`.
fn tolerates(tolerations: &[Value], node: &NodeInfo, extra: &[&str]) -> bool {
    node.taints
        .iter()
        .filter(|t| t["effect"] != "PreferNoSchedule")
        .all(|taint| extra.contains(&taint["key"].as_str().unwrap_or_default()) || tolerates_taint(tolerations, taint))
}

/// Whether one of `tolerations` tolerates `taint`.
fn tolerates_taint(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let key_ok =
            t["key"] == taint["key"] || (t["key"].as_str().is_none_or(str::is_empty) && t["operator"] == "Exists");
        let value_ok = t["operator"] == "Exists"
            || t["value"] == taint["value"]
            || (t["value"].is_null() && taint["value"].is_null());
        let effect_ok = t["effect"].as_str().is_none_or(str::is_empty) || t["effect"] == taint["effect"];
        key_ok && value_ok && effect_ok
    })
}

/// Whether a pod may go to a cordoned node: the real scheduler's NodeUnschedulable plugin
/// lets a pod that tolerates `node.kubernetes.io/unschedulable:NoSchedule` through (seen
/// on kube-scheduler v1.36.3: a Deployment tolerating every taint went to cordoned nodes).
fn tolerates_cordon(tolerations: &[Value]) -> bool {
    tolerates_taint(tolerations, &json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}))
}

fn node_selector_matches(spec: &Value, node: &NodeInfo) -> bool {
    spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
}

fn daemonset(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
    let template = &value["spec"]["template"];
    let tolerations = template["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let eligible: BTreeSet<String> = cluster
        .index
        .nodes
        .iter()
        .filter(|(_, n)| {
            node_selector_matches(&template["spec"], n) && tolerates(&tolerations, n, DAEMONSET_TOLERATIONS)
        })
        .map(|(name, _)| name.clone())
        .collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    for k in dependents(cluster, uid, idx::PODS) {
        let Some(pod) = cluster.store.get(idx::PODS, &k) else { continue };
        let node = node_of(&pod.meta).to_owned();
        if pod.meta.deleting {
            continue;
        }
        if eligible.contains(&node) && !placed.contains(&node) {
            placed.insert(node);
        } else {
            let _ = cluster.delete(idx::PODS, &k, None);
        }
    }
    let owner = owner_reference(idx::DAEMONSETS, key, uid);
    for node in eligible.difference(&placed) {
        let mut pod = from_template(template, &key.0, owner.clone());
        pod["metadata"]["generateName"] = json!(format!("{}-", key.1));
        pod["spec"]["nodeName"] = json!(node);
        let mut tolerations = tolerations.clone();
        tolerations.extend(DAEMONSET_TOLERATIONS.iter().map(|t| json!({"key": t, "operator": "Exists"})));
        pod["spec"]["tolerations"] = json!(tolerations);
        let _ = cluster.create(idx::PODS, pod);
    }
    let (alive, ready) = live(cluster, &dependents(cluster, uid, idx::PODS));
    set_status(
        cluster,
        idx::DAEMONSETS,
        key,
        json!({"desiredNumberScheduled": eligible.len(), "currentNumberScheduled": alive.len(),
               "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": alive.len(),
               "numberMisscheduled": 0}),
    );
}

/// Places waiting pods on the least-loaded node that is Ready, not cordoned, tolerated and
/// selected; pods that fit nowhere get `PodScheduled=False` and wait.
///
/// Pods with the same nodeSelector and tolerations share one candidate heap per pass, so
/// placing 150,000 sessions costs one scan of the nodes, not one per pod.
fn schedule(cluster: &mut Cluster) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let pending: Vec<Key> = cluster.index.pending.iter().cloned().collect();
    let mut heaps: HashMap<String, BinaryHeap<Reverse<(usize, String)>>> = HashMap::new();
    for key in pending {
        let Some(pod) = cluster.store.get(idx::PODS, &key) else {
            cluster.index.pending.remove(&key);
            continue;
        };
        let value = pod.value();
        let spec = &value["spec"];
        let signature = format!("{}|{}", spec["nodeSelector"], spec["tolerations"]);
        let index = &cluster.index;
        let heap = heaps.entry(signature).or_insert_with(|| {
            let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
            index
                .nodes
                .iter()
                .filter(|(_, n)| {
                    n.ready
                        && (!n.unschedulable || tolerates_cordon(&tolerations))
                        && node_selector_matches(spec, n)
                        && tolerates(&tolerations, n, &[])
                })
                .map(|(name, _)| Reverse((index.node_pods.get(name).map_or(0, BTreeSet::len), name.clone())))
                .collect()
        });
        let mut choice = None;
        while let Some(Reverse((load, name))) = heap.pop() {
            if cluster.index.nodes.get(&name).is_some_and(|n| load < n.max_pods) {
                heap.push(Reverse((load + 1, name.clone())));
                choice = Some(name);
                break;
            }
        }
        let now = rfc3339(cluster.now());
        match choice {
            Some(node) => {
                cluster.store.update(idx::PODS, &key, |pod| {
                    pod["spec"]["nodeName"] = json!(node);
                    pod["status"]["conditions"] =
                        json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]);
                });
                cluster.index.pending.remove(&key);
                cluster.index.node_pods.entry(node).or_default().insert(key);
            }
            None => {
                let message =
                    format!("0/{} nodes are available for this pod (simulated scheduler).", cluster.index.nodes.len());
                cluster.store.update(idx::PODS, &key, |pod| {
                    let already = pod["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "False"));
                    if !already {
                        pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False",
                            "reason": "Unschedulable", "message": message, "lastTransitionTime": now}]);
                    }
                });
            }
        }
    }
}

/// A PDB's status, computed from the pods it selects now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BudgetStatus {
    pub(crate) expected: i64,
    pub(crate) current_healthy: i64,
    pub(crate) desired_healthy: i64,
    pub(crate) disruptions_allowed: i64,
    disrupted: serde_json::Map<String, Value>,
}

/// `10`, or `30%` of `total` rounded up, as intstr percentages are for PDBs.
fn int_or_percent(value: &Value, total: i64) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((percent * total + 99) / 100)
        }
        _ => None,
    }
}

pub(crate) fn budget_status(cluster: &Cluster, pdb: &Value) -> BudgetStatus {
    let namespace = pdb["metadata"]["namespace"].as_str().unwrap_or_default();
    let selector = &pdb["spec"]["selector"];
    let mut expected = 0;
    let mut healthy = 0;
    let mut present = BTreeSet::new();
    for pod in cluster.store.iter(idx::PODS, Some(namespace)) {
        if !selector_matches(selector, &pod.meta.labels) {
            continue;
        }
        let phase = pod.meta.field(&RESOURCES[idx::PODS], "status.phase").unwrap_or_default();
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        expected += 1;
        if pod.meta.ready && !pod.meta.deleting {
            healthy += 1;
            present.insert(pod.meta.name.clone());
        }
    }
    let desired = if let Some(min) = int_or_percent(&pdb["spec"]["minAvailable"], expected) {
        min
    } else if let Some(max) = int_or_percent(&pdb["spec"]["maxUnavailable"], expected) {
        (expected - max).max(0)
    } else {
        expected
    };
    // An eviction in flight counts against the budget until the pod is seen terminating.
    let disrupted: serde_json::Map<String, Value> = pdb["status"]["disruptedPods"]
        .as_object()
        .map(|m| m.iter().filter(|(name, _)| present.contains(*name)).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let allowed = (healthy - desired - disrupted.len() as i64).max(0);
    BudgetStatus {
        expected,
        current_healthy: healthy,
        desired_healthy: desired,
        disruptions_allowed: allowed,
        disrupted,
    }
}

fn update_budget(cluster: &mut Cluster, key: &Key) {
    let Some(pdb) = cluster.store.get(idx::PDBS, key) else { return };
    let value = pdb.value();
    let status = budget_status(cluster, &value);
    let allowed = status.disruptions_allowed > 0;
    let previous = value["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed").cloned());
    let since = match &previous {
        Some(p) if (p["status"] == "True") == allowed => p["lastTransitionTime"].clone(),
        _ => json!(rfc3339(cluster.now())),
    };
    let generation = value["metadata"]["generation"].clone();
    let mut fresh = json!({
        "observedGeneration": generation,
        "expectedPods": status.expected,
        "currentHealthy": status.current_healthy,
        "desiredHealthy": status.desired_healthy,
        "disruptionsAllowed": status.disruptions_allowed,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if allowed { "True" } else { "False" },
            "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }],
    });
    if !status.disrupted.is_empty() {
        fresh["disruptedPods"] = Value::Object(status.disrupted);
    }
    cluster.store.update(idx::PDBS, key, |v| v["status"] = fresh);
}
