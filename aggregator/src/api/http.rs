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
    /// Anyone (the login itself, this API's description).
    Public,
    /// Any authenticated caller but a share link, no tenant.
    Caller,
    /// A share link's token, and nothing else.
    Share,
    /// A caller with a scope in `{tenant}`, and at least this role.
    Tenant(Role),
}

/// One route of the API.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// One line for people, in the OpenAPI document.
    pub summary: &'static str,
    handler: MethodRouter<Arc<Api>>,
}

/// Every API route. [`router`] is built from this list and nothing else, so
/// a new route is in it, the isolation suite checks it and the OpenAPI
/// document describes it.
pub fn routes() -> Vec<Route> {
    use Access::*;
    let r = |method: Method,
             path: &'static str,
             access: Access,
             handler: MethodRouter<Arc<Api>>,
             summary: &'static str| Route {
        method,
        path,
        access,
        summary,
        handler,
    };
    vec![
        r(
            Method::POST,
            "/api/v1/login",
            Public,
            post(api::session::login),
            "Log in with a login and password: a session cookie and its CSRF token",
        ),
        r(
            Method::POST,
            "/api/v1/logout",
            Caller,
            post(api::session::logout),
            "End the session",
        ),
        r(
            Method::GET,
            "/api/v1/session",
            Caller,
            get(api::session::session),
            "Who is logged in, their CSRF token and bindings",
        ),
        r(
            Method::GET,
            "/api/v1/sessions",
            Caller,
            get(api::session::sessions),
            "The caller's live sessions",
        ),
        r(
            Method::DELETE,
            "/api/v1/sessions/{id}",
            Caller,
            delete(api::session::end_session),
            "End one of the caller's sessions",
        ),
        r(
            Method::GET,
            "/api/v1/openapi.json",
            Public,
            get(openapi_json),
            "This document",
        ),
        r(
            Method::GET,
            "/api/v1/share",
            Share,
            get(api::shares::opened),
            "What a share link opens (its token only)",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/series",
            Tenant(Role::Viewer),
            get(api::series),
            "Series in the caller's scope, filtered by metric, device and tags",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/query",
            Tenant(Role::Viewer),
            get(api::query),
            "Aggregates of the matching series per step, from the finest tier that covers the range",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/devices",
            Tenant(Role::Viewer),
            get(api::fleet::devices),
            "Devices with attributes and liveness, filtered by state, place, customer or agent",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/devices/{device}",
            Tenant(Role::Viewer),
            get(api::fleet::device),
            "One device and its last 100 state changes",
        ),
        r(
            Method::PUT,
            "/api/v1/tenants/{tenant}/devices/{device}",
            Tenant(Role::Editor),
            put(api::fleet::set_device),
            "Set a device's place, customer, position, model, firmware, interval or labels",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/events",
            Tenant(Role::Viewer),
            get(api::fleet::events),
            "Events (sales, faults, device statuses) of sources in the caller's scope",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/agents",
            Tenant(Role::Viewer),
            get(api::fleet::agents),
            "Agents serving the caller's scope, with their last status",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/places",
            Tenant(Role::Viewer),
            get(api::fleet::places),
            "The place tree, each place with its subtree's device counts per state",
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/places",
            Tenant(Role::Editor),
            post(api::fleet::add_place),
            "Add a place under one the caller edits",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/customers",
            Tenant(Role::Viewer),
            get(api::fleet::customers),
            "Customers in the caller's scope",
        ),
        r(
            Method::PUT,
            "/api/v1/tenants/{tenant}/customers/{customer}",
            Tenant(Role::Editor),
            put(api::fleet::put_customer),
            "Add or change a customer and its contacts",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/users",
            Tenant(Role::Admin),
            get(api::people::users),
            "Users with a role in the tenant, and their bindings",
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/users",
            Tenant(Role::Admin),
            post(api::people::add_user),
            "Add a local account with one role in the tenant",
        ),
        r(
            Method::DELETE,
            "/api/v1/tenants/{tenant}/users/{login}/sessions",
            Tenant(Role::Admin),
            delete(api::people::end_sessions),
            "Log a user of the tenant out everywhere",
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/bindings",
            Tenant(Role::Admin),
            post(api::people::bind),
            "Give a user a role in a scope",
        ),
        r(
            Method::DELETE,
            "/api/v1/tenants/{tenant}/bindings/{id}",
            Tenant(Role::Admin),
            delete(api::people::unbind),
            "Take a binding away",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/tokens",
            Tenant(Role::Admin),
            get(api::people::tokens),
            "API tokens (never their secrets)",
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/tokens",
            Tenant(Role::Admin),
            post(api::people::add_token),
            "Make an API token with a role in a scope (shown once)",
        ),
        r(
            Method::DELETE,
            "/api/v1/tenants/{tenant}/tokens/{name}",
            Tenant(Role::Admin),
            delete(api::people::revoke_token),
            "Revoke an API token",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/shares",
            Tenant(Role::Editor),
            get(api::shares::list),
            "Share links (all for a tenant-wide admin, else the caller's own)",
        ),
        r(
            Method::POST,
            "/api/v1/tenants/{tenant}/shares",
            Tenant(Role::Editor),
            post(api::shares::add),
            "Make a read-only share link to one dashboard over a scope (shown once)",
        ),
        r(
            Method::DELETE,
            "/api/v1/tenants/{tenant}/shares/{id}",
            Tenant(Role::Editor),
            delete(api::shares::revoke),
            "Revoke a share link at once",
        ),
        r(
            Method::GET,
            "/api/v1/tenants/{tenant}/audit",
            Tenant(Role::Admin),
            get(api::people::audit),
            "The tenant's audit log, as JSON or CSV",
        ),
    ]
}

