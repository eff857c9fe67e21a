//! MQTT 5.0 properties (section 2.2.2): one typed struct for every packet,
//! the table of which property each packet may carry (2.2.2.2), and the
//! bounded, bounds-checked walk that reads them.

use super::decode::{DecodeError, Reader};
use super::encode::Sink;
use super::reason::ReasonCode;
use crate::packet::QoS;
use bytes::Bytes;
use std::sync::{Arc, LazyLock};

/// At most this many User Property pairs in one packet; more is answered
/// with 0x95 Packet too large.
pub const MAX_USER_PROPERTIES: usize = 128;

/// At most this many Subscription Identifiers in one PUBLISH; more is
/// answered with 0x95 Packet too large. With [`MAX_USER_PROPERTIES`] and the
/// once-only rule this bounds the number of properties in a packet.
pub const MAX_SUBSCRIPTION_IDS: usize = 128;

/// At most this many bytes of properties in one packet (the Property Length);
/// more is answered with 0x95 Packet too large.
pub const MAX_PROPERTY_BYTES: usize = 64 * 1024;

/// The properties of one packet. Each packet kind uses the fields the spec
/// allows it (the decoder refuses the others); an absent property is `None`
/// or empty. User Properties keep their order and may repeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator: `true` for UTF-8 (PUBLISH, will).
    pub payload_format_utf8: Option<bool>,
    /// 0x02 Message Expiry Interval in seconds (PUBLISH, will).
    pub message_expiry: Option<u32>,
    /// 0x03 Content Type (PUBLISH, will).
    pub content_type: Option<Arc<str>>,
    /// 0x08 Response Topic (PUBLISH, will).
    pub response_topic: Option<Arc<str>>,
    /// 0x09 Correlation Data (PUBLISH, will), a slice of the frame.
    pub correlation_data: Option<Bytes>,
    /// 0x11 Session Expiry Interval in seconds (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry: Option<u32>,
    /// 0x12 Assigned Client Identifier (CONNACK).
    pub assigned_client_id: Option<Arc<str>>,
    /// 0x13 Server Keep Alive (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method (CONNECT, CONNACK, AUTH).
    pub auth_method: Option<Arc<str>>,
    /// 0x16 Authentication Data (CONNECT, CONNACK, AUTH).
    pub auth_data: Option<Bytes>,
    /// 0x17 Request Problem Information (CONNECT).
    pub request_problem_info: Option<bool>,
    /// 0x18 Will Delay Interval in seconds (will).
    pub will_delay: Option<u32>,
    /// 0x19 Request Response Information (CONNECT).
    pub request_response_info: Option<bool>,
    /// 0x1A Response Information (CONNACK).
    pub response_info: Option<Arc<str>>,
    /// 0x1C Server Reference (CONNACK, DISCONNECT).
    pub server_reference: Option<Arc<str>>,
    /// 0x1F Reason String (every acknowledgement, DISCONNECT, AUTH).
    pub reason_string: Option<Arc<str>>,
    /// 0x21 Receive Maximum, never 0 (CONNECT, CONNACK).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x24 Maximum QoS, 0 or 1 (CONNACK).
    pub maximum_qos: Option<QoS>,
    /// 0x25 Retain Available (CONNACK).
    pub retain_available: Option<bool>,
    /// 0x26 User Properties, in order (every packet with properties).
    pub user: Vec<(Arc<str>, Arc<str>)>,
    /// 0x27 Maximum Packet Size, never 0 (CONNECT, CONNACK).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (CONNACK).
    pub wildcard_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available (CONNACK).
    pub subscription_ids_available: Option<bool>,
    /// 0x2A Shared Subscription Available (CONNACK).
    pub shared_available: Option<bool>,
}

static EMPTY: LazyLock<Arc<Properties>> = LazyLock::new(Arc::default);

