//! A model-based test of the broker: random sequences of CONNECT (clean or
//! persistent, with or without a will; a takeover when the client is already
//! connected), SUBSCRIBE, UNSUBSCRIBE, PUBLISH (QoS 0–2, retained, retained
//! clear), DISCONNECT, a dropped connection, a broker crash between steps and
//! a crash in the middle of a PUBLISH, played by four clients against the
//! real connection handler (`midge::connection::run`) over in-memory pipes
//! (no sockets), on both runtimes, and checked after every step against a
//! small reference model of MQTT 3.1.1.
//!
//! The model says, per client: whether its session exists and is online,
//! its subscriptions (filter → granted QoS), and the messages the broker owes
//! it and has not delivered yet; and the retained message of each topic.
//!
//! - A PUBLISH reaches each client with a matching subscription once, at the
//!   published QoS reduced to the highest granted QoS among its matching
//!   filters (MQTT-3.3.5-1), with RETAIN 0 (MQTT-3.3.1-9).
//! - A SUBSCRIBE gets the retained message of every matching topic once,
//!   at the lower of its QoS and the highest QoS among the SUBSCRIBE's
//!   filters that match it, with RETAIN 1 (MQTT-3.3.1-6/-8); a
//!   retained PUBLISH with an empty payload clears its topic
//!   (MQTT-3.3.1-10/-11) and still goes to subscribers. UNSUBSCRIBE is
//!   literal (MQTT-3.10.4-1).
//! - An offline persistent session collects QoS 1/2 messages, not QoS 0
//!   (midge's default, `queue_qos0 = false`), and gets them on its return,
//!   with Session Present 1 (MQTT-3.2.2-2); a clean session starts empty
//!   (MQTT-3.1.2-6). A second CONNECT with the same client id closes the
//!   first connection (MQTT-3.1.4-2), whose will is then published.
//! - The will is published when a connection is lost or taken over, not
//!   after DISCONNECT (MQTT-3.1.2-8/-10); midge publishes it before the
//!   session goes offline, and so does the model.
//! - A crash (the store stops committing at an instant, every connection
//!   dies, a new broker opens what was committed, the clients connect
//!   again) keeps persistent sessions, their subscriptions and queued QoS
//!   1/2 messages, and retained messages; QoS 0 messages waiting in memory
//!   for an offline session may go. Whatever was acknowledged before the
//!   crash must have been durable. Nobody waits for a will's commit, so the
//!   test waits for it (a crash may lose a will nobody acknowledged).
//! - A crash in the middle of a QoS 1/2 PUBLISH, after the store has taken
//!   0, 1 or 2 more commits, followed by the publisher's DUP resend: a QoS 2
//!   message reaches each persistent subscriber exactly once (MQTT 4.3.3),
//!   a QoS 1 message once or twice, and its retained copy is kept.
//!
//! Every test client acts as a real one: it remembers the QoS 1/2 packet ids
//! it has not finished acknowledging, and acknowledges in one of three ways
//! chosen at CONNECT (everything; nothing; PUBACK and PUBREC but never
//! PUBCOMP). So the checks also cover the sender's side of MQTT 4.3/4.4: on
//! a resumed session every unacknowledged PUBLISH is re-sent with its packet
//! id and DUP 1, and every unanswered PUBREL again (MQTT-4.4.0-1; DUP may be
//! 0 after a crash, where the broker may not have recorded the first send;
//! and a QoS 1 message acknowledged before a crash may come once more, its
//! removal not committed: at least once);
//! no first delivery carries DUP (MQTT-3.3.1-1) unless a crash cut the
//! first send, no packet id is reused while in flight, and a QoS 2 message
//! reaches the client exactly once end to end. A QoS 2 PUBLISH re-sent by
//! its publisher before PUBREL is not routed again (MQTT-4.3.3-2), and a
//! publisher's PUBREL may wait for its next connection.
//!
//! Each step waits for its acknowledgement (CONNACK, SUBACK, UNSUBACK,
//! PUBACK, PUBREC/PUBCOMP, or a PINGRESP after a QoS 0 PUBLISH), and then
//! every connected client is drained: PINGREQ/PINGRESP round trips until one
//! brings nothing new (at least two: a PINGRESP may precede deliveries
//! written in the same batch). What each received for the first time must
//! equal what the model says it is owed, in order apart from retained
//! messages, whose order among themselves is free. At the end, every offline
//! persistent session reconnects and is drained, and a fresh client
//! subscribed to `#` checks the retained set.
//!
//! Left out: queue, inflight and byte limits (set out of reach, so nothing
//! is dropped or held back), slow or stuck readers (the pipes never fill),
//! pipelined packets (every step waits for its answer, so races inside the
//! broker, such as a takeover during a batch, are not reached), keepalive,
//! session expiry, security and hooks, `$` topics, MQTT 3.1, identical
//! filters within one SUBSCRIBE, and a crash at an arbitrary instant other
//! than inside one PUBLISH.
//!
//! On failure the test prints what differed and proptest's shrunk sequence
//! of steps, in a form that pastes into a `replay` call (as in
//! `every_kind_of_step`). A failure that depends on timing may not shrink
//! well. `PROPTEST_CASES` changes the number of sequences per runtime.

use crate::support::client::Received;
use crate::support::packets::{self, DISCONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBREC, PUBREL, UNSUBACK, ack};
use futures::io::{AsyncRead, AsyncWrite};
use midge::handle::Peer;
use midge::store::{Op, Progress, Snapshot, Store, StoreError};
use midge::{Broker, Config, Runtime, RuntimeKind};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Clients the steps act for, `c0`..`c3`.
const CLIENTS: usize = 4;
/// The extra client of the final retained-state check.
const PROBE: usize = CLIENTS;
/// A one-shot publisher (clean session, CONNECT, PUBLISH, DISCONNECT) for
/// a `Publish` step of a client that is not connected.
const ONCE: usize = CLIENTS + 1;
/// Longest sequence generated.
const MAX_STEPS: usize = 40;
/// Sequences per runtime unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;
/// The longest any expected packet, close or task end may take: only a
/// failing case waits this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Issue 10's finding 7 (a QoS 2 PUBLISH's packet id and its routed copies
/// committed separately, so a crash between them lost the message) is fixed:
/// one PUBLISH commits in one transaction. With `true`, the random sequences
/// would cut QoS 2 PUBLISHes by a crash only before anything of theirs is
/// committed (for bisecting an older broker).
const FINDING_7_OPEN: bool = false;

/// Topic names: levels from {a, b}, depth 1 to 3.
const TOPICS: [&str; 14] =
    ["a", "b", "a/a", "a/b", "b/a", "b/b", "a/a/a", "a/a/b", "a/b/a", "a/b/b", "b/a/a", "b/a/b", "b/b/a", "b/b/b"];
/// Filters over those names, wildcards included, so that matches are frequent
/// and overlapping subscriptions common.
const FILTERS: [&str; 16] =
    ["a", "b", "a/b", "b/a/b", "+", "a/+", "+/b", "+/+", "a/+/b", "+/+/+", "#", "a/#", "b/#", "+/#", "a/b/#", "+/a/#"];

// ---- steps ------------------------------------------------------------------

