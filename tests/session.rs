use crate::support::TestBroker;
use crate::support::packets::{self, CONNACK_ACCEPTED, Connect, DISCONNECT, PUBACK, PUBCOMP, PUBREC, PUBREL, ack};

runtime_test!(
    /// MQTT-3.1.2-4/-5, MQTT-3.2.2-2: a clean-session-0 client that comes back
    /// gets Session Present 1, keeps its subscriptions, and receives the QoS 1
    /// messages published while it was away; QoS 0 ones are not queued.
    mqtt_3_1_2_4_persistent_session_resumes_with_queued_messages,
    |b: &TestBroker| {
        let mut sub = b.persistent("keeper", false);
        sub.subscribe(1, &[("p/#", 1)]);
        sub.send(&DISCONNECT);
        sub.expect_closed();
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("p/zero", b"dropped"));
        publisher.send(&packets::publish("p/one", b"kept", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        let mut sub = b.persistent("keeper", true);
        let got = sub.recv();
        assert_eq!(got.publish().2, b"kept");
        sub.send(&ack(PUBACK, got.publish().1.unwrap()));
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.1.2-6, MQTT-3.2.2-1: clean session 1 discards the previous
    /// session: Session Present 0 and no old subscriptions.
    mqtt_3_1_2_6_clean_session_discards_state,
    |b: &TestBroker| {
        let mut sub = b.persistent("cleaner", false);
        sub.subscribe(1, &[("c", 1)]);
        sub.send(&DISCONNECT);
        sub.expect_closed();
        let mut sub = b.raw();
        sub.send(&packets::connect("cleaner", true, 60));
        sub.expect(&CONNACK_ACCEPTED);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("c", b"x", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.4.0-1: an unacknowledged QoS 1 message is re-sent with DUP=1
    /// when the persistent session reconnects.
    mqtt_4_4_0_1_unacknowledged_messages_are_resent_with_dup,
    |b: &TestBroker| {
        let mut sub = b.persistent("forgetful", false);
        sub.subscribe(1, &[("r", 1)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("r", b"again", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        let first = sub.recv();
        assert!(!first.dup());
        drop(sub);
        let mut sub = b.persistent("forgetful", true);
        let again = sub.recv();
        assert!(again.dup());
        assert_eq!(again.publish(), first.publish());
    }
);

fn will_client(b: &TestBroker, id: &str, retain: bool) -> crate::support::client::Raw {
    let mut raw = b.raw();
    let will = Some(("will/topic", &b"gone"[..], 1, retain));
    raw.send(&Connect { client_id: id, will, ..Connect::default() }.bytes());
    raw.expect(&CONNACK_ACCEPTED);
    raw
}

runtime_test!(
    /// MQTT-3.1.2-8: the will is published when the connection closes without
    /// DISCONNECT, at its QoS.
    mqtt_3_1_2_8_will_published_on_abnormal_close,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("will/#", 1)]);
        let mut dying = will_client(b, "dying", false);
        dying.ping();
        drop(dying);
        let got = watcher.recv();
        assert_eq!((got.publish().0.as_str(), got.publish().2.as_slice()), ("will/topic", &b"gone"[..]));
        assert_eq!(got.qos(), 1);
    }
);

runtime_test!(
    /// MQTT-3.1.2-10: the will is discarded after DISCONNECT.
    mqtt_3_1_2_10_no_will_after_disconnect,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("will/#", 1)]);
        let mut polite = will_client(b, "polite", false);
        polite.send(&DISCONNECT);
        polite.expect_closed();
        watcher.expect_nothing_queued();
    }
);

runtime_test!(
    /// The will is published on takeover too (no DISCONNECT came first), and
    /// a will with retain is stored as retained (MQTT-3.1.2-17).
    will_on_takeover_and_will_retain,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("will/#", 1)]);
        let mut old = will_client(b, "twin", true);
        let _new = b.client("twin");
        old.expect_closed();
        let live = watcher.recv();
        assert!(!live.retain(), "MQTT-3.3.1-9: live delivery has RETAIN 0");
        let mut late = b.client("late");
        late.send(&packets::subscribe(1, &[("will/topic", 1)]));
        late.expect(&packets::suback(1, &[1]));
        let stored = late.recv();
        assert!(stored.retain());
        assert_eq!(stored.publish().2, b"gone");
    }
);

