//! The retained-message store: the last retained message of each topic.

use crate::session::Message;
use crate::topic;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Retained messages by topic name, in topic order so that a scan can stop
/// and resume where it left off (see [`Retained::scan`]).
#[derive(Debug, Default)]
pub struct Retained {
    messages: BTreeMap<Arc<str>, Message>,
}

/// Where a scan of the retained messages stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Scan {
    /// Every topic was looked at.
    Done,
    /// Resume after this topic.
    After(Arc<str>),
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

    /// Looks at up to `budget` topics after `from` (`None`: from the start)
    /// and calls `f` for each retained message whose topic matches `filter`;
    /// a filter without wildcards is one lookup. The caller holds the lock
    /// only for one scan, so a scan over many retained messages does not
    /// keep retained PUBLISHes waiting for all of it.
    pub fn scan(&self, filter: &str, from: Option<&Arc<str>>, budget: usize, mut f: impl FnMut(&Message)) -> Scan {
        if !filter.contains(['+', '#']) {
            if from.is_none()
                && let Some(m) = self.messages.get(filter)
            {
                f(m);
            }
            return Scan::Done;
        }
        let start = match from {
            Some(topic) => Bound::Excluded(topic),
            None => Bound::Unbounded,
        };
        let mut last = None;
        for (seen, (topic, m)) in self.messages.range::<Arc<str>, _>((start, Bound::Unbounded)).enumerate() {
            if seen == budget {
                return last.map_or(Scan::Done, Scan::After);
            }
            if topic::matches(filter, topic) {
                f(m);
            }
            last = Some(topic.clone());
        }
        Scan::Done
    }

    /// Every topic with a retained message.
    pub fn topics(&self) -> Vec<Arc<str>> {
        self.messages.keys().cloned().collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::QoS;

    fn retained(topics: &[&str]) -> Retained {
        let mut r = Retained::default();
        for t in topics {
            r.set(&Message::new((*t).into(), "p".into(), QoS::AtMostOnce, true));
        }
        r
    }

    #[test]
    fn a_scan_resumes_where_it_stopped() {
        let r = retained(&["a/1", "a/2", "b/1", "a/3", "$SYS/x"]);
        let mut found = Vec::new();
        let mut from = None;
        let mut scans = 0;
        loop {
            scans += 1;
            match r.scan("a/#", from.as_ref(), 2, |m| found.push(m.topic.to_string())) {
                Scan::Done => break,
                Scan::After(topic) => from = Some(topic),
            }
        }
        assert_eq!(found, ["a/1", "a/2", "a/3"]);
        assert_eq!(scans, 3, "five topics, two per scan");
        let mut exact = Vec::new();
        assert_eq!(r.scan("b/1", None, 1, |m| exact.push(m.topic.clone())), Scan::Done);
        assert_eq!(exact.len(), 1);
        let sys = retained(&["$SYS/x"]);
        assert_eq!(sys.scan("#", None, 10, |_| panic!("MQTT-4.7.2-1: # does not match $SYS")), Scan::Done);
    }
}
