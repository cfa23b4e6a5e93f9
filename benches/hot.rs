//! Instruction counts of the hot paths under valgrind's callgrind, exact on
//! a noisy machine: decode, encode, buffer append, tier merge, each per
//! sample, beside a baseline doing the same job the plain way, counted the
//! same way in the same run.
//!
//! Run: `cargo bench -p dash-benches --bench hot` (needs valgrind). It
//! re-runs itself under callgrind once per path, counting only inside
//! `measured` (`--toggle-collect`).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::process::Command;

use dash_benches::{Better, row};
use dash_shared::wire::{self, Limits};
use dash_shared::{Batch, Message, SeriesBlock, SeriesKey, StreamId};

const SERIES: usize = 100;
const SECONDS: i64 = 50;
const N: usize = SERIES * SECONDS as usize;

fn batch() -> Batch {
    let start = 1_764_000_000 * 1_000_000i64;
    let series = (0..SERIES)
        .map(|s| SeriesBlock {
            key: SeriesKey::new(format!("sensor-{s:05}"), "temperature"),
            timestamps: (0..SECONDS)
                .map(|i| start + i * 1_000_000 + (i % 5) * 1_000)
                .collect(),
            values: (0..SECONDS)
                .map(|i| (2000 + s as i64 + i % 7) as f64 / 100.0)
                .collect(),
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

fn json_lines(b: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    for s in &b.series {
        for (ts, v) in s.timestamps.iter().zip(&s.values) {
            let obj = serde_json::json!({"device": s.key.device, "metric": s.key.metric, "ts": ts / 1000, "value": v});
            serde_json::to_writer(&mut out, &obj).unwrap();
            out.push(b'\n');
        }
    }
    out
}

fn samples(b: &Batch) -> Vec<dash_agent::sample::Sample> {
    b.series
        .iter()
        .flat_map(|s| {
            s.timestamps
                .iter()
                .zip(&s.values)
                .map(|(ts, v)| dash_agent::sample::Sample {
                    key: s.key.clone(),
                    ts: *ts,
                    value: *v,
                })
        })
        .collect()
}

/// The work counted: everything else (setup, startup) is not.
#[inline(never)]
fn measured(f: &mut dyn FnMut()) {
    f();
}

fn one(path: &str) {
    let b = batch();
    let limits = Limits::default();
    let msg = Message::Batch(b.clone());
    let bytes = wire::encode(&msg, &limits).unwrap();
    let json = json_lines(&b);
    let dir = tempfile::tempdir().unwrap();
    match path {
        "decode" => measured(&mut || {
            black_box(wire::decode(&bytes, &limits).unwrap());
        }),
        "decode-json" => measured(&mut || {
            let v: Vec<serde_json::Value> = json
                .split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            black_box(v);
        }),
        "encode" => measured(&mut || {
            black_box(wire::encode(&msg, &limits).unwrap());
        }),
        "encode-json" => measured(&mut || {
            black_box(json_lines(&b));
        }),
        "append" => {
            let buffer = dash_agent::buffer::Buffer::open(dir.path()).unwrap();
            let s = samples(&b);
            measured(&mut || {
                black_box(buffer.append(&s).unwrap());
            });
        }
        "append-sled" => {
            // The plain way: one sled insert per sample, key = series + time.
            let db = sled::open(dir.path().join("plain")).unwrap();
            let s = samples(&b);
            measured(&mut || {
                for x in &s {
                    let mut key = x.key.device.as_bytes().to_vec();
                    key.extend_from_slice(&x.ts.to_be_bytes());
                    db.insert(key, &x.value.to_be_bytes()).unwrap();
                }
            });
        }
        "merge" => measured(&mut || {
            let mut rollup: BTreeMap<(usize, i64), dash_aggregator::storage::tiers::Partial> =
                BTreeMap::new();
            for (i, s) in b.series.iter().enumerate() {
                for (ts, v) in s.timestamps.iter().zip(&s.values) {
                    rollup
                        .entry((i, dash_aggregator::storage::tiers::hour_of(*ts)))
                        .and_modify(|p| p.add(*ts, *v))
                        .or_insert_with(|| dash_aggregator::storage::tiers::Partial::new(*ts, *v));
                }
            }
            black_box(rollup);
        }),
        "merge-collect" => measured(&mut || {
            // The plain way: gather each bucket's values, then aggregate.
            let mut buckets: HashMap<(usize, i64), Vec<(i64, f64)>> = HashMap::new();
            for (i, s) in b.series.iter().enumerate() {
                for (ts, v) in s.timestamps.iter().zip(&s.values) {
                    buckets
                        .entry((i, dash_aggregator::storage::tiers::hour_of(*ts)))
                        .or_default()
                        .push((*ts, *v));
                }
            }
            let out: Vec<(usize, f64, f64, f64)> = buckets
                .into_iter()
                .map(|((i, _), mut v)| {
                    v.sort_by_key(|x| x.0);
                    let sum: f64 = v.iter().map(|x| x.1).sum();
                    (i, sum, v.first().unwrap().1, v.last().unwrap().1)
                })
                .collect();
            black_box(out);
        }),
        other => panic!("unknown path {other}"),
    }
}

/// Instructions counted inside `measured` for `path`, under callgrind.
fn count(path: &str) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = tempfile::NamedTempFile::new().ok()?;
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.path().display()))
        .arg("--toggle-collect=*measured*")
        .arg("--quiet")
        .arg(&exe)
        .args(["--one", path])
        .status()
        .ok()?;
    if !status.success() {
        eprintln!("callgrind failed for {path}");
        return None;
    }
    let text = std::fs::read_to_string(out.path()).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        one(&args[i + 1]);
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed (apt-get install valgrind): no instruction counts");
        return;
    }
    let group = "instructions";
    for (path, base, label, base_label) in [
        (
            "decode",
            "decode-json",
            "decode a 5,000-sample batch",
            "serde_json, one object per sample",
        ),
        (
            "encode",
            "encode-json",
            "encode a 5,000-sample batch",
            "serde_json, one object per sample",
        ),
        (
            "append",
            "append-sled",
            "buffer append (no flush)",
            "a sled insert per sample",
        ),
        (
            "merge",
            "merge-collect",
            "hourly tier merge (Partial)",
            "collect each bucket, sort, aggregate",
        ),
    ] {
        match (count(path), count(base)) {
            (Some(dash), Some(baseline)) => row(
                group,
                label,
                dash / N as f64,
                "instructions/sample",
                Better::Lower,
                base_label,
                baseline / N as f64,
                None,
            ),
            _ => println!("{label}: not counted"),
        }
    }
}
