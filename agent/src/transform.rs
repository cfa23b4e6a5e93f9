//! Transformations applied to samples as inputs produce them, before they
//! are buffered: `[[transform]]` rules, each for one input (`mqtt`,
//! `modbus`, `http` or `*`) and the series its `device`/`metric` globs match.
//! Every matching rule applies, in the order of the file:
//!
//! - `filter = "drop"` drops the sample; if an input has `filter = "keep"`
//!   rules, its samples matching none of them are dropped;
//! - `device_map` renames device ids (`{ "th-1" = "boiler-1" }`), then
//!   `device_template` rewrites them (`"plant-2/{device}"`), then
//!   `lowercase_device` lower-cases them;
//! - `metric` renames the metric;
//! - `scale` and `offset`: value * scale + offset;
//! - `convert = { from = "degF", to = "degC" }` converts units (temperature
//!   degC/degF/K, pressure Pa/kPa/bar/psi, energy Wh/kWh/MJ, power W/kW,
//!   volume l/m3/gal, length mm/m/in/ft, speed m/s, km/h, mph) and sets the
//!   tag `unit` to the target; pick the target per site (degF for a US plant);
//! - `lookup = { "1" = "overheat", "2" = "jam" }` with `lookup_event =
//!   "fault"`: a value found in the table also becomes an event of that kind
//!   with the code and its message (device error codes); the sample is kept.

use std::collections::BTreeMap;

use dash_shared::{Event, SeriesKey};
use serde::{Deserialize, Serialize};

use crate::aggregate::glob;
use crate::devices::mapping::DeviceReport;
use crate::sample::{Record, Sample};

/// Which input a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Mqtt,
    Modbus,
    Http,
}

impl Input {
    fn name(self) -> &'static str {
        match self {
            Input::Mqtt => "mqtt",
            Input::Modbus => "modbus",
            Input::Http => "http",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Keep,
    Drop,
}

/// A unit conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convert {
    pub from: String,
    pub to: String,
}

/// One `[[transform]]` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformRule {
    /// `mqtt`, `modbus`, `http` or `*`.
    #[serde(default = "any")]
    pub input: String,
    #[serde(default = "any")]
    pub device: String,
    #[serde(default = "any")]
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub device_map: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_template: String,
    #[serde(default)]
    pub lowercase_device: bool,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        rename = "rename_metric"
    )]
    pub rename_metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<Convert>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookup: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lookup_event: String,
}

fn any() -> String {
    "*".into()
}

/// `(dimension, factor to the base unit, offset to the base unit)`:
/// base = value * factor + offset.
fn unit(name: &str) -> Option<(&'static str, f64, f64)> {
    Some(match name {
        "degC" => ("temperature", 1.0, 0.0),
        "K" => ("temperature", 1.0, -273.15),
        "degF" => ("temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
        "Pa" => ("pressure", 1.0, 0.0),
        "kPa" => ("pressure", 1e3, 0.0),
        "bar" => ("pressure", 1e5, 0.0),
        "psi" => ("pressure", 6_894.757_293_168, 0.0),
        "Wh" => ("energy", 3_600.0, 0.0),
        "kWh" => ("energy", 3_600_000.0, 0.0),
        "MJ" => ("energy", 1e6, 0.0),
        "W" => ("power", 1.0, 0.0),
        "kW" => ("power", 1e3, 0.0),
        "l" => ("volume", 1e-3, 0.0),
        "m3" => ("volume", 1.0, 0.0),
        "gal" => ("volume", 0.003_785_411_784, 0.0),
        "mm" => ("length", 1e-3, 0.0),
        "m" => ("length", 1.0, 0.0),
        "in" => ("length", 0.0254, 0.0),
        "ft" => ("length", 0.3048, 0.0),
        "m/s" => ("speed", 1.0, 0.0),
        "km/h" => ("speed", 1.0 / 3.6, 0.0),
        "mph" => ("speed", 0.447_04, 0.0),
        _ => return None,
    })
}

/// The unit a region uses for a dimension: `to = "metric"` or `to = "us"`
/// picks it per series, so one rule serves every site of a region.
fn regional(to: &str, dimension: &str) -> Option<&'static str> {
    Some(match (to, dimension) {
        ("metric", "temperature") => "degC",
        ("us", "temperature") => "degF",
        ("metric", "pressure") => "bar",
        ("us", "pressure") => "psi",
        ("metric" | "us", "energy") => "kWh",
        ("metric" | "us", "power") => "kW",
        ("metric", "volume") => "l",
        ("us", "volume") => "gal",
        ("metric", "length") => "m",
        ("us", "length") => "ft",
        ("metric", "speed") => "km/h",
        ("us", "speed") => "mph",
        _ => return None,
    })
}

