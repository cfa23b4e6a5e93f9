//! The fleet over HTTP, each answer limited to the caller's scope:
//!
//! - `GET /api/v1/tenants/{tenant}/devices?state=&within=&customer=&agent=&limit=`
//!   lists devices with their attributes and liveness (`within`: a place
//!   and everything below it).
//! - `GET /api/v1/tenants/{tenant}/devices/{device}`: one device and its
//!   last 100 state changes; 404 when the tenant has no such device.
//! - `GET /api/v1/tenants/{tenant}/places`: the tree, each place with its
//!   subtree's device counts per state.
//! - `GET /api/v1/tenants/{tenant}/customers`.
//! - `PUT /api/v1/tenants/{tenant}/devices/{device}`: set attributes (editor).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::auth::{Scoped, require};
use super::{Api, ApiError, Params, bad, refuse_unknown, take, take_limit};
use crate::auth::access::{Role, Scope};
use crate::storage::fleet::{self, DeviceFilter};

const STATES: [&str; 5] = ["never_reported", "online", "offline", "delayed", "unknown"];

/// `GET /api/v1/tenants/{tenant}/devices`
pub async fn devices(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Query(mut params): Params,
) -> Result<Json<Value>, ApiError> {
    let state = take(&mut params, "state");
    if let Some(s) = state.as_deref().filter(|s| !STATES.contains(s)) {
        return Err(bad(format!(
            "state={s:?}: expected one of {}",
            STATES.join(", ")
        )));
    }
    let filter = DeviceFilter {
        state,
        within: take(&mut params, "within"),
        customer: take(&mut params, "customer"),
        agent: take(&mut params, "agent"),
        device: None,
    };
    let limit = take_limit(&mut params, 10_000, 100_000)?;
    refuse_unknown(&params)?;
    let devices = fleet::devices(&api.pool, &scope, &filter, limit).await?;
    Ok(Json(json!({ "devices": devices })))
}

/// The device named `device` if the scope reaches it; 404 alike for one
/// outside the scope and one that does not exist.
async fn find(api: &Api, scope: &Scope, device: &str) -> Result<fleet::Device, ApiError> {
    let filter = DeviceFilter {
        device: Some(device.to_owned()),
        ..DeviceFilter::default()
    };
    fleet::devices(&api.pool, scope, &filter, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such device in your scope".into()))
}

/// `GET /api/v1/tenants/{tenant}/devices/{device}`
pub async fn device(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, device)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let found = find(&api, &scope, &device).await?;
    let history =
        fleet::transitions(&api.pool, scope.tenant().as_str(), &found.device, 100).await?;
    Ok(Json(json!({ "device": found, "transitions": history })))
}

/// `GET /api/v1/tenants/{tenant}/places`
pub async fn places(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
) -> Result<Json<Value>, ApiError> {
    let places = fleet::places_in(&api.pool, &scope).await?;
    let mut counts: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for c in fleet::counts_by_place(&api.pool, &scope).await? {
        counts
            .entry(c.place)
            .or_default()
            .insert(c.state, c.devices.into());
    }
    let places: Vec<Value> = places
        .into_iter()
        .map(|p| {
            let devices = counts.remove(&p.place).unwrap_or_default();
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["devices"] = Value::Object(devices);
            v
        })
        .collect();
    Ok(Json(json!({ "places": places })))
}

/// `GET /api/v1/tenants/{tenant}/customers`
pub async fn customers(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
) -> Result<Json<Value>, ApiError> {
    let customers = fleet::customers_in(&api.pool, &scope).await?;
    Ok(Json(json!({ "customers": customers })))
}

