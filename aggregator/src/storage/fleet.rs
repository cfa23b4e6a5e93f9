//! The fleet's tables: `places`, `customers`, `devices` and
//! `device_transitions` (see migration 0006). The rules (what each state
//! means, when a sweep runs) are in [`crate::fleet`].

use chrono::{DateTime, Utc};
use dash_shared::Micros;
use serde::Serialize;
use sqlx::PgPool;

use crate::auth::access::Scope;
use crate::fleet::tracker::{Report, Seen, SeenDevice};

/// Writes what ingest saw of each device: registers new devices, moves
/// first and last reading and arrival, keeps the newest agent, and folds
/// the cadence in (a quarter of the new figure each time, so one odd batch
/// does not swing it). A status the device sent itself sets what it says
/// (online, firmware, model, errors) unless a newer one is stored already:
/// a backlog drained late does not undo the present.
pub async fn record_seen(pool: &PgPool, seen: &[SeenDevice]) -> sqlx::Result<()> {
    if seen.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&SeenDevice) -> String| -> Vec<String> { seen.iter().map(f).collect() };
    let times =
        |f: &dyn Fn(&Seen) -> Micros| -> Vec<i64> { seen.iter().map(|(_, s)| f(s)).collect() };
    let said = |f: &dyn Fn(&Report) -> Option<String>| -> Vec<Option<String>> {
        seen.iter()
            .map(|(_, s)| s.report.as_ref().and_then(f))
            .collect()
    };
    sqlx::query(
        "INSERT INTO devices AS d (tenant, device, agent, first_reading, last_reading, last_arrival,
                                   learned_cadence_ms, reported_at, reported_online, firmware, model, errors)
         SELECT t, dev, a, to_timestamp(f / 1e6), to_timestamp(l / 1e6), to_timestamp(r / 1e6), c,
                to_timestamp(rt / 1e6), ro, fw, m, e::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                     $8::int8[], $9::bool[], $10::text[], $11::text[], $12::text[])
             AS u(t, dev, a, f, l, r, c, rt, ro, fw, m, e)
         ORDER BY t, dev
         ON CONFLICT (tenant, device) DO UPDATE SET
             agent = CASE WHEN d.last_reading IS NULL OR EXCLUDED.last_reading >= d.last_reading
                 THEN EXCLUDED.agent ELSE d.agent END,
             first_reading = LEAST(d.first_reading, EXCLUDED.first_reading),
             last_reading = GREATEST(d.last_reading, EXCLUDED.last_reading),
             last_arrival = GREATEST(d.last_arrival, EXCLUDED.last_arrival),
             learned_cadence_ms = CASE
                 WHEN EXCLUDED.learned_cadence_ms IS NULL THEN d.learned_cadence_ms
                 WHEN d.learned_cadence_ms IS NULL THEN EXCLUDED.learned_cadence_ms
                 ELSE (d.learned_cadence_ms * 3 + EXCLUDED.learned_cadence_ms) / 4 END,
             reported_at = CASE WHEN EXCLUDED.reported_at >= coalesce(d.reported_at, '-infinity')
                 THEN EXCLUDED.reported_at ELSE d.reported_at END,
             -- A newer status that does not say offline is the device talking.
             reported_online = CASE WHEN EXCLUDED.reported_at >= coalesce(d.reported_at, '-infinity')
                 THEN EXCLUDED.reported_online ELSE d.reported_online END,
             firmware = CASE WHEN EXCLUDED.reported_at >= coalesce(d.reported_at, '-infinity')
                 THEN coalesce(EXCLUDED.firmware, d.firmware) ELSE d.firmware END,
             model = CASE WHEN EXCLUDED.reported_at >= coalesce(d.reported_at, '-infinity')
                 THEN coalesce(EXCLUDED.model, d.model) ELSE d.model END,
             errors = CASE WHEN EXCLUDED.reported_at >= coalesce(d.reported_at, '-infinity')
                 THEN coalesce(EXCLUDED.errors, d.errors) ELSE d.errors END",
    )
    .bind(col(&|((t, _), _)| t.to_string()))
    .bind(col(&|((_, d), _)| d.clone()))
    .bind(col(&|(_, s)| s.agent.to_string()))
    .bind(times(&|s| s.first))
    .bind(times(&|s| s.last))
    .bind(times(&|s| s.arrival))
    .bind(seen.iter().map(|(_, s)| s.cadence_ms).collect::<Vec<Option<i64>>>())
    .bind(
        seen.iter()
            .map(|(_, s)| s.report.as_ref().map(|r| r.time))
            .collect::<Vec<Option<i64>>>(),
    )
    .bind(
        seen.iter()
            .map(|(_, s)| s.report.as_ref().and_then(|r| r.online))
            .collect::<Vec<Option<bool>>>(),
    )
    .bind(said(&|r| r.firmware.clone()))
    .bind(said(&|r| r.model.clone()))
    .bind(said(&|r| r.errors.clone()))
    .execute(pool)
    .await?;
    Ok(())
}

