//! The plan after validation: every value parsed, every default filled in, every batch's
//! settings merged with the defaults. The planner and the executor read only this.

use std::time::Duration;

use super::model::{
    AddressType, AlreadyCordonedPolicy, DnsStrategy, DrainTimeoutPolicy, LoadBalancerMode, NotifyEvent, Role,
    SessionTimeoutPolicy, TsigAlgorithm, UncordonPolicy, WebhookFormat, WindowEndPolicy,
};
use super::selector::Selector;
use super::template::CommandTemplate;

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.description`.
    pub description: Option<String>,
    /// How traffic is moved off service nodes.
    pub load_balancer: LoadBalancerPlan,
    /// API server URLs to fail over between; empty: the kubeconfig's only.
    pub api_servers: Vec<String>,
    /// Where quorum is read from.
    pub quorum: QuorumPlan,
    /// The maintenance window, if any.
    pub window: Option<WindowPlan>,
    /// Health gates, if any.
    pub health: Option<HealthPlan>,
    /// The webhook, if any.
    pub webhook: Option<WebhookPlan>,
    /// Batches in plan order; `after` is already resolved to batch indices.
    pub batches: Vec<BatchPlan>,
}

/// The load balancer and its traffic steps.
#[derive(Debug, Clone)]
pub struct LoadBalancerPlan {
    /// The mode.
    pub mode: LoadBalancerMode,
    /// The DNS record (ServiceLB only).
    pub dns: Option<DnsPlan>,
    /// The BGP selector label (Cilium BGP only).
    pub bgp_label: Option<NodeLabel>,
    /// How the node's BGP peering is awaited around its upgrade (Cilium BGP only).
    pub bgp_peering: Option<BgpPeering>,
    /// Cilium L2 settings (Cilium L2 only).
    pub l2: Option<L2Plan>,
}

/// The ServiceLB DNS record.
#[derive(Debug, Clone)]
pub struct DnsPlan {
    /// Fully qualified name, ending in `.`.
    pub name: String,
    /// Round-robin or single record.
    pub strategy: DnsStrategy,
    /// TTL for records written back; `None` keeps the one found.
    pub ttl: Option<u32>,
    /// How records are changed.
    pub provider: DnsProviderPlan,
    /// Resolvers to poll after each change.
    pub resolvers: Vec<String>,
    /// How long they may take to serve a change.
    pub propagation_timeout: Duration,
    /// Which Node address is the node's record.
    pub address_type: AddressType,
    /// Explicit node → address map.
    pub addresses: std::collections::BTreeMap<String, std::net::IpAddr>,
}

/// A DNS provider with its settings.
#[derive(Debug, Clone)]
pub enum DnsProviderPlan {
    /// RFC 2136 with TSIG.
    Rfc2136 {
        /// `host:port` of the primary.
        server: String,
        /// Zone, ending in `.`.
        zone: String,
        /// TSIG key name.
        key_name: String,
        /// TSIG algorithm.
        algorithm: TsigAlgorithm,
        /// File with the base64 secret, as written (relative to the plan's folder).
        secret_file: String,
    },
    /// The operator makes the change.
    Manual,
    /// Commands make the change.
    Command {
        /// Withdraw / repoint command.
        withdraw: CommandTemplate,
        /// Restore command.
        restore: CommandTemplate,
    },
}

/// A node label `key` with an optional required value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabel {
    /// Label key.
    pub key: String,
    /// Value the label has while the node is selected, if a specific one.
    pub value: Option<String>,
}

/// How `bgp-withdraw` and `bgp-restore` wait for the node's sessions.
#[derive(Debug, Clone)]
pub struct BgpPeering {
    /// How long each may wait.
    pub timeout: Duration,
    /// Exits 0 once the routes are withdrawn; instead of `CiliumBGPNodeConfig`.
    pub withdrawn_command: Option<CommandTemplate>,
    /// Exits 0 once the routes are announced again.
    pub announced_command: Option<CommandTemplate>,
}

/// Cilium L2 settings.
#[derive(Debug, Clone)]
pub struct L2Plan {
    /// Namespace of the `cilium-l2announce-*` Leases.
    pub lease_namespace: String,
    /// How long to wait for the node to release them.
    pub release_timeout: Duration,
}

/// Where quorum comes from.
#[derive(Debug, Clone)]
pub struct QuorumPlan {
    /// etcd client settings; `None` means: count Ready etcd-role nodes.
    pub etcd: Option<EtcdPlan>,
    /// How long the gate waits.
    pub timeout: Duration,
}

/// etcd client settings.
#[derive(Debug, Clone)]
pub struct EtcdPlan {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// CA bundle path.
    pub ca_file: Option<String>,
    /// Client certificate path.
    pub cert_file: Option<String>,
    /// Client key path.
    pub key_file: Option<String>,
}

/// Validated health gates.
#[derive(Debug, Clone)]
pub struct HealthPlan {
    /// Also before each node, not only each batch.
    pub per_node: bool,
    /// The batches a batch runs after must be Ready.
    pub previous_batch_ready: bool,
    /// Prometheus server URL and the alert filter.
    pub prometheus: Option<(String, Option<Selector>)>,
    /// The command gate.
    pub command: Option<CommandTemplate>,
    /// How long a gate waits.
    pub timeout: Duration,
    /// How often it looks again.
    pub interval: Duration,
}

/// A validated webhook.
#[derive(Debug, Clone)]
pub struct WebhookPlan {
    /// Where the URL comes from.
    pub url: UrlSource,
    /// Which events it receives.
    pub events: Vec<NotifyEvent>,
    /// The body's shape.
    pub format: WebhookFormat,
}

/// A URL written in the plan, or kept in a file beside it.
#[derive(Debug, Clone)]
pub enum UrlSource {
    /// In the plan.
    Inline(String),
    /// In this file (relative to the plan's folder).
    File(String),
}

/// A validated maintenance window.
#[derive(Debug, Clone)]
pub struct WindowPlan {
    /// The cron expression as written.
    pub cron_text: String,
    /// The parsed cron expression.
    pub cron: croner::Cron,
    /// How long each window stays open.
    pub duration: Duration,
    /// The zone the cron expression is read in.
    pub timezone: jiff::tz::TimeZone,
    /// The zone's IANA name.
    pub timezone_name: String,
    /// What nodes in progress do at the end.
    pub on_end: WindowEndPolicy,
}

/// Whether a window is open at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Open; it closes then.
    Open {
        /// When this window closes.
        closes: jiff::Timestamp,
    },
    /// Closed; the next one opens then.
    Closed {
        /// When the next window opens.
        opens: jiff::Timestamp,
    },
}

impl WindowPlan {
    /// The window's state at `at`, read in the plan's time zone (so a window at 22:00
    /// stays at 22:00 local time across DST changes). `None` if the cron expression never
    /// fires again.
    pub fn state_at(&self, at: jiff::Timestamp) -> Option<WindowState> {
        let now = at.to_zoned(self.timezone.clone());
        let span = jiff::SignedDuration::try_from(self.duration).ok()?;
        if let Ok(previous) = self.cron.find_previous_occurrence(&now, true) {
            let closes = previous.timestamp().checked_add(span).ok()?;
            if at < closes {
                return Some(WindowState::Open { closes });
            }
        }
        let next = self.cron.find_next_occurrence(&now, false).ok()?;
        Some(WindowState::Closed { opens: next.timestamp() })
    }

    /// Up to `count` windows from `from` on, as (opens, closes); the one open at `from`
    /// first, if any.
    pub fn upcoming(&self, from: jiff::Timestamp, count: usize) -> Vec<(jiff::Timestamp, jiff::Timestamp)> {
        let Ok(span) = jiff::SignedDuration::try_from(self.duration) else { return Vec::new() };
        let mut windows = Vec::with_capacity(count);
        let mut at = from;
        while windows.len() < count {
            let (opens, closes) = match self.state_at(at) {
                Some(WindowState::Open { closes }) => (closes.checked_sub(span).unwrap_or(at), closes),
                Some(WindowState::Closed { opens }) => match opens.checked_add(span) {
                    Ok(closes) => (opens, closes),
                    Err(_) => break,
                },
                None => break,
            };
            windows.push((opens, closes));
            at = closes;
        }
        windows
    }
}

/// A validated batch.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    /// Unique name.
    pub name: String,
    /// Service or workstation.
    pub role: Role,
    /// Which nodes.
    pub members: Members,
    /// How many may be out of service at once.
    pub max_unavailable: NodeShare,
    /// How many may fail before the rollout halts.
    pub max_failures: NodeShare,
    /// Indices of the batches that must finish first.
    pub after: Vec<usize>,
    /// Effective step settings (defaults merged with this batch's overrides).
    pub settings: Settings,
}

/// How a batch names its nodes.
#[derive(Debug, Clone)]
pub enum Members {
    /// Listed by name.
    Nodes(Vec<String>),
    /// Selected by labels from the cluster's inventory.
    Selector(Selector),
}

/// A validated number of a batch's nodes (`maxUnavailable`, `maxFailures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeShare {
    /// A count.
    Count(u32),
    /// A percentage of the batch, 0..=100.
    Percent(u32),
}

