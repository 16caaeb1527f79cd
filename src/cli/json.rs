//! The JSON shapes of challenges and instances, as the REST API returns
//! them.
//!
//! Names are lowerCamelCase and every field is present, with two
//! exceptions: an instance's `until` is omitted when it never expires, and
//! the deprecated `flag` is set only when there is exactly one flag. A
//! challenge's unset `timeout` and `until` are `null`. `min` and `max` are
//! strings because protojson writes int64 that way.
//!
//! TODO: once the API module has its own JSON helpers, print through them
//! so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    challenge::ChallengeInfo,
    instance::Instance,
    time::{format_duration, format_timestamp},
};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeJson<'a> {
    id: &'a str,
    scenario: &'a str,
    timeout: Option<String>,
    until: Option<String>,
    instances: Vec<InstanceJson<'a>>,
    additional: &'a BTreeMap<String, String>,
    min: String,
    max: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceJson<'a> {
    challenge_id: &'a str,
    source_id: &'a str,
    since: String,
    last_renew: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    connection_info: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flag: Option<&'a str>,
    flags: &'a [String],
    additional: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a ChallengeInfo> for ChallengeJson<'a> {
    fn from(info: &'a ChallengeInfo) -> Self {
        let challenge = &info.challenge;
        Self {
            id: &challenge.id,
            scenario: &challenge.scenario,
            timeout: challenge.timeout.as_ref().map(format_duration),
            until: challenge.until.as_ref().map(format_timestamp),
            instances: info.instances.iter().map(InstanceJson::from).collect(),
            additional: &challenge.additional,
            min: challenge.min.to_string(),
            max: challenge.max.to_string(),
        }
    }
}

impl<'a> From<&'a Instance> for InstanceJson<'a> {
    fn from(instance: &'a Instance) -> Self {
        let flag = match instance.flags.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        Self {
            challenge_id: &instance.challenge_id,
            source_id: &instance.source_id,
            since: format_timestamp(&instance.since),
            last_renew: format_timestamp(&instance.last_renew),
            until: instance.until.as_ref().map(format_timestamp),
            connection_info: &instance.connection_info,
            flag,
            flags: &instance.flags,
            additional: &instance.additional,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{challenge::Challenge, time::parse_timestamp};

    fn instance(flags: &[&str], until: Option<&str>) -> Instance {
        Instance {
            challenge_id: "web-1".into(),
            source_id: "team-3".into(),
            identity: "0123456789abcdef".into(),
            since: parse_timestamp("2026-01-02T03:04:05Z").unwrap(),
            last_renew: parse_timestamp("2026-01-02T03:04:05.120Z").unwrap(),
            until: until.map(|text| parse_timestamp(text).unwrap()),
            connection_info: "nc 127.0.0.1 1337".into(),
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
            additional: BTreeMap::new(),
        }
    }

    #[test]
    fn instance_omits_unset_until_and_flag() {
        let value = serde_json::to_value(InstanceJson::from(&instance(&["a", "b"], None))).unwrap();
        assert_eq!(
            value,
            json!({
                "challengeId": "web-1",
                "sourceId": "team-3",
                "since": "2026-01-02T03:04:05Z",
                "lastRenew": "2026-01-02T03:04:05.120Z",
                "connectionInfo": "nc 127.0.0.1 1337",
                "flags": ["a", "b"],
                "additional": {},
            })
        );
    }

    #[test]
    fn instance_with_one_flag_sets_flag() {
        let value = serde_json::to_value(InstanceJson::from(&instance(&["a"], Some("2026-01-02T04:00:00Z")))).unwrap();
        assert_eq!(value["flag"], json!("a"));
        assert_eq!(value["until"], json!("2026-01-02T04:00:00Z"));
    }

    #[test]
    fn challenge_writes_null_and_int64_strings() {
        let challenge = Challenge {
            id: "web-1".into(),
            scenario: "registry.example/web:v1".into(),
            digest: "sha256:00".into(),
            timeout: Some(Duration::from_secs(600)),
            until: None,
            additional: BTreeMap::from([("k".into(), "v".into())]),
            min: 1,
            max: 3,
        };
        let info = ChallengeInfo { challenge, instances: vec![] };
        let value = serde_json::to_value(ChallengeJson::from(&info)).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "web-1",
                "scenario": "registry.example/web:v1",
                "timeout": "600s",
                "until": null,
                "instances": [],
                "additional": {"k": "v"},
                "min": "1",
                "max": "3",
            })
        );
    }
}
