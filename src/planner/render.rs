//! Renderings of a planned rollout: text for review, JSON for tools, DOT and Mermaid for
//! pictures. Each returns a `String`; printing is the CLI's job.

use std::collections::HashMap;
use std::fmt::Write;

use serde::Serialize;

use super::build::{Planned, SymbolicMembers};
use super::estimate::{CriticalPath, critical_path};
use super::graph::{Action, RecordChange};
use super::schedule::Schedule;
use super::survey::Survey;
use crate::plan::Plan;
use crate::plan::duration::elapsed;
use crate::plan::model::{DnsStrategy, LoadBalancerMode, Role, SoakScope};
use crate::plan::resolved::DnsProviderPlan;

/// The JSON contract: `{"plan", "batches": [{"name", "role", "nodes", "maxUnavailable",
/// "maxFailures", "symbolic"?}], "steps": [{"id", "node", "batch", "action", "after",
/// "symbolic"?}], "survey"?, "windows"?}`. A symbolic batch (planned without a cluster) has
/// null counts and a `symbolic` object with its selector and limits as written; its steps
/// belong to its stand-in node and say `"symbolic": true`.
#[derive(Debug, Serialize)]
pub struct JsonPreview<'a> {
    /// The plan's name.
    pub plan: &'a str,
    /// Every batch with its resolved limits.
    pub batches: Vec<JsonBatch<'a>>,
    /// Every step and gate.
    pub steps: Vec<JsonStep<'a>>,
    /// What the rollout meets in the cluster, when previewed against one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey: Option<&'a Survey>,
    /// The next maintenance windows and how many the rollout needs, for a plan with a window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<&'a Schedule>,
}

/// One batch in the JSON contract: its limits as resolved for its node count.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonBatch<'a> {
    /// Name.
    pub name: &'a str,
    /// `service` or `workstation`.
    pub role: &'static str,
    /// How many nodes it has; null when symbolic.
    pub nodes: Option<usize>,
    /// Nodes out of service at once; null when symbolic.
    pub max_unavailable: Option<usize>,
    /// Nodes that may fail before the rollout halts; null when symbolic.
    pub max_failures: Option<usize>,
    /// The selector and limits as written, for a batch whose nodes are not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbolic: Option<&'a SymbolicMembers>,
}

/// One step in the JSON contract.
#[derive(Debug, Serialize)]
pub struct JsonStep<'a> {
    /// Unique id.
    pub id: &'a str,
    /// The node, or null for gates.
    pub node: Option<&'a str>,
    /// The batch.
    pub batch: Option<&'a str>,
    /// The action name.
    pub action: Action,
    /// Ids of the direct predecessors.
    pub after: Vec<&'a str>,
    /// For dns-repoint: where the record points meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// A step of a symbolic batch's stand-in node: every node it selects will run it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub symbolic: bool,
}

/// The JSON preview, with the survey and the windows when there are any.
pub fn json(
    plan: &Plan,
    planned: &Planned,
    survey: Option<&Survey>,
    windows: Option<&Schedule>,
) -> Result<String, serde_json::Error> {
    let g = &planned.graph;
    let steps = g
        .steps()
        .map(|(i, s)| JsonStep {
            id: &s.id,
            node: s.node.as_deref(),
            batch: s.batch.as_deref(),
            action: s.action,
            after: g.predecessors(i).into_iter().map(|p| g.step(p).id.as_str()).collect(),
            target: s.target.as_deref(),
            symbolic: s.node.is_some() && s.batch.as_deref().and_then(|b| planned.symbolic_batch(b)).is_some(),
        })
        .collect();
    let batches = planned
        .batches
        .iter()
        .map(|b| {
            let known = b.symbolic.is_none();
            JsonBatch {
                name: &b.name,
                role: role_name(b.role),
                nodes: known.then_some(b.nodes.len()),
                max_unavailable: known.then_some(b.lanes),
                max_failures: known.then_some(b.max_failures),
                symbolic: b.symbolic.as_ref(),
            }
        })
        .collect();
    serde_json::to_string_pretty(&JsonPreview { plan: &plan.name, batches, steps, survey, windows })
}

