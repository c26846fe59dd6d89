//! Gates with no node: the maintenance window and etcd quorum before a batch starts.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{Context, Mirror, StepError, is_ready};
use crate::labels::ETCD_ROLE;
use crate::plan::duration::written;
use crate::plan::resolved::WindowState;
use crate::planner::Step;

/// Journals the window a batch starts in. The executor's loop is what keeps batches and
/// nodes from starting outside a window (it holds this step, too, until one opens), so
/// this step only records when the window closes.
pub(super) async fn window(ctx: &Context, _step: &Step) -> Result<Value, StepError> {
    let Some(window) = &ctx.plan.window else { return Ok(Value::Null) };
    if !ctx.awaits_windows() {
        return Ok(json!({"waited": false, "reason": "windows are estimated, not awaited, in this rehearsal"}));
    }
    Ok(match window.state_at(ctx.clock.now()) {
        Some(WindowState::Open { closes }) => json!({"closes": closes.to_string()}),
        // It closed between the loop's look and this one; the batch's nodes are held.
        _ => json!({"closes": Value::Null}),
    })
}

/// Before a batch of service nodes: every etcd member healthy, read from etcd itself when
/// the plan names its endpoints; otherwise every node with the etcd role label Ready.
pub(super) async fn quorum(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    if ctx.etcd.is_some() {
        return wait_for_etcd(ctx, step, None).await;
    }
    ready_etcd_nodes(ctx, step, None).await
}

/// The node's own etcd members, and the node's addresses, to match members by.
async fn node_addresses(ctx: &Context, node: &str) -> Result<BTreeMap<String, Vec<String>>, StepError> {
    let found = ctx.node(node).await?;
    let addresses = found.status.and_then(|s| s.addresses).into_iter().flatten().map(|a| a.address).collect();
    Ok(BTreeMap::from([(node.to_owned(), addresses)]))
}

/// Polls etcd until `judge` accepts its health (returning what to journal) or the plan's
/// quorum timeout passes; `judge` says what is still wrong otherwise.
async fn poll_etcd(
    ctx: &Context,
    step: &Step,
    what: String,
    advice: &str,
    mut judge: impl FnMut(&crate::world::etcd::Health) -> Result<Value, String>,
) -> Result<Value, StepError> {
    let Some(etcd) = &ctx.etcd else { return Ok(Value::Null) };
    let timeout = ctx.plan.quorum.timeout;
    let deadline = tokio::time::Instant::now() + ctx.real(timeout);
    let mut last = String::new();
    loop {
        let problem = match etcd.health().await {
            Err(e) => e.to_string(),
            Ok(health) => match judge(&health) {
                Ok(done) => return Ok(done),
                Err(problem) => problem,
            },
        };
        if problem != last {
            ctx.progress(step, format!("waiting for etcd: {problem}"));
            last.clone_from(&problem);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Timeout { what, after: written(timeout), detail: format!("; {problem}. {advice}") });
        }
        tokio::time::sleep(ctx.real(Duration::from_secs(1)).max(Duration::from_millis(200))).await;
    }
}

/// The members that run on the node with these addresses.
fn members_of<'a>(
    health: &'a crate::world::etcd::Health,
    addresses: &BTreeMap<String, Vec<String>>,
) -> Vec<&'a crate::world::etcd::Member> {
    health.members.iter().filter(|m| crate::world::etcd::node_of(m, addresses).is_some()).collect()
}

/// Waits until etcd can lose `leaving`'s member (or, with `None`, until every member is
/// healthy): every other member healthy, and floor(n/2)+1 healthy without it.
async fn wait_for_etcd(ctx: &Context, step: &Step, leaving: Option<&str>) -> Result<Value, StepError> {
    let addresses = match leaving {
        Some(node) if ctx.etcd.is_some() => node_addresses(ctx, node).await?,
        _ => BTreeMap::new(),
    };
    let mut warned = false;
    let advice = "Taking this node down now could lose quorum; bring the members back, then run apply again";
    poll_etcd(ctx, step, "etcd being able to lose a member".into(), advice, |health| {
        let mine = members_of(health, &addresses);
        if let Some(node) = leaving.filter(|_| mine.is_empty() && !warned) {
            warned = true;
            ctx.warn(format!(
                "no etcd member maps to {node} (by name or address); etcd health is checked for the others only"
            ));
        }
        let others_down: Vec<String> = health
            .members
            .iter()
            .filter(|m| !m.healthy && !mine.iter().any(|x| x.id == m.id))
            .map(|m| format!("{} ({})", m.name, m.problem.clone().unwrap_or_default()))
            .collect();
        let healthy_after = health.healthy() - mine.iter().filter(|m| m.healthy).count();
        let need = health.members.len() / 2 + 1;
        if !others_down.is_empty() {
            return Err(format!("unhealthy etcd member(s): {}", others_down.join(", ")));
        }
        if leaving.is_some() && healthy_after < need {
            return Err(format!(
                "{healthy_after} of {} members would stay healthy, {need} are needed",
                health.members.len()
            ));
        }
        Ok(json!({"source": "etcd", "members": health.members.len(), "healthy": health.healthy()}))
    })
    .await
}

