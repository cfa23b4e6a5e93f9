//! Alert rules, provisioned from TOML files (`alerts.rules_dir`, every
//! `*.toml` in it). Each is evaluated on its own interval against what is
//! stored, so silence alerts too. Every kind shares:
//!
//! ```toml
//! [[rule]]
//! name = "battery-low"           # unique in its tenant
//! tenant = "acme"
//! kind = "threshold"             # threshold, events, change, absence, missed, fleet_ratio, gateway
//! below = 20                     # or above = ...; fires past it
//! clear_above = 25               # clears here (default: the threshold); clear_below for above
//! for_secs = 0                   # past the threshold this long before it fires
//! keep_firing_for_secs = 0       # cleared this long before it resolves
//! no_data = "keep"               # an instance without a value: keep its state, ok, alerting
//! interval_secs = 30
//! severity = "warning"           # critical, error, warning, info
//! notify = ["email-ops"]         # contact points
//! labels = { team = "ops" }
//! ```
//!
//! and, per kind:
//!
//! - `threshold` and `events`: an aggregate (`agg`: avg, min, max, sum,
//!   count, last) of a series (`metric`, `tags`) or of events (`event`, a
//!   numeric body `field`, body fields to `match`), over the last
//!   `window_secs` or the current `period` of the tenant's zone (hour, day,
//!   week, month). Several named `inputs` combine in a `value` expression
//!   ([`crate::expr`]): `value = "food_cost / sales * 100"`.
//! - `change`: the same value, as a percent change from the period before
//!   (`to_date = true`: this period so far against as long of the last).
//! - `absence`: a device silent for more than `after_secs`.
//! - `missed`: scheduled events that did not come: `event`, `schedule`
//!   (local times of day), `grace_secs` either side; the value is the doses
//!   missed in a row since the last one taken.
//! - `fleet_ratio`: the share of a place kind's devices in a liveness
//!   `state`, per place of that kind.
//! - `gateway`: a gateway (agent) offline.
//!
//! Instances are one per `group_by` label set: `device`, `place`,
//! `customer`, a place kind (`region`: the place of that kind above the
//! device), `tag.<key>` (series) or `field.<key>` (events). `device`,
//! `place` and `customer` also select (`place` with its subtree).
//!
//! A device behind an offline gateway is `unknown`, not silent: absence
//! and fleet rules hold it, and the gateway rule pages once for all of it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::NaiveTime;
use dash_shared::{Micros, TenantId};
use serde::{Deserialize, Deserializer, Serialize};

use super::period::{self, Period, Span};
use super::state::Thresholds;
use crate::expr::Expr;
use crate::query::Agg;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Threshold,
    Events,
    Change,
    Absence,
    Missed,
    FleetRatio,
    Gateway,
}

/// What an instance without a value does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// Stays as it is.
    #[default]
    Keep,
    /// Counts as cleared.
    Ok,
    /// Counts as past the threshold.
    Alerting,
}

/// How loud an alert is (PagerDuty's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    #[default]
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One named aggregate: of a series or of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub metric: Option<String>,
    pub event: Option<String>,
    pub agg: Option<Agg>,
    /// Events: the numeric body field aggregated (count needs none).
    pub field: Option<String>,
    /// Events: body fields that must match.
    #[serde(default, rename = "match")]
    pub matches: serde_json::Map<String, serde_json::Value>,
    /// Series: tags the series must have.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// What an instance is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    Device,
    Place,
    Customer,
    /// The place of this kind holding the device's place.
    PlaceKind(String),
    Tag(String),
    Field(String),
}

impl Label {
    fn parse(s: &str) -> Label {
        match s {
            "device" => Label::Device,
            "place" => Label::Place,
            "customer" => Label::Customer,
            _ => match (s.strip_prefix("tag."), s.strip_prefix("field.")) {
                (Some(t), _) => Label::Tag(t.to_owned()),
                (_, Some(f)) => Label::Field(f.to_owned()),
                _ => Label::PlaceKind(s.to_owned()),
            },
        }
    }

