//! The kubelet's part: a placed pod starts on a Ready node, and its containers and
//! conditions follow the node's readiness.

use serde_json::{Value, json};

use super::node_of;
use crate::sim::clock::rfc3339;
use crate::sim::cluster::Cluster;
use crate::sim::resources::idx;
use crate::sim::store::Key;

pub(crate) fn start_pod(cluster: &mut Cluster, key: &Key, uid: &str) {
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
pub(crate) fn image_id(image: &Value) -> String {
    use sha2::Digest;
    let image = image.as_str().unwrap_or_default();
    let digest = sha2::Sha256::digest(image.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}@sha256:{hex}", image.split(':').next().unwrap_or(image))
}

pub(crate) fn set_pod_ready(cluster: &mut Cluster, key: &Key, ready: bool) {
    let now = rfc3339(cluster.now());
    cluster.store.update(idx::PODS, key, |pod| {
        for c in pod["status"]["containerStatuses"].as_array_mut().into_iter().flatten() {
            c["ready"] = json!(ready);
        }
        set_conditions(pod, ready, &now);
    });
}

pub(crate) fn set_conditions(pod: &mut Value, ready: bool, now: &str) {
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
