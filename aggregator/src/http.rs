//! The aggregator's HTTP side: health, Prometheus metrics and the query API
//! ([`crate::api`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Api};
use crate::metrics::Metrics;

/// Binds `listen` and serves until `stop`. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .with_state(metrics)
        .merge(router(api));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (http.listen)"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%addr, "HTTP listening (/healthz, /metrics, /api/v1)");
    Ok(addr)
}

/// The query API's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/tenants/{tenant}/series", get(api::series))
        .route("/api/v1/tenants/{tenant}/query", get(api::query))
        .with_state(api)
}
