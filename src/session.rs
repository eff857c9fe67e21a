//! Per-client MQTT session state, with no IO: subscriptions, packet ids,
//! outbound inflight messages, the queue behind them, and inbound QoS 2 ids.
//!
//! Methods take a packet or a message and push the packets to send into an
//! output `Vec`, so the rules are testable without sockets.

use crate::packet::{Packet, Pid, Publish, QoS};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Drops are logged at most this often per client.
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// An application message on its way to a subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload, shared between every copy of the message.
    pub payload: Bytes,
    /// QoS it is delivered at (already reduced to the subscription's).
    pub qos: QoS,
    /// RETAIN flag as delivered: set only for retained messages sent because
    /// of a new subscription (MQTT-3.3.1-8/-9).
    pub retain: bool,
}

/// Limits applied to one session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub max_inflight: usize,
    /// Messages waiting behind the inflight window (or while offline).
    pub max_queued: usize,
    /// Whether QoS 0 messages are queued for an offline client.
    pub queue_qos0: bool,
}

/// An outbound QoS 1/2 message that has been sent and awaits its ack.
#[derive(Debug, Clone)]
struct Inflight {
    pid: Pid,
    message: Message,
    /// `true` once PUBREC arrived and PUBREL was sent (QoS 2 second half).
    released: bool,
}

/// What happened to a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for sending.
    Queued,
    /// QoS 0 for an offline client: not kept (as Mosquitto's default).
    Skipped,
    /// The queue was full: dropped and counted.
    Dropped,
}

/// The state of one client's session.
#[derive(Debug)]
pub struct Session {
    /// Clean session: discarded when the connection ends.
    pub clean: bool,
    /// Whether a connection is attached.
    online: bool,
    limits: Limits,
    /// Filter → granted QoS.
    subscriptions: HashMap<String, QoS>,
    last_pid: Pid,
    /// Sent, unacknowledged QoS 1/2 messages in send order.
    inflight: VecDeque<Inflight>,
    /// Messages not yet sent, in arrival order.
    queue: VecDeque<Message>,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL.
    incoming: HashSet<Pid>,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// `dropped` when it was last reported, and when.
    reported: (u64, Option<Instant>),
}

impl Session {
    /// A new, empty session.
    pub fn new(clean: bool, limits: Limits) -> Session {
        Session {
            clean,
            online: false,
            limits,
            subscriptions: HashMap::new(),
            last_pid: 0,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            incoming: HashSet::new(),
            dropped: 0,
            reported: (0, None),
        }
    }

    /// Marks the session online or offline.
    pub fn set_online(&mut self, online: bool) {
        self.online = online;
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Records a subscription, replacing one with the same filter.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscriptions.insert(filter.to_owned(), qos);
    }

    /// Forgets a subscription, if it exists.
    pub fn unsubscribe(&mut self, filter: &str) {
        self.subscriptions.remove(filter);
    }

    /// Every subscribed filter.
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.keys().map(String::as_str)
    }

    /// Number of messages queued or inflight.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Offers a message for delivery, applying the queue limits.
    pub fn offer(&mut self, message: Message) -> Offer {
        if message.qos == QoS::AtMostOnce && !self.online && !self.limits.queue_qos0 {
            return Offer::Skipped;
        }
        if self.queue.len() >= self.limits.max_queued {
            self.dropped += 1;
            return Offer::Dropped;
        }
        self.queue.push_back(message);
        Offer::Queued
    }

    /// The number of drops to report now, if the last report is at least
    /// [`DROP_REPORT_INTERVAL`] old: drops are logged at most once a second.
    pub fn drop_report(&mut self, now: Instant) -> Option<u64> {
        let due = match self.reported.1 {
            Some(last) => now.duration_since(last) >= DROP_REPORT_INTERVAL,
            None => true,
        };
        let count = self.dropped - self.reported.0;
        (due && count > 0).then(|| {
            self.reported = (self.dropped, Some(now));
            count
        })
    }

    /// Moves queued messages out while the inflight window has room, in
    /// order: a QoS 0 message never overtakes a QoS 1/2 one waiting for room.
    pub fn next_packets(&mut self, out: &mut Vec<Packet>) {
        if !self.online {
            return;
        }
        while let Some(message) = self.queue.front() {
            if message.qos != QoS::AtMostOnce && self.inflight.len() >= self.limits.max_inflight {
                return;
            }
            let message = self.queue.pop_front().expect("front exists");
            let pid = match message.qos {
                QoS::AtMostOnce => None,
                _ => Some(self.next_pid()),
            };
            out.push(publish_packet(&message, pid, false));
            if let Some(pid) = pid {
                self.inflight.push_back(Inflight {
                    pid,
                    message,
                    released: false,
                });
            }
        }
    }

    /// On reconnect: re-sends every unacknowledged PUBLISH with DUP set and
    /// every pending PUBREL, in their original order (MQTT-4.4.0-1).
    pub fn resend(&mut self, out: &mut Vec<Packet>) {
        for f in &self.inflight {
            out.push(match f.released {
                true => Packet::Pubrel(f.pid),
                false => publish_packet(&f.message, Some(f.pid), true),
            });
        }
    }

    /// PUBACK: completes a QoS 1 delivery. Unknown ids are ignored.
    pub fn puback(&mut self, pid: Pid) {
        self.complete(pid, QoS::AtLeastOnce, false);
    }

    /// PUBREC: the first half of a QoS 2 delivery; always answered by PUBREL.
    pub fn pubrec(&mut self, pid: Pid, out: &mut Vec<Packet>) {
        if let Some(f) = self.inflight.iter_mut().find(|f| f.pid == pid) {
            if f.message.qos == QoS::ExactlyOnce {
                f.released = true;
            }
        }
        out.push(Packet::Pubrel(pid));
    }

    /// PUBCOMP: completes a QoS 2 delivery.
    pub fn pubcomp(&mut self, pid: Pid) {
        self.complete(pid, QoS::ExactlyOnce, true);
    }

    fn complete(&mut self, pid: Pid, qos: QoS, released: bool) {
        let found = self
            .inflight
            .iter()
            .position(|f| f.pid == pid && f.message.qos == qos && f.released == released);
        if let Some(i) = found {
            self.inflight.remove(i);
        }
    }

    /// An inbound QoS 2 PUBLISH: returns whether it is new and must be
    /// delivered (a re-sent one before PUBREL is not, MQTT-4.3.3-2).
    pub fn receive_qos2(&mut self, pid: Pid) -> bool {
        self.incoming.insert(pid)
    }

    /// Inbound QoS 2 ids received and not yet released.
    pub fn incoming_len(&self) -> usize {
        self.incoming.len()
    }

    /// PUBREL from the client: forget the id; always answered by PUBCOMP.
    pub fn pubrel(&mut self, pid: Pid, out: &mut Vec<Packet>) {
        self.incoming.remove(&pid);
        out.push(Packet::Pubcomp(pid));
    }

    /// The next packet id not used by an inflight message.
    fn next_pid(&mut self) -> Pid {
        loop {
            self.last_pid = self.last_pid.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|f| f.pid == self.last_pid) {
                return self.last_pid;
            }
        }
    }
}

