//! upgrade, wait-ready and verify: run the hook once, know the node rebooted by its boot ID,
//! and check it came back as the plan expects.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::hook::{self, Hook};
use super::{Context, StepError, gates, is_ready};
use crate::plan::duration::written;
use crate::plan::model::Role;
use crate::plan::resolved::BatchPlan;
use crate::planner::Step;

fn boot_id(node: &Node) -> String {
    node.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.boot_id.clone()).unwrap_or_default()
}

/// The boot ID and versions before the upgrade: how wait-ready and a resume tell that the
/// node rebooted.
pub(super) async fn before_upgrade(ctx: &Context, name: &str) -> Result<Value, StepError> {
    let node = ctx.node(name).await?;
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    Ok(json!({
        "bootIdBefore": boot_id(&node),
        "kubeletVersionBefore": info.map(|i| i.kubelet_version.clone()),
        "osImageBefore": info.map(|i| i.os_image.clone()),
    }))
}

/// Runs the upgrade hook, unless a resume finds the node already went through it; first,
/// for a service node, etcd must be able to lose its member.
pub(super) async fn upgrade(
    ctx: &Context,
    step: &Step,
    batch: &BatchPlan,
    detail: &Value,
    resumed: bool,
) -> Result<Value, StepError> {
    let name = step.node.as_deref().unwrap_or_default();
    if resumed {
        hook::wait_for_orphan(ctx, name, "upgrade").await;
        let node = ctx.node(name).await?;
        let rebooted = boot_id(&node) != detail["bootIdBefore"].as_str().unwrap_or_default();
        if rebooted || !is_ready(&node) {
            ctx.progress(step, "an earlier run's upgrade already took the node down; not running the hook again");
            return Ok(with(detail, json!({"hookRun": false})));
        }
    }
    // The member goes down here, not at the cordon: one lost since this node's chain began
    // (its drain can take minutes) would make this the second one out.
    if batch.role == Role::Service {
        gates::etcd_before_leaving(ctx, step).await?;
    }
    let settings = &batch.settings.upgrade;
    let overridden = ctx.rehearsal.as_ref().and_then(|r| r.upgrade.get(&batch.name));
    let template = overridden.unwrap_or(&settings.command);
    let shell = settings.shell && overridden.is_none();
    let hook = Hook { name: "upgrade", template, shell, timeout: settings.timeout };
    let log = hook::run(ctx, name, &batch.name, &hook).await?;
    Ok(with(detail, json!({"hookRun": true, "log": log.display().to_string()})))
}

fn with(base: &Value, extra: Value) -> Value {
    let mut merged = base.clone();
    if let (Some(m), Some(e)) = (merged.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    merged
}

/// Waits, watching the node, for a new boot ID and Ready.
pub(super) async fn wait_ready(ctx: &Context, step: &Step, batch: &BatchPlan) -> Result<Value, StepError> {
    let name = step.node.as_deref().unwrap_or_default();
    let before =
        ctx.finished_detail(&format!("{name}/upgrade"))["bootIdBefore"].as_str().unwrap_or_default().to_owned();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let timeout = batch.settings.verify.ready_timeout;
    let deadline = tokio::time::sleep(ctx.real(timeout));
    tokio::pin!(deadline);
    let mut state = "not seen yet".to_owned();
    loop {
        tokio::select! {
            () = &mut deadline => return Err(StepError::Timeout {
                what: format!("{name} coming back Ready with a new boot ID"),
                after: written(timeout),
                detail: format!("; it is {state}. Check the machine's console; once it is back, run apply again (the node stays cordoned)"),
            }),
            item = stream.next() => match item {
                Some(Ok(node)) => {
                    let rebooted = before.is_empty() || boot_id(&node) != before;
                    let ready = is_ready(&node);
                    if rebooted && ready {
                        return Ok(json!({"bootId": boot_id(&node)}));
                    }
                    let now = match (rebooted, ready) {
                        (false, true) => "Ready but not rebooted (same boot ID)",
                        (_, false) => "NotReady",
                        (true, true) => "Ready",
                    };
                    if now != state {
                        state = now.to_owned();
                        ctx.progress(step, format!("{name} is {state}"));
                    }
                }
                Some(Err(e)) => tracing::debug!(node = name, error = %e, "node watch error; the watcher retries"),
                None => return Err(StepError::Verify(format!("the watch on node {name} ended unexpectedly"))),
            },
        }
    }
}

/// Checks versions against the plan and runs the verify hook.
pub(super) async fn verify(ctx: &Context, step: &Step, batch: &BatchPlan) -> Result<Value, StepError> {
    let name = step.node.as_deref().unwrap_or_default();
    let node = ctx.node(name).await?;
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    let kubelet = info.map(|i| i.kubelet_version.clone()).unwrap_or_default();
    let os = info.map(|i| i.os_image.clone()).unwrap_or_default();
    let expected = &batch.settings.verify;
    let mut wrong = Vec::new();
    if let Some(want) = expected.kubelet_version.as_ref().filter(|w| **w != kubelet) {
        wrong.push(format!("kubelet {kubelet}, the plan expects {want}"));
    }
    if let Some(want) = expected.os_image.as_ref().filter(|w| **w != os) {
        wrong.push(format!("OS image `{os}`, the plan expects `{want}`"));
    }
    if !wrong.is_empty() {
        return Err(StepError::Verify(format!(
            "{name} reports {}; it stays cordoned: check the upgrade's log, fix the node, then run apply again",
            wrong.join(" and ")
        )));
    }
    let mut hook_log = Value::Null;
    if let Some(template) = expected.command.as_ref().filter(|_| ctx.rehearsal.is_none()) {
        let hook = Hook { name: "verify", template, shell: false, timeout: expected.ready_timeout };
        hook_log = json!(hook::run(ctx, name, &batch.name, &hook).await?.display().to_string());
    }
    Ok(json!({"kubeletVersion": kubelet, "osImage": os, "verifyLog": hook_log}))
}
