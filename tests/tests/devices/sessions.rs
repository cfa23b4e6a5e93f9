//! Sessions: takeover, redeliveries across reconnects and a SIGKILL, wills.

use super::*;

/// Connects `id` with clean session 0 and returns whether a session was present.
async fn resume(stack: &Stack, id: &str) -> (Raw, bool) {
    let mut raw = stack.raw().await;
    raw.send(&connect_v4(id, false)).await;
    let p = raw.packet("CONNACK").await;
    assert_eq!((p[0], p[3]), (0x20, 0), "{p:02x?}");
    (raw, p[2] == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_takes_the_session_over() {
    let stack = Stack::start().await;
    let mut old = stack.raw().await;
    old.send(&connect_v4("dev-t", true)).await;
    old.expect(&CONNACK_OK, "first").await;
    let mut new = stack.raw().await;
    new.send(&connect_v4("dev-t", true)).await;
    new.expect(&CONNACK_OK, "second").await;
    old.expect_closed("3.1.4-2: the old connection is closed")
        .await;
    new.send(&publish_v4("sensors/dev-t/v", 1, 1, false, b"3"))
        .await;
    new.expect(&puback(1), "the new one acknowledges").await;

    // MQTT 5 is told why (0x8E).
    let mut old = stack.raw().await;
    old.send(&connect_v5("dev-t5", true, None)).await;
    old.packet("first").await;
    let mut new = stack.raw().await;
    new.send(&connect_v5("dev-t5", true, None)).await;
    new.packet("second").await;
    let d = old.packet("DISCONNECT").await;
    assert_eq!((d[0], d[2]), (0xe0, 0x8e), "{d:02x?}");
    assert_eq!(stack.settled("dev-t", 1).await, vec![3.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_in_a_kept_session_are_stored_once_across_reconnects() {
    let stack = Stack::start().await;
    // QoS 2: the PUBREC is "lost" (the connection drops), the device
    // resends with DUP; session present says the server kept its state.
    let (mut raw, present) = resume(&stack, "dev-q2").await;
    assert!(!present, "a first connection has no session");
    raw.send(&publish_v4("sensors/dev-q2/v", 2, 1, false, b"1"))
        .await;
    raw.expect(&pubrec(1), "PUBREC").await;
    raw.send(&publish_v4("sensors/dev-q2/v", 2, 2, false, b"2"))
        .await;
    raw.expect(&pubrec(2), "PUBREC").await;
    drop(raw);
    let (mut raw, present) = resume(&stack, "dev-q2").await;
    assert!(present, "session present after a kept session");
    // 1: PUBREC lost, the publish again; 2: PUBREC seen, the PUBREL.
    raw.send(&publish_v4("sensors/dev-q2/v", 2, 1, true, b"1"))
        .await;
    raw.expect(&pubrec(1), "PUBREC for the resend").await;
    raw.send(&pubrel(1)).await;
    raw.expect(&pubcomp(1), "PUBCOMP").await;
    raw.send(&pubrel(2)).await;
    raw.expect(&pubcomp(2), "PUBCOMP").await;
    // After PUBCOMP the id is free: a new message under it is stored.
    raw.send(&publish_v4("sensors/dev-q2/v", 2, 1, false, b"3"))
        .await;
    raw.expect(&pubrec(1), "PUBREC").await;
    raw.send(&pubrel(1)).await;
    raw.expect(&pubcomp(1), "PUBCOMP").await;

    // QoS 1: a DUP resend of a message already stored is recognised.
    raw.send(&publish_v4("sensors/dev-q1/v", 1, 9, false, b"10"))
        .await;
    raw.expect(&puback(9), "PUBACK").await;
    drop(raw);
    let (mut raw, present) = resume(&stack, "dev-q2").await;
    assert!(present);
    raw.send(&publish_v4("sensors/dev-q1/v", 1, 9, true, b"10"))
        .await;
    raw.expect(&puback(9), "PUBACK for the resend").await;
    // A DUP of a message never stored (another payload) is stored.
    raw.send(&publish_v4("sensors/dev-q1/v", 1, 10, true, b"11"))
        .await;
    raw.expect(&puback(10), "PUBACK").await;

    // Clean session 1 discards the session: present is 0 next time.
    drop(raw);
    let mut raw = stack.raw().await;
    raw.send(&connect_v4("dev-q2", true)).await;
    raw.expect(&CONNACK_OK, "clean").await;
    drop(raw);
    let (_raw, present) = resume(&stack, "dev-q2").await;
    assert!(!present, "clean session discarded it");

    assert_eq!(stack.settled("dev-q2", 3).await, vec![1.0, 2.0, 3.0]);
    assert_eq!(stack.settled("dev-q1", 2).await, vec![10.0, 11.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos_2_session_survives_an_agent_sigkill() {
    let mut stack = Stack::start().await;
    let (mut raw, _) = resume(&stack, "dev-k").await;
    for i in 1..=20u16 {
        raw.send(&publish_v4(
            "sensors/dev-k/v",
            2,
            i,
            false,
            i.to_string().as_bytes(),
        ))
        .await;
        raw.expect(&pubrec(i), "PUBREC").await;
    }
    // Released: 1..=10. Not yet: 11..=20 (PUBREC seen for 11..=15, "lost" for 16..=20).
    for i in 1..=10u16 {
        raw.send(&pubrel(i)).await;
        raw.expect(&pubcomp(i), "PUBCOMP").await;
    }
    stack.agent.kill9();
    drop(raw);
    stack.agent.start();
    stack.wait_for_listener().await;
    let (mut raw, present) = resume(&stack, "dev-k").await;
    assert!(present, "the session outlived the agent");
    for i in 11..=15u16 {
        raw.send(&pubrel(i)).await;
        raw.expect(&pubcomp(i), "PUBCOMP after the restart").await;
    }
    for i in 16..=20u16 {
        raw.send(&publish_v4(
            "sensors/dev-k/v",
            2,
            i,
            true,
            i.to_string().as_bytes(),
        ))
        .await;
        raw.expect(&pubrec(i), "PUBREC for the resend").await;
        raw.send(&pubrel(i)).await;
        raw.expect(&pubcomp(i), "PUBCOMP").await;
    }
    let want: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(stack.settled("dev-k", 20).await, want, "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_will_is_stored_when_a_device_vanishes_and_not_after_disconnect() {
    let stack = Stack::start().await;
    let with_will = |id: &str, device: &str| {
        let mut c = v4::Connect::new(id);
        c.keep_alive = 30;
        c.last_will = Some(v4::LastWill::new(
            format!("sensors/{device}/online"),
            "0",
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            false,
        ));
        v4_bytes(v4::Packet::Connect(c))
    };
    let mut raw = stack.raw().await;
    raw.send(&with_will("w1", "will-1")).await;
    raw.expect(&CONNACK_OK, "CONNACK").await;
    drop(raw); // gone without DISCONNECT
    let mut raw = stack.raw().await;
    raw.send(&with_will("w2", "will-2")).await;
    raw.expect(&CONNACK_OK, "CONNACK").await;
    raw.send(&[0xe0, 0]).await;
    raw.expect_closed("DISCONNECT").await;
    assert_eq!(stack.settled("will-1", 1).await, vec![0.0]);
    assert!(
        stack.values("will-2").await.is_empty(),
        "a DISCONNECT drops the will"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_5_session_resumed_with_expiry_0_ends_with_its_connection() {
    let stack = Stack::start().await;
    let mut raw = stack.raw().await;
    raw.send(&connect_v5("dev-e", false, Some(3600))).await;
    assert!(is_connack_v5(&raw.packet("CONNACK").await, false, 0));
    raw.send(&publish_v5("sensors/dev-e/v", 2, 7, b"1")).await;
    raw.expect(&pubrec(7), "PUBREC").await;
    drop(raw);
    // Resumed with expiry 0: present, and released here.
    let mut raw = stack.raw().await;
    raw.send(&connect_v5("dev-e", false, Some(0))).await;
    assert!(
        is_connack_v5(&raw.packet("CONNACK").await, true, 0),
        "resumed"
    );
    raw.send(&pubrel(7)).await;
    raw.expect(&pubcomp(7), "PUBCOMP").await;
    raw.send(&[0xe0, 0]).await;
    raw.expect_closed("DISCONNECT").await;
    // That session ended with its connection: a new one, and id 7 is free.
    let mut raw = stack.raw().await;
    raw.send(&connect_v5("dev-e", false, Some(3600))).await;
    assert!(
        is_connack_v5(&raw.packet("CONNACK").await, false, 0),
        "no session left"
    );
    raw.send(&publish_v5("sensors/dev-e/v", 2, 7, b"2")).await;
    raw.expect(&pubrec(7), "PUBREC").await;
    raw.send(&pubrel(7)).await;
    raw.expect(&pubcomp(7), "PUBCOMP").await;
    assert_eq!(stack.settled("dev-e", 2).await, vec![1.0, 2.0]);
}
