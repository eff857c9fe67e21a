//! The owned MQTT 5.0 packets: every field a packet carries, reason codes
//! and properties included. Payloads, correlation data and other binary
//! fields are slices of the received frame; a PUBLISH's and a will's
//! message properties sit in an [`Arc`] so fan-out shares them.

use super::decode::DecodeError;
use super::property::Properties;
use super::reason::ReasonCode;
use crate::packet::{Pid, QoS};
use bytes::Bytes;
use std::sync::Arc;

/// An MQTT 5.0 control packet, in either direction.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    Connack(Connack),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK (both directions).
    Puback(Ack),
    /// PUBREC (both directions).
    Pubrec(Ack),
    /// PUBREL (both directions).
    Pubrel(Ack),
    /// PUBCOMP (both directions).
    Pubcomp(Ack),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    Suback(Suback),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client).
    Unsuback(Unsuback),
    /// PINGREQ (client to server).
    Pingreq,
    /// PINGRESP (server to client).
    Pingresp,
    /// DISCONNECT (both directions).
    Disconnect(Disconnect),
    /// AUTH (both directions).
    Auth(Auth),
}

impl Packet {
    /// The packet's name, for log lines.
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
            Packet::Suback(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::Unsuback(_) => "UNSUBACK",
            Packet::Pingreq => "PINGREQ",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// A CONNECT packet (section 3.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// The client identifier, possibly empty.
    pub client_id: Arc<str>,
    /// Clean Start (section 3.1.2.4).
    pub clean_start: bool,
    /// CONNECT properties: session expiry, receive maximum, maximum packet
    /// size, topic alias maximum, request response / problem information,
    /// authentication method and data, user properties.
    pub properties: Properties,
    /// The will, if the Will Flag is set.
    pub will: Option<Will>,
    /// The user name, if the User Name Flag is set.
    pub username: Option<Arc<str>>,
    /// The password, if the Password Flag is set (MQTT 5.0 allows one
    /// without a user name).
    pub password: Option<Bytes>,
}

/// The will in a CONNECT (section 3.1.3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    /// The will topic (not yet checked for wildcards: the caller's job).
    pub topic: Arc<str>,
    /// The will payload.
    pub payload: Bytes,
    /// QoS the will is published at.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
    /// Will properties: will delay interval and the message's own
    /// (payload format, expiry, content type, response topic, correlation
    /// data, user properties).
    pub properties: Arc<Properties>,
}

/// A CONNACK packet (section 3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Connack {
    /// Session Present; always false with an error reason (MQTT-3.2.2-6).
    pub session_present: bool,
    /// The connect reason code.
    pub reason: ReasonCode,
    /// CONNACK properties.
    pub properties: Properties,
}

/// A PUBLISH packet (section 3.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// DUP flag; never set at QoS 0 (MQTT-3.3.1-2).
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty when a Topic Alias stands for it (the caller
    /// resolves aliases and checks for wildcards).
    pub topic: Arc<str>,
    /// Packet identifier, present exactly when QoS > 0.
    pub pid: Option<Pid>,
    /// Topic Alias (never 0 once decoded: MQTT-3.3.2-8).
    pub topic_alias: Option<u16>,
    /// Subscription Identifiers of the subscriptions that matched (server to
    /// client only: MQTT-3.3.4-6 forbids them from a client; see
    /// [`decode_from_client`](super::decode_from_client)).
    pub subscription_ids: Vec<u32>,
    /// The message's own properties, shared by every copy of it: payload
    /// format, message expiry, content type, response topic, correlation
    /// data, user properties. Topic Alias and Subscription Identifiers are
    /// per delivery and live in the fields above, never here.
    pub properties: Arc<Properties>,
    /// The payload, a slice of the received frame.
    pub payload: Bytes,
}

impl Publish {
    /// Whether the payload is what its Payload Format Indicator says: UTF-8
    /// when the indicator is 1. A receiver may check this (section
    /// 3.3.2.3.2); a failure is answered with 0x99 Payload format invalid.
    pub fn check_payload_format(&self) -> Result<(), DecodeError> {
        match self.properties.payload_format_utf8 == Some(true) && std::str::from_utf8(&self.payload).is_err() {
            true => Err(DecodeError::new(
                ReasonCode::PAYLOAD_FORMAT_INVALID,
                "3.3.2.3.2",
                "payload is not UTF-8 although its payload format indicator says so",
            )),
            false => Ok(()),
        }
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (sections 3.4 to 3.7).
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The packet identifier acknowledged.
    pub pid: Pid,
    /// The reason code (0x00 when the packet had none).
    pub reason: ReasonCode,
    /// Reason String and User Properties.
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement without properties.
    pub fn success(pid: Pid) -> Ack {
        Ack { pid, reason: ReasonCode::SUCCESS, properties: Properties::default() }
    }
}

/// What the server does with retained messages when a subscription is made
/// (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    OnSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    OnNewSubscription = 1,
    /// 2: do not send them.
    Never = 2,
}

/// The options byte of one SUBSCRIBE entry (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local: never deliver the client's own messages back to it.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag when forwarding.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// The options byte on the wire.
    pub fn to_byte(self) -> u8 {
        self.qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling as u8) << 4
    }
}

/// A SUBSCRIBE packet (section 3.8).
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pid: Pid,
    /// Subscription Identifier (at most one in SUBSCRIBE, never 0).
    pub subscription_id: Option<u32>,
    /// User Properties (the Subscription Identifier is moved to the field above).
    pub properties: Properties,
    /// At least one topic filter with its options (MQTT-3.8.3-2); filters
    /// are not yet checked for wildcard placement (the caller's job).
    pub filters: Vec<(Arc<str>, SubscriptionOptions)>,
}

/// A SUBACK packet (section 3.9).
#[derive(Debug, Clone, PartialEq)]
pub struct Suback {
    /// Packet identifier of the SUBSCRIBE answered.
    pub pid: Pid,
    /// Reason String and User Properties.
    pub properties: Properties,
    /// One reason code per filter, in order.
    pub reasons: Vec<ReasonCode>,
}

/// An UNSUBSCRIBE packet (section 3.10).
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub pid: Pid,
    /// User Properties.
    pub properties: Properties,
    /// At least one topic filter (MQTT-3.10.3-2).
    pub filters: Vec<Arc<str>>,
}

/// An UNSUBACK packet (section 3.11).
#[derive(Debug, Clone, PartialEq)]
pub struct Unsuback {
    /// Packet identifier of the UNSUBSCRIBE answered.
    pub pid: Pid,
    /// Reason String and User Properties.
    pub properties: Properties,
    /// One reason code per filter, in order.
    pub reasons: Vec<ReasonCode>,
}

/// A DISCONNECT packet (section 3.14).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Disconnect {
    /// The reason code (0x00 Normal disconnection when the packet had none).
    pub reason: ReasonCode,
    /// Session expiry, Reason String, Server Reference, User Properties.
    pub properties: Properties,
}

/// An AUTH packet (section 3.15).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Auth {
    /// The reason code (0x00 Success when the packet had none).
    pub reason: ReasonCode,
    /// Authentication method and data, Reason String, User Properties.
    pub properties: Properties,
}
