//! Converting a buffer of an older format, once, on open.

use super::*;

/// Converts a buffer of an older format, once: format 1 held one bare
/// sample per key (turned into chunks), format 2 had no batch info (it is
/// computed from each batch, whose bytes are trusted as they are).
pub(super) fn upgrade(
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
