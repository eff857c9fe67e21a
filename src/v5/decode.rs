//! The MQTT 5.0 decoder: a bounds-checked cursor walk over one exact frame
//! (the style of [`validate`](crate::validate)). It never indexes past the
//! frame, never reserves capacity from a length or count the peer declared,
//! and answers every rule it checks with the reason code the spec names.

use super::packet::*;
use super::property::{self, Place};
use super::reason::{ReasonCode, allowed};
use crate::packet::QoS;
use bytes::Bytes;
use std::{fmt, sync::Arc};

/// Why a packet could not be decoded: the reason code to answer with (in
/// CONNACK or DISCONNECT) and the rule broken, for the Reason String and
/// the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// 0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported
    /// Protocol Version, 0x94 Topic Alias invalid or 0x95 Packet too large.
    pub reason: ReasonCode,
    /// The spec statement (`MQTT-x.x.x-y`) or section (`x.x.x`) broken.
    pub rule: &'static str,
    /// What was wrong, in a few words.
    pub message: &'static str,
}

impl DecodeError {
    pub(crate) const fn new(reason: ReasonCode, rule: &'static str, message: &'static str) -> Self {
        DecodeError { reason, rule, message }
    }

    pub(crate) const fn malformed(rule: &'static str, message: &'static str) -> Self {
        Self::new(ReasonCode::MALFORMED_PACKET, rule, message)
    }

    pub(crate) const fn protocol(rule: &'static str, message: &'static str) -> Self {
        Self::new(ReasonCode::PROTOCOL_ERROR, rule, message)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] (reason code {})", self.message, self.rule, self.reason)
    }
}

impl std::error::Error for DecodeError {}

const TRUNCATED: DecodeError = DecodeError::malformed("MQTT-4.13.1-1", "field runs past the end of the packet");

/// A cursor over part of a frame that fails instead of reading past its end.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    fn rest(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest().is_empty()
    }

    fn remaining(&self) -> usize {
        self.rest().len()
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or(TRUNCATED)?;
        self.pos = end;
        self.buf.get(start..end).ok_or(TRUNCATED)
    }

    /// The next `n` bytes as a shared slice of the frame.
    fn slice(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// The next `n` bytes as a reader of their own, or `None` if fewer remain.
    pub(crate) fn sub(&mut self, n: usize) -> Option<Reader> {
        self.slice(n).ok().map(Reader::new)
    }

    /// Everything left, as a shared slice.
    fn tail(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.buf.len();
        self.buf.slice(start.min(self.pos)..)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        match *self.take(1)? {
            [b] => Ok(b),
            _ => Err(TRUNCATED),
        }
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        match *self.take(2)? {
            [a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(TRUNCATED),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        match *self.take(4)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([a, b, c, d])),
            _ => Err(TRUNCATED),
        }
    }

    /// A Variable Byte Integer (section 1.5.5).
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        let (value, len) = parse_vbi(self.rest())?.ok_or(TRUNCATED)?;
        self.pos += len;
        Ok(value)
    }

    /// Binary Data: a two-byte length and that many bytes (section 1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.slice(len.into())
    }

    /// A UTF-8 Encoded String: well-formed (no surrogates, MQTT-1.5.4-1) and
    /// without U+0000 (MQTT-1.5.4-2).
    pub(crate) fn string(&mut self) -> Result<Arc<str>, DecodeError> {
        let len = self.u16()?;
        let bytes = self.take(len.into())?;
        if bytes.contains(&0) {
            return Err(DecodeError::malformed("MQTT-1.5.4-2", "string contains U+0000"));
        }
        std::str::from_utf8(bytes)
            .map(Arc::from)
            .map_err(|_| DecodeError::malformed("MQTT-1.5.4-1", "string is not well-formed UTF-8"))
    }

    /// A non-zero Packet Identifier (MQTT-2.2.1-3).
    fn pid(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::protocol("MQTT-2.2.1-3", "packet identifier 0")),
            pid => Ok(pid),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.is_empty() {
            true => Ok(()),
            false => Err(DecodeError::malformed("MQTT-4.13.1-1", "bytes left over after the last field")),
        }
    }
}

