//! Reads for the query API: which series match a filter, a tenant's time
//! zone, and a tier's partial aggregates over a time range. The folding of
//! those partials into step buckets is [`crate::query`]'s.

use chrono::{DateTime, Utc};
use dash_shared::{Micros, TenantId};
use serde_json::Value;
use sqlx::PgPool;

use crate::auth::access::Scope;
use crate::storage::tiers::{BLOCK_SPAN, Partial};

/// Which table family answers a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Raw,
    Hourly,
    Daily,
}

/// Series of one tenant, by any of: ids, device, metric, tags (all given
/// must match; tags as a JSON object the series' tags contain).
#[derive(Debug, Default, Clone)]
pub struct SeriesFilter {
    pub ids: Option<Vec<i64>>,
    pub device: Option<String>,
    pub metric: Option<String>,
    pub tags: serde_json::Map<String, Value>,
}

/// One series as the API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    pub id: i64,
    pub device: String,
    pub metric: String,
    pub tags: Value,
}

/// At most `limit` series of the scope's tenant matching `filter`, by
/// device, metric, id: only those whose device the scope reaches.
pub async fn series(
    pool: &PgPool,
    scope: &Scope,
    filter: &SeriesFilter,
    limit: i64,
) -> sqlx::Result<Vec<SeriesRow>> {
    let reach = scope.reach();
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT s.id, s.device, s.metric, s.tags::text FROM series s
         LEFT JOIN devices d ON d.tenant = s.tenant AND d.device = s.device
         WHERE s.tenant = $1 AND ($2::text IS NULL OR s.device = $2) AND ($3::text IS NULL OR s.metric = $3)
           AND s.tags @> $4::text::jsonb AND ($5::int8[] IS NULL OR s.id = ANY($5))
           AND dash_in_scope(s.tenant, d.place, d.customer, $7, $8)
         ORDER BY s.device, s.metric, s.id LIMIT $6",
    )
    .bind(scope.tenant().as_str())
    .bind(filter.device.as_deref())
    .bind(filter.metric.as_deref())
    .bind(Value::Object(filter.tags.clone()).to_string())
    .bind(filter.ids.as_deref())
    .bind(limit)
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, device, metric, tags)| SeriesRow {
            id,
            device,
            metric,
            tags: serde_json::from_str(&tags).unwrap_or(Value::Null),
        })
        .collect())
}

/// The tenant's configured IANA zone name, if it has one.
pub async fn time_zone(pool: &PgPool, tenant: &TenantId) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT time_zone FROM tenants WHERE tenant = $1")
        .bind(tenant.as_str())
        .fetch_optional(pool)
        .await
}

