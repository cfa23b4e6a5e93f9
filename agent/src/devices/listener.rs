//! The embedded MQTT listener for devices: MQTT 3.1.1 and 5.
//!
//! An ingest endpoint, not a broker: devices publish, nothing is routed.
//! Per connection, a reader takes packets (checked by `dash-mqtt`) and
//! queues each publish's records for group commit, with its session
//! changes (see [`super::session`]); a writer sends replies in order,
//! waiting for each publish's commit before its PUBACK (QoS 1) or PUBREC
//! (QoS 2), and for each PUBREL's before its PUBCOMP. If the buffer fails,
//! the connection is closed without acknowledging, and the device resends.
//!
//! A publish that can never be stored (no mapping for its topic, a payload
//! that does not read, one over `devices.max_payload_bytes`) is
//! acknowledged anyway, so the device does not retry it forever, and
//! counted by reason; MQTT 5 devices get the reason code (0x90, 0x99 or
//! 0x97) with a reason string. Subscriptions are refused.
//!
//! A last will on a mapped topic is stored as a reading when the
//! connection ends without DISCONNECT (after MQTT 5's will delay, unless
//! the client is back); one on an unmapped topic is refused at CONNECT.
//!
//! Optionally the listener speaks TLS (`devices.tls_cert`, `devices.tls_key`)
//! and asks every device for a username and password
//! (`[[devices.credentials]]`, passwords kept as SHA-256); a device that
//! fails gets CONNACK "bad username or password" and is disconnected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use dash_mqtt::accept::{self, Admission, Stream};
use dash_mqtt::frame::FrameReader;
use dash_mqtt::packet::{self, Connect, Inbound, Publish, Version};
use dash_mqtt::{Encoder, Offer, Outbound, Reason, Refusal};
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::{self, Live, Session};
use super::{RouteError, Router};
use crate::buffer::{Buffer, SessionOp, client_key};
use crate::commit::{CommitError, Committer, Ticket};

/// Who may connect: TLS and the accepted credentials.
#[derive(Default)]
pub struct DeviceAuth {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `username -> SHA-256 of the password`; empty: no login asked.
    pub credentials: HashMap<String, [u8; 32]>,
}

impl DeviceAuth {
    fn admits(&self, connect: &Connect) -> bool {
        if self.credentials.is_empty() {
            return true;
        }
        let (Some(user), Some(password)) = (&connect.username, &connect.password) else {
            return false;
        };
        self.credentials
            .get(user)
            .is_some_and(|stored| dash_runtime::secret::token_matches_digest(password, stored))
    }
}

/// Most QoS 1 and 2 publishes a device may have unacknowledged at once.
pub const RECEIVE_MAX: u16 = 512;

/// Longest a session outlives its connection (MQTT 5 devices are told
/// when they ask for more; 3.1.1 sessions, kept "until clean", end here).
pub const SESSION_EXPIRY_MAX: u32 = 7 * 24 * 3600;

/// Most device connections open at once.
const MAX_CONNECTIONS: usize = 4096;

/// What a PUBLISH may take beyond its payload: the topic, packet id and
/// MQTT 5 properties.
const ENVELOPE: usize = 2 + 65_535 + 2 + 4 + 4096;

/// A reply, sent after its ticket (if any) resolved successfully.
struct Reply {
    ticket: Option<Ticket>,
    packet: Option<Outbound>,
    /// It acknowledges a QoS 1 or 2 publish (receive maximum).
    completes: bool,
}

impl Reply {
    fn now(packet: Outbound) -> Reply {
        Reply {
            ticket: None,
            packet: Some(packet),
            completes: false,
        }
    }
}

/// The device listener's shared state.
pub struct Devices {
    pub router: Arc<Router>,
    pub committer: Committer,
    pub buffer: Arc<Buffer>,
    pub max_payload: usize,
    pub auth: DeviceAuth,
    pub live: Live,
}

