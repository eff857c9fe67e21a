//! Bounds-checked shape checks on one exact frame, run before mqttrs sees it.
//!
//! mqttrs 0.4.1 indexes its buffer unchecked (it panics on five truncated
//! shapes), ignores trailing bytes and accepts several things the spec
//! forbids. This walk proves every field fits the packet and is consumed
//! exactly, so that `mqttrs::decode_slice` only ever sees well-formed input.

use crate::error::Violation;
use crate::packet::Protocol;

/// Checks the packet type and fixed-header flags of a client packet by the
/// rules of its protocol version (MQTT 3.1.1's while no CONNECT has said
/// which), as soon as its first byte arrives. Returns the header with the
/// flags MQTT 3.1.1 gives that packet type, which is what the rest of the
/// decoder reads.
pub fn check_header_for(header: u8, protocol: Option<Protocol>) -> Result<u8, Violation> {
    match protocol {
        Some(Protocol::V31) => mqtt31_header(header),
        Some(Protocol::V311) | None => check_header(header).map(|()| header),
        // The 5.0 decoder checks its own fixed-header rules.
        Some(Protocol::V5) => Ok(header),
    }
}

/// MQTT 3.1's fixed-header rules: PUBREL, SUBSCRIBE and UNSUBSCRIBE use
/// QoS 1, and set DUP when they are sent again (a PUBREL resent after a
/// reconnect); the flags of CONNECT, PUBACK, PUBREC, PUBCOMP, PINGREQ and
/// DISCONNECT are "not used"; PUBLISH follows the same rules as in 3.1.1.
fn mqtt31_header(header: u8) -> Result<u8, Violation> {
    let (kind, flags) = (header >> 4, header & 0x0f);
    match kind {
        6 | 8 | 10 if flags & 0x06 == 0x02 => Ok(kind << 4 | 0x02),
        6 | 8 | 10 => Err(Violation::HeaderFlags),
        1 | 4 | 5 | 7 | 12 | 14 => Ok(kind << 4),
        _ => check_header(header).map(|()| header),
    }
}

/// Checks the packet type and fixed-header flags of a client packet by
/// MQTT 3.1.1's rules (MQTT-2.2.2-1/-2).
pub fn check_header(header: u8) -> Result<(), Violation> {
    let flags = header & 0x0f;
    let expected = match header >> 4 {
        3 => return publish_flags(flags),
        1 | 4 | 5 | 7 | 12 | 14 => 0,
        6 | 8 | 10 => 2,
        2 | 9 | 11 | 13 => return Err(Violation::ServerOnlyPacket),
        _ => return Err(Violation::ReservedPacketType),
    };
    match flags == expected {
        true => Ok(()),
        false => Err(Violation::HeaderFlags),
    }
}

/// Checks the field layout of a client packet whose header passed
/// [`check_header`]; `body` is everything after the fixed header.
pub fn check_body(header: u8, body: &[u8]) -> Result<(), Violation> {
    match header >> 4 {
        1 => connect(body),
        3 => publish(header & 0x0f, body),
        4..=7 => exact(body, 2),
        8 => subscribe(body),
        10 => unsubscribe(body),
        _ => exact(body, 0),
    }
}

/// Both checks at once.
pub fn check(header: u8, body: &[u8]) -> Result<(), Violation> {
    check_header(header).and_then(|()| check_body(header, body))
}

fn exact(body: &[u8], len: usize) -> Result<(), Violation> {
    match body.len() == len {
        true => Ok(()),
        false => Err(Violation::Malformed),
    }
}

