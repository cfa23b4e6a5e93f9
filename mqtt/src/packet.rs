//! What a client sends, the same for MQTT 3.1.1 and 5.
//!
//! [`read_connect`] looks at the protocol name, level and flags itself
//! (before any codec) so that a level the server does not speak is refused
//! with CONNACK 0x01 instead of being misread, and [`decode`] turns every
//! later packet into an [`Inbound`]. rumqttc's codecs read CONNECT,
//! PUBLISH, SUBSCRIBE and UNSUBSCRIBE and the MQTT 5 properties; the short
//! packets are read here. On top of the codecs, the normative statements
//! they leave out are checked: the CONNECT reserved flag (3.1.2-3), a
//! password without a user name in 3.1.1 (3.1.2-22), a zero-length client id
//! without clean session in 3.1.1 (3.1.3-8), topic names with wildcards, empty
//! or holding U+0000 (3.3.2-2, 4.7.3-1, 1.5.3-2), packet id 0 (2.3.1-1),
//! SUBSCRIBE and UNSUBSCRIBE without a filter (3.8.3-3, 3.10.3-2), topic
//! aliases the server never offered (MQTT 5 3.3.2-9), a second CONNECT
//! (3.1.0-2) and AUTH (no enhanced authentication is offered).

use bytes::Bytes;
use rumqttc::mqttbytes as v4;
use rumqttc::v5::mqttbytes as v5;

use crate::frame::{self, Frame};
use crate::reason::{Reason, Refusal};

/// The protocol a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V311,
    V5,
}

/// A CONNECT, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    /// Empty when the client left it to the server.
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5).
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Seconds the session outlives the connection: MQTT 5's property
    /// (default 0); in 3.1.1 0 with clean session and forever without.
    pub session_expiry: u32,
    /// The largest packet the client accepts, if it said.
    pub max_packet: Option<u32>,
    /// Whether the client wants reason strings (MQTT 5, default yes).
    pub problem_info: bool,
}

/// A last will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5's will delay interval (s).
    pub delay: u32,
}

/// A PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 at QoS 0.
    pub pkid: u16,
    /// Empty when the packet was over the reader's limit (see `payload_len`).
    pub payload: Bytes,
    /// The payload's length as sent.
    pub payload_len: usize,
    /// Over the reader's limit: read through, the payload not kept.
    pub cut: bool,
}

/// A packet after CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    PingReq,
    Disconnect {
        /// MQTT 5's reason 0x04: publish the will anyway.
        with_will: bool,
        /// MQTT 5: a new session expiry interval.
        session_expiry: Option<u32>,
    },
}

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::new(Reason::MalformedPacket, detail)
}

fn protocol(detail: impl Into<String>) -> Refusal {
    Refusal::new(Reason::ProtocolError, detail)
}

/// Checks a topic name a client publishes to.
pub fn check_topic(topic: &str) -> Result<(), Refusal> {
    if topic.is_empty() {
        return Err(protocol("an empty topic name"));
    }
    if topic.contains(['+', '#']) {
        return Err(Refusal::new(
            Reason::TopicNameInvalid,
            "a topic name with a wildcard (+ or #)",
        ));
    }
    if topic.contains('\0') {
        return Err(malformed("a topic name holding U+0000"));
    }
    Ok(())
}

/// The protocol a CONNECT asks for, from its first bytes. `Err` with
/// [`Reason::UnsupportedVersion`] for a level other than 4 or 5 (and for
/// MQTT 3.1's `MQIsdp`); a name that is not MQTT's is malformed.
pub fn version_of(frame: &Frame) -> Result<Version, Refusal> {
    let body = frame.body();
    let name_len = body
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| malformed("a CONNECT too short for its protocol name"))?;
    let name = body
        .get(2..2 + name_len)
        .ok_or_else(|| malformed("a CONNECT too short for its protocol name"))?;
    let level = *body
        .get(2 + name_len)
        .ok_or_else(|| malformed("a CONNECT without a protocol level"))?;
    match (name, level) {
        (b"MQTT", 4) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        (b"MQTT", other) | (b"MQIsdp", other) => Err(Refusal::new(
            Reason::UnsupportedVersion,
            format!("protocol level {other}: this server speaks MQTT 3.1.1 (4) and 5"),
        )),
        _ => Err(malformed(format!(
            "protocol name {:?} is not MQTT",
            String::from_utf8_lossy(name)
        ))),
    }
}

