use super::*;

fn sample(i: i64) -> Sample {
    Sample {
        key: SeriesKey::new(format!("d{}", i % 3), "temp"),
        ts: 1_764_000_000_000_000 + i * 1_000_000,
        value: i as f64 / 10.0,
    }
}

/// Opens the buffer again; sled's flusher thread may hold the previous
/// instance's lock for a moment after it is dropped.
async fn reopen(dir: &Path) -> Buffer {
    for _ in 0..100 {
        if let Ok(b) = Buffer::open(dir) {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Buffer::open(dir).unwrap()
}

fn decode(bytes: &[u8]) -> Batch {
    match wire::decode(bytes, &Limits::default()).unwrap() {
        Message::Batch(b) => b,
        other => panic!("not a batch: {other:?}"),
    }
}

#[tokio::test]
async fn sealed_batches_survive_a_reopen_with_the_same_seq_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (stream, bytes) = {
        let buf = Buffer::open(dir.path()).unwrap();
        buf.append(&(0..10).map(sample).collect::<Vec<_>>())
            .unwrap();
        buf.flush().await.unwrap();
        assert_eq!(buf.seal(4).await.unwrap(), Some(1));
        (buf.stream().clone(), buf.batch_bytes(1).unwrap().unwrap())
    };
    let buf = reopen(dir.path()).await;
    assert_eq!(buf.stream(), &stream);
    assert_eq!(buf.batch_bytes(1).unwrap().unwrap(), bytes);
    assert_eq!(buf.unsealed(), 6);
    assert_eq!(buf.seal(100).await.unwrap(), Some(2));
    assert_eq!(buf.seal(100).await.unwrap(), None);
    let b2 = decode(&buf.batch_bytes(2).unwrap().unwrap());
    assert_eq!((b2.seq, b2.floor, b2.sample_count()), (2, 1, 6));
}

#[tokio::test]
async fn samples_come_out_once_and_in_order_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(dir.path()).unwrap();
    let all: Vec<Sample> = (0..25).map(sample).collect();
    buf.append(&all).unwrap();
    let mut seen = Vec::new();
    while let Some(seq) = buf.seal(7).await.unwrap() {
        let b = decode(&buf.batch_bytes(seq).unwrap().unwrap());
        for block in b.series {
            for (ts, v) in block.timestamps.iter().zip(&block.values) {
                seen.push(Sample {
                    key: block.key.clone(),
                    ts: *ts,
                    value: *v,
                });
            }
        }
    }
    seen.sort_by_key(|s| s.ts);
    assert_eq!(seen, all);
    assert_eq!(buf.outbox_seqs(100).unwrap(), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn settle_drops_the_acked_batch_and_everything_through() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(dir.path()).unwrap();
    buf.append(&(0..10).map(sample).collect::<Vec<_>>())
        .unwrap();
    while buf.seal(2).await.unwrap().is_some() {}
    assert_eq!(buf.settle(4, 2).unwrap(), 3);
    assert_eq!(buf.outbox_seqs(100).unwrap(), vec![3, 5]);
    // The floor of the next batch is the lowest unacked seq.
    buf.append(&[sample(99)]).unwrap();
    let seq = buf.seal(10).await.unwrap().unwrap();
    assert_eq!(decode(&buf.batch_bytes(seq).unwrap().unwrap()).floor, 3);
}

#[tokio::test]
async fn a_buffer_of_bare_samples_is_converted_to_records_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an agent of protocol version 1 left behind.
        let db = sled::open(dir.path()).unwrap();
        let samples = db.open_tree("samples").unwrap();
        for i in 0..5u64 {
            let bytes = postcard::to_allocvec(&sample(i as i64)).unwrap();
            samples.insert(be(i), bytes).unwrap();
        }
        let meta = db.open_tree("meta").unwrap();
        meta.insert("incarnation", &be(42)).unwrap();
        meta.insert("next_seq", &be(1)).unwrap();
        db.flush().unwrap();
    }
    let buf = reopen(dir.path()).await;
    assert_eq!(buf.stream().incarnation, 42);
    assert_eq!(buf.unsealed(), 5);
    let seq = buf.seal(100).await.unwrap().unwrap();
    assert_eq!(
        decode(&buf.batch_bytes(seq).unwrap().unwrap()).sample_count(),
        5
    );
}