/// How a client acknowledges QoS 1/2 deliveries on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acks {
    /// PUBACK; PUBREC, then PUBCOMP on PUBREL: a well-behaved client.
    All,
    /// Nothing: every delivery stays unacknowledged.
    Never,
    /// PUBACK and PUBREC, but never PUBCOMP.
    PubrecOnly,
}

/// The RETAIN flag of a PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retain {
    No,
    /// Retained, with a payload.
    Set,
    /// Retained with an empty payload: clears the topic.
    Clear,
}

/// How a QoS 2 PUBLISH is completed by its publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    /// PUBLISH, PUBREC, PUBREL, PUBCOMP (the only choice below QoS 2).
    Plain,
    /// The PUBLISH is sent again with DUP 1 before PUBREL.
    Dup,
    /// PUBREL waits for the client's next connection that resumes the
    /// session, where it is sent first (MQTT-4.4.0-1).
    Hold,
}

/// A will set at CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Will {
    topic: &'static str,
    qos: u8,
    retain: bool,
}

/// One step. A `Publish` for a client that is not connected is sent by a
/// one-shot publisher (client id `once`, clean session) instead; the other
/// steps for a client that is not connected do nothing.
#[derive(Clone, Debug)]
enum Step {
    /// CONNECT as client `c` (keepalive 0); a takeover when it is connected.
    Connect { c: usize, clean: bool, acks: Acks, will: Option<Will> },
    /// DISCONNECT: the connection ends without the will.
    Disconnect { c: usize },
    /// The network connection breaks: the will is published.
    Lose { c: usize },
    /// SUBSCRIBE to distinct filters, each at its QoS.
    Subscribe { c: usize, filters: Vec<(&'static str, u8)> },
    /// UNSUBSCRIBE from distinct filters (literally: `a/+` is not `a/b`).
    Unsubscribe { c: usize, filters: Vec<&'static str> },
    /// PUBLISH with a payload unique in the run (empty for `Retain::Clear`).
    Publish { c: usize, topic: &'static str, qos: u8, retain: Retain, exchange: Exchange },
    /// The broker crashes: its store stops committing, every connection
    /// dies, and a new broker is opened over what the store had committed;
    /// the clients that were connected connect again as they did before.
    Crash,
    /// A QoS 1/2 PUBLISH by a connected persistent client, cut by a crash:
    /// the store commits `commits` more batches and stops (or stops after
    /// 20 ms), then the broker crashes as in `Crash`; the publisher, which
    /// got no acknowledgement, sends the PUBLISH again with DUP 1 on its new
    /// connection. For any other client it is a plain `Crash`.
    CrashInPublish { c: usize, topic: &'static str, qos: u8, retain: bool, commits: usize },
}

fn acks() -> impl Strategy<Value = Acks> {
    prop_oneof![3 => Just(Acks::All), 1 => Just(Acks::Never), 1 => Just(Acks::PubrecOnly)]
}

fn exchange() -> impl Strategy<Value = Exchange> {
    prop_oneof![3 => Just(Exchange::Plain), 1 => Just(Exchange::Dup), 1 => Just(Exchange::Hold)]
}

fn will() -> impl Strategy<Value = Will> {
    (select(&TOPICS[..]), 0..=2u8, any::<bool>()).prop_map(|(topic, qos, retain)| Will { topic, qos, retain })
}

fn filters() -> impl Strategy<Value = Vec<(&'static str, u8)>> {
    proptest::collection::btree_map(select(&FILTERS[..]), 0..=2u8, 1..=2).prop_map(|f| f.into_iter().collect())
}

fn step() -> impl Strategy<Value = Step> {
    let c = || 0..CLIENTS;
    let retain = prop_oneof![4 => Just(Retain::No), 2 => Just(Retain::Set), 1 => Just(Retain::Clear)];
    prop_oneof![
        3 => (c(), any::<bool>(), acks(), proptest::option::weighted(0.3, will()))
            .prop_map(|(c, clean, acks, will)| Step::Connect { c, clean, acks, will }),
        1 => c().prop_map(|c| Step::Disconnect { c }),
        1 => c().prop_map(|c| Step::Lose { c }),
        3 => (c(), filters()).prop_map(|(c, filters)| Step::Subscribe { c, filters }),
        1 => (c(), proptest::collection::btree_set(select(&FILTERS[..]), 1..=2))
            .prop_map(|(c, filters)| Step::Unsubscribe { c, filters: filters.into_iter().collect() }),
        10 => (c(), select(&TOPICS[..]), 0..=2u8, retain, exchange()).prop_map(|(c, topic, qos, retain, exchange)| {
            let exchange = if qos == 2 { exchange } else { Exchange::Plain };
            Step::Publish { c, topic, qos, retain, exchange }
        }),
        1 => Just(Step::Crash),
        1 => (c(), select(&TOPICS[..]), 1..=2u8, any::<bool>(), 0..=2usize).prop_map(|(c, topic, qos, retain, commits)| {
            let commits = if FINDING_7_OPEN && qos == 2 { 0 } else { commits };
            Step::CrashInPublish { c, topic, qos, retain, commits }
        }),
    ]
}

/// Most clients start connected and subscribed, so that deliveries are
/// frequent from the first step: a CONNECT and a SUBSCRIBE per client,
/// each pair left out with some probability (and by shrinking).
fn setup(c: usize) -> impl Strategy<Value = Option<[Step; 2]>> {
    let pair = (any::<bool>(), acks(), proptest::option::weighted(0.3, will()), filters()).prop_map(
        move |(clean, acks, will, filters)| [Step::Connect { c, clean, acks, will }, Step::Subscribe { c, filters }],
    );
    proptest::option::weighted(0.8, pair)
}

fn sequences() -> impl Strategy<Value = Vec<Step>> {
    let setups = (setup(0), setup(1), setup(2), setup(3));
    (setups, proptest::collection::vec(step(), 1..=MAX_STEPS - 2 * CLIENTS))
        .prop_map(|((a, b, c, d), steps)| [a, b, c, d].into_iter().flatten().flatten().chain(steps).collect())
}

// ---- the reference model -----------------------------------------------------

/// An application message as one client receives it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let payload = String::from_utf8_lossy(&self.payload);
        write!(f, "{} \"{payload}\" q{}{}", self.topic, self.qos, if self.retain { " retained" } else { "" })
    }
}

fn list(messages: &[Msg]) -> String {
    let items: Vec<String> = messages.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// MQTT 4.7 matching, written independently of midge's trie.
fn matches(filter: &str, topic: &str) -> bool {
    let (mut f, mut t) = (filter.split('/'), topic.split('/'));
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A message owed to a client, `min..=max` times: once, except after a crash
/// in the middle of a PUBLISH, where the publisher sends it again and the
/// first attempt may or may not have been committed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Due {
    msg: Msg,
    min: usize,
    max: usize,
}

impl Due {
    fn once(msg: Msg) -> Due {
        Due { msg, min: 1, max: 1 }
    }
}

impl fmt::Display for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (1, 1) => write!(f, "{}", self.msg),
            (min, max) => write!(f, "{} ({min} to {max} times)", self.msg),
        }
    }
}

/// A session as the model sees it.
#[derive(Debug, Default)]
struct Session {
    clean: bool,
    online: bool,
    /// Filter → granted QoS.
    subs: BTreeMap<String, u8>,
    /// Messages the broker owes the client and has not sent yet, in order.
    due: Vec<Due>,
}

#[derive(Debug, Default)]
struct Model {
    sessions: [Option<Session>; CLIENTS + 2],
    /// Topic → (QoS, payload).
    retained: BTreeMap<String, (u8, Vec<u8>)>,
}

impl Model {
    /// CONNECT accepted: whether Session Present is set.
    fn connect(&mut self, c: usize, clean: bool) -> bool {
        let present = !clean && self.sessions[c].as_ref().is_some_and(|s| !s.clean);
        if !present {
            self.sessions[c] = Some(Session { clean, ..Session::default() });
        }
        self.sessions[c].as_mut().expect("just set").online = true;
        present
    }

