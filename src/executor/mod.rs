//! The executor: the only part of noderoll that changes the world. It runs the planner's
//! step graph against a Kubernetes API server (a real cluster or the simulator; there is no
//! other code path), with as many steps at once as the graph's edges allow.
//!
//! Safety comes from the order of writes: a step's start is fsync'd to the journal before
//! it acts and its finish after, so a run killed at any instant resumes by skipping what is
//! finished and acting again (idempotently) on what was in flight. On a failure beyond the
//! batch's `maxFailures` no new node is started, nodes already out of service finish their
//! chains, and the failed node stays cordoned, with the journal and the halt report saying
//! so; a failure within it leaves only that node cordoned and the run goes on.
//!
//! The runner is handed a [`Rollout`]: the plan and the step graph planned against the
//! cluster before the run begins, as a test runner is handed its test list. It does not
//! plan.
//!
//! - [`journal`]: the checkpoint file; [`lock`]: the per-plan Lease.
//! - [`abort`]: stopping a rollout and putting back what can be put back.
//! - [`steps`]: what each action does; [`event`]: what the run reports.

pub mod abort;
pub mod clock;
mod dispatch;
pub mod event;
pub mod journal;
pub mod journal_store;
pub mod lock;
pub mod node_state;
mod run;
pub mod steps;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use sha2::Digest;

use self::event::{Event, Failure, Observer};
use self::journal::JournalError;
use self::lock::LockError;
use self::steps::{HookSettings, StepError};
use crate::exit_code::{self, KnowsExitCode};
use crate::plan::Plan;
use crate::plan::template::CommandTemplate;
use crate::planner::{self, Planned, PlannerError};
use crate::world::dns::DnsProvider;
use crate::world::inventory::{self, InventoryError, Scope};
use crate::world::retry::Patience;

/// How to run a rollout.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the journal is: a file, or a ConfigMap for a run inside the cluster.
    pub journal: journal_store::Location,
    /// Accept a journal written for a different version of the plan.
    pub force: bool,
    /// Take the lock from a live holder.
    pub break_lock: bool,
    /// Go on with a rollout that was aborted.
    pub resume_aborted: bool,
    /// Namespace of the lock Lease.
    pub lock_namespace: String,
    /// Plan time (the wall clock for a real rollout).
    pub clock: clock::Clock,
    /// Retry budget of one API call.
    pub patience: Patience,
    /// What to do outside a maintenance window.
    pub windows: WindowMode,
    /// Hook logs and environment.
    pub hooks: HookSettings,
    /// What a rehearsal puts in place of the world its simulated cluster lacks; `None` for
    /// a real rollout.
    pub rehearsal: Option<Rehearsal>,
}

/// What to do outside a maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMode {
    /// Start no node and wait in-process for the next window (an attended run, or a
    /// rehearsal that counts the windows a rollout takes).
    Wait,
    /// Once the nodes in progress are done, stop with [`Outcome::Paused`] (a scheduled
    /// run: the next one resumes). Started before any window, it first waits for one.
    Pause,
}

/// Everything a rehearsal substitutes, in one place, so that the runner and its steps
/// differ from a real rollout only where this value says. A rehearsal's cluster is the
/// simulator: it has no etcd (the quorum gate counts Ready etcd-role nodes), its DNS record
/// lives in memory where no resolver can see it, nothing outside it can be asked about its
/// health (the gates keep their readiness check only), the plan's verify hook cannot reach
/// its nodes, and its upgrade is the simulator's own.
#[derive(Debug, Clone, Default)]
pub struct Rehearsal {
    /// Per batch, the command run instead of the plan's upgrade hook.
    pub upgrade: BTreeMap<String, CommandTemplate>,
    /// Whether maintenance windows are awaited (in simulated time, from a chosen instant)
    /// or ignored, the report estimating them from the makespan instead.
    pub await_windows: bool,
}

/// A plan ready to run: what the runner is handed. The graph is planned against the
/// cluster the rollout runs on (selectors resolved, every named node present) before the
/// run begins; the runner only follows it.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The validated plan.
    pub plan: Plan,
    /// Its text, which the journal keeps to tell a changed plan.
    pub text: String,
    /// The step graph for this cluster, shared so that a caller (a rehearsal's report) can
    /// keep reading it after handing the rollout to [`apply`].
    pub planned: Arc<Planned>,
}

