//! wait-l2-release: Cilium L2 announcements are led through `cilium-l2announce-*` Leases; a
//! drained node must let go of them (another node then answers ARP for the IPs) before it
//! goes down, or the IPs are unreachable until the leases expire.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::sessions::sample;
use super::{Context, Mirror, StepError};
use crate::plan::duration::written;
use crate::planner::Step;

/// The prefix Cilium gives its L2 announcement Leases.
const LEASE_PREFIX: &str = "cilium-l2announce-";

/// Waits until the node holds no L2 announcement Lease.
pub(super) async fn wait_release(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    let Some(l2) = &ctx.plan.load_balancer.l2 else { return Ok(Value::Null) };
    let node = step.node.as_deref().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &l2.lease_namespace);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut leases = Mirror::new();
    let held = |leases: &Mirror<Lease>| -> Vec<String> {
        leases
            .items
            .values()
            .filter(|l| l.metadata.name.as_deref().is_some_and(|n| n.starts_with(LEASE_PREFIX)))
            .filter(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(node))
            .filter_map(|l| l.metadata.name.clone())
            .collect()
    };
    let deadline = tokio::time::sleep(ctx.real(l2.release_timeout));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Err(StepError::Timeout {
                what: format!("{node} releasing its Cilium L2 announcements"),
                after: written(l2.release_timeout),
                detail: format!(
                    "; it still holds {} in {}. Check the cilium agent on the node; the node stays cordoned",
                    sample(held(&leases)),
                    l2.lease_namespace
                ),
            }),
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    if !leases.apply(event) || !leases.synced {
                        continue;
                    }
                    let holding = held(&leases);
                    if holding.is_empty() {
                        return Ok(json!({"released": true}));
                    }
                    ctx.progress(step, format!("{node} still holds {}", sample(holding)));
                }
                Some(Err(e)) => tracing::debug!(node, error = %e, "lease watch error; the watcher retries"),
                None => return Err(StepError::Verify(format!("the lease watch for {node} ended unexpectedly"))),
            },
        }
    }
}
