//! Why a server refuses something, and how each version says it.

/// A refusal's reason: MQTT 5's reason codes that a server sends, with
/// their MQTT 3.1.1 CONNACK equivalents where 3.1.1 has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedVersion,
    BadClientId,
    BadLogin,
    NotAuthorized,
    ServerUnavailable,
    ServerShuttingDown,
    BadAuthenticationMethod,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    QuotaExceeded,
    PayloadFormatInvalid,
}

impl Reason {
    /// MQTT 5's reason code.
    pub fn code(self) -> u8 {
        use Reason::*;
        match self {
            UnspecifiedError => 0x80,
            MalformedPacket => 0x81,
            ProtocolError => 0x82,
            ImplementationSpecificError => 0x83,
            UnsupportedVersion => 0x84,
            BadClientId => 0x85,
            BadLogin => 0x86,
            NotAuthorized => 0x87,
            ServerUnavailable => 0x88,
            ServerShuttingDown => 0x8b,
            BadAuthenticationMethod => 0x8c,
            KeepAliveTimeout => 0x8d,
            SessionTakenOver => 0x8e,
            TopicFilterInvalid => 0x8f,
            TopicNameInvalid => 0x90,
            ReceiveMaximumExceeded => 0x93,
            TopicAliasInvalid => 0x94,
            PacketTooLarge => 0x95,
            QuotaExceeded => 0x97,
            PayloadFormatInvalid => 0x99,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code, where 3.1.1 has one; without
    /// one the connection is closed with no CONNACK (3.1.1 §4.8).
    pub fn connack_v311(self) -> Option<u8> {
        use Reason::*;
        match self {
            UnsupportedVersion => Some(0x01),
            BadClientId => Some(0x02),
            ServerUnavailable | ServerShuttingDown => Some(0x03),
            BadLogin => Some(0x04),
            NotAuthorized | TopicNameInvalid | BadAuthenticationMethod => Some(0x05),
            _ => None,
        }
    }

    /// A name for metrics and logs.
    pub fn name(self) -> &'static str {
        use Reason::*;
        match self {
            UnspecifiedError => "unspecified",
            MalformedPacket => "malformed",
            ProtocolError => "protocol",
            ImplementationSpecificError => "implementation",
            UnsupportedVersion => "unsupported_version",
            BadClientId => "bad_client_id",
            BadLogin => "bad_login",
            NotAuthorized => "not_authorized",
            ServerUnavailable => "server_unavailable",
            ServerShuttingDown => "shutting_down",
            BadAuthenticationMethod => "bad_authentication_method",
            KeepAliveTimeout => "keep_alive",
            SessionTakenOver => "session_taken_over",
            TopicFilterInvalid => "topic_filter_invalid",
            TopicNameInvalid => "topic_name_invalid",
            ReceiveMaximumExceeded => "receive_maximum",
            TopicAliasInvalid => "topic_alias",
            PacketTooLarge => "too_large",
            QuotaExceeded => "quota",
            PayloadFormatInvalid => "payload_format",
        }
    }
}

/// A refusal, with a detail for the log (and MQTT 5's reason string).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}
