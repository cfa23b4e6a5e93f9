//! `dash-agent`: collects readings on a gateway, keeps them durably, and
//! forwards them to the aggregator until it confirms they are committed.
//!
//! # Layout
//!
//! ```text
//! devices (MQTT) --> devices::Router (topic -> series) --> commit::Committer (group commit)
//!     --> buffer::Buffer (sled: samples -> sealed batches) --> uplink (MQTT, QoS 1)
//!     <-- ack after the aggregator's commit: the batch leaves the buffer
//! ```
//!
//! # Guarantee
//!
//! A device's publish is acknowledged only after its samples are flushed to
//! disk; a batch leaves the disk only after the aggregator acked it, which it
//! does only after its database transaction committed. Between the two,
//! everything is resent until acked, and the aggregator stores each batch
//! once. So what a device saw acknowledged reaches PostgreSQL exactly once.
//!
//! # Shutdown
//!
//! Stop inputs (connections close, no new acks), let the committer flush what
//! it holds, stop sealing and the uplink, within the grace period.

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod buffer;
pub mod clock;
pub mod commit;
pub mod config;
pub mod crashes;
pub mod devices;
pub mod http;
pub mod modbus;
pub mod sample;
pub mod transform;
pub mod uplink;
pub mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::buffer::Buffer;
use crate::commit::Committer;
use crate::devices::{Router, listener, subscriber};
use crate::uplink::UplinkSettings;

/// Runs the agent until `shutdown` resolves, then drains within the grace
/// period. When a storage error (a full or read-only disk) breaks the
/// buffer for writing, the agent keeps forwarding what is buffered and
/// reports the fault; once the disk takes writes again it restarts its
/// pipeline in-process and opens the buffer afresh.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_reporting(config, shutdown, |_| {}).await
}

/// Where a running agent listens: a configured port 0 becomes a free port,
/// and this says which.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    /// `devices.listen`, the MQTT listener for devices.
    pub devices: Option<SocketAddr>,
    /// `http.listen`, the HTTP input.
    pub http: Option<SocketAddr>,
}

/// [`run`], telling `bound` where the inputs listen each time the pipeline
/// starts (at start, and again after an in-process reopen of the buffer,
/// when a port 0 picks a new port). Everything it starts runs on tracked
/// tasks and ends within the grace period; nothing in it is process-wide,
/// so tests run several agents in one process.
pub async fn run_reporting(
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut bound: impl FnMut(Bound),
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let clock = Arc::new(clock::Clock::default());
    let mut first = true;
    let mut corrupt = None;
    loop {
        if !first && corrupt.is_none() {
            tracing::info!("the disk takes writes again: reopening the buffer");
        }
        first = false;
        match run_once(
            &config,
            &clock,
            shutdown.as_mut(),
            corrupt.take(),
            &mut bound,
        )
        .await?
        {
            Exit::Shutdown => return Ok(()),
            Exit::Reopen => continue,
            Exit::Corrupt(why) => corrupt = Some(why),
        }
    }
}

/// Replaces `path` with `bytes` through a temporary file and a rename, so a
/// reader (or the next start) never sees half of it. Not fsynced.
pub(crate) fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Why one run of the pipeline ended.
enum Exit {
    Shutdown,
    Reopen,
    /// sled found the buffer corrupt while writing: move it aside.
    Corrupt(String),
}

