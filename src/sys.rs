//! The `$SYS` publisher: Mosquitto-compatible broker statistics, published
//! retained at QoS 0 every `sys_interval`, read from the same counters as
//! the Prometheus metrics (`crate::metrics`).

use crate::broker::Broker;
use crate::packet::QoS;
use crate::runtime::Runtime;
use crate::session::Message;
use async_channel::Receiver;
use futures::future::{Either, select};
use futures::pin_mut;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Publishes `$SYS/broker/...` until `stopped` closes; does nothing when the
/// interval is zero.
pub async fn run<R: Runtime>(rt: R, broker: Broker, stopped: Receiver<()>) {
    let interval = broker.config().sys_interval;
    if interval.is_zero() {
        return;
    }
    let started = Instant::now();
    publish(&broker, "version", format!("midge version {}", env!("CARGO_PKG_VERSION")));
    loop {
        publish_stats(&broker, started);
        let tick = rt.sleep(interval);
        let stop = stopped.recv();
        pin_mut!(tick, stop);
        if let Either::Right(_) = select(tick, stop).await {
            return;
        }
    }
}

fn publish_stats(broker: &Broker, started: Instant) {
    let s = broker.stats();
    let values = [
        ("uptime", format!("{} seconds", started.elapsed().as_secs())),
        ("clients/connected", s.clients_connected.load(Relaxed).to_string()),
        ("clients/total", broker.client_count().to_string()),
        ("clients/maximum", s.clients_maximum.load(Relaxed).to_string()),
        ("messages/received", s.messages_received_total().to_string()),
        ("messages/sent", s.messages_sent_total().to_string()),
        ("publish/messages/dropped", s.queue_drops().to_string()),
        ("retained messages/count", broker.retained_count().to_string()),
        ("subscriptions/count", broker.subscription_count().to_string()),
        ("bytes/received", s.bytes_received.load(Relaxed).to_string()),
        ("bytes/sent", s.bytes_sent.load(Relaxed).to_string()),
    ];
    for (topic, value) in values {
        publish(broker, topic, value);
    }
    if let Some(peers) = broker.peers() {
        let f = peers.figures();
        publish_figures(
            broker,
            "cluster",
            [
                ("nodes", f.nodes),
                ("routes", f.routes),
                ("messages/forwarded", f.forwarded),
                ("messages/received", f.received),
                ("messages/dropped", f.dropped),
                ("messages/waiting", f.waiting),
            ],
        );
    }
    for bridge in s.bridges() {
        let f = bridge.figures(broker);
        publish_figures(
            broker,
            &format!("bridge/{}", bridge.name),
            [
                ("state", f.connected),
                ("queued", f.queued),
                ("connects", f.connects),
                ("messages/forwarded", f.forwarded),
                ("messages/received", f.received),
                ("messages/dropped", f.dropped),
                ("messages/refused", f.refused),
            ],
        );
    }
}

/// Publishes `figures` under `$SYS/broker/{prefix}/`.
fn publish_figures<const N: usize>(broker: &Broker, prefix: &str, figures: [(&str, u64); N]) {
    for (topic, value) in figures {
        publish(broker, &format!("{prefix}/{topic}"), value.to_string());
    }
}

fn publish(broker: &Broker, topic: &str, value: String) {
    let message = Message::new(format!("$SYS/broker/{topic}").into(), value.into(), QoS::AtMostOnce, true);
    broker.publish(message, true);
}
