//! What each step does to the cluster. Every step is split in two: `prepare` reads what a
//! resume needs to judge the step (written to the journal before acting), and `act` does
//! the work. Both are idempotent, so a step found in flight after a crash is simply acted
//! on again with the detail recorded the first time.

mod bgp;
mod dns;
mod drain;
mod gates;
mod health;
mod hook;
mod l2;
mod node;
mod ready;
mod sessions;
mod shield;
mod soak;
mod stranding;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use dns::{full_record, preflight as dns_preflight};
pub use hook::HookSettings;
pub(crate) use node::cordoned_before;

use self::node::Phase;
pub use self::shield::Shield;
use super::event::{Event, Observer};
use crate::plan::Plan;
use crate::plan::model::AlreadyCordonedPolicy;
use crate::plan::resolved::BatchPlan;
use crate::planner::{Action, Step};
use crate::world::retry::Patience;

/// Why a step failed. Messages say what was found and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// An API call failed for good (after retries).
    #[error("cannot {context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A wait ran out of time.
    #[error("{what} did not happen within {after}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The plan's timeout.
        after: String,
        /// What was still in the way.
        detail: String,
    },
    /// The drain cannot or did not evict everything.
    #[error("{0}")]
    Drain(String),
    /// A hook failed.
    #[error("{0}")]
    Hook(String),
    /// A node stopped being healthy while it soaked.
    #[error("{0}")]
    Soak(String),
    /// The node is not what the plan expects after its upgrade.
    #[error("{0}")]
    Verify(String),
    /// A DNS change cannot be made safely.
    #[error(transparent)]
    Dns(#[from] crate::world::dns::DnsError),
    /// The journal cannot be written.
    #[error(transparent)]
    Journal(#[from] super::journal::JournalError),
}

/// Everything a step needs; shared by all running steps.
pub struct Context {
    /// The cluster.
    pub client: kube::Client,
    /// The plan.
    pub plan: Arc<Plan>,
    /// Retry budget for one API call.
    pub patience: Patience,
    /// Plan time: the wall clock for a real rollout; in a rehearsal, the simulator's scale,
    /// so that the plan's timeouts and windows mean the same thing in both.
    pub clock: super::clock::Clock,
    /// Where events go.
    pub observer: Arc<dyn Observer>,
    /// etcd's own health, when the plan names its endpoints.
    pub etcd: Option<crate::world::etcd::Etcd>,
    /// The ServiceLB DNS record, when the plan has one.
    pub dns: Option<Arc<dyn crate::world::dns::DnsProvider>>,
    /// Hooks: logs and environment.
    pub hooks: HookSettings,
    /// What a rehearsal substitutes; `None` in a real rollout.
    pub rehearsal: Option<super::Rehearsal>,
    /// The batches as resolved against the cluster (the health gate reads their nodes).
    pub batches: Vec<crate::planner::build::PlannedBatch>,
    /// For Prometheus, when the plan has a health gate on it.
    pub http: Option<crate::world::http::HttpClient>,
    /// Nodes approved for uncordon, kept up to date from the journal.
    pub approved: watch::Receiver<BTreeSet<String>>,
    /// The first step of every node's chain, by node: where a service node leaves service,
    /// so where etcd must be able to lose its member (before its DNS record is withdrawn, if
    /// any), and where a node cordoned by someone else is skipped.
    pub chain_starts: BTreeMap<String, String>,
    /// The journal, for the records a step writes before it acts (a drain's deletions).
    pub journal: Arc<tokio::sync::Mutex<super::journal_store::Store>>,
    /// What finished steps reported, by step id (the upgrade's boot ID before, a label's
    /// old value), for the steps that undo or check them.
    pub finished: Mutex<BTreeMap<String, Value>>,
    /// The API requests a step that is cut off must still see to their end.
    pub shield: Shield,
    /// The `CiliumBGPNodeConfig` version the cluster serves (`None`: neither), asked once
    /// per run by the first BGP step, not by every one.
    pub bgp_node_configs: tokio::sync::OnceCell<Option<&'static str>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("plan", &self.plan.name).field("time_scale", &self.clock.scale()).finish()
    }
}

