//! Bad input, case by case, named by the rule each breaks.

use super::*;
use crate::packet::QoS;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

fn decode_body(header: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    decode(header, Bytes::copy_from_slice(body))
}

fn err(header: u8, body: &[u8]) -> DecodeError {
    decode_body(header, body).expect_err("must be refused")
}

/// A length-prefixed field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A variable byte integer, as the encoder writes it.
fn vbi(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::Sink::vbi(&mut out, n as u32);
    out.to_vec()
}

/// A property section: its length (one byte here) and `items`.
fn props(items: &[u8]) -> Vec<u8> {
    assert!(items.len() < 128);
    let mut out = vec![items.len() as u8];
    out.extend_from_slice(items);
    out
}

/// A QoS 0 PUBLISH body to topic `t` with these properties and payload `hi`.
fn publish_body(items: &[u8]) -> Vec<u8> {
    let mut out = field(b"t");
    out.extend(props(items));
    out.extend_from_slice(b"hi");
    out
}

/// A PUBACK body for packet id 1 with reason 0 and these properties.
fn puback_body(items: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 1, 0];
    out.extend(props(items));
    out
}

fn connect_body(flags: u8, items: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = field(b"MQTT");
    out.extend([5, flags, 0, 60]);
    out.extend(props(items));
    out.extend(field(b"client"));
    out.extend_from_slice(rest);
    out
}

fn assert_reason(e: DecodeError, reason: ReasonCode, rule: &str) {
    assert_eq!((e.reason, e.rule), (reason, rule), "{e}");
}

fn round_trip(packet: &Packet) -> Packet {
    let mut buf = BytesMut::new();
    encode(packet, &mut buf).unwrap();
    assert_eq!(buf.len(), encoded_len(packet).unwrap());
    let again = decode_frame(buf.freeze()).unwrap();
    assert_eq!(&again, packet);
    again
}

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;

#[test]
fn section_1_5_5_five_byte_variable_byte_integer_is_malformed() {
    let mut body = field(b"t");
    body.extend([0x80, 0x80, 0x80, 0x80, 0x01]);
    assert_reason(err(0x30, &body), MALFORMED, "1.5.5");
    // In a Subscription Identifier too.
    assert_reason(err(0x30, &publish_body(&[0x0b, 0xff, 0xff, 0xff, 0xff, 0x01])), MALFORMED, "1.5.5");
}

#[test]
fn mqtt_1_5_5_1_variable_byte_integer_in_more_bytes_than_needed_is_malformed() {
    assert_reason(err(0x30, &publish_body(&[0x0b, 0x81, 0x00])), MALFORMED, "MQTT-1.5.5-1");
}

#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_is_malformed() {
    // A UTF-16 surrogate (U+D800) encoded as UTF-8, and a lone continuation byte.
    for bad in [&[0xed, 0xa0, 0x80][..], &[0x80]] {
        assert_reason(err(0x30, &field(bad)), MALFORMED, "MQTT-1.5.4-1");
        let mut user = vec![0x26];
        user.extend(field(bad));
        user.extend(field(b"v"));
        assert_reason(err(0x30, &publish_body(&user)), MALFORMED, "MQTT-1.5.4-1");
    }
}

#[test]
fn mqtt_1_5_4_2_null_character_is_malformed() {
    assert_reason(err(0x30, &field(b"a\0b")), MALFORMED, "MQTT-1.5.4-2");
    let mut content_type = vec![0x03];
    content_type.extend(field(b"\0"));
    assert_reason(err(0x30, &publish_body(&content_type)), MALFORMED, "MQTT-1.5.4-2");
}

#[test]
fn section_2_2_2_2_property_twice_where_once_is_allowed_is_protocol_error() {
    assert_reason(err(0x30, &publish_body(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2])), PROTOCOL, "2.2.2.2");
    assert_reason(err(0x40, &puback_body(&[0x1f, 0, 1, b'a', 0x1f, 0, 1, b'b'])), PROTOCOL, "2.2.2.2");
    // Subscription Identifier: once in SUBSCRIBE, repeatable in PUBLISH.
    let mut sub = vec![0, 1];
    sub.extend(props(&[0x0b, 1, 0x0b, 2]));
    sub.extend(field(b"a"));
    sub.push(0);
    assert_reason(err(0x82, &sub), PROTOCOL, "2.2.2.2");
    let Packet::Publish(p) = decode_body(0x30, &publish_body(&[0x0b, 1, 0x0b, 2])).unwrap() else { panic!() };
    assert_eq!(p.subscription_ids, [1, 2]);
}

