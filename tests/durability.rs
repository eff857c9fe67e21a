//! Durable state across restarts, store failures and session expiry.

use crate::support::client::{Raw, Received, TIMEOUT};
use crate::support::packets::{self, DISCONNECT, PUBACK, PUBCOMP, PUBREC, PUBREL, ack};
use crate::support::{TempDir, TestBroker};
use midge::store::{MemoryStore, Op, Snapshot, Store, StoreError};
use midge::{Broker, RuntimeKind};
use std::time::Duration;

fn durable(data: &TempDir) -> impl FnOnce(&mut midge::Config) + '_ {
    |c| c.data_dir = Some(data.0.clone())
}

/// Receives one PUBLISH and completes its acknowledgement; returns (topic, qos, payload, retain).
fn receive_and_ack(c: &mut Raw) -> (String, u8, Vec<u8>, bool) {
    c.receive_and_ack(1).remove(0)
}

runtime_kind_test!(
    /// A graceful restart keeps persistent sessions (subscriptions, queued
    /// QoS 1 and 2 messages, Session Present 1) and retained messages.
    graceful_restart_keeps_sessions_and_retained,
    |kind: RuntimeKind| {
        let data = TempDir::new("restart");
        {
            let b = TestBroker::start(kind, durable(&data));
            let mut sub = b.persistent("durable-sub", false);
            sub.subscribe(1, &[("d/#", 2)]);
            sub.send(&DISCONNECT);
            sub.expect_closed();
            let mut publisher = b.client("pub");
            publisher.send(&packets::publish("d/1", b"one", 1, 1));
            publisher.expect(&ack(PUBACK, 1));
            publisher.send(&packets::publish("d/2", b"two", 2, 2));
            publisher.expect(&ack(PUBREC, 2));
            publisher.send(&ack(PUBREL, 2));
            publisher.expect(&ack(PUBCOMP, 2));
            publisher.send(&packets::publish_with("kept/r", b"retained", 1, Some(3), true, false));
            publisher.expect(&ack(PUBACK, 3));
        }
        let b = TestBroker::start(kind, durable(&data));
        let mut sub = b.persistent("durable-sub", true);
        assert_eq!(receive_and_ack(&mut sub), ("d/1".into(), 1, b"one".to_vec(), false));
        assert_eq!(receive_and_ack(&mut sub), ("d/2".into(), 2, b"two".to_vec(), false));
        sub.expect_nothing_queued();
        let mut late = b.client("late");
        late.send(&packets::subscribe(1, &[("kept/#", 1)]));
        late.expect(&packets::suback(1, &[1]));
        assert_eq!(receive_and_ack(&mut late), ("kept/r".into(), 1, b"retained".to_vec(), true));
    }
);

runtime_kind_test!(
    /// Unacknowledged deliveries survive a restart and are re-sent with DUP=1
    /// and their packet ids; a QoS 2 message past PUBREC resumes with PUBREL.
    restart_resends_inflight_with_dup,
    |kind: RuntimeKind| {
        let data = TempDir::new("inflight");
        let (first, second) = {
            let b = TestBroker::start(kind, durable(&data));
            let mut sub = b.persistent("inflight-sub", false);
            sub.subscribe(1, &[("i", 2)]);
            let mut publisher = b.client("pub");
            for pid in 1..=2u16 {
                publisher.send(&packets::publish("i", &[pid as u8], 2, pid));
                publisher.expect(&ack(PUBREC, pid));
                publisher.send(&ack(PUBREL, pid));
                publisher.expect(&ack(PUBCOMP, pid));
            }
            let first = sub.recv().publish();
            let second = sub.recv().publish();
            sub.send(&ack(PUBREC, first.1.unwrap()));
            sub.expect(&ack(PUBREL, first.1.unwrap()));
            sub.ping(); // the PUBREC is processed (and journaled) before shutdown
            (first, second)
        };
        let b = TestBroker::start(kind, durable(&data));
        let mut sub = b.persistent("inflight-sub", true);
        sub.expect(&ack(PUBREL, first.1.unwrap()));
        let again = sub.recv();
        assert!(again.dup());
        assert_eq!(again.publish(), second);
    }
);

