//! The errors of every RPC, over both protocols, against a real `serve`
//! and real registries on 127.0.0.1. Over gRPC the tests check the code,
//! the message and the `google.rpc` details. Over REST they check the HTTP
//! status grpc-gateway gives the code, and the same details in the JSON body.
//!
//! Codes, messages, reasons and details are those of the upstream Go
//! chall-manager, because its clients branch on them.
//!
//! The tests run on a multi-thread runtime: dropping the server blocks its
//! thread until `serve` exits, and `serve` waits for the gRPC connections,
//! which only close if another thread runs the client's connection tasks.

mod support;

use std::{collections::HashMap, time::Duration};

use chall_manager::proto::{
    challenge::{
        CreateChallengeRequest, DeleteChallengeRequest, RetrieveChallengeRequest, UpdateChallengeRequest,
        challenge_store_client::ChallengeStoreClient,
    },
    instance::{
        CreateInstanceRequest, DeleteInstanceRequest, RenewInstanceRequest, RetrieveInstanceRequest,
        instance_manager_client::InstanceManagerClient,
    },
};
use reqwest::Method;
use serde_json::{Value, json};
use support::{
    env::{Env, FAILING, RECORDER},
    registry::{Registry, Setup, unused_address},
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::{ErrorDetail, StatusExt};

const DOMAIN: &str = "github.com/ctfer-io/chall-manager";
const OCI_DOMAIN: &str = "github.com/ctfer-io/chall-manager/OCI";

/// User `ctf`, password `secret`, bcrypt with cost 4 (the registry accepts
/// only bcrypt in htpasswd files).
const HTPASSWD: &str = "ctf:$2b$04$JsWYiSIM4/yZGzrC6LHALeQB38GnOLn1PjttSCGIUpInfXDwUg4ea";

/// What a client must see for one error, over both protocols.
struct Expected<'a> {
    code: Code,
    http: u16,
    message: &'a str,
    reason: &'a str,
    domain: &'a str,
    metadata: &'a [(&'a str, &'a str)],
    /// The `google.rpc` detail types, in order.
    details: &'a [&'a str],
}

impl Expected<'_> {
    fn check_rest(&self, status: u16, body: &Value) {
        assert_eq!(status, self.http, "HTTP status: {body}");
        assert_eq!(body["code"], self.code as i32, "code: {body}");
        assert_eq!(body["message"], self.message, "message: {body}");

        let types: Vec<String> = details(body)
            .iter()
            .map(|detail| {
                detail["@type"].as_str().unwrap().trim_start_matches("type.googleapis.com/google.rpc.").into()
            })
            .collect();
        assert_eq!(types, self.details, "detail types: {body}");

        let info = detail(body, "ErrorInfo");
        assert_eq!(info["reason"], self.reason, "reason: {body}");
        assert_eq!(info["domain"], self.domain, "domain: {body}");
        let metadata: serde_json::Map<String, Value> =
            self.metadata.iter().map(|(key, value)| (key.to_string(), json!(value))).collect();
        assert_eq!(info["metadata"], Value::Object(metadata), "metadata: {body}");
    }

    fn check_grpc(&self, status: &Status) {
        assert_eq!(status.code(), self.code, "code: {status:?}");
        assert_eq!(status.message(), self.message, "message: {status:?}");

        let types: Vec<&str> = status.get_error_details_vec().iter().map(detail_type).collect();
        assert_eq!(types, self.details, "detail types: {status:?}");

        let info = status.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, self.reason, "reason: {status:?}");
        assert_eq!(info.domain, self.domain, "domain: {status:?}");
        let metadata: HashMap<String, String> =
            self.metadata.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        assert_eq!(info.metadata, metadata, "metadata: {status:?}");
    }
}

fn details(body: &Value) -> &Vec<Value> {
    body["details"].as_array().unwrap_or_else(|| panic!("details is not an array: {body}"))
}

/// Returns the detail of a type (`ErrorInfo`, `BadRequest`…) in a REST body.
fn detail<'a>(body: &'a Value, name: &str) -> &'a Value {
    let type_url = format!("type.googleapis.com/google.rpc.{name}");
    details(body)
        .iter()
        .find(|detail| detail["@type"] == type_url.as_str())
        .unwrap_or_else(|| panic!("no {name} detail: {body}"))
}

