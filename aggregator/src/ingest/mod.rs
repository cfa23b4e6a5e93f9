//! Ingest: one batch message in, at most one ack out, exactly once in the database.
//!
//! # The ack rule
//!
//! The [`Ack`] is returned only after the transaction that wrote the samples
//! and the ledger entry has committed. A batch seen before is acked again as
//! a duplicate without writing. A batch that can never be stored (it breaks
//! the protocol's limits) is kept in `ingest_rejections` with its bytes and
//! settled in the ledger in one transaction, then acked as rejected so the
//! agent stops resending it: nothing is silently lost.
//!
//! A database error is returned as [`IngestError::Store`]; the caller retries
//! and does not acknowledge the MQTT message until it succeeds.

pub mod link;

use std::collections::BTreeMap;
use std::sync::Arc;

use dash_shared::events::EventMetric;
use dash_shared::wire;
use dash_shared::{
    Ack, AckOutcome, AgentId, AgentStatus, Batch, Limits, Message, Micros, StreamId, TenantId,
    now_micros,
};
use sqlx::PgPool;

use crate::storage;
use crate::storage::ledger::{Admission, LedgerKey, StreamLedger};
use crate::storage::{Admitted, SampleWriter, SeriesRegistry};
use crate::telemetry::metrics::{BatchOutcome, Metrics};

/// Why a message could not be handled now.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("database error while storing a batch (will retry): {0}")]
    Store(#[from] sqlx::Error),
}

/// One payload as it arrived, with who sent it (from its topic).
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub payload: &'a [u8],
}

/// What a group did to one stream's ledger row.
#[derive(Debug, Default)]
struct StreamTally {
    batches: i64,
    samples: u64,
    duplicates: i64,
}

/// Turns batch payloads into committed rows and acks.
pub struct Ingestor<W> {
    pool: PgPool,
    registry: SeriesRegistry,
    writer: W,
    limits: Limits,
    metrics: Arc<Metrics>,
    event_metrics: Vec<EventMetric>,
    window: TimeWindow,
    /// The faults each agent reported last, to log changes only.
    faults: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<String>>>,
    /// With `broker.auth = "agents"`: only registered, unrevoked agents' messages are stored.
    agents: Option<crate::auth::registry::Registry>,
    /// Where committed batches' devices are noted for the fleet registry.
    fleet: Option<Arc<crate::fleet::tracker::Tracker>>,
}

/// Readings stamped outside `[now - max_past, now + max_future]` when they
/// arrive are quarantined instead of stored (see [`quarantine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub max_future: Micros,
    /// `None`: only the protocol's floor (the year 2000) applies.
    pub max_past: Option<Micros>,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            max_future: 300 * 1_000_000,
            max_past: None,
        }
    }
}

/// A reading taken out of a batch for its timestamp.
pub use crate::storage::held::Quarantined;

/// Takes the samples, windows and events stamped outside `window` (seen
/// from `now`) out of `batch`, dropping series left empty.
pub fn quarantine(batch: &mut Batch, window: TimeWindow, now: Micros) -> Vec<Quarantined> {
    let reason = |ts: Micros| -> Option<&'static str> {
        if ts > now.saturating_add(window.max_future) {
            Some("future")
        } else if window.max_past.is_some_and(|p| ts < now.saturating_sub(p)) {
            Some("past")
        } else {
            None
        }
    };
    let mut out = Vec::new();
    for block in &mut batch.series {
        if block.timestamps.iter().all(|t| reason(*t).is_none()) {
            continue;
        }
        let (mut ts, mut vs) = (Vec::new(), Vec::new());
        for (t, v) in block.timestamps.iter().zip(&block.values) {
            match reason(*t) {
                Some(r) => out.push(Quarantined {
                    kind: "sample",
                    series: block.key.to_string(),
                    ts: *t,
                    value: Some(*v),
                    reason: r,
                }),
                None => {
                    ts.push(*t);
                    vs.push(*v);
                }
            }
        }
        (block.timestamps, block.values) = (ts, vs);
    }
    batch.series.retain(|b| !b.timestamps.is_empty());
    for block in &mut batch.windows {
        let key = block.key.to_string();
        block.windows.retain(|w| match reason(w.start) {
            Some(r) => {
                out.push(Quarantined {
                    kind: "window",
                    series: key.clone(),
                    ts: w.start,
                    value: Some(w.sum),
                    reason: r,
                });
                false
            }
            None => true,
        });
    }
    batch.windows.retain(|b| !b.windows.is_empty());
    batch.events.retain(|e| match reason(e.time) {
        Some(r) => {
            out.push(Quarantined {
                kind: "event",
                series: format!("{}/{}", e.source, e.kind),
                ts: e.time,
                value: None,
                reason: r,
            });
            false
        }
        None => true,
    });
    out
}