impl Context {
    /// Writes a record to the journal, through the shield, so a step cut off for an abort
    /// never leaves one half-made: a ConfigMap write whose request went out but whose
    /// answer was never read would make the run's next write see a line it does not know,
    /// and stop as if a second rollout wrote it.
    pub async fn journal(&self, record: &super::journal::Record) -> Result<(), StepError> {
        let journal = self.journal.clone();
        let record = record.clone();
        match self.shield.run(async move { journal.lock().await.append(&record).await }).await {
            Some(written) => Ok(written?),
            None => Err(StepError::Journal(super::journal::JournalError::Io {
                action: "write",
                path: format!("{:?}", self.journal).into(),
                source: std::io::Error::other("the write ended abnormally"),
            })),
        }
    }

    /// A plan duration as real time.
    pub fn real(&self, plan_time: Duration) -> Duration {
        self.clock.real(plan_time)
    }

    /// Whether maintenance windows are awaited: always in a rollout; in a rehearsal only
    /// when it runs from a chosen instant.
    pub fn awaits_windows(&self) -> bool {
        self.rehearsal.as_ref().is_none_or(|r| r.await_windows)
    }

    /// The resolvers asked after each DNS change: the plan's, and none in a rehearsal,
    /// whose record lives only in memory.
    pub fn resolvers(&self) -> &[String] {
        match (&self.rehearsal, &self.plan.load_balancer.dns) {
            (None, Some(dns)) => &dns.resolvers,
            _ => &[],
        }
    }

    /// Reports progress of a running step.
    pub fn progress(&self, step: &Step, message: impl Into<String>) {
        self.observer.event(&Event::StepProgress {
            step: step.id.clone(),
            node: step.node.clone(),
            message: message.into(),
        });
    }

    /// Reports a warning.
    pub fn warn(&self, message: impl Into<String>) {
        self.observer.event(&Event::Warning { message: message.into() });
    }

    /// Reads a Node, riding out API trouble.
    pub async fn node(&self, name: &str) -> Result<k8s_openapi::api::core::v1::Node, StepError> {
        read_node(&self.client, &self.patience, name).await
    }

    /// What a finished step reported.
    pub fn finished_detail(&self, step_id: &str) -> Value {
        self.finished.lock().unwrap_or_else(|e| e.into_inner()).get(step_id).cloned().unwrap_or(Value::Null)
    }

    /// Whether the step finished, in this run or before it.
    fn has_finished(&self, step_id: &str) -> bool {
        self.finished.lock().unwrap_or_else(|e| e.into_inner()).contains_key(step_id)
    }

    /// Whether the node was left alone, as its first step journaled.
    fn was_skipped(&self, node: &str) -> bool {
        self.chain_starts.get(node).is_some_and(|first| self.finished_detail(first).get(node::SKIPPED).is_some())
    }

    /// Whether the node was cordoned before the rollout, as its finished cordon journaled.
    pub fn cordoned_before(&self, node: &str) -> bool {
        node::cordoned_before(&self.finished_detail(&crate::planner::node_step_id(node, Action::Cordon)))
    }

    /// Whether the step's batch leaves nodes cordoned before the rollout alone.
    fn skips_cordoned_nodes(&self, step: &Step) -> bool {
        self.batch(step).is_some_and(|b| b.settings.already_cordoned == AlreadyCordonedPolicy::Skip)
    }

    /// Whether the step is its node's first.
    fn starts_chain(&self, step: &Step) -> bool {
        step.node.as_ref().and_then(|n| self.chain_starts.get(n)) == Some(&step.id)
    }

    /// Whether the step's node is left alone: its batch skips nodes cordoned before the
    /// rollout, and the node was (as its first step journaled before acting).
    fn skips(&self, step: &Step, detail: &Value) -> bool {
        if !self.skips_cordoned_nodes(step) {
            return false;
        }
        let Some(node) = step.node.as_deref() else { return false };
        if self.starts_chain(step) {
            return node::cordoned_before(detail);
        }
        self.was_skipped(node)
    }

    /// The step's batch as resolved against the cluster (its nodes).
    fn planned_batch(&self, step: &Step) -> Option<&crate::planner::build::PlannedBatch> {
        let name = step.batch.as_deref()?;
        self.batches.iter().find(|b| b.name == name)
    }

    fn batch(&self, step: &Step) -> Option<&BatchPlan> {
        let name = step.batch.as_deref()?;
        self.plan.batches.iter().find(|b| b.name == name)
    }
}

