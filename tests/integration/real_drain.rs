//! noderoll's drain on the real control plane: a budget that the real disruption
//! controller keeps, an emptyDir pod, DaemonSet pods left where they are, a pod already
//! terminating, the refusal when emptyDir data would be lost, a crash-looping pod under a
//! budget short of healthy pods, and kubectl drain's verdicts beside noderoll's on the same
//! pods.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use serde_json::Value;

use crate::control_plane::{ControlPlane, Shape, Studio, halted, plan};
use crate::harness::{Cluster, apply_via, noderoll};

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

const CRASHING: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: drain}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: crashing, namespace: drain}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: crashing}}\n  template:\n    metadata: {labels: {app: crashing}}\n    spec:\n      nodeSelector: {juno-innovations.com/workstation: \"true\"}\n      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: app, image: app:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: crashing, namespace: drain}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: crashing}}\n";

/// The status a kubelet reports for a pod whose only container crashes over and over.
const CRASH_LOOP: &str = r#"{"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}, {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"}], "containerStatuses": [{"name": "app", "image": "app:1", "imageID": "", "ready": false, "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}}}]}}"#;

#[test]
fn a_crash_looping_pod_under_a_budget_short_of_healthy_pods_halts_the_drain_at_once_until_the_budget_always_allows() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let others = pin_to(&plane, &studio, "ws01", CRASHING, 2);
    for other in &others {
        plane.kubectl_ok(&["uncordon", other]);
    }
    let pods = plane.kubectl_ok(&["get", "pods", "-n", "drain", "-l", "app=crashing", "-o", "name"]);
    for pod in pods.lines() {
        plane.kubectl_ok(&["patch", "-n", "drain", pod, "--subresource=status", "--type=merge", "-p", CRASH_LOOP]);
    }
    let healthy = || {
        plane.kubectl_ok(&[
            "get",
            "pdb",
            "-n",
            "drain",
            "crashing",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.desiredHealthy}",
        ])
    };
    plane.eventually("the disruption controller counts no healthy pod", || healthy() == "0/1");
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), "crashing", &one_node("ws01", "{timeout: 15m, ignoreDaemonSets: true}"));
    let started = std::time::Instant::now();
    let out = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert!(!out.status.success(), "the drain must halt");
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "halted after {:?}", started.elapsed());
    let halted = halted(&out.stdout);
    assert_eq!(halted["failed"][0]["step"], "ws01/drain", "{halted}");
    let error = halted["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("PDB drain/crashing holds drain/crashing-"), "{error}");
    assert!(error.contains("CrashLoopBackOff") && error.contains("it has 0 of the 1 healthy pod(s)"), "{error}");
    assert!(error.contains("unhealthyPodEvictionPolicy: AlwaysAllow"), "the error names the fix: {error}");
    assert!(
        evictions(&plane).iter().any(|(pod, code)| pod.starts_with("crashing-") && *code == 429),
        "the real API server refused the eviction: {:?}",
        evictions(&plane)
    );

    // With the fix the error names, the real API server lets the unhealthy pods go.
    plane.kubectl_ok(&[
        "patch",
        "pdb",
        "-n",
        "drain",
        "crashing",
        "--type=merge",
        "-p",
        r#"{"spec":{"unhealthyPodEvictionPolicy":"AlwaysAllow"}}"#,
    ]);
    plane.eventually("the disruption controller observed the new spec", || {
        plane.kubectl_ok(&["get", "pdb", "-n", "drain", "crashing", "-o", "jsonpath={.status.observedGeneration}"])
            == "2"
    });
    let out = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert!(out.status.success(), "the drain goes on: {}", String::from_utf8_lossy(&out.stderr));
    let evicted: Vec<String> = evictions(&plane)
        .into_iter()
        .filter(|(pod, code)| pod.starts_with("crashing-") && *code == 201)
        .map(|(pod, _)| pod)
        .collect();
    assert_eq!(evicted.len(), 2, "both crash-looping pods were evicted: {evicted:?}");
}

