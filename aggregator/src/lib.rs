//! `dash-aggregator`: receives agents' batches through an MQTT broker and
//! stores them exactly once in PostgreSQL.
//!
//! # Layout
//!
//! ```text
//! broker (embedded rumqttd | external) --dash/v1/+/+/batch--> link (one session, N workers)
//!     --> ingest: decode, series ids, BEGIN; ledger row FOR UPDATE; COPY raw blocks; merge rollups; ledger update; COMMIT
//!     --> ack on dash/v1/{tenant}/{agent}/ack, then PUBACK
//! ```
//!
//! - [`config`]: TOML + `DASH_` environment.
//! - [`postgres`]: the private cluster used when no database URL is given.
//! - [`db`]: pool and embedded migrations.
//! - [`ledger`]: the per-stream dedupe ledger (the exactly-once core).
//! - [`storage`]: series registry and the [`storage::SampleWriter`] seam.
//! - [`tiers`]: raw blocks and exact hourly/daily rollups, written in the ingest transaction.
//! - [`ingest`]: one payload in, one ack out.
//! - [`link`]: the MQTT session and its workers.
//! - [`broker`]: the embedded rumqttd.
//! - [`metrics`], [`http`]: counters on `/metrics`.
//!
//! # Guarantee
//!
//! A batch's ack is published only after the transaction holding both its
//! samples and its ledger entry committed. Redelivery (from the broker or a
//! resending agent) finds the ledger entry and is acked again without a write.

#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod config;
pub mod db;
pub mod http;
pub mod ingest;
pub mod ledger;
pub mod link;
pub mod metrics;
pub mod postgres;
pub mod query;
pub mod retention;
pub mod storage;
pub mod tiers;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dash_shared::Limits;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::ingest::Ingestor;
use crate::link::LinkConfig;
use crate::metrics::Metrics;
use crate::postgres::PrivatePostgres;
use crate::tiers::TieredWriter;

/// Runs the aggregator until `shutdown` resolves, then drains within the
/// configured grace period and stops the private PostgreSQL (if any).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (url, mut private_pg) = database(&config).await?;
    let pool = db::connect(&url, config.ingest.max_connections, Duration::from_secs(30)).await?;
    let stop = CancellationToken::new();
    let api = Arc::new(api::Api {
        pool: pool.clone(),
        tokens: config.http.tokens.clone(),
        retention: config.retention.clone(),
    });
    http::serve(config.http.listen, metrics.clone(), api, stop.clone()).await?;
    let link = link_config(&config)?;
    let limits = Limits {
        max_message_bytes: config.ingest.max_message_bytes,
        ..Limits::default()
    };
    let ingestor = Arc::new(
        Ingestor::new(
            pool.clone(),
            TieredWriter::new(config.retention.clone()).with_metrics(metrics.clone()),
            limits,
            metrics,
        )
        .with_event_metrics(config.ingest.event_metrics.clone())
        .with_time_window(ingest::TimeWindow {
            max_future: config.ingest.max_future_secs as i64 * 1_000_000,
            max_past: (config.ingest.max_past_days > 0)
                .then(|| config.ingest.max_past_days as i64 * 86_400 * 1_000_000),
        }),
    );
    let session = tokio::spawn(link::run(
        link,
        ingestor,
        stop.clone(),
        config.shutdown_grace(),
    ));
    let compaction = Duration::from_secs(config.ingest.compact_every_secs);
    let compactor = tokio::spawn(tiers::compact_loop(pool.clone(), compaction, stop.clone()));
    let retention = tokio::spawn(retention::run_loop(
        pool.clone(),
        config.retention.clone(),
        stop.clone(),
    ));
    tracing::info!("aggregator ready");

    shutdown.await;
    tracing::info!("shutting down");
    stop.cancel();
    session.await.context("link task panicked")??; // bounded by the grace period
    let _ = tokio::time::timeout(config.shutdown_grace(), compactor).await;
    let _ = tokio::time::timeout(config.shutdown_grace(), retention).await;
    pool.close().await;
    if let Some(mut pg) = private_pg.take() {
        tokio::task::spawn_blocking(move || pg.stop()).await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The database URL to use, starting the private cluster when none is configured.
async fn database(config: &Config) -> anyhow::Result<(String, Option<PrivatePostgres>)> {
    if !config.database_url.is_empty() {
        return Ok((config.database_url.clone(), None));
    }
    let dir = config.data_dir.join("postgres");
    let bin: Option<std::path::PathBuf> =
        (!config.postgres_bin_dir.is_empty()).then(|| config.postgres_bin_dir.clone().into());
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir, bin.as_deref()))
        .await?
        .context("starting the private PostgreSQL (set database_url to use another)")?;
    pg.ensure_database(postgres::DATABASE).await?;
    Ok((pg.url(postgres::DATABASE), Some(pg)))
}

/// Starts the embedded broker when no external one is configured.
fn link_config(config: &Config) -> anyhow::Result<LinkConfig> {
    let b = &config.broker;
    let (host, port) = if b.url.is_empty() {
        broker::start_embedded(b.listen, config.ingest.max_message_bytes)?;
        let ip = match b.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        (ip.to_string(), b.listen.port())
    } else {
        dash_shared::topic::parse_broker_url(&b.url)?
    };
    Ok(LinkConfig {
        host,
        port,
        client_id: b.client_id.clone(),
        shared_group: b.shared_group.clone(),
        username: b.username.clone(),
        password: b.password.clone(),
        max_message_bytes: config.ingest.max_message_bytes,
        workers: config.ingest.workers,
    })
}
