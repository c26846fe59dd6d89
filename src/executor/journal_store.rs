//! Where a rollout's journal lives. On the operator's machine it is a file (each record
//! fsync'd before the step acts). A rollout run inside the cluster (the CronJob of
//! `noderoll manifests`) has no lasting disk, so its journal is a ConfigMap: each append
//! replaces the ConfigMap with `metadata.resourceVersion` set to the version last read, so
//! of two writers only one can win. The other gets 409 Conflict, reads again, and goes on
//! only if what was added meanwhile is approvals (`noderoll approve`); anything else means
//! a second rollout, and the journal refuses to continue.
//!
//! The ConfigMap holds the JSON lines gzip-compressed in `binaryData` (journals compress
//! about tenfold), which keeps a rollout of thousands of nodes under the 1 MiB object limit.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::journal::{self, Journal, JournalError, Record, Replay, Request};
use crate::world::retry::{self, Patience};

/// The key of the compressed journal in the ConfigMap's `binaryData`.
pub const KEY: &str = "journal.jsonl.gz";
/// Refuse to grow past this (the API server's limit for an object is about 1.5 MiB; a
/// ConfigMap's data 1 MiB).
const LIMIT: usize = 900 * 1024;
/// How often a ConfigMap journal is read for new approvals (a file is read at every poll).
const APPROVAL_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the journal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file.
    File(PathBuf),
    /// A ConfigMap in the cluster.
    ConfigMap {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::ConfigMap { namespace, name } => write!(f, "configmap/{name} in namespace {namespace}"),
        }
    }
}

impl Location {
    /// `NAMESPACE/NAME` as `--journal-configmap` takes it.
    pub fn config_map(text: &str) -> Result<Location, String> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Location::ConfigMap { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("`{text}` is not NAMESPACE/NAME, e.g. `noderoll/studio-journal`")),
        }
    }
}

/// An open journal.
pub enum Store {
    /// A file.
    File(Journal),
    /// A ConfigMap (boxed: it carries an API client and the journal's text).
    ConfigMap(Box<ConfigMapJournal>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::File(j) => f.debug_tuple("File").field(&j.path()).finish(),
            Store::ConfigMap(j) => f.debug_tuple("ConfigMap").field(&j.name).finish(),
        }
    }
}

/// Reads and replays the journal; a missing one is empty.
pub async fn read(location: &Location, client: &kube::Client, patience: &Patience) -> Result<Replay, JournalError> {
    match location {
        Location::File(path) => journal::read(path),
        Location::ConfigMap { .. } => {
            let (text, _) = fetch(location, client, patience).await?;
            journal::parse(&PathBuf::from(location.to_string()), text.as_bytes())
        }
    }
}

impl Store {
    /// Opens the journal for appending (a file's torn tail cut off; a ConfigMap created
    /// when missing).
    pub async fn open(
        location: &Location,
        client: &kube::Client,
        patience: &Patience,
        replay: &Replay,
    ) -> Result<Store, JournalError> {
        match location {
            Location::File(path) => Ok(Store::File(Journal::open(path, replay)?)),
            Location::ConfigMap { .. } => {
                Ok(Store::ConfigMap(Box::new(ConfigMapJournal::open(location, client, patience, true).await?)))
            }
        }
    }

    /// Appends one record; it is durable (on disk, or stored by the API server) when this
    /// returns.
    pub async fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        match self {
            Store::File(j) => j.append(record),
            Store::ConfigMap(j) => j.append(record).await,
        }
    }

    /// Requests (approvals, an abort) other processes added since the last call.
    pub async fn new_requests(&mut self) -> Result<Vec<Request>, JournalError> {
        match self {
            Store::File(j) => j.new_requests(),
            Store::ConfigMap(j) => j.new_requests().await,
        }
    }
}

/// Appends one request (an approval, an abort) as another process than the rollout's,
/// which may be appending meanwhile.
pub async fn append_once(
    location: &Location,
    client: &kube::Client,
    patience: &Patience,
    record: &Record,
) -> Result<(), JournalError> {
    match location {
        Location::File(path) => journal::append_to_path(path, record),
        Location::ConfigMap { .. } => {
            ConfigMapJournal::open(location, client, patience, false).await?.append_request(record).await
        }
    }
}

/// A journal kept in a ConfigMap.
pub struct ConfigMapJournal {
    client: kube::Client,
    api: Api<ConfigMap>,
    location: Location,
    name: String,
    patience: Patience,
    /// The journal as last read or written.
    text: String,
    /// The ConfigMap's resourceVersion then.
    version: String,
    /// Requests found while resolving a conflict, not yet handed out.
    requests: Vec<Request>,
    last_poll: Option<tokio::time::Instant>,
}

