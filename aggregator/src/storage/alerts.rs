//! The alerts' tables (migration 0013): the evaluator's lease, what a
//! fleet-ratio rule reads, instances, and the outbox. The rules are in
//! [`crate::alerts`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Takes or renews the evaluator's lease for `holder` for `secs`: its
/// fence, or `None` while another holds it. A new holder gets a higher
/// fence than any before it.
pub async fn take_lease(pool: &PgPool, holder: &str, secs: f64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO alert_lease (id, holder, fence, expires_at)
         VALUES (1, $1, 1, now() + make_interval(secs => $2))
         ON CONFLICT (id) DO UPDATE SET
             fence = CASE WHEN alert_lease.holder = $1 THEN alert_lease.fence ELSE alert_lease.fence + 1 END,
             holder = $1,
             expires_at = now() + make_interval(secs => $2)
         WHERE alert_lease.holder = $1 OR alert_lease.expires_at < now()
         RETURNING fence",
    )
    .bind(holder)
    .bind(secs)
    .fetch_optional(pool)
    .await
}

/// Gives the lease up (at shutdown), so another takes over at once.
pub async fn drop_lease(pool: &PgPool, holder: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE alert_lease SET expires_at = now() WHERE id = 1 AND holder = $1")
        .bind(holder)
        .execute(pool)
        .await?;
    Ok(())
}

/// One place of a kind and its subtree's devices.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupCount {
    pub place: String,
    pub name: String,
    /// Devices that have reported.
    pub total: i64,
    /// Of those, in the state counted.
    pub matching: i64,
}

/// For each place of `kind` in `tenant`: its subtree's devices that have
/// reported, and how many of them are in `state`.
pub async fn fleet_ratio(
    pool: &PgPool,
    tenant: &str,
    kind: &str,
    state: &str,
) -> sqlx::Result<Vec<GroupCount>> {
    sqlx::query_as(
        "SELECT g.place, g.name,
                count(d.device) FILTER (WHERE d.state <> 'never_reported') AS total,
                count(d.device) FILTER (WHERE d.state = $3) AS matching
         FROM places g
         LEFT JOIN places p ON p.tenant = g.tenant AND starts_with(p.path, g.path)
         LEFT JOIN devices d ON d.tenant = p.tenant AND d.place = p.place
         WHERE g.tenant = $1 AND g.kind = $2
         GROUP BY g.place, g.name ORDER BY g.place",
    )
    .bind(tenant)
    .bind(kind)
    .bind(state)
    .fetch_all(pool)
    .await
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredInstance {
    pub tenant: String,
    pub rule: String,
    pub fingerprint: String,
    pub labels: serde_json::Value,
    pub state: String,
    pub since: DateTime<Utc>,
    pub value: Option<f64>,
    pub evaluated_at: DateTime<Utc>,
    pub notified: String,
}

/// A rule's instances.
pub async fn instances(
    pool: &PgPool,
    tenant: &str,
    rule: &str,
) -> sqlx::Result<Vec<StoredInstance>> {
    sqlx::query_as(
        "SELECT tenant, rule, fingerprint, labels, state, since, value, evaluated_at, notified
         FROM alert_instances WHERE tenant = $1 AND rule = $2 ORDER BY fingerprint",
    )
    .bind(tenant)
    .bind(rule)
    .fetch_all(pool)
    .await
}

/// A notification to send, for [`apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub fingerprint: String,
    pub event: &'static str,
    pub contact: String,
    pub body: serde_json::Value,
}

/// Stores one evaluation of a rule: its instances as they are now and the
/// notifications their changes owe, in one transaction, under the lease
/// `fence` of `holder`. `false`, with nothing stored, when the lease is no
/// longer this holder's (another evaluator took over).
pub async fn apply(
    pool: &PgPool,
    holder: &str,
    fence: i64,
    instances: &[StoredInstance],
    outgoing: &[(String, String, Outgoing)],
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM alert_lease WHERE id = 1 AND holder = $1 AND fence = $2 AND expires_at > now()
         FOR UPDATE",
    )
    .bind(holder)
    .bind(fence)
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Ok(false);
    }
    for i in instances {
        sqlx::query(
            "INSERT INTO alert_instances (tenant, rule, fingerprint, labels, state, since, value,
                                          evaluated_at, notified)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant, rule, fingerprint) DO UPDATE SET
                 labels = EXCLUDED.labels, state = EXCLUDED.state, since = EXCLUDED.since,
                 value = EXCLUDED.value, evaluated_at = EXCLUDED.evaluated_at,
                 notified = EXCLUDED.notified",
        )
        .bind(&i.tenant)
        .bind(&i.rule)
        .bind(&i.fingerprint)
        .bind(&i.labels)
        .bind(&i.state)
        .bind(i.since)
        .bind(i.value)
        .bind(i.evaluated_at)
        .bind(&i.notified)
        .execute(&mut *tx)
        .await?;
    }
    for (tenant, rule, o) in outgoing {
        sqlx::query(
            "INSERT INTO alert_outbox (tenant, rule, fingerprint, event, contact, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(rule)
        .bind(&o.fingerprint)
        .bind(o.event)
        .bind(&o.contact)
        .bind(&o.body)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// An outbox row as listed.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub tenant: String,
    pub rule: String,
    pub fingerprint: String,
    pub event: String,
    pub contact: String,
    pub body: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
}

/// A tenant's outbox, oldest first.
pub async fn outbox(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, tenant, rule, fingerprint, event, contact, body, created_at, sent_at, dead_at
         FROM alert_outbox WHERE tenant = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}
