//! From a validated plan to a step graph. Pure: no I/O, no clock.
//!
//! Concurrency limits are edges, so they can be proven from the graph alone:
//! - within a batch of `m = maxUnavailable`, node `k` starts only after node `k - m` is done.
//!   The batch is thus `m` sequential lanes and at most `m` of its nodes are out of service at
//!   once. A "wave" in the preview is the k-th node of every lane.
//! - across the whole plan, service nodes in batch order form `q` lanes the same way, where
//!   `q = floor((n - 1) / 2)` for `n` etcd members (and at most `s - 1` for a round-robin
//!   record set of `s` service nodes, so it is never emptied).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::NodeIndex;

use super::PlannerError;
use super::graph::{Action, RecordChange, Step, StepGraph, node_step_id};
use crate::plan::model::{DnsStrategy, LoadBalancerMode, Role, SoakScope, UncordonPolicy};
use crate::plan::resolved::{BatchPlan, Members, Plan, etcd_fault_tolerance};

/// The steps of one node, in order, and where its chain starts and ends.
#[derive(Debug, Clone)]
pub struct NodeChain {
    /// The node.
    pub node: String,
    /// Index of its batch in the plan.
    pub batch: usize,
    /// Its steps in chain order.
    pub steps: Vec<NodeIndex>,
}

impl NodeChain {
    /// The first step (taking the node out of service).
    pub fn first(&self) -> NodeIndex {
        self.steps[0]
    }

    /// The last step (the node is back in service).
    pub fn last(&self) -> NodeIndex {
        self.steps[self.steps.len() - 1]
    }
}

/// The planner's output: the graph plus the structure the renderings need.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The step graph.
    pub graph: StepGraph,
    /// Nodes of each batch, in plan order, as lanes × waves are derived from.
    pub batches: Vec<PlannedBatch>,
    /// Every node's chain, in plan order.
    pub chains: Vec<NodeChain>,
    /// How many etcd members may be out of service at once, and why.
    pub quorum: QuorumBudget,
    /// For single-record DNS: the node the record is assumed to point at, and its stand-in.
    pub record_target: Option<(String, String)>,
}

/// A batch with its resolved nodes.
#[derive(Debug, Clone)]
pub struct PlannedBatch {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Nodes in plan order.
    pub nodes: Vec<String>,
    /// Resolved maxUnavailable (lanes).
    pub lanes: usize,
    /// Resolved maxFailures: nodes that may fail before the rollout halts.
    pub max_failures: usize,
    /// Names of the batches it waits for.
    pub after: Vec<String>,
    /// For a selector batch planned without a cluster ([`build_symbolic`]): the selector and
    /// its limits as written, since its nodes are unknown. Its `nodes` then hold one stand-in
    /// ([`stand_in`]) so its step chain can be shown.
    pub symbolic: Option<SymbolicMembers>,
}

/// A selector batch whose nodes are not known yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SymbolicMembers {
    /// The selector, as written.
    pub selector: String,
    /// `maxUnavailable` as written (`2`, `25%`).
    pub max_unavailable: String,
    /// `maxFailures` as written.
    pub max_failures: String,
}

/// The stand-in node of a symbolic batch: `<BATCH>`, which no Kubernetes node can be
/// named, so it is never mistaken for one.
pub fn stand_in(batch: &str) -> String {
    format!("<{batch}>")
}

impl Planned {
    /// Whether some batch is symbolic, so the node count, the estimate and the windows are
    /// lower bounds, and the graph must not be run.
    pub fn is_symbolic(&self) -> bool {
        self.batches.iter().any(|b| b.symbolic.is_some())
    }

    /// The symbolic members of the batch `name`, when it is symbolic.
    pub fn symbolic_batch(&self, name: &str) -> Option<&SymbolicMembers> {
        self.batches.iter().find(|b| b.name == name).and_then(|b| b.symbolic.as_ref())
    }
}

