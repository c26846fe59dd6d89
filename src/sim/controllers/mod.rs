//! What reacts to changes in the simulated cluster, each a small stand-in for its real
//! counterpart and each in its own module: the [`scheduler`] (cordons, taints,
//! nodeSelector), the [`kubelet`] (pods start, go unready with their node), the
//! [`workloads`] controllers (Deployment, ReplicaSet, StatefulSet, DaemonSet), the
//! [`disruption`] controller (live PDB status), and Juno users whose [`sessions`] end and
//! start again. This module routes the change stream to them, fires the cluster's timers
//! and collects garbage.
//!
//! Controllers see changes through the store's change stream and keep indexes of their own,
//! so a tick costs in proportion to what changed, not to the size of the cluster.

use std::sync::Arc;

use rand::RngExt;
use serde_json::Value;

mod disruption;
mod kubelet;
mod scheduler;
mod sessions;
mod workloads;

use self::kubelet::{set_pod_ready, start_pod};
use self::sessions::session_template;
use super::cluster::{Cluster, NodeInfo, Timer};
use super::resources::{RESOURCES, idx};
use super::store::{Event, EventType, Key, Meta};

fn is_workload(resource: usize) -> bool {
    matches!(resource, idx::DEPLOYMENTS | idx::REPLICASETS | idx::STATEFULSETS | idx::DAEMONSETS)
}

/// Runs the cluster forward to now: due timers, then the controllers, until nothing changes.
pub(crate) fn tick(cluster: &mut Cluster) {
    for timer in cluster.due_timers() {
        fire(cluster, timer);
    }
    // Each pass reacts to the previous pass's writes; a handful always settles the chains
    // (Deployment → ReplicaSet → Pod → PDB), the bound only guards against a feedback bug.
    for _ in 0..8 {
        let events = cluster.store.take_unreconciled();
        if events.is_empty() {
            break;
        }
        for event in &events {
            observe(cluster, event);
        }
        run_controllers(cluster);
    }
}

fn fire(cluster: &mut Cluster, timer: Timer) {
    match timer {
        Timer::PodReady { key, uid } => start_pod(cluster, &key, &uid),
        Timer::PodGone { key, uid } => {
            if cluster.store.get(idx::PODS, &key).is_some_and(|p| p.meta.uid == uid) {
                cluster.store.remove(idx::PODS, &key);
            }
        }
        Timer::SessionEnds { key, uid } => {
            if cluster.store.get(idx::PODS, &key).is_some_and(|p| p.meta.uid == uid && !p.meta.deleting) {
                // The pod exists: deletion cannot fail.
                let _ = cluster.delete(idx::PODS, &key, None);
            }
        }
        Timer::SessionReconnect { template } => {
            if let Ok(pod) = serde_json::from_str::<Value>(&template) {
                // The namespace may have been deleted since; then the user stays away.
                let _ = cluster.create(idx::PODS, pod);
            }
        }
        Timer::NodeBack { name, generation } => cluster.node_back(&name, generation),
    }
}

fn observe(cluster: &mut Cluster, event: &Arc<Event>) {
    let meta = &event.object.meta;
    match event.resource {
        idx::NODES => observe_node(cluster, event),
        idx::PODS => observe_pod(cluster, event),
        idx::PDBS => {
            cluster.index.dirty_namespaces.insert(meta.namespace.clone());
        }
        r if is_workload(r) => {
            let entry = (r, meta.key());
            if event.kind == EventType::Deleted {
                cluster.index.workloads.remove(&meta.uid);
                collect_garbage(cluster, &meta.uid);
            } else {
                cluster.index.workloads.insert(meta.uid.clone(), entry.clone());
                cluster.index.dirty_workloads.insert(entry);
            }
            // A ReplicaSet's status is its Deployment's.
            if let Some((_, _, owner)) = &meta.controller
                && let Some(parent) = cluster.index.workloads.get(owner).cloned()
            {
                cluster.index.dirty_workloads.insert(parent);
            }
            if r == idx::REPLICASETS {
                track_owner(cluster, event, r);
            }
        }
        _ => {}
    }
}

fn observe_node(cluster: &mut Cluster, event: &Event) {
    let name = event.object.meta.name.clone();
    let old = cluster.index.nodes.get(&name).cloned();
    if event.kind == EventType::Deleted {
        cluster.index.nodes.remove(&name);
        cluster.index.daemonsets_dirty = true;
        return;
    }
    let info = NodeInfo::of(&event.object);
    if old.as_ref() == Some(&info) {
        return;
    }
    let was_ready = old.as_ref().is_some_and(|o| o.ready);
    let pods: Vec<Key> = cluster.index.node_pods.get(&name).into_iter().flatten().cloned().collect();
    if was_ready && !info.ready {
        for key in &pods {
            set_pod_ready(cluster, key, false);
        }
    } else if !was_ready && info.ready {
        let delay = cluster.behaviour.pod_start;
        for key in pods {
            if let Some(pod) = cluster.store.get(idx::PODS, &key).filter(|p| !p.meta.deleting && !p.meta.ready) {
                let uid = pod.meta.uid.clone();
                cluster.at(delay, Timer::PodReady { key, uid });
            }
        }
    }
    cluster.index.daemonsets_dirty = true;
    cluster.index.nodes.insert(name, info);
}

