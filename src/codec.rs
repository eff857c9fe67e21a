//! The asynchronous-codec `Decoder`/`Encoder` for MQTT 3.1.1 over mqttrs,
//! and for MQTT 5.0 over midge's own codec ([`crate::v5`]).
//!
//! Framing is ours: the remaining length is parsed here and checked against
//! the maximum packet size *before* any byte of the body is buffered, the
//! frame is cut out exactly (mqttrs reads past the end of its input), shape
//! checked by [`validate`](crate::validate), and only then decoded by mqttrs
//! and turned into owned [`Packet`]s whose payloads share the frame's bytes.
//!
//! The protocol version is fixed by the first CONNECT: a CONNECT naming
//! `MQTT` level 5 switches the codec to 5.0 for the connection's life, and
//! every packet is then decoded by [`crate::v5`] into the same neutral
//! [`Packet`]s. Encoding follows the version too ([`encode_for`]).

use crate::error::{Error, Violation};
use crate::packet::{self, Ack, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe, Will};
use crate::{topic, v5, validate};
use asynchronous_codec::{Decoder, Encoder};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// The largest remaining length MQTT can express (four length bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Server-side MQTT codec: decodes client packets, encodes server packets.
#[derive(Debug, Clone)]
pub struct MqttCodec {
    /// Largest whole packet accepted, fixed header included (MQTT's own
    /// limit, 268,435,460 bytes, fits: 4 bytes in every connection, not 8).
    max_packet_size: u32,
    /// Bytes decoded since the last [`MqttCodec::take_received`] (what is
    /// sent is counted by the connection's [`Outbox`](crate::outbox::Outbox)).
    received: u64,
    /// The protocol version of the first CONNECT decoded: fixed-header
    /// rules differ between MQTT 3.1 and 3.1.1.
    protocol: Option<Protocol>,
    /// The packet refused for its size was a PUBLISH (a dropped message).
    oversized_publish: bool,
    /// The first CONNECT named MQTT 5.0, whether or not it decoded.
    v5_connect: bool,
    /// The client's 3.1.1 / 3.1 CONNECT set bit 7 of the protocol level: it
    /// is a bridge (Mosquitto's `try_private`), so every subscription it
    /// makes gets No Local and what it publishes is not echoed back to it.
    bridge: bool,
}

impl MqttCodec {
    /// A codec that refuses packets larger than `max_packet_size` bytes.
    pub fn new(max_packet_size: usize) -> Self {
        MqttCodec {
            max_packet_size: u32::try_from(max_packet_size).unwrap_or(u32::MAX),
            received: 0,
            protocol: None,
            oversized_publish: false,
            v5_connect: false,
            bridge: false,
        }
    }

    /// Whether the client's CONNECT named MQTT 5.0 (even one that failed to
    /// decode: its refusal is then a 5.0 CONNACK).
    pub fn speaks_v5(&self) -> bool {
        self.v5_connect
    }

    /// Whether the packet refused as larger than `max_packet_size` was a PUBLISH.
    pub fn refused_oversized_publish(&self) -> bool {
        self.oversized_publish
    }
}