impl PlannedBatch {
    /// Its waves, as the preview prints them: the k-th node of every lane, `lanes` nodes
    /// taken out together.
    pub fn waves(&self) -> std::slice::Chunks<'_, String> {
        self.nodes.chunks(self.lanes.max(1))
    }
}

/// The service-node concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumBudget {
    /// etcd members counted.
    pub members: usize,
    /// Where the count came from.
    pub source: MemberSource,
    /// Service nodes that may be out of service at once.
    pub limit: usize,
}

/// Where the etcd member count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberSource {
    /// `quorum.etcd.endpoints`.
    EtcdEndpoints,
    /// The service nodes of the plan.
    ServiceNodes,
}

/// What the cluster holds, as far as planning cares: nodes with their labels (to resolve
/// selector batches), and pods and disruption budgets (for the preview's survey).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Node name → labels.
    pub nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// Nodes cordoned now (`spec.unschedulable`).
    pub cordoned: BTreeSet<String>,
    /// The taints that keep pods off a node ([`super::placement::blocking_taints`]), for
    /// the nodes that have any.
    pub taints: BTreeMap<String, Vec<super::placement::Taint>>,
    /// Pods bound to a node.
    pub pods: Vec<PodFacts>,
    /// PodDisruptionBudgets.
    pub budgets: Vec<BudgetFacts>,
    /// Cilium's BGP and L2 announcement policies, read for `init` only: which nodes its
    /// load balancing runs on names the plan's `loadBalancer.mode`.
    pub cilium_policies: Vec<CiliumPolicy>,
}

/// A Cilium object that selects the nodes it announces services from.
#[derive(Debug, Clone)]
pub struct CiliumPolicy {
    /// `CiliumBGPClusterConfig`, `CiliumBGPPeeringPolicy` or `CiliumL2AnnouncementPolicy`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `spec.nodeSelector`, a `LabelSelector` (null when absent: every node).
    pub node_selector: serde_json::Value,
}

/// What the drain needs to know of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotation keys.
    pub annotations: BTreeSet<String>,
    /// Controlled by a DaemonSet.
    pub daemon_set: bool,
    /// A static (mirror) pod.
    pub mirror: bool,
    /// Why it is unhealthy and will not become healthy by waiting
    /// ([`super::budget::stuck_unhealthy`]).
    pub stuck: Option<String>,
    /// Succeeded or Failed.
    pub terminal: bool,
    /// Its Ready condition is True.
    pub ready: bool,
    /// The nodes it (and so its replacement) could run on.
    pub placement: super::placement::Placement,
}

