//! The real binaries as child processes, killable with SIGKILL or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `target/debug/NAME`, next to the test binary's `deps` directory.
/// `dash-aggregator` as a command-line tool on `database_url`, its data
/// directory under `dir`, logging warnings only: add the arguments.
pub fn aggregator_command(dir: &Path, database_url: &str) -> Command {
    let mut c = Command::new(binary("dash-aggregator"));
    c.env("DASH_DATABASE_URL", database_url)
        .env("DASH_DATA_DIR", dir.join("aggregator"))
        .env("RUST_LOG", "warn");
    c
}

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// `target/release/NAME`: the profile users run (see [`Proc::release`]).
pub fn release_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    let bin = target.join("release").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p {name}` first (deploy/scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A child process whose output goes to `log`.
pub struct Proc {
    name: String,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    release: bool,
}

impl Proc {
    pub fn new(name: &str, args: &[&str], env: &[(&str, String)], log: PathBuf) -> Proc {
        Proc {
            name: name.to_owned(),
            cmd: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log,
            child: None,
            release: false,
        }
    }

    /// Runs the release build (`target/release`) instead of the debug one.
    pub fn release(mut self) -> Proc {
        self.release = true;
        self
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let bin = match self.release {
            true => release_binary(&self.name),
            false => binary(&self.name),
        };
        let child = Command::new(bin)
            .args(&self.cmd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,rumqttd=warn,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after `grace`). Returns whether it exited 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.kill().unwrap();
        c.wait().unwrap();
        false
    }

    /// The running child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the child to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().unwrap();
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Adds an environment variable (a `DASH_` override) for the next start.
    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> Proc {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        // DASH_TEST_KEEP_LOGS=DIR keeps every process's whole log there.
        if let (Ok(keep), Some(name)) = (std::env::var("DASH_TEST_KEEP_LOGS"), self.log.file_name())
        {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(&self.log, std::path::Path::new(&keep).join(name));
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} ----", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// An aggregator with an embedded broker on a free port.
pub fn aggregator(
    dir: &Path,
    database_url: &str,
    broker_port: u16,
    http_port: u16,
    extra: &[(&str, String)],
) -> Proc {
    let mut env = vec![
        (
            "DASH_DATA_DIR",
            dir.join("aggregator").display().to_string(),
        ),
        ("DASH_DATABASE_URL", database_url.to_owned()),
        ("DASH_BROKER__LISTEN", format!("127.0.0.1:{broker_port}")),
        ("DASH_HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
    ];
    env.extend(extra.iter().cloned());
    Proc::new(
        "dash-aggregator",
        &["serve"],
        &env,
        dir.join("aggregator.log"),
    )
}

/// Where an agent's devices come from.
#[derive(Debug, Clone, Copy)]
pub enum DeviceSource {
    /// The agent's own listener on this port.
    Listen(u16),
    /// A broker already on the gateway, on this port.
    Broker(u16),
}

/// An agent reading devices from `devices` and sending to `uplink_port`.
pub fn agent(
    dir: &Path,
    tenant: &str,
    agent_id: &str,
    devices: DeviceSource,
    uplink_port: u16,
) -> Proc {
    agent_with(dir, tenant, agent_id, devices, uplink_port, "")
}

/// [`agent`] with more TOML appended to its config file (e.g. an `[http]` input).
pub fn agent_with(
    dir: &Path,
    tenant: &str,
    agent_id: &str,
    devices: DeviceSource,
    uplink_port: u16,
    extra_toml: &str,
) -> Proc {
    let devices = match devices {
        DeviceSource::Listen(port) => format!("listen = \"127.0.0.1:{port}\""),
        DeviceSource::Broker(port) => {
            format!("listen = \"\"\nbroker_url = \"mqtt://127.0.0.1:{port}\"")
        }
    };
    let config = dir.join(format!("{agent_id}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"tenant = "{tenant}"
agent_id = "{agent_id}"
data_dir = "{data}"
shutdown_grace_secs = 5

[uplink]
url = "mqtt://127.0.0.1:{uplink_port}"
batch_max_samples = 500
batch_linger_ms = 200
ack_timeout_secs = 3
reconnect_max_ms = 1000

[devices]
{devices}

[[devices.mappings]]
topic = "sensors/{{device}}/{{metric}}"

{extra_toml}
"#,
            data = dir.join(agent_id).display()
        ),
    )
    .unwrap();
    Proc::new(
        "dash-agent",
        &["run", "--config", config.to_str().unwrap()],
        &[],
        dir.join(format!("{agent_id}.log")),
    )
}

/// Mosquitto from Debian on `port`, anonymous, loopback only.
pub struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    pub fn start(dir: &Path, port: u16) -> Mosquitto {
        Mosquitto::with_config(
            dir,
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 100000\n"
            ),
        )
    }

    /// Mosquitto with `config` as its whole configuration file.
    pub fn with_config(dir: &Path, config: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed (deploy/scripts/install-deps.sh installs it)");
        let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Mosquitto { child }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes the device mapping of agent `agent_id`'s config (written by
/// [`agent_with`]) read JSON objects: each numeric field becomes a series
/// `{metric}.{field}`.
pub fn json_devices(dir: &Path, agent_id: &str) {
    let path = dir.join(format!("{agent_id}.toml"));
    let config = std::fs::read_to_string(&path).unwrap();
    let config = config.replace(
        "topic = \"sensors/{device}/{metric}\"\n",
        "topic = \"sensors/{device}/{metric}\"\nformat = \"json\"\n",
    );
    assert!(config.contains("format = \"json\""));
    std::fs::write(path, config).unwrap();
}

/// The agent's status as it last wrote it to `{data_dir}/status.json`.
pub fn agent_status_file(dir: &Path, agent_id: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(agent_id).join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The environment of an aggregator whose embedded broker listens only on
/// TLS at `tls_port`, with the certificates `ca init` wrote to `ca`, and
/// takes only agents that prove who they are.
pub fn tls_broker_env(ca: &Path, tls_port: u16) -> Vec<(&'static str, String)> {
    let file = |name: &str| ca.join(name).display().to_string();
    vec![
        ("DASH_BROKER__LISTEN", String::new()),
        ("DASH_BROKER__TLS_LISTEN", format!("127.0.0.1:{tls_port}")),
        ("DASH_BROKER__TLS_CERT", file("server.pem")),
        ("DASH_BROKER__TLS_KEY", file("server.key")),
        ("DASH_BROKER__CLIENT_CA", file("ca.pem")),
        ("DASH_BROKER__AUTH", "agents".into()),
    ]
}

/// The environment of an aggregator linked over TLS to an external broker
/// at `url`, with its client certificate from `ca init` in `ca`.
pub fn external_broker_env(ca: &Path, url: &str) -> Vec<(&'static str, String)> {
    let file = |name: &str| ca.join(name).display().to_string();
    vec![
        ("DASH_BROKER__URL", url.to_owned()),
        ("DASH_BROKER__CA_FILE", file("ca.pem")),
        ("DASH_BROKER__CERT_FILE", file("aggregator.pem")),
        ("DASH_BROKER__KEY_FILE", file("aggregator.key")),
        ("DASH_BROKER__AUTH", "agents".into()),
    ]
}