    /// Whether every device has one (so instances exist without data).
    pub fn of_fleet(&self) -> bool {
        matches!(
            self,
            Label::Device | Label::Place | Label::Customer | Label::PlaceKind(_)
        )
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub tenant: String,
    pub kind: Kind,
    // One input, in short.
    pub metric: Option<String>,
    pub event: Option<String>,
    pub agg: Option<Agg>,
    pub field: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Several, by name, for `value`.
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    pub value: Option<String>,
    // Which devices.
    pub device: Option<String>,
    pub place: Option<String>,
    pub customer: Option<String>,
    // When.
    pub window_secs: Option<u64>,
    pub period: Option<Period>,
    #[serde(default)]
    pub to_date: bool,
    pub after_secs: Option<u64>,
    #[serde(default)]
    pub schedule: Vec<String>,
    pub grace_secs: Option<u64>,
    pub lookback_secs: Option<u64>,
    /// fleet_ratio: the liveness state counted.
    pub state: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub group_by: Vec<String>,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub clear_below: Option<f64>,
    pub clear_above: Option<f64>,
    #[serde(default)]
    pub for_secs: u64,
    #[serde(default)]
    pub keep_firing_for_secs: u64,
    #[serde(default)]
    pub no_data: NoData,
    pub interval_secs: Option<u64>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A rule as the evaluator runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Named inputs, each with its aggregate.
    pub inputs: Vec<(String, Input)>,
    /// The value from the inputs (`None`: the one input's).
    pub expr: Option<Expr>,
    pub span: Option<Span>,
    pub group_by: Vec<Label>,
    pub thresholds: Thresholds,
    /// -1 for `below` rules: the state machine sees -value past -below.
    pub sign: f64,
    /// The threshold as written.
    pub threshold: f64,
    pub schedule: Vec<NaiveTime>,
}

impl Plan {
    /// The body fields it groups by (`field.<key>`), in order.
    pub fn fields(&self) -> Vec<String> {
        self.group_by
            .iter()
            .filter_map(|l| match l {
                Label::Field(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}

const STATES: [&str; 5] = ["never_reported", "online", "offline", "delayed", "unknown"];
const SEC: Micros = 1_000_000;
/// The longest duration a rule may name: 10 years.
pub const MAX_SECS: u64 = 10 * 365 * 86_400;

fn id_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Rule {
    /// What is wrong with it, each problem naming its field.
    pub fn problems(&self) -> Vec<String> {
        self.plan().err().unwrap_or_default()
    }

    /// The rule checked and made ready to evaluate; or what is wrong with it.
    pub fn plan(&self) -> Result<Plan, Vec<String>> {
        let mut out = Vec::new();
        let at = format!("rule {:?}", self.name);
        let mut no = |field: &str, why: &str| out.push(format!("{at}: {field}: {why}"));
        if !id_ok(&self.name) {
            no("name", "1 to 64 letters, digits, '.', '_' or '-'");
        }
        if let Err(e) = TenantId::new(self.tenant.clone()) {
            no("tenant", &e.to_string());
        }
        if self.interval_secs == Some(0) {
            no("interval_secs", "at least 1");
        }
        for (field, v) in [
            ("window_secs", self.window_secs),
            ("after_secs", self.after_secs),
        ] {
            if v == Some(0) {
                no(field, "at least 1");
            }
        }
        for (field, v) in [
            ("window_secs", self.window_secs),
            ("after_secs", self.after_secs),
            ("grace_secs", self.grace_secs),
            ("lookback_secs", self.lookback_secs),
            ("interval_secs", self.interval_secs),
            ("for_secs", Some(self.for_secs)),
            ("keep_firing_for_secs", Some(self.keep_firing_for_secs)),
        ] {
            if v.is_some_and(|v| v > MAX_SECS) {
                no(field, &format!("at most {MAX_SECS} s (10 years)"));
            }
        }
        let kind = self.kind;
        let aggregate = matches!(kind, Kind::Threshold | Kind::Events | Kind::Change);
        let short = self.metric.is_some() || self.event.is_some();
        let mut inputs: Vec<(String, Input)> = Vec::new();
        if short && !self.inputs.is_empty() {
            no(
                "inputs",
                "either one metric or event, or named inputs, not both",
            );
        }
        if short {
            inputs.push((
                "value".into(),
                Input {
                    metric: self.metric.clone(),
                    event: self.event.clone(),
                    agg: self.agg,
                    field: self.field.clone(),
                    matches: self.matches.clone(),
                    tags: self.tags.clone(),
                },
            ));
        } else if self.agg.is_some() || self.field.is_some() || !self.tags.is_empty() {
            no("agg", "belongs with metric or event");
        }
        inputs.extend(self.inputs.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (name, i) in &mut inputs {
            let at = format!("input {name:?}");
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                no(&at, "a name of letters, digits and '_'");
            }
            match (&i.metric, &i.event) {
                (Some(_), Some(_)) | (None, None) => no(&at, "one of metric or event"),
                (Some(_), None) => {
                    if i.agg.is_none() {
                        no(&at, "agg: avg, min, max, sum, count or last");
                    }
                    if i.field.is_some() || !i.matches.is_empty() {
                        no(&at, "field and match are for events");
                    }
                }
                (None, Some(_)) => {
                    let agg = *i.agg.get_or_insert(Agg::Count);
                    if agg != Agg::Count && i.field.is_none() {
                        no(&at, "field: the numeric body field to aggregate");
                    }
                    if !i.tags.is_empty() {
                        no(&at, "tags are for series (events: match)");
                    }
                }
            }
        }
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        let expr = match (&self.value, inputs.len()) {
            (Some(text), _) => match Expr::parse(text, &names) {
                Ok(e) => Some(e),
                Err(e) => {
                    no("value", &e.to_string());
                    None
                }
            },
            (None, n) if n > 1 => {
                no("value", "an expression of the inputs, e.g. \"a / b * 100\"");
                None
            }
            _ => None,
        };
        if aggregate && inputs.is_empty() {
            no("metric", "a metric, an event or named inputs to aggregate");
        }
        if !aggregate && !inputs.is_empty() && kind != Kind::Missed {
            no(
                "inputs",
                "only threshold, events and change rules aggregate",
            );
        }
        let span = match (self.window_secs, self.period) {
            (Some(w), None) => Some(Span::Window((w as Micros).saturating_mul(SEC))),
            (None, Some(p)) => Some(Span::Period(p)),
            (Some(_), Some(_)) => {
                no("period", "either window_secs or period, not both");
                None
            }
            (None, None) => None,
        };
        if aggregate && span.is_none() {
            no(
                "window_secs",
                "how far back to look (or period: hour, day, week, month)",
            );
        }
        let group_by: Vec<Label> = self.group_by.iter().map(|s| Label::parse(s)).collect();
        for (g, l) in self.group_by.iter().zip(&group_by) {
            let bad = match (kind, l) {
                (Kind::FleetRatio, Label::PlaceKind(_)) => false,
                (Kind::FleetRatio, _) => true,
                (Kind::Absence, Label::Device) => false,
                (Kind::Absence | Kind::Gateway, _) => true,
                (_, Label::Tag(_)) => inputs.iter().any(|(_, i)| i.metric.is_none()),
                (_, Label::Field(_)) => inputs.iter().any(|(_, i)| i.event.is_none()),
                _ => false,
            };
            if bad || g.is_empty() {
                no(
                    "group_by",
                    &format!("{g:?} does not apply to a {kind:?} rule's instances"),
                );
            }
        }
        if kind == Kind::FleetRatio && group_by.len() != 1 {
            no("group_by", "the place kind to group by, e.g. \"region\"");
        }
        match kind {
            Kind::FleetRatio => {
                let state = self.state.as_deref().unwrap_or("");
                if !STATES.contains(&state) {
                    no("state", &format!("{state:?}: one of {}", STATES.join(", ")));
                }
            }
            _ if self.state.is_some() => no("state", "is for fleet_ratio rules"),
            _ => {}
        }
        let schedule: Vec<NaiveTime> = self
            .schedule
            .iter()
            .filter_map(|s| {
                let t = period::parse_time(s);
                if t.is_none() {
                    out.push(format!("{at}: schedule: {s:?} is not a local time HH:MM"));
                }
                t
            })
            .collect();
        let mut no = |field: &str, why: &str| out.push(format!("{at}: {field}: {why}"));
        if kind == Kind::Missed {
            if self.event.is_none() || !self.inputs.is_empty() {
                no("event", "the event kind expected (one, not inputs)");
            }
            if self.schedule.is_empty() {
                no(
                    "schedule",
                    "local times it is expected, e.g. [\"08:00\", \"20:00\"]",
                );
            }
            for (i, t) in schedule.iter().enumerate() {
                if schedule[..i].contains(t) {
                    no("schedule", &format!("{} is given twice", t.format("%H:%M")));
                }
            }
        } else if !self.schedule.is_empty() {
            no("schedule", "is for missed rules");
        }
        if kind == Kind::Absence && self.after_secs.is_none() {
            no("after_secs", "the silence that alerts, in seconds");
        }
        // The threshold: fixed for absence and gateway rules.
        let (threshold, sign, clear) = match (kind, self.above, self.below) {
            (Kind::Absence, None, None) => (self.after_secs.unwrap_or(0) as f64, 1.0, None),
            (Kind::Gateway, None, None) => (0.5, 1.0, None),
            (Kind::Absence | Kind::Gateway, _, _) => {
                no("above", "absence and gateway rules set their own threshold");
                (0.0, 1.0, None)
            }
            (_, Some(a), None) => {
                if self.clear_above.is_some() {
                    no("clear_above", "goes with below; an above rule clears below");
                }
                (a, 1.0, self.clear_below)
            }
            (_, None, Some(b)) => {
                if self.clear_below.is_some() {
                    no("clear_below", "goes with above; a below rule clears above");
                }
                (b, -1.0, self.clear_above)
            }
            _ => {
                no("above", "one of above or below, the threshold");
                (0.0, 1.0, None)
            }
        };
        if !threshold.is_finite() {
            no("above", "a finite number");
        }
        if kind == Kind::FleetRatio && !(0.0..1.0).contains(&threshold) {
            no("above", "a share from 0 to below 1, e.g. 0.1 for 10 %");
        }
        let clear = clear.unwrap_or(threshold);
        if !clear.is_finite() || sign * clear > sign * threshold {
            let field = if sign > 0.0 {
                "clear_below"
            } else {
                "clear_above"
            };
            no(
                field,
                &format!("on the cleared side of the threshold ({threshold})"),
            );
        }
        if kind == Kind::FleetRatio && clear < 0.0 {
            no("clear_below", "from 0 up to above");
        }
        if !out.is_empty() {
            return Err(out);
        }
        Ok(Plan {
            inputs,
            expr,
            span,
            group_by,
            thresholds: Thresholds {
                above: sign * threshold,
                clear_at: sign * clear,
                for_us: (self.for_secs as Micros).saturating_mul(SEC),
                keep_firing_for_us: (self.keep_firing_for_secs as Micros).saturating_mul(SEC),
            },
            sign,
            threshold,
            schedule,
        })
    }

    /// missed: how far either side of its time an event counts (µs).
    pub fn grace_us(&self) -> Micros {
        (self.grace_secs.unwrap_or(1_800).min(MAX_SECS) as Micros) * SEC
    }

    /// missed: how far back a group without events counts (µs).
    pub fn lookback_us(&self) -> Micros {
        (self.lookback_secs.unwrap_or(7 * 86_400).min(MAX_SECS) as Micros) * SEC
    }

    pub fn interval(&self, default_secs: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_secs.unwrap_or(default_secs))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// Every rule of the `*.toml` files in `dir`, checked; the error names the
/// file and the rule. Names are unique per tenant.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Rule>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("alerts.rules_dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let file: File = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        for r in file.rule {
            problems.extend(
                r.problems()
                    .into_iter()
                    .map(|p| format!("{}: {p}", path.display())),
            );
            if rules
                .iter()
                .any(|o: &Rule| o.tenant == r.tenant && o.name == r.name)
            {
                problems.push(format!(
                    "{}: rule {:?} of {} is defined twice",
                    path.display(),
                    r.name,
                    r.tenant
                ));
            }
            rules.push(r);
        }
    }
    if !problems.is_empty() {
        bail!("alert rules:\n  {}", problems.join("\n  "));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_load_from_a_directory_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("fleet.toml"),
            r#"
            [[rule]]
            name = "region-offline"
            tenant = "acme"
            kind = "fleet_ratio"
            state = "offline"
            group_by = "region"
            above = 0.10
            clear_below = 0.08
            notify = ["pd"]
            "#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a rule").unwrap();
        let rules = load_dir(dir.path()).unwrap();
        assert_eq!(rules.len(), 1);
        let t = rules[0].plan().unwrap().thresholds;
        assert_eq!((t.above, t.clear_at, t.for_us), (0.10, 0.08, 0));
        std::fs::write(
            dir.path().join("bad.toml"),
            r#"
            [[rule]]
            name = "region-offline"
            tenant = "acme"
            kind = "fleet_ratio"
            state = "asleep"
            group_by = "region"
            above = 1.5
            clear_below = 2.0
            "#,
        )
        .unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        for want in [
            "state: \"asleep\"",
            "above: a share",
            "clear_below",
            "defined twice",
            "bad.toml",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        std::fs::write(dir.path().join("bad.toml"), "[[rule]]\nname = 1").unwrap();
        assert!(
            load_dir(dir.path())
                .unwrap_err()
                .to_string()
                .contains("bad.toml")
        );
    }

    fn plan(toml: &str) -> Result<Plan, Vec<String>> {
        let file: File = toml::from_str(toml).unwrap();
        file.rule[0].plan()
    }

    #[test]
    fn each_kind_reads_as_the_use_cases_write_it() {
        let p = plan(
            r#"[[rule]]
            name = "battery-low"
            tenant = "acme"
            kind = "threshold"
            metric = "battery"
            agg = "min"
            window_secs = 900
            group_by = "device"
            below = 20
            clear_above = 25"#,
        )
        .unwrap();
        assert_eq!((p.sign, p.threshold), (-1.0, 20.0));
        assert_eq!((p.thresholds.above, p.thresholds.clear_at), (-20.0, -25.0));
        assert_eq!(p.group_by, vec![Label::Device]);
        assert_eq!(p.span, Some(Span::Window(900 * SEC)));
        let p = plan(
            r#"[[rule]]
            name = "food-cost"
            tenant = "acme"
            kind = "events"
            inputs.food_cost = { event = "pos.purchase", agg = "sum", field = "amount" }
            inputs.sales = { event = "pos.sale", agg = "sum", field = "total", match = { status = "paid" } }
            value = "food_cost / sales * 100"
            period = "week"
            group_by = ["region", "place"]
            above = 32"#,
        )
        .unwrap();
        assert_eq!(p.inputs.len(), 2);
        assert_eq!(
            p.group_by,
            vec![Label::PlaceKind("region".into()), Label::Place]
        );
        assert_eq!(
            p.expr.unwrap().eval(&[Some(320.0), Some(1000.0)]),
            Some(32.0)
        );
        let p = plan(
            r#"[[rule]]
            name = "orders"
            tenant = "shop"
            kind = "events"
            event = "pos.sale"
            period = "hour"
            group_by = "field.channel"
            below = 5"#,
        )
        .unwrap();
        assert_eq!(p.inputs[0].1.agg, Some(Agg::Count));
        let p = plan(
            r#"[[rule]]
            name = "doses"
            tenant = "care"
            kind = "missed"
            event = "medication.taken"
            schedule = ["08:00", "14:00", "20:00"]
            grace_secs = 3600
            group_by = "field.patient"
            above = 2"#,
        )
        .unwrap();
        assert_eq!(p.schedule.len(), 3);
        let p = plan(
            r#"[[rule]]
            name = "silent"
            tenant = "acme"
            kind = "absence"
            after_secs = 600"#,
        )
        .unwrap();
        assert_eq!(p.threshold, 600.0);
    }

    #[test]
    fn mistakes_in_a_rule_name_their_field() {
        let errs = |toml: &str| plan(toml).unwrap_err().join("\n");
        let e = errs(
            r#"[[rule]]
            name = "x"
            tenant = "acme"
            kind = "threshold"
            metric = "temp"
            group_by = "field.x"
            above = 1
            clear_below = 2"#,
        );
        for want in ["agg:", "window_secs", "group_by", "clear_below"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = errs(
            r#"[[rule]]
            name = "x"
            tenant = "acme"
            kind = "events"
            inputs.a = { event = "sale", agg = "sum" }
            inputs.b = { metric = "m", agg = "avg", match = { k = 1 } }
            value = "a / c"
            period = "day""#,
        );
        for want in [
            "input \"a\": field",
            "field and match are for events",
            "\"c\" is not defined",
            "one of above or below",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = errs(
            r#"[[rule]]
            name = "x"
            tenant = "acme"
            kind = "missed"
            event = "dose"
            schedule = ["8am"]
            above = 2"#,
        );
        assert!(e.contains("not a local time"), "{e}");
        let e = errs(
            r#"[[rule]]
            name = "x"
            tenant = "acme"
            kind = "missed"
            event = "dose"
            schedule = ["08:00", "08:00"]
            lookback_secs = 9223372036854775807
            for_secs = 9223372036854775807
            above = 2"#,
        );
        for want in ["given twice", "lookback_secs: at most", "for_secs: at most"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = errs(
            r#"[[rule]]
            name = "x"
            tenant = "acme"
            kind = "absence"
            after_secs = 60
            above = 3
            group_by = "region""#,
        );
        assert!(
            e.contains("set their own threshold") && e.contains("group_by"),
            "{e}"
        );
    }

    /// The rules docs/alerts.md shows, one per use case, load as written.
    #[test]
    fn the_documented_rules_load() {
        let doc = include_str!("../../../docs/alerts.md");
        let rules = doc.split("## Rules").nth(1).unwrap();
        let block = rules
            .split("```toml")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let file: File = toml::from_str(block).unwrap();
        assert_eq!(file.rule.len(), 9);
        for r in &file.rule {
            assert_eq!(r.problems(), Vec::<String>::new(), "{}", r.name);
        }
    }
}
