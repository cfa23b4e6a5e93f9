//! The storage tiers on a real PostgreSQL: rollups equal a recomputation from
//! the raw tier whatever the delivery order, and tenant-local days follow DST.

use dash_aggregator::query::{self, Step};
use dash_aggregator::storage::retention::Horizons;
use dash_shared::events::EventMetric;
use dash_shared::{
    AgentId, Batch, Event, SeriesBlock, SeriesKey, StreamId, TenantId, Window, WindowBlock,
};
use dash_tests::fixture::{deliveries, encode, stream};
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
            encode(&Batch::samples(
                stream(incarnation),
                i as u64 + 1,
                1,
                series,
            ))
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
                    let group = group.iter().map(|i| &payloads[*i][..]);
                    ing.handle_group(&deliveries(&t, &agent, group))
                        .await
                        .unwrap();
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
        let n = dash_aggregator::storage::tiers::compact(&pg.pool, std::time::Duration::ZERO, 1)
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

/// Windows of `width_secs` computed from samples the way an agent would.
fn windows_of(samples: &[Sample], width_secs: u32) -> Vec<WindowBlock> {
    use std::collections::BTreeMap;
    let w = i64::from(width_secs) * 1_000_000;
    let mut per: BTreeMap<(usize, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for (s, secs, q) in samples {
        let t = START + secs * 1_000_000;
        per.entry((*s, t.div_euclid(w) * w))
            .or_default()
            .push((t, *q as f64 / 4.0));
    }
    let mut blocks: BTreeMap<usize, Vec<Window>> = BTreeMap::new();
    for ((s, start), mut points) in per {
        points.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (first, last) = (points[0], points[points.len() - 1]);
        blocks.entry(s).or_default().push(Window {
            start,
            count: points.len() as u64,
            sum: points.iter().map(|p| p.1).sum(),
            min: points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            max: points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
            first: first.1,
            first_offset: (first.0 - start) as u32,
            last: last.1,
            last_offset: (last.0 - start) as u32,
        });
    }
    blocks
        .into_iter()
        .map(|(s, windows)| WindowBlock {
            key: SeriesKey::new(format!("dev-{s}"), "temp"),
            width_secs,
            windows,
        })
        .collect()
}

/// Rollups of a tenant without its series ids (two tenants have different ids).
async fn rollups_by_key(pg: &TestPostgres, table: &str, tenant: &str) -> Vec<(String, Row)> {
    let names: std::collections::HashMap<i64, String> =
        sqlx::query_as::<_, (i64, String)>("SELECT id, device FROM series WHERE tenant = $1")
            .bind(tenant)
            .fetch_all(&pg.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut rows: Vec<(String, Row)> = stored(pg, table, tenant)
        .await
        .into_iter()
        .map(|mut r| {
            let name = names[&r.0].clone();
            r.0 = 0;
            (name, r)
        })
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows
}

#[test]
fn edge_windows_land_in_the_tiers_exactly_like_the_samples_they_summarise() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(TestPostgres::start());
    let secs = (0i64..3 * 86_400 / 7).prop_map(|k| k * 7);
    let samples = prop::collection::vec((0usize..3, secs, -4000i64..4000), 1..400);
    let widths = prop::sample::select(vec![1u32, 60, 300, 900]);
    let n = std::sync::atomic::AtomicU64::new(0);
    TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    })
    .run(
        &(samples, widths, 0usize..ZONES.len()),
        |(samples, width, zone)| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let (raw, win) = (format!("raw{n}"), format!("win{n}"));
            rt.block_on(async {
                for t in [&raw, &win] {
                    sqlx::query("INSERT INTO tenants (tenant, time_zone) VALUES ($1, $2)")
                        .bind(t)
                        .bind(ZONES[zone])
                        .execute(&pg.pool)
                        .await
                        .unwrap();
                }
                let ing = pg.ingestor();
                let agent = AgentId::new("gw").unwrap();
                for p in batches(&samples, 50, n) {
                    ing.handle(&TenantId::new(raw.clone()).unwrap(), &agent, &p)
                        .await
                        .unwrap();
                }
                let windows = windows_of(&samples, width);
                let mut batch = Batch::samples(
                    StreamId {
                        name: "windows".into(),
                        incarnation: n,
                    },
                    1,
                    1,
                    vec![],
                );
                batch.windows = windows;
                let payload = encode(&batch);
                let win_t = TenantId::new(win.clone()).unwrap();
                ing.handle(&win_t, &agent, &payload).await.unwrap();
                ing.handle(&win_t, &agent, &payload).await.unwrap(); // a redelivery
                for table in ["rollup_hourly", "rollup_daily"] {
                    prop_assert_eq!(
                        rollups_by_key(&pg, table, &raw).await,
                        rollups_by_key(&pg, table, &win).await,
                        "{}",
                        table
                    );
                }
                let windows: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(count), 0)::int8 FROM raw_windows WHERE tenant = $1",
                )
                .bind(&win)
                .fetch_one(&pg.pool)
                .await
                .unwrap();
                prop_assert_eq!(windows as usize, samples.len());
                // The query path reads windows where it reads raw samples: a step that is
                // a multiple of the width gives the same points for both tenants.
                let step = Step::Fixed(i64::from(width.max(300)) * 1_000_000);
                let (from, to) = (START, START + 3 * 86_400 * 1_000_000);
                let mut answers = Vec::new();
                for tenant in [&raw, &win] {
                    let ids: Vec<(i64, String)> = sqlx::query_as(
                        "SELECT id, device FROM series WHERE tenant = $1 ORDER BY device",
                    )
                    .bind(tenant)
                    .fetch_all(&pg.pool)
                    .await
                    .unwrap();
                    let tz: chrono_tz::Tz = ZONES[zone].parse().unwrap();
                    let buckets = query::Buckets::new(step, tz, from);
                    let segments = query::plan(from, to, &buckets, &no_retention());
                    let id_list: Vec<i64> = ids.iter().map(|i| i.0).collect();
                    let folded = query::fold(&pg.pool, tenant, &id_list, &segments, &buckets)
                        .await
                        .unwrap();
                    let by_name: Vec<(String, Points)> = ids
                        .iter()
                        .map(|(id, name)| {
                            let points = folded[id]
                                .iter()
                                .map(|(t, p)| (*t, p.count, p.sum))
                                .collect();
                            (name.clone(), points)
                        })
                        .collect();
                    answers.push(by_name);
                }
                prop_assert_eq!(&answers[0], &answers[1]);
                Ok(())
            })
        },
    )
    .unwrap();
}

