//! drain: evict the node's pods through the Eviction API, all at once, and wait for them to
//! be gone, with watches where `kubectl drain` polls.
//!
//! - One watch on the node's pods gives the pod list to evict and every deletion after it
//!   (kubectl GETs each pod every second until it is gone).
//! - A 429 that names a disruption budget parks the pod until a watch on PDBs shows that
//!   budget allowing a disruption again (kubectl sleeps 5 s and retries); a slow fallback
//!   retry covers a missed event.
//! - Any other 429 (API throttling), 5xx or dropped connection is retried with backoff.
//! - When it gives up, it names every pod still there and the budget that holds it; with
//!   `onTimeout: delete` it first deletes those pods (in `deleteNamespaces` only, each one
//!   journaled before it is deleted) and waits for them once more.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::{Stream, future};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, EvictParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::sessions::{is_terminal, pod_key, sample, uid};
use super::stranding::stranded_now;
use super::{Context, StepError};
use crate::executor::journal::{self, Record};
use crate::labels::selector_matches;
use crate::plan::duration::written;
use crate::plan::model::DrainTimeoutPolicy;
use crate::plan::resolved::DrainPlan;
use crate::planner::Step;
use crate::planner::budget::{
    NEVER_ALLOWS_FIX, STRANDED_FIX, UNHEALTHY_FIX, holds_unhealthy, never_allows, stuck_unhealthy,
};
use crate::world::retry;

/// Evictions in flight at once.
const CONCURRENT_EVICTIONS: usize = 64;
/// Plan time between retries of a pod a budget holds, if no PDB event came.
const BLOCKED_FALLBACK: Duration = Duration::from_secs(30);
/// Plan time between asking, while budgets hold pods, whether they strand them.
const STRANDED_EVERY: Duration = Duration::from_secs(5);

/// A pod to evict.
#[derive(Debug, Clone)]
struct Target {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Why it is unhealthy and will not become healthy by waiting, as last seen.
    stuck: Option<String>,
}

impl Target {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where each pod to evict stands.
#[derive(Debug, Default)]
struct Progress {
    /// uid → pod, for every pod not yet gone.
    targets: BTreeMap<String, Target>,
    /// Waiting for an eviction call (first try or retry).
    queue: VecDeque<String>,
    /// Retries due at an instant (throttling, server errors).
    later: Vec<(Instant, String)>,
    /// Held by a budget: uid → the budgets (`namespace/name`).
    blocked: BTreeMap<String, BTreeSet<String>>,
    /// Evicted, terminating: uid → when the eviction was accepted.
    terminating: BTreeMap<String, Instant>,
    /// Attempts per uid, for backoff.
    attempts: BTreeMap<String, u32>,
}

impl Progress {
    fn gone(&mut self, uid: &str) {
        self.targets.remove(uid);
        self.blocked.remove(uid);
        self.terminating.remove(uid);
        self.queue.retain(|u| u != uid);
        self.later.retain(|(_, u)| u != uid);
    }

    fn retry_later(&mut self, uid: String, pause: Duration) {
        let attempt = self.attempts.entry(uid.clone()).or_default();
        *attempt += 1;
        let backoff = Duration::from_millis(100).saturating_mul(1 << (*attempt).min(6)).min(Duration::from_secs(5));
        self.later.push((Instant::now() + pause.max(backoff), uid));
    }
}

/// kubectl drain's refusals, in its words, each with the plan setting that lifts it.
const DAEMON_SET_FATAL: &str = "DaemonSet-managed Pods (set drain.ignoreDaemonSets: true to ignore)";
const ORPHANED_FATAL: &str = "Pods whose DaemonSet is not found (set drain.force: true to override)";
const LOCAL_STORAGE_FATAL: &str = "Pods with local storage (set drain.deleteEmptyDirData: true to override)";
const UNMANAGED_FATAL: &str = "Pods that declare no controller (set drain.force: true to override)";
/// kubectl drain's warnings for what `drain.force` lets it evict.
const ORPHANED_WARNING: &str = "deleting Pods whose DaemonSet is gone";
const UNMANAGED_WARNING: &str = "deleting Pods that declare no controller";

/// The node's pods sorted by what the drain does with them.
#[derive(Debug, Default)]
struct Classified {
    /// uid, pod, already terminating.
    evict: Vec<(String, Target, bool)>,
    /// DaemonSet and mirror pods, pods outside `podSelector`, pods deleted longer ago than
    /// `skipWaitForDeleteTimeout`.
    left: Vec<String>,
    /// Why the drain refuses (kubectl's message) → the pods it refuses for.
    refused: BTreeMap<&'static str, Vec<String>>,
    /// What `force` evicts that nothing recreates (kubectl's warning) → the pods.
    warnings: BTreeMap<&'static str, Vec<String>>,
}

/// What one pod comes to under kubectl drain's filters.
enum Verdict {
    Evict,
    EvictWithWarning(&'static str),
    Leave,
    Refuse(&'static str),
}

/// The `namespace/name` of the DaemonSet that controls a pod, if one does.
fn daemon_set_of(pod: &Pod) -> Option<String> {
    let owner = controller_of(pod)?;
    (owner.kind == "DaemonSet" && owner.api_version == "apps/v1")
        .then(|| format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), owner.name))
}

fn controller_of(pod: &Pod) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata.owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))
}

