//! The control API under `/sim/v1/` (outside `/api` and `/apis`, and never subject to
//! injected faults): what happens to machines rather than to API objects. Reboots and
//! upgrades of nodes, faults, and simulated time. `noderoll sim ctl` is its client, and the
//! example plans' upgrade hooks call that.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Shared;
use super::api::Reply;
use super::clock::rfc3339;
use super::controllers;
use super::faults::FaultSettings;
use super::resources::idx;
use super::status::ApiError;

/// `POST /sim/v1/nodes/NAME/upgrade`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The kubelet version the node reports once back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_version: Option<String>,
    /// The OS image the node reports once back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_image: Option<String>,
    /// Simulated time the upgrade works before it reboots (`5m`); the request returns then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<String>,
    /// Simulated time the node is down for its reboot; the simulator's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_for: Option<String>,
    /// The node never comes back, whatever reboots or upgrades follow.
    #[serde(default)]
    pub fails: bool,
}

/// `POST /sim/v1/nodes/NAME/reboot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebootRequest {
    /// Simulated time the node is down; the simulator's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_for: Option<String>,
    /// The node never comes back, whatever reboots or upgrades follow.
    #[serde(default)]
    pub fails: bool,
}

/// `POST /sim/v1/clock/advance`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvanceRequest {
    /// Simulated time to skip (`8h`).
    pub by: String,
}

/// A duration as plans write them (`90s`, `1h30m`); zero is allowed. The error names the
/// text, as a request's or a flag's error must.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::plan::duration::parse(text).map_err(|e| format!("`{text}`: {e}"))
}

fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

fn duration_or(text: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    text.map_or(Ok(default), |t| parse_duration(t).map_err(ApiError::bad_request))
}

/// What `GET /sim/v1/state` reports.
fn state(shared: &Shared) -> Value {
    let cluster = shared.lock();
    json!({
        "now": rfc3339(cluster.now()),
        "timeScale": cluster.clock.scale(),
        "resourceVersion": cluster.store.resource_version().to_string(),
        "nodes": cluster.store.len(idx::NODES),
        "pods": cluster.store.len(idx::PODS),
        "faults": shared.faults().settings(),
        "reboots": cluster.maintenance.iter().map(|(name, m)| (name.clone(), m.generation)).collect::<std::collections::BTreeMap<_, _>>(),
    })
}

pub(crate) async fn handle(shared: &Arc<Shared>, method: &http::Method, path: &str, bytes: &[u8]) -> Reply {
    match serve(shared, method, path, bytes).await {
        Ok(value) => Reply::Json(200, bytes::Bytes::from(value.to_string())),
        Err(error) => Reply::Json(error.code, bytes::Bytes::from(error.to_status().to_string())),
    }
}

async fn serve(shared: &Arc<Shared>, method: &http::Method, path: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["sim", "v1", "state"]) => Ok(state(shared)),
        ("GET", ["sim", "v1", "faults"]) => Ok(json!(shared.faults().settings())),
        ("PUT", ["sim", "v1", "faults"]) => {
            let settings: FaultSettings = body(bytes)?;
            settings.validate().map_err(ApiError::bad_request)?;
            shared.faults().set(settings);
            Ok(json!(shared.faults().settings()))
        }
        ("DELETE", ["sim", "v1", "faults"]) => {
            shared.faults().set(FaultSettings::default());
            Ok(json!(shared.faults().settings()))
        }
        ("POST", ["sim", "v1", "clock", "advance"]) => {
            let request: AdvanceRequest = serde_json::from_slice(bytes)
                .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
            let by = parse_duration(&request.by).map_err(ApiError::bad_request)?;
            {
                let mut cluster = shared.lock();
                cluster.clock.advance(by);
                controllers::tick(&mut cluster);
            }
            Ok(state(shared))
        }
        ("POST", ["sim", "v1", "nodes", name, "reboot"]) => {
            let request: RebootRequest = body(bytes)?;
            let mut cluster = shared.lock();
            let down_for = duration_or(request.down_for.as_deref(), cluster.behaviour.reboot)?;
            cluster.reboot(name, down_for, request.fails)?;
            Ok(json!({"node": name, "rebooting": true, "downFor": format!("{}s", down_for.as_secs())}))
        }
        ("POST", ["sim", "v1", "nodes", name, "upgrade"]) => {
            let request: UpgradeRequest = body(bytes)?;
            let (work, down_for) = {
                let mut cluster = shared.lock();
                if cluster.store.get_named(idx::NODES, "", name).is_none() {
                    return Err(ApiError::not_found(&super::resources::RESOURCES[idx::NODES], name));
                }
                let down_for = duration_or(request.down_for.as_deref(), cluster.behaviour.reboot)?;
                let work = duration_or(request.work.as_deref(), Duration::ZERO)?;
                let maintenance = cluster.maintenance.entry((*name).to_owned()).or_default();
                if request.kubelet_version.is_some() {
                    maintenance.kubelet_version.clone_from(&request.kubelet_version);
                }
                if request.os_image.is_some() {
                    maintenance.os_image.clone_from(&request.os_image);
                }
                (cluster.clock.real(work), down_for)
            };
            tokio::time::sleep(work).await;
            shared.lock().reboot(name, down_for, request.fails)?;
            Ok(json!({"node": name, "rebooting": true, "downFor": format!("{}s", down_for.as_secs())}))
        }
        _ => Err(ApiError::path_not_found()),
    }
}
