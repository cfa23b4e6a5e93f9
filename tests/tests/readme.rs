//! The README against the code: its configuration reference lists exactly
//! the keys each binary accepts, with their defaults, and its Grafana
//! queries run on a real PostgreSQL and return what they say.

use std::collections::{BTreeMap, BTreeSet};

use dash_shared::events::EventMetric;
use dash_shared::wire::{self, Event, Limits};
use dash_shared::{AgentId, AgentStatus, Batch, Message, SeriesBlock, SeriesKey, TenantId};
use dash_tests::fixture::{encode, stream};
use dash_tests::pg::TestPostgres;

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Keys whose value is a table of the user's own keys, not of settings.
const MAPS: &[&str] = &[
    "devices.mappings[].tags",
    "transform[].device_map",
    "transform[].lookup",
];

/// Every setting in `value` as `path -> Some(default)`; paths inside arrays
/// of tables use `[]` and carry no default (their values are examples).
fn flatten(
    path: &str,
    value: &toml::Value,
    in_array: bool,
    out: &mut BTreeMap<String, Option<String>>,
) {
    let join = |key: &str| match path {
        "" => key.to_owned(),
        _ => format!("{path}.{key}"),
    };
    match value {
        toml::Value::Table(table) if !MAPS.contains(&path) => {
            for (key, value) in table {
                flatten(&join(key), value, in_array, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
            // An array of tables: its elements' keys.
            for item in items {
                flatten(&format!("{path}[]"), item, true, out);
            }
        }
        // An empty array of tables in the defaults: its keys come from the examples.
        toml::Value::Array(items) if items.is_empty() && !in_array => {}
        value => {
            let shown = (!in_array).then(|| value.to_string());
            out.insert(path.to_owned(), shown);
        }
    }
}

/// What the binary accepts: its defaults and the examples that set every
/// other key.
fn code_keys(defaults: &str, examples: &str) -> BTreeMap<String, Option<String>> {
    let mut keys = BTreeMap::new();
    let defaults: toml::Value = toml::from_str(defaults).unwrap();
    flatten("", &defaults, false, &mut keys);
    let examples: toml::Value = toml::from_str(examples).unwrap();
    let mut example_keys = BTreeMap::new();
    flatten("", &examples, false, &mut example_keys);
    for (key, default) in example_keys {
        keys.entry(key).or_insert(default);
    }
    keys
}

/// `key -> default cell` from the README table between the markers.
fn documented(readme: &str, binary: &str) -> BTreeMap<String, String> {
    let start = format!("<!-- config-reference: {binary} -->");
    let (_, rest) = readme
        .split_once(&start)
        .unwrap_or_else(|| panic!("README has no {start}"));
    let (table, _) = rest
        .split_once("<!-- /config-reference -->")
        .expect("the reference table is closed");
    let mut rows = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        assert!(cells.len() >= 3, "README row without three cells: {line}");
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        let default = cells[1].trim().to_owned();
        assert!(
            rows.insert(key.clone(), default).is_none(),
            "{binary}: `{key}` is listed twice"
        );
    }
    rows
}

fn check_reference(binary: &str, defaults: &str, examples: &str) {
    let code = code_keys(defaults, examples);
    let readme = documented(&readme(), binary);
    let code_set: BTreeSet<&String> = code.keys().collect();
    let readme_set: BTreeSet<&String> = readme.keys().collect();
    let undocumented: Vec<_> = code_set.difference(&readme_set).collect();
    let unknown: Vec<_> = readme_set.difference(&code_set).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "{binary}: keys the code has that the README's reference lacks: {undocumented:?}; \
         keys the README lists that the code does not have: {unknown:?}"
    );
    for (key, default) in &code {
        let Some(default) = default else { continue };
        let cell = &readme[key];
        assert!(
            cell.starts_with(&format!("`{default}`")),
            "{binary}: the README gives `{key}` the default {cell}, the code {default}"
        );
    }
    // The check can fail: the tables are not empty and hold nested keys.
    assert!(code.len() > 25, "{binary}: only {} keys found", code.len());
    assert!(code.keys().any(|k| k.contains("[].")));
}

#[test]
fn the_agent_reference_lists_every_key_and_default() {
    check_reference(
        "dash-agent",
        &dash_agent::config::default_toml(),
        &dash_agent::config::examples_toml(),
    );
}

#[test]
fn the_aggregator_reference_lists_every_key_and_default() {
    check_reference(
        "dash-aggregator",
        &dash_aggregator::config::default_toml(),
        &dash_aggregator::config::examples_toml(),
    );
}

