//! The front of the embedded broker: TLS, agent identity, and a check of
//! what each agent publishes and subscribes to.
//!
//! rumqttd cannot tie a client to the topics it may use, and its TLS stack
//! (rustls 0.22 with webpki 0.102) carries open advisories. So the
//! aggregator terminates TLS itself, with current rustls, and stands in
//! front of rumqttd, which listens on loopback only and admits nobody
//! without a login the aggregator draws at start:
//!
//! ```text
//! agent --TLS (client certificate) or plain + token--> gate --loopback, internal login--> rumqttd <-- link (ingest)
//! ```
//!
//! Accepting, packet reading, the CONNECT deadline and the keep-alive rule
//! are `dash-mqtt`'s, shared with the agent's device listener. The gate
//! speaks MQTT 3.1.1 (rumqttd's level): a CONNECT of another level gets
//! CONNACK 0x01 and a close. A client that asks for keep-alive 0 (no
//! timeout, which rumqttd refuses) is passed on with [`BROKER_KEEP_ALIVE`]
//! and the gate pings the broker for it, dropping the broker's PINGRESPs.
//! The gate answers every UNSUBSCRIBE itself (rumqttd sends no UNSUBACK for
//! a filter never subscribed) and drops the broker's UNSUBACKs. A second
//! CONNECT ends the connection (3.1.0-2).
//!
//! Per connection, the gate reads the CONNECT (with rumqttc's MQTT 3.1.1
//! codec) and, with `broker.auth = "agents"`, finds the agent by its client
//! certificate's SHA-256 or by its token (username `tenant/agent`) in the
//! registry. An unknown, revoked or unproven client gets a refusing CONNACK.
//! An admitted agent's client id becomes `tenant/agent` (so nobody can take
//! over another agent's session), its login is replaced by the internal one
//! (secrets never reach the broker), and every later packet is checked:
//! PUBLISH only to its own `batch` or `status` topic, SUBSCRIBE only below
//! `dash/v1/{tenant}/{agent}/` (its acks and, later, commands), the last will
//! only on its own status topic. Anything else is counted
//! (`dash_auth_refused_total{stage,reason}`), logged, and ends the
//! connection before it reaches the broker. Revoking an agent closes its
//! open connections within two seconds. Packets from the broker to the agent
//! pass unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use dash_mqtt::accept::{self, Admission, NotAccepted, Stream};
use dash_mqtt::frame::{self, Frame, FrameReader};
use dash_shared::topic::{self, TopicKind};
use dash_shared::{AgentId, TenantId};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Login, Packet, UnsubAck};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::registry::{Registry, Standing};
use crate::telemetry::metrics::Metrics;

/// Who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone who reaches the broker may publish as any agent (tests, demos,
    /// a closed network).
    None,
    /// Only registered, unrevoked agents, each only as itself.
    Agents,
}

/// The gate's listeners and where the broker is.
pub struct GateConfig {
    /// Plain MQTT (tokens travel in clear: only inside a trusted network).
    pub plain: Option<SocketAddr>,
    /// TLS, with the server configuration (client certificates optional or required).
    pub tls: Option<(SocketAddr, Arc<tokio_rustls::rustls::ServerConfig>)>,
    pub auth: AuthMode,
    /// rumqttd, on loopback.
    pub broker: SocketAddr,
    /// The login rumqttd asks of every client.
    pub broker_login: Login,
    /// Largest packet accepted from a client.
    pub max_packet: usize,
}

/// An admitted agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    tenant: TenantId,
    agent: AgentId,
}

impl Identity {
    fn label(&self) -> String {
        format!("{}/{}", self.tenant, self.agent)
    }

    /// The agent's client id at the broker: one per agent, and free of the
    /// characters rumqttd refuses (`+$#/`). Ids cannot contain `:`.
    fn client_id(&self) -> String {
        format!("dash:{}:{}", self.tenant, self.agent)
    }