#[test]
fn section_2_2_2_2_unknown_property_identifier_is_malformed() {
    for id in [0x00, 0x04, 0x2b, 0x7f, 0x80, 0xff] {
        assert_reason(err(0x30, &publish_body(&[id, 0])), MALFORMED, "2.2.2.2");
    }
}

#[test]
fn section_2_2_2_2_property_not_allowed_in_the_packet_is_malformed() {
    // Session Expiry in PUBLISH, Topic Alias in PUBACK, Reason String in
    // CONNECT, Will Delay in CONNECT itself (it belongs to the will).
    assert_eq!(err(0x30, &publish_body(&[0x11, 0, 0, 0, 1])).message, "property not allowed in this packet");
    assert_reason(err(0x40, &puback_body(&[0x23, 0, 1])), MALFORMED, "2.2.2.2");
    assert_reason(err(0x10, &connect_body(0x02, &[0x1f, 0, 0], &[])), MALFORMED, "2.2.2.2");
    assert_reason(err(0x10, &connect_body(0x02, &[0x18, 0, 0, 0, 1], &[])), MALFORMED, "2.2.2.2");
}

#[test]
fn section_2_2_2_1_property_length_that_overruns_the_packet_is_malformed() {
    let mut body = field(b"t");
    body.extend([10, 0x02, 0, 0, 0, 1]);
    assert_reason(err(0x30, &body), MALFORMED, "2.2.2.1");
    // A value that runs past the end of the property section.
    assert_reason(err(0x30, &publish_body(&[0x02, 0, 0])), MALFORMED, "MQTT-4.13.1-1");
}

#[test]
fn a_huge_declared_property_length_is_refused_before_anything_is_read() {
    let mut body = field(b"t");
    body.extend([0xff, 0xff, 0xff, 0x7f]);
    assert_reason(err(0x30, &body), ReasonCode::PACKET_TOO_LARGE, "2.2.2.1");
}

#[test]
fn section_3_1_2_11_3_receive_maximum_0_is_protocol_error() {
    assert_reason(err(0x10, &connect_body(0x02, &[0x21, 0, 0], &[])), PROTOCOL, "3.1.2.11.3");
    let ok = decode_body(0x10, &connect_body(0x02, &[0x21, 0, 5], &[])).unwrap();
    let Packet::Connect(c) = ok else { panic!() };
    assert_eq!(c.properties.receive_maximum, Some(5));
}

#[test]
fn section_3_1_2_11_4_maximum_packet_size_0_is_protocol_error() {
    assert_reason(err(0x10, &connect_body(0x02, &[0x27, 0, 0, 0, 0], &[])), PROTOCOL, "3.1.2.11.4");
}

#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_topic_alias_invalid() {
    assert_reason(err(0x30, &publish_body(&[0x23, 0, 0])), ReasonCode::TOPIC_ALIAS_INVALID, "MQTT-3.3.2-8");
}

#[test]
fn section_3_3_2_1_empty_topic_needs_a_topic_alias() {
    let mut body = field(b"");
    body.extend(props(&[]));
    assert_reason(err(0x30, &body), PROTOCOL, "3.3.2.1");
    let mut body = field(b"");
    body.extend(props(&[0x23, 0, 7]));
    let Packet::Publish(p) = decode_body(0x30, &body).unwrap() else { panic!() };
    assert_eq!((&*p.topic, p.topic_alias), ("", Some(7)));
}

#[test]
fn section_3_3_2_3_8_subscription_identifier_0_is_protocol_error() {
    assert_reason(err(0x30, &publish_body(&[0x0b, 0])), PROTOCOL, "3.3.2.3.8");
    let mut sub = vec![0, 1];
    sub.extend(props(&[0x0b, 0]));
    sub.extend(field(b"a"));
    sub.push(0);
    assert_reason(err(0x82, &sub), PROTOCOL, "3.3.2.3.8");
}

#[test]
fn mqtt_3_3_4_6_subscription_identifier_in_a_client_publish_is_protocol_error() {
    let body = Bytes::from(publish_body(&[0x0b, 5]));
    assert!(decode(0x30, body.clone()).is_ok(), "a server may send it");
    assert_reason(decode_from_client(0x30, body).unwrap_err(), PROTOCOL, "MQTT-3.3.4-6");
}

