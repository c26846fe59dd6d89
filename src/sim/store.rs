//! The object store: every object as the JSON bytes the API returns, a small index of the
//! fields that selectors and controllers read, one resourceVersion counter for all types (as
//! etcd has), and the event history that watches replay.
//!
//! Objects are kept serialized because lists and watches dominate: a list of 150,000 pods is
//! a concatenation of stored bytes, not 150,000 serializations, and bytes take a fraction of
//! the memory of a `serde_json::Value` tree.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{RESOURCES, ResourceType};
use super::status::ApiError;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Ordered as etcd
/// orders its keys, which is the order lists are returned in.
pub(crate) type Key = (String, String);

/// The indexed fields of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) uid: String,
    pub(crate) resource_version: u64,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    /// Field-selector values, in the order of the resource type's `fields`.
    pub(crate) fields: Vec<String>,
    pub(crate) deleting: bool,
    /// The `Ready` condition is `True` (pods and nodes).
    pub(crate) ready: bool,
    /// The controlling owner reference: (kind, name, uid).
    pub(crate) controller: Option<(String, String, String)>,
}

impl Meta {
    fn of(rt: &ResourceType, value: &Value, resource_version: u64) -> Meta {
        let metadata = &value["metadata"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let controller = metadata["ownerReferences"].as_array().and_then(|refs| {
            refs.iter()
                .find(|r| r["controller"].as_bool() == Some(true))
                .map(|r| (text(&r["kind"]), text(&r["name"]), text(&r["uid"])))
        });
        Meta {
            name: text(&metadata["name"]),
            namespace: text(&metadata["namespace"]),
            uid: text(&metadata["uid"]),
            resource_version,
            labels: string_map(&metadata["labels"]),
            annotations: string_map(&metadata["annotations"]),
            fields: rt.fields.iter().map(|path| field_value(value, path)).collect(),
            deleting: !metadata["deletionTimestamp"].is_null(),
            ready: value["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")),
            controller,
        }
    }

    pub(crate) fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// The value of a field-selector label, or `None` when the type does not support it.
    pub(crate) fn field(&self, rt: &ResourceType, label: &str) -> Option<&str> {
        match label {
            "metadata.name" => Some(&self.name),
            "metadata.namespace" => Some(&self.namespace),
            _ => rt.fields.iter().position(|f| *f == label).map(|i| self.fields[i].as_str()),
        }
    }
}

/// A JSON object of strings (labels, annotations) as a map; anything else is empty.
pub(crate) fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// A field's value as field selectors compare it: strings as they are, booleans and numbers
/// in their JSON spelling, absent as empty (so `spec.unschedulable=false` matches a node
/// without the field, as on a real API server).
fn field_value(value: &Value, path: &str) -> String {
    let mut v = value;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null if path == "spec.unschedulable" => "false".to_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A stored object: the exact bytes served, and its index.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub(crate) raw: Bytes,
    pub(crate) meta: Arc<Meta>,
}

impl Object {
    /// The object as a JSON tree, for code that changes it.
    pub(crate) fn value(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it. `previous` lets a watch with a selector turn a change
/// that moves an object out of (or into) the selection into DELETED (or ADDED).
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) resource: usize,
    pub(crate) kind: EventType,
    pub(crate) object: Object,
    pub(crate) previous: Option<Arc<Meta>>,
}

/// Events a new watch replays, and the receiver for those that follow.
pub(crate) type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// All objects of all types.
pub(crate) struct Store {
    resource_version: u64,
    tables: Vec<BTreeMap<Key, Object>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events up to this resourceVersion are no longer in `history`: older watches get 410.
    compacted: u64,
    sender: broadcast::Sender<Arc<Event>>,
    /// Changes not yet seen by the controllers.
    unreconciled: Vec<Arc<Event>>,
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Store {
        let (sender, _) = broadcast::channel(history_limit.max(1024));
        Store {
            resource_version: 1,
            tables: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            history_limit,
            compacted: 1,
            sender,
            unreconciled: Vec::new(),
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    pub(crate) fn get(&self, resource: usize, key: &Key) -> Option<&Object> {
        self.tables[resource].get(key)
    }

    pub(crate) fn get_named(&self, resource: usize, namespace: &str, name: &str) -> Option<&Object> {
        self.get(resource, &(namespace.to_owned(), name.to_owned()))
    }

    /// Objects of a type, in key order, within one namespace or across all.
    pub(crate) fn iter<'a>(
        &'a self,
        resource: usize,
        namespace: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a Object> + 'a> {
        let table = &self.tables[resource];
        match namespace {
            Some(ns) => Box::new(
                table.range((ns.to_owned(), String::new())..).take_while(move |((n, _), _)| n == ns).map(|(_, o)| o),
            ),
            None => Box::new(table.values()),
        }
    }

    /// Objects after `after` (exclusive), for list continuation.
    pub(crate) fn iter_after<'a>(
        &'a self,
        resource: usize,
        namespace: Option<&'a str>,
        after: &Key,
    ) -> impl Iterator<Item = &'a Object> + 'a {
        use std::ops::Bound;
        self.tables[resource]
            .range((Bound::Excluded(after.clone()), Bound::Unbounded))
            .take_while(move |((n, _), _)| namespace.is_none_or(|ns| n == ns))
            .map(|(_, o)| o)
    }

    pub(crate) fn len(&self, resource: usize) -> usize {
        self.tables[resource].len()
    }

    /// Stores a new object. The caller has filled uid and creationTimestamp.
    pub(crate) fn insert(&mut self, resource: usize, value: Value) -> Result<Object, ApiError> {
        let rt = &RESOURCES[resource];
        let key = key_of(&value);
        if self.tables[resource].contains_key(&key) {
            return Err(ApiError::already_exists(rt, &key.1));
        }
        Ok(self.write(resource, key, value, EventType::Added, None))
    }

