//! The storage writer: samples/s through the ingest path (ledger, raw blocks,
//! hourly and daily rollups, one transaction per batch) and bytes per sample
//! on disk, against a plain row-per-point binary COPY of the same samples into
//! a table indexed on (series, ts), measured in the same run on the same
//! cluster. Shape: 1,000 series at 1 Hz; batches of 5,000 samples, as an
//! agent sends them (5 s of every series per batch).
//!
//! A second figure: the same writer with the fleet registry noting every
//! committed batch's devices and writing them once a second, as the
//! aggregator does, and once at the end (both inside the time), beside the
//! writer without it, interleaved over three rounds into fresh tenants.
//!
//! Run: `cargo bench -p dash-benches --bench storage`

use std::time::{Duration, Instant};

use std::sync::Arc;

use dash_aggregator::fleet::tracker::Tracker;
use dash_aggregator::storage::{BinaryCopy, fleet};
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::fixture::{deliveries, payload};
use dash_tests::pg::TestPostgres;

const SERIES: usize = 1_000;
const SECONDS: i64 = 600;
const PER_BATCH_SECONDS: i64 = 5;
/// Batches per transaction, as a worker takes them from a full queue.
const GROUP: usize = 8;
const T0: i64 = 1_764_000_000_000_000;

fn value(s: usize, t: i64) -> f64 {
    (2000 + (s as i64 * 37 + t * 3) % 400) as f64 / 100.0
}

fn payloads() -> Vec<Vec<u8>> {
    (0..SECONDS / PER_BATCH_SECONDS)
        .map(|b| {
            let series = (0..SERIES)
                .map(|s| {
                    let secs = b * PER_BATCH_SECONDS..(b + 1) * PER_BATCH_SECONDS;
                    SeriesBlock {
                        key: SeriesKey::with_tags(
                            format!("sensor-{s:04}"),
                            "temperature",
                            [("site".into(), "plant-2".into())],
                        ),
                        timestamps: secs.clone().map(|t| T0 + t * 1_000_000).collect(),
                        values: secs.map(|t| value(s, t)).collect(),
                    }
                })
                .collect();
            payload(b as u64 + 1, series)
        })
        .collect()
}

/// Bytes on disk of `tables` with their partitions or chunks (both are
/// children in `pg_inherits`).
async fn size(pg: &TestPostgres, tables: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "WITH RECURSIVE tree(rel) AS (
             SELECT t FROM unnest(ARRAY[{tables}]::regclass[]) t
             UNION ALL SELECT i.inhrelid::regclass FROM pg_inherits i JOIN tree ON i.inhparent = tree.rel)
         SELECT sum(pg_total_relation_size(rel))::int8 FROM tree"
    ))
    .fetch_one(&pg.pool)
    .await
    .unwrap()
}

async fn row_per_point(pg: &TestPostgres) -> (Duration, i64) {
    sqlx::query("CREATE TABLE rows_baseline (series_id int8 NOT NULL, ts timestamptz NOT NULL, value float8 NOT NULL)")
        .execute(&pg.pool)
        .await
        .unwrap();
    sqlx::query("CREATE INDEX ON rows_baseline (series_id, ts)")
        .execute(&pg.pool)
        .await
        .unwrap();
    let mut copy = BinaryCopy::new(3);
    for t in 0..SECONDS {
        for s in 0..SERIES {
            copy.row();
            copy.int8(s as i64);
            copy.timestamptz(T0 + t * 1_000_000);
            copy.float8(value(s, t));
        }
    }
    let buf = copy.finish();
    let mut conn = pg.pool.acquire().await.unwrap();
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY rows_baseline FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    copy.send(buf).await.unwrap();
    copy.finish().await.unwrap();
    let took = start.elapsed();
    sqlx::query("VACUUM ANALYZE rows_baseline")
        .execute(&mut *conn)
        .await
        .unwrap();
    (took, size(pg, "'rows_baseline'").await)
}

/// How often the bench's flusher writes what the tracker noted: the
/// aggregator's default `fleet.flush_ms`.
fn flush_every() -> Duration {
    Duration::from_millis(dash_aggregator::fleet::FleetConfig::default().flush_ms)
}

/// Tenants stored one after another in one timed run, so that a run lasts
/// over a second and pays for flushes at the aggregator's pace.
const TENANTS_PER_RUN: usize = 3;