/// Decodes one packet from its fixed-header byte and its body (everything
/// after the remaining length, exactly), in either direction. Payload and
/// binary fields are slices of `body`.
pub fn decode(header: u8, body: Bytes) -> Result<Packet, DecodeError> {
    let flags = header & 0x0f;
    let expected = match header >> 4 {
        3 => return publish(flags, body),
        6 | 8 | 10 => 0x02,
        0 => return Err(DecodeError::malformed("2.1.2", "reserved packet type 0")),
        _ => 0x00,
    };
    if flags != expected {
        return Err(DecodeError::malformed("MQTT-2.1.3-1", "wrong fixed-header flags"));
    }
    let mut r = Reader::new(body);
    let packet = match header >> 4 {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::Connack(connack(&mut r)?),
        4 => Packet::Puback(ack(&mut r, allowed::PUBACK)?),
        5 => Packet::Pubrec(ack(&mut r, allowed::PUBACK)?),
        6 => Packet::Pubrel(ack(&mut r, allowed::PUBREL)?),
        7 => Packet::Pubcomp(ack(&mut r, allowed::PUBREL)?),
        8 => Packet::Subscribe(subscribe(&mut r)?),
        9 => Packet::Suback(suback(&mut r)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r)?),
        11 => Packet::Unsuback(unsuback(&mut r)?),
        12 => Packet::Pingreq,
        13 => Packet::Pingresp,
        14 => {
            let (reason, properties) = reason_and_properties(&mut r, allowed::DISCONNECT, Place::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        _ => {
            let (reason, properties) = reason_and_properties(&mut r, allowed::AUTH, Place::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
    };
    r.end()?;
    Ok(packet)
}

/// [`decode`] for what a server receives: packets only a server sends are a
/// Protocol Error, and so is a Subscription Identifier in a PUBLISH
/// (MQTT-3.3.4-6).
pub fn decode_from_client(header: u8, body: Bytes) -> Result<Packet, DecodeError> {
    if matches!(header >> 4, 2 | 9 | 11 | 13) {
        return Err(DecodeError::protocol("2.1.2", "packet only a server may send"));
    }
    let packet = decode(header, body)?;
    if let Packet::Publish(p) = &packet
        && !p.subscription_ids.is_empty()
    {
        return Err(DecodeError::protocol("MQTT-3.3.4-6", "subscription identifier in a PUBLISH from a client"));
    }
    Ok(packet)
}

/// The length of the whole frame at the start of `src` (fixed header
/// included) once its remaining length has arrived, `None` while it has
/// not; a frame larger than `max_packet_size` is refused with 0x95 before
/// any byte of its body is needed.
pub fn frame_length(src: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    let Some((len, len_bytes)) = parse_vbi(src.get(1..).unwrap_or_default())? else { return Ok(None) };
    let total = 1 + len_bytes + len as usize;
    match total > max_packet_size {
        true => Err(DecodeError::new(
            ReasonCode::PACKET_TOO_LARGE,
            "3.2.2.3.6",
            "packet larger than the maximum packet size",
        )),
        false => Ok(Some(total)),
    }
}

/// A Variable Byte Integer at the start of `bytes` and its length, or
/// `None` if `bytes` ends first. At most four bytes, in the fewest bytes
/// that hold the value (section 1.5.5, MQTT-1.5.5-1).
fn parse_vbi(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&byte) = bytes.get(i) else { return Ok(None) };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(DecodeError::malformed("MQTT-1.5.5-1", "variable byte integer not in its fewest bytes"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::malformed("1.5.5", "variable byte integer longer than four bytes"))
}

/// Decodes one whole frame (fixed header, remaining length, body, nothing
/// more or less).
pub fn decode_frame(frame: Bytes) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(frame);
    let header = r.u8()?;
    let len = r.vbi()?;
    if len as usize != r.remaining() {
        return Err(DecodeError::malformed("2.1.4", "remaining length differs from the frame"));
    }
    decode(header, r.tail())
}

fn qos(value: u8) -> Option<QoS> {
    QoS::from_u8(value)
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    if &*r.string()? != "MQTT" {
        return Err(DecodeError::malformed("MQTT-3.1.2-1", "protocol name is not MQTT"));
    }
    if r.u8()? != 5 {
        return Err(DecodeError::new(
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            "MQTT-3.1.2-2",
            "protocol version is not 5",
        ));
    }
    let flags = r.u8()?;
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if flags & 0x01 != 0 {
        return Err(DecodeError::malformed("MQTT-3.1.2-3", "reserved CONNECT flag set"));
    }
    if !will && will_qos != 0 {
        return Err(DecodeError::malformed("MQTT-3.1.2-11", "will QoS set without the will flag"));
    }
    if !will && will_retain {
        return Err(DecodeError::malformed("MQTT-3.1.2-13", "will retain set without the will flag"));
    }
    let Some(will_qos) = qos(will_qos) else {
        return Err(DecodeError::malformed("MQTT-3.1.2-12", "will QoS 3"));
    };
    let keep_alive = r.u16()?;
    let properties = property::read(r, Place::Connect)?.properties;
    let client_id = r.string()?;
    let will = match will {
        true => {
            let properties = Arc::new(property::read(r, Place::Will)?.properties);
            let topic = r.string()?;
            let payload = r.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        }
        false => None,
    };
    let username = if flags & 0x80 != 0 { Some(r.string()?) } else { None };
    let password = if flags & 0x40 != 0 { Some(r.binary()?) } else { None };
    Ok(Connect { keep_alive, client_id, clean_start: flags & 0x02 != 0, properties, will, username, password })
}

fn connack(r: &mut Reader) -> Result<Connack, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::malformed("MQTT-3.2.2-1", "reserved CONNACK flags set"));
    }
    let reason = reason(r, allowed::CONNACK)?;
    let session_present = flags & 0x01 != 0;
    if session_present && reason.is_error() {
        return Err(DecodeError::protocol("MQTT-3.2.2-6", "session present with an error reason code"));
    }
    let properties = property::read(r, Place::Connack)?.properties;
    Ok(Connack { session_present, reason, properties })
}

