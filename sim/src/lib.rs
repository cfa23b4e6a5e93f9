//! `dash-sim`: devices to collect from, for the demo and the tests.
//!
//! - A Modbus server (TCP, or RTU on a serial line) whose registers hold
//!   changing values (a seconds counter at holding 0, a temperature as f32
//!   at holding 2-3, a pump state on coil 10) and fixed [`fixtures`]: one
//!   known value for every data type in every byte and word order. Reads at
//!   or above address 5000 get an *illegal data address* exception; unit
//!   id 99 never answers (a dead device behind a gateway).
//! - A POS posting sales to the agent's HTTP input ([`pos`]).
//! - MQTT devices publishing temperature and humidity ([`mqtt_devices`]).

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dash_agent::modbus::{DataType, Kind, ModbusPoint, Order, encode};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Addresses from here on answer with an exception.
pub const FORBIDDEN_FROM: u16 = 5_000;
/// A unit id the simulator never answers.
pub const SILENT_UNIT: u8 = 99;

/// A point of the fixture table and the value it must read as.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub point: ModbusPoint,
    pub value: f64,
}

fn point(metric: String, kind: Kind, address: u16, t: DataType, b: Order, w: Order) -> ModbusPoint {
    ModbusPoint {
        metric,
        kind,
        address,
        data_type: t,
        byte_order: b,
        word_order: w,
        scale: 1.0,
        offset: 0.0,
        unit: String::new(),
    }
}

/// Every data type in every byte and word order, in holding registers from
/// 1000 (4 registers apart), the same in input registers from 3000, plus
/// coils and discrete inputs.
pub fn fixtures() -> Vec<Fixture> {
    let values = [
        (DataType::Bool, 1.0),
        (DataType::U16, 65_000.0),
        (DataType::I16, -1_234.0),
        (DataType::U32, 4_000_000_000.0),
        (DataType::I32, -2_000_000_000.0),
        (DataType::F32, 21.5),
        (DataType::U64, 9_000_000_000_000.0),
        (DataType::I64, -9_000_000_000_000.0),
        (DataType::F64, -1_234.567_8),
    ];
    let orders = [Order::Big, Order::Little];
    let mut out = Vec::new();
    let mut slot = 0u16;
    for (t, value) in values {
        for b in orders {
            for w in orders {
                for (kind, base, name) in [(Kind::Holding, 1_000, "hr"), (Kind::Input, 3_000, "ir")]
                {
                    let metric = format!("{name}.{t:?}.{b:?}.{w:?}").to_lowercase();
                    out.push(Fixture {
                        point: point(metric, kind, base + slot * 4, t, b, w),
                        value,
                    });
                }
                slot += 1;
            }
        }
    }
    for (kind, address, value) in [
        (Kind::Coil, 0, 1.0),
        (Kind::Coil, 1, 0.0),
        (Kind::Coil, 2, 1.0),
        (Kind::Discrete, 0, 0.0),
        (Kind::Discrete, 1, 1.0),
    ] {
        let metric = format!("{kind:?}.{address}").to_lowercase();
        out.push(Fixture {
            point: point(
                metric,
                kind,
                address,
                DataType::Bool,
                Order::Big,
                Order::Big,
            ),
            value,
        });
    }
    out
}

/// The register image: fixtures plus values that change with time.
#[derive(Debug)]
pub struct Registers {
    holding: Vec<u16>,
    input: Vec<u16>,
    coils: Vec<bool>,
    discrete: Vec<bool>,
    started: Instant,
}

impl Default for Registers {
    fn default() -> Self {
        let mut r = Registers {
            holding: vec![0; usize::from(FORBIDDEN_FROM)],
            input: vec![0; usize::from(FORBIDDEN_FROM)],
            coils: vec![false; usize::from(FORBIDDEN_FROM)],
            discrete: vec![false; usize::from(FORBIDDEN_FROM)],
            started: Instant::now(),
        };
        for f in fixtures() {
            let p = &f.point;
            let at = usize::from(p.address);
            match p.kind {
                Kind::Holding | Kind::Input => {
                    let regs = encode(f.value, p.data_type, p.byte_order, p.word_order);
                    let table = if p.kind == Kind::Holding {
                        &mut r.holding
                    } else {
                        &mut r.input
                    };
                    table[at..at + regs.len()].copy_from_slice(&regs);
                }
                Kind::Coil => r.coils[at] = f.value != 0.0,
                Kind::Discrete => r.discrete[at] = f.value != 0.0,
            }
        }
        r
    }
}

impl Registers {
    /// Updates the changing values to `now`.
    fn tick(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.holding[0] = (secs as u64 % 65_536) as u16;
        let temp = 20.0 + 5.0 * (secs / 60.0).sin();
        let regs = encode(temp, DataType::F32, Order::Big, Order::Big);
        self.holding[2..4].copy_from_slice(&regs);
        self.coils[10] = (secs as u64 / 10).is_multiple_of(2);
    }
}

