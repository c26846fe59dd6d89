//! The Kubernetes API simulator: an HTTP server that real kubectl and kube-rs talk to
//! unchanged, with a simulated cluster behind it. It stands in for a cluster in the tests,
//! the benchmarks and `noderoll rehearse`, and it is the only thing noderoll's own code is
//! ever tested against: there is no mock of the client side.
//!
//! - `resources`, `api`, `table`, `patch`, `selection`, `status`: the API surface.
//! - `store`: objects, resourceVersions, watch history.
//! - `cluster`, `controllers`, `clock`: the simulated cluster and how it moves.
//! - `generate`, `snapshot`: where the cluster comes from.
//! - `faults`, `audit`, `control`, `server`: what tests and benchmarks steer and measure.

mod api;
mod audit;
mod clock;
mod cluster;
mod control;
mod controllers;
mod faults;
mod generate;
mod patch;
mod resources;
mod selection;
mod server;
mod snapshot;
mod status;
mod store;
mod table;
mod validation;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use cluster::Behaviour;
pub use control::{AdvanceRequest, RebootRequest, UpgradeRequest, parse_duration};
pub use faults::FaultSettings;
pub use generate::{GenerateOptions, NodeSpec};
pub use snapshot::{SnapshotError, read_items};

use cluster::Cluster;
use faults::Faults;

/// Where the simulated cluster comes from.
#[derive(Debug, Clone)]
pub enum Population {
    /// A copy of a real cluster: `kubectl get nodes,pods,pdb,deploy,sts,ds -A -o yaml`.
    Snapshot(PathBuf),
    /// A generated studio.
    Generate(GenerateOptions),
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Real seconds per simulated second: `0.01` runs the cluster 100 times as fast.
    pub time_scale: f64,
    /// Seeds every random choice (uids, session lifetimes, faults).
    pub seed: u64,
    /// Simulated time at start; real time when unset.
    pub start: Option<jiff::Timestamp>,
    /// How the cluster behaves.
    pub behaviour: Behaviour,
    /// Where to write the audit log, if anywhere.
    pub audit_log: Option<PathBuf>,
    /// Watch events kept for watches that resume; older resourceVersions get 410 Gone.
    pub watch_history: usize,
    /// Real time between watch bookmarks.
    pub bookmark_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            time_scale: 1.0,
            seed: 1,
            start: None,
            behaviour: Behaviour::default(),
            audit_log: None,
            watch_history: 100_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// Why the simulator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The snapshot cannot be loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The audit log cannot be created.
    #[error("cannot create the audit log {path}: {source}")]
    Audit {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The generated or loaded cluster is inconsistent.
    #[error("cannot build the simulated cluster: {0}")]
    Populate(String),
    /// The kubeconfig cannot be written.
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// State shared by every connection.
pub(crate) struct Shared {
    cluster: Mutex<Cluster>,
    faults: Mutex<Faults>,
    audit: audit::Audit,
    address: String,
    bookmark_interval: Duration,
}

impl Shared {
    /// The cluster, for one short, non-async critical section. A panic in another holder
    /// does not poison it for good: the state it left is still the best there is.
    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running simulator.
pub struct Simulator {
    address: SocketAddr,
    warnings: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Builds the cluster and starts serving. Must run inside a Tokio runtime.
    pub async fn start(config: SimConfig, population: Population) -> Result<Simulator, SimError> {
        if !(config.time_scale > 0.0 && config.time_scale.is_finite()) {
            return Err(SimError::Config(format!("the time scale must be above 0, not {}", config.time_scale)));
        }
        let origin = config.start.unwrap_or_else(jiff::Timestamp::now);
        let clock = Arc::new(clock::Clock::new(origin, config.time_scale));
        let mut cluster = Cluster::new(clock, config.behaviour.clone(), config.seed, config.watch_history.max(1));
        let mut warnings = Vec::new();
        match &population {
            Population::Generate(options) => {
                generate::populate(&mut cluster, options).map_err(|e| SimError::Populate(e.message))?;
            }
            Population::Snapshot(path) => {
                let snapshot = snapshot::read(path)?;
                warnings = snapshot.warnings;
                snapshot::load(&mut cluster, snapshot.items, &mut warnings);
            }
        }
        controllers::tick(&mut cluster);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind { address: config.listen, source })?;
        let address = listener.local_addr().map_err(|source| SimError::Bind { address: config.listen, source })?;
        let audit = match &config.audit_log {
            Some(path) => audit::Audit::open(path).map_err(|source| SimError::Audit { path: path.clone(), source })?,
            None => audit::Audit::disabled(),
        };
        let shared = Arc::new(Shared {
            cluster: Mutex::new(cluster),
            faults: Mutex::new(Faults::new(config.seed)),
            audit,
            address: address.to_string(),
            bookmark_interval: config.bookmark_interval,
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(server::run(listener, shared, stopped));
        Ok(Simulator { address, warnings, stop, server })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// What the snapshot had that the simulator skipped.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// A kubeconfig that kubectl and kube-rs use as is.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: noderoll-sim\n  cluster:\n    server: {}\n\
             contexts:\n- name: noderoll-sim\n  context:\n    cluster: noderoll-sim\n    user: noderoll-sim\n\
             current-context: noderoll-sim\nusers:\n- name: noderoll-sim\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes the kubeconfig atomically (a temporary file renamed into place), so whoever
    /// waits for the file never reads half of it.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        let error = |source| SimError::Kubeconfig { path: path.to_owned(), source };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        std::fs::write(&temporary, self.kubeconfig()).map_err(error)?;
        std::fs::rename(&temporary, path).map_err(error)
    }

    /// Stops accepting, ends open watches, and waits for the server to finish.
    pub async fn stop(self) {
        // The server may already have ended; then there is nobody to tell.
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }
}
