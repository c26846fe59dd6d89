//! The batches: names, members, the `after` graph, each batch's settings and its
//! `maxUnavailable`.

use std::collections::HashMap;

use petgraph::graphmap::DiGraphMap;
use serde_saphyr::{Location, Spanned};

use super::layers::Layer;
use super::{Checker, HOOK_PLACEHOLDERS, closest};
use crate::plan::defaults;
use crate::plan::model::{self, Batch, Role};
use crate::plan::resolved::{BatchPlan, Members, NodeShare, Settings, UpgradePlan};
use crate::plan::selector::is_dns_subdomain;

impl Checker<'_> {
    /// The number of service nodes the plan names, when every service batch lists its nodes.
    pub(super) fn static_service_node_count(&self, batches: &[Batch]) -> Option<usize> {
        let mut count = 0;
        for b in batches.iter().filter(|b| b.role == Role::Service) {
            count += b.nodes.as_ref()?.value.len();
        }
        Some(count)
    }

    pub(super) fn batches(
        &mut self,
        raw: &Spanned<Vec<Batch>>,
        limits: &[Option<NodeShare>],
        defaults: &Layer,
    ) -> Vec<BatchPlan> {
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
        raw.value
            .iter()
            .zip(limits)
            .zip(after)
            .filter_map(|((b, limit), after)| self.batch(b, *limit, after, defaults))
            .collect()
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

    fn batch(
        &mut self,
        b: &Batch,
        max_unavailable: Option<NodeShare>,
        after: Vec<usize>,
        defaults: &Layer,
    ) -> Option<BatchPlan> {
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
        let layer = self.layer(defaults, b.into());
        let upgrade = self.upgrade(b, &layer);
        let max_failures = self.max_failures(b);
        let soak = layer.soak();
        if let (Some(Members::Nodes(nodes)), Some(NodeShare::Count(n))) = (&members, max_unavailable)
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
            max_failures: max_failures?,
            after,
            settings: Settings {
                drain: layer.drain,
                sessions: layer.sessions,
                upgrade: upgrade?,
                verify: layer.verify,
                uncordon: layer.uncordon,
                already_cordoned: layer.already_cordoned,
                soak,
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

    /// `maxUnavailable`, read once: the batch and the quorum budget both use it.
    pub(super) fn max_unavailable(&mut self, b: &Batch) -> Option<NodeShare> {
        self.node_share(b.max_unavailable.as_ref(), "maxUnavailable", 1, defaults::MAX_UNAVAILABLE)
    }

    /// `maxFailures`: 0 or more.
    fn max_failures(&mut self, b: &Batch) -> Option<NodeShare> {
        self.node_share(b.max_failures.as_ref(), "maxFailures", 0, defaults::MAX_FAILURES)
    }

    /// A count of at least `least`, or a percentage from `least`% to 100%.
    fn node_share(
        &mut self,
        written: Option<&Spanned<model::NodeCount>>,
        field: &str,
        least: u32,
        default: NodeShare,
    ) -> Option<NodeShare> {
        let Some(m) = written else { return Some(default) };
        match parse_node_share(&m.value, field, least) {
            Ok(v) => Some(v),
            Err(message) => {
                let example = if least == 0 { "`0`, `2`" } else { "`2`" };
                self.error(
                    m.referenced,
                    message,
                    format!("write a node count of at least {least} ({example}) or a percentage from {least}% to 100% (`\"25%\"`)"),
                );
                None
            }
        }
    }
}

/// A count of at least `least`, or `N%` with N from `least` to 100.
fn parse_node_share(value: &model::NodeCount, field: &str, least: u32) -> Result<NodeShare, String> {
    let too_few = |written: String| match least {
        1 => format!("{field} {written} would never take a node out of service"),
        _ => format!("{field} {written} is below {least}"),
    };
    match value {
        model::NodeCount::Count(n) if *n >= i64::from(least) => {
            u32::try_from(*n).map(NodeShare::Count).map_err(|_| format!("{field} {n} is too large"))
        }
        model::NodeCount::Count(n) => Err(too_few(n.to_string())),
        model::NodeCount::Text(t) => match t.trim().strip_suffix('%').and_then(|p| p.trim().parse::<u32>().ok()) {
            Some(p) if p > 100 => Err(format!("{field} {p}% is over 100%")),
            Some(p) if p >= least => Ok(NodeShare::Percent(p)),
            Some(p) => Err(too_few(format!("{p}%"))),
            None => Err(format!("{field} `{t}` is neither a count nor a percentage")),
        },
    }
}