/// kubectl drain's filters, in its order (deleted long ago, DaemonSet, mirror, local
/// storage, unmanaged), the first that does not evict deciding; `daemon_sets` holds the
/// DaemonSets that exist of those the node's pods name. A pod whose DaemonSet is gone
/// goes on through the later filters under `force`, as in kubectl (which then drops its
/// warning; noderoll keeps it).
fn verdict(
    pod: &Pod,
    settings: &DrainPlan,
    daemon_sets: &BTreeSet<String>,
    skip_deleted_before: Option<Timestamp>,
) -> Verdict {
    let terminal = is_terminal(pod);
    if let (Some(before), Some(deleted)) = (skip_deleted_before, &pod.metadata.deletion_timestamp)
        && deleted.0 < before
    {
        return Verdict::Leave;
    }
    let mut warning = None;
    if let Some(daemon_set) = daemon_set_of(pod).filter(|_| !terminal) {
        match (daemon_sets.contains(&daemon_set), settings.force, settings.ignore_daemon_sets) {
            (false, true, _) => warning = Some(ORPHANED_WARNING),
            (false, false, _) => return Verdict::Refuse(ORPHANED_FATAL),
            (true, _, false) => return Verdict::Refuse(DAEMON_SET_FATAL),
            (true, _, true) => return Verdict::Leave,
        }
    }
    if pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(crate::labels::MIRROR_POD)) {
        return Verdict::Leave;
    }
    let empty_dir =
        pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
    if empty_dir && !terminal && !settings.delete_empty_dir_data {
        return Verdict::Refuse(LOCAL_STORAGE_FATAL);
    }
    if !terminal && controller_of(pod).is_none() {
        if !settings.force {
            return Verdict::Refuse(UNMANAGED_FATAL);
        }
        warning = Some(UNMANAGED_WARNING);
    }
    warning.map_or(Verdict::Evict, Verdict::EvictWithWarning)
}

/// Classifies the node's pods: what to evict, what to leave, what makes the drain refuse.
fn classify(
    pods: Vec<Pod>,
    settings: &DrainPlan,
    daemon_sets: &BTreeSet<String>,
    skip_deleted_before: Option<Timestamp>,
) -> Classified {
    let mut out = Classified::default();
    for pod in pods {
        let key = pod_key(&pod);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if settings.pod_selector.as_ref().is_some_and(|s| !s.matches(&labels)) {
            out.left.push(key);
            continue;
        }
        match verdict(&pod, settings, daemon_sets, skip_deleted_before) {
            Verdict::Leave => out.left.push(key),
            Verdict::Refuse(why) => out.refused.entry(why).or_default().push(key),
            verdict => {
                if let Verdict::EvictWithWarning(warning) = verdict {
                    out.warnings.entry(warning).or_default().push(key);
                }
                let deleting = pod.metadata.deletion_timestamp.is_some();
                let target = Target {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    labels,
                    stuck: stuck(&pod),
                };
                out.evict.push((uid(&pod), target, deleting));
            }
        }
    }
    out
}

/// kubectl's grouping: `cannot delete <why>: <pods>` for each reason.
fn grouped(reasons: &BTreeMap<&'static str, Vec<String>>, verb: &str) -> String {
    let parts: Vec<String> =
        reasons.iter().map(|(why, pods)| format!("{verb}{why}: {}", sample(pods.iter().cloned()))).collect();
    parts.join("; ")
}

/// The DaemonSets that exist, of those the node's running pods name (kubectl GETs each, to
/// tell a DaemonSet pod from one its DaemonSet left behind).
async fn existing_daemon_sets(ctx: &Context, pods: &[Pod]) -> Result<BTreeSet<String>, StepError> {
    let named: BTreeSet<String> = pods.iter().filter(|p| !is_terminal(p)).filter_map(daemon_set_of).collect();
    let mut existing = BTreeSet::new();
    for key in named {
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
        match retry::call(&ctx.patience, || api.get_opt(name)).await {
            Ok(Some(_)) => {
                existing.insert(key);
            }
            Ok(None) => {}
            Err(source) => return Err(StepError::Api { context: format!("get DaemonSet {key}"), source }),
        }
    }
    Ok(existing)
}

/// A stream's next item, or never when there is no stream yet.
async fn next_of<S: Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(s) => s.next().await,
        None => future::pending().await,
    }
}

/// What one eviction call came to.
enum Evicted {
    Accepted,
    Gone,
    Budget(String),
    Throttled(Duration),
    Transient(String),
    Refused(String),
}

/// Delete options with the plan's grace period, when it sets one.
fn with_grace(grace: Duration) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
        ..DeleteParams::default()
    }
}

