//! One raw-socket check per normative statement the listener enforces,
//! each asserting the exact reply or the close.

use super::*;

/// A 3.1.1 CONNECT with these flags and payload after the keep-alive.
fn connect_raw(level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(payload);
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend(body);
    bytes
}

const ID: [u8; 4] = [0, 2, b'd', b'1'];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_checked_as_mqtt_3_1_1_and_5_say() {
    let stack = Stack::start().await;

    // 3.1.2-2: a level the server does not speak gets 0x01 and a close.
    for (name, level) in [(&b"MQIsdp"[..], 3u8), (b"MQTT", 3), (b"MQTT", 6)] {
        let mut body = vec![0, name.len() as u8];
        body.extend(name);
        body.extend([level, 0x02, 0, 30, 0, 2, b'd', b'1']);
        let mut raw = stack.raw().await;
        raw.send(&[&[0x10, body.len() as u8][..], &body].concat())
            .await;
        raw.expect(&[0x20, 2, 0, 0x01], &format!("level {level}"))
            .await;
        raw.expect_closed("after 0x01").await;
    }

    // 3.1.2-3: the reserved flag set: 3.1.1 closes, 5 answers 0x81 first.
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(4, 0x03, &ID)).await;
    raw.expect_closed("3.1.1 reserved flag").await;
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(5, 0x03, &ID)).await;
    let p = raw.packet("5 reserved flag").await;
    assert!(is_connack_v5(&p, false, 0x81), "{p:02x?}");
    raw.expect_closed("after 0x81").await;

    // 3.1.2-22: a password without a user name (3.1.1).
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(
        4,
        0x42,
        &[&ID[..], &[0, 2, b'p', b'w']].concat(),
    ))
    .await;
    raw.expect_closed("password without user name").await;

    // 3.1.2-11/13: will QoS or retain without a will.
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(4, 0x22, &ID)).await;
    raw.expect_closed("will retain without a will").await;

    // 3.1.3-8: a zero-length client id needs clean session (3.1.1) ...
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(4, 0x00, &[0, 0])).await;
    raw.expect(&[0x20, 2, 0, 0x02], "empty id, clean session 0")
        .await;
    raw.expect_closed("after 0x02").await;
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(4, 0x02, &[0, 0])).await;
    raw.expect(&CONNACK_OK, "empty id, clean session 1").await;
    // ... and MQTT 5 gets one assigned (3.2.2-16), with the server's limits.
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(5, 0x00, &[0, 0])).await;
    let mut p = BytesMut::from(&raw.packet("5, empty id").await[..]);
    let v5::Packet::ConnAck(ack) = v5::Packet::read(&mut p, None).unwrap() else {
        panic!("not a CONNACK")
    };
    let props = ack.properties.expect("CONNACK properties");
    assert!(
        props
            .assigned_client_identifier
            .is_some_and(|id| id.starts_with("dash-"))
    );
    assert_eq!(props.receive_max, Some(512));
    assert!(props.max_packet_size.unwrap() as usize > MAX_PAYLOAD);
    assert_eq!(props.wildcard_subscription_available, Some(0));

    // 3.1.0-1: the first packet must be CONNECT.
    let mut raw = stack.raw().await;
    raw.send(&[0xc0, 0]).await;
    raw.expect_closed("PINGREQ first").await;

    // 3.1.0-2: a second CONNECT closes.
    let mut raw = stack.raw().await;
    raw.send(&connect_v4("twice", true)).await;
    raw.expect(&CONNACK_OK, "first CONNECT").await;
    raw.send(&connect_v4("twice", true)).await;
    raw.expect_closed("second CONNECT").await;

    // A CONNECT never sent: closed within the 10 s deadline, however the
    // bytes trickle (not after the 60 s keep-alive guess).
    let mut raw = stack.raw().await;
    raw.send(&[0x10]).await;
    raw.expect_closed_within(20, "no CONNECT").await;

    // A will on an unmapped topic is refused, not dropped.
    let will = [&ID[..], &[0, 5, b'o', b't', b'h', b'e', b'r', 0, 1, b'0']].concat();
    let mut raw = stack.raw().await;
    raw.send(&connect_raw(4, 0x06, &will)).await;
    raw.expect(&[0x20, 2, 0, 0x05], "3.1.1 will on an unmapped topic")
        .await;
    raw.expect_closed("after 0x05").await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 30, 0];
    body.extend(ID);
    body.push(0); // will properties
    body.extend([0, 5, b'o', b't', b'h', b'e', b'r', 0, 1, b'0']);
    let mut raw = stack.raw().await;
    raw.send(&[&[0x10, body.len() as u8][..], &body].concat())
        .await;
    let p = raw.packet("5 will on an unmapped topic").await;
    assert!(is_connack_v5(&p, false, 0x90), "{p:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_other_packets_are_checked_and_mqtt_5_readings_are_stored() {
    let stack = Stack::start().await;

    // The MQTT 5 reading that used to be acked and lost.
    let mut raw = stack.raw().await;
    raw.send(&connect_v5("v5-dev", true, None)).await;
    let p = raw.packet("v5 CONNACK").await;
    assert!(is_connack_v5(&p, false, 0), "{p:02x?}");
    raw.send(&publish_v5("sensors/v5-dev/temp", 1, 1, b"21.5"))
        .await;
    raw.expect(&puback(1), "v5 PUBACK").await;
    assert_eq!(stack.settled("v5-dev", 1).await, vec![21.5]);

    // A CONNECT and a PUBLISH in one write: the publish is not lost.
    let mut raw = stack.raw().await;
    let both = [
        connect_v4("pipelined", true),
        publish_v4("sensors/pipelined/v", 1, 1, false, b"4"),
    ]
    .concat();
    raw.send(&both).await;
    raw.expect(&CONNACK_OK, "CONNACK").await;
    raw.expect(&puback(1), "PUBACK of the publish sent with the CONNECT")
        .await;
    assert_eq!(stack.settled("pipelined", 1).await, vec![4.0]);

    // Topic names (3.3.2-2, 4.7.3-1, 1.5.3-2): 3.1.1 closes; 5 says why.
    for (topic, code) in [
        ("+", 0x90u8),
        ("sensors/+/temp", 0x90),
        ("", 0x82),
        ("sensors/a\0b/t", 0x81),
    ] {
        let mut raw = stack.raw().await;
        raw.send(&connect_v4("t", true)).await;
        raw.expect(&CONNACK_OK, "CONNACK").await;
        let mut p = vec![0x32];
        let body = [
            &(topic.len() as u16).to_be_bytes()[..],
            topic.as_bytes(),
            &[0, 1],
            b"1",
        ]
        .concat();
        p.push(body.len() as u8);
        p.extend(&body);
        raw.send(&p).await;
        raw.expect_closed(&format!("3.1.1 topic {topic:?}")).await;

        let mut raw = stack.raw().await;
        raw.send(&connect_v5("t5", true, None)).await;
        raw.packet("CONNACK").await;
        let body = [
            &(topic.len() as u16).to_be_bytes()[..],
            topic.as_bytes(),
            &[0, 1, 0],
            b"1",
        ]
        .concat();
        raw.send(&[&[0x32, body.len() as u8][..], &body].concat())
            .await;
        let d = raw.packet(&format!("5 topic {topic:?}")).await;
        assert_eq!(
            (d[0], d[2]),
            (0xe0, code),
            "DISCONNECT for {topic:?}: {d:02x?}"
        );
        raw.expect_closed("after DISCONNECT").await;
    }
    assert!(
        stack.values("+").await.is_empty(),
        "nothing stored as device \"+\""
    );

    // Header flags (2.2.2-2): SUBSCRIBE and PUBREL with 0000 close.
    for (what, bad) in [
        ("SUBSCRIBE", vec![0x80, 6, 0, 1, 0, 1, b'x', 0]),
        ("PUBREL", vec![0x60, 2, 0, 1]),
    ] {
        let mut raw = stack.raw().await;
        raw.send(&connect_v4("flags", true)).await;
        raw.expect(&CONNACK_OK, "CONNACK").await;
        raw.send(&bad).await;
        raw.expect_closed(what).await;
    }

    // Packet id 0 on QoS 1 (2.3.1-1).
    let mut raw = stack.raw().await;
    raw.send(&connect_v4("pkid0", true)).await;
    raw.expect(&CONNACK_OK, "CONNACK").await;
    raw.send(&[0x32, 6, 0, 1, b't', 0, 0, b'1']).await;
    raw.expect_closed("packet id 0").await;

    // SUBSCRIBE is refused per filter (0x80; 5: 0x87); UNSUBSCRIBE answered.
    let mut raw = stack.raw().await;
    raw.send(&connect_v4("sub", true)).await;
    raw.expect(&CONNACK_OK, "CONNACK").await;
    raw.send(&[0x82, 6, 0, 7, 0, 1, b'x', 1]).await;
    raw.expect(&[0x90, 3, 0, 7, 0x80], "SUBACK failure").await;
    raw.send(&[0xa2, 5, 0, 8, 0, 1, b'x']).await;
    raw.expect(&[0xb0, 2, 0, 8], "UNSUBACK").await;
    raw.send(&[0x82, 2, 0, 9]).await;
    raw.expect_closed("SUBSCRIBE without a filter (3.8.3-3)")
        .await;

    let mut raw = stack.raw().await;
    raw.send(&connect_v5("sub5", true, None)).await;
    raw.packet("CONNACK").await;
    raw.send(&[0x82, 7, 0, 7, 0, 0, 1, b'x', 1]).await;
    raw.expect(&[0x90, 4, 0, 7, 0, 0x87], "v5 SUBACK not authorized")
        .await;
    raw.send(&[0xa2, 6, 0, 8, 0, 0, 1, b'x']).await;
    raw.expect(&[0xb0, 4, 0, 8, 0, 0x11], "v5 UNSUBACK no subscription")
        .await;
    // A topic alias never offered (MQTT 5 3.3.2-9), then AUTH.
    raw.send(&[0x32, 9, 0, 1, b't', 0, 2, 3, 0x23, 0, 1]).await;
    let d = raw.packet("topic alias").await;
    assert_eq!((d[0], d[2]), (0xe0, 0x94), "{d:02x?}");

    let mut raw = stack.raw().await;
    raw.send(&connect_v5("auth5", true, None)).await;
    raw.packet("CONNACK").await;
    raw.send(&[0xf0, 0]).await;
    let d = raw.packet("AUTH").await;
    assert_eq!((d[0], d[2]), (0xe0, 0x82), "{d:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_counts_the_payload_and_a_device_is_told() {
    let stack = Stack::start().await;
    // Numbers with leading zeros: 7, at the limit and one byte over it.
    let number = |len: usize| [vec![b'0'; len - 1], vec![b'7']].concat();
    let (exactly, over) = (number(MAX_PAYLOAD), number(MAX_PAYLOAD + 1));

    let mut raw = stack.raw().await;
    raw.send(&connect_v4("size", true)).await;
    raw.expect(&CONNACK_OK, "CONNACK").await;
    raw.send(&publish_v4("sensors/size-a/v", 1, 1, false, &exactly))
        .await;
    raw.expect(&puback(1), "a payload of exactly the limit")
        .await;
    // Over it: acknowledged (it can never succeed) and not stored.
    raw.send(&publish_v4("sensors/size-b/v", 1, 2, false, &over))
        .await;
    raw.expect(&puback(2), "3.1.1: over the limit, acknowledged")
        .await;
    // Far over it (past the envelope): still read through and answered.
    let huge = vec![b'7'; 200_000];
    raw.send(&publish_v4("sensors/size-b/v", 1, 3, false, &huge))
        .await;
    raw.expect(&puback(3), "far over the limit").await;
    raw.send(&[0xc0, 0]).await;
    raw.expect(&[0xd0, 0], "the connection goes on").await;

    let mut raw = stack.raw().await;
    raw.send(&connect_v5("size5", true, None)).await;
    raw.packet("CONNACK").await;
    raw.send(&publish_v5("sensors/size-c/v", 1, 4, &over)).await;
    let mut p = BytesMut::from(&raw.packet("v5 PUBACK").await[..]);
    let v5::Packet::PubAck(ack) = v5::Packet::read(&mut p, None).unwrap() else {
        panic!("not a PUBACK")
    };
    assert_eq!(ack.reason, v5::PubAckReason::QuotaExceeded);
    let why = ack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(why.contains("devices.max_payload_bytes"), "{why}");
    // Unmapped and unreadable: 0x90 and 0x99, with reason strings.
    raw.send(&publish_v5("elsewhere/x", 1, 5, b"1")).await;
    let p = raw.packet("unmapped").await;
    assert_eq!((p[0], p[4]), (0x40, 0x90), "{p:02x?}");
    raw.send(&publish_v5("sensors/size-d/v", 1, 6, b"warm"))
        .await;
    let p = raw.packet("not a number").await;
    assert_eq!((p[0], p[4]), (0x40, 0x99), "{p:02x?}");

    assert_eq!(stack.settled("size-a", 1).await, vec![7.0]);
    assert!(stack.values("size-b").await.is_empty() && stack.values("size-c").await.is_empty());
    // Counted by reason in status.json, and the too large in the
    // buffer's invalid records beside the unreadable ones.
    let status = stack.refused("payload_too_large", 3).await;
    assert_eq!(
        status["devices"]["refused"]["topic_not_mapped"], 1,
        "{status}"
    );
    assert_eq!(status["devices"]["refused"]["payload"], 1, "{status}");
    assert!(
        status["buffer"]["invalid_records"].as_u64().unwrap() >= 5,
        "{status}"
    );
    // And on the aggregator's /metrics, from the agent's status.
    let http = stack.http;
    let line = "dash_agent_device_refusals{reason=\"payload_too_large\"} 3";
    eventually(
        Duration::from_secs(30),
        "device refusals on /metrics",
        || async move {
            dash_tests::metrics_text(http)
                .await
                .contains(line)
                .then_some(())
        },
    )
    .await;
    let log = stack.agent_log();
    assert_eq!(
        log.matches("reason=\"payload_too_large\"").count(),
        2,
        "logged once a minute per device and reason (size, size5):\n{log}"
    );
}