impl MqttCodec {
    /// Bytes received since the last call, for the broker's counters.
    pub fn take_received(&mut self) -> u64 {
        std::mem::take(&mut self.received)
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Error> {
        let Some(&first) = src.first() else {
            shrink(src);
            return Ok(None);
        };
        let header = validate::check_header_for(first, self.protocol)?;
        let Some((body_at, len)) = remaining_length(src)? else {
            return Ok(None);
        };
        let total = body_at + len;
        if total > self.max_packet_size as usize {
            self.oversized_publish = first >> 4 == 3;
            return Err(Violation::PacketTooLarge.into());
        }
        let v5 = match self.protocol {
            Some(Protocol::V5) => true,
            Some(_) => false,
            None if first == 0x10 => match names_level_5(&src[body_at..total.min(src.len())], len) {
                Some(v5) => v5,
                None => return Ok(None),
            },
            None => false,
        };
        if src.len() < total {
            if v5 {
                self.v5_connect = true;
            }
            return Ok(None);
        }
        // The acknowledgements' four-byte form is the same in 3.1.1 and 5.0.
        if let Some(packet) = acknowledgement(header, &src[..total]) {
            src.advance(total);
            // A lone acknowledgement's few bytes are not kept either.
            if src.is_empty() && src.capacity() < 64 {
                *src = BytesMut::new();
            }
            self.received += total as u64;
            return packet.map(Some);
        }
        let mut frame = self.cut(src, total);
        if v5 {
            self.v5_connect = true;
            return self.decode_v5(frame.freeze(), first, body_at);
        }
        frame[0] = header;
        if header == 0x10 && self.protocol.is_none() {
            self.bridge = clear_bridge_bit(&mut frame[body_at..]);
        }
        let frame = frame.freeze();
        validate::check_body(header, &frame[body_at..])?;
        let mut packet = decode_frame(&frame)?;
        if let (true, Packet::Subscribe(s)) = (self.bridge, &mut packet) {
            for (_, options) in &mut s.filters {
                // As Mosquitto does for a bridge: its own messages never
                // come back to it, and retained flags are kept.
                (options.no_local, options.retain_as_published) = (true, true);
            }
        }
        if let Packet::Connect(connect) = &packet {
            self.protocol.get_or_insert(connect.protocol);
        }
        Ok(Some(packet))
    }
}

/// Clears bit 7 of a 3.1.1 or 3.1 CONNECT's protocol level (a bridge's
/// `try_private` mark) and says whether it was set.
fn clear_bridge_bit(body: &mut [u8]) -> bool {
    let at = match body {
        [0, 4, b'M', b'Q', b'T', b'T', ..] => 6,
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', ..] => 8,
        _ => return false,
    };
    match body.get_mut(at) {
        Some(level) if *level & 0x80 != 0 && matches!(*level & 0x7f, 3 | 4) => {
            *level &= 0x7f;
            true
        }
        _ => false,
    }
}

/// Whether a CONNECT whose body starts with `body` (of `len` bytes in all)
/// names MQTT 5.0 (`MQTT`, level 5); `None` while those bytes are arriving.
fn names_level_5(body: &[u8], len: usize) -> Option<bool> {
    const V5: [u8; 7] = [0, 4, b'M', b'Q', b'T', b'T', 5];
    match body.len() >= V5.len() || body.len() == len {
        true => Some(body.starts_with(&V5)),
        false => None,
    }
}

impl MqttCodec {
    /// Cuts a whole frame out of the read buffer. A frame shares the read
    /// buffer's allocation, and a queued payload keeps it alive: a small
    /// packet cut from a buffer that grew for a large one would pin all of
    /// it. Such a packet is copied out.
    fn cut(&mut self, src: &mut BytesMut, total: usize) -> BytesMut {
        self.received += total as u64;
        match src.capacity() > SHRINK_ABOVE && total < src.capacity() / PIN_RATIO {
            true => {
                let frame = BytesMut::from(&src[..total]);
                src.advance(total);
                frame
            }
            false => {
                let frame = src.split_to(total);
                // A drained buffer is let go: the frame keeps the allocation
                // alone, the next read allocates what it brings, and an idle
                // connection holds no read buffer.
                if src.is_empty() {
                    *src = BytesMut::new();
                }
                frame
            }
        }
    }

    /// Decodes one whole 5.0 frame.
    fn decode_v5(&mut self, frame: Bytes, first: u8, body_at: usize) -> Result<Option<Packet>, Error> {
        if let Some(publish) = plain_publish_v5(first, &frame, body_at) {
            return Ok(Some(Packet::Publish(publish)));
        }
        let packet = from_v5(v5::decode_from_client(first, frame.slice(body_at..)).map_err(Violation::from)?)?;
        if let Packet::Connect(_) = &packet {
            self.protocol.get_or_insert(Protocol::V5);
        }
        Ok(Some(packet))
    }
}

/// The common 5.0 PUBLISH, read without the general decoder: a topic written
/// out and no properties (Property Length 0). Anything else, and anything
/// wrong, is `None` and goes to [`v5::decode_from_client`], which gives the
/// precise answer.
fn plain_publish_v5(header: u8, frame: &Bytes, body_at: usize) -> Option<Publish> {
    if header >> 4 != 3 {
        return None;
    }
    let qos = QoS::from_u8((header >> 1) & 0x03)?;
    let dup = header & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return None;
    }
    let body = frame.get(body_at..)?;
    let (&[hi, lo], rest) = body.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let topic = std::str::from_utf8(rest.get(..len)?).ok()?;
    topic::validate_name(topic).ok()?;
    let mut at = body_at + 2 + len;
    let pid = match qos {
        QoS::AtMostOnce => None,
        _ => {
            let pid = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
            at += 2;
            Some(pid).filter(|&pid| pid != 0)?.into()
        }
    };
    if *frame.get(at)? != 0 {
        return None;
    }
    let payload = frame.slice(at + 1..);
    Some(Publish { dup, ..Publish::new(topic.into(), payload, qos, pid, header & 0x01 != 0) })
}

