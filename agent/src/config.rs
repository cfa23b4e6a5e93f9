//! Agent configuration: one TOML file, overridable by `DASH_` variables
//! (`DASH_AGENT_ID`, `DASH_UPLINK__URL`, ...). Unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dash_shared::topic::parse_broker_url;
use dash_shared::{AgentId, TenantId};
use serde::{Deserialize, Serialize};

pub use crate::buffer::WhenFull;
use crate::devices::mapping::Mapping;

/// The smallest disk budget: room for a few batches.
pub const MIN_BUFFER_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tenant this gateway belongs to.
    pub tenant: String,
    /// This gateway's id, unique within the tenant.
    pub agent_id: String,
    /// Where the durable buffer lives.
    pub data_dir: PathBuf,
    /// Seconds to flush and close after SIGTERM or Ctrl-C.
    pub shutdown_grace_secs: u64,
    pub buffer: BufferConfig,
    pub uplink: UplinkConfig,
    pub devices: DevicesConfig,
    /// HTTP input for POS systems and webhooks.
    pub http: crate::http::HttpInputConfig,
    /// Modbus TCP and RTU devices to poll.
    pub modbus: crate::modbus::ModbusConfig,
    /// Series sent as pre-aggregated windows; the first matching rule applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<crate::aggregate::AggregateRule>,
    /// Renames, unit conversions, lookups and filters, applied as inputs read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<crate::transform::TransformRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Group commit: records queued while a flush runs go together in the
    /// next one; this adds a wait for more before each flush (0: none, the
    /// default: measured, a linger only adds latency).
    pub commit_max_delay_ms: u64,
    /// Group commit: at most this many samples per flush.
    pub commit_max_samples: usize,
    /// Watchdog: a group commit (append, flush, fsync) still running after
    /// this many seconds is logged at ERROR, recorded in `status.json`, and
    /// ends the agent with exit status 75 so its service restarts it. 0: off.
    pub commit_stall_secs: u64,
    /// Disk budget: bytes of records and batches held, at most. sled's
    /// files take 4 to 9 times this under churn (measured; see the README),
    /// so give it a fifth to a ninth of the space the buffer may use. 0: no budget.
    pub max_bytes: u64,
    /// At the budget, telemetry (MQTT devices, Modbus): `drop_oldest`
    /// deletes its oldest records, counted; `reject` stops acknowledging.
    pub telemetry_when_full: WhenFull,
    /// At the budget, transactions (the HTTP input): `reject` answers 503
    /// with Retry-After; `drop_oldest` deletes the oldest, counted.
    pub transactions_when_full: WhenFull,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// The aggregator's broker, `mqtt://host:port`, or `mqtts://host:port` for TLS.
    pub url: String,
    /// TLS: the CA that signed the broker's certificate (PEM); empty: the system's roots.
    pub ca_file: String,
    /// TLS: this agent's certificate and key (PEM), for mutual TLS.
    pub cert_file: String,
    pub key_file: String,
    /// MQTT client id; empty: `dash-agent-{tenant}-{agent_id}`.
    pub client_id: String,
    /// Token login, for brokers that do not take client certificates: the
    /// username is `{tenant}/{agent_id}` when empty and a password is set.
    pub username: String,
    pub password: String,
    /// Most samples in one batch.
    pub batch_max_samples: usize,
    /// A batch is sealed once it is full or its oldest sample waited this long.
    pub batch_linger_ms: u64,
    /// Batches sent and not yet acked, at most.
    pub max_inflight_batches: usize,
    /// Resend a batch when its ack has not come after this many seconds.
    pub ack_timeout_secs: u64,
    /// Longest wait between reconnect attempts (exponential backoff with jitter up to this).
    pub reconnect_max_ms: u64,
    /// After a reconnect, batches sealed before it (the backlog) are sent at
    /// most this many records a second, beside live data; 0: unlimited.
    pub backlog_records_per_sec: u64,
    /// Seconds between status messages (retained, with a last will).
    pub status_interval_secs: u64,
}

