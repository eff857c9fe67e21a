//! MQTT 5.0, server side, over the wire: bytes in, bytes out, through
//! `support::v5` (midge's own 5.0 codec on a blocking socket). Each test
//! names the normative statement (`MQTT-x.x.x-y`) or the section it checks;
//! where the spec leaves the server a choice, every allowed answer passes.

use crate::support::packets::{self, PUBACK, ack, field};
use crate::support::v5::{V5, connect_packet, encoded, frame, options, publish_packet, user_properties};
use crate::support::{TempDir, TestBroker};
use bytes::Bytes;
use midge::Config;
use midge::packet::QoS;
use midge::security::{AuthExchange, AuthStep, ClientInfo, ConnectInfo, Hooks};
use midge::v5::{
    Ack, Auth, Disconnect, Packet, Properties, Publish, ReasonCode as R, RetainHandling, Subscribe,
    SubscriptionOptions, Unsubscribe, Will,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers

/// A Variable Byte Integer.
fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return out;
        }
    }
}

/// A QoS 0 PUBLISH on `topic` whose property section is `props` (after a
/// correct Property Length), then `payload`.
fn publish_raw(topic: &str, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic.as_bytes());
    body.extend(vbi(props.len()));
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

/// A 5.0 CONNECT (Clean Start 1, keep alive 60 s, client id `c`) whose
/// property section is `props` (after a correct Property Length).
fn connect_raw(props: &[u8]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.extend([5, 0x02, 0, 60]);
    body.extend(vbi(props.len()));
    body.extend_from_slice(props);
    body.extend(field(b"c"));
    frame(0x10, &body)
}

/// A PUBLISH with properties set by `set`.
fn message(topic: &str, payload: &[u8], qos: u8, set: impl FnOnce(&mut Properties)) -> Publish {
    let mut props = Properties::default();
    set(&mut props);
    Publish { properties: Arc::new(props), ..publish_packet(topic, payload, qos) }
}

/// A client subscribed to `bystander/t` before the offence.
fn bystander(b: &TestBroker) -> V5 {
    let mut c = V5::client(b.addr, "bystander");
    c.subscribe("bystander/t", 1);
    c
}

/// The broker still serves: a new client's QoS 1 message reaches the bystander.
fn still_served(b: &TestBroker, by: &mut V5) {
    let mut newcomer = V5::client(b.addr, "newcomer");
    newcomer.publish("bystander/t", b"still here", 1);
    let p = by.recv_and_ack();
    assert_eq!(&p.payload[..], b"still here");
    newcomer.disconnect();
}

/// After CONNACK 0x00, `bad` gets DISCONNECT with one of `reasons` and a
/// close; a bystander is not affected.
fn refused_with(b: &TestBroker, bad: &[u8], reasons: &[R]) {
    let mut by = bystander(b);
    let mut c = V5::client(b.addr, "offender");
    c.send_raw(bad);
    c.expect_disconnect_of(reasons);
    still_served(b, &mut by);
}

/// `bad` as the first packet gets CONNACK `reason` with Session Present 0
/// (MQTT-3.2.2-6) and a close (MQTT-3.2.2-7); a bystander is not affected.
fn connect_refused_with(b: &TestBroker, bad: &[u8], reason: R) {
    let mut by = bystander(b);
    let mut c = V5::over(b.raw());
    c.send_raw(bad);
    match c.recv() {
        Packet::Connack(a) => {
            assert_eq!(a.reason, reason, "{a:?}");
            assert!(!a.session_present, "MQTT-3.2.2-6: {a:?}");
        }
        other => panic!("expected CONNACK {reason}, got {other:?}"),
    }
    c.expect_closed();
    still_served(b, &mut by);
}

/// A client of a session with Session Expiry Interval `expiry` (Clean
/// Start `clean`), and whether the CONNACK said Session Present.
fn session(b: &TestBroker, id: &str, clean: bool, expiry: u32) -> (V5, bool) {
    let (c, connack) = V5::accepted(b.addr, id, |c| {
        c.clean_start = clean;
        c.properties.session_expiry = (expiry > 0).then_some(expiry);
    });
    (c, connack.session_present)
}

/// Everything the broker has queued for `c`: PUBLISHes up to the second of
/// two PINGRESPs. With `ack`, each is acknowledged as it arrives (a QoS 2
/// one's PUBREL, which may come after a PINGRESP, is awaited too).
fn drain(c: &mut V5, ack: bool) -> Vec<Publish> {
    drain_after(c, 0, ack)
}

/// [`drain`] that first waits (within the client's timeout) for `n`
/// PUBLISHes, which may still be on their way, then for anything queued
/// behind them: more than `n` means more than expected arrived.
fn drain_after(c: &mut V5, n: usize, ack: bool) -> Vec<Publish> {
    let (mut got, mut pongs, mut releases, mut pinged) = (Vec::new(), 0, Vec::new(), false);
    loop {
        if !pinged && got.len() >= n {
            c.send(&Packet::Pingreq);
            c.send(&Packet::Pingreq);
            pinged = true;
        }
        if pongs == 2 && releases.is_empty() {
            return got;
        }
        match c.recv() {
            Packet::Pingresp => pongs += 1,
            Packet::Publish(p) => {
                match (ack, p.qos, p.pid) {
                    (true, QoS::AtLeastOnce, Some(pid)) => c.send(&Packet::Puback(Ack::success(pid))),
                    (true, QoS::ExactlyOnce, Some(pid)) => {
                        c.send(&Packet::Pubrec(Ack::success(pid)));
                        releases.push(pid);
                    }
                    _ => {}
                }
                got.push(p);
            }
            Packet::Pubrel(a) if releases.contains(&a.pid) => {
                releases.retain(|&pid| pid != a.pid);
                c.send(&Packet::Pubcomp(Ack::success(a.pid)));
            }
            other => panic!("expected PUBLISH or PINGRESP, got {other:?}"),
        }
    }
}

/// What each of `members` (of one share group) received, drained until
/// `total` PUBLISHes arrived across them (within the test timeout), each
/// acknowledged if `ack`.
fn drain_group(members: &mut [&mut V5], total: usize, ack: bool) -> Vec<Vec<Publish>> {
    let deadline = Instant::now() + crate::support::client::TIMEOUT;
    let mut got: Vec<Vec<Publish>> = members.iter().map(|_| Vec::new()).collect();
    while got.iter().map(Vec::len).sum::<usize>() < total {
        let counts: Vec<usize> = got.iter().map(Vec::len).collect();
        assert!(Instant::now() < deadline, "only {counts:?} of {total} arrived");
        for (m, seen) in members.iter_mut().zip(&mut got) {
            seen.extend(drain(m, ack));
        }
    }
    got
}

/// The topic a delivery stands for, following the Topic Aliases the broker
/// set on this connection: an alias is within 1..=`max` (MQTT-3.1.2-26,
/// MQTT-3.3.2-8), an empty topic uses an alias set before on the same
/// connection (MQTT-3.3.2-7).
fn resolve(aliases: &mut HashMap<u16, Arc<str>>, p: &Publish, max: u16) -> String {
    match p.topic_alias {
        None => {
            assert!(!p.topic.is_empty(), "empty topic without an alias: {p:?}");
            p.topic.to_string()
        }
        Some(alias) => {
            assert!((1..=max).contains(&alias), "topic alias {alias} outside 1..={max}");
            if !p.topic.is_empty() {
                aliases.insert(alias, p.topic.clone());
            }
            aliases.get(&alias).unwrap_or_else(|| panic!("alias {alias} used before it was set")).to_string()
        }
    }
}

/// The answer to a SUBSCRIBE whose last filter is invalid: SUBACK with
/// `granted` for the filters before it and 0x8F (Topic Filter invalid) for
/// it, or a DISCONNECT 0x8F, 0x81 or 0x82 and the close (`what` names the
/// case in failures).
fn expect_filter_refused(c: &mut V5, granted: &[R], what: &str) {
    match c.recv() {
        Packet::Suback(a) => assert_eq!(a.reasons, [granted, &[R::TOPIC_FILTER_INVALID]].concat(), "{what}"),
        Packet::Disconnect(d) => {
            let allowed = [R::TOPIC_FILTER_INVALID, R::MALFORMED_PACKET, R::PROTOCOL_ERROR];
            assert!(allowed.contains(&d.reason), "{what}: {d:?}");
            c.expect_closed();
        }
        other => panic!("{what}: expected SUBACK or DISCONNECT, got {other:?}"),
    }
}

fn subscribe_one(filter: &str, options: SubscriptionOptions) -> Subscribe {
    Subscribe {
        pid: 1,
        subscription_id: None,
        properties: Properties::default(),
        filters: vec![(filter.into(), options)],
    }
}

// ---------------------------------------------------------------------------
// a. CONNECT / CONNACK

runtime_test!(
    /// 3.2.2.3: with the default configuration, CONNACK 0x00 announces
    /// Receive Maximum 20 (max_inflight), Topic Alias Maximum 10, Maximum
    /// Packet Size 1 MiB (max_packet_size); no Maximum QoS (midge has QoS 2),
    /// no Assigned Client Identifier for a client that sent one, no Server
    /// Keep Alive without max_keepalive, no Authentication Method without
    /// one in CONNECT (MQTT-4.12.0-6); Retain Available absent or 1.
    mqtt_3_2_2_3_connack_properties_announce_the_limits,
    |b: &TestBroker| {
        let (mut c, connack) = V5::accepted(b.addr, "props", |_| {});
        assert!(!connack.session_present, "MQTT-3.2.2-2: {connack:?}");
        let p = &connack.properties;
        assert_eq!(p.receive_maximum, Some(20), "{p:?}");
        assert_eq!(p.topic_alias_maximum, Some(10), "{p:?}");
        assert_eq!(p.maximum_packet_size, Some(1 << 20), "{p:?}");
        assert_eq!(p.maximum_qos, None, "{p:?}");
        assert_ne!(p.retain_available, Some(false), "{p:?}");
        assert_eq!(p.assigned_client_id, None, "{p:?}");
        assert_eq!(p.server_keep_alive, None, "{p:?}");
        assert_eq!(p.auth_method, None, "MQTT-4.12.0-6: {p:?}");
        assert_eq!(p.session_expiry, None, "no Session Expiry Interval asked for, none imposed: {p:?}");
        c.ping();
    }
);

runtime_test!(
    /// 3.2.2.3: the announced limits follow the configuration: Receive
    /// Maximum = max_inflight, Maximum Packet Size = max_packet_size, Topic
    /// Alias Maximum = max_topic_alias, Retain Available 0 when
    /// retain_available is off.
    mqtt_3_2_2_3_connack_limits_follow_the_config,
    |c: &mut Config| {
        c.max_inflight = 5;
        c.max_packet_size = 4096;
        c.retain_available = false;
        c.max_topic_alias = 3;
    },
    |b: &TestBroker| {
        let (_c, connack) = V5::accepted(b.addr, "limits", |_| {});
        let p = &connack.properties;
        assert_eq!(p.topic_alias_maximum, Some(3), "{p:?}");
        assert_eq!(p.receive_maximum, Some(5), "{p:?}");
        assert_eq!(p.maximum_packet_size, Some(4096), "{p:?}");
        assert_eq!(p.retain_available, Some(false), "{p:?}");
    }
);

runtime_test!(
    /// MQTT-3.2.2-16, MQTT-3.1.3-6/-7: an empty client id gets an Assigned
    /// Client Identifier, unique; the CONNECT is handled as if that id had
    /// been sent, so its session resumes under it.
    mqtt_3_2_2_16_empty_client_id_gets_a_unique_assigned_one,
    |b: &TestBroker| {
        let (first, a) = V5::accepted(b.addr, "", |c| {
            c.clean_start = false;
            c.properties.session_expiry = Some(60);
        });
        let (second, a2) = V5::accepted(b.addr, "", |_| {});
        let id = a.properties.assigned_client_id.clone().expect("Assigned Client Identifier");
        let id2 = a2.properties.assigned_client_id.clone().expect("Assigned Client Identifier");
        assert!(!id.is_empty() && !id2.is_empty());
        assert_ne!(id, id2, "MQTT-3.2.2-16: two sessions got the same id");
        let mut first = first;
        first.subscribe("assigned/t", 1);
        first.disconnect();
        second.disconnect();
        let mut p = V5::client(b.addr, "pub");
        p.publish("assigned/t", b"kept for you", 1);
        let (mut again, present) = session(b, &id, false, 60);
        assert!(present, "MQTT-3.1.3-7: the session of the assigned id resumes");
        assert_eq!(&again.recv_and_ack().payload[..], b"kept for you");
    }
);

runtime_test!(
    /// MQTT-3.2.2-22 / 3.2.2.3.14: with max_keepalive 30, a client asking for
    /// more (or 0) is accepted and told Server Keep Alive 30; one asking for
    /// less gets no Server Keep Alive or its own value.
    mqtt_3_2_2_22_server_keep_alive_from_max_keepalive,
    |c: &mut Config| c.max_keepalive = Some(30),
    |b: &TestBroker| {
        for asked in [60, 0] {
            let (mut c, connack) = V5::accepted(b.addr, "ka", |c| c.keep_alive = asked);
            assert_eq!(connack.properties.server_keep_alive, Some(30), "asked {asked}: {connack:?}");
            c.ping();
        }
        let (mut c, connack) = V5::accepted(b.addr, "ka", |c| c.keep_alive = 10);
        assert!(matches!(connack.properties.server_keep_alive, None | Some(10)), "{connack:?}");
        c.ping();
    }
);

runtime_test!(
    /// MQTT-3.1.2-22 with 3.14.2.1: a client silent for 1.5 times its keep
    /// alive (1 s) gets DISCONNECT 0x8D (Keep Alive timeout) and the close.
    mqtt_3_1_2_22_keep_alive_timeout_gets_disconnect_0x8d,
    |b: &TestBroker| {
        let start = Instant::now();
        let (mut c, _) = V5::accepted(b.addr, "silent", |c| c.keep_alive = 1);
        c.expect_disconnect(R::KEEP_ALIVE_TIMEOUT);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(1000), "closed after only {waited:?}");
        assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    }
);

/// A session of `id` with Session Expiry Interval `expiry` subscribes to
/// `id/t` and disconnects; the next connection (Clean Start `clean`, same
/// expiry) finds no session: Session Present 0, and a message published to
/// the old subscription does not arrive.
fn expect_session_gone(b: &TestBroker, id: &str, expiry: u32, clean: bool) {
    let topic = format!("{id}/t");
    let (mut c, _) = session(b, id, false, expiry);
    c.subscribe(&topic, 1);
    c.disconnect();
    let (mut c, present) = session(b, id, clean, expiry);
    assert!(!present, "{id}: Session Present 1");
    let mut p = V5::client(b.addr, "pub");
    p.publish(&topic, b"nobody subscribed", 1);
    c.expect_nothing_queued();
}

runtime_test!(
    /// MQTT-3.1.2-4, MQTT-3.2.2-2: Clean Start 1 discards an existing session
    /// (Session Present 0, its subscription gone).
    mqtt_3_1_2_4_clean_start_1_discards_the_session,
    |b: &TestBroker| expect_session_gone(b, "cs1", 60, true)
);

