//! What a command can fail with: the errors of the modules it calls, each kept whole with
//! its source, plus the command line's own refusals. The exit code comes from the error
//! that knows it ([`KnowsExitCode`]); this type only forwards.

use crate::exit_code::{self, KnowsExitCode};
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
    /// No client can be made for the cluster.
    #[error(transparent)]
    Connect(#[from] crate::world::kube::ConnectError),
    /// The cluster's inventory cannot be read.
    #[error(transparent)]
    Inventory(#[from] crate::world::inventory::InventoryError),
    /// A request to the simulator's control API failed.
    #[error("cannot {context}")]
    Api {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A rollout cannot start or go on.
    #[error(transparent)]
    Exec(#[from] crate::executor::ExecError),
    /// A rehearsal cannot run to its report.
    #[error(transparent)]
    Rehearse(#[from] crate::rehearse::RehearseError),
    /// The plan's DNS provider cannot be set up (its TSIG secret file).
    #[error(transparent)]
    Dns(#[from] crate::world::dns::DnsError),
    /// The webhook's URL file cannot be read.
    #[error(transparent)]
    WebhookUrl(#[from] crate::observe::notify::UrlFileError),
    /// The HTTPS client for webhooks cannot be set up.
    #[error("cannot set up the webhook's HTTPS client")]
    Http(#[source] crate::world::http::HttpError),
    /// The command will not do what was asked as asked (no `--yes` without a terminal to
    /// confirm on, an approval for something the rollout does not have, a file without
    /// the report asked for); the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    /// Manifests cannot be written for this plan.
    #[error(transparent)]
    Manifests(#[from] crate::scaffold::manifests::ManifestError),
    /// Serializing output failed.
    #[error("cannot produce JSON output")]
    Json(#[from] serde_json::Error),
}

impl KnowsExitCode for Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidPlan(_) => exit_code::INVALID_PLAN,
            Error::Planner { source, .. } => source.exit_code(),
            Error::Exec(e) => e.exit_code(),
            Error::Rehearse(e) => e.exit_code(),
            Error::Connect(e) => e.exit_code(),
            Error::Inventory(e) => e.exit_code(),
            Error::Io { .. }
            | Error::Json(_)
            | Error::Sim(_)
            | Error::Api { .. }
            | Error::Http(_)
            | Error::WebhookUrl(_)
            | Error::Refused(_)
            | Error::Manifests(_)
            | Error::Dns(_) => exit_code::FAILURE,
        }
    }
}

/// A command's result.
pub(super) type Result<T, E = Error> = std::result::Result<T, E>;