async fn evict(client: kube::Client, target: Target, grace: Option<Duration>) -> Evicted {
    let params = EvictParams { delete_options: grace.map(with_grace), ..EvictParams::default() };
    match Api::<Pod>::namespaced(client, &target.namespace).evict(&target.name, &params).await {
        Ok(_) => Evicted::Accepted,
        Err(kube::Error::Api(status)) if status.code == 404 => Evicted::Gone,
        Err(kube::Error::Api(status)) if status.code == 429 => {
            let budget = status
                .details
                .as_ref()
                .and_then(|d| d.causes.iter().find(|c| c.reason == "DisruptionBudget"))
                .map(|c| c.message.clone());
            match budget {
                Some(message) => Evicted::Budget(message),
                None => Evicted::Throttled(Duration::from_secs(1)),
            }
        }
        Err(kube::Error::Api(status)) if status.message.contains("more than one PodDisruptionBudget") => {
            Evicted::Refused(format!("{}: {}", target.key(), status.message))
        }
        Err(e) if retry::is_transient(&e) => Evicted::Transient(e.to_string()),
        Err(e) => Evicted::Refused(format!("{}: {e}", target.key())),
    }
}

/// Drains the step's node.
pub(super) async fn drain(ctx: &Context, step: &Step, settings: &DrainPlan) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    let started = Instant::now();
    let deadline = tokio::time::sleep(ctx.real(settings.timeout));
    tokio::pin!(deadline);
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut pods = std::pin::pin!(watcher(api.clone(), config).default_backoff());
    let mut budgets_stream: Option<_> = None;
    let mut budgets: BTreeMap<String, Budget> = BTreeMap::new();
    let mut budget_listing: Option<BTreeMap<String, Budget>> = None;
    let mut listing: Option<Vec<Pod>> = Some(Vec::new());
    let mut progress = Progress::default();
    let mut initial: Option<(usize, Vec<String>)> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(ctx.real(Duration::from_secs(1)).max(Duration::from_millis(10)));
    let mut fallback = Instant::now() + ctx.real(BLOCKED_FALLBACK);
    let mut next_stranded = Instant::now() + ctx.real(STRANDED_EVERY);
    let mut reported = String::new();
    // Pods deleted at the timeout (`onTimeout: delete`); the second timeout then gives up.
    let mut deleted: Option<Vec<String>> = None;
    loop {
        if let Some(&(count, _)) = initial.as_ref() {
            while in_flight.len() < CONCURRENT_EVICTIONS {
                let Some(uid) = progress.queue.pop_front() else { break };
                let Some(target) = progress.targets.get(&uid).cloned() else { continue };
                let grace = settings.grace_period;
                let eviction = evict(ctx.client.clone(), target, grace);
                let shield = ctx.shield.clone();
                in_flight.push(async move {
                    let answer = shield.run(eviction).await;
                    (uid, answer.unwrap_or_else(|| Evicted::Transient("the eviction task ended abnormally".into())))
                });
            }
            if progress.targets.is_empty() {
                let left = initial.take().map(|(_, l)| l).unwrap_or_default();
                let deleted = deleted.take().unwrap_or_default();
                return Ok(
                    json!({"evicted": count, "deleted": deleted, "leftAlone": left, "seconds": started.elapsed().as_secs_f64()}),
                );
            }
            let status = format!(
                "{} pod(s) left: {} terminating, {} held by a disruption budget",
                progress.targets.len(),
                progress.terminating.len(),
                progress.blocked.len()
            );
            if status != reported {
                ctx.progress(step, &status);
                reported = status;
            }
        }
        tokio::select! {
            () = &mut deadline => {
                if settings.on_timeout == DrainTimeoutPolicy::Halt || deleted.is_some() {
                    return Err(give_up(node, settings, &progress, &budgets, deleted.as_deref()));
                }
                deleted = Some(delete_the_rest(ctx, step, settings, &mut progress).await?);
                deadline.as_mut().reset(Instant::now() + ctx.real(settings.timeout));
            }
            event = pods.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing = Some(Vec::new()),
                Some(Ok(watcher::Event::InitApply(pod))) => listing.get_or_insert_with(Vec::new).push(pod),
                Some(Ok(watcher::Event::InitDone)) => {
                    let listed = listing.take().unwrap_or_default();
                    if initial.is_none() {
                        let daemon_sets = existing_daemon_sets(ctx, &listed).await?;
                        let skip_deleted_before = settings
                            .skip_wait_for_delete_timeout
                            .and_then(|skip| Timestamp::now().checked_sub(ctx.real(skip)).ok());
                        let Classified { evict, left, refused, warnings } =
                            classify(listed, settings, &daemon_sets, skip_deleted_before);
                        if !refused.is_empty() {
                            return Err(StepError::Drain(format!("cannot drain {node}: {}", grouped(&refused, "cannot delete "))));
                        }
                        if !warnings.is_empty() {
                            ctx.warn(format!("{node}: {}", grouped(&warnings, "")));
                        }
                        for (uid, target, deleting) in evict {
                            if deleting {
                                progress.terminating.insert(uid.clone(), Instant::now());
                            } else {
                                progress.queue.push_back(uid.clone());
                            }
                            progress.targets.insert(uid, target);
                        }
                        initial = Some((progress.targets.len(), left));
                    } else {
                        // After a re-list: whatever is no longer there is gone.
                        let present: BTreeSet<String> = listed.iter().map(uid).collect();
                        let vanished: Vec<String> = progress.targets.keys().filter(|u| !present.contains(*u)).cloned().collect();
                        for u in vanished {
                            progress.gone(&u);
                        }
                    }
                }
                Some(Ok(watcher::Event::Delete(pod))) => progress.gone(&uid(&pod)),
                Some(Ok(watcher::Event::Apply(pod))) => {
                    if let Some(target) = progress.targets.get_mut(&uid(&pod)) {
                        target.stuck = stuck(&pod);
                    }
                    if let Some(error) = hopeless(node, &progress, &budgets) {
                        return Err(error);
                    }
                }
                Some(Err(e)) => tracing::debug!(node, error = %e, "pod watch error; the watcher retries"),
                None => return Err(StepError::Drain(format!("the pod watch on {node} ended unexpectedly"))),
            },
            Some((uid, outcome)) = in_flight.next(), if !in_flight.is_empty() => match outcome {
                Evicted::Accepted => {
                    progress.blocked.remove(&uid);
                    progress.terminating.insert(uid, Instant::now());
                }
                Evicted::Gone => progress.gone(&uid),
                Evicted::Budget(_) if deleted.is_some() => {}
                Evicted::Budget(message) => {
                    let Some(target) = progress.targets.get(&uid) else { continue };
                    let holding = holding_budgets(&budgets, target);
                    let holding = if holding.is_empty() { BTreeSet::from([message]) } else { holding };
                    tracing::debug!(pod = target.key(), budgets = ?holding, "eviction held by a disruption budget");
                    progress.blocked.insert(uid, holding);
                    if budgets_stream.is_none() {
                        let pdbs: Api<PodDisruptionBudget> = Api::all(ctx.client.clone());
                        budgets_stream = Some(Box::pin(watcher(pdbs, watcher::Config::default()).default_backoff()));
                    }
                    if let Some(error) = hopeless(node, &progress, &budgets) {
                        return Err(error);
                    }
                }
                Evicted::Throttled(pause) => progress.retry_later(uid, pause),
                Evicted::Transient(error) => {
                    tracing::debug!(node, error, "eviction failed, retrying");
                    progress.retry_later(uid, Duration::ZERO);
                }
                Evicted::Refused(message) => return Err(StepError::Drain(format!("cannot drain {node}: {message}"))),
            },
            event = next_of(&mut budgets_stream) => {
                let mut released = Vec::new();
                match event {
                    Some(Ok(watcher::Event::Init)) => budget_listing = Some(BTreeMap::new()),
                    Some(Ok(watcher::Event::InitApply(pdb))) => {
                        let (key, entry) = budget_entry(&pdb);
                        budget_listing.get_or_insert_with(BTreeMap::new).insert(key, entry);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        budgets = budget_listing.take().unwrap_or_default();
                        released.extend(budgets.iter().filter(|(_, b)| b.allowed > 0).map(|(k, _)| k.clone()));
                        // Pods parked before the budgets were known: name their budgets now.
                        for (uid, holding) in &mut progress.blocked {
                            if let Some(target) = progress.targets.get(uid) {
                                let named = holding_budgets(&budgets, target);
                                if !named.is_empty() {
                                    *holding = named;
                                }
                            }
                        }
                    }
                    Some(Ok(watcher::Event::Apply(pdb))) => {
                        let (key, entry) = budget_entry(&pdb);
                        if entry.allowed > 0 {
                            released.push(key.clone());
                        }
                        budgets.insert(key, entry);
                    }
                    Some(Ok(watcher::Event::Delete(pdb))) => {
                        let (key, _) = budget_entry(&pdb);
                        budgets.remove(&key);
                        released.push(key);
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "PDB watch error; the watcher retries"),
                    None => budgets_stream = None,
                }
                let unblocked: Vec<String> = progress
                    .blocked
                    .iter()
                    .filter(|(_, holding)| holding.iter().any(|b| released.contains(b)))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in unblocked {
                    progress.blocked.remove(&uid);
                    progress.queue.push_back(uid);
                }
                if let Some(error) = hopeless(node, &progress, &budgets) {
                    return Err(error);
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let (due, waiting): (Vec<_>, Vec<_>) = progress.later.drain(..).partition(|(at, _)| *at <= now);
                progress.later = waiting;
                progress.queue.extend(due.into_iter().map(|(_, uid)| uid));
                if now >= next_stranded && !progress.blocked.is_empty() {
                    if let Some(error) = stranding(ctx, node, settings, &progress, &budgets).await? {
                        return Err(error);
                    }
                    next_stranded = Instant::now() + ctx.real(STRANDED_EVERY);
                }
                if now >= fallback {
                    fallback = now + ctx.real(BLOCKED_FALLBACK);
                    let parked: Vec<String> = std::mem::take(&mut progress.blocked).into_keys().collect();
                    progress.queue.extend(parked);
                }
                if let Some(skip) = settings.skip_wait_for_delete_timeout {
                    let limit = ctx.real(skip);
                    let stale: Vec<String> = progress.terminating.iter().filter(|(_, at)| at.elapsed() > limit).map(|(u, _)| u.clone()).collect();
                    for uid in stale {
                        progress.gone(&uid);
                    }
                }
            },
        }
    }
}