#[tokio::test]
async fn events_and_idempotency_keys_are_stored_together() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(dir.path()).unwrap();
    let event = dash_shared::Event {
        source: "till-1".into(),
        time: 1_764_000_000_000_000,
        kind: "sale".into(),
        body: "{\"amount\":3.5}".into(),
    };
    let records = vec![Record::Event(event.clone()), Record::Sample(sample(1))];
    buf.append_records(Class::Transactions, &records, &[b"pos\0k1".to_vec()])
        .unwrap();
    buf.flush().await.unwrap();
    assert!(buf.seen(b"pos\0k1").unwrap());
    assert!(!buf.seen(b"pos\0k2").unwrap());
    let seq = buf.seal(100).await.unwrap().unwrap();
    let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
    assert_eq!(batch.events, vec![event]);
    assert_eq!(batch.sample_count(), 1);
    assert_eq!(buf.forget_keys(i64::MAX).unwrap(), 1);
    assert!(!buf.seen(b"pos\0k1").unwrap());
}

#[tokio::test]
async fn windows_are_sealed_once_closed_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rules = vec![AggregateRule {
        device: "d*".into(),
        metric: "temp".into(),
        window_secs: 60,
        keep_raw: true,
        late_secs: 2,
    }];
    let now = dash_shared::now_micros();
    let minute = 60_000_000;
    let closed_start = (now / minute - 5) * minute;
    let reading = |ts: Micros, v: f64| Sample {
        key: SeriesKey::new("d1", "temp"),
        ts,
        value: v,
    };
    let old: Vec<Sample> = (0..30)
        .map(|i| reading(closed_start + i * 4_000_000, i as f64))
        .collect();
    // A reading in the window still open is not sealed yet.
    let open = reading(now + minute, 99.0);
    {
        let buf = Buffer::open(dir.path())
            .unwrap()
            .with_aggregation(rules.clone());
        buf.append(&old).unwrap();
        buf.append(std::slice::from_ref(&open)).unwrap();
        buf.flush().await.unwrap();
    } // a restart before anything was sealed
    let buf = reopen(dir.path()).await.with_aggregation(rules);
    let seq = buf.seal(1_000).await.unwrap().unwrap();
    let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
    assert_eq!(batch.windows.len(), 1);
    let w = &batch.windows[0].windows;
    let count: u64 = w.iter().map(|w| w.count).sum();
    let sum: f64 = w.iter().map(|w| w.sum).sum();
    assert_eq!((count, sum), (30, (0..30).sum::<i64>() as f64));
    assert_eq!(w[0].start, closed_start);
    assert_eq!(
        batch.sample_count(),
        31,
        "keep_raw sends the raw samples too, the open one included"
    );
    // Sealed windows are gone from the buffer; the open one waits.
    assert_eq!(buf.seal(1_000).await.unwrap(), None);
    assert_eq!(buf.pending.len(), 1);
}

#[tokio::test]
async fn a_corrupt_chunk_is_moved_aside_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(dir.path()).unwrap();
    for i in 0..3 {
        buf.append(&(i * 10..i * 10 + 10).map(sample).collect::<Vec<_>>())
            .unwrap();
    }
    // Flip a byte in the middle chunk, as a bad sector would.
    let (key, value) = buf.samples.iter().nth(1).unwrap().unwrap();
    let mut bad = value.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    buf.samples.insert(&key, bad).unwrap();
    let seq = buf.seal(1_000).await.unwrap().unwrap();
    let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
    assert_eq!(batch.sample_count(), 20, "the two good chunks are sent");
    assert_eq!(buf.corrupt_records(), 10);
    assert_eq!(buf.quarantine.len(), 1);
    assert_eq!(buf.unsealed(), 0);
    assert_eq!(buf.seal(1_000).await.unwrap(), None);
}

#[tokio::test]
async fn a_buffer_that_cannot_be_opened_is_moved_aside_and_a_fresh_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("conf"), b"garbage garbage garbage").unwrap();
    std::fs::write(path.join("db"), vec![0x5a; 100_000]).unwrap();
    let (buf, moved) = Buffer::open_or_recover(&path, Recovery::Open).unwrap();
    let moved = moved.expect("the broken buffer was moved aside");
    assert!(
        moved.join("db").exists(),
        "its files are kept for inspection"
    );
    assert_eq!(buf.unsealed(), 0);
    buf.append(&[sample(1)]).unwrap();
    assert_eq!(buf.seal(10).await.unwrap(), Some(1));
    // A healthy buffer is opened as it is.
    drop(buf);
    let mut again = Buffer::open_or_recover(&path, Recovery::Open);
    for _ in 0..100 {
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        again = Buffer::open_or_recover(&path, Recovery::Open);
    }
    let (buf, moved) = again.unwrap();
    assert!(moved.is_none());
    assert_eq!(buf.unacked(), 1);
}

