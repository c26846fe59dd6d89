//! What a plan setting is when the plan leaves it out: every default in one place, so
//! validation, `init`'s starter plan and docs/plan-reference.md cannot drift apart (a test
//! below reads the reference's tables and compares them with these values).

use std::time::Duration;

use super::model::{
    AlreadyCordonedPolicy, DrainTimeoutPolicy, HealthScope, SessionTimeoutPolicy, SoakScope, UncordonPolicy,
    WindowEndPolicy,
};
use super::resolved::NodeShare;
use crate::labels;

/// `defaults.drain.timeout`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `defaults.drain.ignoreDaemonSets`: as `kubectl drain --ignore-daemonsets`, which every
/// k3s runbook passes (svclb and CNI pods run on every node).
pub const IGNORE_DAEMON_SETS: bool = true;
/// `defaults.drain.deleteEmptyDirData`: off, as in kubectl, because it loses data.
pub const DELETE_EMPTY_DIR_DATA: bool = false;
/// `defaults.drain.force`: off, as in kubectl: a pod that declares no controller is gone
/// for good once evicted.
pub const FORCE: bool = false;
/// `drain.onTimeout`: a drain that runs out of time halts; deleting pods is chosen, never
/// assumed.
pub const DRAIN_ON_TIMEOUT: DrainTimeoutPolicy = DrainTimeoutPolicy::Halt;
/// `defaults.sessions.annotation`.
pub const SESSION_ANNOTATION: &str = labels::JUNO_SESSION;
/// `defaults.sessions.timeout`: a working day, so a node waits out the longest session a
/// user would keep open before it is drained.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(8 * 3600);
/// `defaults.sessions.onTimeout`: never end a user's session without an explicit setting.
pub const SESSION_ON_TIMEOUT: SessionTimeoutPolicy = SessionTimeoutPolicy::Halt;
/// `defaults.upgrade.shell`.
pub const SHELL: bool = false;
/// `defaults.upgrade.timeout`.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// `defaults.verify.readyTimeout`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// `defaults.uncordon`.
pub const UNCORDON: UncordonPolicy = UncordonPolicy::Auto;
/// `defaults.alreadyCordoned`: the node still gets its upgrade (the rollout's purpose), and
/// stays cordoned as whoever cordoned it wanted.
pub const ALREADY_CORDONED: AlreadyCordonedPolicy = AlreadyCordonedPolicy::Upgrade;
/// `defaults.soakPer`: each node proves itself before the next of its lane leaves, the
/// smallest step at which a bad upgrade is caught.
pub const SOAK_PER: SoakScope = SoakScope::Node;
/// `quorum.timeout`.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `loadBalancer.bgp.nodeLabel`.
pub const BGP_LABEL: &str = labels::CILIUM_BGP;
/// `loadBalancer.bgp.peeringTimeout`: Cilium's operator reconciles a node's
/// `CiliumBGPNodeConfig` within seconds, and BGP's hold timer (90 s by default) bounds how
/// long a peer may take to see a session end.
pub const BGP_PEERING_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// `loadBalancer.l2.leaseNamespace`: where Cilium keeps its `cilium-l2announce-*` Leases.
pub const L2_LEASE_NAMESPACE: &str = "kube-system";
/// `loadBalancer.l2.releaseTimeout`.
pub const L2_RELEASE_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// `loadBalancer.dns.propagationTimeout`: how long resolvers may take to serve a change.
pub const DNS_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The TTL assumed for the ServiceLB record when the plan sets none and the live record
/// cannot be read (the planner's estimate, a rehearsal's in-memory record): what k3s users
/// commonly give a record in front of a load balancer.
pub const ASSUMED_TTL: u32 = 60;
/// `health.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `health.interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// `health.before`: once per batch; per node is the plan's choice, as it slows every node.
pub const HEALTH_BEFORE: HealthScope = HealthScope::Batch;
/// `health.previousBatchReady`.
pub const PREVIOUS_BATCH_READY: bool = true;
/// `window.timezone`.
pub const TIMEZONE: &str = "UTC";
/// `window.onWindowEnd`.
pub const ON_WINDOW_END: WindowEndPolicy = WindowEndPolicy::Finish;
/// `batches[].maxUnavailable`: one node at a time, the cautious rollout.
pub const MAX_UNAVAILABLE: NodeShare = NodeShare::Count(1);
/// `batches[].maxFailures`: the first failed node halts the rollout.
pub const MAX_FAILURES: NodeShare = NodeShare::Count(0);

