//! The durable store-and-forward buffer, on sled.
//!
//! # Layout
//!
//! ```text
//! samples: u64 BE id  -> chunk                 unsealed telemetry records, oldest first:
//!                                              one chunk per group commit, `u32 BE count`,
//!                                              `u32 BE crc32` of the rest, then
//!                                              postcard(Vec<Record>); the key is the id of
//!                                              its first record
//! transactions: u64 BE id -> chunk             the same for transactions (the HTTP input)
//! quarantine: u64 BE id -> chunk               chunks that failed their checksum or did not
//!             "batch" ++ u64 BE seq -> batch   decode, and batches that failed theirs, moved
//!                                              aside (never sent, kept for inspection)
//! outbox:  u64 BE seq -> encoded wire::Batch   sealed, sent or not, not yet acked
//! batches: u64 BE seq -> postcard(BatchInfo)   per outbox batch: class, records, bytes,
//!                                              oldest timestamp, CRC-32 of the batch
//! meta:    "incarnation" -> u64 BE             drawn once, when the buffer is created
//!          "next_seq"    -> u64 BE             the seq the next sealed batch gets
//!          "counts"      -> postcard(Counts)   dropped, rejected and corrupt records, ever
//!          "clock_floor" -> u64 BE µs          the last server time seen (see crate::clock)
//! dash.mark (a file beside sled's)             incarnation, next seq and records held after
//!                                              the last flush or settle (see `Mark`)
//!          "format"      -> u64 BE             3 (2: no batch info; 1: one bare sample per
//!                                              key; both are converted on open)
//! idempotency: source 0x00 key -> u64 BE µs    idempotency keys of HTTP requests stored,
//!                                              written in one transaction with their records
//! pending: u64 BE window end ++ u64 BE id     samples of pre-aggregated series
//!          -> postcard((width s, Sample))      (see crate::aggregate), until their window closes
//! sessions: client ++ kind ++ packet id        device sessions (QoS 2 ids not released, QoS 1
//!                                              digests), written with their records (`sessions`)
//! ```
//!
//! # Rules
//!
//! - An input is acknowledged only after [`Buffer::flush`] returned for a
//!   write that holds its samples (see [`crate::commit`] for group commit).
//! - Sealing moves the oldest records of one class into one encoded batch in
//!   a single transaction (records removed, batch added, `next_seq` bumped)
//!   and is flushed before the batch may be sent. So a seq, once on the wire,
//!   always names the same bytes, even across crashes: the aggregator's
//!   dedupe by seq can never swallow different samples.
//! - A batch leaves the outbox only when the aggregator acks it (committed,
//!   duplicate or rejected), or when the disk budget drops it (see below).
//!   Deleting needs no flush: a deletion lost in a crash only causes a
//!   resend, which the aggregator acks as a duplicate.
//!
//! # Disk budget
//!
//! `max_bytes` bounds the bytes of keys and values the buffer holds (chunks,
//! pending samples and batches). sled's files are larger than that: it is a
//! log-structured store that reclaims space as it goes (see the README for
//! the measured ratio). When a write would cross the budget, each class
//! follows its [`WhenFull`] policy: `DropOldest` deletes its own oldest
//! batches, then its oldest unsealed chunks, and counts every record
//! deleted; `Reject` refuses the write, so the input does not acknowledge
//! it, and counts the records refused. A class never deletes another's
//! records. The counts are kept in `meta` and survive restarts; a drop is
//! counted in the same transaction that deletes.
//!
//! # Parts
//!
//! - `format`: keys, chunks, batch info and the helpers every part uses.
//! - `recovery`: opening, counters rebuilt from disk, damage moved aside.
//! - `migrate`: older formats converted on open.
//! - `writer`: appends, idempotency keys, flushes.
//! - `sessions`: device sessions, changed in the transaction of their records.
//! - `budget`: room by each class's policy; drops and refusals counted.
//! - `sealer`: records and closed windows into batches.
//! - `outbox`: sending (checksums checked first) and settling acks.
//! - `mark`: the mark file and [`Buffer::remove`], the one way anything
//!   held leaves the buffer.

mod budget;
mod format;
mod mark;
mod migrate;
mod outbox;
mod recovery;
mod sealer;
mod sessions;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dash_shared::wire::{self, EncodeError, Invalid, Limits};
use dash_shared::{
    Batch, BufferStatus, ClassCounts, Message, Micros, SeriesBlock, SeriesKey, StreamId,
};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::aggregate::{self, AggregateRule};
use crate::sample::{Class, Record, Sample};

pub use format::build_batch;
use format::*;
use mark::*;
use migrate::*;
pub use sessions::{ClientKey, SessionOp, StoredSession, client_key};

/// Runs that sled may end by a panic before the buffer is moved aside.
pub const MAX_SLED_PANICS: usize = 3;

/// How to open a buffer that earlier runs may have found damaged (see
/// [`Buffer::open_or_recover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Open it; if sled cannot (an error or a panic), move it aside.
    Open,
    /// The last run ended by a panic in sled: also read every record back
    /// while opening, so damage that only shows when a page is read is
    /// found there, not again in a running agent.
    ReadBack,
    /// Move it aside whatever it holds, for this reason: sled found it
    /// corrupt while writing, or panicked in [`MAX_SLED_PANICS`] runs in a row.
    MoveAside(String),
}

