//! Alerts: rules evaluated on a timer against what is stored, never per
//! message, so silence alerts too. Each rule's instances (one per group it
//! watches) move through [`state`]; a change that owes a notice writes it
//! to the outbox in the same transaction as the new state, so a restart
//! neither sends a trigger twice nor forgets a resolve.
//!
//! With several aggregators on one database, one holds the evaluator's
//! lease at a time (`alert_lease`); a write under a lease another has
//! taken since is refused (the fence), so a transition is stored, and
//! notified, once.
//!
//! Built so far: fleet-ratio rules ([`rules`]), instance states with
//! `for`, `keep_firing_for` and hysteresis, the outbox and the lease, and
//! the outbox sent to PagerDuty ([`notify`]).

pub mod notify;
pub mod rules;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dash_shared::Micros;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::storage::alerts::{self as rows, Outgoing, StoredInstance};
use rules::Rule;
use state::{Instance, Notice, Phase};

/// `[alerts]` in the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A directory of rule files (`*.toml`); empty: no rules.
    pub rules_dir: PathBuf,
    /// How often a rule without its own `interval_secs` is evaluated.
    pub interval_secs: u64,
    /// How long the evaluator's lease lasts unrenewed: another aggregator
    /// takes over this long after one stops.
    pub lease_secs: u64,
    /// Where notifications go, by the names rules give in `notify`.
    pub contact_points: Vec<notify::ContactPoint>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules_dir: PathBuf::new(),
            interval_secs: 30,
            lease_secs: 15,
            contact_points: Vec::new(),
        }
    }
}

impl AlertsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.interval_secs == 0 {
            out.push("alerts.interval_secs must be at least 1".into());
        }
        if self.lease_secs < 2 {
            out.push("alerts.lease_secs must be at least 2".into());
        }
        for (i, c) in self.contact_points.iter().enumerate() {
            if self.contact_points[..i].iter().any(|o| o.name == c.name) {
                out.push(format!(
                    "alerts.contact_points: {:?} is named twice",
                    c.name
                ));
            }
            if !c.url.starts_with("https://") && !c.url.starts_with("http://") {
                out.push(format!(
                    "alerts.contact_points {:?}: url must be http(s)://",
                    c.name
                ));
            }
        }
        out
    }

    /// The rules of `rules_dir` (none when it is empty).
    pub fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        if self.rules_dir.as_os_str().is_empty() {
            return Ok(Vec::new());
        }
        rules::load_dir(&self.rules_dir)
    }
}

/// What one evaluation of a rule did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluated {
    pub instances: usize,
    pub triggers: usize,
    pub resolves: usize,
    /// Whether it was stored (false: the lease had passed to another).
    pub stored: bool,
}

/// Evaluates rules under the lease.
#[derive(Debug)]
pub struct Engine {
    pool: PgPool,
    rules: Vec<Rule>,
    config: AlertsConfig,
    /// This process's name in the lease.
    holder: String,
}

/// A stable name for an instance: the rule and its labels.
pub fn fingerprint(rule: &str, labels: &serde_json::Map<String, serde_json::Value>) -> String {
    let text = json!([rule, labels]).to_string();
    dash_runtime::secret::sha256_hex(&text)[..16].to_owned()
}

fn micros(t: chrono::DateTime<chrono::Utc>) -> Micros {
    t.timestamp_micros()
}

fn time(us: Micros) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

