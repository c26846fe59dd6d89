//! `noderoll init`: a starting plan for a cluster as it is. Service nodes (control plane,
//! etcd, Juno services) go first, one at a time; workstations follow in batches of a chosen
//! size, a quarter of each batch at a time. The plan passes `check` as written; the upgrade
//! command and the load balancer mode are the operator's to fill in.

use std::fmt::Write;

use crate::labels::SERVICE_LABELS;
use crate::plan::defaults;
use crate::plan::duration::written;
use crate::plan::model::{API_VERSION, KIND};
use crate::planner::Inventory;
use crate::planner::survey::has_any;

/// The plan's YAML.
pub fn starter(name: &str, inventory: &Inventory, batch_size: usize) -> String {
    let serves = |name: &&String| inventory.nodes.get(*name).is_some_and(|labels| has_any(labels, &SERVICE_LABELS));
    let (service, workstations): (Vec<&String>, Vec<&String>) = inventory.nodes.keys().partition(serves);
    let list = |nodes: &[&String]| nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let _ = writeln!(out, "# yaml-language-server: $schema=https://noderoll.io/schemas/plan.schema.json");
    let _ = writeln!(
        out,
        "# Written by `noderoll init` from {} node(s): {} service, {} workstation.",
        inventory.nodes.len(),
        service.len(),
        workstations.len()
    );
    out.push_str("# Set the load balancer mode (servicelb needs its DNS record) and the upgrade command,\n");
    out.push_str("# then `noderoll check` and `noderoll preview --kubeconfig ...` it.\n");
    let _ = writeln!(out, "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: {name}\nspec:");
    out.push_str("  loadBalancer:\n    mode: external\n");
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
}
