//! What the aggregator says about itself.
//!
//! - [`metrics`]: counters, exposed in Prometheus text format on `/metrics`.
//! - [`health`]: what `/readyz` checks (database, broker link, ingest).

pub mod health;
pub mod metrics;