/// Seconds to store `payloads` (series registered first, untimed) for each
/// of `tenants`, with the fleet tracker when given. As in the aggregator,
/// the tracker is flushed by a task of its own beside the writer, competing
/// for the database and the two cores; the last flush, after the writer is
/// done, is not the writer's time and is returned apart, with how many ran
/// beside it.
async fn timed_ingest(
    pg: &TestPostgres,
    payloads: &[Vec<u8>],
    tenants: &[String],
    fleet: Option<Arc<Tracker>>,
) -> (f64, Option<(f64, u32)>) {
    let ing = match &fleet {
        Some(t) => pg.ingestor().with_fleet(t.clone()),
        None => pg.ingestor(),
    };
    let agent = AgentId::new("gw").unwrap();
    let tenants: Vec<TenantId> = tenants
        .iter()
        .map(|t| TenantId::new(t.clone()).unwrap())
        .collect();
    for tenant in &tenants {
        ing.handle(tenant, &agent, &payloads[0]).await.unwrap();
    }
    if let Some(t) = &fleet {
        fleet::record_seen(&pg.pool, &t.take()).await.unwrap();
    }
    let done = tokio_util::sync::CancellationToken::new();
    let flusher = fleet.clone().map(|t| {
        let (pool, done) = (pg.pool.clone(), done.clone());
        tokio::spawn(async move {
            let mut flushes = 0u32;
            loop {
                tokio::select! {
                    () = done.cancelled() => break flushes,
                    () = tokio::time::sleep(flush_every()) => {}
                }
                fleet::record_seen(&pool, &t.take()).await.unwrap();
                flushes += 1;
            }
        })
    });
    let start = Instant::now();
    for tenant in &tenants {
        for group in payloads[1..].chunks(GROUP) {
            let group = group.iter().map(Vec::as_slice);
            ing.handle_group(&deliveries(tenant, &agent, group))
                .await
                .unwrap();
        }
    }
    let took = start.elapsed().as_secs_f64();
    done.cancel();
    let last = match (&fleet, flusher) {
        (Some(t), Some(flusher)) => {
            let flushes = flusher.await.unwrap();
            let start = Instant::now();
            fleet::record_seen(&pg.pool, &t.take()).await.unwrap();
            Some((start.elapsed().as_secs_f64(), flushes))
        }
        _ => None,
    };
    (took, last)
}

/// What [`registration`] measured.
struct Registration {
    /// Samples/s, medians.
    with: f64,
    without: f64,
    /// The median last flush, in ms, and the flushes beside the writer in
    /// all runs.
    last_flush_ms: f64,
    flushes: u32,
}

