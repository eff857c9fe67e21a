//! Errors: protocol violations named by spec id, and the one place that maps
//! each to its answer on the wire.

use crate::packet::{ConnectCode, ReasonCode};
use std::{fmt, io};

/// A rule of MQTT 3.1.1 a client broke, named by the statement it breaks.
///
/// Every violation closes the connection; [`Violation::connack`] says which
/// ones are answered with a CONNACK code first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// MQTT-3.1.0-1: the first packet must be CONNECT.
    FirstPacketNotConnect,
    /// MQTT-3.1.0-2: a second CONNECT is a protocol violation.
    SecondConnect,
    /// MQTT-3.1.2-1: the protocol name is not `MQTT` (or `MQIsdp`).
    ProtocolName,
    /// MQTT-3.1.2-2: the protocol level is not supported.
    ProtocolLevel,
    /// MQTT-3.1.2-3: the reserved CONNECT flag is set.
    ConnectReservedFlag,
    /// MQTT-3.1.2-11/-13/-15: will QoS or will retain set without the will flag.
    WillFlagsWithoutWill,
    /// MQTT-3.1.2-14: will QoS 3.
    WillQos,
    /// MQTT-3.1.2-22: password flag set without the user name flag.
    PasswordWithoutUsername,
    /// MQTT-3.1.3-8: empty client id with clean session 0.
    EmptyClientIdPersistent,
    /// MQTT-3.1.3-9 (MQTT 3.1: at most 23 characters): the client id is not accepted.
    ClientIdRejected,
    /// MQTT-3.1.2-24: nothing received within 1.5 × the keepalive.
    KeepaliveTimeout,
    /// MQTT-4.8.0-1 (section 2.2.3): the remaining length takes more than four bytes.
    RemainingLength,
    /// The declared remaining length exceeds the broker's maximum packet size.
    PacketTooLarge,
    /// MQTT-4.8.0-1 (section 2.2.1): packet types 0 and 15 are reserved.
    ReservedPacketType,
    /// MQTT-2.2.2-2: the fixed-header flags are wrong for the packet type.
    HeaderFlags,
    /// MQTT-4.8.0-1: the packet's fields do not fit its length.
    Malformed,
    /// MQTT-4.8.0-1: only a server may send this packet.
    ServerOnlyPacket,
    /// MQTT-1.5.3-1: a string is not well-formed UTF-8.
    InvalidUtf8,
    /// MQTT-1.5.3-2: a string contains U+0000.
    NullCharacter,
    /// MQTT-2.3.1-1: packet identifier 0.
    PacketIdZero,
    /// MQTT-3.3.1-2: DUP set on a QoS 0 PUBLISH.
    DupOnQos0,
    /// MQTT-3.3.1-4: PUBLISH with both QoS bits set.
    PublishQos,
    /// MQTT-3.3.2-2: wildcard in a PUBLISH topic name.
    WildcardInTopicName,
    /// MQTT-4.7.3-1: zero-length topic name or filter.
    EmptyTopic,
    /// MQTT-4.7.1-2: `#` not alone and last in its filter.
    MultiLevelWildcard,
    /// MQTT-4.7.1-3: `+` not alone in its level.
    SingleLevelWildcard,
    /// MQTT-3.8.3-3: SUBSCRIBE with no filters.
    SubscribeEmpty,
    /// MQTT-3.8.3-4: requested QoS or reserved bits invalid in SUBSCRIBE.
    SubscribeQos,
    /// MQTT-3.10.3-2: UNSUBSCRIBE with no filters.
    UnsubscribeEmpty,
    /// A PUBLISH or will topic deeper than the broker's `max_topic_levels`.
    TopicTooDeep,
    /// A retained PUBLISH or will while `retain_available` is false.
    RetainNotAvailable,
    /// MQTT-4.8.2-1/-2: a `$share/` filter without a valid share name or filter.
    SharedFilter,
    /// An MQTT 5.0 rule: the reason code the spec answers with, the
    /// statement (`MQTT-x.x.x-y`) or section broken, and what was wrong.
    V5(ReasonCode, &'static str, &'static str),
}

impl From<crate::v5::DecodeError> for Violation {
    fn from(e: crate::v5::DecodeError) -> Violation {
        Violation::V5(e.reason, e.rule, e.message)
    }
}