/// Accepts devices on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    devices: Arc<Devices>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    // Sessions whose connection was open when the agent stopped count from now.
    match devices.buffer.expire_sessions(dash_shared::now_micros()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(sessions = n, "expired device sessions removed"),
        Err(e) => tracing::warn!(error = %e, "could not expire device sessions"),
    }
    let router = devices.router.clone();
    let admission = Admission {
        name: "device listener",
        tls: devices.auth.tls.clone(),
        max_connections: MAX_CONNECTIONS,
        on_refused: Arc::new(move |r| {
            router
                .refusals
                .count("-", r.name(), "connection not accepted")
        }),
    };
    let tasks = connections.clone();
    accept::serve(
        listener,
        admission,
        stop.clone(),
        connections,
        move |stream, peer| {
            let (devices, stop, tasks) = (devices.clone(), stop.clone(), tasks.clone());
            async move {
                if let Err(e) = devices.connection(stream, stop, tasks).await {
                    tracing::debug!(%peer, error = %e, "device connection closed");
                }
            }
        },
    )
    .await;
}

/// How a connection ended.
enum End {
    /// DISCONNECT: the will is dropped unless MQTT 5's reason 0x04 asks.
    Disconnected { with_will: bool },
    /// Anything else: the will is stored.
    Lost,
}

