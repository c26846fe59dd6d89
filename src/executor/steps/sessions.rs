//! wait-sessions: the runbook's `kubectl get pods -A -owide | grep NODE`, automated. The
//! node is cordoned, so a session that ends is recreated elsewhere; this waits, watching the
//! node's pods (never polling), until no session pod is left on it.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{Context, Mirror, StepError};
use crate::plan::duration::written;
use crate::plan::model::SessionTimeoutPolicy;
use crate::plan::resolved::SessionsPlan;
use crate::planner::Step;

/// `namespace/name` of a pod.
pub(super) fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether a pod has ended (it holds no session any more).
pub(super) fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn is_session(pod: &Pod, annotation: &str) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(annotation)) && !is_terminal(pod)
}

/// A short list for messages: the first few names and how many more.
pub(super) fn sample(names: impl IntoIterator<Item = String>) -> String {
    let names: Vec<String> = names.into_iter().collect();
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    match names.len() {
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

/// Waits until the node runs no session pod.
pub(super) async fn wait(ctx: &Context, step: &Step, settings: &SessionsPlan) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut pods = Mirror::new();
    let sessions = |pods: &Mirror<Pod>| -> Vec<String> {
        pods.items.values().filter(|p| is_session(p, &settings.annotation)).map(pod_key).collect()
    };
    let mut last_count = usize::MAX;
    let deadline = tokio::time::sleep(ctx.real(settings.timeout));
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            () = &mut deadline => {
                let left = sessions(&pods);
                return match settings.on_timeout {
                    SessionTimeoutPolicy::Halt => Err(StepError::Timeout {
                        what: format!("the sessions on {node} ending"),
                        after: written(settings.timeout),
                        detail: format!(
                            "; still running: {}. Ask the users to save and log out, or set sessions.onTimeout: drain to evict them, then run apply again",
                            sample(left)
                        ),
                    }),
                    SessionTimeoutPolicy::Drain => {
                        ctx.warn(format!(
                            "{} session(s) still on {node} after {}; the drain evicts them (sessions.onTimeout: drain): {}",
                            left.len(),
                            written(settings.timeout),
                            sample(left.iter().cloned())
                        ));
                        Ok(json!({"sessionsLeft": left.len(), "onTimeout": "drain"}))
                    }
                };
            }
        };
        match event {
            Some(Ok(event)) => {
                if !pods.apply(event) || !pods.synced {
                    continue;
                }
                let left = sessions(&pods);
                if left.is_empty() {
                    return Ok(json!({"sessionsLeft": 0}));
                }
                if left.len() != last_count {
                    last_count = left.len();
                    ctx.progress(step, format!("{} session(s) left: {}", left.len(), sample(left)));
                }
            }
            Some(Err(e)) => tracing::debug!(node, error = %e, "session watch error; the watcher retries"),
            None => return Err(StepError::Drain(format!("the pod watch on {node} ended unexpectedly"))),
        }
    }
}

pub(super) fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| pod_key(pod))
}