/// Reads a Node, riding out API trouble.
async fn read_node(
    client: &kube::Client,
    patience: &Patience,
    name: &str,
) -> Result<k8s_openapi::api::core::v1::Node, StepError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    crate::world::retry::call(patience, || api.get(name))
        .await
        .map_err(|source| StepError::Api { context: format!("read node {name}"), source })
}

/// Whether a Node's Ready condition is True.
pub(super) fn is_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Reads what a resume will need to judge the step, before it acts. A node's cordon (and,
/// in a batch that skips cordoned nodes, its first step) also records whether the node was
/// cordoned already: after noderoll's own cordon, the node can no longer tell.
pub async fn prepare(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    if step.action == Action::Soak {
        return Ok(soak::began(ctx));
    }
    let Some(node) = step.node.as_deref() else { return Ok(Value::Null) };
    let detail = match step.action {
        Action::Upgrade => ready::before_upgrade(ctx, node).await?,
        Action::BgpWithdraw => node::bgp_label_value(ctx, node).await?,
        Action::DnsWithdraw | Action::DnsRepoint => dns::before_change(ctx).await?,
        _ => Value::Null,
    };
    if step.action == Action::Cordon || (ctx.starts_chain(step) && ctx.skips_cordoned_nodes(step)) {
        return node::with_cordon_state(ctx, node, detail).await;
    }
    Ok(detail)
}

/// Does the step. `detail` is what `prepare` recorded (now or before a crash); `resumed`
/// says whether the step was found in flight.
pub async fn act(ctx: &Context, step: &Step, detail: &Value, resumed: bool) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    let batch = ctx.batch(step);
    if ctx.skips(step, detail) {
        return Ok(node::skipped(ctx, step).await);
    }
    if let Some(phase) = Phase::of(step.action) {
        node::show_phase(ctx, node, Some(phase), Some(&step.id)).await;
    }
    let chain_start = ctx.starts_chain(step);
    if chain_start {
        health::before_node(ctx, step).await?;
    }
    // A service node leaves in stages: out of DNS (the chain's start), out of scheduling
    // (cordon, then drain), out of etcd (upgrade, which checks for itself). A member lost
    // during an earlier stage (a DNS TTL wait can last minutes) stops it at the next one.
    if batch.is_some_and(|b| b.role == crate::plan::model::Role::Service)
        && (chain_start || step.action == Action::Cordon)
    {
        gates::etcd_before_leaving(ctx, step).await?;
    }
    match (step.action, batch) {
        (Action::BatchStart, _) => queue(ctx, step).await,
        (Action::BatchDone, _) => Ok(Value::Null),
        (Action::Window, _) => gates::window(ctx, step).await,
        (Action::Quorum, _) => gates::quorum(ctx, step).await,
        (Action::Health, _) => health::before_batch(ctx, step).await,
        (Action::Cordon, _) => node::cordon(ctx, step, detail).await,
        (Action::Uncordon, _) => node::uncordon(ctx, step, "upgraded and verified, schedulable again").await,
        (Action::BgpWithdraw, _) => {
            node::bgp_withdraw(ctx, node).await?;
            bgp::wait(ctx, step, bgp::Peering::Down).await?;
            Ok(detail.clone())
        }
        (Action::BgpRestore, _) => {
            let restored = node::bgp_restore(ctx, node).await?;
            bgp::wait(ctx, step, bgp::Peering::Up).await?;
            Ok(restored)
        }
        (Action::WaitL2Release, _) => l2::wait_release(ctx, step).await,
        (Action::DnsWithdraw | Action::DnsRepoint | Action::DnsRestore, _) => dns::act(ctx, step, detail).await,
        (Action::WaitSessions, Some(batch)) => sessions::wait(ctx, step, &batch.settings.sessions).await,
        (Action::Drain, Some(batch)) => drain::drain(ctx, step, &batch.settings.drain).await,
        (Action::Upgrade, Some(batch)) => ready::upgrade(ctx, step, batch, detail, resumed).await,
        (Action::WaitReady, Some(batch)) => {
            let ready = ready::wait_ready(ctx, step, batch).await?;
            if batch.role == crate::plan::model::Role::Service {
                gates::etcd_after_return(ctx, step).await?;
            }
            Ok(ready)
        }
        (Action::Verify, Some(batch)) => ready::verify(ctx, step, batch).await,
        (Action::Approve, _) => approve(ctx, step).await,
        (Action::Soak, Some(batch)) => match batch.settings.soak {
            Some(plan) => soak::soak(ctx, step, plan, detail).await,
            None => Ok(Value::Null),
        },
        (
            Action::WaitSessions | Action::Drain | Action::Upgrade | Action::WaitReady | Action::Verify | Action::Soak,
            None,
        ) => Err(StepError::Verify(format!("step {} names no batch of the plan", step.id))),
    }
}

