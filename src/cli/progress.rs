//! How a rollout's events reach the operator: progress bars on a terminal (overall, one per
//! batch, one per node at work), plain lines when stderr is not a terminal, or one JSON
//! object per line on stdout for scripts and CI (`--output json`).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::executor::event::{Event, Observer};

/// JSON lines on stdout.
#[derive(Debug, Default)]
pub(crate) struct JsonLines;

impl Observer for JsonLines {
    fn event(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// One line per node transition on stderr, for logs and pipes.
#[derive(Debug, Default)]
pub(crate) struct PlainLines;

impl Observer for PlainLines {
    fn event(&self, event: &Event) {
        if let Some(line) = describe(event) {
            eprintln!("{line}");
        }
    }
}

/// The human sentence for an event worth a line of its own; `None` for the chatty ones.
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::Started { plan, journal, steps, done, resumed, .. } => {
            if *resumed {
                format!("resuming plan `{plan}`: {done} of {steps} steps already done (journal {journal})")
            } else {
                format!("starting plan `{plan}`: {steps} steps (journal {journal})")
            }
        }
        Event::StepStarted { step, .. } => format!("  start  {step}"),
        Event::StepFailed { step, error, .. } => format!("  FAILED {step}: {error}"),
        Event::NodeDone { node, batch } => format!("  done   {node} ({batch})"),
        Event::Warning { message } => format!("warning: {message}"),
        Event::AwaitingApproval { node, .. } => approval_prompt(node),
        Event::AwaitingDnsChange { step, change, .. } => format!(
            "make this DNS change, then type `{step}` and Enter here, or run `noderoll approve PLAN {step}`; noderoll then waits until the resolvers serve it:\n    {}",
            change.replace('\n', "\n    ")
        ),
        Event::Halted { failed, cordoned, next } => halted(failed, cordoned, next),
        Event::WaitingForHolder { holder } => format!(
            "waiting for the running apply (`{holder}`) to stop at its next safe point (a running upgrade or verify hook finishes first)"
        ),
        Event::NodeRestored { node, actions } => format!("  put back {node}: {}", actions.join("; ")),
        Event::Aborted { by, restored, left } => aborted(by, restored, left),
        Event::StoppedForAbort { by, running } => format!(
            "stopped: `noderoll abort` was asked by {by} with {} step(s) running ({}); it now puts the nodes back",
            running.len(),
            running.join(", ")
        ),
        Event::Interrupted { running } => format!(
            "interrupted with {} step(s) running; run the same command again to resume: {}",
            running.len(),
            running.join(", ")
        ),
        Event::Finished { seconds, nodes, failed, cordoned } => finished(*nodes, *seconds, failed, cordoned),
        Event::NodeFailed { node, batch, spent, budget, .. } => format!(
            "  given up: {node}, which stays where it failed; batch `{batch}` goes on ({spent} of its maxFailures {budget} spent)"
        ),
        Event::WaitingForWindow { opens, nodes_left, cordoned } => format!(
            "outside the maintenance window: {nodes_left} node(s) left, waiting until {opens}{}",
            left_cordoned(cordoned)
        ),
        Event::Paused { opens, cordoned, next } => {
            format!(
                "paused at the end of the maintenance window; the next opens {opens}{}\n  next: {next}",
                left_cordoned(cordoned)
            )
        }
        Event::StepProgress { .. } | Event::StepFinished { .. } => return None,
    })
}

fn approval_prompt(node: &str) -> String {
    format!(
        "{node} is upgraded and verified and waits for approval: type `{node}` and Enter here, or run `noderoll approve PLAN {node}`"
    )
}

fn halted(failed: &[crate::executor::event::Failure], cordoned: &[String], next: &str) -> String {
    let mut text = String::from("halted: no new node was started\n");
    push_failures(&mut text, failed, cordoned, next);
    text
}

fn finished(nodes: usize, seconds: f64, failed: &[crate::executor::event::Failure], cordoned: &[String]) -> String {
    let mut text = format!("finished: {nodes} node(s) in {}", elapsed(seconds));
    if failed.is_empty() {
        return text;
    }
    text.push_str(&format!(", {} of them failed within their batch's maxFailures\n", failed.len()));
    let next = "fix the failed nodes, then run the same apply command again: it retries only them";
    push_failures(&mut text, failed, cordoned, next);
    text
}

