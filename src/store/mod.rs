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
mod writer;

pub use self::redb::{FILE_NAME, RedbStore};
pub use memory::MemoryStore;
pub use writer::{Persistence, Ticket, TicketStatus};

use crate::packet::{Message, Pid, Subscription};
use std::collections::BTreeMap;
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
    fn from_u8(value: u8) -> Progress {
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
        }
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
