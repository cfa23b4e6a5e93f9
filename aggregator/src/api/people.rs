//! People and tokens of a tenant, for its admins:
//!
//! - `GET /api/v1/tenants/{tenant}/users`: users with a binding here, and
//!   the bindings (a tenant-wide admin).
//! - `POST /api/v1/tenants/{tenant}/users` with
//!   `{"login", "password", "name"?, "email"?, "role", "place"?, "customer"?}`:
//!   a new local account holding that one role here (an admin, within what
//!   they administer). Logins are global, so a taken one is 409.
//! - `DELETE /api/v1/tenants/{tenant}/users/{login}/sessions`: logs a user
//!   of this tenant out everywhere (a tenant-wide admin; not an operator).
//! - `POST /api/v1/tenants/{tenant}/bindings` with
//!   `{"login", "role", "place"?, "customer"?}`: an admin grants a role
//!   within what they administer, never beyond it.
//! - `DELETE /api/v1/tenants/{tenant}/bindings/{id}` (a tenant-wide admin).
//! - `GET /api/v1/tenants/{tenant}/tokens`, `POST` with
//!   `{"name", "role", "place"?, "customer"?, "expires_at"?}` (the answer
//!   holds the token, the only time it is shown). A token ends with its
//!   maker: it stops when the user who made it is disabled, or the token
//!   that made it is revoked or expires, and never expires after it.
//!   `DELETE /api/v1/tenants/{tenant}/tokens/{name}` to revoke one.
//! - `GET /api/v1/tenants/{tenant}/audit`: the tenant's audit rows, as JSON
//!   or CSV (a tenant-wide admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Scoped, require};
use super::{Api, ApiError, bad};
use crate::auth::access::{Grant, Role, Scope, Within};
use crate::storage::access as rows;
use crate::storage::fleet;

pub(crate) fn tenant_admin(scope: &Scope) -> Result<(), ApiError> {
    if scope.may_tenant_wide(Role::Admin) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            "this needs the admin role for the whole tenant".into(),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    role: String,
    place: Option<String>,
    customer: Option<String>,
}

impl GrantBody {
    fn grant(&self) -> Result<Grant, ApiError> {
        Grant::from_parts(&self.role, self.place.clone(), self.customer.clone()).map_err(bad)
    }
}

/// 403 unless the caller administers all of `grant`'s scope.
async fn may_give(api: &Api, scope: &Scope, grant: &Grant) -> Result<(), ApiError> {
    may_open(api, scope, Role::Admin, &grant.within).await
}

/// 403 unless the caller holds `role` over all of `within`.
pub(crate) async fn may_open(
    api: &Api,
    scope: &Scope,
    role: Role,
    within: &Within,
) -> Result<(), ApiError> {
    let admin = require(scope, role)?;
    let covered = match within {
        Within::Tenant => admin.whole_tenant(),
        Within::Place(p) => fleet::covers(&api.pool, &admin, Some(p), None).await?,
        Within::Customer(c) => {
            admin.whole_tenant()
                || admin
                    .reach()
                    .customers
                    .is_some_and(|cs| cs.iter().any(|x| x == c))
        }
    };
    if covered {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "you may grant or share only within what you hold {} for",
                role.as_str()
            ),
        ))
    }
}

pub(crate) fn foreign_key(e: sqlx::Error) -> ApiError {
    match e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            bad("no such place or customer in this tenant")
        }
        e => e.into(),
    }
}

/// `GET /api/v1/tenants/{tenant}/users`
pub async fn users(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
) -> Result<Json<Value>, ApiError> {
    tenant_admin(&scope)?;
    let t = scope.tenant().as_str();
    let users = rows::users_of(&api.pool, t).await?;
    let bindings = rows::bindings_in(&api.pool, t).await?;
    Ok(Json(json!({ "users": users, "bindings": bindings })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    login: String,
    password: String,
    #[serde(default)]
    name: String,
    email: Option<String>,
    #[serde(flatten)]
    grant: GrantBody,
}

/// `POST /api/v1/tenants/{tenant}/users`
pub async fn add_user(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let grant = body.grant.grant()?;
    may_give(&api, &scope, &grant).await?;
    let login_ok = (1..=128).contains(&body.login.len())
        && body
            .login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c));
    if !login_ok {
        return Err(bad(
            "login: 1 to 128 letters, digits, '.', '_', '@', '+' or '-'",
        ));
    }
    let password = body.password.clone();
    let hash = tokio::task::spawn_blocking(move || crate::auth::password::hash(&password))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| bad(e.to_string()))?;
    let added = rows::add_user_bound(
        &api.pool,
        &body.login,
        &body.name,
        body.email.as_deref(),
        &hash,
        scope.tenant().as_str(),
        &grant,
    )
    .await
    .map_err(foreign_key)?;
    if !added {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "that login is taken; pick another (an existing user is given a role with POST .../bindings)".into(),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "login": body.login, "grant": grant })),
    ))
}

