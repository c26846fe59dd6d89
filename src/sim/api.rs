//! The Kubernetes API surface: discovery, and get/list/watch/create/update/patch/delete and
//! eviction on the served resources, with the real wire format (JSON objects with
//! resourceVersion, `Status` errors, newline-delimited watch events, server-side tables).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Shared;
use super::patch::PatchType;
use super::resources::{self, RESOURCES, ResourceType, idx};
use super::selection::Filter;
use super::status::ApiError;
use super::store::{Event, EventType, Key, Object};
use super::table;

/// A request, as the handlers need it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) accept: String,
    pub(crate) content_type: String,
    pub(crate) body: Bytes,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
}

/// A response: a JSON body, or a watch stream.
pub(crate) enum Reply {
    Json(u16, Bytes),
    Text(u16, &'static str),
    Watch(mpsc::Receiver<Bytes>),
}

impl Reply {
    fn json(code: u16, value: &Value) -> Reply {
        Reply::Json(code, Bytes::from(value.to_string()))
    }
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Resource { resource: usize, namespace: Option<String>, name: Option<String>, subresource: Option<String> },
    Unknown,
}

pub(crate) fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Route::Version,
        ["healthz" | "readyz" | "livez"] => return Route::Health,
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", group] => return Route::Group((*group).to_owned()),
        ["api", version] => return Route::Resources(String::new(), (*version).to_owned()),
        ["apis", group, version] => return Route::Resources((*group).to_owned(), (*version).to_owned()),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Unknown,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] if resources::find(group, version, plural).is_some() => {
            (Some((*ns).to_owned()), std::iter::once(*plural).chain(more.iter().copied()).collect::<Vec<_>>())
        }
        _ => (None, rest.to_vec()),
    };
    let Some(resource) = rest.first().and_then(|plural| resources::find(group, version, plural)) else {
        return Route::Unknown;
    };
    if rest.len() > 3 || (namespace.is_some() && !RESOURCES[resource].namespaced) {
        return Route::Unknown;
    }
    Route::Resource {
        resource,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    }
}

/// The audit verb of a request, as the API server names it.
pub(crate) fn verb(method: &http::Method, route: &Route, query: &HashMap<String, String>) -> &'static str {
    let named = matches!(route, Route::Resource { name: Some(_), .. });
    match *method {
        http::Method::GET if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => "watch",
        http::Method::GET if named || !matches!(route, Route::Resource { .. }) => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

pub(crate) fn handle(shared: &Arc<Shared>, request: &Request) -> Reply {
    match serve(shared, request) {
        Ok(reply) => reply,
        Err(error) => Reply::json(error.code, &error.to_status()),
    }
}

fn serve(shared: &Arc<Shared>, request: &Request) -> Result<Reply, ApiError> {
    let route = route(&request.path);
    let get_only = |value: Option<Value>| -> Result<Reply, ApiError> {
        if request.method != http::Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        value.map(|v| Reply::json(200, &v)).ok_or_else(ApiError::path_not_found)
    };
    match route {
        Route::Version => get_only(Some(json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0+noderoll-sim", "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64",
        }))),
        Route::Health => Ok(Reply::Text(200, "ok")),
        Route::CoreVersions => get_only(Some(resources::core_versions(&shared.address))),
        Route::Groups => get_only(Some(resources::group_list())),
        Route::Group(group) => get_only(resources::group(&group)),
        Route::Resources(group, version) => get_only(resources::resource_list(&group, &version)),
        Route::Unknown => Err(ApiError::path_not_found()),
        Route::Resource { resource, namespace, name, subresource } => {
            let target = Target { resource, namespace, name, subresource };
            resource_request(shared, request, &target)
        }
    }
}

struct Target {
    resource: usize,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn rt(&self) -> &'static ResourceType {
        &RESOURCES[self.resource]
    }

    fn key(&self) -> Result<Key, ApiError> {
        let name = self.name.clone().unwrap_or_default();
        if self.rt().namespaced && self.namespace.is_none() {
            return Err(ApiError::path_not_found());
        }
        Ok((self.namespace.clone().unwrap_or_default(), name))
    }

    /// Whether the subresource is one this request may address.
    fn status_subresource(&self, method: &http::Method) -> Result<bool, ApiError> {
        match self.subresource.as_deref() {
            None => Ok(false),
            Some("status") if self.rt().has_status => Ok(true),
            Some("eviction") if self.resource == idx::PODS && *method == http::Method::POST => Ok(false),
            Some(_) => Err(ApiError::path_not_found()),
        }
    }
}

