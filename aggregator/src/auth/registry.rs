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

use crate::storage::agents;

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

pub use crate::storage::agents::{Listed, NewAgent};

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
        let row = agents::by_certificate(&self.pool, fingerprint).await?;
        Ok(row.map(|(t, a, revoked)| (t, a, standing(revoked))))
    }

    /// Whether `token` is the agent's token: `Active` when it is and the
    /// agent is not revoked, `Unknown` when it is not (or the agent has no
    /// token), `Revoked` when it is but the agent was revoked.
    pub async fn by_token(&self, tenant: &str, agent: &str, token: &str) -> Result<Standing> {
        let row = agents::token_of(&self.pool, tenant, agent).await?;
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
        let s = match agents::revoked_at(&self.pool, tenant, agent).await? {
            Some(revoked) => standing(revoked),
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
        Ok(agents::touch(&self.pool, tenant, agent).await?)
    }

    /// Which of `live` (`tenant/agent`) are revoked.
    pub async fn revoked_among(&self, live: &[String]) -> Result<Vec<String>> {
        Ok(agents::revoked_among(&self.pool, live).await?)
    }

    /// Records a new agent; fails if the name is taken in its tenant.
    pub async fn add(&self, new: &NewAgent) -> Result<()> {
        if !agents::insert(&self.pool, new).await? {
            return Err(RegistryError::Taken {
                tenant: new.tenant.clone(),
                agent: new.agent.clone(),
            });
        }
        Ok(())
    }

    /// Revokes an agent; false when there is no such agent.
    pub async fn revoke(&self, tenant: &str, agent: &str) -> Result<bool> {
        Ok(agents::revoke(&self.pool, tenant, agent).await?)
    }

    /// Every agent, with when it was last seen (connected, or sent a status).
    pub async fn list(&self) -> Result<Vec<Listed>> {
        Ok(agents::list(&self.pool).await?)
    }

    /// Serial numbers (hex) and revocation times of revoked certificates.
    pub async fn revoked_serials(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        Ok(agents::revoked_serials(&self.pool).await?)
    }
}
