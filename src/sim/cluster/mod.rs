//! The simulated cluster: the store, the clock, pending timers, and the API operations that
//! change objects (create, update, patch, delete, evict) with the semantics the real API
//! server gives them, with what those operations share with the controllers: the
//! API server's defaulting ([`defaults`]), a PDB's status ([`budget`]) and the indexes the
//! controllers keep ([`index`]). The controllers that react to changes live in
//! `controllers`, which imports from here and never the other way.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::clock::{Clock, rfc3339};
use super::patch::{PatchType, apply_patch};
use super::resources::{RESOURCES, idx};
use super::status::{ApiError, success};
use super::store::{Key, Object, Store};
use crate::labels::selector_matches;

mod budget;
mod defaults;
mod index;

pub(crate) use self::budget::budget_status;
pub(crate) use self::defaults::defaults;
pub(crate) use self::index::{Index, NodeInfo};

/// How the simulated cluster behaves. Durations are simulated time.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// From scheduling to Running and Ready.
    pub pod_start: Duration,
    /// How long a rebooting node stays NotReady.
    pub reboot: Duration,
    /// The annotation that marks a Juno session pod.
    pub session_annotation: String,
    /// Sessions end after a lifetime drawn uniformly from this range.
    pub session_lifetime: (Duration, Duration),
    /// How long after a session ends its user starts a new one.
    pub session_reconnect: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            pod_start: Duration::from_secs(5),
            reboot: Duration::from_secs(90),
            session_annotation: crate::labels::JUNO_SESSION.to_owned(),
            session_lifetime: (Duration::from_secs(600), Duration::from_secs(7200)),
            session_reconnect: Duration::from_secs(30),
        }
    }
}

/// Something the cluster does at a simulated time. Pod timers carry the pod's uid so that a
/// timer for a pod that was since replaced under the same name does nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    PodReady { key: Key, uid: String },
    PodGone { key: Key, uid: String },
    SessionEnds { key: Key, uid: String },
    SessionReconnect { template: String },
    NodeBack { name: String, generation: u64 },
}

/// A node's pending maintenance, set by the control API.
#[derive(Debug, Default, Clone)]
pub(crate) struct Maintenance {
    pub(crate) generation: u64,
    pub(crate) kubelet_version: Option<String>,
    pub(crate) os_image: Option<String>,
    /// The node failed for good: later reboots and upgrades do not bring it back.
    pub(crate) lost: bool,
}

/// The whole simulated cluster; callers hold it behind one lock.
pub(crate) struct Cluster {
    pub(crate) store: Store,
    pub(crate) clock: Arc<Clock>,
    pub(crate) behaviour: Behaviour,
    pub(crate) rng: ChaCha8Rng,
    timers: BinaryHeap<Reverse<(i128, u64, Timer)>>,
    timer_seq: u64,
    pub(crate) maintenance: HashMap<String, Maintenance>,
    /// Indexes kept by the controllers from the change stream.
    pub(crate) index: Index,
    next_ip: u32,
}

