//! Hostile clients and overload: no client can crash, bloat or wedge the
//! broker, and nothing acknowledged is lost while its subscriber reads.
//! (Backpressure itself is in `flow`.)

use crate::support::client::{Raw, TIMEOUT};
use crate::support::packets::{self, Connect, PUBACK, PUBCOMP, PUBREC, PUBREL, ack};
use crate::support::{TempDir, TestBroker};
use midge::store::{MemoryStore, Op, Snapshot, Store, StoreError};
use midge::{Broker, RuntimeKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A filter or topic of `levels` levels (`a/a/…`).
fn deep(levels: usize) -> String {
    vec!["a"; levels].join("/")
}

/// Polls `check` every 10 ms until it holds; panics naming `what` after `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

runtime_test!(
    /// A 30,000-level filter (60 KB, a legal MQTT string) killed the broker
    /// with a stack overflow (Mosquitto's CVE-2019-11779). Now a filter
    /// deeper than `max_topic_levels` (128) gets SUBACK 0x80, a PUBLISH or
    /// will topic that deep closes its connection, 128 levels still work,
    /// and a bystander is untouched.
    topics_deeper_than_max_topic_levels_are_refused,
    |b: &TestBroker| {
        let mut bystander = b.client("bystander");
        bystander.subscribe(1, &[(&deep(128), 1)]);
        let mut attacker = b.client("attacker");
        attacker.send(&packets::subscribe(1, &[(&deep(30_000), 0), ("ok/#", 0)]));
        attacker.expect(&packets::suback(1, &[0x80, 0]));
        attacker.send(&packets::publish0(&deep(30_000), b"x"));
        attacker.expect_closed();
        let mut will = b.raw();
        let topic = deep(129);
        will.send(&Connect { client_id: "w", will: Some((&topic, b"w", 0, false)), ..Connect::default() }.bytes());
        will.expect_closed();
        let mut publisher = b.client("publisher");
        publisher.send(&packets::publish(&deep(128), b"deep", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        assert_eq!(bystander.recv().publish().2, b"deep");
    }
);

runtime_test!(
    /// With the limit raised past 30,000 levels, the broker takes such a
    /// filter and topic: routing walks the levels in a loop, not by
    /// recursion on an executor thread's stack.
    thirty_thousand_levels_route_without_recursion,
    |c: &mut midge::Config| c.max_topic_levels = 40_000,
    |b: &TestBroker| {
        let topic = deep(30_000);
        let mut sub = b.client("sub");
        sub.subscribe(1, &[(&topic, 0), (&format!("{}/+/#", deep(29_998)), 0)]);
        let mut publisher = b.client("publisher");
        publisher.send(&packets::publish(&topic, b"deep", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        assert_eq!(sub.recv().publish().2, b"deep", "delivered once to the overlapping filters");
        sub.send(&packets::unsubscribe(2, &[&topic]));
        sub.expect(&[0xb0, 2, 0, 2]);
        sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// Retained messages for a SUBSCRIBE go through the queue limits: 400
    /// retained 1 KB messages and a SUBSCRIBE repeating `#` 8,000 times
    /// (identical filters replace each other, MQTT-3.8.4-3) queue the
    /// retained set once, not 8,000 times; more such SUBSCRIBEs from a
    /// client that does not read stop being read, and once it is stuck
    /// what does not fit is dropped: its session never holds more than its
    /// limits allow. A client that reads gets each retained message once
    /// per SUBSCRIBE, and one SUBACK code per filter.
    retained_messages_for_repeated_filters_are_bounded,
    |c: &mut midge::Config| c.slow_consumer_timeout = Duration::from_millis(300),
    |b: &TestBroker| {
        let mut publisher = b.client("publisher");
        for i in 0..400u16 {
            publisher.send(&packets::publish_with(&format!("r/{i}"), &[7; 1024], 0, None, true, false));
        }
        publisher.ping();
        let filters: Vec<(&str, u8)> = vec![("#", 0); 8000];
        let subscribe = packets::subscribe(1, &filters);
        let mut reader = b.client("reader");
        reader.send(&subscribe);
        reader.expect(&packets::suback(1, &[0; 8000]));
        let mut topics: Vec<String> = (0..400).map(|_| reader.recv().publish().0).collect();
        topics.sort();
        topics.dedup();
        assert_eq!(topics.len(), 400, "each retained message once");
        reader.expect_nothing_queued();
        let mut hostile = b.client("hostile");
        for _ in 0..20 {
            hostile.send(&subscribe);
        }
        let pending = || b.broker.session_pending("hostile").unwrap_or(0);
        wait_until(TIMEOUT, "the hostile client's retained messages queued", || pending() >= 400);
        // Stuck after 300 ms: later SUBSCRIBEs are read again, and what does not fit drops.
        let dropped = || b.broker.stats().queue_drops();
        wait_until(TIMEOUT, "retained messages dropped for the stuck client", || dropped() > 0);
        let limit = midge::config::DEFAULT_MAX_QUEUED + 400 + midge::config::DEFAULT_MAX_INFLIGHT;
        assert!(pending() <= limit, "{} queued for a client that reads nothing (limit {limit})", pending());
    }
);

runtime_test!(
    /// MQTT-3.1.2-24 and MQTT-3.1.2-8 for a client that stops reading: its
    /// socket is full and a write to it cannot finish, yet its keepalive
    /// still closes it after 1.5 × 2 s and its will is published. (The
    /// write used to run outside the event loop and wedge the connection.)
    mqtt_3_1_2_24_a_client_that_stops_reading_is_still_closed_by_its_keepalive,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("will/#", 0)]);
        let mut stuck = b.raw();
        let will = Connect { client_id: "stuck", keep_alive: 2, will: Some(("will/stuck", b"gone", 0, false)), ..Connect::default() };
        stuck.send(&will.bytes());
        stuck.expect(&packets::CONNACK_ACCEPTED);
        // Timed from before its last packet: the broker's keepalive clock
        // restarts when it reads SUBSCRIBE, after this.
        let silent_since = Instant::now();
        stuck.subscribe(1, &[("flood", 0)]);
        let mut publisher = b.client("publisher");
        for _ in 0..100 {
            publisher.send(&packets::publish0("flood", &[0; 64 * 1024]));
        }
        publisher.ping();
        let got = watcher.recv_until(Duration::from_secs(6), "the stuck client's will", |p| Some(p.publish()));
        let after = silent_since.elapsed();
        assert_eq!((got.0.as_str(), got.2.as_slice()), ("will/stuck", &b"gone"[..]));
        assert!(after >= Duration::from_secs(3), "closed after {after:?}, before 1.5 × keepalive");
        // Generous: on a loaded 2-core CI machine the will takes a while.
        assert!(after < Duration::from_millis(5500), "closed after {after:?}, long after 1.5 × keepalive");
        drop(stuck);
    }
);

runtime_kind_test!(
    /// A takeover (MQTT-3.1.4-2) and a shutdown reach a connection whose
    /// client stopped reading: the new connection's takeover publishes the
    /// old one's will at once, and the broker shuts down within its grace
    /// period with such a client connected.
    takeover_and_shutdown_reach_a_client_that_stopped_reading,
    |kind: RuntimeKind| {
        let b = TestBroker::start(kind, |_| {});
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("will/#", 0)]);
        let flood = |b: &TestBroker, id: &str| {
            let mut stuck = b.raw();
            let topic = format!("will/{id}");
            stuck.send(&Connect { client_id: id, will: Some((&topic, b"gone", 0, false)), ..Connect::default() }.bytes());
            stuck.expect(&packets::CONNACK_ACCEPTED);
            stuck.subscribe(1, &[(&format!("flood/{id}"), 0)]);
            let mut publisher = b.client("publisher");
            for _ in 0..100 {
                publisher.send(&packets::publish0(&format!("flood/{id}"), &[0; 64 * 1024]));
            }
            publisher.ping();
            stuck
        };
        let _first = flood(&b, "taken");
        let start = Instant::now();
        let _new = b.client("taken");
        let got = watcher.recv_until(TIMEOUT, "the taken-over client's will", |p| Some(p.publish().0));
        assert_eq!(got, "will/taken");
        assert!(start.elapsed() < Duration::from_secs(2), "takeover took {:?}", start.elapsed());
        let _second = flood(&b, "at-shutdown");
        let start = Instant::now();
        drop(b);
        assert!(start.elapsed() < midge::server::SHUTDOWN_GRACE, "shutdown took {:?}", start.elapsed());
    }
);

runtime_kind_test!(
    /// A shutdown wakes idle connections (no listener of their own waits
    /// for it: the broker wakes each attached one) and closes them; it does
    /// not wait out its grace period for them.
    shutdown_closes_idle_connections_at_once,
    |kind: RuntimeKind| {
        let b = TestBroker::start(kind, |_| {});
        let mut idle: Vec<_> = (0..3).map(|i| b.client(&format!("idle-{i}"))).collect();
        let persistent = b.persistent("idle-persistent", false);
        idle.push(persistent);
        let start = Instant::now();
        drop(b);
        assert!(start.elapsed() < midge::server::SHUTDOWN_GRACE, "shutdown took {:?}", start.elapsed());
        for c in &mut idle {
            c.expect_closed();
        }
    }
);

runtime_test!(
    /// A connection whose waits come a second or more apart is parked
    /// between them, its loop's state dropped (`park` in connection.rs):
    /// parked, it is woken by its bell and delivers, by a packet and
    /// answers, and by a takeover and closes. (The sleeps are the idle time
    /// under test, not a wait for an event.)
    an_idle_connection_parked_after_a_long_wait_still_delivers_answers_and_is_taken_over,
    |b: &TestBroker| {
        let mut sub = b.client("parked-sub");
        // At QoS 0: no PUBACK of the subscriber's wakes it before the next round.
        sub.subscribe(1, &[("park/#", 0)]);
        let mut publisher = b.client("parked-pub");
        for round in 0..3u8 {
            // Longer than PARK_AFTER: the first round's wait ends long and
            // the connection parks after its delivery; later rounds' bells
            // wake it from there.
            std::thread::sleep(Duration::from_millis(1100));
            publisher.send(&packets::publish("park/x", &[round], 1, u16::from(round) + 1));
            publisher.expect(&ack(PUBACK, u16::from(round) + 1));
            assert_eq!(sub.receive_and_ack(1), vec![("park/x".to_owned(), 0, vec![round], false)]);
        }
        std::thread::sleep(Duration::from_millis(1100));
        sub.ping();
        std::thread::sleep(Duration::from_millis(1100));
        let _again = b.client("parked-sub");
        sub.expect_closed();
    }
);

runtime_test!(
    /// A will is published under the same rules as a PUBLISH: a will on a
    /// `$SYS` topic is not published (nor retained), so no client can plant
    /// fake broker statistics.
    a_will_on_a_sys_topic_is_not_published,
    |c: &mut midge::Config| c.sys_interval = Duration::ZERO,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/#", 0), ("will/#", 0)]);
        let mut planter = b.raw();
        let will = Connect { client_id: "planter", will: Some(("$SYS/broker/clients/total", b"0", 0, true)), ..Connect::default() };
        planter.send(&will.bytes());
        planter.expect(&packets::CONNACK_ACCEPTED);
        drop(planter);
        wait_until(TIMEOUT, "the planter's session gone", || b.broker.session_pending("planter").is_none());
        watcher.expect_nothing_queued();
        assert_eq!(b.broker.retained_count(), 0, "nothing retained on $SYS");
    }
);

