//! Logging in and out.
//!
//! - `POST /api/v1/login` with `{"login": "...", "password": "..."}`: on
//!   success a session cookie (`dash_session`: HttpOnly, SameSite=Strict,
//!   Path=/, Secure when `http.secure_cookies` is set or the request came
//!   through a TLS proxy that says `X-Forwarded-Proto: https`) and
//!   `{"login", "csrf_token", "expires_at"}`. A wrong login or password is
//!   401 with one message for both; after `http.login_attempts` failures in
//!   a row the user is locked for `http.lockout_secs` (429 with
//!   Retry-After), and an unknown login is checked against a dummy hash so
//!   that it takes about as long as a known one.
//! - `POST /api/v1/logout`: ends the session (it needs the CSRF token).
//! - `GET /api/v1/session`: who is logged in, their CSRF token and their
//!   bindings.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Authenticated, Caller, SESSION_COOKIE, csrf_of};
use super::{Api, ApiError};
use crate::auth::password;
use crate::storage::access as rows;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    login: String,
    password: String,
}

fn cookie_header(api: &Api, headers: &HeaderMap, value: &str, max_age: i64) -> HeaderValue {
    let behind_tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let secure = if api.sessions.secure_cookies || behind_tls {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("dash_session=; Max-Age=0; Path=/"))
}

/// `POST /api/v1/login`
pub async fn login(
    State(api): State<Arc<Api>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    slot: Option<Extension<crate::audit::Slot>>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Result<Response, ApiError> {
    if let Some(Extension(slot)) = &slot {
        let login = dash_runtime::text::clip(&body.login, 128);
        slot.note(
            &crate::auth::access::Actor::User(login.to_owned()),
            "none",
            None,
        );
    }
    let wrong = || ApiError(StatusCode::UNAUTHORIZED, "wrong login or password".into());
    let Some(user) = rows::credentials(&api.pool, &body.login).await? else {
        let pw = body.password.clone();
        let _ = tokio::task::spawn_blocking(move || password::verify_nothing(&pw)).await;
        return Err(wrong());
    };
    let now = chrono::Utc::now();
    if let Some(until) = user.locked_until.filter(|u| *u > now) {
        return Ok(locked(until, now));
    }
    let (pw, stored) = (body.password.clone(), user.password_hash.clone());
    let matches = tokio::task::spawn_blocking(move || match stored {
        Some(stored) => password::verify(&pw, &stored),
        None => {
            password::verify_nothing(&pw);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !matches || user.disabled_at.is_some() {
        let s = &api.sessions;
        if let Some(until) = rows::login_failed(
            &api.pool,
            user.id,
            s.login_attempts as i32,
            s.lockout_secs as f64,
        )
        .await?
        .filter(|u| *u > now)
        {
            tracing::warn!(login = %body.login, %client, %until, "login locked after repeated failures");
            return Ok(locked(until, now));
        }
        tracing::info!(login = %body.login, %client, "login refused");
        return Err(wrong());
    }
    rows::login_ok(&api.pool, user.id).await?;
    let value = dash_runtime::secret::hex(&rand::random::<[u8; 32]>());
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|a| dash_runtime::text::clip(a, 200).to_owned());
    let expires = rows::open_session(
        &api.pool,
        &dash_runtime::secret::sha256_hex(&value),
        user.id,
        api.sessions.session_hours as f64,
        Some(&client.ip().to_string()),
        agent.as_deref(),
    )
    .await?;
    tracing::info!(login = %body.login, %client, "logged in");
    let mut response = Json(json!({
        "login": body.login,
        "csrf_token": csrf_of(&value),
        "expires_at": expires,
    }))
    .into_response();
    let max_age = (expires - now).num_seconds().max(0);
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&api, &headers, &value, max_age),
    );
    Ok(response)
}

/// 429 with Retry-After until the lockout ends.
fn locked(until: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> Response {
    let secs = (until - now).num_seconds().max(1);
    let mut response = ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed logins: locked for {secs} s more"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// `POST /api/v1/logout`
pub async fn logout(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    let Caller::User { session, login, .. } = caller else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "only a session logs out; revoke a token instead".into(),
        ));
    };
    rows::close_session(&api.pool, &session).await?;
    tracing::info!(%login, "logged out");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&api, &headers, "", 0));
    Ok(response)
}

/// `GET /api/v1/session`
pub async fn session(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Caller::User {
        id,
        login,
        operator,
        csrf,
        ..
    } = caller
    else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no session: this caller uses a token".into(),
        ));
    };
    let bindings = rows::bindings_of_user(&api.pool, id).await?;
    Ok(Json(json!({
        "login": login,
        "operator": operator,
        "csrf_token": csrf,
        "bindings": bindings,
    })))
}
