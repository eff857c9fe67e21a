//! The loadgen's MQTT 5.0 packets checked against midge's own codec
//! (`midge::v5`): what the loadgen writes decodes as the packet it means,
//! and what a 5.0 broker may send (properties, reason codes, topic aliases)
//! is read right. Every test runs at protocol level 5 with topic aliases on:
//! the setting is process-wide, as in a run.

use super::*;
use bytes::{Bytes, BytesMut};
use midge::packet::QoS;
use midge::v5::{self, Packet, Properties, ReasonCode};
use std::sync::Arc;

fn level5() {
    use_protocol(5, true);
}

/// Decodes one frame the loadgen wrote as the server would.
fn from_client(frame: &[u8]) -> Packet {
    let total = v5::frame_length(frame, usize::MAX).unwrap().expect("a whole frame");
    assert_eq!(total, frame.len(), "remaining length covers the frame exactly");
    let (_, n) = read_vbi(&frame[1..], "test").unwrap();
    v5::decode_from_client(frame[0], Bytes::copy_from_slice(&frame[1 + n..])).unwrap()
}

/// Encodes what a broker sends: (first byte, body).
fn from_server(packet: &Packet) -> (u8, Vec<u8>) {
    let mut buf = BytesMut::new();
    v5::encode(packet, &mut buf).unwrap();
    let (_, n) = read_vbi(&buf[1..], "test").unwrap();
    (buf[0], buf[1 + n..].to_vec())
}

fn delivery(topic: &str, alias: Option<u16>, pid: Option<u16>, properties: Properties) -> Packet {
    Packet::Publish(v5::Publish {
        dup: false,
        qos: if pid.is_some() { QoS::AtLeastOnce } else { QoS::AtMostOnce },
        retain: false,
        topic: topic.into(),
        pid,
        topic_alias: alias,
        subscription_ids: vec![7, 300],
        properties: Arc::new(properties),
        payload: Bytes::from_static(b"payload"),
    })
}

#[test]
fn connect_is_level_5_with_session_expiry_and_topic_alias_maximum() {
    level5();
    for persistent in [false, true] {
        let mut buf = Vec::new();
        connect(&mut buf, "lg1", 600, persistent);
        let Packet::Connect(c) = from_client(&buf) else { panic!("not a CONNECT") };
        assert_eq!((c.client_id.as_ref(), c.keep_alive, c.clean_start), ("lg1", 600, !persistent));
        assert_eq!(c.properties.topic_alias_maximum, Some(ALIASES_IN));
        assert_eq!(c.properties.session_expiry, persistent.then_some(u32::MAX));
        assert_eq!(c.properties.receive_maximum, None);
    }
}

#[test]
fn publish_sends_the_topic_once_then_the_alias_alone() {
    level5();
    let mut aliases = OutAliases::new(&Limits { topic_alias_max: 10, ..Limits::default() });
    let sent: Vec<_> = (0..3).map(|_| aliases.topic(0, b"bench/fanin/3")).collect();
    assert_eq!(sent[0], Topic { name: b"bench/fanin/3", alias: 1 });
    assert_eq!(sent[1..], [Topic { name: b"", alias: 1 }; 2]);
    for (i, t) in sent.into_iter().enumerate() {
        let mut buf = Vec::new();
        publish(&mut buf, t, 1, false, 40 + i as u16, 5, |b| b.extend_from_slice(b"hello"));
        let Packet::Publish(p) = from_client(&buf) else { panic!("not a PUBLISH") };
        assert_eq!((p.topic.as_bytes(), p.topic_alias, p.pid), (t.name, Some(1), Some(40 + i as u16)));
        assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"hello"[..]));
        assert!(p.properties.is_empty());
    }
    // Without an alias (QoS 0): an empty property section.
    let mut buf = Vec::new();
    publish(&mut buf, Topic::name(b"t"), 0, true, 0, 0, |_| {});
    let Packet::Publish(p) = from_client(&buf) else { panic!("not a PUBLISH") };
    assert_eq!((p.topic.as_ref(), p.topic_alias, p.retain, p.payload.len()), ("t", None, true, 0));
}

#[test]
fn more_topics_than_aliases_reuse_them_with_the_topic_again() {
    let mut aliases = OutAliases { slots: vec![0; 2] };
    let got: Vec<(bool, u16)> =
        [0, 1, 0, 2, 0, 1].iter().map(|&k| aliases.topic(k, b"t")).map(|t| (t.name.is_empty(), t.alias)).collect();
    // Keys 0 and 2 share alias 1: each change of key sends the topic again.
    assert_eq!(got, [(false, 1), (false, 2), (true, 1), (false, 1), (false, 1), (true, 2)]);
    // A broker with Topic Alias Maximum 0 gets no alias at all.
    let mut none = OutAliases::new(&Limits::default());
    assert_eq!(none.topic(0, b"t"), Topic::name(b"t"));
}

#[test]
fn subscribe_has_a_property_length_and_an_options_byte_per_filter() {
    level5();
    let mut buf = Vec::new();
    subscribe(&mut buf, 9, [&b"a/#"[..], b"b"].into_iter(), 1);
    let Packet::Subscribe(s) = from_client(&buf) else { panic!("not a SUBSCRIBE") };
    assert_eq!((s.pid, s.subscription_id), (9, None));
    let filters: Vec<_> = s.filters.iter().map(|(f, o)| (f.as_ref(), o.to_byte())).collect();
    assert_eq!(filters, [("a/#", 1), ("b", 1)]);
}

