//! The REST JSON forms, compatible with what grpc-gateway's default
//! marshaler (protojson) reads and writes, because the CTFd plugin was
//! written against it.
//!
//! Requests decode into the proto messages:
//! - field names in lowerCamelCase or snake_case, unknown fields ignored;
//! - `null` for any field means unset;
//! - int64 as a JSON number or a decimal string;
//! - the enum by name or number, Duration as `"600s"`, Timestamp as RFC 3339,
//!   FieldMask as one comma-separated string of paths.
//!
//! Responses encode from the domain types, with unpopulated fields emitted:
//! lowerCamelCase names, int64 as strings, `Challenge.timeout`/`until` as
//! `null` when unset, `Instance.until` and `Instance.flag` omitted when unset.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    convert::single_flag,
    status::{ApiError, StatusBody},
};
use crate::{
    challenge::ChallengeInfo,
    instance::Instance,
    proto::{challenge as pb, instance as pb_instance},
    time::{format_duration, format_timestamp, parse_duration, parse_timestamp},
};

/// Failure to decode a request body. The client gets InvalidArgument.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON body: {0}")]
    Syntax(#[from] serde_json::Error),

    #[error("invalid JSON body: expected an object, got {0}")]
    NotObject(&'static str),

    #[error("invalid value for field {field:?}: {reason}")]
    Field { field: String, reason: String },

    #[error("duplicate field {camel:?}: given both as {camel:?} and as {snake:?}")]
    Duplicate { camel: String, snake: &'static str },
}

impl From<DecodeError> for ApiError {
    fn from(err: DecodeError) -> Self {
        ApiError::invalid_request(err.to_string())
    }
}

pub fn create_challenge(body: &[u8]) -> Result<pb::CreateChallengeRequest, DecodeError> {
    let mut object = Object::parse(body)?;
    Ok(pb::CreateChallengeRequest {
        id: object.string("id")?,
        scenario: object.string("scenario")?,
        timeout: object.duration("timeout")?,
        until: object.timestamp("until")?,
        additional: object.map("additional")?,
        min: object.int64("min")?,
        max: object.int64("max")?,
    })
}

pub fn update_challenge(body: &[u8]) -> Result<pb::UpdateChallengeRequest, DecodeError> {
    let mut object = Object::parse(body)?;
    Ok(pb::UpdateChallengeRequest {
        id: object.string("id")?,
        scenario: object.optional_string("scenario")?,
        update_strategy: object.update_strategy("update_strategy")?,
        timeout: object.duration("timeout")?,
        until: object.timestamp("until")?,
        update_mask: object.field_mask("update_mask")?,
        additional: object.map("additional")?,
        min: object.int64("min")?,
        max: object.int64("max")?,
    })
}

pub fn create_instance(body: &[u8]) -> Result<pb_instance::CreateInstanceRequest, DecodeError> {
    let mut object = Object::parse(body)?;
    Ok(pb_instance::CreateInstanceRequest {
        challenge_id: object.string("challenge_id")?,
        source_id: object.string("source_id")?,
        additional: object.map("additional")?,
    })
}

pub fn renew_instance(body: &[u8]) -> Result<pb_instance::RenewInstanceRequest, DecodeError> {
    let mut object = Object::parse(body)?;
    Ok(pb_instance::RenewInstanceRequest {
        challenge_id: object.string("challenge_id")?,
        source_id: object.string("source_id")?,
    })
}

/// A request body being decoded: fields are removed as they are read, and
/// whatever remains is ignored.
struct Object(Map<String, Value>);

impl Object {
    /// Parses a body. An empty body is an empty message, as grpc-gateway
    /// treats it, because a renew is sent without one.
    fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Map::new()));
        }
        match serde_json::from_slice(body)? {
            Value::Object(map) => Ok(Self(map)),
            Value::Null => Ok(Self(Map::new())),
            other => Err(DecodeError::NotObject(kind(&other))),
        }
    }

    /// Removes the field `name` (the proto snake_case name) given under
    /// either JSON name. Returns `None` when it is absent or `null`.
    fn take(&mut self, name: &'static str) -> Result<Option<Value>, DecodeError> {
        let camel = lower_camel(name);
        let snake_value = self.0.remove(name);
        let camel_value = if camel == name { None } else { self.0.remove(&camel) };
        let value = match (snake_value, camel_value) {
            (Some(_), Some(_)) => return Err(DecodeError::Duplicate { camel, snake: name }),
            (value, None) | (None, value) => value,
        };
        Ok(value.filter(|value| !value.is_null()))
    }

    fn string(&mut self, name: &'static str) -> Result<String, DecodeError> {
        Ok(self.optional_string(name)?.unwrap_or_default())
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, DecodeError> {
        match self.take(name)? {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(field_error(name, format!("expected a string, got {}", kind(&other)))),
        }
    }

    fn int64(&mut self, name: &'static str) -> Result<i64, DecodeError> {
        let Some(value) = self.take(name)? else {
            return Ok(0);
        };
        let parsed = match &value {
            Value::Number(number) => number.as_i64().or_else(|| number.as_f64().and_then(integral)),
            Value::String(text) => text.parse::<i64>().ok().or_else(|| text.parse::<f64>().ok().and_then(integral)),
            _ => None,
        };
        parsed
            .ok_or_else(|| field_error(name, format!("expected a 64-bit integer as a number or a string, got {value}")))
    }

    fn duration(&mut self, name: &'static str) -> Result<Option<prost_types::Duration>, DecodeError> {
        let Some(text) = self.optional_string(name)? else {
            return Ok(None);
        };
        let duration = parse_duration(&text).map_err(|reason| field_error(name, reason))?;
        prost_types::Duration::try_from(duration)
            .map(Some)
            .map_err(|_| field_error(name, format!("duration {text:?} is too large")))
    }

    fn timestamp(&mut self, name: &'static str) -> Result<Option<prost_types::Timestamp>, DecodeError> {
        let Some(text) = self.optional_string(name)? else {
            return Ok(None);
        };
        let at = parse_timestamp(&text).map_err(|reason| field_error(name, reason))?;
        Ok(Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }))
    }

    fn map(&mut self, name: &'static str) -> Result<HashMap<String, String>, DecodeError> {
        let entries = match self.take(name)? {
            None => return Ok(HashMap::new()),
            Some(Value::Object(entries)) => entries,
            Some(other) => return Err(field_error(name, format!("expected an object, got {}", kind(&other)))),
        };
        entries
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key, text)),
                other => {
                    Err(field_error(name, format!("value of key {key:?}: expected a string, got {}", kind(&other))))
                }
            })
            .collect()
    }

    /// Reads a FieldMask: one string of comma-separated paths, each in
    /// lowerCamelCase (protojson's form) or snake_case, stored snake_case.
    fn field_mask(&mut self, name: &'static str) -> Result<Option<prost_types::FieldMask>, DecodeError> {
        let Some(text) = self.optional_string(name)? else {
            return Ok(None);
        };
        let paths = if text.is_empty() { Vec::new() } else { text.split(',').map(snake_case).collect() };
        Ok(Some(prost_types::FieldMask { paths }))
    }

    /// Reads the UpdateStrategy enum by name or by number. Unknown numbers
    /// are kept, as protojson keeps them for open enums, and rejected later
    /// by the conversion shared with gRPC.
    fn update_strategy(&mut self, name: &'static str) -> Result<Option<i32>, DecodeError> {
        match self.take(name)? {
            None => Ok(None),
            Some(Value::String(text)) => {
                pb::UpdateStrategy::from_str_name(&text).map(|strategy| Some(strategy as i32)).ok_or_else(|| {
                    field_error(
                        name,
                        format!("unknown value {text:?} (expected update_in_place, blue_green or recreate)"),
                    )
                })
            }
            Some(Value::Number(number)) => number
                .as_i64()
                .and_then(|number| i32::try_from(number).ok())
                .map(Some)
                .ok_or_else(|| field_error(name, format!("unknown value {number}"))),
            Some(other) => Err(field_error(name, format!("expected a string or a number, got {}", kind(&other)))),
        }
    }
}

