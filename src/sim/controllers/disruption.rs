//! The disruption controller: every PDB's status kept live from the pods it selects.

use serde_json::{Value, json};

use crate::sim::clock::rfc3339;
use crate::sim::cluster::{Cluster, budget_status};
use crate::sim::resources::idx;
use crate::sim::store::Key;

pub(crate) fn update_budget(cluster: &mut Cluster, key: &Key) {
    let Some(pdb) = cluster.store.get(idx::PDBS, key) else { return };
    let value = pdb.value();
    let status = budget_status(cluster, &value);
    let allowed = status.disruptions_allowed > 0;
    let previous = value["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed").cloned());
    let since = match &previous {
        Some(p) if (p["status"] == "True") == allowed => p["lastTransitionTime"].clone(),
        _ => json!(rfc3339(cluster.now())),
    };
    let generation = value["metadata"]["generation"].clone();
    let mut fresh = json!({
        "observedGeneration": generation,
        "expectedPods": status.expected,
        "currentHealthy": status.current_healthy,
        "desiredHealthy": status.desired_healthy,
        "disruptionsAllowed": status.disruptions_allowed,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if allowed { "True" } else { "False" },
            "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }],
    });
    if !status.disrupted.is_empty() {
        fresh["disruptedPods"] = Value::Object(status.disrupted);
    }
    cluster.store.update(idx::PDBS, key, |v| v["status"] = fresh);
}
