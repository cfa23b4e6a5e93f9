//! Device inputs over MQTT.
//!
//! Two ways in, one rule: a device's QoS 1 publish is acknowledged only after
//! its samples are flushed to the buffer.
//!
//! - [`listener`]: the agent itself listens for devices (MQTT 3.1.1). It is an
//!   ingest endpoint, not a general broker: devices publish, nothing is routed
//!   between them. A general-purpose broker such as rumqttd acknowledges a
//!   publish as soon as it has it in memory, which cannot honour the rule
//!   above; this listener sends PUBACK only after the group commit.
//! - [`subscriber`]: a broker already runs on the gateway (Mosquitto, say);
//!   the agent subscribes with a persistent session and manual acks, so the
//!   broker keeps each message until the agent has flushed it.
//!
//! Both hand payloads to a [`Router`], which maps topics to series.

pub mod listener;
pub mod mapping;
pub mod session;
#[cfg(test)]
mod session_model;
pub mod subscriber;

use std::sync::atomic::{AtomicU64, Ordering};

use dash_shared::Micros;

use crate::sample::Sample;
use mapping::{Mapping, PayloadError};

/// Why a device message produced no samples.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no mapping matches the topic")]
    NoMapping,
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// Counts of what was refused, by reason, with a log line per device and
/// reason at most once a minute.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    logged:
        std::sync::Mutex<std::collections::HashMap<(String, &'static str), tokio::time::Instant>>,
}

impl Refusals {
    /// Counts one refusal of `reason` for `client`, logging it if this
    /// device was not logged for it in the last minute.
    pub fn count(&self, client: &str, reason: &'static str, detail: &str) {
        *self
            .counts
            .lock()
            .expect("refusals")
            .entry(reason)
            .or_default() += 1;
        let now = tokio::time::Instant::now();
        let mut logged = self.logged.lock().expect("refusals");
        if logged.len() > 10_000 {
            logged.retain(|_, at| now.duration_since(*at) < std::time::Duration::from_secs(60));
        }
        let key = (dash_runtime::text::clip_for_log(client, 100), reason);
        let due = logged
            .get(&key)
            .is_none_or(|at| now.duration_since(*at) >= std::time::Duration::from_secs(60));
        if due {
            logged.insert(key, now);
            tracing::warn!(client = %dash_runtime::text::clip_for_log(client, 100), reason, detail = %dash_runtime::text::clip_for_log(detail, 300), "device refused (logged once a minute per device and reason)");
        }
    }

    /// Refusals of `reason` so far.
    pub fn count_of(&self, reason: &str) -> u64 {
        self.counts
            .lock()
            .expect("refusals")
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// Refusals so far, by reason.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        let counts = self.counts.lock().expect("refusals");
        counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }
}

/// Maps device messages to samples and counts what it refuses.
#[derive(Debug)]
pub struct Router {
    mappings: Vec<Mapping>,
    transforms: crate::transform::Transforms,
    clock: std::sync::Arc<crate::clock::Clock>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// What the device listener refused, by reason.
    pub refusals: Refusals,
}

impl Router {
    pub fn new(mappings: Vec<Mapping>) -> Self {
        Router {
            mappings,
            transforms: Default::default(),
            clock: Default::default(),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            refusals: Refusals::default(),
        }
    }

    /// Applies `[[transform]]` rules to what devices send.
    pub fn with_transforms(mut self, transforms: crate::transform::Transforms) -> Self {
        self.transforms = transforms;
        self
    }

    /// Stamps readings without a time from `clock` (a router made with
    /// [`Router::new`] alone has a clock of its own, uncorrected).
    pub fn with_clock(mut self, clock: std::sync::Arc<crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Records for one message: [`Router::route`], then the transforms;
    /// or, when the first mapping of the topic reads statuses, one
    /// `device.status` event ([`crate::transform::Transforms::status`]).
    pub fn records(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<Vec<crate::sample::Record>, RouteError> {
        let first = self.mappings.iter().find(|m| m.matches(topic));
        if let Some(m) = first.filter(|m| m.kind == mapping::MappingKind::Status) {
            let now = self.clock.now();
            let report = m
                .decode_status(topic, payload, now - now.rem_euclid(1_000))
                .ok_or(RouteError::NoMapping)
                .and_then(|r| r.map_err(RouteError::from));
            let report = self.count(topic, report, |_| 1)?;
            return Ok(self
                .transforms
                .status(crate::transform::Input::Mqtt, report)
                .into_iter()
                .collect());
        }
        let samples = self.route(topic, payload)?;
        Ok(self
            .transforms
            .apply(crate::transform::Input::Mqtt, samples))
    }

    /// Counts a message's outcome (`accepted` by how many records it gave)
    /// and logs a refusal.
    fn count<T>(
        &self,
        topic: &str,
        result: Result<T, RouteError>,
        accepted: impl Fn(&T) -> u64,
    ) -> Result<T, RouteError> {
        match &result {
            Ok(v) => {
                self.accepted.fetch_add(accepted(v), Ordering::Relaxed);
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                let topic: String = topic.chars().take(200).collect();
                tracing::warn!(%topic, error = %e, "device message refused");
            }
        }
        result
    }

    /// Whether some mapping reads this topic.
    pub fn maps(&self, topic: &str) -> bool {
        self.mappings.iter().any(|m| m.matches(topic))
    }

    /// MQTT filters covering every mapping.
    pub fn filters(&self) -> Vec<String> {
        self.mappings.iter().map(Mapping::filter).collect()
    }

    /// Samples for one message, stamped with the agent's clock unless the
    /// payload has a time. Arrival stamps are cut to milliseconds: finer is
    /// noise for a reading that crossed a network, and costs wire bytes.
    pub fn route(&self, topic: &str, payload: &[u8]) -> Result<Vec<Sample>, RouteError> {
        let now = self.clock.now();
        self.route_at(topic, payload, now - now.rem_euclid(1_000))
    }

    fn route_at(
        &self,
        topic: &str,
        payload: &[u8],
        now: Micros,
    ) -> Result<Vec<Sample>, RouteError> {
        let result = self
            .mappings
            .iter()
            .filter(|m| m.kind == mapping::MappingKind::Readings)
            .find_map(|m| m.decode(topic, payload, now))
            .ok_or(RouteError::NoMapping)
            .and_then(|r| r.map_err(RouteError::from));
        self.count(topic, result, |samples| samples.len() as u64)
    }

    /// Samples accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Messages refused so far (bad payload or no mapping).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}
