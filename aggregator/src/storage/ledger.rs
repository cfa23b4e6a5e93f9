//! The dedupe ledger: which batches of a stream are settled.
//!
//! A batch is identified by `(tenant, agent, stream, incarnation, seq)`. The
//! ledger row for a stream is read `FOR UPDATE`, checked, and updated in the
//! same transaction that writes the batch's samples, so a batch is stored
//! exactly once however often it arrives, and concurrent deliveries of one
//! stream serialise on that row.
//!
//! # State
//!
//! `through`: every seq up to it is settled. `above`: settled seqs past a gap.
//! The agent's `floor` (its lowest unsettled seq) moves `through` up: the
//! agent will never send anything below it again, whether it was acked or
//! dropped under a buffer policy. So `above` holds the agent's in-flight
//! window, and after an outage also the live batches the agent sends ahead
//! of its backlog (one per `batch_linger_ms` of live data while the backlog
//! drains, e.g. 600 seqs for a 10-minute catch-up at one batch a second),
//! until the backlog is in: one small row per stream, not one row per batch.

use std::collections::BTreeSet;

use dash_shared::{AgentId, StreamId, TenantId};
use sqlx::PgConnection;

/// What to do with an arriving batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not seen before: write it, then [`StreamLedger::settle`].
    New,
    /// Settled before: write nothing, ack again.
    Duplicate,
}

/// The in-memory form of one ledger row. Pure logic, no IO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLedger {
    pub through: u64,
    pub above: BTreeSet<u64>,
}

impl StreamLedger {
    /// Applies the agent's floor, then says whether `seq` is new.
    pub fn admit(&mut self, seq: u64, floor: u64) -> Admission {
        self.raise_through(floor.saturating_sub(1));
        if seq <= self.through || self.above.contains(&seq) {
            Admission::Duplicate
        } else {
            Admission::New
        }
    }

    /// Marks `seq` settled.
    pub fn settle(&mut self, seq: u64) {
        if seq > self.through {
            self.above.insert(seq);
            self.raise_through(self.through);
        }
    }

    fn raise_through(&mut self, to: u64) {
        self.through = self.through.max(to);
        self.above = self.above.split_off(&self.through.saturating_add(1));
        while self.above.first() == Some(&self.through.saturating_add(1)) {
            self.above.pop_first();
            self.through += 1;
        }
    }
}

/// Where a ledger row lives.
pub struct LedgerKey<'a> {
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub stream: &'a StreamId,
}

impl LedgerKey<'_> {
    // u64 incarnations are stored bit-for-bit in a bigint.
    fn incarnation(&self) -> i64 {
        self.stream.incarnation as i64
    }

    /// Reads the row, creating it if needed, and locks it until the transaction ends.
    pub async fn lock(&self, conn: &mut PgConnection) -> sqlx::Result<StreamLedger> {
        sqlx::query(
            "INSERT INTO ingest_ledger (tenant, agent, stream, incarnation) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(self.tenant.as_str())
        .bind(self.agent.as_str())
        .bind(&self.stream.name)
        .bind(self.incarnation())
        .execute(&mut *conn)
        .await?;
        let (through, above): (i64, Vec<i64>) = sqlx::query_as(
            "SELECT committed_through, above FROM ingest_ledger
             WHERE tenant = $1 AND agent = $2 AND stream = $3 AND incarnation = $4 FOR UPDATE",
        )
        .bind(self.tenant.as_str())
        .bind(self.agent.as_str())
        .bind(&self.stream.name)
        .bind(self.incarnation())
        .fetch_one(&mut *conn)
        .await?;
        Ok(StreamLedger {
            through: through as u64,
            above: above.into_iter().map(|s| s as u64).collect(),
        })
    }

    /// Writes the row back, adding what this transaction stored and skipped.
    pub async fn store(
        &self,
        conn: &mut PgConnection,
        ledger: &StreamLedger,
        batches: i64,
        samples: u64,
        duplicates: i64,
    ) -> sqlx::Result<()> {
        let above: Vec<i64> = ledger.above.iter().map(|s| *s as i64).collect();
        let (samples, dups) = (samples as i64, duplicates);
        sqlx::query(
            "UPDATE ingest_ledger SET committed_through = $5, above = $6,
                 batches = batches + $7, samples = samples + $8, duplicates = duplicates + $9,
                 last_commit = CASE WHEN $7 > 0 THEN now() ELSE last_commit END
             WHERE tenant = $1 AND agent = $2 AND stream = $3 AND incarnation = $4",
        )
        .bind(self.tenant.as_str())
        .bind(self.agent.as_str())
        .bind(&self.stream.name)
        .bind(self.incarnation())
        .bind(ledger.through as i64)
        .bind(above)
        .bind(batches)
        .bind(samples)
        .bind(dups)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_batches_advance_through_without_gaps() {
        let mut l = StreamLedger::default();
        for seq in 1..=5 {
            assert_eq!(l.admit(seq, 1), Admission::New);
            l.settle(seq);
        }
        assert_eq!((l.through, l.above.len()), (5, 0));
        assert_eq!(l.admit(3, 1), Admission::Duplicate);
    }

    #[test]
    fn out_of_order_batches_are_held_above_a_gap_until_it_closes() {
        let mut l = StreamLedger::default();
        for seq in [1, 3, 4] {
            assert_eq!(l.admit(seq, 1), Admission::New);
            l.settle(seq);
        }
        assert_eq!(l.through, 1);
        assert_eq!(l.admit(4, 1), Admission::Duplicate);
        assert_eq!(l.admit(2, 2), Admission::New);
        l.settle(2);
        assert_eq!((l.through, l.above.len()), (4, 0));
    }

    #[test]
    fn the_agents_floor_closes_gaps_it_will_never_fill() {
        let mut l = StreamLedger::default();
        l.admit(5, 1);
        l.settle(5);
        assert_eq!(l.through, 0);
        // The agent dropped 1..=3 under its buffer policy and says so.
        assert_eq!(l.admit(6, 4), Admission::New);
        l.settle(6);
        assert_eq!((l.through, l.above.len()), (3, 2));
        assert_eq!(l.admit(4, 4), Admission::New);
        l.settle(4);
        assert_eq!((l.through, l.above.len()), (6, 0));
    }

    #[test]
    fn a_stale_floor_never_moves_through_backwards() {
        let mut l = StreamLedger {
            through: 10,
            above: BTreeSet::new(),
        };
        assert_eq!(l.admit(7, 2), Admission::Duplicate);
        assert_eq!(l.through, 10);
    }
}
