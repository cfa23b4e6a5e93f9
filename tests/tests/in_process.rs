//! The aggregator started and stopped in-process, as the API and browser
//! suites will use it ([`dash_tests::app::TestApp`]).

use std::time::Duration;

use dash_tests::app::TestApp;
use dash_tests::pg::TestPostgres;
use dash_tests::{eventually, get_text};

async fn ready(app: &TestApp) {
    let port = app.http.port();
    eventually(Duration::from_secs(30), "/readyz 200", || async {
        get_text(port, "/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_start_and_stop_in_one_process_on_ports_they_chose() {
    let pg = TestPostgres::start().await;
    let first = TestApp::spawn(&pg.url, |_| {}).await;
    assert_ne!(first.http.port(), 0);
    assert_ne!(first.broker.port(), 0);
    ready(&first).await;
    assert_eq!(
        get_text(first.http.port(), "/healthz").await.map(|r| r.0),
        Some(200)
    );
    let port = first.http.port();
    first.stop().await.unwrap();
    // Stopped means stopped: its HTTP task ended with it.
    assert!(
        get_text(port, "/healthz").await.is_none(),
        "still answering after stop"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the HTTP port is still open"
    );

    // Nothing process-wide stops a second one, on other ports.
    let second = TestApp::spawn(&pg.url, |c| c.ingest.workers = 2).await;
    assert_ne!(second.http.port(), port);
    ready(&second).await;
    second.stop().await.unwrap();
}
