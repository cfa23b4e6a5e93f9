//! HTTP input for POS systems and webhooks.
//!
//! `POST /ingest/{source}` with `Authorization: Bearer TOKEN` and a JSON body:
//! one object or an array of objects. Each object becomes an event of the
//! source's `kind` (its body is the object), and the source's `metrics`
//! turn numeric fields into samples (`amount` -> `sales.amount` tagged with
//! `location` and `item`). The answer comes only after the records are
//! flushed to the buffer:
//!
//! - 200 `{"events": n, "samples": m}`: stored;
//! - 200 `{"events": 0, "samples": 0, "duplicate": true}`: a request with the
//!   same `Idempotency-Key` (per source) was stored before, within
//!   `http.idempotency_ttl_secs`; nothing was written again;
//! - 400 naming the problem (not JSON, an item that is not an object, a bad
//!   time field, a source field that is not a valid id); 401 for an unknown
//!   source or a wrong token; 413 for a body over `http.max_body_bytes`;
//!   503 with `Retry-After` when the buffer cannot store now.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dash_shared::events::{EventMetric, lookup};
use dash_shared::wire::{MAX_EVENT_BODY, MAX_EVENT_NAME};
use dash_shared::{Event, MAX_TIMESTAMP, MIN_TIMESTAMP, Micros};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::commit::{CommitError, Committer, Stored};
use crate::sample::Record;

/// The HTTP input's settings (`[http]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpInputConfig {
    /// Address to listen on, e.g. `0.0.0.0:8080`; empty disables the input.
    pub listen: String,
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl_secs: u64,
    /// Who may post, and how their records are read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<HttpSource>,
}

impl Default for HttpInputConfig {
    fn default() -> Self {
        HttpInputConfig {
            listen: String::new(),
            max_body_bytes: 1024 * 1024,
            idempotency_ttl_secs: 7 * 86_400,
            sources: Vec::new(),
        }
    }
}

/// One system that posts records: a POS, a webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// The path segment: `POST /ingest/{name}`.
    pub name: String,
    /// SHA-256 of its bearer token, hex: `printf %s "$TOKEN" | sha256sum`.
    pub token_sha256: String,
    /// Event kind of its records, e.g. `sale`.
    pub kind: String,
    /// Dotted path to each record's time (RFC 3339, or Unix s/ms/µs);
    /// empty: the time the agent received it.
    #[serde(default)]
    pub time_field: String,
    /// Dotted path to the event source (a till, a device); empty or missing:
    /// the source's name.
    #[serde(default)]
    pub source_field: String,
    /// Numeric fields stored as series too (device = the event source).
    #[serde(default)]
    pub metrics: Vec<HttpMetric>,
}

/// A numeric field of a record, as a series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpMetric {
    /// Dotted path to the number, e.g. `amount`.
    pub field: String,
    /// Metric name, e.g. `sales.amount`.
    pub metric: String,
    /// Dotted paths of fields whose values become tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl HttpSource {
    pub fn example() -> HttpSource {
        HttpSource {
            name: "pos".into(),
            token_sha256: dash_runtime::secret::sha256_hex("change-me"),
            kind: "sale".into(),
            time_field: "time".into(),
            source_field: "till".into(),
            metrics: vec![HttpMetric {
                field: "amount".into(),
                metric: "sales.amount".into(),
                tags: vec!["location".into(), "item".into()],
            }],
        }
    }

    fn rules(&self) -> Vec<EventMetric> {
        self.metrics
            .iter()
            .map(|m| EventMetric {
                kind: self.kind.clone(),
                field: m.field.clone(),
                metric: m.metric.clone(),
                tags: m.tags.clone(),
            })
            .collect()
    }
}

/// Checks what types alone cannot; errors name the field.
pub fn validate(c: &HttpInputConfig) -> anyhow::Result<()> {
    if !c.listen.is_empty() {
        c.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("http.listen {:?}: {e}", c.listen))?;
    }
    if !(1024..=64 * 1024 * 1024).contains(&c.max_body_bytes) {
        anyhow::bail!("http.max_body_bytes must be between 1 KiB and 64 MiB");
    }
    for (i, s) in c.sources.iter().enumerate() {
        let at = format!("http.sources[{i}]");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            anyhow::bail!(
                "{at}.name {:?}: use letters, digits, '-', '_' or '.'",
                s.name
            );
        }
        if c.sources[..i].iter().any(|o| o.name == s.name) {
            anyhow::bail!("{at}.name {:?} is used twice", s.name);
        }
        if s.token_sha256.len() != 64 || !s.token_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            anyhow::bail!(
                "{at}.token_sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)"
            );
        }
        if s.kind.is_empty() || s.kind.len() > MAX_EVENT_NAME {
            anyhow::bail!("{at}.kind must be 1 to {MAX_EVENT_NAME} bytes");
        }
        for (j, m) in s.metrics.iter().enumerate() {
            if m.field.is_empty() || m.metric.is_empty() {
                anyhow::bail!("{at}.metrics[{j}]: field and metric must not be empty");
            }
        }
    }
    Ok(())
}

struct Input {
    sources: Vec<(HttpSource, Vec<EventMetric>)>,
    committer: Committer,
    transforms: Arc<crate::transform::Transforms>,
    clock: Arc<crate::clock::Clock>,
}

