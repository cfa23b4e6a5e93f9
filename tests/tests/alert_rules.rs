//! Alert rules of each kind against what is stored: series through the
//! tiers, events, schedules in the tenant's zone, absence behind a gateway,
//! and expressions over named aggregates. Each evaluation is at a chosen
//! time (`evaluate_at`), so a day in Berlin can be walked hour by hour.

use chrono::{DateTime, TimeZone, Utc};
use dash_aggregator::alerts::rules::{Rule, load_dir};
use dash_aggregator::alerts::{AlertsConfig, Context, Engine, Evaluated};
use dash_aggregator::storage::alerts::{self as rows, OutboxRow};
use dash_shared::wire::SeriesBlock;
use dash_shared::{AgentId, Micros, SeriesKey, TenantId};
use dash_tests::fixture::payload;
use dash_tests::pg::TestPostgres;

const MIN: Micros = 60 * 1_000_000;
const HOUR: Micros = 60 * MIN;

/// An engine for `toml`'s rules, holding the lease: the engine, its
/// rules and the fence.
async fn engine(pg: &TestPostgres, toml: &str) -> (Engine, Vec<Rule>, i64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), toml).unwrap();
    let rules = load_dir(dir.path()).unwrap();
    let engine = Engine::new(pg.pool.clone(), rules.clone(), AlertsConfig::default())
        .unwrap()
        .with_context(Context {
            gateway_silence_secs: 90,
            ..Context::default()
        });
    let fence = engine.lease().await.unwrap().expect("the lease is free");
    (engine, rules, fence)
}

async fn run(pg: &TestPostgres, sql: &str) {
    sqlx::raw_sql(sql).execute(&pg.pool).await.unwrap();
}

/// corp → north (s1, s2) and south (s3); customers c1 and c2.
async fn places(pg: &TestPostgres, tenant: &str, zone: &str) {
    run(
        pg,
        &format!(
            "INSERT INTO tenants (tenant, time_zone) VALUES ('{tenant}', '{zone}');
             INSERT INTO places (tenant, place, parent, name, kind, path) VALUES
                 ('{tenant}', 'corp', NULL, 'Corporate', 'corporate', '/corp/'),
                 ('{tenant}', 'north', 'corp', 'North', 'region', '/corp/north/'),
                 ('{tenant}', 'south', 'corp', 'South', 'region', '/corp/south/'),
                 ('{tenant}', 's1', 'north', 'Store 1', 'location', '/corp/north/s1/'),
                 ('{tenant}', 's2', 'north', 'Store 2', 'location', '/corp/north/s2/'),
                 ('{tenant}', 's3', 'south', 'Store 3', 'location', '/corp/south/s3/');
             INSERT INTO customers (tenant, customer, name, email) VALUES
                 ('{tenant}', 'c1', 'Ada', 'ada@example.com'),
                 ('{tenant}', 'c2', 'Bo', 'bo@example.com');"
        ),
    )
    .await;
}

async fn device(pg: &TestPostgres, tenant: &str, device: &str, place: &str, customer: &str) {
    sqlx::query(
        "INSERT INTO devices (tenant, device, place, customer, state, last_reading, agent)
         VALUES ($1, $2, $3, $4, 'online', now(), 'gw1')",
    )
    .bind(tenant)
    .bind(device)
    .bind(place)
    .bind(customer)
    .execute(&pg.pool)
    .await
    .unwrap();
}

/// Readings stored through the ingest path, one batch each call.
struct Feed {
    seq: u64,
    tenant: TenantId,
}

impl Feed {
    fn new(tenant: &str) -> Feed {
        Feed {
            seq: 0,
            tenant: TenantId::new(tenant).unwrap(),
        }
    }

    async fn readings(&mut self, pg: &TestPostgres, metric: &str, points: &[(&str, Micros, f64)]) {
        self.seq += 1;
        let series = points
            .iter()
            .map(|(device, t, v)| SeriesBlock {
                key: SeriesKey::new(*device, metric),
                timestamps: vec![*t],
                values: vec![*v],
            })
            .collect();
        pg.ingestor()
            .handle(
                &self.tenant,
                &AgentId::new("gw1").unwrap(),
                &payload(self.seq, series),
            )
            .await
            .unwrap();
    }
}

