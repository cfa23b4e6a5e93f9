//! The versioned envelope and the messages it carries.
//!
//! # Layout
//!
//! ```text
//! +------+------+---------+-------------------------------+
//! | 'D'  | 'S'  | version | postcard(WireMessage)          |
//! +------+------+---------+-------------------------------+
//!   magic (2)    u8 = 1..3  the rest, no trailing bytes
//! ```
//!
//! The version byte comes before anything version-specific, so a reader
//! rejects a newer protocol with [`DecodeError::UnsupportedVersion`] instead
//! of misreading it. Version 2 adds pre-aggregated windows and events to
//! batches. A writer uses the lowest version that can carry a message (a
//! batch of plain samples and an ack are still version 1), so
//! agents and aggregators can be upgraded in either order until windows or
//! events are used; a reader takes all. Version 3 adds buffer, clock and
//! fault details to the agent's status; only the status is written as
//! version 3, so an older aggregator still stores every batch and only
//! refuses the status (`unsupported_version`).
//!
//! # Delivery
//!
//! A [`Batch`] is numbered per stream: `(stream name, incarnation, seq)`. The
//! incarnation is a random number the agent draws when it creates its buffer,
//! so a buffer that is lost and started afresh never reuses a sequence number
//! the aggregator has already seen. `floor` is the lowest seq the agent still
//! holds: everything below it is settled and will never be sent again, which
//! lets the aggregator keep its dedupe ledger at one row per stream.
//!
//! An [`Ack`] is sent only after the batch is committed (or found to be a
//! duplicate, or rejected for good); it carries the server's clock.

use serde::{Deserialize, Serialize};

use crate::columnar::{self, ColumnError, PackedTimes, PackedValues};
use crate::series::{SeriesKey, SeriesKeyError};
use crate::{MAX_TIMESTAMP, MIN_TIMESTAMP, Micros};

/// First two bytes of every Dash message.
pub const MAGIC: [u8; 2] = *b"DS";
/// The newest protocol version this crate reads and writes.
pub const PROTOCOL_VERSION: u8 = 4;
/// The oldest version this crate still reads (and writes when enough).
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Longest event body (JSON text), in bytes.
pub const MAX_EVENT_BODY: usize = 64 * 1024;
/// Longest event source or kind, in bytes.
pub const MAX_EVENT_NAME: usize = 128;
/// Widest pre-aggregated window, in seconds: it must divide this, so a
/// window never straddles an hour or a local day in any time zone (all UTC
/// offsets are whole quarter hours).
pub const MAX_WINDOW_SECS: u32 = 900;
const HEADER_LEN: usize = 3;
/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 32;
/// Longest free-text field (a rejection reason, a version string), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Most faults one status lists.
pub const MAX_FAULTS: usize = 16;
/// Most refusal reasons one status counts.
pub const MAX_REFUSAL_REASONS: usize = 32;
/// Longest refusal reason name, in bytes.
pub const MAX_REASON_NAME: usize = 64;

/// Bounds a decoder enforces. Both sides use the same defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message, in bytes.
    pub max_message_bytes: usize,
    /// Most series blocks in one batch.
    pub max_series: usize,
    /// Most samples in one batch, over all series.
    pub max_samples: usize,
    /// Earliest accepted timestamp (inclusive).
    pub min_timestamp: Micros,
    /// Latest accepted timestamp (exclusive).
    pub max_timestamp: Micros,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            max_series: 10_000,
            max_samples: 200_000,
            min_timestamp: MIN_TIMESTAMP,
            max_timestamp: MAX_TIMESTAMP,
        }
    }
}

/// One stream of batches from one agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamId {
    /// What the stream carries, e.g. `telemetry`.
    pub name: String,
    /// Drawn at random when the agent's buffer is created.
    pub incarnation: u64,
}

/// Samples of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesBlock {
    pub key: SeriesKey,
    /// Any order; duplicates allowed.
    pub timestamps: Vec<Micros>,
    /// Same length as `timestamps`; finite.
    pub values: Vec<f64>,
}

