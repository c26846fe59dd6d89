//! noderoll's drain on the real control plane: a budget that the real disruption
//! controller keeps, an emptyDir pod, DaemonSet pods left where they are, a pod already
//! terminating, and the refusal when emptyDir data would be lost.

use std::process::Stdio;

use serde_json::Value;

use crate::control_plane::{ControlPlane, Shape, Studio, halted, plan};
use crate::harness::{Cluster, apply_via};

/// A plan that upgrades `node` alone, with `drain` settings.
fn one_node<'a>(node: &str, drain: &'a str) -> Shape<'a> {
    let batches = format!("    - {{name: one, role: workstation, nodes: [{node}]}}\n");
    Shape { drain, batches, ..Shape::default() }
}

/// Workloads (on workstations only) that land on `node`: every other workstation is
/// cordoned while they are created. They stay cordoned: the caller uncordons them when
/// the replacements may go there.
fn pin_to(plane: &ControlPlane, studio: &Studio, node: &str, yaml: &str, pods: usize) -> Vec<String> {
    let others: Vec<String> = studio.workstation_names().into_iter().filter(|n| n != node).collect();
    for other in &others {
        plane.kubectl_ok(&["cordon", other]);
    }
    plane.apply_manifest(yaml);
    plane.eventually(&format!("{pods} test pods run on {node}"), || {
        let out = plane.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "drain",
            "--field-selector",
            &format!("spec.nodeName={node},status.phase=Running"),
            "-o",
            "name",
        ]);
        out.lines().count() == pods
    });
    others
}

