//! Property tests of the codec (proptest, bounded: 256 cases per property).
//!
//! - Packets both directions share (PUBLISH at QoS 0/1/2, PUBACK, PUBREC,
//!   PUBREL, PUBCOMP) survive the codec's Encoder then its Decoder, whole,
//!   split at any point, and several in a row cut into arbitrary chunks.
//! - Arbitrary bytes never panic the decoder, and a small maximum packet size
//!   bounds what it keeps buffered while it waits for more.
//! - A frame that `validate` accepts never panics mqttrs (the codec's
//!   `catch_unwind` is only a backstop).
//! - SUBSCRIBE and UNSUBSCRIBE built here from arbitrary valid filters decode
//!   to the same filters and QoS.
//!
//! Client-only packets are encoded by the byte builders below, not by midge.

use asynchronous_codec::{Decoder, Encoder};
use bytes::{Bytes, BytesMut};
use midge::codec::MqttCodec;
use midge::error::{Error, Violation};
use midge::packet::{Packet, Publish, QoS};
use proptest::prelude::*;
use proptest::sample::Index;

/// Large enough for every packet generated here.
const MAX: usize = 1 << 20;

fn config() -> ProptestConfig {
    // No regression files: a failure prints its minimal input instead.
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- byte builders for client packets -------------------------------------

use crate::support::packets::{field, packet as frame};

fn subscribe_bytes(pid: u16, filters: &[(String, QoS)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(field(filter.as_bytes()));
        body.push(*qos as u8);
    }
    frame(0x82, &body)
}

fn unsubscribe_bytes(pid: u16, filters: &[String]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(field(filter.as_bytes()));
    }
    frame(0xa2, &body)
}

// ---- codec helpers ---------------------------------------------------------

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut codec = MqttCodec::new(MAX);
    let mut dst = BytesMut::new();
    for packet in packets {
        codec.encode(packet, &mut dst).expect("a packet the server sends");
    }
    dst.to_vec()
}

/// Decodes `bytes` whole: one packet, nothing left over.
fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, Error> {
    let mut src = BytesMut::from(bytes);
    let decoded = MqttCodec::new(MAX).decode(&mut src);
    if let Ok(Some(_)) = decoded {
        assert!(src.is_empty(), "{} bytes left after one packet", src.len());
    }
    decoded
}

/// Feeds `bytes` in two reads split at `at`: the first must wait and keep
/// every byte, the second yields the packet.
fn decode_split(bytes: &[u8], at: usize) -> Packet {
    let mut codec = MqttCodec::new(MAX);
    let mut src = BytesMut::from(&bytes[..at]);
    if at < bytes.len() {
        assert!(codec.decode(&mut src).expect("a prefix is not an error").is_none());
        assert_eq!(src.len(), at, "a partial frame keeps its bytes");
        src.extend_from_slice(&bytes[at..]);
    }
    let packet = codec.decode(&mut src).expect("a valid packet").expect("a whole packet");
    assert!(src.is_empty());
    packet
}

// ---- strategies ------------------------------------------------------------

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn pid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Valid topic names: non-empty, no `+`, `#` or U+0000, at most 200 bytes;
/// ASCII with many `/` and `$`, or any Unicode (up to 4 bytes a char).
fn topic_name() -> impl Strategy<Value = String> {
    let unicode = prop::collection::vec(any::<char>().prop_filter("name", |c| !matches!(c, '+' | '#' | '\0')), 1..=50)
        .prop_map(|chars| chars.into_iter().collect::<String>());
    prop_oneof!["[a-z0-9/$ ]{1,200}", unicode]
        .prop_filter("at most 200 bytes", |t: &String| !t.is_empty() && t.len() <= 200)
}

/// One level of a valid filter: `+`, or text without `+`, `#`, `/`, U+0000.
fn filter_level() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("+".to_string()),
        3 => "[a-z$ ]{0,6}",
        1 => "[^+#/\\x00]{0,4}",
    ]
}

/// Valid filters: levels joined by `/`, maybe `#` last, never empty.
fn filter() -> impl Strategy<Value = String> {
    (prop::collection::vec(filter_level(), 1..=6), any::<bool>(), any::<bool>())
        .prop_map(|(levels, hash, only_hash)| match (hash, only_hash) {
            (true, true) => "#".to_string(),
            (true, false) => format!("{}/#", levels.join("/")),
            (false, _) => levels.join("/"),
        })
        .prop_filter("non-empty", |f| !f.is_empty())
}