#[tokio::test]
async fn events_are_stored_once_and_sale_amounts_become_series() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor().with_event_metrics(vec![EventMetric {
        kind: "sale".into(),
        field: "amount".into(),
        metric: "sales.amount".into(),
        tags: vec!["location".into(), "item".into()],
    }]);
    let (t, agent) = (
        TenantId::new("bistro").unwrap(),
        AgentId::new("pos-1").unwrap(),
    );
    let sale = |i: i64, item: &str, amount: f64| Event {
        source: "till-1".into(),
        time: START + i * 60_000_000,
        kind: "sale".into(),
        body: format!(
            r#"{{"location":"soho","item":"{item}","amount":{amount},"card":"**** 4242"}}"#
        ),
    };
    let events = vec![
        sale(0, "coffee", 3.5),
        sale(1, "coffee", 3.5),
        sale(2, "cake", 4.25),
        Event {
            kind: "drawer_open".into(),
            body: "{}".into(),
            ..sale(3, "", 0.0)
        },
    ];
    let mut batch = Batch::samples(
        StreamId {
            name: "pos".into(),
            incarnation: 7,
        },
        1,
        1,
        vec![],
    );
    batch.events = events;
    let payload = encode(&batch);
    ing.handle(&t, &agent, &payload).await.unwrap();
    let again = ing.handle(&t, &agent, &payload).await.unwrap().unwrap();
    assert_eq!(again.outcome, dash_shared::AckOutcome::Duplicate);

    let stored: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT agent, source, kind, coalesce(body->>'item', '') FROM events WHERE tenant = 'bistro' ORDER BY ts",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 4, "each event once");
    assert_eq!(
        stored[0],
        (
            "pos-1".into(),
            "till-1".into(),
            "sale".into(),
            "coffee".into()
        )
    );
    assert_eq!(stored[3].2, "drawer_open");

    let sales: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT s.tags->>'item', h.count, h.sum FROM rollup_hourly h JOIN series s ON s.id = h.series_id
         WHERE h.tenant = 'bistro' AND s.metric = 'sales.amount' AND s.device = 'till-1' ORDER BY 1",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    assert_eq!(sales, [("cake".into(), 1, 4.25), ("coffee".into(), 2, 7.0)]);
}

/// `(step start, count, sum)` of one series.
type Points = Vec<(i64, i64, f64)>;

fn no_retention() -> Horizons {
    Horizons {
        raw: None,
        hourly: None,
        daily: None,
        events: None,
    }
}
