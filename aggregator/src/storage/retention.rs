//! Retention: old data leaves each tier by whole partitions.
//!
//! `raw_blocks` and `raw_windows` (one-day partitions) and `rollup_hourly` (one-week
//! partitions, Monday to Monday UTC) are either TimescaleDB hypertables or
//! natively range-partitioned tables, decided once when the schema is created
//! (see `migrations/0003_partitions_events.sql`). Either way:
//!
//! - a partition is dropped once all of it is older than the tier's retention
//!   (`drop_chunks` or `dash_drop_partitions`), so a tier holds between its
//!   retention and one partition more;
//! - the writer ignores data that is already older than the retention when it
//!   arrives (counted as expired), so a late batch never revives a dropped
//!   partition; the coarser tiers still take it while they keep its bucket;
//! - natively, partitions are created ahead by [`run`] (raw blocks for today
//!   and the next two days, windows for today and tomorrow, hourly rollups
//!   for this week and the next) and on demand by the writer for late or
//!   early data.
//!
//! `rollup_daily` and `events` are plain tables, kept forever by default;
//! with a retention set, old rows are deleted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dash_shared::Micros;
use sqlx::PgPool;

use crate::config::RetentionConfig;

const DAY: Micros = 86_400 * 1_000_000;

/// How the time-partitioned tables are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Native range partitions, managed by Dash.
    Native,
    /// TimescaleDB hypertables.
    Hypertables,
}

/// The layout of this database's `raw_blocks`.
pub async fn layout<'e>(db: impl sqlx::PgExecutor<'e>) -> sqlx::Result<Layout> {
    let kind: i8 = sqlx::query_scalar(
        "SELECT relkind::\"char\" FROM pg_class WHERE oid = 'raw_blocks'::regclass",
    )
    .fetch_one(db)
    .await?;
    Ok(if kind == b'p' as i8 {
        Layout::Native
    } else {
        Layout::Hypertables
    })
}

/// The time before which each tier no longer keeps data, as Unix µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizons {
    pub raw: Option<Micros>,
    pub hourly: Option<Micros>,
    pub daily: Option<Micros>,
    pub events: Option<Micros>,
}

impl Horizons {
    pub fn at(config: &RetentionConfig, now: Micros) -> Horizons {
        let back = |days: u32| (days > 0).then(|| now - i64::from(days) * DAY);
        Horizons {
            raw: back(config.raw_days),
            hourly: back(config.hourly_days),
            daily: back(config.daily_days),
            events: back(config.events_days),
        }
    }

    pub fn now(config: &RetentionConfig) -> Horizons {
        Horizons::at(config, Utc::now().timestamp_micros())
    }
}

/// Whether `t` is still inside a tier whose horizon is `h`.
pub fn kept(h: Option<Micros>, t: Micros) -> bool {
    h.is_none_or(|h| t >= h)
}

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Partitions or chunks dropped from `raw_blocks`.
    pub raw_partitions: i64,
    /// Partitions or chunks dropped from `raw_windows`.
    pub window_partitions: i64,
    /// Partitions or chunks dropped from `rollup_hourly`.
    pub hourly_partitions: i64,
    pub daily_rows: u64,
    pub event_rows: u64,
    /// Raw chunks compressed (TimescaleDB with the Timescale licence).
    pub compressed: i64,
}