/// The lines of a report that names failures: each failed step, the nodes left cordoned,
/// what to do next.
fn push_failures(text: &mut String, failed: &[crate::executor::event::Failure], cordoned: &[String], next: &str) {
    for f in failed {
        text.push_str(&format!("  {}: {}\n", f.step, f.error));
    }
    if !cordoned.is_empty() {
        text.push_str(&format!("  left cordoned: {}\n", cordoned.join(", ")));
    }
    text.push_str(&format!("  next: {next}"));
}

fn aborted(by: &str, restored: &[String], left: &[crate::executor::journal::LeftNode]) -> String {
    let mut text = format!("aborted (asked by {by}): {} node(s) put back", restored.len());
    if left.is_empty() {
        text.push_str(", none left out of service");
        return text;
    }
    text.push_str(&format!("; {} node(s) left cordoned, their upgrade begun:", left.len()));
    for l in left {
        text.push_str(&format!("\n  {}: reached {} ({})", l.node, l.step, l.state));
    }
    text.push_str("\n  next: check those nodes, then `noderoll apply PLAN --resume-aborted` goes on from where the rollout stopped (the nodes put back start over), or uncordon them by hand");
    text
}

fn left_cordoned(cordoned: &[String]) -> String {
    if cordoned.is_empty() { String::new() } else { format!(" (left cordoned: {})", cordoned.join(", ")) }
}

fn elapsed(seconds: f64) -> String {
    let d = Duration::from_secs_f64(seconds.max(0.0));
    if d.as_secs() >= 60 {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Progress bars on stderr.
pub(crate) struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    state: Mutex<BarState>,
}

#[derive(Default)]
struct BarState {
    batches: BTreeMap<String, ProgressBar>,
    nodes: BTreeMap<String, (ProgressBar, String)>,
}

impl Bars {
    pub(crate) fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:40.cyan/blue}] {pos}/{len} steps  {elapsed_precise}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("rollout");
        Bars { multi, overall, state: Mutex::new(BarState::default()) }
    }

    fn node_bar(&self, state: &mut BarState, node: &str) -> ProgressBar {
        if let Some((bar, _)) = state.nodes.get(node) {
            return bar.clone();
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix:<14} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(node.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        state.nodes.insert(node.to_owned(), (bar.clone(), String::new()));
        bar
    }
}

impl Observer for Bars {
    fn event(&self, event: &Event) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Started { batches, steps, done, .. } => {
                self.overall.set_length(*steps as u64);
                self.overall.set_position(*done as u64);
                for b in batches {
                    let bar = self.multi.insert_before(&self.overall, ProgressBar::new(b.nodes as u64));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:<20} [{bar:30.green/white}] {pos}/{len} nodes")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(b.name.clone());
                    state.batches.insert(b.name.clone(), bar);
                }
                if let Some(line) = describe(event) {
                    let _ = self.multi.println(line);
                }
            }
            Event::StepStarted { node: Some(node), action, .. } => {
                let bar = self.node_bar(&mut state, node);
                bar.set_message(action.name().to_owned());
                if let Some(entry) = state.nodes.get_mut(node) {
                    entry.1 = action.name().to_owned();
                }
            }
            Event::StepProgress { node: Some(node), message, .. } => {
                if let Some((bar, action)) = state.nodes.get(node) {
                    bar.set_message(format!("{action}: {message}"));
                }
            }
            Event::StepFinished { .. } => self.overall.inc(1),
            // Gates show in the overall bar; a line each would push the bars around.
            Event::StepStarted { node: None, .. } => {}
            Event::NodeDone { node, batch } => {
                if let Some((bar, _)) = state.nodes.remove(node) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if let Some(bar) = state.batches.get(batch) {
                    bar.inc(1);
                }
            }
            Event::StepFailed { node: Some(node), error, .. } => {
                if let Some((bar, action)) = state.nodes.get(node) {
                    bar.abandon_with_message(format!("{action} FAILED: {error}"));
                }
            }
            Event::Halted { .. }
            | Event::Interrupted { .. }
            | Event::StoppedForAbort { .. }
            | Event::Finished { .. }
            | Event::Paused { .. } => {
                for (bar, _) in state.nodes.values() {
                    bar.abandon();
                }
                self.overall.abandon();
                for bar in state.batches.values() {
                    bar.abandon();
                }
                if let Some(line) = describe(event) {
                    let _ = self.multi.println(line);
                }
            }
            _ => {
                if let Some(line) = describe(event) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }
}
