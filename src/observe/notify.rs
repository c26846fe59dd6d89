//! Webhook notifications: an [`Observer`] that turns the events an operator wants to hear
//! about (start, batch done, halt, pause, interrupt, finish) into JSON POSTs shaped for the
//! chat that reads them (Slack, Microsoft Teams workflows, Mattermost) or as noderoll's own
//! event. Delivery runs on its own task with retries, so a slow or dead webhook never holds
//! up or fails a rollout; `finish` waits for what is queued.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::executor::event::{Event, Observer};
use crate::plan::model::{NotifyEvent, WebhookFormat};
use crate::plan::resolved::UrlSource;
use crate::planner::Action;
use crate::world::http::HttpClient;

/// Tries per message, and the pause before the second and third.
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `finish` waits for queued messages.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a plan's events to its webhook.
pub struct Notifier {
    plan: String,
    events: Vec<NotifyEvent>,
    format: WebhookFormat,
    queue: Mutex<Option<mpsc::UnboundedSender<(NotifyEvent, Value)>>>,
    sender: Mutex<Option<JoinHandle<()>>>,
    /// Messages queued and not yet sent or given up on.
    unsent: Arc<AtomicUsize>,
    /// Messages given up on after every try.
    failed: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("plan", &self.plan).field("events", &self.events).finish()
    }
}

