//! `dash-aggregator ca ...` and `agent ...`: the CA, and the registry of
//! agents in PostgreSQL.

use std::fmt::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dash_shared::{AgentId, TenantId};

use crate::Config;
use crate::auth::pki::{self, CaDir};
use crate::auth::registry::{self, NewAgent, Registry};

/// A pool on the configured database for one command. The private
/// cluster is used as a running `serve` owns it, never stopped; with no
/// `serve` running the command takes the data directory's lock, starts the
/// cluster, and stops it after (see [`crate::storage::private`]).
pub async fn with_database<T>(
    config: &Config,
    work: impl AsyncFnOnce(&sqlx::PgPool) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let lock = match config.database_url.is_empty() {
        true => crate::storage::private::DataDirLock::try_take(&config.data_dir)?.ok(),
        false => None,
    };
    let (url, private) = crate::database(config, lock.is_some()).await?;
    let pool = crate::storage::pool::connect(&url, 2, std::time::Duration::from_secs(10)).await?;
    let result = work(&pool).await;
    pool.close().await;
    if let Some(mut pg) = private {
        tokio::task::spawn_blocking(move || pg.stop()).await??;
    }
    drop(lock);
    result
}

/// The registry of agents on the configured database ([`with_database`]).
pub async fn with_registry<T>(
    config: &Config,
    work: impl AsyncFnOnce(&Registry) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    with_database(config, async |pool| {
        work(&Registry::new(pool.clone())).await
    })
    .await
}

/// `ca init`: what was written and the settings that use it.
pub fn ca_init(ca: &CaDir, hosts: &[String]) -> anyhow::Result<String> {
    pki::init(ca, hosts)?;
    let d = ca.dir.canonicalize()?;
    Ok(format!(
        "CA written to {dir}: ca.pem, ca.key (keep it here), server.pem/.key for {hosts}, \
         aggregator.pem/.key, crl.pem.\n\
         Aggregator settings for TLS and agent identities:\n\n\
         [broker]\n\
         tls_listen = \"0.0.0.0:8883\"\n\
         tls_cert = \"{dir}/server.pem\"\n\
         tls_key = \"{dir}/server.key\"\n\
         client_ca = \"{dir}/ca.pem\"\n\
         auth = \"agents\"\n\
         listen = \"\"    # no plain listener\n\n\
         Then add agents: dash-aggregator agent add --tenant T --name N --uplink mqtts://{host}:8883\n",
        dir = d.display(),
        hosts = hosts.join(", "),
        host = hosts[0],
    ))
}

/// What `agent add` is asked for.
#[derive(Debug, Clone)]
pub struct AddAgent {
    pub tenant: String,
    pub name: String,
    /// The aggregator's broker as the agent reaches it.
    pub uplink: String,
    /// Issue a client certificate.
    pub certificate: bool,
    /// Issue a token (username `tenant/name`).
    pub token: bool,
    pub not_after: DateTime<Utc>,
    /// Where the files go.
    pub out: PathBuf,
    /// Where they will be on the gateway (the paths in the config snippet).
    pub install_dir: PathBuf,
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}