fn publish_packet(message: &Message, pid: Option<Pid>, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: message.qos,
        pid,
        retain: message.retain,
        topic: message.topic.clone(),
        payload: message.payload.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_inflight: 2,
        max_queued: 4,
        queue_qos0: false,
    };

    fn message(qos: QoS) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"p"),
            qos,
            retain: false,
        }
    }

    fn pids(out: &[Packet]) -> Vec<(Option<Pid>, bool)> {
        out.iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.pid, p.dup),
                Packet::Pubrel(pid) => (Some(*pid), false),
                _ => panic!("unexpected {p:?}"),
            })
            .collect()
    }

    #[test]
    fn inflight_window_holds_back_and_keeps_order() {
        let mut s = Session::new(false, LIMITS);
        s.set_online(true);
        for qos in [QoS::AtLeastOnce, QoS::AtLeastOnce, QoS::AtLeastOnce] {
            assert_eq!(s.offer(message(qos)), Offer::Queued);
        }
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Queued);
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Dropped);
        let mut out = Vec::new();
        s.next_packets(&mut out);
        assert_eq!(pids(&out), [(Some(1), false), (Some(2), false)]);
        s.puback(1);
        out.clear();
        s.next_packets(&mut out);
        assert_eq!(pids(&out), [(Some(3), false), (None, false)]);
    }

    #[test]
    fn drops_are_reported_at_most_once_a_second() {
        let mut s = Session::new(
            false,
            Limits {
                max_queued: 0,
                ..LIMITS
            },
        );
        let start = Instant::now();
        s.offer(message(QoS::AtLeastOnce));
        assert_eq!(s.drop_report(start), Some(1));
        s.offer(message(QoS::AtLeastOnce));
        s.offer(message(QoS::AtLeastOnce));
        assert_eq!(s.drop_report(start + Duration::from_millis(500)), None);
        assert_eq!(s.drop_report(start + DROP_REPORT_INTERVAL), Some(2));
        assert_eq!(s.drop_report(start + DROP_REPORT_INTERVAL * 3), None);
    }

    #[test]
    fn offline_qos0_is_skipped_and_resend_sets_dup() {
        let mut s = Session::new(false, LIMITS);
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Skipped);
        s.offer(message(QoS::ExactlyOnce));
        s.offer(message(QoS::AtLeastOnce));
        s.set_online(true);
        let mut out = Vec::new();
        s.next_packets(&mut out);
        out.clear();
        s.pubrec(1, &mut out);
        assert_eq!(out, [Packet::Pubrel(1)]);
        out.clear();
        s.set_online(false);
        s.set_online(true);
        s.resend(&mut out);
        assert_eq!(pids(&out), [(Some(1), false), (Some(2), true)]);
        s.pubcomp(1);
        s.puback(2);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn inbound_qos2_is_delivered_once_until_released() {
        let mut s = Session::new(false, LIMITS);
        assert!(s.receive_qos2(7));
        assert!(!s.receive_qos2(7));
        let mut out = Vec::new();
        s.pubrel(7, &mut out);
        assert_eq!(out, [Packet::Pubcomp(7)]);
        assert!(s.receive_qos2(7));
    }
}
