//! Command-line arguments and output rendering: the only module that prints.

mod error;
mod progress;
mod rollout;
mod sim;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use miette::{GraphicalReportHandler, GraphicalTheme};

use self::error::{Error, Result};
use crate::exit_code;
use crate::exit_code::KnowsExitCode;
use crate::plan::{self, Diagnostic, Severity};
use crate::planner;
use crate::world::inventory::Scope;

/// Plans and runs batched rolling upgrades of Kubernetes (k3s) nodes without disrupting the
/// people who use them.
#[derive(Debug, Parser)]
#[command(name = "noderoll", version, about, max_term_width = 100)]
pub struct Cli {
    /// When to use colours in diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate plan files and report every problem with its file:line:column.
    Check {
        /// Plan files to check.
        #[arg(required = true, value_name = "PLAN")]
        plans: Vec<PathBuf>,
        /// `text`: diagnostics on stderr; `json`: a JSON list of `{severity, message, path,
        /// line, column, help}` on stdout.
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show the steps a plan will take, in order, without touching anything.
    Preview {
        /// The plan file.
        #[arg(value_name = "PLAN")]
        plan: PathBuf,
        /// `text` for review, `json` for tools, `dot` (Graphviz) or `mermaid` for pictures.
        #[arg(long, short, value_enum, default_value_t = PreviewFormat::Text)]
        output: PreviewFormat,
        /// Survey the cluster as this snapshot has it (`kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`).
        #[command(flatten)]
        cluster: ClusterSource,
        /// Read etcd's health live from `quorum.etcd.endpoints` and show it (text output).
        #[arg(long)]
        etcd: bool,
        /// List the maintenance windows from this instant (RFC 3339) instead of now.
        #[arg(long, value_name = "INSTANT")]
        from: Option<jiff::Timestamp>,
        /// Count windows from a rehearsal's figures (`noderoll rehearse -o json` output)
        /// instead of the estimate from typical step durations.
        #[arg(long, value_name = "FILE")]
        rehearsal: Option<PathBuf>,
    },
    /// Write a starting plan for a cluster: service nodes one at a time, then workstations
    /// in batches. Prints the YAML on stdout.
    Init {
        /// Where the cluster's nodes come from.
        #[command(flatten)]
        cluster: ClusterSource,
        /// Workstations per batch.
        #[arg(long, default_value_t = 20)]
        batch_size: usize,
        /// The plan's `metadata.name`.
        #[arg(long, default_value = "upgrade")]
        name: String,
    },
    /// Run (or resume) a rollout against the cluster.
    Apply(rollout::ApplyArgs),
    /// Run the whole plan against a simulated cluster and report makespan and blockers.
    Rehearse(rollout::RehearseArgs),
    /// Show where a rollout stands, from its journal.
    Status(rollout::StatusArgs),
    /// Approve nodes waiting in an `uncordon: approve` step.
    Approve(rollout::ApproveArgs),
    /// Stop a rollout (a running apply stops at its next safe point) and put back what can
    /// be put back: nodes whose upgrade has not begun are uncordoned and return to DNS and
    /// BGP; nodes whose upgrade began stay cordoned and are named.
    Abort(rollout::AbortArgs),
    /// Print the JSON Schema of the plan format (the same as schemas/plan.schema.json).
    Schema,
    /// Print what a cluster needs to run the plan's rollout by itself in its maintenance
    /// windows: ServiceAccount, least-privilege RBAC, the plan in a ConfigMap, and a CronJob
    /// running `apply --until-window-end` with its journal in a ConfigMap (for a plan
    /// without a window and without --schedule, a Job that runs the rollout once).
    Manifests {
        /// The plan file.
        #[arg(value_name = "PLAN")]
        plan: PathBuf,
        /// Namespace of the (Cron)Job, its ServiceAccount, lock and journal (it must exist).
        #[arg(long, default_value = "noderoll")]
        namespace: String,
        /// Container image with noderoll and what the plan's hooks run.
        #[arg(long, default_value = concat!("noderoll:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// A CronJob schedule (five cron fields) for a plan without a window; without it
        /// such a plan gets a Job that runs the rollout once.
        #[arg(long, value_name = "CRON")]
        schedule: Option<String>,
    },
    /// Print a shell completion script (e.g. `noderoll completions bash > /etc/bash_completion.d/noderoll`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a folder.
    Man {
        /// Write `noderoll.1` and `noderoll-COMMAND.1` here instead of printing `noderoll.1`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The Kubernetes API simulator that stands in for a cluster in tests and rehearsals.
    Sim {
        /// What to do.
        #[command(subcommand)]
        command: sim::SimCommand,
    },
}

/// A cluster to read: a snapshot file, or a live API server through a kubeconfig.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterSource {
    /// A snapshot file: `kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kubeconfig", "context"])]
    pub snapshot: Option<PathBuf>,
    /// A live cluster's kubeconfig.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (the current one otherwise).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterSource {
    fn given(&self) -> bool {
        self.snapshot.is_some() || self.kubeconfig.is_some() || self.context.is_some()
    }

    /// Reads the cluster's inventory, as much of it as `scope` asks (a snapshot holds what
    /// it holds).
    fn read(&self, scope: Scope) -> Result<planner::Inventory> {
        use crate::world::inventory::{from_cluster, from_snapshot};
        if let Some(path) = &self.snapshot {
            return Ok(from_snapshot(path)?);
        }
        runtime()?.block_on(async {
            let client =
                crate::world::kube::connect_context(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
            Ok(from_cluster(&client, &crate::world::retry::Patience::default(), scope).await?)
        })
    }
}

/// The async runtime every networked command runs on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|source| Error::Io {
        action: "start",
        path: "the async runtime".into(),
        source,
    })
}

