//! One rollout per plan at a time: a coordination.k8s.io Lease named after the plan, held
//! while `apply` runs and renewed in the background. The cluster is the one place every
//! operator's laptop and the in-cluster CronJob can all see.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::world::retry::{self, Patience};

/// How long a lease stays valid without renewal.
pub const LEASE_SECONDS: i32 = 30;
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Why the lock cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it and renewed it recently.
    #[error(
        "another rollout of this plan is running: Lease {namespace}/{name} is held by `{holder}` (renewed {age} ago); wait for it to finish, or, if that process is gone for good, run again with --break-lock"
    )]
    Held {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Holder identity.
        holder: String,
        /// Time since its last renewal.
        age: String,
    },
    /// The API refused or failed.
    #[error("cannot take the lock Lease {namespace}/{name}: {source}")]
    Api {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

/// What taking the lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The lease was free, expired or ours.
    Cleanly,
    /// `--break-lock` took it from a live holder.
    FromHolder(String),
    /// The holder was a process on this machine that no longer runs (a crashed or killed
    /// apply), so its lease was stale before it expired.
    FromDeadProcess(String),
}

/// A held lock; renewal runs until [`LockGuard::release`].
#[derive(Debug)]
pub struct LockGuard {
    api: Api<Lease>,
    name: String,
    holder: String,
    stop: watch::Sender<bool>,
    renewer: tokio::task::JoinHandle<()>,
    /// Becomes `Some(new holder)` if someone else takes the lease while we run.
    pub lost: watch::Receiver<Option<String>>,
}

/// The Lease's name for a plan.
pub fn lease_name(plan: &str) -> String {
    format!("noderoll-{plan}")
}

fn spec(holder: &str, acquire: bool, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let now = MicroTime(jiff::Timestamp::now());
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: if acquire { Some(now.clone()) } else { previous.and_then(|p| p.acquire_time.clone()) },
        renew_time: Some(now),
        lease_transitions: previous
            .and_then(|p| p.lease_transitions)
            .map(|t| if acquire { t + 1 } else { t })
            .or(Some(0)),
        ..LeaseSpec::default()
    }
}

/// Who holds a lease and whether that still counts.
fn live_holder(lease: &Lease) -> Option<(String, Duration)> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let age = Duration::try_from(jiff::Timestamp::now().duration_since(renewed)).unwrap_or(Duration::ZERO);
    let valid = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS)).unwrap_or(0));
    (age < valid).then_some((holder, age))
}

/// Takes the plan's lock for `holder`.
pub async fn acquire(
    client: kube::Client,
    namespace: &str,
    plan: &str,
    holder: &str,
    break_lock: bool,
    patience: &Patience,
) -> Result<(LockGuard, Taken), LockError> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let name = lease_name(plan);
    let failed = |source| LockError::Api { namespace: namespace.to_owned(), name: name.clone(), source };
    let taken = loop {
        let existing = retry::call(patience, || api.get_opt(&name)).await.map_err(failed)?;
        let outcome = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                    spec: Some(spec(holder, true, None)),
                };
                api.create(&PostParams::default(), &lease).await.map(|_| Taken::Cleanly)
            }
            Some(mut lease) => {
                let mut taken = Taken::Cleanly;
                if let Some((other, age)) = live_holder(&lease).filter(|(h, _)| h != holder) {
                    if dead_here(&other) {
                        taken = Taken::FromDeadProcess(other);
                    } else if !break_lock {
                        return Err(LockError::Held {
                            namespace: namespace.to_owned(),
                            name,
                            holder: other,
                            age: format!("{}s", age.as_secs()),
                        });
                    } else {
                        taken = Taken::FromHolder(other);
                    }
                }
                lease.spec = Some(spec(holder, true, lease.spec.as_ref()));
                api.replace(&name, &PostParams::default(), &lease).await.map(|_| taken)
            }
        };
        match outcome {
            Ok(taken) => break taken,
            // Someone else created or changed it between our read and write: read again.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) if retry::is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(failed(e)),
        }
    };
    let (stop, stopped) = watch::channel(false);
    let (lost_tx, lost) = watch::channel(None);
    let renewer = tokio::spawn(renew(api.clone(), name.clone(), holder.to_owned(), stopped, lost_tx));
    Ok((LockGuard { api, name, holder: holder.to_owned(), stop, renewer, lost }, taken))
}

async fn renew(
    api: Api<Lease>,
    name: String,
    holder: String,
    mut stopped: watch::Receiver<bool>,
    lost: watch::Sender<Option<String>>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = stopped.changed() => return,
        }
        // A failed renewal is retried at the next tick; the lease outlives three of them.
        let Ok(Some(mut lease)) = api.get_opt(&name).await else { continue };
        let current = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
        if current != holder {
            let _ = lost.send(Some(current));
            return;
        }
        lease.spec = Some(spec(&holder, false, lease.spec.as_ref()));
        let _ = api.replace(&name, &PostParams::default(), &lease).await;
    }
}

impl LockGuard {
    /// Stops renewing and frees the lease (if it is still ours), so the next run need not
    /// wait for it to expire.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.renewer.await;
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let ours = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.holder.as_str());
            if ours {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
                }
                let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
            }
        }
    }
}

/// Whether a holder identity names a process on this machine that is gone.
fn dead_here(holder: &str) -> bool {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let Some((user_host, pid)) = holder.rsplit_once('/') else { return false };
    let same_host = user_host.rsplit_once('@').is_some_and(|(_, h)| h == host);
    same_host && pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// `user@host/pid`: who holds the lock, as another operator will read it.
pub fn holder_identity() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "noderoll".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{user}@{host}/{}", std::process::id())
}
