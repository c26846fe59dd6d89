//! What the run loop knows about the graph as it goes: which steps are done, launched or
//! still waiting on predecessors, which nodes have begun, what failed. Pure state with the
//! rules of which step may start next, so the loop in [`run`](super::run) only moves
//! between the API, the journal and this.

use std::collections::BTreeSet;

use petgraph::graph::NodeIndex;

use super::event::Failure;
use super::journal::Replay;
use crate::plan::model::WindowEndPolicy;
use crate::plan::resolved::WindowPlan;
use crate::planner::{Action, Planned, Step};

/// The dispatch state of one run over a planned graph.
#[derive(Debug)]
pub(super) struct Dispatch<'p> {
    planned: &'p Planned,
    /// The first step of each node's chain.
    chain_firsts: BTreeSet<NodeIndex>,
    done: Vec<bool>,
    launched: Vec<bool>,
    /// Unfinished predecessors of each step.
    waiting: Vec<usize>,
    /// Nodes whose chain has begun (in this run or an earlier one).
    started_nodes: BTreeSet<String>,
    failures: Vec<Failure>,
}

/// What a pass over the ready steps found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Launch {
    /// Steps to start now, marked launched.
    pub(super) steps: Vec<NodeIndex>,
    /// Whether a closed window held some step back.
    pub(super) held: bool,
}

impl<'p> Dispatch<'p> {
    /// The state a run starts in: what the journal says finished counts as done, and a node
    /// with any step recorded has begun.
    pub(super) fn new(planned: &'p Planned, replay: &Replay) -> Self {
        let graph = &planned.graph;
        let done: Vec<bool> = graph.steps().map(|(_, s)| replay.finished.contains_key(&s.id)).collect();
        let waiting =
            graph.steps().map(|(i, _)| graph.predecessors(i).iter().filter(|p| !done[p.index()]).count()).collect();
        let started_nodes = graph
            .steps()
            .filter(|(_, s)| {
                replay.finished.contains_key(&s.id)
                    || replay.in_flight.contains_key(&s.id)
                    || replay.failed.contains_key(&s.id)
            })
            .filter_map(|(_, s)| s.node.clone())
            .collect();
        Dispatch {
            planned,
            chain_firsts: planned.chains.iter().map(|c| c.first()).collect(),
            launched: done.clone(),
            done,
            waiting,
            started_nodes,
            failures: Vec::new(),
        }
    }

