//! What the device listener remembers of a client, apart from any IO.
//!
//! A [`Session`] decides, for each publish and PUBREL, whether records are
//! stored and which [`SessionOp`]s the buffer writes in the same
//! transaction. [`Live`] knows who is connected, so a second connection with
//! a client id takes the session over (3.1.4-2): the old connection is told
//! to stop, and the new one waits until the old has finished every commit
//! before it reads the stored session, so no change is missed.
//!
//! # Rules
//!
//! - QoS 2: a packet id stays "awaiting release" from its PUBLISH until its
//!   PUBREL; a PUBLISH under an id awaiting release is the same message
//!   again (MQTT 4.3.3) and is acknowledged without storing. Stored, for a
//!   kept session, with the records, so it holds across reconnects and
//!   restarts: exactly once.
//! - QoS 1: for a kept session, the digest of the last message stored under
//!   each packet id. A publish with DUP set, under a packet id whose last
//!   stored message has the same topic and payload, is a redelivery and is
//!   not stored again. The one case it cannot tell apart: a device that
//!   reuses a packet id for an identical message and loses that message's
//!   first send; its resend is taken for the earlier one. Devices whose
//!   identical readings must each count use QoS 2.
//! - A session that is not kept (clean session, MQTT 5 expiry 0) is
//!   remembered for the connection only and nothing is written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::buffer::{ClientKey, SessionOp, StoredSession};

/// A client's session while it is connected.
#[derive(Debug, Clone)]
pub struct Session {
    client: ClientKey,
    /// Kept beyond the connection: its changes are stored.
    kept: bool,
    awaiting_release: HashSet<u16>,
    qos1: HashMap<u16, u64>,
}

/// What to do with a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Whether its records are stored (false: a redelivery).
    pub store: bool,
    /// Written with its records.
    pub ops: Vec<SessionOp>,
}

/// The digest of a QoS 1 message, for recognising its redelivery.
pub fn digest(topic: &str, payload: &[u8]) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((topic.len() as u32).to_be_bytes());
    h.update(topic.as_bytes());
    h.update(payload);
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl Session {
    /// A session for `client`, resumed from `stored` (or new), kept or not.
    pub fn new(client: ClientKey, kept: bool, stored: Option<StoredSession>) -> Session {
        let stored = stored.unwrap_or_default();
        Session {
            client,
            kept,
            awaiting_release: stored.awaiting_release.into_iter().collect(),
            qos1: stored.qos1.into_iter().collect(),
        }
    }

    /// Plans a publish; `digest` is asked only where it is needed.
    pub fn publish(&mut self, qos: u8, dup: bool, pkid: u16, digest: impl FnOnce() -> u64) -> Plan {
        let client = self.client;
        match qos {
            1 if self.kept => {
                let d = digest();
                if dup && self.qos1.get(&pkid) == Some(&d) {
                    return Plan {
                        store: false,
                        ops: Vec::new(),
                    };
                }
                self.qos1.insert(pkid, d);
                Plan {
                    store: true,
                    ops: vec![SessionOp::StoredQos1 {
                        client,
                        pkid,
                        digest: d,
                    }],
                }
            }
            2 => {
                if !self.awaiting_release.insert(pkid) {
                    return Plan {
                        store: false,
                        ops: Vec::new(),
                    };
                }
                let ops = if self.kept {
                    vec![SessionOp::AwaitingRelease { client, pkid }]
                } else {
                    Vec::new()
                };
                Plan { store: true, ops }
            }
            _ => Plan {
                store: true,
                ops: Vec::new(),
            },
        }
    }

    /// Undoes a planned QoS 2 publish that was refused (its flow ends with
    /// the refusing PUBREC).
    pub fn refused(&mut self, qos: u8, pkid: u16) {
        if qos == 2 {
            self.awaiting_release.remove(&pkid);
        }
    }

    /// A PUBREL: whether the id was awaiting release, and what to store.
    pub fn release(&mut self, pkid: u16) -> (bool, Vec<SessionOp>) {
        let found = self.awaiting_release.remove(&pkid);
        let ops = if found && self.kept {
            vec![SessionOp::Released {
                client: self.client,
                pkid,
            }]
        } else {
            Vec::new()
        };
        (found, ops)
    }

    /// QoS 2 publishes received and not released.
    pub fn awaiting_release(&self) -> usize {
        self.awaiting_release.len()
    }
}

