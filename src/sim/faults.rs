//! Fault injection on the Kubernetes API (never on the control API, so a test can always
//! clear what it injected): errors, throttling, dropped connections, answers lost after the
//! request was carried out, latency, and outages of a given length such as the API blip the
//! runbook warns of while a service node upgrades.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What to inject. Rates are probabilities per request, from 0 to 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSettings {
    /// Answer 500 InternalError.
    #[serde(default)]
    pub error_rate: f64,
    /// Answer 429 TooManyRequests with `Retry-After: 1`.
    #[serde(default)]
    pub throttle_rate: f64,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop_rate: f64,
    /// Carry the request out, then close the connection without an answer: the client
    /// cannot tell whether its write happened, and a retried create finds the object there.
    #[serde(default)]
    pub lost_answer_rate: f64,
    /// Delay every answer by this many real milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Drop every connection for this many real milliseconds from now.
    #[serde(default)]
    pub outage_ms: u64,
    /// Lose the answer to the next request whose method and path start with this (such as
    /// `POST /api/v1/namespaces/kube-system/configmaps`), once: a lost answer exactly where
    /// a test wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lose_next_answer: Option<String>,
    /// Requests matching `lose_next_answer` served normally before the one whose answer is
    /// lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lose_after: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl FaultSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("errorRate", self.error_rate),
            ("throttleRate", self.throttle_rate),
            ("dropRate", self.drop_rate),
            ("lostAnswerRate", self.lost_answer_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, not {rate}"));
            }
        }
        Ok(())
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Serve,
    Error,
    Throttle,
    Drop,
    LoseAnswer,
}

/// The active faults.
#[derive(Debug)]
pub(crate) struct Faults {
    settings: FaultSettings,
    outage_until: Option<Instant>,
    rng: ChaCha8Rng,
}

impl Faults {
    pub(crate) fn new(seed: u64) -> Faults {
        Faults { settings: FaultSettings::default(), outage_until: None, rng: ChaCha8Rng::seed_from_u64(seed ^ 0xfa17) }
    }

    pub(crate) fn set(&mut self, settings: FaultSettings) {
        self.outage_until =
            (settings.outage_ms > 0).then(|| Instant::now() + Duration::from_millis(settings.outage_ms));
        self.settings = settings;
    }

    pub(crate) fn settings(&self) -> FaultSettings {
        let mut settings = self.settings.clone();
        settings.outage_ms = self.outage_until.map_or(0, |until| {
            u64::try_from(until.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX)
        });
        settings
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.settings.latency_ms)
    }

    /// Decides the fate of one request.
    pub(crate) fn verdict(&mut self, method: &str, path: &str) -> Verdict {
        if self.outage_until.is_some_and(|until| Instant::now() < until) {
            return Verdict::Drop;
        }
        let request = format!("{method} {path}");
        if self.settings.lose_next_answer.as_ref().is_some_and(|p| request.starts_with(p.as_str())) {
            if self.settings.lose_after == 0 {
                self.settings.lose_next_answer = None;
                return Verdict::LoseAnswer;
            }
            self.settings.lose_after -= 1;
        }
        let s = &self.settings;
        if s.drop_rate == 0.0 && s.error_rate == 0.0 && s.throttle_rate == 0.0 && s.lost_answer_rate == 0.0 {
            return Verdict::Serve;
        }
        let roll: f64 = self.rng.random();
        let shares = [
            (s.drop_rate, Verdict::Drop),
            (s.error_rate, Verdict::Error),
            (s.throttle_rate, Verdict::Throttle),
            (s.lost_answer_rate, Verdict::LoseAnswer),
        ];
        let mut below = 0.0;
        for (rate, verdict) in shares {
            below += rate;
            if roll < below {
                return verdict;
            }
        }
        Verdict::Serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_give_their_share_of_verdicts() {
        let mut faults = Faults::new(7);
        faults.set(FaultSettings {
            error_rate: 0.2,
            throttle_rate: 0.1,
            drop_rate: 0.1,
            lost_answer_rate: 0.1,
            ..FaultSettings::default()
        });
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            let i = match faults.verdict("GET", "/api/v1/nodes") {
                Verdict::Serve => 0,
                Verdict::Error => 1,
                Verdict::Throttle => 2,
                Verdict::Drop => 3,
                Verdict::LoseAnswer => 4,
            };
            counts[i] += 1;
        }
        assert!((4_500..5_500).contains(&counts[0]), "{counts:?}");
        assert!((1_700..2_300).contains(&counts[1]), "{counts:?}");
        assert!((800..1_200).contains(&counts[2]), "{counts:?}");
        assert!((800..1_200).contains(&counts[3]), "{counts:?}");
        assert!((800..1_200).contains(&counts[4]), "{counts:?}");
    }

    #[test]
    fn the_next_matching_answer_is_lost_once() {
        let mut faults = Faults::new(7);
        let prefix = "POST /api/v1/namespaces/kube-system/configmaps";
        faults.set(FaultSettings { lose_next_answer: Some(prefix.into()), ..FaultSettings::default() });
        assert_eq!(faults.verdict("GET", "/api/v1/namespaces/kube-system/configmaps"), Verdict::Serve);
        assert_eq!(faults.verdict("POST", "/api/v1/namespaces/kube-system/configmaps"), Verdict::LoseAnswer);
        assert_eq!(faults.verdict("POST", "/api/v1/namespaces/kube-system/configmaps"), Verdict::Serve);
        assert_eq!(faults.settings().lose_next_answer, None);
    }

    #[test]
    fn the_answer_lost_can_be_a_later_match() {
        let mut faults = Faults::new(7);
        faults.set(FaultSettings {
            lose_next_answer: Some("PATCH /api/v1/nodes/cp1".into()),
            lose_after: 1,
            ..FaultSettings::default()
        });
        assert_eq!(faults.verdict("PATCH", "/api/v1/nodes/cp1"), Verdict::Serve);
        assert_eq!(faults.verdict("PATCH", "/api/v1/nodes/cp1"), Verdict::LoseAnswer);
        assert_eq!(faults.verdict("PATCH", "/api/v1/nodes/cp1"), Verdict::Serve);
    }

    #[test]
    fn an_outage_drops_everything_until_it_ends() {
        let mut faults = Faults::new(1);
        faults.set(FaultSettings { outage_ms: 60_000, ..FaultSettings::default() });
        assert!((0..100).all(|_| faults.verdict("GET", "/api/v1/nodes") == Verdict::Drop));
        faults.set(FaultSettings::default());
        assert!((0..100).all(|_| faults.verdict("GET", "/api/v1/nodes") == Verdict::Serve));
        assert!(FaultSettings { error_rate: 1.5, ..FaultSettings::default() }.validate().is_err());
    }
}
