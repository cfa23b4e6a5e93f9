//! Tier-aware queries: one or more series over `[from, to)`, folded into
//! steps with an aggregate.
//!
//! # Which tier answers
//!
//! The range is cut into segments, each answered by one tier:
//!
//! - Where raw data is still kept, every step bucket is exact. The coarsest
//!   tier whose buckets fit inside the step buckets answers the aligned middle
//!   (daily rollups for steps of whole tenant-local days, hourly rollups when
//!   every step boundary is a UTC hour), and finer tiers answer the partial
//!   hours or days at the edges, down to raw samples.
//! - Where raw data has expired (older than `retention.raw_days`), hourly
//!   rollups answer, each bucket counted in the step holding its start; where
//!   hourly data has expired too, daily rollups. A 5-minute step over a range
//!   reaching back a month therefore returns 5-minute points for the last week
//!   and hourly points before it. The segments used are part of the answer.
//!
//! Every tier is read as partial aggregates (count, sum, min, max, first,
//! last) and merged per step bucket, so segments stitch without double
//! counting: avg is the sum over the count, not an average of averages.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use dash_shared::Micros;
use serde::Serialize;
use sqlx::PgPool;

use crate::storage::read;
use crate::storage::retention::Horizons;
use crate::storage::tiers::{Partial, day_of, hour_of};

const HOUR: Micros = 3_600 * 1_000_000;
const DAY: Micros = 24 * HOUR;

/// Most step buckets one query may ask for.
pub const MAX_POINTS: i64 = 20_000;
/// Most series one query may return.
pub const MAX_SERIES: usize = 200;

pub use crate::storage::read::Tier;

/// The width of a step bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fixed width in µs, aligned to the Unix epoch (UTC).
    Fixed(Micros),
    /// Whole days of the tenant's zone (23 or 25 hours across DST), counted
    /// from the local day holding `from`.
    Days(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

impl Agg {
    pub fn value(self, p: &Partial) -> f64 {
        match self {
            Agg::Avg => p.sum / p.count as f64,
            Agg::Min => p.min,
            Agg::Max => p.max,
            Agg::Sum => p.sum,
            Agg::Count => p.count as f64,
            Agg::Last => p.last.1,
        }
    }
}

/// Part of the range read from one tier: raw samples with a time in
/// `[from, to)`, or rollup buckets starting in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub tier: Tier,
    pub from: Micros,
    pub to: Micros,
}

/// Step buckets of one query.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    step: Step,
    tz: Tz,
    /// Local date of `from` (for day steps).
    origin: NaiveDate,
}

impl Buckets {
    pub fn new(step: Step, tz: Tz, from: Micros) -> Buckets {
        let origin = DateTime::from_timestamp_micros(from)
            .unwrap_or_default()
            .with_timezone(&tz)
            .date_naive();
        Buckets { step, tz, origin }
    }

    /// Start of the step bucket holding `t`.
    pub fn start_of(&self, t: Micros) -> Micros {
        match self.step {
            Step::Fixed(w) => t.div_euclid(w) * w,
            Step::Days(n) => {
                let date = DateTime::from_timestamp_micros(t)
                    .unwrap_or_default()
                    .with_timezone(&self.tz)
                    .date_naive();
                let k = (date - self.origin).num_days().div_euclid(i64::from(n));
                local_midnight(self.origin, self.tz, k * i64::from(n))
            }
        }
    }

    /// Start of the next step bucket after the one starting at `start`.
    fn next(&self, start: Micros) -> Micros {
        match self.step {
            Step::Fixed(w) => start + w,
            Step::Days(n) => {
                // The first local midnight at least n days (minus a DST hour) later.
                let mut t = start + i64::from(n) * DAY - HOUR;
                while self.start_of(t) == start {
                    t += HOUR;
                }
                self.start_of(t)
            }
        }
    }

    /// Whether every step boundary in `[from, to]` is a UTC hour, so that
    /// hourly buckets never straddle two steps.
    fn hour_aligned(&self, from: Micros, to: Micros) -> bool {
        match self.step {
            Step::Fixed(w) => w % HOUR == 0,
            Step::Days(_) => {
                let mut b = self.start_of(from);
                while b <= to {
                    if b % HOUR != 0 {
                        return false;
                    }
                    b = self.next(b);
                }
                true
            }
        }
    }
}

