//! gRPC and REST on one port. PLACEHOLDER: the API helper replaces this.
//!
//! Until then, [`serve`] serves only `GET /healthcheck`, so that
//! `chall-manager serve` starts, binds and stops as it will for real.

use std::future::Future;

use axum::{Router, routing::get};
use tokio::net::TcpListener;

use crate::Manager;

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    manager: Manager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = manager;
    let router = Router::new().route("/healthcheck", get(|| async { "{}" }));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
