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

use std::sync::Arc;

use dash_shared::wire;
use dash_shared::{
    Ack, AckOutcome, AgentId, Batch, Limits, Message, StreamId, TenantId, now_micros,
};
use sqlx::PgPool;

use crate::ledger::{Admission, LedgerKey};
use crate::metrics::{BatchOutcome, Metrics};
use crate::storage::{SampleWriter, SeriesRegistry};

/// Why a message could not be handled now.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("database error while storing a batch (will retry): {0}")]
    Store(#[from] sqlx::Error),
}

/// Turns batch payloads into committed rows and acks.
pub struct Ingestor<W> {
    pool: PgPool,
    registry: SeriesRegistry,
    writer: W,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl<W: SampleWriter> Ingestor<W> {
    pub fn new(pool: PgPool, writer: W, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Ingestor {
            pool,
            registry: SeriesRegistry::default(),
            writer,
            limits,
            metrics,
        }
    }

    /// Handles one payload from `tenant`/`agent`'s batch topic. Returns the ack
    /// to publish, or `None` when the payload is too broken to answer.
    pub async fn handle(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        payload: &[u8],
    ) -> Result<Option<Ack>, IngestError> {
        match wire::decode(payload, &self.limits) {
            Ok(Message::Batch(batch)) => self.store(tenant, agent, &batch).await.map(Some),
            Ok(_) => {
                self.refuse(
                    tenant,
                    agent,
                    payload,
                    "not_a_batch",
                    "a non-batch message on a batch topic",
                )
                .await
            }
            Err(e) => {
                self.refuse(tenant, agent, payload, e.label(), &e.to_string())
                    .await
            }
        }
    }

    async fn store(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        batch: &Batch,
    ) -> Result<Ack, IngestError> {
        let ids = self.registry.resolve(&self.pool, tenant, batch).await?;
        let key = LedgerKey {
            tenant,
            agent,
            stream: &batch.stream,
        };
        let mut tx = self.pool.begin().await?;
        let mut ledger = key.lock(&mut tx).await?;
        let outcome = match ledger.admit(batch.seq, batch.floor) {
            Admission::New => {
                let n = self.writer.write(&mut tx, tenant, batch, &ids).await?;
                ledger.settle(batch.seq);
                key.store(&mut tx, &ledger, Some(n)).await?;
                AckOutcome::Committed { samples: n }
            }
            Admission::Duplicate => {
                key.store(&mut tx, &ledger, None).await?;
                AckOutcome::Duplicate
            }
        };
        tx.commit().await?;
        match outcome {
            AckOutcome::Committed { samples } => {
                self.metrics.batch(BatchOutcome::Committed, samples)
            }
            _ => {
                tracing::debug!(%tenant, %agent, seq = batch.seq, "duplicate batch acked again");
                self.metrics.batch(BatchOutcome::Duplicate, 0);
            }
        }
        Ok(ack(&batch.stream, batch.seq, outcome, ledger.through))
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
                key.store(&mut tx, &ledger, None).await?;
                ledger.through
            }
            None => 0,
        };
        if first_time {
            sqlx::query(
                "INSERT INTO ingest_rejections (tenant, agent, stream, seq, reason, payload)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant.as_str())
            .bind(agent.as_str())
            .bind(id.as_ref().map(|(s, _)| s.name.as_str()))
            .bind(seq.map(|s| s as i64))
            .bind(reason)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
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

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(wire::MAX_TEXT_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
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
