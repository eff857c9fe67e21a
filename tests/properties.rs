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
//! - The MQTT 5.0 codec (`midge::v5`, 128 cases a property): see `mod v5` below.
//!
//! Client-only packets are encoded by the byte builders below, not by midge.

use asynchronous_codec::{Decoder, Encoder};
use bytes::{Bytes, BytesMut};
use midge::codec::MqttCodec;
use midge::error::{Error, Violation};
use midge::packet::{Ack, Packet, Publish, QoS, Subscribe};
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
                ..Publish::new(topic.into(), Bytes::from(payload), qos, (!qos0).then_some(pid), retain)
            }
        },
    )
}

/// Packets that travel both ways, so the server's encoder writes what its
/// decoder reads.
fn shared_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        4 => publish().prop_map(Packet::Publish),
        1 => pid().prop_map(|pid| Packet::Puback(Ack::ok(pid))),
        1 => pid().prop_map(|pid| Packet::Pubrec(Ack::ok(pid))),
        1 => pid().prop_map(|pid| Packet::Pubrel(Ack::ok(pid))),
        1 => pid().prop_map(|pid| Packet::Pubcomp(Ack::ok(pid))),
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
                    matches!(packet, Packet::Connack(_) | Packet::Suback(..) | Packet::Unsuback(..) | Packet::Pingresp);
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
        let filters = filters.into_iter().map(|(f, q)| (f, midge::packet::options(q))).collect();
        let expected = Packet::Subscribe(Box::new(Subscribe { pid, filters, id: None }));
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

// ---- MQTT 5.0 (midge::v5, not yet wired into the connection) --------------

/// The 5.0 codec (128 cases a property): every packet kind, with the
/// properties the spec allows it, survives encode → decode; random bytes,
/// truncations and one-byte mutations of valid packets never panic, and
/// whatever still decodes encodes and decodes again to the same packet.
mod v5 {
    use bytes::{Bytes, BytesMut};
    use midge::packet::QoS;
    use midge::v5::*;
    use proptest::prelude::*;
    use proptest::sample::{Index, select};
    use std::sync::Arc;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn text() -> impl Strategy<Value = Arc<str>> {
        let unicode = prop::collection::vec(any::<char>().prop_filter("no U+0000", |c| *c != '\0'), 0..=8)
            .prop_map(|chars| chars.into_iter().collect::<String>());
        prop_oneof![3 => "[a-z/ ]{0,12}", 1 => unicode].prop_map(Arc::from)
    }

