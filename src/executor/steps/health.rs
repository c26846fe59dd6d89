//! Health gates: before a batch (and, with `health.before: node`, before each node) the
//! rollout waits until the nodes of the batches it runs after are Ready, no firing
//! Prometheus alert matches the plan's filter, and the plan's command exits 0. After
//! `health.timeout` the gate fails and the rollout halts before the batch or node starts.

use std::time::Duration;

use serde_json::{Value, json};

use super::hook::{self, Hook};
use super::{Context, StepError, is_ready};
use crate::plan::duration::written;
use crate::plan::resolved::HealthPlan;
use crate::planner::Step;

/// How long one `/api/v1/alerts` request may take.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The gate before a batch.
pub(super) async fn before_batch(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    wait_healthy(ctx, step, None).await
}

/// The gate before a node's first step.
pub(super) async fn before_node(ctx: &Context, step: &Step) -> Result<(), StepError> {
    match &ctx.plan.health {
        Some(health) if health.per_node => wait_healthy(ctx, step, step.node.as_deref()).await.map(|_| ()),
        _ => Ok(()),
    }
}

async fn wait_healthy(ctx: &Context, step: &Step, node: Option<&str>) -> Result<Value, StepError> {
    let Some(health) = &ctx.plan.health else { return Ok(Value::Null) };
    let deadline = tokio::time::Instant::now() + ctx.real(health.timeout);
    let mut last = String::new();
    loop {
        let problems = problems(ctx, step, health, node).await?;
        if problems.is_empty() {
            return Ok(json!({"healthy": true}));
        }
        let problem = problems.join("; ");
        if problem != last {
            ctx.progress(step, format!("waiting for health: {problem}"));
            last.clone_from(&problem);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Timeout {
                what: "the health gate".into(),
                after: written(health.timeout),
                detail: format!("; {problem}. Nothing was started; fix it, then run apply again"),
            });
        }
        tokio::time::sleep(ctx.real(health.interval).max(Duration::from_millis(100))).await;
    }
}

/// Everything unhealthy now; empty when the gate may open. API errors reading Nodes are
/// the step's errors (retried by the API patience), not health problems.
async fn problems(
    ctx: &Context,
    step: &Step,
    health: &HealthPlan,
    node: Option<&str>,
) -> Result<Vec<String>, StepError> {
    let mut problems = Vec::new();
    if node.is_none() && health.previous_batch_ready {
        let not_ready = previous_not_ready(ctx, step).await?;
        if !not_ready.is_empty() {
            problems.push(format!("not Ready: {}", not_ready.join(", ")));
        }
    }
    problems.extend(alarms(ctx, step, node).await);
    Ok(problems)
}

/// What the plan's Prometheus alerts and command report now (empty when both pass, or the
/// plan has neither): the checks a soak repeats while it waits.
pub(super) async fn alarms(ctx: &Context, step: &Step, node: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(health) = &ctx.plan.health else { return problems };
    // A rehearsal reaches nothing outside its simulated cluster: its gates keep the
    // readiness check and leave out Prometheus and the command.
    let outside = ctx.rehearsal.is_none();
    if let Some((url, filter)) = health.prometheus.as_ref().filter(|_| outside) {
        match firing(ctx, url, filter.as_ref()).await {
            Ok(alerts) if alerts.is_empty() => {}
            Ok(alerts) => problems.push(format!("alerts firing: {}", alerts.join(", "))),
            Err(e) => problems.push(format!("cannot read alerts from Prometheus: {e}")),
        }
    }
    if let Some(template) = health.command.as_ref().filter(|_| outside) {
        let batch = step.batch.clone().unwrap_or_default();
        let gate = Hook { name: "health", template, shell: false, timeout: health.timeout };
        if let Err(e) = hook::run(ctx, node.unwrap_or_default(), &batch, &gate).await {
            problems.push(e.to_string());
        }
    }
    problems
}

/// The nodes of the batches this step's batch runs after that are not Ready.
async fn previous_not_ready(ctx: &Context, step: &Step) -> Result<Vec<String>, StepError> {
    let Some(batch) = ctx.planned_batch(step) else { return Ok(Vec::new()) };
    let mut not_ready = Vec::new();
    for before in ctx.batches.iter().filter(|b| batch.after.contains(&b.name)) {
        for name in &before.nodes {
            if !is_ready(&ctx.node(name).await?) {
                not_ready.push(name.clone());
            }
        }
    }
    Ok(not_ready)
}

/// Names of the firing alerts `filter` matches (all firing alerts without one).
async fn firing(
    ctx: &Context,
    url: &str,
    filter: Option<&crate::plan::selector::Selector>,
) -> Result<Vec<String>, String> {
    let http = ctx.http.as_ref().ok_or("no HTTP client")?;
    let answer = http.get_json(&format!("{url}/api/v1/alerts"), PROMETHEUS_TIMEOUT).await.map_err(|e| e.to_string())?;
    if answer["status"] != "success" {
        return Err(format!("{url}/api/v1/alerts answered {answer}"));
    }
    let mut names: Vec<String> = answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| {
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(a["labels"].clone()).ok()?;
            filter.is_none_or(|f| f.matches(&labels)).then(|| labels.get("alertname").cloned().unwrap_or_default())
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}
