//! The embedded MQTT broker (rumqttd) for single-box installs.
//!
//! rumqttd keeps sessions and messages in memory only. That is enough here:
//! an agent keeps every batch in its own durable buffer until the aggregator
//! acks it after commit, so a broker that dies with the aggregator loses
//! nothing an agent has not kept.
//!
//! # On our runtime, stopped with the aggregator
//!
//! rumqttd's `Broker::start` blocks a thread of its own forever. Dash does
//! not call it: it starts rumqttd's router and runs rumqttd's v4 `Server`
//! as a task of the aggregator's runtime, tracked like every other task and
//! ended by the same cancellation, so a stopped aggregator (in-process, as
//! the tests run it) releases the broker's port. The router's thread stays,
//! blocked on its channel and holding only memory: rumqttd 0.20's router
//! keeps a sender to itself and has no way to end it.
//!
//! # The loopback port, without a race
//!
//! rumqttd binds the address it is given and cannot report a port 0's
//! choice, so Dash picks a free loopback port and hands it over. Another
//! process may take that port in between; rumqttd's server binds on its
//! first poll, so Dash polls it once before spawning it and, when the bind
//! failed, tries another port. When it returns, the broker listens.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};

use anyhow::Context;
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tries at most this many ports taken from under us before giving up.
const PORT_TRIES: usize = 10;

/// Why rumqttd's server ended.
struct Failed {
    io: Option<std::io::ErrorKind>,
    text: String,
}

/// Starts the broker on a free loopback port, accepting messages up to
/// `max_payload` bytes, and only clients with one of `logins` (username ->
/// password) when given. It runs on `tasks` until `stop`. Returns where it
/// listens.
pub async fn start(
    max_payload: usize,
    logins: Option<HashMap<String, String>>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
    )
    .spawn();
    for _ in 0..PORT_TRIES {
        let listen = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|probe| probe.local_addr())
            .context("no free loopback port for the embedded broker")?;
        let settings = ServerSettings {
            name: "dash-v4".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: max_payload + 4096,
                max_inflight_count: 500,
                auth: logins.clone(),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let mut server = Server::new(settings, router.clone(), V4);
        // rumqttd does not export its error type: keep the I/O kind and the text.
        let mut serving: Pin<Box<dyn Future<Output = Result<(), Failed>> + Send>> =
            Box::pin(async move {
                server.start(LinkType::Remote).await.map_err(|e| Failed {
                    io: std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .map(std::io::Error::kind),
                    text: e.to_string(),
                })
            });
        // The bind is the first thing the server does, before it waits.
        match serving
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()))
        {
            Poll::Ready(Err(Failed {
                io: Some(std::io::ErrorKind::AddrInUse),
                ..
            })) => {
                tracing::debug!(%listen, "loopback port taken before the broker bound it; trying another");
                continue;
            }
            Poll::Ready(Err(e)) => {
                anyhow::bail!("embedded broker cannot listen on {listen}: {}", e.text)
            }
            Poll::Ready(Ok(())) => anyhow::bail!("the embedded broker ended as it started"),
            Poll::Pending => {}
        }
        tasks.spawn(async move {
            tokio::select! {
                result = serving => {
                    let error = result.err().map(|e| e.text);
                    tracing::error!(?error, "embedded MQTT broker stopped; agents cannot deliver");
                }
                () = stop.cancelled() => tracing::debug!("embedded MQTT broker stopped"),
            }
        });
        tracing::info!(%listen, "embedded MQTT broker listening (loopback, for the gate and the link)");
        return Ok(listen);
    }
    anyhow::bail!("no loopback port stayed free for the embedded broker in {PORT_TRIES} tries")
}
