//! The liveness sweep over 100,000 devices behind 500 gateways: one
//! statement judges every device and stores the changes. Timed when every
//! device changes state (the first sweep after they report), when a tenth
//! do (a region goes dark), and when none do (the usual sweep); beside the
//! least any sweep must do, reading every device row once, in the same run.
//!
//! Run: `cargo bench -p dash-benches --bench fleet`

use std::time::Instant;

use dash_aggregator::fleet::FleetConfig;
use dash_aggregator::storage::fleet;
use dash_tests::pg::TestPostgres;

const DEVICES: i64 = 100_000;
const GATEWAYS: i64 = 500;

#[tokio::main]
async fn main() {
    let pg = TestPostgres::start().await;
    sqlx::query(
        "INSERT INTO agent_status (tenant, agent, online, version, reported_at, received_at, status)
         SELECT 'bench', 'gw-' || g, true, '0.1.0', now(), now(),
                '{\"buffer\": {\"records\": 0, \"oldest\": 0}}'::jsonb
         FROM generate_series(1, $1) g",
    )
    .bind(GATEWAYS)
    .execute(&pg.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO devices (tenant, device, agent, model, learned_cadence_ms, first_reading, last_reading, last_arrival)
         SELECT 'bench', 'dev-' || d, 'gw-' || (d % $2 + 1), 'm-' || (d % 7), 10000 + (d % 50) * 1000,
                now() - interval '1 day', now() - (d % 20) * interval '1 second', now()
         FROM generate_series(1, $1) d",
    )
    .bind(DEVICES)
    .bind(GATEWAYS)
    .execute(&pg.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE devices, agent_status")
        .execute(&pg.pool)
        .await
        .unwrap();
    let config = FleetConfig {
        models: (0..3)
            .map(|m| dash_aggregator::fleet::ModelInterval {
                model: format!("m-{m}"),
                interval_secs: 600,
            })
            .collect(),
        ..FleetConfig::default()
    };
    let rules = config.rules();
    let timed = async |what: &str| {
        let start = Instant::now();
        let swept = fleet::sweep(&pg.pool, &rules).await.unwrap();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!("  sweep, {what}: {} changes in {ms:.0} ms", swept.changed);
        (swept.changed, ms)
    };
    println!("liveness sweep, {DEVICES} devices behind {GATEWAYS} gateways:");
    let (all, all_ms) = timed("every device changes").await;
    assert_eq!(all as i64, DEVICES, "every device was never_reported");
    // A tenth fall silent: their gateways report, they do not.
    sqlx::query(
        "UPDATE devices SET last_reading = now() - interval '1 hour'
         WHERE tenant = 'bench' AND (substr(device, 5))::int8 % 10 = 0",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let (tenth, tenth_ms) = timed("a tenth go offline").await;
    assert_eq!(tenth as i64, DEVICES / 10);
    let (none, none_ms) = timed("nothing changes").await;
    assert_eq!(none, 0);
    let start = Instant::now();
    let rows: Vec<(String, Option<chrono::DateTime<chrono::Utc>>, String)> =
        sqlx::query_as("SELECT device, last_reading, state FROM devices WHERE tenant = 'bench'")
            .persistent(false)
            .fetch_all(&pg.pool)
            .await
            .unwrap();
    let read_ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(rows.len() as i64, DEVICES);
    println!("  baseline: reading every device row: {read_ms:.0} ms");
    for (what, ms) in [
        ("every device changes", all_ms),
        ("a tenth change", tenth_ms),
        ("nothing changes", none_ms),
    ] {
        dash_benches::row(
            "fleet",
            &format!("liveness sweep of {DEVICES} devices, {what}"),
            ms,
            "ms",
            dash_benches::Better::Lower,
            "reading every device row",
            read_ms,
            Some(dash_benches::Target::AtMost(1_000.0)),
        );
    }
}
