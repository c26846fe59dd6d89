//! Where a rollout's journal lives. On the operator's machine it is a file (each record
//! fsync'd before the step acts). A rollout run inside the cluster (the CronJob of
//! `noderoll manifests`) has no lasting disk, so its journal is kept in ConfigMaps: each
//! append replaces the last one with `metadata.resourceVersion` set to the version last
//! read, so of two writers only one can win. The other gets 409 Conflict, reads again, and
//! goes on only if what was added meanwhile is requests (`noderoll approve`, `abort`);
//! anything else means a second rollout, and the journal refuses to continue.
//!
//! A ConfigMap holds its lines gzip-compressed in `binaryData`. One ConfigMap is a segment:
//! when its lines reach `SEGMENT_TEXT` the writer marks it sealed (a version-guarded write
//! like any other) and goes on in the next, `NAME.1`, `NAME.2`, …, so an append sends one
//! segment of bounded size whatever the journal's length, and a journal of 10,000 nodes
//! stays within the API's object limits. Readers follow the chain while segments are
//! sealed; a run killed between sealing and making the next segment makes it on resume.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::journal::{self, Journal, JournalError, Record, Replay, Request};
use crate::world::retry::{self, Patience};

/// The key of the compressed journal in the ConfigMap's `binaryData`.
pub const KEY: &str = "journal.jsonl.gz";
/// A segment may not pack to more than this (the API server's limit for an object is about
/// 1.5 MiB; a ConfigMap's data 1 MiB).
const LIMIT: usize = 900 * 1024;
/// A segment is sealed before its lines pass this: they pack to some 50 KiB, which each
/// append sends, however long the journal.
const SEGMENT_TEXT: usize = 512 * 1024;
/// How many segments a journal may have: 64 MiB of lines, about 20,000 nodes' worth. Each is
/// named in the Role of `noderoll manifests`.
pub const MAX_SEGMENTS: usize = 128;
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
            let text = fetch(location, client, patience).await?;
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

/// Bounds of a ConfigMap journal's segments.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// A segment is sealed before its lines grow past this.
    segment_text: usize,
    /// Segments a journal may have.
    segments: usize,
}

const LIMITS: Limits = Limits { segment_text: SEGMENT_TEXT, segments: MAX_SEGMENTS };

/// The names of a journal's segments, first to last possible: the journal's own name, then
/// `NAME.1`, `NAME.2`, … (a Role grants each by name).
pub fn segment_names(name: &str) -> Vec<String> {
    (0..MAX_SEGMENTS).map(|k| segment_name(name, k)).collect()
}

fn segment_name(name: &str, index: usize) -> String {
    if index == 0 { name.to_owned() } else { format!("{name}.{index}") }
}

/// One segment as read.
struct Segment {
    text: String,
    version: String,
    sealed: bool,
}

/// The journal as read: the lines of the segments before its last, and its last.
struct Chain {
    sealed_text: String,
    last: usize,
    segment: Option<Segment>,
}

/// A journal kept in ConfigMaps.
pub struct ConfigMapJournal {
    api: Api<ConfigMap>,
    location: Location,
    name: String,
    patience: Patience,
    limits: Limits,
    /// The segment written to: the last.
    segment: usize,
    /// Its lines as last read or written.
    text: String,
    /// Its resourceVersion then.
    version: String,
    /// `text` compressed so far, kept so an append compresses only its own line; dropped
    /// whenever `text` is replaced from the server.
    packer: Option<Packer>,
    /// Requests found while resolving a conflict, not yet handed out.
    requests: Vec<Request>,
    last_poll: Option<tokio::time::Instant>,
}

impl ConfigMapJournal {
    /// Reads the journal once, up to its last segment. A missing one is created when
    /// `create` (a rollout starting); otherwise a missing or empty journal is an error
    /// (nothing to add to).
    async fn open(
        location: &Location,
        client: &kube::Client,
        patience: &Patience,
        create: bool,
    ) -> Result<ConfigMapJournal, JournalError> {
        Self::open_with(location, client, patience, create, LIMITS).await
    }

