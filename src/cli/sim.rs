//! `noderoll sim serve` and `noderoll sim ctl`: the simulator's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::error::{Error, Result};
use crate::exit_code;
use crate::sim::{self, FaultSettings, GenerateOptions, Population, SimConfig, Simulator};

/// `noderoll sim ...`.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Serve a simulated cluster that kubectl and kube-rs talk to as to a real one.
    Serve(Box<ServeArgs>),
    /// Steer a running simulator: reboot or upgrade nodes, inject faults, move time.
    Ctl(CtlArgs),
}

fn duration(text: &str) -> std::result::Result<Duration, String> {
    sim::parse_duration(text)
}

fn lifetime(text: &str) -> std::result::Result<(Duration, Duration), String> {
    let (low, high) = text.split_once("..").ok_or("write the range as MIN..MAX, e.g. 10m..2h")?;
    let (low, high) = (duration(low)?, duration(high)?);
    if low > high {
        return Err(format!("{text}: the minimum is above the maximum"));
    }
    Ok((low, high))
}

/// `noderoll sim serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for the simulator here once it listens.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Copy a cluster: the output of `kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["control_planes", "workstations", "sessions_per_node", "services"])]
    pub snapshot: Option<PathBuf>,
    /// Generated cluster: control-plane (service) nodes, named cp1, cp2...
    #[arg(long, default_value_t = 3)]
    pub control_planes: usize,
    /// Generated cluster: workstation nodes, named ws01, ws02...
    #[arg(long, default_value_t = 6)]
    pub workstations: usize,
    /// Generated cluster: session pods per workstation.
    #[arg(long, default_value_t = 2)]
    pub sessions_per_node: usize,
    /// Generated cluster: Juno service Deployments, each with a PDB allowing one pod down.
    #[arg(long, default_value_t = 3)]
    pub services: usize,
    /// Generated cluster: replicas per service.
    #[arg(long, default_value_t = 2)]
    pub service_replicas: usize,
    /// Generated cluster: kubelet version before upgrades.
    #[arg(long, default_value = "v1.31.3+k3s1")]
    pub kubelet_version: String,
    /// Generated cluster: OS image before upgrades.
    #[arg(long, default_value = "Debian GNU/Linux 12 (bookworm)")]
    pub os_image: String,
    /// Real seconds per simulated second: 0.01 runs the cluster 100 times as fast.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seed for every random choice (uids, session lifetimes, faults).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated time at start (RFC 3339); now by default.
    #[arg(long, value_name = "TIMESTAMP")]
    pub start_time: Option<jiff::Timestamp>,
    /// Simulated time from scheduling to Ready.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub pod_start: Duration,
    /// Simulated time a rebooting node stays NotReady.
    #[arg(long, default_value = "90s", value_parser = duration)]
    pub reboot_time: Duration,
    /// The annotation that marks a Juno session pod.
    #[arg(long, default_value = crate::labels::JUNO_SESSION)]
    pub session_annotation: String,
    /// Simulated lifetime of a session, drawn uniformly from MIN..MAX.
    #[arg(long, default_value = "10m..2h", value_parser = lifetime)]
    pub session_lifetime: (Duration, Duration),
    /// Simulated time after a session ends before its user starts a new one.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub session_reconnect: Duration,
    /// Log every API request as a JSON line here.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Watch events kept for resuming watches; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 100_000)]
    pub watch_history: usize,
    /// Real time between watch bookmarks.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub bookmark_interval: Duration,
}

impl ServeArgs {
    fn config(&self) -> (SimConfig, Population) {
        let config = SimConfig {
            listen: self.listen,
            time_scale: self.time_scale,
            seed: self.seed,
            start: self.start_time,
            behaviour: sim::Behaviour {
                pod_start: self.pod_start,
                reboot: self.reboot_time,
                session_annotation: self.session_annotation.clone(),
                session_lifetime: self.session_lifetime,
                session_reconnect: self.session_reconnect,
            },
            audit_log: self.audit_log.clone(),
            watch_history: self.watch_history,
            bookmark_interval: self.bookmark_interval,
        };
        let population = match &self.snapshot {
            Some(path) => Population::Snapshot(path.clone()),
            None => Population::Generate(GenerateOptions {
                control_planes: self.control_planes,
                workstations: self.workstations,
                sessions_per_node: self.sessions_per_node,
                services: self.services,
                service_replicas: self.service_replicas,
                kubelet_version: self.kubelet_version.clone(),
                os_image: self.os_image.clone(),
                named: Vec::new(),
            }),
        };
        (config, population)
    }
}