/// A numbered group of samples from one agent stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub stream: StreamId,
    /// Starts at 1, grows by one per batch.
    pub seq: u64,
    /// The lowest seq the agent still holds; all below are settled.
    pub floor: u64,
    pub series: Vec<SeriesBlock>,
    /// Pre-aggregated windows (protocol version 2).
    pub windows: Vec<WindowBlock>,
    /// Events (protocol version 2).
    pub events: Vec<Event>,
}

/// Aggregates of one series over fixed windows, computed at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBlock {
    pub key: SeriesKey,
    /// Window width in seconds; divides [`MAX_WINDOW_SECS`].
    pub width_secs: u32,
    pub windows: Vec<Window>,
}

/// Count, sum, min, max, first and last of the samples in
/// `[start, start + width)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// A multiple of the width (Unix µs).
    pub start: Micros,
    /// At least 1.
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The earliest sample's value and its time as µs after `start`.
    pub first: f64,
    pub first_offset: u32,
    /// The latest sample's value and its time as µs after `start`.
    pub last: f64,
    pub last_offset: u32,
}

/// A non-numeric record: a POS transaction, a device error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What produced it (a device, a till).
    pub source: String,
    pub time: Micros,
    /// What it is, e.g. `sale` or `fault`.
    pub kind: String,
    /// A JSON object, as text.
    pub body: String,
}

impl Batch {
    /// A batch of samples only.
    pub fn samples(stream: StreamId, seq: u64, floor: u64, series: Vec<SeriesBlock>) -> Batch {
        Batch {
            stream,
            seq,
            floor,
            series,
            windows: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Samples over all series.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|b| b.timestamps.len()).sum()
    }

    /// Samples, windows and events: what counts against
    /// [`Limits::max_samples`].
    pub fn record_count(&self) -> usize {
        self.sample_count()
            + self.windows.iter().map(|w| w.windows.len()).sum::<usize>()
            + self.events.len()
    }
}

/// What the aggregator did with a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Stored now, in one transaction with the ledger entry.
    Committed { samples: u64 },
    /// Stored before; nothing written this time.
    Duplicate,
    /// Can never be stored (the reason says why); the agent must not resend it.
    Rejected { reason: String },
}

/// The aggregator's answer to a batch, sent after commit. An ack with seq 0
/// answers a status message instead: it carries only the server's clock, so
/// an agent whose clock is wrong learns the time before it sends a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub stream: StreamId,
    pub seq: u64,
    pub outcome: AckOutcome,
    /// Every seq up to this one is settled for the stream.
    pub committed_through: u64,
    /// The aggregator's clock when it acked.
    pub server_time: Micros,
}

/// An agent's health, published retained on its status topic (protocol
/// version 4 when it carries device refusals, else 3; an older status is
/// read with the fields it lacks at zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// False in the last-will message the broker sends when the agent vanishes.
    pub online: bool,
    /// The agent's version.
    pub version: String,
    /// The agent's clock when it wrote this.
    pub time: Micros,
    pub buffer: BufferStatus,
    pub clock: ClockStatus,
    /// Faults the agent is living with now (a full or read-only disk, a
    /// buffer started afresh), each a short sentence; empty when healthy.
    pub faults: Vec<String>,
    /// What the agent's device listener refused (version 4).
    #[serde(default)]
    pub devices: DeviceStatus,
}

/// The device listener, as [`AgentStatus`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Refusals since the agent started, by reason (`payload_too_large`,
    /// `topic_not_mapped`, `malformed`, ...).
    pub refused: std::collections::BTreeMap<String, u64>,
}

/// The status of protocol version 3.
#[derive(Serialize, Deserialize)]
struct AgentStatusV3 {
    online: bool,
    version: String,
    time: Micros,
    buffer: BufferStatus,
    clock: ClockStatus,
    faults: Vec<String>,
}

impl From<AgentStatusV3> for AgentStatus {
    fn from(s: AgentStatusV3) -> Self {
        AgentStatus {
            online: s.online,
            version: s.version,
            time: s.time,
            buffer: s.buffer,
            clock: s.clock,
            faults: s.faults,
            devices: DeviceStatus::default(),
        }
    }
}