    async fn open_with(
        location: &Location,
        client: &kube::Client,
        patience: &Patience,
        create: bool,
        limits: Limits,
    ) -> Result<ConfigMapJournal, JournalError> {
        let Location::ConfigMap { namespace, name } = location else {
            return Err(JournalError::Missing { location: location.to_string() });
        };
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let chain = fetch_chain(location, client, patience).await?;
        let mut journal = ConfigMapJournal {
            api,
            location: location.clone(),
            name: name.clone(),
            patience: patience.clone(),
            limits,
            segment: chain.last,
            text: String::new(),
            version: String::new(),
            packer: None,
            requests: Vec::new(),
            last_poll: None,
        };
        match chain.segment {
            None if create => journal.start_segment(true).await?,
            Some(segment) if create || !(chain.sealed_text.is_empty() && segment.text.trim().is_empty()) => {
                let sealed = segment.sealed;
                journal.text = segment.text;
                journal.version = segment.version;
                // A run killed between sealing a segment and making the next.
                if sealed {
                    journal.advance(create).await?;
                }
            }
            _ => return Err(JournalError::Missing { location: location.to_string() }),
        }
        Ok(journal)
    }

    async fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let line = serde_json::to_string(record).map_err(|e| self.error("encode a record for", e.to_string()))?;
        loop {
            if !self.text.is_empty() && self.text.len() + line.len() >= self.limits.segment_text {
                self.seal().await?;
                continue;
            }
            match self.put(&line).await {
                // A write whose answer was lost and was retried also ends here: then our
                // own line is what was added, and the record is stored.
                Err(JournalError::Api { source: kube::Error::Api(status), .. }) if status.code == 409 => {
                    if self.catch_up(Some(&line)).await? {
                        return Ok(());
                    }
                }
                // Lines that compress worse than most: the next segment takes it.
                Err(JournalError::Full { .. }) if !self.text.is_empty() => self.seal().await?,
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
                    let segment = self.fetch_current().await?;
                    // A write whose answer was lost and was retried: ours is stored.
                    let added = segment.text.strip_prefix(self.text.as_str()).unwrap_or_default();
                    if added.lines().any(|l| l == line) {
                        return Ok(());
                    }
                    self.text = segment.text;
                    self.version = segment.version;
                    self.packer = None;
                    if segment.sealed {
                        self.advance(false).await?;
                    }
                }
                other => return other,
            }
        }
    }

    /// One compare-and-set write of the segment with `line` added.
    async fn put(&mut self, line: &str) -> Result<(), JournalError> {
        let mut packer = match self.packer.take() {
            Some(packer) if packer.added < REPACK_AFTER => packer,
            _ => self.pack(&self.text)?,
        };
        let added = format!("{line}\n");
        packer.add(&added).map_err(|e| self.compress_error(&e))?;
        let packed = packer.gzip();
        if packed.len() > LIMIT {
            return Err(self.full(format!(
                "segment {} would hold {} bytes compressed, past what a ConfigMap can",
                segment_name(&self.name, self.segment),
                packed.len()
            )));
        }
        let stored = self.replace(packed, false).await?;
        self.text.push_str(&added);
        self.version = stored;
        self.packer = Some(packer);
        Ok(())
    }

    /// Marks the segment full and goes on to the next. Only the rollout's writer seals, so
    /// a segment found sealed by anyone else is another rollout's.
    async fn seal(&mut self) -> Result<(), JournalError> {
        if self.segment + 1 >= self.limits.segments {
            return Err(self.full(format!("it has all of its {} segments", self.limits.segments)));
        }
        loop {
            let packed = match self.packer.as_ref() {
                Some(packer) => packer.gzip(),
                None => self.pack(&self.text)?.gzip(),
            };
            match self.replace(packed, true).await {
                Ok(_) => break,
                Err(JournalError::Api { source: kube::Error::Api(status), .. }) if status.code == 409 => {
                    let segment = self.fetch_current().await?;
                    // Our seal, whose answer was lost and was retried.
                    if segment.sealed && segment.text == self.text {
                        break;
                    }
                    self.catch_up(None).await?;
                }
                Err(other) => return Err(other),
            }
        }
        self.advance(true).await
    }

    /// Moves to the segment after a sealed one.
    async fn advance(&mut self, own: bool) -> Result<(), JournalError> {
        self.segment += 1;
        self.start_segment(own).await
    }

    /// Begins on the current segment, making it unless someone has (our create whose
    /// answer was lost and was retried, or another process's). For the rollout's writer
    /// (`own`) what someone else put there must be requests only; a requester takes it as
    /// it is.
    async fn start_segment(&mut self, own: bool) -> Result<(), JournalError> {
        self.text.clear();
        self.packer = None;
        if let Some(version) = self.create_segment().await? {
            self.version = version;
            return Ok(());
        }
        if own {
            self.version.clear();
            self.catch_up(None).await?;
            return Ok(());
        }
        let segment = self.fetch_current().await?;
        self.text = segment.text;
        self.version = segment.version;
        if segment.sealed { Box::pin(self.advance(false)).await } else { Ok(()) }
    }

    /// Creates the current segment empty; `None` if it exists already.
    async fn create_segment(&self) -> Result<Option<String>, JournalError> {
        let empty = self.pack("")?.gzip();
        let object = config_map(&segment_name(&self.name, self.segment), empty, false);
        let params = PostParams::default();
        match retry::call(&self.patience, || self.api.create(&params, &object)).await {
            Ok(created) => Ok(Some(created.metadata.resource_version.unwrap_or_default())),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(source) => Err(JournalError::Api { action: "create", location: self.location.to_string(), source }),
        }
    }

    /// Replaces the current segment with `packed` if its resourceVersion is still ours;
    /// returns the new one.
    async fn replace(&self, packed: Vec<u8>, sealed: bool) -> Result<String, JournalError> {
        let name = segment_name(&self.name, self.segment);
        let mut object = config_map(&name, packed, sealed);
        object.metadata.resource_version = Some(self.version.clone());
        let params = PostParams::default();
        match retry::call(&self.patience, || self.api.replace(&name, &params, &object)).await {
            Ok(stored) => Ok(stored.metadata.resource_version.unwrap_or_default()),
            Err(source) => Err(JournalError::Api { action: "write", location: self.location.to_string(), source }),
        }
    }

    async fn fetch_current(&self) -> Result<Segment, JournalError> {
        let name = segment_name(&self.name, self.segment);
        fetch_segment(&self.api, &self.location, &name, &self.patience)
            .await?
            .ok_or_else(|| JournalError::Missing { location: self.location.to_string() })
    }

    async fn new_requests(&mut self) -> Result<Vec<Request>, JournalError> {
        if self.last_poll.is_some_and(|t| t.elapsed() < APPROVAL_POLL) {
            return Ok(std::mem::take(&mut self.requests));
        }
        self.last_poll = Some(tokio::time::Instant::now());
        self.catch_up(None).await?;
        Ok(std::mem::take(&mut self.requests))
    }

    /// Reads the current segment again: what was added since our last read or write must
    /// be requests only (approvals, an abort), which are adopted, or `ours` (a record this
    /// process is writing, whose stored-answer was lost); anything else, or a seal, is
    /// another rollout writing. Returns whether `ours` was found stored.
    async fn catch_up(&mut self, ours: Option<&str>) -> Result<bool, JournalError> {
        let segment = self.fetch_current().await?;
        if segment.version == self.version {
            return Ok(false);
        }
        if segment.sealed {
            return Err(self.conflict());
        }
        let added = segment.text.strip_prefix(self.text.as_str()).ok_or_else(|| self.conflict())?;
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
        self.text = segment.text;
        self.version = segment.version;
        self.packer = None;
        Ok(found_ours)
    }

    fn conflict(&self) -> JournalError {
        JournalError::Conflict { location: self.location.to_string() }
    }

    fn pack(&self, text: &str) -> Result<Packer, JournalError> {
        Packer::of(text).map_err(|e| self.compress_error(&e))
    }

    fn compress_error(&self, error: &std::io::Error) -> JournalError {
        self.error("compress", error.to_string())
    }

    fn full(&self, reason: String) -> JournalError {
        JournalError::Full { location: self.location.to_string(), reason }
    }

    fn error(&self, action: &'static str, message: String) -> JournalError {
        JournalError::Io {
            action,
            path: PathBuf::from(self.location.to_string()),
            source: std::io::Error::other(message),
        }
    }
}

