//! The maintenance windows ahead of a rollout and how many it needs. Pure: the caller says
//! what "now" is and how long the rollout takes (the planner's estimate, or a rehearsal's
//! measured figures).

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::plan::duration::elapsed;
use crate::plan::resolved::WindowPlan;

/// How many upcoming windows a preview lists.
const LISTED: usize = 5;

/// Where the rollout's length comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Makespan {
    /// The planner's estimate from typical step durations: windows needed at least.
    Estimate(Duration),
    /// A rehearsal's report: its makespan, and the windows it counted when it ran `--from`
    /// an instant.
    Rehearsal {
        /// Simulated makespan.
        makespan: Duration,
        /// Windows the rehearsal used, when it honoured them.
        counted: Option<u64>,
    },
}

/// The upcoming windows and the rollout's need for them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// The next windows, in the plan's time zone.
    pub next: Vec<Span>,
    /// The rollout's length used, in seconds.
    pub makespan_seconds: u64,
    /// `estimate` or `rehearsal`.
    pub makespan_source: &'static str,
    /// Windows the rollout needs.
    pub windows_needed: u64,
    /// Whether `windows_needed` was counted by a rehearsal that waited for each window
    /// (otherwise it is a lower bound: the makespan over one window's length).
    pub counted: bool,
}

/// One window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    /// When it opens (RFC 3339, plan time zone offset).
    pub opens: String,
    /// When it closes.
    pub closes: String,
}

/// The schedule of `window` from `from` for a rollout of length `makespan`.
pub fn schedule(window: &WindowPlan, from: jiff::Timestamp, makespan: Makespan) -> Schedule {
    let local = |t: jiff::Timestamp| t.to_zoned(window.timezone.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let next = window
        .upcoming(from, LISTED)
        .into_iter()
        .map(|(opens, closes)| Span { opens: local(opens), closes: local(closes) })
        .collect();
    let at_least = |d: Duration| d.as_secs().div_ceil(window.duration.as_secs().max(1)).max(1);
    let (length, source, needed, counted) = match makespan {
        Makespan::Estimate(d) => (d, "estimate", at_least(d), false),
        Makespan::Rehearsal { makespan, counted: Some(n) } => (makespan, "rehearsal", n, true),
        Makespan::Rehearsal { makespan, counted: None } => (makespan, "rehearsal", at_least(makespan), false),
    };
    Schedule { next, makespan_seconds: length.as_secs(), makespan_source: source, windows_needed: needed, counted }
}

/// The schedule for people.
pub fn text(schedule: &Schedule, window: &WindowPlan) -> String {
    let mut out = format!(
        "\nmaintenance windows (`{}` for {}, {}):\n",
        window.cron_text,
        elapsed(window.duration),
        window.timezone_name
    );
    for span in &schedule.next {
        let _ = writeln!(out, "  {} → {}", span.opens, span.closes);
    }
    let length = elapsed(Duration::from_secs(schedule.makespan_seconds));
    let _ = match (schedule.counted, schedule.makespan_source) {
        (true, _) => writeln!(out, "  needs {} window(s), as a rehearsal counted them", schedule.windows_needed),
        (false, "rehearsal") => writeln!(
            out,
            "  needs at least {} window(s) for the rehearsed makespan {length} (`rehearse --from` counts them)",
            schedule.windows_needed
        ),
        (false, _) => writeln!(
            out,
            "  needs at least {} window(s) for the estimated {length} (`noderoll rehearse --from INSTANT` counts them with measured step durations)",
            schedule.windows_needed
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> WindowPlan {
        let text = "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: w}\nspec:\n  loadBalancer: {mode: external}\n  window: {cron: \"0 22 * * 5\", duration: 8h, timezone: Europe/London}\n  defaults: {upgrade: {command: [true]}}\n  batches: [{name: b, role: workstation, nodes: [a]}]\n";
        crate::plan::check_str("w.yaml", text).plan.and_then(|p| p.window).expect("a window")
    }

    #[test]
    fn lists_windows_in_local_time_and_rounds_the_need_up() {
        let w = window();
        let from: jiff::Timestamp = "2026-10-20T00:00:00Z".parse().expect("instant");
        let s = schedule(&w, from, Makespan::Estimate(Duration::from_secs(8 * 3600 + 1)));
        assert_eq!(
            s.next[0],
            Span { opens: "2026-10-23T22:00:00+01:00".into(), closes: "2026-10-24T06:00:00+01:00".into() }
        );
        assert_eq!(s.next[1].opens, "2026-10-30T22:00:00+00:00");
        assert_eq!(s.next.len(), LISTED);
        assert_eq!((s.windows_needed, s.counted), (2, false));
        let counted = schedule(&w, from, Makespan::Rehearsal { makespan: Duration::from_secs(60), counted: Some(3) });
        assert_eq!((counted.windows_needed, counted.counted, counted.makespan_source), (3, true, "rehearsal"));
    }
}