/// Resolves on SIGINT or SIGTERM: how an operator (or systemd) asks a rollout or the
/// simulator to stop.
async fn interrupted() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = interrupt.await;
}

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// When stderr is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Output format of `preview`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreviewFormat {
    /// Batches, waves, steps, DNS changes, critical path and estimate.
    Text,
    /// `{"plan", "steps": [{"id", "node", "batch", "action", "after"}]}`.
    Json,
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Output format of the commands that print for people or for scripts; each command's
/// `--output` help says what its text and its JSON hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For scripts: JSON on stdout.
    Json,
}

/// The name kubectl runs a plugin by: `kubectl noderoll ...` executes `kubectl-noderoll`.
const KUBECTL_PLUGIN: &str = "kubectl-noderoll";

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let mut command = <Cli as clap::CommandFactory>::command();
    let program = std::env::args_os().next().map(PathBuf::from);
    if program.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == KUBECTL_PLUGIN) {
        // Usage and errors then read as the user typed them.
        command = command.bin_name("kubectl noderoll");
    }
    let parsed =
        command.try_get_matches().and_then(|mut m| <Cli as clap::FromArgMatches>::from_arg_matches_mut(&mut m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit_code::USAGE } else { exit_code::SUCCESS };
        }
    };
    let color = use_color(cli.color);
    match run(cli) {
        Ok(code) => code,
        Err(Error::InvalidPlan(diagnostics)) => {
            eprint!("{}", render_diagnostics(&diagnostics, color));
            exit_code::INVALID_PLAN
        }
        Err(e) => {
            let report = miette::Report::new(e_with_chain(&e));
            eprintln!("{report:?}");
            e.exit_code()
        }
    }
}

/// Runs a parsed command line; returns the exit code for outcomes that are not errors.
pub fn run(cli: Cli) -> Result<i32> {
    let color = use_color(cli.color);
    match cli.command {
        Command::Check { plans, output } => check(&plans, output, color),
        Command::Preview { plan, output, cluster, etcd, from, rehearsal } => {
            let windows = Windows { from: from.unwrap_or_else(jiff::Timestamp::now), rehearsal };
            preview(&plan, output, &cluster, etcd, &windows, color)
        }
        Command::Init { cluster, batch_size, name } => {
            let inventory = cluster.read(Scope::WithLoadBalancers)?;
            print!("{}", crate::scaffold::init::starter(&name, &inventory, batch_size));
            Ok(exit_code::SUCCESS)
        }
        Command::Manifests { plan: path, namespace, image, schedule } => {
            let checked = plan::check_file(&path);
            let Some(plan) = checked.plan else { return Err(Error::InvalidPlan(checked.diagnostics)) };
            let text = checked.source.as_ref().map(|s| s.text().to_owned()).unwrap_or_default();
            let options = crate::scaffold::manifests::ManifestOptions { namespace, image, schedule };
            print!("{}", crate::scaffold::manifests::render(&plan, &text, &path, &options)?);
            Ok(exit_code::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let name = command.get_name().to_owned();
            clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
            Ok(exit_code::SUCCESS)
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Schema => {
            println!("{}", schema_json()?);
            Ok(exit_code::SUCCESS)
        }
        Command::Sim { command } => sim::run(command),
        Command::Apply(args) => rollout::apply(args),
        Command::Rehearse(args) => rollout::rehearse(args),
        Command::Status(args) => rollout::status(&args),
        Command::Approve(args) => rollout::approve(&args),
        Command::Abort(args) => rollout::abort(args),
    }
}

/// Man pages from the command-line definition, so they never drift from `--help`.
fn man(dir: Option<&std::path::Path>) -> Result<i32> {
    let command = <Cli as clap::CommandFactory>::command();
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| Error::Io { action: "write", path, source }
    };
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command).render(&mut out).map_err(io(std::path::Path::new("stdout")))?;
            std::io::stdout().write_all(&out).map_err(io(std::path::Path::new("stdout")))?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            clap_mangen::generate_to(command, dir).map_err(io(dir))?;
        }
    }
    Ok(exit_code::SUCCESS)
}

