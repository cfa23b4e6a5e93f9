//! The agent's durability promises with real processes: SIGKILLs, a long
//! network cut, a full buffer under each policy, and a damaged buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_tests::device::{self, Report};
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource, Proc};
use dash_tests::proxy::Proxy;
use dash_tests::stack::Stack;
use dash_tests::{Rng, eventually, free_port};

const TENANT: &str = "acme";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The status the aggregator recorded for `agent`, once it has one.
async fn recorded_status(pg: &TestPostgres, agent: &str) -> Option<serde_json::Value> {
    sqlx::query_scalar("SELECT status FROM agent_status WHERE tenant = $1 AND agent = $2")
        .bind(TENANT)
        .bind(agent)
        .fetch_optional(&pg.pool)
        .await
        .unwrap()
}

/// Waits for the agent's status file to satisfy `check`.
async fn status_where(
    dir: &std::path::Path,
    agent: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(60), what, || async {
        process::agent_status_file(dir, agent).filter(|s| check(s))
    })
    .await
}

fn n(v: &serde_json::Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sigkills_during_steady_ingest_lose_and_double_nothing() {
    // Every field bound, so that each lives to the end of the test.
    let Stack {
        dir,
        pg,
        aggregator: _aggregator,
        mut agent,
        broker: _,
        http: _,
        devices,
    } = Stack::start(TENANT, "gw-1").await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = [
        device::background(local(devices), "th-1", stop.clone()),
        device::background(local(devices), "th-2", stop.clone()),
    ];
    let mut rng = Rng::seeded();
    for _ in 0..50 {
        // Anywhere in the agent's cycle: reading, committing, sealing, sending, settling.
        tokio::time::sleep(Duration::from_millis(150 + rng.below(500))).await;
        agent.kill9();
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        agent.start();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for d in running {
        reports.push(d.await.unwrap());
    }
    assert!(
        reports.iter().all(|r| r.acked.len() > 500),
        "devices made too little progress: {:?}",
        reports.iter().map(|r| r.acked.len()).collect::<Vec<_>>()
    );
    device::assert_delivered(&pg, TENANT, &[("th-1", &reports[0]), ("th-2", &reports[1])]).await;
    assert!(agent.is_running(), "agent died:\n{}", agent.log());
    // Fifty crashes are not damage: nothing may be counted as lost.
    let status = process::agent_status_file(dir.path(), "gw-1").expect("a status file");
    assert_eq!(status["buffer"]["corrupt_records"], 0, "{status}");
    assert_eq!(status["faults"], serde_json::json!([]), "{status}");
}

/// Publishes one reading of `live-1` every 100 ms until `stop`; returns
/// what was acked, with when.
fn live_device(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(i64, Instant)>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut v = 0;
        while !stop.load(Ordering::Relaxed) {
            let r = device::publish(
                addr,
                "live-1",
                "temp",
                [v],
                Arc::new(AtomicBool::new(false)),
                Duration::from_secs(5),
            )
            .await;
            if r.acked == [v] {
                acked.push((v, Instant::now()));
            }
            v += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_network_cut_everything_arrives_and_live_data_overtakes_the_backlog() {
    const BACKLOG: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let proxy = Proxy::start(broker).await;
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        "gw-cut",
        DeviceSource::Listen(devices),
        proxy.port,
    )
    // 40 batches of backlog at 2,000 records a second: about 10 s to drain.
    .with_env("DASH_UPLINK__BACKLOG_RECORDS_PER_SEC", "2000");
    agent.start();
    let quiet = || Arc::new(AtomicBool::new(false));
    let warmup = device::publish(
        local(devices),
        "th-1",
        "temp",
        0..500,
        quiet(),
        Duration::from_secs(30),
    )
    .await;
    device::assert_delivered(&pg, TENANT, &[("th-1", &warmup)]).await;

    proxy.cut();
    let cut_at = Instant::now();
    let during = device::publish(
        local(devices),
        "th-1",
        "temp",
        1_000..1_000 + BACKLOG,
        quiet(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        during.acked.len() as i64,
        BACKLOG,
        "the agent acks while cut off"
    );
    // A long cut: past the MQTT keep-alive (15 s) and many reconnect attempts.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed())).await;
    let before_heal = pg.total().await;
    proxy.heal();
    let healed_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let live = live_device(local(devices), stop.clone());

    // Watch PostgreSQL while the backlog drains: the first live reading
    // stored must not wait for the backlog.
    let mut overtaken_at = None;
    let backlog_stored = |rows: &std::collections::HashMap<i64, i64>| {
        rows.keys().filter(|v| **v >= 1_000).count() as i64
    };
    let drained_after = loop {
        let backlog = backlog_stored(&device::rows_of(&pg, TENANT, "th-1").await);
        let live_rows = device::rows_of(&pg, TENANT, "live-1").await;
        if overtaken_at.is_none() && !live_rows.is_empty() {
            overtaken_at = Some((healed_at.elapsed(), backlog));
        }
        if backlog == BACKLOG {
            break healed_at.elapsed();
        }
        assert!(
            healed_at.elapsed() < Duration::from_secs(120),
            "backlog stuck at {backlog} of {BACKLOG}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let live_acked = live.await.unwrap();
    let (first_live, backlog_then) = overtaken_at.expect("no live reading stored while draining");
    eprintln!(
        "cut {:?}: {before_heal} rows before the heal; backlog of {BACKLOG} drained {drained_after:?} after it; \
         the first live reading was stored {first_live:?} after the heal, with {backlog_then} of the backlog stored",
        healed_at - cut_at
    );
    assert!(
        backlog_then < BACKLOG,
        "live data waited for the whole backlog ({backlog_then} of {BACKLOG} stored first)"
    );
    let mut th1 = warmup;
    th1.acked.extend(&during.acked);
    th1.sends.extend(during.sends);
    device::assert_delivered(&pg, TENANT, &[("th-1", &th1)]).await;
    let live_report = Report {
        acked: live_acked.iter().map(|(v, _)| *v).collect(),
        sends: live_acked.iter().map(|(v, _)| (*v, 1)).collect(),
    };
    device::assert_delivered(&pg, TENANT, &[("live-1", &live_report)]).await;
    assert!(agent.terminate(Duration::from_secs(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_telemetry_and_counts_every_reading_dropped() {
    const FIELDS: usize = 50;
    const MESSAGES: i64 = 12_000;
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    // Nothing listens on the uplink's port until the aggregator starts.
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        "gw-full",
        DeviceSource::Listen(devices),
        broker,
    )
    .with_env("DASH_BUFFER__MAX_BYTES", "1048576")
    .with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1");
    process::json_devices(dir.path(), "gw-full");
    agent.start();
    let report = device::publish_fields(
        local(devices),
        "bulk-1",
        "temp",
        0..MESSAGES,
        Arc::new(AtomicBool::new(false)),
        Duration::from_secs(120),
        FIELDS,
    )
    .await;
    assert_eq!(
        report.acked.len() as i64,
        MESSAGES,
        "drop_oldest keeps acknowledging"
    );
    let offline = status_where(dir.path(), "gw-full", "readings dropped", |s| {
        s["buffer"]["telemetry"]["dropped"].as_u64() > Some(0)
    })
    .await;
    assert!(n(&offline, "buffer.bytes") <= 1_048_576, "{offline}");
    let on_disk: u64 = walk_size(&dir.path().join("gw-full").join("buffer"));
    eprintln!(
        "budget 1048576 B: {} B held, {on_disk} B of sled files",
        n(&offline, "buffer.bytes")
    );

    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    // Drained: nothing held, and the last status on record says so.
    let status = eventually(Duration::from_secs(90), "the buffer to drain", || async {
        recorded_status(&pg, "gw-full")
            .await
            .filter(|s| s["buffer"]["records"] == 0)
    })
    .await;
    let dropped = n(&status, "buffer.telemetry.dropped");
    let sent = (MESSAGES as u64) * FIELDS as u64;
    let stored = pg.total().await as u64;
    eprintln!("{sent} readings acked, {dropped} dropped, {stored} stored");
    assert_eq!(
        stored + dropped,
        sent,
        "every acknowledged reading is stored or counted as dropped"
    );
    assert_eq!(n(&status, "buffer.telemetry.rejected"), 0);
    // The newest survive; no reading is stored twice.
    let doubles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT series_id, value FROM samples GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(doubles, 0);
    let newest: i64 = sqlx::query_scalar("SELECT count(*) FROM samples WHERE value = $1")
        .bind((MESSAGES - 1) as f64)
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    assert_eq!(newest, FIELDS as i64, "the newest readings are kept");
    // PUBACKs leave in arrival order (rumqttd drops a client that breaks it,
    // as it did while statuses and batches were acked by separate workers).
    assert!(
        !aggregator.log().contains("out of order ack"),
        "{}",
        aggregator.log()
    );
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(aggregator.terminate(Duration::from_secs(15)));
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_refuses_transactions_and_loses_none_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, http, devices, pos) = (free_port(), free_port(), free_port(), free_port());
    let hash = dash_runtime::secret::sha256_hex("till-token");
    let mut agent = process::agent_with(
        dir.path(),
        TENANT,
        "gw-pos",
        DeviceSource::Listen(devices),
        broker,
        &format!(
            r#"[http]
listen = "127.0.0.1:{pos}"

[[http.sources]]
name = "pos"
token_sha256 = "{hash}"
kind = "sale"
"#
        ),
    )
    .with_env("DASH_BUFFER__MAX_BYTES", "1048576")
    .with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1");
    agent.start();
    let sale = |i: usize| {
        format!(
            r#"{{"id":"sale-{i}","till":"till-3","items":[{{"sku":"espresso-double","qty":2,"price":3.4}},{{"sku":"croissant","qty":1,"price":2.1}}],"note":"{}"}}"#,
            "x".repeat(120)
        )
    };
    let (mut accepted, mut refused, mut i) = (0u64, 0u64, 0usize);
    let started = Instant::now();
    while refused < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the buffer never filled:\n{}",
            agent.log()
        );
        let body = format!("[{}]", (i..i + 100).map(sale).collect::<Vec<_>>().join(","));
        let (status, answer) = eventually(Duration::from_secs(30), "the HTTP input", || async {
            let (status, answer) =
                try_post(pos, "/ingest/pos", "till-token", body.as_bytes()).await?;
            Some((status, answer))
        })
        .await;
        match status {
            200 => accepted += n(&answer, "events"),
            503 => {
                assert!(
                    answer["error"].as_str().unwrap().contains("full"),
                    "{answer}"
                );
                refused += 100;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
        i += 100;
    }
    let offline = status_where(dir.path(), "gw-pos", "refusals counted", |s| {
        s["buffer"]["transactions"]["rejected"].as_u64() == Some(refused)
    })
    .await;
    assert_eq!(n(&offline, "buffer.transactions.dropped"), 0);

    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    let status = eventually(Duration::from_secs(90), "the buffer to drain", || async {
        recorded_status(&pg, "gw-pos")
            .await
            .filter(|s| s["buffer"]["records"] == 0)
    })
    .await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant = $1")
        .bind(TENANT)
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    eprintln!("{accepted} sales acknowledged, {refused} refused with 503, {stored} stored");
    assert_eq!(
        stored as u64, accepted,
        "every acknowledged sale is stored, once"
    );
    assert_eq!(n(&status, "buffer.transactions.rejected"), refused);
    assert_eq!(n(&status, "buffer.transactions.dropped"), 0);
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(aggregator.terminate(Duration::from_secs(15)));
}

/// `POST` that gives `None` when the agent is not listening yet.
async fn try_post(
    port: u16,
    path: &str,
    token: &str,
    body: &[u8],
) -> Option<(u16, serde_json::Value)> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    Some(dash_tests::post_json(port, path, token, None, body).await)
}

/// The three kinds of damage a gateway's storage does.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipBytes,
    Truncate,
    Delete,
}

fn damage(buffer: &std::path::Path, how: Damage, rng: &mut Rng) {
    let db = buffer.join("db");
    match how {
        Damage::FlipBytes => {
            let mut bytes = std::fs::read(&db).unwrap();
            for _ in 0..64 {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 0xff;
            }
            std::fs::write(&db, bytes).unwrap();
        }
        Damage::Truncate => {
            let len = std::fs::metadata(&db).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            file.set_len(len / 2).unwrap();
        }
        Damage::Delete => {
            // sled's snapshot and config go; the log stays.
            for entry in std::fs::read_dir(buffer).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "conf" || name.starts_with("snap.") {
                    std::fs::remove_file(entry.path()).unwrap();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_buffer_never_stops_the_agent() {
    let pg = TestPostgres::start().await;
    let mut rng = Rng::seeded();
    for (round, how) in [Damage::FlipBytes, Damage::Truncate, Damage::Delete]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let (broker, http, devices) = (free_port(), free_port(), free_port());
        let agent_id = format!("gw-damage-{round}");
        let mut agent: Proc = process::agent(
            dir.path(),
            TENANT,
            &agent_id,
            DeviceSource::Listen(devices),
            broker,
        )
        .with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1");
        agent.start();
        // A backlog on disk (the aggregator is not up yet), then a hard stop.
        let old_device = format!("th-old-{round}");
        let before = device::publish(
            local(devices),
            &old_device,
            "temp",
            0..3_000,
            Arc::new(AtomicBool::new(false)),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(before.acked.len(), 3_000);
        agent.kill9();
        damage(&dir.path().join(&agent_id).join("buffer"), how, &mut rng);

        let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
        aggregator.start();
        agent.start();
        let new_device = format!("th-new-{round}");
        let after = device::publish(
            local(devices),
            &new_device,
            "temp",
            0..500,
            Arc::new(AtomicBool::new(false)),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(after.acked.len(), 500, "{how:?}:\n{}", agent.log());
        let rows = eventually(Duration::from_secs(60), "new readings stored", || async {
            let rows = device::rows_of(&pg, TENANT, &new_device).await;
            (rows.len() == 500).then_some(rows)
        })
        .await;
        assert!(rows.values().all(|n| *n == 1));
        // Not silent: every old reading comes back or is counted as corrupt.
        let started = std::time::Instant::now();
        let (old, status) = loop {
            let status = recorded_status(&pg, &agent_id).await;
            let old = device::rows_of(&pg, TENANT, &old_device).await.len();
            let corrupt = status
                .as_ref()
                .and_then(|s| s["buffer"]["corrupt_records"].as_u64());
            if let (Some(status), Some(corrupt)) = (&status, corrupt)
                && old as u64 + corrupt >= 3_000
            {
                break (old, status.clone());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{how:?}: {old} old readings stored, status {status:?}:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!(
            "{how:?}: {old} of 3000 old readings recovered; status: recreated {}, corrupt records {}, faults {}",
            status["buffer"]["recreated"], status["buffer"]["corrupt_records"], status["faults"]
        );
        assert!(
            agent.is_running(),
            "{how:?}: the agent stopped:\n{}",
            agent.log()
        );
        // Exact: nothing both recovered and counted, nothing counted twice.
        let corrupt = status["buffer"]["corrupt_records"].as_u64().unwrap();
        assert_eq!(old as u64 + corrupt, 3_000, "{how:?}");
        assert!(agent.terminate(Duration::from_secs(10)));
        assert!(aggregator.terminate(Duration::from_secs(15)));
    }
}

/// A small tmpfs mounted for one test (needs root, as CI runs), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(path.to_owned())
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_keeps_forwarding_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let disk = Tmpfs::mount(&dir.path().join("gw-disk"), "8m");
    let mut agent = process::agent(
        dir.path(),
        TENANT,
        "gw-disk",
        DeviceSource::Listen(devices),
        broker,
    )
    .with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1");
    agent.start();
    let quiet = || Arc::new(AtomicBool::new(false));
    let mut report = device::publish(
        local(devices),
        "th-1",
        "temp",
        0..2_000,
        quiet(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.acked.len(), 2_000);

    // Sealed into batches (linger 200 ms) before the disk fills.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let filler = disk.fill();
    let while_full = device::publish(
        local(devices),
        "th-1",
        "temp",
        10_000..12_000,
        quiet(),
        Duration::from_secs(8),
    )
    .await;
    assert!(
        while_full.acked.len() < 2_000,
        "readings kept being acknowledged on a full disk"
    );

    // What was sealed before still goes out (sealing new batches needs a
    // write), and the status says what is wrong.
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
    aggregator.start();
    eventually(
        Duration::from_secs(60),
        "sealed readings forwarded",
        || async {
            let rows = device::rows_of(&pg, TENANT, "th-1").await;
            report
                .acked
                .iter()
                .all(|v| rows.contains_key(v))
                .then_some(())
        },
    )
    .await;
    report.acked.extend(&while_full.acked);
    report.sends.extend(while_full.sends);
    let status = eventually(Duration::from_secs(30), "the fault reported", || async {
        recorded_status(&pg, "gw-disk").await.filter(|s| {
            s["faults"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f.as_str().unwrap_or("").contains("cannot write"))
            })
        })
    })
    .await;
    eprintln!(
        "while full: {} acked of 2000; status faults {}",
        while_full.acked.len(),
        status["faults"]
    );

    // Space returns: the agent reopens its buffer and acknowledges again.
    std::fs::remove_file(filler).unwrap();
    let after = device::publish(
        local(devices),
        "th-1",
        "temp",
        20_000..21_000,
        quiet(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(after.acked.len(), 1_000, "{}", agent.log());
    report.acked.extend(&after.acked);
    report.sends.extend(after.sends);
    device::assert_delivered(&pg, TENANT, &[("th-1", &report)]).await;
    eventually(Duration::from_secs(30), "the fault cleared", || async {
        recorded_status(&pg, "gw-disk")
            .await
            .filter(|s| s["faults"].as_array().is_some_and(|f| f.is_empty()))
    })
    .await;
    assert!(
        agent.log().contains("reopening the buffer"),
        "{}",
        agent.log()
    );
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(aggregator.terminate(Duration::from_secs(15)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_vanishes_is_recorded_offline_by_its_last_will() {
    // Every field bound, so that each lives to the end of the test.
    let Stack {
        dir: _dir,
        pg,
        mut aggregator,
        mut agent,
        broker: _,
        http: _,
        devices: _,
    } = Stack::start_with(TENANT, "gw-will", |agent| {
        agent.with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1")
    })
    .await;
    // The first status goes out on connect, before the answer brings the time.
    let online = eventually(
        Duration::from_secs(30),
        "a status after the time arrived",
        || async {
            recorded_status(&pg, "gw-will")
                .await
                .filter(|s| s["online"] == true && s["clock"]["offset"] != 0)
        },
    )
    .await;
    assert_eq!(online["clock"]["trusted"], true, "{online}");
    // No batch was sent: the time came with the answer to the status. An
    // ack is always stamped before it arrives, so the offset is below 0.
    let offset = online["clock"]["offset"].as_i64().unwrap();
    assert!(
        (-2_000_000..0).contains(&offset),
        "the server's time arrived: {online}"
    );
    agent.kill9();
    eventually(
        Duration::from_secs(30),
        "the last will recorded",
        || async {
            recorded_status(&pg, "gw-will")
                .await
                .filter(|s| s["online"] == false)
        },
    )
    .await;
    assert!(aggregator.terminate(Duration::from_secs(15)));
}
