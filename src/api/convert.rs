//! Conversions between the generated proto messages and the domain types.
//!
//! Both protocols decode into the proto requests (REST through
//! [`super::json`]), so the checks on wire values live here once: negative
//! durations, out-of-range timestamps, unknown enum numbers and update mask
//! paths that name no field.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    challenge::{ChallengeInfo, ChallengeUpdate, Field, NewChallenge, UpdateStrategy},
    error::{Error, Result},
    instance::Instance,
    proto::{challenge as pb, instance as pb_instance},
};

pub fn new_challenge(request: pb::CreateChallengeRequest) -> Result<NewChallenge> {
    Ok(NewChallenge {
        id: request.id,
        scenario: request.scenario,
        timeout: duration("timeout", request.timeout)?,
        until: timestamp("until", request.until)?,
        additional: request.additional.into_iter().collect(),
        min: request.min,
        max: request.max,
    })
}

pub fn challenge_update(request: pb::UpdateChallengeRequest) -> Result<ChallengeUpdate> {
    Ok(ChallengeUpdate {
        id: request.id,
        mask: mask_fields(request.update_mask)?,
        strategy: strategy(request.update_strategy)?,
        scenario: request.scenario,
        timeout: duration("timeout", request.timeout)?,
        until: timestamp("until", request.until)?,
        additional: request.additional.into_iter().collect(),
        min: request.min,
        max: request.max,
    })
}

pub fn challenge(info: ChallengeInfo) -> pb::Challenge {
    let challenge = info.challenge;
    pb::Challenge {
        id: challenge.id,
        scenario: challenge.scenario,
        timeout: challenge.timeout.map(duration_to_proto),
        until: challenge.until.map(timestamp_to_proto),
        instances: info.instances.into_iter().map(instance).collect(),
        additional: challenge.additional.into_iter().collect(),
        min: challenge.min,
        max: challenge.max,
    }
}

// `flag` is deprecated in the proto but still filled for older clients.
#[allow(deprecated)]
pub fn instance(instance: Instance) -> pb_instance::Instance {
    pb_instance::Instance {
        flag: single_flag(&instance.flags).cloned(),
        challenge_id: instance.challenge_id,
        source_id: instance.source_id,
        since: Some(timestamp_to_proto(instance.since)),
        last_renew: Some(timestamp_to_proto(instance.last_renew)),
        until: instance.until.map(timestamp_to_proto),
        connection_info: instance.connection_info,
        flags: instance.flags,
        additional: instance.additional.into_iter().collect(),
    }
}

/// The deprecated singular `flag`: set only when there is exactly one flag,
/// as upstream does, so old clients never read one flag out of several.
pub fn single_flag(flags: &[String]) -> Option<&String> {
    match flags {
        [flag] => Some(flag),
        _ => None,
    }
}

fn duration(field: &'static str, value: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    value.map(|value| duration_from_proto(value).map_err(|reason| Error::invalid(field, reason))).transpose()
}

fn timestamp(field: &'static str, value: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>> {
    value.map(|value| timestamp_from_proto(value).map_err(|reason| Error::invalid(field, reason))).transpose()
}

/// Converts a protobuf duration, which may be negative, to a std one.
pub fn duration_from_proto(value: prost_types::Duration) -> Result<Duration, String> {
    Duration::try_from(value).map_err(|_| format!("{value} is negative"))
}

