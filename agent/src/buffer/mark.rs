//! The mark (`dash.mark`) and the accounting of what the buffer holds:
//! how records lost to sled's recovery are counted, never silent.

use super::*;

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
pub(super) struct Mark {
    pub(super) incarnation: u64,
    pub(super) next_seq: u64,
    pub(super) held: u64,
}

pub(super) fn mark_path(dir: &Path) -> std::path::PathBuf {
    dir.join("dash.mark")
}

impl Mark {
    pub(super) fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = format!("{} {} {}\n", self.incarnation, self.next_seq, self.held);
        crate::replace_file(path, text.as_bytes())
    }

    pub(super) fn read(path: &Path) -> Option<Mark> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut n = text.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some(Mark {
            incarnation: n.next()??,
            next_seq: n.next()??,
            held: n.next()??,
        })
    }
}

/// What one removal takes out of the counters behind [`Buffer::held`] and
/// the budget (see [`Buffer::remove`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Removal {
    /// Records leaving what the buffer holds: the mark drops by this first.
    pub(super) records: u64,
    /// Records in chunks, samples in `pending`, records in outbox batches.
    pub(super) unsealed: u64,
    pub(super) pending: u64,
    pub(super) outbox: u64,
    /// Key and value bytes, per class and [`PENDING`] (see [`Buffer::bytes`]).
    pub(super) bytes: [u64; 3],
}

impl Removal {
    /// A batch of `class` leaving the outbox.
    pub(super) fn batch(class: Class, records: u64, bytes: u64) -> Removal {
        let mut r = Removal {
            records,
            outbox: records,
            ..Removal::default()
        };
        r.bytes[class.index()] = bytes;
        r
    }

    /// An unsealed chunk of `class` leaving its tree.
    pub(super) fn chunk(class: Class, records: u64, bytes: u64) -> Removal {
        let mut r = Removal {
            records,
            unsealed: records,
            ..Removal::default()
        };
        r.bytes[class.index()] = bytes;
        r
    }
}

impl Buffer {
    /// The one way records leave the buffer (acked, dropped for room,
    /// quarantined, folded into windows by a seal), in the order that keeps
    /// the mark from ever claiming more than a crash can leave:
    ///
    /// 1. lower the mark by `removal.records` (and count them as removing);
    /// 2. `delete` them from sled;
    /// 3. lower the counters, only when the delete succeeded;
    /// 4. end the removal window, whatever happened, so a failed delete
    ///    leaves no records counted as removing.
    ///
    /// Callers hold the writer lock, so what they found to delete is still
    /// there when `delete` runs.
    pub(super) fn remove<T>(
        &self,
        removal: Removal,
        delete: impl FnOnce() -> Result<T, BufferError>,
    ) -> Result<T, BufferError> {
        self.lower_mark(removal.records);
        let deleted = delete();
        if deleted.is_ok() {
            sub(&self.unsealed, removal.unsealed);
            sub(&self.pending_count, removal.pending);
            sub(&self.outbox_records, removal.outbox);
            for (counter, n) in self.bytes.iter().zip(removal.bytes) {
                sub(counter, n);
            }
        }
        // Only after the counters: see [`Buffer::lower_mark`].
        self.removed_done(removal.records);
        deleted
    }

    /// What the mark may say now: records flushed, minus everything taken
    /// out since (whether that reached the disk yet or not), so it is never
    /// more than a crash can leave behind.
    pub(super) fn mark_snapshot(&self) -> (Mark, u64) {
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
    pub(super) fn write_mark_after_flush(&self, (mark, removed_then): (Mark, u64)) {
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
    /// subtracts them as `removing`). Only [`Buffer::remove`] calls both.
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

    pub(super) fn store_mark(&self, state: &mut Mark, next: Mark) {
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
    pub(super) fn count_corrupt_at_start(&self, n: u64) -> Result<(), BufferError> {
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
    pub(super) fn check_mark(&self) -> Result<(), BufferError> {
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
}