/// A decoded 5.0 packet in the neutral model, with the topic rules the 5.0
/// decoder leaves to its caller (wildcards in names, filter syntax).
fn from_v5(packet: v5::Packet) -> Result<Packet, Violation> {
    use v5::Packet as P;
    Ok(match packet {
        P::Connect(c) => {
            let c = *c;
            let will = match c.will {
                Some(w) => {
                    topic::validate_name(&w.topic)?;
                    Some(Will {
                        topic: w.topic,
                        payload: Bytes::copy_from_slice(&w.payload),
                        qos: w.qos,
                        retain: w.retain,
                        properties: {
                            let p = Properties { will_delay: None, ..owned_properties(&w.properties) };
                            (!p.is_empty()).then(|| Arc::new(p))
                        },
                        delay: w.properties.will_delay,
                    })
                }
                None => None,
            };
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V5,
                keep_alive: c.keep_alive,
                client_id: c.client_id.to_string(),
                clean_session: c.clean_start,
                will,
                username: c.username.map(|u| u.to_string()),
                password: c.password.map(|p| Bytes::copy_from_slice(&p)),
                properties: owned_properties(&c.properties),
            }))
        }
        P::Publish(p) => {
            if !p.topic.is_empty() {
                topic::validate_name(&p.topic)?;
            }
            // MQTT-3.3.2-14: a Response Topic is a topic name, no wildcards.
            if let Some(response) = &p.properties.response_topic {
                topic::validate_name(response)?;
            }
            Packet::Publish(neutral_publish(p))
        }
        P::Puback(a) => Packet::Puback(Ack { pid: a.pid, reason: a.reason }),
        P::Pubrec(a) => Packet::Pubrec(Ack { pid: a.pid, reason: a.reason }),
        P::Pubrel(a) => Packet::Pubrel(Ack { pid: a.pid, reason: a.reason }),
        P::Pubcomp(a) => Packet::Pubcomp(Ack { pid: a.pid, reason: a.reason }),
        P::Subscribe(s) => {
            let mut filters = Vec::with_capacity(s.filters.len());
            for (filter, options) in s.filters {
                topic::validate_filter(&filter)?;
                topic::validate_shared(&filter)?;
                filters.push((filter.to_string(), options));
            }
            Packet::Subscribe(Box::new(Subscribe { pid: s.pid, filters, id: s.subscription_id }))
        }
        P::Unsubscribe(u) => {
            let mut filters = Vec::with_capacity(u.filters.len());
            for filter in u.filters {
                topic::validate_filter(&filter)?;
                topic::validate_shared(&filter)?;
                filters.push(filter.to_string());
            }
            Packet::Unsubscribe(u.pid, filters)
        }
        P::Pingreq => Packet::Pingreq,
        P::Disconnect(d) => Packet::Disconnect(Box::new(d)),
        P::Auth(a) => Packet::Auth(Box::new(a)),
        P::Connack(_) | P::Suback(_) | P::Unsuback(_) | P::Pingresp => return Err(Violation::ServerOnlyPacket),
    })
}

/// A 5.0 PUBLISH in the neutral model, as decoded (its topic rules are the
/// caller's): the message properties shared, expiry and alias lifted out.
pub(crate) fn neutral_publish(p: v5::Publish) -> Publish {
    let expiry = p.properties.message_expiry;
    let properties = (!p.properties.is_empty()).then_some(p.properties);
    Publish {
        dup: p.dup,
        qos: p.qos,
        pid: p.pid,
        retain: p.retain,
        topic: p.topic,
        payload: p.payload,
        properties,
        expiry,
        topic_alias: p.topic_alias,
        subscription_id: None,
    }
}

