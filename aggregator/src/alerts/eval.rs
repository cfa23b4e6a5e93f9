//! What each kind of rule reads, as one observation per instance: its
//! labels, its value (or none), and whether it is held (a device behind an
//! offline gateway says nothing about itself). The state machine and the
//! outbox are [`super::Engine`]'s.
//!
//! A tenant's places and devices are read once per evaluation cycle
//! ([`Fleet`]) and shared by its rules; a rule reads its series, the tiers
//! and events itself.

use std::collections::HashMap;

use chrono_tz::Tz;
use dash_shared::{Micros, TenantId};
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::period::Span;
use super::rules::{Input, Kind, Label, Plan, Rule};
use crate::config::RetentionConfig;
use crate::query::{self, Agg, Buckets, Step};
use crate::storage::alert_reads::{self as reads, DeviceRow, EventQuery};
use crate::storage::alerts as rows;
use crate::storage::read;
use crate::storage::retention::Horizons;
use crate::storage::tiers::Partial;

const SEC: Micros = 1_000_000;
const HOUR: Micros = 3_600 * SEC;
/// Most scheduled slots a missed rule counts back.
const MAX_SLOTS: usize = 1_000;

/// What the evaluator needs besides the rules.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub retention: RetentionConfig,
    /// As `fleet.gateway_silence_secs`: a gateway unheard this long is offline.
    pub gateway_silence_secs: u32,
}

struct PlaceInfo {
    name: String,
    kind: String,
    path: String,
}

/// A tenant's places and devices, its zone, read once per cycle.
pub struct Fleet {
    pub tz: Tz,
    places: HashMap<String, PlaceInfo>,
    devices: Vec<DeviceRow>,
    by_name: HashMap<String, usize>,
}

impl Fleet {
    pub async fn load(pool: &PgPool, tenant: &str) -> sqlx::Result<Fleet> {
        let tz = match TenantId::new(tenant.to_owned()) {
            Ok(t) => read::time_zone(pool, &t).await?,
            Err(_) => None,
        }
        .and_then(|z| z.parse().ok())
        .unwrap_or(chrono_tz::UTC);
        let places = reads::places(pool, tenant)
            .await?
            .into_iter()
            .map(|(place, name, kind, path)| (place, PlaceInfo { name, kind, path }))
            .collect();
        let devices = reads::devices(pool, tenant).await?;
        let by_name = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.device.clone(), i))
            .collect();
        Ok(Fleet {
            tz,
            places,
            devices,
            by_name,
        })
    }

    fn device(&self, name: &str) -> Option<&DeviceRow> {
        self.by_name.get(name).map(|i| &self.devices[*i])
    }

    /// Whether the rule's `device`, `place` (with its subtree) and
    /// `customer` select `d` (`None`: not a registered device, selected
    /// only when the rule names none).
    fn selects(&self, rule: &Rule, d: Option<&DeviceRow>) -> bool {
        let Some(d) = d else {
            return rule.device.is_none() && rule.place.is_none() && rule.customer.is_none();
        };
        if rule.device.as_ref().is_some_and(|x| *x != d.device)
            || rule
                .customer
                .as_ref()
                .is_some_and(|c| d.customer.as_ref() != Some(c))
        {
            return false;
        }
        match &rule.place {
            None => true,
            Some(p) => match (
                self.places.get(p),
                d.place.as_ref().and_then(|q| self.places.get(q)),
            ) {
                (Some(sel), Some(at)) => at.path.starts_with(&sel.path),
                _ => false,
            },
        }
    }

    /// The place of `kind` holding `place` (itself or an ancestor).
    fn place_of_kind(&self, place: &str, kind: &str) -> Option<String> {
        let path = &self.places.get(place)?.path;
        path.split('/')
            .filter(|s| !s.is_empty())
            .rev()
            .find(|id| self.places.get(*id).is_some_and(|p| p.kind == kind))
            .map(str::to_owned)
    }

    /// A fleet label's value for a device.
    fn fleet_label(&self, label: &Label, d: Option<&DeviceRow>) -> Option<String> {
        match label {
            Label::Device => d.map(|d| d.device.clone()),
            Label::Place => d.and_then(|d| d.place.clone()),
            Label::Customer => d.and_then(|d| d.customer.clone()),
            Label::PlaceKind(k) => d
                .and_then(|d| d.place.as_deref())
                .and_then(|p| self.place_of_kind(p, k)),
            Label::Tag(_) | Label::Field(_) => None,
        }
    }

    /// The group key of events aggregated per source and body fields.
    fn event_key(
        &self,
        plan: &Plan,
        g: &reads::EventGroup,
        d: Option<&DeviceRow>,
    ) -> Vec<Option<String>> {
        let mut f = g.fields.iter();
        plan.group_by
            .iter()
            .map(|l| match l {
                Label::Field(_) => f.next().cloned().flatten(),
                l => self.fleet_label(l, d),
            })
            .collect()
    }

    /// A device's (or gateway's) place, its name, and customer, as labels.
    fn where_is(&self, d: &DeviceRow) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in [("place", &d.place), ("customer", &d.customer)] {
            if let Some(v) = v {
                out.insert(k.into(), v.clone().into());
            }
        }
        if let Some(p) = d.place.as_ref().and_then(|p| self.places.get(p)) {
            out.insert("place_name".into(), p.name.clone().into());
        }
        out
    }

    /// Labels that describe an instance without keying it: the place's
    /// name and, for one device, its place and customer.
    fn context(&self, plan: &Plan, rule: &Rule, key: &[Option<String>]) -> Map<String, Value> {
        let mut out = Map::new();
        let named = |l: &Label| plan.group_by.iter().position(|g| g == l);
        if let Some(i) = named(&Label::Device)
            && let Some(d) = key[i].as_deref().and_then(|n| self.device(n))
        {
            for (k, v) in [("place", &d.place), ("customer", &d.customer)] {
                if !rule.group_by.iter().any(|g| g == k)
                    && let Some(v) = v
                {
                    out.insert(k.into(), v.clone().into());
                }
            }
        }
        for (i, l) in plan.group_by.iter().enumerate() {
            if matches!(l, Label::Place | Label::PlaceKind(_))
                && let Some(p) = key[i].as_deref().and_then(|p| self.places.get(p))
            {
                out.insert(format!("{}_name", rule.group_by[i]), p.name.clone().into());
            }
        }
        if let Some(p) = out
            .get("place")
            .and_then(Value::as_str)
            .and_then(|p| self.places.get(p))
        {
            out.insert("place_name".into(), p.name.clone().into());
        }
        out
    }
}

