//! Alerts: fleet-ratio rules evaluated on a timer, instance states kept in
//! PostgreSQL, the outbox written with them, and one evaluator at a time.

use std::time::Duration;

use dash_aggregator::alerts::notify::{ContactKind, ContactPoint};
use dash_aggregator::alerts::rules::Rule;
use dash_aggregator::alerts::{AlertsConfig, Engine};
use dash_aggregator::storage::alerts::{self as rows, OutboxRow};
use dash_tests::app::TestApp;
use dash_tests::eventually;
use dash_tests::pagerduty::PagerDuty;
use dash_tests::pg::TestPostgres;

const RULE: &str = r#"
[[rule]]
name = "region-offline"
tenant = "acme"
kind = "fleet_ratio"
state = "offline"
group_by = "region"
above = 0.10
clear_below = 0.08
interval_secs = 1
severity = "critical"
notify = ["pagerduty-ops"]
labels = { team = "ops" }
"#;

fn rules(dir: &std::path::Path) -> Vec<Rule> {
    std::fs::write(dir.join("fleet.toml"), RULE).unwrap();
    dash_aggregator::alerts::rules::load_dir(dir).unwrap()
}

/// acme: corp → regions r1, r2, r3 → a store each; 40, 30 and 30 devices
/// that have reported, online.
async fn fleet(pg: &TestPostgres) {
    sqlx::raw_sql(
        "INSERT INTO places (tenant, place, parent, name, kind, path) VALUES
             ('acme', 'corp', NULL, 'Corporate', 'corporate', '/corp/'),
             ('acme', 'r1', 'corp', 'North', 'region', '/corp/r1/'),
             ('acme', 'r2', 'corp', 'South', 'region', '/corp/r2/'),
             ('acme', 'r3', 'corp', 'West', 'region', '/corp/r3/'),
             ('acme', 's1', 'r1', 'Store 1', 'location', '/corp/r1/s1/'),
             ('acme', 's2', 'r2', 'Store 2', 'location', '/corp/r2/s2/'),
             ('acme', 's3', 'r3', 'Store 3', 'location', '/corp/r3/s3/');
         INSERT INTO devices (tenant, device, place, state, last_reading, expected_interval_secs)
         SELECT 'acme', 'd' || i, CASE WHEN i < 40 THEN 's1' WHEN i < 70 THEN 's2' ELSE 's3' END,
                'online', now(), 3600
         FROM generate_series(0, 99) i;",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
}

async fn set_state(pg: &TestPostgres, state: &str, from: i32, to: i32) {
    sqlx::query("UPDATE devices SET state = $1 WHERE tenant = 'acme' AND substr(device, 2)::int BETWEEN $2 AND $3")
        .bind(state)
        .bind(from)
        .bind(to)
        .execute(&pg.pool)
        .await
        .unwrap();
}

fn events(outbox: &[OutboxRow]) -> Vec<(String, String)> {
    outbox
        .iter()
        .map(|o| {
            (
                o.event.clone(),
                o.body["labels"]["region"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_over_a_tenth_offline_pages_once_and_resolves_once_across_a_restart() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    fleet(&pg).await;
    let config = AlertsConfig::default();
    let first = Engine::new(pg.pool.clone(), rules(dir.path()), config.clone()).unwrap();
    let rule = first.rules()[0].clone();
    let fence = first.lease().await.unwrap().expect("the lease is free");
    let e = first.evaluate(&rule, fence).await.unwrap();
    assert_eq!((e.instances, e.triggers, e.stored), (3, 0, true));

    // 11 of the 40 in the north go silent (27.5 %); the south's 30 are
    // behind a gateway that is down: unknown, not offline.
    set_state(&pg, "offline", 0, 10).await;
    set_state(&pg, "unknown", 40, 69).await;
    let e = first.evaluate(&rule, fence).await.unwrap();
    assert_eq!((e.triggers, e.resolves), (1, 0));
    for _ in 0..3 {
        let e = first.evaluate(&rule, fence).await.unwrap();
        assert_eq!(
            (e.triggers, e.resolves),
            (0, 0),
            "still firing: no second page"
        );
    }
    let outbox = rows::outbox(&pg.pool, "acme").await.unwrap();
    assert_eq!(events(&outbox), [("trigger".to_owned(), "r1".to_owned())]);
    let trigger = &outbox[0];
    assert_eq!(trigger.contact, "pagerduty-ops");
    assert_eq!(trigger.body["severity"], "critical");
    assert_eq!(trigger.body["labels"]["team"], "ops");
    assert!(
        trigger.body["summary"]
            .as_str()
            .unwrap()
            .contains("11 of 40 devices offline in North"),
        "{}",
        trigger.body
    );

    // Another aggregator cannot evaluate while the first holds the lease;
    // when the first stops, it takes over with a higher fence, and the
    // first's late write is refused.
    let second = Engine::new(pg.pool.clone(), rules(dir.path()), config).unwrap();
    assert_eq!(second.lease().await.unwrap(), None);
    sqlx::query("UPDATE alert_lease SET expires_at = now()")
        .execute(&pg.pool)
        .await
        .unwrap();
    let fence2 = second.lease().await.unwrap().expect("taken over");
    assert!(fence2 > fence);
    let late = first.evaluate(&rule, fence).await.unwrap();
    assert!(!late.stored, "fenced off");
    // Restarted while firing: no second trigger.
    let e = second.evaluate(&rule, fence2).await.unwrap();
    assert_eq!((e.triggers, e.resolves, e.stored), (0, 0, true));

    // 3 of 40 (7.5 %) is at or below the clear threshold (8 %): resolved,
    // once, with the trigger's dedup key.
    set_state(&pg, "online", 3, 10).await;
    let e = second.evaluate(&rule, fence2).await.unwrap();
    assert_eq!((e.triggers, e.resolves), (0, 1));
    let e = second.evaluate(&rule, fence2).await.unwrap();
    assert_eq!((e.triggers, e.resolves), (0, 0));
    let outbox = rows::outbox(&pg.pool, "acme").await.unwrap();
    assert_eq!(
        events(&outbox),
        [
            ("trigger".to_owned(), "r1".to_owned()),
            ("resolve".to_owned(), "r1".to_owned())
        ]
    );
    assert_eq!(outbox[0].body["dedup_key"], outbox[1].body["dedup_key"]);
    let instances = rows::instances(&pg.pool, "acme", "region-offline")
        .await
        .unwrap();
    assert!(
        instances.iter().all(|i| i.state == "normal"),
        "{instances:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_evaluates_its_rules_on_a_timer_from_the_sweeps_states() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.toml"), RULE).unwrap();
    fleet(&pg).await;
    let rules_dir = dir.path().to_owned();
    let app = TestApp::spawn(&pg.url, |c| {
        c.alerts.rules_dir = rules_dir;
        c.fleet.sweep_secs = 1;
    })
    .await;
    // 12 of the north's devices stop reporting an hour ago: the sweep calls
    // them offline, and the rule, evaluated every second, pages.
    sqlx::query(
        "UPDATE devices SET last_reading = now() - interval '2 hours'
         WHERE tenant = 'acme' AND substr(device, 2)::int < 12",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let outbox = eventually(
        Duration::from_secs(60),
        "a trigger in the outbox",
        || async {
            let o = rows::outbox(&pg.pool, "acme").await.unwrap();
            (!o.is_empty()).then_some(o)
        },
    )
    .await;
    assert_eq!(events(&outbox), [("trigger".to_owned(), "r1".to_owned())]);
    let holder: String = sqlx::query_scalar("SELECT holder FROM alert_lease")
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    app.stop().await.unwrap();
    // Stopping gave the lease up.
    let expired: bool =
        sqlx::query_scalar("SELECT expires_at <= now() FROM alert_lease WHERE holder = $1")
            .bind(&holder)
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert!(expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_file_stops_the_aggregator_with_the_file_and_field() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), RULE.replace("0.10", "10")).unwrap();
    let mut config = dash_aggregator::Config {
        data_dir: dir.path().join("aggregator"),
        database_url: pg.url.clone(),
        ..Default::default()
    };
    config.alerts.rules_dir = dir.path().to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.broker.listen = "127.0.0.1:0".into();
    let e = dash_aggregator::run_reporting(config, std::future::pending(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("above"), "{e}");
}

const KEY: &str = "R0uT1nGkEy0123456789abcdefABCDEF";

/// An aggregator evaluating RULE every second and sending to `pd`.
async fn paging_app(pg: &TestPostgres, dir: &std::path::Path, pd: &PagerDuty) -> TestApp {
    std::fs::write(dir.join("fleet.toml"), RULE).unwrap();
    let key_file = dir.join("pd.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let (rules_dir, url) = (dir.to_owned(), pd.url());
    TestApp::spawn(&pg.url, move |c| {
        c.alerts.rules_dir = rules_dir;
        c.alerts.contact_points = vec![ContactPoint {
            name: "pagerduty-ops".into(),
            kind: ContactKind::Pagerduty,
            url,
            routing_key_file: key_file,
        }];
        c.fleet.sweep_secs = 1;
    })
    .await
}

async fn silence_north(pg: &TestPostgres, silent: bool) {
    let at = if silent {
        "now() - interval '2 hours'"
    } else {
        "now()"
    };
    sqlx::query(&format!(
        "UPDATE devices SET last_reading = {at} WHERE tenant = 'acme' AND substr(device, 2)::int < 12"
    ))
    .execute(&pg.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_gets_one_trigger_and_one_resolve_with_the_same_dedup_key() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    fleet(&pg).await;
    let pd = PagerDuty::start(KEY).await;
    let app = paging_app(&pg, dir.path(), &pd).await;
    silence_north(&pg, true).await;
    eventually(
        Duration::from_secs(60),
        "a trigger at PagerDuty",
        || async { (pd.accepted().len() == 1).then_some(()) },
    )
    .await;
    silence_north(&pg, false).await;
    eventually(
        Duration::from_secs(60),
        "a resolve at PagerDuty",
        || async { (pd.accepted().len() == 2).then_some(()) },
    )
    .await;
    // A few more evaluations and sends: nothing else.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = pd.accepted();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            got[0]["event_action"].as_str(),
            got[1]["event_action"].as_str()
        ),
        (Some("trigger"), Some("resolve"))
    );
    assert_eq!(got[0]["dedup_key"], got[1]["dedup_key"]);
    assert_eq!(got[0]["payload"]["severity"], "critical");
    assert_eq!(
        got[0]["payload"]["custom_details"]["labels"]["region"],
        "r1"
    );
    // The routing key is kept out of what is stored.
    let stored = rows::outbox(&pg.pool, "acme").await.unwrap();
    assert!(stored.iter().all(|o| !o.body.to_string().contains(KEY)));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after_and_a_400_is_a_dead_letter_not_retried() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    fleet(&pg).await;
    let pd = PagerDuty::start(KEY).await;
    pd.answer(&[429, 429]);
    let app = paging_app(&pg, dir.path(), &pd).await;
    silence_north(&pg, true).await;
    eventually(Duration::from_secs(60), "the trigger delivered", || async {
        (pd.accepted().len() == 1).then_some(())
    })
    .await;
    let got = pd.got();
    let statuses: Vec<u16> = got.iter().map(|g| g.2).collect();
    assert_eq!(statuses, [429, 429, 202]);
    for pair in got.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        assert!(
            waited >= Duration::from_millis(950),
            "Retry-After: 1 honoured: {waited:?}"
        );
    }
    let rows = rows::deliveries(&pg.pool, "acme").await.unwrap();
    assert_eq!((rows[0].0, rows[0].1.is_some()), (3, true), "{rows:?}");

    // The resolve is refused for good: kept with the reason, not retried.
    pd.answer(&[400]);
    silence_north(&pg, false).await;
    let rows = eventually(Duration::from_secs(60), "a dead letter", || async {
        let r = rows::deliveries(&pg.pool, "acme").await.unwrap();
        (r.len() == 2 && r[1].3.is_some()).then_some(r)
    })
    .await;
    assert!(
        rows[1]
            .2
            .as_deref()
            .unwrap_or_default()
            .contains("HTTP 400"),
        "{rows:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pd.got().len(), 4, "the 400 was not retried");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_waits_for_its_trigger_and_a_claimed_row_is_not_claimed_twice() {
    let pg = TestPostgres::start().await;
    sqlx::raw_sql(
        "INSERT INTO alert_outbox (tenant, rule, fingerprint, event, contact, body, next_at) VALUES
             ('acme', 'r', 'f1', 'trigger', 'pd', '{}', now() + interval '1 hour'),
             ('acme', 'r', 'f1', 'resolve', 'pd', '{}', now()),
             ('acme', 'r', 'f2', 'trigger', 'pd', '{}', now());",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let contacts = vec!["pd".to_owned()];
    // f1's trigger waits for a retry: its resolve is not due before it.
    let mut first = pg.pool.begin().await.unwrap();
    let claimed = rows::claim_due(&mut first, &contacts, 10).await.unwrap();
    let claimed: Vec<(String, String)> = claimed
        .iter()
        .map(|d| (d.event.clone(), d.body.to_string()))
        .collect();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].0, "trigger");
    // While the first worker holds f2's row, a second claims nothing.
    let mut second = pg.pool.begin().await.unwrap();
    assert!(
        rows::claim_due(&mut second, &contacts, 10)
            .await
            .unwrap()
            .is_empty()
    );
    second.rollback().await.unwrap();
    first.rollback().await.unwrap();
}
