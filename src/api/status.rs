//! The one mapping from [`crate::Error`] to what a client sees: a gRPC code,
//! a message and `google.rpc` details, and over REST the HTTP status and
//! the `google.rpc.Status` JSON body that grpc-gateway writes.
//!
//! The codes, messages and `ErrorInfo` reasons are those of the upstream Go
//! chall-manager, because its clients branch on them: the CTFd plugin checks
//! that a create conflict says "already exist", and the Go CLI decodes the
//! `BadRequest` field violations.

use std::collections::HashMap;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::{
    BadRequest, ErrorDetail, ErrorInfo, FieldViolation, Help, HelpLink, PreconditionFailure, PreconditionViolation,
    ResourceInfo, StatusExt,
};
use tracing::{debug, error, info};

use crate::{
    challenge::PoolViolation,
    error::Error,
    scenario::{self, ErrorKind},
};

/// Domain of every `ErrorInfo` detail, the one upstream uses.
pub const DOMAIN: &str = "github.com/ctfer-io/chall-manager";

/// The message of every internal error: the cause is only logged, because it
/// names server paths and internals that are no use to a client.
pub const INTERNAL_MESSAGE: &str = "An internal error occurred.";

/// A failed request as the client sees it, over either protocol.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Vec<ErrorDetail>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Vec::new() }
    }

    /// Maps an operation error and logs it: server errors at `error` with
    /// the whole cause chain, client errors at `info` (`debug` for a missing
    /// challenge or instance, which clients poll for). The ids come from
    /// the request span the caller runs in.
    pub fn from_error(err: &Error) -> Self {
        let status = map(err);
        // Debug-formatted, so that a scenario's stderr in the chain stays on
        // one escaped line and cannot pass for log lines of its own.
        let chain = error_chain(err);
        match status.code {
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable => {
                error!(code = ?status.code, error = ?chain, "request failed");
            }
            Code::NotFound => debug!(code = ?status.code, error = ?chain, "request failed"),
            _ => info!(code = ?status.code, error = ?chain, "request failed"),
        }
        status
    }

    /// A request body, path or query that cannot be decoded; logged at
    /// `info` like other client errors.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        let status = Self::new(Code::InvalidArgument, message);
        info!(code = ?status.code, error = %status.message, "request rejected");
        status
    }

    /// The HTTP status grpc-gateway gives this code.
    pub fn http_status(&self) -> StatusCode {
        http_status(self.code)
    }

    /// The `google.rpc.Status` in protojson, with unset fields emitted.
    pub fn body(&self) -> StatusBody<'_> {
        StatusBody {
            code: self.code as i32,
            message: &self.message,
            details: self.details.iter().filter_map(detail_json).collect(),
        }
    }

    /// The gRPC status, with the details encoded in `grpc-status-details-bin`.
    pub fn into_status(self) -> tonic::Status {
        tonic::Status::with_error_details_vec(self.code, self.message, self.details)
    }

    fn with_info<'a>(self, reason: &str, metadata: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.with_info_in(DOMAIN, reason, metadata)
    }

    fn with_info_in<'a>(
        mut self,
        domain: &str,
        reason: &str,
        metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let metadata: HashMap<String, String> =
            metadata.into_iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect();
        self.details.push(ErrorInfo::new(reason, domain, metadata).into());
        self
    }

    /// Adds a `BadRequest` with one violation. `reason` may be empty.
    fn with_violation(mut self, field: &str, reason: &str, description: &str) -> Self {
        self.details.push(BadRequest::new([field_violation(field, reason, description)]).into());
        self
    }

    fn with_help<'a>(mut self, links: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let links: Vec<HelpLink> =
            links.into_iter().map(|(description, url)| HelpLink::new(description, url)).collect();
        self.details.push(Help::new(links).into());
        self
    }

    fn with_resource(mut self, kind: &str, name: &str, description: &str) -> Self {
        self.details.push(ResourceInfo::new(kind, name, "", description).into());
        self
    }

    fn with_precondition(mut self, kind: &str, subject: &str, description: &str) -> Self {
        let subject = format!("{DOMAIN}/{subject}");
        self.details.push(PreconditionFailure::new([PreconditionViolation::new(kind, subject, description)]).into());
        self
    }
}