impl Properties {
    /// A shared empty set: a PUBLISH without properties costs no allocation.
    pub fn empty() -> Arc<Properties> {
        Arc::clone(&EMPTY)
    }

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// Property identifiers (section 2.2.2.2).
pub(crate) mod id {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0b;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const AUTH_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1a;
    pub const SERVER_REFERENCE: u8 = 0x1c;
    pub const REASON_STRING: u8 = 0x1f;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDS_AVAILABLE: u8 = 0x29;
    pub const SHARED_AVAILABLE: u8 = 0x2a;
}

/// Where a property section sits: which identifiers it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Connect,
    Will,
    Connack,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

impl Place {
    /// The identifiers the table of section 2.2.2.2 allows here.
    const fn allowed(self) -> u64 {
        use id::*;
        match self {
            Place::Connect => mask(&[
                SESSION_EXPIRY,
                AUTH_METHOD,
                AUTH_DATA,
                REQUEST_PROBLEM_INFO,
                REQUEST_RESPONSE_INFO,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ]),
            Place::Will => mask(&[
                PAYLOAD_FORMAT,
                MESSAGE_EXPIRY,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY,
                USER_PROPERTY,
            ]),
            Place::Connack => mask(&[
                SESSION_EXPIRY,
                ASSIGNED_CLIENT_ID,
                SERVER_KEEP_ALIVE,
                AUTH_METHOD,
                AUTH_DATA,
                RESPONSE_INFO,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_AVAILABLE,
                SUBSCRIPTION_IDS_AVAILABLE,
                SHARED_AVAILABLE,
            ]),
            Place::Publish => mask(&[
                PAYLOAD_FORMAT,
                MESSAGE_EXPIRY,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_ID,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ]),
            Place::Ack => mask(&[REASON_STRING, USER_PROPERTY]),
            Place::Subscribe => mask(&[SUBSCRIPTION_ID, USER_PROPERTY]),
            Place::Unsubscribe => mask(&[USER_PROPERTY]),
            Place::Disconnect => mask(&[SESSION_EXPIRY, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY]),
            Place::Auth => mask(&[AUTH_METHOD, AUTH_DATA, REASON_STRING, USER_PROPERTY]),
        }
    }
}

/// What a property section decodes to: the properties, and the two that
/// are per delivery rather than per message.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub properties: Properties,
    pub topic_alias: Option<u16>,
    pub subscription_ids: Vec<u32>,
}

/// Every known identifier (bit set): anything else is unknown (0x81).
const KNOWN: u64 = Place::Connect.allowed()
    | Place::Will.allowed()
    | Place::Connack.allowed()
    | Place::Publish.allowed()
    | Place::Disconnect.allowed()
    | Place::Auth.allowed();

const fn bit(id: u8) -> u64 {
    match id < 64 {
        true => 1 << id,
        false => 0,
    }
}

/// Reads a Property Length and the properties it covers (section 2.2.2).
pub(crate) fn read(r: &mut Reader, place: Place) -> Result<Decoded, DecodeError> {
    let len = r.vbi()?;
    if len > MAX_PROPERTY_BYTES as u32 {
        return Err(DecodeError::new(
            ReasonCode::PACKET_TOO_LARGE,
            "2.2.2.1",
            "property length over the broker's limit of 64 KiB",
        ));
    }
    let mut out = Decoded::default();
    if len == 0 {
        return Ok(out);
    }
    let Some(mut p) = r.sub(len as usize) else {
        return Err(DecodeError::malformed("2.2.2.1", "property length overruns the packet"));
    };
    let allowed = place.allowed();
    let mut seen = 0u64;
    let props = &mut out.properties;
    while !p.is_empty() {
        let id = p.u8()?;
        let bit = bit(id);
        if KNOWN & bit == 0 {
            return Err(DecodeError::malformed("2.2.2.2", "unknown property identifier"));
        }
        if allowed & bit == 0 {
            return Err(DecodeError::malformed("2.2.2.2", "property not allowed in this packet"));
        }
        let repeatable = id == id::USER_PROPERTY || (id == id::SUBSCRIPTION_ID && place == Place::Publish);
        if seen & bit != 0 && !repeatable {
            return Err(DecodeError::protocol("2.2.2.2", "property included more than once"));
        }
        seen |= bit;
        match id {
            id::PAYLOAD_FORMAT => {
                props.payload_format_utf8 = Some(flag(&mut p, "3.3.2.3.2", "payload format indicator not 0 or 1")?)
            }
            id::MESSAGE_EXPIRY => props.message_expiry = Some(p.u32()?),
            id::CONTENT_TYPE => props.content_type = Some(p.string()?),
            id::RESPONSE_TOPIC => props.response_topic = Some(p.string()?),
            id::CORRELATION_DATA => props.correlation_data = Some(p.binary()?),
            id::SUBSCRIPTION_ID => {
                room(
                    &out.subscription_ids,
                    MAX_SUBSCRIPTION_IDS,
                    "3.3.2.3.8",
                    "more subscription identifiers than the broker's limit of 128",
                )?;
                let value = p.vbi()?;
                if value == 0 {
                    return Err(DecodeError::protocol("3.3.2.3.8", "subscription identifier 0"));
                }
                out.subscription_ids.push(value);
            }
            id::SESSION_EXPIRY => props.session_expiry = Some(p.u32()?),
            id::ASSIGNED_CLIENT_ID => props.assigned_client_id = Some(p.string()?),
            id::SERVER_KEEP_ALIVE => props.server_keep_alive = Some(p.u16()?),
            id::AUTH_METHOD => props.auth_method = Some(p.string()?),
            id::AUTH_DATA => props.auth_data = Some(p.binary()?),
            id::REQUEST_PROBLEM_INFO => {
                props.request_problem_info = Some(flag(&mut p, "3.1.2.11.7", "request problem information not 0 or 1")?)
            }
            id::WILL_DELAY => props.will_delay = Some(p.u32()?),
            id::REQUEST_RESPONSE_INFO => {
                props.request_response_info =
                    Some(flag(&mut p, "3.1.2.11.6", "request response information not 0 or 1")?)
            }
            id::RESPONSE_INFO => props.response_info = Some(p.string()?),
            id::SERVER_REFERENCE => props.server_reference = Some(p.string()?),
            id::REASON_STRING => props.reason_string = Some(p.string()?),
            id::RECEIVE_MAXIMUM => match p.u16()? {
                0 => return Err(DecodeError::protocol("3.1.2.11.3", "receive maximum 0")),
                n => props.receive_maximum = Some(n),
            },
            id::TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = Some(p.u16()?),
            id::TOPIC_ALIAS => match p.u16()? {
                0 => {
                    return Err(DecodeError::new(ReasonCode::TOPIC_ALIAS_INVALID, "MQTT-3.3.2-8", "topic alias 0"));
                }
                n => out.topic_alias = Some(n),
            },
            id::MAXIMUM_QOS => match p.u8()? {
                0 => props.maximum_qos = Some(QoS::AtMostOnce),
                1 => props.maximum_qos = Some(QoS::AtLeastOnce),
                _ => return Err(DecodeError::protocol("3.2.2.3.4", "maximum QoS not 0 or 1")),
            },
            id::RETAIN_AVAILABLE => {
                props.retain_available = Some(flag(&mut p, "3.2.2.3.5", "retain available not 0 or 1")?)
            }
            id::USER_PROPERTY => {
                room(
                    &props.user,
                    MAX_USER_PROPERTIES,
                    "2.2.2.2",
                    "more user properties than the broker's limit of 128",
                )?;
                let pair = (p.string()?, p.string()?);
                props.user.push(pair);
            }
            id::MAXIMUM_PACKET_SIZE => match p.u32()? {
                0 => return Err(DecodeError::protocol("3.1.2.11.4", "maximum packet size 0")),
                n => props.maximum_packet_size = Some(n),
            },
            id::WILDCARD_AVAILABLE => {
                props.wildcard_available =
                    Some(flag(&mut p, "3.2.2.3.11", "wildcard subscription available not 0 or 1")?)
            }
            id::SUBSCRIPTION_IDS_AVAILABLE => {
                props.subscription_ids_available =
                    Some(flag(&mut p, "3.2.2.3.12", "subscription identifiers available not 0 or 1")?)
            }
            _ => props.shared_available = Some(flag(&mut p, "3.2.2.3.13", "shared subscription available not 0 or 1")?),
        }
    }
    if props.auth_data.is_some() && props.auth_method.is_none() {
        return Err(DecodeError::protocol("3.1.2.11.10", "authentication data without authentication method"));
    }
    Ok(out)
}