fn publish() -> impl Strategy<Value = Publish> {
    (qos(), pid(), any::<bool>(), any::<bool>(), topic_name(), prop::collection::vec(any::<u8>(), 0..=4096)).prop_map(
        |(qos, pid, dup, retain, topic, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !qos0, // DUP only with QoS > 0 (MQTT-3.3.1-2)
                qos,
                pid: (!qos0).then_some(pid),
                retain,
                topic: topic.into(),
                payload: Bytes::from(payload),
            }
        },
    )
}

/// Packets that travel both ways, so the server's encoder writes what its
/// decoder reads.
fn shared_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        4 => publish().prop_map(Packet::Publish),
        1 => pid().prop_map(Packet::Puback),
        1 => pid().prop_map(Packet::Pubrec),
        1 => pid().prop_map(Packet::Pubrel),
        1 => pid().prop_map(Packet::Pubcomp),
    ]
}

/// Every fixed header a client may send (PUBLISH with every legal flag
/// combination), for frames with random bodies.
fn client_header() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0x10u8),
        publish_header(),
        Just(0x40),
        Just(0x50),
        Just(0x62),
        Just(0x70),
        Just(0x82),
        Just(0xa2),
        Just(0xc0),
        Just(0xe0),
    ]
}

/// Bodies made of MQTT-shaped pieces (length-prefixed fields, some with a
/// wrong length, protocol names, single bytes), possibly cut short: random
/// bytes alone rarely get past the first length prefix.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..=8).prop_map(|b| field(&b)),
        1 => (0u16..=12, prop::collection::vec(any::<u8>(), 0..=8)).prop_map(|(len, b)| {
            let mut out = len.to_be_bytes().to_vec();
            out.extend(b);
            out
        }),
        3 => any::<u8>().prop_map(|b| vec![b]),
        1 => prop_oneof![Just(&b"\x00\x04MQTT\x04"[..]), Just(&b"\x00\x06MQIsdp\x03"[..])].prop_map(<[u8]>::to_vec),
    ];
    let shaped =
        (prop::collection::vec(piece, 0..=10), any::<Index>(), any::<bool>()).prop_map(|(pieces, cut, whole)| {
            let mut body = pieces.concat();
            if !whole {
                body.truncate(cut.index(body.len() + 1));
            }
            body
        });
    prop_oneof![shaped, prop::collection::vec(any::<u8>(), 0..=300)]
}

/// CONNECT bodies that start like a real one, so the flags and the fields
/// after them are reached.
fn connect_body() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), any::<u16>(), body()).prop_map(|(flags, keep_alive, rest)| {
        let mut out = b"\x00\x04MQTT\x04".to_vec();
        out.push(flags & !1);
        out.extend(keep_alive.to_be_bytes());
        out.extend(rest);
        out
    })
}

/// PUBLISH header with every legal flag combination.
fn publish_header() -> impl Strategy<Value = u8> {
    (0u8..16)
        .prop_filter("legal PUBLISH flags", |f| (f >> 1) & 3 != 3 && !(f & 8 != 0 && (f >> 1) & 3 == 0))
        .prop_map(|f| 0x30 | f)
}

/// PUBLISH bodies: a topic field, then a few bytes (a packet id, or part
/// of one).
fn publish_body() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u8>(), 0..=6), prop::collection::vec(any::<u8>(), 0..=4)).prop_map(|(topic, rest)| {
        let mut out = field(&topic);
        out.extend(rest);
        out
    })
}

/// A client header and a body for it.
fn client_frame() -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        (client_header(), body()),
        connect_body().prop_map(|b| (0x10u8, b)),
        (publish_header(), publish_body()),
        (prop::sample::select(vec![0x82u8, 0xa2]), any::<u16>(), body()).prop_map(|(h, pid, rest)| {
            let mut out = pid.to_be_bytes().to_vec();
            out.extend(rest);
            (h, out)
        }),
    ]
}

