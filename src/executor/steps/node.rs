//! Changes to the Node object itself: cordon and uncordon (with a Kubernetes Event each, so
//! `kubectl describe node` shows who did it and why), the Cilium BGP selector label, and the
//! node's rollout phase (`noderoll.io/phase`, with the plan and step as annotations).

use k8s_openapi::api::core::v1::{Event as KubeEvent, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{Context, StepError};
use crate::labels::{PHASE, PLAN_ANNOTATION, STEP_ANNOTATION};
use crate::planner::{Action, Step};
use crate::world::retry;

fn nodes(ctx: &Context) -> Api<Node> {
    Api::all(ctx.client.clone())
}

async fn patch(ctx: &Context, node: &str, body: Value, what: &str) -> Result<Node, StepError> {
    let api = nodes(ctx);
    let params = PatchParams::default();
    let patch = Patch::Merge(&body);
    retry::call(&ctx.patience, || api.patch(node, &params, &patch))
        .await
        .map_err(|source| StepError::Api { context: format!("{what} node {node}"), source })
}

/// Where a node is in a rollout, as its `noderoll.io/phase` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Its batch has begun; its turn has not come.
    Queued,
    /// Leaving service: out of DNS, cordoned, its sessions moving away.
    Cordoned,
    /// Its pods are being evicted (and its routes withdrawn).
    Draining,
    /// The upgrade hook and the reboot, until the node is Ready.
    Upgrading,
    /// Checked after its upgrade, or waiting for approval.
    Verifying,
    /// A step of it failed; it stays where it stopped.
    Failed,
}

impl Phase {
    /// The label's value.
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Cordoned => "cordoned",
            Phase::Draining => "draining",
            Phase::Upgrading => "upgrading",
            Phase::Verifying => "verifying",
            Phase::Failed => "failed",
        }
    }

    /// The phase a node is shown in when `action` begins; `None` for gates, for the cordon
    /// (whose own patch shows it, so the label says cordoned exactly when noderoll's cordon
    /// is made) and for the steps from the uncordon on, whose patch removes the label (the
    /// node is back in service).
    pub(super) fn of(action: Action) -> Option<Phase> {
        match action {
            Action::DnsWithdraw | Action::DnsRepoint | Action::WaitSessions => Some(Phase::Cordoned),
            Action::Drain | Action::BgpWithdraw | Action::WaitL2Release => Some(Phase::Draining),
            Action::Upgrade | Action::WaitReady => Some(Phase::Upgrading),
            Action::Verify | Action::Approve => Some(Phase::Verifying),
            Action::Cordon
            | Action::Uncordon
            | Action::Soak
            | Action::BgpRestore
            | Action::DnsRestore
            | Action::BatchStart
            | Action::BatchDone
            | Action::Window
            | Action::Quorum
            | Action::Health => None,
        }
    }
}

/// The metadata patch that shows `phase` (and the step, if any) on a node; `None` removes
/// the label and the annotations.
fn phase_patch(ctx: &Context, phase: Option<Phase>, step: Option<&str>) -> Value {
    let plan = phase.map(|_| ctx.plan.name.clone());
    json!({"metadata": {
        "labels": {PHASE: phase.map(Phase::name)},
        "annotations": {PLAN_ANNOTATION: plan, STEP_ANNOTATION: step},
    }})
}

/// Shows the node's phase. The label is a courtesy to whoever looks at the cluster: failing
/// to set it is a warning, never a failed step.
pub(super) async fn show_phase(ctx: &Context, node: &str, phase: Option<Phase>, step: Option<&str>) {
    if let Err(e) = patch(ctx, node, phase_patch(ctx, phase, step), "label").await {
        ctx.warn(format!("cannot show the rollout phase on node {node}: {e}"));
    }
}

/// The journal key saying whether a node was cordoned before noderoll's first change to it.
const WAS_CORDONED: &str = "wasCordoned";
/// The journal key of the steps of a node left alone because it was cordoned already.
pub(super) const SKIPPED: &str = "skipped";

/// `detail` (an object, or null) with whether the node is cordoned now, read before the
/// step acts and journaled with its start.
pub(super) async fn with_cordon_state(ctx: &Context, node: &str, detail: Value) -> Result<Value, StepError> {
    let found = ctx.node(node).await?;
    let cordoned = found.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let mut detail = if detail.is_null() { json!({}) } else { detail };
    if let Some(object) = detail.as_object_mut() {
        object.insert(WAS_CORDONED.into(), json!(cordoned));
    }
    Ok(detail)
}

/// Whether a journaled detail says the node was cordoned before noderoll touched it.
pub(crate) fn cordoned_before(detail: &Value) -> bool {
    detail[WAS_CORDONED] == true
}

/// What a step of a node left alone reports (the node's first step says why, once, and
/// takes the node out of the queue).
pub(super) async fn skipped(ctx: &Context, step: &Step) -> Value {
    let node = step.node.as_deref().unwrap_or_default();
    if ctx.starts_chain(step) {
        ctx.progress(step, format!("{node} was cordoned before the rollout; its batch skips such nodes (alreadyCordoned: skip), so it is left as it is"));
        show_phase(ctx, node, None, None).await;
    }
    json!({SKIPPED: "cordoned before the rollout", WAS_CORDONED: true})
}

