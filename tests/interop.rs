//! Independent clients against midge: Debian's mosquitto_sub / mosquitto_pub.

use crate::support::TestBroker;
use crate::support::process::{Process, run};

/// Subscribes with mosquitto_sub to `filter` at QoS 1, waits for its SUBACK,
/// publishes one message per (topic, qos, payload) with mosquitto_pub, and
/// checks each arrives at min(published QoS, 1).
fn round_trip(b: &TestBroker, filter: &str, messages: &[(&str, u8, &str)]) {
    let port = b.addr.port().to_string();
    let count = messages.len().to_string();
    let sub_args =
        ["-h", "127.0.0.1", "-p", &port, "-t", filter, "-q", "1", "-C", &count, "-W", "20", "-d", "-F", "msg %t %p"];
    let mut sub = Process::mosquitto_sub(&sub_args);
    sub.wait_for("Subscribed (mid");
    for (topic, qos, payload) in messages {
        let qos = qos.to_string();
        let pub_args = ["-h", "127.0.0.1", "-p", &port, "-t", topic, "-q", &qos, "-m", payload];
        assert_eq!(run("mosquitto_pub", &pub_args), Some(0), "mosquitto_pub -q {qos} failed");
    }
    for (topic, qos, payload) in messages {
        let delivered = qos.min(&1); // the subscription is at QoS 1
        let received = sub.wait_for(&format!("'{topic}', ..."));
        assert!(received.contains(&format!(", q{delivered}, ")), "{topic} not at QoS {delivered}: {received}");
        sub.wait_for(&format!("msg {topic} {payload}"));
    }
    assert_eq!(sub.wait_exit(), Some(0));
}

runtime_test!(
    /// mosquitto_sub on `a/#` at QoS 1 receives mosquitto_pub messages at QoS 0 and 1.
    mosquitto_clients_wildcard_qos0_and_qos1,
    |b: &TestBroker| round_trip(b, "a/#", &[("a/b", 0, "zero"), ("a/b/c", 1, "one")])
);

runtime_test!(
    /// `+` matches one level; mosquitto_pub's QoS 2 handshake completes.
    mosquitto_clients_qos2_publish_and_plus_wildcard,
    |b: &TestBroker| round_trip(b, "s/+/t", &[("s/x/t", 1, "first"), ("s/y/t", 2, "second")])
);