/// A device's login on the agent's listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCredential {
    pub username: String,
    /// SHA-256 of the password, hex: `printf %s "$PASSWORD" | sha256sum`.
    /// Use random passwords (`openssl rand -hex 16`): a hash of a short one
    /// can be guessed by whoever reads this file.
    pub password_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Embedded MQTT listener for devices; empty to disable.
    pub listen: String,
    /// Or subscribe to a broker already on the gateway, `mqtt://host:port`.
    pub broker_url: String,
    /// Client id for `broker_url` (a persistent session: keep it stable).
    pub client_id: String,
    /// Largest device payload, in bytes.
    pub max_payload_bytes: usize,
    /// TLS on the listener: its certificate chain and key (PEM); empty: plain MQTT.
    pub tls_cert: String,
    pub tls_key: String,
    /// Devices allowed to connect to the listener, each with a username and
    /// the SHA-256 of its password; empty: no login asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<DeviceCredential>,
    /// Topic -> series mappings, tried in order; the first match wins.
    pub mappings: Vec<Mapping>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tenant: "default".into(),
            agent_id: "gateway-1".into(),
            data_dir: PathBuf::from("dash-agent-data"),
            shutdown_grace_secs: 10,
            buffer: BufferConfig::default(),
            uplink: UplinkConfig::default(),
            devices: DevicesConfig::default(),
            http: crate::http::HttpInputConfig::default(),
            modbus: crate::modbus::ModbusConfig::default(),
            aggregate: Vec::new(),
            transform: Vec::new(),
        }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            commit_max_delay_ms: 0,
            commit_max_samples: 20_000,
            commit_stall_secs: 30,
            max_bytes: 256 * 1024 * 1024,
            telemetry_when_full: WhenFull::DropOldest,
            transactions_when_full: WhenFull::Reject,
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            batch_max_samples: 5_000,
            batch_linger_ms: 1_000,
            max_inflight_batches: 16,
            ack_timeout_secs: 30,
            reconnect_max_ms: 15_000,
            backlog_records_per_sec: 20_000,
            status_interval_secs: 30,
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            listen: "0.0.0.0:1883".into(),
            broker_url: String::new(),
            client_id: String::new(),
            max_payload_bytes: 64 * 1024,
            tls_cert: String::new(),
            tls_key: String::new(),
            credentials: Vec::new(),
            mappings: vec![Mapping::example()],
        }
    }
}

const TOP_LEVEL: &[&str] = &[
    "tenant",
    "agent_id",
    "data_dir",
    "shutdown_grace_secs",
    "buffer",
    "uplink",
    "devices",
    "http",
    "modbus",
    "aggregate",
    "transform",
];

impl Config {
    /// Reads `file`, then `DASH_*` variables, then validates.
    pub fn load(file: &Path) -> anyhow::Result<Config> {
        let config: Config = dash_runtime::config::load(Some(file), TOP_LEVEL)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; the error lists every problem, each
    /// naming its field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        bail!("{}", problems.join("\n"))
    }

