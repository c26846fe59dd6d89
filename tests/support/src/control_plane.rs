//! The real control plane for tests: `scripts/control-plane up` in a temp dir (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and kwok on free loopback
//! ports), and a Juno-shaped studio created in it with kubectl. Dropping it runs
//! `scripts/control-plane down`, so a failing test leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, eventually_within, repo};

/// The kubelet version the studio's nodes start with, and the one its plans upgrade to.
pub const OLD_KUBELET: &str = "v1.31.3+k3s1";
pub const NEW_KUBELET: &str = "v1.31.4+k3s1";

/// The upgrade hook of plans run against the real control plane: a reboot through the
/// Kubernetes API (testbed/upgrade-node), as YAML argv, with the kubeconfig of `apply`.
pub fn upgrade_hook() -> String {
    format!("[{}, \"{{node}}\", {NEW_KUBELET}]", repo().join("testbed/upgrade-node").display())
}

/// `upgrade_hook` with a kubeconfig of its own (the admin's, where `apply` runs with
/// less, or another API server's).
pub fn upgrade_hook_with(kubeconfig: &Path) -> String {
    format!(
        "[{}, \"{{node}}\", {NEW_KUBELET}, \"{}\"]",
        repo().join("testbed/upgrade-node").display(),
        kubeconfig.display()
    )
}

/// The batches most plans here roll: cp1..3 one at a time, then ws01 and ws02 together.
pub const STUDIO_BATCHES: &str = "    - {name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}\n    - {name: workstations, role: workstation, nodes: [ws01, ws02], maxUnavailable: 2}\n";

/// What a plan for the real control plane holds besides what all of them share (an
/// external LB, sessions drained after 2 s, the reboot hook, the new kubelet verified).
pub struct Shape<'a> {
    /// Lines under `spec` before `defaults`.
    pub spec: &'a str,
    /// `defaults.drain`, as a YAML flow mapping (by default with `force`: the studio's
    /// `debug-shell` declares no controller, and kubectl's filters refuse it without).
    pub drain: &'a str,
    /// The upgrade hook, as YAML argv.
    pub hook: String,
    /// The batches' lines.
    pub batches: String,
}

impl Default for Shape<'_> {
    fn default() -> Self {
        Shape {
            spec: "",
            drain: "{timeout: 1m, force: true}",
            hook: upgrade_hook(),
            batches: STUDIO_BATCHES.to_owned(),
        }
    }
}

/// `DIR/NAME.yaml`: a plan of that shape.
pub fn plan(dir: &Path, name: &str, shape: &Shape) -> PathBuf {
    let Shape { spec, drain, hook, batches } = shape;
    let text = format!(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec:\n  loadBalancer: {{mode: external}}\n{spec}  defaults:\n    sessions: {{timeout: 2s, onTimeout: drain}}\n    drain: {drain}\n    upgrade: {{command: {hook}, timeout: 1m}}\n    verify: {{kubeletVersion: {NEW_KUBELET}, readyTimeout: 2m}}\n  batches:\n{batches}"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write plan");
    path
}

/// The `halted` event among `apply -o json`'s output.
pub fn halted(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "halted")
        .unwrap_or_else(|| panic!("a halted event: {text}"))
}

pub struct ControlPlane {
    dir: tempfile::TempDir,
    /// The last audit event's time when the studio was ready: what tests count comes after.
    studio_ready: std::cell::RefCell<String>,
}

impl ControlPlane {
    /// One API server.
    pub fn up() -> ControlPlane {
        ControlPlane::start(&[])
    }

    /// Two API servers on one etcd; `kubeconfig()` names the first, `second_server()` the other.
    pub fn up_with_two_apiservers() -> ControlPlane {
        ControlPlane::start(&["--apiservers", "2"])
    }

