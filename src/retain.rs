//! The retained-message store: the last retained message of each topic.

use crate::session::Message;
use crate::topic;
use std::collections::HashMap;
use std::sync::Arc;

/// Retained messages by topic name.
#[derive(Debug, Default)]
pub struct Retained {
    messages: HashMap<Arc<str>, Message>,
}

impl Retained {
    /// Stores `message` for its topic, or clears the topic when the payload
    /// is empty (MQTT-3.3.1-10/-11). The payload is copied so it does not pin
    /// the receive buffer it arrived in.
    pub fn set(&mut self, message: &Message) {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic);
            return;
        }
        let stored =
            Message { payload: bytes::Bytes::copy_from_slice(&message.payload), retain: true, ..message.clone() };
        self.messages.insert(message.topic.clone(), stored);
    }

    /// Calls `f` for every retained message whose topic matches `filter`.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Message)) {
        self.messages.values().filter(|m| topic::matches(filter, &m.topic)).for_each(&mut f);
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}