const POOL: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: drain}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: pool, namespace: drain}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: pool}}\n  template:\n    metadata: {labels: {app: pool}}\n    spec:\n      nodeSelector: {juno-innovations.com/workstation: \"true\"}\n      tolerations: [{key: juno-innovations.com/workstation, operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: app, image: app:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: pool, namespace: drain}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: pool}}\n";

/// Both workstations, `lanes` at a time.
fn both(lanes: usize) -> Shape<'static> {
    let batches = format!("    - {{name: pool, role: workstation, nodes: [ws01, ws02], maxUnavailable: {lanes}}}\n");
    Shape { drain: "{timeout: 15m, force: true, ignoreDaemonSets: true}", batches, ..Shape::default() }
}

#[test]
fn a_wave_that_takes_out_every_node_a_budget_s_pods_can_run_on_halts_the_drain_at_once_on_the_real_control_plane() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    // Two pods of the pool on each workstation, the only nodes they may run on.
    pin_to(&plane, &studio, "ws01", POOL, 2);
    plane.kubectl_ok(&["cordon", "ws01"]);
    plane.kubectl_ok(&["uncordon", "ws02"]);
    plane.kubectl_ok(&["scale", "-n", "drain", "deployment/pool", "--replicas", "4"]);
    plane.eventually("two pool pods run on ws02", || {
        let on = plane.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "drain",
            "--field-selector",
            "spec.nodeName=ws02,status.phase=Running",
            "-o",
            "name",
        ]);
        on.lines().filter(|l| l.contains("pool-")).count() == 2
    });
    plane.kubectl_ok(&["uncordon", "ws01"]);
    plane.eventually("the disruption controller allows one disruption of four", || {
        plane.kubectl_ok(&[
            "get",
            "pdb",
            "-n",
            "drain",
            "pool",
            "-o",
            "jsonpath={.status.expectedPods}/{.status.disruptionsAllowed}",
        ]) == "4/1"
    });
    let dir = tempfile::tempdir().expect("temp dir");

    // The preview reads the same from the cluster: only when both go at once.
    let preview = |plan: &std::path::Path| {
        let out =
            noderoll().args(["preview", "--output", "json", "--kubeconfig"]).arg(plane.kubeconfig()).arg(plan).assert();
        let preview: Value = serde_json::from_slice(&out.success().get_output().stdout).expect("JSON");
        preview["survey"]["nodes"].as_array().cloned().unwrap_or_default()
    };
    let one_at_a_time = plan(dir.path(), "serial", &both(1));
    assert!(
        preview(&one_at_a_time).iter().all(|n| n["hopelessBudgets"].as_array().is_some_and(Vec::is_empty)),
        "one at a time, the other workstation takes the replacements"
    );
    let together = plan(dir.path(), "together", &both(2));
    for node in preview(&together) {
        let entries = node["hopelessBudgets"].to_string();
        assert!(entries.contains("drain/pool: wave 1 of batch `pool` takes out ws01, ws02"), "{entries}");
    }

    // The drain may take 15 minutes; once the budget's one disruption is spent, the
    // replacement can run nowhere and neither node can be emptied, so it must not.
    let started = std::time::Instant::now();
    let out = apply_via(&plane.kubeconfig(), &together, &[]).output().expect("apply runs");
    assert!(!out.status.success(), "the drain must halt");
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "halted after {:?}", started.elapsed());
    let halted = halted(&out.stdout);
    let failed = halted["failed"].as_array().cloned().unwrap_or_default();
    let stranded = failed.iter().find(|f| {
        f["step"].as_str().is_some_and(|s| s.ends_with("/drain"))
            && f["error"].as_str().is_some_and(|e| e.contains("PDB drain/pool holds drain/pool-"))
    });
    let error =
        stranded.and_then(|f| f["error"].as_str()).unwrap_or_else(|| panic!("a drain names the budget: {halted}"));
    assert!(error.contains("its pods can run only on ws01") && error.contains("all out of service at once"), "{error}");
    assert!(error.contains("lower the batch's maxUnavailable"), "the error names the fix: {error}");
    let answered = evictions(&plane);
    assert_eq!(
        answered.iter().filter(|(pod, code)| pod.starts_with("pool-") && *code == 201).count(),
        1,
        "the real API server let exactly one pool pod go: {answered:?}"
    );
    assert!(answered.iter().any(|(pod, code)| pod.starts_with("pool-") && *code == 429), "{answered:?}");
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

