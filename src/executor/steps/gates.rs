//! Gates with no node: the maintenance window and etcd quorum before a batch starts.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{Context, Mirror, StepError, WindowMode, human};
use crate::plan::resolved::WindowState;
use crate::planner::Step;

/// The label k3s puts on nodes that run an embedded etcd member.
pub(super) const ETCD_ROLE: &str = "node-role.kubernetes.io/etcd";

/// Waits until the plan's maintenance window is open.
pub(super) async fn window(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    let Some(window) = &ctx.plan.window else { return Ok(Value::Null) };
    if ctx.windows == WindowMode::Ignore {
        return Ok(json!({"waited": false, "reason": "windows are counted, not awaited, in a rehearsal"}));
    }
    loop {
        match window.state_at(jiff::Timestamp::now()) {
            Some(WindowState::Open { closes }) => return Ok(json!({"closes": closes.to_string()})),
            Some(WindowState::Closed { opens }) => {
                ctx.progress(
                    step,
                    format!("waiting for the maintenance window at {} ({})", opens, window.timezone_name),
                );
                let wait = Duration::try_from(opens.duration_since(jiff::Timestamp::now())).unwrap_or(Duration::ZERO);
                // Wake at least hourly, so a suspended laptop or a changed clock is noticed.
                tokio::time::sleep(wait.min(Duration::from_secs(3600)) + Duration::from_millis(10)).await;
            }
            None => {
                return Err(StepError::Timeout {
                    what: "a maintenance window".into(),
                    after: "the end of the cron schedule".into(),
                    detail: format!("; `{}` never fires again", window.cron_text),
                });
            }
        }
    }
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Before a batch of service nodes: every etcd member's node is Ready (the Kubernetes
/// fallback: nodes with the etcd role label stand for the members).
pub(super) async fn quorum(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().labels(ETCD_ROLE);
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut members = Mirror::new();
    let timeout = ctx.plan.quorum.timeout;
    let deadline = tokio::time::sleep(ctx.real(timeout));
    tokio::pin!(deadline);
    let unready = |members: &Mirror<Node>| -> Vec<String> {
        members.items.values().filter(|n| !ready(n)).filter_map(|n| n.metadata.name.clone()).collect()
    };
    loop {
        tokio::select! {
            () = &mut deadline => {
                return Err(StepError::Timeout {
                    what: "every etcd member's node being Ready".into(),
                    after: human(timeout),
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
