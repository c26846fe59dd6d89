//! Duration estimates and the critical path.
//!
//! The preview needs a number before anything has run, so each action gets a typical
//! duration (the table below; waits are bounded by the plan's own settings). `noderoll
//! rehearse` measures real ones; these only order and size the preview.

use std::time::Duration;

use petgraph::algo::toposort;
use petgraph::graph::NodeIndex;

use super::graph::{Action, StepGraph};
use crate::plan::Plan;
use crate::plan::resolved::Settings;

/// The typical duration of an action for a batch's settings.
pub fn typical(action: Action, settings: &Settings, dns_ttl: Option<u32>) -> Duration {
    let ttl = Duration::from_secs(u64::from(dns_ttl.unwrap_or(crate::plan::defaults::ASSUMED_TTL)));
    match action {
        Action::DnsWithdraw | Action::DnsRepoint | Action::DnsRestore => ttl + Duration::from_secs(5),
        Action::Cordon | Action::Uncordon | Action::BgpWithdraw | Action::BgpRestore => Duration::from_secs(1),
        Action::WaitSessions => settings.sessions.timeout.min(Duration::from_secs(30 * 60)),
        Action::Drain => settings.drain.timeout.min(Duration::from_secs(2 * 60)),
        Action::WaitL2Release => Duration::from_secs(10),
        Action::Upgrade => settings.upgrade.timeout.min(Duration::from_secs(10 * 60)),
        Action::WaitReady => settings.verify.ready_timeout.min(Duration::from_secs(3 * 60)),
        Action::Verify => Duration::from_secs(10),
        Action::Soak => settings.soak.map_or(Duration::ZERO, |s| s.duration),
        Action::Approve | Action::Window | Action::Quorum | Action::Health | Action::BatchStart | Action::BatchDone => {
            Duration::ZERO
        }
    }
}

/// The longest path through the graph by estimated duration.
#[derive(Debug, Clone)]
pub struct CriticalPath {
    /// Total estimated duration.
    pub duration: Duration,
    /// The steps on it, in order.
    pub steps: Vec<NodeIndex>,
}

/// The critical path by typical durations: what the preview shows.
pub fn critical_path(plan: &Plan, graph: &StepGraph) -> CriticalPath {
    let ttl = plan.load_balancer.dns.as_ref().and_then(|d| d.ttl);
    let by_name: std::collections::HashMap<&str, &Settings> =
        plan.batches.iter().map(|b| (b.name.as_str(), &b.settings)).collect();
    let mut cache: std::collections::HashMap<(&str, Action), Duration> = std::collections::HashMap::new();
    longest_path(graph, |i| {
        let step = graph.step(i);
        match step.batch.as_deref().and_then(|b| by_name.get(b).copied()) {
            Some(settings) => *cache
                .entry((step.batch.as_deref().unwrap_or(""), step.action))
                .or_insert_with(|| typical(step.action, settings, ttl)),
            None => Duration::ZERO,
        }
    })
}

/// The longest path through the graph when each step takes `duration_of` it, computed in
/// topological order; linear in steps plus edges. With measured durations (a rehearsal's)
/// it is the shortest makespan any scheduler could reach.
pub fn longest_path(graph: &StepGraph, mut duration_of: impl FnMut(NodeIndex) -> Duration) -> CriticalPath {
    let order = toposort(&graph.graph, None).unwrap_or_default();
    let n = graph.len();
    let mut finish = vec![Duration::ZERO; n];
    let mut via: Vec<Option<NodeIndex>> = vec![None; n];
    for &i in &order {
        let own = duration_of(i);
        let (start, from) = graph
            .predecessors(i)
            .into_iter()
            .map(|p| (finish[p.index()], Some(p)))
            .max_by_key(|(t, _)| *t)
            .unwrap_or((Duration::ZERO, None));
        finish[i.index()] = start + own;
        via[i.index()] = from;
    }
    let Some(mut at) = (0..n).max_by_key(|&i| finish[i]).map(NodeIndex::new) else {
        return CriticalPath { duration: Duration::ZERO, steps: Vec::new() };
    };
    let duration = finish[at.index()];
    let mut steps = vec![at];
    while let Some(prev) = via[at.index()] {
        steps.push(prev);
        at = prev;
    }
    steps.reverse();
    CriticalPath { duration, steps }
}
