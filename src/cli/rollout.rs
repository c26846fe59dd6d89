//! `apply`, `rehearse`, `status` and `approve`: reading arguments, asking for confirmation,
//! choosing how progress is shown, and turning outcomes into exit codes. The work itself is
//! [`crate::executor`] and [`crate::rehearse`].

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::error::{Error, Result};
use super::progress::{Bars, JsonLines, PlainLines};
use super::{OutputFormat, interrupted, runtime};
use crate::executor::clock::Clock;
use crate::executor::event::{Fanout, Observer};
use crate::executor::journal::{self, AbortState, Record};
use crate::executor::journal_store::{self, Location};
use crate::executor::node_state::{self, NodeState};
use crate::executor::steps::HookSettings;
use crate::executor::{self, Options, Rollout, WindowMode};
use crate::exit_code;
use crate::plan::{self, Plan};
use crate::planner::StepRef;
use crate::rehearse::{self, RehearseOptions, Report};
use crate::world::retry::Patience;

/// `noderoll apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// The cluster. Hooks get the kubeconfig as KUBECONFIG and the context as
    /// NODEROLL_CONTEXT.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Go on with a rollout that `noderoll abort` stopped (the nodes it put back start
    /// over, those it left cordoned go on from their step).
    #[arg(long)]
    pub resume_aborted: bool,
    /// Do not ask before the first change.
    #[arg(long, short)]
    pub yes: bool,
    /// The journal's plan version and the lock.
    #[command(flatten)]
    pub claim: ClaimArgs,
    /// `text`: progress bars (plain lines when stderr is not a terminal); `json`: one event
    /// per line on stdout.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Where tracing logs go; `.noderoll/<plan>.log` beside the plan by default.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// The folder for the log file and hook logs; `.noderoll` beside the plan by default
    /// (give a writable one when the plan is on a read-only mount).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Stop (exit 0, `paused`) when the maintenance window closes and the nodes in progress
    /// are done, instead of waiting for the next window (started outside one, it first
    /// waits for the next): for a scheduled run (the CronJob of `noderoll manifests`) that
    /// the next window's run resumes.
    #[arg(long)]
    pub until_window_end: bool,
    /// Real seconds per plan second, for a run against `noderoll sim serve --time-scale`:
    /// the plan's timeouts and windows then pass at the simulator's speed.
    #[arg(long, value_name = "SCALE", default_value_t = 1.0, hide_short_help = true)]
    pub time_scale: f64,
    /// Serve Prometheus metrics (nodes by state, step durations, current batch, last
    /// error) on this address at `/metrics`, e.g. `0.0.0.0:9464`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Start the plan's clock at this instant (RFC 3339) instead of now; with
    /// `--time-scale`, to try a window schedule against the simulator.
    #[arg(long, value_name = "INSTANT", requires = "time_scale", hide_short_help = true)]
    pub clock_start: Option<jiff::Timestamp>,
}

/// How a run claims a rollout: the journal must be of this plan's version, the lock free.
#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// Go on with a journal written for a different version of the plan.
    #[arg(long)]
    pub force: bool,
    /// Take the lock even if another run holds it, without waiting (only when that run is
    /// known dead: a live one goes on acting).
    #[arg(long)]
    pub break_lock: bool,
    /// Namespace of the lock Lease.
    #[arg(long, value_name = "NAMESPACE", default_value = "kube-system")]
    pub lock_namespace: String,
}

/// The cluster, as kubectl is told it.
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// The cluster's kubeconfig; KUBECONFIG, ~/.kube/config or in-cluster otherwise.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (the current one otherwise).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl KubeArgs {
    async fn connect(&self) -> Result<kube::Client> {
        Ok(crate::world::kube::connect_context(self.kubeconfig.as_deref(), self.context.as_deref()).await?)
    }

    /// The words a confirmation names the cluster with.
    fn named(&self) -> String {
        match &self.context {
            Some(context) => format!("the cluster of kubeconfig context `{context}`"),
            None => "the cluster of the current kubeconfig context".to_owned(),
        }
    }
}

