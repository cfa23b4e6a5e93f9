//! The fleet over HTTP, read-only for now (writes go through the CLI):
//!
//! - `GET /api/v1/tenants/{tenant}/devices?state=&within=&customer=&agent=&limit=`
//!   lists devices with their attributes and liveness (`within`: a place
//!   and everything below it).
//! - `GET /api/v1/tenants/{tenant}/devices/{device}`: one device and its
//!   last 100 state changes; 404 when the tenant has no such device.
//! - `GET /api/v1/tenants/{tenant}/places`: the tree, each place with its
//!   subtree's device counts per state.
//! - `GET /api/v1/tenants/{tenant}/customers`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{Api, ApiError, Params, authorize, bad, refuse_unknown, take};
use crate::storage::fleet::{self, DeviceFilter};

const STATES: [&str; 5] = ["never_reported", "online", "offline", "delayed", "unknown"];

/// `GET /api/v1/tenants/{tenant}/devices`
pub async fn devices(
    State(api): State<Arc<Api>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Query(mut params): Params,
) -> Result<Json<Value>, ApiError> {
    let tenant = authorize(&api, &tenant, &headers)?;
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
    let limit = match take(&mut params, "limit") {
        None => 10_000,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100_000).contains(l))
            .ok_or_else(|| bad(format!("limit={l:?}: expected 1 to 100000")))?,
    };
    refuse_unknown(&params)?;
    let devices = fleet::devices(&api.pool, tenant.as_str(), &filter, limit).await?;
    Ok(Json(json!({ "devices": devices })))
}

/// `GET /api/v1/tenants/{tenant}/devices/{device}`
pub async fn device(
    State(api): State<Arc<Api>>,
    Path((tenant, device)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authorize(&api, &tenant, &headers)?;
    let filter = DeviceFilter {
        device: Some(device.clone()),
        ..DeviceFilter::default()
    };
    let Some(found) = fleet::devices(&api.pool, tenant.as_str(), &filter, 1)
        .await?
        .into_iter()
        .next()
    else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such device".into()));
    };
    let history = fleet::transitions(&api.pool, tenant.as_str(), &device, 100).await?;
    Ok(Json(json!({ "device": found, "transitions": history })))
}

/// `GET /api/v1/tenants/{tenant}/places`
pub async fn places(
    State(api): State<Arc<Api>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authorize(&api, &tenant, &headers)?;
    let places = fleet::places(&api.pool, tenant.as_str()).await?;
    let mut counts: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for c in fleet::counts_by_place(&api.pool, tenant.as_str()).await? {
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
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authorize(&api, &tenant, &headers)?;
    let customers = fleet::customers(&api.pool, tenant.as_str()).await?;
    Ok(Json(json!({ "customers": customers })))
}