/// UTC µs of the local day `days` after `date` in `tz`.
pub fn local_midnight(date: NaiveDate, tz: Tz, days: i64) -> Micros {
    let date = if days >= 0 {
        date + chrono::Days::new(days as u64)
    } else {
        date - chrono::Days::new(days.unsigned_abs())
    };
    let noon = tz
        .from_local_datetime(&date.and_time(NaiveTime::from_hms_opt(12, 0, 0).expect("noon")))
        .earliest()
        .map_or_else(|| date.and_time(NaiveTime::MIN).and_utc(), |t| t.to_utc());
    day_of(noon.timestamp_micros(), tz)
}

fn ceil_to(t: Micros, floor: impl Fn(Micros) -> Micros, next: impl Fn(Micros) -> Micros) -> Micros {
    let f = floor(t);
    if f == t { t } else { next(f) }
}

/// The first local midnight at or after `t`.
fn ceil_day(t: Micros, tz: Tz) -> Micros {
    ceil_to(
        t,
        |t| day_of(t, tz),
        |d| {
            let mut n = d + 22 * HOUR;
            while day_of(n, tz) == d {
                n += HOUR;
            }
            day_of(n, tz)
        },
    )
}

fn ceil_hour(t: Micros) -> Micros {
    ceil_to(t, hour_of, |h| h + HOUR)
}

/// Cuts `[from, to)` into segments, each read from one tier (see the module
/// documentation).
pub fn plan(from: Micros, to: Micros, buckets: &Buckets, h: &Horizons) -> Vec<Segment> {
    let tz = buckets.tz;
    let mut out = Vec::new();
    if from >= to {
        return out;
    }
    // Where each tier's data begins, on that tier's bucket boundaries.
    let hourly_from = h.hourly.map(|t| ceil_day(t, tz));
    let raw_from = h.raw.map(ceil_hour);
    let d_end = hourly_from.map_or(from, |t| t.clamp(from, to));
    let h_end = raw_from.map_or(d_end, |t| t.clamp(d_end, to));
    if from < d_end {
        out.push(Segment {
            tier: Tier::Daily,
            from: day_of(from, tz),
            to: d_end,
        });
    }
    let days = matches!(buckets.step, Step::Days(_));
    let hours = buckets.hour_aligned(from, to);
    if d_end < h_end {
        let coarse: &[Tier] = if days { &[Tier::Daily] } else { &[] };
        exact(d_end, h_end, coarse, Tier::Hourly, tz, &mut out);
    }
    if h_end < to {
        let coarse: &[Tier] = match (days, hours) {
            (true, true) => &[Tier::Daily, Tier::Hourly],
            (true, false) => &[Tier::Daily],
            (false, true) => &[Tier::Hourly],
            (false, false) => &[],
        };
        exact(h_end, to, coarse, Tier::Raw, tz, &mut out);
    }
    out
}

/// `[a, b)` from the coarsest of `coarse` that has whole buckets in it, the
/// edges recursively from the finer ones, and the rest from `base`.
fn exact(a: Micros, b: Micros, coarse: &[Tier], base: Tier, tz: Tz, out: &mut Vec<Segment>) {
    if a >= b {
        return;
    }
    for (i, tier) in coarse.iter().enumerate() {
        let (lo, hi) = match tier {
            Tier::Daily => (ceil_day(a, tz), day_of(b, tz)),
            Tier::Hourly => (ceil_hour(a), hour_of(b)),
            Tier::Raw => continue,
        };
        if lo < hi {
            exact(a, lo, &coarse[i + 1..], base, tz, out);
            out.push(Segment {
                tier: *tier,
                from: lo,
                to: hi,
            });
            exact(hi, b, &coarse[i + 1..], base, tz, out);
            return;
        }
    }
    out.push(Segment {
        tier: base,
        from: a,
        to: b,
    });
}

/// Per series: step bucket start -> aggregates.
pub type Folded = HashMap<i64, BTreeMap<Micros, Partial>>;

/// Reads the segments for `series` (ids of `tenant`) and folds them into
/// step buckets.
pub async fn fold(
    pool: &PgPool,
    tenant: &str,
    series: &[i64],
    segments: &[Segment],
    buckets: &Buckets,
) -> sqlx::Result<Folded> {
    let mut out = Folded::new();
    for seg in segments {
        let add = |id: i64, at: Micros, p: &Partial| {
            out.entry(id)
                .or_default()
                .entry(buckets.start_of(at))
                .and_modify(|q| q.merge(p))
                .or_insert(*p);
        };
        read::partials(pool, tenant, series, seg.tier, (seg.from, seg.to), add).await?;
    }
    Ok(out)
}