/// `PUT /api/v1/tenants/{tenant}/devices/{device}` with a JSON object of
/// the attributes to set (place, customer, latitude, longitude, model,
/// firmware, expected_interval_secs, labels). An editor may change a device
/// they reach, and may move it only to a place or customer they reach.
pub async fn set_device(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, device)): Path<(String, String)>,
    Json(meta): Json<fleet::DeviceMeta>,
) -> Result<Json<Value>, ApiError> {
    let scope = require(&scope, Role::Editor)?;
    let found = find(&api, &scope, &device).await?;
    if let Some(lat) = meta.latitude.filter(|l| !(-90.0..=90.0).contains(l)) {
        return Err(bad(format!("latitude {lat} is outside -90..90")));
    }
    if let Some(lon) = meta.longitude.filter(|l| !(-180.0..=180.0).contains(l)) {
        return Err(bad(format!("longitude {lon} is outside -180..180")));
    }
    if meta.expected_interval_secs.is_some_and(|s| s <= 0) {
        return Err(bad("expected_interval_secs must be at least 1"));
    }
    // Each change on its own: a place the editor reaches, a customer the
    // editor reaches; then the device as it will be.
    let refuse = |what: &str| {
        ApiError(
            StatusCode::FORBIDDEN,
            format!("{what} is outside your scope: pick one you edit"),
        )
    };
    if let Some(p) = meta.place.as_deref()
        && !fleet::covers(&api.pool, &scope, Some(p), None).await?
    {
        return Err(refuse("that place"));
    }
    if let Some(c) = meta.customer.as_deref()
        && !fleet::covers(&api.pool, &scope, None, Some(c)).await?
    {
        return Err(refuse("that customer"));
    }
    let place = meta.place.as_deref().or(found.place.as_deref());
    let customer = meta.customer.as_deref().or(found.customer.as_deref());
    if !fleet::covers(&api.pool, &scope, place, customer).await? {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the device would leave your scope: pick a place or customer you edit".into(),
        ));
    }
    match fleet::set_meta(
        &api.pool,
        scope.tenant().as_str(),
        &[(device.clone(), meta)],
    )
    .await
    {
        Ok(()) => {}
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            return Err(bad("no such place or customer"));
        }
        Err(e) => return Err(e.into()),
    }
    let updated = find(&api, &scope, &device).await?;
    Ok(Json(json!({ "device": updated })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPlace {
    place: String,
    parent: Option<String>,
    name: Option<String>,
    #[serde(default)]
    kind: String,
}

/// `POST /api/v1/tenants/{tenant}/places` with
/// `{"place", "parent"?, "name"?, "kind"?}`: a place under one the editor
/// reaches (a new root needs the whole tenant). 409 when the id is taken.
pub async fn add_place(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Json(body): Json<NewPlace>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let under = match &body.parent {
        Some(p) => crate::auth::access::Within::Place(p.clone()),
        None => crate::auth::access::Within::Tenant,
    };
    super::people::may_open(&api, &scope, Role::Editor, &under).await?;
    crate::cli::fleet::check_id("place", &body.place).map_err(|e| bad(e.to_string()))?;
    let name = dash_runtime::text::clip(body.name.as_deref().unwrap_or(&body.place), 200);
    let kind = dash_runtime::text::clip(&body.kind, 64);
    let t = scope.tenant().as_str();
    if !fleet::add_place(
        &api.pool,
        t,
        &body.place,
        body.parent.as_deref(),
        name,
        kind,
    )
    .await?
    {
        if let Some(parent) = &body.parent
            && !fleet::places_in(&api.pool, &scope)
                .await?
                .iter()
                .any(|p| p.place == *parent)
        {
            return Err(bad(format!("no parent place {parent:?} here")));
        }
        return Err(ApiError(
            StatusCode::CONFLICT,
            "a place with that id exists in this tenant; pick another".into(),
        ));
    }
    let place = fleet::places_in(&api.pool, &scope)
        .await?
        .into_iter()
        .find(|p| p.place == body.place);
    Ok((StatusCode::CREATED, Json(json!({ "place": place }))))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    name: String,
    email: Option<String>,
    phone: Option<String>,
}

/// `PUT /api/v1/tenants/{tenant}/customers/{customer}` with
/// `{"name", "email"?, "phone"?}`: adds or changes a customer (an editor of
/// the whole tenant, or of that customer).
pub async fn put_customer(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Path((_, customer)): Path<(String, String)>,
    Json(body): Json<CustomerBody>,
) -> Result<Json<Value>, ApiError> {
    let within = crate::auth::access::Within::Customer(customer.clone());
    super::people::may_open(&api, &scope, Role::Editor, &within).await?;
    crate::cli::fleet::check_id("customer", &customer).map_err(|e| bad(e.to_string()))?;
    if body.email.as_deref().is_some_and(|e| !e.contains('@')) {
        return Err(bad("email: an address with an '@'"));
    }
    let c = fleet::Customer {
        customer,
        name: dash_runtime::text::clip(&body.name, 200).to_owned(),
        email: body.email,
        phone: body.phone,
    };
    fleet::put_customer(&api.pool, scope.tenant().as_str(), &c).await?;
    Ok(Json(json!({ "customer": c })))
}

/// `GET /api/v1/tenants/{tenant}/events?kind=&source=&from=&to=&limit=`:
/// events (sales, faults, device statuses) oldest first, those of sources
/// in the caller's scope only; by default the last 24 hours.
pub async fn events(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
    Query(mut params): Params,
) -> Result<Json<Value>, ApiError> {
    let now = chrono::Utc::now();
    let from = super::take_time(&mut params, "from", now - chrono::Duration::days(1))?;
    let to = super::take_time(&mut params, "to", now + chrono::Duration::seconds(1))?;
    if from >= to {
        return Err(bad("from must be before to"));
    }
    let filter = crate::storage::read::EventFilter {
        kind: take(&mut params, "kind"),
        source: take(&mut params, "source"),
        from,
        to,
    };
    let limit = take_limit(&mut params, 1_000, 100_000)?;
    refuse_unknown(&params)?;
    let events = crate::storage::read::events(&api.pool, &scope, &filter, limit).await?;
    Ok(Json(json!({ "events": events })))
}

/// `GET /api/v1/tenants/{tenant}/agents`: gateways and POS boxes with their
/// last status (buffer depth, backlog, drops, clock, version), those that
/// serve the caller's scope only.
pub async fn agents(
    State(api): State<Arc<Api>>,
    Scoped(scope): Scoped,
) -> Result<Json<Value>, ApiError> {
    let agents = crate::storage::read::agents(&api.pool, &scope).await?;
    Ok(Json(json!({ "agents": agents })))
}