fn publish(flags: u8, body: Bytes) -> Result<Packet, DecodeError> {
    let Some(qos) = qos((flags >> 1) & 0x03) else {
        return Err(DecodeError::malformed("MQTT-3.3.1-4", "PUBLISH with QoS 3"));
    };
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::malformed("MQTT-3.3.1-2", "DUP set on a QoS 0 PUBLISH"));
    }
    let mut r = Reader::new(body);
    let topic = r.string()?;
    let pid = match qos {
        QoS::AtMostOnce => None,
        _ => Some(r.pid()?),
    };
    // The common case, a PUBLISH without properties, shares one empty set.
    let decoded = match r.rest().first() {
        Some(0) => {
            r.u8()?;
            property::Decoded::default()
        }
        _ => property::read(&mut r, Place::Publish)?,
    };
    if topic.is_empty() && decoded.topic_alias.is_none() {
        return Err(DecodeError::protocol("3.3.2.1", "zero-length topic name without a topic alias"));
    }
    let properties = match decoded.properties.is_empty() {
        true => property::Properties::empty(),
        false => Arc::new(decoded.properties),
    };
    Ok(Packet::Publish(Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        pid,
        topic_alias: decoded.topic_alias,
        subscription_ids: decoded.subscription_ids,
        properties,
        payload: r.tail(),
    }))
}