impl NodeShare {
    /// The number of nodes this is of a batch of `size`: percentages round down.
    pub fn of(self, size: usize) -> usize {
        match self {
            NodeShare::Count(n) => n as usize,
            NodeShare::Percent(p) => size * p as usize / 100,
        }
    }

    /// As `maxUnavailable`: never below one (a batch must be able to make progress), never
    /// above `size`.
    pub fn lanes(self, size: usize) -> usize {
        self.of(size).max(1).min(size.max(1))
    }

    /// As a plan writes it: `2` or `25%`.
    pub fn written(self) -> String {
        match self {
            NodeShare::Count(n) => n.to_string(),
            NodeShare::Percent(p) => format!("{p}%"),
        }
    }
}

/// How many of `members` etcd members may be out of service while the rest keep quorum
/// (floor(members/2) + 1 must stay up): floor((members - 1) / 2).
pub fn etcd_fault_tolerance(members: usize) -> usize {
    members.saturating_sub(1) / 2
}

/// Effective per-step settings of a batch.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Drain.
    pub drain: DrainPlan,
    /// Sessions.
    pub sessions: SessionsPlan,
    /// Upgrade hook.
    pub upgrade: UpgradePlan,
    /// Verification.
    pub verify: VerifyPlan,
    /// Uncordon policy.
    pub uncordon: UncordonPolicy,
    /// What becomes of a node cordoned before the rollout reached it.
    pub already_cordoned: AlreadyCordonedPolicy,
    /// The wait after a node (or the batch) is back, when there is one.
    pub soak: Option<SoakPlan>,
}

