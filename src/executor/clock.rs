//! The rollout's clock. A real rollout reads the wall clock. A rehearsal, or a run against a
//! sped-up simulator, runs plan time faster than real time from a chosen instant, so that
//! maintenance windows open and close over simulated nights in real seconds, and the
//! window logic under test is the same code a real rollout runs.

use std::time::Duration;

use tokio::time::Instant;

/// Plan time: `origin` at the moment the clock was made, then `1 / scale` plan seconds per
/// real second.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: jiff::Timestamp,
    real_origin: Instant,
    scale: f64,
}

impl Clock {
    /// The wall clock, at real speed.
    pub fn wall() -> Self {
        Self::scaled(None, 1.0)
    }

    /// A clock starting at `origin` (now when `None`), with `scale` real seconds per plan
    /// second.
    pub fn scaled(origin: Option<jiff::Timestamp>, scale: f64) -> Self {
        Self { origin: origin.unwrap_or_else(jiff::Timestamp::now), real_origin: Instant::now(), scale }
    }

    /// Real seconds per plan second.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The plan's now.
    pub fn now(&self) -> jiff::Timestamp {
        let elapsed = self.real_origin.elapsed().as_secs_f64() / self.scale;
        let span = jiff::SignedDuration::try_from_secs_f64(elapsed).unwrap_or(jiff::SignedDuration::MAX);
        self.origin.checked_add(span).unwrap_or(jiff::Timestamp::MAX)
    }

    /// A plan duration as real time.
    pub fn real(&self, plan_time: Duration) -> Duration {
        plan_time.mul_f64(self.scale)
    }

    /// Real time until the plan instant `at` (zero if it has passed).
    pub fn real_until(&self, at: jiff::Timestamp) -> Duration {
        let plan = Duration::try_from(at.duration_since(self.now())).unwrap_or(Duration::ZERO);
        self.real(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_scaled_clock_runs_plan_time_faster() {
        let origin: jiff::Timestamp = "2026-11-27T21:00:00Z".parse().expect("timestamp");
        let clock = Clock::scaled(Some(origin), 0.001);
        tokio::time::advance(Duration::from_secs(36)).await;
        assert_eq!(clock.now(), "2026-11-28T07:00:00Z".parse::<jiff::Timestamp>().expect("timestamp"));
        let opens: jiff::Timestamp = "2026-11-28T08:00:00Z".parse().expect("timestamp");
        assert_eq!(clock.real_until(opens), Duration::from_millis(3600));
        assert_eq!(clock.real_until(origin), Duration::ZERO);
    }
}
