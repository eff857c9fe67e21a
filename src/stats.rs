//! Broker counters, updated on the hot path with relaxed atomics and read by
//! the `$SYS` publisher and the Prometheus endpoint (`crate::metrics`): both
//! read these same values.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Why a message was not delivered to a subscriber (or not routed at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The queue of an offline session was full (`max_queued_messages` /
    /// `max_queued_bytes`).
    QueueFull,
    /// The subscriber made no progress for `slow_consumer_timeout` with a
    /// full queue (stuck): its QoS 0 messages, and what does not fit.
    SlowConsumer,
    /// A PUBLISH larger than `max_packet_size` (the connection is closed).
    TooLarge,
    /// Queued in a persistent session that expired (`persistent_client_expiration`).
    Expired,
    /// Refused by the ACL or the hooks: a PUBLISH or will its client may not
    /// publish, or a copy its subscriber may not read.
    Acl,
}

impl DropCause {
    /// Every cause, in label order.
    pub const ALL: [DropCause; 5] =
        [DropCause::QueueFull, DropCause::SlowConsumer, DropCause::TooLarge, DropCause::Expired, DropCause::Acl];

    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::QueueFull => "queue_full",
            DropCause::SlowConsumer => "slow_consumer",
            DropCause::TooLarge => "too_large",
            DropCause::Expired => "expired",
            DropCause::Acl => "acl",
        }
    }
}

/// MQTT protocol levels counted per listener: 3 (3.1) and 4 (3.1.1); 5
/// (5.0, labelled already) joins when the broker speaks it.
const LEVELS: std::ops::RangeInclusive<u8> = 3..=4;
const SLOTS: usize = (*LEVELS.end() - *LEVELS.start() + 1) as usize;

/// The `protocol` label of a CONNECT's protocol level.
pub fn protocol_label(level: u8) -> &'static str {
    match level {
        3 => "3.1",
        4 => "3.1.1",
        5 => "5.0",
        _ => "unknown",
    }
}

/// Counters a `$SYS` publisher, the metrics endpoint or an embedding
/// application can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients currently connected.
    pub clients_connected: AtomicU64,
    /// The most clients connected at once.
    pub clients_maximum: AtomicU64,
    /// PUBLISH packets received from clients, by QoS.
    pub messages_received: [AtomicU64; 3],
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_sent: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub payload_received: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    pub payload_sent: [AtomicU64; 3],
    /// Messages dropped, by [`DropCause`] (in [`DropCause::ALL`] order).
    pub messages_dropped: [AtomicU64; DropCause::ALL.len()],
    /// Bytes of MQTT packets received.
    pub bytes_received: AtomicU64,
    /// Bytes of MQTT packets sent.
    pub bytes_sent: AtomicU64,
    /// CONNECTs refused for their credentials (password file, hooks, a
    /// missing certificate identity).
    pub auth_failures: AtomicU64,
    /// TLS handshakes that failed or did not finish within the connect timeout.
    pub tls_handshake_failures: AtomicU64,
    /// Per-listener connection counts, registered when a server starts.
    listeners: Mutex<Vec<Arc<ListenerStats>>>,
    /// Per-bridge counters, registered when a bridge starts.
    bridges: Mutex<Vec<Arc<BridgeStats>>>,
}

fn sum(counters: &[AtomicU64]) -> u64 {
    counters.iter().map(|c| c.load(Relaxed)).sum()
}

impl Stats {
    pub(crate) fn received(&self, qos: usize, payload: usize) {
        self.messages_received[qos].fetch_add(1, Relaxed);
        self.payload_received[qos].fetch_add(payload as u64, Relaxed);
    }

    pub(crate) fn dropped(&self, cause: DropCause, count: u64) {
        self.messages_dropped[cause as usize].fetch_add(count, Relaxed);
    }

    /// Adds PUBLISH packets sent, by QoS: (messages, payload bytes).
    pub(crate) fn sent(&self, by_qos: &[(u64, u64); 3]) {
        for (qos, &(messages, payload)) in by_qos.iter().enumerate() {
            if messages > 0 {
                self.messages_sent[qos].fetch_add(messages, Relaxed);
                self.payload_sent[qos].fetch_add(payload, Relaxed);
            }
        }
    }