impl Rollout {
    /// Plans `plan` against the cluster `client` reaches (reading its nodes, changing
    /// nothing).
    pub async fn plan(
        client: &kube::Client,
        plan: Plan,
        text: &str,
        patience: &Patience,
    ) -> Result<Rollout, ExecError> {
        let inventory = inventory::from_cluster(client, patience, Scope::Nodes).await?;
        let planned = planner::build_for_cluster(&plan, &inventory)?;
        Ok(Rollout { plan, text: text.to_owned(), planned: Arc::new(planned) })
    }
}

/// How a run ended (errors aside).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step is done.
    Finished,
    /// A step failed; the run stopped starting nodes.
    Halted {
        /// What failed.
        failed: Vec<Failure>,
        /// Nodes left cordoned.
        cordoned: Vec<String>,
    },
    /// Every node was tried, and some failed within their batch's `maxFailures`.
    Incomplete {
        /// What failed.
        failed: Vec<Failure>,
        /// Nodes left cordoned.
        cordoned: Vec<String>,
    },
    /// SIGINT or SIGTERM.
    Interrupted,
    /// `noderoll abort` asked, and the run stopped at a safe point for it to put the nodes
    /// back.
    StoppedForAbort {
        /// Who asked.
        by: String,
    },
    /// The maintenance window closed (or was not open) and the nodes in progress are done;
    /// only with [`WindowMode::Pause`]. The next run resumes.
    Paused {
        /// When the next window opens.
        opens: jiff::Timestamp,
        /// Nodes left cordoned (only with `onWindowEnd: halt`).
        cordoned: Vec<String>,
    },
}

impl Outcome {
    /// How the run ended, without the details.
    pub fn ending(&self) -> Ending {
        match self {
            Outcome::Finished => Ending::Finished,
            Outcome::Halted { .. } => Ending::Halted,
            Outcome::Incomplete { .. } => Ending::Incomplete,
            Outcome::Interrupted => Ending::Interrupted,
            Outcome::StoppedForAbort { .. } => Ending::Aborted,
            Outcome::Paused { .. } => Ending::Paused,
        }
    }
}

/// How a run ended: an [`Outcome`] without its details, as reports print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Ending {
    /// Every step is done.
    Finished,
    /// A step failed.
    Halted,
    /// Every node was tried; some failed within their batch's `maxFailures`.
    Incomplete,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// The maintenance window closed with nodes left.
    Paused,
    /// Stopped for `noderoll abort`.
    Aborted,
}

impl Ending {
    /// The process exit code a run that ended so exits with.
    pub fn exit_code(self) -> i32 {
        match self {
            Ending::Finished => exit_code::SUCCESS,
            Ending::Halted => exit_code::HALTED,
            Ending::Incomplete => exit_code::NODES_FAILED,
            Ending::Interrupted => exit_code::INTERRUPTED,
            Ending::Aborted => exit_code::ABORTED,
            // A scheduled run that ends with its window did what it was started for.
            Ending::Paused => exit_code::SUCCESS,
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ending::Finished => "finished",
            Ending::Halted => "halted",
            Ending::Incomplete => "incomplete",
            Ending::Interrupted => "interrupted",
            Ending::Paused => "paused",
            Ending::Aborted => "aborted",
        })
    }
}

/// Why a rollout cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The journal cannot be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another run holds the lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The journal was written for another version of the plan.
    #[error(
        "the journal {journal} belongs to a different version of this plan; finish or abandon that rollout first, or run with --force to continue with the plan as it is now. What changed:\n{diff}"
    )]
    PlanChanged {
        /// The journal.
        journal: String,
        /// A unified diff, journal's plan → plan now.
        diff: String,
    },
    /// The plan cannot be turned into steps for this cluster.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// etcd's client cannot be set up (TLS files).
    #[error(transparent)]
    Etcd(#[from] crate::world::etcd::EtcdError),
    /// The DNS record is not what the plan describes, or cannot be read; nothing changed.
    #[error("before the rollout: {0}")]
    Preflight(StepError),
    /// The HTTPS client for the health gate's Prometheus cannot be set up.
    #[error("cannot set up the HTTPS client for Prometheus: {0}")]
    Http(#[from] crate::world::http::HttpError),
    /// Reading the cluster's nodes failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The rollout was aborted, or its abort has not finished: `apply` does not undo an
    /// abort by itself.
    #[error("{0}")]
    Aborted(String),
    /// There is no rollout to abort.
    #[error("there is no rollout to abort: the journal {journal} does not exist or is empty")]
    NothingToAbort {
        /// The journal.
        journal: String,
    },
    /// Putting a node back failed; the journal says how far it got.
    #[error(
        "the abort could not put {node} back: {source}; what it did is journaled, so fix that and run `noderoll abort` again to finish"
    )]
    Restore {
        /// The node.
        node: String,
        /// The cause (boxed: a step's error is large, and rare here).
        source: Box<StepError>,
    },
}

