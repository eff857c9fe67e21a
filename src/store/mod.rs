//! Durable state: the [`Store`] trait, its in-memory and redb
//! implementations, and the writer thread that group-commits the broker's
//! changes off the executor threads.
//!
//! The broker records every change to persistent sessions and retained
//! messages as an [`Op`]; [`Persistence::append`] hands back a [`Ticket`]
//! that becomes committed once a commit containing the ops has returned.
//! Everything appended while one commit runs goes into the next one.

mod memory;
mod redb;
mod wal;
mod writer;

pub use self::redb::{FILE_NAME, RedbStore};
#[cfg(feature = "cluster")]
pub(crate) use self::redb::{decode_message, decode_options, decode_owner, encode_message_into, encode_owner};
pub use memory::MemoryStore;
pub use wal::{SEGMENT_BYTES, SEGMENT_BYTES_ENV, WalStore};
pub use writer::{Persistence, Ticket, TicketStatus};

use crate::packet::{Message, Pid, Subscription};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::{fmt, io};

/// Delivery progress of a stored outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Queued, not yet sent.
    Queued = 0,
    /// Sent at least once: re-sent with DUP=1.
    Sent = 1,
    /// QoS 2: PUBREC received, PUBREL sent.
    Released = 2,
}

impl Progress {
    pub(crate) fn from_u8(value: u8) -> Progress {
        match value {
            1 => Progress::Sent,
            2 => Progress::Released,
            _ => Progress::Queued,
        }
    }
}

/// A message stored for a persistent session (QoS 1 or 2; QoS 0 is never
/// stored), with its 5.0 properties, expiry and subscription identifiers.
pub type StoredMessage = Message;

/// Who a persistent session belongs to beyond its client id: what its
/// deliveries are checked against while its client is away (the ACL of the
/// listener it came in on, for its user name), and its 5.0 expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOwner {
    /// The listener its client last connected on.
    pub listener: usize,
    /// The user name its client last authenticated as.
    pub username: Option<Arc<str>>,
    /// Session Expiry Interval in seconds (`None`: no limit of its own).
    pub expiry: Option<u32>,
}

/// One change to durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Store (`Some`) or clear (`None`) the retained message of a topic.
    Retain(Arc<str>, Option<Message>),
    /// Create or refresh a persistent session (`Some(last seen, seconds
    /// since the epoch)`), or delete it with everything it holds (`None`).
    Session(Arc<str>, Option<u64>),
    /// Add (`Some`) or remove (`None`) a subscription.
    Subscription(Arc<str>, String, Option<Subscription>),
    /// Record who the session belongs to (after [`Op::Session`]).
    Owner(Arc<str>, SessionOwner),
    /// Add (`Some`) or remove (`None`) a message by its sequence number.
    Message(Arc<str>, u64, Option<StoredMessage>),
    /// Record how far a stored message got.
    Progress(Arc<str>, u64, Progress),
    /// An inbound QoS 2 packet id received (`true`) or released (`false`).
    Incoming(Arc<str>, Pid, bool),
    /// Set (`Some`) or clear (`None`) a value of midge's own under a key:
    /// a cluster node's last applied entry of its Redis stream, committed
    /// with the copies that entry made (format 4).
    Mark(Arc<str>, Option<Bytes>),
}

/// A persistent session as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredSession {
    /// Last seen, seconds since the epoch.
    pub last_seen: u64,
    /// Filter → options and identifier.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Listener, user name and expiry (absent in stores before format 2).
    pub owner: Option<SessionOwner>,
    /// Sequence number → message and progress, in order.
    pub messages: BTreeMap<u64, (StoredMessage, Progress)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub incoming: Vec<Pid>,
}

/// Everything a store holds, read once at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Retained messages by topic.
    pub retained: BTreeMap<Arc<str>, Message>,
    /// Persistent sessions by client id.
    pub sessions: BTreeMap<Arc<str>, StoredSession>,
    /// Values set by [`Op::Mark`].
    pub marks: BTreeMap<Arc<str>, Bytes>,
}