/// Whether one more repeated property fits under its limit (0x95 if not).
fn room<T>(items: &[T], max: usize, rule: &'static str, message: &'static str) -> Result<(), DecodeError> {
    match items.len() < max {
        true => Ok(()),
        false => Err(DecodeError::new(ReasonCode::PACKET_TOO_LARGE, rule, message)),
    }
}

/// A byte property that must be 0 or 1 (a Protocol Error otherwise).
fn flag(p: &mut Reader, rule: &'static str, message: &'static str) -> Result<bool, DecodeError> {
    match p.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::protocol(rule, message)),
    }
}

/// Writes the properties: the Property Length first, then each set
/// property, `topic_alias` and `subscription_ids` (a PUBLISH's per-delivery
/// ones) included.
pub(crate) fn write<S: Sink>(s: &mut S, props: &Properties, topic_alias: Option<u16>, subscription_ids: &[u32]) {
    let mut count = super::encode::Count::default();
    write_items(&mut count, props, topic_alias, subscription_ids, props.message_expiry);
    s.vbi(count.len() as u32);
    write_items(s, props, topic_alias, subscription_ids, props.message_expiry);
}

/// The length of a neutral PUBLISH's property section, Property Length
/// included: its message properties with the delivery's own expiry, topic
/// alias and subscription identifiers.
pub fn publish_properties_len(p: &crate::packet::Publish) -> usize {
    if bare(p) {
        return 1;
    }
    let props = p.properties.as_deref().unwrap_or(&NONE);
    let mut count = super::encode::Count::default();
    write_items(&mut count, props, p.topic_alias, p.subscription_id.as_slice(), p.expiry);
    super::encode::vbi_len(count.len()) + count.len()
}

