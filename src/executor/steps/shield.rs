//! Requests a cut-off step still sees to their end.

use std::sync::Arc;

/// Requests that run to their end even when the step that made them is cut off (for an
/// abort, or at Ctrl-C), and that the run waits for before it stops. An eviction is one:
/// kube-apiserver counts it against the budget (`status.disruptedPods`) before it deletes
/// the pod, and a request dropped between the two leaves the pod alive yet counted as gone,
/// which holds the budget at 0 for two minutes and stalls the resumed drain.
#[derive(Debug, Clone, Default)]
pub struct Shield(Arc<tokio::sync::RwLock<()>>);

impl Shield {
    /// Runs `request` as a task of its own; `None` if that task panicked.
    pub async fn run<T: Send + 'static>(&self, request: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let held = self.0.clone().read_owned().await;
        let task = tokio::spawn(async move {
            let answer = request.await;
            drop(held);
            answer
        });
        task.await.ok()
    }

    /// Waits until every request started through [`Shield::run`] has ended.
    pub async fn settled(&self) {
        let _all = self.0.write().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::Shield;

    #[tokio::test]
    async fn a_request_runs_to_its_end_though_its_caller_is_cut_off_and_settled_waits_for_it() {
        let shield = Shield::default();
        let answered = Arc::new(AtomicBool::new(false));
        let (sent, started) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn({
            let (shield, answered) = (shield.clone(), answered.clone());
            async move {
                shield
                    .run(async move {
                        let _ = sent.send(());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        answered.store(true, Ordering::SeqCst);
                    })
                    .await
            }
        });
        started.await.expect("the request starts");
        caller.abort();
        assert!(caller.await.expect_err("cut off").is_cancelled());
        assert!(!answered.load(Ordering::SeqCst), "the request is still under way");
        shield.settled().await;
        assert!(answered.load(Ordering::SeqCst), "settled returned before the request ended");
    }

    #[tokio::test]
    async fn settled_returns_at_once_when_nothing_is_under_way() {
        let shield = Shield::default();
        assert_eq!(shield.run(async { 7 }).await, Some(7));
        tokio::time::timeout(Duration::from_secs(5), shield.settled()).await.expect("nothing holds it");
    }
}
