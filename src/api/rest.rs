//! The REST routes: grpc-gateway's mapping of the two services, which the
//! CTFd plugin calls, plus `/healthcheck`.
//!
//! Ids in the path win over the same fields in the body. A unary response
//! is one JSON object. The two queries stream one `{"result":…}` line per
//! item, written as the manager produces it, so memory stays flat however
//! many challenges are stored.

use std::{collections::HashMap, convert::Infallible};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use chrono::Utc;
use futures::{Stream, StreamExt, future, stream};
use serde_json::json;
use tonic::Code;
use tracing::{Span, debug, instrument};

use super::{convert, json, status::ApiError, until_first_error};
use crate::{challenge::POOLED_HEADER, error::Error, manager::Manager, time::format_timestamp};

pub fn router(manager: Manager) -> Router {
    Router::new()
        .route("/api/v1/challenge", post(create_challenge).get(query_challenge))
        .route("/api/v1/challenge/{id}", get(retrieve_challenge).patch(update_challenge).delete(delete_challenge))
        .route("/api/v1/instance", post(create_instance).get(query_instance))
        .route(
            "/api/v1/instance/{challenge_id}/{source_id}",
            get(retrieve_instance).patch(renew_instance).delete(delete_instance),
        )
        .route("/healthcheck", any(healthcheck))
        // Applies to the routes above, so it must come after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(manager)
}

#[instrument(name = "POST /api/v1/challenge", skip_all, fields(challenge_id))]
async fn create_challenge(
    State(manager): State<Manager>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = json::create_challenge(&body_bytes(body)?)?;
    Span::current().record("challenge_id", request.id.as_str());

    let info = manager.create_challenge(convert::new_challenge(request)?).await?;
    Ok(Json(json::challenge(&info)).into_response())
}

#[instrument(name = "GET /api/v1/challenge/{id}", skip_all, fields(challenge_id))]
async fn retrieve_challenge(
    State(manager): State<Manager>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path(id)?;
    Span::current().record("challenge_id", id.as_str());

    let info = manager.get_challenge(&id).await?;
    let mut response = Json(json::challenge(&info)).into_response();
    if let Some(pooled) = info.pooled {
        // The name grpc-gateway gives a gRPC response header.
        let name = header::HeaderName::try_from(format!("grpc-metadata-{POOLED_HEADER}")).expect("a valid header name");
        response.headers_mut().insert(name, pooled.into());
    }
    Ok(response)
}

#[instrument(name = "GET /api/v1/challenge", skip_all)]
async fn query_challenge(State(manager): State<Manager>) -> Response {
    stream_response(manager.list_challenges(), |info| json::stream_result(json::challenge(info))).await
}

#[instrument(name = "PATCH /api/v1/challenge/{id}", skip_all, fields(challenge_id))]
async fn update_challenge(
    State(manager): State<Manager>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path(id)?;
    Span::current().record("challenge_id", id.as_str());
    let mut request = json::update_challenge(&body_bytes(body)?)?;
    request.id = id;

    let info = manager.update_challenge(convert::challenge_update(request)?).await?;
    Ok(Json(json::challenge(&info)).into_response())
}

#[instrument(name = "DELETE /api/v1/challenge/{id}", skip_all, fields(challenge_id))]
async fn delete_challenge(
    State(manager): State<Manager>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path(id)?;
    Span::current().record("challenge_id", id.as_str());

    manager.delete_challenge(&id).await?;
    Ok(empty_message())
}

#[instrument(name = "POST /api/v1/instance", skip_all, fields(challenge_id, source_id))]
async fn create_instance(
    State(manager): State<Manager>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = json::create_instance(&body_bytes(body)?)?;
    record_instance_ids(&request.challenge_id, &request.source_id);

    let additional = request.additional.into_iter().collect();
    let instance = manager.create_instance(&request.challenge_id, &request.source_id, additional).await?;
    Ok(Json(json::instance(&instance)).into_response())
}

#[instrument(name = "GET /api/v1/instance/{challengeId}/{sourceId}", skip_all, fields(challenge_id, source_id))]
async fn retrieve_instance(
    State(manager): State<Manager>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((challenge_id, source_id)) = path(ids)?;
    record_instance_ids(&challenge_id, &source_id);

    let instance = manager.get_instance(&challenge_id, &source_id).await?;
    Ok(Json(json::instance(&instance)).into_response())
}

