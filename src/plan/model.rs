//! The plan document exactly as the operator wrote it, with source locations.
//!
//! These types mirror the YAML one to one (and generate `schemas/plan.schema.json`), so they
//! keep values as written: durations, selectors and placeholders stay strings here and are
//! checked by [`crate::plan::validate`], which can then report every fault at once instead of
//! stopping at the first one serde meets.
//!
//! It is one file of about 650 lines on purpose: it is the document's outline, each type
//! after its parent in the order the YAML nests, and nearly every line is a field with the
//! doc comment the schema shows in editors. Split, it would be cut by length, not by concern.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// The API version this build of noderoll reads.
pub const API_VERSION: &str = "noderoll.io/v1alpha1";
/// The only document kind noderoll reads.
pub const KIND: &str = "UpgradePlan";

/// A rolling-upgrade plan: which nodes, in which batches, and how each one is taken out of
/// service, upgraded and brought back.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "noderoll UpgradePlan")]
pub struct PlanDocument {
    /// Always `noderoll.io/v1alpha1`.
    #[schemars(with = "String", extend("const" = API_VERSION))]
    pub api_version: Spanned<String>,
    /// Always `UpgradePlan`.
    #[schemars(with = "String", extend("const" = KIND))]
    pub kind: Spanned<String>,
    /// Name and description of the rollout.
    pub metadata: Metadata,
    /// What to upgrade and how.
    pub spec: PlanSpec,
}

/// Identifies the rollout; the name keys its journal and its lock.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-label-like name (lowercase letters, digits and `-`, at most 63 characters),
    /// e.g. `studio-2026-12`. It names the journal file and the lock Lease.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free text shown in previews and notifications.
    #[serde(default)]
    pub description: Option<String>,
}

/// The body of the plan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    /// How users reach the services, which decides the traffic steps around each service node.
    pub load_balancer: LoadBalancer,
    /// The cluster's API server URLs (one per server node). `apply` fails over between
    /// them when the one in use stops answering, e.g. while its node is upgraded.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub api_servers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Where etcd quorum is read from. Without it, the Ready nodes carrying the etcd role
    /// label are counted.
    #[serde(default)]
    pub quorum: Option<Quorum>,
    /// Settings every batch uses unless it overrides them.
    #[serde(default)]
    pub defaults: StepSettings,
    /// The maintenance window: no node starts outside it.
    #[serde(default)]
    pub window: Option<Window>,
    /// Checks that must pass before each batch (and, with `before: node`, each node)
    /// starts: the previous batch Ready, no matching Prometheus alert firing, a command.
    #[serde(default)]
    pub health: Option<Health>,
    /// Who hears about the rollout: a webhook on start, batch done, halt, pause, finish.
    #[serde(default)]
    pub notify: Option<Notify>,
    /// The batches, run in list order unless `after` says otherwise.
    #[schemars(with = "Vec<Batch>")]
    pub batches: Spanned<Vec<Batch>>,
}

/// The load-balancer setup in front of the service nodes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// `servicelb` (k3s ServiceLB: DNS points at the service nodes), `cilium-bgp`,
    /// `cilium-l2`, or `external` (a cloud or hardware LB that fails over by itself).
    #[schemars(with = "LoadBalancerMode")]
    pub mode: Spanned<LoadBalancerMode>,
    /// The DNS record users resolve; required with `servicelb`, not allowed otherwise.
    #[serde(default)]
    #[schemars(with = "Option<Dns>")]
    pub dns: Option<Spanned<Dns>>,
    /// Cilium BGP: the node label that puts a node into the BGP peering policy.
    #[serde(default)]
    pub bgp: Option<BgpSettings>,
    /// Cilium L2 announcements: where the announcement Leases live.
    #[serde(default)]
    pub l2: Option<L2Settings>,
}

/// The load-balancer mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerMode {
    /// k3s ServiceLB: DNS records point at the service nodes and are moved by noderoll.
    Servicelb,
    /// Cilium BGP control plane: a node's routes are withdrawn by relabelling it.
    CiliumBgp,
    /// Cilium L2 announcements: announcements move when the node drains and shuts down.
    CiliumL2,
    /// A load balancer that moves traffic by itself; no traffic step is needed.
    External,
}

