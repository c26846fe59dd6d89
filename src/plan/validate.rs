//! Semantic validation: from the document as written to a [`Plan`], collecting every fault
//! (not only the first) with the location of the YAML node it is about.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graphmap::DiGraphMap;
use serde_saphyr::{Location, Spanned};

use super::diagnostic::{Diagnostic, SourceFile};
use super::model::{
    self, Batch, DnsProvider, DnsStrategy, LoadBalancerMode, PlanDocument, Role, SessionTimeoutPolicy, StepSettings,
    UncordonPolicy, WindowEndPolicy,
};
use super::resolved::{
    BatchPlan, DnsPlan, DnsProviderPlan, DrainPlan, EtcdPlan, HealthPlan, L2Plan, LoadBalancerPlan, MaxUnavailable,
    Members, NodeLabel, Plan, QuorumPlan, SessionsPlan, Settings, UpgradePlan, UrlSource, VerifyPlan, WebhookPlan,
    WindowPlan,
};
use super::selector::{Selector, is_dns_subdomain, is_label_name};
use super::template::{CommandTemplate, TemplateError};

/// Placeholders the upgrade and verify hooks may use.
pub const HOOK_PLACEHOLDERS: &[&str] = &["node", "batch", "plan"];
/// Placeholders the DNS command provider may use.
pub const DNS_PLACEHOLDERS: &[&str] = &["node", "address", "record"];
/// The BGP node label used when the plan names none.
pub const DEFAULT_BGP_LABEL: &str = "cilium.io/bgp-enabled";
/// The annotation that marks Juno session pods.
pub const DEFAULT_SESSION_ANNOTATION: &str = "juno-innovations.com/workload";

const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(8 * 3600);
const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const DEFAULT_QUORUM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_L2_RELEASE_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// How long resolvers may take to serve a DNS change when the plan does not say.
const DEFAULT_DNS_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// Validates a parsed document. Returns the plan when there is no error (warnings may
/// still be present), and every diagnostic found.
pub fn validate(source: &Arc<SourceFile>, doc: &PlanDocument) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut c = Checker { source, diagnostics: Vec::new() };
    c.header(doc);
    let name = c.plan_name(&doc.metadata.name);
    let batches_raw = &doc.spec.batches;
    let static_service_nodes = c.static_service_node_count(&batches_raw.value);
    let load_balancer = c.load_balancer(&doc.spec.load_balancer, static_service_nodes);
    let quorum = c.quorum(doc.spec.quorum.as_ref());
    let api_servers = c.api_servers(doc.spec.api_servers.as_ref());
    let window = doc.spec.window.as_ref().and_then(|w| c.window(w));
    let health = doc.spec.health.as_ref().map(|h| c.health(h));
    let webhook = doc.spec.notify.as_ref().and_then(|n| c.webhook(&n.webhook.value, n.webhook.referenced));
    let defaults = c.layer(&Layer::builtin(), (&doc.spec.defaults).into());
    let batches = c.batches(batches_raw, &defaults);
    c.quorum_budget(batches_raw, quorum.etcd.as_ref().map(|e| e.endpoints.len()));

    let Checker { diagnostics, .. } = c;
    let has_errors = diagnostics.iter().any(|d| d.severity == super::Severity::Error);
    let plan = (!has_errors).then(|| Plan {
        name,
        description: doc.metadata.description.clone(),
        load_balancer,
        api_servers,
        quorum,
        window,
        health,
        webhook,
        batches,
    });
    (plan, diagnostics)
}

/// An `http://` or `https://` URL with a host.
fn is_url(text: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        text.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    })
}

struct Checker<'a> {
    source: &'a Arc<SourceFile>,
    diagnostics: Vec<Diagnostic>,
}

/// Step settings with everything but the upgrade command known: the defaults section may
/// leave the command to each batch.
#[derive(Clone)]
struct Layer {
    drain: DrainPlan,
    sessions: SessionsPlan,
    upgrade_command: Option<Spanned<Vec<Spanned<String>>>>,
    shell: bool,
    upgrade_timeout: Duration,
    verify: VerifyPlan,
    uncordon: UncordonPolicy,
}

impl Layer {
    fn builtin() -> Self {
        Layer {
            drain: DrainPlan {
                timeout: DEFAULT_DRAIN_TIMEOUT,
                ignore_daemon_sets: true,
                delete_empty_dir_data: false,
                grace_period: None,
                pod_selector: None,
                skip_wait_for_delete_timeout: None,
            },
            sessions: SessionsPlan {
                annotation: DEFAULT_SESSION_ANNOTATION.into(),
                timeout: DEFAULT_SESSION_TIMEOUT,
                on_timeout: SessionTimeoutPolicy::Halt,
            },
            upgrade_command: None,
            shell: false,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            verify: VerifyPlan {
                ready_timeout: DEFAULT_READY_TIMEOUT,
                kubelet_version: None,
                os_image: None,
                command: None,
            },
            uncordon: UncordonPolicy::Auto,
        }
    }
}

