//! The fleet registry: devices registered at ingest, their liveness judged
//! by the sweep, and the places, customers and CSV import behind the API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dash_aggregator::config::QueryToken;
use dash_aggregator::fleet::FleetConfig;
use dash_tests::app::{TestAgent, TestApp};
use dash_tests::device::{self, assert_delivered};
use dash_tests::pg::TestPostgres;
use dash_tests::proxy::Proxy;
use dash_tests::{eventually, get_json};

/// A quick fleet: sweeps every second, devices with a learned cadence may
/// stay silent 3 s, gateways 3 s.
fn quick() -> FleetConfig {
    FleetConfig {
        sweep_secs: 1,
        flush_ms: 200,
        min_learned_secs: 3,
        gateway_silence_secs: 3,
        ..FleetConfig::default()
    }
}

async fn state(pg: &TestPostgres, device: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM devices WHERE tenant = 'acme' AND device = $1")
        .bind(device)
        .fetch_optional(&pg.pool)
        .await
        .unwrap()
}

async fn becomes(pg: &TestPostgres, device: &str, want: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{device} {want}"),
        || async { (state(pg, device).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

/// `(at, from, to)` of a device's transitions, oldest first.
async fn history(pg: &TestPostgres, device: &str) -> Vec<(DateTime<Utc>, String, String)> {
    sqlx::query_as(
        "SELECT at, from_state, to_state FROM device_transitions
         WHERE tenant = 'acme' AND device = $1 ORDER BY at",
    )
    .bind(device)
    .fetch_all(&pg.pool)
    .await
    .unwrap()
}

/// A sensor reporting about 50 readings a second (values 0, 1, 2, ...)
/// until `stop`: what one connection per 5 readings acknowledged.
fn paced(
    addr: std::net::SocketAddr,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<device::Report> {
    tokio::spawn(async move {
        let mut all = device::Report::default();
        let mut next = 0;
        while !stop.load(Ordering::SeqCst) {
            let never = Arc::new(AtomicBool::new(false));
            let r = device::publish(
                addr,
                name,
                "temp",
                next..next + 5,
                never,
                Duration::from_secs(30),
            )
            .await;
            all.acked.extend(r.acked);
            for (v, n) in r.sends {
                *all.sends.entry(v).or_default() += n;
            }
            next += 5;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        all
    })
}

async fn agent(app: &TestApp, name: &str, broker: std::net::SocketAddr) -> TestAgent {
    let _ = app;
    TestAgent::spawn("acme", name, broker, |c| c.uplink.status_interval_secs = 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_register_at_ingest_and_go_offline_within_their_interval_plus_one_sweep() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| c.fleet = quick()).await;
    let gw = agent(&app, "gw-1", app.broker).await;
    let stop = Arc::new(AtomicBool::new(false));
    let report = device::publish(
        gw.devices,
        "s-1",
        "temp",
        0..40,
        stop,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.acked.len(), 40);
    assert_delivered(&pg, "acme", &[("s-1", &report)]).await;
    // Silent now, with its gateway up and reporting: offline, once.
    becomes(&pg, "s-1", "offline").await;
    let (agent, first, last): (Option<String>, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT agent, first_reading, last_reading FROM devices WHERE tenant = 'acme' AND device = 's-1'",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(agent.as_deref(), Some("gw-1"));
    assert!(first <= last);
    let steps = history(&pg, "s-1").await;
    let path: Vec<&str> = steps.iter().map(|(_, _, to)| to.as_str()).collect();
    assert_eq!(path, ["online", "offline"], "{steps:?}");
    let last: DateTime<Utc> = sqlx::query_scalar(
        "SELECT last_reading FROM devices WHERE tenant = 'acme' AND device = 's-1'",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    let late = (steps[1].0 - last).num_milliseconds();
    // Its interval is 3 s (the learned minimum). Not before it; within it,
    // the gateway's next status (1 s) and one sweep (1 s), with 2 s to spare
    // for a loaded machine.
    assert!(late >= 3_000, "offline {late} ms after the last reading");
    assert!(
        late <= 7_000,
        "offline only {late} ms after the last reading"
    );

    gw.stop().await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_leaves_its_devices_unknown_not_offline_and_its_backlog_does_not_flip_them_twice()
 {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| c.fleet = quick()).await;
    let proxy = Proxy::start(app.broker.port()).await;
    let uplink = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let gw = agent(&app, "gw-2", uplink).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sensor = paced(gw.devices, "s-2", stop.clone());
    becomes(&pg, "s-2", "online").await;

    // The gateway loses its uplink; the sensor keeps reporting to it.
    proxy.cut();
    becomes(&pg, "s-2", "unknown").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(state(&pg, "s-2").await.as_deref(), Some("unknown"));

    // Back: the backlog drains and the device is online again.
    proxy.heal();
    becomes(&pg, "s-2", "online").await;
    stop.store(true, Ordering::SeqCst);
    let report = sensor.await.unwrap();
    let steps = history(&pg, "s-2").await;
    let path: Vec<&str> = steps.iter().map(|(_, _, to)| to.as_str()).collect();
    eprintln!("s-2: {steps:?}");
    assert!(!path.contains(&"offline"), "{steps:?}");
    let first_online = path.iter().position(|s| *s == "online").unwrap();
    let after: Vec<&str> = path[first_online..].to_vec();
    assert!(
        after == ["online", "unknown", "online"]
            || after == ["online", "unknown", "delayed", "online"],
        "each state once, in order: {steps:?}"
    );
    eprintln!("s-2: {} readings acknowledged", report.acked.len());
    assert_delivered(&pg, "acme", &[("s-2", &report)]).await;
    gw.stop().await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_customers_and_a_csv_import_scope_the_device_api_to_a_subtree() {
    let pg = TestPostgres::start().await;
    let token = "fleet-token";
    let app = TestApp::spawn(&pg.url, |c| {
        c.fleet = quick();
        c.http.tokens = vec![
            QueryToken {
                tenant: "acme".into(),
                sha256: dash_runtime::secret::sha256_hex(token),
            },
            QueryToken {
                tenant: "other".into(),
                sha256: dash_runtime::secret::sha256_hex("other-token"),
            },
        ];
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = dash_tests::process::aggregator_command(dir.path(), &pg.url)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for args in [
        &[
            "place",
            "add",
            "--tenant",
            "acme",
            "--id",
            "corp",
            "--kind",
            "corporate",
        ][..],
        &[
            "place", "add", "--tenant", "acme", "--id", "west", "--parent", "corp", "--kind",
            "region",
        ],
        &[
            "place", "add", "--tenant", "acme", "--id", "east", "--parent", "corp", "--kind",
            "region",
        ],
        &[
            "place", "add", "--tenant", "acme", "--id", "s-17", "--parent", "west", "--name",
            "Store 17",
        ],
        // '_' is a LIKE wildcard: r_1's subtree must not take in rx1.
        &["place", "add", "--tenant", "acme", "--id", "r_1"],
        &["place", "add", "--tenant", "acme", "--id", "rx1"],
        &[
            "customer",
            "add",
            "--tenant",
            "acme",
            "--id",
            "fr-4",
            "--name",
            "Franchise 4",
        ],
    ] {
        let (ok, said) = cli(args);
        assert!(ok, "{args:?}: {said}");
    }
    let (ok, said) = cli(&[
        "place", "add", "--tenant", "acme", "--id", "x", "--parent", "nowhere",
    ]);
    assert!(
        !ok && said.contains("no parent place \"nowhere\""),
        "{said}"
    );
    let (_, tree) = cli(&["place", "list", "--tenant", "acme"]);
    assert!(
        tree.contains("corp (corp, corporate)\n  east") && tree.contains("    s-17 (Store 17)"),
        "{tree}"
    );

    let csv = dir.path().join("devices.csv");
    std::fs::write(
        &csv,
        "device,place,customer,latitude,longitude,model,labels\n\
         th-1,s-17,fr-4,51.5,-0.12,th-10,zone=cold\n\
         th-2,east,,,,th-10,\n\
         th-3,,,,,,\n\
         th-5,r_1,,,,,\n\
         th-6,rx1,,,,,\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "device,place\nth-9,s-17\nth-10,mars\n").unwrap();
    let (ok, said) = cli(&[
        "device",
        "import",
        "--tenant",
        "acme",
        bad.to_str().unwrap(),
    ]);
    assert!(
        !ok && said.contains("line 3") && said.contains("no place \"mars\""),
        "{said}"
    );
    assert_eq!(state(&pg, "th-9").await, None, "a bad file changes nothing");
    let (ok, said) = cli(&[
        "device",
        "import",
        "--tenant",
        "acme",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");

    let port = app.http.port();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = get_json(port, "/api/v1/tenants/acme/devices", Some(token)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(names(&all), ["th-1", "th-2", "th-3", "th-5", "th-6"]);
    let (_, r1) = get_json(port, "/api/v1/tenants/acme/devices?within=r_1", Some(token)).await;
    assert_eq!(
        names(&r1),
        ["th-5"],
        "a place id with '_' matches only itself: {r1}"
    );
    assert_eq!(all["devices"][0]["state"], "never_reported");
    assert_eq!(all["devices"][0]["labels"]["zone"], "cold");
    let (_, west) = get_json(
        port,
        "/api/v1/tenants/acme/devices?within=west",
        Some(token),
    )
    .await;
    assert_eq!(names(&west), ["th-1"]);
    let (_, corp) = get_json(
        port,
        "/api/v1/tenants/acme/devices?within=corp",
        Some(token),
    )
    .await;
    assert_eq!(names(&corp), ["th-1", "th-2"]);
    let (_, theirs) = get_json(
        port,
        "/api/v1/tenants/acme/devices?customer=fr-4",
        Some(token),
    )
    .await;
    assert_eq!(names(&theirs), ["th-1"]);
    let (status, _) = get_json(
        port,
        "/api/v1/tenants/acme/devices?state=asleep",
        Some(token),
    )
    .await;
    assert_eq!(status, 400);
    let (_, places) = get_json(port, "/api/v1/tenants/acme/places", Some(token)).await;
    let corp = &places["places"][0];
    assert_eq!(corp["place"], "corp");
    assert_eq!(corp["devices"]["never_reported"], 2, "{places}");
    let (status, one) = get_json(port, "/api/v1/tenants/acme/devices/th-1", Some(token)).await;
    assert_eq!(
        (status, &one["device"]["customer"]),
        (200, &serde_json::json!("fr-4"))
    );
    let (status, _) = get_json(port, "/api/v1/tenants/acme/devices/th-404", Some(token)).await;
    assert_eq!(status, 404);

    // Another tenant's token, or none, sees nothing of acme's fleet.
    for path in [
        "/api/v1/tenants/acme/devices",
        "/api/v1/tenants/acme/devices/th-1",
        "/api/v1/tenants/acme/places",
        "/api/v1/tenants/acme/customers",
    ] {
        assert_eq!(get_json(port, path, None).await.0, 401, "{path}");
        assert_eq!(
            get_json(port, path, Some("other-token")).await.0,
            401,
            "{path}"
        );
    }
    // An agent's status with figures past i64 does not stop the sweep.
    sqlx::query(
        "INSERT INTO agent_status (tenant, agent, online, version, reported_at, status)
         VALUES ('acme', 'gw-odd', true, '0', now(),
                 '{\"buffer\": {\"records\": 18446744073709551615, \"oldest\": 18446744073709551615}}')",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE devices SET agent = 'gw-odd', last_reading = now() - interval '1 hour'
         WHERE tenant = 'acme' AND device = 'th-3'",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let changes = dash_aggregator::storage::fleet::sweep(&pg.pool, &quick().rules())
        .await
        .unwrap();
    assert!(
        changes.first.iter().any(|c| c.device == "th-3"),
        "{changes:?}"
    );
    let (_, others) = get_json(port, "/api/v1/tenants/other/devices", Some("other-token")).await;
    assert_eq!(names(&others), Vec::<String>::new());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_status_and_its_last_will_set_its_attributes_and_state() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.fleet = quick();
        c.http.tokens = vec![QueryToken {
            tenant: "acme".into(),
            sha256: dash_runtime::secret::sha256_hex("acme-token"),
        }];
    })
    .await;
    let gw = TestAgent::spawn("acme", "gw-1", app.broker, |c| {
        c.uplink.status_interval_secs = 1;
        c.devices.mappings.insert(
            0,
            toml::from_str(
                "topic = 'devices/{device}/status'\nkind = 'status'\nfirmware_path = 'fw'",
            )
            .unwrap(),
        );
        c.transform = toml::from_str::<toml::Table>(
            r#"
            [[transform]]
            device = "PRESS-*"
            lowercase_device = true

            [[transform]]
            metric = "error_code"
            lookup = { "17" = "motor overheat", "E-2" = "door open" }
            lookup_event = "fault"
            "#,
        )
        .unwrap()["transform"]
            .clone()
            .try_into()
            .unwrap();
    })
    .await;

    // The device says who it is and what is wrong, and leaves a last will.
    let mut opts = rumqttc::MqttOptions::new("PRESS-1", "127.0.0.1", gw.devices.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_last_will(rumqttc::LastWill::new(
        "devices/PRESS-1/status",
        "offline",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let device = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
        .publish(
            "devices/PRESS-1/status",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"online": true, "fw": "4.2.0", "model": "PX-9", "errors": [17, "E-2", 99]}"#,
        )
        .await
        .unwrap();
    let path = "/api/v1/tenants/acme/devices/press-1";
    let shown = eventually(
        Duration::from_secs(60),
        "the status in the registry",
        || async {
            let (status, body) = get_json(app.http.port(), path, Some("acme-token")).await;
            (status == 200 && body["device"]["firmware"] == "4.2.0").then_some(body)
        },
    )
    .await;
    let d = &shown["device"];
    assert_eq!(d["model"], "PX-9");
    assert_eq!(d["reported_online"], true);
    assert_eq!(
        d["errors"],
        serde_json::json!([
            { "code": "17", "message": "motor overheat" },
            { "code": "E-2", "message": "door open" },
            { "code": "99", "message": null },
        ])
    );
    becomes(&pg, "press-1", "online").await;
    // The status event is stored once, as any event is.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE tenant = 'acme' AND source = 'press-1' AND kind = 'device.status'",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // Gone without a DISCONNECT: the agent publishes its will, and the
    // device is offline at once (it said so), not after its interval.
    device.abort();
    drop(client);
    becomes(&pg, "press-1", "offline").await;
    let (status, body) = get_json(app.http.port(), path, Some("acme-token")).await;
    assert_eq!(status, 200);
    assert_eq!(body["device"]["reported_online"], false);
    assert_eq!(
        body["device"]["firmware"], "4.2.0",
        "a will says only offline"
    );
    assert_eq!(body["transitions"][0]["to_state"], "offline");
    assert_eq!(body["transitions"][0]["detail"]["reported_online"], false);

    // Back, with its errors cleared: online again.
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("PRESS-1b", "127.0.0.1", gw.devices.port()),
        10,
    );
    let device = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
        .publish(
            "devices/PRESS-1/status",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"online": true, "errors": []}"#,
        )
        .await
        .unwrap();
    becomes(&pg, "press-1", "online").await;
    let (_, body) = get_json(app.http.port(), path, Some("acme-token")).await;
    assert_eq!(body["device"]["errors"], serde_json::json!([]));
    device.abort();
    gw.stop().await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_older_than_the_stored_one_changes_nothing_it_said() {
    use dash_aggregator::fleet::tracker::{Report, Seen};
    let pg = TestPostgres::start().await;
    let now = Utc::now().timestamp_micros();
    let seen = |at: Micros, online: bool, firmware: &str, errors: Option<&str>| {
        vec![(
            (
                dash_shared::TenantId::new("acme").unwrap(),
                "p-1".to_owned(),
            ),
            Seen {
                agent: dash_shared::AgentId::new("gw").unwrap(),
                first: at,
                last: at,
                arrival: now,
                cadence_ms: None,
                report: Some(Report {
                    time: at,
                    online: Some(online),
                    firmware: Some(firmware.into()),
                    model: None,
                    errors: errors.map(String::from),
                }),
            },
        )]
    };
    type Micros = i64;
    let record = dash_aggregator::storage::fleet::record_seen;
    record(
        &pg.pool,
        &seen(
            now,
            true,
            "2.0",
            Some(r#"[{"code": "1", "message": null}]"#),
        ),
    )
    .await
    .unwrap();
    // A backlog drained later: older, so it sets nothing it says.
    record(&pg.pool, &seen(now - 60_000_000, false, "1.0", Some("[]")))
        .await
        .unwrap();
    let row: (
        Option<bool>,
        Option<String>,
        serde_json::Value,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT reported_online, firmware, errors, last_reading FROM devices WHERE device = 'p-1'",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(
        (row.0, row.1.as_deref(), row.2),
        (
            Some(true),
            Some("2.0"),
            serde_json::json!([{"code": "1", "message": null}])
        )
    );
    assert_eq!(row.3.timestamp_micros(), now);
    // A newer one without errors keeps them; with [] clears them.
    record(&pg.pool, &seen(now + 1, true, "2.1", None))
        .await
        .unwrap();
    let kept: (Option<String>, serde_json::Value) =
        sqlx::query_as("SELECT firmware, errors FROM devices WHERE device = 'p-1'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        (
            Some("2.1".into()),
            serde_json::json!([{"code": "1", "message": null}])
        )
    );
    record(&pg.pool, &seen(now + 2, true, "2.1", Some("[]")))
        .await
        .unwrap();
    let errors: serde_json::Value =
        sqlx::query_scalar("SELECT errors FROM devices WHERE device = 'p-1'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(errors, serde_json::json!([]));
}