/// Properties kept beyond their packet (CONNECT's, a will's): binary
/// fields are copied out of the frame, so the frame is not pinned.
fn owned_properties(p: &Properties) -> Properties {
    let copy = |b: &Option<Bytes>| b.as_deref().map(Bytes::copy_from_slice);
    Properties { correlation_data: copy(&p.correlation_data), auth_data: copy(&p.auth_data), ..p.clone() }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP are read here without mqttrs: they
/// are half of all QoS 1/2 traffic and are only a packet id.
fn acknowledgement(header: u8, frame: &[u8]) -> Option<Result<Packet, Error>> {
    let &[_, 2, high, low] = frame else { return None };
    let pid = u16::from_be_bytes([high, low]);
    let ack = Ack::ok(pid);
    let packet = match header {
        0x40 => Packet::Puback(ack),
        0x50 => Packet::Pubrec(ack),
        0x62 => Packet::Pubrel(ack),
        0x70 => Packet::Pubcomp(ack),
        _ => return None,
    };
    Some(match pid {
        0 => Err(Violation::PacketIdZero.into()),
        _ => Ok(packet),
    })
}

/// A frame smaller than its read buffer's capacity divided by this is
/// copied out of it (see [`MqttCodec`]'s decoder): what a queued payload pins is at
/// most this many times its size, or [`SHRINK_ABOVE`].
pub const PIN_RATIO: usize = 8;

/// An empty buffer larger than this is given back: a burst of large packets
/// must not pin memory for the rest of the connection's life.
pub const SHRINK_ABOVE: usize = 64 * 1024;

pub(crate) fn shrink(buffer: &mut BytesMut) {
    if buffer.is_empty() && buffer.capacity() > SHRINK_ABOVE {
        *buffer = BytesMut::new();
    }
}

/// Parses the remaining length: `Some((header_len, remaining_len))`, or `None`
/// while its bytes are still arriving.
fn remaining_length(src: &[u8]) -> Result<Option<(usize, usize)>, Violation> {
    let mut len = 0usize;
    for i in 1..=4 {
        let Some(&byte) = src.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, len)));
        }
    }
    Err(Violation::RemainingLength)
}

/// Decodes one exact, shape-checked frame with mqttrs. `catch_unwind` is a
/// backstop only: [`validate`] already rules out the inputs known to panic.
fn decode_frame(frame: &Bytes) -> Result<Packet, Violation> {
    let decoded = catch_unwind(AssertUnwindSafe(|| mqttrs::decode_slice(frame)));
    match decoded {
        Ok(Ok(Some(packet))) => owned(frame, packet),
        Ok(Err(e)) => Err(from_mqttrs(e)),
        Ok(Ok(None)) | Err(_) => Err(Violation::Malformed),
    }
}

fn from_mqttrs(e: mqttrs::Error) -> Violation {
    match e {
        mqttrs::Error::InvalidString(_) => Violation::InvalidUtf8,
        mqttrs::Error::InvalidPid => Violation::PacketIdZero,
        mqttrs::Error::InvalidProtocol(..) => Violation::ProtocolLevel,
        _ => Violation::Malformed,
    }
}

fn owned(frame: &Bytes, packet: mqttrs::Packet<'_>) -> Result<Packet, Violation> {
    use mqttrs::Packet as P;
    Ok(match packet {
        P::Connect(c) => Packet::Connect(Box::new(connect(c)?)),
        P::Publish(p) => Packet::Publish(publish(frame, p)?),
        P::Puback(pid) => Packet::Puback(Ack::ok(pid.get())),
        P::Pubrec(pid) => Packet::Pubrec(Ack::ok(pid.get())),
        P::Pubrel(pid) => Packet::Pubrel(Ack::ok(pid.get())),
        P::Pubcomp(pid) => Packet::Pubcomp(Ack::ok(pid.get())),
        P::Subscribe(s) => {
            let filters = s.topics.into_iter().map(|t| (t.topic_path, packet::options(qos(t.qos))));
            let filters: Vec<_> = filters.collect();
            for (filter, _) in &filters {
                topic::validate_filter(filter)?;
                topic::validate_shared(filter)?;
            }
            Packet::Subscribe(Box::new(Subscribe { pid: s.pid.get(), filters, id: None }))
        }
        P::Unsubscribe(u) => {
            for filter in &u.topics {
                topic::validate_filter(filter)?;
                topic::validate_shared(filter)?;
            }
            Packet::Unsubscribe(u.pid.get(), u.topics)
        }
        P::Pingreq => Packet::Pingreq,
        P::Disconnect => Packet::Disconnect(Box::default()),
        P::Connack(_) | P::Suback(_) | P::Unsuback(_) | P::Pingresp => {
            return Err(Violation::ServerOnlyPacket);
        }
    })
}

