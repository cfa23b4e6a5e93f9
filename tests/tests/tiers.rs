//! The storage tiers on a real PostgreSQL: rollups equal a recomputation from
//! the raw tier whatever the delivery order, and tenant-local days follow DST.

use dash_aggregator::ingest::Delivery;
use dash_shared::wire::{self, Limits};
use dash_shared::{AgentId, Batch, Message, SeriesBlock, SeriesKey, StreamId, TenantId};
use dash_tests::pg::TestPostgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// 2026-03-28T00:00:00Z: the three days after it hold Europe's spring DST change.
const START: i64 = 1_774_656_000_000_000;

/// `(series, seconds after START, value in quarters)`.
type Sample = (usize, i64, i64);

fn batches(samples: &[Sample], chunk: usize, incarnation: u64) -> Vec<Vec<u8>> {
    samples
        .chunks(chunk)
        .enumerate()
        .map(|(i, chunk)| {
            let mut series: Vec<SeriesBlock> = Vec::new();
            for (s, secs, q) in chunk {
                let key = SeriesKey::new(format!("dev-{s}"), "temp");
                let block = match series.iter_mut().find(|b| b.key == key) {
                    Some(b) => b,
                    None => {
                        series.push(SeriesBlock {
                            key,
                            timestamps: vec![],
                            values: vec![],
                        });
                        series.last_mut().unwrap()
                    }
                };
                block.timestamps.push(START + secs * 1_000_000);
                block.values.push(*q as f64 / 4.0);
            }
            let batch = Batch {
                stream: StreamId {
                    name: "telemetry".into(),
                    incarnation,
                },
                seq: i as u64 + 1,
                floor: 1,
                series,
            };
            wire::encode(&Message::Batch(batch), &Limits::default()).unwrap()
        })
        .collect()
}

type Row = (i64, i64, i64, f64, f64, f64, f64, i64, f64, i64);

const US: &str = "(extract(epoch FROM {}) * 1000000)::int8";

fn us(col: &str) -> String {
    US.replace("{}", col)
}

async fn stored(pg: &TestPostgres, table: &str, tenant: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT series_id, {}, count, sum, min, max, first, {}, last, {} FROM {table} WHERE tenant = $1 ORDER BY 1, 2",
        us("bucket"),
        us("first_ts"),
        us("last_ts")
    );
    sqlx::query_as(&sql)
        .bind(tenant)
        .fetch_all(&pg.pool)
        .await
        .unwrap()
}

async fn recomputed(pg: &TestPostgres, bucket: &str, tenant: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT series_id, {}, count(*), sum(value), min(value), max(value),
                (array_agg(value ORDER BY ts, value))[1], {},
                (array_agg(value ORDER BY ts DESC, value DESC))[1], {}
         FROM samples s WHERE tenant = $1 GROUP BY 1, 2 ORDER BY 1, 2",
        us(bucket),
        us("min(ts)"),
        us("max(ts)")
    );
    sqlx::query_as(&sql)
        .bind(tenant)
        .fetch_all(&pg.pool)
        .await
        .unwrap()
}

fn case() -> impl Strategy<Value = (Vec<Sample>, usize, Vec<usize>, usize, usize)> {
    // On a 10-minute grid, so equal times (with different values) are common.
    let secs = (0i64..3 * 144).prop_map(|k| k * 600);
    let samples = prop::collection::vec((0usize..3, secs, -4000i64..4000), 1..300);
    (
        samples,
        1usize..60,
        prop::collection::vec(0usize..1000, 0..20),
        0usize..4,
        1usize..6,
    )
}

const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York"];

#[test]
fn rollups_equal_a_recomputation_from_raw_for_late_out_of_order_and_duplicate_batches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(TestPostgres::start());
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&case(), |(samples, chunk, extra, zone, group)| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let tenant = format!("t{n}");
            let zone = ZONES[zone];
            rt.block_on(async {
                sqlx::query("INSERT INTO tenants (tenant, time_zone) VALUES ($1, $2)")
                    .bind(&tenant)
                    .bind(zone)
                    .execute(&pg.pool)
                    .await
                    .unwrap();
                let ing = pg.ingestor();
                let (t, agent) = (
                    TenantId::new(tenant.clone()).unwrap(),
                    AgentId::new("gw").unwrap(),
                );
                let payloads = batches(&samples, chunk, n);
                // Every batch once, latest first, then redeliveries of random ones.
                let order: Vec<usize> = (0..payloads.len())
                    .rev()
                    .chain(extra.iter().map(|i| i % payloads.len()))
                    .collect();
                // In groups, as a worker takes them from its queue: one transaction
                // may hold several batches, and the same batch twice.
                for group in order.chunks(group) {
                    let deliveries: Vec<Delivery<'_>> = group
                        .iter()
                        .map(|i| Delivery {
                            tenant: &t,
                            agent: &agent,
                            payload: &payloads[*i],
                        })
                        .collect();
                    ing.handle_group(&deliveries).await.unwrap();
                }
                let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM samples WHERE tenant = $1")
                    .bind(&tenant)
                    .fetch_one(&pg.pool)
                    .await
                    .unwrap();
                prop_assert_eq!(raw as usize, samples.len());
                prop_assert_eq!(
                    stored(&pg, "rollup_hourly", &tenant).await,
                    recomputed(&pg, "date_trunc('hour', ts)", &tenant).await
                );
                let day = format!("date_trunc('day', ts, '{zone}')");
                prop_assert_eq!(
                    stored(&pg, "rollup_daily", &tenant).await,
                    recomputed(&pg, &day, &tenant).await
                );
                Ok(())
            })
        })
        .unwrap();
}

