//! From a validated plan to a step graph, and its renderings. Pure: no I/O, no clock, no
//! async; plain tests and proptest cover it.

pub mod budget;
pub mod build;
pub mod estimate;
pub mod graph;
pub mod invariants;
pub mod placement;
pub mod render;
pub mod schedule;
pub mod survey;

pub use build::{
    BudgetFacts, CiliumPolicy, Inventory, Planned, PodFacts, build, build_for_cluster, build_symbolic, build_with,
};
pub use graph::{Action, RecordChange, Step, StepGraph, StepRef, node_step_id};

/// Why a plan cannot be turned into a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlannerError {
    /// A batch selects nodes by label and no cluster inventory was given to resolve it.
    #[error(
        "batch `{batch}` selects its nodes with `{selector}`, which needs the cluster's node list; give it with --snapshot FILE or --kubeconfig PATH, or list the batch's nodes by name"
    )]
    UnresolvedSelector {
        /// The batch.
        batch: String,
        /// Its selector.
        selector: String,
    },
    /// A service batch selects its nodes by label and the plan is previewed without a
    /// cluster: its nodes decide the quorum budget and the DNS changes, so they cannot be
    /// shown symbolically.
    #[error(
        "service batch `{batch}` selects its nodes with `{selector}`, and a service batch's nodes decide the quorum budget and the DNS changes, so they cannot be previewed without the cluster's node list; give it with --snapshot FILE or --kubeconfig PATH, or list the batch's nodes by name"
    )]
    UnresolvedServiceSelector {
        /// The batch.
        batch: String,
        /// Its selector.
        selector: String,
    },
    /// A selector picks a node that another batch already has.
    #[error(
        "node `{node}` is in batch `{first}` and also matches the selector of batch `{second}`; narrow the selector (for example with `!label` or `label notin (...)`) so every node is in one batch"
    )]
    NodeInTwoBatches {
        /// The node.
        node: String,
        /// The batch that has it first.
        first: String,
        /// The batch whose selector also matches it.
        second: String,
    },
    /// The plan names nodes the cluster does not have.
    #[error(
        "the cluster has no node named {}; fix the plan's node names (or check the kubeconfig points at the right cluster)", .nodes.join(", ")
    )]
    MissingNodes {
        /// The nodes.
        nodes: Vec<String>,
    },
    /// Too few etcd members to take any out of service.
    #[error(
        "{members} etcd member(s) cannot lose any member without losing quorum, but the plan takes {service_nodes} service node(s) out of service"
    )]
    NoQuorumBudget {
        /// etcd members counted.
        members: usize,
        /// Service nodes in the plan.
        service_nodes: usize,
    },
}