#[test]
fn a_missing_or_wrong_row_is_found() {
    let defaults = "a = 1\n[b]\nc = \"x\"\n";
    let table = |rows: &str| {
        format!(
            "<!-- config-reference: t -->\n| Key | Default | Meaning |\n|---|---|---|\n{rows}<!-- /config-reference -->"
        )
    };
    let good = table("| `a` | `1` | one |\n| `b.c` | `\"x\"` | see |\n");
    let keys = code_keys(defaults, "");
    let rows = documented(&good, "t");
    assert_eq!(
        keys.keys().collect::<Vec<_>>(),
        rows.keys().collect::<Vec<_>>()
    );
    let wrong_default = documented(&table("| `a` | `2` | one |\n"), "t");
    assert!(!wrong_default["a"].starts_with("`1`"));
}

const FROM: &str = "2026-11-20T00:00:00Z";
const TO: &str = "2026-11-21T00:00:00Z";

/// Grafana's PostgreSQL macros, expanded as Grafana does for the range
/// [FROM, TO].
fn expand_macros(sql: &str) -> String {
    let mut out = sql
        .replace("$__timeFrom()", &format!("'{FROM}'"))
        .replace("$__timeTo()", &format!("'{TO}'"));
    while let Some(at) = out.find("$__timeFilter(") {
        let open = at + "$__timeFilter(".len();
        let close = open + out[open..].find(')').expect("closed macro");
        let column = out[open..close].to_owned();
        out.replace_range(at..=close, &format!("{column} BETWEEN '{FROM}' AND '{TO}'"));
    }
    assert!(!out.contains("$__"), "a macro left unexpanded: {out}");
    out
}

/// The README's ```sql blocks under "Reading the tiers from Grafana".
fn grafana_queries(readme: &str) -> Vec<String> {
    let (_, section) = readme
        .split_once("## Reading the tiers from Grafana")
        .expect("README has the Grafana section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

const HOUR: i64 = 3_600_000_000;
/// FROM in Unix microseconds (`date -u -d 2026-11-20T00:00:00Z +%s`).
const START: i64 = 1_795_132_800_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_queries_run_and_answer() {
    let pg = TestPostgres::start().await;
    let ingest = pg.ingestor().with_event_metrics(vec![EventMetric {
        kind: "sale".into(),
        field: "amount".into(),
        metric: "sales.amount".into(),
        tags: vec!["location".into(), "item".into()],
    }]);
    let tenant = TenantId::new("acme").unwrap();
    let agent = AgentId::new("store-1").unwrap();
    let start = START;
    // A reading a minute for the day, and twelve sales from two tills.
    let times: Vec<i64> = (0..1440).map(|m| start + m * 60_000_000).collect();
    let values: Vec<f64> = (0..1440).map(|m| 60.0 + (m % 60) as f64 / 10.0).collect();
    let events: Vec<Event> = (0..12)
        .map(|i| Event {
            source: format!("till-{}", i % 2),
            time: start + (i + 8) * HOUR,
            kind: "sale".into(),
            body: format!(
                r#"{{"amount": {}.50, "item": "coffee", "location": "{}"}}"#,
                i + 1,
                if i % 2 == 0 { "front" } else { "terrace" }
            ),
        })
        .collect();
    let batch = Batch {
        stream: stream(1),
        seq: 1,
        floor: 1,
        series: vec![SeriesBlock {
            key: SeriesKey::new("boiler-1", "temperature"),
            timestamps: times,
            values,
        }],
        windows: Vec::new(),
        events,
    };
    let bytes = encode(&batch);
    let ack = ingest.handle(&tenant, &agent, &bytes).await.unwrap();
    assert!(
        ack.is_some_and(|a| a.seq == 1),
        "the batch is stored and acked"
    );
    let status = AgentStatus {
        online: true,
        version: "test".into(),
        time: start,
        ..AgentStatus::default()
    };
    let bytes = wire::encode(&Message::Status(status), &Limits::default()).unwrap();
    ingest.record_status(&tenant, &agent, &bytes).await.unwrap();

    let queries = grafana_queries(&readme());
    assert_eq!(queries.len(), 5, "the README's Grafana queries");
    let mut rows = Vec::new();
    for sql in &queries {
        let sql = expand_macros(sql);
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({sql}) AS q"))
            .fetch_one(&pg.pool)
            .await
            .unwrap_or_else(|e| panic!("README query failed: {e}\n{sql}"));
        rows.push(n);
    }
    // Hourly: 24 hours; raw: 1,440 readings; daily sales: one day, two
    // locations; the last ten sales; one gateway.
    assert_eq!(rows, vec![24, 1440, 2, 10, 1]);

    // And the values are the ones stored: the hourly average is the mean of
    // the hour's readings, the day's sales their sum.
    let hourly: f64 = sqlx::query_scalar(&format!(
        "SELECT temperature FROM ({}) q LIMIT 1",
        expand_macros(&queries[0])
    ))
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert!((hourly - 62.95).abs() < 1e-9, "hourly average {hourly}");
    let sales: f64 = sqlx::query_scalar(&format!(
        "SELECT sum(sales) FROM ({}) q",
        expand_macros(&queries[2])
    ))
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert!((sales - 84.0).abs() < 1e-9, "sales {sales}");
}