#[tokio::test]
async fn after_sled_panics_a_buffer_is_read_back_then_moved_aside_with_its_records_counted() {
    assert_eq!(Recovery::after_sled_panics(0), Recovery::Open);
    assert_eq!(
        Recovery::after_sled_panics(MAX_SLED_PANICS - 1),
        Recovery::ReadBack
    );
    assert!(matches!(
        Recovery::after_sled_panics(MAX_SLED_PANICS),
        Recovery::MoveAside(_)
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    let buf = Buffer::open(&path).unwrap();
    buf.append(&(0..5).map(sample).collect::<Vec<_>>()).unwrap();
    buf.flush().await.unwrap();
    drop(buf);
    // Read back after one panic: opened as it is, nothing lost.
    let mut opened = Buffer::open_or_recover(&path, Recovery::ReadBack);
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        opened = Buffer::open_or_recover(&path, Recovery::ReadBack);
    }
    let (buf, moved) = opened.unwrap();
    assert!(moved.is_none());
    assert_eq!(buf.unsealed(), 5);
    drop(buf);
    // After too many: moved aside whatever it holds; its records are counted.
    let (buf, moved) =
        Buffer::open_or_recover(&path, Recovery::after_sled_panics(MAX_SLED_PANICS)).unwrap();
    assert!(moved.expect("moved aside").join("db").exists());
    assert_eq!(buf.unsealed(), 0);
    assert_eq!(buf.counts().corrupt, 5);
    assert!(buf.status().unwrap().recreated);
}

/// Every record the buffer holds, sealed or not, by value.
fn held(buf: &Buffer) -> Vec<(Class, f64)> {
    let mut out = Vec::new();
    for class in Class::ALL {
        for item in buf.tree(class).iter() {
            let (_, v) = item.unwrap();
            for r in read_chunk(&v).unwrap() {
                if let Record::Sample(s) = r {
                    out.push((class, s.value));
                }
            }
        }
    }
    for item in buf.outbox.iter() {
        let (k, v) = item.unwrap();
        let class = buf
            .batch_info(read_u64(&k).unwrap())
            .unwrap()
            .unwrap()
            .class;
        for block in decode(&v).series {
            out.extend(block.values.iter().map(|v| (class, *v)));
        }
    }
    out
}

impl Buffer {
    /// The bytes [`Buffer::bytes`] should say, counted from the trees.
    fn recount_bytes(&self) -> u64 {
        let mut n = 0;
        for tree in [
            &self.samples,
            &self.transactions,
            &self.pending,
            &self.outbox,
        ] {
            for item in tree.iter() {
                let (k, v) = item.unwrap();
                n += entry_bytes(&k, &v);
            }
        }
        n
    }
}

fn records(class: Class, values: std::ops::Range<i64>) -> Vec<Record> {
    values
        .map(|i| {
            let mut s = sample(i);
            if class == Class::Transactions {
                s.key = SeriesKey::new("till", "sales.amount");
            }
            Record::Sample(s)
        })
        .collect()
}

#[tokio::test]
async fn at_the_budget_telemetry_drops_its_oldest_and_transactions_push_it_out_before_being_refused()
 {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget {
        max_bytes: 6_000,
        ..Budget::default()
    };
    let buf = Buffer::open(dir.path()).unwrap().with_budget(budget);
    assert!(
        buf.append_records(
            Class::Transactions,
            &records(Class::Transactions, 0..20),
            &[]
        )
        .unwrap()
    );
    let mut next = 1_000;
    while buf.counts().dropped[0] == 0 {
        assert!(
            buf.append_records(
                Class::Telemetry,
                &records(Class::Telemetry, next..next + 20),
                &[]
            )
            .unwrap()
        );
        next += 20;
        buf.seal(30).await.unwrap();
        assert!(buf.bytes() <= budget.max_bytes, "{} bytes", buf.bytes());
    }
    // Fill the last bytes with single readings, unsealed.
    while buf.bytes() < budget.max_bytes - 100 {
        assert!(buf.append(&[sample(next)]).unwrap());
        next += 1;
    }
    // Telemetry made room by dropping its own oldest; transactions stay.
    let before = held(&buf);
    let telemetry = before
        .iter()
        .filter(|(c, _)| *c == Class::Telemetry)
        .count() as u64;
    assert_eq!(telemetry + buf.counts().dropped[0], (next - 1_000) as u64);
    assert_eq!(
        before
            .iter()
            .filter(|(c, _)| *c == Class::Transactions)
            .count(),
        20
    );
    assert!(
        before.iter().any(|(_, v)| *v == (next - 1) as f64 / 10.0),
        "the newest is kept"
    );
    // A transaction pushes out telemetry; it is never pushed out itself.
    let dropped = buf.counts().dropped[0];
    assert!(
        buf.append_records(
            Class::Transactions,
            &records(Class::Transactions, 30..40),
            &[]
        )
        .unwrap()
    );
    assert!(buf.counts().dropped[0] > dropped);
    // Once no telemetry is left, transactions are refused, counted, and
    // their idempotency key is not stored.
    let key = b"pos\0k9".to_vec();
    let mut from = 100;
    let refused = loop {
        let stored = buf
            .append_records(
                Class::Transactions,
                &records(Class::Transactions, from..from + 10),
                std::slice::from_ref(&key),
            )
            .unwrap();
        from += 10;
        if !stored {
            break from - 10;
        }
        assert!(buf.bytes() <= budget.max_bytes);
        buf.forget_keys(i64::MAX).unwrap();
    };
    assert_eq!(buf.counts().rejected[1], 10);
    assert!(!buf.seen(&key).unwrap());
    assert_eq!(buf.counts().dropped[1], 0);
    // Refused only when dropping all the telemetry left would not make
    // room; every telemetry record is held or counted as dropped.
    let now_held = held(&buf);
    let count = |c: Class| now_held.iter().filter(|(k, _)| *k == c).count() as u64;
    let telemetry_appended = (next - 1_000) as u64;
    assert_eq!(
        count(Class::Telemetry) + buf.counts().dropped[0],
        telemetry_appended
    );
    assert_eq!(count(Class::Transactions), 20 + 10 + (refused - 100) as u64);
    // The counts survive a restart, and the bytes are counted the same way.
    let (counts, bytes) = (buf.counts(), buf.bytes());
    buf.flush().await.unwrap();
    drop(buf);
    let buf = reopen(dir.path()).await;
    assert_eq!((buf.counts(), buf.bytes()), (counts, bytes));
    let status = buf.status().unwrap();
    assert_eq!(status.telemetry.dropped, counts.dropped[0]);
    assert_eq!(status.transactions.rejected, 10);
    assert_eq!(status.records, now_held.len() as u64);
    assert_eq!(status.transactions.dropped, 0);
}

#[tokio::test]
async fn a_batch_that_fails_its_checksum_is_moved_aside_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(dir.path()).unwrap();
    buf.append(&(0..10).map(sample).collect::<Vec<_>>())
        .unwrap();
    let seq = buf.seal(100).await.unwrap().unwrap();
    let mut bytes = buf.outbox.get(be(seq)).unwrap().unwrap().to_vec();
    // A flipped bit in a value still decodes: only the checksum sees it.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    buf.outbox.insert(be(seq), bytes).unwrap();
    assert!(buf.batch_bytes(seq).unwrap().is_none());
    assert_eq!(buf.corrupt_records(), 10);
    assert_eq!(buf.unacked(), 0);
    assert_eq!(buf.bytes(), 0);
    assert_eq!(buf.quarantine.len(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Class, u8),
    Seal(u8),
    Ack(u8),
    Crash,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (prop_oneof![Just(Class::Telemetry), Just(Class::Transactions)], 1u8..40)
            .prop_map(|(c, n)| Op::Append(c, n)),
        2 => (1u8..60).prop_map(Op::Seal),
        2 => (1u8..4).prop_map(Op::Ack),
        1 => Just(Op::Crash),
    ]
}

