//! Aggregator configuration: one TOML file, overridable by `DASH_` variables.
//!
//! `DASH_DATABASE_URL=...` sets `database_url`; nested fields use a double
//! underscore: `DASH_BROKER__LISTEN=0.0.0.0:1883`. Unknown keys in the file are
//! errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use dash_shared::topic::parse_broker_url;
use serde::{Deserialize, Serialize};

/// Everything `dash-aggregator serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the aggregator keeps its state (the private PostgreSQL cluster).
    pub data_dir: PathBuf,
    /// PostgreSQL URL. Empty: run a private cluster under `data_dir/postgres`.
    pub database_url: String,
    /// Directory with initdb and pg_ctl. Empty: the newest /usr/lib/postgresql/*/bin.
    pub postgres_bin_dir: String,
    /// Seconds to finish in-flight batches after SIGTERM or Ctrl-C.
    pub shutdown_grace_secs: u64,
    pub broker: BrokerConfig,
    pub ingest: IngestConfig,
    pub http: HttpConfig,
    pub retention: RetentionConfig,
    /// The fleet registry and liveness (see [`crate::fleet`]).
    pub fleet: crate::fleet::FleetConfig,
    /// The audit log (see [`crate::audit`]).
    pub audit: crate::audit::AuditConfig,
    /// Alert rules and their evaluation (see [`crate::alerts`]).
    pub alerts: crate::alerts::AlertsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// External broker, `mqtt://host:port` or `mqtts://host:port` (TLS).
    /// Empty: run the embedded broker.
    pub url: String,
    /// Where the embedded broker listens for agents over plain MQTT; empty: not at all.
    pub listen: String,
    /// Where the embedded broker listens for agents over TLS, e.g.
    /// `0.0.0.0:8883`; empty: no TLS listener.
    pub tls_listen: String,
    /// The TLS listener's certificate chain and key (PEM).
    pub tls_cert: String,
    pub tls_key: String,
    /// The CA whose client certificates identify agents (PEM); empty: no
    /// client certificates are asked for.
    pub client_ca: String,
    /// Refuse TLS clients without a certificate from `client_ca` (otherwise
    /// they may log in with a token).
    pub require_client_cert: bool,
    /// `none`: anyone who reaches the broker may publish as any agent.
    /// `agents`: only agents in the registry (`dash-aggregator agent add`),
    /// each only as itself; revoked agents are refused, and their batches
    /// are not stored (with an external broker too).
    pub auth: crate::broker::gate::AuthMode,
    /// An external `mqtts://` broker: the CA that signed its certificate
    /// (empty: the system's roots), and the aggregator's certificate and key.
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    /// MQTT client id of the aggregator's session (persistent, so the broker
    /// keeps batches that arrive while the aggregator restarts).
    pub client_id: String,
    /// With several aggregators behind one external broker: a shared
    /// subscription group, so each batch goes to one of them.
    pub shared_group: String,
    /// Optional username and password for an external broker.
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Batches written concurrently (one agent's batches always go to the same worker).
    pub workers: usize,
    /// Largest batch message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Database connections.
    pub max_connections: u32,
    /// How often small raw blocks of closed 30-minute spans are merged.
    pub compact_every_secs: u64,
    /// Numeric fields of events stored as series too, e.g.
    /// `{ kind = "sale", field = "amount", metric = "sales.amount", tags = ["location", "item"] }`.
    pub event_metrics: Vec<dash_shared::events::EventMetric>,
    /// Readings stamped more than this many seconds ahead of the server's
    /// clock when they arrive go to ingest_quarantine instead of the tiers.
    pub max_future_secs: u64,
    /// Likewise for readings more than this many days old; 0: no limit
    /// (backfills of history are stored; the protocol refuses times before 2000).
    pub max_past_days: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Health, Prometheus metrics and the query API (`/healthz`, `/metrics`, `/api/v1/...`).
    pub listen: SocketAddr,
    /// Bearer tokens for the query API, one tenant each, stored as SHA-256:
    /// `printf %s "$TOKEN" | sha256sum`. No tokens: the API refuses every query.
    pub tokens: Vec<QueryToken>,
    /// How long a login session lasts, in hours.
    pub session_hours: u32,
    /// Failed logins in a row before the user is locked out.
    pub login_attempts: u32,
    /// How long a lockout lasts, in seconds.
    pub lockout_secs: u32,
    /// Failed logins from one client address, whatever logins it tries,
    /// before it is held for `lockout_secs`. 0: no such limit (behind a
    /// proxy every client has the proxy's address; limit there instead).
    pub client_login_attempts: u32,
    /// Mark the session cookie Secure (HTTPS only). Set it when a TLS proxy
    /// fronts `http.listen`; a request with `X-Forwarded-Proto: https` gets
    /// a Secure cookie anyway.
    pub secure_cookies: bool,
}

