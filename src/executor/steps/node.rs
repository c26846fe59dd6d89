//! Changes to the Node object itself: cordon and uncordon (with a Kubernetes Event each, so
//! `kubectl describe node` shows who did it and why), and the Cilium BGP selector label.

use k8s_openapi::api::core::v1::{Event as KubeEvent, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{Context, StepError};
use crate::planner::Step;
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

/// Cordons (`true`) or uncordons the step's node.
pub(super) async fn set_unschedulable(ctx: &Context, step: &Step, unschedulable: bool) -> Result<Value, StepError> {
    let node = step.node.as_deref().unwrap_or_default();
    let (what, value) = if unschedulable { ("cordon", json!(true)) } else { ("uncordon", Value::Null) };
    let patched = patch(ctx, node, json!({"spec": {"unschedulable": value}}), what).await?;
    let (reason, message) = if unschedulable {
        ("NoderollCordon", format!("noderoll plan {}: cordoned for its upgrade", ctx.plan.name))
    } else {
        ("NoderollUncordon", format!("noderoll plan {}: upgraded and verified, schedulable again", ctx.plan.name))
    };
    record_event(ctx, &patched, reason, &message).await;
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