runtime_test!(
    /// MQTT-3.1.2-5, MQTT-3.2.2-3, MQTT-3.1.2-23: Clean Start 0 resumes a
    /// session kept by a Session Expiry Interval above 0, with the message
    /// that arrived meanwhile; MQTT-3.1.2-6: without a session it starts a
    /// new one (Session Present 0).
    mqtt_3_1_2_5_clean_start_0_resumes_the_session,
    |b: &TestBroker| {
        let (mut c, present) = session(b, "cs0", false, 60);
        assert!(!present, "MQTT-3.1.2-6: a new session");
        c.subscribe("cs0/t", 1);
        c.disconnect();
        let mut p = V5::client(b.addr, "pub");
        p.publish("cs0/t", b"while away", 1);
        let (mut c, present) = session(b, "cs0", false, 60);
        assert!(present, "MQTT-3.2.2-3: Session Present 1");
        assert_eq!(&c.recv_and_ack().payload[..], b"while away");
    }
);

runtime_test!(
    /// MQTT-3.1.2-23 (3.1.2.11.2): Session Expiry Interval 0 (absent) ends the
    /// session when the connection closes, even with Clean Start 0.
    mqtt_3_1_2_23_session_expiry_0_ends_the_session_at_disconnect,
    |b: &TestBroker| expect_session_gone(b, "se0", 0, false)
);

runtime_test!(
    /// MQTT-4.1.0-2: a session is discarded once its connection is closed and
    /// its Session Expiry Interval (1 s) has passed; before that it resumes.
    mqtt_4_1_0_2_session_expires_after_its_interval,
    |b: &TestBroker| {
        let (c, _) = session(b, "se1", false, 1);
        c.disconnect();
        let (c, present) = session(b, "se1", false, 1);
        assert!(present, "resumed within the interval");
        c.disconnect();
        std::thread::sleep(Duration::from_millis(2500));
        let (_c, present) = session(b, "se1", false, 1);
        assert!(!present, "MQTT-4.1.0-2: the session outlived its expiry interval");
    }
);

runtime_test!(
    /// 3.14.2.2.2: DISCONNECT may change the Session Expiry Interval (60 to
    /// 0 ends the session), but setting it from 0 to non-zero is a Protocol
    /// Error: DISCONNECT 0x82 from the server, and the session still ends.
    mqtt_3_14_2_2_2_disconnect_changes_session_expiry_but_not_from_0,
    |b: &TestBroker| {
        let (c, _) = session(b, "down", false, 60);
        c.disconnect_with(R::NORMAL_DISCONNECTION, Properties { session_expiry: Some(0), ..Properties::default() });
        let (mut c, present) = session(b, "down", false, 0);
        assert!(!present, "DISCONNECT set the expiry to 0: the session ended");
        c.send(&Packet::Disconnect(Disconnect {
            reason: R::NORMAL_DISCONNECTION,
            properties: Properties { session_expiry: Some(60), ..Properties::default() },
        }));
        c.expect_disconnect(R::PROTOCOL_ERROR);
        let (_c, present) = session(b, "down", false, 0);
        assert!(!present, "the expiry stayed 0: the session ended");
    }
);

runtime_test!(
    /// 3.14.2.2.2: a session that never expires (0xFFFFFFFF) may be given an
    /// expiry by DISCONNECT: only one of 0 may not change. The DISCONNECT
    /// setting 60 is no Protocol Error (the broker just closes, sending
    /// nothing), and the session outlives the connection.
    disconnect_changes_a_session_expiry_of_never,
    |b: &TestBroker| {
        let (mut c, _) = session(b, "forever", false, u32::MAX);
        c.send(&Packet::Disconnect(Disconnect {
            reason: R::NORMAL_DISCONNECTION,
            properties: Properties { session_expiry: Some(60), ..Properties::default() },
        }));
        c.expect_closed();
        let (_c, present) = session(b, "forever", false, 60);
        assert!(present, "the session is kept for its new expiry");
    }
);

runtime_kind_test!(
    /// MQTT-3.1.4-2 / 3.2.2.2: a wrong password gets CONNACK 0x86 (Bad User
    /// Name or Password), a client without a user name where anonymous
    /// access is off 0x86 or 0x87 (Not authorized), a hook's refusal (`security::AppHooks` refuses eve) 0x87;
    /// each then a close (MQTT-3.2.2-7).
    mqtt_3_1_4_2_refused_credentials_get_0x86_or_0x87,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("v5-passwd");
        let path = crate::security::password_file(&dir);
        let b = TestBroker::start(kind, |c| c.password_file = Some(path));
        let login = |user: Option<&str>, password: &[u8]| {
            let (mut c, connack) = V5::connect(b.addr, "login", |c| {
                c.username = user.map(Arc::from);
                c.password = Some(Bytes::copy_from_slice(password));
            });
            if connack.reason.is_error() {
                assert!(!connack.session_present);
                c.expect_closed();
            }
            connack.reason
        };
        assert_eq!(login(Some("alice"), b"wonderland"), R::SUCCESS);
        assert_eq!(login(Some("alice"), b"wrong"), R::BAD_USER_NAME_OR_PASSWORD);
        assert_eq!(login(Some("mallory"), b"wonderland"), R::BAD_USER_NAME_OR_PASSWORD);
        let anonymous = login(None, b"");
        assert!([R::BAD_USER_NAME_OR_PASSWORD, R::NOT_AUTHORIZED].contains(&anonymous), "{anonymous}");
        b.broker.set_hooks(Arc::new(crate::security::AppHooks));
        assert_eq!(login(Some("eve"), b"x"), R::BAD_USER_NAME_OR_PASSWORD, "eve has no password entry");
        let b = TestBroker::start(kind, |_| {});
        b.broker.set_hooks(Arc::new(crate::security::AppHooks));
        let (mut c, connack) = V5::connect(b.addr, "eve-1", |c| c.username = Some("eve".into()));
        assert_eq!(connack.reason, R::NOT_AUTHORIZED);
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.1.4-3: a second connection with the same client id: the first
    /// gets DISCONNECT 0x8E (Session taken over) and is closed; the second
    /// is served.
    mqtt_3_1_4_3_takeover_sends_disconnect_0x8e,
    |b: &TestBroker| {
        let mut first = V5::client(b.addr, "twin");
        first.ping();
        let mut second = V5::client(b.addr, "twin");
        first.expect_disconnect(R::SESSION_TAKEN_OVER);
        second.ping();
    }
);

runtime_test!(
    /// MQTT-3.2.2-13: without retained-message support a will with Will
    /// Retain 1 is refused (CONNACK 0x9A Retain not supported) and closed;
    /// 3.3.1.3: a PUBLISH with RETAIN 1 gets DISCONNECT 0x9A.
    mqtt_3_2_2_13_retain_not_supported_gets_0x9a,
    |c: &mut Config| c.retain_available = false,
    |b: &TestBroker| {
        let will = Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::empty(),
        };
        let mut connect = connect_packet("retainer");
        connect.will = Some(will);
        connect_refused_with(b, &encoded(&Packet::Connect(Box::new(connect))), R::RETAIN_NOT_SUPPORTED);
        let retained = Publish { retain: true, ..publish_packet("r/t", b"keep", 0) };
        refused_with(b, &encoded(&Packet::Publish(retained)), &[R::RETAIN_NOT_SUPPORTED]);
    }
);

runtime_test!(
    /// MQTT-3.1.2-28, 3.2.2.3.15: with response_information configured, a
    /// client that does not ask for Response Information (absent or 0) gets
    /// none; one that asks gets it.
    mqtt_3_1_2_28_response_information_only_when_asked,
    |c: &mut Config| c.response_information = Some("responses/".into()),
    |b: &TestBroker| {
        for asked in [None, Some(false)] {
            let (_c, connack) = V5::accepted(b.addr, "rr", |c| c.properties.request_response_info = asked);
            assert_eq!(connack.properties.response_info, None, "MQTT-3.1.2-28: {connack:?}");
        }
        let (_c, connack) = V5::accepted(b.addr, "rr", |c| c.properties.request_response_info = Some(true));
        let info = connack.properties.response_info.expect("Response Information");
        assert!(info.starts_with("responses/"), "{info:?}");
    }
);

runtime_test!(
    /// 3.2.2.3.15: without response_information the broker sends no Response
    /// Information, asked or not (the server may leave it out).
    mqtt_3_2_2_3_15_no_response_information_unless_configured,
    |b: &TestBroker| {
        for asked in [None, Some(false), Some(true)] {
            let (_c, connack) = V5::accepted(b.addr, "rr", |c| c.properties.request_response_info = asked);
            assert_eq!(connack.properties.response_info, None, "{connack:?}");
        }
    }
);

runtime_test!(
    /// MQTT-3.1.2-29: with Request Problem Information 0 the acknowledgements
    /// (UNSUBACK 0x11, PUBCOMP 0x92, SUBACK) carry no Reason String and no
    /// User Property.
    mqtt_3_1_2_29_no_reason_string_when_problem_information_is_off,
    |b: &TestBroker| {
        let (mut c, _) = V5::accepted(b.addr, "quiet", |c| c.properties.request_problem_info = Some(false));
        let suback = c.subscribe_with(subscribe_one("q/t", options(1)));
        assert!(suback.properties.reason_string.is_none() && suback.properties.user.is_empty(), "{suback:?}");
        c.send(&Packet::Unsubscribe(Unsubscribe {
            pid: 7,
            properties: Properties::default(),
            filters: vec!["q/none".into()],
        }));
        match c.recv() {
            Packet::Unsuback(a) => {
                assert!(a.properties.reason_string.is_none() && a.properties.user.is_empty(), "{a:?}")
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
        c.send(&Packet::Pubrel(Ack::success(77)));
        match c.recv() {
            Packet::Pubcomp(a) => {
                assert!(a.properties.reason_string.is_none() && a.properties.user.is_empty(), "{a:?}")
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }
);

fn will(topic: &str, payload: &'static [u8], properties: Properties) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Arc::new(properties),
    }
}

runtime_test!(
    /// MQTT-3.1.2-8, MQTT-3.1.3-10: a will is published when the connection
    /// closes without DISCONNECT, with its properties (User Properties in
    /// order); MQTT-3.14.4-3: DISCONNECT 0x00 drops it; 3.14.2.1: DISCONNECT
    /// 0x04 (Disconnect with Will Message) publishes it.
    mqtt_3_1_3_10_will_published_with_its_properties,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "heir");
        sub.subscribe("will/#", 1);
        let props = Properties {
            content_type: Some("text/plain".into()),
            payload_format_utf8: Some(true),
            response_topic: Some("will/reply".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user: user_properties(&[("z", "1"), ("a", "2"), ("z", "3")]),
            ..Properties::default()
        };
        let connect_with = |id: &str, topic: &str| {
            V5::accepted(b.addr, id, |c| c.will = Some(will(topic, b"gone", props.clone()))).0
        };
        drop(connect_with("w-drop", "will/dropped"));
        let got = sub.recv_and_ack();
        assert_eq!(&*got.topic, "will/dropped");
        assert_eq!(&got.payload[..], b"gone");
        assert_eq!(*got.properties, props, "MQTT-3.1.3-10: will properties forwarded as sent");
        connect_with("w-normal", "will/normal").disconnect();
        connect_with("w-04", "will/with-will").disconnect_with(R::DISCONNECT_WITH_WILL, Properties::default());
        assert_eq!(&*sub.recv_and_ack().topic, "will/with-will", "MQTT-3.14.4-3: no will after DISCONNECT 0x00");
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// 3.1.3.2.3 (Payload Format Indicator of the will): a will marked UTF-8
    /// whose payload is not UTF-8 gets CONNACK 0x99 (Payload format invalid).
    mqtt_3_1_3_2_3_will_with_bad_payload_format_gets_0x99,
    |b: &TestBroker| {
        let mut connect = connect_packet("badwill");
        connect.will = Some(will(
            "w/t",
            b"\xff\xfe not UTF-8",
            Properties { payload_format_utf8: Some(true), ..Properties::default() },
        ));
        connect_refused_with(b, &encoded(&Packet::Connect(Box::new(connect))), R::PAYLOAD_FORMAT_INVALID);
    }
);

runtime_test!(
    /// MQTT-3.1.2-8, MQTT-3.1.3-9 (Will Delay Interval): the will waits for
    /// its delay (1 s) and is published after it; a will whose client
    /// reconnects within its delay (2 s) is not published at all.
    mqtt_3_1_3_9_will_delay_interval,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "heir");
        sub.subscribe("delayed/#", 1);
        let delayed = |id: &str, delay: u32| {
            V5::accepted(b.addr, id, |c| {
                c.clean_start = false;
                c.properties.session_expiry = Some(60);
                let props = Properties { will_delay: Some(delay), ..Properties::default() };
                c.will = Some(will(&format!("delayed/{id}"), b"late", props));
            })
            .0
        };
        let start = Instant::now();
        drop(delayed("one", 1));
        sub.expect_nothing_queued();
        let got = sub.recv_and_ack();
        assert_eq!(&*got.topic, "delayed/one");
        assert!(start.elapsed() >= Duration::from_millis(900), "published after {:?}", start.elapsed());
        assert_eq!(got.properties.will_delay, None, "the Will Delay Interval is not a message property");
        drop(delayed("two", 2));
        let (_back, present) = session(b, "two", false, 60);
        assert!(present);
        std::thread::sleep(Duration::from_millis(2500));
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// 3.1.3.2.2: the will waits for its delay "or the Session ends,
    /// whichever happens first": a Clean Start reconnect within a delay of an
    /// hour ends the session, and the will goes out then, not an hour later.
    /// Reconnecting in a loop with a long delay leaves one pending will.
    will_delay_ends_with_the_session_a_clean_start_ends,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "heir2");
        sub.subscribe("ended/#", 1);
        let delayed = |clean_start: bool| {
            V5::accepted(b.addr, "loop", |c| {
                c.clean_start = clean_start;
                c.properties.session_expiry = Some(3600);
                let props = Properties { will_delay: Some(3600), ..Properties::default() };
                c.will = Some(will("ended/loop", b"gone", props));
            })
            .0
        };
        for _ in 0..5 {
            drop(delayed(false));
        }
        sub.expect_nothing_queued();
        let _fresh = delayed(true);
        let got = sub.recv_and_ack();
        assert_eq!((&*got.topic, &got.payload[..]), ("ended/loop", &b"gone"[..]));
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.1.0-2: a second CONNECT is a Protocol Error: DISCONNECT 0x82
    /// and the close.
    mqtt_3_1_0_2_second_connect_gets_0x82,
    |b: &TestBroker| refused_with(b, &encoded(&Packet::Connect(Box::new(connect_packet("again")))), &[R::PROTOCOL_ERROR])
);

runtime_kind_test!(
    /// MQTT-3.1.4-6, MQTT-3.14.0-1: after refusing a CONNECT (CONNACK 0x86)
    /// the server processes nothing the client sent behind it (a retained
    /// PUBLISH in the same write is not stored) and sends no DISCONNECT.
    mqtt_3_1_4_6_nothing_after_a_refused_connect_is_processed,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("v5-refused");
        let path = crate::security::password_file(&dir);
        let b = TestBroker::start(kind, |c| c.password_file = Some(path));
        let mut connect = connect_packet("sneaky");
        connect.username = Some("alice".into());
        connect.password = Some(Bytes::from_static(b"wrong"));
        let mut bytes = encoded(&Packet::Connect(Box::new(connect)));
        bytes.extend(encoded(&Packet::Publish(Publish { retain: true, ..publish_packet("after/t", b"no", 0) })));
        let mut c = V5::over(b.raw());
        c.send_raw(&bytes);
        match c.recv() {
            Packet::Connack(a) => assert_eq!(a.reason, R::BAD_USER_NAME_OR_PASSWORD),
            other => panic!("expected CONNACK 0x86, got {other:?}"),
        }
        c.expect_closed();
        let (mut alice, _) = V5::accepted(b.addr, "alice-1", |c| {
            c.username = Some("alice".into());
            c.password = Some(Bytes::from_static(b"wonderland"));
        });
        alice.subscribe("after/t", 0);
        alice.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.2.2-22 / 3.2.2.3.14: the Server Keep Alive (max_keepalive 1)
    /// replaces the client's 60 s: silence for 1.5 s gets DISCONNECT 0x8D.
    mqtt_3_2_2_22_server_keep_alive_is_enforced,
    |c: &mut Config| c.max_keepalive = Some(1),
    |b: &TestBroker| {
        let start = Instant::now();
        let (mut c, connack) = V5::accepted(b.addr, "told", |c| c.keep_alive = 60);
        assert_eq!(connack.properties.server_keep_alive, Some(1));
        c.expect_disconnect(R::KEEP_ALIVE_TIMEOUT);
        assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
    }
);

/// Hooks that refuse every PUBLISH to `deny/…`.
struct DenyTopic;

impl Hooks for DenyTopic {
    fn authorize_publish(&self, _: &ClientInfo<'_>, topic: &str) -> bool {
        !topic.starts_with("deny/")
    }
}

runtime_test!(
    /// MQTT-3.1.2-24, MQTT-3.2.2-19/-20 and the same rule for PUBACK, PUBREC,
    /// PUBREL, PUBCOMP, SUBACK, UNSUBACK and DISCONNECT (3.4.2 to 3.14.2):
    /// with a client Maximum Packet Size of 24 and Request Problem
    /// Information 1, nothing midge sends is larger: CONNACK, SUBACK,
    /// UNSUBACK 0x11, PUBCOMP 0x92, a refusing PUBACK / PUBREC (0x87 from a
    /// hook), PUBREL and DISCONNECT 0x82 drop a Reason String or User
    /// Property that would not fit.
    mqtt_3_1_2_24_no_packet_over_the_clients_maximum_packet_size,
    |b: &TestBroker| {
        const MAX: usize = 24;
        let (mut c, _) = V5::accepted(b.addr, "tiny", |c| {
            c.properties.maximum_packet_size = Some(MAX as u32);
            c.properties.request_problem_info = Some(true);
        });
        assert!(c.last_size <= MAX, "CONNACK of {} bytes", c.last_size);
        c.subscribe("tiny/t", 1);
        assert!(c.last_size <= MAX, "SUBACK of {} bytes", c.last_size);
        c.send(&Packet::Unsubscribe(Unsubscribe {
            pid: 3,
            properties: Properties::default(),
            filters: vec!["tiny/none".into()],
        }));
        assert!(matches!(c.recv(), Packet::Unsuback(_)));
        assert!(c.last_size <= MAX, "UNSUBACK of {} bytes", c.last_size);
        c.send(&Packet::Pubrel(Ack::success(99)));
        assert!(matches!(c.recv(), Packet::Pubcomp(_)));
        assert!(c.last_size <= MAX, "PUBCOMP of {} bytes", c.last_size);
        b.broker.set_hooks(Arc::new(DenyTopic));
        for qos in [1, 2] {
            c.send(&Packet::Publish(Publish { pid: Some(5), ..publish_packet("deny/t", b"x", qos) }));
            assert!(matches!(c.recv(), Packet::Puback(a) | Packet::Pubrec(a) if a.reason.is_error()));
            assert!(c.last_size <= MAX, "refusing PUBACK / PUBREC of {} bytes", c.last_size);
        }
        c.subscribe("tiny/q2", 2);
        let mut p = V5::client(b.addr, "pub");
        p.publish("tiny/q2", b"x", 2);
        let got = c.recv_publish();
        c.send(&Packet::Pubrec(Ack::success(got.pid.unwrap())));
        assert!(matches!(c.recv(), Packet::Pubrel(_)));
        assert!(c.last_size <= MAX, "PUBREL of {} bytes", c.last_size);
        c.send(&Packet::Pubcomp(Ack::success(got.pid.unwrap())));
        c.send(&Packet::Connect(Box::new(connect_packet("tiny"))));
        c.expect_disconnect(R::PROTOCOL_ERROR);
        assert!(c.last_size <= MAX, "DISCONNECT of {} bytes", c.last_size);
    }
);

// ---------------------------------------------------------------------------
// b. PUBLISH

runtime_test!(
    /// MQTT-3.3.2-4, -15, -16, -17, -18, -20: Payload Format Indicator,
    /// Response Topic, Correlation Data, Content Type and User Properties (in
    /// order, repeated keys kept) reach a 5.0 subscriber unchanged, at QoS 0,
    /// 1 and 2; a PUBACK / PUBREC with a subscriber says 0x00.
    mqtt_3_3_2_17_message_properties_are_forwarded_unchanged,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("props/#", 2);
        let mut p = V5::client(b.addr, "pub");
        for qos in 0..=2u8 {
            let sent = message("props/t", "héllo".as_bytes(), qos, |m| {
                m.payload_format_utf8 = Some(true);
                m.content_type = Some("text/plain; charset=utf-8".into());
                m.response_topic = Some("props/reply".into());
                m.correlation_data = Some(Bytes::from_static(b"\x00\xffid"));
                m.user = user_properties(&[("k", "v1"), ("a", "x"), ("k", "v2"), ("", "")]);
            });
            assert_eq!(p.publish_with(sent.clone()), R::SUCCESS, "MQTT-3.4.2-1: a subscriber matched");
            let got = sub.recv_and_ack();
            assert_eq!((&*got.topic, &got.payload[..], got.qos as u8), ("props/t", "héllo".as_bytes(), qos));
            assert_eq!(*got.properties, *sent.properties);
        }
        let sent = message("props/bin", b"\x00\x01", 0, |m| m.payload_format_utf8 = Some(false));
        p.publish_with(sent);
        assert_eq!(sub.recv_publish().properties.payload_format_utf8, Some(false), "MQTT-3.3.2-4");
    }
);

