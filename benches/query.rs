//! A 90-day chart: one series out of 1,000, 90 days at chart resolution
//! (2-hour steps, 1,080 points), through the query API over HTTP, with the
//! default retention (raw 7 days, hourly 90 days). The tiers hold 90 days of
//! hourly and daily rollups for all 1,000 series and 7 days of raw 1 Hz
//! samples for the charted one.
//!
//! Baseline, measured in the same run on the same cluster: the same chart
//! computed in SQL from 90 days of that series' 1 Hz samples stored row per
//! point in a (series, ts)-indexed table (what a database without tiers
//! has to do).
//!
//! Run: `cargo bench -p dash-benches --bench query`
//! (`DASH_TEST_DB=timescaledb` runs it on TimescaleDB, as root.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use dash_aggregator::api::Api;
use dash_aggregator::config::{QueryToken, RetentionConfig};
use dash_aggregator::storage::BinaryCopy;
use dash_aggregator::storage::retention::{self, Layout};
use dash_aggregator::telemetry::metrics::Metrics;
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::fixture::{deliveries, payload};
use dash_tests::get_json;
use dash_tests::pg::TestPostgres;

const SERIES: usize = 1_000;
const DAYS: i64 = 90;
const RUNS: usize = 30;
const SEC: i64 = 1_000_000;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn value(t: i64) -> f64 {
    (2000 + (t * 3) % 400) as f64 / 100.0
}

fn key(s: usize) -> SeriesKey {
    SeriesKey::with_tags(
        format!("sensor-{s:04}"),
        "temperature",
        [("site".into(), "plant-2".into())],
    )
}

