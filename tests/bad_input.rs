//! Hostile input: each case closes the offending connection while a
//! bystander, connected before, keeps receiving.

use crate::support::client::Raw;
use crate::support::{TestBroker, packets};

/// Sends `bytes` as a new connection (after CONNECT when `connect` is set),
/// expects it to be closed, and checks a bystander still gets messages.
fn offender_is_closed(b: &TestBroker, connect: bool, bytes: &[u8]) {
    let mut bystander = b.client("bystander");
    bystander.subscribe(1, &[("still/#", 0)]);
    let mut offender = if connect { b.client("offender") } else { b.raw() };
    offender.send(bytes);
    offender.expect_closed();
    let mut publisher: Raw = b.client("publisher");
    publisher.send(&packets::publish0("still/here", b"ok"));
    assert_eq!(bystander.recv().publish().2, b"ok");
}

runtime_test!(
    /// MQTT-3.3.2-2: a PUBLISH topic name containing `+` or `#` closes.
    mqtt_3_3_2_2_wildcard_in_topic_name_closes,
    |b: &TestBroker| {
        offender_is_closed(b, true, &packets::publish0("a/+", b"x"));
        offender_is_closed(b, true, &packets::publish0("a/#", b"x"));
    }
);

runtime_test!(
    /// A declared remaining length above the maximum packet size closes at
    /// once, before any of the body arrives (nothing is allocated for it).
    declared_length_above_maximum_closes_without_waiting,
    |c: &mut midge::Config| c.max_packet_size = 1024,
    |b: &TestBroker| {
        offender_is_closed(b, true, &[0x30, 0x80, 0x08]); // 1024 + header > 1024
        offender_is_closed(b, false, &[0x30, 0xff, 0xff, 0xff, 0x7f]); // 256 MiB
    }
);

runtime_test!(
    /// MQTT-4.8.0-1 (section 2.2.3): a remaining length longer than four bytes closes.
    remaining_length_over_four_bytes_closes,
    |b: &TestBroker| offender_is_closed(b, true, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01])
);

runtime_test!(
    /// Garbage (an HTTP request) instead of MQTT closes.
    garbage_bytes_close,
    |b: &TestBroker| {
        offender_is_closed(b, false, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        offender_is_closed(b, true, &[0x00, 0x00]);
        offender_is_closed(b, true, &[0xf0, 0x00]);
    }
);

runtime_test!(
    /// The truncated shapes that make mqttrs 0.4.1 panic are refused as
    /// malformed (MQTT-4.8.0-1) with no panic.
    mqttrs_panic_shapes_close_cleanly,
    |b: &TestBroker| {
        let shapes: [&[u8]; 5] = [
            &[0x40, 0x00],                         // PUBACK without packet id
            &[0x30, 0x03, 0x00, 0x05, b'a'],       // topic length overruns
            &[0x32, 0x03, 0x00, 0x01, b'a'],       // QoS 1 without packet id
            &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], // filter without QoS byte
            &[0x40, 0x03, 0x00, 0x01, 0x00],       // trailing byte
        ];
        for shape in shapes {
            offender_is_closed(b, true, shape);
        }
        offender_is_closed(b, false, &[0x10, 0x07, 0, 4, b'M', b'Q', b'T', b'T', 4]);
    }
);

runtime_test!(
    /// MQTT-3.3.1-4 / MQTT-3.3.1-2: PUBLISH with QoS 3, or DUP on QoS 0, closes.
    mqtt_3_3_1_4_publish_qos3_and_dup_on_qos0_close,
    |b: &TestBroker| {
        offender_is_closed(b, true, &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]);
        offender_is_closed(b, true, &packets::publish_with("a", b"x", 0, None, false, true));
    }
);

runtime_test!(
    /// MQTT-1.5.3-1/-2: invalid UTF-8 or U+0000 in a topic closes.
    mqtt_1_5_3_bad_strings_close,
    |b: &TestBroker| {
        offender_is_closed(b, true, &[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28]);
        offender_is_closed(b, true, &[0x30, 0x04, 0x00, 0x02, b'a', 0x00]);
    }
);

runtime_test!(
    /// MQTT-2.3.1-1: packet identifier 0 on a QoS 1 PUBLISH closes.
    mqtt_2_3_1_1_packet_id_zero_closes,
    |b: &TestBroker| offender_is_closed(b, true, &packets::publish("a", b"x", 1, 0))
);

runtime_test!(
    /// MQTT-4.8.0-1: packets only a server sends (CONNACK, SUBACK, PINGRESP) close.
    server_only_packets_from_a_client_close,
    |b: &TestBroker| {
        offender_is_closed(b, true, &[0x20, 0x02, 0x00, 0x00]);
        offender_is_closed(b, true, &packets::suback(1, &[0]));
        offender_is_closed(b, true, &packets::PINGRESP);
    }
);
