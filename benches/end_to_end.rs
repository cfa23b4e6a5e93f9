//! End to end on this machine: simulated devices -> dash-agent (its MQTT
//! listener, group commit with fsync) -> mutual TLS -> the aggregator's gate
//! and embedded broker -> PostgreSQL with the raw, hourly and daily tiers,
//! with the release binaries and agent identities from `ca init` and
//! `agent add`.
//!
//! - Sustained samples/s: 20 devices publish ten readings per JSON message
//!   (QoS 1, 32 in flight each) as fast as the agent acknowledges; the rate
//!   is every sample committed over the time from the first publish to the
//!   last commit, so nothing is left backed up.
//! - Latency: a probe device publishes one reading every 20 ms throughout;
//!   its value is its publish time, and a poller notes when each appears in
//!   PostgreSQL (5 ms polling): p50 and p99 publish -> committed row.
//! - Baselines in the same run: one binary COPY of as many rows into an
//!   indexed row-per-point table (the storage limit), and Mosquitto alone,
//!   in memory, carrying the same messages from the same devices (the
//!   transport limit).
//!
//! Run: `cargo build --release --bins && cargo bench -p dash-benches --bench end_to_end`

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_benches::{Better, Target, copy_baseline, probe, quantile, row, watch};
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, Mosquitto, Proc, binary};
use dash_tests::{free_port, metric};

const DEVICES: i64 = 20;
/// JSON messages per device; ten readings each.
const MESSAGES: i64 = 40_000;
const FIELDS: usize = 10;
const LINGER_MS: u64 = 200;
const PROBE_EVERY: Duration = Duration::from_millis(20);

