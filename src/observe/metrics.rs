//! Prometheus metrics of a running rollout: an [`Observer`] that keeps counts from the
//! executor's events, served as OpenMetrics text on `apply --metrics-addr`. A facility's
//! dashboards and alerts then see where an unattended rollout stands.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::executor::event::{Event, Observer};
use crate::executor::node_state::NodeState;

type Labels = Vec<(String, String)>;

/// Rollout states; exactly one is 1. Spelled as the node states are (`NodeState::name`).
const ROLLOUT_STATES: [&str; 8] =
    ["running", "waiting-for-window", "paused", "halted", "interrupted", "aborted", "incomplete", "finished"];

/// The rollout's metrics, fed by its events.
pub struct Metrics {
    registry: Registry,
    nodes: Family<Labels, Gauge>,
    state: Family<Labels, Gauge>,
    batch_running: Family<Labels, Gauge>,
    last_error: Family<Labels, Gauge>,
    steps: Family<Labels, Gauge>,
    step_seconds: Family<Labels, Histogram>,
    tracked: Mutex<Tracked>,
}

#[derive(Default)]
struct Tracked {
    total: usize,
    done_before: usize,
    in_progress: BTreeSet<String>,
    done: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

impl Metrics {
    /// Empty metrics, registered under the `noderoll_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("noderoll");
        let nodes = Family::<Labels, Gauge>::default();
        let state = Family::<Labels, Gauge>::default();
        let batch_running = Family::<Labels, Gauge>::default();
        let last_error = Family::<Labels, Gauge>::default();
        let steps = Family::<Labels, Gauge>::default();
        // 0.5 s to about 9 hours: a cordon to a session wait.
        let step_seconds =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.5, 2.0, 17)));
        registry.register("nodes", "Nodes of the plan by state", nodes.clone());
        registry.register("rollout_state", "The rollout's state (1 for the current one)", state.clone());
        registry.register(
            "batch_running",
            "1 while a batch is between its start and done gates",
            batch_running.clone(),
        );
        registry.register("last_error", "The most recent failed step and its error (value 1)", last_error.clone());
        registry.register("steps", "Steps of the plan, total and done", steps.clone());
        registry.register(
            "step_duration_seconds",
            "Real seconds each finished step took, by action",
            step_seconds.clone(),
        );
        Self { registry, nodes, state, batch_running, last_error, steps, step_seconds, tracked: Mutex::default() }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    fn set_state(&self, current: &str) {
        for s in ROLLOUT_STATES {
            self.state.get_or_create(&label("state", s)).set(i64::from(s == current));
        }
    }

    fn publish_nodes(&self, t: &Tracked) {
        let done = t.done_before + t.done.len();
        let pending = t.total.saturating_sub(done + t.in_progress.len() + t.failed.len());
        for state in NodeState::ALL {
            let n = match state {
                NodeState::Pending => pending,
                NodeState::InProgress => t.in_progress.len(),
                NodeState::Done => done,
                NodeState::Failed => t.failed.len(),
            };
            self.nodes.get_or_create(&label("state", state.name())).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl Observer for Metrics {
    fn event(&self, event: &Event) {
        let mut t = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Started { batches, steps, done, nodes_done, .. } => {
                *t = Tracked {
                    total: batches.iter().map(|b| b.nodes).sum(),
                    done_before: *nodes_done,
                    ..Tracked::default()
                };
                self.steps.get_or_create(&label("kind", "total")).set(i64::try_from(*steps).unwrap_or(i64::MAX));
                self.steps.get_or_create(&label("kind", "done")).set(i64::try_from(*done).unwrap_or(i64::MAX));
                self.set_state("running");
            }
            Event::StepStarted { node: Some(node), .. } => {
                if !t.done.contains(node) {
                    t.failed.remove(node);
                    t.in_progress.insert(node.clone());
                }
                self.set_state("running");
            }
            Event::StepFinished { action, seconds, batch, .. } => {
                self.steps.get_or_create(&label("kind", "done")).inc();
                self.step_seconds.get_or_create(&label("action", action.name())).observe(*seconds);
                if let Some(batch) = batch {
                    let running = match action {
                        crate::planner::Action::BatchStart => Some(1),
                        crate::planner::Action::BatchDone => Some(0),
                        _ => None,
                    };
                    if let Some(running) = running {
                        self.batch_running.get_or_create(&label("batch", batch)).set(running);
                    }
                }
            }
            Event::NodeDone { node, .. } => {
                t.in_progress.remove(node);
                t.done.insert(node.clone());
            }
            Event::StepFailed { step, node, error } => {
                if let Some(node) = node {
                    t.in_progress.remove(node);
                    t.failed.insert(node.clone());
                }
                self.last_error.clear();
                self.last_error
                    .get_or_create(&vec![("step".into(), step.clone()), ("error".into(), error.clone())])
                    .set(1);
            }
            Event::WaitingForWindow { .. } => self.set_state("waiting-for-window"),
            Event::Paused { .. } => self.set_state("paused"),
            Event::Halted { .. } => self.set_state("halted"),
            Event::Interrupted { .. } => self.set_state("interrupted"),
            Event::StoppedForAbort { .. } | Event::Aborted { .. } => self.set_state("aborted"),
            Event::Finished { failed, .. } if failed.is_empty() => self.set_state("finished"),
            Event::Finished { .. } => self.set_state("incomplete"),
            _ => {}
        }
        self.publish_nodes(&t);
    }
}

/// Serves `GET /metrics` on `addr` until the process ends. Returns the bound address (the
/// port, when `addr` asked for port 0).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, request.method(), request.uri().path())) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(bound)
}