    /// Every problem types alone cannot catch, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |r: anyhow::Result<()>| {
            if let Err(e) = r {
                out.push(format!("{e:#}"));
            }
        };
        let problem = |cond: bool, msg: &str| -> anyhow::Result<()> {
            if cond {
                bail!("{msg}")
            }
            Ok(())
        };
        check(
            TenantId::new(self.tenant.clone())
                .map(|_| ())
                .context("tenant"),
        );
        check(
            AgentId::new(self.agent_id.clone())
                .map(|_| ())
                .context("agent_id"),
        );
        check(self.uplink_tls().map(|_| ()));
        let u = &self.uplink;
        check(problem(
            !(1..=100_000).contains(&u.batch_max_samples),
            "uplink.batch_max_samples must be between 1 and 100000",
        ));
        check(problem(
            u.max_inflight_batches == 0 || u.max_inflight_batches > 64,
            "uplink.max_inflight_batches must be between 1 and 64",
        ));
        check(problem(
            u.ack_timeout_secs == 0,
            "uplink.ack_timeout_secs must be at least 1",
        ));
        check(problem(
            u.reconnect_max_ms < 100,
            "uplink.reconnect_max_ms must be at least 100",
        ));
        check(problem(
            self.buffer.commit_max_samples == 0,
            "buffer.commit_max_samples must be at least 1",
        ));
        check(problem(
            self.buffer.max_bytes != 0 && self.buffer.max_bytes < MIN_BUFFER_BYTES,
            "buffer.max_bytes must be 0 (no budget) or at least 1048576 (1 MiB)",
        ));
        check(problem(
            u.status_interval_secs == 0,
            "uplink.status_interval_secs must be at least 1",
        ));
        let d = &self.devices;
        check(problem(
            !d.listen.is_empty() && !d.broker_url.is_empty(),
            "set at most one of devices.listen (embedded listener) and devices.broker_url (existing broker)",
        ));
        check(problem(
            d.listen.is_empty()
                && d.broker_url.is_empty()
                && self.http.listen.is_empty()
                && self.modbus.devices.is_empty(),
            "no input: set devices.listen, devices.broker_url, http.listen (with http.sources) or modbus.devices",
        ));
        check(crate::http::validate(&self.http));
        for (i, device) in self.modbus.devices.iter().enumerate() {
            check(device.validate(&format!("modbus.devices[{i}]")));
        }
        for (i, rule) in self.aggregate.iter().enumerate() {
            check(rule.validate(&format!("aggregate[{i}]")));
        }
        for (i, rule) in self.transform.iter().enumerate() {
            check(rule.validate(&format!("transform[{i}]")));
        }
        if !d.listen.is_empty() {
            check(
                d.listen
                    .parse::<SocketAddr>()
                    .map(|_| ())
                    .context("devices.listen"),
            );
            check(self.device_auth().map(|_| ()));
        }
        if !d.broker_url.is_empty() {
            check(
                parse_broker_url(&d.broker_url)
                    .map(|_| ())
                    .context("devices.broker_url"),
            );
        }
        for (i, m) in d.mappings.iter().enumerate() {
            check(
                m.validate()
                    .with_context(|| format!("devices.mappings[{i}]")),
            );
        }
        out
    }

    /// TLS and logins for the device listener, from `devices.*`.
    pub fn device_auth(&self) -> anyhow::Result<crate::devices::listener::DeviceAuth> {
        let d = &self.devices;
        let tls = match (d.tls_cert.as_str(), d.tls_key.as_str()) {
            ("", "") => None,
            ("", _) | (_, "") => bail!("devices.tls_cert and devices.tls_key go together"),
            (cert, key) => {
                let config = dash_tls::server_config(
                    Path::new(cert),
                    Path::new(key),
                    None,
                    dash_tls::ClientAuth::None,
                )
                .context("devices TLS")?;
                Some(tokio_rustls::TlsAcceptor::from(config))
            }
        };
        let mut credentials = std::collections::HashMap::new();
        for (i, c) in d.credentials.iter().enumerate() {
            let digest = dash_runtime::secret::parse_digest(c.password_sha256.trim())
                .with_context(|| {
                    format!("devices.credentials[{i}].password_sha256: 64 hex digits")
                })?;
            if c.username.is_empty() {
                bail!("devices.credentials[{i}].username is empty");
            }
            if credentials.insert(c.username.clone(), digest).is_some() {
                bail!(
                    "devices.credentials[{i}].username {:?} is listed twice",
                    c.username
                );
            }
        }
        Ok(crate::devices::listener::DeviceAuth { tls, credentials })
    }

    /// The uplink's TLS configuration, `None` for a plain `mqtt://` link.
    /// Reads and checks the files it names.
    pub fn uplink_tls(&self) -> anyhow::Result<Option<Arc<dash_tls::rustls::ClientConfig>>> {
        let u = &self.uplink;
        let url = parse_broker_url(&u.url).context("uplink.url")?;
        let path = |p: &str| (!p.is_empty()).then(|| Path::new(p).to_owned());
        let (ca, cert, key) = (path(&u.ca_file), path(&u.cert_file), path(&u.key_file));
        if !url.tls {
            if ca.is_some() || cert.is_some() || key.is_some() {
                bail!("uplink.ca_file, cert_file and key_file need a TLS uplink.url (mqtts://)");
            }
            return Ok(None);
        }
        let files = dash_tls::ClientFiles {
            ca: ca.as_deref(),
            cert: cert.as_deref(),
            key: key.as_deref(),
        };
        let config = dash_tls::client_config(&files).context("uplink TLS")?;
        Ok(Some(config))
    }

    pub fn tenant(&self) -> TenantId {
        TenantId::new(self.tenant.clone()).expect("validated")
    }

    pub fn agent(&self) -> AgentId {
        AgentId::new(self.agent_id.clone()).expect("validated")
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

pub fn default_toml() -> String {
    let body = toml::to_string_pretty(&Config::default()).expect("config serializes");
    let http = http_example();
    format!(
        "# dash-agent configuration. Every key may be overridden by a DASH_ variable:\n\
         # DASH_AGENT_ID, DASH_UPLINK__URL, DASH_DEVICES__LISTEN, ...\n\
         # devices.listen runs an embedded MQTT listener for devices; or set\n\
         # devices.listen = \"\" and devices.broker_url to subscribe to a broker on the gateway.\n\
         # A mapping's topic captures {{device}} and {{metric}} from topic levels;\n\
         # format is \"number\" or \"json\" (value_path picks a field; empty takes every\n\
         # numeric field of an object as its own metric).\n\n{body}\n{http}"
    )
}

/// Commented examples of every input and rule that is off by default.
fn http_example() -> String {
    let lines: String = examples_toml()
        .lines()
        .map(|l| format!("# {l}\n"))
        .collect();
    format!(
        "# Examples, commented out. HTTP input for POS systems and webhooks: set\n\
         # http.listen (e.g. \"0.0.0.0:8080\") and add sources; POST /ingest/pos with\n\
         # Authorization: Bearer <token> (here \"change-me\") and an optional Idempotency-Key.\n\
         # Modbus: address = \"host:port\" for TCP, or serial = \"/dev/ttyUSB0\" with baud,\n\
         # parity, stop_bits for RTU; point kinds coil, discrete, holding, input; types bool,\n\
         # u16, i16, u32, i32, f32, u64, i64, f64; byte_order and word_order big or little.\n\
         # [[aggregate]] sends matching series as windows; [[transform]] renames, converts\n\
         # units, looks up codes and filters. [[devices.credentials]]: logins the device\n\
         # listener asks for (devices.tls_cert and tls_key turn on TLS for it).\n{lines}"
    )
}

/// Examples of every input and rule that is off by default, setting every
/// key they have (the README's configuration reference is checked against
/// these and the defaults).
pub fn examples_toml() -> String {
    #[derive(Serialize)]
    struct Examples {
        http: HttpExample,
        modbus: crate::modbus::ModbusConfig,
        aggregate: Vec<crate::aggregate::AggregateRule>,
        transform: Vec<crate::transform::TransformRule>,
        devices: DevicesExample,
    }
    #[derive(Serialize)]
    struct DevicesExample {
        credentials: Vec<DeviceCredential>,
        mappings: Vec<Mapping>,
    }
    #[derive(Serialize)]
    struct HttpExample {
        sources: Vec<crate::http::HttpSource>,
    }
    toml::to_string_pretty(&Examples {
        http: HttpExample {
            sources: vec![crate::http::HttpSource::example()],
        },
        modbus: crate::modbus::ModbusConfig {
            devices: vec![crate::modbus::ModbusDevice::example()],
        },
        aggregate: vec![crate::aggregate::AggregateRule {
            device: "*".into(),
            metric: "power*".into(),
            window_secs: 60,
            keep_raw: false,
            late_secs: 2,
        }],
        transform: crate::transform::TransformRule::examples(),
        devices: DevicesExample {
            credentials: vec![DeviceCredential {
                username: "sensor-7".into(),
                // printf %s change-me | sha256sum
                password_sha256: "e2186dbdb1bb4193608605e84f33208765b5693b55edd4f730a719a100eeea6f"
                    .into(),
            }],
            mappings: vec![Mapping {
                online_path: "state.online".into(),
                firmware_path: "fw".into(),
                model_path: "hw".into(),
                errors_path: "faults".into(),
                ..Mapping::status("devices/{device}/status")
            }],
        },
    })
    .expect("examples serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_validates() {
        let back: Config = toml::from_str(&default_toml()).unwrap();
        back.validate().unwrap();
        assert_eq!(back.devices.mappings.len(), 1);
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let text = r#"
            tenant = "Bad Tenant"
            [uplink]
            max_inflight_batches = 0
            [devices]
            listen = "not-an-address"
            [[aggregate]]
            window_secs = 7
            [[transform]]
            convert = { from = "bar", to = "degC" }
            [[modbus.devices]]
            name = "plc"
            points = []
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let problems = config.problems();
        for field in [
            "tenant",
            "uplink.max_inflight_batches",
            "devices.listen",
            "aggregate[0].window_secs",
            "transform[0].convert",
            "modbus.devices[0]",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(field)),
                "{field} missing from {problems:#?}"
            );
        }
        assert!(config.validate().unwrap_err().to_string().lines().count() >= 6);
    }

    #[test]
    fn the_commented_examples_are_a_valid_config_once_uncommented() {
        let full = default_toml();
        let (head, examples) = full.split_once("# [[http.sources]]").unwrap();
        let examples: String = examples
            .lines()
            .map(|l| {
                format!(
                    "{}\n",
                    l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#'))
                )
            })
            .collect();
        let head = head
            .replace(
                "listen = \"\"\nmax_body",
                "listen = \"127.0.0.1:8080\"\nmax_body",
            )
            .replace("\n[modbus]\n", "\n");
        let text = format!("{head}[[http.sources]]{examples}");
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        back.validate().unwrap();
        assert_eq!(back.http.sources, vec![crate::http::HttpSource::example()]);
        assert_eq!(back.modbus.devices.len(), 1);
        assert_eq!((back.aggregate.len(), back.transform.len()), (1, 2));
        assert_eq!(back.devices.credentials.len(), 1);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail returns its own error type
    fn environment_variables_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "agent_id = \"from-file\"\n[uplink]\nbatch_max_samples = 10\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("DASH_AGENT_ID", "from-env");
            jail.set_env("DASH_UPLINK__URL", "mqtt://aggregator.internal:1884");
            jail.set_env("DASH_SOMETHING_ELSE", "ignored");
            let c = Config::load(&file).map_err(|e| e.to_string())?;
            assert_eq!(c.agent_id, "from-env");
            assert_eq!(c.uplink.url, "mqtt://aggregator.internal:1884");
            assert_eq!(c.uplink.batch_max_samples, 10);
            Ok(())
        });
    }

    #[test]
    fn both_device_sources_at_once_are_refused() {
        let mut c = Config::default();
        c.devices.broker_url = "mqtt://127.0.0.1:1884".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("devices.listen"), "{err}");
    }

    #[test]
    fn a_bad_agent_id_names_the_field() {
        let c = Config {
            agent_id: "gw/1".into(),
            ..Config::default()
        };
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(err.contains("agent_id"), "{err}");
    }
}