    fn start(extra: &[&str]) -> ControlPlane {
        let dir = tempfile::tempdir().expect("temp dir");
        let plane = ControlPlane { dir, studio_ready: std::cell::RefCell::new(String::new()) };
        let out =
            plane.script().arg("up").arg(plane.dir.path()).args(extra).output().expect("scripts/control-plane runs");
        assert!(
            out.status.success(),
            "scripts/control-plane up failed (run `scripts/control-plane build` first?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        plane
    }

    fn script(&self) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/control-plane")).stdin(Stdio::null());
        cmd
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The second API server's URL (with `up_with_two_apiservers`).
    pub fn second_server(&self) -> String {
        let kubeconfig = std::fs::read_to_string(self.dir.path().join("kubeconfig-2")).expect("kubeconfig-2");
        kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("server line").to_owned()
    }

    /// `scripts/control-plane restart DIR COMPONENT SECONDS`, running beside the test.
    pub fn restart(&self, component: &str, seconds: f64) -> Child {
        restart(self.dir.path(), component, seconds)
    }

    /// A component's process id.
    pub fn pid(&self, component: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{component}.pid"))).expect("pid file").trim().to_owned()
    }

    /// `kubectl apply` of a YAML manifest, validated against the server's OpenAPI.
    pub fn apply_manifest(&self, yaml: &str) {
        let path = self.dir.path().join("manifest.yaml");
        std::fs::write(&path, yaml).expect("write manifest");
        self.kubectl_ok(&["apply", "--server-side", "-f", path.to_str().expect("utf-8")]);
    }

    /// The studio: its nodes, then the workloads.
    pub fn studio(&self, studio: &Studio) {
        self.studio_nodes(studio);
        self.apply_manifest(&studio.workloads());
        let expected = studio.expected_pods();
        eventually_within(Duration::from_secs(120), &format!("{expected} pods run"), || {
            self.running_pods() >= expected
        });
        let last = self.audit_log().iter().filter_map(|e| e["stageTimestamp"].as_str().map(str::to_owned)).max();
        *self.studio_ready.borrow_mut() = last.unwrap_or_default();
    }

    /// The studio's nodes alone (kwok's), with their addresses and old kubelet, Ready.
    pub fn studio_nodes(&self, studio: &Studio) {
        self.apply_manifest(&studio.nodes());
        for node in studio.node_names() {
            let address = studio.address(&node);
            let patch = format!(
                r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{address}"}},{{"type":"Hostname","address":"{node}"}}],"nodeInfo":{{"bootID":"boot-1-{node}","kubeletVersion":"{OLD_KUBELET}"}}}}}}"#
            );
            self.kubectl_ok(&["patch", "node", &node, "--subresource", "status", "--type", "strategic", "-p", &patch]);
        }
        let count = studio.node_names().len();
        // Ready, and untainted by the node lifecycle controller (it removes the not-ready
        // taint a moment after Ready): only then does the scheduler place pods everywhere.
        eventually_within(Duration::from_secs(60), "every node is Ready and schedulable", || {
            self.ready_nodes() == count
        });
        // kwok renews each node's Lease, as a kubelet does: without one, 50 s on the node
        // lifecycle controller marks every pod NotReady for good, and a budget then holds
        // every drain of a test that runs longer than that.
        eventually_within(Duration::from_secs(30), "kwok holds every node's Lease", || {
            let leases = self.kubectl_ok(&["get", "leases", "--namespace", "kube-node-lease", "-o", "name"]);
            let held: Vec<&str> = leases.lines().filter_map(|l| l.strip_prefix("lease.coordination.k8s.io/")).collect();
            studio.node_names().iter().all(|n| held.contains(&n.as_str()))
        });
    }

    /// Nodes whose Ready condition is True and that carry no `node.kubernetes.io/` taint.
    pub fn ready_nodes(&self) -> usize {
        let nodes = self.nodes();
        let untainted = |n: &&Value| {
            !n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"].as_str().is_some_and(|k| k.starts_with("node.kubernetes.io/")))
        };
        nodes["items"].as_array().map_or(0, |items| items.iter().filter(|n| is_ready(n)).filter(untainted).count())
    }

    /// Pods in phase Running, all namespaces.
    pub fn running_pods(&self) -> usize {
        let out = self.kubectl_ok(&["get", "pods", "-A", "--field-selector", "status.phase=Running", "-o", "name"]);
        out.lines().count()
    }

    /// Every pod, one line each: its node, phase, Ready condition (with its reason) and
    /// deletion time. A failed drain's assertion prints it, to say which pod held a budget
    /// and why.
    pub fn pods_report(&self) -> String {
        let ready = r#".status.conditions[?(@.type=="Ready")]"#;
        let columns = format!(
            "custom-columns=NAMESPACE:.metadata.namespace,POD:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase,READY:{ready}.status,REASON:{ready}.reason,DELETING:.metadata.deletionTimestamp"
        );
        self.kubectl_ok(&["get", "pods", "-A", "-o", &columns])
    }

    /// Every node schedulable, on the new kubelet, and booted exactly once more than the
    /// studio started with (the boot IDs the upgrade hook wrote).
    pub fn assert_upgraded_once(&self, studio: &Studio) {
        let nodes = self.nodes();
        let items = nodes["items"].as_array().expect("items");
        assert_eq!(items.len(), studio.node_names().len());
        for node in items {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            assert_ne!(node["spec"]["unschedulable"], Value::Bool(true), "{name} left cordoned");
            assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], NEW_KUBELET, "{name} not upgraded");
            assert_ne!(node["status"]["nodeInfo"]["bootID"], format!("boot-1-{name}"), "{name} not rebooted");
            assert!(is_ready(node), "{name} not Ready");
        }
        let reboots = self.reboots();
        for name in studio.node_names() {
            assert_eq!(reboots.iter().filter(|n| **n == name).count(), 1, "{name} rebooted once: {reboots:?}");
        }
    }

    /// Each reboot the upgrade hook made, by node, from the API server's audit log since
    /// the studio was ready (the hook's status patch with kubectl; kwok's are updates).
    pub fn reboots(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter(|e| e["verb"] == "patch" && e["objectRef"]["subresource"] == "status")
            .filter(|e| e["objectRef"]["resource"] == "nodes" && e["responseStatus"]["code"] == 200)
            .filter(|e| e["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl")))
            .filter_map(|e| e["objectRef"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// The audit logs' events (every request's metadata, of every API server) since the
    /// studio was ready. Timestamps are RFC 3339 in UTC with microseconds: they compare as
    /// text.
    pub fn audit(&self) -> Vec<Value> {
        let since = self.studio_ready.borrow().clone();
        self.audit_log().into_iter().filter(|e| e["stageTimestamp"].as_str().is_some_and(|t| *t > *since)).collect()
    }

    fn audit_log(&self) -> Vec<Value> {
        ["kube-apiserver-audit.log", "kube-apiserver-2-audit.log"]
            .iter()
            .filter_map(|log| std::fs::read_to_string(self.dir.path().join(log)).ok())
            .flat_map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect::<Vec<Value>>())
            .collect()
    }
}