fn detail_type(detail: &ErrorDetail) -> &'static str {
    match detail {
        ErrorDetail::ErrorInfo(_) => "ErrorInfo",
        ErrorDetail::BadRequest(_) => "BadRequest",
        ErrorDetail::ResourceInfo(_) => "ResourceInfo",
        ErrorDetail::PreconditionFailure(_) => "PreconditionFailure",
        ErrorDetail::Help(_) => "Help",
        _ => "other",
    }
}

/// Returns the field violations of a REST body as (field, reason, description).
fn rest_violations(body: &Value) -> Vec<(String, String, String)> {
    let violations = detail(body, "BadRequest")["fieldViolations"].as_array().unwrap().clone();
    for violation in &violations {
        assert_eq!(violation["localizedMessage"], Value::Null, "unset localizedMessage is null: {body}");
    }
    violations
        .iter()
        .map(|violation| {
            let text =
                |key: &str| violation[key].as_str().unwrap_or_else(|| panic!("{key} missing: {body}")).to_owned();
            (text("field"), text("reason"), text("description"))
        })
        .collect()
}

fn grpc_violations(status: &Status) -> Vec<(String, String, String)> {
    let bad_request = status.get_details_bad_request().expect("BadRequest detail");
    bad_request
        .field_violations
        .into_iter()
        .map(|violation| (violation.field, violation.reason, violation.description))
        .collect()
}

fn violations(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    expected
        .iter()
        .map(|(field, reason, description)| (field.to_string(), reason.to_string(), description.to_string()))
        .collect()
}

/// Returns the resource of a REST body as (type, name, owner, description).
fn rest_resource(body: &Value) -> (String, String, String, String) {
    let resource = detail(body, "ResourceInfo");
    let text = |key: &str| resource[key].as_str().unwrap_or_else(|| panic!("{key} missing: {body}")).to_owned();
    (text("resourceType"), text("resourceName"), text("owner"), text("description"))
}

fn grpc_resource(status: &Status) -> (String, String, String, String) {
    let resource = status.get_details_resource_info().expect("ResourceInfo detail");
    (resource.resource_type, resource.resource_name, resource.owner, resource.description)
}

fn resource(kind: &str, name: &str, description: &str) -> (String, String, String, String) {
    (kind.into(), name.into(), String::new(), description.into())
}

/// Returns the precondition violations of a REST body as (type, subject, description).
fn rest_preconditions(body: &Value) -> Vec<(String, String, String)> {
    let violations = detail(body, "PreconditionFailure")["violations"].as_array().unwrap().clone();
    violations
        .iter()
        .map(|violation| {
            let text =
                |key: &str| violation[key].as_str().unwrap_or_else(|| panic!("{key} missing: {body}")).to_owned();
            (text("type"), text("subject"), text("description"))
        })
        .collect()
}

fn grpc_preconditions(status: &Status) -> Vec<(String, String, String)> {
    let failure = status.get_details_precondition_failure().expect("PreconditionFailure detail");
    failure
        .violations
        .into_iter()
        .map(|violation| (violation.r#type, violation.subject, violation.description))
        .collect()
}

/// Returns the URLs of the help links of a REST body.
fn rest_links(body: &Value) -> Vec<String> {
    let links = detail(body, "Help")["links"].as_array().unwrap().clone();
    links.iter().map(|link| link["url"].as_str().unwrap().to_owned()).collect()
}

fn grpc_links(status: &Status) -> Vec<String> {
    status.get_details_help().expect("Help detail").links.into_iter().map(|link| link.url).collect()
}

async fn challenges(env: &Env) -> ChallengeStoreClient<Channel> {
    ChallengeStoreClient::connect(env.server.url("")).await.unwrap()
}

async fn instances(env: &Env) -> InstanceManagerClient<Channel> {
    InstanceManagerClient::connect(env.server.url("")).await.unwrap()
}

fn create_request(id: &str, scenario: &str) -> CreateChallengeRequest {
    CreateChallengeRequest { id: id.into(), scenario: scenario.into(), ..Default::default() }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|path| path.to_string()).collect() })
}