fn field_error(name: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field { field: lower_camel(name), reason: reason.into() }
}

/// Returns a float as an integer when it has no fraction and fits.
fn integral(value: f64) -> Option<i64> {
    let in_range = value >= i64::MIN as f64 && value < i64::MAX as f64;
    (value.fract() == 0.0 && in_range).then_some(value as i64)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts `source_id` to `sourceId`.
fn lower_camel(snake: &str) -> String {
    let mut camel = String::with_capacity(snake.len());
    let mut upper_next = false;
    for c in snake.chars() {
        if c == '_' {
            upper_next = true;
        } else if upper_next {
            camel.push(c.to_ascii_uppercase());
            upper_next = false;
        } else {
            camel.push(c);
        }
    }
    camel
}

/// Converts `updateStrategy` to `update_strategy`. A snake_case path is
/// returned unchanged.
fn snake_case(path: &str) -> String {
    let mut snake = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// A Challenge in its JSON form.
#[derive(Serialize)]
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

/// An Instance in its JSON form.
#[derive(Serialize)]
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
    flag: Option<&'a String>,
    flags: &'a [String],
    additional: &'a BTreeMap<String, String>,
}

pub fn challenge(info: &ChallengeInfo) -> ChallengeJson<'_> {
    let challenge = &info.challenge;
    ChallengeJson {
        id: &challenge.id,
        scenario: &challenge.scenario,
        timeout: challenge.timeout.as_ref().map(format_duration),
        until: challenge.until.as_ref().map(format_timestamp),
        instances: info.instances.iter().map(instance).collect(),
        additional: &challenge.additional,
        min: challenge.min.to_string(),
        max: challenge.max.to_string(),
    }
}