#[tokio::test]
async fn records_sled_lost_on_reopen_are_counted_not_silent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let buf = Buffer::open(dir.path()).unwrap();
        buf.append(&(0..10).map(sample).collect::<Vec<_>>())
            .unwrap();
        buf.flush().await.unwrap();
    }
    // What a damaged log does: sled replays less than was written.
    let mark = Mark::read(&mark_path(dir.path())).unwrap();
    assert_eq!(mark.held, 10);
    Mark { held: 25, ..mark }
        .write(&mark_path(dir.path()))
        .unwrap();
    let buf = reopen(dir.path()).await;
    assert_eq!(buf.corrupt_records(), 15);
    assert!(
        buf.damage()
            .unwrap()
            .contains("15 buffered records were lost")
    );
    // A buffer that came back as a new one counts everything it held.
    Mark {
        incarnation: 7,
        held: 40,
        ..mark
    }
    .write(&mark_path(dir.path()))
    .unwrap();
    drop(buf);
    let buf = reopen(dir.path()).await;
    assert_eq!(buf.corrupt_records(), 55);
    assert!(buf.status().unwrap().recreated);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
    /// The buffer against a reference of sets: every record acknowledged
    /// (appended and flushed) is delivered (its batch acked), held, or
    /// counted as dropped, exactly; transactions are never dropped; the
    /// budget holds; a refused append leaves nothing and is counted.
    #[test]
    fn the_buffer_keeps_or_counts_every_acknowledged_record(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let budget = Budget { max_bytes: 8_000, ..Budget::default() };
            let mut buf = Buffer::open(dir.path()).unwrap().with_budget(budget);
            let mut acked: std::collections::BTreeMap<i64, Class> = Default::default();
            let mut delivered = std::collections::BTreeSet::new();
            let mut rejected = [0u64; 2];
            let mut next = 0i64;
            for op in ops {
                match op {
                    Op::Append(class, n) => {
                        let n = i64::from(n);
                        let stored = buf.append_records(class, &records(class, next..next + n), &[]).unwrap();
                        buf.flush().await.unwrap();
                        if stored {
                            acked.extend((next..next + n).map(|v| (v, class)));
                        } else {
                            rejected[class.index()] += n as u64;
                        }
                        next += n;
                        assert!(buf.bytes() <= budget.max_bytes);
                    }
                    Op::Seal(max) => {
                        buf.seal(usize::from(max)).await.unwrap();
                    }
                    Op::Ack(k) => {
                        for seq in buf.outbox_seqs(usize::from(k)).unwrap() {
                            let batch = decode(&buf.batch_bytes(seq).unwrap().unwrap());
                            for block in batch.series {
                                delivered.extend(block.values.iter().map(|v| (v * 10.0).round() as i64));
                            }
                            buf.settle(seq, 0).unwrap();
                        }
                    }
                    Op::Crash => {
                        drop(buf);
                        buf = reopen(dir.path()).await.with_budget(budget);
                    }
                }
                let held: std::collections::BTreeSet<i64> =
                    held(&buf).iter().map(|(_, v)| (v * 10.0).round() as i64).collect();
                let counts = buf.counts();
                for class in Class::ALL {
                    let lost = acked
                        .iter()
                        .filter(|(v, c)| **c == class && !held.contains(v) && !delivered.contains(v))
                        .count() as u64;
                    assert_eq!(lost, counts.dropped[class.index()], "{class:?}");
                    assert_eq!(rejected[class.index()], counts.rejected[class.index()]);
                }
                assert_eq!(counts.dropped[Class::Transactions.index()], 0);
                assert_eq!(buf.bytes(), buf.recount_bytes(), "bytes kept in memory match the trees");
            }
        });
    }
}