/// A mirror pod (as a kubelet makes for a static pod: the annotation, owned by its Node)
/// and a bare pod that has finished: both filters of kubectl's that are not refusals.
fn mirror_and_finished(node: &str, node_uid: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: static-{node}\n  namespace: drain\n  annotations: {{kubernetes.io/config.mirror: static}}\n  ownerReferences: [{{apiVersion: v1, kind: Node, name: {node}, uid: {node_uid}, controller: true}}]\nspec:\n  nodeName: {node}\n  tolerations: [{{operator: Exists}}]\n  containers: [{{name: app, image: app:1}}]\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{name: finished, namespace: drain}}\nspec:\n  nodeName: {node}\n  restartPolicy: Never\n  tolerations: [{{operator: Exists}}]\n  volumes: [{{name: scratch, emptyDir: {{}}}}]\n  containers: [{{name: app, image: app:1}}]\n"
    )
}

/// One refusal: the hint that lifts it and the pods it names.
type Refusals = BTreeMap<String, (String, BTreeSet<String>)>;

/// `cannot delete <why> (<hint>): <pods>` groups, as kubectl's error line and
/// noderoll's halt both give them, keyed by `<why>`. kubectl before 1.33 said `cannot
/// delete` twice before its unmanaged-pod reason (the reason carried the words too).
fn refusals(text: &str) -> Refusals {
    text.replace("cannot delete cannot delete ", "cannot delete ")
        .split("cannot delete ")
        .skip(1)
        .map(|part| {
            let (why, rest) =
                part.split_once(" (").unwrap_or_else(|| panic!("a reason and its hint in `{part}` of `{text}`"));
            let (hint, pods) = rest.split_once("): ").unwrap_or_else(|| panic!("a hint and its pods: {rest}"));
            let pods = pods.split([',', ';', ']']).map(str::trim).filter(|p| p.contains('/')).map(str::to_owned);
            (why.to_owned(), (hint.to_owned(), pods.collect()))
        })
        .collect()
}

/// The plan setting that lifts the refusal kubectl lifts with each flag.
const FLAG_SETTINGS: [(&str, &str); 3] = [
    ("--ignore-daemonsets", "drain.ignoreDaemonSets: true"),
    ("--delete-emptydir-data", "drain.deleteEmptyDirData: true"),
    ("--force", "drain.force: true"),
];

/// kubectl drain's verdict on `node` with `flags`, asked with `--dry-run=client` (which
/// lists and filters as a drain does, and changes nothing): its refusals, or the pods it
/// would evict and its warnings.
fn kubectl_verdict(plane: &ControlPlane, node: &str, flags: &[&str]) -> (Refusals, BTreeSet<String>, String) {
    let mut args = vec!["drain", node, "--dry-run=client"];
    args.extend_from_slice(flags);
    let out = plane.kubectl(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let evicted = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("evicting pod ")?.strip_suffix(" (dry run)"))
        .map(str::to_owned)
        .collect();
    let refused = stderr
        .lines()
        .find_map(|l| l.split_once("due to error: ").map(|(_, e)| e.split(", continuing command").next().unwrap_or(e)))
        .map(refusals)
        .unwrap_or_default();
    assert_eq!(refused.is_empty(), out.status.success(), "kubectl {args:?}: {stdout}{stderr}");
    let warnings = stderr.lines().filter_map(|l| l.strip_prefix("Warning: ")).collect::<Vec<_>>().join("\n");
    (refused, evicted, warnings)
}