async fn create_challenge(env: &Env, body: Value) {
    let (status, created) = env.post("/api/v1/challenge", body).await;
    assert_eq!(status, 200, "{created}");
}

async fn create_instance(env: &Env, challenge_id: &str, source_id: &str) {
    let (status, created) =
        env.post("/api/v1/instance", json!({"challengeId": challenge_id, "sourceId": source_id})).await;
    assert_eq!(status, 200, "{created}");
}

/// Sends a CreateChallenge for `reference` over REST and over gRPC, checks
/// both errors against `expected`, and returns them for further checks.
async fn rejected_create(env: &Env, reference: &str, expected: &Expected<'_>) -> (Value, Status) {
    let (status, body) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": reference})).await;
    expected.check_rest(status, &body);

    let error = challenges(env).await.create_challenge(create_request("1", reference)).await.unwrap_err();
    expected.check_grpc(&error);
    (body, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_bounds_on_create() {
    let env = Env::start().await;

    // Negative bounds: both reported, and before the empty id and scenario,
    // because the bounds are checked first.
    let negative = Expected {
        code: Code::InvalidArgument,
        http: 400,
        message: "Pooler configuration out of bounds.",
        reason: "CHALLENGE_POOLER_OUT_OF_BOUNDS",
        domain: DOMAIN,
        metadata: &[("min", "-1"), ("max", "-2")],
        details: &["ErrorInfo", "BadRequest"],
    };
    let negative_violations = violations(&[
        ("min", "MUST_BE_POSITIVE", "Minimum boundary must be a positive integer."),
        ("max", "MUST_BE_POSITIVE", "Maximum boundary must be a positive integer."),
    ]);
    let (status, body) = env.post("/api/v1/challenge", json!({"id": "", "scenario": "", "min": -1, "max": -2})).await;
    negative.check_rest(status, &body);
    assert_eq!(rest_violations(&body), negative_violations);
    let request = CreateChallengeRequest { min: -1, max: -2, ..Default::default() };
    let error = challenges(&env).await.create_challenge(request).await.unwrap_err();
    negative.check_grpc(&error);
    assert_eq!(grpc_violations(&error), negative_violations);

    // Inverted bounds.
    let inverted = Expected { metadata: &[("min", "3"), ("max", "2")], ..negative };
    let inverted_violations =
        violations(&[("min", "INVERTED_BOUNDARIES", "When an upper bound is defined, minimum cannot exceed maximum.")]);
    let (status, body) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": "x", "min": 3, "max": 2})).await;
    inverted.check_rest(status, &body);
    assert_eq!(rest_violations(&body), inverted_violations);
    let request = CreateChallengeRequest { min: 3, max: 2, ..create_request("1", "x") };
    let error = challenges(&env).await.create_challenge(request).await.unwrap_err();
    inverted.check_grpc(&error);
    assert_eq!(grpc_violations(&error), inverted_violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_bounds_on_update_before_lookup() {
    let env = Env::start().await;
    // The challenge does not exist: the bounds of the request are checked
    // before it is read, and only the bound in the mask is reported.
    let expected = Expected {
        code: Code::InvalidArgument,
        http: 400,
        message: "Pooler configuration out of bounds.",
        reason: "CHALLENGE_POOLER_OUT_OF_BOUNDS",
        domain: DOMAIN,
        metadata: &[("max", "-1")],
        details: &["ErrorInfo", "BadRequest"],
    };
    let expected_violations =
        violations(&[("max", "MUST_BE_POSITIVE", "Maximum boundary must be a positive integer.")]);

    let body = json!({"updateMask": "max", "max": -1, "min": -5});
    let (status, body) = env.request(Method::PATCH, "/api/v1/challenge/missing", Some(body)).await;
    expected.check_rest(status, &body);
    assert_eq!(rest_violations(&body), expected_violations);

    let request = UpdateChallengeRequest {
        id: "missing".into(),
        update_mask: mask(&["max"]),
        max: -1,
        min: -5,
        ..Default::default()
    };
    let error = challenges(&env).await.update_challenge(request).await.unwrap_err();
    expected.check_grpc(&error);
    assert_eq!(grpc_violations(&error), expected_violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_update_mask() {
    let env = Env::start().await;
    let expected = Expected {
        code: Code::InvalidArgument,
        http: 400,
        message: "Invalid update mask.",
        reason: "CHALLENGE_INVALID_UPDATE_MASK",
        domain: DOMAIN,
        metadata: &[("update-mask", r#"paths:"flag" paths:"min""#)],
        details: &["ErrorInfo", "BadRequest", "Help"],
    };
    let expected_violations = violations(&[("update-mask", "INVALID_UPDATE_MASK", "The update mask is malformed.")]);
    let expected_links =
        ["https://protobuf.dev/reference/protobuf/google.protobuf/#field-mask", "https://google.aip.dev/161"];

    let (status, body) =
        env.request(Method::PATCH, "/api/v1/challenge/missing", Some(json!({"updateMask": "flag,min"}))).await;
    expected.check_rest(status, &body);
    assert_eq!(rest_violations(&body), expected_violations);
    assert_eq!(rest_links(&body), expected_links);

    let request =
        UpdateChallengeRequest { id: "missing".into(), update_mask: mask(&["flag", "min"]), ..Default::default() };
    let error = challenges(&env).await.update_challenge(request).await.unwrap_err();
    expected.check_grpc(&error);
    assert_eq!(grpc_violations(&error), expected_violations);
    assert_eq!(grpc_links(&error), expected_links);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reference() {
    let env = Env::start().await;
    let reference = "127.0.0.1:5000/Upper:v1";
    let expected = Expected {
        code: Code::InvalidArgument,
        http: 400,
        message: "OCI reference is malformed.",
        reason: "OCI_REFERENCE_MALFORMED",
        domain: DOMAIN,
        metadata: &[("reference", reference)],
        details: &["ErrorInfo", "ResourceInfo", "Help"],
    };
    let expected_links = ["https://github.com/opencontainers/image-spec"];

    let (body, error) = rejected_create(&env, reference, &expected).await;
    let (kind, name, owner, description) = rest_resource(&body);
    assert_eq!((kind.as_str(), name.as_str(), owner.as_str()), ("Reference", reference, ""));
    assert!(description.contains("Upper"), "the parser error is the description: {description}");
    assert_eq!(rest_links(&body), expected_links);

    assert_eq!(grpc_resource(&error).0, "Reference");
    assert_eq!(grpc_links(&error), expected_links);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_missing_from_registry() {
    let env = Env::start().await;
    let reference = env.registry.reference("nothing:v1");
    let expected = Expected {
        code: Code::InvalidArgument,
        http: 400,
        message: "Registry does not contain reference.",
        reason: "OCI_REFERENCE_NOT_FOUND",
        domain: OCI_DOMAIN,
        metadata: &[("reference", &reference)],
        details: &["ErrorInfo", "BadRequest"],
    };
    let expected_violations = violations(&[("scenario", "OCI_REFERENCE_NOT_FOUND", "Reference not found.")]);

    let (body, error) = rejected_create(&env, &reference, &expected).await;
    assert_eq!(rest_violations(&body), expected_violations);

    assert_eq!(grpc_violations(&error), expected_violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry() {
    let env = Env::start().await;
    let reference = format!("{}/web:v1", unused_address());
    let expected = Expected {
        code: Code::FailedPrecondition,
        http: 400,
        message: "Registry is not available. You might want to try again later.",
        reason: "OCI_INTERACTION",
        domain: OCI_DOMAIN,
        metadata: &[("reference", &reference)],
        details: &["ErrorInfo", "BadRequest"],
    };
    let expected_violations = violations(&[("scenario", "OCI_INTERACTION", "Registry is unreachable.")]);

    let (body, error) = rejected_create(&env, &reference, &expected).await;
    assert_eq!(rest_violations(&body), expected_violations);

    assert_eq!(grpc_violations(&error), expected_violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_requiring_credentials() {
    let env = Env::start().await;
    let registry = Registry::start_with(Setup::Htpasswd(HTPASSWD));
    let reference = registry.reference("web:v1");
    let expected = Expected {
        code: Code::FailedPrecondition,
        http: 400,
        message: "Registry requires authentication. You may not be authorized to use it.",
        reason: "OCI_INTERACTION",
        domain: OCI_DOMAIN,
        metadata: &[("reference", &reference)],
        details: &["ErrorInfo", "BadRequest"],
    };
    let expected_violations = violations(&[(
        "scenario",
        "OCI_INTERACTION",
        "The reference of provided scenario is hosted on a registry that requires authentication, \
         for which credentials did not match.",
    )]);

    let (body, error) = rejected_create(&env, &reference, &expected).await;
    assert_eq!(rest_violations(&body), expected_violations);

    assert_eq!(grpc_violations(&error), expected_violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_registry_is_internal() {
    let env = Env::start().await;
    let registry = Registry::start_with(Setup::BrokenStorage);
    let reference = registry.reference("web:v1");
    let expected = Expected {
        code: Code::Internal,
        http: 500,
        message: "OCI interaction failed.",
        reason: "OCI_INTERACTION",
        domain: DOMAIN,
        metadata: &[("reference", &reference)],
        details: &["ErrorInfo"],
    };

    let (body, _) = rejected_create(&env, &reference, &expected).await;
    assert!(!body.to_string().contains("UNKNOWN"), "the registry's answer is not sent: {body}");

    // The cause is logged, with the challenge id.
    let mut logged =
        env.server.log().into_iter().filter(|line| line.contains("request failed") && line.contains("UNKNOWN"));
    assert!(logged.any(|line| line.contains(r#"challenge_id="1""#)), "{:?}", env.server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_not_matching_specification() {
    let env = Env::start().await;
    let reference = env.push("readme", &[("README.md", "nothing to run\n")]).await;
    let expected = Expected {
        code: Code::InvalidArgument,
        http: 400,
        message: "Scenario does not match specification.",
        reason: "SCENARIO_NON_MATCHING_SPECIFICATION",
        domain: DOMAIN,
        metadata: &[("reference", &reference)],
        details: &["ErrorInfo", "ResourceInfo", "Help", "BadRequest"],
    };

    let (body, error) = rejected_create(&env, &reference, &expected).await;
    let (kind, name, _, _) = rest_resource(&body);
    assert_eq!((kind.as_str(), name.as_str()), ("Scenario", reference.as_str()));
    assert_eq!(rest_links(&body).len(), 2, "{body}");
    let violations = rest_violations(&body);
    assert_eq!(violations.len(), 1, "{body}");
    assert_eq!((violations[0].0.as_str(), violations[0].1.as_str()), ("scenario", "VALIDATION"));
    assert!(violations[0].2.contains("neither scenario.yaml nor Pulumi.yaml"), "the cause is described: {body}");

    assert_eq!(grpc_resource(&error).0, "Scenario");
    assert_eq!(grpc_violations(&error), violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_challenge_conflicts() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;
    let expected = Expected {
        code: Code::AlreadyExists,
        http: 409,
        message: "Challenge already exists.",
        reason: "CHALLENGE_ALREADY_EXISTS",
        domain: DOMAIN,
        metadata: &[("id", "1")],
        details: &["ErrorInfo", "ResourceInfo"],
    };
    let expected_resource = resource("Challenge", "1", "A challenge with this ID already exists.");

    let (status, body) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": scenario})).await;
    expected.check_rest(status, &body);
    assert_eq!(rest_resource(&body), expected_resource);

    let error = challenges(&env).await.create_challenge(create_request("1", &scenario)).await.unwrap_err();
    expected.check_grpc(&error);
    assert_eq!(grpc_resource(&error), expected_resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_challenge_in_every_rpc() {
    let env = Env::start().await;
    let expected = Expected {
        code: Code::NotFound,
        http: 404,
        message: "Challenge not found.",
        reason: "CHALLENGE_NOT_FOUND",
        domain: DOMAIN,
        metadata: &[("id", "9")],
        details: &["ErrorInfo", "ResourceInfo"],
    };
    let expected_resource = resource("Challenge", "9", "No challenge with this ID was found.");

    let calls = [
        (Method::GET, "/api/v1/challenge/9", None),
        (Method::PATCH, "/api/v1/challenge/9", Some(json!({"updateMask": "timeout", "timeout": "60s"}))),
        (Method::DELETE, "/api/v1/challenge/9", None),
        (Method::POST, "/api/v1/instance", Some(json!({"challengeId": "9", "sourceId": "1"}))),
        (Method::PATCH, "/api/v1/instance/9/1", Some(json!({}))),
        (Method::DELETE, "/api/v1/instance/9/1", None),
    ];
    for (method, path, body) in calls {
        let (status, body) = env.request(method.clone(), path, body).await;
        expected.check_rest(status, &body);
        assert_eq!(rest_resource(&body), expected_resource, "{method} {path}");
    }

    let mut challenge_client = challenges(&env).await;
    let mut instance_client = instances(&env).await;
    let id = || "9".to_owned();
    let ids = || ("9".to_owned(), "1".to_owned());
    let errors = [
        challenge_client.retrieve_challenge(RetrieveChallengeRequest { id: id() }).await.unwrap_err(),
        challenge_client
            .update_challenge(UpdateChallengeRequest { id: id(), update_mask: mask(&["min"]), ..Default::default() })
            .await
            .unwrap_err(),
        challenge_client.delete_challenge(DeleteChallengeRequest { id: id() }).await.unwrap_err(),
        {
            let (challenge_id, source_id) = ids();
            let request = CreateInstanceRequest { challenge_id, source_id, ..Default::default() };
            instance_client.create_instance(request).await.unwrap_err()
        },
        {
            let (challenge_id, source_id) = ids();
            instance_client.renew_instance(RenewInstanceRequest { challenge_id, source_id }).await.unwrap_err()
        },
        {
            let (challenge_id, source_id) = ids();
            instance_client.delete_instance(DeleteInstanceRequest { challenge_id, source_id }).await.unwrap_err()
        },
    ];
    for error in errors {
        expected.check_grpc(&error);
        assert_eq!(grpc_resource(&error), expected_resource);
    }

    // Retrieving an instance reports the instance, whether or not the
    // challenge exists.
    let instance_expected = Expected {
        message: "Instance not found.",
        reason: "INSTANCE_NOT_FOUND",
        metadata: &[("challenge_id", "9"), ("source_id", "1")],
        ..expected
    };
    let (status, body) = env.get("/api/v1/instance/9/1").await;
    instance_expected.check_rest(status, &body);
    let (challenge_id, source_id) = ids();
    let error =
        instance_client.retrieve_instance(RetrieveInstanceRequest { challenge_id, source_id }).await.unwrap_err();
    instance_expected.check_grpc(&error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_instance_of_existing_challenge() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    // No timeout: a renewal still reports the missing instance first.
    env.create_challenge("1", &scenario).await;
    let expected = Expected {
        code: Code::NotFound,
        http: 404,
        message: "Instance not found.",
        reason: "INSTANCE_NOT_FOUND",
        domain: DOMAIN,
        metadata: &[("challenge_id", "1"), ("source_id", "3")],
        details: &["ErrorInfo", "ResourceInfo"],
    };
    let expected_resource = resource("Instance", "1/3", "No instance with this ID was found.");

    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let (status, body) = env.request(method.clone(), "/api/v1/instance/1/3", None).await;
        expected.check_rest(status, &body);
        assert_eq!(rest_resource(&body), expected_resource, "{method}");
    }

    let mut client = instances(&env).await;
    let ids = || ("1".to_owned(), "3".to_owned());
    let (challenge_id, source_id) = ids();
    let retrieved = client.retrieve_instance(RetrieveInstanceRequest { challenge_id, source_id }).await.unwrap_err();
    let (challenge_id, source_id) = ids();
    let renewed = client.renew_instance(RenewInstanceRequest { challenge_id, source_id }).await.unwrap_err();
    let (challenge_id, source_id) = ids();
    let deleted = client.delete_instance(DeleteInstanceRequest { challenge_id, source_id }).await.unwrap_err();
    for error in [retrieved, renewed, deleted] {
        expected.check_grpc(&error);
        assert_eq!(grpc_resource(&error), expected_resource);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_instance_conflicts() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;
    create_instance(&env, "1", "3").await;
    let expected = Expected {
        code: Code::AlreadyExists,
        http: 409,
        message: "Instance already exists.",
        reason: "INSTANCE_ALREADY_EXISTS",
        domain: DOMAIN,
        metadata: &[("challenge_id", "1"), ("source_id", "3")],
        details: &["ErrorInfo", "ResourceInfo"],
    };
    let expected_resource = resource("Instance", "1/3", "An instance with this ID already exists.");

    let (status, body) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "3"})).await;
    expected.check_rest(status, &body);
    assert_eq!(rest_resource(&body), expected_resource);

    let request = CreateInstanceRequest { challenge_id: "1".into(), source_id: "3".into(), ..Default::default() };
    let error = instances(&env).await.create_instance(request).await.unwrap_err();
    expected.check_grpc(&error);
    assert_eq!(grpc_resource(&error), expected_resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_challenge_rejects_instances() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    create_challenge(&env, json!({"id": "1", "scenario": scenario, "until": "2000-01-01T00:00:00Z"})).await;
    let expected = Expected {
        code: Code::FailedPrecondition,
        http: 400,
        message: "Challenge has expired.",
        reason: "CHALLENGE_EXPIRED",
        domain: DOMAIN,
        metadata: &[("id", "1")],
        details: &["ErrorInfo", "PreconditionFailure"],
    };
    let expected_preconditions = violations(&[(
        "EXPIRATION",
        "github.com/ctfer-io/chall-manager/Challenge",
        "Challenge has expired so can no longer process instance requests.",
    )]);

    let (status, body) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "3"})).await;
    expected.check_rest(status, &body);
    assert_eq!(rest_preconditions(&body), expected_preconditions);

    let request = CreateInstanceRequest { challenge_id: "1".into(), source_id: "3".into(), ..Default::default() };
    let error = instances(&env).await.create_instance(request).await.unwrap_err();
    expected.check_grpc(&error);
    assert_eq!(grpc_preconditions(&error), expected_preconditions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_without_timeout_or_after_expiry() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("forever", &scenario).await;
    create_instance(&env, "forever", "3").await;
    create_challenge(&env, json!({"id": "short", "scenario": scenario, "timeout": "1s"})).await;
    create_instance(&env, "short", "3").await;
    let mut client = instances(&env).await;

    let no_renewal = Expected {
        code: Code::FailedPrecondition,
        http: 400,
        message: "Challenge does not accept renewal.",
        reason: "CHALLENGE_NO_RENEWAL",
        domain: DOMAIN,
        metadata: &[("id", "forever")],
        details: &["ErrorInfo", "PreconditionFailure"],
    };
    let no_renewal_preconditions = violations(&[(
        "RENEWAL",
        "github.com/ctfer-io/chall-manager/Challenge",
        "Challenge has no timeout thus cannot be renewed.",
    )]);
    let (status, body) = env.request(Method::PATCH, "/api/v1/instance/forever/3", Some(json!({}))).await;
    no_renewal.check_rest(status, &body);
    assert_eq!(rest_preconditions(&body), no_renewal_preconditions);
    let request = RenewInstanceRequest { challenge_id: "forever".into(), source_id: "3".into() };
    let error = client.renew_instance(request).await.unwrap_err();
    no_renewal.check_grpc(&error);
    assert_eq!(grpc_preconditions(&error), no_renewal_preconditions);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = Expected {
        code: Code::FailedPrecondition,
        http: 400,
        message: "Instance can't be renewed as it expired.",
        reason: "INSTANCE_EXPIRED",
        domain: DOMAIN,
        metadata: &[("challenge_id", "short"), ("source_id", "3")],
        details: &["ErrorInfo", "PreconditionFailure"],
    };
    let expired_preconditions = violations(&[(
        "EXPIRATION",
        "github.com/ctfer-io/chall-manager/Instance",
        "Instance has expired so can no longer process renewal request.",
    )]);
    let (status, body) = env.request(Method::PATCH, "/api/v1/instance/short/3", Some(json!({}))).await;
    expired.check_rest(status, &body);
    assert_eq!(rest_preconditions(&body), expired_preconditions);
    let request = RenewInstanceRequest { challenge_id: "short".into(), source_id: "3".into() };
    let error = client.renew_instance(request).await.unwrap_err();
    expired.check_grpc(&error);
    assert_eq!(grpc_preconditions(&error), expired_preconditions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_is_internal_error() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;
    let record = env.server.data_dir().join("challenges").join(chall_manager::store::key("1")).join("challenge.json");
    std::fs::write(&record, "{not json").unwrap();
    let expected = Expected {
        code: Code::Internal,
        http: 500,
        message: "An internal error occurred.",
        reason: "INTERNAL_ERROR",
        domain: DOMAIN,
        metadata: &[],
        details: &["ErrorInfo"],
    };

    let (status, body) = env.get("/api/v1/challenge/1").await;
    expected.check_rest(status, &body);
    let data_dir = env.server.data_dir().to_str().unwrap();
    assert!(!body.to_string().contains(data_dir), "the server path is not sent: {body}");

    let error =
        challenges(&env).await.retrieve_challenge(RetrieveChallengeRequest { id: "1".into() }).await.unwrap_err();
    expected.check_grpc(&error);

    // The cause is logged, with the path and the challenge id.
    let log = env.server.log();
    let mut logged = log.iter().filter(|line| line.contains("request failed") && line.contains(data_dir));
    assert!(logged.any(|line| line.contains(r#"challenge_id="1""#)), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deployment_is_unknown() {
    let env = Env::start().await;
    let scenario = env.push("failing", FAILING).await;
    env.create_challenge("1", &scenario).await;

    let (status, body) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "3"})).await;
    assert_eq!((status, &body["code"]), (500, &json!(2)), "{body}");
    assert_eq!(detail(&body, "ErrorInfo")["reason"], "INSTANCE_DEPLOYMENT_FAILED");

    let request = CreateInstanceRequest { challenge_id: "1".into(), source_id: "4".into(), ..Default::default() };
    let error = instances(&env).await.create_instance(request).await.unwrap_err();
    assert_eq!(error.code(), Code::Unknown);
    assert!(error.message().contains("cannot reach the cluster"), "the stderr tail is the message: {error:?}");
    let info = error.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "INSTANCE_DEPLOYMENT_FAILED");
    assert_eq!(info.metadata.get("source_id").map(String::as_str), Some("4"));
}

/// Scenario whose `down` always fails.
const STUCK: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    ("up.sh", "printf '{\"connection_info\":\"stuck\"}\\n'\n"),
    ("down.sh", "echo 'cannot destroy' >&2\nexit 1\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_destroys() {
    let env = Env::start().await;
    let scenario = env.push("stuck", STUCK).await;
    env.create_challenge("1", &scenario).await;
    create_instance(&env, "1", "3").await;

    // Deleting the challenge: Internal, naming the sources left.
    let (status, body) = env.delete("/api/v1/challenge/1").await;
    assert_eq!((status, &body["code"]), (500, &json!(13)), "{body}");
    let info = detail(&body, "ErrorInfo");
    assert_eq!(info["reason"], "CHALLENGE_INSTANCES_LEFT", "{body}");
    assert_eq!(info["metadata"], json!({"id": "1", "source_ids": "3"}), "{body}");
    assert!(body["message"].as_str().unwrap().contains("cannot destroy"), "the stderr tail is the message: {body}");

    let error = challenges(&env).await.delete_challenge(DeleteChallengeRequest { id: "1".into() }).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal);
    assert_eq!(error.get_details_error_info().expect("ErrorInfo detail").reason, "CHALLENGE_INSTANCES_LEFT");

    // Deleting the instance: Unknown, with the scenario's output.
    let (status, body) = env.delete("/api/v1/instance/1/3").await;
    assert_eq!((status, &body["code"]), (500, &json!(2)), "{body}");
    assert_eq!(detail(&body, "ErrorInfo")["reason"], "INSTANCE_DESTRUCTION_FAILED", "{body}");

    let request = DeleteInstanceRequest { challenge_id: "1".into(), source_id: "3".into() };
    let error = instances(&env).await.delete_instance(request).await.unwrap_err();
    assert_eq!(error.code(), Code::Unknown);
    assert!(error.message().contains("cannot destroy"), "{error:?}");
    assert_eq!(error.get_details_error_info().expect("ErrorInfo detail").reason, "INSTANCE_DESTRUCTION_FAILED");
}
