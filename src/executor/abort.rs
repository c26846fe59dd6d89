//! `noderoll abort`: stop a rollout and put back what can be put back.
//!
//! The abort is a request in the journal first (`abort-requested`): a running `apply` reads
//! it as it reads approvals, cuts off its waiting steps, lets a running hook finish, and
//! releases the lock. The abort then takes the lock (a holder that is gone is taken over as
//! `apply` takes it over) and judges each node from the journal:
//!
//! - its upgrade has not begun: it is put back. It is uncordoned (unless it was cordoned
//!   before the rollout), its BGP label and DNS record return (never onto a node that is
//!   not Ready), and its steps are forgotten, so a later run starts it over;
//! - it was uncordoned after its upgrade: its chain's own restore steps are finished;
//! - its upgrade began and it is not back: it stays cordoned and out of DNS (it may be
//!   down, or come back changed), and is named with the step it reached.
//!
//! Every node's putting back is journaled before it acts (`restoring`, with what its steps
//! had journaled) and after (`restored`), so an abort killed half-way is run again and
//! finishes. `aborted` ends it; `apply` will not start on an aborted journal without
//! `--resume-aborted`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use super::event::{Event, Observer};
use super::journal::{self, AbortState, LeftNode, Record, Replay, Request};
use super::journal_store::{self, Store};
use super::lock::{self, LockError};
use super::run::{Runner, append};
use super::steps::{self, Context};
use super::{ExecError, Options, Rollout};
use crate::planner::build::NodeChain;
use crate::planner::{Action, Planned, Step, node_step_id};
use crate::world::dns::DnsProvider;

/// How often the abort asks for the lock while the running `apply` stops.
const LOCK_POLL: Duration = Duration::from_secs(1);
/// How often it reads approvals (of a manual DNS change) while it puts a record back.
const APPROVAL_POLL: Duration = Duration::from_millis(250);
/// Nodes whose phase label is taken off at once.
const CONCURRENT_LABELS: usize = 32;

/// What the abort does with one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Treatment {
    /// Its upgrade has not begun: back into service, its steps forgotten. `steps` is what
    /// they had journaled, by step id.
    PutBack {
        /// Journaled detail of the node's steps that began.
        steps: BTreeMap<String, Value>,
    },
    /// Uncordoned after its upgrade: its restore steps left (BGP label, DNS record) run.
    Finish {
        /// Those steps' ids.
        steps: Vec<String>,
    },
    /// Its upgrade began and it is not back: it stays cordoned and out of DNS.
    Leave(LeftNode),
}

/// How an abort ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum AbortOutcome {
    /// This abort put the nodes back.
    Aborted {
        /// Who asked.
        by: String,
        /// The nodes put back.
        restored: Vec<String>,
        /// The nodes left out of service.
        left: Vec<LeftNode>,
    },
    /// An earlier abort finished already; nothing was done.
    AlreadyAborted {
        /// When it finished.
        at: String,
        /// The nodes it left out of service.
        left: Vec<LeftNode>,
    },
    /// The rollout had finished; there is nothing to put back.
    Finished,
}

/// What the abort does with each node the journal shows touched, in plan order. Pure: the
/// journal's replay and the planned graph decide it.
pub fn treatments(planned: &Planned, replay: &Replay) -> Vec<(String, Treatment)> {
    let graph = &planned.graph;
    let mut out = Vec::new();
    for chain in &planned.chains {
        let node = &chain.node;
        if let Some(steps) = replay.restoring.get(node) {
            out.push((node.clone(), Treatment::PutBack { steps: steps.clone() }));
            continue;
        }
        let ids: Vec<&str> = chain.steps.iter().map(|i| graph.step(*i).id.as_str()).collect();
        let began = |id: &str| {
            replay.finished.contains_key(id) || replay.in_flight.contains_key(id) || replay.failed.contains_key(id)
        };
        if !ids.iter().any(|id| began(id)) || replay.finished.contains_key(*ids.last().unwrap_or(&"")) {
            continue;
        }
        let upgrade = node_step_id(node, Action::Upgrade);
        if !began(&upgrade) {
            let steps = ids
                .iter()
                .filter(|id| began(id))
                .map(|id| {
                    let detail = replay.finished.get(*id).or_else(|| replay.in_flight.get(*id));
                    ((*id).to_owned(), detail.cloned().unwrap_or(Value::Null))
                })
                .collect();
            out.push((node.clone(), Treatment::PutBack { steps }));
        } else if replay.finished.contains_key(&node_step_id(node, Action::Uncordon)) {
            let steps = after_uncordon(planned, chain).filter(|s| !replay.finished.contains_key(&s.id));
            out.push((node.clone(), Treatment::Finish { steps: steps.map(|s| s.id.clone()).collect() }));
        } else {
            let reached = ids.iter().rev().find(|id| began(id)).copied().unwrap_or_default();
            let state = match (replay.failed.get(reached), replay.in_flight.contains_key(reached)) {
                (Some(error), _) => format!("failed: {error}"),
                (None, true) => "cut off".to_owned(),
                (None, false) => "finished".to_owned(),
            };
            out.push((
                node.clone(),
                Treatment::Leave(LeftNode { node: node.clone(), step: reached.to_owned(), state }),
            ));
        }
    }
    out
}