/// Before a service node leaves service, and again before its upgrade takes its member
/// down: etcd can lose its member. Without etcd endpoints, every other etcd-role node must
/// be Ready (a member lost since the batch began would otherwise go unnoticed, and this
/// node would be the second one out).
pub(super) async fn etcd_before_leaving(ctx: &Context, step: &Step) -> Result<(), StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    if ctx.etcd.is_some() {
        return wait_for_etcd(ctx, step, Some(node)).await.map(|_| ());
    }
    ready_etcd_nodes(ctx, step, Some(node)).await.map(|_| ())
}

/// After a service node is back: its member is healthy and has caught up with the leader's
/// raft index (as read on an earlier poll), before the next member may go.
pub(super) async fn etcd_after_return(ctx: &Context, step: &Step) -> Result<(), StepError> {
    if ctx.etcd.is_none() {
        return Ok(());
    }
    let node = step.node.as_deref().unwrap_or_default();
    let addresses = node_addresses(ctx, node).await?;
    let mut leader_before: Option<u64> = None;
    let what = format!("{node}'s etcd member coming back healthy and caught up");
    let advice = "The node stays cordoned; once its member is back, run apply again";
    poll_etcd(ctx, step, what, advice, |health| {
        let mine = members_of(health, &addresses);
        let caught_up =
            |m: &crate::world::etcd::Member| leader_before.is_some_and(|l| m.raft_index.is_some_and(|i| i >= l));
        if mine.iter().all(|m| m.healthy && caught_up(m)) {
            return Ok(Value::Null);
        }
        leader_before = health.leader_index().or(leader_before);
        Err(mine
            .iter()
            .map(|m| match &m.problem {
                Some(p) => format!("member {} of {node} is unhealthy: {p}", m.name),
                None => format!("member {} of {node} is catching up (raft index {:?})", m.name, m.raft_index),
            })
            .collect::<Vec<_>>()
            .join("; "))
    })
    .await
    .map(|_| ())
}

/// The Kubernetes fallback: every node with the etcd role label Ready, but `leaving` (the
/// node about to go, whose own state does not matter).
async fn ready_etcd_nodes(ctx: &Context, step: &Step, leaving: Option<&str>) -> Result<Value, StepError> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().labels(ETCD_ROLE);
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut members = Mirror::new();
    let timeout = ctx.plan.quorum.timeout;
    let deadline = tokio::time::sleep(ctx.real(timeout));
    tokio::pin!(deadline);
    let unready = |members: &Mirror<Node>| -> Vec<String> {
        members
            .items
            .values()
            .filter(|n| !is_ready(n))
            .filter_map(|n| n.metadata.name.clone())
            .filter(|name| Some(name.as_str()) != leaving)
            .collect()
    };
    loop {
        tokio::select! {
            () = &mut deadline => {
                return Err(StepError::Timeout {
                    what: "every etcd member's node being Ready".into(),
                    after: written(timeout),
                    detail: format!(
                        "; NotReady: {}. Taking another member down could lose quorum; bring them back, then run apply again",
                        unready(&members).join(", ")
                    ),
                });
            }
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    if !members.apply(event) || !members.synced {
                        continue;
                    }
                    if members.items.is_empty() {
                        ctx.warn(format!(
                            "no node carries the `{ETCD_ROLE}` label, so {} cannot check etcd's health; the plan's quorum limit still holds",
                            step.id
                        ));
                        return Ok(json!({"members": 0, "source": "kubernetes"}));
                    }
                    let waiting = unready(&members);
                    if waiting.is_empty() {
                        return Ok(json!({"members": members.items.len(), "source": "kubernetes"}));
                    }
                    ctx.progress(step, format!("waiting for etcd member node(s) to be Ready: {}", waiting.join(", ")));
                }
                Some(Err(e)) => tracing::debug!(error = %e, "node watch error; the watcher retries"),
                None => return Err(StepError::Verify("the node watch for the quorum gate ended unexpectedly".into())),
            },
        }
    }
}
