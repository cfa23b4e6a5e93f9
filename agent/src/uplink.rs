//! The uplink: sends sealed batches to the aggregator and drops them when acked.
//!
//! # Protocol state ([`Inflight`], no IO)
//!
//! At most `window` batches are in flight. A batch is sent when it is in the
//! outbox and not in flight, or its ack is overdue (`ack_timeout`). A new
//! connection forgets everything in flight: all of it is resent, because a
//! broker without persistence (rumqttd) may have lost it.
//!
//! # Catching up after an outage
//!
//! What was sealed before the connection came up is the backlog; what is
//! sealed after is live. Live batches go first, in order. The backlog goes
//! oldest first, at most `backlog_records_per_sec` records a second and in
//! at most half the window, so a region of gateways coming back does not
//! stampede the broker and live data stays fresh while the backlog drains.
//! The aggregator therefore receives a stream's batches out of order after
//! an outage; it stores each seq once in any order (its ledger keeps the
//! settled seqs above a gap, bounded by the backlog still in flight).
//!
//! # IO ([`run`])
//!
//! One task owns the rumqttc event loop and is never cancelled mid-poll; it
//! reports to the uplink over a channel. The session is `clean_session = true`: the
//! outbox in sled is the only queue that matters, so nothing is kept in the
//! MQTT session. Batches go out at QoS 1 on `dash/v1/{tenant}/{agent}/batch`;
//! acks come back on `.../ack`. Only an application ack deletes a batch, never
//! a PUBACK: the broker holding a batch is not the database holding it.
//!
//! The status (retained, QoS 1) goes out on connect, every `status_interval`
//! and on shutdown; the broker publishes the last will (`online: false`)
//! when the agent vanishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dash_shared::topic::{self, TopicKind};
use dash_shared::wire::{self, Limits};
use dash_shared::{AckOutcome, AgentId, AgentStatus, Message, TenantId};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;

/// Spends a budget of records per second on backlog batches.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Pacer {
    /// `rate` records a second; 0: unlimited.
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate: rate as f64,
            tokens: rate as f64,
            at: None,
        }
    }

    /// Whether a batch of `records` may go now; spends them if so. A batch
    /// larger than a second's budget goes when the budget is full, and the
    /// debt is paid before the next.
    pub fn take(&mut self, records: u64, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if let Some(at) = self.at {
            let refill = now.duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate);
        }
        self.at = Some(now);
        if self.tokens <= 0.0 || (self.tokens < records as f64 && self.tokens < self.rate) {
            return false;
        }
        self.tokens -= records as f64;
        true
    }
}

/// Batches sent and not yet acked, with when they were sent.
#[derive(Debug)]
pub struct Inflight {
    window: usize,
    ack_timeout: Duration,
    sent: BTreeMap<u64, Instant>,
    /// Seqs up to this one were sealed before the connection came up.
    backlog_through: u64,
    pacer: Pacer,
}

impl Inflight {
    pub fn new(window: usize, ack_timeout: Duration, backlog_rate: u64) -> Self {
        Inflight {
            window: window.max(1),
            ack_timeout,
            sent: BTreeMap::new(),
            backlog_through: 0,
            pacer: Pacer::new(backlog_rate),
        }
    }

    /// A new connection: whatever was in flight must be sent again, and
    /// everything sealed up to `durable` is backlog.
    pub fn reset(&mut self, durable: u64) {
        self.sent.clear();
        self.backlog_through = durable;
    }

    pub fn backlog_through(&self) -> u64 {
        self.backlog_through
    }

    /// Which batches to send now; marks them sent at `now`. `live` are the
    /// oldest unacked seqs above the backlog, `backlog` the oldest up to it
    /// with their record counts; both ascending.
    pub fn due(&mut self, live: &[u64], backlog: &[(u64, u64)], now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        let overdue = |at: &Instant| now.duration_since(*at) >= self.ack_timeout;
        // Resends first, whatever their kind: they were paid for.
        for seq in live.iter().chain(backlog.iter().map(|(s, _)| s)) {
            if self.sent.get(seq).is_some_and(overdue) {
                self.sent.insert(*seq, now);
                out.push(*seq);
            }
        }
        for seq in live {
            if self.sent.len() >= self.window {
                break;
            }
            if !self.sent.contains_key(seq) {
                self.sent.insert(*seq, now);
                out.push(*seq);
            }
        }
        let backlog_cap = (self.window / 2).max(1);
        for (seq, records) in backlog {
            let in_flight = self.sent.range(..=self.backlog_through).count();
            if self.sent.len() >= self.window || in_flight >= backlog_cap {
                break;
            }
            if self.sent.contains_key(seq) {
                continue;
            }
            if !self.pacer.take(*records, now) {
                break;
            }
            self.sent.insert(*seq, now);
            out.push(*seq);
        }
        out
    }

