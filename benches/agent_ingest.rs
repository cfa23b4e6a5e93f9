//! How many samples one agent takes from local MQTT devices into its durable
//! buffer (acknowledged only after the fsync'd group commit) while it
//! forwards them to an aggregator, its CPU per 1,000 samples and its peak
//! RSS. Two shapes: one reading per publish, and JSON objects of 10 readings.
//!
//! Baseline, in the same run with the same devices and payloads: Mosquitto
//! from Debian, in memory (no persistence), acknowledging the same QoS 1
//! publishes: the transport alone, without durability.
//!
//! A third run puts half the devices on MQTT 5 beside half on 3.1.1, against
//! one agent at once; the baseline is the 3.1.1 half (target ratio >= 0.95).
//!
//! Run: `cargo build --release --bins && cargo bench -p dash-benches --bench agent_ingest`

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_tests::device::Protocol;
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, Mosquitto, Proc};
use dash_tests::{free_port, metric};

const DEVICES: usize = 20;
const SECONDS: u64 = 10;

/// (user + system) CPU seconds of `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ on Linux
}

/// Peak resident set of `pid`, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Publishes from `DEVICES` devices for `SECONDS`; returns acked messages.
async fn drive(addr: SocketAddr, fields: usize) -> usize {
    let all = drive_as(addr, fields, |_| Protocol::V311).await;
    all.iter().map(|(_, n)| n).sum()
}

/// [`drive`] with each device's protocol chosen by its number; returns
/// (protocol, acked messages) per device.
async fn drive_as(
    addr: SocketAddr,
    fields: usize,
    protocol: impl Fn(usize) -> Protocol,
) -> Vec<(Protocol, usize)> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..DEVICES)
        .map(|d| {
            let (stop, protocol) = (stop.clone(), protocol(d));
            tokio::spawn(async move {
                let report = dash_tests::device::publish_as(
                    addr,
                    &format!("dev-{d}"),
                    "temp",
                    0..500_000,
                    stop,
                    Duration::from_secs(SECONDS + 30),
                    fields,
                    protocol,
                )
                .await;
                (protocol, report.acked.len())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    acked
}

fn agent(dir: &Path, id: &str, devices: u16, uplink: u16, json: bool) -> Proc {
    let format = if json { "format = \"json\"" } else { "" };
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "tenant = \"bench\"\nagent_id = \"{id}\"\ndata_dir = \"{}\"\n\n[uplink]\nurl = \"mqtt://127.0.0.1:{uplink}\"\n\n[devices]\nlisten = \"127.0.0.1:{devices}\"\n\n[[devices.mappings]]\ntopic = \"sensors/{{device}}/{{metric}}\"\n{format}\n",
            dir.join(id).display()
        ),
    )
    .unwrap();
    Proc::new(
        "dash-agent",
        &["run", "--config", config.to_str().unwrap()],
        &[],
        dir.join(format!("{id}.log")),
    )
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, http) = (free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let mosquitto_port = free_port();
    let _mosquitto = Mosquitto::start(dir.path(), mosquitto_port);
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("agent ingest, {DEVICES} devices publishing QoS 1 for {SECONDS} s, inflight 32 each:");
    for (shape, fields) in [
        ("1 reading per publish", 0usize),
        ("10 readings per publish (JSON)", 10),
    ] {
        let devices = free_port();
        let mut agent = agent(
            dir.path(),
            &format!("gw-{fields}"),
            devices,
            broker,
            fields > 0,
        );
        agent.start();
        let pid = agent.pid().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let addr = SocketAddr::from(([127, 0, 0, 1], devices));
        let cpu_before = cpu_secs(pid);
        let start = Instant::now();
        let acked = drive(addr, fields).await;
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_secs(pid) - cpu_before;
        let rss = peak_rss_mb(pid);
        let samples = (acked * fields.max(1)) as f64;
        let committed_before = metric(http, "dash_ingest_samples_total").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let committed = metric(http, "dash_ingest_samples_total").await;
        assert!(agent.terminate(Duration::from_secs(30)), "{}", agent.log());

        let base_acked = drive(SocketAddr::from(([127, 0, 0, 1], mosquitto_port)), fields).await;
        let base = (base_acked * fields.max(1)) as f64 / SECONDS as f64;
        let rate = samples / secs;
        println!("  {shape}:");
        println!("    dash-agent, durable         {rate:>10.0} samples/s  (target >= 100,000)");
        println!("    baseline: Mosquitto, memory {base:>10.0} samples/s");
        println!("    ratio agent / Mosquitto     {:>10.2}", rate / base);
        println!(
            "    agent CPU {:.2} ms per 1,000 samples, peak RSS {rss:.1} MB (target <= 30 MB); {:.0} samples committed in PostgreSQL so far ({committed_before:.0} at the end of the run)",
            cpu * 1e3 / (samples / 1e3),
            committed
        );
        dash_benches::row(
            "agent ingest",
            &format!("{shape}, durable"),
            rate,
            "samples/s",
            dash_benches::Better::Higher,
            "Mosquitto alone, in memory",
            base,
            (fields == 0).then_some(dash_benches::Target::AtLeast(100_000.0)),
        );
    }
    mixed(dir.path(), broker).await;
    assert!(aggregator.terminate(Duration::from_secs(30)));
}

/// Half the devices on MQTT 5, half on 3.1.1, against one agent at once.
async fn mixed(dir: &Path, broker: u16) {
    let devices = free_port();
    let mut agent = agent(dir, "gw-mixed", devices, broker, false);
    agent.start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], devices));
    let acked = drive_as(addr, 0, |d| {
        if d % 2 == 0 {
            Protocol::V5
        } else {
            Protocol::V311
        }
    })
    .await;
    assert!(agent.terminate(Duration::from_secs(30)), "{}", agent.log());
    let rate = |p: Protocol| {
        acked
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, n)| *n)
            .sum::<usize>() as f64
            / SECONDS as f64
    };
    let (v5, v311) = (rate(Protocol::V5), rate(Protocol::V311));
    println!(
        "  MQTT 5 beside 3.1.1, {} devices each, 1 reading per publish, one agent:",
        DEVICES / 2
    );
    println!("    MQTT 5 devices              {v5:>10.0} samples/s");
    println!("    baseline: 3.1.1 devices     {v311:>10.0} samples/s");
    println!(
        "    ratio 5 / 3.1.1             {:>10.2}  (target >= 0.95)",
        v5 / v311
    );
    dash_benches::row(
        "agent ingest",
        "MQTT 5 devices beside 3.1.1",
        v5,
        "samples/s",
        dash_benches::Better::Higher,
        "the 3.1.1 devices in the same run",
        v311,
        Some(dash_benches::Target::AtLeast(0.95 * v311)),
    );
}