/// Where a rollout's journal is.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The journal file; `.noderoll/<plan>.journal` beside the plan by default.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// Keep the journal in this ConfigMap instead of a file (a rollout run inside the
    /// cluster, whose pod has no lasting disk).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "journal", value_parser = Location::config_map)]
    pub journal_configmap: Option<Location>,
}

impl JournalArgs {
    fn location(&self, plan: &Path) -> Location {
        match (&self.journal_configmap, &self.journal) {
            (Some(location), _) => location.clone(),
            (None, Some(path)) => Location::File(path.clone()),
            (None, None) => Location::File(journal::default_path(plan)),
        }
    }
}

/// Reads a journal; a ConfigMap through the kubeconfig's cluster.
fn read_journal(location: &Location, kube: &KubeArgs) -> Result<journal::Replay> {
    let replay = match location {
        Location::File(path) => journal::read(path),
        Location::ConfigMap { .. } => runtime()?.block_on(async {
            let client = kube.connect().await?;
            Ok::<_, Error>(journal_store::read(location, &client, &Patience::default()).await)
        })?,
    };
    replay.map_err(|e| Error::Exec(e.into()))
}

/// `noderoll rehearse`.
#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Build the simulated cluster from `kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`
    /// output instead of generating it from the plan's nodes.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Real seconds per simulated second (0.0005 runs the cluster 2,000 times as fast).
    #[arg(long, default_value_t = 0.0005)]
    pub time_scale: f64,
    /// Seeds the simulated cluster (session lifetimes, uids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Session pods per generated workstation.
    #[arg(long, default_value_t = 2)]
    pub sessions_per_node: usize,
    /// Nodes generated for each batch that selects its nodes by labels.
    #[arg(long, default_value_t = 6)]
    pub nodes_per_selector: usize,
    /// Keep the journal and hook logs in this folder (a temporary one otherwise).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// `text`: progress on stderr, then the report; `json`: events as JSON lines on
    /// stdout, then the report.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Start the simulated clock at this instant (RFC 3339, e.g. `2026-11-27T22:00:00Z`) and
    /// wait for each maintenance window as a real rollout would: the report then counts
    /// the windows the rollout takes and when it ends. Without it windows are ignored
    /// and estimated.
    #[arg(long, value_name = "INSTANT")]
    pub from: Option<jiff::Timestamp>,
}

/// `noderoll status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The plan file (to find its journal).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// The cluster, for a journal kept in a ConfigMap.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// `text`: a summary line and one line per node; `json`: `{"summary", "nodes"}`.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `noderoll approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The plan file (to find its journal).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Nodes to approve for uncordon, or manual DNS steps (`cp1/dns-withdraw`) whose
    /// change you have made.
    #[arg(value_name = "NODE|STEP", required = true)]
    pub nodes: Vec<String>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// The cluster, for a journal kept in a ConfigMap.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `noderoll abort`.
