//! The Deployment, ReplicaSet, StatefulSet and DaemonSet controllers: each keeps its pods
//! (or ReplicaSets) at the spec's count and writes the workload's status.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::node_of;
use super::scheduler::{node_selector_matches, tolerates};
use crate::sim::cluster::Cluster;
use crate::sim::resources::{RESOURCES, idx};
use crate::sim::store::Key;

/// Tolerations every DaemonSet pod gets, as the DaemonSet controller adds them.
pub(crate) const DAEMONSET_TOLERATIONS: &[&str] = &[
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure",
    crate::labels::UNSCHEDULABLE_TAINT,
    "node.kubernetes.io/network-unavailable",
];

pub(crate) fn owner_reference(resource: usize, key: &Key, uid: &str) -> Value {
    let rt = &RESOURCES[resource];
    json!([{"apiVersion": rt.api_version(), "kind": rt.kind, "name": key.1, "uid": uid,
            "controller": true, "blockOwnerDeletion": true}])
}

/// A pod (or ReplicaSet) from a workload's template.
pub(crate) fn from_template(template: &Value, namespace: &str, owner: Value) -> Value {
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

pub(crate) fn dependents(cluster: &Cluster, uid: &str, resource: usize) -> Vec<Key> {
    cluster.index.owned.get(uid).into_iter().flatten().filter(|(r, _)| *r == resource).map(|(_, k)| k.clone()).collect()
}

pub(crate) fn replicas(value: &Value) -> usize {
    value["spec"]["replicas"].as_u64().map_or(1, |r| usize::try_from(r).unwrap_or(usize::MAX))
}

/// Live pods among `keys`: (all not terminating, of which ready).
pub(crate) fn live(cluster: &Cluster, keys: &[Key]) -> (Vec<Key>, usize) {
    let alive: Vec<Key> =
        keys.iter().filter(|k| cluster.store.get(idx::PODS, k).is_some_and(|p| !p.meta.deleting)).cloned().collect();
    let ready = alive.iter().filter(|k| cluster.store.get(idx::PODS, k).is_some_and(|p| p.meta.ready)).count();
    (alive, ready)
}

pub(crate) fn set_status(cluster: &mut Cluster, resource: usize, key: &Key, status: Value) {
    cluster.store.update(resource, key, |v| {
        let generation = v["metadata"]["generation"].clone();
        v["status"] = status;
        v["status"]["observedGeneration"] = generation;
    });
}

/// A stable short hash of a pod template, as `pod-template-hash` is.
pub(crate) fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..10).map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char).collect()
}

pub(crate) fn deployment(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
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

pub(crate) fn replicaset(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
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

pub(crate) fn statefulset(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
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

pub(crate) fn daemonset(cluster: &mut Cluster, key: &Key, uid: &str, value: &Value) {
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