    /// Whether the run stopped starting nodes: something failed.
    pub(super) fn halting(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Records a failure; from now on no new node starts.
    pub(super) fn fail(&mut self, failure: Failure) {
        self.failures.push(failure);
    }

    /// The failures so far.
    pub(super) fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// Marks launched and returns every step that may start now. While halting, only the
    /// chains of nodes already begun go on (their nodes must not stay out of service);
    /// while a window is `closed`, steps [`held_by_window`] wait.
    pub(super) fn launch(&mut self, closed: bool, window: Option<&WindowPlan>) -> Launch {
        let mut launch = Launch::default();
        for (index, step) in self.planned.graph.steps() {
            let i = index.index();
            if self.launched[i] || self.waiting[i] > 0 {
                continue;
            }
            let node_started = step.node.as_ref().is_some_and(|n| self.started_nodes.contains(n));
            if self.halting() && (step.node.is_none() || (self.chain_firsts.contains(&index) && !node_started)) {
                continue;
            }
            if closed && held_by_window(step, node_started, window) {
                launch.held = true;
                continue;
            }
            self.launched[i] = true;
            if let Some(node) = &step.node {
                self.started_nodes.insert(node.clone());
            }
            launch.steps.push(index);
        }
        launch
    }

    /// A step finished: its successors wait for one fewer.
    pub(super) fn finish(&mut self, index: NodeIndex) {
        self.done[index.index()] = true;
        for next in self.planned.graph.successors(index) {
            self.waiting[next.index()] -= 1;
        }
    }

    /// Steps done.
    pub(super) fn done_count(&self) -> usize {
        self.done.iter().filter(|d| **d).count()
    }

    /// Whether every step is done and nothing failed.
    pub(super) fn finished(&self) -> bool {
        self.failures.is_empty() && self.done.iter().all(|d| *d)
    }

    /// Nodes whose whole chain is done.
    pub(super) fn nodes_done(&self) -> usize {
        self.planned.chains.iter().filter(|c| self.done[c.last().index()]).count()
    }

    /// Nodes whose chain is not done yet.
    pub(super) fn nodes_left(&self) -> usize {
        self.planned.chains.len() - self.nodes_done()
    }

    /// Steps launched and not done: what an interrupt stops.
    pub(super) fn running(&self) -> Vec<String> {
        self.planned
            .graph
            .steps()
            .filter(|(i, _)| self.launched[i.index()] && !self.done[i.index()])
            .map(|(_, s)| s.id.clone())
            .collect()
    }

    /// Nodes whose cordon step began and whose uncordon step has not finished, but for
    /// those `cordoned_before` the rollout: the nodes this rollout left cordoned.
    pub(super) fn cordoned(&self, cordoned_before: impl Fn(&str) -> bool) -> Vec<String> {
        let graph = &self.planned.graph;
        self.planned
            .chains
            .iter()
            .filter(|c| {
                let with = |action: Action, state: &[bool]| {
                    c.steps.iter().any(|&s| graph.step(s).action == action && state[s.index()])
                };
                with(Action::Cordon, &self.launched) && !with(Action::Uncordon, &self.done) && !cordoned_before(&c.node)
            })
            .map(|c| c.node.clone())
            .collect()
    }
}

/// Whether a closed window holds this step back: a batch's window gate, a node's first
/// step, and, with `onWindowEnd: halt`, every step of a node in progress too (it stops
/// where it is, cordoned, until the next window).
fn held_by_window(step: &Step, node_started: bool, window: Option<&WindowPlan>) -> bool {
    let halt = window.is_some_and(|w| w.on_end == WindowEndPolicy::Halt);
    step.action == Action::Window || (step.node.is_some() && (halt || !node_started))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan;
    use crate::planner;

    fn planned() -> Planned {
        let path = format!("{}/plans/external-lb.yaml", env!("CARGO_MANIFEST_DIR"));
        let plan = plan::check_file(std::path::Path::new(&path)).plan.expect("the example plan is valid");
        planner::build(&plan).expect("it plans")
    }

    /// The first node of the plan's last batch: a node that does not start before the
    /// first batch is done.
    fn late_node(planned: &Planned) -> String {
        planned.batches.last().and_then(|b| b.nodes.first()).cloned().expect("a node")
    }

    /// Runs every launchable step to completion, in launch order, until nothing launches.
    fn drain_all(dispatch: &mut Dispatch<'_>, stop_after: Option<&str>, graph: &planner::StepGraph) -> Vec<String> {
        let mut order = Vec::new();
        loop {
            let launch = dispatch.launch(false, None);
            if launch.steps.is_empty() {
                return order;
            }
            for index in launch.steps {
                let id = graph.step(index).id.clone();
                if Some(id.as_str()) == stop_after {
                    dispatch.fail(Failure { step: id.clone(), error: "injected".into() });
                } else {
                    dispatch.finish(index);
                }
                order.push(id);
            }
        }
    }

    #[test]
    fn a_clean_run_launches_every_step_once_and_leaves_nothing_cordoned() {
        let planned = planned();
        let mut dispatch = Dispatch::new(&planned, &Replay::default());
        let order = drain_all(&mut dispatch, None, &planned.graph);
        assert_eq!(order.len(), planned.graph.len());
        assert!(dispatch.finished());
        assert!(dispatch.cordoned(|_| false).is_empty());
        assert_eq!(dispatch.nodes_left(), 0);
    }

    #[test]
    fn after_a_failure_no_new_node_starts_and_the_failed_node_stays_cordoned() {
        let planned = planned();
        let mut dispatch = Dispatch::new(&planned, &Replay::default());
        let first = planned.chains[0].node.clone();
        let late = late_node(&planned);
        let order = drain_all(&mut dispatch, Some(&format!("{first}/drain")), &planned.graph);
        assert!(dispatch.halting());
        assert!(!order.iter().any(|s| s.starts_with(&format!("{late}/"))), "{late} must not start: {order:?}");
        assert_eq!(dispatch.cordoned(|_| false), vec![first]);
        assert!(dispatch.nodes_left() > 1);
    }

    #[test]
    fn a_closed_window_holds_nodes_that_have_not_begun() {
        let planned = planned();
        let mut dispatch = Dispatch::new(&planned, &Replay::default());
        let mut held = false;
        loop {
            let launch = dispatch.launch(true, None);
            held |= launch.held;
            if launch.steps.is_empty() {
                break;
            }
            for index in launch.steps {
                assert!(planned.graph.step(index).node.is_none(), "a node step started in a closed window");
                dispatch.finish(index);
            }
        }
        assert!(held, "the first node's step must be held");
        assert_eq!(dispatch.nodes_left(), planned.chains.len());
    }

    #[test]
    fn a_resumed_run_counts_what_the_journal_finished() {
        let planned = planned();
        let mut replay = Replay::default();
        let first = planned.graph.steps().next().map(|(_, s)| s.id.clone()).expect("a step");
        replay.finished.insert(first.clone(), serde_json::Value::Null);
        let mut dispatch = Dispatch::new(&planned, &replay);
        assert_eq!(dispatch.done_count(), 1);
        let launched = dispatch.launch(false, None);
        assert!(launched.steps.iter().all(|&i| planned.graph.step(i).id != first));
    }
}
