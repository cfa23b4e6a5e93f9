//! The aggregator's ingest against a real PostgreSQL, and hostile payloads
//! through a real broker.

use std::sync::Arc;
use std::time::Duration;

use dash_aggregator::ingest::Ingestor;
use dash_aggregator::storage::tiers::TieredWriter;
use dash_aggregator::telemetry::metrics::Metrics;
use dash_shared::wire::{self, Limits};
use dash_shared::{AckOutcome, AgentId, Batch, Message, SeriesBlock, SeriesKey, TenantId};
use dash_tests::fixture::{deliveries, encode, stream};
use dash_tests::pg::TestPostgres;
use dash_tests::{eventually, metrics_text};

fn batch(seq: u64, floor: u64, incarnation: u64) -> Batch {
    let t0 = 1_764_000_000_000_000 + seq as i64 * 10_000_000;
    Batch::samples(
        stream(incarnation),
        seq,
        floor,
        vec![SeriesBlock {
            key: SeriesKey::with_tags("th-1", "temp", [("site".into(), "north".into())]),
            timestamps: (0..10).map(|i| t0 + i * 1_000_000).collect(),
            values: (0..10).map(|i| seq as f64 * 100.0 + i as f64).collect(),
        }],
    )
}

fn ids() -> (TenantId, AgentId) {
    (
        TenantId::new("acme").unwrap(),
        AgentId::new("gw-1").unwrap(),
    )
}

#[tokio::test]
async fn a_redelivered_batch_is_acked_again_but_stored_once() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor();
    let (tenant, agent) = ids();
    let bytes = encode(&batch(1, 1, 7));
    let first = ing.handle(&tenant, &agent, &bytes).await.unwrap().unwrap();
    assert_eq!(first.outcome, AckOutcome::Committed { samples: 10 });
    let again = ing.handle(&tenant, &agent, &bytes).await.unwrap().unwrap();
    assert_eq!(again.outcome, AckOutcome::Duplicate);
    assert_eq!((again.seq, again.committed_through), (1, 1));
    assert_eq!(pg.total().await, 10);
}

#[tokio::test]
async fn one_group_holding_a_batch_twice_stores_it_once_and_answers_both() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor();
    let (tenant, agent) = ids();
    let (one, two, junk) = (
        encode(&batch(1, 1, 7)),
        encode(&batch(2, 1, 7)),
        b"junk".to_vec(),
    );
    let group = deliveries(&tenant, &agent, [&one[..], &two[..], &one[..], &junk[..]]);
    let acks = ing.handle_group(&group).await.unwrap();
    let outcomes: Vec<_> = acks
        .iter()
        .map(|a| a.as_ref().map(|a| a.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Some(AckOutcome::Committed { samples: 10 }),
            Some(AckOutcome::Committed { samples: 10 }),
            Some(AckOutcome::Duplicate),
            None,
        ]
    );
    assert_eq!(acks[1].as_ref().unwrap().committed_through, 2);
    assert_eq!(pg.total().await, 20);
}

#[tokio::test]
async fn concurrent_deliveries_of_one_batch_store_it_once() {
    let pg = TestPostgres::start().await;
    let ing = Arc::new(pg.ingestor());
    let bytes = Arc::new(encode(&batch(1, 1, 7)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (ing, bytes) = (ing.clone(), bytes.clone());
            tokio::spawn(async move {
                let (tenant, agent) = ids();
                ing.handle(&tenant, &agent, &bytes)
                    .await
                    .unwrap()
                    .unwrap()
                    .outcome
            })
        })
        .collect();
    let mut committed = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), AckOutcome::Committed { .. }) {
            committed += 1;
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(pg.total().await, 10);
}

#[tokio::test]
async fn out_of_order_batches_are_each_stored_once_and_the_ledger_stays_small() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor();
    let (tenant, agent) = ids();
    for seq in [3, 1, 5, 2, 4, 3, 1, 5] {
        ing.handle(&tenant, &agent, &encode(&batch(seq, 1, 7)))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(pg.total().await, 50);
    let (through, above): (i64, Vec<i64>) =
        sqlx::query_as("SELECT committed_through, above FROM ingest_ledger")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!((through, above), (5, vec![]));
}