#[test]
fn on_the_real_control_plane_noderoll_refuses_evicts_and_warns_as_kubectl_drain_does_on_the_same_pods() {
    let plane = ControlPlane::up();
    let studio = Studio { workstations: 2 };
    plane.studio(&studio);
    let others = pin_to(&plane, &studio, "ws01", WORKLOADS, 4);
    for other in &others {
        plane.kubectl_ok(&["uncordon", other]);
    }
    let node_uid = plane.kubectl_ok(&["get", "node", "ws01", "-o", "jsonpath={.metadata.uid}"]);
    plane.apply_manifest(&mirror_and_finished("ws01", &node_uid));
    plane.kubectl_ok(&[
        "patch",
        "pod",
        "-n",
        "drain",
        "finished",
        "--subresource=status",
        "--type=merge",
        "-p",
        "{\"status\":{\"phase\":\"Succeeded\"}}",
    ]);
    plane.eventually("the budget allows a disruption", || {
        plane.kubectl_ok(&["get", "pdb", "-n", "drain", "budgeted", "-o", "jsonpath={.status.disruptionsAllowed}"])
            == "1"
    });

    // Each run lifts one more of kubectl's refusals, in the order it reports them. The
    // first states ignoreDaemonSets: false, kubectl's default (noderoll's is true).
    let runs: [(&[&str], &str); 4] = [
        (&[], "{timeout: 1m, ignoreDaemonSets: false}"),
        (&["--ignore-daemonsets"], "{timeout: 1m, ignoreDaemonSets: true}"),
        (
            &["--ignore-daemonsets", "--delete-emptydir-data"],
            "{timeout: 1m, ignoreDaemonSets: true, deleteEmptyDirData: true}",
        ),
        (
            &["--ignore-daemonsets", "--delete-emptydir-data", "--force"],
            "{timeout: 1m, ignoreDaemonSets: true, deleteEmptyDirData: true, force: true}",
        ),
    ];
    let mut seen = BTreeSet::new();
    for (i, (flags, drain)) in runs.iter().enumerate() {
        let (expected, would_evict, kubectl_warnings) = kubectl_verdict(&plane, "ws01", flags);
        let dir = tempfile::tempdir().expect("temp dir");
        let plan = plan(dir.path(), &format!("side-{i}"), &one_node("ws01", drain));
        let out = apply_via(&plane.kubeconfig(), &plan, &[]).output().expect("apply runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if expected.is_empty() {
            assert!(out.status.success(), "kubectl {flags:?} drains, so must noderoll with {drain}: {stderr}");
            let evicted: BTreeSet<String> =
                evictions(&plane).into_iter().filter(|(_, code)| *code == 201).map(|(pod, _)| pod).collect();
            let would: BTreeSet<String> =
                would_evict.iter().map(|p| p.rsplit('/').next().unwrap_or(p).to_owned()).collect();
            assert_eq!(evicted, would, "noderoll evicts what kubectl {flags:?} would");
            assert!(would.contains("leaving") && would.contains("finished"), "{would:?}");
            assert!(!would.contains("static-ws01"), "the mirror pod stays: {would:?}");
            // kubectl also warns, on every node, that it ignores DaemonSet pods; noderoll
            // leaves them without a word (one such line per node would bury the rest), so
            // the warnings compared are those of the pods deleted with nothing to recreate
            // them.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let ours: Vec<String> = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["event"] == "warning")
                .filter_map(|e| e["message"].as_str().and_then(|m| m.strip_prefix("ws01: ")).map(str::to_owned))
                .flat_map(|m| m.split("; ").map(str::to_owned).collect::<Vec<_>>())
                .collect();
            let theirs: Vec<&str> = kubectl_warnings
                .lines()
                .flat_map(|l| l.split("; "))
                .filter(|w| !w.starts_with("ignoring DaemonSet-managed Pods"))
                .collect();
            assert!(!theirs.is_empty(), "kubectl warns of the pod nothing recreates: {kubectl_warnings}");
            assert_eq!(ours, theirs, "noderoll warns as kubectl {flags:?} does");
        } else {
            assert!(!out.status.success(), "kubectl {flags:?} refuses, so must noderoll with {drain}");
            let error = halted(&out.stdout)["failed"][0]["error"].as_str().unwrap_or_default().to_owned();
            let got = refusals(&error);
            let whys = |r: &Refusals| r.iter().map(|(why, (_, pods))| (why.clone(), pods.clone())).collect::<Vec<_>>();
            assert_eq!(whys(&got), whys(&expected), "noderoll's refusals: {error}");
            for (why, (hint, _)) in &expected {
                let (flag, setting) = FLAG_SETTINGS
                    .iter()
                    .find(|(flag, _)| hint.contains(flag))
                    .unwrap_or_else(|| panic!("a known kubectl flag in `{hint}`"));
                assert!(got[why].0.contains(setting), "kubectl's {flag} is noderoll's {setting}: {error}");
            }
            assert!(evictions(&plane).is_empty(), "a refusing drain evicts nothing: {:?}", evictions(&plane));
            plane.kubectl_ok(&["uncordon", "ws01"]);
            seen.extend(expected.into_keys());
        }
    }
    assert_eq!(seen.len(), 3, "the DaemonSet, local-storage and unmanaged refusals all came up: {seen:?}");
}
