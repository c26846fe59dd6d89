//! The step graph: what the planner produces and the executor consumes.

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

/// Every kind of step and gate, with the names the JSON contract uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Remove the node's record from a round-robin set.
    DnsWithdraw,
    /// Point a single record at another service node.
    DnsRepoint,
    /// Put the node's record back (or point the single record back at it).
    DnsRestore,
    /// Mark the node unschedulable.
    Cordon,
    /// Wait until no session pod is left on the node.
    WaitSessions,
    /// Evict the node's pods through the Eviction API.
    Drain,
    /// Remove the BGP policy's selector label from the node.
    BgpWithdraw,
    /// Put the BGP selector label back.
    BgpRestore,
    /// Wait until the node holds no Cilium L2 announcement Lease.
    WaitL2Release,
    /// Run the upgrade hook.
    Upgrade,
    /// Wait for a new boot ID and Ready.
    WaitReady,
    /// Check versions and run the verify hook.
    Verify,
    /// Wait for an operator's approval.
    Approve,
    /// Mark the node schedulable again.
    Uncordon,
    /// Wait a while with the node (a node step) or the batch's nodes (a gate) back, failing
    /// if one stops being Ready or the health gate's checks fail.
    Soak,
    /// Gate: the maintenance window is open.
    Window,
    /// Gate: etcd keeps quorum if the batch's nodes go.
    Quorum,
    /// Gate: the plan's health checks pass (previous batches Ready, no alert, command).
    Health,
    /// Gate: the batches this one runs after are done.
    BatchStart,
    /// Gate: every node of the batch is done.
    BatchDone,
}

impl Action {
    /// Every action, in chain order (gates last).
    pub const ALL: [Action; 20] = [
        Action::DnsWithdraw,
        Action::DnsRepoint,
        Action::DnsRestore,
        Action::Cordon,
        Action::WaitSessions,
        Action::Drain,
        Action::BgpWithdraw,
        Action::BgpRestore,
        Action::WaitL2Release,
        Action::Upgrade,
        Action::WaitReady,
        Action::Verify,
        Action::Approve,
        Action::Uncordon,
        Action::Soak,
        Action::Window,
        Action::Quorum,
        Action::Health,
        Action::BatchStart,
        Action::BatchDone,
    ];

    /// The action a name in an id or a command line stands for.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The name used in ids, JSON and renderings.
    pub fn name(self) -> &'static str {
        match self {
            Action::DnsWithdraw => "dns-withdraw",
            Action::DnsRepoint => "dns-repoint",
            Action::DnsRestore => "dns-restore",
            Action::Cordon => "cordon",
            Action::WaitSessions => "wait-sessions",
            Action::Drain => "drain",
            Action::BgpWithdraw => "bgp-withdraw",
            Action::BgpRestore => "bgp-restore",
            Action::WaitL2Release => "wait-l2-release",
            Action::Upgrade => "upgrade",
            Action::WaitReady => "wait-ready",
            Action::Verify => "verify",
            Action::Approve => "approve",
            Action::Uncordon => "uncordon",
            Action::Soak => "soak",
            Action::Window => "window",
            Action::Quorum => "quorum",
            Action::Health => "health",
            Action::BatchStart => "batch-start",
            Action::BatchDone => "batch-done",
        }
    }

    /// The steps that change the ServiceLB record (and wait for an operator with the manual
    /// provider).
    pub fn is_dns(self) -> bool {
        matches!(self, Action::DnsWithdraw | Action::DnsRepoint | Action::DnsRestore)
    }

    /// Gates belong to a batch, not to a node.
    pub fn is_gate(self) -> bool {
        matches!(self, Action::Window | Action::Quorum | Action::Health | Action::BatchStart | Action::BatchDone)
    }
}

/// The id of a node's step: `NODE/ACTION`.
pub fn node_step_id(node: &str, action: Action) -> String {
    format!("{node}/{}", action.name())
}

/// A step id read back (from a journal, a command line): whose step it is and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRef<'a> {
    /// `NODE/ACTION`.
    Node {
        /// The node.
        node: &'a str,
        /// The action.
        action: Action,
    },
    /// `batch/BATCH/ACTION`.
    Gate {
        /// The batch.
        batch: &'a str,
        /// The gate.
        action: Action,
    },
}

