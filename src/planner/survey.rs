//! What a rollout will meet in the cluster as it is now: per node, the pods the drain will
//! evict, the sessions still running, the DaemonSet pods left alone and the disruption
//! budgets that would block right now; and the mismatches between plan and cluster (nodes
//! no batch covers, plan nodes the cluster lacks, roles that contradict node labels).
//! Pure: the cluster's contents come in as an [`Inventory`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use serde::Serialize;

use super::budget::{Host, stranded};
use super::build::{Inventory, Planned, PodFacts};
use crate::labels::{JUNO_WORKSTATION, SERVICE_LABELS, selector_matches};
use crate::plan::Plan;
use crate::plan::model::{AlreadyCordonedPolicy, Role};

/// One plan node as the cluster has it now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSurvey {
    /// The node.
    pub node: String,
    /// Its batch.
    pub batch: String,
    /// Pods the drain will evict (`namespace/name`).
    pub evict: Vec<String>,
    /// Session pods on it now.
    pub sessions: Vec<String>,
    /// DaemonSet and mirror pods the drain leaves alone.
    pub left_alone: Vec<String>,
    /// PDBs (`namespace/name`) covering a pod to evict that allow no disruption now.
    pub blocking_budgets: Vec<String>,
    /// Of those, the ones that can never allow one, with why (`namespace/name: reason`):
    /// the drain halts at once on them instead of waiting out its timeout.
    pub hopeless_budgets: Vec<String>,
}

/// The whole survey.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Survey {
    /// Plan nodes, in plan order.
    pub nodes: Vec<NodeSurvey>,
    /// Cluster nodes no batch covers.
    pub uncovered: Vec<String>,
    /// Plan nodes the cluster does not have.
    pub missing: Vec<String>,
    /// Nodes whose labels contradict their batch's role, with the reason.
    pub role_conflicts: Vec<String>,
    /// Plan nodes someone has cordoned already, with what the rollout will do with each
    /// (`upgrade`, then leave cordoned, or `skip`).
    pub already_cordoned: Vec<AlreadyCordoned>,
}

/// A plan node that is cordoned before the rollout.
#[derive(Debug, Clone, Serialize)]
pub struct AlreadyCordoned {
    /// The node.
    pub node: String,
    /// Its batch's `alreadyCordoned` policy.
    pub policy: AlreadyCordonedPolicy,
}

/// Whether any of `keys` is set (to anything but `false`).
pub fn has_any(labels: &std::collections::BTreeMap<String, String>, keys: &[&str]) -> bool {
    keys.iter().any(|k| labels.get(*k).is_some_and(|v| v != "false"))
}