/// Writes a neutral PUBLISH's property section (see [`publish_properties_len`]).
pub fn write_publish_properties(p: &crate::packet::Publish, dst: &mut bytes::BytesMut) {
    if bare(p) {
        return dst.byte(0);
    }
    let props = p.properties.as_deref().unwrap_or(&NONE);
    let mut count = super::encode::Count::default();
    write_items(&mut count, props, p.topic_alias, p.subscription_id.as_slice(), p.expiry);
    dst.vbi(count.len() as u32);
    write_items(dst, props, p.topic_alias, p.subscription_id.as_slice(), p.expiry);
}

/// Whether a PUBLISH has no property at all (Property Length 0): the
/// common case, written without walking the property table.
fn bare(p: &crate::packet::Publish) -> bool {
    p.properties.is_none() && p.expiry.is_none() && p.topic_alias.is_none() && p.subscription_id.is_none()
}

/// No properties, for a PUBLISH without any.
static NONE: Properties = Properties {
    payload_format_utf8: None,
    message_expiry: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    session_expiry: None,
    assigned_client_id: None,
    server_keep_alive: None,
    auth_method: None,
    auth_data: None,
    request_problem_info: None,
    will_delay: None,
    request_response_info: None,
    response_info: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    maximum_qos: None,
    retain_available: None,
    user: Vec::new(),
    maximum_packet_size: None,
    wildcard_available: None,
    subscription_ids_available: None,
    shared_available: None,
};

fn write_items<S: Sink>(
    s: &mut S,
    p: &Properties,
    topic_alias: Option<u16>,
    subscription_ids: &[u32],
    message_expiry: Option<u32>,
) {
    use id::*;
    let flag = |s: &mut S, v: bool| s.byte(u8::from(v));
    item(s, PAYLOAD_FORMAT, p.payload_format_utf8, flag);
    item(s, MESSAGE_EXPIRY, message_expiry, S::u32);
    item(s, CONTENT_TYPE, p.content_type.as_deref(), S::string);
    item(s, RESPONSE_TOPIC, p.response_topic.as_deref(), S::string);
    item(s, CORRELATION_DATA, p.correlation_data.as_deref(), S::binary);
    for &v in subscription_ids {
        item(s, SUBSCRIPTION_ID, Some(v), S::vbi);
    }
    item(s, SESSION_EXPIRY, p.session_expiry, S::u32);
    item(s, ASSIGNED_CLIENT_ID, p.assigned_client_id.as_deref(), S::string);
    item(s, SERVER_KEEP_ALIVE, p.server_keep_alive, S::u16);
    item(s, AUTH_METHOD, p.auth_method.as_deref(), S::string);
    item(s, AUTH_DATA, p.auth_data.as_deref(), S::binary);
    item(s, REQUEST_PROBLEM_INFO, p.request_problem_info, flag);
    item(s, WILL_DELAY, p.will_delay, S::u32);
    item(s, REQUEST_RESPONSE_INFO, p.request_response_info, flag);
    item(s, RESPONSE_INFO, p.response_info.as_deref(), S::string);
    item(s, SERVER_REFERENCE, p.server_reference.as_deref(), S::string);
    item(s, REASON_STRING, p.reason_string.as_deref(), S::string);
    item(s, RECEIVE_MAXIMUM, p.receive_maximum, S::u16);
    item(s, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum, S::u16);
    item(s, TOPIC_ALIAS, topic_alias, S::u16);
    item(s, MAXIMUM_QOS, p.maximum_qos, |s, v| s.byte(v as u8));
    item(s, RETAIN_AVAILABLE, p.retain_available, flag);
    for (key, value) in &p.user {
        item(s, USER_PROPERTY, Some((key, value)), |s, (k, v)| {
            s.string(k);
            s.string(v);
        });
    }
    item(s, MAXIMUM_PACKET_SIZE, p.maximum_packet_size, S::u32);
    item(s, WILDCARD_AVAILABLE, p.wildcard_available, flag);
    item(s, SUBSCRIPTION_IDS_AVAILABLE, p.subscription_ids_available, flag);
    item(s, SHARED_AVAILABLE, p.shared_available, flag);
}

/// One property, if it is set: its identifier, then its value.
fn item<S: Sink, T>(s: &mut S, id: u8, value: Option<T>, write: impl FnOnce(&mut S, T)) {
    if let Some(value) = value {
        s.byte(id);
        write(s, value);
    }
}

/// A message's properties as the store keeps them: the 5.0 property
/// section (Property Length first), as a PUBLISH carries it.
pub fn encode_message_properties(p: &Properties) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    write(&mut out, p, None, &[]);
    out.to_vec()
}

/// Reads what [`encode_message_properties`] wrote; `None` if it is not a
/// valid PUBLISH property section.
pub fn decode_message_properties(bytes: &[u8]) -> Option<Properties> {
    let mut r = Reader::new(Bytes::copy_from_slice(bytes));
    let decoded = read(&mut r, Place::Publish).ok()?;
    r.is_empty().then_some(decoded.properties)
}