/// How a sweep decides, in seconds.
#[derive(Debug, Clone)]
pub struct SweepRules {
    /// Silence allowed when nothing else says: no per-device interval, no
    /// model interval, no learned cadence.
    pub default_interval_secs: i64,
    /// A learned cadence allows this many missed reports.
    pub learned_intervals: i64,
    /// The smallest interval a learned cadence gives.
    pub min_learned_secs: i64,
    /// `(model, interval)` pairs from the config.
    pub models: Vec<(String, i64)>,
    /// A gateway whose last status is older than this is offline.
    pub gateway_silence_secs: i64,
}

/// One state change made by a sweep.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Transition {
    pub tenant: String,
    pub device: String,
    pub from_state: String,
    pub to_state: String,
}

/// What a sweep changed: how many devices, and the first few for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub changed: u64,
    /// At most [`SWEEP_SAMPLE`] of the changes.
    pub first: Vec<Transition>,
}

/// Changes a sweep hands back by name.
pub const SWEEP_SAMPLE: i64 = 20;

/// Computes every device's state now and stores the changes with their
/// transitions, in one statement.
///
/// A device is silent when its last reading is older than its allowed
/// interval; its deadline is that reading plus the interval. Its gateway
/// (the agent that delivered its last reading) was last heard at the later
/// of its last status and the last batch it delivered for any device.
///
/// - never_reported: no reading yet.
/// - offline: it said so itself (a `device.status` with `online: false`,
///   often its last will) and has sent no reading since.
/// - online: not silent.
/// - unknown: silent, and its gateway says it is offline or has not been
///   heard for `gateway_silence_secs`: nothing shows the device is the one
///   at fault.
/// - (unchanged): silent, and its gateway is up but has not been heard
///   since the deadline: the next status or batch decides, so a device is
///   not called offline, or unknown, a moment before its gateway speaks.
/// - delayed: silent, its gateway was heard after the deadline and holds
///   records stamped no later than the deadline: its readings may be
///   among them.
/// - offline: silent, and its gateway, heard after the deadline, holds
///   nothing that could be the device's.
///
/// A device whose row changed after the statement read it (a flush of
/// another replica, a person's edit) is left for the next sweep rather
/// than judged on what it was.
pub async fn sweep(pool: &PgPool, rules: &SweepRules) -> sqlx::Result<Swept> {
    let (models, intervals): (Vec<String>, Vec<i64>) = rules.models.iter().cloned().unzip();
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "WITH kinds AS (
             SELECT m, i FROM UNNEST($1::text[], $2::int8[]) AS k(m, i)
         ), delivered AS (
             SELECT tenant, agent, max(last_arrival) AS at
             FROM devices WHERE agent IS NOT NULL GROUP BY tenant, agent
         ), gw AS (
             SELECT s.tenant, s.agent, s.online,
                    greatest(s.received_at, d.at) AS heard,
                    -- numeric: an agent's u64 figures never overflow the statement.
                    coalesce((s.status->'buffer'->>'records')::numeric, 0) AS held,
                    least(coalesce((s.status->'buffer'->>'oldest')::numeric, 0), 4102444800000000) AS oldest
             FROM agent_status s
             LEFT JOIN delivered d ON d.tenant = s.tenant AND d.agent = s.agent
         ), judged AS (
             SELECT d.ctid AS row, d.tenant, d.device, d.state AS before, d.last_reading,
                    d.reported_online, d.reported_at,
                    d.last_reading + make_interval(secs => coalesce(d.expected_interval_secs, k.i,
                        CASE WHEN d.learned_cadence_ms IS NOT NULL
                            THEN greatest(d.learned_cadence_ms * $4 / 1000, $5) END,
                        $3)::float8) AS deadline,
                    gw.online, gw.heard, gw.held, gw.oldest
             FROM devices d
             LEFT JOIN kinds k ON k.m = d.model
             LEFT JOIN gw ON gw.tenant = d.tenant AND gw.agent = d.agent
         ), next AS (
             SELECT row, tenant, device, before, last_reading, deadline, online, heard, held,
                 reported_online, CASE
                 WHEN last_reading IS NULL THEN 'never_reported'
                 WHEN NOT reported_online AND reported_at >= last_reading THEN 'offline'
                 WHEN deadline > now() THEN 'online'
                 WHEN heard IS NULL THEN 'offline'
                 WHEN NOT online OR heard < now() - make_interval(secs => $6) THEN 'unknown'
                 WHEN heard < deadline THEN before
                 WHEN held > 0 AND oldest > 0 AND to_timestamp(oldest / 1e6) <= deadline
                      THEN 'delayed'
                 ELSE 'offline' END AS after
             FROM judged
         ), changed AS (
             UPDATE devices d SET state = n.after, state_since = now()
             FROM next n
             -- By the row version read: one changed since (a flush, an
             -- edit) is skipped, not judged on what it was.
             WHERE d.ctid = n.row AND n.before <> n.after
             RETURNING d.tenant, d.device, n.before, n.after, n.last_reading, n.deadline,
                       n.online, n.heard, n.held, n.reported_online
         ), logged AS (
             INSERT INTO device_transitions (tenant, device, at, from_state, to_state,
                 last_reading, deadline, gateway_online, gateway_heard, gateway_held, reported)
             SELECT tenant, device, now(), before, after,
                    last_reading, deadline, online, heard, held, reported_online FROM changed
         )
         SELECT tenant, device, before, after, count(*) OVER () FROM changed LIMIT $7",
    )
    .bind(&models)
    .bind(&intervals)
    .bind(rules.default_interval_secs)
    .bind(rules.learned_intervals)
    .bind(rules.min_learned_secs)
    .bind(rules.gateway_silence_secs as f64)
    .bind(SWEEP_SAMPLE)
    .fetch_all(pool)
    .await?;
    Ok(Swept {
        changed: rows.first().map_or(0, |r| r.4 as u64),
        first: rows
            .into_iter()
            .map(|(tenant, device, from_state, to_state, _)| Transition {
                tenant,
                device,
                from_state,
                to_state,
            })
            .collect(),
    })
}

