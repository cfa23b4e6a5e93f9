//! The simulator's MQTT devices and POS, as the demo runs them, through a
//! real agent and aggregator into PostgreSQL.

use std::time::Duration;

use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, DeviceSource};
use dash_tests::{eventually, free_port};

#[tokio::test]
async fn simulated_mqtt_devices_and_pos_sales_reach_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await;
    let (broker, agg_http, devices, http) = (free_port(), free_port(), free_port(), free_port());
    let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, agg_http, &[]);
    aggregator.start();
    let hash = dash_runtime::secret::sha256_hex("sim-token");
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[[http.sources]]\nname = \"pos\"\ntoken_sha256 = \"{hash}\"\nkind = \"sale\"\ntime_field = \"time\"\nsource_field = \"till\"\n\n[[http.sources.metrics]]\nfield = \"amount\"\nmetric = \"sales.amount\"\n"
    );
    let mut agent = process::agent_with(
        dir.path(),
        "demo",
        "gw-1",
        DeviceSource::Listen(devices),
        broker,
        &extra,
    );
    agent.start();
    let mqtt = tokio::spawn(dash_sim::mqtt_devices(
        std::net::SocketAddr::from(([127, 0, 0, 1], devices)),
        3,
        Duration::from_millis(100),
    ));
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
    let sold = dash_sim::pos(
        std::net::SocketAddr::from(([127, 0, 0, 1], http)),
        "/ingest/pos",
        "sim-token",
        50.0,
        20,
    )
    .await
    .unwrap();
    assert_eq!(sold, 20);
    eventually(
        Duration::from_secs(60),
        "6 sensor series and 20 sales",
        || async {
            let series: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT series_id) FROM samples x JOIN series s ON s.id = x.series_id
             WHERE s.device LIKE 'th-%' AND s.metric IN ('temperature', 'humidity')",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap();
            let sales: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'sale'")
                .fetch_one(&pg.pool)
                .await
                .unwrap();
            (series == 6 && sales == 20).then_some(())
        },
    )
    .await;
    mqtt.abort();
    assert!(agent.terminate(Duration::from_secs(10)), "{}", agent.log());
    assert!(aggregator.terminate(Duration::from_secs(15)));
}
