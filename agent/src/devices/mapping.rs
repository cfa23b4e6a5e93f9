//! Topic -> series mappings for device payloads.
//!
//! A pattern like `sensors/{device}/{metric}` captures the device id and the
//! metric from topic levels; `+` matches any one level and `#` the rest. The
//! payload is a plain number (`21.5`) or JSON: with `value_path` one field is
//! the value (`{"temp": {"c": 21.5}}` with `temp.c`); without it, every numeric
//! field of an object is its own metric (`{"temp": 21.5, "rh": 40}`).
//! An optional `timestamp_path` reads epoch seconds, milliseconds or
//! microseconds (told apart by magnitude); otherwise the agent's clock stamps
//! the sample when it arrives.
//!
//! A mapping with `kind = "status"` reads a device's own status instead
//! (often also its MQTT last will): whether it is online, its firmware and
//! model, and its error codes, from JSON fields (`online_path`,
//! `firmware_path`, `model_path`, `errors_path`, by default `online`,
//! `firmware`, `model` and `errors`) or a bare `online` / `offline` / `1` /
//! `0` payload. It becomes one `device.status` event (see [`DeviceReport`]).

use std::collections::BTreeMap;

use dash_shared::series::SeriesKeyError;
use dash_shared::{MAX_TIMESTAMP, MIN_TIMESTAMP, Micros, SeriesKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sample::Sample;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Number,
    Json,
}

/// What a mapping reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    /// Readings: numbers become samples.
    #[default]
    Readings,
    /// A device's status: online, firmware, model, error codes.
    Status,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Topic pattern with `{device}`, `{metric}`, `+` and `#`.
    pub topic: String,
    #[serde(default)]
    pub format: PayloadFormat,
    /// JSON: dot path to the value; empty takes every numeric field.
    #[serde(default)]
    pub value_path: String,
    /// JSON: dot path to an epoch timestamp; empty stamps on arrival.
    #[serde(default)]
    pub timestamp_path: String,
    /// Fixed device id when the pattern does not capture one.
    #[serde(default)]
    pub device: String,
    /// Fixed metric when the pattern does not capture one; with JSON fields, a prefix.
    #[serde(default)]
    pub metric: String,
    /// Tags added to every series of this mapping.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `readings` (the default) or `status`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: MappingKind,
    /// Status: dot path to online (true/false, 1/0, "online"/"offline").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub online_path: String,
    /// Status: dot path to the firmware version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub firmware_path: String,
    /// Status: dot path to the model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_path: String,
    /// Status: dot path to the error codes (one, or an array).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub errors_path: String,
}

/// A device's status as it reported it, before its error codes are read
/// ([`crate::transform::Transforms::status`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    pub device: String,
    pub time: Micros,
    pub online: Option<bool>,
    pub firmware: Option<String>,
    pub model: Option<String>,
    /// The codes as text (`17`, `E-OVERHEAT`); `None` when the status does
    /// not say, empty when it says there are none.
    pub errors: Option<Vec<String>>,
    /// The metric `[[transform]]` lookup rules match the codes by (the
    /// mapping's `metric`, by default `error_code`).
    pub error_metric: String,
}

/// Longest firmware, model or error code kept, in characters.
const STATUS_TEXT: usize = 64;
/// Most error codes kept from one status.
const STATUS_ERRORS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Device,
    Metric,
    Plus,
    Hash,
}

/// Why a device payload produced no samples.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload {0:?} is not a number")]
    NotANumber(String),
    #[error("payload is not JSON: {0}")]
    Json(String),
    #[error("JSON has no field {0:?}")]
    MissingField(String),
    #[error("JSON field {0:?} is not a number")]
    NotNumeric(String),
    #[error(
        "JSON object has no numeric fields (or, for a status, none of online, firmware, model, errors)"
    )]
    NoFields,
    #[error("JSON field {0:?} is not online/offline, true/false or 1/0")]
    NotOnline(String),
    #[error("value is NaN or infinite")]
    NonFinite,
    #[error("timestamp {0} is outside 2000..2100 (a clock from 1970?)")]
    Timestamp(Micros),
    #[error("timestamp {0} µs is more than 10 minutes ahead of the agent's clock")]
    Future(Micros),
    #[error("series key: {0}")]
    Key(#[from] SeriesKeyError),
}

