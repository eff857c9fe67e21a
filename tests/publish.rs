use crate::support::TestBroker;
use crate::support::packets::{self, CONNACK_ACCEPTED, Connect, PUBACK, PUBCOMP, PUBREC, PUBREL, ack};

runtime_test!(
    /// QoS 0 from publisher to subscriber, payload and topic intact.
    qos0_round_trip,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("a/b", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("a/b", b"hello"));
        let got = sub.recv();
        assert_eq!(got.publish(), ("a/b".into(), None, b"hello".to_vec()));
        assert_eq!(got.qos(), 0);
    }
);

runtime_test!(
    /// MQTT-4.3.2-2: a QoS 1 PUBLISH is acknowledged with PUBACK carrying its
    /// packet id; the subscriber gets it at QoS 1 with a non-zero packet id
    /// (MQTT-2.3.1-1) and the broker accepts its PUBACK.
    mqtt_4_3_2_2_qos1_both_ways,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("a/b", 1)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("a/b", b"one", 1, 77));
        publisher.expect(&ack(PUBACK, 77));
        let got = sub.recv();
        assert_eq!(got.qos(), 1);
        let (topic, pid, payload) = got.publish();
        assert_eq!((topic.as_str(), payload.as_slice()), ("a/b", &b"one"[..]));
        let pid = pid.unwrap();
        assert_ne!(pid, 0);
        sub.send(&ack(PUBACK, pid));
        sub.ping();
    }
);

runtime_test!(
    /// MQTT-3.8.4-6: delivery QoS is the minimum of the published QoS and the
    /// granted QoS.
    mqtt_3_8_4_6_delivery_at_minimum_of_published_and_granted_qos,
    |b: &TestBroker| {
        let mut low = b.client("low");
        low.subscribe(1, &[("t", 0)]);
        let mut high = b.client("high");
        high.subscribe(1, &[("t", 2)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("t", b"q1", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        assert_eq!(low.recv().qos(), 0);
        assert_eq!(high.recv().qos(), 1);
    }
);

runtime_test!(
    /// MQTT-4.3.3-2: inbound QoS 2 gets PUBREC; a re-sent PUBLISH with DUP
    /// before PUBREL is acknowledged again but not delivered twice; PUBREL
    /// gets PUBCOMP.
    mqtt_4_3_3_2_inbound_qos2_exactly_once,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("q2", 2)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("q2", b"once", 2, 5));
        publisher.expect(&ack(PUBREC, 5));
        publisher.send(&packets::publish_with("q2", b"once", 2, Some(5), false, true));
        publisher.expect(&ack(PUBREC, 5));
        publisher.send(&ack(PUBREL, 5));
        publisher.expect(&ack(PUBCOMP, 5));
        let got = sub.recv();
        assert_eq!(got.qos(), 2);
        let pid = got.publish().1.unwrap();
        sub.send(&ack(PUBREC, pid));
        sub.expect(&ack(PUBREL, pid));
        sub.send(&ack(PUBCOMP, pid));
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT 3.1 (sections 3.6, 3.8, 3.10): a PUBREL sent again after a
    /// reconnect carries DUP, as 3.1 allows, and is answered by PUBCOMP (the
    /// message delivered once); so are SUBSCRIBE and UNSUBSCRIBE with DUP.
    /// Each version keeps its own header rules: the same PUBREL from an
    /// MQTT 3.1.1 client closes its connection (MQTT-2.2.2-2).
    mqtt_3_1_pubrel_resent_with_dup_gets_pubcomp,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("q2", 0)]);
        let v31 = Connect { protocol: "MQIsdp", level: 3, client_id: "old-pub", clean: false, ..Connect::default() };
        let mut publisher = b.raw();
        publisher.send(&v31.bytes());
        publisher.expect(&CONNACK_ACCEPTED);
        publisher.send(&packets::publish("q2", b"once", 2, 5));
        publisher.expect(&ack(PUBREC, 5));
        drop(publisher);
        let mut publisher = b.raw();
        publisher.send(&v31.bytes());
        publisher.expect(&CONNACK_ACCEPTED);
        publisher.send(&ack(PUBREL | 0x08, 5));
        publisher.expect(&ack(PUBCOMP, 5));
        let mut subscribe = packets::subscribe(6, &[("old/#", 1)]);
        subscribe[0] |= 0x08;
        publisher.send(&subscribe);
        publisher.expect(&packets::suback(6, &[1]));
        let mut unsubscribe = packets::unsubscribe(7, &["old/#"]);
        unsubscribe[0] |= 0x08;
        publisher.send(&unsubscribe);
        publisher.expect(&ack(packets::UNSUBACK, 7));
        assert_eq!(sub.recv().publish().2, b"once");
        sub.expect_nothing_queued();
        let mut v311 = b.client("new-pub");
        v311.send(&ack(PUBREL | 0x08, 1));
        v311.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.3.5-1: overlapping subscriptions deliver one copy per client, at
    /// the highest granted QoS.
    mqtt_3_3_5_1_overlapping_subscriptions_deliver_once_at_max_qos,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("a/+", 0), ("a/#", 1), ("a/b", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("a/b", b"x", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        publisher.ping();
        let got = sub.recv();
        assert_eq!(got.qos(), 1);
        sub.send(&ack(PUBACK, got.publish().1.unwrap()));
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-4.6.0-2/-6: 1000 QoS 1 messages from one publisher on one topic
    /// arrive in order, with the inflight window (20) refilled as the
    /// subscriber acknowledges.
    mqtt_4_6_0_qos1_order_is_preserved,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("seq", 1)]);
        let mut publisher = b.client("pub");
        let reader = std::thread::spawn(move || {
            for i in 0u32..1000 {
                let got = sub.recv();
                let (_, pid, payload) = got.publish();
                assert_eq!(payload, i.to_be_bytes(), "message {i} out of order");
                sub.send(&ack(PUBACK, pid.unwrap()));
            }
        });
        for i in 0u32..1000 {
            let pid = (i % 60000 + 1) as u16;
            publisher.send(&packets::publish("seq", &i.to_be_bytes(), 1, pid));
            publisher.expect(&ack(PUBACK, pid));
        }
        reader.join().unwrap();
    }
);