impl Snapshot {
    /// Applies ops in order: the reference semantics every store follows.
    pub fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            self.apply_one(op);
        }
    }

    fn apply_one(&mut self, op: &Op) {
        match op {
            Op::Retain(topic, Some(m)) => drop(self.retained.insert(topic.clone(), m.clone())),
            Op::Retain(topic, None) => drop(self.retained.remove(topic)),
            Op::Session(id, Some(seen)) => self.sessions.entry(id.clone()).or_default().last_seen = *seen,
            Op::Session(id, None) => drop(self.sessions.remove(id)),
            Op::Subscription(id, filter, subscription) => {
                let Some(s) = self.sessions.get_mut(id) else { return };
                match subscription {
                    Some(sub) => drop(s.subscriptions.insert(filter.clone(), *sub)),
                    None => drop(s.subscriptions.remove(filter)),
                }
            }
            Op::Owner(id, owner) => {
                if let Some(s) = self.sessions.get_mut(id) {
                    s.owner = Some(owner.clone());
                }
            }
            Op::Message(id, seq, message) => {
                let Some(s) = self.sessions.get_mut(id) else { return };
                match message {
                    Some(m) => drop(s.messages.insert(*seq, (m.clone(), Progress::Queued))),
                    None => drop(s.messages.remove(seq)),
                }
            }
            Op::Progress(id, seq, progress) => {
                let entry = self.sessions.get_mut(id).and_then(|s| s.messages.get_mut(seq));
                if let Some((_, p)) = entry {
                    *p = *progress;
                }
            }
            Op::Incoming(id, pid, received) => {
                let Some(s) = self.sessions.get_mut(id) else { return };
                s.incoming.retain(|p| p != pid);
                if *received {
                    s.incoming.push(*pid);
                }
            }
            Op::Mark(key, Some(value)) => drop(self.marks.insert(key.clone(), value.clone())),
            Op::Mark(key, None) => drop(self.marks.remove(key)),
        }
    }
}

/// Drops from one commit's ops what a later op in the same commit undoes,
/// so that it is never written: a message queued and acknowledged within
/// one group commit (its add, its progress and its removal), a progress
/// overwritten by a later one, a retained message replaced or cleared, a
/// mark set again.
/// Applying the folded ops gives the state the original ones give, for
/// ops as the broker appends them: a message's sequence number is new when
/// it is added (never already stored for its session).
pub fn fold(ops: &mut Vec<Op>) {
    Folder::default().fold(ops);
}

/// [`fold`] with its tables kept from one commit to the next (the writer
/// thread's, so that a batch allocates nothing new).
#[derive(Default)]
pub struct Folder {
    keep: Vec<bool>,
    added: HashMap<FoldKey, usize, BuildKey>,
    progressed: HashMap<FoldKey, usize, BuildKey>,
}

/// A session id's address (only compared) and a sequence number.
type FoldKey = (usize, u64);

