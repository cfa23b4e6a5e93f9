//! The fleet: which devices exist, where they are, whose they are, and
//! whether they report.
//!
//! - Registration: a device exists from its first series (the series
//!   registry inserts it) or when a person sets it up (API, CLI, CSV).
//!   After each commit, ingest notes each device's agent, first and last
//!   reading, arrival and cadence in a [`tracker::Tracker`]; [`run`] writes
//!   them every `fleet.flush_ms` in one statement.
//! - Liveness: every `fleet.sweep_secs`, one statement judges every device
//!   (see [`crate::storage::fleet::sweep`] for the states) and stores the
//!   changes with their transitions. A device behind an offline gateway is
//!   `unknown`, and one whose gateway holds a backlog that may contain its
//!   readings is `delayed`, never `offline`: the alerts page once for the
//!   gateway, not for each of its sensors.
//! - The interval a device may stay silent: its own
//!   (`expected_interval_secs`), its model's (`fleet.models`), a multiple
//!   of the cadence learned at ingest (`fleet.learned_intervals`, at least
//!   `fleet.min_learned_secs`), or `fleet.default_interval_secs`.

pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::storage::fleet::{self as rows, SweepRules};
use crate::telemetry::metrics::Metrics;

/// `[fleet]` in the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// How often the liveness of every device is judged.
    pub sweep_secs: u64,
    /// How often what ingest saw of devices is written.
    pub flush_ms: u64,
    /// Silence allowed before offline when nothing else says.
    pub default_interval_secs: u32,
    /// A learned cadence allows this many missed reports before offline.
    pub learned_intervals: u32,
    /// The least silence a learned cadence allows.
    pub min_learned_secs: u32,
    /// A gateway (agent) whose last status is older than this is offline.
    /// Agents send one every `uplink.status_interval_secs` (30).
    pub gateway_silence_secs: u32,
    /// Silence allowed per device model: `{ model = "th-10", interval_secs = 600 }`.
    pub models: Vec<ModelInterval>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelInterval {
    pub model: String,
    pub interval_secs: u32,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            sweep_secs: 10,
            flush_ms: 1_000,
            default_interval_secs: 300,
            learned_intervals: 3,
            min_learned_secs: 30,
            gateway_silence_secs: 90,
            models: Vec::new(),
        }
    }
}

impl FleetConfig {
    pub fn rules(&self) -> SweepRules {
        SweepRules {
            default_interval_secs: i64::from(self.default_interval_secs),
            learned_intervals: i64::from(self.learned_intervals),
            min_learned_secs: i64::from(self.min_learned_secs),
            models: self
                .models
                .iter()
                .map(|m| (m.model.clone(), i64::from(m.interval_secs)))
                .collect(),
            gateway_silence_secs: i64::from(self.gateway_silence_secs),
        }
    }

    /// Problems, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.sweep_secs == 0 {
            out.push("fleet.sweep_secs must be at least 1".into());
        }
        if self.flush_ms == 0 {
            out.push("fleet.flush_ms must be at least 1".into());
        }
        if self.default_interval_secs == 0 {
            out.push("fleet.default_interval_secs must be at least 1".into());
        }
        if self.learned_intervals == 0 {
            out.push("fleet.learned_intervals must be at least 1".into());
        }
        for m in &self.models {
            if m.interval_secs == 0 {
                out.push(format!(
                    "fleet.models: {:?} needs interval_secs of at least 1",
                    m.model
                ));
            }
        }
        out
    }
}

/// Writes the tracker's news and sweeps until `stop`; a last flush after.
pub async fn run(
    pool: PgPool,
    tracker: Arc<tracker::Tracker>,
    config: FleetConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let rules = config.rules();
    let mut flush = tokio::time::interval(Duration::from_millis(config.flush_ms));
    let mut sweep = tokio::time::interval(Duration::from_secs(config.sweep_secs));
    for t in [&mut flush, &mut sweep] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = flush.tick() => flush_once(&pool, &tracker).await,
            _ = sweep.tick() => {
                // What ingest saw first, so a device that just reported is judged on it.
                flush_once(&pool, &tracker).await;
                match rows::sweep(&pool, &rules).await {
                    Ok(swept) => {
                        metrics.fleet_transitions(swept.changed);
                        for c in &swept.first {
                            tracing::info!(tenant = %c.tenant, device = %c.device, from = %c.from_state, to = %c.to_state, "device state changed");
                        }
                        let more = swept.changed.saturating_sub(swept.first.len() as u64);
                        if more > 0 {
                            tracing::info!(more, "more device state changes");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "liveness sweep failed; retried at the next"),
                }
                if let Ok(counts) = rows::count_by_state(&pool).await {
                    metrics.fleet_devices(counts);
                }
            }
        }
    }
    flush_once(&pool, &tracker).await;
}

async fn flush_once(pool: &PgPool, tracker: &tracker::Tracker) {
    let taken = tracker.take();
    if taken.is_empty() {
        return;
    }
    if let Err(e) = rows::record_seen(pool, &taken).await {
        tracing::warn!(error = %e, devices = taken.len(), "recording devices seen at ingest failed; retried");
        tracker.put_back(taken);
    }
}
