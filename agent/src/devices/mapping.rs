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
}

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
    #[error("JSON object has no numeric fields")]
    NoFields,
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
