//! Disruption budgets that can never allow an eviction, told from those that are merely
//! slow. A drain held by a slow budget goes on once replacements are Ready; one held by a
//! budget whose `desiredHealthy` is at or above its `expectedPods` (`maxUnavailable: 0`,
//! `minAvailable` of every pod, `100%`) would wait out the whole drain timeout for nothing,
//! and nobody watching could tell the two apart (kured #78, kubernetes #80389). So would one
//! that holds a pod which cannot become healthy by waiting (a container in CrashLoopBackOff
//! or an image pull back-off) while the budget is short of healthy pods: under
//! `unhealthyPodEvictionPolicy: IfHealthyBudget`, the default, the API server lets an
//! unhealthy pod go only once the budget has its `desiredHealthy`. Pure: the drain asks it
//! of the budgets that hold its pods, `preview` of those that cover them.

use serde_json::Value;

/// Why `pdb` (a PodDisruptionBudget as JSON) can never allow an eviction, or `None` when
/// it can, or when its status does not describe its current spec yet.
pub fn never_allows(pdb: &Value) -> Option<String> {
    let status = &pdb["status"];
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    if status["observedGeneration"].as_i64().unwrap_or(-1) < generation {
        return None;
    }
    let expected = status["expectedPods"].as_i64()?;
    let desired = status["desiredHealthy"].as_i64()?;
    if expected == 0 || desired < expected {
        return None;
    }
    let spec = &pdb["spec"];
    let limit = match (&spec["minAvailable"], &spec["maxUnavailable"]) {
        (Value::Null, Value::Null) => "no minAvailable or maxUnavailable".to_owned(),
        (Value::Null, max) => format!("maxUnavailable {}", text(max)),
        (min, _) => format!("minAvailable {}", text(min)),
    };
    Some(format!(
        "{limit} with {expected} pod(s) it covers: it must keep {desired} healthy, so it can never allow an eviction"
    ))
}

