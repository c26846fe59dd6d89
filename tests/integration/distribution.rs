//! How noderoll reaches its users beyond the binary: as a kubectl plugin (through real
//! kubectl), with shell completions and man pages generated from the command line.

use crate::harness::{kubectl_binary, noderoll, path_with_binary, repo};

#[test]
fn kubectl_runs_noderoll_as_a_plugin() {
    let home = tempfile::tempdir().expect("temp dir");
    let kubectl = |args: &[&str]| {
        std::process::Command::new(kubectl_binary())
            .args(args)
            .current_dir(repo())
            .env("PATH", path_with_binary())
            .env("HOME", home.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("kubectl runs")
    };
    let out = kubectl(&["noderoll", "check", "plans/external-lb.yaml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&["noderoll", "no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Usage: kubectl noderoll"), "usage names the plugin as typed: {stderr}");
    let out = kubectl(&["plugin", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kubectl-noderoll"), "kubectl plugin list finds it");
}

#[test]
fn completions_are_valid_shell() {
    let out = noderoll().args(["completions", "bash"]).assert().success();
    let script = out.get_output().stdout.clone();
    assert!(String::from_utf8_lossy(&script).contains("complete -F _noderoll"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("noderoll.bash");
    std::fs::write(&path, &script).expect("write");
    let syntax = std::process::Command::new("bash").arg("-n").arg(&path).status().expect("bash runs");
    assert!(syntax.success(), "bash -n rejects the completion script");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        noderoll().args(["completions", shell]).assert().success();
    }
}

#[test]
fn man_pages_cover_every_command() {
    let out = noderoll().arg("man").assert().success();
    let page = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(page.contains(".TH noderoll 1"), "{page}");
    let dir = tempfile::tempdir().expect("temp dir");
    noderoll().arg("man").arg("--dir").arg(dir.path()).assert().success();
    for command in ["apply", "rehearse", "preview", "status", "approve", "check", "sim-serve"] {
        let page = std::fs::read_to_string(dir.path().join(format!("noderoll-{command}.1")))
            .unwrap_or_else(|e| panic!("noderoll-{command}.1: {e}"));
        assert!(page.contains(".SH NAME") && page.contains(".SH OPTIONS"), "noderoll-{command}.1");
    }
}

#[test]
fn the_readmes_cargo_run_picks_the_noderoll_binary() {
    // README's first command is `cargo run --release -- rehearse ...`; with the kubectl
    // plugin as a second binary, cargo refuses to guess unless `default-run` names one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(repo())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let package = metadata["packages"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "noderoll"));
    assert_eq!(package.map(|p| &p["default_run"]), Some(&serde_json::Value::from("noderoll")));
}

#[test]
fn each_commands_output_help_describes_its_own_json_not_checks() {
    let help = |command: &str| {
        let out = noderoll().args([command, "--help"]).assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    assert!(help("check").contains("{severity, message, path, line,"), "check's JSON is its diagnostics");
    for command in ["apply", "rehearse", "status", "abort"] {
        let text = help(command);
        assert!(!text.contains("severity"), "{command} --help describes check's output: {text}");
        assert!(text.contains("`json`:"), "{command} --help says what its JSON is: {text}");
    }
}