impl Recovery {
    /// What `sled_panics` runs in a row ended by a panic in sled call for.
    pub fn after_sled_panics(sled_panics: usize) -> Recovery {
        match sled_panics {
            0 => Recovery::Open,
            n if n < MAX_SLED_PANICS => Recovery::ReadBack,
            n => Recovery::MoveAside(format!("sled panicked in {n} runs in a row while using it")),
        }
    }
}

/// Name of the one stream this agent sends today.
pub const TELEMETRY: &str = "telemetry";

/// Why the buffer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer storage error (check the disk under data_dir): {0}")]
    Sled(#[from] sled::Error),
    #[error("buffer metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("could not encode a batch: {0}")]
    Encode(#[from] EncodeError),
    #[error("buffer file error (check the disk under data_dir): {0}")]
    Io(#[from] std::io::Error),
}

/// What a class does when the buffer is at its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the class's oldest records (acknowledged, so counted as dropped).
    DropOldest,
    /// Refuse new records of the class; inputs do not acknowledge them.
    Reject,
}

/// The disk budget and what each class does at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of keys and values held, at most; 0: no budget.
    pub max_bytes: u64,
    pub telemetry: WhenFull,
    pub transactions: WhenFull,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_bytes: 0,
            telemetry: WhenFull::DropOldest,
            transactions: WhenFull::Reject,
        }
    }
}

impl Budget {
    fn policy(&self, class: Class) -> WhenFull {
        match class {
            Class::Telemetry => self.telemetry,
            Class::Transactions => self.transactions,
        }
    }
}

/// Records dropped, rejected and lost to corruption since the buffer was
/// created, per class (indexed by [`Class::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub dropped: [u64; 2],
    pub rejected: [u64; 2],
    pub corrupt: u64,
}

/// What the buffer keeps about each batch in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchInfo {
    pub class: Class,
    /// Records on the wire: samples, windows and events.
    pub records: u64,
    /// Key and value bytes in the outbox.
    pub bytes: u64,
    /// The oldest timestamp in it.
    pub oldest: Micros,
    /// CRC-32 of the encoded batch.
    pub crc: u32,
}

/// The buffer. Cheap to share behind an `Arc`.
pub struct Buffer {
    db: sled::Db,
    /// sled's log file, fsynced after each flush (see [`Buffer::flush`]).
    log: std::fs::File,
    samples: sled::Tree,
    transactions: sled::Tree,
    outbox: sled::Tree,
    batches: sled::Tree,
    meta: sled::Tree,
    idempotency: sled::Tree,
    sessions: sled::Tree,
    pending: sled::Tree,
    quarantine: sled::Tree,
    rules: Vec<AggregateRule>,
    budget: Budget,
    stream: StreamId,
    limits: Limits,
    next_id: AtomicU64,
    /// Records in chunks (both classes).
    unsealed: AtomicU64,
    /// Samples in `pending`.
    pending_count: AtomicU64,
    /// Records in outbox batches (see [`BatchInfo::records`]).
    outbox_records: AtomicU64,
    /// The mark file beside the buffer (see [`Mark`]).
    mark: std::path::PathBuf,
    /// Key and value bytes held (what the budget bounds), per class
    /// ([`Class::index`]) and, at [`PENDING`], samples waiting for their
    /// window (telemetry that `drop_oldest` cannot take).
    bytes: [AtomicU64; 3],
    /// Records taken out of what the buffer holds, ever (this run): acked,
    /// dropped, quarantined, folded into windows. See [`Mark`].
    removed: AtomicU64,
    /// Records about to be taken out (`removed` already counts them).
    removing: AtomicU64,
    /// Held while sled flushes (see [`Buffer::flush`]).
    flushing: tokio::sync::Mutex<()>,
    /// The mark last written; the lock orders mark writes.
    mark_state: Mutex<Mark>,
    /// Batches handed to the uplink and not yet acked: never dropped for room.
    in_flight: Mutex<std::collections::BTreeSet<u64>>,
    /// Persisted in `meta`; the lock also orders every change to it.
    counts: Mutex<Counts>,
    /// Seal, settle, evict and quarantine take this, so a record is never
    /// both sealed and dropped, nor a batch both settled and dropped.
    writer: Mutex<()>,
    /// The highest seq whose seal is on disk. Only batches up to it may be sent.
    durable_seq: AtomicU64,
    /// Set when the buffer was moved aside at start (see [`Buffer::open_or_recover`]).
    recreated: AtomicBool,
    /// The last write or flush error, cleared by the next success.
    fault: Mutex<Option<String>>,
    /// Damage found at start, reported until the agent restarts.
    damage: Mutex<Option<String>>,
    /// sled failed a write: it refuses every write after that (its error
    /// is sticky) until the buffer is opened again.
    broken: AtomicBool,
    /// sled found its own files corrupt while writing (a damaged page it
    /// must rewrite): no reopen makes it write again.
    corrupted: AtomicBool,
    /// Acked batches sled could not delete while broken: not sent again
    /// until the buffer is reopened (then once more, as duplicates).
    ghosts: Mutex<(u64, std::collections::BTreeSet<u64>)>,
}