#[test]
fn server_only_packets_from_a_client_are_protocol_errors() {
    for header in [0x20, 0x90, 0xb0, 0xd0] {
        assert_reason(decode_from_client(header, Bytes::new()).unwrap_err(), PROTOCOL, "2.1.2");
    }
    assert_eq!(decode_from_client(0xc0, Bytes::new()), Ok(Packet::Pingreq));
}

#[test]
fn byte_properties_outside_0_and_1_are_protocol_errors() {
    assert_reason(err(0x30, &publish_body(&[0x01, 2])), PROTOCOL, "3.3.2.3.2");
    assert_reason(err(0x10, &connect_body(0x02, &[0x17, 2], &[])), PROTOCOL, "3.1.2.11.7");
    assert_reason(err(0x10, &connect_body(0x02, &[0x19, 9], &[])), PROTOCOL, "3.1.2.11.6");
    assert_reason(err(0x20, &[0, 0, 2, 0x24, 2]), PROTOCOL, "3.2.2.3.4");
}

#[test]
fn authentication_data_without_a_method_is_protocol_error() {
    assert_reason(err(0x10, &connect_body(0x02, &[0x16, 0, 1, 9], &[])), PROTOCOL, "3.1.2.11.10");
}

#[test]
fn user_properties_keep_their_order_and_are_bounded() {
    let mut items = Vec::new();
    for (k, v) in [(b"b", b"1"), (b"a", b"2"), (b"b", b"3")] {
        items.push(0x26);
        items.extend(field(k));
        items.extend(field(v));
    }
    let Packet::Publish(p) = decode_body(0x30, &publish_body(&items)).unwrap() else { panic!() };
    let user: Vec<_> = p.properties.user.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(user, ["b=1", "a=2", "b=3"]);

    let pair = [0x26, 0, 0, 0, 0];
    for (count, ok) in [(MAX_USER_PROPERTIES, true), (MAX_USER_PROPERTIES + 1, false)] {
        let items = pair.repeat(count);
        let mut body = field(b"t");
        body.extend(vbi(items.len()));
        body.extend(items);
        match decode_body(0x30, &body) {
            Ok(Packet::Publish(p)) if ok => assert_eq!(p.properties.user.len(), count),
            Err(e) if !ok => assert_reason(e, ReasonCode::PACKET_TOO_LARGE, "2.2.2.2"),
            other => panic!("{count} pairs: {other:?}"),
        }
    }
}

#[test]
fn acknowledgements_with_remaining_length_2_3_and_4() {
    for header in [0x40, 0x50, 0x62, 0x70] {
        let Ok(Packet::Puback(a) | Packet::Pubrec(a) | Packet::Pubrel(a) | Packet::Pubcomp(a)) =
            decode_body(header, &[0, 9])
        else {
            panic!("{header:#x}")
        };
        assert_eq!(a, Ack::success(9));
    }
    let Packet::Puback(a) = decode_body(0x40, &[0, 9, 0x10]).unwrap() else { panic!() };
    assert_eq!(a.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let Packet::Puback(a) = decode_body(0x40, &[0, 9, 0x87, 0]).unwrap() else { panic!() };
    assert_eq!((a.reason, a.properties.is_empty()), (ReasonCode::NOT_AUTHORIZED, true));
    // 0x92 is for PUBREL / PUBCOMP only; 0x10 for PUBACK / PUBREC only.
    assert_reason(err(0x40, &[0, 9, 0x92]), MALFORMED, "2.4");
    assert_reason(err(0x62, &[0, 9, 0x10]), MALFORMED, "2.4");
    assert!(decode_body(0x70, &[0, 9, 0x92]).is_ok());
}

#[test]
fn mqtt_2_2_1_3_packet_identifier_0_is_protocol_error() {
    assert_reason(err(0x40, &[0, 0]), PROTOCOL, "MQTT-2.2.1-3");
    let mut body = field(b"t");
    body.extend([0, 0, 0]);
    assert_reason(err(0x32, &body), PROTOCOL, "MQTT-2.2.1-3");
}

#[test]
fn mqtt_2_1_3_1_wrong_fixed_header_flags_are_malformed() {
    for (header, body) in [(0x41, &[0, 1][..]), (0x60, &[0, 1]), (0xc1, &[]), (0x80, &[0, 1, 0, 0, 1, b'a', 0])] {
        assert_reason(err(header, body), MALFORMED, "MQTT-2.1.3-1");
    }
    assert_reason(err(0x00, &[]), MALFORMED, "2.1.2");
}

#[test]
fn mqtt_3_3_1_publish_flags() {
    assert_reason(err(0x36, &publish_body(&[])), MALFORMED, "MQTT-3.3.1-4");
    assert_reason(err(0x38, &publish_body(&[])), MALFORMED, "MQTT-3.3.1-2");
}

#[test]
fn mqtt_3_8_3_5_reserved_subscription_option_bits_are_malformed() {
    for (options, reason, rule) in [
        (0x40, MALFORMED, "MQTT-3.8.3-5"),
        (0x80, MALFORMED, "MQTT-3.8.3-5"),
        (0x03, PROTOCOL, "3.8.3.1"),
        (0x30, PROTOCOL, "3.8.3.1"),
    ] {
        let mut sub = vec![0, 1, 0];
        sub.extend(field(b"a/b"));
        sub.push(options);
        assert_reason(err(0x82, &sub), reason, rule);
    }
}

#[test]
fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_protocol_error() {
    let mut sub = vec![0, 1, 0];
    sub.extend(field(b"$share/g/a"));
    sub.push(0x04);
    assert_reason(err(0x82, &sub), PROTOCOL, "MQTT-3.8.3-4");
}

#[test]
fn subscription_options_are_decoded() {
    let mut sub = vec![0, 1];
    sub.extend(props(&[0x0b, 0x80, 0x01]));
    sub.extend(field(b"a/+"));
    sub.push(0x2e);
    let Packet::Subscribe(s) = decode_body(0x82, &sub).unwrap() else { panic!() };
    assert_eq!(s.subscription_id, Some(128));
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::Never,
    };
    assert_eq!(s.filters, [(Arc::from("a/+"), options)]);
    assert_eq!(options.to_byte(), 0x2e);
}

