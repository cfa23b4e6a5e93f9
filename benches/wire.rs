//! Bytes per sample on the wire and encode/decode speed, for batches shaped
//! like an agent's (100 sensors x 50 s at 1 Hz, readings with two decimals
//! drifting slowly), against JSON (one object per sample, as many HTTP
//! ingest APIs take) and InfluxDB line protocol, measured in the same run.
//!
//! Run: `cargo bench -p dash-benches --bench wire`

use std::hint::black_box;
use std::time::Instant;

use dash_shared::wire::{self, Limits};
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

fn main() {
    let b = batch(100, 50);
    let n = b.sample_count() as f64;
    let msg = Message::Batch(b.clone());
    let dash = wire::encode(&msg, &Limits::default()).unwrap();
    let json = json_lines(&b);
    let lp = line_protocol(&b);
    let dash_b = dash.len() as f64 / n;
    println!("wire size, {} samples per batch:", n);
    println!("  dash      {dash_b:7.2} bytes/sample");
    println!(
        "  json      {:7.2} bytes/sample   ratio json/dash {:.1}x",
        json.len() as f64 / n,
        json.len() as f64 / dash.len() as f64
    );
    println!(
        "  line prot {:7.2} bytes/sample   ratio lp/dash   {:.1}x",
        lp.len() as f64 / n,
        lp.len() as f64 / dash.len() as f64
    );

    let rounds = 200;
    let enc = time(rounds, || wire::encode(&msg, &Limits::default()).unwrap());
    let dec = time(rounds, || wire::decode(&dash, &Limits::default()).unwrap());
    let jenc = time(rounds / 10, || json_lines(&b));
    let jdec = time(rounds / 10, || {
        json.split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    });
    let rate = |secs: f64| n / secs / 1e6;
    println!("speed (million samples/s):");
    println!(
        "  encode dash {:7.2}   json {:7.2}   ratio {:.1}x",
        rate(enc),
        rate(jenc),
        jenc / enc
    );
    println!(
        "  decode dash {:7.2}   json {:7.2}   ratio {:.1}x",
        rate(dec),
        rate(jdec),
        jdec / dec
    );
}
