//! Modbus input end to end: the simulator (TCP, or RTU over a socat pty
//! pair) -> dash-agent -> dash-aggregator -> PostgreSQL.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use dash_agent::modbus::{DataType, Kind, ModbusConfig, ModbusDevice, ModbusPoint, Order};
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource, Proc};
use dash_tests::{eventually, free_port};
use tokio_util::sync::CancellationToken;

fn device(name: &str, address: String, serial: String, points: Vec<ModbusPoint>) -> ModbusDevice {
    ModbusDevice {
        name: name.into(),
        address,
        serial,
        baud: 19_200,
        parity: "none".into(),
        stop_bits: 1,
        data_bits: 8,
        unit_id: 1,
        poll_interval_ms: 200,
        timeout_ms: 300,
        retries: 1,
        backoff_ms: 50,
        max_gap: 0,
        points,
    }
}

fn counter() -> ModbusPoint {
    ModbusPoint {
        metric: "uptime".into(),
        kind: Kind::Holding,
        address: 0,
        data_type: DataType::U16,
        byte_order: Order::Big,
        word_order: Order::Big,
        scale: 1.0,
        offset: 0.0,
        unit: "s".into(),
    }
}

fn modbus_toml(devices: Vec<ModbusDevice>) -> String {
    #[derive(serde::Serialize)]
    struct Wrap {
        modbus: ModbusConfig,
    }
    toml::to_string(&Wrap {
        modbus: ModbusConfig { devices },
    })
    .unwrap()
}

struct Setup {
    pg: TestPostgres,
    aggregator: Proc,
    agent: Proc,
}

async fn start(dir: &Path, devices: Vec<ModbusDevice>) -> Setup {
    start_with(dir, devices, "").await
}

async fn start_with(dir: &Path, devices: Vec<ModbusDevice>, more_toml: &str) -> Setup {
    let pg = TestPostgres::start().await;
    let (broker, http) = (free_port(), free_port());
    let mut aggregator = process::aggregator(dir, &pg.url, broker, http, &[]);
    aggregator.start();
    let mut agent = process::agent_with(
        dir,
        "plant",
        "gw-modbus",
        DeviceSource::Listen(free_port()),
        broker,
        &format!("{}\n{more_toml}", modbus_toml(devices)),
    );
    agent.start();
    Setup {
        pg,
        aggregator,
        agent,
    }
}

async fn start_sim(port: u16) -> CancellationToken {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let done = stop.clone();
    tokio::spawn(async move {
        dash_sim::serve_tcp(listener, async move { done.cancelled().await }).await
    });
    stop
}

