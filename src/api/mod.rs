//! gRPC and REST on one TCP port, both over the same [`Manager`].
//!
//! `axum::serve` speaks HTTP/1.1 and cleartext HTTP/2 (h2c) on the same
//! listener. A request whose `content-type` is `application/grpc` (or
//! `application/grpc+…`) goes to the tonic services. Every other request
//! goes to the REST routes, which follow grpc-gateway's mapping because the
//! CTFd plugin was written against it. The Go CLI and janitor dial gRPC at
//! the same address the plugin uses for REST.
//!
//! - [`status`]: the one mapping from [`crate::Error`] to codes and bodies;
//! - [`convert`]: proto messages ↔ domain types;
//! - [`json`]: the REST JSON forms (protojson-compatible);
//! - `grpc` and `rest`: the two front ends.

pub mod convert;
mod grpc;
pub mod json;
mod rest;
pub mod status;

use std::{future::Future, net::SocketAddr};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    serve::{Listener, ListenerExt},
};
use futures::{Stream, StreamExt, future};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tracing::{info, warn};

use crate::manager::Manager;

pub use status::ApiError;

/// Builds the router serving both protocols.
pub fn router(manager: Manager) -> Router {
    let grpc = grpc::routes(manager.clone()).prepare().into_axum_router();
    rest::router(manager).layer(middleware::from_fn_with_state(grpc, route_grpc))
}

/// Serves both protocols on `listener` until `shutdown` completes, then
/// waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    manager: Manager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    info!(%address, "serving gRPC and REST");
    axum::serve(without_nagle(listener), router(manager)).with_graceful_shutdown(shutdown).await?;
    info!(%address, "server stopped");
    Ok(())
}

/// Sets TCP_NODELAY on every accepted connection. Without it, a response
/// written in several small segments (HTTP/2 headers, data, trailers) can
/// wait for the client's delayed ACK, at least 40 ms on Linux. In a janitor
/// sweep, every deletion in flight stalled with it now and then.
fn without_nagle(listener: TcpListener) -> impl Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            warn!(%error, "could not disable Nagle's algorithm on a connection");
        }
    })
}

/// Sends gRPC requests to the tonic services, whatever their path, so that
/// an unknown gRPC method gets a gRPC `Unimplemented` status rather than a
/// REST 404 body.
async fn route_grpc(State(grpc): State<Router>, request: Request, next: Next) -> Response {
    if !is_grpc(request.headers()) {
        return next.run(request).await;
    }
    match grpc.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(infallible) => match infallible {},
    }
}

/// Returns whether the content type is `application/grpc`, bare or with a `+codec`
/// or parameter suffix (`application/grpc-web` is not gRPC).
fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    content_type
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// Ends a stream after its first error, because both protocols report an
/// error as the end of a stream. The manager's listing goes on after one.
fn until_first_error<T, E>(
    items: impl Stream<Item = Result<T, E>> + Send + 'static,
) -> impl Stream<Item = Result<T, E>> + Send + 'static
where
    T: Send + 'static,
    E: Send + 'static,
{
    items.scan(false, |failed, item| {
        if *failed {
            return future::ready(None);
        }
        *failed = item.is_err();
        future::ready(Some(item))
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        headers
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(is_grpc(&headers("application/grpc;charset=utf-8")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut listener = without_nagle(listener);

        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap(), "the accepted connection still uses Nagle's algorithm");
    }

    #[tokio::test]
    async fn stream_stops_after_first_error() {
        let items = futures::stream::iter([Ok(1), Err("a"), Ok(2), Err("b")]);
        let collected: Vec<_> = until_first_error(items).collect().await;
        assert_eq!(collected, [Ok(1), Err("a")]);
    }
}