impl From<&AgentStatus> for AgentStatusV3 {
    fn from(s: &AgentStatus) -> Self {
        AgentStatusV3 {
            online: s.online,
            version: s.version.clone(),
            time: s.time,
            buffer: s.buffer.clone(),
            clock: s.clock,
            faults: s.faults.clone(),
        }
    }
}

/// The agent's buffer, as [`AgentStatus`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferStatus {
    /// Records (samples, events, samples waiting for their window) held,
    /// sealed or not, until the aggregator acks them.
    pub records: u64,
    /// Bytes those records take, as stored.
    pub bytes: u64,
    /// The disk budget (`buffer.max_bytes`); 0: none.
    pub budget_bytes: u64,
    /// Timestamp of the oldest record held; 0 when empty.
    pub oldest: Micros,
    /// Batches sealed and sent or waiting, not yet acked.
    pub unacked_batches: u64,
    /// Counts for telemetry (MQTT devices, Modbus).
    pub telemetry: ClassCounts,
    /// Counts for transactions (the HTTP input).
    pub transactions: ClassCounts,
    /// Records inputs refused: bad payloads, keys or timestamps.
    pub invalid_records: u64,
    /// Records lost to corruption on disk (moved to quarantine).
    pub corrupt_records: u64,
    /// The buffer could not be opened and was moved aside at start.
    pub recreated: bool,
    /// Bytes of the buffer's files on disk: sled's log holds several times
    /// `bytes` (see the README).
    pub disk_bytes: u64,
}

/// What a full buffer did to one class of data, counted since the buffer
/// was created (the counts survive restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// Acknowledged records deleted, oldest first, to make room (`drop_oldest`).
    pub dropped: u64,
    /// Refusals at the input, never acknowledged (`reject`), in records; a
    /// record retried and refused again counts again.
    pub rejected: u64,
}

/// What the agent knows about its clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStatus {
    /// An ack's server time has been seen since the agent started, or the
    /// local clock was plausible from the start.
    pub trusted: bool,
    /// Server time minus local time, from the latest ack, in µs.
    pub offset: Micros,
    /// MQTT publishes, Modbus polls and HTTP requests handled while the
    /// agent's clock was not trusted (their readings may carry its time).
    pub unsynced_stamps: u64,
}

/// The status of protocol versions 1 and 2.
#[derive(Serialize, Deserialize)]
struct AgentStatusV1 {
    online: bool,
    version: String,
    time: Micros,
    buffered_samples: u64,
    unacked_batches: u64,
    rejected_samples: u64,
}

impl From<AgentStatusV1> for AgentStatus {
    fn from(s: AgentStatusV1) -> Self {
        AgentStatus {
            online: s.online,
            version: s.version,
            time: s.time,
            buffer: BufferStatus {
                records: s.buffered_samples,
                unacked_batches: s.unacked_batches,
                invalid_records: s.rejected_samples,
                ..BufferStatus::default()
            },
            ..AgentStatus::default()
        }
    }
}

/// Anything that travels inside the envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Batch(Batch),
    Ack(Ack),
    Status(AgentStatus),
}

