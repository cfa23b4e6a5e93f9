//! Sending the outbox: a worker claims due rows (`FOR UPDATE SKIP LOCKED`,
//! so two aggregators never send one row twice), sends each to its contact
//! point, and records how it went: sent; retried later (a 429 after its
//! `Retry-After`, a 5xx or a network error after a backoff); or, refused
//! with a 4xx, kept as a dead letter with the reason and never retried.
//!
//! Contact points so far: PagerDuty's Events API v2.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::storage::alerts::{self as rows, Due, Settled};

/// PagerDuty's Events API v2.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// What kind of service a contact point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    Pagerduty,
}

/// One `[[alerts.contact_points]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPoint {
    /// What rules name in `notify`.
    pub name: String,
    pub kind: ContactKind,
    /// Where events go (PagerDuty's Events API unless told).
    #[serde(default = "pagerduty_url")]
    pub url: String,
    /// A file holding the integration's routing key: kept out of the
    /// config, the logs and every answer.
    pub routing_key_file: PathBuf,
}

fn pagerduty_url() -> String {
    PAGERDUTY_URL.into()
}

impl ContactPoint {
    /// An example for the config reference.
    pub fn example() -> ContactPoint {
        ContactPoint {
            name: "pagerduty-ops".into(),
            kind: ContactKind::Pagerduty,
            url: PAGERDUTY_URL.into(),
            routing_key_file: "/etc/dash/pagerduty-ops.key".into(),
        }
    }
}

/// A contact point ready to send: its routing key read.
#[derive(Clone)]
pub struct Contact {
    pub name: String,
    pub url: String,
    routing_key: String,
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Contact({}, {})", self.name, self.url)
    }
}

impl Contact {
    /// Reads `c`'s routing key; the error names the contact point and file.
    pub fn load(c: &ContactPoint) -> anyhow::Result<Contact> {
        let key = std::fs::read_to_string(&c.routing_key_file).map_err(|e| {
            anyhow::anyhow!(
                "alerts.contact_points {:?}: routing_key_file {}: {e}",
                c.name,
                c.routing_key_file.display()
            )
        })?;
        let key = key.trim();
        if key.is_empty() || key.len() > 64 || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            anyhow::bail!(
                "alerts.contact_points {:?}: routing_key_file {} does not hold a routing key (32 letters and digits)",
                c.name,
                c.routing_key_file.display()
            );
        }
        Ok(Contact {
            name: c.name.clone(),
            url: c.url.clone(),
            routing_key: key.to_owned(),
        })
    }
}

/// The Events API v2 event for an outbox row: a trigger with its summary,
/// source, severity, time and details; a resolve with its dedup key alone.
pub fn pagerduty_event(routing_key: &str, event: &str, body: &Value) -> Value {
    let dedup_key = body["dedup_key"].clone();
    if event == "resolve" {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let summary: String = body["summary"]
        .as_str()
        .unwrap_or("Dash alert")
        .chars()
        .take(1024)
        .collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary,
            "source": format!("dash/{}", body["tenant"].as_str().unwrap_or_default()),
            "severity": body["severity"].as_str().unwrap_or("error"),
            "timestamp": body["at"],
            "component": body["rule"],
            "class": "dash-alert",
            "custom_details": {
                "value": body["value"],
                "threshold": body["threshold"],
                "labels": body["labels"],
            },
        },
        "client": "Dash",
    })
}

/// The wait a 429 asks for: `Retry-After` in seconds (or an HTTP date),
/// else the backoff.
fn retry_after(headers: &reqwest::header::HeaderMap, backoff: f64) -> f64 {
    let Some(v) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    else {
        return backoff;
    };
    if let Ok(secs) = v.trim().parse::<f64>() {
        return secs.clamp(0.0, 3600.0);
    }
    chrono::DateTime::parse_from_rfc2822(v.trim())
        .map(|at| {
            ((at.timestamp_millis() - chrono::Utc::now().timestamp_millis()) as f64 / 1e3)
                .clamp(0.0, 3600.0)
        })
        .unwrap_or(backoff)
}

