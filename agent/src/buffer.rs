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

/// sled's page cache: enough for the hot tail of the buffer.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The buffer format this build writes.
const FORMAT: u64 = 3;

/// Runs that sled may end by a panic before the buffer is moved aside.
pub const MAX_SLED_PANICS: usize = 3;

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

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, BufferError> {
    postcard::to_allocvec(v).map_err(|e| BufferError::Corrupt(e.to_string()))
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn read_u64(bytes: &[u8]) -> Result<u64, BufferError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| BufferError::Corrupt(format!("{} bytes where 8 belong", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn tx_error(e: TransactionError<BufferError>) -> BufferError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => BufferError::Sled(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl Buffer {
    /// Opens (or creates) the buffer in `dir`.
    pub fn open(dir: &Path) -> Result<Buffer, BufferError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            // sled caches up to 1 GB of pages by default; a gateway has far less to spare.
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let samples = db.open_tree("samples")?;
        let transactions = db.open_tree("transactions")?;
        let outbox = db.open_tree("outbox")?;
        let batches = db.open_tree("batches")?;
        let meta = db.open_tree("meta")?;
        let idempotency = db.open_tree("idempotency")?;
        let pending = db.open_tree("pending")?;
        let quarantine = db.open_tree("quarantine")?;
        upgrade(&db, &samples, &outbox, &batches, &meta)?;
        let incarnation = match meta.get("incarnation")? {
            Some(v) => read_u64(&v)?,
            None => {
                let fresh: u64 = rand::random();
                meta.insert("incarnation", &be(fresh))?;
                meta.insert("next_seq", &be(1))?;
                db.flush()?;
                tracing::info!(incarnation = fresh, "new buffer created");
                fresh
            }
        };
        let counts = match meta.get("counts")? {
            Some(v) => postcard::from_bytes(&v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the buffer's drop and reject counts are unreadable; they start again from 0");
                Counts::default()
            }),
            None => Counts::default(),
        };
        // Ids stay unique: past every chunk's records and every pending sample.
        let (mut next_id, mut unsealed, mut bytes) = (0u64, 0u64, [0u64; 3]);
        for (class, tree) in Class::ALL.into_iter().zip([&samples, &transactions]) {
            if let Some((k, v)) = tree.last()? {
                next_id = next_id.max(read_u64(&k)? + u64::from(chunk_len(&v)));
            }
            for item in tree.iter() {
                let (k, v) = item?;
                unsealed += chunk_records(&v);
                bytes[class.index()] += entry_bytes(&k, &v);
            }
        }
        let mut pending_count = 0u64;
        for item in pending.iter() {
            let (k, v) = item?;
            if k.len() == 16 {
                next_id = next_id.max(read_u64(&k[8..])? + 1);
            }
            pending_count += 1;
            bytes[PENDING] += entry_bytes(&k, &v);
        }
        let mut outbox_records = 0;
        for item in batches.iter() {
            let (k, v) = item?;
            // An unreadable info costs the batch its checksum, not the buffer.
            let info = batch_info(&v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "unreadable batch info; the batch is sent unchecked");
                BatchInfo {
                    class: Class::Telemetry,
                    records: 0,
                    bytes: entry_bytes(&k, &outbox.get(&k).ok().flatten().unwrap_or_default()),
                    oldest: 0,
                    crc: 0,
                }
            });
            bytes[info.class.index()] += info.bytes;
            outbox_records += info.records;
        }
        // Everything recovered from disk is durable.
        let durable_seq = match outbox.last()? {
            Some((k, _)) => read_u64(&k)?,
            None => 0,
        };
        let log = std::fs::File::open(dir.join("db"))?;
        let buffer = Buffer {
            db,
            log,
            samples,
            transactions,
            outbox,
            batches,
            meta,
            idempotency,
            pending,
            quarantine,
            rules: Vec::new(),
            budget: Budget::default(),
            stream: StreamId {
                name: TELEMETRY.into(),
                incarnation,
            },
            limits: Limits::default(),
            next_id: AtomicU64::new(next_id),
            unsealed: AtomicU64::new(unsealed),
            pending_count: AtomicU64::new(pending_count),
            outbox_records: AtomicU64::new(outbox_records),
            mark: mark_path(dir),
            bytes: bytes.map(AtomicU64::new),
            removed: AtomicU64::new(0),
            removing: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            mark_state: Mutex::new(Mark::default()),
            in_flight: Mutex::new(std::collections::BTreeSet::new()),
            counts: Mutex::new(counts),
            writer: Mutex::new(()),
            durable_seq: AtomicU64::new(durable_seq),
            recreated: AtomicBool::new(false),
            fault: Mutex::new(None),
            damage: Mutex::new(None),
            broken: AtomicBool::new(false),
            corrupted: AtomicBool::new(false),
            ghosts: Mutex::new((0, std::collections::BTreeSet::new())),
        };
        buffer.check_mark()?;
        // Everything just opened is on disk: the mark starts from it.
        let snapshot = buffer.mark_snapshot();
        buffer.write_mark_after_flush(snapshot);
        Ok(buffer)
    }

    /// Opens the buffer in `dir`; if it is corrupt beyond opening, moves it
    /// aside (to `dir` + `.corrupt-` + Unix seconds, kept for inspection)
    /// with an ERROR log and starts a fresh one, so a damaged disk never
    /// keeps the agent in a crash loop. Returns where the old one went.
    /// Other errors (a lock held by another running agent, permissions) are
    /// returned as they are.
    ///
    /// sled panics on some damage instead of returning an error (a flipped
    /// bit, a misdirected write; see `tests/src/damage.rs`): such a panic
    /// while opening counts as corruption. `sled_panics` is how many of the
    /// last runs sled ended by a panic (see [`crate::crashes`]): after one,
    /// the open also reads every record, so damage that only shows when a
    /// page is read is found here, not again in a running agent; after
    /// [`MAX_SLED_PANICS`], the buffer is moved aside whatever it holds.
    pub fn open_or_recover(
        dir: &Path,
        sled_panics: usize,
    ) -> Result<(Buffer, Option<std::path::PathBuf>), BufferError> {
        if sled_panics >= MAX_SLED_PANICS && dir.exists() {
            let e = BufferError::Corrupt(format!(
                "sled panicked in {sled_panics} runs in a row while using it"
            ));
            return Self::move_aside(dir, &e);
        }
        let opened = dash_runtime::panics::catch(|| {
            let buffer = Buffer::open(dir)?;
            if sled_panics > 0 {
                buffer.read_everything()?;
            }
            Ok(buffer)
        })
        .unwrap_or_else(|panic| {
            Err(BufferError::Corrupt(format!(
                "sled panicked while opening: {panic}"
            )))
        });
        match opened {
            Ok(b) => Ok((b, None)),
            Err(
                e @ (BufferError::Corrupt(_)
                | BufferError::Sled(sled::Error::Corruption { .. })
                | BufferError::Sled(sled::Error::Unsupported(_))
                | BufferError::Sled(sled::Error::ReportableBug(_))),
            ) => Self::move_aside(dir, &e),
            // A missing or truncated file of sled's own surfaces as an IO
            // error of kind NotFound or UnexpectedEof.
            Err(BufferError::Io(e) | BufferError::Sled(sled::Error::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::InvalidData
                ) && dir.exists() =>
            {
                Self::move_aside(dir, &BufferError::Io(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads every key and value of every tree (after a run that sled
    /// ended by a panic).
    fn read_everything(&self) -> Result<u64, BufferError> {
        let mut bytes = 0u64;
        for name in self.db.tree_names() {
            for item in self.db.open_tree(&name)?.iter() {
                let (k, v) = item?;
                bytes += entry_bytes(&k, &v);
            }
        }
        tracing::info!(
            bytes,
            "every record of the buffer read back after a panic in sled"
        );
        Ok(bytes)
    }

    /// Moves a buffer that sled reported corrupt while writing aside and
    /// starts a fresh one (see [`Buffer::open_or_recover`]).
    pub fn replace_corrupt(
        dir: &Path,
        why: &str,
    ) -> Result<(Buffer, Option<std::path::PathBuf>), BufferError> {
        Self::move_aside(dir, &BufferError::Corrupt(why.to_owned()))
    }

    fn move_aside(
        dir: &Path,
        e: &BufferError,
    ) -> Result<(Buffer, Option<std::path::PathBuf>), BufferError> {
        let secs = dash_shared::now_micros() / 1_000_000;
        let mut aside = dir.as_os_str().to_owned();
        aside.push(format!(".corrupt-{secs}"));
        let aside = std::path::PathBuf::from(aside);
        std::fs::rename(dir, &aside)?;
        let abandoned = Mark::read(&mark_path(&aside)).map_or(0, |m| m.held);
        tracing::error!(
            records = abandoned,
            error = %e,
            moved_to = %aside.display(),
            "the buffer could not be opened and was moved aside; starting a fresh one (records in it were not sent)"
        );
        let fresh = Buffer::open(dir)?;
        fresh.recreated.store(true, Ordering::SeqCst);
        if abandoned > 0 {
            // What the old buffer held (by its mark) was never sent.
            fresh.count_corrupt_at_start(abandoned)?;
        }
        Ok((fresh, Some(aside)))
    }

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

    /// Adds telemetry samples; they are durable only after the next
    /// [`Buffer::flush`]. Returns whether the budget let them in.
    pub fn append(&self, samples: &[Sample]) -> Result<bool, BufferError> {
        let records: Vec<Record> = samples.iter().cloned().map(Record::Sample).collect();
        self.append_records(Class::Telemetry, &records, &[])
    }

    /// Adds records of one class and, in the same transaction, the
    /// idempotency keys of the requests they came from (see
    /// [`Buffer::seen`]). Durable after the next [`Buffer::flush`]. Returns
    /// false, writing nothing, when the class's policy refuses them at the
    /// budget. Called by one writer (the committer), so ids stay contiguous.
    pub fn append_records(
        &self,
        class: Class,
        records: &[Record],
        keys: &[Vec<u8>],
    ) -> Result<bool, BufferError> {
        let first = self.next_id.load(Ordering::SeqCst);
        // (id, bytes) for the class's tree; (key, bytes) for pending windows.
        let mut plain = Vec::with_capacity(records.len());
        let mut windowed = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let id = first + i as u64;
            // Only telemetry is pre-aggregated: windows are telemetry.
            let rule = match r {
                Record::Sample(s) if class == Class::Telemetry => {
                    aggregate::rule_for(&self.rules, &s.key)
                }
                _ => None,
            };
            match (rule, r) {
                (Some(rule), Record::Sample(s)) => {
                    let w = rule.width();
                    let end = (s.ts.div_euclid(w) + 1) * w;
                    let key = [be(end.max(0) as u64), be(id)].concat();
                    windowed.push((key, encode(&(rule.window_secs, s))?));
                    if rule.keep_raw {
                        plain.push((id, encode(r)?));
                    }
                }
                _ => plain.push((id, encode(r)?)),
            }
        }
        let chunk = (!plain.is_empty()).then(|| (be(plain[0].0), chunk_bytes(&plain)));
        let size = chunk.as_ref().map_or(0, |(k, v)| entry_bytes(k, v));
        let pending_size = windowed.iter().map(|(k, v)| entry_bytes(k, v)).sum::<u64>();
        if !self.make_room(class, size + pending_size)? {
            self.count_rejected(class, records.len() as u64)?;
            return Ok(false);
        }
        self.next_id
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        // Under the writer lock, with its counters: a seal must never take
        // a chunk whose records are not counted yet (its subtraction would
        // saturate and the count drift up).
        let _writer = lock(&self.writer);
        let tree = self.tree(class);
        if keys.is_empty() && windowed.is_empty() {
            if let Some((key, bytes)) = &chunk {
                tree.insert(key, bytes.as_slice())?;
            }
        } else {
            let now = be(dash_shared::now_micros().max(0) as u64);
            (tree, &self.idempotency, &self.pending)
                .transaction(|(s, k, p)| {
                    if let Some((key, bytes)) = &chunk {
                        s.insert(key, bytes.as_slice())?;
                    }
                    for key in keys {
                        k.insert(key.as_slice(), &now)?;
                    }
                    for (key, bytes) in &windowed {
                        p.insert(key.as_slice(), bytes.as_slice())?;
                    }
                    Ok::<_, ConflictableTransactionError<BufferError>>(())
                })
                .map_err(tx_error)?;
        }
        self.unsealed
            .fetch_add(plain.len() as u64, Ordering::SeqCst);
        self.pending_count
            .fetch_add(windowed.len() as u64, Ordering::SeqCst);
        self.bytes[class.index()].fetch_add(size, Ordering::SeqCst);
        self.bytes[PENDING].fetch_add(pending_size, Ordering::SeqCst);
        Ok(true)
    }

    fn tree(&self, class: Class) -> &sled::Tree {
        match class {
            Class::Telemetry => &self.samples,
            Class::Transactions => &self.transactions,
        }
    }

    /// Whether `size` more bytes of `class` fit the budget, after dropping
    /// what the policies allow: a `drop_oldest` class drops its own oldest
    /// records; a `reject` class is refused only when no `drop_oldest`
    /// class has anything left to drop (transactions push out telemetry,
    /// never the other way round). Nothing is dropped when dropping
    /// everything allowed would still not make room.
    fn make_room(&self, class: Class, size: u64) -> Result<bool, BufferError> {
        let max = self.budget.max_bytes;
        if max == 0 {
            return Ok(true);
        }
        let fits = |b: &Buffer| b.bytes().saturating_add(size) <= max;
        if fits(self) {
            return Ok(true);
        }
        let droppable: Vec<Class> = Class::ALL
            .into_iter()
            .filter(|c| {
                self.budget.policy(*c) == WhenFull::DropOldest
                    && (*c == class || self.budget.policy(class) == WhenFull::Reject)
            })
            .collect();
        let freeable: u64 = droppable
            .iter()
            .map(|c| self.bytes[c.index()].load(Ordering::SeqCst))
            .sum();
        if self.bytes().saturating_sub(freeable).saturating_add(size) > max {
            return Ok(false);
        }
        for c in droppable {
            while !fits(self) {
                if !self.drop_oldest(c)? {
                    break;
                }
            }
        }
        Ok(fits(self))
    }

    /// Drops the oldest unit of `class`: its oldest batch, or when none is
    /// left, its oldest unsealed chunk. Returns false when there was nothing.
    fn drop_oldest(&self, class: Class) -> Result<bool, BufferError> {
        let _writer = lock(&self.writer);
        let in_flight = lock(&self.in_flight).clone();
        for item in self.batches.iter() {
            let (k, v) = item?;
            let info = batch_info(&v)?;
            if info.class != class || in_flight.contains(&read_u64(&k)?) {
                continue;
            }
            self.lower_mark(info.records);
            let mut counts = lock(&self.counts);
            let mut next = *counts;
            next.dropped[class.index()] += info.records;
            let encoded = encode(&next)?;
            (&self.outbox, &self.batches, &self.meta)
                .transaction(|(o, b, m)| {
                    o.remove(&k)?;
                    b.remove(&k)?;
                    m.insert("counts", encoded.as_slice())?;
                    Ok::<_, ConflictableTransactionError<BufferError>>(())
                })
                .map_err(tx_error)?;
            *counts = next;
            drop(counts);
            sub(&self.bytes[class.index()], info.bytes);
            sub(&self.outbox_records, info.records);
            self.removed_done(info.records);
            tracing::warn!(
                seq = read_u64(&k)?,
                records = info.records,
                class = class.name(),
                "buffer full: oldest batch dropped"
            );
            return Ok(true);
        }
        let tree = self.tree(class);
        let Some((k, v)) = tree.first()? else {
            return Ok(false);
        };
        let records = chunk_records(&v);
        self.lower_mark(records);
        let mut counts = lock(&self.counts);
        let mut next = *counts;
        next.dropped[class.index()] += records;
        let encoded = encode(&next)?;
        (tree, &self.meta)
            .transaction(|(t, m)| {
                t.remove(&k)?;
                m.insert("counts", encoded.as_slice())?;
                Ok::<_, ConflictableTransactionError<BufferError>>(())
            })
            .map_err(tx_error)?;
        *counts = next;
        drop(counts);
        self.sub_unsealed(records);
        sub(&self.bytes[class.index()], entry_bytes(&k, &v));
        self.removed_done(records);
        tracing::warn!(
            records,
            class = class.name(),
            "buffer full: oldest unsealed records dropped"
        );
        Ok(true)
    }

    /// Changes the counts where nothing is deleted with them (a deletion
    /// writes its count in its own transaction), and stores them in `meta`.
    fn bump_counts(&self, change: impl FnOnce(&mut Counts)) -> Result<(), BufferError> {
        let mut counts = lock(&self.counts);
        change(&mut counts);
        self.meta.insert("counts", encode(&*counts)?)?;
        Ok(())
    }

    fn count_rejected(&self, class: Class, n: u64) -> Result<(), BufferError> {
        self.bump_counts(|c| c.rejected[class.index()] += n)?;
        tracing::warn!(
            records = n,
            class = class.name(),
            "buffer full: records refused (not acknowledged)"
        );
        Ok(())
    }

    fn sub_unsealed(&self, n: u64) {
        sub(&self.unsealed, n);
    }

    /// Whether a request with this idempotency key was stored already.
    pub fn seen(&self, key: &[u8]) -> Result<bool, BufferError> {
        Ok(self.idempotency.contains_key(key)?)
    }

    /// Forgets idempotency keys stored before `before` (Unix µs); returns how many.
    pub fn forget_keys(&self, before: dash_shared::Micros) -> Result<usize, BufferError> {
        let mut n = 0;
        for item in self.idempotency.iter() {
            let (k, v) = item?;
            if read_u64(&v)? < before.max(0) as u64 {
                self.idempotency.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Makes everything written so far durable. sled's own flush writes with
    /// `sync_file_range`, which survives a process crash but not a power cut
    /// (it flushes neither the drive's cache nor metadata), so the log file is
    /// fsynced as well: a Pi loses power more often than it crashes.
    pub async fn flush(&self) -> Result<(), BufferError> {
        // Taken before: a record appended during the flush may not be in it.
        let snapshot = self.mark_snapshot();
        let result = self.try_flush().await;
        self.note(&result);
        if result.is_ok() {
            self.write_mark_after_flush(snapshot);
        }
        result
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

    /// What the mark may say now: records flushed, minus everything taken
    /// out since (whether that reached the disk yet or not), so it is never
    /// more than a crash can leave behind.
    fn mark_snapshot(&self) -> (Mark, u64) {
        // In this order: a removal finishing between the reads is then
        // subtracted twice (too low, harmless), never left out.
        let removed = self.removed.load(Ordering::SeqCst);
        let removing = self.removing.load(Ordering::SeqCst);
        let held = self.held().saturating_sub(removing);
        // Seals are durable up to durable_seq; next_seq in meta may be ahead.
        let mark = Mark {
            incarnation: self.stream.incarnation,
            next_seq: self.durable_seq.load(Ordering::SeqCst) + 1,
            held,
        };
        (mark, removed)
    }

    /// Writes the mark from a snapshot taken before a flush that succeeded.
    fn write_mark_after_flush(&self, (mark, removed_then): (Mark, u64)) {
        let mut state = lock(&self.mark_state);
        let since = self
            .removed
            .load(Ordering::SeqCst)
            .saturating_sub(removed_then);
        let next = Mark {
            held: mark.held.saturating_sub(since),
            ..mark
        };
        self.store_mark(&mut state, next);
    }

    /// Before `n` records are taken out: lowers the mark first, so a crash
    /// after the removal reaches the disk never finds the mark higher than
    /// what is left. Pair with [`Buffer::removed_done`], called only after
    /// the counters behind [`Buffer::held`] dropped (until then a snapshot
    /// subtracts them as `removing`).
    fn lower_mark(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut state = lock(&self.mark_state);
        self.removing.fetch_add(n, Ordering::SeqCst);
        self.removed.fetch_add(n, Ordering::SeqCst);
        let next = Mark {
            held: state.held.saturating_sub(n),
            ..*state
        };
        self.store_mark(&mut state, next);
    }

    fn removed_done(&self, n: u64) {
        sub(&self.removing, n);
    }

    fn store_mark(&self, state: &mut Mark, next: Mark) {
        if *state == next {
            return;
        }
        *state = next;
        if let Err(e) = next.write(&self.mark) {
            tracing::debug!(error = %e, "buffer mark not written");
        }
    }

    /// Counts `n` records as corrupt, found at start (or abandoned with a
    /// buffer moved aside), flushed at once so that a crash right after
    /// does not lose the count while the mark already forgot it.
    fn count_corrupt_at_start(&self, n: u64) -> Result<(), BufferError> {
        self.bump_counts(|c| c.corrupt += n)?;
        self.db.flush()?;
        let (mark, removed) = self.mark_snapshot();
        self.write_mark_after_flush((mark, removed));
        Ok(())
    }

    /// Compares what sled recovered with the mark the last run left: a
    /// buffer that came back emptier than it was written lost records that
    /// sled's recovery cut (a flipped byte or a truncated log ends its
    /// replay there). They are counted as corrupt and reported, never lost
    /// silently.
    fn check_mark(&self) -> Result<(), BufferError> {
        let Some(mark) = Mark::read(&self.mark) else {
            return Ok(());
        };
        if mark.incarnation == self.stream.incarnation && self.next_seq() < mark.next_seq {
            // Sealed batches vanished with the log's tail. Their seqs must
            // never name other records: the aggregator may have stored them.
            tracing::error!(
                next_seq = self.next_seq(),
                marked = mark.next_seq,
                "the buffer's seq went back; it continues after the last seq sealed"
            );
            self.meta.insert("next_seq", &be(mark.next_seq))?;
        }
        let held = self.held();
        let lost = if mark.incarnation != self.stream.incarnation {
            self.recreated.store(true, Ordering::SeqCst);
            tracing::error!(
                before = mark.incarnation,
                now = self.stream.incarnation,
                records = mark.held,
                "the buffer came back as a new one: its files were lost or damaged; its records are counted as corrupt"
            );
            mark.held
        } else if held < mark.held {
            tracing::error!(
                held,
                marked_held = mark.held,
                "the buffer came back shorter than it was written (damaged files); the difference is counted as corrupt"
            );
            mark.held - held
        } else {
            return Ok(());
        };
        *lock(&self.damage) = Some(format!(
            "{lost} buffered records were lost to damaged buffer files (found at start)"
        ));
        // Counted once: the next start compares with what is held now.
        self.count_corrupt_at_start(lost)
    }

    async fn try_flush(&self) -> Result<(), BufferError> {
        // One flush at a time. sled 0.34 runs each flush_async on its I/O
        // pool and the flush waits there for log writes that need a pool
        // thread too; its pool counts a busy thread as -1 waiting, so with
        // about 4 or more flushes at once it stops adding threads and every
        // thread waits for a write none is left to do (the hang seen in the
        // buffer bench, whose baseline had 8 inputs flushing at once: 2 of
        // 2 hunts hung within 4 runs). Serialized, nothing is lost: a flush
        // makes everything written before it durable.
        let _one = self.flushing.lock().await;
        self.db.flush_async().await?;
        let log = self.log.try_clone()?;
        tokio::task::spawn_blocking(move || log.sync_data())
            .await
            .map_err(|e| BufferError::Corrupt(format!("fsync task failed: {e}")))??;
        Ok(())
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
    /// be moved aside ([`Buffer::replace_corrupt`]), not just reopened.
    pub fn is_corrupted(&self) -> bool {
        self.corrupted.load(Ordering::SeqCst)
    }

    /// Damage found when the buffer was opened, if any.
    pub fn damage(&self) -> Option<String> {
        lock(&self.damage).clone()
    }

    /// Remembers a server time (from an ack) as a floor for the clock at
    /// the next start (see [`crate::clock`]); written at most once a minute.
    pub fn remember_time(&self, server_time: Micros) {
        let last = self.clock_floor();
        if server_time > last.saturating_add(60_000_000) {
            if let Err(e) = self.meta.insert("clock_floor", &be(server_time as u64)) {
                tracing::debug!(error = %e, "could not remember the server time");
            }
        }
    }

    /// The last server time remembered; 0 when none.
    pub fn clock_floor(&self) -> Micros {
        match self.meta.get("clock_floor") {
            Ok(Some(v)) => read_u64(&v).map_or(0, |t| t as Micros),
            _ => 0,
        }
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

    /// Seals up to `max` of the oldest records of one class (the class whose
    /// oldest unsealed record is older) into the next batch and flushes.
    /// Returns the new seq, or `None` when there was nothing to seal.
    pub async fn seal(&self, max: usize) -> Result<Option<u64>, BufferError> {
        let seq = {
            let _writer = lock(&self.writer);
            match self.seal_locked(max) {
                Ok(Some(seq)) => seq,
                other => return other,
            }
        };
        self.flush().await?;
        // Only now may the batch go out: a seq on the wire must name these
        // bytes even after a crash.
        self.durable_seq.fetch_max(seq, Ordering::SeqCst);
        Ok(Some(seq))
    }

    fn seal_locked(&self, max: usize) -> Result<Option<u64>, BufferError> {
        let first_id = |t: &sled::Tree| -> Result<Option<u64>, BufferError> {
            t.first()?.map(|(k, _)| read_u64(&k)).transpose()
        };
        let class = match (first_id(&self.samples)?, first_id(&self.transactions)?) {
            (Some(t), Some(x)) if x < t => Class::Transactions,
            (None, Some(_)) => Class::Transactions,
            _ => Class::Telemetry,
        };
        let mut take = max;
        loop {
            let closed = match class {
                Class::Telemetry => self.closed_windows(take)?,
                Class::Transactions => ClosedWindows::default(),
            };
            let taken = self.oldest(class, take.saturating_sub(closed.keys.len()))?;
            if taken.records.is_empty() && taken.remove.is_empty() && closed.keys.is_empty() {
                return Ok(None);
            }
            // Folding samples into windows holds fewer records: lower the
            // mark first (by at most the samples folded).
            let folded = closed.keys.len() as u64;
            self.lower_mark(folded);
            let sealed = self.try_seal(class, &taken, &closed);
            if sealed.is_err() {
                self.removed_done(folded);
            }
            match sealed {
                Ok((seq, info)) => {
                    // Decrease first: a mark snapshot in between may count
                    // too few records, never too many.
                    self.sub_unsealed(taken.records.len() as u64);
                    sub(&self.pending_count, folded);
                    self.outbox_records
                        .fetch_add(info.records, Ordering::SeqCst);
                    let c = class.index();
                    sub(&self.bytes[c], taken.bytes);
                    sub(&self.bytes[PENDING], closed.bytes);
                    self.bytes[c].fetch_add(
                        info.bytes + taken.rewrite.as_ref().map_or(0, |(k, v)| entry_bytes(k, v)),
                        Ordering::SeqCst,
                    );
                    self.removed_done(folded);
                    if closed.unreadable > 0 {
                        self.bump_counts(|c| c.corrupt += closed.unreadable)?;
                    }
                    return Ok(Some(seq));
                }
                // Many series or long keys can make a batch too big: take fewer.
                Err(BufferError::Encode(
                    EncodeError::TooLarge { .. }
                    | EncodeError::Invalid(
                        Invalid::TooManySeries { .. } | Invalid::TooManySamples { .. },
                    ),
                )) if take > 1 => take /= 2,
                Err(e) => return Err(e),
            }
        }
    }

    /// Up to `max` pending samples whose window (plus its lateness) has
    /// closed: their keys, and the samples with their window widths.
    fn closed_windows(&self, max: usize) -> Result<ClosedWindows, BufferError> {
        let mut closed = ClosedWindows::default();
        if self.rules.is_empty() {
            return Ok(closed);
        }
        let late = self
            .rules
            .iter()
            .map(|r| Micros::from(r.late_secs))
            .max()
            .unwrap_or(0)
            * 1_000_000;
        let cutoff = (dash_shared::now_micros() - late).max(0) as u64;
        for item in self.pending.range(..be(cutoff)).take(max) {
            let (k, v) = item?;
            match postcard::from_bytes::<(u32, Sample)>(&v) {
                Ok(s) => closed.samples.push(s),
                Err(e) => {
                    closed.unreadable += 1;
                    tracing::error!(key = ?k, error = %e, "unreadable pending sample dropped (counted as corrupt)")
                }
            }
            closed.bytes += entry_bytes(&k, &v);
            closed.keys.push(k);
        }
        Ok(closed)
    }

    /// The oldest records of `class`, at most `max`: whole chunks, and the
    /// head of the chunk that does not fit (its tail is written back under
    /// the id of its first remaining record).
    fn oldest(&self, class: Class, max: usize) -> Result<Taken, BufferError> {
        let mut taken = Taken::default();
        let tree = self.tree(class);
        for item in tree.iter() {
            if taken.records.len() >= max {
                break;
            }
            let (k, v) = item?;
            let mut records = match read_chunk(&v) {
                Ok(r) => r,
                Err(e) => {
                    self.quarantine_chunk(class, &k, &v, &e)?;
                    continue;
                }
            };
            let room = max - taken.records.len();
            if records.len() > room {
                let tail = records.split_off(room);
                let first = read_u64(&k)? + room as u64;
                taken.rewrite = Some((be(first), chunk_of(&tail)?));
            }
            taken.bytes += entry_bytes(&k, &v);
            taken.remove.push(k);
            taken.records.extend(records);
        }
        Ok(taken)
    }

    /// Moves a chunk that fails its checksum or does not decode aside, so
    /// the buffer keeps going without it; counts its records.
    fn quarantine_chunk(
        &self,
        class: Class,
        key: &[u8],
        bytes: &[u8],
        e: &BufferError,
    ) -> Result<(), BufferError> {
        let tree = self.tree(class);
        let records = chunk_records(bytes);
        self.lower_mark(records);
        let mut counts = lock(&self.counts);
        let mut next = *counts;
        next.corrupt += records;
        let encoded = encode(&next)?;
        (tree, &self.quarantine, &self.meta)
            .transaction(|(s, q, m)| {
                s.remove(key)?;
                q.insert(key, bytes)?;
                m.insert("counts", encoded.as_slice())?;
                Ok::<_, ConflictableTransactionError<BufferError>>(())
            })
            .map_err(tx_error)?;
        *counts = next;
        drop(counts);
        self.sub_unsealed(records);
        sub(&self.bytes[class.index()], entry_bytes(key, bytes));
        self.removed_done(records);
        tracing::error!(
            id = read_u64(key).unwrap_or_default(),
            error = %e,
            records,
            "corrupt buffer chunk moved aside to the quarantine tree; the buffer goes on without it"
        );
        Ok(())
    }

    /// Records lost to corruption since the buffer was created.
    pub fn corrupt_records(&self) -> u64 {
        self.counts().corrupt
    }

    fn try_seal(
        &self,
        class: Class,
        taken: &Taken,
        closed: &ClosedWindows,
    ) -> Result<(u64, BatchInfo), BufferError> {
        let windows = aggregate::windows(&closed.samples);
        // Read outside the transaction: the lowest unacked seq only grows, so a
        // value read a moment early is still a valid floor.
        let lowest = self
            .outbox
            .first()?
            .map(|(k, _)| read_u64(&k))
            .transpose()?;
        let mut oldest = records_oldest(&taken.records);
        for w in &windows {
            oldest = oldest.min(
                w.windows
                    .iter()
                    .map(|w| w.start)
                    .min()
                    .unwrap_or(Micros::MAX),
            );
        }
        let trees = (
            self.tree(class),
            &self.outbox,
            &self.batches,
            &self.meta,
            &self.pending,
        );
        trees
            .transaction(|(s, o, b, m, p)| {
                let seq = match m.get("next_seq")? {
                    Some(v) => read_u64(&v).map_err(ConflictableTransactionError::Abort)?,
                    None => 1,
                };
                let floor = lowest.unwrap_or(seq);
                let mut batch = build_batch(self.stream.clone(), seq, floor, taken.records.clone());
                batch.windows = windows.clone();
                let records = batch.record_count() as u64;
                for key in &closed.keys {
                    p.remove(key)?;
                }
                let bytes = wire::encode(&Message::Batch(batch), &self.limits)
                    .map_err(|e| ConflictableTransactionError::Abort(BufferError::Encode(e)))?;
                for id in &taken.remove {
                    s.remove(id)?;
                }
                if let Some((key, bytes)) = &taken.rewrite {
                    s.insert(key, bytes.as_slice())?;
                }
                let info = BatchInfo {
                    class,
                    records,
                    bytes: entry_bytes(&be(seq), &bytes),
                    oldest: if oldest == Micros::MAX { 0 } else { oldest },
                    crc: crc32fast::hash(&bytes),
                };
                let encoded = encode(&info).map_err(ConflictableTransactionError::Abort)?;
                o.insert(&be(seq), bytes)?;
                b.insert(&be(seq), encoded)?;
                m.insert("next_seq", &be(seq + 1))?;
                Ok((seq, info))
            })
            .map_err(tx_error)
    }

    /// The oldest `limit` sealed and flushed batches in seq order, for (re)sending.
    pub fn outbox_seqs(&self, limit: usize) -> Result<Vec<u64>, BufferError> {
        self.outbox_after(0, limit)
    }

    /// Sealed and flushed batches above `after`, oldest first, at most `limit`.
    pub fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<u64>, BufferError> {
        let durable = self.durable_seq.load(Ordering::SeqCst);
        if after >= durable {
            return Ok(Vec::new());
        }
        let ghosts = lock(&self.ghosts);
        let mut out = Vec::with_capacity(limit);
        for key in self.outbox.range(be(after + 1)..=be(durable)).keys() {
            let seq = read_u64(&key?)?;
            if seq > ghosts.0 && !ghosts.1.contains(&seq) {
                out.push(seq);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The highest seq sealed durably; acks claiming more are not ours.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::SeqCst)
    }

    /// What the buffer knows about batch `seq`, if still unacked.
    pub fn batch_info(&self, seq: u64) -> Result<Option<BatchInfo>, BufferError> {
        self.batches
            .get(be(seq))?
            .map(|v| batch_info(&v))
            .transpose()
    }

    /// The encoded batch `seq`, if still unacked. A batch that fails its
    /// checksum is moved to the quarantine tree, counted, and not returned.
    pub fn batch_bytes(&self, seq: u64) -> Result<Option<sled::IVec>, BufferError> {
        self.checked_bytes(seq, false)
    }

    /// [`Buffer::batch_bytes`] for the uplink: the batch is in flight from
    /// now until it is settled or [`Buffer::not_sent`], and the budget does
    /// not drop it meanwhile (a batch both dropped and delivered would
    /// count as dropped while stored).
    pub fn take_for_sending(&self, seq: u64) -> Result<Option<sled::IVec>, BufferError> {
        self.checked_bytes(seq, true)
    }

    /// A batch taken for sending did not leave.
    pub fn not_sent(&self, seq: u64) {
        lock(&self.in_flight).remove(&seq);
    }

    /// A new connection: nothing is in flight any more. (A batch sent on
    /// the broken connection whose ack was lost may now be dropped for room
    /// although it was stored: the one case a drop count can be too high.)
    pub fn forget_in_flight(&self) {
        lock(&self.in_flight).clear();
    }

    fn checked_bytes(&self, seq: u64, sending: bool) -> Result<Option<sled::IVec>, BufferError> {
        let _writer = lock(&self.writer);
        let Some(bytes) = self.outbox.get(be(seq))? else {
            return Ok(None);
        };
        let info = self.batch_info(seq).unwrap_or(None);
        let Some(info) = info.filter(|i| crc32fast::hash(&bytes) != i.crc) else {
            if sending {
                lock(&self.in_flight).insert(seq);
            }
            return Ok(Some(bytes));
        };
        self.lower_mark(info.records);
        let mut counts = lock(&self.counts);
        let mut next = *counts;
        next.corrupt += info.records;
        let encoded = encode(&next)?;
        let aside = [b"batch".as_slice(), &be(seq)].concat();
        (&self.outbox, &self.batches, &self.quarantine, &self.meta)
            .transaction(|(o, b, q, m)| {
                o.remove(&be(seq))?;
                b.remove(&be(seq))?;
                q.insert(aside.as_slice(), bytes.clone())?;
                m.insert("counts", encoded.as_slice())?;
                Ok::<_, ConflictableTransactionError<BufferError>>(())
            })
            .map_err(tx_error)?;
        *counts = next;
        drop(counts);
        sub(&self.bytes[info.class.index()], info.bytes);
        sub(&self.outbox_records, info.records);
        self.removed_done(info.records);
        tracing::error!(
            seq,
            records = info.records,
            "corrupt batch moved aside to the quarantine tree; it is not sent"
        );
        Ok(None)
    }

    /// Drops `seq` and everything up to `through` from the outbox: the
    /// aggregator has settled them. Returns how many batches were dropped.
    pub fn settle(&self, seq: u64, through: u64) -> Result<usize, BufferError> {
        let result = self.settle_locked(seq, through);
        if let Err(e) = &result {
            // Not sent again by this run; resent once after a reopen.
            let mut ghosts = lock(&self.ghosts);
            ghosts.0 = ghosts.0.max(through);
            ghosts.1.insert(seq);
            tracing::warn!(seq, error = %e, "an acked batch could not be deleted; it is skipped until the buffer is reopened");
        }
        self.note(&result);
        result
    }

    fn settle_locked(&self, seq: u64, through: u64) -> Result<usize, BufferError> {
        let _writer = lock(&self.writer);
        {
            let mut in_flight = lock(&self.in_flight);
            in_flight.remove(&seq);
            *in_flight = in_flight.split_off(&through.saturating_add(1));
        }
        let mut keys = vec![sled::IVec::from(&be(seq))];
        for key in self.outbox.range(..=be(through)).keys() {
            keys.push(key?);
        }
        let mut n = 0;
        for key in keys {
            let Some(bytes) = self.outbox.get(&key)? else {
                continue;
            };
            // An unreadable info: the batch still goes; its bytes are known.
            let info = self.batches.get(&key)?.and_then(|v| batch_info(&v).ok());
            let (class, records, size) = info
                .map_or((Class::Telemetry, 0, entry_bytes(&key, &bytes)), |i| {
                    (i.class, i.records, i.bytes)
                });
            self.lower_mark(records);
            let removed = self.outbox.remove(&key).map(|o| o.is_some());
            let _ = self.batches.remove(&key);
            if matches!(removed, Ok(true)) {
                n += 1;
                sub(&self.bytes[class.index()], size);
                sub(&self.outbox_records, records);
            }
            // Only after the counters: see [`Buffer::lower_mark`].
            self.removed_done(records);
            removed?;
        }
        Ok(n)
    }
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
        Some(v.saturating_sub(n))
    });
}

/// `dash.mark` in the buffer's directory, outside sled, so that records
/// sled's recovery drops are noticed: never more than a crash can leave.
///
/// - After a flush it says what was held when the flush began, minus what
///   was taken out since.
/// - Before records are taken out (acked, dropped, quarantined, folded into
///   windows) it is lowered first.
/// - Written with a rename, not fsynced: after a power cut an older mark
///   may come back. If records were acked since, it says more than is held,
///   and they are counted as corrupt although they were delivered. After a
///   process crash it is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    incarnation: u64,
    next_seq: u64,
    held: u64,
}

fn mark_path(dir: &Path) -> std::path::PathBuf {
    dir.join("dash.mark")
}

impl Mark {
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = format!("{} {} {}\n", self.incarnation, self.next_seq, self.held);
        crate::replace_file(path, text.as_bytes())
    }

    fn read(path: &Path) -> Option<Mark> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut n = text.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some(Mark {
            incarnation: n.next()??,
            next_seq: n.next()??,
            held: n.next()??,
        })
    }
}

/// Records in a chunk: decoded when it decodes, else from its header
/// (which the CRC does not cover), bounded by the payload's size.
fn chunk_records(bytes: &[u8]) -> u64 {
    match read_chunk(bytes) {
        Ok(records) => records.len() as u64,
        Err(_) => u64::from(chunk_len(bytes)).min(bytes.len() as u64),
    }
}

/// Index of pending samples in [`Buffer::bytes`].
const PENDING: usize = 2;

fn batch_info(bytes: &[u8]) -> Result<BatchInfo, BufferError> {
    postcard::from_bytes(bytes).map_err(|e| BufferError::Corrupt(format!("batch info: {e}")))
}

/// The oldest timestamp among `records`; `Micros::MAX` when none.
fn records_oldest(records: &[Record]) -> Micros {
    records
        .iter()
        .map(|r| match r {
            Record::Sample(s) => s.ts,
            Record::Event(e) => e.time,
        })
        .min()
        .unwrap_or(Micros::MAX)
}

/// Pending samples whose windows closed.
#[derive(Default)]
struct ClosedWindows {
    keys: Vec<sled::IVec>,
    samples: Vec<(u32, Sample)>,
    bytes: u64,
    /// Keys whose sample did not decode (removed, counted as corrupt).
    unreadable: u64,
}

/// What a seal takes from a class's tree.
#[derive(Default)]
struct Taken {
    /// Chunks to remove.
    remove: Vec<sled::IVec>,
    /// Their key and value bytes.
    bytes: u64,
    /// The rest of a chunk taken in part: its new key and bytes.
    rewrite: Option<([u8; 8], Vec<u8>)>,
    records: Vec<Record>,
}

/// A chunk from already encoded records.
fn chunk_bytes(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    // postcard encodes a Vec as a varint length, then its items.
    let mut payload = Vec::with_capacity(10 + records.iter().map(|r| r.1.len()).sum::<usize>());
    let mut len = [0u8; 10];
    let varint = postcard::to_slice(&records.len(), &mut len).expect("a usize fits 10 bytes");
    payload.extend_from_slice(varint);
    for (_, bytes) in records {
        payload.extend_from_slice(bytes);
    }
    framed(records.len(), &payload)
}

fn chunk_of(records: &[Record]) -> Result<Vec<u8>, BufferError> {
    Ok(framed(records.len(), &encode(&records)?))
}

/// `count`, the payload's CRC-32, the payload.
fn framed(count: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Records in a chunk, from its count prefix (0 when unreadable).
fn chunk_len(bytes: &[u8]) -> u32 {
    bytes
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_chunk(bytes: &[u8]) -> Result<Vec<Record>, BufferError> {
    if bytes.len() < 8 {
        return Err(BufferError::Corrupt(format!(
            "chunk of {} bytes has no header",
            bytes.len()
        )));
    }
    let (head, payload) = bytes.split_at(8);
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if crc32fast::hash(payload) != crc {
        return Err(BufferError::Corrupt("chunk fails its checksum".into()));
    }
    let records: Vec<Record> =
        postcard::from_bytes(payload).map_err(|e| BufferError::Corrupt(e.to_string()))?;
    if records.len() != chunk_len(bytes) as usize {
        return Err(BufferError::Corrupt(format!(
            "chunk says {} records and holds {}",
            chunk_len(bytes),
            records.len()
        )));
    }
    Ok(records)
}

/// Converts a buffer of an older format, once: format 1 held one bare
/// sample per key (turned into chunks), format 2 had no batch info (it is
/// computed from each batch, whose bytes are trusted as they are).
fn upgrade(
    db: &sled::Db,
    samples: &sled::Tree,
    outbox: &sled::Tree,
    batches: &sled::Tree,
    meta: &sled::Tree,
) -> Result<(), BufferError> {
    let format = match meta.get("format")? {
        Some(v) => read_u64(&v)?,
        None if meta.get("incarnation")?.is_none() => FORMAT,
        None => 1,
    };
    if format >= FORMAT {
        if meta.get("format")?.is_none() {
            meta.insert("format", &be(FORMAT))?;
        }
        return Ok(());
    }
    let mut n = 0;
    if format < 2 {
        for item in samples.iter() {
            let (k, v) = item?;
            // Converted by a run that crashed before it could mark the format.
            if read_chunk(&v).is_ok() {
                continue;
            }
            let record = match postcard::from_bytes::<Sample>(&v) {
                Ok(s) => Record::Sample(s),
                Err(e) => {
                    tracing::error!(id = ?k, error = %e, "unreadable sample dropped while converting the buffer");
                    samples.remove(k)?;
                    continue;
                }
            };
            samples.insert(k, chunk_of(&[record])?)?;
            n += 1;
        }
    }
    let mut infos = 0;
    for item in outbox.iter() {
        let (k, v) = item?;
        let (class, records, oldest) = match wire::decode(&v, &Limits::default()) {
            Ok(Message::Batch(b)) => {
                let records: Vec<Micros> = b
                    .series
                    .iter()
                    .flat_map(|s| s.timestamps.iter().copied())
                    .chain(b.events.iter().map(|e| e.time))
                    .collect();
                // Before format 3 events came only from the HTTP input.
                let class = if b.events.is_empty() {
                    Class::Telemetry
                } else {
                    Class::Transactions
                };
                (
                    class,
                    b.record_count() as u64,
                    records.into_iter().min().unwrap_or(0),
                )
            }
            // Sent as it is; the aggregator rejects and keeps it.
            _ => (Class::Telemetry, 0, 0),
        };
        let info = BatchInfo {
            class,
            records,
            bytes: entry_bytes(&k, &v),
            oldest,
            crc: crc32fast::hash(&v),
        };
        batches.insert(&k, encode(&info)?)?;
        infos += 1;
    }
    meta.insert("format", &be(FORMAT))?;
    db.flush()?;
    tracing::info!(
        from = format,
        samples = n,
        batches = infos,
        "buffer converted to format {FORMAT}"
    );
    Ok(())
}

/// Groups samples by series into columnar blocks, in first-seen order, and
/// keeps events in order.
pub fn build_batch(stream: StreamId, seq: u64, floor: u64, records: Vec<Record>) -> Batch {
    let mut index: std::collections::HashMap<SeriesKey, usize> = std::collections::HashMap::new();
    let mut series: Vec<SeriesBlock> = Vec::new();
    let mut events = Vec::new();
    for r in records {
        let s = match r {
            Record::Sample(s) => s,
            Record::Event(e) => {
                events.push(e);
                continue;
            }
        };
        let i = *index.entry(s.key.clone()).or_insert_with(|| {
            series.push(SeriesBlock {
                key: s.key.clone(),
                timestamps: Vec::new(),
                values: Vec::new(),
            });
            series.len() - 1
        });
        series[i].timestamps.push(s.ts);
        series[i].values.push(s.value);
    }
    Batch {
        stream,
        seq,
        floor,
        series,
        windows: Vec::new(),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: i64) -> Sample {
        Sample {
            key: SeriesKey::new(format!("d{}", i % 3), "temp"),
            ts: 1_764_000_000_000_000 + i * 1_000_000,
            value: i as f64 / 10.0,
        }
    }

    /// Opens the buffer again; sled's flusher thread may hold the previous
    /// instance's lock for a moment after it is dropped.
    async fn reopen(dir: &Path) -> Buffer {
        for _ in 0..100 {
            if let Ok(b) = Buffer::open(dir) {
                return b;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Buffer::open(dir).unwrap()
    }

    fn decode(bytes: &[u8]) -> Batch {
        match wire::decode(bytes, &Limits::default()).unwrap() {
            Message::Batch(b) => b,
            other => panic!("not a batch: {other:?}"),
        }
    }

    #[tokio::test]
    async fn sealed_batches_survive_a_reopen_with_the_same_seq_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (stream, bytes) = {
            let buf = Buffer::open(dir.path()).unwrap();
            buf.append(&(0..10).map(sample).collect::<Vec<_>>())
                .unwrap();
            buf.flush().await.unwrap();
            assert_eq!(buf.seal(4).await.unwrap(), Some(1));
            (buf.stream().clone(), buf.batch_bytes(1).unwrap().unwrap())
        };
        let buf = reopen(dir.path()).await;
        assert_eq!(buf.stream(), &stream);
        assert_eq!(buf.batch_bytes(1).unwrap().unwrap(), bytes);
        assert_eq!(buf.unsealed(), 6);
        assert_eq!(buf.seal(100).await.unwrap(), Some(2));
        assert_eq!(buf.seal(100).await.unwrap(), None);
        let b2 = decode(&buf.batch_bytes(2).unwrap().unwrap());
        assert_eq!((b2.seq, b2.floor, b2.sample_count()), (2, 1, 6));
    }

    #[tokio::test]
    async fn samples_come_out_once_and_in_order_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path()).unwrap();
        let all: Vec<Sample> = (0..25).map(sample).collect();
        buf.append(&all).unwrap();
        let mut seen = Vec::new();
        while let Some(seq) = buf.seal(7).await.unwrap() {
            let b = decode(&buf.batch_bytes(seq).unwrap().unwrap());
            for block in b.series {
                for (ts, v) in block.timestamps.iter().zip(&block.values) {
                    seen.push(Sample {
                        key: block.key.clone(),
                        ts: *ts,
                        value: *v,
                    });
                }
            }
        }
        seen.sort_by_key(|s| s.ts);
        assert_eq!(seen, all);
        assert_eq!(buf.outbox_seqs(100).unwrap(), vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn settle_drops_the_acked_batch_and_everything_through() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path()).unwrap();
        buf.append(&(0..10).map(sample).collect::<Vec<_>>())
            .unwrap();
        while buf.seal(2).await.unwrap().is_some() {}
        assert_eq!(buf.settle(4, 2).unwrap(), 3);
        assert_eq!(buf.outbox_seqs(100).unwrap(), vec![3, 5]);
        // The floor of the next batch is the lowest unacked seq.
        buf.append(&[sample(99)]).unwrap();
        let seq = buf.seal(10).await.unwrap().unwrap();
        assert_eq!(decode(&buf.batch_bytes(seq).unwrap().unwrap()).floor, 3);
    }

    #[tokio::test]
    async fn a_buffer_of_bare_samples_is_converted_to_records_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an agent of protocol version 1 left behind.
            let db = sled::open(dir.path()).unwrap();
            let samples = db.open_tree("samples").unwrap();
            for i in 0..5u64 {
                let bytes = postcard::to_allocvec(&sample(i as i64)).unwrap();
                samples.insert(be(i), bytes).unwrap();
            }
            let meta = db.open_tree("meta").unwrap();
            meta.insert("incarnation", &be(42)).unwrap();
            meta.insert("next_seq", &be(1)).unwrap();
            db.flush().unwrap();
        }
        let buf = reopen(dir.path()).await;
        assert_eq!(buf.stream().incarnation, 42);
        assert_eq!(buf.unsealed(), 5);
        let seq = buf.seal(100).await.unwrap().unwrap();
        assert_eq!(
            decode(&buf.batch_bytes(seq).unwrap().unwrap()).sample_count(),
            5
        );
    }

    #[tokio::test]
    async fn events_and_idempotency_keys_are_stored_together() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path()).unwrap();
        let event = dash_shared::Event {
            source: "till-1".into(),
            time: 1_764_000_000_000_000,
            kind: "sale".into(),
            body: "{\"amount\":3.5}".into(),
        };
        let records = vec![Record::Event(event.clone()), Record::Sample(sample(1))];
        buf.append_records(Class::Transactions, &records, &[b"pos\0k1".to_vec()])
            .unwrap();
        buf.flush().await.unwrap();
        assert!(buf.seen(b"pos\0k1").unwrap());
        assert!(!buf.seen(b"pos\0k2").unwrap());
        let seq = buf.seal(100).await.unwrap().unwrap();
        let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
        assert_eq!(batch.events, vec![event]);
        assert_eq!(batch.sample_count(), 1);
        assert_eq!(buf.forget_keys(i64::MAX).unwrap(), 1);
        assert!(!buf.seen(b"pos\0k1").unwrap());
    }

    #[tokio::test]
    async fn windows_are_sealed_once_closed_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![AggregateRule {
            device: "d*".into(),
            metric: "temp".into(),
            window_secs: 60,
            keep_raw: true,
            late_secs: 2,
        }];
        let now = dash_shared::now_micros();
        let minute = 60_000_000;
        let closed_start = (now / minute - 5) * minute;
        let reading = |ts: Micros, v: f64| Sample {
            key: SeriesKey::new("d1", "temp"),
            ts,
            value: v,
        };
        let old: Vec<Sample> = (0..30)
            .map(|i| reading(closed_start + i * 4_000_000, i as f64))
            .collect();
        // A reading in the window still open is not sealed yet.
        let open = reading(now + minute, 99.0);
        {
            let buf = Buffer::open(dir.path())
                .unwrap()
                .with_aggregation(rules.clone());
            buf.append(&old).unwrap();
            buf.append(std::slice::from_ref(&open)).unwrap();
            buf.flush().await.unwrap();
        } // a restart before anything was sealed
        let buf = reopen(dir.path()).await.with_aggregation(rules);
        let seq = buf.seal(1_000).await.unwrap().unwrap();
        let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
        assert_eq!(batch.windows.len(), 1);
        let w = &batch.windows[0].windows;
        let count: u64 = w.iter().map(|w| w.count).sum();
        let sum: f64 = w.iter().map(|w| w.sum).sum();
        assert_eq!((count, sum), (30, (0..30).sum::<i64>() as f64));
        assert_eq!(w[0].start, closed_start);
        assert_eq!(
            batch.sample_count(),
            31,
            "keep_raw sends the raw samples too, the open one included"
        );
        // Sealed windows are gone from the buffer; the open one waits.
        assert_eq!(buf.seal(1_000).await.unwrap(), None);
        assert_eq!(buf.pending.len(), 1);
    }

    #[tokio::test]
    async fn a_corrupt_chunk_is_moved_aside_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path()).unwrap();
        for i in 0..3 {
            buf.append(&(i * 10..i * 10 + 10).map(sample).collect::<Vec<_>>())
                .unwrap();
        }
        // Flip a byte in the middle chunk, as a bad sector would.
        let (key, value) = buf.samples.iter().nth(1).unwrap().unwrap();
        let mut bad = value.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        buf.samples.insert(&key, bad).unwrap();
        let seq = buf.seal(1_000).await.unwrap().unwrap();
        let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
        assert_eq!(batch.sample_count(), 20, "the two good chunks are sent");
        assert_eq!(buf.corrupt_records(), 10);
        assert_eq!(buf.quarantine.len(), 1);
        assert_eq!(buf.unsealed(), 0);
        assert_eq!(buf.seal(1_000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_buffer_that_cannot_be_opened_is_moved_aside_and_a_fresh_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("conf"), b"garbage garbage garbage").unwrap();
        std::fs::write(path.join("db"), vec![0x5a; 100_000]).unwrap();
        let (buf, moved) = Buffer::open_or_recover(&path, 0).unwrap();
        let moved = moved.expect("the broken buffer was moved aside");
        assert!(
            moved.join("db").exists(),
            "its files are kept for inspection"
        );
        assert_eq!(buf.unsealed(), 0);
        buf.append(&[sample(1)]).unwrap();
        assert_eq!(buf.seal(10).await.unwrap(), Some(1));
        // A healthy buffer is opened as it is.
        drop(buf);
        let mut again = Buffer::open_or_recover(&path, 0);
        for _ in 0..100 {
            if again.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            again = Buffer::open_or_recover(&path, 0);
        }
        let (buf, moved) = again.unwrap();
        assert!(moved.is_none());
        assert_eq!(buf.unacked(), 1);
    }

    /// Every record the buffer holds, sealed or not, by value.
    fn held(buf: &Buffer) -> Vec<(Class, f64)> {
        let mut out = Vec::new();
        for class in Class::ALL {
            for item in buf.tree(class).iter() {
                let (_, v) = item.unwrap();
                for r in read_chunk(&v).unwrap() {
                    if let Record::Sample(s) = r {
                        out.push((class, s.value));
                    }
                }
            }
        }
        for item in buf.outbox.iter() {
            let (k, v) = item.unwrap();
            let class = buf
                .batch_info(read_u64(&k).unwrap())
                .unwrap()
                .unwrap()
                .class;
            for block in decode(&v).series {
                out.extend(block.values.iter().map(|v| (class, *v)));
            }
        }
        out
    }

    impl Buffer {
        /// The bytes [`Buffer::bytes`] should say, counted from the trees.
        fn recount_bytes(&self) -> u64 {
            let mut n = 0;
            for tree in [
                &self.samples,
                &self.transactions,
                &self.pending,
                &self.outbox,
            ] {
                for item in tree.iter() {
                    let (k, v) = item.unwrap();
                    n += entry_bytes(&k, &v);
                }
            }
            n
        }
    }

    fn records(class: Class, values: std::ops::Range<i64>) -> Vec<Record> {
        values
            .map(|i| {
                let mut s = sample(i);
                if class == Class::Transactions {
                    s.key = SeriesKey::new("till", "sales.amount");
                }
                Record::Sample(s)
            })
            .collect()
    }

    #[tokio::test]
    async fn at_the_budget_telemetry_drops_its_oldest_and_transactions_push_it_out_before_being_refused()
     {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            max_bytes: 6_000,
            ..Budget::default()
        };
        let buf = Buffer::open(dir.path()).unwrap().with_budget(budget);
        assert!(
            buf.append_records(
                Class::Transactions,
                &records(Class::Transactions, 0..20),
                &[]
            )
            .unwrap()
        );
        let mut next = 1_000;
        while buf.counts().dropped[0] == 0 {
            assert!(
                buf.append_records(
                    Class::Telemetry,
                    &records(Class::Telemetry, next..next + 20),
                    &[]
                )
                .unwrap()
            );
            next += 20;
            buf.seal(30).await.unwrap();
            assert!(buf.bytes() <= budget.max_bytes, "{} bytes", buf.bytes());
        }
        // Fill the last bytes with single readings, unsealed.
        while buf.bytes() < budget.max_bytes - 100 {
            assert!(buf.append(&[sample(next)]).unwrap());
            next += 1;
        }
        // Telemetry made room by dropping its own oldest; transactions stay.
        let before = held(&buf);
        let telemetry = before
            .iter()
            .filter(|(c, _)| *c == Class::Telemetry)
            .count() as u64;
        assert_eq!(telemetry + buf.counts().dropped[0], (next - 1_000) as u64);
        assert_eq!(
            before
                .iter()
                .filter(|(c, _)| *c == Class::Transactions)
                .count(),
            20
        );
        assert!(
            before.iter().any(|(_, v)| *v == (next - 1) as f64 / 10.0),
            "the newest is kept"
        );
        // A transaction pushes out telemetry; it is never pushed out itself.
        let dropped = buf.counts().dropped[0];
        assert!(
            buf.append_records(
                Class::Transactions,
                &records(Class::Transactions, 30..40),
                &[]
            )
            .unwrap()
        );
        assert!(buf.counts().dropped[0] > dropped);
        // Once no telemetry is left, transactions are refused, counted, and
        // their idempotency key is not stored.
        let key = b"pos\0k9".to_vec();
        let mut from = 100;
        let refused = loop {
            let stored = buf
                .append_records(
                    Class::Transactions,
                    &records(Class::Transactions, from..from + 10),
                    std::slice::from_ref(&key),
                )
                .unwrap();
            from += 10;
            if !stored {
                break from - 10;
            }
            assert!(buf.bytes() <= budget.max_bytes);
            buf.forget_keys(i64::MAX).unwrap();
        };
        assert_eq!(buf.counts().rejected[1], 10);
        assert!(!buf.seen(&key).unwrap());
        assert_eq!(buf.counts().dropped[1], 0);
        // Refused only when dropping all the telemetry left would not make
        // room; every telemetry record is held or counted as dropped.
        let now_held = held(&buf);
        let count = |c: Class| now_held.iter().filter(|(k, _)| *k == c).count() as u64;
        let telemetry_appended = (next - 1_000) as u64;
        assert_eq!(
            count(Class::Telemetry) + buf.counts().dropped[0],
            telemetry_appended
        );
        assert_eq!(count(Class::Transactions), 20 + 10 + (refused - 100) as u64);
        // The counts survive a restart, and the bytes are counted the same way.
        let (counts, bytes) = (buf.counts(), buf.bytes());
        buf.flush().await.unwrap();
        drop(buf);
        let buf = reopen(dir.path()).await;
        assert_eq!((buf.counts(), buf.bytes()), (counts, bytes));
        let status = buf.status().unwrap();
        assert_eq!(status.telemetry.dropped, counts.dropped[0]);
        assert_eq!(status.transactions.rejected, 10);
        assert_eq!(status.records, now_held.len() as u64);
        assert_eq!(status.transactions.dropped, 0);
    }

    #[tokio::test]
    async fn a_batch_that_fails_its_checksum_is_moved_aside_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path()).unwrap();
        buf.append(&(0..10).map(sample).collect::<Vec<_>>())
            .unwrap();
        let seq = buf.seal(100).await.unwrap().unwrap();
        let mut bytes = buf.outbox.get(be(seq)).unwrap().unwrap().to_vec();
        // A flipped bit in a value still decodes: only the checksum sees it.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        buf.outbox.insert(be(seq), bytes).unwrap();
        assert!(buf.batch_bytes(seq).unwrap().is_none());
        assert_eq!(buf.corrupt_records(), 10);
        assert_eq!(buf.unacked(), 0);
        assert_eq!(buf.bytes(), 0);
        assert_eq!(buf.quarantine.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Class, u8),
        Seal(u8),
        Ack(u8),
        Crash,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (prop_oneof![Just(Class::Telemetry), Just(Class::Transactions)], 1u8..40)
                .prop_map(|(c, n)| Op::Append(c, n)),
            2 => (1u8..60).prop_map(Op::Seal),
            2 => (1u8..4).prop_map(Op::Ack),
            1 => Just(Op::Crash),
        ]
    }

    #[tokio::test]
    async fn records_sled_lost_on_reopen_are_counted_not_silent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let buf = Buffer::open(dir.path()).unwrap();
            buf.append(&(0..10).map(sample).collect::<Vec<_>>())
                .unwrap();
            buf.flush().await.unwrap();
        }
        // What a damaged log does: sled replays less than was written.
        let mark = Mark::read(&mark_path(dir.path())).unwrap();
        assert_eq!(mark.held, 10);
        Mark { held: 25, ..mark }
            .write(&mark_path(dir.path()))
            .unwrap();
        let buf = reopen(dir.path()).await;
        assert_eq!(buf.corrupt_records(), 15);
        assert!(
            buf.damage()
                .unwrap()
                .contains("15 buffered records were lost")
        );
        // A buffer that came back as a new one counts everything it held.
        Mark {
            incarnation: 7,
            held: 40,
            ..mark
        }
        .write(&mark_path(dir.path()))
        .unwrap();
        drop(buf);
        let buf = reopen(dir.path()).await;
        assert_eq!(buf.corrupt_records(), 55);
        assert!(buf.status().unwrap().recreated);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
        /// The buffer against a reference of sets: every record acknowledged
        /// (appended and flushed) is delivered (its batch acked), held, or
        /// counted as dropped, exactly; transactions are never dropped; the
        /// budget holds; a refused append leaves nothing and is counted.
        #[test]
        fn the_buffer_keeps_or_counts_every_acknowledged_record(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let budget = Budget { max_bytes: 8_000, ..Budget::default() };
                let mut buf = Buffer::open(dir.path()).unwrap().with_budget(budget);
                let mut acked: std::collections::BTreeMap<i64, Class> = Default::default();
                let mut delivered = std::collections::BTreeSet::new();
                let mut rejected = [0u64; 2];
                let mut next = 0i64;
                for op in ops {
                    match op {
                        Op::Append(class, n) => {
                            let n = i64::from(n);
                            let stored = buf.append_records(class, &records(class, next..next + n), &[]).unwrap();
                            buf.flush().await.unwrap();
                            if stored {
                                acked.extend((next..next + n).map(|v| (v, class)));
                            } else {
                                rejected[class.index()] += n as u64;
                            }
                            next += n;
                            assert!(buf.bytes() <= budget.max_bytes);
                        }
                        Op::Seal(max) => {
                            buf.seal(usize::from(max)).await.unwrap();
                        }
                        Op::Ack(k) => {
                            for seq in buf.outbox_seqs(usize::from(k)).unwrap() {
                                let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
                                for block in batch.series {
                                    delivered.extend(block.values.iter().map(|v| (v * 10.0).round() as i64));
                                }
                                buf.settle(seq, 0).unwrap();
                            }
                        }
                        Op::Crash => {
                            drop(buf);
                            buf = reopen(dir.path()).await.with_budget(budget);
                        }
                    }
                    let held: std::collections::BTreeSet<i64> =
                        held(&buf).iter().map(|(_, v)| (v * 10.0).round() as i64).collect();
                    let counts = buf.counts();
                    for class in Class::ALL {
                        let lost = acked
                            .iter()
                            .filter(|(v, c)| **c == class && !held.contains(v) && !delivered.contains(v))
                            .count() as u64;
                        assert_eq!(lost, counts.dropped[class.index()], "{class:?}");
                        assert_eq!(rejected[class.index()], counts.rejected[class.index()]);
                    }
                    assert_eq!(counts.dropped[Class::Transactions.index()], 0);
                    assert_eq!(buf.bytes(), buf.recount_bytes(), "bytes kept in memory match the trees");
                }
            });
        }
    }
}
