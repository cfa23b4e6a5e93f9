//! People and programs: `users`, `bindings`, `sessions` and `api_tokens`
//! (migration 0007). Secrets arrive here as digests; the rules (who may
//! grant what, lockout, expiry) are in [`crate::auth`] and [`crate::api`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::auth::access::{Grant, Within};

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

pub async fn credentials(pool: &PgPool, login: &str) -> sqlx::Result<Option<Credentials>> {
    sqlx::query_as(
        "SELECT id, password_hash, disabled_at, locked_until FROM users WHERE login = $1",
    )
    .bind(login)
    .fetch_optional(pool)
    .await
}

/// Counts a failed login; after `limit` in a row the user is locked for
/// `lock_secs`. Returns when the lock ends, if it is locked now.
pub async fn login_failed(
    pool: &PgPool,
    id: i64,
    limit: i32,
    lock_secs: f64,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "UPDATE users SET failed_logins = failed_logins + 1,
             locked_until = CASE WHEN failed_logins + 1 >= $2
                 THEN now() + make_interval(secs => $3) ELSE locked_until END
         WHERE id = $1 RETURNING locked_until",
    )
    .bind(id)
    .bind(limit)
    .bind(lock_secs)
    .fetch_one(pool)
    .await
}

/// A login that worked: the count starts again.
pub async fn login_ok(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
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

/// Records a token; false when its name is taken in the tenant.
pub async fn add_token(
    pool: &PgPool,
    tenant: &str,
    name: &str,
    sha256: &str,
    grant: &Grant,
    created_by: &str,
    expires_at: Option<DateTime<Utc>>,
) -> sqlx::Result<bool> {
    let (place, customer) = within_columns(&grant.within);
    let done = sqlx::query(
        "INSERT INTO api_tokens (tenant, name, sha256, role, place, customer, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(name)
    .bind(sha256)
    .bind(grant.role.as_str())
    .bind(place)
    .bind(customer)
    .bind(created_by)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
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
