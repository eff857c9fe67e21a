//! Per-client MQTT session state, with no IO: subscriptions, packet ids,
//! outbound inflight messages, the queue behind them, and inbound QoS 2 ids.
//!
//! Methods take a packet or a message and push the packets to send into an
//! output `Vec`, so the rules are testable without sockets. A persistent
//! session also records each change as a store [`Op`] in its journal, which
//! whoever holds the session's lock hands to the store.

use crate::packet::{Packet, Pid, Publish, QoS};
use crate::stats::DropCause;
use crate::store::{Op, Progress, StoredMessage, StoredSession, Ticket};
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
    /// Payload bytes waiting behind the inflight window (or while offline).
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for an offline client.
    pub queue_qos0: bool,
    /// How long a connected client with a full queue may make no progress
    /// before publishers stop waiting for it (see [`Offer::Pressed`]).
    pub slow_consumer_timeout: Duration,
}

/// An outbound QoS 1/2 message that has been sent and awaits its ack.
#[derive(Debug, Clone)]
struct Inflight {
    seq: u64,
    message: Message,
    /// `true` once PUBREC arrived and PUBREL was sent (QoS 2 second half).
    released: bool,
}

impl Inflight {
    fn pid(&self) -> Pid {
        pid_for(self.seq)
    }
}

/// A message waiting to be sent.
#[derive(Debug, Clone)]
struct Queued {
    seq: u64,
    message: Message,
    /// The store commit that makes it durable (default: nothing to wait for).
    ticket: Ticket,
}

/// The packet id of the message with sequence number `seq`. Deriving it
/// from the stored sequence number keeps ids stable across a restart
/// without writing each assignment to the store.
pub fn pid_for(seq: u64) -> Pid {
    (seq.wrapping_sub(1) % u64::from(u16::MAX)) as Pid + 1
}

/// What happened to a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for sending.
    Queued,
    /// Queued beyond the limits, for a connected client that is still
    /// reading: the publisher must stop reading from its own client until
    /// this session has room again ([`Session::has_room`]). Backpressure
    /// instead of loss; how far beyond is bounded by what one batch of
    /// packets from each publisher adds.
    Pressed,
    /// QoS 0 for an offline client: not kept (as Mosquitto's default).
    Skipped,
    /// Not queued: dropped and counted, for this reason.
    Dropped(DropCause),
}

/// The state of one client's session.
#[derive(Debug)]
pub struct Session {
    /// The client this session belongs to (the key of its stored state).
    client_id: Arc<str>,
    /// Clean session: discarded when the connection ends.
    pub clean: bool,
    /// Whether changes are journaled for the store.
    durable: bool,
    /// Whether a connection is attached.
    online: bool,
    limits: Limits,
    /// Filter → granted QoS.
    subscriptions: HashMap<String, QoS>,
    /// Sequence number of the last message queued.
    last_seq: u64,
    /// Sent, unacknowledged QoS 1/2 messages in send order.
    inflight: VecDeque<Inflight>,
    /// Messages not yet sent, in arrival order.
    queue: VecDeque<Queued>,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL.
    incoming: HashSet<Pid>,
    /// Changes not yet handed to the store.
    journal: Vec<Op>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// Counts deliveries moved out of the queue and acknowledgements: a
    /// client whose count stands still for the slow-consumer timeout while
    /// its queue is full is stuck.
    progress: u64,
    /// Marked stuck (no progress for the slow-consumer timeout with a full
    /// queue): publishers no longer wait, and what is beyond the limits
    /// drops. Cleared by the next progress.
    stuck: bool,
    /// A publisher was told to wait ([`Offer::Pressed`]) and not yet woken.
    pressed: bool,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// `dropped` when it was last reported, and when.
    reported: (u64, Option<Instant>),
}

impl Session {
    /// A new, empty session; `durable` journals its changes for the store
    /// (only persistent sessions are ever written: pass `!clean && store`).
    pub fn new(client_id: Arc<str>, clean: bool, limits: Limits, durable: bool) -> Session {
        Session {
            client_id,
            clean,
            durable,
            online: false,
            limits,
            subscriptions: HashMap::new(),
            last_seq: 0,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            incoming: HashSet::new(),
            journal: Vec::new(),
            queued_bytes: 0,
            progress: 0,
            stuck: false,
            pressed: false,
            dropped: 0,
            reported: (0, None),
        }
    }