/// The DNS record in front of the service nodes (ServiceLB).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dns {
    /// Fully qualified record name, e.g. `juno.studio.example.`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `round-robin` (one A/AAAA record per service node; the node's record is removed while
    /// it is out of service) or `single-record` (one record, repointed to another service
    /// node while the node it names is out of service). Default: `round-robin`.
    #[serde(default)]
    pub strategy: DnsStrategy,
    /// TTL in seconds for records noderoll writes back; default: keep the TTL it found.
    #[serde(default)]
    pub ttl: Option<u32>,
    /// How records are changed.
    #[schemars(with = "DnsProvider")]
    pub provider: Spanned<DnsProvider>,
    /// Resolvers (`host:port`) asked after each change; noderoll proceeds only once none of
    /// them serves the old answer any more. Default: the rfc2136 server.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub resolvers: Vec<Spanned<String>>,
    /// How long to wait, after each change, for every resolver to serve the new answer
    /// (default `5m`); the old TTL is waited out on top of it.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub propagation_timeout: Option<Spanned<String>>,
    /// Which Node status address is the node's record: `ExternalIP` or `InternalIP`
    /// (default `InternalIP`).
    #[serde(default)]
    pub address_type: AddressType,
    /// Explicit node → address map; takes precedence over the Node's status addresses.
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
}

/// The record-set strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DnsStrategy {
    /// One record per service node; withdraw and restore the node's own record.
    #[default]
    RoundRobin,
    /// One record; repoint it away from the node and move it back afterwards.
    SingleRecord,
}

/// Which Node status address stands for the node in DNS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AddressType {
    /// `status.addresses[type=InternalIP]`.
    #[default]
    InternalIP,
    /// `status.addresses[type=ExternalIP]`.
    ExternalIP,
}

/// How DNS records are changed: exactly one of the three.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum DnsProvider {
    /// RFC 2136 dynamic updates signed with TSIG.
    Rfc2136(Box<Rfc2136>),
    /// noderoll prints the exact change, waits for the operator, then checks resolution.
    Manual(ManualDns),
    /// Commands run for each change (argv, no shell), e.g. a cloud DNS CLI.
    Command(CommandDns),
}

/// An RFC 2136 server.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rfc2136 {
    /// The primary server, `host:port`.
    #[schemars(with = "String")]
    pub server: Spanned<String>,
    /// The zone the record lives in, e.g. `studio.example.`.
    #[schemars(with = "String")]
    pub zone: Spanned<String>,
    /// The TSIG key that signs every update.
    pub tsig: Tsig,
}

/// A TSIG key. The secret is read from a file so it never lives in git.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tsig {
    /// Key name as the server knows it.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `hmac-sha256` or `hmac-sha512`.
    pub algorithm: TsigAlgorithm,
    /// File holding the base64 secret, relative to the plan's folder.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub secret_file: Option<Spanned<String>>,
    /// Never allowed: an inline secret would end up in git. Accepted by the reader only so
    /// `check` can say so precisely.
    #[serde(default)]
    #[schemars(skip)]
    pub secret: Option<Spanned<String>>,
}

/// TSIG algorithms noderoll signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TsigAlgorithm {
    /// HMAC-SHA256.
    HmacSha256,
    /// HMAC-SHA512.
    HmacSha512,
}

/// The manual DNS provider has no settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualDns {}

/// Commands that change DNS. Placeholders: `{node}`, `{address}`, `{record}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandDns {
    /// Removes the node's address from the record (round-robin) or points the record at
    /// `{address}` (single-record).
    #[schemars(with = "Vec<String>")]
    pub withdraw: Spanned<Vec<String>>,
    /// Puts the node's address back.
    #[schemars(with = "Vec<String>")]
    pub restore: Spanned<Vec<String>>,
}