/// Lists the instances of the source given as `sourceId` (or `source_id`)
/// in the query; other parameters are ignored.
#[instrument(name = "GET /api/v1/instance", skip_all, fields(source_id))]
async fn query_instance(
    State(manager): State<Manager>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let source_id = match query {
        Ok(Query(mut query)) => query.remove("sourceId").or_else(|| query.remove("source_id")).unwrap_or_default(),
        Err(rejection) => return stream_failure(&ApiError::invalid_request(rejection.body_text())),
    };
    Span::current().record("source_id", source_id.as_str());
    if source_id.is_empty() {
        let error = ApiError::from_error(&Error::invalid("source_id", "must not be empty"));
        return stream_failure(&error);
    }

    stream_response(manager.list_instances(&source_id), |instance| json::stream_result(json::instance(instance))).await
}

#[instrument(name = "PATCH /api/v1/instance/{challengeId}/{sourceId}", skip_all, fields(challenge_id, source_id))]
async fn renew_instance(
    State(manager): State<Manager>,
    ids: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((challenge_id, source_id)) = path(ids)?;
    record_instance_ids(&challenge_id, &source_id);
    // Decoded only to reject a malformed body: the path ids win.
    json::renew_instance(&body_bytes(body)?)?;

    let instance = manager.renew_instance(&challenge_id, &source_id).await?;
    Ok(Json(json::instance(&instance)).into_response())
}

#[instrument(name = "DELETE /api/v1/instance/{challengeId}/{sourceId}", skip_all, fields(challenge_id, source_id))]
async fn delete_instance(
    State(manager): State<Manager>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((challenge_id, source_id)) = path(ids)?;
    record_instance_ids(&challenge_id, &source_id);

    manager.delete_instance(&challenge_id, &source_id).await?;
    Ok(empty_message())
}

/// Reports the server as up, in the shape of the health-go body upstream
/// returns: the CTFd plugin only checks for a 2xx status.
#[instrument(name = "/healthcheck", level = "debug", skip_all)]
async fn healthcheck() -> Response {
    let body = json!({
        "status": "OK",
        "timestamp": format_timestamp(&Utc::now()),
        "component": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
    });
    Json(body).into_response()
}

/// Rejects an unknown path: grpc-gateway's JSON 404 under `/api/v1`, and
/// elsewhere the plain 404 of upstream's HTTP mux.
async fn not_found(uri: Uri) -> Response {
    debug!(path = uri.path(), "no route");
    let path = uri.path();
    if path == "/api/v1" || path.starts_with("/api/v1/") {
        ApiError::new(Code::NotFound, "Not Found").into_response()
    } else {
        (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
    }
}

/// Rejects a method that a known path does not serve, with grpc-gateway's 501.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    debug!(%method, path = uri.path(), "method not allowed");
    ApiError::new(Code::Unimplemented, "Method Not Allowed")
}

fn record_instance_ids(challenge_id: &str, source_id: &str) {
    let span = Span::current();
    span.record("challenge_id", challenge_id);
    span.record("source_id", source_id);
}

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> Result<Path<T>, ApiError> {
    extracted.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))
}

/// `google.protobuf.Empty` in JSON: the plugin parses the body of a delete.
fn empty_message() -> Response {
    Json(json!({})).into_response()
}

/// Streams `items` as JSON lines. A failure before the first item takes the
/// mapped HTTP status; after it, the status is already sent, so the failure
/// is a last `{"error":…}` line.
async fn stream_response<T, S>(mut items: S, encode: fn(&T) -> Vec<u8>) -> Response
where
    S: Stream<Item = crate::Result<T>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    let first = match items.next().await {
        None => return json_lines(StatusCode::OK, Body::empty()),
        Some(Err(err)) => return stream_failure(&ApiError::from_error(&err)),
        Some(Ok(item)) => encode(&item),
    };

    // The rest is produced after the handler returned, outside its span.
    let span = Span::current();
    let rest = until_first_error(items).map(move |item| match item {
        Ok(item) => encode(&item),
        Err(err) => span.in_scope(|| json::stream_error(&ApiError::from_error(&err))),
    });
    let lines = stream::once(future::ready(first)).chain(rest).map(|line| Ok::<_, Infallible>(Bytes::from(line)));
    json_lines(StatusCode::OK, Body::from_stream(lines))
}

fn stream_failure(error: &ApiError) -> Response {
    json_lines(error.http_status(), Body::from(json::stream_error(error)))
}

fn json_lines(status: StatusCode, body: Body) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
