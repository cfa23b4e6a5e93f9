//! A local stand-in for PagerDuty's Events API v2: it checks every field
//! of each event against the documented shape and answers as PagerDuty
//! does: 202 with `{"status": "success", ...}`, 400 `invalid event` for an
//! event that breaks the shape, or, when told to, 429 with Retry-After, 400
//! or 500.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the stand-in got and what it answers next.
#[derive(Default)]
struct State {
    /// Statuses to answer, in order; then 202.
    script: VecDeque<u16>,
    /// Every request: when, the event, and the answer.
    got: Vec<(Instant, serde_json::Value, u16)>,
}

/// A running stand-in on 127.0.0.1.
#[derive(Clone)]
pub struct PagerDuty {
    pub port: u16,
    /// The routing key it accepts.
    pub routing_key: String,
    state: Arc<Mutex<State>>,
}

impl PagerDuty {
    /// Starts one that accepts `routing_key`.
    pub async fn start(routing_key: &str) -> PagerDuty {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pd = PagerDuty {
            port: listener.local_addr().unwrap().port(),
            routing_key: routing_key.to_owned(),
            state: Default::default(),
        };
        let served = pd.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let pd = served.clone();
                tokio::spawn(async move { pd.serve(stream).await });
            }
        });
        pd
    }

    /// Its enqueue URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v2/enqueue", self.port)
    }

    /// Answers the next requests with these statuses (then 202 again).
    pub fn answer(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// Every request so far: when it came, the event, the status answered.
    pub fn got(&self) -> Vec<(Instant, serde_json::Value, u16)> {
        self.state.lock().unwrap().got.clone()
    }

    /// The events it accepted (answered 202).
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.got()
            .into_iter()
            .filter(|(_, _, s)| *s == 202)
            .map(|(_, e, _)| e)
            .collect()
    }

    async fn serve(&self, mut stream: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + 4 + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_end + 4..head_end + 4 + length].to_vec();
            buf.drain(..head_end + 4 + length);
            let (status, answer, retry) = self.judge(&head, &body);
            let reason = match status {
                202 => "Accepted",
                400 => "Bad Request",
                429 => "Too Many Requests",
                _ => "Internal Server Error",
            };
            let retry = retry.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
            let text = answer.to_string();
            let out = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}\r\n{text}",
                text.len()
            );
            if stream.write_all(out.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn judge(&self, head: &str, body: &[u8]) -> (u16, serde_json::Value, Option<u32>) {
        let event: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let problems = self.problems(head, &event);
        let mut state = self.state.lock().unwrap();
        let (status, answer, retry) = if !problems.is_empty() {
            (
                400,
                serde_json::json!({"status": "invalid event", "message": "Event object is invalid", "errors": problems}),
                None,
            )
        } else {
            match state.script.pop_front().unwrap_or(202) {
                202 => (
                    202,
                    serde_json::json!({"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}),
                    None,
                ),
                429 => (
                    429,
                    serde_json::json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly. Please retry later."}),
                    Some(1),
                ),
                400 => (
                    400,
                    serde_json::json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["told to refuse"]}),
                    None,
                ),
                s => (s, serde_json::json!({"status": "error"}), None),
            }
        };
        state.got.push((Instant::now(), event, status));
        (status, answer, retry)
    }

    /// What breaks the Events API v2 shape.
    fn problems(&self, head: &str, e: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        let request = head.lines().next().unwrap_or_default();
        if !request.starts_with("POST /v2/enqueue ") {
            out.push(format!("request line {request:?}"));
        }
        if !head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-type: application/json")
        }) {
            out.push("Content-Type is not application/json".into());
        }
        if e["routing_key"] != self.routing_key.as_str() {
            out.push("routing_key".into());
        }
        let action = e["event_action"].as_str().unwrap_or_default();
        if !["trigger", "acknowledge", "resolve"].contains(&action) {
            out.push(format!("event_action {action:?}"));
        }
        let key = e["dedup_key"].as_str().unwrap_or_default();
        if key.is_empty() || key.len() > 255 {
            out.push("dedup_key".into());
        }
        if action == "trigger" {
            let p = &e["payload"];
            let summary = p["summary"].as_str().unwrap_or_default();
            if summary.is_empty() || summary.chars().count() > 1024 {
                out.push("payload.summary".into());
            }
            if p["source"].as_str().unwrap_or_default().is_empty() {
                out.push("payload.source".into());
            }
            let severity = p["severity"].as_str().unwrap_or_default();
            if !["critical", "error", "warning", "info"].contains(&severity) {
                out.push(format!("payload.severity {severity:?}"));
            }
            if let Some(t) = p.get("timestamp").and_then(|t| t.as_str())
                && chrono::DateTime::parse_from_rfc3339(t).is_err()
            {
                out.push(format!("payload.timestamp {t:?}"));
            }
            if !p["custom_details"].is_object() && !p["custom_details"].is_null() {
                out.push("payload.custom_details".into());
            }
        }
        let known = [
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "images",
            "links",
            "client",
            "client_url",
        ];
        if let Some(o) = e.as_object() {
            for k in o.keys().filter(|k| !known.contains(&k.as_str())) {
                out.push(format!("unknown field {k:?}"));
            }
        }
        out
    }
}
