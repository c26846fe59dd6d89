//! The load balancer in front of the service nodes: its mode, the ServiceLB DNS record and
//! its provider, Cilium's BGP label and L2 leases, and the API servers to fail over between.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_saphyr::Spanned;

use super::{Checker, HOOK_PLACEHOLDERS, is_url};
use crate::plan::defaults;
use crate::plan::model::{self, DnsProvider, DnsStrategy, LoadBalancerMode};
use crate::plan::resolved::{BgpPeering, DnsPlan, DnsProviderPlan, L2Plan, LoadBalancerPlan, NodeLabel};
use crate::plan::selector::{is_dns_subdomain, is_label_name};

/// Placeholders the DNS command provider may use.
const DNS_PLACEHOLDERS: &[&str] = &["node", "address", "record"];

impl Checker<'_> {
    pub(super) fn load_balancer(&mut self, lb: &model::LoadBalancer, service_nodes: Option<usize>) -> LoadBalancerPlan {
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
            (Some(bgp), LoadBalancerMode::CiliumBgp) => bgp.node_label.as_ref().map_or_else(
                || Some(NodeLabel { key: defaults::BGP_LABEL.into(), value: None }),
                |l| self.node_label(l),
            ),
            (None, LoadBalancerMode::CiliumBgp) => Some(NodeLabel { key: defaults::BGP_LABEL.into(), value: None }),
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
        let bgp_peering = (mode == LoadBalancerMode::CiliumBgp).then(|| {
            let bgp = lb.bgp.as_ref();
            BgpPeering {
                timeout: self.duration_or(
                    bgp.and_then(|b| b.peering_timeout.as_ref()),
                    defaults::BGP_PEERING_TIMEOUT,
                    "BGP peering timeout",
                ),
                withdrawn_command: bgp
                    .and_then(|b| b.withdrawn_command.as_ref())
                    .and_then(|c| self.template(c, HOOK_PLACEHOLDERS, "BGP withdrawn command")),
                announced_command: bgp
                    .and_then(|b| b.announced_command.as_ref())
                    .and_then(|c| self.template(c, HOOK_PLACEHOLDERS, "BGP announced command")),
            }
        });
        let l2 = match (lb.l2.as_ref(), mode) {
            (l2, LoadBalancerMode::CiliumL2) => Some(L2Plan {
                lease_namespace: l2
                    .and_then(|l| l.lease_namespace.clone())
                    .unwrap_or_else(|| defaults::L2_LEASE_NAMESPACE.into()),
                release_timeout: self.duration_or(
                    l2.and_then(|l| l.release_timeout.as_ref()),
                    defaults::L2_RELEASE_TIMEOUT,
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
        LoadBalancerPlan { mode, dns, bgp_label, bgp_peering, l2 }
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
                defaults::DNS_PROPAGATION_TIMEOUT,
                "DNS propagation timeout",
            ),
            address_type: d.address_type,
            addresses,
        })
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
    pub(super) fn api_servers(&mut self, servers: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::in_zone;

    #[test]
    fn zone_membership() {
        assert!(in_zone("juno.studio.example.", "studio.example."));
        assert!(in_zone("studio.example.", "studio.example."));
        assert!(!in_zone("juno.otherstudio.example.", "studio.example."));
    }
}