/// A query API token: the tenant it may read and the SHA-256 of the token (hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryToken {
    pub tenant: String,
    pub sha256: String,
}

/// How long each tier is kept. 0 keeps it forever.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Raw samples (`raw_blocks`), in days.
    pub raw_days: u32,
    /// Hourly rollups, in days.
    pub hourly_days: u32,
    /// Daily rollups, in days.
    pub daily_days: u32,
    /// Events, in days.
    pub events_days: u32,
    /// How often old data is dropped and partitions are created ahead.
    pub every_secs: u64,
    /// With TimescaleDB under the Timescale licence only: compress raw
    /// chunks older than this many days (0: never).
    pub compress_raw_after_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw_days: 7,
            hourly_days: 90,
            daily_days: 0,
            events_days: 0,
            every_secs: 3600,
            compress_raw_after_days: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("dash-aggregator-data"),
            database_url: String::new(),
            postgres_bin_dir: String::new(),
            shutdown_grace_secs: 10,
            broker: BrokerConfig::default(),
            ingest: IngestConfig::default(),
            http: HttpConfig::default(),
            retention: RetentionConfig::default(),
            fleet: Default::default(),
            audit: Default::default(),
            alerts: Default::default(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: String::new(),
            listen: "0.0.0.0:1883".into(),
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            client_ca: String::new(),
            require_client_cert: false,
            auth: crate::broker::gate::AuthMode::None,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            client_id: "dash-aggregator".into(),
            shared_group: String::new(),
            username: String::new(),
            password: String::new(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            workers: 4,
            max_message_bytes: 1024 * 1024,
            max_connections: 8,
            compact_every_secs: 60,
            event_metrics: Vec::new(),
            max_future_secs: 300,
            max_past_days: 0,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().expect("valid literal"),
            tokens: Vec::new(),
            session_hours: 12,
            login_attempts: 5,
            lockout_secs: 900,
            client_login_attempts: 50,
            secure_cookies: false,
        }
    }
}

const TOP_LEVEL: &[&str] = &[
    "data_dir",
    "database_url",
    "postgres_bin_dir",
    "shutdown_grace_secs",
    "broker",
    "ingest",
    "http",
    "retention",
    "fleet",
    "audit",
    "alerts",
];

