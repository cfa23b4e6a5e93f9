//! What `dash-agent` and `dash-aggregator` do the same way at run time,
//! outside the protocol (`dash-shared`) and TLS (`dash-tls`):
//!
//! - [`logging`]: one tracing set-up for both binaries, plain text without
//!   colour codes when the output is not a terminal (a file, the journal),
//!   or one JSON object per line for log shippers.
//! - [`panics`]: a panic ends the process, except inside [`panics::catch`]
//!   (the release profile unwinds so that this can work).
//! - [`config`]: defaults, then the TOML file, then `DASH_` variables.
//! - [`secret`]: token digests and the one bearer-token check.
//! - [`backoff`]: the reconnect wait, exponential with jitter.
//! - [`text`]: clipping strings others chose, on character boundaries.
//!
//! Builds with rustc 1.85, like the agent.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod logging;
pub mod panics;
pub mod secret;
pub mod text;