pub(crate) fn node_of(meta: &Meta) -> &str {
    meta.field(&RESOURCES[idx::PODS], "spec.nodeName").unwrap_or_default()
}

fn observe_pod(cluster: &mut Cluster, event: &Arc<Event>) {
    let meta = &event.object.meta;
    let key = meta.key();
    let node = node_of(meta).to_owned();
    let previous_node = event.previous.as_deref().map(node_of).unwrap_or_default().to_owned();
    cluster.index.dirty_namespaces.insert(meta.namespace.clone());
    if let Some((_, _, owner)) = &meta.controller
        && let Some(workload) = cluster.index.workloads.get(owner).cloned()
    {
        cluster.index.dirty_workloads.insert(workload);
    }
    track_owner(cluster, event, idx::PODS);
    if !previous_node.is_empty()
        && (previous_node != node || event.kind == EventType::Deleted)
        && let Some(set) = cluster.index.node_pods.get_mut(&previous_node)
    {
        set.remove(&key);
    }
    let session = meta.annotations.contains_key(&cluster.behaviour.session_annotation);
    if event.kind == EventType::Deleted {
        cluster.index.pending.remove(&key);
        if session {
            let template = session_template(&event.object.value());
            let delay = cluster.behaviour.session_reconnect;
            cluster.at(delay, Timer::SessionReconnect { template });
        }
        return;
    }
    if node.is_empty() {
        if meta.deleting {
            cluster.index.pending.remove(&key);
        } else {
            cluster.index.pending.insert(key.clone());
        }
    } else {
        cluster.index.pending.remove(&key);
        cluster.index.node_pods.entry(node.clone()).or_default().insert(key.clone());
        let newly_placed = previous_node.is_empty();
        let phase = meta.field(&RESOURCES[idx::PODS], "status.phase").unwrap_or_default();
        if newly_placed && !meta.ready && !meta.deleting && !matches!(phase, "Succeeded" | "Failed") {
            let delay = cluster.behaviour.pod_start;
            cluster.at(delay, Timer::PodReady { key: key.clone(), uid: meta.uid.clone() });
        }
    }
    if event.kind == EventType::Added && session && !meta.deleting {
        let (low, high) = cluster.behaviour.session_lifetime;
        let lifetime = if high > low { cluster.rng.random_range(low..=high) } else { low };
        cluster.at(lifetime, Timer::SessionEnds { key, uid: meta.uid.clone() });
    }
}

/// Keeps the owner → dependents index for pods and ReplicaSets.
fn track_owner(cluster: &mut Cluster, event: &Event, resource: usize) {
    let meta = &event.object.meta;
    let Some((_, _, owner)) = &meta.controller else { return };
    let entry = (resource, meta.key());
    if event.kind == EventType::Deleted {
        if let Some(set) = cluster.index.owned.get_mut(owner) {
            set.remove(&entry);
        }
    } else {
        cluster.index.owned.entry(owner.clone()).or_default().insert(entry);
    }
}

fn collect_garbage(cluster: &mut Cluster, owner: &str) {
    for (resource, key) in cluster.index.owned.remove(owner).into_iter().flatten() {
        // A dependent already gone needs nothing.
        let _ = cluster.delete(resource, &key, None);
    }
}

fn run_controllers(cluster: &mut Cluster) {
    if std::mem::take(&mut cluster.index.daemonsets_dirty) {
        let all: Vec<(usize, Key)> =
            cluster.store.iter(idx::DAEMONSETS, None).map(|o| (idx::DAEMONSETS, o.meta.key())).collect();
        cluster.index.dirty_workloads.extend(all);
    }
    for (resource, key) in std::mem::take(&mut cluster.index.dirty_workloads) {
        let Some(object) = cluster.store.get(resource, &key) else { continue };
        let value = object.value();
        let uid = object.meta.uid.clone();
        match resource {
            idx::DEPLOYMENTS => workloads::deployment(cluster, &key, &uid, &value),
            idx::REPLICASETS => workloads::replicaset(cluster, &key, &uid, &value),
            idx::STATEFULSETS => workloads::statefulset(cluster, &key, &uid, &value),
            idx::DAEMONSETS => workloads::daemonset(cluster, &key, &uid, &value),
            _ => {}
        }
    }
    scheduler::schedule(cluster);
    for namespace in std::mem::take(&mut cluster.index.dirty_namespaces) {
        let budgets: Vec<Key> = cluster.store.iter(idx::PDBS, Some(&namespace)).map(|o| o.meta.key()).collect();
        for key in budgets {
            disruption::update_budget(cluster, &key);
        }
    }
}
