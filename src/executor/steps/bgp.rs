//! Cilium BGP peering around a node's upgrade. Cilium's "Shutting Down a Node" procedure
//! deselects the node and then waits for its routes to be withdrawn before the node goes
//! down; removing the label alone leaves the peers routing to the node until they notice.
//!
//! With the BGP control plane v2 (`cilium.io/v2` since Cilium 1.18, `v2alpha1` before),
//! the operator keeps one `CiliumBGPNodeConfig` per selected node, named after it, and the
//! node's agent writes each session's state into its status:
//! `status.bgpInstances[].peers[].peeringState` (`idle`, `connect`, `active`, `open_sent`,
//! `open_confirm`, `established`, `unknown`). A node the `CiliumBGPClusterConfig` no longer
//! selects loses its `CiliumBGPNodeConfig`. So after deselecting, the node is withdrawn
//! once it has no such object or none of its peers is `established`; after reselecting, it
//! serves again once one is.

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};

use super::{Context, StepError};
use crate::plan::duration::written;
use crate::planner::Step;

/// The versions `CiliumBGPNodeConfig` is served in, newest first.
const VERSIONS: [&str; 2] = ["v2", "v2alpha1"];

/// How often the node's state is read, in plan time.
const INTERVAL: Duration = Duration::from_secs(1);

/// What the wait is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peering {
    /// No established session: the peers have the node's routes withdrawn.
    Down,
    /// At least one established session: the node announces again.
    Up,
}

/// Waits until the node's BGP peering is `want`, up to `loadBalancer.bgp.peeringTimeout`.
pub(super) async fn wait(ctx: &Context, step: &Step, want: Peering) -> Result<Value, StepError> {
    let Some(peering) = &ctx.plan.load_balancer.bgp_peering else { return Ok(Value::Null) };
    let timeout = peering.timeout;
    let node = step.node.as_deref().unwrap_or_default();
    let command = match want {
        Peering::Down => peering.withdrawn_command.as_ref(),
        Peering::Up => peering.announced_command.as_ref(),
    };
    if let Some(template) = command {
        return wait_for_command(ctx, step, want, template, timeout).await;
    }
    let Some(version) = *ctx.bgp_node_configs.get_or_try_init(|| served(ctx)).await? else {
        return Ok(json!({"awaited": false}));
    };
    let api = node_configs(ctx, version);
    let deadline = tokio::time::Instant::now() + ctx.real(timeout);
    let mut last = None;
    loop {
        let found = crate::world::retry::call(&ctx.patience, || api.get_opt(node))
            .await
            .map_err(|source| StepError::Api { context: format!("read the CiliumBGPNodeConfig of {node}"), source })?;
        let established = found.as_ref().map(established).unwrap_or_default();
        match want {
            Peering::Down if established.is_empty() => {
                return Ok(json!({"awaited": true, "nodeConfig": found.is_some()}));
            }
            Peering::Up if !established.is_empty() => return Ok(json!({"awaited": true, "established": established})),
            _ => {}
        }
        let now = match want {
            Peering::Down => format!("still established: {}", established.join(", ")),
            Peering::Up if found.is_none() => "no CiliumBGPNodeConfig yet".to_owned(),
            Peering::Up => "no peer established yet".to_owned(),
        };
        if last.as_ref() != Some(&now) {
            ctx.progress(step, format!("waiting for {node}'s BGP peering to go {}: {now}", want.word()));
            last = Some(now.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Timeout {
                what: format!("{node}'s BGP peering going {}", want.word()),
                after: written(timeout),
                detail: format!("; {now} (CiliumBGPNodeConfig {node}). {}", want.advice()),
            });
        }
        tokio::time::sleep(ctx.real(INTERVAL).max(Duration::from_millis(100))).await;
    }
}