/// One instance's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The labels it is keyed by (group_by; the rule's labels are added by
    /// the engine).
    pub key: Map<String, Value>,
    /// Labels that describe it.
    pub context: Map<String, Value>,
    pub value: Option<f64>,
    /// Neither stepped nor subject to no_data.
    pub held: bool,
    pub summary: String,
}

fn key_map(rule: &Rule, key: &[Option<String>]) -> Map<String, Value> {
    rule.group_by
        .iter()
        .zip(key)
        .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
        .collect()
}

pub fn describe(key: &Map<String, Value>) -> String {
    if key.is_empty() {
        return "all".into();
    }
    key.iter()
        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("(none)")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An aggregate's value from what was read (`None`: nothing): nothing is
/// 0 for count and sum, no value for the rest.
fn agg_value(agg: Agg, p: Option<&Partial>) -> Option<f64> {
    match p {
        Some(p) if p.count > 0 => Some(agg.value(p)).filter(|v| v.is_finite()),
        _ => matches!(agg, Agg::Count | Agg::Sum).then_some(0.0),
    }
}

/// Per group key: each input's partial.
type Groups = HashMap<Vec<Option<String>>, Vec<Option<Partial>>>;

/// Adds `p` to input `i` of group `key`; a key missing a label (a device
/// without a place, an event without the field) makes no instance.
fn merge_into(groups: &mut Groups, key: Vec<Option<String>>, inputs: usize, i: usize, p: &Partial) {
    if key.iter().any(Option::is_none) {
        return;
    }
    let slot = &mut groups.entry(key).or_insert_with(|| vec![None; inputs])[i];
    match slot {
        Some(q) => q.merge(p),
        None => *slot = Some(*p),
    }
}

/// Reads every input of an aggregate rule over `range`, per group; groups
/// of fleet labels exist for every selected device even without data.
async fn aggregate(
    pool: &PgPool,
    ctx: &Context,
    fleet: &Fleet,
    rule: &Rule,
    plan: &Plan,
    range: (Micros, Micros),
    now: Micros,
) -> sqlx::Result<Groups> {
    let n = plan.inputs.len();
    let mut groups = Groups::new();
    // Groups come from what is read (a series without data in the range
    // still makes its group) and from the instances stored before, which
    // the engine judges as reading nothing: a store that had sales and has
    // none this hour is a count of 0, a sensor-only store is no store.
    if plan.group_by.is_empty() {
        groups.insert(Vec::new(), vec![None; n]);
    }
    for (i, (_, input)) in plan.inputs.iter().enumerate() {
        if let Some(metric) = &input.metric {
            series_input(
                pool,
                ctx,
                fleet,
                rule,
                plan,
                (i, input, metric),
                range,
                now,
                &mut groups,
            )
            .await?;
        } else if let Some(kind) = &input.event {
            let fields = plan.fields();
            let q = EventQuery {
                tenant: &rule.tenant,
                kind,
                matches: &input.matches,
                field: input.field.as_deref(),
                group_fields: &fields,
            };
            for g in reads::event_groups(pool, q, range).await? {
                let d = fleet.device(&g.source);
                if !fleet.selects(rule, d) {
                    continue;
                }
                let key = fleet.event_key(plan, &g, d);
                let p = Partial {
                    count: g.count,
                    sum: g.sum,
                    min: g.min,
                    max: g.max,
                    first: (0, 0.0),
                    last: (g.last_ts.timestamp_micros(), g.last),
                };
                merge_into(&mut groups, key, n, i, &p);
            }
        }
    }
    Ok(groups)
}

#[allow(clippy::too_many_arguments)]
async fn series_input(
    pool: &PgPool,
    ctx: &Context,
    fleet: &Fleet,
    rule: &Rule,
    plan: &Plan,
    (i, input, metric): (usize, &Input, &str),
    range: (Micros, Micros),
    now: Micros,
    groups: &mut Groups,
) -> sqlx::Result<()> {
    let tags: Map<String, Value> = input
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let mut keys: HashMap<i64, Vec<Option<String>>> = HashMap::new();
    for (id, device, tags) in reads::series_of(pool, &rule.tenant, metric, &tags).await? {
        let d = fleet.device(&device);
        if !fleet.selects(rule, d) {
            continue;
        }
        let key = plan
            .group_by
            .iter()
            .map(|l| match l {
                Label::Tag(t) => tags.get(t).map(|v| match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                }),
                l => fleet.fleet_label(l, d),
            })
            .collect();
        keys.insert(id, key);
    }
    if keys.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = keys.keys().copied().collect();
    let step = match plan.span {
        Some(Span::Period(p)) if p != super::period::Period::Hour => Step::Days(1),
        _ => Step::Fixed(HOUR),
    };
    let buckets = Buckets::new(step, fleet.tz, range.0);
    let segments = query::plan(
        range.0,
        range.1,
        &buckets,
        &Horizons::at(&ctx.retention, now),
    );
    let mut per_series: HashMap<i64, Partial> = HashMap::new();
    for seg in &segments {
        read::partials(
            pool,
            &rule.tenant,
            &ids,
            seg.tier,
            (seg.from, seg.to),
            |id, _, p| {
                per_series
                    .entry(id)
                    .and_modify(|q| q.merge(p))
                    .or_insert(*p);
            },
        )
        .await?;
    }
    let n = plan.inputs.len();
    for (id, p) in per_series {
        if let Some(key) = keys.remove(&id) {
            merge_into(groups, key, n, i, &p);
        }
    }
    // Series without data in the range still make their group.
    for key in keys.into_values().filter(|k| k.iter().all(Option::is_some)) {
        groups.entry(key).or_insert_with(|| vec![None; n]);
    }
    Ok(())
}

