//! Numeric fields of events as series: a sale's `amount` becomes a sample of
//! `sales.amount` for the till that sent it, tagged with fields of the sale.
//!
//! The aggregator applies these rules to the events of a batch when it
//! stores the batch, so the derived samples are stored exactly once with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::series::SeriesKey;
use crate::wire::{Event, SeriesBlock};

/// The kind of a device's own status, sent by the agent and projected by
/// the aggregator onto the device's attributes: a JSON body with
/// `online` (bool), `firmware`, `model` (strings) and `errors`
/// (`[{"code": str, "message": str|null}]`), each only when the device
/// said it.
pub const DEVICE_STATUS: &str = "device.status";

/// One rule: events of `kind` give a sample of `metric` from `field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMetric {
    /// The event kind the rule applies to, e.g. `sale`.
    pub kind: String,
    /// Dotted path to a number in the body, e.g. `amount` or `totals.net`.
    pub field: String,
    /// Metric name of the derived series, e.g. `sales.amount`.
    pub metric: String,
    /// Dotted paths of body fields whose values become tags (named by their
    /// last segment). A missing field leaves the tag out.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The value at a dotted path (`totals.amount`) in a JSON value.
pub fn lookup<'a>(body: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(body, |v, k| v.get(k))
}

/// Samples the rules derive from `events`, one block per series; the series'
/// device is the event's source. Events whose field is missing or not a
/// number, or whose derived key is invalid, give no sample for that rule;
/// the count of those is returned too.
pub fn derive(events: &[Event], rules: &[EventMetric]) -> (Vec<SeriesBlock>, usize) {
    let mut blocks: BTreeMap<SeriesKey, SeriesBlock> = BTreeMap::new();
    let mut skipped = 0;
    if rules.is_empty() {
        return (Vec::new(), 0);
    }
    for e in events {
        let Ok(body) = serde_json::from_str::<Value>(&e.body) else {
            skipped += 1;
            continue;
        };
        for rule in rules.iter().filter(|r| r.kind == e.kind) {
            let Some(value) = lookup(&body, &rule.field).and_then(Value::as_f64) else {
                skipped += 1;
                continue;
            };
            let tags = rule.tags.iter().filter_map(|path| {
                let name = path.rsplit('.').next().unwrap_or(path).to_owned();
                let v = match lookup(&body, path)? {
                    Value::String(s) => s.clone(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                Some((name, v))
            });
            let key = SeriesKey::with_tags(e.source.clone(), rule.metric.clone(), tags);
            if key.validate().is_err() || !value.is_finite() {
                skipped += 1;
                continue;
            }
            let block = blocks.entry(key.clone()).or_insert_with(|| SeriesBlock {
                key,
                timestamps: Vec::new(),
                values: Vec::new(),
            });
            block.timestamps.push(e.time);
            block.values.push(value);
        }
    }
    (blocks.into_values().collect(), skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(source: &str, body: &str) -> Event {
        Event {
            source: source.into(),
            time: 1_764_000_000_000_000,
            kind: "sale".into(),
            body: body.into(),
        }
    }

    #[test]
    fn amounts_become_samples_tagged_with_fields_of_the_sale() {
        let rules = [EventMetric {
            kind: "sale".into(),
            field: "totals.amount".into(),
            metric: "sales.amount".into(),
            tags: vec!["location".into(), "item.sku".into(), "missing".into()],
        }];
        let events = [
            sale(
                "till-1",
                r#"{"totals":{"amount":12.5},"location":"soho","item":{"sku":42}}"#,
            ),
            sale(
                "till-1",
                r#"{"totals":{"amount":3},"location":"soho","item":{"sku":42}}"#,
            ),
            sale("till-2", r#"{"totals":{"amount":"n/a"},"location":"soho"}"#),
            Event {
                kind: "refund".into(),
                ..sale("till-1", r#"{"totals":{"amount":1}}"#)
            },
        ];
        let (blocks, skipped) = derive(&events, &rules);
        assert_eq!(skipped, 1, "the amount that is not a number");
        assert_eq!(blocks.len(), 1);
        let b = &blocks[0];
        assert_eq!(b.key.device, "till-1");
        assert_eq!(b.key.metric, "sales.amount");
        assert_eq!(
            b.key.tags,
            [
                ("location".into(), "soho".into()),
                ("sku".into(), "42".into())
            ]
        );
        assert_eq!(b.values, [12.5, 3.0]);
    }
}
