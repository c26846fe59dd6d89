//! The checkpoint journal: append-only JSON lines, each fsync'd before the executor acts on
//! what it says. Replaying it tells a resumed rollout which steps are done, which were in
//! flight when the last run stopped, and which approvals were given.
//!
//! Writers append whole lines with `O_APPEND`, so `noderoll approve` can add an approval
//! while `apply` runs. A line torn by a crash mid-write is the only damage a crash can do;
//! it is dropped on replay (it was never acted on, since acting waits for the fsync).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Record {
    /// An `apply` run began (the first one, or a resume).
    #[serde(rename_all = "camelCase")]
    Begin {
        /// When.
        at: String,
        /// The plan's name.
        plan: String,
        /// SHA-256 of the plan file's bytes.
        plan_hash: String,
        /// The plan file's text, to show what changed if it does.
        plan_text: String,
        /// Who runs it (host and process).
        holder: String,
        /// Each batch's nodes as resolved against the cluster.
        #[serde(default)]
        batches: Vec<BatchNodes>,
    },
    /// A step is about to act. `detail` holds what a resume needs to judge it (the node's
    /// boot ID before an upgrade, the DNS records before a withdraw).
    StepStarted {
        /// When.
        at: String,
        /// The step id.
        step: String,
        /// What the step recorded before acting.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        detail: Value,
    },
    /// A step finished.
    StepFinished {
        /// When.
        at: String,
        /// The step id.
        step: String,
        /// What it did or found.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        detail: Value,
    },
    /// A step failed; the node stays where it is.
    StepFailed {
        /// When.
        at: String,
        /// The step id.
        step: String,
        /// Why, as shown to the operator.
        error: String,
    },
    /// A drain that ran out of time deletes a pod (`drain.onTimeout: delete`), written
    /// before the deletion is made.
    PodDeleted {
        /// When.
        at: String,
        /// The drain step.
        step: String,
        /// `namespace/name`.
        pod: String,
        /// Why it was deleted rather than evicted.
        reason: String,
    },
    /// An operator approved a node's uncordon.
    Approved {
        /// When.
        at: String,
        /// The node.
        node: String,
        /// Who (user and host).
        by: String,
    },
    /// The run stopped starting nodes because a step failed.
    Halted {
        /// When.
        at: String,
        /// The failed steps.
        reason: String,
    },
    /// The run was interrupted (SIGINT / SIGTERM) with steps possibly in flight.
    Interrupted {
        /// When.
        at: String,
    },
    /// The maintenance window closed; the run stopped until the next one.
    Paused {
        /// When.
        at: String,
        /// When the next window opens.
        opens: String,
    },
    /// The run went through every node, but some failed within their batch's
    /// `maxFailures`; the next run retries them.
    Incomplete {
        /// When.
        at: String,
        /// The failed steps.
        reason: String,
    },
    /// Every step is done.
    Finished {
        /// When.
        at: String,
    },
    /// `noderoll abort` asked the rollout to stop and put back what it can. A running
    /// `apply` reads it as it reads approvals and stops at its next safe point.
    AbortRequested {
        /// When.
        at: String,
        /// Who (user and host).
        by: String,
    },
    /// The abort is about to put a node back, written before it acts. The node's steps
    /// are forgotten from here on (a later run starts it over); `steps` keeps what they
    /// journaled, which the putting back reads (was it cordoned before, the BGP label's
    /// value), so an abort killed half-way can run again.
    Restoring {
        /// When.
        at: String,
        /// The node.
        node: String,
        /// Its steps' journaled detail, by step id.
        steps: BTreeMap<String, Value>,
    },
    /// The abort put a node back.
    Restored {
        /// When.
        at: String,
        /// The node.
        node: String,
        /// What was done, and what could not be (a record left out because the node is
        /// not Ready).
        actions: Vec<String>,
    },
    /// The abort is done: nodes not yet upgraded are back in service, and `left` are the
    /// nodes whose upgrade had begun, still cordoned.
    #[serde(rename_all = "camelCase")]
    Aborted {
        /// When.
        at: String,
        /// Who asked.
        by: String,
        /// The nodes put back.
        restored: Vec<String>,
        /// The nodes left out of service, each with the step it reached.
        left: Vec<LeftNode>,
    },
}