impl ConfigMapJournal {
    /// Reads the ConfigMap once. A missing one is created when `create` (a rollout
    /// starting); otherwise a missing or empty journal is an error (nothing to add to).
    async fn open(
        location: &Location,
        client: &kube::Client,
        patience: &Patience,
        create: bool,
    ) -> Result<ConfigMapJournal, JournalError> {
        let Location::ConfigMap { namespace, name } = location else {
            return Err(JournalError::Missing { location: location.to_string() });
        };
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let (text, version) = fetch(location, client, patience).await?;
        let version = match version {
            Some(v) if create || !text.trim().is_empty() => v,
            None if create => create_config_map(&api, client, location, name, patience).await?,
            _ => return Err(JournalError::Missing { location: location.to_string() }),
        };
        Ok(ConfigMapJournal {
            client: client.clone(),
            api,
            location: location.clone(),
            name: name.clone(),
            patience: patience.clone(),
            text,
            version,
            requests: Vec::new(),
            last_poll: None,
        })
    }

    async fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let line = serde_json::to_string(record).map_err(|e| self.error("encode a record for", e.to_string()))?;
        loop {
            match self.put(&line).await {
                // A write whose answer was lost and was retried also ends here: then our
                // own line is what was added, and the record is stored.
                Err(JournalError::Api { source: kube::Error::Api(status), .. }) if status.code == 409 => {
                    if self.catch_up(Some(&line)).await? {
                        return Ok(());
                    }
                }
                other => return other,
            }
        }
    }

    /// Appends a request at the journal's end as it is now: the rollout's own records
    /// added meanwhile are no conflict for a request, which is read wherever it lands.
    async fn append_request(&mut self, record: &Record) -> Result<(), JournalError> {
        let line = serde_json::to_string(record).map_err(|e| self.error("encode a record for", e.to_string()))?;
        loop {
            match self.put(&line).await {
                Err(JournalError::Api { source: kube::Error::Api(status), .. }) if status.code == 409 => {
                    let (text, version) = fetch(&self.location, &self.client, &self.patience).await?;
                    let Some(version) = version else {
                        return Err(JournalError::Missing { location: self.location.to_string() });
                    };
                    // A write whose answer was lost and was retried: ours is stored.
                    let added = text.strip_prefix(self.text.as_str()).unwrap_or_default();
                    if added.lines().any(|l| l == line) {
                        return Ok(());
                    }
                    self.text = text;
                    self.version = version;
                }
                other => return other,
            }
        }
    }

    /// One compare-and-set write of the journal with `line` added.
    async fn put(&mut self, line: &str) -> Result<(), JournalError> {
        let text = format!("{}{line}\n", self.text);
        let packed = pack(&text).map_err(|e| self.error("compress", e.to_string()))?;
        if packed.len() > LIMIT {
            return Err(JournalError::Full { location: self.location.to_string(), bytes: packed.len() });
        }
        let mut object = config_map(&self.name, packed);
        object.metadata.resource_version = Some(self.version.clone());
        let params = PostParams::default();
        match retry::call(&self.patience, || self.api.replace(&self.name, &params, &object)).await {
            Ok(stored) => {
                self.text = text;
                self.version = stored.metadata.resource_version.unwrap_or_default();
                Ok(())
            }
            Err(source) => Err(JournalError::Api { action: "write", location: self.location.to_string(), source }),
        }
    }

    async fn new_requests(&mut self) -> Result<Vec<Request>, JournalError> {
        if self.last_poll.is_some_and(|t| t.elapsed() < APPROVAL_POLL) {
            return Ok(std::mem::take(&mut self.requests));
        }
        self.last_poll = Some(tokio::time::Instant::now());
        self.catch_up(None).await?;
        Ok(std::mem::take(&mut self.requests))
    }

    /// Reads the ConfigMap again: what was added since our last read or write must be
    /// requests only (approvals, an abort), which are adopted, or `ours` (a record this
    /// process is writing, whose stored-answer was lost); anything else is another rollout
    /// writing. Returns whether `ours` was found stored.
    async fn catch_up(&mut self, ours: Option<&str>) -> Result<bool, JournalError> {
        let (text, version) = fetch(&self.location, &self.client, &self.patience).await?;
        let Some(version) = version else { return Err(JournalError::Missing { location: self.location.to_string() }) };
        if version == self.version {
            return Ok(false);
        }
        let added = text.strip_prefix(self.text.as_str()).ok_or_else(|| self.conflict())?;
        let mut requests = Vec::new();
        let mut found_ours = false;
        for line in added.lines().filter(|l| !l.trim().is_empty()) {
            if ours == Some(line) && !found_ours {
                found_ours = true;
                continue;
            }
            match serde_json::from_str::<Record>(line).ok().and_then(Request::of) {
                Some(request) => requests.push(request),
                None => return Err(self.conflict()),
            }
        }
        self.requests.extend(requests);
        self.text = text;
        self.version = version;
        Ok(found_ours)
    }

    fn conflict(&self) -> JournalError {
        JournalError::Conflict { location: self.location.to_string() }
    }

    fn error(&self, action: &'static str, message: String) -> JournalError {
        JournalError::Io {
            action,
            path: PathBuf::from(self.location.to_string()),
            source: std::io::Error::other(message),
        }
    }
}