fn body_json(request: &Request) -> Result<Value, ApiError> {
    if request.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&request.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

fn resource_request(shared: &Arc<Shared>, request: &Request, target: &Target) -> Result<Reply, ApiError> {
    let status = target.status_subresource(&request.method)?;
    let method = &request.method;
    let mut cluster = shared.lock();
    let rt = target.rt();
    match (method, &target.name) {
        (&http::Method::GET, None) if request.flag("watch") => {
            drop(cluster);
            watch(shared, request, target)
        }
        (&http::Method::GET, None) => list(&cluster, request, target),
        (&http::Method::GET, Some(_)) => {
            let key = target.key()?;
            let object = cluster.store.get(target.resource, &key).ok_or_else(|| ApiError::not_found(rt, &key.1))?;
            if request.wants_table() {
                let now = cluster.now();
                return Ok(Reply::json(200, &table::render(target.resource, &[object], now, &request.query, 0)));
            }
            Ok(Reply::Json(200, object.raw.clone()))
        }
        (&http::Method::POST, None) => {
            let mut value = body_json(request)?;
            if let Some(ns) = &target.namespace {
                match value["metadata"]["namespace"].as_str() {
                    Some(given) if given != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    _ => value["metadata"]["namespace"] = json!(ns),
                }
            }
            let created = cluster.create(target.resource, value)?;
            Ok(Reply::Json(201, created.raw))
        }
        (&http::Method::POST, Some(_)) if target.subresource.as_deref() == Some("eviction") => {
            let key = target.key()?;
            let body = body_json(request)?;
            Ok(Reply::json(201, &cluster.evict(&key, &body)?))
        }
        (&http::Method::PUT, Some(_)) => {
            let key = target.key()?;
            let updated = cluster.update(target.resource, &key, body_json(request)?, status)?;
            Ok(Reply::Json(200, updated.raw))
        }
        (&http::Method::PATCH, Some(_)) => {
            let key = target.key()?;
            let patch_type = PatchType::from_content_type(&request.content_type)?;
            let patched = cluster.patch(target.resource, &key, patch_type, &request.body, status)?;
            Ok(Reply::Json(200, patched.raw))
        }
        (&http::Method::DELETE, Some(_)) => {
            let key = target.key()?;
            let deleted = cluster.delete(target.resource, &key, grace_period(request)?)?;
            Ok(Reply::Json(200, deleted.raw))
        }
        (&http::Method::DELETE, None) => {
            let filter = Filter::parse(rt, request.param("labelSelector"), request.param("fieldSelector"))?;
            let grace = grace_period(request)?;
            let keys: Vec<Key> = cluster
                .store
                .iter(target.resource, target.namespace.as_deref())
                .filter(|o| filter.matches(rt, &o.meta))
                .map(|o| o.meta.key())
                .collect();
            let mut items = Vec::new();
            for key in keys {
                items.push(cluster.delete(target.resource, &key, grace)?.raw);
            }
            let rv = cluster.store.resource_version();
            Ok(Reply::Json(200, list_body(rt, rv, None, &items)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `gracePeriodSeconds` from the query or the DeleteOptions body.
fn grace_period(request: &Request) -> Result<Option<i64>, ApiError> {
    if let Some(text) = request.param("gracePeriodSeconds") {
        return text.parse().map(Some).map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"));
    }
    Ok(body_json(request)?["gracePeriodSeconds"].as_i64())
}

fn encode_continue(key: &Key) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\u{0}{}", key.0, key.1))
}

fn decode_continue(token: &str) -> Result<Key, ApiError> {
    let invalid = || ApiError::bad_request("continue key is not valid");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (ns, name) = text.split_once('\u{0}').ok_or_else(invalid)?;
    Ok((ns.to_owned(), name.to_owned()))
}

fn list_body(rt: &ResourceType, resource_version: u64, next: Option<(&str, usize)>, items: &[Bytes]) -> Bytes {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some((token, remaining)) = next {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(remaining);
    }
    let head =
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata}).to_string();
    let size = head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 16;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(&head.as_bytes()[..head.len() - 1]);
    out.put_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(item);
    }
    out.put_slice(b"]}");
    out.freeze()
}

fn list(cluster: &super::cluster::Cluster, request: &Request, target: &Target) -> Result<Reply, ApiError> {
    let rt = target.rt();
    let filter = Filter::parse(rt, request.param("labelSelector"), request.param("fieldSelector"))?;
    let limit = match request.param("limit") {
        Some(text) => text.parse::<usize>().map_err(|_| ApiError::bad_request("limit must be a positive integer"))?,
        None => 0,
    };
    let namespace = target.namespace.as_deref();
    let objects: Box<dyn Iterator<Item = &Object>> = match request.param("continue").filter(|t| !t.is_empty()) {
        Some(token) => Box::new(cluster.store.iter_after(target.resource, namespace, &decode_continue(token)?)),
        None => cluster.store.iter(target.resource, namespace),
    };
    let mut matching = objects.filter(|o| filter.matches(rt, &o.meta));
    let mut page: Vec<&Object> = Vec::new();
    for object in matching.by_ref() {
        page.push(object);
        if limit > 0 && page.len() == limit {
            break;
        }
    }
    let remaining = if limit > 0 && page.len() == limit { matching.count() } else { 0 };
    let token = (remaining > 0).then(|| page.last().map(|o| encode_continue(&o.meta.key()))).flatten();
    let rv = cluster.store.resource_version();
    if request.wants_table() {
        let mut table = table::render(target.resource, &page, cluster.now(), &request.query, rv);
        if let Some(token) = &token {
            table["metadata"]["continue"] = json!(token);
            table["metadata"]["remainingItemCount"] = json!(remaining);
        }
        return Ok(Reply::json(200, &table));
    }
    let items: Vec<Bytes> = page.iter().map(|o| o.raw.clone()).collect();
    Ok(Reply::Json(200, list_body(rt, rv, token.as_deref().map(|t| (t, remaining)), &items)))
}

fn event_line(kind: &str, raw: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + 32);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",\"object\":");
    out.put_slice(raw);
    out.put_slice(b"}\n");
    out.freeze()
}