/// `DELETE /api/v1/tenants/{tenant}/users/{login}/sessions`
pub async fn end_sessions(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, login)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    tenant_admin(&scope)?;
    match rows::end_sessions_in(&api.pool, scope.tenant().as_str(), &login).await? {
        Some(ended) => Ok(Json(json!({ "login": login, "ended": ended }))),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such user here".into())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    login: String,
    #[serde(flatten)]
    grant: GrantBody,
}

/// `POST /api/v1/tenants/{tenant}/bindings`
pub async fn bind(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Json(body): Json<BindBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let grant = body.grant.grant()?;
    may_give(&api, &scope, &grant).await?;
    match rows::bind(&api.pool, &body.login, scope.tenant().as_str(), &grant)
        .await
        .map_err(foreign_key)?
    {
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such user".into())),
        Some(added) => Ok((
            if added {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(json!({ "login": body.login, "grant": grant, "added": added })),
        )),
    }
}

/// `DELETE /api/v1/tenants/{tenant}/bindings/{id}`
pub async fn unbind(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    tenant_admin(&scope)?;
    if rows::unbind(&api.pool, scope.tenant().as_str(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such binding".into()))
    }
}

/// `GET /api/v1/tenants/{tenant}/tokens`
pub async fn tokens(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
) -> Result<Json<Value>, ApiError> {
    tenant_admin(&scope)?;
    let tokens = rows::tokens(&api.pool, scope.tenant().as_str()).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    name: String,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(flatten)]
    grant: GrantBody,
}

/// `POST /api/v1/tenants/{tenant}/tokens`
pub async fn add_token(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Json(body): Json<TokenBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let grant = body.grant.grant()?;
    may_give(&api, &scope, &grant).await?;
    if body.name.is_empty() || body.name.len() > 64 {
        return Err(bad("name: 1 to 64 characters"));
    }
    let token = crate::cli::users::new_token();
    let sha = dash_runtime::secret::sha256_hex(&token);
    let t = scope.tenant().as_str();
    let maker = rows::maker_of(&api.pool, t, scope.actor()).await?;
    let added = rows::add_token(
        &api.pool,
        t,
        &body.name,
        &sha,
        &grant,
        &scope.actor().to_string(),
        body.expires_at,
        maker,
    )
    .await
    .map_err(foreign_key)?;
    let Some(expires_at) = added else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "a token of that name exists; pick another or revoke it".into(),
        ));
    };
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "name": body.name, "token": token, "grant": grant, "expires_at": expires_at }),
        ),
    ))
}

/// `DELETE /api/v1/tenants/{tenant}/tokens/{name}`
pub async fn revoke_token(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    tenant_admin(&scope)?;
    if rows::revoke_token(&api.pool, scope.tenant().as_str(), &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such token".into()))
    }
}

/// `GET /api/v1/tenants/{tenant}/audit?from=&to=&limit=&format=json|csv`:
/// the tenant's audit rows, oldest first (a tenant-wide admin). `from` and
/// `to` as the query API takes them (RFC 3339 or Unix seconds), by default
/// the last 24 hours.
pub async fn audit(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Query(mut params): Query<Vec<(String, String)>>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    tenant_admin(&scope)?;
    let now = chrono::Utc::now();
    let from = super::take_time(&mut params, "from", now - chrono::Duration::days(1))?;
    let to = super::take_time(&mut params, "to", now + chrono::Duration::seconds(1))?;
    let limit = super::take_limit(&mut params, 10_000, 1_000_000)?;
    let csv = match super::take(&mut params, "format").as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => return Err(bad(format!("format={f:?}: json or csv"))),
    };
    super::refuse_unknown(&params)?;
    let rows =
        crate::storage::audit::list(&api.pool, scope.tenant().as_str(), from, to, limit).await?;
    if !csv {
        return Ok(Json(json!({ "rows": rows })).into_response());
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        crate::audit::to_csv(&rows),
    )
        .into_response())
}
