//! Logs fit where they go: no colour codes in a file or the journal, and
//! one JSON object per line when asked for.

use std::time::Duration;

use dash_tests::process::{self, DeviceSource, Proc};
use dash_tests::{eventually, free_port};

async fn ready(agent: &Proc) -> String {
    eventually(Duration::from_secs(20), "the agent is ready", || async {
        let log = agent.log();
        log.contains("agent ready").then_some(log)
    })
    .await
}

#[tokio::test]
async fn a_redirected_log_is_plain_text_without_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = process::agent(
        dir.path(),
        "acme",
        "gw-logs",
        DeviceSource::Listen(free_port()),
        free_port(),
    );
    agent.start();
    let log = ready(&agent).await;
    assert!(agent.terminate(Duration::from_secs(10)));
    assert!(!log.contains('\x1b'), "colour codes in a file:\n{log:?}");
    assert!(log.contains(" INFO ") && log.contains("buffer open"));
}

#[tokio::test]
async fn the_json_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = process::agent(
        dir.path(),
        "acme",
        "gw-json",
        DeviceSource::Listen(free_port()),
        free_port(),
    )
    .with_env("DASH_LOG_FORMAT", "json");
    agent.start();
    ready(&agent).await;
    assert!(agent.terminate(Duration::from_secs(10)));
    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["message"] == "agent ready")
        .expect("an 'agent ready' object");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["tenant"], "acme");
    assert_eq!(ready["agent"], "gw-json");
    assert!(
        ready["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "stopped; buffer flushed")
    );
}