fn qos(q: mqttrs::QoS) -> QoS {
    match q {
        mqttrs::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttrs::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttrs::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Converts CONNECT; the will and password are copied because they live as
/// long as the connection, and a slice would pin the whole frame.
fn connect(c: mqttrs::Connect<'_>) -> Result<Connect, Violation> {
    topic::validate_string(c.client_id)?;
    if let Some(username) = c.username {
        topic::validate_string(username)?;
    }
    let will = match c.last_will {
        Some(w) => {
            topic::validate_name(w.topic)?;
            Some(Will {
                topic: w.topic.into(),
                payload: Bytes::copy_from_slice(w.message),
                qos: qos(w.qos),
                retain: w.retain,
                properties: None,
                delay: None,
            })
        }
        None => None,
    };
    Ok(Connect {
        protocol: match c.protocol {
            mqttrs::Protocol::MQTT311 => Protocol::V311,
            mqttrs::Protocol::MQIsdp => Protocol::V31,
        },
        keep_alive: c.keep_alive,
        client_id: c.client_id.to_owned(),
        clean_session: c.clean_session,
        will,
        username: c.username.map(str::to_owned),
        password: c.password.map(Bytes::copy_from_slice),
        properties: Properties::default(),
    })
}

/// Converts PUBLISH; the payload shares the frame's allocation.
fn publish(frame: &Bytes, p: mqttrs::Publish<'_>) -> Result<Publish, Violation> {
    topic::validate_name(p.topic_name)?;
    Ok(Publish {
        dup: p.dup,
        ..Publish::new(
            p.topic_name.into(),
            frame.slice_ref(p.payload),
            qos(p.qospid.qos()),
            p.qospid.pid().map(|pid| pid.get()),
            p.retain,
        )
    })
}

impl Encoder for MqttCodec {
    type Item<'a> = &'a Packet;
    type Error = Error;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), Error> {
        shrink(dst);
        encode_for(self.protocol.unwrap_or(Protocol::V311), packet, dst)
    }
}

/// Appends a server packet to `dst` in 3.1.1 (and 3.1) form.
pub fn encode(packet: &Packet, dst: &mut BytesMut) -> Result<(), Error> {
    encode_for(Protocol::V311, packet, dst)
}

/// Appends a server packet to `dst` in the form of `protocol`. What 3.1.1
/// cannot say is left out there: reason codes of acknowledgements and
/// UNSUBACK, properties; DISCONNECT and AUTH are not sent at all.
pub fn encode_for(protocol: Protocol, packet: &Packet, dst: &mut BytesMut) -> Result<(), Error> {
    encode_within(protocol, packet, usize::MAX, dst)
}

/// [`encode_for`] for a peer whose Maximum Packet Size is `max` (5.0): a
/// CONNACK, DISCONNECT or AUTH that would be larger loses its Reason String,
/// then its User Properties (MQTT-3.2.2-19/-20, MQTT-3.14.2-3/-4,
/// MQTT-3.15.2-2/-3), and is not sent if it still does not fit.
pub fn encode_within(protocol: Protocol, packet: &Packet, max: usize, dst: &mut BytesMut) -> Result<(), Error> {
    let v5 = protocol == Protocol::V5;
    match packet {
        Packet::Publish(p) => encode_publish_for(protocol, p, dst),
        Packet::Suback(pid, codes) if v5 => {
            encode_fixed(dst, 0x90, *pid, std::iter::once(0).chain(codes.iter().map(|c| c.0)).collect::<Vec<_>>())
        }
        Packet::Suback(pid, codes) => encode_fixed(dst, 0x90, *pid, codes.iter().map(suback)),
        Packet::Connack(c) if v5 => encode_v5(v5::Packet::Connack((**c).clone()), max, dst)?,
        Packet::Connack(c) => {
            encode_fixed(dst, 0x20, u16::from(c.session_present) << 8 | c.reason.to_connect_code() as u16, [])
        }
        Packet::Puback(a) => encode_ack(dst, 0x40, a, v5),
        Packet::Pubrec(a) => encode_ack(dst, 0x50, a, v5),
        Packet::Pubrel(a) => encode_ack(dst, 0x62, a, v5),
        Packet::Pubcomp(a) => encode_ack(dst, 0x70, a, v5),
        Packet::Unsuback(pid, codes) if v5 => {
            encode_fixed(dst, 0xb0, *pid, std::iter::once(0).chain(codes.iter().map(|c| c.0)).collect::<Vec<_>>())
        }
        Packet::Unsuback(pid, _) => encode_fixed(dst, 0xb0, *pid, []),
        Packet::Pingresp => dst.put_slice(&[0xd0, 0]),
        Packet::Disconnect(d) if v5 => encode_v5(v5::Packet::Disconnect((**d).clone()), max, dst)?,
        Packet::Auth(a) if v5 => encode_v5(v5::Packet::Auth((**a).clone()), max, dst)?,
        Packet::Disconnect(_) | Packet::Auth(_) => {}
        other => return Err(Error::Io(not_a_server_packet(other))),
    }
    Ok(())
}

/// Appends a whole PUBLISH, payload copied.
pub fn encode_publish_for(protocol: Protocol, p: &Publish, dst: &mut BytesMut) {
    dst.reserve(5 + publish_remaining_length_for(protocol, p));
    encode_publish_head_for(protocol, p, dst);
    dst.put_slice(&p.payload);
}

/// An acknowledgement: its shortest 5.0 form (no reason code for success)
/// is also its 3.1.1 form.
fn encode_ack(dst: &mut BytesMut, header: u8, ack: &Ack, v5: bool) {
    match v5 && ack.reason != ReasonCode::SUCCESS {
        true => encode_fixed(dst, header, ack.pid, [ack.reason.0]),
        false => encode_fixed(dst, header, ack.pid, []),
    }
}

fn encode_v5(packet: v5::Packet, max: usize, dst: &mut BytesMut) -> Result<(), Error> {
    match v5::encode_within(&packet, max, dst) {
        Ok(true) => Ok(()),
        Ok(false) => {
            log::debug!("{} not sent: larger than the client's Maximum Packet Size {max}", packet.name());
            Ok(())
        }
        Err(e) => Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))),
    }
}