impl Checker<'_> {
    fn error(&mut self, at: Location, message: impl Into<String>, help: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(self.source, at, message).with_help(help));
    }

    fn warn(&mut self, at: Location, message: impl Into<String>, help: impl Into<String>) {
        self.diagnostics.push(Diagnostic::warning(self.source, at, message).with_help(help));
    }

    fn header(&mut self, doc: &PlanDocument) {
        if doc.api_version.value != model::API_VERSION {
            self.error(
                doc.api_version.referenced,
                format!("unsupported apiVersion `{}`", doc.api_version.value),
                format!("this noderoll reads `apiVersion: {}`", model::API_VERSION),
            );
        }
        if doc.kind.value != model::KIND {
            self.error(
                doc.kind.referenced,
                format!("unsupported kind `{}`", doc.kind.value),
                format!("a plan has `kind: {}`", model::KIND),
            );
        }
    }

    fn plan_name(&mut self, name: &Spanned<String>) -> String {
        let n = &name.value;
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !ok {
            self.error(
                name.referenced,
                format!("`{n}` is not a valid plan name"),
                "use 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit (it names the journal and the lock Lease)",
            );
        }
        n.clone()
    }

    fn duration(&mut self, field: &Spanned<String>, what: &str) -> Option<Duration> {
        match parse_duration(&field.value) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    field.referenced,
                    format!("`{}` is not a valid {what}: {why}", field.value),
                    "write a positive duration such as `90s`, `15m`, `8h` or `1h 30m`",
                );
                None
            }
        }
    }

    fn duration_or(&mut self, field: Option<&Spanned<String>>, fallback: Duration, what: &str) -> Duration {
        field.and_then(|f| self.duration(f, what)).unwrap_or(fallback)
    }

    fn selector(&mut self, field: &Spanned<String>, what: &str) -> Option<Selector> {
        match field.value.parse::<Selector>() {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(
                    field.referenced,
                    format!("invalid {what} `{}`: {e}", field.value),
                    "use Kubernetes label-selector syntax: `key=value`, `key!=value`, `key in (a,b)`, `key notin (a)`, `key`, `!key`, joined by commas",
                );
                None
            }
        }
    }

    fn template(
        &mut self,
        field: &Spanned<Vec<Spanned<String>>>,
        allowed: &[&str],
        what: &str,
    ) -> Option<CommandTemplate> {
        if field.value.is_empty() || field.value[0].value.trim().is_empty() {
            self.error(
                field.referenced,
                format!("the {what} is empty"),
                "give the program and its arguments as a list, e.g. `[ssh, \"{node}\", sudo, /usr/local/sbin/upgrade-node]`",
            );
            return None;
        }
        let args: Vec<String> = field.value.iter().map(|a| a.value.clone()).collect();
        match CommandTemplate::parse(&args, allowed) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = field.value[e.arg()].referenced;
                let names = allowed.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ");
                let help = match &e {
                    TemplateError::Unknown { name, .. } => match closest(name, allowed) {
                        Some(best) => format!("did you mean `{{{best}}}`? The {what} may use {names}"),
                        None => format!("the {what} may use {names}"),
                    },
                    TemplateError::Unbalanced { .. } => {
                        format!("placeholders are {names}; write `{{{{` and `}}}}` for literal braces")
                    }
                };
                self.error(at, format!("{e} in the {what}"), help);
                None
            }
        }
    }

    fn static_service_node_count(&self, batches: &[Batch]) -> Option<usize> {
        let mut count = 0;
        for b in batches.iter().filter(|b| b.role == Role::Service) {
            count += b.nodes.as_ref()?.value.len();
        }
        Some(count)
    }

    fn load_balancer(&mut self, lb: &model::LoadBalancer, service_nodes: Option<usize>) -> LoadBalancerPlan {
        let mode = lb.mode.value;
        let dns = match (&lb.dns, mode) {
            (None, LoadBalancerMode::Servicelb) => {
                self.error(
                    lb.mode.referenced,
                    "`servicelb` needs `loadBalancer.dns`: users reach ServiceLB through DNS records that point at the service nodes",
                    "add `dns: {name: juno.example.com., strategy: round-robin, provider: {manual: {}}, resolvers: [\"10.0.0.2:53\"]}`",
                );
                None
            }
            (Some(dns), LoadBalancerMode::Servicelb) => self.dns(dns, service_nodes),
            (Some(dns), _) => {
                self.error(
                    dns.referenced,
                    format!("`dns` is only used with `mode: servicelb`, not `{}`", mode_name(mode)),
                    "remove `dns`, or set `mode: servicelb` if the DNS records point at the nodes",
                );
                None
            }
            (None, _) => None,
        };
        let bgp_label = match (&lb.bgp, mode) {
            (Some(bgp), LoadBalancerMode::CiliumBgp) => bgp
                .node_label
                .as_ref()
                .map_or_else(|| Some(NodeLabel { key: DEFAULT_BGP_LABEL.into(), value: None }), |l| self.node_label(l)),
            (None, LoadBalancerMode::CiliumBgp) => Some(NodeLabel { key: DEFAULT_BGP_LABEL.into(), value: None }),
            (Some(_), _) => {
                self.error(
                    lb.mode.referenced,
                    format!("`bgp` settings are given but the mode is `{}`", mode_name(mode)),
                    "set `mode: cilium-bgp`, or remove `bgp`",
                );
                None
            }
            (None, _) => None,
        };
        let l2 = match (lb.l2.as_ref(), mode) {
            (l2, LoadBalancerMode::CiliumL2) => Some(L2Plan {
                lease_namespace: l2.and_then(|l| l.lease_namespace.clone()).unwrap_or_else(|| "kube-system".into()),
                release_timeout: self.duration_or(
                    l2.and_then(|l| l.release_timeout.as_ref()),
                    DEFAULT_L2_RELEASE_TIMEOUT,
                    "L2 release timeout",
                ),
            }),
            (Some(_), _) => {
                self.error(
                    lb.mode.referenced,
                    format!("`l2` settings are given but the mode is `{}`", mode_name(mode)),
                    "set `mode: cilium-l2`, or remove `l2`",
                );
                None
            }
            (None, _) => None,
        };
        LoadBalancerPlan { mode, dns, bgp_label, l2 }
    }

    fn node_label(&mut self, field: &Spanned<String>) -> Option<NodeLabel> {
        let (key, value) = match field.value.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (field.value.trim(), None),
        };
        let key_ok = match key.split_once('/') {
            Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
            None => is_label_name(key),
        };
        let value_ok = value.as_deref().is_none_or(|v| v.is_empty() || is_label_name(v));
        if key_ok && value_ok {
            Some(NodeLabel { key: key.to_owned(), value })
        } else {
            self.error(
                field.referenced,
                format!("`{}` is not a valid node label", field.value),
                "write `key` or `key=value`, e.g. `cilium.io/bgp-enabled=true`",
            );
            None
        }
    }

    fn dns(&mut self, dns: &Spanned<model::Dns>, service_nodes: Option<usize>) -> Option<DnsPlan> {
        let d = &dns.value;
        let name = self.fqdn(&d.name, "record name");
        let provider = match &d.provider.value {
            DnsProvider::Rfc2136(r) => {
                let server = self.host_port(&r.server, "DNS server");
                let zone = self.fqdn(&r.zone, "zone");
                if let (Some(name), Some(zone)) = (&name, &zone)
                    && !in_zone(name, zone)
                {
                    self.error(
                        d.name.referenced,
                        format!("the record `{name}` is not inside the zone `{zone}`"),
                        "RFC 2136 updates go to the zone that holds the record; fix the name or the zone",
                    );
                }
                let secret_file = match (&r.tsig.secret, &r.tsig.secret_file) {
                    (Some(secret), _) => {
                        self.error(
                            secret.referenced,
                            "the TSIG secret is given inline; plans live in git, secrets must not",
                            "put the base64 secret in a file kept out of git and name it with `secretFile: tsig.secret`",
                        );
                        None
                    }
                    (None, None) => {
                        self.error(
                            r.tsig.name.referenced,
                            "the TSIG key has no `secretFile`",
                            "add `secretFile: PATH`, a file holding the base64 secret (relative to the plan's folder)",
                        );
                        None
                    }
                    (None, Some(file)) => Some(file.value.clone()),
                };
                match (server, zone, secret_file) {
                    (Some(server), Some(zone), Some(secret_file)) => Some(DnsProviderPlan::Rfc2136 {
                        server,
                        zone,
                        key_name: r.tsig.name.value.clone(),
                        algorithm: r.tsig.algorithm,
                        secret_file,
                    }),
                    _ => None,
                }
            }
            DnsProvider::Manual(_) => Some(DnsProviderPlan::Manual),
            DnsProvider::Command(cmd) => {
                let withdraw = self.template_strings(&cmd.withdraw, DNS_PLACEHOLDERS, "DNS withdraw command");
                let restore = self.template_strings(&cmd.restore, DNS_PLACEHOLDERS, "DNS restore command");
                withdraw.zip(restore).map(|(withdraw, restore)| DnsProviderPlan::Command { withdraw, restore })
            }
        };
        let mut resolvers: Vec<String> = d.resolvers.iter().filter_map(|r| self.host_port(r, "resolver")).collect();
        if resolvers.is_empty() {
            match &provider {
                Some(DnsProviderPlan::Rfc2136 { server, .. }) => resolvers.push(server.clone()),
                Some(_) => self.error(
                    d.provider.referenced,
                    "the manual and command DNS providers need `resolvers`, so noderoll can see each change take effect",
                    "add `resolvers: [\"10.0.0.2:53\"]` with the resolvers your users ask",
                ),
                None => {}
            }
        }
        let mut addresses = BTreeMap::new();
        for (node, address) in &d.addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) => {
                    addresses.insert(node.clone(), ip);
                }
                Err(_) => self.error(
                    dns.referenced,
                    format!("the address `{address}` given for node `{node}` is not an IP address"),
                    "write an IPv4 or IPv6 address, e.g. `10.0.0.11`",
                ),
            }
        }
        if let Some(n) = service_nodes
            && n < 2
        {
            let why = match d.strategy {
                DnsStrategy::RoundRobin => "withdrawing the only node's record would leave the record set empty",
                DnsStrategy::SingleRecord => "there is no other service node to repoint the record to",
            };
            self.error(
                dns.referenced,
                format!("the plan has {n} service node(s); {why}"),
                "ServiceLB failover needs at least two service nodes; list them in a `role: service` batch",
            );
        }
        Some(DnsPlan {
            name: name?,
            strategy: d.strategy,
            ttl: d.ttl,
            provider: provider?,
            resolvers,
            propagation_timeout: self.duration_or(
                d.propagation_timeout.as_ref(),
                DEFAULT_DNS_PROPAGATION_TIMEOUT,
                "DNS propagation timeout",
            ),
            address_type: d.address_type,
            addresses,
        })
    }

    fn template_strings(
        &mut self,
        field: &Spanned<Vec<String>>,
        allowed: &[&str],
        what: &str,
    ) -> Option<CommandTemplate> {
        let as_spanned = Spanned {
            value: field
                .value
                .iter()
                .map(|a| Spanned { value: a.clone(), referenced: field.referenced, defined: field.defined })
                .collect(),
            referenced: field.referenced,
            defined: field.defined,
        };
        self.template(&as_spanned, allowed, what)
    }

    fn fqdn(&mut self, field: &Spanned<String>, what: &str) -> Option<String> {
        let name = field.value.trim_end_matches('.').to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Some(format!("{name}."))
        } else {
            self.error(
                field.referenced,
                format!("`{}` is not a valid DNS {what}", field.value),
                "write a fully qualified name such as `juno.studio.example.`",
            );
            None
        }
    }

    fn host_port(&mut self, field: &Spanned<String>, what: &str) -> Option<String> {
        let text = field.value.trim();
        let valid = if let Some(rest) = text.strip_prefix('[') {
            rest.split_once("]:").is_some_and(|(ip, port)| ip.parse::<IpAddr>().is_ok() && port.parse::<u16>().is_ok())
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => {
                    !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok_and(|p| p > 0)
                }
                None => false,
            }
        };
        if valid {
            Some(text.to_owned())
        } else {
            self.error(
                field.referenced,
                format!("`{}` is not a valid {what} address", field.value),
                "write `host:port`, e.g. `10.0.0.2:53` or `[2001:db8::2]:53`",
            );
            None
        }
    }

    /// `apiServers`: the cluster's API endpoints to fail over between.
    fn api_servers(&mut self, servers: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
        let Some(servers) = servers else { return Vec::new() };
        for server in &servers.value {
            if !is_url(&server.value) {
                self.error(
                    server.referenced,
                    format!("`{}` is not an API server URL", server.value),
                    "write `https://HOST:6443` (k3s serves the API on port 6443 of each server node)",
                );
            }
        }
        servers.value.iter().map(|s| s.value.clone()).collect()
    }

    fn quorum(&mut self, quorum: Option<&model::Quorum>) -> QuorumPlan {
        let timeout =
            self.duration_or(quorum.and_then(|q| q.timeout.as_ref()), DEFAULT_QUORUM_TIMEOUT, "quorum timeout");
        let etcd = quorum.and_then(|q| q.etcd.as_ref()).map(|e| {
            if e.endpoints.value.is_empty() {
                self.error(
                    e.endpoints.referenced,
                    "`etcd.endpoints` is empty",
                    "list one client URL per member, e.g. `https://10.0.0.11:2379`, or remove `etcd` to count Ready etcd nodes instead",
                );
            }
            for endpoint in &e.endpoints.value {
                let v = &endpoint.value;
                if !is_url(v) {
                    self.error(
                        endpoint.referenced,
                        format!("`{v}` is not an etcd client URL"),
                        "write `https://HOST:2379` (k3s serves etcd on port 2379 of each server node)",
                    );
                }
            }
            if e.cert_file.is_some() != e.key_file.is_some() {
                self.error(
                    e.endpoints.referenced,
                    "`certFile` and `keyFile` go together: a client certificate needs its key",
                    "k3s keeps both under /var/lib/rancher/k3s/server/tls/etcd/ (client.crt, client.key)",
                );
            }
            EtcdPlan {
                endpoints: e.endpoints.value.iter().map(|s| s.value.clone()).collect(),
                ca_file: e.ca_file.clone(),
                cert_file: e.cert_file.clone(),
                key_file: e.key_file.clone(),
            }
        });
        QuorumPlan { etcd, timeout }
    }

    fn health(&mut self, h: &model::Health) -> HealthPlan {
        let prometheus = h.prometheus.as_ref().map(|p| {
            if !is_url(&p.url.value) {
                self.error(
                    p.url.referenced,
                    format!("`{}` is not a Prometheus URL", p.url.value),
                    "write the server's base URL, e.g. `http://prometheus.monitoring:9090`",
                );
            }
            let alerts = p.alerts.as_ref().and_then(|a| self.selector(a, "alert selector"));
            (p.url.value.trim_end_matches('/').to_owned(), alerts)
        });
        let command = h.command.as_ref().and_then(|c| self.template(c, &["node", "batch", "plan"], "health command"));
        HealthPlan {
            per_node: h.before == Some(model::HealthScope::Node),
            previous_batch_ready: h.previous_batch_ready.unwrap_or(true),
            prometheus,
            command,
            timeout: self.duration_or(h.timeout.as_ref(), DEFAULT_HEALTH_TIMEOUT, "health timeout"),
            interval: self.duration_or(h.interval.as_ref(), DEFAULT_HEALTH_INTERVAL, "health interval"),
        }
    }

    fn webhook(&mut self, w: &model::Webhook, at: Location) -> Option<WebhookPlan> {
        let url = match (&w.url, &w.url_file) {
            (Some(url), None) => {
                if !is_url(&url.value) {
                    self.error(
                        url.referenced,
                        format!("`{}` is not a webhook URL", url.value),
                        "write an `http://` or `https://` URL, or keep it in a file named by `urlFile`",
                    );
                    return None;
                }
                UrlSource::Inline(url.value.clone())
            }
            (None, Some(file)) => UrlSource::File(file.value.clone()),
            (Some(url), Some(_)) => {
                self.error(
                    url.referenced,
                    "`url` and `urlFile` both given",
                    "keep one: `urlFile` keeps a secret URL out of git",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    at,
                    "the webhook has no `url` or `urlFile`",
                    "add `url: https://...`, or `urlFile: FILE` for a secret URL",
                );
                return None;
            }
        };
        let mut events = w.events.clone().unwrap_or_else(|| {
            use model::NotifyEvent::*;
            vec![Started, BatchDone, Halted, Paused, Interrupted, Finished]
        });
        events.sort();
        events.dedup();
        Some(WebhookPlan { url, events })
    }

    fn window(&mut self, w: &model::Window) -> Option<WindowPlan> {
        let cron = match w.cron.value.parse::<croner::Cron>() {
            Ok(c) => Some(c),
            Err(e) => {
                self.error(
                    w.cron.referenced,
                    format!("`{}` is not a valid cron expression: {e}", w.cron.value),
                    "write five fields, minute hour day-of-month month day-of-week, e.g. `0 22 * * 5` for Fridays at 22:00",
                );
                None
            }
        };
        let duration = self.duration(&w.duration, "window duration");
        let (timezone, timezone_name) = match &w.timezone {
            None => (Some(jiff::tz::TimeZone::UTC), "UTC".to_owned()),
            Some(tz) => match jiff::tz::TimeZone::get(&tz.value) {
                Ok(zone) => (Some(zone), tz.value.clone()),
                Err(_) => {
                    let help = match closest_timezone(&tz.value) {
                        Some(best) => format!("did you mean `{best}`? Use an IANA zone name such as `Europe/London`"),
                        None => "use an IANA zone name such as `Europe/London` or `America/Los_Angeles`".into(),
                    };
                    self.error(tz.referenced, format!("unknown time zone `{}`", tz.value), help);
                    (None, tz.value.clone())
                }
            },
        };
        if let Some(d) = duration
            && d > Duration::from_secs(7 * 24 * 3600)
        {
            self.error(
                w.duration.referenced,
                "a window longer than a week never closes between weekly openings",
                "give the length of one window, e.g. `8h`",
            );
        }
        Some(WindowPlan {
            cron_text: w.cron.value.clone(),
            cron: cron?,
            duration: duration?,
            timezone: timezone?,
            timezone_name,
            on_end: w.on_window_end.unwrap_or(WindowEndPolicy::Finish),
        })
    }

    /// Applies one layer of settings (the plan's defaults, or a batch's overrides) on top of
    /// `base`, field by field.
    fn layer(&mut self, base: &Layer, over: Overrides<'_>) -> Layer {
        let mut out = base.clone();
        if let Some(d) = over.drain {
            out.drain.timeout = self.duration_or(d.timeout.as_ref(), base.drain.timeout, "drain timeout");
            out.drain.ignore_daemon_sets = d.ignore_daemon_sets.unwrap_or(base.drain.ignore_daemon_sets);
            out.drain.delete_empty_dir_data = d.delete_empty_dir_data.unwrap_or(base.drain.delete_empty_dir_data);
            if let Some(g) = &d.grace_period {
                out.drain.grace_period = self.duration_zero_ok(g, "grace period");
            }
            if let Some(s) = &d.pod_selector {
                out.drain.pod_selector = self.selector(s, "pod selector");
            }
            if let Some(t) = &d.skip_wait_for_delete_timeout {
                out.drain.skip_wait_for_delete_timeout = self.duration(t, "skip-wait-for-delete timeout");
            }
        }
        if let Some(s) = over.sessions {
            if let Some(a) = &s.annotation {
                out.sessions.annotation = a.clone();
            }
            out.sessions.timeout = self.duration_or(s.timeout.as_ref(), base.sessions.timeout, "session timeout");
            out.sessions.on_timeout = s.on_timeout.unwrap_or(base.sessions.on_timeout);
        }
        if let Some(u) = over.upgrade {
            if let Some(cmd) = &u.command {
                out.upgrade_command = Some(cmd.clone());
            }
            out.shell = u.shell.unwrap_or(base.shell);
            out.upgrade_timeout = self.duration_or(u.timeout.as_ref(), base.upgrade_timeout, "upgrade timeout");
        }
        if let Some(v) = over.verify {
            out.verify.ready_timeout =
                self.duration_or(v.ready_timeout.as_ref(), base.verify.ready_timeout, "ready timeout");
            if let Some(k) = &v.kubelet_version {
                out.verify.kubelet_version = Some(k.clone());
            }
            if let Some(o) = &v.os_image {
                out.verify.os_image = Some(o.clone());
            }
            if let Some(cmd) = &v.command {
                out.verify.command = self.template(cmd, HOOK_PLACEHOLDERS, "verify command");
            }
        }
        if let Some(u) = over.uncordon {
            out.uncordon = u;
        }
        out
    }

    /// A grace period may be zero (delete at once), unlike the timeouts.
    fn duration_zero_ok(&mut self, field: &Spanned<String>, what: &str) -> Option<Duration> {
        if field.value.trim().trim_end_matches(['s', 'm', 'h']).trim() == "0" {
            return Some(Duration::ZERO);
        }
        self.duration(field, what)
    }

    fn batches(&mut self, raw: &Spanned<Vec<Batch>>, defaults: &Layer) -> Vec<BatchPlan> {
        if raw.value.is_empty() {
            self.error(
                raw.referenced,
                "the plan has no batches",
                "add at least one batch with `name`, `role` and `nodes` or `selector`",
            );
        }
        let mut index_by_name: HashMap<&str, usize> = HashMap::new();
        for (i, b) in raw.value.iter().enumerate() {
            if let Some(&first) = index_by_name.get(b.name.value.as_str()) {
                self.error(
                    b.name.referenced,
                    format!("batch name `{}` is used twice", b.name.value),
                    format!(
                        "batch names must be unique; the first `{}` is at line {}",
                        b.name.value,
                        raw.value[first].name.referenced.line()
                    ),
                );
            } else {
                index_by_name.insert(&b.name.value, i);
            }
        }
        self.node_overlap(&raw.value);
        let after = self.after_edges(&raw.value, &index_by_name);
        raw.value.iter().zip(after).filter_map(|(b, after)| self.batch(b, after, defaults)).collect()
    }

    fn node_overlap(&mut self, batches: &[Batch]) {
        let mut seen: HashMap<&str, (&str, Location)> = HashMap::new();
        for b in batches {
            let Some(nodes) = &b.nodes else { continue };
            for node in &nodes.value {
                match seen.get(node.value.as_str()) {
                    Some((batch, first)) if *batch == b.name.value => self.error(
                        node.referenced,
                        format!("node `{}` is listed twice in batch `{batch}`", node.value),
                        format!("remove one of them (the first is at line {})", first.line()),
                    ),
                    Some((batch, first)) => self.error(
                        node.referenced,
                        format!("node `{}` is in batch `{}` and already in batch `{batch}`", node.value, b.name.value),
                        format!(
                            "a node is upgraded once per rollout; remove it from one of the batches (the other is at line {})",
                            first.line()
                        ),
                    ),
                    None => {
                        seen.insert(&node.value, (&b.name.value, node.referenced));
                    }
                }
            }
        }
    }

    /// Resolves `after` to batch indices (default: the previous batch) and reports unknown
    /// names and cycles.
    fn after_edges(&mut self, batches: &[Batch], index_by_name: &HashMap<&str, usize>) -> Vec<Vec<usize>> {
        let mut edges: Vec<Vec<(usize, Location)>> = Vec::with_capacity(batches.len());
        for (i, b) in batches.iter().enumerate() {
            let Some(after) = &b.after else {
                edges.push(if i == 0 { vec![] } else { vec![(i - 1, b.name.referenced)] });
                continue;
            };
            let mut deps = Vec::new();
            for name in &after.value {
                match index_by_name.get(name.value.as_str()) {
                    Some(&j) if j == i => self.error(
                        name.referenced,
                        format!("batch `{}` cannot run after itself", b.name.value),
                        "remove it from `after`",
                    ),
                    Some(&j) => deps.push((j, name.referenced)),
                    None => {
                        let names: Vec<&str> = batches.iter().map(|b| b.name.value.as_str()).collect();
                        let help = match closest(&name.value, &names) {
                            Some(best) => format!("did you mean `{best}`?"),
                            None => format!("known batches: {}", names.join(", ")),
                        };
                        self.error(name.referenced, format!("`after` names an unknown batch `{}`", name.value), help);
                    }
                }
            }
            edges.push(deps);
        }
        let mut graph = DiGraphMap::<usize, ()>::new();
        for (i, deps) in edges.iter().enumerate() {
            graph.add_node(i);
            for (j, _) in deps {
                graph.add_edge(*j, i, ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            if scc.len() < 2 {
                continue;
            }
            let mut members = scc.clone();
            members.sort_unstable();
            let names: Vec<&str> = members.iter().map(|&i| batches[i].name.value.as_str()).collect();
            let first = members[0];
            let at = edges[first]
                .iter()
                .find(|(j, _)| members.contains(j))
                .map_or(batches[first].name.referenced, |(_, at)| *at);
            self.error(
                at,
                format!("`after` forms a cycle: {} wait for each other", names.join(" → ")),
                "break the cycle by removing one of these `after` entries",
            );
        }
        edges.into_iter().map(|deps| deps.into_iter().map(|(j, _)| j).collect()).collect()
    }

    fn batch(&mut self, b: &Batch, after: Vec<usize>, defaults: &Layer) -> Option<BatchPlan> {
        let members = match (&b.nodes, &b.selector) {
            (Some(_), Some(sel)) => {
                self.error(
                    sel.referenced,
                    format!("batch `{}` has both `nodes` and `selector`", b.name.value),
                    "keep one: `nodes` lists names, `selector` picks nodes by label",
                );
                None
            }
            (None, None) => {
                self.error(
                    b.name.referenced,
                    format!("batch `{}` has neither `nodes` nor `selector`", b.name.value),
                    "add `nodes: [node1, node2]` or `selector: \"rack=a\"`",
                );
                None
            }
            (Some(nodes), None) => {
                if nodes.value.is_empty() {
                    self.error(
                        nodes.referenced,
                        format!("batch `{}` lists no nodes", b.name.value),
                        "list at least one node, or remove the batch",
                    );
                }
                for node in &nodes.value {
                    if !is_dns_subdomain(&node.value) {
                        self.error(
                            node.referenced,
                            format!("`{}` is not a valid node name", node.value),
                            "node names are lowercase DNS names as `kubectl get nodes` shows them, e.g. `workstation01`",
                        );
                    }
                }
                Some(Members::Nodes(nodes.value.iter().map(|n| n.value.clone()).collect()))
            }
            (None, Some(sel)) => self.selector(sel, "node selector").map(Members::Selector),
        };
        let max_unavailable = self.max_unavailable(b);
        let layer = self.layer(defaults, b.into());
        let upgrade = self.upgrade(b, &layer);
        if let (Some(Members::Nodes(nodes)), Some(MaxUnavailable::Count(n))) = (&members, max_unavailable)
            && !nodes.is_empty()
            && n as usize > nodes.len()
            && b.role == Role::Workstation
        {
            let at = b.max_unavailable.as_ref().map_or(b.name.referenced, |m| m.referenced);
            self.warn(
                at,
                format!("maxUnavailable {n} is more than the {} node(s) of batch `{}`", nodes.len(), b.name.value),
                "the whole batch goes at once; lower maxUnavailable if that is not meant",
            );
        }
        Some(BatchPlan {
            name: b.name.value.clone(),
            role: b.role,
            members: members?,
            max_unavailable: max_unavailable?,
            after,
            settings: Settings {
                drain: layer.drain,
                sessions: layer.sessions,
                upgrade: upgrade?,
                verify: layer.verify,
                uncordon: layer.uncordon,
            },
        })
    }

    fn upgrade(&mut self, b: &Batch, layer: &Layer) -> Option<UpgradePlan> {
        let Some(cmd) = &layer.upgrade_command else {
            self.error(
                b.name.referenced,
                format!("batch `{}` has no upgrade command", b.name.value),
                "set `defaults.upgrade.command` (or the batch's `upgrade.command`), e.g. `[ssh, \"{node}\", sudo, /usr/local/sbin/upgrade-node]`",
            );
            return None;
        };
        let command = self.template(cmd, HOOK_PLACEHOLDERS, "upgrade command")?;
        if layer.shell && cmd.value.len() != 1 {
            self.error(
                cmd.referenced,
                "with `shell: true` the upgrade command is one shell script string",
                "write `command: [\"ssh {node} sudo upgrade-node && echo done\"]`, or set `shell: false` and list the arguments",
            );
            return None;
        }
        Some(UpgradePlan { command, shell: layer.shell, timeout: layer.upgrade_timeout })
    }

    fn max_unavailable(&mut self, b: &Batch) -> Option<MaxUnavailable> {
        let Some(m) = &b.max_unavailable else { return Some(MaxUnavailable::Count(1)) };
        match parse_max_unavailable(&m.value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(
                    m.referenced,
                    message,
                    "write a node count of at least 1 (`2`) or a percentage from 1% to 100% (`\"25%\"`)",
                );
                None
            }
        }
    }

    /// etcd keeps quorum while floor(n/2)+1 members are up, so at most floor((n-1)/2) may be
    /// out of service at once.
    fn quorum_budget(&mut self, raw: &Spanned<Vec<Batch>>, endpoints: Option<usize>) {
        let service: Vec<&Batch> = raw.value.iter().filter(|b| b.role == Role::Service).collect();
        if service.is_empty() {
            return;
        }
        let (members, source) = match (endpoints, self.static_service_node_count(&raw.value)) {
            (Some(n), _) if n > 0 => (n, "etcd endpoints"),
            (_, Some(n)) => (n, "service nodes in the plan"),
            _ => {
                self.warn(
                    service[0].name.referenced,
                    "the etcd member count is not known before the selector is resolved, so quorum is checked at preview and at run time only",
                    "list the service nodes by name, or give `quorum.etcd.endpoints`",
                );
                return;
            }
        };
        let budget = super::resolved::etcd_fault_tolerance(members);
        for b in service {
            let size = b.nodes.as_ref().map_or(members, |n| n.value.len());
            let max_unavailable = match &b.max_unavailable {
                None => MaxUnavailable::Count(1),
                Some(m) => match parse_max_unavailable(&m.value) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            let at_once = max_unavailable.resolve(size);
            if at_once > budget {
                let at = b.max_unavailable.as_ref().map_or(b.name.referenced, |m| m.referenced);
                let message = if budget == 0 {
                    format!(
                        "an etcd cluster of {members} member(s) (from the {source}) cannot lose any member without losing quorum, but batch `{}` takes {at_once} out of service",
                        b.name.value
                    )
                } else {
                    format!(
                        "batch `{}` may take {at_once} etcd members out of service at once, but {members} members (from the {source}) keep quorum only with at most {budget} out",
                        b.name.value
                    )
                };
                let help = if budget == 0 {
                    "run at least 3 service (etcd) nodes before rolling them; a rolling upgrade of fewer loses the cluster".to_owned()
                } else {
                    format!("set `maxUnavailable: {budget}` on this batch")
                };
                self.error(at, message, help);
            }
        }
    }
}

/// One layer of overrides, borrowed from `defaults` or from a batch, so both share one
/// layering function.
#[derive(Clone, Copy)]
struct Overrides<'a> {
    drain: Option<&'a model::DrainSettings>,
    sessions: Option<&'a model::SessionSettings>,
    upgrade: Option<&'a model::UpgradeSettings>,
    verify: Option<&'a model::VerifySettings>,
    uncordon: Option<UncordonPolicy>,
}

