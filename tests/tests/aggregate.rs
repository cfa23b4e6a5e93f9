//! Edge pre-aggregation end to end, across agent kills: the windows stored in
//! PostgreSQL equal the raw samples (sent besides them) aggregated per
//! window, so no window was lost or doubled by a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dash_tests::device;
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource};
use dash_tests::{eventually, free_port};

type PerWindow = Vec<(i64, i64, f64, f64, f64)>;

async fn raw_per_window(pg: &TestPostgres) -> PerWindow {
    sqlx::query_as(
        "SELECT (extract(epoch FROM date_bin('1 second', x.ts, timestamptz '2000-01-01 00:00:00+00')))::int8,
                count(*), sum(x.value), min(x.value), max(x.value)
         FROM samples x JOIN series s ON s.id = x.series_id WHERE s.metric = 'temp' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap()
}

async fn windows_per_window(pg: &TestPostgres) -> PerWindow {
    sqlx::query_as(
        "SELECT (extract(epoch FROM w.bucket))::int8, sum(w.count)::int8, sum(w.sum), min(w.min), max(w.max)
         FROM raw_windows w JOIN series s ON s.id = w.series_id WHERE s.metric = 'temp' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_across_agent_kills_equal_the_raw_samples_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let rules = r#"[[aggregate]]
device = "th-*"
metric = "temp"
window_secs = 1
keep_raw = true
late_secs = 1
"#;
    let mut agent = process::agent_with(
        dir.path(),
        "acme",
        "gw-1",
        DeviceSource::Listen(devices),
        broker,
        rules,
    );
    agent.start();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], devices));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            device::publish(
                addr,
                "th-1",
                "temp",
                0..1_000_000,
                stop,
                Duration::from_secs(60),
            )
            .await
        })
    };
    for round in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(900 + 400 * round)).await;
        agent.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        agent.start();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let report = publisher.await.unwrap();
    assert!(
        report.acked.len() > 100,
        "too little progress: {}",
        report.acked.len()
    );
    // Every acked reading is in the raw tier, and the windows (sealed a
    // second after they close) add up to the same per window.
    let raw = eventually(
        Duration::from_secs(60),
        "windows matching the raw samples",
        || async {
            let raw = raw_per_window(&pg).await;
            let count: i64 = raw.iter().map(|r| r.1).sum();
            (count as usize >= report.acked.len() && windows_per_window(&pg).await == raw)
                .then_some(raw)
        },
    )
    .await;
    assert!(raw.len() >= 3, "the readings span several windows: {raw:?}");
    let rows: std::collections::HashMap<i64, i64> = sqlx::query_as::<_, (f64, i64)>(
        "SELECT x.value, count(*) FROM samples x JOIN series s ON s.id = x.series_id WHERE s.metric = 'temp' GROUP BY 1",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(v, n)| (v as i64, n))
    .collect();
    device::check_exactly_once(&report, &rows);
    assert!(agent.terminate(Duration::from_secs(10)), "{}", agent.log());
    assert!(aggregator.terminate(Duration::from_secs(15)));
}