/// A message that breaks the protocol's rules, whichever side noticed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("stream name {0:?} is empty, too long or has control characters")]
    StreamName(String),
    #[error("seq {seq} is invalid (must be >= 1 and >= floor {floor})")]
    Seq { seq: u64, floor: u64 },
    #[error("batch has {count} series, more than the limit of {max}")]
    TooManySeries { count: usize, max: usize },
    #[error("batch has {count} samples, more than the limit of {max}")]
    TooManySamples { count: usize, max: usize },
    #[error("series {index} has a bad key: {source}")]
    SeriesKey {
        index: usize,
        source: SeriesKeyError,
    },
    #[error("series {index} has no samples")]
    EmptySeries { index: usize },
    #[error("series {index} has {timestamps} timestamps but {values} values")]
    LengthMismatch {
        index: usize,
        timestamps: usize,
        values: usize,
    },
    #[error(
        "series {index} has timestamp {ts} µs, outside [{min}, {max}) (a clock from 1970 or far in the future?)"
    )]
    TimestampOutOfRange {
        index: usize,
        ts: Micros,
        min: Micros,
        max: Micros,
    },
    #[error("series {index} has a NaN or infinite value")]
    NonFiniteValue { index: usize },
    #[error("series {index} has a corrupt column: {source}")]
    Column { index: usize, source: ColumnError },
    #[error("text field is {0} bytes, more than the limit of {MAX_TEXT_LEN}")]
    TextTooLong(usize),
    #[error("status lists {0} faults, more than {MAX_FAULTS}")]
    TooManyFaults(usize),
    #[error("status counts {0} refusal reasons, more than {MAX_REFUSAL_REASONS}")]
    TooManyReasons(usize),
    #[error(
        "refusal reason {0:?} is empty, longer than {MAX_REASON_NAME} bytes or not snake_case ASCII"
    )]
    ReasonName(String),
    #[error("window series {index}: {reason}")]
    Window { index: usize, reason: String },
    #[error("event {index}: {reason}")]
    Event { index: usize, reason: String },
}

/// Why bytes could not be read as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message is {0} bytes, shorter than the 3-byte header")]
    TooShort(usize),
    #[error("message does not start with the Dash magic bytes")]
    BadMagic,
    #[error("protocol version {0} is not supported (this build reads version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    #[error("message body is malformed: {0}")]
    Malformed(String),
    #[error("message has {0} trailing bytes after its body")]
    TrailingBytes(usize),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Why a message could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "encoded message is {len} bytes, more than the limit of {max}; send fewer samples per batch"
    )]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("postcard could not serialize the message: {0}")]
    Serialize(String),
}

#[derive(Serialize, Deserialize)]
enum WireMessage {
    Batch(WireBatch),
    Ack(Ack),
    Status(AgentStatusV1),
}

/// Version 2: batches gain windows and events.
#[derive(Serialize, Deserialize)]
enum WireMessageV2 {
    Batch(WireBatchV2),
    Ack(Ack),
    Status(AgentStatusV1),
}

/// Version 3: the status gains buffer, clock and fault details.
#[derive(Serialize, Deserialize)]
enum WireMessageV3 {
    Batch(WireBatchV2),
    Ack(Ack),
    Status(AgentStatusV3),
}

/// Version 4: the status gains the device listener's refusals.
#[derive(Serialize, Deserialize)]
enum WireMessageV4 {
    Batch(WireBatchV2),
    Ack(Ack),
    Status(AgentStatus),
}

#[derive(Serialize, Deserialize)]
struct WireBatch {
    stream: StreamId,
    seq: u64,
    floor: u64,
    series: Vec<WireBlock>,
}

#[derive(Serialize, Deserialize)]
struct WireBatchV2 {
    stream: StreamId,
    seq: u64,
    floor: u64,
    series: Vec<WireBlock>,
    windows: Vec<WireWindows>,
    events: Vec<Event>,
}