/// Samples/s with and without device registration, the median of five
/// rounds each, alternating which goes first (the database grows as the
/// rounds go).
async fn registration(pg: &TestPostgres, payloads: &[Vec<u8>]) -> Registration {
    let n = (SERIES as i64 * (SECONDS - PER_BATCH_SECONDS)) as f64 * TENANTS_PER_RUN as f64;
    let (mut with, mut without, mut last) = (Vec::new(), Vec::new(), Vec::new());
    let mut flushes = 0;
    for round in 0..5 {
        for with_fleet in [round % 2 == 0, round % 2 != 0] {
            let name = if with_fleet { "fleet" } else { "plain" };
            let tenants: Vec<String> = (0..TENANTS_PER_RUN)
                .map(|i| format!("{name}-{round}-{i}"))
                .collect();
            let tracker = with_fleet.then(|| Arc::new(Tracker::default()));
            let (secs, flush) = timed_ingest(pg, payloads, &tenants, tracker).await;
            match flush {
                Some((last_secs, beside)) => {
                    with.push(n / secs);
                    last.push(last_secs * 1e3);
                    flushes += beside;
                }
                None => without.push(n / secs),
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Registration {
        with: median(with),
        without: median(without),
        last_flush_ms: median(last),
        flushes,
    }
}

#[tokio::main]
async fn main() {
    let n = (SERIES as i64 * SECONDS) as f64;
    let pg = TestPostgres::start().await;
    let payloads = payloads();
    let ing = pg.ingestor();
    let (tenant, agent) = (TenantId::new("bench").unwrap(), AgentId::new("gw").unwrap());
    // Series registration is a one-time cost per series; keep it out of the timing.
    ing.handle(&tenant, &agent, &payloads[0]).await.unwrap();
    // Batches queue up at a busy aggregator; a worker stores up to 32 per transaction.
    let start = Instant::now();
    for group in payloads[1..].chunks(GROUP) {
        let group = group.iter().map(Vec::as_slice);
        ing.handle_group(&deliveries(&tenant, &agent, group))
            .await
            .unwrap();
    }
    let tiered =
        start.elapsed().as_secs_f64() * payloads.len() as f64 / (payloads.len() - 1) as f64;
    sqlx::query("VACUUM ANALYZE raw_blocks, rollup_hourly, rollup_daily")
        .execute(&pg.pool)
        .await
        .unwrap();
    let raw_bytes = size(&pg, "'raw_blocks'").await as f64;
    let tier_bytes = size(&pg, "'rollup_hourly', 'rollup_daily'").await as f64;
    // Compaction merges each closed 30-minute span into one block per series.
    let start = Instant::now();
    while dash_aggregator::storage::tiers::compact(&pg.pool, Duration::ZERO, 5_000)
        .await
        .unwrap()
        > 0
    {}
    let compact_secs = start.elapsed().as_secs_f64();
    sqlx::query("VACUUM FULL raw_blocks")
        .execute(&pg.pool)
        .await
        .unwrap();
    let compacted_bytes = size(&pg, "'raw_blocks'").await as f64;
    let (copy, copy_bytes) = row_per_point(&pg).await;
    let reg = registration(&pg, &payloads).await;
    let (with_fleet, without_fleet) = (reg.with, reg.without);

    let writer = n / tiered;
    let baseline = n / copy.as_secs_f64();
    println!(
        "storage writer, {SERIES} series x {SECONDS} s at 1 Hz, batches of {} samples:",
        SERIES as i64 * PER_BATCH_SECONDS
    );
    println!(
        "  writer (ledger + raw blocks + hourly + daily, {GROUP} batches per transaction) {writer:>10.0} samples/s"
    );
    println!(
        "  baseline: row-per-point binary COPY into an indexed table            {baseline:>10.0} samples/s"
    );
    println!(
        "  ratio writer / baseline                                              {:>10.2}",
        writer / baseline
    );
    println!(
        "  on disk, row-per-point                {:>6.1} bytes/sample",
        copy_bytes as f64 / n
    );
    println!(
        "  on disk, raw blocks as written        {:>6.1} bytes/sample (+{:.1} for rollups)",
        raw_bytes / n,
        tier_bytes / n
    );
    println!(
        "  on disk, raw blocks after compaction  {:>6.1} bytes/sample (compaction ran at {:.0} samples/s)",
        compacted_bytes / n,
        n / compact_secs
    );
    let db = if dash_tests::pg::timescaledb() {
        "TimescaleDB"
    } else {
        "PostgreSQL"
    };
    dash_benches::row(
        "storage",
        &format!("writer with both rollups ({db})"),
        writer,
        "samples/s",
        dash_benches::Better::Higher,
        "row-per-point binary COPY, indexed",
        baseline,
        None,
    );
    dash_benches::row(
        "storage",
        &format!("raw tier on disk after compaction ({db})"),
        compacted_bytes / n,
        "bytes/sample",
        dash_benches::Better::Lower,
        "row-per-point table with (series, ts) index",
        copy_bytes as f64 / n,
        Some(dash_benches::Target::AtMost(12.0)),
    );
    println!(
        "  writer noting devices for the fleet registry {with_fleet:>10.0} samples/s, without {without_fleet:>10.0}: ratio {:.3}",
        with_fleet / without_fleet
    );
    println!(
        "  ({TENANTS_PER_RUN} tenants a run; {} flushes beside the writer, every {} ms as the aggregator does; the last one, off the writer's path: {:.1} ms)",
        reg.flushes,
        flush_every().as_millis(),
        reg.last_flush_ms
    );
    assert!(reg.flushes >= 1, "the flusher ran beside the writer");
    dash_benches::row(
        "storage",
        &format!("writer with device registration ({db})"),
        with_fleet,
        "samples/s",
        dash_benches::Better::Higher,
        "the same writer without it",
        without_fleet,
        Some(dash_benches::Target::AtLeast(0.95 * without_fleet)),
    );
}