/// Converts a protobuf timestamp, rejecting nanoseconds out of range and
/// instants chrono cannot represent.
pub fn timestamp_from_proto(value: prost_types::Timestamp) -> Result<DateTime<Utc>, String> {
    u32::try_from(value.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .ok_or_else(|| format!("timestamp {}s {}ns is out of range", value.seconds, value.nanos))
}

/// Converts an update mask to the fields it changes. Paths that name a
/// request field that is not a challenge property (`id`,
/// `update_strategy`, `update_mask`) are accepted and ignored, as upstream
/// accepts every valid path of the request.
///
/// NOTE: upstream also accepts sub-paths of message fields, such as
/// `timeout.seconds`, then ignores them. They are rejected here, because
/// they would change nothing.
fn mask_fields(mask: Option<prost_types::FieldMask>) -> Result<Vec<Field>> {
    let Some(mask) = mask else {
        return Ok(Vec::new());
    };
    let mut fields = Vec::new();
    for path in &mask.paths {
        if let Some(field) = Field::parse(path) {
            if !fields.contains(&field) {
                fields.push(field);
            }
        } else if !matches!(path.as_str(), "id" | "update_strategy" | "update_mask") {
            return Err(Error::InvalidUpdateMask { paths: mask.paths.clone(), path: path.clone() });
        }
    }
    Ok(fields)
}

fn strategy(value: Option<i32>) -> Result<UpdateStrategy> {
    let Some(value) = value else {
        return Ok(UpdateStrategy::default());
    };
    match pb::UpdateStrategy::try_from(value) {
        Ok(pb::UpdateStrategy::UpdateInPlace) => Ok(UpdateStrategy::UpdateInPlace),
        Ok(pb::UpdateStrategy::BlueGreen) => Ok(UpdateStrategy::BlueGreen),
        Ok(pb::UpdateStrategy::Recreate) => Ok(UpdateStrategy::Recreate),
        Err(_) => Err(Error::invalid(
            "update_strategy",
            format!("unknown value {value} (expected 0 update_in_place, 1 blue_green or 2 recreate)"),
        )),
    }
}

/// Saturates at the largest proto duration: stored timeouts come from
/// parsed requests, which cannot exceed it.
pub fn duration_to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
}

pub fn timestamp_to_proto(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_proto() {
        let at = crate::time::parse_timestamp("2026-01-02T03:04:05.120Z").unwrap();
        assert_eq!(timestamp_from_proto(timestamp_to_proto(at)), Ok(at));
    }

    #[test]
    fn negative_duration_is_rejected() {
        assert!(duration_from_proto(prost_types::Duration { seconds: -1, nanos: 0 }).is_err());
    }

    fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
        Some(prost_types::FieldMask { paths: paths.iter().map(|path| path.to_string()).collect() })
    }

    #[test]
    fn mask_maps_paths_to_fields() {
        assert_eq!(mask_fields(None).unwrap(), vec![]);
        assert_eq!(mask_fields(mask(&["timeout", "until", "timeout"])).unwrap(), vec![Field::Timeout, Field::Until]);
        assert_eq!(mask_fields(mask(&["update_strategy", "id", "min"])).unwrap(), vec![Field::Min]);
    }

    #[test]
    fn mask_rejects_unknown_paths() {
        for path in ["flag", "timeout.seconds", "updateStrategy", ""] {
            let err = mask_fields(mask(&[path])).unwrap_err();
            assert!(matches!(&err, Error::InvalidUpdateMask { path: bad, .. } if bad == path), "{path}: {err}");
        }
    }

    #[test]
    fn strategy_rejects_unknown_numbers() {
        assert_eq!(strategy(None).unwrap(), UpdateStrategy::UpdateInPlace);
        assert_eq!(strategy(Some(1)).unwrap(), UpdateStrategy::BlueGreen);
        assert_eq!(strategy(Some(2)).unwrap(), UpdateStrategy::Recreate);
        assert!(matches!(strategy(Some(7)), Err(Error::InvalidArgument { field: "update_strategy", .. })));
    }

    #[test]
    fn negative_timeout_is_rejected() {
        let negative = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert!(matches!(duration("timeout", negative), Err(Error::InvalidArgument { field: "timeout", .. })));
        let positive = Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 });
        assert_eq!(duration("timeout", positive).unwrap(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn invalid_timestamp_is_rejected() {
        let bad_nanos = Some(prost_types::Timestamp { seconds: 0, nanos: -1 });
        assert!(timestamp("until", bad_nanos).is_err());
        let too_far = Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 });
        assert!(timestamp("until", too_far).is_err());
        let at = timestamp("until", Some(timestamp_to_proto(DateTime::from_timestamp(1_700_000_000, 5).unwrap())));
        assert_eq!(at.unwrap(), DateTime::from_timestamp(1_700_000_000, 5));
    }

    #[test]
    fn flag_set_only_for_one_flag() {
        assert_eq!(single_flag(&[]), None);
        assert_eq!(single_flag(&["a".into()]), Some(&"a".to_owned()));
        assert_eq!(single_flag(&["a".into(), "b".into()]), None);
    }
}
