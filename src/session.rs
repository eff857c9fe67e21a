//! Per-client MQTT session state, with no IO: subscriptions, packet ids,
//! outbound inflight messages, the queue behind them, and inbound QoS 2 ids.
//!
//! Methods take a packet or a message and push the packets to send into an
//! output `Vec`, so the rules are testable without sockets. A persistent
//! session also records each change as a store [`Op`] in its journal, which
//! whoever holds the session's lock hands to the store.

pub use crate::packet::Message;
use crate::packet::{Ack, Packet, Pid, Publish, QoS, ReasonCode, Subscription};
use crate::stats::DropCause;
use crate::store::{Op, Progress, StoredSession, Ticket};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Drops are logged at most this often per client.
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Ops a drained journal keeps room for (see [`Session::drain_journal`]).
const JOURNAL_KEPT: usize = 256;

/// Limits applied to one session.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// What the connected client announced it can take (5.0 CONNECT).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientLimits {
    /// Receive Maximum: QoS 1/2 messages it takes unacknowledged.
    pub receive_maximum: Option<std::num::NonZeroU16>,
    /// Maximum Packet Size: larger PUBLISHes are not sent to it (MQTT-3.1.2-25).
    pub maximum_packet_size: Option<u32>,
    /// Whether it speaks 5.0 (PUBLISH sizes include properties).
    pub v5: bool,
}

/// An outbound QoS 1/2 message that has been sent and awaits its ack.
#[derive(Debug, Clone)]
struct Inflight {
    seq: u64,
    message: Message,
    /// Counts this stored copy for its publisher's PUBACK.
    receipt: Option<Arc<Receipt>>,
    /// `true` once PUBREC arrived and PUBREL was sent (QoS 2 second half).
    released: bool,
}

impl Inflight {
    fn pid(&self) -> Pid {
        pid_for(self.seq)
    }

    /// What re-sends it on a new connection: the PUBLISH with DUP, or the
    /// PUBREL once released.
    fn resent(&self, now_ms: u64) -> Packet {
        match self.released {
            true => Packet::Pubrel(Ack::ok(self.pid())),
            false => Packet::Publish(publish_packet(self.message.clone(), Some(self.pid()), true, now_ms)),
        }
    }
}

/// A message waiting to be sent.
#[derive(Debug, Clone)]
struct Queued {
    seq: u64,
    message: Message,
    /// Counts this stored copy for its publisher's PUBACK.
    receipt: Option<Arc<Receipt>>,
    /// The store commit that makes it durable (default: nothing to wait for).
    ticket: Ticket,
}

/// The stored copies of one received QoS 1 message that its subscribers
/// have not acknowledged yet, made when the first copy is stored. The publisher's PUBACK waits until the
/// copies are durable, or until every one of them is acknowledged,
/// whichever comes first: a message its subscribers all have needs no
/// store to survive a crash. A copy that ends any other way (expired,
/// discarded with its session, taken to another member of a shared
/// group) leaves the count where it is, and the PUBACK waits for the
/// commit as before.
#[derive(Debug, Default)]
pub struct Receipt {
    pending: std::sync::atomic::AtomicUsize,
    done: event_listener::Event,
}

impl Receipt {
    /// A receipt waiting for `n` completions (a forward to other nodes).
    pub fn waiting(n: usize) -> Arc<Receipt> {
        Arc::new(Receipt { pending: std::sync::atomic::AtomicUsize::new(n), done: event_listener::Event::new() })
    }

    fn add(&self) {
        self.pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One counted copy was acknowledged (or forwarded).
    pub fn complete(&self) {
        if self.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.done.notify(usize::MAX);
        }
    }