async fn event(pg: &TestPostgres, tenant: &str, source: &str, at: Micros, kind: &str, body: &str) {
    sqlx::query(
        "INSERT INTO events (tenant, agent, source, ts, kind, body) VALUES ($1, 'gw1', $2, $3, $4, $5::jsonb)",
    )
    .bind(tenant)
    .bind(source)
    .bind(DateTime::<Utc>::from_timestamp_micros(at).unwrap())
    .bind(kind)
    .bind(body)
    .execute(&pg.pool)
    .await
    .unwrap();
}

/// A local time of 2026 in Berlin, in µs.
fn berlin(month: u32, day: u32, hour: u32, min: u32) -> Micros {
    chrono_tz::Europe::Berlin
        .with_ymd_and_hms(2026, month, day, hour, min, 0)
        .earliest()
        .unwrap()
        .timestamp_micros()
}

fn fired(e: &Evaluated) -> (usize, usize) {
    (e.triggers, e.resolves)
}

fn label<'a>(o: &'a OutboxRow, k: &str) -> &'a str {
    o.body["labels"][k].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_battery_pages_its_device_once_with_hysteresis_and_names_place_and_customer() {
    let pg = TestPostgres::start().await;
    places(&pg, "acme", "UTC").await;
    device(&pg, "acme", "d1", "s1", "c1").await;
    device(&pg, "acme", "d2", "s3", "c2").await;
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "battery-low"
        tenant = "acme"
        kind = "threshold"
        metric = "battery"
        agg = "last"
        window_secs = 3600
        group_by = "device"
        below = 20
        clear_above = 25
        severity = "warning"
        notify = ["email-customer"]
        "#,
    )
    .await;
    let rule = &rules[0];
    // An hour ago, so that every reading below is in the past.
    let now = dash_shared::now_micros() - HOUR;
    let mut feed = Feed::new("acme");
    feed.readings(
        &pg,
        "battery",
        &[("d1", now - 30 * MIN, 50.0), ("d2", now - 30 * MIN, 80.0)],
    )
    .await;
    feed.readings(&pg, "battery", &[("d1", now - 5 * MIN, 15.0)])
        .await;
    let e = engine.evaluate_at(rule, fence, now).await.unwrap();
    assert_eq!(fired(&e), (1, 0));
    let outbox = rows::outbox(&pg.pool, "acme").await.unwrap();
    let o = &outbox[0];
    assert_eq!(
        (
            label(o, "device"),
            label(o, "place"),
            label(o, "customer"),
            label(o, "place_name")
        ),
        ("d1", "s1", "c1", "Store 1")
    );
    assert_eq!(
        (o.body["value"].as_f64(), o.body["side"].as_str()),
        (Some(15.0), Some("below"))
    );
    assert!(
        o.body["summary"]
            .as_str()
            .unwrap()
            .contains("last(battery) is 15 (below 20)"),
        "{}",
        o.body
    );

    // 22 is above 20 but not above the clear threshold 25: still firing.
    feed.readings(&pg, "battery", &[("d1", now + MIN, 22.0)])
        .await;
    let e = engine
        .evaluate_at(rule, fence, now + 2 * MIN)
        .await
        .unwrap();
    assert_eq!(fired(&e), (0, 0));
    feed.readings(&pg, "battery", &[("d1", now + 3 * MIN, 19.0)])
        .await;
    let e = engine
        .evaluate_at(rule, fence, now + 4 * MIN)
        .await
        .unwrap();
    assert_eq!(
        fired(&e),
        (0, 0),
        "dipped again while firing: no second page"
    );
    feed.readings(&pg, "battery", &[("d1", now + 5 * MIN, 30.0)])
        .await;
    let e = engine
        .evaluate_at(rule, fence, now + 6 * MIN)
        .await
        .unwrap();
    assert_eq!(fired(&e), (0, 1));

    // d2 never left normal: it is not stored at all; d1's life is in the
    // history.
    let instances = rows::instances(&pg.pool, "acme", "battery-low")
        .await
        .unwrap();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let history: Vec<(String, String)> = sqlx::query_as(
        "SELECT from_state, to_state FROM alert_history WHERE tenant = 'acme' ORDER BY id",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            ("normal".into(), "firing".into()),
            ("firing".into(), "normal".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_revenue_over_a_limit_in_berlin_fires_once_that_local_day() {
    let pg = TestPostgres::start().await;
    places(&pg, "shop", "Europe/Berlin").await;
    device(&pg, "shop", "till1", "s1", "c1").await;
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "revenue-10k"
        tenant = "shop"
        kind = "events"
        event = "pos.sale"
        agg = "sum"
        field = "total"
        match = { status = "paid" }
        period = "day"
        group_by = "place"
        above = 10000
        severity = "info"
        notify = ["slack-sales"]
        "#,
    )
    .await;
    let rule = &rules[0];
    let local = |d: u32, h: u32, m: u32| berlin(3, d, h, m);
    // 23:30 UTC on the 28th is 00:30 on the 29th in Berlin: that day's.
    let late_utc = Utc
        .with_ymd_and_hms(2026, 3, 28, 23, 30, 0)
        .unwrap()
        .timestamp_micros();
    event(
        &pg,
        "shop",
        "till1",
        late_utc,
        "pos.sale",
        r#"{"total": 6000, "status": "paid"}"#,
    )
    .await;
    event(
        &pg,
        "shop",
        "till1",
        local(29, 8, 0),
        "pos.sale",
        r#"{"total": 4500, "status": "paid"}"#,
    )
    .await;
    // Not counted: a void sale, a total that is not a number, one too big
    // for a float.
    event(
        &pg,
        "shop",
        "till1",
        local(29, 8, 5),
        "pos.sale",
        r#"{"total": 9000, "status": "void"}"#,
    )
    .await;
    event(
        &pg,
        "shop",
        "till1",
        local(29, 8, 6),
        "pos.sale",
        r#"{"total": "lots", "status": "paid"}"#,
    )
    .await;
    event(
        &pg,
        "shop",
        "till1",
        local(29, 8, 7),
        "pos.sale",
        r#"{"total": 1e400, "status": "paid"}"#,
    )
    .await;
    event(
        &pg,
        "shop",
        "till1",
        local(29, 8, 8),
        "pos.sale",
        r#"{"total": 1e-400, "status": "paid"}"#,
    )
    .await;
    let mut pages = Vec::new();
    // Every half hour of the 29th (a 23-hour day) and into the 30th.
    let mut t = local(29, 0, 45);
    while t < local(30, 1, 0) {
        let e = engine.evaluate_at(rule, fence, t).await.unwrap();
        if e.triggers + e.resolves > 0 {
            pages.push((fired(&e), t));
        }
        if t == local(29, 12, 15) {
            event(
                &pg,
                "shop",
                "till1",
                t,
                "pos.sale",
                r#"{"total": 3000, "status": "paid"}"#,
            )
            .await;
        }
        t += 30 * MIN;
    }
    // 10,500 by 08:00: one trigger; midnight starts a new day at 0: one
    // resolve. Counted by UTC days, the 29th would have had 7,500.
    assert_eq!(
        pages,
        [((1, 0), local(29, 8, 15)), ((0, 1), local(30, 0, 15))],
        "{pages:?}"
    );
    let outbox = rows::outbox(&pg.pool, "shop").await.unwrap();
    assert_eq!(outbox[0].body["value"].as_f64(), Some(10_500.0));
    assert_eq!(label(&outbox[0], "place_name"), "Store 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn food_cost_percent_and_an_hourly_target_per_location() {
    let pg = TestPostgres::start().await;
    places(&pg, "shop", "UTC").await;
    for (till, place) in [("t1", "s1"), ("t2", "s2"), ("t3", "s3")] {
        device(&pg, "shop", till, place, "c1").await;
    }
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "food-cost"
        tenant = "shop"
        kind = "events"
        inputs.food_cost = { event = "pos.purchase", agg = "sum", field = "amount" }
        inputs.sales = { event = "pos.sale", agg = "sum", field = "total" }
        value = "food_cost / sales * 100"
        period = "week"
        group_by = "place"
        above = 32
        notify = ["slack-ops"]

        [[rule]]
        name = "hourly-orders"
        tenant = "shop"
        kind = "events"
        event = "pos.sale"
        period = "hour"
        place = "north"
        group_by = "place"
        below = 2
        notify = ["slack-ops"]
        "#,
    )
    .await;
    let now = Utc
        .with_ymd_and_hms(2026, 11, 26, 10, 40, 0)
        .unwrap()
        .timestamp_micros();
    for (till, sales, cost) in [("t1", 1000.0, 330.0), ("t2", 1000.0, 300.0)] {
        for i in 0..4 {
            event(
                &pg,
                "shop",
                till,
                now - (i + 1) * 10 * MIN,
                "pos.sale",
                &format!(r#"{{"total": {}}}"#, sales / 4.0),
            )
            .await;
        }
        event(
            &pg,
            "shop",
            till,
            now - 2 * HOUR,
            "pos.purchase",
            &format!(r#"{{"amount": {cost}}}"#),
        )
        .await;
    }
    // s3 has purchases and no sales: no value (not a division by zero).
    event(
        &pg,
        "shop",
        "t3",
        now - HOUR,
        "pos.purchase",
        r#"{"amount": 50}"#,
    )
    .await;
    // A till without a place makes no "(none)" store.
    run(
        &pg,
        "INSERT INTO devices (tenant, device, state) VALUES ('shop', 't4', 'online')",
    )
    .await;
    event(
        &pg,
        "shop",
        "t4",
        now - HOUR,
        "pos.purchase",
        r#"{"amount": 999}"#,
    )
    .await;
    let e = engine.evaluate_at(&rules[0], fence, now).await.unwrap();
    assert_eq!((e.instances, fired(&e)), (3, (1, 0)));
    let outbox = rows::outbox(&pg.pool, "shop").await.unwrap();
    assert_eq!(label(&outbox[0], "place"), "s1");
    assert!((outbox[0].body["value"].as_f64().unwrap() - 33.0).abs() < 1e-9);
    assert!(
        outbox[0].body["summary"]
            .as_str()
            .unwrap()
            .contains("food_cost / sales * 100 is 33"),
        "{}",
        outbox[0].body
    );

    // The north's stores at 10:40: four sales each since 10:00.
    let e = engine.evaluate_at(&rules[1], fence, now).await.unwrap();
    assert_eq!((e.instances, e.triggers), (2, 0), "s3 is outside the north");
    event(
        &pg,
        "shop",
        "t1",
        now + 30 * MIN,
        "pos.sale",
        r#"{"total": 5}"#,
    )
    .await;
    event(
        &pg,
        "shop",
        "t1",
        now + 35 * MIN,
        "pos.sale",
        r#"{"total": 5}"#,
    )
    .await;
    // 11:20: s1 has two sales this hour, s2 none, and none is no data for
    // a count: 0, below its target of 2.
    let e = engine
        .evaluate_at(&rules[1], fence, now + 40 * MIN)
        .await
        .unwrap();
    assert_eq!(fired(&e), (1, 0));
    let outbox = rows::outbox(&pg.pool, "shop").await.unwrap();
    let last = outbox.last().unwrap();
    assert_eq!(
        (label(last, "place"), last.body["value"].as_f64()),
        ("s2", Some(0.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_missed_doses_in_a_row_page_the_nurse_once() {
    let pg = TestPostgres::start().await;
    places(&pg, "care", "Europe/Berlin").await;
    device(&pg, "care", "pillbox1", "s1", "c1").await;
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "missed-doses"
        tenant = "care"
        kind = "missed"
        event = "medication.taken"
        schedule = ["08:00", "14:00", "20:00"]
        grace_secs = 3600
        group_by = "field.patient"
        lookback_secs = 172800
        above = 2
        severity = "critical"
        notify = ["sms-nurse"]
        "#,
    )
    .await;
    let rule = &rules[0];
    let local = |d: u32, h: u32, m: u32| berlin(11, d, h, m);
    let dose = |patient: &str| format!(r#"{{"patient": "{patient}"}}"#);
    // p1 takes the 08:00 dose on the 2nd and then none; p2 takes each.
    event(
        &pg,
        "care",
        "pillbox1",
        local(2, 8, 10),
        "medication.taken",
        &dose("p1"),
    )
    .await;
    for (d, h) in [(2, 8), (2, 14), (2, 20), (3, 8), (3, 14), (3, 20), (4, 8)] {
        event(
            &pg,
            "care",
            "pillbox1",
            local(d, h, 20),
            "medication.taken",
            &dose("p2"),
        )
        .await;
    }
    // 08:30 on the 3rd: the 08:00 dose is within its grace hour, two missed.
    let e = engine
        .evaluate_at(rule, fence, local(3, 8, 30))
        .await
        .unwrap();
    assert_eq!(fired(&e), (0, 0));
    let e = engine
        .evaluate_at(rule, fence, local(3, 9, 30))
        .await
        .unwrap();
    assert_eq!(fired(&e), (1, 0));
    let e = engine
        .evaluate_at(rule, fence, local(3, 10, 0))
        .await
        .unwrap();
    assert_eq!(fired(&e), (0, 0));
    let outbox = rows::outbox(&pg.pool, "care").await.unwrap();
    assert_eq!(
        (
            label(&outbox[0], "field.patient"),
            outbox[0].body["value"].as_f64()
        ),
        ("p1", Some(3.0))
    );
    assert!(
        outbox[0].body["summary"]
            .as_str()
            .unwrap()
            .contains("the last due 2026-11-03 08:00 CET"),
        "{}",
        outbox[0].body
    );
    event(
        &pg,
        "care",
        "pillbox1",
        local(3, 10, 30),
        "medication.taken",
        &dose("p1"),
    )
    .await;
    let e = engine
        .evaluate_at(rule, fence, local(3, 11, 0))
        .await
        .unwrap();
    assert_eq!(fired(&e), (0, 1));
    // p1 misses again, and a while later their last dose is older than the
    // two days looked back: still firing, every dose since counted.
    let e = engine
        .evaluate_at(rule, fence, local(4, 9, 30))
        .await
        .unwrap();
    assert_eq!(fired(&e), (1, 0));
    let e = engine
        .evaluate_at(rule, fence, local(6, 12, 0))
        .await
        .unwrap();
    assert_eq!(e.resolves, 0);
    let p1 = rows::instances(&pg.pool, "care", "missed-doses")
        .await
        .unwrap();
    let p1 = p1
        .iter()
        .find(|i| i.labels["field.patient"] == "p1")
        .unwrap();
    assert_eq!((p1.state.as_str(), p1.value), ("firing", Some(6.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_offline_pages_once_and_its_silent_devices_do_not() {
    let pg = TestPostgres::start().await;
    places(&pg, "acme", "UTC").await;
    run(
        &pg,
        "INSERT INTO agents (tenant, agent, place) VALUES ('acme', 'gw1', 's1'), ('acme', 'gw2', 's3');
         INSERT INTO agent_status (tenant, agent, online, version, status) VALUES
             ('acme', 'gw1', false, '1', '{}'), ('acme', 'gw2', true, '1', '{}');
         INSERT INTO devices (tenant, device, place, agent, state, last_reading, expected_interval_secs)
         SELECT 'acme', 'gw1-d' || i, 's1', 'gw1', 'online', now() - interval '20 minutes', 60
         FROM generate_series(1, 5) i;
         INSERT INTO devices (tenant, device, place, agent, state, last_reading, expected_interval_secs) VALUES
             ('acme', 'gw2-d1', 's3', 'gw2', 'online', now() - interval '20 minutes', 60),
             ('acme', 'gw2-d2', 's3', 'gw2', 'online', now(), 60);",
    )
    .await;
    let sweep = dash_aggregator::fleet::FleetConfig::default().rules();
    dash_aggregator::storage::fleet::sweep(&pg.pool, &sweep)
        .await
        .unwrap();
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "silent"
        tenant = "acme"
        kind = "absence"
        after_secs = 600
        notify = ["pd"]

        [[rule]]
        name = "gateway-down"
        tenant = "acme"
        kind = "gateway"
        severity = "critical"
        notify = ["pd"]
        "#,
    )
    .await;
    let now = dash_shared::now_micros();
    let silent = engine.evaluate_at(&rules[0], fence, now).await.unwrap();
    let gateway = engine.evaluate_at(&rules[1], fence, now).await.unwrap();
    assert_eq!((fired(&silent), fired(&gateway)), ((1, 0), (1, 0)));
    let outbox = rows::outbox(&pg.pool, "acme").await.unwrap();
    let paged: Vec<(&str, &str)> = outbox
        .iter()
        .map(|o| (o.rule.as_str(), label(o, "device").max(label(o, "gateway"))))
        .collect();
    // gw1's five devices are unknown behind it: only gw2's silent device
    // and gw1 itself page.
    assert_eq!(paged, [("silent", "gw2-d1"), ("gateway-down", "gw1")]);
    assert_eq!(label(&outbox[1], "place"), "s1");

    // gw1 returns with its backlog: its devices read up to now.
    run(
        &pg,
        "UPDATE agent_status SET online = true, received_at = now() WHERE agent = 'gw1';
         UPDATE devices SET last_reading = now(), last_arrival = now() WHERE agent = 'gw1';",
    )
    .await;
    dash_aggregator::storage::fleet::sweep(&pg.pool, &sweep)
        .await
        .unwrap();
    let now = dash_shared::now_micros();
    let silent = engine.evaluate_at(&rules[0], fence, now).await.unwrap();
    let gateway = engine.evaluate_at(&rules[1], fence, now).await.unwrap();
    assert_eq!((fired(&silent), fired(&gateway)), ((0, 0), (0, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_down_a_fifth_day_over_day_in_berlin() {
    let pg = TestPostgres::start().await;
    places(&pg, "shop", "Europe/Berlin").await;
    device(&pg, "shop", "till1", "s1", "c1").await;
    device(&pg, "shop", "till2", "s2", "c1").await;
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "sales-drop"
        tenant = "shop"
        kind = "change"
        metric = "sales"
        agg = "sum"
        period = "day"
        group_by = "place"
        below = -20
        notify = ["slack-ops"]
        "#,
    )
    .await;
    let local = |d: u32, h: u32| berlin(10, d, h, 0);
    let mut feed = Feed::new("shop");
    // The 24th: 1,500 at each store; the 25th (a 25-hour day): 1,000 at
    // s1 (a third less), 1,400 at s2.
    for (device, day, amounts) in [
        ("till1", 24, vec![500.0, 1000.0]),
        ("till2", 24, vec![700.0, 800.0]),
        ("till1", 25, vec![400.0, 600.0]),
        ("till2", 25, vec![1000.0, 400.0]),
    ] {
        for (i, a) in amounts.iter().enumerate() {
            feed.readings(&pg, "sales", &[(device, local(day, 10 + i as u32 * 8), *a)])
                .await;
        }
    }
    let e = engine
        .evaluate_at(&rules[0], fence, local(26, 9))
        .await
        .unwrap();
    assert_eq!(fired(&e), (1, 0));
    let outbox = rows::outbox(&pg.pool, "shop").await.unwrap();
    assert_eq!(label(&outbox[0], "place"), "s1");
    let v = outbox[0].body["value"].as_f64().unwrap();
    assert!((v - (-100.0 / 3.0)).abs() < 1e-9, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_down_to_no_orders_fires_though_nothing_was_read_for_it() {
    let pg = TestPostgres::start().await;
    places(&pg, "shop", "UTC").await;
    device(&pg, "shop", "web", "s1", "c1").await;
    let (engine, rules, fence) = engine(
        &pg,
        r#"
        [[rule]]
        name = "orders-per-channel"
        tenant = "shop"
        kind = "events"
        event = "pos.sale"
        period = "hour"
        group_by = "field.channel"
        below = 2
        notify = ["slack-ops"]
        "#,
    )
    .await;
    let ten = Utc
        .with_ymd_and_hms(2026, 11, 26, 10, 0, 0)
        .unwrap()
        .timestamp_micros();
    for (i, channel) in ["app", "shop", "app", "shop", "shop"].iter().enumerate() {
        let body = format!(r#"{{"channel": "{channel}"}}"#);
        event(
            &pg,
            "shop",
            "web",
            ten + (i as i64 + 1) * MIN,
            "pos.sale",
            &body,
        )
        .await;
        event(
            &pg,
            "shop",
            "web",
            ten + HOUR + (i as i64 + 1) * MIN,
            "pos.sale",
            r#"{"channel": "shop"}"#,
        )
        .await;
    }
    // 10:50: app 2, shop 3; 11:50: app none at all, shop 5.
    let e = engine
        .evaluate_at(&rules[0], fence, ten + 50 * MIN)
        .await
        .unwrap();
    assert_eq!((e.instances, fired(&e)), (2, (0, 0)));
    let e = engine
        .evaluate_at(&rules[0], fence, ten + 110 * MIN)
        .await
        .unwrap();
    assert_eq!(fired(&e), (1, 0));
    let outbox = rows::outbox(&pg.pool, "shop").await.unwrap();
    assert_eq!(
        (
            label(&outbox[0], "field.channel"),
            outbox[0].body["value"].as_f64()
        ),
        ("app", Some(0.0))
    );
}
