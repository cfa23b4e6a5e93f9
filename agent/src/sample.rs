//! One reading, as inputs produce it and the buffer stores it.

use dash_shared::{Micros, SeriesKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub key: SeriesKey,
    pub ts: Micros,
    pub value: f64,
}
