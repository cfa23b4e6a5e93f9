//! The audit log: who read or changed what, when, from where, and how it
//! ended, for every API request, kept 7 years by default (`audit.days`).
//!
//! [`layer`] wraps every API route. The extractors that authenticate a
//! request ([`crate::api::auth`]) note the caller and their scope in the
//! request's [`Slot`]; once the handler has answered, the layer writes one
//! row with the answer's status and only then sends the answer, so a read
//! the log could not record is not answered (503). Rows go through one
//! writer task that stores every row waiting in one transaction (a group
//! commit) as a hash chain ([`crate::storage::audit`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth::access::Actor;
use crate::storage::audit::{self as rows, Entry};

/// `[audit]` in the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days the log is kept (7 years: a care programme's records). 0: forever.
    pub days: u32,
    /// A file holding the key the chain is made with (HMAC-SHA256; 32 bytes
    /// or more), kept off the database's machine or at least out of its
    /// reach. Unset: plain SHA-256, which catches edits by people without
    /// database access only.
    pub key_file: std::path::PathBuf,
    /// The first row chained with the key: from it on, `audit verify`
    /// refuses an unkeyed row (one rebuilt without the key). Set it to the
    /// first keyed row when a key is added to a log that has rows.
    pub keyed_from: i64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            days: 2557,
            key_file: Default::default(),
            keyed_from: 1,
        }
    }
}

impl AuditConfig {
    /// The chain key from `key_file`, if one is configured. The file's
    /// bytes are the key (surrounding whitespace dropped).
    pub fn key(&self) -> anyhow::Result<Option<rows::ChainKey>> {
        let path = &self.key_file;
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "audit.key_file {}: {e}; make one with `head -c 48 /dev/urandom | base64 > FILE`",
                path.display()
            )
        })?;
        // The bytes as they are (a binary key too), without the whitespace
        // around a key written as text.
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(start, |e| e + 1);
        let key = rows::ChainKey::new(bytes[start..end].to_vec()).ok_or_else(|| {
            anyhow::anyhow!(
                "audit.key_file {}: the key needs at least {} bytes",
                path.display(),
                rows::ChainKey::MIN_LEN
            )
        })?;
        Ok(Some(key.from(self.keyed_from)))
    }
}

/// Why a row was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("storing the audit row failed: {0}")]
    Store(String),
}

type Job = (Entry, oneshot::Sender<Result<(), String>>);

/// Where rows are handed to the writer.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Job>,
}

impl Audit {
    /// Starts the writer on the current runtime, chaining with `key`; it
    /// ends when every handle is dropped, after storing what it holds.
    pub fn spawn(pool: PgPool, key: Option<rows::ChainKey>) -> Audit {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(write_loop(pool, rx, key));
        Audit { tx }
    }

    /// Stores `entry`; returns once it is committed.
    pub async fn record(&self, entry: Entry) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entry, done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Store)
    }
}

async fn write_loop(pool: PgPool, mut rx: mpsc::Receiver<Job>, key: Option<rows::ChainKey>) {
    let mut jobs = Vec::new();
    while rx.recv_many(&mut jobs, 512).await > 0 {
        let entries: Vec<Entry> = jobs.iter().map(|(e, _)| e.clone()).collect();
        let mut result = rows::append(&pool, &entries, key.as_ref()).await;
        if result.is_err() {
            // Once more: a pool connection may have gone with a restart.
            tokio::time::sleep(Duration::from_millis(200)).await;
            result = rows::append(&pool, &entries, key.as_ref()).await;
        }
        let result = result.map_err(|e| {
            tracing::error!(error = %e, rows = entries.len(), "the audit log could not be written; the requests are answered 503");
            e.to_string()
        });
        for (_, done) in jobs.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

/// What the authenticating extractor learned, for the row.
#[derive(Debug, Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Noted>>>);

#[derive(Debug, Clone)]
struct Noted {
    actor: Actor,
    scope: String,
    /// The tenant the caller was answered for, as the route decoded it.
    tenant: Option<String>,
}

impl Slot {
    /// Notes the caller, the scope they were answered from and its tenant.
    pub fn note(&self, actor: &Actor, scope: &str, tenant: Option<&str>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Noted {
            actor: actor.clone(),
            scope: scope.to_owned(),
            tenant: tenant.map(str::to_owned),
        });
    }
}

fn actor_columns(actor: &Actor) -> (&'static str, String) {
    match actor {
        Actor::User(login) => ("user", login.clone()),
        Actor::Token(name) => ("token", name.clone()),
        Actor::Bootstrap => ("bootstrap", "http.tokens".into()),
        Actor::Share(id) => ("share", id.to_string()),
        Actor::Cli => ("cli", "command line".into()),
    }
}

fn action_of(method: &Method, path: &str) -> &'static str {
    if path == "/api/v1/login" {
        "login"
    } else if path == "/api/v1/logout" {
        "logout"
    } else {
        match *method {
            Method::GET | Method::HEAD => "read",
            Method::POST => "create",
            Method::PUT | Method::PATCH => "update",
            Method::DELETE => "delete",
            _ => "other",
        }
    }
}

fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=399 => "ok",
        401 | 403 | 404 | 429 => "denied",
        400..=499 => "refused",
        _ => "error",
    }
}

/// The middleware around the API routes: one row per request.
///
/// The handler and the row run on a task of their own, so a client that
/// goes away mid-request neither cuts a change short nor leaves it
/// unrecorded. A read whose row cannot be stored is not answered (503); a
/// change whose row cannot be stored has happened, so its answer is sent
/// with `X-Dash-Audit: not-recorded` and the failure is logged.
pub async fn layer(
    State(audit): State<Audit>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let work = tokio::spawn(audited(audit, client, request, next));
    work.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "an API request's task failed");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    })
}

async fn audited(audit: Audit, client: SocketAddr, mut request: Request, next: Next) -> Response {
    let slot = Slot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let object = dash_runtime::text::clip(
        request
            .uri()
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str()),
        500,
    )
    .to_owned();
    let tenant = path
        .strip_prefix("/api/v1/tenants/")
        .and_then(|rest| rest.split('/').next())
        .map(|t| dash_runtime::text::clip(t, 64).to_owned());
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|a| dash_runtime::text::clip(a, 200).to_owned());
    // A handler that panics is answered 500, and audited as such.
    let response = tokio::spawn(next.run(request)).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, %path, "an API handler panicked");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    });
    let noted = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (actor_kind, actor, scope, tenant) = match noted {
        Some(n) => {
            let (k, a) = actor_columns(&n.actor);
            (k, a, n.scope, n.tenant.or(tenant))
        }
        None => ("anonymous", String::new(), "none".to_owned(), tenant),
    };
    let entry = Entry {
        at: chrono::Utc::now(),
        actor_kind: actor_kind.into(),
        actor,
        tenant,
        action: action_of(&method, &path).into(),
        object,
        scope,
        client: Some(client.ip().to_string()),
        user_agent,
        outcome: outcome_of(response.status()).into(),
        status: i32::from(response.status().as_u16()),
    };
    let read = matches!(method, Method::GET | Method::HEAD);
    match audit.record(entry).await {
        Ok(()) => response,
        Err(e) if read => {
            tracing::error!(error = %e, %path, "a read could not be audited; answered 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": "not answered: the audit log could not record it; see the aggregator's log"
                })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, %method, %path, status = response.status().as_u16(), "a change was made but could not be audited");
            let mut response = response;
            response.headers_mut().insert(
                "x-dash-audit",
                axum::http::HeaderValue::from_static("not-recorded"),
            );
            response
        }
    }
}

/// Cuts rows older than `config.days` every hour until `stop`.
pub async fn retention_loop(pool: PgPool, config: AuditConfig, stop: CancellationToken) {
    if config.days == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = chrono::Utc::now() - chrono::Duration::days(i64::from(config.days));
        match rows::cut(&pool, before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, %before, "audit rows past retention removed"),
            Err(e) => tracing::warn!(error = %e, "audit retention failed; retried in an hour"),
        }
    }
}

/// A field a spreadsheet would not take for a formula.
fn inert(field: String) -> String {
    if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{field}")
    } else {
        field
    }
}

/// Rows as CSV with a header, every field quoted as needed, and text that
/// a caller chose (actor, object, user agent) kept from being a formula.
pub fn to_csv(rows: &[rows::Row]) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    let _ = out.write_record([
        "seq",
        "at",
        "actor_kind",
        "actor",
        "tenant",
        "action",
        "object",
        "scope",
        "client",
        "user_agent",
        "outcome",
        "status",
        "prev_hash",
        "hash",
    ]);
    for r in rows {
        let e = &r.entry;
        let _ = out.write_record([
            r.seq.to_string(),
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            e.actor_kind.clone(),
            inert(e.actor.clone()),
            inert(e.tenant.clone().unwrap_or_default()),
            e.action.clone(),
            inert(e.object.clone()),
            e.scope.clone(),
            e.client.clone().unwrap_or_default(),
            inert(e.user_agent.clone().unwrap_or_default()),
            e.outcome.clone(),
            e.status.to_string(),
            r.prev_hash.clone(),
            r.hash.clone(),
        ]);
    }
    String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_fields_a_caller_chose_cannot_become_spreadsheet_formulas() {
        assert_eq!(inert("=HYPERLINK(\"x\")".into()), "'=HYPERLINK(\"x\")");
        assert_eq!(inert("+1".into()), "'+1");
        assert_eq!(inert("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(inert("/api/v1/tenants/acme".into()), "/api/v1/tenants/acme");
        assert_eq!(outcome_of(StatusCode::NOT_FOUND), "denied");
        assert_eq!(outcome_of(StatusCode::BAD_REQUEST), "refused");
        assert_eq!(outcome_of(StatusCode::INTERNAL_SERVER_ERROR), "error");
        assert_eq!(action_of(&Method::POST, "/api/v1/login"), "login");
        assert_eq!(
            action_of(&Method::PUT, "/api/v1/tenants/a/devices/d"),
            "update"
        );
    }
}
