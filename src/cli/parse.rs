//! Parsers for option values that clap has no built-in parser for.

use std::{collections::BTreeMap, time::Duration};

/// Parses a timeout made of whole numbers with `h`, `m` or `s` units, in
/// that order, like `600s`, `10m` or `1h30m`. A zero timeout is rejected
/// because it would expire every instance as soon as it is deployed.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid timeout {text:?}: expected a number with a unit h, m or s, like 600s, 10m or 1h30m");

    let mut seconds: u64 = 0;
    let mut rest = text;
    // Units must come in this order, each at most once: `1h30m` but not `30m1h`.
    let mut units = ['h', 'm', 's'].into_iter();
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let unit = after.chars().next().ok_or_else(invalid)?;
        if number.is_empty() {
            return Err(invalid());
        }
        let scale = match units.find(|&expected| expected == unit) {
            Some('h') => 3600,
            Some('m') => 60,
            Some('s') => 1,
            _ => return Err(invalid()),
        };

        let value: u64 = number.parse().map_err(|_| invalid())?;
        seconds = value
            .checked_mul(scale)
            .and_then(|part| seconds.checked_add(part))
            // Protobuf durations hold at most i64::MAX seconds.
            .filter(|&total| i64::try_from(total).is_ok())
            .ok_or_else(|| format!("invalid timeout {text:?}: too large"))?;
        rest = &after[unit.len_utf8()..];
    }

    if text.is_empty() {
        return Err(invalid());
    }
    if seconds == 0 {
        return Err(format!("invalid timeout {text:?}: must be greater than zero"));
    }
    Ok(Duration::from_secs(seconds))
}

/// Formats a duration in the form [`parse_timeout`] reads (`1h30m`),
/// falling back to the protobuf form (`1.500s`) for fractions of a second.
pub fn format_timeout(duration: &Duration) -> String {
    if duration.subsec_nanos() != 0 {
        return crate::time::format_duration(duration);
    }

    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total % 3600 / 60, total % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || text.is_empty() {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// Parses one `KEY=VALUE` pair. The value may contain `=` and may be empty.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("invalid value {text:?}: expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("invalid value {text:?}: the key before `=` must not be empty"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Collects `KEY=VALUE` pairs into a map; a key given twice keeps its last value.
pub fn collect_pairs(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// Parses an RFC 3339 timestamp for `--until`.
pub fn parse_until(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    crate::time::parse_timestamp(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_accepts_units() {
        assert_eq!(parse_timeout("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("2h5s"), Ok(Duration::from_secs(7205)));
        assert_eq!(parse_timeout("1h1m1s"), Ok(Duration::from_secs(3661)));
    }

    #[test]
    fn timeout_rejects_malformed_text() {
        for text in ["", "600", "s", "10x", "30m1h", "1m1m", "-5s", "1.5s", "1h 30m", "0s", "0h0m"] {
            assert!(parse_timeout(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn timeout_rejects_overflow() {
        assert!(parse_timeout("99999999999999999999s").is_err());
        assert!(parse_timeout("9999999999999999h").is_err());
    }

    #[test]
    fn timeout_format_round_trips() {
        for text in ["10m", "1h30m", "45s", "2h5s", "1h1m1s"] {
            assert_eq!(format_timeout(&parse_timeout(text).unwrap()), text);
        }
        assert_eq!(format_timeout(&Duration::from_millis(1500)), "1.500s");
    }

    #[test]
    fn key_value_splits_on_first_equals() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }
}