/// The JSON body of an error, fields in proto order.
#[derive(Serialize)]
pub struct StatusBody<'a> {
    code: i32,
    message: &'a str,
    details: Vec<Value>,
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self::from_error(&err)
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        ApiError::from_error(&err).into_status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(self.body())).into_response()
    }
}

/// Picks the code, message and details of an operation error.
fn map(err: &Error) -> ApiError {
    match err {
        // Before `is_internal`: a registry failure is internal, but keeps
        // upstream's OCI_INTERACTION reason.
        Error::Scenario { reference, source } => scenario_status(reference, source),

        _ if err.is_internal() => internal(),

        Error::InvalidArgument { field, reason } => ApiError::new(Code::InvalidArgument, err.to_string())
            .with_info("INVALID_ARGUMENT", [("field", *field)])
            .with_violation(field, "", reason),

        Error::PoolOutOfBounds { min, max, violations } => pool_status(*min, *max, violations),

        Error::InvalidUpdateMask { paths, .. } => update_mask_status(paths),

        Error::ChallengeExists { id } => ApiError::new(Code::AlreadyExists, "Challenge already exists.")
            .with_info("CHALLENGE_ALREADY_EXISTS", [("id", id.as_str())])
            .with_resource("Challenge", id, "A challenge with this ID already exists."),

        Error::ChallengeNotFound { id } => ApiError::new(Code::NotFound, "Challenge not found.")
            .with_info("CHALLENGE_NOT_FOUND", [("id", id.as_str())])
            .with_resource("Challenge", id, "No challenge with this ID was found."),

        Error::ChallengeExpired { id } => ApiError::new(Code::FailedPrecondition, "Challenge has expired.")
            .with_info("CHALLENGE_EXPIRED", [("id", id.as_str())])
            .with_precondition(
                "EXPIRATION",
                "Challenge",
                "Challenge has expired so can no longer process instance requests.",
            ),

        Error::NoRenewal { id } => ApiError::new(Code::FailedPrecondition, "Challenge does not accept renewal.")
            .with_info("CHALLENGE_NO_RENEWAL", [("id", id.as_str())])
            .with_precondition("RENEWAL", "Challenge", "Challenge has no timeout thus cannot be renewed."),

        Error::InstanceExists { challenge_id, source_id } => {
            ApiError::new(Code::AlreadyExists, "Instance already exists.")
                .with_info("INSTANCE_ALREADY_EXISTS", instance_ids(challenge_id, source_id))
                .with_resource(
                    "Instance",
                    &format!("{challenge_id}/{source_id}"),
                    "An instance with this ID already exists.",
                )
        }

        Error::InstanceNotFound { challenge_id, source_id } => ApiError::new(Code::NotFound, "Instance not found.")
            .with_info("INSTANCE_NOT_FOUND", instance_ids(challenge_id, source_id))
            .with_resource("Instance", &format!("{challenge_id}/{source_id}"), "No instance with this ID was found."),

        Error::InstanceExpired { challenge_id, source_id } => {
            ApiError::new(Code::FailedPrecondition, "Instance can't be renewed as it expired.")
                .with_info("INSTANCE_EXPIRED", instance_ids(challenge_id, source_id))
                .with_precondition(
                    "EXPIRATION",
                    "Instance",
                    "Instance has expired so can no longer process renewal request.",
                )
        }

        Error::InvalidScenario { reference, source } => non_matching_scenario(reference, &source.to_string()),

        // The message carries the scenario's output, which is meant for the
        // ChallMaker: the CTFd plugin shows the message of an Unknown error.
        Error::Deploy { action, challenge_id, source_id, .. } => {
            let reason = format!("INSTANCE_{}_FAILED", action.to_uppercase());
            ApiError::new(Code::Unknown, err.to_string()).with_info(&reason, instance_ids(challenge_id, source_id))
        }

        // Pool deployments run in the background and are only logged; this
        // arm keeps the mapping total.
        Error::PoolDeploy { challenge_id, .. } => ApiError::new(Code::Unknown, err.to_string())
            .with_info("POOL_DEPLOYMENT_FAILED", [("challenge_id", challenge_id.as_str())]),

        // Internal, the code upstream returns when a destroy fails during a
        // challenge deletion. The message names the sources and carries the
        // scenario's output, like a failed deployment, because the
        // ChallMaker has to act on them. It names no server path.
        Error::InstancesLeft { id, sources, .. } => {
            let sources = sources.join(",");
            ApiError::new(Code::Internal, err.to_string())
                .with_info("CHALLENGE_INSTANCES_LEFT", [("id", id.as_str()), ("source_ids", sources.as_str())])
        }
        // The message carries the scenario's stderr, like a failed deployment.
        Error::InstancesNotUpdated { id, sources, .. } => {
            let sources = sources.join(",");
            ApiError::new(Code::Unknown, err.to_string())
                .with_info("INSTANCE_UPDATE_FAILED", [("id", id.as_str()), ("source_ids", sources.as_str())])
        }

        // Internal by `is_internal`, which matched above.
        Error::Store(_) | Error::Lock(_) | Error::Task(_) => internal(),
    }
}

