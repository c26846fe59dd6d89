//! Server-side printing: `kubectl get` asks for `meta.k8s.io/v1 Table` and prints the columns
//! the server sends. These are the columns of the real API server's printers for each type
//! (`kubectl get nodes -o wide` shows the same headings here as on a cluster).

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::clock::human_age;
use super::resources::idx;
use super::store::Object;

/// A column: name, type, and priority (1 = shown with `-o wide` only).
type Column = (&'static str, &'static str, u8);

fn columns(resource: usize) -> &'static [Column] {
    match resource {
        idx::NODES => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        idx::PODS => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        idx::PDBS => &[
            ("Name", "string", 0),
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        idx::DEPLOYMENTS => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
        ],
        idx::REPLICASETS => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
        ],
        idx::STATEFULSETS => &[("Name", "string", 0), ("Ready", "string", 0), ("Age", "string", 0)],
        idx::DAEMONSETS => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
        ],
        idx::NAMESPACES => &[("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)],
        idx::CONFIGMAPS => &[("Name", "string", 0), ("Data", "string", 0), ("Age", "string", 0)],
        idx::LEASES => &[("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)],
        idx::EVENTS | idx::NEW_EVENTS => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        _ => &[("Name", "string", 0), ("Age", "string", 0)],
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".to_owned() } else { s }
}

fn age(value: &Value, now: Timestamp) -> String {
    value["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map_or_else(|| "<unknown>".to_owned(), |created| human_age(now.duration_since(created).as_secs()))
}

fn count(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map_or("Unknown", |c| if c["status"] == "True" { "Ready" } else { "NotReady" });
    let mut status = ready.to_owned();
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<&str> = node["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort_unstable();
    let address = |kind: &str| {
        node["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["type"] == kind))
            .map_or_else(|| "<none>".to_owned(), |a| text(&a["address"]))
    };
    let info = &node["status"]["nodeInfo"];
    vec![
        json!(node["metadata"]["name"]),
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age(node, now)),
        json!(text(&info["kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or_none(text(&info["osImage"]))),
        json!(or_none(text(&info["kernelVersion"]))),
        json!(or_none(text(&info["containerRuntimeVersion"]))),
    ]
}

fn pod_cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses.iter().map(|s| count(&s["restartCount"])).sum();
    let mut status = text(&pod["status"]["phase"]);
    if let Some(reason) = pod["status"]["reason"].as_str() {
        status = reason.to_owned();
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        status = "Terminating".to_owned();
    }
    vec![
        json!(pod["metadata"]["name"]),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(pod, now)),
        json!(or_none(text(&pod["status"]["podIP"]))),
        json!(or_none(text(&pod["spec"]["nodeName"]))),
        json!(or_none(text(&pod["status"]["nominatedNodeName"]))),
        json!("<none>"),
    ]
}

fn cells(resource: usize, v: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(v["metadata"]["name"]);
    let status = &v["status"];
    match resource {
        idx::NODES => node_cells(v, now),
        idx::PODS => pod_cells(v, now),
        idx::PDBS => {
            let bound = |f: &str| if v["spec"][f].is_null() { "N/A".to_owned() } else { text(&v["spec"][f]) };
            vec![
                name,
                json!(bound("minAvailable")),
                json!(bound("maxUnavailable")),
                json!(count(&status["disruptionsAllowed"])),
                json!(age(v, now)),
            ]
        }
        idx::DEPLOYMENTS => vec![
            name,
            json!(format!("{}/{}", count(&status["readyReplicas"]), v["spec"]["replicas"].as_i64().unwrap_or(1))),
            json!(count(&status["updatedReplicas"])),
            json!(count(&status["availableReplicas"])),
            json!(age(v, now)),
        ],
        idx::REPLICASETS => vec![
            name,
            json!(v["spec"]["replicas"].as_i64().unwrap_or(1)),
            json!(count(&status["replicas"])),
            json!(count(&status["readyReplicas"])),
            json!(age(v, now)),
        ],
        idx::STATEFULSETS => vec![
            name,
            json!(format!("{}/{}", count(&status["readyReplicas"]), v["spec"]["replicas"].as_i64().unwrap_or(1))),
            json!(age(v, now)),
        ],
        idx::DAEMONSETS => {
            let selector: Vec<String> = v["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, val)| format!("{k}={}", text(val)))
                .collect();
            vec![
                name,
                json!(count(&status["desiredNumberScheduled"])),
                json!(count(&status["currentNumberScheduled"])),
                json!(count(&status["numberReady"])),
                json!(count(&status["updatedNumberScheduled"])),
                json!(count(&status["numberAvailable"])),
                json!(or_none(selector.join(","))),
                json!(age(v, now)),
            ]
        }
        idx::NAMESPACES => vec![name, json!(text(&status["phase"])), json!(age(v, now))],
        idx::CONFIGMAPS => {
            let data =
                v["data"].as_object().map_or(0, |m| m.len()) + v["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(data.to_string()), json!(age(v, now))]
        }
        idx::LEASES => vec![name, json!(or_none(text(&v["spec"]["holderIdentity"]))), json!(age(v, now))],
        idx::EVENTS | idx::NEW_EVENTS => {
            let regarding = if v["regarding"].is_object() { &v["regarding"] } else { &v["involvedObject"] };
            vec![
                json!(age(v, now)),
                json!(text(&v["type"])),
                json!(text(&v["reason"])),
                json!(format!("{}/{}", text(&regarding["kind"]).to_lowercase(), text(&regarding["name"]))),
                json!(text(if v["note"].is_string() { &v["note"] } else { &v["message"] })),
            ]
        }
        _ => vec![name, json!(age(v, now))],
    }
}

/// The Table for `objects`; each row carries the object as `includeObject` asks
/// (`Metadata` by default, which kubectl reads namespaces from).
pub(crate) fn render(
    resource: usize,
    objects: &[&Object],
    now: Timestamp,
    query: &HashMap<String, String>,
    resource_version: u64,
) -> Value {
    let definitions: Vec<Value> = columns(resource)
        .iter()
        .map(|(name, kind, priority)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": kind, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let include = query.get("includeObject").map_or("Metadata", String::as_str);
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let value = object.value();
            let mut row = json!({"cells": cells(resource, &value, now)});
            match include {
                "None" => {}
                "Object" => row["object"] = value,
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                           "metadata": value["metadata"].clone()});
                }
            }
            row
        })
        .collect();
    let metadata =
        if resource_version > 0 { json!({"resourceVersion": resource_version.to_string()}) } else { json!({}) };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}