impl<'a> StepRef<'a> {
    /// Reads an id as the planner writes them; `None` for anything else. Node names are DNS
    /// names and cannot hold `/`, so `batch/...` is never a node's step.
    pub fn parse(id: &'a str) -> Option<StepRef<'a>> {
        let (owner, name) = id.rsplit_once('/')?;
        let action = Action::from_name(name)?;
        match owner.strip_prefix("batch/") {
            Some(batch) if action.is_gate() => Some(StepRef::Gate { batch, action }),
            None if !action.is_gate() && !owner.is_empty() && !owner.contains('/') => {
                Some(StepRef::Node { node: owner, action })
            }
            _ => None,
        }
    }

    /// The node, for a node's step.
    pub fn node(self) -> Option<&'a str> {
        match self {
            StepRef::Node { node, .. } => Some(node),
            StepRef::Gate { .. } => None,
        }
    }
}

/// How a DNS step changes the ServiceLB record. The planner decides it from the plan's
/// strategy once; the executor and the preview do what the step says instead of asking the
/// strategy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordChange {
    /// Take the node's address out of the round-robin set.
    Withdraw,
    /// Point the single record at the step's `target` while the node is away.
    Repoint,
    /// Put the node's address back into the round-robin set.
    Rejoin,
    /// Point the single record back at the node.
    PointBack,
}

/// One step or gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Unique id: `NODE/ACTION` for node steps, `batch/BATCH/ACTION` for gates.
    pub id: String,
    /// The node, for node steps.
    pub node: Option<String>,
    /// The batch the step belongs to.
    pub batch: Option<String>,
    /// What the step does.
    pub action: Action,
    /// For `dns-repoint`: the service node the record is pointed at meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For the DNS steps: the change they make (the JSON contract names it by the action).
    #[serde(skip)]
    pub record: Option<RecordChange>,
}

/// A DAG of steps; an edge `a → b` means `b` starts only after `a` finished.
#[derive(Debug, Clone, Default)]
pub struct StepGraph {
    pub(crate) graph: DiGraph<Step, ()>,
}

impl StepGraph {
    /// Steps in insertion order, which is batch order, then node order, then chain order.
    pub fn steps(&self) -> impl Iterator<Item = (NodeIndex, &Step)> {
        self.graph.node_indices().map(|i| (i, &self.graph[i]))
    }

    /// The number of steps and gates.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether there is no step at all.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// The step at an index.
    pub fn step(&self, index: NodeIndex) -> &Step {
        &self.graph[index]
    }

    /// Direct predecessors of a step, in a stable order.
    pub fn predecessors(&self, index: NodeIndex) -> Vec<NodeIndex> {
        let mut p: Vec<NodeIndex> = self.graph.neighbors_directed(index, Direction::Incoming).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Direct successors of a step, in a stable order.
    pub fn successors(&self, index: NodeIndex) -> Vec<NodeIndex> {
        let mut s: Vec<NodeIndex> = self.graph.neighbors_directed(index, Direction::Outgoing).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The number of dependency edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    pub(crate) fn add(&mut self, step: Step) -> NodeIndex {
        self.graph.add_node(step)
    }

    pub(crate) fn depend(&mut self, before: NodeIndex, after: NodeIndex) {
        self.graph.update_edge(before, after, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_name_reads_back() {
        for action in Action::ALL {
            assert_eq!(Action::from_name(action.name()), Some(action));
        }
        assert_eq!(Action::from_name("reboot"), None);
    }

    #[test]
    fn step_ids_parse_as_the_planner_writes_them() {
        assert_eq!(StepRef::parse("ws01/uncordon"), Some(StepRef::Node { node: "ws01", action: Action::Uncordon }));
        assert_eq!(
            StepRef::parse("batch/pool-a/batch-done"),
            Some(StepRef::Gate { batch: "pool-a", action: Action::BatchDone })
        );
        for bad in ["ws01", "ws01/reboot", "ws01/batch-done", "batch/pool-a/drain", "/drain", "a/b/drain"] {
            assert_eq!(StepRef::parse(bad), None, "{bad}");
        }
    }
}