    /// Rebuilds a persistent session from the store: messages that were sent
    /// become inflight again (re-sent with DUP=1), the others queued.
    pub fn restore(client_id: Arc<str>, stored: StoredSession, limits: Limits) -> Session {
        let mut session = Session::new(client_id, false, limits, true);
        session.subscriptions.extend(stored.subscriptions);
        session.incoming.extend(stored.incoming);
        for (seq, (m, progress)) in stored.messages {
            let message = Message { topic: m.topic, payload: m.payload, qos: m.qos, retain: m.retain };
            session.last_seq = seq;
            match progress {
                Progress::Queued => {
                    session.queued_bytes += message.payload.len();
                    session.queue.push_back(Queued { seq, message, ticket: Ticket::default() });
                }
                Progress::Sent | Progress::Released => {
                    let released = progress == Progress::Released;
                    session.inflight.push_back(Inflight { seq, message, released });
                }
            }
        }
        session
    }

    /// The changes made since the last call, for the store.
    pub fn take_journal(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.journal)
    }

    /// Stops journaling: the session is being discarded, and a newer one may
    /// take its client id in the store.
    pub fn discard(&mut self) {
        self.durable = false;
        self.journal.clear();
    }

    fn record(&mut self, op: impl FnOnce(Arc<str>) -> Op) {
        if self.durable {
            self.journal.push(op(self.client_id.clone()));
        }
    }

    /// Marks the session online or offline.
    pub fn set_online(&mut self, online: bool) {
        self.online = online;
        self.stuck = false;
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Records a subscription, replacing one with the same filter.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscriptions.insert(filter.to_owned(), qos);
        self.record(|id| Op::Subscription(id, filter.to_owned(), Some(qos)));
    }

    /// Forgets a subscription, if it exists.
    pub fn unsubscribe(&mut self, filter: &str) {
        if self.subscriptions.remove(filter).is_some() {
            self.record(|id| Op::Subscription(id, filter.to_owned(), None));
        }
    }

    /// Every subscription: filter and granted QoS.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, QoS)> {
        self.subscriptions.iter().map(|(f, q)| (f.as_str(), *q))
    }

    /// Number of messages queued or inflight.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Offers a message for delivery, applying the queue limits (messages
    /// and payload bytes, retained messages for a new subscription
    /// included). Beyond them, a connected client that is still reading
    /// gets the message anyway and the publisher is held back
    /// ([`Offer::Pressed`]); an offline or stuck client has it dropped. A
    /// stuck client's QoS 0 messages drop at once. A QoS 1/2 message queued
    /// in a durable session is journaled.
    pub fn offer(&mut self, message: Message) -> Offer {
        let qos0 = message.qos == QoS::AtMostOnce;
        if qos0 && !self.online && !self.limits.queue_qos0 {
            return Offer::Skipped;
        }
        let full = self.queue.len() >= self.limits.max_queued
            || (!self.queue.is_empty()
                && self.queued_bytes.saturating_add(message.payload.len()) > self.limits.max_queued_bytes);
        let offer = match (full, self.online && !self.stuck) {
            (false, _) if !(qos0 && self.stuck) => Offer::Queued,
            (true, true) => {
                self.pressed = true;
                Offer::Pressed
            }
            _ => {
                self.dropped += 1;
                let cause = if self.stuck { DropCause::SlowConsumer } else { DropCause::QueueFull };
                return Offer::Dropped(cause);
            }
        };
        self.last_seq += 1;
        let seq = self.last_seq;
        if !qos0 {
            self.record(|id| {
                let stored = StoredMessage {
                    topic: message.topic.clone(),
                    payload: message.payload.clone(),
                    qos: message.qos,
                    retain: message.retain,
                };
                Op::Message(id, seq, Some(stored))
            });
        }
        self.queued_bytes += message.payload.len();
        self.queue.push_back(Queued { seq, message, ticket: Ticket::default() });
        offer
    }

    /// Whether a publisher held back by this session may go on: the queue
    /// is down to half its limits (so that publishers resume in batches,
    /// not one message at a time), or the client is offline or stuck.
    pub fn has_room(&self) -> bool {
        !self.online
            || self.stuck
            || (self.queue.len() <= self.limits.max_queued / 2 && self.queued_bytes <= self.limits.max_queued_bytes / 2)
    }

    /// Deliveries moved out and acknowledgements received so far.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Marks the client stuck: it made no progress for the slow-consumer
    /// timeout with a full queue. Publishers stop waiting for it.
    pub fn mark_stuck(&mut self) -> bool {
        let newly = !self.stuck && self.online;
        self.stuck = self.online;
        newly
    }

    /// Notes that a publisher found no room and waits: the drain that makes
    /// room wakes it ([`Session::take_room`]).
    pub fn expect_waiter(&mut self) {
        self.pressed = true;
    }

    /// Whether publishers held back by this session should be woken now
    /// (it has room again since one was told to wait); resets.
    pub fn take_room(&mut self) -> bool {
        let room = self.pressed && self.has_room();
        if room {
            self.pressed = false;
        }
        room
    }

    /// Notes the store commit the last queued message waits for.
    pub fn stamp_last(&mut self, ticket: Ticket) {
        if let Some(last) = self.queue.back_mut() {
            last.ticket = ticket;
        }
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
    /// order: a QoS 0 message never overtakes a QoS 1/2 one waiting for room,
    /// and a message whose packet id is still in use waits for it.
    ///
    /// A QoS 2 message of a durable session also waits until it is durable
    /// (`durable(ticket)`): a receiver remembers a QoS 2 packet id until
    /// PUBREL, so a message forgotten in a crash after it was sent would make
    /// the receiver drop the next message that reuses its id. The ticket it
    /// waits for is returned.
    pub fn next_packets(&mut self, out: &mut Vec<Packet>, durable: impl Fn(Ticket) -> bool) -> Option<Ticket> {
        if !self.online {
            return None;
        }
        let before = self.queue.len();
        let waiting = self.drain_queue(out, durable);
        if self.queue.len() < before {
            self.progress += 1;
            self.stuck = false;
        }
        waiting
    }

    fn drain_queue(&mut self, out: &mut Vec<Packet>, durable: impl Fn(Ticket) -> bool) -> Option<Ticket> {
        while let Some(front) = self.queue.front() {
            let (seq, qos) = (front.seq, front.message.qos);
            if qos != QoS::AtMostOnce && (self.inflight.len() >= self.limits.max_inflight || self.wraps(seq)) {
                return None;
            }
            if qos == QoS::ExactlyOnce && self.durable && !durable(front.ticket) {
                return Some(front.ticket);
            }
            let Queued { seq, message, .. } = self.queue.pop_front().expect("front exists");
            self.queued_bytes -= message.payload.len();
            if qos == QoS::AtMostOnce {
                out.push(publish_packet(message, None, false));
                continue;
            }
            out.push(publish_packet(message.clone(), Some(pid_for(seq)), false));
            self.record(|id| Op::Progress(id, seq, Progress::Sent));
            self.inflight.push_back(Inflight { seq, message, released: false });
        }
        None
    }

    /// Whether `seq`'s packet id may still be in flight: ids repeat every
    /// 65535 sequence numbers, and the inflight window is in sequence order,
    /// so only its oldest entry can be that far behind (checked in O(1)).
    fn wraps(&self, seq: u64) -> bool {
        self.inflight.front().is_some_and(|oldest| seq - oldest.seq >= u64::from(u16::MAX))
    }

    /// On reconnect: re-sends every unacknowledged PUBLISH with DUP set and
    /// every pending PUBREL, in their original order (MQTT-4.4.0-1).
    pub fn resend(&mut self, out: &mut Vec<Packet>) {
        for f in &self.inflight {
            out.push(match f.released {
                true => Packet::Pubrel(f.pid()),
                false => publish_packet(f.message.clone(), Some(f.pid()), true),
            });
        }
    }

    /// PUBACK: completes a QoS 1 delivery. Unknown ids are ignored.
    pub fn puback(&mut self, pid: Pid) {
        self.complete(pid, QoS::AtLeastOnce, false);
    }

    /// PUBREC: the first half of a QoS 2 delivery; always answered by PUBREL.
    pub fn pubrec(&mut self, pid: Pid, out: &mut Vec<Packet>) {
        let found = self.inflight.iter_mut().find(|f| f.pid() == pid && f.message.qos == QoS::ExactlyOnce);
        if let Some(f) = found.filter(|f| !f.released) {
            f.released = true;
            let seq = f.seq;
            self.record(|id| Op::Progress(id, seq, Progress::Released));
        }
        out.push(Packet::Pubrel(pid));
    }

    /// PUBCOMP: completes a QoS 2 delivery.
    pub fn pubcomp(&mut self, pid: Pid) {
        self.complete(pid, QoS::ExactlyOnce, true);
    }

    fn complete(&mut self, pid: Pid, qos: QoS, released: bool) {
        let found = self.inflight.iter().position(|f| f.pid() == pid && f.message.qos == qos && f.released == released);
        if let Some(f) = found.and_then(|i| self.inflight.remove(i)) {
            self.progress += 1;
            self.record(|id| Op::Message(id, f.seq, None));
        }
    }

    /// An inbound QoS 2 PUBLISH: returns whether it is new and must be
    /// delivered (a re-sent one before PUBREL is not, MQTT-4.3.3-2).
    pub fn receive_qos2(&mut self, pid: Pid) -> bool {
        let new = self.incoming.insert(pid);
        if new {
            self.record(|id| Op::Incoming(id, pid, true));
        }
        new
    }

    /// Inbound QoS 2 ids received and not yet released.
    pub fn incoming_len(&self) -> usize {
        self.incoming.len()
    }

    /// PUBREL from the client: forget the id; always answered by PUBCOMP.
    pub fn pubrel(&mut self, pid: Pid, out: &mut Vec<Packet>) {
        if self.incoming.remove(&pid) {
            self.record(|id| Op::Incoming(id, pid, false));
        }
        out.push(Packet::Pubcomp(pid));
    }
}

