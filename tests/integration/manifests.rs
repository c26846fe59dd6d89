//! `noderoll manifests`: the objects are accepted by kubectl against the simulator, and the
//! RBAC they grant is exactly what an in-cluster run's requests need (from the simulator's
//! audit log), no more.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{Cluster, SIM_UPGRADE, SimProcess, noderoll, path_with_binary, small_plan, yaml_files};

fn manifests(plan: &std::path::Path, extra: &[&str]) -> String {
    let out = noderoll().arg("manifests").arg(plan).args(extra).assert().success();
    String::from_utf8_lossy(&out.get_output().stdout).into_owned()
}

#[test]
fn kubectl_accepts_the_manifests_of_every_example_plan() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    sim.create("apiVersion: v1\nkind: Namespace\nmetadata: {name: noderoll}\n");
    for plan in yaml_files("plans") {
        let plan = crate::harness::repo().join(plan);
        let yaml = manifests(&plan, &["--schedule", "0 2 * * 0"]);
        let path = sim.dir.path().join("manifests.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let path = path.to_str().expect("utf-8");
        sim.kubectl_ok(&["apply", "--dry-run=client", "--validate=false", "-f", path]);
        sim.kubectl_ok(&["apply", "--validate=false", "-f", path]);
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
        let name = docs.last().and_then(|d| d["metadata"]["name"].as_str()).expect("CronJob name").to_owned();
        let cron: Value =
            serde_json::from_str(&sim.kubectl_ok(&["get", "cronjob", "-n", "noderoll", &name, "-o", "json"]))
                .expect("JSON");
        assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid", "{}", plan.display());
        assert_eq!(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"], "noderoll");
    }
    // The window's schedule and zone, when the plan has one.
    let yaml = manifests(&crate::harness::repo().join("plans/large-facility.yaml"), &[]);
    assert!(yaml.contains("schedule: 0 22 * * 5") && yaml.contains("timeZone: Europe/London"), "{yaml}");
}

/// (API group, resource[/subresource], verb, object name, namespace) of a request.
type Request = (String, String, String, Option<String>, Option<String>);

/// noderoll's resource requests in the simulator's audit log: not the test's own kubectl
/// calls, not discovery, not the simulator's `/sim/` control API.
fn requests(sim: &SimProcess) -> Vec<Request> {
    let log = std::fs::read_to_string(sim.dir.path().join("audit.jsonl")).expect("audit log");
    let mut found = Vec::new();
    for entry in log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if entry["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl")) {
            continue;
        }
        let path = entry["path"].as_str().unwrap_or_default();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => continue,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            rest => (None, rest),
        };
        let (resource, name) = match rest {
            [] => continue,
            [resource] => ((*resource).to_owned(), None),
            [resource, name] => ((*resource).to_owned(), Some((*name).to_owned())),
            [resource, name, sub, ..] => (format!("{resource}/{sub}"), Some((*name).to_owned())),
        };
        let verb = entry["verb"].as_str().unwrap_or_default().to_owned();
        found.push((group.to_owned(), resource, verb, name, namespace));
    }
    found
}

/// One granted (group, resource, verb), with its names if limited, and its namespace for
/// a Role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    names: Vec<String>,
    namespace: Option<String>,
}

fn grants(docs: &[Value]) -> Vec<Grant> {
    let mut grants = Vec::new();
    for doc in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
        let namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
        for rule in doc["rules"].as_array().expect("rules") {
            let list = |key: &str| -> Vec<String> {
                rule[key].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        grants.push(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            names: list("resourceNames"),
                            namespace: namespace.clone(),
                        });
                    }
                }
            }
        }
    }
    grants
}

fn allows(grant: &Grant, request: &Request) -> bool {
    let (group, resource, verb, name, namespace) = request;
    grant.group == *group
        && grant.resource == *resource
        && grant.verb == *verb
        && (grant.names.is_empty() || name.as_ref().is_some_and(|n| grant.names.contains(n)))
        && (grant.namespace.is_none() || grant.namespace == *namespace)
}

#[test]
fn the_role_grants_exactly_what_an_in_cluster_run_requests() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    sim.create("apiVersion: v1\nkind: Namespace\nmetadata: {name: noderoll}\n");
    let plan = small_plan(sim.dir.path(), "incluster", "", SIM_UPGRADE);
    let text = std::fs::read_to_string(&plan).expect("read").replace(
        "  defaults:\n",
        "  defaults:\n    drain: {timeout: 3s, ignoreDaemonSets: true, deleteEmptyDirData: true}\n",
    );
    std::fs::write(&plan, text).expect("write");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&manifests(&plan, &["--schedule", "0 2 * * 0"])).expect("YAML");
    let cron = docs.iter().find(|d| d["kind"] == "CronJob").expect("CronJob");
    // The CronJob's own arguments, with the plan and state folder where this test keeps
    // them, and the simulator's kubeconfig for the pod's service account.
    let state = sim.dir.path().join("state").display().to_string();
    let mut args: Vec<String> = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .map(|a| if a == "/var/lib/noderoll" { state.clone() } else { a })
        .collect();
    args[1] = plan.display().to_string();
    args.extend(["--kubeconfig".to_owned(), sim.kubeconfig().display().to_string()]);
    let run = || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("noderoll"))
            .args(&args)
            .env("PATH", path_with_binary())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("apply")
    };

    // A budget that allows no eviction makes the drain watch PDBs; the first run halts,
    // the second, with the budget gone, finishes.
    sim.create(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: strict, namespace: kube-system}\nspec: {maxUnavailable: 0, selector: {matchLabels: {k8s-app: kube-dns}}}\n",
    );
    let first = run();
    assert_eq!(first.status.code(), Some(4), "{}", String::from_utf8_lossy(&first.stderr));
    sim.kubectl_ok(&["delete", "pdb", "-n", "kube-system", "strict"]);
    let second = run();
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stderr));
    sim.assert_upgraded_once(5);

    let used: Vec<Request> = requests(&sim);
    assert!(used.len() > 50, "the audit log has the runs' requests: {}", used.len());
    let granted = grants(&docs);
    let denied: BTreeSet<String> = used
        .iter()
        .filter(|r| !granted.iter().any(|g| allows(g, r)))
        .map(|(g, r, v, n, ns)| {
            format!("{v} {g}/{r} {} in {}", n.as_deref().unwrap_or("-"), ns.as_deref().unwrap_or("-"))
        })
        .collect();
    assert!(denied.is_empty(), "requests the manifests do not grant: {denied:#?}");
    let unused: Vec<&Grant> = granted.iter().filter(|g| !used.iter().any(|r| allows(g, r))).collect();
    assert!(unused.is_empty(), "grants no request needed: {unused:#?}");
}
