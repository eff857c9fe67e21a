//! The MQTT 5.0 encoder. Each packet's body is written by one generic walk
//! over a [`Sink`]: once into a counter (for the Remaining Length and each
//! Property Length), once into the buffer, so nothing is written twice or
//! moved afterwards.

use super::packet::*;
use super::property::{self, Properties};
use bytes::{BufMut, BytesMut};
use std::fmt;

/// The largest Remaining Length (four length bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes, or a variable
    /// byte integer (a Subscription Identifier) over 268,435,455.
    FieldTooLong,
    /// The packet is longer than MQTT can express (256 MiB).
    PacketTooLong,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::FieldTooLong => {
                "a string or binary field longer than 65535 bytes, or a variable byte integer over 268435455"
            }
            EncodeError::PacketTooLong => "packet longer than the largest remaining length",
        })
    }
}

impl std::error::Error for EncodeError {}

/// Where an encoder walk writes: a buffer, or a counter.
pub(crate) trait Sink {
    fn slice(&mut self, bytes: &[u8]);

    fn byte(&mut self, b: u8) {
        self.slice(&[b]);
    }

    fn u16(&mut self, v: u16) {
        self.slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.slice(&v.to_be_bytes());
    }

    /// A Variable Byte Integer in its fewest bytes (MQTT-1.5.5-1).
    fn vbi(&mut self, mut v: u32) {
        loop {
            let byte = (v % 128) as u8;
            v /= 128;
            if v == 0 {
                return self.byte(byte);
            }
            self.byte(byte | 0x80);
        }
    }

    /// A two-byte length and the bytes (a counter notes one that does not fit).
    fn binary(&mut self, bytes: &[u8]) {
        self.u16(bytes.len() as u16);
        self.slice(bytes);
    }

    fn string(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }
}

