//! `noderoll rehearse`: the real executor against an in-process simulator, on a fast clock,
//! with a simulated DNS record and the simulator's own upgrade standing in for the plan's
//! hooks. Nothing else differs from `apply`: the same journal, lock, steps and API calls.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::executor::clock::Clock;
use crate::executor::event::{Event, Observer};
use crate::executor::journal::{self, Record};
use crate::executor::steps::{HookSettings, StepError, full_record};
use crate::executor::{self, Ending, ExecError, Options, Rehearsal, Rollout, WindowMode};
use crate::exit_code::{self, KnowsExitCode};
use crate::plan::Plan;
use crate::plan::model::Role;
use crate::plan::resolved::Members;
use crate::plan::template::{CommandTemplate, TemplateError};
use crate::sim::{GenerateOptions, NodeSpec, Population, SimConfig, SimError, Simulator};
use crate::world::dns::{DnsProvider, SimulatedDns};
use crate::world::kube::ConnectError;
use crate::world::retry::Patience;

/// Why a rehearsal cannot run to its report.
#[derive(Debug, thiserror::Error)]
pub enum RehearseError {
    /// The simulated cluster cannot start, or its kubeconfig cannot be written.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The rehearsal's folder cannot be created.
    #[error("cannot create `{path}`")]
    Workdir {
        /// The folder.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No client can be made for the simulated cluster.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The simulated upgrade hook cannot be written as a command template.
    #[error("cannot build the simulated upgrade hook")]
    UpgradeHook(#[source] TemplateError),
    /// The service nodes' addresses for the simulated DNS record cannot be read.
    #[error("cannot find the service nodes' addresses")]
    Addresses(#[source] StepError),
    /// The rollout cannot start or go on.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The simulator's state (its reboot counts) cannot be read.
    #[error("cannot read the simulator's state")]
    State(#[source] kube::Error),
}

impl KnowsExitCode for RehearseError {
    fn exit_code(&self) -> i32 {
        match self {
            RehearseError::Exec(e) => e.exit_code(),
            _ => exit_code::FAILURE,
        }
    }
}

type Result<T, E = RehearseError> = std::result::Result<T, E>;

/// How to rehearse.
#[derive(Debug, Clone)]
pub struct RehearseOptions {
    /// Build the cluster from this snapshot instead of generating it from the plan.
    pub snapshot: Option<PathBuf>,
    /// Real seconds per simulated second.
    pub time_scale: f64,
    /// Seeds the simulated cluster.
    pub seed: u64,
    /// Session pods per generated workstation.
    pub sessions_per_node: usize,
    /// Nodes generated for each batch that selects by labels.
    pub nodes_per_selector: usize,
    /// Folder for the journal, hook logs and kubeconfig.
    pub workdir: PathBuf,
    /// The noderoll binary the simulated upgrade hook runs (`noderoll sim ctl upgrade`).
    pub program: PathBuf,
    /// Start the plan's clock at this instant and honour its maintenance windows, waiting
    /// (in simulated time) for each to open; `None` ignores windows and estimates them.
    pub from: Option<jiff::Timestamp>,
}

/// What a rehearsal found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Plan name.
    pub plan: String,
    /// How it ended.
    pub outcome: Ending,
    /// Nodes in the rollout.
    pub nodes: usize,
    /// Real seconds the rehearsal took.
    pub real_seconds: f64,
    /// The same in simulated (cluster) time: the rollout's expected makespan.
    pub simulated_seconds: f64,
    /// The longest path through the step graph with each step taking the time it took
    /// here, in simulated seconds: the shortest makespan any scheduler could reach with
    /// these step durations.
    pub critical_path_seconds: f64,
    /// Maintenance windows the rollout needs (when the plan has a window): counted from
    /// the run when it started `from` an instant, otherwise at least the makespan divided
    /// by the window's length.
    pub windows_needed: Option<u64>,
    /// Whether `windows_needed` was counted (true) or estimated (false).
    pub windows_counted: bool,
    /// The plan clock's instant at the end, when the rehearsal ran `from` an instant.
    pub ends_at: Option<String>,
    /// Steps that waited longest, in simulated seconds: where the rollout spends its time.
    pub slowest_steps: Vec<SlowStep>,
    /// What held the rollout up: disruption budgets, sessions, failures.
    pub blockers: Vec<String>,
    /// Reboots per node the simulator saw (each upgraded node once).
    pub reboots: BTreeMap<String, u64>,
    /// DNS: the smallest number of addresses the record had, and the changes made.
    pub dns: Option<DnsSummary>,
    /// Approvals given automatically (a real rollout waits for `noderoll approve`).
    pub approvals: usize,
    /// The rehearsal's journal.
    pub journal: String,
}

/// The last line of `rehearse -o json`, `{"event": "report", "report": {...}}`: the one
/// shape `rehearse` writes and `preview --rehearsal` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename = "report")]
pub struct ReportLine {
    /// The report.
    pub report: Report,
}

impl ReportLine {
    /// The report in `rehearse -o json` output, if it holds one.
    pub fn find(output: &str) -> Option<Report> {
        output.lines().find_map(|l| serde_json::from_str::<ReportLine>(l).ok()).map(|line| line.report)
    }
}

/// A slow step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowStep {
    /// Step id.
    pub step: String,
    /// Simulated seconds.
    pub seconds: f64,
}

/// What happened to the DNS record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsSummary {
    /// The record.
    pub record: String,
    /// Addresses at the start.
    pub initial: Vec<IpAddr>,
    /// Addresses at the end.
    pub last: Vec<IpAddr>,
    /// The fewest addresses it ever had.
    pub fewest: usize,
    /// Changes made.
    pub changes: usize,
}

/// Forwards events and keeps what the report needs; answers approvals itself.
struct Recorder {
    inner: Arc<dyn Observer>,
    journal: PathBuf,
    state: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    started: BTreeMap<String, tokio::time::Instant>,
    durations: Vec<(String, f64)>,
    blockers: Vec<String>,
    approvals: usize,
    node_started: bool,
    window_waits_after_start: u64,
}

impl Observer for Recorder {
    fn event(&self, event: &Event) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::StepStarted { step, node, .. } => {
                    state.started.insert(step.clone(), tokio::time::Instant::now());
                    state.node_started |= node.is_some();
                }
                Event::WaitingForWindow { .. } if state.node_started => state.window_waits_after_start += 1,
                Event::StepFinished { step, seconds, .. } => state.durations.push((step.clone(), *seconds)),
                Event::StepProgress { step, message, .. }
                    if message.contains("held by a disruption budget") && !message.contains(" 0 held") =>
                {
                    let note = format!("{step}: {message}");
                    if !state.blockers.iter().any(|b| b.starts_with(&format!("{step}:"))) {
                        state.blockers.push(note);
                    }
                }
                Event::StepFailed { step, error, .. } => state.blockers.push(format!("{step} failed: {error}")),
                Event::Warning { message } => state.blockers.push(message.clone()),
                Event::AwaitingApproval { node, .. } => {
                    state.approvals += 1;
                    let record = Record::Approved { at: journal::now(), node: node.clone(), by: "rehearsal".into() };
                    if let Err(e) = journal::append_to_path(&self.journal, &record) {
                        state.blockers.push(format!("cannot approve {node} in the rehearsal: {e}"));
                    }
                }
                _ => {}
            }
        }
        self.inner.event(event);
    }
}