fn bookmark_line(rt: &ResourceType, resource_version: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata});
    event_line("BOOKMARK", object.to_string().as_bytes())
}

/// Which objects a watch sees.
struct WatchScope {
    resource: usize,
    namespace: Option<String>,
    filter: Filter,
}

impl WatchScope {
    fn sees(&self, meta: &super::store::Meta) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == meta.namespace)
            && self.filter.matches(&RESOURCES[self.resource], meta)
    }

    /// The line a watcher gets for a change: a change that moves an object out of the
    /// selection is DELETED for it, one that moves an object in is ADDED.
    fn line(&self, event: &Event) -> Option<Bytes> {
        if event.resource != self.resource {
            return None;
        }
        let now = self.sees(&event.object.meta);
        let before = event.previous.as_ref().map_or(now, |p| self.sees(p));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Deleted, b, n) if b || n => EventType::Deleted,
            _ => return None,
        };
        Some(event_line(kind.as_str(), &event.object.raw))
    }
}

fn watch(shared: &Arc<Shared>, request: &Request, target: &Target) -> Result<Reply, ApiError> {
    let rt = target.rt();
    let scope = WatchScope {
        resource: target.resource,
        namespace: target.namespace.clone(),
        filter: Filter::parse(rt, request.param("labelSelector"), request.param("fieldSelector"))?,
    };
    let bookmarks = request.flag("allowWatchBookmarks");
    let initial_events_end = request.flag("sendInitialEvents");
    let timeout = request.param("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800);
    let since = request.param("resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0");
    let (mut lines, receiver, mut last) = {
        let cluster = shared.lock();
        let current = cluster.store.resource_version();
        match since.filter(|_| !initial_events_end) {
            Some(text) => {
                let since: u64 =
                    text.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {text}")))?;
                let Some((history, receiver)) = cluster.store.watch_from(since) else {
                    let compacted = cluster.store.compacted();
                    let gone = ApiError::gone(format!("too old resource version: {since} ({compacted})"));
                    // Like the API server: the watch starts, and its first event says 410.
                    let line = event_line("ERROR", gone.to_status().to_string().as_bytes());
                    return Ok(Reply::Watch(stream_of(vec![line])));
                };
                let lines: Vec<Bytes> = history.iter().filter_map(|e| scope.line(e)).collect();
                (lines, receiver, current.max(since))
            }
            None => {
                let mut lines: Vec<Bytes> = cluster
                    .store
                    .iter(target.resource, target.namespace.as_deref())
                    .filter(|o| scope.sees(&o.meta))
                    .map(|o| event_line("ADDED", &o.raw))
                    .collect();
                if initial_events_end {
                    lines.push(bookmark_line(rt, current, true));
                }
                let Some((_, receiver)) = cluster.store.watch_from(current) else {
                    return Err(ApiError::internal("the watch history lost its newest event"));
                };
                (lines, receiver, current)
            }
        }
    };
    let (sender, out) = mpsc::channel(256);
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        for line in lines.drain(..) {
            if sender.send(line).await.is_err() {
                return;
            }
        }
        pump(scope, receiver, sender, &mut last, bookmarks, interval, Duration::from_secs(timeout)).await;
    });
    Ok(Reply::Watch(out))
}

