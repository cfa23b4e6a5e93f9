//! Device sessions, kept with the records they belong to.
//!
//! The device listener keeps, per client that asked for a session (clean
//! session 0, or an MQTT 5 session expiry above 0), what makes its
//! redeliveries harmless: the QoS 2 packet ids stored and not yet
//! released, and the digest of the last QoS 1 message stored under each
//! packet id. Each change is written in the same transaction as the
//! records of the publish it belongs to, so a record is stored if and only
//! if its session says so, across crashes.
//!
//! ```text
//! sessions: client ++ 0x00            -> u64 BE µs ended ++ u32 BE expiry s
//!           client ++ 0x01 ++ u16 id  -> u64 BE digest of topic and payload
//!           client ++ 0x02 ++ u16 id  -> (empty)
//! ```
//!
//! `client` is the first 16 bytes of the SHA-256 of the client id.

use super::*;

/// A client's key prefix.
pub type ClientKey = [u8; 16];

const META: u8 = 0x00;
const QOS1: u8 = 0x01;
const QOS2: u8 = 0x02;

/// The prefix of a client id's session keys.
pub fn client_key(client_id: &str) -> ClientKey {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(client_id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

fn key(client: &ClientKey, kind: u8, pkid: Option<u16>) -> Vec<u8> {
    let mut k = Vec::with_capacity(19);
    k.extend_from_slice(client);
    k.push(kind);
    if let Some(id) = pkid {
        k.extend_from_slice(&id.to_be_bytes());
    }
    k
}

/// A change to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOp {
    /// The session exists (again); `ended` is when its connection closed,
    /// 0 while connected.
    Meta {
        client: ClientKey,
        ended: Micros,
        expiry_secs: u32,
    },
    /// A QoS 1 message stored under this packet id.
    StoredQos1 {
        client: ClientKey,
        pkid: u16,
        digest: u64,
    },
    /// A QoS 2 message stored and not released.
    AwaitingRelease { client: ClientKey, pkid: u16 },
    /// Its PUBREL came.
    Released { client: ClientKey, pkid: u16 },
    /// The session is gone (clean session, expired).
    Clear { client: ClientKey },
}

/// A session as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSession {
    /// When its last connection ended (0: still open, or never closed
    /// cleanly) and how long it outlives one.
    pub ended: Micros,
    pub expiry_secs: u32,
    pub qos1: Vec<(u16, u64)>,
    pub awaiting_release: Vec<u16>,
}

/// A key and its new value, or `None` for a removal.
pub(super) type Write = (Vec<u8>, Option<Vec<u8>>);

/// What a batch of ops writes: puts and removals, in order.
pub(super) fn plan(tree: &sled::Tree, ops: &[SessionOp]) -> Result<Vec<Write>, BufferError> {
    let mut writes = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            SessionOp::Meta {
                client,
                ended,
                expiry_secs,
            } => {
                let mut v = be(ended.max(&0).unsigned_abs()).to_vec();
                v.extend_from_slice(&expiry_secs.to_be_bytes());
                writes.push((key(client, META, None), Some(v)));
            }
            SessionOp::StoredQos1 {
                client,
                pkid,
                digest,
            } => writes.push((key(client, QOS1, Some(*pkid)), Some(be(*digest).to_vec()))),
            SessionOp::AwaitingRelease { client, pkid } => {
                writes.push((key(client, QOS2, Some(*pkid)), Some(Vec::new())))
            }
            SessionOp::Released { client, pkid } => {
                writes.push((key(client, QOS2, Some(*pkid)), None))
            }
            SessionOp::Clear { client } => {
                for item in tree.scan_prefix(client) {
                    writes.push((item?.0.to_vec(), None));
                }
                // Removals planned earlier in this batch's ops stand; puts
                // earlier in it are undone by these removals (in order).
                let earlier: Vec<Vec<u8>> = writes
                    .iter()
                    .filter(|(k, v)| v.is_some() && k.starts_with(client))
                    .map(|(k, _)| k.clone())
                    .collect();
                writes.extend(earlier.into_iter().map(|k| (k, None)));
            }
        }
    }
    Ok(writes)
}

impl Buffer {
    /// The stored session of a client, if it has one.
    pub fn session(&self, client: &ClientKey) -> Result<Option<StoredSession>, BufferError> {
        let mut found = None::<StoredSession>;
        for item in self.sessions.scan_prefix(client) {
            let (k, v) = item?;
            let s = found.get_or_insert_with(StoredSession::default);
            let rest = &k[client.len()..];
            let id = |r: &[u8]| r.get(1..3).map(|b| u16::from_be_bytes([b[0], b[1]]));
            match (rest.first(), id(rest)) {
                (Some(&META), _) if v.len() == 12 => {
                    s.ended = read_u64(&v[..8])? as Micros;
                    s.expiry_secs = u32::from_be_bytes([v[8], v[9], v[10], v[11]]);
                }
                (Some(&QOS1), Some(pkid)) if v.len() == 8 => s.qos1.push((pkid, read_u64(&v)?)),
                (Some(&QOS2), Some(pkid)) => s.awaiting_release.push(pkid),
                _ => {
                    tracing::warn!(key = ?k, "session key of unknown layout ignored");
                }
            }
        }
        Ok(found)
    }

    /// Applies session ops that come without records; durable after the
    /// next [`Buffer::flush`].
    pub fn apply_session_ops(&self, ops: &[SessionOp]) -> Result<(), BufferError> {
        let _writer = lock(&self.writer);
        for (k, v) in plan(&self.sessions, ops)? {
            match v {
                Some(v) => self.sessions.insert(k, v)?,
                None => self.sessions.remove(k)?,
            };
        }
        Ok(())
    }

    /// At start: removes sessions whose connection ended more than their
    /// expiry ago, and counts the expiry of those whose connection was
    /// still open when the agent stopped (`ended` 0) from `now`. Returns
    /// how many were removed.
    pub fn expire_sessions(&self, now: Micros) -> Result<usize, BufferError> {
        let mut ops = Vec::new();
        let mut expired = 0;
        for item in self.sessions.iter() {
            let (k, v) = item?;
            if k.len() == 17 && k[16] == META && v.len() == 12 {
                let ended = read_u64(&v[..8])? as Micros;
                let expiry_secs = u32::from_be_bytes([v[8], v[9], v[10], v[11]]);
                let mut client = [0u8; 16];
                client.copy_from_slice(&k[..16]);
                if ended == 0 {
                    ops.push(SessionOp::Meta {
                        client,
                        ended: now,
                        expiry_secs,
                    });
                } else if now.saturating_sub(ended) > i64::from(expiry_secs) * 1_000_000 {
                    ops.push(SessionOp::Clear { client });
                    expired += 1;
                }
            }
        }
        self.apply_session_ops(&ops)?;
        Ok(expired)
    }
}