/// A step for about `points` buckets over `range` µs, rounded up to a
/// readable width.
pub fn auto_step(range: Micros, points: i64) -> Step {
    const NICE: [i64; 16] = [
        1, 5, 10, 15, 30, 60, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600, 43_200, 86_400,
    ];
    let want = (range / points.max(1)).max(1_000_000);
    match NICE.iter().find(|s| **s * 1_000_000 >= want) {
        Some(s) if *s < 86_400 => Step::Fixed(s * 1_000_000),
        _ => Step::Days(((want + DAY - 1) / DAY).max(1) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Micros = 1_780_000_000_000_000; // 2026-05-28T20:26:40Z

    fn forever() -> Horizons {
        Horizons {
            raw: None,
            hourly: None,
            daily: None,
            events: None,
        }
    }

    fn covers(segments: &[Segment], from: Micros, to: Micros) {
        assert_eq!(segments.first().unwrap().from, from, "{segments:?}");
        assert_eq!(segments.last().unwrap().to, to, "{segments:?}");
        for w in segments.windows(2) {
            assert_eq!(w[0].to, w[1].from, "gap or overlap: {segments:?}");
        }
    }

    #[test]
    fn an_hourly_step_reads_whole_hours_from_rollups_and_the_edges_raw() {
        let b = Buckets::new(Step::Fixed(HOUR), Tz::UTC, T);
        let s = plan(T, T + 10 * HOUR, &b, &forever());
        covers(&s, T, T + 10 * HOUR);
        let tiers: Vec<Tier> = s.iter().map(|s| s.tier).collect();
        assert_eq!(tiers, [Tier::Raw, Tier::Hourly, Tier::Raw]);
        assert_eq!(s[1].from % HOUR, 0);
    }

    #[test]
    fn a_step_that_is_not_whole_hours_reads_raw() {
        let b = Buckets::new(Step::Fixed(90 * 60_000_000), Tz::UTC, T);
        let s = plan(T, T + 10 * HOUR, &b, &forever());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].tier, Tier::Raw);
    }

    #[test]
    fn day_steps_read_daily_rollups_and_hours_and_raw_at_the_edges() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let b = Buckets::new(Step::Days(1), tz, T);
        let s = plan(T, T + 30 * DAY, &b, &forever());
        covers(&s, T, T + 30 * DAY);
        let tiers: Vec<Tier> = s.iter().map(|s| s.tier).collect();
        assert_eq!(
            tiers,
            [
                Tier::Raw,
                Tier::Hourly,
                Tier::Daily,
                Tier::Hourly,
                Tier::Raw
            ]
        );
    }

    #[test]
    fn in_a_half_hour_zone_day_steps_skip_the_hourly_tier() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let b = Buckets::new(Step::Days(1), tz, T);
        let s = plan(T, T + 30 * DAY, &b, &forever());
        let tiers: Vec<Tier> = s.iter().map(|s| s.tier).collect();
        assert_eq!(tiers, [Tier::Raw, Tier::Daily, Tier::Raw]);
    }

    #[test]
    fn expired_raw_data_is_answered_from_hourly_and_older_from_daily() {
        let now = T + 200 * DAY;
        let h = Horizons {
            raw: Some(now - 7 * DAY),
            hourly: Some(now - 90 * DAY),
            daily: None,
            events: None,
        };
        let b = Buckets::new(Step::Fixed(300_000_000), Tz::UTC, now - 120 * DAY);
        let s = plan(now - 120 * DAY, now, &b, &h);
        let tiers: Vec<Tier> = s.iter().map(|s| s.tier).collect();
        assert_eq!(tiers, [Tier::Daily, Tier::Hourly, Tier::Raw]);
        assert_eq!(s[1].to, ceil_hour(now - 7 * DAY));
        assert_eq!(s[2].from, s[1].to);
    }

    #[test]
    fn day_buckets_follow_dst() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let march_28 = 1_774_656_000_000_000; // 2026-03-28T00:00:00Z
        let b = Buckets::new(Step::Days(1), tz, march_28);
        let day = b.start_of(march_28 + 36 * HOUR); // 29 March
        assert_eq!(b.next(day) - day, 23 * HOUR);
        let b2 = Buckets::new(Step::Days(2), tz, march_28);
        assert_eq!(
            b2.start_of(march_28 + 36 * HOUR),
            b2.start_of(march_28 + 2 * HOUR)
        );
    }

    #[test]
    fn auto_steps_are_readable() {
        assert_eq!(auto_step(90 * DAY, 1000), Step::Fixed(3 * HOUR));
        assert_eq!(auto_step(HOUR, 1000), Step::Fixed(5_000_000));
        assert_eq!(auto_step(5 * 365 * DAY, 1000), Step::Days(2));
    }
}