const WORKLOADS: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: drain}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: budgeted, namespace: drain}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: budgeted}}\n  template:\n    metadata: {labels: {app: budgeted}}\n    spec:\n      nodeSelector: {juno-innovations.com/workstation: \"true\"}\n      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n      terminationGracePeriodSeconds: 2\n      containers: [{name: app, image: app:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: budgeted, namespace: drain}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: budgeted}}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: scratch, namespace: drain}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: scratch}}\n  template:\n    metadata: {labels: {app: scratch}}\n    spec:\n      nodeSelector: {juno-innovations.com/workstation: \"true\"}\n      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      volumes: [{name: scratch, emptyDir: {}}]\n      containers: [{name: app, image: app:1, volumeMounts: [{name: scratch, mountPath: /scratch}]}]\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {name: leaving, namespace: drain}\nspec:\n  nodeSelector: {juno-innovations.com/workstation: \"true\"}\n  tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n  terminationGracePeriodSeconds: 6\n  containers: [{name: app, image: app:1}]\n";

/// Evictions the API server answered, by pod and status code, from its audit log.
fn evictions(plane: &ControlPlane) -> Vec<(String, i64)> {
    plane
        .audit()
        .iter()
        .filter(|e| e["objectRef"]["subresource"] == "eviction" && e["stage"] == "ResponseComplete")
        .map(|e| {
            (
                e["objectRef"]["name"].as_str().unwrap_or_default().to_owned(),
                e["responseStatus"]["code"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_drain_on_the_real_control_plane_waits_for_the_budget_leaves_daemonset_pods_and_waits_out_a_terminating_pod() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let others = pin_to(&plane, &studio, "ws01", WORKLOADS, 4);
    plane.eventually("the disruption controller allows one disruption", || {
        plane.kubectl_ok(&["get", "pdb", "-n", "drain", "budgeted", "-o", "jsonpath={.status.disruptionsAllowed}"])
            == "1"
    });
    // A pod already on its way out when the drain starts: noderoll waits for it (6 s of
    // grace) instead of evicting it again.
    plane.kubectl_ok(&["delete", "pod", "-n", "drain", "leaving", "--wait=false"]);
    let daemon_pod = plane.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app=node-exporter",
        "--field-selector",
        "spec.nodeName=ws01",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(
        dir.path(),
        "drain",
        &one_node("ws01", "{timeout: 1m, ignoreDaemonSets: true, deleteEmptyDirData: true, force: true}"),
    );
    let apply =
        apply_via(&plane.kubeconfig(), &plan, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("apply");
    // ws02 is still cordoned: the first budgeted pod's replacement cannot run, so the
    // budget refuses the second eviction until ws02 takes pods again.
    plane.eventually("the budget refuses an eviction", || {
        evictions(&plane).iter().any(|(pod, code)| pod.starts_with("budgeted-") && *code == 429)
    });
    for other in &others {
        plane.kubectl_ok(&["uncordon", other]);
    }
    let out = apply.wait_with_output().expect("apply ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply failed: {stderr}");

    let answered = evictions(&plane);
    let budgeted: Vec<&(String, i64)> = answered.iter().filter(|(pod, _)| pod.starts_with("budgeted-")).collect();
    assert!(
        budgeted.iter().any(|(_, code)| *code == 429),
        "the budget refused the second eviction while the first pod's replacement could not run: {answered:?}"
    );
    assert_eq!(budgeted.iter().filter(|(_, code)| *code == 201).count(), 2, "both budgeted pods evicted: {answered:?}");
    assert!(answered.iter().any(|(pod, code)| pod.starts_with("scratch-") && *code == 201), "{answered:?}");
    assert!(!answered.iter().any(|(pod, _)| pod == "leaving"), "the terminating pod was not evicted: {answered:?}");
    assert!(!answered.iter().any(|(pod, _)| *pod == daemon_pod), "the DaemonSet pod was not evicted: {answered:?}");
    let deleted: Vec<Value> = plane
        .audit()
        .into_iter()
        .filter(|e| e["verb"] == "delete" && e["objectRef"]["resource"] == "pods")
        .filter(|e| {
            e["user"]["username"] == "noderoll-admin" && !e["userAgent"].as_str().unwrap_or("").starts_with("kubectl")
        })
        .collect();
    assert!(deleted.is_empty(), "noderoll went through the Eviction API only, never DELETE: {deleted:?}");

    let on_node: Value = serde_json::from_str(&plane.kubectl_ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=ws01",
        "-o",
        "json",
    ]))
    .expect("pods JSON");
    let names: Vec<&str> =
        on_node["items"].as_array().into_iter().flatten().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    assert!(names.contains(&daemon_pod.as_str()), "the DaemonSet pod stays on ws01: {names:?}");
    let ready =
        plane.kubectl_ok(&["get", "deployment", "-n", "drain", "budgeted", "-o", "jsonpath={.status.readyReplicas}"]);
    assert_eq!(ready, "2", "the budgeted Deployment serves again, on ws02");
}

#[test]
fn a_drain_on_the_real_control_plane_refuses_a_pod_whose_emptydir_data_would_be_lost() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let others = pin_to(&plane, &studio, "ws02", WORKLOADS, 4);
    for other in &others {
        plane.kubectl_ok(&["uncordon", other]);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let plan =
        plan(dir.path(), "keep", &one_node("ws02", "{timeout: 1m, ignoreDaemonSets: true, deleteEmptyDirData: false}"));
    let out = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert!(!out.status.success(), "the drain must refuse");
    let halted = halted(&out.stdout);
    assert_eq!(halted["failed"][0]["step"], "ws02/drain", "{halted}");
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("drain/scratch-") && error.contains("set drain.deleteEmptyDirData: true"), "{error}");
    assert_eq!(halted["cordoned"], serde_json::json!(["ws02"]), "the halt names the node it leaves cordoned");
    assert!(evictions(&plane).is_empty(), "nothing was evicted: {:?}", evictions(&plane));
    let node = plane.kubectl_ok(&["get", "node", "ws02", "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(node, "true", "the node stays cordoned for the operator, as the halt says");
}

const STRICT: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: drain}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: strict, namespace: drain}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: strict}}\n  template:\n    metadata: {labels: {app: strict}}\n    spec:\n      nodeSelector: {juno-innovations.com/workstation: \"true\"}\n      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: app, image: app:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: strict, namespace: drain}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: strict}}\n";

#[test]
fn a_budget_that_can_never_allow_the_eviction_halts_the_drain_at_once_on_the_real_control_plane() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let others = pin_to(&plane, &studio, "ws01", STRICT, 2);
    for other in &others {
        plane.kubectl_ok(&["uncordon", other]);
    }
    plane.eventually("the disruption controller has seen both pods", || {
        plane.kubectl_ok(&["get", "pdb", "-n", "drain", "strict", "-o", "jsonpath={.status.expectedPods}"]) == "2"
    });
    let dir = tempfile::tempdir().expect("temp dir");
    // The drain may take 15 minutes; the budget can never let a pod go, so it must not.
    let plan = plan(dir.path(), "strict", &one_node("ws01", "{timeout: 15m, ignoreDaemonSets: true}"));
    let started = std::time::Instant::now();
    let out = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert!(!out.status.success(), "the drain must halt");
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "halted after {:?}", started.elapsed());
    let halted = halted(&out.stdout);
    assert_eq!(halted["failed"][0]["step"], "ws01/drain", "{halted}");
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("PDB drain/strict") && error.contains("minAvailable 2 with 2 pod(s)"), "{error}");
    let answered = evictions(&plane);
    assert!(
        answered.iter().any(|(pod, code)| pod.starts_with("strict-") && *code == 429),
        "the budget refused an eviction: {answered:?}"
    );
    assert!(
        !answered.iter().any(|(pod, code)| pod.starts_with("strict-") && (200..300).contains(code)),
        "no pod the budget covers was evicted: {answered:?}"
    );
}

