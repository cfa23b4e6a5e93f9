//! Modbus input: polls PLCs and meters over Modbus TCP or RTU (serial).
//!
//! Per device, the points of each register kind are sorted and merged into
//! as few reads as the protocol allows (125 registers or 2,000 bits per
//! read, gaps of at most `max_gap` unused registers). Each read runs under
//! `timeout_ms` (tokio-modbus has no timeout of its own) and is retried
//! `retries` times with doubling backoff. An exception reply marks the
//! points of that read as failed; a timeout or a transport error also drops
//! the connection, which is reopened on the next poll. Nothing stops the
//! agent: a point that fails reports it as a `modbus.status` event (on
//! every change between ok and failing, not on every poll), and its samples
//! resume when reads succeed again.

use std::collections::HashMap;
use std::time::Duration;

use dash_shared::{Event, SeriesKey};
use serde::{Deserialize, Serialize};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use crate::commit::Committer;
use crate::sample::{Record, Sample};

/// Most registers one read may ask for.
const MAX_REGISTERS: u16 = 125;
/// Most coils or discrete inputs one read may ask for.
const MAX_BITS: u16 = 2_000;

/// `[modbus]`: the devices to poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<ModbusDevice>,
}

/// One Modbus server (a PLC, a meter), over TCP or a serial line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Device id of its series.
    pub name: String,
    /// Modbus TCP: `host:port`.
    #[serde(default)]
    pub address: String,
    /// Modbus RTU: the serial port, e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub serial: String,
    #[serde(default = "defaults::baud")]
    pub baud: u32,
    /// `none`, `even` or `odd`.
    #[serde(default = "defaults::parity")]
    pub parity: String,
    #[serde(default = "defaults::stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "defaults::data_bits")]
    pub data_bits: u8,
    /// Unit (slave) id.
    #[serde(default = "defaults::unit_id")]
    pub unit_id: u8,
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest wait for one reply.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of a failed read, with backoff doubling from `backoff_ms`.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    #[serde(default = "defaults::backoff_ms")]
    pub backoff_ms: u64,
    /// Unused registers a merged read may span between two points.
    #[serde(default)]
    pub max_gap: u16,
    pub points: Vec<ModbusPoint>,
}

mod defaults {
    use super::Order;

    pub fn baud() -> u32 {
        9_600
    }
    pub fn parity() -> String {
        "none".into()
    }
    pub fn stop_bits() -> u8 {
        1
    }
    pub fn data_bits() -> u8 {
        8
    }
    pub fn unit_id() -> u8 {
        1
    }
    pub fn poll_interval_ms() -> u64 {
        1_000
    }
    pub fn timeout_ms() -> u64 {
        1_000
    }
    pub fn retries() -> u32 {
        2
    }
    pub fn backoff_ms() -> u64 {
        100
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn big() -> Order {
        Order::Big
    }
}

/// Register kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Coil,
    Discrete,
    Holding,
    Input,
}

/// Value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl DataType {
    /// Registers (or bits) the type takes.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// Byte order within a register, or register order within a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (Modbus's own order).
    Big,
    Little,
}

/// One value read from a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusPoint {
    pub metric: String,
    pub kind: Kind,
    /// Zero-based protocol address.
    pub address: u16,
    #[serde(rename = "type", default = "defaults_type")]
    pub data_type: DataType,
    /// Byte order within each register.
    #[serde(default = "defaults::big")]
    pub byte_order: Order,
    /// Register order of values wider than one register.
    #[serde(default = "defaults::big")]
    pub word_order: Order,
    /// value = raw * scale + offset.
    #[serde(default = "defaults::one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Unit, kept as the tag `unit` (e.g. `°C`); empty: none.
    #[serde(default)]
    pub unit: String,
}

fn defaults_type() -> DataType {
    DataType::U16
}