impl<W: SampleWriter> Ingestor<W> {
    pub fn new(pool: PgPool, writer: W, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Ingestor {
            pool,
            registry: SeriesRegistry::default(),
            writer,
            limits,
            metrics,
            event_metrics: Vec::new(),
            window: TimeWindow::default(),
            faults: Default::default(),
            agents: None,
            fleet: None,
        }
    }

    /// Notes the devices of every committed batch in `tracker`.
    pub fn with_fleet(mut self, tracker: Arc<crate::fleet::tracker::Tracker>) -> Self {
        self.fleet = Some(tracker);
        self
    }

    /// Stores messages only from agents `registry` knows and has not revoked.
    pub fn with_registry(mut self, registry: Option<crate::auth::registry::Registry>) -> Self {
        self.agents = registry;
        self
    }

    /// Whether a message (`what`: batch or status) on `tenant/agent`'s topic
    /// may be stored: always without a registry; with one, only from a
    /// registered agent that is not revoked. A refusal is counted
    /// (`dash_auth_refused_total{stage="ingest"}`) and logged; the message is
    /// then acknowledged to the broker and dropped, unanswered.
    pub async fn admits(&self, tenant: &TenantId, agent: &AgentId, what: &str) -> bool {
        let Some(registry) = &self.agents else {
            return true;
        };
        match registry.standing(tenant.as_str(), agent.as_str()).await {
            Ok(crate::auth::registry::Standing::Active) => true,
            Ok(s) => {
                self.metrics.refused("ingest", s.reason());
                tracing::warn!(%tenant, %agent, what, reason = s.reason(), "message from an agent that may not publish: not stored");
                false
            }
            Err(e) => {
                // Not stored now; the agent resends what it sees no ack for.
                self.metrics.refused("ingest", "registry_unavailable");
                tracing::warn!(%tenant, %agent, what, error = %e, "registry lookup failed: message not stored");
                false
            }
        }
    }

    /// The sane window for timestamps (see [`quarantine`]).
    pub fn with_time_window(mut self, window: TimeWindow) -> Self {
        self.window = window;
        self
    }

    /// Records an agent's status message (the latest wins) and returns the
    /// time-only ack that answers it, so an agent learns the server's time
    /// before it sends a batch. A payload that is not a status is counted
    /// and answered with nothing.
    pub async fn record_status(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        payload: &[u8],
    ) -> Result<Option<Ack>, IngestError> {
        let status: AgentStatus = match wire::decode(payload, &self.limits) {
            Ok(Message::Status(s)) => s,
            Ok(_) => {
                self.metrics.rejected("not_a_status");
                tracing::warn!(%tenant, %agent, "a non-status message on a status topic ignored");
                return Ok(None);
            }
            Err(e) => {
                self.metrics.rejected(e.label());
                tracing::warn!(%tenant, %agent, error = %e, "unreadable status ignored");
                return Ok(None);
            }
        };
        storage::agents::record_status(&self.pool, tenant, agent, &status).await?;
        self.metrics
            .device_refusals(tenant.as_str(), agent.as_str(), &status.devices.refused);
        let key = (tenant.to_string(), agent.to_string());
        let mut last = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if last.get(&key) != Some(&status.faults) {
            if status.faults.is_empty() {
                tracing::info!(%tenant, %agent, "agent reports no faults");
            } else {
                tracing::warn!(%tenant, %agent, faults = ?status.faults, "agent reports faults");
            }
            last.insert(key, status.faults.clone());
        }
        drop(last);
        let beacon = StreamId {
            name: "clock".into(),
            incarnation: 0,
        };
        Ok(status
            .online
            .then(|| ack(&beacon, 0, AckOutcome::Duplicate, 0)))
    }

    /// Rules that turn numeric fields of events into samples, stored with
    /// the batch that carried the events.
    pub fn with_event_metrics(mut self, rules: Vec<EventMetric>) -> Self {
        self.event_metrics = rules;
        self
    }

