//! Subscribing to a broker already on the gateway.
//!
//! The session is persistent (`clean_session = false`) with manual acks: the
//! broker keeps each QoS 1 message until the agent acks it, and the agent
//! acks only after the samples are flushed. A restart of the agent or of the
//! broker (with persistence) loses nothing.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Router;
use crate::commit::{Committer, Ticket};

/// Where to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub max_payload: usize,
}

/// Runs until `stop`.
pub async fn run(
    settings: SubscriberSettings,
    router: Arc<Router>,
    committer: Committer,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(settings.max_payload + 1024, settings.max_payload + 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (acks, rx) = mpsc::channel::<(Option<Ticket>, Publish)>(1024);
    let acker = tokio::spawn(ack_in_order(client.clone(), rx));
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!(host = %settings.host, port = settings.port, "subscribed to the device broker");
                for filter in router.filters() {
                    client.subscribe(filter, QoS::AtLeastOnce).await?;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ticket = match router.records(&p.topic, &p.payload) {
                    Ok(samples) => Some(
                        committer
                            .enqueue_records(crate::sample::Class::Telemetry, samples, None)
                            .await?,
                    ),
                    Err(_) => None, // counted and logged by the router; ack it, it can never succeed
                };
                if acks.send((ticket, p)).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                let wait = dash_runtime::backoff::delay(
                    failures,
                    Duration::from_millis(250),
                    Duration::from_secs(10),
                );
                tracing::warn!(error = %e, retry_in = ?wait, "device broker connection lost");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(acks);
    // Keep the event loop turning while the last acks go out.
    let drain = async {
        let mut acker = acker;
        loop {
            tokio::select! {
                _ = &mut acker => break,
                e = eventloop.poll() => if e.is_err() { tokio::time::sleep(Duration::from_millis(100)).await },
            }
        }
        let _ = client.disconnect().await;
        while eventloop.poll().await.is_ok() {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    Ok(())
}

async fn ack_in_order(client: AsyncClient, mut rx: mpsc::Receiver<(Option<Ticket>, Publish)>) {
    while let Some((ticket, publish)) = rx.recv().await {
        if let Some(ticket) = ticket {
            if let Err(e) = ticket.wait().await {
                tracing::error!(error = %e, "samples not durable; leaving the message unacked for redelivery");
                continue;
            }
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "could not ack a device message; the broker will redeliver it");
        }
    }
}