impl ModbusDevice {
    /// A PLC over Modbus TCP with a temperature and a pump state.
    pub fn example() -> ModbusDevice {
        let p = |metric: &str, kind, address, data_type, unit: &str| ModbusPoint {
            metric: metric.into(),
            kind,
            address,
            data_type,
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            unit: unit.into(),
        };
        ModbusDevice {
            name: "plc-1".into(),
            address: "192.168.1.10:502".into(),
            serial: String::new(),
            baud: defaults::baud(),
            parity: defaults::parity(),
            stop_bits: defaults::stop_bits(),
            data_bits: defaults::data_bits(),
            unit_id: 1,
            poll_interval_ms: 1_000,
            timeout_ms: 1_000,
            retries: 2,
            backoff_ms: 100,
            max_gap: 0,
            points: vec![
                p("temperature", Kind::Holding, 100, DataType::F32, "degC"),
                p("pump.running", Kind::Coil, 0, DataType::Bool, ""),
            ],
        }
    }

    /// Checks what types cannot; errors name the field under `at`.
    pub fn validate(&self, at: &str) -> anyhow::Result<()> {
        if self.name.is_empty() {
            anyhow::bail!("{at}.name must not be empty");
        }
        if self.address.is_empty() == self.serial.is_empty() {
            anyhow::bail!("{at}: set exactly one of address (Modbus TCP) and serial (Modbus RTU)");
        }
        if !["none", "even", "odd"].contains(&self.parity.as_str()) {
            anyhow::bail!("{at}.parity {:?}: use none, even or odd", self.parity);
        }
        if !(1..=2).contains(&self.stop_bits) {
            anyhow::bail!("{at}.stop_bits must be 1 or 2");
        }
        if !(5..=8).contains(&self.data_bits) {
            anyhow::bail!("{at}.data_bits must be 5 to 8");
        }
        if self.poll_interval_ms < 10 || self.timeout_ms == 0 {
            anyhow::bail!("{at}: poll_interval_ms must be at least 10 and timeout_ms at least 1");
        }
        if self.points.is_empty() {
            anyhow::bail!("{at}.points: a device needs at least one point");
        }
        for (i, p) in self.points.iter().enumerate() {
            let at = format!("{at}.points[{i}]");
            let bits = matches!(p.kind, Kind::Coil | Kind::Discrete);
            if bits && p.data_type != DataType::Bool {
                anyhow::bail!("{at}: coils and discrete inputs are type = \"bool\"");
            }
            if u32::from(p.address) + u32::from(p.data_type.width()) > 65_536 {
                anyhow::bail!(
                    "{at}.address {} leaves no room for its {:?}",
                    p.address,
                    p.data_type
                );
            }
            if !p.scale.is_finite() || !p.offset.is_finite() {
                anyhow::bail!("{at}: scale and offset must be finite");
            }
            SeriesKey::new(self.name.clone(), p.metric.clone())
                .validate()
                .map_err(|e| anyhow::anyhow!("{at}.metric: {e}"))?;
        }
        Ok(())
    }
}

/// Decodes `regs` (as many as the type's width) into a number.
pub fn decode(regs: &[u16], t: DataType, byte_order: Order, word_order: Order) -> f64 {
    let mut words: Vec<u16> = regs.to_vec();
    if word_order == Order::Little {
        words.reverse();
    }
    let mut bytes = Vec::with_capacity(8);
    for w in words {
        let [hi, lo] = w.to_be_bytes();
        match byte_order {
            Order::Big => bytes.extend([hi, lo]),
            Order::Little => bytes.extend([lo, hi]),
        }
    }
    let b2 = || [bytes[0], bytes[1]];
    let b4 = || [bytes[0], bytes[1], bytes[2], bytes[3]];
    let b8 = || {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        a
    };
    match t {
        DataType::Bool => f64::from(u8::from(u16::from_be_bytes(b2()) != 0)),
        DataType::U16 => f64::from(u16::from_be_bytes(b2())),
        DataType::I16 => f64::from(i16::from_be_bytes(b2())),
        DataType::U32 => f64::from(u32::from_be_bytes(b4())),
        DataType::I32 => f64::from(i32::from_be_bytes(b4())),
        DataType::F32 => f64::from(f32::from_be_bytes(b4())),
        DataType::U64 => u64::from_be_bytes(b8()) as f64,
        DataType::I64 => i64::from_be_bytes(b8()) as f64,
        DataType::F64 => f64::from_be_bytes(b8()),
    }
}

