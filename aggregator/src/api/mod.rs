//! The query API over HTTP, JSON, one tenant per request.
//!
//! - `GET /api/v1/tenants/{tenant}/series?device=&metric=&tag=key:value&limit=`
//!   lists series (filters optional; `tag` may repeat).
//! - `GET /api/v1/tenants/{tenant}/query?from=&to=&step=&agg=` plus either
//!   `series=ID,ID,...` or the same filters as above: points per series,
//!   `[time, value]`, for step buckets holding data. `from`/`to`: RFC 3339 or
//!   Unix seconds; `step`: `30s`, `5m`, `1h`, `1d` (tenant-local days), `1w`,
//!   or seconds, default about 1,000 points; `agg`: avg (default), min, max,
//!   sum, count, last. See [`crate::query`] for which tier answers.
//!
//! Every request is authenticated by [`auth`] (a bootstrap or API token, or
//! a session) and answers only from the caller's [`crate::auth::access::Scope`]
//! in the tenant: a series is seen when its device is. A bad parameter is a
//! 400 whose JSON `error` names it and says why.

pub mod auth;
pub mod fleet;
pub mod http;
pub mod people;
pub mod session;
pub mod shares;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use dash_shared::Micros;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::{HttpConfig, QueryToken, RetentionConfig};
use crate::query::{self, Agg, Buckets, MAX_POINTS, MAX_SERIES, Step};
use crate::storage::read::{self, SeriesFilter, SeriesRow};
use crate::storage::retention::Horizons;
use auth::Scoped;

/// What the handlers share.
#[derive(Debug)]
pub struct Api {
    pub pool: PgPool,
    /// Bootstrap query tokens (`http.tokens`).
    pub tokens: Vec<QueryToken>,
    pub retention: RetentionConfig,
    /// Sessions, lockout and cookies (`http.*`).
    pub sessions: HttpConfig,
    /// Where every request's audit row goes.
    pub audit: crate::audit::Audit,
    /// Failed logins per client address and unknown login.
    pub guesses: session::Guesses,
}

impl Api {
    /// The handlers' state, writing audit rows to `audit`.
    pub fn new(
        pool: PgPool,
        tokens: Vec<QueryToken>,
        retention: RetentionConfig,
        http: HttpConfig,
        audit: crate::audit::Audit,
    ) -> Api {
        Api {
            audit,
            guesses: session::Guesses::new(&http),
            pool,
            tokens,
            retention,
            sessions: http,
        }
    }
}

/// A refusal: status and a message for the `error` field.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "query failed in PostgreSQL");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the database failed to answer; see the aggregator's log".into(),
        )
    }
}

type Params = Query<Vec<(String, String)>>;

/// Takes the series filter shared by both endpoints out of `params`.
fn take_filter(
    params: &mut Vec<(String, String)>,
    allow_ids: bool,
) -> Result<SeriesFilter, ApiError> {
    let mut s = SeriesFilter::default();
    let mut rest = Vec::new();
    for (k, v) in params.drain(..) {
        match k.as_str() {
            "device" => s.device = Some(v),
            "metric" => s.metric = Some(v),
            "tag" => {
                let (key, value) = v
                    .split_once(':')
                    .ok_or_else(|| bad(format!("tag={v:?}: expected key:value")))?;
                s.tags
                    .insert(key.to_owned(), Value::String(value.to_owned()));
            }
            "series" if allow_ids => {
                let ids = v
                    .split(',')
                    .map(|i| i.trim().parse::<i64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        bad(format!(
                            "series={v:?}: expected series ids separated by commas"
                        ))
                    })?;
                s.ids = Some(ids);
            }
            _ => rest.push((k, v)),
        }
    }
    *params = rest;
    Ok(s)
}

/// A series as both endpoints answer it.
fn series_json(s: &SeriesRow) -> Value {
    json!({ "id": s.id, "device": s.device, "metric": s.metric, "tags": s.tags })
}

fn refuse_unknown(params: &[(String, String)]) -> Result<(), ApiError> {
    match params.first() {
        Some((k, _)) => Err(bad(format!("unknown parameter {k:?}"))),
        None => Ok(()),
    }
}

/// `limit=` from `params`: `default` when absent, else 1 to `max`.
fn take_limit(params: &mut Vec<(String, String)>, default: i64, max: i64) -> Result<i64, ApiError> {
    match take(params, "limit") {
        None => Ok(default),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| bad(format!("limit={l:?}: expected 1 to {max}"))),
    }
}

fn take(params: &mut Vec<(String, String)>, key: &str) -> Option<String> {
    let i = params.iter().position(|(k, _)| k == key)?;
    Some(params.remove(i).1)
}

/// `GET /api/v1/tenants/{tenant}/series`
pub async fn series(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Query(mut params): Params,
) -> Result<Json<Value>, ApiError> {
    let selection = take_filter(&mut params, false)?;
    let limit = take_limit(&mut params, 1_000, 100_000)?;
    refuse_unknown(&params)?;
    let series = read::series(&api.pool, &scope, &selection, limit).await?;
    let series: Vec<Value> = series.iter().map(series_json).collect();
    Ok(Json(json!({ "series": series })))
}