/// Reads a CONNECT. The refusal says what to answer (see
/// [`Reason::connack`]); its version is the one to answer in.
pub fn read_connect(frame: Frame) -> Result<Connect, (Version, Refusal)> {
    if frame.kind() != frame::CONNECT {
        return Err((
            Version::V311,
            protocol(format!(
                "the first packet was a {}, not CONNECT",
                frame::kind_name(frame.kind())
            )),
        ));
    }
    let version = version_of(&frame).map_err(|r| (Version::V311, r))?;
    let with = |r: Refusal| (version, r);
    // The flags follow the name (2 + 4 bytes) and the level.
    let flags = *frame
        .body()
        .get(7)
        .ok_or_else(|| with(malformed("a CONNECT without flags")))?;
    check_connect_flags(flags, version).map_err(with)?;
    let connect = match version {
        Version::V311 => read_v4(frame),
        Version::V5 => read_v5(frame),
    }
    .map_err(with)?;
    if connect.client_id.is_empty() && !connect.clean && version == Version::V311 {
        return Err(with(Refusal::new(
            Reason::BadClientId,
            "a zero-length client id needs clean session 1 (MQTT 3.1.1 3.1.3-8)",
        )));
    }
    if connect.client_id.contains('\0') {
        return Err(with(Refusal::new(
            Reason::BadClientId,
            "a client id holding U+0000",
        )));
    }
    if let Some(will) = &connect.will {
        check_topic(&will.topic).map_err(with)?;
    }
    Ok(connect)
}

fn check_connect_flags(flags: u8, version: Version) -> Result<(), Refusal> {
    if flags & 0x01 != 0 {
        return Err(malformed("the CONNECT reserved flag is set (3.1.2-3)"));
    }
    let (will, will_qos, will_retain) = (flags & 0x04 != 0, (flags >> 3) & 0x03, flags & 0x20 != 0);
    if will_qos == 3 {
        return Err(malformed("a will QoS of 3 (3.1.2-14)"));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(malformed(
            "will QoS or retain set without a will (3.1.2-11, 3.1.2-13, 3.1.2-15)",
        ));
    }
    if version == Version::V311 && flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(malformed(
            "a password without a user name (MQTT 3.1.1 3.1.2-22)",
        ));
    }
    Ok(())
}

/// The raw username and password presence flags, since rumqttc folds an
/// empty value into "absent".
fn login_parts(flags: u8, username: String, password: String) -> (Option<String>, Option<String>) {
    (
        (flags & 0x80 != 0).then_some(username),
        (flags & 0x40 != 0).then_some(password),
    )
}

fn read_v4(frame: Frame) -> Result<Connect, Refusal> {
    let flags = frame.body()[7];
    let mut bytes = frame.bytes;
    let packet = v4::v4::Packet::read(&mut bytes, usize::MAX)
        .map_err(|e| malformed(format!("CONNECT: {e}")))?;
    let v4::v4::Packet::Connect(c) = packet else {
        return Err(malformed("CONNECT did not read as one"));
    };
    let (username, password) = match c.login {
        Some(l) => login_parts(flags, l.username, l.password),
        None => login_parts(flags, String::new(), String::new()),
    };
    Ok(Connect {
        version: Version::V311,
        client_id: c.client_id,
        clean: c.clean_session,
        keep_alive: c.keep_alive,
        will: c.last_will.map(|w| Will {
            topic: w.topic,
            payload: w.message,
            qos: w.qos as u8,
            retain: w.retain,
            delay: 0,
        }),
        username,
        password,
        session_expiry: if c.clean_session { 0 } else { u32::MAX },
        max_packet: None,
        problem_info: true,
    })
}

fn read_v5(frame: Frame) -> Result<Connect, Refusal> {
    let flags = frame.body()[7];
    let mut bytes = frame.bytes;
    let packet =
        v5::v5::Packet::read(&mut bytes, None).map_err(|e| malformed(format!("CONNECT: {e}")))?;
    let v5::v5::Packet::Connect(c, will, login) = packet else {
        return Err(malformed("CONNECT did not read as one"));
    };
    let props = c.properties.unwrap_or_default();
    if props.authentication_method.is_some() {
        return Err(Refusal::new(
            Reason::BadAuthenticationMethod,
            "enhanced authentication is not offered",
        ));
    }
    if props.receive_maximum == Some(0) || props.max_packet_size == Some(0) {
        return Err(protocol("a receive maximum or maximum packet size of 0"));
    }
    let (username, password) = match login {
        Some(l) => login_parts(flags, l.username, l.password),
        None => login_parts(flags, String::new(), String::new()),
    };
    let will = match will {
        None => None,
        Some(w) => Some(Will {
            topic: String::from_utf8(w.topic.to_vec())
                .map_err(|_| malformed("a will topic that is not UTF-8"))?,
            payload: w.message,
            qos: w.qos as u8,
            retain: w.retain,
            delay: w.properties.and_then(|p| p.delay_interval).unwrap_or(0),
        }),
    };
    Ok(Connect {
        version: Version::V5,
        client_id: c.client_id,
        clean: c.clean_start,
        keep_alive: c.keep_alive,
        will,
        username,
        password,
        session_expiry: props.session_expiry_interval.unwrap_or(0),
        max_packet: props.max_packet_size,
        problem_info: props.request_problem_info != Some(0),
    })
}

