//! The scheduler: waiting pods go to the least-loaded node that is Ready, not cordoned
//! (unless tolerated), tolerated and selected.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

use crate::sim::clock::rfc3339;
use crate::sim::cluster::{Cluster, NodeInfo};
use crate::sim::resources::idx;
use crate::sim::store::Key;

/// Whether `tolerations` tolerate every NoSchedule/NoExecute taint of `node`.
pub(crate) fn tolerates(tolerations: &[Value], node: &NodeInfo, extra: &[&str]) -> bool {
    node.taints
        .iter()
        .filter(|t| t["effect"] != "PreferNoSchedule")
        .all(|taint| extra.contains(&taint["key"].as_str().unwrap_or_default()) || tolerates_taint(tolerations, taint))
}

/// Whether one of `tolerations` tolerates `taint`.
pub(crate) fn tolerates_taint(tolerations: &[Value], taint: &Value) -> bool {
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
pub(crate) fn tolerates_cordon(tolerations: &[Value]) -> bool {
    tolerates_taint(tolerations, &json!({"key": crate::labels::UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}))
}

pub(crate) fn node_selector_matches(spec: &Value, node: &NodeInfo) -> bool {
    spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
}

/// Places waiting pods on the least-loaded node that is Ready, not cordoned, tolerated and
/// selected; pods that fit nowhere get `PodScheduled=False` and wait.
///
/// Pods with the same nodeSelector and tolerations share one candidate heap per pass, so
/// placing 150,000 sessions costs one scan of the nodes, not one per pod.
pub(crate) fn schedule(cluster: &mut Cluster) {
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