impl KnowsExitCode for ExecError {
    fn exit_code(&self) -> i32 {
        match self {
            ExecError::Lock(LockError::Held { .. }) | ExecError::Journal(JournalError::Conflict { .. }) => {
                exit_code::LOCKED
            }
            ExecError::PlanChanged { .. } | ExecError::Journal(JournalError::Corrupt { .. }) => {
                exit_code::JOURNAL_MISMATCH
            }
            ExecError::Aborted(_) => exit_code::ABORTED,
            ExecError::Planner(e) => e.exit_code(),
            ExecError::Inventory(e) => e.exit_code(),
            _ => exit_code::FAILURE,
        }
    }
}

/// SHA-256 of the plan's bytes, as the journal records it.
pub fn plan_hash(text: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// The plan's hash, unless the journal belongs to another version of it (and `--force` was
/// not given).
fn check_plan(replay: &journal::Replay, text: &str, options: &Options) -> Result<String, ExecError> {
    let hash = plan_hash(text);
    if let (Some(recorded), Some(recorded_text)) = (&replay.plan_hash, &replay.plan_text)
        && *recorded != hash
        && !options.force
    {
        let diff = similar::TextDiff::from_lines(recorded_text.as_str(), text)
            .unified_diff()
            .context_radius(2)
            .header("plan in the journal", "plan now")
            .to_string();
        return Err(ExecError::PlanChanged { journal: options.journal.to_string(), diff });
    }
    Ok(hash)
}

/// Why `apply` will not go on with an aborted rollout, and what to do.
fn refusal(state: &journal::AbortState, location: &journal_store::Location) -> String {
    match state {
        journal::AbortState::Requested { at, by } => format!(
            "an abort of the rollout in {location} was asked at {at} by {by} and has not finished; run `noderoll abort` again to finish putting the nodes back, or `apply --resume-aborted` to go on with the rollout instead"
        ),
        journal::AbortState::Done { at, by, left, .. } => {
            let left = match left.is_empty() {
                true => String::new(),
                false => format!(
                    " ({} left cordoned: {})",
                    left.len(),
                    left.iter().map(|l| format!("{} at {}", l.node, l.step)).collect::<Vec<_>>().join(", ")
                ),
            };
            format!(
                "the rollout in {location} was aborted at {at} by {by}{left}; apply does not undo an abort by itself: run it with --resume-aborted to go on from where it stopped (the nodes put back start over, those left cordoned go on from their step)"
            )
        }
    }
}

/// Runs (or resumes) a rollout until it finishes, halts or `interrupt` fires.
pub async fn apply(
    client: kube::Client,
    rollout: Rollout,
    options: &Options,
    dns: Option<Arc<dyn DnsProvider>>,
    observer: Arc<dyn Observer>,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome, ExecError> {
    let replay = journal_store::read(&options.journal, &client, &options.patience).await?;
    let hash = check_plan(&replay, &rollout.text, options)?;
    if let Some(state) = replay.abort.as_ref().filter(|_| !options.resume_aborted) {
        return Err(ExecError::Aborted(refusal(state, &options.journal)));
    }
    let holder = lock::holder_identity();
    let (guard, taken) = lock::acquire(
        client.clone(),
        &options.lock_namespace,
        &rollout.plan.name,
        &holder,
        options.break_lock,
        &options.patience,
    )
    .await?;
    if let lock::Taken::FromHolder(previous) = &taken {
        observer.event(&Event::Warning {
            message: format!(
                "--break-lock took the lock from `{previous}`; if that run is alive, two rollouts now race"
            ),
        });
    }
    let runner = run::Runner { client, options, dns, observer, guard: &guard };
    let result = runner.run(rollout, hash, replay, interrupt).await;
    guard.release().await;
    result
}