/// Opens the buffer, retrying while the previous run's sled still holds its
/// lock. `corrupt`: sled found it corrupt while writing (move it aside);
/// otherwise the panics of earlier runs decide (see [`buffer::Recovery`]).
async fn open_buffer(config: &Config, corrupt: Option<String>) -> anyhow::Result<Buffer> {
    let dir = config.data_dir.join("buffer");
    let mut recovery = match corrupt {
        Some(why) => buffer::Recovery::MoveAside(why),
        None => buffer::Recovery::after_sled_panics(crashes::sled_panics(&config.data_dir)),
    };
    if recovery != buffer::Recovery::Open {
        tracing::warn!(
            ?recovery,
            "the buffer is opened with care after earlier runs"
        );
    }
    let mut tries = 0;
    loop {
        match Buffer::open_or_recover(&dir, recovery.clone()) {
            Ok((buffer, moved_aside)) => {
                if moved_aside.is_some() {
                    // The panics were the old buffer's; the fresh one starts clean.
                    crashes::clear(&config.data_dir);
                }
                return Ok(buffer);
            }
            Err(buffer::BufferError::Sled(sled::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::WouldBlock && tries < 100 =>
            {
                tries += 1;
                // Only sled's lock held the open up; what was moved aside is gone.
                if let buffer::Recovery::MoveAside(_) = recovery {
                    recovery = buffer::Recovery::Open;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening the buffer in {}", dir.display()));
            }
        }
    }
}

/// Whether `dir` takes a write of 1 MiB again (written, synced, removed).
async fn disk_writable(dir: std::path::PathBuf) -> bool {
    tokio::task::spawn_blocking(move || {
        let probe = dir.join(".dash-space-probe");
        let result = std::fs::File::create(&probe).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&vec![0u8; 1 << 20])?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        result.is_ok()
    })
    .await
    .unwrap_or(false)
}

async fn run_once(
    config: &Config,
    clock: &Arc<clock::Clock>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    corrupt: Option<String>,
    bound: &mut impl FnMut(Bound),
) -> anyhow::Result<Exit> {
    let buffer = open_buffer(config, corrupt).await?;
    let budget = buffer::Budget {
        max_bytes: config.buffer.max_bytes,
        telemetry: config.buffer.telemetry_when_full,
        transactions: config.buffer.transactions_when_full,
    };
    let buffer = Arc::new(
        buffer
            .with_aggregation(config.aggregate.clone())
            .with_budget(budget),
    );
    clock.init(buffer.clock_floor());
    tracing::info!(
        unsealed = buffer.unsealed(),
        unacked = buffer.unacked(),
        "buffer open"
    );
    let (full, sealed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let batch_max = config.uplink.batch_max_samples;
    let (committer, commit_task) = Committer::spawn(
        buffer.clone(),
        Duration::from_millis(config.buffer.commit_max_delay_ms),
        config.buffer.commit_max_samples,
        batch_max as u64,
        full.clone(),
    );
    if config.buffer.commit_stall_secs > 0 {
        watchdog::spawn(
            committer.watch(),
            Duration::from_secs(config.buffer.commit_stall_secs),
            Some(config.data_dir.join("status.json")),
        );
    }
    let transforms = Arc::new(transform::Transforms::new(config.transform.clone()));
    let router = Arc::new(
        Router::new(config.devices.mappings.clone())
            .with_transforms((*transforms).clone())
            .with_clock(clock.clone()),
    );
    let stop_inputs = CancellationToken::new();
    let (inputs, listening) = start_inputs(
        config,
        &buffer,
        &router,
        &transforms,
        &committer,
        clock,
        &stop_inputs,
    )
    .await?;
    let stop = CancellationToken::new();
    let linger = Duration::from_millis(config.uplink.batch_linger_ms);
    let sealer = tokio::spawn(seal_loop(
        buffer.clone(),
        batch_max,
        linger,
        full,
        sealed.clone(),
        stop.clone(),
    ));
    let status = status_fn(&buffer, &router, &committer, clock);
    let uplink = tokio::spawn(uplink::run(
        uplink_settings(config)?,
        buffer.clone(),
        clock.clone(),
        status,
        sealed,
        stop.clone(),
    ));
    tracing::info!(tenant = %config.tenant, agent = %config.agent_id, "agent ready");
    bound(listening);
    watchdog::notify(&[sd_notify::NotifyState::Ready]);

    let mut check = tokio::time::interval(Duration::from_secs(5));
    let forget_panics = tokio::time::sleep(crashes::CLEAR_AFTER);
    tokio::pin!(forget_panics);
    let exit = loop {
        tokio::select! {
            _ = shutdown.as_mut() => break Exit::Shutdown,
            // Up long enough: earlier panics were not a loop.
            _ = &mut forget_panics, if !forget_panics.is_elapsed() => crashes::clear(&config.data_dir),
            _ = check.tick() => {
                if buffer.is_corrupted() {
                    break Exit::Corrupt(buffer.fault().unwrap_or_default());
                }
                if buffer.needs_reopen() && disk_writable(config.data_dir.clone()).await {
                    break Exit::Reopen;
                }
            }
        }
    };
    match exit {
        Exit::Shutdown => {
            watchdog::notify(&[sd_notify::NotifyState::Stopping]);
            tracing::info!("shutting down: closing inputs");
        }
        Exit::Reopen => tracing::info!("restarting the pipeline: closing inputs"),
        Exit::Corrupt(_) => tracing::error!(
            "sled found the buffer corrupt while writing; it is moved aside and a fresh one started"
        ),
    }
    let grace = config.shutdown_grace();
    stop_inputs.cancel();
    if tokio::time::timeout(grace, inputs.wait()).await.is_err() {
        tracing::warn!("inputs did not close within the grace period");
    }
    drop(committer);
    if tokio::time::timeout(grace, commit_task).await.is_err() {
        tracing::warn!(
            "group commit did not finish within the grace period; unacknowledged samples will be resent by devices"
        );
    }
    let flushed = buffer.flush().await;
    stop.cancel();
    let _ = sealer.await;
    uplink.await.context("uplink task panicked")??;
    if matches!(exit, Exit::Shutdown) {
        flushed?;
        buffer.flush().await?;
        crashes::clear(&config.data_dir);
    }
    tracing::info!(
        unsealed = buffer.unsealed(),
        unacked = buffer.unacked(),
        "stopped; buffer flushed"
    );
    Ok(exit)
}

async fn start_inputs(
    config: &Config,
    buffer: &Arc<Buffer>,
    router: &Arc<Router>,
    transforms: &Arc<transform::Transforms>,
    committer: &Committer,
    clock: &Arc<clock::Clock>,
    stop: &CancellationToken,
) -> anyhow::Result<(TaskTracker, Bound)> {
    let tracker = TaskTracker::new();
    let mut bound = Bound::default();
    let d = &config.devices;
    if !d.listen.is_empty() {
        let addr: SocketAddr = d.listen.parse().context("devices.listen")?;
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for devices on {addr} (devices.listen)"))?;
        let addr = socket.local_addr()?;
        bound.devices = Some(addr);
        let auth = config.device_auth()?;
        tracing::info!(
            %addr,
            tls = auth.tls.is_some(),
            logins = auth.credentials.len(),
            "listening for devices (MQTT 3.1.1 and 5)"
        );
        let devices = Arc::new(listener::Devices {
            router: router.clone(),
            committer: committer.clone(),
            buffer: buffer.clone(),
            max_payload: d.max_payload_bytes,
            auth,
            live: Default::default(),
        });
        tracker.spawn(listener::serve(
            socket,
            devices,
            stop.clone(),
            tracker.clone(),
        ));
    } else if !d.broker_url.is_empty() {
        let url = dash_shared::topic::parse_broker_url(&d.broker_url)?;
        anyhow::ensure!(
            !url.tls,
            "devices.broker_url: the agent reads a gateway broker over plain MQTT (mqtt://) only"
        );
        let (host, port) = (url.host, url.port);
        let client_id = match d.client_id.as_str() {
            "" => format!("dash-agent-devices-{}", config.agent_id),
            id => id.to_owned(),
        };
        let settings = subscriber::SubscriberSettings {
            host,
            port,
            client_id,
            max_payload: d.max_payload_bytes,
        };
        let (router, committer, stop) = (router.clone(), committer.clone(), stop.clone());
        tracker.spawn(async move {
            if let Err(e) = subscriber::run(settings, router, committer, stop).await {
                tracing::error!(error = %e, "device subscriber stopped; devices are not being read");
            }
        });
    }
    for device in &config.modbus.devices {
        tracker.spawn(modbus::poll(
            device.clone(),
            committer.clone(),
            transforms.clone(),
            clock.clone(),
            stop.clone(),
        ));
    }
    if !config.http.listen.is_empty() {
        let addr: SocketAddr = config.http.listen.parse().context("http.listen")?;
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr} (http.listen)"))?;
        let addr = socket.local_addr()?;
        bound.http = Some(addr);
        tracing::info!(%addr, sources = config.http.sources.len(), "HTTP input listening");
        tracker.spawn(http::serve(
            socket,
            config.http.clone(),
            committer.clone(),
            transforms.clone(),
            clock.clone(),
            buffer.clone(),
            stop.clone(),
        ));
    }
    tracker.close();
    Ok((tracker, bound))
}

fn uplink_settings(config: &Config) -> anyhow::Result<UplinkSettings> {
    let u = &config.uplink;
    let url = dash_shared::topic::parse_broker_url(&u.url)?;
    let client_id = match u.client_id.as_str() {
        "" => format!("dash-agent-{}-{}", config.tenant, config.agent_id),
        id => id.to_owned(),
    };
    let username = match (u.username.as_str(), u.password.is_empty()) {
        ("", false) => format!("{}/{}", config.tenant, config.agent_id),
        (name, _) => name.to_owned(),
    };
    Ok(UplinkSettings {
        host: url.host,
        port: url.port,
        tls: config.uplink_tls()?,
        client_id,
        username,
        password: u.password.clone(),
        tenant: config.tenant(),
        agent: config.agent(),
        window: u.max_inflight_batches,
        ack_timeout: Duration::from_secs(u.ack_timeout_secs),
        reconnect_max: Duration::from_millis(u.reconnect_max_ms),
        status_interval: Duration::from_secs(u.status_interval_secs),
        backlog_rate: u.backlog_records_per_sec,
        status_file: Some(config.data_dir.join("status.json")),
    })
}

/// The agent's status, from the buffer, the inputs' counters and the clock.
fn status_fn(
    buffer: &Arc<Buffer>,
    router: &Arc<Router>,
    committer: &Committer,
    clock: &Arc<clock::Clock>,
) -> uplink::StatusFn {
    let (buffer, router, invalid) = (buffer.clone(), router.clone(), committer.invalid_counter());
    let clock = clock.clone();
    Arc::new(move |online| {
        let mut faults = Vec::new();
        let mut state = match buffer.status() {
            Ok(s) => s,
            Err(e) => {
                faults.push(format!("buffer status unreadable: {e}"));
                dash_shared::BufferStatus::default()
            }
        };
        state.invalid_records = router.rejected()
            + router.refusals.count_of("payload_too_large")
            + invalid.load(std::sync::atomic::Ordering::Relaxed);
        faults.extend(buffer.fault());
        faults.extend(buffer.damage());
        if state.recreated {
            faults.push("the buffer could not be opened at start and was moved aside; a fresh one is in use".into());
        }
        if state.budget_bytes > 0 && state.bytes >= state.budget_bytes / 100 * 95 {
            faults.push(format!(
                "the buffer is at {} of its {} byte budget",
                state.bytes, state.budget_bytes
            ));
        }
        dash_shared::AgentStatus {
            online,
            version: env!("CARGO_PKG_VERSION").into(),
            time: dash_shared::now_micros(),
            buffer: state,
            clock: clock.status(),
            faults,
            devices: dash_shared::DeviceStatus {
                refused: router.refusals.snapshot(),
            },
        }
    })
}

/// Seals full batches at once and partial ones every `linger`.
async fn seal_loop(
    buffer: Arc<Buffer>,
    max: usize,
    linger: Duration,
    full: Arc<Notify>,
    sealed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(linger);
    loop {
        let only_full = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = full.notified() => true,
        };
        loop {
            if only_full && buffer.unsealed() < max as u64 {
                break;
            }
            match buffer.seal(max).await {
                Ok(Some(_)) => sealed.notify_one(),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "sealing a batch failed; retrying on the next tick");
                    break;
                }
            }
        }
    }
}