/// Windows of one series, column by column.
#[derive(Serialize, Deserialize)]
struct WireWindows {
    key: SeriesKey,
    width_secs: u32,
    starts: PackedTimes,
    counts: Vec<u64>,
    sums: PackedValues,
    mins: PackedValues,
    maxs: PackedValues,
    firsts: PackedValues,
    first_offsets: Vec<u32>,
    lasts: PackedValues,
    last_offsets: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct WireBlock {
    key: SeriesKey,
    times: PackedTimes,
    values: PackedValues,
}

/// Validates and encodes a message into its envelope.
pub fn encode(msg: &Message, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
    validate(msg, limits)?;
    let blocks = |series: &[SeriesBlock]| -> Vec<WireBlock> {
        series
            .iter()
            .map(|s| WireBlock {
                key: s.key.clone(),
                times: columnar::pack_times(&s.timestamps),
                values: columnar::pack_values(&s.values),
            })
            .collect()
    };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    let serialized = match msg {
        Message::Batch(b) if !b.windows.is_empty() || !b.events.is_empty() => {
            out.push(2);
            let wire = WireMessageV2::Batch(WireBatchV2 {
                stream: b.stream.clone(),
                seq: b.seq,
                floor: b.floor,
                series: blocks(&b.series),
                windows: b.windows.iter().map(pack_windows).collect(),
                events: b.events.clone(),
            });
            postcard::to_extend(&wire, out)
        }
        Message::Status(st) if st.devices == DeviceStatus::default() => {
            out.push(3);
            postcard::to_extend(&WireMessageV3::Status(st.into()), out)
        }
        Message::Status(st) => {
            out.push(4);
            postcard::to_extend(&WireMessageV4::Status(st.clone()), out)
        }
        other => {
            out.push(PROTOCOL_VERSION_MIN);
            let wire = match other {
                Message::Batch(b) => WireMessage::Batch(WireBatch {
                    stream: b.stream.clone(),
                    seq: b.seq,
                    floor: b.floor,
                    series: blocks(&b.series),
                }),
                Message::Ack(a) => WireMessage::Ack(a.clone()),
                Message::Status(_) => unreachable!("a status is written as version 3 or 4"),
            };
            postcard::to_extend(&wire, out)
        }
    };
    let out = serialized.map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if out.len() > limits.max_message_bytes {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            max: limits.max_message_bytes,
        });
    }
    Ok(out)
}

/// Decodes and validates one message. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: limits.max_message_bytes,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let body = &bytes[HEADER_LEN..];
    let malformed = |e: postcard::Error| DecodeError::Malformed(e.to_string());
    let (msg, rest) = match bytes[2] {
        1 => {
            let (wire, rest): (WireMessage, _) =
                postcard::take_from_bytes(body).map_err(malformed)?;
            let msg = match wire {
                WireMessage::Batch(b) => {
                    let b = WireBatchV2 {
                        stream: b.stream,
                        seq: b.seq,
                        floor: b.floor,
                        series: b.series,
                        windows: Vec::new(),
                        events: Vec::new(),
                    };
                    Message::Batch(unpack_batch(b, limits)?)
                }
                WireMessage::Ack(a) => Message::Ack(a),
                WireMessage::Status(s) => Message::Status(s.into()),
            };
            (msg, rest)
        }
        2 => {
            let (wire, rest): (WireMessageV2, _) =
                postcard::take_from_bytes(body).map_err(malformed)?;
            let msg = match wire {
                WireMessageV2::Batch(b) => Message::Batch(unpack_batch(b, limits)?),
                WireMessageV2::Ack(a) => Message::Ack(a),
                WireMessageV2::Status(s) => Message::Status(s.into()),
            };
            (msg, rest)
        }
        3 => {
            let (wire, rest): (WireMessageV3, _) =
                postcard::take_from_bytes(body).map_err(malformed)?;
            let msg = match wire {
                WireMessageV3::Batch(b) => Message::Batch(unpack_batch(b, limits)?),
                WireMessageV3::Ack(a) => Message::Ack(a),
                WireMessageV3::Status(s) => Message::Status(s.into()),
            };
            (msg, rest)
        }
        4 => {
            let (wire, rest): (WireMessageV4, _) =
                postcard::take_from_bytes(body).map_err(malformed)?;
            let msg = match wire {
                WireMessageV4::Batch(b) => Message::Batch(unpack_batch(b, limits)?),
                WireMessageV4::Ack(a) => Message::Ack(a),
                WireMessageV4::Status(s) => Message::Status(s),
            };
            (msg, rest)
        }
        v => return Err(DecodeError::UnsupportedVersion(v)),
    };
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    validate(&msg, limits)?;
    Ok(msg)
}

/// The stream and seq of a batch that may fail to decode as a whole, so the
/// aggregator can still answer it with a rejection. `None` when even that
/// much is unreadable.
pub fn peek_batch_id(bytes: &[u8]) -> Option<(StreamId, u64)> {
    #[derive(Deserialize)]
    struct Head {
        stream: StreamId,
        seq: u64,
    }
    if bytes.len() < HEADER_LEN
        || bytes[..2] != MAGIC
        || !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&bytes[2])
    {
        return None;
    }
    let (variant, rest): (u32, _) = postcard::take_from_bytes(&bytes[HEADER_LEN..]).ok()?;
    if variant != 0 {
        return None; // Batch is variant 0 in every version.
    }
    let (head, _): (Head, _) = postcard::take_from_bytes(rest).ok()?;
    (head.seq > 0 && check_stream(&head.stream).is_ok()).then_some((head.stream, head.seq))
}