/// Surveys the cluster for a planned rollout.
pub fn survey(plan: &Plan, planned: &Planned, inventory: &Inventory) -> Survey {
    let mut result = Survey::default();
    let covered: BTreeSet<&str> = planned.chains.iter().map(|c| c.node.as_str()).collect();
    result.uncovered = inventory.nodes.keys().filter(|n| !covered.contains(n.as_str())).cloned().collect();
    for chain in &planned.chains {
        let batch = &plan.batches[chain.batch];
        let Some(labels) = inventory.nodes.get(&chain.node) else {
            result.missing.push(chain.node.clone());
            continue;
        };
        if inventory.cordoned.contains(&chain.node) {
            let policy = batch.settings.already_cordoned;
            result.already_cordoned.push(AlreadyCordoned { node: chain.node.clone(), policy });
        }
        let serves = has_any(labels, &SERVICE_LABELS);
        let works = has_any(labels, &[JUNO_WORKSTATION]);
        match batch.role {
            Role::Service if works && !serves => result.role_conflicts.push(format!(
                "{} is in service batch `{}` but is labelled `{JUNO_WORKSTATION}`",
                chain.node, batch.name
            )),
            Role::Workstation if serves => result.role_conflicts.push(format!(
                "{} is in workstation batch `{}` but carries a control-plane, etcd or service label; etcd quorum is only guarded for service batches",
                chain.node, batch.name
            )),
            _ => {}
        }
        let mut node = NodeSurvey {
            node: chain.node.clone(),
            batch: batch.name.clone(),
            evict: Vec::new(),
            sessions: Vec::new(),
            left_alone: Vec::new(),
            blocking_budgets: Vec::new(),
            hopeless_budgets: Vec::new(),
        };
        let mut blocking = BTreeSet::new();
        let mut hopeless = BTreeSet::new();
        for pod in inventory.pods.iter().filter(|p| p.node == chain.node && !p.terminal) {
            let key = format!("{}/{}", pod.namespace, pod.name);
            let drain = &batch.settings.drain;
            if pod.mirror || (pod.daemon_set && drain.ignore_daemon_sets) {
                node.left_alone.push(key);
                continue;
            }
            if drain.pod_selector.as_ref().is_some_and(|s| !s.matches(&pod.labels)) {
                node.left_alone.push(key);
                continue;
            }
            if pod.annotations.contains(&batch.settings.sessions.annotation) {
                node.sessions.push(key.clone());
            }
            for budget in inventory.budgets.iter().filter(|b| b.namespace == pod.namespace) {
                if budget.disruptions_allowed <= 0 && selector_matches(&budget.selector, &pod.labels) {
                    blocking.insert(format!("{}/{}", budget.namespace, budget.name));
                    if let Some(why) = &budget.never {
                        hopeless.insert(format!("{}/{}: {why}", budget.namespace, budget.name));
                    } else if let (Some(stuck), Some(why)) = (&pod.stuck, &budget.holds_unhealthy) {
                        hopeless.insert(format!(
                            "{}/{}: it holds {key}, which will not become Ready by waiting ({stuck}), and {why}",
                            budget.namespace, budget.name
                        ));
                    }
                }
            }
            node.evict.push(key);
        }
        node.blocking_budgets = blocking.into_iter().collect();
        node.hopeless_budgets = hopeless.into_iter().collect();
        result.nodes.push(node);
    }
    let index: HashMap<String, usize> = result.nodes.iter().enumerate().map(|(i, n)| (n.node.clone(), i)).collect();
    for (node, entry) in stranded_in_waves(planned, inventory, &result.nodes) {
        if let Some(&i) = index.get(&node) {
            result.nodes[i].hopeless_budgets.push(entry);
        }
    }
    result
}

/// The budgets a wave strands ([`stranded`]), as (node, `namespace/name: reason`) for each
/// node of the wave that holds their pods. Each wave (the k-th node of every lane of a
/// batch) is judged with its nodes out of service at once and the nodes cordoned already
/// left out, since they stay cordoned; a budget's pods that are starting (not Ready, and
/// not stuck) count as disruptions it may allow once they are Ready.
fn stranded_in_waves(planned: &Planned, inventory: &Inventory, nodes: &[NodeSurvey]) -> Vec<(String, String)> {
    let evicted: HashSet<&str> = nodes.iter().flat_map(|n| n.evict.iter().map(String::as_str)).collect();
    // Per budget, once: the pods it covers with their keys, and how many are starting.
    let covered: Vec<(Vec<(String, &PodFacts)>, usize)> = inventory
        .budgets
        .iter()
        .map(|b| {
            let covers = |p: &&PodFacts| p.namespace == b.namespace && selector_matches(&b.selector, &p.labels);
            let pods: Vec<(String, &PodFacts)> = inventory
                .pods
                .iter()
                .filter(|p| !p.terminal)
                .filter(covers)
                .map(|p| (format!("{}/{}", p.namespace, p.name), p))
                .collect();
            let starting = pods.iter().filter(|(_, p)| !p.ready && p.stuck.is_none()).count();
            (pods, starting)
        })
        .collect();
    let no_taints = Vec::new();
    let mut found = Vec::new();
    for batch in &planned.batches {
        for (w, wave) in batch.waves().enumerate() {
            let out: BTreeSet<&str> = wave.iter().map(String::as_str).collect();
            for (budget, (pods, starting)) in inventory.budgets.iter().zip(&covered) {
                let mut held: BTreeMap<&str, usize> = BTreeMap::new();
                let mut placements = Vec::new();
                for (key, pod) in pods {
                    if out.contains(pod.node.as_str()) && evicted.contains(key.as_str()) {
                        *held.entry(pod.node.as_str()).or_default() += 1;
                        if !placements.contains(&pod.placement) {
                            placements.push(pod.placement.clone());
                        }
                    }
                }
                if held.is_empty() {
                    continue;
                }
                let allowed = usize::try_from(budget.disruptions_allowed).unwrap_or(0) + starting;
                let hosts = inventory
                    .nodes
                    .iter()
                    .filter(|(name, _)| out.contains(name.as_str()) || !inventory.cordoned.contains(*name))
                    .map(|(name, labels)| Host {
                        name,
                        labels,
                        taints: inventory.taints.get(name).unwrap_or(&no_taints),
                        out: out.contains(name.as_str()),
                        held: held.get(name.as_str()).copied().unwrap_or(0),
                    });
                let Some(why) = stranded(allowed, &placements, hosts) else { continue };
                let entry = format!(
                    "{}/{}: wave {} of batch `{}` takes out {}; {why}",
                    budget.namespace,
                    budget.name,
                    w + 1,
                    batch.name,
                    wave.join(", ")
                );
                found.extend(held.keys().map(|node| ((*node).to_owned(), entry.clone())));
            }
        }
    }
    found
}