/// A packet id from the first two bytes of the body.
fn pkid(frame: &Frame) -> Result<u16, Refusal> {
    let id = frame
        .body()
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| {
            malformed(format!(
                "a {} without a packet id",
                frame::kind_name(frame.kind())
            ))
        })?;
    if id == 0 {
        return Err(malformed("packet id 0 (2.3.1-1)"));
    }
    Ok(id)
}

/// Reads a packet after CONNECT.
pub fn decode(frame: Frame, version: Version) -> Result<Inbound, Refusal> {
    let kind = frame.kind();
    let short = |len: usize| {
        if version == Version::V311 && frame.remaining != len {
            Err(malformed(format!(
                "a {} of {} bytes, not {len}",
                frame::kind_name(kind),
                frame.remaining
            )))
        } else {
            Ok(())
        }
    };
    match kind {
        frame::PUBLISH => decode_publish(frame, version).map(Inbound::Publish),
        frame::PUBACK => short(2).and_then(|()| pkid(&frame).map(Inbound::PubAck)),
        frame::PUBREC => short(2).and_then(|()| pkid(&frame).map(Inbound::PubRec)),
        frame::PUBREL => short(2).and_then(|()| pkid(&frame).map(Inbound::PubRel)),
        frame::PUBCOMP => short(2).and_then(|()| pkid(&frame).map(Inbound::PubComp)),
        frame::PINGREQ if frame.remaining == 0 => Ok(Inbound::PingReq),
        frame::PINGREQ => Err(malformed("a PINGREQ with a body")),
        frame::SUBSCRIBE | frame::UNSUBSCRIBE => decode_subscription(frame, version),
        frame::DISCONNECT => decode_disconnect(frame, version),
        frame::CONNECT => Err(protocol("a second CONNECT (3.1.0-2)")),
        frame::AUTH if version == Version::V5 => {
            Err(protocol("AUTH: enhanced authentication is not offered"))
        }
        other => Err(protocol(format!(
            "a {} from a client",
            frame::kind_name(other)
        ))),
    }
}

/// A PUBLISH over the limit: its topic and packet id, read by hand.
fn publish_head(frame: &Frame) -> Result<Publish, Refusal> {
    let body = frame.body();
    let qos = (frame.flags() >> 1) & 0x03;
    let len = body
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| malformed("a PUBLISH without a topic"))?;
    let topic = body
        .get(2..2 + len)
        .ok_or_else(|| malformed("a PUBLISH shorter than its topic"))?;
    let topic = std::str::from_utf8(topic)
        .map_err(|_| malformed("a topic name that is not UTF-8"))?
        .to_owned();
    let mut used = 2 + len;
    let mut id = 0;
    if qos > 0 {
        let b = body
            .get(used..used + 2)
            .ok_or_else(|| malformed("a PUBLISH without a packet id"))?;
        id = u16::from_be_bytes([b[0], b[1]]);
        used += 2;
    }
    Ok(Publish {
        topic,
        qos,
        dup: frame.flags() & 0x08 != 0,
        retain: frame.flags() & 0x01 != 0,
        pkid: id,
        payload: Bytes::new(),
        // Without the MQTT 5 properties' length, which is small.
        payload_len: frame.remaining.saturating_sub(used),
        cut: true,
    })
}

fn decode_publish(frame: Frame, version: Version) -> Result<Publish, Refusal> {
    let publish = match (frame.is_cut(), version) {
        (true, _) => publish_head(&frame)?,
        (false, Version::V311) => read_v4_publish(frame.bytes)?,
        (false, Version::V5) => read_v5_publish(frame.bytes)?,
    };
    if publish.qos > 0 && publish.pkid == 0 {
        return Err(malformed("packet id 0 (2.3.1-1)"));
    }
    check_topic(&publish.topic)?;
    Ok(publish)
}

/// A whole PUBLISH, as either codec read it.
fn whole(topic: String, qos: u8, dup: bool, retain: bool, pkid: u16, payload: Bytes) -> Publish {
    Publish {
        payload_len: payload.len(),
        topic,
        qos,
        dup,
        retain,
        pkid,
        payload,
        cut: false,
    }
}

