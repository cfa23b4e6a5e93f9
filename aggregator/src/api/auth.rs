//! The one way into tenant data: a caller authenticated from the request,
//! turned into a [`Scope`] for the tenant in the path by the [`Scoped`]
//! extractor. Handlers that read or change a tenant's data take `Scoped`;
//! the storage functions they call take its `&Scope`.
//!
//! Callers, tried in this order:
//!
//! - `Authorization: Bearer T` where SHA-256(T) is a bootstrap query token
//!   of `http.tokens` (read-only, the whole tenant it names), or an API
//!   token (`api_tokens`: its role and scope, until it expires or is
//!   revoked);
//! - the session cookie `dash_session` of a user who logged in
//!   ([`crate::api::session`]); a state-changing request (not GET or HEAD)
//!   must also carry `X-CSRF-Token`, which the login answer and
//!   `GET /api/v1/session` give.
//!
//! No credentials, a wrong one, or none valid for the tenant: 401, the same
//! for a tenant that does not exist, so the answer tells nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use dash_shared::TenantId;

use super::{Api, ApiError};
use crate::auth::access::{Actor, Grant, Role, Scope, Within};
use crate::storage::access as rows;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "dash_session";
/// The header a session's state-changing request carries.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An authenticated caller, before a tenant is chosen.
#[derive(Debug, Clone)]
pub enum Caller {
    User {
        id: i64,
        login: String,
        operator: bool,
        /// The session cookie's SHA-256.
        session: String,
        /// The token its state-changing requests must carry.
        csrf: String,
    },
    Token {
        tenant: String,
        name: String,
        grant: Grant,
    },
    /// Bootstrap query tokens: the tenants they were configured for.
    Bootstrap { tenants: Vec<String> },
    /// A share link: one dashboard, read-only, over its creator's choice
    /// of scope. It opens nothing else.
    Share(rows::Share),
}

pub(crate) fn unauthorized(msg: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, msg.into())
}

/// The CSRF token of a session: derived from its cookie, which only the
/// browser holding it can read back (HttpOnly), so it needs no storage.
pub fn csrf_of(cookie: &str) -> String {
    dash_runtime::secret::sha256_hex(&format!("dash-csrf:{cookie}"))
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who is calling, or 401.
pub async fn caller(api: &Api, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(dash_runtime::secret::bearer);
    if let Some(token) = bearer {
        // Every bootstrap token is checked, so the time taken does not tell which matched.
        let tenants: Vec<String> = api
            .tokens
            .iter()
            .filter(|t| dash_runtime::secret::token_matches(token, &t.sha256))
            .map(|t| t.tenant.clone())
            .collect();
        if !tenants.is_empty() {
            return Ok(Caller::Bootstrap { tenants });
        }
        let digest = dash_runtime::secret::sha256_hex(token);
        if let Some((tenant, name, grant)) = rows::token_by_digest(&api.pool, &digest).await? {
            return Ok(Caller::Token {
                tenant,
                name,
                grant,
            });
        }
        return match rows::share_by_digest(&api.pool, &digest).await? {
            Some(share) => Ok(Caller::Share(share)),
            None => Err(unauthorized("token not valid for this tenant")),
        };
    }
    if let Some(value) = cookie(headers, SESSION_COOKIE) {
        let session = dash_runtime::secret::sha256_hex(value);
        if let Some((id, login, operator)) = rows::session_user(&api.pool, &session).await? {
            return Ok(Caller::User {
                id,
                login,
                operator,
                session,
                csrf: csrf_of(value),
            });
        }
        return Err(unauthorized("the session has ended; log in again"));
    }
    Err(unauthorized(
        "missing Authorization: Bearer <token> or a session (POST /api/v1/login)",
    ))
}

/// The caller's scope in `tenant`, or 401.
pub async fn scope_in(api: &Api, caller: &Caller, tenant: &TenantId) -> Result<Scope, ApiError> {
    let (actor, grants) = match caller {
        Caller::Bootstrap { tenants } => (
            Actor::Bootstrap,
            tenants
                .iter()
                .filter(|t| *t == tenant.as_str())
                .map(|_| Grant {
                    role: Role::Viewer,
                    within: Within::Tenant,
                })
                .take(1)
                .collect(),
        ),
        Caller::Token {
            tenant: t,
            name,
            grant,
        } => (
            Actor::Token(name.clone()),
            if t == tenant.as_str() {
                vec![grant.clone()]
            } else {
                vec![]
            },
        ),
        Caller::User {
            id,
            login,
            operator,
            ..
        } => {
            let grants = if *operator {
                vec![Grant {
                    role: Role::Admin,
                    within: Within::Tenant,
                }]
            } else {
                rows::grants_of(&api.pool, *id, tenant.as_str()).await?
            };
            (Actor::User(login.clone()), grants)
        }
        // A share link reads through its dashboard's routes only ([`Shared`]).
        Caller::Share(_) => (caller.actor(), vec![]),
    };
    Scope::new(tenant.clone(), actor, grants)
        .ok_or_else(|| unauthorized("token not valid for this tenant"))
}

/// A caller's [`Scope`] in the `{tenant}` of the path. A session's
/// state-changing request without its CSRF token is refused (403).
#[derive(Debug, Clone)]
pub struct Scoped(pub Scope);

impl FromRequestParts<Arc<Api>> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let tenant = params.get("tenant").ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no tenant in the route".into(),
            )
        })?;
        let tenant = TenantId::new(tenant.clone())
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("tenant in the path: {e}")))?;
        let caller = caller(api, &parts.headers).await?;
        note(parts, &caller.actor(), "none", Some(tenant.as_str()));
        check_csrf(&caller, &parts.method, &parts.headers)?;
        let scope = scope_in(api, &caller, &tenant).await?;
        note(
            parts,
            scope.actor(),
            &scope.describe(),
            Some(tenant.as_str()),
        );
        Ok(Scoped(scope))
    }
}

