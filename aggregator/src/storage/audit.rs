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
    /// The key it was chained with ([`ChainKey::id`]); `None`: plain SHA-256.
    pub key_id: Option<String>,
}

/// A key the chain is made with (`audit.key_file`), kept outside the
/// database.
#[derive(Clone)]
pub struct ChainKey {
    secret: Vec<u8>,
    /// The first row chained with it (`audit.keyed_from`): from there on,
    /// an unkeyed row breaks the chain.
    pub from_seq: i64,
    /// Names the key in each row, never revealing it: the first 16 hex
    /// digits of SHA-256 over a label and the key.
    pub id: String,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey({})", self.id)
    }
}

impl ChainKey {
    /// The shortest key taken, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A key from its bytes; `None` when shorter than [`Self::MIN_LEN`].
    pub fn new(secret: Vec<u8>) -> Option<ChainKey> {
        use sha2::Digest;
        if secret.len() < Self::MIN_LEN {
            return None;
        }
        let mut h = sha2::Sha256::new();
        h.update(b"dash-audit-key:");
        h.update(&secret);
        let id = dash_runtime::secret::hex(&h.finalize()[..8]);
        Some(ChainKey {
            secret,
            id,
            from_seq: 1,
        })
    }

    /// The key, with rows chained with it from `seq` on.
    pub fn from(self, seq: i64) -> ChainKey {
        ChainKey {
            from_seq: seq,
            ..self
        }
    }
}

/// The hash of `entry` as row `seq` after `prev_hash`, over the previous
/// hash and a JSON array of every field in a fixed order: HMAC-SHA256 with
/// `key`, or SHA-256 without.
pub fn keyed_hash(seq: i64, entry: &Entry, prev_hash: &str, key: Option<&ChainKey>) -> String {
    use hmac::Mac;
    let text = chain_text(seq, entry, prev_hash);
    match key {
        None => dash_runtime::secret::sha256_hex(&text),
        Some(k) => {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&k.secret)
                .expect("HMAC takes a key of any length");
            mac.update(text.as_bytes());
            dash_runtime::secret::hex(&mac.finalize().into_bytes())
        }
    }
}

/// [`keyed_hash`] without a key.
pub fn chain_hash(seq: i64, entry: &Entry, prev_hash: &str) -> String {
    keyed_hash(seq, entry, prev_hash, None)
}

fn chain_text(seq: i64, entry: &Entry, prev_hash: &str) -> String {
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
    format!("{prev_hash}\n{fields}")
}

/// Appends `entries` in order, in one transaction, chained with `key`.
pub async fn append(pool: &PgPool, entries: &[Entry], key: Option<&ChainKey>) -> sqlx::Result<()> {
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
        let hash = keyed_hash(seq, e, &prev, key);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor_kind, actor, tenant, action, object, scope, client,
                                    user_agent, outcome, status, prev_hash, hash, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
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
        .bind(key.map(|k| k.id.as_str()))
        .execute(&mut *tx)
        .await?;
        prev = hash;
    }
    tx.commit().await
}

const COLUMNS: &str = "seq, at, actor_kind, actor, tenant, action, object, scope, client, user_agent, \
                       outcome, status, prev_hash, hash, key_id";

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
    /// Rows chained with the key.
    pub keyed: u64,
    /// The last row's hash: kept outside the database, it shows later that
    /// the chain still runs through it ([`verify`]'s `expect`).
    pub head: Option<String>,
}