impl Devices {
    async fn connection(
        self: Arc<Self>,
        stream: Stream,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> anyhow::Result<()> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut reader = FrameReader::new(self.max_payload + ENVELOPE);
        let frame = match accept::first_packet(&mut reader, &mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.router.refusals.count("-", "connect", &e.to_string());
                anyhow::bail!("{e}");
            }
        };
        let connect = match packet::read_connect(frame) {
            Ok(c) => c,
            Err((version, refusal)) => return self.refuse(&mut wr, version, None, refusal).await,
        };
        let encoder = Encoder {
            version: connect.version,
            max_packet: connect.max_packet,
            problem_info: connect.problem_info,
        };
        if let Err(r) = self.admit(&connect) {
            return self
                .refuse(&mut wr, connect.version, Some(&connect), r)
                .await;
        }
        let mut connect = connect;
        let assigned = connect.client_id.is_empty().then(|| {
            connect.client_id = format!("dash-{:016x}", rand::random::<u64>());
            connect.client_id.clone()
        });
        let client = client_key(&connect.client_id);
        let Some(hold) = self.live.take(client, TAKEOVER_WITHIN).await else {
            anyhow::bail!(
                "the connection it takes over did not finish within {} s",
                TAKEOVER_WITHIN.as_secs()
            );
        };
        let result = self
            .session(
                &connect,
                assigned,
                encoder,
                (rd, reader),
                wr,
                &hold.taken_over,
                &stop,
            )
            .await;
        let (end, session_end) = match result {
            Ok(ended) => ended,
            Err(e) => {
                self.live.release(&client, hold);
                return Err(e);
            }
        };
        let number = hold.number;
        // Wait for the end of session to be written before another
        // connection may read it.
        if let Some(Err(e)) = match session_end {
            Some(ticket) => Some(ticket.wait().await),
            None => None,
        } {
            tracing::warn!(client = %dash_runtime::text::clip_for_log(&connect.client_id, 100), error = %e, "the end of a device session was not stored; it may be offered again");
        }
        self.live.release(&client, hold);
        if let (End::Lost | End::Disconnected { with_will: true }, Some(will)) =
            (end, connect.will.clone())
        {
            let devices = self.clone();
            tasks.spawn(async move {
                devices
                    .store_will(&connect, will, client, number, stop)
                    .await
            });
        }
        Ok(())
    }

    /// Login and last will.
    fn admit(&self, connect: &Connect) -> Result<(), Refusal> {
        if !self.auth.admits(connect) {
            return Err(Refusal::new(
                Reason::BadLogin,
                format!(
                    "bad username or password (user {:?})",
                    connect.username.as_deref().unwrap_or("")
                ),
            ));
        }
        if let Some(will) = connect
            .will
            .as_ref()
            .filter(|w| !self.router.maps(&w.topic))
        {
            return Err(Refusal::new(
                Reason::TopicNameInvalid,
                format!("no mapping reads the will's topic {:?}", will.topic),
            ));
        }
        Ok(())
    }

    /// Answers a refused CONNECT (where the version has a code for it) and
    /// closes.
    async fn refuse<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        version: Version,
        connect: Option<&Connect>,
        refusal: Refusal,
    ) -> anyhow::Result<()> {
        let client = connect.map_or("-", |c| c.client_id.as_str());
        self.router
            .refusals
            .count(client, refusal.reason.name(), &refusal.detail);
        if version == Version::V5 || refusal.reason.connack_v311().is_some() {
            let encoder = Encoder {
                version,
                max_packet: connect.and_then(|c| c.max_packet),
                problem_info: true,
            };
            let mut out = BytesMut::new();
            encoder.encode(&Outbound::ConnRefused(refusal.clone()), &mut out);
            let _ = tokio::time::timeout(WRITE_WITHIN, wr.write_all(&out)).await;
        }
        let _ = tokio::time::timeout(WRITE_WITHIN, wr.shutdown()).await;
        anyhow::bail!("CONNECT refused: {}", refusal.detail)
    }

    /// Runs a connected session; returns how it ended and the ticket of
    /// the session's last write.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        connect: &Connect,
        assigned: Option<String>,
        encoder: Encoder,
        (mut rd, mut reader): (tokio::io::ReadHalf<Stream>, FrameReader),
        wr: WriteHalf<Stream>,
        taken_over: &CancellationToken,
        stop: &CancellationToken,
    ) -> anyhow::Result<(End, Option<Ticket>)> {
        let client = client_key(&connect.client_id);
        let mut expiry = connect.session_expiry.min(SESSION_EXPIRY_MAX);
        let kept = expiry > 0;
        let now = dash_shared::now_micros();
        let stored = if connect.clean {
            None
        } else {
            self.buffer.session(&client)?.filter(|s| {
                s.ended == 0 || now.saturating_sub(s.ended) <= i64::from(s.expiry_secs) * 1_000_000
            })
        };
        let present = stored.is_some();
        let mut ops = Vec::new();
        // A session not kept lives in memory for this connection only: what
        // was stored goes now (MQTT 5 clean start 0 with expiry 0 resumes
        // it and ends it when the connection closes).
        if !present || !kept {
            ops.push(SessionOp::Clear { client });
        }
        if kept {
            ops.push(SessionOp::Meta {
                client,
                ended: 0,
                expiry_secs: expiry,
            });
        }
        let mut session = Session::new(client, kept, stored);
        let (replies, rx) = mpsc::channel::<Reply>(usize::from(RECEIVE_MAX) + 64);
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut writer = tokio::spawn(write_replies(wr, rx, encoder, inflight.clone()));
        let offer = Offer {
            assigned_client_id: assigned,
            receive_max: RECEIVE_MAX,
            max_packet: u32::try_from(self.max_payload + ENVELOPE).unwrap_or(u32::MAX),
            session_expiry: (connect.version == Version::V5 && expiry < connect.session_expiry)
                .then_some(expiry),
            server_keep_alive: None,
        };
        // CONNACK after the session's reset is durable: a later connection
        // must never find a session this one discarded.
        let ticket = self.committer.enqueue_with_session(Vec::new(), ops).await?;
        let _ = replies
            .send(Reply {
                ticket: Some(ticket),
                packet: Some(Outbound::ConnAck {
                    session_present: present,
                    offer,
                }),
                completes: false,
            })
            .await;
        let idle = accept::idle_limit(connect.keep_alive);
        let end = loop {
            // Packets already read go first; the socket, timers and stop
            // signals are looked at only when they run out.
            let next = match reader.buffered() {
                Ok(Some(frame)) => Ok(Some(frame)),
                Err(e) => Err(Some(e)),
                Ok(None) => tokio::select! {
                // What the device sent before anything else happened is
                // taken first: a device that disconnects and reconnects at
                // once must not lose the QoS 0 publishes still unread.
                biased;
                next = accept::next_packet(&mut reader, &mut rd, idle) => next,
                // Another connection with this client id (3.1.4-2).
                _ = taken_over.cancelled() => {
                    let _ = replies.send(Reply::now(Outbound::Disconnect(Refusal::new(Reason::SessionTakenOver, "another connection took this client id")))).await;
                    break End::Lost;
                }
                _ = stop.cancelled() => {
                    let _ = replies.send(Reply::now(Outbound::Disconnect(Refusal::new(Reason::ServerShuttingDown, "the agent is stopping")))).await;
                    break End::Disconnected { with_will: false };
                }
                // The writer failed: the buffer refused, or the socket is gone.
                _ = &mut writer => break End::Lost,
                },
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => break End::Lost,
                Err(None) => {
                    self.router.refusals.count(
                        &connect.client_id,
                        Reason::KeepAliveTimeout.name(),
                        "silent for 1.5 times its keep-alive",
                    );
                    let _ = replies
                        .send(Reply::now(Outbound::Disconnect(Refusal::new(
                            Reason::KeepAliveTimeout,
                            "keep-alive expired",
                        ))))
                        .await;
                    break End::Lost;
                }
                Err(Some(e)) => {
                    let reason = match e {
                        dash_mqtt::frame::FrameError::TooLarge { .. } => Reason::PacketTooLarge,
                        dash_mqtt::frame::FrameError::Io(_) => break End::Lost,
                        _ => Reason::MalformedPacket,
                    };
                    self.router
                        .refusals
                        .count(&connect.client_id, reason.name(), &e.to_string());
                    let _ = replies
                        .send(Reply::now(Outbound::Disconnect(Refusal::new(
                            reason,
                            e.to_string(),
                        ))))
                        .await;
                    break End::Lost;
                }
            };
            let packet = match packet::decode(frame, connect.version) {
                Ok(p) => p,
                Err(r) => {
                    self.router
                        .refusals
                        .count(&connect.client_id, r.reason.name(), &r.detail);
                    let _ = replies.send(Reply::now(Outbound::Disconnect(r))).await;
                    break End::Lost;
                }
            };
            let reply = match packet {
                Inbound::Publish(p) if p.cut && connect.version == Version::V5 => {
                    // Over the maximum packet size offered in CONNACK (3.2.2-15).
                    let r = Refusal::new(
                        Reason::PacketTooLarge,
                        format!(
                            "a PUBLISH of {} bytes is over the maximum packet size offered",
                            p.payload_len
                        ),
                    );
                    self.router
                        .refusals
                        .count(&connect.client_id, r.reason.name(), &r.detail);
                    let _ = replies.send(Reply::now(Outbound::Disconnect(r))).await;
                    break End::Lost;
                }
                Inbound::Publish(p) => {
                    if p.qos > 0
                        && inflight.fetch_add(1, Ordering::SeqCst) >= usize::from(RECEIVE_MAX)
                        && connect.version == Version::V5
                    {
                        let r = Refusal::new(
                            Reason::ReceiveMaximumExceeded,
                            format!("more than {RECEIVE_MAX} publishes unacknowledged"),
                        );
                        self.router
                            .refusals
                            .count(&connect.client_id, r.reason.name(), &r.detail);
                        let _ = replies.send(Reply::now(Outbound::Disconnect(r))).await;
                        break End::Lost;
                    }
                    self.publish(&connect.client_id, &mut session, p).await?
                }
                Inbound::PubRel(pkid) => {
                    let (found, ops) = session.release(pkid);
                    let ticket = match ops.is_empty() {
                        true => None,
                        false => Some(self.committer.enqueue_with_session(Vec::new(), ops).await?),
                    };
                    Some(Reply {
                        ticket,
                        packet: Some(Outbound::PubComp { pkid, found }),
                        completes: false,
                    })
                }
                Inbound::Subscribe { pkid, filters } => {
                    Some(Reply::now(Outbound::SubAck { pkid, filters }))
                }
                Inbound::Unsubscribe { pkid, filters } => {
                    Some(Reply::now(Outbound::UnsubAck { pkid, filters }))
                }
                Inbound::PingReq => Some(Reply::now(Outbound::PingResp)),
                // Nothing is ever sent to a device that it could acknowledge.
                Inbound::PubAck(_) | Inbound::PubRec(_) | Inbound::PubComp(_) => None,
                Inbound::Disconnect {
                    with_will,
                    session_expiry,
                } => {
                    if let Some(asked) = session_expiry {
                        if connect.session_expiry == 0 && asked > 0 {
                            // MQTT 5 3.14.2-2: a protocol error, and the will goes out.
                            break End::Lost;
                        }
                        expiry = asked.min(SESSION_EXPIRY_MAX);
                    }
                    break End::Disconnected { with_will };
                }
            };
            if let Some(reply) = reply {
                if replies.send(reply).await.is_err() {
                    break End::Lost;
                }
            }
        };
        drop(replies);
        if !writer.is_finished()
            && tokio::time::timeout(WRITER_WITHIN, &mut writer)
                .await
                .is_err()
        {
            writer.abort();
            tracing::warn!(
                "a device connection's replies did not finish within {} s",
                WRITER_WITHIN.as_secs()
            );
        }
        // The session outlives the connection by its expiry, from now.
        let last = if kept && expiry > 0 {
            vec![SessionOp::Meta {
                client,
                ended: dash_shared::now_micros(),
                expiry_secs: expiry,
            }]
        } else if kept {
            vec![SessionOp::Clear { client }]
        } else {
            Vec::new()
        };
        let ticket = match last.is_empty() {
            true => None,
            false => self
                .committer
                .enqueue_with_session(Vec::new(), last)
                .await
                .ok(),
        };
        Ok((end, ticket))
    }

    /// Queues a publish's records with its session changes; the reply
    /// acknowledges it once they are durable.
    async fn publish(
        &self,
        client: &str,
        session: &mut Session,
        p: Publish,
    ) -> Result<Option<Reply>, CommitError> {
        let refusal = if p.payload_len > self.max_payload {
            Some(Refusal::new(
                Reason::QuotaExceeded,
                format!(
                    "a payload of {} bytes is over devices.max_payload_bytes = {}",
                    p.payload_len, self.max_payload
                ),
            ))
        } else {
            None
        };
        let (ticket, refusal) = match refusal {
            Some(r) => (None, Some(r)),
            None => {
                let plan = session.publish(p.qos, p.dup, p.pkid, || {
                    session::digest(&p.topic, &p.payload)
                });
                if !plan.store {
                    (None, None)
                } else {
                    match self.router.records(&p.topic, &p.payload) {
                        Ok(records) => (
                            Some(
                                self.committer
                                    .enqueue_with_session(records, plan.ops)
                                    .await?,
                            ),
                            None,
                        ),
                        Err(e) => {
                            session.refused(p.qos, p.pkid);
                            let reason = match e {
                                RouteError::NoMapping => Reason::TopicNameInvalid,
                                RouteError::Payload(_) => Reason::PayloadFormatInvalid,
                            };
                            (None, Some(Refusal::new(reason, format!("{e}"))))
                        }
                    }
                }
            }
        };
        if let Some(r) = &refusal {
            let reason = match r.reason {
                Reason::TopicNameInvalid => "topic_not_mapped",
                Reason::PayloadFormatInvalid => "payload",
                _ => "payload_too_large",
            };
            self.router.refusals.count(client, reason, &r.detail);
        }
        let packet = match p.qos {
            0 => None,
            1 => Some(Outbound::PubAck {
                pkid: p.pkid,
                refusal,
            }),
            _ => Some(Outbound::PubRec {
                pkid: p.pkid,
                refusal,
            }),
        };
        Ok(Some(Reply {
            ticket,
            completes: packet.is_some(),
            packet,
        }))
    }

    /// Stores a last will as a reading, after MQTT 5's will delay unless
    /// the client came back first.
    async fn store_will(
        &self,
        connect: &Connect,
        will: dash_mqtt::Will,
        client: crate::buffer::ClientKey,
        number: u64,
        stop: CancellationToken,
    ) {
        // The will waits for its delay or the end of the session, whichever
        // comes first (MQTT 5 3.1.3.2.2).
        let delay = will.delay.min(connect.session_expiry);
        if delay > 0 {
            let delay = Duration::from_secs(u64::from(delay));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
            if self.live.taken_since(&client, number) {
                return;
            }
        }
        let records = match self.router.records(&will.topic, &will.payload) {
            Ok(r) => r,
            Err(e) => {
                self.router
                    .refusals
                    .count(&connect.client_id, "will", &e.to_string());
                return;
            }
        };
        match self
            .committer
            .enqueue_with_session(records, Vec::new())
            .await
        {
            Ok(ticket) => match ticket.wait().await {
                Ok(_) => {
                    tracing::info!(client = %dash_runtime::text::clip_for_log(&connect.client_id, 100), topic = %will.topic, "device's last will stored")
                }
                Err(e) => tracing::warn!(error = %e, "device's last will not stored"),
            },
            Err(e) => tracing::warn!(error = %e, "device's last will not stored"),
        }
    }
}

