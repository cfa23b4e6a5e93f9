//! Share links: a read-only view of one dashboard, without an account,
//! over a scope its creator chose and holds at least `editor` for.
//!
//! - `POST /api/v1/tenants/{tenant}/shares` with
//!   `{"dashboard", "label"?, "place"?, "customer"?, "days"?}` (editor):
//!   the answer holds the link's token, the only time it is shown. It
//!   expires after `days` (default 30, at most 365), and ends with its
//!   maker as an API token does: when the user who made it is disabled, or
//!   the token that made it is revoked or expires (never later).
//! - `GET /api/v1/tenants/{tenant}/shares`: a tenant-wide admin sees every
//!   link, anyone else the links they made.
//! - `DELETE /api/v1/tenants/{tenant}/shares/{id}`: revokes a link at
//!   once (its maker, or a tenant-wide admin); 404 for anyone else.
//! - `GET /api/v1/share` with `Authorization: Bearer <share token>`: what
//!   the link opens. The token opens no other route (401); the dashboards
//!   serve their data to it through [`Shared`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Scoped, Shared};
use super::people::{foreign_key, may_open};
use super::{Api, ApiError, bad};
use crate::auth::access::{Grant, Role, Scope};
use crate::storage::access::{self as rows, NewShare};

/// Days a link lasts unless told.
pub const DEFAULT_DAYS: u32 = 30;
/// The longest a link may last.
pub const MAX_DAYS: u32 = 365;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    dashboard: String,
    #[serde(default)]
    label: String,
    place: Option<String>,
    customer: Option<String>,
    days: Option<u32>,
}

/// Whose links `scope` may list and revoke: `None` for all of them.
fn maker_filter(scope: &Scope) -> Option<String> {
    (!scope.may_tenant_wide(Role::Admin)).then(|| scope.actor().to_string())
}

/// `POST /api/v1/tenants/{tenant}/shares`
pub async fn add(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Json(body): Json<NewLink>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let within = Grant::from_parts("viewer", body.place, body.customer)
        .map_err(bad)?
        .within;
    may_open(&api, &scope, Role::Editor, &within).await?;
    crate::cli::fleet::check_id("dashboard", &body.dashboard).map_err(|e| bad(e.to_string()))?;
    let days = body.days.unwrap_or(DEFAULT_DAYS);
    if days == 0 || days > MAX_DAYS {
        return Err(bad(format!("days: 1 to {MAX_DAYS}")));
    }
    let label = dash_runtime::text::clip(&body.label, 200);
    let token = crate::cli::users::new_token();
    let created_by = scope.actor().to_string();
    let t = scope.tenant().as_str();
    let maker = rows::maker_of(&api.pool, t, scope.actor()).await?;
    let share = rows::add_share(
        &api.pool,
        &NewShare {
            tenant: scope.tenant().as_str(),
            dashboard: &body.dashboard,
            label,
            within: &within,
            created_by: &created_by,
            expires_at: chrono::Utc::now() + chrono::Duration::days(days.into()),
        },
        &dash_runtime::secret::sha256_hex(&token),
        maker,
    )
    .await
    .map_err(foreign_key)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "share": share, "token": token })),
    ))
}

/// `GET /api/v1/tenants/{tenant}/shares`
pub async fn list(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
) -> Result<Json<Value>, ApiError> {
    super::auth::require(&scope, Role::Editor)?;
    let maker = maker_filter(&scope);
    let shares = rows::shares(&api.pool, scope.tenant().as_str(), maker.as_deref()).await?;
    Ok(Json(json!({ "shares": shares })))
}

/// `DELETE /api/v1/tenants/{tenant}/shares/{id}`
pub async fn revoke(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    super::auth::require(&scope, Role::Editor)?;
    let maker = maker_filter(&scope);
    if rows::revoke_share(&api.pool, scope.tenant().as_str(), id, maker.as_deref()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such share".into()))
    }
}

/// `GET /api/v1/share`
pub async fn opened(Shared { share, scope }: Shared) -> Json<Value> {
    Json(json!({
        "tenant": share.tenant,
        "dashboard": share.dashboard,
        "label": share.label,
        "scope": scope.describe(),
        "expires_at": share.expires_at,
    }))
}
