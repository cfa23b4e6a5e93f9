//! The data path end to end, with real processes, a real PostgreSQL and real
//! brokers: devices -> dash-agent -> MQTT -> dash-aggregator -> PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dash_tests::device;
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource, Mosquitto};
use dash_tests::{eventually, free_port};

const TENANT: &str = "acme";

struct Ports {
    broker: u16,
    http: u16,
    devices: u16,
}

fn ports() -> Ports {
    Ports {
        broker: free_port(),
        http: free_port(),
        devices: free_port(),
    }
}

fn device_addr(p: &Ports) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p.devices))
}

/// An aggregator with its embedded broker, and agent `gw-1` sending to it.
fn start_both(
    dir: &std::path::Path,
    pg: &TestPostgres,
    p: &Ports,
) -> (process::Proc, process::Proc) {
    let mut aggregator = process::aggregator(dir, &pg.url, p.broker, p.http, &[]);
    aggregator.start();
    let mut agent = process::agent(
        dir,
        TENANT,
        "gw-1",
        DeviceSource::Listen(p.devices),
        p.broker,
    );
    agent.start();
    (aggregator, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_taken_while_the_aggregator_is_down_arrive_exactly_once_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let p = ports();
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        "gw-1",
        DeviceSource::Listen(p.devices),
        p.broker,
    );
    agent.start();
    let stop = Arc::new(AtomicBool::new(false));
    let report = device::publish(
        device_addr(&p),
        "th-1",
        "temp",
        0..3000,
        stop,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        report.acked.len(),
        3000,
        "the agent acks while the aggregator is down"
    );
    assert_eq!(pg.total().await, 0);

    // With a query token for the tenant, given as a DASH_ variable.
    let token_hash = dash_runtime::secret::sha256_hex("e2e-token");
    let tokens = format!("[{{tenant=\"{TENANT}\", sha256=\"{token_hash}\"}}]");
    let mut aggregator = process::aggregator(
        dir.path(),
        &pg.url,
        p.broker,
        p.http,
        &[("DASH_HTTP__TOKENS", tokens)],
    );
    aggregator.start();
    device::assert_delivered(&pg, TENANT, &[("th-1", &report)]).await;
    let rows = device::rows_of(&pg, TENANT, "th-1").await;
    assert_eq!(rows.len(), 3000);
    assert!(
        rows.values().all(|n| *n == 1),
        "a reading sent once was stored twice"
    );
    // The aggregator's query API counts the same readings.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = format!(
        "/api/v1/tenants/{TENANT}/query?device=th-1&metric=temp&from={}&to={}&step=1h&agg=count",
        now - 7_200,
        now + 60
    );
    let (status, body) = dash_tests::get_json(p.http, &path, Some("e2e-token")).await;
    assert_eq!(status, 200, "{body}");
    let counted: f64 = body["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .sum();
    assert_eq!(counted, 3000.0, "{body}");
    assert!(
        agent.terminate(Duration::from_secs(10)),
        "agent did not exit cleanly on SIGTERM:\n{}",
        agent.log()
    );
    assert!(
        aggregator.terminate(Duration::from_secs(15)),
        "aggregator did not exit cleanly:\n{}",
        aggregator.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_killed_mid_batch_and_restarted_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let p = ports();
    let (mut aggregator, _agent) = start_both(dir.path(), &pg, &p);
    let stop = Arc::new(AtomicBool::new(false));
    let device = device::background(device_addr(&p), "th-1", stop.clone());
    for round in 0..4u64 {
        // Kill while batches are being committed.
        eventually(
            Duration::from_secs(30),
            "some rows before the kill",
            || async { (pg.total().await > (round as i64) * 500).then_some(()) },
        )
        .await;
        aggregator.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        aggregator.start();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let report = device.await.unwrap();
    device::assert_delivered(&pg, TENANT, &[("th-1", &report)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_path_through_mosquitto_survives_an_aggregator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let p = ports();
    let _mosquitto = Mosquitto::start(dir.path(), p.broker);
    let url = format!("mqtt://127.0.0.1:{}", p.broker);
    let mut aggregator = process::aggregator(
        dir.path(),
        &pg.url,
        p.broker,
        p.http,
        &[("DASH_BROKER__URL", url)],
    );
    aggregator.start();
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        "gw-m",
        DeviceSource::Listen(p.devices),
        p.broker,
    );
    agent.start();
    let stop = Arc::new(AtomicBool::new(false));
    let device = device::background(device_addr(&p), "th-m", stop.clone());
    eventually(
        Duration::from_secs(30),
        "rows through mosquitto",
        || async { (pg.total().await > 500).then_some(()) },
    )
    .await;
    aggregator.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    aggregator.start();
    eventually(
        Duration::from_secs(30),
        "rows after the restart",
        || async { (pg.total().await > 2000).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = device.await.unwrap();
    device::assert_delivered(&pg, TENANT, &[("th-m", &report)]).await;
}

#[tokio::test]
async fn an_agent_whose_buffer_is_corrupt_moves_it_aside_and_delivers_new_readings() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let p = ports();
    let buffer = dir.path().join("gw-1").join("buffer");
    std::fs::create_dir_all(&buffer).unwrap();
    std::fs::write(buffer.join("conf"), b"not sled's").unwrap();
    std::fs::write(buffer.join("db"), vec![0x5a; 100_000]).unwrap();
    let (mut aggregator, mut agent) = start_both(dir.path(), &pg, &p);
    let report = device::publish(
        device_addr(&p),
        "th-1",
        "temp",
        0..500,
        Arc::new(AtomicBool::new(false)),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.acked.len(), 500, "{}", agent.log());
    device::assert_delivered(&pg, TENANT, &[("th-1", &report)]).await;
    assert!(agent.log().contains("moved aside"), "{}", agent.log());
    let aside = std::fs::read_dir(dir.path().join("gw-1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("buffer.corrupt-")
        });
    assert!(aside, "the broken buffer is kept beside the new one");
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(aggregator.terminate(Duration::from_secs(15)));
}
