//! Dash's wire protocol, shared by `dash-agent` and `dash-aggregator`.
//!
//! This crate does no IO. It defines:
//!
//! - [`topic`]: the MQTT topic scheme. Tenant and agent are part of every
//!   topic, so the broker's ACLs and the aggregator both see who is talking:
//!   `dash/v1/{tenant}/{agent}/{batch|ack|status}`.
//! - [`series`]: a series key (device + metric + sorted tags) and its limits.
//! - [`wire`]: the versioned envelope and its messages ([`wire::Batch`],
//!   [`wire::Ack`], [`wire::AgentStatus`]), encoded with postcard.
//! - [`columnar`]: how a batch's columns are packed: timestamps as
//!   delta-of-delta varints in the coarsest exact unit, values as scaled
//!   decimal deltas when that is exact, raw IEEE-754 otherwise.
//!
//! # Invariants
//!
//! - [`wire::decode`] never panics and never allocates more than a small
//!   multiple of its input: every count, length and timestamp is checked
//!   against [`wire::Limits`], and a typed [`wire::DecodeError`] says what
//!   was wrong.
//! - Encoding is exact: `decode(encode(m)) == m` bit for bit, including every
//!   `f64` value.
//! - Time is UTC microseconds since the Unix epoch ([`Micros`]) everywhere.

#![forbid(unsafe_code)]

pub mod columnar;
pub mod events;
pub mod series;
pub mod topic;
pub mod wire;

pub use series::SeriesKey;
pub use topic::{AgentId, TenantId, TopicKind};
pub use wire::{
    Ack, AckOutcome, AgentStatus, Batch, BufferStatus, ClassCounts, ClockStatus, DecodeError,
    DeviceStatus, Event, Limits, Message, SeriesBlock, StreamId, Window, WindowBlock,
};

/// UTC time in microseconds since 1970-01-01T00:00:00Z, PostgreSQL's own resolution.
pub type Micros = i64;

/// Microseconds in one second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// The earliest timestamp any Dash component accepts: 2000-01-01T00:00:00Z.
///
/// A gateway without a real-time clock boots in 1970; its samples must be
/// rejected loudly, not stored.
pub const MIN_TIMESTAMP: Micros = 946_684_800 * MICROS_PER_SEC;

/// The first timestamp no Dash component accepts: 2100-01-01T00:00:00Z.
pub const MAX_TIMESTAMP: Micros = 4_102_444_800 * MICROS_PER_SEC;

/// The current wall-clock time as [`Micros`].
pub fn now_micros() -> Micros {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}
