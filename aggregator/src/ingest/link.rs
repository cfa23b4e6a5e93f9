//! The aggregator's MQTT session: batches in, acks out.
//!
//! One task owns the rumqttc event loop and is never cancelled mid-poll.
//! A worker stores whatever batches are queued for it (up to 32) in one
//! transaction. Incoming batches are dispatched to
//! a fixed set of workers by a hash of the topic, so one agent's batches are
//! handled in arrival order by one worker while different agents proceed in
//! parallel.
//!
//! # Ack rule
//!
//! The session is persistent (`clean_session = false`) with manual acks: a
//! batch's PUBACK is sent only after its transaction committed and its
//! application ack was queued. PUBACKs leave in the order the messages
//! arrived, as MQTT 3.1.1 requires (section 4.6) and rumqttd enforces (it
//! drops a client that acks out of order): workers finish in any order, and
//! one acker task releases the PUBACKs in arrival order. A batch that was not handled (database down,
//! shutdown) is never PUBACKed, so the broker delivers it again on the next
//! session, and the agent resends it anyway until it sees the ack.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use dash_shared::Message;
use dash_shared::topic::{self, TopicKind};
use dash_shared::wire::{self, Limits};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ingest::{Delivery, Ingestor};
use crate::storage::SampleWriter;
use crate::telemetry::metrics::Metrics;

/// Where and how the aggregator connects.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub host: String,
    pub port: u16,
    /// TLS to an external `mqtts://` broker.
    pub tls: Option<std::sync::Arc<dash_tls::rustls::ClientConfig>>,
    pub client_id: String,
    pub shared_group: String,
    pub username: String,
    pub password: String,
    pub max_message_bytes: usize,
    pub workers: usize,
}

impl LinkConfig {
    fn filter(&self, filter: &str) -> String {
        if self.shared_group.is_empty() {
            filter.to_owned()
        } else {
            format!("$share/{}/{}", self.shared_group, filter)
        }
    }

    fn options(&self) -> MqttOptions {
        let mut opts = MqttOptions::new(&self.client_id, &self.host, self.port);
        opts.set_keep_alive(Duration::from_secs(15));
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        opts.set_inflight(200);
        let max = self.max_message_bytes + 4096;
        opts.set_max_packet_size(max, max);
        if !self.username.is_empty() {
            opts.set_credentials(&self.username, &self.password);
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        opts
    }
}

/// Runs the session until `stop` is cancelled, then lets workers finish the
/// batch in hand (up to `grace`) and disconnects.
pub async fn run<W: SampleWriter>(
    config: LinkConfig,
    ingestor: Arc<Ingestor<W>>,
    stop: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    // Large enough for every message the broker may have in flight to us
    // (rumqttd allows 500), so neither side ever waits on the other.
    let (client, eventloop) = AsyncClient::new(config.options(), 4096);
    let workers = TaskTracker::new();
    let (done, done_rx) = mpsc::unbounded_channel::<Done>();
    let metrics = ingestor.metrics().clone();
    let acks = tokio::spawn(acker(done_rx, client.clone(), metrics.clone()));
    let mut queues = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let (tx, rx) = mpsc::channel::<InHand>(4096);
        queues.push(tx);
        workers.spawn(worker(
            rx,
            ingestor.clone(),
            client.clone(),
            done.clone(),
            stop.clone(),
        ));
    }
    let (statuses, status_rx) = mpsc::channel::<InHand>(1024);
    workers.spawn(status_worker(
        status_rx,
        ingestor.clone(),
        client.clone(),
        done.clone(),
        stop.clone(),
    ));
    workers.close();
    let mut poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        config,
        Dispatch {
            queues,
            statuses,
            done,
        },
        metrics,
        stop.clone(),
    ));
    stop.cancelled().await;
    if tokio::time::timeout(grace, workers.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace elapsed with batches in hand; the broker will redeliver them"
        );
    }
    // Acks of the batches in hand are queued before the disconnect.
    tokio::task::yield_now().await;
    acks.abort();
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(2), &mut poller)
        .await
        .is_err()
    {
        poller.abort();
    }
    Ok(())
}