runtime_test!(
    /// MQTT-3.1.4-2: once taken over, a client that pipelines without pause
    /// is closed all the same (the loop used to skip the kick while packets
    /// kept arriving, and a QoS 0 PUBLISH never checks the session).
    mqtt_3_1_4_2_a_pipelining_client_is_closed_on_takeover,
    |b: &TestBroker| {
        let mut old = b.client("twin");
        let mut writer = old.try_clone();
        let flooding = std::thread::spawn(move || {
            let chunk: Vec<u8> = (0..200).flat_map(|_| packets::publish0("pipe", b"p")).collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if writer.try_send(&chunk).is_err() {
                    return true;
                }
            }
            false
        });
        std::thread::sleep(Duration::from_millis(100));
        let _new = b.client("twin");
        assert!(flooding.join().unwrap(), "the old connection was never closed");
        old.expect_closed_or_reset();
    }
);

/// A store whose commits can stall (`stall`) or fail (once `budget`
/// commits are used up); its contents outlive a broker, like a disk.
#[derive(Clone, Default)]
struct TestStore {
    inner: Arc<Mutex<MemoryStore>>,
    /// Commits that may still succeed; `usize::MAX`: all.
    budget: Arc<AtomicUsize>,
    stall: Arc<(Mutex<bool>, Condvar)>,
    /// Commits waiting in a stall now.
    stalled: Arc<AtomicUsize>,
}