/// Cilium BGP settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpSettings {
    /// The label (`key` or `key=value`) by which the CiliumBGPPeeringPolicy selects nodes.
    /// `bgp-withdraw` removes it, `bgp-restore` puts the original value back.
    /// Default: `cilium.io/bgp-enabled`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub node_label: Option<Spanned<String>>,
    /// How long, after the label is removed, the node's `CiliumBGPNodeConfig` may take to
    /// show no established peering (Cilium's operator deletes it once the node no longer
    /// matches the `CiliumBGPClusterConfig`), and, after the label is back, to show one
    /// again. On a cluster that serves no `CiliumBGPNodeConfig` (BGPv1's
    /// CiliumBGPPeeringPolicy keeps no per-node state) the wait is skipped with a warning.
    /// Default: `2m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub peering_timeout: Option<Spanned<String>>,
    /// For setups without `CiliumBGPNodeConfig` (BGPv1, another BGP speaker): a command
    /// (argv; `{node}`, `{batch}`, `{plan}`) that exits 0 once the peers have withdrawn the
    /// node's routes. Run after `bgp-withdraw` every 2 s until it does, up to
    /// `peeringTimeout`, instead of reading `CiliumBGPNodeConfig`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub withdrawn_command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Likewise after `bgp-restore`: exits 0 once the node's routes are announced again.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub announced_command: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Cilium L2 announcement settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L2Settings {
    /// Namespace of the `cilium-l2announce-*` Leases. Default: `kube-system`.
    #[serde(default)]
    pub lease_namespace: Option<String>,
    /// How long to wait for the node to release its announcements. Default: `2m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub release_timeout: Option<Spanned<String>>,
}

/// Where etcd membership and health are read.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quorum {
    /// The embedded etcd of the service nodes.
    #[serde(default)]
    pub etcd: Option<Etcd>,
    /// How long the quorum gate waits for the other members to be healthy. Default: `30m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub timeout: Option<Spanned<String>>,
}

/// etcd client settings (k3s: certificates under `/var/lib/rancher/k3s/server/tls/etcd/`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Etcd {
    /// Client URLs, e.g. `https://10.0.0.11:2379`, one per member.
    #[schemars(with = "Vec<String>")]
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    /// CA bundle (k3s: `server-ca.crt`), relative to the plan's folder.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate (k3s: `client.crt`).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key (k3s: `client.key`).
    #[serde(default)]
    pub key_file: Option<String>,
}

/// Per-step settings. In `defaults` they apply to every batch; in a batch they override the
/// defaults field by field.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSettings {
    /// How pods are evicted.
    #[serde(default)]
    pub drain: Option<DrainSettings>,
    /// How long interactive sessions may take to move off a workstation.
    #[serde(default)]
    pub sessions: Option<SessionSettings>,
    /// The command that upgrades and reboots a node.
    #[serde(default)]
    pub upgrade: Option<UpgradeSettings>,
    /// What must be true once the node is back.
    #[serde(default)]
    pub verify: Option<VerifySettings>,
    /// `auto`, or `approve`: wait for an operator to approve before the node serves again.
    pub uncordon: Option<UncordonPolicy>,
    /// A node someone cordoned before the rollout reached it: `upgrade` it and leave it
    /// cordoned (default), or `skip` it. noderoll never uncordons a node it did not cordon.
    pub already_cordoned: Option<AlreadyCordonedPolicy>,
    /// After a node is back in service, wait this long before the next node of its lane
    /// starts (or, with `soakPer: batch`, after the batch's last node, before the batches
    /// after it start), and fail the node (or the batch) if it stops being Ready or the
    /// health gate's alerts or command fail meanwhile. `0s` turns a default soak off.
    /// Default: no soak.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub soak: Option<Spanned<String>>,
    /// What a soak follows: `node` (default) or `batch`.
    pub soak_per: Option<SoakScope>,
}

/// What a soak waits after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SoakScope {
    /// Each node, before the next node of its lane starts (system-upgrade-controller's
    /// `postCompleteDelay`, kOps' `--post-drain-delay`).
    Node,
    /// The whole batch, before the batches after it start (GKE's `batchSoakDuration`).
    Batch,
}

