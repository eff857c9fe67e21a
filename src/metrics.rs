//! The Prometheus metrics: a prometheus-client collector that reads the
//! broker's counters ([`crate::stats`], the same ones `$SYS` reads) and its
//! gauges at scrape time, so the hot path stays a relaxed atomic add.
//! Served by [`crate::http`] as `GET /metrics`.

use crate::broker::Broker;
use crate::stats::{DropCause, StoreStats, protocol_label};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The `Content-Type` of what [`encode`] writes: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric family of a broker, prefixed `midge_`.
pub fn registry(broker: Broker) -> Registry {
    let mut registry = Registry::with_prefix("midge");
    registry.register_collector(Box::new(BrokerCollector { broker }));
    registry
}

/// The registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; a collector error would be a bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        log::error!("metrics: encoding failed: {e}");
    }
    text
}

struct BrokerCollector {
    broker: Broker,
}

impl fmt::Debug for BrokerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BrokerCollector")
    }
}

const QOS: [&str; 3] = ["0", "1", "2"];

/// One family: its descriptor, then `samples` writes its series.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: impl FnOnce(MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    samples(encoder.encode_descriptor(name, help, unit.as_ref(), kind)?)
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    family(encoder, name, help, None, MetricType::Counter, |m| ConstCounter::new(value).encode(m))
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    family(encoder, name, help, None, MetricType::Gauge, |m| ConstGauge::new(value).encode(m))
}

/// A counter family labelled `qos`, one series per QoS level.
fn by_qos(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    values: &[AtomicU64; 3],
) -> fmt::Result {
    family(encoder, name, help, unit, MetricType::Counter, |mut m| {
        for (qos, value) in QOS.iter().zip(values) {
            ConstCounter::new(value.load(Relaxed)).encode(m.encode_family(&[("qos", *qos)])?)?;
        }
        Ok(())
    })
}

