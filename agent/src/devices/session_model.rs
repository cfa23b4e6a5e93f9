//! A property test of the session rules against a reference model: a
//! device that keeps its session publishes at QoS 1 and 2, loses replies,
//! reconnects, is taken over, and sees the agent crash, in random order;
//! whatever happens, nothing acknowledged is lost and nothing is stored
//! twice (QoS 2 never, QoS 1 when its redelivery is recognised).
//!
//! The server side is [`Session`] with its ops applied to a real buffer's
//! session tree, as the listener does: a publish's records and ops become
//! durable together at a commit, and replies go out only after it.

use std::collections::HashMap;

use proptest::prelude::*;

use super::session::{Session, digest};
use crate::buffer::{Buffer, SessionOp, client_key};

#[derive(Debug, Clone)]
enum Step {
    /// The device publishes a new message under packet id `pkid` (if free).
    Publish { qos: u8, pkid: u16 },
    /// The server commits what is queued; its replies are lost if `lose`.
    Commit { lose: bool },
    /// The connection drops; what was queued still commits.
    Drop,
    /// The agent is killed: what was queued is lost.
    Crash,
    /// The device reconnects (a takeover if the old one was still open)
    /// and resends what is unfinished.
    Reconnect,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..=2, 1u16..=4).prop_map(|(qos, pkid)| Step::Publish { qos, pkid }),
        4 => any::<bool>().prop_map(|lose| Step::Commit { lose }),
        1 => Just(Step::Drop),
        1 => Just(Step::Crash),
        2 => Just(Step::Reconnect),
    ]
}

/// Where a device's message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// PUBLISH sent, no PUBACK / PUBREC yet.
    Published,
    /// PUBREC seen, PUBREL sent, no PUBCOMP yet.
    Released,
}

/// A client packet, as the server takes it.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Publish {
        qos: u8,
        pkid: u16,
        dup: bool,
        msg: u32,
    },
    PubRel {
        pkid: u16,
    },
}

/// A reply waiting for its commit.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Ack(u16),
    Rec(u16),
    Comp(u16),
}

struct World {
    buffer: Buffer,
    _dir: tempfile::TempDir,
    session: Option<Session>,
    /// Ops and stored messages queued for the next commit, with replies.
    queued: Vec<(Vec<SessionOp>, Option<u32>, Reply)>,
    /// Durable: every message stored, with how many times.
    stored: HashMap<u32, u32>,
    /// The device: its unfinished flows by packet id, and what completed.
    flows: HashMap<u16, (u8, u32, Flow)>,
    completed: Vec<(u8, u32)>,
    next_msg: u32,
}

const CLIENT: &str = "model-device";

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(dir.path()).unwrap();
        let mut w = World {
            buffer,
            _dir: dir,
            session: None,
            queued: Vec::new(),
            stored: HashMap::new(),
            flows: HashMap::new(),
            completed: Vec::new(),
            next_msg: 0,
        };
        w.connect();
        w
    }

    fn topic(msg: u32) -> (String, Vec<u8>) {
        ("sensors/d/v".to_owned(), msg.to_string().into_bytes())
    }

    /// The listener's CONNECT with clean session 0: the stored session.
    fn connect(&mut self) {
        let key = client_key(CLIENT);
        let stored = self.buffer.session(&key).unwrap();
        self.session = Some(Session::new(key, true, stored));
    }

    fn server(&mut self, sent: Sent) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match sent {
            Sent::Publish {
                qos,
                pkid,
                dup,
                msg,
            } => {
                let (topic, payload) = Self::topic(msg);
                let plan = session.publish(qos, dup, pkid, || digest(&topic, &payload));
                let reply = if qos == 1 {
                    Reply::Ack(pkid)
                } else {
                    Reply::Rec(pkid)
                };
                self.queued
                    .push((plan.ops, plan.store.then_some(msg), reply));
            }
            Sent::PubRel { pkid } => {
                let (_, ops) = session.release(pkid);
                self.queued.push((ops, None, Reply::Comp(pkid)));
            }
        }
    }

    fn commit(&mut self, lose: bool) {
        for (ops, msg, reply) in std::mem::take(&mut self.queued) {
            self.buffer.apply_session_ops(&ops).unwrap();
            if let Some(m) = msg {
                *self.stored.entry(m).or_default() += 1;
            }
            if !lose && self.session.is_some() {
                self.client_gets(reply);
            }
        }
    }

    fn client_gets(&mut self, reply: Reply) {
        match reply {
            Reply::Ack(pkid) => {
                if let Some((1, msg, Flow::Published)) = self.flows.get(&pkid).copied() {
                    self.flows.remove(&pkid);
                    self.completed.push((1, msg));
                }
            }
            Reply::Rec(pkid) => {
                if let Some((2, msg, Flow::Published)) = self.flows.get(&pkid).copied() {
                    self.flows.insert(pkid, (2, msg, Flow::Released));
                    self.server(Sent::PubRel { pkid });
                }
            }
            Reply::Comp(pkid) => {
                if let Some((2, msg, Flow::Released)) = self.flows.get(&pkid).copied() {
                    self.flows.remove(&pkid);
                    self.completed.push((2, msg));
                }
            }
        }
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Publish { qos, pkid } => {
                if self.session.is_none() || self.flows.contains_key(&pkid) {
                    return;
                }
                let msg = self.next_msg;
                self.next_msg += 1;
                self.flows.insert(pkid, (qos, msg, Flow::Published));
                self.server(Sent::Publish {
                    qos,
                    pkid,
                    dup: false,
                    msg,
                });
            }
            Step::Commit { lose } => self.commit(lose),
            Step::Drop => {
                self.session = None;
                self.commit(true);
            }
            Step::Crash => {
                self.session = None;
                self.queued.clear();
            }
            Step::Reconnect => {
                // A takeover: the old connection's queue commits first.
                self.commit(true);
                self.connect();
                let mut resend: Vec<(u16, (u8, u32, Flow))> =
                    self.flows.iter().map(|(k, v)| (*k, *v)).collect();
                resend.sort_by_key(|(pkid, _)| *pkid);
                for (pkid, (qos, msg, flow)) in resend {
                    match flow {
                        Flow::Published => self.server(Sent::Publish {
                            qos,
                            pkid,
                            dup: true,
                            msg,
                        }),
                        Flow::Released => self.server(Sent::PubRel { pkid }),
                    }
                }
            }
        }
    }

    /// Reconnects and commits until every flow is finished.
    fn finish(&mut self) {
        for _ in 0..4 {
            self.run(Step::Reconnect);
            self.commit(false);
            self.commit(false);
            if self.flows.is_empty() {
                return;
            }
        }
        panic!("flows never finished: {:?}", self.flows);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn nothing_acknowledged_is_lost_and_nothing_is_stored_twice(
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let mut w = World::new();
        for s in steps {
            w.run(s);
        }
        w.finish();
        for (qos, msg) in &w.completed {
            prop_assert_eq!(w.stored.get(msg).copied().unwrap_or(0), 1,
                "message {} (QoS {}) acknowledged: stored once", msg, qos);
        }
        for (msg, n) in &w.stored {
            prop_assert!(*n == 1, "message {} stored {} times", msg, n);
        }
        prop_assert_eq!(w.completed.len() as u32, w.next_msg, "every message completed in the end");
    }
}
