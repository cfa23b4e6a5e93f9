//! What ingest saw of each device since the last flush: its agent, its
//! first and last reading, when it arrived, and its cadence. Noted after a
//! batch commits (a few comparisons per series block, no IO), written to
//! `devices` by [`crate::fleet::run`] every `fleet.flush_ms` in one
//! statement, so registering devices costs the writer nothing it waits for.
//!
//! A crash loses at most one flush interval of these updates; the device
//! row itself exists from its first series (see
//! [`crate::storage::SeriesRegistry`]), and the next reading brings the
//! times back.

use std::collections::HashMap;
use std::sync::Mutex;

use dash_shared::{AgentId, Batch, Micros, TenantId, now_micros};

/// One device's news since the last flush.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub agent: AgentId,
    pub first: Micros,
    pub last: Micros,
    pub arrival: Micros,
    /// The smallest mean gap between readings of one of its series in one
    /// batch, in ms: how often it reports. `None` from single readings.
    pub cadence_ms: Option<i64>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.first = self.first.min(other.first);
        if other.last >= self.last {
            self.agent = other.agent;
        }
        self.last = self.last.max(other.last);
        self.arrival = self.arrival.max(other.arrival);
        self.cadence_ms = match (self.cadence_ms, other.cadence_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One device's news with its `(tenant, device)`.
pub type SeenDevice = ((TenantId, String), Seen);

/// `(tenant, device) -> news`, drained by each flush.
#[derive(Debug, Default)]
pub struct Tracker {
    pending: Mutex<HashMap<(TenantId, String), Seen>>,
}

impl Tracker {
    /// Notes the devices of a committed batch: the series' devices and the
    /// events' sources.
    pub fn note(&self, tenant: &TenantId, agent: &AgentId, batch: &Batch) {
        let arrival = now_micros();
        let mut news: Vec<(&str, Seen)> = Vec::new();
        fn add<'a>(news: &mut Vec<(&'a str, Seen)>, device: &'a str, seen: Seen) {
            match news.iter_mut().find(|(d, _)| *d == device) {
                Some((_, s)) => s.merge(seen),
                None => news.push((device, seen)),
            }
        }
        let seen = |first: Micros, last: Micros, cadence_ms: Option<i64>| Seen {
            agent: agent.clone(),
            first,
            last,
            arrival,
            cadence_ms,
        };
        let span = |ts: &[Micros]| {
            let (lo, hi) = ts.iter().fold((Micros::MAX, Micros::MIN), |(lo, hi), t| {
                (lo.min(*t), hi.max(*t))
            });
            let cadence =
                (ts.len() >= 2 && hi > lo).then(|| (hi - lo) / (ts.len() as i64 - 1) / 1_000);
            (lo, hi, cadence)
        };
        for block in &batch.series {
            if !block.timestamps.is_empty() {
                let (lo, hi, cadence) = span(&block.timestamps);
                add(&mut news, block.key.device.as_str(), seen(lo, hi, cadence));
            }
        }
        for window in &batch.windows {
            let starts: Vec<Micros> = window.windows.iter().map(|w| w.start).collect();
            if !starts.is_empty() {
                let (lo, hi, _) = span(&starts);
                add(&mut news, window.key.device.as_str(), seen(lo, hi, None));
            }
        }
        for event in &batch.events {
            add(
                &mut news,
                event.source.as_str(),
                seen(event.time, event.time, None),
            );
        }
        if news.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (device, seen) in news {
            match pending.get_mut(&(tenant.clone(), device.to_owned())) {
                Some(s) => s.merge(seen),
                None => {
                    pending.insert((tenant.clone(), device.to_owned()), seen);
                }
            }
        }
    }

    /// Everything noted since the last call.
    pub fn take(&self) -> Vec<SeenDevice> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// Puts back what a failed flush took, merged with what came since.
    pub fn put_back(&self, taken: Vec<SeenDevice>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (key, seen) in taken {
            match pending.get_mut(&key) {
                Some(s) => s.merge(seen),
                None => {
                    pending.insert(key, seen);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use dash_shared::{Event, SeriesBlock, SeriesKey, StreamId};

    use super::*;

    fn batch(series: Vec<SeriesBlock>, events: Vec<Event>) -> Batch {
        let mut b = Batch::samples(
            StreamId {
                name: "telemetry".into(),
                incarnation: 1,
            },
            1,
            1,
            series,
        );
        b.events = events;
        b
    }

    fn block(device: &str, metric: &str, ts: &[Micros]) -> SeriesBlock {
        SeriesBlock {
            key: SeriesKey::new(device, metric),
            timestamps: ts.to_vec(),
            values: vec![1.0; ts.len()],
        }
    }

    #[test]
    fn a_batch_gives_each_device_its_span_cadence_and_agent_and_later_batches_merge() {
        let t = Tracker::default();
        let (acme, gw1, gw2) = (
            TenantId::new("acme").unwrap(),
            AgentId::new("gw-1").unwrap(),
            AgentId::new("gw-2").unwrap(),
        );
        let s = 1_000_000;
        t.note(
            &acme,
            &gw1,
            &batch(
                vec![
                    block("th-1", "temp", &[30 * s, 10 * s, 20 * s]),
                    block("th-1", "rh", &[10 * s, 15 * s]),
                    block("th-2", "temp", &[12 * s]),
                ],
                vec![Event {
                    source: "till-1".into(),
                    time: 40 * s,
                    kind: "sale".into(),
                    body: "{}".into(),
                }],
            ),
        );
        // th-1 again later, through another gateway.
        t.note(
            &acme,
            &gw2,
            &batch(vec![block("th-1", "temp", &[50 * s])], vec![]),
        );
        let mut seen = t.take();
        seen.sort_by(|a, b| a.0.1.cmp(&b.0.1));
        let by: Vec<(&str, Micros, Micros, Option<i64>, &str)> = seen
            .iter()
            .map(|((_, d), s)| (d.as_str(), s.first, s.last, s.cadence_ms, s.agent.as_str()))
            .collect();
        assert_eq!(
            by,
            [
                ("th-1", 10 * s, 50 * s, Some(5_000), "gw-2"),
                ("th-2", 12 * s, 12 * s, None, "gw-1"),
                ("till-1", 40 * s, 40 * s, None, "gw-1"),
            ]
        );
        assert!(t.take().is_empty(), "taken once");
    }

    #[test]
    fn what_a_failed_flush_put_back_merges_with_what_came_since() {
        let t = Tracker::default();
        let (acme, gw1) = (
            TenantId::new("acme").unwrap(),
            AgentId::new("gw-1").unwrap(),
        );
        t.note(
            &acme,
            &gw1,
            &batch(vec![block("th-1", "temp", &[5_000_000])], vec![]),
        );
        let taken = t.take();
        t.note(
            &acme,
            &gw1,
            &batch(vec![block("th-1", "temp", &[9_000_000])], vec![]),
        );
        t.put_back(taken);
        let seen = t.take();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].1.first, seen[0].1.last), (5_000_000, 9_000_000));
    }
}
