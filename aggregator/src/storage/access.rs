//! People and programs: `users`, `bindings`, `sessions` and `api_tokens`
//! (migration 0007). Secrets arrive here as digests; the rules (who may
//! grant what, lockout, expiry) are in [`crate::auth`] and [`crate::api`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::auth::access::{Actor, Grant, Within};

/// A user as stored, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub login: String,
    pub name: String,
    pub email: Option<String>,
    pub operator: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What a login attempt needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credentials {
    pub id: i64,
    pub password_hash: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Adds a user; false when the login is taken.
pub async fn add_user(
    pool: &PgPool,
    login: &str,
    name: &str,
    email: Option<&str>,
    password_hash: Option<&str>,
    operator: bool,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO users (login, name, email, password_hash, operator) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (login) DO NOTHING",
    )
    .bind(login)
    .bind(name)
    .bind(email)
    .bind(password_hash)
    .bind(operator)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets a password (and lifts a lockout); false when there is no such user.
pub async fn set_password(pool: &PgPool, login: &str, hash: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL WHERE login = $1",
    )
    .bind(login)
    .bind(hash)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Disables a user and ends their sessions; false when there is no such user.
pub async fn disable_user(pool: &PgPool, login: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE login = $1 RETURNING id",
    )
    .bind(login)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(id.is_some())
}

/// Claims one login attempt for `login`, counted as failed until
/// [`login_ok`] says otherwise; the attempt that reaches `limit` locks the
/// user for `lock_secs`. `None`: no such user, or locked now. The returned
/// `locked_until` is set when this attempt locked it.
pub async fn claim_login(
    pool: &PgPool,
    login: &str,
    limit: i32,
    lock_secs: f64,
) -> sqlx::Result<Option<Credentials>> {
    // The count restarts when the last failure is older than a lockout,
    // and again when it locks: known logins count as unknown ones do. Each
    // expression reads the row being updated, so parallel claims count
    // one after another.
    sqlx::query_as(&format!(
        "UPDATE users SET
             failed_logins = CASE WHEN {COUNT} >= $2 THEN 0 ELSE {COUNT} END,
             locked_until = CASE WHEN {COUNT} >= $2 THEN now() + make_interval(secs => $3) END,
             last_failed_at = now()
         WHERE login = $1 AND (locked_until IS NULL OR locked_until <= now())
         RETURNING id, password_hash, disabled_at, locked_until"
    ))
    .bind(login)
    .bind(limit)
    .bind(lock_secs)
    .fetch_optional(pool)
    .await
}

/// The failures in a row a claim makes, counting from 1 again after a
/// lockout's length without one.
const COUNT: &str = "(CASE WHEN last_failed_at IS NULL OR last_failed_at < now() - make_interval(secs => $3) THEN 1 ELSE failed_logins + 1 END)";

/// Until when `login` is locked, if it exists and ever was.
pub async fn locked_until(pool: &PgPool, login: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        "SELECT locked_until FROM users WHERE login = $1",
    )
    .bind(login)
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// A login that worked: the count starts again.
pub async fn login_ok(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET failed_logins = 0, locked_until = NULL, last_failed_at = NULL WHERE id = $1",
    )
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn users(pool: &PgPool) -> sqlx::Result<Vec<User>> {
    sqlx::query_as(
        "SELECT id, login, name, email, operator, disabled_at, locked_until, created_at
         FROM users ORDER BY login",
    )
    .fetch_all(pool)
    .await
}