/// `onTimeout: delete` at the drain's timeout: deletes every pod still there, bypassing
/// their budgets, each journaled before it is deleted, and returns them. A pod outside
/// `deleteNamespaces` is never deleted: then nothing is, and the drain halts naming it.
async fn delete_the_rest(
    ctx: &Context,
    step: &Step,
    settings: &DrainPlan,
    progress: &mut Progress,
) -> Result<Vec<String>, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    let outside: Vec<String> = progress
        .targets
        .values()
        .filter(|t| !settings.delete_namespaces.contains(&t.namespace))
        .map(Target::key)
        .collect();
    if !outside.is_empty() {
        return Err(StepError::Drain(format!(
            "cannot drain {node}: {} pod(s) are still there after {} and outside drain.deleteNamespaces ({}), so none is deleted: {}; add their namespace to deleteNamespaces, or make room for what holds them, then run apply again",
            outside.len(),
            written(settings.timeout),
            settings.delete_namespaces.join(", "),
            sample(outside)
        )));
    }
    let reason = format!("not evicted within drain.timeout {}; drain.onTimeout is delete", written(settings.timeout));
    let mut deleted = Vec::new();
    let uids: Vec<String> = progress.targets.keys().cloned().collect();
    for uid in uids {
        let Some(target) = progress.targets.get(&uid) else { continue };
        let pod = target.key();
        ctx.journal(&Record::PodDeleted {
            at: journal::now(),
            step: step.id.clone(),
            pod: pod.clone(),
            reason: reason.clone(),
        })
        .await?;
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &target.namespace);
        let params = settings.grace_period.map(with_grace).unwrap_or_default();
        match retry::call(&ctx.patience, || api.delete(&target.name, &params)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => return Err(StepError::Api { context: format!("delete pod {pod}"), source }),
        }
        progress.blocked.remove(&uid);
        progress.terminating.insert(uid, Instant::now());
        deleted.push(pod);
    }
    progress.queue.clear();
    progress.later.clear();
    ctx.warn(format!(
        "{node}: deleted {} pod(s) the drain could not evict in time: {}",
        deleted.len(),
        sample(deleted.iter().cloned())
    ));
    Ok(deleted)
}

