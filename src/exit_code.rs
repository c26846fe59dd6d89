//! The process exit codes, in one place (docs/exit-codes.md repeats this table).

/// Everything asked for was done; `check` found no error.
pub const SUCCESS: i32 = 0;
/// A plan is invalid (`check`, and every command that reads a plan).
pub const INVALID_PLAN: i32 = 1;
/// The command line is wrong (unknown flag, missing argument). clap uses 2 as well.
pub const USAGE: i32 = 2;
/// Something outside the plan failed: a file could not be read or written, output could not
/// be produced.
pub const FAILURE: i32 = 3;
/// A rollout halted: a step failed, no new node was started, and the journal says which
/// nodes are left cordoned. Running `apply` again resumes.
pub const HALTED: i32 = 4;
/// Another rollout of the plan holds the lock.
pub const LOCKED: i32 = 5;
/// The journal belongs to a different version of the plan (or is damaged).
pub const JOURNAL_MISMATCH: i32 = 6;
/// The rollout went through every node, but some failed within their batch's
/// `maxFailures` and are left cordoned; running `apply` again retries them.
pub const NODES_FAILED: i32 = 7;
/// `apply` stopped because `noderoll abort` asked, or will not start because the rollout
/// was aborted (`--resume-aborted` goes on).
pub const ABORTED: i32 = 8;
/// The rollout was interrupted (SIGINT / SIGTERM); running `apply` again resumes.
pub const INTERRUPTED: i32 = 130;

/// An error that knows the exit code it ends the process with, so that the code is chosen
/// where the error is understood rather than by a table that reaches into every module.
pub trait KnowsExitCode {
    /// The process exit code for this error.
    fn exit_code(&self) -> i32;
}
