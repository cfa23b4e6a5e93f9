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

use dash_benches::{Better, copy_baseline, probe, quantile, row, watch};
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
    let copy = copy_baseline(&pg, n, SERIES as i64).await;
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
    let prober = probe(addr, Duration::from_millis(50), epoch, stop.clone());
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
    let prober = probe(addr, Duration::from_millis(50), epoch, stop.clone());
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
