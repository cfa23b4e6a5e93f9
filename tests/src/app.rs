//! The aggregator in-process, for the API and browser suites: its real
//! [`dash_aggregator::run_reporting`] on ports it binds itself (port 0, so
//! no free-port probing), stopped by [`TestApp::stop`]. The kill and fault
//! suites keep real processes ([`crate::process`]).

use std::net::SocketAddr;

use dash_aggregator::{Bound, Config};
use tokio_util::sync::CancellationToken;

/// A running in-process aggregator.
pub struct TestApp {
    /// The query API, `/healthz`, `/readyz`, `/metrics`.
    pub http: SocketAddr,
    /// The embedded broker's gate (plain MQTT).
    pub broker: SocketAddr,
    /// The rumqttd behind the gate (loopback).
    pub embedded_broker: SocketAddr,
    pub config: Config,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts an aggregator on `database_url` with the defaults, loopback
    /// listeners on port 0, a grace of 5 s, and whatever `tweak` changes.
    pub async fn spawn(database_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("aggregator"),
            database_url: database_url.to_owned(),
            shutdown_grace_secs: 5,
            ..Config::default()
        };
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.broker.listen = "127.0.0.1:0".into();
        tweak(&mut config);
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<Bound>();
        let task = tokio::spawn(dash_aggregator::run_reporting(
            config.clone(),
            stop.clone().cancelled_owned(),
            move |bound| {
                let _ = tx.send(bound);
            },
        ));
        let bound = match rx.await {
            Ok(bound) => bound,
            Err(_) => panic!("the aggregator did not start: {:?}", task.await),
        };
        TestApp {
            http: bound.http,
            broker: bound.broker.expect("the embedded broker's plain listener"),
            embedded_broker: bound.embedded_broker.expect("the embedded broker"),
            config,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Stops it and waits for `run` to return (it bounds itself by the grace).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// An agent run in-process ([`dash_agent::run_reporting`]): devices MQTT on
/// a loopback port 0, the uplink to `broker`, one mapping
/// `sensors/{device}/{metric}`, a data directory of its own.
pub struct TestAgent {
    /// The device listener.
    pub devices: SocketAddr,
    pub config: dash_agent::Config,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts agent `agent` of `tenant` with its uplink to `broker`, and
    /// whatever `tweak` changes in its config.
    pub async fn spawn(
        tenant: &str,
        agent: &str,
        broker: SocketAddr,
        tweak: impl FnOnce(&mut dash_agent::Config),
    ) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let mut config: dash_agent::Config = toml::from_str(&format!(
            r#"tenant = "{tenant}"
agent_id = "{agent}"
data_dir = "{data}"
shutdown_grace_secs = 5

[uplink]
url = "mqtt://{broker}"
batch_linger_ms = 200
ack_timeout_secs = 3
reconnect_max_ms = 1000

[devices]
listen = "127.0.0.1:0"

[[devices.mappings]]
topic = "sensors/{{device}}/{{metric}}"
"#,
            data = dir.path().join("agent").display()
        ))
        .expect("the test agent's config");
        tweak(&mut config);
        config.validate().expect("the test agent's config is valid");
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<dash_agent::Bound>();
        let mut tx = Some(tx);
        let task = tokio::spawn(dash_agent::run_reporting(
            config.clone(),
            stop.clone().cancelled_owned(),
            move |bound| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(bound);
                }
            },
        ));
        let bound = match rx.await {
            Ok(bound) => bound,
            Err(_) => panic!("the agent did not start: {:?}", task.await),
        };
        TestAgent {
            devices: bound.devices.expect("the device listener"),
            config,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Stops it and waits for `run` to return (within its grace).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}
