use proptest::prelude::*;

use super::*;

fn stream() -> StreamId {
    StreamId {
        name: "telemetry".into(),
        incarnation: 0xfeed_beef,
    }
}

fn one_hertz_batch(series: usize, seconds: i64) -> Batch {
    let start = 1_764_000_000 * crate::MICROS_PER_SEC;
    Batch {
        stream: stream(),
        seq: 7,
        floor: 5,
        series: (0..series)
            .map(|s| SeriesBlock {
                key: SeriesKey::with_tags(
                    format!("sensor-{s:05}"),
                    "temperature",
                    [("site".into(), "plant-2".into())],
                ),
                timestamps: (0..seconds)
                    .map(|i| start + i * crate::MICROS_PER_SEC)
                    .collect(),
                values: (0..seconds)
                    .map(|i| 20.0 + ((i * 7 + s as i64) % 40) as f64 / 100.0)
                    .collect(),
            })
            .collect(),
        windows: Vec::new(),
        events: Vec::new(),
    }
}

fn round_trip(msg: &Message) -> Message {
    decode(
        &encode(msg, &Limits::default()).unwrap(),
        &Limits::default(),
    )
    .unwrap()
}

#[test]
fn batch_ack_and_status_round_trip() {
    let batch = Message::Batch(one_hertz_batch(3, 60));
    assert_eq!(round_trip(&batch), batch);
    let ack = Message::Ack(Ack {
        stream: stream(),
        seq: 9,
        outcome: AckOutcome::Rejected {
            reason: "nope".into(),
        },
        committed_through: 8,
        server_time: 1_764_000_000_000_000,
    });
    assert_eq!(round_trip(&ack), ack);
    let status = Message::Status(AgentStatus {
        online: true,
        version: "0.1.0".into(),
        time: 1,
        buffer: crate::BufferStatus {
            records: 2,
            bytes: 300,
            budget_bytes: 4_000,
            oldest: 1_764_000_000_000_000,
            unacked_batches: 3,
            telemetry: crate::ClassCounts {
                dropped: 5,
                rejected: 0,
            },
            transactions: crate::ClassCounts {
                dropped: 0,
                rejected: 6,
            },
            invalid_records: 4,
            corrupt_records: 7,
            recreated: true,
            disk_bytes: 9_000,
        },
        clock: crate::ClockStatus {
            trusted: false,
            offset: -3_000_000,
            unsynced_stamps: 8,
        },
        faults: vec!["disk full".into()],
        devices: Default::default(),
    });
    let bytes = encode(&status, &Limits::default()).unwrap();
    assert_eq!(
        bytes[2], 3,
        "a status without device refusals is written as version 3"
    );
    assert_eq!(round_trip(&status), status);
    let Message::Status(mut with) = status else {
        unreachable!()
    };
    with.devices.refused.insert("payload_too_large".into(), 3);
    with.devices.refused.insert("topic_not_mapped".into(), 1);
    let with = Message::Status(with);
    let bytes = encode(&with, &Limits::default()).unwrap();
    assert_eq!(bytes[2], 4, "device refusals need version 4");
    assert_eq!(round_trip(&with), with);
}

#[test]
fn a_status_with_hostile_refusal_reasons_is_refused() {
    let mut s = AgentStatus::default();
    s.devices.refused.insert("Bad Reason\n".into(), 1);
    assert!(encode(&Message::Status(s.clone()), &Limits::default()).is_err());
    s.devices.refused.clear();
    for i in 0..=MAX_REFUSAL_REASONS {
        s.devices.refused.insert(format!("r{i}"), 1);
    }
    assert!(matches!(
        encode(&Message::Status(s), &Limits::default()),
        Err(EncodeError::Invalid(Invalid::TooManyReasons(_)))
    ));
}

