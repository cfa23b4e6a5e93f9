//! The one-box defaults and the other device source: the aggregator's private
//! PostgreSQL, and an agent reading devices from a broker already on the
//! gateway (Mosquitto) instead of its own listener.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dash_tests::device;
use dash_tests::process::{self, DeviceSource, Mosquitto};
use dash_tests::{eventually, free_port};
use sqlx::{Connection, PgConnection};

async fn count(url: &str) -> Option<i64> {
    let mut conn = PgConnection::connect(url).await.ok()?;
    sqlx::query_scalar("SELECT count(*) FROM samples")
        .fetch_one(&mut conn)
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_url_the_aggregator_runs_adopts_and_stops_its_own_postgres() {
    let dir = tempfile::tempdir().unwrap();
    // As root, the private cluster runs as `postgres`, which must reach it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), "", broker, http, &[]);
    aggregator.start();
    let mut agent = process::agent(
        dir.path(),
        "solo",
        "gw-1",
        DeviceSource::Listen(devices),
        broker,
    );
    agent.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], devices));
    let stop = Arc::new(AtomicBool::new(false));
    let report = device::publish(
        addr,
        "th-1",
        "temp",
        0..500,
        stop.clone(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.acked.len(), 500);
    let pg_dir = dir.path().join("aggregator/postgres");
    let url = format!("postgres://dash@localhost/dash?host={}", pg_dir.display());
    eventually(
        Duration::from_secs(60),
        "rows in the private PostgreSQL",
        || async { (count(&url).await? == 500).then_some(()) },
    )
    .await;

    // Killed, its PostgreSQL keeps running; the restarted aggregator adopts it.
    aggregator.kill9();
    aggregator.start();
    let more = device::publish(
        addr,
        "th-1",
        "temp",
        500..700,
        stop,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(more.acked.len(), 200);
    eventually(
        Duration::from_secs(60),
        "rows after the restart",
        || async { (count(&url).await? == 700).then_some(()) },
    )
    .await;

    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(
        aggregator.terminate(Duration::from_secs(20)),
        "aggregator did not stop cleanly:\n{}",
        aggregator.log()
    );
    assert!(
        !pg_dir.join("data/postmaster.pid").exists(),
        "the private PostgreSQL is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reading_a_gateway_mosquitto_acks_only_what_it_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let pg = dash_tests::pg::TestPostgres::start().await;
    let (broker, http, local) = (free_port(), free_port(), free_port());
    let _gateway_broker = Mosquitto::start(dir.path(), local);
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let mut agent = process::agent(
        dir.path(),
        "acme",
        "gw-s",
        DeviceSource::Broker(local),
        broker,
    );
    agent.start();
    // Let the agent's persistent session exist before devices publish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], local));
    let stop = Arc::new(AtomicBool::new(false));
    let first = device::publish(
        addr,
        "th-s",
        "temp",
        0..1000,
        stop.clone(),
        Duration::from_secs(60),
    )
    .await;
    // The agent is killed; what devices publish meanwhile waits in Mosquitto.
    agent.kill9();
    let second = device::publish(
        addr,
        "th-s",
        "temp",
        1000..2000,
        stop,
        Duration::from_secs(60),
    )
    .await;
    agent.start();
    eventually(Duration::from_secs(60), "both rounds stored", || async {
        (rows(&pg.pool).await.len() == 2000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = rows(&pg.pool).await;
    let mut report = first;
    report.acked.extend(second.acked);
    report.sends.extend(second.sends);
    assert_eq!(report.acked.len(), 2000, "Mosquitto acked every publish");
    // Every reading is stored. One the agent flushed but whose ack to
    // Mosquitto died with it comes back from the broker once more.
    for v in &report.acked {
        let n = all.get(v).copied().unwrap_or(0);
        let sends = i64::from(report.sends[v]);
        assert!(
            n >= 1 && n <= sends + 1,
            "reading {v} stored {n} times, sent {sends} times"
        );
    }
    let doubled = all.values().filter(|n| **n > 1).count();
    eprintln!(
        "broker mode: 2000 readings, {doubled} stored twice (acks to Mosquitto lost in the kill)"
    );
}

async fn rows(pool: &sqlx::PgPool) -> std::collections::HashMap<i64, i64> {
    let counts: Vec<(f64, i64)> =
        sqlx::query_as("SELECT value, count(*) FROM samples GROUP BY value")
            .fetch_all(pool)
            .await
            .unwrap();
    counts.into_iter().map(|(v, n)| (v as i64, n)).collect()
}

/// The private cluster's postmaster, from its pid file.
fn postmaster(pg_dir: &std::path::Path) -> Option<i32> {
    let pid = std::fs::read_to_string(pg_dir.join("data/postmaster.pid")).ok()?;
    pid.lines().next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_harms_nothing_and_readyz_follows_the_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut first = process::aggregator(dir.path(), "", broker, http, &[]);
    first.start();
    let ready = || async {
        let (status, body) = dash_tests::get_text(http, "/readyz").await?;
        Some((status, body))
    };
    eventually(
        Duration::from_secs(60),
        "the first aggregator ready",
        || async { ready().await.filter(|(s, _)| *s == 200) },
    )
    .await;
    let mut agent = process::agent(
        dir.path(),
        "solo",
        "gw-1",
        DeviceSource::Listen(devices),
        broker,
    );
    agent.start();
    let stop = Arc::new(AtomicBool::new(false));
    let running = device::background(
        SocketAddr::from(([127, 0, 0, 1], devices)),
        "th-1",
        stop.clone(),
    );
    let pg_dir = dir.path().join("aggregator/postgres");
    let url = format!("postgres://dash@localhost/dash?host={}", pg_dir.display());
    let stored = eventually(Duration::from_secs(60), "readings stored", || async {
        count(&url).await.filter(|n| *n > 100)
    })
    .await;

    // A second serve on the same data_dir (other ports): refused at once,
    // and the first one's PostgreSQL keeps running.
    let mut second = process::Proc::new(
        "dash-aggregator",
        &["serve"],
        &[
            (
                "DASH_DATA_DIR",
                dir.path().join("aggregator").display().to_string(),
            ),
            ("DASH_BROKER__LISTEN", format!("127.0.0.1:{}", free_port())),
            ("DASH_HTTP__LISTEN", format!("127.0.0.1:{}", free_port())),
        ],
        dir.path().join("second.log"),
    );
    second.start();
    let status = second
        .wait_exit(Duration::from_secs(30))
        .expect("the second aggregator kept running");
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains("another dash-aggregator")
            && log.contains(&format!("pid {}", first.pid().unwrap())),
        "{log}"
    );
    assert!(
        postmaster(&pg_dir).is_some(),
        "the second start stopped the cluster"
    );
    eventually(
        Duration::from_secs(30),
        "the first aggregator still storing",
        || async { count(&url).await.filter(|n| *n > stored + 100) },
    )
    .await;
    assert_eq!(ready().await.map(|r| r.0), Some(200));

    // The cluster dies under the first aggregator: not ready, then
    // restarted by it, ready again, and storing.
    let pid = postmaster(&pg_dir).expect("a postmaster");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, body) = eventually(Duration::from_secs(30), "/readyz failing", || async {
        ready().await.filter(|(s, _)| *s != 200)
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database"), "{body}");
    assert_eq!(
        dash_tests::get_text(http, "/healthz").await.map(|r| r.0),
        Some(200),
        "the process is up"
    );
    eventually(Duration::from_secs(90), "/readyz ready again", || async {
        ready().await.filter(|(s, _)| *s == 200)
    })
    .await;
    let before = count(&url).await.expect("the database answers again");
    eventually(Duration::from_secs(60), "storing again", || async {
        count(&url).await.filter(|n| *n > before + 100)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = running.await.unwrap();
    let pg = dash_tests::pg::TestPostgres::connect(&url).await;
    device::assert_delivered(&pg, "solo", &[("th-1", &report)]).await;
    let log = first.log();
    assert!(log.contains("starting it again"), "{log}");
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(first.terminate(Duration::from_secs(20)), "{}", first.log());
    assert!(
        postmaster(&pg_dir).is_none(),
        "the owner stopped its cluster on exit"
    );
}
