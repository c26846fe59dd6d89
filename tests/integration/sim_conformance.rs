//! The simulator checked by the real thing. One script of kubectl and raw API requests runs
//! against `noderoll sim` and against the real control plane; each step's observable
//! answer (status code, reason, message, what kubectl printed) is compared. Every
//! difference must be listed, with its reason, in docs/simulator.md's section "Checked
//! against the real API server", and every listed one must still differ: a new difference
//! fails the test, and so does a fixed one left in the list. Every object the simulator
//! serves (lists and watch events) is then validated against the real API server's own
//! OpenAPI v3 schema.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::control_plane::{ControlPlane, Studio};
use crate::harness::{Cluster, SimProcess, repo};

/// The objects both clusters get: a Deployment whose budget allows no disruption on ws02,
/// a bare pod beside it, and a Deployment without a budget on ws03.
const FIXTURE: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: conformance}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: guarded, namespace: conformance}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: guarded}}\n  template:\n    metadata: {labels: {app: guarded}}\n    spec:\n      nodeName: ws02\n      tolerations: [{operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: app, image: app:1}]\n\
---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: guarded, namespace: conformance}\nspec:\n  maxUnavailable: 0\n  selector: {matchLabels: {app: guarded}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {name: bare, namespace: conformance}\nspec:\n  nodeName: ws02\n  tolerations: [{operator: Exists}]\n  terminationGracePeriodSeconds: 1\n  containers: [{name: app, image: app:1}]\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: free, namespace: conformance}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: free}}\n  template:\n    metadata: {labels: {app: free}}\n    spec:\n      nodeName: ws03\n      tolerations: [{operator: Exists}]\n      terminationGracePeriodSeconds: 1\n      containers: [{name: app, image: app:1}]\n";

/// What a step saw: a few named facts, compared between the two clusters.
type Seen = BTreeMap<&'static str, Value>;

fn status(code: u16, body: &str) -> Seen {
    let body: Value = serde_json::from_str(body).unwrap_or_default();
    let mut seen = Seen::new();
    seen.insert("code", json!(code));
    seen.insert("reason", body["reason"].clone());
    seen.insert("message", body["message"].clone());
    seen
}

fn kubectl_seen(out: &std::process::Output, stderr_mentions: &[&str]) -> Seen {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut seen = Seen::new();
    seen.insert("succeeded", json!(out.status.success()));
    for phrase in stderr_mentions {
        seen.insert("mentions", json!(format!("{phrase}: {}", stderr.contains(phrase))));
    }
    seen
}

fn pod_on(cluster: &impl Cluster, app: &str) -> String {
    let mut name = String::new();
    crate::harness::eventually_within(std::time::Duration::from_secs(60), &format!("a running {app} pod"), || {
        name = cluster.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "conformance",
            "-l",
            &format!("app={app}"),
            "--field-selector",
            "status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        name = name.split_whitespace().next().unwrap_or_default().to_owned();
        !name.is_empty()
    });
    name
}

const EVICTION: &str =
    r#"{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "NAME", "namespace": "conformance"}}"#;

