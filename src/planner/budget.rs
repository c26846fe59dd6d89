//! Disruption budgets that can never allow an eviction, told from those that are merely
//! slow. A drain held by a slow budget goes on once replacements are Ready; one held by a
//! budget whose `desiredHealthy` is at or above its `expectedPods` (`maxUnavailable: 0`,
//! `minAvailable` of every pod, `100%`) would wait out the whole drain timeout for nothing,
//! and nobody watching could tell the two apart (kured #78, kubernetes #80389). Pure: the
//! drain asks it of the budgets that hold its pods, `preview` of those that cover them.

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

/// The help that goes with [`never_allows`]'s reason.
pub const NEVER_ALLOWS_FIX: &str = "lower minAvailable below the pod count or set maxUnavailable to at least 1 (or scale the workload up so the budget has room), then run apply again";

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::never_allows;

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
}
