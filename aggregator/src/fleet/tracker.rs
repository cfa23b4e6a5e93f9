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

use std::sync::Mutex;

use dash_shared::{AgentId, Batch, Micros, TenantId, now_micros};

/// Device names are hashed on the writer's path, once or twice per series
/// block: a fast hasher (foldhash, seeded per process) rather than SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
    /// The newest status it sent itself (a `device.status` event).
    pub report: Option<Report>,
}

/// What a device said of itself in a `device.status` event
/// ([`dash_shared::events::DEVICE_STATUS`]); `None`: it did not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub time: Micros,
    pub online: Option<bool>,
    pub firmware: Option<String>,
    pub model: Option<String>,
    /// `[{"code", "message"}]` as JSON text.
    pub errors: Option<String>,
}

impl Report {
    /// The report in an event's body; `None` for a body that is not a JSON
    /// object (the event is stored anyway; only the projection is skipped).
    pub fn parse(time: Micros, body: &str) -> Option<Report> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let o = v.as_object()?;
        let text = |k: &str| {
            o.get(k)
                .and_then(|v| v.as_str())
                .map(|s| dash_runtime::text::clip(s, 64).to_owned())
        };
        let errors = o.get("errors").and_then(|e| {
            let list: Vec<serde_json::Value> = e
                .as_array()?
                .iter()
                .take(32)
                .filter_map(|e| {
                    let code = dash_runtime::text::clip(e.get("code")?.as_str()?, 64);
                    let message = e
                        .get("message")
                        .and_then(|m| m.as_str())
                        .map(|m| dash_runtime::text::clip(m, 200));
                    Some(serde_json::json!({ "code": code, "message": message }))
                })
                .collect();
            Some(serde_json::Value::Array(list).to_string())
        });
        Some(Report {
            time,
            online: o.get("online").and_then(|v| v.as_bool()),
            firmware: text("firmware"),
            model: text("model"),
            errors,
        })
    }
}

/// Two reports as one, as if the later came after the earlier: its time,
/// and each field it said over the earlier's, except `online`, which is
/// the later's alone (a device that talks after its last will is not
/// offline). On a tie the one noted later counts as later.
fn newest(a: Option<Report>, b: Option<Report>) -> Option<Report> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (old, new) = if b.time >= a.time { (a, b) } else { (b, a) };
            Some(Report {
                time: new.time,
                online: new.online,
                firmware: new.firmware.or(old.firmware),
                model: new.model.or(old.model),
                errors: new.errors.or(old.errors),
            })
        }
        (a, b) => a.or(b),
    }
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        let span = Span {
            first: other.first,
            last: other.last,
            cadence_ms: other.cadence_ms,
        };
        self.absorb(span, &other.agent, other.arrival);
        self.report = newest(self.report.take(), other.report);
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
        let mut spans: HashMap<&str, Span> =
            HashMap::with_capacity_and_hasher(batch.series.len().min(4_096), Default::default());
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
        // Blocks of one device usually come together: they are merged
        // into one span before it is looked up.
        let mut previous: Option<(&str, Span)> = None;
        for block in batch.series.iter().filter(|b| !b.timestamps.is_empty()) {
            let s = span(&block.timestamps);
            match &mut previous {
                Some((device, p)) if *device == block.key.device.as_str() => p.merge(s),
                _ => {
                    if let Some((device, p)) = previous.take() {
                        put(&mut spans, device, p);
                    }
                    previous = Some((block.key.device.as_str(), s));
                }
            }
        }
        if let Some((device, p)) = previous {
            put(&mut spans, device, p);
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
        let mut reports: Vec<(&str, Report)> = Vec::new();
        for event in &batch.events {
            let s = Span {
                first: event.time,
                last: event.time,
                cadence_ms: None,
            };
            put(&mut spans, event.source.as_str(), s);
            if event.kind == dash_shared::events::DEVICE_STATUS
                && let Some(r) = Report::parse(event.time, &event.body)
            {
                reports.push((event.source.as_str(), r));
            }
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
                        report: None,
                    };
                    devices.insert(device.to_owned(), news);
                }
            }
        }
        for (device, r) in reports {
            if let Some(seen) = devices.get_mut(device) {
                seen.report = newest(seen.report.take(), Some(r));
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

    fn status(device: &str, time: Micros, body: &str) -> Event {
        Event {
            source: device.into(),
            time,
            kind: dash_shared::events::DEVICE_STATUS.into(),
            body: body.into(),
        }
    }

    #[test]
    fn the_newest_status_of_a_device_is_kept_whatever_order_batches_come_in() {
        let t = Tracker::default();
        let (acme, gw) = (TenantId::new("acme").unwrap(), AgentId::new("gw").unwrap());
        let now = r#"{"online": true, "firmware": "2.0", "errors": [{"code": "17", "message": "motor overheat"}]}"#;
        t.note(&acme, &gw, &batch(vec![], vec![status("p-1", 2_000, now)]));
        // A backlog drained late: an older status, and one that is not JSON.
        let old = batch(
            vec![],
            vec![
                status("p-1", 1_000, r#"{"online": false, "firmware": "1.0"}"#),
                status("p-2", 1_000, "not json"),
            ],
        );
        t.note(&acme, &gw, &old);
        let mut seen = t.take();
        seen.sort_by(|a, b| a.0.1.cmp(&b.0.1));
        let r = seen[0].1.report.clone().unwrap();
        assert_eq!(
            (r.time, r.online, r.firmware.as_deref()),
            (2_000, Some(true), Some("2.0"))
        );
        assert_eq!(
            r.errors.as_deref(),
            Some(r#"[{"code":"17","message":"motor overheat"}]"#)
        );
        assert_eq!(seen[0].1.first, 1_000, "both count as heard from");
        // The unreadable one is still a sign of life, with no report.
        assert_eq!(
            (seen[1].0.1.as_str(), seen[1].1.report.is_none()),
            ("p-2", true)
        );
        // And across a failed flush put back.
        t.note(
            &acme,
            &gw,
            &batch(vec![], vec![status("p-1", 3_000, r#"{"online": false}"#)]),
        );
        t.put_back(seen);
        let r = t
            .take()
            .into_iter()
            .find(|(k, _)| k.1 == "p-1")
            .unwrap()
            .1
            .report
            .unwrap();
        // Field by field: the firmware said at 2,000 stays, online is the
        // newest's.
        assert_eq!(
            (r.time, r.online, r.firmware.as_deref()),
            (3_000, Some(false), Some("2.0"))
        );
        let later = status("p-1", 4_000, r#"{"model": "PX-9"}"#);
        t.note(&acme, &gw, &batch(vec![], vec![later]));
        let r = t.take().pop().unwrap().1.report.unwrap();
        assert_eq!(
            (r.online, r.model.as_deref()),
            (None, Some("PX-9")),
            "talking: not offline"
        );
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