/// `agent add`: records the agent and writes its certificate, key, token
/// and a config snippet to `out`. Returns a summary (never the token).
pub async fn agent_add(registry: &Registry, ca: &CaDir, add: &AddAgent) -> anyhow::Result<String> {
    let tenant = TenantId::new(add.tenant.clone()).context("--tenant")?;
    let agent = AgentId::new(add.name.clone()).context("--name")?;
    if !add.certificate && !add.token {
        bail!("an agent needs a certificate or a token (or both)");
    }
    let url = dash_shared::topic::parse_broker_url(&add.uplink).context("--uplink")?;
    if add.certificate && !url.tls {
        bail!("--uplink must be mqtts:// for a certificate (or use --no-certificate --token)");
    }
    if add.not_after <= Utc::now() {
        tracing::warn!(expires = %add.not_after, "issuing a certificate that has already expired");
    }
    // Nothing is recorded unless every file can be written.
    for name in [
        "ca.pem",
        "agent.pem",
        "agent.key",
        "agent.env",
        "agent.toml",
    ] {
        let path = add.out.join(name);
        if path.exists() {
            bail!("{} exists; pick another --out", path.display());
        }
    }
    if !add.out.exists() {
        std::fs::create_dir_all(&add.out)
            .with_context(|| format!("cannot create {}", add.out.display()))?;
        std::fs::set_permissions(&add.out, std::fs::Permissions::from_mode(0o700))?;
    }
    let issued = if add.certificate {
        Some(pki::issue_agent(
            ca,
            tenant.as_str(),
            agent.as_str(),
            add.not_after,
        )?)
    } else {
        None
    };
    let token = add
        .token
        .then(|| dash_runtime::secret::hex(&rand::random::<[u8; 32]>()));
    registry
        .add(&NewAgent {
            tenant: tenant.to_string(),
            agent: agent.to_string(),
            cert_sha256: issued.as_ref().map(|i| i.fingerprint.clone()),
            cert_serial: issued.as_ref().map(|i| i.serial.clone()),
            cert_not_after: issued.as_ref().map(|i| i.not_after),
            token_sha256: token.as_deref().map(registry::token_digest),
        })
        .await?;

    let on_gateway = |name: &str| add.install_dir.join(name).display().to_string();
    let mut snippet = format!(
        "# dash-agent identity for {tenant}/{agent}, written by `dash-aggregator agent add`.\n\
         tenant = \"{tenant}\"\n\
         agent_id = \"{agent}\"\n\n\
         [uplink]\n\
         url = \"{}\"\n",
        add.uplink
    );
    let mut written = Vec::new();
    if url.tls {
        let ca_pem = std::fs::read_to_string(ca.ca_cert())
            .with_context(|| format!("cannot read {}", ca.ca_cert().display()))?;
        write_file(&add.out.join("ca.pem"), &ca_pem, 0o644)?;
        written.push("ca.pem");
        let _ = writeln!(snippet, "ca_file = \"{}\"", on_gateway("ca.pem"));
    }
    if let Some(issued) = &issued {
        write_file(&add.out.join("agent.pem"), &issued.cert_pem, 0o644)?;
        write_file(&add.out.join("agent.key"), &issued.key_pem, 0o600)?;
        written.extend(["agent.pem", "agent.key"]);
        let _ = writeln!(snippet, "cert_file = \"{}\"", on_gateway("agent.pem"));
        let _ = writeln!(snippet, "key_file = \"{}\"", on_gateway("agent.key"));
    }
    if let Some(token) = &token {
        // The token goes in the environment file only, never in the config.
        write_file(
            &add.out.join("agent.env"),
            &format!("DASH_UPLINK__PASSWORD={token}\n"),
            0o600,
        )?;
        written.push("agent.env");
        let _ = writeln!(
            snippet,
            "# Token login: username \"{tenant}/{agent}\", the password is DASH_UPLINK__PASSWORD in agent.env."
        );
    }
    write_file(&add.out.join("agent.toml"), &snippet, 0o644)?;
    written.push("agent.toml");
    Ok(format!(
        "agent {tenant}/{agent} added{expiry}; {} written to {} (copy them to {} on the gateway, \
         add inputs to agent.toml{env})",
        written.join(", "),
        add.out.display(),
        add.install_dir.display(),
        expiry = issued
            .as_ref()
            .map(|i| format!(
                ", certificate valid until {}",
                i.not_after.format("%Y-%m-%d")
            ))
            .unwrap_or_default(),
        env = if token.is_some() {
            ", and agent.env to /etc/dash/agent.env"
        } else {
            ""
        },
    ))
}

/// `agent revoke`: the agent can no longer connect, its batches are not
/// stored, and the CA's revocation list names its certificate.
pub async fn agent_revoke(
    registry: &Registry,
    ca: Option<&CaDir>,
    tenant: &str,
    name: &str,
) -> anyhow::Result<String> {
    if !registry.revoke(tenant, name).await? {
        bail!("no agent {tenant}/{name} (see `dash-aggregator agent list`)");
    }
    let mut out = format!(
        "agent {tenant}/{name} revoked: connections through the embedded broker close within 2 s, and its batches are no longer stored"
    );
    if let Some(ca) = ca {
        let path = pki::write_crl(ca, &registry.revoked_serials().await?)?;
        let _ = write!(
            out,
            "; {} rewritten (for an external broker's crlfile)",
            path.display()
        );
    }
    Ok(out)
}

/// `agent list`: a table of agents.
pub async fn agent_list(registry: &Registry) -> anyhow::Result<String> {
    let agents = registry.list().await?;
    let when = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "{:<32} {:<11} {:<12} {:<21} {:<21} {:<7}\n",
        "AGENT", "AUTH", "EXPIRES", "REVOKED", "LAST SEEN", "ONLINE"
    );
    for a in &agents {
        let auth = match (a.certificate, a.token) {
            (true, true) => "cert+token",
            (true, false) => "cert",
            (false, true) => "token",
            (false, false) => "-",
        };
        let _ = writeln!(
            out,
            "{:<32} {:<11} {:<12} {:<21} {:<21} {:<7}",
            format!("{}/{}", a.tenant, a.agent),
            auth,
            a.cert_not_after
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| "-".into()),
            when(a.revoked_at),
            when(a.last_seen),
            match a.online {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
        );
    }
    let _ = write!(out, "{} agents", agents.len());
    Ok(out)
}