#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// The cluster.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// How long to wait for a running apply to stop at its next safe point (its running
    /// upgrade or verify hook finishes first), e.g. `30m`.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = crate::plan::duration::parse_positive)]
    pub wait: std::time::Duration,
    /// The journal's plan version and the lock.
    #[command(flatten)]
    pub claim: ClaimArgs,
    /// `text`: what it does on stderr, the outcome on stdout; `json`: one event per line
    /// on stdout, then the outcome.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub(super) fn abort(args: AbortArgs) -> Result<i32> {
    let (plan, text) = load(&args.plan)?;
    let plan_dir = args.plan.parent().unwrap_or_else(|| Path::new("."));
    let dns = plan.load_balancer.dns.as_ref().map(|dns| crate::world::dns::provider(dns, plan_dir)).transpose()?;
    let state = state_dir(&args.plan);
    init_tracing(&state.join(format!("{}.log", plan_stem(&args.plan))))?;
    let options = Options {
        journal: args.journal.location(&args.plan),
        force: args.claim.force,
        break_lock: args.claim.break_lock,
        resume_aborted: false,
        lock_namespace: args.claim.lock_namespace.clone(),
        clock: Clock::scaled(None, 1.0),
        patience: Patience::default(),
        windows: WindowMode::Wait,
        hooks: HookSettings { log_dir: state.join(format!("{}.logs", plan_stem(&args.plan))), env: Vec::new() },
        rehearsal: None,
    };
    let outcome = runtime()?.block_on(async {
        let client = crate::world::kube::connect_with_failover(
            args.kube.kubeconfig.as_deref(),
            args.kube.context.as_deref(),
            &plan.api_servers,
        )
        .await?;
        let rollout = Rollout::plan(&client, plan, &text, &options.patience).await?;
        Ok::<_, Error>(executor::abort::abort(client, rollout, &options, dns, observer(args.output), args.wait).await?)
    })?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&outcome)?),
        OutputFormat::Text => println!("{}", describe_abort(&outcome, &options.journal)),
    }
    Ok(exit_code::SUCCESS)
}

fn describe_abort(outcome: &executor::abort::AbortOutcome, journal: &Location) -> String {
    use executor::abort::AbortOutcome;
    let left = |left: &[journal::LeftNode]| {
        left.iter().map(|l| format!("\n  left cordoned: {} at {} ({})", l.node, l.step, l.state)).collect::<String>()
    };
    match outcome {
        AbortOutcome::Aborted { restored, left: l, .. } => {
            format!("aborted: {} node(s) put back, {} left out of service{}", restored.len(), l.len(), left(l))
        }
        AbortOutcome::AlreadyAborted { at, left: l } => {
            format!("already aborted at {at}; nothing changed{}", left(l))
        }
        AbortOutcome::Finished => format!("the rollout in {journal} has finished; there is nothing to abort"),
    }
}

fn load(path: &Path) -> Result<(Plan, String)> {
    let checked = plan::check_file(path);
    let text = checked.source.as_ref().map(|s| s.text().to_owned()).unwrap_or_default();
    match checked.plan {
        Some(plan) => Ok((plan, text)),
        None => Err(Error::InvalidPlan(checked.diagnostics)),
    }
}

fn observer(output: OutputFormat) -> Arc<dyn Observer> {
    match output {
        OutputFormat::Json => Arc::new(JsonLines),
        OutputFormat::Text if std::io::stderr().is_terminal() => Arc::new(Bars::new()),
        OutputFormat::Text => Arc::new(PlainLines),
    }
}

fn state_dir(plan: &Path) -> PathBuf {
    journal::default_path(plan).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn plan_stem(plan: &Path) -> String {
    plan.file_stem().map_or_else(|| "plan".into(), |s| s.to_string_lossy().into_owned())
}

/// Sends tracing output to a file; returns a guard-free setup (the file is appended to).
fn init_tracing(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            action: "create",
            path: parent.display().to_string(),
            source,
        })?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.display().to_string(),
        source,
    })?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODEROLL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("noderoll=debug,kube=info"));
    // A second initialisation (tests calling run twice) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Lines typed on a terminal approve nodes (the prompt the approve step shows).
fn approvals_from_stdin(journal_path: PathBuf) {
    if !std::io::stdin().is_terminal() {
        return;
    }
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(std::result::Result::ok) {
            let node = line.trim().trim_start_matches("approve").trim().to_owned();
            if node.is_empty() {
                continue;
            }
            let by = format!("{} (terminal)", executor::lock::holder_identity());
            let _ = journal::append_to_path(&journal_path, &Record::Approved { at: journal::now(), node, by });
        }
    });
}

