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

impl From<Sample> for Record {
    fn from(s: Sample) -> Record {
        Record::Sample(s)
    }
}
