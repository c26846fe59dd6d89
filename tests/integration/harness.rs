//! Runs the built binary from the repository root, so paths in output are stable.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn noderoll() -> Command {
    let mut cmd = Command::cargo_bin("noderoll").expect("the noderoll binary is built");
    cmd.current_dir(repo()).env("NO_COLOR", "1").env_remove("RUST_LOG");
    cmd
}

/// Every `*.yaml` file directly in `dir` (relative to the repository), sorted.
pub(crate) fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.strip_prefix(repo()).map(Path::to_path_buf).expect("inside the repo"))
        .collect();
    files.sort();
    files
}
