//! `dash-aggregator`: receives agents' batches through an MQTT broker and
//! stores them exactly once in PostgreSQL.
//!
//! # Layout
//!
//! ```text
//! agents --MQTT/TLS--> broker::gate (identity, ACL) --> broker::embedded (rumqttd, loopback)
//!        (or an external broker: Mosquitto, EMQX)
//!     --dash/v1/+/+/batch--> ingest::link (one session, N workers, PUBACKs in arrival order)
//!     --> ingest: decode, series ids, BEGIN; ledger row FOR UPDATE; COPY raw blocks;
//!         merge rollups; ledger update; COMMIT            (storage::{ledger, tiers})
//!     --> ack on dash/v1/{tenant}/{agent}/ack, then PUBACK
//!     --> fleet::tracker (devices seen) --> fleet: flush, liveness sweep (storage::fleet)
//! HTTP (api::http route table) --> audit::layer --> api::auth (caller -> Scope)
//!     --> api, api::fleet, api::people --> query, storage::{read, fleet, access, audit}
//! ```
//!
//! Modules, by what they do:
//!
//! - [`config`]: one TOML file plus `DASH_` environment variables.
//! - [`broker`]: the embedded rumqttd ([`broker::embedded`]) behind the
//!   gate ([`broker::gate`]: TLS, agent identity, what each may publish).
//! - [`ingest`]: one payload in, at most one ack out; the MQTT session and
//!   its workers ([`ingest::link`]).
//! - [`storage`]: PostgreSQL, and the only module with SQL: the pool and
//!   migrations ([`storage::pool`]), the private cluster
//!   ([`storage::private`]), series and the [`storage::SampleWriter`] seam,
//!   the dedupe ledger ([`storage::ledger`], the exactly-once core), raw
//!   blocks and exact rollups ([`storage::tiers`]), what ingest holds back
//!   ([`storage::held`]), the agents' rows and statuses
//!   ([`storage::agents`]), the query API's reads ([`storage::read`]),
//!   the fleet's places, customers, devices and liveness sweep
//!   ([`storage::fleet`]), retention ([`storage::retention`]).
//! - [`fleet`]: devices registered at ingest ([`fleet::tracker`]) and
//!   judged online, offline, delayed or unknown on a timer.
//! - [`query`]: tier-aware queries; [`api`]: the HTTP query API, the
//!   fleet's ([`api::fleet`]) and the server around it ([`api::http`]: `/healthz`, `/readyz`, `/metrics`).
//! - [`auth`]: the agents registry ([`auth::registry`]), the CA
//!   ([`auth::pki`]), roles and the [`auth::access::Scope`] every data query
//!   takes ([`auth::access`]), passwords ([`auth::password`]).
//! - [`audit`]: one hash-chained row per API request, written before the
//!   answer.
//! - [`telemetry`]: counters ([`telemetry::metrics`]) and readiness
//!   ([`telemetry::health`]).
//! - [`cli`]: the admin commands behind `dash-aggregator ca|agent|place|customer|device|user|grant|token|audit`.
//!
//! Errors at the boundaries are typed: [`storage::pool::StorageError`]
//! (opening the database), [`storage::private::PrivateError`] (the private
//! cluster), [`ingest::IngestError`] (a batch not stored now,
//! retried), [`auth::registry::RegistryError`] (a name taken, the registry
//! unreachable), [`api::ApiError`] (one type, mapped to HTTP statuses, never
//! carrying SQL text). anyhow is for the binary, the CLI and background
//! workers.
//!
//! # Guarantee
//!
//! A batch's ack is published only after the transaction holding both its
//! samples and its ledger entry committed. Redelivery (from the broker or a
//! resending agent) finds the ledger entry and is acked again without a write.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod expr;
pub mod fleet;
pub mod ingest;
pub mod query;
pub mod storage;
pub mod telemetry;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dash_shared::Limits;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::api::http;
use crate::auth::registry;
use crate::broker::{embedded, gate};
use crate::ingest::Ingestor;
use crate::ingest::link::{self, LinkConfig};
use crate::storage::private::{self, PrivatePostgres};
use crate::storage::tiers::{self, TieredWriter};
use crate::storage::{pool, retention};
use crate::telemetry::metrics::Metrics;

/// Where a running aggregator listens: a configured port 0 becomes a free
/// port, and this says which.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// `http.listen`: the query API, `/healthz`, `/readyz`, `/metrics`.
    pub http: SocketAddr,
    /// The embedded broker's gate for agents (`broker.listen`,
    /// `broker.tls_listen`); `None` when off or with an external broker.
    pub broker: Option<SocketAddr>,
    pub broker_tls: Option<SocketAddr>,
    /// The embedded rumqttd behind the gate (loopback, for the gate and
    /// the ingest link only).
    pub embedded_broker: Option<SocketAddr>,
}