/// The plan's JSON Schema, pretty-printed, exactly as `schemas/plan.schema.json` holds it.
pub fn schema_json() -> Result<String> {
    let schema = schemars::schema_for!(plan::model::PlanDocument);
    Ok(serde_json::to_string_pretty(&schema)?)
}

fn check(paths: &[PathBuf], output: OutputFormat, color: bool) -> Result<i32> {
    let results: Vec<(String, plan::Checked)> =
        paths.iter().map(|p| (p.display().to_string(), plan::check_file(p))).collect();
    let invalid = results.iter().filter(|(_, c)| c.has_errors()).count();
    let diagnostics: Vec<&Diagnostic> = results.iter().flat_map(|(_, c)| &c.diagnostics).collect();
    match output {
        OutputFormat::Json => {
            let records: Vec<_> = diagnostics.iter().map(|d| d.to_record()).collect();
            println!("{}", serde_json::to_string_pretty(&records)?);
        }
        OutputFormat::Text => {
            let owned: Vec<Diagnostic> = diagnostics.iter().map(|d| (*d).clone()).collect();
            eprint!("{}", render_diagnostics(&owned, color));
            let mut stdout = std::io::stdout().lock();
            for (path, checked) in &results {
                if let Some(plan) = &checked.plan {
                    let listed: usize = plan
                        .batches
                        .iter()
                        .map(|b| match &b.members {
                            plan::resolved::Members::Nodes(n) => n.len(),
                            plan::resolved::Members::Selector(_) => 0,
                        })
                        .sum();
                    let selectors = plan
                        .batches
                        .iter()
                        .filter(|b| matches!(b.members, plan::resolved::Members::Selector(_)))
                        .count();
                    let _ = writeln!(
                        stdout,
                        "{path}: ok: plan `{}`, {} batch(es), {listed} node(s) by name, {selectors} batch(es) by selector",
                        plan.name,
                        plan.batches.len()
                    );
                }
            }
            let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
            let warnings = diagnostics.len() - errors;
            if invalid > 0 || warnings > 0 {
                eprintln!(
                    "checked {} plan(s): {} invalid, {errors} error(s), {warnings} warning(s)",
                    results.len(),
                    invalid
                );
            }
        }
    }
    Ok(if invalid > 0 { exit_code::INVALID_PLAN } else { exit_code::SUCCESS })
}

/// What `preview` needs to show a plan's maintenance windows.
struct Windows {
    from: jiff::Timestamp,
    rehearsal: Option<PathBuf>,
}

impl Windows {
    /// The schedule, for a plan with a window.
    fn schedule(&self, plan: &plan::Plan, planned: &planner::Planned) -> Result<Option<planner::schedule::Schedule>> {
        let Some(window) = &plan.window else { return Ok(None) };
        if planned.is_symbolic() {
            return Ok(None);
        }
        let makespan = match &self.rehearsal {
            None => {
                planner::schedule::Makespan::Estimate(planner::estimate::critical_path(plan, &planned.graph).duration)
            }
            Some(path) => rehearsal_makespan(path)?,
        };
        Ok(Some(planner::schedule::schedule(window, self.from, makespan)))
    }
}

/// The makespan and counted windows in a `rehearse -o json` output (its `report` line).
fn rehearsal_makespan(path: &std::path::Path) -> Result<planner::schedule::Makespan> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.display().to_string(),
        source,
    })?;
    let report = crate::rehearse::ReportLine::find(&text).ok_or_else(|| {
        Error::Refused(format!(
            "{} has no rehearsal report; write one with `noderoll rehearse PLAN -o json > FILE`",
            path.display()
        ))
    })?;
    let makespan = std::time::Duration::from_secs_f64(report.simulated_seconds.max(0.0));
    let counted = report.windows_counted.then_some(report.windows_needed).flatten();
    Ok(planner::schedule::Makespan::Rehearsal { makespan, counted })
}