/// A group's value: its inputs through the expression, or the one input.
fn value_of(plan: &Plan, parts: &[Option<Partial>]) -> Option<f64> {
    let values: Vec<Option<f64>> = plan
        .inputs
        .iter()
        .zip(parts)
        .map(|((_, input), p)| agg_value(input.agg.unwrap_or(Agg::Count), p.as_ref()))
        .collect();
    match &plan.expr {
        Some(e) => e.eval(&values),
        None => values.first().copied().flatten(),
    }
}

fn what(plan: &Plan, rule: &Rule) -> String {
    match (&plan.expr, plan.inputs.first()) {
        (Some(e), _) => e.text().to_owned(),
        (None, Some((_, i))) => {
            let agg = serde_json::to_value(i.agg.unwrap_or(Agg::Count))
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let of = i
                .metric
                .as_ref()
                .or(i.event.as_ref())
                .cloned()
                .unwrap_or_default();
            match &i.field {
                Some(f) => format!("{agg}({of}.{f})"),
                None => format!("{agg}({of})"),
            }
        }
        (None, None) => rule.name.clone(),
    }
}

fn side(plan: &Plan) -> &'static str {
    if plan.sign < 0.0 { "below" } else { "above" }
}

fn round(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    format!("{r}")
}

/// The observations of `rule` at `now`.
pub async fn observe(
    pool: &PgPool,
    ctx: &Context,
    fleet: &Fleet,
    rule: &Rule,
    plan: &Plan,
    now: Micros,
) -> sqlx::Result<Vec<Observation>> {
    let mut out = Vec::new();
    let mut push = |key: &[Option<String>], value: Option<f64>, held: bool, summary: String| {
        out.push(Observation {
            key: key_map(rule, key),
            context: fleet.context(plan, rule, key),
            value,
            held,
            summary,
        })
    };
    match rule.kind {
        Kind::Threshold | Kind::Events => {
            let Some(span) = plan.span else {
                return Ok(out);
            };
            let groups = aggregate(
                pool,
                ctx,
                fleet,
                rule,
                plan,
                span.current(now, fleet.tz),
                now,
            )
            .await?;
            for (key, parts) in groups {
                let value = value_of(plan, &parts);
                let summary = format!(
                    "{}: {} is {} ({} {}) for {}",
                    rule.name,
                    what(plan, rule),
                    value.map_or("no data".into(), round),
                    side(plan),
                    plan.threshold,
                    describe(&key_map(rule, &key))
                );
                push(&key, value, false, summary);
            }
        }
        Kind::Change => {
            let Some(span) = plan.span else {
                return Ok(out);
            };
            let (cur, prev) = span.compared(now, fleet.tz, rule.to_date);
            let mut now_groups = aggregate(pool, ctx, fleet, rule, plan, cur, now).await?;
            let before = aggregate(pool, ctx, fleet, rule, plan, prev, now).await?;
            for key in before.keys() {
                now_groups
                    .entry(key.clone())
                    .or_insert_with(|| vec![None; plan.inputs.len()]);
            }
            for (key, parts) in now_groups {
                let a = value_of(plan, &parts);
                let b = before.get(&key).and_then(|p| value_of(plan, p));
                let value = match (a, b) {
                    (Some(a), Some(b)) if b != 0.0 => Some((a - b) / b.abs() * 100.0),
                    _ => None,
                };
                let summary = format!(
                    "{}: {} changed {} % ({} → {}; {} {} %) for {}",
                    rule.name,
                    what(plan, rule),
                    value.map_or("(no data)".into(), round),
                    b.map_or("no data".into(), round),
                    a.map_or("no data".into(), round),
                    side(plan),
                    plan.threshold,
                    describe(&key_map(rule, &key))
                );
                push(&key, value, false, summary);
            }
        }
        Kind::Absence => {
            for d in fleet
                .devices
                .iter()
                .filter(|d| fleet.selects(rule, Some(d)))
            {
                let Some(last) = d.last_reading else { continue };
                let silent = (now - last.timestamp_micros()) as f64 / SEC as f64;
                // Behind an offline gateway (unknown) or one holding a
                // backlog (delayed), its silence is the gateway's.
                let held = matches!(d.state.as_str(), "unknown" | "delayed");
                let summary = format!(
                    "{}: device {} silent for {} s (after {} s)",
                    rule.name,
                    d.device,
                    silent.round(),
                    plan.threshold
                );
                let mut key = Map::new();
                key.insert("device".into(), d.device.clone().into());
                out.push(Observation {
                    key,
                    context: fleet.where_is(d),
                    value: Some(silent.max(0.0)),
                    held,
                    summary,
                });
            }
        }
        Kind::Missed => missed(pool, fleet, rule, plan, now, &mut push).await?,
        Kind::FleetRatio => {
            let (kind, state) = (&rule.group_by[0], rule.state.as_deref().unwrap_or(""));
            for g in rows::fleet_ratio(pool, &rule.tenant, kind, state).await? {
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
                    state,
                    g.name,
                    value * 100.0
                );
                push(&[Some(g.place)], Some(value), false, summary);
            }
        }
        Kind::Gateway => {
            let silence = f64::from(ctx.gateway_silence_secs.max(1));
            for (agent, place, customer, offline, heard) in
                reads::gateways(pool, &rule.tenant, silence).await?
            {
                let d = DeviceRow {
                    device: agent.clone(),
                    place,
                    customer,
                    state: String::new(),
                    last_reading: None,
                    agent: None,
                };
                // The rule's place and customer select gateways too.
                if !fleet.selects(
                    &Rule {
                        device: None,
                        ..rule.clone()
                    },
                    Some(&d),
                ) {
                    continue;
                }
                let summary = format!(
                    "{}: gateway {agent} {} (last heard {})",
                    rule.name,
                    if offline { "offline" } else { "online" },
                    heard.map_or("never".into(), |t| t.to_rfc3339())
                );
                let mut key = Map::new();
                key.insert("gateway".into(), agent.into());
                out.push(Observation {
                    key,
                    context: fleet.where_is(&d),
                    value: Some(if offline { 1.0 } else { 0.0 }),
                    held: false,
                    summary,
                });
            }
        }
    }
    Ok(out)
}