/// The journal text and resourceVersion of the ConfigMap, or empty and `None` if it does
/// not exist.
async fn fetch(
    location: &Location,
    client: &kube::Client,
    patience: &Patience,
) -> Result<(String, Option<String>), JournalError> {
    let Location::ConfigMap { namespace, name } = location else { return Ok((String::new(), None)) };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let found = retry::call(patience, || api.get_opt(name)).await.map_err(|source| JournalError::Api {
        action: "read",
        location: location.to_string(),
        source,
    })?;
    let Some(found) = found else { return Ok((String::new(), None)) };
    let packed = found.binary_data.as_ref().and_then(|d| d.get(KEY)).map(|b| b.0.clone()).unwrap_or_default();
    let text = unpack(&packed).map_err(|message| JournalError::Corrupt {
        path: PathBuf::from(location.to_string()),
        line: 0,
        message: format!("`binaryData.{KEY}` is not a gzip-compressed journal: {message}"),
    })?;
    Ok((text, found.metadata.resource_version))
}

/// Creates the empty ConfigMap. One found there already (our create whose answer was lost
/// and was retried, or another process's that has not written yet) is adopted while it is
/// still empty: a second writer is caught by resourceVersion at its first append. One with
/// records in it is another rollout's.
async fn create_config_map(
    api: &Api<ConfigMap>,
    client: &kube::Client,
    location: &Location,
    name: &str,
    patience: &Patience,
) -> Result<String, JournalError> {
    let empty = pack("").map_err(|e| JournalError::Io {
        action: "compress",
        path: PathBuf::from(location.to_string()),
        source: e,
    })?;
    let params = PostParams::default();
    let object = config_map(name, empty);
    match retry::call(patience, || api.create(&params, &object)).await {
        Ok(created) => Ok(created.metadata.resource_version.unwrap_or_default()),
        Err(kube::Error::Api(status)) if status.code == 409 => match fetch(location, client, patience).await? {
            (text, Some(version)) if text.trim().is_empty() => Ok(version),
            _ => Err(JournalError::Conflict { location: location.to_string() }),
        },
        Err(source) => Err(JournalError::Api { action: "create", location: location.to_string(), source }),
    }
}

fn config_map(name: &str, packed: Vec<u8>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(crate::labels::MANAGED_BY.to_owned(), "noderoll".to_owned())])),
            ..ObjectMeta::default()
        },
        binary_data: Some(BTreeMap::from([(KEY.to_owned(), ByteString(packed))])),
        ..ConfigMap::default()
    }
}

fn pack(text: &str) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes())?;
    encoder.finish()
}

fn unpack(packed: &[u8]) -> Result<String, String> {
    if packed.is_empty() {
        return Ok(String::new());
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(packed).read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_round_trip_through_gzip_and_shrink() {
        let line = serde_json::to_string(&Record::StepStarted {
            at: "2026-11-27T22:00:00.000Z".into(),
            step: "ws-a01/drain".into(),
            detail: serde_json::Value::Null,
        })
        .expect("json");
        let text = format!("{line}\n").repeat(1000);
        let packed = pack(&text).expect("pack");
        assert_eq!(unpack(&packed).expect("unpack"), text);
        assert!(packed.len() * 10 < text.len(), "{} → {}", text.len(), packed.len());
        assert!(unpack(b"not gzip").is_err());
    }

    #[test]
    fn configmap_locations_are_namespace_slash_name() {
        assert_eq!(
            Location::config_map("noderoll/j"),
            Ok(Location::ConfigMap { namespace: "noderoll".into(), name: "j".into() })
        );
        for bad in ["j", "/j", "noderoll/", "a/b/c"] {
            assert!(Location::config_map(bad).is_err(), "{bad}");
        }
    }
}
