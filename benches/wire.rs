//! Bytes per sample on the wire and encode/decode speed, for batches shaped
//! like an agent's (100 sensors x 50 s at 1 Hz, readings with two decimals
//! drifting slowly), against JSON (one object per sample, as many HTTP
//! ingest APIs take) and InfluxDB line protocol, measured in the same run.
//!
//! Run: `cargo bench -p dash-benches --bench wire`

use std::hint::black_box;
use std::time::Instant;

use dash_benches::{Better, Target, row};
use dash_shared::wire::{self, Limits, Window, WindowBlock};
use dash_shared::{Batch, Message, SeriesBlock, SeriesKey, StreamId};

fn batch(series: usize, seconds: i64) -> Batch {
    let start = 1_764_000_000 * 1_000_000i64;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let series = (0..series)
        .map(|s| {
            let mut centi = 2000 + (s as i64 % 500);
            let values = (0..seconds)
                .map(|_| {
                    centi += (rand() % 7) as i64 - 3;
                    centi as f64 / 100.0
                })
                .collect();
            // Real sampling jitters by a few milliseconds.
            let timestamps = (0..seconds)
                .map(|i| start + i * 1_000_000 + (rand() % 5) as i64 * 1_000)
                .collect();
            SeriesBlock {
                key: SeriesKey::with_tags(
                    format!("sensor-{s:05}"),
                    "temperature",
                    [("site".into(), "plant-2".into())],
                ),
                timestamps,
                values,
            }
        })
        .collect();
    Batch {
        stream: StreamId {
            name: "telemetry".into(),
            incarnation: 1,
        },
        seq: 1,
        floor: 1,
        series,
        windows: Vec::new(),
        events: Vec::new(),
    }
}

fn json_lines(b: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    for s in &b.series {
        for (ts, v) in s.timestamps.iter().zip(&s.values) {
            let obj = serde_json::json!({
                "device": s.key.device, "metric": s.key.metric, "tags": {"site": "plant-2"},
                "ts": ts / 1000, "value": v,
            });
            serde_json::to_writer(&mut out, &obj).unwrap();
            out.push(b'\n');
        }
    }
    out
}

fn line_protocol(b: &Batch) -> Vec<u8> {
    let mut out = String::new();
    for s in &b.series {
        for (ts, v) in s.timestamps.iter().zip(&s.values) {
            out.push_str(&format!(
                "{},device={},site=plant-2 value={} {}\n",
                s.key.metric,
                s.key.device,
                v,
                ts * 1000
            ));
        }
    }
    out.into_bytes()
}

fn time<T>(rounds: u32, mut f: impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(f());
    }
    start.elapsed().as_secs_f64() / f64::from(rounds)
}

/// Sensors that report on change: 100 series, each reading at irregular
/// times (0.2 to 30 s apart, ms resolution) with values that jump.
fn irregular(series: usize, per_series: usize) -> Batch {
    let start = 1_764_000_000 * 1_000_000i64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let series = (0..series)
        .map(|s| {
            let mut t = start;
            let mut timestamps = Vec::with_capacity(per_series);
            let mut values = Vec::with_capacity(per_series);
            for _ in 0..per_series {
                t += (200 + rand() % 29_800) as i64 * 1_000;
                timestamps.push(t);
                values.push((rand() % 100_000) as f64 / 100.0);
            }
            SeriesBlock {
                key: SeriesKey::with_tags(
                    format!("valve-{s:05}"),
                    "position",
                    [("site".into(), "plant-2".into())],
                ),
                timestamps,
                values,
            }
        })
        .collect();
    Batch::samples(
        StreamId {
            name: "telemetry".into(),
            incarnation: 1,
        },
        1,
        1,
        series,
    )
}

/// One-minute windows of the regular sensors' samples.
fn windows_of(b: &Batch) -> (Batch, usize) {
    let mut blocks = Vec::new();
    let mut summarised = 0;
    for s in &b.series {
        let mut windows: Vec<Window> = Vec::new();
        for (ts, v) in s.timestamps.iter().zip(&s.values) {
            let start = ts - ts.rem_euclid(60_000_000);
            let offset = (ts - start) as u32;
            match windows.last_mut() {
                Some(w) if w.start == start => {
                    w.count += 1;
                    w.sum += v;
                    w.min = w.min.min(*v);
                    w.max = w.max.max(*v);
                    w.last = *v;
                    w.last_offset = offset;
                }
                _ => windows.push(Window {
                    start,
                    count: 1,
                    sum: *v,
                    min: *v,
                    max: *v,
                    first: *v,
                    first_offset: offset,
                    last: *v,
                    last_offset: offset,
                }),
            }
            summarised += 1;
        }
        blocks.push(WindowBlock {
            key: s.key.clone(),
            width_secs: 60,
            windows,
        });
    }
    let mut batch = Batch::samples(b.stream.clone(), 1, 1, Vec::new());
    batch.windows = blocks;
    (batch, summarised)
}

