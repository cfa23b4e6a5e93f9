//! The query API over HTTP on a real PostgreSQL: for random ranges, steps and
//! aggregates, the points equal a plain recomputation from the raw samples,
//! whichever tiers answered; expired raw data is answered from the hourly
//! tier; tenants are kept apart; bad parameters are refused by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use dash_aggregator::api::Api;
use dash_aggregator::config::{QueryToken, RetentionConfig};
use dash_aggregator::telemetry::metrics::Metrics;
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::fixture::payload;
use dash_tests::get_json;
use dash_tests::pg::TestPostgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// 2026-03-27T00:00:00Z: four days holding Berlin's spring DST change.
const START: i64 = 1_774_569_600;
const DAYS: i64 = 4;
const STEP_SECS: i64 = 37;

fn forever() -> RetentionConfig {
    RetentionConfig {
        raw_days: 0,
        hourly_days: 0,
        daily_days: 0,
        events_days: 0,
        ..RetentionConfig::default()
    }
}

fn token_for(tenant: &str, token: &str) -> QueryToken {
    QueryToken {
        tenant: tenant.into(),
        sha256: dash_runtime::secret::sha256_hex(token),
    }
}

/// Readings every 37 s for four days: `dev-a` temp (two sites), `dev-b` temp.
fn payloads() -> Vec<Vec<u8>> {
    let keys = [
        SeriesKey::with_tags("dev-a", "temp", [("site".into(), "north".into())]),
        SeriesKey::with_tags("dev-b", "temp", [("site".into(), "south".into())]),
        SeriesKey::with_tags("dev-a", "power", [("site".into(), "north".into())]),
    ];
    let times: Vec<i64> = (0..DAYS * 86_400 / STEP_SECS)
        .map(|i| (START + i * STEP_SECS) * 1_000_000)
        .collect();
    times
        .chunks(2_000)
        .enumerate()
        .map(|(i, chunk)| {
            let series = keys
                .iter()
                .enumerate()
                .map(|(k, key)| SeriesBlock {
                    key: key.clone(),
                    timestamps: chunk.to_vec(),
                    values: chunk
                        .iter()
                        .map(|t| ((t / 1_000_000 * (k as i64 + 3)) % 101) as f64 / 4.0)
                        .collect(),
                })
                .collect();
            payload(i as u64 + 1, series)
        })
        .collect()
}

struct Fixture {
    pg: TestPostgres,
    port: u16,
    _stop: tokio_util::sync::DropGuard,
}

async fn fixture(retention: RetentionConfig) -> Fixture {
    let pg = TestPostgres::start().await;
    sqlx::query("INSERT INTO tenants (tenant, time_zone) VALUES ('acme', 'Europe/Berlin'), ('other', 'UTC')")
        .execute(&pg.pool)
        .await
        .unwrap();
    let ing = pg.ingestor();
    let (acme, other, gw) = (
        TenantId::new("acme").unwrap(),
        TenantId::new("other").unwrap(),
        AgentId::new("gw").unwrap(),
    );
    let payloads = payloads();
    for p in &payloads {
        ing.handle(&acme, &gw, p).await.unwrap();
    }
    ing.handle(&other, &gw, &payloads[0]).await.unwrap();
    let api = Arc::new(Api::new(
        pg.pool.clone(),
        vec![
            token_for("acme", "acme-secret"),
            token_for("other", "other-secret"),
        ],
        retention,
        Default::default(),
        dash_aggregator::audit::Audit::spawn(pg.pool.clone(), None),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = dash_aggregator::api::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::default()),
        api,
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    )
    .await
    .unwrap();
    Fixture {
        pg,
        port: addr.port(),
        _stop: stop.drop_guard(),
    }
}

/// `bucket start (RFC 3339) -> (count, sum, min, max, last)` from the raw samples.
type Expected = BTreeMap<String, (i64, f64, f64, f64, f64)>;

async fn recompute(
    pg: &TestPostgres,
    series: i64,
    from: i64,
    to: i64,
    bucket_sql: &str,
) -> Expected {
    let sql = format!(
        "SELECT to_char({bucket_sql} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                count(*), sum(value), min(value), max(value), (array_agg(value ORDER BY ts DESC, value DESC))[1]
         FROM samples WHERE series_id = $1 AND ts >= to_timestamp($2) AND ts < to_timestamp($3)
         GROUP BY 1 ORDER BY 1"
    );
    let rows: Vec<(String, i64, f64, f64, f64, f64)> = sqlx::query_as(&sql)
        .bind(series)
        .bind(from as f64)
        .bind(to as f64)
        .fetch_all(&pg.pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(b, c, s, mi, ma, l)| (b, (c, s, mi, ma, l)))
        .collect()
}