/// The latest value of each metric of `device`.
async fn latest(pg: &TestPostgres, device: &str) -> HashMap<String, f64> {
    sqlx::query_as::<_, (String, f64)>(
        "SELECT DISTINCT ON (s.metric) s.metric, x.value FROM samples x JOIN series s ON s.id = x.series_id
         WHERE s.device = $1 ORDER BY s.metric, x.ts DESC",
    )
    .bind(device)
    .fetch_all(&pg.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn statuses(pg: &TestPostgres, device: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT body->>'metric', body->>'status', body->>'error' FROM events
         WHERE source = $1 AND kind = 'modbus.status' ORDER BY ts",
    )
    .bind(device)
    .fetch_all(&pg.pool)
    .await
    .unwrap()
}

async fn check_fixtures(s: &Setup, device: &str, fixtures: &[dash_sim::Fixture]) {
    let values = eventually(
        Duration::from_secs(60),
        "every fixture in PostgreSQL",
        || async {
            let v = latest(&s.pg, device).await;
            fixtures
                .iter()
                .all(|f| v.contains_key(&f.point.metric))
                .then_some(v)
        },
    )
    .await;
    for f in fixtures {
        assert_eq!(values[&f.point.metric], f.value, "{:?}", f.point);
    }
}

#[tokio::test]
async fn every_type_and_byte_and_word_order_reads_as_its_value_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sim = start_sim(port).await;
    let fixtures = dash_sim::fixtures();
    let mut points: Vec<ModbusPoint> = fixtures.iter().map(|f| f.point.clone()).collect();
    points.push(counter());
    let plc = device("plc-1", format!("127.0.0.1:{port}"), String::new(), points);
    // A transform renames the counter's device and scales it: the wiring of transforms into the Modbus input.
    let transform = r#"[[transform]]
input = "modbus"
metric = "uptime"
device_map = { "plc-1" = "plc-one" }
scale = 0.001
"#;
    let mut s = start_with(dir.path(), vec![plc], transform).await;
    check_fixtures(&s, "plc-1", &fixtures).await;
    let uptime: (String, String, f64) = eventually(Duration::from_secs(30), "the transformed counter", || async {
        sqlx::query_as(
            "SELECT s.device, s.tags->>'unit', max(x.value) FROM samples x JOIN series s ON s.id = x.series_id
             WHERE s.metric = 'uptime' GROUP BY 1, 2",
        )
        .fetch_optional(&s.pg.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!((uptime.0.as_str(), uptime.1.as_str()), ("plc-one", "s"));
    // The simulator counts seconds since it started: a few, unscaled; well under 1 scaled by 0.001.
    assert!(uptime.2 < 1.0, "scaled by 0.001: {}", uptime.2);
    assert!(statuses(&s.pg, "plc-1").await.is_empty(), "no point failed");
    let (clean, log) = terminate_answering(s.agent).await;
    assert!(clean, "{log}");
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
}

#[tokio::test]
async fn exceptions_and_timeouts_report_a_status_while_other_points_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sim = start_sim(port).await;
    let mut forbidden = counter();
    forbidden.metric = "forbidden".into();
    forbidden.address = dash_sim::FORBIDDEN_FROM + 10;
    let good = device(
        "plc-1",
        format!("127.0.0.1:{port}"),
        String::new(),
        vec![counter(), forbidden],
    );
    let mut silent = device(
        "plc-dead",
        format!("127.0.0.1:{port}"),
        String::new(),
        vec![counter()],
    );
    silent.unit_id = dash_sim::SILENT_UNIT;
    let mut s = start(dir.path(), vec![good, silent]).await;
    let first = eventually(Duration::from_secs(60), "two status events", || async {
        let a = statuses(&s.pg, "plc-1").await;
        let b = statuses(&s.pg, "plc-dead").await;
        (!a.is_empty() && !b.is_empty()).then_some((a, b))
    })
    .await;
    assert_eq!(first.0[0].0, "forbidden");
    assert_eq!(first.0[0].1, "error");
    assert!(first.0[0].2.contains("IllegalDataAddress"), "{:?}", first.0);
    assert_eq!(first.1[0].1, "error");
    assert!(
        first.1[0].2.contains("no reply within 300 ms"),
        "{:?}",
        first.1
    );
    // The good point keeps coming while the others fail.
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = 'plc-1' AND s.metric = 'uptime'",
        )
        .fetch_one(&s.pg.pool)
        .await
        .unwrap()
    };
    let before = count().await;
    eventually(
        Duration::from_secs(30),
        "more readings of the good point",
        || async { (count().await >= before + 5).then_some(()) },
    )
    .await;
    // A status is reported on change, not on every poll.
    assert_eq!(statuses(&s.pg, "plc-1").await.len(), 1);
    let (clean, log) = terminate_answering(s.agent).await;
    assert!(clean, "{log}");
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
}