#[test]
fn mqtt_3_8_3_2_and_3_10_3_2_empty_subscribe_and_unsubscribe_are_protocol_errors() {
    assert_reason(err(0x82, &[0, 1, 0]), PROTOCOL, "MQTT-3.8.3-2");
    assert_reason(err(0xa2, &[0, 1, 0]), PROTOCOL, "MQTT-3.10.3-2");
}

#[test]
fn mqtt_3_1_2_connect_rules() {
    let mut name = field(b"MQIsdp");
    name.extend([3, 2, 0, 60]);
    assert_reason(err(0x10, &name), MALFORMED, "MQTT-3.1.2-1");
    let mut level = field(b"MQTT");
    level.extend([4, 2, 0, 60, 0]);
    assert_reason(err(0x10, &level), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, "MQTT-3.1.2-2");
    assert_reason(err(0x10, &connect_body(0x03, &[], &[])), MALFORMED, "MQTT-3.1.2-3");
    assert_reason(err(0x10, &connect_body(0x08, &[], &[])), MALFORMED, "MQTT-3.1.2-11");
    assert_reason(err(0x10, &connect_body(0x20, &[], &[])), MALFORMED, "MQTT-3.1.2-13");
    assert_reason(err(0x10, &connect_body(0x1c, &[], &[])), MALFORMED, "MQTT-3.1.2-12");
    // Trailing bytes.
    assert_reason(err(0x10, &connect_body(0x02, &[], &[0])), MALFORMED, "MQTT-4.13.1-1");
}

#[test]
fn connect_with_will_properties_user_name_and_password() {
    let mut rest = props(&[0x18, 0, 0, 0, 30, 0x01, 1]);
    rest.extend(field(b"will/topic"));
    rest.extend(field(b"bye"));
    rest.extend(field(b"pw")); // a password without a user name is allowed in 5.0
    let body = connect_body(0x04 | 0x08 | 0x20 | 0x40, &[0x11, 0, 0, 0, 60], &rest);
    let Packet::Connect(c) = decode_body(0x10, &body).unwrap() else { panic!() };
    assert_eq!(c.properties.session_expiry, Some(60));
    let will = c.will.as_ref().unwrap();
    assert_eq!(
        (&*will.topic, &will.payload[..], will.qos, will.retain),
        ("will/topic", &b"bye"[..], QoS::AtLeastOnce, true)
    );
    assert_eq!((will.properties.will_delay, will.properties.payload_format_utf8), (Some(30), Some(true)));
    assert_eq!((c.username.as_deref(), c.password.as_deref()), (None, Some(&b"pw"[..])));
    round_trip(&Packet::Connect(c));
}