impl Folder {
    /// See [`fold`].
    pub fn fold(&mut self, ops: &mut Vec<Op>) {
        if ops.len() < 2 {
            return;
        }
        self.keep.clear();
        self.keep.resize(ops.len(), true);
        // Nothing folds across a session's deletion: within a stretch
        // without one, a client's ops come from one session, whose id is
        // one allocation (kept alive by the ops themselves), so the key is
        // that pointer and the sequence number, not a string a client
        // chose. A session created or refreshed (every reconnect of a
        // persistent client) ends no stretch: its earlier ops in the
        // stretch, if any, were to no session and are no-ops either way.
        let mut start = 0;
        for end in 0..=ops.len() {
            if end == ops.len() || matches!(ops[end], Op::Session(_, None)) {
                self.fold_stretch(&ops[start..end], start);
                start = end + 1;
            }
        }
        let keep = &self.keep;
        let mut i = 0;
        ops.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    fn fold_stretch(&mut self, ops: &[Op], offset: usize) {
        let key = |id: &Arc<str>, seq: u64| -> FoldKey { (Arc::as_ptr(id).cast::<u8>() as usize, seq) };
        let (keep, added, progressed) = (&mut self.keep, &mut self.added, &mut self.progressed);
        added.clear();
        progressed.clear();
        let (mut retained, mut marks): (HashMap<&str, usize>, HashMap<&str, usize>) = Default::default();
        for (i, op) in ops.iter().enumerate().map(|(i, op)| (i + offset, op)) {
            match op {
                Op::Retain(topic, _) => {
                    if let Some(before) = retained.insert(topic, i) {
                        keep[before] = false;
                    }
                }
                Op::Mark(key, _) => {
                    if let Some(before) = marks.insert(key, i) {
                        keep[before] = false;
                    }
                }
                Op::Message(id, seq, message) => {
                    let key = key(id, *seq);
                    if let Some(before) = progressed.remove(&key) {
                        keep[before] = false;
                    }
                    match message {
                        Some(_) => drop(added.insert(key, i)),
                        None => {
                            if let Some(add) = added.remove(&key) {
                                keep[add] = false;
                                keep[i] = false;
                            }
                        }
                    }
                }
                Op::Progress(id, seq, _) => {
                    if let Some(before) = progressed.insert(key(id, *seq), i) {
                        keep[before] = false;
                    }
                }
                Op::Session(..) | Op::Subscription(..) | Op::Owner(..) | Op::Incoming(..) => {}
            }
        }
    }
}

/// Hashes keys of pointers and sequence numbers: none is chosen by a
/// client, so a multiply-rotate hash is enough.
#[derive(Default, Clone, Copy)]
pub(crate) struct BuildKey;

impl std::hash::BuildHasher for BuildKey {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// A place to keep durable state. Implementations are synchronous and run
/// on the writer thread; `apply` returns once the ops are durable.
pub trait Store: Send + 'static {
    /// Applies `ops`, in order, as one atomic and durable commit.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Reads everything stored.
    fn load(&self) -> Result<Snapshot, StoreError>;
}

/// Why the store could not be opened, read or written.
#[derive(Debug)]
pub enum StoreError {
    /// Another process (another midge) has the store open.
    Locked(String),
    /// The store's files are damaged.
    Corrupted(String),
    /// Reading or writing failed (permissions, full disk, ...).
    Io(String),
    /// The store was written by a newer midge, in a format this one does
    /// not know (never moved aside: the newer midge can still read it).
    NewerFormat {
        /// The store file.
        path: String,
        /// The format the file says it is in.
        found: u64,
        /// The newest format this build reads.
        known: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked(path) => write!(f, "store {path} is in use by another running midge"),
            StoreError::Corrupted(why) => write!(
                f,
                "store is damaged ({why}); start with --recover-store to move the damaged files aside (they are kept) and start empty"
            ),
            StoreError::Io(why) => write!(f, "store i/o error: {why}"),
            StoreError::NewerFormat { path, found, known } => write!(
                f,
                "store {path} is in format {found}, written by a newer midge (this one reads formats up to {known}); run that midge, or move the store aside to start empty"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

#[cfg(test)]
pub(crate) mod contract;

/// A xorshift generator for randomised tests (the store's, and the
/// cluster's model-based test): `next(n)` is in `0..n`.
#[doc(hidden)]
pub fn random(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed | 1;
    move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;
    use crate::packet::QoS;
    use bytes::Bytes;

    fn message(topic: &str) -> Message {
        Message::new(topic.into(), Bytes::from_static(b"p"), QoS::AtLeastOnce, false)
    }

    /// Random ops as the broker appends them (a message's sequence number
    /// is new for its session), over a store already holding some state.
    fn ops(seed: u64, len: usize) -> (Snapshot, Vec<Op>) {
        let mut next = random(seed);
        let ids: Vec<Arc<str>> = (0..3).map(|i| format!("c{i}").into()).collect();
        let mut before = Snapshot::default();
        let mut last_seq = [0u64; 3];
        for (i, id) in ids.iter().enumerate() {
            before.apply(&[Op::Session(id.clone(), Some(1)), Op::Message(id.clone(), 1, Some(message("old")))]);
            last_seq[i] = 1;
        }
        before.apply(&[Op::Retain("r".into(), Some(message("r")))]);
        let mut out = Vec::new();
        for _ in 0..len {
            let c = next(3) as usize;
            let id = ids[c].clone();
            let seq = match last_seq[c] {
                0 => 1,
                last => 1 + next(last + 1).min(last - 1),
            };
            out.push(match next(10) {
                0 => {
                    last_seq[c] = 0;
                    Op::Session(id, None)
                }
                1 => Op::Session(id, Some(next(100))),
                2 | 3 => {
                    last_seq[c] += 1;
                    Op::Message(id, last_seq[c], Some(message("t")))
                }
                4 | 5 => Op::Message(id, seq, None),
                6 | 7 => Op::Progress(id, seq, if next(2) == 0 { Progress::Sent } else { Progress::Released }),
                8 => Op::Retain("r".into(), (next(2) == 0).then(|| message("r"))),
                9 if next(2) == 0 => Op::Mark("m".into(), (next(3) > 0).then(|| Bytes::from(next(100).to_string()))),
                _ => Op::Incoming(id, next(4) as u16 + 1, next(2) == 0),
            });
        }
        (before, out)
    }

    #[test]
    fn folded_ops_give_the_same_state() {
        for seed in 1..2000u64 {
            let (before, ops) = ops(seed * 7919, 1 + (seed % 40) as usize);
            let mut folded = ops.clone();
            fold(&mut folded);
            let (mut expected, mut got) = (before.clone(), before);
            expected.apply(&ops);
            got.apply(&folded);
            assert_eq!(got, expected, "seed {seed}: {ops:?} folded to {folded:?}");
        }
    }

    #[test]
    fn a_message_queued_and_acknowledged_in_one_commit_is_never_written() {
        let id: Arc<str> = "c".into();
        let mut ops = vec![
            Op::Message(id.clone(), 5, Some(message("t"))),
            Op::Progress(id.clone(), 5, Progress::Sent),
            Op::Message(id.clone(), 6, Some(message("t"))),
            Op::Message(id.clone(), 5, None),
            Op::Progress(id.clone(), 4, Progress::Sent),
            Op::Progress(id.clone(), 4, Progress::Released),
        ];
        fold(&mut ops);
        assert_eq!(ops, [Op::Message(id.clone(), 6, Some(message("t"))), Op::Progress(id, 4, Progress::Released)]);
    }

    #[test]
    fn a_reconnect_does_not_stop_the_fold_a_deletion_does() {
        let id: Arc<str> = "c".into();
        let mut ops = vec![
            Op::Message(id.clone(), 1, Some(message("t"))),
            Op::Session(id.clone(), Some(2)),
            Op::Message(id.clone(), 1, None),
        ];
        fold(&mut ops);
        assert_eq!(ops, [Op::Session(id.clone(), Some(2))]);
    }

    #[test]
    fn nothing_folds_across_a_session_deletion() {
        let id: Arc<str> = "c".into();
        let mut ops = vec![
            Op::Message(id.clone(), 1, Some(message("t"))),
            Op::Session(id.clone(), None),
            Op::Session(id.clone(), Some(1)),
            Op::Message(id.clone(), 1, None),
        ];
        let expected = ops.clone();
        fold(&mut ops);
        assert_eq!(ops, expected);
    }
}
