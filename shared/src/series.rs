//! Series keys: which device measured what.
//!
//! A series is `device + metric + tags`. Tags are kept sorted by key with no
//! key twice, so two equal series have equal bytes on the wire and one row in
//! the aggregator's series table.

use serde::{Deserialize, Serialize};

/// Longest device id or metric name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Most tags on one series.
pub const MAX_TAGS: usize = 16;

/// Identifies one series within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub device: String,
    pub metric: String,
    /// Sorted by key, keys unique. Use [`SeriesKey::with_tags`] to build.
    pub tags: Vec<(String, String)>,
}

/// Why a series key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesKeyError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control character")]
    ControlChar { field: &'static str },
    #[error("series has {0} tags, more than the limit of {MAX_TAGS}")]
    TooManyTags(usize),
    #[error("tags are not sorted by key or a key repeats ({0:?})")]
    TagsNotCanonical(String),
}

fn check_text(
    field: &'static str,
    s: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), SeriesKeyError> {
    if s.is_empty() && !allow_empty {
        return Err(SeriesKeyError::Empty { field });
    }
    if s.len() > max {
        return Err(SeriesKeyError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(SeriesKeyError::ControlChar { field });
    }
    Ok(())
}

impl SeriesKey {
    /// A key without tags. Call [`SeriesKey::validate`] before trusting it.
    pub fn new(device: impl Into<String>, metric: impl Into<String>) -> Self {
        SeriesKey {
            device: device.into(),
            metric: metric.into(),
            tags: Vec::new(),
        }
    }

    /// A key with tags, put in canonical order (sorted; the last of a repeated key wins).
    pub fn with_tags(
        device: impl Into<String>,
        metric: impl Into<String>,
        tags: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut map = std::collections::BTreeMap::new();
        map.extend(tags);
        SeriesKey {
            device: device.into(),
            metric: metric.into(),
            tags: map.into_iter().collect(),
        }
    }

    /// Checks lengths, characters and tag order.
    pub fn validate(&self) -> Result<(), SeriesKeyError> {
        check_text("device", &self.device, MAX_NAME_LEN, false)?;
        check_text("metric", &self.metric, MAX_NAME_LEN, false)?;
        if self.tags.len() > MAX_TAGS {
            return Err(SeriesKeyError::TooManyTags(self.tags.len()));
        }
        for (k, v) in &self.tags {
            check_text("tag key", k, MAX_TAG_KEY_LEN, false)?;
            check_text("tag value", v, MAX_TAG_VALUE_LEN, true)?;
        }
        if let Some(w) = self.tags.windows(2).find(|w| w[0].0 >= w[1].0) {
            return Err(SeriesKeyError::TagsNotCanonical(w[1].0.clone()));
        }
        Ok(())
    }
}

impl std::fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.device, self.metric)?;
        for (k, v) in &self.tags {
            write!(f, ",{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_tags_sorts_and_dedupes_keys() {
        let key = SeriesKey::with_tags(
            "d",
            "m",
            [
                ("z".into(), "1".into()),
                ("a".into(), "2".into()),
                ("z".into(), "3".into()),
            ],
        );
        assert_eq!(
            key.tags,
            vec![("a".into(), "2".into()), ("z".into(), "3".into())]
        );
        key.validate().unwrap();
    }

    #[test]
    fn unsorted_or_oversized_keys_are_refused() {
        let mut key = SeriesKey::new("d", "m");
        key.tags = vec![("b".into(), "".into()), ("a".into(), "".into())];
        assert!(matches!(
            key.validate(),
            Err(SeriesKeyError::TagsNotCanonical(_))
        ));
        assert!(SeriesKey::new("", "m").validate().is_err());
        assert!(SeriesKey::new("d", "m".repeat(129)).validate().is_err());
        assert!(SeriesKey::new("d\n", "m").validate().is_err());
    }
}