/// The whole journal's text: its segments' lines in order.
async fn fetch(location: &Location, client: &kube::Client, patience: &Patience) -> Result<String, JournalError> {
    let chain = fetch_chain(location, client, patience).await?;
    Ok(chain.sealed_text + chain.segment.map(|s| s.text).unwrap_or_default().as_str())
}

/// Reads segment after segment while each is sealed.
async fn fetch_chain(location: &Location, client: &kube::Client, patience: &Patience) -> Result<Chain, JournalError> {
    let Location::ConfigMap { namespace, name } = location else {
        return Ok(Chain { sealed_text: String::new(), last: 0, segment: None });
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut sealed_text = String::new();
    let mut last = 0;
    let mut segment = fetch_segment(&api, location, name, patience).await?;
    loop {
        match segment {
            Some(found) if found.sealed => {
                let next = fetch_segment(&api, location, &segment_name(name, last + 1), patience).await?;
                if next.is_none() {
                    return Ok(Chain { sealed_text, last, segment: Some(found) });
                }
                sealed_text.push_str(&found.text);
                last += 1;
                segment = next;
            }
            segment => return Ok(Chain { sealed_text, last, segment }),
        }
    }
}

async fn fetch_segment(
    api: &Api<ConfigMap>,
    location: &Location,
    name: &str,
    patience: &Patience,
) -> Result<Option<Segment>, JournalError> {
    let found = retry::call(patience, || api.get_opt(name)).await.map_err(|source| JournalError::Api {
        action: "read",
        location: location.to_string(),
        source,
    })?;
    let Some(found) = found else { return Ok(None) };
    let packed = found.binary_data.as_ref().and_then(|d| d.get(KEY)).map(|b| b.0.clone()).unwrap_or_default();
    let text = unpack(&packed).map_err(|message| JournalError::Corrupt {
        path: PathBuf::from(location.to_string()),
        line: 0,
        message: format!("`binaryData.{KEY}` of configmap/{name} is not a gzip-compressed journal: {message}"),
    })?;
    let sealed = found.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(crate::labels::JOURNAL_SEALED));
    Ok(Some(Segment { text, version: found.metadata.resource_version.unwrap_or_default(), sealed }))
}