/// The unit `to` names for values in `from`: itself, or the region's unit
/// (`metric`, `us`) for `from`'s dimension.
pub fn target_unit(from: &str, to: &str) -> Option<String> {
    let (dimension, ..) = unit(from)?;
    match to {
        "metric" | "us" => regional(to, dimension).map(str::to_owned),
        other => unit(other)
            .filter(|(d, ..)| *d == dimension)
            .map(|_| other.to_owned()),
    }
}

/// Converts `v` between two units of one dimension.
pub fn convert(v: f64, from: &str, to: &str) -> Option<f64> {
    let (d1, f1, o1) = unit(from)?;
    let (d2, f2, o2) = unit(to)?;
    (d1 == d2).then(|| (v * f1 + o1 - o2) / f2)
}

impl TransformRule {
    /// Fahrenheit readings from MQTT devices stored as Celsius.
    /// Two rules that between them set every key.
    pub fn examples() -> Vec<TransformRule> {
        vec![
            TransformRule::example(),
            TransformRule {
                input: "modbus".into(),
                device: "PLC-*".into(),
                metric: "*".into(),
                filter: Some(Filter::Keep),
                device_map: BTreeMap::from([("PLC-7".into(), "press-7".into())]),
                device_template: "plant-2/{device}".into(),
                lowercase_device: true,
                rename_metric: String::new(),
                scale: Some(0.1),
                offset: Some(0.0),
                convert: None,
                lookup: BTreeMap::from([("17".into(), "motor overheat".into())]),
                lookup_event: "fault".into(),
            },
        ]
    }

    pub fn example() -> TransformRule {
        TransformRule {
            input: "mqtt".into(),
            device: "*".into(),
            metric: "temp_f".into(),
            filter: None,
            device_map: BTreeMap::new(),
            device_template: String::new(),
            lowercase_device: false,
            rename_metric: "temperature".into(),
            scale: None,
            offset: None,
            convert: Some(Convert {
                from: "degF".into(),
                to: "degC".into(),
            }),
            lookup: BTreeMap::new(),
            lookup_event: String::new(),
        }
    }

    pub fn validate(&self, at: &str) -> anyhow::Result<()> {
        if !["*", "mqtt", "modbus", "http"].contains(&self.input.as_str()) {
            anyhow::bail!("{at}.input {:?}: use mqtt, modbus, http or *", self.input);
        }
        if let Some(c) = &self.convert {
            let known = |u: &str| unit(u).is_some() || ["metric", "us"].contains(&u);
            if !known(&c.from) || !known(&c.to) || ["metric", "us"].contains(&c.from.as_str()) {
                anyhow::bail!(
                    "{at}.convert: unknown unit in {:?} -> {:?} (known: degC degF K Pa kPa bar psi Wh kWh MJ W kW l m3 gal mm m in ft m/s km/h mph; to may also be metric or us)",
                    c.from,
                    c.to
                );
            }
            if target_unit(&c.from, &c.to).is_none() {
                anyhow::bail!(
                    "{at}.convert: {} and {} measure different things",
                    c.from,
                    c.to
                );
            }
        }
        if !self.device_template.is_empty() && !self.device_template.contains("{device}") {
            anyhow::bail!("{at}.device_template must contain {{device}}");
        }
        if !self.lookup.is_empty() && self.lookup_event.is_empty() {
            anyhow::bail!("{at}.lookup needs lookup_event (the event kind, e.g. \"fault\")");
        }
        for v in [self.scale, self.offset].into_iter().flatten() {
            if !v.is_finite() {
                anyhow::bail!("{at}: scale and offset must be finite");
            }
        }
        Ok(())
    }