#[test]
fn a_version_1_status_is_read_with_its_fields_in_place() {
    // What an agent of the previous release publishes: 'D' 'S' 1, variant 2
    // (Status), online, version "0.1", time 5, buffered 2, unacked 3, rejected 4.
    let bytes = [b'D', b'S', 1, 2, 1, 3, b'0', b'.', b'1', 10, 2, 3, 4];
    let Message::Status(s) = decode(&bytes, &Limits::default()).unwrap() else {
        panic!("not a status");
    };
    assert!(s.online);
    assert_eq!((s.version.as_str(), s.time), ("0.1", 5));
    assert_eq!(
        (
            s.buffer.records,
            s.buffer.unacked_batches,
            s.buffer.invalid_records
        ),
        (2, 3, 4)
    );
    assert!(s.faults.is_empty());
}

#[test]
fn one_hertz_sensor_costs_a_few_bytes_per_sample() {
    // 100 series x 60 s, the shape of a minute of a small gateway's traffic.
    let batch = one_hertz_batch(100, 60);
    let bytes = encode(&Message::Batch(batch.clone()), &Limits::default()).unwrap();
    let per_sample = bytes.len() as f64 / batch.sample_count() as f64;
    assert!(per_sample < 3.0, "{per_sample:.2} bytes per sample");
}

#[test]
fn other_versions_and_foreign_bytes_are_refused() {
    let mut bytes = encode(&Message::Batch(one_hertz_batch(1, 3)), &Limits::default()).unwrap();
    let limits = Limits::default();
    assert_eq!(
        bytes[2], 1,
        "a batch of plain samples is still written as version 1"
    );
    bytes[2] = PROTOCOL_VERSION + 1;
    assert_eq!(
        decode(&bytes, &limits),
        Err(DecodeError::UnsupportedVersion(PROTOCOL_VERSION + 1))
    );
    assert_eq!(decode(b"{\"json\":1}", &limits), Err(DecodeError::BadMagic));
    assert_eq!(decode(b"DS", &limits), Err(DecodeError::TooShort(2)));
}

