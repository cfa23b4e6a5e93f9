//! The same guarantee with Mosquitto in front, configured as docs/security.md says.

use super::*;

/// The fenced block after `<!-- NAME -->` in docs/security.md.
fn documented(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let (_, rest) = doc
        .split_once(&format!("<!-- {name} -->\n```\n"))
        .unwrap_or_else(|| panic!("docs/security.md has no {name} block"));
    rest.split("```").next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mosquitto_with_the_documented_certificates_and_acls_gives_the_same_guarantee() {
    dash_tests::init_tracing();
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, http, device_a) = (free_port(), free_port(), free_port());
    let ca = d.join("ca");
    ca_init(d, &pg, &ca);
    let uplink = format!("mqtts://127.0.0.1:{port}");
    let gw1 = add_agent(d, &pg, "acme", "gw-1", &uplink, &[]);
    let gw2 = add_agent(d, &pg, "acme", "gw-2", &uplink, &[]);
    let gone = add_agent(d, &pg, "acme", "gw-3", &uplink, &[]);

    // docs/security.md's two files, with this test's paths and port.
    let acl = d.join("dash.acl");
    std::fs::write(&acl, documented("dash.acl")).unwrap();
    let conf = documented("mosquitto.conf")
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace("/etc/mosquitto/certs/", &format!("{}/", ca.display()))
        .replace("/etc/mosquitto/dash.acl", acl.to_str().unwrap());
    // Mosquitto stays root here, so it reads the files where `ca init` put them.
    let _mosquitto = process::Mosquitto::with_config(
        d,
        &format!("{conf}\npersistence false\nlog_type all\nuser root\n"),
    );

    let mut aggregator = process::aggregator(
        d,
        &pg.url,
        free_port(),
        http,
        &process::external_broker_env(&ca, &uplink),
    );
    aggregator.start();
    let mut agent1 = provisioned_agent(d, &gw1, "gw-1", device_a);
    agent1.start();
    let addr: SocketAddr = format!("127.0.0.1:{device_a}").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sensor = device::background(addr, "boiler", stop.clone());
    eventually(
        Duration::from_secs(60),
        "readings through Mosquitto over mutual TLS",
        || async { (rows_of(&pg, "acme", "boiler").await.len() > 200).then_some(()) },
    )
    .await;

    // No certificate: Mosquitto refuses the handshake.
    let ca_pem = ca.join("ca.pem");
    let (_c, events) = client("anon", port, Some(&ca_pem), None, None);
    assert!(
        matches!(first_answer(events).await, Answer::Failed(_)),
        "no certificate"
    );

    // gw-2 publishing as gw-1 or into another tenant: the ACL drops it.
    let gw2_cert = (gw2.join("agent.pem"), gw2.join("agent.key"));
    for (n, topic) in ["dash/v1/acme/gw-1/batch", "dash/v1/globex/gw-2/batch"]
        .iter()
        .enumerate()
    {
        let (c, mut events) = client(
            &format!("intruder-{n}"),
            port,
            Some(&ca_pem),
            Some((&gw2_cert.0, &gw2_cert.1)),
            None,
        );
        assert_eq!(poll_connack(&mut events).await, Answer::Accepted);
        c.publish(
            *topic,
            QoS::AtLeastOnce,
            false,
            batch_payload("intruder", 10),
        )
        .await
        .unwrap();
        // Drive the connection long enough for the publish to go out and be acked.
        closed_within(&mut events, 2).await;
    }
    // gw-3, revoked, publishing on its own topic: Mosquitto (started before
    // the revocation) lets it in; the aggregator refuses to store it.
    revoke(d, &pg, &ca, "gw-3");
    let (c, mut events) = client(
        "gw-3",
        port,
        Some(&ca_pem),
        Some((&gone.join("agent.pem"), &gone.join("agent.key"))),
        None,
    );
    assert_eq!(poll_connack(&mut events).await, Answer::Accepted);
    c.publish(
        "dash/v1/acme/gw-3/batch",
        QoS::AtLeastOnce,
        false,
        batch_payload("revoked", 10),
    )
    .await
    .unwrap();
    closed_within(&mut events, 2).await;
    eventually(
        Duration::from_secs(20),
        "the revoked agent's batch to be refused",
        || async { (refused(http, "ingest", "revoked").await >= 1.0).then_some(()) },
    )
    .await;
    let before = rows_of(&pg, "acme", "boiler").await.len();
    eventually(
        Duration::from_secs(30),
        "gw-1 to go on delivering",
        || async { (rows_of(&pg, "acme", "boiler").await.len() > before + 100).then_some(()) },
    )
    .await;
    assert_eq!(
        stored_for(&pg, "intruder").await,
        0,
        "the ACL kept the intruder out"
    );
    assert_eq!(
        stored_for(&pg, "revoked").await,
        0,
        "the revoked agent's batch is not stored"
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sensor.await;
    for p in [&mut agent1, &mut aggregator] {
        p.terminate(Duration::from_secs(10));
    }
}
