//! The secure link, end to end with real processes, real TLS and real
//! PostgreSQL: agents provisioned with `dash-aggregator ca init` and
//! `agent add` deliver over mutual TLS (embedded broker, and Mosquitto with
//! require_certificate and pattern ACLs) and with a token; everyone else is
//! refused; an agent publishing as another, or into another tenant, stores
//! nothing and leaves the other agent unaffected; a revoked agent is cut off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dash_shared::{Batch, SeriesBlock, SeriesKey};
use dash_tests::device::{self, rows_of};
use dash_tests::fixture::{encode, stream};
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, Proc};
use dash_tests::{eventually, free_port, metrics_text};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};

mod device_listener;
mod mosquitto;

/// Runs `dash-aggregator ARGS` against the test database; panics with its
/// output when it fails.
fn cli(dir: &Path, pg: &TestPostgres, args: &[&str]) -> String {
    let out = cli_output(dir, pg, args);
    assert!(
        out.status.success(),
        "dash-aggregator {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_output(dir: &Path, pg: &TestPostgres, args: &[&str]) -> Output {
    dash_tests::process::aggregator_command(dir, &pg.url)
        .args(args)
        .output()
        .unwrap()
}

/// `ca init` into `ca` for 127.0.0.1.
fn ca_init(dir: &Path, pg: &TestPostgres, ca: &Path) {
    cli(
        dir,
        pg,
        &[
            "ca",
            "init",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--host",
            "127.0.0.1",
        ],
    );
}

/// `agent revoke` of `acme/name`, rewriting the CA's revocation list.
fn revoke(dir: &Path, pg: &TestPostgres, ca: &Path, name: &str) {
    cli(
        dir,
        pg,
        &[
            "agent",
            "revoke",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--tenant",
            "acme",
            "--name",
            name,
        ],
    );
}

/// `agent add` for `tenant/name`, files in `dir/tenant-name`; returns that directory.
fn add_agent(
    dir: &Path,
    pg: &TestPostgres,
    tenant: &str,
    name: &str,
    uplink: &str,
    extra: &[&str],
) -> PathBuf {
    let out = dir.join(format!("{tenant}-{name}"));
    let said = try_add_agent(dir, pg, tenant, name, uplink, &out, extra);
    assert!(
        said.status.success(),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.contains(&format!("agent {tenant}/{name} added")),
        "{said}"
    );
    out
}

/// `agent add` as [`add_agent`] runs it, files in `out`, whatever its outcome.
fn try_add_agent(
    dir: &Path,
    pg: &TestPostgres,
    tenant: &str,
    name: &str,
    uplink: &str,
    out: &Path,
    extra: &[&str],
) -> Output {
    let ca = dir.join("ca");
    let mut args = vec![
        "agent",
        "add",
        "--ca-dir",
        ca.to_str().unwrap(),
        "--tenant",
        tenant,
        "--name",
        name,
        "--uplink",
        uplink,
        "--out",
        out.to_str().unwrap(),
        "--install-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli_output(dir, pg, &args)
}

/// An agent whose identity and uplink come from its `agent add` snippet,
/// with a device listener on `device_port`.
fn provisioned_agent(dir: &Path, files: &Path, name: &str, device_port: u16) -> Proc {
    let snippet = std::fs::read_to_string(files.join("agent.toml")).unwrap();
    let config = files.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\nshutdown_grace_secs = 5\n{snippet}\
             batch_max_samples = 500\nbatch_linger_ms = 200\nack_timeout_secs = 3\nreconnect_max_ms = 1000\n\n\
             [devices]\nlisten = \"127.0.0.1:{device_port}\"\n\n\
             [[devices.mappings]]\ntopic = \"sensors/{{device}}/{{metric}}\"\n",
            data = dir.join(name).display()
        ),
    )
    .unwrap();
    let mut env = Vec::new();
    if let Ok(text) = std::fs::read_to_string(files.join("agent.env")) {
        let value = text.trim().strip_prefix("DASH_UPLINK__PASSWORD=").unwrap();
        env.push(("DASH_UPLINK__PASSWORD", value.to_owned()));
    }
    Proc::new(
        "dash-agent",
        &["run", "--config", config.to_str().unwrap()],
        &env,
        dir.join(format!("{name}.log")),
    )
}