/// Runs the aggregator until `shutdown` resolves, then drains within the
/// configured grace period and stops the private PostgreSQL (if any).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_reporting(config, shutdown, |_| {}).await
}

/// [`run`], telling `bound` where it listens once it does (before it is
/// ready to take batches). Everything it starts runs on tracked tasks;
/// after `shutdown` they get one grace period (`shutdown_grace_secs`) in
/// all, then the pool closes and the private PostgreSQL stops. In-process
/// (tests), one thing outlives it: the embedded rumqttd's router thread,
/// idle on its channel, which rumqttd 0.20 cannot end; its port is closed
/// (see [`broker::embedded`]).
pub async fn run_reporting(
    config: Config,
    shutdown: impl Future<Output = ()>,
    bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config.data_dir).await?;
    let audit_key = config.audit.key()?;
    let alert_rules = config.alerts.rules()?;
    let contacts = config
        .alerts
        .contact_points
        .iter()
        .map(alerts::notify::Contact::load)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metrics = Arc::new(Metrics::default());
    let (url, private_pg) = database(&config, true).await?;
    let private_pg = private_pg.map(|pg| Arc::new(std::sync::Mutex::new(pg)));
    let pool = pool::connect(&url, config.ingest.max_connections, Duration::from_secs(30)).await?;
    let stop = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let api = Arc::new(api::Api::new(
        pool.clone(),
        config.http.tokens.clone(),
        config.retention.clone(),
        config.http.clone(),
        audit::Audit::spawn(pool.clone(), audit_key),
    ));
    let http = http::serve(
        config.http.listen,
        metrics.clone(),
        api,
        stop.clone(),
        &tasks,
    )
    .await?;
    let registry = (config.broker.auth == gate::AuthMode::Agents)
        .then(|| registry::Registry::new(pool.clone()));
    let (link, gate) = start_broker(
        &config,
        registry.clone(),
        metrics.clone(),
        stop.clone(),
        &tasks,
    )
    .await?;
    bound(Bound {
        http,
        broker: gate.plain,
        broker_tls: gate.tls,
        embedded_broker: gate.embedded,
    });
    let limits = Limits {
        max_message_bytes: config.ingest.max_message_bytes,
        ..Limits::default()
    };
    let devices = Arc::new(fleet::tracker::Tracker::default());
    let ingestor = Arc::new(
        Ingestor::new(
            pool.clone(),
            TieredWriter::new(config.retention.clone()).with_metrics(metrics.clone()),
            limits,
            metrics.clone(),
        )
        .with_registry(registry)
        .with_fleet(devices.clone())
        .with_event_metrics(config.ingest.event_metrics.clone())
        .with_time_window(ingest::TimeWindow {
            max_future: config.ingest.max_future_secs as i64 * 1_000_000,
            max_past: (config.ingest.max_past_days > 0)
                .then(|| config.ingest.max_past_days as i64 * 86_400 * 1_000_000),
        }),
    );
    let grace = config.shutdown_grace();
    let session = tokio::spawn(link::run(link, ingestor, stop.clone(), grace));
    let compaction = Duration::from_secs(config.ingest.compact_every_secs);
    tasks.spawn(tiers::compact_loop(pool.clone(), compaction, stop.clone()));
    tasks.spawn(retention::run_loop(
        pool.clone(),
        config.retention.clone(),
        stop.clone(),
    ));
    tasks.spawn(audit::retention_loop(
        pool.clone(),
        config.audit.clone(),
        stop.clone(),
    ));
    tasks.spawn(fleet::run(
        pool.clone(),
        devices,
        config.fleet.clone(),
        metrics,
        stop.clone(),
    ));
    if !alert_rules.is_empty() {
        tracing::info!(rules = alert_rules.len(), "alert rules loaded");
        let engine = alerts::Engine::new(pool.clone(), alert_rules, config.alerts.clone())?
            .with_context(alerts::Context {
                retention: config.retention.clone(),
                gateway_silence_secs: config.fleet.gateway_silence_secs,
            });
        let engine = Arc::new(engine);
        tasks.spawn(engine.run(stop.clone()));
    }
    if !contacts.is_empty() {
        tasks.spawn(alerts::notify::run(pool.clone(), contacts, stop.clone()));
    }
    if let Some(pg) = private_pg.clone() {
        tasks.spawn(database_supervisor(pg, stop.clone()));
    }
    tasks.close();
    tracing::info!("aggregator ready");

    shutdown.await;
    tracing::info!("shutting down");
    stop.cancel();
    // One grace period for everything: the link's batches in hand, HTTP
    // requests, the gate's relays, compaction and retention.
    let deadline = tokio::time::Instant::now() + grace;
    let drained = tokio::time::timeout_at(deadline, async {
        let linked = session.await;
        tasks.wait().await;
        linked
    })
    .await;
    match drained {
        Ok(linked) => linked.context("link task panicked")??,
        Err(_) => tracing::warn!(
            ?grace,
            "shutdown grace elapsed with tasks still running; they are dropped"
        ),
    }
    pool.close().await;
    if let Some(pg) = private_pg {
        tokio::task::spawn_blocking(move || pg.lock().unwrap_or_else(|e| e.into_inner()).stop())
            .await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Takes the data directory's lock (see [`storage::private`]), waiting up to 10 s
/// for a short command (`agent add`) that holds it.
async fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<private::DataDirLock> {
    let mut tries = 0;
    loop {
        match private::DataDirLock::try_take(dir)? {
            Ok(lock) => return Ok(lock),
            Err(_) if tries < 50 => tries += 1,
            Err(pid) => anyhow::bail!(
                "another dash-aggregator (pid {pid}) runs with data_dir {}; stop it first, or give this one its own data_dir",
                dir.display()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every 5 s until `stop`: starts the private cluster again if it died.
async fn database_supervisor(pg: Arc<std::sync::Mutex<PrivatePostgres>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pg = pg.clone();
        let checked = tokio::task::spawn_blocking(move || {
            pg.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restart_if_down()
        })
        .await;
        match checked {
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the private PostgreSQL could not be started again; retrying in 5 s")
            }
            Err(e) => tracing::error!(error = %e, "the database supervisor failed"),
            Ok(Ok(_)) => {}
        }
    }
}

/// The database URL to use, starting the private cluster when none is
/// configured. `owner`: this process holds the data directory's lock (see
/// [`storage::private`]), so it may start the cluster and stops it at the end.
pub async fn database(
    config: &Config,
    owner: bool,
) -> anyhow::Result<(String, Option<PrivatePostgres>)> {
    if !config.database_url.is_empty() {
        return Ok((config.database_url.clone(), None));
    }
    let dir = config.data_dir.join("postgres");
    let bin: Option<std::path::PathBuf> =
        (!config.postgres_bin_dir.is_empty()).then(|| config.postgres_bin_dir.clone().into());
    let pg =
        tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir, bin.as_deref(), owner))
            .await?
            .context("starting the private PostgreSQL (set database_url to use another)")?;
    pg.ensure_database(private::DATABASE).await?;
    Ok((pg.url(private::DATABASE), Some(pg)))
}

/// Starts the embedded broker behind the gate unless an external one is
/// configured, and says how the link reaches the broker.
async fn start_broker(
    config: &Config,
    registry: Option<registry::Registry>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<(LinkConfig, gate::Listening)> {
    let b = &config.broker;
    let tls = config.broker_tls()?;
    let max_payload = config.ingest.max_message_bytes;
    let mut listening = gate::Listening::default();
    let (host, port, username, password) = if !b.url.is_empty() {
        let url = dash_shared::topic::parse_broker_url(&b.url)?;
        (url.host, url.port, b.username.clone(), b.password.clone())
    } else {
        // rumqttd on loopback, admitting only the gate and the link: agents
        // never reach it directly, even without TLS or identities (the gate
        // refuses client ids rumqttd 0.20 could trip over).
        let secret = || dash_runtime::secret::hex(&rand::random::<[u8; 24]>());
        let gate_login = rumqttc::mqttbytes::v4::Login {
            username: "dash-gate".into(),
            password: secret(),
        };
        let link_password = secret();
        let internal = embedded::start(
            max_payload,
            Some(HashMap::from([
                (gate_login.username.clone(), gate_login.password.clone()),
                ("dash-link".to_owned(), link_password.clone()),
            ])),
            stop.clone(),
            tasks,
        )
        .await?;
        let parse = |s: &str, key: &str| -> anyhow::Result<Option<SocketAddr>> {
            if s.is_empty() {
                return Ok(None);
            }
            Ok(Some(s.parse().with_context(|| key.to_owned())?))
        };
        let plain = parse(&b.listen, "broker.listen")?;
        let tls_listen = parse(&b.tls_listen, "broker.tls_listen")?;
        listening = gate::start(
            gate::GateConfig {
                plain,
                tls: tls_listen.zip(tls.server.clone()),
                auth: b.auth,
                broker: internal,
                broker_login: gate_login,
                max_packet: max_payload + 4096,
            },
            registry,
            metrics,
            stop,
            tasks,
        )
        .await?;
        listening.embedded = Some(internal);
        (
            internal.ip().to_string(),
            internal.port(),
            "dash-link".to_owned(),
            link_password,
        )
    };
    let link = LinkConfig {
        host,
        port,
        tls: tls.client,
        client_id: b.client_id.clone(),
        shared_group: b.shared_group.clone(),
        username,
        password,
        max_message_bytes: config.ingest.max_message_bytes,
        workers: config.ingest.workers,
    };
    Ok((link, listening))
}