runtime_kind_test!(
    /// MQTT-3.1.2-8: a broker shutdown closes connections without DISCONNECT,
    /// so their wills are published, and before the store closes: an offline
    /// persistent subscriber of the will topic gets the will (QoS 1) after a
    /// restart on the same data directory, and the will's retain flag left it
    /// retained there too.
    mqtt_3_1_2_8_will_published_on_broker_shutdown,
    |kind: RuntimeKind| {
        let data = TempDir::new("will-shutdown");
        let mut dying = {
            let b = TestBroker::start(kind, durable(&data));
            let mut sub = b.persistent("will-sub", false);
            sub.subscribe(1, &[("will/shutdown", 1)]);
            sub.send(&DISCONNECT);
            sub.expect_closed();
            let mut dying = b.raw();
            let will = Some(("will/shutdown", &b"broker went away"[..], 1, true));
            dying.send(&packets::Connect { client_id: "dying", will, ..packets::Connect::default() }.bytes());
            dying.expect(&packets::CONNACK_ACCEPTED);
            dying.ping();
            dying
        };
        dying.expect_closed();
        let b = TestBroker::start(kind, durable(&data));
        let mut sub = b.persistent("will-sub", true);
        let got = sub.recv();
        assert_eq!(got.publish().0, "will/shutdown");
        assert_eq!(got.publish().2, b"broker went away");
        assert_eq!(got.qos(), 1);
        sub.send(&ack(PUBACK, got.publish().1.unwrap()));
        sub.expect_nothing_queued();
        let mut late = b.client("late");
        late.send(&packets::subscribe(1, &[("will/#", 0)]));
        late.expect(&packets::suback(1, &[0]));
        let kept = late.recv();
        assert!(kept.retain(), "the will was stored as retained: {kept:?}");
        assert_eq!(kept.publish().2, b"broker went away");
    }
);

/// How many PUBLISHes the ordering tests pipeline.
const PIPELINED: u16 = 1000;

/// Asserts that `got` is `0..PIPELINED` in order, naming the first packet
/// out of place.
fn assert_in_order(what: &str, got: &[u16]) {
    if let Some(at) = got.iter().enumerate().position(|(i, &n)| usize::from(n) != i) {
        panic!("{what} out of order at #{at}: {:?}", &got[at.saturating_sub(2)..(at + 3).min(got.len())]);
    }
    assert_eq!(got.len(), usize::from(PIPELINED), "{what}: count");
}

/// Reads `PIPELINED` acknowledgements of type `header` and returns their
/// packet ids, shifted to count from 0.
fn read_acks(c: &mut Raw, header: u8) -> Vec<u16> {
    (0..PIPELINED)
        .map(|i| {
            let got = c.recv();
            assert_eq!((got.header, got.body.len()), (header, 2), "acknowledgement #{i}: {got:?}");
            u16::from_be_bytes([got.body[0], got.body[1]]) - 1
        })
        .collect()
}

/// A persistent subscriber on `topic` at `qos` on its own thread: it reads
/// `PIPELINED` deliveries, acknowledges each as it comes (PUBREC, then
/// PUBCOMP on PUBREL, for QoS 2), and returns the message numbers in arrival
/// order and, for QoS 2, whether the PUBRELs came in the order of its PUBRECs.
fn ordered_subscriber(mut sub: Raw, qos: u8) -> std::thread::JoinHandle<(Vec<u16>, bool)> {
    std::thread::spawn(move || {
        let (mut numbers, mut recs, mut rels) = (Vec::new(), Vec::new(), Vec::new());
        while numbers.len() < usize::from(PIPELINED) || rels.len() < recs.len() {
            let got = sub.recv();
            match got.header >> 4 {
                3 => {
                    assert_eq!(got.qos(), qos, "delivery #{} at the granted QoS: {got:?}", numbers.len());
                    let (_, pid, payload) = got.publish();
                    let pid = pid.unwrap();
                    numbers.push(u16::from_be_bytes([payload[0], payload[1]]));
                    match qos {
                        1 => sub.send(&ack(PUBACK, pid)),
                        _ => {
                            sub.send(&ack(PUBREC, pid));
                            recs.push(pid);
                        }
                    }
                }
                6 => {
                    let pid = u16::from_be_bytes([got.body[0], got.body[1]]);
                    sub.send(&ack(PUBCOMP, pid));
                    rels.push(pid);
                }
                _ => panic!("subscriber: unexpected {got:?}"),
            }
        }
        sub.expect_nothing_queued();
        (numbers, recs == rels)
    })
}