/// Walks every row in order, in one snapshot: each seq follows the last,
/// each `prev_hash` is the previous row's hash, each hash is recomputed
/// (with `key` for keyed rows: a keyed row needs it, and an unkeyed row
/// after a keyed one breaks the chain, as a rewrite without the key
/// would). With `expect` (a row's seq and hash noted earlier), that row
/// must still be there with that hash; one retention cut is reported as
/// cut (the anchor has moved past it), which is also what removing rows and
/// moving the anchor looks like.
pub async fn verify(
    pool: &PgPool,
    key: Option<&ChainKey>,
    expect: Option<(i64, &str)>,
) -> sqlx::Result<Verified> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let anchor: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, prev_hash FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (mut next, mut prev) = anchor.unwrap_or((1, GENESIS.to_owned()));
    let mut out = Verified {
        rows: 0,
        first: None,
        last: None,
        broken: None,
        keyed: 0,
        head: None,
    };
    if let Some((seq, _)) = expect.filter(|(seq, _)| *seq < next) {
        out.broken = Some((
            seq,
            format!(
                "the expected row {seq} is before the chain's start ({next}): retention cut it, or rows were removed and the anchor moved"
            ),
        ));
        return Ok(out);
    }
    let mut expect_seen = expect.is_none();
    let mut after = next - 1;
    loop {
        let page: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 10000"
        ))
        .bind(after)
        .fetch_all(&mut *tx)
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
            } else if let Some(why) = key_problem(&row, key, out.keyed > 0) {
                Some(why)
            } else if keyed_hash(
                row.seq,
                &row.entry,
                &row.prev_hash,
                row.key_id.as_ref().and(key),
            ) != row.hash
            {
                Some("its fields do not match its hash: it was changed".to_owned())
            } else if expect.is_some_and(|(seq, hash)| seq == row.seq && hash != row.hash) {
                Some("its hash is not the one noted for it: the chain was rewritten".to_owned())
            } else {
                None
            };
            if expect.is_some_and(|(seq, _)| seq == row.seq) {
                expect_seen = true;
            }
            if row.key_id.is_some() {
                out.keyed += 1;
            }
            if let Some(why) = why {
                out.broken = Some((row.seq, why));
                return Ok(out);
            }
            next = row.seq + 1;
            after = row.seq;
            prev = row.hash;
        }
    }
    if !expect_seen && let Some((seq, _)) = expect {
        out.broken = Some((seq, format!("the expected row {seq} is not in the log")));
    }
    out.head = (out.rows > 0).then_some(prev);
    Ok(out)
}

/// Why a row's key makes it uncheckable or suspect, if it does.
fn key_problem(row: &Row, key: Option<&ChainKey>, after_keyed: bool) -> Option<String> {
    match (&row.key_id, key) {
        (None, _) if after_keyed => Some(
            "an unkeyed row after keyed ones: written, or rewritten, without the key".to_owned(),
        ),
        (None, Some(k)) if row.seq >= k.from_seq => Some(format!(
            "an unkeyed row where every row from {} is keyed (audit.keyed_from): written, or rewritten, without the key",
            k.from_seq
        )),
        (None, _) => None,
        (Some(id), Some(k)) if *id == k.id => None,
        (Some(id), Some(k)) => Some(format!(
            "it is chained with key {id}, not this one ({}): check audit.key_file",
            k.id
        )),
        (Some(id), None) => Some(format!(
            "it is chained with key {id}: verify with the config that names audit.key_file"
        )),
    }
}

/// Removes the rows older than `before` (a prefix of the chain) and moves
/// the anchor to the first row kept. Returns how many went.
pub async fn cut(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dash_audit_log'))")
        .execute(&mut *tx)
        .await?;
    // The prefix of rows before the first one at or after `before`: rows
    // are cut in chain order, so a row stamped out of order (clocks of two
    // replicas) neither takes later rows with it nor is left as a gap.
    let first_kept: Option<i64> =
        sqlx::query_scalar("SELECT min(seq) FROM audit_log WHERE at >= $1")
            .bind(before)
            .fetch_one(&mut *tx)
            .await?;
    let upto: Option<i64> = match first_kept {
        Some(k) => Some(k - 1),
        None => {
            sqlx::query_scalar("SELECT max(seq) FROM audit_log")
                .fetch_one(&mut *tx)
                .await?
        }
    };
    let lowest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM audit_log")
        .fetch_one(&mut *tx)
        .await?;
    let Some(upto) = upto.filter(|u| lowest.is_some_and(|l| *u >= l)) else {
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