/// What becomes of a node that was cordoned before noderoll reached it (an admin took it out
/// of service on purpose: a failing disk, a user's long render).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlreadyCordonedPolicy {
    /// Drain, upgrade and verify it like any other node, then leave it cordoned.
    Upgrade,
    /// Leave it alone: no step changes it, and it stays cordoned.
    Skip,
}

/// Drain settings (the counterparts of `kubectl drain`'s flags).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainSettings {
    /// Give up after this long. Default: `15m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub timeout: Option<Spanned<String>>,
    /// Leave DaemonSet pods in place. Default: `true`.
    #[serde(default)]
    pub ignore_daemon_sets: Option<bool>,
    /// Evict pods with emptyDir volumes (their data is lost). Default: `false`.
    #[serde(default)]
    pub delete_empty_dir_data: Option<bool>,
    /// Evict pods that declare no controller (nothing recreates them) and pods whose
    /// DaemonSet is gone, as `kubectl drain --force`. Default: `false`.
    #[serde(default)]
    pub force: Option<bool>,
    /// Grace period given to each pod; default: the pod's own.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub grace_period: Option<Spanned<String>>,
    /// Evict only pods matching this label selector.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub pod_selector: Option<Spanned<String>>,
    /// Stop waiting for pods whose deletionTimestamp is older than this.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub skip_wait_for_delete_timeout: Option<Spanned<String>>,
    /// What to do with the pods still there at the timeout: `halt` (default) or `delete`
    /// (delete them, bypassing their disruption budgets, in `deleteNamespaces` only).
    #[serde(default)]
    #[schemars(with = "Option<DrainTimeoutPolicy>")]
    pub on_timeout: Option<Spanned<DrainTimeoutPolicy>>,
    /// The namespaces whose pods `onTimeout: delete` may delete.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub delete_namespaces: Option<Spanned<Vec<Spanned<String>>>>,
}

/// What happens to the pods a drain could not evict in its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DrainTimeoutPolicy {
    /// Stop the rollout and leave the node cordoned, naming the pods and what holds them.
    Halt,
    /// Delete the pods left in the namespaces `deleteNamespaces` lists, then wait for them
    /// to go, for up to the drain timeout again.
    Delete,
}

/// Session (interactive workstation pod) settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSettings {
    /// The annotation that marks a session pod. Default: `juno-innovations.com/workload`.
    #[serde(default)]
    pub annotation: Option<String>,
    /// How long to wait for sessions to end on their own. Default: `8h`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub timeout: Option<Spanned<String>>,
    /// What to do at the timeout: `halt` (default) or `drain` (evict the sessions).
    pub on_timeout: Option<SessionTimeoutPolicy>,
}

/// What happens when sessions outlast their timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SessionTimeoutPolicy {
    /// Stop the rollout and leave the node cordoned.
    Halt,
    /// Evict the remaining sessions.
    Drain,
}

/// The upgrade hook.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeSettings {
    /// Program and arguments, run without a shell. Placeholders: `{node}`, `{batch}`,
    /// `{plan}`; write `{{` / `}}` for literal braces.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Run `command` as one string through `sh -c`. Default: `false`.
    #[serde(default)]
    pub shell: Option<bool>,
    /// Give up after this long. Default: `45m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub timeout: Option<Spanned<String>>,
}

/// Checks once a node is back.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifySettings {
    /// How long the node may take to come back Ready with a new boot ID. Default: `20m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub ready_timeout: Option<Spanned<String>>,
    /// Expected `status.nodeInfo.kubeletVersion`, e.g. `v1.31.4+k3s1`.
    #[serde(default)]
    pub kubelet_version: Option<String>,
    /// Expected `status.nodeInfo.osImage`.
    #[serde(default)]
    pub os_image: Option<String>,
    /// An extra check run after the versions match (argv, same placeholders as upgrade).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Whether a verified node goes back into service by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UncordonPolicy {
    /// Uncordon as soon as the node is verified.
    Auto,
    /// Wait for `noderoll approve NODE` (or a TTY prompt) first.
    Approve,
}

