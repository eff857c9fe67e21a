use crate::support::TestBroker;
use crate::support::packets::{self, PUBACK, UNSUBACK, ack};

runtime_test!(
    /// MQTT-3.8.4-1/-5: SUBACK carries the packet id and one return code per
    /// filter, in order.
    mqtt_3_8_4_5_suback_has_one_code_per_filter_in_order,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.send(&packets::subscribe(0x1234, &[("a", 2), ("b/+", 0), ("c/#", 1)]));
        c.expect(&packets::suback(0x1234, &[2, 0, 1]));
    }
);

runtime_test!(
    /// `+` matches one level, `#` any number including the parent
    /// (MQTT-4.7.1-2/-3).
    wildcards_match_levels,
    |b: &TestBroker| {
        let mut plus = b.client("plus");
        plus.subscribe(1, &[("a/+/c", 0)]);
        let mut hash = b.client("hash");
        hash.subscribe(1, &[("a/#", 0)]);
        let mut publisher = b.client("pub");
        for topic in ["a", "a/b/c", "a/b/d"] {
            publisher.send(&packets::publish0(topic, topic.as_bytes()));
        }
        publisher.ping();
        assert_eq!(plus.recv().publish().0, "a/b/c");
        plus.expect_nothing_queued();
        for topic in ["a", "a/b/c", "a/b/d"] {
            assert_eq!(hash.recv().publish().0, topic);
        }
    }
);

