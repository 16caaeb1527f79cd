//! Timestamps and durations in the protobuf JSON forms the API uses.
//!
//! Timestamps are RFC 3339 in UTC with a `Z` and 0, 3, 6 or 9 fraction
//! digits (`2026-01-02T03:04:05Z`); durations are seconds with an `s`
//! suffix (`600s`, `1.500s`). The store writes the same strings, so a record
//! on disk reads like the API's output.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a timestamp the way protojson does: no fraction when the
/// nanoseconds are zero, else 3, 6 or 9 digits.
pub fn format_timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 timestamp with any offset and converts it to UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| format!("invalid timestamp {text:?}: {err} (expected RFC 3339, like 2026-01-02T03:04:05Z)"))
}

/// Formats a duration the way protojson does: `600s`, `1.500s`.
pub fn format_duration(duration: &Duration) -> String {
    let seconds = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        format!("{seconds}s")
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{seconds}.{:03}s", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{seconds}.{:06}s", nanos / 1_000)
    } else {
        format!("{seconds}.{nanos:09}s")
    }
}

/// Parses a protojson duration (`600s`, `1.5s`). Negative durations are
/// rejected because no timeout can be negative.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?} (expected seconds with an `s` suffix, like 600s or 1.5s)");

    let number = text.strip_suffix('s').ok_or_else(invalid)?;
    let (whole, fraction) = match number.split_once('.') {
        Some((_, "")) => return Err(invalid()),
        Some(parts) => parts,
        None => (number, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }

    let seconds: u64 = whole.parse().map_err(|_| invalid())?;
    let nanos: u32 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().map_err(|_| invalid())? };
    Ok(Duration::new(seconds, nanos))
}

/// Serde adapter storing an optional timestamp as its protojson string.
pub mod serde_timestamp_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(at) => serializer.serialize_str(&super::format_timestamp(at)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse_timestamp(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde adapter storing a timestamp as its protojson string.
pub mod serde_timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_timestamp(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_timestamp(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter storing an optional duration as its protojson string.
pub mod serde_duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&super::format_duration(duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_without_fraction_has_no_dot() {
        let at = parse_timestamp("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(format_timestamp(&at), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn timestamp_fraction_uses_three_six_or_nine_digits() {
        let at = parse_timestamp("2026-01-02T03:04:05.120Z").unwrap();
        assert_eq!(format_timestamp(&at), "2026-01-02T03:04:05.120Z");
        let at = parse_timestamp("2026-01-02T03:04:05.000001Z").unwrap();
        assert_eq!(format_timestamp(&at), "2026-01-02T03:04:05.000001Z");
    }

    #[test]
    fn timestamp_offset_is_converted_to_utc() {
        let at = parse_timestamp("2026-01-02T05:04:05+02:00").unwrap();
        assert_eq!(format_timestamp(&at), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn duration_round_trips() {
        for text in ["600s", "0s", "1.500s", "2.000001s", "3.000000001s"] {
            assert_eq!(format_duration(&parse_duration(text).unwrap()), text);
        }
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn duration_rejects_malformed_text() {
        for text in ["600", "-1s", "s", "1.s", "1.s5", "1.0000000001s", "ten s"] {
            assert!(parse_duration(text).is_err(), "{text} should be rejected");
        }
    }
}