/// Nodes to generate so that the plan's batches find theirs: named nodes as named, and for
/// each selector batch a few nodes labelled to match it.
fn nodes_for(plan: &Plan, per_selector: usize) -> Vec<NodeSpec> {
    let mut extra = BTreeMap::new();
    if let Some(label) = &plan.load_balancer.bgp_label {
        extra.insert(label.key.clone(), label.value.clone().unwrap_or_else(|| "true".into()));
    }
    let mut nodes = Vec::new();
    for batch in &plan.batches {
        let service = batch.role == Role::Service;
        match &batch.members {
            Members::Nodes(names) => {
                nodes.extend(names.iter().map(|n| NodeSpec { name: n.clone(), service, labels: extra.clone() }));
            }
            Members::Selector(selector) => {
                let mut labels = extra.clone();
                labels.extend(selector.example_labels());
                let width = per_selector.to_string().len().max(2);
                nodes.extend((1..=per_selector).map(|i| NodeSpec {
                    name: format!("{}-{i:0width$}", batch.name),
                    service,
                    labels: labels.clone(),
                }));
            }
        }
    }
    nodes
}

/// The simulated upgrade for each batch: the simulator's own upgrade to the versions the
/// batch's verify step expects.
fn upgrade_overrides(plan: &Plan, program: &Path, kubeconfig: &Path) -> Result<BTreeMap<String, CommandTemplate>> {
    let mut overrides = BTreeMap::new();
    for batch in &plan.batches {
        let mut argv: Vec<String> = vec![
            program.display().to_string(),
            "sim".into(),
            "ctl".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "upgrade".into(),
            "{node}".into(),
        ];
        let verify = &batch.settings.verify;
        if let Some(version) = &verify.kubelet_version {
            argv.extend(["--kubelet-version".into(), version.clone()]);
        }
        if let Some(image) = &verify.os_image {
            argv.extend(["--os-image".into(), image.clone()]);
        }
        let escaped: Vec<String> = argv
            .iter()
            .map(|a| if a == "{node}" { a.clone() } else { a.replace('{', "{{").replace('}', "}}") })
            .collect();
        let template = CommandTemplate::parse(&escaped, &["node"]).map_err(RehearseError::UpgradeHook)?;
        overrides.insert(batch.name.clone(), template);
    }
    Ok(overrides)
}

