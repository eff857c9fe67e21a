use crate::support::TestBroker;
use crate::support::client::{Raw, TIMEOUT};
use crate::support::packets::{self, PUBACK, ack};
use std::time::Duration;

fn fast_sys(c: &mut midge::Config) {
    c.sys_interval = Duration::from_millis(50);
}

/// Reads `$SYS` updates until one on `topic` has a value `accept` likes;
/// panics if none does within the client timeout.
fn wait_for_value(c: &mut Raw, topic: &str, accept: impl Fn(&str) -> bool) -> String {
    c.recv_until(TIMEOUT, &format!("acceptable value on {topic}"), |p| {
        let (got, _, payload) = p.publish();
        let value = String::from_utf8(payload).unwrap();
        (got == topic && accept(&value)).then_some(value)
    })
}

runtime_test!(
    /// `$SYS/broker/version` and the counters are published retained, and
    /// follow what happens: connected clients, messages received and sent,
    /// subscriptions, retained messages, bytes.
    sys_topics_report_broker_statistics,
    fast_sys,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.send(&packets::subscribe(1, &[("$SYS/broker/version", 0)]));
        watcher.expect(&packets::suback(1, &[0]));
        let (_, _, version) = watcher.recv().publish();
        assert!(String::from_utf8(version).unwrap().starts_with("midge version "));
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish_with("kept", b"x", 1, Some(1), true, false));
        publisher.expect(&ack(PUBACK, 1));
        watcher.subscribe(2, &[("$SYS/broker/#", 0)]);
        wait_for_value(&mut watcher, "$SYS/broker/clients/connected", |v| v == "2");
        wait_for_value(&mut watcher, "$SYS/broker/messages/received", |v| v == "1");
        wait_for_value(&mut watcher, "$SYS/broker/retained messages/count", |v| v != "0");
        wait_for_value(&mut watcher, "$SYS/broker/subscriptions/count", |v| v == "2");
        wait_for_value(&mut watcher, "$SYS/broker/bytes/received", |v| v.parse::<u64>().unwrap() > 0);
        wait_for_value(&mut watcher, "$SYS/broker/uptime", |v| v.ends_with(" seconds"));
    }
);

runtime_test!(
    /// A client's PUBLISH to a `$SYS` topic is ignored (acknowledged, not routed).
    client_publish_to_sys_is_ignored,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/fake", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("$SYS/fake", b"x", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        watcher.expect_nothing_queued();
    }
);