fn stream_of(lines: Vec<Bytes>) -> mpsc::Receiver<Bytes> {
    let (sender, out) = mpsc::channel(lines.len().max(1));
    for line in lines {
        // The channel has room for every line.
        let _ = sender.try_send(line);
    }
    out
}

async fn pump(
    scope: WatchScope,
    mut receiver: broadcast::Receiver<Arc<Event>>,
    sender: mpsc::Sender<Bytes>,
    last: &mut u64,
    bookmarks: bool,
    interval: Duration,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Ok(event) => {
                    *last = (*last).max(event.object.meta.resource_version);
                    if let Some(line) = scope.line(&event)
                        && sender.send(line).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher that fell too far behind is closed, as the API server does;
                // the client watches again from its last resourceVersion.
                Err(_) => return,
            },
            _ = ticker.tick(), if bookmarks => {
                if sender.send(bookmark_line(&RESOURCES[scope.resource], *last, false)).await.is_err() {
                    return;
                }
            }
            () = &mut deadline => return,
            () = sender.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let pods = resources::find("", "v1", "pods");
        assert_eq!(
            route("/api/v1/namespaces/juno/pods/web-1/eviction"),
            Route::Resource {
                resource: idx::PODS,
                namespace: Some("juno".into()),
                name: Some("web-1".into()),
                subresource: Some("eviction".into())
            }
        );
        assert_eq!(pods, Some(idx::PODS));
        assert_eq!(
            route("/api/v1/namespaces/juno"),
            Route::Resource {
                resource: idx::NAMESPACES,
                namespace: None,
                name: Some("juno".into()),
                subresource: None
            }
        );
        assert_eq!(
            route("/apis/policy/v1/poddisruptionbudgets"),
            Route::Resource { resource: idx::PDBS, namespace: None, name: None, subresource: None }
        );
        assert_eq!(route("/api/v1/namespaces/x/nodes"), Route::Unknown);
        assert_eq!(route("/apis/apps/v1"), Route::Resources("apps".into(), "v1".into()));
        assert_eq!(route("/apis/nope/v1/things"), Route::Unknown);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("juno".to_owned(), "web-1".to_owned());
        assert_eq!(decode_continue(&encode_continue(&key)).expect("valid"), key);
        assert!(decode_continue("%%%").is_err());
    }

    #[test]
    fn list_bodies_are_valid_json() {
        let items = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{\"b\":2}")];
        let body = list_body(&RESOURCES[idx::PODS], 7, Some(("tok", 3)), &items);
        let parsed: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(parsed["kind"], "PodList");
        assert_eq!(parsed["metadata"]["resourceVersion"], "7");
        assert_eq!(parsed["metadata"]["remainingItemCount"], 3);
        assert_eq!(parsed["items"][1]["b"], 2);
    }
}
