//! Reading what a cluster holds, for planning and the preview's survey: from a snapshot
//! file (`kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`) or from a live API server.
//! Both become JSON objects first, so one reading of the fields serves both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::executor::retry::{self, Patience};
use crate::planner::{BudgetFacts, Inventory, PodFacts};

fn strings(value: &Value) -> BTreeMap<String, String> {
    value.as_object().into_iter().flatten().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect()
}

/// Builds an inventory from API objects of any of the kinds it reads (others are ignored).
pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Inventory {
    let mut inventory = Inventory::default();
    for object in objects {
        let meta = &object["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
        match object["kind"].as_str() {
            Some("Node") => {
                inventory.nodes.insert(name, strings(&meta["labels"]));
            }
            Some("Pod") => {
                let node = object["spec"]["nodeName"].as_str().unwrap_or_default().to_owned();
                if node.is_empty() {
                    continue;
                }
                let annotations: BTreeSet<String> =
                    meta["annotations"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect();
                let daemon_set = meta["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|o| o["controller"] == true && o["kind"] == "DaemonSet");
                inventory.pods.push(PodFacts {
                    namespace,
                    name,
                    node,
                    labels: strings(&meta["labels"]),
                    mirror: annotations.contains("kubernetes.io/config.mirror"),
                    annotations,
                    daemon_set,
                    terminal: matches!(object["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
                });
            }
            Some("PodDisruptionBudget") => inventory.budgets.push(BudgetFacts {
                namespace,
                name,
                selector: object["spec"]["selector"].clone(),
                disruptions_allowed: object["status"]["disruptionsAllowed"].as_i64().unwrap_or(0),
            }),
            _ => {}
        }
    }
    inventory
}

/// Reads a snapshot file.
pub fn from_snapshot(path: &Path) -> Result<Inventory> {
    let items = crate::sim::read_items(path).map_err(crate::sim::SimError::from)?;
    Ok(from_objects(&items))
}

/// Reads nodes, pods and PDBs from a live cluster.
pub async fn from_cluster(client: &kube::Client) -> Result<Inventory> {
    let patience = Patience::default();
    let failed = |what: &str| {
        let context = format!("list the cluster's {what}");
        move |e: kube::Error| Error::Client { context, message: e.to_string() }
    };
    let params = kube::api::ListParams::default();
    let nodes = Api::<Node>::all(client.clone());
    let pods = Api::<Pod>::all(client.clone());
    let budgets = Api::<PodDisruptionBudget>::all(client.clone());
    let mut objects = Vec::new();
    let typed = |kind: &str, value: Value| {
        let mut value = value;
        value["kind"] = Value::from(kind);
        value
    };
    for node in retry::call(&patience, || nodes.list(&params)).await.map_err(failed("nodes"))? {
        objects.push(typed("Node", serde_json::to_value(node)?));
    }
    for pod in retry::call(&patience, || pods.list(&params)).await.map_err(failed("pods"))? {
        objects.push(typed("Pod", serde_json::to_value(pod)?));
    }
    for budget in retry::call(&patience, || budgets.list(&params)).await.map_err(failed("disruption budgets"))? {
        objects.push(typed("PodDisruptionBudget", serde_json::to_value(budget)?));
    }
    Ok(from_objects(&objects))
}