impl DecodeError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooShort(_) => "too_short",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

fn unpack_batch(b: WireBatchV2, limits: &Limits) -> Result<Batch, Invalid> {
    // Count before unpacking, so a hostile batch cannot make us allocate.
    let packed: usize = b.series.iter().map(|s| s.times.len()).sum::<usize>()
        + b.windows.iter().map(|w| w.starts.len()).sum::<usize>()
        + b.events.len();
    check_counts(b.series.len() + b.windows.len(), packed, limits)?;
    let series = b
        .series
        .into_iter()
        .enumerate()
        .map(|(index, s)| {
            let column = |source| Invalid::Column { index, source };
            Ok(SeriesBlock {
                key: s.key,
                timestamps: columnar::unpack_times(&s.times).map_err(column)?,
                values: columnar::unpack_values(&s.values).map_err(column)?,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    let windows = b
        .windows
        .into_iter()
        .enumerate()
        .map(|(index, w)| unpack_windows(index, w))
        .collect::<Result<_, Invalid>>()?;
    Ok(Batch {
        stream: b.stream,
        seq: b.seq,
        floor: b.floor,
        series,
        windows,
        events: b.events,
    })
}

fn pack_windows(b: &WindowBlock) -> WireWindows {
    let col =
        |f: fn(&Window) -> f64| columnar::pack_values(&b.windows.iter().map(f).collect::<Vec<_>>());
    WireWindows {
        key: b.key.clone(),
        width_secs: b.width_secs,
        starts: columnar::pack_times(&b.windows.iter().map(|w| w.start).collect::<Vec<_>>()),
        counts: b.windows.iter().map(|w| w.count).collect(),
        sums: col(|w| w.sum),
        mins: col(|w| w.min),
        maxs: col(|w| w.max),
        firsts: col(|w| w.first),
        first_offsets: b.windows.iter().map(|w| w.first_offset).collect(),
        lasts: col(|w| w.last),
        last_offsets: b.windows.iter().map(|w| w.last_offset).collect(),
    }
}

fn unpack_windows(index: usize, w: WireWindows) -> Result<WindowBlock, Invalid> {
    let column = |source| Invalid::Column { index, source };
    let starts = columnar::unpack_times(&w.starts).map_err(column)?;
    let n = starts.len();
    let values = |p: &PackedValues| -> Result<Vec<f64>, Invalid> {
        let v = columnar::unpack_values(p).map_err(column)?;
        if v.len() != n {
            return Err(Invalid::Window {
                index,
                reason: format!("a column has {} values for {n} windows", v.len()),
            });
        }
        Ok(v)
    };
    let (sums, mins, maxs, firsts, lasts) = (
        values(&w.sums)?,
        values(&w.mins)?,
        values(&w.maxs)?,
        values(&w.firsts)?,
        values(&w.lasts)?,
    );
    if w.counts.len() != n || w.first_offsets.len() != n || w.last_offsets.len() != n {
        return Err(Invalid::Window {
            index,
            reason: format!("count or offset columns do not have {n} entries"),
        });
    }
    let windows = (0..n)
        .map(|i| Window {
            start: starts[i],
            count: w.counts[i],
            sum: sums[i],
            min: mins[i],
            max: maxs[i],
            first: firsts[i],
            first_offset: w.first_offsets[i],
            last: lasts[i],
            last_offset: w.last_offsets[i],
        })
        .collect();
    Ok(WindowBlock {
        key: w.key,
        width_secs: w.width_secs,
        windows,
    })
}

#[cfg(test)]
mod tests;
mod validate;

use validate::check_counts;
use validate::check_stream;
pub use validate::{validate, validate_event, validate_reading};
