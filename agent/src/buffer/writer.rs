//! Appending records, idempotency keys, and making them durable.

use super::*;

impl Buffer {
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
        self.append_with_sessions(class, records, keys, &[])
    }

    /// [`Buffer::append_records`] with device session changes in the same
    /// transaction (see `sessions`): refused at the budget, neither is
    /// written.
    pub fn append_with_sessions(
        &self,
        class: Class,
        records: &[Record],
        keys: &[Vec<u8>],
        ops: &[SessionOp],
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
        // Session changes alone take no room from the budget.
        if size + pending_size > 0 && !self.make_room(class, size + pending_size)? {
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
        let session_writes = sessions::plan(&self.sessions, ops)?;
        if keys.is_empty() && windowed.is_empty() && session_writes.is_empty() {
            if let Some((key, bytes)) = &chunk {
                tree.insert(key, bytes.as_slice())?;
            }
        } else {
            let now = be(dash_shared::now_micros().max(0) as u64);
            (tree, &self.idempotency, &self.pending, &self.sessions)
                .transaction(|(s, k, p, d)| {
                    if let Some((key, bytes)) = &chunk {
                        s.insert(key, bytes.as_slice())?;
                    }
                    for key in keys {
                        k.insert(key.as_slice(), &now)?;
                    }
                    for (key, bytes) in &windowed {
                        p.insert(key.as_slice(), bytes.as_slice())?;
                    }
                    for (key, value) in &session_writes {
                        match value {
                            Some(v) => d.insert(key.as_slice(), v.as_slice())?,
                            None => d.remove(key.as_slice())?,
                        };
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

    pub(super) async fn try_flush(&self) -> Result<(), BufferError> {
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
}
