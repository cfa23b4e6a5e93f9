//! What alert rules read: a tenant's places and devices (once per
//! evaluation cycle), the series of a metric, events aggregated per source
//! and body fields, the last of an expected event, and gateways' liveness.
//! The tiers themselves are read through [`crate::storage::read::partials`].

use chrono::{DateTime, Utc};
use dash_shared::Micros;
use serde_json::Value;
use sqlx::PgPool;

fn ts(us: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A place: `(place, name, kind, path)`.
pub type PlaceRow = (String, String, String, String);

pub async fn places(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<PlaceRow>> {
    sqlx::query_as("SELECT place, name, kind, path FROM places WHERE tenant = $1")
        .bind(tenant)
        .fetch_all(pool)
        .await
}

/// A device as rules see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeviceRow {
    pub device: String,
    pub place: Option<String>,
    pub customer: Option<String>,
    pub state: String,
    pub last_reading: Option<DateTime<Utc>>,
    pub agent: Option<String>,
}

pub async fn devices(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<DeviceRow>> {
    sqlx::query_as(
        "SELECT device, place, customer, state, last_reading, agent FROM devices WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// The series of `metric` in `tenant` whose tags hold `tags`:
/// `(id, device, tags)`.
pub async fn series_of(
    pool: &PgPool,
    tenant: &str,
    metric: &str,
    tags: &serde_json::Map<String, Value>,
) -> sqlx::Result<Vec<(i64, String, Value)>> {
    sqlx::query_as(
        "SELECT id, device, tags FROM series WHERE tenant = $1 AND metric = $2 AND tags @> $3",
    )
    .bind(tenant)
    .bind(metric)
    .bind(Value::Object(tags.clone()))
    .fetch_all(pool)
    .await
}

/// Events of one source and one set of body field values, aggregated.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventGroup {
    pub source: String,
    /// The body fields grouped by, as text (`None`: absent).
    pub fields: Vec<Option<String>>,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_ts: DateTime<Utc>,
}

/// What to aggregate of events.
#[derive(Debug, Clone, Copy)]
pub struct EventQuery<'a> {
    pub tenant: &'a str,
    pub kind: &'a str,
    /// Body fields that must match (`body @> matches`).
    pub matches: &'a serde_json::Map<String, Value>,
    /// The numeric body field aggregated: events without a number there
    /// are left out. `None`: events are counted.
    pub field: Option<&'a str>,
    /// Body fields grouped by.
    pub group_fields: &'a [String],
}

/// Events of `q` in `[from, to)`, aggregated per source and grouped
/// fields.
pub async fn event_groups(
    pool: &PgPool,
    q: EventQuery<'_>,
    (from, to): (Micros, Micros),
) -> sqlx::Result<Vec<EventGroup>> {
    sqlx::query_as(
        "WITH e AS (
             SELECT source, ts,
                    ARRAY(SELECT body ->> f FROM unnest($6::text[]) WITH ORDINALITY AS g(f, n) ORDER BY n) AS fields,
                    CASE WHEN $5::text IS NULL THEN 0 ELSE (body ->> $5)::float8 END AS v
             FROM events
             WHERE tenant = $1 AND kind = $2 AND ts >= $3 AND ts < $4 AND body @> $7
               -- A number a float8 holds, with room for sums: a hostile 1e400
               -- or 1e-400 is left out, not an error that stops the rule.
               AND CASE WHEN $5::text IS NULL THEN true
                        WHEN jsonb_typeof(body -> $5) = 'number' THEN
                            abs((body ->> $5)::numeric) < 1e18
                            AND (abs((body ->> $5)::numeric) > 1e-300 OR (body ->> $5)::numeric = 0)
                        ELSE false END)
         SELECT source, fields, count(*) AS count, sum(v) AS sum, min(v) AS min, max(v) AS max,
                (array_agg(v ORDER BY ts DESC))[1] AS last, max(ts) AS last_ts
         FROM e GROUP BY source, fields",
    )
    .bind(q.tenant)
    .bind(q.kind)
    .bind(ts(from))
    .bind(ts(to))
    .bind(q.field)
    .bind(q.group_fields)
    .bind(Value::Object(q.matches.clone()))
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// A gateway's liveness: `(agent, place, customer, offline, last heard)`.
pub type GatewayRow = (
    String,
    Option<String>,
    Option<String>,
    bool,
    Option<DateTime<Utc>>,
);

/// Every agent of `tenant` that has reported and is not revoked: offline
/// when its last status says so or is older than `silence_secs`.
pub async fn gateways(
    pool: &PgPool,
    tenant: &str,
    silence_secs: f64,
) -> sqlx::Result<Vec<GatewayRow>> {
    sqlx::query_as(
        "SELECT a.agent, a.place, a.customer,
                NOT s.online OR s.received_at < now() - make_interval(secs => $2) AS offline,
                s.received_at
         FROM agents a JOIN agent_status s ON s.tenant = a.tenant AND s.agent = a.agent
         WHERE a.tenant = $1 AND a.revoked_at IS NULL
         ORDER BY a.agent",
    )
    .bind(tenant)
    .bind(silence_secs)
    .fetch_all(pool)
    .await
}