fn confirm(plan: &Plan, cluster: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Refused(
            "apply changes the cluster and stdin is not a terminal to confirm it; pass --yes".into(),
        ));
    }
    eprint!("Roll out plan `{}` on {cluster}? This cordons, drains and upgrades nodes. [y/N] ", plan.name);
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).map_err(|source| Error::Io {
        action: "read",
        path: "stdin".into(),
        source,
    })?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub(super) fn apply(args: ApplyArgs) -> Result<i32> {
    let (plan, text) = load(&args.plan)?;
    let plan_dir = args.plan.parent().unwrap_or_else(|| Path::new("."));
    let dns = plan.load_balancer.dns.as_ref().map(|dns| crate::world::dns::provider(dns, plan_dir)).transpose()?;
    let journal_location = args.journal.location(&args.plan);
    let state = args.state_dir.clone().unwrap_or_else(|| state_dir(&args.plan));
    let log_file = args.log_file.clone().unwrap_or_else(|| state.join(format!("{}.log", plan_stem(&args.plan))));
    init_tracing(&log_file)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let client = crate::world::kube::connect_with_failover(
            args.kube.kubeconfig.as_deref(),
            args.kube.context.as_deref(),
            &plan.api_servers,
        )
        .await?;
        if !args.yes && !confirm(&plan, &args.kube.named())? {
            eprintln!("nothing changed");
            return Ok(exit_code::SUCCESS);
        }
        let mut env = Vec::new();
        if let Some(path) = &args.kube.kubeconfig {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            env.push(("KUBECONFIG".into(), absolute.into_os_string()));
        }
        if let Some(context) = &args.kube.context {
            env.push(("NODEROLL_CONTEXT".into(), context.into()));
        }
        let options = Options {
            journal: journal_location.clone(),
            force: args.claim.force,
            break_lock: args.claim.break_lock,
            resume_aborted: args.resume_aborted,
            lock_namespace: args.claim.lock_namespace.clone(),
            clock: Clock::scaled(args.clock_start, args.time_scale),
            patience: Patience::default(),
            windows: if args.until_window_end { WindowMode::Pause } else { WindowMode::Wait },
            hooks: HookSettings { log_dir: state.join(format!("{}.logs", plan_stem(&args.plan))), env },
            rehearsal: None,
        };
        let rollout = Rollout::plan(&client, plan, &text, &options.patience).await?;
        if let Location::File(path) = journal_location {
            approvals_from_stdin(path);
        }
        let mut observers = vec![observer(args.output)];
        if let Some(addr) = args.metrics_addr {
            let metrics = Arc::new(crate::observe::metrics::Metrics::new());
            let bound = crate::observe::metrics::serve(addr, metrics.clone()).await.map_err(|source| Error::Io {
                action: "listen on",
                path: addr.to_string(),
                source,
            })?;
            tracing::info!(%bound, "serving metrics");
            observers.push(metrics);
        }
        let notifier = match &rollout.plan.webhook {
            Some(webhook) => {
                let url = crate::observe::notify::url(&webhook.url, plan_dir)?;
                let http = crate::world::http::HttpClient::new().map_err(Error::Http)?;
                let notifier = Arc::new(crate::observe::notify::Notifier::start(
                    url,
                    &rollout.plan.name,
                    webhook.events.clone(),
                    webhook.format,
                    http,
                ));
                observers.push(notifier.clone());
                Some(notifier)
            }
            None => None,
        };
        let observer: Arc<dyn Observer> = Arc::new(Fanout(observers));
        let outcome = executor::apply(client, rollout, &options, dns, observer.clone(), interrupted()).await;
        if let Some(notifier) = notifier {
            let undelivered = notifier.finish().await;
            if undelivered > 0 {
                observer.event(&crate::executor::event::Event::Warning {
                    message: format!("{undelivered} webhook notification(s) could not be delivered; see the log file"),
                });
            }
        }
        Ok(outcome?.ending().exit_code())
    })
}