/// A node an abort left out of service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftNode {
    /// The node.
    pub node: String,
    /// The furthest step it reached (`ws03/upgrade`).
    pub step: String,
    /// How that step stands: `finished`, `cut off` (in flight when the run stopped) or
    /// `failed: …`.
    pub state: String,
}

/// Where an abort stands, as the journal tells it since the last `Begin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum AbortState {
    /// `noderoll abort` asked (by whom, when) and has not finished putting things back.
    Requested {
        /// When.
        at: String,
        /// Who.
        by: String,
    },
    /// The abort finished.
    Done {
        /// When.
        at: String,
        /// Who asked.
        by: String,
        /// The nodes put back.
        restored: Vec<String>,
        /// The nodes left out of service.
        left: Vec<LeftNode>,
    },
}

/// What another process asks of a running rollout by appending to its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `noderoll approve`: a node's uncordon, or a manual DNS step.
    Approve(String),
    /// `noderoll abort`, by whom.
    Abort(String),
}

impl Request {
    /// The request a record makes, if it is one another process may append.
    pub fn of(record: Record) -> Option<Request> {
        match record {
            Record::Approved { node, .. } => Some(Request::Approve(node)),
            Record::AbortRequested { by, .. } => Some(Request::Abort(by)),
            _ => None,
        }
    }
}

/// A batch and its nodes, as a run resolved them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchNodes {
    /// Batch name.
    pub name: String,
    /// Its nodes.
    pub nodes: Vec<String>,
}

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or syncing failed.
    #[error("cannot {action} the journal {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The journal.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The API server refused or failed a read or write of a ConfigMap journal.
    #[error("cannot {action} the journal {location}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The journal.
        location: String,
        /// The cause.
        source: kube::Error,
    },
    /// Someone other than `noderoll approve` wrote the ConfigMap journal meanwhile.
    #[error(
        "the journal {location} was changed by another writer while this run held it (its resourceVersion moved and not only by approvals); another rollout of this plan may be running. Stopping before two rollouts race"
    )]
    Conflict {
        /// The journal.
        location: String,
    },
    /// The ConfigMap journal cannot take the next record within the API's object limits.
    #[error(
        "the journal {location} cannot take the next record: {reason}; run this rollout with a file journal (`--journal` on a persistent volume)"
    )]
    Full {
        /// The journal.
        location: String,
        /// Which limit it reached.
        reason: String,
    },
    /// There is no journal to add to.
    #[error("the journal {location} does not exist; has the rollout started?")]
    Missing {
        /// The journal.
        location: String,
    },
    /// A complete line is not a record.
    #[error(
        "the journal {path} is damaged at line {line}: {message}; it is not safe to guess what happened, so move the file aside and check the cluster by hand (`noderoll status` reads the rest)"
    )]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// What a journal says, replayed.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Every record, in order.
    pub records: Vec<Record>,
    /// The last `Begin`: the plan the journal belongs to.
    pub plan_hash: Option<String>,
    /// That plan's text.
    pub plan_text: Option<String>,
    /// That plan's name.
    pub plan_name: Option<String>,
    /// The batches as the last run resolved them.
    pub batches: Vec<BatchNodes>,
    /// Finished steps with their detail.
    pub finished: BTreeMap<String, Value>,
    /// Steps started and neither finished nor failed since, with their start detail.
    pub in_flight: BTreeMap<String, Value>,
    /// Steps whose last outcome is a failure, with the error.
    pub failed: BTreeMap<String, String>,
    /// Nodes approved for uncordon.
    pub approved: BTreeSet<String>,
    /// The last record is `Finished`.
    pub complete: bool,
    /// An abort since the last `Begin`.
    pub abort: Option<AbortState>,
    /// Nodes an abort began to put back and has not finished, with their steps' detail.
    pub restoring: BTreeMap<String, BTreeMap<String, Value>>,
    /// Bytes of the valid prefix; a torn last line lies past it.
    pub valid_len: u64,
    /// A torn last line was found (and is ignored).
    pub torn_tail: bool,
}

