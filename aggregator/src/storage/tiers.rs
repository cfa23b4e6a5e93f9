//! The storage tiers, written in the ingest transaction.
//!
//! # Layout
//!
//! - `raw_blocks`: one row per series, per batch, per 30-minute span
//!   (`bucket`): `offsets int4[]` (µs after `bucket`) and `vals float8[]`. A
//!   view `samples (tenant, series_id, ts, value)` expands them.
//! - `rollup_hourly`, `rollup_daily`: `(series_id, bucket)` ->
//!   count, sum, min, max, first (+ its time), last (+ its time). Daily
//!   buckets are the tenant's local days (`tenants.time_zone`, IANA), so a
//!   DST day has 23 or 25 hours.
//!
//! # Exactness
//!
//! The batch's samples are folded into [`Partial`]s per bucket, then merged
//! into the rollup rows with one upsert per tier. Every merge is commutative
//! and associative (first/last compare `(time, value)`, so equal times never
//! depend on arrival order), and it runs in the same transaction as the raw
//! insert and the dedupe ledger: late, out-of-order and redelivered batches
//! leave the rollups equal to a recomputation from the raw tier (sums up to
//! floating-point rounding). Upserts go in key order, so concurrent batches
//! touching the same buckets cannot deadlock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;
use dash_shared::{Micros, TenantId};
use sqlx::PgConnection;

use crate::config::RetentionConfig;
use crate::storage::retention::{self, Horizons, Layout};
use crate::storage::{Admitted, BinaryCopy, SampleWriter};
use crate::telemetry::metrics::Metrics;

/// Span of one raw block, in µs (fits `int4` offsets).
pub const BLOCK_SPAN: Micros = 30 * 60 * 1_000_000;
const HOUR: Micros = 3_600 * 1_000_000;
const DAY: Micros = 24 * HOUR;

/// Aggregates of some samples of one series in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partial {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// `(time, value)` with the smallest time (then value).
    pub first: (Micros, f64),
    /// `(time, value)` with the largest time (then value).
    pub last: (Micros, f64),
}

fn before(a: (Micros, f64), b: (Micros, f64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl Partial {
    pub fn new(ts: Micros, v: f64) -> Partial {
        Partial {
            count: 1,
            sum: v,
            min: v,
            max: v,
            first: (ts, v),
            last: (ts, v),
        }
    }

    pub fn add(&mut self, ts: Micros, v: f64) {
        self.merge(&Partial::new(ts, v));
    }

    /// The same merge the upsert does in SQL.
    pub fn merge(&mut self, o: &Partial) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if before(o.first, self.first) {
            self.first = o.first;
        }
        if before(self.last, o.last) {
            self.last = o.last;
        }
    }
}

/// Start of the UTC hour holding `ts`.
pub fn hour_of(ts: Micros) -> Micros {
    ts.div_euclid(HOUR) * HOUR
}

/// Start (as UTC µs) of the local day in `tz` holding `ts`.
pub fn day_of(ts: Micros, tz: Tz) -> Micros {
    let Some(utc) = DateTime::from_timestamp_micros(ts) else {
        return hour_of(ts);
    };
    let date = utc.with_timezone(&tz).date_naive();
    // Midnight may not exist (a DST jump at 00:00): the day starts at the first local time that does.
    (0..24)
        .find_map(|h| {
            tz.from_local_datetime(&date.and_time(NaiveTime::from_hms_opt(h, 0, 0)?))
                .earliest()
        })
        .map_or_else(|| hour_of(ts), |start| start.timestamp_micros())
}

/// [`day_of`] with the last day remembered: a batch's samples mostly fall on
/// one local day, and a time-zone conversion per sample is the writer's
/// costliest step otherwise.
struct LocalDays {
    tz: Tz,
    /// The remembered day is `[start, next)`; empty at first.
    start: Micros,
    next: Micros,
}

impl LocalDays {
    fn new(tz: Tz) -> Self {
        LocalDays {
            tz,
            start: 0,
            next: 0,
        }
    }

    fn start_of(&mut self, ts: Micros) -> Micros {
        if !(self.start..self.next).contains(&ts) {
            self.start = day_of(ts, self.tz);
            // The next day begins at the first whole hour after `start` in another day.
            self.next = (1..=48)
                .map(|h| day_of(self.start + h * HOUR, self.tz))
                .find(|d| *d > self.start)
                .unwrap_or(self.start + 24 * HOUR);
        }
        self.start
    }
}

/// Raw blocks plus hourly and daily rollups.
#[derive(Debug, Default)]
pub struct TieredWriter {
    zones: Mutex<HashMap<TenantId, Tz>>,
    retention: RetentionConfig,
    /// The layout, once read, and the native partitions known to exist
    /// (`(table, start)`), so the writer asks for one only when it is new.
    partitions: Mutex<Option<(Layout, KnownPartitions)>>,
    /// Samples older than a tier's retention when they arrived, per tier.
    expired: [AtomicU64; 3],
    metrics: Option<Arc<Metrics>>,
}

/// `(table, start)` of native partitions known to exist.
type KnownPartitions = HashSet<(&'static str, Micros)>;

/// Start of the native `raw_blocks` partition (one UTC day) holding `t`.
fn raw_partition(t: Micros) -> Micros {
    t.div_euclid(DAY) * DAY
}

/// Start of the native `rollup_hourly` partition (a week from Monday 00:00
/// UTC) holding `t`; the same bins as `dash_partitioning`.
fn hourly_partition(t: Micros) -> Micros {
    const MONDAY: Micros = 946_857_600_000_000; // 2000-01-03T00:00:00Z
    (t - MONDAY).div_euclid(7 * DAY) * 7 * DAY + MONDAY
}

/// `(series, span) -> (tenant, offsets, values)`: the raw blocks of a group.
type Spans<'a> = BTreeMap<(i64, Micros), (&'a TenantId, Vec<i32>, Vec<f64>)>;

/// `(tenant, series, start, width in seconds, aggregates)` of an edge window.
type WindowRow<'a> = (&'a TenantId, i64, Micros, u32, Partial);