    /// Forgets `seq` and everything up to `through`.
    pub fn acked(&mut self, seq: u64, through: u64) {
        self.sent.remove(&seq);
        self.sent = self.sent.split_off(&through.saturating_add(1));
    }

    /// Forgets a send that did not leave (the request queue was full).
    pub fn unsent(&mut self, seq: u64) {
        self.sent.remove(&seq);
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// What the uplink needs to know.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub host: String,
    pub port: u16,
    /// TLS for `mqtts://`, verifying the broker and presenting the agent's certificate.
    pub tls: Option<std::sync::Arc<dash_tls::rustls::ClientConfig>>,
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub window: usize,
    pub ack_timeout: Duration,
    pub reconnect_max: Duration,
    pub status_interval: Duration,
    /// Backlog records a second after a reconnect; 0: unlimited.
    pub backlog_rate: u64,
    /// Where the status is also written as JSON, connected or not.
    pub status_file: Option<std::path::PathBuf>,
}

/// Writes the status as JSON to `path` (see [`crate::replace_file`]).
fn write_status_file(path: &std::path::Path, status: &AgentStatus) {
    let result = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::replace_file(path, &bytes));
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "status file not written");
    }
}

/// Builds the agent's status; `online` is false for the last will and the goodbye.
pub type StatusFn = Arc<dyn Fn(bool) -> AgentStatus + Send + Sync>;

fn status_bytes(status: &StatusFn, online: bool) -> Vec<u8> {
    let mut s = status(online);
    s.faults.truncate(dash_shared::wire::MAX_FAULTS);
    for f in &mut s.faults {
        let clipped = dash_runtime::text::clip(f, dash_shared::wire::MAX_TEXT_LEN).len();
        f.truncate(clipped);
    }
    wire::encode(&Message::Status(s), &Limits::default()).expect("status always encodes")
}

/// Runs until `stop`; sealed batches are announced on `sealed`.
pub async fn run(
    settings: UplinkSettings,
    buffer: Arc<Buffer>,
    clock: Arc<crate::clock::Clock>,
    status: StatusFn,
    sealed: Arc<Notify>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let batch_topic = topic::topic(&settings.tenant, &settings.agent, TopicKind::Batch);
    let ack_topic = topic::topic(&settings.tenant, &settings.agent, TopicKind::Ack);
    let status_topic = topic::topic(&settings.tenant, &settings.agent, TopicKind::Status);
    let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_clean_session(true);
    let max = Limits::default().max_message_bytes + 4096;
    opts.set_max_packet_size(max, max);
    opts.set_last_will(LastWill::new(
        &status_topic,
        status_bytes(&status, false),
        QoS::AtLeastOnce,
        true,
    ));
    if !settings.username.is_empty() {
        opts.set_credentials(&settings.username, &settings.password);
    }
    if let Some(tls) = &settings.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, eventloop) = AsyncClient::new(opts, 256);
    let (events, mut incoming) = mpsc::channel(256);
    let mut poller = tokio::spawn(poll(eventloop, events, settings.reconnect_max));
    let mut inflight = Inflight::new(settings.window, settings.ack_timeout, settings.backlog_rate);
    let mut connected = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut report = tokio::time::interval(settings.status_interval.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            // Shutting down: leave the loop, then say goodbye below.
            _ = stop.cancelled() => break,
            // New batches were sealed.
            _ = sealed.notified() => {}
            // Overdue acks, and the backlog's pace.
            _ = tick.tick() => {}
            _ = report.tick() => {
                if let Some(path) = &settings.status_file {
                    write_status_file(path, &status(connected));
                }
                if connected {
                    let now = status_bytes(&status, true);
                    if client.try_publish(&status_topic, QoS::AtLeastOnce, true, now).is_err() {
                        tracing::debug!("status skipped: the uplink request queue is full");
                    }
                }
            }
            event = incoming.recv() => match event {
                Some(Link::Connected) => {
                    connected = true;
                    inflight.reset(buffer.durable_seq());
                    buffer.forget_in_flight();
                    tracing::info!(
                        host = %settings.host,
                        port = settings.port,
                        backlog_batches = buffer.unacked(),
                        "uplink connected"
                    );
                    let online = status_bytes(&status, true);
                    if client.try_subscribe(&ack_topic, QoS::AtLeastOnce).is_err()
                        || client.try_publish(&status_topic, QoS::AtLeastOnce, true, online).is_err()
                    {
                        tracing::warn!("uplink request queue full right after connecting");
                    }
                }
                Some(Link::Message(p)) if p.topic == ack_topic => on_ack(&p.payload, &buffer, &clock, &mut inflight),
                Some(Link::Message(_)) => {}
                Some(Link::Lost) => connected = false,
                None => break,
            },
        }
        if connected {
            if let Err(e) = send_due(&client, &buffer, &mut inflight, &batch_topic) {
                tracing::error!(error = %e, "reading the buffer failed; retrying");
            }
        }
    }
    if connected {
        let _ = client.try_publish(
            &status_topic,
            QoS::AtLeastOnce,
            true,
            status_bytes(&status, false),
        );
        let _ = client.try_disconnect();
    }
    // The poller ends on the disconnect; don't wait on a dead link.
    if tokio::time::timeout(Duration::from_secs(2), &mut poller)
        .await
        .is_err()
    {
        poller.abort();
    }
    Ok(())
}

