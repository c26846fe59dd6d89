//! The ServiceLB DNS steps: take a service node's address out of the record users resolve
//! before it is cordoned, and put it back once it serves again. Each change is made from
//! the set just read (compare-and-set where the provider can), never empties the set, and
//! counts as done only once every resolver serves the new answer and the old TTL has run
//! out — the runbook's "once it is no longer getting resolved".

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use super::{Context, StepError};
use crate::executor::event::Event;
use crate::plan::Plan;
use crate::plan::duration::written;
use crate::plan::model::{AddressType, Role};
use crate::plan::resolved::DnsPlan;
use crate::planner::{Planned, RecordChange, Step};
use crate::world::dns::{Applied, Change, ChangeKind, DnsError, DnsProvider, RecordSet, show};
use crate::world::retry::Patience;

/// How often resolvers are asked while a change propagates.
const POLL: Duration = Duration::from_millis(250);
/// Tries of one DNS request while the server is unreachable, a second apart: a DNS server
/// is not expected to blink the way the API server does during a service node's restart,
/// so a longer outage halts the rollout rather than hiding it.
const TRIES: u32 = 3;

/// A node's address for the record: the plan's map, else the Node's status address.
async fn address(client: &kube::Client, patience: &Patience, plan: &Plan, node: &str) -> Result<IpAddr, StepError> {
    let dns = record_plan(plan)?;
    if let Some(address) = dns.addresses.get(node) {
        return Ok(*address);
    }
    let found = super::read_node(client, patience, node).await?;
    address_from(dns, node, &found)
}

/// `address` of a Node already read.
fn address_from(dns: &DnsPlan, name: &str, node: &Node) -> Result<IpAddr, StepError> {
    if let Some(address) = dns.addresses.get(name) {
        return Ok(*address);
    }
    let kind = match dns.address_type {
        AddressType::InternalIP => "InternalIP",
        AddressType::ExternalIP => "ExternalIP",
    };
    status_address(node, kind)
        .ok_or_else(|| DnsError::NoAddress { node: name.to_owned(), kind: kind.to_owned() }.into())
}

fn record_plan(plan: &Plan) -> Result<&DnsPlan, StepError> {
    plan.load_balancer.dns.as_ref().ok_or_else(|| StepError::Verify("the plan has no DNS record".into()))
}

/// The Node's status address of a type (`InternalIP`, `ExternalIP`).
fn status_address(node: &Node, kind: &str) -> Option<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .find(|a| a.type_ == kind)
        .and_then(|a| a.address.parse().ok())
}

/// The plan's service nodes, in plan order.
fn service_nodes(planned: &Planned) -> Vec<&str> {
    planned
        .batches
        .iter()
        .filter(|b| b.role == Role::Service)
        .flat_map(|b| b.nodes.iter().map(String::as_str))
        .collect()
}

async fn addresses_of(
    client: &kube::Client,
    patience: &Patience,
    plan: &Plan,
    nodes: &[&str],
) -> Result<Vec<IpAddr>, StepError> {
    let mut addresses = Vec::new();
    for node in nodes {
        addresses.push(address(client, patience, plan, node).await?);
    }
    Ok(addresses)
}

/// What the record holds when no service node is out: every service node's address
/// (round-robin), or the address of the node the record points at (single-record).
pub async fn full_record(
    client: &kube::Client,
    patience: &Patience,
    plan: &Plan,
    planned: &Planned,
) -> Result<Vec<IpAddr>, StepError> {
    match &planned.record_target {
        Some((target, _)) => addresses_of(client, patience, plan, &[target.as_str()]).await,
        None => addresses_of(client, patience, plan, &service_nodes(planned)).await,
    }
}

/// Before the first step: the record must be what the plan describes. A new rollout wants
/// exactly the full record. A resumed one may find a rollout's change still in place: a
/// round-robin record missing some service nodes' addresses (not all), or a single record
/// repointed to another service node. Anything else is drift: someone else edits the
/// record, or the plan names the wrong addresses, and changing it now could take users'
/// only address away.
pub async fn preflight(
    client: &kube::Client,
    patience: &Patience,
    plan: &Plan,
    planned: &Planned,
    provider: &dyn DnsProvider,
    resumed: bool,
) -> Result<(), StepError> {
    let Some(dns) = &plan.load_balancer.dns else { return Ok(()) };
    let full = full_record(client, patience, plan, planned).await?;
    let found = with_retries(|| provider.read()).await?.addresses;
    let (fits, expected) = match (resumed, planned.record_target.is_some()) {
        (false, _) => {
            let mut sorted_full = full.clone();
            sorted_full.sort();
            let mut sorted_found = found.clone();
            sorted_found.sort();
            (sorted_found == sorted_full, show(&full))
        }
        (true, false) => {
            (!found.is_empty() && found.iter().all(|a| full.contains(a)), format!("part of {}", show(&full)))
        }
        (true, true) => {
            let service = addresses_of(client, patience, plan, &service_nodes(planned)).await?;
            (found.len() == 1 && service.contains(&found[0]), format!("one of {}", show(&service)))
        }
    };
    if !fits {
        return Err(DnsError::Drift { record: dns.name.clone(), expected, found: show(&found) }.into());
    }
    with_retries(|| provider.probe(&found)).await?;
    Ok(())
}

