//! The resource types the simulator serves, and the discovery documents built from them.
//!
//! One table drives routing, discovery and tables, so a resource added here is served,
//! discoverable by kubectl and listed by `kubectl api-resources` at once.

use serde_json::{Value, json};

/// A resource type: where it lives in the API and what kubectl may do with it.
#[derive(Debug)]
pub(crate) struct ResourceType {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
    /// Whether `/status` is a subresource: main-resource writes then keep the stored status.
    pub(crate) has_status: bool,
    /// Field-selector labels beyond `metadata.name` and `metadata.namespace`.
    pub(crate) fields: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `apps/v1`, as written in `apiVersion`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `pods` or `leases.coordination.k8s.io`, as named in API error messages.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }
}

const VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

const fn resource(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        has_status: false,
        fields: &[],
    }
}

/// Index of each resource in [`RESOURCES`], for code that names a specific type.
pub(crate) mod idx {
    pub(crate) const NAMESPACES: usize = 0;
    pub(crate) const NODES: usize = 1;
    pub(crate) const PODS: usize = 2;
    pub(crate) const CONFIGMAPS: usize = 3;
    pub(crate) const EVENTS: usize = 4;
    pub(crate) const DEPLOYMENTS: usize = 5;
    pub(crate) const REPLICASETS: usize = 6;
    pub(crate) const STATEFULSETS: usize = 7;
    pub(crate) const DAEMONSETS: usize = 8;
    pub(crate) const PDBS: usize = 9;
    pub(crate) const LEASES: usize = 10;
    pub(crate) const NEW_EVENTS: usize = 11;
}

/// Every served resource type.
pub(crate) static RESOURCES: [ResourceType; 18] = [
    ResourceType { has_status: true, ..resource("", "namespaces", "namespace", "Namespace", false, &["ns"]) },
    ResourceType {
        has_status: true,
        fields: &["spec.unschedulable"],
        ..resource("", "nodes", "node", "Node", false, &["no"])
    },
    ResourceType {
        has_status: true,
        fields: &["spec.nodeName", "status.phase", "spec.schedulerName", "spec.restartPolicy"],
        ..resource("", "pods", "pod", "Pod", true, &["po"])
    },
    resource("", "configmaps", "configmap", "ConfigMap", true, &["cm"]),
    ResourceType {
        fields: &[
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "reason",
            "type",
        ],
        ..resource("", "events", "event", "Event", true, &["ev"])
    },
    ResourceType { has_status: true, ..resource("apps", "deployments", "deployment", "Deployment", true, &["deploy"]) },
    ResourceType { has_status: true, ..resource("apps", "replicasets", "replicaset", "ReplicaSet", true, &["rs"]) },
    ResourceType { has_status: true, ..resource("apps", "statefulsets", "statefulset", "StatefulSet", true, &["sts"]) },
    ResourceType { has_status: true, ..resource("apps", "daemonsets", "daemonset", "DaemonSet", true, &["ds"]) },
    ResourceType {
        has_status: true,
        ..resource("policy", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", true, &["pdb"])
    },
    resource("coordination.k8s.io", "leases", "lease", "Lease", true, &[]),
    resource("events.k8s.io", "events", "event", "Event", true, &["ev"]),
    // Stored and served back, with no behaviour: what `noderoll manifests` prints for an
    // in-cluster rollout, so that kubectl can apply it here.
    resource("", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"]),
    resource("rbac.authorization.k8s.io", "clusterroles", "clusterrole", "ClusterRole", false, &[]),
    resource(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
    ),
    resource("rbac.authorization.k8s.io", "roles", "role", "Role", true, &[]),
    resource("rbac.authorization.k8s.io", "rolebindings", "rolebinding", "RoleBinding", true, &[]),
    ResourceType { has_status: true, ..resource("batch", "cronjobs", "cronjob", "CronJob", true, &["cj"]) },
];

/// The resource served at `group/version/plural`.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES.iter().position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a given `apiVersion` and `kind`, as found in a snapshot's items.
pub(crate) fn find_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES.iter().position(|r| r.kind == kind && r.api_version() == api_version)
}

/// The API groups (other than the core group) in discovery order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// `GET /api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`: the legacy (unaggregated) group list, which kubectl falls back to.
pub(crate) fn group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_document).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/GROUP`.
pub(crate) fn group(name: &str) -> Option<Value> {
    groups().into_iter().find(|g| *g == name).map(|g| {
        let mut doc = group_document(g);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        doc
    })
}

fn group_document(group: &str) -> Value {
    let version = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [version.clone()], "preferredVersion": version})
}

/// `GET /api/v1` or `GET /apis/GROUP/VERSION`: the resources with their verbs and
/// subresources. `pods/eviction` in group policy/v1 is what makes kubectl drain evict.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let members: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if members.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in members {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": VERBS, "shortNames": r.short_names,
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if r.plural == "pods" && r.group.is_empty() {
            resources.push(json!({
                "name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
                "version": "v1", "kind": "Eviction", "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_constants_name_their_resources() {
        let expect = [
            (idx::NAMESPACES, "namespaces"),
            (idx::NODES, "nodes"),
            (idx::PODS, "pods"),
            (idx::CONFIGMAPS, "configmaps"),
            (idx::EVENTS, "events"),
            (idx::DEPLOYMENTS, "deployments"),
            (idx::REPLICASETS, "replicasets"),
            (idx::STATEFULSETS, "statefulsets"),
            (idx::DAEMONSETS, "daemonsets"),
            (idx::PDBS, "poddisruptionbudgets"),
            (idx::LEASES, "leases"),
        ];
        for (i, plural) in expect {
            assert_eq!(RESOURCES[i].plural, plural);
        }
        assert_eq!(RESOURCES[idx::NEW_EVENTS].group, "events.k8s.io");
    }

    #[test]
    fn eviction_is_discoverable_as_policy_v1() {
        let list = resource_list("", "v1").expect("core group");
        let eviction = list["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "pods/eviction"))
            .expect("pods/eviction listed");
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
    }
}
