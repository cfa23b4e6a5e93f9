//! Helpers for the end-to-end suites: a throwaway PostgreSQL, free ports,
//! the real `dash-agent` and `dash-aggregator` binaries as child processes,
//! Mosquitto, and a test device that knows exactly which readings were acked.
//!
//! The binaries are found next to the test executable's `deps` directory
//! (`target/debug/`), so `cargo build --workspace --bins` must run first; the
//! README's test command does.

pub mod app;
pub mod damage;
pub mod device;
pub mod fixture;
pub mod pagerduty;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod stack;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A small xorshift generator; the seed is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `DASH_TEST_SEED`, or else from the clock (printed).
    pub fn seeded() -> Rng {
        let seed = std::env::var("DASH_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("random seed {seed} (DASH_TEST_SEED={seed} replays it)");
        Rng(seed)
    }

    /// A generator for one numbered case, independent of the others.
    pub fn case(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Logs from the code under test, once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The aggregator's Prometheus text from `/metrics` on `port`.
pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// One unlabelled counter from `/metrics` on `port` (0 when absent).
pub async fn metric(port: u16, name: &str) -> f64 {
    let text = metrics_text(port).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET path` on 127.0.0.1:`port` with an optional bearer token: the status
/// and the body as JSON (`Null` when it is not JSON).
pub async fn get_json(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    response(&out)
}

/// `GET path` on 127.0.0.1:`port`: the status and the body as text, or
/// `None` when nothing answers.
pub async fn get_text(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// `POST path` with a JSON body, a bearer token and an optional
/// Idempotency-Key: the status and the body as JSON (`Null` when not JSON).
pub async fn post_json(
    port: u16,
    path: &str,
    token: &str,
    idempotency_key: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let key = idempotency_key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading all of a large body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    response(&out)
}

/// The status and the JSON body (`Null` when not JSON) of a raw HTTP response.
fn response(raw: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// One HTTP/1.1 exchange: what came back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header lines, as sent (`name: value`).
    pub headers: Vec<String>,
    /// The body as text (chunked bodies are not expected: axum sends lengths).
    pub text: String,
    /// The body as JSON, `Null` when it is not.
    pub json: serde_json::Value,
}

impl Answer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// `METHOD path` with extra header lines and an optional JSON body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    if let Some(b) = body {
        let _ = s.write_all(b.as_bytes()).await;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let raw = String::from_utf8_lossy(&out).into_owned();
    let (head, text) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"));
    Answer {
        status,
        headers: lines.map(str::to_owned).collect(),
        text: text.to_owned(),
        json: serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
    }
}
