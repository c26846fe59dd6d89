//! Juno users: a session whose pod is deleted comes back as a new pod with the same spec,
//! as a user reconnects.

use serde_json::{Value, json};

/// A new session from an ended one: same spec and labels, a fresh name, no node yet.
pub(crate) fn session_template(pod: &Value) -> String {
    let mut template = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": pod["spec"].clone()});
    let metadata = &pod["metadata"];
    let name = metadata["name"].as_str().unwrap_or("session");
    let prefix = match metadata["generateName"].as_str() {
        Some(prefix) => prefix.to_owned(),
        None => match name.rsplit_once('-') {
            Some((stem, tail)) if tail.len() == 5 => format!("{stem}-"),
            _ => format!("{name}-"),
        },
    };
    for field in ["namespace", "labels", "annotations", "ownerReferences"] {
        template["metadata"][field] = metadata[field].clone();
    }
    template["metadata"]["generateName"] = json!(prefix);
    if let Some(spec) = template["spec"].as_object_mut() {
        spec.remove("nodeName");
    }
    if let Some(m) = template["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    template.to_string()
}