// ---- properties ------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Encode then decode gives the same packet, in one read or split in two.
    #[test]
    fn shared_packets_round_trip(packet in shared_packet(), split in any::<Index>()) {
        let bytes = encode(std::slice::from_ref(&packet));
        prop_assert_eq!(decode_one(&bytes).unwrap(), Some(packet.clone()));
        let at = split.index(bytes.len() + 1);
        prop_assert_eq!(decode_split(&bytes, at), packet);
    }

    /// Several packets back to back, arriving in arbitrary chunks, decode to
    /// the same sequence; between reads only an incomplete frame is kept.
    #[test]
    fn packet_streams_in_chunks(
        packets in prop::collection::vec(shared_packet(), 1..=6),
        cuts in prop::collection::vec(any::<Index>(), 0..=8),
    ) {
        let bytes = encode(&packets);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut codec = MqttCodec::new(MAX);
        let mut src = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            src.extend_from_slice(&bytes[fed..cut]);
            fed = cut;
            while let Some(packet) = codec.decode(&mut src).expect("valid packets") {
                decoded.push(packet);
            }
        }
        prop_assert!(src.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    /// Packet id 0 is refused on acknowledgements (MQTT-2.3.1-1).
    #[test]
    fn zero_packet_ids_are_refused(header in prop::sample::select(vec![0x40u8, 0x50, 0x62, 0x70])) {
        let decoded = decode_one(&[header, 2, 0, 0]);
        prop_assert!(matches!(decoded, Err(Error::Violation(Violation::PacketIdZero))), "{:?}", decoded);
    }

    /// Arbitrary bytes: the decoder returns (never panics), every packet it
    /// yields consumes bytes, and when it waits it keeps at most
    /// `max_packet_size + 5` bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..=512), max in prop_oneof![Just(64usize), Just(MAX)]) {
        let mut codec = MqttCodec::new(max);
        let mut src = BytesMut::from(&bytes[..]);
        loop {
            let before = src.len();
            match codec.decode(&mut src) {
                Ok(Some(_)) => prop_assert!(src.len() < before, "a packet consumed nothing"),
                Ok(None) => {
                    prop_assert!(src.len() <= max + 5, "{} bytes buffered with max {}", src.len(), max);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// The same with a valid fixed header and a body of the declared length,
    /// so the shape checks and mqttrs see every kind of client packet.
    #[test]
    fn random_bodies_never_panic((header, body) in client_frame()) {
        let bytes = frame(header, &body);
        match decode_one(&bytes) {
            Ok(Some(packet)) => {
                let server_only =
                    matches!(packet, Packet::Connack { .. } | Packet::Suback(..) | Packet::Unsuback(_) | Packet::Pingresp);
                prop_assert!(!server_only, "decoded a server packet: {:?}", packet);
            }
            Ok(None) => prop_assert!(false, "a whole frame is not waited for"),
            Err(_) => {}
        }
    }

    /// What `validate` accepts, mqttrs decodes without panicking (the codec's
    /// `catch_unwind` should never be needed).
    #[test]
    fn validated_frames_never_panic_mqttrs((header, body) in client_frame()) {
        if midge::validate::check(header, &body).is_ok() {
            let bytes = frame(header, &body);
            let decoded = std::panic::catch_unwind(|| mqttrs::decode_slice(&bytes).map(|p| p.is_some()));
            prop_assert!(decoded.is_ok(), "mqttrs panicked on {:02x?}", bytes);
        }
    }

    /// SUBSCRIBE from valid filters decodes to the same filters and QoS, whole
    /// or split.
    #[test]
    fn subscribe_round_trip(
        pid in pid(),
        filters in prop::collection::vec((filter(), qos()), 1..=8),
        split in any::<Index>(),
    ) {
        let bytes = subscribe_bytes(pid, &filters);
        let expected = Packet::Subscribe(pid, filters);
        prop_assert_eq!(decode_one(&bytes).unwrap(), Some(expected.clone()));
        prop_assert_eq!(decode_split(&bytes, split.index(bytes.len() + 1)), expected);
    }

    /// SUBSCRIBE with a requested QoS above 2 is refused (MQTT-3.8.3-4).
    #[test]
    fn subscribe_qos_3_is_refused(pid in pid(), filter in filter(), bad in 3u8..=255) {
        let mut bytes = subscribe_bytes(pid, &[(filter, QoS::AtMostOnce)]);
        *bytes.last_mut().unwrap() = bad;
        prop_assert!(decode_one(&bytes).is_err());
    }

    /// UNSUBSCRIBE from valid filters decodes to the same filters.
    #[test]
    fn unsubscribe_round_trip(pid in pid(), filters in prop::collection::vec(filter(), 1..=8)) {
        let bytes = unsubscribe_bytes(pid, &filters);
        prop_assert_eq!(decode_one(&bytes).unwrap(), Some(Packet::Unsubscribe(pid, filters)));
    }
}
