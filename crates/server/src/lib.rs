//! berth's HTTP layer: the OCI Distribution API on axum. It owns routing, headers, status
//! codes, error bodies and the translation of request bodies into byte streams; every
//! decision about content is the registry core's. It is the only crate that sees axum.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind port 0
//! and run the server in-process.

mod error;
mod handlers;
mod range;
pub mod route;

use axum::Router;
use axum::routing::any;
use registry::Registry;
use std::future::Future;
use std::sync::Arc;

pub use error::ApiError;

/// Everything a request handler can reach.
pub struct AppState {
    pub registry: Registry,
}

/// Shared state handed to every handler.
pub type App = Arc<AppState>;

/// The axum router for the whole API.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/v2", any(handlers::dispatch))
        .route("/v2/", any(handlers::dispatch))
        .route("/v2/{*rest}", any(handlers::dispatch))
        .fallback(handlers::not_found)
        .with_state(app)
}

/// Serve the API on `listener` until `shutdown` completes, then finish in-flight
/// requests and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
