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

/// A change of an instance's state, for its history.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub fingerprint: String,
    pub from: &'static str,
    pub to: &'static str,
    pub value: Option<f64>,
    pub summary: String,
}

/// Stores one evaluation of a rule: its instances as they changed, their
/// transitions, and the notifications the changes owe, in one transaction, under the lease
/// `fence` of `holder`. `false`, with nothing stored, when the lease is no
/// longer this holder's (another evaluator took over).
pub async fn apply(
    pool: &PgPool,
    holder: &str,
    fence: i64,
    instances: &[StoredInstance],
    history: &[Transition],
    outgoing: &[(String, String, Outgoing)],
) -> sqlx::Result<bool> {
    if instances.is_empty() && history.is_empty() && outgoing.is_empty() {
        return Ok(true);
    }
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
    if let Some(first) = instances.first() {
        sqlx::query(
            "INSERT INTO alert_history (tenant, rule, fingerprint, from_state, to_state, value, summary, at)
             SELECT $1, $2, f, a, b, v, s, $8
             FROM unnest($3::text[], $4::text[], $5::text[], $6::float8[], $7::text[]) AS u(f, a, b, v, s)",
        )
        .bind(&first.tenant)
        .bind(&first.rule)
        .bind(history.iter().map(|h| h.fingerprint.as_str()).collect::<Vec<_>>())
        .bind(history.iter().map(|h| h.from).collect::<Vec<_>>())
        .bind(history.iter().map(|h| h.to).collect::<Vec<_>>())
        .bind(history.iter().map(|h| h.value).collect::<Vec<_>>())
        .bind(history.iter().map(|h| h.summary.as_str()).collect::<Vec<_>>())
        .bind(first.evaluated_at)
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

/// An outbox row to send.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Due {
    pub id: i64,
    pub contact: String,
    pub event: String,
    pub body: serde_json::Value,
    pub attempts: i32,
}

/// How a send ended, for [`settle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Sent,
    /// Try again after this many seconds.
    Retry {
        after_secs: f64,
        error: String,
    },
    /// Refused for good: kept with the reason.
    Dead {
        reason: String,
    },
}

/// Claims up to `limit` due rows for `contacts`, in order, each the oldest
/// unsent one of its instance and contact point (a resolve never overtakes
/// its trigger), locked until `tx` ends: another aggregator's worker skips
/// them.
pub async fn claim_due(
    tx: &mut sqlx::PgConnection,
    contacts: &[String],
    limit: i64,
) -> sqlx::Result<Vec<Due>> {
    sqlx::query_as(
        "SELECT o.id, o.contact, o.event, o.body, o.attempts FROM alert_outbox o
         WHERE o.sent_at IS NULL AND o.dead_at IS NULL AND o.next_at <= now()
           AND o.contact = ANY($1)
           AND NOT EXISTS (SELECT 1 FROM alert_outbox e
                           WHERE e.tenant = o.tenant AND e.rule = o.rule
                             AND e.fingerprint = o.fingerprint AND e.contact = o.contact
                             AND e.id < o.id AND e.sent_at IS NULL AND e.dead_at IS NULL)
         ORDER BY o.id LIMIT $2
         FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(contacts)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
}

/// Records how sending row `id` ended.
pub async fn settle(tx: &mut sqlx::PgConnection, id: i64, how: &Settled) -> sqlx::Result<()> {
    match how {
        Settled::Sent => {
            sqlx::query(
                "UPDATE alert_outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        Settled::Retry { after_secs, error } => {
            sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, last_error = $2,
                     next_at = now() + make_interval(secs => $3) WHERE id = $1",
            )
            .bind(id)
            .bind(error)
            .bind(after_secs)
            .execute(&mut *tx)
            .await?;
        }
        Settled::Dead { reason } => {
            sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, dead_at = now(), last_error = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// `(attempts, sent, dead reason)` of every row, oldest first (for tests
/// and the API to come).
pub async fn deliveries(
    pool: &PgPool,
    tenant: &str,
) -> sqlx::Result<
    Vec<(
        i32,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<DateTime<Utc>>,
    )>,
> {
    sqlx::query_as(
        "SELECT attempts, sent_at, last_error, dead_at FROM alert_outbox WHERE tenant = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}