#[test]
fn mqtt_3_2_2_connack_rules() {
    assert_reason(err(0x20, &[0x02, 0, 0]), MALFORMED, "MQTT-3.2.2-1");
    assert_reason(err(0x20, &[0x01, 0x87, 0]), PROTOCOL, "MQTT-3.2.2-6");
    assert_reason(err(0x20, &[0x00, 0x10, 0]), MALFORMED, "2.4");
}

#[test]
fn disconnect_and_auth_short_forms() {
    let normal = Disconnect { reason: ReasonCode::NORMAL_DISCONNECTION, properties: Properties::default() };
    assert_eq!(decode_body(0xe0, &[]), Ok(Packet::Disconnect(normal.clone())));
    assert_eq!(decode_body(0xe0, &[0]), Ok(Packet::Disconnect(normal)));
    let Packet::Disconnect(d) = decode_body(0xe0, &[0x04]).unwrap() else { panic!() };
    assert_eq!(d.reason, ReasonCode::DISCONNECT_WITH_WILL);
    assert_reason(err(0xe0, &[0x01]), MALFORMED, "2.4");
    assert_reason(err(0xf0, &[0x04]), MALFORMED, "2.4");
    let Packet::Auth(a) = decode_body(0xf0, &[0x18, 7, 0x15, 0, 4, b'S', b'C', b'R', b'M']).unwrap() else { panic!() };
    assert_eq!((a.reason, a.properties.auth_method.as_deref()), (ReasonCode::CONTINUE_AUTHENTICATION, Some("SCRM")));
    assert_reason(err(0xc0, &[0]), MALFORMED, "MQTT-4.13.1-1");
}

#[test]
fn frame_length_refuses_an_oversized_packet_from_its_declared_length() {
    assert_eq!(frame_length(&[0x30], 100), Ok(None));
    assert_eq!(frame_length(&[0x30, 0x80], 100), Ok(None));
    assert_eq!(frame_length(&[0x30, 10], 100), Ok(Some(12)));
    assert_eq!(frame_length(&[0x30, 0x80, 0x01], 200), Ok(Some(131)));
    let e = frame_length(&[0x30, 0xff, 0xff, 0xff, 0x7f], 1 << 20).unwrap_err();
    assert_reason(e, ReasonCode::PACKET_TOO_LARGE, "3.2.2.3.6");
    assert_reason(frame_length(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], usize::MAX).unwrap_err(), MALFORMED, "1.5.5");
    assert_reason(decode_frame(Bytes::from_static(&[0xc0, 1])).unwrap_err(), MALFORMED, "2.1.4");
}

#[test]
fn publish_shares_the_frame_and_an_empty_property_set() {
    let frame = Bytes::from(publish_body(&[]));
    let Packet::Publish(p) = decode(0x30, frame.clone()).unwrap() else { panic!() };
    assert_eq!(&p.payload[..], b"hi");
    let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    assert!(range.contains(&(p.payload.as_ptr() as usize)), "payload is a slice of the frame");
    assert!(Arc::ptr_eq(&p.properties, &Properties::empty()));

    let mut items = vec![0x09];
    items.extend(field(b"corr"));
    let frame = Bytes::from(publish_body(&items));
    let Packet::Publish(p) = decode(0x30, frame.clone()).unwrap() else { panic!() };
    let data = p.properties.correlation_data.clone().unwrap();
    assert!((frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len()).contains(&(data.as_ptr() as usize)));
}

fn reason_string_ack(reason: &str, users: usize) -> Packet {
    let properties = Properties {
        reason_string: Some(reason.into()),
        user: (0..users).map(|i| (Arc::from(format!("k{i}")), Arc::from("v"))).collect(),
        ..Properties::default()
    };
    Packet::Puback(Ack { pid: 1, reason: ReasonCode::NOT_AUTHORIZED, properties })
}

#[test]
fn encode_within_drops_reason_string_then_user_properties() {
    let packet = reason_string_ack("not allowed to publish there", 3);
    let full = encoded_len(&packet).unwrap();
    let mut buf = BytesMut::new();
    assert!(encode_within(&packet, full, &mut buf).unwrap());
    assert_eq!(decode_frame(buf.split().freeze()).unwrap(), packet);

    assert!(encode_within(&packet, full - 1, &mut buf).unwrap());
    let Packet::Puback(a) = decode_frame(buf.split().freeze()).unwrap() else { panic!() };
    assert_eq!((a.properties.reason_string, a.properties.user.len()), (None, 3));

    assert!(encode_within(&packet, 6, &mut buf).unwrap());
    assert_eq!(buf.len(), 5, "fixed header, packet id and reason code only");
    let Packet::Puback(a) = decode_frame(buf.split().freeze()).unwrap() else { panic!() };
    assert_eq!((a.reason, a.properties.is_empty()), (ReasonCode::NOT_AUTHORIZED, true));

    assert!(!encode_within(&packet, 4, &mut buf).unwrap());
    assert!(buf.is_empty(), "nothing written when it does not fit");
}