/// How often the plan's check command is run, in plan time.
const COMMAND_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the plan's check command until it exits 0, up to `timeout`.
async fn wait_for_command(
    ctx: &Context,
    step: &Step,
    want: Peering,
    template: &crate::plan::template::CommandTemplate,
    timeout: Duration,
) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    let batch = step.batch.clone().unwrap_or_default();
    let name = match want {
        Peering::Down => "bgp-withdrawn",
        Peering::Up => "bgp-announced",
    };
    let deadline = tokio::time::Instant::now() + ctx.real(timeout);
    let mut told = false;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let check = super::hook::Hook { name, template, shell: false, timeout: timeout.min(COMMAND_INTERVAL * 15) };
        let problem = match super::hook::run(ctx, node, &batch, &check).await {
            Ok(_) => return Ok(json!({"awaited": true, "command": name})),
            Err(e) => e.to_string(),
        };
        if !told {
            ctx.progress(step, format!("waiting for {node}'s BGP peering to go {}: {problem}", want.word()));
            told = true;
        }
        if left.is_zero() {
            return Err(StepError::Timeout {
                what: format!("{node}'s BGP peering going {}", want.word()),
                after: written(timeout),
                detail: format!("; the {name} command still fails: {problem}. {}", want.advice()),
            });
        }
        tokio::time::sleep(ctx.real(COMMAND_INTERVAL).min(left).max(Duration::from_millis(100))).await;
    }
}

impl Peering {
    fn word(self) -> &'static str {
        match self {
            Peering::Down => "down",
            Peering::Up => "up",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            Peering::Down => {
                "Check that the CiliumBGPClusterConfig's nodeSelector uses the label the plan removes (loadBalancer.bgp.nodeLabel) and that the cilium operator runs; the node is drained and cordoned, not yet upgraded"
            }
            Peering::Up => {
                "Check the cilium agent on the node and its peers (`cilium bgp peers`); the node is upgraded and uncordoned but does not announce its routes"
            }
        }
    }
}

/// The `CiliumBGPNodeConfig` API of one version.
fn node_configs(ctx: &Context, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cilium.io", version, "CiliumBGPNodeConfig");
    Api::<DynamicObject>::all_with(ctx.client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "ciliumbgpnodeconfigs"))
}

/// The newest version of `CiliumBGPNodeConfig` the cluster serves, if any; when none, says
/// once that the BGP steps will not wait.
async fn served(ctx: &Context) -> Result<Option<&'static str>, StepError> {
    for version in VERSIONS {
        let api = node_configs(ctx, version);
        let one = ListParams::default().limit(1);
        match crate::world::retry::call(&ctx.patience, || api.list_metadata(&one)).await {
            Ok(_) => return Ok(Some(version)),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => return Err(StepError::Api { context: "list CiliumBGPNodeConfigs".into(), source }),
        }
    }
    ctx.warn(
        "the cluster serves no CiliumBGPNodeConfig (cilium.io/v2 or v2alpha1; BGPv1's CiliumBGPPeeringPolicy keeps no per-node state), so the nodes' BGP sessions cannot be watched: bgp-withdraw and bgp-restore go on without waiting for them",
    );
    Ok(None)
}

/// The node's established sessions, as `instance/peer (address)`.
fn established(config: &DynamicObject) -> Vec<String> {
    let instances = config.data["status"]["bgpInstances"].as_array().into_iter().flatten();
    instances
        .flat_map(|instance| {
            let name = instance["name"].as_str().unwrap_or("?");
            instance["peers"].as_array().into_iter().flatten().filter(|p| p["peeringState"] == "established").map(
                move |p| {
                    format!(
                        "{name}/{} ({})",
                        p["name"].as_str().unwrap_or("?"),
                        p["peerAddress"].as_str().unwrap_or("?")
                    )
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(status: Value) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumBGPNodeConfig",
            "metadata": {"name": "ws01"}, "spec": {"bgpInstances": []}, "status": status}))
        .expect("object")
    }

    #[test]
    fn only_established_peers_count_as_announcing() {
        let status = json!({"bgpInstances": [
            {"name": "tor", "localASN": 65001, "peers": [
                {"name": "tor-a", "peerAddress": "10.0.0.1", "peerASN": 65000, "peeringState": "established"},
                {"name": "tor-b", "peerAddress": "10.0.0.2", "peerASN": 65000, "peeringState": "active"}]},
            {"name": "spine", "peers": [{"name": "s1", "peerAddress": "10.0.1.1", "peeringState": "idle"}]}]});
        assert_eq!(established(&config(status)), ["tor/tor-a (10.0.0.1)"]);
        assert!(established(&config(json!({}))).is_empty(), "an agent that has written nothing yet");
        let down =
            json!({"bgpInstances": [{"name": "tor", "peers": [{"name": "tor-a", "peeringState": "open_sent"}]}]});
        assert!(established(&config(down)).is_empty());
    }
}