/// Pipelines `PIPELINED` PUBLISHes at `qos` (QoS 1 or 2) from a persistent
/// session, on a durable broker, to a persistent subscriber that is online
/// and reading, without waiting for any acknowledgement; asserts the order
/// of the acknowledgements (for QoS 2: PUBRECs, then, after as many PUBRELs
/// in one write, PUBCOMPs) and of the deliveries.
fn pipelined_order_through_the_store(kind: RuntimeKind, qos: u8) {
    let data = TempDir::new("order");
    let b = TestBroker::start(kind, durable(&data));
    let mut sub = b.persistent("ordered-sub", false);
    sub.subscribe(1, &[("order/q", qos)]);
    let subscriber = ordered_subscriber(sub, qos);
    let mut publisher = b.persistent("pipeliner", false);
    let publishes: Vec<u8> =
        (0..PIPELINED).flat_map(|n| packets::publish("order/q", &n.to_be_bytes(), qos, n + 1)).collect();
    publisher.send(&publishes);
    match qos {
        1 => assert_in_order("PUBACKs", &read_acks(&mut publisher, PUBACK)),
        _ => {
            assert_in_order("PUBRECs", &read_acks(&mut publisher, PUBREC));
            let pubrels: Vec<u8> = (1..=PIPELINED).flat_map(|pid| ack(PUBREL, pid)).collect();
            publisher.send(&pubrels);
            assert_in_order("PUBCOMPs", &read_acks(&mut publisher, PUBCOMP));
        }
    }
    publisher.expect_nothing_queued();
    let (numbers, rels_follow_recs) = subscriber.join().expect("the subscriber got every message");
    assert_in_order("deliveries", &numbers);
    assert!(rels_follow_recs, "MQTT-4.6.0-4: PUBRELs in the order of the PUBRECs");
}

runtime_kind_test!(
    /// MQTT-4.6.0-2 / -6 through the durable store: 1000 QoS 1 PUBLISHes
    /// sent in one write by a persistent session get their PUBACKs in order,
    /// and a persistent subscriber gets them in order, although every one is
    /// journaled and its PUBACK waits for the store's commit.
    mqtt_4_6_0_2_pipelined_qos1_order_through_the_store,
    |kind: RuntimeKind| pipelined_order_through_the_store(kind, 1)
);

runtime_kind_test!(
    /// MQTT-4.6.0-3 / -6 through the durable store: 1000 QoS 2 PUBLISHes
    /// sent in one write get their PUBRECs in order, 1000 PUBRELs in one
    /// write get their PUBCOMPs in order, and a persistent subscriber gets
    /// the messages in order (and, MQTT-4.6.0-4, the broker's PUBRELs in the
    /// order of its PUBRECs).
    mqtt_4_6_0_3_pipelined_qos2_order_through_the_store,
    |kind: RuntimeKind| pipelined_order_through_the_store(kind, 2)
);

/// A store that refuses every commit containing a queued message, as a full
/// disk would.
struct FullDisk(MemoryStore);

impl Store for FullDisk {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        match ops.iter().any(|op| matches!(op, Op::Message(_, _, Some(_)))) {
            true => Err(StoreError::Io("no space left on device".into())),
            false => self.0.apply(ops),
        }
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.0.load()
    }
}

