//! The run loop: start what [`Dispatch`] says may start, journal each step's start and end,
//! and react to what happens meanwhile (a step ends, a window closes or opens, an approval
//! arrives, the lock is lost, the operator interrupts).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petgraph::graph::NodeIndex;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::dispatch::{Dispatch, Verdict};
use super::event::{BatchSize, Event, Failure, Observer};
use super::journal::{self, JournalError, Record, Replay, Request};
use super::journal_store::Store;
use super::steps::{self, Context, StepError};
use super::{ExecError, Options, Outcome, Rollout, WindowMode, lock};
use crate::plan::resolved::WindowState;
use crate::planner::{Action, Step};
use crate::world::dns::DnsProvider;

/// How often the loop looks for new approvals in the journal.
const APPROVAL_POLL: Duration = Duration::from_millis(250);

/// What a run is given besides its rollout.
pub(super) struct Runner<'a> {
    pub(super) client: kube::Client,
    pub(super) options: &'a Options,
    pub(super) dns: Option<Arc<dyn DnsProvider>>,
    pub(super) observer: Arc<dyn Observer>,
    pub(super) guard: &'a lock::LockGuard,
}

/// What a finished step task hands back.
type Joined = (NodeIndex, f64, Result<Value, StepError>);

impl Runner<'_> {
    /// What every step of a run or an abort is handed. etcd and Prometheus, which only a
    /// run's gates ask, are left to the run to add.
    pub(super) fn context(
        &self,
        plan: crate::plan::Plan,
        planned: &crate::planner::Planned,
        journal: Arc<tokio::sync::Mutex<Store>>,
        finished: BTreeMap<String, Value>,
        approved: watch::Receiver<std::collections::BTreeSet<String>>,
    ) -> Context {
        Context {
            client: self.client.clone(),
            plan: Arc::new(plan),
            patience: self.options.patience.clone(),
            etcd: None,
            clock: self.options.clock,
            observer: self.observer.clone(),
            dns: self.dns.clone(),
            hooks: self.options.hooks.clone(),
            rehearsal: self.options.rehearsal.clone(),
            batches: planned.batches.clone(),
            http: None,
            approved,
            chain_starts: planned
                .chains
                .iter()
                .map(|c| (c.node.clone(), planned.graph.step(c.first()).id.clone()))
                .collect(),
            journal,
            finished: Mutex::new(finished),
            shield: super::steps::Shield::default(),
            bgp_node_configs: tokio::sync::OnceCell::new(),
        }
    }

    /// Runs the rollout's graph from where the journal's `replay` left it.
    pub(super) async fn run(
        self,
        rollout: Rollout,
        hash: String,
        replay: Replay,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Outcome, ExecError> {
        let Rollout { plan, text, planned } = rollout;
        let options = self.options;
        if let Some(provider) = &self.dns {
            let resumed = !replay.finished.is_empty();
            steps::dns_preflight(&self.client, &options.patience, &plan, &planned, provider.as_ref(), resumed)
                .await
                .map_err(ExecError::Preflight)?;
        }
        let mut journal = Store::open(&options.journal, &self.client, &options.patience, &replay).await?;
        journal
            .append(&Record::Begin {
                at: journal::now(),
                plan: plan.name.clone(),
                plan_hash: hash,
                plan_text: text,
                holder: lock::holder_identity(),
                batches: planned
                    .batches
                    .iter()
                    .map(|b| journal::BatchNodes { name: b.name.clone(), nodes: b.nodes.clone() })
                    .collect(),
            })
            .await?;
        let journal = Arc::new(tokio::sync::Mutex::new(journal));
        let etcd = match &plan.quorum.etcd {
            Some(settings) if options.rehearsal.is_none() => Some(crate::world::etcd::Etcd::new(settings)?),
            _ => None,
        };
        let (approvals, approved) = watch::channel(replay.approved.clone());
        let asks_prometheus = plan.health.as_ref().is_some_and(|h| h.prometheus.is_some());
        let http = match asks_prometheus && options.rehearsal.is_none() {
            true => Some(crate::world::http::HttpClient::new()?),
            false => None,
        };
        let ctx = Arc::new(Context {
            etcd,
            http,
            ..self.context(plan, &planned, journal.clone(), replay.finished.clone(), approved)
        });
        let graph = &planned.graph;
        let last_of: BTreeMap<NodeIndex, (String, String)> = planned
            .chains
            .iter()
            .map(|c| (c.last(), (c.node.clone(), planned.batches[c.batch].name.clone())))
            .collect();
        let mut dispatch = Dispatch::new(&planned, &replay);
        let observer = self.observer;
        observer.event(&Event::Started {
            plan: ctx.plan.name.clone(),
            journal: options.journal.to_string(),
            batches: planned.batches.iter().map(|b| BatchSize { name: b.name.clone(), nodes: b.nodes.len() }).collect(),
            steps: graph.len(),
            done: dispatch.done_count(),
            nodes_done: dispatch.nodes_done(),
            resumed: !replay.records.is_empty(),
        });
        let run_started = tokio::time::Instant::now();
        let mut running: JoinSet<Joined> = JoinSet::new();
        let mut lost = self.guard.lost.clone();
        let mut poll = tokio::time::interval(APPROVAL_POLL);
        let mut interrupt = std::pin::pin!(interrupt);
        let mut announced_wait: Option<jiff::Timestamp> = None;
        // Set once `noderoll abort` asks: who asked. The steps that may be cut off are.
        let mut aborting: Option<String> = None;
        let mut cut_off: Vec<String> = Vec::new();
        let mut cancellable: Vec<tokio::task::AbortHandle> = Vec::new();
        // A run that pauses at a window's end first waits for one to open, if none is yet.
        let mut window_seen = false;
        loop {
            let closed = match window_gate(&ctx) {
                Gate::Open => {
                    window_seen = true;
                    None
                }
                Gate::Closed { opens } => Some(opens),
                Gate::Never => {
                    if !dispatch.halting() {
                        dispatch.fail(Failure {
                            step: "window".into(),
                            error: "the maintenance window's cron expression never fires again; fix `window.cron`"
                                .into(),
                        });
                    }
                    None
                }
            };
            let launch = dispatch.launch(closed.is_some(), ctx.plan.window.as_ref());
            for index in launch.steps {
                let step = graph.step(index).clone();
                let resume = replay.in_flight.get(&step.id).cloned();
                let cut_off = stops_for_abort(step.action);
                let handle = running.spawn(run_step(ctx.clone(), index, step, resume));
                if cut_off {
                    cancellable.push(handle);
                }
            }
            if let Some(by) = &aborting
                && running.is_empty()
            {
                ctx.shield.settled().await;
                append(&journal, &Record::Interrupted { at: journal::now() }).await?;
                observer.event(&Event::StoppedForAbort { by: by.clone(), running: cut_off.clone() });
                return Ok(Outcome::StoppedForAbort { by: by.clone() });
            }
            let waiting_for = closed.filter(|_| launch.held && !dispatch.halting());
            if running.is_empty() {
                let Some(opens) = waiting_for else {
                    if let Some(stall) = dispatch.stalled() {
                        dispatch.fail(stall);
                    }
                    break;
                };
                let cordoned = dispatch.cordoned(|node| ctx.cordoned_before(node));
                if options.windows == WindowMode::Pause && window_seen {
                    append(&journal, &Record::Paused { at: journal::now(), opens: opens.to_string() }).await?;
                    observer.event(&Event::Paused {
                        opens: opens.to_string(),
                        cordoned: cordoned.clone(),
                        next: "run the same apply command again in the next window; it resumes where this one stopped"
                            .into(),
                    });
                    return Ok(Outcome::Paused { opens, cordoned });
                }
                if announced_wait != Some(opens) {
                    announced_wait = Some(opens);
                    observer.event(&Event::WaitingForWindow {
                        opens: opens.to_string(),
                        nodes_left: dispatch.nodes_left(),
                        cordoned,
                    });
                }
            }
            let window_opens = ctx.clock.real_until(waiting_for.unwrap_or(jiff::Timestamp::MAX));
            tokio::select! {
                () = tokio::time::sleep(window_opens), if waiting_for.is_some() => {}
                joined = running.join_next(), if !running.is_empty() => {
                    let Some(joined) = joined else { continue };
                    let (index, seconds, result) = match joined {
                        Ok(joined) => joined,
                        // A step cut off for an abort stays in flight in the journal.
                        Err(e) if e.is_cancelled() && aborting.is_some() => continue,
                        Err(e) => {
                            // A step task panicked or was cancelled: treat it as a failure
                            // of an unknown step, which halts the run.
                            dispatch.fail(Failure { step: "(unknown)".into(), error: format!("a step task ended abnormally: {e}") });
                            continue;
                        }
                    };
                    let step = graph.step(index);
                    match result {
                        Ok(detail) => {
                            append(&journal, &Record::StepFinished { at: journal::now(), step: step.id.clone(), detail: detail.clone() }).await?;
                            ctx.finished.lock().unwrap_or_else(|e| e.into_inner()).insert(step.id.clone(), detail);
                            dispatch.finish(index);
                            observer.event(&Event::StepFinished {
                                step: step.id.clone(),
                                node: step.node.clone(),
                                batch: step.batch.clone(),
                                action: step.action,
                                seconds,
                            });
                            if let Some((node, batch)) = last_of.get(&index) {
                                observer.event(&Event::NodeDone { node: node.clone(), batch: batch.clone() });
                            }
                        }
                        Err(error) => {
                            let message = error.to_string();
                            append(&journal, &Record::StepFailed { at: journal::now(), step: step.id.clone(), error: message.clone() }).await?;
                            observer.event(&Event::StepFailed { step: step.id.clone(), node: step.node.clone(), error: message.clone() });
                            if let Verdict::Tolerated { spent, budget } = dispatch.fail_step(index, Failure { step: step.id.clone(), error: message }) {
                                observer.event(&Event::NodeFailed {
                                    node: step.node.clone().unwrap_or_default(),
                                    batch: step.batch.clone().unwrap_or_default(),
                                    step: step.id.clone(),
                                    spent,
                                    budget,
                                });
                            }
                        }
                    }
                }
                _ = poll.tick() => {
                    for request in journal.lock().await.new_requests().await? {
                        match request {
                            Request::Approve(key) => approvals.send_modify(|set| {
                                set.insert(key);
                            }),
                            Request::Abort(by) if aborting.is_none() => {
                                observer.event(&Event::Warning {
                                    message: format!(
                                        "`noderoll abort` was asked by {by}: starting nothing more, stopping the running steps (a running upgrade or verify hook finishes first); the abort then puts the nodes back"
                                    ),
                                });
                                cut_off = dispatch.running();
                                dispatch.stop();
                                for handle in cancellable.drain(..) {
                                    handle.abort();
                                }
                                aborting = Some(by);
                            }
                            Request::Abort(_) => {}
                        }
                    }
                }
                Ok(()) = lost.changed() => {
                    if let Some(holder) = lost.borrow().clone() {
                        dispatch.fail(Failure {
                            step: "lock".into(),
                            error: format!("the lock was taken by `{holder}` while this run held it; stopping before two rollouts race"),
                        });
                    }
                }
                () = &mut interrupt => {
                    let running_steps = dispatch.running();
                    running.shutdown().await;
                    ctx.shield.settled().await;
                    append(&journal, &Record::Interrupted { at: journal::now() }).await?;
                    observer.event(&Event::Interrupted { running: running_steps });
                    return Ok(Outcome::Interrupted);
                }
            }
        }
        let cordoned = dispatch.cordoned(|node| ctx.cordoned_before(node));
        let failures = dispatch.failures().to_vec();
        if dispatch.complete() {
            let record = match failures.is_empty() {
                true => Record::Finished { at: journal::now() },
                false => Record::Incomplete { at: journal::now(), reason: Failure::joined(&failures) },
            };
            append(&journal, &record).await?;
            observer.event(&Event::Finished {
                seconds: run_started.elapsed().as_secs_f64(),
                nodes: planned.chains.len(),
                failed: failures.clone(),
                cordoned: cordoned.clone(),
            });
            return Ok(match failures.is_empty() {
                true => Outcome::Finished,
                false => Outcome::Incomplete { failed: failures, cordoned },
            });
        }
        append(&journal, &Record::Halted { at: journal::now(), reason: Failure::joined(&failures) }).await?;
        observer.event(&Event::Halted {
            failed: failures.clone(),
            cordoned: cordoned.clone(),
            next: "fix what the error says, then run the same apply command again: finished steps are skipped and the failed step is retried".into(),
        });
        Ok(Outcome::Halted { failed: failures, cordoned })
    }
}

