//! Counters, exposed in Prometheus text format on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub const BATCHES: &str = "dash_ingest_batches_total";
pub const SAMPLES: &str = "dash_ingest_samples_total";
pub const REJECTED: &str = "dash_ingest_rejected_payloads_total";
pub const STORE_ERRORS: &str = "dash_ingest_store_errors_total";
pub const PAYLOAD_BYTES: &str = "dash_ingest_payload_bytes_total";
pub const EXPIRED: &str = "dash_ingest_expired_samples_total";
pub const QUARANTINED: &str = "dash_ingest_quarantined_total";
pub const CONNECTIONS: &str = "dash_broker_connections_total";
pub const REFUSED: &str = "dash_auth_refused_total";
pub const DEVICE_REFUSALS: &str = "dash_agent_device_refusals";
pub const FLEET_TRANSITIONS: &str = "dash_fleet_transitions_total";
pub const FLEET_DEVICES: &str = "dash_fleet_devices";

/// Outcome of one batch message.
#[derive(Debug, Clone, Copy)]
pub enum BatchOutcome {
    Committed,
    Duplicate,
    Rejected,
}

#[derive(Debug, Default)]
pub struct Metrics {
    committed: AtomicU64,
    duplicate: AtomicU64,
    rejected_batches: AtomicU64,
    samples: AtomicU64,
    store_errors: AtomicU64,
    payload_bytes: AtomicU64,
    /// Samples left out of the raw, hourly and daily tiers for being older
    /// than the tier keeps.
    expired: [AtomicU64; 3],
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    quarantined: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Agents admitted through the aggregator's broker front.
    connections: AtomicU64,
    /// Refusals by (stage, reason).
    refused: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Each agent's device listener refusals, as its last status said.
    device_refusals: Mutex<BTreeMap<(String, String), BTreeMap<String, u64>>>,
    /// Device state changes made by liveness sweeps.
    fleet_transitions: AtomicU64,
    /// Devices per liveness state (all tenants), as of the last sweep.
    fleet_devices: Mutex<BTreeMap<String, i64>>,
    /// What `/readyz` reads (see [`crate::telemetry::health`]).
    pub health: crate::telemetry::health::Health,
}

impl Metrics {
    pub fn batch(&self, outcome: BatchOutcome, samples: u64) {
        let counter = match outcome {
            BatchOutcome::Committed => &self.committed,
            BatchOutcome::Duplicate => &self.duplicate,
            BatchOutcome::Rejected => &self.rejected_batches,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples, Ordering::Relaxed);
    }

    /// Counts a payload refused for `reason` (a short label).
    pub fn rejected(&self, reason: &'static str) {
        *self
            .rejected
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += 1;
    }