runtime_kind_test!(
    /// When the store cannot commit, a QoS 1 PUBLISH that would be stored is
    /// not acknowledged: the publisher is disconnected (so it will re-send),
    /// and clients that need no storage carry on.
    failed_commit_is_not_acknowledged,
    |kind: RuntimeKind| {
        let broker = Broker::with_store(TestBroker::config(), Box::new(FullDisk(MemoryStore::default()))).unwrap();
        let b = TestBroker::with_broker(kind, broker);
        let mut sub = b.persistent("stored", false);
        sub.subscribe(1, &[("full", 1)]);
        let mut bystander = b.client("bystander");
        bystander.subscribe(1, &[("other", 0)]);
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish("full", b"x", 1, 1));
        publisher.expect_closed();
        let mut publisher = b.client("pub2");
        publisher.send(&packets::publish0("other", b"fine"));
        assert_eq!(bystander.recv().publish().2, b"fine");
    }
);

runtime_test!(
    /// `session_expiry`: a persistent session whose client stays away longer
    /// is removed (its client then gets Session Present 0).
    session_expiry_removes_abandoned_sessions,
    |c: &mut midge::Config| {
        c.session_expiry = Some(Duration::from_secs(1));
        c.sys_interval = Duration::from_millis(50);
    },
    |b: &TestBroker| {
        let mut gone = b.persistent("abandoned", false);
        gone.subscribe(1, &[("x", 1)]);
        gone.send(&DISCONNECT);
        gone.expect_closed();
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/broker/clients/total", 0)]);
        // The retained value may be "1" from before the watcher connected
        // (the abandoned session alone), so first see both counted, then
        // the abandoned one gone.
        let total = |want: &'static [u8]| move |p: &Received| (p.publish().2 == want).then_some(());
        watcher.recv_until(TIMEOUT, "$SYS/broker/clients/total = 2", total(b"2"));
        watcher.recv_until(TIMEOUT, "$SYS/broker/clients/total = 1 (the session expired)", total(b"1"));
        b.persistent("abandoned", false).ping();
    }
);

