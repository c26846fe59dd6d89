//! Commands make each change (a cloud DNS CLI, an internal tool): argv with `{node}`,
//! `{address}` and `{record}` filled in, run without a shell. The record is read from the
//! first resolver, since a command has no way to say what it holds.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Applied, Change, ChangeKind, DnsError, DnsProvider, RecordSet, resolve};
use crate::plan::template::CommandTemplate;

/// How long one command may run.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A record changed by the plan's commands.
#[derive(Debug)]
pub struct CommandDns {
    record: String,
    resolver: String,
    withdraw: CommandTemplate,
    restore: CommandTemplate,
}

impl CommandDns {
    /// `resolvers` is never empty: the plan check requires it for this provider.
    pub fn new(record: &str, resolvers: &[String], withdraw: CommandTemplate, restore: CommandTemplate) -> CommandDns {
        CommandDns {
            record: record.to_owned(),
            resolver: resolvers.first().cloned().unwrap_or_default(),
            withdraw,
            restore,
        }
    }
}

/// The last lines of a command's output, for an error message.
fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

impl DnsProvider for CommandDns {
    fn read(&self) -> BoxFuture<'_, Result<RecordSet, DnsError>> {
        Box::pin(resolve::served(&self.resolver, &self.record))
    }

    fn apply<'a>(&'a self, change: &'a Change<'a>) -> BoxFuture<'a, Result<Applied, DnsError>> {
        Box::pin(async move {
            let template = match change.kind {
                ChangeKind::Withdraw | ChangeKind::Repoint => &self.withdraw,
                ChangeKind::Restore => &self.restore,
            };
            let values: BTreeMap<&str, String> = [
                ("node", change.node.to_owned()),
                ("address", change.address.to_string()),
                ("record", change.record.to_owned()),
            ]
            .into();
            let argv = template.render(&values);
            let shown = argv.join(" ");
            let Some((program, args)) = argv.split_first() else {
                return Err(DnsError::Command("the DNS command is empty".into()));
            };
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| DnsError::Command(format!("cannot run `{shown}`: {e}")))?;
            let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
                .await
                .map_err(|_| DnsError::Command(format!("`{shown}` did not finish within {}s", TIMEOUT.as_secs())))?
                .map_err(|e| DnsError::Command(format!("`{shown}` failed: {e}")))?;
            if output.status.success() {
                Ok(Applied::Done)
            } else {
                Err(DnsError::Command(format!("`{shown}` failed ({}): {}", output.status, tail(&output.stderr))))
            }
        })
    }
}
