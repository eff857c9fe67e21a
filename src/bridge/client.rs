//! The bridge's client-side codec: encodes what a client sends (CONNECT,
//! SUBSCRIBE, PUBLISH, acknowledgements, PINGREQ, DISCONNECT) and decodes
//! what a server sends, into the broker's neutral [`Packet`]s, in MQTT
//! 3.1.1 or 5.0. A frame larger than the limit is refused from its declared
//! length, before its body is buffered.

use crate::codec;
use crate::packet::{Ack, Connack, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe};
use crate::{topic, v5};
use asynchronous_codec::{Decoder, Encoder};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use std::sync::Arc;

/// Client-side MQTT codec for one connection.
#[derive(Debug, Clone)]
pub struct ClientCodec {
    protocol: Protocol,
    /// Largest frame accepted from the server.
    max_packet_size: usize,
    /// A 3.1.1 CONNECT sets bit 7 of the protocol level (Mosquitto's
    /// `try_private`: "this is a bridge").
    try_private: bool,
}

impl ClientCodec {
    /// A codec speaking `protocol` (3.1.1 or 5.0).
    pub fn new(protocol: Protocol, max_packet_size: usize, try_private: bool) -> ClientCodec {
        ClientCodec { protocol, max_packet_size, try_private }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Decoder for ClientCodec {
    type Item = Packet;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Packet>> {
        if src.is_empty() {
            return Ok(None);
        }
        let total = match v5::frame_length(src, self.max_packet_size) {
            Ok(Some(total)) => total,
            Ok(None) => return Ok(None),
            Err(e) => return Err(invalid(format!("{} ({})", e.message, e.rule))),
        };
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = src.split_to(total).freeze();
        let header = frame[0];
        let body_at = total - frame_body_len(&frame);
        let body = frame.slice(body_at..);
        let packet = match self.protocol {
            Protocol::V5 => {
                from_v5(v5::decode(header, body).map_err(|e| invalid(format!("{} ({})", e.message, e.rule)))?)?
            }
            _ => decode_v311(header, body)?,
        };
        Ok(Some(packet))
    }
}

/// The body length of a whole frame (its remaining length).
fn frame_body_len(frame: &[u8]) -> usize {
    let mut len = 0usize;
    for (i, byte) in frame[1..].iter().take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            break;
        }
    }
    len
}

fn from_v5(packet: v5::Packet) -> io::Result<Packet> {
    use v5::Packet as P;
    Ok(match packet {
        P::Connack(c) => Packet::Connack(Box::new(c)),
        P::Publish(p) => Packet::Publish(publish_from_v5(p)?),
        P::Puback(a) => Packet::Puback(Ack { pid: a.pid, reason: a.reason }),
        P::Pubrec(a) => Packet::Pubrec(Ack { pid: a.pid, reason: a.reason }),
        P::Pubrel(a) => Packet::Pubrel(Ack { pid: a.pid, reason: a.reason }),
        P::Pubcomp(a) => Packet::Pubcomp(Ack { pid: a.pid, reason: a.reason }),
        P::Suback(s) => Packet::Suback(s.pid, s.reasons),
        P::Unsuback(u) => Packet::Unsuback(u.pid, u.reasons),
        P::Pingresp => Packet::Pingresp,
        P::Disconnect(d) => Packet::Disconnect(Box::new(d)),
        P::Auth(a) => Packet::Auth(Box::new(a)),
        other => return Err(invalid(format!("{} from a server", other.name()))),
    })
}

/// A server's 5.0 PUBLISH as a message to forward: its topic checked, its
/// properties kept, what is per delivery (alias, subscription ids) dropped.
fn publish_from_v5(p: v5::Publish) -> io::Result<Publish> {
    if p.topic.is_empty() {
        return Err(invalid("PUBLISH with a topic alias the bridge never allowed"));
    }
    topic::validate_name(&p.topic).map_err(|v| invalid(format!("PUBLISH topic: {v}")))?;
    Ok(Publish { topic_alias: None, ..codec::neutral_publish(p) })
}

