//! A simulated copy of a real cluster, from the `v1 List` that
//! `kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml` prints.
//!
//! Objects keep their names, uids, labels and status, so owner references hold. Kinds the
//! simulator does not serve are skipped with a warning. The ReplicaSets between Deployments
//! and their pods are not in that output; they are rebuilt from the pods' owner references,
//! so the Deployment controller adopts the pods instead of starting new ones.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::{Value, json};

use super::cluster::Cluster;
use super::resources::{self, RESOURCES, idx};
use super::store::string_map;
use crate::labels::selector_matches;

/// Why a snapshot cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file cannot be read.
    #[error("cannot read the snapshot {path}: {source}")]
    Read {
        /// The snapshot file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a YAML or JSON `List`.
    #[error("{path} is not a snapshot: {message}")]
    Format {
        /// The snapshot file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Order in which kinds are loaded: what others refer to first.
const LOAD_ORDER: [usize; 10] = [
    idx::NAMESPACES,
    idx::NODES,
    idx::DEPLOYMENTS,
    idx::REPLICASETS,
    idx::STATEFULSETS,
    idx::DAEMONSETS,
    idx::PDBS,
    idx::CONFIGMAPS,
    idx::LEASES,
    idx::PODS,
];

/// A snapshot's items the simulator serves, by resource index, and what it skipped.
pub(crate) struct Snapshot {
    pub(crate) items: Vec<(usize, Value)>,
    pub(crate) warnings: Vec<String>,
}

/// Reads a snapshot file.
pub(crate) fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let items = read_items(path)?;
    let mut warnings = Vec::new();
    let mut known = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let api_version = item["apiVersion"].as_str().unwrap_or_default();
        let kind = item["kind"].as_str().unwrap_or_default();
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        match resources::find_kind(api_version, kind) {
            Some(resource) if !name.is_empty() => known.push((resource, item)),
            Some(_) => warnings.push(format!("item {}: {kind} without metadata.name, skipped", i + 1)),
            None => warnings.push(format!("item {} ({api_version} {kind} {name}): not simulated, skipped", i + 1)),
        }
    }
    Ok(Snapshot { items: known, warnings })
}

/// The objects of a snapshot file (a YAML or JSON `List`, or one object), as JSON values.
pub fn read_items(path: &Path) -> Result<Vec<Value>, SnapshotError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read { path: shown.clone(), source })?;
    let format = |message: String| SnapshotError::Format { path: shown.clone(), message };
    let document: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| format(e.to_string()))?
    } else {
        serde_saphyr::from_str(&text).map_err(|e| format(e.to_string()))?
    };
    match document["items"].as_array() {
        Some(items) => Ok(items.clone()),
        None if document["kind"].is_string() => Ok(vec![document]),
        None => Err(format("it has neither `items` (a List) nor a `kind` (one object)".to_owned())),
    }
}

/// Loads snapshot items into an empty cluster.
pub(crate) fn load(cluster: &mut Cluster, items: Vec<(usize, Value)>, warnings: &mut Vec<String>) {
    let mut namespaces: BTreeSet<String> = ["default", "kube-system"].map(str::to_owned).into();
    for (resource, item) in &items {
        if RESOURCES[*resource].namespaced
            && let Some(ns) = item["metadata"]["namespace"].as_str()
        {
            namespaces.insert(ns.to_owned());
        }
    }
    let mut by_resource: HashMap<usize, Vec<Value>> = HashMap::new();
    for (resource, item) in items {
        by_resource.entry(resource).or_default().push(item);
    }
    let declared: BTreeSet<String> = by_resource
        .get(&idx::NAMESPACES)
        .into_iter()
        .flatten()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    for ns in namespaces.difference(&declared) {
        by_resource
            .entry(idx::NAMESPACES)
            .or_default()
            .push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    let rebuilt = rebuild_replicasets(&by_resource);
    by_resource.entry(idx::REPLICASETS).or_default().extend(rebuilt);
    for resource in LOAD_ORDER.into_iter().chain([idx::EVENTS, idx::NEW_EVENTS]) {
        for mut item in by_resource.remove(&resource).unwrap_or_default() {
            let name = item["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            if let Some(m) = item["metadata"].as_object_mut() {
                m.remove("resourceVersion");
                m.remove("managedFields");
            }
            if item["metadata"]["uid"].as_str().is_none_or(str::is_empty) {
                item["metadata"]["uid"] = json!(cluster.uid());
            }
            super::cluster::defaults(cluster, resource, &mut item);
            if let Err(e) = cluster.store.insert(resource, item) {
                warnings.push(format!("{} {name}: {}, skipped", RESOURCES[resource].kind, e.message));
            }
        }
    }
}

/// ReplicaSets that pods name as their controller but the snapshot lacks, each rebuilt under
/// the Deployment that selects the pod.
fn rebuild_replicasets(by_resource: &HashMap<usize, Vec<Value>>) -> Vec<Value> {
    let present: BTreeSet<&str> = by_resource
        .get(&idx::REPLICASETS)
        .into_iter()
        .flatten()
        .filter_map(|rs| rs["metadata"]["uid"].as_str())
        .collect();
    let deployments = by_resource.get(&idx::DEPLOYMENTS).map(Vec::as_slice).unwrap_or_default();
    let mut rebuilt: HashMap<String, Value> = HashMap::new();
    for pod in by_resource.get(&idx::PODS).into_iter().flatten() {
        let Some(owner) = pod["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true && r["kind"] == "ReplicaSet"))
        else {
            continue;
        };
        let uid = owner["uid"].as_str().unwrap_or_default();
        if uid.is_empty() || present.contains(uid) || rebuilt.contains_key(uid) {
            continue;
        }
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let labels = string_map(&pod["metadata"]["labels"]);
        let Some(deployment) = deployments
            .iter()
            .find(|d| d["metadata"]["namespace"] == namespace && selector_matches(&d["spec"]["selector"], &labels))
        else {
            continue;
        };
        let hash = labels.get("pod-template-hash").cloned().unwrap_or_default();
        let mut template = deployment["spec"]["template"].clone();
        template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut selector = deployment["spec"]["selector"].clone();
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        rebuilt.insert(
            uid.to_owned(),
            json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": owner["name"], "namespace": namespace, "uid": uid,
                    "creationTimestamp": deployment["metadata"]["creationTimestamp"],
                    "labels": template["metadata"]["labels"].clone(),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": deployment["metadata"]["name"], "uid": deployment["metadata"]["uid"],
                        "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": {"replicas": deployment["spec"]["replicas"].as_u64().unwrap_or(1), "selector": selector, "template": template},
            }),
        );
    }
    rebuilt.into_values().collect()
}
