//! Where each node of a rollout stands, as one vocabulary: `status` computes it from the
//! journal's replay, the metrics endpoint counts it from live events, and both spell the
//! states the same way.

use std::collections::HashMap;

use serde::Serialize;

use super::journal::{AbortState, Record, Replay};
use crate::planner::{Action, StepRef, node_step_id};

/// A node's place in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// No step of it has run.
    Pending,
    /// Some steps ran; it is not back in service yet.
    InProgress,
    /// Uncordoned after its upgrade.
    Done,
    /// A step failed; the node stays where it is.
    Failed,
}

impl NodeState {
    /// Every state, in rollout order.
    pub const ALL: [NodeState; 4] = [NodeState::Pending, NodeState::InProgress, NodeState::Done, NodeState::Failed];

    /// The name in `status` and in the `state` label of `noderoll_nodes`.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::InProgress => "in-progress",
            NodeState::Done => "done",
            NodeState::Failed => "failed",
        }
    }
}

/// One node as the journal tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeProgress {
    /// The node.
    pub node: String,
    /// Its batch.
    pub batch: String,
    /// Where it stands.
    pub state: NodeState,
    /// The failed step and its error, the running step, or the last finished step.
    pub detail: String,
    /// Cordoned by this rollout and not uncordoned yet (a node cordoned before the rollout
    /// is not: it stays cordoned, and is named in `detail`).
    pub cordoned: bool,
}

/// What the replay says of one node's steps, gathered in one pass over the journal.
#[derive(Default)]
struct Steps<'a> {
    finished: usize,
    last_finished: Option<&'a str>,
    running: Option<&'a str>,
    failed: Option<(&'a str, &'a str)>,
}

/// The entry of the node whose step `id` is, if it is a node's step.
fn steps_of<'m, 'a>(by_node: &'m mut HashMap<&'a str, Steps<'a>>, id: &'a str) -> Option<&'m mut Steps<'a>> {
    StepRef::parse(id).and_then(StepRef::node).map(|node| by_node.entry(node).or_default())
}

/// Every node the journal's last run resolved, in batch order. Each step id is read once,
/// so a 10,000-node journal costs one pass, not one per node.
pub fn from_replay(replay: &Replay) -> Vec<NodeProgress> {
    let mut by_node: HashMap<&str, Steps> = HashMap::new();
    for id in replay.finished.keys() {
        if let Some(steps) = steps_of(&mut by_node, id) {
            steps.finished += 1;
        }
    }
    for (id, error) in &replay.failed {
        if let Some(steps) = steps_of(&mut by_node, id) {
            steps.failed.get_or_insert((id, error));
        }
    }
    for id in replay.in_flight.keys() {
        if let Some(steps) = steps_of(&mut by_node, id) {
            steps.running.get_or_insert(id);
        }
    }
    for record in &replay.records {
        if let Record::StepFinished { step, .. } = record
            && let Some(steps) = steps_of(&mut by_node, step)
        {
            steps.last_finished = Some(step);
        }
    }
    let put_back: std::collections::HashSet<&str> = match &replay.abort {
        Some(AbortState::Done { restored, .. }) => restored.iter().map(String::as_str).collect(),
        _ => std::collections::HashSet::new(),
    };
    let mut out = Vec::new();
    for batch in &replay.batches {
        for node in &batch.nodes {
            let steps = by_node.remove(node.as_str()).unwrap_or_default();
            let uncordoned = replay.finished.contains_key(&node_step_id(node, Action::Uncordon));
            let cordon = replay.finished.get(&node_step_id(node, Action::Cordon));
            let before = cordon.is_some_and(super::steps::cordoned_before);
            let cordoned = cordon.is_some() && !uncordoned && !before;
            let (state, detail) = match (steps.failed, steps.running, steps.last_finished) {
                (Some((step, error)), _, _) => (NodeState::Failed, format!("{step}: {error}")),
                (None, Some(step), _) => (NodeState::InProgress, step.to_owned()),
                (None, None, Some(_)) if uncordoned => {
                    let left = if before { "; left cordoned, as it was before the rollout" } else { "" };
                    (NodeState::Done, format!("{} step(s){left}", steps.finished))
                }
                (None, None, Some(step)) => (NodeState::InProgress, format!("after {step}")),
                (None, None, None) if put_back.contains(node.as_str()) => {
                    (NodeState::Pending, "put back by the abort before its upgrade".to_owned())
                }
                (None, None, None) => (NodeState::Pending, String::new()),
            };
            out.push(NodeProgress { node: node.clone(), batch: batch.name.clone(), state, detail, cordoned });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::journal;

    fn replay(records: &[Record]) -> Replay {
        journal::replay_after_begin(&["a", "b", "c", "d"], records)
    }

    fn finished(step: &str) -> Record {
        Record::StepFinished { at: "t".into(), step: step.into(), detail: serde_json::Value::Null }
    }

    #[test]
    fn states_come_from_the_journal() {
        let r = replay(&[
            finished("a/cordon"),
            finished("a/drain"),
            finished("a/uncordon"),
            finished("b/cordon"),
            finished("b/drain"),
            Record::StepStarted { at: "t".into(), step: "b/upgrade".into(), detail: serde_json::Value::Null },
            finished("c/cordon"),
            Record::StepFailed { at: "t".into(), step: "c/drain".into(), error: "budget".into() },
        ]);
        let got: Vec<(NodeState, String, bool)> =
            from_replay(&r).into_iter().map(|n| (n.state, n.detail, n.cordoned)).collect();
        let want = [
            (NodeState::Done, "3 step(s)", false),
            (NodeState::InProgress, "b/upgrade", true),
            (NodeState::Failed, "c/drain: budget", true),
            (NodeState::Pending, "", false),
        ];
        assert_eq!(got, want.map(|(s, d, c)| (s, d.to_owned(), c)));
    }

    #[test]
    fn a_node_between_steps_names_its_last_finished_step() {
        let r = replay(&[finished("b/cordon"), finished("b/wait-sessions")]);
        let b = &from_replay(&r)[1];
        assert_eq!((b.state, b.detail.as_str()), (NodeState::InProgress, "after b/wait-sessions"));
    }

    #[test]
    fn a_node_named_like_another_node_s_prefix_is_not_confused_with_it() {
        let mut r = replay(&[finished("ab/cordon")]);
        r.batches[0].nodes.push("ab".into());
        let states: Vec<NodeState> = from_replay(&r).iter().map(|n| n.state).collect();
        assert_eq!(states[0], NodeState::Pending);
        assert_eq!(states[4], NodeState::InProgress);
    }
}