impl Config {
    /// Reads `file` (if given), then `DASH_*` variables, then validates.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let config: Config = dash_runtime::config::load(file, TOP_LEVEL)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.ingest.workers == 0 || self.ingest.workers > 256 {
            bail!(
                "ingest.workers must be between 1 and 256, not {}",
                self.ingest.workers
            );
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.ingest.max_message_bytes) {
            bail!("ingest.max_message_bytes must be between 1 KiB and 64 MiB");
        }
        if self.ingest.compact_every_secs == 0 {
            bail!("ingest.compact_every_secs must be at least 1");
        }
        if self.ingest.max_connections < 2 {
            bail!("ingest.max_connections must be at least 2");
        }
        self.broker_tls()?;
        for (i, t) in self.http.tokens.iter().enumerate() {
            if dash_shared::TenantId::new(t.tenant.clone()).is_err() {
                bail!(
                    "http.tokens[{i}].tenant {:?} is not a valid tenant id",
                    t.tenant
                );
            }
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!(
                    "http.tokens[{i}].sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)"
                );
            }
        }
        let h = &self.http;
        if h.session_hours == 0 || h.login_attempts == 0 || h.lockout_secs == 0 {
            bail!(
                "http.session_hours, http.login_attempts and http.lockout_secs must be at least 1"
            );
        }
        let r = &self.retention;
        if r.every_secs == 0 {
            bail!("retention.every_secs must be at least 1");
        }
        // 0 keeps forever: a coarser tier must keep at least as long as a finer one.
        let shorter = |a: u32, b: u32| a != 0 && (b == 0 || a < b);
        if shorter(r.hourly_days, r.raw_days) {
            bail!(
                "retention.hourly_days ({}) must not be shorter than retention.raw_days ({}): queries fall back from raw to hourly data",
                r.hourly_days,
                r.raw_days
            );
        }
        if shorter(r.daily_days, r.hourly_days) {
            bail!(
                "retention.daily_days ({}) must not be shorter than retention.hourly_days ({})",
                r.daily_days,
                r.hourly_days
            );
        }
        if r.compress_raw_after_days != 0
            && r.raw_days != 0
            && r.compress_raw_after_days >= r.raw_days
        {
            bail!("retention.compress_raw_after_days must be less than retention.raw_days");
        }
        if self.broker.client_id.is_empty() {
            bail!("broker.client_id must not be empty");
        }
        let fleet = self.fleet.problems();
        let fleet: Vec<String> = fleet.into_iter().chain(self.alerts.problems()).collect();
        if !fleet.is_empty() {
            bail!("{}", fleet.join("\n"));
        }
        Ok(())
    }

    /// The broker's TLS settings, read and checked: the server side of the
    /// embedded broker's TLS listener, and the client side of a link to an
    /// external `mqtts://` broker.
    pub fn broker_tls(&self) -> anyhow::Result<BrokerTls> {
        let b = &self.broker;
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        let mut tls = BrokerTls::default();
        for (key, value) in [
            ("broker.listen", &b.listen),
            ("broker.tls_listen", &b.tls_listen),
        ] {
            if !value.is_empty() {
                value.parse::<SocketAddr>().with_context(|| {
                    format!("{key} {value:?} is not an address like 0.0.0.0:1883")
                })?;
            }
        }
        if b.url.is_empty() {
            if b.listen.is_empty() && b.tls_listen.is_empty() {
                bail!("the embedded broker needs broker.listen or broker.tls_listen");
            }
            if !b.tls_listen.is_empty() {
                let (Some(cert), Some(key)) = (path(&b.tls_cert), path(&b.tls_key)) else {
                    bail!(
                        "broker.tls_listen needs broker.tls_cert and broker.tls_key (dash-aggregator ca init writes them)"
                    );
                };
                let auth = match (path(&b.client_ca).is_some(), b.require_client_cert) {
                    (false, true) => bail!("broker.require_client_cert needs broker.client_ca"),
                    (false, false) => dash_tls::ClientAuth::None,
                    (true, false) => dash_tls::ClientAuth::Optional,
                    (true, true) => dash_tls::ClientAuth::Required,
                };
                tls.server = Some(
                    dash_tls::server_config(&cert, &key, path(&b.client_ca).as_deref(), auth)
                        .context("broker TLS listener")?,
                );
            } else if !b.client_ca.is_empty() || !b.tls_cert.is_empty() {
                bail!("broker.tls_cert and broker.client_ca need broker.tls_listen");
            }
        } else {
            let url = parse_broker_url(&b.url).context("broker.url")?;
            if url.tls {
                let (ca, cert, key) = (path(&b.ca_file), path(&b.cert_file), path(&b.key_file));
                tls.client = Some(
                    dash_tls::client_config(&dash_tls::ClientFiles {
                        ca: ca.as_deref(),
                        cert: cert.as_deref(),
                        key: key.as_deref(),
                    })
                    .context("broker.url TLS")?,
                );
            } else if !b.ca_file.is_empty() || !b.cert_file.is_empty() {
                bail!("broker.ca_file and broker.cert_file need a TLS broker.url (mqtts://)");
            }
        }
        Ok(tls)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// TLS configurations built from `[broker]`.
#[derive(Default)]
pub struct BrokerTls {
    /// The embedded broker's TLS listener.
    pub server: Option<std::sync::Arc<dash_tls::rustls::ServerConfig>>,
    /// The link to an external `mqtts://` broker.
    pub client: Option<std::sync::Arc<dash_tls::rustls::ClientConfig>>,
}

/// The default configuration as commented TOML, for `print-default-config`.
pub fn default_toml() -> String {
    let body = toml::to_string_pretty(&Config::default()).expect("config serializes");
    format!(
        "# dash-aggregator configuration. Every key may be overridden by a DASH_ variable:\n\
         # DASH_DATABASE_URL, DASH_BROKER__URL, DASH_HTTP__LISTEN, ...\n\
         # database_url = \"\" runs a private PostgreSQL under data_dir/postgres.\n\
         # broker.url = \"\" runs the embedded MQTT broker on broker.listen.\n\n{body}\n\
         # Examples, commented out: numeric fields of events stored as series, a\n\
         # query API token (sha256 of the token: printf %s \"$TOKEN\" | sha256sum), and\n\
         # the silence a device model may keep before it counts as offline.\n{examples}",
        examples = examples_toml()
            .lines()
            .map(|l| format!("# {l}\n"))
            .collect::<String>()
    )
}

/// Examples of the keys that are empty by default, setting every key they
/// have (the README's configuration reference is checked against these and
/// the defaults).
pub fn examples_toml() -> String {
    #[derive(Serialize)]
    struct Examples {
        ingest: IngestExample,
        http: HttpExample,
        fleet: FleetExample,
        alerts: AlertsExample,
    }
    #[derive(Serialize)]
    struct AlertsExample {
        contact_points: Vec<crate::alerts::notify::ContactPoint>,
    }
    #[derive(Serialize)]
    struct FleetExample {
        models: Vec<crate::fleet::ModelInterval>,
    }
    #[derive(Serialize)]
    struct IngestExample {
        event_metrics: Vec<dash_shared::events::EventMetric>,
    }
    #[derive(Serialize)]
    struct HttpExample {
        tokens: Vec<QueryToken>,
    }
    toml::to_string_pretty(&Examples {
        ingest: IngestExample {
            event_metrics: vec![dash_shared::events::EventMetric {
                kind: "sale".into(),
                field: "amount".into(),
                metric: "sales.amount".into(),
                tags: vec!["location".into(), "item".into()],
            }],
        },
        http: HttpExample {
            tokens: vec![QueryToken {
                tenant: "acme".into(),
                // printf %s change-me | sha256sum
                sha256: "e2186dbdb1bb4193608605e84f33208765b5693b55edd4f730a719a100eeea6f".into(),
            }],
        },
        fleet: FleetExample {
            models: vec![crate::fleet::ModelInterval {
                model: "th-10".into(),
                interval_secs: 900,
            }],
        },
        alerts: AlertsExample {
            contact_points: vec![crate::alerts::notify::ContactPoint::example()],
        },
    })
    .expect("examples serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_through_its_toml() {
        let text = default_toml();
        let back: Config = toml::from_str(&text).unwrap();
        back.validate().unwrap();
        assert_eq!(back.broker.listen, "0.0.0.0:1883");
    }

    #[test]
    fn the_examples_are_valid_settings() {
        let text = default_toml()
            .replace("event_metrics = []\n", "")
            .replace("tokens = []\n", "")
            .replace("models = []\n", "");
        let mut full: toml::Table = toml::from_str(&text).unwrap();
        let examples: toml::Table = toml::from_str(&examples_toml()).unwrap();
        for (table, value) in examples {
            let (toml::Value::Table(into), toml::Value::Table(add)) =
                (full.get_mut(&table).unwrap(), value)
            else {
                panic!("{table} is not a table");
            };
            into.extend(add);
        }
        let back: Config = full.try_into().unwrap();
        back.validate().unwrap();
        assert_eq!(back.ingest.event_metrics.len(), 1);
        assert_eq!(back.http.tokens[0].tenant, "acme");
    }

    #[test]
    fn a_coarser_tier_keeps_at_least_as_long_as_a_finer_one_and_0_is_forever() {
        let with = |raw_days, hourly_days, daily_days| Config {
            retention: RetentionConfig {
                raw_days,
                hourly_days,
                daily_days,
                ..RetentionConfig::default()
            },
            ..Config::default()
        };
        with(7, 90, 0).validate().unwrap();
        with(0, 0, 0).validate().unwrap();
        assert!(
            with(0, 90, 0).validate().is_err(),
            "raw kept forever, hourly not"
        );
        assert!(with(7, 90, 30).validate().is_err());
        assert!(
            with(7, 0, 365).validate().is_err(),
            "hourly kept forever, daily not"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("databse_url = \"x\"").unwrap_err();
        assert!(err.to_string().contains("databse_url"), "{err}");
    }
}