runtime_test!(
    /// MQTT-3.4.2-1, MQTT-3.5.2-1: a PUBLISH no one subscribed to gets PUBACK
    /// or PUBREC 0x00 or 0x10 (No matching subscribers).
    mqtt_3_4_2_1_puback_without_subscribers_is_0x00_or_0x10,
    |b: &TestBroker| {
        let mut p = V5::client(b.addr, "lonely");
        for qos in [1, 2] {
            let reason = p.publish_with(publish_packet("nobody/listens", b"x", qos));
            assert!([R::SUCCESS, R::NO_MATCHING_SUBSCRIBERS].contains(&reason), "{reason}");
        }
    }
);

runtime_test!(
    /// MQTT-3.3.2-6: a message forwarded at once carries its Message Expiry
    /// Interval less the time it waited (at most the value sent).
    mqtt_3_3_2_6_forwarded_message_carries_its_remaining_expiry,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("exp/t", 1);
        let mut p = V5::client(b.addr, "pub");
        p.publish_with(message("exp/t", b"soon stale", 1, |m| m.message_expiry = Some(100)));
        let got = sub.recv_and_ack();
        let left = got.properties.message_expiry.expect("MQTT-3.3.2-6: the expiry is forwarded");
        assert!((95..=100).contains(&left), "remaining {left}");
    }
);

runtime_test!(
    /// MQTT-3.3.2-5: a queued message whose Message Expiry Interval (1 s)
    /// passed is not delivered; MQTT-3.3.2-6: one still valid (100 s) carries
    /// the interval less the time it waited; one without expiry has none.
    mqtt_3_3_2_5_expired_queued_message_is_not_delivered,
    |b: &TestBroker| {
        let (mut sub, _) = session(b, "away", false, 60);
        sub.subscribe("exp/#", 1);
        sub.disconnect();
        let mut p = V5::client(b.addr, "pub");
        p.publish_with(message("exp/long", b"long", 1, |m| m.message_expiry = Some(100)));
        p.publish_with(message("exp/short", b"short", 1, |m| m.message_expiry = Some(1)));
        p.publish("exp/never", b"never", 1);
        std::thread::sleep(Duration::from_millis(2200));
        let (mut sub, present) = session(b, "away", false, 60);
        assert!(present);
        let got = drain_after(&mut sub, 2, true);
        let topics: Vec<&str> = got.iter().map(|m| &*m.topic).collect();
        assert_eq!(topics, ["exp/long", "exp/never"], "MQTT-3.3.2-5");
        let left = got[0].properties.message_expiry.expect("remaining expiry");
        assert!((90..=98).contains(&left), "MQTT-3.3.2-6: 100 s less >= 2 s waited, got {left}");
        assert_eq!(got[1].properties.message_expiry, None);
    }
);

runtime_test!(
    /// 3.3.2.3.3: a retained message expires with its Message Expiry
    /// Interval (then a new subscriber does not get it); an unexpired one is
    /// delivered with RETAIN 1 and its remaining interval.
    mqtt_3_3_2_5_retained_message_expires,
    |b: &TestBroker| {
        let mut p = V5::client(b.addr, "pub");
        let retained = |topic: &str, expiry: u32| Publish {
            retain: true,
            ..message(topic, b"retained", 1, |m| m.message_expiry = Some(expiry))
        };
        p.publish_with(retained("ret/short", 1));
        p.publish_with(retained("ret/long", 100));
        std::thread::sleep(Duration::from_millis(2200));
        let mut sub = V5::client(b.addr, "late");
        sub.subscribe("ret/#", 1);
        let got = drain_after(&mut sub, 1, true);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(&*got[0].topic, "ret/long");
        assert!(got[0].retain);
        let left = got[0].properties.message_expiry.expect("remaining expiry");
        assert!((90..=98).contains(&left), "{left}");
    }
);

runtime_test!(
    /// MQTT-3.3.2-12: the server accepts every Topic Alias from 1 to the
    /// Topic Alias Maximum of its CONNACK: an alias set with a topic stands
    /// for it in later PUBLISHes with an empty topic, and may be re-mapped.
    mqtt_3_3_2_12_inbound_topic_alias_up_to_the_maximum,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("ta/#", 0);
        let (mut p, connack) = V5::accepted(b.addr, "aliaser", |_| {});
        let max = connack.properties.topic_alias_maximum.unwrap_or(0);
        assert!(max >= 1, "midge announces a Topic Alias Maximum");
        let aliased = |topic: &str, alias: u16, payload: &[u8]| Publish {
            topic_alias: Some(alias),
            ..publish_packet(topic, payload, 1)
        };
        p.publish_with(aliased("ta/one", 1, b"1"));
        p.publish_with(aliased("ta/top", max, b"2"));
        p.publish_with(aliased("", 1, b"3"));
        p.publish_with(aliased("", max, b"4"));
        p.publish_with(aliased("ta/three", 1, b"5"));
        p.publish_with(aliased("", 1, b"6"));
        let got: Vec<(String, Vec<u8>)> =
            (0..6).map(|_| sub.recv_publish()).map(|m| (m.topic.to_string(), m.payload.to_vec())).collect();
        let expected = [("ta/one", "1"), ("ta/top", "2"), ("ta/one", "3"), ("ta/top", "4"), ("ta/three", "5"), ("ta/three", "6")];
        let expected: Vec<(String, Vec<u8>)> = expected.iter().map(|(t, m)| (t.to_string(), m.as_bytes().to_vec())).collect();
        assert_eq!(got, expected);
    }
);

runtime_test!(
    /// MQTT-3.3.2-8 (3.3.2.3.4): Topic Alias 0 from a client gets DISCONNECT
    /// 0x94 (Topic Alias invalid); the spec names no code for this case, so
    /// 0x82 (Protocol Error) and 0x81 (Malformed, Mosquitto 2.0's answer) pass.
    mqtt_3_3_2_8_topic_alias_0_gets_0x94,
    |b: &TestBroker| {
        let reasons = [R::TOPIC_ALIAS_INVALID, R::PROTOCOL_ERROR, R::MALFORMED_PACKET];
        refused_with(b, &publish_raw("t", &[0x23, 0x00, 0x00], b"x"), &reasons)
    }
);

runtime_test!(
    /// MQTT-3.3.2-9 (3.3.2.3.4): a Topic Alias above the server's Topic Alias
    /// Maximum gets DISCONNECT 0x94.
    mqtt_3_3_2_9_topic_alias_above_the_maximum_gets_0x94,
    |b: &TestBroker| {
        let mut by = bystander(b);
        let (mut c, connack) = V5::accepted(b.addr, "over", |_| {});
        let max = connack.properties.topic_alias_maximum.unwrap_or(0);
        c.send(&Packet::Publish(Publish { topic_alias: Some(max + 1), ..publish_packet("t", b"x", 0) }));
        c.expect_disconnect(R::TOPIC_ALIAS_INVALID);
        still_served(b, &mut by);
    }
);

runtime_test!(
    /// 3.2.2.3.8, MQTT-3.2.2-17 broken by the client: with max_topic_alias 0
    /// the CONNACK announces no Topic Alias Maximum (absent or 0), and any
    /// Topic Alias gets DISCONNECT 0x94.
    mqtt_3_2_2_3_8_topic_aliases_off_gets_0x94,
    |c: &mut Config| c.max_topic_alias = 0,
    |b: &TestBroker| {
        let (_c, connack) = V5::accepted(b.addr, "probe", |_| {});
        assert!(matches!(connack.properties.topic_alias_maximum, None | Some(0)), "{connack:?}");
        let aliased = Publish { topic_alias: Some(1), ..publish_packet("t", b"x", 0) };
        refused_with(b, &encoded(&Packet::Publish(aliased)), &[R::TOPIC_ALIAS_INVALID]);
    }
);

runtime_test!(
    /// 3.3.2.3.4, MQTT-3.3.2-7: an empty topic with an alias never set on
    /// this connection is a Protocol Error (DISCONNECT 0x82), also when an
    /// earlier connection of the same client set it.
    mqtt_3_3_2_7_unknown_topic_alias_gets_0x82,
    |b: &TestBroker| {
        let unknown = Publish { topic_alias: Some(1), ..publish_packet("", b"x", 0) };
        refused_with(b, &encoded(&Packet::Publish(unknown.clone())), &[R::PROTOCOL_ERROR]);
        let (mut c, _) = session(b, "forgetful", false, 60);
        c.publish_with(Publish { topic_alias: Some(1), ..publish_packet("fg/t", b"x", 1) });
        c.disconnect();
        let (mut c, _) = session(b, "forgetful", false, 60);
        c.send(&Packet::Publish(unknown));
        c.expect_disconnect(R::PROTOCOL_ERROR);
    }
);

runtime_test!(
    /// MQTT-3.1.2-26, MQTT-3.3.2-8, MQTT-3.3.2-7 (outbound): aliases midge
    /// sends stay within the client's Topic Alias Maximum (2), are never 0,
    /// and an empty topic only uses an alias set on the same connection;
    /// every delivery stands for the topic published.
    mqtt_3_1_2_26_outbound_topic_aliases_stay_within_the_clients_maximum,
    |b: &TestBroker| {
        let mut p = V5::client(b.addr, "pub");
        for round in 0..2 {
            let (mut sub, _) = V5::accepted(b.addr, "aliased", |c| c.properties.topic_alias_maximum = Some(2));
            sub.subscribe("out/#", 1);
            let topics: Vec<String> = (0..12).map(|i| format!("out/{}", ["a", "b", "c"][i % 3])).collect();
            for t in &topics {
                p.publish(t, t.as_bytes(), 1);
            }
            let mut aliases = HashMap::new();
            for t in &topics {
                let got = sub.recv_and_ack();
                assert_eq!(&resolve(&mut aliases, &got, 2), t, "round {round}");
                assert_eq!(&got.payload[..], t.as_bytes());
            }
            sub.disconnect();
        }
    }
);