impl Engine {
    pub fn new(pool: PgPool, rules: Vec<Rule>, config: AlertsConfig) -> Engine {
        let holder = format!(
            "{}-{}",
            std::process::id(),
            dash_runtime::secret::hex(&rand::random::<[u8; 6]>())
        );
        Engine {
            pool,
            rules,
            config,
            holder,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Takes or renews the lease: its fence while this engine holds it.
    pub async fn lease(&self) -> sqlx::Result<Option<i64>> {
        rows::take_lease(&self.pool, &self.holder, self.config.lease_secs as f64).await
    }

    /// Evaluates `rule` now and stores what changed under `fence`.
    pub async fn evaluate(&self, rule: &Rule, fence: i64) -> sqlx::Result<Evaluated> {
        let now = dash_shared::now_micros();
        let groups =
            rows::fleet_ratio(&self.pool, &rule.tenant, &rule.group_by, &rule.state).await?;
        let mut stored: HashMap<String, StoredInstance> =
            rows::instances(&self.pool, &rule.tenant, &rule.name)
                .await?
                .into_iter()
                .map(|i| (i.fingerprint.clone(), i))
                .collect();
        let t = rule.thresholds();
        let mut next = Vec::new();
        let mut outgoing = Vec::new();
        let mut done = Evaluated::default();
        let mut judge = |labels: serde_json::Map<String, serde_json::Value>,
                         value: f64,
                         summary: String,
                         prev: Option<StoredInstance>| {
            let fp = fingerprint(&rule.name, &labels);
            let before = prev.as_ref().and_then(|p| {
                Some(Instance {
                    phase: Phase::parse(&p.state)?,
                    since: micros(p.since),
                })
            });
            let (after, notice) = state::step(before, value, &t, now);
            let mut notified = prev.map_or("none".to_owned(), |p| p.notified);
            // A resolve is owed only for a trigger sent.
            let notice = notice.filter(|n| *n == Notice::Trigger || notified == "trigger");
            if let Some(n) = notice {
                notified = n.as_str().to_owned();
                match n {
                    Notice::Trigger => done.triggers += 1,
                    Notice::Resolve => done.resolves += 1,
                }
                let body = json!({
                    "dedup_key": format!("dash/{}/{}/{fp}", rule.tenant, rule.name),
                    "event": n.as_str(),
                    "tenant": rule.tenant,
                    "rule": rule.name,
                    "severity": rule.severity.as_str(),
                    "summary": summary,
                    "value": value,
                    "threshold": rule.above,
                    "labels": labels,
                    "at": time(now),
                });
                for contact in &rule.notify {
                    outgoing.push((
                        rule.tenant.clone(),
                        rule.name.clone(),
                        Outgoing {
                            fingerprint: fp.clone(),
                            event: n.as_str(),
                            contact: contact.clone(),
                            body: body.clone(),
                        },
                    ));
                }
            }
            next.push(StoredInstance {
                tenant: rule.tenant.clone(),
                rule: rule.name.clone(),
                fingerprint: fp,
                labels: serde_json::Value::Object(labels),
                state: after.phase.as_str().to_owned(),
                since: time(after.since),
                value: Some(value),
                evaluated_at: time(now),
                notified,
            });
        };
        for g in &groups {
            let mut labels: serde_json::Map<String, serde_json::Value> = rule
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            labels.insert(rule.group_by.clone(), g.place.clone().into());
            let value = if g.total > 0 {
                g.matching as f64 / g.total as f64
            } else {
                0.0
            };
            let summary = format!(
                "{}: {} of {} devices {} in {} ({:.1} %)",
                rule.name,
                g.matching,
                g.total,
                rule.state,
                g.name,
                value * 100.0
            );
            let prev = stored.remove(&fingerprint(&rule.name, &labels));
            judge(labels, value, summary, prev);
        }
        // Groups gone since (a place removed): nothing left to be over the
        // threshold, so what fired resolves.
        for (_, prev) in stored.drain() {
            let labels = prev.labels.as_object().cloned().unwrap_or_default();
            let summary = format!("{}: its group is gone", rule.name);
            judge(labels, 0.0, summary, Some(prev));
        }
        done.instances = next.len();
        done.stored = rows::apply(&self.pool, &self.holder, fence, &next, &outgoing).await?;
        Ok(done)
    }

    /// Evaluates each rule on its interval while this engine holds the
    /// lease, until `stop`; then gives the lease up.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut due: Vec<Instant> = vec![Instant::now(); self.rules.len()];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let fence = match self.lease().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "taking the alert evaluator's lease failed; retried");
                    continue;
                }
            };
            if fence.is_some() != held {
                held = fence.is_some();
                tracing::info!(holder = %self.holder, held, "alert evaluator lease");
            }
            let Some(fence) = fence else { continue };
            for (i, rule) in self.rules.iter().enumerate() {
                if Instant::now() < due[i] {
                    continue;
                }
                due[i] = Instant::now() + rule.interval(self.config.interval_secs);
                match self.evaluate(rule, fence).await {
                    Ok(e) if e.triggers + e.resolves > 0 => {
                        tracing::info!(tenant = %rule.tenant, rule = %rule.name, triggers = e.triggers, resolves = e.resolves, stored = e.stored, "alert rule changed")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(tenant = %rule.tenant, rule = %rule.name, error = %e, "evaluating an alert rule failed; retried at its next interval")
                    }
                }
            }
        }
        if held {
            let _ = rows::drop_lease(&self.pool, &self.holder).await;
        }
    }
}
