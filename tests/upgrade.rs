//! Stores written by earlier midge releases open after an upgrade with
//! their sessions, queued messages and retained messages intact.
//!
//! `tests/fixtures/store-68c325b/midge.redb` was written by midge at commit
//! 68c325b (the release the README's first figures were taken with) by
//! `make.py` in the same folder, against `midge --data-dir`:
//! - `fx-sub-1`, persistent, subscribed to `fx/#` at QoS 1 and `fx/+/two` at
//!   QoS 2, offline while `fx/a/one` (QoS 1, three times), `fx/b/two`
//!   (QoS 2) and `fx/retained/a` (QoS 1, retained) were published;
//! - `fx-sub-2`, persistent, subscribed to `fx/q0/#` at QoS 0 (QoS 0 is not
//!   queued for offline sessions by default, so it has nothing waiting);
//! - retained `fx/retained/a` (QoS 1) and `other/retained/b` (QoS 0).

use crate::support::client::Raw;
use crate::support::packets::{self, PUBCOMP, PUBREC, PUBREL, ack};
use crate::support::{TempDir, TestBroker};
use midge::RuntimeKind;
use std::path::Path;

/// A copy of the fixture store in a fresh directory (the test may change it).
fn copy_of(fixture: &str) -> TempDir {
    let dir = TempDir::new("upgrade");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture).join("midge.redb");
    std::fs::copy(&from, dir.0.join("midge.redb")).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    dir
}

/// Receives `n` PUBLISH packets, then acknowledges each.
fn take(c: &mut Raw, n: usize) -> Vec<(String, u8, Vec<u8>, bool)> {
    c.receive_and_ack(n)
}

runtime_kind_test!(
    /// A store written by 68c325b opens: both persistent sessions resume
    /// (Session Present 1) with their subscriptions, the queued QoS 1 and 2
    /// messages arrive in order and once, and the retained messages are
    /// served to a new subscriber (MQTT 3.1.1 clients).
    store_of_68c325b_opens_with_sessions_queues_and_retained,
    |kind: RuntimeKind| {
        let data = copy_of("store-68c325b");
        let b = TestBroker::start(kind, |c| c.data_dir = Some(data.0.clone()));
        let mut sub = b.persistent("fx-sub-1", true);
        let got = take(&mut sub, 5);
        let text = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            got,
            vec![
                ("fx/a/one".into(), 1, text("queued-qos1-0"), false),
                ("fx/a/one".into(), 1, text("queued-qos1-1"), false),
                ("fx/a/one".into(), 1, text("queued-qos1-2"), false),
                ("fx/b/two".into(), 2, text("queued-qos2"), false),
                ("fx/retained/a".into(), 1, text("retained-a"), false),
            ]
        );
        sub.expect_nothing_queued();
        // The subscriptions came back too: a new message is routed to it.
        let mut publisher = b.client("fx-pub-after");
        publisher.send(&packets::publish("fx/c/two", b"after", 2, 1));
        publisher.expect(&ack(PUBREC, 1));
        publisher.send(&ack(PUBREL, 1));
        publisher.expect(&ack(PUBCOMP, 1));
        assert_eq!(take(&mut sub, 1), vec![("fx/c/two".into(), 2, text("after"), false)]);

        let mut q0 = b.persistent("fx-sub-2", true);
        q0.expect_nothing_queued();
        publisher.send(&packets::publish0("fx/q0/live", b"live"));
        assert_eq!(take(&mut q0, 1), vec![("fx/q0/live".into(), 0, text("live"), false)]);

        let mut late = b.client("fx-late");
        late.send(&packets::subscribe(1, &[("fx/retained/#", 1), ("other/#", 1)]));
        late.expect(&packets::suback(1, &[1, 1]));
        let mut retained = take(&mut late, 2);
        retained.sort();
        assert_eq!(
            retained,
            vec![
                ("fx/retained/a".into(), 1, text("retained-a"), true),
                ("other/retained/b".into(), 0, text("retained-b"), true),
            ]
        );
    }
);

runtime_kind_test!(
    /// The same 68c325b store served to MQTT 5.0 clients: a 5.0 client
    /// resuming `fx-sub-1` (Clean Start 0, Session Expiry never) gets Session
    /// Present 1 and the queued messages in order and once, its stored
    /// subscriptions route a 5.0 publisher's message with its properties,
    /// and a new 5.0 subscriber gets the retained messages.
    store_of_68c325b_is_served_to_mqtt_5_clients,
    |kind: RuntimeKind| {
        use crate::support::v5::{V5, options, publish_packet};
        use midge::packet::QoS;
        use midge::v5::{Properties, ReasonCode, Subscribe};
        use std::sync::Arc;
        let data = copy_of("store-68c325b");
        let b = TestBroker::start(kind, |c| c.data_dir = Some(data.0.clone()));
        let (mut sub, connack) = V5::accepted(b.addr, "fx-sub-1", |c| {
            c.clean_start = false;
            c.properties.session_expiry = Some(u32::MAX);
        });
        assert!(connack.session_present, "MQTT-3.2.2-2: the stored session is resumed");
        // All five are sent before any is acknowledged (the inflight window
        // is 20): receive them, then acknowledge each.
        let received: Vec<_> = (0..5).map(|_| sub.recv_publish()).collect();
        received.iter().for_each(|p| sub.ack(p));
        let got: Vec<(String, QoS, Vec<u8>)> =
            received.iter().map(|p| (p.topic.to_string(), p.qos, p.payload.to_vec())).collect();
        let text = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            got,
            vec![
                ("fx/a/one".into(), QoS::AtLeastOnce, text("queued-qos1-0")),
                ("fx/a/one".into(), QoS::AtLeastOnce, text("queued-qos1-1")),
                ("fx/a/one".into(), QoS::AtLeastOnce, text("queued-qos1-2")),
                ("fx/b/two".into(), QoS::ExactlyOnce, text("queued-qos2")),
                ("fx/retained/a".into(), QoS::AtLeastOnce, text("retained-a")),
            ]
        );
        sub.expect_nothing_queued();
        let mut publisher = V5::client(b.addr, "fx-pub5");
        let mut p = publish_packet("fx/c/two", b"after", 1);
        p.properties = Arc::new(Properties { content_type: Some("text/plain".into()), ..Properties::default() });
        publisher.publish_with(p);
        let p = sub.recv_and_ack();
        assert_eq!((&*p.topic, &p.payload[..]), ("fx/c/two", &b"after"[..]));
        assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"), "properties forwarded");

        let mut late = V5::client(b.addr, "fx-late5");
        let both = vec![("fx/retained/#".into(), options(1)), ("other/#".into(), options(1))];
        let suback = late.subscribe_with(Subscribe { pid: 0, subscription_id: None, properties: Properties::default(), filters: both });
        assert_eq!(suback.reasons, [ReasonCode::GRANTED_QOS_1; 2]);
        let mut retained: Vec<(String, Vec<u8>, bool)> = (0..2)
            .map(|_| {
                let p = late.recv_and_ack();
                (p.topic.to_string(), p.payload.to_vec(), p.retain)
            })
            .collect();
        retained.sort();
        assert_eq!(
            retained,
            vec![("fx/retained/a".into(), text("retained-a"), true), ("other/retained/b".into(), text("retained-b"), true)]
        );
        late.expect_nothing_queued();
    }
);