impl Violation {
    /// The spec statement this violation breaks.
    pub const fn spec_id(self) -> &'static str {
        use Violation::*;
        match self {
            FirstPacketNotConnect => "MQTT-3.1.0-1",
            SecondConnect => "MQTT-3.1.0-2",
            ProtocolName => "MQTT-3.1.2-1",
            ProtocolLevel => "MQTT-3.1.2-2",
            ConnectReservedFlag => "MQTT-3.1.2-3",
            WillFlagsWithoutWill => "MQTT-3.1.2-11",
            WillQos => "MQTT-3.1.2-14",
            PasswordWithoutUsername => "MQTT-3.1.2-22",
            EmptyClientIdPersistent => "MQTT-3.1.3-8",
            ClientIdRejected => "MQTT-3.1.3-9",
            KeepaliveTimeout => "MQTT-3.1.2-24",
            RemainingLength => "MQTT-4.8.0-1",
            PacketTooLarge => "max_packet_size",
            ReservedPacketType => "MQTT-4.8.0-1",
            HeaderFlags => "MQTT-2.2.2-2",
            Malformed | ServerOnlyPacket => "MQTT-4.8.0-1",
            InvalidUtf8 => "MQTT-1.5.3-1",
            NullCharacter => "MQTT-1.5.3-2",
            PacketIdZero => "MQTT-2.3.1-1",
            DupOnQos0 => "MQTT-3.3.1-2",
            PublishQos => "MQTT-3.3.1-4",
            WildcardInTopicName => "MQTT-3.3.2-2",
            EmptyTopic => "MQTT-4.7.3-1",
            MultiLevelWildcard => "MQTT-4.7.1-2",
            SingleLevelWildcard => "MQTT-4.7.1-3",
            SubscribeEmpty => "MQTT-3.8.3-3",
            SubscribeQos => "MQTT-3.8.3-4",
            UnsubscribeEmpty => "MQTT-3.10.3-2",
            TopicTooDeep => "max_topic_levels",
            RetainNotAvailable => "retain_available",
            SharedFilter => "MQTT-4.8.2-2",
            V5(_, rule, _) => rule,
        }
    }

    /// The MQTT 5.0 reason code a 5.0 client is sent (in CONNACK or
    /// DISCONNECT) for this violation.
    pub const fn reason_code(self) -> ReasonCode {
        use Violation::*;
        match self {
            V5(code, ..) => code,
            ProtocolLevel => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            EmptyClientIdPersistent | ClientIdRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            KeepaliveTimeout => ReasonCode::KEEP_ALIVE_TIMEOUT,
            PacketTooLarge => ReasonCode::PACKET_TOO_LARGE,
            FirstPacketNotConnect
            | SecondConnect
            | ServerOnlyPacket
            | PacketIdZero
            | SubscribeEmpty
            | UnsubscribeEmpty => ReasonCode::PROTOCOL_ERROR,
            TopicTooDeep => ReasonCode::TOPIC_NAME_INVALID,
            RetainNotAvailable => ReasonCode::RETAIN_NOT_SUPPORTED,
            SharedFilter => ReasonCode::TOPIC_FILTER_INVALID,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// The CONNACK code sent before closing, for violations found in CONNECT
    /// that the spec answers with one; `None` means close without a CONNACK.
    pub const fn connack(self) -> Option<ConnectCode> {
        match self {
            Violation::ProtocolLevel => Some(ConnectCode::BadProtocolVersion),
            Violation::EmptyClientIdPersistent | Violation::ClientIdRejected => Some(ConnectCode::IdentifierRejected),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        use Violation::*;
        match self {
            FirstPacketNotConnect => "first packet is not CONNECT",
            SecondConnect => "second CONNECT on one connection",
            ProtocolName => "unknown protocol name",
            ProtocolLevel => "unsupported protocol level",
            ConnectReservedFlag => "reserved CONNECT flag set",
            WillFlagsWithoutWill => "will QoS or retain set without will flag",
            WillQos => "will QoS 3",
            PasswordWithoutUsername => "password without user name",
            EmptyClientIdPersistent => "empty client id with clean session 0",
            ClientIdRejected => "client id rejected",
            KeepaliveTimeout => "keepalive expired",
            RemainingLength => "remaining length longer than four bytes",
            PacketTooLarge => "packet larger than the maximum packet size",
            ReservedPacketType => "reserved packet type",
            HeaderFlags => "wrong fixed-header flags",
            Malformed => "malformed packet",
            ServerOnlyPacket => "packet only a server may send",
            InvalidUtf8 => "string is not valid UTF-8",
            NullCharacter => "string contains U+0000",
            PacketIdZero => "packet identifier 0",
            DupOnQos0 => "DUP set on a QoS 0 PUBLISH",
            PublishQos => "PUBLISH QoS 3",
            WildcardInTopicName => "wildcard in topic name",
            EmptyTopic => "zero-length topic",
            MultiLevelWildcard => "'#' not alone at the end of the filter",
            SingleLevelWildcard => "'+' not alone in its level",
            SubscribeEmpty => "SUBSCRIBE without filters",
            SubscribeQos => "invalid requested QoS in SUBSCRIBE",
            UnsubscribeEmpty => "UNSUBSCRIBE without filters",
            TopicTooDeep => "topic has more levels than max_topic_levels allows",
            RetainNotAvailable => "retained message, but retain_available is false",
            SharedFilter => "shared subscription without a valid share name and filter",
            V5(_, _, message) => message,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.describe(), self.spec_id())
    }
}

impl std::error::Error for Violation {}

/// Why reading or writing packets on a connection failed.
#[derive(Debug)]
pub enum Error {
    /// The peer broke a protocol rule.
    Violation(Violation),
    /// The socket failed.
    Io(io::Error),
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        Error::Violation(v)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Violation(v) => v.fmt(f),
            Error::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Why a broker could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The store could not be opened or read.
    Store(crate::store::StoreError),
    /// A configured file (password, ACL) could not be read.
    Config(String),
}

impl From<crate::store::StoreError> for OpenError {
    fn from(e: crate::store::StoreError) -> Self {
        OpenError::Store(e)
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Store(e) => e.fmt(f),
            OpenError::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for OpenError {}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It broke a protocol rule.
    Violation(Violation),
    /// The broker's configuration refuses it, with this CONNACK code.
    Policy(ConnectCode, String),
}

impl Refusal {
    /// The CONNACK code to send before closing, if any.
    pub fn connack(&self) -> Option<ConnectCode> {
        match self {
            Refusal::Violation(v) => v.connack(),
            Refusal::Policy(code, _) => Some(*code),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Violation(v) => v.fmt(f),
            Refusal::Policy(code, why) => write!(f, "{why} (CONNACK {})", *code as u8),
        }
    }
}