runtime_test!(
    /// MQTT-4.7.2-1: filters starting with a wildcard do not match topics
    /// starting with `$`; `$`-prefixed filters do.
    mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics,
    |b: &TestBroker| {
        let mut all = b.client("all");
        all.subscribe(1, &[("#", 0), ("+/x", 0)]);
        let mut dollar = b.client("dollar");
        dollar.subscribe(1, &[("$app/#", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("$app/x", b"d"));
        publisher.ping();
        assert_eq!(dollar.recv().publish().0, "$app/x");
        all.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.8.4-3: subscribing again to an identical filter replaces the
    /// subscription (new QoS, still one copy per message).
    mqtt_3_8_4_3_repeated_filter_replaces_subscription,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("r", 1)]);
        sub.subscribe(2, &[("r", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("r", b"x", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        assert_eq!(sub.recv().qos(), 0);
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.10.4-4/-5: UNSUBACK answers every UNSUBSCRIBE, even for unknown
    /// filters, and the subscription stops delivering.
    mqtt_3_10_4_5_unsubscribe_always_acknowledged,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("u", 0)]);
        sub.send(&packets::unsubscribe(2, &["u", "never/subscribed"]));
        sub.expect(&ack(UNSUBACK, 2));
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("u", b"x"));
        publisher.ping();
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.8.1-1: SUBSCRIBE with reserved flags other than 0010 closes.
    mqtt_3_8_1_1_subscribe_with_wrong_flags_closes,
    |b: &TestBroker| {
        let mut c = b.client("c");
        let mut bad = packets::subscribe(1, &[("a", 0)]);
        bad[0] = 0x80;
        c.send(&bad);
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.8.3-3: SUBSCRIBE without any filter closes.
    mqtt_3_8_3_3_subscribe_without_filters_closes,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.send(&packets::subscribe(1, &[]));
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.10.3-2: UNSUBSCRIBE without any filter closes.
    mqtt_3_10_3_2_unsubscribe_without_filters_closes,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.send(&packets::unsubscribe(1, &[]));
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.8.3-4: a requested QoS above 2 closes.
    mqtt_3_8_3_4_subscribe_with_qos_3_closes,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.send(&packets::subscribe(1, &[("a", 3)]));
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-4.7.1-2/-3, MQTT-4.7.3-1: invalid filters close the connection.
    mqtt_4_7_1_invalid_filters_close,
    |b: &TestBroker| {
        for filter in ["a/#/b", "a+", "#x", ""] {
            let mut c = b.client("c");
            c.send(&packets::subscribe(1, &[(filter, 0)]));
            c.expect_closed();
        }
    }
);

runtime_test!(
    /// MQTT-3.10.4-1: UNSUBSCRIBE compares filters character by character,
    /// it does not match them: `a/+`, `a/#`, `+/b` and `#` do not remove a
    /// subscription to `a/b`, and `x/y` does not remove `x/#`; the exact
    /// filter does.
    mqtt_3_10_4_1_unsubscribe_compares_filters_literally,
    |b: &TestBroker| {
        let mut exact = b.client("exact");
        exact.subscribe(1, &[("a/b", 0)]);
        exact.send(&packets::unsubscribe(2, &["a/+", "a/#", "+/b", "#"]));
        exact.expect(&ack(UNSUBACK, 2));
        let mut wild = b.client("wild");
        wild.subscribe(1, &[("x/#", 0)]);
        wild.send(&packets::unsubscribe(2, &["x/y"]));
        wild.expect(&ack(UNSUBACK, 2));
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("a/b", b"still a/b"));
        publisher.send(&packets::publish0("x/y", b"still x/#"));
        publisher.ping();
        assert_eq!(exact.recv().publish(), ("a/b".into(), None, b"still a/b".to_vec()));
        assert_eq!(wild.recv().publish(), ("x/y".into(), None, b"still x/#".to_vec()));
        exact.send(&packets::unsubscribe(3, &["a/b"]));
        exact.expect(&ack(UNSUBACK, 3));
        wild.send(&packets::unsubscribe(3, &["x/#"]));
        wild.expect(&ack(UNSUBACK, 3));
        publisher.send(&packets::publish0("a/b", b"gone"));
        publisher.send(&packets::publish0("x/y", b"gone"));
        publisher.ping();
        exact.expect_nothing_queued();
        wild.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.7.3-4: topic matching is case sensitive and does no
    /// normalization: a subscriber to `a/B` does not get `a/b`, nor `A/#` get
    /// `a/x`, `Accounts` does not get `ACCOUNTS`, and `\u{C5}` (Å) does not
    /// get its decomposed form `A\u{30A}`; each gets its own exact topic.
    mqtt_4_7_3_4_topics_are_case_sensitive_and_not_normalized,
    |b: &TestBroker| {
        let cases = [("a/B", "a/b"), ("A/#", "a/x"), ("Accounts", "ACCOUNTS"), ("\u{c5}", "A\u{30a}")];
        let mut subs: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (filter, _))| {
                let mut s = b.client(&format!("sub{i}"));
                s.subscribe(1, &[(filter, 0)]);
                s
            })
            .collect();
        let mut publisher = b.client("pub");
        for (_, other) in cases {
            publisher.send(&packets::publish0(other, b"other spelling"));
        }
        publisher.send(&packets::publish0("a/B", b"exact"));
        publisher.send(&packets::publish0("A/x", b"exact"));
        publisher.send(&packets::publish0("Accounts", b"exact"));
        publisher.send(&packets::publish0("\u{c5}", b"exact"));
        publisher.ping();
        for (sub, (filter, _)) in subs.iter_mut().zip(cases) {
            let (topic, _, payload) = sub.recv().publish();
            assert_eq!(payload, b"exact", "subscriber to {filter:?} got {topic:?}");
            sub.expect_nothing_queued();
        }
    }
);

runtime_test!(
    /// MQTT-3.8.4-3 / MQTT-3.10.4-2 within one turn of a pipelining
    /// publisher: a connection reuses a topic's match for its next PUBLISH
    /// only while no subscription changed. Its own SUBSCRIBE between two
    /// PUBLISHes to the topic (all in one write) gets it the second, and
    /// its UNSUBSCRIBE stops the third; another subscriber gets all three,
    /// in order.
    mqtt_3_10_4_2_a_pipelined_subscribe_and_unsubscribe_change_the_next_publish,
    |b: &TestBroker| {
        let mut other = b.client("other");
        other.subscribe(1, &[("p/t", 0)]);
        let mut publisher = b.client("pub");
        let mut turn = packets::publish0("p/t", b"1");
        turn.extend(packets::subscribe(7, &[("p/t", 0)]));
        turn.extend(packets::publish0("p/t", b"2"));
        turn.extend(packets::unsubscribe(8, &["p/t"]));
        turn.extend(packets::publish0("p/t", b"3"));
        turn.extend(packets::PINGREQ);
        publisher.send(&turn);
        // Its own deliveries follow the turn's answers: a second PINGRESP
        // comes after anything queued for it.
        let (mut got, mut pongs) = (Vec::new(), 0);
        while pongs < 2 {
            let packet = publisher.recv();
            match packet.header >> 4 {
                3 => got.push(packet.publish().2),
                9 => assert_eq!(packet, publisher_suback()),
                11 => assert_eq!(packet.body, 8u16.to_be_bytes()),
                13 => {
                    pongs += 1;
                    if pongs < 2 {
                        publisher.send(&packets::PINGREQ);
                    }
                }
                _ => panic!("unexpected {packet:?}"),
            }
        }
        assert_eq!(got, vec![b"2".to_vec()], "only what was published while subscribed");
        for payload in [b"1", b"2", b"3"] {
            assert_eq!(other.recv().publish().2, payload);
        }
        other.expect_nothing_queued();
    }
);

fn publisher_suback() -> crate::support::client::Received {
    let bytes = packets::suback(7, &[0]);
    crate::support::client::Received { header: bytes[0], body: bytes[2..].to_vec() }
}
