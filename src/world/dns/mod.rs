//! The ServiceLB DNS record users resolve: reading it, changing it through the plan's
//! provider, and asking resolvers what they serve. Every provider changes the record the
//! same way from the executor's point of view — a [`Change`] from one address set to
//! another — so the safety rules (never empty, detect someone else's edit, wait until the
//! old answer is gone) live once, in the executor's DNS steps, not in each provider.

mod command;
mod manual;
pub mod resolve;
mod rfc2136;
mod simulated;

use std::fmt::Debug;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use command::CommandDns;
pub use manual::ManualDns;
pub use rfc2136::Rfc2136Dns;
pub use simulated::SimulatedDns;

use crate::plan::resolved::{DnsPlan, DnsProviderPlan};

/// Why the record cannot be read or changed.
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
    /// Before the rollout: the record is not what the plan describes.
    #[error(
        "{record} serves {found}, but the plan expects {expected}; fix the record (or the plan's dns.addresses) so they agree, then run apply again — nothing was changed"
    )]
    Drift {
        /// The record.
        record: String,
        /// What the plan's service nodes add up to.
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
    /// The TSIG secret file cannot be used.
    #[error("cannot use the TSIG secret file {path}: {reason}")]
    Secret {
        /// The file.
        path: String,
        /// What is wrong (never the secret itself).
        reason: String,
    },
    /// The server cannot be reached (refused, timed out); nothing was changed.
    #[error("cannot reach the DNS server {server}: {reason}")]
    Unreachable {
        /// `host:port`.
        server: String,
        /// The transport's error.
        reason: String,
    },
    /// The server rejected the TSIG signature.
    #[error(
        "the DNS server {server} rejected the TSIG key `{key}` ({reason}); check that secretFile holds the key the server has for that name and algorithm — nothing was changed"
    )]
    BadKey {
        /// `host:port`.
        server: String,
        /// The key's name.
        key: String,
        /// The server's answer.
        reason: String,
    },
    /// The server answered an update or query with an error code.
    #[error("the DNS server {server} refused {what}: {rcode}{hint}")]
    Refused {
        /// `host:port`.
        server: String,
        /// The request.
        what: String,
        /// The response code.
        rcode: String,
        /// What to do about it.
        hint: String,
    },
    /// A name in the plan is not a DNS name.
    #[error("`{name}` is not a DNS name: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A provider command failed.
    #[error("{0}")]
    Command(String),
}

impl DnsError {
    /// Whether trying again may help: the server was briefly unreachable.
    pub fn is_transient(&self) -> bool {
        matches!(self, DnsError::Unreachable { .. })
    }
}

/// The record's addresses and their TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// Every A and AAAA address, in the order served.
    pub addresses: Vec<IpAddr>,
    /// The TTL the records carry, seconds.
    pub ttl: u32,
}

/// What a DNS step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Take the node's address out (round-robin).
    Withdraw,
    /// Point the record at another service node (single-record).
    Repoint,
    /// Put the node's address back.
    Restore,
}

/// One change of the record set.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// What the step does.
    pub kind: ChangeKind,
    /// The record, fully qualified.
    pub record: &'a str,
    /// The node the step is for.
    pub node: &'a str,
    /// The address the change is about: the node's, or the repoint target's.
    pub address: IpAddr,
    /// The set read just before; the change applies only if it still is this.
    pub before: &'a [IpAddr],
    /// The set afterwards; never empty.
    pub after: &'a [IpAddr],
    /// TTL of the records written.
    pub ttl: u32,
}

impl Change<'_> {
    /// The change in nsupdate syntax: what an operator types, and what the journal keeps.
    pub fn nsupdate(&self) -> String {
        let mut lines = Vec::new();
        for address in self.before.iter().filter(|a| !self.after.contains(a)) {
            lines.push(format!("update delete {} {} {address}", self.record, record_type(*address)));
        }
        for address in self.after.iter().filter(|a| !self.before.contains(a)) {
            lines.push(format!("update add {} {} {} {address}", self.record, self.ttl, record_type(*address)));
        }
        lines.push("send".into());
        lines.join("\n")
    }
}

/// `A` or `AAAA`.
pub fn record_type(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "A" } else { "AAAA" }
}

/// How a change was carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The provider made it.
    Done,
    /// An operator has to make it: these are the instructions.
    ByOperator(String),
}

/// Reads and changes the record users resolve.
pub trait DnsProvider: Send + Sync + Debug {
    /// The record set now, as the provider's source of truth serves it.
    fn read(&self) -> BoxFuture<'_, Result<RecordSet, DnsError>>;
    /// Makes `change`, provided the set still is `change.before` (where the provider can
    /// check that atomically; otherwise the caller's read just before is the check).
    fn apply<'a>(&'a self, change: &'a Change<'a>) -> BoxFuture<'a, Result<Applied, DnsError>>;
    /// Proves, changing nothing, that the provider may change the record as it is now
    /// (rfc2136: a signed update that holds only the prerequisite "the set is `current`",
    /// so a wrong key or ACL shows before the first node is touched).
    fn probe<'a>(&'a self, current: &'a [IpAddr]) -> BoxFuture<'a, Result<(), DnsError>> {
        let _ = current;
        Box::pin(async { Ok(()) })
    }
}

/// The provider the plan names. `plan_dir` is where relative paths (the TSIG secret file)
/// start.
pub fn provider(dns: &DnsPlan, plan_dir: &Path) -> Result<Arc<dyn DnsProvider>, DnsError> {
    Ok(match &dns.provider {
        DnsProviderPlan::Rfc2136 { server, zone, key_name, algorithm, secret_file } => {
            let secret = plan_dir.join(secret_file);
            Arc::new(Rfc2136Dns::new(server, zone, &dns.name, key_name, *algorithm, &secret)?)
        }
        DnsProviderPlan::Manual => Arc::new(ManualDns::new(&dns.name, &dns.resolvers)),
        DnsProviderPlan::Command { withdraw, restore } => {
            Arc::new(CommandDns::new(&dns.name, &dns.resolvers, withdraw.clone(), restore.clone()))
        }
    })
}

/// Addresses as people read them.
pub fn show(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "no address".into();
    }
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsupdate_names_exactly_the_records_that_change() {
        let before: Vec<IpAddr> =
            vec!["10.0.0.11".parse().expect("an address"), "fd00::12".parse().expect("an address")];
        let after: Vec<IpAddr> = vec!["fd00::12".parse().expect("an address")];
        let change = Change {
            kind: ChangeKind::Withdraw,
            record: "juno.studio.example.",
            node: "cp1",
            address: before[0],
            before: &before,
            after: &after,
            ttl: 60,
        };
        assert_eq!(change.nsupdate(), "update delete juno.studio.example. A 10.0.0.11\nsend");
        let back = Change { kind: ChangeKind::Restore, before: &after, after: &before, ..change };
        assert_eq!(back.nsupdate(), "update add juno.studio.example. 60 A 10.0.0.11\nsend");
    }
}