/// What the event-loop task reports.
enum Link {
    Connected,
    Message(Publish),
    Lost,
}

/// Owns the rumqttc event loop and is never cancelled mid-poll (rumqttc's
/// poll is not cancel-safe: a cancelled poll can drop a request it already
/// took). Reconnects with backoff; ends after a disconnect was sent or when
/// the uplink stopped listening.
async fn poll(mut eventloop: EventLoop, events: mpsc::Sender<Link>, reconnect_max: Duration) {
    let mut failures = 0u32;
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                Link::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Link::Message(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                failures += 1;
                let wait = dash_runtime::backoff::delay(failures, RECONNECT_BASE, reconnect_max);
                tracing::warn!(error = %e, retry_in = ?wait, "uplink disconnected");
                if events.send(Link::Lost).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if events.send(report).await.is_err() {
            return;
        }
    }
}

/// The first reconnect waits about this long; each failure doubles it.
const RECONNECT_BASE: Duration = Duration::from_millis(500);

fn send_due(
    client: &AsyncClient,
    buffer: &Buffer,
    inflight: &mut Inflight,
    topic: &str,
) -> anyhow::Result<()> {
    // Everything in flight is among the oldest unacked batches of its kind.
    let limit = 2 * inflight.window;
    let through = inflight.backlog_through();
    let mut backlog = Vec::new();
    for seq in buffer.outbox_seqs(limit)? {
        if seq > through {
            break;
        }
        let records = buffer.batch_info(seq)?.map_or(0, |i| i.records);
        backlog.push((seq, records));
    }
    let live = buffer.outbox_after(through, limit)?;
    for seq in inflight.due(&live, &backlog, Instant::now()) {
        let Some(bytes) = buffer.take_for_sending(seq)? else {
            inflight.unsent(seq);
            continue;
        };
        if client
            .try_publish(topic, QoS::AtLeastOnce, false, bytes.to_vec())
            .is_err()
        {
            inflight.unsent(seq);
            buffer.not_sent(seq);
            break;
        }
        tracing::debug!(seq, backlog = seq <= through, "batch sent");
    }
    Ok(())
}

