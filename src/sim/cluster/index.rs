//! The indexes the controllers keep from the store's change stream, held by the cluster
//! so that a tick costs in proportion to what changed, not to the size of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::sim::store::{Key, Object};

/// What the scheduler and the DaemonSet controller need to know of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeInfo {
    pub(crate) ready: bool,
    pub(crate) unschedulable: bool,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) taints: Vec<Value>,
    pub(crate) max_pods: usize,
}

/// Indexes built from the change stream.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) nodes: BTreeMap<String, NodeInfo>,
    pub(crate) node_pods: HashMap<String, BTreeSet<Key>>,
    /// Dependents by the uid of their controller.
    pub(crate) owned: HashMap<String, BTreeSet<(usize, Key)>>,
    /// Workloads by uid.
    pub(crate) workloads: HashMap<String, (usize, Key)>,
    pub(crate) pending: BTreeSet<Key>,
    pub(crate) dirty_workloads: BTreeSet<(usize, Key)>,
    pub(crate) dirty_namespaces: BTreeSet<String>,
    pub(crate) daemonsets_dirty: bool,
}

impl NodeInfo {
    /// Readiness and labels come from the store's index; the rest is read from the node.
    pub(crate) fn of(node: &Object) -> NodeInfo {
        let value = node.value();
        NodeInfo {
            ready: node.meta.ready,
            unschedulable: value["spec"]["unschedulable"].as_bool().unwrap_or(false),
            labels: node.meta.labels.clone(),
            taints: value["spec"]["taints"].as_array().cloned().unwrap_or_default(),
            max_pods: value["status"]["allocatable"]["pods"].as_str().and_then(|p| p.parse().ok()).unwrap_or(110),
        }
    }
}
