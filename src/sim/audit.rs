//! The audit log: one JSON line per request (time, verb, path, query, status, user agent),
//! written off the request path by a task of its own, so benchmarks can count the requests
//! noderoll and kubectl each make.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use tokio::sync::mpsc;

/// One request, as logged.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    pub(crate) time: String,
    pub(crate) verb: &'static str,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) status: u16,
    pub(crate) user_agent: String,
    pub(crate) latency_ms: f64,
}

/// Where entries go; a disabled log costs nothing.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    sender: Option<mpsc::UnboundedSender<String>>,
}

impl Audit {
    pub(crate) fn disabled() -> Audit {
        Audit { sender: None }
    }

    /// Opens (truncates) the log and starts its writer, which flushes whenever it has
    /// caught up, so the file is current to within one batch of requests.
    pub(crate) fn open(path: &Path) -> std::io::Result<Audit> {
        let mut out = BufWriter::new(File::create(path)?);
        let (sender, mut receiver) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = receiver.recv().await {
                let mut ok = writeln!(out, "{line}").is_ok();
                while let Ok(more) = receiver.try_recv() {
                    ok &= writeln!(out, "{more}").is_ok();
                }
                if !ok || out.flush().is_err() {
                    tracing::error!("the audit log could not be written; no further requests are logged");
                    return;
                }
            }
        });
        Ok(Audit { sender: Some(sender) })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub(crate) fn record(&self, entry: &Entry) {
        if let Some(sender) = &self.sender
            && let Ok(line) = serde_json::to_string(entry)
        {
            // The writer only stops on a write error, which it has reported.
            let _ = sender.send(line);
        }
    }
}