    /// `device_map`, then `device_template`, then `lowercase_device`.
    fn rename_device(&self, device: &mut String) {
        if let Some(to) = self.device_map.get(device.as_str()) {
            *device = to.clone();
        }
        if !self.device_template.is_empty() {
            *device = self.device_template.replace("{device}", device);
        }
        if self.lowercase_device {
            *device = device.to_lowercase();
        }
    }

    fn matches(&self, input: Input, key: &SeriesKey) -> bool {
        (self.input == "*" || self.input == input.name())
            && glob(&self.device, &key.device)
            && glob(&self.metric, &key.metric)
    }
}

/// The rules of a config, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    rules: Vec<TransformRule>,
}

impl Transforms {
    pub fn new(rules: Vec<TransformRule>) -> Self {
        Transforms { rules }
    }

    /// Applies the rules to `samples` from `input`: the records to buffer
    /// (kept samples, and events from lookups). Samples whose transformed
    /// key is invalid are dropped with a warning.
    pub fn apply(&self, input: Input, samples: Vec<Sample>) -> Vec<Record> {
        if self.rules.is_empty() {
            return samples.into_iter().map(Record::Sample).collect();
        }
        let keeps = self
            .rules
            .iter()
            .any(|r| r.filter == Some(Filter::Keep) && (r.input == "*" || r.input == input.name()));
        let mut out = Vec::with_capacity(samples.len());
        'samples: for mut s in samples {
            let mut kept = !keeps;
            for rule in &self.rules {
                if !rule.matches(input, &s.key) {
                    continue;
                }
                match rule.filter {
                    Some(Filter::Drop) => continue 'samples,
                    Some(Filter::Keep) => kept = true,
                    None => {}
                }
                rule.rename_device(&mut s.key.device);
                if !rule.rename_metric.is_empty() {
                    s.key.metric = rule.rename_metric.clone();
                }
                s.value = s.value * rule.scale.unwrap_or(1.0) + rule.offset.unwrap_or(0.0);
                if let Some((c, to)) = rule
                    .convert
                    .as_ref()
                    .and_then(|c| Some((c, target_unit(&c.from, &c.to)?)))
                {
                    s.value = convert(s.value, &c.from, &to).unwrap_or(s.value);
                    let mut tags: Vec<(String, String)> = s
                        .key
                        .tags
                        .into_iter()
                        .filter(|(k, _)| k != "unit")
                        .collect();
                    tags.push(("unit".into(), to));
                    s.key = SeriesKey::with_tags(s.key.device, s.key.metric, tags);
                }
                if !rule.lookup.is_empty() {
                    let code = if s.value.fract() == 0.0 {
                        format!("{}", s.value as i64)
                    } else {
                        s.value.to_string()
                    };
                    if let Some(message) = rule.lookup.get(&code) {
                        let body = serde_json::json!({ "metric": s.key.metric, "code": s.value, "message": message });
                        out.push(Record::Event(Event {
                            source: s.key.device.clone(),
                            time: s.ts,
                            kind: rule.lookup_event.clone(),
                            body: body.to_string(),
                        }));
                    }
                }
            }
            if !kept {
                continue;
            }
            match s.key.validate() {
                Ok(()) if s.value.is_finite() => out.push(Record::Sample(s)),
                Ok(()) => {
                    tracing::warn!(device = %s.key.device, metric = %s.key.metric, "transformed value is not finite; dropped")
                }
                Err(e) => {
                    tracing::warn!(device = %s.key.device, error = %e, "transformed series key is invalid; dropped")
                }
            }
        }
        out
    }
}

