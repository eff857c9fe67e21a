//! Broker counters, updated on the hot path with relaxed atomics and read by
//! the `$SYS` publisher.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters a `$SYS` publisher or an embedding application can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients currently connected.
    pub clients_connected: AtomicU64,
    /// The most clients connected at once.
    pub clients_maximum: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Messages dropped because a client's queue was full.
    pub messages_dropped: AtomicU64,
    /// Bytes of MQTT packets received.
    pub bytes_received: AtomicU64,
    /// Bytes of MQTT packets sent.
    pub bytes_sent: AtomicU64,
}

impl Stats {
    pub(crate) fn received(&self) {
        self.messages_received.fetch_add(1, Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.messages_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn sent(&self, count: u64) {
        self.messages_sent.fetch_add(count, Relaxed);
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
}
