//! A PodDisruptionBudget's status computed from the pods it selects now: what the
//! disruption controller writes and what an eviction is judged against.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Cluster;
use crate::labels::selector_matches;
use crate::sim::resources::{RESOURCES, idx};

/// A PDB's status, computed from the pods it selects now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BudgetStatus {
    pub(crate) expected: i64,
    pub(crate) current_healthy: i64,
    pub(crate) desired_healthy: i64,
    pub(crate) disruptions_allowed: i64,
    pub(crate) disrupted: serde_json::Map<String, Value>,
}

/// `10`, or `30%` of `total` rounded up, as intstr percentages are for PDBs.
pub(crate) fn int_or_percent(value: &Value, total: i64) -> Option<i64> {
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