/// The chain's steps after its uncordon: the restores of its BGP label and DNS record.
fn after_uncordon<'p>(planned: &'p Planned, chain: &'p NodeChain) -> impl Iterator<Item = &'p Step> {
    chain.steps.iter().map(|i| planned.graph.step(*i)).skip_while(|s| s.action != Action::Uncordon).skip(1)
}

/// Stops the rollout of `rollout`'s journal and puts back what can be put back; waits up to
/// `wait` for a running `apply` to stop.
pub async fn abort(
    client: kube::Client,
    rollout: Rollout,
    options: &Options,
    dns: Option<Arc<dyn DnsProvider>>,
    observer: Arc<dyn Observer>,
    wait: Duration,
) -> Result<AbortOutcome, ExecError> {
    let replay = journal_store::read(&options.journal, &client, &options.patience).await?;
    if replay.records.is_empty() {
        return Err(ExecError::NothingToAbort { journal: options.journal.to_string() });
    }
    super::check_plan(&replay, &rollout.text, options)?;
    match &replay.abort {
        Some(AbortState::Done { at, left, .. }) if replay.restoring.is_empty() => {
            return Ok(AbortOutcome::AlreadyAborted { at: at.clone(), left: left.clone() });
        }
        _ if replay.complete => return Ok(AbortOutcome::Finished),
        Some(AbortState::Requested { .. }) => {}
        _ => {
            let record = Record::AbortRequested { at: journal::now(), by: lock::holder_identity() };
            journal_store::append_once(&options.journal, &client, &options.patience, &record).await?;
        }
    }
    let guard = take_lock(&client, options, &rollout.plan.name, wait, observer.as_ref()).await?;
    let runner = Runner { client, options, dns, observer, guard: &guard };
    let result = put_back(&runner, rollout).await;
    guard.release().await;
    result
}