/// Cordons the step's node, unless it was cordoned already (then it stays as it is, and
/// stays cordoned at the end).
pub(super) async fn cordon(ctx: &Context, step: &Step, detail: &Value) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    if cordoned_before(detail) {
        ctx.progress(step, format!("{node} was cordoned before the rollout: it is upgraded and left cordoned"));
        show_phase(ctx, node, Some(Phase::Cordoned), Some(&step.id)).await;
        return Ok(json!({WAS_CORDONED: true}));
    }
    let mut body = phase_patch(ctx, Some(Phase::Cordoned), Some(&step.id));
    body["spec"] = json!({"unschedulable": true});
    let patched = patch(ctx, node, body, "cordon").await?;
    let message = format!("noderoll plan {}: cordoned for its upgrade", ctx.plan.name);
    record_event(ctx, &patched, "NoderollCordon", &message).await;
    Ok(json!({WAS_CORDONED: false}))
}

/// Uncordons the step's node if noderoll cordoned it: one cordoned before the rollout stays
/// cordoned, as whoever cordoned it meant. `why` ends the Event on the node.
pub(super) async fn uncordon(ctx: &Context, step: &Step, why: &str) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    if ctx.cordoned_before(node) {
        ctx.progress(step, format!("{node} stays cordoned: it was cordoned before the rollout, not by noderoll"));
        show_phase(ctx, node, None, None).await;
        return Ok(json!({"leftCordoned": true}));
    }
    let mut body = phase_patch(ctx, None, None);
    body["spec"] = json!({"unschedulable": null});
    let patched = patch(ctx, node, body, "uncordon").await?;
    let message = format!("noderoll plan {}: {why}", ctx.plan.name);
    record_event(ctx, &patched, "NoderollUncordon", &message).await;
    Ok(Value::Null)
}

/// Creates an Event on the node. An Event is a courtesy: failing to write one is a warning.
async fn record_event(ctx: &Context, node: &Node, reason: &str, message: &str) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let event = KubeEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.noderoll.")),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name.clone()),
            uid: node.metadata.uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Normal".into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        reporting_component: Some("noderoll".into()),
        reporting_instance: Some(crate::executor::lock::holder_identity()),
        action: Some(reason.trim_start_matches("Noderoll").into()),
        source: Some(k8s_openapi::api::core::v1::EventSource { component: Some("noderoll".into()), host: None }),
        ..KubeEvent::default()
    };
    let api: Api<KubeEvent> = Api::namespaced(ctx.client.clone(), "default");
    let params = PostParams::default();
    if let Err(e) = retry::call(&ctx.patience, || api.create(&params, &event)).await {
        ctx.warn(format!("cannot record the {reason} Event on node {name}: {e}"));
    }
}

/// The BGP label's current value, recorded before it is removed so that restore puts back
/// exactly what was there.
pub(super) async fn bgp_label_value(ctx: &Context, node: &str) -> Result<Value, StepError> {
    let Some(label) = &ctx.plan.load_balancer.bgp_label else { return Ok(Value::Null) };
    let found = ctx.node(node).await?;
    let value = found.metadata.labels.as_ref().and_then(|l| l.get(&label.key)).cloned();
    Ok(json!({"label": label.key, "value": value}))
}

/// Removes the label the CiliumBGPPeeringPolicy selects nodes by, so the node's routes are
/// withdrawn.
pub(super) async fn bgp_withdraw(ctx: &Context, node: &str) -> Result<(), StepError> {
    let Some(label) = &ctx.plan.load_balancer.bgp_label else { return Ok(()) };
    patch(ctx, node, json!({"metadata": {"labels": {label.key.clone(): null}}}), "remove the BGP label from").await?;
    Ok(())
}

/// Puts the BGP label back with the value it had (or the plan's value).
pub(super) async fn bgp_restore(ctx: &Context, node: &str) -> Result<Value, StepError> {
    let Some(label) = &ctx.plan.load_balancer.bgp_label else { return Ok(Value::Null) };
    let recorded = ctx.finished_detail(&format!("{node}/bgp-withdraw"));
    let value = recorded["value"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| label.value.clone())
        .unwrap_or_else(|| "true".to_owned());
    patch(ctx, node, json!({"metadata": {"labels": {label.key.clone(): value}}}), "restore the BGP label on").await?;
    Ok(json!({"label": label.key, "value": value}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_reached_and_documented() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/executor.md")).expect("docs");
        let mut phases: Vec<Phase> = Action::ALL.iter().filter_map(|&a| Phase::of(a)).collect();
        phases.extend([Phase::Queued, Phase::Cordoned, Phase::Failed]);
        for phase in
            [Phase::Queued, Phase::Cordoned, Phase::Draining, Phase::Upgrading, Phase::Verifying, Phase::Failed]
        {
            assert!(phases.contains(&phase), "{} is never shown", phase.name());
            assert!(
                docs.contains(&format!("| `{}` |", phase.name())),
                "docs/executor.md's phase table lacks {}",
                phase.name()
            );
        }
    }
}
