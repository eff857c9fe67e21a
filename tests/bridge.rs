//! Bridges (issue 14) against the real thing: Debian's Mosquitto broker as
//! the remote, started on a free port, and midge bridged to midge. Each
//! test runs on both runtimes.

use crate::support::client::Raw;
use crate::support::packets::{self, PUBACK, PUBCOMP, PUBREC, PUBREL, ack};
use crate::support::process::Process;
use crate::support::{TempDir, TestBroker};
use midge::config::{Bridge, BridgeDirection, BridgeTopic};
use midge::packet::{Protocol, QoS};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A port that was free a moment ago, for a configuration file.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Mosquitto broker on `port` (anonymous, in memory unless `extra` says
/// otherwise), started and waited for.
pub struct Mosquitto {
    pub addr: SocketAddr,
    /// Killed on drop.
    pub process: Process,
}

impl Mosquitto {
    pub fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is needed: apt-get install mosquitto (.ci/run installs it)"
        );
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let text = format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stdout\nlog_type all\n{extra}\n");
        std::fs::write(&conf, text).unwrap();
        // Line-buffered, or its log lines arrive only at exit.
        let mut process = Process::spawn("stdbuf", &["-oL", MOSQUITTO, "-c", conf.to_str().unwrap()]);
        process.wait_for("running");
        Mosquitto { addr: ([127, 0, 0, 1], port).into(), process }
    }
}

pub fn topic(pattern: &str, direction: BridgeDirection, qos: QoS, local: &str, remote: &str) -> BridgeTopic {
    BridgeTopic { pattern: pattern.into(), direction, qos, local_prefix: local.into(), remote_prefix: remote.into() }
}

/// A bridge to `remote` at Mosquitto's defaults, reconnecting quickly.
pub fn bridge_to(remote: SocketAddr, topics: Vec<BridgeTopic>) -> Bridge {
    Bridge {
        remote_clientid: Some("edge-bridge".into()),
        restart_timeout: (Duration::from_millis(100), Duration::from_millis(500)),
        ..Bridge::new("edge", remote.ip().to_string(), remote.port(), topics)
    }
}

/// Waits until the bridge says it is connected: its retained state message
/// reads "1" on this broker.
pub fn wait_until_up(broker: &TestBroker) {
    let mut watch = broker.client("state-watch");
    watch.subscribe(1, &[("$SYS/broker/connection/+/state", 0)]);
    watch.recv_until(Duration::from_secs(20), "bridge state 1", |p| (p.publish().2 == b"1").then_some(()));
}

/// A 3.1.1 client of any broker, clean session.
pub fn client(addr: SocketAddr, id: &str) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.send(&packets::connect(id, true, 60));
    raw.expect(&packets::CONNACK_ACCEPTED);
    raw
}

/// Publishes at `qos` and completes the handshake.
pub fn publish(raw: &mut Raw, topic: &str, payload: &[u8], qos: u8, pid: u16, retain: bool) {
    raw.send(&packets::publish_with(topic, payload, qos, (qos > 0).then_some(pid), retain, false));
    match qos {
        1 => raw.expect(&ack(PUBACK, pid)),
        2 => {
            raw.expect(&ack(PUBREC, pid));
            raw.send(&ack(PUBREL, pid));
            raw.expect(&ack(PUBCOMP, pid));
        }
        _ => {}
    }
}

/// The next message a client gets, acknowledged: (topic, qos, payload, retain).
pub fn next(raw: &mut Raw) -> (String, u8, Vec<u8>, bool) {
    raw.receive_and_ack(1).remove(0)
}

fn edge_topics() -> Vec<BridgeTopic> {
    vec![
        topic("sensors/#", BridgeDirection::Out, QoS::ExactlyOnce, "edge/", "site1/"),
        topic("cmd/#", BridgeDirection::In, QoS::ExactlyOnce, "edge/", "central/"),
        topic("chat/#", BridgeDirection::Both, QoS::AtLeastOnce, "", ""),
    ]
}

fn out_in_and_both(kind: midge::RuntimeKind, protocol: Protocol) {
    let dir = TempDir::new("bridge-topics");
    let remote = Mosquitto::start(&dir.0, free_port(), "");
    let midge =
        TestBroker::start(kind, |c| c.bridges = vec![Bridge { protocol, ..bridge_to(remote.addr, edge_topics()) }]);
    let mut far = client(remote.addr, "far");
    far.subscribe(1, &[("site1/#", 2), ("chat/#", 2)]);
    let mut near = midge.client("near");
    near.subscribe(1, &[("edge/cmd/#", 2), ("chat/#", 2)]);
    wait_until_up(&midge);

    // out, with the prefixes swapped; each QoS at the lower of the
    // message's and the topic line's.
    for qos in 0..=2u8 {
        publish(&mut near, "edge/sensors/t1", &[b'0' + qos], qos, 10 + u16::from(qos), false);
        assert_eq!(next(&mut far), ("site1/sensors/t1".into(), qos, vec![b'0' + qos], false));
    }
    // Not an out topic: stays here.
    publish(&mut near, "sensors/t1", b"local only", 1, 20, false);
    // in, with the prefixes swapped.
    for qos in 0..=2u8 {
        publish(&mut far, "central/cmd/reboot", &[b'a' + qos], qos, 30 + u16::from(qos), false);
        assert_eq!(next(&mut near), ("edge/cmd/reboot".into(), qos, vec![b'a' + qos], false));
    }
    // both: at most QoS 1 across, each side gets it exactly once (no echo).
    let (mut near_pub, mut far_pub) = (midge.client("near-pub"), client(remote.addr, "far-pub"));
    publish(&mut near_pub, "chat/near", b"from near", 2, 40, false);
    assert_eq!(next(&mut near), ("chat/near".into(), 2, b"from near".to_vec(), false));
    assert_eq!(next(&mut far), ("chat/near".into(), 1, b"from near".to_vec(), false));
    publish(&mut far_pub, "chat/far", b"from far", 2, 41, false);
    assert_eq!(next(&mut far), ("chat/far".into(), 2, b"from far".to_vec(), false));
    assert_eq!(next(&mut near), ("chat/far".into(), 1, b"from far".to_vec(), false));
    // Nothing echoed: the next messages either side gets are these markers.
    publish(&mut near, "edge/sensors/marker", b"m1", 1, 50, false);
    assert_eq!(next(&mut far).0, "site1/sensors/marker");
    publish(&mut far, "central/cmd/marker", b"m2", 1, 51, false);
    assert_eq!(next(&mut near).0, "edge/cmd/marker");
    near.expect_nothing_queued();

    // Retained: kept as retained at the remote.
    publish(&mut near, "edge/sensors/kept", b"retained", 1, 60, true);
    assert_eq!(next(&mut far), ("site1/sensors/kept".into(), 1, b"retained".to_vec(), false));
    let mut late = client(remote.addr, "late");
    late.subscribe(1, &[("site1/sensors/kept", 1)]);
    assert_eq!(next(&mut late), ("site1/sensors/kept".into(), 1, b"retained".to_vec(), true));
}

runtime_kind_test!(
    /// `out`, `in` and `both` topics with prefixes, QoS 0/1/2 and retained,
    /// through a 3.1.1 bridge to Mosquitto.
    out_in_both_with_prefixes_to_mosquitto,
    |kind| out_in_and_both(kind, Protocol::V311)
);

runtime_kind_test!(
    /// The same through an MQTT 5.0 bridge (`bridge_protocol_version mqttv50`).
    out_in_both_with_prefixes_to_mosquitto_over_mqtt5,
    |kind| out_in_and_both(kind, Protocol::V5)
);
