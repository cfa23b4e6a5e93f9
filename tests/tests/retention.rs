//! Retention on a real PostgreSQL (native partitions) or TimescaleDB
//! (hypertables, with `DASH_TEST_DB=timescaledb`): old partitions go, recent
//! data and the coarser tiers stay, and late data older than a tier's
//! retention is left out of that tier only.

use dash_aggregator::config::RetentionConfig;
use dash_aggregator::storage::retention::{self, Layout};
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::fixture::payload;
use dash_tests::pg::{TestPostgres, expected_layout};

const SEC: i64 = 1_000_000;
const DAY: i64 = 86_400 * SEC;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// One batch of series `dev-0` with a reading of 1.0 at each time.
fn batch(seq: u64, times: &[i64]) -> Vec<u8> {
    payload(
        seq,
        vec![SeriesBlock {
            key: SeriesKey::new("dev-0", "temp"),
            timestamps: times.to_vec(),
            values: vec![1.0; times.len()],
        }],
    )
}

fn keep(raw_days: u32, hourly_days: u32) -> RetentionConfig {
    RetentionConfig {
        raw_days,
        hourly_days,
        ..RetentionConfig::default()
    }
}

async fn count(pg: &TestPostgres, sql: &str, from: i64, to: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(from as f64 / 1e6)
        .bind(to as f64 / 1e6)
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

const RAW: &str =
    "SELECT count(*) FROM samples WHERE ts >= to_timestamp($1) AND ts < to_timestamp($2)";
const HOURLY: &str = "SELECT coalesce(sum(count), 0)::int8 FROM rollup_hourly WHERE bucket >= to_timestamp($1) AND bucket < to_timestamp($2)";
const DAILY: &str = "SELECT coalesce(sum(count), 0)::int8 FROM rollup_daily WHERE bucket >= to_timestamp($1) - interval '1 day' AND bucket < to_timestamp($2)";

#[tokio::test]
async fn retention_drops_old_partitions_keeps_recent_data_and_leaves_coarser_tiers_intact() {
    let pg = TestPostgres::start().await;
    assert_eq!(
        retention::layout(&pg.pool).await.unwrap(),
        expected_layout()
    );
    let (t, agent) = (TenantId::new("acme").unwrap(), AgentId::new("gw").unwrap());
    let now = now();
    // 60 readings (one a minute) 30 days, 9 days and 1 hour ago.
    let at = |back: i64| -> Vec<i64> { (0..60).map(|i| now - back + i * 60 * SEC).collect() };
    let (old, week_old, recent) = (at(30 * DAY), at(9 * DAY), at(3_600 * SEC));
    // Written while a month of raw data was kept.
    let ing = pg.ingestor_keeping(keep(60, 90));
    for (seq, times) in [(1, &old), (2, &week_old), (3, &recent)] {
        ing.handle(&t, &agent, &batch(seq, times)).await.unwrap();
    }
    let span = |times: &[i64]| (times[0] - 3_600 * SEC, times[59] + 3_600 * SEC);
    let (o, w, r) = (span(&old), span(&week_old), span(&recent));
    for (from, to) in [o, w, r] {
        assert_eq!(count(&pg, RAW, from, to).await, 60);
    }
    let daily_before: Vec<(i64, f64)> =
        sqlx::query_as("SELECT count, sum FROM rollup_daily ORDER BY bucket")
            .fetch_all(&pg.pool)
            .await
            .unwrap();

    // Raw kept 7 days, hourly 14 days.
    let report = retention::run(&pg.pool, &keep(7, 14), now).await.unwrap();
    assert!(report.raw_partitions >= 2, "{report:?}");
    assert!(report.hourly_partitions >= 1, "{report:?}");
    assert_eq!(
        count(&pg, RAW, o.0, o.1).await,
        0,
        "30-day-old raw data dropped"
    );
    assert_eq!(
        count(&pg, RAW, w.0, w.1).await,
        0,
        "9-day-old raw data dropped"
    );
    assert_eq!(count(&pg, RAW, r.0, r.1).await, 60, "recent raw data kept");
    assert_eq!(
        count(&pg, HOURLY, o.0, o.1).await,
        0,
        "30-day-old hourly data dropped"
    );
    assert_eq!(
        count(&pg, HOURLY, w.0, w.1).await,
        60,
        "9-day-old hourly data kept"
    );
    assert_eq!(count(&pg, HOURLY, r.0, r.1).await, 60);
    let daily_after: Vec<(i64, f64)> =
        sqlx::query_as("SELECT count, sum FROM rollup_daily ORDER BY bucket")
            .fetch_all(&pg.pool)
            .await
            .unwrap();
    assert_eq!(
        daily_after, daily_before,
        "daily tier kept forever by default"
    );
    // A second pass finds nothing more to drop.
    let again = retention::run(&pg.pool, &keep(7, 14), now).await.unwrap();
    assert_eq!((again.raw_partitions, again.hourly_partitions), (0, 0));

    // A late batch 9 days old, through a writer keeping 7 days of raw data:
    // it lands in the hourly and daily tiers only, and is counted as expired.
    let late: Vec<i64> = week_old.iter().map(|t| t + 30 * SEC).collect();
    let ing = pg.ingestor_keeping(keep(7, 14));
    ing.handle(&t, &agent, &batch(4, &late)).await.unwrap();
    assert_eq!(count(&pg, RAW, w.0, w.1).await, 0);
    assert_eq!(count(&pg, HOURLY, w.0, w.1).await, 120);
    assert_eq!(count(&pg, DAILY, w.0, w.1).await, 120);
    assert_eq!(ing.writer().expired(), [60, 0, 0]);

    if expected_layout() == Layout::Native {
        // Partitions exist ahead of time: tomorrow's raw day and next week's hours.
        // Partitions are named after their first day (UTC).
        let ahead: bool = sqlx::query_scalar(
            "SELECT to_regclass('raw_blocks_p' || to_char((now() + interval '1 day') AT TIME ZONE 'UTC', 'YYYYMMDD')) IS NOT NULL",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap();
        assert!(ahead, "a partition for tomorrow exists");
    }
}

/// A writer that knows a partition exists, which retention then drops (as
/// another aggregator could): the write fails once, and the retry recreates it.
#[tokio::test]
async fn a_partition_dropped_under_a_writer_is_recreated_on_retry() {
    let pg = TestPostgres::start().await;
    let (t, agent) = (TenantId::new("acme").unwrap(), AgentId::new("gw").unwrap());
    let now = now();
    let two_days_ago: Vec<i64> = (0..10).map(|i| now - 2 * DAY + i * SEC).collect();
    let ing = pg.ingestor_keeping(keep(30, 90));
    ing.handle(&t, &agent, &batch(1, &two_days_ago))
        .await
        .unwrap();
    let report = retention::run(&pg.pool, &keep(1, 90), now).await.unwrap();
    assert!(report.raw_partitions >= 1, "{report:?}");
    let next: Vec<i64> = two_days_ago.iter().map(|t| t + 20 * SEC).collect();
    let payload = batch(2, &next);
    let first = ing.handle(&t, &agent, &payload).await;
    if expected_layout() == Layout::Native {
        assert!(first.is_err(), "the cached partition is gone: {first:?}");
        ing.handle(&t, &agent, &payload).await.unwrap();
    } else {
        first.unwrap(); // TimescaleDB creates the chunk again by itself
    }
    let (from, to) = (now - 3 * DAY, now);
    assert_eq!(
        count(&pg, RAW, from, to).await,
        10,
        "only the second batch is in raw"
    );
    assert_eq!(count(&pg, HOURLY, from, to).await, 20);
}
