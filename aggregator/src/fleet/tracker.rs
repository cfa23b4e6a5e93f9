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
        let span = Span {
            first: other.first,
            last: other.last,
            cadence_ms: other.cadence_ms,
        };
        self.absorb(span, &other.agent, other.arrival);
    }

    /// Takes in a batch's span of this device, delivered by `agent` at
    /// `arrival`; the agent of the latest reading is kept (cloned only
    /// when it changes).
    fn absorb(&mut self, s: Span, agent: &AgentId, arrival: Micros) {
        if s.last >= self.last && self.agent != *agent {
            self.agent = agent.clone();
        }
        self.first = self.first.min(s.first);
        self.last = self.last.max(s.last);
        self.arrival = self.arrival.max(arrival);
        self.cadence_ms = min_cadence(self.cadence_ms, s.cadence_ms);
    }
}

fn min_cadence(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One device's news with its `(tenant, device)`.
pub type SeenDevice = ((TenantId, String), Seen);

/// What one batch says of one device.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: Micros,
    last: Micros,
    cadence_ms: Option<i64>,
}

impl Span {
    fn merge(&mut self, o: Span) {
        self.first = self.first.min(o.first);
        self.last = self.last.max(o.last);
        self.cadence_ms = min_cadence(self.cadence_ms, o.cadence_ms);
    }
}

/// `tenant -> device -> news`, drained by each flush. Keyed in two levels
/// so that a batch's devices are looked up by `&str`: a string is made
/// only for a device not seen since the last flush.
#[derive(Debug, Default)]
pub struct Tracker {
    pending: Mutex<HashMap<TenantId, HashMap<String, Seen>>>,
}

impl Tracker {
    /// Notes the devices of a committed batch: the series' devices and the
    /// events' sources.
    pub fn note(&self, tenant: &TenantId, agent: &AgentId, batch: &Batch) {
        let arrival = now_micros();
        // A batch holds many series of few devices, or one series each of
        // many (1,000 sensors behind one gateway): a map either way.
        let mut spans: HashMap<&str, Span> = HashMap::new();
        fn put<'a>(spans: &mut HashMap<&'a str, Span>, device: &'a str, span: Span) {
            match spans.get_mut(device) {
                Some(s) => s.merge(span),
                None => {
                    spans.insert(device, span);
                }
            }
        }
        let span = |ts: &[Micros]| {
            let (first, last) = ts.iter().fold((Micros::MAX, Micros::MIN), |(lo, hi), t| {
                (lo.min(*t), hi.max(*t))
            });
            let cadence_ms = (ts.len() >= 2 && last > first)
                .then(|| (last - first) / (ts.len() as i64 - 1) / 1_000);
            Span {
                first,
                last,
                cadence_ms,
            }
        };
        for block in &batch.series {
            if !block.timestamps.is_empty() {
                put(
                    &mut spans,
                    block.key.device.as_str(),
                    span(&block.timestamps),
                );
            }
        }
        for window in &batch.windows {
            let starts: Vec<Micros> = window.windows.iter().map(|w| w.start).collect();
            if !starts.is_empty() {
                let s = Span {
                    cadence_ms: None,
                    ..span(&starts)
                };
                put(&mut spans, window.key.device.as_str(), s);
            }
        }
        for event in &batch.events {
            let s = Span {
                first: event.time,
                last: event.time,
                cadence_ms: None,
            };
            put(&mut spans, event.source.as_str(), s);
        }
        if spans.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let devices = match pending.get_mut(tenant) {
            Some(d) => d,
            None => pending.entry(tenant.clone()).or_default(),
        };
        for (device, s) in spans {
            match devices.get_mut(device) {
                Some(seen) => seen.absorb(s, agent, arrival),
                None => {
                    let news = Seen {
                        agent: agent.clone(),
                        first: s.first,
                        last: s.last,
                        arrival,
                        cadence_ms: s.cadence_ms,
                    };
                    devices.insert(device.to_owned(), news);
                }
            }
        }
    }

    /// Everything noted since the last call.
    pub fn take(&self) -> Vec<SeenDevice> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending)
            .into_iter()
            .flat_map(|(t, devices)| {
                devices
                    .into_iter()
                    .map(move |(d, seen)| ((t.clone(), d), seen))
            })
            .collect()
    }

    /// Puts back what a failed flush took, merged with what came since.
    pub fn put_back(&self, taken: Vec<SeenDevice>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for ((tenant, device), seen) in taken {
            let devices = pending.entry(tenant).or_default();
            match devices.get_mut(&device) {
                Some(s) => s.merge(seen),
                None => {
                    devices.insert(device, seen);
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