fn on_ack(payload: &[u8], buffer: &Buffer, clock: &crate::clock::Clock, inflight: &mut Inflight) {
    let ack = match wire::decode(payload, &Limits::default()) {
        Ok(Message::Ack(ack)) => ack,
        Ok(_) => return tracing::warn!("non-ack message on the ack topic ignored"),
        Err(e) => return tracing::warn!(error = %e, "unreadable ack ignored"),
    };
    clock.observe(ack.server_time);
    buffer.remember_time(ack.server_time);
    if ack.seq == 0 {
        return; // the answer to a status: only the time
    }
    if ack.stream != *buffer.stream() {
        return tracing::debug!(seq = ack.seq, "ack for another buffer incarnation ignored");
    }
    let sent = buffer.durable_seq();
    if ack.seq > sent || ack.committed_through > sent {
        return tracing::warn!(
            seq = ack.seq,
            through = ack.committed_through,
            sent,
            "ack for batches never sent ignored"
        );
    }
    if let AckOutcome::Rejected { reason } = &ack.outcome {
        tracing::error!(seq = ack.seq, %reason, "aggregator rejected a batch; it keeps the payload in ingest_rejections");
    }
    inflight.acked(ack.seq, ack.committed_through);
    match buffer.settle(ack.seq, ack.committed_through) {
        Ok(n) => tracing::debug!(
            seq = ack.seq,
            through = ack.committed_through,
            dropped = n,
            "batch acked"
        ),
        Err(e) => tracing::error!(error = %e, "could not drop an acked batch; it will be resent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_up_to_the_window_then_waits_for_acks() {
        let mut f = Inflight::new(2, Duration::from_secs(30), 0);
        let t0 = Instant::now();
        assert_eq!(f.due(&[1, 2, 3], &[], t0), vec![1, 2]);
        assert_eq!(f.due(&[1, 2, 3], &[], t0), Vec::<u64>::new());
        f.acked(1, 0);
        assert_eq!(f.due(&[2, 3], &[], t0), vec![3]);
    }

    #[test]
    fn overdue_batches_are_resent() {
        let mut f = Inflight::new(4, Duration::from_secs(30), 0);
        let t0 = Instant::now();
        assert_eq!(f.due(&[1, 2], &[], t0), vec![1, 2]);
        assert_eq!(
            f.due(&[1, 2], &[], t0 + Duration::from_secs(29)),
            Vec::<u64>::new()
        );
        assert_eq!(
            f.due(&[1, 2], &[], t0 + Duration::from_secs(30)),
            vec![1, 2]
        );
    }

    #[test]
    fn a_reconnect_resends_everything_in_flight() {
        let mut f = Inflight::new(4, Duration::from_secs(30), 0);
        let t0 = Instant::now();
        f.due(&[5, 6], &[], t0);
        f.reset(0);
        assert_eq!(f.due(&[5, 6], &[], t0), vec![5, 6]);
    }

    #[tokio::test]
    async fn an_ack_for_batches_never_sent_deletes_nothing() {
        use dash_shared::{Ack, SeriesKey};
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(dir.path()).unwrap();
        let sample = crate::sample::Sample {
            key: SeriesKey::new("d", "m"),
            ts: 1_764_000_000_000_000,
            value: 1.0,
        };
        buffer.append(&[sample.clone(), sample]).unwrap();
        buffer.seal(1).await.unwrap();
        buffer.seal(1).await.unwrap();
        let mut inflight = Inflight::new(4, Duration::from_secs(30), 0);
        let ack = |seq, through| {
            let ack = Ack {
                stream: buffer.stream().clone(),
                seq,
                outcome: AckOutcome::Duplicate,
                committed_through: through,
                server_time: 0,
            };
            wire::encode(&Message::Ack(ack), &Limits::default()).unwrap()
        };
        on_ack(
            &ack(1, u64::MAX),
            &buffer,
            &Default::default(),
            &mut inflight,
        );
        assert_eq!(buffer.outbox_seqs(10).unwrap(), vec![1, 2]);
        on_ack(&ack(1, 1), &buffer, &Default::default(), &mut inflight);
        assert_eq!(buffer.outbox_seqs(10).unwrap(), vec![2]);
    }

    #[test]
    fn live_batches_go_first_and_the_backlog_is_paced() {
        // 10 backlog batches of 100 records, at 200 records a second.
        let mut f = Inflight::new(8, Duration::from_secs(30), 200);
        f.reset(10);
        let backlog: Vec<(u64, u64)> = (1..=10).map(|s| (s, 100)).collect();
        let t0 = Instant::now();
        assert_eq!(f.due(&[11, 12], &backlog, t0), vec![11, 12, 1, 2]);
        f.acked(1, 0);
        f.acked(2, 0);
        // No budget left this second; live still goes.
        assert_eq!(f.due(&[11, 12, 13], &backlog[2..], t0), vec![13]);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(f.due(&[], &backlog[2..], t1), vec![3]);
        // The backlog never takes more than half the window.
        let mut g = Inflight::new(4, Duration::from_secs(30), 0);
        g.reset(10);
        assert_eq!(g.due(&[], &backlog, t0), vec![1, 2]);
        assert_eq!(g.due(&[11, 12, 13], &backlog, t0), vec![11, 12]);
    }

    #[test]
    fn a_pacer_lets_a_batch_larger_than_a_second_through_when_full() {
        let mut p = Pacer::new(100);
        let t0 = Instant::now();
        assert!(p.take(500, t0), "a full budget lets a big batch go");
        assert!(
            !p.take(1, t0 + Duration::from_secs(1)),
            "the debt is paid first"
        );
        assert!(p.take(1, t0 + Duration::from_secs(5)));
        assert!(Pacer::new(0).take(u64::MAX, t0), "0 is unlimited");
    }

    #[test]
    fn committed_through_clears_older_sends() {
        let mut f = Inflight::new(8, Duration::from_secs(30), 0);
        let t0 = Instant::now();
        f.due(&[1, 2, 3, 4], &[], t0);
        f.acked(4, 2);
        assert_eq!(f.len(), 1);
        assert_eq!(f.due(&[3], &[], t0), Vec::<u64>::new());
    }
}
