//! RBAC for real: `noderoll manifests` applied to the real control plane, in a namespace
//! that enforces the `restricted` Pod Security level, and whole rollouts run with nothing
//! but the ServiceAccount's token (`kubectl create token`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::control_plane::{self, ControlPlane, Shape, Studio, halted, upgrade_hook_with};
use crate::harness::{Cluster, apply_via, noderoll};

const NAMESPACE: &str = "noderoll";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:noderoll:noderoll";

/// The studio's plan, its hook rebooting through the admin's kubeconfig (the token may
/// not patch node status, as a real hook does not need to).
fn plan(dir: &Path, name: &str, admin: &Path) -> PathBuf {
    control_plane::plan(dir, name, &Shape { hook: upgrade_hook_with(admin), ..Shape::default() })
}

/// `noderoll manifests PLAN --namespace noderoll`, applied with kubectl; the warnings
/// kubectl printed (Pod Security's among them).
fn install(plane: &ControlPlane, plan: &Path) -> String {
    let out = noderoll()
        .arg("manifests")
        .arg(plan)
        .args(["--namespace", NAMESPACE, "--schedule", "0 2 * * 0"])
        .assert()
        .success();
    let path = plane.dir().join(format!("{}.manifests.yaml", plan.file_stem().expect("name").to_string_lossy()));
    std::fs::write(&path, &out.get_output().stdout).expect("write");
    let applied = plane.kubectl(&["apply", "-f", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&applied.stderr).into_owned();
    assert!(applied.status.success(), "the real API server accepts the manifests: {stderr}");
    stderr
}

/// A kubeconfig that holds only the ServiceAccount's token and the cluster's CA.
fn token_kubeconfig(plane: &ControlPlane) -> PathBuf {
    let token = plane.kubectl_ok(&["create", "token", "noderoll", "-n", NAMESPACE, "--duration", "1h"]);
    let admin = std::fs::read_to_string(plane.kubeconfig()).expect("kubeconfig");
    let ca = admin.lines().find_map(|l| l.trim().strip_prefix("certificate-authority-data: ")).expect("CA").to_owned();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority-data: {ca}}}\nusers:\n- name: noderoll\n  user: {{token: {}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: noderoll}}\ncurrent-context: c\n",
        plane.server(),
        token.trim()
    );
    let path = plane.dir().join("token.kubeconfig");
    std::fs::write(&path, text).expect("write");
    path
}

/// The arguments the CronJob gives apply: its journal ConfigMap and Lease namespace.
fn in_cluster_args(name: &str) -> Vec<String> {
    vec![
        "--journal-configmap".into(),
        format!("{NAMESPACE}/noderoll-{name}-journal"),
        "--lock-namespace".into(),
        NAMESPACE.into(),
    ]
}

/// The requests of the ServiceAccount that the API server refused with 403.
fn forbidden(plane: &ControlPlane) -> Vec<String> {
    plane
        .audit()
        .iter()
        .filter(|e| e["user"]["username"] == SERVICE_ACCOUNT && e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect()
}

#[test]
fn a_whole_rollout_runs_with_only_the_service_accounts_token_and_a_missing_rule_is_named() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    plane.apply_manifest(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n"
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let rbac = plan(dir.path(), "rbac", &plane.kubeconfig());
    let warnings = install(&plane, &rbac);
    assert!(!warnings.contains("PodSecurity"), "the CronJob meets the restricted level: {warnings}");
    // Admission enforces the level on pods: the CronJob's pod, as its Job would create it.
    let cron: Value =
        serde_json::from_str(&plane.kubectl_ok(&["get", "cronjob", "-n", NAMESPACE, "noderoll-rbac", "-o", "json"]))
            .expect("JSON");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cron-pod", "namespace": NAMESPACE},
        "spec": cron["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    });
    let path = plane.dir().join("cron-pod.json");
    std::fs::write(&path, pod.to_string()).expect("write");
    let admitted = plane.kubectl(&["create", "--dry-run=server", "-f", path.to_str().expect("utf-8")]);
    assert!(admitted.status.success(), "restricted admits the pod: {}", String::from_utf8_lossy(&admitted.stderr));
    // Without a window or --schedule, the rollout runs once in a Job: the real API server
    // admits it (Job validation, Pod Security on its template) in a server-side dry run.
    let once = noderoll().arg("manifests").arg(&rbac).args(["--namespace", NAMESPACE]).assert().success();
    let path = plane.dir().join("once.manifests.yaml");
    std::fs::write(&path, &once.get_output().stdout).expect("write");
    let applied = plane.kubectl(&["apply", "--dry-run=server", "-f", path.to_str().expect("utf-8")]);
    let (stdout, stderr) = (String::from_utf8_lossy(&applied.stdout), String::from_utf8_lossy(&applied.stderr));
    assert!(applied.status.success(), "the real API server accepts the Job: {stderr}");
    assert!(stdout.contains("job.batch/noderoll-rbac created (server dry run)"), "{stdout}");
    assert!(!stderr.contains("PodSecurity"), "the Job's pod meets the restricted level: {stderr}");

    let token = token_kubeconfig(&plane);
    let out = apply_via(&token, &rbac, &in_cluster_args("rbac").iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .expect("apply runs");
    assert!(out.status.success(), "the rollout with the token alone: {}", String::from_utf8_lossy(&out.stderr));
    plane.assert_upgraded_once(&studio);
    assert_eq!(forbidden(&plane), Vec::<String>::new(), "no request of the rollout was refused");
    let requests = plane.audit().iter().filter(|e| e["user"]["username"] == SERVICE_ACCOUNT).count();
    assert!(requests > 50, "the rollout's requests came with the token: {requests}");

    // A second plan whose ClusterRole lacks the eviction rule (the first plan's bindings
    // gone, so the ServiceAccount holds only the second's): the run stops at its first
    // drain and names what it lacked.
    plane.kubectl_ok(&["delete", "clusterrolebinding", "noderoll-rbac"]);
    plane.kubectl_ok(&["delete", "rolebinding", "-n", NAMESPACE, "noderoll-rbac"]);
    let lacking = plan(dir.path(), "lacking", &plane.kubeconfig());
    install(&plane, &lacking);
    plane.kubectl_ok(&[
        "patch",
        "clusterrole",
        "noderoll-lacking",
        "--type",
        "json",
        "-p",
        r#"[{"op": "remove", "path": "/rules/2"}]"#,
    ]);
    let rules = plane.kubectl_ok(&["get", "clusterrole", "noderoll-lacking", "-o", "jsonpath={.rules}"]);
    assert!(!rules.contains("pods/eviction"), "the eviction rule is gone: {rules}");
    let out = apply_via(&token, &lacking, &in_cluster_args("lacking").iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .expect("apply runs");
    assert!(!out.status.success(), "the run stops");
    let halted = halted(&out.stdout);
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(halted["failed"][0]["step"].as_str().is_some_and(|s| s.ends_with("/drain")), "{halted}");
    assert!(error.contains("create") && error.contains("pods/eviction"), "names the verb and the resource: {error}");
    assert!(!forbidden(&plane).is_empty(), "the API server refused the eviction");
}