/// Retries a DNS request while the server is unreachable.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, DnsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DnsError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tries < TRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// The record set before a withdraw or repoint, for the journal.
pub(super) async fn before_change(ctx: &Context) -> Result<Value, StepError> {
    let Some(provider) = &ctx.dns else { return Ok(Value::Null) };
    let before = with_retries(|| provider.read()).await?;
    Ok(json!({"before": before.addresses, "ttl": before.ttl}))
}

/// Withdraws, repoints or restores the step's node, then waits until users get the new
/// answer. `detail` is what `before_change` journaled before the first attempt: a resume
/// finds the record already changed, and only the journal says the node was served.
pub(super) async fn act(ctx: &Context, step: &Step, detail: &Value) -> Result<Value, StepError> {
    let (Some(provider), Some(dns)) = (&ctx.dns, &ctx.plan.load_balancer.dns) else { return Ok(Value::Null) };
    let node = step.node.as_deref().unwrap_or_default();
    let own = address(&ctx.client, &ctx.patience, &ctx.plan, node).await?;
    let current = with_retries(|| provider.read()).await?;
    let Some(record) = step.record else { return Ok(Value::Null) };
    let (kind, address, after): (ChangeKind, IpAddr, Vec<IpAddr>) = match record {
        RecordChange::Withdraw => {
            let rest: Vec<IpAddr> = current.addresses.iter().copied().filter(|a| *a != own).collect();
            if rest.is_empty() {
                return Err(DnsError::WouldEmpty { record: dns.name.clone(), address: own }.into());
            }
            (ChangeKind::Withdraw, own, rest)
        }
        RecordChange::Repoint => {
            let target = step.target.as_deref().unwrap_or_default();
            let found = ctx.node(target).await?;
            if !super::is_ready(&found) || found.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
                return Err(StepError::Verify(format!(
                    "the record cannot be moved to {target}: it is not Ready or it is cordoned; bring it back into service, then run apply again"
                )));
            }
            let target = address_from(dns, target, &found)?;
            (ChangeKind::Repoint, target, vec![target])
        }
        RecordChange::Rejoin => {
            let mut all = current.addresses.clone();
            if !all.contains(&own) {
                all.push(own);
            }
            (ChangeKind::Restore, own, all)
        }
        RecordChange::PointBack => (ChangeKind::Restore, own, vec![own]),
    };
    let ttl = dns.ttl.unwrap_or(current.ttl);
    let changed = after != current.addresses;
    if changed {
        let change = Change { kind, record: &dns.name, node, address, before: &current.addresses, after: &after, ttl };
        match with_retries(|| provider.apply(&change)).await? {
            Applied::Done => {}
            Applied::ByOperator(instructions) => {
                let asked =
                    Event::AwaitingDnsChange { step: step.id.clone(), node: node.to_owned(), change: instructions };
                super::approved(ctx, &step.id, asked).await?;
            }
        }
        ctx.progress(step, format!("{}: {} → {}", dns.name, show(&current.addresses), show(&after)));
    }
    let served = |answer: &[IpAddr]| match kind {
        ChangeKind::Withdraw => !answer.contains(&own),
        ChangeKind::Repoint => answer.contains(&address) && !answer.contains(&own),
        ChangeKind::Restore => answer.contains(&own),
    };
    propagated(ctx, step, &dns.name, dns.propagation_timeout, served).await?;
    // A resume cannot know how much of the old TTL passed before the crash: it waits the
    // whole of it again.
    let journaled_ttl = detail["ttl"].as_u64().and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
    let was_served = current.addresses.contains(&own) || journaled_before(detail).contains(&own);
    if kind != ChangeKind::Restore && was_served {
        let old_ttl = Duration::from_secs(u64::from(current.ttl.max(journaled_ttl)));
        ctx.progress(step, format!("waiting out the old TTL ({}) so caches drop {own}", written(old_ttl)));
        tokio::time::sleep(ctx.real(old_ttl)).await;
    }
    Ok(json!({"address": own, "changed": changed, "records": after, "ttl": ttl}))
}

/// The record set `before_change` journaled (empty when it journaled none).
fn journaled_before(detail: &Value) -> Vec<IpAddr> {
    detail["before"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse().ok()).collect()
}

/// Asks every resolver until each serves an answer `served` accepts.
async fn propagated(
    ctx: &Context,
    step: &Step,
    record: &str,
    timeout: Duration,
    served: impl Fn(&[IpAddr]) -> bool,
) -> Result<(), StepError> {
    if ctx.resolvers().is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + ctx.real(timeout);
    let mut reported = false;
    loop {
        let mut waiting = Vec::new();
        for resolver in ctx.resolvers() {
            match crate::world::dns::resolve::served(resolver, record).await {
                Ok(RecordSet { addresses, .. }) if served(&addresses) => {}
                Ok(RecordSet { addresses, .. }) => {
                    waiting.push(format!("{resolver} still serves {}", show(&addresses)))
                }
                Err(e) => waiting.push(e.to_string()),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Timeout {
                what: format!("the change of {record} reaching every resolver"),
                after: written(timeout),
                detail: format!(": {}", waiting.join("; ")),
            });
        }
        if !reported {
            ctx.progress(step, format!("waiting for the resolvers: {}", waiting.join("; ")));
            reported = true;
        }
        tokio::time::sleep(POLL).await;
    }
}