fn config_map(name: &str, packed: Vec<u8>, sealed: bool) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(crate::labels::MANAGED_BY.to_owned(), "noderoll".to_owned())])),
            annotations: sealed
                .then(|| BTreeMap::from([(crate::labels::JOURNAL_SEALED.to_owned(), "true".to_owned())])),
            ..ObjectMeta::default()
        },
        binary_data: Some(BTreeMap::from([(KEY.to_owned(), ByteString(packed))])),
        ..ConfigMap::default()
    }
}

/// A gzip stream built a line at a time: each addition is deflated on its own with a sync
/// flush (so the dictionary of what came before still serves it), and the stream is closed
/// with an empty final block and the trailer whenever it is sent. An append then costs its
/// own line to compress, not the segment.
struct Packer {
    deflate: Vec<u8>,
    compress: flate2::Compress,
    crc: flate2::Crc,
    /// Additions since the stream was made: each ends a deflate block, whose code tables
    /// cost more than a short line saves.
    added: usize,
}

/// Lines added one at a time before a segment is packed again whole: a flush per line packs
/// about 4:1, a segment packed whole about 10:1, and repacking this seldom costs an append
/// a 64th of a segment's compression.
const REPACK_AFTER: usize = 64;

/// A gzip header: deflate, no name, no time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final fixed-Huffman block holding only its end code, after a byte-aligning sync flush.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

impl Packer {
    fn of(text: &str) -> std::io::Result<Packer> {
        let mut packer = Packer {
            deflate: Vec::new(),
            compress: flate2::Compress::new(flate2::Compression::default(), false),
            crc: flate2::Crc::new(),
            added: 0,
        };
        packer.add(text)?;
        packer.added = 0;
        Ok(packer)
    }