/// The connection holding a client id now.
struct Holder {
    number: u64,
    stop: CancellationToken,
    /// Held by a connection for its whole life, commits included.
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Who is connected, by client id.
#[derive(Default)]
pub struct Live {
    holders: std::sync::Mutex<HashMap<ClientKey, Holder>>,
    next: AtomicU64,
}

/// A connection's hold on its client id.
pub struct Hold {
    pub number: u64,
    /// Cancelled when another connection takes the session over.
    pub taken_over: CancellationToken,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Live {
    /// Takes the client id: the connection holding it is told to stop, and
    /// this waits until it has finished; `None` if it did not within
    /// `within` (the claim is withdrawn).
    pub async fn take(&self, client: ClientKey, within: std::time::Duration) -> Option<Hold> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let taken_over = CancellationToken::new();
        let lock = {
            let mut holders = self.holders.lock().expect("live sessions");
            let lock = match holders.get(&client) {
                Some(old) => {
                    old.stop.cancel();
                    old.lock.clone()
                }
                None => Arc::default(),
            };
            holders.insert(
                client,
                Holder {
                    number,
                    stop: taken_over.clone(),
                    lock: lock.clone(),
                },
            );
            lock
        };
        match tokio::time::timeout(within, lock.lock_owned()).await {
            Ok(guard) => Some(Hold {
                number,
                taken_over,
                _guard: guard,
            }),
            Err(_) => {
                let mut holders = self.holders.lock().expect("live sessions");
                if holders.get(&client).is_some_and(|h| h.number == number) {
                    holders.remove(&client);
                }
                None
            }
        }
    }

    /// Whether a connection after `number` holds the client id.
    pub fn taken_since(&self, client: &ClientKey, number: u64) -> bool {
        let holders = self.holders.lock().expect("live sessions");
        holders.get(client).is_some_and(|h| h.number != number)
    }

    /// Lets go of the client id, unless another connection took it.
    pub fn release(&self, client: &ClientKey, hold: Hold) {
        let mut holders = self.holders.lock().expect("live sessions");
        if holders.get(client).is_some_and(|h| h.number == hold.number) {
            holders.remove(client);
        }
        drop(hold);
    }

    /// Connected clients.
    pub fn len(&self) -> usize {
        self.holders.lock().expect("live sessions").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ClientKey = [7; 16];

    #[test]
    fn a_qos2_resend_before_release_is_not_stored_again() {
        let mut s = Session::new(C, true, None);
        let first = s.publish(2, false, 5, || 0);
        assert!(first.store);
        assert_eq!(
            first.ops,
            vec![SessionOp::AwaitingRelease { client: C, pkid: 5 }]
        );
        let again = s.publish(2, true, 5, || 0);
        assert_eq!(
            again,
            Plan {
                store: false,
                ops: vec![]
            }
        );
        assert_eq!(
            s.release(5),
            (true, vec![SessionOp::Released { client: C, pkid: 5 }])
        );
        assert!(
            s.publish(2, false, 5, || 0).store,
            "after PUBREL the id is free again"
        );
        assert_eq!(s.release(9), (false, vec![]), "an unknown id is not found");
    }

    #[test]
    fn a_resumed_session_remembers_what_awaits_release() {
        let stored = StoredSession {
            awaiting_release: vec![3],
            qos1: vec![(4, digest("t", b"1"))],
            ..Default::default()
        };
        let mut s = Session::new(C, true, Some(stored));
        assert!(!s.publish(2, true, 3, || 0).store);
        assert!(
            !s.publish(1, true, 4, || digest("t", b"1")).store,
            "a QoS 1 redelivery"
        );
        assert!(
            s.publish(1, true, 4, || digest("t", b"2")).store,
            "another message under the id"
        );
        assert!(
            s.publish(1, false, 4, || digest("t", b"2")).store,
            "DUP clear: a new message"
        );
    }

    #[test]
    fn a_session_not_kept_writes_nothing() {
        let mut s = Session::new(C, false, None);
        assert_eq!(
            s.publish(2, false, 1, || 0),
            Plan {
                store: true,
                ops: vec![]
            }
        );
        assert_eq!(
            s.publish(1, true, 1, || 0),
            Plan {
                store: true,
                ops: vec![]
            }
        );
        assert_eq!(s.release(1), (true, vec![]));
    }

    #[test]
    fn a_refused_qos2_publish_does_not_await_release() {
        let mut s = Session::new(C, true, None);
        assert!(s.publish(2, false, 8, || 0).store);
        s.refused(2, 8);
        assert_eq!(s.awaiting_release(), 0);
    }

    #[tokio::test]
    async fn a_second_connection_stops_the_first_and_waits_for_it() {
        let live = Arc::new(Live::default());
        let within = std::time::Duration::from_secs(30);
        let first = live.take(C, within).await.unwrap();
        let stop = first.taken_over.clone();
        let live2 = live.clone();
        let second = tokio::spawn(async move { live2.take(C, within).await.unwrap() });
        stop.cancelled().await;
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "the new connection waits for the old one"
        );
        assert!(live.taken_since(&C, first.number));
        live.release(&C, first);
        let second = second.await.unwrap();
        assert_eq!(live.len(), 1, "the newer connection still holds the id");
        live.release(&C, second);
        assert!(live.is_empty());
    }
}
