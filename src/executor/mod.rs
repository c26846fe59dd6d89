//! The executor: the only part of noderoll that changes the world. It runs the planner's
//! step graph against a Kubernetes API server (a real cluster or the simulator; there is no
//! other code path), with as many steps at once as the graph's edges allow.
//!
//! Safety comes from the order of writes: a step's start is fsync'd to the journal before
//! it acts and its finish after, so a run killed at any instant resumes by skipping what is
//! finished and acting again (idempotently) on what was in flight. On a failure no new node
//! is started, nodes already out of service finish their chains, and the failed node stays
//! cordoned, with the journal and the halt report saying so.
//!
//! - [`journal`]: the checkpoint file; [`lock`]: the per-plan Lease; [`retry`]: API trouble.
//! - [`steps`]: what each action does; [`event`]: what the run reports.

pub mod clock;
pub mod event;
pub mod journal;
pub mod journal_store;
pub mod lock;
pub mod retry;
pub mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use petgraph::graph::NodeIndex;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::event::{BatchSize, Event, Failure, Observer};
use self::journal::{JournalError, Record};
use self::journal_store::Store;
use self::lock::LockError;
use self::retry::Patience;
use self::steps::{Context, HookSettings, StepError, WindowMode};
use crate::dns::DnsProvider;
use crate::plan::Plan;
use crate::plan::model::WindowEndPolicy;
use crate::plan::resolved::{WindowPlan, WindowState};
use crate::planner::{self, Action, Inventory, Planned, PlannerError, Step};

/// How to run a rollout.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the journal is: a file, or a ConfigMap for a run inside the cluster.
    pub journal: journal_store::Location,
    /// Accept a journal written for a different version of the plan.
    pub force: bool,
    /// Take the lock from a live holder.
    pub break_lock: bool,
    /// Namespace of the lock Lease.
    pub lock_namespace: String,
    /// Plan time (the wall clock for a real rollout).
    pub clock: clock::Clock,
    /// Retry budget of one API call.
    pub patience: Patience,
    /// Whether to wait for maintenance windows.
    pub windows: WindowMode,
    /// Hook logs, environment and overrides.
    pub hooks: HookSettings,
    /// Read quorum from the plan's etcd endpoints (a rehearsal's cluster has no etcd: its
    /// gate counts Ready etcd-role nodes instead).
    pub read_etcd: bool,
    /// Ask the plan's resolvers whether each DNS change took effect (a rehearsal's record
    /// lives in memory, where no resolver can see it).
    pub ask_resolvers: bool,
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
    /// SIGINT or SIGTERM.
    Interrupted,
    /// The maintenance window closed (or was not open) and the nodes in progress are done;
    /// only with [`WindowMode::Pause`]. The next run resumes.
    Paused {
        /// When the next window opens.
        opens: jiff::Timestamp,
        /// Nodes left cordoned (only with `onWindowEnd: halt`).
        cordoned: Vec<String>,
    },
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
    /// The plan names nodes the cluster does not have.
    #[error(
        "the cluster has no node named {}; fix the plan's node names (or check the kubeconfig points at the right cluster)", .nodes.join(", ")
    )]
    MissingNodes {
        /// The nodes.
        nodes: Vec<String>,
    },
    /// The plan cannot be turned into steps for this cluster.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// etcd's client cannot be set up (TLS files).
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// The DNS record is not what the plan describes, or cannot be read; nothing changed.
    #[error("before the rollout: {0}")]
    Preflight(StepError),
    /// The HTTPS client for the health gate's Prometheus cannot be set up.
    #[error("cannot set up the HTTPS client for Prometheus: {0}")]
    Http(#[from] crate::http_client::HttpError),
    /// Reading the cluster failed.
    #[error("cannot {context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The cause.
        source: kube::Error,
    },
}

/// Nodes per page when listing the cluster's nodes (kubectl's chunk size).
const NODE_PAGE: u32 = 500;

/// SHA-256 of the plan's bytes, as the journal records it.
pub fn plan_hash(text: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// The cluster's nodes and their labels.
pub async fn inventory(client: &kube::Client, patience: &Patience) -> Result<Inventory, ExecError> {
    let api: Api<Node> = Api::all(client.clone());
    // In pages, as kubectl lists: a facility's whole node list decoded at once is tens of
    // megabytes of Node objects, of which only names and labels are kept.
    let mut nodes = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = kube::api::ListParams::default().limit(NODE_PAGE);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = retry::call(patience, || api.list(&params))
            .await
            .map_err(|source| ExecError::Api { context: "list the cluster's nodes".into(), source })?;
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        nodes.extend(
            page.items
                .into_iter()
                .map(|n| (n.metadata.name.unwrap_or_default(), n.metadata.labels.unwrap_or_default())),
        );
        if token.is_none() {
            break;
        }
    }
    Ok(Inventory { nodes, ..Inventory::default() })
}