/// A cursor over a packet body that fails instead of reading past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Violation> {
        if self.buf.len() < n {
            return Err(Violation::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Violation> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Violation> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A length-prefixed byte field.
    fn bytes(&mut self) -> Result<&'a [u8], Violation> {
        let len = self.u16()?;
        self.take(len.into())
    }

    /// A length-prefixed UTF-8 string (MQTT-1.5.3-1).
    fn string(&mut self) -> Result<&'a str, Violation> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Violation::InvalidUtf8)
    }

    fn pid(&mut self) -> Result<u16, Violation> {
        match self.u16()? {
            0 => Err(Violation::PacketIdZero),
            pid => Ok(pid),
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn end(&self) -> Result<(), Violation> {
        exact(self.buf, 0)
    }
}

fn connect(body: &[u8]) -> Result<(), Violation> {
    let mut r = Reader { buf: body };
    let name = r.string()?;
    let level = r.u8()?;
    match (name, level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        ("MQTT" | "MQIsdp", _) => return Err(Violation::ProtocolLevel),
        _ => return Err(Violation::ProtocolName),
    }
    let flags = r.u8()?;
    connect_flags(flags)?;
    r.u16()?; // keepalive
    r.string()?; // client id
    if flags & 0x04 != 0 {
        r.string()?; // will topic
        r.bytes()?; // will message
    }
    if flags & 0x80 != 0 {
        r.string()?; // user name
    }
    if flags & 0x40 != 0 {
        r.bytes()?; // password
    }
    r.end()
}

fn connect_flags(flags: u8) -> Result<(), Violation> {
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if flags & 0x01 != 0 {
        Err(Violation::ConnectReservedFlag)
    } else if !will && (will_qos != 0 || will_retain) {
        Err(Violation::WillFlagsWithoutWill)
    } else if will_qos == 3 {
        Err(Violation::WillQos)
    } else if flags & 0x40 != 0 && flags & 0x80 == 0 {
        Err(Violation::PasswordWithoutUsername)
    } else {
        Ok(())
    }
}

fn publish_flags(flags: u8) -> Result<(), Violation> {
    match ((flags >> 1) & 0x03, flags & 0x08 != 0) {
        (3, _) => Err(Violation::PublishQos),
        (0, true) => Err(Violation::DupOnQos0),
        _ => Ok(()),
    }
}

fn publish(flags: u8, body: &[u8]) -> Result<(), Violation> {
    let qos = (flags >> 1) & 0x03;
    let mut r = Reader { buf: body };
    r.string()?;
    if qos > 0 {
        r.pid()?;
    }
    Ok(())
}

fn subscribe(body: &[u8]) -> Result<(), Violation> {
    let mut r = Reader { buf: body };
    r.pid()?;
    if r.is_empty() {
        return Err(Violation::SubscribeEmpty);
    }
    while !r.is_empty() {
        r.string()?;
        if r.u8()? > 2 {
            return Err(Violation::SubscribeQos);
        }
    }
    Ok(())
}

fn unsubscribe(body: &[u8]) -> Result<(), Violation> {
    let mut r = Reader { buf: body };
    r.pid()?;
    if r.is_empty() {
        return Err(Violation::UnsubscribeEmpty);
    }
    while !r.is_empty() {
        r.string()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The five truncated shapes that panic mqttrs 0.4.1, and its read-past-end case.
    #[test]
    fn mqttrs_panic_shapes_are_rejected() {
        assert_eq!(check(0x40, &[]), Err(Violation::Malformed));
        assert_eq!(check(0x30, &[0x00]), Err(Violation::Malformed));
        assert_eq!(check(0x30, &[0x00, 0x05, b'a']), Err(Violation::Malformed));
        assert_eq!(check(0x32, &[0x00, 0x01, b'a']), Err(Violation::Malformed));
        assert_eq!(check(0x82, &[0, 1, 0, 1, b'a']), Err(Violation::Malformed));
        assert_eq!(check(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4]), Err(Violation::Malformed));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        assert_eq!(check(0x40, &[0, 1, 0]), Err(Violation::Malformed));
        assert_eq!(check(0xc0, &[0]), Err(Violation::Malformed));
    }

    #[test]
    fn connect_flag_rules() {
        assert_eq!(connect_flags(0x01), Err(Violation::ConnectReservedFlag));
        assert_eq!(connect_flags(0x08), Err(Violation::WillFlagsWithoutWill));
        assert_eq!(connect_flags(0x20), Err(Violation::WillFlagsWithoutWill));
        assert_eq!(connect_flags(0x1c), Err(Violation::WillQos));
        assert_eq!(connect_flags(0x40), Err(Violation::PasswordWithoutUsername));
        assert_eq!(connect_flags(0xc2), Ok(()));
    }

    /// MQTT 3.1 allows DUP on PUBREL, SUBSCRIBE and UNSUBSCRIBE and does
    /// not use the other packets' flags; 3.1.1 (and a connection that has
    /// not sent CONNECT yet) refuses both.
    #[test]
    fn header_rules_follow_the_protocol_version() {
        let v31 = Some(Protocol::V31);
        for (header, canonical) in [(0x6a, 0x62), (0x8a, 0x82), (0xaa, 0xa2), (0x63, 0x62), (0x41, 0x40), (0xe8, 0xe0)]
        {
            assert_eq!(check_header_for(header, v31), Ok(canonical), "{header:#x}");
            for v311 in [Some(Protocol::V311), None] {
                assert_eq!(check_header_for(header, v311), Err(Violation::HeaderFlags), "{header:#x}");
            }
        }
        assert_eq!(check_header_for(0x60, v31), Err(Violation::HeaderFlags));
        assert_eq!(check_header_for(0x8c, v31), Err(Violation::HeaderFlags));
        assert_eq!(check_header_for(0x38, v31), Err(Violation::DupOnQos0));
        assert_eq!(check_header_for(0x3d, v31), Ok(0x3d));
        assert_eq!(check_header_for(0x20, v31), Err(Violation::ServerOnlyPacket));
        assert_eq!(check_header_for(0xf0, v31), Err(Violation::ReservedPacketType));
    }

    #[test]
    fn packet_types() {
        assert_eq!(check(0x00, &[]), Err(Violation::ReservedPacketType));
        assert_eq!(check(0xf0, &[]), Err(Violation::ReservedPacketType));
        assert_eq!(check(0x20, &[0, 0]), Err(Violation::ServerOnlyPacket));
        assert_eq!(check(0x80, &[0, 1, 0, 1, b'a', 0]), Err(Violation::HeaderFlags));
        assert_eq!(check(0x36, &[0, 1, b'a', 0, 1]), Err(Violation::PublishQos));
        assert_eq!(check(0x38, &[0, 1, b'a']), Err(Violation::DupOnQos0));
        assert_eq!(check(0x82, &[0, 1]), Err(Violation::SubscribeEmpty));
        assert_eq!(check(0x82, &[0, 1, 0, 1, b'a', 3]), Err(Violation::SubscribeQos));
        assert_eq!(check(0xa2, &[0, 1]), Err(Violation::UnsubscribeEmpty));
        assert_eq!(check(0x82, &[0, 0, 0, 1, b'a', 0]), Err(Violation::PacketIdZero));
    }
}
