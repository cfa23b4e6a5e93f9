//! The agent's buffer: throughput of group commit against a flush per
//! record, the latency the commit window adds to an acknowledgement, and
//! sled's files beside the disk budget. Baselines are measured in the same
//! run, on the same disk.
//!
//! Run: `cargo bench -p dash-benches --bench buffer`; `-- --hang-hunt N`
//! repeats only the latency phase N times, each bounded by a minute, and
//! reports how many runs hung (sled's flush once hung here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dash_agent::buffer::{Budget, Buffer};
use dash_agent::commit::Committer;
use dash_agent::sample::{Class, Record, Sample};
use dash_shared::SeriesKey;
use tokio::sync::Notify;

fn record(i: i64) -> Record {
    Record::Sample(Sample {
        key: SeriesKey::new(format!("sensor-{}", i % 100), "temperature"),
        ts: 1_764_000_000_000_000 + i * 10_000,
        value: 20.0 + (i % 700) as f64 / 100.0,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Records per second appended in groups of `group`, one flush per group.
async fn throughput(records: i64, group: i64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(dir.path()).unwrap();
    let all: Vec<Record> = (0..records).map(record).collect();
    let started = Instant::now();
    for chunk in all.chunks(group as usize) {
        buffer.append_records(Class::Telemetry, chunk, &[]).unwrap();
        buffer.flush().await.unwrap();
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// Acknowledgement latencies of `inputs` concurrent inputs, each sending
/// one record at a time, through the committer with `max_delay`, or (None)
/// each doing its own append (one at a time: the buffer has one writer)
/// and its own flush.
async fn latencies(
    inputs: usize,
    per_input: usize,
    max_delay: Option<Duration>,
) -> (Vec<Duration>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Arc::new(Buffer::open(dir.path()).unwrap());
    let committer = max_delay
        .map(|d| Committer::spawn(buffer.clone(), d, 20_000, u64::MAX, Arc::new(Notify::new())));
    let writer = Arc::new(std::sync::Mutex::new(()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for input in 0..inputs {
        let buffer = buffer.clone();
        let writer = writer.clone();
        let committer = committer.as_ref().map(|(c, _)| c.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_input);
            for k in 0..per_input {
                let r = record((input * per_input + k) as i64);
                let t = Instant::now();
                match &committer {
                    Some(c) => {
                        c.enqueue_records(Class::Telemetry, vec![r], None)
                            .await
                            .unwrap()
                            .wait()
                            .await
                            .unwrap();
                    }
                    None => {
                        {
                            let _one = writer.lock().unwrap();
                            buffer.append_records(Class::Telemetry, &[r], &[]).unwrap();
                        }
                        buffer.flush().await.unwrap();
                    }
                }
                out.push(t.elapsed());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (all, rate)
}

/// sled's files after steady churn at a budget of `mib` MiB.
async fn amplification(mib: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget {
        max_bytes: mib << 20,
        ..Budget::default()
    };
    let buffer = Buffer::open(dir.path()).unwrap().with_budget(budget);
    let mut i = 0;
    for _ in 0..(400 * mib) {
        let records: Vec<Record> = (0..1000)
            .map(|_| {
                i += 1;
                record(i)
            })
            .collect();
        buffer
            .append_records(Class::Telemetry, &records, &[])
            .unwrap();
        buffer.flush().await.unwrap();
        while buffer.unsealed() > 0 {
            buffer.seal(500).await.unwrap();
        }
    }
    let status = buffer.status().unwrap();
    (status.bytes, status.disk_bytes)
}

/// Repeats the latency phase `runs` times; a part that takes over a
/// minute is a hang (sled cannot be cancelled: the process exits).
async fn hang_hunt(runs: usize) {
    let started = Instant::now();
    for run in 0..runs {
        for (name, delay) in [
            ("committer, no linger", Some(Duration::ZERO)),
            ("committer, 5 ms linger", Some(Duration::from_millis(5))),
            ("each input its own flush", None),
        ] {
            let part = latencies(8, 250, delay);
            if tokio::time::timeout(Duration::from_secs(60), part)
                .await
                .is_err()
            {
                println!("hang hunt: run {run} of {runs} hung in '{name}' (no progress in 60 s)");
                std::process::exit(2);
            }
        }
    }
    println!(
        "hang hunt: {runs} latency phases, none hung, in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--hang-hunt") {
        let runs = args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(100);
        return hang_hunt(runs).await;
    }
    println!("buffer throughput (fsync per flush, this machine's disk):");
    let grouped = throughput(100_000, 1_000).await;
    let single = throughput(2_000, 1).await;
    println!(
        "  group commit, 1,000 records per flush: {grouped:>10.0} records/s\n  \
         baseline, a flush per record:          {single:>10.0} records/s\n  \
         ratio {:.0}x",
        grouped / single
    );
    dash_benches::row(
        "buffer",
        "group commit, 1,000 records per flush",
        grouped,
        "records/s",
        dash_benches::Better::Higher,
        "a flush per record",
        single,
        None,
    );

    println!("acknowledgement latency, 8 inputs sending one record at a time:");
    let (window, window_rate) = latencies(8, 250, Some(Duration::ZERO)).await;
    let (linger, linger_rate) = latencies(8, 250, Some(Duration::from_millis(5))).await;
    let (direct, direct_rate) = latencies(8, 250, None).await;
    for (name, l, rate) in [
        ("committer (default, no linger)", &window, window_rate),
        ("committer, 5 ms linger        ", &linger, linger_rate),
        ("baseline, each its own flush  ", &direct, direct_rate),
    ] {
        println!(
            "  {name}: p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  {rate:>8.0} records/s",
            percentile(l, 0.5).as_secs_f64() * 1e3,
            percentile(l, 0.99).as_secs_f64() * 1e3,
            l.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    println!(
        "  added by group commit at p50: {:.2} ms; throughput ratio {:.1}x",
        (percentile(&window, 0.5).as_secs_f64() - percentile(&direct, 0.5).as_secs_f64()) * 1e3,
        window_rate / direct_rate
    );
    dash_benches::row(
        "buffer",
        "ack latency p99, 8 inputs",
        percentile(&window, 0.99).as_secs_f64() * 1e3,
        "ms",
        dash_benches::Better::Lower,
        "each input its own flush",
        percentile(&direct, 0.99).as_secs_f64() * 1e3,
        None,
    );
    let (lone, _) = latencies(1, 300, Some(Duration::ZERO)).await;
    let (lone_direct, _) = latencies(1, 300, None).await;
    println!(
        "  one input alone: committer p50 {:.2} ms, own flush p50 {:.2} ms",
        percentile(&lone, 0.5).as_secs_f64() * 1e3,
        percentile(&lone_direct, 0.5).as_secs_f64() * 1e3
    );

    println!("sled's files beside the budget (steady churn, drop_oldest):");
    for mib in [1, 4] {
        let (held, disk) = amplification(mib).await;
        println!(
            "  budget {mib} MiB: {held} bytes held, {disk} bytes of files, {:.1}x the budget",
            disk as f64 / (mib << 20) as f64
        );
    }
}