/// Graphviz DOT: one cluster per batch, one box per step.
pub fn dot(plan: &Plan, planned: &Planned) -> String {
    let g = &planned.graph;
    let mut out = String::new();
    let _ = writeln!(out, "digraph {:?} {{", plan.name);
    out.push_str("  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n");
    for (b, batch) in planned.batches.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{b} {{\n    label={:?};", batch_label(batch));
        for (i, s) in g.steps().filter(|(_, s)| s.batch.as_deref() == Some(batch.name.as_str())) {
            let shape = if s.action.is_gate() { ", shape=diamond" } else { "" };
            let _ = writeln!(out, "    s{} [label={:?}{shape}];", i.index(), label(planned, s));
        }
        out.push_str("  }\n");
    }
    for (i, _) in g.steps() {
        for p in g.predecessors(i) {
            let _ = writeln!(out, "  s{} -> s{};", p.index(), i.index());
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart: one subgraph per batch.
pub fn mermaid(planned: &Planned) -> String {
    let g = &planned.graph;
    let mut out = String::from("flowchart LR\n");
    for (b, batch) in planned.batches.iter().enumerate() {
        let _ = writeln!(out, "  subgraph b{b}[\"{}\"]", batch_label(batch));
        for (i, s) in g.steps().filter(|(_, s)| s.batch.as_deref() == Some(batch.name.as_str())) {
            let text = label(planned, s).replace('\n', "<br/>");
            if s.action.is_gate() {
                let _ = writeln!(out, "    s{}{{\"{text}\"}}", i.index());
            } else {
                let _ = writeln!(out, "    s{}[\"{text}\"]", i.index());
            }
        }
        out.push_str("  end\n");
    }
    for (i, _) in g.steps() {
        for p in g.predecessors(i) {
            let _ = writeln!(out, "  s{} --> s{}", p.index(), i.index());
        }
    }
    out
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Service => "service",
        Role::Workstation => "workstation",
    }
}

/// A batch's frame in a picture: its name and role, and a symbolic batch's selector.
fn batch_label(batch: &super::build::PlannedBatch) -> String {
    match &batch.symbolic {
        Some(m) => format!(
            "{} ({}: each node matching {}, {} at a time)",
            batch.name,
            role_name(batch.role),
            m.selector,
            m.max_unavailable
        ),
        None => format!("{} ({})", batch.name, role_name(batch.role)),
    }
}

/// A step's box: its node (for a symbolic batch's stand-in, every node its frame names) and
/// action.
fn label(planned: &Planned, step: &super::graph::Step) -> String {
    let symbolic = step.batch.as_deref().is_some_and(|b| planned.symbolic_batch(b).is_some());
    match &step.node {
        Some(_) if symbolic => format!("each node\n{}", step.action.name()),
        Some(node) => format!("{node}\n{}", step.action.name()),
        None => step.action.name().to_owned(),
    }
}

/// The review text: batches → waves → nodes with their steps, DNS changes, the critical
/// path and an estimated duration.
pub fn text(plan: &Plan, planned: &Planned) -> String {
    let mut out = String::new();
    let known = || planned.batches.iter().filter(|b| b.symbolic.is_none());
    let nodes: usize = known().map(|b| b.nodes.len()).sum();
    let selectors = planned.batches.len() - known().count();
    let nodes = match selectors {
        0 => format!("{nodes} node(s)"),
        n => format!("{nodes} named node(s) and {n} selector batch(es) whose nodes need a cluster"),
    };
    let _ = writeln!(
        out,
        "plan {}: {} batch(es), {nodes}, {} steps{}",
        plan.name,
        planned.batches.len(),
        planned.graph.len(),
        if selectors > 0 { " (one stand-in node per selector batch)" } else { "" }
    );
    if let Some(d) = &plan.description {
        let _ = writeln!(out, "  {d}");
    }
    let _ = writeln!(out, "load balancer: {}", mode_text(plan));
    let q = planned.quorum;
    let source = match q.source {
        super::build::MemberSource::EtcdEndpoints => "from quorum.etcd.endpoints, health read from etcd",
        super::build::MemberSource::ServiceNodes => {
            "counted from the plan's service nodes, health from Ready etcd-role nodes"
        }
    };
    let _ = writeln!(
        out,
        "quorum: {} etcd member(s), {source}; at most {} service node(s) out at once",
        q.members, q.limit
    );
    if let Some(w) = &plan.window {
        let _ = writeln!(out, "window: `{}` for {} ({})", w.cron_text, elapsed(w.duration), w.timezone_name);
        if planned.is_symbolic() {
            out.push_str(
                "  windows needed: not counted, since the selector batches' sizes are unknown without a cluster\n",
            );
        }
    }
    let chain_by_node: HashMap<&str, &super::build::NodeChain> =
        planned.chains.iter().map(|c| (c.node.as_str(), c)).collect();
    for batch in &planned.batches {
        let after =
            if batch.after.is_empty() { "start".to_owned() } else { format!("after {}", batch.after.join(", ")) };
        let (members, at_a_time, failures) = match &batch.symbolic {
            Some(m) => (
                format!("nodes matching `{}`", m.selector),
                m.max_unavailable.clone(),
                Some(m.max_failures.clone()).filter(|f| f != "0"),
            ),
            None => (
                format!("{} node(s)", batch.nodes.len()),
                batch.lanes.to_string(),
                Some(batch.max_failures.to_string()).filter(|f| f != "0"),
            ),
        };
        let failures = failures.map_or(String::new(), |n| format!(", up to {n} may fail and be left cordoned"));
        let soak = match plan.batches.iter().find(|b| b.name == batch.name).and_then(|b| b.settings.soak) {
            Some(s) if s.per == SoakScope::Batch => {
                format!(", soaks {} once all its nodes are back", elapsed(s.duration))
            }
            Some(s) => format!(", each node soaks {} once back", elapsed(s.duration)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "\nbatch {} ({}, {members}, {at_a_time} at a time, {after}{failures}{soak})",
            batch.name,
            role_name(batch.role),
        );
        if batch.symbolic.is_some() {
            out.push_str(
                "  nodes: read from the cluster when the rollout starts (--snapshot FILE or --kubeconfig PATH lists them here, in waves)\n",
            );
        } else {
            for (w, wave) in batch.waves().enumerate() {
                let _ = writeln!(out, "  wave {}: {}", w + 1, wave.join(", "));
            }
        }
        let Some(first) = batch.nodes.first().map(|n| chain_by_node[n.as_str()]) else { continue };
        let _ = writeln!(out, "  steps per node: {}", chain_text(planned, first));
        let usual = actions(planned, first);
        for node in &batch.nodes[1..] {
            let chain = chain_by_node[node.as_str()];
            if actions(planned, chain) != usual {
                let _ = writeln!(out, "  {node}: {}", chain_text(planned, chain));
            }
        }
    }
    let dns = dns_changes(plan, planned);
    if !dns.is_empty() {
        out.push_str("\nDNS changes (nsupdate syntax, in the order they are made):\n");
        out.push_str(&dns);
    }
    let path: CriticalPath = critical_path(plan, &planned.graph);
    let nodes_on_path: Vec<&str> = {
        let mut seen: Vec<&str> = Vec::new();
        for &i in &path.steps {
            if let Some(n) = planned.graph.step(i).node.as_deref()
                && seen.last() != Some(&n)
            {
                seen.push(n);
            }
        }
        seen
    };
    let _ = writeln!(
        out,
        "\ncritical path: {} node(s) one after another: {}",
        nodes_on_path.len(),
        abbreviate(&nodes_on_path)
    );
    let (bound, counted) =
        if planned.is_symbolic() { ("at least ", "; a selector batch counted as one node") } else { ("", "") };
    let _ = writeln!(
        out,
        "estimated duration: {bound}{} (typical step durations{counted}; `noderoll rehearse` measures real ones)",
        elapsed(path.duration)
    );
    out
}

fn actions(planned: &Planned, chain: &super::build::NodeChain) -> Vec<Action> {
    chain.steps.iter().map(|&i| planned.graph.step(i).action).collect()
}

fn chain_text(planned: &Planned, chain: &super::build::NodeChain) -> String {
    chain
        .steps
        .iter()
        .map(|&i| {
            let s = planned.graph.step(i);
            match &s.target {
                Some(t) => format!("{}(→ {t})", s.action.name()),
                None => s.action.name().to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

fn mode_text(plan: &Plan) -> String {
    let lb = &plan.load_balancer;
    match lb.mode {
        LoadBalancerMode::Servicelb => {
            let dns = lb.dns.as_ref();
            let record = dns.map_or("?", |d| d.name.as_str());
            let strategy = match dns.map(|d| d.strategy) {
                Some(DnsStrategy::SingleRecord) => "single record, repointed",
                _ => "round-robin, each service node's record withdrawn",
            };
            let provider = match dns.map(|d| &d.provider) {
                Some(DnsProviderPlan::Rfc2136 { server, key_name, .. }) => {
                    format!("RFC 2136 to {server}, TSIG key {key_name}")
                }
                Some(DnsProviderPlan::Manual) => "manual, operator makes each change".to_owned(),
                Some(DnsProviderPlan::Command { .. }) => "command hooks".to_owned(),
                None => "?".to_owned(),
            };
            format!("servicelb; DNS {record} ({strategy}; {provider})")
        }
        LoadBalancerMode::CiliumBgp => {
            let label = lb.bgp_label.as_ref().map_or(String::new(), |l| match &l.value {
                Some(v) => format!("{}={v}", l.key),
                None => l.key.clone(),
            });
            format!("cilium-bgp; routes withdrawn by removing node label {label} after drain")
        }
        LoadBalancerMode::CiliumL2 => {
            "cilium-l2; announcements released after drain, graceful shutdown in the hook".into()
        }
        LoadBalancerMode::External => "external; the load balancer fails over by itself".into(),
    }
}

/// The exact record changes, nsupdate-style. Addresses come from `dns.addresses`, else they
/// are read from the Node at run time and shown as such.
fn dns_changes(plan: &Plan, planned: &Planned) -> String {
    let Some(dns) = &plan.load_balancer.dns else { return String::new() };
    let ttl = dns.ttl.map_or_else(|| "TTL".to_owned(), |t| t.to_string());
    let address = |node: &str| {
        dns.addresses.get(node).map_or_else(|| format!("<{:?} of {node}>", dns.address_type), |ip| ip.to_string())
    };
    let kind = |node: &str| match dns.addresses.get(node) {
        Some(std::net::IpAddr::V6(_)) => "AAAA",
        _ => "A",
    };
    let mut out = String::new();
    for chain in &planned.chains {
        for &i in &chain.steps {
            let s = planned.graph.step(i);
            let node = chain.node.as_str();
            let name = &dns.name;
            let Some(record) = s.record else { continue };
            match record {
                RecordChange::Withdraw => {
                    let _ = writeln!(out, "  [{}] update delete {name} {} {}", s.id, kind(node), address(node));
                }
                RecordChange::Rejoin => {
                    let _ = writeln!(out, "  [{}] update add {name} {ttl} {} {}", s.id, kind(node), address(node));
                }
                RecordChange::Repoint => {
                    let target = s.target.as_deref().unwrap_or("?");
                    let _ = writeln!(
                        out,
                        "  [{}] update delete {name} {}\n  [{}] update add {name} {ttl} {} {}   (record assumed on {node}; checked before the change)",
                        s.id,
                        kind(node),
                        s.id,
                        kind(target),
                        address(target)
                    );
                }
                RecordChange::PointBack => {
                    let _ = writeln!(
                        out,
                        "  [{}] update delete {name} {}\n  [{}] update add {name} {ttl} {} {}",
                        s.id,
                        kind(node),
                        s.id,
                        kind(node),
                        address(node)
                    );
                }
            }
        }
    }
    out
}

fn abbreviate(nodes: &[&str]) -> String {
    if nodes.len() <= 8 {
        nodes.join(" → ")
    } else {
        format!("{} → … → {}", nodes[..4].join(" → "), nodes[nodes.len() - 3..].join(" → "))
    }
}