fn internal() -> ApiError {
    ApiError::new(Code::Internal, INTERNAL_MESSAGE).with_info("INTERNAL_ERROR", [])
}

/// Reports every broken pool rule in one `BadRequest`, with the bounds that
/// were checked in the `ErrorInfo` metadata.
fn pool_status(min: Option<i64>, max: Option<i64>, violations: &[PoolViolation]) -> ApiError {
    let (min, max) = (min.map(|min| min.to_string()), max.map(|max| max.to_string()));
    let metadata = [("min", min.as_deref()), ("max", max.as_deref())]
        .into_iter()
        .filter_map(|(key, value)| value.map(|value| (key, value)));
    let field_violations = violations.iter().map(|violation| match violation {
        PoolViolation::MinNegative => {
            field_violation("min", "MUST_BE_POSITIVE", "Minimum boundary must be a positive integer.")
        }
        PoolViolation::MaxNegative => {
            field_violation("max", "MUST_BE_POSITIVE", "Maximum boundary must be a positive integer.")
        }
        PoolViolation::MinAboveMax => field_violation(
            "min",
            "INVERTED_BOUNDARIES",
            "When an upper bound is defined, minimum cannot exceed maximum.",
        ),
    });

    let mut status = ApiError::new(Code::InvalidArgument, "Pooler configuration out of bounds.")
        .with_info("CHALLENGE_POOLER_OUT_OF_BOUNDS", metadata);
    status.details.push(BadRequest::new(field_violations.collect::<Vec<_>>()).into());
    status
}

fn update_mask_status(paths: &[String]) -> ApiError {
    let mask = mask_text(paths);
    ApiError::new(Code::InvalidArgument, "Invalid update mask.")
        .with_info("CHALLENGE_INVALID_UPDATE_MASK", [("update-mask", mask.as_str())])
        .with_violation("update-mask", "INVALID_UPDATE_MASK", "The update mask is malformed.")
        .with_help([
            (
                "Protocol Buffers > Well-Known Types > Field mask",
                "https://protobuf.dev/reference/protobuf/google.protobuf/#field-mask",
            ),
            ("AIP-161 Field masks", "https://google.aip.dev/161"),
        ])
}

/// Writes a field mask in protobuf text format (`paths:"a" paths:"b"`),
/// the form upstream puts in the `update-mask` metadata.
fn mask_text(paths: &[String]) -> String {
    let quoted: Vec<String> = paths.iter().map(|path| format!("paths:\"{}\"", text_escape(path))).collect();
    quoted.join(" ")
}

/// Escapes a string for a protobuf text format literal.
fn text_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            control if control.is_control() && control.is_ascii() => {
                escaped.push_str(&format!("\\x{:02x}", control as u8));
            }
            other => escaped.push(other),
        }
    }
    escaped
}