/// Nodes labelled at once when a batch begins.
const CONCURRENT_LABELS: usize = 32;

/// Shows every node of the step's batch as queued: the rollout has reached them.
async fn queue(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    let Some(batch) = ctx.planned_batch(step) else { return Ok(Value::Null) };
    futures::stream::iter(&batch.nodes)
        .for_each_concurrent(CONCURRENT_LABELS, |node| node::show_phase(ctx, node, Some(Phase::Queued), None))
        .await;
    Ok(Value::Null)
}

/// Puts a node whose upgrade had not begun back into scheduling for an abort: the
/// uncordon step's own change (a node cordoned before the rollout stays cordoned), with an
/// Event that says why. Returns whether the node was left cordoned.
pub async fn uncordon_for_abort(ctx: &Context, step: &Step) -> Result<bool, StepError> {
    let detail = node::uncordon(ctx, step, "rollout aborted before this node's upgrade, schedulable again").await?;
    Ok(detail["leftCordoned"] == true)
}

/// Takes the rollout's phase label off a node (an abort leaves no node marked).
pub async fn clear_phase(ctx: &Context, node: &str) {
    node::show_phase(ctx, node, None, None).await;
}

/// Whether the node is Ready now (an abort puts no DNS record back onto a node that is not).
pub async fn node_ready(ctx: &Context, node: &str) -> Result<bool, StepError> {
    Ok(is_ready(&ctx.node(node).await?))
}

/// Shows a node whose step failed as failed, at that step.
pub async fn show_failed(ctx: &Context, step: &Step) {
    if let Some(node) = step.node.as_deref() {
        node::show_phase(ctx, node, Some(Phase::Failed), Some(&step.id)).await;
    }
}

/// Waits for `noderoll approve PLAN NODE` (or the TTY prompt, which writes the same journal
/// record).
async fn approve(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    let node = step.node.clone().unwrap_or_default();
    approved(ctx, &node, Event::AwaitingApproval { step: step.id.clone(), node: node.clone() }).await?;
    Ok(json!({"approved": true}))
}

/// Waits until the journal approves `key` (a node, or a manual DNS step); `asking` tells the
/// operator, once, what is awaited.
async fn approved(ctx: &Context, key: &str, asking: Event) -> Result<(), StepError> {
    let mut approved = ctx.approved.clone();
    let mut asked = false;
    loop {
        if approved.borrow_and_update().contains(key) {
            return Ok(());
        }
        if !asked {
            ctx.observer.event(&asking);
            asked = true;
        }
        if approved.changed().await.is_err() {
            return Err(StepError::Verify(format!("stopped waiting for the approval of {key}")));
        }
    }
}

/// The objects a watch currently sees, kept from its events: what kubectl would list now.
#[derive(Debug)]
pub(super) struct Mirror<K> {
    /// uid → object, once synced.
    pub items: BTreeMap<String, K>,
    listing: Option<BTreeMap<String, K>>,
    /// The first (re-)list is complete.
    pub synced: bool,
}

impl<K: kube::Resource> Mirror<K> {
    pub(super) fn new() -> Self {
        Mirror { items: BTreeMap::new(), listing: None, synced: false }
    }

    fn uid(object: &K) -> String {
        let meta = object.meta();
        meta.uid.clone().unwrap_or_else(|| format!("{:?}/{:?}", meta.namespace, meta.name))
    }

    /// Folds one watch event in; returns whether `items` changed.
    pub(super) fn apply(&mut self, event: kube::runtime::watcher::Event<K>) -> bool {
        use kube::runtime::watcher::Event;
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                self.listing.get_or_insert_with(BTreeMap::new).insert(Self::uid(&object), object);
                false
            }
            Event::InitDone => {
                self.items = self.listing.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                self.items.insert(Self::uid(&object), object);
                true
            }
            Event::Delete(object) => self.items.remove(&Self::uid(&object)).is_some(),
        }
    }
}