impl Buffer {
    /// Pre-aggregates the series these rules match (see [`crate::aggregate`]).
    pub fn with_aggregation(mut self, rules: Vec<AggregateRule>) -> Self {
        self.rules = rules;
        self
    }

    /// Bounds the buffer (see the module docs).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    fn tree(&self, class: Class) -> &sled::Tree {
        match class {
            Class::Telemetry => &self.samples,
            Class::Transactions => &self.transactions,
        }
    }

    /// Records held: unsealed, pending and in unacked batches.
    pub fn held(&self) -> u64 {
        // Batches first: a seal lowers the others before it raises this, so
        // a seal between the reads is seen too low, never too high.
        let sealed = self.outbox_records.load(Ordering::SeqCst);
        sealed + self.unsealed() + self.pending_count.load(Ordering::SeqCst)
    }

    fn next_seq(&self) -> u64 {
        match self.meta.get("next_seq") {
            Ok(Some(v)) => read_u64(&v).unwrap_or(0),
            _ => 0,
        }
    }

    /// Remembers a write's failure as the buffer's fault, or clears it.
    pub fn note<T>(&self, result: &Result<T, BufferError>) {
        let mut fault = lock(&self.fault);
        match result {
            Ok(_) => {
                if fault.take().is_some() {
                    tracing::info!("the buffer writes again");
                }
            }
            Err(e) => {
                if fault.is_none() {
                    tracing::error!(error = %e, "the buffer cannot write; inputs are not acknowledged, buffered batches are still sent");
                }
                if matches!(e, BufferError::Sled(_) | BufferError::Io(_)) {
                    self.broken.store(true, Ordering::SeqCst);
                }
                if matches!(e, BufferError::Sled(sled::Error::Corruption { .. })) {
                    self.corrupted.store(true, Ordering::SeqCst);
                }
                *fault = Some(format!("buffer cannot write: {e}"));
            }
        }
    }

    /// The current write fault, if any.
    pub fn fault(&self) -> Option<String> {
        lock(&self.fault).clone()
    }

    /// Whether a storage error broke the buffer for writing; it must be
    /// opened again (once the disk has room or is writable again).
    pub fn needs_reopen(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Whether sled found its files corrupt while writing: the buffer must
    /// be moved aside ([`Recovery::MoveAside`]), not just reopened.
    pub fn is_corrupted(&self) -> bool {
        self.corrupted.load(Ordering::SeqCst)
    }

    /// Damage found when the buffer was opened, if any.
    pub fn damage(&self) -> Option<String> {
        lock(&self.damage).clone()
    }

    /// Records not yet sealed into a batch.
    pub fn unsealed(&self) -> u64 {
        self.unsealed.load(Ordering::SeqCst)
    }

    /// Sealed batches not yet acked.
    pub fn unacked(&self) -> u64 {
        self.outbox.len() as u64
    }

    /// Key and value bytes held (what the budget bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes.iter().map(|b| b.load(Ordering::SeqCst)).sum()
    }

    /// Dropped, rejected and corrupt records since the buffer was created.
    pub fn counts(&self) -> Counts {
        *lock(&self.counts)
    }

    /// The buffer's part of the agent's status.
    pub fn status(&self) -> Result<BufferStatus, BufferError> {
        let (mut records, mut unacked) = (
            self.unsealed() + self.pending_count.load(Ordering::SeqCst),
            0,
        );
        let mut oldest = Micros::MAX;
        for item in self.batches.iter().values() {
            let info = batch_info(&item?)?;
            records += info.records;
            unacked += 1;
            oldest = oldest.min(info.oldest);
        }
        for tree in [&self.samples, &self.transactions] {
            if let Some((_, v)) = tree.first()? {
                if let Ok(chunk) = read_chunk(&v) {
                    oldest = oldest.min(records_oldest(&chunk));
                }
            }
        }
        if let Some((_, v)) = self.pending.first()? {
            if let Ok((_, s)) = postcard::from_bytes::<(u32, Sample)>(&v) {
                oldest = oldest.min(s.ts);
            }
        }
        let counts = self.counts();
        let class = |c: Class| ClassCounts {
            dropped: counts.dropped[c.index()],
            rejected: counts.rejected[c.index()],
        };
        Ok(BufferStatus {
            records,
            bytes: self.bytes(),
            budget_bytes: self.budget.max_bytes,
            oldest: if oldest == Micros::MAX { 0 } else { oldest },
            unacked_batches: unacked,
            telemetry: class(Class::Telemetry),
            transactions: class(Class::Transactions),
            invalid_records: 0,
            corrupt_records: counts.corrupt,
            recreated: self.recreated.load(Ordering::SeqCst),
            disk_bytes: self.db.size_on_disk().unwrap_or(0),
        })
    }

    /// Records lost to corruption since the buffer was created.
    pub fn corrupt_records(&self) -> u64 {
        self.counts().corrupt
    }
}