impl Mapping {
    /// The mapping the default config ships with.
    pub fn example() -> Mapping {
        Mapping {
            topic: "sensors/{device}/{metric}".into(),
            format: PayloadFormat::Number,
            value_path: String::new(),
            timestamp_path: String::new(),
            device: String::new(),
            metric: String::new(),
            tags: BTreeMap::new(),
            kind: MappingKind::Readings,
            online_path: String::new(),
            firmware_path: String::new(),
            model_path: String::new(),
            errors_path: String::new(),
        }
    }

    /// A status mapping for `topic`, reading the default fields.
    pub fn status(topic: &str) -> Mapping {
        Mapping {
            topic: topic.into(),
            format: PayloadFormat::Json,
            kind: MappingKind::Status,
            ..Mapping::example()
        }
    }

    fn levels(&self) -> Vec<Level> {
        self.topic
            .split('/')
            .map(|l| match l {
                "{device}" => Level::Device,
                "{metric}" => Level::Metric,
                "+" => Level::Plus,
                "#" => Level::Hash,
                other => Level::Literal(other.to_owned()),
            })
            .collect()
    }

    /// Checks the pattern; the error says what is wrong with it.
    pub fn validate(&self) -> anyhow::Result<()> {
        let levels = self.levels();
        let has = |l: &Level| levels.contains(l);
        if self.topic.is_empty() {
            anyhow::bail!("topic is empty");
        }
        if let Some(i) = levels.iter().position(|l| *l == Level::Hash) {
            if i + 1 != levels.len() {
                anyhow::bail!("topic: '#' must be the last level");
            }
        }
        if levels
            .iter()
            .any(|l| matches!(l, Level::Literal(s) if s.contains(['+', '#', '{', '}'])))
        {
            anyhow::bail!("topic: wildcards and captures must fill a whole level");
        }
        if !has(&Level::Device) && self.device.is_empty() {
            anyhow::bail!("capture {{device}} in topic or set device");
        }
        let status_paths = [
            &self.online_path,
            &self.firmware_path,
            &self.model_path,
            &self.errors_path,
        ];
        if self.kind == MappingKind::Status {
            if has(&Level::Metric) {
                anyhow::bail!("a status mapping captures no {{metric}}");
            }
            if !self.value_path.is_empty() {
                anyhow::bail!(
                    "a status mapping reads online_path, firmware_path, model_path and errors_path, not value_path"
                );
            }
            return Ok(());
        }
        if status_paths.iter().any(|p| !p.is_empty()) {
            anyhow::bail!(
                "online_path, firmware_path, model_path and errors_path need kind = \"status\""
            );
        }
        let json_fields = self.format == PayloadFormat::Json && self.value_path.is_empty();
        if !has(&Level::Metric) && self.metric.is_empty() && !json_fields {
            anyhow::bail!("capture {{metric}} in topic or set metric");
        }
        if self.format == PayloadFormat::Number
            && !(self.value_path.is_empty() && self.timestamp_path.is_empty())
        {
            anyhow::bail!("value_path and timestamp_path need format = \"json\"");
        }
        Ok(())
    }

    /// The MQTT subscription filter for this pattern.
    pub fn filter(&self) -> String {
        self.levels()
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Hash => "#",
                _ => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The (device, metric) a topic captures, if it matches.
    fn capture<'t>(&self, topic: &'t str) -> Option<(Option<&'t str>, Option<&'t str>)> {
        let levels = self.levels();
        let mut parts = topic.split('/');
        let (mut device, mut metric) = (None, None);
        for level in &levels {
            if *level == Level::Hash {
                return Some((device, metric));
            }
            let part = parts.next()?;
            match level {
                Level::Literal(s) if s != part => return None,
                Level::Device => device = Some(part),
                Level::Metric => metric = Some(part),
                _ => {}
            }
        }
        parts.next().is_none().then_some((device, metric))
    }

    /// Whether the topic is one this mapping reads.
    pub fn matches(&self, topic: &str) -> bool {
        self.capture(topic).is_some()
    }

    /// A status from one payload, or `None` when the topic does not match.
    /// Besides JSON, a bare `online`, `offline`, `true`, `false`, `1` or
    /// `0` (a last will is often just that) says whether it is online.
    pub fn decode_status(
        &self,
        topic: &str,
        payload: &[u8],
        now: Micros,
    ) -> Option<Result<DeviceReport, PayloadError>> {
        let (device, _) = self.capture(topic)?;
        let device = device.unwrap_or(&self.device);
        Some(self.report(device, payload, now))
    }