/// The simulator as a tokio-modbus service.
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    registers: Arc<std::sync::Mutex<Registers>>,
}

fn range(addr: u16, cnt: u16) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let end = u32::from(addr) + u32::from(cnt);
    if cnt == 0 || end > u32::from(FORBIDDEN_FROM) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(usize::from(addr)..end as usize)
}

impl Simulator {
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        if req.slave == SILENT_UNIT {
            return Ok(None);
        }
        let mut r = self.registers.lock().expect("registers");
        r.tick();
        let response = match req.request {
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(r.holding[range(a, n)?].to_vec())
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(r.input[range(a, n)?].to_vec())
            }
            Request::ReadCoils(a, n) => Response::ReadCoils(r.coils[range(a, n)?].to_vec()),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(r.discrete[range(a, n)?].to_vec())
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(response))
    }
}

impl Service for Simulator {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(self.answer(req))
    }
}

/// Serves Modbus TCP on `listener` until `stop` resolves. Open connections
/// are dropped with it (a device that disappears).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> std::io::Result<()> {
    let sim = Simulator::default();
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream, addr: SocketAddr| {
        let sim = sim.clone();
        async move {
            tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, move |_| {
                Ok(Some(sim.clone()))
            })
        }
    };
    let on_error = |e: std::io::Error| tracing::debug!(error = %e, "Modbus connection ended");
    server
        .serve_until(&on_connected, on_error, stop)
        .await
        .map(|_| ())
}

/// Serves Modbus RTU on the serial port `path` until `stop` resolves.
pub async fn serve_rtu(
    path: &str,
    baud: u32,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> std::io::Result<()> {
    let server = tokio_modbus::server::rtu::Server::new_from_path(path, baud)?;
    server
        .serve_until(Simulator::default(), stop)
        .await
        .map(|_| ())
}

/// Posts `count` sales (0: forever) at `per_sec` to an agent's HTTP input at
/// `addr`, path `path`, each with its own Idempotency-Key; retries until
/// each is acknowledged. Returns how many were acknowledged.
pub async fn pos(
    addr: SocketAddr,
    path: &str,
    token: &str,
    per_sec: f64,
    count: u64,
) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let items = [
        ("coffee", 3.5),
        ("cake", 4.25),
        ("sandwich", 7.9),
        ("juice", 3.1),
    ];
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec.max(0.001)));
    let run = std::process::id();
    while count == 0 || sent < count {
        tick.tick().await;
        let (item, amount) = items[(sent % items.len() as u64) as usize];
        let body = serde_json::json!({
            "id": sent,
            "till": format!("till-{}", sent % 2 + 1),
            "location": "soho",
            "item": item,
            "amount": amount,
            "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64(),
        })
        .to_string();
        let key = format!("sim-{run}-{sent}");
        loop {
            let attempt = async {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: dash\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(head.as_bytes()).await?;
                let mut reply = String::new();
                s.read_to_string(&mut reply).await?;
                Ok::<String, std::io::Error>(reply)
            };
            match attempt.await {
                Ok(reply) if reply.starts_with("HTTP/1.1 200") => break,
                Ok(reply) if reply.starts_with("HTTP/1.1 4") => {
                    anyhow::bail!(
                        "the agent refused a sale: {}",
                        reply.lines().last().unwrap_or_default()
                    )
                }
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        sent += 1;
    }
    Ok(sent)
}

/// `devices` sensors (`th-01`, ...) publishing `temperature` and `humidity`
/// as plain numbers at QoS 1 on `sensors/{device}/{metric}` to the broker at
/// `addr` every `every`, until the process ends. Values drift slowly.
pub async fn mqtt_devices(addr: SocketAddr, devices: usize, every: Duration) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for d in 1..=devices {
        let name = format!("th-{d:02}");
        let mut options = rumqttc::MqttOptions::new(
            format!("dash-sim-{name}"),
            addr.ip().to_string(),
            addr.port(),
        );
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = events.poll().await {
                    tracing::warn!(error = %e, "MQTT device disconnected; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64() / 60.0 + d as f64;
                let temperature = 20.0 + d as f64 + 2.0 * t.sin();
                let humidity = 45.0 + 10.0 * (t / 3.0).cos();
                for (metric, value) in [("temperature", temperature), ("humidity", humidity)] {
                    let topic = format!("sensors/{name}/{metric}");
                    let payload = format!("{value:.2}");
                    if client
                        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_do_not_overlap_and_stay_below_the_forbidden_range() {
        let mut used = std::collections::HashSet::new();
        for f in fixtures() {
            let p = &f.point;
            for a in p.address..p.address + p.data_type.width() {
                assert!(used.insert((p.kind, a)), "{p:?} overlaps");
                assert!(a < FORBIDDEN_FROM);
            }
        }
        assert_eq!(fixtures().len(), 9 * 4 * 2 + 5);
    }
}