/// Each default as docs/plan-reference.md shows it: the section heading's path, the field
/// and the value as a plan would write it.
#[cfg(test)]
fn documented() -> Vec<(&'static str, &'static str, String)> {
    use super::duration::written;
    use super::model::{AddressType, DnsStrategy, WebhookFormat};

    fn word(value: impl serde::Serialize) -> String {
        serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
    vec![
        ("spec.loadBalancer", "bgp.nodeLabel", BGP_LABEL.into()),
        ("spec.loadBalancer", "bgp.peeringTimeout", written(BGP_PEERING_TIMEOUT)),
        ("spec.loadBalancer", "l2.leaseNamespace", L2_LEASE_NAMESPACE.into()),
        ("spec.loadBalancer", "l2.releaseTimeout", written(L2_RELEASE_TIMEOUT)),
        ("spec.loadBalancer.dns", "propagationTimeout", written(DNS_PROPAGATION_TIMEOUT)),
        ("spec.loadBalancer.dns", "strategy", word(DnsStrategy::default())),
        ("spec.loadBalancer.dns", "addressType", word(AddressType::default())),
        ("spec.notify", "webhook.format", word(WebhookFormat::default())),
        ("spec.quorum", "timeout", written(QUORUM_TIMEOUT)),
        ("spec.defaults", "drain.timeout", written(DRAIN_TIMEOUT)),
        ("spec.defaults", "drain.ignoreDaemonSets", IGNORE_DAEMON_SETS.to_string()),
        ("spec.defaults", "drain.deleteEmptyDirData", DELETE_EMPTY_DIR_DATA.to_string()),
        ("spec.defaults", "drain.force", FORCE.to_string()),
        ("spec.defaults", "drain.onTimeout", word(DRAIN_ON_TIMEOUT)),
        ("spec.defaults", "sessions.annotation", SESSION_ANNOTATION.into()),
        ("spec.defaults", "sessions.timeout", written(SESSION_TIMEOUT)),
        ("spec.defaults", "sessions.onTimeout", word(SESSION_ON_TIMEOUT)),
        ("spec.defaults", "upgrade.shell", SHELL.to_string()),
        ("spec.defaults", "upgrade.timeout", written(UPGRADE_TIMEOUT)),
        ("spec.defaults", "verify.readyTimeout", written(READY_TIMEOUT)),
        ("spec.defaults", "uncordon", word(UNCORDON)),
        ("spec.defaults", "alreadyCordoned", word(ALREADY_CORDONED)),
        ("spec.defaults", "soakPer", word(SOAK_PER)),
        ("spec.window", "timezone", TIMEZONE.into()),
        ("spec.window", "onWindowEnd", word(ON_WINDOW_END)),
        ("spec.health", "before", word(HEALTH_BEFORE)),
        ("spec.health", "previousBatchReady", PREVIOUS_BATCH_READY.to_string()),
        ("spec.health", "timeout", written(HEALTH_TIMEOUT)),
        ("spec.health", "interval", written(HEALTH_INTERVAL)),
        ("spec.batches", "maxUnavailable", MAX_UNAVAILABLE.written()),
        ("spec.batches", "maxFailures", MAX_FAILURES.written()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    const REFERENCE: &str = include_str!("../../docs/plan-reference.md");

    /// The `default` column of every table in the reference, by (section, field): a
    /// section is the `` `spec.X` `` of the `##`/`###` heading above the table.
    fn reference_defaults() -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        let mut section = String::new();
        for line in REFERENCE.lines() {
            if line.starts_with('#') {
                section = line.split('`').nth(1).unwrap_or_default().to_owned();
                continue;
            }
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
            let [field, default, _meaning] = cells[..] else { continue };
            let (Some(field), Some(default)) = (unquote(field), unquote(default)) else { continue };
            out.insert((section.clone(), field), default);
        }
        out
    }

    /// A cell that is one `code` span, without its backticks.
    fn unquote(cell: &str) -> Option<String> {
        let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
        (!inner.contains('`')).then(|| inner.to_owned())
    }

    #[test]
    fn the_reference_states_the_code_defaults() {
        let reference = reference_defaults();
        for (section, field, value) in super::documented() {
            let key = (section.to_owned(), field.to_owned());
            assert_eq!(
                reference.get(&key),
                Some(&value),
                "docs/plan-reference.md, `{section}` table, field `{field}`: the code's default is `{value}`"
            );
        }
    }

    #[test]
    fn every_default_in_the_reference_is_checked() {
        let checked: Vec<(String, String)> =
            super::documented().into_iter().map(|(s, f, _)| (s.to_owned(), f.to_owned())).collect();
        for (key, value) in reference_defaults() {
            assert!(
                checked.contains(&key),
                "docs/plan-reference.md gives `{}` in `{}` the default `{value}`, which no constant in plan/defaults.rs holds",
                key.1,
                key.0
            );
        }
    }
}