impl Replay {
    /// Folds one record in.
    fn apply(&mut self, record: Record) {
        match &record {
            Record::Begin { plan, plan_hash, plan_text, batches, .. } => {
                self.batches.clone_from(batches);
                self.plan_name = Some(plan.clone());
                self.plan_hash = Some(plan_hash.clone());
                self.plan_text = Some(plan_text.clone());
                self.complete = false;
                self.abort = None;
                self.restoring.clear();
            }
            Record::StepStarted { step, detail, .. } => {
                self.failed.remove(step);
                self.in_flight.insert(step.clone(), detail.clone());
            }
            Record::StepFinished { step, detail, .. } => {
                self.in_flight.remove(step);
                self.failed.remove(step);
                self.finished.insert(step.clone(), detail.clone());
            }
            Record::StepFailed { step, error, .. } => {
                self.in_flight.remove(step);
                self.failed.insert(step.clone(), error.clone());
            }
            Record::Approved { node, .. } => {
                self.approved.insert(node.clone());
            }
            Record::Finished { .. } => self.complete = true,
            Record::AbortRequested { at, by } => {
                if !matches!(self.abort, Some(AbortState::Requested { .. })) {
                    self.abort = Some(AbortState::Requested { at: at.clone(), by: by.clone() });
                }
            }
            Record::Restoring { node, steps, .. } => {
                for maps in [&mut self.finished, &mut self.in_flight] {
                    maps.retain(|id, _| !steps.contains_key(id));
                }
                self.failed.retain(|id, _| !steps.contains_key(id));
                self.restoring.entry(node.clone()).or_default().extend(steps.clone());
            }
            Record::Restored { node, .. } => {
                self.restoring.remove(node);
            }
            Record::Aborted { at, by, restored, left } => {
                self.abort = Some(AbortState::Done {
                    at: at.clone(),
                    by: by.clone(),
                    restored: restored.clone(),
                    left: left.clone(),
                });
            }
            Record::PodDeleted { .. }
            | Record::Halted { .. }
            | Record::Incomplete { .. }
            | Record::Interrupted { .. }
            | Record::Paused { .. } => {}
        }
        self.records.push(record);
    }
}

/// Parses journal bytes. A last line without its newline is a torn write; a complete line
/// that does not parse is corruption.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Replay, JournalError> {
    let mut replay = Replay::default();
    let mut offset = 0usize;
    for (index, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let complete = line.ends_with(b"\n");
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if text.iter().all(u8::is_ascii_whitespace) {
            offset += line.len();
            continue;
        }
        if !complete {
            // Whatever it holds, a line without its newline was never fsync'd whole.
            replay.torn_tail = true;
            break;
        }
        let record = serde_json::from_slice::<Record>(text).map_err(|e| JournalError::Corrupt {
            path: path.to_owned(),
            line: index + 1,
            message: e.to_string(),
        })?;
        replay.apply(record);
        offset += line.len();
    }
    replay.valid_len = offset as u64;
    Ok(replay)
}

/// Reads and replays a journal file; a missing file is an empty journal.
pub fn read(path: &Path) -> Result<Replay, JournalError> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Replay::default()),
        Err(source) => Err(JournalError::Io { action: "read", path: path.to_owned(), source }),
    }
}

/// An open journal that records are appended to.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// How far `new_approvals` has read.
    read_offset: u64,
}

impl Journal {
    /// Opens (creating it and its folder if needed) for appending, cutting off a torn tail
    /// that `replay` found.
    pub fn open(path: &Path, replay: &Replay) -> Result<Journal, JournalError> {
        let error = |action| move |source| JournalError::Io { action, path: path.to_owned(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(error("create the folder of"))?;
        }
        if replay.torn_tail {
            let file = OpenOptions::new().write(true).open(path).map_err(error("open"))?;
            file.set_len(replay.valid_len).map_err(error("repair"))?;
            file.sync_all().map_err(error("sync"))?;
        }
        let file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(error("open"))?;
        let read_offset = file.metadata().map_err(error("inspect"))?.len();
        Ok(Journal { path: path.to_owned(), file, read_offset })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        append_to(&mut self.file, &self.path, record)
    }

    /// Requests other processes appended since the last call.
    pub fn new_requests(&mut self) -> Result<Vec<Request>, JournalError> {
        let path = &self.path;
        let error = |action| move |source| JournalError::Io { action, path: path.clone(), source };
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(self.read_offset)).map_err(error("seek in"))?;
        self.file.read_to_end(&mut bytes).map_err(error("read"))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.read_offset += complete as u64;
        Ok(bytes[..complete]
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Record>(line).ok().and_then(Request::of))
            .collect())
    }
}