runtime_test!(
    /// MQTT-3.1.2-27: a client that sent no Topic Alias Maximum, or 0, gets
    /// no Topic Alias.
    mqtt_3_1_2_27_no_topic_alias_without_a_client_maximum,
    |b: &TestBroker| {
        let mut p = V5::client(b.addr, "pub");
        for max in [None, Some(0)] {
            let (mut sub, _) = V5::accepted(b.addr, "plain", |c| c.properties.topic_alias_maximum = max);
            sub.subscribe("na/#", 0);
            for _ in 0..3 {
                p.publish("na/t", b"x", 1);
                let got = sub.recv_publish();
                assert_eq!((got.topic_alias, &*got.topic), (None, "na/t"), "maximum {max:?}");
            }
            sub.disconnect();
        }
    }
);

runtime_test!(
    /// MQTT-3.3.4-3 with -4 or -5: overlapping subscriptions with identifiers
    /// 5 and 7 and one without: either one copy carrying 5 and 7 (in any
    /// order), or one copy per subscription carrying its own identifier.
    mqtt_3_3_4_3_delivery_carries_the_subscription_identifiers,
    |b: &TestBroker| {
        let (mut sub, connack) = V5::accepted(b.addr, "ids", |_| {});
        assert_ne!(connack.properties.subscription_ids_available, Some(false));
        assert_eq!(sub.subscribe_opts("sid/+", options(1), Some(5)), R(1));
        assert_eq!(sub.subscribe_opts("sid/x", options(1), Some(7)), R(1));
        assert_eq!(sub.subscribe_opts("sid/#", options(1), None), R(1));
        let mut p = V5::client(b.addr, "pub");
        p.publish("sid/x", b"x", 1);
        let mut got = drain_after(&mut sub, 1, true);
        if got.len() < 3 && got[0].subscription_ids.len() < 2 {
            got.extend(drain_after(&mut sub, 3 - got.len(), true));
        }
        let mut ids: Vec<Vec<u32>> = got
            .iter()
            .map(|m| {
                let mut ids = m.subscription_ids.clone();
                ids.sort();
                ids
            })
            .collect();
        ids.sort();
        assert!(
            ids == [vec![5, 7]] || ids == [vec![], vec![5], vec![7]],
            "MQTT-3.3.4-4/-5: got identifiers {ids:?}"
        );
        p.publish("sid/y", b"y", 1);
        let got = drain_after(&mut sub, 1, true);
        let ids: Vec<Vec<u32>> = got.iter().map(|m| m.subscription_ids.clone()).collect();
        assert!(ids == [vec![5]] || ids == [vec![], vec![5]] || ids == [vec![5], vec![]], "{ids:?}");
    }
);

runtime_test!(
    /// MQTT-3.3.4-6: a PUBLISH from a client with a Subscription Identifier
    /// is a Protocol Error (DISCONNECT 0x82).
    mqtt_3_3_4_6_publish_with_a_subscription_identifier_gets_0x82,
    |b: &TestBroker| refused_with(b, &publish_raw("t", &[0x0b, 0x01], b"x"), &[R::PROTOCOL_ERROR])
);

runtime_test!(
    /// MQTT-3.3.2-2: a Topic Name with a wildcard is refused: DISCONNECT 0x90
    /// (Topic Name invalid), 0x82 or 0x81; at QoS 1 a PUBACK 0x90 also
    /// passes. Nothing reaches a `#` subscriber.
    mqtt_3_3_2_2_wildcard_in_a_topic_name_is_refused,
    |b: &TestBroker| {
        let mut all = V5::client(b.addr, "all");
        all.subscribe("#", 1);
        let reasons = [R::TOPIC_NAME_INVALID, R::PROTOCOL_ERROR, R::MALFORMED_PACKET];
        refused_with(b, &encoded(&Packet::Publish(publish_packet("w/+", b"x", 0))), &reasons);
        let mut c = V5::client(b.addr, "wild");
        c.send(&Packet::Publish(Publish { pid: Some(1), ..publish_packet("w/#", b"x", 1) }));
        match c.recv() {
            Packet::Puback(a) => assert_eq!(a.reason, R::TOPIC_NAME_INVALID),
            Packet::Disconnect(d) => {
                assert!(reasons.contains(&d.reason), "{d:?}");
                c.expect_closed();
            }
            other => panic!("expected PUBACK 0x90 or DISCONNECT, got {other:?}"),
        }
        let got = drain(&mut all, true);
        assert!(got.iter().all(|m| &*m.topic == "bystander/t" || m.retain), "{got:?}");
    }
);

