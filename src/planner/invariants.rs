//! An independent check of a step graph against the plan's safety invariants.
//!
//! It does not reuse the builder's reasoning: it looks only at the graph's steps and edges.
//! Two nodes can be out of service at the same time unless a path orders one's return before
//! the other's departure; "finished before" is a partial order, so the largest set of nodes
//! that can be out at once is its largest antichain, which Dilworth's theorem gives as
//! `n - maximum matching` of the comparability graph.

use std::collections::{HashMap, HashSet};

use petgraph::algo::is_cyclic_directed;
use petgraph::graph::NodeIndex;
use petgraph::visit::{Bfs, Walker};

use super::graph::{Action, RecordChange, StepGraph};
use crate::plan::Plan;
use crate::plan::model::{DnsStrategy, LoadBalancerMode, Role, SoakScope, UncordonPolicy};
use crate::plan::resolved::Members;

/// Every violated invariant, described; empty when the graph is safe.
pub fn violations(plan: &Plan, graph: &StepGraph) -> Vec<String> {
    let mut out = Vec::new();
    if is_cyclic_directed(&graph.graph) {
        out.push("the graph has a cycle".to_owned());
        return out;
    }
    let mut ids = HashSet::new();
    for (_, step) in graph.steps() {
        if !ids.insert(step.id.as_str()) {
            out.push(format!("id `{}` is used twice", step.id));
        }
    }
    let single_record = plan.load_balancer.dns.as_ref().is_some_and(|d| d.strategy == DnsStrategy::SingleRecord);
    for (_, step) in graph.steps() {
        let wanted = match step.action {
            Action::DnsWithdraw if !single_record => Some(RecordChange::Withdraw),
            Action::DnsRepoint if single_record => Some(RecordChange::Repoint),
            Action::DnsRestore if single_record => Some(RecordChange::PointBack),
            Action::DnsRestore => Some(RecordChange::Rejoin),
            _ => None,
        };
        if step.record != wanted {
            out.push(format!(
                "step `{}` changes the record as {:?}, the plan's strategy calls for {wanted:?}",
                step.id, step.record
            ));
        }
    }
    let mut by_node: HashMap<&str, HashMap<Action, Vec<NodeIndex>>> = HashMap::new();
    for (i, step) in graph.steps() {
        if let Some(node) = &step.node {
            by_node.entry(node).or_default().entry(step.action).or_default().push(i);
        }
    }
    let mut service = Vec::new();
    for batch in &plan.batches {
        let Members::Nodes(nodes) = &batch.members else { continue };
        let mut intervals = Vec::new();
        for node in nodes {
            let Some(steps) = by_node.get(node.as_str()) else {
                out.push(format!("node `{node}` has no steps"));
                continue;
            };
            let expected = expected_actions(plan, batch);
            for action in &expected {
                match steps.get(action).map_or(0, Vec::len) {
                    1 => {}
                    n => out.push(format!("node `{node}` has {n} `{}` steps, expected 1", action.name())),
                }
            }
            for (action, list) in steps {
                if !expected.contains(action) && !matches!(action, Action::DnsRepoint | Action::DnsRestore) {
                    out.push(format!("node `{node}` has an unexpected `{}` step ({})", action.name(), list.len()));
                }
            }
            let one = |a: Action| steps.get(&a).and_then(|v| v.first()).copied();
            let ordered: Vec<NodeIndex> = expected.iter().filter_map(|a| one(*a)).collect();
            for pair in ordered.windows(2) {
                if !reaches(graph, pair[0], pair[1]) {
                    out.push(format!(
                        "node `{node}`: `{}` does not come before `{}`",
                        graph.step(pair[0]).action.name(),
                        graph.step(pair[1]).action.name()
                    ));
                }
            }
            if let (Some(cordon), Some(uncordon)) = (one(Action::Cordon), one(Action::Uncordon)) {
                intervals.push(Interval { node: node.clone(), start: cordon, end: uncordon });
            }
        }
        let limit = batch.max_unavailable.lanes(nodes.len());
        let at_once = max_concurrent(graph, &intervals);
        if at_once > limit {
            out.push(format!(
                "batch `{}` can have {at_once} nodes out of service at once, maxUnavailable is {limit}",
                batch.name
            ));
        }
        if batch.settings.soak.is_some_and(|s| s.per == SoakScope::Batch) {
            out.extend(batch_soak_violations(graph, &batch.name, &intervals));
        }
        if batch.role == Role::Service {
            service.extend(intervals);
        }
    }
    let members = plan.quorum.etcd.as_ref().map_or(service.len(), |e| e.endpoints.len());
    let budget = members.saturating_sub(1) / 2;
    let at_once = max_concurrent(graph, &service);
    if !service.is_empty() && at_once > budget {
        out.push(format!("{at_once} etcd members can be out of service at once; {members} members allow {budget}"));
    }
    if let Some(dns) = &plan.load_balancer.dns {
        out.extend(dns_violations(graph, &by_node, &service, dns.strategy));
    }
    out
}