    /// Whether every counted copy was acknowledged.
    pub fn is_done(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Completes once every counted copy was acknowledged.
    pub async fn acknowledged(&self) {
        loop {
            if self.is_done() {
                return;
            }
            let listener = self.done.listen();
            if self.is_done() {
                return;
            }
            listener.await;
        }
    }
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

/// A session's drops not yet counted or reported.
#[derive(Debug)]
struct Drops {
    /// Messages taken from the queue and not sent (see [`Session::take_unsent`]).
    unsent: Vec<DropCause>,
    /// `dropped` when it was last reported, and when.
    reported: (u64, Option<Instant>),
}

/// What a session holds only while messages pass through it: boxed, made
/// on first use and given back once empty ([`Session::release_idle`]), so
/// an idle session (every idle connection has one) carries 8 bytes of it
/// instead of 150.
#[derive(Debug)]
struct Traffic {
    /// Sent, unacknowledged QoS 1/2 messages in send order.
    inflight: VecDeque<Inflight>,
    /// Messages not yet sent, in arrival order.
    queue: VecDeque<Queued>,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL.
    incoming: BTreeSet<Pid>,
    /// Changes not yet handed to the store.
    journal: Vec<Op>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// Inflight entries at the back not sent on this connection yet: a
    /// client that came back with a smaller Receive Maximum gets them as
    /// its window frees (MQTT-3.3.4-9), before anything new.
    held_back: usize,
    drops: Drops,
}

impl Traffic {
    const EMPTY: Traffic = Traffic {
        inflight: VecDeque::new(),
        queue: VecDeque::new(),
        incoming: BTreeSet::new(),
        journal: Vec::new(),
        queued_bytes: 0,
        held_back: 0,
        drops: Drops { unsent: Vec::new(), reported: (0, None) },
    };
}

/// What a session without traffic reads.
static NO_TRAFFIC: Traffic = Traffic::EMPTY;

/// The state of one client's session.
#[derive(Debug)]
pub struct Session {
    /// The client id its changes are journaled under for the store
    /// (persistent sessions with a store); `None`: nothing is journaled.
    journaled: Option<Arc<str>>,
    /// Clean session: discarded when the connection ends.
    pub clean: bool,
    /// Whether a connection is attached.
    online: bool,
    /// Marked stuck (no progress for the slow-consumer timeout with a full
    /// queue): publishers no longer wait, and what is beyond the limits
    /// drops. Cleared by the next progress.
    stuck: bool,
    /// A publisher was told to wait ([`Offer::Pressed`]) and not yet woken.
    pressed: bool,
    /// Shared by every session with the same limits (48 bytes each otherwise).
    limits: Arc<Limits>,
    /// The connected client's own limits (5.0): its Receive Maximum caps
    /// the inflight window, its Maximum Packet Size what is sent to it.
    client: ClientLimits,
    /// Session Expiry Interval in seconds: how long the session outlives its
    /// connection (`None`: until `persistent_client_expiration`, as a 3.1.1
    /// persistent session; `Some(0)`: it ends with the connection).
    pub expiry: Option<u32>,
    /// Filter → options and identifier.
    subscriptions: BTreeMap<String, Subscription>,
    /// Sequence number of the last message queued.
    last_seq: u64,
    /// Counts deliveries moved out of the queue and acknowledgements: a
    /// client whose count stands still for the slow-consumer timeout while
    /// its queue is full is stuck.
    progress: u64,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Queues, inflight window, inbound ids, journal (`None`: all empty).
    traffic: Option<Box<Traffic>>,
}

impl Session {
    /// A new, empty session; `durable` journals its changes for the store
    /// (only persistent sessions are ever written: pass `!clean && store`).
    pub fn new(client_id: Arc<str>, clean: bool, limits: impl Into<Arc<Limits>>, durable: bool) -> Session {
        Session {
            journaled: durable.then_some(client_id),
            clean,
            online: false,
            stuck: false,
            pressed: false,
            limits: limits.into(),
            client: ClientLimits::default(),
            expiry: None,
            subscriptions: BTreeMap::new(),
            last_seq: 0,
            progress: 0,
            dropped: 0,
            traffic: None,
        }
    }

    /// Rebuilds a persistent session from the store: messages that were sent
    /// become inflight again (re-sent with DUP=1), the others queued.
    pub fn restore(client_id: Arc<str>, stored: StoredSession, limits: impl Into<Arc<Limits>>) -> Session {
        let mut session = Session::new(client_id, false, limits, true);
        session.subscriptions.extend(stored.subscriptions);
        session.expiry = stored.owner.as_ref().and_then(|o| o.expiry);
        if stored.incoming.is_empty() && stored.messages.is_empty() {
            return session;
        }
        let t = session.traffic_mut();
        t.incoming.extend(stored.incoming);
        let mut last_seq = 0;
        for (seq, (message, progress)) in stored.messages {
            last_seq = seq;
            match progress {
                Progress::Queued => {
                    t.queued_bytes += message.payload.len();
                    t.queue.push_back(Queued { seq, message, receipt: None, ticket: Ticket::default() });
                }
                Progress::Sent | Progress::Released => {
                    let released = progress == Progress::Released;
                    t.inflight.push_back(Inflight { seq, message, receipt: None, released });
                }
            }
        }
        session.last_seq = last_seq;
        session
    }

    /// What passes through it, to read (empty when none is held).
    fn traffic(&self) -> &Traffic {
        self.traffic.as_deref().unwrap_or(&NO_TRAFFIC)
    }

    /// What passes through it, made on first use.
    fn traffic_mut(&mut self) -> &mut Traffic {
        self.traffic.get_or_insert_with(|| Box::new(Traffic::EMPTY))
    }

    /// Gives back the memory of its queues and window when they are all
    /// empty, nothing is left to report and the last drop report is old
    /// enough not to be repeated early: called when its connection parks.
    pub fn release_idle(&mut self, now: Instant) {
        let Some(t) = &self.traffic else { return };
        let empty = t.inflight.is_empty()
            && t.queue.is_empty()
            && t.incoming.is_empty()
            && t.journal.is_empty()
            && t.drops.unsent.is_empty()
            && t.drops.reported.0 == self.dropped
            && t.drops.reported.1.is_none_or(|at| now.duration_since(at) >= DROP_REPORT_INTERVAL);
        if empty {
            self.traffic = None;
        }
    }

    /// Whether its changes are journaled for the store.
    pub fn is_durable(&self) -> bool {
        self.journaled.is_some()
    }

    /// The changes made since the last call, for the store.
    pub fn take_journal(&mut self) -> Vec<Op> {
        match self.traffic.as_deref_mut() {
            Some(t) => std::mem::take(&mut t.journal),
            None => Vec::new(),
        }
    }

    /// Hands the journaled changes to `to` (the store's append) and keeps
    /// the journal's room for the next ones, unless it grew large: a busy
    /// persistent session journals on every unlock, and a fresh journal
    /// regrown each time cost more than the store's own work.
    pub fn drain_journal<T: Default>(&mut self, to: impl FnOnce(std::vec::Drain<'_, Op>) -> T) -> T {
        let Some(t) = self.traffic.as_deref_mut().filter(|t| !t.journal.is_empty()) else {
            return T::default();
        };
        let done = to(t.journal.drain(..));
        if t.journal.capacity() > JOURNAL_KEPT {
            t.journal = Vec::new();
        }
        done
    }

    /// Stops journaling: the session is being discarded, and a newer one may
    /// take its client id in the store.
    pub fn discard(&mut self) {
        self.journaled = None;
        if let Some(t) = self.traffic.as_deref_mut() {
            t.journal.clear();
        }
    }

    fn record(&mut self, op: impl FnOnce(Arc<str>) -> Op) {
        if let Some(id) = &self.journaled {
            let op = op(id.clone());
            self.traffic_mut().journal.push(op);
        }
    }

    /// Notes the limits of the client now connected.
    pub fn set_client(&mut self, client: ClientLimits) {
        self.client = client;
    }

    /// The inflight window: the broker's, capped by the client's Receive Maximum.
    fn max_inflight(&self) -> usize {
        match self.client.receive_maximum {
            Some(max) => self.limits.max_inflight.min(usize::from(max.get())),
            None => self.limits.max_inflight,
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

    /// Records a subscription, replacing one with the same filter; whether
    /// one with that filter existed.
    pub fn subscribe(&mut self, filter: &str, subscription: Subscription) -> bool {
        let existed = self.subscriptions.insert(filter.to_owned(), subscription).is_some();
        self.record(|id| Op::Subscription(id, filter.to_owned(), Some(subscription)));
        existed
    }

    /// Forgets a subscription; whether it existed.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let existed = self.subscriptions.remove(filter).is_some();
        if existed {
            self.record(|id| Op::Subscription(id, filter.to_owned(), None));
        }
        existed
    }

    /// Every subscription: filter, options and identifier.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, Subscription)> {
        self.subscriptions.iter().map(|(f, s)| (f.as_str(), *s))
    }

    /// Number of messages queued or inflight.
    pub fn pending(&self) -> usize {
        let t = self.traffic();
        t.queue.len() + t.inflight.len()
    }

    /// Offers a message for delivery, applying the queue limits (messages
    /// and payload bytes, retained messages for a new subscription
    /// included). Beyond them, a connected client that is still reading
    /// gets the message anyway and the publisher is held back
    /// ([`Offer::Pressed`]); an offline or stuck client has it dropped. A
    /// stuck client's QoS 0 messages drop at once. A QoS 1/2 message queued
    /// in a durable session is journaled.
    pub fn offer(&mut self, message: Message) -> Offer {
        self.offer_counted(message, None)
    }

    /// [`Session::offer`], counting a copy this session stores in the
    /// receipt (made here for the first one) when given a place for one.
    pub fn offer_counted(&mut self, message: Message, receipt: Option<&mut Option<Arc<Receipt>>>) -> Offer {
        let qos0 = message.qos == QoS::AtMostOnce;
        if qos0 && !self.online && !self.limits.queue_qos0 {
            return Offer::Skipped;
        }
        let t = self.traffic();
        let full = t.queue.len() >= self.limits.max_queued
            || (!t.queue.is_empty()
                && t.queued_bytes.saturating_add(message.payload.len()) > self.limits.max_queued_bytes);
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
        let mut counted = None;
        if !qos0 && self.is_durable() {
            self.record(|id| Op::Message(id, seq, Some(message.clone())));
            if let Some(slot) = receipt.filter(|_| message.qos == QoS::AtLeastOnce) {
                let receipt = slot.get_or_insert_with(Arc::default);
                receipt.add();
                counted = Some(receipt.clone());
            }
        }
        let t = self.traffic_mut();
        t.queued_bytes += message.payload.len();
        t.queue.push_back(Queued { seq, message, receipt: counted, ticket: Ticket::default() });
        offer
    }

    /// Whether a publisher held back by this session may go on: the queue
    /// is down to half its limits (so that publishers resume in batches,
    /// not one message at a time), or the client is offline or stuck.
    pub fn has_room(&self) -> bool {
        let t = self.traffic();
        !self.online
            || self.stuck
            || (t.queue.len() <= self.limits.max_queued / 2 && t.queued_bytes <= self.limits.max_queued_bytes / 2)
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
        if let Some(last) = self.traffic.as_deref_mut().and_then(|t| t.queue.back_mut()) {
            last.ticket = ticket;
        }
    }

    /// The number of drops to report now, if the last report is at least
    /// [`DROP_REPORT_INTERVAL`] old: drops are logged at most once a second.
    pub fn drop_report(&mut self, now: Instant) -> Option<u64> {
        let reported = self.traffic().drops.reported;
        let due = match reported.1 {
            Some(last) => now.duration_since(last) >= DROP_REPORT_INTERVAL,
            None => true,
        };
        let count = self.dropped - reported.0;
        (due && count > 0).then(|| {
            self.traffic_mut().drops.reported = (self.dropped, Some(now));
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
        if !self.online || self.traffic.is_none() {
            return None;
        }
        let before = self.traffic().queue.len();
        let waiting = self.drain_queue(out, durable);
        if self.traffic().queue.len() < before {
            self.progress += 1;
            self.stuck = false;
        }
        waiting
    }

    fn drain_queue(&mut self, out: &mut Vec<Packet>, durable: impl Fn(Ticket) -> bool) -> Option<Ticket> {
        let max_inflight = self.max_inflight();
        let journaled = self.is_durable();
        let t = self.traffic_mut();
        while t.held_back > 0 && t.inflight.len() - t.held_back < max_inflight {
            let f = &t.inflight[t.inflight.len() - t.held_back];
            out.push(f.resent(crate::packet::now_ms()));
            t.held_back -= 1;
        }
        if t.held_back > 0 {
            return None;
        }
        let mut now = None;
        loop {
            let t = self.traffic_mut();
            let front = t.queue.front()?;
            let (seq, qos) = (front.seq, front.message.qos);
            if qos != QoS::AtMostOnce && (t.inflight.len() >= max_inflight || t.wraps(seq)) {
                return None;
            }
            if qos == QoS::ExactlyOnce && journaled && !durable(front.ticket) {
                return Some(front.ticket);
            }
            let Queued { seq, message, receipt, .. } = t.queue.pop_front().expect("front exists");
            t.queued_bytes -= message.payload.len();
            // The clock is read only for a message with an expiry.
            let now_ms = match message.expires {
                Some(_) => *now.get_or_insert_with(crate::packet::now_ms),
                None => 0,
            };
            // MQTT-3.3.2-5: an expired message is not sent.
            if message.expired(now_ms) {
                self.forget(seq, qos, DropCause::Expired);
                continue;
            }
            let pid = (qos != QoS::AtMostOnce).then(|| pid_for(seq));
            // A QoS 0 message moves into its packet; one kept inflight is
            // cloned (its topic and payload are shared, not copied): every
            // extra clone is a count every subscriber's core touches.
            let kept = (qos != QoS::AtMostOnce).then(|| message.clone());
            let packet = publish_packet(message, pid, false, now_ms);
            // MQTT-3.1.2-25: a PUBLISH larger than the client's Maximum
            // Packet Size is discarded as if it had been sent.
            if self.too_large(&packet) {
                self.forget(seq, qos, DropCause::TooLarge);
                continue;
            }
            out.push(Packet::Publish(packet));
            let Some(message) = kept else { continue };
            self.record(|id| Op::Progress(id, seq, Progress::Sent));
            self.traffic_mut().inflight.push_back(Inflight { seq, message, receipt, released: false });
        }
    }

    /// Drops a queued message that will not be sent, for `cause`.
    fn forget(&mut self, seq: u64, qos: QoS, cause: DropCause) {
        if qos != QoS::AtMostOnce {
            self.record(|id| Op::Message(id, seq, None));
        }
        self.traffic_mut().drops.unsent.push(cause);
    }

    /// Messages dropped from the queue without being sent since the last
    /// call (expired, too large for the client), by cause, for the counters.
    pub fn take_unsent(&mut self) -> Vec<DropCause> {
        match self.traffic.as_deref_mut() {
            Some(t) => std::mem::take(&mut t.drops.unsent),
            None => Vec::new(),
        }
    }

    /// Whether `p` is larger than the connected client's Maximum Packet Size.
    fn too_large(&self, p: &Publish) -> bool {
        let Some(max) = self.client.maximum_packet_size else { return false };
        let protocol = if self.client.v5 { crate::packet::Protocol::V5 } else { crate::packet::Protocol::V311 };
        let len = crate::codec::publish_remaining_length_for(protocol, p);
        crate::codec::packet_len(len) > max as usize
    }

    /// On reconnect: re-sends every unacknowledged PUBLISH with DUP set and
    /// every pending PUBREL, in their original order (MQTT-4.4.0-1).
    pub fn resend(&mut self, out: &mut Vec<Packet>) {
        let max_inflight = self.max_inflight();
        let Some(t) = self.traffic.as_deref_mut() else { return };
        let now_ms = crate::packet::now_ms();
        let window = t.inflight.len().min(max_inflight);
        out.extend(t.inflight.iter().take(window).map(|f| f.resent(now_ms)));
        t.held_back = t.inflight.len() - window;
    }

    /// PUBACK: completes a QoS 1 delivery. Unknown ids are ignored.
    pub fn puback(&mut self, pid: Pid) {
        self.complete(pid, QoS::AtLeastOnce, false);
    }

    /// PUBREC: the first half of a QoS 2 delivery, answered by PUBREL
    /// (5.0: with 0x92 for an id not in flight). A PUBREC with an error
    /// reason code (5.0) ends the delivery: no PUBREL follows (4.3.3).
    pub fn pubrec(&mut self, ack: Ack, out: &mut Vec<Packet>) {
        let pid = ack.pid;
        if ack.reason.is_error() {
            return self.complete(pid, QoS::ExactlyOnce, false);
        }
        let found = self
            .traffic
            .as_deref_mut()
            .and_then(|t| t.inflight.iter_mut().find(|f| f.pid() == pid && f.message.qos == QoS::ExactlyOnce));
        let known = found.is_some();
        if let Some(f) = found.filter(|f| !f.released) {
            f.released = true;
            let seq = f.seq;
            self.record(|id| Op::Progress(id, seq, Progress::Released));
        }
        let reason = if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        out.push(Packet::Pubrel(Ack { pid, reason }));
    }

    /// PUBCOMP: completes a QoS 2 delivery.
    pub fn pubcomp(&mut self, pid: Pid) {
        self.complete(pid, QoS::ExactlyOnce, true);
    }

    fn complete(&mut self, pid: Pid, qos: QoS, released: bool) {
        let Some(t) = self.traffic.as_deref_mut() else { return };
        let found = t.inflight.iter().position(|f| f.pid() == pid && f.message.qos == qos && f.released == released);
        if found.is_some_and(|i| i >= t.inflight.len() - t.held_back) {
            // Acknowledged from the last connection before it was re-sent.
            t.held_back -= 1;
        }
        if let Some(f) = found.and_then(|i| t.inflight.remove(i)) {
            self.progress += 1;
            self.record(|id| Op::Message(id, f.seq, None));
            if let Some(receipt) = f.receipt {
                receipt.complete();
            }
        }
    }

    /// An inbound QoS 2 PUBLISH: returns whether it is new and must be
    /// delivered (a re-sent one before PUBREL is not, MQTT-4.3.3-2).
    pub fn receive_qos2(&mut self, pid: Pid) -> bool {
        let new = self.traffic_mut().incoming.insert(pid);
        if new {
            self.record(|id| Op::Incoming(id, pid, true));
        }
        new
    }

    /// [`Session::receive_qos2`] for a client that may have at most `max`
    /// ids unreleased: `None` (and nothing kept) if this new one is over.
    pub fn receive_qos2_within(&mut self, pid: Pid, max: usize) -> Option<bool> {
        let incoming = &self.traffic().incoming;
        if !incoming.contains(&pid) && incoming.len() >= max {
            return None;
        }
        Some(self.receive_qos2(pid))
    }

    /// Takes out every message routed here through a shared subscription
    /// that its client has not finished with (queued, or a QoS 1 one sent
    /// and not acknowledged): the session is leaving, and they go to another
    /// member of their group (4.8.2). A QoS 2 message already sent stays: it
    /// is completed with this client when it reconnects, and never sent to
    /// another (MQTT-4.8.2-4/-5).
    pub fn take_shared(&mut self) -> Vec<Message> {
        let Some(t) = self.traffic.as_deref_mut() else { return Vec::new() };
        // The client is gone: the next connection's resend decides again.
        t.held_back = 0;
        let mut taken = Vec::new();
        let mut removed = Vec::new();
        t.inflight.retain(|f| {
            let keep = f.message.shared.is_none() || f.message.qos == QoS::ExactlyOnce;
            if !keep {
                removed.push(f.seq);
                taken.push(f.message.clone());
            }
            keep
        });
        let mut bytes = 0;
        t.queue.retain(|q| {
            let keep = q.message.shared.is_none();
            if !keep {
                bytes += q.message.payload.len();
                if q.message.qos != QoS::AtMostOnce {
                    removed.push(q.seq);
                }
                taken.push(q.message.clone());
            }
            keep
        });
        t.queued_bytes -= bytes;
        for seq in removed {
            self.record(|id| Op::Message(id, seq, None));
        }
        taken
    }

    /// Forgets inbound QoS 2 ids: `Some(pid)` one the PUBREC refused (an
    /// error PUBREC ends the exchange, MQTT 5.0 4.3.3: no PUBREL follows),
    /// `None` every one (the publisher's session on the far side of a
    /// bridge was new: its ids start over).
    pub fn forget_incoming(&mut self, pid: Option<Pid>) {
        let Some(t) = self.traffic.as_deref_mut() else { return };
        let pids: Vec<Pid> = match pid {
            Some(pid) => t.incoming.take(&pid).into_iter().collect(),
            None => std::mem::take(&mut t.incoming).into_iter().collect(),
        };
        for pid in pids {
            self.record(|id| Op::Incoming(id, pid, false));
        }
    }

    /// Inbound QoS 2 ids received and not yet released.
    pub fn incoming_len(&self) -> usize {
        self.traffic().incoming.len()
    }

    /// PUBREL from the client: forget the id; always answered by PUBCOMP
    /// (5.0: with 0x92 Packet Identifier not found for an unknown id).
    pub fn pubrel(&mut self, pid: Pid, out: &mut Vec<Packet>) {
        let known = self.traffic.as_deref_mut().is_some_and(|t| t.incoming.remove(&pid));
        if known {
            self.record(|id| Op::Incoming(id, pid, false));
        }
        let reason = if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        out.push(Packet::Pubcomp(Ack { pid, reason }));
    }
}

impl Traffic {
    /// Whether `seq`'s packet id may still be in flight: ids repeat every
    /// 65535 sequence numbers, and the inflight window is in sequence order,
    /// so only its oldest entry can be that far behind (checked in O(1)).
    fn wraps(&self, seq: u64) -> bool {
        self.inflight.front().is_some_and(|oldest| seq.saturating_sub(oldest.seq) >= u64::from(u16::MAX))
    }
}

/// The PUBLISH that delivers `message`, carrying what is left of its
/// expiry interval.
fn publish_packet(message: Message, pid: Option<Pid>, dup: bool, now_ms: u64) -> Publish {
    let expiry = message.remaining_expiry(now_ms);
    let Message { topic, payload, qos, retain, properties, subscription_id, .. } = message;
    Publish { dup, qos, pid, retain, topic, payload, properties, expiry, topic_alias: None, subscription_id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const LIMITS: Limits = Limits {
        max_inflight: 2,
        max_queued: 4,
        max_queued_bytes: usize::MAX,
        queue_qos0: false,
        slow_consumer_timeout: Duration::from_secs(5),
    };

    fn message(qos: QoS) -> Message {
        Message::new("t".into(), Bytes::from_static(b"p"), qos, false)
    }

    fn pids(out: &[Packet]) -> Vec<(Option<Pid>, bool)> {
        out.iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.pid, p.dup),
                Packet::Pubrel(ack) => (Some(ack.pid), false),
                _ => panic!("unexpected {p:?}"),
            })
            .collect()
    }

    #[test]
    fn a_client_back_with_a_smaller_receive_maximum_gets_its_inflight_as_its_window_frees() {
        let mut s = Session::new("c".into(), false, Limits { max_inflight: 4, ..LIMITS }, false);
        s.set_online(true);
        for _ in 0..6 {
            s.offer(message(QoS::AtLeastOnce));
        }
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(1), false), (Some(2), false), (Some(3), false), (Some(4), false)]);
        // Back with Receive Maximum 2: two re-sent, two held back.
        s.set_client(ClientLimits { receive_maximum: std::num::NonZeroU16::new(2), ..ClientLimits::default() });
        out.clear();
        s.resend(&mut out);
        assert_eq!(pids(&out), [(Some(1), true), (Some(2), true)]);
        out.clear();
        s.next_packets(&mut out, |_| true);
        assert!(out.is_empty(), "nothing beyond the window: {out:?}");
        // Acknowledged from before the reconnection: a held-back one.
        s.puback(4);
        s.puback(1);
        out.clear();
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(3), true)], "the held-back one first, as the window frees");
        s.puback(2);
        out.clear();
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out), [(Some(5), false)]);
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
        s.pubrec(Ack::ok(1), &mut out);
        assert_eq!(out, [Packet::Pubrel(Ack::ok(1))]);
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
        assert_eq!(out, [Packet::Pubcomp(Ack::ok(7))]);
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
        s.subscribe("t/#", Subscription::qos(QoS::ExactlyOnce));
        s.offer(message(QoS::AtLeastOnce));
        s.offer(message(QoS::ExactlyOnce));
        s.offer(message(QoS::AtLeastOnce));
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        s.pubrec(Ack::ok(2), &mut out);
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
        assert!(matches!(out[0], Packet::Pubrel(Ack { pid: 2, .. })));
        assert!(!restored.receive_qos2(9), "MQTT-4.3.3-2 state survives");
    }

    #[test]
    fn a_receipt_counts_stored_qos1_copies_until_acknowledged() {
        let mut slot = None;
        let mut durable = Session::new("d".into(), false, LIMITS, true);
        durable.set_online(true);
        let mut clean = Session::new("c".into(), true, LIMITS, false);
        clean.set_online(true);
        clean.offer_counted(message(QoS::AtLeastOnce), Some(&mut slot));
        durable.offer_counted(message(QoS::ExactlyOnce), Some(&mut slot));
        assert!(slot.is_none(), "nothing counted: only the commit counts");
        durable.offer_counted(message(QoS::AtLeastOnce), Some(&mut slot));
        let receipt = slot.clone().expect("made for the stored QoS 1 copy");
        assert!(!receipt.is_done(), "one stored QoS 1 copy is counted");
        let mut out = Vec::new();
        durable.next_packets(&mut out, |_| true);
        clean.next_packets(&mut out, |_| true);
        clean.puback(1);
        assert!(!receipt.is_done(), "a copy in a session that stores nothing is not counted");
        durable.pubrec(Ack::ok(1), &mut out);
        durable.pubcomp(1);
        assert!(!receipt.is_done(), "QoS 2 copies wait for their commit");
        durable.puback(2);
        assert!(receipt.is_done());
    }

    #[test]
    fn a_clean_session_journals_nothing() {
        let mut s = Session::new("c".into(), true, LIMITS, false);
        s.subscribe("t", Subscription::qos(QoS::AtLeastOnce));
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
        assert_eq!(s.traffic().queued_bytes, 0);
    }

    #[test]
    fn an_idle_session_gives_its_queues_back_and_keeps_what_is_pending() {
        let mut s = Session::new("c".into(), false, LIMITS, true);
        assert!(s.traffic.is_none(), "a new session holds no queues");
        s.set_online(true);
        s.offer(message(QoS::AtLeastOnce));
        let mut out = Vec::new();
        s.next_packets(&mut out, |_| true);
        s.release_idle(Instant::now());
        assert!(s.traffic.is_some(), "kept: a message inflight and journaled changes");
        s.take_journal();
        s.release_idle(Instant::now());
        assert!(s.traffic.is_some(), "kept: a message inflight");
        s.puback(pid_for(1));
        s.take_journal();
        s.release_idle(Instant::now());
        assert!(s.traffic.is_none(), "given back once empty");
        // What comes next is as before: the next packet id follows on.
        s.offer(message(QoS::AtLeastOnce));
        s.next_packets(&mut out, |_| true);
        assert_eq!(pids(&out[1..]), vec![(Some(2), false)]);
    }

    #[test]
    fn a_drop_report_survives_the_release_until_it_is_due_again() {
        let mut s = Session::new("c".into(), true, Limits { max_queued: 0, ..LIMITS }, false);
        assert!(matches!(s.offer(message(QoS::AtLeastOnce)), Offer::Dropped(_)));
        let now = Instant::now();
        assert_eq!(s.drop_report(now), Some(1));
        s.release_idle(now);
        assert!(matches!(s.offer(message(QoS::AtLeastOnce)), Offer::Dropped(_)));
        assert_eq!(s.drop_report(now), None, "the last report's time was kept");
        assert_eq!(s.drop_report(now + DROP_REPORT_INTERVAL), Some(1));
    }
}