/// The users holding a binding in `tenant`.
pub async fn users_of(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<User>> {
    sqlx::query_as(
        "SELECT id, login, name, email, operator, disabled_at, locked_until, created_at
         FROM users u WHERE EXISTS (SELECT 1 FROM bindings b WHERE b.user_id = u.id AND b.tenant = $1)
         ORDER BY login",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// A binding as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Binding {
    pub id: i64,
    pub login: String,
    pub tenant: String,
    pub role: String,
    pub place: Option<String>,
    pub customer: Option<String>,
}

fn within_columns(w: &Within) -> (Option<&str>, Option<&str>) {
    match w {
        Within::Tenant => (None, None),
        Within::Place(p) => (Some(p.as_str()), None),
        Within::Customer(c) => (None, Some(c.as_str())),
    }
}

/// A stored grant (the table's CHECKs keep it well formed).
fn grant_of(role: &str, place: Option<String>, customer: Option<String>) -> Option<Grant> {
    Grant::from_parts(role, place, customer).ok()
}

/// Binds `login` to `grant` in `tenant`. `Ok(None)`: no such user;
/// `Ok(Some(false))`: it already held it.
pub async fn bind(
    pool: &PgPool,
    login: &str,
    tenant: &str,
    grant: &Grant,
) -> sqlx::Result<Option<bool>> {
    let Some((id,)): Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE login = $1")
        .bind(login)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let (place, customer) = within_columns(&grant.within);
    let done = sqlx::query(
        "INSERT INTO bindings (user_id, tenant, role, place, customer) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(grant.role.as_str())
    .bind(place)
    .bind(customer)
    .execute(pool)
    .await?;
    Ok(Some(done.rows_affected() == 1))
}

/// Removes binding `id` of `tenant`; false when there is none.
pub async fn unbind(pool: &PgPool, tenant: &str, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM bindings WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn bindings_in(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<Binding>> {
    sqlx::query_as(
        "SELECT b.id, u.login, b.tenant, b.role, b.place, b.customer
         FROM bindings b JOIN users u ON u.id = b.user_id WHERE b.tenant = $1 ORDER BY u.login, b.id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// Every binding of one user, in every tenant.
pub async fn bindings_of_user(pool: &PgPool, user: i64) -> sqlx::Result<Vec<Binding>> {
    sqlx::query_as(
        "SELECT b.id, u.login, b.tenant, b.role, b.place, b.customer
         FROM bindings b JOIN users u ON u.id = b.user_id WHERE b.user_id = $1 ORDER BY b.tenant, b.id",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// A live session's user: `(user id, login, operator)`.
pub async fn session_user(
    pool: &PgPool,
    id_sha256: &str,
) -> sqlx::Result<Option<(i64, String, bool)>> {
    sqlx::query_as(
        "WITH s AS (
             UPDATE sessions SET last_seen = now()
             WHERE id_sha256 = $1 AND expires_at > now()
             RETURNING user_id)
         SELECT u.id, u.login, u.operator FROM s JOIN users u ON u.id = s.user_id
         WHERE u.disabled_at IS NULL",
    )
    .bind(id_sha256)
    .fetch_optional(pool)
    .await
}

/// A user's grants in `tenant`.
pub async fn grants_of(pool: &PgPool, user: i64, tenant: &str) -> sqlx::Result<Vec<Grant>> {
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT role, place, customer FROM bindings WHERE user_id = $1 AND tenant = $2",
    )
    .bind(user)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(r, p, c)| grant_of(&r, p, c))
        .collect())
}

pub async fn open_session(
    pool: &PgPool,
    id_sha256: &str,
    user: i64,
    hours: f64,
    client: Option<&str>,
    user_agent: Option<&str>,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO sessions (id_sha256, user_id, expires_at, client, user_agent)
         VALUES ($1, $2, now() + make_interval(secs => $3 * 3600), $4, $5) RETURNING expires_at",
    )
    .bind(id_sha256)
    .bind(user)
    .bind(hours)
    .bind(client)
    .bind(user_agent)
    .fetch_one(pool)
    .await
}

pub async fn close_session(pool: &PgPool, id_sha256: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE id_sha256 = $1 OR expires_at < now()")
        .bind(id_sha256)
        .execute(pool)
        .await?;
    Ok(())
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Token {
    pub id: i64,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub place: Option<String>,
    pub customer: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Who makes a token through the API: the user, or the token, asking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maker {
    pub user: Option<i64>,
    pub token: Option<i64>,
}

/// The [`Maker`] of a request by `actor` in `tenant`: the user's id or
/// the token's; none for the command line and bootstrap tokens.
pub async fn maker_of(pool: &PgPool, tenant: &str, actor: &Actor) -> sqlx::Result<Maker> {
    Ok(match actor {
        Actor::User(login) => Maker {
            user: sqlx::query_scalar("SELECT id FROM users WHERE login = $1")
                .bind(login)
                .fetch_optional(pool)
                .await?,
            token: None,
        },
        Actor::Token(name) => Maker {
            user: None,
            token: sqlx::query_scalar("SELECT id FROM api_tokens WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(pool)
                .await?,
        },
        _ => Maker::default(),
    })
}

/// Records a token; false when its name is taken in the tenant. A token
/// made by another never expires after it: `expires_at` is cut to the
/// maker's. Returns when it expires, too.
#[allow(clippy::too_many_arguments)]
pub async fn add_token(
    pool: &PgPool,
    tenant: &str,
    name: &str,
    sha256: &str,
    grant: &Grant,
    created_by: &str,
    expires_at: Option<DateTime<Utc>>,
    maker: Maker,
) -> sqlx::Result<Option<Option<DateTime<Utc>>>> {
    let (place, customer) = within_columns(&grant.within);
    sqlx::query_scalar(
        "INSERT INTO api_tokens (tenant, name, sha256, role, place, customer, created_by, expires_at,
                                 made_by_user, made_by_token)
         SELECT $1, $2, $3, $4, $5, $6, $7,
                CASE WHEN m.expires_at IS NULL THEN $8::timestamptz
                     ELSE least(coalesce($8::timestamptz, m.expires_at), m.expires_at) END,
                $9, $10
         FROM (SELECT (SELECT expires_at FROM api_tokens WHERE id = $10) AS expires_at) m
         ON CONFLICT DO NOTHING RETURNING expires_at",
    )
    .bind(tenant)
    .bind(name)
    .bind(sha256)
    .bind(grant.role.as_str())
    .bind(place)
    .bind(customer)
    .bind(created_by)
    .bind(expires_at)
    .bind(maker.user)
    .bind(maker.token)
    .fetch_optional(pool)
    .await
}

/// Revokes token `name` of `tenant`; false when there is none.
pub async fn revoke_token(pool: &PgPool, tenant: &str, name: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE tenant = $1 AND name = $2",
    )
    .bind(tenant)
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn tokens(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<Token>> {
    sqlx::query_as(
        "SELECT id, tenant, name, role, place, customer, created_by, created_at, expires_at,
                revoked_at, last_used_at
         FROM api_tokens WHERE tenant = $1 ORDER BY name",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// A live token's `(tenant, name, grant)`, noting its use (at most once a
/// minute, so a busy token does not write on every request).
pub async fn token_by_digest(
    pool: &PgPool,
    sha256: &str,
) -> sqlx::Result<Option<(String, String, Grant)>> {
    /// `(tenant, name, role, place, customer)`.
    type Row = (String, String, String, Option<String>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "WITH t AS (
             SELECT id, tenant, name, role, place, customer FROM api_tokens
             WHERE sha256 = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
               AND dash_maker_live(made_by_user, made_by_token)
         ), used AS (
             UPDATE api_tokens a SET last_used_at = now() FROM t
             WHERE a.id = t.id AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute')
         )
         SELECT tenant, name, role, place, customer FROM t",
    )
    .bind(sha256)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(t, n, r, p, c)| Some((t, n, grant_of(&r, p, c)?))))
}

/// Adds `login` with a password and one binding in `tenant`, in one
/// transaction; false when the login is taken.
pub async fn add_user_bound(
    pool: &PgPool,
    login: &str,
    name: &str,
    email: Option<&str>,
    password_hash: &str,
    tenant: &str,
    grant: &Grant,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO users (login, name, email, password_hash) VALUES ($1, $2, $3, $4)
         ON CONFLICT (login) DO NOTHING RETURNING id",
    )
    .bind(login)
    .bind(name)
    .bind(email)
    .bind(password_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Ok(false);
    };
    let (place, customer) = within_columns(&grant.within);
    sqlx::query(
        "INSERT INTO bindings (user_id, tenant, role, place, customer) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(tenant)
    .bind(grant.role.as_str())
    .bind(place)
    .bind(customer)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A session as its user sees it (never the cookie or its digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SessionRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    /// Whether it is the one asking.
    pub current: bool,
}

/// A user's live sessions, newest first; `current` marks the one whose
/// cookie digest is `current`.
pub async fn sessions_of(pool: &PgPool, user: i64, current: &str) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(
        "SELECT id, created_at, last_seen, expires_at, client, user_agent, id_sha256 = $2 AS current
         FROM sessions WHERE user_id = $1 AND expires_at > now() ORDER BY created_at DESC, id DESC",
    )
    .bind(user)
    .bind(current)
    .fetch_all(pool)
    .await
}

/// Ends session `id` of `user`; false when the user has no such session.
pub async fn end_session(pool: &PgPool, user: i64, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2")
        .bind(user)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends every session of `login`, if it holds bindings in `tenant` and in
/// no other, and is not an operator (an admin here does not log out
/// someone another tenant also answers for): `None` otherwise, else how
/// many ended.
pub async fn end_sessions_in(
    pool: &PgPool,
    tenant: &str,
    login: &str,
) -> sqlx::Result<Option<u64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "SELECT u.id FROM users u WHERE u.login = $1 AND NOT u.operator
             AND EXISTS (SELECT 1 FROM bindings b WHERE b.user_id = u.id AND b.tenant = $2)
             AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.user_id = u.id AND b.tenant <> $2)",
    )
    .bind(login)
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    let Some(id) = id else {
        return Ok(None);
    };
    let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(Some(done.rows_affected()))
}

/// A share link as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Share {
    pub id: i64,
    pub tenant: String,
    pub dashboard: String,
    pub label: String,
    pub place: Option<String>,
    pub customer: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

const SHARE_COLUMNS: &str = "id, tenant, dashboard, label, place, customer, created_by, created_at, expires_at, revoked_at, last_used_at";

/// What a share link shows: one dashboard of `tenant`, within `within`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShare<'a> {
    pub tenant: &'a str,
    pub dashboard: &'a str,
    pub label: &'a str,
    pub within: &'a Within,
    pub created_by: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// Records a share link whose secret has digest `sha256`, made by
/// `maker`: it never expires after the token that made it.
pub async fn add_share(
    pool: &PgPool,
    s: &NewShare<'_>,
    sha256: &str,
    maker: Maker,
) -> sqlx::Result<Share> {
    let (place, customer) = within_columns(s.within);
    sqlx::query_as(&format!(
        "INSERT INTO share_tokens (tenant, dashboard, label, sha256, place, customer, created_by, expires_at,
                                   made_by_user, made_by_token)
         SELECT $1, $2, $3, $4, $5, $6, $7, least($8::timestamptz, coalesce(m.expires_at, $8)), $9, $10
         FROM (SELECT (SELECT expires_at FROM api_tokens WHERE id = $10) AS expires_at) m
         RETURNING {SHARE_COLUMNS}"
    ))
    .bind(s.tenant)
    .bind(s.dashboard)
    .bind(s.label)
    .bind(sha256)
    .bind(place)
    .bind(customer)
    .bind(s.created_by)
    .bind(s.expires_at)
    .bind(maker.user)
    .bind(maker.token)
    .fetch_one(pool)
    .await
}

/// A tenant's share links, newest first; only those `created_by` made when
/// it is given.
pub async fn shares(
    pool: &PgPool,
    tenant: &str,
    created_by: Option<&str>,
) -> sqlx::Result<Vec<Share>> {
    sqlx::query_as(&format!(
        "SELECT {SHARE_COLUMNS} FROM share_tokens
         WHERE tenant = $1 AND ($2::text IS NULL OR created_by = $2) ORDER BY id DESC"
    ))
    .bind(tenant)
    .bind(created_by)
    .fetch_all(pool)
    .await
}

/// Revokes share `id` of `tenant` (only if `created_by` made it, when
/// given); false when there is no such share.
pub async fn revoke_share(
    pool: &PgPool,
    tenant: &str,
    id: i64,
    created_by: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE share_tokens SET revoked_at = coalesce(revoked_at, now())
         WHERE tenant = $1 AND id = $2 AND ($3::text IS NULL OR created_by = $3)",
    )
    .bind(tenant)
    .bind(id)
    .bind(created_by)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A live share link by its digest, noting its use (at most once a minute).
pub async fn share_by_digest(pool: &PgPool, sha256: &str) -> sqlx::Result<Option<Share>> {
    sqlx::query_as(&format!(
        "WITH t AS (
             SELECT {SHARE_COLUMNS} FROM share_tokens
             WHERE sha256 = $1 AND revoked_at IS NULL AND expires_at > now()
               AND dash_maker_live(made_by_user, made_by_token)
         ), used AS (
             UPDATE share_tokens s SET last_used_at = now() FROM t
             WHERE s.id = t.id AND (s.last_used_at IS NULL OR s.last_used_at < now() - interval '1 minute')
         )
         SELECT * FROM t"
    ))
    .bind(sha256)
    .fetch_optional(pool)
    .await
}