/// A batch soak must come after every node of the batch is back, and before the batch
/// counts as done.
fn batch_soak_violations(graph: &StepGraph, batch: &str, intervals: &[Interval]) -> Vec<String> {
    let gate = |action: Action| {
        let id = format!("batch/{batch}/{}", action.name());
        graph.steps().find(|(_, s)| s.id == id).map(|(i, _)| i)
    };
    let (Some(soak), Some(done)) = (gate(Action::Soak), gate(Action::BatchDone)) else {
        return vec![format!("batch `{batch}` soaks per batch but has no soak gate before its batch-done")];
    };
    let mut out = Vec::new();
    if !reaches(graph, soak, done) {
        out.push(format!("batch `{batch}`'s soak does not come before its batch-done"));
    }
    for i in intervals.iter().filter(|i| !reaches(graph, i.end, soak)) {
        out.push(format!("batch `{batch}`'s soak can start before `{}` is back", i.node));
    }
    out
}

fn dns_violations(
    graph: &StepGraph,
    by_node: &HashMap<&str, HashMap<Action, Vec<NodeIndex>>>,
    service: &[Interval],
    strategy: DnsStrategy,
) -> Vec<String> {
    let mut out = Vec::new();
    let step = |node: &str, a: Action| by_node.get(node).and_then(|s| s.get(&a)).and_then(|v| v.first()).copied();
    match strategy {
        DnsStrategy::RoundRobin => {
            let withdrawn: Vec<Interval> = service
                .iter()
                .filter_map(|s| {
                    let start = step(&s.node, Action::DnsWithdraw);
                    let end = step(&s.node, Action::DnsRestore);
                    if start.is_none() || end.is_none() {
                        out.push(format!("service node `{}` lacks dns-withdraw or dns-restore", s.node));
                    }
                    Some(Interval { node: s.node.clone(), start: start?, end: end? })
                })
                .collect();
            for w in &withdrawn {
                let s = service.iter().find(|s| s.node == w.node).map(|s| (s.start, s.end));
                if let Some((cordon, uncordon)) = s
                    && !(reaches(graph, w.start, cordon) && reaches(graph, uncordon, w.end))
                {
                    out.push(format!("node `{}`: its record is not withdrawn for all the time it is cordoned", w.node));
                }
            }
            if !withdrawn.is_empty() && max_concurrent(graph, &withdrawn) >= withdrawn.len() {
                out.push("every record of the round-robin set can be withdrawn at once".to_owned());
            }
        }
        DnsStrategy::SingleRecord => {
            let repoints: Vec<NodeIndex> =
                by_node.values().filter_map(|s| s.get(&Action::DnsRepoint)).flatten().copied().collect();
            if repoints.len() != 1 {
                out.push(format!("single-record DNS has {} dns-repoint steps, expected 1", repoints.len()));
            }
            for r in repoints {
                let s = graph.step(r);
                let (Some(node), Some(target)) = (&s.node, &s.target) else {
                    out.push(format!("`{}` names no target", s.id));
                    continue;
                };
                let find = |n: &str| service.iter().find(|i| i.node == n);
                match (find(node), find(target)) {
                    (Some(a), Some(b)) if node != target => {
                        if max_concurrent(graph, &[a.clone(), b.clone()]) > 1 {
                            out.push(format!("the record moves from `{node}` to `{target}`, which can be out of service at the same time"));
                        }
                    }
                    _ => out.push(format!(
                        "the record moves from `{node}` to `{target}`, which is not another service node"
                    )),
                }
            }
        }
    }
    out
}

