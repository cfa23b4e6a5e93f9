//! The durable store-and-forward buffer, on sled.
//!
//! # Layout
//!
//! ```text
//! samples: u64 BE id  -> chunk                 unsealed samples and events, oldest first:
//!                                              one chunk per group commit, `u32 BE count`,
//!                                              `u32 BE crc32` of the rest, then
//!                                              postcard(Vec<Record>); the key is the id of
//!                                              its first record
//! quarantine: u64 BE id -> chunk               chunks that failed their checksum or did not
//!                                              decode, moved aside (never sent, kept for
//!                                              inspection)
//! outbox:  u64 BE seq -> encoded wire::Batch   sealed, sent or not, not yet acked
//! meta:    "incarnation" -> u64 BE             drawn once, when the buffer is created
//!          "next_seq"    -> u64 BE             the seq the next sealed batch gets
//!          "format"      -> u64 BE             2: chunks of records (a buffer of version 1
//!                                              held one bare sample per key; it is converted
//!                                              on open)
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
//! - Sealing moves the oldest samples into one encoded batch in a single
//!   transaction (samples removed, batch added, `next_seq` bumped) and is
//!   flushed before the batch may be sent. So a seq, once on the wire, always
//!   names the same bytes, even across crashes: the aggregator's dedupe by seq
//!   can never swallow different samples.
//! - A batch leaves the outbox only when the aggregator acks it (committed,
//!   duplicate or rejected). Deleting needs no flush: a deletion lost in a
//!   crash only causes a resend, which the aggregator acks as a duplicate.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use dash_shared::wire::{self, EncodeError, Invalid, Limits};
use dash_shared::{Batch, Message, Micros, SeriesBlock, SeriesKey, StreamId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::aggregate::{self, AggregateRule};
use crate::sample::{Record, Sample};

/// sled's page cache: enough for the hot tail of the buffer.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

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

/// The buffer. Cheap to share behind an `Arc`.
pub struct Buffer {
    db: sled::Db,
    /// sled's log file, fsynced after each flush (see [`Buffer::flush`]).
    log: std::fs::File,
    samples: sled::Tree,
    outbox: sled::Tree,
    meta: sled::Tree,
    idempotency: sled::Tree,
    pending: sled::Tree,
    quarantine: sled::Tree,
    corrupt: AtomicU64,
    rules: Vec<AggregateRule>,
    stream: StreamId,
    limits: Limits,
    next_id: AtomicU64,
    unsealed: AtomicU64,
    /// The highest seq whose seal is on disk. Only batches up to it may be sent.
    durable_seq: AtomicU64,
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
        let outbox = db.open_tree("outbox")?;
        let meta = db.open_tree("meta")?;
        let idempotency = db.open_tree("idempotency")?;
        let pending = db.open_tree("pending")?;
        let quarantine = db.open_tree("quarantine")?;
        upgrade(&db, &samples, &meta)?;
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
        // Ids stay unique: past every chunk's records and every pending sample.
        let mut next_id = match samples.last()? {
            Some((k, v)) => read_u64(&k)? + u64::from(chunk_len(&v)),
            None => 0,
        };
        for key in pending.iter().keys() {
            let key = key?;
            if key.len() == 16 {
                next_id = next_id.max(read_u64(&key[8..])? + 1);
            }
        }
        let mut unsealed = 0u64;
        for value in samples.iter().values() {
            unsealed += u64::from(chunk_len(&value?));
        }
        // Everything recovered from disk is durable.
        let durable_seq = match outbox.last()? {
            Some((k, _)) => read_u64(&k)?,
            None => 0,
        };
        let log = std::fs::File::open(dir.join("db"))?;
        Ok(Buffer {
            db,
            log,
            samples,
            outbox,
            meta,
            idempotency,
            pending,
            quarantine,
            corrupt: AtomicU64::new(0),
            rules: Vec::new(),
            stream: StreamId {
                name: TELEMETRY.into(),
                incarnation,
            },
            limits: Limits::default(),
            next_id: AtomicU64::new(next_id),
            unsealed: AtomicU64::new(unsealed),
            durable_seq: AtomicU64::new(durable_seq),
        })
    }

    /// Opens the buffer in `dir`; if it is corrupt beyond opening, moves it
    /// aside (to `dir` + `.corrupt-` + Unix seconds, kept for inspection)
    /// with an ERROR log and starts a fresh one, so a damaged disk never
    /// keeps the agent in a crash loop. Returns where the old one went.
    /// Other errors (a lock held by another running agent, permissions) are
    /// returned as they are.
    pub fn open_or_recover(
        dir: &Path,
    ) -> Result<(Buffer, Option<std::path::PathBuf>), BufferError> {
        match Buffer::open(dir) {
            Ok(b) => Ok((b, None)),
            Err(
                e @ (BufferError::Corrupt(_) | BufferError::Sled(sled::Error::Corruption { .. })),
            ) => {
                let secs = dash_shared::now_micros() / 1_000_000;
                let mut aside = dir.as_os_str().to_owned();
                aside.push(format!(".corrupt-{secs}"));
                let aside = std::path::PathBuf::from(aside);
                std::fs::rename(dir, &aside)?;
                tracing::error!(
                    error = %e,
                    moved_to = %aside.display(),
                    "the buffer could not be opened and was moved aside; starting a fresh one (records in it were not sent)"
                );
                Ok((Buffer::open(dir)?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    /// Pre-aggregates the series these rules match (see [`crate::aggregate`]).
    pub fn with_aggregation(mut self, rules: Vec<AggregateRule>) -> Self {
        self.rules = rules;
        self
    }

    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Adds samples; they are durable only after the next [`Buffer::flush`].
    /// Called by one writer (the committer), so ids stay contiguous.
    pub fn append(&self, samples: &[Sample]) -> Result<(), BufferError> {
        let records: Vec<Record> = samples.iter().cloned().map(Record::Sample).collect();
        self.append_records(&records, &[])
    }

    /// Adds records and, in the same transaction, the idempotency keys of
    /// the requests they came from (see [`Buffer::seen`]). Durable after the
    /// next [`Buffer::flush`].
    pub fn append_records(&self, records: &[Record], keys: &[Vec<u8>]) -> Result<(), BufferError> {
        let first = self
            .next_id
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        // (id, bytes) for the samples tree; (key, bytes) for pending windows.
        let mut plain = Vec::with_capacity(records.len());
        let mut windowed = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let id = first + i as u64;
            let rule = match r {
                Record::Sample(s) => aggregate::rule_for(&self.rules, &s.key),
                Record::Event(_) => None,
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
        let stored = plain.len() as u64;
        let chunk = (!plain.is_empty()).then(|| (be(plain[0].0), chunk_bytes(&plain)));
        if keys.is_empty() && windowed.is_empty() {
            if let Some((key, bytes)) = chunk {
                self.samples.insert(key, bytes)?;
            }
        } else {
            let now = be(dash_shared::now_micros().max(0) as u64);
            let result =
                (&self.samples, &self.idempotency, &self.pending).transaction(|(s, k, p)| {
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
                });
            result.map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => BufferError::Sled(e),
            })?;
        }
        self.unsealed.fetch_add(stored, Ordering::SeqCst);
        Ok(())
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
        self.db.flush_async().await?;
        let log = self.log.try_clone()?;
        tokio::task::spawn_blocking(move || log.sync_data())
            .await
            .map_err(|e| BufferError::Corrupt(format!("fsync task failed: {e}")))??;
        Ok(())
    }

    /// Samples not yet sealed into a batch.
    pub fn unsealed(&self) -> u64 {
        self.unsealed.load(Ordering::SeqCst)
    }

    /// Sealed batches not yet acked.
    pub fn unacked(&self) -> u64 {
        self.outbox.len() as u64
    }

    /// Seals up to `max` of the oldest samples into the next batch and flushes.
    /// Returns the new seq, or `None` when there was nothing to seal.
    pub async fn seal(&self, max: usize) -> Result<Option<u64>, BufferError> {
        let mut take = max;
        loop {
            let closed = self.closed_windows(take)?;
            let taken = self.oldest(take.saturating_sub(closed.0.len()))?;
            if taken.records.is_empty() && taken.remove.is_empty() && closed.0.is_empty() {
                return Ok(None);
            }
            let n = taken.records.len() as u64;
            match self.try_seal(&taken, &closed) {
                Ok(seq) => {
                    let _ = self
                        .unsealed
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                            Some(u.saturating_sub(n))
                        });
                    self.flush().await?;
                    // Only now may the batch go out: a seq on the wire must
                    // name these bytes even after a crash.
                    self.durable_seq.fetch_max(seq, Ordering::SeqCst);
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
        let (mut keys, mut samples) = (Vec::new(), Vec::new());
        if self.rules.is_empty() {
            return Ok((keys, samples));
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
                Ok(s) => samples.push(s),
                Err(e) => {
                    tracing::error!(key = ?k, error = %e, "unreadable pending sample dropped")
                }
            }
            keys.push(k);
        }
        Ok((keys, samples))
    }

    /// The oldest records, at most `max`: whole chunks, and the head of
    /// the chunk that does not fit (its tail is written back under the id
    /// of its first remaining record).
    fn oldest(&self, max: usize) -> Result<Taken, BufferError> {
        let mut taken = Taken::default();
        for item in self.samples.iter() {
            if taken.records.len() >= max {
                break;
            }
            let (k, v) = item?;
            let mut records = match read_chunk(&v) {
                Ok(r) => r,
                Err(e) => {
                    self.quarantine_chunk(&k, &v, &e)?;
                    continue;
                }
            };
            let room = max - taken.records.len();
            if records.len() > room {
                let tail = records.split_off(room);
                let first = read_u64(&k)? + room as u64;
                taken.rewrite = Some((be(first), chunk_of(&tail)?));
            }
            taken.remove.push(k);
            taken.records.extend(records);
        }
        Ok(taken)
    }

    /// Moves a chunk that fails its checksum or does not decode aside, so
    /// the buffer keeps going without it; counts it.
    fn quarantine_chunk(
        &self,
        key: &[u8],
        bytes: &[u8],
        e: &BufferError,
    ) -> Result<(), BufferError> {
        let result = (&self.samples, &self.quarantine).transaction(|(s, q)| {
            s.remove(key)?;
            q.insert(key, bytes)?;
            Ok::<_, ConflictableTransactionError<BufferError>>(())
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => BufferError::Sled(e),
        })?;
        let records = u64::from(chunk_len(bytes));
        let _ = self
            .unsealed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(records))
            });
        self.corrupt.fetch_add(1, Ordering::SeqCst);
        tracing::error!(
            id = read_u64(key).unwrap_or_default(),
            error = %e,
            records,
            "corrupt buffer chunk moved aside to the quarantine tree; the buffer goes on without it"
        );
        Ok(())
    }

    /// Chunks moved aside as corrupt since the buffer was opened.
    pub fn corrupt_chunks(&self) -> u64 {
        self.corrupt.load(Ordering::SeqCst)
    }

    fn try_seal(&self, taken: &Taken, closed: &ClosedWindows) -> Result<u64, BufferError> {
        let windows = aggregate::windows(&closed.1);
        // Read outside the transaction: the lowest unacked seq only grows, so a
        // value read a moment early is still a valid floor.
        let lowest = self
            .outbox
            .first()?
            .map(|(k, _)| read_u64(&k))
            .transpose()?;
        let trees = (&self.samples, &self.outbox, &self.meta, &self.pending);
        let result = trees.transaction(|(s, o, m, p)| {
            let seq = match m.get("next_seq")? {
                Some(v) => read_u64(&v).map_err(ConflictableTransactionError::Abort)?,
                None => 1,
            };
            let floor = lowest.unwrap_or(seq);
            let mut batch = build_batch(self.stream.clone(), seq, floor, taken.records.clone());
            batch.windows = windows.clone();
            for key in &closed.0 {
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
            o.insert(&be(seq), bytes)?;
            m.insert("next_seq", &be(seq + 1))?;
            Ok(seq)
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => BufferError::Sled(e),
        })
    }

    /// The oldest `limit` sealed and flushed batches in seq order, for (re)sending.
    pub fn outbox_seqs(&self, limit: usize) -> Result<Vec<u64>, BufferError> {
        let durable = self.durable_seq.load(Ordering::SeqCst);
        let keys = self.outbox.range(..=be(durable)).keys();
        keys.take(limit).map(|k| read_u64(&k?)).collect()
    }

    /// The highest seq sealed durably; acks claiming more are not ours.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::SeqCst)
    }

    /// The encoded batch `seq`, if still unacked.
    pub fn batch_bytes(&self, seq: u64) -> Result<Option<sled::IVec>, BufferError> {
        Ok(self.outbox.get(be(seq))?)
    }

    /// Drops `seq` and everything up to `through` from the outbox: the
    /// aggregator has settled them. Returns how many batches were dropped.
    pub fn settle(&self, seq: u64, through: u64) -> Result<usize, BufferError> {
        let mut n = usize::from(self.outbox.remove(be(seq))?.is_some());
        for key in self.outbox.range(..=be(through)).keys() {
            n += usize::from(self.outbox.remove(key?)?.is_some());
        }
        Ok(n)
    }
}

/// Keys and `(width, sample)`s of pending samples whose windows closed.
type ClosedWindows = (Vec<sled::IVec>, Vec<(u32, Sample)>);

/// What a seal takes from the samples tree.
#[derive(Default)]
struct Taken {
    /// Chunks to remove.
    remove: Vec<sled::IVec>,
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

/// Converts a buffer of format 1 (one bare sample per key) to chunks, once.
fn upgrade(db: &sled::Db, samples: &sled::Tree, meta: &sled::Tree) -> Result<(), BufferError> {
    if meta.get("format")?.is_some() {
        return Ok(());
    }
    let mut n = 0;
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
    meta.insert("format", &be(2))?;
    db.flush()?;
    if n > 0 {
        tracing::info!(samples = n, "buffer converted to format 2");
    }
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
        buf.append_records(&records, &[b"pos\0k1".to_vec()])
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
        assert_eq!(buf.corrupt_chunks(), 1);
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
        let (buf, moved) = Buffer::open_or_recover(&path).unwrap();
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
        let mut again = Buffer::open_or_recover(&path);
        for _ in 0..100 {
            if again.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            again = Buffer::open_or_recover(&path);
        }
        let (buf, moved) = again.unwrap();
        assert!(moved.is_none());
        assert_eq!(buf.unacked(), 1);
    }
}