/// The script: every step's name and what it saw, in order.
fn script(cluster: &impl Cluster, create: &dyn Fn(&str)) -> Vec<(&'static str, Seen)> {
    let mut steps: Vec<(&'static str, Seen)> = Vec::new();
    create(FIXTURE);
    let guarded = pod_on(cluster, "guarded");
    pod_on(cluster, "free");
    cluster.eventually("the budget allows nothing", || {
        cluster.kubectl_ok(&["get", "pdb", "-n", "conformance", "guarded", "-o", "jsonpath={.status.expectedPods}"])
            == "1"
    });

    let (code, body) = cluster.request("GET", "/api/v1/nodes/ws01", "application/json", "");
    let node: Value = serde_json::from_str(&body).unwrap_or_default();
    steps.push(("get a node", Seen::from([("code", json!(code)), ("kind", node["kind"].clone())])));
    let (code, body) = cluster.request("GET", "/api/v1/nodes/nope", "application/json", "");
    steps.push(("get a missing node", status(code, &body)));

    let (code, body) =
        cluster.request("GET", "/api/v1/nodes?labelSelector=juno-innovations.com%2Fworkstation%3Dtrue", "", "");
    let list: Value = serde_json::from_str(&body).unwrap_or_default();
    let all = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|n| n["metadata"]["labels"]["juno-innovations.com/workstation"] == "true");
    steps.push((
        "list by label selector",
        Seen::from([("code", json!(code)), ("kind", list["kind"].clone()), ("all match", json!(all))]),
    ));
    let (code, body) = cluster.request("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dws02", "", "");
    let list: Value = serde_json::from_str(&body).unwrap_or_default();
    let all = list["items"].as_array().into_iter().flatten().all(|p| p["spec"]["nodeName"] == "ws02");
    steps.push(("list by field selector", Seen::from([("code", json!(code)), ("all match", json!(all))])));
    let (code, body) = cluster.request("GET", "/api/v1/pods?fieldSelector=spec.bogus%3Dx", "", "");
    steps.push(("an unsupported field selector", status(code, &body)));

    let out = cluster.kubectl(&["cordon", "ws04"]);
    let unschedulable = cluster.kubectl_ok(&["get", "node", "ws04", "-o", "jsonpath={.spec.unschedulable}"]);
    let mut seen = kubectl_seen(&out, &[]);
    seen.insert("stdout", json!(String::from_utf8_lossy(&out.stdout).trim()));
    seen.insert("unschedulable", json!(unschedulable));
    steps.push(("kubectl cordon", seen));
    cluster.kubectl_ok(&["uncordon", "ws04"]);

    let path = format!("/api/v1/namespaces/conformance/pods/{guarded}/eviction");
    let (code, body) = cluster.request("POST", &path, "application/json", &EVICTION.replace("NAME", &guarded));
    let mut seen = status(code, &body);
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    seen.insert("cause", body["details"]["causes"][0]["reason"].clone());
    steps.push(("an eviction the budget refuses", seen));
    let (code, body) = cluster.request(
        "POST",
        "/api/v1/namespaces/conformance/pods/bare/eviction",
        "application/json",
        &EVICTION.replace("NAME", "bare"),
    );
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    steps.push((
        "an eviction of a bare pod",
        Seen::from([("code", json!(code)), ("kind", body["kind"].clone()), ("status", body["status"].clone())]),
    ));

    // The evicted bare pod must be gone first: while it terminates, kubectl refuses the
    // drain for it (no controller) before it asks about the budget.
    cluster.eventually("the evicted bare pod is gone", || {
        !cluster.kubectl(&["get", "pod", "-n", "conformance", "bare"]).status.success()
    });
    let out = cluster.kubectl(&["drain", "ws02", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=4s"]);
    steps.push((
        "kubectl drain with a budget",
        kubectl_seen(&out, &["Cannot evict pod as it would violate the pod's disruption budget"]),
    ));
    cluster.kubectl_ok(&["uncordon", "ws02"]);
    let out = cluster.kubectl(&[
        "drain",
        "ws03",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=60s",
    ]);
    steps.push(("kubectl drain without a budget", kubectl_seen(&out, &["evicted"])));
    cluster.kubectl_ok(&["uncordon", "ws03"]);

    cluster.kubectl_ok(&["cordon", "ws04"]);
    create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: tolerant, namespace: conformance}\nspec:\n  nodeSelector: {kubernetes.io/hostname: ws04}\n  tolerations: [{operator: Exists}]\n  terminationGracePeriodSeconds: 1\n  containers: [{name: app, image: app:1}]\n",
    );
    let mut placed = String::new();
    crate::harness::eventually_within(std::time::Duration::from_secs(20), "the tolerant pod is placed or not", || {
        placed =
            cluster.kubectl_ok(&["get", "pod", "-n", "conformance", "tolerant", "-o", "jsonpath={.spec.nodeName}"]);
        !placed.is_empty()
    });
    steps.push(("a pod tolerating every taint on a cordoned node", Seen::from([("node", json!(placed))])));
    cluster.kubectl_ok(&["uncordon", "ws04"]);

    let (_, body) = cluster.request("GET", "/api/v1/nodes", "", "");
    let version = serde_json::from_str::<Value>(&body).unwrap_or_default()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cluster.kubectl_ok(&["label", "node", "ws04", "conformance=watched"]);
    let (code, body) =
        cluster.request("GET", &format!("/api/v1/nodes?watch=1&resourceVersion={version}&timeoutSeconds=2"), "", "");
    let events: BTreeSet<String> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["object"]["metadata"]["labels"]["conformance"] == "watched")
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap_or_default(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    steps.push((
        "a watch resumed from a resourceVersion",
        Seen::from([("code", json!(code)), ("events", json!(events))]),
    ));
    let (code, body) = cluster.request("GET", "/api/v1/nodes?watch=1&resourceVersion=1&timeoutSeconds=2", "", "");
    let first: Value = body.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    steps.push((
        "a watch from an expired resourceVersion",
        Seen::from([
            ("code", json!(code)),
            ("type", first["type"].clone()),
            ("status code", first["object"]["code"].clone()),
            ("reason", first["object"]["reason"].clone()),
        ]),
    ));

    for (name, content_type, patch) in [
        (
            "a strategic merge patch",
            "application/strategic-merge-patch+json",
            r#"{"metadata":{"labels":{"patched":"strategic"}}}"#,
        ),
        ("a merge patch", "application/merge-patch+json", r#"{"metadata":{"labels":{"patched":"merge"}}}"#),
        (
            "a JSON patch",
            "application/json-patch+json",
            r#"[{"op":"add","path":"/metadata/labels/patched","value":"json"}]"#,
        ),
        (
            "a server-side apply patch",
            "application/apply-patch+yaml",
            "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"ws04\",\"labels\":{\"applied\":\"apply\"}}}",
        ),
    ] {
        let path = if content_type.contains("apply") {
            "/api/v1/nodes/ws04?fieldManager=conformance"
        } else {
            "/api/v1/nodes/ws04"
        };
        let (code, body) = cluster.request("PATCH", path, content_type, patch);
        let node: Value = serde_json::from_str(&body).unwrap_or_default();
        let labels = &node["metadata"]["labels"];
        let label = if content_type.contains("apply") { &labels["applied"] } else { &labels["patched"] };
        steps.push((name, Seen::from([("code", json!(code)), ("label", label.clone())])));
    }

    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"held","namespace":"default"},"spec":{"holderIdentity":"a"}}"#;
    let (_, created) =
        cluster.request("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", "application/json", lease);
    let mut created: Value = serde_json::from_str(&created).unwrap_or_default();
    let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/held";
    created["spec"]["holderIdentity"] = json!("b");
    cluster.request("PUT", path, "application/json", &created.to_string());
    created["spec"]["holderIdentity"] = json!("c");
    let (code, body) = cluster.request("PUT", path, "application/json", &created.to_string());
    steps.push(("an update with a stale resourceVersion", status(code, &body)));

    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": "default"},
        "data": {"big": "x".repeat(1024 * 1024 + 1)}});
    let (code, body) =
        cluster.request("POST", "/api/v1/namespaces/default/configmaps", "application/json", &big.to_string());
    steps.push(("a ConfigMap over 1 MiB", status(code, &body)));

    let manifest = cluster.scratch().join("unknown-field.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: default}\ndatta: {a: b}\n",
    )
    .expect("write");
    let out = cluster.kubectl(&["create", "-f", manifest.to_str().expect("utf-8")]);
    steps.push(("kubectl create with validation", kubectl_seen(&out, &["unknown field \"datta\""])));
    steps
}

