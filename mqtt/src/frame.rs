//! Whole packets off a byte stream, with the fixed header checked.
//!
//! A [`FrameReader`] keeps what it read past a packet for the next one. It
//! checks what the fixed header alone can tell (MQTT 3.1.1 §2.2, MQTT 5
//! §2.1): a reserved packet type, header flags that must be `0010` for
//! PUBREL, SUBSCRIBE and UNSUBSCRIBE and `0000` for every other packet
//! but PUBLISH, a PUBLISH with both QoS bits set, and a remaining length
//! of more than four bytes.
//!
//! A packet over the reader's limit is not kept in memory. A PUBLISH keeps
//! its first [`KEPT_OF_OVERSIZED`] bytes (its topic and packet id, so it
//! can be answered) and the rest is read and thrown away; any other packet
//! over the limit is an error.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
/// MQTT 5 only; reserved in 3.1.1.
pub const AUTH: u8 = 15;

/// How much of an oversized PUBLISH is kept: enough for any topic, its
/// packet id and a few properties.
pub const KEPT_OF_OVERSIZED: usize = 2 + 65_535 + 2 + 1024;

/// Why no packet could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading from the client failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the remaining length takes more than four bytes")]
    BadLength,
    #[error("packet type 0 is reserved")]
    ReservedType,
    #[error("{kind} with header flags {flags:04b}")]
    BadFlags { kind: &'static str, flags: u8 },
    #[error("a PUBLISH with QoS 3")]
    BadQos,
    #[error("a {kind} of {len} bytes is over the limit of {max}")]
    TooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
}

/// One packet, whole or (an oversized PUBLISH) cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The first byte: packet type and flags.
    pub header: u8,
    /// The packet as sent, fixed header included, or its first bytes.
    pub bytes: BytesMut,
    /// Where the variable header starts in `bytes`.
    pub body: usize,
    /// The remaining length the client declared.
    pub remaining: usize,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    pub fn flags(&self) -> u8 {
        self.header & 0x0f
    }

    /// Whether bytes past the limit were thrown away.
    pub fn is_cut(&self) -> bool {
        self.bytes.len() < self.body + self.remaining
    }

    /// The variable header and payload (as far as kept).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body..]
    }
}

/// The name of a packet type, for errors and logs.
pub fn kind_name(kind: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "reserved",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    NAMES[usize::from(kind & 0x0f)]
}

/// Checks the first byte of a packet.
pub fn check_header(header: u8) -> Result<(), FrameError> {
    let (kind, flags) = (header >> 4, header & 0x0f);
    let expected = match kind {
        0 => return Err(FrameError::ReservedType),
        PUBLISH if flags & 0b0110 == 0b0110 => return Err(FrameError::BadQos),
        PUBLISH => return Ok(()),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(FrameError::BadFlags {
            kind: kind_name(kind),
            flags,
        });
    }
    Ok(())
}

/// The remaining length and how many bytes encode it, if `buf` holds it all.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

