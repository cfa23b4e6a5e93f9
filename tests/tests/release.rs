//! The profile users run: the release build of the agent (what the service
//! and the ARM builds ship), where a panic used to abort the process.
//!
//! Needs `cargo build --release -p dash-agent` first; the README's test
//! command runs it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use dash_tests::damage::{self, Damage};
use dash_tests::device;
use dash_tests::process::{self, DeviceSource, Proc};
use dash_tests::{Rng, free_port};

const TENANT: &str = "acme";
const AGENT: &str = "gw-release";
/// Damaged starts tried; each draws its damage from its own seed.
const CASES: u64 = 50;
/// An agent start must take a reading and acknowledge it within this.
const SERVES_WITHIN: Duration = Duration::from_secs(30);
/// Exits (aborts) allowed before a damaged buffer serves: sled may panic
/// in a running agent (reading a damaged page) this many times before the
/// buffer is moved aside (`dash_agent::buffer::MAX_SLED_PANICS`).
const MAX_EXITS: usize = dash_agent::buffer::MAX_SLED_PANICS;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Publishes `values` as `device` and asserts every one was acknowledged.
async fn publish_all(port: u16, device: &str, values: std::ops::Range<i64>, agent: &Proc) {
    let n = values.end - values.start;
    let report = device::publish(
        local(port),
        device,
        "temp",
        values,
        Arc::new(AtomicBool::new(false)),
        SERVES_WITHIN,
    )
    .await;
    assert_eq!(report.acked.len() as i64, n, "{}", agent.log());
}

/// A release agent whose buffer holds a backlog of several sled segments
/// (no aggregator is up, so nothing leaves), stopped by SIGKILL. Returns
/// the agent's data directory, the buffer after the backlog, and a copy
/// taken halfway through it.
async fn backlog(root: &std::path::Path, devices: u16) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut agent = process::agent(
        root,
        TENANT,
        AGENT,
        DeviceSource::Listen(devices),
        free_port(),
    )
    .release();
    let buffer = root.join(AGENT).join("buffer");
    let earlier = root.join("earlier");
    agent.start();
    publish_all(devices, "th-1", 0..15_000, &agent).await;
    agent.kill9();
    damage::copy_dir(&buffer, &earlier);
    agent.start();
    publish_all(devices, "th-2", 0..15_000, &agent).await;
    agent.kill9();
    let size = std::fs::metadata(buffer.join("db")).unwrap().len();
    assert!(
        size >= 3 * 512 * 1024,
        "the backlog left a log of {size} bytes only"
    );
    (buffer, earlier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_buffer_never_crash_loops_the_release_agent() {
    let root = tempfile::tempdir().unwrap();
    let devices = free_port();
    let (buffer, earlier) = backlog(root.path(), devices).await;
    let pristine = root.path().join("pristine");
    damage::copy_dir(&buffer, &pristine);
    let base = Rng::seeded().below(1 << 32);
    let (mut recreated, mut restarts) = (0, 0);
    for case in 0..CASES {
        let how = Damage::ALL[(case % Damage::ALL.len() as u64) as usize];
        let mut rng = Rng::case(base + case);
        std::fs::remove_dir_all(&buffer).unwrap();
        damage::copy_dir(&pristine, &buffer);
        let what = damage::apply(&buffer, &earlier, how, &mut rng);
        let _ = std::fs::remove_file(root.path().join(AGENT).join("status.json"));
        let mut agent = process::agent(
            root.path(),
            TENANT,
            AGENT,
            DeviceSource::Listen(devices),
            free_port(),
        )
        .release();
        let logged_before = agent.log().len();
        let started = Instant::now();
        // As systemd would: restart an agent that exits, a bounded number of times.
        let mut exits = Vec::new();
        let served = loop {
            agent.start();
            let report = device::publish(
                local(devices),
                &format!("th-case-{case}"),
                "temp",
                0..20,
                Arc::new(AtomicBool::new(false)),
                SERVES_WITHIN,
            )
            .await;
            match agent.wait_exit(Duration::from_millis(500)) {
                None if report.acked.len() == 20 => break true,
                None => break false,
                Some(status) if exits.len() < MAX_EXITS => exits.push(status),
                Some(status) => {
                    exits.push(status);
                    break false;
                }
            }
        };
        let label = format!("case {case} (seed {}): {how:?}, {what}", base + case);
        assert!(
            served && started.elapsed() < SERVES_WITHIN * (MAX_EXITS as u32 + 1),
            "{label}: not served (exits: {exits:?}):\n{}",
            &agent.log()[logged_before..]
        );
        assert!(
            exits.len() <= MAX_EXITS,
            "{label}: the agent exits in a loop: {exits:?}"
        );
        restarts += exits.len();
        if agent.log()[logged_before..].contains("moved aside") {
            recreated += 1;
        }
        eprintln!(
            "{label}: served after {:?} and {} restarts",
            started.elapsed(),
            exits.len()
        );
        agent.kill9();
        for entry in std::fs::read_dir(root.path().join(AGENT))
            .unwrap()
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("buffer.corrupt-")
            {
                std::fs::remove_dir_all(entry.path()).unwrap();
            }
        }
    }
    eprintln!(
        "{recreated} of {CASES} damaged buffers were moved aside, the rest opened; {restarts} restarts in all"
    );
}