/// The event kind of a device's status ([`Transforms::status`]).
pub const STATUS_KIND: &str = dash_shared::events::DEVICE_STATUS;

impl Transforms {
    /// A device's status as one `device.status` event: the device renamed
    /// as its readings are (so the status and the series name the same
    /// device), and each error code with the text the first lookup rule
    /// that knows it gives (`null` when none does). The rules that apply
    /// are those of every metric and those of the report's `error_metric`:
    /// renames, drop and keep filters, lookups. `None`: filtered out.
    ///
    /// The body: `{"online": bool?, "firmware": str?, "model": str?,
    /// "errors": [{"code": str, "message": str|null}]?}`, each field only
    /// when the device said it.
    pub fn status(&self, input: Input, report: DeviceReport) -> Option<Record> {
        let said_errors = report.errors.is_some();
        let mut key = SeriesKey::new(report.device, report.error_metric);
        let codes = report.errors.unwrap_or_default();
        let mut messages: Vec<Option<String>> = vec![None; codes.len()];
        // One pass in order, as for readings: each rule sees the device as
        // the rules before it left it. The rules that apply are those of
        // every metric (`metric = "*"`) and those of the error metric: a
        // device's renames, drop and keep filters, and the lookup tables.
        let keeps = self.rules.iter().any(|r| {
            r.filter == Some(Filter::Keep)
                && (r.input == "*" || r.input == input.name())
                && glob(&r.metric, &key.metric)
        });
        let mut kept = !keeps;
        for rule in &self.rules {
            if !rule.matches(input, &key) {
                continue;
            }
            match rule.filter {
                Some(Filter::Drop) => return None,
                Some(Filter::Keep) => kept = true,
                None => {}
            }
            rule.rename_device(&mut key.device);
            for (code, message) in codes.iter().zip(messages.iter_mut()) {
                if message.is_none() {
                    *message = rule.lookup.get(code).cloned();
                }
            }
        }
        if !kept {
            return None;
        }
        if let Err(e) = key.validate() {
            tracing::warn!(device = %key.device, error = %e, "renamed device of a status is invalid; dropped");
            return None;
        }
        let mut body = serde_json::Map::new();
        if let Some(online) = report.online {
            body.insert("online".into(), online.into());
        }
        if let Some(firmware) = report.firmware {
            body.insert("firmware".into(), firmware.into());
        }
        if let Some(model) = report.model {
            body.insert("model".into(), model.into());
        }
        if said_errors {
            let errors: Vec<serde_json::Value> = codes
                .into_iter()
                .zip(messages)
                .map(|(code, message)| serde_json::json!({ "code": code, "message": message }))
                .collect();
            body.insert("errors".into(), errors.into());
        }
        Some(Record::Event(Event {
            source: key.device,
            time: report.time,
            kind: STATUS_KIND.into(),
            body: serde_json::Value::Object(body).to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Transforms {
        #[derive(Deserialize)]
        struct Wrap {
            transform: Vec<TransformRule>,
        }
        let w: Wrap = toml::from_str(text).unwrap();
        for (i, r) in w.transform.iter().enumerate() {
            r.validate(&format!("transform[{i}]")).unwrap();
        }
        Transforms::new(w.transform)
    }

    fn sample(device: &str, metric: &str, value: f64) -> Sample {
        Sample {
            key: SeriesKey::new(device, metric),
            ts: 1_764_000_000_000_000,
            value,
        }
    }

    fn samples(records: Vec<Record>) -> Vec<Sample> {
        records
            .into_iter()
            .filter_map(|r| match r {
                Record::Sample(s) => Some(s),
                Record::Event(_) => None,
            })
            .collect()
    }

    #[test]
    fn units_convert_both_ways_and_only_within_a_dimension() {
        assert!((convert(212.0, "degF", "degC").unwrap() - 100.0).abs() < 1e-9);
        assert!((convert(100.0, "degC", "degF").unwrap() - 212.0).abs() < 1e-9);
        assert!((convert(0.0, "degC", "K").unwrap() - 273.15).abs() < 1e-9);
        assert!((convert(1.0, "bar", "psi").unwrap() - 14.503_773_8).abs() < 1e-6);
        assert!((convert(1.0, "kWh", "MJ").unwrap() - 3.6).abs() < 1e-12);
        assert!((convert(100.0, "km/h", "mph").unwrap() - 62.137_119).abs() < 1e-5);
        assert_eq!(convert(1.0, "bar", "degC"), None);
    }

    #[test]
    fn devices_are_renamed_and_values_scaled_and_converted_in_order() {
        let t = rules(
            r#"
            [[transform]]
            input = "mqtt"
            device_map = { "TH-1" = "Boiler-1" }
            device_template = "plant-2/{device}"
            lowercase_device = true
            [[transform]]
            metric = "temp_f"
            rename_metric = "temperature"
            convert = { from = "degF", to = "degC" }
            [[transform]]
            input = "modbus"
            metric = "flow"
            scale = 0.1
            offset = -1.0
            "#,
        );
        let out = samples(t.apply(Input::Mqtt, vec![sample("TH-1", "temp_f", 212.0)]));
        assert_eq!(out[0].key.device, "plant-2/boiler-1");
        assert_eq!(out[0].key.metric, "temperature");
        assert_eq!(
            out[0].key.tags,
            vec![("unit".to_owned(), "degC".to_owned())]
        );
        assert!((out[0].value - 100.0).abs() < 1e-9);
        // The modbus rule does not touch MQTT samples, and vice versa.
        let out = samples(t.apply(Input::Mqtt, vec![sample("x", "flow", 10.0)]));
        assert_eq!(out[0].value, 10.0);
        let out = samples(t.apply(Input::Modbus, vec![sample("x", "flow", 10.0)]));
        assert_eq!(out[0].value, 0.0);
        assert_eq!(out[0].key.device, "x");
    }

    #[test]
    fn a_region_picks_the_target_unit_per_dimension() {
        let t = rules(
            r#"
            [[transform]]
            metric = "temp"
            convert = { from = "degC", to = "us" }
            [[transform]]
            metric = "pressure"
            convert = { from = "psi", to = "metric" }
            "#,
        );
        let out = samples(t.apply(
            Input::Mqtt,
            vec![
                sample("a", "temp", 100.0),
                sample("a", "pressure", 14.503_773_8),
            ],
        ));
        assert!((out[0].value - 212.0).abs() < 1e-9);
        assert_eq!(out[0].key.tags[0].1, "degF");
        assert!((out[1].value - 1.0).abs() < 1e-6);
        assert_eq!(out[1].key.tags[0].1, "bar");
    }

    #[test]
    fn keep_and_drop_filters() {
        let t = rules(
            r#"
            [[transform]]
            input = "mqtt"
            metric = "debug*"
            filter = "drop"
            [[transform]]
            input = "modbus"
            metric = "power*"
            filter = "keep"
            "#,
        );
        let mqtt = samples(t.apply(
            Input::Mqtt,
            vec![sample("a", "debug.x", 1.0), sample("a", "temp", 2.0)],
        ));
        assert_eq!(
            mqtt.iter()
                .map(|s| s.key.metric.as_str())
                .collect::<Vec<_>>(),
            ["temp"]
        );
        let modbus = samples(t.apply(
            Input::Modbus,
            vec![sample("a", "power.l1", 1.0), sample("a", "temp", 2.0)],
        ));
        assert_eq!(
            modbus
                .iter()
                .map(|s| s.key.metric.as_str())
                .collect::<Vec<_>>(),
            ["power.l1"]
        );
    }

    #[test]
    fn a_device_wide_drop_or_keep_filter_applies_to_its_status() {
        let report = |device: &str| DeviceReport {
            device: device.into(),
            time: 1_764_000_000_000_000,
            online: Some(true),
            firmware: None,
            model: None,
            errors: None,
            error_metric: "error_code".into(),
        };
        let t = rules("[[transform]]\ndevice = \"junk-*\"\nfilter = \"drop\"");
        assert!(t.status(Input::Mqtt, report("junk-1")).is_none());
        assert!(t.status(Input::Mqtt, report("press-1")).is_some());
        // A drop of one other metric leaves the status alone.
        let t = rules("[[transform]]\nmetric = \"debug*\"\nfilter = \"drop\"");
        assert!(t.status(Input::Mqtt, report("press-1")).is_some());
        let t = rules("[[transform]]\ndevice = \"press-*\"\nfilter = \"keep\"");
        assert!(t.status(Input::Mqtt, report("press-1")).is_some());
        assert!(t.status(Input::Mqtt, report("other-1")).is_none());
    }

    #[test]
    fn a_status_names_its_device_as_readings_do_and_reads_its_codes() {
        let t = rules(
            r#"
            [[transform]]
            device = "PLC-*"
            lowercase_device = true

            [[transform]]
            device = "plc-*"
            metric = "error_code"
            lookup = { "17" = "motor overheat" }
            lookup_event = "fault"

            [[transform]]
            metric = "error_code"
            lookup = { "17" = "not this one", "E-2" = "door open" }
            lookup_event = "fault"
            "#,
        );
        let report = |errors: Option<Vec<&str>>| DeviceReport {
            device: "PLC-7".into(),
            time: 1_764_000_000_000_000,
            online: Some(false),
            firmware: Some("1.2".into()),
            model: None,
            errors: errors.map(|e| e.into_iter().map(String::from).collect()),
            error_metric: "error_code".into(),
        };
        let Some(Record::Event(e)) = t.status(Input::Mqtt, report(Some(vec!["17", "E-2", "99"])))
        else {
            panic!("one event");
        };
        assert_eq!((e.kind.as_str(), e.source.as_str()), (STATUS_KIND, "plc-7"));
        let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "online": false,
                "firmware": "1.2",
                "errors": [
                    { "code": "17", "message": "motor overheat" },
                    { "code": "E-2", "message": "door open" },
                    { "code": "99", "message": null },
                ],
            })
        );
        // Said nothing of errors: none in the body, so none are cleared.
        let Some(Record::Event(e)) = t.status(Input::Mqtt, report(None)) else {
            panic!("one event");
        };
        assert!(!e.body.contains("errors"), "{}", e.body);
    }

    #[test]
    fn error_codes_found_in_a_lookup_table_become_events() {
        let t = rules(
            r#"
            [[transform]]
            metric = "error_code"
            lookup = { "0" = "ok", "17" = "motor overheat" }
            lookup_event = "fault"
            "#,
        );
        let out = t.apply(
            Input::Modbus,
            vec![
                sample("press-1", "error_code", 17.0),
                sample("press-1", "error_code", 5.0),
            ],
        );
        let events: Vec<&Event> = out
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(e),
                Record::Sample(_) => None,
            })
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "fault");
        assert_eq!(events[0].source, "press-1");
        assert!(
            events[0].body.contains("motor overheat"),
            "{}",
            events[0].body
        );
        assert_eq!(samples(out).len(), 2, "the codes stay samples too");
    }

    #[test]
    fn bad_rules_are_refused_with_their_path() {
        let bad = |text: &str, needle: &str| {
            #[derive(Deserialize)]
            struct Wrap {
                transform: Vec<TransformRule>,
            }
            let w: Wrap = toml::from_str(text).unwrap();
            let e = w.transform[0]
                .validate("transform[0]")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        };
        bad(
            "[[transform]]\nconvert = { from = \"bar\", to = \"degC\" }",
            "different things",
        );
        bad(
            "[[transform]]\nconvert = { from = \"furlong\", to = \"m\" }",
            "unknown unit",
        );
        bad("[[transform]]\ninput = \"serial\"", "transform[0].input");
        bad("[[transform]]\ndevice_template = \"x\"", "{device}");
        bad("[[transform]]\nlookup = { \"1\" = \"x\" }", "lookup_event");
    }
}
