//! Catch-up after an outage: a day of 100 series at 1 Hz (8,640,000
//! readings, stamped by the device over the last 24 h) is buffered by an
//! agent while its aggregator is down; then the aggregator comes back.
//!
//! - Time to drain: from the aggregator's start until every buffered
//!   reading is committed, with the backlog unpaced
//!   (`uplink.backlog_records_per_sec = 0`; the default 20,000/s would take
//!   7.2 minutes by design). Baseline, same run: one binary COPY of as many
//!   rows into an indexed row-per-point table.
//! - Live latency while draining: a probe device publishes every 50 ms; p50
//!   and p99 from publish to committed row during the drain, against the
//!   same probe before the outage (no backlog), same run.
//!
//! Run: `cargo build --release --bins && cargo bench -p dash-benches --bench catch_up`

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_aggregator::storage::BinaryCopy;
use dash_benches::{Better, quantile, row};
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, Proc};
use dash_tests::{free_port, metric};

const SERIES: usize = 100;
const SECONDS: i64 = 86_400;

/// Publishes the day: one JSON message per second with every series as a
/// field and the second in `t`.
async fn publish_day(addr: SocketAddr, start_secs: i64) {
    let mut opts = rumqttc::MqttOptions::new("historian", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(64);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 256);
    let acks = tokio::spawn(async move {
        let mut acked = 0i64;
        while acked < SECONDS {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("historian lost the agent: {e}"),
            }
        }
    });
    for s in 0..SECONDS {
        let mut body = format!("{{\"t\":{}", start_secs + s);
        for i in 0..SERIES {
            body.push_str(&format!(",\"s{i}\":{}", (s + i as i64) % 1000));
        }
        body.push('}');
        client
            .publish("sensors/line-1/m", rumqttc::QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    acks.await.unwrap();
}

/// A probe publishing every 50 ms (value: ms since `epoch`) until `stop`.
fn probe(addr: SocketAddr, epoch: Instant, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let v = epoch.elapsed().as_millis() as i64;
            dash_tests::device::publish(
                addr,
                "probe",
                "latency",
                [v],
                Arc::new(AtomicBool::new(false)),
                Duration::from_secs(5),
            )
            .await;
        }
    })
}

