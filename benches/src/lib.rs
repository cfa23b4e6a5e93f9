//! What every benchmark reports: a figure beside a baseline measured in the
//! same run, as a ratio, and the target where one is set. Each [`report`]
//! prints its row and, when `DASH_BENCH_RESULTS` names a file, appends it
//! there as a JSON line for the runner (`dash-bench`), which prints the
//! table and writes `benches/RESULTS.md`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_aggregator::storage::BinaryCopy;
use dash_tests::pg::TestPostgres;
use serde::{Deserialize, Serialize};

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// A target a figure should meet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met(self, figure: f64) -> bool {
        match self {
            Target::AtLeast(t) => figure >= t,
            Target::AtMost(t) => figure <= t,
        }
    }

    pub fn label(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {}", number(t)),
            Target::AtMost(t) => format!("<= {}", number(t)),
        }
    }
}

/// One row of the results table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The group (`wire`, `end to end`, ...).
    pub group: String,
    /// What was measured.
    pub scenario: String,
    pub figure: f64,
    pub unit: String,
    pub better: Better,
    /// What the figure is compared with, measured in the same run.
    pub baseline_label: String,
    pub baseline: f64,
    pub target: Option<Target>,
}

impl Row {
    /// How many times better than the baseline Dash is (> 1: better).
    pub fn advantage(&self) -> f64 {
        match self.better {
            Better::Higher => self.figure / self.baseline,
            Better::Lower => self.baseline / self.figure,
        }
    }
}

/// A number with thousands separators, or two decimals below 100.
pub fn number(x: f64) -> String {
    if x.abs() >= 100.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 { format!("-{out}") } else { out }
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Prints `row` and hands it to the runner.
pub fn report(row: Row) {
    let target = row
        .target
        .map(|t| {
            format!(
                "  target {} {}: {}",
                t.label(),
                row.unit,
                if t.met(row.figure) { "met" } else { "NOT met" }
            )
        })
        .unwrap_or_default();
    println!(
        "[{}] {}: {} {} | baseline ({}): {} {} | {:.2}x {}{}",
        row.group,
        row.scenario,
        number(row.figure),
        row.unit,
        row.baseline_label,
        number(row.baseline),
        row.unit,
        row.advantage(),
        match row.better {
            Better::Higher => "(higher is better)",
            Better::Lower => "(lower is better)",
        },
        target
    );
    if let Ok(path) = std::env::var("DASH_BENCH_RESULTS") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let line = serde_json::to_string(&row).expect("rows serialize");
        writeln!(file, "{line}").expect("results file writable");
    }
}

/// Shorthand for [`report`].
#[allow(clippy::too_many_arguments)]
pub fn row(
    group: &str,
    scenario: &str,
    figure: f64,
    unit: &str,
    better: Better,
    baseline_label: &str,
    baseline: f64,
    target: Option<Target>,
) {
    report(Row {
        group: group.into(),
        scenario: scenario.into(),
        figure,
        unit: unit.into(),
        better,
        baseline_label: baseline_label.into(),
        baseline,
        target,
    });
}

/// The `q` quantile (0..=1) of `values`.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    assert!(!values.is_empty(), "no values");
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process now, and its peak, in bytes.
pub fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            * 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// A device publishing one reading every `every` until `stop`; its value is
/// the publish time in ms since `epoch` (device `probe`, metric `latency`).
pub fn probe(
    addr: std::net::SocketAddr,
    every: Duration,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
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

/// Publish -> committed latencies (ms) of [`probe`] readings that appear in
/// PostgreSQL until `stop`, polling every 5 ms.
pub fn watch(
    pg: Arc<TestPostgres>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    const PROBES: &str =
        "FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = 'probe'";
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut last: f64 =
            sqlx::query_scalar(&format!("SELECT coalesce(max(x.value), -1) {PROBES}"))
                .fetch_one(&pg.pool)
                .await
                .unwrap();
        while !stop.load(Ordering::Relaxed) {
            let rows: Vec<f64> =
                sqlx::query_scalar(&format!("SELECT x.value {PROBES} AND x.value > $1"))
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

/// The storage limit: one binary COPY of `n` rows (tenant, series, ts,
/// value; `series` series, one reading a second each) into a table indexed
/// on (series, ts), the plain row-per-point way. Returns how long the COPY
/// took; the table is dropped after.
pub async fn copy_baseline(pg: &TestPostgres, n: i64, series: i64) -> Duration {
    let mut conn = pg.pool.acquire().await.unwrap();
    let mut rows = BinaryCopy::new(4);
    for i in 0..n {
        rows.row();
        rows.text("base");
        rows.int8(i % series);
        rows.timestamptz(1_764_000_000_000_000 + (i / series) * 1_000_000);
        rows.float8((i % 1000) as f64);
    }
    let rows = rows.finish();
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
    copy.send(rows).await.unwrap();
    copy.finish().await.unwrap();
    let took = start.elapsed();
    sqlx::query("DROP TABLE baseline_rows")
        .execute(&mut *conn)
        .await
        .unwrap();
    took
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_targets_and_quantiles() {
        assert_eq!(number(1_234_567.0), "1,234,567");
        assert_eq!(number(3.0), "3.00");
        assert!(Target::AtMost(4.0).met(3.0) && !Target::AtLeast(4.0).met(3.0));
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
    }
}