/// One family per bridge figure, labelled `bridge`.
fn bridges(e: &mut DescriptorEncoder<'_>, broker: &Broker) -> fmt::Result {
    let bridges = broker.stats().bridges();
    if bridges.is_empty() {
        return Ok(());
    }
    let figures: Vec<_> = bridges.iter().map(|b| (b, b.figures(broker))).collect();
    type Figure = fn(&crate::stats::BridgeFigures) -> u64;
    let families: [(&str, &str, MetricType, Figure); 7] = [
        ("bridge_connected", "1 while the bridge is connected to its remote, else 0.", MetricType::Gauge, |f| {
            f.connected
        }),
        ("bridge_queued_messages", "Messages queued or in flight for the remote.", MetricType::Gauge, |f| f.queued),
        ("bridge_connects", "Successful connections to the remote.", MetricType::Counter, |f| f.connects),
        ("bridge_forwarded_messages", "Messages sent to the remote.", MetricType::Counter, |f| f.forwarded),
        (
            "bridge_received_messages",
            "Messages received from the remote and published here.",
            MetricType::Counter,
            |f| f.received,
        ),
        (
            "bridge_dropped_messages",
            "Messages for the remote dropped because the bridge's queue was full.",
            MetricType::Counter,
            |f| f.dropped,
        ),
        ("bridge_refused_messages", "Messages from the remote that matched no in topic.", MetricType::Counter, |f| {
            f.refused
        }),
    ];
    for (name, help, kind, value) in families {
        family(e, name, help, None, kind, |mut m| {
            for (b, f) in &figures {
                let labels = [("bridge", b.name.as_str())];
                let m = m.encode_family(&labels)?;
                match kind {
                    MetricType::Gauge => ConstGauge::new(value(f)).encode(m)?,
                    _ => ConstCounter::new(value(f)).encode(m)?,
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let (broker, s) = (&self.broker, self.broker.stats());
        let listeners = s.listeners();
        let by_listener = |m: &mut MetricEncoder<'_>, current: bool| {
            for l in &listeners {
                for (level, now, total) in l.by_protocol() {
                    let labels =
                        [("listener", l.listener.as_str()), ("kind", l.kind), ("protocol", protocol_label(level))];
                    let m = m.encode_family(&labels)?;
                    match current {
                        true => ConstGauge::new(now).encode(m)?,
                        false => ConstCounter::new(total).encode(m)?,
                    }
                }
            }
            Ok(())
        };
        family(
            &mut e,
            "clients_connected",
            "Clients connected now, by listener and protocol version.",
            None,
            MetricType::Gauge,
            |mut m| by_listener(&mut m, true),
        )?;
        family(
            &mut e,
            "connections",
            "Connections accepted (CONNACK 0), by listener and protocol version.",
            None,
            MetricType::Counter,
            |mut m| by_listener(&mut m, false),
        )?;
        gauge(&mut e, "clients_maximum", "The most clients connected at once.", s.clients_maximum.load(Relaxed))?;
        let (online, offline, persistent) = broker.session_counts();
        family(
            &mut e,
            "sessions",
            "Sessions, by whether a client is connected to them.",
            None,
            MetricType::Gauge,
            |mut m| {
                ConstGauge::new(online as u64).encode(m.encode_family(&[("state", "online")])?)?;
                ConstGauge::new(offline as u64).encode(m.encode_family(&[("state", "offline")])?)
            },
        )?;
        gauge(
            &mut e,
            "sessions_persistent",
            "Persistent sessions (clean session 0), online or not.",
            persistent as u64,
        )?;
        gauge(&mut e, "subscriptions", "Subscriptions (filter, client).", broker.subscription_count() as u64)?;
        gauge(&mut e, "retained_messages", "Retained messages ($SYS ones included).", broker.retained_count() as u64)?;
        gauge(&mut e, "queued_messages", "Messages queued or in flight in every session.", broker.queued_messages())?;
        by_qos(
            &mut e,
            "messages_received",
            "PUBLISH packets received from clients, by QoS.",
            None,
            &s.messages_received,
        )?;
        by_qos(&mut e, "messages_sent", "PUBLISH packets sent to clients, by QoS.", None, &s.messages_sent)?;
        let (received, sent) = (
            "Payload bytes of the PUBLISH packets received, by QoS.",
            "Payload bytes of the PUBLISH packets sent, by QoS.",
        );
        by_qos(&mut e, "payload_received", received, Some(Unit::Bytes), &s.payload_received)?;
        by_qos(&mut e, "payload_sent", sent, Some(Unit::Bytes), &s.payload_sent)?;
        family(&mut e, "received", "Bytes of MQTT packets received.", Some(Unit::Bytes), MetricType::Counter, |m| {
            ConstCounter::new(s.bytes_received.load(Relaxed)).encode(m)
        })?;
        family(&mut e, "sent", "Bytes of MQTT packets sent.", Some(Unit::Bytes), MetricType::Counter, |m| {
            ConstCounter::new(s.bytes_sent.load(Relaxed)).encode(m)
        })?;
        family(
            &mut e,
            "messages_dropped",
            "Messages not delivered, by cause: queue_full, slow_consumer, too_large, expired, acl.",
            None,
            MetricType::Counter,
            |mut m| {
                for cause in DropCause::ALL {
                    ConstCounter::new(s.dropped_for(cause)).encode(m.encode_family(&[("cause", cause.label())])?)?;
                }
                Ok(())
            },
        )?;
        bridges(&mut e, broker)?;
        let auth = "CONNECTs refused for their credentials (password file, hooks, certificate identity).";
        counter(&mut e, "auth_failures", auth, s.auth_failures.load(Relaxed))?;
        let tls = "TLS handshakes that failed or did not finish within the connect timeout.";
        counter(&mut e, "tls_handshake_failures", tls, s.tls_handshake_failures.load(Relaxed))?;
        let none = StoreStats::default();
        let store = broker.store().map_or(&none, |p| p.stats());
        counter(&mut e, "store_commits", "Store transactions committed.", store.commits.load(Relaxed))?;
        let failed = "Store transactions that failed (what they covered was not acknowledged).";
        counter(&mut e, "store_commit_failures", failed, store.failures.load(Relaxed))?;
        if let Some(peers) = broker.peers() {
            let f = peers.figures();
            gauge(&mut e, "cluster_nodes", "Live nodes of the cluster, this one included.", f.nodes)?;
            gauge(&mut e, "cluster_routes", "Filters of the other live nodes in this node's route table.", f.routes)?;
            counter(&mut e, "cluster_forwarded_messages", "Message copies forwarded to other nodes.", f.forwarded)?;
            counter(&mut e, "cluster_received_messages", "Messages other nodes forwarded here.", f.received)?;
            let dropped = "QoS 0 messages not forwarded: too many waited for Redis.";
            counter(&mut e, "cluster_dropped_messages", dropped, f.dropped)?;
            gauge(&mut e, "cluster_waiting_messages", "Messages waiting to be written to Redis.", f.waiting)?;
        }
        let (sum, count, buckets) = store.histogram();
        family(
            &mut e,
            "store_commit_duration",
            "Time one store commit (a transaction, fsync included) took.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            |mut m| m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None),
        )
    }
}
