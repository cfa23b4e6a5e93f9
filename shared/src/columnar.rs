//! Column packing for batches: a 1 Hz sensor costs a few bytes per sample.
//!
//! # Timestamps
//!
//! Stored in the coarsest unit (second, millisecond or microsecond) that
//! divides every timestamp of the block exactly, then as the first value,
//! the first delta and then delta-of-deltas, each a zigzag varint (postcard's
//! encoding for `i64`). A regular 1 Hz series costs one byte per sample;
//! out-of-order and late samples are fine, they only cost more bytes.
//!
//! # Values
//!
//! Sensor readings are usually short decimals (`21.53`, `1013.2`, `87`). When
//! every value of a block equals `m / 10^s` bit for bit for an integer `m`
//! below 2^53 and one scale `s <= 9`, the block stores `s` and the deltas of
//! the `m`s as zigzag varints: one or two bytes for a slowly changing sensor.
//! Otherwise (noise in the last bits, `-0.0`, huge values) it stores raw
//! IEEE-754 doubles. Both forms decode to the exact same bits: IEEE division
//! is correctly rounded, so `m as f64 / 10^s` is the double nearest to the
//! decimal, which is what the device's value was parsed to.

use serde::{Deserialize, Serialize};

use crate::Micros;

/// Largest decimal scale tried for values.
pub const MAX_SCALE: u8 = 9;
const POW10: [f64; MAX_SCALE as usize + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// Timestamps of one block as they travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedTimes {
    /// Microseconds per tick: 1, 1_000 or 1_000_000.
    pub unit: u32,
    /// First timestamp, in ticks.
    pub first: i64,
    /// First delta, then delta-of-deltas, in ticks.
    pub dod: Vec<i64>,
}

/// Values of one block as they travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PackedValues {
    /// `value[i] = m[i] / 10^scale`, stored as deltas of `m` (the first from 0).
    Decimal { scale: u8, deltas: Vec<i64> },
    /// Raw doubles.
    Float(Vec<f64>),
}

/// Why a packed column could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    #[error("timestamp unit {0} is not 1, 1000 or 1000000 microseconds")]
    BadUnit(u32),
    #[error("timestamp arithmetic overflows")]
    TimeOverflow,
    #[error("decimal scale {0} is above {MAX_SCALE}")]
    BadScale(u8),
    #[error("decimal mantissa overflows 2^53")]
    MantissaOverflow,
}

impl PackedTimes {
    /// Number of timestamps in the column.
    pub fn len(&self) -> usize {
        self.dod.len() + 1
    }

