//! The agents' tables: `agents` (who may connect, with what credential) and
//! `agent_status` (what each last reported). The rules about them (what a
//! standing means, how long it is cached) are in [`crate::auth::registry`]
//! and [`crate::ingest`]; this module only reads and writes rows.

use chrono::{DateTime, Utc};
use dash_shared::{AgentId, AgentStatus, TenantId};
use sqlx::PgPool;

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

/// `(tenant, agent, revoked_at)` of the agent holding this certificate.
pub async fn by_certificate(
    pool: &PgPool,
    sha256: &str,
) -> sqlx::Result<Option<(String, String, Option<DateTime<Utc>>)>> {
    sqlx::query_as("SELECT tenant, agent, revoked_at FROM agents WHERE cert_sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await
}

/// `(token_sha256, revoked_at)` of an agent, if it exists.
pub async fn token_of(
    pool: &PgPool,
    tenant: &str,
    agent: &str,
) -> sqlx::Result<Option<(Option<String>, Option<DateTime<Utc>>)>> {
    sqlx::query_as("SELECT token_sha256, revoked_at FROM agents WHERE tenant = $1 AND agent = $2")
        .bind(tenant)
        .bind(agent)
        .fetch_optional(pool)
        .await
}

/// `Some(revoked_at)` if the agent exists.
pub async fn revoked_at(
    pool: &PgPool,
    tenant: &str,
    agent: &str,
) -> sqlx::Result<Option<Option<DateTime<Utc>>>> {
    let row: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT revoked_at FROM agents WHERE tenant = $1 AND agent = $2")
            .bind(tenant)
            .bind(agent)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(r,)| r))
}

/// Sets `last_seen` to now.
pub async fn touch(pool: &PgPool, tenant: &str, agent: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE agents SET last_seen = now() WHERE tenant = $1 AND agent = $2")
        .bind(tenant)
        .bind(agent)
        .execute(pool)
        .await?;
    Ok(())
}

/// Which of `live` (`tenant/agent`) are revoked.
pub async fn revoked_among(pool: &PgPool, live: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT tenant || '/' || agent FROM agents
         WHERE revoked_at IS NOT NULL AND tenant || '/' || agent = ANY($1)",
    )
    .bind(live)
    .fetch_all(pool)
    .await
}

/// Inserts an agent; false when its name is taken in its tenant.
pub async fn insert(pool: &PgPool, new: &NewAgent) -> sqlx::Result<bool> {
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
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Sets `revoked_at` (once); false when there is no such agent.
pub async fn revoke(pool: &PgPool, tenant: &str, agent: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE agents SET revoked_at = coalesce(revoked_at, now()) WHERE tenant = $1 AND agent = $2",
    )
    .bind(tenant)
    .bind(agent)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every agent, with when it was last seen (connected, or sent a status).
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<Listed>> {
    sqlx::query_as(
        "SELECT a.tenant, a.agent, a.cert_sha256 IS NOT NULL AS certificate,
                a.token_sha256 IS NOT NULL AS token, a.cert_not_after, a.created_at,
                a.revoked_at, greatest(a.last_seen, s.received_at) AS last_seen, s.online
         FROM agents a LEFT JOIN agent_status s ON s.tenant = a.tenant AND s.agent = a.agent
         ORDER BY a.tenant, a.agent",
    )
    .fetch_all(pool)
    .await
}

/// Serial numbers (hex) and revocation times of revoked certificates.
pub async fn revoked_serials(pool: &PgPool) -> sqlx::Result<Vec<(String, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT cert_serial, revoked_at FROM agents
         WHERE revoked_at IS NOT NULL AND cert_serial IS NOT NULL ORDER BY revoked_at",
    )
    .fetch_all(pool)
    .await
}

/// Keeps an agent's status. A status older than the one kept (a last will
/// the broker publishes long after it was written at connect) only changes
/// `online`.
pub async fn record_status(
    pool: &PgPool,
    tenant: &TenantId,
    agent: &AgentId,
    status: &AgentStatus,
) -> sqlx::Result<()> {
    let json = serde_json::to_value(status).unwrap_or_default();
    sqlx::query(
        "INSERT INTO agent_status (tenant, agent, online, version, reported_at, received_at, status)
         VALUES ($1, $2, $3, $4, 'epoch'::timestamptz + $5 * interval '1 microsecond', now(), $6)
         ON CONFLICT (tenant, agent) DO UPDATE SET online = EXCLUDED.online,
             received_at = now(),
             version = CASE WHEN EXCLUDED.reported_at >= agent_status.reported_at
                 THEN EXCLUDED.version ELSE agent_status.version END,
             status = CASE WHEN EXCLUDED.reported_at >= agent_status.reported_at
                 THEN EXCLUDED.status
                 ELSE jsonb_set(agent_status.status, '{online}', to_jsonb(EXCLUDED.online)) END,
             reported_at = GREATEST(EXCLUDED.reported_at, agent_status.reported_at)",
    )
    .bind(tenant.as_str())
    .bind(agent.as_str())
    .bind(status.online)
    .bind(&status.version)
    .bind(status.time)
    .bind(json)
    .execute(pool)
    .await?;
    Ok(())
}