/// Publish -> committed latencies of probe readings appearing until `stop`.
fn watch(
    pg: Arc<TestPostgres>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut last: f64 = sqlx::query_scalar(
            "SELECT coalesce(max(x.value), -1) FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = 'probe'",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap();
        while !stop.load(Ordering::Relaxed) {
            let rows: Vec<f64> = sqlx::query_scalar(
                "SELECT x.value FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = 'probe' AND x.value > $1",
            )
            .bind(last)
            .fetch_all(&pg.pool)
            .await
            .unwrap_or_default();
            let now = epoch.elapsed().as_secs_f64() * 1e3;
            for v in rows {
                latencies.push(now - v);
                last = last.max(v);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies
    })
}

async fn copy_baseline(pg: &TestPostgres, n: i64) -> Duration {
    let mut conn = pg.pool.acquire().await.unwrap();
    sqlx::query("CREATE TABLE baseline_rows (tenant text NOT NULL, series_id bigint NOT NULL, ts timestamptz NOT NULL, value float8 NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("CREATE INDEX ON baseline_rows (series_id, ts)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut rows = BinaryCopy::new(4);
    for j in 0..n {
        rows.row();
        rows.text("base");
        rows.int8(j % SERIES as i64);
        rows.timestamptz(1_764_000_000_000_000 + (j / SERIES as i64) * 1_000_000);
        rows.float8((j % 1000) as f64);
    }
    let rows = rows.finish();
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY baseline_rows (tenant, series_id, ts, value) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    copy.send(rows).await.unwrap();
    copy.finish().await.unwrap();
    let took = start.elapsed();
    sqlx::query("DROP TABLE baseline_rows")
        .execute(&mut *conn)
        .await
        .unwrap();
    took
}

fn agent(dir: &Path, devices: u16, uplink: u16) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "tenant = \"bench\"\nagent_id = \"gw-1\"\ndata_dir = \"{}\"\n\n[buffer]\nmax_bytes = 0\n\n\
             [uplink]\nurl = \"mqtt://127.0.0.1:{uplink}\"\nbatch_linger_ms = 200\nbacklog_records_per_sec = 0\nreconnect_max_ms = 1000\n\n\
             [devices]\nlisten = \"127.0.0.1:{devices}\"\n\n\
             [[devices.mappings]]\ntopic = \"sensors/line-1/m\"\ndevice = \"line-1\"\nmetric = \"m.\"\nformat = \"json\"\ntimestamp_path = \"t\"\n\n\
             [[devices.mappings]]\ntopic = \"sensors/{{device}}/{{metric}}\"\n",
            dir.join("agent").display()
        ),
    )
    .unwrap();
    Proc::new(
        "dash-agent",
        &["run", "--config", config.to_str().unwrap()],
        &[],
        dir.join("agent.log"),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = SERIES as i64 * SECONDS;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pg = Arc::new(TestPostgres::start().await);
    let copy = copy_baseline(&pg, n).await;
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(d, &pg.url, broker, http, &[]);
    aggregator.start();
    let mut agent = agent(d, devices, broker);
    agent.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], devices));
    let epoch = Instant::now();
    dash_tests::eventually(Duration::from_secs(60), "the path to be up", || {
        let pg = pg.clone();
        async move {
            dash_tests::device::publish(
                addr,
                "warmup",
                "t",
                [1],
                Arc::new(AtomicBool::new(false)),
                Duration::from_secs(5),
            )
            .await;
            (pg.total().await >= 1).then_some(())
        }
    })
    .await;

    // Live latency with no backlog.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(pg.clone(), epoch, stop.clone());
    let prober = probe(addr, epoch, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut quiet = watcher.await.unwrap();

    // The outage: the day goes into the agent's buffer.
    aggregator.terminate(Duration::from_secs(10));
    let day_start = chrono::Utc::now().timestamp() - SECONDS - 3600;
    let buffered = Instant::now();
    publish_day(addr, day_start).await;
    let buffer_secs = buffered.elapsed().as_secs_f64();
    let committed_before = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = 'line-1'")
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    assert_eq!(
        committed_before, 0,
        "nothing of the day reached PostgreSQL during the outage"
    );
    println!("a day of {SERIES} series ({n} readings) buffered by the agent in {buffer_secs:.1} s");

    // Back: drain while live data flows.
    let mut aggregator = process::aggregator(d, &pg.url, broker, http, &[]);
    aggregator.start();
    let back = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(pg.clone(), epoch, stop.clone());
    let prober = probe(addr, epoch, stop.clone());
    dash_tests::eventually(
        Duration::from_secs(900),
        "the day to be committed",
        || async {
            let day = metric(http, "dash_ingest_samples_total").await;
            (day >= n as f64).then_some(())
        },
    )
    .await;
    let drain = back.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut draining = watcher.await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = 'line-1'")
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    assert_eq!(stored, n, "every buffered reading stored once");
    let status = process::agent_status_file(d, "agent");
    println!(
        "drained {n} readings in {drain:.1} s; {} probe readings during the drain; agent status: {}",
        draining.len(),
        status.map(|s| s["buffer"].to_string()).unwrap_or_default()
    );
    agent.terminate(Duration::from_secs(10));
    aggregator.terminate(Duration::from_secs(10));

    let group = "catch-up";
    row(
        group,
        "24 h x 100 series at 1 Hz: drain rate",
        n as f64 / drain,
        "samples/s",
        Better::Higher,
        "binary COPY of the same rows, row per point",
        n as f64 / copy.as_secs_f64(),
        None,
    );
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            group,
            &format!("live reading -> committed row while draining, {label}"),
            quantile(&mut draining, q),
            "ms",
            Better::Lower,
            "the same probe with no backlog",
            quantile(&mut quiet, q),
            None,
        );
    }
}