/// The kubelet's waiting reasons of a container that does not start by waiting: it backs
/// off, or its spec cannot run.
const STUCK_REASONS: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why `pod` (as JSON) is unhealthy and will not become healthy by waiting: not Ready, with
/// a container waiting for one of [`STUCK_REASONS`]. `None` for a pod that is Ready or
/// merely starting.
pub fn stuck_unhealthy(pod: &Value) -> Option<String> {
    let status = &pod["status"];
    let ready =
        status["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
    if ready || !matches!(status["phase"].as_str(), Some("Running" | "Pending")) {
        return None;
    }
    ["initContainerStatuses", "containerStatuses"].iter().find_map(|list| {
        status[*list].as_array().into_iter().flatten().find_map(|c| {
            let reason = c["state"]["waiting"]["reason"].as_str()?;
            STUCK_REASONS
                .contains(&reason)
                .then(|| format!("container {} is in {reason}", c["name"].as_str().unwrap_or("?")))
        })
    })
}

/// Why `pdb` lets no unhealthy pod go now: its `unhealthyPodEvictionPolicy` is
/// `IfHealthyBudget` (or unset, which means it) and it has fewer healthy pods than it must
/// keep. `None` under `AlwaysAllow`, with the healthy pods it needs, or when its status
/// does not describe its current spec yet.
pub fn holds_unhealthy(pdb: &Value) -> Option<String> {
    let status = &pdb["status"];
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    if status["observedGeneration"].as_i64().unwrap_or(-1) < generation {
        return None;
    }
    let policy = pdb["spec"]["unhealthyPodEvictionPolicy"].as_str();
    if policy == Some("AlwaysAllow") {
        return None;
    }
    let current = status["currentHealthy"].as_i64().unwrap_or(0);
    let desired = status["desiredHealthy"].as_i64()?;
    if current >= desired {
        return None;
    }
    let named = if policy.is_none() { "IfHealthyBudget (the default)" } else { "IfHealthyBudget" };
    Some(format!(
        "it has {current} of the {desired} healthy pod(s) it must keep, and under unhealthyPodEvictionPolicy {named} it lets no unhealthy pod go until it has them"
    ))
}

/// The help that goes with a pod [`stuck_unhealthy`] under a budget that [`holds_unhealthy`].
pub const UNHEALTHY_FIX: &str = "fix the workload so that its pods become Ready, or set unhealthyPodEvictionPolicy: AlwaysAllow on the budget (unhealthy pods may then be evicted), then run apply again";

/// The help that goes with [`never_allows`]'s reason.
pub const NEVER_ALLOWS_FIX: &str = "lower minAvailable below the pod count or set maxUnavailable to at least 1 (or scale the workload up so the budget has room), then run apply again";

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{holds_unhealthy, never_allows, stuck_unhealthy};

    fn pdb(spec: serde_json::Value, expected: i64, desired: i64) -> serde_json::Value {
        json!({"metadata": {"generation": 1}, "spec": spec,
               "status": {"observedGeneration": 1, "expectedPods": expected, "desiredHealthy": desired}})
    }

    #[test]
    fn budgets_that_can_never_allow_an_eviction() {
        let max0 = never_allows(&pdb(json!({"maxUnavailable": 0}), 2, 2)).expect("never");
        assert!(max0.starts_with("maxUnavailable 0 with 2 pod(s)"), "{max0}");
        let all = never_allows(&pdb(json!({"minAvailable": 2}), 2, 2)).expect("never");
        assert!(all.starts_with("minAvailable 2 with 2 pod(s)"), "{all}");
        assert!(never_allows(&pdb(json!({"minAvailable": "100%"}), 3, 3)).is_some());
        assert!(never_allows(&pdb(json!({"minAvailable": 3}), 2, 3)).is_some(), "more than there are");
    }

    #[test]
    fn budgets_that_are_merely_slow_or_not_yet_observed() {
        assert_eq!(never_allows(&pdb(json!({"minAvailable": 2}), 3, 2)), None, "room for one");
        assert_eq!(never_allows(&pdb(json!({"maxUnavailable": 1}), 2, 1)), None);
        assert_eq!(never_allows(&pdb(json!({"maxUnavailable": 0}), 0, 0)), None, "covers no pod");
        let mut stale = pdb(json!({"maxUnavailable": 0}), 2, 2);
        stale["metadata"]["generation"] = json!(2);
        assert_eq!(never_allows(&stale), None, "status of an older spec");
        assert_eq!(never_allows(&json!({"spec": {"maxUnavailable": 0}})), None, "no status yet");
    }

    fn pod(ready: &str, phase: &str, waiting: Option<&str>) -> serde_json::Value {
        let state = match waiting {
            Some(reason) => json!({"waiting": {"reason": reason}}),
            None => json!({"running": {}}),
        };
        json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}],
               "containerStatuses": [{"name": "app", "state": state}]}})
    }

    #[test]
    fn pods_that_do_not_become_healthy_by_waiting() {
        let crashing = stuck_unhealthy(&pod("False", "Running", Some("CrashLoopBackOff")));
        assert_eq!(crashing.as_deref(), Some("container app is in CrashLoopBackOff"));
        assert!(stuck_unhealthy(&pod("False", "Pending", Some("ImagePullBackOff"))).is_some());
        assert_eq!(stuck_unhealthy(&pod("False", "Pending", Some("ContainerCreating"))), None, "starting");
        assert_eq!(stuck_unhealthy(&pod("False", "Running", None)), None, "running, not Ready yet");
        assert_eq!(stuck_unhealthy(&pod("True", "Running", Some("CrashLoopBackOff"))), None, "Ready");
        assert_eq!(stuck_unhealthy(&pod("False", "Failed", Some("CrashLoopBackOff"))), None, "terminal");
    }

    fn short(policy: Option<&str>, current: i64, desired: i64) -> serde_json::Value {
        let mut spec = json!({"minAvailable": desired});
        if let Some(policy) = policy {
            spec["unhealthyPodEvictionPolicy"] = json!(policy);
        }
        json!({"metadata": {"generation": 1}, "spec": spec,
               "status": {"observedGeneration": 1, "currentHealthy": current, "desiredHealthy": desired, "expectedPods": 3}})
    }

    #[test]
    fn budgets_short_of_healthy_pods_hold_unhealthy_ones_unless_they_always_allow() {
        let default = holds_unhealthy(&short(None, 0, 1)).expect("holds");
        assert!(
            default.starts_with("it has 0 of the 1 healthy pod(s)") && default.contains("(the default)"),
            "{default}"
        );
        assert!(holds_unhealthy(&short(Some("IfHealthyBudget"), 1, 2)).is_some());
        assert_eq!(holds_unhealthy(&short(Some("AlwaysAllow"), 0, 1)), None);
        assert_eq!(holds_unhealthy(&short(None, 2, 2)), None, "healthy enough: unhealthy pods may go");
        let mut stale = short(None, 0, 1);
        stale["metadata"]["generation"] = json!(2);
        assert_eq!(holds_unhealthy(&stale), None, "status of an older spec");
    }
}