pub fn instance(instance: &Instance) -> InstanceJson<'_> {
    InstanceJson {
        challenge_id: &instance.challenge_id,
        source_id: &instance.source_id,
        since: format_timestamp(&instance.since),
        last_renew: format_timestamp(&instance.last_renew),
        until: instance.until.as_ref().map(format_timestamp),
        connection_info: &instance.connection_info,
        flag: single_flag(&instance.flags),
        flags: &instance.flags,
        additional: &instance.additional,
    }
}

/// Encodes one line of a REST stream in grpc-gateway's framing:
/// `{"result":…}` and a newline.
pub fn stream_result(message: impl Serialize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Line<T> {
        result: T,
    }
    stream_line(&Line { result: message })
}

/// Encodes the last line of a REST stream that failed: `{"error":…}` and
/// a newline.
pub fn stream_error(error: &ApiError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Line<'a> {
        error: StatusBody<'a>,
    }
    stream_line(&Line { error: error.body() })
}

fn stream_line(line: &impl Serialize) -> Vec<u8> {
    // Our types serialize infallibly: string keys, no non-finite floats.
    let mut bytes = serde_json::to_vec(line).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::challenge::Challenge;

    fn at(text: &str) -> DateTime<Utc> {
        parse_timestamp(text).unwrap()
    }

    fn sample_instance(flags: &[&str], until: Option<&str>) -> Instance {
        Instance {
            challenge_id: "12".into(),
            source_id: "0".into(),
            identity: "0123456789abcdef".into(),
            since: at("2026-01-02T03:04:05Z"),
            last_renew: at("2026-01-02T03:04:05.120Z"),
            until: until.map(at),
            connection_info: String::new(),
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
            additional: BTreeMap::new(),
            deployed: Default::default(),
        }
    }

    fn sample_challenge(instances: Vec<Instance>) -> ChallengeInfo {
        ChallengeInfo {
            challenge: Challenge {
                id: "12".into(),
                scenario: "registry:5000/x:v1".into(),
                digest: "sha256:00".into(),
                timeout: None,
                until: None,
                additional: BTreeMap::new(),
                min: 0,
                max: 3,
            },
            instances,
            pooled: None,
        }
    }

    fn to_json(value: impl Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    #[test]
    fn create_accepts_camel_and_snake_and_ignores_unknown() {
        let request = create_challenge(
            br#"{"id":"12","scenario":"r/x:v1","timeout":"600s","until":"2026-01-02T03:04:05Z",
                "additional":{"k":"v"},"min":1,"max":"2","updateStrategy":"blue_green"}"#,
        )
        .unwrap();
        assert_eq!(request.id, "12");
        assert_eq!(request.timeout, Some(prost_types::Duration { seconds: 600, nanos: 0 }));
        assert_eq!(request.until.unwrap().seconds, at("2026-01-02T03:04:05Z").timestamp());
        assert_eq!(request.additional.get("k").map(String::as_str), Some("v"));
        assert_eq!((request.min, request.max), (1, 2));

        let request = create_instance(br#"{"challenge_id":"12","sourceId":"3"}"#).unwrap();
        assert_eq!((request.challenge_id.as_str(), request.source_id.as_str()), ("12", "3"));
    }

    #[test]
    fn null_means_unset_for_every_field() {
        let request = update_challenge(
            br#"{"id":null,"scenario":null,"updateStrategy":null,"timeout":null,"until":null,
                "updateMask":null,"additional":null,"min":null,"max":null}"#,
        )
        .unwrap();
        assert_eq!(request, pb::UpdateChallengeRequest::default());
    }

    #[test]
    fn empty_body_is_empty_message() {
        assert_eq!(renew_instance(b"").unwrap(), pb_instance::RenewInstanceRequest::default());
        assert_eq!(renew_instance(b"{}").unwrap(), pb_instance::RenewInstanceRequest::default());
    }

    #[test]
    fn int64_reads_number_or_string() {
        for (body, expected) in [
            (r#"{"min":5}"#, 5),
            (r#"{"min":"5"}"#, 5),
            (r#"{"min":"-5"}"#, -5),
            (r#"{"min":5.0}"#, 5),
            (r#"{"min":"9223372036854775807"}"#, i64::MAX),
        ] {
            assert_eq!(create_challenge(body.as_bytes()).unwrap().min, expected, "{body}");
        }
        for body in [r#"{"min":1.5}"#, r#"{"min":"five"}"#, r#"{"min":true}"#] {
            assert!(create_challenge(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn enum_reads_name_or_number() {
        let by_name = update_challenge(br#"{"updateStrategy":"recreate"}"#).unwrap();
        assert_eq!(by_name.update_strategy, Some(pb::UpdateStrategy::Recreate as i32));
        let by_number = update_challenge(br#"{"update_strategy":1}"#).unwrap();
        assert_eq!(by_number.update_strategy, Some(pb::UpdateStrategy::BlueGreen as i32));

        let err = update_challenge(br#"{"updateStrategy":"sideways"}"#).unwrap_err();
        assert!(err.to_string().contains("updateStrategy"), "{err}");
        assert!(err.to_string().contains("sideways"), "{err}");
    }

    #[test]
    fn mask_splits_and_converts_to_snake_case() {
        let request = update_challenge(br#"{"updateMask":"timeout,until,updateStrategy,source_id"}"#).unwrap();
        assert_eq!(request.update_mask.unwrap().paths, ["timeout", "until", "update_strategy", "source_id"]);
        let empty = update_challenge(br#"{"updateMask":""}"#).unwrap();
        assert_eq!(empty.update_mask.unwrap().paths, Vec::<String>::new());
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert!(matches!(create_challenge(b"{"), Err(DecodeError::Syntax(_))));
        assert!(matches!(create_challenge(b"[]"), Err(DecodeError::NotObject(_))));
        assert!(matches!(create_challenge(br#"{"id":12}"#), Err(DecodeError::Field { .. })));
        assert!(matches!(create_challenge(br#"{"timeout":"10"}"#), Err(DecodeError::Field { .. })));
        assert!(matches!(create_challenge(br#"{"until":"tomorrow"}"#), Err(DecodeError::Field { .. })));
        assert!(matches!(create_challenge(br#"{"additional":{"k":1}}"#), Err(DecodeError::Field { .. })));
        assert!(matches!(create_instance(br#"{"sourceId":"1","source_id":"2"}"#), Err(DecodeError::Duplicate { .. })));
    }

    #[test]
    fn challenge_json_shape() {
        let value = to_json(challenge(&sample_challenge(vec![])));
        assert_eq!(
            value,
            json!({
                "id": "12",
                "scenario": "registry:5000/x:v1",
                "timeout": null,
                "until": null,
                "instances": [],
                "additional": {},
                "min": "0",
                "max": "3",
            })
        );
    }

    #[test]
    fn challenge_json_formats_timeout_and_until() {
        let mut info = sample_challenge(vec![]);
        info.challenge.timeout = Some(Duration::from_millis(1500));
        info.challenge.until = Some(at("2026-01-02T03:04:05Z"));
        let value = to_json(challenge(&info));
        assert_eq!(value["timeout"], "1.500s");
        assert_eq!(value["until"], "2026-01-02T03:04:05Z");
    }

    #[test]
    fn instance_json_omits_unset_until_and_flag() {
        let value = to_json(instance(&sample_instance(&[], None)));
        assert_eq!(
            value,
            json!({
                "challengeId": "12",
                "sourceId": "0",
                "since": "2026-01-02T03:04:05Z",
                "lastRenew": "2026-01-02T03:04:05.120Z",
                "connectionInfo": "",
                "flags": [],
                "additional": {},
            })
        );
    }

    #[test]
    fn instance_json_flag_only_for_single_flag() {
        let one = to_json(instance(&sample_instance(&["F{x}"], Some("2026-01-02T04:04:05Z"))));
        assert_eq!(one["flag"], "F{x}");
        assert_eq!(one["flags"], json!(["F{x}"]));
        assert_eq!(one["until"], "2026-01-02T04:04:05Z");

        let two = to_json(instance(&sample_instance(&["a", "b"], None)));
        assert!(two.get("flag").is_none(), "{two}");
        assert_eq!(two["flags"], json!(["a", "b"]));
    }

    #[test]
    fn stream_lines_are_compact_json_per_line() {
        let info = sample_challenge(vec![sample_instance(&[], None)]);
        let line = String::from_utf8(stream_result(challenge(&info))).unwrap();
        assert!(line.starts_with(r#"{"result":{"id":"12""#), "{line}");
        assert!(line.ends_with("}\n"), "{line}");
        assert_eq!(line.matches('\n').count(), 1, "{line}");

        let error = ApiError::new(tonic::Code::Internal, "An internal error occurred.");
        let line = String::from_utf8(stream_error(&error)).unwrap();
        assert_eq!(line, "{\"error\":{\"code\":13,\"message\":\"An internal error occurred.\",\"details\":[]}}\n");
    }
}
