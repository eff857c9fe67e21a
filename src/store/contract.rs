//! One test suite every [`Store`] implementation must pass: what is applied
//! is what is loaded, including after reopening (for durable stores).

use super::*;
use crate::packet::{Properties, QoS, RetainHandling, SubscriptionOptions};
use bytes::Bytes;

fn message(topic: &str, payload: &'static [u8], qos: QoS) -> StoredMessage {
    StoredMessage::new(topic.into(), Bytes::from_static(payload), qos, false)
}

fn retained(topic: &str, payload: &'static [u8], qos: QoS) -> Message {
    Message::new(topic.into(), Bytes::from_static(payload), qos, true)
}

/// A message with every 5.0 field a store keeps.
fn message5() -> StoredMessage {
    let properties = Properties {
        payload_format_utf8: Some(true),
        message_expiry: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        ..Properties::default()
    };
    StoredMessage {
        shared: None,
        properties: Some(Arc::new(properties)),
        expires: Some(1_900_000_000_000),
        subscription_id: Some(268_435_455),
        retain: true,
        ..message("x/5", b"m5", QoS::AtLeastOnce)
    }
}

fn sub(qos: QoS) -> Subscription {
    Subscription::qos(qos)
}

fn sub5() -> Subscription {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::Never,
    };
    Subscription { options, id: Some(42) }
}

/// A sequence of ops touching every kind of state, and the snapshot the
/// reference semantics give for it.
pub fn scenario() -> (Vec<Op>, Snapshot) {
    let a: Arc<str> = "client-a".into();
    let b: Arc<str> = "client-b".into();
    let ops = vec![
        Op::Retain("r/1".into(), Some(retained("r/1", b"one", QoS::AtLeastOnce))),
        Op::Retain("r/2".into(), Some(retained("r/2", b"two", QoS::AtMostOnce))),
        Op::Retain("r/5".into(), Some(Message { topic: "r/5".into(), ..message5() })),
        Op::Retain("r/2".into(), None),
        Op::Session(a.clone(), Some(100)),
        Op::Subscription(a.clone(), "x/#".into(), Some(sub(QoS::ExactlyOnce))),
        Op::Subscription(a.clone(), "x/5".into(), Some(sub5())),
        Op::Owner(a.clone(), SessionOwner { listener: 2, username: Some("u".into()), expiry: Some(3600) }),
        Op::Subscription(a.clone(), "y".into(), Some(sub(QoS::AtLeastOnce))),
        Op::Subscription(a.clone(), "y".into(), None),
        Op::Message(a.clone(), 1, Some(message("x/1", b"m1", QoS::AtLeastOnce))),
        Op::Message(a.clone(), 2, Some(message("x/2", b"m2", QoS::ExactlyOnce))),
        Op::Message(a.clone(), 3, Some(message("x/3", b"m3", QoS::ExactlyOnce))),
        Op::Message(a.clone(), 4, Some(message5())),
        Op::Progress(a.clone(), 2, Progress::Released),
        Op::Progress(a.clone(), 3, Progress::Sent),
        Op::Message(a.clone(), 1, None),
        Op::Incoming(a.clone(), 7, true),
        Op::Incoming(a.clone(), 8, true),
        Op::Incoming(a.clone(), 7, false),
        Op::Session(b.clone(), Some(5)),
        Op::Subscription(b.clone(), "z".into(), Some(sub(QoS::AtMostOnce))),
        Op::Message(b.clone(), 9, Some(message("z", b"gone", QoS::AtLeastOnce))),
        Op::Session(b.clone(), None),
        Op::Message("nobody".into(), 1, Some(message("n", b"orphan", QoS::AtLeastOnce))),
        Op::Session(a.clone(), Some(200)),
        Op::Mark("k/1".into(), Some(bytes::Bytes::from_static(b"one"))),
        Op::Mark("k/2".into(), Some(bytes::Bytes::from_static(b"two"))),
        Op::Mark("k/1".into(), Some(bytes::Bytes::from_static(b"1"))),
        Op::Mark("k/2".into(), None),
    ];
    let mut expected = Snapshot::default();
    expected.retained.insert("r/1".into(), retained("r/1", b"one", QoS::AtLeastOnce));
    expected.retained.insert("r/5".into(), Message { topic: "r/5".into(), ..message5() });
    let owner = SessionOwner { listener: 2, username: Some("u".into()), expiry: Some(3600) };
    let mut session = StoredSession { last_seen: 200, owner: Some(owner), ..StoredSession::default() };
    session.subscriptions.insert("x/#".into(), sub(QoS::ExactlyOnce));
    session.subscriptions.insert("x/5".into(), sub5());
    session.messages.insert(2, (message("x/2", b"m2", QoS::ExactlyOnce), Progress::Released));
    session.messages.insert(3, (message("x/3", b"m3", QoS::ExactlyOnce), Progress::Sent));
    session.messages.insert(4, (message5(), Progress::Queued));
    session.incoming.push(8);
    expected.sessions.insert(a, session);
    expected.marks.insert("k/1".into(), bytes::Bytes::from_static(b"1"));
    (ops, expected)
}