fn respond(metrics: &Metrics, method: &http::Method, path: &str) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&http::Method::GET, "/metrics") => {
            (http::StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
        }
        _ => (http::StatusCode::NOT_FOUND, "text/plain", "noderoll serves /metrics only\n".to_owned()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::executor::event::BatchSize;
    use crate::planner::Action;

    fn states(m: &Metrics) -> BTreeMap<String, i64> {
        NodeState::ALL
            .iter()
            .map(|s| (s.name().to_owned(), m.nodes.get_or_create(&label("state", s.name())).get()))
            .collect()
    }

    fn started(m: &Metrics) {
        m.event(&Event::Started {
            plan: "p".into(),
            journal: "j".into(),
            batches: vec![BatchSize { name: "b".into(), nodes: 3 }],
            steps: 20,
            done: 0,
            nodes_done: 0,
            resumed: false,
        });
    }

    fn step(node: &str, action: Action) -> Event {
        Event::StepStarted {
            step: format!("{node}/{}", action.name()),
            node: Some(node.into()),
            batch: Some("b".into()),
            action,
        }
    }

    #[test]
    fn nodes_move_from_pending_through_in_progress_to_done_or_failed() {
        let m = Metrics::new();
        started(&m);
        m.event(&step("a", Action::Cordon));
        m.event(&step("b", Action::Cordon));
        m.event(&Event::NodeDone { node: "a".into(), batch: "b".into() });
        m.event(&Event::StepFailed { step: "b/drain".into(), node: Some("b".into()), error: "PDB".into() });
        let expect = |p, i, d, f| {
            BTreeMap::from([("pending".into(), p), ("in-progress".into(), i), ("done".into(), d), ("failed".into(), f)])
        };
        assert_eq!(states(&m), expect(1, 0, 1, 1));
        m.event(&Event::Halted { failed: vec![], cordoned: vec!["b".into()], next: String::new() });
        let text = m.render();
        assert!(text.contains("noderoll_rollout_state{state=\"halted\"} 1"), "{text}");
        assert!(text.contains("noderoll_rollout_state{state=\"running\"} 0"), "{text}");
        assert!(text.contains("noderoll_last_error{step=\"b/drain\",error=\"PDB\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF: {text}");
        // A resume retries the failed node.
        m.event(&step("b", Action::Drain));
        assert_eq!(states(&m), expect(1, 1, 1, 0));
    }
}