/// A QoS 0 message moves into its packet; one kept inflight is cloned (its
/// topic and payload are shared, not copied).
fn publish_packet(message: Message, pid: Option<Pid>, dup: bool) -> Packet {
    let Message { topic, payload, qos, retain } = message;
    Packet::Publish(Publish { dup, qos, pid, retain, topic, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_inflight: 2,
        max_queued: 4,
        max_queued_bytes: usize::MAX,
        queue_qos0: false,
        slow_consumer_timeout: Duration::from_secs(5),
    };

    fn message(qos: QoS) -> Message {
        Message { topic: "t".into(), payload: Bytes::from_static(b"p"), qos, retain: false }
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
        let mut s = Session::new("c".into(), false, LIMITS, false);
        s.set_online(true);
        for qos in [QoS::AtLeastOnce, QoS::AtLeastOnce, QoS::AtLeastOnce] {
            assert_eq!(s.offer(message(qos)), Offer::Queued);
        }
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Queued);
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Pressed, "full, but the client reads");
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(1), false), (Some(2), false)]);
        s.puback(1);
        out.clear();
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(3), false), (None, false), (None, false)]);
    }

    #[test]
    fn drops_are_reported_at_most_once_a_second() {
        let limits = Limits { max_queued: 0, ..LIMITS };
        let mut s = Session::new("c".into(), false, limits, false);
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
        let mut s = Session::new("c".into(), false, LIMITS, false);
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Skipped);
        s.offer(message(QoS::ExactlyOnce));
        s.offer(message(QoS::AtLeastOnce));
        s.set_online(true);
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
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
        let mut s = Session::new("c".into(), false, LIMITS, false);
        assert!(s.receive_qos2(7));
        assert!(!s.receive_qos2(7));
        let mut out = Vec::new();
        s.pubrel(7, &mut out);
        assert_eq!(out, [Packet::Pubcomp(7)]);
        assert!(s.receive_qos2(7));
    }

    #[test]
    fn packet_ids_follow_sequence_numbers_and_wrap_without_zero() {
        assert_eq!(pid_for(1), 1);
        assert_eq!(pid_for(65535), 65535);
        assert_eq!(pid_for(65536), 1);
    }

    #[test]
    fn a_packet_id_still_in_flight_is_not_reused_after_wrapping() {
        let mut s = Session::new("c".into(), false, Limits { max_inflight: 3, ..LIMITS }, false);
        s.set_online(true);
        let mut out = Vec::new();
        s.offer(message(QoS::AtLeastOnce));
        s.next_packets(&mut out, |_| true);
        s.last_seq = 65534;
        s.offer(message(QoS::AtLeastOnce));
        s.offer(message(QoS::AtLeastOnce));
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(1), false), (Some(65535), false)], "seq 65536 would reuse id 1");
        s.puback(1);
        out.clear();
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(1), false)]);
    }

    #[test]
    fn a_durable_session_journals_and_restores() {
        let mut s = Session::new("c".into(), false, LIMITS, true);
        s.set_online(true);
        s.subscribe("t/#", QoS::ExactlyOnce);
        s.offer(message(QoS::AtLeastOnce));
        s.offer(message(QoS::ExactlyOnce));
        s.offer(message(QoS::AtLeastOnce));
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        s.pubrec(2, &mut out);
        s.puback(1);
        assert!(s.receive_qos2(9));
        let mut stored = crate::store::Snapshot::default();
        stored.apply(&[Op::Session("c".into(), Some(0))]); // written by the broker on attach
        stored.apply(&s.take_journal());
        let stored = stored.sessions.remove("c").expect("session stored by its ops");
        let mut restored = Session::restore("c".into(), stored, LIMITS);
        restored.set_online(true);
        out.clear();
        restored.resend(&mut out);
        restored.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(2), false), (Some(3), false)]);
        assert!(matches!(out[0], Packet::Pubrel(2)));
        assert!(!restored.receive_qos2(9), "MQTT-4.3.3-2 state survives");
    }

    #[test]
    fn a_clean_session_journals_nothing() {
        let mut s = Session::new("c".into(), true, LIMITS, false);
        s.subscribe("t", QoS::AtLeastOnce);
        s.offer(message(QoS::AtLeastOnce));
        assert!(s.take_journal().is_empty());
    }

    #[test]
    fn a_full_queue_presses_a_reading_client_and_drops_for_a_stuck_one() {
        let mut s = Session::new("c".into(), false, Limits { max_inflight: 1, ..LIMITS }, false);
        s.set_online(true);
        for _ in 0..4 {
            assert_eq!(s.offer(message(QoS::AtLeastOnce)), Offer::Queued);
        }
        let retained = Message { retain: true, ..message(QoS::AtLeastOnce) };
        assert_eq!(s.offer(retained), Offer::Pressed, "retained messages count against the limit too");
        assert_eq!(s.offer(message(QoS::AtMostOnce)), Offer::Pressed, "nothing dropped while reading");
        assert!(!s.has_room() && !s.take_room());
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        assert_eq!(s.progress(), 1);
        assert!(!s.has_room(), "5 queued: above half the limit");
        assert!(s.mark_stuck());
        assert!(s.has_room() && s.take_room(), "publishers stop waiting for a stuck client");
        assert_eq!(
            s.offer(message(QoS::AtMostOnce)),
            Offer::Dropped(DropCause::SlowConsumer),
            "stuck: QoS 0 drops at once"
        );
        assert_eq!(
            s.offer(message(QoS::AtLeastOnce)),
            Offer::Dropped(DropCause::SlowConsumer),
            "stuck: beyond the limit drops"
        );
        assert_eq!(s.dropped, 2);
        s.puback(1);
        s.next_packets(&mut out, |_| true);
        assert!(!s.stuck, "progress clears stuck");
    }

    #[test]
    fn payload_bytes_are_limited_too() {
        let limits = Limits { max_queued: 100, max_queued_bytes: 10, ..LIMITS };
        let mut s = Session::new("c".into(), false, limits, false);
        let big = |n| Message { payload: Bytes::from(vec![0; n]), ..message(QoS::AtLeastOnce) };
        assert_eq!(s.offer(big(25)), Offer::Queued, "one message larger than the limit still fits an empty queue");
        assert_eq!(s.offer(big(1)), Offer::Dropped(DropCause::QueueFull), "offline: dropped beyond the byte limit");
        s.set_online(true);
        assert_eq!(s.offer(big(1)), Offer::Pressed);
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        assert_eq!(s.queued_bytes, 0);
    }
}