/// [`ControlPlane::restart`] by the control plane's folder alone, for threads.
pub fn restart(dir: &Path, component: &str, seconds: f64) -> Child {
    Command::new("bash")
        .arg(repo().join("scripts/control-plane"))
        .arg("restart")
        .arg(dir)
        .args([component, &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/control-plane restart starts")
}

pub fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl Cluster for ControlPlane {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn credentials(&self) -> Vec<std::ffi::OsString> {
        let pki = self.dir.path().join("pki");
        ["--cacert", "ca.crt", "--cert", "admin.crt", "--key", "admin.key"]
            .iter()
            .enumerate()
            .map(|(i, a)| if i % 2 == 0 { (*a).into() } else { pki.join(a).into_os_string() })
            .collect()
    }

    /// `GET path` as the admin, with curl: quicker than a kubectl process, for watchers
    /// that ask often.
    fn get(&self, path: &str) -> Option<String> {
        let (code, body) = self.request("GET", path, "application/json", "");
        (code == 200).then_some(body)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.script().arg("down").arg(self.dir.path()).status();
    }
}

/// A Juno-shaped studio: cp1..3 (control plane, etcd, Juno service), `workstations`
/// workstations with the Juno label and taint, a web Deployment on the service nodes with a
/// PodDisruptionBudget, a DaemonSet everywhere, one session StatefulSet per workstation
/// (pods annotated as Juno sessions, preferring their own workstation: a recreated
/// session goes wherever the scheduler finds room), and a bare pod.
pub struct Studio {
    pub workstations: usize,
}

pub const SESSION_ANNOTATION: &str = "juno-innovations.com/workload";

impl Studio {
    pub fn workstation_names(&self) -> Vec<String> {
        (1..=self.workstations).map(|i| format!("ws{i:02}")).collect()
    }

    pub fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (1..=3).map(|i| format!("cp{i}")).collect();
        names.extend(self.workstation_names());
        names
    }

    /// cpN at 10.0.0.1N, wsNN at 10.0.1.NN: addresses in the objects, never dialled.
    pub fn address(&self, node: &str) -> String {
        match node.strip_prefix("cp") {
            Some(n) => format!("10.0.0.1{n}"),
            None => format!("10.0.1.{}", node.trim_start_matches("ws").trim_start_matches('0')),
        }
    }

    fn nodes(&self) -> String {
        let mut yaml = String::new();
        for name in self.node_names() {
            let labels = if name.starts_with("cp") {
                "node-role.kubernetes.io/control-plane: \"true\"\n    node-role.kubernetes.io/etcd: \"true\"\n    juno-innovations.com/service: \"true\""
            } else {
                "juno-innovations.com/workstation: \"true\""
            };
            let taints = if name.starts_with("ws") {
                "  taints:\n  - {key: juno-innovations.com/workstation, value: \"true\", effect: NoSchedule}\n"
            } else {
                ""
            };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: {name}\n    {labels}\nspec:\n{taints}"
            ));
        }
        yaml
    }

    /// Pods the workloads run: 3 web, one DaemonSet pod per node, one session per
    /// workstation, the bare pod.
    pub fn expected_pods(&self) -> usize {
        3 + self.node_names().len() + self.workstations + 1
    }

    fn workloads(&self) -> String {
        let mut yaml = String::from(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: juno}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: juno-web, namespace: juno}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: juno-web}}\n  template:\n    metadata: {labels: {app: juno-web}}\n    spec:\n      nodeSelector: {juno-innovations.com/service: \"true\"}\n      terminationGracePeriodSeconds: 1\n      containers: [{name: web, image: juno/web:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: juno-web, namespace: juno}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: juno-web}}\n\
---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: node-exporter, namespace: kube-system}\nspec:\n  selector: {matchLabels: {app: node-exporter}}\n  template:\n    metadata: {labels: {app: node-exporter}}\n    spec:\n      tolerations: [{operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: exporter, image: prom/node-exporter:1}]\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {name: debug-shell, namespace: default}\nspec:\n  nodeSelector: {juno-innovations.com/service: \"true\"}\n  terminationGracePeriodSeconds: 1\n  containers: [{name: shell, image: busybox:1}]\n",
        );
        for ws in self.workstation_names() {
            yaml.push_str(&format!(
                "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: session-{ws}, namespace: juno}}\nspec:\n  replicas: 1\n  serviceName: sessions\n  selector: {{matchLabels: {{session: {ws}}}}}\n  template:\n    metadata:\n      labels: {{session: {ws}}}\n      annotations: {{{SESSION_ANNOTATION}: workstation}}\n    spec:\n      nodeSelector: {{juno-innovations.com/workstation: \"true\"}}\n      affinity: {{nodeAffinity: {{preferredDuringSchedulingIgnoredDuringExecution: [{{weight: 100, preference: {{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{ws}]}}]}}}}]}}}}\n      tolerations: [{{key: juno-innovations.com/workstation, operator: Exists, effect: NoSchedule}}]\n      terminationGracePeriodSeconds: 2\n      containers: [{{name: desktop, image: juno/workstation:1}}]\n"
            ));
        }
        yaml
    }
}