    pub(crate) fn bytes(&self, received: u64, sent: u64) {
        self.bytes_received.fetch_add(received, Relaxed);
        self.bytes_sent.fetch_add(sent, Relaxed);
    }

    pub(crate) fn connected(&self) {
        let now = self.clients_connected.fetch_add(1, Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Relaxed);
    }

    pub(crate) fn disconnected(&self) {
        self.clients_connected.fetch_sub(1, Relaxed);
    }

    pub(crate) fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// PUBLISH packets received, every QoS (`$SYS/broker/messages/received`).
    pub fn messages_received_total(&self) -> u64 {
        sum(&self.messages_received)
    }

    /// PUBLISH packets sent, every QoS (`$SYS/broker/messages/sent`).
    pub fn messages_sent_total(&self) -> u64 {
        sum(&self.messages_sent)
    }

    /// Messages dropped for one cause.
    pub fn dropped_for(&self, cause: DropCause) -> u64 {
        self.messages_dropped[cause as usize].load(Relaxed)
    }

    /// Messages dropped because a queue was full, stuck subscribers
    /// included: Mosquitto's `$SYS/broker/publish/messages/dropped`.
    pub fn queue_drops(&self) -> u64 {
        self.dropped_for(DropCause::QueueFull) + self.dropped_for(DropCause::SlowConsumer)
    }

    /// A listener's counters, registered at server start. A server started
    /// again on the same broker and address goes on with the same counters
    /// (one series per label set, and counters never go back).
    pub fn add_listener(&self, listener: String, kind: &'static str) -> Arc<ListenerStats> {
        let mut listeners = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = listeners.iter().find(|l| l.listener == listener && l.kind == kind) {
            return known.clone();
        }
        let stats =
            Arc::new(ListenerStats { listener, kind, connected: Default::default(), total: Default::default() });
        listeners.push(stats.clone());
        stats
    }

    /// A bridge's counters, registered when it starts (kept across restarts
    /// of a server on the same broker).
    pub fn add_bridge(&self, name: &str, local_id: &str) -> Arc<BridgeStats> {
        let mut bridges = self.bridges.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = bridges.iter().find(|b| b.name == name) {
            return known.clone();
        }
        let stats = Arc::new(BridgeStats { name: name.into(), local_id: local_id.into(), ..BridgeStats::default() });
        bridges.push(stats.clone());
        stats
    }

    /// Every registered bridge's counters.
    pub fn bridges(&self) -> Vec<Arc<BridgeStats>> {
        self.bridges.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every registered listener's counters.
    pub fn listeners(&self) -> Vec<Arc<ListenerStats>> {
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// One bridge's state and counters.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// The bridge's name (`connection NAME`).
    pub name: String,
    /// Its session's client id in this broker (for its queue depth).
    pub local_id: String,
    /// 1 while connected to the remote, else 0.
    pub connected: AtomicU64,
    /// Successful connections to the remote.
    pub connects: AtomicU64,
    /// Messages sent to the remote.
    pub forwarded: AtomicU64,
    /// Messages received from the remote and published here.
    pub received: AtomicU64,
    /// Messages received from the remote that matched no `in` topic, or
    /// that this broker refused.
    pub refused: AtomicU64,
}

/// A bridge's figures at one moment, for `$SYS` and the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeFigures {
    /// 1 while connected to the remote.
    pub connected: u64,
    /// Messages queued or in flight for the remote.
    pub queued: u64,
    /// Successful connections to the remote.
    pub connects: u64,
    /// Messages sent to the remote.
    pub forwarded: u64,
    /// Messages received from the remote and published here.
    pub received: u64,
    /// Messages for the remote dropped because the bridge's queue was full
    /// (since this broker started).
    pub dropped: u64,
    /// Messages from the remote that matched no `in` topic.
    pub refused: u64,
}

impl BridgeStats {
    /// The counters, and the queue of the bridge's session in `broker`.
    pub fn figures(&self, broker: &crate::broker::Broker) -> BridgeFigures {
        let (queued, dropped) = broker.session_queue(&self.local_id).unwrap_or_default();
        BridgeFigures {
            connected: self.connected.load(Relaxed),
            queued: queued as u64,
            connects: self.connects.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            received: self.received.load(Relaxed),
            dropped,
            refused: self.refused.load(Relaxed),
        }
    }
}

/// Connections on one listener, by protocol level.
#[derive(Debug)]
pub struct ListenerStats {
    /// The bound address, e.g. `127.0.0.1:1883`.
    pub listener: String,
    /// What the listener speaks: `mqtt` or `mqtt+tls`.
    pub kind: &'static str,
    connected: [AtomicU64; SLOTS],
    total: [AtomicU64; SLOTS],
}

impl ListenerStats {
    fn slot(level: u8) -> usize {
        usize::from(level.clamp(*LEVELS.start(), *LEVELS.end()) - LEVELS.start())
    }

