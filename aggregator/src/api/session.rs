//! Logging in and out.
//!
//! - `POST /api/v1/login` with `{"login": "...", "password": "..."}`: on
//!   success a session cookie (`dash_session`: HttpOnly, SameSite=Strict,
//!   Path=/, Secure when `http.secure_cookies` is set or the request came
//!   through a TLS proxy that says `X-Forwarded-Proto: https`) and
//!   `{"login", "csrf_token", "expires_at"}`. A wrong login or password is
//!   401 with one message for both; after `http.login_attempts` failures in
//!   a row the user is locked for `http.lockout_secs` (429 with
//!   Retry-After). The attempt is counted before the password is checked,
//!   in one statement, so parallel guesses get no more tries. An unknown
//!   login is checked against a dummy hash and locks after as many tries
//!   as a known one, so neither the time nor a 429 tells which logins
//!   exist; and one client address that fails
//!   `http.client_login_attempts` times is held for `http.lockout_secs`
//!   whatever logins it tries.
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
    let s = &api.sessions;
    let now = chrono::Utc::now();
    let client_key = Guesses::client_key(client.ip());
    if let Some(secs) = api.guesses.blocked(&client_key) {
        tracing::warn!(%client, "logins from this address held after repeated failures");
        return Ok(locked_for(secs));
    }
    // One attempt is claimed (counted as failed) before the password is
    // checked, in one statement, so parallel guesses cannot pass the limit.
    let claimed = rows::claim_login(
        &api.pool,
        &body.login,
        s.login_attempts as i32,
        s.lockout_secs as f64,
    )
    .await?;
    let Some(user) = claimed else {
        let pw = body.password.clone();
        let _ = tokio::task::spawn_blocking(move || password::verify_nothing(&pw)).await;
        api.guesses.failed(&client_key);
        if let Some(until) = rows::locked_until(&api.pool, &body.login)
            .await?
            .filter(|u| *u > now)
        {
            return Ok(locked(until, now));
        }
        // An unknown login locks like a known one, so a 429 tells nothing.
        if let Some(secs) = api.guesses.failed(&format!("login:{}", body.login)) {
            return Ok(locked_for(secs));
        }
        return Err(wrong());
    };
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
        api.guesses.failed(&client_key);
        if let Some(until) = user.locked_until.filter(|u| *u > now) {
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
    locked_for((until - now).num_seconds().max(1) as u64)
}

fn locked_for(secs: u64) -> Response {
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

/// Failed logins kept in memory: per client address, and per login that
/// does not exist (an existing login's count is its row's, and follows the
/// same rule): the count restarts after `window` without a failure, and
/// the failure that reaches the limit holds the key for `window`.
#[derive(Debug)]
pub struct Guesses {
    seen: std::sync::Mutex<Seen>,
    login_limit: u32,
    client_limit: u32,
    window: std::time::Duration,
}

#[derive(Debug, Default)]
struct Seen {
    keys: std::collections::HashMap<String, Guess>,
    pruned: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Guess {
    count: u32,
    last: std::time::Instant,
    held_until: Option<std::time::Instant>,
}

/// Keys kept at most; past it, expired keys are dropped (at most once every
/// 10 s), and new keys are not tracked until there is room.
const GUESS_KEYS: usize = 100_000;

impl Guesses {
    pub fn new(http: &crate::config::HttpConfig) -> Guesses {
        Guesses {
            seen: Default::default(),
            login_limit: http.login_attempts,
            client_limit: match http.client_login_attempts {
                0 => u32::MAX,
                n => n,
            },
            window: std::time::Duration::from_secs(http.lockout_secs.into()),
        }
    }

    /// The key of a client address: an IPv6 client by its /64 (one host
    /// has a whole /64 to pick from).
    pub fn client_key(ip: std::net::IpAddr) -> String {
        match ip {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("client:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            ip => format!("client:{}", ip.to_canonical()),
        }
    }

    fn limit(&self, key: &str) -> u32 {
        if key.starts_with("client:") {
            self.client_limit
        } else {
            self.login_limit
        }
    }

    /// Seconds until `key` may try again, if it is held now.
    pub fn blocked(&self, key: &str) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let until = seen.keys.get(key)?.held_until?;
        let left = until.checked_duration_since(std::time::Instant::now())?;
        Some(left.as_secs().max(1))
    }

    /// Counts a failure of `key`; the seconds it is held for, if it is
    /// held now (this one reached the limit, or an earlier one did).
    pub fn failed(&self, key: &str) -> Option<u64> {
        if self.limit(key) == u32::MAX {
            return None;
        }
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.keys.len() >= GUESS_KEYS
            && seen
                .pruned
                .is_none_or(|p| now.duration_since(p) >= std::time::Duration::from_secs(10))
        {
            let window = self.window;
            seen.keys.retain(|_, g| {
                g.held_until.is_some_and(|h| h > now) || now.duration_since(g.last) < window
            });
            seen.pruned = Some(now);
        }
        let key = dash_runtime::text::clip(key, 200);
        if !seen.keys.contains_key(key) && seen.keys.len() >= GUESS_KEYS {
            tracing::warn!(
                "the login limiter is full; new logins and addresses are not counted until old ones expire"
            );
            return None;
        }
        let g = seen.keys.entry(key.to_owned()).or_insert(Guess {
            count: 0,
            last: now,
            held_until: None,
        });
        if let Some(until) = g.held_until.filter(|h| *h > now) {
            return Some(until.duration_since(now).as_secs().max(1));
        }
        if now.duration_since(g.last) >= self.window {
            g.count = 0;
        }
        g.count += 1;
        g.last = now;
        if g.count >= self.limit(key) {
            g.count = 0;
            g.held_until = Some(now + self.window);
            return Some(self.window.as_secs().max(1));
        }
        None
    }
}

/// The session user of `caller`, or 400 for a token.
fn session_user(caller: Caller) -> Result<(i64, String), ApiError> {
    match caller {
        Caller::User { id, session, .. } => Ok((id, session)),
        _ => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no session: this caller uses a token".into(),
        )),
    }
}

/// `GET /api/v1/sessions`: the caller's live sessions (where and since
/// when), the one asking marked `current`.
pub async fn sessions(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, current) = session_user(caller)?;
    let sessions = rows::sessions_of(&api.pool, id, &current).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

/// `DELETE /api/v1/sessions/{id}`: ends one of the caller's sessions (a
/// phone left logged in); 404 for any other id.
pub async fn end_session(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    axum::extract::Path(session): axum::extract::Path<i64>,
) -> Result<StatusCode, ApiError> {
    let (id, _) = session_user(caller)?;
    if rows::end_session(&api.pool, id, session).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such session".into()))
    }
}
