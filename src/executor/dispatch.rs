//! What the run loop knows about the graph as it goes: which steps are done, launched or
//! still waiting on predecessors, which nodes have begun, what failed. Pure state with the
//! rules of which step may start next, so the loop in [`run`](super::run) only moves
//! between the API, the journal and this.
//!
//! A node whose step fails within its batch's `maxFailures` is given up on: its chain stops
//! there (the node stays cordoned) and what waited for its end is released, so the batch
//! goes on without it. A failed workstation node releases its lane and the batch's end; a
//! failed service node only the batch's end, since it is still out of service: the nodes
//! that would take its place in the quorum (and DNS) budget keep waiting for it.

use std::collections::BTreeSet;

use petgraph::graph::NodeIndex;

use super::event::Failure;
use super::journal::Replay;
use crate::plan::model::{Role, WindowEndPolicy};
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
    /// Every failure of this run, in order: those within a failure budget and the one that
    /// halted the run.
    failures: Vec<Failure>,
    /// No new node starts.
    halted: bool,
    /// Nothing more starts at all: an abort was asked.
    stopped: bool,
    /// The chain each node step belongs to, by step index.
    chain_of: Vec<Option<usize>>,
    /// Chains given up on after a failure within their batch's budget.
    given_up: Vec<bool>,
    /// Failures spent of each batch's `maxFailures`.
    spent: Vec<usize>,
}