/// `noderoll sim ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The simulator's kubeconfig (as `sim serve --kubeconfig-out` wrote it); KUBECONFIG or
    /// ~/.kube/config otherwise.
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `sim ctl` does.
#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Print simulated time, object counts and active faults.
    State,
    /// Reboot a node: NotReady now, Ready with a new bootID after the reboot time.
    Reboot {
        /// The node.
        node: String,
        /// Simulated downtime; the simulator's --reboot-time otherwise.
        #[arg(long, value_name = "DURATION")]
        down_for: Option<String>,
        /// The node never comes back, whatever reboots or upgrades follow.
        #[arg(long)]
        fails: bool,
    },
    /// Upgrade a node: work, then reboot into the new versions. Returns once it reboots,
    /// as an upgrade hook that ends with `shutdown -r` does.
    Upgrade {
        /// The node.
        node: String,
        /// The kubelet version the node reports once back.
        #[arg(long)]
        kubelet_version: Option<String>,
        /// The OS image the node reports once back.
        #[arg(long)]
        os_image: Option<String>,
        /// Simulated time the upgrade works before rebooting.
        #[arg(long, value_name = "DURATION")]
        work: Option<String>,
        /// Simulated downtime of the reboot.
        #[arg(long, value_name = "DURATION")]
        down_for: Option<String>,
        /// The node never comes back, whatever reboots or upgrades follow.
        #[arg(long)]
        fails: bool,
    },
    /// Set the faults on the Kubernetes API (the control API is never affected); replaces
    /// what was set before.
    Faults {
        /// Probability of a 500 per request.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Probability of a 429 per request.
        #[arg(long, default_value_t = 0.0)]
        throttle_rate: f64,
        /// Probability of a dropped connection per request.
        #[arg(long, default_value_t = 0.0)]
        drop_rate: f64,
        /// Probability per request of carrying it out and then dropping the connection
        /// without an answer.
        #[arg(long, default_value_t = 0.0)]
        lost_answer_rate: f64,
        /// Lose the answer to the next request whose `METHOD /path` starts with this, once.
        #[arg(long, value_name = "METHOD PATH")]
        lose_next_answer: Option<String>,
        /// With --lose-next-answer: let this many matching requests through first.
        #[arg(long, default_value_t = 0, requires = "lose_next_answer")]
        lose_after: u32,
        /// Real delay added to every answer.
        #[arg(long, value_parser = duration, default_value = "0s")]
        latency: Duration,
        /// Drop every connection for this long (real time), from now.
        #[arg(long, value_parser = duration, default_value = "0s")]
        outage: Duration,
    },
    /// Move simulated time forward at once (timers due in between fire).
    Advance {
        /// How far, e.g. 8h.
        by: String,
    },
}

pub(super) fn run(command: SimCommand) -> Result<i32> {
    let runtime = super::runtime()?;
    match command {
        SimCommand::Serve(args) => runtime.block_on(serve(&args)),
        SimCommand::Ctl(args) => runtime.block_on(ctl(args)),
    }
}

async fn serve(args: &ServeArgs) -> Result<i32> {
    let (config, population) = args.config();
    let simulator = Simulator::start(config, population).await?;
    for warning in simulator.warnings() {
        eprintln!("warning: {warning}");
    }
    if let Some(path) = &args.kubeconfig_out {
        simulator.write_kubeconfig(path)?;
    }
    println!("noderoll sim: serving {}", simulator.url());
    super::interrupted().await;
    simulator.stop().await;
    eprintln!("noderoll sim: stopped");
    Ok(exit_code::SUCCESS)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

async fn ctl(args: CtlArgs) -> Result<i32> {
    let client = crate::world::kube::connect(args.kubeconfig.as_deref()).await?;
    let (method, path, body): (http::Method, String, Vec<u8>) = match &args.action {
        CtlAction::State => (http::Method::GET, "/sim/v1/state".into(), Vec::new()),
        CtlAction::Reboot { node, down_for, fails } => (
            http::Method::POST,
            format!("/sim/v1/nodes/{node}/reboot"),
            to_json(&sim::RebootRequest { down_for: down_for.clone(), fails: *fails })?,
        ),
        CtlAction::Upgrade { node, kubelet_version, os_image, work, down_for, fails } => (
            http::Method::POST,
            format!("/sim/v1/nodes/{node}/upgrade"),
            to_json(&sim::UpgradeRequest {
                kubelet_version: kubelet_version.clone(),
                os_image: os_image.clone(),
                work: work.clone(),
                down_for: down_for.clone(),
                fails: *fails,
            })?,
        ),
        CtlAction::Faults {
            error_rate,
            throttle_rate,
            drop_rate,
            lost_answer_rate,
            lose_next_answer,
            lose_after,
            latency,
            outage,
        } => (
            http::Method::PUT,
            "/sim/v1/faults".into(),
            to_json(&FaultSettings {
                error_rate: *error_rate,
                throttle_rate: *throttle_rate,
                drop_rate: *drop_rate,
                lost_answer_rate: *lost_answer_rate,
                latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                outage_ms: u64::try_from(outage.as_millis()).unwrap_or(u64::MAX),
                lose_next_answer: lose_next_answer.clone(),
                lose_after: *lose_after,
            })?,
        ),
        CtlAction::Advance { by } => {
            (http::Method::POST, "/sim/v1/clock/advance".into(), to_json(&sim::AdvanceRequest { by: by.clone() })?)
        }
    };
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| Error::Refused(format!("cannot build the request to the simulator: {e}")))?;
    let answer: Value =
        client.request(request).await.map_err(|source| Error::Api { context: "ask the simulator", source })?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(exit_code::SUCCESS)
}
