//! The API served on a real port: REST through reqwest, gRPC through the
//! generated tonic clients, both against one server on 127.0.0.1.
//!
//! These cover what needs no scenario: routing, errors and empty listings.

use std::net::SocketAddr;

use chall_manager::{
    Manager, Settings, api,
    proto::{
        challenge::{CreateChallengeRequest, RetrieveChallengeRequest, challenge_store_client::ChallengeStoreClient},
        instance::{QueryInstanceRequest, RetrieveInstanceRequest, instance_manager_client::InstanceManagerClient},
    },
};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::Code;
use tonic_types::StatusExt;

/// A server on a free port over a fresh data directory; dropping it stops
/// the server.
struct TestServer {
    address: SocketAddr,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        // reqwest is built without a default TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            cache_dir: dir.path().join("cache"),
            oci: Default::default(),
        };
        let manager = Manager::open(settings).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(listener, manager, async {
            let _ = stopped.await;
        }));
        Self { address, http: reqwest::Client::new(), shutdown: Some(shutdown), task, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn request(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, String, String) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type =
            response.headers().get("content-type").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    async fn json(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (status, content_type, text) = self.request(method, path, body).await;
        assert_eq!(content_type, "application/json", "body: {text}");
        let value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text:?}"));
        (status, value)
    }

    async fn challenge_client(&self) -> ChallengeStoreClient<tonic::transport::Channel> {
        ChallengeStoreClient::connect(self.url("")).await.unwrap()
    }

    async fn instance_client(&self) -> InstanceManagerClient<tonic::transport::Channel> {
        InstanceManagerClient::connect(self.url("")).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

#[tokio::test]
async fn healthcheck_is_ok() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::GET, "/healthcheck", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "OK");
    assert!(body["timestamp"].as_str().is_some_and(|at| at.ends_with('Z')), "{body}");
}

#[tokio::test]
async fn unknown_api_path_is_json_404() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::GET, "/api/v1/nothing/here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({ "code": 5, "message": "Not Found", "details": [] }));
}

#[tokio::test]
async fn unknown_path_outside_api_is_plain_404() {
    let server = TestServer::start().await;
    let (status, content_type, _) = server.request(Method::GET, "/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}

#[tokio::test]
async fn wrong_method_is_json_501() {
    let server = TestServer::start().await;
    for (method, path) in [
        (Method::PUT, "/api/v1/challenge"),
        (Method::POST, "/api/v1/challenge/12"),
        (Method::PUT, "/api/v1/instance/12/3"),
    ] {
        let (status, body) = server.json(method.clone(), path, None).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{method} {path}");
        assert_eq!(body, json!({ "code": 12, "message": "Method Not Allowed", "details": [] }), "{method} {path}");
    }
}

#[tokio::test]
async fn missing_challenge_is_404() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::GET, "/api/v1/challenge/12", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 5);
    assert_eq!(body["message"], "Challenge not found.");
    let info = &body["details"][0];
    assert_eq!(info["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
    assert_eq!(info["reason"], "CHALLENGE_NOT_FOUND");
    assert_eq!(info["domain"], "github.com/ctfer-io/chall-manager");
    assert_eq!(info["metadata"]["id"], "12");
}

#[tokio::test]
async fn missing_challenge_delete_and_patch_are_404() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::DELETE, "/api/v1/challenge/12", None).await;
    assert_eq!((status, &body["code"]), (StatusCode::NOT_FOUND, &json!(5)));

    let patch = r#"{"updateMask":"timeout","timeout":"600s"}"#;
    let (status, body) = server.json(Method::PATCH, "/api/v1/challenge/12", Some(patch)).await;
    assert_eq!((status, &body["code"]), (StatusCode::NOT_FOUND, &json!(5)));
}

#[tokio::test]
async fn missing_instance_is_404() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::GET, "/api/v1/instance/12/0", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 5);
    assert_eq!(body["message"], "Instance not found.");
    assert_eq!(body["details"][0]["metadata"]["challenge_id"], "12");
    assert_eq!(body["details"][0]["metadata"]["source_id"], "0");
}

#[tokio::test]
async fn renew_accepts_empty_body() {
    let server = TestServer::start().await;
    // No body at all: decoded as an empty message, so the lookup runs.
    let (status, body) = server.json(Method::PATCH, "/api/v1/instance/12/3", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["message"], "Challenge not found.");
}

