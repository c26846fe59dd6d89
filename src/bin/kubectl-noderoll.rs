//! `kubectl noderoll ...`: kubectl runs a plugin by finding `kubectl-noderoll` on PATH.
//! The same program as `noderoll`, under the name kubectl looks for.

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = noderoll::cli::main();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
