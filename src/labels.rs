//! The label and annotation names noderoll knows (Kubernetes', k3s', Cilium's and Juno's),
//! each spelled once, and label selectors in their object form (`matchLabels`,
//! `matchExpressions`) as PDBs and workloads carry them. The simulator's controllers and the
//! executor's drain both ask which PDB covers a pod, so they share one reading of the rules.

use std::collections::BTreeMap;

use serde_json::Value;

/// Juno's label on the nodes that run its web services.
pub const JUNO_SERVICE: &str = "juno-innovations.com/service";
/// Juno's label on workstation nodes.
pub const JUNO_WORKSTATION: &str = "juno-innovations.com/workstation";
/// Juno's annotation on session pods (the plan's `sessions.annotation` default).
pub const JUNO_SESSION: &str = "juno-innovations.com/workload";
/// The role label k3s puts on server nodes.
pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";
/// The role label k3s puts on nodes that run an embedded etcd member.
pub const ETCD_ROLE: &str = "node-role.kubernetes.io/etcd";
/// The role label older clusters still carry beside `control-plane`.
pub const MASTER_ROLE: &str = "node-role.kubernetes.io/master";
/// Labels that say a node serves (control plane, etcd, Juno services).
pub const SERVICE_LABELS: [&str; 4] = [JUNO_SERVICE, CONTROL_PLANE_ROLE, ETCD_ROLE, MASTER_ROLE];
/// The node label a CiliumBGPPeeringPolicy commonly selects by (the plan's `bgp.nodeLabel`
/// default).
pub const CILIUM_BGP: &str = "cilium.io/bgp-enabled";
/// The label k3s's ServiceLB puts on its `svclb-*` DaemonSets and their pods: the name of
/// the LoadBalancer Service they serve (`svccontroller.k3s.cattle.io/svcnamespace` beside
/// it holds the namespace).
pub const SERVICELB_SERVICE: &str = "svccontroller.k3s.cattle.io/svcname";
/// The namespace of the Service a ServiceLB pod serves.
pub const SERVICELB_NAMESPACE: &str = "svccontroller.k3s.cattle.io/svcnamespace";
/// The annotation the kubelet puts on mirror pods of static manifests; the drain leaves them.
pub const MIRROR_POD: &str = "kubernetes.io/config.mirror";
/// The taint the node lifecycle controller sets on a cordoned node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// The recommended label naming the tool that manages an object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// noderoll's node label with the node's rollout phase, so that `kubectl get nodes -L
/// noderoll.io/phase` shows a rollout at a glance.
pub const PHASE: &str = "noderoll.io/phase";
/// noderoll's node annotation naming the plan whose rollout has the node.
pub const PLAN_ANNOTATION: &str = "noderoll.io/plan";
/// noderoll's node annotation naming the step the node is at (or failed at).
pub const STEP_ANNOTATION: &str = "noderoll.io/step";
/// noderoll's annotation on a full segment of a ConfigMap journal: its records go on in
/// the next segment, and nothing more is written to this one.
pub const JOURNAL_SEALED: &str = "noderoll.io/journal-sealed";

/// Whether a `LabelSelector` object (`matchLabels`, `matchExpressions`) selects `labels`.
/// An empty selector selects everything; a missing one selects nothing, as for PDBs.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_null() {
        return false;
    }
    let match_labels = selector["matchLabels"].as_object().into_iter().flatten();
    for (key, value) in match_labels {
        if labels.get(key).map(String::as_str) != value.as_str() {
            return false;
        }
    }
    let expressions = selector["matchExpressions"].as_array().into_iter().flatten();
    for expression in expressions {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> =
            expression["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let present = labels.get(key);
        let holds = match expression["operator"].as_str().unwrap_or_default() {
            "In" => present.is_some_and(|v| values.contains(&v.as_str())),
            "NotIn" => present.is_none_or(|v| !values.contains(&v.as_str())),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            _ => false,
        };
        if !holds {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn label_selector_objects() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(selector_matches(&json!({}), &l));
        assert!(!selector_matches(&Value::Null, &l));
        assert!(selector_matches(&json!({"matchLabels": {"app": "web"}}), &l));
        assert!(!selector_matches(&json!({"matchLabels": {"app": "db"}}), &l));
        let expr = |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(selector_matches(&expr("In", &["front", "back"]), &l));
        assert!(!selector_matches(&expr("NotIn", &["front"]), &l));
        assert!(selector_matches(&expr("Exists", &[]), &l));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &l));
    }
}