    /// The connection ended: a clean session goes, a persistent one waits.
    fn disconnect(&mut self, c: usize) {
        match &mut self.sessions[c] {
            Some(s) if s.clean => self.sessions[c] = None,
            Some(s) => s.online = false,
            None => {}
        }
    }

    /// Every connection ended without the broker noticing; QoS 0 messages
    /// waiting in memory for offline sessions are gone.
    fn crash(&mut self) {
        for c in 0..=ONCE {
            self.disconnect(c);
            if let Some(s) = &mut self.sessions[c] {
                s.due.retain(|d| d.msg.qos > 0);
            }
        }
    }

    /// Identical filters in one SUBSCRIBE replace each other (the last
    /// counts, MQTT-3.8.4-3), and each matching retained message is owed
    /// once per SUBSCRIBE, at the highest QoS of the filters that match it.
    fn subscribe(&mut self, c: usize, filters: &[(&str, u8)]) {
        let s = self.sessions[c].as_mut().expect("subscribing client has a session");
        let mut granted: BTreeMap<&str, u8> = BTreeMap::new();
        for (filter, qos) in filters {
            s.subs.insert(filter.to_string(), *qos);
            granted.insert(filter, *qos);
        }
        for (topic, (rqos, payload)) in &self.retained {
            let best = granted.iter().filter(|(f, _)| matches(f, topic)).map(|(_, q)| *q).max();
            if let Some(qos) = best {
                let m = Msg { topic: topic.clone(), payload: payload.clone(), qos: (*rqos).min(qos), retain: true };
                s.due.push(Due::once(m));
            }
        }
    }

    fn unsubscribe(&mut self, c: usize, filters: &[&str]) {
        let s = self.sessions[c].as_mut().expect("unsubscribing client has a session");
        for filter in filters {
            s.subs.remove(*filter);
        }
    }

    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        if retain {
            match payload.is_empty() {
                true => drop(self.retained.remove(topic)),
                false => drop(self.retained.insert(topic.to_owned(), (qos, payload.to_vec()))),
            }
        }
        for s in self.sessions.iter_mut().flatten() {
            let granted = s.subs.iter().filter(|(f, _)| matches(f, topic)).map(|(_, q)| *q).max();
            let Some(granted) = granted else { continue };
            let qos = qos.min(granted);
            if qos == 0 && !s.online {
                continue;
            }
            s.due.push(Due::once(Msg { topic: topic.to_owned(), payload: payload.to_vec(), qos, retain: false }));
        }
    }

    /// A PUBLISH cut by a crash and sent again (DUP 1) by its persistent
    /// publisher once the broker is back; the sessions are as they are after
    /// the crash. The first attempt's QoS 0 copies died with the broker;
    /// what it committed for persistent sessions may be there or not, and
    /// the second attempt routes again unless the broker kept the QoS 2
    /// packet id. So a persistent session with a QoS 1/2 copy gets exactly
    /// one of a QoS 2 PUBLISH (MQTT 4.3.3: the two attempts are one
    /// message) and one or two of a QoS 1 PUBLISH; a QoS 0 copy arrives at
    /// most once, and only for a session online when it is sent again.
    fn publish_again_after_crash(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        if retain {
            self.retained.insert(topic.to_owned(), (qos, payload.to_vec()));
        }
        for s in self.sessions.iter_mut().flatten() {
            let granted = s.subs.iter().filter(|(f, _)| matches(f, topic)).map(|(_, q)| *q).max();
            let Some(granted) = granted else { continue };
            let msg = Msg { topic: topic.to_owned(), payload: payload.to_vec(), qos: qos.min(granted), retain: false };
            let (min, max) = match (msg.qos, qos) {
                (0, _) if !s.online => continue,
                (0, 1) => (1, 1),
                (0, _) => (0, 1),
                (_, 1) => (1, 2),
                _ => (1, 1),
            };
            s.due.push(Due { msg, min, max });
        }
    }

    fn take_due(&mut self, c: usize) -> Vec<Due> {
        self.sessions[c].as_mut().map(|s| std::mem::take(&mut s.due)).unwrap_or_default()
    }

    fn is_persistent_offline(&self, c: usize) -> bool {
        self.sessions[c].as_ref().is_some_and(|s| !s.clean && !s.online)
    }
}

/// Whether `got` is what was `expected`: each message as many times as it
/// is owed, and the messages owed exactly once that are not retained
/// deliveries in the same order.
fn same_deliveries(expected: &[Due], got: &[Msg]) -> bool {
    let mut counts: BTreeMap<&Msg, (usize, usize, usize)> = BTreeMap::new();
    for d in expected {
        let e = counts.entry(&d.msg).or_default();
        (e.0, e.1) = (e.0 + d.min, e.1 + d.max);
    }
    for m in got {
        match counts.get_mut(m) {
            Some(e) => e.2 += 1,
            None => return false,
        }
    }
    if counts.values().any(|(min, max, n)| n < min || n > max) {
        return false;
    }
    let exact = |m: &Msg| !m.retain && expected.iter().all(|d| d.msg != *m || (d.min, d.max) == (1, 1));
    let live_expected: Vec<&Msg> = expected.iter().map(|d| &d.msg).filter(|m| exact(m)).collect();
    let live_got: Vec<&Msg> = got.iter().filter(|m| exact(m)).collect();
    live_expected == live_got
}

fn owed(expected: &[Due]) -> String {
    let items: Vec<String> = expected.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

// ---- an in-memory duplex stream ------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Buffer {
    data: VecDeque<u8>,
    closed: bool,
    /// The broker's reader, waiting for data.
    waker: Option<Waker>,
}

/// One direction of a connection: the broker's side is async, the test
/// client's side blocks on a condition variable with a deadline.
#[derive(Default)]
struct Half {
    buffer: Mutex<Buffer>,
    ready: Condvar,
}

impl Half {
    fn push(&self, bytes: &[u8]) -> bool {
        let mut b = lock(&self.buffer);
        if b.closed {
            return false;
        }
        b.data.extend(bytes);
        if let Some(w) = b.waker.take() {
            w.wake();
        }
        self.ready.notify_all();
        true
    }

    fn close(&self) {
        let mut b = lock(&self.buffer);
        b.closed = true;
        if let Some(w) = b.waker.take() {
            w.wake();
        }
        self.ready.notify_all();
    }
}

/// The broker's end of a connection.
struct BrokerEnd {
    from_client: Arc<Half>,
    to_client: Arc<Half>,
}

