//! The owned MQTT 3.1.1 packets the rest of the broker speaks.
//!
//! The codec turns mqttrs' borrowed packets into these; payloads are
//! [`Bytes`] so one received payload can be shared by every subscriber.
//! This is the bottom floor: it imports nothing from the crate.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V311,
}

impl Protocol {
    /// The protocol level CONNECT carries (3, 4).
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
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
}

/// One SUBSCRIBE return code: the granted QoS or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubackCode {
    /// The subscription was granted at this QoS.
    Granted(QoS),
    /// 0x80: the subscription was refused.
    Failure,
}

/// Every MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// CONNECT (client to server); boxed, as it is large and arrives once.
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    Connack {
        /// Session Present flag.
        session_present: bool,
        /// Return code.
        code: ConnectCode,
    },
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK.
    Puback(Pid),
    /// PUBREC.
    Pubrec(Pid),
    /// PUBREL.
    Pubrel(Pid),
    /// PUBCOMP.
    Pubcomp(Pid),
    /// SUBSCRIBE: packet id and (filter, requested QoS) pairs in order.
    Subscribe(Pid, Vec<(String, QoS)>),
    /// SUBACK: one code per requested filter, in order.
    Suback(Pid, Vec<SubackCode>),
    /// UNSUBSCRIBE: packet id and filters.
    Unsubscribe(Pid, Vec<String>),
    /// UNSUBACK.
    Unsuback(Pid),
    /// PINGREQ.
    Pingreq,
    /// PINGRESP.
    Pingresp,
    /// DISCONNECT.
    Disconnect,
}

impl Packet {
    /// The packet's name as the spec writes it, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::Connack { .. } => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Puback(_) => "PUBACK",
            Packet::Pubrec(_) => "PUBREC",
            Packet::Pubrel(_) => "PUBREL",
            Packet::Pubcomp(_) => "PUBCOMP",
            Packet::Subscribe(..) => "SUBSCRIBE",
            Packet::Suback(..) => "SUBACK",
            Packet::Unsubscribe(..) => "UNSUBSCRIBE",
            Packet::Unsuback(_) => "UNSUBACK",
            Packet::Pingreq => "PINGREQ",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}