    /// Replaces a stored object with a new version.
    pub(crate) fn replace(&mut self, resource: usize, value: Value) -> Result<Object, ApiError> {
        let rt = &RESOURCES[resource];
        let key = key_of(&value);
        let previous = match self.tables[resource].get(&key) {
            Some(old) => old.meta.clone(),
            None => return Err(ApiError::not_found(rt, &key.1)),
        };
        Ok(self.write(resource, key, value, EventType::Modified, Some(previous)))
    }

    /// Changes a stored object in place through `change`; `None` when it does not exist.
    pub(crate) fn update(&mut self, resource: usize, key: &Key, change: impl FnOnce(&mut Value)) -> Option<Object> {
        let old = self.tables[resource].get(key)?;
        let mut value = old.value();
        let before = value.clone();
        change(&mut value);
        if value == before {
            return Some(old.clone());
        }
        self.replace(resource, value).ok()
    }

    /// Removes an object for good, telling watchers with its final state.
    pub(crate) fn remove(&mut self, resource: usize, key: &Key) -> Option<Object> {
        let old = self.tables[resource].remove(key)?;
        let mut value = old.value();
        self.resource_version += 1;
        value["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let object = self.object(resource, &value);
        self.emit(resource, EventType::Deleted, object.clone(), Some(old.meta));
        Some(object)
    }

    fn write(
        &mut self,
        resource: usize,
        key: Key,
        mut value: Value,
        kind: EventType,
        previous: Option<Arc<Meta>>,
    ) -> Object {
        self.resource_version += 1;
        value["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let object = self.object(resource, &value);
        self.tables[resource].insert(key, object.clone());
        self.emit(resource, kind, object.clone(), previous);
        object
    }

    fn object(&self, resource: usize, value: &Value) -> Object {
        let raw = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        Object { raw, meta: Arc::new(Meta::of(&RESOURCES[resource], value, self.resource_version)) }
    }

    fn emit(&mut self, resource: usize, kind: EventType, object: Object, previous: Option<Arc<Meta>>) {
        let event = Arc::new(Event { resource, kind, object, previous });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.object.meta.resource_version;
            }
        }
        self.unreconciled.push(event.clone());
        // No receiver is not an error: nobody is watching.
        let _ = self.sender.send(event);
    }

    /// Events after `since` (exclusive), and a receiver for the ones that follow, taken
    /// together so that no event falls between them. `None` when `since` is compacted away.
    pub(crate) fn watch_from(&self, since: u64) -> Option<Subscription> {
        if since < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|e| e.object.meta.resource_version <= since);
        Some((self.history.range(start..).cloned().collect(), self.sender.subscribe()))
    }

    /// Changes since the last call, for the controllers.
    pub(crate) fn take_unreconciled(&mut self) -> Vec<Arc<Event>> {
        std::mem::take(&mut self.unreconciled)
    }
}

fn key_of(value: &Value) -> Key {
    let metadata = &value["metadata"];
    (
        metadata["namespace"].as_str().unwrap_or_default().to_owned(),
        metadata["name"].as_str().unwrap_or_default().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::resources::idx;
    use super::*;

    fn pod(ns: &str, name: &str, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "uid": name},
               "spec": {"nodeName": node}})
    }

    #[test]
    fn namespace_iteration_stays_inside_the_namespace() {
        let mut store = Store::new(100);
        for (ns, name) in [("a", "x"), ("b", "y"), ("b", "z"), ("c", "w")] {
            store.insert(idx::PODS, pod(ns, name, "n1")).expect("insert");
        }
        let names: Vec<&str> = store.iter(idx::PODS, Some("b")).map(|o| o.meta.name.as_str()).collect();
        assert_eq!(names, ["y", "z"]);
        let after: Vec<&str> =
            store.iter_after(idx::PODS, None, &("b".into(), "y".into())).map(|o| o.meta.name.as_str()).collect();
        assert_eq!(after, ["z", "w"]);
    }

    #[test]
    fn watch_history_compacts_and_reports_too_old() {
        let mut store = Store::new(3);
        for i in 0..5 {
            store.insert(idx::PODS, pod("a", &format!("p{i}"), "n1")).expect("insert");
        }
        // Versions 2..=6 were written; the last three (4, 5, 6) are kept.
        assert!(store.watch_from(2).is_none());
        let (events, _) = store.watch_from(3).expect("still in history");
        let versions: Vec<u64> = events.iter().map(|e| e.object.meta.resource_version).collect();
        assert_eq!(versions, [4, 5, 6]);
    }

    #[test]
    fn field_values_follow_api_server_spelling() {
        let mut store = Store::new(10);
        let node = store
            .insert(idx::NODES, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
            .expect("insert");
        assert_eq!(node.meta.field(&RESOURCES[idx::NODES], "spec.unschedulable"), Some("false"));
        let p = store.insert(idx::PODS, pod("a", "p", "n1")).expect("insert");
        assert_eq!(p.meta.field(&RESOURCES[idx::PODS], "spec.nodeName"), Some("n1"));
        assert_eq!(p.meta.field(&RESOURCES[idx::PODS], "spec.bogus"), None);
    }

    #[test]
    fn an_update_that_changes_nothing_writes_nothing() {
        let mut store = Store::new(10);
        store.insert(idx::PODS, pod("a", "p", "n1")).expect("insert");
        let before = store.resource_version();
        store.update(idx::PODS, &("a".into(), "p".into()), |_| {});
        assert_eq!(store.resource_version(), before);
    }
}