runtime_test!(
    /// MQTT-3.3.2-14: a Response Topic with a wildcard is refused (DISCONNECT
    /// 0x82, 0x81 or 0x90, or at QoS 1 a PUBACK of 0x80 or above) and not
    /// forwarded.
    mqtt_3_3_2_14_wildcard_in_a_response_topic_is_refused,
    |b: &TestBroker| {
        let mut all = V5::client(b.addr, "all");
        all.subscribe("rt/#", 1);
        let mut c = V5::client(b.addr, "asker");
        c.send(&Packet::Publish(Publish {
            pid: Some(1),
            ..message("rt/q", b"?", 1, |m| m.response_topic = Some("rt/answers/#".into()))
        }));
        match c.recv() {
            Packet::Puback(a) => assert!(a.reason.is_error(), "{a:?}"),
            Packet::Disconnect(d) => {
                let reasons = [R::PROTOCOL_ERROR, R::MALFORMED_PACKET, R::TOPIC_NAME_INVALID];
                assert!(reasons.contains(&d.reason), "{d:?}");
                c.expect_closed();
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        all.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.3.1-5/-6/-7/-8: a retained message replaces the topic's
    /// retained one; a PUBLISH with RETAIN 0 leaves it; an empty retained
    /// payload is delivered to current subscribers and removes it (nothing
    /// for a later subscriber).
    mqtt_3_3_1_6_empty_retained_payload_clears_the_retained_message,
    |b: &TestBroker| {
        let mut p = V5::client(b.addr, "pub");
        for payload in [&b"first"[..], b"second"] {
            p.publish_with(Publish { retain: true, ..publish_packet("er/t", payload, 1) });
        }
        let mut early = V5::client(b.addr, "early");
        early.subscribe("er/t", 1);
        let got = drain(&mut early, true);
        assert_eq!(got.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(), [&b"second"[..]], "MQTT-3.3.1-5");
        p.publish("er/t", b"not retained", 1);
        assert_eq!(&early.recv_and_ack().payload[..], b"not retained");
        let mut middle = V5::client(b.addr, "middle");
        middle.subscribe("er/t", 1);
        let got = drain_after(&mut middle, 1, true);
        assert_eq!(&got[0].payload[..], b"second", "MQTT-3.3.1-8: RETAIN 0 leaves the retained message");
        p.publish_with(Publish { retain: true, ..publish_packet("er/t", b"", 1) });
        assert!(early.recv_and_ack().payload.is_empty(), "MQTT-3.3.1-6: delivered normally");
        let mut late = V5::client(b.addr, "late");
        late.subscribe("er/t", 1);
        late.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.4.0-1, MQTT-3.3.1-1: a resumed session gets its unacknowledged
    /// QoS 1 PUBLISH again (DUP 1, same packet id) and the PUBREL of a QoS 2
    /// message it had PUBREC'd.
    mqtt_4_4_0_1_unacknowledged_messages_are_resent_on_resume,
    |b: &TestBroker| {
        let (mut sub, _) = session(b, "resume", false, 60);
        sub.subscribe("rs/#", 2);
        let mut p = V5::client(b.addr, "pub");
        p.publish("rs/1", b"one", 1);
        p.publish("rs/2", b"two", 2);
        let one = sub.recv_publish();
        let two = sub.recv_publish();
        let (one_pid, two_pid) = (one.pid.unwrap(), two.pid.unwrap());
        sub.send(&Packet::Pubrec(Ack::success(two_pid)));
        assert!(matches!(sub.recv(), Packet::Pubrel(a) if a.pid == two_pid));
        drop(sub);
        let (mut sub, present) = session(b, "resume", false, 60);
        assert!(present);
        let (mut republished, mut released) = (false, false);
        for _ in 0..2 {
            match sub.recv() {
                Packet::Publish(m) => {
                    assert_eq!((m.pid, m.dup, &m.payload[..]), (Some(one_pid), true, &b"one"[..]));
                    sub.ack(&m);
                    republished = true;
                }
                Packet::Pubrel(a) => {
                    assert_eq!(a.pid, two_pid);
                    sub.send(&Packet::Pubcomp(Ack::success(two_pid)));
                    released = true;
                }
                other => panic!("expected the PUBLISH again or the PUBREL, got {other:?}"),
            }
        }
        assert!(republished && released);
        sub.expect_nothing_queued();
    }
);

// ---------------------------------------------------------------------------
// c. Acknowledgements

runtime_test!(
    /// 3.7.2.1: a PUBREL for a packet id the server does not know is answered
    /// with PUBCOMP 0x92 (Packet Identifier not found), and the connection
    /// stays.
    mqtt_3_7_2_1_pubrel_for_an_unknown_id_gets_pubcomp_0x92,
    |b: &TestBroker| {
        let mut c = V5::client(b.addr, "stray");
        c.send(&Packet::Pubrel(Ack::success(4242)));
        match c.recv() {
            Packet::Pubcomp(a) => assert_eq!((a.pid, a.reason), (4242, R::PACKET_IDENTIFIER_NOT_FOUND)),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        c.ping();
    }
);

runtime_test!(
    /// MQTT-4.3.3-4, MQTT-4.4.0-2: a PUBREC of 0x80 or above ends the QoS 2
    /// flow: no PUBREL follows, the message is not sent again, and the send
    /// quota is returned (the next message flows with Receive Maximum 1).
    mqtt_4_3_3_4_pubrec_error_ends_the_qos_2_flow,
    |b: &TestBroker| {
        let (mut sub, _) = V5::accepted(b.addr, "refuser", |c| {
            c.clean_start = false;
            c.properties.session_expiry = Some(60);
            c.properties.receive_maximum = Some(1);
        });
        sub.subscribe("q2/t", 2);
        let mut p = V5::client(b.addr, "pub");
        p.publish("q2/t", b"refused", 2);
        p.publish("q2/t", b"accepted", 2);
        let first = sub.recv_publish();
        assert_eq!(&first.payload[..], b"refused");
        sub.send(&Packet::Pubrec(Ack {
            pid: first.pid.unwrap(),
            reason: R::UNSPECIFIED_ERROR,
            properties: Properties::default(),
        }));
        let second = sub.recv_and_ack();
        assert_eq!(&second.payload[..], b"accepted");
        sub.expect_nothing_queued();
        sub.disconnect();
        let (mut sub, present) = session(b, "refuser", false, 60);
        assert!(present);
        sub.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// 3.4.2.1, 3.5.2.1, 3.9.3: a PUBLISH the ACL denies gets PUBACK or
    /// PUBREC 0x87 (Not authorized) and is not delivered (after that PUBREC
    /// the packet id is free again, MQTT-4.3.3-9); a SUBSCRIBE the ACL
    /// denies gets SUBACK 0x87 for that filter.
    mqtt_3_9_3_2_acl_refusals_get_0x87,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("v5-acl");
        let (passwords, acl) = (crate::security::password_file(&dir), dir.0.join("acl"));
        std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n\nuser bob\ntopic readwrite bob/#\n").unwrap();
        let b = TestBroker::start(kind, |c| {
            c.password_file = Some(passwords);
            c.acl_file = Some(acl);
        });
        let login = |id: &str, user: &str, password: &'static [u8]| {
            V5::accepted(b.addr, id, |c| {
                c.username = Some(user.into());
                c.password = Some(Bytes::from_static(password));
            })
            .0
        };
        let mut alice = login("alice-1", "alice", b"wonderland");
        let s = Subscribe {
            pid: 1,
            subscription_id: None,
            properties: Properties::default(),
            filters: vec![("alice/#".into(), options(1)), ("bob/#".into(), options(1))],
        };
        assert_eq!(alice.subscribe_with(s).reasons, [R(1), R::NOT_AUTHORIZED]);
        let mut bob = login("bob-1", "bob", b"builder");
        bob.send(&Packet::Publish(Publish { pid: Some(3), ..publish_packet("alice/x", b"no", 1) }));
        match bob.recv() {
            Packet::Puback(a) => assert_eq!((a.pid, a.reason), (3, R::NOT_AUTHORIZED)),
            other => panic!("expected PUBACK 0x87, got {other:?}"),
        }
        bob.send(&Packet::Publish(Publish { pid: Some(5), ..publish_packet("alice/x", b"no", 2) }));
        match bob.recv() {
            Packet::Pubrec(a) => assert_eq!((a.pid, a.reason), (5, R::NOT_AUTHORIZED)),
            other => panic!("expected PUBREC 0x87, got {other:?}"),
        }
        // MQTT-4.3.3-9: after a PUBREC of 0x80 or above the id is free.
        bob.publish_with(Publish { pid: Some(5), ..publish_packet("bob/x", b"yes", 2) });
        alice.expect_nothing_queued();
    }
);

// ---------------------------------------------------------------------------
// d. SUBSCRIBE / UNSUBSCRIBE

runtime_test!(
    /// MQTT-3.8.3-3: with No Local a client's own messages are not sent back
    /// to it; others' are.
    mqtt_3_8_3_3_no_local_skips_the_publishers_own_messages,
    |b: &TestBroker| {
        let mut c = V5::client(b.addr, "self");
        let no_local = SubscriptionOptions { no_local: true, ..options(1) };
        assert_eq!(c.subscribe_opts("nl/t", no_local, None), R(1));
        c.publish("nl/t", b"mine", 1);
        c.expect_nothing_queued();
        let mut other = V5::client(b.addr, "other");
        other.publish("nl/t", b"theirs", 1);
        assert_eq!(&c.recv_and_ack().payload[..], b"theirs");
    }
);

runtime_test!(
    /// MQTT-3.3.1-12/-13: Retain As Published 0 forwards a retained PUBLISH
    /// with RETAIN 0, 1 keeps RETAIN 1; a retained message sent on subscribe
    /// has RETAIN 1 either way (3.3.1.3).
    mqtt_3_3_1_13_retain_as_published,
    |b: &TestBroker| {
        let mut keep = V5::client(b.addr, "rap1");
        let rap = SubscriptionOptions { retain_as_published: true, ..options(1) };
        assert_eq!(keep.subscribe_opts("rap/t", rap, None), R(1));
        let mut clear = V5::client(b.addr, "rap0");
        clear.subscribe("rap/t", 1);
        let mut p = V5::client(b.addr, "pub");
        p.publish_with(Publish { retain: true, ..publish_packet("rap/t", b"r", 1) });
        assert!(keep.recv_and_ack().retain, "MQTT-3.3.1-13");
        assert!(!clear.recv_and_ack().retain, "MQTT-3.3.1-12");
        let mut late = V5::client(b.addr, "late");
        late.subscribe("rap/t", 1);
        assert!(late.recv_and_ack().retain, "retained on subscribe: RETAIN 1");
    }
);

/// A client subscribing to `rh/t` (which holds a retained message) with
/// `handling`, twice: how many retained messages each SUBSCRIBE brought.
fn retained_per_subscribe(b: &TestBroker, handling: RetainHandling) -> [usize; 2] {
    let mut p = V5::client(b.addr, "pub");
    p.publish_with(Publish { retain: true, ..publish_packet("rh/t", b"kept", 1) });
    let mut c = V5::client(b.addr, "rh");
    let opts = SubscriptionOptions { retain_handling: handling, ..options(1) };
    [0, 1].map(|_| {
        assert_eq!(c.subscribe_opts("rh/t", opts, None), R(1));
        let got = drain(&mut c, true);
        assert!(got.iter().all(|m| m.retain && &m.payload[..] == b"kept"), "{got:?}");
        got.len()
    })
}

runtime_test!(
    /// MQTT-3.3.1-9, MQTT-3.8.4-4: Retain Handling 0 sends the retained
    /// message on every SUBSCRIBE, also one that replaces the subscription.
    mqtt_3_3_1_9_retain_handling_0_sends_retained_on_every_subscribe,
    |b: &TestBroker| assert_eq!(retained_per_subscribe(b, RetainHandling::OnSubscribe), [1, 1])
);

runtime_test!(
    /// MQTT-3.3.1-10: Retain Handling 1 sends the retained message only when
    /// the subscription is new.
    mqtt_3_3_1_10_retain_handling_1_only_for_a_new_subscription,
    |b: &TestBroker| assert_eq!(retained_per_subscribe(b, RetainHandling::OnNewSubscription), [1, 0])
);

runtime_test!(
    /// MQTT-3.3.1-11: Retain Handling 2 sends no retained message.
    mqtt_3_3_1_11_retain_handling_2_sends_no_retained,
    |b: &TestBroker| assert_eq!(retained_per_subscribe(b, RetainHandling::Never), [0, 0])
);

runtime_test!(
    /// MQTT-3.9.3-1/-2, MQTT-3.8.4-7/-8: one SUBACK reason code per filter, in
    /// order, granting QoS 0, 1 and 2; delivery at the lower of the published
    /// and the granted QoS.
    mqtt_3_9_3_2_suback_grants_each_filters_qos,
    |b: &TestBroker| {
        let mut c = V5::client(b.addr, "grants");
        let s = Subscribe {
            pid: 1,
            subscription_id: None,
            properties: Properties::default(),
            filters: vec![("g/0".into(), options(0)), ("g/1".into(), options(1)), ("g/2".into(), options(2))],
        };
        let ack = c.subscribe_with(s);
        assert_eq!(ack.reasons, [R(0), R(1), R(2)]);
        let mut p = V5::client(b.addr, "pub");
        for t in ["g/0", "g/1", "g/2"] {
            p.publish(t, b"x", 2);
        }
        let got: Vec<(String, QoS)> = drain_after(&mut c, 3, true).iter().map(|m| (m.topic.to_string(), m.qos)).collect();
        let expected = [("g/0", QoS::AtMostOnce), ("g/1", QoS::AtLeastOnce), ("g/2", QoS::ExactlyOnce)];
        assert_eq!(got, expected.map(|(t, q)| (t.to_string(), q)));
    }
);

runtime_test!(
    /// 4.7.1, 3.9.3: a filter with a misplaced wildcard gets SUBACK 0x8F
    /// (Topic Filter invalid) for that filter, or (treated as a malformed
    /// SUBSCRIBE) a DISCONNECT 0x8F, 0x81 or 0x82 and the close.
    mqtt_4_7_1_1_bad_filter_gets_0x8f_or_a_disconnect,
    |b: &TestBroker| {
        let mut by = bystander(b);
        let mut c = V5::client(b.addr, "badfilter");
        c.send(&Packet::Subscribe(Subscribe {
            pid: 1,
            subscription_id: None,
            properties: Properties::default(),
            filters: vec![("ok/t".into(), options(1)), ("bad/#/x".into(), options(1))],
        }));
        expect_filter_refused(&mut c, &[R(1)], "bad/#/x");
        still_served(b, &mut by);
    }
);

runtime_test!(
    /// MQTT-3.11.3-1/-2: UNSUBACK has one reason code per filter, in order:
    /// 0x00 for a subscription removed, 0x11 (No subscription existed) for
    /// a filter without one; after it no message arrives (MQTT-3.10.4-2).
    mqtt_3_11_3_2_unsuback_0x00_and_0x11_per_filter,
    |b: &TestBroker| {
        let mut c = V5::client(b.addr, "unsub");
        c.subscribe("u/a", 1);
        let mut unsubscribe = |filters: &[&str]| {
            c.send(&Packet::Unsubscribe(Unsubscribe {
                pid: 9,
                properties: Properties::default(),
                filters: filters.iter().map(|f| Arc::from(*f)).collect(),
            }));
            match c.recv() {
                Packet::Unsuback(a) if a.pid == 9 => a.reasons,
                other => panic!("expected UNSUBACK 9, got {other:?}"),
            }
        };
        assert_eq!(unsubscribe(&["u/a", "u/none"]), [R::SUCCESS, R::NO_SUBSCRIPTION_EXISTED]);
        assert_eq!(unsubscribe(&["u/a"]), [R::NO_SUBSCRIPTION_EXISTED]);
        let mut p = V5::client(b.addr, "pub");
        p.publish("u/a", b"x", 1);
        c.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.10.4-3: a QoS 1 delivery under way when its subscription is
    /// removed is still completed: resent (DUP 1) when the session resumes.
    mqtt_3_10_4_3_deliveries_under_way_complete_after_unsubscribe,
    |b: &TestBroker| {
        let (mut sub, _) = session(b, "leaver", false, 60);
        sub.subscribe("lv/t", 1);
        let mut p = V5::client(b.addr, "pub");
        p.publish("lv/t", b"in flight", 1);
        let first = sub.recv_publish();
        sub.send(&Packet::Unsubscribe(Unsubscribe {
            pid: 4,
            properties: Properties::default(),
            filters: vec!["lv/t".into()],
        }));
        assert!(matches!(sub.recv(), Packet::Unsuback(a) if a.reasons == [R::SUCCESS]));
        drop(sub);
        let (mut sub, present) = session(b, "leaver", false, 60);
        assert!(present);
        let again = sub.recv_publish();
        assert_eq!((again.pid, again.dup, &again.payload[..]), (first.pid, true, &b"in flight"[..]));
        sub.ack(&again);
        p.publish("lv/t", b"after", 1);
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.8.4-3: SUBSCRIBE with the filter of an existing subscription
    /// replaces it: one delivery, at the new maximum QoS.
    mqtt_3_8_4_3_same_filter_replaces_the_subscription,
    |b: &TestBroker| {
        let mut c = V5::client(b.addr, "again");
        c.subscribe("rep/t", 0);
        c.subscribe("rep/t", 1);
        let mut p = V5::client(b.addr, "pub");
        p.publish("rep/t", b"x", 1);
        let got = drain_after(&mut c, 1, true);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
    }
);

runtime_test!(
    /// MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error
    /// (DISCONNECT 0x82).
    mqtt_3_8_3_4_no_local_on_a_shared_subscription_gets_0x82,
    |b: &TestBroker| {
        let s = subscribe_one("$share/g/t", SubscriptionOptions { no_local: true, ..options(0) });
        refused_with(b, &encoded(&Packet::Subscribe(s)), &[R::PROTOCOL_ERROR])
    }
);

runtime_test!(
    /// MQTT-3.8.3-5: reserved bits in the Subscription Options make the
    /// SUBSCRIBE malformed (DISCONNECT 0x81).
    mqtt_3_8_3_5_reserved_subscription_option_bits_get_0x81,
    |b: &TestBroker| {
        let mut body = vec![0, 1, 0];
        body.extend(field(b"t"));
        body.push(0x40 | 1);
        refused_with(b, &frame(0x82, &body), &[R::MALFORMED_PACKET])
    }
);

// ---------------------------------------------------------------------------
// e. Flow control

runtime_test!(
    /// MQTT-3.3.4-9, MQTT-4.9.0-2: a client's Receive Maximum (2) bounds the
    /// unacknowledged QoS 1 PUBLISHes midge sends it; MQTT-3.3.4-10,
    /// MQTT-4.9.0-3: PINGRESP still flows at zero quota; each PUBACK lets one
    /// more through, in order.
    mqtt_3_3_4_9_client_receive_maximum_bounds_unacknowledged_publishes,
    |b: &TestBroker| {
        let (mut sub, _) = V5::accepted(b.addr, "slow", |c| c.properties.receive_maximum = Some(2));
        sub.subscribe("rm/t", 1);
        let mut p = V5::client(b.addr, "pub");
        for i in 0..5u8 {
            p.publish("rm/t", &[i], 1);
        }
        let mut window: Vec<Publish> = drain_after(&mut sub, 2, false);
        assert_eq!(window.len(), 2, "MQTT-3.3.4-9: {window:?}");
        let (mut seen, mut received) = (Vec::new(), 2);
        while let Some(first) = (!window.is_empty()).then(|| window.remove(0)) {
            seen.push(first.payload[0]);
            sub.ack(&first);
            let more = drain_after(&mut sub, usize::from(received < 5), false);
            received += more.len();
            window.extend(more);
            assert!(window.len() <= 2, "{window:?}");
        }
        assert_eq!(seen, [0, 1, 2, 3, 4]);
    }
);

runtime_test!(
    /// 3.3.4 (MQTT-3.3.4-7 broken by the client): more unacknowledged QoS 2
    /// PUBLISHes than midge's Receive Maximum (max_inflight 3) get DISCONNECT
    /// 0x93 (Receive Maximum exceeded).
    mqtt_3_3_4_7_client_over_the_receive_maximum_gets_0x93,
    |c: &mut Config| c.max_inflight = 3,
    |b: &TestBroker| {
        let mut by = bystander(b);
        let (mut c, connack) = V5::accepted(b.addr, "flood", |_| {});
        assert_eq!(connack.properties.receive_maximum, Some(3));
        for pid in 1..=3 {
            c.send(&Packet::Publish(Publish { pid: Some(pid), ..publish_packet("fl/t", b"x", 2) }));
            match c.recv() {
                Packet::Pubrec(a) => assert_eq!(a.pid, pid),
                other => panic!("expected PUBREC {pid}, got {other:?}"),
            }
        }
        c.send(&Packet::Publish(Publish { pid: Some(4), ..publish_packet("fl/t", b"x", 2) }));
        c.expect_disconnect(R::RECEIVE_MAXIMUM_EXCEEDED);
        still_served(b, &mut by);
    }
);

runtime_test!(
    /// MQTT-3.1.2-24/-25: a message whose PUBLISH would exceed the client's
    /// Maximum Packet Size (64) is not sent to it, and is handled as if
    /// delivered (it holds no send quota: Receive Maximum 1); later ones are.
    mqtt_3_1_2_25_packet_over_the_clients_maximum_is_dropped,
    |b: &TestBroker| {
        let (mut sub, _) = V5::accepted(b.addr, "small", |c| {
            c.properties.maximum_packet_size = Some(64);
            c.properties.receive_maximum = Some(1);
        });
        sub.subscribe("mps/t", 1);
        let mut p = V5::client(b.addr, "pub");
        p.publish("mps/t", &[b'x'; 200], 1);
        p.publish("mps/t", b"small", 1);
        let got = drain_after(&mut sub, 1, true);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(&got[0].payload[..], b"small");
    }
);

// ---------------------------------------------------------------------------
// f. DISCONNECT from the server

runtime_kind_test!(
    /// 3.14.2.1: a broker shutting down sends DISCONNECT 0x8B (Server
    /// shutting down) to its 5.0 clients before closing.
    mqtt_3_14_2_1_shutdown_sends_disconnect_0x8b,
    |kind: midge::RuntimeKind| {
        let b = TestBroker::start(kind, |_| {});
        let mut c = V5::client(b.addr, "stay");
        c.ping();
        let stopping = std::thread::spawn(move || drop(b));
        c.expect_disconnect(R::SERVER_SHUTTING_DOWN);
        stopping.join().unwrap();
    }
);

runtime_test!(
    /// 3.2.2.3.6 (the server's Maximum Packet Size): a packet larger than the
    /// one announced (1024) gets DISCONNECT 0x95 (Packet too large).
    mqtt_3_2_2_3_6_packet_over_the_servers_maximum_gets_0x95,
    |c: &mut Config| c.max_packet_size = 1024,
    |b: &TestBroker| {
        refused_with(b, &encoded(&Packet::Publish(publish_packet("big/t", &[0; 2000], 0))), &[R::PACKET_TOO_LARGE])
    }
);

runtime_test!(
    /// MQTT-3.14.1-1: a DISCONNECT with reserved flag bits gets DISCONNECT
    /// 0x81 (Malformed Packet).
    mqtt_3_14_1_1_disconnect_reserved_bits_get_0x81,
    |b: &TestBroker| refused_with(b, &[0xe1, 0x00], &[R::MALFORMED_PACKET])
);

runtime_test!(
    /// MQTT-1.5.4-1/-2, MQTT-4.13.1-1: a topic that is not well-formed UTF-8,
    /// or holds U+0000, is malformed (DISCONNECT 0x81).
    mqtt_1_5_4_1_ill_formed_utf8_gets_0x81,
    |b: &TestBroker| {
        let mut body = field(b"bad\xff");
        body.push(0);
        refused_with(b, &frame(0x30, &body), &[R::MALFORMED_PACKET]);
        refused_with(b, &publish_raw("nul\0", &[], b""), &[R::MALFORMED_PACKET]);
    }
);

runtime_test!(
    /// MQTT-3.1.0-1, MQTT-3.14.0-1: a first packet other than CONNECT closes
    /// the connection without any answer (no DISCONNECT before a CONNACK).
    mqtt_3_1_0_1_first_packet_not_connect_closes_silently,
    |b: &TestBroker| {
        let mut by = bystander(b);
        let mut c = V5::over(b.raw());
        c.send(&Packet::Publish(publish_packet("t", b"x", 0)));
        c.expect_closed();
        still_served(b, &mut by);
    }
);

/// A 5.0 CONNECT with connect flags `flags` (keep alive 60 s, no
/// properties, client id `c`) followed by `rest`.
fn connect_flags(flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.extend([5, flags, 0, 60, 0]);
    body.extend(field(b"c"));
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

runtime_test!(
    /// MQTT-3.1.2-3, -11, -12, -13 (4.13.1): a CONNECT with the reserved flag,
    /// a Will QoS or Will Retain without the Will Flag, or Will QoS 3 is
    /// malformed: CONNACK 0x81 and the close; so is one whose flags announce
    /// a will, a User Name or a Password that is missing, or that carries a
    /// field no flag announces (MQTT-3.1.2-9, -16 to -19, MQTT-3.1.3-1), or
    /// that has no client id (MQTT-3.1.3-3).
    mqtt_3_1_2_3_malformed_connect_flags_get_connack_0x81,
    |b: &TestBroker| {
        for flags in [0x03, 0x0a, 0x22, 0x1e] {
            connect_refused_with(b, &connect_flags(flags, &[]), R::MALFORMED_PACKET);
        }
        // Flagged fields missing (MQTT-3.1.2-9, -17, -19), and a field
        // without its flag (MQTT-3.1.2-16, -18, MQTT-3.1.3-1).
        for (flags, rest) in [(0x06, &[][..]), (0x82, &[]), (0x42, &[]), (0x02, &[0, 1, b'u'][..])] {
            connect_refused_with(b, &connect_flags(flags, rest), R::MALFORMED_PACKET);
        }
        // No client id at all (MQTT-3.1.3-3).
        let mut body = field(b"MQTT");
        body.extend([5, 0x02, 0, 60, 0]);
        connect_refused_with(b, &frame(0x10, &body), R::MALFORMED_PACKET);
    }
);

runtime_test!(
    /// MQTT-2.1.3-1, MQTT-3.3.1-2, MQTT-3.3.1-4, MQTT-3.6.1-1, MQTT-3.8.1-1,
    /// MQTT-3.10.1-1, MQTT-3.15.1-1: wrong fixed-header flags (DUP on a QoS 0
    /// PUBLISH, QoS 3, PUBREL / SUBSCRIBE / UNSUBSCRIBE without 0010, AUTH
    /// with flags) are malformed: DISCONNECT 0x81.
    mqtt_2_1_3_1_wrong_fixed_header_flags_get_0x81,
    |b: &TestBroker| {
        let mut publish = field(b"t");
        publish.push(0);
        let mut sub = vec![0, 1, 0];
        sub.extend(field(b"t"));
        sub.push(0);
        let mut unsub = vec![0, 1, 0];
        unsub.extend(field(b"t"));
        let cases = [
            frame(0x38, &publish),
            frame(0x36, &[publish.clone(), vec![0, 1]].concat()),
            frame(0x60, &[0, 1]),
            frame(0x80, &sub),
            frame(0xa0, &unsub),
            frame(0xf1, &[0x19, 0]),
        ];
        for bad in cases {
            refused_with(b, &bad, &[R::MALFORMED_PACKET]);
        }
    }
);

runtime_test!(
    /// MQTT-3.8.3-2, MQTT-3.10.3-2: a SUBSCRIBE or UNSUBSCRIBE without a
    /// topic filter is a Protocol Error: DISCONNECT 0x82.
    mqtt_3_8_3_2_subscribe_or_unsubscribe_without_filters_get_0x82,
    |b: &TestBroker| {
        refused_with(b, &frame(0x82, &[0, 1, 0]), &[R::PROTOCOL_ERROR]);
        refused_with(b, &frame(0xa2, &[0, 1, 0]), &[R::PROTOCOL_ERROR]);
    }
);

runtime_test!(
    /// MQTT-1.5.7-1, MQTT-3.3.2-13, MQTT-3.3.2-19: ill-formed UTF-8 in a
    /// Content Type, a Response Topic or either half of a User Property makes
    /// the PUBLISH malformed: DISCONNECT 0x81.
    mqtt_1_5_7_1_ill_formed_utf8_in_properties_gets_0x81,
    |b: &TestBroker| {
        let bad = field(b"\xc3\x28");
        let good = field(b"ok");
        let cases = [
            [&[0x03][..], &bad].concat(),
            [&[0x08][..], &bad].concat(),
            [&[0x26][..], &bad, &good].concat(),
            [&[0x26][..], &good, &bad].concat(),
        ];
        for props in cases {
            refused_with(b, &publish_raw("t", &props, b"x"), &[R::MALFORMED_PACKET]);
        }
    }
);

runtime_test!(
    /// MQTT-1.5.4-3, MQTT-4.7.3-4: a U+FEFF (EF BB BF) in a topic or a User
    /// Property is kept as it is, neither skipped nor stripped.
    mqtt_1_5_4_3_byte_order_mark_is_kept,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "bom");
        sub.subscribe("\u{feff}bom/#", 0);
        let mut p = V5::client(b.addr, "pub");
        p.publish_with(message("\u{feff}bom/t", b"x", 0, |m| m.user = user_properties(&[("\u{feff}k", "v\u{feff}")])));
        let got = sub.recv_publish();
        assert_eq!(&*got.topic, "\u{feff}bom/t");
        assert_eq!(got.properties.user, user_properties(&[("\u{feff}k", "v\u{feff}")]));
        p.publish("bom/t", b"no bom", 0);
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.3.3-8/-10/-11/-12, MQTT-4.3.2-4/-5, MQTT-3.3.1-3: a QoS 2
    /// PUBLISH sent again (DUP) before PUBREL gets PUBREC again and is
    /// delivered once, with DUP 0; after PUBCOMP, and for QoS 1 after PUBACK,
    /// the same packet id is a new message.
    mqtt_4_3_3_10_repeated_qos_2_publish_is_delivered_once,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("once/#", 2);
        let mut p = V5::client(b.addr, "pub");
        let first = Publish { pid: Some(7), ..publish_packet("once/2", b"a", 2) };
        for dup in [false, true] {
            p.send(&Packet::Publish(Publish { dup, ..first.clone() }));
            assert!(matches!(p.recv(), Packet::Pubrec(a) if a.pid == 7 && a.reason == R::SUCCESS));
        }
        p.send(&Packet::Pubrel(Ack::success(7)));
        assert!(matches!(p.recv(), Packet::Pubcomp(a) if a.pid == 7 && a.reason == R::SUCCESS));
        let got = drain_after(&mut sub, 1, true);
        assert_eq!(got.len(), 1, "MQTT-4.3.3-10: {got:?}");
        assert!(!got[0].dup, "MQTT-3.3.1-3: DUP of the outgoing PUBLISH is its own");
        p.publish_with(Publish { pid: Some(7), ..publish_packet("once/2", b"b", 2) });
        for payload in [&b"c"[..], b"d"] {
            p.publish_with(Publish { pid: Some(8), ..publish_packet("once/1", payload, 1) });
        }
        let got: Vec<Vec<u8>> = drain_after(&mut sub, 3, true).iter().map(|m| m.payload.to_vec()).collect();
        assert_eq!(got, [b"b".to_vec(), b"c".to_vec(), b"d".to_vec()], "MQTT-4.3.3-12, MQTT-4.3.2-5");
    }
);

runtime_test!(
    /// MQTT-4.6.0-5/-6: messages one client publishes on a topic reach a
    /// subscriber in the order they were published (QoS 1, pipelined).
    mqtt_4_6_0_5_messages_from_one_client_arrive_in_order,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("order/t", 1);
        let mut p = V5::client(b.addr, "pub");
        for i in 1..=30u16 {
            p.send(&Packet::Publish(Publish { pid: Some(i), ..publish_packet("order/t", &i.to_be_bytes(), 1) }));
        }
        for i in 1..=30u16 {
            assert!(matches!(p.recv(), Packet::Puback(a) if a.pid == i));
        }
        let got: Vec<u16> = (0..30).map(|_| sub.recv_and_ack()).map(|m| u16::from_be_bytes([m.payload[0], m.payload[1]])).collect();
        assert_eq!(got, (1..=30).collect::<Vec<u16>>());
    }
);

runtime_test!(
    /// MQTT-3.1.3-5, MQTT-3.1.3-8: a client id of 23 letters and digits is
    /// accepted; a long one with other characters is accepted or refused
    /// with CONNACK 0x85 and the close.
    mqtt_3_1_3_5_client_ids_of_23_letters_and_digits_are_accepted,
    |b: &TestBroker| {
        V5::accepted(b.addr, "abcdefghijklmnopqrstuvW", |_| {}).0.ping();
        let long = "x/y z+#-".repeat(40);
        let (mut c, connack) = V5::connect(b.addr, &long, |_| {});
        match connack.reason {
            R::SUCCESS => c.ping(),
            R::CLIENT_IDENTIFIER_NOT_VALID => c.expect_closed(),
            other => panic!("CONNACK {other} for a long client id"),
        }
    }
);

runtime_test!(
    /// MQTT-3.1.2-14/-15: a will with Will Retain 0 is published not
    /// retained, with Will Retain 1 retained (a later subscriber gets it).
    mqtt_3_1_2_15_will_retain_decides_whether_the_will_is_retained,
    |b: &TestBroker| {
        let mut live = V5::client(b.addr, "live");
        live.subscribe("wr/#", 1);
        for retain in [false, true] {
            let topic = format!("wr/{retain}");
            let mut w = will(&topic, b"bye", Properties::default());
            w.retain = retain;
            drop(V5::accepted(b.addr, "mortal", |c| c.will = Some(w)).0);
            assert_eq!(live.recv_and_ack().topic.to_string(), topic);
            let mut late = V5::client(b.addr, "late");
            late.subscribe(&topic, 1);
            let got = drain(&mut late, true);
            assert_eq!(got.iter().filter(|m| m.retain).count(), usize::from(retain), "{got:?}");
            late.disconnect();
        }
    }
);

runtime_test!(
    /// MQTT-4.7.2-1, MQTT-4.7.1-1/-2: `#` and `+/…` do not match topics that
    /// start with `$`; `+` fills exactly one level, `#` any number of levels
    /// including the parent.
    mqtt_4_7_2_1_wildcards_skip_dollar_topics,
    |b: &TestBroker| {
        let mut all = V5::client(b.addr, "all");
        all.subscribe("#", 0);
        let mut plus = V5::client(b.addr, "plus");
        plus.subscribe("+/x", 0);
        let mut dollar = V5::client(b.addr, "dollar");
        dollar.subscribe("$app/#", 0);
        let mut p = V5::client(b.addr, "pub");
        for t in ["$app/x", "a/x", "a/b/x", "a"] {
            p.publish(t, t.as_bytes(), 1);
        }
        let topics = |c: &mut V5, n| drain_after(c, n, false).iter().map(|m| m.topic.to_string()).collect::<Vec<_>>();
        assert_eq!(topics(&mut all, 3), ["a/x", "a/b/x", "a"]);
        assert_eq!(topics(&mut plus, 1), ["a/x"]);
        assert_eq!(topics(&mut dollar, 1), ["$app/x"]);
    }
);

runtime_test!(
    /// MQTT-3.1.3-4, -11, -12, MQTT-3.8.3-1, MQTT-3.10.3-1, MQTT-4.7.3-2:
    /// ill-formed UTF-8 in the client id, will topic or user name gets
    /// CONNACK 0x81 (0x85 for the client id also passes); in a SUBSCRIBE or
    /// UNSUBSCRIBE filter, or U+0000 in a filter, DISCONNECT 0x81.
    mqtt_3_1_3_4_ill_formed_utf8_in_connect_and_filters_gets_0x81,
    |b: &TestBroker| {
        let bad = field(b"\xed\xa0\x80");
        let connect = |flags: u8, id: &[u8], rest: &[u8]| {
            let mut body = field(b"MQTT");
            body.extend([5, flags, 0, 60, 0]);
            body.extend_from_slice(id);
            body.extend_from_slice(rest);
            frame(0x10, &body)
        };
        let mut c = V5::over(b.raw());
        c.send_raw(&connect(0x02, &bad, &[]));
        match c.recv() {
            Packet::Connack(a) => {
                assert!([R::MALFORMED_PACKET, R::CLIENT_IDENTIFIER_NOT_VALID].contains(&a.reason), "{a:?}")
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c.expect_closed();
        let will = [&[0][..], &bad, &field(b"bye")].concat();
        connect_refused_with(b, &connect(0x06, &field(b"c"), &will), R::MALFORMED_PACKET);
        connect_refused_with(b, &connect(0x82, &field(b"c"), &bad), R::MALFORMED_PACKET);
        for filter in [&bad[..], &field(b"a\0b")] {
            refused_with(b, &frame(0x82, &[&[0, 1, 0][..], filter, &[0]].concat()), &[R::MALFORMED_PACKET]);
            refused_with(b, &frame(0xa2, &[&[0, 1, 0][..], filter].concat()), &[R::MALFORMED_PACKET]);
        }
    }
);

runtime_test!(
    /// MQTT-4.7.3-1: an empty topic filter is refused: SUBACK 0x8F for it, or
    /// DISCONNECT 0x8F, 0x81 or 0x82 and the close.
    mqtt_4_7_3_1_empty_topic_filter_is_refused,
    |b: &TestBroker| {
        let mut c = V5::client(b.addr, "empty");
        c.send(&Packet::Subscribe(subscribe_one("", options(0))));
        expect_filter_refused(&mut c, &[], "empty filter");
    }
);

runtime_test!(
    /// MQTT-3.1.2-1/-2: a CONNECT with another protocol name, or a protocol
    /// level midge does not speak (6), is answered by a close, or by CONNACK
    /// 0x84 (in 5.0 or in the 3.1.1 form) and the close.
    mqtt_3_1_2_2_unknown_protocol_name_or_version_is_refused,
    |b: &TestBroker| {
        for (name, level) in [(&b"MQTX"[..], 5u8), (b"MQTT", 6)] {
            let mut body = field(name);
            body.extend([level, 0x02, 0, 60, 0]);
            body.extend(field(b"c"));
            let mut raw = b.raw();
            raw.send(&frame(0x10, &body));
            match raw.try_recv() {
                Err(_) => {}
                Ok(r) => {
                    let allowed = [vec![0x00, 0x84, 0x00], vec![0x00, 0x84], vec![0x00, 0x01]];
                    assert!(r.header == 0x20 && allowed.contains(&r.body), "{r:?}");
                    raw.expect_closed();
                }
            }
        }
    }
);

runtime_test!(
    /// MQTT-4.3.1-1, MQTT-4.3.2-1/-2, MQTT-4.3.3-1/-2, MQTT-2.2.1-4: midge
    /// sends QoS 0 with DUP 0, and each new QoS 1 and 2 PUBLISH with DUP 0
    /// and a non-zero packet id not in use by another unacknowledged one.
    mqtt_4_3_2_2_new_publishes_get_dup_0_and_unused_packet_ids,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("ids/#", 2);
        let mut p = V5::client(b.addr, "pub");
        for qos in [0, 1, 2, 1, 2, 1, 2] {
            p.publish(&format!("ids/{qos}"), b"x", qos);
        }
        let got = drain_after(&mut sub, 7, false);
        assert!(got.iter().all(|m| !m.dup), "{got:?}");
        assert_eq!(got[0].pid, None);
        let mut pids: Vec<u16> = got.iter().filter_map(|m| m.pid).collect();
        assert!(pids.iter().all(|&pid| pid != 0));
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 6, "packet ids in use twice: {got:?}");
    }
);

runtime_test!(
    /// MQTT-3.3.4-2 with -5: overlapping subscriptions at QoS 0 and 2: one
    /// copy at QoS 2, or one copy per subscription (QoS 0 and QoS 2).
    mqtt_3_3_4_2_overlapping_subscriptions_get_the_highest_qos,
    |b: &TestBroker| {
        let mut sub = V5::client(b.addr, "overlap");
        sub.subscribe("ov/#", 0);
        sub.subscribe("ov/t", 2);
        let mut p = V5::client(b.addr, "pub");
        p.publish("ov/t", b"x", 2);
        let mut got = drain_after(&mut sub, 1, true);
        if got[0].qos != QoS::ExactlyOnce || got.len() > 1 {
            got.extend(drain_after(&mut sub, 2 - got.len(), true));
        }
        let mut qos: Vec<QoS> = got.iter().map(|m| m.qos).collect();
        qos.sort_by_key(|q| *q as u8);
        assert!(qos == [QoS::ExactlyOnce] || qos == [QoS::AtMostOnce, QoS::ExactlyOnce], "{qos:?}");
    }
);

runtime_test!(
    /// MQTT-4.3.3-13: the QoS 2 flow goes on when the message expires
    /// meanwhile (PUBREL after its expiry gets PUBCOMP 0x00); MQTT-4.3.3-7:
    /// once midge has sent the PUBLISH, expiry does not stop its PUBREL;
    /// MQTT-4.1.0-1: a session whose expiry interval passes while connected
    /// is kept.
    mqtt_4_3_3_13_qos_2_flows_outlive_message_expiry,
    |b: &TestBroker| {
        let (mut kept, _) = session(b, "kept", false, 1);
        kept.subscribe("kept/t", 1);
        let mut sub = V5::client(b.addr, "sub");
        sub.subscribe("exp2/t", 2);
        let mut p = V5::client(b.addr, "pub");
        p.publish_with(message("exp2/t", b"brief", 2, |m| m.message_expiry = Some(1)));
        let got = sub.recv_publish();
        // The server may deliver at PUBLISH or at PUBREL (4.3.3): an
        // unsubscribed topic keeps this flow apart from delivery.
        p.send(&Packet::Publish(Publish {
            pid: Some(3),
            ..message("exp2/none", b"brief", 2, |m| m.message_expiry = Some(1))
        }));
        assert!(matches!(p.recv(), Packet::Pubrec(a) if a.pid == 3));
        std::thread::sleep(Duration::from_millis(2200));
        p.send(&Packet::Pubrel(Ack::success(3)));
        assert!(matches!(p.recv(), Packet::Pubcomp(a) if a.pid == 3 && a.reason == R::SUCCESS), "MQTT-4.3.3-13");
        sub.ack(&got);
        p.publish("kept/t", b"still yours", 1);
        assert_eq!(&kept.recv_and_ack().payload[..], b"still yours", "MQTT-4.1.0-1");
    }
);

runtime_test!(
    /// MQTT-6.0.0-1/-2/-4 with MQTT 5.0: over WebSockets the broker picks
    /// the `mqtt` subprotocol, a 5.0 session works, several packets in one
    /// binary frame are all handled, and a text frame closes the connection.
    mqtt_6_0_0_2_v5_over_websockets,
    |c: &mut Config| c.listeners = vec![midge::config::Listener::websockets("127.0.0.1:0".parse().unwrap())],
    |b: &TestBroker| {
        let path = b.ws_path.clone().unwrap();
        let (ws, chosen) = crate::support::client::ws_handshake(b.addr, &path, &["mqtt"]).unwrap();
        assert_eq!(chosen.as_deref(), Some("mqtt"), "MQTT-6.0.0-4");
        let mut c = V5::over(crate::support::client::Raw::over(ws));
        c.send(&Packet::Connect(Box::new(connect_packet("ws5"))));
        assert!(matches!(c.recv(), Packet::Connack(a) if a.reason == R::SUCCESS));
        c.subscribe("ws/t", 1);
        c.send_raw(&[encoded(&Packet::Pingreq), encoded(&Packet::Pingreq)].concat());
        for _ in 0..2 {
            assert!(matches!(c.recv(), Packet::Pingresp), "MQTT-6.0.0-2");
        }
        let mut p = V5::over(b.raw());
        p.send(&Packet::Connect(Box::new(connect_packet("ws5-pub"))));
        assert!(matches!(p.recv(), Packet::Connack(_)));
        p.publish_with(message("ws/t", b"over ws", 1, |m| m.content_type = Some("text/plain".into())));
        let got = c.recv_and_ack();
        assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
        c.raw.websocket().send(async_tungstenite::tungstenite::Message::text("hello")).unwrap();
        c.raw.expect_closed_or_reset();
    }
);

// ---------------------------------------------------------------------------
// g. Bad input: the offender gets the reason code; a bystander carries on

runtime_test!(
    /// 2.2.2.2: a property included twice where once is allowed (Content
    /// Type) is a Protocol Error (DISCONNECT 0x82).
    mqtt_2_2_2_2_repeated_property_gets_0x82,
    |b: &TestBroker| {
        let mut props = vec![0x03];
        props.extend(field(b"a"));
        props.push(0x03);
        props.extend(field(b"b"));
        refused_with(b, &publish_raw("t", &props, b"x"), &[R::PROTOCOL_ERROR]);
    }
);

runtime_test!(
    /// 2.2.2.2: an unknown property identifier makes the packet malformed
    /// (DISCONNECT 0x81).
    mqtt_2_2_2_2_unknown_property_gets_0x81,
    |b: &TestBroker| refused_with(b, &publish_raw("t", &[0x7f, 0x00], b"x"), &[R::MALFORMED_PACKET])
);

runtime_test!(
    /// 2.2.2.2: a property the packet may not carry (Session Expiry Interval
    /// in PUBLISH) makes it malformed (DISCONNECT 0x81).
    mqtt_2_2_2_2_property_not_allowed_in_the_packet_gets_0x81,
    |b: &TestBroker| refused_with(b, &publish_raw("t", &[0x11, 0, 0, 0, 10], b""), &[R::MALFORMED_PACKET])
);

runtime_test!(
    /// 2.2.2.1: a Property Length running past the end of the packet is
    /// malformed (DISCONNECT 0x81).
    mqtt_2_2_2_1_property_length_overrunning_the_packet_gets_0x81,
    |b: &TestBroker| {
        let mut body = field(b"t");
        body.extend([0x0a, 0x01, 0x01]);
        refused_with(b, &frame(0x30, &body), &[R::MALFORMED_PACKET]);
    }
);

runtime_test!(
    /// 1.5.5, MQTT-1.5.5-1: a Variable Byte Integer of five bytes, or not in
    /// its fewest bytes, is malformed (DISCONNECT 0x81).
    mqtt_1_5_5_1_bad_variable_byte_integer_gets_0x81,
    |b: &TestBroker| {
        for length in [&[0x80, 0x80, 0x80, 0x80, 0x01][..], &[0x80, 0x00]] {
            let mut body = field(b"t");
            body.extend_from_slice(length);
            body.extend(b"payload");
            refused_with(b, &frame(0x30, &body), &[R::MALFORMED_PACKET]);
        }
    }
);

runtime_test!(
    /// 3.1.2.11.3: Receive Maximum 0 in CONNECT is a Protocol Error (CONNACK
    /// 0x82, then close).
    mqtt_3_1_2_11_3_receive_maximum_0_gets_connack_0x82,
    |b: &TestBroker| connect_refused_with(b, &connect_raw(&[0x21, 0, 0]), R::PROTOCOL_ERROR)
);

runtime_test!(
    /// 3.1.2.11.4: Maximum Packet Size 0 in CONNECT is a Protocol Error
    /// (CONNACK 0x82, then close).
    mqtt_3_1_2_11_4_maximum_packet_size_0_gets_connack_0x82,
    |b: &TestBroker| connect_refused_with(b, &connect_raw(&[0x27, 0, 0, 0, 0]), R::PROTOCOL_ERROR)
);

runtime_test!(
    /// MQTT-3.1.4-1, 2.2.2.2: a CONNECT with an unknown property or a
    /// repeated one gets CONNACK 0x81 / 0x82 and a close.
    mqtt_3_1_4_1_connect_with_bad_properties_gets_connack_0x81_or_0x82,
    |b: &TestBroker| {
        connect_refused_with(b, &connect_raw(&[0x7f, 0]), R::MALFORMED_PACKET);
        connect_refused_with(b, &connect_raw(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), R::PROTOCOL_ERROR);
    }
);

runtime_test!(
    /// 3.8.2.1.2: Subscription Identifier 0 in SUBSCRIBE is a Protocol Error
    /// (DISCONNECT 0x82).
    mqtt_3_8_2_1_2_subscription_identifier_0_gets_0x82,
    |b: &TestBroker| {
        let mut body = vec![0, 1, 2, 0x0b, 0x00];
        body.extend(field(b"t"));
        body.push(0);
        refused_with(b, &frame(0x82, &body), &[R::PROTOCOL_ERROR]);
    }
);

runtime_test!(
    /// MQTT-4.12.0-7 broken by the client (4.12): an AUTH from a client that
    /// gave no Authentication Method is a Protocol Error (DISCONNECT 0x82).
    mqtt_4_12_0_7_auth_without_a_method_gets_0x82,
    |b: &TestBroker| {
        let auth = Auth { reason: R::RE_AUTHENTICATE, properties: Properties::default() };
        refused_with(b, &encoded(&Packet::Auth(auth)), &[R::PROTOCOL_ERROR]);
    }
);

runtime_test!(
    /// MQTT-4.12.0-1: a CONNECT with an Authentication Method the server does
    /// not support gets CONNACK 0x8C (Bad authentication method) or 0x87,
    /// then a close.
    mqtt_4_12_0_1_unsupported_authentication_method_gets_0x8c,
    |b: &TestBroker| {
        let (mut c, connack) = V5::connect(b.addr, "scram", |c| c.properties.auth_method = Some("SCRAM-SHA-1".into()));
        assert!([R::BAD_AUTHENTICATION_METHOD, R::NOT_AUTHORIZED].contains(&connack.reason), "{connack:?}");
        assert!(!connack.session_present);
        c.expect_closed();
    }
);

// ---------------------------------------------------------------------------
// Enhanced authentication (4.12)

/// Hooks with one Authentication Method, `CHALLENGE`: the server answers the
/// first data with the challenge `nonce` and accepts `nonce-signed`.
struct Challenge;

struct Exchange {
    asked: bool,
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        if !std::mem::replace(&mut self.asked, true) {
            return AuthStep::Continue(b"nonce".to_vec());
        }
        match data {
            Some(b"nonce-signed") => AuthStep::Success(Some(b"welcome".to_vec())),
            _ => AuthStep::Fail,
        }
    }
}

impl Hooks for Challenge {
    fn start_auth(&self, method: &str, _: &ConnectInfo<'_>) -> Option<Box<dyn AuthExchange>> {
        (method == "CHALLENGE").then(|| Box::new(Exchange { asked: false }) as Box<dyn AuthExchange>)
    }
}

/// AUTH with reason `reason`, Authentication Method `CHALLENGE` and `data`.
fn auth(reason: R, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: Properties {
            auth_method: Some("CHALLENGE".into()),
            auth_data: Some(Bytes::from_static(data)),
            ..Properties::default()
        },
    })
}

/// The next packet, which must be an AUTH with `reason`, the method
/// `CHALLENGE` (MQTT-4.12.0-5) and `data`.
fn expect_auth(c: &mut V5, reason: R, data: &[u8]) {
    match c.recv() {
        Packet::Auth(a) => {
            assert_eq!(a.reason, reason, "{a:?}");
            assert_eq!(a.properties.auth_method.as_deref(), Some("CHALLENGE"), "MQTT-4.12.0-5: {a:?}");
            assert_eq!(a.properties.auth_data.as_deref(), Some(data), "{a:?}");
        }
        other => panic!("expected AUTH {reason}, got {other:?}"),
    }
}

/// A client that sent CONNECT with Authentication Method `CHALLENGE`, got
/// the challenge (AUTH 0x18, MQTT-4.12.0-2) and answered it with `answer`.
fn challenged(b: &TestBroker, id: &str, answer: &'static [u8]) -> V5 {
    challenged_within(b, id, answer, None)
}

/// [`challenged`] from a client with Maximum Packet Size `max`.
fn challenged_within(b: &TestBroker, id: &str, answer: &'static [u8], max: Option<u32>) -> V5 {
    let mut connect = connect_packet(id);
    connect.properties.maximum_packet_size = max;
    connect.properties.request_problem_info = Some(true);
    connect.properties.auth_method = Some("CHALLENGE".into());
    connect.properties.auth_data = Some(Bytes::from_static(b"hello"));
    let mut c = V5::over(b.raw());
    c.send(&Packet::Connect(Box::new(connect)));
    expect_auth(&mut c, R::CONTINUE_AUTHENTICATION, b"nonce");
    c.send(&auth(R::CONTINUE_AUTHENTICATION, answer));
    c
}

runtime_test!(
    /// MQTT-4.12.0-2, MQTT-4.12.0-5, MQTT-3.2.0-1: a challenge-response
    /// exchange: CONNECT with an Authentication Method, AUTH 0x18 from the
    /// server, AUTH 0x18 from the client, CONNACK 0x00 carrying the same
    /// method and the final data; then re-authentication (AUTH 0x19) ends
    /// with AUTH 0x00.
    mqtt_4_12_0_2_challenge_response_authentication,
    |b: &TestBroker| {
        b.broker.set_hooks(Arc::new(Challenge));
        let mut c = challenged(b, "proved", b"nonce-signed");
        match c.recv() {
            Packet::Connack(a) => {
                assert_eq!(a.reason, R::SUCCESS, "{a:?}");
                assert_eq!(a.properties.auth_method.as_deref(), Some("CHALLENGE"), "MQTT-4.12.0-5");
                assert_eq!(a.properties.auth_data.as_deref(), Some(&b"welcome"[..]));
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c.ping();
        c.send(&auth(R::RE_AUTHENTICATE, b"again"));
        expect_auth(&mut c, R::CONTINUE_AUTHENTICATION, b"nonce");
        c.send(&auth(R::CONTINUE_AUTHENTICATION, b"nonce-signed"));
        expect_auth(&mut c, R::SUCCESS, b"welcome");
        c.ping();
    }
);

runtime_test!(
    /// MQTT-3.15.2-2/-3, MQTT-3.2.2-19/-20: to a client with a Maximum Packet
    /// Size of 40, the AUTH challenge and the CONNACK (with its method and
    /// data) fit: any Reason String or User Property that would not is left
    /// out.
    mqtt_3_15_2_2_auth_fits_the_clients_maximum_packet_size,
    |b: &TestBroker| {
        const MAX: usize = 40;
        b.broker.set_hooks(Arc::new(Challenge));
        let mut c = challenged_within(b, "small", b"nonce-signed", Some(MAX as u32));
        assert!(c.last_size <= MAX, "AUTH of {} bytes", c.last_size);
        assert!(matches!(c.recv(), Packet::Connack(a) if a.reason == R::SUCCESS));
        assert!(c.last_size <= MAX, "CONNACK of {} bytes", c.last_size);
    }
);

runtime_test!(
    /// MQTT-4.12.0-4: the server may refuse authentication at any step: a
    /// wrong answer gets a CONNACK of 0x80 or above (0x87 Not authorized)
    /// and the close.
    mqtt_4_12_0_4_failed_authentication_gets_an_error_connack,
    |b: &TestBroker| {
        b.broker.set_hooks(Arc::new(Challenge));
        let mut c = challenged(b, "liar", b"forged");
        match c.recv() {
            Packet::Connack(a) => {
                assert!(a.reason.is_error(), "{a:?}");
                assert!(!a.session_present);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-4.12.1-2: a failed re-authentication gets a DISCONNECT with an
    /// error reason (0x87 suggested) and the close.
    mqtt_4_12_1_2_failed_reauthentication_disconnects,
    |b: &TestBroker| {
        b.broker.set_hooks(Arc::new(Challenge));
        let mut c = challenged(b, "slipped", b"nonce-signed");
        assert!(matches!(c.recv(), Packet::Connack(a) if a.reason == R::SUCCESS));
        c.send(&auth(R::RE_AUTHENTICATE, b"again"));
        expect_auth(&mut c, R::CONTINUE_AUTHENTICATION, b"nonce");
        c.send(&auth(R::CONTINUE_AUTHENTICATION, b"forged"));
        match c.recv() {
            Packet::Disconnect(d) => assert!(d.reason.is_error(), "{d:?}"),
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-4.12.0-1 with hooks installed: a method they do not support gets
    /// CONNACK 0x8C (or 0x87) and the close.
    mqtt_4_12_0_1_method_the_hooks_do_not_know_gets_0x8c,
    |b: &TestBroker| {
        b.broker.set_hooks(Arc::new(Challenge));
        let (mut c, connack) = V5::connect(b.addr, "other", |c| c.properties.auth_method = Some("KERBEROS".into()));
        assert!([R::BAD_AUTHENTICATION_METHOD, R::NOT_AUTHORIZED].contains(&connack.reason), "{connack:?}");
        c.expect_closed();
    }
);

// ---------------------------------------------------------------------------
// Shared subscriptions

runtime_test!(
    /// 3.2.2.3.13: Shared Subscription Available tells the truth: if it is 0,
    /// a `$share` SUBSCRIBE gets 0x9E (Shared Subscriptions not supported) in
    /// SUBACK or DISCONNECT; otherwise a group of two gets each message once.
    mqtt_3_2_2_3_13_shared_subscription_available_tells_the_truth,
    |b: &TestBroker| {
        let (mut m1, connack) = V5::accepted(b.addr, "m1", |_| {});
        let filter = "$share/grp/sh/t";
        if connack.properties.shared_available == Some(false) {
            m1.send(&Packet::Subscribe(subscribe_one(filter, options(0))));
            match m1.recv() {
                Packet::Suback(a) => assert_eq!(a.reasons, [R::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]),
                Packet::Disconnect(d) => assert_eq!(d.reason, R::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
                other => panic!("expected SUBACK or DISCONNECT 0x9E, got {other:?}"),
            }
            return;
        }
        let mut m2 = V5::client(b.addr, "m2");
        m1.subscribe(filter, 1);
        m2.subscribe(filter, 1);
        let mut p = V5::client(b.addr, "pub");
        for i in 0..6u8 {
            p.publish("sh/t", &[i], 1);
        }
        let mut got: Vec<u8> = drain_group(&mut [&mut m1, &mut m2], 6, true).iter().flatten().map(|m| m.payload[0]).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3, 4, 5], "MQTT-4.8.2: one delivery per group");
    }
);

runtime_test!(
    /// 4.8.2, MQTT-4.8.2-3: each message goes to one member of each share
    /// group (round robin by default: both members get some), and to every
    /// non-shared subscriber; the granted QoS of the member is respected.
    mqtt_4_8_2_3_shared_subscription_delivers_once_per_group,
    |b: &TestBroker| {
        let mut g1 = V5::client(b.addr, "g1");
        let mut g2 = V5::client(b.addr, "g2");
        let mut h = V5::client(b.addr, "h");
        let mut plain = V5::client(b.addr, "plain");
        g1.subscribe("$share/g/sh/#", 1);
        g2.subscribe("$share/g/sh/#", 0);
        h.subscribe("$share/h/sh/#", 1);
        plain.subscribe("sh/#", 1);
        let mut p = V5::client(b.addr, "pub");
        for i in 0..6u8 {
            p.publish("sh/t", &[i], 1);
        }
        let [a, c]: [Vec<Publish>; 2] = drain_group(&mut [&mut g1, &mut g2], 6, true).try_into().unwrap();
        assert!(!a.is_empty() && !c.is_empty(), "round robin: {} and {}", a.len(), c.len());
        assert!(c.iter().all(|m| m.qos == QoS::AtMostOnce), "MQTT-4.8.2-3");
        let mut group: Vec<u8> = a.iter().chain(&c).map(|m| m.payload[0]).collect();
        group.sort();
        assert_eq!(group, [0, 1, 2, 3, 4, 5]);
        assert_eq!(drain_after(&mut h, 6, true).len(), 6);
        assert_eq!(drain_after(&mut plain, 6, true).len(), 6);
    }
);

runtime_test!(
    /// MQTT-4.8.2-1/-2: a `$share` filter with an empty ShareName, one holding
    /// `+`, `#` (or `/` before the filter is missing) is refused: SUBACK 0x8F
    /// for it, or DISCONNECT 0x8F / 0x81 / 0x82.
    mqtt_4_8_2_1_share_name_empty_or_wildcard_is_refused,
    |b: &TestBroker| {
        let mut by = bystander(b);
        for filter in ["$share//t", "$share/g+/t", "$share/g#/t", "$share/g"] {
            let mut c = V5::client(b.addr, "sharer");
            c.send(&Packet::Subscribe(subscribe_one(filter, options(0))));
            expect_filter_refused(&mut c, &[], filter);
        }
        still_served(b, &mut by);
    }
);

runtime_test!(
    /// 3.8.4 / 4.8.2: no retained message is sent on a shared subscription.
    mqtt_4_8_2_no_retained_messages_on_a_shared_subscription,
    |b: &TestBroker| {
        let mut p = V5::client(b.addr, "pub");
        p.publish_with(Publish { retain: true, ..publish_packet("shr/t", b"kept", 1) });
        let mut c = V5::client(b.addr, "member");
        c.subscribe("$share/g/shr/t", 1);
        c.expect_nothing_queued();
        p.publish("shr/t", b"live", 1);
        assert_eq!(&c.recv_and_ack().payload[..], b"live");
    }
);

runtime_test!(
    /// 4.8.2 (issue 11: as Mosquitto does): 3.1.1 clients may join a share
    /// group too, beside 5.0 members: one delivery per message.
    mqtt_4_8_2_shared_subscription_for_v311_clients,
    |b: &TestBroker| {
        let mut old = b.client("old-member");
        old.subscribe(1, &[("$share/g/mix/t", 0)]);
        let mut new = V5::client(b.addr, "new-member");
        new.subscribe("$share/g/mix/t", 0);
        let mut p = V5::client(b.addr, "pub");
        for i in 0..4u8 {
            p.publish("mix/t", &[i], 1);
        }
        let deadline = Instant::now() + crate::support::client::TIMEOUT;
        let mut got: Vec<u8> = Vec::new();
        while got.len() < 4 {
            assert!(Instant::now() < deadline, "only {got:?} arrived");
            got.extend(drain(&mut new, false).iter().map(|m| m.payload[0]));
            old.send(&packets::PINGREQ);
            loop {
                let r = old.recv();
                if r.header == 0xd0 {
                    break;
                }
                got.push(r.publish().2[0]);
            }
        }
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
    }
);

runtime_test!(
    /// 4.8.2 (QoS 1: "SHOULD send the Application Message to another Client
    /// that is subscribed"): a member whose session ends with an
    /// unacknowledged QoS 1 message leaves it to another member.
    mqtt_4_8_2_unacknowledged_qos_1_goes_to_another_member,
    |b: &TestBroker| {
        let mut quitter = V5::client(b.addr, "quitter");
        quitter.subscribe("$share/g/re/t", 1);
        let mut p = V5::client(b.addr, "pub");
        p.publish("re/t", b"orphan", 1);
        let first = quitter.recv_publish();
        assert_eq!(&first.payload[..], b"orphan");
        let mut stayer = V5::client(b.addr, "stayer");
        stayer.subscribe("$share/g/re/t", 1);
        drop(quitter);
        assert_eq!(&stayer.recv_and_ack().payload[..], b"orphan");
    }
);

/// Two members of `$share/g/{topic}` at QoS `qos` (each with a will on
/// `gone/{id}` so a watcher can tell when a session has ended), a watcher of
/// `gone/#`, and the member that got the one message published (not
/// acknowledged), its client id, the other member.
fn shared_pair(b: &TestBroker, topic: &str, qos: u8, expiry: u32) -> (V5, V5, Publish, &'static str, V5) {
    let mut watcher = V5::client(b.addr, "watcher");
    watcher.subscribe("gone/#", 0);
    let member = |id: &str| {
        let (mut m, _) = V5::accepted(b.addr, id, |c| {
            c.clean_start = false;
            c.properties.session_expiry = (expiry > 0).then_some(expiry);
            let mut w = will(&format!("gone/{id}"), b"gone", Properties::default());
            w.qos = QoS::AtMostOnce;
            c.will = Some(w);
        });
        m.subscribe(&format!("$share/g/{topic}"), qos);
        m
    };
    let (mut a, mut c) = (member("m-a"), member("m-b"));
    let mut p = V5::client(b.addr, "pub");
    p.publish(topic, b"once", qos);
    let [got_a, got_c]: [Vec<Publish>; 2] = drain_group(&mut [&mut a, &mut c], 1, false).try_into().unwrap();
    match (got_a.len(), got_c.len()) {
        (1, 0) => (watcher, a, got_a[0].clone(), "m-a", c),
        (0, 1) => (watcher, c, got_c[0].clone(), "m-b", a),
        other => panic!("one delivery to the group expected, got {other:?}"),
    }
}

runtime_test!(
    /// MQTT-4.8.2-6: a PUBACK of 0x80 or above from the chosen member
    /// discards the message: no other member gets it, nor the same again.
    mqtt_4_8_2_6_refused_shared_delivery_is_discarded,
    |b: &TestBroker| {
        let (_watcher, mut chosen, got, _, mut other) = shared_pair(b, "sd/t", 1, 0);
        chosen.send(&Packet::Puback(Ack {
            pid: got.pid.unwrap(),
            reason: R::UNSPECIFIED_ERROR,
            properties: Properties::default(),
        }));
        chosen.expect_nothing_queued();
        other.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.8.2-4: a QoS 2 shared delivery cut by a broken connection is
    /// completed to the same member when it resumes its session (DUP 1, same
    /// packet id); the other member never gets it.
    mqtt_4_8_2_4_interrupted_qos_2_shared_delivery_resumes_to_the_same_member,
    |b: &TestBroker| {
        let (mut watcher, chosen, got, id, mut other) = shared_pair(b, "sq/t", 2, 60);
        drop(chosen);
        assert_eq!(&*watcher.recv_publish().topic, format!("gone/{id}"));
        let leaked = drain(&mut other, true);
        assert!(leaked.is_empty(), "MQTT-4.8.2-4: the other member got it: {leaked:?}");
        let (mut back, present) = session(b, id, false, 60);
        assert!(present);
        let again = back.recv_publish();
        assert_eq!((again.pid, again.dup, &again.payload[..]), (got.pid, true, &b"once"[..]));
        back.ack(&again);
        other.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.8.2-5: when the chosen member's session ends before a QoS 2
    /// delivery completes, the message goes to no other member.
    mqtt_4_8_2_5_qos_2_of_an_ended_session_goes_to_nobody_else,
    |b: &TestBroker| {
        let (mut watcher, chosen, _, id, mut other) = shared_pair(b, "se/t", 2, 0);
        drop(chosen);
        assert_eq!(&*watcher.recv_publish().topic, format!("gone/{id}"));
        // A second message, which only `other` can get, closes the window in
        // which the first could still be handed on.
        V5::client(b.addr, "pub2").publish("se/t", b"second", 2);
        let got: Vec<Vec<u8>> = drain_after(&mut other, 1, true).iter().map(|m| m.payload.to_vec()).collect();
        assert_eq!(got, [b"second".to_vec()], "MQTT-4.8.2-5: the other member got the first message");
    }
);

runtime_test!(
    /// Issue 11: the share strategy is configurable; `sticky` keeps giving
    /// the same (eligible) member every message.
    mqtt_4_8_2_sticky_strategy_keeps_one_member,
    |c: &mut Config| c.shared_subscription_strategy = midge::config::ShareStrategy::Sticky,
    |b: &TestBroker| {
        let mut m1 = V5::client(b.addr, "m1");
        let mut m2 = V5::client(b.addr, "m2");
        m1.subscribe("$share/g/st/t", 0);
        m2.subscribe("$share/g/st/t", 0);
        let mut p = V5::client(b.addr, "pub");
        for i in 0..6u8 {
            p.publish("st/t", &[i], 1);
        }
        let counts: Vec<usize> = drain_group(&mut [&mut m1, &mut m2], 6, true).iter().map(Vec::len).collect();
        assert!(counts == [6, 0] || counts == [0, 6], "{counts:?}");
    }
);

// ---------------------------------------------------------------------------
// h. Interoperability between 3.1.1 and 5.0 clients

runtime_test!(
    /// A 3.1.1 subscriber gets what a 5.0 client published, properties
    /// stripped (a plain 3.1.1 PUBLISH); a 5.0 subscriber gets what a 3.1.1
    /// client published, without properties.
    interop_properties_stripped_for_v311_and_absent_from_v311,
    |b: &TestBroker| {
        let mut old = b.client("old");
        old.subscribe(1, &[("mix/#", 1)]);
        let mut new = V5::client(b.addr, "new");
        new.subscribe("mix/from-old", 1);
        let mut p5 = V5::client(b.addr, "p5");
        p5.publish_with(message("mix/from-new", b"v5 payload", 1, |m| {
            m.content_type = Some("text/plain".into());
            m.user = user_properties(&[("k", "v")]);
            m.message_expiry = Some(100);
        }));
        let got = old.recv();
        let (topic, pid, payload) = got.publish();
        assert_eq!((topic.as_str(), &payload[..]), ("mix/from-new", &b"v5 payload"[..]));
        old.send(&ack(PUBACK, pid.unwrap()));
        let mut p3 = b.client("p3");
        p3.send(&packets::publish("mix/from-old", b"v3 payload", 1, 1));
        p3.expect(&ack(PUBACK, 1));
        let got = new.recv_and_ack();
        assert_eq!((&*got.topic, &got.payload[..]), ("mix/from-old", &b"v3 payload"[..]));
        assert!(got.properties.is_empty(), "{:?}", got.properties);
        let (_, _, payload) = old.recv().publish();
        assert_eq!(payload, b"v3 payload");
    }
);

runtime_test!(
    /// Retained messages and persistent sessions cross versions: a 5.0
    /// retained message reaches a 3.1.1 subscriber and the other way round; a
    /// 3.1.1 session resumes for a 5.0 client of the same id (with the
    /// queued message's properties) and a 5.0 session for a 3.1.1 client.
    interop_retained_and_sessions_across_versions,
    |b: &TestBroker| {
        let mut p5 = V5::client(b.addr, "p5");
        p5.publish_with(Publish { retain: true, ..message("xr/new", b"r5", 1, |m| m.content_type = Some("a".into())) });
        let mut p3 = b.client("p3");
        p3.send(&packets::publish_with("xr/old", b"r3", 1, Some(1), true, false));
        p3.expect(&ack(PUBACK, 1));
        let mut old = b.client("old");
        old.subscribe(1, &[("xr/new", 1)]);
        let got = old.recv();
        assert!(got.retain());
        assert_eq!(got.publish().2, b"r5");
        let mut new = V5::client(b.addr, "new");
        new.subscribe("xr/old", 1);
        let got = new.recv_and_ack();
        assert!(got.retain && got.properties.is_empty());
        assert_eq!(&got.payload[..], b"r3");

        let mut s3 = b.persistent("x3", false);
        s3.subscribe(1, &[("xs/t", 1)]);
        s3.send(&packets::DISCONNECT);
        s3.expect_closed();
        p5.publish_with(message("xs/t", b"for x3", 1, |m| m.user = user_properties(&[("u", "1")])));
        let (mut s5, present) = session(b, "x3", false, 60);
        assert!(present, "a 3.1.1 session resumes for a 5.0 client");
        let got = s5.recv_and_ack();
        assert_eq!(&got.payload[..], b"for x3");
        assert_eq!(got.properties.user, user_properties(&[("u", "1")]));
        s5.disconnect();
        p5.publish("xs/t", b"for x3 again", 1);
        let mut s3 = b.persistent("x3", true);
        let (_, pid, payload) = s3.recv().publish();
        assert_eq!(payload, b"for x3 again");
        s3.send(&ack(PUBACK, pid.unwrap()));
    }
);
