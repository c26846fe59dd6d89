//! `noderoll init`: a starting plan for a cluster as it is. Service nodes (control plane,
//! etcd, Juno services) go first, one at a time; workstations follow in batches of a chosen
//! size, a quarter of each batch at a time. The load-balancer mode is read from the
//! cluster: k3s ServiceLB's `svclb-*` pods, Cilium's BGP or L2 announcement policies, or
//! neither (`external`). What the cluster shows is written out; what only the operator
//! knows is a commented placeholder. The plan passes `check` as written, but for ServiceLB:
//! its DNS record and server cannot be read from the cluster, and `check` names them as
//! missing rather than a guess taking users' traffic somewhere wrong.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde_json::Value;

use crate::labels::{SERVICE_LABELS, SERVICELB_NAMESPACE, SERVICELB_SERVICE};
use crate::plan::defaults;
use crate::plan::duration::written;
use crate::plan::model::{API_VERSION, KIND};
use crate::planner::survey::has_any;
use crate::planner::{CiliumPolicy, Inventory};

/// The schema file `init` points editors at, beside the plan.
const SCHEMA_FILE: &str = "plan.schema.json";

/// The load balancing the cluster shows.
enum Detected<'a> {
    /// Cilium BGP: the policies selecting the nodes that peer.
    CiliumBgp(Vec<&'a CiliumPolicy>),
    /// Cilium L2 announcements: the policies selecting the nodes that announce.
    CiliumL2(Vec<&'a CiliumPolicy>),
    /// k3s ServiceLB: the Services (`namespace/name`) its pods serve.
    ServiceLb(BTreeSet<String>),
    /// None of those.
    External,
}

impl Detected<'_> {
    /// Cilium's policies first: a cluster running Cilium's load balancing may still show
    /// ServiceLB pods (k3s starts it unless told not to), which then serve nothing users reach.
    fn of(inventory: &Inventory) -> Detected<'_> {
        let of_kind = |prefix: &str| -> Vec<&CiliumPolicy> {
            inventory.cilium_policies.iter().filter(|p| p.kind.starts_with(prefix)).collect()
        };
        let (bgp, l2) = (of_kind("CiliumBGP"), of_kind("CiliumL2"));
        let services: BTreeSet<String> = inventory
            .pods
            .iter()
            .filter_map(|p| {
                let name = p.labels.get(SERVICELB_SERVICE)?;
                let namespace = p.labels.get(SERVICELB_NAMESPACE).map_or("?", String::as_str);
                Some(format!("{namespace}/{name}"))
            })
            .collect();
        if !bgp.is_empty() {
            Detected::CiliumBgp(bgp)
        } else if !l2.is_empty() {
            Detected::CiliumL2(l2)
        } else if !services.is_empty() {
            Detected::ServiceLb(services)
        } else {
            Detected::External
        }
    }
}

/// The one label (`key` or `key=value`) whose removal takes a node out of `selector`, when
/// the selector has one: a `matchLabels` entry, an `Exists` or a one-value `In` expression.
fn withdrawing_label(selector: &Value) -> Option<String> {
    if let Some((key, value)) = selector["matchLabels"].as_object().and_then(|m| m.iter().next()) {
        return Some(format!("{key}={}", value.as_str().unwrap_or_default()));
    }
    selector["matchExpressions"].as_array().into_iter().flatten().find_map(|e| {
        let key = e["key"].as_str()?;
        match (e["operator"].as_str()?, e["values"].as_array().map(Vec::as_slice)) {
            ("Exists", _) => Some(key.to_owned()),
            ("In", Some([value])) => Some(format!("{key}={}", value.as_str()?)),
            _ => None,
        }
    })
}

fn named(policies: &[&CiliumPolicy]) -> String {
    policies.iter().map(|p| format!("{} `{}`", p.kind, p.name)).collect::<Vec<_>>().join(", ")
}