runtime_test!(
    /// Outbound QoS 2 (MQTT-4.3.3-1): the delivery is a PUBLISH at QoS 2
    /// with DUP 0 and retain 0 (first byte 0x34), then PUBREC from the
    /// subscriber, PUBREL from the broker, PUBCOMP; packet ids are the
    /// broker's own.
    outbound_qos2_handshake,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("t2", 2)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("t2", b"a", 2, 9));
        publisher.expect(&ack(PUBREC, 9));
        let got = sub.recv();
        assert_eq!(got.qos(), 2, "delivered at QoS 2: {got:?}");
        assert_eq!(got.header, 0x34, "PUBLISH, DUP 0, QoS 2, retain 0");
        let (topic, pid, payload) = got.publish();
        assert_eq!((topic.as_str(), payload.as_slice()), ("t2", &b"a"[..]));
        let pid = pid.unwrap();
        assert_ne!(pid, 0);
        assert!(!got.dup());
        sub.send(&ack(PUBREC, pid));
        sub.expect(&ack(PUBREL, pid));
        sub.send(&ack(PUBCOMP, pid));
        sub.ping();
    }
);

runtime_test!(
    /// MQTT-3.3.1-3: the DUP flag of an outgoing PUBLISH is set independently
    /// of the incoming one: a first delivery has DUP 0.
    mqtt_3_3_1_3_outgoing_dup_is_independent,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("d", 1)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish_with("d", b"x", 1, Some(3), false, true));
        publisher.expect(&ack(PUBACK, 3));
        assert!(!sub.recv().dup());
    }
);

runtime_test!(
    /// MQTT-1.5.3-3 / MQTT-4.7.3-4: a BOM (U+FEFF) in a topic is neither
    /// stripped nor normalised: it only matches a filter with the same bytes.
    mqtt_1_5_3_3_bom_is_kept_in_topics,
    |b: &TestBroker| {
        let mut exact = b.client("exact");
        exact.subscribe(1, &[("\u{feff}t", 0)]);
        let mut plain = b.client("plain");
        plain.subscribe(1, &[("t", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("\u{feff}t", b"bom"));
        publisher.ping();
        assert_eq!(exact.recv().publish().0, "\u{feff}t");
        plain.expect_nothing_queued();
    }
);

runtime_test!(
    /// Large payloads go to subscribers from the publisher's shared bytes
    /// (a slice of a vectored write, not a copy): interleaved with small
    /// messages, at QoS 0, 1 and 2 (MQTT-3.8.4-6 minimum), each subscriber
    /// gets every payload byte-exact and in order (MQTT-4.6.0-2).
    shared_payloads_arrive_intact_and_in_order_at_every_qos,
    |b: &TestBroker| {
        let mut subs: Vec<_> = (0..3u8)
            .map(|qos| {
                let mut s = b.client(&format!("sub{qos}"));
                s.subscribe(1, &[("big/#", qos)]);
                s
            })
            .collect();
        let mut publisher = b.client("pub");
        let payloads: Vec<Vec<u8>> = (0..6u32)
            .map(|i| match i % 2 {
                0 => (0..100_000u32).map(|j| (j * 7 + i) as u8).collect(),
                _ => format!("small {i}").into_bytes(),
            })
            .collect();
        for (i, payload) in payloads.iter().enumerate() {
            let pid = i as u16 + 1;
            publisher.send(&packets::publish("big/t", payload, 2, pid));
            publisher.expect(&ack(PUBREC, pid));
            publisher.send(&ack(PUBREL, pid));
            publisher.expect(&ack(PUBCOMP, pid));
        }
        for (qos, sub) in subs.iter_mut().enumerate() {
            // All six fit in the inflight window: read them, then acknowledge.
            let mut pids = Vec::new();
            for expected in &payloads {
                let got = sub.recv();
                assert_eq!(got.qos(), qos as u8);
                let (topic, pid, payload) = got.publish();
                assert_eq!(topic, "big/t");
                assert!(payload == *expected, "subscriber at QoS {qos}: payload differs");
                pids.extend(pid);
            }
            for pid in pids {
                match qos {
                    1 => sub.send(&ack(PUBACK, pid)),
                    _ => {
                        sub.send(&ack(PUBREC, pid));
                        sub.expect(&ack(PUBREL, pid));
                        sub.send(&ack(PUBCOMP, pid));
                    }
                }
            }
            sub.expect_nothing_queued();
        }
    }
);