impl AsyncRead for BrokerEnd {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut b = lock(&self.from_client.buffer);
        if !b.data.is_empty() {
            let n = buf.len().min(b.data.len());
            for (slot, byte) in buf.iter_mut().zip(b.data.drain(..n)) {
                *slot = byte;
            }
            return Poll::Ready(Ok(n));
        }
        if b.closed {
            return Poll::Ready(Ok(0));
        }
        b.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for BrokerEnd {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.to_client.push(buf) {
            true => Poll::Ready(Ok(buf.len())),
            false => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.to_client.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for BrokerEnd {
    fn drop(&mut self) {
        self.to_client.close();
        self.from_client.close();
    }
}

/// Set when a connection task has returned.
#[derive(Default)]
struct Done {
    ended: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    fn set(&self) {
        *lock(&self.ended) = true;
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.ended);
        let (guard, _) =
            self.cv.wait_timeout_while(guard, timeout, |ended| !*ended).unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

enum Recv {
    Timeout,
    Closed,
}

/// The test client's end of a connection served by `midge::connection::run`.
struct Conn {
    to_broker: Arc<Half>,
    from_broker: Arc<Half>,
    done: Arc<Done>,
    /// Dropping it would tell the connection the broker is shutting down.
    _shutdown: async_channel::Sender<()>,
    next_pid: u16,
}

impl Conn {
    fn open<R: Runtime>(rt: &R, broker: &Broker) -> Conn {
        let (to_broker, from_broker) = (Arc::new(Half::default()), Arc::new(Half::default()));
        let end = BrokerEnd { from_client: to_broker.clone(), to_client: from_broker.clone() };
        let (shutdown, stopped) = async_channel::bounded(1);
        let done = Arc::new(Done::default());
        let (task_rt, task_broker, task_done) = (rt.clone(), broker.clone(), done.clone());
        let peer = Peer::plain("127.0.0.1:1883".parse().expect("an address"));
        rt.spawn(async move {
            midge::connection::run(task_rt, task_broker, end, peer, stopped).await;
            task_done.set();
        });
        Conn { to_broker, from_broker, done, _shutdown: shutdown, next_pid: 0 }
    }

    fn send(&self, bytes: &[u8]) {
        // A closed connection shows in the next read.
        let _ = self.to_broker.push(bytes);
    }

    fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid % u16::MAX + 1;
        self.next_pid
    }

    fn recv(&self) -> Result<Received, Recv> {
        let deadline = Instant::now() + TIMEOUT;
        let mut b = lock(&self.from_broker.buffer);
        loop {
            if let Some(packet) = take_packet(&mut b.data) {
                return Ok(packet);
            }
            if b.closed {
                return Err(Recv::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Recv::Timeout);
            }
            b = self.from_broker.ready.wait_timeout(b, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// The network connection breaks, both ways.
    fn sever(&self) {
        self.to_broker.close();
        self.from_broker.close();
    }

    /// Waits until the broker's task for this connection has returned.
    fn ended(&self, who: &str) -> Result<(), String> {
        match self.done.wait(TIMEOUT) {
            true => Ok(()),
            false => Err(format!("{who}: connection task still running {TIMEOUT:?} after its connection ended")),
        }
    }
}

/// One whole packet from the front of `data`, if it is all there.
fn take_packet(data: &mut VecDeque<u8>) -> Option<Received> {
    let bytes = data.make_contiguous();
    let (mut len, mut at) = (0usize, 1);
    loop {
        let byte = *bytes.get(at)?;
        len |= usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 || at > 4 {
            break;
        }
    }
    if bytes.len() < at + len {
        return None;
    }
    let packet = Received { header: bytes[0], body: bytes[at..at + len].to_vec() };
    data.drain(..at + len);
    Some(packet)
}

fn describe(p: &Received) -> String {
    match p.header >> 4 {
        3 => {
            let (topic, pid, payload) = p.publish();
            let flags =
                format!("q{}{}{}", p.qos(), if p.dup() { " dup" } else { "" }, if p.retain() { " retain" } else { "" });
            let pid = pid.map(|p| format!(" pid {p}")).unwrap_or_default();
            format!("PUBLISH {topic} \"{}\" {flags}{pid}", String::from_utf8_lossy(&payload))
        }
        _ => format!("packet {:02x} {:02x?}", p.header, p.body),
    }
}

// ---- a store that survives its broker -------------------------------------------

#[derive(Default)]
struct Durable {
    snapshot: Snapshot,
    /// After the crash instant nothing more is committed.
    crashed: bool,
    /// Commits still allowed before the crash, when one is set up.
    budget: Option<usize>,
}

/// A [`MemoryStore`](midge::store::MemoryStore) whose contents outlive the
/// broker it was given to, so a crash can be replayed: `crash` freezes it
/// and hands back what was committed up to that instant.
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<Durable>>);

impl SharedStore {
    fn over(snapshot: Snapshot) -> SharedStore {
        SharedStore(Arc::new(Mutex::new(Durable { snapshot, crashed: false, budget: None })))
    }

    /// The store takes `commits` more commits and then stops.
    fn crash_after(&self, commits: usize) {
        lock(&self.0).budget = Some(commits);
    }

    fn stopped(&self) -> bool {
        lock(&self.0).crashed
    }

    fn crash(&self) -> Snapshot {
        let mut d = lock(&self.0);
        d.crashed = true;
        d.snapshot.clone()
    }
}

impl Store for SharedStore {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut d = lock(&self.0);
        match d.budget {
            Some(0) => d.crashed = true,
            Some(n) => d.budget = Some(n - 1),
            None => {}
        }
        if !d.crashed {
            d.snapshot.apply(ops);
        }
        // After the crash the commit "returns" to nobody.
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(lock(&self.0).snapshot.clone())
    }
}

// ---- the test clients ------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InState {
    /// QoS 1 without PUBACK, or QoS 2 without PUBREC.
    Unacked,
    /// QoS 2: PUBREC sent, waiting for PUBREL.
    Received,
    /// QoS 2: PUBREL received, PUBCOMP not sent.
    Released,
}

/// A QoS 1/2 delivery the client has not finished acknowledging.
#[derive(Debug)]
struct Inbound {
    msg: Msg,
    state: InState,
    /// A crash came after the first delivery: the broker may not have
    /// recorded that it was sent, and may re-send it without DUP.
    crashed: bool,
    /// The session was resumed: the broker must send it (or its PUBREL) again.
    resend_due: bool,
}

/// A client: its connection, and the session state a client keeps.
struct Client {
    id: String,
    conn: Option<Conn>,
    acks: Acks,
    /// The will of the current connection, with its payload.
    will: Option<(Will, Vec<u8>)>,
    clean: bool,
    /// Packet id → a delivery not fully acknowledged (the receiver's state).
    inbound: BTreeMap<u16, Inbound>,
    /// Messages received for the first time since the last check.
    fresh: Vec<Msg>,
    /// Its own QoS 2 PUBLISHes answered by PUBREC, PUBREL not sent yet.
    held: Vec<u16>,
    /// A crash cut packets in flight to it: until the next check, a first
    /// delivery may carry DUP 1 (the broker sent it before, the client
    /// never read it).
    cut: bool,
    /// QoS 1 messages it acknowledged since the last crash.
    acked: Vec<Msg>,
    /// QoS 1 messages it acknowledged before a crash, until its session
    /// resumes after it: the broker
    /// may not have committed their removal (it does not hold its
    /// connection's next answers for it), and may deliver them once more
    /// (at least once), with DUP 1, or 0 if their sending was not
    /// committed either.
    redeliverable: Vec<Msg>,
    /// Places in `fresh` of messages that equal one in `redeliverable`
    /// and have an empty payload: a retained message's clear is not unique
    /// in the run, so such a message is a redelivery or a new one.
    ambiguous: Vec<usize>,
}

impl Client {
    fn new(id: String) -> Client {
        let (acks, will, clean) = (Acks::All, None, true);
        Client {
            id,
            conn: None,
            acks,
            will,
            clean,
            inbound: BTreeMap::new(),
            fresh: Vec::new(),
            ambiguous: Vec::new(),
            held: Vec::new(),
            cut: false,
            acked: Vec::new(),
            redeliverable: Vec::new(),
        }
    }

    /// Handles a PUBLISH or PUBREL from the broker as a client does, and
    /// checks the sender's side of the QoS 1/2 flows.
    fn deliver(&mut self, p: Received) -> Result<(), String> {
        let who = &self.id;
        let conn = self.conn.as_ref().expect("a delivery comes over a connection");
        match p.header {
            h if h >> 4 == 3 => {
                let (topic, pid, payload) = p.publish();
                let msg = Msg { topic, payload, qos: p.qos(), retain: p.retain() };
                let Some(pid) = pid else {
                    if p.dup() {
                        return Err(format!("{who}: QoS 0 PUBLISH with DUP 1 (MQTT-3.3.1-2): {}", describe(&p)));
                    }
                    self.fresh.push(msg);
                    return Ok(());
                };
                match self.inbound.get_mut(&pid) {
                    Some(e) if e.state == InState::Released => {
                        return Err(format!("{who}: packet id {pid} reused for {msg} before PUBCOMP of {}", e.msg));
                    }
                    Some(e) if e.msg != msg => {
                        return Err(format!(
                            "{who}: packet id {pid} reused for {msg} while {} is unacknowledged",
                            e.msg
                        ));
                    }
                    Some(e) => {
                        if !p.dup() && !e.crashed {
                            return Err(format!("{who}: {msg} re-sent with DUP 0 (MQTT-3.3.1-1)"));
                        }
                        // A re-delivery: not new for the application.
                        e.resend_due = false;
                    }
                    None => {
                        let again = self.redeliverable.iter().position(|m| *m == msg);
                        if p.dup() && !self.cut && again.is_none() {
                            return Err(format!("{who}: first delivery of {msg} has DUP 1"));
                        }
                        match again {
                            Some(i) if msg.payload.is_empty() => {
                                self.redeliverable.remove(i);
                                self.ambiguous.push(self.fresh.len());
                                self.fresh.push(msg.clone());
                            }
                            // Not new for the application: the same QoS 1 message again.
                            Some(i) => drop(self.redeliverable.remove(i)),
                            None => self.fresh.push(msg.clone()),
                        }
                        let entry = Inbound { msg, state: InState::Unacked, crashed: false, resend_due: false };
                        self.inbound.insert(pid, entry);
                    }
                }
                let e = self.inbound.get_mut(&pid).expect("recorded above");
                match (e.msg.qos, self.acks) {
                    (_, Acks::Never) => {}
                    (1, _) => {
                        conn.send(&ack(PUBACK, pid));
                        if let Some(e) = self.inbound.remove(&pid) {
                            self.acked.push(e.msg);
                        }
                    }
                    _ => {
                        conn.send(&ack(PUBREC, pid));
                        e.state = InState::Received;
                    }
                }
                Ok(())
            }
            PUBREL if p.body.len() == 2 => {
                let pid = u16::from_be_bytes([p.body[0], p.body[1]]);
                match self.inbound.get_mut(&pid) {
                    Some(e) if e.state == InState::Unacked => {
                        Err(format!("{who}: PUBREL {pid} for {} before its PUBREC", e.msg))
                    }
                    Some(e) => {
                        e.state = InState::Released;
                        e.resend_due = false;
                        if self.acks == Acks::All {
                            conn.send(&ack(PUBCOMP, pid));
                            self.inbound.remove(&pid);
                        }
                        Ok(())
                    }
                    None => Err(format!("{who}: PUBREL {pid} for no message it received")),
                }
            }
            _ => Err(format!("{who}: unexpected {}", describe(&p))),
        }
    }
}

// ---- one run of a sequence -----------------------------------------------------

fn config() -> Config {
    Config {
        data_dir: None,
        // Out of the way: nothing generated here is dropped or held back.
        max_inflight: 10_000,
        max_queued: 100_000,
        ..Config::default()
    }
}

/// A broker over a [`SharedStore`], the clients, and the model.
struct Run<R: Runtime> {
    rt: R,
    broker: Broker,
    store: SharedStore,
    clients: Vec<Client>,
    model: Model,
    /// Payloads are numbered so every message is told apart.
    payloads: u64,
}

impl<R: Runtime> Run<R> {
    fn new(rt: R) -> Run<R> {
        let store = SharedStore::default();
        let broker = Broker::with_store(config(), Box::new(store.clone())).expect("broker over a memory store");
        let mut clients: Vec<Client> = (0..CLIENTS).map(|c| Client::new(format!("c{c}"))).collect();
        clients.push(Client::new("probe".into()));
        clients.push(Client::new("once".into()));
        Run { rt, broker, store, clients, model: Model::default(), payloads: 0 }
    }

    fn payload(&mut self, prefix: &str) -> Vec<u8> {
        self.payloads += 1;
        format!("{prefix}{}", self.payloads).into_bytes()
    }

    /// Plays the steps, checking after each; then the epilogue.
    fn play(&mut self, steps: &[Step]) -> Result<(), String> {
        for (i, step) in steps.iter().enumerate() {
            self.step(step).and_then(|()| self.check()).map_err(|e| format!("step {i} ({step:?}): {e}"))?;
        }
        self.epilogue().map_err(|e| format!("after the last step: {e}"))
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Connect { c, clean, acks, will } => self.connect(*c, *clean, *acks, will.clone()),
            Step::Crash => self.crash(),
            Step::CrashInPublish { c, topic, qos, retain, commits }
                if self.clients[*c].conn.is_some() && !self.clients[*c].clean =>
            {
                self.crash_in_publish(*c, topic, *qos, *retain, *commits)
            }
            Step::CrashInPublish { .. } => self.crash(),
            Step::Publish { c, topic, qos, retain, exchange } if self.clients[*c].conn.is_none() => {
                self.connect(ONCE, true, Acks::All, None)?;
                let exchange = if *exchange == Exchange::Hold { Exchange::Plain } else { *exchange };
                self.publish(ONCE, topic, *qos, *retain, exchange)?;
                self.disconnect(ONCE)
            }
            Step::Disconnect { c } | Step::Lose { c } | Step::Subscribe { c, .. } | Step::Unsubscribe { c, .. }
                if self.clients[*c].conn.is_none() =>
            {
                Ok(())
            }
            Step::Disconnect { c } => self.disconnect(*c),
            Step::Lose { c } => self.lose(*c),
            Step::Subscribe { c, filters } => self.subscribe(*c, filters),
            Step::Unsubscribe { c, filters } => self.unsubscribe(*c, filters),
            Step::Publish { c, topic, qos, retain, exchange } => self.publish(*c, topic, *qos, *retain, *exchange),
        }
    }

    fn connect(&mut self, c: usize, clean: bool, acks: Acks, will: Option<Will>) -> Result<(), String> {
        let will = will.map(|w| (w, self.payload(&format!("will-c{c}-"))));
        let previous = self.clients[c].conn.take();
        let conn = Conn::open(&self.rt, &self.broker);
        let client = &mut self.clients[c];
        let connect = packets::Connect {
            client_id: &client.id,
            clean,
            keep_alive: 0,
            will: will.as_ref().map(|(w, payload)| (w.topic, payload.as_slice(), w.qos, w.retain)),
            ..packets::Connect::default()
        };
        conn.send(&connect.bytes());
        let present = self.model.connect(c, clean);
        let who = client.id.clone();
        match conn.recv() {
            Ok(p) if p.header == 0x20 && p.body == [u8::from(present), 0] => {}
            Ok(p) => return Err(format!("{who}: expected CONNACK, Session Present {present}, got {}", describe(&p))),
            Err(e) => return Err(recv_error(&who, e, "CONNACK")),
        }
        // A client whose session is gone discards its own state (MQTT-3.2.2).
        match present {
            true => client.inbound.values_mut().for_each(|e| e.resend_due = true),
            false => {
                client.inbound.clear();
                client.held.clear();
            }
        }
        (client.acks, client.clean, client.conn) = (acks, clean, Some(conn));
        let old_will = std::mem::replace(&mut client.will, will);
        if let Some(old) = previous {
            // MQTT-3.1.4-2: the first connection is closed; its will goes out.
            let who = format!("{who} (the connection taken over)");
            match old.recv() {
                Err(Recv::Closed) => {}
                Err(Recv::Timeout) => return Err(format!("{who}: not closed by the takeover")),
                Ok(p) => return Err(format!("{who}: got {} instead of being closed", describe(&p))),
            }
            old.ended(&who)?;
            if let Some((w, payload)) = old_will {
                self.published_will(&w, &payload);
            }
        }
        for pid in std::mem::take(&mut self.clients[c].held) {
            self.release(c, pid)?;
        }
        Ok(())
    }

    /// The broker published a will. Nobody waits for its store commit, so
    /// the test does, as an acknowledgement would make a publisher wait: a
    /// crash in a later step then finds it durable, like everything else the
    /// model counts on after a crash.
    fn published_will(&mut self, will: &Will, payload: &[u8]) {
        self.model.publish(will.topic, payload, will.qos, will.retain);
        if let Some(store) = self.broker.store() {
            // A no-op (there is no such session), committed after every
            // earlier append.
            let barrier = store.append([Op::Progress("model-barrier".into(), 0, Progress::Queued)]);
            futures::executor::block_on(store.wait(barrier));
        }
    }

    fn disconnect(&mut self, c: usize) -> Result<(), String> {
        let conn = self.clients[c].conn.take().expect("connected");
        conn.send(&DISCONNECT);
        let who = self.clients[c].id.clone();
        match conn.recv() {
            Err(Recv::Closed) => {}
            Err(Recv::Timeout) => return Err(format!("{who}: connection not closed after DISCONNECT")),
            Ok(p) => return Err(format!("{who}: got {} after DISCONNECT", describe(&p))),
        }
        conn.ended(&who)?;
        self.gone(c);
        Ok(())
    }

    /// The client's connection ended: the model and the client forget a
    /// clean session.
    fn gone(&mut self, c: usize) {
        self.model.disconnect(c);
        let client = &mut self.clients[c];
        client.will = None;
        if client.clean {
            client.inbound.clear();
            client.held.clear();
        }
    }

    fn lose(&mut self, c: usize) -> Result<(), String> {
        let conn = self.clients[c].conn.take().expect("connected");
        conn.sever();
        conn.ended(&self.clients[c].id)?;
        // midge publishes the will before it detaches the session, so the
        // session still counts as online for it.
        if let Some((w, payload)) = self.clients[c].will.take() {
            self.published_will(&w, &payload);
        }
        self.gone(c);
        Ok(())
    }

    fn crash(&mut self) -> Result<(), String> {
        let committed = self.store.crash();
        let mut back = Vec::new();
        for (c, client) in self.clients.iter_mut().enumerate() {
            if let Some(conn) = client.conn.take() {
                conn.sever();
                conn.ended(&client.id)?;
                back.push((c, client.clean, client.acks, client.will.take().map(|(w, _)| w)));
            }
            match client.clean {
                true => {
                    client.inbound.clear();
                    client.held.clear();
                    client.acked.clear();
                    client.redeliverable.clear();
                }
                false => {
                    client.inbound.values_mut().for_each(|e| e.crashed = true);
                    // Kept across crashes until the session resumes.
                    let acked = std::mem::take(&mut client.acked);
                    client.redeliverable.extend(acked);
                }
            }
        }
        self.broker.close();
        self.store = SharedStore::over(committed);
        self.broker = Broker::with_store(config(), Box::new(self.store.clone()))
            .map_err(|e| format!("the broker does not reopen after the crash: {e}"))?;
        self.model.crash();
        for (c, clean, acks, will) in back {
            self.connect(c, clean, acks, will)?;
        }
        Ok(())
    }

    fn crash_in_publish(&mut self, c: usize, topic: &str, qos: u8, retain: bool, commits: usize) -> Result<(), String> {
        let payload = self.payload("m");
        let publish = |pid, dup| packets::publish_with(topic, &payload, qos, Some(pid), retain, dup);
        self.store.crash_after(commits);
        let conn = self.clients[c].conn.as_mut().expect("connected");
        let pid = conn.pid();
        conn.send(&publish(pid, false));
        let start = Instant::now();
        while !self.store.stopped() && start.elapsed() < Duration::from_millis(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Whatever was on its way to a client dies with the connections.
        self.clients.iter_mut().filter(|client| client.conn.is_some()).for_each(|client| client.cut = true);
        self.crash()?;
        self.model.publish_again_after_crash(topic, &payload, qos, retain);
        // MQTT-4.4.0-1: the publisher sends it again with its packet id.
        self.clients[c].conn.as_ref().expect("connected again").send(&publish(pid, true));
        match qos {
            1 => self.expect(c, &ack(PUBACK, pid), "PUBACK for the PUBLISH sent again"),
            _ => {
                self.expect(c, &ack(PUBREC, pid), "PUBREC for the PUBLISH sent again")?;
                self.release(c, pid)
            }
        }
    }

    fn subscribe(&mut self, c: usize, filters: &[(&'static str, u8)]) -> Result<(), String> {
        let conn = self.clients[c].conn.as_mut().expect("connected");
        let pid = conn.pid();
        conn.send(&packets::subscribe(pid, filters));
        let codes: Vec<u8> = filters.iter().map(|(_, q)| *q).collect();
        self.expect(c, &packets::suback(pid, &codes), "SUBACK")?;
        self.model.subscribe(c, filters);
        Ok(())
    }

    fn unsubscribe(&mut self, c: usize, filters: &[&'static str]) -> Result<(), String> {
        let conn = self.clients[c].conn.as_mut().expect("connected");
        let pid = conn.pid();
        conn.send(&packets::unsubscribe(pid, filters));
        self.expect(c, &ack(UNSUBACK, pid), "UNSUBACK")?;
        self.model.unsubscribe(c, filters);
        Ok(())
    }

    fn publish(&mut self, c: usize, topic: &str, qos: u8, retain: Retain, exchange: Exchange) -> Result<(), String> {
        let payload = match retain {
            Retain::Clear => Vec::new(),
            _ => self.payload("m"),
        };
        let flag = retain != Retain::No;
        let conn = self.clients[c].conn.as_mut().expect("connected");
        let pid = conn.pid();
        match qos {
            0 => {
                conn.send(&packets::publish_with(topic, &payload, 0, None, flag, false));
                conn.send(&PINGREQ);
                self.expect(c, &PINGRESP, "PINGRESP after a QoS 0 PUBLISH")?;
            }
            1 => {
                conn.send(&packets::publish_with(topic, &payload, 1, Some(pid), flag, false));
                self.expect(c, &ack(PUBACK, pid), "PUBACK")?;
            }
            _ => {
                conn.send(&packets::publish_with(topic, &payload, 2, Some(pid), flag, false));
                self.expect(c, &ack(PUBREC, pid), "PUBREC")?;
                let conn = self.clients[c].conn.as_ref().expect("connected");
                match exchange {
                    Exchange::Hold => {
                        // Routed already (before PUBREC): the PUBREL only
                        // completes the exchange, on a later connection.
                        self.clients[c].held.push(pid);
                    }
                    Exchange::Dup => {
                        conn.send(&packets::publish_with(topic, &payload, 2, Some(pid), flag, true));
                        self.expect(c, &ack(PUBREC, pid), "PUBREC for the re-sent PUBLISH")?;
                        self.release(c, pid)?;
                    }
                    Exchange::Plain => self.release(c, pid)?,
                }
            }
        }
        self.model.publish(topic, &payload, qos, flag);
        Ok(())
    }

    /// PUBREL for an inbound QoS 2 exchange, and its PUBCOMP.
    fn release(&mut self, c: usize, pid: u16) -> Result<(), String> {
        self.clients[c].conn.as_ref().expect("connected").send(&ack(PUBREL, pid));
        self.expect(c, &ack(PUBCOMP, pid), "PUBCOMP")
    }

    /// Reads until `expected` arrives, handling deliveries on the way (they
    /// may come first: MQTT 3.8.4 lets retained messages precede SUBACK).
    fn expect(&mut self, c: usize, expected: &[u8], what: &str) -> Result<(), String> {
        loop {
            let client = &mut self.clients[c];
            let got = client.conn.as_ref().expect("connected").recv();
            match got {
                Ok(p) if packets::packet(p.header, &p.body) == expected => return Ok(()),
                Ok(p) if p.header >> 4 == 3 || p.header == PUBREL => client.deliver(p)?,
                Ok(p) => return Err(format!("{}: expected {what}, got {}", client.id, describe(&p))),
                Err(e) => return Err(recv_error(&client.id, e, what)),
            }
        }
    }

    /// Drains every connected client and compares what each received for
    /// the first time with what the model says it is owed.
    fn check(&mut self) -> Result<(), String> {
        for c in 0..=ONCE {
            if self.clients[c].conn.is_none() {
                continue;
            }
            // Everything routed before this point is queued for the client:
            // it arrives before the PINGRESP of a round trip that starts
            // after the batch it was written in. Only a will is routed with
            // nobody waiting for its store commit, and a QoS 2 copy of it
            // waits for that commit: while fewer messages than the model
            // expects have come, keep asking (a missing one fails after
            // TIMEOUT, with what did come).
            let (mut rounds, start) = (0, Instant::now());
            loop {
                self.clients[c].conn.as_ref().expect("connected").send(&PINGREQ);
                let mut quiet = true;
                loop {
                    let client = &mut self.clients[c];
                    match client.conn.as_ref().expect("connected").recv() {
                        Ok(p) if p.header == PINGRESP[0] && p.body.is_empty() => break,
                        Ok(p) if p.header >> 4 == 3 || p.header == PUBREL => {
                            quiet = false;
                            client.deliver(p)?;
                        }
                        Ok(p) => return Err(format!("{}: unexpected {}", client.id, describe(&p))),
                        Err(e) => return Err(recv_error(&client.id, e, "PINGRESP")),
                    }
                }
                rounds += 1;
                let client = &self.clients[c];
                let owed: usize = self.model.sessions[c].as_ref().map_or(0, |s| s.due.iter().map(|d| d.min).sum());
                let short =
                    client.fresh.len() - client.ambiguous.len() < owed || client.inbound.values().any(|e| e.resend_due);
                if rounds >= 2 && quiet && (!short || start.elapsed() > TIMEOUT) {
                    break;
                }
                if quiet && short {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        for c in 0..=ONCE {
            if self.clients[c].conn.is_none() {
                // What an offline session is owed waits for its return.
                continue;
            }
            let expected = self.model.take_due(c);
            let client = &mut self.clients[c];
            client.cut = false;
            // A redelivery comes when the session resumes, before this check.
            client.redeliverable.clear();
            let got = std::mem::take(&mut client.fresh);
            // Each ambiguous message counts as new or as a redelivery,
            // whichever agrees with the model.
            let ambiguous: Vec<usize> = std::mem::take(&mut client.ambiguous).into_iter().take(4).collect();
            let fits = (0..1usize << ambiguous.len()).any(|dropped| {
                let kept: Vec<Msg> = (got.iter().enumerate())
                    .filter(|(i, _)| ambiguous.iter().position(|a| a == i).is_none_or(|k| dropped & (1 << k) == 0))
                    .map(|(_, m)| m.clone())
                    .collect();
                same_deliveries(&expected, &kept)
            });
            if !fits {
                return Err(format!("{}: got {} but the model expected {}", client.id, list(&got), owed(&expected)));
            }
            {
                let missing: Vec<String> = client
                    .inbound
                    .iter()
                    .filter(|(_, e)| e.resend_due)
                    .map(|(pid, e)| format!("pid {pid} {} ({:?})", e.msg, e.state))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "{}: not re-sent on the resumed session (MQTT-4.4.0-1): {}",
                        client.id,
                        missing.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every offline persistent session comes back for what it is owed, and
    /// a fresh client subscribed to `#` gets exactly the retained set.
    fn epilogue(&mut self) -> Result<(), String> {
        for c in 0..CLIENTS {
            if self.model.is_persistent_offline(c) {
                self.connect(c, false, Acks::All, None)?;
            }
        }
        self.connect(PROBE, true, Acks::All, None)?;
        self.subscribe(PROBE, &[("#", 2)])?;
        self.check()
    }
}

impl<R: Runtime> Drop for Run<R> {
    fn drop(&mut self) {
        for client in &mut self.clients {
            if let Some(conn) = client.conn.take() {
                conn.sever();
                let _ = conn.ended(&client.id);
            }
        }
        self.broker.close();
    }
}

fn recv_error(who: &str, e: Recv, what: &str) -> String {
    match e {
        Recv::Timeout => format!("{who}: nothing received within {TIMEOUT:?} while waiting for {what}"),
        Recv::Closed => format!("{who}: connection closed while waiting for {what}"),
    }
}

/// The steps, one per line, in a form that pastes into [`regressions`].
fn listing(steps: &[Step]) -> String {
    steps.iter().map(|s| format!("    {s:?},\n")).collect()
}

fn run_model<R: Runtime>(rt: R) {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    let config = ProptestConfig {
        cases,
        // No regression files: a failure prints its shrunk sequence instead.
        failure_persistence: None,
        max_shrink_iters: 2048,
        // A failure by timeout costs TIMEOUT per attempt: bound the search.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&sequences(), |steps| Run::new(rt.clone()).play(&steps).map_err(TestCaseError::fail));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, steps)) => {
            panic!(
                "the broker differs from the model: {why}\nshrunk sequence ({} steps):\n{}",
                steps.len(),
                listing(&steps)
            )
        }
        Err(TestError::Abort(why)) => panic!("model test aborted: {why}"),
    }
}

/// Runs `steps` once on `kind` (for the regression cases).
fn replay(kind: RuntimeKind, steps: &[Step]) {
    let result = match kind {
        #[cfg(feature = "async-std")]
        RuntimeKind::AsyncStd => Run::new(midge::AsyncStd).play(steps),
        #[cfg(feature = "smol")]
        RuntimeKind::Smol => Run::new(crate::support::smol_runtime()).play(steps),
        #[allow(unreachable_patterns)]
        other => panic!("runtime {other} not compiled in"),
    };
    if let Err(why) = result {
        panic!("the broker differs from the model: {why}\nsequence:\n{}", listing(steps));
    }
}

runtime_kind_test!(
    /// Random sequences of steps across four clients agree with the model
    /// (256 sequences of up to 40 steps per runtime).
    broker_agrees_with_the_model,
    |kind: RuntimeKind| match kind {
        #[cfg(feature = "async-std")]
        RuntimeKind::AsyncStd => run_model(midge::AsyncStd),
        #[cfg(feature = "smol")]
        RuntimeKind::Smol => run_model(crate::support::smol_runtime()),
        #[allow(unreachable_patterns)]
        other => panic!("runtime {other} not compiled in"),
    }
);

runtime_kind_test!(
    /// A hand-written sequence touching every kind of step, so the harness
    /// itself is known to work whatever the random cases draw.
    every_kind_of_step,
    |kind: RuntimeKind| {
        use Acks::*;
        use Exchange::*;
        use Retain::*;
        use Step::*;
        replay(
            kind,
            &[
                Connect { c: 0, clean: false, acks: All, will: None },
                Subscribe { c: 0, filters: vec![("a/#", 2), ("+/b", 1)] },
                Connect { c: 1, clean: true, acks: All, will: Some(Will { topic: "a/b", qos: 1, retain: true }) },
                Publish { c: 1, topic: "a/b", qos: 2, retain: Set, exchange: Dup },
                Publish { c: 1, topic: "b/b", qos: 0, retain: No, exchange: Plain },
                Disconnect { c: 0 },
                Publish { c: 1, topic: "a", qos: 1, retain: No, exchange: Plain },
                Publish { c: 1, topic: "a/a", qos: 0, retain: No, exchange: Plain },
                Lose { c: 1 },
                Connect { c: 0, clean: false, acks: Never, will: None },
                Connect { c: 2, clean: false, acks: PubrecOnly, will: None },
                Subscribe { c: 2, filters: vec![("#", 2)] },
                Publish { c: 0, topic: "a/a/b", qos: 2, retain: No, exchange: Hold },
                Crash,
                Connect { c: 0, clean: false, acks: All, will: None },
                Connect { c: 2, clean: false, acks: All, will: None },
                Unsubscribe { c: 2, filters: vec!["#"] },
                Connect { c: 2, clean: true, acks: All, will: None },
                Publish { c: 0, topic: "a/b", qos: 1, retain: Clear, exchange: Plain },
            ],
        );
    }
);

/// Failures the random test found, shrunk, kept to replay.
mod regressions {
    use super::*;

    /// Issue 10, finding 7, found by the random test (its shrinking is
    /// defeated by the race, so this is shrunk by hand): a QoS 2 PUBLISH by
    /// a persistent client, cut by a crash after the store committed one
    /// batch. The batch held the inbound packet id (`Op::Incoming`) but not
    /// the retained message appended just after it, so the publisher's DUP
    /// resend is taken for a duplicate: PUBREC and PUBCOMP, and the message
    /// is gone. Fails in about 6 of 10 attempts on 68c325b: 20 attempts.
    fn qos2_publish_cut_by_a_crash_is_not_lost(kind: RuntimeKind) {
        use Step::*;
        let steps = [
            Connect { c: 0, clean: false, acks: Acks::All, will: None },
            CrashInPublish { c: 0, topic: "a", qos: 2, retain: true, commits: 1 },
        ];
        for _ in 0..20 {
            replay(kind, &steps);
        }
    }

    #[cfg(feature = "async-std")]
    #[test]
    fn qos2_publish_cut_by_a_crash_is_not_lost_async_std() {
        qos2_publish_cut_by_a_crash_is_not_lost(RuntimeKind::AsyncStd);
    }

    #[cfg(feature = "smol")]
    #[test]
    fn qos2_publish_cut_by_a_crash_is_not_lost_smol() {
        qos2_publish_cut_by_a_crash_is_not_lost(RuntimeKind::Smol);
    }

    /// Found by the random test in session 10: a retained message's clear
    /// (empty payload) delivered at QoS 1 to a persistent session and
    /// acknowledged, then the same clear queued while it is offline, then
    /// a crash. The broker delivers the second after the restart; the test
    /// client took it for a redelivery of the first (equal topic, payload
    /// and QoS), and the run failed with a message missing. Such a message
    /// is now counted either way, whichever agrees with the model.
    fn an_equal_retained_clear_after_a_crash_is_not_taken_for_a_redelivery(kind: RuntimeKind) {
        use Step::*;
        let steps = [
            Connect { c: 2, clean: false, acks: Acks::PubrecOnly, will: None },
            Subscribe { c: 2, filters: vec![("+", 1), ("+/+/+", 1)] },
            Publish { c: 3, topic: "b/a/a", qos: 2, retain: Retain::Clear, exchange: Exchange::Hold },
            Lose { c: 2 },
            Publish { c: 3, topic: "b/a/a", qos: 1, retain: Retain::Clear, exchange: Exchange::Plain },
            CrashInPublish { c: 1, topic: "a/b", qos: 2, retain: false, commits: 0 },
        ];
        replay(kind, &steps);
    }

    #[cfg(feature = "async-std")]
    #[test]
    fn an_equal_retained_clear_after_a_crash_is_not_taken_for_a_redelivery_async_std() {
        an_equal_retained_clear_after_a_crash_is_not_taken_for_a_redelivery(RuntimeKind::AsyncStd);
    }

    #[cfg(feature = "smol")]
    #[test]
    fn an_equal_retained_clear_after_a_crash_is_not_taken_for_a_redelivery_smol() {
        an_equal_retained_clear_after_a_crash_is_not_taken_for_a_redelivery(RuntimeKind::Smol);
    }
}