fn not_a_server_packet(p: &Packet) -> std::io::Error {
    let msg = format!("{} is not sent by a server", p.name());
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// A SUBACK code in 3.1.1: the granted QoS, or 0x80 for every failure.
fn suback(code: &ReasonCode) -> u8 {
    match code.is_error() {
        true => 0x80,
        false => code.0,
    }
}

/// Encodes a fixed header, a two-byte field and trailing single bytes.
fn encode_fixed(
    dst: &mut BytesMut,
    header: u8,
    word: u16,
    rest: impl IntoIterator<Item = u8, IntoIter: ExactSizeIterator>,
) {
    dst.put_u8(header);
    let rest = rest.into_iter();
    put_remaining_length(dst, 2 + rest.len());
    dst.put_u16(word);
    rest.for_each(|b| dst.put_u8(b));
}

/// The wire size of a 3.1.1 PUBLISH's variable header and payload.
pub fn publish_remaining_length(p: &Publish) -> usize {
    publish_remaining_length_for(Protocol::V311, p)
}

/// The wire size of a PUBLISH's variable header and payload in `protocol`
/// (5.0: with its properties; a topic sent as an alias is empty).
pub fn publish_remaining_length_for(protocol: Protocol, p: &Publish) -> usize {
    let head = 2 + p.topic.len() + if p.pid.is_some() { 2 } else { 0 } + p.payload.len();
    match protocol {
        Protocol::V5 => head + v5::publish_properties_len(p),
        _ => head,
    }
}

/// Encodes everything of a 3.1.1 PUBLISH before its payload.
pub fn encode_publish_head(p: &Publish, dst: &mut BytesMut) {
    encode_publish_head_for(Protocol::V311, p, dst)
}

/// Encodes everything of a PUBLISH before its payload: fixed header, topic,
/// packet id (and 5.0's properties). The payload follows, copied or as a
/// shared chunk.
pub fn encode_publish_head_for(protocol: Protocol, p: &Publish, dst: &mut BytesMut) {
    let len = publish_remaining_length_for(protocol, p);
    dst.reserve(9 + p.topic.len());
    let header = 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain);
    dst.put_u8(header);
    put_remaining_length(dst, len);
    dst.put_u16(p.topic.len() as u16);
    dst.put_slice(p.topic.as_bytes());
    if let Some(pid) = p.pid {
        dst.put_u16(pid);
    }
    if protocol == Protocol::V5 {
        v5::write_publish_properties(p, dst);
    }
}