#[tokio::test]
async fn a_berlin_tenant_gets_23_and_25_hour_days_with_correct_sums() {
    let pg = TestPostgres::start().await;
    sqlx::query("INSERT INTO tenants (tenant, time_zone) VALUES ('berlin', 'Europe/Berlin')")
        .execute(&pg.pool)
        .await
        .unwrap();
    let ing = pg.ingestor();
    let (t, agent) = (
        TenantId::new("berlin").unwrap(),
        AgentId::new("gw").unwrap(),
    );
    // One reading of 1.0 every 10 minutes around both DST changes of 2026.
    let autumn = 1_792_800_000i64 - START / 1_000_000; // 2026-10-24T00:00:00Z, in seconds after START
    let samples: Vec<Sample> = (0..3 * 144)
        .flat_map(|i| [(0, i * 600, 4), (0, autumn + i * 600, 4)])
        .collect();
    for p in batches(&samples, 500, 1) {
        ing.handle(&t, &agent, &p).await.unwrap();
    }
    let days: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT to_char(bucket AT TIME ZONE 'Europe/Berlin', 'YYYY-MM-DD HH24:MI'), count, sum
         FROM rollup_daily WHERE tenant = 'berlin' ORDER BY bucket",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    let day = |d: &str| {
        days.iter()
            .find(|(b, _, _)| b.starts_with(d))
            .map(|(b, c, s)| (b.clone(), *c, *s))
            .unwrap()
    };
    assert_eq!(
        day("2026-03-29"),
        ("2026-03-29 00:00".into(), 23 * 6, 23.0 * 6.0)
    );
    assert_eq!(
        day("2026-10-25"),
        ("2026-10-25 00:00".into(), 25 * 6, 25.0 * 6.0)
    );
    assert_eq!(day("2026-03-30").1, 24 * 6);
    let hours: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rollup_hourly WHERE tenant = 'berlin'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(hours, 2 * 72, "hourly buckets are UTC hours");
}

#[tokio::test]
async fn compaction_merges_closed_spans_without_changing_samples_or_rollups() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor();
    let (t, agent) = (TenantId::new("c").unwrap(), AgentId::new("gw").unwrap());
    // Two series, an hour at 1 Hz, in batches of 30 s: 120 blocks per series, late ones last.
    let mut samples: Vec<Sample> = (0..3600)
        .flat_map(|s| [(0, s, s % 97), (1, s, -(s % 89))])
        .collect();
    samples.rotate_left(1000);
    for p in batches(&samples, 60, 1) {
        ing.handle(&t, &agent, &p).await.unwrap();
    }
    let snapshot = |pool: sqlx::PgPool| async move {
        let raw: Vec<(i64, i64, f64)> = sqlx::query_as(&format!(
            "SELECT series_id, {}, value FROM samples ORDER BY 1, 2, 3",
            us("ts")
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        let blocks: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_blocks")
            .fetch_one(&pool)
            .await
            .unwrap();
        (raw, blocks)
    };
    let (before, blocks_before) = snapshot(pg.pool.clone()).await;
    let hourly = stored(&pg, "rollup_hourly", "c").await;
    let mut merged = 0;
    loop {
        let n = dash_aggregator::tiers::compact(&pg.pool, std::time::Duration::ZERO, 1)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        merged += n;
    }
    let (after, blocks_after) = snapshot(pg.pool.clone()).await;
    assert_eq!(after.len(), 7200);
    assert_eq!(before, after, "compaction changed the samples");
    assert!(blocks_before > 100, "{blocks_before} blocks before");
    assert_eq!(
        blocks_after,
        2 * 2,
        "one block per series and 30-minute span"
    );
    assert!(merged >= 4);
    assert_eq!(stored(&pg, "rollup_hourly", "c").await, hourly);
}
