//! The admin commands of `dash-aggregator` (the binary parses them):
//! [`admin`] for `ca init|crl` and `agent add|revoke|list`.

pub mod admin;
