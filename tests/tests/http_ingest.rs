//! The agent's HTTP input for POS systems, end to end with real processes:
//! POST -> dash-agent (durable buffer) -> MQTT -> dash-aggregator -> PostgreSQL.

use std::time::Duration;

use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource};
use dash_tests::{eventually, free_port, post_json};
use serde_json::json;

const TOKEN: &str = "till-secret";

struct Setup {
    _dir: tempfile::TempDir,
    pg: TestPostgres,
    http: u16,
    aggregator: process::Proc,
    agent: process::Proc,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, agg_http, devices, http) = (free_port(), free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, agg_http, &[]);
    aggregator.start();
    let hash = dash_runtime::secret::sha256_hex(TOKEN);
    let extra = format!(
        r#"[http]
listen = "127.0.0.1:{http}"
max_body_bytes = 65536

[[http.sources]]
name = "pos"
token_sha256 = "{hash}"
kind = "sale"
time_field = "time"
source_field = "till"

[[http.sources.metrics]]
field = "amount"
metric = "sales.amount"
tags = ["location", "item"]
"#
    );
    let mut agent = process::agent_with(
        dir.path(),
        "bistro",
        "pos-box",
        DeviceSource::Listen(devices),
        broker,
        &extra,
    );
    agent.start();
    eventually(
        Duration::from_secs(30),
        "the agent's HTTP input",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", http))
                .await
                .ok()
        },
    )
    .await;
    Setup {
        _dir: dir,
        pg,
        http,
        aggregator,
        agent,
    }
}

/// An hour ago, to the second: within the raw tier's 7 days, whatever the
/// date (a fixed date fell out of it a week after it was written).
fn sale_time() -> &'static str {
    static AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    AT.get_or_init(|| {
        (chrono::Utc::now() - chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
}

fn sale(id: usize) -> serde_json::Value {
    json!({
        "id": id,
        "till": format!("till-{}", id % 3),
        "time": sale_time(),
        "location": "soho",
        "item": if id.is_multiple_of(2) { "coffee" } else { "cake" },
        "amount": (id % 50) as f64 / 4.0,
    })
}

async fn count(pg: &TestPostgres, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&pg.pool).await.unwrap()
}

#[tokio::test]
async fn a_retried_post_is_stored_once_and_bad_requests_are_refused_by_name() {
    let mut s = setup().await;
    let body = serde_json::to_vec(&sale(7)).unwrap();
    let (status, first) = post_json(s.http, "/ingest/pos", TOKEN, Some("sale-7"), &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first, json!({ "events": 1, "samples": 1 }));
    let (status, again) = post_json(s.http, "/ingest/pos", TOKEN, Some("sale-7"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true, "{again}");

    for (body, needle) in [
        (b"{\"amount\": ".to_vec(), "not JSON"),
        (b"[1]".to_vec(), "item 0 is not a JSON object"),
        (b"\"sale\"".to_vec(), "object or an array"),
        (br#"{"time": "yesterday", "amount": 1}"#.to_vec(), "time"),
        (br#"{"time": 12, "amount": 1}"#.to_vec(), "2000 to 2100"),
    ] {
        let (status, reply) = post_json(s.http, "/ingest/pos", TOKEN, None, &body).await;
        assert_eq!(status, 400, "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
    let (status, _) = post_json(s.http, "/ingest/pos", "wrong", None, &body).await;
    assert_eq!(status, 401);
    let (status, _) = post_json(s.http, "/ingest/nope", TOKEN, None, &body).await;
    assert_eq!(status, 401);
    let big = serde_json::to_vec(&json!({ "pad": "x".repeat(70_000) })).unwrap();
    let (status, _) = post_json(s.http, "/ingest/pos", TOKEN, None, &big).await;
    assert_eq!(status, 413);

    eventually(
        Duration::from_secs(30),
        "the sale in PostgreSQL",
        || async { (count(&s.pg, "SELECT count(*) FROM events").await == 1).then_some(()) },
    )
    .await;
    let (till, item, amount): (String, String, f64) = sqlx::query_as(
        "SELECT s.device, s.tags->>'item', x.value FROM samples x JOIN series s ON s.id = x.series_id
         WHERE s.metric = 'sales.amount'",
    )
    .fetch_one(&s.pg.pool)
    .await
    .unwrap();
    assert_eq!(
        (till.as_str(), item.as_str(), amount),
        ("till-1", "cake", 1.75)
    );
    let stored: (String, String, String) =
        sqlx::query_as("SELECT tenant, source, kind FROM events")
            .fetch_one(&s.pg.pool)
            .await
            .unwrap();
    assert_eq!(stored, ("bistro".into(), "till-1".into(), "sale".into()));
    assert!(
        s.agent.terminate(Duration::from_secs(10)),
        "{}",
        s.agent.log()
    );
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
}

#[tokio::test]
async fn a_burst_of_10000_pos_transactions_arrives_exactly_once() {
    const N: usize = 10_000;
    const CLIENTS: usize = 20;
    let mut s = setup().await;
    let port = s.http;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            for id in (c..N).step_by(CLIENTS) {
                let body = serde_json::to_vec(&sale(id)).unwrap();
                let key = format!("sale-{id}");
                // Every tenth sale is retried, as a POS does when an answer is lost.
                for _ in 0..1 + usize::from(id.is_multiple_of(10)) {
                    let (status, reply) =
                        post_json(port, "/ingest/pos", TOKEN, Some(&key), &body).await;
                    assert_eq!(status, 200, "{reply}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually(
        Duration::from_secs(120),
        "10,000 sales in PostgreSQL",
        || async { (count(&s.pg, "SELECT count(*) FROM events").await >= N as i64).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // anything extra would land now
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT body->>'id') FROM events")
            .fetch_one(&s.pg.pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (N as i64, N as i64));
    let expected: f64 = (0..N).map(|id| (id % 50) as f64 / 4.0).sum();
    let (samples, sum): (i64, f64) = sqlx::query_as(
        "SELECT count(*), sum(x.value) FROM samples x JOIN series s ON s.id = x.series_id
         WHERE s.metric = 'sales.amount'",
    )
    .fetch_one(&s.pg.pool)
    .await
    .unwrap();
    assert_eq!(samples, N as i64);
    assert!((sum - expected).abs() < 1e-6, "{sum} != {expected}");
    assert!(
        s.agent.terminate(Duration::from_secs(10)),
        "{}",
        s.agent.log()
    );
    assert!(s.aggregator.terminate(Duration::from_secs(15)));
}
