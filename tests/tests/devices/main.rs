//! The agent's device listener as devices meet it: raw sockets for each
//! normative statement it enforces (`conformance`), sessions across
//! reconnects, takeovers and a SIGKILL (`sessions`), and real clients:
//! paho-mqtt, mosquitto_pub and rumqttc's MQTT 5 client (`clients`).
//! Every reading is checked in PostgreSQL, behind a real aggregator.

mod clients;
mod conformance;
mod sessions;

use std::time::Duration;

use bytes::BytesMut;
use dash_tests::eventually;
use dash_tests::process;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest payload the agent under test takes.
const MAX_PAYLOAD: usize = 1024;

/// PostgreSQL, an aggregator and agent `gw-1` listening for devices
/// ([`dash_tests::stack::Stack`]), with this suite's checks.
struct Stack(dash_tests::stack::Stack);

impl std::ops::Deref for Stack {
    type Target = dash_tests::stack::Stack;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Stack {
    async fn start() -> Stack {
        dash_tests::init_tracing();
        let stack = Stack(
            dash_tests::stack::Stack::start_with("acme", "gw-1", |agent| {
                agent
                    .with_env("DASH_DEVICES__MAX_PAYLOAD_BYTES", MAX_PAYLOAD.to_string())
                    .with_env("DASH_UPLINK__STATUS_INTERVAL_SECS", "1")
            })
            .await,
        );
        stack.wait_for_listener().await;
        stack
    }

    async fn wait_for_listener(&self) {
        let port = self.devices;
        eventually(
            Duration::from_secs(30),
            "the device listener",
            || async move {
                TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    async fn raw(&self) -> Raw {
        Raw(TcpStream::connect(("127.0.0.1", self.devices))
            .await
            .unwrap())
    }

    /// Readings stored for `device`, as their values.
    async fn values(&self, device: &str) -> Vec<f64> {
        sqlx::query_scalar(
            "SELECT x.value FROM samples x JOIN series s ON s.id = x.series_id \
             WHERE s.device = $1 ORDER BY x.value",
        )
        .bind(device)
        .fetch_all(&self.pg.pool)
        .await
        .unwrap()
    }

    /// Waits until `device` has `n` readings (and a little longer, so a
    /// duplicate would show), and returns them.
    async fn settled(&self, device: &str, n: usize) -> Vec<f64> {
        eventually(
            Duration::from_secs(30),
            &format!("{n} readings of {device}"),
            || async { (self.values(device).await.len() >= n).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.values(device).await
    }

    /// The agent's status file, once it has `devices.refused.{reason}` = `n`.
    async fn refused(&self, reason: &str, n: u64) -> serde_json::Value {
        let dir = self.dir.path();
        eventually(
            Duration::from_secs(30),
            &format!("{n} refusals for {reason}"),
            || async move {
                process::agent_status_file(dir, "gw-1")
                    .filter(|s| s["devices"]["refused"][reason].as_u64() == Some(n))
            },
        )
        .await
    }

    fn agent_log(&self) -> String {
        self.agent.log()
    }
}

/// A device on a bare socket.
struct Raw(TcpStream);

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    /// Exactly these bytes next, within 10 s.
    async fn expect(&mut self, want: &[u8], what: &str) {
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(10), self.0.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within 10 s"))
            .unwrap_or_else(|e| panic!("{what}: closed ({e}) before {want:02x?}"));
        assert_eq!(got, want, "{what}");
    }

    /// The next packet, whole, within 10 s.
    async fn packet(&mut self, what: &str) -> Vec<u8> {
        let mut head = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), self.0.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within 10 s"))
            .unwrap_or_else(|e| panic!("{what}: closed ({e})"));
        assert!(head[1] < 0x80, "{what}: replies here are short");
        let mut body = vec![0u8; usize::from(head[1])];
        self.0.read_exact(&mut body).await.unwrap();
        [head.to_vec(), body].concat()
    }

    /// The server closes the connection within `secs`, sending nothing
    /// more (or only what `allowed` starts with).
    async fn expect_closed_within(&mut self, secs: u64, what: &str) {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(secs), self.0.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{what}: still open after {secs} s");
        assert!(rest.is_empty(), "{what}: sent {rest:02x?} before closing");
    }

    async fn expect_closed(&mut self, what: &str) {
        self.expect_closed_within(10, what).await;
    }
}

fn v4_bytes(p: v4::Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

fn v5_bytes(p: v5::Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.write(&mut out, None).unwrap();
    out.to_vec()
}

fn connect_v4(id: &str, clean: bool) -> Vec<u8> {
    let mut c = v4::Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = 30;
    v4_bytes(v4::Packet::Connect(c))
}

fn connect_v5(id: &str, clean: bool, expiry: Option<u32>) -> Vec<u8> {
    let props = expiry.map(|s| v5::ConnectProperties {
        session_expiry_interval: Some(s),
        ..Default::default()
    });
    let c = v5::Connect {
        keep_alive: 30,
        client_id: id.into(),
        clean_start: clean,
        properties: props,
    };
    v5_bytes(v5::Packet::Connect(c, None, None))
}

fn publish_v4(topic: &str, qos: u8, pkid: u16, dup: bool, payload: &[u8]) -> Vec<u8> {
    let qos = rumqttc::mqttbytes::qos(qos).unwrap();
    let mut p = v4::Publish::new(topic, qos, payload.to_vec());
    p.pkid = pkid;
    p.dup = dup;
    v4_bytes(v4::Packet::Publish(p))
}

fn publish_v5(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let qos = rumqttc::v5::mqttbytes::qos(qos).unwrap();
    let mut p = v5::Publish::new(topic, qos, payload.to_vec(), None);
    p.pkid = pkid;
    v5_bytes(v5::Packet::Publish(p))
}

/// A CONNACK accepting a 3.1.1 client.
const CONNACK_OK: [u8; 4] = [0x20, 2, 0, 0];

/// The start of an MQTT 5 CONNACK: session present, reason code.
fn is_connack_v5(p: &[u8], present: bool, code: u8) -> bool {
    p[0] == 0x20 && p[2] == u8::from(present) && p[3] == code
}

fn puback(pkid: u16) -> [u8; 4] {
    let id = pkid.to_be_bytes();
    [0x40, 2, id[0], id[1]]
}

fn pubrec(pkid: u16) -> [u8; 4] {
    let id = pkid.to_be_bytes();
    [0x50, 2, id[0], id[1]]
}

fn pubrel(pkid: u16) -> [u8; 4] {
    let id = pkid.to_be_bytes();
    [0x62, 2, id[0], id[1]]
}

fn pubcomp(pkid: u16) -> [u8; 4] {
    let id = pkid.to_be_bytes();
    [0x70, 2, id[0], id[1]]
}