/// What the drain knows of one PodDisruptionBudget.
#[derive(Debug)]
struct Budget {
    /// `spec.selector` as JSON.
    selector: Value,
    /// `status.disruptionsAllowed`.
    allowed: i32,
    /// Why it can never allow an eviction, when it cannot.
    never: Option<String>,
    /// Why it lets no unhealthy pod go now, when it does not.
    holds_unhealthy: Option<String>,
    /// The pods it counts as evicted already (`status.disruptedPods`): evictions granted
    /// whose deletions kube-apiserver has not seen yet.
    disrupted: BTreeSet<String>,
}

/// The budgets (`namespace/name`) whose selector covers a pod.
fn holding_budgets(budgets: &BTreeMap<String, Budget>, target: &Target) -> BTreeSet<String> {
    let prefix = format!("{}/", target.namespace);
    budgets
        .iter()
        .filter(|(key, b)| key.starts_with(&prefix) && selector_matches(&b.selector, &target.labels))
        .map(|(key, _)| key.clone())
        .collect()
}

fn budget_entry(pdb: &PodDisruptionBudget) -> (String, Budget) {
    let key = format!(
        "{}/{}",
        pdb.metadata.namespace.as_deref().unwrap_or_default(),
        pdb.metadata.name.as_deref().unwrap_or_default()
    );
    let selector = pdb.spec.as_ref().and_then(|s| serde_json::to_value(&s.selector).ok()).unwrap_or(Value::Null);
    let allowed = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
    let json = serde_json::to_value(pdb).unwrap_or(Value::Null);
    let disrupted = pdb.status.as_ref().and_then(|s| s.disrupted_pods.as_ref());
    let budget = Budget {
        selector,
        allowed,
        never: never_allows(&json),
        holds_unhealthy: holds_unhealthy(&json),
        disrupted: disrupted.map(|pods| pods.keys().cloned().collect()).unwrap_or_default(),
    };
    (key, budget)
}

/// [`stuck_unhealthy`] of a typed pod.
fn stuck(pod: &Pod) -> Option<String> {
    serde_json::to_value(pod).ok().and_then(|v| stuck_unhealthy(&v))
}