    fn own_prefix(&self) -> String {
        format!("{}/{}/{}/", topic::PREFIX, self.tenant, self.agent)
    }
}

/// Why a client was refused, and what it is told.
struct Refusal {
    stage: &'static str,
    reason: &'static str,
    code: Option<ConnectReturnCode>,
    detail: String,
}

fn refuse(
    stage: &'static str,
    reason: &'static str,
    code: Option<ConnectReturnCode>,
    detail: impl Into<String>,
) -> Refusal {
    Refusal {
        stage,
        reason,
        code,
        detail: detail.into(),
    }
}

struct Gate {
    config: GateConfig,
    registry: Option<Registry>,
    metrics: Arc<Metrics>,
    /// Open connections per agent (numbered), to close them on revocation.
    live: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    next: AtomicU64,
}

/// The largest CONNECT accepted (a client id, a login and a last will).
const MAX_CONNECT: usize = 16 * 1024;

/// Most connections open at once, admitted or not.
const MAX_CONNECTIONS: usize = 8192;

/// The keep-alive the broker is given for a client that asked for none:
/// the gate pings the broker at half of it while the client is silent.
pub const BROKER_KEEP_ALIVE: u16 = 600;

/// Binds the listeners (failing with the address that could not be bound)
/// and serves until `stop`. `registry` is needed with [`AuthMode::Agents`].
/// Where the gate listens for agents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listening {
    pub plain: Option<std::net::SocketAddr>,
    pub tls: Option<std::net::SocketAddr>,
    /// The embedded rumqttd behind the gate, on loopback.
    pub embedded: Option<std::net::SocketAddr>,
}

/// Binds the configured listeners (port 0 gives a free one) and serves
/// them on tasks of `tasks` until `stop`.
pub async fn start(
    config: GateConfig,
    registry: Option<Registry>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Listening> {
    anyhow::ensure!(
        config.auth == AuthMode::None || registry.is_some(),
        "broker.auth = \"agents\" needs the registry of agents"
    );
    let plain = match config.plain {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for agents on {addr} (broker.listen)"))?,
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some((addr, server)) => Some((
            TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for agents on {addr} (broker.tls_listen)")
            })?,
            TlsAcceptor::from(server.clone()),
        )),
        None => None,
    };
    if config.auth == AuthMode::Agents && config.plain.is_some() {
        tracing::warn!(
            "broker.listen is on with broker.auth = \"agents\": tokens on it travel in clear; set broker.listen = \"\" outside a trusted network"
        );
    }
    if config.auth == AuthMode::None {
        tracing::warn!(
            "broker.auth = \"none\": any client that reaches the broker may publish as any agent"
        );
    }
    let gate = Arc::new(Gate {
        config,
        registry,
        metrics,
        live: Mutex::default(),
        next: AtomicU64::new(0),
    });
    let mut listening = Listening::default();
    if let Some(listener) = plain {
        let addr = listener.local_addr()?;
        listening.plain = Some(addr);
        tracing::info!(%addr, auth = ?gate.config.auth, "agents' MQTT listener (plain)");
        let accept = accept_loop(listener, None, gate.clone(), stop.clone(), tasks.clone());
        tasks.spawn(accept);
    }
    if let Some((listener, acceptor)) = tls {
        let addr = listener.local_addr()?;
        listening.tls = Some(addr);
        tracing::info!(%addr, auth = ?gate.config.auth, "agents' MQTT listener (TLS)");
        let accept = accept_loop(
            listener,
            Some(acceptor),
            gate.clone(),
            stop.clone(),
            tasks.clone(),
        );
        tasks.spawn(accept);
    }
    if gate.config.auth == AuthMode::Agents {
        tasks.spawn(watch_revocations(gate, stop));
    }
    Ok(listening)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let metrics = gate.metrics.clone();
    let admission = Admission {
        name: "agent listener",
        tls,
        max_connections: MAX_CONNECTIONS,
        on_refused: Arc::new(move |r| match r {
            NotAccepted::TooManyConnections => metrics.refused("connect", "too_many_connections"),
            NotAccepted::TlsHandshake => metrics.refused("tls", "handshake"),
            NotAccepted::TlsTimeout => metrics.refused("tls", "timeout"),
        }),
    };
    let stopped = stop.clone();
    accept::serve(listener, admission, stopped, tasks, move |stream, peer| {
        let (gate, stop) = (gate.clone(), stop.clone());
        async move {
            let fingerprint = stream.peer_certificate().map(dash_tls::fingerprint);
            gate.connection(stream, peer, fingerprint, stop).await;
        }
    })
    .await;
}