runtime_test!(
    /// MQTT-3.3.1-5/-6/-8/-9/-10: a retained message is stored, sent with
    /// RETAIN 1 to new subscribers at min(QoS), sent with RETAIN 0 to existing
    /// ones, replaced by a newer one, and cleared by an empty payload.
    mqtt_3_3_1_retained_messages,
    |b: &TestBroker| {
        let mut existing = b.client("existing");
        existing.subscribe(1, &[("ret/#", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish_with("ret/a", b"old", 1, Some(1), true, false));
        publisher.expect(&ack(PUBACK, 1));
        publisher.send(&packets::publish_with("ret/a", b"new", 1, Some(2), true, false));
        publisher.expect(&ack(PUBACK, 2));
        assert!(!existing.recv().retain());
        assert!(!existing.recv().retain());
        let mut late = b.client("late");
        late.send(&packets::subscribe(1, &[("ret/+", 0)]));
        late.expect(&packets::suback(1, &[0]));
        let got = late.recv();
        assert!(got.retain());
        assert_eq!((got.qos(), got.publish().2), (0, b"new".to_vec()));
        late.expect_nothing_queued();
        publisher.send(&packets::publish_with("ret/a", b"", 0, None, true, false));
        publisher.ping();
        let mut later = b.client("later");
        later.subscribe(1, &[("ret/#", 0)]);
        later.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.1.2-8: the will is published when the server closes the
    /// connection for a keepalive expiry or a protocol violation.
    mqtt_3_1_2_8_will_published_on_keepalive_expiry_and_violation,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("will/#", 1)]);
        let mut silent = b.raw();
        let will = Some(("will/topic", &b"gone"[..], 0, false));
        silent.send(&Connect { client_id: "silent", keep_alive: 1, will, ..Connect::default() }.bytes());
        silent.expect(&CONNACK_ACCEPTED);
        silent.expect_closed();
        assert_eq!(watcher.recv().publish().2, b"gone");
        let mut rude = will_client(b, "rude", false);
        rude.send(&packets::publish0("bad/#", b"x"));
        rude.expect_closed();
        assert_eq!(watcher.recv().publish().2, b"gone");
    }
);

runtime_test!(
    /// MQTT-3.8.4-3: repeating a subscription re-sends the retained messages
    /// that match it.
    mqtt_3_8_4_3_repeated_subscription_resends_retained,
    |b: &TestBroker| {
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish_with("again/r", b"kept", 0, None, true, false));
        publisher.ping();
        let mut sub = b.client("sub");
        for pid in 1..=2 {
            sub.send(&packets::subscribe(pid, &[("again/#", 0)]));
            sub.expect(&packets::suback(pid, &[0]));
            let got = sub.recv();
            assert!(got.retain());
            assert_eq!(got.publish().2, b"kept");
        }
    }
);

runtime_test!(
    /// MQTT-3.1.2-7: retained messages are not part of a session and survive
    /// the end of the publisher's clean session.
    mqtt_3_1_2_7_retained_messages_outlive_sessions,
    |b: &TestBroker| {
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish_with("survive", b"still", 0, None, true, false));
        publisher.send(&DISCONNECT);
        publisher.expect_closed();
        let mut sub = b.client("sub");
        sub.send(&packets::subscribe(1, &[("survive", 0)]));
        sub.expect(&packets::suback(1, &[0]));
        assert_eq!(sub.recv().publish().2, b"still");
    }
);

runtime_test!(
    /// MQTT-4.4.0-1: a QoS 2 message whose PUBREC arrived is resumed with
    /// PUBREL (not PUBLISH) on reconnect, in order with unacknowledged ones.
    mqtt_4_4_0_1_pubrel_resent_on_reconnect,
    |b: &TestBroker| {
        let mut sub = b.persistent("q2sub", false);
        sub.subscribe(1, &[("q2", 2)]);
        let mut publisher = b.client("pub");
        for pid in 1..=2 {
            publisher.send(&packets::publish("q2", &[pid as u8], 2, pid));
            publisher.expect(&ack(PUBREC, pid));
            publisher.send(&ack(PUBREL, pid));
            publisher.expect(&ack(PUBCOMP, pid));
        }
        let first = sub.recv().publish().1.unwrap();
        let second = sub.recv();
        sub.send(&ack(PUBREC, first));
        sub.expect(&ack(PUBREL, first));
        drop(sub);
        let mut sub = b.persistent("q2sub", true);
        sub.expect(&ack(PUBREL, first));
        let again = sub.recv();
        assert!(again.dup());
        assert_eq!(again.publish(), second.publish());
    }
);

runtime_test!(
    /// MQTT-4.3.3-2 across a reconnect: a persistent publisher that re-sends a
    /// QoS 2 PUBLISH (DUP) after reconnecting, before PUBREL, is not
    /// delivered twice.
    mqtt_4_3_3_2_inbound_qos2_state_survives_reconnect,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("once", 0)]);
        let mut publisher = b.persistent("q2pub", false);
        publisher.send(&packets::publish("once", b"1", 2, 42));
        publisher.expect(&ack(PUBREC, 42));
        drop(publisher);
        let mut publisher = b.persistent("q2pub", true);
        publisher.send(&packets::publish_with("once", b"1", 2, Some(42), false, true));
        publisher.expect(&ack(PUBREC, 42));
        publisher.send(&ack(PUBREL, 42));
        publisher.expect(&ack(PUBCOMP, 42));
        assert_eq!(sub.recv().publish().2, b"1");
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.1.4-3 / MQTT-3.2.2-2: a persistent client taking over its own
    /// live connection resumes the same session (Session Present 1).
    persistent_takeover_keeps_the_session,
    |b: &TestBroker| {
        let mut first = b.persistent("same", false);
        first.subscribe(1, &[("kept", 0)]);
        let mut second = b.persistent("same", true);
        first.expect_closed();
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("kept", b"x"));
        assert_eq!(second.recv().publish().2, b"x");
    }
);