fn preview(
    path: &std::path::Path,
    output: PreviewFormat,
    cluster: &ClusterSource,
    read_etcd: bool,
    windows: &Windows,
    color: bool,
) -> Result<i32> {
    let checked = plan::check_file(path);
    let Some(plan) = checked.plan else { return Err(Error::InvalidPlan(checked.diagnostics)) };
    if !checked.diagnostics.is_empty() {
        eprint!("{}", render_diagnostics(&checked.diagnostics, color));
    }
    let inventory = if cluster.given() { Some(cluster.read(Scope::Everything)?) } else { None };
    let planned = match &inventory {
        Some(inventory) => planner::build_with(&plan, Some(inventory)),
        None => planner::build_symbolic(&plan),
    }
    .map_err(|source| Error::Planner { path: path.display().to_string(), source })?;
    let survey = inventory.as_ref().map(|i| planner::survey::survey(&plan, &planned, i));
    let etcd = if read_etcd { live_etcd(&plan, &planned) } else { None };
    let schedule = windows.schedule(&plan, &planned)?;
    let text = match output {
        PreviewFormat::Text => {
            let mut text = planner::render::text(&plan, &planned);
            if let (Some(schedule), Some(window)) = (&schedule, &plan.window) {
                text.push_str(&planner::schedule::text(schedule, window));
            }
            if let Some(survey) = &survey {
                text.push_str(&planner::survey::text(survey));
            }
            if let Some(etcd) = &etcd {
                text.push_str(etcd);
            }
            text
        }
        PreviewFormat::Json => planner::render::json(&plan, &planned, survey.as_ref(), schedule.as_ref())? + "\n",
        PreviewFormat::Dot => planner::render::dot(&plan, &planned),
        PreviewFormat::Mermaid => planner::render::mermaid(&planned),
    };
    print!("{text}");
    Ok(exit_code::SUCCESS)
}

/// etcd's health read live when the plan names its endpoints: members, healthy, leader,
/// and members that map to no node of the plan (by name).
fn live_etcd(plan: &plan::Plan, planned: &planner::Planned) -> Option<String> {
    let settings = plan.quorum.etcd.as_ref()?;
    let read = async {
        let etcd = crate::world::etcd::Etcd::new(settings).map_err(|e| e.to_string())?;
        tokio::time::timeout(std::time::Duration::from_secs(5), etcd.health())
            .await
            .map_err(|_| "no answer within 5s".to_owned())?
            .map_err(|e| e.to_string())
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    Some(match runtime.block_on(read) {
        Err(e) => format!("\netcd (live): cannot read it: {e}; the gate will wait for it during apply\n"),
        Ok(health) => {
            let nodes: std::collections::BTreeMap<String, Vec<String>> =
                planned.chains.iter().map(|c| (c.node.clone(), Vec::new())).collect();
            let leader = health.members.iter().find(|m| m.leader).map_or("none", |m| m.name.as_str());
            let mut text = format!(
                "\netcd (live): {} member(s), {} healthy, leader {leader}\n",
                health.members.len(),
                health.healthy()
            );
            for m in health.members.iter().filter(|m| !m.healthy) {
                text.push_str(&format!("  unhealthy: {} ({})\n", m.name, m.problem.clone().unwrap_or_default()));
            }
            let unmapped: Vec<&str> = health
                .members
                .iter()
                .filter(|m| crate::world::etcd::node_of(m, &nodes).is_none())
                .map(|m| m.name.as_str())
                .collect();
            if !unmapped.is_empty() {
                text.push_str(&format!("  members matching no node of the plan by name: {}\n", unmapped.join(", ")));
            }
            text
        }
    })
}

/// Renders diagnostics with miette's graphical handler: the file:line:col, the offending
/// line with a caret, and the help.
pub fn render_diagnostics(diagnostics: &[Diagnostic], color: bool) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    let mut out = String::new();
    for d in diagnostics {
        if handler.render_report(&mut out, d).is_err() {
            out.push_str(&d.to_string());
        }
        out.push('\n');
    }
    out
}

fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal(),
    }
}

/// Wraps an error so miette prints its whole `source()` chain.
fn e_with_chain(e: &Error) -> miette::MietteDiagnostic {
    miette::MietteDiagnostic::new(with_causes(e))
}

/// An error's message followed by each cause's, skipping a cause the message already ends
/// with: many errors name their source in their own message (the journal and the step
/// errors record that message), and it should be read once.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the journal j.jsonl: {source}")]
    struct Names {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("apply failed")]
    struct Silent {
        #[source]
        inner: Names,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(super::with_causes(&Names { source: io() }), "cannot write the journal j.jsonl: disk full");
        assert_eq!(
            super::with_causes(&Silent { inner: Names { source: io() } }),
            "apply failed: cannot write the journal j.jsonl: disk full"
        );
    }
}
