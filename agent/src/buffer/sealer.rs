//! Sealing: the oldest records of a class (and closed windows) into one
//! encoded batch, in one transaction, flushed before it may be sent.

use super::*;

/// Pending samples whose windows closed.
#[derive(Default)]
pub(super) struct ClosedWindows {
    keys: Vec<sled::IVec>,
    samples: Vec<(u32, Sample)>,
    bytes: u64,
    /// Keys whose sample did not decode (removed, counted as corrupt).
    unreadable: u64,
}

/// What a seal takes from a class's tree.
#[derive(Default)]
pub(super) struct Taken {
    /// Chunks to remove.
    remove: Vec<sled::IVec>,
    /// Their key and value bytes.
    bytes: u64,
    /// The rest of a chunk taken in part: its new key and bytes.
    rewrite: Option<([u8; 8], Vec<u8>)>,
    records: Vec<Record>,
}

impl Buffer {
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

    pub(super) fn seal_locked(&self, max: usize) -> Result<Option<u64>, BufferError> {
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
            // Folding samples into windows holds fewer records: the mark
            // drops first by the samples folded; the records and samples
            // taken leave their counters before the batch raises its own
            // (a mark snapshot in between counts too few, never too many).
            let folded = closed.keys.len() as u64;
            let mut removal = Removal {
                records: folded,
                unsealed: taken.records.len() as u64,
                pending: folded,
                ..Removal::default()
            };
            removal.bytes[class.index()] = taken.bytes;
            removal.bytes[PENDING] = closed.bytes;
            match self.remove(removal, || self.try_seal(class, &taken, &closed)) {
                Ok((seq, info)) => {
                    self.outbox_records
                        .fetch_add(info.records, Ordering::SeqCst);
                    self.bytes[class.index()].fetch_add(
                        info.bytes + taken.rewrite.as_ref().map_or(0, |(k, v)| entry_bytes(k, v)),
                        Ordering::SeqCst,
                    );
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
    pub(super) fn closed_windows(&self, max: usize) -> Result<ClosedWindows, BufferError> {
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
    pub(super) fn oldest(&self, class: Class, max: usize) -> Result<Taken, BufferError> {
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
    pub(super) fn quarantine_chunk(
        &self,
        class: Class,
        key: &[u8],
        bytes: &[u8],
        e: &BufferError,
    ) -> Result<(), BufferError> {
        let tree = self.tree(class);
        let records = chunk_records(bytes);
        let removal = Removal::chunk(class, records, entry_bytes(key, bytes));
        self.remove(removal, || {
            self.counted(
                |c| c.corrupt += records,
                |encoded| {
                    (tree, &self.quarantine, &self.meta)
                        .transaction(|(s, q, m)| {
                            s.remove(key)?;
                            q.insert(key, bytes)?;
                            m.insert("counts", encoded)?;
                            Ok::<_, ConflictableTransactionError<BufferError>>(())
                        })
                        .map_err(tx_error)
                },
            )
        })?;
        tracing::error!(
            id = read_u64(key).unwrap_or_default(),
            error = %e,
            records,
            "corrupt buffer chunk moved aside to the quarantine tree; the buffer goes on without it"
        );
        Ok(())
    }

    pub(super) fn try_seal(
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
}