/// A recurring maintenance window.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// When a window opens: a 5-field cron expression (minute hour day month weekday), or 6
    /// fields with seconds first.
    #[schemars(with = "String")]
    pub cron: Spanned<String>,
    /// How long it stays open, e.g. `8h`.
    #[schemars(with = "DurationString")]
    pub duration: Spanned<String>,
    /// IANA time zone of the cron expression, e.g. `Europe/London`. Default: `UTC`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Spanned<String>>,
    /// What a node in progress does when the window closes: `finish` (default) or `halt`.
    pub on_window_end: Option<WindowEndPolicy>,
}

/// Health gates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// `batch` (default): check before each batch starts; `node`: also before each node.
    pub before: Option<HealthScope>,
    /// Before a batch, every node of the batches it runs after must be Ready. Default: `true`.
    #[serde(default)]
    pub previous_batch_ready: Option<bool>,
    /// No firing alert of this Prometheus may match `alerts`.
    #[serde(default)]
    pub prometheus: Option<PrometheusGate>,
    /// A program that must exit 0 (argv, no shell; placeholders `{batch}`, `{plan}`, and
    /// `{node}` before a node).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    /// How long a gate waits for health before the rollout halts. Default: `30m`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub timeout: Option<Spanned<String>>,
    /// How often an unhealthy gate looks again. Default: `30s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub interval: Option<Spanned<String>>,
}

/// Where health gates run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HealthScope {
    /// Before each batch.
    Batch,
    /// Before each batch and each node.
    Node,
}

/// The Prometheus health gate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusGate {
    /// The server, e.g. `http://prometheus.monitoring:9090`; noderoll reads `/api/v1/alerts`.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// A label selector over the alerts' labels (`severity=critical,alertname!=Watchdog`);
    /// any firing alert it matches stops the gate. Default: every firing alert.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub alerts: Option<Spanned<String>>,
}

/// Notifications.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notify {
    /// A JSON POST per event, shaped for the chat it goes to (`format`).
    #[schemars(with = "Webhook")]
    pub webhook: Spanned<Webhook>,
}

/// A webhook.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// The URL (`http://` or `https://`). One of `url`, `urlFile`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// A file holding the URL, relative to the plan (a Slack webhook URL is a secret).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url_file: Option<Spanned<String>>,
    /// Which events to send. Default: all of `started`, `batch-done`, `halted`, `paused`,
    /// `interrupted`, `finished`.
    #[serde(default)]
    pub events: Option<Vec<NotifyEvent>>,
    /// The body's shape: `slack` (default), `teams`, `mattermost` or `json`.
    #[serde(default)]
    pub format: WebhookFormat,
}

/// The shape of a webhook's body, for the service that receives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    /// A Slack incoming webhook: `text`, with `plan`, `event` and `detail` beside it.
    #[default]
    Slack,
    /// A Microsoft Teams workflow ("when a Teams webhook request is received"): a
    /// `message` holding one Adaptive Card (1.4) with the text and the plan and event.
    Teams,
    /// A Mattermost incoming webhook: `text` and `username`, the plan, event and detail
    /// in `props`.
    Mattermost,
    /// noderoll's own event for anything else: `plan`, `event`, `text`, `detail`.
    Json,
}

/// Events a webhook can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyEvent {
    /// The run began (or resumed).
    Started,
    /// A batch's last node is done.
    BatchDone,
    /// A step failed and the run stopped starting nodes.
    Halted,
    /// The maintenance window ended (`--until-window-end`).
    Paused,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// Every node is done.
    Finished,
}

/// What happens to nodes in progress at the end of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WindowEndPolicy {
    /// Let started nodes finish; start no new ones.
    Finish,
    /// Stop at the next step boundary.
    Halt,
}

