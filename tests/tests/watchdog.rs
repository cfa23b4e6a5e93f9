//! The commit watchdog with real processes: a group commit that never
//! finishes (injected) ends the agent with a recorded fault, systemd's
//! keep-alives stop with it, and after the restart nothing acknowledged is
//! missing or doubled.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dash_tests::device;
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource};
use dash_tests::{eventually, free_port};

const TENANT: &str = "acme";
const AGENT: &str = "gw-stall";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What the agent told "systemd" on the notify socket, one datagram each.
fn notifications(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_group_commit_restarts_the_agent_and_loses_nothing_acknowledged() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        AGENT,
        DeviceSource::Listen(devices),
        broker,
    )
    .with_env("DASH_TEST_STALL_COMMIT_AFTER", "40")
    .with_env("DASH_BUFFER__COMMIT_STALL_SECS", "2")
    .with_env("NOTIFY_SOCKET", notify_path.display().to_string())
    .with_env("WATCHDOG_USEC", "1000000");
    agent.start();
    let stop = Arc::new(AtomicBool::new(false));
    let running = device::background(local(devices), "th-1", stop.clone());

    // The 41st commit hangs; within the bound plus a check the agent ends.
    let status = agent
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the stalled agent kept running:\n{}", agent.log()));
    assert_eq!(
        status.code(),
        Some(75),
        "{status:?} (signal {:?})",
        status.signal()
    );
    let log = agent.log();
    assert!(
        log.contains("ERROR") && log.contains("group commit stalled"),
        "{log}"
    );
    let recorded = process::agent_status_file(dir.path(), AGENT).expect("a status file");
    let faults = recorded["faults"].as_array().unwrap();
    assert!(
        faults
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("group commit stalled")),
        "{recorded}"
    );
    assert_eq!(recorded["online"], false);
    let told = notifications(&notify);
    assert!(told.iter().any(|m| m == "READY=1"), "{told:?}");
    assert!(told.iter().any(|m| m == "WATCHDOG=1"), "{told:?}");

    // What the service manager does: start it again (no stall this time).
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        AGENT,
        DeviceSource::Listen(devices),
        broker,
    )
    .with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1");
    agent.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let report = running.await.unwrap();
    assert!(report.acked.len() > 40, "{} acked", report.acked.len());
    device::assert_delivered(&pg, TENANT, &[("th-1", &report)]).await;
    assert!(agent.is_running(), "{}", agent.log());
    let status = eventually(Duration::from_secs(20), "a fresh status", || async {
        process::agent_status_file(dir.path(), AGENT).filter(|s| s["online"] == true)
    })
    .await;
    assert_eq!(status["faults"], serde_json::json!([]), "{status}");
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(aggregator.terminate(Duration::from_secs(15)));
}