const HELD: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: drain}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: held, namespace: drain}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: held}}\n  template:\n    metadata: {labels: {app: held}}\n    spec:\n      nodeSelector: {juno-innovations.com/workstation: \"true\"}\n      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: app, image: app:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: held, namespace: drain}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: held}}\n";

#[test]
fn on_the_real_control_plane_a_drain_that_times_out_deletes_the_pods_a_budget_holds_with_on_timeout_delete() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    // ws02 stays cordoned: the first pod's replacement cannot run anywhere, so the budget
    // (merely short of a pod, not one that can never allow) holds the second one for good.
    pin_to(&plane, &studio, "ws01", HELD, 2);
    plane.eventually("the disruption controller allows one disruption", || {
        plane.kubectl_ok(&["get", "pdb", "-n", "drain", "held", "-o", "jsonpath={.status.disruptionsAllowed}"]) == "1"
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let drain = "{timeout: 10s, ignoreDaemonSets: true, onTimeout: delete, deleteNamespaces: [drain]}";
    let plan = plan(dir.path(), "escalate", &one_node("ws01", drain));
    let out = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));

    let answered = evictions(&plane);
    assert!(answered.iter().any(|(pod, code)| pod.starts_with("held-") && *code == 429), "{answered:?}");
    assert_eq!(
        answered.iter().filter(|(pod, code)| pod.starts_with("held-") && *code == 201).count(),
        1,
        "{answered:?}"
    );
    let deleted: Vec<String> = plane
        .audit()
        .into_iter()
        .filter(|e| e["verb"] == "delete" && e["objectRef"]["resource"] == "pods" && e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["user"]["username"] == "noderoll-admin" && !e["userAgent"].as_str().unwrap_or("").starts_with("kubectl")
        })
        .filter_map(|e| Some(format!("{} {}", e["objectRef"]["name"].as_str()?, e["responseStatus"]["code"])))
        .collect();
    assert_eq!(deleted.len(), 1, "noderoll deleted the held pod, and only it: {deleted:?}");
    assert!(deleted[0].starts_with("held-") && deleted[0].ends_with(" 200"), "{deleted:?}");
    let journal = std::fs::read_to_string(dir.path().join(".noderoll/escalate.journal")).expect("journal");
    let record = journal.lines().find(|l| l.contains("\"event\":\"pod-deleted\"")).expect("a journaled deletion");
    assert!(record.contains("drain/held-") && record.contains("ws01/drain"), "{record}");
}