    /// Handles one payload from `tenant`/`agent`'s batch topic. Returns the ack
    /// to publish, or `None` when the payload is too broken to answer.
    pub async fn handle(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        payload: &[u8],
    ) -> Result<Option<Ack>, IngestError> {
        let mut acks = self
            .handle_group(&[Delivery {
                tenant,
                agent,
                payload,
            }])
            .await?;
        Ok(acks.pop().flatten())
    }

    /// Handles several payloads, storing every valid batch among them in one
    /// transaction (group commit: a rollup row touched by several batches is
    /// written once). Returns one answer per delivery, in order. On error
    /// nothing of the group is stored and the whole group may be retried.
    pub async fn handle_group(
        &self,
        deliveries: &[Delivery<'_>],
    ) -> Result<Vec<Option<Ack>>, IngestError> {
        let mut answers = vec![None; deliveries.len()];
        let mut valid = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            match wire::decode(d.payload, &self.limits) {
                Ok(Message::Batch(mut batch)) => {
                    if !batch.events.is_empty() && !self.event_metrics.is_empty() {
                        let (derived, skipped) =
                            dash_shared::events::derive(&batch.events, &self.event_metrics);
                        if skipped > 0 {
                            tracing::debug!(tenant = %d.tenant, agent = %d.agent, skipped, "event fields that give no sample");
                        }
                        batch.series.extend(derived);
                    }
                    let held = quarantine(&mut batch, self.window, now_micros());
                    valid.push((i, batch, held))
                }
                Ok(_) => {
                    let reason = "a non-batch message on a batch topic";
                    answers[i] = self
                        .refuse(d.tenant, d.agent, d.payload, "not_a_batch", reason)
                        .await?;
                }
                Err(e) => {
                    answers[i] = self
                        .refuse(d.tenant, d.agent, d.payload, e.label(), &e.to_string())
                        .await?
                }
            }
        }
        if !valid.is_empty() {
            for (i, ack) in self.store(deliveries, &valid).await? {
                answers[i] = Some(ack);
            }
        }
        Ok(answers)
    }