/// Takes the plan's lock, waiting up to `wait` while a live holder stops.
async fn take_lock(
    client: &kube::Client,
    options: &Options,
    plan: &str,
    wait: Duration,
    observer: &dyn Observer,
) -> Result<lock::LockGuard, ExecError> {
    let holder = lock::holder_identity();
    let started = tokio::time::Instant::now();
    let mut announced = None;
    loop {
        let taken = lock::acquire(
            client.clone(),
            &options.lock_namespace,
            plan,
            &holder,
            options.break_lock,
            &options.patience,
        )
        .await;
        match taken {
            Ok((guard, _)) => return Ok(guard),
            Err(LockError::Held { holder, .. }) if started.elapsed() < wait => {
                if announced.as_ref() != Some(&holder) {
                    observer.event(&Event::WaitingForHolder { holder: holder.clone() });
                    announced = Some(holder);
                }
                tokio::time::sleep(LOCK_POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Holding the lock: judges every node from the journal and acts on it.
async fn put_back(runner: &Runner<'_>, rollout: Rollout) -> Result<AbortOutcome, ExecError> {
    let options = runner.options;
    let replay = journal_store::read(&options.journal, &runner.client, &options.patience).await?;
    let by = match &replay.abort {
        Some(AbortState::Requested { by, .. } | AbortState::Done { by, .. }) => by.clone(),
        None => lock::holder_identity(),
    };
    let store = Store::open(&options.journal, &runner.client, &options.patience, &replay).await?;
    let journal = Arc::new(tokio::sync::Mutex::new(store));
    // What the putting back reads (was a node cordoned before, the BGP label's value) is in
    // its steps' records, finished or cut off.
    let mut known = replay.finished.clone();
    known.extend(replay.in_flight.clone());
    for steps in replay.restoring.values() {
        known.extend(steps.clone());
    }
    let (approvals, approved) = watch::channel(replay.approved.clone());
    let planned = rollout.planned.clone();
    let ctx = runner.context(rollout.plan, &planned, journal.clone(), known, approved);
    let poller = tokio::spawn(forward_approvals(journal.clone(), approvals));
    let result = act_on_nodes(&ctx, &planned, &replay, &by).await;
    poller.abort();
    let (restored, left) = result?;
    append(
        &journal,
        &Record::Aborted { at: journal::now(), by: by.clone(), restored: restored.clone(), left: left.clone() },
    )
    .await?;
    runner.observer.event(&Event::Aborted { by: by.clone(), restored: restored.clone(), left: left.clone() });
    Ok(AbortOutcome::Aborted { by, restored, left })
}

/// Feeds approvals appended meanwhile (a manual DNS change made) to the putting back.
async fn forward_approvals(journal: Arc<tokio::sync::Mutex<Store>>, approvals: watch::Sender<BTreeSet<String>>) {
    loop {
        tokio::time::sleep(APPROVAL_POLL).await;
        let Ok(requests) = journal.lock().await.new_requests().await else { continue };
        for request in requests {
            if let Request::Approve(key) = request {
                approvals.send_modify(|set| {
                    set.insert(key);
                });
            }
        }
    }
}

/// Acts on each node as [`treatments`] says; returns the nodes put back and those left.
async fn act_on_nodes(
    ctx: &Context,
    planned: &Planned,
    replay: &Replay,
    by: &str,
) -> Result<(Vec<String>, Vec<LeftNode>), ExecError> {
    let mut restored = Vec::new();
    let mut left = Vec::new();
    let mut treated = BTreeSet::new();
    for (node, treatment) in treatments(planned, replay) {
        treated.insert(node.clone());
        let chain = planned.chains.iter().find(|c| c.node == node).ok_or_else(|| ExecError::NothingToAbort {
            journal: format!("{} (node {node} is not in the plan)", ctx.plan.name),
        })?;
        match treatment {
            Treatment::PutBack { steps } => {
                ctx.journal(&Record::Restoring { at: journal::now(), node: node.clone(), steps: steps.clone() })
                    .await
                    .map_err(restore_failed(&node))?;
                let actions = put_back_node(ctx, planned, chain, &steps).await.map_err(restore_failed(&node))?;
                ctx.journal(&Record::Restored { at: journal::now(), node: node.clone(), actions: actions.clone() })
                    .await
                    .map_err(restore_failed(&node))?;
                ctx.observer.event(&Event::NodeRestored { node: node.clone(), actions });
                restored.push(node);
            }
            Treatment::Finish { steps } => {
                let actions = finish_node(ctx, planned, &node, &steps).await.map_err(restore_failed(&node))?;
                ctx.observer.event(&Event::NodeRestored { node: node.clone(), actions });
                restored.push(node);
            }
            Treatment::Leave(node_left) => {
                steps::clear_phase(ctx, &node).await;
                left.push(node_left);
            }
        }
    }
    // Nodes a batch queued whose turn had not come still carry the queued label.
    let queued: Vec<&String> = planned
        .batches
        .iter()
        .filter(|b| batch_began(planned, replay, &b.name))
        .flat_map(|b| &b.nodes)
        .filter(|n| !treated.contains(*n))
        .collect();
    futures::stream::iter(queued).for_each_concurrent(CONCURRENT_LABELS, |node| steps::clear_phase(ctx, node)).await;
    tracing::info!(by, restored = restored.len(), left = left.len(), "abort done");
    Ok((restored, left))
}

fn restore_failed(node: &str) -> impl Fn(steps::StepError) -> ExecError + '_ {
    move |source| ExecError::Restore { node: node.to_owned(), source: Box::new(source) }
}

/// Whether the batch's start gate ran (it shows the batch's nodes as queued).
fn batch_began(planned: &Planned, replay: &Replay, batch: &str) -> bool {
    planned.graph.steps().any(|(_, s)| {
        s.action == Action::BatchStart
            && s.batch.as_deref() == Some(batch)
            && (replay.finished.contains_key(&s.id) || replay.in_flight.contains_key(&s.id))
    })
}

/// The chain's step for `action`, if it has one.
fn step_of<'p>(planned: &'p Planned, chain: &NodeChain, action: Action) -> Option<&'p Step> {
    chain.steps.iter().map(|i| planned.graph.step(*i)).find(|s| s.action == action)
}

/// Puts a node whose upgrade had not begun back: the BGP label, the uncordon, the DNS
/// record, each only if the matching step had begun. Returns what was done.
async fn put_back_node(
    ctx: &Context,
    planned: &Planned,
    chain: &NodeChain,
    steps: &BTreeMap<String, Value>,
) -> Result<Vec<String>, steps::StepError> {
    let node = &chain.node;
    let began = |action| steps.contains_key(&node_step_id(node, action));
    let mut actions = Vec::new();
    if began(Action::BgpWithdraw)
        && let Some(step) = step_of(planned, chain, Action::BgpRestore)
    {
        steps::act(ctx, step, &Value::Null, false).await?;
        actions.push("BGP label restored".to_owned());
    }
    match step_of(planned, chain, Action::Uncordon).filter(|_| began(Action::Cordon)) {
        Some(step) if steps::uncordon_for_abort(ctx, step).await? => {
            actions.push("left cordoned: it was cordoned before the rollout".to_owned());
        }
        Some(_) => actions.push("uncordoned".to_owned()),
        None => steps::clear_phase(ctx, node).await,
    }
    if (began(Action::DnsWithdraw) || began(Action::DnsRepoint))
        && let Some(step) = step_of(planned, chain, Action::DnsRestore)
    {
        actions.push(restore_record(ctx, step).await?);
    }
    if actions.is_empty() {
        actions.push("nothing had changed yet".to_owned());
    }
    Ok(actions)
}

/// Runs a node's restore steps left after its uncordon, journaled as the rollout's own.
async fn finish_node(
    ctx: &Context,
    planned: &Planned,
    node: &str,
    ids: &[String],
) -> Result<Vec<String>, steps::StepError> {
    let mut actions = Vec::new();
    for id in ids {
        let Some((_, step)) = planned.graph.steps().find(|(_, s)| s.id == *id) else { continue };
        if step.action == Action::DnsRestore && !steps::node_ready(ctx, node).await? {
            actions.push(format!("{id} left: {node} is not Ready, so the DNS record does not point at it"));
            continue;
        }
        let detail = steps::prepare(ctx, step).await?;
        ctx.journal(&Record::StepStarted { at: journal::now(), step: id.clone(), detail: detail.clone() }).await?;
        let done = steps::act(ctx, step, &detail, false).await?;
        ctx.journal(&Record::StepFinished { at: journal::now(), step: id.clone(), detail: done }).await?;
        actions.push(format!("{id} finished"));
    }
    Ok(actions)
}

/// Puts the node's DNS record back if the node is Ready; says what became of it.
async fn restore_record(ctx: &Context, step: &Step) -> Result<String, steps::StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    if !steps::node_ready(ctx, node).await? {
        return Ok("DNS record left without it: the node is not Ready".to_owned());
    }
    steps::act(ctx, step, &Value::Null, false).await?;
    Ok("DNS record restored".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned() -> Planned {
        let path = format!("{}/plans/servicelb-round-robin.yaml", env!("CARGO_MANIFEST_DIR"));
        let plan = crate::plan::check_file(std::path::Path::new(&path)).plan.expect("the example plan is valid");
        crate::planner::build(&plan).expect("it plans")
    }

    fn replay(records: &[Record]) -> Replay {
        journal::replay_after_begin(&[], records)
    }

    fn started(step: &str, detail: Value) -> Record {
        Record::StepStarted { at: "t".into(), step: step.into(), detail }
    }

    fn finished(step: &str) -> Record {
        Record::StepFinished { at: "t".into(), step: step.into(), detail: serde_json::json!({"of": step}) }
    }

    fn failed(step: &str) -> Record {
        Record::StepFailed { at: "t".into(), step: step.into(), error: "boom".into() }
    }

    /// Starts and finishes each step.
    fn done(steps: &[&str]) -> Vec<Record> {
        steps.iter().flat_map(|s| [started(s, Value::Null), finished(s)]).collect()
    }

    fn kinds(treatments: &[(String, Treatment)]) -> Vec<(String, String)> {
        treatments
            .iter()
            .map(|(node, t)| {
                let kind = match t {
                    Treatment::PutBack { steps } => format!("put back {:?}", steps.keys().collect::<Vec<_>>()),
                    Treatment::Finish { steps } => format!("finish {steps:?}"),
                    Treatment::Leave(left) => format!("leave at {} ({})", left.step, left.state),
                };
                (node.clone(), kind)
            })
            .collect()
    }

    #[test]
    fn nodes_before_their_upgrade_are_put_back_those_after_it_left_and_uncordoned_ones_finished() {
        let mut records = done(&[
            "cp1/dns-withdraw",
            "cp1/cordon",
            "cp1/drain",
            "cp1/upgrade",
            "cp1/wait-ready",
            "cp1/verify",
            "cp1/uncordon",
        ]);
        records.push(started("cp1/dns-restore", Value::Null));
        records.extend(done(&["ws01/cordon", "ws01/wait-sessions", "ws01/drain"]));
        records.push(started("ws01/upgrade", Value::Null));
        records.extend(done(&["ws02/cordon"]));
        records.push(started("ws02/wait-sessions", serde_json::json!({"cut": true})));
        records.extend(done(&["ws03/cordon", "ws03/wait-sessions", "ws03/drain", "ws03/upgrade"]));
        records.push(failed("ws03/wait-ready"));
        records.push(failed("ws04/cordon"));
        let got = kinds(&treatments(&planned(), &replay(&records)));
        let want = [
            ("cp1", r#"finish ["cp1/dns-restore"]"#),
            ("ws01", "leave at ws01/upgrade (cut off)"),
            ("ws02", r#"put back ["ws02/cordon", "ws02/wait-sessions"]"#),
            ("ws03", "leave at ws03/wait-ready (failed: boom)"),
            ("ws04", r#"put back ["ws04/cordon"]"#),
        ];
        assert_eq!(got, want.map(|(n, k)| (n.to_owned(), k.to_owned())));
    }

    #[test]
    fn a_put_back_node_keeps_what_its_steps_journaled_finished_or_cut_off() {
        let mut records = done(&["ws02/cordon"]);
        records.push(started("ws02/wait-sessions", serde_json::json!({"cut": true})));
        let got = treatments(&planned(), &replay(&records));
        let Treatment::PutBack { steps } = &got[0].1 else { panic!("{got:?}") };
        assert_eq!(steps["ws02/cordon"], serde_json::json!({"of": "ws02/cordon"}));
        assert_eq!(steps["ws02/wait-sessions"], serde_json::json!({"cut": true}));
    }

    #[test]
    fn finished_untouched_and_already_put_back_nodes_are_left_alone_and_a_half_done_put_back_is_redone() {
        let all = [
            "cp2/dns-withdraw",
            "cp2/cordon",
            "cp2/drain",
            "cp2/upgrade",
            "cp2/wait-ready",
            "cp2/verify",
            "cp2/uncordon",
            "cp2/dns-restore",
        ];
        let mut records = done(&all);
        records.extend(done(&["ws05/cordon"]));
        let steps = BTreeMap::from([("ws05/cordon".to_owned(), serde_json::json!({"wasCordoned": false}))]);
        records.push(Record::Restoring { at: "t".into(), node: "ws05".into(), steps: steps.clone() });
        records.extend(done(&["ws06/cordon"]));
        let ws06 = BTreeMap::from([("ws06/cordon".to_owned(), serde_json::json!({"wasCordoned": false}))]);
        records.push(Record::Restoring { at: "t".into(), node: "ws06".into(), steps: ws06 });
        records.push(Record::Restored { at: "t".into(), node: "ws06".into(), actions: vec![] });
        let replay = replay(&records);
        assert!(!replay.finished.contains_key("ws05/cordon"), "a node being put back has its steps forgotten");
        let got = treatments(&planned(), &replay);
        assert_eq!(got, [("ws05".to_owned(), Treatment::PutBack { steps })], "cp2 is done, ws06 put back already");
    }

    #[test]
    fn the_journal_tells_an_abort_asked_from_one_done_and_a_new_begin_forgets_both() {
        let asked = replay(&[Record::AbortRequested { at: "t1".into(), by: "me".into() }]);
        assert_eq!(asked.abort, Some(AbortState::Requested { at: "t1".into(), by: "me".into() }));
        let left = vec![LeftNode { node: "ws01".into(), step: "ws01/upgrade".into(), state: "finished".into() }];
        let aborted = Record::Aborted { at: "t2".into(), by: "me".into(), restored: vec![], left: left.clone() };
        let done = replay(&[Record::AbortRequested { at: "t1".into(), by: "me".into() }, aborted.clone()]);
        assert_eq!(done.abort, Some(AbortState::Done { at: "t2".into(), by: "me".into(), restored: vec![], left }));
        let begin = Record::Begin {
            at: "t3".into(),
            plan: "p".into(),
            plan_hash: "h".into(),
            plan_text: String::new(),
            holder: "me".into(),
            batches: vec![],
        };
        assert_eq!(replay(&[aborted, begin]).abort, None, "apply --resume-aborted begins anew");
    }
}
