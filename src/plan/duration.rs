//! Durations as people write and read them. Plans, the simulator's controls and every
//! report share these, so `15m` means the same thing wherever it is typed and a length is
//! printed one way wherever it is shown.

use std::time::Duration;

/// Reads `90s`, `15m`, `8h`, `1h 30m` (any spelling jiff's friendly format accepts).
/// Zero is a duration here; [`parse_positive`] is for the settings where it is not.
pub fn parse(text: &str) -> Result<Duration, String> {
    let signed = parse_signed(text)?;
    Duration::try_from(signed).map_err(|_| "it is negative".to_owned())
}

/// As [`parse`], for a timeout or an interval: zero would mean "give up at once" or "spin",
/// never what a plan means.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    let signed = parse_signed(text)?;
    if signed.is_negative() || signed.is_zero() {
        return Err("it must be longer than zero".into());
    }
    Duration::try_from(signed).map_err(|e| e.to_string())
}

/// The text as a signed duration; a bare `0` (with or without a unit) is zero.
fn parse_signed(text: &str) -> Result<jiff::SignedDuration, String> {
    let trimmed = text.trim();
    if trimmed.trim_end_matches(['s', 'm', 'h']).trim() == "0" {
        return Ok(jiff::SignedDuration::ZERO);
    }
    trimmed.parse().map_err(|e: jiff::Error| e.to_string())
}

/// A length of time for a report: `45s`, `12m 30s`, `1h 05m` (seconds dropped past an hour,
/// as they no longer matter to whoever reads it).
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// A plan setting echoed back the way plans write it (`15m`, `8h`, `90s`), so a message
/// names the value the reader can find in the file.
pub fn written(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_form() {
        assert_eq!(parse_positive("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_positive("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_positive("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_positive("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_positive("0s").is_err());
        assert!(parse_positive("soon").is_err());
        assert!(parse_positive("-5m").is_err());
    }

    #[test]
    fn zero_is_a_duration_but_not_a_timeout() {
        for zero in ["0", "0s", " 0m ", "0h"] {
            assert_eq!(parse(zero), Ok(Duration::ZERO), "{zero}");
            assert_eq!(parse_positive(zero), Err("it must be longer than zero".into()), "{zero}");
        }
        assert_eq!(parse("-5m"), Err("it is negative".into()));
    }

    #[test]
    fn reports_and_echoes() {
        assert_eq!(elapsed(Duration::from_secs(45)), "45s");
        assert_eq!(elapsed(Duration::from_secs(750)), "12m 30s");
        assert_eq!(elapsed(Duration::from_secs(3900 + 7)), "1h 05m");
        assert_eq!(written(Duration::from_secs(900)), "15m");
        assert_eq!(written(Duration::from_secs(8 * 3600)), "8h");
        assert_eq!(written(Duration::from_secs(90)), "90s");
    }
}
