use crate::support::TestBroker;
use crate::support::client::Raw;
use crate::support::packets::{self, CONNACK_ACCEPTED, Connect, DISCONNECT, PINGREQ, PINGRESP};
use std::time::{Duration, Instant};

runtime_test!(
    /// A valid MQTT 3.1.1 CONNECT is answered by CONNACK 0 (MQTT-3.2.0-1), and
    /// PINGREQ by PINGRESP (MQTT-3.12.4-1).
    mqtt_3_2_0_1_connack_then_pingresp,
    |b: &TestBroker| {
        let mut c = b.client("c1");
        c.ping();
        c.send(&DISCONNECT);
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.0-1: a first packet other than CONNECT closes the connection.
    mqtt_3_1_0_1_first_packet_must_be_connect,
    |b: &TestBroker| {
        let mut raw = b.raw();
        raw.send(&PINGREQ);
        raw.expect_closed();
        b.client("still-works").ping();
    }
);

runtime_test!(
    /// MQTT-3.1.0-2: a second CONNECT is a protocol violation and closes.
    mqtt_3_1_0_2_second_connect_closes,
    |b: &TestBroker| {
        let mut c = b.client("twice");
        c.send(&packets::connect("twice", true, 60));
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.2-2: an unsupported protocol level (5 here) gets CONNACK 1, then close.
    mqtt_3_1_2_2_unsupported_level_gets_connack_1,
    |b: &TestBroker| {
        let mut raw = b.raw();
        // Level 5 is MQTT 5.0 since midge speaks it: 6 is the next unknown one.
        raw.send(&Connect { level: 6, client_id: "v6", ..Connect::default() }.bytes());
        raw.expect(&[0x20, 0x02, 0x00, 0x01]);
        raw.expect_closed();
        let mut raw = b.raw();
        raw.send(&Connect { level: 3, client_id: "v3", ..Connect::default() }.bytes());
        raw.expect(&[0x20, 0x02, 0x00, 0x01]);
        raw.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.2-1: a protocol name other than MQTT / MQIsdp closes without CONNACK.
    mqtt_3_1_2_1_unknown_protocol_name_closes,
    |b: &TestBroker| {
        let mut raw = b.raw();
        raw.send(&Connect { protocol: "MQTX", client_id: "x", ..Connect::default() }.bytes());
        raw.expect_closed();
    }
);

runtime_test!(
    /// MQTT 3.1 (`MQIsdp`, level 3) is accepted; its 23-character client-id
    /// limit is enforced with CONNACK 2.
    mqtt_3_1_protocol_is_accepted_with_its_client_id_limit,
    |b: &TestBroker| {
        let mut raw = b.raw();
        raw.send(&Connect { protocol: "MQIsdp", level: 3, client_id: "old-client", ..Connect::default() }.bytes());
        raw.expect(&CONNACK_ACCEPTED);
        raw.ping();
        let long = "a".repeat(24);
        let mut raw = b.raw();
        raw.send(&Connect { protocol: "MQIsdp", level: 3, client_id: &long, ..Connect::default() }.bytes());
        raw.expect(&[0x20, 0x02, 0x00, 0x02]);
        raw.expect_closed();
    }
);

runtime_test!(
    /// MQTT 3.1 (section 3.1, Client Identifier): the client id must have 1
    /// to 23 characters, and there is no assigned id: an empty one gets
    /// CONNACK 2 (identifier rejected), clean session or not, then close.
    mqtt_3_1_empty_client_id_gets_connack_2,
    |b: &TestBroker| {
        for clean in [true, false] {
            let mut raw = b.raw();
            raw.send(&Connect { protocol: "MQIsdp", level: 3, client_id: "", clean, ..Connect::default() }.bytes());
            raw.expect(&[0x20, 0x02, 0x00, 0x02]);
            raw.expect_closed();
        }
        let mut raw = b.raw();
        raw.send(&Connect { protocol: "MQIsdp", level: 3, client_id: "a", ..Connect::default() }.bytes());
        raw.expect(&CONNACK_ACCEPTED);
        raw.ping();
    }
);

runtime_test!(
    /// MQTT-3.1.2-3: the reserved CONNECT flag must be 0, else close.
    mqtt_3_1_2_3_reserved_connect_flag_closes,
    |b: &TestBroker| {
        let mut raw = b.raw();
        raw.send(&Connect { client_id: "r", extra_flags: 0x01, ..Connect::default() }.bytes());
        raw.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.2-22: a password without a user name is a violation.
    mqtt_3_1_2_22_password_without_username_closes,
    |b: &TestBroker| {
        let mut raw = b.raw();
        raw.send(&Connect { client_id: "p", password: Some(b"pw"), ..Connect::default() }.bytes());
        raw.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.2-11/-13/-15: will QoS or will retain set without the will flag.
    mqtt_3_1_2_11_will_flags_without_will_close,
    |b: &TestBroker| {
        for extra_flags in [0x08, 0x20] {
            let mut raw = b.raw();
            raw.send(&Connect { client_id: "w", extra_flags, ..Connect::default() }.bytes());
            raw.expect_closed();
        }
    }
);

runtime_test!(
    /// MQTT-3.1.3-8: an empty client id with clean session 0 gets CONNACK 2, then close.
    mqtt_3_1_3_8_empty_client_id_with_persistent_session_is_rejected,
    |b: &TestBroker| {
        let mut raw = b.raw();
        raw.send(&packets::connect("", false, 60));
        raw.expect(&[0x20, 0x02, 0x00, 0x02]);
        raw.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.3-6: an empty client id with clean session 1 is accepted and
    /// gets a unique id: two such clients can both subscribe and receive.
    mqtt_3_1_3_6_empty_client_id_with_clean_session_is_assigned_one,
    |b: &TestBroker| {
        let mut first = b.client("");
        let mut second = b.client("");
        first.subscribe(1, &[("anon", 0)]);
        second.subscribe(1, &[("anon", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("anon", b"x"));
        assert_eq!(first.recv().publish().2, b"x");
        assert_eq!(second.recv().publish().2, b"x");
    }
);

runtime_test!(
    /// MQTT-3.1.4-2: a CONNECT with a client id already connected disconnects
    /// the existing client; the new one works.
    mqtt_3_1_4_2_takeover_disconnects_the_existing_client,
    |b: &TestBroker| {
        let mut old = b.client("same");
        let mut new = b.client("same");
        old.expect_closed();
        new.ping();
    }
);

/// 1.5 × a keepalive of 1 s: the earliest a silent client may be closed.
const KEEPALIVE_1S_LIMIT: Duration = Duration::from_millis(1500);
/// How late after that limit the close may come.
const KEEPALIVE_SLACK: Duration = Duration::from_secs(1);

/// Waits for the broker to close `c`, whose last packet was sent at `last`
/// (with keepalive 1 s), and asserts the close came 1.5 s after that packet,
/// not earlier, and no more than `KEEPALIVE_SLACK` later.
fn expect_keepalive_close(c: &mut Raw, what: &str, last: Instant) {
    c.expect_closed();
    let silent = last.elapsed();
    assert!(silent >= KEEPALIVE_1S_LIMIT, "{what}: closed {silent:?} after its last packet, before 1.5 × keepalive");
    assert!(
        silent <= KEEPALIVE_1S_LIMIT + KEEPALIVE_SLACK,
        "{what}: closed {silent:?} after its last packet, later than 1.5 × keepalive + {KEEPALIVE_SLACK:?}"
    );
}

runtime_test!(
    /// MQTT-3.1.2-24: a client silent for 1.5 × its keepalive (1 s) is
    /// closed: not before 1.5 s after it sent CONNECT, and at most 1 s after
    /// that; a client within its own keepalive (2 s, so 3 s) is unaffected.
    mqtt_3_1_2_24_keepalive_expiry_closes,
    |b: &TestBroker| {
        let mut idle = b.raw();
        let sent = Instant::now();
        idle.send(&packets::connect("idle", true, 1));
        idle.expect(&CONNACK_ACCEPTED);
        let mut alive = b.raw();
        alive.send(&packets::connect("alive", true, 2));
        alive.expect(&CONNACK_ACCEPTED);
        expect_keepalive_close(&mut idle, "silent client", sent);
        alive.ping();
    }
);

runtime_test!(
    /// MQTT-3.1.2-24: every packet a client sends restarts its keepalive
    /// timer. Two clients with keepalive 1 s send a packet every 400 ms for
    /// 4 s (past 2.5 × the 1.5 s limit), one PINGREQs, the other QoS 0
    /// PUBLISHes, and both stay connected (each PINGREQ is answered, each
    /// PUBLISH delivered). Once they go silent, each is closed 1.5 s after its
    /// own last packet, within 1 s more.
    mqtt_3_1_2_24_traffic_resets_the_keepalive_timer,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("ka/traffic", 0)]);
        let mut pinger = b.raw();
        pinger.send(&packets::connect("pinger", true, 1));
        pinger.expect(&CONNACK_ACCEPTED);
        let mut publisher = b.raw();
        publisher.send(&packets::connect("publisher", true, 1));
        publisher.expect(&CONNACK_ACCEPTED);
        let start = Instant::now();
        let (mut pinged, mut published) = (start, start);
        let mut round = 0u32;
        while start.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(400));
            round += 1;
            pinged = Instant::now();
            pinger.send(&PINGREQ);
            published = Instant::now();
            publisher.send(&packets::publish0("ka/traffic", &round.to_be_bytes()));
            pinger.expect(&PINGRESP);
            let got = watcher.recv().publish().2;
            assert_eq!(got, round.to_be_bytes(), "publish {round} at {:?} delivered", start.elapsed());
        }
        assert!(round >= 9, "only {round} rounds in 4 s");
        expect_keepalive_close(&mut pinger, "client sending PINGREQ", pinged);
        expect_keepalive_close(&mut publisher, "client sending PUBLISH", published);
        watcher.ping();
    }
);

runtime_test!(
    /// A socket that never sends CONNECT is closed after the connect timeout.
    connect_timeout_closes_silent_sockets,
    |c: &mut midge::Config| c.connect_timeout = Duration::from_millis(300),
    |b: &TestBroker| {
        let mut silent = b.raw();
        silent.expect_closed();
        b.client("after").ping();
    }
);