    fn add(&mut self, text: &str) -> std::io::Result<()> {
        self.added += 1;
        self.crc.update(text.as_bytes());
        let mut input = text.as_bytes();
        loop {
            self.deflate.reserve(input.len() + 64);
            let before = self.compress.total_in();
            self.compress.compress_vec(input, &mut self.deflate, flate2::FlushCompress::Sync)?;
            let consumed = usize::try_from(self.compress.total_in() - before).map_err(std::io::Error::other)?;
            input = &input[consumed..];
            if input.is_empty() && self.deflate.len() < self.deflate.capacity() {
                return Ok(());
            }
        }
    }

    fn gzip(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(GZIP_HEADER.len() + self.deflate.len() + FINAL_EMPTY_BLOCK.len() + 8);
        out.extend_from_slice(&GZIP_HEADER);
        out.extend_from_slice(&self.deflate);
        out.extend_from_slice(&FINAL_EMPTY_BLOCK);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        out
    }
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

    fn step_record(node: usize, step: &str, finished: bool) -> Record {
        let at = "2026-11-27T22:00:00.000Z".to_owned();
        let step = format!("ws{node:05}/{step}");
        if finished {
            Record::StepFinished { at, step, detail: serde_json::json!({"bootId": format!("{node:08x}-boot")}) }
        } else {
            Record::StepStarted { at, step, detail: serde_json::Value::Null }
        }
    }

    /// A node's records as a rollout writes them: each step of its chain started and done.
    fn node_records(node: usize) -> Vec<Record> {
        ["cordon", "wait-sessions", "drain", "upgrade", "reboot", "verify", "uncordon", "dns-restore"]
            .into_iter()
            .flat_map(|step| [step_record(node, step, false), step_record(node, step, true)])
            .collect()
    }

    fn lines(records: &[Record]) -> String {
        records.iter().map(|r| serde_json::to_string(r).expect("json") + "\n").collect()
    }

    #[test]
    fn lines_packed_one_at_a_time_are_one_gzip_stream_that_shrinks() {
        let records: Vec<Record> = (0..200).flat_map(node_records).collect();
        let mut packer = Packer::of("").expect("pack");
        assert_eq!(unpack(&packer.gzip()).expect("an empty stream"), "");
        let mut text = String::new();
        for record in &records {
            let line = lines(std::slice::from_ref(record));
            packer.add(&line).expect("pack");
            text.push_str(&line);
        }
        let packed = packer.gzip();
        assert_eq!(unpack(&packed).expect("unpack"), text);
        assert_eq!(unpack(&Packer::of(&text).expect("pack").gzip()).expect("unpack"), text);
        assert!(packed.len() * 3 < text.len(), "line by line: {} → {}", text.len(), packed.len());
        let whole = Packer::of(&text).expect("pack").gzip();
        assert!(whole.len() * 8 < text.len(), "whole: {} → {}", text.len(), whole.len());
        assert!(unpack(b"not gzip").is_err());
    }

    /// An API server to keep a journal in: the simulator, or the real control plane.
    struct Cluster {
        simulator: Option<crate::sim::Simulator>,
        /// Kept until the test ends: dropping it stops the control plane.
        real: Option<test_support::control_plane::ControlPlane>,
        client: kube::Client,
        location: Location,
    }

    impl Cluster {
        async fn stop(self) {
            if let Some(simulator) = self.simulator {
                simulator.stop().await;
            }
            if let Some(plane) = self.real {
                tokio::task::spawn_blocking(move || drop(plane)).await.expect("the control plane stops");
            }
        }
    }

    async fn cluster() -> Cluster {
        let config = crate::sim::SimConfig { watch_history: 1000, ..crate::sim::SimConfig::default() };
        let population = crate::sim::Population::Generate(crate::sim::GenerateOptions {
            control_planes: 1,
            workstations: 0,
            ..crate::sim::GenerateOptions::default()
        });
        let simulator = crate::sim::Simulator::start(config, population).await.expect("the simulator starts");
        let client = crate::world::kube::for_url(&simulator.url()).expect("a client");
        let location = Location::ConfigMap { namespace: "default".into(), name: "journal".into() };
        Cluster { simulator: Some(simulator), real: None, client, location }
    }