runtime_kind_test!(
    /// With `per_listener_settings`, a persistent session restored from the
    /// store keeps the listener (and user) its client last connected on:
    /// what arrives for it while it is away is checked against that
    /// listener's ACL, not the first listener's. Here the first listener's
    /// ACL would refuse the message and the second one has none.
    a_restored_session_keeps_its_listener_for_acl_checks,
    |kind: RuntimeKind| {
        use midge::config::{Listener, ListenerSecurity};
        let data = TempDir::new("owner");
        let acl = data.0.join("first.acl");
        std::fs::write(&acl, "topic read nothing/#\n").unwrap();
        let configure = |c: &mut midge::Config| {
            c.data_dir = Some(data.0.clone());
            c.listeners.push(Listener::tcp("127.0.0.1:0".parse().unwrap()));
            c.listener_security =
                vec![ListenerSecurity { acl_file: Some(acl.clone()), ..Default::default() }, ListenerSecurity::default()];
        };
        {
            let b = TestBroker::start(kind, configure);
            let mut sub = Raw::connect(b.addrs[1]);
            sub.send(&packets::connect("far", false, 60));
            sub.expect(&packets::CONNACK_ACCEPTED);
            sub.send(&packets::subscribe(1, &[("data/#", 1)]));
            sub.expect(&packets::suback(1, &[1]));
            sub.send(&DISCONNECT);
            sub.expect_closed();
        }
        let b = TestBroker::start(kind, configure);
        let mut publisher = Raw::connect(b.addrs[1]);
        publisher.send(&packets::connect("pub", true, 60));
        publisher.expect(&packets::CONNACK_ACCEPTED);
        publisher.send(&packets::publish("data/x", b"kept", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        assert_eq!(b.broker.session_pending("far"), Some(1), "queued under the second listener's (absent) ACL");
        let mut sub = Raw::connect(b.addrs[1]);
        sub.send(&packets::connect("far", false, 60));
        sub.expect(&packets::CONNACK_SESSION_PRESENT);
        assert_eq!(receive_and_ack(&mut sub), ("data/x".into(), 1, b"kept".to_vec(), false));
    }
);

/// A memory store whose commits wait while its gate is shut.
#[derive(Clone, Default)]
struct Gated {
    inner: std::sync::Arc<std::sync::Mutex<MemoryStore>>,
    gate: std::sync::Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct GateState {
    shut: bool,
    /// Commits that found the gate shut and wait.
    blocked: usize,
}

impl Gated {
    fn shut(&self, shut: bool) {
        self.gate.0.lock().unwrap().shut = shut;
        self.gate.1.notify_all();
    }

    /// Waits until a commit is blocked at the shut gate.
    fn wait_blocked(&self) {
        let (state, changed) = &*self.gate;
        let (_state, timeout) = changed.wait_timeout_while(state.lock().unwrap(), TIMEOUT, |s| s.blocked == 0).unwrap();
        assert!(!timeout.timed_out(), "no commit reached the store");
    }
}

impl Store for Gated {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let (state, changed) = &*self.gate;
        let mut s = state.lock().unwrap();
        if s.shut {
            s.blocked += 1;
            changed.notify_all();
            // Bounded: a failing test's broker must still shut down.
            s = changed.wait_timeout_while(s, TIMEOUT, |s| s.shut).unwrap().0;
            s.blocked -= 1;
        }
        drop(s);
        self.inner.lock().unwrap().apply(ops)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.lock().unwrap().load()
    }
}

runtime_kind_test!(
    /// A QoS 1 PUBACK waits for the stored copies' commit or for every copy's
    /// acknowledgement, whichever comes first: with the store's commits
    /// stalled, a message an online persistent subscriber has acknowledged
    /// is acknowledged to its publisher at once, and one queued for an
    /// offline persistent subscriber only after its commit.
    qos1_puback_waits_for_the_commit_or_every_copys_acknowledgement,
    |kind: RuntimeKind| {
        let store = Gated::default();
        let broker = Broker::with_store(TestBroker::config(), Box::new(store.clone())).unwrap();
        let b = TestBroker::with_broker(kind, broker);
        let mut online = b.persistent("early-online", false);
        online.subscribe(1, &[("early/online", 1)]);
        let mut offline = b.persistent("early-offline", false);
        offline.subscribe(1, &[("early/offline", 1)]);
        offline.send(&DISCONNECT);
        offline.expect_closed();
        let mut publisher = b.client("early-pub");

        store.shut(true);
        publisher.send(&packets::publish("early/online", b"a", 1, 1));
        let got = online.recv();
        assert_eq!(got.publish().0, "early/online");
        online.send(&ack(PUBACK, got.publish().1.unwrap()));
        // The copy's add is in a commit stalled at the gate: the PUBACK
        // went out on the subscriber's acknowledgement alone.
        publisher.expect(&ack(PUBACK, 1));
        store.wait_blocked();

        publisher.send(&packets::publish("early/offline", b"b", 1, 2));
        publisher.set_read_timeout(Duration::from_millis(300));
        match publisher.try_recv() {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            other => panic!("PUBACK of a message queued for an offline session before its commit: {other:?}"),
        }
        publisher.set_read_timeout(TIMEOUT);
        store.shut(false);
        publisher.expect(&ack(PUBACK, 2));
        let mut offline = b.persistent("early-offline", true);
        assert_eq!(offline.recv().publish().2, b"b");
    }
);

/// A memory store that records every op reaching it out of order for its
/// session: a copy's progress or removal before its add.
#[derive(Clone, Default)]
struct OrderChecked {
    state: std::sync::Arc<std::sync::Mutex<(Snapshot, Vec<String>)>>,
}

impl Store for OrderChecked {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut guard = self.state.lock().unwrap();
        let (state, wrong) = &mut *guard;
        for op in ops {
            let (id, seq) = match op {
                Op::Progress(id, seq, _) | Op::Message(id, seq, None) => (id, seq),
                _ => {
                    state.apply(std::slice::from_ref(op));
                    continue;
                }
            };
            if state.sessions.get(id).is_some_and(|s| !s.messages.contains_key(seq)) {
                wrong.push(format!("{op:?} before the add of {id} #{seq}"));
            }
            state.apply(std::slice::from_ref(op));
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.state.lock().unwrap().0.clone())
    }
}

runtime_kind_test!(
    /// A persistent session's ops reach the store in the order they
    /// happened: with every append committed on its own, twenty online
    /// persistent subscribers acknowledging at once never have a copy's
    /// progress or removal stored before the copy (a crash in between would
    /// restore a session with a hole in its queue).
    a_sessions_ops_reach_the_store_in_order,
    |kind: RuntimeKind| {
        let store = OrderChecked::default();
        let broker = Broker::with_store(TestBroker::config(), Box::new(store.clone())).unwrap();
        broker.store().unwrap().commit_each_append();
        let b = TestBroker::with_broker(kind, broker);
        let readers: Vec<_> = (0..20)
            .map(|i| {
                let mut c = b.persistent(&format!("order-{i}"), false);
                c.subscribe(1, &[("order/#", 1)]);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| {
                            let p = c.recv();
                            let (_, pid, payload) = p.publish();
                            c.send(&ack(PUBACK, pid.expect("QoS 1")));
                            payload
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut publisher = b.client("order-pub");
        for n in 0..200u16 {
            publisher.send(&packets::publish("order/x", &n.to_be_bytes(), 1, n + 1));
            publisher.expect(&ack(PUBACK, n + 1));
        }
        let sent: Vec<Vec<u8>> = (0..200u16).map(|n| n.to_be_bytes().to_vec()).collect();
        for r in readers {
            assert_eq!(r.join().unwrap(), sent, "every message, in order");
        }
        let wrong = store.state.lock().unwrap().1.clone();
        assert!(wrong.is_empty(), "{} op(s) out of order, first: {:?}", wrong.len(), wrong.first());
    }
);

runtime_kind_test!(
    /// MQTT-4.6.0-5/-6, with the store on: one publisher's pipelined QoS 0,
    /// 1 and 2 PUBLISHes, handled in one turn of its connection, reach a
    /// persistent subscriber and a clean one in the order they were
    /// published. The turn defers QoS 0 and 1 copies to its end (the
    /// persistent subscriber's QoS 1 copies stored then, their PUBACKs
    /// after that commit) and delivers a QoS 2 message, whose packet id
    /// commits with its stored copy, at once, after what it deferred.
    mqtt_4_6_0_6_deferred_and_stored_copies_keep_one_publishers_order,
    |kind: RuntimeKind| {
        let data = TempDir::new("turn-order");
        let b = TestBroker::start(kind, durable(&data));
        let mut stored = b.persistent("stored", false);
        stored.subscribe(1, &[("o/#", 1)]);
        let mut clean = b.client("clean");
        clean.subscribe(1, &[("o/#", 1)]);
        let mut publisher = b.client("pub");
        let mut turn = Vec::new();
        let qos = |i: u16| (i % 3) as u8;
        for i in 0u16..60 {
            let pid = (qos(i) > 0).then_some(i + 1);
            turn.extend(packets::publish_with("o/t", &i.to_be_bytes(), qos(i), pid, false, false));
        }
        publisher.send(&turn);
        for i in 0u16..60 {
            match qos(i) {
                1 => publisher.expect(&ack(PUBACK, i + 1)),
                2 => publisher.expect(&ack(PUBREC, i + 1)),
                _ => {}
            }
        }
        for i in (0u16..60).filter(|&i| qos(i) == 2) {
            publisher.send(&ack(PUBREL, i + 1));
            publisher.expect(&ack(PUBCOMP, i + 1));
        }
        for sub in [&mut stored, &mut clean] {
            for i in 0u16..60 {
                let got = sub.recv();
                let (_, pid, payload) = got.publish();
                assert_eq!(payload, i.to_be_bytes(), "message {i} out of order");
                if let Some(pid) = pid {
                    sub.send(&ack(PUBACK, pid));
                }
            }
            sub.expect_nothing_queued();
        }
    }
);