pub(super) fn rehearse(args: RehearseArgs) -> Result<i32> {
    let (plan, text) = load(&args.plan)?;
    let temporary;
    let workdir = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("noderoll-rehearse-")
                .tempdir()
                .map_err(|source| Error::Io { action: "create", path: "a temporary folder".into(), source })?;
            temporary.path().to_owned()
        }
    };
    let program = std::env::current_exe().map_err(|source| Error::Io {
        action: "find",
        path: "the noderoll executable".into(),
        source,
    })?;
    let options = RehearseOptions {
        snapshot: args.snapshot.clone(),
        time_scale: args.time_scale,
        seed: args.seed,
        sessions_per_node: args.sessions_per_node,
        nodes_per_selector: args.nodes_per_selector,
        workdir,
        program,
        from: args.from,
    };
    init_tracing(&options.workdir.join("noderoll.log"))?;
    let report =
        runtime()?.block_on(rehearse::rehearse(plan, &text, &options, observer(args.output), interrupted()))?;
    let code = report.outcome.exit_code();
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&rehearse::ReportLine { report })?),
        OutputFormat::Text => print!("{}", render_report(&report, args.keep.is_some())),
    }
    Ok(code)
}

fn render_report(report: &Report, kept: bool) -> String {
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(&mut out, format!("\nRehearsal of `{}`: {}", report.plan, report.outcome));
    line(
        &mut out,
        format!(
            "  makespan      {} simulated ({:.1} s real), {} node(s)",
            simulated(report.simulated_seconds),
            report.real_seconds,
            report.nodes
        ),
    );
    if report.critical_path_seconds > 0.0 {
        line(
            &mut out,
            format!(
                "  lower bound   {} (the critical path with these step durations; makespan {:+.1}%)",
                simulated(report.critical_path_seconds),
                (report.simulated_seconds / report.critical_path_seconds - 1.0) * 100.0
            ),
        );
    }
    match (report.windows_needed, &report.ends_at) {
        (Some(windows), Some(ends)) => {
            line(&mut out, format!("  windows       {windows} maintenance window(s), finishing {ends}"))
        }
        (Some(windows), None) => line(
            &mut out,
            format!("  windows       at least {windows} maintenance window(s) (--from counts them exactly)"),
        ),
        _ => {}
    }
    let once = report.reboots.values().filter(|r| **r == 1).count();
    line(&mut out, format!("  upgrades      {} node(s) rebooted, {once} exactly once", report.reboots.len()));
    if let Some(dns) = &report.dns {
        let show = |a: &[std::net::IpAddr]| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        line(
            &mut out,
            format!(
                "  dns           {}: {} change(s), never fewer than {} address(es); before [{}], after [{}]",
                dns.record,
                dns.changes,
                dns.fewest,
                show(&dns.initial),
                show(&dns.last)
            ),
        );
    }
    if report.approvals > 0 {
        line(
            &mut out,
            format!(
                "  approvals     {} given by the rehearsal (a real rollout waits for `noderoll approve`)",
                report.approvals
            ),
        );
    }
    if !report.slowest_steps.is_empty() {
        line(&mut out, "  slowest steps".into());
        for s in &report.slowest_steps {
            line(&mut out, format!("    {:<32} {}", s.step, simulated(s.seconds)));
        }
    }
    if report.blockers.is_empty() {
        line(&mut out, "  blockers      none".into());
    } else {
        line(&mut out, "  blockers".into());
        for b in &report.blockers {
            line(&mut out, format!("    {b}"));
        }
    }
    if kept {
        line(&mut out, format!("  journal       {}", report.journal));
    }
    out
}