/// A 3.1.1 server packet.
fn decode_v311(header: u8, mut body: Bytes) -> io::Result<Packet> {
    let pid = |body: &mut Bytes| -> io::Result<u16> {
        match body.len() >= 2 {
            true => Ok(body.get_u16()).and_then(|p| if p == 0 { Err(invalid("packet identifier 0")) } else { Ok(p) }),
            false => Err(invalid("packet too short")),
        }
    };
    let packet = match header {
        0x20 if body.len() == 2 => {
            let code = body[1];
            let reason = match code {
                0 => ReasonCode::SUCCESS,
                1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                3 => ReasonCode::SERVER_UNAVAILABLE,
                4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                5 => ReasonCode::NOT_AUTHORIZED,
                _ => return Err(invalid(format!("CONNACK return code {code}"))),
            };
            Packet::Connack(Box::new(Connack {
                session_present: body[0] & 1 == 1,
                reason,
                properties: Properties::default(),
            }))
        }
        h if h >> 4 == 3 => {
            let qos = QoS::from_u8((h >> 1) & 3).ok_or_else(|| invalid("PUBLISH QoS 3"))?;
            if body.len() < 2 {
                return Err(invalid("PUBLISH too short"));
            }
            let len = usize::from(body.get_u16());
            if body.len() < len {
                return Err(invalid("PUBLISH topic past the end"));
            }
            let name = body.split_to(len);
            let name = std::str::from_utf8(&name).map_err(|_| invalid("PUBLISH topic is not UTF-8"))?;
            topic::validate_name(name).map_err(|v| invalid(format!("PUBLISH topic: {v}")))?;
            let pid = match qos {
                QoS::AtMostOnce => None,
                _ => Some(pid(&mut body)?),
            };
            Packet::Publish(Publish { dup: h & 0x08 != 0, ..Publish::new(name.into(), body, qos, pid, h & 1 == 1) })
        }
        0x40 | 0x50 | 0x62 | 0x70 if body.len() == 2 => {
            let ack = Ack::ok(pid(&mut body)?);
            match header {
                0x40 => Packet::Puback(ack),
                0x50 => Packet::Pubrec(ack),
                0x62 => Packet::Pubrel(ack),
                _ => Packet::Pubcomp(ack),
            }
        }
        0x90 if body.len() >= 3 => {
            let pid = pid(&mut body)?;
            let codes = body.iter().map(|&c| ReasonCode(if c > 2 { 0x80 } else { c })).collect();
            Packet::Suback(pid, codes)
        }
        0xb0 if body.len() == 2 => Packet::Unsuback(pid(&mut body)?, Vec::new()),
        0xd0 if body.is_empty() => Packet::Pingresp,
        _ => return Err(invalid(format!("unexpected packet (fixed header 0x{header:02x}, {} bytes)", body.len()))),
    };
    Ok(packet)
}

impl Encoder for ClientCodec {
    type Item<'a> = &'a Packet;
    type Error = io::Error;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> io::Result<()> {
        let v5 = self.protocol == Protocol::V5;
        match packet {
            Packet::Connect(c) if v5 => encode_v5(v5::Packet::Connect(Box::new(connect_v5(c))), dst)?,
            Packet::Connect(c) => encode_connect_v311(c, self.try_private, dst),
            Packet::Subscribe(s) if v5 => encode_v5(
                v5::Packet::Subscribe(v5::Subscribe {
                    pid: s.pid,
                    subscription_id: s.id,
                    properties: Properties::default(),
                    filters: s.filters.iter().map(|(f, o)| (Arc::from(f.as_str()), *o)).collect(),
                }),
                dst,
            )?,
            Packet::Subscribe(s) => encode_subscribe_v311(s, dst),
            Packet::Publish(p) => codec::encode_publish_for(self.protocol, p, dst),
            Packet::Pingreq => dst.put_slice(&[0xc0, 0]),
            Packet::Disconnect(_) if !v5 => dst.put_slice(&[0xe0, 0]),
            Packet::Disconnect(d) => encode_v5(v5::Packet::Disconnect((**d).clone()), dst)?,
            other => codec::encode_for(self.protocol, other, dst).map_err(|e| io::Error::other(e.to_string()))?,
        }
        Ok(())
    }
}

fn encode_v5(packet: v5::Packet, dst: &mut BytesMut) -> io::Result<()> {
    v5::encode(&packet, dst).map_err(|e| io::Error::other(format!("{e:?}")))
}

fn connect_v5(c: &Connect) -> v5::Connect {
    v5::Connect {
        keep_alive: c.keep_alive,
        client_id: c.client_id.as_str().into(),
        clean_start: c.clean_session,
        properties: c.properties.clone(),
        will: c.will.as_ref().map(|w| v5::Will {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.clone().unwrap_or_else(Properties::empty),
        }),
        username: c.username.as_deref().map(Into::into),
        password: c.password.clone(),
    }
}

/// Writes a remaining length (at most four bytes).
fn put_length(dst: &mut BytesMut, mut len: usize) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        match len {
            0 => return dst.put_u8(byte),
            _ => dst.put_u8(byte | 0x80),
        }
    }
}