/// Whether a running step may be cut off when an abort is asked: every step but the hooks,
/// whose commands on the node must not stop half-way. The others only wait, or make one
/// change that the journal's start record lets the abort judge.
fn stops_for_abort(action: Action) -> bool {
    !matches!(action, Action::Upgrade | Action::Verify)
}

/// The maintenance window as the loop sees it.
enum Gate {
    /// No window, windows not awaited, or the window is open.
    Open,
    /// Closed until `opens`.
    Closed { opens: jiff::Timestamp },
    /// The cron expression never fires again.
    Never,
}

fn window_gate(ctx: &Context) -> Gate {
    let Some(window) = ctx.plan.window.as_ref().filter(|_| ctx.awaits_windows()) else { return Gate::Open };
    match window.state_at(ctx.clock.now()) {
        Some(WindowState::Open { .. }) => Gate::Open,
        Some(WindowState::Closed { opens }) => Gate::Closed { opens },
        None => Gate::Never,
    }
}

pub(super) async fn append(journal: &tokio::sync::Mutex<Store>, record: &Record) -> Result<(), JournalError> {
    journal.lock().await.append(record).await
}

/// One step: prepare and journal its start (unless resuming it), then act.
async fn run_step(ctx: Arc<Context>, index: NodeIndex, step: Step, resume: Option<Value>) -> Joined {
    let started = tokio::time::Instant::now();
    let result = async {
        let resumed = resume.is_some();
        let detail = match resume {
            Some(detail) => detail,
            None => {
                let detail = steps::prepare(&ctx, &step).await?;
                ctx.journal(&Record::StepStarted { at: journal::now(), step: step.id.clone(), detail: detail.clone() })
                    .await?;
                detail
            }
        };
        ctx.observer.event(&Event::StepStarted {
            step: step.id.clone(),
            node: step.node.clone(),
            batch: step.batch.clone(),
            action: step.action,
        });
        steps::act(&ctx, &step, &detail, resumed).await
    }
    .await;
    if result.is_err() {
        steps::show_failed(&ctx, &step).await;
    }
    (index, started.elapsed().as_secs_f64(), result)
}