#[test]
fn mqtt_3_1_2_25_a_publish_over_the_maximum_packet_size_is_not_written() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        pid: None,
        topic_alias: None,
        subscription_ids: Vec::new(),
        properties: Properties::empty(),
        payload: Bytes::from_static(&[0; 100]),
    });
    let mut buf = BytesMut::new();
    assert!(!encode_within(&packet, 100, &mut buf).unwrap());
    assert!(buf.is_empty());
    assert!(encode_within(&packet, 106, &mut buf).unwrap());
    assert_eq!(buf.len(), 106);
}

#[test]
fn encoding_refuses_fields_longer_than_65535_bytes_and_integers_over_268435455() {
    let long = "x".repeat(65_536);
    let mut buf = BytesMut::new();
    assert_eq!(encode(&reason_string_ack(&long, 0), &mut buf), Err(EncodeError::FieldTooLong));
    let subscribe = Packet::Subscribe(Subscribe {
        pid: 1,
        subscription_id: Some(268_435_456),
        properties: Properties::default(),
        filters: vec![(
            "a".into(),
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            },
        )],
    });
    assert_eq!(encode(&subscribe, &mut buf), Err(EncodeError::FieldTooLong));
    assert!(buf.is_empty());
}

#[test]
fn every_packet_kind_round_trips() {
    let full =
        Properties { reason_string: Some("why".into()), user: vec![("k".into(), "v".into())], ..Properties::default() };
    let packets = [
        Packet::Connack(Connack {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            properties: Properties {
                receive_maximum: Some(10),
                maximum_qos: Some(QoS::AtLeastOnce),
                assigned_client_id: Some("auto-1".into()),
                shared_available: Some(false),
                ..Properties::default()
            },
        }),
        Packet::Pubrel(Ack { pid: 3, reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, properties: full.clone() }),
        Packet::Suback(Suback {
            pid: 4,
            properties: full.clone(),
            reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode(0x8f)],
        }),
        Packet::Unsubscribe(Unsubscribe { pid: 5, properties: Properties::default(), filters: vec!["a/#".into()] }),
        Packet::Unsuback(Unsuback {
            pid: 5,
            properties: Properties::default(),
            reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        }),
        Packet::Pingreq,
        Packet::Pingresp,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SERVER_MOVED,
            properties: Properties { server_reference: Some("other".into()), ..full },
        }),
        Packet::Auth(Auth { reason: ReasonCode::SUCCESS, properties: Properties::default() }),
    ];
    for packet in &packets {
        round_trip(packet);
    }
}

#[test]
fn subscription_identifiers_are_bounded() {
    for (count, ok) in [(MAX_SUBSCRIPTION_IDS, true), (MAX_SUBSCRIPTION_IDS + 1, false)] {
        let items = [0x0b, 1].repeat(count);
        let mut body = field(b"t");
        body.extend(vbi(items.len()));
        body.extend(items);
        match decode_body(0x30, &body) {
            Ok(Packet::Publish(p)) if ok => assert_eq!(p.subscription_ids.len(), count),
            Err(e) if !ok => assert_reason(e, ReasonCode::PACKET_TOO_LARGE, "3.3.2.3.8"),
            other => panic!("{count} identifiers: {other:?}"),
        }
    }
}

#[test]
fn section_3_3_2_3_2_payload_format_check_is_offered() {
    let with = |indicator: &[u8], payload: &[u8]| {
        let mut body = field(b"t");
        body.extend(props(indicator));
        body.extend_from_slice(payload);
        let Packet::Publish(p) = decode_body(0x30, &body).unwrap() else { panic!() };
        p.check_payload_format()
    };
    assert_eq!(with(&[0x01, 1], "héllo".as_bytes()), Ok(()));
    assert_eq!(with(&[0x01, 0], &[0xff]), Ok(()));
    assert_eq!(with(&[], &[0xff]), Ok(()));
    assert_eq!(with(&[0x01, 1], &[0xff]).unwrap_err().reason, ReasonCode::PAYLOAD_FORMAT_INVALID);
}