/// A PodDisruptionBudget's selector and what it allows now.
#[derive(Debug, Clone)]
pub struct BudgetFacts {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.selector` as JSON.
    pub selector: serde_json::Value,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i64,
    /// Why it can never allow an eviction, when it cannot ([`super::budget::never_allows`]).
    pub never: Option<String>,
    /// Why it lets no unhealthy pod go now ([`super::budget::holds_unhealthy`]).
    pub holds_unhealthy: Option<String>,
}

/// Where selector batches get their nodes from.
#[derive(Debug, Clone, Copy)]
enum Resolve<'a> {
    /// From this inventory.
    Cluster(&'a Inventory),
    /// Nowhere: a selector batch is an error.
    Refuse,
    /// Nowhere: a selector workstation batch is planned as one stand-in node.
    Symbolic,
}

/// Builds the step graph of a plan whose batches all list their nodes.
pub fn build(plan: &Plan) -> Result<Planned, PlannerError> {
    build_with(plan, None)
}

/// Builds the step graph for review without a cluster: a selector workstation batch
/// becomes a symbolic set with one stand-in node ([`PlannedBatch::symbolic`]). A selector
/// service batch is still an error, since its nodes decide the quorum budget and the DNS
/// changes. For `preview` only: such a graph names no real node of the batch.
pub fn build_symbolic(plan: &Plan) -> Result<Planned, PlannerError> {
    build_resolved(plan, Resolve::Symbolic)
}

/// Builds the step graph for the cluster `inventory` lists, which must hold every node the
/// plan names: what a rollout runs.
pub fn build_for_cluster(plan: &Plan, inventory: &Inventory) -> Result<Planned, PlannerError> {
    let planned = build_with(plan, Some(inventory))?;
    let missing: Vec<String> =
        planned.chains.iter().filter(|c| !inventory.nodes.contains_key(&c.node)).map(|c| c.node.clone()).collect();
    if !missing.is_empty() {
        return Err(PlannerError::MissingNodes { nodes: missing });
    }
    Ok(planned)
}

/// Builds the step graph, resolving selector batches against `inventory` when given.
pub fn build_with(plan: &Plan, inventory: Option<&Inventory>) -> Result<Planned, PlannerError> {
    build_resolved(plan, inventory.map_or(Resolve::Refuse, Resolve::Cluster))
}

fn build_resolved(plan: &Plan, resolve: Resolve<'_>) -> Result<Planned, PlannerError> {
    let batches = resolve_batches(plan, resolve)?;
    let order = batch_order(plan);
    let service_nodes: Vec<(usize, &String)> = order
        .iter()
        .filter(|&&b| batches[b].role == Role::Service)
        .flat_map(|&b| batches[b].nodes.iter().map(move |n| (b, n)))
        .collect();
    let quorum = quorum_budget(plan, service_nodes.len())?;
    let single_record = plan.load_balancer.dns.as_ref().is_some_and(|d| d.strategy == DnsStrategy::SingleRecord);
    let record_target = match (single_record, service_nodes.as_slice()) {
        (true, [(_, first), (_, second), ..]) => Some(((*first).clone(), (*second).clone())),
        _ => None,
    };

    let mut graph = StepGraph::default();
    let mut chains: Vec<NodeChain> = Vec::new();
    let mut chain_of: HashMap<&str, usize> = HashMap::new();
    let mut starts = Vec::with_capacity(batches.len());
    let mut dones = Vec::with_capacity(batches.len());
    for (b, batch) in batches.iter().enumerate() {
        let gate = |graph: &mut StepGraph, action: Action| {
            graph.add(Step {
                id: format!("batch/{}/{}", batch.name, action.name()),
                node: None,
                batch: Some(batch.name.clone()),
                action,
                target: None,
                record: None,
            })
        };
        let start = gate(&mut graph, Action::BatchStart);
        let mut head = start;
        if plan.window.is_some() {
            let window = gate(&mut graph, Action::Window);
            graph.depend(head, window);
            head = window;
        }
        if plan.health.is_some() {
            let health = gate(&mut graph, Action::Health);
            graph.depend(head, health);
            head = health;
        }
        if batch.role == Role::Service {
            let quorum_gate = gate(&mut graph, Action::Quorum);
            graph.depend(head, quorum_gate);
            head = quorum_gate;
        }
        let first_chain = chains.len();
        for (k, node) in batch.nodes.iter().enumerate() {
            let repoint_to = record_target.as_ref().filter(|(t, _)| t == node).map(|(_, r)| r.clone());
            let actions = chain_actions(plan, &plan.batches[b], repoint_to.is_some());
            let steps: Vec<NodeIndex> = actions
                .iter()
                .map(|&action| {
                    graph.add(Step {
                        id: node_step_id(node, action),
                        node: Some(node.clone()),
                        batch: Some(batch.name.clone()),
                        action,
                        target: (action == Action::DnsRepoint).then(|| repoint_to.clone()).flatten(),
                        record: record_change(action, single_record),
                    })
                })
                .collect();
            for pair in steps.windows(2) {
                graph.depend(pair[0], pair[1]);
            }
            graph.depend(head, steps[0]);
            if k >= batch.lanes {
                let ahead = &chains[first_chain + k - batch.lanes];
                graph.depend(ahead.last(), steps[0]);
            }
            chain_of.insert(node, chains.len());
            chains.push(NodeChain { node: node.clone(), batch: b, steps });
        }
        // A batch soak waits for every node of the batch, so the batches after it start
        // only once all of them have been healthy for the soak's time.
        let soaks_batch = plan.batches[b].settings.soak.is_some_and(|s| s.per == SoakScope::Batch);
        let done = gate(&mut graph, Action::BatchDone);
        let tail = if soaks_batch {
            let soak = gate(&mut graph, Action::Soak);
            graph.depend(soak, done);
            soak
        } else {
            done
        };
        for chain in &chains[first_chain..] {
            graph.depend(chain.last(), tail);
        }
        if batch.nodes.is_empty() {
            graph.depend(head, tail);
        }
        starts.push(start);
        dones.push(done);
    }
    for (b, batch) in plan.batches.iter().enumerate() {
        for &a in &batch.after {
            graph.depend(dones[a], starts[b]);
        }
    }
    for k in quorum.limit..service_nodes.len() {
        let ahead = &chains[chain_of[service_nodes[k - quorum.limit].1.as_str()]];
        let this = &chains[chain_of[service_nodes[k].1.as_str()]];
        graph.depend(ahead.last(), this.first());
    }
    if let Some((target, stand_in)) = &record_target {
        // The stand-in serves the record while the target is away, so it must not be away at
        // the same time; the target comes first in service order.
        let target = &chains[chain_of[target.as_str()]];
        let stand_in = &chains[chain_of[stand_in.as_str()]];
        graph.depend(target.last(), stand_in.first());
    }
    Ok(Planned { graph, batches, chains, quorum, record_target })
}

/// Every batch's nodes. A selector takes the inventory's matching nodes in name order,
/// except nodes another batch lists by name or selects first: a node is upgraded once.
fn resolve_batches(plan: &Plan, resolve: Resolve<'_>) -> Result<Vec<PlannedBatch>, PlannerError> {
    let mut claimed: HashMap<String, String> = HashMap::new();
    for b in &plan.batches {
        if let Members::Nodes(nodes) = &b.members {
            claimed.extend(nodes.iter().map(|n| (n.clone(), b.name.clone())));
        }
    }
    plan.batches
        .iter()
        .map(|b: &BatchPlan| {
            let mut symbolic = None;
            let nodes = match (&b.members, resolve) {
                (Members::Nodes(nodes), _) => nodes.clone(),
                (Members::Selector(selector), Resolve::Symbolic) if b.role == Role::Workstation => {
                    symbolic = Some(SymbolicMembers {
                        selector: selector.to_string(),
                        max_unavailable: b.max_unavailable.written(),
                        max_failures: b.max_failures.written(),
                    });
                    vec![stand_in(&b.name)]
                }
                (Members::Selector(selector), Resolve::Symbolic) => {
                    return Err(PlannerError::UnresolvedServiceSelector {
                        batch: b.name.clone(),
                        selector: selector.to_string(),
                    });
                }
                (Members::Selector(selector), Resolve::Refuse) => {
                    return Err(PlannerError::UnresolvedSelector {
                        batch: b.name.clone(),
                        selector: selector.to_string(),
                    });
                }
                (Members::Selector(selector), Resolve::Cluster(inventory)) => {
                    let mut nodes = Vec::new();
                    for (name, labels) in &inventory.nodes {
                        if !selector.matches(labels) {
                            continue;
                        }
                        if let Some(other) = claimed.get(name) {
                            return Err(PlannerError::NodeInTwoBatches {
                                node: name.clone(),
                                first: other.clone(),
                                second: b.name.clone(),
                            });
                        }
                        nodes.push(name.clone());
                    }
                    claimed.extend(nodes.iter().map(|n| (n.clone(), b.name.clone())));
                    nodes
                }
            };
            let (lanes, max_failures) = match symbolic {
                Some(_) => (1, 0),
                None => (b.max_unavailable.lanes(nodes.len()), b.max_failures.of(nodes.len())),
            };
            Ok(PlannedBatch {
                name: b.name.clone(),
                role: b.role,
                lanes,
                max_failures,
                nodes,
                after: b.after.iter().map(|&a| plan.batches[a].name.clone()).collect(),
                symbolic,
            })
        })
        .collect()
}

/// Batches in an order that respects `after` (validation has ruled out cycles), preferring
/// plan order.
fn batch_order(plan: &Plan) -> Vec<usize> {
    let n = plan.batches.len();
    let mut waiting: Vec<usize> = plan.batches.iter().map(|b| b.after.len()).collect();
    let mut ready: BTreeSet<usize> = (0..n).filter(|&b| waiting[b] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(b) = ready.pop_first() {
        order.push(b);
        for (c, batch) in plan.batches.iter().enumerate() {
            if batch.after.contains(&b) {
                waiting[c] -= 1;
                if waiting[c] == 0 {
                    ready.insert(c);
                }
            }
        }
    }
    order
}

fn quorum_budget(plan: &Plan, service_nodes: usize) -> Result<QuorumBudget, PlannerError> {
    let (members, source) = match &plan.quorum.etcd {
        Some(etcd) if !etcd.endpoints.is_empty() => (etcd.endpoints.len(), MemberSource::EtcdEndpoints),
        _ => (service_nodes, MemberSource::ServiceNodes),
    };
    let mut limit = etcd_fault_tolerance(members);
    let round_robin = plan.load_balancer.dns.as_ref().is_some_and(|d| d.strategy == DnsStrategy::RoundRobin);
    if round_robin {
        limit = limit.min(service_nodes.saturating_sub(1));
    }
    if service_nodes > 0 && limit == 0 {
        return Err(PlannerError::NoQuorumBudget { members, service_nodes });
    }
    Ok(QuorumBudget { members, source, limit: limit.max(1) })
}

/// What a DNS action does to the record under the plan's strategy.
fn record_change(action: Action, single_record: bool) -> Option<RecordChange> {
    match action {
        Action::DnsWithdraw => Some(RecordChange::Withdraw),
        Action::DnsRepoint => Some(RecordChange::Repoint),
        Action::DnsRestore if single_record => Some(RecordChange::PointBack),
        Action::DnsRestore => Some(RecordChange::Rejoin),
        _ => None,
    }
}

/// The chain of one node, from the runbook.
fn chain_actions(plan: &Plan, batch: &BatchPlan, record_target: bool) -> Vec<Action> {
    let mode = plan.load_balancer.mode;
    let dns = plan.load_balancer.dns.as_ref();
    let service = batch.role == Role::Service;
    let mut actions = Vec::with_capacity(12);
    let dns_steps = match (mode, dns, service) {
        (LoadBalancerMode::Servicelb, Some(d), true) => match d.strategy {
            DnsStrategy::RoundRobin => Some(Action::DnsWithdraw),
            DnsStrategy::SingleRecord if record_target => Some(Action::DnsRepoint),
            DnsStrategy::SingleRecord => None,
        },
        _ => None,
    };
    actions.extend(dns_steps);
    actions.push(Action::Cordon);
    if batch.role == Role::Workstation {
        actions.push(Action::WaitSessions);
    }
    actions.push(Action::Drain);
    match mode {
        LoadBalancerMode::CiliumBgp => actions.push(Action::BgpWithdraw),
        LoadBalancerMode::CiliumL2 => actions.push(Action::WaitL2Release),
        LoadBalancerMode::Servicelb | LoadBalancerMode::External => {}
    }
    actions.extend([Action::Upgrade, Action::WaitReady, Action::Verify]);
    if batch.settings.uncordon == UncordonPolicy::Approve {
        actions.push(Action::Approve);
    }
    actions.push(Action::Uncordon);
    if mode == LoadBalancerMode::CiliumBgp {
        actions.push(Action::BgpRestore);
    }
    if dns_steps.is_some() {
        actions.push(Action::DnsRestore);
    }
    if batch.settings.soak.is_some_and(|s| s.per == SoakScope::Node) {
        actions.push(Action::Soak);
    }
    actions
}