/// Reads packets from one connection.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    /// Packets longer than `max` bytes (remaining length) are refused or,
    /// for a PUBLISH, cut short.
    pub fn new(max: usize) -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(4096),
            max,
        }
    }

    /// Changes the limit (after CONNECT, say).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next packet, or `None` when the client closed the connection
    /// between packets. A close in the middle of a packet is an error.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.parse(rd).await? {
                return Ok(Some(frame));
            }
            if !self.fill(rd).await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads more; false at the end of the stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<bool, FrameError> {
        match rd.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            // A TLS peer that closes without close_notify has still closed.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A whole packet already in the buffer, without reading: the next
    /// call needs no IO when a client sent several packets at once.
    /// `Ok(None)` when more bytes are needed (or the packet is oversized).
    pub fn buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(&header) = self.buf.first() else {
            return Ok(None);
        };
        check_header(header)?;
        let Some((remaining, len_len)) = remaining_length(&self.buf[1..])? else {
            return Ok(None);
        };
        let body = 1 + len_len;
        if remaining > self.max || self.buf.len() < body + remaining {
            return Ok(None);
        }
        let bytes = self.buf.split_to(body + remaining);
        Ok(Some(Frame {
            header,
            bytes,
            body,
            remaining,
        }))
    }

    /// A packet if the buffer holds one (reading and dropping the rest of
    /// an oversized PUBLISH).
    async fn parse<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.buffered()? {
            return Ok(Some(frame));
        }
        let Some(&header) = self.buf.first() else {
            return Ok(None);
        };
        let Some((remaining, len_len)) = remaining_length(&self.buf[1..])? else {
            return Ok(None);
        };
        let body = 1 + len_len;
        let kind = header >> 4;
        if remaining <= self.max {
            self.buf.reserve(body + remaining - self.buf.len());
            return Ok(None);
        }
        if kind != PUBLISH {
            return Err(FrameError::TooLarge {
                kind: kind_name(kind),
                len: remaining,
                max: self.max,
            });
        }
        let kept = body + remaining.min(KEPT_OF_OVERSIZED);
        while self.buf.len() < kept {
            if !self.fill(rd).await? {
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let bytes = self.buf.split_to(kept);
        let mut left = body + remaining - kept;
        while left > 0 {
            if self.buf.is_empty() && !self.fill(rd).await? {
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let n = left.min(self.buf.len());
            let _ = self.buf.split_to(n);
            left -= n;
        }
        Ok(Some(Frame {
            header,
            bytes,
            body,
            remaining,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(bytes: &[u8], max: usize) -> Vec<Result<Option<Frame>, String>> {
        let mut rd = bytes;
        let mut reader = FrameReader::new(max);
        let mut out = Vec::new();
        loop {
            let next = reader.next(&mut rd).await.map_err(|e| e.to_string());
            let end = !matches!(next, Ok(Some(_)));
            out.push(next);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn packets_split_anywhere_are_read_whole() {
        let stream = [
            0xc0, 0x00, 0x30, 0x05, 0x00, 0x01, b't', b'4', b'2', 0xe0, 0x00,
        ];
        let got = frames(&stream, 1024).await;
        let kinds: Vec<u8> = got
            .iter()
            .filter_map(|f| f.as_ref().ok().and_then(|f| f.as_ref()).map(Frame::kind))
            .collect();
        assert_eq!(kinds, [PINGREQ, PUBLISH, DISCONNECT]);
        assert_eq!(got.last(), Some(&Ok(None)));
    }

    #[tokio::test]
    async fn header_flags_are_checked_for_every_type() {
        for (header, ok) in [
            (0x62u8, true), // PUBREL 0010
            (0x60, false),  // PUBREL 0000
            (0x82, true),   // SUBSCRIBE 0010
            (0x80, false),  // SUBSCRIBE 0000
            (0xa2, true),   // UNSUBSCRIBE 0010
            (0xa3, false),  // UNSUBSCRIBE 0011
            (0xc1, false),  // PINGREQ 0001
            (0xe8, false),  // DISCONNECT 1000
            (0x12, false),  // CONNECT 0010
            (0x36, false),  // PUBLISH QoS 3
            (0x3d, true),   // PUBLISH DUP QoS 2 retain
            (0x00, false),  // reserved type
        ] {
            assert_eq!(check_header(header).is_ok(), ok, "{header:#04x}");
        }
    }

    #[tokio::test]
    async fn a_five_byte_length_is_refused() {
        let got = frames(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 30).await;
        assert!(got[0].as_ref().unwrap_err().contains("four bytes"));
    }

    #[tokio::test]
    async fn an_oversized_publish_is_cut_and_the_next_packet_still_read() {
        let remaining = 2 + 1 + 2 + 100_000;
        let mut stream = vec![0x32];
        let mut n = remaining;
        while n > 0 {
            let b = (n % 128) as u8;
            n /= 128;
            stream.push(if n > 0 { b | 0x80 } else { b });
        }
        stream.extend([0x00, 0x01, b't', 0x00, 0x07]);
        stream.extend(vec![b'x'; 100_000]);
        stream.extend([0xc0, 0x00]);
        let got = frames(&stream, 64).await;
        let first = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((first.kind(), first.remaining), (PUBLISH, remaining));
        assert!(first.is_cut());
        assert_eq!(first.bytes.len(), 4 + KEPT_OF_OVERSIZED);
        let second = got[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(second.kind(), PINGREQ);
    }

    #[tokio::test]
    async fn an_oversized_subscribe_is_refused() {
        let got = frames(&[0x82, 0x7f], 64).await;
        assert!(got[0].as_ref().unwrap_err().contains("over the limit"));
    }

    #[tokio::test]
    async fn a_close_inside_a_packet_is_an_error_and_between_packets_is_not() {
        assert!(frames(&[0x30, 0x05, 0x00], 64).await[0].is_err());
        assert_eq!(frames(&[], 64).await[0], Ok(None));
    }
}