impl Sink for BytesMut {
    fn slice(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// Counts what a walk would write.
#[derive(Debug, Default)]
pub(crate) struct Count {
    len: usize,
    field_too_long: bool,
}

impl Count {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Sink for Count {
    fn slice(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
    }

    fn binary(&mut self, bytes: &[u8]) {
        self.field_too_long |= bytes.len() > usize::from(u16::MAX);
        self.len += 2 + bytes.len();
    }

    fn vbi(&mut self, v: u32) {
        self.field_too_long |= v as usize > MAX_REMAINING_LENGTH;
        self.len += vbi_len(v as usize);
    }
}

/// The fixed-header byte of a packet.
fn header(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::Connack(_) => 0x20,
        Packet::Publish(p) => 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain),
        Packet::Puback(_) => 0x40,
        Packet::Pubrec(_) => 0x50,
        Packet::Pubrel(_) => 0x62,
        Packet::Pubcomp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::Suback(_) => 0x90,
        Packet::Unsubscribe(_) => 0xa2,
        Packet::Unsuback(_) => 0xb0,
        Packet::Pingreq => 0xc0,
        Packet::Pingresp => 0xd0,
        Packet::Disconnect(_) => 0xe0,
        Packet::Auth(_) => 0xf0,
    }
}

fn props<S: Sink>(s: &mut S, p: &Properties) {
    property::write(s, p, None, &[]);
}

/// Writes a packet's body (everything after the Remaining Length).
fn body<S: Sink>(s: &mut S, packet: &Packet) {
    match packet {
        Packet::Connect(c) => connect(s, c),
        Packet::Connack(c) => {
            s.byte(u8::from(c.session_present));
            s.byte(c.reason.0);
            props(s, &c.properties);
        }
        Packet::Publish(p) => {
            s.string(&p.topic);
            if let Some(pid) = p.pid {
                s.u16(pid);
            }
            property::write(s, &p.properties, p.topic_alias, &p.subscription_ids);
            s.slice(&p.payload);
        }
        Packet::Puback(a) | Packet::Pubrec(a) | Packet::Pubrel(a) | Packet::Pubcomp(a) => {
            s.u16(a.pid);
            reason_and_properties(s, a.reason.0, &a.properties);
        }
        Packet::Subscribe(sub) => {
            s.u16(sub.pid);
            property::write(s, &sub.properties, None, sub.subscription_id.as_slice());
            for (filter, options) in &sub.filters {
                s.string(filter);
                s.byte(options.to_byte());
            }
        }
        Packet::Suback(a) => {
            s.u16(a.pid);
            props(s, &a.properties);
            a.reasons.iter().for_each(|r| s.byte(r.0));
        }
        Packet::Unsubscribe(u) => {
            s.u16(u.pid);
            props(s, &u.properties);
            u.filters.iter().for_each(|f| s.string(f));
        }
        Packet::Unsuback(a) => {
            s.u16(a.pid);
            props(s, &a.properties);
            a.reasons.iter().for_each(|r| s.byte(r.0));
        }
        Packet::Pingreq | Packet::Pingresp => {}
        Packet::Disconnect(Disconnect { reason, properties }) | Packet::Auth(Auth { reason, properties }) => {
            reason_and_properties(s, reason.0, properties);
        }
    }
}

/// The shortest form: nothing after the reason code when there are no
/// properties, and (for acknowledgements) no reason code when it is 0x00.
fn reason_and_properties<S: Sink>(s: &mut S, reason: u8, properties: &Properties) {
    let bare = properties.is_empty();
    if reason == 0 && bare {
        return;
    }
    s.byte(reason);
    if !bare {
        props(s, properties);
    }
}

fn connect<S: Sink>(s: &mut S, c: &Connect) {
    s.string("MQTT");
    s.byte(5);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    s.byte(flags);
    s.u16(c.keep_alive);
    props(s, &c.properties);
    s.string(&c.client_id);
    if let Some(w) = &c.will {
        props(s, &w.properties);
        s.string(&w.topic);
        s.binary(&w.payload);
    }
    if let Some(u) = &c.username {
        s.string(u);
    }
    if let Some(p) = &c.password {
        s.binary(p);
    }
}

/// The Remaining Length of a packet.
fn remaining_length(packet: &Packet) -> Result<usize, EncodeError> {
    let mut count = Count::default();
    body(&mut count, packet);
    match (count.field_too_long, count.len > MAX_REMAINING_LENGTH) {
        (true, _) => Err(EncodeError::FieldTooLong),
        (_, true) => Err(EncodeError::PacketTooLong),
        _ => Ok(count.len),
    }
}

pub(crate) fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The whole size of a packet on the wire, fixed header included: what a
/// peer's Maximum Packet Size limits.
pub fn encoded_len(packet: &Packet) -> Result<usize, EncodeError> {
    remaining_length(packet).map(|len| 1 + vbi_len(len) + len)
}

/// Appends one packet to `dst`, fields as given: values the decoder
/// refuses (a Topic Alias or Receive Maximum of 0, Maximum QoS 2) are the
/// caller's to avoid. On error nothing is written.
pub fn encode(packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let len = remaining_length(packet)?;
    dst.reserve(1 + vbi_len(len) + len);
    dst.put_u8(header(packet));
    dst.vbi(len as u32);
    body(dst, packet);
    Ok(())
}

/// Appends `packet` to `dst` if it fits the peer's Maximum Packet Size,
/// and returns whether it did. When it does not fit, the Reason String and
/// then the User Properties are left out of the packets the spec lets a
/// sender drop them from (CONNACK MQTT-3.2.2-19/-20, PUBACK MQTT-3.4.2-2/-3,
/// PUBREC MQTT-3.5.2-2/-3, PUBREL MQTT-3.6.2-2/-3, PUBCOMP MQTT-3.7.2-2/-3,
/// SUBACK MQTT-3.9.2-1/-2, UNSUBACK MQTT-3.11.2-1/-2, DISCONNECT
/// MQTT-3.14.2-3/-4, AUTH MQTT-3.15.2-2/-3). A PUBLISH that does not fit is
/// not written: the caller discards it as if sent (MQTT-3.1.2-25).
pub fn encode_within(packet: &Packet, max_packet_size: usize, dst: &mut BytesMut) -> Result<bool, EncodeError> {
    if encoded_len(packet)? <= max_packet_size {
        return encode(packet, dst).map(|()| true);
    }
    let mut smaller = packet.clone();
    let Some(properties) = droppable(&mut smaller) else { return Ok(false) };
    if properties.reason_string.take().is_some() && encoded_len(&smaller)? <= max_packet_size {
        return encode(&smaller, dst).map(|()| true);
    }
    let Some(properties) = droppable(&mut smaller) else { return Ok(false) };
    properties.user = Vec::new();
    match encoded_len(&smaller)? <= max_packet_size {
        true => encode(&smaller, dst).map(|()| true),
        false => Ok(false),
    }
}

/// The properties a sender may thin out to fit a Maximum Packet Size.
fn droppable(packet: &mut Packet) -> Option<&mut Properties> {
    match packet {
        Packet::Connack(Connack { properties, .. })
        | Packet::Puback(Ack { properties, .. })
        | Packet::Pubrec(Ack { properties, .. })
        | Packet::Pubrel(Ack { properties, .. })
        | Packet::Pubcomp(Ack { properties, .. })
        | Packet::Suback(Suback { properties, .. })
        | Packet::Unsuback(Unsuback { properties, .. })
        | Packet::Disconnect(Disconnect { properties, .. })
        | Packet::Auth(Auth { properties, .. }) => Some(properties),
        _ => None,
    }
}
