//! The disk budget: making room by each class's policy, counting drops
//! and refusals.

use super::*;

impl Buffer {
    /// Whether `size` more bytes of `class` fit the budget, after dropping
    /// what the policies allow: a `drop_oldest` class drops its own oldest
    /// records; a `reject` class is refused only when no `drop_oldest`
    /// class has anything left to drop (transactions push out telemetry,
    /// never the other way round). Nothing is dropped when dropping
    /// everything allowed would still not make room.
    pub(super) fn make_room(&self, class: Class, size: u64) -> Result<bool, BufferError> {
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
    pub(super) fn drop_oldest(&self, class: Class) -> Result<bool, BufferError> {
        let _writer = lock(&self.writer);
        let in_flight = lock(&self.in_flight).clone();
        for item in self.batches.iter() {
            let (k, v) = item?;
            let info = batch_info(&v)?;
            if info.class != class || in_flight.contains(&read_u64(&k)?) {
                continue;
            }
            let removal = Removal::batch(class, info.records, info.bytes);
            self.remove(removal, || {
                self.counted(
                    |c| c.dropped[class.index()] += info.records,
                    |encoded| {
                        (&self.outbox, &self.batches, &self.meta)
                            .transaction(|(o, b, m)| {
                                o.remove(&k)?;
                                b.remove(&k)?;
                                m.insert("counts", encoded)?;
                                Ok::<_, ConflictableTransactionError<BufferError>>(())
                            })
                            .map_err(tx_error)
                    },
                )
            })?;
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
        let removal = Removal::chunk(class, records, entry_bytes(&k, &v));
        self.remove(removal, || {
            self.counted(
                |c| c.dropped[class.index()] += records,
                |encoded| {
                    (tree, &self.meta)
                        .transaction(|(t, m)| {
                            t.remove(&k)?;
                            m.insert("counts", encoded)?;
                            Ok::<_, ConflictableTransactionError<BufferError>>(())
                        })
                        .map_err(tx_error)
                },
            )
        })?;
        tracing::warn!(
            records,
            class = class.name(),
            "buffer full: oldest unsealed records dropped"
        );
        Ok(true)
    }

    /// Changes the counts in the same transaction as a deletion: `write`
    /// gets the encoded new counts to store in `meta`; the counts in memory
    /// change only when it succeeded.
    pub(super) fn counted(
        &self,
        change: impl FnOnce(&mut Counts),
        write: impl FnOnce(&[u8]) -> Result<(), BufferError>,
    ) -> Result<(), BufferError> {
        let mut counts = lock(&self.counts);
        let mut next = *counts;
        change(&mut next);
        write(&encode(&next)?)?;
        *counts = next;
        Ok(())
    }

    /// Changes the counts where nothing is deleted with them (a deletion
    /// writes its count in its own transaction), and stores them in `meta`.
    pub(super) fn bump_counts(&self, change: impl FnOnce(&mut Counts)) -> Result<(), BufferError> {
        let mut counts = lock(&self.counts);
        change(&mut counts);
        self.meta.insert("counts", encode(&*counts)?)?;
        Ok(())
    }

    pub(super) fn count_rejected(&self, class: Class, n: u64) -> Result<(), BufferError> {
        self.bump_counts(|c| c.rejected[class.index()] += n)?;
        tracing::warn!(
            records = n,
            class = class.name(),
            "buffer full: records refused (not acknowledged)"
        );
        Ok(())
    }
}