fn ts(us: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Creates the native partitions that `now` and the next days will need.
pub async fn create_ahead(pool: &PgPool, now: Micros) -> sqlx::Result<()> {
    for (table, at) in [
        ("raw_blocks", now),
        ("raw_blocks", now + DAY),
        ("raw_blocks", now + 2 * DAY),
        ("raw_windows", now),
        ("raw_windows", now + DAY),
        ("rollup_hourly", now),
        ("rollup_hourly", now + 7 * DAY),
    ] {
        sqlx::query("SELECT dash_partition_for($1, $2)")
            .bind(table)
            .bind(ts(at))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// One retention pass at `now`: drops what is older than each tier keeps,
/// compresses if asked and licensed, and creates native partitions ahead.
/// Waits at most a few seconds for locks; what it could not do now, the
/// next pass does.
pub async fn run(pool: &PgPool, config: &RetentionConfig, now: Micros) -> sqlx::Result<Report> {
    let layout = layout(pool).await?;
    // First, so that a drop waiting out its lock timeout never leaves the
    // writer to create today's partitions inside ingest transactions.
    if layout == Layout::Native {
        create_ahead(pool, now).await?;
    }
    let h = Horizons::at(config, now);
    let mut report = Report::default();
    for (table, horizon, out) in [
        ("raw_blocks", h.raw, &mut report.raw_partitions),
        ("raw_windows", h.raw, &mut report.window_partitions),
        ("rollup_hourly", h.hourly, &mut report.hourly_partitions),
    ] {
        let Some(horizon) = horizon else { continue };
        let sql = match layout {
            Layout::Native => "SELECT dash_drop_partitions($1, $2)::int8",
            Layout::Hypertables => {
                "SELECT count(*) FROM drop_chunks($1::regclass, older_than => $2)"
            }
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        *out = sqlx::query_scalar(sql)
            .bind(table)
            .bind(ts(horizon))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    for (sql, horizon, out) in [
        (
            "DELETE FROM rollup_daily WHERE bucket < $1",
            h.daily,
            &mut report.daily_rows,
        ),
        (
            "DELETE FROM events WHERE ts < $1",
            h.events,
            &mut report.event_rows,
        ),
    ] {
        if let Some(horizon) = horizon {
            *out = sqlx::query(sql)
                .bind(ts(horizon))
                .execute(pool)
                .await?
                .rows_affected();
        }
    }
    if layout == Layout::Hypertables && config.compress_raw_after_days > 0 {
        report.compressed =
            compress(pool, now - i64::from(config.compress_raw_after_days) * DAY).await?;
    }
    Ok(report)
}

/// Compresses raw chunks older than `before`, if the server's TimescaleDB
/// runs under the Timescale licence (the Apache build refuses compression).
async fn compress(pool: &PgPool, before: Micros) -> sqlx::Result<i64> {
    let license: Option<String> =
        sqlx::query_scalar("SELECT current_setting('timescaledb.license', true)")
            .fetch_one(pool)
            .await?;
    if license.as_deref() != Some("timescale") {
        tracing::warn!(
            license = license.as_deref().unwrap_or("none"),
            "retention.compress_raw_after_days needs TimescaleDB under the Timescale licence; raw chunks stay uncompressed"
        );
        return Ok(0);
    }
    let enabled: bool = sqlx::query_scalar(
        "SELECT compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_name = 'raw_blocks'",
    )
    .fetch_one(pool)
    .await?;
    if !enabled {
        sqlx::query("ALTER TABLE raw_blocks SET (timescaledb.compress, timescaledb.compress_segmentby = 'series_id', timescaledb.compress_orderby = 'bucket')")
            .execute(pool)
            .await?;
    }
    sqlx::query_scalar(
        "SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('raw_blocks', older_than => $1) c",
    )
    .bind(ts(before))
    .fetch_one(pool)
    .await
}

/// Runs [`run`] now and then every `config.every_secs` until `stop`.
pub async fn run_loop(
    pool: PgPool,
    config: RetentionConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match run(&pool, &config, Utc::now().timestamp_micros()).await {
            Ok(r) if r != Report::default() => tracing::info!(?r, "retention pass"),
            Ok(_) => tracing::debug!("retention pass: nothing to drop"),
            Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying next round"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(config.every_secs)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_follow_the_configured_days_and_zero_keeps_forever() {
        let config = RetentionConfig::default();
        let now = 1_800_000_000_000_000;
        let h = Horizons::at(&config, now);
        assert_eq!(h.raw, Some(now - 7 * DAY));
        assert_eq!(h.hourly, Some(now - 90 * DAY));
        assert_eq!((h.daily, h.events), (None, None));
        assert!(kept(h.raw, now - 7 * DAY));
        assert!(!kept(h.raw, now - 7 * DAY - 1));
        assert!(kept(h.daily, 0));
    }
}