impl crate::exit_code::KnowsExitCode for PlannerError {
    fn exit_code(&self) -> i32 {
        crate::exit_code::INVALID_PLAN
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use proptest::prelude::*;

    use super::*;
    use crate::plan;

    fn load(text: &str) -> plan::Plan {
        let checked = plan::check_str("test.yaml", text);
        let errors: Vec<String> = checked.diagnostics.iter().map(ToString::to_string).collect();
        checked.plan.unwrap_or_else(|| panic!("invalid plan: {errors:#?}\n{text}"))
    }

    fn example(name: &str) -> String {
        std::fs::read_to_string(format!("{}/plans/{name}", env!("CARGO_MANIFEST_DIR"))).expect("example plan")
    }

    #[test]
    fn example_plans_with_named_nodes_satisfy_every_invariant() {
        for name in
            ["servicelb-round-robin.yaml", "servicelb-single-record.yaml", "external-lb.yaml", "large-facility.yaml"]
        {
            let plan = load(&example(name));
            let planned = build(&plan).expect("plans");
            assert_eq!(invariants::violations(&plan, &planned.graph), Vec::<String>::new(), "{name}");
        }
    }

    /// Plans an example, removes the edge `from → to`, and returns what the checker finds.
    fn violations_without_edge(example_name: &str, from: &str, to: &str) -> Vec<String> {
        let plan = load(&example(example_name));
        let mut planned = build(&plan).expect("plans");
        let g = &mut planned.graph.graph;
        let find = |id: &str| g.node_indices().find(|&i| g[i].id == id).expect("step");
        let edge = g.find_edge(find(from), find(to)).expect("edge");
        g.remove_edge(edge);
        invariants::violations(&plan, &planned.graph)
    }

    #[test]
    fn the_checker_catches_a_missing_quorum_edge() {
        let found = violations_without_edge("servicelb-round-robin.yaml", "cp1/dns-restore", "cp2/dns-withdraw");
        assert!(found.iter().any(|v| v.contains("etcd members can be out of service at once")), "{found:?}");
    }

    #[test]
    fn the_checker_catches_a_batch_exceeding_max_unavailable() {
        let found = violations_without_edge("external-lb.yaml", "gpu-01/uncordon", "gpu-02/cordon");
        assert!(found.iter().any(|v| v.contains("batch `pool-gpu` can have 2 nodes out of service")), "{found:?}");
    }

    #[test]
    fn the_checker_catches_a_restore_that_changes_the_record_the_wrong_way() {
        let plan = load(&example("servicelb-single-record.yaml"));
        let mut planned = build(&plan).expect("plans");
        let g = &mut planned.graph.graph;
        let restore = g.node_indices().find(|&i| g[i].action == Action::DnsRestore).expect("a dns-restore step");
        assert_eq!(g[restore].record, Some(RecordChange::PointBack));
        g[restore].record = Some(RecordChange::Rejoin);
        let found = invariants::violations(&plan, &planned.graph);
        assert!(found.iter().any(|v| v.contains("the plan's strategy calls for Some(PointBack)")), "{found:?}");
    }

    /// The example's workstations with a soak, and the step ids of its graph.
    fn soaking(per: &str) -> (plan::Plan, Planned) {
        let text = example("external-lb.yaml")
            .replace("  batches:\n", &format!("    soak: 10m\n    soakPer: {per}\n  batches:\n"));
        assert!(text.contains("soak: 10m"), "the example has a defaults section");
        let plan = load(&text);
        let planned = build(&plan).expect("plans");
        (plan, planned)
    }

    fn edge(planned: &Planned, from: &str, to: &str) -> bool {
        let g = &planned.graph.graph;
        let find = |id: &str| g.node_indices().find(|&i| g[i].id == id).unwrap_or_else(|| panic!("step {id}"));
        g.find_edge(find(from), find(to)).is_some()
    }

    #[test]
    fn a_node_soak_ends_its_chain_and_holds_the_next_node_of_its_lane() {
        let (plan, planned) = soaking("node");
        assert_eq!(invariants::violations(&plan, &planned.graph), Vec::<String>::new());
        let chain = planned.chains.iter().find(|c| c.node == "gpu-01").expect("gpu-01");
        assert_eq!(planned.graph.step(chain.last()).action, Action::Soak);
        assert!(edge(&planned, "gpu-01/soak", "gpu-02/cordon"), "the next node waits for the soak");
        assert!(estimate::critical_path(&plan, &planned.graph).duration >= std::time::Duration::from_secs(600));
    }

    #[test]
    fn a_batch_soak_is_a_gate_before_the_batch_is_done() {
        let (plan, mut planned) = soaking("batch");
        assert_eq!(invariants::violations(&plan, &planned.graph), Vec::<String>::new());
        assert!(planned.chains.iter().all(|c| planned.graph.step(c.last()).action != Action::Soak));
        assert!(edge(&planned, "batch/pool-gpu/soak", "batch/pool-gpu/batch-done"));
        assert!(edge(&planned, "gpu-01/uncordon", "batch/pool-gpu/soak"));
        let g = &mut planned.graph.graph;
        let find =
            |g: &petgraph::graph::DiGraph<Step, ()>, id: &str| g.node_indices().find(|&i| g[i].id == id).expect("step");
        let (soak, done) = (find(g, "batch/pool-gpu/soak"), find(g, "batch/pool-gpu/batch-done"));
        let cut = g.find_edge(soak, done).expect("edge");
        g.remove_edge(cut);
        let found = invariants::violations(&plan, &planned.graph);
        assert!(found.iter().any(|v| v.contains("`pool-gpu`'s soak does not come before its batch-done")), "{found:?}");
    }

    #[test]
    fn selector_batches_need_an_inventory() {
        let plan = load(&example("cilium-bgp.yaml"));
        assert!(matches!(build(&plan), Err(PlannerError::UnresolvedSelector { .. })));
    }

    #[test]
    fn without_a_cluster_a_selector_workstation_batch_is_one_symbolic_stand_in() {
        let text = example("servicelb-round-robin.yaml");
        let start = text.find("    - name: workstations").expect("a workstation batch");
        let text = format!(
            "{}    - name: farm\n      role: workstation\n      selector: rack in (r1,r2)\n      maxUnavailable: 10%\n      maxFailures: 1\n  window: {{cron: \"0 22 * * 5\", duration: 8h, timezone: UTC}}\n",
            &text[..start]
        );
        let plan = load(&text);
        assert!(matches!(build(&plan), Err(PlannerError::UnresolvedSelector { .. })), "apply's build still refuses");
        let planned = build_symbolic(&plan).expect("plans");
        assert!(planned.is_symbolic());
        let farm = planned.batches.iter().find(|b| b.name == "farm").expect("farm");
        assert_eq!(farm.nodes, [build::stand_in("farm")]);
        assert_eq!(
            farm.symbolic,
            Some(build::SymbolicMembers {
                selector: "rack in (r1,r2)".into(),
                max_unavailable: "10%".into(),
                max_failures: "1".into()
            })
        );
        assert_eq!(invariants::violations(&plan, &planned.graph), Vec::<String>::new());
        let text = render::text(&plan, &planned);
        for expected in [
            "batch farm (workstation, nodes matching `rack in (r1,r2)`, 10% at a time, after",
            "up to 1 may fail and be left cordoned",
            "windows needed: not counted",
            "estimated duration: at least ",
            "[cp1/dns-withdraw] update delete",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(!text.contains("wave 1: <farm>"), "a symbolic batch has no waves:\n{text}");
    }

    #[test]
    fn without_a_cluster_a_selector_service_batch_is_refused() {
        let text = example("cilium-bgp.yaml").replace("nodes: [cp1, cp2, cp3]", "selector: etcd=true");
        let plan = load(&text);
        assert!(matches!(build_symbolic(&plan), Err(PlannerError::UnresolvedServiceSelector { .. })));
    }

    /// A random valid plan: 3–7 service nodes, 1–4 workstation batches of 1–12 nodes with
    /// counts or percentages, `after` pointing at earlier batches, any LB mode and strategy.
    fn arbitrary_plan() -> impl Strategy<Value = String> {
        let batch = (
            1usize..=12,
            prop_oneof![(1u32..=5).prop_map(|n| n.to_string()), (1u32..=100).prop_map(|p| format!("\"{p}%\""))],
            any::<bool>(),
            any::<prop::sample::Index>(),
            any::<bool>(),
            0usize..3,
        );
        (
            3usize..=7,
            0usize..4,
            any::<bool>(),
            proptest::option::of(3usize..=7),
            proptest::collection::vec(batch, 1..=4),
            any::<bool>(),
        )
            .prop_map(|(service, mode, single_record, endpoints, batches, window)| {
                let mode = ["servicelb", "cilium-bgp", "cilium-l2", "external"][mode];
                let mut y = String::from("apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: random}\nspec:\n");
                let _ = writeln!(y, "  loadBalancer:\n    mode: {mode}");
                if mode == "servicelb" {
                    let strategy = if single_record { "single-record" } else { "round-robin" };
                    let _ = writeln!(y, "    dns: {{name: juno.example., strategy: {strategy}, provider: {{manual: {{}}}}, resolvers: [\"127.0.0.1:53\"]}}");
                }
                let members = endpoints.unwrap_or(service).max(service);
                if endpoints.is_some() {
                    let list: Vec<String> = (0..members).map(|i| format!("http://127.0.0.1:{}", 2379 + i)).collect();
                    let _ = writeln!(y, "  quorum: {{etcd: {{endpoints: [{}]}}}}", list.join(", "));
                }
                if window {
                    y.push_str("  window: {cron: \"0 22 * * 5\", duration: 8h, timezone: Europe/London}\n");
                }
                y.push_str("  defaults: {upgrade: {command: [upgrade, \"{node}\"]}}\n  batches:\n");
                let budget = (members - 1) / 2;
                let service_nodes: Vec<String> = (0..service).map(|i| format!("cp{i}")).collect();
                let _ = writeln!(y, "    - {{name: cp, role: service, nodes: [{}], maxUnavailable: {}}}", service_nodes.join(", "), budget.max(1));
                for (b, (size, max_unavailable, approve, after, explicit_after, soak)) in batches.iter().enumerate() {
                    let nodes: Vec<String> = (0..*size).map(|i| format!("ws{b}-{i}")).collect();
                    let _ = write!(y, "    - {{name: b{b}, role: workstation, nodes: [{}], maxUnavailable: {max_unavailable}", nodes.join(", "));
                    if *approve {
                        y.push_str(", uncordon: approve");
                    }
                    match soak {
                        1 => y.push_str(", soak: 5m"),
                        2 => y.push_str(", soak: 5m, soakPer: batch"),
                        _ => {}
                    }
                    if *explicit_after {
                        let target = after.index(b + 1);
                        let name = if target == 0 { "cp".to_owned() } else { format!("b{}", target - 1) };
                        let _ = write!(y, ", after: [{name}]");
                    }
                    y.push_str("}\n");
                }
                y
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_plans_give_safe_graphs(text in arbitrary_plan()) {
            let plan = load(&text);
            let planned = build(&plan).expect("plans");
            let found = invariants::violations(&plan, &planned.graph);
            prop_assert!(found.is_empty(), "{found:#?}\n{text}");
            let nodes: usize = planned.batches.iter().map(|b| b.nodes.len()).sum();
            prop_assert_eq!(planned.chains.len(), nodes);
        }
    }
}