/// Doses missed in a row: scheduled times since the last event (each
/// with `grace_secs` either side) that have passed without one.
async fn missed(
    pool: &PgPool,
    fleet: &Fleet,
    rule: &Rule,
    plan: &Plan,
    now: Micros,
    push: &mut impl FnMut(&[Option<String>], Option<f64>, bool, String),
) -> sqlx::Result<()> {
    let Some(kind) = &rule.event else {
        return Ok(());
    };
    let lookback = rule.lookback_us();
    let fields = plan.fields();
    let q = EventQuery {
        tenant: &rule.tenant,
        kind,
        matches: &rule.matches,
        field: None,
        group_fields: &fields,
    };
    let mut last: HashMap<Vec<Option<String>>, Micros> = HashMap::new();
    for g in reads::event_groups(pool, q, (now - lookback, now + 1)).await? {
        let d = fleet.device(&g.source);
        if !fleet.selects(rule, d) {
            continue;
        }
        let key = fleet.event_key(plan, &g, d);
        let t = g.last_ts.timestamp_micros();
        let e = last.entry(key).or_insert(t);
        *e = (*e).max(t);
    }
    for (key, at) in last {
        if key.iter().any(Option::is_none) {
            continue;
        }
        let slots = missed_slots(fleet, rule, plan, at, now);
        let n = slots.len();
        let summary = format!(
            "{}: {n} scheduled {kind} missed in a row for {}{}",
            rule.name,
            describe(&key_map(rule, &key)),
            slots
                .last()
                .and_then(|t| chrono::DateTime::from_timestamp_micros(*t))
                .map_or(String::new(), |t| format!(
                    " (the last due {})",
                    t.with_timezone(&fleet.tz).format("%Y-%m-%d %H:%M %Z")
                ))
        );
        push(&key, Some(n as f64), false, summary);
    }
    Ok(())
}

/// The scheduled times after an event at `last` that have passed, as at
/// `now`, each `grace_secs` either side.
fn missed_slots(fleet: &Fleet, rule: &Rule, plan: &Plan, last: Micros, now: Micros) -> Vec<Micros> {
    let grace = rule.grace_us();
    super::period::slots(
        &plan.schedule,
        fleet.tz,
        last + grace,
        now - grace,
        MAX_SLOTS,
    )
}

/// The value of an instance stored before and not read now: an
/// aggregate's group reading nothing (0 for count and sum), a patient whose
/// last dose is older than the lookback (every dose since missed).
pub fn unseen_value(fleet: &Fleet, rule: &Rule, plan: &Plan, now: Micros) -> Option<f64> {
    match rule.kind {
        Kind::Missed => {
            Some(missed_slots(fleet, rule, plan, now - rule.lookback_us(), now).len() as f64)
        }
        Kind::Change => None,
        _ => value_of(plan, &vec![None; plan.inputs.len()]),
    }
}
