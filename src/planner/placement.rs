//! Which nodes a pod could run on, judged by what the scheduler checks before resources: its
//! `nodeSelector`, its required node affinity and the taints it does not tolerate. A drain
//! whose budget is held by a replacement that has nowhere to run waits for ever; knowing the
//! nodes it could run on is how [`super::budget::stranded`] tells that from a slow one.
//!
//! Every doubt is resolved towards "it fits": a placement this module cannot read (an
//! operator it does not know) admits every node, and taints the node lifecycle controller
//! sets for a passing condition (`node.kubernetes.io/*`: not ready, unreachable, pressure,
//! and the cordon itself, which callers judge on its own) do not count, so that a drain is
//! never called hopeless on a guess.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::labels::selector_matches;

/// The prefix of the taints Kubernetes sets for a node's passing conditions.
const CONDITION_TAINTS: &str = "node.kubernetes.io/";

/// A taint that keeps pods off a node unless they tolerate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (empty when unset).
    pub value: String,
    /// `NoSchedule` or `NoExecute`.
    pub effect: String,
}

/// The taints of a node (as JSON) that keep new pods off it: `NoSchedule` and `NoExecute`,
/// without the condition taints.
pub fn blocking_taints(node: &Value) -> Vec<Taint> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
        .map(|t| Taint {
            key: t["key"].as_str().unwrap_or_default().to_owned(),
            value: t["value"].as_str().unwrap_or_default().to_owned(),
            effect: t["effect"].as_str().unwrap_or_default().to_owned(),
        })
        .filter(|t| !t.key.starts_with(CONDITION_TAINTS))
        .collect()
}

/// Where a pod may be placed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// `spec.nodeSelector`.
    node_selector: BTreeMap<String, String>,
    /// `requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms`, any of which
    /// admits a node; empty admits every node.
    terms: Vec<Value>,
    /// `spec.tolerations`.
    tolerations: Vec<Value>,
}

/// Node selector operators this module evaluates; a term with any other admits every node.
const KNOWN_OPERATORS: [&str; 6] = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];

impl Placement {
    /// The placement of a pod (as JSON).
    pub fn of_pod(pod: &Value) -> Self {
        let spec = &pod["spec"];
        let node_selector = spec["nodeSelector"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let required = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        let terms = required["nodeSelectorTerms"].as_array().cloned().unwrap_or_default();
        let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
        Placement { node_selector, terms, tolerations }
    }

    /// Its `nodeSelector`: no node without these labels could take the pod.
    pub fn node_selector(&self) -> &BTreeMap<String, String> {
        &self.node_selector
    }

    /// Whether a node named `name` with `labels` and `taints` ([`blocking_taints`]) could
    /// take the pod, cordons aside.
    pub fn admits(&self, name: &str, labels: &BTreeMap<String, String>, taints: &[Taint]) -> bool {
        self.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            && (self.terms.is_empty() || self.terms.iter().any(|t| term_admits(t, name, labels)))
            && taints.iter().all(|taint| self.tolerations.iter().any(|t| tolerates(t, taint)))
    }
}

/// One `nodeSelectorTerm`: all its `matchExpressions` on labels and `matchFields` on
/// `metadata.name` hold.
fn term_admits(term: &Value, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let expressions = term["matchExpressions"].as_array().into_iter().flatten();
    let fields = term["matchFields"].as_array().into_iter().flatten();
    let names = BTreeMap::from([("metadata.name".to_owned(), name.to_owned())]);
    let mut requirements = expressions.map(|e| (e, labels)).chain(fields.map(|f| (f, &names)));
    requirements.all(|(requirement, against)| requirement_holds(requirement, against))
}

fn requirement_holds(requirement: &Value, labels: &BTreeMap<String, String>) -> bool {
    let operator = requirement["operator"].as_str().unwrap_or_default();
    if !KNOWN_OPERATORS.contains(&operator) {
        return true;
    }
    if let ("Gt" | "Lt", Some(bound)) = (operator, requirement["values"][0].as_str()) {
        let key = requirement["key"].as_str().unwrap_or_default();
        let (Some(value), Ok(bound)) = (labels.get(key).and_then(|v| v.parse::<i64>().ok()), bound.parse::<i64>())
        else {
            return false;
        };
        return if operator == "Gt" { value > bound } else { value < bound };
    }
    selector_matches(&serde_json::json!({"matchExpressions": [requirement]}), labels)
}

/// Whether a toleration (as JSON) tolerates `taint`, as the scheduler's
/// `TolerationsTolerateTaint` decides: an empty effect matches every effect, an empty key
/// with `Exists` every key, and `Equal` (the default) needs the same value.
fn tolerates(toleration: &Value, taint: &Taint) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or_default();
    match toleration["operator"].as_str().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => key == taint.key && toleration["value"].as_str().unwrap_or_default() == taint.value,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint { key: key.to_owned(), value: value.to_owned(), effect: effect.to_owned() }
    }

    #[test]
    fn the_node_selector_and_every_affinity_operator_decide_which_nodes_fit() {
        let pod = json!({"spec": {"nodeSelector": {"pool": "render"}, "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["1"]},
                                  {"key": "rack", "operator": "NotIn", "values": ["r9"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ws07"]}]}
        ]}}}}});
        let placement = Placement::of_pod(&pod);
        assert!(placement.admits("ws01", &labels(&[("pool", "render"), ("gpus", "2"), ("rack", "r1")]), &[]));
        assert!(!placement.admits("ws01", &labels(&[("pool", "render"), ("gpus", "1")]), &[]), "Gt is strict");
        assert!(!placement.admits("ws01", &labels(&[("pool", "render"), ("gpus", "4"), ("rack", "r9")]), &[]));
        assert!(placement.admits("ws07", &labels(&[("pool", "render")]), &[]), "the second term, by name");
        assert!(!placement.admits("ws07", &labels(&[("pool", "edit")]), &[]), "the nodeSelector holds as well");
        let lt = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpus", "operator": "Lt", "values": ["2"]}]}]}}}}});
        assert!(Placement::of_pod(&lt).admits("ws01", &labels(&[("gpus", "1")]), &[]));
        assert!(!Placement::of_pod(&lt).admits("ws01", &labels(&[("gpus", "x")]), &[]), "not a number");
    }

    #[test]
    fn what_it_cannot_read_admits_every_node() {
        let pod = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]}]}}}}});
        assert!(Placement::of_pod(&pod).admits("any", &labels(&[]), &[]));
        assert!(Placement::of_pod(&json!({})).admits("any", &labels(&[]), &[]));
    }

    #[test]
    fn taints_keep_pods_off_unless_tolerated_as_the_scheduler_matches_them() {
        let gpu = [taint("nvidia.com/gpu", "present", "NoSchedule")];
        let none = Placement::of_pod(&json!({"spec": {}}));
        assert!(!none.admits("ws01", &labels(&[]), &gpu));
        let tolerating =
            |t: Value| Placement::of_pod(&json!({"spec": {"tolerations": [t]}})).admits("ws01", &labels(&[]), &gpu);
        assert!(tolerating(json!({"key": "nvidia.com/gpu", "operator": "Exists"})));
        assert!(tolerating(json!({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})));
        assert!(tolerating(json!({"operator": "Exists"})), "an empty key with Exists tolerates every taint");
        assert!(!tolerating(json!({"key": "nvidia.com/gpu", "value": "absent"})), "Equal needs the same value");
        assert!(!tolerating(json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"})));
        let node = json!({"spec": {"taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}});
        assert_eq!(blocking_taints(&node), gpu, "PreferNoSchedule and condition taints keep no pod off");
    }
}