    async fn store(
        &self,
        ds: &[Delivery<'_>],
        valid: &[(usize, Batch, Vec<Quarantined>)],
    ) -> Result<Vec<(usize, Ack)>, IngestError> {
        let mut ids = Vec::with_capacity(valid.len());
        for (i, batch, _) in valid {
            ids.push(
                self.registry
                    .resolve(&self.pool, ds[*i].tenant, batch)
                    .await?,
            );
        }
        let stream_of = |i: usize, b: &Batch| {
            (
                ds[i].tenant.clone(),
                ds[i].agent.clone(),
                b.stream.name.clone(),
                b.stream.incarnation,
            )
        };
        let mut tx = self.pool.begin().await?;
        // Lock every stream's ledger row once, in key order, so concurrent groups cannot deadlock.
        let mut ledgers: BTreeMap<_, (StreamLedger, StreamTally)> = BTreeMap::new();
        for (i, b, _) in valid {
            ledgers
                .entry(stream_of(*i, b))
                .or_insert_with(Default::default);
        }
        for (key, (ledger, _)) in ledgers.iter_mut() {
            let stream = StreamId {
                name: key.2.clone(),
                incarnation: key.3,
            };
            *ledger = LedgerKey {
                tenant: &key.0,
                agent: &key.1,
                stream: &stream,
            }
            .lock(&mut tx)
            .await?;
        }
        let mut admitted = Vec::new();
        let mut held: Vec<(usize, &Quarantined)> = Vec::new();
        let mut outcomes = Vec::with_capacity(valid.len());
        for ((i, batch, quarantined), ids) in valid.iter().zip(&ids) {
            let (ledger, tally) = ledgers
                .get_mut(&stream_of(*i, batch))
                .expect("locked above");
            let outcome = match ledger.admit(batch.seq, batch.floor) {
                Admission::New => {
                    ledger.settle(batch.seq);
                    held.extend(quarantined.iter().map(|q| (*i, q)));
                    let n = batch.record_count() as u64;
                    (tally.batches, tally.samples) = (tally.batches + 1, tally.samples + n);
                    admitted.push(Admitted {
                        tenant: ds[*i].tenant,
                        agent: ds[*i].agent,
                        batch,
                        series_ids: ids,
                    });
                    AckOutcome::Committed { samples: n }
                }
                Admission::Duplicate => {
                    tally.duplicates += 1;
                    AckOutcome::Duplicate
                }
            };
            outcomes.push(outcome);
        }
        if !admitted.is_empty() {
            self.writer.write(&mut tx, &admitted).await?;
        }
        if !held.is_empty() {
            self.store_quarantined(&mut tx, ds, &held).await?;
        }
        for (key, (ledger, tally)) in &ledgers {
            let stream = StreamId {
                name: key.2.clone(),
                incarnation: key.3,
            };
            let row = LedgerKey {
                tenant: &key.0,
                agent: &key.1,
                stream: &stream,
            };
            row.store(
                &mut tx,
                ledger,
                tally.batches,
                tally.samples,
                tally.duplicates,
            )
            .await?;
        }
        tx.commit().await?;
        if let Some(fleet) = &self.fleet {
            for a in &admitted {
                fleet.note(a.tenant, a.agent, a.batch);
            }
        }
        for (i, q) in &held {
            self.metrics.quarantined(q.kind, q.reason);
            tracing::warn!(tenant = %ds[*i].tenant, agent = %ds[*i].agent, kind = q.kind, series = %q.series, ts = q.ts, reason = q.reason, "reading quarantined for its timestamp");
        }
        let mut acks = Vec::with_capacity(valid.len());
        for ((i, batch, _), outcome) in valid.iter().zip(outcomes) {
            match outcome {
                AckOutcome::Committed { samples } => {
                    self.metrics.batch(BatchOutcome::Committed, samples)
                }
                _ => {
                    tracing::debug!(tenant = %ds[*i].tenant, agent = %ds[*i].agent, seq = batch.seq, "duplicate batch acked again");
                    self.metrics.batch(BatchOutcome::Duplicate, 0);
                }
            }
            let through = ledgers[&stream_of(*i, batch)].0.through;
            acks.push((*i, ack(&batch.stream, batch.seq, outcome, through)));
        }
        Ok(acks)
    }

    async fn store_quarantined(
        &self,
        tx: &mut sqlx::PgConnection,
        ds: &[Delivery<'_>],
        held: &[(usize, &Quarantined)],
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<(&str, &str, &Quarantined)> = held
            .iter()
            .map(|(i, q)| (ds[*i].tenant.as_str(), ds[*i].agent.as_str(), *q))
            .collect();
        storage::held::insert_quarantined(tx, &rows).await
    }

    /// Keeps a payload that cannot be stored, and answers it if it has an id.
    async fn refuse(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        payload: &[u8],
        label: &'static str,
        reason: &str,
    ) -> Result<Option<Ack>, IngestError> {
        self.metrics.rejected(label);
        let id = wire::peek_batch_id(payload);
        let seq = id.as_ref().map(|(_, seq)| *seq);
        tracing::warn!(%tenant, %agent, ?seq, reason, "batch payload rejected and quarantined");
        let mut tx = self.pool.begin().await?;
        let mut first_time = true;
        let through = match &id {
            Some((stream, seq)) => {
                let key = LedgerKey {
                    tenant,
                    agent,
                    stream,
                };
                let mut ledger = key.lock(&mut tx).await?;
                first_time = ledger.admit(*seq, 0) == Admission::New;
                ledger.settle(*seq);
                key.store(&mut tx, &ledger, 0, 0, 0).await?;
                ledger.through
            }
            None => 0,
        };
        if first_time {
            let rejection = storage::held::Rejection {
                tenant: tenant.as_str(),
                agent: agent.as_str(),
                stream: id.as_ref().map(|(s, _)| s.name.as_str()),
                seq,
                reason,
                payload,
            };
            storage::held::insert_rejection(&mut tx, &rejection).await?;
        }
        tx.commit().await?;
        self.metrics.batch(BatchOutcome::Rejected, 0);
        Ok(id.map(|(stream, seq)| {
            ack(
                &stream,
                seq,
                AckOutcome::Rejected {
                    reason: truncate(reason),
                },
                through,
            )
        }))
    }

    /// Counts a payload that arrived on a topic that is not a Dash batch topic.
    pub fn refuse_topic(&self, topic: &str, error: &dyn std::fmt::Display) {
        self.metrics.rejected("bad_topic");
        tracing::warn!(topic = %topic.chars().take(200).collect::<String>(), %error, "message on an unknown topic dropped");
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

fn truncate(reason: &str) -> String {
    dash_runtime::text::clip(reason, wire::MAX_TEXT_LEN).to_owned()
}

fn ack(stream: &StreamId, seq: u64, outcome: AckOutcome, through: u64) -> Ack {
    Ack {
        stream: stream.clone(),
        seq,
        outcome,
        committed_through: through,
        server_time: now_micros(),
    }
}