pub(super) fn status(args: &StatusArgs) -> Result<i32> {
    let location = args.journal.location(&args.plan);
    let replay = read_journal(&location, &args.kube)?;
    if replay.records.is_empty() {
        return Err(Error::Refused(format!(
            "no rollout has started: the journal {location} does not exist or is empty"
        )));
    }
    let nodes = node_state::from_replay(&replay);
    let last = match (&replay.abort, replay.records.last()) {
        (Some(AbortState::Done { at, by, left, .. }), _) => {
            format!("aborted at {at} by {by}, {} node(s) left cordoned; `apply --resume-aborted` goes on", left.len())
        }
        (Some(AbortState::Requested { at, by }), _) => {
            format!("aborting: asked at {at} by {by} and not finished (if no `noderoll abort` runs, run it again)")
        }
        (None, Some(Record::Finished { .. })) => "finished".to_owned(),
        (None, Some(Record::Halted { .. })) => "halted".to_owned(),
        (None, Some(Record::Incomplete { .. })) => {
            "incomplete: every node was tried, and the failed ones wait to be retried".to_owned()
        }
        (None, Some(Record::Interrupted { .. })) => "interrupted".to_owned(),
        (None, Some(Record::Paused { .. })) => "paused until the next window".to_owned(),
        _ => "running or killed".to_owned(),
    };
    let count = |state: NodeState| nodes.iter().filter(|n| n.state == state).count();
    let summary = serde_json::json!({
        "plan": replay.plan_name, "journal": location.to_string(), "last": last, "abort": replay.abort,
        "nodes": nodes.len(), "done": count(NodeState::Done), "inProgress": count(NodeState::InProgress),
        "failed": count(NodeState::Failed), "pending": count(NodeState::Pending),
        "cordoned": nodes.iter().filter(|n| n.cordoned).map(|n| n.node.as_str()).collect::<Vec<_>>(),
    });
    match args.output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"summary": summary, "nodes": nodes}))?)
        }
        OutputFormat::Text => {
            println!(
                "plan `{}`: {last}; {} of {} node(s) done, {} in progress, {} failed, {} pending",
                replay.plan_name.unwrap_or_default(),
                summary["done"],
                summary["nodes"],
                summary["inProgress"],
                summary["failed"],
                summary["pending"]
            );
            for n in &nodes {
                let cordoned = if n.cordoned { " (cordoned)" } else { "" };
                println!("  {:<16} {:<12} {:<12}{cordoned} {}", n.node, n.batch, n.state.name(), n.detail);
            }
        }
    }
    Ok(exit_code::SUCCESS)
}

pub(super) fn approve(args: &ApproveArgs) -> Result<i32> {
    let location = args.journal.location(&args.plan);
    let replay = read_journal(&location, &args.kube)?;
    let known: Vec<&String> = replay.batches.iter().flat_map(|b| &b.nodes).collect();
    for key in &args.nodes {
        let (node, dns_step) = match StepRef::parse(key) {
            Some(StepRef::Node { node, action }) if action.is_dns() => (node, true),
            _ if key.contains('/') => {
                return Err(Error::Refused(format!(
                    "`{key}` is neither a node nor a DNS step; approve a node (`cp1`) or a manual DNS change (`cp1/dns-withdraw`)"
                )));
            }
            _ => (key.as_str(), false),
        };
        if !known.is_empty() && !known.iter().any(|k| *k == node) {
            return Err(Error::Refused(format!("node `{node}` is not part of the rollout in {location}")));
        }
        let by = executor::lock::holder_identity();
        let record = Record::Approved { at: journal::now(), node: key.clone(), by };
        match &location {
            Location::File(path) => journal::append_to_path(path, &record),
            Location::ConfigMap { .. } => runtime()?.block_on(async {
                let client = args.kube.connect().await?;
                Ok::<_, Error>(journal_store::append_once(&location, &client, &Patience::default(), &record).await)
            })?,
        }
        .map_err(|e| Error::Exec(e.into()))?;
        if dns_step {
            println!("approved {key}: the running apply now waits until the resolvers serve the change");
        } else {
            println!("approved {key}: the running apply uncordons it once its earlier steps are done");
        }
    }
    Ok(exit_code::SUCCESS)
}

/// A simulated length of time from a report, as reports print lengths.
fn simulated(seconds: f64) -> String {
    crate::plan::duration::elapsed(std::time::Duration::from_secs_f64(seconds.max(0.0)))
}