/// A soak: how long, and after what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakPlan {
    /// How long the node (or batch) must stay healthy.
    pub duration: Duration,
    /// After each node or after the whole batch.
    pub per: crate::plan::model::SoakScope,
}

/// Drain settings.
#[derive(Debug, Clone)]
pub struct DrainPlan {
    /// Overall timeout.
    pub timeout: Duration,
    /// Leave DaemonSet pods.
    pub ignore_daemon_sets: bool,
    /// Evict pods with emptyDir volumes.
    pub delete_empty_dir_data: bool,
    /// Evict pods no controller recreates.
    pub force: bool,
    /// Grace period override.
    pub grace_period: Option<Duration>,
    /// Only evict pods matching this.
    pub pod_selector: Option<Selector>,
    /// Stop waiting for pods deleted longer ago than this.
    pub skip_wait_for_delete_timeout: Option<Duration>,
    /// What to do with the pods left at the timeout.
    pub on_timeout: DrainTimeoutPolicy,
    /// Where `onTimeout: delete` may delete pods.
    pub delete_namespaces: Vec<String>,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionsPlan {
    /// Annotation that marks session pods.
    pub annotation: String,
    /// How long to wait.
    pub timeout: Duration,
    /// What to do then.
    pub on_timeout: SessionTimeoutPolicy,
}

/// Upgrade hook.
#[derive(Debug, Clone)]
pub struct UpgradePlan {
    /// The command.
    pub command: CommandTemplate,
    /// Run through `sh -c`.
    pub shell: bool,
    /// Timeout.
    pub timeout: Duration,
}

/// Verification.
#[derive(Debug, Clone)]
pub struct VerifyPlan {
    /// How long the node may take to come back.
    pub ready_timeout: Duration,
    /// Expected kubelet version.
    pub kubelet_version: Option<String>,
    /// Expected OS image.
    pub os_image: Option<String>,
    /// Extra check.
    pub command: Option<CommandTemplate>,
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn window(yaml: &str) -> WindowPlan {
        let text = format!(
            "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: w}}\nspec:\n  loadBalancer: {{mode: external}}\n  window: {yaml}\n  defaults: {{upgrade: {{command: [true]}}}}\n  batches: [{{name: b, role: workstation, nodes: [a]}}]\n"
        );
        let checked = crate::plan::check_str("w.yaml", &text);
        checked.plan.and_then(|p| p.window).unwrap_or_else(|| panic!("{:?}", checked.diagnostics))
    }

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_london_window_stays_at_22_local_across_the_end_of_summer_time() {
        let w = window("{cron: \"0 22 * * 5\", duration: 8h, timezone: Europe/London}");
        // BST ends on Sunday 2026-10-25: the Friday before opens at 21:00 UTC, the Friday
        // after at 22:00 UTC.
        let next = w.upcoming(at("2026-10-20T00:00:00Z"), 2);
        assert_eq!(
            next,
            [
                (at("2026-10-23T21:00:00Z"), at("2026-10-24T05:00:00Z")),
                (at("2026-10-30T22:00:00Z"), at("2026-10-31T06:00:00Z")),
            ]
        );
        assert_eq!(
            w.state_at(at("2026-10-24T04:59:59Z")),
            Some(WindowState::Open { closes: at("2026-10-24T05:00:00Z") })
        );
        assert_eq!(
            w.state_at(at("2026-10-24T05:00:00Z")),
            Some(WindowState::Closed { opens: at("2026-10-30T22:00:00Z") })
        );
    }

    #[test]
    fn upcoming_starts_with_the_window_open_now() {
        let w = window("{cron: \"*/20 * * * *\", duration: 4m}");
        let next = w.upcoming(at("2026-11-27T22:02:00Z"), 3);
        assert_eq!(
            next,
            [
                (at("2026-11-27T22:00:00Z"), at("2026-11-27T22:04:00Z")),
                (at("2026-11-27T22:20:00Z"), at("2026-11-27T22:24:00Z")),
                (at("2026-11-27T22:40:00Z"), at("2026-11-27T22:44:00Z")),
            ]
        );
    }
}
