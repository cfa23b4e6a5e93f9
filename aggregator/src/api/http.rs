//! The aggregator's HTTP side: health, Prometheus metrics and the query API
//! ([`crate::api`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};

use crate::auth::access::Role;
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
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
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

/// Who may call a route, for the isolation suite (which takes this list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the login itself).
    Public,
    /// Any authenticated caller, no tenant.
    Caller,
    /// A caller with a scope in `{tenant}`, and at least this role.
    Tenant(Role),
}

/// One route of the API.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<Arc<Api>>,
}

/// Every API route. [`router`] is built from this list and nothing else, so
/// a new route is in it and the isolation suite checks it.
pub fn routes() -> Vec<Route> {
    use Access::*;
    let r = |method: Method,
             path: &'static str,
             access: Access,
             handler: MethodRouter<Arc<Api>>| Route {
        method,
        path,
        access,
        handler,
    };
    vec![
        r(
            Method::POST,
            "/api/v1/login",
            Public,
            post(api::session::login),
        ),
        r(
            Method::POST,
            "/api/v1/logout",
            Caller,
            post(api::session::logout),
        ),
        r(
            Method::GET,
            "/api/v1/session",
            Caller,
            get(api::session::session),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/series",
            Tenant(Role::Viewer),
            get(api::series),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/query",
            Tenant(Role::Viewer),
            get(api::query),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/devices",
            Tenant(Role::Viewer),
            get(api::fleet::devices),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/devices/{device}",
            Tenant(Role::Viewer),
            get(api::fleet::device),
        ),
        r(
            Method::PUT,
            "/api/v1/tenants/{tenant}/devices/{device}",
            Tenant(Role::Editor),
            put(api::fleet::set_device),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/places",
            Tenant(Role::Viewer),
            get(api::fleet::places),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/customers",
            Tenant(Role::Viewer),
            get(api::fleet::customers),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/users",
            Tenant(Role::Admin),
            get(api::people::users),
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/bindings",
            Tenant(Role::Admin),
            post(api::people::bind),
        ),
        r(
            Method::DELETE,
            "/api/v1/tenants/{tenant}/bindings/{id}",
            Tenant(Role::Admin),
            delete(api::people::unbind),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/tokens",
            Tenant(Role::Admin),
            get(api::people::tokens),
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/tokens",
            Tenant(Role::Admin),
            post(api::people::add_token),
        ),
        r(
            Method::DELETE,
            "/api/v1/tenants/{tenant}/tokens/{name}",
            Tenant(Role::Admin),
            delete(api::people::revoke_token),
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/audit",
            Tenant(Role::Admin),
            get(api::people::audit),
        ),
    ]
}

/// The API's routes ([`routes`]), on `api`.
pub fn router(api: Arc<Api>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<Arc<Api>>)> = Vec::new();
    for route in routes() {
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, m)) => *m = std::mem::take(m).merge(route.handler),
            None => by_path.push((route.path, route.handler)),
        }
    }
    let audit = api.audit.clone();
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(
            audit,
            crate::audit::layer,
        ))
}