/// Plans against the live cluster: selectors resolved, every named node present.
pub async fn plan_for_cluster(
    client: &kube::Client,
    plan: &Plan,
    patience: &Patience,
) -> Result<(Planned, Inventory), ExecError> {
    let inventory = inventory(client, patience).await?;
    let planned = planner::build_with(plan, Some(&inventory))?;
    let missing: Vec<String> =
        planned.chains.iter().filter(|c| !inventory.nodes.contains_key(&c.node)).map(|c| c.node.clone()).collect();
    if !missing.is_empty() {
        return Err(ExecError::MissingNodes { nodes: missing });
    }
    Ok((planned, inventory))
}

/// Runs (or resumes) a rollout until it finishes, halts or `interrupt` fires.
pub async fn apply(
    client: kube::Client,
    plan: Plan,
    plan_text: &str,
    options: &Options,
    dns: Option<Arc<dyn DnsProvider>>,
    observer: Arc<dyn Observer>,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome, ExecError> {
    let replay = journal_store::read(&options.journal, &client, &options.patience).await?;
    let hash = plan_hash(plan_text);
    if let (Some(recorded), Some(text)) = (&replay.plan_hash, &replay.plan_text)
        && *recorded != hash
        && !options.force
    {
        let diff = similar::TextDiff::from_lines(text.as_str(), plan_text)
            .unified_diff()
            .context_radius(2)
            .header("plan in the journal", "plan now")
            .to_string();
        return Err(ExecError::PlanChanged { journal: options.journal.to_string(), diff });
    }
    let holder = lock::holder_identity();
    let (guard, taken) = lock::acquire(
        client.clone(),
        &options.lock_namespace,
        &plan.name,
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
    let result = run(client, plan, plan_text, hash, replay, options, dns, observer, &guard, interrupt).await;
    guard.release().await;
    result
}

#[allow(clippy::too_many_arguments, reason = "one call site; the arguments are the run's parts")]
async fn run(
    client: kube::Client,
    plan: Plan,
    plan_text: &str,
    hash: String,
    replay: journal::Replay,
    options: &Options,
    dns: Option<Arc<dyn DnsProvider>>,
    observer: Arc<dyn Observer>,
    guard: &lock::LockGuard,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome, ExecError> {
    let (planned, _) = plan_for_cluster(&client, &plan, &options.patience).await?;
    if let Some(provider) = &dns {
        let resumed = !replay.finished.is_empty();
        steps::dns_preflight(&client, &options.patience, &plan, &planned, provider.as_ref(), resumed)
            .await
            .map_err(ExecError::Preflight)?;
    }
    let mut journal = Store::open(&options.journal, &client, &options.patience, &replay).await?;
    journal
        .append(&Record::Begin {
            at: journal::now(),
            plan: plan.name.clone(),
            plan_hash: hash,
            plan_text: plan_text.to_owned(),
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
        Some(settings) if options.read_etcd => Some(crate::etcd::Etcd::new(settings)?),
        _ => None,
    };
    let (approvals, approved) = watch::channel(replay.approved.clone());
    let http = match plan.health.as_ref().and_then(|h| h.prometheus.as_ref()) {
        Some(_) => Some(crate::http_client::HttpClient::new()?),
        None => None,
    };
    let plan_dns_resolvers = plan.load_balancer.dns.as_ref().map(|d| d.resolvers.clone());
    let ctx = Arc::new(Context {
        client,
        plan: Arc::new(plan),
        patience: options.patience.clone(),
        etcd,
        clock: options.clock,
        observer: observer.clone(),
        dns,
        resolvers: match &plan_dns_resolvers {
            Some(resolvers) if options.ask_resolvers => resolvers.clone(),
            _ => Vec::new(),
        },
        hooks: options.hooks.clone(),
        windows: options.windows,
        batches: planned.batches.clone(),
        http,
        approved,
        chain_starts: planned.chains.iter().map(|c| planned.graph.step(c.first()).id.clone()).collect(),
        finished: Mutex::new(replay.finished.clone()),
    });
    let graph = &planned.graph;
    let last_of: BTreeMap<NodeIndex, (String, String)> =
        planned.chains.iter().map(|c| (c.last(), (c.node.clone(), planned.batches[c.batch].name.clone()))).collect();
    let first_of: BTreeSet<NodeIndex> = planned.chains.iter().map(|c| c.first()).collect();

    let mut done: Vec<bool> = graph.steps().map(|(_, s)| replay.finished.contains_key(&s.id)).collect();
    let mut waiting: Vec<usize> =
        graph.steps().map(|(i, _)| graph.predecessors(i).iter().filter(|p| !done[p.index()]).count()).collect();
    let mut launched: Vec<bool> = done.clone();
    let mut started_nodes: BTreeSet<String> = graph
        .steps()
        .filter(|(_, s)| {
            replay.finished.contains_key(&s.id)
                || replay.in_flight.contains_key(&s.id)
                || replay.failed.contains_key(&s.id)
        })
        .filter_map(|(_, s)| s.node.clone())
        .collect();
    let finished_count = done.iter().filter(|d| **d).count();
    observer.event(&Event::Started {
        plan: ctx.plan.name.clone(),
        journal: options.journal.to_string(),
        batches: planned.batches.iter().map(|b| BatchSize { name: b.name.clone(), nodes: b.nodes.len() }).collect(),
        steps: graph.len(),
        done: finished_count,
        nodes_done: planned.chains.iter().filter(|c| done[c.last().index()]).count(),
        resumed: !replay.records.is_empty(),
    });
    let run_started = tokio::time::Instant::now();
    let mut running: JoinSet<(NodeIndex, f64, Result<Value, StepError>)> = JoinSet::new();
    let mut halting = false;
    let mut failures: Vec<Failure> = Vec::new();
    let mut lost = guard.lost.clone();
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    let mut interrupt = std::pin::pin!(interrupt);
    let mut announced_wait: Option<jiff::Timestamp> = None;
    // A run that pauses at a window's end first waits for one to open, if none is yet.
    let mut window_seen = false;
    loop {
        let closed = match window_gate(&ctx, options.windows) {
            Gate::Open => {
                window_seen = true;
                None
            }
            Gate::Closed { opens } => Some(opens),
            Gate::Never => {
                if !halting {
                    failures.push(Failure {
                        step: "window".into(),
                        error: "the maintenance window's cron expression never fires again; fix `window.cron`".into(),
                    });
                    halting = true;
                }
                None
            }
        };
        let mut held = false;
        for (index, step) in graph.steps() {
            let i = index.index();
            if launched[i] || waiting[i] > 0 {
                continue;
            }
            let node_started = step.node.as_ref().is_some_and(|n| started_nodes.contains(n));
            if halting && (step.node.is_none() || (first_of.contains(&index) && !node_started)) {
                continue;
            }
            if closed.is_some() && held_by_window(step, node_started, ctx.plan.window.as_ref()) {
                held = true;
                continue;
            }
            launched[i] = true;
            if let Some(node) = &step.node {
                started_nodes.insert(node.clone());
            }
            let resume = replay.in_flight.get(&step.id).cloned();
            running.spawn(run_step(ctx.clone(), journal.clone(), index, step.clone(), resume));
        }
        let waiting_for = closed.filter(|_| held && !halting);
        if running.is_empty() {
            let Some(opens) = waiting_for else { break };
            let cordoned = cordoned_nodes(&planned, &launched, &done);
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
                    nodes_left: planned.chains.iter().filter(|c| !done[c.last().index()]).count(),
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
                    Ok(pair) => pair,
                    Err(e) => {
                        // A step task panicked or was cancelled: treat it as a failure of
                        // an unknown step, which halts the run.
                        failures.push(Failure { step: "(unknown)".into(), error: format!("a step task ended abnormally: {e}") });
                        halting = true;
                        continue;
                    }
                };
                let step = graph.step(index);
                match result {
                    Ok(detail) => {
                        append(&journal, &Record::StepFinished { at: journal::now(), step: step.id.clone(), detail: detail.clone() }).await?;
                        ctx.finished.lock().unwrap_or_else(|e| e.into_inner()).insert(step.id.clone(), detail);
                        done[index.index()] = true;
                        for next in graph.successors(index) {
                            waiting[next.index()] -= 1;
                        }
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
                        failures.push(Failure { step: step.id.clone(), error: message });
                        halting = true;
                    }
                }
            }
            _ = poll.tick() => {
                let new = journal.lock().await.new_approvals().await?;
                if !new.is_empty() {
                    approvals.send_modify(|set| set.extend(new));
                }
            }
            Ok(()) = lost.changed() => {
                if let Some(holder) = lost.borrow().clone() {
                    failures.push(Failure {
                        step: "lock".into(),
                        error: format!("the lock was taken by `{holder}` while this run held it; stopping before two rollouts race"),
                    });
                    halting = true;
                }
            }
            () = &mut interrupt => {
                let running_steps: Vec<String> = graph.steps().filter(|(i, _)| launched[i.index()] && !done[i.index()]).map(|(_, s)| s.id.clone()).collect();
                running.shutdown().await;
                append(&journal, &Record::Interrupted { at: journal::now() }).await?;
                observer.event(&Event::Interrupted { running: running_steps });
                return Ok(Outcome::Interrupted);
            }
        }
    }
    if failures.is_empty() && done.iter().all(|d| *d) {
        append(&journal, &Record::Finished { at: journal::now() }).await?;
        observer.event(&Event::Finished { seconds: run_started.elapsed().as_secs_f64(), nodes: planned.chains.len() });
        return Ok(Outcome::Finished);
    }
    let cordoned = cordoned_nodes(&planned, &launched, &done);
    let reason = failures.iter().map(|f| format!("{}: {}", f.step, f.error)).collect::<Vec<_>>().join("; ");
    append(&journal, &Record::Halted { at: journal::now(), reason }).await?;
    observer.event(&Event::Halted {
        failed: failures.clone(),
        cordoned: cordoned.clone(),
        next: "fix what the error says, then run the same apply command again: finished steps are skipped and the failed step is retried".into(),
    });
    Ok(Outcome::Halted { failed: failures, cordoned })
}

/// Nodes whose cordon step began and whose uncordon step has not finished.
fn cordoned_nodes(planned: &Planned, launched: &[bool], done: &[bool]) -> Vec<String> {
    let graph = &planned.graph;
    planned
        .chains
        .iter()
        .filter(|c| {
            let step_done = |action: Action| c.steps.iter().any(|&s| graph.step(s).action == action && done[s.index()]);
            let cordon_started = c.steps.iter().any(|&s| graph.step(s).action == Action::Cordon && launched[s.index()]);
            cordon_started && !step_done(Action::Uncordon)
        })
        .map(|c| c.node.clone())
        .collect()
}

/// The maintenance window as the loop sees it.
enum Gate {
    /// No window, windows ignored, or the window is open.
    Open,
    /// Closed until `opens`.
    Closed { opens: jiff::Timestamp },
    /// The cron expression never fires again.
    Never,
}

fn window_gate(ctx: &Context, mode: WindowMode) -> Gate {
    let Some(window) = ctx.plan.window.as_ref().filter(|_| mode != WindowMode::Ignore) else { return Gate::Open };
    match window.state_at(ctx.clock.now()) {
        Some(WindowState::Open { .. }) => Gate::Open,
        Some(WindowState::Closed { opens }) => Gate::Closed { opens },
        None => Gate::Never,
    }
}

/// Whether a closed window holds this step back: a batch's window gate, a node's first
/// step, and, with `onWindowEnd: halt`, every step of a node in progress too (it stops
/// where it is, cordoned, until the next window).
fn held_by_window(step: &Step, node_started: bool, window: Option<&WindowPlan>) -> bool {
    let halt = window.is_some_and(|w| w.on_end == WindowEndPolicy::Halt);
    step.action == Action::Window || (step.node.is_some() && (halt || !node_started))
}

async fn append(journal: &tokio::sync::Mutex<Store>, record: &Record) -> Result<(), JournalError> {
    journal.lock().await.append(record).await
}

/// One step: prepare and journal its start (unless resuming it), then act.
async fn run_step(
    ctx: Arc<Context>,
    journal: Arc<tokio::sync::Mutex<Store>>,
    index: NodeIndex,
    step: Step,
    resume: Option<Value>,
) -> (NodeIndex, f64, Result<Value, StepError>) {
    let started = tokio::time::Instant::now();
    let result = async {
        let resumed = resume.is_some();
        let detail = match resume {
            Some(detail) => detail,
            None => {
                let detail = steps::prepare(&ctx, &step).await?;
                append(
                    &journal,
                    &Record::StepStarted { at: journal::now(), step: step.id.clone(), detail: detail.clone() },
                )
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
    (index, started.elapsed().as_secs_f64(), result)
}