/// 7 days of 1 Hz samples of series 0 in batches of 5,000 (plus one sample
/// of every other series in the first, to register them).
fn raw_payloads(now: i64) -> Vec<Vec<u8>> {
    let start = now - 7 * 86_400;
    (0..7 * 86_400 / 5_000 + 1)
        .map(|b| {
            let secs: Vec<i64> = (b * 5_000..((b + 1) * 5_000).min(7 * 86_400))
                .map(|i| start + i)
                .collect();
            let mut series = vec![SeriesBlock {
                key: key(0),
                timestamps: secs.iter().map(|t| t * SEC).collect(),
                values: secs.iter().map(|t| value(*t)).collect(),
            }];
            if b == 0 {
                series.extend((1..SERIES).map(|s| SeriesBlock {
                    key: key(s),
                    timestamps: vec![start * SEC],
                    values: vec![1.0],
                }));
            }
            payload(b as u64 + 1, series)
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let now = now_secs();
    let pg = TestPostgres::start().await;
    let setup = Instant::now();
    let ing = pg.ingestor_keeping(RetentionConfig::default());
    let (tenant, agent) = (TenantId::new("bench").unwrap(), AgentId::new("gw").unwrap());
    let payloads = raw_payloads(now);
    for group in payloads.chunks(8) {
        let group = group.iter().map(Vec::as_slice);
        ing.handle_group(&deliveries(&tenant, &agent, group))
            .await
            .unwrap();
    }
    // 90 days of hourly rollups for every series (the charted one has its
    // last 7 days from the writer), then daily rollups from them.
    if retention::layout(&pg.pool).await.unwrap() == Layout::Native {
        sqlx::query(
            "SELECT dash_partition_for('rollup_hourly', g)
             FROM generate_series(to_timestamp($1) - interval '98 days', to_timestamp($1), interval '7 days') g",
        )
        .bind(now as f64)
        .execute(&pg.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO rollup_hourly (tenant, series_id, bucket, count, sum, min, max, first, first_ts, last, last_ts)
         SELECT 'bench', s.id, h, 3600, 3600 * 21.0, 20.0, 22.0, 20.5, h, 21.5, h + interval '3599 seconds'
         FROM series s, generate_series(date_trunc('hour', to_timestamp($1)) - interval '90 days',
                                        to_timestamp($1), interval '1 hour') h
         WHERE s.tenant = 'bench'
         ON CONFLICT DO NOTHING",
    )
    .bind(now as f64)
    .execute(&pg.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO rollup_daily (tenant, series_id, bucket, count, sum, min, max, first, first_ts, last, last_ts)
         SELECT tenant, series_id, date_trunc('day', bucket), sum(count), sum(sum), min(min), max(max),
                min(first), min(first_ts), max(last), max(last_ts)
         FROM rollup_hourly GROUP BY 1, 2, 3
         ON CONFLICT DO NOTHING",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE")
        .execute(&pg.pool)
        .await
        .unwrap();
    let hourly: i64 = sqlx::query_scalar("SELECT count(*) FROM rollup_hourly")
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    let setup = setup.elapsed();

    let token = "bench-token";
    let api = Arc::new(Api::new(
        pg.pool.clone(),
        vec![QueryToken {
            tenant: "bench".into(),
            sha256: dash_runtime::secret::sha256_hex(token),
        }],
        RetentionConfig::default(),
        Default::default(),
        dash_aggregator::audit::Audit::spawn(pg.pool.clone(), None),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = dash_aggregator::api::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::default()),
        api,
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    )
    .await
    .unwrap();
    let (from, to) = (now - DAYS * 86_400, now);
    let path = format!(
        "/api/v1/tenants/bench/query?device=sensor-0000&metric=temperature&from={from}&to={to}&step=2h&agg=avg"
    );
    // A region's viewer: half the devices in a place, a token scoped to it.
    sqlx::query("INSERT INTO places (tenant, place, name, path) VALUES ('bench', 'region-a', 'A', '/region-a/')")
        .execute(&pg.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE devices SET place = 'region-a'
         WHERE tenant = 'bench' AND (substr(device, 8))::int8 % 2 = 0",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let scoped_token = "bench-region-token";
    dash_aggregator::storage::access::add_token(
        &pg.pool,
        "bench",
        "region",
        &dash_runtime::secret::sha256_hex(scoped_token),
        &dash_aggregator::auth::access::Grant {
            role: dash_aggregator::auth::access::Role::Viewer,
            within: dash_aggregator::auth::access::Within::Place("region-a".into()),
        },
        "bench",
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let mut times = Vec::new();
    let mut scoped_times = Vec::new();
    let mut body = serde_json::Value::Null;
    for i in 0..RUNS + 3 {
        for (t, out) in [(token, &mut times), (scoped_token, &mut scoped_times)] {
            let start = Instant::now();
            let (status, b) = get_json(addr.port(), &path, Some(t)).await;
            let took = start.elapsed();
            assert_eq!(status, 200, "{b}");
            assert_eq!(b["series"].as_array().map(Vec::len), Some(1), "{b}");
            if i >= 3 {
                out.push(took);
            }
            body = b;
        }
    }
    let scoped = median(scoped_times);
    let points = body["series"][0]["points"].as_array().unwrap().len();
    let tiers: Vec<String> = body["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tier"].as_str().unwrap().to_owned())
        .collect();
    let dash = median(times.clone());
    times.sort();
    let p95 = times[times.len() * 95 / 100];

    // Baseline: the same chart from row-per-point samples.
    let mut conn = pg.pool.acquire().await.unwrap();
    sqlx::query(
        "CREATE TABLE rows_baseline (series_id int8 NOT NULL, ts timestamptz NOT NULL, value float8 NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let fill = Instant::now();
    for day in 0..DAYS {
        let mut copy = BinaryCopy::new(3);
        for t in (from + day * 86_400)..(from + (day + 1) * 86_400) {
            copy.row();
            copy.int8(1);
            copy.timestamptz(t * SEC);
            copy.float8(value(t));
        }
        let mut sink = conn
            .copy_in_raw("COPY rows_baseline FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        sink.send(copy.finish()).await.unwrap();
        sink.finish().await.unwrap();
    }
    sqlx::query("CREATE INDEX ON rows_baseline (series_id, ts)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE rows_baseline")
        .execute(&mut *conn)
        .await
        .unwrap();
    let fill = fill.elapsed();
    let mut base_times = Vec::new();
    let mut base_points = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let rows: Vec<(f64, f64)> = sqlx::query_as(
            "SELECT extract(epoch FROM date_bin('2 hours', ts, timestamptz '2000-01-01 00:00:00+00'))::float8, avg(value)
             FROM rows_baseline WHERE series_id = 1 AND ts >= to_timestamp($1) AND ts < to_timestamp($2)
             GROUP BY 1 ORDER BY 1",
        )
        .bind(from as f64)
        .bind(to as f64)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        base_times.push(start.elapsed());
        base_points = rows.len();
    }
    let baseline = median(base_times);
    stop.cancel();

    println!(
        "90-day chart of 1 series out of {SERIES} ({hourly} hourly rollup rows; setup {:.0} s, baseline fill {:.0} s):",
        setup.as_secs_f64(),
        fill.as_secs_f64()
    );
    println!(
        "  Dash query API over HTTP, 2 h steps, {points} points, tiers {tiers:?}: median {:.1} ms, p95 {:.1} ms over {RUNS} runs (target < 50 ms)",
        ms(dash),
        ms(p95)
    );
    println!(
        "  baseline: SQL over {} row-per-point samples, {base_points} points:        median {:.1} ms over 5 runs",
        DAYS * 86_400,
        ms(baseline)
    );
    println!(
        "  ratio baseline / Dash                                                  {:.1}x faster",
        ms(baseline) / ms(dash)
    );
    println!(
        "  the same chart for a region's viewer (scope filtered in SQL): median {:.1} ms; ratio unscoped / scoped {:.2} (target >= 0.9)",
        ms(scoped),
        ms(dash) / ms(scoped)
    );
    dash_benches::row(
        "query",
        "90-day chart for a region-scoped viewer, median over HTTP",
        ms(scoped),
        "ms",
        dash_benches::Better::Lower,
        "the same chart for the whole tenant",
        ms(dash),
        Some(dash_benches::Target::AtMost(ms(dash) / 0.9)),
    );
    dash_benches::row(
        "query",
        "90-day chart, 1 of 1,000 series, median over HTTP",
        ms(dash),
        "ms",
        dash_benches::Better::Lower,
        "SQL over row-per-point samples",
        ms(baseline),
        Some(dash_benches::Target::AtMost(50.0)),
    );
}
