//! What the API server fills in when an object is created (its defaulting), so that what
//! the simulator serves carries the fields a real server's objects do.

use serde_json::{Value, json};

use super::Cluster;
use crate::sim::resources::idx;

/// Fills what the API server defaults on creation.
pub(crate) fn defaults(cluster: &mut Cluster, resource: usize, value: &mut Value) {
    match resource {
        idx::PODS => {
            let spec = &mut value["spec"];
            for (field, default) in [
                ("terminationGracePeriodSeconds", json!(30)),
                ("schedulerName", json!("default-scheduler")),
                ("restartPolicy", json!("Always")),
                ("dnsPolicy", json!("ClusterFirst")),
            ] {
                if spec[field].is_null() {
                    spec[field] = default;
                }
            }
            if value["status"]["phase"].is_null() {
                value["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        idx::NAMESPACES if value["status"]["phase"].is_null() => {
            value["status"] = json!({"phase": "Active"});
        }
        idx::NODES if value["status"]["nodeInfo"]["bootID"].is_null() => {
            value["status"]["nodeInfo"]["bootID"] = json!(cluster.uid());
        }
        _ => {}
    }
}