/// The registers that hold `value` as `t` in the given orders (the inverse of
/// [`decode`]; the simulator and tests use it).
pub fn encode(value: f64, t: DataType, byte_order: Order, word_order: Order) -> Vec<u16> {
    let bytes: Vec<u8> = match t {
        DataType::Bool => u16::from(value != 0.0).to_be_bytes().to_vec(),
        DataType::U16 => (value as u16).to_be_bytes().to_vec(),
        DataType::I16 => (value as i16).to_be_bytes().to_vec(),
        DataType::U32 => (value as u32).to_be_bytes().to_vec(),
        DataType::I32 => (value as i32).to_be_bytes().to_vec(),
        DataType::F32 => (value as f32).to_be_bytes().to_vec(),
        DataType::U64 => (value as u64).to_be_bytes().to_vec(),
        DataType::I64 => (value as i64).to_be_bytes().to_vec(),
        DataType::F64 => value.to_be_bytes().to_vec(),
    };
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| match byte_order {
            Order::Big => u16::from_be_bytes([c[0], c[1]]),
            Order::Little => u16::from_be_bytes([c[1], c[0]]),
        })
        .collect();
    if word_order == Order::Little {
        words.reverse();
    }
    words
}

/// One read covering several points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub kind: Kind,
    pub start: u16,
    pub count: u16,
    /// Indexes into the device's points.
    pub points: Vec<usize>,
}

/// Merges the points into reads: by kind, in address order, adjacent (or
/// within `max_gap`) and within the protocol's limit per read.
pub fn plan(points: &[ModbusPoint], max_gap: u16) -> Vec<Read> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|i| (points[*i].kind, points[*i].address));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let p = &points[i];
        let (start, end) = (
            u32::from(p.address),
            u32::from(p.address) + u32::from(p.data_type.width()),
        );
        let limit = u32::from(match p.kind {
            Kind::Coil | Kind::Discrete => MAX_BITS,
            Kind::Holding | Kind::Input => MAX_REGISTERS,
        });
        if let Some(r) = reads.last_mut() {
            let r_end = u32::from(r.start) + u32::from(r.count);
            let new_end = r_end.max(end);
            if r.kind == p.kind
                && start <= r_end + u32::from(max_gap)
                && new_end - u32::from(r.start) <= limit
            {
                r.count = (new_end - u32::from(r.start)) as u16;
                r.points.push(i);
                continue;
            }
        }
        reads.push(Read {
            kind: p.kind,
            start: p.address,
            count: (end - start) as u16,
            points: vec![i],
        });
    }
    reads
}

/// Why a read gave no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("exception reply: {0}")]
    Exception(String),
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("transport: {0}")]
    Transport(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("reply has {got} values where {want} were asked for")]
    Short { got: usize, want: usize },
}

