//! The agent's own device listener: TLS and a login per device.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agents_device_listener_takes_tls_and_asks_each_device_to_log_in() {
    dash_tests::init_tracing();
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (broker, http, devices) = (free_port(), free_port(), free_port());
    let ca = d.join("ca");
    ca_init(d, &pg, &ca);
    let password = "f3a9c1d27b6e4058";
    let digest = dash_aggregator::auth::registry::token_digest(password);
    let mut aggregator = process::aggregator(d, &pg.url, broker, http, &[]);
    aggregator.start();
    let mut agent = process::agent_with(
        d,
        "acme",
        "gw-1",
        process::DeviceSource::Listen(devices),
        broker,
        &format!(
            "[[devices.credentials]]\nusername = \"sensor-7\"\npassword_sha256 = \"{digest}\"\n"
        ),
    )
    .with_env(
        "DASH_DEVICES__TLS_CERT",
        ca.join("server.pem").display().to_string(),
    )
    .with_env(
        "DASH_DEVICES__TLS_KEY",
        ca.join("server.key").display().to_string(),
    );
    agent.start();
    let ca_pem = ca.join("ca.pem");

    // The right login over TLS: readings are acknowledged and stored.
    let (c, mut events) = client(
        "sensor-7",
        devices,
        Some(&ca_pem),
        None,
        Some(("sensor-7", password)),
    );
    let mut answer = Answer::Failed("agent not up".into());
    for _ in 0..50 {
        answer = poll_connack(&mut events).await;
        if answer == Answer::Accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer, Answer::Accepted);
    for v in 0..20 {
        c.publish(
            "sensors/sensor-7/temp",
            QoS::AtLeastOnce,
            false,
            v.to_string(),
        )
        .await
        .unwrap();
    }
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        let mut acked = 0;
        while acked < 20 {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = events.poll().await {
                acked += 1;
            }
        }
        acked
    })
    .await
    .unwrap();
    assert_eq!(acked, 20);
    eventually(
        Duration::from_secs(30),
        "the device's readings to be stored",
        || async { (rows_of(&pg, "acme", "sensor-7").await.len() == 20).then_some(()) },
    )
    .await;

    // A wrong password, no login, and plain MQTT on the TLS port: refused.
    let (_c, events) = client(
        "guess",
        devices,
        Some(&ca_pem),
        None,
        Some(("sensor-7", "wrong")),
    );
    assert_eq!(
        first_answer(events).await,
        Answer::Refused(ConnectReturnCode::BadUserNamePassword)
    );
    let (_c, events) = client("anon", devices, Some(&ca_pem), None, None);
    assert_eq!(
        first_answer(events).await,
        Answer::Refused(ConnectReturnCode::BadUserNamePassword)
    );
    let (_c, events) = client("plain", devices, None, None, Some(("sensor-7", password)));
    assert!(
        matches!(first_answer(events).await, Answer::Failed(_)),
        "plain MQTT on a TLS listener"
    );
    assert_eq!(rows_of(&pg, "acme", "sensor-7").await.len(), 20);
    for p in [&mut agent, &mut aggregator] {
        p.terminate(Duration::from_secs(10));
    }
}
