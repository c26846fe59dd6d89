//! The soak: with a node (or every node of its batch) back in service, wait the plan's
//! time before the next one starts, and fail as soon as one stops being Ready or the health
//! gate's alerts or command report trouble. Some bad upgrades show only under users' load,
//! after the checks at the node's return have passed.
//!
//! The start is journaled (`prepare`), so a soak found in flight after a crash waits only
//! what is left of it; a failed soak is started over by the next apply.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{Context, StepError, health, is_ready};
use crate::plan::duration::{elapsed, written};
use crate::plan::resolved::SoakPlan;
use crate::planner::{Action, Step, node_step_id};

/// How often the health gate's alerts and command are looked at when the plan sets no
/// `health.interval`.
const INTERVAL: Duration = Duration::from_secs(10);

/// The detail journaled before the soak begins: when it began, in plan time.
pub(super) fn began(ctx: &Context) -> Value {
    json!({"since": ctx.clock.now().to_string()})
}

/// Soaks the step's node, or (a gate) the nodes of its batch that came back. The nodes are
/// watched, not polled, so a Ready flap between two looks still fails the soak; the health
/// gate's alerts and command are looked at every `health.interval`.
pub(super) async fn soak(ctx: &Context, step: &Step, plan: SoakPlan, detail: &Value) -> Result<Value, StepError> {
    let since = detail["since"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()).unwrap_or(ctx.clock.now());
    let until = since + plan.duration;
    let nodes: BTreeSet<String> = match &step.node {
        Some(node) => BTreeSet::from([node.clone()]),
        None => returned(ctx, step),
    };
    let listed = nodes.iter().cloned().collect::<Vec<_>>().join(", ");
    ctx.progress(step, format!("soaking {listed} for {}", written(plan.duration)));
    let api: Api<Node> = Api::all(ctx.client.clone());
    let config = match &step.node {
        Some(node) => watcher::Config::default().fields(&format!("metadata.name={node}")),
        None => watcher::Config::default(),
    };
    let mut watch = std::pin::pin!(watcher(api, config).default_backoff());
    let end = tokio::time::sleep(ctx.clock.real_until(until));
    tokio::pin!(end);
    let interval = ctx.plan.health.as_ref().map_or(INTERVAL, |h| h.interval);
    let mut health = tokio::time::interval(ctx.real(interval).max(Duration::from_millis(50)));
    let failed = |what: String| {
        StepError::Soak(format!(
            "{what} {} into the {} soak of {listed}; the node is back in service, so look at it now, then run apply again: the soak starts over",
            elapsed(ctx.clock.now().duration_since(since).unsigned_abs()),
            written(plan.duration),
        ))
    };
    loop {
        tokio::select! {
            () = &mut end => {
                return Ok(json!({"since": since.to_string(), "soaked": written(plan.duration), "nodes": nodes}));
            }
            _ = health.tick() => {
                let alarms = health::alarms(ctx, step, step.node.as_deref()).await;
                if !alarms.is_empty() {
                    return Err(failed(format!("the health gate failed ({})", alarms.join("; "))));
                }
            }
            event = watch.next() => match event {
                Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    if nodes.contains(&name) && !is_ready(&node) {
                        let reason = not_ready_reason(&node).map_or(String::new(), |r| format!(" ({r})"));
                        return Err(failed(format!("{name} stopped being Ready{reason}")));
                    }
                }
                Some(Ok(watcher::Event::Delete(node))) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    if nodes.contains(&name) {
                        return Err(failed(format!("{name} was deleted")));
                    }
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "node watch error; the watcher retries"),
                None => return Err(StepError::Verify("the node watch of the soak ended unexpectedly".into())),
            },
        }
    }
}

/// The nodes of the step's batch that came back into service in this rollout: their
/// uncordon finished, and they were not left alone for having been cordoned before it.
/// A node that failed (within `maxFailures`) is not soaked: it stays cordoned and named.
fn returned(ctx: &Context, step: &Step) -> BTreeSet<String> {
    let Some(batch) = ctx.planned_batch(step) else { return BTreeSet::new() };
    batch
        .nodes
        .iter()
        .filter(|n| ctx.has_finished(&node_step_id(n, Action::Uncordon)) && !ctx.was_skipped(n))
        .cloned()
        .collect()
}

/// The Ready condition's reason and message, when it says more than False.
fn not_ready_reason(node: &Node) -> Option<String> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    let text = [ready.reason.as_deref(), ready.message.as_deref()].into_iter().flatten().collect::<Vec<_>>();
    (!text.is_empty()).then(|| format!("Ready {}: {}", ready.status, text.join(": ")))
}