fn sample(items: &[String]) -> String {
    let shown = items.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 4 { format!("{shown} and {} more", items.len() - 4) } else { shown }
}

/// The survey as text for the preview.
pub fn text(survey: &Survey) -> String {
    let mut out = String::from("\nCluster survey (as the cluster is now)\n");
    for n in &survey.nodes {
        let _ = write!(out, "  {:<16} {:>3} pod(s) to evict", n.node, n.evict.len());
        if !n.sessions.is_empty() {
            let _ = write!(out, ", {} session(s)", n.sessions.len());
        }
        if !n.left_alone.is_empty() {
            let _ = write!(out, ", {} left alone (DaemonSet/mirror)", n.left_alone.len());
        }
        out.push('\n');
        if !n.blocking_budgets.is_empty() {
            let _ = writeln!(out, "      blocked now by PDB {} (disruptionsAllowed 0)", n.blocking_budgets.join(", "));
        }
        for hopeless in &n.hopeless_budgets {
            let _ = writeln!(out, "      PDB {hopeless}; the drain will halt on it");
        }
        if !n.sessions.is_empty() {
            let _ = writeln!(out, "      sessions: {}", sample(&n.sessions));
        }
    }
    if !survey.missing.is_empty() {
        let _ = writeln!(out, "  plan nodes the cluster does not have: {}", survey.missing.join(", "));
    }
    if !survey.uncovered.is_empty() {
        let _ = writeln!(out, "  cluster nodes no batch covers: {}", sample(&survey.uncovered));
    }
    for conflict in &survey.role_conflicts {
        let _ = writeln!(out, "  role: {conflict}");
    }
    let (upgraded, skipped): (Vec<&AlreadyCordoned>, Vec<&AlreadyCordoned>) =
        survey.already_cordoned.iter().partition(|c| c.policy == AlreadyCordonedPolicy::Upgrade);
    let names = |nodes: &[&AlreadyCordoned]| nodes.iter().map(|c| c.node.clone()).collect::<Vec<_>>();
    if !upgraded.is_empty() {
        let _ = writeln!(out, "  cordoned already (upgraded, then left cordoned): {}", sample(&names(&upgraded)));
    }
    if !skipped.is_empty() {
        let _ = writeln!(out, "  cordoned already (skipped, left as they are): {}", sample(&names(&skipped)));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The hopeless budgets surveyed on each of ws01..ws03 for a plan that takes out ws01 and
    /// ws02 `lanes` at a time, with four `render` pods pinned to `pool: render` nodes (two
    /// on each of ws01 and ws02) under a budget that allows one disruption; ws03 is a
    /// render node when `third_render`.
    fn render_pool(lanes: usize, third_render: bool) -> Vec<Vec<String>> {
        let text = format!(
            "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: pool}}\nspec:\n  loadBalancer: {{mode: external}}\n  defaults:\n    upgrade: {{command: [true]}}\n    drain: {{ignoreDaemonSets: true}}\n  batches:\n    - {{name: render, role: workstation, nodes: [ws01, ws02], maxUnavailable: {lanes}}}\n    - {{name: rest, role: workstation, nodes: [ws03]}}\n"
        );
        let plan = crate::plan::check_str("pool.yaml", &text).plan.expect("the plan is valid");
        let planned = crate::planner::build(&plan).expect("it plans");
        let node =
            |name: &str, pool: &str| json!({"kind": "Node", "metadata": {"name": name, "labels": {"pool": pool}}});
        let pod = |name: &str, node: &str| {
            json!({"kind": "Pod", "metadata": {"name": name, "namespace": "app", "labels": {"app": "render"}},
                   "spec": {"nodeName": node, "nodeSelector": {"pool": "render"}},
                   "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        };
        let budget = json!({"kind": "PodDisruptionBudget", "metadata": {"name": "render", "namespace": "app", "generation": 1},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "render"}}},
            "status": {"observedGeneration": 1, "currentHealthy": 4, "desiredHealthy": 3, "expectedPods": 4, "disruptionsAllowed": 1}});
        let objects = [
            node("ws01", "render"),
            node("ws02", "render"),
            node("ws03", if third_render { "render" } else { "edit" }),
            pod("render-1", "ws01"),
            pod("render-2", "ws01"),
            pod("render-3", "ws02"),
            pod("render-4", "ws02"),
            budget,
        ];
        let inventory = crate::world::inventory::from_objects(&objects);
        survey(&plan, &planned, &inventory).nodes.into_iter().map(|n| n.hopeless_budgets).collect()
    }

    #[test]
    fn a_wave_that_takes_out_every_node_a_budget_s_pods_can_run_on_is_named_as_a_drain_that_will_halt() {
        let together = render_pool(2, false);
        assert_eq!(together[0].len(), 1, "{together:?}");
        assert_eq!(together[0], together[1], "both nodes of the wave name it");
        let entry = &together[0][0];
        assert!(entry.starts_with("app/render: wave 1 of batch `render` takes out ws01, ws02;"), "{entry}");
        assert!(entry.contains("only on ws01 (2), ws02 (2)") && entry.contains("it allows 1 disruption(s)"), "{entry}");
        assert!(together[2].is_empty(), "{together:?}");
        assert!(render_pool(1, false).iter().all(Vec::is_empty), "one at a time, the other render node takes them");
        assert!(render_pool(2, true).iter().all(Vec::is_empty), "ws03, in service, takes them");
    }

    #[test]
    fn a_crash_looping_pod_under_a_budget_short_of_healthy_pods_is_named_as_a_drain_that_will_halt() {
        let path = format!("{}/plans/external-lb.yaml", env!("CARGO_MANIFEST_DIR"));
        let plan = crate::plan::check_file(std::path::Path::new(&path)).plan.expect("the example plan is valid");
        let planned = crate::planner::build(&plan).expect("it plans");
        let node = planned.chains.last().map(|c| c.node.clone()).expect("a node");
        let pod = |name: &str, waiting: &str| {
            json!({"kind": "Pod", "metadata": {"name": name, "namespace": "app", "labels": {"app": "web"}},
                   "spec": {"nodeName": node},
                   "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                              "containerStatuses": [{"name": "web", "state": {"waiting": {"reason": waiting}}}]}})
        };
        let budget = json!({"kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": "app", "generation": 1},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"observedGeneration": 1, "currentHealthy": 0, "desiredHealthy": 1, "expectedPods": 2, "disruptionsAllowed": 0}});
        let first = planned.chains.first().map(|c| c.node.clone()).expect("a node");
        let objects = [
            json!({"kind": "Node", "metadata": {"name": node}}),
            json!({"kind": "Node", "metadata": {"name": first}}),
            pod("web-1", "CrashLoopBackOff"),
            pod("web-2", "ContainerCreating"),
            budget,
        ];
        let inventory = crate::world::inventory::from_objects(&objects);
        let survey = survey(&plan, &planned, &inventory);
        let surveyed = survey.nodes.iter().find(|n| n.node == node).expect("surveyed");
        assert_eq!(surveyed.blocking_budgets, ["app/web"]);
        assert_eq!(
            surveyed.hopeless_budgets,
            [
                "app/web: it holds app/web-1, which will not become Ready by waiting (container web is in CrashLoopBackOff), and it has 0 of the 1 healthy pod(s) it must keep, and under unhealthyPodEvictionPolicy IfHealthyBudget (the default) it lets no unhealthy pod go until it has them"
            ],
            "the pod merely starting is no reason: {:?}",
            surveyed.hopeless_budgets
        );
    }
}