fn read_v4_publish(mut bytes: bytes::BytesMut) -> Result<Publish, Refusal> {
    match v4::v4::Packet::read(&mut bytes, usize::MAX) {
        Ok(v4::v4::Packet::Publish(p)) => Ok(whole(
            p.topic,
            p.qos as u8,
            p.dup,
            p.retain,
            p.pkid,
            p.payload,
        )),
        Ok(_) => Err(malformed("PUBLISH did not read as one")),
        Err(e) => Err(malformed(format!("PUBLISH: {e}"))),
    }
}

fn read_v5_publish(mut bytes: bytes::BytesMut) -> Result<Publish, Refusal> {
    let p = match v5::v5::Packet::read(&mut bytes, None) {
        Ok(v5::v5::Packet::Publish(p)) => p,
        Ok(_) => return Err(malformed("PUBLISH did not read as one")),
        Err(e) => return Err(malformed(format!("PUBLISH: {e}"))),
    };
    let props = p.properties.unwrap_or_default();
    if props.topic_alias.is_some() {
        return Err(Refusal::new(
            Reason::TopicAliasInvalid,
            "a topic alias, and none were offered (topic alias maximum 0)",
        ));
    }
    let topic = String::from_utf8(p.topic.to_vec())
        .map_err(|_| malformed("a topic name that is not UTF-8"))?;
    if props.payload_format_indicator == Some(1) && std::str::from_utf8(&p.payload).is_err() {
        return Err(Refusal::new(
            Reason::PayloadFormatInvalid,
            "the payload is marked UTF-8 and is not",
        ));
    }
    Ok(whole(
        topic,
        p.qos as u8,
        p.dup,
        p.retain,
        p.pkid,
        p.payload,
    ))
}

fn decode_subscription(frame: Frame, version: Version) -> Result<Inbound, Refusal> {
    let subscribe = frame.kind() == frame::SUBSCRIBE;
    let id = pkid(&frame)?;
    let mut bytes = frame.bytes;
    let filters = match version {
        Version::V311 => match v4::v4::Packet::read(&mut bytes, usize::MAX) {
            Ok(v4::v4::Packet::Subscribe(s)) => s.filters.len(),
            Ok(v4::v4::Packet::Unsubscribe(u)) => u.topics.len(),
            Ok(_) => return Err(malformed("a subscription that did not read as one")),
            Err(v4::Error::EmptySubscription) => 0,
            Err(e) => {
                return Err(malformed(format!(
                    "{}: {e}",
                    frame::kind_name(frame.header >> 4)
                )));
            }
        },
        Version::V5 => match v5::v5::Packet::read(&mut bytes, None) {
            Ok(v5::v5::Packet::Subscribe(s)) => s.filters.len(),
            Ok(v5::v5::Packet::Unsubscribe(u)) => u.filters.len(),
            Ok(_) => return Err(malformed("a subscription that did not read as one")),
            Err(v5::Error::EmptySubscription) => 0,
            Err(e) => return Err(malformed(format!("subscription: {e}"))),
        },
    };
    if filters == 0 {
        return Err(protocol(
            "a SUBSCRIBE or UNSUBSCRIBE without a filter (3.8.3-3, 3.10.3-2)",
        ));
    }
    Ok(if subscribe {
        Inbound::Subscribe { pkid: id, filters }
    } else {
        Inbound::Unsubscribe { pkid: id, filters }
    })
}

fn decode_disconnect(frame: Frame, version: Version) -> Result<Inbound, Refusal> {
    if version == Version::V311 || frame.remaining == 0 {
        if frame.remaining != 0 {
            return Err(malformed("a 3.1.1 DISCONNECT with a body"));
        }
        return Ok(Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        });
    }
    let reason = frame.body()[0];
    if frame.remaining == 1 {
        // A reason code alone: no properties (MQTT 5 3.14.2.2).
        return Ok(Inbound::Disconnect {
            with_will: reason == 0x04,
            session_expiry: None,
        });
    }
    let mut bytes = frame.bytes;
    let disconnect = match v5::v5::Packet::read(&mut bytes, None) {
        Ok(v5::v5::Packet::Disconnect(d)) => d,
        Ok(_) => return Err(malformed("DISCONNECT did not read as one")),
        Err(e) => return Err(malformed(format!("DISCONNECT: {e}"))),
    };
    Ok(Inbound::Disconnect {
        with_will: reason == 0x04,
        session_expiry: disconnect
            .properties
            .and_then(|p| p.session_expiry_interval),
    })
}