/// Whether the database answers a statement.
pub async fn ping(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

/// `(series, bucket, offsets, values)` of a raw block.
type BlockRow = (i64, DateTime<Utc>, Vec<i32>, Vec<f64>);

/// `(series, bucket, count, sum, min, max, first, first_ts, last, last_ts)`.
type RollupRow = (
    i64,
    DateTime<Utc>,
    i64,
    f64,
    f64,
    f64,
    f64,
    DateTime<Utc>,
    f64,
    DateTime<Utc>,
);

/// Calls `add(series, time, partial)` for everything `tier` holds for
/// `series` of `tenant` in `[from, to)`: for the raw tier each sample (from
/// the raw blocks) and each window agents pre-aggregated, timed at its
/// start; for rollups each bucket, timed at its start.
///
/// The statements are not kept prepared: PostgreSQL switches a prepared
/// statement to a generic plan after five runs, and on a hypertable a
/// generic plan read every chunk in full (250 ms instead of 3 ms for a
/// 90-day chart in the query benchmark).
pub async fn partials(
    pool: &PgPool,
    tenant: &str,
    series: &[i64],
    tier: Tier,
    (from, to): (Micros, Micros),
    mut add: impl FnMut(i64, Micros, &Partial),
) -> sqlx::Result<()> {
    let ts = |us: Micros| DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    if tier == Tier::Raw {
        let rows: Vec<BlockRow> = sqlx::query_as(
            "SELECT series_id, bucket, offsets, vals FROM raw_blocks
             WHERE tenant = $1 AND series_id = ANY($2) AND bucket > $3 AND bucket < $4",
        )
        .bind(tenant)
        .bind(series)
        .bind(ts(from - BLOCK_SPAN))
        .bind(ts(to))
        .persistent(false)
        .fetch_all(pool)
        .await?;
        for (id, bucket, offsets, vals) in rows {
            let base = bucket.timestamp_micros();
            for (off, v) in offsets.iter().zip(&vals) {
                let t = base + Micros::from(*off);
                if (from..to).contains(&t) {
                    add(id, t, &Partial::new(t, *v));
                }
            }
        }
    }
    let table = match tier {
        Tier::Raw => "raw_windows",
        Tier::Hourly => "rollup_hourly",
        Tier::Daily => "rollup_daily",
    };
    let rows: Vec<RollupRow> = sqlx::query_as(&format!(
        "SELECT series_id, bucket, count, sum, min, max, first, first_ts, last, last_ts FROM {table}
         WHERE tenant = $1 AND series_id = ANY($2) AND bucket >= $3 AND bucket < $4"
    ))
    .bind(tenant)
    .bind(series)
    .bind(ts(from))
    .bind(ts(to))
    .persistent(false)
    .fetch_all(pool)
    .await?;
    for (id, bucket, count, sum, min, max, first, first_ts, last, last_ts) in rows {
        let p = Partial {
            count,
            sum,
            min,
            max,
            first: (first_ts.timestamp_micros(), first),
            last: (last_ts.timestamp_micros(), last),
        };
        add(id, bucket.timestamp_micros(), &p);
    }
    Ok(())
}

/// Which events to list: all given must match.
#[derive(Debug, Clone)]
pub struct EventFilter {
    pub kind: Option<String>,
    pub source: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// One event as the API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub ts: DateTime<Utc>,
    pub source: String,
    pub agent: String,
    pub kind: String,
    pub body: Value,
}

/// At most `limit` events of the scope's tenant in `[from, to)`, oldest
/// first: only those whose source (a device, a till) the scope reaches.
pub async fn events(
    pool: &PgPool,
    scope: &Scope,
    f: &EventFilter,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    let reach = scope.reach();
    sqlx::query_as(
        "SELECT e.ts, e.source, e.agent, e.kind, e.body FROM events e
         LEFT JOIN devices d ON d.tenant = e.tenant AND d.device = e.source
         WHERE e.tenant = $1 AND e.ts >= $2 AND e.ts < $3
           AND ($4::text IS NULL OR e.kind = $4) AND ($5::text IS NULL OR e.source = $5)
           AND dash_in_scope(e.tenant, d.place, d.customer, $7, $8)
         ORDER BY e.ts, e.source LIMIT $6",
    )
    .bind(scope.tenant().as_str())
    .bind(f.from)
    .bind(f.to)
    .bind(&f.kind)
    .bind(&f.source)
    .bind(limit)
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await
}

/// An agent (a gateway, a POS box) as the API lists it: its last status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct AgentRow {
    pub agent: String,
    pub online: Option<bool>,
    pub version: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    /// Buffer depth, backlog, drops, clock and faults as the agent sent them.
    pub status: Option<Value>,
    /// Devices whose last reading it delivered, within the scope.
    pub devices: i64,
}

/// The scope's agents: every agent of the tenant for a whole-tenant scope,
/// otherwise those that delivered the last reading of a device it reaches.
pub async fn agents(pool: &PgPool, scope: &Scope) -> sqlx::Result<Vec<AgentRow>> {
    let reach = scope.reach();
    sqlx::query_as(
        "WITH known AS (
             SELECT agent FROM agent_status WHERE tenant = $1
             UNION SELECT agent FROM agents WHERE tenant = $1
             UNION SELECT agent FROM devices WHERE tenant = $1 AND agent IS NOT NULL
         ), reached AS (
             SELECT d.agent, count(*) AS devices FROM devices d
             WHERE d.tenant = $1 AND d.agent IS NOT NULL
               AND dash_in_scope(d.tenant, d.place, d.customer, $2, $3)
             GROUP BY d.agent
         )
         SELECT k.agent, s.online, s.version, s.received_at, s.status,
                coalesce(r.devices, 0) AS devices
         FROM known k
         LEFT JOIN agent_status s ON s.tenant = $1 AND s.agent = k.agent
         LEFT JOIN reached r ON r.agent = k.agent
         WHERE $2::text[] IS NULL OR r.agent IS NOT NULL
         ORDER BY k.agent",
    )
    .bind(scope.tenant().as_str())
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await
}
