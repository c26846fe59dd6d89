//! Simulated time. The simulated cluster lives on its own clock that runs `1 / scale` times
//! as fast as real time and can be moved forward on demand, so a 30 s grace period lasts
//! 0.3 s at `--time-scale 0.01` and an 8-hour session timeout can be skipped in a test.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

/// The simulator's clock.
#[derive(Debug)]
pub(crate) struct Clock {
    started: Instant,
    origin: Timestamp,
    scale: f64,
    advanced: Mutex<SignedDuration>,
}

impl Clock {
    /// A clock reading `origin` now, running at `scale` real seconds per simulated second.
    pub(crate) fn new(origin: Timestamp, scale: f64) -> Clock {
        Clock { started: Instant::now(), origin, scale, advanced: Mutex::new(SignedDuration::ZERO) }
    }

    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// Simulated now.
    pub(crate) fn now(&self) -> Timestamp {
        let real = self.started.elapsed().as_secs_f64() / self.scale;
        let advanced = *self.advanced.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = SignedDuration::try_from_secs_f64(real).unwrap_or(SignedDuration::MAX);
        self.origin.saturating_add(elapsed.saturating_add(advanced)).unwrap_or(self.origin)
    }

    /// Moves simulated time forward without waiting.
    pub(crate) fn advance(&self, by: Duration) {
        let mut advanced = self.advanced.lock().unwrap_or_else(|e| e.into_inner());
        *advanced = advanced.saturating_add(SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX));
    }

    /// How long a simulated duration takes in real time.
    pub(crate) fn real(&self, simulated: Duration) -> Duration {
        simulated.mul_f64(self.scale)
    }
}

/// Timestamps as the API writes them: RFC 3339, whole seconds, UTC.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Ages as kubectl shows them (`45s`, `3m2s`, `5h`, `12d`), following apimachinery's
/// `duration.HumanDuration`.
pub(crate) fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 if s % 60 != 0 => format!("{}m{}s", s / 60, s % 60),
        120..10_800 => format!("{}m", s / 60),
        10_800..28_800 if (s / 60) % 60 != 0 => format!("{}h{}m", s / 3600, (s / 60) % 60),
        10_800..172_800 => format!("{}h", s / 3600),
        172_800..691_200 if (s / 3600) % 24 != 0 => format!("{}d{}h", s / 86_400, (s / 3600) % 24),
        172_800..63_072_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(150), "2m30s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(human_age(30 * 3600), "30h");
        assert_eq!(human_age(3 * 86_400 + 3600), "3d1h");
        assert_eq!(human_age(40 * 86_400), "40d");
        assert_eq!(human_age(-3), "0s");
    }

    #[test]
    fn advancing_moves_simulated_time_only() {
        let origin: Timestamp = "2026-11-25T22:00:00Z".parse().expect("timestamp");
        let clock = Clock::new(origin, 1000.0);
        clock.advance(Duration::from_secs(3600));
        let now = clock.now();
        assert!(now >= origin.checked_add(SignedDuration::from_hours(1)).expect("add"));
        assert!(now < origin.checked_add(SignedDuration::from_mins(61)).expect("add"));
        assert_eq!(clock.real(Duration::from_secs(30)), Duration::from_secs(30_000));
    }
}