/// The error, at once, when a pod is held by a budget that can never allow its eviction,
/// or that lets no unhealthy pod go while the pod cannot become healthy: waiting out the
/// drain timeout would change nothing.
fn hopeless(node: &str, progress: &Progress, budgets: &BTreeMap<String, Budget>) -> Option<StepError> {
    progress.blocked.iter().find_map(|(uid, holding)| {
        let target = progress.targets.get(uid)?;
        let pod = target.key();
        holding.iter().find_map(|key| {
            let budget = budgets.get(key)?;
            if let Some(why) = &budget.never {
                return Some(StepError::Drain(format!(
                    "cannot drain {node}: PDB {key} holds {pod}: {why}; {NEVER_ALLOWS_FIX}"
                )));
            }
            let (stuck, why) = (target.stuck.as_ref()?, budget.holds_unhealthy.as_ref()?);
            Some(StepError::Drain(format!(
                "cannot drain {node}: PDB {key} holds {pod}, which is not Ready and will not become Ready by waiting ({stuck}): {why}; {UNHEALTHY_FIX}"
            )))
        })
    })
}

/// The error when a budget that holds a pod strands it ([`stranded_now`]): its replacements
/// can run on no node in service, and every node out of service that could take them holds
/// more of its pods than it lets go. Not asked under `onTimeout: delete`: the plan has
/// chosen what the timeout does with pods a budget holds.
async fn stranding(
    ctx: &Context,
    node: &str,
    settings: &DrainPlan,
    progress: &Progress,
    budgets: &BTreeMap<String, Budget>,
) -> Result<Option<StepError>, StepError> {
    if settings.on_timeout == DrainTimeoutPolicy::Delete {
        return Ok(None);
    }
    let mut asked = BTreeSet::new();
    for (uid, holding) in &progress.blocked {
        let Some(target) = progress.targets.get(uid) else { continue };
        for key in holding {
            let Some(budget) = budgets.get(key).filter(|_| asked.insert(key.clone())) else { continue };
            if let Some(why) = stranded_now(ctx, key, &budget.selector, budget.allowed).await? {
                let pod = target.key();
                return Ok(Some(StepError::Drain(format!(
                    "cannot drain {node}: PDB {key} holds {pod}: {why}; {STRANDED_FIX}"
                ))));
            }
        }
    }
    Ok(None)
}

