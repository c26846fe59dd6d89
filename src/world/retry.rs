//! Riding out API trouble: 5xx answers, throttling, dropped connections and short outages
//! (the runbook's API blip while a service node restarts) are retried with jittered,
//! growing backoff until the caller's patience runs out; every other error is returned at
//! once, because retrying a 403 or a 422 only hides it.

use std::future::Future;
use std::time::Duration;

use rand::{RngExt, SeedableRng};

/// How long to keep retrying one API call.
#[derive(Debug, Clone)]
pub struct Patience {
    /// Give up after this long.
    pub total: Duration,
    /// The first pause.
    pub first: Duration,
    /// The longest pause.
    pub longest: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience { total: Duration::from_secs(120), first: Duration::from_millis(100), longest: Duration::from_secs(5) }
    }
}

/// Whether an error may go away by itself.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || (500..=599).contains(&status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        // A body cut off by a dropped connection fails to decode.
        kube::Error::SerdeError(e) => e.is_eof(),
        _ => false,
    }
}

/// Runs `attempt` until it succeeds, fails for good, or patience runs out.
pub async fn call<T, F, Fut>(patience: &Patience, mut attempt: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = patience.first;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(std::process::id()));
    loop {
        match attempt().await {
            Err(e) if is_transient(&e) && started.elapsed() + pause < patience.total => {
                tracing::debug!(error = %e, pause_ms = pause.as_millis(), "transient API error, retrying");
                let jitter = rng.random_range(0.5..1.0);
                tokio::time::sleep(pause.mul_f64(jitter)).await;
                pause = (pause * 2).min(patience.longest);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, ..kube::core::Status::default() }))
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success_and_client_errors_are_not() {
        let patience = Patience {
            total: Duration::from_secs(5),
            first: Duration::from_millis(1),
            longest: Duration::from_millis(2),
        };
        let calls = AtomicUsize::new(0);
        let result = call(&patience, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 { Err(status(503)) } else { Ok(7) }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), _> = call(&patience, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(status(422))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn patience_runs_out() {
        let patience = Patience {
            total: Duration::from_millis(30),
            first: Duration::from_millis(5),
            longest: Duration::from_millis(5),
        };
        let result: Result<(), _> = call(&patience, || async { Err(status(500)) }).await;
        assert!(matches!(result, Err(kube::Error::Api(s)) if s.code == 500));
    }
}
