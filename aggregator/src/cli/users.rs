//! `dash-aggregator user|grant|token ...`: people and programs from the
//! command line, which works on a fresh install (it needs the database,
//! not a login), so the first admin is made here:
//!
//! ```text
//! printf '%s\n' "$PASSWORD" | dash-aggregator user add --login ana --password-stdin
//! dash-aggregator grant --login ana --tenant acme --role admin
//! ```

use std::fmt::Write as _;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dash_shared::TenantId;
use sqlx::PgPool;

use crate::auth::access::{Grant, Within};
use crate::auth::password;
use crate::storage::access as rows;

/// A role in a scope, from `--role` and at most one of `--place`, `--customer`.
pub fn grant(role: &str, place: Option<String>, customer: Option<String>) -> anyhow::Result<Grant> {
    Grant::from_parts(role, place, customer)
        .map_err(|e| anyhow::anyhow!("{e} (--role, --place, --customer)"))
}

/// The first line of standard input, without its newline.
pub fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// `user add`.
pub async fn user_add(
    pool: &PgPool,
    login: &str,
    name: &str,
    email: Option<&str>,
    password: Option<String>,
    operator: bool,
) -> anyhow::Result<String> {
    let hash = match password {
        Some(p) => Some(tokio::task::spawn_blocking(move || password::hash(&p)).await??),
        None => None,
    };
    if !rows::add_user(pool, login, name, email, hash.as_deref(), operator).await? {
        bail!("user {login:?} exists (change it with `user passwd`, `grant`)");
    }
    Ok(format!(
        "user {login} added{}{}",
        if operator {
            " as an operator (every tenant)"
        } else {
            ""
        },
        if hash.is_none() {
            "; no password yet (`user passwd`)"
        } else {
            ""
        }
    ))
}

/// `user passwd`.
pub async fn user_passwd(pool: &PgPool, login: &str, password: String) -> anyhow::Result<String> {
    let hash = tokio::task::spawn_blocking(move || password::hash(&password)).await??;
    if !rows::set_password(pool, login, &hash).await? {
        bail!("no user {login:?} (`user list`)");
    }
    Ok(format!("password of {login} set; a lockout is lifted"))
}

/// `user disable`.
pub async fn user_disable(pool: &PgPool, login: &str) -> anyhow::Result<String> {
    if !rows::disable_user(pool, login).await? {
        bail!("no user {login:?} (`user list`)");
    }
    Ok(format!("user {login} disabled; their sessions are ended"))
}

/// `user list`: users and their bindings.
pub async fn user_list(pool: &PgPool) -> anyhow::Result<String> {
    let users = rows::users(pool).await?;
    let mut out = String::new();
    for u in &users {
        let state = match (u.disabled_at, u.locked_until.filter(|t| *t > Utc::now())) {
            (Some(_), _) => " (disabled)",
            (None, Some(_)) => " (locked)",
            _ => "",
        };
        let _ = writeln!(
            out,
            "{}{}{}",
            u.login,
            if u.operator { " [operator]" } else { "" },
            state
        );
        for b in rows::bindings_of_user(pool, u.id).await? {
            let within = match (&b.place, &b.customer) {
                (Some(p), _) => format!("place {p}"),
                (None, Some(c)) => format!("customer {c}"),
                _ => "whole tenant".into(),
            };
            let _ = writeln!(out, "  {} {} in {} ({within})", b.id, b.role, b.tenant);
        }
    }
    let _ = write!(out, "{} users", users.len());
    Ok(out)
}

/// `grant`.
pub async fn grant_add(
    pool: &PgPool,
    login: &str,
    tenant: &str,
    g: &Grant,
) -> anyhow::Result<String> {
    let tenant = TenantId::new(tenant.to_owned()).context("--tenant")?;
    match rows::bind(pool, login, tenant.as_str(), g).await {
        Ok(None) => bail!("no user {login:?} (`user add` first)"),
        Ok(Some(added)) => Ok(format!(
            "{login}: {} in {tenant} ({}){}",
            g.role.as_str(),
            describe(&g.within),
            if added { "" } else { ", already held" }
        )),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            bail!("no such place or customer in {tenant} (`place list`)")
        }
        Err(e) => Err(e.into()),
    }
}

fn describe(w: &Within) -> String {
    match w {
        Within::Tenant => "whole tenant".into(),
        Within::Place(p) => format!("place {p} and below"),
        Within::Customer(c) => format!("customer {c}"),
    }
}

/// A new API token's secret: 256 random bits, hex.
pub fn new_token() -> String {
    dash_runtime::secret::hex(&rand::random::<[u8; 32]>())
}

