//! The ServiceLB DNS steps: take a service node's address out of the record users resolve
//! before it is cordoned, and put it back once it serves again. The record set is changed
//! only by compare-and-set through a [`DnsProvider`], so an edit someone else made meanwhile
//! is detected rather than overwritten, and a change that would empty the set is refused.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use super::{Context, StepError};
use crate::plan::model::{AddressType, DnsStrategy};
use crate::planner::{Action, Step};

/// Why a DNS change cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Withdrawing would leave the record with no address.
    #[error(
        "withdrawing {address} from {record} would leave it with no address; restore another service node's record first"
    )]
    WouldEmpty {
        /// The record.
        record: String,
        /// The address.
        address: IpAddr,
    },
    /// The record set is not what was just read: someone else changed it.
    #[error(
        "{record} changed while noderoll was updating it (expected {expected}, found {found}); check who else edits it, then run apply again"
    )]
    Changed {
        /// The record.
        record: String,
        /// What noderoll read.
        expected: String,
        /// What the server has.
        found: String,
    },
    /// The node's address is unknown.
    #[error("node {node} has no {kind} address and the plan's dns.addresses does not list it; add it there")]
    NoAddress {
        /// The node.
        node: String,
        /// The address type looked for.
        kind: String,
    },
    /// The provider failed.
    #[error("{0}")]
    Provider(String),
}

/// Reads and changes the record users resolve.
pub trait DnsProvider: Send + Sync + Debug {
    /// The record's addresses now.
    fn read(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, DnsError>>;
    /// Replaces the set, provided it still is `expected`.
    fn write<'a>(&'a self, expected: &'a [IpAddr], new: &'a [IpAddr]) -> BoxFuture<'a, Result<(), DnsError>>;
}

/// A record set in memory, for rehearsals: it keeps every state it went through, so the
/// rehearsal can prove the set was never empty.
#[derive(Debug)]
pub struct SimulatedDns {
    record: String,
    state: Mutex<(Vec<IpAddr>, Vec<Vec<IpAddr>>)>,
}

impl SimulatedDns {
    /// A record with these addresses.
    pub fn new(record: &str, addresses: Vec<IpAddr>) -> Self {
        SimulatedDns { record: record.to_owned(), state: Mutex::new((addresses.clone(), vec![addresses])) }
    }

    /// Every state the record set went through, the first being the initial one.
    pub fn history(&self) -> Vec<Vec<IpAddr>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

fn show(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "no address".into();
    }
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl DnsProvider for SimulatedDns {
    fn read(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, DnsError>> {
        let current = self.state.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
        Box::pin(async move { Ok(current) })
    }

    fn write<'a>(&'a self, expected: &'a [IpAddr], new: &'a [IpAddr]) -> BoxFuture<'a, Result<(), DnsError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = if state.0 == expected {
            state.0 = new.to_vec();
            state.1.push(new.to_vec());
            Ok(())
        } else {
            Err(DnsError::Changed { record: self.record.clone(), expected: show(expected), found: show(&state.0) })
        };
        Box::pin(async move { result })
    }
}

/// A node's address for the record: the plan's map, else the Node's status address.
pub async fn node_address(ctx: &Context, node: &str) -> Result<IpAddr, StepError> {
    let Some(dns) = &ctx.plan.load_balancer.dns else {
        return Err(StepError::Verify("the plan has no DNS record".into()));
    };
    if let Some(address) = dns.addresses.get(node) {
        return Ok(*address);
    }
    let kind = match dns.address_type {
        AddressType::InternalIP => "InternalIP",
        AddressType::ExternalIP => "ExternalIP",
    };
    let found = ctx.node(node).await?;
    status_address(&found, kind)
        .ok_or_else(|| DnsError::NoAddress { node: node.to_owned(), kind: kind.to_owned() }.into())
}

/// The Node's status address of a type (`InternalIP`, `ExternalIP`).
pub fn status_address(node: &Node, kind: &str) -> Option<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .find(|a| a.type_ == kind)
        .and_then(|a| a.address.parse().ok())
}

/// The record set before a withdraw or repoint, for the journal.
pub(super) async fn before_change(ctx: &Context) -> Result<Value, StepError> {
    let Some(provider) = &ctx.dns else { return Ok(Value::Null) };
    let before = provider.read().await?;
    Ok(json!({"before": before}))
}

/// Withdraws, repoints or restores the step's node.
pub(super) async fn act(ctx: &Context, step: &Step) -> Result<Value, StepError> {
    let (Some(provider), Some(dns)) = (&ctx.dns, &ctx.plan.load_balancer.dns) else { return Ok(Value::Null) };
    let node = step.node.as_deref().unwrap_or_default();
    let address = node_address(ctx, node).await?;
    let current = provider.read().await?;
    let new: Vec<IpAddr> = match (step.action, dns.strategy) {
        (Action::DnsWithdraw, _) => {
            if !current.contains(&address) {
                return Ok(json!({"address": address, "changed": false, "records": current}));
            }
            let rest: Vec<IpAddr> = current.iter().copied().filter(|a| *a != address).collect();
            if rest.is_empty() {
                return Err(DnsError::WouldEmpty { record: dns.name.clone(), address }.into());
            }
            rest
        }
        (Action::DnsRepoint, _) => {
            let target = step.target.as_deref().unwrap_or_default();
            vec![node_address(ctx, target).await?]
        }
        (Action::DnsRestore, DnsStrategy::RoundRobin) => {
            let mut all = current.clone();
            if !all.contains(&address) {
                all.push(address);
            }
            all
        }
        (Action::DnsRestore, DnsStrategy::SingleRecord) => vec![address],
        _ => return Ok(Value::Null),
    };
    if new == current {
        return Ok(json!({"address": address, "changed": false, "records": current}));
    }
    provider.write(&current, &new).await?;
    ctx.progress(step, format!("{}: {} → {}", dns.name, show(&current), show(&new)));
    Ok(json!({"address": address, "changed": true, "records": new}))
}