/// The error when the drain runs out of time: every pod still there, and why (after the
/// deletions of `onTimeout: delete`, if it made them).
fn give_up(
    node: &str,
    settings: &DrainPlan,
    progress: &Progress,
    budgets: &BTreeMap<String, Budget>,
    deleted: Option<&[String]>,
) -> StepError {
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (uid, holding) in &progress.blocked {
        if let Some(target) = progress.targets.get(uid) {
            for budget in holding {
                held.entry(budget.clone()).or_default().push(target.key());
            }
        }
    }
    let mut parts = Vec::new();
    for (budget, pods) in &held {
        let allowed = budgets.get(budget).map_or(String::new(), |b| format!(", disruptionsAllowed {}", b.allowed));
        parts.push(format!("PDB {budget}{allowed} holds {}", sample(pods.iter().cloned())));
    }
    let terminating: Vec<String> =
        progress.terminating.keys().filter_map(|u| progress.targets.get(u)).map(Target::key).collect();
    if !terminating.is_empty() {
        parts.push(format!("still terminating: {}", sample(terminating)));
    }
    let other: Vec<String> = progress
        .targets
        .iter()
        .filter(|(u, _)| !progress.blocked.contains_key(*u) && !progress.terminating.contains_key(*u))
        .map(|(_, t)| t.key())
        .collect();
    if !other.is_empty() {
        parts.push(format!("not yet evicted: {}", sample(other)));
    }
    if let Some(deleted) = deleted {
        parts.push(format!(
            "{} pod(s) were deleted at the first timeout and waited on for as long again",
            deleted.len()
        ));
    }
    let counted: Vec<String> = progress
        .targets
        .values()
        .filter(|t| {
            let prefix = format!("{}/", t.namespace);
            budgets.iter().any(|(key, b)| key.starts_with(&prefix) && b.disrupted.contains(&t.name))
        })
        .map(Target::key)
        .collect();
    if !counted.is_empty() {
        parts.push(format!(
            "{} counted by its budget as evicted already (status.disruptedPods) though still running: an eviction was cut off before the pod's deletion (a killed noderoll or kubectl drain), and kube-apiserver forgets it 2 minutes after the eviction",
            sample(counted.iter().cloned())
        ));
    }
    let help = if !counted.is_empty() {
        "wait two minutes, then run apply again"
    } else if held.is_empty() {
        "check why the pods do not terminate (finalizers, long grace periods), then run apply again"
    } else {
        "make room for the budget (scale the workload up, or relax the PDB), then run apply again"
    };
    StepError::Timeout {
        what: format!("draining {node}"),
        after: written(settings.timeout),
        detail: format!("; {}; {help}", parts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(force: bool, ignore_daemon_sets: bool, delete_empty_dir_data: bool) -> DrainPlan {
        DrainPlan {
            timeout: Duration::from_secs(60),
            ignore_daemon_sets,
            delete_empty_dir_data,
            force,
            grace_period: None,
            pod_selector: None,
            skip_wait_for_delete_timeout: None,
            on_timeout: DrainTimeoutPolicy::Halt,
            delete_namespaces: Vec::new(),
        }
    }

    fn pod(owner: Option<(&str, &str)>, phase: &str, empty_dir: bool) -> Pod {
        let owners: Vec<Value> = owner
            .map(|(api_version, kind)| {
                json!({"apiVersion": api_version, "kind": kind, "name": "owner", "uid": "u1", "controller": true})
            })
            .into_iter()
            .collect();
        let volumes: Vec<Value> = if empty_dir { vec![json!({"name": "scratch", "emptyDir": {}})] } else { vec![] };
        serde_json::from_value(json!({
            "metadata": {"name": "bar", "namespace": "default", "uid": "p1", "ownerReferences": owners},
            "spec": {"nodeName": "node", "containers": [], "volumes": volumes},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    const RS: Option<(&str, &str)> = Some(("apps/v1", "ReplicaSet"));
    const DS: Option<(&str, &str)> = Some(("apps/v1", "DaemonSet"));
    const JOB: Option<(&str, &str)> = Some(("batch/v1", "Job"));

    fn outcome(pod: &Pod, settings: &DrainPlan, daemon_set_exists: bool) -> String {
        let existing = if daemon_set_exists { BTreeSet::from(["default/owner".to_owned()]) } else { BTreeSet::new() };
        match verdict(pod, settings, &existing, None) {
            Verdict::Evict => "evict".into(),
            Verdict::EvictWithWarning(w) => format!("evict, warning: {w}"),
            Verdict::Leave => "leave".into(),
            Verdict::Refuse(why) => format!("refuse: {why}"),
        }
    }

    /// The cases of kubectl's own drain tests (pkg/cmd/drain/drain_test.go), with its flags
    /// as the plan's settings (force, ignoreDaemonSets, deleteEmptyDirData).
    #[test]
    fn pods_are_sorted_as_kubectl_drain_sorts_them() {
        let cases: [(&str, Pod, DrainPlan, bool, &str); 15] = [
            ("RS-managed pod", pod(RS, "Running", false), settings(false, false, false), true, "evict"),
            (
                "DS-managed pod",
                pod(DS, "Running", false),
                settings(false, false, false),
                true,
                "refuse: DaemonSet-managed",
            ),
            ("DS-managed terminated pod", pod(DS, "Succeeded", false), settings(false, false, false), true, "evict"),
            (
                "orphaned DS-managed pod",
                pod(DS, "Running", false),
                settings(false, false, false),
                false,
                "refuse: Pods whose DaemonSet",
            ),
            (
                "orphaned DS-managed pod with --force",
                pod(DS, "Running", false),
                settings(true, false, false),
                false,
                "evict, warning: deleting Pods whose DaemonSet",
            ),
            (
                "orphaned DS-managed pod with emptyDir and --force",
                pod(DS, "Running", true),
                settings(true, false, false),
                false,
                "refuse: Pods with local storage",
            ),
            (
                "DS-managed pod with --ignore-daemonsets",
                pod(DS, "Running", false),
                settings(false, true, false),
                true,
                "leave",
            ),
            (
                "DS-managed pod with emptyDir with --ignore-daemonsets",
                pod(DS, "Running", true),
                settings(false, true, false),
                true,
                "leave",
            ),
            (
                "Job-managed pod with local storage",
                pod(JOB, "Running", true),
                settings(true, false, true),
                true,
                "evict",
            ),
            (
                "Job-managed terminated pod with local storage",
                pod(JOB, "Failed", true),
                settings(false, false, false),
                true,
                "evict",
            ),
            (
                "naked pod",
                pod(None, "Running", false),
                settings(false, false, false),
                true,
                "refuse: Pods that declare no controller",
            ),
            (
                "naked pod with --force",
                pod(None, "Running", false),
                settings(true, false, false),
                true,
                "evict, warning: deleting Pods that declare no controller",
            ),
            (
                "pod with EmptyDir",
                pod(None, "Running", true),
                settings(true, false, false),
                true,
                "refuse: Pods with local storage",
            ),
            ("terminated pod with emptyDir", pod(RS, "Succeeded", true), settings(false, false, false), true, "evict"),
            (
                "pod with EmptyDir and --delete-emptydir-data",
                pod(None, "Running", true),
                settings(true, false, true),
                true,
                "evict, warning: deleting Pods that declare no controller",
            ),
        ];
        for (case, pod, settings, exists, expected) in cases {
            let got = outcome(&pod, &settings, exists);
            assert!(got.starts_with(expected), "{case}: expected {expected}, got {got}");
        }
    }

    #[test]
    fn a_daemon_set_owner_of_another_api_group_is_not_a_daemon_set() {
        let pod = pod(Some(("example.com/v1", "DaemonSet")), "Running", false);
        assert_eq!(outcome(&pod, &settings(false, false, false), false), "evict");
    }

    #[test]
    fn a_pod_deleted_before_skip_wait_for_delete_timeout_is_left() {
        let mut pod = pod(RS, "Running", false);
        let deleted = Timestamp::now().checked_sub(Duration::from_secs(120)).expect("time");
        pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(deleted));
        let recent = Timestamp::now().checked_sub(Duration::from_secs(60)).expect("time");
        let older = Timestamp::now().checked_sub(Duration::from_secs(180)).expect("time");
        assert!(matches!(
            verdict(&pod, &settings(false, false, false), &BTreeSet::new(), Some(recent)),
            Verdict::Leave
        ));
        assert!(matches!(verdict(&pod, &settings(false, false, false), &BTreeSet::new(), Some(older)), Verdict::Evict));
        assert!(matches!(verdict(&pod, &settings(false, false, false), &BTreeSet::new(), None), Verdict::Evict));
    }

    #[test]
    fn refusals_are_grouped_by_reason_in_kubectl_words() {
        let pods = vec![pod(None, "Running", false), pod(DS, "Running", false)];
        let classified =
            classify(pods, &settings(false, false, false), &BTreeSet::from(["default/owner".to_owned()]), None);
        let text = grouped(&classified.refused, "cannot delete ");
        assert_eq!(
            text,
            "cannot delete DaemonSet-managed Pods (set drain.ignoreDaemonSets: true to ignore): default/bar; \
             cannot delete Pods that declare no controller (set drain.force: true to override): default/bar"
        );
    }

    /// A drain with one pod held by budget `drain/app`, which `pdb` (its JSON) describes.
    fn held(stuck: Option<&str>, pdb: Value) -> (Progress, BTreeMap<String, Budget>) {
        let mut progress = Progress::default();
        let target = Target {
            namespace: "drain".into(),
            name: "app-1".into(),
            labels: BTreeMap::new(),
            stuck: stuck.map(str::to_owned),
        };
        progress.targets.insert("p1".into(), target);
        progress.blocked.insert("p1".into(), BTreeSet::from(["drain/app".to_owned()]));
        let pdb: PodDisruptionBudget = serde_json::from_value(pdb).expect("pdb");
        (progress, BTreeMap::from([budget_entry(&pdb)]))
    }

    fn budget(spec: Value, current: i64, desired: i64, expected: i64) -> Value {
        json!({"metadata": {"name": "app", "namespace": "drain", "generation": 1}, "spec": spec,
               "status": {"observedGeneration": 1, "currentHealthy": current, "desiredHealthy": desired,
                          "expectedPods": expected, "disruptionsAllowed": 0}})
    }

    #[test]
    fn a_pod_that_cannot_become_ready_under_a_budget_short_of_healthy_pods_halts_the_drain_at_once() {
        let crashing = Some("container app is in CrashLoopBackOff");
        let (progress, budgets) = held(crashing, budget(json!({"minAvailable": 1}), 0, 1, 2));
        let error = hopeless("ws01", &progress, &budgets).expect("hopeless").to_string();
        assert!(error.contains("PDB drain/app holds drain/app-1, which is not Ready"), "{error}");
        assert!(error.contains("CrashLoopBackOff") && error.contains("AlwaysAllow"), "{error}");

        let always = json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"});
        let (progress, budgets) = held(crashing, budget(always, 0, 1, 2));
        assert!(hopeless("ws01", &progress, &budgets).is_none(), "AlwaysAllow lets unhealthy pods go");
        let (progress, budgets) = held(None, budget(json!({"minAvailable": 1}), 0, 1, 2));
        assert!(hopeless("ws01", &progress, &budgets).is_none(), "a pod merely starting may become Ready");
        let (progress, budgets) = held(None, budget(json!({"maxUnavailable": 0}), 2, 2, 2));
        let error = hopeless("ws01", &progress, &budgets).expect("hopeless").to_string();
        assert!(error.contains("maxUnavailable 0 with 2 pod(s)"), "a budget that never allows: {error}");
    }

    #[test]
    fn a_timeout_names_a_pod_its_budget_counts_as_evicted_though_it_still_runs() {
        let mut pdb = budget(json!({"maxUnavailable": 1}), 2, 2, 3);
        pdb["status"]["disruptedPods"] = json!({"app-1": "2026-12-07T17:31:42Z"});
        let (progress, budgets) = held(None, pdb);
        let error = give_up("cp2", &settings(false, false, false), &progress, &budgets, None).to_string();
        assert!(error.contains("drain/app-1 counted by its budget as evicted already"), "{error}");
        assert!(error.ends_with("wait two minutes, then run apply again"), "{error}");

        let (progress, budgets) = held(None, budget(json!({"maxUnavailable": 1}), 2, 2, 3));
        let error = give_up("cp2", &settings(false, false, false), &progress, &budgets, None).to_string();
        assert!(!error.contains("evicted already"), "{error}");
        assert!(
            error.ends_with("make room for the budget (scale the workload up, or relax the PDB), then run apply again"),
            "{error}"
        );
    }
}