    /// The real kube-apiserver, with etcd behind it (`scripts/control-plane`).
    async fn real_cluster() -> Cluster {
        use test_support::harness::Cluster as _;
        let plane = tokio::task::spawn_blocking(test_support::control_plane::ControlPlane::up)
            .await
            .expect("the control plane starts");
        let client = crate::world::kube::connect_context(Some(&plane.kubeconfig()), None).await.expect("a client");
        let location = Location::ConfigMap { namespace: "default".into(), name: "journal".into() };
        Cluster { simulator: None, real: Some(plane), client, location }
    }

    const SMALL: Limits = Limits { segment_text: 512, segments: 64 };

    async fn open(cluster: &Cluster, create: bool, limits: Limits) -> Result<ConfigMapJournal, JournalError> {
        ConfigMapJournal::open_with(&cluster.location, &cluster.client, &Patience::default(), create, limits).await
    }

    async fn segments(cluster: &Cluster) -> Vec<(String, usize, bool)> {
        let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
        let mut found = Vec::new();
        for name in (0..MAX_SEGMENTS).map(|k| segment_name("journal", k)) {
            let Some(object) = api.get_opt(&name).await.expect("get") else { break };
            let packed = object.binary_data.as_ref().and_then(|d| d.get(KEY)).map_or(0, |b| b.0.len());
            let sealed = object.metadata.annotations.is_some_and(|a| a.contains_key(crate::labels::JOURNAL_SEALED));
            found.push((name, packed, sealed));
        }
        found
    }

