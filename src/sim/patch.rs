//! `PATCH` bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902) through the
//! `json-patch` crate, and Kubernetes strategic merge patch for the lists the built-in
//! types merge by key (conditions by `type`, containers by `name`, taints by `key`...).
//!
//! Strategic merge here covers what kubectl and controllers send to the served types: map
//! merge with `null` deletion, keyed list merge with `$patch: delete`/`replace`, and the
//! `$setElementOrder`/`$retainKeys` directives ignored (they only order or prune). Lists the
//! table does not name are replaced, as merge patch does.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch formats, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub(crate) fn from_content_type(content_type: &str) -> Result<PatchType, ApiError> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// The merge key of a list field in the built-in types, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "conditions" => "type",
        "addresses" => "type",
        "taints" => "key",
        "ownerReferences" => "uid",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        _ => return None,
    })
}

pub(crate) fn apply_patch(patch_type: PatchType, target: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("error decoding patch: {e}"));
    match patch_type {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(bad)?;
            json_patch::patch(target, &patch).map_err(|e| ApiError::invalid_patch(e.to_string()))
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(bad)?;
            json_patch::merge(target, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(bad)?;
            strategic_merge(target, &patch);
            Ok(())
        }
    }
}

fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(map) = target.as_object_mut() else { return };
    for (field, change) in patch {
        if field.starts_with('$') {
            continue;
        }
        match change {
            Value::Null => {
                map.remove(field);
            }
            Value::Object(_) => strategic_merge(map.entry(field.clone()).or_insert(Value::Null), change),
            Value::Array(items) => match merge_key(field) {
                Some(key) => merge_list(map.entry(field.clone()).or_insert(Value::Array(Vec::new())), items, key),
                None => {
                    map.insert(field.clone(), change.clone());
                }
            },
            _ => {
                map.insert(field.clone(), change.clone());
            }
        }
    }
}

fn merge_list(target: &mut Value, items: &[Value], key: &str) {
    if items.iter().any(|i| i["$patch"] == "replace") {
        *target = Value::Array(items.iter().filter(|i| i["$patch"] != "replace").cloned().collect());
        return;
    }
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Some(list) = target.as_array_mut() else { return };
    for item in items {
        let id = &item[key];
        let position = list.iter().position(|existing| &existing[key] == id && !id.is_null());
        match (item["$patch"].as_str(), position) {
            (Some("delete"), Some(p)) => {
                list.remove(p);
            }
            (Some("delete"), None) => {}
            (_, Some(p)) => strategic_merge(&mut list[p], item),
            (_, None) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item);
                list.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strategic(target: Value, patch: Value) -> Value {
        let mut target = target;
        apply_patch(PatchType::Strategic, &mut target, patch.to_string().as_bytes()).expect("patch");
        target
    }

    #[test]
    fn cordon_patch_sets_the_field() {
        let node = strategic(json!({"spec": {"podCIDR": "10.42.0.0/24"}}), json!({"spec": {"unschedulable": true}}));
        assert_eq!(node, json!({"spec": {"podCIDR": "10.42.0.0/24", "unschedulable": true}}));
        let back = strategic(node, json!({"spec": {"unschedulable": null}}));
        assert_eq!(back, json!({"spec": {"podCIDR": "10.42.0.0/24"}}));
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let status =
            json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]});
        let patched = strategic(
            json!({"status": status}),
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Custom", "status": "True"}]}}),
        );
        assert_eq!(
            patched["status"]["conditions"],
            json!([{"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}, {"type": "Custom", "status": "True"}])
        );
        let deleted = strategic(patched, json!({"status": {"conditions": [{"type": "Custom", "$patch": "delete"}]}}));
        assert_eq!(deleted["status"]["conditions"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn unkeyed_lists_are_replaced_and_directives_ignored() {
        let patched = strategic(
            json!({"spec": {"tolerations": [{"key": "a"}]}}),
            json!({"$setElementOrder/spec": [], "spec": {"tolerations": [{"key": "b"}]}}),
        );
        assert_eq!(patched, json!({"spec": {"tolerations": [{"key": "b"}]}}));
    }

    #[test]
    fn json_patch_failures_are_invalid_requests() {
        let mut target = json!({"spec": {}});
        let error = apply_patch(PatchType::Json, &mut target, br#"[{"op": "remove", "path": "/spec/missing"}]"#)
            .expect_err("path does not exist");
        assert_eq!(error.code, 422);
        assert!(PatchType::from_content_type("application/apply-patch+yaml").is_err());
    }
}