/// An authenticated caller, for the routes without a tenant (the session,
/// logout). CSRF is checked as for [`Scoped`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl FromRequestParts<Arc<Api>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let caller = caller(api, &parts.headers).await?;
        note(parts, &caller.actor(), "none", None);
        if matches!(caller, Caller::Share(_)) {
            return Err(unauthorized("a share link opens only its dashboard"));
        }
        check_csrf(&caller, &parts.method, &parts.headers)?;
        Ok(Authenticated(caller))
    }
}

/// A share link's caller: the link, and its read-only [`Scope`] in the
/// link's tenant. Only the routes that serve a shared dashboard take it; a
/// share link on any other route is refused (401), and any other caller on
/// these.
#[derive(Debug, Clone)]
pub struct Shared {
    pub share: rows::Share,
    pub scope: Scope,
}

impl FromRequestParts<Arc<Api>> for Shared {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let caller = caller(api, &parts.headers).await?;
        note(parts, &caller.actor(), "none", None);
        let Caller::Share(share) = caller else {
            return Err(unauthorized(
                "this route serves share links only (Authorization: Bearer <share token>)",
            ));
        };
        let tenant = TenantId::new(share.tenant.clone()).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored share: {e}"),
            )
        })?;
        let grant = Grant::from_parts("viewer", share.place.clone(), share.customer.clone())
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("stored share: {e}"),
                )
            })?;
        let scope = Scope::new(tenant, Actor::Share(share.id), vec![grant])
            .ok_or_else(|| unauthorized("share not valid"))?;
        note(parts, scope.actor(), &scope.describe(), Some(&share.tenant));
        Ok(Shared { share, scope })
    }
}

/// Tells the audit layer who is asking (see [`crate::audit`]).
fn note(parts: &Parts, actor: &Actor, scope: &str, tenant: Option<&str>) {
    if let Some(slot) = parts.extensions.get::<crate::audit::Slot>() {
        slot.note(actor, scope, tenant);
    }
}

impl Caller {
    /// Who it is, for the log.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::User { login, .. } => Actor::User(login.clone()),
            Caller::Token { name, .. } => Actor::Token(name.clone()),
            Caller::Bootstrap { .. } => Actor::Bootstrap,
            Caller::Share(s) => Actor::Share(s.id),
        }
    }
}

fn check_csrf(caller: &Caller, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let Caller::User { csrf, .. } = caller else {
        return Ok(());
    };
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match given {
        Some(g)
            if dash_runtime::secret::token_matches(g, &dash_runtime::secret::sha256_hex(csrf)) =>
        {
            Ok(())
        }
        _ => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "a state-changing request in a session needs the {CSRF_HEADER} header (from the login answer or GET /api/v1/session)"
            ),
        )),
    }
}

/// 403 unless `scope` holds `role` somewhere that covers the change; the
/// narrowed scope when it does.
pub fn require(scope: &Scope, role: Role) -> Result<Scope, ApiError> {
    scope.at_least(role).ok_or_else(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            format!("this needs the {} role", role.as_str()),
        )
    })
}
