//! A generated cluster shaped like a Juno studio on k3s: control-plane nodes with embedded
//! etcd that run the Juno services (Deployments with PodDisruptionBudgets), workstation
//! nodes that run users' sessions, and k3s's own DaemonSet and Deployments.
//!
//! Node names follow the example plans (`cp1`, `ws01`), so a plan's batches name nodes of a
//! generated cluster of the right size.

use serde_json::{Value, json};

use super::cluster::Cluster;
use super::resources::idx;
use super::status::ApiError;
use crate::labels::{
    CILIUM_BGP, CONTROL_PLANE_ROLE, ETCD_ROLE, JUNO_SERVICE, JUNO_WORKSTATION, MASTER_ROLE, SERVICELB_NAMESPACE,
    SERVICELB_SERVICE,
};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Control-plane (service) nodes, named `cp1`, `cp2`...
    pub control_planes: usize,
    /// Workstation nodes, named `ws01`, `ws02`... (wider numbers past 99).
    pub workstations: usize,
    /// Session pods per workstation, spread by the scheduler.
    pub sessions_per_node: usize,
    /// Juno service Deployments on the control-plane nodes, each with a PDB allowing one
    /// pod down.
    pub services: usize,
    /// Replicas of each service.
    pub service_replicas: usize,
    /// The kubelet version nodes report before their upgrade.
    pub kubelet_version: String,
    /// The OS image nodes report before their upgrade.
    pub os_image: String,
    /// Nodes by name, as a plan names them; when not empty, it replaces the counts above.
    pub named: Vec<NodeSpec>,
}

/// A node to generate under a given name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name.
    pub name: String,
    /// A control-plane (service) node rather than a workstation.
    pub service: bool,
    /// Labels on top of the role's own.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            control_planes: 3,
            workstations: 6,
            sessions_per_node: 2,
            services: 3,
            service_replicas: 2,
            kubelet_version: "v1.31.3+k3s1".to_owned(),
            os_image: "Debian GNU/Linux 12 (bookworm)".to_owned(),
            named: Vec::new(),
        }
    }
}

/// Workstation names: `ws01`...`ws99`, then as wide as the count needs.
pub(crate) fn workstation_name(index: usize, count: usize) -> String {
    let width = count.to_string().len().max(2);
    format!("ws{index:0width$}")
}