/// A client of the broker at `port` with the given TLS files and login.
fn client(
    id: &str,
    port: u16,
    ca: Option<&Path>,
    cert: Option<(&Path, &Path)>,
    login: Option<(&str, &str)>,
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    if let Some(ca) = ca {
        let tls = dash_tls::client_config(&dash_tls::ClientFiles {
            ca: Some(ca),
            cert: cert.map(|c| c.0),
            key: cert.map(|c| c.1),
        })
        .unwrap();
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    AsyncClient::new(opts, 64)
}

/// How the broker answers a connection attempt.
#[derive(Debug, PartialEq)]
enum Answer {
    Accepted,
    Refused(ConnectReturnCode),
    /// The connection failed before CONNACK (TLS refused).
    Failed(String),
}

async fn first_answer(mut events: rumqttc::EventLoop) -> Answer {
    let polled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Answer::Accepted,
                Ok(_) => continue,
                Err(ConnectionError::ConnectionRefused(code)) => return Answer::Refused(code),
                Err(e) => return Answer::Failed(e.to_string()),
            }
        }
    })
    .await;
    polled.unwrap_or_else(|_| Answer::Failed("no answer within 10 s".into()))
}

/// A valid batch of `device/temp` readings (values 1000..1000+n).
fn batch_payload(device: &str, n: i64) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp_micros();
    let batch = Batch::samples(
        stream(42),
        1,
        1,
        vec![SeriesBlock {
            key: SeriesKey::new(device, "temp"),
            timestamps: (0..n).map(|i| now - i * 1000).collect(),
            values: (0..n).map(|i| (1000 + i) as f64).collect(),
        }],
    );
    encode(&batch)
}

/// Connects, publishes `payload` on `topic`, and reports whether the broker
/// closed the connection afterwards.
async fn publish_as(
    client: AsyncClient,
    mut events: rumqttc::EventLoop,
    topic: &str,
    payload: Vec<u8>,
) -> bool {
    assert_eq!(poll_connack(&mut events).await, Answer::Accepted);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    closed_within(&mut events, 5).await
}

/// Drives the connection for up to `secs`; true when the broker closed it.
async fn closed_within(events: &mut rumqttc::EventLoop, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), async {
        while events.poll().await.is_ok() {}
    })
    .await
    .is_ok()
}

async fn poll_connack(events: &mut rumqttc::EventLoop) -> Answer {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Answer::Accepted,
            Ok(Ok(_)) => continue,
            Ok(Err(ConnectionError::ConnectionRefused(code))) => return Answer::Refused(code),
            Ok(Err(e)) => return Answer::Failed(e.to_string()),
            Err(_) => return Answer::Failed("timeout".into()),
        }
    }
}

