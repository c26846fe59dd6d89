//! The library's error type; each variant knows its exit code.

use crate::exit_code;
use crate::plan::Diagnostic;

/// Everything that can go wrong in a noderoll command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more plan files are invalid; the diagnostics say where.
    #[error("{} error(s) in the plan", .0.iter().filter(|d| d.severity == crate::plan::Severity::Error).count())]
    InvalidPlan(Vec<Diagnostic>),
    /// Reading or writing a file failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What was being done (`read`, `write`).
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A valid plan cannot be turned into steps.
    #[error("cannot plan `{path}`")]
    Planner {
        /// The plan file.
        path: String,
        /// Why.
        #[source]
        source: crate::planner::PlannerError,
    },
    /// The simulator cannot start.
    #[error(transparent)]
    Sim(#[from] crate::sim::SimError),
    /// Talking to a Kubernetes API server failed.
    #[error("cannot {context}: {message}")]
    Client {
        /// What was being done.
        context: String,
        /// Why it failed, as the client or the server said.
        message: String,
    },
    /// A rollout cannot start or go on.
    #[error(transparent)]
    Exec(crate::executor::ExecError),
    /// The plan's DNS provider cannot be set up (its TSIG secret file).
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// The plan needs something this version cannot do yet.
    #[error("{0}")]
    Unsupported(String),
    /// Manifests cannot be written for this plan.
    #[error(transparent)]
    Manifests(#[from] crate::manifests::ManifestError),
    /// Serializing output failed.
    #[error("cannot produce JSON output")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidPlan(_) | Error::Planner { .. } => exit_code::INVALID_PLAN,
            Error::Exec(e) => match e {
                crate::executor::ExecError::Lock(crate::executor::lock::LockError::Held { .. })
                | crate::executor::ExecError::Journal(crate::executor::journal::JournalError::Conflict { .. }) => {
                    exit_code::LOCKED
                }
                crate::executor::ExecError::PlanChanged { .. }
                | crate::executor::ExecError::Journal(crate::executor::journal::JournalError::Corrupt { .. }) => {
                    exit_code::JOURNAL_MISMATCH
                }
                crate::executor::ExecError::Planner(_) | crate::executor::ExecError::MissingNodes { .. } => {
                    exit_code::INVALID_PLAN
                }
                _ => exit_code::FAILURE,
            },
            Error::Io { .. }
            | Error::Json(_)
            | Error::Sim(_)
            | Error::Client { .. }
            | Error::Unsupported(_)
            | Error::Manifests(_)
            | Error::Dns(_) => exit_code::FAILURE,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