    /// Counts the bytes of a batch payload as received.
    pub fn payload(&self, bytes: usize) {
        self.payload_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts samples a tier (0 raw, 1 hourly, 2 daily) left out as expired.
    pub fn expired(&self, counts: [u64; 3]) {
        for (c, n) in self.expired.iter().zip(counts) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a reading quarantined for its timestamp.
    pub fn quarantined(&self, kind: &'static str, reason: &'static str) {
        *self
            .quarantined
            .lock()
            .expect("metrics lock")
            .entry((kind, reason))
            .or_default() += 1;
    }

    /// Counts an agent admitted through the broker's front.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal at `stage` (`tls`, `connect`, `publish`,
    /// `subscribe`, `ingest`) for `reason`.
    pub fn refused(&self, stage: &'static str, reason: &'static str) {
        *self
            .refused
            .lock()
            .expect("metrics lock")
            .entry((stage, reason))
            .or_default() += 1;
    }

    /// Refusals at `stage` for `reason` so far.
    pub fn refused_count(&self, stage: &str, reason: &str) -> u64 {
        self.refused
            .lock()
            .expect("metrics lock")
            .iter()
            .filter(|((s, r), _)| *s == stage && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Keeps what an agent's status says its device listener refused.
    pub fn device_refusals(&self, tenant: &str, agent: &str, refused: &BTreeMap<String, u64>) {
        let mut all = self.device_refusals.lock().expect("metrics lock");
        let key = (tenant.to_owned(), agent.to_owned());
        if refused.is_empty() {
            all.remove(&key);
        } else {
            all.insert(key, refused.clone());
        }
    }

    /// A sweep changed `n` device states.
    pub fn fleet_transitions(&self, n: u64) {
        self.fleet_transitions.fetch_add(n, Ordering::Relaxed);
    }

    /// Devices per state after a sweep.
    pub fn fleet_devices(&self, by_state: Vec<(String, i64)>) {
        *self.fleet_devices.lock().expect("metrics lock") = by_state.into_iter().collect();
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Payloads refused for `reason` so far.
    pub fn rejected_count(&self, reason: &str) -> u64 {
        self.rejected
            .lock()
            .expect("metrics lock")
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {BATCHES} Batch messages handled, by outcome.\n# TYPE {BATCHES} counter"
        );
        for (label, c) in [
            ("committed", &self.committed),
            ("duplicate", &self.duplicate),
            ("rejected", &self.rejected_batches),
        ] {
            let _ = writeln!(out, "{BATCHES}{{outcome=\"{label}\"}} {}", load(c));
        }
        let _ = writeln!(
            out,
            "# HELP {SAMPLES} Samples committed to PostgreSQL.\n# TYPE {SAMPLES} counter"
        );
        let _ = writeln!(out, "{SAMPLES} {}", load(&self.samples));
        let _ = writeln!(
            out,
            "# HELP {REJECTED} Payloads refused, by reason.\n# TYPE {REJECTED} counter"
        );
        for (reason, n) in self.rejected.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{REJECTED}{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {STORE_ERRORS} Database errors while storing (retried).\n# TYPE {STORE_ERRORS} counter"
        );
        let _ = writeln!(out, "{STORE_ERRORS} {}", load(&self.store_errors));
        let _ = writeln!(
            out,
            "# HELP {EXPIRED} Samples older than a tier keeps when they arrived, left out of that tier.\n# TYPE {EXPIRED} counter"
        );
        for (tier, c) in ["raw", "hourly", "daily"].iter().zip(&self.expired) {
            let _ = writeln!(out, "{EXPIRED}{{tier=\"{tier}\"}} {}", load(c));
        }
        let _ = writeln!(
            out,
            "# HELP {QUARANTINED} Samples, windows and events kept in ingest_quarantine for their timestamps.\n# TYPE {QUARANTINED} counter"
        );
        for ((kind, reason), n) in self.quarantined.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "{QUARANTINED}{{kind=\"{kind}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {FLEET_TRANSITIONS} Device liveness state changes.\n# TYPE {FLEET_TRANSITIONS} counter\n{FLEET_TRANSITIONS} {}",
            load(&self.fleet_transitions)
        );
        let _ = writeln!(
            out,
            "# HELP {FLEET_DEVICES} Devices per liveness state, as of the last sweep.\n# TYPE {FLEET_DEVICES} gauge"
        );
        for (state, n) in self.fleet_devices.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{FLEET_DEVICES}{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {CONNECTIONS} Agents admitted by the broker front (TLS, identity).\n# TYPE {CONNECTIONS} counter\n{CONNECTIONS} {}",
            load(&self.connections)
        );
        let _ = writeln!(
            out,
            "# HELP {REFUSED} Connections, publishes, subscriptions and batches refused for who sent them.\n# TYPE {REFUSED} counter"
        );
        for ((stage, reason), n) in self.refused.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "{REFUSED}{{stage=\"{stage}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {DEVICE_REFUSALS} What agents' device listeners refused, by reason: each agent's count since it started, as its last status said, summed.\n# TYPE {DEVICE_REFUSALS} gauge"
        );
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        let refusals = self.device_refusals.lock().expect("metrics lock");
        for (reason, n) in refusals.values().flatten() {
            *sums.entry(reason).or_default() += n;
        }
        for (reason, n) in sums {
            let _ = writeln!(out, "{DEVICE_REFUSALS}{{reason=\"{reason}\"}} {n}");
        }
        drop(refusals);
        let _ = writeln!(
            out,
            "# HELP {PAYLOAD_BYTES} Bytes of batch payloads received."
        );
        let _ = writeln!(
            out,
            "# TYPE {PAYLOAD_BYTES} counter\n{PAYLOAD_BYTES} {}",
            load(&self.payload_bytes)
        );
        out
    }
}