impl<'a> From<&'a StepSettings> for Overrides<'a> {
    fn from(s: &'a StepSettings) -> Self {
        Overrides {
            drain: s.drain.as_ref(),
            sessions: s.sessions.as_ref(),
            upgrade: s.upgrade.as_ref(),
            verify: s.verify.as_ref(),
            uncordon: s.uncordon,
        }
    }
}

impl<'a> From<&'a Batch> for Overrides<'a> {
    fn from(b: &'a Batch) -> Self {
        Overrides {
            drain: b.drain.as_ref(),
            sessions: b.sessions.as_ref(),
            upgrade: b.upgrade.as_ref(),
            verify: b.verify.as_ref(),
            uncordon: b.uncordon,
        }
    }
}

/// A count of at least 1, or `N%` with N from 1 to 100.
fn parse_max_unavailable(value: &model::MaxUnavailable) -> Result<MaxUnavailable, String> {
    match value {
        model::MaxUnavailable::Count(n) if *n >= 1 => {
            u32::try_from(*n).map(MaxUnavailable::Count).map_err(|_| format!("maxUnavailable {n} is too large"))
        }
        model::MaxUnavailable::Count(n) => Err(format!("maxUnavailable {n} would never take a node out of service")),
        model::MaxUnavailable::Text(t) => match t.trim().strip_suffix('%').and_then(|p| p.trim().parse::<u32>().ok()) {
            Some(p @ 1..=100) => Ok(MaxUnavailable::Percent(p)),
            Some(0) => Err("maxUnavailable 0% would never take a node out of service".into()),
            Some(p) => Err(format!("maxUnavailable {p}% is over 100%")),
            None => Err(format!("maxUnavailable `{t}` is neither a count nor a percentage")),
        },
    }
}

