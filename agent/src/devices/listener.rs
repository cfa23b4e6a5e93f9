//! The embedded MQTT 3.1.1 listener for devices.
//!
//! Per connection, a reader parses packets and queues each publish's samples
//! for group commit; a writer sends replies in order, waiting for each
//! publish's commit before its PUBACK (QoS 1) or PUBREC (QoS 2). A message
//! that cannot be mapped is acknowledged anyway (it can never succeed, and a
//! device retrying it forever helps no one) and counted. If the buffer fails,
//! the connection is closed without acknowledging, and the device resends.
//!
//! Packets are read with rumqttc's MQTT codec. Subscriptions are refused
//! (SUBACK failure): this endpoint only takes data in.
//!
//! Optionally the listener speaks TLS (`devices.tls_cert`, `devices.tls_key`)
//! and asks every device for a username and password
//! (`[[devices.credentials]]`, passwords kept as SHA-256); a device that
//! fails gets CONNACK "bad username or password" and is disconnected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Login, Packet, PubAck, PubComp, PubRec, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Router;
use crate::commit::{CommitError, Committer, Ticket};
use crate::sample::Class;

/// A reply, sent after its ticket (if any) resolved successfully.
struct Reply {
    ticket: Option<Ticket>,
    packet: Option<Packet>,
}

/// Who may connect: TLS and the accepted credentials.
#[derive(Default)]
pub struct DeviceAuth {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `username -> SHA-256 of the password`; empty: no login asked.
    pub credentials: HashMap<String, [u8; 32]>,
}

impl DeviceAuth {
    fn admits(&self, login: Option<&Login>) -> bool {
        if self.credentials.is_empty() {
            return true;
        }
        let Some(login) = login else { return false };
        self.credentials.get(&login.username).is_some_and(|stored| {
            dash_runtime::secret::token_matches_digest(&login.password, stored)
        })
    }
}

/// Accepts devices on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    committer: Committer,
    max_payload: usize,
    auth: Arc<DeviceAuth>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "device listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (router, committer, stop) = (router.clone(), committer.clone(), stop.clone());
        let auth = auth.clone();
        connections.spawn(async move {
            let _ = socket.set_nodelay(true);
            let result = match &auth.tls {
                None => connection(socket, &auth, router, committer, max_payload, stop).await,
                Some(tls) => match tokio::time::timeout(HANDSHAKE, tls.accept(socket)).await {
                    Ok(Ok(socket)) => {
                        connection(socket, &auth, router, committer, max_payload, stop).await
                    }
                    Ok(Err(e)) => Err(anyhow::anyhow!("TLS handshake failed: {e}")),
                    Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "device connection closed");
            }
        });
    }
}

/// Longest TLS handshake before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

async fn connection<S>(
    socket: S,
    auth: &DeviceAuth,
    router: Arc<Router>,
    committer: Committer,
    max_payload: usize,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(socket);
    let (replies, rx) = mpsc::channel::<Reply>(1024);
    let writer = tokio::spawn(write_replies(wr, rx));
    let mut buf = BytesMut::with_capacity(4096);
    // MQTT: the server may close a client silent for 1.5x its keep-alive; 0 means never.
    let mut idle_limit: Option<Duration> = Some(Duration::from_secs(60));
    let mut connected = false;
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    // A device has this long to send its CONNECT, however it trickles bytes.
    let connect_by = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let packet = match Packet::read(&mut buf, max_payload) {
            Ok(p) => p,
            Err(CodecError::InsufficientBytes(_)) => {
                if !connected && tokio::time::Instant::now() > connect_by {
                    anyhow::bail!("no CONNECT within 10 s");
                }
                let read = rd.read_buf(&mut buf);
                let n = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = async {
                        match idle_limit {
                            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| anyhow::anyhow!("keep-alive expired")),
                            None => Ok(read.await),
                        }
                    } => r??,
                };
                if n == 0 {
                    break;
                }
                continue;
            }
            Err(e) => anyhow::bail!("malformed packet: {e}"),
        };
        let reply = match packet {
            Packet::Connect(c) if !connected => {
                if !auth.admits(c.login.as_ref()) {
                    let refused = ConnAck::new(ConnectReturnCode::BadUserNamePassword, false);
                    let _ = replies
                        .send(Reply {
                            ticket: None,
                            packet: Some(Packet::ConnAck(refused)),
                        })
                        .await;
                    drop(replies);
                    let _ = writer.await;
                    anyhow::bail!(
                        "refused: bad username or password (user {:?})",
                        c.login.as_ref().map(|l| l.username.as_str()).unwrap_or("")
                    );
                }
                connected = true;
                idle_limit = (c.keep_alive > 0)
                    .then(|| Duration::from_millis(u64::from(c.keep_alive) * 1500));
                Some(Reply {
                    ticket: None,
                    packet: Some(Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::Success,
                        false,
                    ))),
                })
            }
            _ if !connected => anyhow::bail!("first packet was not CONNECT"),
            Packet::Connect(_) => anyhow::bail!("a second CONNECT is a protocol violation"),
            Packet::Publish(p) => {
                let dup_qos2 = p.qos == QoS::ExactlyOnce && awaiting_rel.contains(&p.pkid);
                let ticket = match (dup_qos2, router.records(&p.topic, &p.payload)) {
                    (false, Ok(samples)) => Some(
                        committer
                            .enqueue_records(Class::Telemetry, samples, None)
                            .await?,
                    ),
                    _ => None,
                };
                let ack = match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => {
                        awaiting_rel.insert(p.pkid);
                        Some(Packet::PubRec(PubRec::new(p.pkid)))
                    }
                };
                Some(Reply {
                    ticket,
                    packet: ack,
                })
            }
            Packet::PubRel(r) => {
                awaiting_rel.remove(&r.pkid);
                Some(Reply {
                    ticket: None,
                    packet: Some(Packet::PubComp(PubComp::new(r.pkid))),
                })
            }
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|_| SubscribeReasonCode::Failure)
                    .collect();
                Some(Reply {
                    ticket: None,
                    packet: Some(Packet::SubAck(SubAck::new(s.pkid, codes))),
                })
            }
            Packet::Unsubscribe(u) => Some(Reply {
                ticket: None,
                packet: Some(Packet::UnsubAck(UnsubAck::new(u.pkid))),
            }),
            Packet::PingReq => Some(Reply {
                ticket: None,
                packet: Some(Packet::PingResp),
            }),
            Packet::Disconnect => break,
            _ => None,
        };
        if let Some(reply) = reply {
            if replies.send(reply).await.is_err() {
                break; // the writer failed: the connection is gone
            }
        }
    }
    drop(replies);
    writer.await??;
    Ok(())
}

async fn write_replies<W: AsyncWrite>(
    wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<Reply>,
) -> anyhow::Result<()> {
    let mut wr = wr;
    let mut out = BytesMut::with_capacity(256);
    while let Some(reply) = rx.recv().await {
        if let Some(ticket) = reply.ticket {
            // Not durable: close without acknowledging; the device resends.
            if let Err(e) = ticket.wait().await {
                if matches!(e, CommitError::Full(_)) {
                    // Do not invite an immediate resend into a full buffer.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                return Err(e.into());
            }
        }
        if let Some(packet) = reply.packet {
            out.clear();
            packet.write(&mut out, usize::MAX)?;
            wr.write_all(&out).await?;
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}