/// The time parameter `key` (as [`parse_time`] reads it), or `default`.
fn take_time(
    params: &mut Vec<(String, String)>,
    key: &str,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    match take(params, key) {
        None => Ok(default),
        Some(v) => Ok(DateTime::from_timestamp_micros(parse_time(key, &v)?).unwrap_or(default)),
    }
}

/// Parses a time: RFC 3339 or Unix seconds, within the years Dash stores.
fn parse_time(name: &str, v: &str) -> Result<Micros, ApiError> {
    let us = if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        t.timestamp_micros()
    } else if let Ok(secs) = v.parse::<f64>() {
        (secs * 1e6) as Micros
    } else {
        return Err(bad(format!(
            "{name}={v:?}: expected an RFC 3339 time (2026-11-25T10:00:00Z) or Unix seconds"
        )));
    };
    let limits = dash_shared::Limits::default();
    if !(limits.min_timestamp..limits.max_timestamp).contains(&us) {
        return Err(bad(format!("{name}={v:?}: outside the years 2000 to 2100")));
    }
    Ok(us)
}

fn parse_step(v: &str) -> Result<Step, ApiError> {
    let err = || {
        bad(format!(
            "step={v:?}: expected a number with s, m, h, d or w (30s, 5m, 1h, 1d), or seconds"
        ))
    };
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: i64 = v[..split].parse().map_err(|_| err())?;
    if n <= 0 {
        return Err(bad(format!("step={v:?}: must be positive")));
    }
    let secs = |k: i64| {
        n.checked_mul(k * 1_000_000)
            .map(Step::Fixed)
            .ok_or_else(err)
    };
    match &v[split..] {
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        "d" => u32::try_from(n).map(Step::Days).map_err(|_| err()),
        "w" => n
            .checked_mul(7)
            .and_then(|d| u32::try_from(d).ok())
            .map(Step::Days)
            .ok_or_else(err),
        _ => Err(err()),
    }
}

fn parse_agg(v: &str) -> Result<Agg, ApiError> {
    Ok(match v {
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "sum" => Agg::Sum,
        "count" => Agg::Count,
        "last" => Agg::Last,
        _ => {
            return Err(bad(format!(
                "agg={v:?}: expected avg, min, max, sum, count or last"
            )));
        }
    })
}

fn rfc3339(us: Micros) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `GET /api/v1/tenants/{tenant}/query`
pub async fn query(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Query(mut params): Params,
) -> Result<Json<Value>, ApiError> {
    let tenant = scope.tenant().clone();
    let selection = take_filter(&mut params, true)?;
    let from = take(&mut params, "from")
        .ok_or_else(|| bad("from is required (RFC 3339 or Unix seconds)"))?;
    let to =
        take(&mut params, "to").ok_or_else(|| bad("to is required (RFC 3339 or Unix seconds)"))?;
    let (from, to) = (parse_time("from", &from)?, parse_time("to", &to)?);
    if from >= to {
        return Err(bad("from must be before to"));
    }
    let step = match take(&mut params, "step") {
        Some(s) => parse_step(&s)?,
        None => query::auto_step(to - from, 1_000),
    };
    let points = match step {
        Step::Fixed(w) => (to - from) / w,
        Step::Days(n) => (to - from) / (i64::from(n) * 86_400_000_000),
    };
    if points > MAX_POINTS {
        return Err(bad(format!(
            "step: {points} points over this range; at most {MAX_POINTS}, use a larger step"
        )));
    }
    let agg = match take(&mut params, "agg") {
        Some(a) => parse_agg(&a)?,
        None => Agg::Avg,
    };
    refuse_unknown(&params)?;

    let series = read::series(&api.pool, &scope, &selection, MAX_SERIES as i64 + 1).await?;
    if series.len() > MAX_SERIES {
        return Err(bad(format!(
            "the selection holds more than {MAX_SERIES} series; narrow it with device, metric, tag or series"
        )));
    }
    let zone = read::time_zone(&api.pool, &tenant).await?;
    let tz: Tz = zone.and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC);
    let buckets = Buckets::new(step, tz, from);
    let segments = query::plan(from, to, &buckets, &Horizons::now(&api.retention));
    let ids: Vec<i64> = series.iter().map(|s| s.id).collect();
    let folded = query::fold(&api.pool, tenant.as_str(), &ids, &segments, &buckets).await?;
    let series: Vec<Value> = series
        .iter()
        .map(|row| {
            let mut s = series_json(row);
            let points: Vec<Value> = folded
                .get(&row.id)
                .into_iter()
                .flatten()
                .map(|(t, p)| json!([rfc3339(*t), agg.value(p)]))
                .collect();
            s["points"] = Value::Array(points);
            s
        })
        .collect();
    let segments: Vec<Value> = segments
        .iter()
        .map(|s| json!({ "tier": s.tier, "from": rfc3339(s.from), "to": rfc3339(s.to) }))
        .collect();
    Ok(Json(json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "step": match step {
            Step::Fixed(w) => format!("{}s", w / 1_000_000),
            Step::Days(n) => format!("{n}d"),
        },
        "agg": agg,
        "time_zone": tz.name(),
        "segments": segments,
        "series": series,
    })))
}