/// `GET /api/v1/openapi.json`
async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi())
}

/// The API as an OpenAPI 3.1 document, made from [`routes`]: every route
/// with its parameters, who may call it and the answers it gives.
pub fn openapi() -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let error = json!({ "$ref": "#/components/responses/Error" });
    let mut paths = Map::new();
    for route in routes() {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": { "type": if name == "id" { "integer" } else { "string" } },
                })
            })
            .collect();
        let mut responses = Map::new();
        responses.insert("200".into(), json!({ "description": "done", "content": { "application/json": { "schema": { "type": "object" } } } }));
        let (security, who) = match route.access {
            Access::Public => (json!([]), "anyone".to_owned()),
            Access::Caller => (
                json!([{ "session": [] }, { "bearer": [] }]),
                "any signed-in user or API token".to_owned(),
            ),
            Access::Share => (
                json!([{ "bearer": [] }]),
                "a share link's token only".to_owned(),
            ),
            Access::Tenant(role) => (
                json!([{ "session": [] }, { "bearer": [] }]),
                format!(
                    "a caller with at least the {} role in the tenant; answers cover only the caller's scope",
                    role.as_str()
                ),
            ),
        };
        if route.access != Access::Public {
            responses.insert("401".into(), error.clone());
        }
        if matches!(route.access, Access::Tenant(_) | Access::Caller) {
            responses.insert("403".into(), error.clone());
        }
        if !params.is_empty() {
            responses.insert("404".into(), error.clone());
        }
        if route.method != Method::GET {
            responses.insert("400".into(), error.clone());
        }
        if route.path == "/api/v1/login" {
            responses.insert("429".into(), error.clone());
        }
        let mut op = json!({
            "summary": route.summary,
            "description": format!("Who may call it: {who}."),
            "operationId": format!("{} {}", route.method, route.path),
            "parameters": params,
            "security": security,
            "responses": responses,
        });
        if matches!(route.method, Method::POST | Method::PUT) && route.path != "/api/v1/logout" {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "type": "object" } } },
            });
        }
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Dash aggregator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every answer is limited to the caller's scope in the tenant of the path. A session's state-changing request carries X-CSRF-Token. See docs/access.md.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An API token, a bootstrap query token (http.tokens) or a share link's token" },
                "session": { "type": "apiKey", "in": "cookie", "name": crate::api::auth::SESSION_COOKIE },
            },
            "responses": {
                "Error": {
                    "description": "refused; `error` says why and what to do",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["error"],
                        "properties": { "error": { "type": "string" } },
                    } } },
                },
            },
        },
    })
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
