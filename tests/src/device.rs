//! A test device: publishes numbered readings at QoS 1 over a raw MQTT 3.1.1
//! (or 5) connection, so it knows exactly which readings were acknowledged
//! and how often each was sent. It reconnects and resends what was not acked, as a
//! real device with an at-least-once client does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::v5::mqttbytes::v5;

/// The MQTT version a test device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a device run achieved.
#[derive(Debug, Default)]
pub struct Report {
    /// Values whose PUBACK arrived.
    pub acked: Vec<i64>,
    /// How many times each value was sent.
    pub sends: HashMap<i64, u32>,
}

/// Publishes `values` on `sensors/{device}/{metric}` until all are acked,
/// `stop` is set, or `deadline` passes.
pub async fn publish(
    addr: SocketAddr,
    device: &str,
    metric: &str,
    values: impl IntoIterator<Item = i64>,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> Report {
    publish_fields(addr, device, metric, values, stop, deadline, 0).await
}

/// [`publish`], but with `fields > 0` each message is a JSON object of that
/// many numeric fields (`{"f0": v, "f1": v, ...}`): one reading per field.
pub async fn publish_fields(
    addr: SocketAddr,
    device: &str,
    metric: &str,
    values: impl IntoIterator<Item = i64>,
    stop: Arc<AtomicBool>,
    deadline: Duration,
    fields: usize,
) -> Report {
    publish_as(
        addr,
        device,
        metric,
        values,
        stop,
        deadline,
        fields,
        Protocol::V311,
    )
    .await
}

/// [`publish_fields`] in the given MQTT version.
#[allow(clippy::too_many_arguments)]
pub async fn publish_as(
    addr: SocketAddr,
    device: &str,
    metric: &str,
    values: impl IntoIterator<Item = i64>,
    stop: Arc<AtomicBool>,
    deadline: Duration,
    fields: usize,
    protocol: Protocol,
) -> Report {
    let end = Instant::now() + deadline;
    let topic = format!("sensors/{device}/{metric}");
    let mut pending: VecDeque<i64> = values.into_iter().collect();
    let mut report = Report::default();
    while !pending.is_empty() && Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let Ok(Ok(mut socket)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut inflight = BTreeMap::new();
        let _ = session(
            &mut socket,
            protocol,
            device,
            &topic,
            fields,
            &mut pending,
            &mut inflight,
            &mut report,
            &stop,
            end,
        )
        .await;
        // Whatever was in flight goes out again, first.
        for (_, v) in inflight.into_iter().rev() {
            pending.push_front(v);
        }
    }
    report
}

#[allow(clippy::too_many_arguments)]
async fn session(
    socket: &mut TcpStream,
    protocol: Protocol,
    device: &str,
    topic: &str,
    fields: usize,
    pending: &mut VecDeque<i64>,
    inflight: &mut BTreeMap<u16, i64>,
    report: &mut Report,
    stop: &AtomicBool,
    end: Instant,
) -> anyhow::Result<()> {
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let v5 = protocol == Protocol::V5;
    if v5 {
        let connect = v5::Connect {
            keep_alive: 30,
            client_id: format!("test-{device}"),
            clean_start: true,
            properties: None,
        };
        v5::Packet::Connect(connect, None, None).write(&mut out, None)?;
    } else {
        let mut connect = Connect::new(format!("test-{device}"));
        connect.keep_alive = 30;
        Packet::Connect(connect).write(&mut out, usize::MAX)?;
    }
    socket.write_all(&out).await?;
    match read(socket, &mut buf, protocol).await? {
        Acked::ConnAck => {}
        other => anyhow::bail!("expected CONNACK, got {other:?}"),
    }
    let mut pkid: u16 = 0;
    loop {
        out.clear();
        while inflight.len() < 32 && !stop.load(Ordering::Relaxed) {
            let Some(v) = pending.pop_front() else { break };
            pkid = pkid % u16::MAX + 1;
            let payload = if fields == 0 {
                v.to_string()
            } else {
                let body: Vec<String> = (0..fields).map(|f| format!("\"f{f}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            };
            if v5 {
                let mut p = v5::Publish::new(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    payload,
                    None,
                );
                p.pkid = pkid;
                v5::Packet::Publish(p).write(&mut out, None)?;
            } else {
                let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
                p.pkid = pkid;
                Packet::Publish(p).write(&mut out, usize::MAX)?;
            }
            inflight.insert(pkid, v);
            *report.sends.entry(v).or_default() += 1;
        }
        socket.write_all(&out).await?;
        if inflight.is_empty() || Instant::now() > end {
            return Ok(());
        }
        if let Acked::PubAck(pkid) = read(socket, &mut buf, protocol).await?
            && let Some(v) = inflight.remove(&pkid)
        {
            report.acked.push(v);
        }
    }
}

/// What a test device reads from the server.
#[derive(Debug)]
enum Acked {
    ConnAck,
    /// A successful PUBACK.
    PubAck(u16),
    Other,
}

async fn read(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    protocol: Protocol,
) -> anyhow::Result<Acked> {
    loop {
        let next = match protocol {
            Protocol::V311 => Packet::read(buf, 1 << 20).map(|p| match p {
                Packet::ConnAck(_) => Acked::ConnAck,
                Packet::PubAck(a) => Acked::PubAck(a.pkid),
                _ => Acked::Other,
            }),
            Protocol::V5 => match v5::Packet::read(buf, Some(1 << 20)) {
                Ok(v5::Packet::ConnAck(_)) => Ok(Acked::ConnAck),
                Ok(v5::Packet::PubAck(a)) if a.reason == v5::PubAckReason::Success => {
                    Ok(Acked::PubAck(a.pkid))
                }
                Ok(_) => Ok(Acked::Other),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(n)) => {
                    Err(CodecError::InsufficientBytes(n))
                }
                Err(e) => anyhow::bail!("bad packet: {e}"),
            },
        };
        match next {
            Ok(p) => return Ok(p),
            Err(CodecError::InsufficientBytes(_)) => {
                let n =
                    tokio::time::timeout(Duration::from_secs(10), socket.read_buf(buf)).await??;
                anyhow::ensure!(n > 0, "connection closed");
            }
            Err(e) => anyhow::bail!("bad packet: {e}"),
        }
    }
}

/// Checks the exactly-once promise for one device's readings against `rows`
/// (`value -> rows in PostgreSQL`): every acked reading is stored; a reading
/// sent once is stored at most once; no reading is stored more often than it
/// was sent (a device resending an unacked reading may legitimately add one).
pub fn check_exactly_once(report: &Report, rows: &HashMap<i64, i64>) {
    for v in &report.acked {
        let n = rows.get(v).copied().unwrap_or(0);
        assert!(
            n >= 1,
            "acknowledged reading {v} is missing from PostgreSQL"
        );
    }
    for (v, n) in rows {
        let sends = report.sends.get(v).copied().unwrap_or(0);
        assert!(sends > 0, "reading {v} is in PostgreSQL but was never sent");
        assert!(
            *n <= i64::from(sends),
            "reading {v} stored {n} times but sent {sends} times"
        );
    }
}

/// `value -> rows in PostgreSQL` for one device's metric `temp` of `tenant`.
pub async fn rows_of(
    pg: &crate::pg::TestPostgres,
    tenant: &str,
    device: &str,
) -> HashMap<i64, i64> {
    pg.counts(tenant, "temp")
        .await
        .into_iter()
        .filter(|((d, _), _)| d == device)
        .map(|((_, v), n)| (v, n))
        .collect()
}

/// Waits until every acked reading of every device is stored, then checks
/// the promise ([`check_exactly_once`]).
pub async fn assert_delivered(
    pg: &crate::pg::TestPostgres,
    tenant: &str,
    reports: &[(&str, &Report)],
) {
    for (device, report) in reports {
        crate::eventually(
            Duration::from_secs(90),
            "acknowledged readings to reach PostgreSQL",
            || async {
                let rows = rows_of(pg, tenant, device).await;
                report
                    .acked
                    .iter()
                    .all(|v| rows.contains_key(v))
                    .then_some(())
            },
        )
        .await;
    }
    // Give resends in flight time to arrive, so a double would show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (device, report) in reports {
        let rows = rows_of(pg, tenant, device).await;
        check_exactly_once(report, &rows);
        let resent = report.sends.values().filter(|n| **n > 1).count();
        let stored: i64 = rows.values().sum();
        eprintln!(
            "{device}: {} acked, {resent} resent by the device, {stored} rows stored",
            report.acked.len()
        );
    }
}

/// Publishes `sensors/{name}/temp` readings 0, 1, 2, ... in the background until `stop`.
pub fn background(
    addr: SocketAddr,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Report> {
    tokio::spawn(async move {
        publish(
            addr,
            name,
            "temp",
            0..1_000_000,
            stop,
            Duration::from_secs(300),
        )
        .await
    })
}