/// `token add`: records the token and returns it, the only time it is shown.
pub async fn token_add(
    pool: &PgPool,
    tenant: &str,
    name: &str,
    g: &Grant,
    created_by: &str,
    expires: Option<DateTime<Utc>>,
) -> anyhow::Result<String> {
    let tenant = TenantId::new(tenant.to_owned()).context("--tenant")?;
    let token = new_token();
    let sha = dash_runtime::secret::sha256_hex(&token);
    let maker = rows::Maker::default();
    match rows::add_token(
        pool,
        tenant.as_str(),
        name,
        &sha,
        g,
        created_by,
        expires,
        maker,
    )
    .await
    {
        Ok(Some(_)) => Ok(token),
        Ok(None) => bail!("a token {name:?} exists in {tenant}; pick another name or revoke it"),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            bail!("no such place or customer in {tenant} (`place list`)")
        }
        Err(e) => Err(e.into()),
    }
}

/// A time in a listing, to the second; `-` for none.
fn stamp(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A stored scope in a listing: `place P`, `customer C` or `tenant`.
fn scope_label(place: &Option<String>, customer: &Option<String>) -> String {
    match (place, customer) {
        (Some(p), _) => format!("place {p}"),
        (None, Some(c)) => format!("customer {c}"),
        _ => "tenant".into(),
    }
}

/// `token revoke`.
pub async fn token_revoke(pool: &PgPool, tenant: &str, name: &str) -> anyhow::Result<String> {
    if !rows::revoke_token(pool, tenant, name).await? {
        bail!("no token {name:?} in {tenant} (`token list`)");
    }
    Ok(format!(
        "token {name} of {tenant} revoked: refused from now on"
    ))
}

/// `token list`.
pub async fn token_list(pool: &PgPool, tenant: &str) -> anyhow::Result<String> {
    let tokens = rows::tokens(pool, tenant).await?;
    let mut out = format!(
        "{:<24} {:<7} {:<20} {:<21} {:<21} {:<21}\n",
        "TOKEN", "ROLE", "SCOPE", "EXPIRES", "REVOKED", "LAST USED"
    );
    for t in &tokens {
        let scope = scope_label(&t.place, &t.customer);
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<20} {:<21} {:<21} {:<21}",
            t.name,
            t.role,
            scope,
            stamp(t.expires_at),
            stamp(t.revoked_at),
            stamp(t.last_used_at)
        );
    }
    let _ = write!(out, "{} tokens", tokens.len());
    Ok(out)
}

/// `share add`: records a share link and returns its token, the only time
/// it is shown.
pub async fn share_add(
    pool: &PgPool,
    tenant: &str,
    dashboard: &str,
    label: &str,
    within: &Within,
    days: u32,
) -> anyhow::Result<String> {
    let tenant = TenantId::new(tenant.to_owned()).context("--tenant")?;
    crate::cli::fleet::check_id("--dashboard", dashboard)?;
    if days == 0 || days > crate::api::shares::MAX_DAYS {
        bail!("--days {days}: 1 to {}", crate::api::shares::MAX_DAYS);
    }
    let token = new_token();
    let share = rows::NewShare {
        tenant: tenant.as_str(),
        dashboard,
        label,
        within,
        created_by: "command line",
        expires_at: Utc::now() + chrono::Duration::days(days.into()),
    };
    let digest = dash_runtime::secret::sha256_hex(&token);
    match rows::add_share(pool, &share, &digest, rows::Maker::default()).await {
        Ok(s) => Ok(format!(
            "share {} of {tenant}: dashboard {dashboard}, {}, until {}: {token}\n(shown once; the link's token)",
            s.id,
            describe(within),
            s.expires_at.format("%Y-%m-%dT%H:%M:%SZ")
        )),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            bail!("no such place or customer in {tenant} (`place list`)")
        }
        Err(e) => Err(e.into()),
    }
}

/// `share revoke`.
pub async fn share_revoke(pool: &PgPool, tenant: &str, id: i64) -> anyhow::Result<String> {
    if !rows::revoke_share(pool, tenant, id, None).await? {
        bail!("no share {id} in {tenant} (`share list`)");
    }
    Ok(format!(
        "share {id} of {tenant} revoked: refused from now on"
    ))
}

/// `share list`.
pub async fn share_list(pool: &PgPool, tenant: &str) -> anyhow::Result<String> {
    let shares = rows::shares(pool, tenant, None).await?;
    let mut out = format!(
        "{:<6} {:<20} {:<24} {:<21} {:<21} {:<21} LABEL\n",
        "ID", "DASHBOARD", "SCOPE", "EXPIRES", "REVOKED", "LAST USED"
    );
    for s in &shares {
        let scope = scope_label(&s.place, &s.customer);
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<24} {:<21} {:<21} {:<21} {}",
            s.id,
            s.dashboard,
            scope,
            stamp(Some(s.expires_at)),
            stamp(s.revoked_at),
            stamp(s.last_used_at),
            s.label
        );
    }
    let _ = write!(out, "{} share links", shares.len());
    Ok(out)
}