/// The `loadBalancer` section, with a comment saying what it was read from.
fn load_balancer(out: &mut String, detected: &Detected) {
    out.push_str("  loadBalancer:\n");
    match detected {
        Detected::CiliumBgp(policies) => {
            let _ = writeln!(out, "    # Cilium BGP: {}.", named(policies));
            out.push_str("    mode: cilium-bgp\n");
            let labels: BTreeSet<Option<String>> =
                policies.iter().map(|p| withdrawing_label(&p.node_selector)).collect();
            match labels.iter().collect::<Vec<_>>().as_slice() {
                [Some(label)] => {
                    out.push_str("    # The label its node selector needs; removing it withdraws a node's routes.\n");
                    let _ = writeln!(out, "    bgp:\n      nodeLabel: {label}");
                }
                _ => {
                    let selectors: Vec<String> = policies.iter().map(|p| p.node_selector.to_string()).collect();
                    let _ = writeln!(
                        out,
                        "    # Its node selectors ({}) name no one label whose removal withdraws a\n    # node's routes: add one to the selector and to the nodes, then name it here.\n    # bgp:\n    #   nodeLabel: KEY=VALUE",
                        selectors.join("; ")
                    );
                }
            }
        }
        Detected::CiliumL2(policies) => {
            let _ = writeln!(out, "    # Cilium L2 announcements: {}.", named(policies));
            out.push_str(
                "    # A node releases its announcements when it shuts down: the upgrade command must\n    # reboot it gracefully (`shutdown -r now`), never power it off hard.\n    mode: cilium-l2\n",
            );
            let _ = writeln!(
                out,
                "    # l2:\n    #   leaseNamespace: {}\n    #   releaseTimeout: {}",
                defaults::L2_LEASE_NAMESPACE,
                written(defaults::L2_RELEASE_TIMEOUT)
            );
        }
        Detected::ServiceLb(services) => {
            let list: Vec<&str> = services.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "    # k3s ServiceLB: svclb pods serve {} on the nodes.\n    # Users resolve a DNS record to the service nodes, and noderoll moves it off each\n    # one in turn: fill in the record and its DNS server below, then uncomment them\n    # (`check` refuses servicelb without `dns`).\n    mode: servicelb",
                list.join(", ")
            );
            out.push_str(
                "    # dns:\n    #   name: juno.studio.example.\n    #   strategy: round-robin\n    #   provider:\n    #     rfc2136:\n    #       server: 192.0.2.53:53\n    #       zone: studio.example.\n    #       tsig: {name: noderoll, algorithm: hmac-sha256, secretFile: tsig.secret}\n",
            );
        }
        Detected::External => {
            out.push_str(
                "    # Neither ServiceLB pods nor a Cilium BGP or L2 policy found: a load balancer that\n    # moves traffic off a drained node by itself.\n    mode: external\n",
            );
        }
    }
}

