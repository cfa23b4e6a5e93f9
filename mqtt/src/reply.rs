//! What a server answers, encoded for the connection's version.
//!
//! Server replies are a handful of short packets, written here directly
//! (the unit tests read each back with rumqttc's client-side codecs). In
//! MQTT 5 a reason string goes only where the client asked for problem
//! information and where it keeps the packet within the client's maximum
//! packet size (3.1.2-29, 3.2.2-19/20, 3.4.2-2).

use bytes::{BufMut, BytesMut};

use crate::packet::Version;
use crate::reason::{Reason, Refusal};

/// What a server offers in an MQTT 5 CONNACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// The client id the server chose for a client that sent none.
    pub assigned_client_id: Option<String>,
    /// How many QoS 1 and 2 publishes may be unacknowledged at once.
    pub receive_max: u16,
    /// The largest packet the server takes.
    pub max_packet: u32,
    /// The session expiry the server grants, when less than asked.
    pub session_expiry: Option<u32>,
    /// A keep-alive the client must use instead of its own.
    pub server_keep_alive: Option<u16>,
}

/// A packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck {
        session_present: bool,
        offer: Offer,
    },
    /// A refused CONNECT.
    ConnRefused(Refusal),
    /// `refusal`: MQTT 5 reason code and string; 3.1.1 acknowledges plainly.
    PubAck {
        pkid: u16,
        refusal: Option<Refusal>,
    },
    PubRec {
        pkid: u16,
        refusal: Option<Refusal>,
    },
    /// `found`: whether the packet id was awaiting release (MQTT 5 0x92).
    PubComp {
        pkid: u16,
        found: bool,
    },
    /// Every filter refused: the endpoint takes data in only.
    SubAck {
        pkid: u16,
        filters: usize,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
    PingResp,
    /// MQTT 5 only; nothing is sent in 3.1.1 (the server just closes).
    Disconnect(Refusal),
}

/// Properties being built: id byte, then value; the reason string apart,
/// since it is the one dropped when the packet would be too large.
#[derive(Default)]
struct Props(BytesMut, Option<String>);

impl Props {
    fn u8(&mut self, id: u8, v: u8) {
        self.0.put_u8(id);
        self.0.put_u8(v);
    }
    fn u16(&mut self, id: u8, v: u16) {
        self.0.put_u8(id);
        self.0.put_u16(v);
    }
    fn u32(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        self.0.put_u32(v);
    }
    fn string(&mut self, id: u8, v: &str) {
        let v = dash_runtime::text::clip(v, 1024);
        self.0.put_u8(id);
        self.0.put_u16(v.len() as u16);
        self.0.put_slice(v.as_bytes());
    }
    fn reason(&mut self, v: &str) {
        self.1 = Some(dash_runtime::text::clip(v, 1024).to_owned());
    }
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            return;
        }
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

const REASON_STRING: u8 = 0x1f;

/// How a connection's replies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    pub version: Version,
    /// The client's maximum packet size.
    pub max_packet: Option<u32>,
    /// Whether reason strings may go in acknowledgements.
    pub problem_info: bool,
}

impl Encoder {
    /// Before a CONNECT was read (3.1.1 layout, no limit).
    pub fn before_connect() -> Self {
        Encoder {
            version: Version::V311,
            max_packet: None,
            problem_info: true,
        }
    }