    fn report(
        &self,
        device: &str,
        payload: &[u8],
        now: Micros,
    ) -> Result<DeviceReport, PayloadError> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| PayloadError::NotUtf8)?
            .trim();
        SeriesKey::new(device, "status").validate()?;
        let path = |p: &str, default: &'static str| -> String {
            if p.is_empty() {
                default.to_owned()
            } else {
                p.to_owned()
            }
        };
        let mut report = DeviceReport {
            device: device.to_owned(),
            time: now,
            online: None,
            firmware: None,
            model: None,
            errors: None,
            error_metric: path(&self.metric, "error_code"),
        };
        if let Some(online) = online_word(&Value::String(text.to_owned())) {
            report.online = Some(online);
            return Ok(report);
        }
        let json: Value =
            serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))?;
        if !json.is_object() {
            return Err(PayloadError::NoFields);
        }
        // A status without its time (a last will set at connect) is stamped on arrival.
        let stamped = !self.timestamp_path.is_empty()
            && dash_shared::events::lookup(&json, &self.timestamp_path).is_some();
        if stamped {
            let ts = epoch_to_micros(number_at(&json, &self.timestamp_path)?);
            if ts > now.saturating_add(MAX_AHEAD) {
                return Err(PayloadError::Future(ts));
            }
            report.time = checked_ts(ts)?;
        }
        let at = |p: &str, default: &'static str| {
            dash_shared::events::lookup(&json, &path(p, default)).filter(|v| !v.is_null())
        };
        if let Some(v) = at(&self.online_path, "online") {
            report.online = Some(
                online_word(v)
                    .ok_or_else(|| PayloadError::NotOnline(path(&self.online_path, "online")))?,
            );
        }
        report.firmware = at(&self.firmware_path, "firmware").and_then(status_text);
        report.model = at(&self.model_path, "model").and_then(status_text);
        report.errors = at(&self.errors_path, "errors").map(|v| match v {
            Value::Array(codes) => codes
                .iter()
                .filter_map(status_text)
                .take(STATUS_ERRORS)
                .collect(),
            one => status_text(one).into_iter().collect(),
        });
        if report.online.is_none()
            && report.firmware.is_none()
            && report.model.is_none()
            && report.errors.is_none()
        {
            return Err(PayloadError::NoFields);
        }
        Ok(report)
    }

    /// Samples from one payload, or `None` when the topic does not match.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        now: Micros,
    ) -> Option<Result<Vec<Sample>, PayloadError>> {
        let (device, metric) = self.capture(topic)?;
        let device = device.unwrap_or(&self.device);
        let metric = metric.unwrap_or(&self.metric);
        Some(self.samples(device, metric, payload, now))
    }

    fn samples(
        &self,
        device: &str,
        metric: &str,
        payload: &[u8],
        now: Micros,
    ) -> Result<Vec<Sample>, PayloadError> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| PayloadError::NotUtf8)?
            .trim();
        let key = |metric: &str| -> Result<SeriesKey, PayloadError> {
            let tags = self.tags.iter().map(|(k, v)| (k.clone(), v.clone()));
            let key = SeriesKey::with_tags(device, metric, tags);
            key.validate()?;
            Ok(key)
        };
        let sample = |metric: &str, value: f64, ts: Micros| -> Result<Sample, PayloadError> {
            if !value.is_finite() {
                return Err(PayloadError::NonFinite);
            }
            Ok(Sample {
                key: key(metric)?,
                ts,
                value,
            })
        };
        if self.format == PayloadFormat::Number {
            let value = text
                .parse::<f64>()
                .map_err(|_| PayloadError::NotANumber(text.chars().take(40).collect()))?;
            return Ok(vec![sample(metric, value, checked_ts(now)?)?]);
        }
        let json: Value =
            serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))?;
        let ts = match self.timestamp_path.as_str() {
            "" => now,
            path => {
                let ts = epoch_to_micros(number_at(&json, path)?);
                if ts > now.saturating_add(MAX_AHEAD) {
                    return Err(PayloadError::Future(ts));
                }
                ts
            }
        };
        let ts = checked_ts(ts)?;
        if !self.value_path.is_empty() {
            return Ok(vec![sample(
                metric,
                number_at(&json, &self.value_path)?,
                ts,
            )?]);
        }
        let Value::Object(fields) = &json else {
            return Err(PayloadError::NoFields);
        };
        let out: Vec<Sample> = fields
            .iter()
            .filter(|(name, _)| **name != self.timestamp_path)
            .filter_map(|(name, v)| Some((name, v.as_f64()?)))
            .map(|(name, v)| sample(&format!("{metric}{name}"), v, ts))
            .collect::<Result<_, _>>()?;
        if out.is_empty() {
            return Err(PayloadError::NoFields);
        }
        Ok(out)
    }
}

