//! The owned, version-neutral packets the rest of the broker speaks, for
//! MQTT 3.1, 3.1.1 and 5.0 alike.
//!
//! The codec turns mqttrs' borrowed 3.1.1 packets and the 5.0 codec's
//! packets into these; payloads are [`Bytes`] so one received payload can be
//! shared by every subscriber. Reason codes and properties are 5.0's types
//! ([`ReasonCode`], [`Properties`]): a 3.1.1 packet carries the neutral
//! defaults (success, no properties), and the 3.1.1 encoder leaves out what
//! 3.1.1 cannot say. This is the bottom floor: it imports only those two
//! value types from the codec below it.

pub use crate::v5::{Properties, ReasonCode, RetainHandling, SubscriptionOptions};
use bytes::Bytes;
use std::sync::Arc;

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// QoS 0: fire and forget.
    AtMostOnce = 0,
    /// QoS 1: acknowledged by PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: PUBREC / PUBREL / PUBCOMP handshake.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, if it is 0, 1 or 2.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier; never zero on the wire (MQTT-2.3.1-1).
pub type Pid = u16;

/// The protocol a client spoke in CONNECT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4): also what is spoken before CONNECT.
    #[default]
    V311,
    /// MQTT 5.0 (`MQTT`, level 5).
    V5,
}

impl Protocol {
    /// The protocol level CONNECT carries (3, 4).
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// The will a client leaves in CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    /// Where the will is published (already validated as a topic name).
    pub topic: Arc<str>,
    /// The will message.
    pub payload: Bytes,
    /// QoS the will is published at.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
    /// The will message's own properties (5.0): payload format, expiry,
    /// content type, response topic, correlation data, user properties.
    pub properties: Option<Arc<Properties>>,
    /// Will Delay Interval in seconds (5.0).
    pub delay: Option<u32>,
}

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Protocol name and level.
    pub protocol: Protocol,
    /// Keepalive in seconds; 0 turns the keepalive off.
    pub keep_alive: u16,
    /// The client identifier, possibly empty.
    pub client_id: String,
    /// Clean session flag.
    pub clean_session: bool,
    /// The will, if the will flag was set.
    pub will: Option<Will>,
    /// User name, if present.
    pub username: Option<String>,
    /// Password, if present.
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0; empty for 3.1.1).
    pub properties: Properties,
}

/// CONNACK return codes (MQTT 3.1.1 table 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    /// 0x00 Connection accepted.
    Accepted = 0,
    /// 0x01 Unacceptable protocol version.
    BadProtocolVersion = 1,
    /// 0x02 Identifier rejected.
    IdentifierRejected = 2,
    /// 0x03 Server unavailable.
    ServerUnavailable = 3,
    /// 0x04 Bad user name or password.
    BadUsernamePassword = 4,
    /// 0x05 Not authorized.
    NotAuthorized = 5,
}

/// A PUBLISH packet, inbound or outbound.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// DUP flag: this is a re-delivery.
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// Packet identifier; `Some` exactly when `qos` is above 0.
    pub pid: Option<Pid>,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (validated).
    pub topic: Arc<str>,
    /// Application payload, shared between subscribers.
    pub payload: Bytes,
    /// The message's own properties (5.0), shared by every copy: payload
    /// format, content type, response topic, correlation data, user
    /// properties, and the expiry interval as published. `None`: none.
    pub properties: Option<Arc<Properties>>,
    /// The Message Expiry Interval this copy carries (inbound: as published;
    /// outbound: what is left of it), overriding the one in `properties`.
    pub expiry: Option<u32>,
    /// Topic Alias (5.0): inbound as the client sent it (resolved by the
    /// handler); outbound, assigned by the encoder.
    pub topic_alias: Option<u16>,
    /// The Subscription Identifier of the subscription that matched
    /// (outbound, 5.0: one copy per identifier).
    pub subscription_id: Option<u32>,
}

impl Publish {
    /// A PUBLISH without 5.0 properties.
    pub fn new(topic: Arc<str>, payload: Bytes, qos: QoS, pid: Option<Pid>, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            pid,
            retain,
            topic,
            payload,
            properties: None,
            expiry: None,
            topic_alias: None,
            subscription_id: None,
        }
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP: the packet id and the reason code
/// (5.0; success for 3.1.1, whose encoder leaves it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The packet id acknowledged.
    pub pid: Pid,
    /// The reason code; [`ReasonCode::SUCCESS`] in 3.1.1.
    pub reason: ReasonCode,
}

impl Ack {
    /// A successful acknowledgement.
    pub const fn ok(pid: Pid) -> Ack {
        Ack { pid, reason: ReasonCode::SUCCESS }
    }
}

/// A SUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pid: Pid,
    /// Filters in order with their options (3.1.1: the requested QoS, the
    /// other options at their 3.1.1 meaning).
    pub filters: Vec<(String, SubscriptionOptions)>,
    /// Subscription Identifier (5.0).
    pub id: Option<u32>,
}

/// Subscription options with 3.1.1's meaning: only the maximum QoS.
pub fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::OnSubscribe,
    }
}

/// CONNACK, DISCONNECT and AUTH as 5.0 carries them (the 3.1.1 encoder
/// writes what 3.1.1 has of them).
pub use crate::v5::{Auth, Connack, Disconnect};

