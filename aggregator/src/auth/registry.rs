//! The registry of agents (table `agents`): who may connect and publish.
//!
//! An agent proves who it is with a client certificate, named by the
//! SHA-256 of its DER, or with a token, kept as its SHA-256 (tokens are 256
//! random bits, so a plain hash is enough to make a stolen table useless).
//! A revoked agent cannot connect, and its batches are not stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `agent add` with a name its tenant already used: names are never
    /// reused, so a revoked agent's batches can never be taken for a new one's.
    #[error(
        "agent {tenant}/{agent} already exists; an agent name is never reused, even after `agent revoke`: pick another"
    )]
    Taken { tenant: String, agent: String },
    /// PostgreSQL could not be reached or refused the statement; a lookup
    /// may be retried.
    #[error("the agent registry in PostgreSQL failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// What the registry's functions return.
pub type Result<T> = std::result::Result<T, RegistryError>;

/// Where an agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Active,
    Revoked,
    Unknown,
}

impl Standing {
    /// The label counted when an agent is refused for it.
    pub fn reason(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::Revoked => "revoked",
            Standing::Unknown => "unknown_agent",
        }
    }
}

/// How long a standing looked up for ingest is reused: a revocation stops
/// an agent's batches within this long.
const CACHE_FOR: Duration = Duration::from_secs(2);

/// One agent as `agent list` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    pub tenant: String,
    pub agent: String,
    pub certificate: bool,
    pub token: bool,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub online: Option<bool>,
}

/// A new agent's credentials, as stored.
#[derive(Debug, Clone, Default)]
pub struct NewAgent {
    pub tenant: String,
    pub agent: String,
    pub cert_sha256: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub token_sha256: Option<String>,
}

/// `(tenant, agent) -> (when looked up, standing)`.
type StandingCache = HashMap<(String, String), (Instant, Standing)>;

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
    cache: Arc<Mutex<StandingCache>>,
}

/// SHA-256 of a token, hex.
pub fn token_digest(token: &str) -> String {
    dash_runtime::secret::sha256_hex(token)
}

fn standing(revoked: Option<DateTime<Utc>>) -> Standing {
    match revoked {
        Some(_) => Standing::Revoked,
        None => Standing::Active,
    }
}

impl Registry {
    pub fn new(pool: PgPool) -> Registry {
        Registry {
            pool,
            cache: Arc::default(),
        }
    }

    /// The agent a client certificate belongs to, and its standing.
    pub async fn by_certificate(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, String, Standing)>> {
        let row: Option<(String, String, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT tenant, agent, revoked_at FROM agents WHERE cert_sha256 = $1")
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(t, a, revoked)| (t, a, standing(revoked))))
    }

    /// Whether `token` is the agent's token: `Active` when it is and the
    /// agent is not revoked, `Unknown` when it is not (or the agent has no
    /// token), `Revoked` when it is but the agent was revoked.
    pub async fn by_token(&self, tenant: &str, agent: &str, token: &str) -> Result<Standing> {
        let row: Option<(Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT token_sha256, revoked_at FROM agents WHERE tenant = $1 AND agent = $2",
        )
        .bind(tenant)
        .bind(agent)
        .fetch_optional(&self.pool)
        .await?;
        let given = token_digest(token);
        Ok(match row {
            Some((Some(stored), revoked)) if stored == given => standing(revoked),
            _ => Standing::Unknown,
        })
    }

    /// An agent's standing, looked up at most every [`CACHE_FOR`].
    pub async fn standing(&self, tenant: &str, agent: &str) -> Result<Standing> {
        let key = (tenant.to_owned(), agent.to_owned());
        if let Some((at, s)) = self.cache.lock().expect("registry cache").get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(*s);
        }
        let row: Option<(Option<DateTime<Utc>>,)> =
            sqlx::query_as("SELECT revoked_at FROM agents WHERE tenant = $1 AND agent = $2")
                .bind(tenant)
                .bind(agent)
                .fetch_optional(&self.pool)
                .await?;
        let s = match row {
            Some((revoked,)) => standing(revoked),
            None => Standing::Unknown,
        };
        let mut cache = self.cache.lock().expect("registry cache");
        if cache.len() >= 10_000 {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
        }
        cache.insert(key, (Instant::now(), s));
        Ok(s)
    }

    /// Notes that the agent connected now.
    pub async fn seen(&self, tenant: &str, agent: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET last_seen = now() WHERE tenant = $1 AND agent = $2")
            .bind(tenant)
            .bind(agent)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Which of `live` (`tenant/agent`) are revoked.
    pub async fn revoked_among(&self, live: &[String]) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT tenant || '/' || agent FROM agents
             WHERE revoked_at IS NOT NULL AND tenant || '/' || agent = ANY($1)",
        )
        .bind(live)
        .fetch_all(&self.pool)
        .await
        .map_err(RegistryError::from)
    }

    /// Records a new agent; fails if the name is taken in its tenant.
    pub async fn add(&self, new: &NewAgent) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO agents (tenant, agent, cert_sha256, cert_serial, cert_not_after, token_sha256)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&new.tenant)
        .bind(&new.agent)
        .bind(&new.cert_sha256)
        .bind(&new.cert_serial)
        .bind(new.cert_not_after)
        .bind(&new.token_sha256)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(RegistryError::Taken {
                tenant: new.tenant.clone(),
                agent: new.agent.clone(),
            });
        }
        Ok(())
    }

    /// Revokes an agent; false when there is no such agent.
    pub async fn revoke(&self, tenant: &str, agent: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE agents SET revoked_at = coalesce(revoked_at, now()) WHERE tenant = $1 AND agent = $2",
        )
        .bind(tenant)
        .bind(agent)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every agent, with when it was last seen (connected, or sent a status).
    pub async fn list(&self) -> Result<Vec<Listed>> {
        sqlx::query_as(
            "SELECT a.tenant, a.agent, a.cert_sha256 IS NOT NULL AS certificate,
                    a.token_sha256 IS NOT NULL AS token, a.cert_not_after, a.created_at,
                    a.revoked_at, greatest(a.last_seen, s.received_at) AS last_seen, s.online
             FROM agents a LEFT JOIN agent_status s ON s.tenant = a.tenant AND s.agent = a.agent
             ORDER BY a.tenant, a.agent",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(RegistryError::from)
    }

    /// Serial numbers (hex) and revocation times of revoked certificates.
    pub async fn revoked_serials(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        sqlx::query_as(
            "SELECT cert_serial, revoked_at FROM agents
             WHERE revoked_at IS NOT NULL AND cert_serial IS NOT NULL ORDER BY revoked_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(RegistryError::from)
    }
}