impl Cluster {
    pub(crate) fn new(clock: Arc<Clock>, behaviour: Behaviour, seed: u64, history: usize) -> Cluster {
        Cluster {
            store: Store::new(history),
            clock,
            behaviour,
            rng: ChaCha8Rng::seed_from_u64(seed),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            maintenance: HashMap::new(),
            index: Index::default(),
            next_ip: 0,
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A random UUID (version 4 layout) from the seeded generator, so a seed gives the same
    /// uids every run.
    pub(crate) fn uid(&mut self) -> String {
        let b: [u8; 16] = self.rng.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_be_bytes([b[4], b[5]]),
            u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
            (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
            u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
        )
    }

    /// Five lowercase alphanumerics, as the API server appends to `generateName`.
    pub(crate) fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5).map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char).collect()
    }

    pub(crate) fn pod_ip(&mut self) -> String {
        self.next_ip += 1;
        format!("10.42.{}.{}", self.next_ip / 250, self.next_ip % 250 + 1)
    }

    pub(crate) fn at(&mut self, after: Duration, timer: Timer) {
        let when = self.now().saturating_add(SignedDuration::try_from(after).unwrap_or(SignedDuration::MAX));
        let when = when.unwrap_or_else(|_| self.now());
        self.timer_seq += 1;
        self.timers.push(Reverse((when.as_nanosecond(), self.timer_seq, timer)));
    }

    /// Timers due by now, in time order.
    pub(crate) fn due_timers(&mut self) -> Vec<Timer> {
        let now = self.now().as_nanosecond();
        let mut due = Vec::new();
        while self.timers.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            if let Some(Reverse((_, _, timer))) = self.timers.pop() {
                due.push(timer);
            }
        }
        due
    }

    /// Creates an object as `POST` does: fills uid, creationTimestamp and generation,
    /// resolves `generateName`, and checks that the namespace exists.
    pub(crate) fn create(&mut self, resource: usize, mut value: Value) -> Result<Object, ApiError> {
        let rt = &RESOURCES[resource];
        if !value.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        value["apiVersion"] = json!(rt.api_version());
        value["kind"] = json!(rt.kind);
        if !value["metadata"].is_object() {
            value["metadata"] = json!({});
        }
        if value["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            match value["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    let name = format!("{prefix}{}", self.suffix());
                    value["metadata"]["name"] = json!(name);
                }
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        let namespace = value["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        if rt.namespaced {
            if namespace.is_empty() {
                return Err(ApiError::bad_request("the namespace of the object does not match the request"));
            }
            if self.store.get_named(idx::NAMESPACES, "", &namespace).is_none() {
                return Err(ApiError::not_found(&RESOURCES[idx::NAMESPACES], &namespace));
            }
        } else if let Some(m) = value["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let uid = self.uid();
        let now = rfc3339(self.now());
        let metadata = &mut value["metadata"];
        metadata["uid"] = json!(uid);
        metadata["creationTimestamp"] = json!(now);
        metadata["generation"] = json!(1);
        if let Some(m) = metadata.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("resourceVersion");
            // The API server stores no null: a template without annotations gives a pod
            // without them (the real server's schema check found `annotations: null`).
            m.retain(|_, v| !v.is_null());
        }
        defaults(self, resource, &mut value);
        super::validation::validate(resource, &value)?;
        self.store.insert(resource, value)
    }

    /// Replaces an object as `PUT` does, with optimistic concurrency on resourceVersion.
    /// Through the main resource the stored status is kept; through `/status` only the
    /// status changes.
    pub(crate) fn update(
        &mut self,
        resource: usize,
        key: &Key,
        mut value: Value,
        status: bool,
    ) -> Result<Object, ApiError> {
        let rt = &RESOURCES[resource];
        let current = self.store.get(resource, key).ok_or_else(|| ApiError::not_found(rt, &key.1))?;
        if value["metadata"]["name"].as_str().is_some_and(|n| n != key.1) {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        if let Some(rv) = value["metadata"]["resourceVersion"].as_str()
            && rv != current.meta.resource_version.to_string()
        {
            return Err(ApiError::conflict(rt, &key.1));
        }
        let old = current.value();
        let merged = if status {
            let mut v = old.clone();
            v["status"] = value["status"].take();
            v
        } else {
            if rt.has_status {
                value["status"] = old["status"].clone();
            }
            for immutable in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"] {
                value["metadata"][immutable] = old["metadata"][immutable].clone();
            }
            if let Some(m) = value["metadata"].as_object_mut() {
                m.retain(|_, v| !v.is_null());
            }
            value["apiVersion"] = json!(rt.api_version());
            value["kind"] = json!(rt.kind);
            if value["spec"] != old["spec"] {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                value["metadata"]["generation"] = json!(generation);
            } else {
                value["metadata"]["generation"] = old["metadata"]["generation"].clone();
            }
            value
        };
        if merged == old {
            return Ok(current.clone());
        }
        super::validation::validate(resource, &merged)?;
        self.store.replace(resource, merged)
    }

    /// Applies a patch as `PATCH` does.
    pub(crate) fn patch(
        &mut self,
        resource: usize,
        key: &Key,
        patch_type: PatchType,
        body: &[u8],
        status: bool,
    ) -> Result<Object, ApiError> {
        let rt = &RESOURCES[resource];
        let current = self.store.get(resource, key).ok_or_else(|| ApiError::not_found(rt, &key.1))?;
        let mut value = current.value();
        apply_patch(patch_type, &mut value, body)?;
        self.update(resource, key, value, status)
    }

    /// Deletes an object. Pods on a node terminate gracefully: they stay, Terminating, with a
    /// deletionTimestamp, for their grace period, then disappear. Everything else goes at
    /// once, and what it owned is collected by the controllers.
    pub(crate) fn delete(&mut self, resource: usize, key: &Key, grace: Option<i64>) -> Result<Object, ApiError> {
        let rt = &RESOURCES[resource];
        let current = self.store.get(resource, key).ok_or_else(|| ApiError::not_found(rt, &key.1))?.clone();
        if resource != idx::PODS {
            if resource == idx::NAMESPACES {
                self.delete_namespace_contents(&key.1);
            }
            return self.store.remove(resource, key).ok_or_else(|| ApiError::not_found(rt, &key.1));
        }
        let pod = current.value();
        let scheduled = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        let terminal = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        let grace = grace.unwrap_or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0);
        if grace == 0 || !scheduled || terminal {
            return self.store.remove(resource, key).ok_or_else(|| ApiError::not_found(rt, &key.1));
        }
        let now = self.now();
        let deadline = now.saturating_add(SignedDuration::from_secs(grace)).unwrap_or(now);
        if let Some(existing) = pod["metadata"]["deletionTimestamp"].as_str().and_then(|t| t.parse::<Timestamp>().ok())
            && existing <= deadline
        {
            return Ok(current);
        }
        let uid = current.meta.uid.clone();
        let updated = self
            .store
            .update(resource, key, |v| {
                v["metadata"]["deletionTimestamp"] = json!(rfc3339(deadline));
                v["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            })
            .ok_or_else(|| ApiError::not_found(rt, &key.1))?;
        self.at(Duration::from_secs(grace.unsigned_abs()), Timer::PodGone { key: key.clone(), uid });
        Ok(updated)
    }

    fn delete_namespace_contents(&mut self, namespace: &str) {
        for resource in (0..RESOURCES.len()).filter(|r| RESOURCES[*r].namespaced) {
            let keys: Vec<Key> = self.store.iter(resource, Some(namespace)).map(|o| o.meta.key()).collect();
            for key in keys {
                self.store.remove(resource, &key);
            }
        }
    }

    /// The eviction subresource: deletes the pod unless a PodDisruptionBudget forbids it,
    /// answering 429 with the API server's own Status when it does.
    pub(crate) fn evict(&mut self, key: &Key, body: &Value) -> Result<Value, ApiError> {
        let pods = &RESOURCES[idx::PODS];
        let pod = self.store.get(idx::PODS, key).ok_or_else(|| ApiError::not_found(pods, &key.1))?.clone();
        let grace = body["deleteOptions"]["gracePeriodSeconds"].as_i64();
        if pod.meta.deleting {
            return Ok(success(201));
        }
        let value = pod.value();
        let terminal = matches!(value["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        let budgets: Vec<Object> = self
            .store
            .iter(idx::PDBS, Some(&key.0))
            .filter(|pdb| selector_matches(&pdb.value()["spec"]["selector"], &pod.meta.labels))
            .cloned()
            .collect();
        if terminal || budgets.is_empty() {
            self.delete(idx::PODS, key, grace)?;
            return Ok(success(201));
        }
        if budgets.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        let pdb = &budgets[0];
        let status = budget_status(self, &pdb.value());
        let healthy = pod.meta.ready;
        if healthy && status.disruptions_allowed <= 0 {
            return Err(ApiError::disruption_budget(
                &pdb.meta.name,
                format!("needs {} healthy pods and has {} currently", status.desired_healthy, status.current_healthy),
            ));
        }
        if !healthy && status.current_healthy < status.desired_healthy {
            return Err(ApiError::disruption_budget(
                &pdb.meta.name,
                format!("needs {} healthy pods and has {} currently", status.desired_healthy, status.current_healthy),
            ));
        }
        if healthy {
            let now = rfc3339(self.now());
            let pod_name = key.1.clone();
            self.store.update(idx::PDBS, &pdb.meta.key(), |v| {
                let allowed = v["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                v["status"]["disruptionsAllowed"] = json!((allowed - 1).max(0));
                v["status"]["disruptedPods"][pod_name] = json!(now);
            });
        }
        self.delete(idx::PODS, key, grace)?;
        Ok(success(201))
    }

    /// Changes a node's `Ready` condition.
    pub(crate) fn set_node_ready(&mut self, name: &str, ready: bool, reason: &str, message: &str) {
        let now = rfc3339(self.now());
        let status = if ready { "True" } else { "False" };
        self.store.update(idx::NODES, &(String::new(), name.to_owned()), |node| {
            let conditions = node["status"]["conditions"].as_array_mut();
            let mut found = false;
            for c in conditions.into_iter().flatten() {
                if c["type"] == "Ready" {
                    found = true;
                    if c["status"] != status {
                        c["lastTransitionTime"] = json!(now);
                    }
                    c["status"] = json!(status);
                    c["reason"] = json!(reason);
                    c["message"] = json!(message);
                    c["lastHeartbeatTime"] = json!(now);
                }
            }
            if !found {
                let condition = json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": now});
                match node["status"]["conditions"].as_array_mut() {
                    Some(list) => list.push(condition),
                    None => node["status"]["conditions"] = json!([condition]),
                }
            }
        });
    }

    /// Reboots a node now: NotReady at once, back Ready with a new bootID (and any pending
    /// upgrade applied) after `down_for`, or never when `stays_down`.
    pub(crate) fn reboot(&mut self, name: &str, down_for: Duration, stays_down: bool) -> Result<(), ApiError> {
        if self.store.get_named(idx::NODES, "", name).is_none() {
            return Err(ApiError::not_found(&RESOURCES[idx::NODES], name));
        }
        let maintenance = self.maintenance.entry(name.to_owned()).or_default();
        maintenance.generation += 1;
        maintenance.lost |= stays_down;
        let generation = maintenance.generation;
        let lost = maintenance.lost;
        self.set_node_ready(name, false, "KubeletNotReady", "node is rebooting (simulated)");
        if !lost {
            self.at(down_for, Timer::NodeBack { name: name.to_owned(), generation });
        }
        Ok(())
    }

    /// Brings a rebooted node back: new bootID, upgraded versions, Ready.
    pub(crate) fn node_back(&mut self, name: &str, generation: u64) {
        let Some(maintenance) = self.maintenance.get(name).cloned() else { return };
        if maintenance.generation != generation {
            return;
        }
        let boot_id = self.uid();
        self.store.update(idx::NODES, &(String::new(), name.to_owned()), |node| {
            let info = &mut node["status"]["nodeInfo"];
            info["bootID"] = json!(boot_id);
            if let Some(version) = &maintenance.kubelet_version {
                info["kubeletVersion"] = json!(version);
                info["kubeProxyVersion"] = json!(version);
            }
            if let Some(image) = &maintenance.os_image {
                info["osImage"] = json!(image);
            }
        });
        self.set_node_ready(name, true, "KubeletReady", "kubelet is posting ready status");
    }
}