/// The whole size of a packet whose remaining length is `len`.
pub fn packet_len(len: usize) -> usize {
    let len_bytes = match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + len
}

fn put_remaining_length(dst: &mut BytesMut, mut len: usize) {
    debug_assert!(len <= MAX_REMAINING_LENGTH);
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            dst.put_u8(byte);
            return;
        }
        dst.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ConnectCode;

    fn decode(bytes: &[u8]) -> Result<Option<Packet>, Error> {
        MqttCodec::new(1 << 20).decode(&mut BytesMut::from(bytes))
    }

    fn violation(bytes: &[u8]) -> Violation {
        match decode(bytes) {
            Err(Error::Violation(v)) => v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn declared_length_over_the_limit_is_refused_before_buffering() {
        let mut codec = MqttCodec::new(1024);
        let mut src = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(codec.decode(&mut src), Err(Error::Violation(Violation::PacketTooLarge))));
        assert_eq!(violation(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), Violation::RemainingLength);
    }

    #[test]
    fn partial_frames_wait_and_keep_their_bytes() {
        let mut codec = MqttCodec::new(1024);
        let mut src = BytesMut::from(&[0x30, 0x05, 0x00, 0x01][..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert_eq!(src.len(), 4);
        src.extend_from_slice(&[b'a', b'h', b'i', 0xc0, 0x00]);
        let Some(Packet::Publish(p)) = codec.decode(&mut src).unwrap() else { panic!() };
        assert_eq!((&*p.topic, &p.payload[..]), ("a", &b"hi"[..]));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(Packet::Pingreq));
    }

    #[test]
    fn buffers_shrink_back_after_a_large_packet() {
        let mut codec = MqttCodec::new(1 << 20);
        let mut src = BytesMut::with_capacity(SHRINK_ABOVE * 4);
        src.extend_from_slice(&[0x30, 0x80, 0x80, 0x04, 0x00, 0x01, b'a']);
        src.resize(3 + 65536 + 1, b'x');
        assert!(matches!(codec.decode(&mut src), Ok(Some(Packet::Publish(_)))));
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert_eq!(src.capacity(), 0, "read buffer given back once empty");
        let mut dst = BytesMut::with_capacity(SHRINK_ABOVE * 4);
        codec.encode(&Packet::Pingresp, &mut dst).unwrap();
        assert!(dst.capacity() < SHRINK_ABOVE, "write buffer given back before the next packet");
    }

    #[test]
    fn acknowledgements_take_the_short_path_with_the_same_rules() {
        assert_eq!(decode(&[0x40, 2, 1, 2]).unwrap(), Some(Packet::Puback(Ack::ok(0x102))));
        assert_eq!(decode(&[0x62, 2, 0, 9]).unwrap(), Some(Packet::Pubrel(Ack::ok(9))));
        assert_eq!(violation(&[0x70, 2, 0, 0]), Violation::PacketIdZero);
        // MQTT-3.6.1-1: PUBREL's reserved flags must be 0010.
        assert!(matches!(decode(&[0x60, 2, 0, 9]), Err(Error::Violation(_))));
        assert_eq!(violation(&[0x40, 3, 0, 9, 0]), Violation::Malformed);
    }

    #[test]
    fn the_read_past_the_frame_case_is_malformed() {
        // mqttrs alone decodes `40 00 C0 00` as PUBACK 49152.
        assert_eq!(violation(&[0x40, 0x00, 0xc0, 0x00]), Violation::Malformed);
    }

    #[test]
    fn topic_rules() {
        assert_eq!(violation(&[0x30, 0x03, 0x00, 0x01, b'#']), Violation::WildcardInTopicName);
        assert_eq!(violation(&[0x30, 0x02, 0x00, 0x00]), Violation::EmptyTopic);
        assert_eq!(violation(&[0x30, 0x03, 0x00, 0x01, 0x00]), Violation::NullCharacter);
        assert_eq!(violation(&[0x30, 0x03, 0x00, 0x01, 0xff]), Violation::InvalidUtf8);
        let sub = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'+', 0x00];
        assert!(decode(&sub).unwrap().is_some());
        let bad = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'#', b'b', 0x00];
        assert_eq!(violation(&bad), Violation::MultiLevelWildcard);
    }

    #[test]
    fn connect_with_unsupported_level_asks_for_connack_1() {
        let connect = [0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 1, b'c'];
        assert_eq!(violation(&connect), Violation::ProtocolLevel);
    }

    /// The fixed-header rules are those of the protocol version the
    /// connection's CONNECT named: MQTT 3.1 sets DUP on a resent PUBREL or
    /// SUBSCRIBE, which 3.1.1 forbids (MQTT-2.2.2-2).
    #[test]
    fn header_rules_follow_the_connect_protocol_version() {
        let v31 = [0x10, 0x11, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 3, b'o', b'l', b'd'];
        let v311 = [0x10, 0x0f, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, b'n', b'e', b'w'];
        let dup_pubrel = [0x6a, 2, 0, 9];
        let dup_subscribe = [0x8a, 6, 0, 1, 0, 1, b'a', 1];
        let mut codec = MqttCodec::new(1024);
        let mut src = BytesMut::from(&v31[..]);
        src.extend_from_slice(&dup_pubrel);
        src.extend_from_slice(&dup_subscribe);
        assert!(matches!(codec.decode(&mut src), Ok(Some(Packet::Connect(_)))));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(Packet::Pubrel(Ack::ok(9))));
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Packet::Subscribe(Box::new(Subscribe {
                pid: 1,
                filters: vec![("a".into(), packet::options(QoS::AtLeastOnce))],
                id: None
            })))
        );
        let mut codec = MqttCodec::new(1024);
        let mut src = BytesMut::from(&v311[..]);
        src.extend_from_slice(&dup_pubrel);
        assert!(matches!(codec.decode(&mut src), Ok(Some(Packet::Connect(_)))));
        assert!(matches!(codec.decode(&mut src), Err(Error::Violation(Violation::HeaderFlags))));
        assert_eq!(violation(&dup_pubrel), Violation::HeaderFlags, "before CONNECT: 3.1.1 rules");
    }

    #[test]
    fn encodes_server_packets() {
        let mut dst = BytesMut::new();
        let mut codec = MqttCodec::new(1024);
        let connack = Packet::Connack(Box::new(crate::packet::Connack {
            session_present: true,
            reason: ReasonCode::from_connect_code(ConnectCode::Accepted),
            properties: Properties::default(),
        }));
        codec.encode(&connack, &mut dst).unwrap();
        let suback = Packet::Suback(7, vec![ReasonCode::granted(QoS::AtLeastOnce), ReasonCode::NOT_AUTHORIZED]);
        codec.encode(&suback, &mut dst).unwrap();
        let publish = Publish {
            dup: true,
            ..Publish::new("a/b".into(), Bytes::from_static(b"x"), QoS::AtLeastOnce, Some(9), false)
        };
        codec.encode(&Packet::Publish(publish), &mut dst).unwrap();
        let expected: &[u8] = &[
            0x20, 2, 1, 0, //
            0x90, 4, 0, 7, 1, 0x80, //
            0x3a, 8, 0, 3, b'a', b'/', b'b', 0, 9, b'x',
        ];
        assert_eq!(&dst[..], expected);
    }
}
