//! The server side of MQTT that both Dash binaries share: the agent's
//! device listener and the aggregator's gate in front of rumqttd.
//!
//! - [`accept`]: the accept loop (TLS, a bound on open connections), the
//!   CONNECT deadline and the keep-alive rule.
//! - [`frame`]: whole packets off the stream, the fixed header checked, and
//!   oversized publishes cut instead of buffered.
//! - [`packet`]: CONNECT's version read before any codec, and every packet
//!   checked against the normative statements of MQTT 3.1.1 and 5 that a
//!   server must enforce, as one [`packet::Inbound`] for both versions.
//! - [`reply`]: the server's packets in the connection's version.
//! - [`reason`]: why something is refused, as MQTT 5 reason codes with
//!   their 3.1.1 equivalents.
//!
//! None of this holds session state: that is the device listener's
//! (`dash-agent`'s `devices::session`), and rumqttd's behind the gate.

#![forbid(unsafe_code)]

pub mod accept;
pub mod frame;
pub mod packet;
pub mod reason;
pub mod reply;

pub use packet::{Connect, Inbound, Publish, Version, Will};
pub use reason::{Reason, Refusal};
pub use reply::{Encoder, Offer, Outbound};