/// Longest a reply (or a TLS close) may take to write before the
/// connection is dropped.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// Longest a new connection waits for the one it takes over to finish.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(30);

/// Longest a closing connection waits for its replies (commits included;
/// the commit watchdog ends a stalled agent sooner).
const WRITER_WITHIN: Duration = Duration::from_secs(60);

/// Sends replies in order, each after its ticket; replies that are ready
/// together go out in one write.
async fn write_replies<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<Reply>,
    encoder: Encoder,
    inflight: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut out = BytesMut::with_capacity(4096);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut reply) = next.take() {
            if let Some(mut ticket) = reply.ticket.take() {
                let outcome = match ticket.ready() {
                    Some(outcome) => outcome,
                    None => {
                        // Send what is ready before waiting for this commit.
                        flush(&mut wr, &mut out).await?;
                        ticket.wait().await
                    }
                };
                // Not durable: close without acknowledging; the device resends.
                if let Err(e) = outcome {
                    flush(&mut wr, &mut out).await?;
                    if matches!(e, CommitError::Full(_)) {
                        // Do not invite an immediate resend into a full buffer.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    return Err(e.into());
                }
            }
            if reply.completes {
                inflight.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(packet) = reply.packet {
                encoder.encode(&packet, &mut out);
            }
            next = rx.try_recv().ok();
        }
        flush(&mut wr, &mut out).await?;
    }
    let _ = tokio::time::timeout(WRITE_WITHIN, wr.shutdown()).await;
    Ok(())
}