#[test]
fn sessions_open_at_a_stop_expire_from_the_next_start_and_need_no_room() {
    use crate::buffer::{SessionOp, client_key};
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(dir.path()).unwrap().with_budget(Budget {
        max_bytes: 1,
        ..Budget::default()
    });
    let client = client_key("dev-1");
    // Session writes alone go in even when the budget is full.
    let ops = [
        SessionOp::Meta {
            client,
            ended: 0,
            expiry_secs: 60,
        },
        SessionOp::AwaitingRelease { client, pkid: 3 },
    ];
    assert!(
        buf.append_with_sessions(Class::Telemetry, &[], &[], &ops)
            .unwrap()
    );
    let stored = buf.session(&client).unwrap().unwrap();
    assert_eq!(
        (stored.ended, stored.awaiting_release.clone()),
        (0, vec![3])
    );
    // The agent stopped with the connection open: its expiry counts from the start.
    let start = 1_800_000_000_000_000;
    assert_eq!(buf.expire_sessions(start).unwrap(), 0);
    assert_eq!(buf.session(&client).unwrap().unwrap().ended, start);
    assert_eq!(
        buf.expire_sessions(start + 30_000_000).unwrap(),
        0,
        "within its 60 s"
    );
    assert_eq!(buf.expire_sessions(start + 61_000_000).unwrap(), 1);
    assert_eq!(buf.session(&client).unwrap(), None);
}