/// Parses a human duration (`90s`, `15m`, `8h`, `1h 30m`); it must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = text.trim().parse().map_err(|e: jiff::Error| e.to_string())?;
    if parsed.is_negative() || parsed.is_zero() {
        return Err("it must be longer than zero".into());
    }
    Duration::try_from(parsed).map_err(|e| e.to_string())
}

fn mode_name(mode: LoadBalancerMode) -> &'static str {
    match mode {
        LoadBalancerMode::Servicelb => "servicelb",
        LoadBalancerMode::CiliumBgp => "cilium-bgp",
        LoadBalancerMode::CiliumL2 => "cilium-l2",
        LoadBalancerMode::External => "external",
    }
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn closest_timezone(word: &str) -> Option<String> {
    let lower = word.to_lowercase();
    jiff::tz::db()
        .available()
        .map(|name| {
            let name = name.as_str().to_owned();
            (strsim::jaro_winkler(&lower, &name.to_lowercase()), name)
        })
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_form() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn zone_membership() {
        assert!(in_zone("juno.studio.example.", "studio.example."));
        assert!(in_zone("studio.example.", "studio.example."));
        assert!(!in_zone("juno.otherstudio.example.", "studio.example."));
    }

    #[test]
    fn timezone_typos_get_a_suggestion() {
        assert_eq!(closest_timezone("Europe/Londn").as_deref(), Some("Europe/London"));
    }
}
