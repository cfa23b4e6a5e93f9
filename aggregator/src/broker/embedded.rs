//! The embedded MQTT broker (rumqttd) for single-box installs.
//!
//! rumqttd keeps sessions and messages in memory only. That is enough here:
//! an agent keeps every batch in its own durable buffer until the aggregator
//! acks it after commit, so a broker that dies with the aggregator loses
//! nothing an agent has not kept.
//!
//! `Broker::start` blocks for the broker's lifetime, so it runs on its own
//! thread, which ends with the process.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on `listen`, accepting messages up to `max_payload`
/// bytes, and only clients with one of `logins` (username -> password)
/// when given.
pub fn start_embedded(
    listen: SocketAddr,
    max_payload: usize,
    logins: Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    // rumqttd reports a failed bind only in its log; check the address first.
    std::net::TcpListener::bind(listen)
        .with_context(|| format!("embedded broker cannot listen on {listen} (broker.listen)"))?;
    let server = ServerSettings {
        name: "dash-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload + 4096,
            max_inflight_count: 500,
            auth: logins,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped; agents cannot deliver");
            }
        })
        .context("spawning the embedded broker thread")?;
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(())
}