fn aggregator_cli(dir: &Path, pg: &TestPostgres, args: &[&str]) {
    let out = std::process::Command::new(binary("dash-aggregator"))
        .args(args)
        .env("DASH_DATABASE_URL", &pg.url)
        .env("DASH_DATA_DIR", dir.join("aggregator"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every device's messages, as fast as `addr` acknowledges them; returns
/// the seconds it took and the messages acknowledged.
async fn drive(addr: SocketAddr) -> (f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..DEVICES)
        .map(|d| {
            let stop = stop.clone();
            tokio::spawn(async move {
                dash_tests::device::publish_fields(
                    addr,
                    &format!("dev-{d}"),
                    "temp",
                    0..MESSAGES,
                    stop,
                    Duration::from_secs(600),
                    FIELDS,
                )
                .await
            })
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap().acked.len();
    }
    (start.elapsed().as_secs_f64(), acked)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = DEVICES * MESSAGES * FIELDS as i64;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pg = Arc::new(TestPostgres::start().await);
    let copy = n as f64 / copy_baseline(&pg, n, 200).await.as_secs_f64();

    // Identities: a CA, the broker's certificate, one agent.
    let (tls, http, devices) = (free_port(), free_port(), free_port());
    let ca = d.join("ca");
    aggregator_cli(
        d,
        &pg,
        &[
            "ca",
            "init",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--host",
            "127.0.0.1",
        ],
    );
    let files = d.join("gw-1");
    aggregator_cli(
        d,
        &pg,
        &[
            "agent",
            "add",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--tenant",
            "bench",
            "--name",
            "gw-1",
            "--uplink",
            &format!("mqtts://127.0.0.1:{tls}"),
            "--out",
            files.to_str().unwrap(),
            "--install-dir",
            files.to_str().unwrap(),
        ],
    );
    let mut aggregator = process::aggregator(
        d,
        &pg.url,
        free_port(),
        http,
        &process::tls_broker_env(&ca, tls),
    );
    aggregator.start();
    let snippet = std::fs::read_to_string(files.join("agent.toml")).unwrap();
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{snippet}batch_linger_ms = {LINGER_MS}\n\n[devices]\nlisten = \"127.0.0.1:{devices}\"\n\n\
             [[devices.mappings]]\ntopic = \"sensors/probe/{{metric}}\"\ndevice = \"probe\"\n\n\
             [[devices.mappings]]\ntopic = \"sensors/warmup/{{metric}}\"\ndevice = \"warmup\"\n\n\
             [[devices.mappings]]\ntopic = \"sensors/{{device}}/{{metric}}\"\nformat = \"json\"\n",
            d.join("agent").display()
        ),
    )
    .unwrap();
    let mut agent = Proc::new(
        "dash-agent",
        &["run", "--config", config.to_str().unwrap()],
        &[],
        d.join("agent.log"),
    );
    agent.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], devices));
    let epoch = Instant::now();
    // Warm up: one probe reading through the whole path.
    dash_tests::eventually(
        Duration::from_secs(60),
        "a first reading through TLS",
        || {
            let pg = pg.clone();
            async move {
                dash_tests::device::publish(
                    addr,
                    "warmup",
                    "temp",
                    [1],
                    Arc::new(AtomicBool::new(false)),
                    Duration::from_secs(5),
                )
                .await;
                (pg.total().await >= 1).then_some(())
            }
        },
    )
    .await;
    let before = metric(http, "dash_ingest_samples_total").await;
    let bytes_before = metric(http, "dash_ingest_payload_bytes_total").await;

    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(addr, PROBE_EVERY, epoch, stop.clone());
    let watcher = watch(pg.clone(), epoch, stop.clone());
    let start = Instant::now();
    let (acked_secs, acked) = drive(addr).await;
    assert_eq!(
        acked as i64,
        DEVICES * MESSAGES,
        "every message acknowledged"
    );
    let target = before + n as f64;
    dash_tests::eventually(
        Duration::from_secs(600),
        "every sample committed",
        || async { (metric(http, "dash_ingest_samples_total").await >= target).then_some(()) },
    )
    .await;
    let committed_secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    let mut latencies = watcher.await.unwrap();
    let wire = metric(http, "dash_ingest_payload_bytes_total").await - bytes_before;
    agent.terminate(Duration::from_secs(10));
    aggregator.terminate(Duration::from_secs(10));

    // The transport limit: Mosquitto alone, the same devices and messages.
    let mosquitto_port = free_port();
    let _mosquitto = Mosquitto::start(d, mosquitto_port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mosquitto = SocketAddr::from(([127, 0, 0, 1], mosquitto_port));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = subscriber(mosquitto_port, epoch, stop.clone()).await;
    let prober = probe(mosquitto, PROBE_EVERY, epoch, stop.clone());
    let (broker_secs, broker_acked) = drive(mosquitto).await;
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    let mut broker_latencies = listener.await.unwrap();
    let broker = (broker_acked * FIELDS) as f64 / broker_secs;

    let e2e = n as f64 / committed_secs;
    println!(
        "{n} samples from {DEVICES} devices, {FIELDS} per JSON message, over mutual TLS: acked by the agent in {acked_secs:.1} s, all committed after {committed_secs:.1} s; {:.2} bytes/sample on the uplink; {} latency probes",
        wire / n as f64,
        latencies.len()
    );
    let group = "end to end";
    row(
        group,
        "sustained, devices -> TLS -> PostgreSQL tiers",
        e2e,
        "samples/s",
        Better::Higher,
        "binary COPY, row per point",
        copy,
        Some(Target::AtLeast(300_000.0)),
    );
    row(
        group,
        "sustained, devices -> TLS -> PostgreSQL tiers",
        e2e,
        "samples/s",
        Better::Higher,
        "Mosquitto alone carrying the messages",
        broker,
        Some(Target::AtLeast(300_000.0)),
    );
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            group,
            &format!("publish -> committed row, {label} (batch linger {LINGER_MS} ms)"),
            quantile(&mut latencies, q),
            "ms",
            Better::Lower,
            "publish -> subscriber through Mosquitto alone, same load",
            quantile(&mut broker_latencies, q),
            None,
        );
    }
}

/// Subscribes to the probe's readings on Mosquitto and notes how long each
/// took from its publish.
async fn subscriber(
    port: u16,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    let mut opts = rumqttc::MqttOptions::new("probe-listener", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    client
        .subscribe("sensors/probe/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    // Wait for the subscription to be in place.
    loop {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = events.poll().await {
            break;
        }
    }
    tokio::spawn(async move {
        let _client = client;
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(Ok(event)) =
                tokio::time::timeout(Duration::from_millis(200), events.poll()).await
            else {
                continue;
            };
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event
                && let Some(v) = std::str::from_utf8(&p.payload)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
            {
                latencies.push(epoch.elapsed().as_secs_f64() * 1e3 - v);
            }
        }
        latencies
    })
}
