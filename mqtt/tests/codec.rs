//! The shared MQTT code against rumqttc's client codecs, and any bytes.

use bytes::BytesMut;
use dash_mqtt::frame::{Frame, FrameReader};
use dash_mqtt::packet::{self, Inbound, Version};
use dash_mqtt::reply::{Encoder, Offer, Outbound};
use dash_mqtt::{Reason, Refusal};
use proptest::prelude::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

fn frame_of(bytes: &[u8]) -> Frame {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rd = bytes;
    rt.block_on(FrameReader::new(1 << 20).next(&mut rd))
        .expect("a frame")
        .expect("not empty")
}

fn v4_bytes(p: v4::Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

fn v5_bytes(p: v5::Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.write(&mut out, None).unwrap();
    out.to_vec()
}

fn v4_connect(id: &str, clean: bool) -> Vec<u8> {
    let mut c = v4::Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = 30;
    v4_bytes(v4::Packet::Connect(c))
}

fn v5_connect(id: &str, props: Option<v5::ConnectProperties>) -> Vec<u8> {
    let c = v5::Connect {
        keep_alive: 30,
        client_id: id.into(),
        clean_start: false,
        properties: props,
    };
    v5_bytes(v5::Packet::Connect(c, None, None))
}

#[test]
fn a_connect_says_its_version_and_3_1_and_6_are_unsupported() {
    let c = packet::read_connect(frame_of(&v4_connect("d1", false))).unwrap();
    assert_eq!(
        (c.version, c.client_id.as_str(), c.clean),
        (Version::V311, "d1", false)
    );
    assert_eq!(
        c.session_expiry,
        u32::MAX,
        "3.1.1 without clean session keeps its session"
    );
    let props = v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        max_packet_size: Some(512),
        ..Default::default()
    };
    let c = packet::read_connect(frame_of(&v5_connect("d2", Some(props)))).unwrap();
    assert_eq!(
        (c.version, c.session_expiry, c.max_packet),
        (Version::V5, 3600, Some(512))
    );
    for (name, level) in [(&b"MQIsdp"[..], 3u8), (b"MQTT", 3), (b"MQTT", 6)] {
        let mut body = vec![0, name.len() as u8];
        body.extend(name);
        body.extend([level, 0x02, 0, 30, 0, 1, b'x']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        let (_, r) = packet::read_connect(frame_of(&bytes)).unwrap_err();
        assert_eq!(r.reason, Reason::UnsupportedVersion, "{level}");
        assert_eq!(r.reason.connack_v311(), Some(0x01));
    }
}

/// A 3.1.1 CONNECT body after the protocol name and level.
fn v4_connect_with(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 30];
    body.extend(payload);
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend(body);
    bytes
}

#[test]
fn connect_flags_are_checked_as_the_spec_says() {
    let id = [0u8, 2, b'd', b'1'];
    let refused = |flags: u8, payload: &[u8]| {
        packet::read_connect(frame_of(&v4_connect_with(flags, payload)))
            .unwrap_err()
            .1
    };
    assert_eq!(
        refused(0x03, &id).reason,
        Reason::MalformedPacket,
        "reserved flag"
    );
    let mut with_password = id.to_vec();
    with_password.extend([0, 2, b'p', b'w']);
    assert_eq!(
        refused(0x42, &with_password).reason,
        Reason::MalformedPacket,
        "password alone"
    );
    assert_eq!(
        refused(0x12, &id).reason,
        Reason::MalformedPacket,
        "will QoS without will"
    );
    let empty = [0u8, 0];
    assert_eq!(refused(0x00, &empty).reason, Reason::BadClientId, "3.1.3-8");
    assert_eq!(Reason::BadClientId.connack_v311(), Some(0x02));
    let c = packet::read_connect(frame_of(&v4_connect_with(0x02, &empty))).unwrap();
    assert!(c.client_id.is_empty() && c.clean);
}

fn publish_v4(topic: &str, qos: rumqttc::mqttbytes::QoS, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = v4::Publish::new(topic, qos, payload.to_vec());
    p.pkid = pkid;
    v4_bytes(v4::Packet::Publish(p))
}