impl TestStore {
    fn new() -> TestStore {
        let store = TestStore::default();
        store.budget.store(usize::MAX, Ordering::SeqCst);
        store
    }

    fn set_stalled(&self, stalled: bool) {
        *self.stall.0.lock().unwrap() = stalled;
        self.stall.1.notify_all();
    }
}

impl Store for TestStore {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut stalled = self.stall.0.lock().unwrap();
        if *stalled {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            while *stalled {
                stalled = self.stall.1.wait(stalled).unwrap();
            }
            self.stalled.fetch_sub(1, Ordering::SeqCst);
        }
        drop(stalled);
        let left = self.budget.load(Ordering::SeqCst);
        if left == 0 {
            return Err(StoreError::Io("test store: crashed".into()));
        }
        if left != usize::MAX {
            self.budget.store(left - 1, Ordering::SeqCst);
        }
        self.inner.lock().unwrap().apply(ops)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.lock().unwrap().load()
    }
}

runtime_kind_test!(
    /// One PUBLISH's store changes commit together: the inbound QoS 2 packet
    /// id and the copies routed to persistent sessions. The store is made to
    /// commit every append on its own (as if the writer took the batch
    /// between any two) and to crash after one more commit, right when a
    /// QoS 2 PUBLISH arrives. After a restart, the publisher's re-sent
    /// PUBLISH must reach the subscriber exactly once; with the id stored
    /// without its copies, the re-send was taken for a duplicate and lost.
    qos2_packet_id_and_copies_commit_together,
    |kind: RuntimeKind| {
        let store = TestStore::new();
        let config = TestBroker::config();
        {
            let broker = Broker::with_store(config.clone(), Box::new(store.clone())).unwrap();
            broker.store().unwrap().commit_each_append();
            let b = TestBroker::with_broker(kind, broker);
            let mut sub = b.persistent("q2-sub", false);
            sub.subscribe(1, &[("q2", 2)]);
            sub.send(&packets::DISCONNECT);
            sub.expect_closed();
            let mut publisher = b.persistent("q2-pub", false);
            store.budget.store(1, Ordering::SeqCst);
            publisher.send(&packets::publish("q2", b"once", 2, 1));
            // PUBREC if the commit held everything; a close if part failed.
            let _ = publisher.try_recv();
        }
        store.budget.store(usize::MAX, Ordering::SeqCst);
        let b = TestBroker::with_broker(kind, Broker::with_store(config, Box::new(store.clone())).unwrap());
        let mut publisher = b.persistent("q2-pub", true);
        publisher.send(&packets::publish_with("q2", b"once", 2, Some(1), false, true));
        publisher.expect(&ack(PUBREC, 1));
        publisher.send(&ack(PUBREL, 1));
        publisher.expect(&ack(PUBCOMP, 1));
        let mut sub = b.persistent("q2-sub", true);
        let got = sub.recv();
        assert_eq!((got.publish().0.as_str(), got.publish().2.as_slice(), got.qos()), ("q2", &b"once"[..], 2));
        let pid = got.publish().1.unwrap();
        sub.send(&ack(PUBREC, pid));
        sub.expect(&ack(PUBREL, pid));
        sub.send(&ack(PUBCOMP, pid));
        sub.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// While the store stalls (an fsync that does not return), a client
    /// pipelining QoS 1 publishes to a persistent subscriber is no longer
    /// read once about a thousand of its acknowledgements wait for the
    /// store: what waits is bounded. When the store recovers, every PUBACK
    /// arrives, in order.
    a_stalled_store_stops_reading_from_its_publishers,
    |kind: RuntimeKind| {
        let store = TestStore::new();
        let config = midge::Config { max_queued: 100_000, ..TestBroker::config() };
        let broker = Broker::with_store(config, Box::new(store.clone())).unwrap();
        let b = TestBroker::with_broker(kind, broker);
        let mut sub = b.persistent("durable-sub", false);
        sub.subscribe(1, &[("s", 1)]);
        sub.send(&packets::DISCONNECT);
        sub.expect_closed();
        let mut publisher = b.client("publisher");
        store.set_stalled(true);
        // Unstalled however the test ends: the broker's shutdown waits for the store.
        struct Unstall(TestStore);
        impl Drop for Unstall {
            fn drop(&mut self) {
                self.0.set_stalled(false);
            }
        }
        let _unstall = Unstall(store.clone());
        // The first publish's commit is the one that stalls; the rest wait behind it.
        publisher.send(&packets::publish("s", b"x", 1, 1));
        wait_until(TIMEOUT, "the store stalled in a commit", || store.stalled.load(Ordering::SeqCst) == 1);
        let bytes: Vec<u8> = (2..=5000u16).flat_map(|i| packets::publish("s", b"x", 1, i)).collect();
        publisher.send(&bytes);
        let pending = || b.broker.store().unwrap().pending_ops();
        wait_until(TIMEOUT, "publishes waiting for the store", || pending() >= 900);
        std::thread::sleep(Duration::from_millis(300));
        assert!(pending() < 1500, "{} store ops pending while the store stalls", pending());
        store.set_stalled(false);
        for i in 1..=5000u16 {
            publisher.expect(&ack(PUBACK, i));
        }
    }
);

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn small_payloads_pin_no_large_buffers(runtime: &str) {
    let data = TempDir::new("pinning");
    let (midge, addr) = crate::binary::start(runtime, &data);
    let mut sub = Raw::connect(addr);
    sub.send(&packets::connect("offline", false, 60));
    sub.expect(&packets::CONNACK_ACCEPTED);
    sub.subscribe(1, &[("tiny", 1)]);
    sub.send(&packets::DISCONNECT);
    sub.expect_closed();
    let mut publisher = Raw::connect(addr);
    publisher.send(&packets::connect("publisher", true, 60));
    publisher.expect(&packets::CONNACK_ACCEPTED);
    let before = rss(midge.id());
    // Each tiny message arrives right behind a 512 KiB one, in the read
    // buffer that grew for it: queued as a slice, it would pin the buffer.
    for i in 1..=300u16 {
        publisher.send(&packets::publish0("big", &vec![1; 512 * 1024]));
        publisher.send(&packets::publish("tiny", b"t", 1, i));
        publisher.expect(&ack(PUBACK, i));
    }
    let grown = rss(midge.id()).saturating_sub(before);
    assert!(grown < 48 << 20, "RSS grew by {} MiB for 300 queued one-byte messages", grown >> 20);
    drop(publisher);
    let mut sub = Raw::connect(addr);
    sub.send(&packets::connect("offline", false, 60));
    sub.expect(&packets::CONNACK_SESSION_PRESENT);
    assert_eq!(sub.recv().publish().2, b"t");
    drop(midge);
}

#[cfg(feature = "async-std")]
#[test]
fn small_payloads_pin_no_large_buffers_async_std() {
    small_payloads_pin_no_large_buffers("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn small_payloads_pin_no_large_buffers_smol() {
    small_payloads_pin_no_large_buffers("smol");
}

/// MQTT-3.1.4-2, in process: after a takeover with a clean session, what
/// the old connection still does with its session (a SUBSCRIBE or an
/// UNSUBSCRIBE left in its batch) touches nothing: it neither replaces the
/// new connection's subscription with a ghost of the discarded session nor
/// removes it.
#[test]
fn mqtt_3_1_4_2_a_taken_over_connection_cannot_touch_the_new_session() {
    use midge::packet::QoS;
    use midge::session::Message;
    use midge::signal::Kick;
    let broker = Broker::in_memory(TestBroker::config()).unwrap();
    let id: Arc<str> = "twin".into();
    let old = broker.attach(&id, None, true, 1, Arc::new(Kick::new()));
    let new = broker.attach(&id, None, true, 2, Arc::new(Kick::new()));
    let filters = [("t".to_string(), midge::packet::Subscription::qos(QoS::AtLeastOnce))];
    assert!(broker.subscribe(&id, &new.session, 2, &filters, &mut Vec::new()).is_some());
    assert!(broker.subscribe(&id, &old.session, 1, &filters, &mut Vec::new()).is_none(), "old connection refused");
    assert!(broker.unsubscribe(&id, &old.session, 1, &["t".to_string()]).is_none(), "old connection refused");
    let message = Message::new("t".into(), "m".into(), QoS::AtLeastOnce, false);
    broker.publish(message, false);
    assert_eq!(new.session.lock().session.pending(), 1, "the new session still has its subscription");
    assert_eq!(old.session.lock().session.pending(), 0, "no ghost subscription of the discarded session");
    assert_eq!(broker.subscription_count(), 1);
}
