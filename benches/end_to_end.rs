//! Samples per second end to end: devices -> dash-agent -> embedded broker ->
//! dash-aggregator -> PostgreSQL, with the release binaries, and bytes per
//! sample on the wire. Baseline, in the same run and on the same cluster: one
//! binary COPY of the same number of samples as rows (tenant, series, ts,
//! value) into a table indexed on (series, ts): the plain row-per-point way.
//!
//! Run: `cargo build --release --bins && cargo bench -p dash-benches --bench end_to_end`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use dash_aggregator::storage::BinaryCopy;
use dash_tests::pg::TestPostgres;
use dash_tests::{free_port, metric, process};

const DEVICES: i64 = 20;
const PER_DEVICE: i64 = 10_000;

async fn copy_baseline(pg: &TestPostgres, n: i64) -> Duration {
    let mut conn = pg.pool.acquire().await.unwrap();
    let mut copy = BinaryCopy::new(4);
    for i in 0..n {
        copy.row();
        copy.text("base");
        copy.int8(i % DEVICES);
        copy.timestamptz(1_764_000_000_000_000 + i * 1_000_000);
        copy.float8(i as f64);
    }
    let buf = copy.finish();
    sqlx::query(
        "CREATE TABLE baseline_rows (tenant text NOT NULL, series_id bigint NOT NULL, ts timestamptz NOT NULL, value float8 NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("CREATE INDEX ON baseline_rows (series_id, ts)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY baseline_rows (tenant, series_id, ts, value) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    copy.send(buf).await.unwrap();
    copy.finish().await.unwrap();
    let took = start.elapsed();
    sqlx::query("DROP TABLE baseline_rows")
        .execute(&mut *conn)
        .await
        .unwrap();
    took
}

#[tokio::main]
async fn main() {
    let n = DEVICES * PER_DEVICE;
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let baseline = copy_baseline(&pg, n).await;

    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let mut agent = process::agent(
        dir.path(),
        "bench",
        "gw-1",
        process::DeviceSource::Listen(devices),
        broker,
    );
    agent.start();
    // Warm up: the aggregator is subscribed once one reading made it through.
    let addr = SocketAddr::from(([127, 0, 0, 1], devices));
    let stop = Arc::new(AtomicBool::new(false));
    dash_tests::device::publish(
        addr,
        "warmup",
        "temp",
        0..1,
        stop.clone(),
        Duration::from_secs(30),
    )
    .await;
    dash_tests::eventually(Duration::from_secs(30), "warm-up reading", || async {
        (pg.total().await == 1).then_some(())
    })
    .await;
    let bytes_before = metric(http, "dash_ingest_payload_bytes_total").await;

    let start = Instant::now();
    let tasks: Vec<_> = (0..DEVICES)
        .map(|d| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let name = format!("dev-{d}");
                dash_tests::device::publish(
                    addr,
                    &name,
                    "temp",
                    0..PER_DEVICE,
                    stop,
                    Duration::from_secs(600),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().acked.len() as i64, PER_DEVICE);
    }
    let acked_at = start.elapsed();
    dash_tests::eventually(
        Duration::from_secs(600),
        "all readings in PostgreSQL",
        || async { (pg.total().await == n + 1).then_some(()) },
    )
    .await;
    let stored_at = start.elapsed();
    let wire_bytes = metric(http, "dash_ingest_payload_bytes_total").await - bytes_before;

    let e2e = n as f64 / stored_at.as_secs_f64();
    let copy = n as f64 / baseline.as_secs_f64();
    println!(
        "end to end, {n} samples from {DEVICES} MQTT devices (one reading per publish, QoS 1):"
    );
    println!(
        "  acked by the agent (durable)   {:>10.0} samples/s",
        n as f64 / acked_at.as_secs_f64()
    );
    println!("  committed in PostgreSQL        {e2e:>10.0} samples/s");
    println!("  baseline: one binary COPY, row per point, indexed {copy:>10.0} samples/s");
    println!("  ratio end-to-end / COPY        {:>10.2}", e2e / copy);
    println!(
        "  wire: {:.2} bytes/sample in batches (device MQTT publishes not counted)",
        wire_bytes / n as f64
    );
    agent.terminate(Duration::from_secs(10));
    aggregator.terminate(Duration::from_secs(10));
}
