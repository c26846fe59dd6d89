//! Reading what a cluster holds, for planning, the preview's survey and `init`: from a
//! snapshot file (`kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`) or from a live API
//! server, in pages as kubectl lists. Both become JSON objects first, so one reading of the
//! fields serves both, and the executor's node list and the preview's full survey are the
//! same reader asked for less or more. `init` asks for Cilium's policies too, where the
//! cluster serves them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use crate::exit_code::{self, KnowsExitCode};
use crate::planner::{BudgetFacts, CiliumPolicy, Inventory, PodFacts};
use crate::world::retry::{self, Patience};

/// Objects per page when listing a cluster (kubectl's chunk size): a facility's whole node
/// or pod list decoded at once is tens of megabytes, of which only a few fields are kept.
const PAGE: u32 = 500;

/// Why a cluster's inventory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Listing failed for good (after retries).
    #[error("cannot list the cluster's {what}")]
    Api {
        /// Nodes, pods, disruption budgets or a Cilium kind.
        what: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The snapshot file cannot be read.
    #[error(transparent)]
    Snapshot(#[from] crate::sim::SimError),
    /// A listed object cannot be re-read as JSON.
    #[error("cannot read a listed object as JSON")]
    Json(#[from] serde_json::Error),
}

impl KnowsExitCode for InventoryError {
    fn exit_code(&self) -> i32 {
        exit_code::FAILURE
    }
}

/// How much of a cluster to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Node names and labels: what planning needs.
    Nodes,
    /// Nodes, pods and disruption budgets: what the preview's survey needs too.
    Everything,
    /// Everything and Cilium's BGP and L2 announcement policies: what `init` needs to name
    /// the load-balancer mode.
    WithLoadBalancers,
}

/// The Cilium kinds whose node selector says where load balancing runs, as (version,
/// kind, plural). `CiliumBGPClusterConfig` is served as `v2` from Cilium 1.18 and as
/// `v2alpha1` before; a cluster serving both lists the same objects twice, kept once.
const CILIUM_KINDS: [(&str, &str, &str); 4] = [
    ("v2", "CiliumBGPClusterConfig", "ciliumbgpclusterconfigs"),
    ("v2alpha1", "CiliumBGPClusterConfig", "ciliumbgpclusterconfigs"),
    ("v2alpha1", "CiliumBGPPeeringPolicy", "ciliumbgppeeringpolicies"),
    ("v2alpha1", "CiliumL2AnnouncementPolicy", "ciliuml2announcementpolicies"),
];

fn strings(value: &Value) -> BTreeMap<String, String> {
    value.as_object().into_iter().flatten().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect()
}

/// Builds an inventory from API objects of any of the kinds it reads (others are ignored).
pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Inventory {
    let mut inventory = Inventory::default();
    add_objects(&mut inventory, objects);
    inventory
}

/// Adds API objects of the kinds an inventory holds (others are ignored).
fn add_objects<'a>(inventory: &mut Inventory, objects: impl IntoIterator<Item = &'a Value>) {
    for object in objects {
        let meta = &object["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
        match object["kind"].as_str() {
            Some("Node") => {
                if object["spec"]["unschedulable"] == true {
                    inventory.cordoned.insert(name.clone());
                }
                let taints = crate::planner::placement::blocking_taints(object);
                if !taints.is_empty() {
                    inventory.taints.insert(name.clone(), taints);
                }
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
                    mirror: annotations.contains(crate::labels::MIRROR_POD),
                    annotations,
                    daemon_set,
                    terminal: matches!(object["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
                    stuck: crate::planner::budget::stuck_unhealthy(object),
                    ready: crate::planner::budget::is_ready(object),
                    placement: crate::planner::placement::Placement::of_pod(object),
                });
            }
            Some("PodDisruptionBudget") => inventory.budgets.push(BudgetFacts {
                namespace,
                name,
                selector: object["spec"]["selector"].clone(),
                disruptions_allowed: object["status"]["disruptionsAllowed"].as_i64().unwrap_or(0),
                never: crate::planner::budget::never_allows(object),
                holds_unhealthy: crate::planner::budget::holds_unhealthy(object),
            }),
            Some(kind)
                if CILIUM_KINDS.iter().any(|(_, k, _)| *k == kind)
                    && !inventory.cilium_policies.iter().any(|p| p.kind == kind && p.name == name) =>
            {
                inventory.cilium_policies.push(CiliumPolicy {
                    kind: kind.to_owned(),
                    name,
                    node_selector: object["spec"]["nodeSelector"].clone(),
                });
            }
            _ => {}
        }
    }
}

/// Reads a snapshot file.
pub fn from_snapshot(path: &Path) -> Result<Inventory, InventoryError> {
    let items = crate::sim::read_items(path).map_err(crate::sim::SimError::from)?;
    Ok(from_objects(&items))
}

/// Reads a live cluster, page by page, keeping only what an inventory holds.
pub async fn from_cluster(
    client: &kube::Client,
    patience: &Patience,
    scope: Scope,
) -> Result<Inventory, InventoryError> {
    let mut inventory = Inventory::default();
    read_pages(&Api::<Node>::all(client.clone()), patience, "nodes", |page| {
        for node in page {
            let name = node.metadata.name.unwrap_or_default();
            if node.spec.and_then(|s| s.unschedulable) == Some(true) {
                inventory.cordoned.insert(name.clone());
            }
            inventory.nodes.insert(name, node.metadata.labels.unwrap_or_default());
        }
        Ok(())
    })
    .await?;
    if scope == Scope::Nodes {
        return Ok(inventory);
    }
    read_pages(&Api::<Pod>::all(client.clone()), patience, "pods", |page| add_typed(&mut inventory, "Pod", page))
        .await?;
    read_pages(&Api::<PodDisruptionBudget>::all(client.clone()), patience, "disruption budgets", |page| {
        add_typed(&mut inventory, "PodDisruptionBudget", page)
    })
    .await?;
    if scope == Scope::WithLoadBalancers {
        for (version, kind, plural) in CILIUM_KINDS {
            let resource =
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cilium.io", version, kind), plural);
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let read = read_pages(&api, patience, plural, |page| add_typed(&mut inventory, kind, page)).await;
            match read {
                // Not served: no Cilium, or not this version of it.
                Err(InventoryError::Api { source: kube::Error::Api(status), .. }) if status.code == 404 => {}
                other => other?,
            }
        }
    }
    Ok(inventory)
}

/// Adds one page of typed objects through their JSON form (a list's items carry no kind).
fn add_typed<K: serde::Serialize>(inventory: &mut Inventory, kind: &str, page: Vec<K>) -> Result<(), InventoryError> {
    let mut objects = Vec::with_capacity(page.len());
    for item in page {
        let mut value = serde_json::to_value(item)?;
        value["kind"] = Value::from(kind);
        objects.push(value);
    }
    add_objects(inventory, &objects);
    Ok(())
}

/// Lists every object of `api`'s kind in pages of [`PAGE`], handing each page to `keep`.
async fn read_pages<K>(
    api: &Api<K>,
    patience: &Patience,
    what: &'static str,
    mut keep: impl FnMut(Vec<K>) -> Result<(), InventoryError>,
) -> Result<(), InventoryError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut token: Option<String> = None;
    loop {
        let mut params = kube::api::ListParams::default().limit(PAGE);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page =
            retry::call(patience, || api.list(&params)).await.map_err(|source| InventoryError::Api { what, source })?;
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        keep(page.items)?;
        if token.is_none() {
            return Ok(());
        }
    }
}
