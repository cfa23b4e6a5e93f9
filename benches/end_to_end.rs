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

use dash_tests::pg::TestPostgres;
use dash_tests::{free_port, process};

const DEVICES: i64 = 20;
const PER_DEVICE: i64 = 10_000;

async fn copy_baseline(pg: &TestPostgres, n: i64) -> Duration {
    let mut conn = pg.pool.acquire().await.unwrap();
    let mut buf = Vec::new();
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
    for i in 0..n {
        buf.extend_from_slice(&4i16.to_be_bytes());
        buf.extend_from_slice(&4i32.to_be_bytes());
        buf.extend_from_slice(b"base");
        for v in [i % DEVICES, 817_000_000_000_000 + i * 1_000_000] {
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&v.to_be_bytes());
        }
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&(i as f64).to_be_bytes());
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
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

async fn metric(port: u16, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
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
