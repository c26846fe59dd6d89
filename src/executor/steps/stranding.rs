//! The drain's question to the cluster when a budget holds its pods: can the budget's
//! replacements run anywhere, now or once a node comes back ([`stranded`])? Asked every few
//! seconds of plan time while pods are held, with two list calls: the budget's pods, and
//! the nodes its waiting replacements select.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

use super::sessions::is_terminal;
use super::{Context, StepError};
use crate::labels::selector_matches;
use crate::planner::budget::{Host, is_ready, stranded, stuck_unhealthy};
use crate::planner::placement::{Placement, blocking_taints};
use crate::world::retry;

/// Why the pods that the budget `key` (`namespace/name`, with `spec.selector` as JSON and
/// `status.disruptionsAllowed`) holds can never be moved, judged on the cluster as it is:
/// its pods not yet bound to a node are the replacements placed against every node; a
/// cordoned node counts as out of service until the budget's pods bound to it are gone; a
/// pod of it still starting counts as a disruption it may yet allow. `None` while no
/// replacement waits for a node (the controller may not have made it yet).
pub(super) async fn stranded_now(
    ctx: &Context,
    key: &str,
    selector: &Value,
    allowed: i32,
) -> Result<Option<String>, StepError> {
    let (namespace, _) = key.split_once('/').unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = ListParams::default().labels(&match_labels(selector));
    let listed = retry::call(&ctx.patience, || pods.list(&params))
        .await
        .map_err(|source| StepError::Api { context: format!("list the pods of PDB {key}"), source })?;
    let no_labels = BTreeMap::new();
    let mut placements: Vec<Placement> = Vec::new();
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    let mut starting = 0;
    for pod in &listed.items {
        let covered = selector_matches(selector, pod.metadata.labels.as_ref().unwrap_or(&no_labels));
        if !covered || pod.metadata.deletion_timestamp.is_some() || is_terminal(pod) {
            continue;
        }
        let json = serde_json::to_value(pod).unwrap_or(Value::Null);
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) {
            None => {
                let placement = Placement::of_pod(&json);
                if !placements.contains(&placement) {
                    placements.push(placement);
                }
            }
            Some(node) => {
                *held.entry(node.to_owned()).or_default() += 1;
                if !is_ready(&json) && stuck_unhealthy(&json).is_none() {
                    starting += 1;
                }
            }
        }
    }
    if placements.is_empty() {
        return Ok(None);
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // One shared nodeSelector narrows the list: no other node could take a replacement.
    let narrowed = match placements.as_slice() {
        [only] => only.node_selector().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        _ => String::new(),
    };
    let params = ListParams::default().labels(&narrowed);
    let listed = retry::call(&ctx.patience, || nodes.list(&params))
        .await
        .map_err(|source| StepError::Api { context: "list nodes".to_owned(), source })?;
    let facts: Vec<(String, BTreeMap<String, String>, _, bool)> = listed
        .items
        .iter()
        .map(|node| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let labels = node.metadata.labels.clone().unwrap_or_default();
            let taints = blocking_taints(&serde_json::to_value(node).unwrap_or(Value::Null));
            let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
            (name, labels, taints, cordoned)
        })
        .collect();
    let hosts = facts.iter().map(|(name, labels, taints, cordoned)| Host {
        name,
        labels,
        taints,
        out: *cordoned,
        held: held.get(name).copied().unwrap_or(0),
    });
    Ok(stranded(usize::try_from(allowed).unwrap_or(0) + starting, &placements, hosts))
}

/// A budget selector's `matchLabels` as a label selector the API server filters on (its
/// `matchExpressions` are judged here).
fn match_labels(selector: &Value) -> String {
    let pairs = selector["matchLabels"].as_object().into_iter().flatten();
    pairs.map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
}