#[tokio::test]
async fn a_new_buffer_incarnation_starts_its_own_sequence() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor();
    let (tenant, agent) = ids();
    ing.handle(&tenant, &agent, &encode(&batch(1, 1, 7)))
        .await
        .unwrap();
    // The agent lost its buffer and drew a new incarnation: seq 1 again is new data.
    let ack = ing
        .handle(&tenant, &agent, &encode(&batch(1, 1, 8)))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ack.outcome, AckOutcome::Committed { .. }));
    assert_eq!(pg.total().await, 20);
}

#[tokio::test]
async fn a_batch_breaking_the_limits_is_quarantined_and_acked_as_rejected() {
    let pg = TestPostgres::start().await;
    let metrics = Arc::new(Metrics::default());
    let strict = Limits {
        max_samples: 5,
        ..Limits::default()
    };
    let ing = Ingestor::new(
        pg.pool.clone(),
        TieredWriter::default(),
        strict,
        metrics.clone(),
    );
    let (tenant, agent) = ids();
    let bytes = encode(&batch(1, 1, 7));
    let ack = ing.handle(&tenant, &agent, &bytes).await.unwrap().unwrap();
    assert!(
        matches!(&ack.outcome, AckOutcome::Rejected { reason } if reason.contains("samples")),
        "{ack:?}"
    );
    // Resent: rejected again, kept once.
    ing.handle(&tenant, &agent, &bytes).await.unwrap().unwrap();
    let kept: Vec<(Option<i64>, Vec<u8>)> =
        sqlx::query_as("SELECT seq, payload FROM ingest_rejections")
            .fetch_all(&pg.pool)
            .await
            .unwrap();
    assert_eq!(kept, vec![(Some(1), bytes)]);
    assert_eq!(pg.total().await, 0);
    assert_eq!(metrics.rejected_count("invalid"), 2);
}