impl Notifier {
    /// Starts the delivery task for `url`. Must be called inside a tokio runtime.
    pub fn start(
        url: String,
        plan: &str,
        events: Vec<NotifyEvent>,
        format: WebhookFormat,
        http: HttpClient,
    ) -> Notifier {
        let (queue, mut receiver) = mpsc::unbounded_channel::<(NotifyEvent, Value)>();
        let unsent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (left, lost) = (unsent.clone(), failed.clone());
        let sender = tokio::spawn(async move {
            while let Some((kind, body)) = receiver.recv().await {
                let mut result = http.post_json(&url, &body, POST_TIMEOUT).await;
                for pause in BACKOFF {
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    result = http.post_json(&url, &body, POST_TIMEOUT).await;
                }
                if let Err(e) = result {
                    // The URL may hold a secret: the error names the host's answer, and
                    // the log is the operator's own file.
                    tracing::warn!(event = ?kind, error = %e.message, "webhook not delivered");
                    lost.fetch_add(1, Ordering::SeqCst);
                }
                left.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Notifier {
            plan: plan.to_owned(),
            events,
            format,
            queue: Mutex::new(Some(queue)),
            sender: Mutex::new(Some(sender)),
            unsent,
            failed,
        }
    }

    /// Stops taking events and waits (up to 30 s) until the queued ones are sent; returns
    /// how many could not be delivered.
    pub async fn finish(&self) -> usize {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = sender {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
        }
        // Given up on, and still queued or in flight when the wait ran out.
        self.failed.load(Ordering::SeqCst) + self.unsent.load(Ordering::SeqCst)
    }

    /// The message for an event, if the webhook wants it.
    fn message(&self, event: &Event) -> Option<(NotifyEvent, Value)> {
        let plan = &self.plan;
        let (kind, text) = match event {
            Event::Started { batches, steps, done, resumed, .. } => {
                let nodes: usize = batches.iter().map(|b| b.nodes).sum();
                let text = if *resumed {
                    format!("rollout `{plan}` resumed: {done} of {steps} steps were done, {nodes} node(s) in all")
                } else {
                    format!("rollout `{plan}` started: {nodes} node(s) in {} batch(es)", batches.len())
                };
                (NotifyEvent::Started, text)
            }
            Event::StepFinished { action: Action::BatchDone, batch: Some(batch), .. } => {
                (NotifyEvent::BatchDone, format!("rollout `{plan}`: batch `{batch}` done"))
            }
            Event::Halted { failed, cordoned, next } => {
                let (why, left) = failures_and_cordoned(failed, cordoned);
                (NotifyEvent::Halted, format!("rollout `{plan}` HALTED. {why}. Left cordoned: {left}. Next: {next}"))
            }
            Event::Paused { opens, cordoned, .. } => {
                let left = if cordoned.is_empty() {
                    String::new()
                } else {
                    format!(" Left cordoned: {}.", cordoned.join(", "))
                };
                (
                    NotifyEvent::Paused,
                    format!("rollout `{plan}` paused at the end of its window; the next opens {opens}.{left}"),
                )
            }
            Event::StoppedForAbort { by, running } => (
                NotifyEvent::Interrupted,
                format!(
                    "rollout `{plan}` stopped for the abort {by} asked, with {} step(s) running; the abort puts the nodes back",
                    running.len()
                ),
            ),
            Event::Interrupted { running } => (
                NotifyEvent::Interrupted,
                format!(
                    "rollout `{plan}` interrupted with {} step(s) running; run apply again to resume",
                    running.len()
                ),
            ),
            Event::Finished { nodes, failed, cordoned, .. } if !failed.is_empty() => {
                let (why, left) = failures_and_cordoned(failed, cordoned);
                let upgraded = nodes.saturating_sub(failed.len());
                (
                    NotifyEvent::Finished,
                    format!(
                        "rollout `{plan}` went through its {nodes} node(s): {upgraded} upgraded, {} FAILED within their batch's maxFailures. {why}. Left cordoned: {left}. Next: fix them and run apply again",
                        failed.len()
                    ),
                )
            }
            Event::Finished { nodes, .. } => {
                (NotifyEvent::Finished, format!("rollout `{plan}` finished: {nodes} node(s) upgraded"))
            }
            _ => return None,
        };
        if !self.events.contains(&kind) {
            return None;
        }
        Some((kind, body(self.format, plan, kind, &format!("noderoll: {text}"), event)))
    }
}

/// The body of a message in `format`: the text people read, and the plan, the event's
/// name and the event itself for whatever reads it by machine.
fn body(format: WebhookFormat, plan: &str, kind: NotifyEvent, text: &str, event: &Event) -> Value {
    let name = serde_json::to_value(kind).unwrap_or(Value::Null);
    match format {
        // Slack ignores fields beside `text`, so its body is noderoll's own event as well.
        WebhookFormat::Slack | WebhookFormat::Json => {
            json!({"text": text, "plan": plan, "event": name, "detail": event})
        }
        WebhookFormat::Mattermost => json!({
            "text": text,
            "username": "noderoll",
            "props": {"plan": plan, "event": name, "detail": event},
        }),
        // Workflows take Adaptive Cards only (not the retired connectors' MessageCard);
        // 1.4 is the newest version every Teams client renders.
        WebhookFormat::Teams => json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": text, "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Plan", "value": plan},
                            {"title": "Event", "value": name},
                        ]},
                    ],
                },
            }],
        }),
    }
}

/// The failed steps and the nodes left cordoned, as a message gives them.
fn failures_and_cordoned(failed: &[crate::executor::event::Failure], cordoned: &[String]) -> (String, String) {
    let why = crate::executor::event::Failure::joined(failed);
    let left = if cordoned.is_empty() { "none".to_owned() } else { cordoned.join(", ") };
    (why, left)
}

impl Observer for Notifier {
    fn event(&self, event: &Event) {
        let Some(message) = self.message(event) else { return };
        if let Some(queue) = self.queue.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            // Counted before it is queued: the task may send it before `send` returns.
            self.unsent.fetch_add(1, Ordering::SeqCst);
            if queue.send(message).is_err() {
                self.unsent.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The webhook's URL file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the webhook URL from `{}`", .path.display())]
pub struct UrlFileError {
    /// The file.
    pub path: std::path::PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The webhook's URL: as written in the plan, or read from its file (relative to the plan's
/// folder, surrounding whitespace ignored).
pub fn url(source: &UrlSource, plan_dir: &Path) -> Result<String, UrlFileError> {
    match source {
        UrlSource::Inline(url) => Ok(url.clone()),
        UrlSource::File(file) => {
            let path = plan_dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| UrlFileError { path, source })?;
            Ok(text.trim().to_owned())
        }
    }
}
