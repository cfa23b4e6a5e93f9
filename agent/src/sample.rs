//! What inputs produce and the buffer stores: readings and events.

use dash_shared::{Event, Micros, SeriesKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub key: SeriesKey,
    pub ts: Micros,
    pub value: f64,
}

/// One buffered record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Sample(Sample),
    Event(Event),
}

impl Record {
    /// Whether the protocol accepts the record: one that it refuses would
    /// stop every batch it is sealed into.
    pub fn validate(&self, limits: &dash_shared::Limits) -> Result<(), dash_shared::wire::Invalid> {
        match self {
            Record::Sample(s) => dash_shared::wire::validate_reading(&s.key, s.ts, s.value, limits),
            Record::Event(e) => dash_shared::wire::validate_event(e, limits),
        }
    }
}