fn windows_json(b: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    for block in &b.windows {
        for w in &block.windows {
            let obj = serde_json::json!({
                "device": block.key.device, "metric": block.key.metric, "tags": {"site": "plant-2"},
                "start": w.start / 1000, "width": block.width_secs, "count": w.count, "sum": w.sum,
                "min": w.min, "max": w.max, "first": w.first, "last": w.last,
            });
            serde_json::to_writer(&mut out, &obj).unwrap();
            out.push(b'\n');
        }
    }
    out
}

fn main() {
    let limits = Limits::default();
    let size = |b: &Batch| {
        wire::encode(&Message::Batch(b.clone()), &limits)
            .unwrap()
            .len() as f64
    };
    let (group, per) = ("wire", "bytes/sample");

    // Regular 1 Hz sensors, 100 series x 50 s, as an agent batches them.
    let b = batch(100, 50);
    let n = b.sample_count() as f64;
    let dash = size(&b);
    let json = json_lines(&b).len() as f64;
    let lp = line_protocol(&b).len() as f64;
    row(
        group,
        "1 Hz sensors (100 x 50 s)",
        dash / n,
        per,
        Better::Lower,
        "JSON, one object per sample",
        json / n,
        Some(Target::AtMost(4.0)),
    );
    row(
        group,
        "1 Hz sensors (100 x 50 s)",
        dash / n,
        per,
        Better::Lower,
        "InfluxDB line protocol",
        lp / n,
        Some(Target::AtMost(4.0)),
    );

    // Irregular readings (report on change).
    let irr = irregular(100, 50);
    let n_irr = irr.sample_count() as f64;
    row(
        group,
        "irregular readings (100 x 50)",
        size(&irr) / n_irr,
        per,
        Better::Lower,
        "JSON, one object per sample",
        json_lines(&irr).len() as f64 / n_irr,
        None,
    );
    row(
        group,
        "irregular readings (100 x 50)",
        size(&irr) / n_irr,
        per,
        Better::Lower,
        "InfluxDB line protocol",
        line_protocol(&irr).len() as f64 / n_irr,
        None,
    );

    // One-minute windows of a 10-minute stretch of the 1 Hz sensors.
    let long = batch(100, 600);
    let (win, summarised) = windows_of(&long);
    let n_windows: usize = win.windows.iter().map(|w| w.windows.len()).sum();
    let win_bytes = size(&win);
    row(
        group,
        "1-minute windows (100 series x 10)",
        win_bytes / n_windows as f64,
        "bytes/window",
        Better::Lower,
        "JSON, one object per window",
        windows_json(&win).len() as f64 / n_windows as f64,
        None,
    );
    row(
        group,
        "1-minute windows, per sample summarised",
        win_bytes / summarised as f64,
        per,
        Better::Lower,
        "the raw samples in Dash's encoding",
        size(&long) / long.sample_count() as f64,
        None,
    );

    // Codec speed on the regular batch.
    let msg = Message::Batch(b.clone());
    let encoded = wire::encode(&msg, &limits).unwrap();
    let json_bytes = json_lines(&b);
    let rounds = 200;
    let enc = time(rounds, || wire::encode(&msg, &limits).unwrap());
    let dec = time(rounds, || wire::decode(&encoded, &limits).unwrap());
    let jenc = time(rounds / 10, || json_lines(&b));
    let jdec = time(rounds / 10, || {
        json_bytes
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    });
    let rate = |secs: f64| n / secs;
    row(
        group,
        "encode",
        rate(enc),
        "samples/s",
        Better::Higher,
        "serde_json, one object per sample",
        rate(jenc),
        None,
    );
    row(
        group,
        "decode",
        rate(dec),
        "samples/s",
        Better::Higher,
        "serde_json, one object per sample",
        rate(jdec),
        None,
    );
}