/// Appends a record to a journal that another process may be writing too
/// (`noderoll approve`).
pub fn append_to_path(path: &Path, record: &Record) -> Result<(), JournalError> {
    let mut file = OpenOptions::new().append(true).open(path).map_err(|source| JournalError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    append_to(&mut file, path, record)
}

fn append_to(file: &mut File, path: &Path, record: &Record) -> Result<(), JournalError> {
    let error = |action| move |source| JournalError::Io { action, path: path.to_owned(), source };
    let mut line = serde_json::to_vec(record).map_err(|e| error("encode a record for")(std::io::Error::other(e)))?;
    line.push(b'\n');
    // One write call per line: with O_APPEND, lines of concurrent writers never interleave.
    file.write_all(&line).map_err(error("write"))?;
    file.sync_data().map_err(error("sync"))
}

/// The journal's default place: `.noderoll/<plan file stem>.journal` beside the plan.
pub fn default_path(plan: &Path) -> PathBuf {
    let stem = plan.file_stem().map_or_else(|| "plan".into(), |s| s.to_string_lossy().into_owned());
    plan.parent().unwrap_or_else(|| Path::new(".")).join(".noderoll").join(format!("{stem}.journal"))
}

/// Now, as the journal writes times.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

/// The replay of a journal that begins a run over `nodes` (one batch, `b`) and goes on with
/// `records`: what the tests of the journal's readers start from.
#[cfg(test)]
pub(crate) fn replay_after_begin(nodes: &[&str], records: &[Record]) -> Replay {
    let begin = Record::Begin {
        at: "t".into(),
        plan: "p".into(),
        plan_hash: "h".into(),
        plan_text: String::new(),
        holder: "me".into(),
        batches: vec![BatchNodes { name: "b".into(), nodes: nodes.iter().map(|n| (*n).to_owned()).collect() }],
    };
    let mut text = String::new();
    for r in std::iter::once(&begin).chain(records) {
        text.push_str(&serde_json::to_string(r).expect("record"));
        text.push('\n');
    }
    parse(Path::new("j"), text.as_bytes()).expect("parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(step: &str) -> Record {
        Record::StepStarted { at: "t".into(), step: step.into(), detail: Value::Null }
    }

    fn finished(step: &str) -> Record {
        Record::StepFinished { at: "t".into(), step: step.into(), detail: Value::Null }
    }

    #[test]
    fn replay_tracks_finished_in_flight_and_failed_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut journal = Journal::open(&path, &Replay::default()).expect("open");
        for r in [
            started("a"),
            finished("a"),
            started("b"),
            started("c"),
            Record::StepFailed { at: "t".into(), step: "c".into(), error: "boom".into() },
        ] {
            journal.append(&r).expect("append");
        }
        let replay = read(&path).expect("read");
        assert_eq!(replay.finished.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(replay.in_flight.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(replay.failed.get("c").map(String::as_str), Some("boom"));
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off_but_a_bad_middle_line_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let whole = serde_json::to_string(&finished("a")).expect("json");
        std::fs::write(&path, format!("{whole}\n{{\"event\":\"step-sta")).expect("write");
        let replay = read(&path).expect("read");
        assert!(replay.torn_tail);
        assert_eq!(replay.finished.len(), 1);
        let mut journal = Journal::open(&path, &replay).expect("open");
        journal.append(&finished("b")).expect("append");
        assert_eq!(read(&path).expect("read").finished.len(), 2);

        std::fs::write(&path, format!("{whole}\nnot json\n{whole}\n")).expect("write");
        assert!(matches!(read(&path), Err(JournalError::Corrupt { line: 2, .. })));
    }

    #[test]
    fn approvals_and_aborts_appended_by_another_writer_are_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut journal = Journal::open(&path, &Replay::default()).expect("open");
        journal.append(&started("x")).expect("append");
        assert!(journal.new_requests().expect("read").is_empty());
        append_to_path(&path, &Record::Approved { at: "t".into(), node: "cp1".into(), by: "me".into() })
            .expect("approve");
        append_to_path(&path, &Record::AbortRequested { at: "t".into(), by: "you".into() }).expect("abort");
        assert_eq!(
            journal.new_requests().expect("read"),
            [Request::Approve("cp1".into()), Request::Abort("you".into())]
        );
        assert!(journal.new_requests().expect("read").is_empty());
    }
}