/// Publishes raw payloads on a batch topic through the embedded broker.
async fn publish_raw(port: u16, topic: &str, payloads: Vec<Vec<u8>>) {
    let mut opts = rumqttc::MqttOptions::new("hostile", "127.0.0.1", port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    let n = payloads.len();
    for p in payloads {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, p)
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while acked < n {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = events.poll().await {
                acked += 1;
            }
        }
    })
    .await
    .expect("broker acked the hostile publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_batch_topic_is_rejected_and_other_agents_keep_flowing() {
    let stack = dash_tests::stack::Stack::start("acme", "gw-ok").await;
    let addr = stack.device_addr();
    // Every field bound, so that each lives to the end of the test.
    let dash_tests::stack::Stack {
        dir: _dir,
        pg,
        mut aggregator,
        agent: _agent,
        broker,
        http,
        devices: _,
    } = stack;
    let healthy = |range: std::ops::Range<i64>| {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        dash_tests::device::publish(addr, "th-ok", "temp", range, stop, Duration::from_secs(30))
    };
    // The healthy agent's first readings arrive: the aggregator is subscribed.
    assert_eq!(healthy(0..200).await.acked.len(), 200);
    eventually(Duration::from_secs(30), "the first readings", || async {
        (pg.total().await == 200).then_some(())
    })
    .await;

    let valid = encode(&batch(1, 1, 9));
    let mut wrong_version = valid.clone();
    wrong_version[2] = 99;
    let hostile = vec![
        b"not a dash message".to_vec(),
        valid[..valid.len() / 2].to_vec(),
        wrong_version,
        vec![b'D'; 1024 * 1024 + 100],
        Vec::new(),
    ];
    publish_raw(broker, "dash/v1/evil/gw-x/batch", hostile).await;

    // And keeps flowing afterwards.
    assert_eq!(healthy(200..400).await.acked.len(), 200);
    eventually(Duration::from_secs(30), "the later readings", || async {
        (pg.total().await == 400).then_some(())
    })
    .await;
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ingest_rejections WHERE tenant = 'evil'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(kept, 5, "every hostile payload is kept for inspection");
    let text = metrics_text(http).await;
    for reason in [
        "bad_magic",
        "malformed",
        "unsupported_version",
        "too_large",
        "too_short",
    ] {
        assert!(
            text.contains(&format!(
                "dash_ingest_rejected_payloads_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted:\n{text}"
        );
    }
    assert!(
        !text.contains("dash_ingest_payload_bytes_total 0\n"),
        "payload bytes not counted:\n{text}"
    );
    let log = aggregator.log();
    assert!(
        log.contains("batch payload rejected") && log.contains("not supported"),
        "reasons not logged:\n{log}"
    );
    assert!(aggregator.is_running());
}

#[tokio::test]
async fn readings_from_the_future_are_quarantined_once_and_the_rest_stored() {
    let pg = TestPostgres::start().await;
    let metrics = Arc::new(Metrics::default());
    let ing = Ingestor::new(
        pg.pool.clone(),
        TieredWriter::new(Default::default()),
        Limits::default(),
        metrics.clone(),
    );
    let (tenant, agent) = ids();
    // A gateway whose clock runs an hour ahead, beside one that is right.
    let now = dash_shared::now_micros();
    let mut b = batch(1, 1, 9);
    b.series[0].timestamps = (0..10).map(|i| now - 60_000_000 + i * 1_000_000).collect();
    b.series.push(SeriesBlock {
        key: SeriesKey::new("th-ahead", "temp"),
        timestamps: (0..4)
            .map(|i| now + 3_600_000_000 + i * 1_000_000)
            .collect(),
        values: vec![1.0, 2.0, 3.0, 4.0],
    });
    b.events.push(dash_shared::Event {
        source: "till-1".into(),
        time: now + 3_600_000_000,
        kind: "sale".into(),
        body: "{}".into(),
    });
    let bytes = encode(&b);
    let ack = ing.handle(&tenant, &agent, &bytes).await.unwrap().unwrap();
    assert_eq!(ack.outcome, AckOutcome::Committed { samples: 10 });
    // A resend of the same batch quarantines nothing again.
    let again = ing.handle(&tenant, &agent, &bytes).await.unwrap().unwrap();
    assert_eq!(again.outcome, AckOutcome::Duplicate);
    assert_eq!(pg.total().await, 10);
    let held: Vec<(String, String, String)> =
        sqlx::query_as("SELECT kind, series, reason FROM ingest_quarantine ORDER BY kind, ts")
            .fetch_all(&pg.pool)
            .await
            .unwrap();
    assert_eq!(held.len(), 5);
    assert_eq!(
        held[0],
        (
            "event".to_owned(),
            "till-1/sale".to_owned(),
            "future".to_owned()
        )
    );
    assert!(
        held[1..]
            .iter()
            .all(|(k, s, r)| k == "sample" && s.starts_with("th-ahead") && r == "future")
    );
    let text = metrics.render();
    assert!(
        text.contains("dash_ingest_quarantined_total{kind=\"sample\",reason=\"future\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn a_status_is_recorded_per_agent_and_answered_with_the_server_time() {
    let pg = TestPostgres::start().await;
    let ing = pg.ingestor();
    let (tenant, agent) = ids();
    let mut status = dash_shared::AgentStatus {
        online: true,
        version: "9.9.9".into(),
        time: dash_shared::now_micros(),
        ..Default::default()
    };
    status.buffer.telemetry.dropped = 12;
    status.faults = vec!["disk full".into()];
    let bytes = wire::encode(&Message::Status(status.clone()), &Limits::default()).unwrap();
    let before = dash_shared::now_micros();
    let beacon = ing
        .record_status(&tenant, &agent, &bytes)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(beacon.seq, 0, "a time-only ack");
    assert!(beacon.server_time >= before);
    // The last will: offline, no answer; the row is replaced.
    status.online = false;
    status.faults.clear();
    let bytes = wire::encode(&Message::Status(status), &Limits::default()).unwrap();
    assert!(
        ing.record_status(&tenant, &agent, &bytes)
            .await
            .unwrap()
            .is_none()
    );
    let (online, version, dropped, faults): (bool, String, i64, i64) = sqlx::query_as(
        "SELECT online, version, (status->'buffer'->'telemetry'->>'dropped')::bigint,
                jsonb_array_length(status->'faults')::bigint
         FROM agent_status WHERE tenant = 'acme' AND agent = 'gw-1'",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(
        (online, version.as_str(), dropped, faults),
        (false, "9.9.9", 12, 0)
    );
    // Junk on a status topic is counted, not stored.
    assert!(
        ing.record_status(&tenant, &agent, b"junk")
            .await
            .unwrap()
            .is_none()
    );
}