    fn binary() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..=16).prop_map(Bytes::from)
    }

    fn user() -> impl Strategy<Value = Vec<(Arc<str>, Arc<str>)>> {
        prop::collection::vec((text(), text()), 0..=3)
    }

    fn qos() -> impl Strategy<Value = QoS> {
        select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn opt<T: std::fmt::Debug + Clone + 'static>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
        prop::option::of(s)
    }

    /// A message's own properties (PUBLISH, will).
    fn message_properties() -> impl Strategy<Value = Properties> {
        (opt(any::<bool>()), opt(any::<u32>()), opt(text()), opt(text()), opt(binary()), user()).prop_map(
            |(payload_format_utf8, message_expiry, content_type, response_topic, correlation_data, user)| Properties {
                payload_format_utf8,
                message_expiry,
                content_type,
                response_topic,
                correlation_data,
                user,
                ..Properties::default()
            },
        )
    }

    /// Reason String and User Properties (acknowledgements).
    fn ack_properties() -> impl Strategy<Value = Properties> {
        (opt(text()), user()).prop_map(|(reason_string, user)| Properties {
            reason_string,
            user,
            ..Properties::default()
        })
    }

    /// Authentication Method and, only with one, Authentication Data.
    fn auth() -> impl Strategy<Value = (Option<Arc<str>>, Option<Bytes>)> {
        opt((text(), opt(binary()))).prop_map(|a| match a {
            Some((method, data)) => (Some(method), data),
            None => (None, None),
        })
    }

    fn connect_properties() -> impl Strategy<Value = Properties> {
        (
            opt(any::<u32>()),
            opt(1..=u16::MAX),
            opt(1..=u32::MAX),
            opt(any::<u16>()),
            opt(any::<bool>()),
            opt(any::<bool>()),
            auth(),
            user(),
        )
            .prop_map(
                |(
                    session_expiry,
                    receive_maximum,
                    maximum_packet_size,
                    topic_alias_maximum,
                    rri,
                    rpi,
                    (m, d),
                    user,
                )| {
                    Properties {
                        session_expiry,
                        receive_maximum,
                        maximum_packet_size,
                        topic_alias_maximum,
                        request_response_info: rri,
                        request_problem_info: rpi,
                        auth_method: m,
                        auth_data: d,
                        user,
                        ..Properties::default()
                    }
                },
            )
    }

    fn connack_properties() -> impl Strategy<Value = Properties> {
        let a = (
            opt(any::<u32>()),
            opt(1..=u16::MAX),
            opt(1..=u32::MAX),
            opt(any::<u16>()),
            opt(text()),
            opt(any::<u16>()),
        );
        let b = (
            opt(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(any::<bool>()),
            (opt(text()), opt(text()), opt(text())),
            auth(),
            ack_properties(),
        );
        (a, b).prop_map(|((se, rm, mps, tam, aci, ska), (mq, ra, wa, sia, sa, (ri, sr, _), (m, d), acks))| Properties {
            session_expiry: se,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            assigned_client_id: aci,
            server_keep_alive: ska,
            maximum_qos: mq,
            retain_available: ra,
            wildcard_available: wa,
            subscription_ids_available: sia,
            shared_available: sa,
            response_info: ri,
            server_reference: sr,
            auth_method: m,
            auth_data: d,
            ..acks
        })
    }

    fn shared(p: Properties) -> Arc<Properties> {
        match p.is_empty() {
            true => Properties::empty(),
            false => Arc::new(p),
        }
    }

    fn publish() -> impl Strategy<Value = Publish> {
        (
            (qos(), 1..=u16::MAX, any::<bool>(), any::<bool>()),
            text(),
            opt(1..=u16::MAX),
            prop::collection::vec(1..=268_435_455u32, 0..=2),
            message_properties(),
            prop::collection::vec(any::<u8>(), 0..=200),
        )
            .prop_map(|((qos, pid, dup, retain), topic, alias, subscription_ids, properties, payload)| {
                let qos0 = qos == QoS::AtMostOnce;
                Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    // An empty topic needs an alias (section 3.3.2.1).
                    topic: if topic.is_empty() && alias.is_none() { "t".into() } else { topic },
                    pid: (!qos0).then_some(pid),
                    topic_alias: alias,
                    subscription_ids,
                    properties: shared(properties),
                    payload: Bytes::from(payload),
                }
            })
    }

    fn reason(allowed: &[u8]) -> impl Strategy<Value = ReasonCode> + use<> {
        select(allowed.to_vec()).prop_map(ReasonCode)
    }

    fn ack(allowed: &[u8]) -> impl Strategy<Value = Ack> + use<> {
        (1..=u16::MAX, reason(allowed), ack_properties()).prop_map(|(pid, reason, properties)| Ack {
            pid,
            reason,
            properties,
        })
    }

    const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
    const PUBREL: &[u8] = &[0x00, 0x92];
    const SUBACK: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2];
    const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8f, 0x91];
    const DISCONNECT: &[u8] = &[0x00, 0x04, 0x80, 0x81, 0x82, 0x8b, 0x8e, 0x93, 0x94, 0x95, 0x9c, 0x9d, 0xa2];
    const CONNACK: &[u8] = &[0x00, 0x80, 0x81, 0x84, 0x85, 0x86, 0x87, 0x8a, 0x95, 0x9c];

    fn options() -> impl Strategy<Value = SubscriptionOptions> {
        let handling =
            select(vec![RetainHandling::OnSubscribe, RetainHandling::OnNewSubscription, RetainHandling::Never]);
        (qos(), any::<bool>(), any::<bool>(), handling).prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
    }

    fn filters() -> impl Strategy<Value = Vec<Arc<str>>> {
        prop::collection::vec("[a-z/+#]{1,10}".prop_map(Arc::from), 1..=4)
    }

    fn will() -> impl Strategy<Value = Will> {
        (text(), binary(), qos(), any::<bool>(), opt(any::<u32>()), message_properties()).prop_map(
            |(topic, payload, qos, retain, will_delay, properties)| Will {
                topic,
                payload,
                qos,
                retain,
                properties: Arc::new(Properties { will_delay, ..properties }),
            },
        )
    }

    fn connect() -> impl Strategy<Value = Connect> {
        (any::<u16>(), text(), any::<bool>(), connect_properties(), opt(will()), opt(text()), opt(binary())).prop_map(
            |(keep_alive, client_id, clean_start, properties, will, username, password)| Connect {
                keep_alive,
                client_id,
                clean_start,
                properties,
                will,
                username,
                password,
            },
        )
    }

    fn packet() -> impl Strategy<Value = Packet> {
        let disconnect_properties = (opt(any::<u32>()), opt(text()), ack_properties())
            .prop_map(|(session_expiry, server_reference, p)| Properties { session_expiry, server_reference, ..p });
        let auth_properties = (auth(), ack_properties()).prop_map(|((auth_method, auth_data), p)| Properties {
            auth_method,
            auth_data,
            ..p
        });
        prop_oneof![
            connect().prop_map(|c| Packet::Connect(Box::new(c))),
            (any::<bool>(), reason(CONNACK), connack_properties()).prop_map(|(sp, reason, properties)| {
                Packet::Connack(Connack { session_present: sp && !reason.is_error(), reason, properties })
            }),
            publish().prop_map(Packet::Publish),
            publish().prop_map(Packet::Publish),
            ack(PUBACK).prop_map(Packet::Puback),
            ack(PUBACK).prop_map(Packet::Pubrec),
            ack(PUBREL).prop_map(Packet::Pubrel),
            ack(PUBREL).prop_map(Packet::Pubcomp),
            (1..=u16::MAX, opt(1..=268_435_455u32), user(), filters(), prop::collection::vec(options(), 4)).prop_map(
                |(pid, subscription_id, user, filters, options)| Packet::Subscribe(Subscribe {
                    pid,
                    subscription_id,
                    properties: Properties { user, ..Properties::default() },
                    filters: filters.into_iter().zip(options).collect(),
                })
            ),
            (1..=u16::MAX, ack_properties(), prop::collection::vec(reason(SUBACK), 1..=4))
                .prop_map(|(pid, properties, reasons)| Packet::Suback(Suback { pid, properties, reasons })),
            (1..=u16::MAX, user(), filters()).prop_map(|(pid, user, filters)| Packet::Unsubscribe(Unsubscribe {
                pid,
                properties: Properties { user, ..Properties::default() },
                filters,
            })),
            (1..=u16::MAX, ack_properties(), prop::collection::vec(reason(UNSUBACK), 1..=4))
                .prop_map(|(pid, properties, reasons)| Packet::Unsuback(Unsuback { pid, properties, reasons })),
            Just(Packet::Pingreq),
            Just(Packet::Pingresp),
            (reason(DISCONNECT), disconnect_properties)
                .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties })),
            (reason(&[0x00, 0x18, 0x19]), auth_properties)
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties })),
        ]
    }

    fn encoded(packet: &Packet) -> Bytes {
        let mut buf = BytesMut::new();
        encode(packet, &mut buf).expect("generated packets fit");
        buf.freeze()
    }

    /// Whatever decodes encodes, and decodes again to the same packet.
    fn re_encodes(packet: &Packet) -> Result<(), TestCaseError> {
        let again = decode_frame(encoded(packet));
        prop_assert_eq!(again.as_ref(), Ok(packet));
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        /// encode → decode gives the same packet; `decode_from_client`
        /// accepts exactly what a client may send; the frame is exactly
        /// `encoded_len` bytes and `frame_length` reads its size from any
        /// prefix that holds the remaining length.
        #[test]
        fn v5_packets_round_trip(packet in packet(), cut in any::<Index>()) {
            let frame = encoded(&packet);
            prop_assert_eq!(frame.len(), encoded_len(&packet).unwrap());
            prop_assert_eq!(decode_frame(frame.clone()), Ok(packet.clone()));
            // What a client may send, a server accepts from one; the rest it refuses.
            let from_client = decode_from_client(frame[0], frame.slice(frame.len() - body_len(&frame)..));
            let client_may_send = match &packet {
                Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => false,
                Packet::Publish(p) => p.subscription_ids.is_empty(),
                _ => true,
            };
            prop_assert_eq!(from_client.is_ok(), client_may_send, "{:?}", from_client);
            let prefix = &frame[..cut.index(frame.len() + 1)];
            match frame_length(prefix, usize::MAX).unwrap() {
                Some(total) => prop_assert_eq!(total, frame.len()),
                None => prop_assert!(prefix.len() < 5),
            }
        }

        /// A frame cut short is always an error, never a panic; its body
        /// cut short decodes to an error or to a packet that re-encodes.
        #[test]
        fn v5_truncations_never_panic(packet in packet(), cut in any::<Index>()) {
            let frame = encoded(&packet);
            let at = cut.index(frame.len());
            prop_assert!(decode_frame(frame.slice(..at)).is_err());
            let body_at = frame.len() - body_len(&frame);
            if at >= body_at
                && let Ok(p) = decode(frame[0], frame.slice(body_at..at))
            {
                re_encodes(&p)?;
            }
        }

        /// Every one-byte change of a valid packet: no panic, and what
        /// decodes re-encodes.
        #[test]
        fn v5_one_byte_mutations_never_panic(packet in packet(), at in any::<Index>(), byte in any::<u8>()) {
            let mut frame = encoded(&packet).to_vec();
            let i = at.index(frame.len());
            frame[i] = byte;
            if let Ok(p) = decode_frame(Bytes::from(frame.clone())) {
                re_encodes(&p)?;
            }
            if let Some(&header) = frame.first() {
                let body_at = frame.len() - body_len(&encoded(&packet));
                let _ = decode_from_client(header, Bytes::from(frame).slice(body_at..));
            }
        }

        /// Random bytes as a frame, and as a body behind every header byte.
        #[test]
        fn v5_random_bytes_never_panic(header in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..=300)) {
            let body = Bytes::from(body);
            if let Ok(p) = decode(header, body.clone()) {
                re_encodes(&p)?;
            }
            let _ = decode_from_client(header, body.clone());
            let _ = frame_length(&body, 1 << 20);
            if let Ok(p) = decode_frame(body) {
                re_encodes(&p)?;
            }
        }
    }

    /// The fuzz target's seeds (fuzz/corpus/codec5/seed-*) are valid
    /// frames back to back, so the fuzzer starts from packets that decode.
    #[test]
    fn v5_fuzz_seeds_decode() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/codec5");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // The fuzzer's own finds share the folder; only seeds are tracked.
            if !path.file_name().unwrap().to_string_lossy().starts_with("seed-") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let mut src = &data[..];
            while !src.is_empty() {
                let total = frame_length(src, 4096).unwrap().expect("a whole frame");
                let (frame, rest) = src.split_at(total);
                let packet = decode_frame(Bytes::copy_from_slice(frame));
                assert!(packet.is_ok(), "{}: {packet:?}", path.display());
                src = rest;
            }
            seeds += 1;
        }
        assert!(seeds >= 20, "{seeds} seeds");
    }

    /// The body length of a whole frame (what its remaining length says).
    fn body_len(frame: &[u8]) -> usize {
        let total = frame_length(frame, usize::MAX).unwrap().unwrap();
        assert_eq!(total, frame.len());
        let mut header_len = 2;
        while frame[header_len - 1] & 0x80 != 0 {
            header_len += 1;
        }
        total - header_len
    }
}
