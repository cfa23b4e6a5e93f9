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
    let (gate, rumqttd) = (first.broker, first.embedded_broker);
    assert!(
        tokio::net::TcpStream::connect(rumqttd).await.is_ok(),
        "the embedded rumqttd is not listening"
    );
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
    // The broker stopped with it: the gate and the rumqttd behind it.
    for (what, addr) in [("gate", gate), ("embedded rumqttd", rumqttd)] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the {what} port {addr} is still open after stop"
        );
    }

    // Nothing process-wide stops a second one, on other ports.
    let second = TestApp::spawn(&pg.url, |c| c.ingest.workers = 2).await;
    assert_ne!(second.http.port(), port);
    ready(&second).await;
    second.stop().await.unwrap();
}

/// What a raw client reads next: `n` bytes, or `None` at a close.
async fn read_n(s: &mut tokio::net::TcpStream, n: usize) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        Ok(Err(_)) => None,
        Err(_) => panic!("neither {n} bytes nor a close within 10 s"),
    }
}

/// A 3.1.1 CONNECT for `id` with this keep-alive.
fn connect(id: &str, keep_alive: u16) -> Vec<u8> {
    let mut c = rumqttc::mqttbytes::v4::Connect::new(id);
    c.keep_alive = keep_alive;
    let mut out = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(c)
        .write(&mut out, usize::MAX)
        .unwrap();
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_answers_as_mqtt_3_1_1_says_where_rumqttd_would_not() {
    use tokio::io::AsyncWriteExt;
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |_| {}).await;
    let open = || tokio::net::TcpStream::connect(app.broker);

    // MQTT 5: "unacceptable protocol version" (0x01), not 0x02, and a close.
    let mut c = open().await.unwrap();
    let v5 = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 0, 0, 1, b'x',
    ];
    c.write_all(&v5[..15]).await.unwrap();
    c.write_all(&v5[15..]).await.unwrap();
    assert_eq!(read_n(&mut c, 4).await, Some(vec![0x20, 2, 0, 1]));
    assert_eq!(read_n(&mut c, 1).await, None);

    // Keep-alive 0 (rumqttd's ZeroKeepAlive) is accepted.
    let mut c = open().await.unwrap();
    c.write_all(&connect("ka0", 0)).await.unwrap();
    assert_eq!(read_n(&mut c, 4).await, Some(vec![0x20, 2, 0, 0]));
    // An UNSUBSCRIBE of a filter never subscribed gets its UNSUBACK.
    c.write_all(&[0xa2, 5, 0, 4, 0, 1, b'z']).await.unwrap();
    assert_eq!(read_n(&mut c, 4).await, Some(vec![0xb0, 2, 0, 4]));
    // A PINGREQ of its own is still answered.
    c.write_all(&[0xc0, 0]).await.unwrap();
    assert_eq!(read_n(&mut c, 2).await, Some(vec![0xd0, 0]));
    // A second CONNECT closes (3.1.0-2).
    c.write_all(&connect("ka0", 0)).await.unwrap();
    assert_eq!(read_n(&mut c, 1).await, None);
    app.stop().await.unwrap();
}

/// Two agents and an aggregator in one process: each agent has its own
/// clock and listener, both deliver exactly once, and each stops with its
/// port closed. The kill and fault suites keep real processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_and_stop_in_one_process_beside_an_aggregator() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use dash_tests::app::TestAgent;
    use dash_tests::device::{self, assert_delivered};

    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |_| {}).await;
    ready(&app).await;
    let one = TestAgent::spawn("acme", "gw-1", app.broker, |_| {}).await;
    let two = TestAgent::spawn("acme", "gw-2", app.broker, |_| {}).await;
    assert_ne!(one.devices, two.devices);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        device::publish(one.devices, "s-1", "temp", 0..50, stop.clone(), deadline),
        device::publish(two.devices, "s-2", "temp", 0..50, stop.clone(), deadline),
    );
    assert_eq!((a.acked.len(), b.acked.len()), (50, 50));
    assert_delivered(&pg, "acme", &[("s-1", &a), ("s-2", &b)]).await;
    for agent in [one, two] {
        let addr = agent.devices;
        agent.stop().await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the device listener {addr} is still open after stop"
        );
    }
    app.stop().await.unwrap();
}
