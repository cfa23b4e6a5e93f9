//! The admin commands of `dash-aggregator` (the binary parses them):
//! [`admin`] for `ca init|crl` and `agent add|revoke|list`, [`fleet`] for
//! `place`, `customer` and `device`, [`users`] for `user`, `grant` and
//! `token`.

pub mod admin;
pub mod fleet;
pub mod users;