async fn flush<W: AsyncWrite>(wr: &mut WriteHalf<W>, out: &mut BytesMut) -> anyhow::Result<()> {
    if !out.is_empty() {
        tokio::time::timeout(WRITE_WITHIN, wr.write_all(out)).await??;
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::Stored;
    use tokio::io::AsyncReadExt;

    fn ack(pkid: u16, ticket: Ticket) -> Reply {
        Reply {
            ticket: Some(ticket),
            packet: Some(Outbound::PubAck {
                pkid,
                refusal: None,
            }),
            completes: true,
        }
    }

    /// The writer against an in-memory pipe: acknowledgements leave in the
    /// order of the publishes, whatever order their commits finish in, and
    /// none leaves after a commit that failed.
    #[tokio::test]
    async fn acks_leave_in_publish_order_and_stop_at_a_failed_commit() {
        let (ours, mut device) = tokio::io::duplex(1024);
        let (_, wr) = tokio::io::split(ours);
        let (tx, rx) = mpsc::channel(8);
        let inflight = Arc::new(AtomicUsize::new(4));
        let writer = tokio::spawn(write_replies(
            wr,
            rx,
            Encoder::before_connect(),
            inflight.clone(),
        ));
        let mut done = Vec::new();
        for pkid in 1..=4 {
            let (resolve, ticket) = Ticket::by_hand();
            tx.send(ack(pkid, ticket)).await.unwrap();
            done.push(resolve);
        }
        let mut done = done.into_iter();
        let (one, two, three, four) = (
            done.next().unwrap(),
            done.next().unwrap(),
            done.next().unwrap(),
            done.next().unwrap(),
        );
        four.send(Ok(Stored::New)).unwrap();
        two.send(Ok(Stored::New)).unwrap();
        tokio::task::yield_now().await;
        let mut got = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), device.read_exact(&mut got[..1]))
                .await
                .is_err(),
            "nothing may leave before the first publish's commit"
        );
        one.send(Ok(Stored::New)).unwrap();
        let mut acks = [0u8; 8];
        device.read_exact(&mut acks).await.unwrap();
        assert_eq!(
            acks,
            [0x40, 2, 0, 1, 0x40, 2, 0, 2],
            "1 then 2; 4 waits for 3"
        );
        three
            .send(Err(CommitError::Buffer("disk full".into())))
            .unwrap();
        assert!(
            writer.await.unwrap().is_err(),
            "a failed commit ends the connection"
        );
        let mut rest = Vec::new();
        device.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "neither 3 nor 4 is acknowledged: {rest:?}");
        assert_eq!(inflight.load(Ordering::SeqCst), 2);
    }
}