/// Owns the event loop, never cancelled mid-poll (rumqttc's poll is not
/// cancel-safe), and never waits on a worker: it dispatches with `try_send`.
/// After `stop`, new batches are left unacked for the broker to redeliver.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    config: LinkConfig,
    dispatch: Dispatch,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let health = &metrics.health;
    let Dispatch {
        queues,
        statuses,
        done,
    } = dispatch;
    let (mut generation, mut index) = (0u64, 0u64);
    let filters = [
        config.filter(topic::BATCH_FILTER),
        config.filter(topic::STATUS_FILTER),
    ];
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                // A new connection: what was in hand is redelivered, and
                // acks are counted afresh.
                generation += 1;
                index = 0;
                let _ = done.send(Done::Reset(generation));
                health.forget_in_hand(dash_shared::now_micros());
                health.link(true);
                tracing::info!(host = %config.host, port = config.port, "connected to broker");
                if filters
                    .iter()
                    .any(|f| client.try_subscribe(f.clone(), QoS::AtLeastOnce).is_err())
                {
                    tracing::error!(
                        "could not queue the batch subscription; reconnecting will retry"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if !stop.is_cancelled() => {
                let hand = InHand {
                    generation,
                    index,
                    publish,
                };
                index += 1;
                health.received(dash_shared::now_micros());
                // Statuses have their own worker: a slow database or the
                // broker replaying every retained status never holds up batches.
                let queue = if hand.publish.topic.ends_with("/status") {
                    &statuses
                } else {
                    let mut h = DefaultHasher::new();
                    hand.publish.topic.hash(&mut h);
                    &queues[(h.finish() % queues.len() as u64) as usize]
                };
                if let Err(mpsc::error::TrySendError::Full(hand)) = queue.try_send(hand) {
                    // Acked unhandled, to keep the order; the agent resends
                    // a batch it sees no ack for.
                    tracing::warn!(topic = %hand.publish.topic, "ingest queue full; a message is skipped");
                    let _ = done.send(Done::Ack(hand));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                health.link(false);
                failures += 1;
                let wait = dash_runtime::backoff::delay(
                    failures,
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                );
                tracing::warn!(error = %e, retry_in = ?wait, "broker connection lost");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A message in hand, with where it arrived on its connection.
struct InHand {
    generation: u64,
    index: u64,
    publish: Publish,
}

/// What a worker reports to the acker.
enum Done {
    /// A new connection, numbered.
    Reset(u64),
    /// Handled (or skipped): PUBACK it in its turn.
    Ack(InHand),
}

/// Where the poller sends messages.
struct Dispatch {
    queues: Vec<mpsc::Sender<InHand>>,
    statuses: mpsc::Sender<InHand>,
    done: mpsc::UnboundedSender<Done>,
}

/// Sends PUBACKs in arrival order: a message finished early waits for those
/// before it. Messages of a connection that is gone are forgotten (the
/// broker redelivers them on the new one).
async fn acker(mut rx: mpsc::UnboundedReceiver<Done>, client: AsyncClient, metrics: Arc<Metrics>) {
    let (mut generation, mut next) = (0u64, 0u64);
    let mut finished: BTreeMap<u64, Publish> = BTreeMap::new();
    while let Some(d) = rx.recv().await {
        match d {
            Done::Reset(g) => {
                (generation, next) = (g, 0);
                finished.clear();
            }
            Done::Ack(hand) if hand.generation == generation => {
                metrics.health.finished(dash_shared::now_micros());
                finished.insert(hand.index, hand.publish);
            }
            Done::Ack(_) => {}
        }
        while let Some(publish) = finished.remove(&next) {
            if let Err(e) = client.ack(&publish).await {
                tracing::warn!(error = %e, "could not queue PUBACK; the broker will redeliver");
            }
            next += 1;
        }
    }
}

/// Records agents' statuses, each within 2 s, and answers each with a
/// time-only ack so an agent learns the server's time. A status that could
/// not be recorded is skipped (the next one comes within the agent's
/// status interval), never retried ahead of newer ones.
async fn status_worker<W: SampleWriter>(
    mut queue: mpsc::Receiver<InHand>,
    ingestor: Arc<Ingestor<W>>,
    client: AsyncClient,
    done: mpsc::UnboundedSender<Done>,
    stop: CancellationToken,
) {
    loop {
        let hand = tokio::select! {
            _ = stop.cancelled() => return,
            p = queue.recv() => match p { Some(p) => p, None => return },
        };
        let publish = &hand.publish;
        match topic::parse(&publish.topic) {
            Ok((tenant, agent, TopicKind::Status))
                if ingestor.admits(&tenant, &agent, "status").await =>
            {
                let recorded = tokio::time::timeout(
                    Duration::from_secs(2),
                    ingestor.record_status(&tenant, &agent, &publish.payload),
                )
                .await;
                match recorded {
                    Ok(Ok(Some(ack))) => {
                        if let Err(e) = publish_ack(&client, &tenant, &agent, ack).await {
                            tracing::debug!(error = %e, "time ack not queued");
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%tenant, %agent, error = %e, "agent status not recorded")
                    }
                    Err(_) => {
                        tracing::warn!(%tenant, %agent, "agent status not recorded within 2 s")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => ingestor.refuse_topic(&publish.topic, &e),
        }
        let _ = done.send(Done::Ack(hand));
    }
}

/// Most batch messages one worker stores in one transaction.
const GROUP: usize = 32;

async fn worker<W: SampleWriter>(
    mut queue: mpsc::Receiver<InHand>,
    ingestor: Arc<Ingestor<W>>,
    client: AsyncClient,
    done: mpsc::UnboundedSender<Done>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            p = queue.recv() => match p { Some(p) => p, None => return },
        };
        // Group commit: whatever else is already queued goes in the same transaction.
        let mut group = vec![first];
        while group.len() < GROUP {
            match queue.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let publishes: Vec<Publish> = group.iter().map(|h| h.publish.clone()).collect();
        if handle(&publishes, &ingestor, &client, &stop).await {
            for hand in group {
                let _ = done.send(Done::Ack(hand));
            }
        }
    }
}

/// Handles a group of messages, retrying database errors until it succeeds
/// or `stop`. Returns false when stopped before they were stored.
async fn handle<W: SampleWriter>(
    group: &[Publish],
    ingestor: &Ingestor<W>,
    client: &AsyncClient,
    stop: &CancellationToken,
) -> bool {
    let mut senders = Vec::with_capacity(group.len());
    for publish in group {
        ingestor.metrics().payload(publish.payload.len());
        match topic::parse(&publish.topic) {
            Ok((tenant, agent, TopicKind::Batch)) => {
                let admitted = ingestor.admits(&tenant, &agent, "batch").await;
                senders.push(admitted.then_some((tenant, agent)));
            }
            Ok(_) => senders.push(None),
            Err(e) => {
                ingestor.refuse_topic(&publish.topic, &e);
                senders.push(None);
            }
        }
    }
    let deliveries: Vec<Delivery<'_>> = group
        .iter()
        .zip(&senders)
        .filter_map(|(p, s)| {
            s.as_ref().map(|(tenant, agent)| Delivery {
                tenant,
                agent,
                payload: &p.payload,
            })
        })
        .collect();
    let mut backoff = Duration::from_millis(100);
    let acks = loop {
        match ingestor.handle_group(&deliveries).await {
            Ok(acks) => break acks,
            Err(e) => {
                ingestor.metrics().store_error();
                tracing::error!(batches = deliveries.len(), error = %e, retry_in = ?backoff, "batches not stored yet");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    for (delivery, ack) in deliveries.iter().zip(acks) {
        let Some(ack) = ack else { continue };
        if let Err(e) = publish_ack(client, delivery.tenant, delivery.agent, ack).await {
            // PUBACKed all the same (acks leave in order): the agent
            // resends a batch it sees no ack for, and it is a duplicate.
            tracing::warn!(tenant = %delivery.tenant, agent = %delivery.agent, error = %e, "could not queue ack; the agent will resend");
        }
    }
    true
}

/// Publishes `ack` on the agent's ack topic (QoS 1).
async fn publish_ack(
    client: &AsyncClient,
    tenant: &dash_shared::TenantId,
    agent: &dash_shared::AgentId,
    ack: dash_shared::Ack,
) -> Result<(), rumqttc::ClientError> {
    let bytes = wire::encode(&Message::Ack(ack), &Limits::default()).expect("acks always encode");
    let ack_topic = topic::topic(tenant, agent, TopicKind::Ack);
    client
        .publish(ack_topic, QoS::AtLeastOnce, false, bytes)
        .await
}
