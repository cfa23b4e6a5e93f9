//! `dash-bench`: runs the benchmark scenarios and prints one table:
//! scenario, Dash's figure, the baseline measured in the same run, the
//! ratio, and the target where one is set. `--write` also writes
//! `benches/RESULTS.md` with the machine, the date and the commit.
//!
//! `cargo run --release -p dash-benches --bin dash-bench -- [--write] [SCENARIO...]`

use std::path::{Path, PathBuf};
use std::process::Command;

use dash_benches::{Better, Row, number};

/// Named scenarios and the bench targets that measure them.
const SCENARIOS: &[(&str, &str, &str)] = &[
    (
        "wire",
        "wire",
        "bytes per sample and codec speed against JSON and line protocol",
    ),
    (
        "storage",
        "storage",
        "the tiered writer and bytes on disk against row-per-point COPY",
    ),
    (
        "fleet",
        "fleet",
        "the liveness sweep of 100,000 devices against reading their rows",
    ),
    (
        "query",
        "query",
        "a 90-day chart through the API against SQL over row-per-point samples",
    ),
    (
        "end_to_end",
        "end_to_end",
        "devices -> agent -> TLS -> aggregator -> PostgreSQL",
    ),
    (
        "agent",
        "agent_ingest",
        "the agent's device ingest against Mosquitto",
    ),
    (
        "footprint",
        "footprint",
        "binary size, memory and CPU of the agent against collectd",
    ),
    (
        "catch_up",
        "catch_up",
        "draining a day of backlog while live data flows",
    ),
    (
        "buffer",
        "buffer",
        "group commit against a flush per record",
    ),
    (
        "instructions",
        "hot",
        "instruction counts of the hot paths under callgrind",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> bool {
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("cannot run {cmd:?}: {e}");
            false
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "--list")
    {
        println!(
            "dash-bench [--write [--append]] [SCENARIO...]\n\n--write: write benches/RESULTS.md; --append: add this run below the one there.\n\nScenarios (default: all):"
        );
        for (name, _, what) in SCENARIOS {
            println!("  {name:<13} {what}");
        }
        return;
    }
    let write = args.iter().any(|a| a == "--write");
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    for w in &wanted {
        if !SCENARIOS.iter().any(|(n, _, _)| n == w) {
            eprintln!("unknown scenario {w:?}; `dash-bench --list` names them");
            std::process::exit(2);
        }
    }
    let chosen: Vec<_> = SCENARIOS
        .iter()
        .filter(|(n, _, _)| wanted.is_empty() || wanted.iter().any(|w| w == n))
        .collect();
    let results = std::env::temp_dir().join(format!("dash-bench-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&results);
    let root = root();
    // The end-to-end scenarios run the release binaries.
    assert!(
        run(Command::new("cargo").current_dir(&root).args([
            "build",
            "--release",
            "--bins",
            "--locked"
        ])),
        "building the release binaries failed"
    );
    // The aarch64 size comes from the ARM build (the Debian 13 root, as CI builds it).
    if chosen.iter().any(|(n, _, _)| *n == "footprint")
        && !root.join("target/arm/dash-agent-aarch64").exists()
        && Path::new("/var/tmp/dash-trixie/usr/bin/cargo").exists()
    {
        run(Command::new(root.join("deploy/scripts/build-arm.sh"))
            .current_dir(&root)
            .env("DASH_SKIP_ARM_SMOKE", "1"));
    }
    let mut failed = Vec::new();
    for (name, bench, what) in &chosen {
        println!("\n=== {name}: {what}");
        let ok = run(Command::new("cargo")
            .current_dir(&root)
            .args(["bench", "--locked", "-p", "dash-benches", "--bench", bench])
            .env("DASH_BENCH_RESULTS", &results));
        if !ok {
            failed.push(*name);
        }
    }
    let rows: Vec<Row> = std::fs::read_to_string(&results)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a result row"))
        .collect();
    let _ = std::fs::remove_file(&results);
    let table = table(&rows);
    println!("\n{table}");
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
    }
    if write {
        let path = root.join("benches/RESULTS.md");
        let text = results_md(&rows, &table, &failed);
        if args.iter().any(|a| a == "--append") {
            // A later run of some scenarios, added below the full run.
            let mut old = std::fs::read_to_string(&path).unwrap_or_default();
            let body = text
                .split_once("\n- Machine:")
                .map_or(text.as_str(), |(_, b)| b);
            old.push_str(&format!(
                "\n## A later run of: {}\n\n- Machine:{body}",
                wanted
                    .iter()
                    .map(|w| w.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            std::fs::write(&path, old).expect("writing RESULTS.md");
        } else {
            std::fs::write(&path, text).expect("writing RESULTS.md");
        }
        println!("written: {}", path.display());
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

/// The results as a Markdown table.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Group | Scenario | Dash | Baseline (same run) | Ratio | Target |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let target = match r.target {
            Some(t) => format!(
                "{} {}: {}",
                t.label(),
                r.unit,
                if t.met(r.figure) {
                    "met"
                } else {
                    "**not met**"
                }
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} {} | {}: {} {} | {:.2}x {} | {} |\n",
            r.group,
            r.scenario,
            number(r.figure),
            r.unit,
            r.baseline_label,
            number(r.baseline),
            r.unit,
            r.advantage(),
            match r.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            },
            target
        ));
    }
    out
}

fn capture(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB")
}

fn results_md(rows: &[Row], table: &str, failed: &[&str]) -> String {
    let commit = capture("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !capture("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let date = capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rustc = capture("rustc", &["--version"]);
    let groups: Vec<&str> = {
        let mut g: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
        g.dedup();
        g
    };
    format!(
        "# Benchmark results\n\n\
         Written by `cargo run --release -p dash-benches --bin dash-bench -- --write`.\n\n\
         - Machine: {machine}\n\
         - Date: {date}\n\
         - Commit: {commit}{dirty}\n\
         - Toolchain: {rustc}\n\
         - Groups: {groups}{failed}\n\n\
         Every figure is beside a baseline measured in the same run on the same machine; the ratio says \
         how many times better Dash is (above 1: better; ↑ higher is better, ↓ lower is better). \
         These machines are noisy: compare ratios, not absolute figures, across runs.\n\n{table}",
        machine = machine(),
        dirty = if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        groups = groups.join(", "),
        failed = if failed.is_empty() {
            String::new()
        } else {
            format!("\n- Failed to run: {}", failed.join(", "))
        },
    )
}
