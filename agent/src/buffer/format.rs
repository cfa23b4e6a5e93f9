//! The bytes the buffer stores: keys, chunks (count, CRC-32, postcard
//! records), batch info, and the helpers every part uses.

use super::*;

/// The buffer format this build writes.
pub(super) const FORMAT: u64 = 3;

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, BufferError> {
    postcard::to_allocvec(v).map_err(|e| BufferError::Corrupt(e.to_string()))
}

pub(super) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn read_u64(bytes: &[u8]) -> Result<u64, BufferError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| BufferError::Corrupt(format!("{} bytes where 8 belong", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

pub(super) fn tx_error(e: TransactionError<BufferError>) -> BufferError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => BufferError::Sled(e),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

pub(super) fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
        Some(v.saturating_sub(n))
    });
}

/// Records in a chunk: decoded when it decodes, else from its header
/// (which the CRC does not cover), bounded by the payload's size.
pub(super) fn chunk_records(bytes: &[u8]) -> u64 {
    match read_chunk(bytes) {
        Ok(records) => records.len() as u64,
        Err(_) => u64::from(chunk_len(bytes)).min(bytes.len() as u64),
    }
}

/// Index of pending samples in [`Buffer::bytes`].
pub(super) const PENDING: usize = 2;

pub(super) fn batch_info(bytes: &[u8]) -> Result<BatchInfo, BufferError> {
    postcard::from_bytes(bytes).map_err(|e| BufferError::Corrupt(format!("batch info: {e}")))
}

/// The oldest timestamp among `records`; `Micros::MAX` when none.
pub(super) fn records_oldest(records: &[Record]) -> Micros {
    records
        .iter()
        .map(|r| match r {
            Record::Sample(s) => s.ts,
            Record::Event(e) => e.time,
        })
        .min()
        .unwrap_or(Micros::MAX)
}

/// A chunk from already encoded records.
pub(super) fn chunk_bytes(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
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

pub(super) fn chunk_of(records: &[Record]) -> Result<Vec<u8>, BufferError> {
    Ok(framed(records.len(), &encode(&records)?))
}

/// `count`, the payload's CRC-32, the payload.
pub(super) fn framed(count: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Records in a chunk, from its count prefix (0 when unreadable).
pub(super) fn chunk_len(bytes: &[u8]) -> u32 {
    bytes
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

pub(super) fn read_chunk(bytes: &[u8]) -> Result<Vec<Record>, BufferError> {
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