/// Applies the scenario in two commits and checks the loaded snapshot.
pub fn check(store: &mut dyn Store) {
    let (ops, expected) = scenario();
    let (first, second) = ops.split_at(9);
    store.apply(first).unwrap();
    store.apply(second).unwrap();
    assert_eq!(store.load().unwrap(), expected);
}

#[test]
fn reference_semantics() {
    let (ops, expected) = scenario();
    let mut snapshot = Snapshot::default();
    snapshot.apply(&ops);
    assert_eq!(snapshot, expected);
}

#[test]
fn memory_store_follows_the_contract() {
    check(&mut MemoryStore::default());
}

#[test]
fn redb_store_follows_the_contract_and_survives_reopening() {
    let dir = temp_dir("contract");
    check(&mut RedbStore::open(&dir, false).unwrap());
    let reopened = RedbStore::open(&dir, false).unwrap();
    assert_eq!(reopened.load().unwrap(), scenario().1);
    drop(reopened);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn redb_store_is_locked_while_open() {
    let dir = temp_dir("locked");
    let _first = RedbStore::open(&dir, false).unwrap();
    assert!(matches!(RedbStore::open(&dir, false), Err(StoreError::Locked(_))));
}

#[test]
fn damaged_store_is_refused_then_moved_aside_with_recover() {
    let dir = temp_dir("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(self::redb::FILE_NAME), vec![0x5a; 8192]).unwrap();
    let refused = RedbStore::open(&dir, false).err().expect("refused");
    assert!(matches!(refused, StoreError::Corrupted(_)), "{refused}");
    assert!(refused.to_string().contains("--recover-store"));
    let store = RedbStore::open(&dir, true).unwrap();
    assert_eq!(store.load().unwrap(), Snapshot::default());
    let kept = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok);
    assert!(kept.map(|e| e.file_name().to_string_lossy().into_owned()).any(|n| n.contains("damaged")));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn writer_commits_in_batches_and_reports_failures() {
    struct Failing;
    impl Store for Failing {
        fn apply(&mut self, _: &[Op]) -> Result<(), StoreError> {
            Err(StoreError::Io("no space left on device".into()))
        }
        fn load(&self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
    }
    let ok = Persistence::start(Box::new(MemoryStore::default()));
    let ticket = ok.append(scenario().0);
    assert_eq!(futures::executor::block_on(ok.wait(ticket)), TicketStatus::Committed);
    assert_eq!(ok.append([]), Ticket::default());
    ok.stop();
    let failing = Persistence::start(Box::new(Failing));
    let ticket = failing.append(scenario().0);
    assert_eq!(futures::executor::block_on(failing.wait(ticket)), TicketStatus::Failed);
    failing.stop();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    std::env::temp_dir().join(format!("midge-store-{name}-{}-{nanos}", std::process::id()))
}