fn put_string(body: &mut BytesMut, s: &[u8]) {
    body.put_u16(s.len() as u16);
    body.put_slice(s);
}

fn encode_connect_v311(c: &Connect, try_private: bool, dst: &mut BytesMut) {
    let mut body = BytesMut::new();
    let (name, level): (&[u8], u8) = match c.protocol {
        Protocol::V31 => (b"MQIsdp", 3),
        _ => (b"MQTT", 4),
    };
    put_string(&mut body, name);
    body.put_u8(level | if try_private { 0x80 } else { 0 });
    let mut flags = u8::from(c.clean_session) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    body.put_u8(flags);
    body.put_u16(c.keep_alive);
    put_string(&mut body, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_string(&mut body, w.topic.as_bytes());
        put_string(&mut body, &w.payload);
    }
    if let Some(u) = &c.username {
        put_string(&mut body, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_string(&mut body, p);
    }
    dst.put_u8(0x10);
    put_length(dst, body.len());
    dst.put_slice(&body);
}

fn encode_subscribe_v311(s: &Subscribe, dst: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_u16(s.pid);
    for (filter, options) in &s.filters {
        put_string(&mut body, filter.as_bytes());
        body.put_u8(options.qos as u8);
    }
    dst.put_u8(0x82);
    put_length(dst, body.len());
    dst.put_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet;

    fn round_trip(protocol: Protocol, packet: &Packet) -> Packet {
        // What the client encodes, the broker's codec reads; what the
        // broker's codec writes, the client decodes.
        let mut bytes = BytesMut::new();
        ClientCodec::new(protocol, 1 << 20, false).encode(packet, &mut bytes).unwrap();
        let mut server = codec::MqttCodec::new(1 << 20);
        let connect = Packet::Connect(Box::new(Connect {
            protocol,
            keep_alive: 0,
            client_id: "c".into(),
            clean_session: true,
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        let mut first = BytesMut::new();
        ClientCodec::new(protocol, 1 << 20, false).encode(&connect, &mut first).unwrap();
        assert_eq!(server.decode(&mut first).unwrap().unwrap(), connect);
        server.decode(&mut bytes).unwrap().expect("one packet")
    }

    #[test]
    fn client_packets_read_back_through_the_brokers_codec() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let subscribe = Packet::Subscribe(Box::new(Subscribe {
                pid: 7,
                filters: vec![("a/#".into(), packet::options(QoS::ExactlyOnce))],
                id: None,
            }));
            assert_eq!(round_trip(protocol, &subscribe), subscribe);
            let publish =
                Packet::Publish(Publish::new("a/b".into(), Bytes::from_static(b"x"), QoS::AtLeastOnce, Some(3), true));
            assert_eq!(round_trip(protocol, &publish), publish);
            assert_eq!(round_trip(protocol, &Packet::Pubrel(Ack::ok(9))), Packet::Pubrel(Ack::ok(9)));
        }
    }

    #[test]
    fn server_packets_decode_in_both_versions() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let packets = [
                Packet::Connack(Box::new(Connack {
                    session_present: true,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                })),
                Packet::Suback(4, vec![ReasonCode(1), ReasonCode(0x80)]),
                Packet::Publish(Publish::new("t".into(), Bytes::from_static(b"p"), QoS::ExactlyOnce, Some(2), false)),
                Packet::Puback(Ack::ok(1)),
                Packet::Pubrec(Ack::ok(1)),
                Packet::Pubrel(Ack::ok(1)),
                Packet::Pubcomp(Ack::ok(1)),
                Packet::Pingresp,
            ];
            for packet in packets {
                let mut bytes = BytesMut::new();
                codec::encode_for(protocol, &packet, &mut bytes).unwrap();
                let decoded = ClientCodec::new(protocol, 1 << 20, false).decode(&mut bytes).unwrap().unwrap();
                assert_eq!(decoded, packet, "{protocol:?}");
                assert!(bytes.is_empty());
            }
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header() {
        let mut bytes = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
        assert!(ClientCodec::new(Protocol::V311, 1000, false).decode(&mut bytes).is_err());
    }

    #[test]
    fn try_private_sets_bit_7_of_the_level() {
        let connect = Connect {
            protocol: Protocol::V311,
            keep_alive: 60,
            client_id: "b".into(),
            clean_session: false,
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        let mut bytes = BytesMut::new();
        encode_connect_v311(&connect, true, &mut bytes);
        assert_eq!(bytes[8], 0x84);
    }
}