#[test]
fn truncated_and_padded_messages_are_refused() {
    let bytes = encode(&Message::Batch(one_hertz_batch(2, 10)), &Limits::default()).unwrap();
    let limits = Limits::default();
    for cut in 3..bytes.len() {
        assert!(
            decode(&bytes[..cut], &limits).is_err(),
            "accepted a cut at {cut}"
        );
    }
    let mut padded = bytes.clone();
    padded.push(0);
    assert_eq!(decode(&padded, &limits), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn a_batch_that_fails_validation_still_shows_its_id() {
    let limits = Limits {
        max_samples: 2,
        ..Limits::default()
    };
    let bytes = encode(&Message::Batch(one_hertz_batch(1, 3)), &Limits::default()).unwrap();
    assert!(decode(&bytes, &limits).is_err());
    assert_eq!(peek_batch_id(&bytes), Some((stream(), 7)));
    assert_eq!(peek_batch_id(b"DS\x01garbage"), None);
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let limits = Limits {
        max_message_bytes: 100,
        ..Limits::default()
    };
    let batch = Message::Batch(one_hertz_batch(10, 10));
    assert!(matches!(
        encode(&batch, &limits),
        Err(EncodeError::TooLarge { .. })
    ));
    let bytes = encode(&batch, &Limits::default()).unwrap();
    assert!(matches!(
        decode(&bytes, &limits),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn samples_from_1970_are_refused_with_the_series_named() {
    let mut batch = one_hertz_batch(2, 3);
    batch.series[1].timestamps[2] = 0;
    let err = encode(&Message::Batch(batch), &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::Invalid(Invalid::TimestampOutOfRange {
                index: 1,
                ts: 0,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_tighter_window_refuses_samples_from_2090() {
    let limits = Limits {
        max_timestamp: 2_000_000_000 * crate::MICROS_PER_SEC,
        ..Limits::default()
    };
    let mut batch = one_hertz_batch(1, 3);
    let y2090 = 3_786_912_000 * crate::MICROS_PER_SEC;
    batch.series[0].timestamps[0] = y2090;
    let bytes = encode(&Message::Batch(batch), &Limits::default()).unwrap();
    let err = decode(&bytes, &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::Invalid(Invalid::TimestampOutOfRange { ts, .. }) if ts == y2090)
    );
}

#[test]
fn too_many_samples_are_refused_before_unpacking() {
    let limits = Limits {
        max_samples: 50,
        ..Limits::default()
    };
    let bytes = encode(&Message::Batch(one_hertz_batch(1, 60)), &Limits::default()).unwrap();
    let err = decode(&bytes, &limits).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::Invalid(Invalid::TooManySamples { count: 60, max: 50 })
    ));
}

#[test]
fn malformed_batches_are_refused() {
    let limits = Limits::default();
    let mut b = one_hertz_batch(1, 3);
    b.seq = 0;
    assert!(encode(&Message::Batch(b), &limits).is_err());
    let mut b = one_hertz_batch(1, 3);
    b.series[0].values.pop();
    assert!(encode(&Message::Batch(b), &limits).is_err());
    let mut b = one_hertz_batch(1, 3);
    b.series[0].values[0] = f64::NAN;
    assert!(encode(&Message::Batch(b), &limits).is_err());
    let mut b = one_hertz_batch(1, 3);
    b.stream.name = String::new();
    assert!(encode(&Message::Batch(b), &limits).is_err());
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,12}"
}

fn block() -> impl Strategy<Value = SeriesBlock> {
    let samples = prop::collection::vec(
        (
            crate::MIN_TIMESTAMP..crate::MAX_TIMESTAMP,
            prop_oneof![
                (-100_000i64..100_000).prop_map(|m| m as f64 / 100.0),
                any::<f64>().prop_filter("finite", |v| v.is_finite()),
            ],
        ),
        1..40,
    );
    let tags = prop::collection::btree_map(text(), "[ -~]{0,8}", 0..4);
    (text(), text(), tags, samples).prop_map(|(device, metric, tags, samples)| SeriesBlock {
        key: SeriesKey::with_tags(device, metric, tags),
        timestamps: samples.iter().map(|s| s.0).collect(),
        values: samples.iter().map(|s| s.1).collect(),
    })
}

fn windows() -> impl Strategy<Value = WindowBlock> {
    let widths = prop::sample::select(vec![1u32, 10, 60, 300, 900]);
    let window = (
        0i64..1_000_000,
        1u64..10_000,
        prop::collection::vec(-1_000_000i64..1_000_000, 4),
        any::<u32>(),
        any::<u32>(),
    );
    (text(), text(), widths, prop::collection::vec(window, 1..20)).prop_map(
        |(device, metric, width, ws)| {
            let w = i64::from(width) * 1_000_000;
            let windows = ws
                .into_iter()
                .map(|(k, count, mut v, a, b)| {
                    v.sort();
                    let (a, b) = ((a as i64 % w) as u32, (b as i64 % w) as u32);
                    let (first_offset, last_offset) = if count == 1 {
                        (a, a)
                    } else {
                        (a.min(b), a.max(b))
                    };
                    Window {
                        start: crate::MIN_TIMESTAMP + k * w,
                        count,
                        sum: v.iter().sum::<i64>() as f64 / 8.0,
                        min: v[0] as f64 / 4.0,
                        max: v[3] as f64 / 4.0,
                        first: v[1] as f64 / 4.0,
                        first_offset,
                        last: v[2] as f64 / 4.0,
                        last_offset,
                    }
                })
                .collect();
            WindowBlock {
                key: SeriesKey::new(device, metric),
                width_secs: width,
                windows,
            }
        },
    )
}

fn event() -> impl Strategy<Value = Event> {
    (
        text(),
        text(),
        crate::MIN_TIMESTAMP..crate::MAX_TIMESTAMP,
        text(),
        -1e6f64..1e6,
    )
        .prop_map(|(source, kind, time, item, amount)| Event {
            source,
            time,
            kind,
            body: format!("{{\"item\":\"{item}\",\"amount\":{amount}}}"),
        })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        text(),
        any::<u64>(),
        1..u64::MAX,
        prop::collection::vec(block(), 0..8),
        prop::collection::vec(windows(), 0..3),
        prop::collection::vec(event(), 0..3),
    )
        .prop_map(|(name, incarnation, seq, series, windows, events)| Batch {
            stream: StreamId { name, incarnation },
            seq,
            floor: seq / 2,
            series,
            windows,
            events,
        })
}

proptest! {
    #[test]
    fn any_valid_batch_round_trips_exactly(b in batch()) {
        let msg = Message::Batch(b);
        let bytes = encode(&msg, &Limits::default()).unwrap();
        let back = decode(&bytes, &Limits::default()).unwrap();
        // Compare bits, not floats: -0.0 and 0.0 must stay apart.
        let (Message::Batch(a), Message::Batch(b)) = (&msg, &back) else { panic!("kind changed") };
        prop_assert_eq!(a.series.len(), b.series.len());
        for (x, y) in a.series.iter().zip(&b.series) {
            prop_assert_eq!(&x.key, &y.key);
            prop_assert_eq!(&x.timestamps, &y.timestamps);
            let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&x.values), bits(&y.values));
        }
        prop_assert_eq!((a.seq, a.floor, &a.stream), (b.seq, b.floor, &b.stream));
        prop_assert_eq!(&a.windows, &b.windows);
        prop_assert_eq!(&a.events, &b.events);
        let version = if a.windows.is_empty() && a.events.is_empty() { 1 } else { 2 };
        prop_assert_eq!(bytes[2], version);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &Limits::default());
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), v in 1u8..=2) {
        let mut bytes = vec![b'D', b'S', v];
        bytes.extend(body);
        let _ = decode(&bytes, &Limits::default());
    }

    #[test]
    fn corrupted_valid_messages_never_panic(b in batch(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = encode(&Message::Batch(b), &Limits::default()).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = decode(&bytes, &Limits::default());
    }
}

#[test]
fn bad_windows_and_events_are_refused_with_the_reason() {
    let limits = Limits::default();
    let window = Window {
        start: 1_764_000_000 * crate::MICROS_PER_SEC,
        count: 3,
        sum: 6.0,
        min: 1.0,
        max: 3.0,
        first: 1.0,
        first_offset: 0,
        last: 3.0,
        last_offset: 59_000_000,
    };
    let with = |width_secs: u32, w: Window, events: Vec<Event>| {
        let mut b = one_hertz_batch(1, 1);
        b.windows = vec![WindowBlock {
            key: SeriesKey::new("d", "m"),
            width_secs,
            windows: vec![w],
        }];
        b.events = events;
        encode(&Message::Batch(b), &limits)
    };
    let bytes = with(60, window, vec![]).unwrap();
    assert_eq!(bytes[2], 2);
    assert!(decode(&bytes, &limits).is_ok());
    let refused = |r: Result<Vec<u8>, EncodeError>, needle: &str| {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    };
    refused(with(7, window, vec![]), "does not divide");
    refused(with(3600, window, vec![]), "does not divide");
    refused(
        with(
            60,
            Window {
                start: window.start + 1,
                ..window
            },
            vec![],
        ),
        "multiple of the width",
    );
    refused(
        with(60, Window { count: 0, ..window }, vec![]),
        "count of 0",
    );
    refused(with(60, Window { max: 0.5, ..window }, vec![]), "min..max");
    refused(
        with(
            60,
            Window {
                last_offset: 60_000_000,
                ..window
            },
            vec![],
        ),
        "offsets",
    );
    refused(
        with(
            60,
            Window {
                sum: f64::NAN,
                ..window
            },
            vec![],
        ),
        "NaN",
    );
    let event = |body: &str| Event {
        source: "till-1".into(),
        time: window.start,
        kind: "sale".into(),
        body: body.into(),
    };
    assert!(with(60, window, vec![event("{\"amount\": 12.5}")]).is_ok());
    refused(with(60, window, vec![event("[1, 2]")]), "not a JSON object");
    refused(
        with(60, window, vec![event("{\"note\": \"a\\u0000b\"}")]),
        "jsonb",
    );
    refused(with(60, window, vec![event("{\"amount\": ")]), "not JSON");
    refused(
        with(
            60,
            window,
            vec![Event {
                time: 0,
                ..event("{}")
            }],
        ),
        "outside the accepted years",
    );
    refused(
        with(
            60,
            window,
            vec![Event {
                kind: String::new(),
                ..event("{}")
            }],
        ),
        "kind is empty",
    );
}
