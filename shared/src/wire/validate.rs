//! What a message must satisfy before it is encoded and after it is
//! decoded: every count, length, timestamp and name checked against
//! [`Limits`], each failure a typed [`Invalid`].

use super::*;

fn check_text(s: &str) -> Result<(), Invalid> {
    if s.len() > MAX_TEXT_LEN {
        return Err(Invalid::TextTooLong(s.len()));
    }
    Ok(())
}

pub(super) fn check_stream(stream: &StreamId) -> Result<(), Invalid> {
    let name = &stream.name;
    if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Invalid::StreamName(name.chars().take(64).collect()));
    }
    Ok(())
}

fn check_block(index: usize, b: &SeriesBlock, limits: &Limits) -> Result<(), Invalid> {
    b.key
        .validate()
        .map_err(|source| Invalid::SeriesKey { index, source })?;
    if b.timestamps.is_empty() {
        return Err(Invalid::EmptySeries { index });
    }
    if b.timestamps.len() != b.values.len() {
        return Err(Invalid::LengthMismatch {
            index,
            timestamps: b.timestamps.len(),
            values: b.values.len(),
        });
    }
    let (min, max) = (limits.min_timestamp, limits.max_timestamp);
    if let Some(ts) = b.timestamps.iter().find(|t| !(min..max).contains(*t)) {
        return Err(Invalid::TimestampOutOfRange {
            index,
            ts: *ts,
            min,
            max,
        });
    }
    if b.values.iter().any(|v| !v.is_finite()) {
        return Err(Invalid::NonFiniteValue { index });
    }
    Ok(())
}

fn check_windows(index: usize, b: &WindowBlock, limits: &Limits) -> Result<(), Invalid> {
    let fail = |reason: String| Err(Invalid::Window { index, reason });
    if let Err(e) = b.key.validate() {
        return fail(format!("bad key: {e}"));
    }
    if b.width_secs == 0 || MAX_WINDOW_SECS % b.width_secs != 0 {
        return fail(format!(
            "width {} s does not divide {MAX_WINDOW_SECS} s",
            b.width_secs
        ));
    }
    if b.windows.is_empty() {
        return fail("no windows".into());
    }
    let width = Micros::from(b.width_secs) * 1_000_000;
    for w in &b.windows {
        if !(limits.min_timestamp..limits.max_timestamp).contains(&w.start) {
            return fail(format!(
                "window start {} µs is outside the accepted years",
                w.start
            ));
        }
        if w.start % width != 0 {
            return fail(format!(
                "window start {} µs is not a multiple of the width",
                w.start
            ));
        }
        if w.count == 0 {
            return fail("a window has a count of 0".into());
        }
        if [w.sum, w.min, w.max, w.first, w.last]
            .iter()
            .any(|v| !v.is_finite())
        {
            return fail("a window has a NaN or infinite aggregate".into());
        }
        if w.min > w.max
            || !(w.min..=w.max).contains(&w.first)
            || !(w.min..=w.max).contains(&w.last)
        {
            return fail("a window's first, last or max is outside its min..max".into());
        }
        if Micros::from(w.first_offset) >= width
            || Micros::from(w.last_offset) >= width
            || w.first_offset > w.last_offset
            || (w.count == 1 && w.first_offset != w.last_offset)
        {
            return fail("a window's first/last offsets are outside it or out of order".into());
        }
    }
    Ok(())
}

fn check_event(index: usize, e: &Event, limits: &Limits) -> Result<(), Invalid> {
    let fail = |reason: String| Err(Invalid::Event { index, reason });
    for (field, v) in [("source", &e.source), ("kind", &e.kind)] {
        if v.is_empty() || v.len() > MAX_EVENT_NAME || v.chars().any(char::is_control) {
            return fail(format!(
                "{field} is empty, longer than {MAX_EVENT_NAME} bytes or has control characters"
            ));
        }
    }
    if !(limits.min_timestamp..limits.max_timestamp).contains(&e.time) {
        return fail(format!("time {} µs is outside the accepted years", e.time));
    }
    if e.body.contains("\\u0000") {
        return fail("body holds \\u0000, which PostgreSQL's jsonb cannot store".into());
    }
    if e.body.len() > MAX_EVENT_BODY {
        return fail(format!(
            "body is {} bytes, more than {MAX_EVENT_BODY}",
            e.body.len()
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&e.body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => fail("body is not a JSON object".into()),
        Err(err) => fail(format!("body is not JSON: {err}")),
    }
}

/// Checks one event as a batch carrying it will be checked.
pub fn validate_event(e: &Event, limits: &Limits) -> Result<(), Invalid> {
    check_event(0, e, limits)
}

/// Checks one reading as a batch carrying it will be checked.
pub fn validate_reading(
    key: &SeriesKey,
    ts: Micros,
    value: f64,
    limits: &Limits,
) -> Result<(), Invalid> {
    key.validate()
        .map_err(|source| Invalid::SeriesKey { index: 0, source })?;
    if !(limits.min_timestamp..limits.max_timestamp).contains(&ts) {
        return Err(Invalid::TimestampOutOfRange {
            index: 0,
            ts,
            min: limits.min_timestamp,
            max: limits.max_timestamp,
        });
    }
    if !value.is_finite() {
        return Err(Invalid::NonFiniteValue { index: 0 });
    }
    Ok(())
}

/// Checks a message against the protocol's rules and `limits`.
pub fn validate(msg: &Message, limits: &Limits) -> Result<(), Invalid> {
    match msg {
        Message::Batch(b) => {
            check_stream(&b.stream)?;
            if b.seq == 0 || b.floor > b.seq {
                return Err(Invalid::Seq {
                    seq: b.seq,
                    floor: b.floor,
                });
            }
            check_counts(b.series.len() + b.windows.len(), b.record_count(), limits)?;
            b.series
                .iter()
                .enumerate()
                .try_for_each(|(i, s)| check_block(i, s, limits))?;
            b.windows
                .iter()
                .enumerate()
                .try_for_each(|(i, w)| check_windows(i, w, limits))?;
            b.events
                .iter()
                .enumerate()
                .try_for_each(|(i, e)| check_event(i, e, limits))
        }
        Message::Ack(a) => {
            check_stream(&a.stream)?;
            match &a.outcome {
                AckOutcome::Rejected { reason } => check_text(reason),
                _ => Ok(()),
            }
        }
        Message::Status(s) => {
            check_text(&s.version)?;
            if s.faults.len() > MAX_FAULTS {
                return Err(Invalid::TooManyFaults(s.faults.len()));
            }
            s.faults.iter().try_for_each(|f| check_text(f))?;
            let refused = &s.devices.refused;
            if refused.len() > MAX_REFUSAL_REASONS {
                return Err(Invalid::TooManyReasons(refused.len()));
            }
            match refused.keys().find(|r| {
                r.is_empty()
                    || r.len() > MAX_REASON_NAME
                    || !r
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            }) {
                Some(bad) => Err(Invalid::ReasonName(bad.chars().take(80).collect())),
                None => Ok(()),
            }
        }
    }
}

pub(super) fn check_counts(series: usize, samples: usize, limits: &Limits) -> Result<(), Invalid> {
    if series > limits.max_series {
        return Err(Invalid::TooManySeries {
            count: series,
            max: limits.max_series,
        });
    }
    if samples > limits.max_samples {
        return Err(Invalid::TooManySamples {
            count: samples,
            max: limits.max_samples,
        });
    }
    Ok(())
}