/// The plan's YAML.
pub fn starter(name: &str, inventory: &Inventory, batch_size: usize) -> String {
    let serves = |name: &&String| inventory.nodes.get(*name).is_some_and(|labels| has_any(labels, &SERVICE_LABELS));
    let (service, workstations): (Vec<&String>, Vec<&String>) = inventory.nodes.keys().partition(serves);
    let list = |nodes: &[&String]| nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let _ = writeln!(out, "# yaml-language-server: $schema={SCHEMA_FILE}");
    let _ = writeln!(out, "# The schema beside this plan, for editors: noderoll schema > {SCHEMA_FILE}");
    let _ = writeln!(
        out,
        "# Written by `noderoll init` from {} node(s): {} service, {} workstation.",
        inventory.nodes.len(),
        service.len(),
        workstations.len()
    );
    out.push_str("# Check the load balancer settings and set the upgrade command,\n");
    out.push_str("# then `noderoll check` and `noderoll preview --kubeconfig ...` it.\n");
    let _ = writeln!(out, "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: {name}\nspec:");
    load_balancer(&mut out, &Detected::of(inventory));
    // The built-in defaults spelled out, so the operator sees what there is to tune, but for
    // `deleteEmptyDirData`: on, so that a pod with an emptyDir volume does not refuse the
    // first drain of someone trying noderoll out (the built-in default keeps kubectl's off).
    let _ = writeln!(
        out,
        "  defaults:\n    drain: {{timeout: {}, ignoreDaemonSets: {}, deleteEmptyDirData: true}}",
        written(defaults::DRAIN_TIMEOUT),
        defaults::IGNORE_DAEMON_SETS
    );
    let _ = writeln!(
        out,
        "    sessions: {{annotation: {}, timeout: {}, onTimeout: halt}}",
        defaults::SESSION_ANNOTATION,
        written(defaults::SESSION_TIMEOUT)
    );
    let _ = writeln!(
        out,
        "    upgrade:\n      command: [ssh, \"{{node}}\", sudo, /usr/local/sbin/upgrade-node]\n      timeout: {}",
        written(defaults::UPGRADE_TIMEOUT)
    );
    let _ = writeln!(
        out,
        "    verify: {{readyTimeout: {}}}\n    uncordon: auto\n  batches:",
        written(defaults::READY_TIMEOUT)
    );
    if !service.is_empty() {
        let _ = writeln!(
            out,
            "    - name: control-plane\n      role: service\n      nodes: [{}]\n      maxUnavailable: 1",
            list(&service)
        );
    }
    for (i, chunk) in workstations.chunks(batch_size.max(1)).enumerate() {
        let _ = writeln!(
            out,
            "    - name: workstations-{}\n      role: workstation\n      nodes: [{}]\n      maxUnavailable: 25%",
            i + 1,
            list(chunk)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_starting_plan_is_valid_and_puts_service_nodes_first() {
        let mut inventory = Inventory::default();
        let service = BTreeMap::from([(crate::labels::CONTROL_PLANE_ROLE.to_owned(), "true".to_owned())]);
        for n in ["cp1", "cp2", "cp3"] {
            inventory.nodes.insert(n.into(), service.clone());
        }
        for i in 1..=45 {
            inventory.nodes.insert(format!("ws{i:02}"), BTreeMap::new());
        }
        let text = starter("studio", &inventory, 20);
        let checked = crate::plan::check_str("init.yaml", &text);
        assert!(!checked.has_errors(), "{:#?}\n{text}", checked.diagnostics);
        let plan = checked.plan.expect("plan");
        let sizes: Vec<(String, usize)> = plan
            .batches
            .iter()
            .map(|b| match &b.members {
                crate::plan::resolved::Members::Nodes(n) => (b.name.clone(), n.len()),
                crate::plan::resolved::Members::Selector(_) => (b.name.clone(), 0),
            })
            .collect();
        assert_eq!(
            sizes,
            [
                ("control-plane".into(), 3),
                ("workstations-1".into(), 20),
                ("workstations-2".into(), 20),
                ("workstations-3".into(), 5)
            ]
        );
    }

    /// A studio of three service nodes and two workstations.
    fn studio() -> Inventory {
        let mut inventory = Inventory::default();
        let service = BTreeMap::from([(crate::labels::CONTROL_PLANE_ROLE.to_owned(), "true".to_owned())]);
        for n in ["cp1", "cp2", "cp3"] {
            inventory.nodes.insert(n.into(), service.clone());
        }
        for n in ["ws01", "ws02"] {
            inventory.nodes.insert(n.into(), BTreeMap::new());
        }
        inventory
    }

    fn policy(kind: &str, selector: serde_json::Value) -> CiliumPolicy {
        CiliumPolicy { kind: kind.into(), name: "default".into(), node_selector: selector }
    }

    /// The plan with its commented `loadBalancer` placeholders filled in as written.
    fn uncommented(text: &str) -> String {
        let mut inside = false;
        let mut lines = Vec::new();
        for line in text.lines() {
            inside = match line.trim_start() {
                l if l.starts_with("# dns:") || l.starts_with("# l2:") || l.starts_with("# bgp:") => true,
                l if !l.starts_with('#') => false,
                _ => inside,
            };
            lines.push(if inside { line.replacen("# ", "", 1) } else { line.to_owned() });
        }
        lines.join("\n") + "\n"
    }

    fn checked(text: &str) -> crate::plan::Checked {
        crate::plan::check_str("init.yaml", text)
    }

    #[test]
    fn editors_are_pointed_at_a_schema_beside_the_plan() {
        let text = starter("studio", &studio(), 20);
        assert!(text.starts_with("# yaml-language-server: $schema=plan.schema.json\n"), "{text}");
        assert!(text.contains("noderoll schema > plan.schema.json"), "{text}");
        assert!(text.contains("mode: external"), "{text}");
        assert!(!checked(&text).has_errors());
    }

    #[test]
    fn servicelb_pods_make_a_servicelb_plan_whose_dns_record_check_asks_for() {
        let mut inventory = studio();
        let labels = BTreeMap::from([
            (SERVICELB_SERVICE.to_owned(), "juno-web".to_owned()),
            (SERVICELB_NAMESPACE.to_owned(), "juno".to_owned()),
        ]);
        inventory.pods.push(crate::planner::PodFacts {
            namespace: "kube-system".into(),
            name: "svclb-juno-web-1a2b3c4d-x7k2p".into(),
            node: "cp1".into(),
            labels,
            daemon_set: true,
            ..Default::default()
        });
        let text = starter("studio", &inventory, 20);
        assert!(text.contains("svclb pods serve juno/juno-web") && text.contains("    mode: servicelb\n"), "{text}");
        let refused = checked(&text);
        let messages: Vec<String> = refused.diagnostics.iter().map(|d| d.message.clone()).collect();
        assert!(refused.has_errors() && messages.iter().any(|m| m.contains("dns")), "{messages:?}\n{text}");
        let filled = uncommented(&text);
        let accepted = checked(&filled);
        assert!(!accepted.has_errors(), "{:#?}\n{filled}", accepted.diagnostics);
        let plan = accepted.plan.expect("plan");
        assert_eq!(plan.load_balancer.mode, crate::plan::model::LoadBalancerMode::Servicelb);
    }

    #[test]
    fn a_cilium_bgp_policy_names_the_mode_and_the_label_its_node_selector_needs() {
        let mut inventory = studio();
        inventory
            .cilium_policies
            .push(policy("CiliumBGPClusterConfig", serde_json::json!({"matchLabels": {"bgp-policy": "default"}})));
        let text = starter("studio", &inventory, 20);
        assert!(text.contains("CiliumBGPClusterConfig `default`"), "{text}");
        let accepted = checked(&text);
        assert!(!accepted.has_errors(), "{:#?}\n{text}", accepted.diagnostics);
        let plan = accepted.plan.expect("plan");
        assert_eq!(plan.load_balancer.mode, crate::plan::model::LoadBalancerMode::CiliumBgp);
        let label = plan.load_balancer.bgp_label.expect("label");
        assert_eq!((label.key.as_str(), label.value.as_deref()), ("bgp-policy", Some("default")));
    }

    #[test]
    fn a_bgp_selector_without_one_removable_label_leaves_the_label_to_the_operator() {
        let mut inventory = studio();
        let selector =
            serde_json::json!({"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["r9"]}]});
        inventory.cilium_policies.push(policy("CiliumBGPPeeringPolicy", selector));
        let text = starter("studio", &inventory, 20);
        assert!(text.contains("name no one label") && text.contains("#   nodeLabel: KEY=VALUE"), "{text}");
        assert!(text.contains("NotIn"), "the selector is quoted: {text}");
        assert!(!checked(&text).has_errors(), "{text}");
    }

    #[test]
    fn a_cilium_l2_policy_makes_an_l2_plan_with_its_settings_to_uncomment() {
        let mut inventory = studio();
        inventory.cilium_policies.push(policy("CiliumL2AnnouncementPolicy", serde_json::Value::Null));
        let text = starter("studio", &inventory, 20);
        assert!(text.contains("    mode: cilium-l2\n") && text.contains("shutdown -r now"), "{text}");
        let filled = uncommented(&text);
        assert!(filled.contains("\n    l2:\n      leaseNamespace: kube-system\n"), "{filled}");
        let accepted = checked(&filled);
        assert!(!accepted.has_errors(), "{:#?}\n{filled}", accepted.diagnostics);
    }

    #[test]
    fn the_withdrawing_label_is_read_from_match_labels_exists_and_one_value_in() {
        use serde_json::json;
        assert_eq!(withdrawing_label(&json!({"matchLabels": {"a": "b"}})).as_deref(), Some("a=b"));
        let exists = json!({"matchExpressions": [{"key": "bgp", "operator": "Exists"}]});
        assert_eq!(withdrawing_label(&exists).as_deref(), Some("bgp"));
        let one = json!({"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1"]}]});
        assert_eq!(withdrawing_label(&one).as_deref(), Some("rack=r1"));
        let two = json!({"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1", "r2"]}]});
        assert_eq!(withdrawing_label(&two), None);
        assert_eq!(withdrawing_label(&json!({})), None);
    }
}
