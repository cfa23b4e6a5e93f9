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
use dash_shared::topic::{self, TopicKind};
use dash_shared::{AgentId, TenantId};
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Login, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// Connections open now, bounded by [`MAX_CONNECTIONS`].
    slots: Arc<tokio::sync::Semaphore>,
}

/// The largest CONNECT accepted (a client id, a login and a last will).
const MAX_CONNECT: usize = 16 * 1024;

/// Most connections open at once, admitted or not.
const MAX_CONNECTIONS: usize = 8192;

/// How long a client has to finish TLS and send CONNECT.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Binds the listeners (failing with the address that could not be bound)
/// and serves until `stop`. `registry` is needed with [`AuthMode::Agents`].
/// Where the gate listens for agents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listening {
    pub plain: Option<std::net::SocketAddr>,
    pub tls: Option<std::net::SocketAddr>,
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
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
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
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "agent listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = gate.slots.clone().try_acquire_owned() else {
            gate.metrics.refused("connect", "too_many_connections");
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "too many connections: refused");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (gate, tls, stop) = (gate.clone(), tls.clone(), stop.clone());
        tasks.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                gate.connection(socket, peer, None, stop).await;
                return;
            };
            match tokio::time::timeout(HANDSHAKE, tls.accept(socket)).await {
                Ok(Ok(stream)) => {
                    let fingerprint = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(dash_tls::fingerprint);
                    gate.connection(stream, peer, fingerprint, stop).await;
                }
                Ok(Err(e)) => {
                    // No certificate when one is required, another CA's, an expired one.
                    gate.metrics.refused("tls", "handshake");
                    tracing::warn!(%peer, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    gate.metrics.refused("tls", "timeout");
                    tracing::info!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
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

/// Reads one whole packet into `buf` from `rd`.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> anyhow::Result<Option<Packet>> {
    loop {
        match Packet::read(buf, max) {
            Ok(p) => return Ok(Some(p)),
            Err(CodecError::InsufficientBytes(_)) => match rd.read_buf(buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                // A TLS peer that closes without close_notify has still just closed.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            },
            Err(e) => anyhow::bail!("malformed MQTT packet: {e}"),
        }
    }
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
    async fn connection<S>(
        self: Arc<Self>,
        client: S,
        peer: SocketAddr,
        fingerprint: Option<String>,
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut buf = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(4096);
        let first =
            tokio::time::timeout(HANDSHAKE, read_packet(&mut rd, &mut buf, MAX_CONNECT)).await;
        let connect = match first {
            Ok(Ok(Some(Packet::Connect(c)))) => c,
            Ok(Ok(None)) => return,
            Ok(Ok(Some(_))) => {
                self.metrics.refused("connect", "protocol");
                tracing::info!(%peer, "first packet was not CONNECT");
                return;
            }
            Ok(Err(e)) => {
                self.metrics.refused("connect", "protocol");
                tracing::info!(%peer, error = %e, "refused before CONNECT");
                return;
            }
            Err(_) => return,
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
                let _ = wr.shutdown().await;
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
        let result = self
            .relay(connect, identity.as_ref(), &mut rd, wr, buf, &cancel)
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
        let unavailable = |e: sqlx::Error| {
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
        mut wr: W,
        mut buf: BytesMut,
        cancel: &CancellationToken,
    ) -> Result<(), Refusal>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let internal = |detail: String| refuse("broker", "unreachable", None, detail);
        // MQTT: a client silent for 1.5 times its keep-alive is gone; one
        // that asks for none is given ten minutes.
        let idle = match connect.keep_alive {
            0 => Duration::from_secs(600),
            k => Duration::from_millis(u64::from(k) * 1500),
        };
        if let Some(id) = identity {
            connect.client_id = id.client_id();
        }
        connect.login = Some(self.config.broker_login.clone());
        let broker = TcpStream::connect(self.config.broker)
            .await
            .map_err(|e| internal(format!("embedded broker: {e}")))?;
        let _ = broker.set_nodelay(true);
        let (mut broker_rd, mut broker_wr) = broker.into_split();
        let mut out = BytesMut::with_capacity(4096);
        write_packet(&mut broker_wr, &Packet::Connect(connect), &mut out)
            .await
            .map_err(|e| internal(e.to_string()))?;
        // Broker to client: unchanged.
        let mut down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut broker_rd, &mut wr).await;
            let _ = wr.shutdown().await;
        });
        let prefix = identity.map(Identity::own_prefix);
        let mut filters = 0usize;
        let result = loop {
            let packet = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                // The broker closed the session (a takeover, a refusal).
                _ = &mut down => break Ok(()),
                p = tokio::time::timeout(idle, read_packet(rd, &mut buf, self.config.max_packet)) => match p {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                },
            };
            let packet = match packet {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => break Err(refuse("publish", "malformed", None, e.to_string())),
            };
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
            if let Err(e) = write_packet(&mut broker_wr, &packet, &mut out).await {
                break Err(internal(e.to_string()));
            }
            if matches!(packet, Packet::Disconnect) {
                break Ok(());
            }
        };
        let _ = broker_wr.shutdown().await;
        down.abort();
        result
    }
}

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
