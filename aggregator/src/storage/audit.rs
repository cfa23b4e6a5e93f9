//! The audit log's rows (migration 0008): appended as a hash chain under
//! one advisory lock (so replicas sharing a database chain in turn),
//! listed, verified, and cut by retention. The rules are in
//! [`crate::audit`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// The `prev_hash` of the first row ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One request, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor: String,
    pub tenant: Option<String>,
    pub action: String,
    pub object: String,
    pub scope: String,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    pub outcome: String,
    pub status: i32,
}

/// A stored row: the entry, its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Row {
    pub seq: i64,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub entry: Entry,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of `entry` as row `seq` after `prev_hash`: SHA-256 over the
/// previous hash and a JSON array of every field, in a fixed order.
pub fn chain_hash(seq: i64, entry: &Entry, prev_hash: &str) -> String {
    let fields = serde_json::json!([
        seq,
        entry.at.timestamp_micros(),
        entry.actor_kind,
        entry.actor,
        entry.tenant,
        entry.action,
        entry.object,
        entry.scope,
        entry.client,
        entry.user_agent,
        entry.outcome,
        entry.status,
    ]);
    dash_runtime::secret::sha256_hex(&format!("{prev_hash}\n{fields}"))
}

/// Appends `entries` in order, in one transaction.
pub async fn append(pool: &PgPool, entries: &[Entry]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dash_audit_log'))")
        .execute(&mut *tx)
        .await?;
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (mut seq, mut prev) = match last {
        Some(l) => l,
        None => {
            let anchor: Option<(i64, String)> =
                sqlx::query_as("SELECT seq - 1, prev_hash FROM audit_anchor WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            anchor.unwrap_or((0, GENESIS.to_owned()))
        }
    };
    for e in entries {
        seq += 1;
        let hash = chain_hash(seq, e, &prev);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor_kind, actor, tenant, action, object, scope, client,
                                    user_agent, outcome, status, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(seq)
        .bind(e.at)
        .bind(&e.actor_kind)
        .bind(&e.actor)
        .bind(&e.tenant)
        .bind(&e.action)
        .bind(&e.object)
        .bind(&e.scope)
        .bind(&e.client)
        .bind(&e.user_agent)
        .bind(&e.outcome)
        .bind(e.status)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        prev = hash;
    }
    tx.commit().await
}

const COLUMNS: &str = "seq, at, actor_kind, actor, tenant, action, object, scope, client, user_agent, \
                       outcome, status, prev_hash, hash";

/// A tenant's rows in `[from, to)`, oldest first, at most `limit`.
pub async fn list(
    pool: &PgPool,
    tenant: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Row>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE tenant = $1 AND at >= $2 AND at < $3
         ORDER BY seq LIMIT $4"
    ))
    .bind(tenant)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What a check of the whole chain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub rows: u64,
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// The first row that breaks the chain, and how; `None`: intact.
    pub broken: Option<(i64, String)>,
}

/// Walks every row in order: each seq follows the last, each `prev_hash`
/// is the previous row's hash, each hash is recomputed.
pub async fn verify(pool: &PgPool) -> sqlx::Result<Verified> {
    let anchor: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, prev_hash FROM audit_anchor WHERE id = 1")
            .fetch_optional(pool)
            .await?;
    let (mut next, mut prev) = anchor.unwrap_or((1, GENESIS.to_owned()));
    let mut out = Verified {
        rows: 0,
        first: None,
        last: None,
        broken: None,
    };
    let mut after = next - 1;
    loop {
        let page: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 10000"
        ))
        .bind(after)
        .fetch_all(pool)
        .await?;
        if page.is_empty() {
            break;
        }
        for row in page {
            out.first.get_or_insert(row.seq);
            out.last = Some(row.seq);
            out.rows += 1;
            let why = if row.seq != next {
                Some(format!(
                    "expected row {next}, found {}: rows are missing",
                    row.seq
                ))
            } else if row.prev_hash != prev {
                Some("its prev_hash is not the previous row's hash".to_owned())
            } else if chain_hash(row.seq, &row.entry, &row.prev_hash) != row.hash {
                Some("its fields do not match its hash: it was changed".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                out.broken = Some((row.seq, why));
                return Ok(out);
            }
            next = row.seq + 1;
            after = row.seq;
            prev = row.hash;
        }
    }
    Ok(out)
}

/// Removes the rows older than `before` (a prefix of the chain) and moves
/// the anchor to the first row kept. Returns how many went.
pub async fn cut(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dash_audit_log'))")
        .execute(&mut *tx)
        .await?;
    let Some(upto): Option<i64> =
        sqlx::query_scalar("SELECT max(seq) FROM audit_log WHERE at < $1")
            .bind(before)
            .fetch_one(&mut *tx)
            .await?
    else {
        return Ok(0);
    };
    let kept: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, prev_hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1")
            .bind(upto)
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev) = match kept {
        Some(k) => k,
        None => {
            let hash: String = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
                .bind(upto)
                .fetch_one(&mut *tx)
                .await?;
            (upto + 1, hash)
        }
    };
    sqlx::query("SET LOCAL dash.audit_retention = 'on'")
        .execute(&mut *tx)
        .await?;
    let gone = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
        .bind(upto)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(
        "INSERT INTO audit_anchor (id, seq, prev_hash, cut_at) VALUES (1, $1, $2, now())
         ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, prev_hash = EXCLUDED.prev_hash, cut_at = now()",
    )
    .bind(seq)
    .bind(&prev)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(gone)
}