/// Maps a failure to resolve or fetch a scenario as upstream maps its OCI
/// and scenario validation errors. The messages are upstream's fixed
/// ones. The cause is in the details where upstream puts it, and in the log.
fn scenario_status(reference: &str, source: &scenario::Error) -> ApiError {
    let oci_domain = format!("{DOMAIN}/OCI");
    let reference_info = [("reference", reference)];
    match source.kind() {
        ErrorKind::Malformed => ApiError::new(Code::InvalidArgument, "OCI reference is malformed.")
            .with_info("OCI_REFERENCE_MALFORMED", reference_info)
            .with_resource("Reference", reference, &source.to_string())
            .with_help([(
                "OCI Image Format specification GitHub repository.",
                "https://github.com/opencontainers/image-spec",
            )]),

        ErrorKind::NotFound => ApiError::new(Code::InvalidArgument, "Registry does not contain reference.")
            .with_info_in(&oci_domain, "OCI_REFERENCE_NOT_FOUND", reference_info)
            .with_violation("scenario", "OCI_REFERENCE_NOT_FOUND", "Reference not found."),

        // Failed precondition: the registry may come back, so a retry can
        // succeed.
        ErrorKind::Unreachable => {
            ApiError::new(Code::FailedPrecondition, "Registry is not available. You might want to try again later.")
                .with_info_in(&oci_domain, "OCI_INTERACTION", reference_info)
                .with_violation("scenario", "OCI_INTERACTION", "Registry is unreachable.")
        }

        ErrorKind::Unauthorized => ApiError::new(
            Code::FailedPrecondition,
            "Registry requires authentication. You may not be authorized to use it.",
        )
        .with_info_in(&oci_domain, "OCI_INTERACTION", reference_info)
        .with_violation(
            "scenario",
            "OCI_INTERACTION",
            "The reference of provided scenario is hosted on a registry that requires authentication, \
             for which credentials did not match.",
        ),

        ErrorKind::Invalid => non_matching_scenario(reference, &source.to_string()),

        // Only the registry's own failures are OCI interactions. Local I/O
        // in the scenario cache is the server's own failure.
        ErrorKind::Internal => match source {
            scenario::Error::Registry { .. } => {
                ApiError::new(Code::Internal, "OCI interaction failed.").with_info("OCI_INTERACTION", reference_info)
            }
            _ => internal(),
        },
    }
}

/// Maps a scenario that is fetched but that this server cannot run.
/// `cause` describes what the runner or the extraction rejected, for the
/// ChallMaker.
fn non_matching_scenario(reference: &str, cause: &str) -> ApiError {
    ApiError::new(Code::InvalidArgument, "Scenario does not match specification.")
        .with_info("SCENARIO_NON_MATCHING_SPECIFICATION", [("reference", reference)])
        .with_resource(
            "Scenario",
            reference,
            "A program that deploys one challenge instance, with its runtime settings.",
        )
        .with_help([
            ("Definition of a Scenario.", "https://ctfer.io/docs/chall-manager/glossary/#scenario"),
            (
                "Step-by-step guide to create a Scenario.",
                "https://ctfer.io/docs/chall-manager/challmaker-guides/create-scenario/",
            ),
        ])
        .with_violation("scenario", "VALIDATION", cause)
}

fn field_violation(field: &str, reason: &str, description: &str) -> FieldViolation {
    FieldViolation { reason: reason.to_owned(), ..FieldViolation::new(field, description) }
}

fn instance_ids<'a>(challenge_id: &'a str, source_id: &'a str) -> [(&'static str, &'a str); 2] {
    [("challenge_id", challenge_id), ("source_id", source_id)]
}