/// Closes the connections of agents revoked while connected.
async fn watch_revocations(gate: Arc<Gate>, stop: CancellationToken) {
    let Some(registry) = gate.registry.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let live: Vec<String> = gate.live.lock().expect("gate").keys().cloned().collect();
        if live.is_empty() {
            continue;
        }
        match registry.revoked_among(&live).await {
            Ok(revoked) => {
                for who in revoked {
                    let tokens = gate.live.lock().expect("gate").remove(&who);
                    for (_, token) in tokens.into_iter().flatten() {
                        token.cancel();
                    }
                    tracing::warn!(agent = %who, "agent revoked: its connections are closed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not check for revoked agents"),
        }
    }
}

/// A packet as rumqttc's MQTT 3.1.1 codec reads it.
fn decode(frame: &Frame) -> anyhow::Result<Packet> {
    let mut bytes = frame.bytes.clone();
    Packet::read(&mut bytes, usize::MAX).map_err(|e| anyhow::anyhow!("malformed MQTT packet: {e}"))
}

async fn write_packet<W: AsyncWrite + Unpin>(
    wr: &mut W,
    packet: &Packet,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    out.clear();
    packet.write(out, usize::MAX)?;
    wr.write_all(out).await?;
    Ok(())
}

impl Gate {
    async fn connection(
        self: Arc<Self>,
        client: Stream,
        peer: SocketAddr,
        fingerprint: Option<String>,
        stop: CancellationToken,
    ) {
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut reader = FrameReader::new(MAX_CONNECT);
        let mut out = BytesMut::with_capacity(4096);
        let frame = match accept::first_packet(&mut reader, &mut rd).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(accept::FirstPacketError::TimedOut) => {
                self.metrics.refused("connect", "timeout");
                return;
            }
            Err(e) => {
                self.metrics.refused("connect", "protocol");
                tracing::info!(%peer, error = %e, "refused before CONNECT");
                return;
            }
        };
        if frame.kind() != frame::CONNECT {
            self.metrics.refused("connect", "protocol");
            tracing::info!(%peer, "first packet was not CONNECT");
            return;
        }
        let refusal = match dash_mqtt::packet::version_of(&frame) {
            Ok(dash_mqtt::Version::V311) => None,
            Ok(dash_mqtt::Version::V5) => Some(dash_mqtt::Refusal::new(
                dash_mqtt::Reason::UnsupportedVersion,
                "MQTT 5: agents speak 3.1.1 to the gate",
            )),
            Err(r) => Some(r),
        };
        if let Some(r) = refusal {
            // "Unacceptable protocol version", in 3.1.1's layout.
            self.metrics.refused("connect", "unsupported_version");
            tracing::info!(%peer, detail = %r.detail, "agent connection refused");
            if r.reason == dash_mqtt::Reason::UnsupportedVersion {
                let _ = wr.write_all(&[0x20, 2, 0, 0x01]).await;
            }
            let _ = tokio::time::timeout(CLOSE_WITHIN, wr.shutdown()).await;
            return;
        }
        let connect = match decode(&frame) {
            Ok(Packet::Connect(c)) => c,
            Ok(_) => return,
            Err(e) => {
                self.metrics.refused("connect", "protocol");
                tracing::info!(%peer, error = %e, "refused before CONNECT");
                return;
            }
        };
        let identity = match self.admit(&connect, fingerprint.as_deref()).await {
            Ok(identity) => identity,
            Err(r) => {
                self.metrics.refused(r.stage, r.reason);
                tracing::warn!(%peer, reason = r.reason, detail = %r.detail, "agent connection refused");
                if let Some(code) = r.code {
                    let _ = write_packet(
                        &mut wr,
                        &Packet::ConnAck(ConnAck::new(code, false)),
                        &mut out,
                    )
                    .await;
                }
                let _ = tokio::time::timeout(CLOSE_WITHIN, wr.shutdown()).await;
                return;
            }
        };
        let who = identity.as_ref().map(Identity::label);
        let cancel = stop.child_token();
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(who) = &who {
            self.live
                .lock()
                .expect("gate")
                .entry(who.clone())
                .or_default()
                .push((number, cancel.clone()));
            if let Some(registry) = &self.registry {
                let (registry, id) = (registry.clone(), identity.clone().expect("admitted"));
                tokio::spawn(async move {
                    let _ = registry.seen(id.tenant.as_str(), id.agent.as_str()).await;
                });
            }
        }
        self.metrics.connection();
        tracing::debug!(%peer, agent = who.as_deref().unwrap_or("-"), "agent connected");
        reader.set_max(self.config.max_packet);
        let result = self
            .relay(connect, identity.as_ref(), &mut rd, wr, reader, &cancel)
            .await;
        if let Err(r) = result {
            self.metrics.refused(r.stage, r.reason);
            tracing::warn!(%peer, agent = who.as_deref().unwrap_or("-"), reason = r.reason, detail = %r.detail, "agent disconnected for what it sent");
        }
        if let Some(who) = who {
            let mut live = self.live.lock().expect("gate");
            if let Some(tokens) = live.get_mut(&who) {
                tokens.retain(|(n, _)| *n != number);
                if tokens.is_empty() {
                    live.remove(&who);
                }
            }
        }
    }

    /// Who the client is, or why it may not connect.
    async fn admit(
        &self,
        connect: &Connect,
        fingerprint: Option<&str>,
    ) -> Result<Option<Identity>, Refusal> {
        use ConnectReturnCode::{
            BadClientId, BadUserNamePassword, NotAuthorized, ServiceUnavailable,
        };
        // rumqttd refuses these, and a refused client with a last will can
        // take its broker thread down with it (rumqttd 0.20).
        if self.config.auth == AuthMode::None
            && (connect.client_id.is_empty() || connect.client_id.contains(['+', '$', '#', '/']))
        {
            return Err(refuse(
                "connect",
                "bad_client_id",
                Some(BadClientId),
                format!(
                    "client id {:?} is empty or holds + $ # /",
                    clip(&connect.client_id)
                ),
            ));
        }
        let Some(registry) = self
            .registry
            .as_ref()
            .filter(|_| self.config.auth == AuthMode::Agents)
        else {
            return Ok(None);
        };
        let unavailable = |e: crate::auth::registry::RegistryError| {
            refuse(
                "connect",
                "registry_unavailable",
                Some(ServiceUnavailable),
                format!("registry lookup failed: {e}"),
            )
        };
        let (tenant, agent, standing) = if let Some(fp) = fingerprint {
            match registry.by_certificate(fp).await.map_err(unavailable)? {
                Some(found) => found,
                None => {
                    return Err(refuse(
                        "connect",
                        "unknown_certificate",
                        Some(NotAuthorized),
                        format!("certificate {fp} is from our CA but not registered to an agent"),
                    ));
                }
            }
        } else if let Some(login) = &connect.login {
            let Some((tenant, agent)) = login.username.split_once('/') else {
                return Err(refuse(
                    "connect",
                    "bad_token",
                    Some(BadUserNamePassword),
                    format!("username {:?} is not tenant/agent", clip(&login.username)),
                ));
            };
            let standing = registry
                .by_token(tenant, agent, &login.password)
                .await
                .map_err(unavailable)?;
            if standing == Standing::Unknown {
                return Err(refuse(
                    "connect",
                    "bad_token",
                    Some(BadUserNamePassword),
                    format!("wrong token for {:?}", clip(&login.username)),
                ));
            }
            (tenant.to_owned(), agent.to_owned(), standing)
        } else {
            return Err(refuse(
                "connect",
                "no_identity",
                Some(NotAuthorized),
                "neither a client certificate nor a token",
            ));
        };
        if standing == Standing::Revoked {
            return Err(refuse(
                "connect",
                "revoked",
                Some(NotAuthorized),
                format!("agent {tenant}/{agent} is revoked"),
            ));
        }
        let (Ok(tenant), Ok(agent)) = (TenantId::new(tenant), AgentId::new(agent)) else {
            return Err(refuse(
                "connect",
                "bad_identity",
                Some(NotAuthorized),
                "registered names are not valid ids",
            ));
        };
        let identity = Identity { tenant, agent };
        if let Some(will) = &connect.last_will
            && will.topic != topic::topic(&identity.tenant, &identity.agent, TopicKind::Status)
        {
            return Err(refuse(
                "connect",
                "will",
                Some(NotAuthorized),
                format!(
                    "{} may leave a last will only on its own status topic, not {:?}",
                    identity.label(),
                    clip(&will.topic)
                ),
            ));
        }
        Ok(Some(identity))
    }

    /// Connects to the broker as the admitted client and relays both ways,
    /// checking every packet from the client.
    async fn relay<R, W>(
        &self,
        mut connect: Connect,
        identity: Option<&Identity>,
        rd: &mut R,
        wr: W,
        mut reader: FrameReader,
        cancel: &CancellationToken,
    ) -> Result<(), Refusal>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let internal = |detail: String| refuse("broker", "unreachable", None, detail);
        // A client silent for 1.5 times its keep-alive is gone; one that
        // asks for none keeps its connection, and the gate keeps the
        // broker's session alive for it.
        let idle = accept::idle_limit(connect.keep_alive);
        let ping_broker = (connect.keep_alive == 0)
            .then(|| Duration::from_secs(u64::from(BROKER_KEEP_ALIVE) / 2));
        if connect.keep_alive == 0 {
            connect.keep_alive = BROKER_KEEP_ALIVE;
        }
        if let Some(id) = identity {
            connect.client_id = id.client_id();
        }
        connect.login = Some(self.config.broker_login.clone());
        let broker = TcpStream::connect(self.config.broker)
            .await
            .map_err(|e| internal(format!("embedded broker: {e}")))?;
        let _ = broker.set_nodelay(true);
        let (broker_rd, mut broker_wr) = broker.into_split();
        let mut out = BytesMut::with_capacity(4096);
        write_packet(&mut broker_wr, &Packet::Connect(connect), &mut out)
            .await
            .map_err(|e| internal(e.to_string()))?;
        // Broker to client: unchanged, but for the gate's own pings' answers
        // and the UNSUBACKs the gate sent itself. Client to broker goes
        // through `up`, so the gate can answer UNSUBSCRIBE in order.
        let (up, up_rx) = tokio::sync::mpsc::channel::<BytesMut>(64);
        let own_pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut down = tokio::spawn(relay_down(broker_rd, wr, up_rx, own_pings.clone()));
        let prefix = identity.map(Identity::own_prefix);
        let mut filters = 0usize;
        let result = loop {
            let silent = idle.or(ping_broker);
            let next = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                // The broker closed the session (a takeover, a refusal).
                _ = &mut down => break Ok(()),
                p = accept::next_packet(&mut reader, rd, silent) => p,
            };
            let frame = match next {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                // Silent: gone, or (keep-alive 0) time to ping the broker.
                Err(None) if ping_broker.is_some() => {
                    own_pings.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = write_packet(&mut broker_wr, &Packet::PingReq, &mut out).await {
                        break Err(internal(e.to_string()));
                    }
                    continue;
                }
                Err(None) => break Ok(()),
                Err(Some(e)) => break Err(refuse("publish", "malformed", None, e.to_string())),
            };
            let packet = match decode(&frame) {
                Ok(p) => p,
                Err(e) => break Err(refuse("publish", "malformed", None, e.to_string())),
            };
            if let Packet::Connect(_) = packet {
                break Err(refuse(
                    "connect",
                    "protocol",
                    None,
                    "a second CONNECT".to_owned(),
                ));
            }
            if let (Some(id), Some(prefix)) = (identity, &prefix)
                && let Err(r) = check(&packet, id, prefix)
            {
                break Err(r);
            }
            if let Packet::Subscribe(s) = &packet {
                filters += s.filters.len();
                if filters > MAX_FILTERS {
                    break Err(refuse(
                        "subscribe",
                        "too_many",
                        None,
                        format!("more than {MAX_FILTERS} subscriptions on one connection"),
                    ));
                }
            }
            if let Err(e) = broker_wr.write_all(&frame.bytes).await {
                break Err(internal(e.to_string()));
            }
            if let Packet::Unsubscribe(u) = &packet {
                out.clear();
                let _ = Packet::UnsubAck(UnsubAck::new(u.pkid)).write(&mut out, usize::MAX);
                let sent = tokio::select! {
                    sent = up.send(out.split()) => sent.is_ok(),
                    _ = cancel.cancelled() => false,
                };
                if !sent {
                    break Ok(());
                }
            }
            if matches!(packet, Packet::Disconnect) {
                break Ok(());
            }
        };
        let _ = tokio::time::timeout(CLOSE_WITHIN, broker_wr.shutdown()).await;
        drop(up);
        if !down.is_finished() {
            // Let what the broker already sent reach the client, briefly.
            let _ = tokio::time::timeout(Duration::from_millis(200), &mut down).await;
        }
        down.abort();
        result
    }
}