#[test]
fn topics_with_wildcards_empty_or_holding_nul_are_refused() {
    for (topic, reason) in [
        ("+", Reason::TopicNameInvalid),
        ("a/#", Reason::TopicNameInvalid),
        ("", Reason::ProtocolError),
        ("a\0b", Reason::MalformedPacket),
    ] {
        let bytes = publish_v4(topic, rumqttc::mqttbytes::QoS::AtLeastOnce, 7, b"1");
        let got = packet::decode(frame_of(&bytes), Version::V311).unwrap_err();
        assert_eq!(got.reason, reason, "{topic:?}");
    }
    let bytes = [0x32, 6, 0, 1, b't', 0, 0, b'1']; // QoS 1, packet id 0
    assert_eq!(
        packet::decode(frame_of(&bytes), Version::V311)
            .unwrap_err()
            .reason,
        Reason::MalformedPacket,
        "packet id 0"
    );
}

#[test]
fn a_v5_publish_reads_its_payload_without_the_properties() {
    let mut p = v5::Publish::new(
        "room/1/temp",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        "21.5",
        None,
    );
    p.pkid = 9;
    let got = packet::decode(frame_of(&v5_bytes(v5::Packet::Publish(p))), Version::V5).unwrap();
    let Inbound::Publish(p) = got else {
        panic!("{got:?}")
    };
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.pkid),
        ("room/1/temp", &b"21.5"[..], 9)
    );
    let props = v5::PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    };
    let mut p = v5::Publish::new(
        "t",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        "1",
        Some(props),
    );
    p.pkid = 1;
    let got = packet::decode(frame_of(&v5_bytes(v5::Packet::Publish(p))), Version::V5);
    assert_eq!(got.unwrap_err().reason, Reason::TopicAliasInvalid);
}

#[test]
fn short_packets_and_a_second_connect() {
    let d = |b: &[u8], v| packet::decode(frame_of(b), v);
    assert_eq!(d(&[0x62, 2, 0, 5], Version::V311), Ok(Inbound::PubRel(5)));
    assert_eq!(d(&[0x62, 3, 0, 5, 0], Version::V5), Ok(Inbound::PubRel(5)));
    assert!(
        d(&[0x62, 3, 0, 5, 0], Version::V311).is_err(),
        "3.1.1 PUBREL is 2 bytes"
    );
    assert_eq!(
        d(&[0xe0, 0], Version::V5),
        Ok(Inbound::Disconnect {
            with_will: false,
            session_expiry: None
        })
    );
    assert_eq!(
        d(&[0xe0, 1, 0x04], Version::V5),
        Ok(Inbound::Disconnect {
            with_will: true,
            session_expiry: None
        })
    );
    assert_eq!(
        d(&v4_connect("x", true), Version::V311).unwrap_err().reason,
        Reason::ProtocolError
    );
    assert_eq!(
        d(&[0xf0, 0], Version::V5).unwrap_err().reason,
        Reason::ProtocolError,
        "AUTH"
    );
    let empty_sub = [0x82, 2, 0, 1];
    assert_eq!(
        d(&empty_sub, Version::V311).unwrap_err().reason,
        Reason::ProtocolError
    );
}

fn encode(e: Encoder, p: &Outbound) -> BytesMut {
    let mut out = BytesMut::new();
    e.encode(p, &mut out);
    out
}

fn v5_encoder() -> Encoder {
    Encoder {
        version: Version::V5,
        max_packet: None,
        problem_info: true,
    }
}