/// A group of nodes upgraded together.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Batch {
    /// Unique name.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `service` (control-plane nodes serving the web services; etcd members) or
    /// `workstation` (nodes running users' sessions).
    pub role: Role,
    /// Node names. Exactly one of `nodes` and `selector`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub nodes: Option<Spanned<Vec<Spanned<String>>>>,
    /// A Kubernetes label selector (`rack=a,gpu in (a100,h100),!headless`), resolved against
    /// the cluster's nodes.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub selector: Option<Spanned<String>>,
    /// How many nodes of the batch may be out of service at once: a count (`10`) or a
    /// percentage of the batch (`"25%"`, rounded down, at least 1). Default: `1`.
    #[serde(default)]
    #[schemars(with = "Option<MaxUnavailableSchema>")]
    pub max_unavailable: Option<Spanned<NodeCount>>,
    /// How many of the batch's nodes may fail before the rollout halts: a count (`2`) or a
    /// percentage of the batch (`"5%"`, rounded down). A failed node is left cordoned and
    /// named, and the batch goes on without it. Default: `0` (the first failure halts).
    #[serde(default)]
    #[schemars(with = "Option<MaxFailuresSchema>")]
    pub max_failures: Option<Spanned<NodeCount>>,
    /// Batches that must finish before this one starts. Default: the previous batch.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub after: Option<Spanned<Vec<Spanned<String>>>>,
    /// Overrides `defaults.drain` for this batch, field by field.
    #[serde(default)]
    pub drain: Option<DrainSettings>,
    /// Overrides `defaults.sessions` for this batch, field by field.
    #[serde(default)]
    pub sessions: Option<SessionSettings>,
    /// Overrides `defaults.upgrade` for this batch, field by field.
    #[serde(default)]
    pub upgrade: Option<UpgradeSettings>,
    /// Overrides `defaults.verify` for this batch, field by field.
    #[serde(default)]
    pub verify: Option<VerifySettings>,
    /// Overrides `defaults.uncordon` for this batch.
    pub uncordon: Option<UncordonPolicy>,
    /// Overrides `defaults.alreadyCordoned` for this batch.
    pub already_cordoned: Option<AlreadyCordonedPolicy>,
    /// Overrides `defaults.soak` for this batch (`0s`: no soak).
    #[serde(default)]
    #[schemars(with = "Option<DurationString>")]
    pub soak: Option<Spanned<String>>,
    /// Overrides `defaults.soakPer` for this batch.
    pub soak_per: Option<SoakScope>,
}

/// The role of a batch's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Control-plane / etcd nodes behind the load balancer.
    Service,
    /// Nodes running interactive sessions.
    Workstation,
}

/// A number of a batch's nodes as written (`maxUnavailable`, `maxFailures`): a count or a
/// percentage string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCount {
    /// A number of nodes.
    Count(i64),
    /// A string, expected to be `N%`; checked by validation.
    Text(String),
}

impl<'de> Deserialize<'de> for NodeCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NodeCount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a node count such as 2 or a percentage such as \"25%\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NodeCount::Count(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NodeCount::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NodeCount::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// JSON Schema stand-in for `maxUnavailable`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "exists only to describe the schema")]
enum MaxUnavailableSchema {
    /// A number of nodes, at least 1.
    Count(#[schemars(range(min = 1))] u32),
    /// A percentage of the batch, `1%` to `100%`.
    Percent(#[schemars(regex(pattern = r"^[0-9]+%$"))] String),
}

/// JSON Schema stand-in for `maxFailures`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "exists only to describe the schema")]
enum MaxFailuresSchema {
    /// A number of nodes, 0 or more.
    Count(u32),
    /// A percentage of the batch, `0%` to `100%`.
    Percent(#[schemars(regex(pattern = r"^[0-9]+%$"))] String),
}

/// JSON Schema stand-in for a human duration.
#[derive(JsonSchema)]
#[schemars(
    description = "A duration such as `90s`, `15m`, `8h` or `1h 30m`.",
    extend("pattern" = r"^\s*[0-9]")
)]
#[allow(dead_code, reason = "exists only to describe the schema")]
struct DurationString(String);
