//! The aggregator's HTTP side: health, Prometheus metrics and the query API
//! ([`crate::api`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Api};
use crate::telemetry::health::NotReady;
use crate::telemetry::metrics::Metrics;

/// Binds `listen` and serves until `stop`, on a task of `tasks`. Returns
/// the bound address (`listen` may ask for port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let ready = Ready {
        metrics: metrics.clone(),
        pool: api.pool.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .with_state(metrics)
        .route("/readyz", get(readyz).with_state(ready))
        .merge(router(api));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (http.listen)"))?;
    let addr = listener.local_addr()?;
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%addr, "HTTP listening (/healthz, /readyz, /metrics, /api/v1)");
    Ok(addr)
}

#[derive(Clone)]
struct Ready {
    metrics: Arc<Metrics>,
    pool: sqlx::PgPool,
}

/// 200 "ready" when the database answers, the broker link is up and
/// ingest moves; 503 with the reason otherwise (see [`crate::telemetry::health`]).
async fn readyz(State(r): State<Ready>) -> (axum::http::StatusCode, String) {
    let database = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::storage::read::ping(&r.pool),
    )
    .await;
    let checked = match database {
        Ok(Ok(_)) => r.metrics.health.check(dash_shared::now_micros()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            Err(NotReady::Database(
                "an error (see the aggregator's log)".into(),
            ))
        }
        Err(_) => Err(NotReady::Database("no answer within 2 s".into())),
    };
    match checked {
        Ok(()) => (axum::http::StatusCode::OK, "ready\n".into()),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {e}\n"),
        ),
    }
}

/// The query API's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/tenants/{tenant}/series", get(api::series))
        .route("/api/v1/tenants/{tenant}/query", get(api::query))
        .route("/api/v1/tenants/{tenant}/devices", get(api::fleet::devices))
        .route(
            "/api/v1/tenants/{tenant}/devices/{device}",
            get(api::fleet::device),
        )
        .route("/api/v1/tenants/{tenant}/places", get(api::fleet::places))
        .route(
            "/api/v1/tenants/{tenant}/customers",
            get(api::fleet::customers),
        )
        .with_state(api)
}