#[test]
fn replies_read_back_with_the_client_codecs() {
    let v4e = Encoder::before_connect();
    let offer = Offer {
        assigned_client_id: Some("auto-1".into()),
        receive_max: 64,
        max_packet: 70_000,
        ..Default::default()
    };
    let mut b = encode(
        v4e,
        &Outbound::ConnAck {
            session_present: true,
            offer: offer.clone(),
        },
    );
    let v4::Packet::ConnAck(a) = v4::Packet::read(&mut b, usize::MAX).unwrap() else {
        panic!()
    };
    assert!(a.session_present && a.code == v4::ConnectReturnCode::Success);
    let mut b = encode(
        v5_encoder(),
        &Outbound::ConnAck {
            session_present: false,
            offer,
        },
    );
    let v5::Packet::ConnAck(a) = v5::Packet::read(&mut b, None).unwrap() else {
        panic!()
    };
    let props = a.properties.unwrap();
    assert_eq!(props.assigned_client_identifier.as_deref(), Some("auto-1"));
    assert_eq!(
        (props.receive_max, props.max_packet_size),
        (Some(64), Some(70_000))
    );
    assert_eq!(props.wildcard_subscription_available, Some(0));

    let refusal = Refusal::new(
        Reason::QuotaExceeded,
        "payload of 70000 bytes is over 65536",
    );
    let ack = Outbound::PubAck {
        pkid: 3,
        refusal: Some(refusal.clone()),
    };
    let mut b = encode(v5_encoder(), &ack);
    let v5::Packet::PubAck(a) = v5::Packet::read(&mut b, None).unwrap() else {
        panic!()
    };
    assert_eq!((a.pkid, a.reason), (3, v5::PubAckReason::QuotaExceeded));
    assert_eq!(
        a.properties.unwrap().reason_string.as_deref(),
        Some(refusal.detail.as_str())
    );
    let mut b = encode(v4e, &ack);
    assert_eq!(
        v4::Packet::read(&mut b, usize::MAX).unwrap(),
        v4::Packet::PubAck(v4::PubAck::new(3))
    );

    let small = Encoder {
        max_packet: Some(16),
        ..v5_encoder()
    };
    let b = encode(small, &ack);
    assert!(
        b.len() <= 16,
        "the reason string is left out to fit: {} bytes",
        b.len()
    );

    let mut b = encode(
        v5_encoder(),
        &Outbound::SubAck {
            pkid: 4,
            filters: 2,
        },
    );
    let v5::Packet::SubAck(s) = v5::Packet::read(&mut b, None).unwrap() else {
        panic!()
    };
    assert_eq!(
        s.return_codes,
        vec![v5::SubscribeReasonCode::NotAuthorized; 2]
    );
    let mut b = encode(
        v5_encoder(),
        &Outbound::UnsubAck {
            pkid: 5,
            filters: 1,
        },
    );
    let v5::Packet::UnsubAck(u) = v5::Packet::read(&mut b, None).unwrap() else {
        panic!()
    };
    assert_eq!(u.reasons, vec![v5::UnsubAckReason::NoSubscriptionExisted]);
    let mut b = encode(
        v5_encoder(),
        &Outbound::ConnRefused(Refusal::new(Reason::UnsupportedVersion, "x")),
    );
    let v5::Packet::ConnAck(a) = v5::Packet::read(&mut b, None).unwrap() else {
        panic!()
    };
    assert_eq!(a.code, v5::ConnectReturnCode::UnsupportedProtocolVersion);
    let b = encode(
        v4e,
        &Outbound::ConnRefused(Refusal::new(Reason::UnsupportedVersion, "x")),
    );
    assert_eq!(&b[..], &[0x20, 2, 0, 1]);
    let mut b = encode(
        v5_encoder(),
        &Outbound::Disconnect(Refusal::new(Reason::SessionTakenOver, "new connection")),
    );
    let v5::Packet::Disconnect(d) = v5::Packet::read(&mut b, None).unwrap() else {
        panic!()
    };
    assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver);
    assert!(
        encode(
            v4e,
            &Outbound::Disconnect(Refusal::new(Reason::SessionTakenOver, "x"))
        )
        .is_empty()
    );
}

/// A packet with this first byte and body, its remaining length encoded.
fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![header];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        bytes.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    bytes.extend(body);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Decoders never panic, whatever the bytes (each packet type tried).
    #[test]
    fn any_bytes_are_refused_or_read_never_a_panic(
        kind in 1u8..16,
        flags in 0u8..16,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let bytes = packet((kind << 4) | flags, &body);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rd = &bytes[..];
        if let Ok(Some(frame)) = rt.block_on(FrameReader::new(1 << 16).next(&mut rd)) {
            let _ = packet::read_connect(frame.clone());
            let _ = packet::decode(frame.clone(), Version::V311);
            let _ = packet::decode(frame, Version::V5);
        }
    }

    /// A CONNECT's fields, whatever they hold, never panic either.
    #[test]
    fn any_connect_body_is_refused_or_read(
        level in prop_oneof![Just(4u8), Just(5u8)],
        flags in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags];
        body.extend(&rest);
        let bytes = packet(0x10, &body);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rd = &bytes[..];
        if let Ok(Some(frame)) = rt.block_on(FrameReader::new(1 << 16).next(&mut rd)) {
            let _ = packet::read_connect(frame);
        }
    }
}