/// A refusal with its status and reason.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        r
    }
}

fn bad(msg: String) -> Refused {
    Refused(StatusCode::BAD_REQUEST, msg)
}

/// Serves the input on `socket` until `stop`; forgets old idempotency keys hourly.
pub async fn serve(
    socket: tokio::net::TcpListener,
    config: HttpInputConfig,
    committer: Committer,
    transforms: Arc<crate::transform::Transforms>,
    clock: Arc<crate::clock::Clock>,
    buffer: Arc<Buffer>,
    stop: CancellationToken,
) {
    let ttl = config.idempotency_ttl_secs;
    let input = Arc::new(Input {
        sources: config
            .sources
            .iter()
            .map(|s| (s.clone(), s.rules()))
            .collect(),
        committer,
        transforms,
        clock,
    });
    let app = Router::new()
        .route("/ingest/{source}", post(ingest))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(input);
    let forget = {
        let stop = stop.clone();
        async move {
            loop {
                let before = dash_shared::now_micros() - ttl as i64 * 1_000_000;
                match buffer.forget_keys(before) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(keys = n, "old idempotency keys forgotten"),
                    Err(e) => tracing::warn!(error = %e, "forgetting old idempotency keys failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        }
    };
    let served = axum::serve(socket, app).with_graceful_shutdown(stop.cancelled_owned());
    let (served, ()) = tokio::join!(served, forget);
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP input stopped");
    }
}

async fn ingest(
    State(input): State<Arc<Input>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refused> {
    let unauthorized = || {
        Refused(
            StatusCode::UNAUTHORIZED,
            "unknown source or wrong token".into(),
        )
    };
    let (source, rules) = input
        .sources
        .iter()
        .find(|(s, _)| s.name == name)
        .ok_or_else(unauthorized)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(dash_runtime::secret::bearer)
        .ok_or_else(unauthorized)?;
    if !dash_runtime::secret::token_matches(token, &source.token_sha256) {
        return Err(unauthorized());
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.len() <= 200)
                .ok_or_else(|| {
                    bad("Idempotency-Key must be 1 to 200 visible ASCII characters".into())
                })?;
            Some([source.name.as_bytes(), &[0], v.as_bytes()].concat())
        }
    };
    let events = events(source, &body, input.clock.now())?;
    let (samples, _) = dash_shared::events::derive(&events, rules);
    let n_samples: usize = samples.iter().map(|b| b.timestamps.len()).sum();
    let n_events = events.len();
    let mut records: Vec<Record> = events.into_iter().map(Record::Event).collect();
    let mut derived = Vec::with_capacity(n_samples);
    for block in samples {
        for (ts, value) in block.timestamps.iter().zip(&block.values) {
            derived.push(crate::sample::Sample {
                key: block.key.clone(),
                ts: *ts,
                value: *value,
            });
        }
    }
    records.extend(
        input
            .transforms
            .apply(crate::transform::Input::Http, derived),
    );
    let unavailable = |e: CommitError| {
        Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not stored, retry later: {e}"),
        )
    };
    let ticket = input
        .committer
        .enqueue_records(crate::sample::Class::Transactions, records, key)
        .await
        .map_err(unavailable)?;
    match ticket.wait().await.map_err(unavailable)? {
        Stored::New => Ok(Json(json!({ "events": n_events, "samples": n_samples }))),
        Stored::Duplicate => Ok(Json(
            json!({ "events": 0, "samples": 0, "duplicate": true }),
        )),
    }
}

/// The body's records as events of `source`.
/// `now` stamps the records that carry no time.
fn events(source: &HttpSource, body: &[u8], now: Micros) -> Result<Vec<Event>, Refused> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(bad(
                "body must be a JSON object or an array of objects".into()
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(bad(format!("item {i} is not a JSON object")));
            }
            let time = match source.time_field.as_str() {
                "" => now,
                path => time_at(item, path).map_err(|e| bad(format!("item {i}: {path}: {e}")))?,
            };
            let from = match source.source_field.as_str() {
                "" => None,
                path => lookup(item, path).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            };
            let origin = from.unwrap_or_else(|| source.name.clone());
            if origin.is_empty() || origin.len() > MAX_EVENT_NAME || origin.chars().any(char::is_control) {
                return Err(bad(format!(
                    "item {i}: {}: the source must be 1 to {MAX_EVENT_NAME} bytes without control characters",
                    source.source_field
                )));
            }
            let body = item.to_string();
            if body.len() > MAX_EVENT_BODY {
                return Err(bad(format!("item {i} is {} bytes, more than {MAX_EVENT_BODY}", body.len())));
            }
            Ok(Event {
                source: origin,
                time,
                kind: source.kind.clone(),
                body,
            })
        })
        .collect()
}

fn time_at(item: &Value, path: &str) -> Result<Micros, String> {
    let t = match lookup(item, path) {
        None => return Err("missing".into()),
        Some(Value::Number(n)) => {
            crate::devices::mapping::epoch_to_micros(n.as_f64().ok_or("not a number")?)
        }
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?
            .timestamp_micros(),
        Some(_) => return Err("expected an RFC 3339 string or Unix seconds".into()),
    };
    if !(MIN_TIMESTAMP..MAX_TIMESTAMP).contains(&t) {
        return Err(format!("{t} µs is outside the years 2000 to 2100"));
    }
    Ok(t)
}