/// Stops `agent` off this test's one runtime thread, so the simulator on
/// it keeps answering while the agent shuts down: whether it stopped
/// cleanly within 10 s, and its log.
async fn terminate_answering(mut agent: Proc) -> (bool, String) {
    tokio::task::spawn_blocking(move || (agent.terminate(Duration::from_secs(10)), agent.log()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_device_that_goes_silent_mid_poll_does_not_hold_the_agents_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // Connections are accepted by the kernel and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let points: Vec<ModbusPoint> = (0..40)
        .map(|i| ModbusPoint {
            metric: format!("r{i}"),
            address: i * 10,
            ..counter()
        })
        .collect();
    let plc = device(
        "plc-silent",
        silent.local_addr().unwrap().to_string(),
        String::new(),
        points,
    );
    let mut s = start(dir.path(), vec![plc]).await;
    eventually(Duration::from_secs(60), "the poll started", || async {
        s.agent
            .log()
            .contains("polling Modbus device")
            .then_some(())
    })
    .await;
    // 40 reads of 300 ms each, retried: a cycle takes over 20 s. Shutdown
    // (5 s of grace in these tests) must not wait for it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    assert!(
        s.agent.terminate(Duration::from_secs(6)),
        "{}",
        s.agent.log()
    );
    assert!(
        !s.agent.log().contains("inputs did not close"),
        "stopped in {:?}: {}",
        started.elapsed(),
        s.agent.log()
    );
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
}

#[tokio::test]
async fn a_server_that_disappears_and_comes_back_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sim = start_sim(port).await;
    let plc = device(
        "plc-1",
        format!("127.0.0.1:{port}"),
        String::new(),
        vec![counter()],
    );
    let mut s = start(dir.path(), vec![plc]).await;
    eventually(Duration::from_secs(60), "first readings", || async {
        latest(&s.pg, "plc-1").await.get("uptime").copied()
    })
    .await;
    sim.cancel();
    eventually(Duration::from_secs(30), "an error status", || async {
        let st = statuses(&s.pg, "plc-1").await;
        st.iter()
            .any(|(_, status, _)| status == "error")
            .then_some(())
    })
    .await;
    let _sim = start_sim(port).await;
    eventually(
        Duration::from_secs(30),
        "an ok status after the server came back",
        || async {
            let st = statuses(&s.pg, "plc-1").await;
            (st.last().map(|x| x.1.as_str()) == Some("ok")).then_some(())
        },
    )
    .await;
    let (clean, log) = terminate_answering(s.agent).await;
    assert!(clean, "{log}");
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
}

#[tokio::test]
async fn every_type_reads_as_its_value_over_rtu_on_a_serial_line() {
    let dir = tempfile::tempdir().unwrap();
    let (sim_end, agent_end) = (dir.path().join("tty-sim"), dir.path().join("tty-agent"));
    let mut socat = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", sim_end.display()))
        .arg(format!("pty,raw,echo=0,link={}", agent_end.display()))
        .spawn()
        .expect("socat is not installed (deploy/scripts/install-deps.sh installs it)");
    eventually(Duration::from_secs(10), "socat's pty pair", || async {
        (sim_end.exists() && agent_end.exists()).then_some(())
    })
    .await;
    let path = sim_end.to_str().unwrap().to_owned();
    let stop = CancellationToken::new();
    let done = stop.clone();
    tokio::spawn(async move {
        dash_sim::serve_rtu(&path, 19_200, async move { done.cancelled().await }).await
    });
    // Holding registers and coils: enough to cover every type and order on the line.
    let fixtures: Vec<dash_sim::Fixture> = dash_sim::fixtures()
        .into_iter()
        .filter(|f| matches!(f.point.kind, Kind::Holding | Kind::Coil))
        .collect();
    let points = fixtures.iter().map(|f| f.point.clone()).collect();
    let meter = device(
        "meter-1",
        String::new(),
        agent_end.to_str().unwrap().to_owned(),
        points,
    );
    let mut s = start(dir.path(), vec![meter]).await;
    check_fixtures(&s, "meter-1", &fixtures).await;
    stop.cancel();
    let (clean, log) = terminate_answering(s.agent).await;
    assert!(clean, "{log}");
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
    let _ = socat.kill();
    let _ = socat.wait();
}