async fn refused(http: u16, stage: &str, reason: &str) -> f64 {
    let text = metrics_text(http).await;
    let key = format!("dash_auth_refused_total{{stage=\"{stage}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn stored_for(pg: &TestPostgres, device: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id WHERE s.device = $1",
    )
    .bind(device)
    .fetch_one(&pg.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_prove_who_they_are_and_publish_only_as_themselves_through_the_embedded_broker() {
    dash_tests::init_tracing();
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tls_port, http, device_a, device_t) = (free_port(), free_port(), free_port(), free_port());
    let ca = d.join("ca");
    let said = cli(
        d,
        &pg,
        &[
            "ca",
            "init",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
        ],
    );
    assert!(said.contains("auth = \"agents\""), "{said}");
    let uplink = format!("mqtts://127.0.0.1:{tls_port}");
    let gw1 = add_agent(d, &pg, "acme", "gw-1", &uplink, &[]);
    let gw2 = add_agent(d, &pg, "acme", "gw-2", &uplink, &[]);
    let tok = add_agent(
        d,
        &pg,
        "acme",
        "till-1",
        &uplink,
        &["--token", "--no-certificate"],
    );
    let gone = add_agent(d, &pg, "acme", "gw-3", &uplink, &[]);
    let expired = add_agent(
        d,
        &pg,
        "acme",
        "gw-old",
        &uplink,
        &["--expires", "2026-01-01T00:00:00Z"],
    );
    assert!(!gw1.join("agent.env").exists() && tok.join("agent.env").exists());
    let env_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(tok.join("agent.env"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(env_mode & 0o777, 0o600, "the token file is private");
    revoke(d, &pg, &ca, "gw-3");
    // A revoked agent's name is never given again (RegistryError::Taken).
    let again = try_add_agent(d, &pg, "acme", "gw-3", &uplink, &d.join("again"), &[]);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a name is never reused");
    assert!(said.contains("agent acme/gw-3 already exists"), "{said}");

    let mut aggregator = process::aggregator(
        d,
        &pg.url,
        free_port(),
        http,
        &process::tls_broker_env(&ca, tls_port),
    );
    aggregator.start();
    let mut agent1 = provisioned_agent(d, &gw1, "gw-1", device_a);
    agent1.start();
    let mut till = provisioned_agent(d, &tok, "till-1", device_t);
    till.start();

    // The happy paths: a certificate, and a token over TLS.
    let stop = Arc::new(AtomicBool::new(false));
    let devices: SocketAddr = format!("127.0.0.1:{device_a}").parse().unwrap();
    let sensor = device::background(devices, "boiler", stop.clone());
    let till_device: SocketAddr = format!("127.0.0.1:{device_t}").parse().unwrap();
    let till_report = device::publish(
        till_device,
        "till",
        "temp",
        0..300,
        Arc::new(AtomicBool::new(false)),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(till_report.acked.len(), 300);
    eventually(
        Duration::from_secs(60),
        "the token agent's readings to be stored",
        || async { (rows_of(&pg, "acme", "till").await.len() == 300).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the certificate agent's readings to be stored",
        || async { (rows_of(&pg, "acme", "boiler").await.len() > 200).then_some(()) },
    )
    .await;

    // Refused: no certificate and no token; another CA's certificate; an
    // expired certificate; a revoked agent; a wrong token.
    let ca_pem = ca.join("ca.pem");
    let (_c, events) = client("anon", tls_port, Some(&ca_pem), None, None);
    assert_eq!(
        first_answer(events).await,
        Answer::Refused(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(refused(http, "connect", "no_identity").await, 1.0);

    let other = d.join("other-ca");
    ca_init(d, &pg, &other);
    let foreign = dash_aggregator::auth::pki::issue_agent(
        &dash_aggregator::auth::pki::CaDir::new(&other),
        "acme",
        "gw-1",
        chrono::Utc::now() + chrono::Duration::days(1),
    )
    .unwrap();
    std::fs::write(d.join("foreign.pem"), &foreign.cert_pem).unwrap();
    std::fs::write(d.join("foreign.key"), &foreign.key_pem).unwrap();
    let (_c, events) = client(
        "foreign",
        tls_port,
        Some(&ca_pem),
        Some((&d.join("foreign.pem"), &d.join("foreign.key"))),
        None,
    );
    assert!(
        matches!(first_answer(events).await, Answer::Failed(_)),
        "another CA's certificate"
    );
    let (_c, events) = client(
        "old",
        tls_port,
        Some(&ca_pem),
        Some((&expired.join("agent.pem"), &expired.join("agent.key"))),
        None,
    );
    assert!(
        matches!(first_answer(events).await, Answer::Failed(_)),
        "an expired certificate"
    );
    eventually(
        Duration::from_secs(5),
        "two refused handshakes to be counted",
        || async { (refused(http, "tls", "handshake").await == 2.0).then_some(()) },
    )
    .await;
    assert!(
        aggregator.log().to_lowercase().contains("expired"),
        "the log names the expired certificate"
    );

    let (_c, events) = client(
        "gone",
        tls_port,
        Some(&ca_pem),
        Some((&gone.join("agent.pem"), &gone.join("agent.key"))),
        None,
    );
    assert_eq!(
        first_answer(events).await,
        Answer::Refused(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(refused(http, "connect", "revoked").await, 1.0);

    let (_c, events) = client(
        "guess",
        tls_port,
        Some(&ca_pem),
        None,
        Some(("acme/till-1", "not-the-token")),
    );
    assert_eq!(
        first_answer(events).await,
        Answer::Refused(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(refused(http, "connect", "bad_token").await, 1.0);
    assert!(
        !aggregator.log().contains("not-the-token"),
        "a token is never logged"
    );

    // gw-2 publishing as gw-1, and into another tenant: disconnected,
    // nothing stored, counted; gw-1 goes on.
    let gw2_cert = (gw2.join("agent.pem"), gw2.join("agent.key"));
    for (n, topic) in ["dash/v1/acme/gw-1/batch", "dash/v1/globex/gw-2/batch"]
        .iter()
        .enumerate()
    {
        let (c, events) = client(
            &format!("intruder-{n}"),
            tls_port,
            Some(&ca_pem),
            Some((&gw2_cert.0, &gw2_cert.1)),
            None,
        );
        assert!(
            publish_as(c, events, topic, batch_payload("intruder", 10)).await,
            "{topic}: disconnected"
        );
    }
    let (c, mut events) = client(
        "eavesdropper",
        tls_port,
        Some(&ca_pem),
        Some((&gw2_cert.0, &gw2_cert.1)),
        None,
    );
    assert_eq!(poll_connack(&mut events).await, Answer::Accepted);
    c.subscribe("dash/v1/acme/gw-1/ack", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(
        closed_within(&mut events, 5).await,
        "subscribing to another agent's acks closes the connection"
    );
    assert_eq!(refused(http, "publish", "foreign_topic").await, 2.0);
    assert_eq!(refused(http, "subscribe", "foreign_topic").await, 1.0);
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
        "nothing the intruder sent is stored"
    );

    // Revoking gw-1 cuts it off: its connection closes and nothing more is stored.
    let listed = cli(d, &pg, &["agent", "list"]);
    let row = |who: &str| -> Vec<String> {
        listed
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cols| cols[0] == who)
            .unwrap_or_else(|| panic!("{who} not listed: {listed}"))
    };
    // AGENT AUTH EXPIRES REVOKED LAST-SEEN ONLINE
    let gw1_row = row("acme/gw-1");
    assert_eq!(
        (
            gw1_row[1].as_str(),
            gw1_row[3].as_str(),
            gw1_row[5].as_str()
        ),
        ("cert", "-", "yes"),
        "{listed}"
    );
    assert_ne!(gw1_row[4], "-", "gw-1 was seen: {listed}");
    assert_eq!(row("acme/till-1")[1], "token");
    assert_ne!(
        row("acme/gw-3")[3],
        "-",
        "gw-3 shows its revocation: {listed}"
    );
    revoke(d, &pg, &ca, "gw-1");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at_revocation = rows_of(&pg, "acme", "boiler").await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rows_of(&pg, "acme", "boiler").await.len(),
        at_revocation,
        "a revoked agent's readings are not stored"
    );
    assert!(
        agent1.log().contains("NotAuthorized")
            || agent1.log().contains("not authorized")
            || agent1.log().contains("refused"),
        "the agent sees it is refused"
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sensor.await;
    let crl = std::fs::read_to_string(ca.join("crl.pem")).unwrap();
    assert!(crl.contains("BEGIN X509 CRL"));
    for p in [&mut agent1, &mut till, &mut aggregator] {
        p.terminate(Duration::from_secs(10));
    }
}