/// `(series, bucket) -> (tenant, partial)`, in key order.
type Rollups = BTreeMap<(i64, Micros), (TenantId, Partial)>;

impl TieredWriter {
    /// A writer that ignores data older than `retention` keeps.
    pub fn new(retention: RetentionConfig) -> Self {
        TieredWriter {
            retention,
            ..TieredWriter::default()
        }
    }

    /// Also counts expired samples on `metrics` (`/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Samples ignored so far because they were older than the raw, hourly
    /// and daily retention when they arrived.
    pub fn expired(&self) -> [u64; 3] {
        self.expired.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    /// Creates the native partitions these rows need and that are not known
    /// to exist. Hypertables create their chunks themselves.
    async fn ensure_partitions(
        &self,
        conn: &mut PgConnection,
        spans: &Spans<'_>,
        windows: &[WindowRow<'_>],
        hourly: &Rollups,
    ) -> sqlx::Result<()> {
        let layout = self
            .partitions
            .lock()
            .expect("partitions")
            .as_ref()
            .map(|p| p.0);
        let layout = match layout {
            Some(l) => l,
            None => {
                let l = retention::layout(&mut *conn).await?;
                *self.partitions.lock().expect("partitions") = Some((l, HashSet::new()));
                l
            }
        };
        if layout == Layout::Hypertables {
            return Ok(());
        }
        let needed: BTreeSet<(&'static str, Micros)> = spans
            .keys()
            .map(|(_, span)| ("raw_blocks", raw_partition(*span)))
            .chain(windows.iter().map(|w| ("raw_windows", raw_partition(w.2))))
            .chain(
                hourly
                    .keys()
                    .map(|(_, b)| ("rollup_hourly", hourly_partition(*b))),
            )
            .collect();
        for key in needed {
            let known = self
                .partitions
                .lock()
                .expect("partitions")
                .as_ref()
                .is_some_and(|(_, set)| set.contains(&key));
            if known {
                continue;
            }
            sqlx::query(
                "SELECT dash_partition_for($1, to_timestamp(0) + $2 * interval '1 microsecond')",
            )
            .bind(key.0)
            .bind(key.1)
            .execute(&mut *conn)
            .await?;
            if let Some((_, set)) = self.partitions.lock().expect("partitions").as_mut() {
                set.insert(key);
            }
        }
        Ok(())
    }

    /// The tenant's zone, registering the tenant (UTC) on first sight. Cached:
    /// change a zone before the tenant's first data, then restart.
    async fn zone(&self, conn: &mut PgConnection, tenant: &TenantId) -> sqlx::Result<Tz> {
        if let Some(tz) = self.zones.lock().expect("zone cache").get(tenant) {
            return Ok(*tz);
        }
        sqlx::query("INSERT INTO tenants (tenant) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await?;
        let name: String = sqlx::query_scalar("SELECT time_zone FROM tenants WHERE tenant = $1")
            .bind(tenant.as_str())
            .fetch_one(&mut *conn)
            .await?;
        let tz: Tz = name.parse().map_err(|_| {
            sqlx::Error::Protocol(format!(
                "tenant {tenant} has an unknown time zone {name:?} in tenants.time_zone"
            ))
        })?;
        self.zones
            .lock()
            .expect("zone cache")
            .insert(tenant.clone(), tz);
        Ok(tz)
    }
}

impl SampleWriter for TieredWriter {
    async fn write(&self, conn: &mut PgConnection, batches: &[Admitted<'_>]) -> sqlx::Result<u64> {
        let written = self.write_tiers(conn, batches).await;
        if let Err(sqlx::Error::Database(e)) = &written {
            // "no partition of relation found for row": a partition this
            // writer thought existed was dropped (by retention, maybe on
            // another aggregator). Forget what it knew; the retry creates it.
            if e.code().as_deref() == Some("23514") {
                *self.partitions.lock().expect("partitions") = None;
            }
        }
        written
    }
}

impl TieredWriter {
    async fn write_tiers(
        &self,
        conn: &mut PgConnection,
        batches: &[Admitted<'_>],
    ) -> sqlx::Result<u64> {
        let (mut hourly, mut daily) = (Rollups::new(), Rollups::new());
        // One block per series and span for the whole group of batches.
        let mut spans = Spans::new();
        let mut windows: Vec<WindowRow<'_>> = Vec::new();
        let mut events = Vec::new();
        let h = Horizons::now(&self.retention);
        let mut expired = [0u64; 3];
        let mut n = 0u64;
        for admitted in batches {
            let tenant = admitted.tenant;
            let mut days = LocalDays::new(self.zone(conn, tenant).await?);
            for (block, id) in admitted.batch.series.iter().zip(admitted.series_ids) {
                for (ts, v) in block.timestamps.iter().zip(&block.values) {
                    n += 1;
                    if retention::kept(h.raw, *ts) {
                        let span = ts.div_euclid(BLOCK_SPAN) * BLOCK_SPAN;
                        let (_, offsets, vals) = spans
                            .entry((*id, span))
                            .or_insert_with(|| (tenant, Vec::new(), Vec::new()));
                        offsets.push((ts - span) as i32);
                        vals.push(*v);
                    } else {
                        expired[0] += 1;
                    }
                    for (i, tier, bucket, horizon) in [
                        (1, &mut hourly, hour_of(*ts), h.hourly),
                        (2, &mut daily, days.start_of(*ts), h.daily),
                    ] {
                        if !retention::kept(horizon, bucket) {
                            expired[i] += 1;
                            continue;
                        }
                        tier.entry((*id, bucket))
                            .and_modify(|(_, p)| p.add(*ts, *v))
                            .or_insert_with(|| (tenant.clone(), Partial::new(*ts, *v)));
                    }
                }
            }
            // Windows lie inside one hour and one local day (their width divides 15 minutes).
            let window_ids = &admitted.series_ids[admitted.batch.series.len()..];
            for (block, id) in admitted.batch.windows.iter().zip(window_ids) {
                for w in &block.windows {
                    let p = Partial {
                        count: w.count as i64,
                        sum: w.sum,
                        min: w.min,
                        max: w.max,
                        first: (w.start + Micros::from(w.first_offset), w.first),
                        last: (w.start + Micros::from(w.last_offset), w.last),
                    };
                    n += w.count;
                    if retention::kept(h.raw, w.start) {
                        windows.push((tenant, *id, w.start, block.width_secs, p));
                    } else {
                        expired[0] += w.count;
                    }
                    for (i, tier, bucket, horizon) in [
                        (1, &mut hourly, hour_of(w.start), h.hourly),
                        (2, &mut daily, days.start_of(w.start), h.daily),
                    ] {
                        if !retention::kept(horizon, bucket) {
                            expired[i] += w.count;
                            continue;
                        }
                        tier.entry((*id, bucket))
                            .and_modify(|(_, q)| q.merge(&p))
                            .or_insert_with(|| (tenant.clone(), p));
                    }
                }
            }
            for e in &admitted.batch.events {
                if retention::kept(h.events, e.time) {
                    events.push((tenant, admitted.agent, e));
                }
            }
        }
        self.ensure_partitions(conn, &spans, &windows, &hourly)
            .await?;
        if !windows.is_empty() {
            let mut copy = BinaryCopy::new(12);
            for (tenant, id, start, width, p) in &windows {
                copy.row();
                copy.text(tenant.as_str());
                copy.int8(*id);
                copy.timestamptz(*start);
                copy.int4(*width as i32);
                copy.int8(p.count);
                copy.float8(p.sum);
                copy.float8(p.min);
                copy.float8(p.max);
                copy.float8(p.first.1);
                copy.timestamptz(p.first.0);
                copy.float8(p.last.1);
                copy.timestamptz(p.last.0);
            }
            let mut sink = conn
                .copy_in_raw("COPY raw_windows (tenant, series_id, bucket, width, count, sum, min, max, first, first_ts, last, last_ts) FROM STDIN (FORMAT binary)")
                .await?;
            sink.send(copy.finish()).await?;
            sink.finish().await?;
        }
        if !events.is_empty() {
            let mut copy = BinaryCopy::new(6);
            for (tenant, agent, e) in &events {
                copy.row();
                copy.text(tenant.as_str());
                copy.text(agent.as_str());
                copy.text(&e.source);
                copy.timestamptz(e.time);
                copy.text(&e.kind);
                copy.jsonb(&e.body);
            }
            let mut sink = conn
                .copy_in_raw("COPY events (tenant, agent, source, ts, kind, body) FROM STDIN (FORMAT binary)")
                .await?;
            sink.send(copy.finish()).await?;
            sink.finish().await?;
        }
        if !spans.is_empty() {
            let mut copy = BinaryCopy::new(5);
            for ((id, span), (tenant, offsets, vals)) in spans {
                copy.row();
                copy.text(tenant.as_str());
                copy.int8(id);
                copy.timestamptz(span);
                copy.int4_array(&offsets);
                copy.float8_array(&vals);
            }
            let mut sink = conn
                .copy_in_raw("COPY raw_blocks (tenant, series_id, bucket, offsets, vals) FROM STDIN (FORMAT binary)")
                .await?;
            sink.send(copy.finish()).await?;
            sink.finish().await?;
        }
        upsert(conn, "rollup_hourly", &hourly).await?;
        upsert(conn, "rollup_daily", &daily).await?;
        for (counter, e) in self.expired.iter().zip(expired) {
            counter.fetch_add(e, Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            m.expired(expired);
        }
        Ok(n)
    }
}

/// Merges the blocks of each closed span (ended more than `settle` ago) into
/// one block per series and span, up to `limit` spans per call; returns how
/// many spans were merged. Batches cut a series into blocks of a few samples;
/// merged, a span of a 1 Hz series is one row of 1,800 samples, which is what
/// makes the raw tier small. Samples, their order and the rollups are
/// unchanged; a late batch landing in a span meanwhile stays a block of its
/// own until the next pass.
pub async fn compact(
    pool: &sqlx::PgPool,
    settle: std::time::Duration,
    limit: i64,
) -> sqlx::Result<u64> {
    let merged = sqlx::query(
        "WITH spans AS (
             SELECT series_id, bucket FROM raw_blocks
             WHERE bucket < now() - interval '30 minutes' - $1 * interval '1 second'
             GROUP BY series_id, bucket HAVING count(*) > 1 LIMIT $2),
         gone AS (
             DELETE FROM raw_blocks b USING spans s
             WHERE b.series_id = s.series_id AND b.bucket = s.bucket
             RETURNING b.tenant, b.series_id, b.bucket, b.offsets, b.vals)
         INSERT INTO raw_blocks (tenant, series_id, bucket, offsets, vals)
         SELECT g.tenant, g.series_id, g.bucket, array_agg(u.off ORDER BY u.off, u.value), array_agg(u.value ORDER BY u.off, u.value)
         FROM gone g, LATERAL unnest(g.offsets, g.vals) AS u(off, value)
         GROUP BY g.tenant, g.series_id, g.bucket",
    )
    .bind(settle.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(merged.rows_affected())
}

/// Compacts closed spans every `every` until `stop`.
pub async fn compact_loop(
    pool: sqlx::PgPool,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        loop {
            match compact(&pool, std::time::Duration::from_secs(300), 5_000).await {
                Ok(0) => break,
                Ok(n) => tracing::debug!(spans = n, "raw blocks compacted"),
                Err(e) => {
                    tracing::warn!(error = %e, "raw block compaction failed; retrying next round");
                    break;
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }
}

/// Merges partials into a rollup table, in key order.
async fn upsert(conn: &mut PgConnection, table: &str, rows: &Rollups) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&(i64, Micros), &Partial) -> i64| {
        rows.iter().map(|(k, (_, p))| f(k, p)).collect::<Vec<i64>>()
    };
    let fcol = |f: fn(&Partial) -> f64| rows.values().map(|(_, p)| f(p)).collect::<Vec<f64>>();
    let tenants: Vec<&str> = rows.values().map(|(t, _)| t.as_str()).collect();
    let sql = format!(
        "INSERT INTO {table} AS r (tenant, series_id, bucket, count, sum, min, max, first, first_ts, last, last_ts)
         SELECT t, s, to_timestamp(0) + b * interval '1 microsecond', c, su, mi, ma,
                f, to_timestamp(0) + ft * interval '1 microsecond', l, to_timestamp(0) + lt * interval '1 microsecond'
         FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::float8[], $6::float8[], $7::float8[],
                     $8::float8[], $9::int8[], $10::float8[], $11::int8[]) AS u(t, s, b, c, su, mi, ma, f, ft, l, lt)
         ON CONFLICT (series_id, bucket) DO UPDATE SET
             count = r.count + EXCLUDED.count,
             sum = r.sum + EXCLUDED.sum,
             min = LEAST(r.min, EXCLUDED.min),
             max = GREATEST(r.max, EXCLUDED.max),
             first = CASE WHEN (EXCLUDED.first_ts, EXCLUDED.first) < (r.first_ts, r.first) THEN EXCLUDED.first ELSE r.first END,
             first_ts = LEAST(r.first_ts, EXCLUDED.first_ts),
             last = CASE WHEN (EXCLUDED.last_ts, EXCLUDED.last) > (r.last_ts, r.last) THEN EXCLUDED.last ELSE r.last END,
             last_ts = GREATEST(r.last_ts, EXCLUDED.last_ts)"
    );
    sqlx::query(&sql)
        .bind(tenants)
        .bind(col(|k, _| k.0))
        .bind(col(|k, _| k.1))
        .bind(col(|_, p| p.count))
        .bind(fcol(|p| p.sum))
        .bind(fcol(|p| p.min))
        .bind(fcol(|p| p.max))
        .bind(fcol(|p| p.first.1))
        .bind(col(|_, p| p.first.0))
        .bind(fcol(|p| p.last.1))
        .bind(col(|_, p| p.last.0))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Micros = 1_774_742_400_000_000; // 2026-03-29T00:00:00Z

    #[test]
    fn berlin_days_around_dst_have_23_and_25_hours() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 is the spring-forward day in Berlin: it starts at 23:00Z the day before.
        let spring = day_of(T + 12 * HOUR, tz);
        let next = day_of(T + 36 * HOUR, tz);
        assert_eq!(spring, T - HOUR);
        assert_eq!(next - spring, 23 * HOUR);
        // 2026-10-25 falls back: 25 hours.
        let autumn_noon = 1_792_929_600_000_000; // 2026-10-25T12:00:00Z
        let start = day_of(autumn_noon, tz);
        assert_eq!(day_of(autumn_noon + 24 * HOUR, tz) - start, 25 * HOUR);
    }

    #[test]
    fn partials_merge_the_same_in_any_order() {
        let samples = [(5, 1.0), (1, 7.0), (1, 3.0), (9, 2.0), (9, 8.0)];
        let mut forward = Partial::new(samples[0].0, samples[0].1);
        samples[1..].iter().for_each(|(t, v)| forward.add(*t, *v));
        let mut backward = Partial::new(samples[4].0, samples[4].1);
        samples[..4]
            .iter()
            .rev()
            .for_each(|(t, v)| backward.add(*t, *v));
        assert_eq!(forward, backward);
        assert_eq!(
            (forward.first, forward.last, forward.count),
            ((1, 3.0), (9, 8.0), 5)
        );
    }

    #[test]
    fn remembered_days_agree_with_day_of_across_dst_and_half_hour_zones() {
        for zone in [
            "Europe/Berlin",
            "Asia/Kolkata",
            "America/New_York",
            "Australia/Lord_Howe",
            "UTC",
        ] {
            let tz: Tz = zone.parse().unwrap();
            let mut days = LocalDays::new(tz);
            // Every 7 minutes for a year, forwards, then a jump back.
            for ts in (0..75_000).map(|i| T + i * 7 * 60_000_000).chain([T]) {
                assert_eq!(days.start_of(ts), day_of(ts, tz), "{zone} at {ts}");
            }
        }
    }

    #[test]
    fn hours_floor_negative_times_too() {
        assert_eq!(hour_of(HOUR + 1), HOUR);
        assert_eq!(hour_of(-1), -HOUR);
    }
}