    pub(crate) fn connected(&self, level: u8) {
        self.connected[Self::slot(level)].fetch_add(1, Relaxed);
        self.total[Self::slot(level)].fetch_add(1, Relaxed);
    }

    pub(crate) fn disconnected(&self, level: u8) {
        self.connected[Self::slot(level)].fetch_sub(1, Relaxed);
    }

    /// (protocol level, connected now, connections accepted so far).
    pub fn by_protocol(&self) -> impl Iterator<Item = (u8, u64, u64)> + '_ {
        LEVELS.map(|level| {
            let slot = Self::slot(level);
            (level, self.connected[slot].load(Relaxed), self.total[slot].load(Relaxed))
        })
    }
}

/// Upper bounds, in seconds, of the store commit latency histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The store writer's counters: commits and how long they took.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Commits (transactions) that succeeded.
    pub commits: AtomicU64,
    /// Commits that failed (what they covered was not acknowledged).
    pub failures: AtomicU64,
    /// Commits per latency bucket (not cumulative), the last one beyond
    /// [`COMMIT_BUCKETS`].
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    /// Total commit time, in nanoseconds.
    nanos: AtomicU64,
    /// The last commit failed (`/healthz` answers 503 until one succeeds).
    failing: AtomicBool,
}

impl StoreStats {
    /// Records one commit that took `took`.
    pub(crate) fn commit(&self, took: Duration, ok: bool) {
        let counter = if ok { &self.commits } else { &self.failures };
        counter.fetch_add(1, Relaxed);
        self.failing.store(!ok, Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Whether the last commit failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Relaxed)
    }

    /// The histogram as prometheus-client encodes it: (sum in seconds,
    /// count, commits per bucket by upper bound, not cumulative, `+Inf` last).
    pub fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let bounds = COMMIT_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(&self.buckets).map(|(le, n)| (le, n.load(Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (self.nanos.load(Relaxed) as f64 / 1e9, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_latencies_land_in_cumulative_buckets() {
        let s = StoreStats::default();
        s.commit(Duration::from_micros(300), true);
        s.commit(Duration::from_millis(3), true);
        s.commit(Duration::from_secs(20), false);
        let (sum, count, buckets) = s.histogram();
        assert_eq!(count, 3);
        assert!((sum - 20.0033).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets[COMMIT_BUCKETS.len() - 1], (10.0, 0));
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!((s.commits.load(Relaxed), s.failures.load(Relaxed)), (2, 1));
        assert!(s.failing());
        s.commit(Duration::from_millis(1), true);
        assert!(!s.failing());
    }

    #[test]
    fn protocol_levels_have_labels_and_slots() {
        let stats = Stats::default();
        let l = stats.add_listener("127.0.0.1:1883".into(), "mqtt");
        l.connected(4);
        l.connected(4);
        l.connected(3);
        l.disconnected(4);
        let counts: Vec<_> = l.by_protocol().map(|(level, now, total)| (protocol_label(level), now, total)).collect();
        assert_eq!(counts, [("3.1", 1, 1), ("3.1.1", 1, 2)]);
        assert_eq!(protocol_label(5), "5.0");
        assert_eq!(stats.listeners().len(), 1);
        let again = stats.add_listener("127.0.0.1:1883".into(), "mqtt");
        assert!(Arc::ptr_eq(&l, &again), "a restarted listener keeps its counters");
        stats.add_listener("127.0.0.1:8883".into(), "mqtt+tls");
        assert_eq!(stats.listeners().len(), 2);
    }
}