/// Seconds before try `attempts + 1`: 1, 2, 4, ... up to 5 minutes.
fn backoff(attempts: i32) -> f64 {
    2f64.powi(attempts.clamp(0, 9)).min(300.0)
}

/// Sends one row to its contact point.
pub async fn send(client: &reqwest::Client, contact: &Contact, due: &Due) -> Settled {
    let event = pagerduty_event(&contact.routing_key, &due.event, &due.body);
    let wait = backoff(due.attempts);
    let answer = client
        .post(&contact.url)
        .json(&event)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return Settled::Retry {
                after_secs: wait,
                error: format!("{}: {e}", contact.name),
            };
        }
    };
    let status = answer.status();
    if status.is_success() {
        return Settled::Sent;
    }
    let after = retry_after(answer.headers(), wait);
    let text: String = answer
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let error = format!("{}: HTTP {}: {text}", contact.name, status.as_u16());
    if status.as_u16() == 429 {
        Settled::Retry {
            after_secs: after,
            error,
        }
    } else if status.is_client_error() {
        Settled::Dead { reason: error }
    } else {
        Settled::Retry {
            after_secs: wait,
            error,
        }
    }
}

/// An HTTP client whose TLS uses the system's roots (and the ring provider
/// the rest of Dash uses).
pub fn client() -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("dash-aggregator/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Sends what is due, every second until `stop`.
pub async fn run(pool: PgPool, contacts: Vec<Contact>, stop: CancellationToken) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the alert notifier could not start; notifications wait in the outbox");
            return;
        }
    };
    let names: Vec<String> = contacts.iter().map(|c| c.name.clone()).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = send_due(&pool, &client, &contacts, &names).await {
            tracing::warn!(error = %e, "sending alert notifications failed; retried");
        }
    }
}

async fn send_due(
    pool: &PgPool,
    client: &reqwest::Client,
    contacts: &[Contact],
    names: &[String],
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let due = rows::claim_due(&mut tx, names, 20).await?;
    for d in &due {
        let Some(contact) = contacts.iter().find(|c| c.name == d.contact) else {
            continue;
        };
        let how = send(client, contact, d).await;
        match &how {
            Settled::Sent => {
                tracing::info!(contact = %d.contact, event = %d.event, dedup_key = %d.body["dedup_key"], "alert notification sent")
            }
            Settled::Retry { after_secs, error } => {
                tracing::warn!(contact = %d.contact, %error, after_secs, "alert notification not delivered; retried")
            }
            Settled::Dead { reason } => {
                tracing::error!(contact = %d.contact, %reason, "alert notification refused; kept as a dead letter, not retried")
            }
        }
        rows::settle(&mut tx, d.id, &how).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_carries_what_pagerduty_documents_and_a_resolve_only_its_key() {
        let body = json!({
            "dedup_key": "dash/acme/region-offline/0123",
            "tenant": "acme", "rule": "region-offline", "severity": "critical",
            "summary": "x".repeat(2000), "value": 0.2, "threshold": 0.1,
            "labels": {"region": "r1"}, "at": "2026-12-02T10:00:00Z",
        });
        let t = pagerduty_event("k", "trigger", &body);
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["payload"]["summary"].as_str().unwrap().len(), 1024);
        assert_eq!(t["payload"]["source"], "dash/acme");
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["payload"]["custom_details"]["labels"]["region"], "r1");
        let r = pagerduty_event("k", "resolve", &body);
        assert_eq!(
            r,
            json!({"routing_key": "k", "event_action": "resolve", "dedup_key": "dash/acme/region-offline/0123"})
        );
        assert_eq!(backoff(0), 1.0);
        assert_eq!(backoff(20), 300.0);
    }
}