/// The steps docs/simulator.md lists as differing, from its table under "Checked against
/// the real API server" (first column, in backticks).
fn documented_differences() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/simulator.md")).expect("docs/simulator.md");
    let section = doc.split("## Checked against the real API server").nth(1).expect("the section");
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(step, _)| step.to_owned()))
        .collect()
}

/// A schema problem in one served object: `path: what`.
fn validate(schema: &Value, schemas: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return validate(&schemas[name], schemas, value, path, problems);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        validate(part, schemas, value, path, problems);
    }
    if let Some(options) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        let fits = options.iter().any(|o| {
            let mut inner = Vec::new();
            validate(o, schemas, value, path, &mut inner);
            inner.is_empty()
        });
        if !fits {
            problems.push(format!("{path}: fits none of its schema's alternatives: {value}"));
        }
        return;
    }
    if value.is_null() {
        if schema["nullable"] != true && schema.as_object().is_some_and(|o| !o.is_empty()) {
            problems.push(format!("{path}: null where the schema wants a value"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            problems.push(format!("{path}: neither an integer nor a string: {value}"));
        }
        return;
    }
    let fits = match schema["type"].as_str() {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        _ => true,
    };
    if !fits {
        problems.push(format!("{path}: a {} where the schema wants {}", kind_of(value), schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if object.get(required).is_none_or(Value::is_null) {
                problems.push(format!("{path}: required field `{required}` missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, item) in object {
            let inner = format!("{path}.{key}");
            match (properties.and_then(|p| p.get(key)), &schema["additionalProperties"]) {
                (Some(property), _) => validate(property, schemas, item, &inner, problems),
                (None, additional) if additional.is_object() => validate(additional, schemas, item, &inner, problems),
                (None, _) if properties.is_some() && schema["x-kubernetes-preserve-unknown-fields"] != true => {
                    problems.push(format!("{inner}: a field the schema does not have"));
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            validate(items, schemas, item, &format!("{path}[{index}]"), problems);
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every object the simulator serves for these resources, listed and watched, checked
/// against the real server's OpenAPI v3 schema of its kind.
fn schema_problems(sim: &SimProcess, plane: &ControlPlane) -> Vec<String> {
    let resources = [
        ("api/v1", "nodes", "io.k8s.api.core.v1.Node"),
        ("api/v1", "pods", "io.k8s.api.core.v1.Pod"),
        ("api/v1", "namespaces", "io.k8s.api.core.v1.Namespace"),
        ("api/v1", "configmaps", "io.k8s.api.core.v1.ConfigMap"),
        ("api/v1", "events", "io.k8s.api.core.v1.Event"),
        ("apis/apps/v1", "deployments", "io.k8s.api.apps.v1.Deployment"),
        ("apis/apps/v1", "replicasets", "io.k8s.api.apps.v1.ReplicaSet"),
        ("apis/apps/v1", "statefulsets", "io.k8s.api.apps.v1.StatefulSet"),
        ("apis/apps/v1", "daemonsets", "io.k8s.api.apps.v1.DaemonSet"),
        ("apis/policy/v1", "poddisruptionbudgets", "io.k8s.api.policy.v1.PodDisruptionBudget"),
        ("apis/coordination.k8s.io/v1", "leases", "io.k8s.api.coordination.v1.Lease"),
        ("apis/events.k8s.io/v1", "events", "io.k8s.api.events.v1.Event"),
    ];
    let mut documents: BTreeMap<&str, Value> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (group, plural, kind) in resources {
        let document = documents.entry(group).or_insert_with(|| {
            serde_json::from_str(&plane.get(&format!("/openapi/v3/{group}")).expect("the real server's OpenAPI v3"))
                .expect("OpenAPI JSON")
        });
        let schemas = &document["components"]["schemas"];
        assert!(schemas[kind].is_object(), "the real server's schema has {kind}");
        let list: Value = serde_json::from_str(&sim.get(&format!("/{group}/{plural}")).expect("list")).expect("JSON");
        let list_kind = format!("{kind}List");
        validate(&schemas[list_kind.as_str()], schemas, &list, &format!("{plural} list"), &mut problems);
        let (_, watched) =
            sim.request("GET", &format!("/{group}/{plural}?watch=1&resourceVersion=0&timeoutSeconds=1"), "", "");
        for event in watched.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let name = event["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            validate(&schemas[kind], schemas, &event["object"], &format!("{plural} watch event {name}"), &mut problems);
            checked += 1;
        }
        checked += list["items"].as_array().map_or(0, Vec::len);
    }
    assert!(checked > 50, "the simulator's objects were checked: {checked}");
    problems
}

#[test]
fn the_simulator_answers_as_the_real_api_server_does_and_serves_objects_its_schema_accepts() {
    let plane = ControlPlane::up();
    plane.studio(&Studio { workstations: 4 });
    let sim = SimProcess::start_at("1", &["--sessions-per-node", "0", "--watch-history", "200"]);
    let real = script(&plane, &|yaml| plane.apply_manifest(yaml));
    let simulated = script(&sim, &|yaml| sim.create(yaml));
    let mut differences = BTreeSet::new();
    let mut report = Vec::new();
    for ((step, seen_real), (_, seen_sim)) in real.iter().zip(&simulated) {
        if seen_real != seen_sim {
            differences.insert((*step).to_owned());
            report.push(format!("{step}:\n  real:      {}\n  simulator: {}", json!(seen_real), json!(seen_sim)));
        }
    }
    let documented = documented_differences();
    let new: Vec<&String> = differences.difference(&documented).collect();
    let gone: Vec<&String> = documented.difference(&differences).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "differences not in docs/simulator.md: {new:?}; listed there but no longer different: {gone:?}\n{}",
        report.join("\n")
    );
    let problems = schema_problems(&sim, &plane);
    // One line per kind of problem (items and watched objects alike), with a count.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for problem in &problems {
        let (place, what) = problem.split_once(": ").unwrap_or((problem, ""));
        let mut place = place.split('.').collect::<Vec<_>>();
        place.retain(|p| !p.starts_with("items[") && !p.contains(" watch event "));
        let place: String =
            place.join(".").chars().filter(|c| !c.is_ascii_digit()).collect::<String>().replace(" list", "");
        *kinds.entry(format!("{place}: {what}")).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
    assert!(problems.is_empty(), "{} schema problems:\n{}", problems.len(), kinds.join("\n"));
}