fn expected_value(agg: &str, (c, s, mi, ma, l): (i64, f64, f64, f64, f64)) -> f64 {
    match agg {
        "avg" => s / c as f64,
        "sum" => s,
        "min" => mi,
        "max" => ma,
        "count" => c as f64,
        "last" => l,
        _ => unreachable!(),
    }
}

fn points(body: &Value, series: usize) -> Vec<(String, f64)> {
    body["series"][series]["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points in {body}"))
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_f64().unwrap()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

const STEPS: [(&str, Option<i64>); 6] = [
    ("60s", Some(60)),
    ("5m", Some(300)),
    ("90m", Some(5_400)),
    ("1h", Some(3_600)),
    ("2h", Some(7_200)),
    ("1d", None),
];
const AGGS: [&str; 6] = ["avg", "min", "max", "sum", "count", "last"];

#[test]
fn points_equal_a_recomputation_from_raw_samples_for_any_range_step_and_aggregate() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fx = rt.block_on(fixture(forever()));
    let range = DAYS * 86_400;
    let case = (
        -3_600i64..range,
        1i64..range + 3_600,
        0usize..STEPS.len(),
        0usize..AGGS.len(),
    );
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    })
    .run(&case, |(a, len, step, agg)| {
        let (from, to) = (START + a, START + a + len);
        let (step_name, fixed) = STEPS[step];
        let agg = AGGS[agg];
        rt.block_on(async {
            let path = format!(
                "/api/v1/tenants/acme/query?device=dev-a&metric=temp&from={from}&to={to}&step={step_name}&agg={agg}"
            );
            let (status, body) = get_json(fx.port, &path, Some("acme-secret")).await;
            prop_assert_eq!(status, 200, "{}", body);
            let id = body["series"][0]["id"].as_i64().unwrap();
            prop_assert_eq!(body["series"].as_array().unwrap().len(), 1);
            for seg in body["segments"].as_array().unwrap() {
                seen.lock().unwrap().insert(seg["tier"].as_str().unwrap().to_owned());
            }
            let bucket_sql = match fixed {
                Some(s) => format!("to_timestamp(floor(extract(epoch FROM ts) / {s}) * {s})"),
                None => "date_trunc('day', ts, 'Europe/Berlin')".to_owned(),
            };
            let expected = recompute(&fx.pg, id, from, to, &bucket_sql).await;
            let got = points(&body, 0);
            prop_assert_eq!(got.len(), expected.len(), "{} {:?}", body["segments"], expected.keys().collect::<Vec<_>>());
            for ((t, v), (et, e)) in got.iter().zip(&expected) {
                prop_assert_eq!(t, et);
                let want = expected_value(agg, *e);
                prop_assert!(close(*v, want), "{} at {}: {} != {} (segments {})", agg, t, v, want, body["segments"]);
            }
            Ok(())
        })
    })
    .unwrap();
    // The cases crossed tier boundaries: all three tiers answered some of them.
    assert_eq!(seen.into_inner().unwrap().len(), 3);
}

#[tokio::test]
async fn a_day_step_uses_the_rollups_and_the_dst_day_has_23_hours_of_data() {
    let fx = fixture(forever()).await;
    let path = format!(
        "/api/v1/tenants/acme/query?device=dev-b&from={}&to={}&step=1d&agg=count",
        START,
        START + DAYS * 86_400
    );
    let (status, body) = get_json(fx.port, &path, Some("acme-secret")).await;
    assert_eq!(status, 200, "{body}");
    let tiers: Vec<&str> = body["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tier"].as_str().unwrap())
        .collect();
    assert!(tiers.contains(&"daily"), "{tiers:?}");
    let p = points(&body, 0);
    // 2026-03-29 in Berlin starts at 2026-03-28T23:00Z and lasts 23 hours.
    let (_, n) = p.iter().find(|(t, _)| t == "2026-03-28T23:00:00Z").unwrap();
    let expected = recompute(
        &fx.pg,
        body["series"][0]["id"].as_i64().unwrap(),
        START,
        START + DAYS * 86_400,
        "date_trunc('day', ts, 'Europe/Berlin')",
    )
    .await;
    assert_eq!(*n as i64, expected["2026-03-28T23:00:00Z"].0);
    assert!((*n - 23.0 * 3_600.0 / STEP_SECS as f64).abs() <= 1.0, "{n}");
}