/// Devices per state, all tenants.
pub async fn count_by_state(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT state, count(*) FROM devices GROUP BY state ORDER BY state")
        .fetch_all(pool)
        .await
}

/// A place as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Place {
    pub place: String,
    pub parent: Option<String>,
    pub name: String,
    pub kind: String,
    pub path: String,
}

/// Adds a place under `parent` (a root when `None`); false when its id is
/// taken in the tenant. Fails if the parent does not exist.
pub async fn add_place(
    pool: &PgPool,
    tenant: &str,
    place: &str,
    parent: Option<&str>,
    name: &str,
    kind: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO places (tenant, place, parent, name, kind, path)
         SELECT $1, $2, $3, $4, $5, coalesce((SELECT path FROM places WHERE tenant = $1 AND place = $3), '/') || $2 || '/'
         WHERE $3::text IS NULL OR EXISTS (SELECT 1 FROM places WHERE tenant = $1 AND place = $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(place)
    .bind(parent)
    .bind(name)
    .bind(kind)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every place of a tenant, by path (parents before children).
pub async fn places(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<Place>> {
    sqlx::query_as(
        "SELECT place, parent, name, kind, path FROM places WHERE tenant = $1 ORDER BY path",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// The places a scope sees: the subtrees it reaches, and the places of
/// the devices of its customers.
pub async fn places_in(pool: &PgPool, scope: &Scope) -> sqlx::Result<Vec<Place>> {
    let reach = scope.reach();
    sqlx::query_as(
        "SELECT p.place, p.parent, p.name, p.kind, p.path FROM places p
         WHERE p.tenant = $1 AND ($2::text[] IS NULL
             OR EXISTS (SELECT 1 FROM places a
                        WHERE a.tenant = p.tenant AND a.place = ANY($2) AND starts_with(p.path, a.path))
             OR EXISTS (SELECT 1 FROM devices d
                        WHERE d.tenant = p.tenant AND d.place = p.place AND d.customer = ANY($3)))
         ORDER BY p.path",
    )
    .bind(scope.tenant().as_str())
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await
}

/// The customers a scope sees: its own, and those owning devices it reaches.
pub async fn customers_in(pool: &PgPool, scope: &Scope) -> sqlx::Result<Vec<Customer>> {
    let reach = scope.reach();
    sqlx::query_as(
        "SELECT c.customer, c.name, c.email, c.phone FROM customers c
         WHERE c.tenant = $1 AND ($2::text[] IS NULL OR c.customer = ANY($3)
             OR EXISTS (SELECT 1 FROM devices d WHERE d.tenant = c.tenant AND d.customer = c.customer
                        AND dash_in_scope(d.tenant, d.place, d.customer, $2, $3)))
         ORDER BY c.customer",
    )
    .bind(scope.tenant().as_str())
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await
}

/// Whether a device at `place` owned by `customer` would be within the
/// scope's reach (both may be `None`).
pub async fn covers(
    pool: &PgPool,
    scope: &Scope,
    place: Option<&str>,
    customer: Option<&str>,
) -> sqlx::Result<bool> {
    let reach = scope.reach();
    sqlx::query_scalar("SELECT dash_in_scope($1, $2, $3, $4, $5)")
        .bind(scope.tenant().as_str())
        .bind(place)
        .bind(customer)
        .bind(&reach.places)
        .bind(&reach.customers)
        .fetch_one(pool)
        .await
}

/// A customer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Customer {
    pub customer: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

/// Adds or renames a customer.
pub async fn put_customer(pool: &PgPool, tenant: &str, c: &Customer) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO customers (tenant, customer, name, email, phone) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, customer) DO UPDATE SET name = EXCLUDED.name,
             email = EXCLUDED.email, phone = EXCLUDED.phone",
    )
    .bind(tenant)
    .bind(&c.customer)
    .bind(&c.name)
    .bind(&c.email)
    .bind(&c.phone)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn customers(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<Customer>> {
    sqlx::query_as(
        "SELECT customer, name, email, phone FROM customers WHERE tenant = $1 ORDER BY customer",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// What a person sets on a device (API, CLI, CSV). `None` leaves a field
/// as it is.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMeta {
    pub place: Option<String>,
    pub customer: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub expected_interval_secs: Option<i32>,
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Sets metadata on devices, registering those not seen yet, all in one
/// transaction: an import with one bad row changes nothing.
pub async fn set_meta(
    pool: &PgPool,
    tenant: &str,
    rows: &[(String, DeviceMeta)],
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for (device, m) in rows {
        sqlx::query(
            "INSERT INTO devices AS d (tenant, device, place, customer, latitude, longitude, model,
                                       firmware, expected_interval_secs, labels)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, '{}'))
             ON CONFLICT (tenant, device) DO UPDATE SET
                 place = coalesce(EXCLUDED.place, d.place),
                 customer = coalesce(EXCLUDED.customer, d.customer),
                 latitude = coalesce(EXCLUDED.latitude, d.latitude),
                 longitude = coalesce(EXCLUDED.longitude, d.longitude),
                 model = coalesce(EXCLUDED.model, d.model),
                 firmware = coalesce(EXCLUDED.firmware, d.firmware),
                 expected_interval_secs = coalesce(EXCLUDED.expected_interval_secs, d.expected_interval_secs),
                 labels = CASE WHEN $10 IS NULL THEN d.labels ELSE EXCLUDED.labels END",
        )
        .bind(tenant)
        .bind(device)
        .bind(&m.place)
        .bind(&m.customer)
        .bind(m.latitude)
        .bind(m.longitude)
        .bind(&m.model)
        .bind(&m.firmware)
        .bind(m.expected_interval_secs)
        .bind(m.labels.clone().map(serde_json::Value::Object))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A device as listed.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Device {
    pub device: String,
    pub agent: Option<String>,
    pub place: Option<String>,
    pub customer: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub labels: serde_json::Value,
    pub expected_interval_secs: Option<i32>,
    pub learned_cadence_ms: Option<i64>,
    pub first_reading: Option<DateTime<Utc>>,
    pub last_reading: Option<DateTime<Utc>>,
    pub last_arrival: Option<DateTime<Utc>>,
    pub state: String,
    pub state_since: DateTime<Utc>,
    /// What it last said of itself: online or not, and when.
    pub reported_online: Option<bool>,
    pub reported_at: Option<DateTime<Utc>>,
    /// `[{"code", "message"}]` it last reported; null if it never said.
    pub errors: Option<serde_json::Value>,
}

/// Which devices to list; every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub state: Option<String>,
    /// The place or anything below it.
    pub within: Option<String>,
    pub customer: Option<String>,
    pub agent: Option<String>,
    pub device: Option<String>,
}

/// The filter that keeps a device listing within the scope's reach.
#[cfg(not(feature = "plant-scope-leak"))]
const DEVICE_SCOPE: &str = "dash_in_scope(d.tenant, d.place, d.customer, $8, $9)";
/// The planted leak (see the crate's features): every device of the tenant.
#[cfg(feature = "plant-scope-leak")]
const DEVICE_SCOPE: &str = "($8::text[] IS NULL OR $9::text[] IS NULL OR true)";
// `--all-features` must not build a leaking aggregator by accident.
#[cfg(feature = "plant-scope-leak")]
const _: () = assert!(
    option_env!("DASH_ALLOW_PLANTED_LEAK").is_some(),
    "plant-scope-leak drops the device listing's scope filter: build it only through deploy/scripts/planted-leak.sh"
);

/// The scope's devices matching `f`, by name.
pub async fn devices(
    pool: &PgPool,
    scope: &Scope,
    f: &DeviceFilter,
    limit: i64,
) -> sqlx::Result<Vec<Device>> {
    let reach = scope.reach();
    sqlx::query_as(&format!(
        "SELECT d.device, d.agent, d.place, d.customer, d.latitude, d.longitude, d.model, d.firmware,
                d.labels, d.expected_interval_secs, d.learned_cadence_ms, d.first_reading,
                d.last_reading, d.last_arrival, d.state, d.state_since,
                d.reported_online, d.reported_at, d.errors
         FROM devices d LEFT JOIN places p ON p.tenant = d.tenant AND p.place = d.place
         WHERE d.tenant = $1 AND ($2::text IS NULL OR d.state = $2)
           AND ($3::text IS NULL OR starts_with(p.path,
                (SELECT path FROM places WHERE tenant = $1 AND place = $3)))
           AND ($4::text IS NULL OR d.customer = $4)
           AND ($5::text IS NULL OR d.agent = $5)
           AND ($6::text IS NULL OR d.device = $6)
           AND {DEVICE_SCOPE}
         ORDER BY d.device LIMIT $7"
    ))
    .bind(scope.tenant().as_str())
    .bind(&f.state)
    .bind(&f.within)
    .bind(&f.customer)
    .bind(&f.agent)
    .bind(&f.device)
    .bind(limit)
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await
}

/// A device's state changes, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StateChange {
    pub at: DateTime<Utc>,
    pub from_state: String,
    pub to_state: String,
    pub detail: serde_json::Value,
}

pub async fn transitions(
    pool: &PgPool,
    tenant: &str,
    device: &str,
    limit: i64,
) -> sqlx::Result<Vec<StateChange>> {
    sqlx::query_as(
        "SELECT at, from_state, to_state, coalesce(detail, jsonb_build_object(
                    'last_reading', last_reading, 'deadline', deadline,
                    'gateway_online', gateway_online, 'gateway_heard', gateway_heard,
                    'gateway_held', gateway_held, 'reported_online', reported)) AS detail
         FROM device_transitions
         WHERE tenant = $1 AND device = $2 ORDER BY at DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(device)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Device counts per state for each place: its own devices and its subtree's.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PlaceCounts {
    pub place: String,
    pub state: String,
    pub devices: i64,
}

/// Of the scope's devices only.
pub async fn counts_by_place(pool: &PgPool, scope: &Scope) -> sqlx::Result<Vec<PlaceCounts>> {
    let reach = scope.reach();
    sqlx::query_as(
        "SELECT a.place, d.state, count(*) AS devices
         FROM places a
         JOIN places p ON p.tenant = a.tenant AND starts_with(p.path, a.path)
         JOIN devices d ON d.tenant = p.tenant AND d.place = p.place
         WHERE a.tenant = $1 AND dash_in_scope(d.tenant, d.place, d.customer, $2, $3)
         GROUP BY a.place, d.state ORDER BY a.place, d.state",
    )
    .bind(scope.tenant().as_str())
    .bind(&reach.places)
    .bind(&reach.customers)
    .fetch_all(pool)
    .await
}