#[test]
fn acks_and_disconnect_are_what_a_5_0_server_reads() {
    level5();
    let mut buf = Vec::new();
    puback(&mut buf, 77);
    assert_eq!(from_client(&buf), Packet::Puback(v5::Ack::success(77)));
    buf.clear();
    disconnect(&mut buf);
    let Packet::Disconnect(d) = from_client(&buf) else { panic!("not a DISCONNECT") };
    assert_eq!(d.reason, ReasonCode::NORMAL_DISCONNECTION);
}

#[test]
fn deliveries_with_properties_and_aliases_are_resolved() {
    level5();
    let props = Properties {
        message_expiry: Some(60),
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        ..Properties::default()
    };
    let mut aliases = Aliases::new();
    let (first, body) = from_server(&delivery("bench/a", Some(3), Some(5), props));
    let p = parse_publish(first, &body, &mut aliases).unwrap();
    assert_eq!((p.topic, p.payload, p.pid, p.qos), (&b"bench/a"[..], &b"payload"[..], 5, 1));
    let (first, body) = from_server(&delivery("", Some(3), None, Properties::default()));
    let p = parse_publish(first, &body, &mut aliases).unwrap();
    assert_eq!((p.topic, p.payload, p.qos), (&b"bench/a"[..], &b"payload"[..], 0));
    // The alias stands for a new topic once the broker names one with it.
    let (first, body) = from_server(&delivery("bench/b", Some(3), None, Properties::default()));
    assert_eq!(parse_publish(first, &body, &mut aliases).unwrap().topic, b"bench/b");
    assert_eq!(aliases.aliased, 1);
    aliases.count();
    assert_eq!(aliases.aliased, 0);
    assert!(aliased_in() >= 1);
}

#[test]
fn a_broker_misusing_topic_aliases_is_an_error() {
    level5();
    let mut aliases = Aliases::new();
    for (topic, alias, says) in [
        ("", Some(4), "unknown topic alias 4"),
        ("x", Some(ALIASES_IN + 1), "above the Topic Alias Maximum"),
        ("", None, "empty topic, no alias"),
    ] {
        let (first, body) = from_server(&delivery(topic, alias, None, Properties::default()));
        let e = parse_publish(first, &body, &mut aliases).err().expect("refused");
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn connack_limits_and_refusals() {
    level5();
    let ok = Packet::Connack(v5::Connack {
        session_present: true,
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            maximum_packet_size: Some(1 << 20),
            maximum_qos: Some(QoS::AtLeastOnce),
            assigned_client_id: Some("id".into()),
            user: vec![("a".into(), "b".into())],
            ..Properties::default()
        },
    });
    let (present, limits) = parse_connack(&from_server(&ok).1).unwrap();
    assert!(present);
    assert_eq!(limits, Limits { receive_max: 20, topic_alias_max: 10, max_packet_size: 1 << 20, max_qos: 1 });
    let refused = Packet::Connack(v5::Connack {
        session_present: false,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: Properties { reason_string: Some("no".into()), ..Properties::default() },
    });
    let e = parse_connack(&from_server(&refused).1).unwrap_err();
    assert_eq!(
        (e.kind(), e.to_string()),
        (ErrorKind::ConnectionRefused, "CONNACK reason code 0x87 (not authorized): no".into())
    );
    // What a broker without 5.0 answers.
    assert!(parse_connack(&[0, 1]).unwrap_err().to_string().contains("no MQTT 5.0?"));
}

#[test]
fn suback_and_puback_reason_codes() {
    level5();
    let suback = |reasons: Vec<ReasonCode>| {
        from_server(&Packet::Suback(v5::Suback {
            pid: 1,
            properties: Properties { reason_string: Some("why".into()), ..Properties::default() },
            reasons,
        }))
        .1
    };
    check_suback(&suback(vec![ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_1])).unwrap();
    let e = check_suback(&suback(vec![ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID])).unwrap_err();
    assert_eq!(e.to_string(), "subscription refused (SUBACK 0x8F (topic filter invalid): why)");
    let puback = |reason| {
        let properties = Properties { reason_string: Some("r".into()), ..Properties::default() };
        from_server(&Packet::Puback(v5::Ack { pid: 300, reason, properties })).1
    };
    assert_eq!(parse_puback(&puback(ReasonCode::NO_MATCHING_SUBSCRIBERS)).unwrap(), (300, true));
    assert_eq!(parse_puback(&puback(ReasonCode::QUOTA_EXCEEDED)).unwrap(), (300, false));
    assert_eq!(parse_puback(&from_server(&Packet::Puback(v5::Ack::success(2))).1).unwrap(), (2, true));
}

#[test]
fn a_disconnect_from_the_broker_names_its_reason() {
    let d = Packet::Disconnect(v5::Disconnect {
        reason: ReasonCode::SESSION_TAKEN_OVER,
        properties: Properties { reason_string: Some("taken over".into()), ..Properties::default() },
    });
    let e = disconnect_error(&from_server(&d).1);
    assert_eq!(e.to_string(), "broker sent DISCONNECT 0x8E (session taken over): taken over");
    assert_eq!(disconnect_error(&[]).to_string(), "broker sent DISCONNECT 0x00 (success)");
}

#[test]
fn malformed_properties_are_errors() {
    let walk = |b: &[u8]| properties(b, "PUBLISH", |_, _| {}).map(|rest| rest.len());
    assert_eq!(walk(&[3, 0x23, 0, 1, 9]).unwrap(), 1);
    assert!(walk(&[3, 0x23, 0]).is_err(), "property length past the packet");
    assert!(walk(&[2, 0x23, 0]).is_err(), "value past the property length");
    assert!(walk(&[1, 0x7f]).unwrap_err().to_string().contains("unknown property 0x7f"));
    assert!(walk(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err(), "five-byte variable byte integer");
    assert!(walk(&[5, 0x26, 0, 1, b'k', 0]).is_err(), "user property without its value");
}
