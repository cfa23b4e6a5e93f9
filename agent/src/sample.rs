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

/// A class of data, with its own policy when the buffer is full and its
/// own batches (a batch never mixes classes, so dropping telemetry never
/// takes a transaction with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    /// Readings from MQTT devices and Modbus (and pre-aggregated windows).
    Telemetry,
    /// Records from the HTTP input: sales and other transactions.
    Transactions,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Telemetry, Class::Transactions];

    pub fn index(self) -> usize {
        match self {
            Class::Telemetry => 0,
            Class::Transactions => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Telemetry => "telemetry",
            Class::Transactions => "transactions",
        }
    }
}