/// What a node's chain must contain, in order, judged from the plan alone.
fn expected_actions(plan: &Plan, batch: &crate::plan::resolved::BatchPlan) -> Vec<Action> {
    let (role, uncordon) = (batch.role, batch.settings.uncordon);
    let mode = plan.load_balancer.mode;
    let round_robin = plan.load_balancer.dns.as_ref().is_some_and(|d| d.strategy == DnsStrategy::RoundRobin);
    let withdraws = role == Role::Service && mode == LoadBalancerMode::Servicelb && round_robin;
    let mut a = Vec::new();
    if withdraws {
        a.push(Action::DnsWithdraw);
    }
    a.push(Action::Cordon);
    if role == Role::Workstation {
        a.push(Action::WaitSessions);
    }
    a.push(Action::Drain);
    match mode {
        LoadBalancerMode::CiliumBgp => a.push(Action::BgpWithdraw),
        LoadBalancerMode::CiliumL2 => a.push(Action::WaitL2Release),
        _ => {}
    }
    a.extend([Action::Upgrade, Action::WaitReady, Action::Verify]);
    if uncordon == UncordonPolicy::Approve {
        a.push(Action::Approve);
    }
    a.push(Action::Uncordon);
    if mode == LoadBalancerMode::CiliumBgp {
        a.push(Action::BgpRestore);
    }
    if withdraws {
        a.push(Action::DnsRestore);
    }
    if batch.settings.soak.is_some_and(|s| s.per == SoakScope::Node) {
        a.push(Action::Soak);
    }
    a
}

/// A node's time out of service, as the steps that open and close it.
#[derive(Debug, Clone)]
struct Interval {
    node: String,
    start: NodeIndex,
    end: NodeIndex,
}

fn reaches(graph: &StepGraph, from: NodeIndex, to: NodeIndex) -> bool {
    from == to || Bfs::new(&graph.graph, from).iter(&graph.graph).any(|n| n == to)
}

/// The largest number of intervals that can be open at once: the largest antichain of the
/// "ends before the other starts" order, by Dilworth (intervals − maximum matching).
fn max_concurrent(graph: &StepGraph, intervals: &[Interval]) -> usize {
    let n = intervals.len();
    let reachable: Vec<HashSet<NodeIndex>> =
        intervals.iter().map(|i| Bfs::new(&graph.graph, i.end).iter(&graph.graph).collect()).collect();
    let before: Vec<Vec<usize>> =
        (0..n).map(|a| (0..n).filter(|&b| a != b && reachable[a].contains(&intervals[b].start)).collect()).collect();
    let mut matched_to: Vec<Option<usize>> = vec![None; n];
    let mut matching = 0;
    for a in 0..n {
        let mut seen = vec![false; n];
        if augment(a, &before, &mut matched_to, &mut seen) {
            matching += 1;
        }
    }
    n - matching
}

/// Kuhn's augmenting path for bipartite matching.
fn augment(a: usize, before: &[Vec<usize>], matched_to: &mut [Option<usize>], seen: &mut [bool]) -> bool {
    for &b in &before[a] {
        if seen[b] {
            continue;
        }
        seen[b] = true;
        if matched_to[b].is_none_or(|other| augment(other, before, matched_to, seen)) {
            matched_to[b] = Some(a);
            return true;
        }
    }
    false
}
