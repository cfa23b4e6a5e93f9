//! The aggregator's own MQTT broker, for one-box installs and small fleets.
//!
//! ```text
//! agents --TLS / plain--> gate (identity, ACL, limits) --loopback--> embedded rumqttd
//!                                                        <--------- ingest::link
//! ```
//!
//! - [`gate`]: every agent connection goes through it: TLS, the agent's
//!   identity (certificate or hashed token, see [`crate::auth`]), which
//!   topics it may publish and subscribe to, packet and connection limits.
//! - [`embedded`]: rumqttd on a loopback port, admitting only the gate and
//!   the link with internal logins.
//!
//! With `broker.url` set neither runs: an external broker (Mosquitto, EMQX)
//! and its ACL do the gate's job.

pub mod embedded;
pub mod gate;