    async fn read_back(cluster: &Cluster) -> String {
        fetch(&cluster.location, &cluster.client, &Patience::default()).await.expect("read")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_of_ten_thousand_nodes_spans_sealed_segments_within_the_api_limits_and_reads_back_whole() {
        let cluster = cluster().await;
        let mut journal = open(&cluster, true, LIMITS).await.expect("open");
        let mut written = 0;
        for node in 0..10_000 {
            for record in node_records(node) {
                journal.append(&record).await.expect("every record is stored");
                written += 1;
            }
        }
        let found = segments(&cluster).await;
        let text = read_back(&cluster).await;
        let replay = journal::parse(&PathBuf::from("journal"), text.as_bytes()).expect("the journal parses");
        assert_eq!(text.lines().count(), written);
        assert_eq!(replay.records.len(), written);
        assert!(found.len() > 10 && found.len() < MAX_SEGMENTS / 2, "{} segments", found.len());
        let (last, sealed) = found.split_last().expect("segments");
        assert!(sealed.iter().all(|s| s.2) && !last.2, "all but the last sealed: {found:?}");
        let largest = found.iter().map(|s| s.1).max().unwrap_or_default();
        let total: usize = found.iter().map(|s| s.1).sum();
        eprintln!("10,000 nodes: {written} records, {} segments, {total} bytes packed, largest {largest}", found.len());
        assert!(largest < LIMIT / 8, "every append sends one segment of at most {largest} bytes");
        cluster.stop().await;
    }

    #[tokio::test]
    async fn a_run_killed_between_sealing_a_segment_and_making_the_next_makes_it_on_resume() {
        let cluster = cluster().await;
        let mut journal = open(&cluster, true, SMALL).await.expect("open");
        let records = node_records(0);
        for record in &records {
            journal.append(record).await.expect("append");
        }
        let packed = Packer::of(&journal.text).expect("pack").gzip();
        journal.replace(packed, true).await.expect("sealed");
        drop(journal);
        let before = segments(&cluster).await;
        assert!(before.last().is_some_and(|s| s.2), "the last segment is sealed: {before:?}");
        assert_eq!(read_back(&cluster).await, lines(&records), "a sealed last segment is read once");

        let approval =
            Record::Approved { at: "2026-11-27T22:00:00.000Z".into(), node: "ws00000".into(), by: "ops".into() };
        append_once(&cluster.location, &cluster.client, &Patience::default(), &approval).await.expect("approve");
        let mut resumed = open(&cluster, true, SMALL).await.expect("resume");
        let more = node_records(1);
        for record in &more {
            resumed.append(record).await.expect("append");
        }
        let after = segments(&cluster).await;
        assert!(after.len() > before.len(), "{after:?}");
        let expected = lines(&records) + &lines(std::slice::from_ref(&approval)) + &lines(&more);
        assert_eq!(read_back(&cluster).await, expected);
        cluster.stop().await;
    }

    #[tokio::test]
    async fn a_request_lands_in_the_segment_the_writer_goes_on_in_and_the_writer_reads_it() {
        let cluster = cluster().await;
        let mut journal = open(&cluster, true, SMALL).await.expect("open");
        let mut requester = None;
        let approval =
            Record::Approved { at: "2026-11-27T22:00:00.000Z".into(), node: "ws00000".into(), by: "ops".into() };
        for record in node_records(0) {
            journal.append(&record).await.expect("append");
            if requester.is_none() {
                requester = Some(open(&cluster, false, SMALL).await.expect("a requester opens"));
            }
        }
        assert!(journal.segment > 0, "the writer went on past the requester's segment");
        requester.expect("opened").append_request(&approval).await.expect("the request lands");
        journal.last_poll = None;
        let requests = journal.new_requests().await.expect("poll");
        assert_eq!(requests.len(), 1, "the writer reads the request in its own segment");
        cluster.stop().await;
    }

    #[tokio::test]
    async fn a_segment_found_made_by_another_writer_is_refused_not_written_over() {
        let cluster = cluster().await;
        let mut first = open(&cluster, true, SMALL).await.expect("open");
        first.append(&step_record(0, "cordon", false)).await.expect("append");
        // As if the second's read had missed the segment and its create then found it.
        let mut second = open(&cluster, true, SMALL).await.expect("a second opens");
        let refused = second.start_segment(true).await;
        assert!(matches!(refused, Err(JournalError::Conflict { .. })), "{refused:?}");
        cluster.stop().await;
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_across_a_seal() {
        let cluster = cluster().await;
        let mut first = open(&cluster, true, SMALL).await.expect("open");
        first.append(&step_record(0, "cordon", false)).await.expect("append");
        let mut second = open(&cluster, true, SMALL).await.expect("a second opens");
        for record in node_records(0) {
            first.append(&record).await.expect("append");
        }
        assert!(first.segment > 0);
        let refused = second.append(&step_record(1, "cordon", false)).await;
        assert!(matches!(refused, Err(JournalError::Conflict { .. })), "{refused:?}");
        let full = open(&cluster, true, Limits { segment_text: 512, segments: first.segment + 1 }).await;
        let mut full = full.expect("open");
        let mut outcome = Ok(());
        for record in node_records(1) {
            outcome = full.append(&record).await;
            if outcome.is_err() {
                break;
            }
        }
        assert!(
            matches!(&outcome, Err(JournalError::Full { reason, .. }) if reason.contains("segments")),
            "{outcome:?}"
        );
        cluster.stop().await;
    }

    /// The chain on the real API server: every seal and append a PUT guarded by the
    /// resourceVersion etcd gave, a second writer refused across a seal, a run killed
    /// between a seal and the next segment resumed, and the journal read back whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_real_api_server_the_chain_crosses_seals_refuses_a_second_writer_and_resumes() {
        let cluster = real_cluster().await;
        let mut journal = open(&cluster, true, SMALL).await.expect("open");
        let mut written = node_records(0);
        journal.append(&written[0]).await.expect("append");
        let mut second = open(&cluster, true, SMALL).await.expect("a second opens");
        for record in &written[1..] {
            journal.append(record).await.expect("append");
        }
        assert!(journal.segment > 2, "the journal went on past seals: segment {}", journal.segment);
        let refused = second.append(&step_record(9, "cordon", false)).await;
        assert!(matches!(refused, Err(JournalError::Conflict { .. })), "{refused:?}");

        // Killed after sealing, before the next segment exists.
        let packed = Packer::of(&journal.text).expect("pack").gzip();
        journal.replace(packed, true).await.expect("sealed");
        drop(journal);
        let mut resumed = open(&cluster, true, SMALL).await.expect("resume");
        let more = node_records(1);
        for record in &more {
            resumed.append(record).await.expect("append");
        }
        written.extend(more);
        let found = segments(&cluster).await;
        let (last, sealed) = found.split_last().expect("segments");
        assert!(sealed.iter().all(|s| s.2) && !last.2, "all but the last sealed: {found:?}");
        assert_eq!(read_back(&cluster).await, lines(&written));
        cluster.stop().await;
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