/// Runs the rehearsal and reports.
pub async fn rehearse(
    plan: Plan,
    plan_text: &str,
    options: &RehearseOptions,
    observer: Arc<dyn Observer>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Report> {
    let population = match &options.snapshot {
        Some(path) => Population::Snapshot(path.clone()),
        None => Population::Generate(GenerateOptions {
            sessions_per_node: options.sessions_per_node,
            named: nodes_for(&plan, options.nodes_per_selector),
            ..GenerateOptions::default()
        }),
    };
    let config = SimConfig { time_scale: options.time_scale, seed: options.seed, ..SimConfig::default() };
    let simulator = Simulator::start(config, population).await?;
    for warning in simulator.warnings() {
        observer.event(&Event::Warning { message: format!("snapshot: {warning}") });
    }
    let result = run(&simulator, plan, plan_text, options, observer, interrupt).await;
    simulator.stop().await;
    result
}

async fn run(
    simulator: &Simulator,
    plan: Plan,
    plan_text: &str,
    options: &RehearseOptions,
    observer: Arc<dyn Observer>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Report> {
    std::fs::create_dir_all(&options.workdir)
        .map_err(|source| RehearseError::Workdir { path: options.workdir.display().to_string(), source })?;
    let kubeconfig = options.workdir.join("kubeconfig");
    simulator.write_kubeconfig(&kubeconfig)?;
    let client = crate::world::kube::for_url(&simulator.url())?;
    let patience = Patience::default();
    let rollout = Rollout::plan(&client, plan, plan_text, &patience).await?;
    let (plan, planned) = (&rollout.plan, &rollout.planned);
    let dns = match &plan.load_balancer.dns {
        Some(dns) => {
            let addresses = full_record(&client, &patience, plan, planned).await.map_err(RehearseError::Addresses)?;
            Some(Arc::new(SimulatedDns::new(
                &dns.name,
                addresses,
                dns.ttl.unwrap_or(crate::plan::defaults::ASSUMED_TTL),
            )))
        }
        None => None,
    };
    let journal_path = options.workdir.join(format!("{}.journal", plan.name));
    let clock = Clock::scaled(options.from, options.time_scale);
    let recorder = Arc::new(Recorder { inner: observer, journal: journal_path.clone(), state: Mutex::default() });
    let run_options = Options {
        journal: executor::journal_store::Location::File(journal_path.clone()),
        force: false,
        break_lock: false,
        resume_aborted: false,
        lock_namespace: "kube-system".into(),
        clock,
        patience,
        windows: WindowMode::Wait,
        hooks: HookSettings {
            log_dir: options.workdir.join("logs"),
            env: vec![("KUBECONFIG".into(), kubeconfig.clone().into_os_string())],
        },
        rehearsal: Some(Rehearsal {
            upgrade: upgrade_overrides(plan, &options.program, &kubeconfig)?,
            await_windows: options.from.is_some(),
        }),
    };
    let window = plan.window.clone();
    let record = plan.load_balancer.dns.as_ref().map(|d| d.name.clone()).unwrap_or_default();
    let name = plan.name.clone();
    let started = tokio::time::Instant::now();
    let provider = dns.clone().map(|d| d as Arc<dyn DnsProvider>);
    let planned = Arc::clone(&rollout.planned);
    let nodes = planned.chains.len();
    let outcome = executor::apply(client.clone(), rollout, &run_options, provider, recorder.clone(), interrupt).await?;
    let real_seconds = started.elapsed().as_secs_f64();
    let simulated_seconds = real_seconds / options.time_scale;
    let reboots = reboots(&client).await?;
    let recorded = std::mem::take(&mut *recorder.state.lock().unwrap_or_else(|e| e.into_inner()));
    let mut slowest: Vec<SlowStep> = recorded
        .durations
        .iter()
        .filter(|(step, _)| !step.starts_with("batch/"))
        .map(|(step, seconds)| SlowStep { step: step.clone(), seconds: seconds / options.time_scale })
        .collect();
    let measured: BTreeMap<&str, f64> = recorded.durations.iter().map(|(step, s)| (step.as_str(), *s)).collect();
    let graph = &planned.graph;
    let critical_path_seconds = crate::planner::estimate::longest_path(graph, |i| {
        Duration::from_secs_f64(measured.get(graph.step(i).id.as_str()).copied().unwrap_or(0.0))
    })
    .duration
    .as_secs_f64()
        / options.time_scale;
    slowest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    slowest.truncate(5);
    let windows_counted = options.from.is_some();
    let windows_needed = window.map(|w| match windows_counted {
        true => recorded.window_waits_after_start + u64::from(recorded.node_started),
        false => (simulated_seconds / w.duration.as_secs_f64().max(1.0)).ceil() as u64,
    });
    let ends_at = options.from.map(|_| clock.now().to_string());
    let dns = dns.map(|d| {
        let history = d.history();
        DnsSummary {
            record: record.clone(),
            initial: history.first().cloned().unwrap_or_default(),
            last: history.last().cloned().unwrap_or_default(),
            fewest: history.iter().map(Vec::len).min().unwrap_or(0),
            changes: history.len().saturating_sub(1),
        }
    });
    Ok(Report {
        plan: name,
        outcome: outcome.ending(),
        nodes,
        real_seconds,
        simulated_seconds,
        critical_path_seconds,
        windows_needed,
        windows_counted,
        ends_at,
        slowest_steps: slowest,
        blockers: recorded.blockers,
        reboots,
        dns,
        approvals: recorded.approvals,
        journal: journal_path.display().to_string(),
    })
}

async fn reboots(client: &kube::Client) -> Result<BTreeMap<String, u64>> {
    let mut request = http::Request::new(Vec::new());
    *request.uri_mut() = http::Uri::from_static("/sim/v1/state");
    let state: serde_json::Value = client.request(request).await.map_err(RehearseError::State)?;
    Ok(serde_json::from_value(state["reboots"].clone()).unwrap_or_default())
}