/// What became of a node step's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the batch's `maxFailures`: the node is given up on and the batch goes on.
    Tolerated {
        /// Failures of the batch so far, this one included.
        spent: usize,
        /// The batch's `maxFailures`.
        budget: usize,
    },
    /// The run halts.
    Halts,
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
        let mut chain_of = vec![None; graph.len()];
        for (c, chain) in planned.chains.iter().enumerate() {
            for step in &chain.steps {
                chain_of[step.index()] = Some(c);
            }
        }
        Dispatch {
            planned,
            chain_firsts: planned.chains.iter().map(|c| c.first()).collect(),
            launched: done.clone(),
            done,
            waiting,
            started_nodes,
            failures: Vec::new(),
            halted: false,
            stopped: false,
            chain_of,
            given_up: vec![false; planned.chains.len()],
            spent: vec![0; planned.batches.len()],
        }
    }

    /// Whether the run stopped starting nodes: something failed beyond a failure budget.
    pub(super) fn halting(&self) -> bool {
        self.halted
    }

    /// Starts nothing more, not even the next step of a node at work: an abort was asked,
    /// and it puts the nodes back.
    pub(super) fn stop(&mut self) {
        self.stopped = true;
    }

    /// Records a failure that halts the run: from now on no new node starts.
    pub(super) fn fail(&mut self, failure: Failure) {
        self.failures.push(failure);
        self.halted = true;
    }

    /// Records the failure of step `index`. A node step within its batch's `maxFailures`
    /// (and while the run is not halting) gives its node up and lets the batch go on; any
    /// other failure halts the run.
    pub(super) fn fail_step(&mut self, index: NodeIndex, failure: Failure) -> Verdict {
        let Some(c) = self.chain_of[index.index()] else {
            self.fail(failure);
            return Verdict::Halts;
        };
        let chain = &self.planned.chains[c];
        let batch = &self.planned.batches[chain.batch];
        if self.halted || self.spent[chain.batch] >= batch.max_failures {
            self.fail(failure);
            return Verdict::Halts;
        }
        self.failures.push(failure);
        self.spent[chain.batch] += 1;
        self.given_up[c] = true;
        let graph = &self.planned.graph;
        let last = chain.last();
        for next in graph.successors(last) {
            if batch.role == Role::Workstation || graph.step(next).action == Action::BatchDone {
                self.waiting[next.index()] -= 1;
            }
        }
        Verdict::Tolerated { spent: self.spent[chain.batch], budget: batch.max_failures }
    }

    /// Every failure of the run so far, in order.
    pub(super) fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// Whether a step is done, or belongs to a node given up on.
    fn settled(&self, index: NodeIndex) -> bool {
        self.done[index.index()] || self.chain_of[index.index()].is_some_and(|c| self.given_up[c])
    }

    /// Whether the run went through every node without halting: each step is done or
    /// belongs to a node that failed within its batch's budget.
    pub(super) fn complete(&self) -> bool {
        !self.halted && self.planned.graph.steps().all(|(i, _)| self.settled(i))
    }

    /// When nothing runs and nothing can start, but the run is not complete: the steps
    /// left wait for a failed node to come back into service, which it will not in this run.
    /// The failure names the first such step and the node it waits for.
    pub(super) fn stalled(&self) -> Option<Failure> {
        if self.halted || self.complete() {
            return None;
        }
        let graph = &self.planned.graph;
        graph.steps().find_map(|(index, step)| {
            if self.launched[index.index()] || self.settled(index) {
                return None;
            }
            let held_by = graph.predecessors(index).iter().find_map(|p| {
                let c = self.chain_of[p.index()]?;
                (self.given_up[c] && !self.done[p.index()]).then(|| self.planned.chains[c].node.clone())
            })?;
            let who = step.node.as_deref().unwrap_or("the rest of the rollout");
            Some(Failure {
                step: step.id.clone(),
                error: format!(
                    "{who} cannot start: it may leave service only once {held_by} is back, and {held_by} failed (a failed service node stays out of service, and the etcd quorum and DNS budgets count it); fix {held_by}, then run apply again"
                ),
            })
        })
    }

    /// Marks launched and returns every step that may start now. While halting, only the
    /// chains of nodes already begun go on (their nodes must not stay out of service);
    /// while a window is `closed`, steps [`held_by_window`] wait.
    pub(super) fn launch(&mut self, closed: bool, window: Option<&WindowPlan>) -> Launch {
        let mut launch = Launch::default();
        if self.stopped {
            return launch;
        }
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
    use proptest::prelude::{TestCaseError, any, prop, prop_assert, prop_assert_eq, prop_oneof};
    use proptest::strategy::Strategy;

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
        assert!(dispatch.complete() && dispatch.failures().is_empty());
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

    fn load(text: &str) -> Planned {
        let checked = plan::check_str("test.yaml", text);
        let errors: Vec<String> = checked.diagnostics.iter().map(ToString::to_string).collect();
        let plan = checked.plan.unwrap_or_else(|| panic!("invalid plan: {errors:#?}\n{text}"));
        planner::build(&plan).expect("it plans")
    }

    /// A plan of three service nodes (one out at a time) and the workstation batches given
    /// as (nodes, maxUnavailable, maxFailures).
    fn plan_text(service_failures: usize, workstations: &[(usize, usize, usize)]) -> String {
        let mut y = String::from(
            "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: failures}\nspec:\n  loadBalancer: {mode: external}\n  defaults: {upgrade: {command: [upgrade, \"{node}\"]}}\n  batches:\n",
        );
        y.push_str(&format!(
            "    - {{name: cp, role: service, nodes: [cp0, cp1, cp2], maxFailures: {service_failures}}}\n"
        ));
        for (b, (size, lanes, failures)) in workstations.iter().enumerate() {
            let nodes: Vec<String> = (0..*size).map(|i| format!("ws{b}-{i}")).collect();
            y.push_str(&format!(
                "    - {{name: ws{b}, role: workstation, nodes: [{}], maxUnavailable: {lanes}, maxFailures: {failures}}}\n",
                nodes.join(", ")
            ));
        }
        y
    }

    /// Runs the plan to its end, finishing launched steps in the order `choose` picks, and
    /// failing the `fail_at`-th step of each node in `failing`. Checks at every launch that
    /// no more service nodes are out than quorum allows and no more workstations of a batch
    /// than its lanes plus the failures it has spent; a failed node counts as out.
    fn run<'p>(
        planned: &'p Planned,
        failing: &BTreeSet<String>,
        fail_at: usize,
        choose: &[prop::sample::Index],
    ) -> Result<Dispatch<'p>, String> {
        let graph = &planned.graph;
        let mut dispatch = Dispatch::new(planned, &Replay::default());
        let mut pending: Vec<NodeIndex> = Vec::new();
        let mut picks = choose.iter().cycle();
        loop {
            pending.extend(dispatch.launch(false, None).steps);
            let out = |c: &planner::build::NodeChain| {
                dispatch.launched[c.first().index()] && !dispatch.done[c.last().index()]
            };
            let service_out =
                planned.chains.iter().filter(|c| planned.batches[c.batch].role == Role::Service && out(c)).count();
            if service_out > planned.quorum.limit {
                return Err(format!("{service_out} service nodes out, quorum allows {}", planned.quorum.limit));
            }
            for (b, batch) in planned.batches.iter().enumerate().filter(|(_, b)| b.role == Role::Workstation) {
                let batch_out = planned.chains.iter().filter(|c| c.batch == b && out(c)).count();
                if batch_out > batch.lanes + dispatch.spent[b] {
                    return Err(format!(
                        "{batch_out} nodes of {} out: {} lanes, {} failed",
                        batch.name, batch.lanes, dispatch.spent[b]
                    ));
                }
            }
            if pending.is_empty() {
                if let Some(stall) = dispatch.stalled() {
                    dispatch.fail(stall);
                }
                return Ok(dispatch);
            }
            let pick = picks.next().map_or(0, |i| i.index(pending.len()));
            let index = pending.swap_remove(pick);
            let step = graph.step(index);
            let chain = dispatch.chain_of[index.index()].map(|c| &planned.chains[c]);
            let fails = chain.is_some_and(|c| {
                failing.contains(&c.node) && c.steps.get(fail_at.min(c.steps.len() - 1)) == Some(&index)
            });
            if fails {
                dispatch.fail_step(index, Failure { step: step.id.clone(), error: "injected".into() });
            } else {
                dispatch.finish(index);
            }
        }
    }

    #[test]
    fn a_failure_within_the_budget_gives_the_node_up_and_the_batch_goes_on() {
        let planned = load(&plan_text(0, &[(4, 1, 1)]));
        let failing = BTreeSet::from(["ws0-0".to_owned()]);
        let drain = 2; // cordon, wait-sessions, drain
        let dispatch = run(&planned, &failing, drain, &[]).expect("within limits");
        assert!(dispatch.complete(), "every other node must be done");
        assert_eq!(dispatch.failures().len(), 1);
        assert_eq!(dispatch.cordoned(|_| false), vec!["ws0-0".to_owned()]);
        assert_eq!(dispatch.nodes_done(), planned.chains.len() - 1);
    }

    #[test]
    fn the_failure_after_the_budget_halts() {
        let planned = load(&plan_text(0, &[(4, 1, 1), (2, 1, 0)]));
        let failing = BTreeSet::from(["ws0-0".to_owned(), "ws0-1".to_owned()]);
        let dispatch = run(&planned, &failing, 2, &[]).expect("within limits");
        assert!(dispatch.halting());
        assert!(!dispatch.complete());
        assert_eq!(dispatch.failures().len(), 2);
        assert_eq!(dispatch.cordoned(|_| false), vec!["ws0-0".to_owned(), "ws0-1".to_owned()]);
        assert!(!dispatch.launched[planned.chains.iter().find(|c| c.node == "ws1-0").expect("ws1-0").first().index()]);
    }

    #[test]
    fn a_failed_service_node_still_holds_the_quorum_budget() {
        let planned = load(&plan_text(1, &[(2, 1, 0)]));
        let failing = BTreeSet::from(["cp0".to_owned()]);
        let upgrade = 2; // cordon, drain, upgrade
        let dispatch = run(&planned, &failing, upgrade, &[]).expect("within limits");
        assert!(dispatch.halting(), "cp1 cannot leave service while cp0 is out");
        let stall = dispatch.failures().last().expect("the stall is reported");
        assert_eq!(stall.step, "cp1/cordon");
        assert!(
            stall.error.contains("cp1 cannot start: it may leave service only once cp0 is back"),
            "{}",
            stall.error
        );
        assert_eq!(dispatch.cordoned(|_| false), vec!["cp0".to_owned()]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever fails, in whatever order steps end: quorum and each batch's lanes plus
        /// spent failures hold at every launch; a run that halts did so because a batch
        /// spent more than its budget (or a service node blocked the rest); a complete run
        /// has every node done but the failed ones, which are left cordoned.
        #[test]
        fn failure_budgets_keep_the_limits(
            service_failures in 0usize..=2,
            batches in proptest::collection::vec((1usize..=8, 1usize..=3, 0usize..=3), 1..=3),
            failing in proptest::collection::btree_set(
                prop_oneof![(0usize..3).prop_map(|i| format!("cp{i}")), (0usize..3, 0usize..8).prop_map(|(b, i)| format!("ws{b}-{i}"))],
                0..6,
            ),
            fail_at in 0usize..12,
            choose in proptest::collection::vec(any::<prop::sample::Index>(), 1..64),
        ) {
            let planned = load(&plan_text(service_failures, &batches));
            let dispatch = run(&planned, &failing, fail_at, &choose).map_err(TestCaseError::fail)?;
            for (b, batch) in planned.batches.iter().enumerate() {
                prop_assert!(dispatch.spent[b] <= batch.max_failures);
            }
            let failed: BTreeSet<String> = planned.chains.iter().enumerate().filter(|(c, _)| dispatch.given_up[*c]).map(|(_, c)| c.node.clone()).collect();
            prop_assert!(failed.is_subset(&failing));
            if dispatch.complete() {
                prop_assert_eq!(dispatch.nodes_done() + failed.len(), planned.chains.len());
                let cordoned: BTreeSet<String> = dispatch.cordoned(|_| false).into_iter().collect();
                let failed_after_cordon: BTreeSet<String> = failed.iter().filter(|n| {
                    let chain = planned.chains.iter().find(|c| &c.node == *n).expect("chain");
                    chain.steps.iter().any(|&s| planned.graph.step(s).action == Action::Cordon && dispatch.launched[s.index()])
                }).cloned().collect();
                prop_assert_eq!(cordoned, failed_after_cordon);
            } else {
                prop_assert!(dispatch.halting());
            }
        }
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