    /// Always false: a packed column holds at least its first timestamp.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl PackedValues {
    /// Number of values in the column.
    pub fn len(&self) -> usize {
        match self {
            PackedValues::Decimal { deltas, .. } => deltas.len(),
            PackedValues::Float(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Packs timestamps. `ts` must not be empty; callers validate the time window
/// first, so differences cannot overflow.
pub fn pack_times(ts: &[Micros]) -> PackedTimes {
    let unit = [1_000_000i64, 1_000]
        .into_iter()
        .find(|u| ts.iter().all(|t| t % u == 0))
        .unwrap_or(1);
    let mut dod = Vec::with_capacity(ts.len().saturating_sub(1));
    let mut prev_delta = 0i64;
    for w in ts.windows(2) {
        let delta = (w[1] - w[0]) / unit;
        dod.push(delta.wrapping_sub(prev_delta));
        prev_delta = delta;
    }
    PackedTimes {
        unit: unit as u32,
        first: ts.first().map_or(0, |t| t / unit),
        dod,
    }
}

/// Unpacks timestamps with checked arithmetic.
pub fn unpack_times(p: &PackedTimes) -> Result<Vec<Micros>, ColumnError> {
    if !matches!(p.unit, 1 | 1_000 | 1_000_000) {
        return Err(ColumnError::BadUnit(p.unit));
    }
    let unit = i64::from(p.unit);
    let mut out = Vec::with_capacity(p.len());
    let mut t = p.first;
    let mut delta = 0i64;
    out.push(t.checked_mul(unit).ok_or(ColumnError::TimeOverflow)?);
    for d in &p.dod {
        delta = delta.checked_add(*d).ok_or(ColumnError::TimeOverflow)?;
        t = t.checked_add(delta).ok_or(ColumnError::TimeOverflow)?;
        out.push(t.checked_mul(unit).ok_or(ColumnError::TimeOverflow)?);
    }
    Ok(out)
}

/// The smallest scale at which `v` is exactly `m / 10^scale`, if any.
fn decimal_scale(v: f64) -> Option<u8> {
    (0..=MAX_SCALE).find(|&s| {
        let m = (v * POW10[s as usize]).round();
        // Check through the integer, so -0.0 (which would come back as 0.0) stays raw.
        m.abs() < MAX_EXACT && ((m as i64) as f64 / POW10[s as usize]).to_bits() == v.to_bits()
    })
}

/// Packs values, as decimals when that is exact for the whole column.
pub fn pack_values(values: &[f64]) -> PackedValues {
    let scale = values
        .iter()
        .try_fold(0u8, |acc, v| decimal_scale(*v).map(|s| acc.max(s)));
    let Some(scale) = scale else {
        return PackedValues::Float(values.to_vec());
    };
    let mut deltas = Vec::with_capacity(values.len());
    let mut prev = 0i64;
    for v in values {
        let m = (v * POW10[scale as usize]).round();
        // Exactness is monotone in the scale, but check: never trade bits for bytes.
        let m = m as i64;
        if m.unsigned_abs() >= MAX_EXACT as u64
            || (m as f64 / POW10[scale as usize]).to_bits() != v.to_bits()
        {
            return PackedValues::Float(values.to_vec());
        }
        deltas.push(m - prev);
        prev = m;
    }
    PackedValues::Decimal { scale, deltas }
}

/// Unpacks values with checked arithmetic.
pub fn unpack_values(p: &PackedValues) -> Result<Vec<f64>, ColumnError> {
    match p {
        PackedValues::Float(v) => Ok(v.clone()),
        PackedValues::Decimal { scale, deltas } => {
            let div = *POW10
                .get(*scale as usize)
                .ok_or(ColumnError::BadScale(*scale))?;
            let limit = MAX_EXACT as u64;
            let mut m = 0i64;
            let mut out = Vec::with_capacity(deltas.len());
            for d in deltas {
                m = m
                    .checked_add(*d)
                    .filter(|m| m.unsigned_abs() < limit)
                    .ok_or(ColumnError::MantissaOverflow)?;
                out.push(m as f64 / div);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn regular_one_hertz_timestamps_pack_to_seconds_and_zero_dods() {
        let ts: Vec<i64> = (0..60)
            .map(|i| 1_700_000_000_000_000 + i * 1_000_000)
            .collect();
        let p = pack_times(&ts);
        assert_eq!(p.unit, 1_000_000);
        assert!(p.dod[1..].iter().all(|d| *d == 0));
        assert_eq!(unpack_times(&p).unwrap(), ts);
    }

    #[test]
    fn short_decimals_pack_as_decimal_deltas() {
        let values = [21.53, 21.5, 21.61, -3.0, 0.0, 1013.2];
        let p = pack_values(&values);
        assert!(matches!(p, PackedValues::Decimal { scale: 2, .. }), "{p:?}");
        assert_eq!(unpack_values(&p).unwrap(), values);
    }

    #[test]
    fn negative_zero_and_noisy_doubles_stay_raw() {
        for values in [vec![1.0, -0.0], vec![0.1 + 0.2], vec![1e300]] {
            let p = pack_values(&values);
            assert!(
                matches!(p, PackedValues::Float(_)),
                "{values:?} packed as {p:?}"
            );
            let back = unpack_values(&p).unwrap();
            assert!(
                back.iter()
                    .zip(&values)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    #[test]
    fn hostile_columns_fail_instead_of_overflowing() {
        let p = PackedTimes {
            unit: 1_000_000,
            first: i64::MAX / 2,
            dod: vec![],
        };
        assert_eq!(unpack_times(&p), Err(ColumnError::TimeOverflow));
        let p = PackedTimes {
            unit: 7,
            first: 0,
            dod: vec![],
        };
        assert_eq!(unpack_times(&p), Err(ColumnError::BadUnit(7)));
        let p = PackedValues::Decimal {
            scale: 0,
            deltas: vec![i64::MAX, 1],
        };
        assert_eq!(unpack_values(&p), Err(ColumnError::MantissaOverflow));
        let p = PackedValues::Decimal {
            scale: 10,
            deltas: vec![1],
        };
        assert_eq!(unpack_values(&p), Err(ColumnError::BadScale(10)));
    }

    proptest! {
        #[test]
        fn any_finite_values_round_trip_bit_for_bit(values in prop::collection::vec(any::<f64>(), 1..50)) {
            let back = unpack_values(&pack_values(&values)).unwrap();
            prop_assert_eq!(back.len(), values.len());
            for (a, b) in back.iter().zip(&values) {
                prop_assert_eq!(a.to_bits(), b.to_bits());
            }
        }

        #[test]
        fn decimal_readings_round_trip_bit_for_bit(ms in prop::collection::vec(-10_000_000i64..10_000_000, 1..50), scale in 0u8..=4) {
            let values: Vec<f64> = ms.iter().map(|m| *m as f64 / POW10[scale as usize]).collect();
            let p = pack_values(&values);
            prop_assert!(matches!(p, PackedValues::Decimal { .. }), "not decimal");
            let back = unpack_values(&p).unwrap();
            for (a, b) in back.iter().zip(&values) {
                prop_assert_eq!(a.to_bits(), b.to_bits());
            }
        }

        #[test]
        fn timestamps_in_any_order_round_trip(ts in prop::collection::vec(crate::MIN_TIMESTAMP..crate::MAX_TIMESTAMP, 1..50)) {
            prop_assert_eq!(unpack_times(&pack_times(&ts)).unwrap(), ts);
        }
    }
}