enum Values {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

async fn read_once(ctx: &mut Context, r: &Read) -> Result<Values, ReadError> {
    // tokio-modbus answers Result<Result<T, exception>, transport error>.
    fn flat<T>(r: tokio_modbus::Result<T>) -> Result<T, ReadError> {
        r.map_err(|e| ReadError::Transport(e.to_string()))?
            .map_err(|e: ExceptionCode| ReadError::Exception(format!("{e:?}")))
    }
    let (start, count) = (r.start, r.count);
    let values = match r.kind {
        Kind::Coil => Values::Bits(flat(ctx.read_coils(start, count).await)?),
        Kind::Discrete => Values::Bits(flat(ctx.read_discrete_inputs(start, count).await)?),
        Kind::Holding => Values::Words(flat(ctx.read_holding_registers(start, count).await)?),
        Kind::Input => Values::Words(flat(ctx.read_input_registers(start, count).await)?),
    };
    let got = match &values {
        Values::Bits(b) => b.len(),
        Values::Words(w) => w.len(),
    };
    if got < usize::from(r.count) {
        return Err(ReadError::Short {
            got,
            want: usize::from(r.count),
        });
    }
    Ok(values)
}

async fn connect(d: &ModbusDevice) -> Result<Context, ReadError> {
    let slave = Slave(d.unit_id);
    let timeout = Duration::from_millis(d.timeout_ms);
    let connected = if !d.address.is_empty() {
        let attempt = async {
            let addr = tokio::net::lookup_host(&d.address)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            tokio_modbus::client::tcp::connect_slave(addr, slave).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ReadError::Timeout(d.timeout_ms))?
    } else {
        let parity = match d.parity.as_str() {
            "even" => tokio_serial::Parity::Even,
            "odd" => tokio_serial::Parity::Odd,
            _ => tokio_serial::Parity::None,
        };
        let stop_bits = if d.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let data_bits = match d.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        use tokio_serial::SerialPortBuilderExt;
        tokio_serial::new(&d.serial, d.baud)
            .parity(parity)
            .stop_bits(stop_bits)
            .data_bits(data_bits)
            .open_native_async()
            .map(|port| tokio_modbus::client::rtu::attach_slave(port, slave))
            .map_err(std::io::Error::from)
    };
    connected.map_err(|e| ReadError::Connect(e.to_string()))
}

/// Polls `device` until `stop`, committing its samples and status events.
pub async fn poll(
    device: ModbusDevice,
    committer: Committer,
    transforms: std::sync::Arc<crate::transform::Transforms>,
    clock: std::sync::Arc<crate::clock::Clock>,
    stop: CancellationToken,
) {
    let reads = plan(&device.points, device.max_gap);
    let mut ctx: Option<Context> = None;
    // Per point: the error it is failing with, if any.
    let mut failing: HashMap<usize, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(device.poll_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(device = %device.name, reads = reads.len(), points = device.points.len(), "polling Modbus device");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut samples = Vec::new();
        let mut results: Vec<(usize, Result<f64, ReadError>)> = Vec::new();
        for r in &reads {
            // A device gone silent must not hold shutdown for reads × timeout_ms:
            // what this cycle read so far is kept, the rest is not tried.
            let outcome = tokio::select! {
                _ = stop.cancelled() => break,
                outcome = read_with_retries(&device, &mut ctx, r, &stop) => outcome,
            };
            let now = clock.now();
            match outcome {
                Ok(values) => {
                    for &i in &r.points {
                        let p = &device.points[i];
                        let at = usize::from(p.address - r.start);
                        let raw = match &values {
                            Values::Bits(b) => f64::from(u8::from(b[at])),
                            Values::Words(w) => decode(
                                &w[at..at + usize::from(p.data_type.width())],
                                p.data_type,
                                p.byte_order,
                                p.word_order,
                            ),
                        };
                        let value = raw * p.scale + p.offset;
                        results.push((i, Ok(value)));
                        if value.is_finite() {
                            samples.push(Sample {
                                key: key(&device, p),
                                ts: now,
                                value,
                            });
                        }
                    }
                }
                Err(e) => results.extend(r.points.iter().map(|i| (*i, Err(e.clone())))),
            }
        }
        let mut records = transforms.apply(crate::transform::Input::Modbus, samples);
        for (i, result) in results {
            let p = &device.points[i];
            let change = match (&result, failing.get(&i)) {
                (Ok(_), Some(_)) => {
                    failing.remove(&i);
                    Some(("ok", String::new()))
                }
                (Err(e), prev) if prev != Some(&e.to_string()) => {
                    tracing::warn!(device = %device.name, metric = %p.metric, error = %e, "Modbus point failing");
                    failing.insert(i, e.to_string());
                    Some(("error", e.to_string()))
                }
                _ => None,
            };
            if let Some((status, error)) = change {
                let body = serde_json::json!({
                    "metric": p.metric,
                    "kind": p.kind,
                    "address": p.address,
                    "status": status,
                    "error": error,
                });
                records.push(Record::Event(Event {
                    source: device.name.clone(),
                    time: clock.now(),
                    kind: "modbus.status".into(),
                    body: body.to_string(),
                }));
            }
        }
        if records.is_empty() {
            continue;
        }
        match committer
            .enqueue_records(crate::sample::Class::Telemetry, records, None)
            .await
        {
            Ok(ticket) => {
                if let Err(e) = ticket.wait().await {
                    tracing::error!(device = %device.name, error = %e, "Modbus readings not stored");
                }
            }
            Err(_) => return, // shutting down
        }
    }
}

fn key(d: &ModbusDevice, p: &ModbusPoint) -> SeriesKey {
    let tags = (!p.unit.is_empty()).then(|| ("unit".to_owned(), p.unit.clone()));
    SeriesKey::with_tags(d.name.clone(), p.metric.clone(), tags)
}

async fn read_with_retries(
    d: &ModbusDevice,
    ctx: &mut Option<Context>,
    r: &Read,
    stop: &CancellationToken,
) -> Result<Values, ReadError> {
    let mut backoff = Duration::from_millis(d.backoff_ms);
    let mut attempt = 0;
    loop {
        let result = match ctx {
            Some(c) => {
                match tokio::time::timeout(Duration::from_millis(d.timeout_ms), read_once(c, r))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(ReadError::Timeout(d.timeout_ms)),
                }
            }
            None => match connect(d).await {
                Ok(c) => {
                    *ctx = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(v) => return Ok(v),
            // The device answered: retrying will not change its mind.
            Err(e @ ReadError::Exception(_)) => return Err(e),
            Err(e) => {
                // A late reply would be read as the answer to the next request.
                *ctx = None;
                attempt += 1;
                if attempt > d.retries || stop.is_cancelled() {
                    return Err(e);
                }
                tokio::select! {
                    _ = stop.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(kind: Kind, address: u16, data_type: DataType) -> ModbusPoint {
        ModbusPoint {
            metric: format!("m{address}"),
            kind,
            address,
            data_type,
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            unit: String::new(),
        }
    }

    #[test]
    fn every_type_and_order_round_trips_through_the_registers() {
        let cases = [
            (DataType::Bool, 1.0),
            (DataType::U16, 65_535.0),
            (DataType::I16, -1234.0),
            (DataType::U32, 4_000_000_000.0),
            (DataType::I32, -2_000_000_000.0),
            (DataType::F32, 21.5),
            (DataType::U64, 9_000_000_000_000.0),
            (DataType::I64, -9_000_000_000_000.0),
            (DataType::F64, -1234.5678e10),
        ];
        for (t, v) in cases {
            for b in [Order::Big, Order::Little] {
                for w in [Order::Big, Order::Little] {
                    let regs = encode(v, t, b, w);
                    assert_eq!(regs.len(), usize::from(t.width()));
                    assert_eq!(decode(&regs, t, b, w), v, "{t:?} {b:?} {w:?}");
                }
            }
        }
    }

    #[test]
    fn the_four_orders_of_a_float_are_the_usual_abcd_cdab_badc_dcba() {
        // 21.5f32 = 0x41AC0000: A=41 B=AC C=00 D=00.
        assert_eq!(
            encode(21.5, DataType::F32, Order::Big, Order::Big),
            [0x41AC, 0x0000]
        );
        assert_eq!(
            encode(21.5, DataType::F32, Order::Big, Order::Little),
            [0x0000, 0x41AC]
        );
        assert_eq!(
            encode(21.5, DataType::F32, Order::Little, Order::Big),
            [0xAC41, 0x0000]
        );
        assert_eq!(
            encode(21.5, DataType::F32, Order::Little, Order::Little),
            [0x0000, 0xAC41]
        );
    }

    #[test]
    fn adjacent_points_merge_into_one_read_up_to_the_limit() {
        let points = vec![
            point(Kind::Holding, 10, DataType::F32),
            point(Kind::Holding, 0, DataType::U16),
            point(Kind::Holding, 1, DataType::U32),
            point(Kind::Holding, 3, DataType::U16),
            point(Kind::Input, 3, DataType::U16),
            point(Kind::Coil, 0, DataType::Bool),
            point(Kind::Coil, 1, DataType::Bool),
            point(Kind::Holding, 200, DataType::F64),
            point(Kind::Holding, 320, DataType::U16),
        ];
        let reads = plan(&points, 0);
        let shape: Vec<(Kind, u16, u16)> =
            reads.iter().map(|r| (r.kind, r.start, r.count)).collect();
        assert_eq!(
            shape,
            [
                (Kind::Coil, 0, 2),
                (Kind::Holding, 0, 4),
                (Kind::Holding, 10, 2),
                (Kind::Holding, 200, 4),
                (Kind::Holding, 320, 1),
                (Kind::Input, 3, 1),
            ]
        );
        // With gaps allowed, 0..12 is one read; 200..321 exceeds nothing but the gap.
        let reads = plan(&points, 6);
        assert_eq!((reads[1].start, reads[1].count), (0, 12));
        let wide = plan(&points, 200);
        let holding: Vec<(u16, u16)> = wide
            .iter()
            .filter(|r| r.kind == Kind::Holding)
            .map(|r| (r.start, r.count))
            .collect();
        assert_eq!(
            holding,
            [(0, 12), (200, 121)],
            "a read never asks for more than 125 registers"
        );
    }
}