/// Joins an error and its sources with `: `, for the logs.
fn error_chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` and messages that embed their source
        // would otherwise print the same text twice.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Maps a gRPC code to the HTTP status grpc-gateway v2 uses for it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 is nginx's "client closed request", which grpc-gateway uses.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Renders one detail as protojson renders a `google.protobuf.Any`: the
/// `@type` URL beside the message's own fields, unset fields included.
/// Returns `None` for the detail types this server never produces.
fn detail_json(detail: &ErrorDetail) -> Option<Value> {
    let value = match detail {
        ErrorDetail::ErrorInfo(info) => json!({
            "@type": ErrorInfo::TYPE_URL,
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }),
        ErrorDetail::BadRequest(bad_request) => json!({
            "@type": BadRequest::TYPE_URL,
            "fieldViolations": bad_request.field_violations.iter().map(|violation| json!({
                "field": violation.field,
                "description": violation.description,
                "reason": violation.reason,
                "localizedMessage": null,
            })).collect::<Vec<_>>(),
        }),
        ErrorDetail::ResourceInfo(resource) => json!({
            "@type": ResourceInfo::TYPE_URL,
            "resourceType": resource.resource_type,
            "resourceName": resource.resource_name,
            "owner": resource.owner,
            "description": resource.description,
        }),
        ErrorDetail::Help(help) => json!({
            "@type": Help::TYPE_URL,
            "links": help.links.iter().map(|link| json!({
                "description": link.description,
                "url": link.url,
            })).collect::<Vec<_>>(),
        }),
        ErrorDetail::PreconditionFailure(failure) => json!({
            "@type": PreconditionFailure::TYPE_URL,
            "violations": failure.violations.iter().map(|violation| json!({
                "type": violation.r#type,
                "subject": violation.subject,
                "description": violation.description,
            })).collect::<Vec<_>>(),
        }),
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    impl ApiError {
        fn to_json(&self) -> Value {
            serde_json::to_value(self.body()).unwrap()
        }
    }

    fn code_and_http(err: Error) -> (Code, u16) {
        let status = map(&err);
        (status.code, status.http_status().as_u16())
    }

    #[test]
    fn http_status_follows_grpc_gateway() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn domain_errors_map_to_codes() {
        let id = || "7".to_owned();
        let ids = || ("7".to_owned(), "0".to_owned());
        assert_eq!(code_and_http(Error::ChallengeExists { id: id() }), (Code::AlreadyExists, 409));
        assert_eq!(code_and_http(Error::ChallengeNotFound { id: id() }), (Code::NotFound, 404));
        assert_eq!(code_and_http(Error::ChallengeExpired { id: id() }), (Code::FailedPrecondition, 400));
        assert_eq!(code_and_http(Error::NoRenewal { id: id() }), (Code::FailedPrecondition, 400));
        let (challenge_id, source_id) = ids();
        assert_eq!(code_and_http(Error::InstanceExists { challenge_id, source_id }), (Code::AlreadyExists, 409));
        let (challenge_id, source_id) = ids();
        assert_eq!(code_and_http(Error::InstanceNotFound { challenge_id, source_id }), (Code::NotFound, 404));
        let (challenge_id, source_id) = ids();
        assert_eq!(code_and_http(Error::InstanceExpired { challenge_id, source_id }), (Code::FailedPrecondition, 400));
        let left = Error::InstancesLeft { id: id(), sources: vec!["1".into(), "2".into()], first: "boom".into() };
        assert_eq!(code_and_http(left), (Code::Internal, 500));
    }

    #[test]
    fn conflict_messages_say_already_exists() {
        let challenge = map(&Error::ChallengeExists { id: "7".into() });
        assert_eq!(challenge.message, "Challenge already exists.");
        let instance = map(&Error::InstanceExists { challenge_id: "7".into(), source_id: "3".into() });
        assert_eq!(instance.message, "Instance already exists.");
    }

    #[test]
    fn not_found_body_has_error_info_with_ids() {
        let body = map(&Error::InstanceNotFound { challenge_id: "7".into(), source_id: "3".into() }).to_json();
        assert_eq!(body["code"], 5);
        assert_eq!(body["message"], "Instance not found.");
        let info = &body["details"][0];
        assert_eq!(info["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
        assert_eq!(info["reason"], "INSTANCE_NOT_FOUND");
        assert_eq!(info["domain"], DOMAIN);
        assert_eq!(info["metadata"]["challenge_id"], "7");
        assert_eq!(info["metadata"]["source_id"], "3");
        assert_eq!(body["details"][1]["resourceName"], "7/3");
    }

    #[test]
    fn invalid_argument_names_field_and_reason() {
        let status = map(&Error::invalid("id", "must not be empty"));
        assert_eq!(status.code, Code::InvalidArgument);
        assert!(status.message.contains("id"), "{}", status.message);
        assert!(status.message.contains("must not be empty"), "{}", status.message);

        let body = status.to_json();
        let violation = &body["details"][1];
        assert_eq!(violation["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(violation["fieldViolations"][0]["field"], "id");
        assert_eq!(violation["fieldViolations"][0]["description"], "must not be empty");
    }

    #[test]
    fn pool_bounds_report_every_violation() {
        let err = Error::PoolOutOfBounds {
            min: Some(-1),
            max: Some(-2),
            violations: vec![PoolViolation::MinNegative, PoolViolation::MaxNegative],
        };
        let body = map(&err).to_json();
        assert_eq!(body["code"], 3);
        assert_eq!(body["message"], "Pooler configuration out of bounds.");
        assert_eq!(body["details"][0]["reason"], "CHALLENGE_POOLER_OUT_OF_BOUNDS");
        assert_eq!(body["details"][0]["metadata"], json!({"min": "-1", "max": "-2"}));
        let violations = &body["details"][1]["fieldViolations"];
        assert_eq!(violations[0]["field"], "min");
        assert_eq!(violations[0]["reason"], "MUST_BE_POSITIVE");
        assert_eq!(violations[1]["field"], "max");
        assert_eq!(violations[1]["reason"], "MUST_BE_POSITIVE");
    }

    #[test]
    fn pool_metadata_names_only_checked_bounds() {
        let err = Error::PoolOutOfBounds { min: None, max: Some(-1), violations: vec![PoolViolation::MaxNegative] };
        assert_eq!(map(&err).to_json()["details"][0]["metadata"], json!({"max": "-1"}));
    }

    #[test]
    fn update_mask_metadata_is_text_format() {
        assert_eq!(mask_text(&["flag".into(), "min".into()]), r#"paths:"flag" paths:"min""#);
        assert_eq!(mask_text(&["a\"b\\".into()]), r#"paths:"a\"b\\""#);
        assert_eq!(mask_text(&["\n\u{1}é".into()]), r#"paths:"\n\x01é""#);
    }

    #[test]
    fn scenario_errors_map_by_kind() {
        let scenario_error = |kind| Error::Scenario {
            reference: "registry:5000/x:v1".into(),
            source: scenario::Error::Registry {
                operation: "resolve",
                reference: "registry:5000/x:v1".into(),
                kind,
                source: Box::new(oci_client::errors::OciDistributionError::GenericError(None)),
            },
        };
        assert_eq!(map(&scenario_error(ErrorKind::Malformed)).code, Code::InvalidArgument);
        assert_eq!(map(&scenario_error(ErrorKind::NotFound)).code, Code::InvalidArgument);
        assert_eq!(map(&scenario_error(ErrorKind::Invalid)).code, Code::InvalidArgument);
        assert_eq!(map(&scenario_error(ErrorKind::Unreachable)).code, Code::FailedPrecondition);
        assert_eq!(map(&scenario_error(ErrorKind::Unauthorized)).code, Code::FailedPrecondition);

        let registry = map(&scenario_error(ErrorKind::Internal));
        assert_eq!(registry.code, Code::Internal);
        assert_eq!(registry.message, "OCI interaction failed.");
        assert_eq!(registry.to_json()["details"][0]["reason"], "OCI_INTERACTION");
    }

    #[test]
    fn scenario_cache_failure_is_internal_error() {
        let err = Error::Scenario {
            reference: "registry:5000/x:v1".into(),
            source: scenario::Error::Io {
                action: "create",
                path: "/data/cache/secret".into(),
                source: std::io::Error::other("disk full"),
            },
        };
        let status = map(&err);
        assert_eq!(status.code, Code::Internal);
        assert_eq!(status.message, INTERNAL_MESSAGE);
        assert_eq!(status.to_json()["details"][0]["reason"], "INTERNAL_ERROR");
        assert!(!status.to_json().to_string().contains("/data/cache/secret"));
    }

    #[test]
    fn internal_errors_hide_the_cause() {
        let err = Error::Store(crate::store::Error::Io {
            action: "read",
            path: "/data/secret/path".into(),
            source: std::io::Error::other("disk on fire"),
        });
        let status = map(&err);
        assert_eq!(status.code, Code::Internal);
        assert_eq!(status.message, INTERNAL_MESSAGE);
        assert!(!status.to_json().to_string().contains("/data/secret/path"));
        assert!(error_chain(&err).contains("disk on fire"), "the log keeps the cause");
    }

    #[test]
    fn deploy_errors_are_unknown_with_message() {
        let err = Error::Deploy {
            action: "deployment",
            challenge_id: "7".into(),
            source_id: "3".into(),
            source: crate::runner::Error::PulumiNotSupported,
        };
        let status = map(&err);
        assert_eq!(status.code, Code::Unknown);
        assert_eq!(status.message, err.to_string());
        assert_eq!(status.to_json()["details"][0]["reason"], "INSTANCE_DEPLOYMENT_FAILED");
    }

    #[test]
    fn grpc_status_carries_details() {
        let status = map(&Error::invalid("id", "must not be empty")).into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(bad_request.field_violations[0].field, "id");
        let info = status.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.domain, DOMAIN);
    }
}
