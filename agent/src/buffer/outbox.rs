//! The outbox: what is sent, checked against its CRC before it goes, and
//! settled when the aggregator acks.

use super::*;

impl Buffer {
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

    pub(super) fn checked_bytes(
        &self,
        seq: u64,
        sending: bool,
    ) -> Result<Option<sled::IVec>, BufferError> {
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
        let aside = [b"batch".as_slice(), &be(seq)].concat();
        let removal = Removal::batch(info.class, info.records, info.bytes);
        self.remove(removal, || {
            self.counted(
                |c| c.corrupt += info.records,
                |encoded| {
                    (&self.outbox, &self.batches, &self.quarantine, &self.meta)
                        .transaction(|(o, b, q, m)| {
                            o.remove(&be(seq))?;
                            b.remove(&be(seq))?;
                            q.insert(aside.as_slice(), bytes.clone())?;
                            m.insert("counts", encoded)?;
                            Ok::<_, ConflictableTransactionError<BufferError>>(())
                        })
                        .map_err(tx_error)
                },
            )
        })?;
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

    pub(super) fn settle_locked(&self, seq: u64, through: u64) -> Result<usize, BufferError> {
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
            self.remove(Removal::batch(class, records, size), || {
                self.outbox.remove(&key)?;
                let _ = self.batches.remove(&key);
                Ok(())
            })?;
            n += 1;
        }
        Ok(n)
    }
}