/// Broker to client: every packet as the broker sent it, but the broker's
/// UNSUBACKs (the gate answered) and the PINGRESPs that answer the gate's
/// own pings; and the gate's own UNSUBACKs, in order with the rest.
async fn relay_down<R, W>(
    mut broker: R,
    mut client: W,
    own: tokio::sync::mpsc::Receiver<BytesMut>,
    own_pings: Arc<std::sync::atomic::AtomicUsize>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = FrameReader::new(usize::MAX >> 8);
    let mut own = Some(own);
    loop {
        let bytes = tokio::select! {
            frame = reader.next(&mut broker) => match frame {
                Ok(Some(f)) if f.kind() == frame::UNSUBACK => continue,
                Ok(Some(f))
                    if f.kind() == frame::PINGRESP
                        && own_pings
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok() =>
                {
                    continue
                }
                Ok(Some(f)) => f.bytes,
                _ => break,
            },
            // Once the client side is done, what the broker still sends
            // is passed on until it closes (the caller bounds the wait).
            mine = async { own.as_mut()?.recv().await }, if own.is_some() => match mine {
                Some(b) => b,
                None => {
                    own = None;
                    continue;
                }
            },
        };
        if client.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_WITHIN, client.shutdown()).await;
}

/// Longest a close (TLS close_notify included) may take.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Most subscriptions one connection may make.
const MAX_FILTERS: usize = 16;