/// A reason code that must be one of `allowed` (section 2.4).
fn reason(r: &mut Reader, allowed: &[u8]) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    match allowed.contains(&code) {
        true => Ok(ReasonCode(code)),
        false => Err(DecodeError::malformed("2.4", "reason code not allowed in this packet")),
    }
}

/// The optional reason code and properties of DISCONNECT and AUTH: an
/// empty body is 0x00 without properties (sections 3.14.2.1, 3.15.2.1), a
/// lone reason code has no properties (3.14.2.2.1).
fn reason_and_properties(
    r: &mut Reader,
    allowed: &[u8],
    place: Place,
) -> Result<(ReasonCode, property::Properties), DecodeError> {
    if r.is_empty() {
        return Ok((ReasonCode::SUCCESS, property::Properties::default()));
    }
    let reason = reason(r, allowed)?;
    let properties = match r.is_empty() {
        true => property::Properties::default(),
        false => property::read(r, place)?.properties,
    };
    Ok((reason, properties))
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: remaining length 2 is reason 0x00
/// without properties, 3 a reason code without properties (3.4.2.1, 3.4.2.2.1).
fn ack(r: &mut Reader, allowed: &[u8]) -> Result<Ack, DecodeError> {
    let pid = r.pid()?;
    let (reason, properties) = reason_and_properties(r, allowed, Place::Ack)?;
    Ok(Ack { pid, reason, properties })
}

fn subscribe(r: &mut Reader) -> Result<Subscribe, DecodeError> {
    let pid = r.pid()?;
    let decoded = property::read(r, Place::Subscribe)?;
    if r.is_empty() {
        return Err(DecodeError::protocol("MQTT-3.8.3-2", "SUBSCRIBE without topic filters"));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = r.u8()?;
        if options & 0xc0 != 0 {
            return Err(DecodeError::malformed("MQTT-3.8.3-5", "reserved subscription option bits set"));
        }
        let Some(qos) = qos(options & 0x03) else {
            return Err(DecodeError::protocol("3.8.3.1", "subscription with maximum QoS 3"));
        };
        let retain_handling = match (options >> 4) & 0x03 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            _ => return Err(DecodeError::protocol("3.8.3.1", "retain handling 3")),
        };
        let no_local = options & 0x04 != 0;
        if no_local && filter.starts_with("$share/") {
            return Err(DecodeError::protocol("MQTT-3.8.3-4", "no local on a shared subscription"));
        }
        let retain_as_published = options & 0x08 != 0;
        filters.push((filter, SubscriptionOptions { qos, no_local, retain_as_published, retain_handling }));
    }
    Ok(Subscribe {
        pid,
        subscription_id: decoded.subscription_ids.first().copied(),
        properties: decoded.properties,
        filters,
    })
}

/// The reason codes that fill the rest of a SUBACK or UNSUBACK, at least one.
fn reasons(r: &mut Reader, allowed: &[u8]) -> Result<Vec<ReasonCode>, DecodeError> {
    if r.is_empty() {
        return Err(DecodeError::protocol("3.9.3", "acknowledgement without reason codes"));
    }
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(reason(r, allowed)?);
    }
    Ok(out)
}

fn suback(r: &mut Reader) -> Result<Suback, DecodeError> {
    let pid = r.pid()?;
    let properties = property::read(r, Place::Ack)?.properties;
    Ok(Suback { pid, properties, reasons: reasons(r, allowed::SUBACK)? })
}

fn unsubscribe(r: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let pid = r.pid()?;
    let properties = property::read(r, Place::Unsubscribe)?.properties;
    if r.is_empty() {
        return Err(DecodeError::protocol("MQTT-3.10.3-2", "UNSUBSCRIBE without topic filters"));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    Ok(Unsubscribe { pid, properties, filters })
}

fn unsuback(r: &mut Reader) -> Result<Unsuback, DecodeError> {
    let pid = r.pid()?;
    let properties = property::read(r, Place::Ack)?.properties;
    Ok(Unsuback { pid, properties, reasons: reasons(r, allowed::UNSUBACK)? })
}