    /// Writes `packet` to `out`; a 3.1.1 [`Outbound::Disconnect`] writes
    /// nothing.
    pub fn encode(&self, packet: &Outbound, out: &mut BytesMut) {
        let v5 = self.version == Version::V5;
        match packet {
            Outbound::ConnAck {
                session_present,
                offer,
            } => {
                let mut props = Props::default();
                if v5 {
                    if let Some(id) = &offer.assigned_client_id {
                        props.string(0x12, id);
                    }
                    if let Some(s) = offer.session_expiry {
                        props.u32(0x11, s);
                    }
                    if let Some(k) = offer.server_keep_alive {
                        props.u16(0x13, k);
                    }
                    props.u16(0x21, offer.receive_max.max(1));
                    props.u32(0x27, offer.max_packet);
                    // No wildcard, identified or shared subscriptions: nothing is routed.
                    props.u8(0x28, 0);
                    props.u8(0x29, 0);
                    props.u8(0x2a, 0);
                }
                self.with_props(out, 0x20, &[u8::from(*session_present), 0], props);
            }
            Outbound::ConnRefused(r) => {
                let code = if v5 {
                    r.reason.code()
                } else {
                    r.reason.connack_v311().unwrap_or(0x03)
                };
                let mut props = Props::default();
                if v5 && self.problem_info {
                    props.reason(&r.detail);
                }
                self.with_props(out, 0x20, &[0, code], props);
            }
            Outbound::PubAck { pkid, refusal } => self.ack(out, 0x40, *pkid, refusal.as_ref()),
            Outbound::PubRec { pkid, refusal } => self.ack(out, 0x50, *pkid, refusal.as_ref()),
            Outbound::PubComp { pkid, found } => {
                let id = pkid.to_be_bytes();
                if v5 && !found {
                    out.put_slice(&[0x70, 3, id[0], id[1], 0x92]);
                } else {
                    out.put_slice(&[0x70, 2, id[0], id[1]]);
                }
            }
            Outbound::SubAck { pkid, filters } => {
                let mut head = pkid.to_be_bytes().to_vec();
                if v5 {
                    head.push(0); // no properties
                    head.extend(std::iter::repeat_n(Reason::NotAuthorized.code(), *filters));
                } else {
                    head.extend(std::iter::repeat_n(0x80, *filters));
                }
                out.put_u8(0x90);
                put_varint(out, head.len());
                out.put_slice(&head);
            }
            Outbound::UnsubAck { pkid, filters } => {
                let id = pkid.to_be_bytes();
                if v5 {
                    // 0x11: no subscription existed.
                    out.put_u8(0xb0);
                    put_varint(out, 3 + filters);
                    out.put_slice(&[id[0], id[1], 0]);
                    out.extend(std::iter::repeat_n(0x11, *filters));
                } else {
                    out.put_slice(&[0xb0, 2, id[0], id[1]]);
                }
            }
            Outbound::PingResp => out.put_slice(&[0xd0, 0]),
            Outbound::Disconnect(r) if v5 => {
                let mut props = Props::default();
                props.reason(&r.detail);
                self.with_props(out, 0xe0, &[r.reason.code()], props);
            }
            Outbound::Disconnect(_) => {}
        }
    }

    fn ack(&self, out: &mut BytesMut, header: u8, pkid: u16, refusal: Option<&Refusal>) {
        let id = pkid.to_be_bytes();
        match refusal {
            Some(r) if self.version == Version::V5 => {
                let mut props = Props::default();
                if self.problem_info {
                    props.reason(&r.detail);
                }
                self.with_props(out, header, &[id[0], id[1], r.reason.code()], props);
            }
            _ => out.put_slice(&[header, 2, id[0], id[1]]),
        }
    }

    /// Header, fixed fields and (MQTT 5) properties, leaving out the
    /// reason string when the packet would exceed the client's limit.
    fn with_props(&self, out: &mut BytesMut, header: u8, fixed: &[u8], props: Props) {
        out.put_u8(header);
        if self.version == Version::V311 {
            put_varint(out, fixed.len());
            out.put_slice(fixed);
            return;
        }
        let Props(mut props, reason) = props;
        let size = |p: usize| {
            let remaining = fixed.len() + varint_len(p) + p;
            1 + varint_len(remaining) + remaining
        };
        if let Some(reason) = reason {
            let with = props.len() + 3 + reason.len();
            if size(with) <= self.max_packet.map_or(usize::MAX, |m| m as usize) {
                props.put_u8(REASON_STRING);
                props.put_u16(reason.len() as u16);
                props.put_slice(reason.as_bytes());
            }
        }
        put_varint(out, fixed.len() + varint_len(props.len()) + props.len());
        out.put_slice(fixed);
        put_varint(out, props.len());
        out.put_slice(&props);
    }
}