/// Every MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// CONNECT (client to server); boxed, as it is large and arrives once.
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    Connack(Box<Connack>),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK.
    Puback(Ack),
    /// PUBREC.
    Pubrec(Ack),
    /// PUBREL.
    Pubrel(Ack),
    /// PUBCOMP.
    Pubcomp(Ack),
    /// SUBSCRIBE; boxed, as it is large and rare.
    Subscribe(Box<Subscribe>),
    /// SUBACK: one reason code per requested filter, in order (the granted
    /// QoS, or a failure: 3.1.1 writes every failure as 0x80).
    Suback(Pid, Vec<ReasonCode>),
    /// UNSUBSCRIBE: packet id and filters.
    Unsubscribe(Pid, Vec<String>),
    /// UNSUBACK: one reason code per filter (5.0 only; 3.1.1 has none).
    Unsuback(Pid, Vec<ReasonCode>),
    /// PINGREQ.
    Pingreq,
    /// PINGRESP.
    Pingresp,
    /// DISCONNECT, from either side (a 3.1.1 one is a success without
    /// properties; midge sends one only to a 5.0 client).
    Disconnect(Box<Disconnect>),
    /// AUTH (5.0).
    Auth(Box<Auth>),
}

impl Packet {
    /// The packet's name as the spec writes it, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::Connack(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Puback(_) => "PUBACK",
            Packet::Pubrec(_) => "PUBREC",
            Packet::Pubrel(_) => "PUBREL",
            Packet::Pubcomp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::Suback(..) => "SUBACK",
            Packet::Unsubscribe(..) => "UNSUBSCRIBE",
            Packet::Unsuback(..) => "UNSUBACK",
            Packet::Pingreq => "PINGREQ",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

impl ReasonCode {
    /// The SUBACK code granting `qos`.
    pub const fn granted(qos: QoS) -> ReasonCode {
        ReasonCode(qos as u8)
    }

    /// The 5.0 CONNACK reason for a 3.1.1 CONNACK return code.
    pub const fn from_connect_code(code: ConnectCode) -> ReasonCode {
        match code {
            ConnectCode::Accepted => ReasonCode::SUCCESS,
            ConnectCode::BadProtocolVersion => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ConnectCode::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectCode::ServerUnavailable => ReasonCode::SERVER_UNAVAILABLE,
            ConnectCode::BadUsernamePassword => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ConnectCode::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        }
    }

    /// The 3.1.1 CONNACK return code closest to a 5.0 CONNACK reason.
    pub const fn to_connect_code(self) -> ConnectCode {
        match self.0 {
            0x00 => ConnectCode::Accepted,
            0x84 => ConnectCode::BadProtocolVersion,
            0x85 => ConnectCode::IdentifierRejected,
            0x86 | 0x8c => ConnectCode::BadUsernamePassword,
            0x87 | 0x8a => ConnectCode::NotAuthorized,
            _ => ConnectCode::ServerUnavailable,
        }
    }
}

/// An application message on its way to a subscriber, stored or retained.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload, shared between every copy of the message.
    pub payload: Bytes,
    /// QoS it is delivered at (already reduced to the subscription's).
    pub qos: QoS,
    /// RETAIN flag as delivered: set for retained messages sent because of
    /// a new subscription (MQTT-3.3.1-8/-9), and kept for a 5.0
    /// subscription with Retain As Published.
    pub retain: bool,
    /// The message's 5.0 properties, shared by every copy (`None`: none,
    /// as for every message a 3.1.1 client publishes).
    pub properties: Option<Arc<Properties>>,
    /// When the message expires (its Message Expiry Interval after it was
    /// received), in milliseconds since the Unix epoch.
    pub expires: Option<u64>,
    /// The Subscription Identifier of the matching subscription(s) this
    /// copy is for (per delivery: one copy per identifier, MQTT-3.3.4-5).
    pub subscription_id: Option<u32>,
    /// The shared subscription (`$share/{name}/{filter}`) this copy was
    /// routed through: if its session leaves before acknowledging it, it
    /// goes to another member of the group. Not stored.
    pub shared: Option<Arc<str>>,
}

impl Message {
    /// A message without 5.0 properties or expiry.
    pub fn new(topic: Arc<str>, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message { topic, payload, qos, retain, properties: None, expires: None, subscription_id: None, shared: None }
    }

    /// Whether it has expired at `now_ms` (milliseconds since the epoch).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires.is_some_and(|at| at <= now_ms)
    }

    /// What is left of its expiry interval at `now_ms`, in whole seconds
    /// rounded up (what a forwarded copy carries, MQTT-3.3.2-6).
    pub fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        self.expires.map(|at| u32::try_from(at.saturating_sub(now_ms).div_ceil(1000)).unwrap_or(u32::MAX).max(1))
    }
}

/// When a message received now with a Message Expiry Interval of `secs`
/// expires, in milliseconds since the epoch (see [`Message::expires`]).
pub fn expires_in(secs: u32) -> u64 {
    now_ms() + u64::from(secs) * 1000
}

/// Milliseconds since the Unix epoch now (the clock message expiry uses).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A subscription as a session holds it: its options and identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Maximum QoS, No Local, Retain As Published, Retain Handling.
    pub options: SubscriptionOptions,
    /// Subscription Identifier (5.0), sent with every delivery it matches.
    pub id: Option<u32>,
}

impl Subscription {
    /// A 3.1.1 subscription at `qos`.
    pub fn qos(qos: QoS) -> Subscription {
        Subscription { options: options(qos), id: None }
    }
}
