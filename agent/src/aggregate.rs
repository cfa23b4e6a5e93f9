//! Edge pre-aggregation: series matching a rule are sent as fixed windows
//! (count, sum, min, max, first, last) instead of, or besides, raw samples.
//!
//! The window state is the raw samples themselves, kept in the buffer's
//! `pending` tree until the window has closed (its end plus `late_secs` has
//! passed on the agent's clock). Sealing turns them into windows and removes
//! them in the same sled transaction that adds the batch, so a restart at
//! any moment loses no window and doubles none. A sample arriving after its
//! window was sealed becomes a second, partial window with the same start;
//! the aggregator merges both exactly.

use dash_shared::wire::{MAX_WINDOW_SECS, Window, WindowBlock};
use dash_shared::{Micros, SeriesKey};
use serde::{Deserialize, Serialize};

use crate::sample::Sample;

/// `[[aggregate]]`: which series to pre-aggregate, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateRule {
    /// Device ids to match; `*` matches any run of characters.
    #[serde(default = "any")]
    pub device: String,
    /// Metric names to match, with `*` as above.
    #[serde(default = "any")]
    pub metric: String,
    /// Window width in seconds; must divide 900 (1, 5, 10, 15, 30, 60, 300, 900, ...).
    pub window_secs: u32,
    /// Also send the raw samples.
    #[serde(default)]
    pub keep_raw: bool,
    /// Seconds a window waits after its end for late samples.
    #[serde(default = "two")]
    pub late_secs: u32,
}

fn any() -> String {
    "*".into()
}

fn two() -> u32 {
    2
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

impl AggregateRule {
    pub fn validate(&self, at: &str) -> anyhow::Result<()> {
        if self.window_secs == 0 || MAX_WINDOW_SECS % self.window_secs != 0 {
            anyhow::bail!(
                "{at}.window_secs {} must divide {MAX_WINDOW_SECS} (so a window never straddles an hour or a local day)",
                self.window_secs
            );
        }
        if self.late_secs > 3_600 {
            anyhow::bail!("{at}.late_secs must be at most 3600");
        }
        Ok(())
    }

    pub fn matches(&self, key: &SeriesKey) -> bool {
        glob(&self.device, &key.device) && glob(&self.metric, &key.metric)
    }

    pub fn width(&self) -> Micros {
        Micros::from(self.window_secs) * 1_000_000
    }
}

/// The first rule matching `key`.
pub fn rule_for<'a>(rules: &'a [AggregateRule], key: &SeriesKey) -> Option<&'a AggregateRule> {
    rules.iter().find(|r| r.matches(key))
}

/// `(time, value)`s of one window.
type Points = Vec<(Micros, f64)>;

/// Windows of `samples` (each with its width in seconds), one block per
/// series and width, windows in time order.
pub fn windows(samples: &[(u32, Sample)]) -> Vec<WindowBlock> {
    use std::collections::BTreeMap;
    let mut per: BTreeMap<(SeriesKey, u32), BTreeMap<Micros, Points>> = BTreeMap::new();
    for (width, s) in samples {
        let w = Micros::from(*width) * 1_000_000;
        per.entry((s.key.clone(), *width))
            .or_default()
            .entry(s.ts.div_euclid(w) * w)
            .or_default()
            .push((s.ts, s.value));
    }
    per.into_iter()
        .map(|((key, width_secs), starts)| WindowBlock {
            key,
            width_secs,
            windows: starts
                .into_iter()
                .map(|(start, mut points)| {
                    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
                    let (first, last) = (points[0], points[points.len() - 1]);
                    Window {
                        start,
                        count: points.len() as u64,
                        sum: points.iter().map(|p| p.1).sum(),
                        min: points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
                        max: points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
                        first: first.1,
                        first_offset: (first.0 - start) as u32,
                        last: last.1,
                        last_offset: (last.0 - start) as u32,
                    }
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_prefixes_suffixes_and_middles() {
        assert!(glob("*", "anything"));
        assert!(glob("temp*", "temperature"));
        assert!(glob("*.power", "line-1.power"));
        assert!(glob("plc-*-a", "plc-7-a"));
        assert!(!glob("plc-*-a", "plc-7-b"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn windows_hold_the_aggregates_of_their_samples() {
        let s = |ts: Micros, value: f64| {
            (
                60,
                Sample {
                    key: SeriesKey::new("d", "m"),
                    ts,
                    value,
                },
            )
        };
        let base = 1_764_000_000_000_000; // a multiple of 60 s
        let blocks = windows(&[
            s(base + 5_000_000, 3.0),
            s(base + 1_000_000, 1.0),
            s(base + 61_000_000, 7.0),
        ]);
        assert_eq!(blocks.len(), 1);
        let w = &blocks[0].windows;
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].start, w[0].count, w[0].sum, w[0].first, w[0].last),
            (base, 2, 4.0, 1.0, 3.0)
        );
        assert_eq!(
            (w[0].first_offset, w[0].last_offset),
            (1_000_000, 5_000_000)
        );
        assert_eq!((w[1].start, w[1].count), (base + 60_000_000, 1));
    }
}