fn node(name: &str, address: &str, labels: Value, options: &GenerateOptions) -> Value {
    let mut all = json!({
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "k3s", CILIUM_BGP: "true",
    });
    for (k, v) in labels.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    json!({
        "metadata": {"name": name, "labels": all, "annotations": {"k3s.io/internal-ip": address}},
        "spec": {"podCIDR": "10.42.0.0/24", "providerID": format!("k3s://{name}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "16", "memory": "65536Mi", "pods": "110", "ephemeral-storage": "500Gi"},
            "allocatable": {"cpu": "16", "memory": "65536Mi", "pods": "110", "ephemeral-storage": "500Gi"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
            ],
            "nodeInfo": {
                "kubeletVersion": options.kubelet_version, "kubeProxyVersion": options.kubelet_version,
                "osImage": options.os_image, "kernelVersion": "6.1.0-28-amd64",
                "containerRuntimeVersion": "containerd://1.7.23-k3s2", "operatingSystem": "linux",
                "architecture": "amd64", "machineID": "", "systemUUID": "",
            },
        },
    })
}

fn container(name: &str, image: &str) -> Value {
    json!([{"name": name, "image": image, "resources": {}}])
}

fn workload(kind_spec: Value, name: &str, namespace: &str, labels: Value, pod_spec: Value) -> Value {
    let mut spec = kind_spec;
    spec["selector"] = json!({"matchLabels": labels.clone()});
    spec["template"] = json!({"metadata": {"labels": labels.clone()}, "spec": pod_spec});
    json!({"metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec})
}

/// `cp1`.. and `ws01`.. from the counts.
fn numbered_nodes(options: &GenerateOptions) -> Vec<NodeSpec> {
    let service = (1..=options.control_planes).map(|i| NodeSpec {
        name: format!("cp{i}"),
        service: true,
        labels: std::collections::BTreeMap::new(),
    });
    let workstations = (1..=options.workstations).map(|i| NodeSpec {
        name: workstation_name(i, options.workstations),
        service: false,
        labels: std::collections::BTreeMap::new(),
    });
    service.chain(workstations).collect()
}

/// Fills `cluster` with the generated objects; controllers create the pods on the first tick.
pub(crate) fn populate(cluster: &mut Cluster, options: &GenerateOptions) -> Result<(), ApiError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease", "juno", "juno-sessions"] {
        cluster.create(idx::NAMESPACES, json!({"metadata": {"name": ns}}))?;
    }
    let nodes = if options.named.is_empty() { numbered_nodes(options) } else { options.named.clone() };
    let (mut services, mut workstations) = (0, 0);
    for spec in &nodes {
        let (mut labels, address) = if spec.service {
            services += 1;
            let labels = json!({
                CONTROL_PLANE_ROLE: "true", ETCD_ROLE: "true", MASTER_ROLE: "true", JUNO_SERVICE: "true",
            });
            (labels, format!("10.0.0.{}", 10 + services))
        } else {
            workstations += 1;
            (json!({JUNO_WORKSTATION: "true"}), format!("10.0.{}.{}", 1 + workstations / 250, workstations % 250 + 1))
        };
        for (key, value) in &spec.labels {
            labels[key] = json!(value);
        }
        cluster.create(idx::NODES, node(&spec.name, &address, labels, options))?;
    }
    let control_plane_toleration = json!([{"key": CONTROL_PLANE_ROLE, "operator": "Exists", "effect": "NoSchedule"}]);
    cluster.create(
        idx::DAEMONSETS,
        // Labelled as k3s's ServiceLB labels the DaemonSet it runs for Traefik's Service.
        workload(json!({}), "svclb-traefik", "kube-system",
            json!({"app": "svclb-traefik", SERVICELB_SERVICE: "traefik", SERVICELB_NAMESPACE: "kube-system"}),
            json!({"containers": container("lb-tcp-443", "rancher/klipper-lb:v0.4.9"), "tolerations": [{"operator": "Exists"}]})),
    )?;
    cluster.create(
        idx::DEPLOYMENTS,
        workload(
            json!({"replicas": 1}),
            "coredns",
            "kube-system",
            json!({"k8s-app": "kube-dns"}),
            json!({"containers": container("coredns", "rancher/mirrored-coredns-coredns:1.11.3"),
                   "tolerations": control_plane_toleration.clone()}),
        ),
    )?;
    cluster.create(
        idx::DEPLOYMENTS,
        workload(
            json!({"replicas": 1}),
            "traefik",
            "kube-system",
            json!({"app.kubernetes.io/name": "traefik"}),
            json!({"containers": container("traefik", "rancher/mirrored-library-traefik:2.11.10"),
                   "tolerations": control_plane_toleration}),
        ),
    )?;
    for s in 1..=options.services {
        let name = format!("juno-service-{s}");
        let labels = json!({"app": name});
        cluster.create(
            idx::DEPLOYMENTS,
            workload(
                json!({"replicas": options.service_replicas}),
                &name,
                "juno",
                labels.clone(),
                json!({"containers": container("app", "example.invalid/juno/service:1"),
                       "nodeSelector": {JUNO_SERVICE: "true"}, "terminationGracePeriodSeconds": 30}),
            ),
        )?;
        cluster.create(
            idx::PDBS,
            json!({"metadata": {"name": name, "namespace": "juno"},
                   "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}}),
        )?;
    }
    for n in 0..options.sessions_per_node * workstations {
        cluster.create(
            idx::PODS,
            json!({
                "metadata": {
                    "generateName": format!("session-user{:03}-", n + 1), "namespace": "juno-sessions",
                    "labels": {"app": "juno-session", "user": format!("user{:03}", n + 1)},
                    "annotations": {cluster.behaviour.session_annotation.clone(): "session"},
                },
                "spec": {
                    "containers": container("desktop", "example.invalid/juno/workstation:1"),
                    "nodeSelector": {JUNO_WORKSTATION: "true"},
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "terminationGracePeriodSeconds": 30,
                },
            }),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workstation_names_match_the_example_plans() {
        assert_eq!(workstation_name(1, 6), "ws01");
        assert_eq!(workstation_name(42, 99), "ws42");
        assert_eq!(workstation_name(7, 320), "ws007");
    }
}
