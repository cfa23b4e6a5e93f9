//! The MQTT topic scheme.
//!
//! ```text
//! dash/v1/{tenant}/{agent}/batch    agent -> aggregator, QoS 1, a wire::Batch
//! dash/v1/{tenant}/{agent}/ack      aggregator -> agent, QoS 1, a wire::Ack
//! dash/v1/{tenant}/{agent}/status   agent -> all, QoS 1, retained, a wire::AgentStatus
//! ```
//!
//! Identity comes from the topic, never from the payload: a broker ACL (or,
//! later, a client certificate) that pins an agent to its own topics pins
//! what it can write.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The first two topic levels of every Dash topic.
pub const PREFIX: &str = "dash/v1";

/// The filter an aggregator subscribes to for batches from every agent.
pub const BATCH_FILTER: &str = "dash/v1/+/+/batch";

/// The filter an aggregator subscribes to for every agent's status.
pub const STATUS_FILTER: &str = "dash/v1/+/+/status";

/// Longest tenant or agent id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Batch,
    Ack,
    Status,
}

impl TopicKind {
    fn as_str(self) -> &'static str {
        match self {
            TopicKind::Batch => "batch",
            TopicKind::Ack => "ack",
            TopicKind::Status => "status",
        }
    }
}

/// Why an id or a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{what} id is empty")]
    Empty { what: &'static str },
    #[error("{what} id {id:?} is longer than {MAX_ID_LEN} bytes")]
    TooLong { what: &'static str, id: String },
    #[error("{what} id {id:?} may only hold ASCII letters, digits, '-', '_' and '.'")]
    BadChar { what: &'static str, id: String },
    #[error("broker URL {url:?} is invalid: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("topic {0:?} is not a Dash topic (expected dash/v1/TENANT/AGENT/batch|ack|status)")]
    NotDash(String),
}

fn check_id(what: &'static str, id: &str) -> Result<(), TopicError> {
    if id.is_empty() {
        return Err(TopicError::Empty { what });
    }
    if id.len() > MAX_ID_LEN {
        return Err(TopicError::TooLong {
            what,
            id: id.to_owned(),
        });
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !id.chars().all(ok) {
        return Err(TopicError::BadChar {
            what,
            id: id.to_owned(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A validated ", $what, " id: 1 to 64 of `[A-Za-z0-9._-]`.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Result<Self, TopicError> {
                let id = id.into();
                check_id($what, &id)?;
                Ok(Self(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TopicError;
            fn try_from(id: String) -> Result<Self, TopicError> {
                Self::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(TenantId, "tenant");
id_type!(AgentId, "agent");

/// A broker's address and whether the link is TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Splits a broker URL, `mqtt://host:port` (port 1883 when omitted) or
/// `mqtts://host:port` (TLS, port 8883 when omitted).
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, TopicError> {
    let bad = |why: &'static str| TopicError::BadUrl {
        url: url.chars().take(200).collect(),
        why,
    };
    let (rest, tls) = if let Some(rest) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (rest, false)
    } else if let Some(rest) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (rest, true)
    } else {
        return Err(bad("it must start with mqtt:// or mqtts:// (TLS)"));
    };
    let rest = rest.trim_end_matches('/');
    // An IPv6 host comes in brackets: mqtt://[::1]:1883.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an opening '[' has no ']'"))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
        None if tls => 8883,
        None => 1883,
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    Ok(BrokerUrl {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// The topic for `kind` messages of one agent.
pub fn topic(tenant: &TenantId, agent: &AgentId, kind: TopicKind) -> String {
    format!("{PREFIX}/{tenant}/{agent}/{}", kind.as_str())
}

/// Splits a Dash topic into its tenant, agent and kind.
pub fn parse(topic: &str) -> Result<(TenantId, AgentId, TopicKind), TopicError> {
    let not_dash = || TopicError::NotDash(topic.chars().take(200).collect());
    let rest = topic
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_dash)?;
    let mut parts = rest.split('/');
    let (Some(tenant), Some(agent), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_dash());
    };
    let kind = match kind {
        "batch" => TopicKind::Batch,
        "ack" => TopicKind::Ack,
        "status" => TopicKind::Status,
        _ => return Err(not_dash()),
    };
    Ok((TenantId::new(tenant)?, AgentId::new(agent)?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_parse() {
        let tenant = TenantId::new("acme").unwrap();
        let agent = AgentId::new("gw-07.plant_2").unwrap();
        for kind in [TopicKind::Batch, TopicKind::Ack, TopicKind::Status] {
            let t = topic(&tenant, &agent, kind);
            assert_eq!(parse(&t).unwrap(), (tenant.clone(), agent.clone(), kind));
        }
        assert_eq!(
            topic(&tenant, &agent, TopicKind::Batch),
            "dash/v1/acme/gw-07.plant_2/batch"
        );
    }

    #[test]
    fn ids_with_wildcards_slashes_or_spaces_are_refused() {
        for bad in ["", "a/b", "+", "#", "a b", "ü", &"x".repeat(65)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn broker_urls_parse_with_and_without_port() {
        let url = |host: &str, port, tls| BrokerUrl {
            host: host.into(),
            port,
            tls,
        };
        for (text, want) in [
            ("mqtt://broker:1884", url("broker", 1884, false)),
            ("mqtt://broker/", url("broker", 1883, false)),
            ("mqtt://broker", url("broker", 1883, false)),
            ("mqtt://[::1]:1885", url("::1", 1885, false)),
            ("mqtt://[::1]", url("::1", 1883, false)),
            ("mqtts://broker", url("broker", 8883, true)),
            ("mqtts://broker:9883", url("broker", 9883, true)),
            ("ssl://[::1]", url("::1", 8883, true)),
        ] {
            assert_eq!(parse_broker_url(text).unwrap(), want, "{text}");
        }
        for bad in [
            "http://broker",
            "mqtt://:1",
            "mqtt://broker:x",
            "mqtt://",
            "mqtts://",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused() {
        for bad in [
            "dash/v2/acme/gw/batch",
            "dash/v1/acme/gw",
            "dash/v1/acme/gw/batch/extra",
            "dash/v1/acme/gw/other",
            "sensors/temp",
            "dash/v1/ac+me/gw/batch",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
