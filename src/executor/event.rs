//! What a rollout reports as it goes. The executor emits these to an [`Observer`]; the CLI
//! draws them as progress bars or streams them as JSON lines (`--output json`), and
//! `rehearse` keeps them to measure the run.

use serde::Serialize;

use crate::planner::Action;

/// One thing that happened, in the JSON-lines contract of `apply --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The run began.
    #[serde(rename_all = "camelCase")]
    Started {
        /// Plan name.
        plan: String,
        /// Journal path.
        journal: String,
        /// Batches with their node counts, in plan order.
        batches: Vec<BatchSize>,
        /// Steps in the graph.
        steps: usize,
        /// Steps already done by earlier runs.
        done: usize,
        /// Nodes whose whole chain earlier runs finished.
        nodes_done: usize,
        /// Whether this run resumes an earlier one.
        resumed: bool,
    },
    /// A step began.
    StepStarted {
        /// Step id.
        step: String,
        /// Node, for node steps.
        node: Option<String>,
        /// Batch.
        batch: Option<String>,
        /// Action.
        action: Action,
    },
    /// A running step has news (pods left, a PDB blocking, a wait).
    StepProgress {
        /// Step id.
        step: String,
        /// Node, for node steps.
        node: Option<String>,
        /// What is going on.
        message: String,
    },
    /// A step finished.
    StepFinished {
        /// Step id.
        step: String,
        /// Node, for node steps.
        node: Option<String>,
        /// Batch.
        batch: Option<String>,
        /// Action.
        action: Action,
        /// Real seconds it took.
        seconds: f64,
    },
    /// A step failed.
    StepFailed {
        /// Step id.
        step: String,
        /// Node, for node steps.
        node: Option<String>,
        /// Why.
        error: String,
    },
    /// A node waits for `noderoll approve NODE` before it is uncordoned.
    AwaitingApproval {
        /// The approve step.
        step: String,
        /// The node.
        node: String,
    },
    /// The manual DNS provider: the operator makes this change, then approves the step.
    AwaitingDnsChange {
        /// The DNS step; `noderoll approve PLAN STEP` confirms the change is made.
        step: String,
        /// The node.
        node: String,
        /// The change in nsupdate syntax.
        change: String,
    },
    /// A node's step failed within its batch's `maxFailures`: the node is left where it is
    /// (cordoned) and the batch goes on without it.
    NodeFailed {
        /// The node.
        node: String,
        /// Its batch.
        batch: String,
        /// The step that failed.
        step: String,
        /// Failures of the batch so far, this one included.
        spent: usize,
        /// The batch's `maxFailures`.
        budget: usize,
    },
    /// A node went through its whole chain.
    NodeDone {
        /// The node.
        node: String,
        /// Its batch.
        batch: String,
    },
    /// Something the operator should know that does not stop the run.
    Warning {
        /// What.
        message: String,
    },
    /// A step failed: no new node started, running ones finished.
    Halted {
        /// The failed steps and why.
        failed: Vec<Failure>,
        /// Nodes left cordoned.
        cordoned: Vec<String>,
        /// What the operator should do next.
        next: String,
    },
    /// No node may start until the maintenance window opens; the run waits for it.
    #[serde(rename_all = "camelCase")]
    WaitingForWindow {
        /// When it opens.
        opens: String,
        /// Nodes not yet done.
        nodes_left: usize,
        /// Nodes left cordoned meanwhile (only with `onWindowEnd: halt`).
        cordoned: Vec<String>,
    },
    /// The window closed and the run stopped until the next one (`apply --until-window-end`).
    Paused {
        /// When the next window opens.
        opens: String,
        /// Nodes left cordoned (only with `onWindowEnd: halt`).
        cordoned: Vec<String>,
        /// What the operator should do next.
        next: String,
    },
    /// SIGINT or SIGTERM stopped the run.
    Interrupted {
        /// Steps that were running.
        running: Vec<String>,
    },
    /// `noderoll abort` waits for the running `apply` to stop at its next safe point.
    WaitingForHolder {
        /// Who holds the rollout's lock.
        holder: String,
    },
    /// The abort put a node back (`actions` says what it did and what it could not).
    NodeRestored {
        /// The node.
        node: String,
        /// What was done.
        actions: Vec<String>,
    },
    /// The abort is done.
    Aborted {
        /// Who asked.
        by: String,
        /// The nodes put back.
        restored: Vec<String>,
        /// The nodes left out of service, each with the step it reached.
        left: Vec<crate::executor::journal::LeftNode>,
    },
    /// `noderoll abort` asked and the run stopped: nothing more started, the running steps
    /// were cut off (hooks finished first). The abort puts the nodes back.
    StoppedForAbort {
        /// Who asked.
        by: String,
        /// Steps that were running when it asked.
        running: Vec<String>,
    },
    /// The run went through every node: each is done, or failed within its batch's
    /// `maxFailures` (then `failed` names the steps and `cordoned` the nodes left cordoned).
    Finished {
        /// Real seconds this run took.
        seconds: f64,
        /// Nodes in the plan.
        nodes: usize,
        /// Steps that failed within a failure budget; empty when every node is done.
        failed: Vec<Failure>,
        /// Nodes left cordoned.
        cordoned: Vec<String>,
    },
}

/// A batch and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchSize {
    /// Batch name.
    pub name: String,
    /// Nodes in it.
    pub nodes: usize,
}

/// A failed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Step id.
    pub step: String,
    /// Why.
    pub error: String,
}

impl Failure {
    /// Failures on one line, `step: error; step: error`, as the journal's end record and
    /// the notifications give them.
    pub fn joined(failures: &[Failure]) -> String {
        failures.iter().map(|f| format!("{}: {}", f.step, f.error)).collect::<Vec<_>>().join("; ")
    }
}

/// Receives a rollout's events as they happen.
pub trait Observer: Send + Sync {
    /// One event; must not block for long.
    fn event(&self, event: &Event);
}

/// Several observers, each given every event in order: the progress display, and the
/// metrics or notifications an operator asked for.
pub struct Fanout(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Fanout {
    fn event(&self, event: &Event) {
        for observer in &self.0 {
            observer.event(event);
        }
    }
}
