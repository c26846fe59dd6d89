//! Disruption budgets that can never allow an eviction, told from those that are merely
//! slow. A drain held by a slow budget goes on once replacements are Ready; one held by a
//! budget whose `desiredHealthy` is at or above its `expectedPods` (`maxUnavailable: 0`,
//! `minAvailable` of every pod, `100%`) would wait out the whole drain timeout for nothing,
//! and nobody watching could tell the two apart (kured #78, kubernetes #80389). So would one
//! that holds a pod which cannot become healthy by waiting (a container in CrashLoopBackOff
//! or an image pull back-off) while the budget is short of healthy pods: under
//! `unhealthyPodEvictionPolicy: IfHealthyBudget`, the default, the API server lets an
//! unhealthy pod go only once the budget has its `desiredHealthy`. So would one whose
//! replacements have nowhere to run: every node they could run on is out of service at
//! once, each still holding more of the budget's pods than it lets go (kured #78 again: a
//! pool of pinned workstations drained together). Pure: the drain asks it of the budgets
//! that hold its pods, `preview` of those that cover them.

use std::collections::BTreeMap;

use serde_json::Value;

use super::placement::{Placement, Taint};

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
    if is_ready(pod) || !matches!(status["phase"].as_str(), Some("Running" | "Pending")) {
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

/// Whether `pod` (as JSON) has its Ready condition True, which is what a budget counts as
/// healthy.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
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

/// A node as [`stranded`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its taints that keep pods off ([`super::placement::blocking_taints`]).
    pub taints: &'a [Taint],
    /// Out of service: cordoned, or taken out by the same wave. It comes back once its
    /// drain has moved the budget's pods off it.
    pub out: bool,
    /// The budget's pods on it that its drain must still move.
    pub held: usize,
}

/// Why a budget's pods can never all be moved: the replacements (whose `placements` are
/// given) can run on no node in service among `hosts`, and every node out of service that
/// could take them holds more of the budget's pods than the `allowed` disruptions, so none
/// of them can be emptied and come back to take the replacements either. `None` when a
/// replacement can start somewhere now or later; a host that never comes back (cordoned by
/// someone else) must be left out of `hosts` by a caller that knows it, and is otherwise
/// counted as one that may.
pub fn stranded<'a>(
    allowed: usize,
    placements: &[Placement],
    hosts: impl IntoIterator<Item = Host<'a>>,
) -> Option<String> {
    if placements.is_empty() {
        return None;
    }
    let mut total = 0;
    let mut fitting = Vec::new();
    for host in hosts {
        total += host.held;
        if !placements.iter().any(|p| p.admits(host.name, host.labels, host.taints)) {
            continue;
        }
        if !host.out || host.held <= allowed {
            return None;
        }
        fitting.push(format!("{} ({})", host.name, host.held));
    }
    if total <= allowed {
        return None;
    }
    let room = format!("it allows {allowed} disruption(s), so once those are spent no replacement can start");
    Some(if fitting.is_empty() {
        format!("no node in service admits its pods (nodeSelector, required node affinity, taints); {room}")
    } else {
        format!(
            "its pods can run only on {}, all out of service at once, each holding more of its pods (in brackets) than it lets go; {room}, and none of those nodes comes back before its drain has moved them",
            fitting.join(", ")
        )
    })
}

/// The help that goes with [`stranded`]'s reason.
pub const STRANDED_FIX: &str = "take fewer of those nodes out at once (lower the batch's maxUnavailable, or give them a batch of their own), or let the workload run on more nodes, then run apply again";

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::collections::BTreeMap;

    use super::super::placement::Placement;
    use super::{Host, holds_unhealthy, never_allows, stranded, stuck_unhealthy};

    /// Four hosts: render nodes ws01 and ws02, an edit node ws03 and a tainted render node
    /// ws04 its pods do not tolerate; `out` and `held` give (out, held) for ws01 and ws02.
    fn judged(allowed: usize, out: [bool; 2], held: [usize; 2], ws03_render: bool) -> Option<String> {
        let render = BTreeMap::from([("pool".to_owned(), "render".to_owned())]);
        let edit = BTreeMap::from([("pool".to_owned(), if ws03_render { "render" } else { "edit" }.to_owned())]);
        let gpu = [super::super::placement::Taint {
            key: "gpu".to_owned(),
            value: String::new(),
            effect: "NoSchedule".to_owned(),
        }];
        let placement = Placement::of_pod(&json!({"spec": {"nodeSelector": {"pool": "render"}}}));
        let hosts = [
            Host { name: "ws01", labels: &render, taints: &[], out: out[0], held: held[0] },
            Host { name: "ws02", labels: &render, taints: &[], out: out[1], held: held[1] },
            Host { name: "ws03", labels: &edit, taints: &[], out: false, held: 0 },
            Host { name: "ws04", labels: &render, taints: &gpu, out: false, held: 0 },
        ];
        stranded(allowed, &[placement], hosts)
    }

    #[test]
    fn replacements_with_nowhere_to_run_strand_the_budget_and_any_way_out_is_waited_for() {
        let why = judged(1, [true, true], [2, 2], false).expect("both render nodes out, two pods each, one disruption");
        assert!(why.contains("only on ws01 (2), ws02 (2)") && why.contains("it allows 1 disruption(s)"), "{why}");
        assert!(judged(1, [true, true], [1, 2], false).is_none(), "ws01 can be emptied, comes back and takes them");
        assert!(judged(1, [true, false], [2, 2], false).is_none(), "ws02 is in service");
        assert!(judged(1, [true, true], [2, 2], true).is_none(), "ws03 admits them too");
        assert!(judged(0, [true, true], [1, 0], false).is_none(), "ws02 has none of its pods: it comes back");
        assert!(judged(4, [true, true], [2, 2], false).is_none(), "the budget lets all four go");
        assert!(
            stranded(0, &[], [Host { name: "ws01", labels: &BTreeMap::new(), taints: &[], out: true, held: 3 }])
                .is_none(),
            "no replacement waits for a place"
        );
        let nowhere = stranded(
            0,
            &[Placement::of_pod(&json!({"spec": {"nodeSelector": {"pool": "gone"}}}))],
            [Host { name: "ws01", labels: &BTreeMap::new(), taints: &[], out: true, held: 1 }],
        )
        .expect("no node admits them");
        assert!(nowhere.starts_with("no node in service admits its pods"), "{nowhere}");
    }

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
