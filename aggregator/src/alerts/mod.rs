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
//! Built so far: rules of every kind ([`rules`], read by [`eval`]),
//! instance states with `for`, `keep_firing_for`, hysteresis and a no-data
//! policy, their history, the outbox and the lease, and the outbox sent to
//! PagerDuty ([`notify`]).

pub mod eval;
pub mod notify;
pub mod period;
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

use crate::storage::alerts::{self as rows, Outgoing, StoredInstance, Transition};
pub use eval::Context;
use eval::Fleet;
use rules::{Kind, NoData, Plan, Rule};
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
        if self.interval_secs > rules::MAX_SECS || self.lease_secs > 86_400 {
            out.push(
                "alerts.interval_secs at most 10 years, alerts.lease_secs at most a day".into(),
            );
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
    /// Whether what changed was stored (false: the lease had passed to
    /// another, and nothing was).
    pub stored: bool,
}

/// Evaluates rules under the lease.
#[derive(Debug)]
pub struct Engine {
    pool: PgPool,
    rules: Vec<(Rule, Plan)>,
    config: AlertsConfig,
    context: Context,
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
    /// An engine for `rules` (each checked again: a rule made by hand is
    /// refused as a file's would be).
    pub fn new(pool: PgPool, rules: Vec<Rule>, config: AlertsConfig) -> anyhow::Result<Engine> {
        let holder = format!(
            "{}-{}",
            std::process::id(),
            dash_runtime::secret::hex(&rand::random::<[u8; 6]>())
        );
        let rules = rules
            .into_iter()
            .map(|r| match r.plan() {
                Ok(p) => Ok((r, p)),
                Err(e) => Err(anyhow::anyhow!("alert rules:\n  {}", e.join("\n  "))),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Engine {
            pool,
            rules,
            config,
            context: Context::default(),
            holder,
        })
    }

    /// What rules read besides the rules: retention (which tier answers)
    /// and the gateway silence.
    pub fn with_context(mut self, context: Context) -> Engine {
        self.context = context;
        self
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.rules.iter().map(|(r, _)| r.clone()).collect()
    }

    /// Takes or renews the lease: its fence while this engine holds it.
    pub async fn lease(&self) -> sqlx::Result<Option<i64>> {
        rows::take_lease(&self.pool, &self.holder, self.config.lease_secs as f64).await
    }

    /// Evaluates `rule` now and stores what changed under `fence`.
    pub async fn evaluate(&self, rule: &Rule, fence: i64) -> anyhow::Result<Evaluated> {
        self.evaluate_at(rule, fence, dash_shared::now_micros())
            .await
    }

    /// Evaluates `rule` as at `now` (tests step through days this way).
    pub async fn evaluate_at(
        &self,
        rule: &Rule,
        fence: i64,
        now: Micros,
    ) -> anyhow::Result<Evaluated> {
        let plan = rule
            .plan()
            .map_err(|e| anyhow::anyhow!("alert rules:\n  {}", e.join("\n  ")))?;
        let fleet = Fleet::load(&self.pool, &rule.tenant).await?;
        Ok(self.evaluate_in(&fleet, rule, &plan, fence, now).await?)
    }

    async fn evaluate_in(
        &self,
        fleet: &Fleet,
        rule: &Rule,
        plan: &Plan,
        fence: i64,
        now: Micros,
    ) -> sqlx::Result<Evaluated> {
        let observed = eval::observe(&self.pool, &self.context, fleet, rule, plan, now).await?;
        let mut stored: HashMap<String, StoredInstance> =
            rows::instances(&self.pool, &rule.tenant, &rule.name)
                .await?
                .into_iter()
                .map(|i| (i.fingerprint.clone(), i))
                .collect();
        let mut judge = Judge {
            rule,
            plan,
            now,
            done: Evaluated::default(),
            next: Vec::new(),
            history: Vec::new(),
            outgoing: Vec::new(),
        };
        for o in observed {
            let mut key = o.key;
            for (k, v) in &rule.labels {
                key.entry(k.clone()).or_insert_with(|| v.clone().into());
            }
            let fp = fingerprint(&rule.name, &key);
            let prev = stored.remove(&fp);
            let mut labels = key;
            for (k, v) in o.context {
                labels.entry(k).or_insert(v);
            }
            judge.one(fp, labels, o.value, o.held, o.summary, prev);
        }
        // Instances not seen now: an aggregate's group without data reads
        // as nothing (0 for count and sum), a patient without doses in the
        // lookback as every dose missed; a device, place or gateway gone
        // resolves what it fired.
        for (fp, prev) in stored.drain() {
            let labels = prev.labels.as_object().cloned().unwrap_or_default();
            let (value, why) = match rule.kind {
                Kind::Absence | Kind::FleetRatio | Kind::Gateway => {
                    let cleared = if plan.sign < 0.0 {
                        f64::INFINITY
                    } else {
                        f64::NEG_INFINITY
                    };
                    (Some(cleared), "gone")
                }
                _ => (eval::unseen_value(fleet, rule, plan, now), "nothing read"),
            };
            let summary = format!("{}: {why} for {}", rule.name, eval::describe(&labels));
            judge.one(fp, labels, value, false, summary, Some(prev));
        }
        let Judge {
            mut done,
            next,
            history,
            outgoing,
            ..
        } = judge;
        done.stored =
            rows::apply(&self.pool, &self.holder, fence, &next, &history, &outgoing).await?;
        Ok(done)
    }

    /// Evaluates each rule on its interval while this engine holds the
    /// lease, until `stop`; then gives the lease up. A tenant's places and
    /// devices are read once per round for all its rules due.
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
            let mut fleets: HashMap<&str, Fleet> = HashMap::new();
            for (i, (rule, plan)) in self.rules.iter().enumerate() {
                if Instant::now() < due[i] {
                    continue;
                }
                due[i] = Instant::now() + rule.interval(self.config.interval_secs);
                if !fleets.contains_key(rule.tenant.as_str()) {
                    match Fleet::load(&self.pool, &rule.tenant).await {
                        Ok(f) => {
                            fleets.insert(&rule.tenant, f);
                        }
                        Err(e) => {
                            tracing::warn!(tenant = %rule.tenant, error = %e, "reading the fleet for alert rules failed; retried at their next interval");
                            continue;
                        }
                    }
                }
                let fleet = &fleets[rule.tenant.as_str()];
                let now = dash_shared::now_micros();
                match self.evaluate_in(fleet, rule, plan, fence, now).await {
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

/// One evaluation's judgement of each instance: the next states, their
/// history and the notices owed.
struct Judge<'a> {
    rule: &'a Rule,
    plan: &'a Plan,
    now: Micros,
    done: Evaluated,
    next: Vec<StoredInstance>,
    history: Vec<Transition>,
    outgoing: Vec<(String, String, Outgoing)>,
}

impl Judge<'_> {
    fn one(
        &mut self,
        fp: String,
        labels: serde_json::Map<String, serde_json::Value>,
        value: Option<f64>,
        held: bool,
        summary: String,
        prev: Option<StoredInstance>,
    ) {
        let (rule, plan, now) = (self.rule, self.plan, self.now);
        self.done.instances += 1;
        // What the state machine sees: the value on the firing side of
        // `above`, or what the no-data policy makes of none.
        let seen = match (held, value) {
            (true, _) => None,
            (false, Some(v)) => Some(plan.sign * v),
            (false, None) => match rule.no_data {
                NoData::Keep => None,
                NoData::Ok => Some(f64::NEG_INFINITY),
                NoData::Alerting => Some(f64::INFINITY),
            },
        };
        let Some(seen) = seen else {
            return;
        };
        let before = prev.as_ref().and_then(|p| {
            Some(Instance {
                phase: Phase::parse(&p.state)?,
                since: micros(p.since),
            })
        });
        let (after, notice) = state::step(before, seen, &plan.thresholds, now);
        let mut notified = prev
            .as_ref()
            .map_or("none".to_owned(), |p| p.notified.clone());
        // A resolve is owed only for a trigger sent.
        let notice = notice.filter(|n| *n == Notice::Trigger || notified == "trigger");
        if let Some(n) = notice {
            notified = n.as_str().to_owned();
            match n {
                Notice::Trigger => self.done.triggers += 1,
                Notice::Resolve => self.done.resolves += 1,
            }
            let body = json!({
                "dedup_key": format!("dash/{}/{}/{fp}", rule.tenant, rule.name),
                "event": n.as_str(),
                "tenant": rule.tenant,
                "rule": rule.name,
                "kind": rule.kind,
                "severity": rule.severity.as_str(),
                "summary": summary,
                "value": value.filter(|v| v.is_finite()),
                "threshold": plan.threshold,
                "side": if plan.sign < 0.0 { "below" } else { "above" },
                "labels": labels,
                "at": time(now),
            });
            for contact in &rule.notify {
                self.outgoing.push((
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
        let was = before.map_or(Phase::Normal, |b| b.phase);
        if after.phase != was {
            self.history.push(Transition {
                fingerprint: fp.clone(),
                from: was.as_str(),
                to: after.phase.as_str(),
                value: value.filter(|v| v.is_finite()),
                summary: summary.clone(),
            });
        }
        // Stored: what changed, and what is not normal (its value is
        // shown); an instance normal all along is not written each time.
        let changed = match &prev {
            None => after.phase != Phase::Normal,
            Some(p) => {
                p.state != after.phase.as_str()
                    || micros(p.since) != after.since
                    || p.notified != notified
            }
        };
        // Rules whose groups come from what is read keep their normal
        // instances too: a group that reads nothing later is then still
        // judged (a channel down to no orders).
        let keeps_normal = !matches!(rule.kind, Kind::Absence | Kind::FleetRatio | Kind::Gateway)
            && plan.inputs.iter().any(|(_, i)| i.event.is_some());
        if after.phase == Phase::Normal && !(changed || keeps_normal && prev.is_none()) {
            return;
        }
        self.next.push(StoredInstance {
            tenant: rule.tenant.clone(),
            rule: rule.name.clone(),
            fingerprint: fp,
            labels: serde_json::Value::Object(labels),
            state: after.phase.as_str().to_owned(),
            since: time(after.since),
            value: value.filter(|v| v.is_finite()),
            evaluated_at: time(now),
            notified,
        });
    }
}