#[tokio::test]
async fn create_with_empty_id_is_400() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::POST, "/api/v1/challenge", Some(r#"{"id":"","scenario":"r/x:v1"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap().contains("id"), "{body}");
    let bad_request = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap_or_else(|| panic!("no BadRequest detail: {body}"));
    assert_eq!(bad_request["fieldViolations"][0]["field"], "id");
}

#[tokio::test]
async fn create_instance_with_empty_source_is_400() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::POST, "/api/v1/instance", Some(r#"{"challengeId":"12"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][1]["fieldViolations"][0]["field"], "source_id");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let server = TestServer::start().await;
    let (status, body) = server.json(Method::POST, "/api/v1/challenge", Some(r#"{"id":"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 3);
    assert_eq!(body["details"], json!([]));
    assert!(body["message"].as_str().is_some_and(|message| !message.is_empty()));
}

#[tokio::test]
async fn invalid_update_is_400_before_lookup() {
    let server = TestServer::start().await;
    for patch in [r#"{"updateStrategy":"sideways"}"#, r#"{"updateStrategy":9}"#, r#"{"updateMask":"flag"}"#] {
        let (status, body) = server.json(Method::PATCH, "/api/v1/challenge/12", Some(patch)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{patch}: {body}");
        assert_eq!(body["code"], 3, "{patch}");
    }
}

#[tokio::test]
async fn empty_store_streams_empty_body() {
    let server = TestServer::start().await;
    for path in ["/api/v1/challenge", "/api/v1/instance?sourceId=0", "/api/v1/instance?source_id=3"] {
        let (status, content_type, body) = server.request(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(content_type, "application/json", "{path}");
        assert_eq!(body, "", "{path}");
    }
}

#[tokio::test]
async fn instance_query_without_source_is_400_error_line() {
    let server = TestServer::start().await;
    let (status, _, body) = server.request(Method::GET, "/api/v1/instance", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.ends_with('\n'), "{body:?}");
    let line: Value = serde_json::from_str(body.trim_end()).unwrap();
    assert_eq!(line["error"]["code"], 3);
}

#[tokio::test]
async fn grpc_missing_challenge_is_not_found() {
    let server = TestServer::start().await;
    let mut client = server.challenge_client().await;
    let status = client.retrieve_challenge(RetrieveChallengeRequest { id: "12".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "Challenge not found.");
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "CHALLENGE_NOT_FOUND");
    assert_eq!(info.metadata.get("id").map(String::as_str), Some("12"));
}

#[tokio::test]
async fn grpc_missing_instance_is_not_found() {
    let server = TestServer::start().await;
    let mut client = server.instance_client().await;
    let request = RetrieveInstanceRequest { challenge_id: "12".into(), source_id: "0".into() };
    let status = client.retrieve_instance(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "Instance not found.");
}

#[tokio::test]
async fn grpc_create_with_empty_id_has_field_violation() {
    let server = TestServer::start().await;
    let mut client = server.challenge_client().await;
    let request = CreateChallengeRequest { scenario: "r/x:v1".into(), ..Default::default() };
    let status = client.create_challenge(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("BadRequest detail");
    assert_eq!(bad_request.field_violations[0].field, "id");
}

#[tokio::test]
async fn grpc_queries_on_empty_store_end_empty() {
    let server = TestServer::start().await;
    let mut challenges = server.challenge_client().await.query_challenge(()).await.unwrap().into_inner();
    assert!(challenges.next().await.is_none());

    let request = QueryInstanceRequest { source_id: "0".into() };
    let mut instances = server.instance_client().await.query_instance(request).await.unwrap().into_inner();
    assert!(instances.next().await.is_none());
}

#[tokio::test]
async fn grpc_unknown_method_is_unimplemented() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Channel::from_shared(server.url("")).unwrap().connect().await.unwrap();
    // Paths no RPC has, on the shared port: the answers must stay gRPC.
    for path in ["/api.v1.challenge.ChallengeStore/Nope", "/api.v1.nope.Nope/Nope", "/api/v1/challenge"] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<RetrieveChallengeRequest, RetrieveChallengeRequest>::default();
        let request = tonic::Request::new(RetrieveChallengeRequest::default());
        let status = grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
}