/// At most this much of a string the client chose goes into a log line.
fn clip(s: &str) -> String {
    dash_runtime::text::clip_for_log(s, 100)
}

/// Whether `filter` is one an agent may subscribe to: its own ack topic, or
/// literal levels (and a final `#`) below its own `cmd/`.
fn own_filter(filter: &str, prefix: &str) -> bool {
    let Some(rest) = filter.strip_prefix(prefix) else {
        return false;
    };
    if rest == "ack" {
        return true;
    }
    let Some(cmd) = rest.strip_prefix("cmd/") else {
        return false;
    };
    let levels: Vec<&str> = cmd.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (*l == "#" && i == levels.len() - 1) || (!l.is_empty() && !l.contains(['+', '#']))
    })
}

/// Whether an admitted agent may send `packet`.
fn check(packet: &Packet, id: &Identity, prefix: &str) -> Result<(), Refusal> {
    match packet {
        Packet::Publish(p) => {
            let batch = topic::topic(&id.tenant, &id.agent, TopicKind::Batch);
            let status = topic::topic(&id.tenant, &id.agent, TopicKind::Status);
            if p.topic == batch && p.retain {
                Err(refuse(
                    "publish",
                    "retained_batch",
                    None,
                    format!("{} published a retained batch", id.label()),
                ))
            } else if p.topic == batch || p.topic == status {
                Ok(())
            } else {
                Err(refuse(
                    "publish",
                    "foreign_topic",
                    None,
                    format!("{} published to {:?}", id.label(), clip(&p.topic)),
                ))
            }
        }
        Packet::Subscribe(s) => match s.filters.iter().find(|f| !own_filter(&f.path, prefix)) {
            None => Ok(()),
            Some(f) => Err(refuse(
                "subscribe",
                "foreign_topic",
                None,
                format!("{} subscribed to {:?}", id.label(), clip(&f.path)),
            )),
        },
        Packet::Connect(_) => Err(refuse(
            "connect",
            "protocol",
            None,
            "a second CONNECT".to_owned(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Publish, Subscribe, SubscribeFilter};

    fn id() -> Identity {
        Identity {
            tenant: TenantId::new("acme").unwrap(),
            agent: AgentId::new("gw-1").unwrap(),
        }
    }

    #[test]
    fn an_agent_may_publish_and_subscribe_only_as_itself() {
        let id = id();
        let prefix = id.own_prefix();
        let publish = |t: &str| Packet::Publish(Publish::new(t, QoS::AtLeastOnce, vec![1u8]));
        assert!(check(&publish("dash/v1/acme/gw-1/batch"), &id, &prefix).is_ok());
        assert!(check(&publish("dash/v1/acme/gw-1/status"), &id, &prefix).is_ok());
        for foreign in [
            "dash/v1/acme/gw-2/batch",
            "dash/v1/other/gw-1/batch",
            "dash/v1/acme/gw-1/ack",
            "dash/v1/acme/gw-1/batch/x",
            "elsewhere",
        ] {
            let r = check(&publish(foreign), &id, &prefix).unwrap_err();
            assert_eq!(
                (r.stage, r.reason),
                ("publish", "foreign_topic"),
                "{foreign}"
            );
        }
        let subscribe = |f: &str| {
            Packet::Subscribe(Subscribe::new_many([SubscribeFilter::new(
                f.to_owned(),
                QoS::AtLeastOnce,
            )]))
        };
        assert!(check(&subscribe("dash/v1/acme/gw-1/ack"), &id, &prefix).is_ok());
        assert!(check(&subscribe("dash/v1/acme/gw-1/cmd/#"), &id, &prefix).is_ok());
        assert!(check(&subscribe("dash/v1/acme/gw-1/cmd/reboot"), &id, &prefix).is_ok());
        for foreign in [
            "dash/v1/acme/gw-1/#",
            "dash/v1/acme/gw-1/#/x1",
            "dash/v1/acme/gw-1/cmd/+/x",
            "dash/v1/acme/gw-1/batch",
            "dash/v1/acme/+/ack",
            "dash/v1/#",
            "dash/v1/acme/gw-10/ack",
            "#",
        ] {
            assert!(
                check(&subscribe(foreign), &id, &prefix).is_err(),
                "{foreign}"
            );
        }
    }
}