/// Whether a status value says online: true/false, 1/0, or a word.
fn online_word(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "online" | "true" | "1" | "up" | "connected" => Some(true),
            "offline" | "false" | "0" | "down" | "disconnected" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A status field as text: a string (clipped, control characters
/// dropped), or a number written as people write it (`17`, not `17.0`).
fn status_text(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s
            .chars()
            .filter(|c| !c.is_control())
            .take(STATUS_TEXT)
            .collect::<String>(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.is_finite() => f.to_string(),
            _ => return None,
        },
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let text = text.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// How far ahead of the agent's clock a device's own timestamp may be.
const MAX_AHEAD: Micros = 10 * 60 * 1_000_000;

fn number_at(json: &Value, path: &str) -> Result<f64, PayloadError> {
    dash_shared::events::lookup(json, path)
        .ok_or_else(|| PayloadError::MissingField(path.to_owned()))?
        .as_f64()
        .ok_or_else(|| PayloadError::NotNumeric(path.to_owned()))
}

/// Epoch seconds, milliseconds or microseconds, told apart by magnitude.
pub(crate) fn epoch_to_micros(t: f64) -> Micros {
    let micros = match t.abs() {
        a if a < 1e11 => t * 1e6,
        a if a < 1e14 => t * 1e3,
        _ => t,
    };
    micros.round() as Micros
}

fn checked_ts(ts: Micros) -> Result<Micros, PayloadError> {
    if (MIN_TIMESTAMP..MAX_TIMESTAMP).contains(&ts) {
        Ok(ts)
    } else {
        Err(PayloadError::Timestamp(ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_764_000_000_000_000;

    fn mapping(toml_text: &str) -> Mapping {
        let m: Mapping = toml::from_str(toml_text).unwrap();
        m.validate().unwrap();
        m
    }

    #[test]
    fn a_status_reads_online_firmware_model_and_error_codes() {
        let m = mapping(
            "topic = 'devices/{device}/status'\nkind = 'status'\nfirmware_path = 'sys.fw'\ntimestamp_path = 'ts'",
        );
        assert_eq!(m.filter(), "devices/+/status");
        let r = m
            .decode_status(
                "devices/press-1/status",
                br#"{"online": true, "sys": {"fw": "2.4.1"}, "model": "PX-9", "errors": [17, "E-42", 3.5], "ts": 1764000000}"#,
                NOW + 1_000_000,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            DeviceReport {
                device: "press-1".into(),
                time: 1_764_000_000_000_000,
                online: Some(true),
                firmware: Some("2.4.1".into()),
                model: Some("PX-9".into()),
                errors: Some(vec!["17".into(), "E-42".into(), "3.5".into()]),
                error_metric: "error_code".into(),
            }
        );
        // A last will is often a bare word; an empty list clears the errors.
        for (payload, online) in [
            (&b"offline"[..], Some(false)),
            (b" 0 ", Some(false)),
            (b"Online", Some(true)),
            (br#"{"online": "down", "errors": []}"#, Some(false)),
            (br#"{"online": 1}"#, Some(true)),
        ] {
            let r = m
                .decode_status("devices/d/status", payload, NOW)
                .unwrap()
                .unwrap();
            assert_eq!((r.online, r.time), (online, NOW), "{payload:?}");
        }
        let r = m
            .decode_status("devices/d/status", br#"{"errors": []}"#, NOW)
            .unwrap()
            .unwrap();
        assert_eq!(r.errors, Some(vec![]));
        // Refused, with the reason: nothing it knows, a garbled state, a
        // hostile device id, a clock from 1970.
        for (topic, payload, why) in [
            ("devices/d/status", &br#"{"temp": 1}"#[..], "none of online"),
            ("devices/d/status", br#"{"online": "maybe"}"#, "online"),
            ("devices/d/status", br#"[1, 2]"#, "none of online"),
            ("devices/d/status", b"\xff\xfe", "UTF-8"),
            (
                "devices/d/status",
                br#"{"online": true, "ts": 1000}"#,
                "outside",
            ),
        ] {
            let e = m.decode_status(topic, payload, NOW).unwrap().unwrap_err();
            assert!(e.to_string().contains(why), "{payload:?}: {e}");
        }
        // Long and control-laden text is clipped and cleaned.
        let long = format!(r#"{{"sys": {{"fw": "{}\u0007x"}}}}"#, "9".repeat(100));
        let r = m
            .decode_status("devices/d/status", long.as_bytes(), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(r.firmware.unwrap().len(), STATUS_TEXT);
        assert!(m.decode_status("devices/d/other", b"1", NOW).is_none());
    }

    #[test]
    fn a_status_mapping_is_checked_for_what_it_cannot_use() {
        for (text, why) in [
            (
                "topic = 's/{device}/{metric}'\nkind = 'status'",
                "no {metric}",
            ),
            (
                "topic = 's/{device}'\nkind = 'status'\nvalue_path = 'v'",
                "not value_path",
            ),
            (
                "topic = 's/{device}/t'\nonline_path = 'up'",
                "kind = \"status\"",
            ),
        ] {
            let m: Mapping = toml::from_str(text).unwrap();
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn captures_device_and_metric_from_the_topic() {
        let m = mapping("topic = 'sensors/{device}/{metric}'\ntags = { site = 'north' }");
        assert_eq!(m.filter(), "sensors/+/+");
        let s = m
            .decode("sensors/th-01/temp", b" 21.5 ", NOW)
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            vec![Sample {
                key: SeriesKey::with_tags("th-01", "temp", [("site".into(), "north".into())]),
                ts: NOW,
                value: 21.5
            }]
        );
        assert!(m.decode("sensors/th-01", b"1", NOW).is_none());
        assert!(m.decode("sensors/th-01/temp/x", b"1", NOW).is_none());
        assert!(m.decode("other/th-01/temp", b"1", NOW).is_none());
    }

    #[test]
    fn json_value_path_and_timestamp_in_milliseconds() {
        let m = mapping(
            "topic = 'plant/{device}/#'\nformat = 'json'\nvalue_path = 'temp.c'\ntimestamp_path = 'ts'\nmetric = 'temperature'",
        );
        let s = m
            .decode(
                "plant/boiler/a/b",
                br#"{"temp":{"c":81.25},"ts":1764000000123}"#,
                NOW,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (s[0].key.metric.as_str(), s[0].ts, s[0].value),
            ("temperature", 1_764_000_000_123_000, 81.25)
        );
    }

    #[test]
    fn json_objects_give_one_series_per_numeric_field() {
        let m = mapping("topic = 'env/{device}'\nformat = 'json'\nmetric = 'env.'");
        let s = m
            .decode("env/room-1", br#"{"temp":21.5,"rh":40,"fw":"1.2.3"}"#, NOW)
            .unwrap()
            .unwrap();
        let metrics: Vec<_> = s.iter().map(|s| s.key.metric.as_str()).collect();
        assert_eq!(metrics, ["env.rh", "env.temp"]);
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let m = mapping("topic = 's/{device}/{metric}'");
        for bad in [&b"abc"[..], b"", b"\xff\xfe", b"NaN", b"inf"] {
            assert!(
                m.decode("s/d/m", bad, NOW).unwrap().is_err(),
                "{bad:?} accepted"
            );
        }
        let j = mapping(
            "topic = 's/{device}/{metric}'\nformat = 'json'\nvalue_path = 'v'\ntimestamp_path = 't'",
        );
        for bad in [
            &br#"{"v":"x","t":1}"#[..],
            br#"{"t":1764000000}"#,
            br#"{"v":1,"t":0}"#,
            br#"{"v":1,"t":3786912000}"#,
            b"[1,2",
        ] {
            assert!(
                j.decode("s/d/m", bad, NOW).unwrap().is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn samples_stamped_by_a_clock_from_1970_are_refused() {
        let m = mapping("topic = 's/{device}/{metric}'");
        assert_eq!(
            m.decode("s/d/m", b"1", 5_000_000).unwrap(),
            Err(PayloadError::Timestamp(5_000_000))
        );
    }

    #[test]
    fn patterns_without_a_device_or_with_partial_wildcards_are_refused() {
        for bad in [
            "topic = 's/{metric}'",
            "topic = 's/a+/{device}/{metric}'",
            "topic = 's/#/{device}'\nmetric = 'm'",
        ] {
            let m: Mapping = toml::from_str(bad).unwrap();
            assert!(m.validate().is_err(), "{bad} accepted");
        }
    }
}
