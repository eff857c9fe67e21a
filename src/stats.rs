//! Broker counters, updated on the hot path with relaxed atomics.

use crate::session::Message;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters a `$SYS` publisher or an embedding application can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients currently connected.
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Messages dropped because a client's queue was full.
    pub messages_dropped: AtomicU64,
}

impl Stats {
    pub(crate) fn received(&self, _message: &Message) {
        self.messages_received.fetch_add(1, Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.messages_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn sent(&self, count: u64) {
        self.messages_sent.fetch_add(count, Relaxed);
    }

    pub(crate) fn connected(&self) {
        self.clients_connected.fetch_add(1, Relaxed);
    }

    pub(crate) fn disconnected(&self) {
        self.clients_connected.fetch_sub(1, Relaxed);
    }
}