#[tokio::test]
async fn where_raw_data_has_expired_the_hourly_tier_answers() {
    // The fixture's data is months old: with 7 days of raw data kept (and
    // hourly data forever), a 5-minute query over it is answered with hourly points.
    let fx = fixture(RetentionConfig {
        raw_days: 7,
        ..forever()
    })
    .await;
    let (from, to) = (START + 3_600, START + 5 * 3_600);
    let path = format!(
        "/api/v1/tenants/acme/query?device=dev-a&metric=temp&from={from}&to={to}&step=5m&agg=sum"
    );
    let (status, body) = get_json(fx.port, &path, Some("acme-secret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["segments"][0]["tier"], "hourly", "{body}");
    let id = body["series"][0]["id"].as_i64().unwrap();
    let expected = recompute(&fx.pg, id, from, to, "date_trunc('hour', ts)").await;
    let got = points(&body, 0);
    assert_eq!(got.len(), 4);
    assert_eq!(expected.len(), 4);
    for ((t, v), (et, e)) in got.iter().zip(&expected) {
        assert_eq!(t, et);
        assert!(close(*v, e.1), "{v} != {}", e.1);
    }
}

#[tokio::test]
async fn series_are_listed_by_filter_and_tenants_are_kept_apart() {
    let fx = fixture(forever()).await;
    let list = |q: &'static str, token: &'static str| {
        let port = fx.port;
        async move {
            get_json(
                port,
                &format!("/api/v1/tenants/acme/series{q}"),
                Some(token),
            )
            .await
        }
    };
    let (status, body) = list("", "acme-secret").await;
    assert_eq!(status, 200);
    assert_eq!(body["series"].as_array().unwrap().len(), 3);
    let (_, body) = list("?device=dev-a", "acme-secret").await;
    assert_eq!(body["series"].as_array().unwrap().len(), 2);
    let (_, body) = list("?tag=site:south", "acme-secret").await;
    assert_eq!(body["series"][0]["device"], "dev-b");
    assert_eq!(body["series"][0]["tags"]["site"], "south");
    assert_eq!(body["series"].as_array().unwrap().len(), 1);

    // Another tenant's token cannot read acme, and acme's series ids are not
    // visible through the other tenant's path.
    let (status, _) = list("", "other-secret").await;
    assert_eq!(status, 401);
    let (_, acme) = list("?device=dev-a&metric=temp", "acme-secret").await;
    let id = acme["series"][0]["id"].as_i64().unwrap();
    let path = format!(
        "/api/v1/tenants/other/query?series={id}&from={START}&to={}",
        START + 3_600
    );
    let (status, body) = get_json(fx.port, &path, Some("other-secret")).await;
    assert_eq!(status, 200);
    assert_eq!(body["series"].as_array().unwrap().len(), 0, "{body}");
    let (_, body) = get_json(
        fx.port,
        "/api/v1/tenants/other/series",
        Some("other-secret"),
    )
    .await;
    assert_eq!(
        body["series"].as_array().unwrap().len(),
        3,
        "other has its own series"
    );
}

#[tokio::test]
async fn bad_parameters_get_a_400_naming_them_and_bad_tokens_a_401() {
    let fx = fixture(forever()).await;
    let q = |params: String| {
        let port = fx.port;
        async move {
            get_json(
                port,
                &format!("/api/v1/tenants/acme/query?{params}"),
                Some("acme-secret"),
            )
            .await
        }
    };
    let ok = format!("from={START}&to={}", START + 3_600);
    for (params, needle) in [
        (format!("{ok}&step=5x"), "step="),
        (format!("{ok}&step=0s"), "step="),
        (format!("{ok}&agg=median"), "agg="),
        (format!("{ok}&colour=blue"), "unknown parameter \"colour\""),
        (format!("{ok}&tag=site"), "tag="),
        (format!("{ok}&series=1,x"), "series="),
        (
            format!("from={}&to={START}", START + 10),
            "from must be before to",
        ),
        (format!("from=yesterday&to={START}"), "from="),
        (format!("from=0&to={START}"), "2000 to 2100"),
        (format!("to={START}"), "from is required"),
        (
            format!("from={START}&to={}&step=1s", START + 86_400),
            "points",
        ),
    ] {
        let (status, body) = q(params.clone()).await;
        assert_eq!(status, 400, "{params}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{params}: {error}");
    }
    let (status, body) = get_json(fx.port, &format!("/api/v1/tenants/acme/query?{ok}"), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = get_json(
        fx.port,
        &format!("/api/v1/tenants/acme/query?{ok}"),
        Some("guess"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = get_json(
        fx.port,
        "/api/v1/tenants/Not%20a%20tenant/series",
        Some("acme-secret"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}
