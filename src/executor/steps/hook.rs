//! Running the plan's hook commands: argv with `{node}`, `{batch}` and `{plan}` filled in,
//! never through a shell unless the plan says `shell: true`; output kept per node in the
//! run's log folder; a timeout that kills the process.
//!
//! While a hook runs, its pid is kept in `<log folder>/<node>/<hook>.pid`. If noderoll
//! itself is killed, the hook lives on; the resumed run finds the pid file and waits for
//! that process instead of starting the upgrade a second time.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{Context, StepError};
use crate::plan::duration::written;
use crate::plan::template::CommandTemplate;

/// How hooks run in this rollout.
#[derive(Debug, Clone, Default)]
pub struct HookSettings {
    /// Folder of per-node hook logs.
    pub log_dir: PathBuf,
    /// Extra environment (KUBECONFIG of the cluster being upgraded).
    pub env: Vec<(OsString, OsString)>,
}

/// A hook to run for a node.
pub(super) struct Hook<'a> {
    /// `upgrade` or `verify`: names its log and pid files.
    pub name: &'a str,
    /// The command.
    pub template: &'a CommandTemplate,
    /// Through `sh -c`.
    pub shell: bool,
    /// Plan time it may take.
    pub timeout: Duration,
}

fn pid_file(ctx: &Context, node: &str, hook: &str) -> PathBuf {
    ctx.hooks.log_dir.join(node).join(format!("{hook}.pid"))
}

/// Whether a process is alive (Linux: its /proc entry exists and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits for a hook an earlier, killed run left running. Returns whether there was one.
pub(super) async fn wait_for_orphan(ctx: &Context, node: &str, hook: &str) -> bool {
    let path = pid_file(ctx, node, hook);
    let Some(pid) = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u32>().ok()) else {
        return false;
    };
    let mut waited = false;
    while alive(pid) {
        if !waited {
            ctx.warn(format!(
                "the {hook} hook of {node} from an earlier run (pid {pid}) is still running; waiting for it"
            ));
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(&path);
    waited
}

/// Runs a hook for `node` to completion.
pub(super) async fn run(ctx: &Context, node: &str, batch: &str, hook: &Hook<'_>) -> Result<PathBuf, StepError> {
    let values: BTreeMap<&str, String> =
        [("node", node.to_owned()), ("batch", batch.to_owned()), ("plan", ctx.plan.name.clone())].into();
    let argv = hook.template.render(&values);
    let (program, args): (String, Vec<String>) = if hook.shell {
        ("sh".into(), vec!["-c".into(), argv.join(" ")])
    } else {
        let mut argv = argv.into_iter();
        (argv.next().unwrap_or_default(), argv.collect())
    };
    let folder = ctx.hooks.log_dir.join(node);
    let log_path = folder.join(format!("{}.log", hook.name));
    let io_error = |action: &str, path: &Path, e: std::io::Error| {
        StepError::Hook(format!("cannot {action} {} for the {} hook of {node}: {e}", path.display(), hook.name))
    };
    std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
    let mut log =
        OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| io_error("open", &log_path, e))?;
    let shown = std::iter::once(program.as_str()).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    writeln!(log, "=== {} $ {shown}", crate::executor::journal::now()).map_err(|e| io_error("write", &log_path, e))?;
    let stderr = log.try_clone().map_err(|e| io_error("open", &log_path, e))?;
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&args)
        .envs(ctx.hooks.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        StepError::Hook(format!(
            "cannot start the {} hook of {node} (`{shown}`): {e}; check the command in the plan",
            hook.name
        ))
    })?;
    let pid_path = pid_file(ctx, node, hook.name);
    if let Some(pid) = child.id() {
        std::fs::write(&pid_path, pid.to_string()).map_err(|e| io_error("write", &pid_path, e))?;
    }
    let outcome = tokio::time::timeout(ctx.real(hook.timeout), child.wait()).await;
    let result = match outcome {
        Ok(Ok(status)) if status.success() => Ok(log_path.clone()),
        Ok(Ok(status)) => Err(StepError::Hook(format!(
            "the {} hook of {node} failed ({status}); its output is in {}",
            hook.name,
            log_path.display()
        ))),
        Ok(Err(e)) => Err(StepError::Hook(format!("cannot wait for the {} hook of {node}: {e}", hook.name))),
        Err(_) => {
            let _ = child.kill().await;
            Err(StepError::Timeout {
                what: format!("the {} hook of {node} finishing", hook.name),
                after: written(hook.timeout),
                detail: format!(" (killed); its output is in {}", log_path.display()),
            })
        }
    };
    let _ = std::fs::remove_file(&pid_path);
    result
}
