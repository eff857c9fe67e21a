//! The shared broker state: the session registry, the subscription trie,
//! retained messages, counters and the store, and routing between them.
//!
//! Locks are `std::sync` locks held for short sections and never across an
//! `.await`. Order: registry, then a session, then the trie; routing takes
//! the trie (read) and sessions one after the other, never nested.

use crate::config::{Config, ShareStrategy};
use crate::error::OpenError;
use crate::packet::{QoS, ReasonCode, RetainHandling, Subscription};
use crate::retain::{Retained, Scan};
use crate::security::{Guards, Hooks, Security};
use crate::session::{ClientLimits, Message, Offer, Receipt, Session};
use crate::session_handle::SessionHandle;
use crate::signal::{Kick, Signal};
use crate::stats::{DropCause, Stats};
use crate::store::{Op, Persistence, SessionOwner, Snapshot, Store, StoredSession, Ticket, WalStore};
use crate::topic;
use crate::trie::Trie;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A handle to one broker's state; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// A [`Broker`] handle that does not keep it alive.
pub struct WeakBroker(std::sync::Weak<Shared>);

impl WeakBroker {
    /// The broker, unless it is gone.
    pub fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|shared| Broker { shared })
    }
}

struct Shared {
    config: Config,
    /// Client id → session, and the connection attached to it.
    registry: Mutex<HashMap<Arc<str>, Entry>>,
    /// Read on every PUBLISH, written on SUBSCRIBE: a read-mostly lock.
    subscriptions: RwLock<Trie<Subscriber>>,
    /// Changes to `subscriptions` so far, counted under its write lock: a
    /// publisher's turn reuses a match while it stands (see `deferred`).
    subscriptions_changed: AtomicU64,
    retained: RwLock<Retained>,
    stats: Stats,
    /// Source of connection ids; 0 means "no connection".
    next_connection: AtomicU64,
    /// Set by [`Broker::stop_connections`]: every connection is to end.
    stopping: std::sync::atomic::AtomicBool,
    /// Every connection's keepalive deadline, swept by one task.
    deadlines: crate::keepalive::Deadlines,
    /// The session limits of the configuration, shared by every session
    /// that has them (all but bridges' with limits of their own).
    limits: Arc<crate::session::Limits>,
    /// Durable state, unless the broker runs in memory.
    store: Option<Persistence>,
    /// Password and ACL files in force; replaced on reload.
    security: RwLock<Arc<Security>>,
    /// The embedding application's hooks.
    hooks: RwLock<Option<Arc<dyn Hooks>>>,
    /// Where each shared subscription group's next pick starts.
    share_cursors: Mutex<HashMap<Arc<str>, usize>>,
    /// Wills waiting for their delay, by client id: raised when a
    /// connection attaches to that id (or a newer will replaces it).
    delayed_wills: Mutex<HashMap<Arc<str>, Arc<PendingWill>>>,
    /// The other nodes of a cluster, once joined.
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
    /// The store's [`Op::Mark`] values as read at start.
    marks: std::collections::BTreeMap<Arc<str>, bytes::Bytes>,
    /// A cluster node's PUBLISH (forwarded, then routed here) holds it to
    /// read, a session adopted from another node to write: each message
    /// is forwarded and routed either before the adoption (and its copy
    /// for the session comes from the other node's stream) or after it
    /// (and comes here), never half and half.
    adopting: RwLock<()>,
}

/// A cluster node's figures, for `$SYS` and the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    /// Live nodes, this one included.
    pub nodes: u64,
    /// Filters of the other live nodes in this node's route table.
    pub routes: u64,
    /// Message copies written to other nodes' streams.
    pub forwarded: u64,
    /// Messages read from this node's stream.
    pub received: u64,
    /// QoS 0 messages not forwarded because too many waited for Redis.
    pub dropped: u64,
    /// Messages waiting to be written to Redis (the forwarding lag).
    pub waiting: u64,
}

/// Where a message published here goes beyond this node.
#[derive(Default)]
pub struct Forward {
    /// Completed once the other nodes can read it (QoS 1 and 2).
    pub receipt: Option<Arc<Receipt>>,
    /// Shared subscription groups whose copy another node delivers.
    pub elsewhere: Vec<Arc<str>>,
}

/// Which of this node's subscriptions a message goes to.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Published here, by client `from` if any (a No Local subscription of
    /// its own does not get it): all of them but the shared subscription
    /// groups named (their copy goes to another node of the cluster).
    Local { from: Option<&'a str>, except: &'a [Arc<str>] },
    /// Forwarded by another node: the subscriptions that are not shared
    /// (if `plain`) and the groups named, of the client ids in `only` if
    /// given.
    Forwarded { plain: bool, groups: &'a [Arc<str>], only: Option<&'a std::collections::HashSet<Arc<str>>> },
}

impl Scope<'_> {
    fn plain(&self) -> bool {
        match self {
            Scope::Local { .. } => true,
            Scope::Forwarded { plain, .. } => *plain,
        }
    }

    fn group(&self, group: &Arc<str>) -> bool {
        match self {
            Scope::Local { except, .. } => !except.contains(group),
            Scope::Forwarded { groups, .. } => groups.contains(group),
        }
    }

    fn admits(&self, client: &str) -> bool {
        match self {
            Scope::Forwarded { only: Some(only), .. } => only.contains(client),
            _ => true,
        }
    }

    fn from(&self) -> Option<&str> {
        match self {
            Scope::Local { from, .. } => *from,
            Scope::Forwarded { .. } => None,
        }
    }
}

/// The route a subscription sits under in a cluster: its filter, or for a
/// shared one its group (the whole `$share/{group}/{filter}`).
fn route_of<'a>(at: &'a str, share: &'a Option<Box<Share>>) -> &'a str {
    share.as_ref().map_or(at, |s| &s.group)
}

/// The rest of a cluster, as the broker sees it: where its messages go
/// beyond this node and what it tells about its subscriptions. Every call
/// returns at once (they are made under the subscriptions' lock and on the
/// publishing connection's turn); the cluster does its I/O elsewhere.
pub trait Peers: Send + Sync {
    /// A message published here (by a client, a will or a bridge), to be
    /// sent on to the nodes whose subscriptions match, and with `retain`
    /// to the cluster's retained messages. For a QoS 1 or 2 message that
    /// goes anywhere, a receipt completed once it is where the other nodes
    /// read it: its PUBACK / PUBREC waits for that. A shared subscription
    /// group with members on several nodes gets one copy cluster-wide:
    /// the groups whose copy another node delivers are in `elsewhere`.
    fn forward(&self, message: &Message, retain: bool) -> Forward;
    /// A subscription on this node was added under `route`: its filter, or
    /// for a shared subscription its whole `$share/{group}/{filter}`.
    fn subscription_added(&self, route: &str);
    /// A subscription on this node under `route` went.
    fn subscription_removed(&self, route: &str);
    /// A client connects here with this id: the cluster's other nodes end
    /// their connections with it (a takeover across nodes). With
    /// `take_session`, a persistent session another node held is taken
    /// over (without, it is deleted). Completes once the claim is made;
    /// the session is attached after that.
    fn claim(&self, client_id: &Arc<str>, take_session: bool) -> Option<Arc<Claimed>>;
    /// The session a claim took from another node ([`Peers::claim`]) is
    /// live here now, its subscriptions told.
    fn adopted(&self, _client_id: &Arc<str>) {}
    /// The other nodes a message on `topic` would go to now.
    fn nodes_for(&self, topic: &str) -> Vec<String>;
    /// What `$SYS` and the metrics show of the cluster.
    fn figures(&self) -> ClusterFigures;
    /// The server stops: leave the cluster.
    fn stop(&self);
    /// Whether this node serves clients: not while it is cut off from the
    /// cluster (it then refuses CONNECTs with "server unavailable").
    fn serving(&self) -> bool {
        true
    }
    /// A connection's will as it connects (`Some`: the message, whether it
    /// is retained, its delay in seconds) or its end (`None`): the cluster
    /// keeps a copy, which another node fires if this one dies; the
    /// receipt (for a will kept) completes once it is.
    fn keep_will(&self, conn: u64, client_id: &Arc<str>, will: Option<(&Message, bool, u32)>) -> Option<Arc<Receipt>>;
}

/// A claim of a client id across the cluster ([`Peers::claim`]).
#[derive(Debug)]
pub struct Claimed {
    /// Completes once Redis answered.
    pub receipt: Arc<Receipt>,
    /// `Some` if another node owned the id: with the persistent session
    /// it held, if one is taken over.
    pub session: Mutex<Option<Option<StoredSession>>>,
    /// Held until the claim is dropped (the CONNECT adopted what it took
    /// over, or gave up): what the cluster waits for meanwhile.
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Set when the claim was answered while this node was taking over a
    /// dead node's sessions: completes once they are here (the session
    /// this claim found this node's may be one of them).
    pub after: Mutex<Option<Arc<Receipt>>>,
}

impl Default for Claimed {
    fn default() -> Self {
        Claimed { receipt: Receipt::waiting(1), session: Mutex::new(None), guard: None, after: Mutex::new(None) }
    }
}

struct Entry {
    session: Arc<SessionHandle>,
    /// A clean session (discarded when its connection ends).
    clean: bool,
    /// The takeover notice of the connection attached (`last_connection`),
    /// if one is: raising it tells that connection to end.
    kick: Option<Arc<Kick>>,
    /// When the last connection left (persistent sessions; for expiry), in
    /// milliseconds since the Unix epoch (8 bytes in every registry slot
    /// instead of an `Option<SystemTime>`'s 24).
    left: Option<NonZeroU64>,
    /// The last connection attached (0: none since a restart).
    last_connection: u64,
}

struct Subscriber {
    sub: Subscription,
    session: Arc<SessionHandle>,
    /// For a shared subscription: its group and member (boxed: rare, and
    /// the trie's leaves are walked on every PUBLISH).
    share: Option<Box<Share>>,
}

/// A member of a shared subscription's group.
struct Share {
    /// The whole filter, `$share/{name}/{filter}`: the group.
    group: Arc<str>,
    /// The member's client id.
    client: Arc<str>,
}

/// A shared subscription matching a message: group, session, subscription, member.
type SharedMatch = (Arc<str>, Arc<SessionHandle>, Subscription, Arc<str>);

/// Where a session's subscription to `filter` sits in the trie: the filter
/// it matches with, its key there, and its group if it is shared (a shared
/// subscription matches with the filter it shares, under a key of its own,
/// so it can sit beside the client's own subscription to that filter).
fn slot<'f>(filter: &'f str, client: &Arc<str>) -> (&'f str, Arc<str>, Option<Box<Share>>) {
    match topic::shared(filter) {
        Some((_, inner)) => {
            let share = Box::new(Share { group: filter.into(), client: client.clone() });
            (inner, format!("{filter}\0{client}").into(), Some(share))
        }
        None => (filter, client.clone(), None),
    }
}

/// A will waiting for its delay: decided when a connection attaches to its
/// client id (resumed: not sent; a new session: sent, the old one ended),
/// or by its timer when none does.
#[derive(Debug, Default)]
pub struct PendingWill {
    decided: Signal,
    verdict: Mutex<Option<WillState>>,
}

impl PendingWill {
    fn decide(&self, verdict: WillState) {
        lock(&self.verdict).get_or_insert(verdict);
        self.decided.raise();
    }

    /// Completes once an attaching connection decided the will.
    pub async fn decided(&self) {
        self.decided.raised().await;
    }

    /// Whether the will is to be sent now: decided to, or not decided
    /// against when its delay is over.
    pub fn send(&self) -> bool {
        *lock(&self.verdict) != Some(WillState::Resumed)
    }
}

/// Where a delayed will stands (see [`Broker::delay_will`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillState {
    /// No connection came back to the session: the delay runs.
    Waiting,
    /// A connection resumed the session: the will is not sent (MQTT-3.1.3-9).
    Resumed,
    /// The session ended (expired, or replaced by a Clean Start): the will
    /// is sent now.
    SessionEnded,
}

/// Who attaches to a session, and how (see [`Broker::attach_with`]).
#[derive(Debug, Clone, Default)]
pub struct Attach {
    /// The listener the client came in on (whose ACL rules its deliveries).
    pub listener: usize,
    /// The user name it authenticated as.
    pub username: Option<Arc<str>>,
    /// Clean Start (3.1.1: clean session): discard any existing session.
    pub clean_start: bool,
    /// Session Expiry Interval in seconds once the connection ends: `Some(0)`
    /// ends the session with the connection (3.1.1 clean session), `None`
    /// keeps it without a limit of its own (3.1.1 persistent session, or
    /// 5.0's 0xFFFFFFFF).
    pub expiry: Option<u32>,
    /// What the client announced it can take.
    pub client: ClientLimits,
}

impl Attach {
    /// A 3.1.1 attachment: clean session 1 ends with the connection.
    pub fn v3(listener: usize, username: Option<Arc<str>>, clean: bool) -> Attach {
        Attach { listener, username, clean_start: clean, expiry: clean.then_some(0), client: ClientLimits::default() }
    }
}

/// The session a new connection gets.
pub struct Attachment {
    /// The session, persistent or fresh.
    pub session: Arc<SessionHandle>,
    /// Whether an existing session was resumed (CONNACK Session Present).
    pub session_present: bool,
    /// When the session's creation is durable.
    pub ticket: Ticket,
}

/// `limits`, shared with `default` when they are the same.
fn shared_limits(default: &Arc<crate::session::Limits>, limits: crate::session::Limits) -> Arc<crate::session::Limits> {
    match limits == **default {
        true => default.clone(),
        false => Arc::new(limits),
    }
}

/// `at` in milliseconds since the Unix epoch (`None` before it).
fn epoch_millis(at: Option<SystemTime>) -> Option<NonZeroU64> {
    let since = at?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    NonZeroU64::new(since.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// Whether this thread holds a [`Gate`].
    static GATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds off a cluster node's adoption and handing over of sessions
/// ([`Broker::gate`]).
pub struct Gate<'a> {
    _held: RwLockReadGuard<'a, ()>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        GATED.with(|g| g.set(false));
    }
}

impl Broker {
    /// For a cluster node, holds off the adoption and the handing over of
    /// sessions until dropped, so that every PUBLISH this thread routes
    /// meanwhile, with the copies a connection's turn defers until its
    /// end ([`crate::deferred::Turn`]), either reaches a session before
    /// it goes to another node or sees that it went. `None` on a single
    /// node, or if this thread holds one already (PUBLISHes in a turn).
    pub fn gate(&self) -> Option<Gate<'_>> {
        self.shared.peers.get()?;
        if GATED.with(std::cell::Cell::get) {
            return None;
        }
        let held = read(&self.shared.adopting);
        GATED.with(|g| g.set(true));
        Some(Gate { _held: held })
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// A persistent session as stored, made live: its registry entry; each of
/// its subscriptions is handed to `subscribe` (the filter it matches with,
/// its key, the subscriber).
fn restored(
    id: &Arc<str>,
    stored: StoredSession,
    limits: &Arc<crate::session::Limits>,
    config: &Config,
    store: Option<Persistence>,
    now: SystemTime,
    mut subscribe: impl FnMut(&str, Arc<str>, Subscriber),
) -> Entry {
    let left = epoch_millis(now.checked_sub(Duration::from_secs(epoch_seconds(now).saturating_sub(stored.last_seen))));
    let owner = stored.owner.clone().unwrap_or_default();
    let session = Session::restore(id.clone(), stored, shared_limits(limits, config.limits_for(id)));
    let handle = SessionHandle::new(id.clone(), session, store);
    {
        // Deliveries while its client is away are checked against the ACL
        // of the listener and user it last connected as.
        let mut s = handle.lock();
        (s.listener, s.username) = (owner.listener, owner.username);
        for (filter, sub) in s.session.subscriptions() {
            let (at, key, share) = slot(filter, id);
            subscribe(at, key, Subscriber { sub, session: handle.clone(), share });
        }
    }
    Entry { session: handle, clean: false, kick: None, left, last_connection: 0 }
}

fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Broker {
    /// Opens a broker as configured: reads the password and ACL files, and
    /// is durable in `data_dir` (restoring what is stored there), or in
    /// memory when `data_dir` is `None`.
    pub fn open(config: Config) -> Result<Broker, OpenError> {
        // A cluster node keeps its persistent sessions in Redis, where
        // another node can take them over.
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &config.cluster {
            if let Some(dir) = &config.data_dir {
                log::info!(
                    "cluster node: persistent sessions are kept in the cluster's Redis; data directory {} is not used",
                    dir.display()
                );
            }
            let bridges = config.clone();
            let store = crate::cluster::RedisStore::open(&cluster.redis, &cluster.node_id, move |id| {
                bridges.bridge_of_session(id).is_some()
            })?;
            return Broker::with_store(config, Box::new(store));
        }
        match config.data_dir.clone() {
            Some(dir) => {
                let security = Security::load(&config).map_err(OpenError::Config)?;
                let store = WalStore::open(&dir, config.recover_store)?;
                Broker::restore(config, security, Box::new(store))
            }
            None => Broker::in_memory(config),
        }
    }

    /// A broker that keeps everything in memory, whatever `data_dir` says.
    pub fn in_memory(config: Config) -> Result<Broker, OpenError> {
        let security = Security::load(&config).map_err(OpenError::Config)?;
        Ok(Broker::build(config, security, None, Snapshot::default()))
    }

    /// A broker over any [`Store`], restoring its contents.
    pub fn with_store(config: Config, store: Box<dyn Store>) -> Result<Broker, OpenError> {
        let security = Security::load(&config).map_err(OpenError::Config)?;
        Broker::restore(config, security, store)
    }

    fn restore(config: Config, security: Security, store: Box<dyn Store>) -> Result<Broker, OpenError> {
        let started = Instant::now();
        let snapshot = store.load()?;
        let (sessions, retained) = (snapshot.sessions.len(), snapshot.retained.len());
        let messages: usize = snapshot.sessions.values().map(|s| s.messages.len()).sum();
        let broker = Broker::build(config, security, Some(Persistence::start(store)), snapshot);
        log::info!(
            "store: restored {sessions} persistent session(s), {messages} queued or inflight message(s), {retained} retained message(s) in {:?}",
            started.elapsed()
        );
        Ok(broker)
    }

    fn build(config: Config, security: Security, store: Option<Persistence>, snapshot: Snapshot) -> Broker {
        let mut retained = Retained::default();
        for message in snapshot.retained.into_values() {
            retained.set(&message);
        }
        let mut registry = HashMap::new();
        let mut trie = Trie::default();
        let limits = Arc::new(config.limits());
        let now = SystemTime::now();
        for (id, stored) in snapshot.sessions {
            let entry = restored(&id, stored, &limits, &config, store.clone(), now, |at, key, s| {
                trie.insert(at, key, s);
            });
            registry.insert(id, entry);
        }
        let shared = Shared {
            config,
            registry: Mutex::new(registry),
            subscriptions: RwLock::new(trie),
            subscriptions_changed: AtomicU64::new(0),
            retained: RwLock::new(retained),
            stats: Stats::default(),
            next_connection: AtomicU64::new(1),
            stopping: std::sync::atomic::AtomicBool::new(false),
            deadlines: crate::keepalive::Deadlines::default(),
            limits,
            store,
            security: RwLock::new(Arc::new(security)),
            hooks: RwLock::new(None),
            share_cursors: Mutex::new(HashMap::new()),
            delayed_wills: Mutex::new(HashMap::new()),
            peers: std::sync::OnceLock::new(),
            marks: snapshot.marks,
            adopting: RwLock::new(()),
        };
        Broker { shared: Arc::new(shared) }
    }

    /// Installs the embedding application's hooks (before or while serving).
    pub fn set_hooks(&self, hooks: Arc<dyn Hooks>) {
        *write(&self.shared.hooks) = Some(hooks);
    }

    /// The file rules and hooks in force now.
    pub fn guards(&self) -> Guards {
        Guards { files: read(&self.shared.security).clone(), hooks: read(&self.shared.hooks).clone() }
    }

    /// Re-reads the password and ACL files; on an error the rules in force
    /// stay and the error is returned.
    pub fn reload_security(&self) -> Result<(), String> {
        let security = Security::load(&self.shared.config)?;
        *write(&self.shared.security) = Arc::new(security);
        Ok(())
    }

    /// Tells every connection to end (a shutdown): each attached one is
    /// woken and finds [`Broker::is_stopping`] set. One flag for all, so an
    /// idle connection holds no listener of its own for the shutdown.
    pub fn stop_connections(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let registry = lock(&self.shared.registry);
        for kick in registry.values().filter_map(|e| e.kick.as_ref()) {
            kick.wake();
        }
    }

    /// The connections' keepalive deadlines.
    pub fn deadlines(&self) -> &crate::keepalive::Deadlines {
        &self.shared.deadlines
    }

    /// A handle that does not keep the broker alive.
    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.shared))
    }

    /// Whether [`Broker::stop_connections`] was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Commits what is pending and stops the store's writer thread.
    pub fn close(&self) {
        if let Some(store) = &self.shared.store {
            store.stop();
        }
    }

    /// The configuration the broker was built with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The broker's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Joins a cluster: from now on messages published here go to `peers`
    /// too, and so does every subscription added or removed (every one so
    /// far is told at once). Returns `false` if the broker had joined one
    /// already.
    pub fn join(&self, peers: Arc<dyn Peers>) -> bool {
        // Under the write lock: no subscription change slips between the
        // subscriptions told now and the ones told as they change.
        let trie = self.subscriptions_mut();
        if self.shared.peers.set(peers.clone()).is_err() {
            return false;
        }
        trie.for_each(|filter, _, s| peers.subscription_added(route_of(filter, &s.share)));
        true
    }

    /// The cluster this broker joined, if any.
    pub fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.shared.peers.get()
    }

    /// Routes a message that another node of the cluster forwarded: to this
    /// node's subscribers only (it is not forwarded again), not stored as
    /// retained here. Sessions whose queues are full take it anyway.
    /// Only the subscriptions that are not shared (if `plain`) and the
    /// shared subscription `groups` named get it: the publishing node
    /// picked this node for their copy. With `only`, only those client
    /// ids' sessions get it (what a dead node was sent, for the sessions
    /// taken from it).
    /// `pressed` gets every session whose full queue took it anyway because
    /// its client is reading: the caller reads no more from the other
    /// node until they have room ([`crate::session_handle::Waiting`]).
    pub fn publish_forwarded(
        &self,
        message: Message,
        plain: bool,
        groups: &[Arc<str>],
        only: Option<&std::collections::HashSet<Arc<str>>>,
        pressed: &mut Vec<Arc<SessionHandle>>,
    ) -> Ticket {
        let scope = Scope::Forwarded { plain, groups, only };
        let routing = self.route(message, false, None, pressed, false, scope);
        routing.retained.max(routing.copies)
    }

    /// Sets (or, with an empty payload, clears) the retained message of a
    /// topic without delivering it: the cluster's table says so.
    pub fn retain_from_cluster(&self, message: &Message) -> Ticket {
        self.keep_retained(message)
    }

    /// Another node of the cluster took `client_id` over: the connection
    /// attached here ends as a takeover does (5.0: DISCONNECT 0x8E), and
    /// the session goes from this node without a store write (a persistent
    /// one is the new owner's in Redis now, which refuses this node's
    /// writes to it). Whether there was a connection.
    pub fn release_to_cluster(&self, client_id: &str) -> bool {
        self.release(client_id, |_| {})
    }

    /// [`Broker::release_to_cluster`] for a session another node took
    /// over: `handing` gets the session's filters that are not shared
    /// before they leave the trie, while no PUBLISH here is routed (what
    /// matches them from then on is the cluster's to pass on to the new
    /// owner).
    pub fn hand_over_to_cluster(&self, client_id: &str, handing: impl FnOnce(Vec<String>)) -> bool {
        let _gate = write(&self.shared.adopting);
        self.release(client_id, handing)
    }

    fn release(&self, client_id: &str, handing: impl FnOnce(Vec<String>)) -> bool {
        let mut registry = lock(&self.shared.registry);
        let Some((id, entry)) = registry.remove_entry(client_id) else { return false };
        let filters = entry.session.lock().session.subscriptions().map(|(f, _)| f.to_owned()).collect::<Vec<_>>();
        handing(filters.into_iter().filter(|f| crate::topic::shared(f).is_none()).collect());
        let attached = entry.kick.as_ref().inspect(|kick| kick.raise()).is_some();
        // Its `Op::Session(id, None)` is not written.
        self.discard(&id, &entry.session, &mut Vec::new());
        attached
    }

    /// A CONNECT here took `client_id` over from another node of the
    /// cluster, before the client is attached: what this node still has
    /// of an earlier session with that id is stale and goes (without a
    /// store write), and the persistent session the other node held, if
    /// taken over, becomes this node's as Redis kept it (its subscriptions
    /// routed here).
    pub fn adopt_from_cluster(&self, client_id: &Arc<str>, stored: Option<StoredSession>) {
        let _gate = write(&self.shared.adopting);
        self.release_to_cluster(client_id);
        let Some(stored) = stored else { return };
        let mut registry = lock(&self.shared.registry);
        let (shared, peers) = (&self.shared, self.shared.peers.get());
        let mut trie = self.subscriptions_mut();
        let now = SystemTime::now();
        let entry =
            restored(client_id, stored, &shared.limits, &shared.config, shared.store.clone(), now, |at, key, s| {
                if let Some(peers) = peers
                    && !trie.contains(at, &key)
                {
                    peers.subscription_added(route_of(at, &s.share));
                }
                trie.insert(at, key, s);
            });
        drop(trie);
        registry.insert(client_id.clone(), entry);
        if let Some(peers) = peers {
            peers.adopted(client_id);
        }
    }

    /// Ends every client connection here (a bridge's own excepted) as a
    /// takeover does: this cluster node lost Redis. How many were told.
    pub fn end_connections_cut_off(&self) -> usize {
        let registry = lock(&self.shared.registry);
        let config = &self.shared.config;
        let mut told = 0;
        for (id, entry) in registry.iter() {
            if let Some(kick) = entry.kick.as_ref().filter(|_| config.bridge_of_session(id).is_none()) {
                kick.raise();
                told += 1;
            }
        }
        told
    }

    /// The route of every subscription here (its filter, or a shared
    /// subscription's whole `$share/{group}/{filter}`), each once.
    pub fn subscribed_filters(&self) -> Vec<String> {
        let mut routes = std::collections::HashSet::new();
        read(&self.shared.subscriptions).for_each(|filter, _, s| {
            if !routes.contains(route_of(filter, &s.share)) {
                routes.insert(route_of(filter, &s.share).to_owned());
            }
        });
        routes.into_iter().collect()
    }

    /// The topics with a retained message here.
    pub fn retained_topics(&self) -> Vec<Arc<str>> {
        read(&self.shared.retained).topics()
    }

    /// Stores `message` as its topic's retained message (an empty payload
    /// clears it), here and in the store, in the same order.
    fn keep_retained(&self, message: &Message) -> Ticket {
        let mut retained = write(&self.shared.retained);
        retained.set(message);
        let kept = (!message.payload.is_empty()).then(|| Message { retain: true, ..message.clone() });
        let ticket = self.append(vec![Op::Retain(message.topic.clone(), kept)]);
        drop(retained);
        ticket
    }

    /// The store, when the broker is durable.
    pub fn store(&self) -> Option<&Persistence> {
        self.shared.store.as_ref()
    }

    /// The value the store held under `key` ([`Op::Mark`]) when the broker
    /// started.
    pub fn mark_at_start(&self, key: &str) -> Option<&bytes::Bytes> {
        self.shared.marks.get(key)
    }

    /// Clients known to the broker: connected, plus persistent sessions
    /// waiting for their client.
    pub fn client_count(&self) -> usize {
        lock(&self.shared.registry).len()
    }

    /// Sessions known to the broker: (with a connection, without one,
    /// persistent ones among both).
    pub fn session_counts(&self) -> (usize, usize, usize) {
        let registry = lock(&self.shared.registry);
        let online = registry.values().filter(|e| e.kick.is_some()).count();
        let persistent = registry.values().filter(|e| !e.clean).count();
        (online, registry.len() - online, persistent)
    }

    /// Messages queued or inflight in every session. Each session is locked
    /// in turn, outside the registry's lock: for a scrape, not the hot path.
    pub fn queued_messages(&self) -> u64 {
        let sessions: Vec<Arc<SessionHandle>> =
            lock(&self.shared.registry).values().map(|e| e.session.clone()).collect();
        sessions.iter().map(|s| s.lock().session.pending() as u64).sum()
    }

    /// Messages queued or inflight for `client_id`'s session, if it has one.
    pub fn session_pending(&self, client_id: &str) -> Option<usize> {
        let session = lock(&self.shared.registry).get(client_id).map(|e| e.session.clone())?;
        Some(session.lock().session.pending())
    }

    /// Messages queued or inflight for `client_id`'s session and how many it
    /// dropped because its queue was full, if it has a session.
    pub fn session_queue(&self, client_id: &str) -> Option<(usize, u64)> {
        let session = lock(&self.shared.registry).get(client_id).map(|e| e.session.clone())?;
        let s = session.lock();
        Some((s.session.pending(), s.session.dropped))
    }

    /// Forgets the inbound QoS 2 ids of `client_id`'s session (see
    /// [`crate::session::Session::forget_incoming`]).
    pub fn forget_incoming(&self, client_id: &str) {
        let session = lock(&self.shared.registry).get(client_id).map(|e| e.session.clone());
        if let Some(session) = session {
            // The guard writes the journal to the store as it unlocks.
            session.lock().session.forget_incoming(None);
        }
    }

    /// (filter, client) subscriptions.
    pub fn subscription_count(&self) -> usize {
        read(&self.shared.subscriptions).len()
    }

    /// Retained messages.
    pub fn retained_count(&self) -> usize {
        read(&self.shared.retained).len()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    fn append(&self, ops: Vec<Op>) -> Ticket {
        match &self.shared.store {
            Some(store) => store.append(ops),
            None => Ticket::default(),
        }
    }

    /// Attaches connection `conn` to `client_id`'s session: takes over (kicks)
    /// any connection already using the id (MQTT-3.1.4-2), resumes a
    /// persistent session unless `clean`, otherwise starts a new one
    /// (MQTT-3.1.2-4/-6).
    pub fn attach(
        &self,
        client_id: &Arc<str>,
        username: Option<Arc<str>>,
        clean: bool,
        conn: u64,
        kick: Arc<Kick>,
    ) -> Attachment {
        self.attach_with(client_id, Attach::v3(0, username, clean), conn, kick)
    }

    /// [`Broker::attach`] for a client that came in on the listener at
    /// index `listener` (whose ACL then rules its deliveries).
    pub fn attach_on(
        &self,
        listener: usize,
        client_id: &Arc<str>,
        username: Option<Arc<str>>,
        clean: bool,
        conn: u64,
        kick: Arc<Kick>,
    ) -> Attachment {
        self.attach_with(client_id, Attach::v3(listener, username, clean), conn, kick)
    }

    /// Attaches connection `conn` to `client_id`'s session as `how` says:
    /// takes over (kicks) any connection already using the id
    /// (MQTT-3.1.4-2), resumes a session that outlives its connections
    /// unless Clean Start (MQTT-3.1.2-4/-5), otherwise starts a new one. A
    /// session with an expiry interval other than 0 is durable; who owns it
    /// (listener, user, expiry) is stored with it.
    pub fn attach_with(&self, client_id: &Arc<str>, how: Attach, conn: u64, kick: Arc<Kick>) -> Attachment {
        let Attach { listener, username, clean_start, expiry, client } = how;
        let ends_with_connection = expiry == Some(0);
        let mut registry = lock(&self.shared.registry);
        // A will waiting for its delay is decided now (MQTT-3.1.3-9): its
        // timer wakes, and finds this attachment once the registry is free.
        let pending_will = lock(&self.shared.delayed_wills).remove(client_id);
        let previous = registry.remove(client_id);
        if let Some(e) = previous.as_ref()
            && let Some(kick) = e.kick.as_ref()
        {
            kick.raise();
        }
        let mut ops = Vec::new();
        let (session, session_present) = match previous {
            Some(e) if !clean_start && !e.session.lock().session.clean => (e.session, true),
            other => {
                if let Some(e) = other {
                    self.discard(client_id, &e.session, &mut ops);
                }
                let durable = !ends_with_connection && self.shared.store.is_some();
                if durable {
                    ops.push(Op::Session(client_id.clone(), Some(epoch_seconds(SystemTime::now()))));
                }
                let session = Session::new(
                    client_id.clone(),
                    ends_with_connection,
                    shared_limits(&self.shared.limits, self.shared.config.limits_for(client_id)),
                    durable,
                );
                (SessionHandle::new(client_id.clone(), session, self.shared.store.clone()), false)
            }
        };
        if let Some(will) = pending_will {
            let verdict = if session_present { WillState::Resumed } else { WillState::SessionEnded };
            will.decide(verdict);
        }
        let persistent = {
            let mut s = session.lock();
            s.owner = conn;
            session.claim_bell(conn);
            s.username = username.clone();
            s.listener = listener;
            s.session.expiry = expiry;
            s.session.set_client(client);
            s.session.set_online(true);
            !s.session.clean
        };
        if persistent && self.shared.store.is_some() {
            ops.push(Op::Owner(client_id.clone(), SessionOwner { listener, username, expiry }));
        }
        let ticket = self.append(ops);
        let entry =
            Entry { session: session.clone(), clean: !persistent, kick: Some(kick), left: None, last_connection: conn };
        registry.insert(client_id.clone(), entry);
        Attachment { session, session_present, ticket }
    }

    /// Decides a will with a delay when its connection has ended (after
    /// [`Broker::detach`]): `None` if a connection already resumed the
    /// session (the will is not sent, MQTT-3.1.3-9), `Some(None)` if the
    /// session already ended (send it now), or `Some(Some(pending))` for a
    /// will that waits: the next connection to attach to `client_id`
    /// decides it (see [`PendingWill`]). One pending will per client id.
    pub fn delay_will(
        &self,
        client_id: &Arc<str>,
        session: &Arc<SessionHandle>,
        conn: u64,
    ) -> Option<Option<Arc<PendingWill>>> {
        // The registry's lock orders this against attaching connections.
        let registry = lock(&self.shared.registry);
        let state = match registry.get(client_id) {
            Some(entry) if Arc::ptr_eq(&entry.session, session) => {
                match entry.last_connection == conn && entry.kick.is_none() {
                    true => WillState::Waiting,
                    false => WillState::Resumed,
                }
            }
            _ => WillState::SessionEnded,
        };
        match state {
            WillState::Resumed => None,
            WillState::SessionEnded => Some(None),
            WillState::Waiting => {
                let pending = Arc::new(PendingWill::default());
                if let Some(older) = lock(&self.shared.delayed_wills).insert(client_id.clone(), pending.clone()) {
                    older.decide(WillState::Resumed);
                }
                drop(registry);
                Some(Some(pending))
            }
        }
    }

    /// Forgets a pending will once handled (if it is still the registered one).
    pub fn forget_will(&self, client_id: &Arc<str>, pending: &Arc<PendingWill>) {
        let mut wills = lock(&self.shared.delayed_wills);
        if wills.get(client_id).is_some_and(|w| Arc::ptr_eq(w, pending)) {
            wills.remove(client_id);
        }
    }

    /// Changes the expiry interval of `client_id`'s session (a 5.0
    /// DISCONNECT's Session Expiry Interval), if connection `conn` owns it.
    pub fn set_session_expiry(&self, client_id: &Arc<str>, conn: u64, expiry: Option<u32>) {
        let registry = lock(&self.shared.registry);
        let Some(entry) = registry.get(client_id) else { return };
        let Some(mut s) = entry.session.lock_owned(conn) else { return };
        s.session.expiry = expiry;
        if !s.session.clean && self.shared.store.is_some() {
            let owner = SessionOwner { listener: s.listener, username: s.username.clone(), expiry };
            self.append(vec![Op::Owner(client_id.clone(), owner)]);
        }
    }

    /// Detaches connection `conn` from `client_id`'s session, unless a newer
    /// connection took it over. A clean session is discarded (MQTT-3.1.2-6);
    /// a persistent one stays, collecting messages for its client.
    pub fn detach(&self, client_id: &Arc<str>, conn: u64) {
        let mut registry = lock(&self.shared.registry);
        let Some(entry) = registry.get_mut(client_id) else { return };
        if entry.kick.is_none() || entry.last_connection != conn {
            return;
        }
        entry.kick = None;
        let (clean, unfinished) = {
            let mut s = entry.session.lock();
            s.owner = 0;
            s.session.set_online(false);
            // A 5.0 session resumed with (or changed to) expiry 0 ends too.
            (s.session.clean || s.session.expiry == Some(0), s.session.take_shared())
        };
        if !unfinished.is_empty() {
            self.reroute(&entry.session.clone(), unfinished);
        }
        // Publishers waiting for this client's queue to drain go on: an
        // offline session keeps what fits and drops the rest.
        entry.session.wake_publishers();
        let mut ops = Vec::new();
        if clean {
            let entry = registry.remove(client_id).expect("entry exists");
            self.discard(client_id, &entry.session, &mut ops);
        } else {
            let now = SystemTime::now();
            entry.left = epoch_millis(Some(now));
            if self.shared.store.is_some() {
                ops.push(Op::Session(client_id.clone(), Some(epoch_seconds(now))));
            }
        }
        self.append(ops);
    }

    /// Removes persistent sessions whose client has been gone longer than
    /// `max_age` (Mosquitto's `persistent_client_expiration`) or than their
    /// own Session Expiry Interval (5.0).
    pub fn expire_sessions(&self, max_age: Option<Duration>) -> usize {
        let mut registry = lock(&self.shared.registry);
        let now = SystemTime::now();
        let expired: Vec<Arc<str>> = registry
            .iter()
            .filter(|(id, e)| {
                let Some(left) = e.left else { return false };
                let gone =
                    Duration::from_millis(epoch_millis(Some(now)).map_or(0, |n| n.get()).saturating_sub(left.get()));
                let own = e.session.lock().session.expiry.map(|s| Duration::from_secs(u64::from(s)));
                let limit = match (own, max_age) {
                    (Some(own), Some(max)) => Some(own.min(max)),
                    (own, max) => own.or(max),
                };
                // A bridge's session holds what waits for its remote: it
                // never expires (persistent_client_expiration included).
                limit.is_some_and(|limit| gone >= limit) && self.shared.config.bridge_of_session(id).is_none()
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut ops = Vec::new();
        for id in &expired {
            let entry = registry.remove(id).expect("listed above");
            let pending = entry.session.lock().session.pending();
            self.shared.stats.dropped(DropCause::Expired, pending as u64);
            self.discard(id, &entry.session, &mut ops);
            log::info!("session of client {id} expired");
        }
        self.append(ops);
        expired.len()
    }

    /// Forgets a session: its subscriptions leave the trie, it stops
    /// journaling, and a stored copy is deleted.
    fn discard(&self, client_id: &Arc<str>, session: &SessionHandle, ops: &mut Vec<Op>) {
        let (filters, stored): (Vec<String>, bool) = {
            let mut s = session.lock();
            let filters = s.session.subscriptions().map(|(f, _)| f.to_owned()).collect();
            let stored = !s.session.clean;
            s.session.discard();
            // The kick is authoritative: nothing the old connection still
            // does reaches a discarded session (or, through it, the trie).
            s.owner = 0;
            s.session.set_online(false);
            (filters, stored)
        };
        session.wake_publishers();
        if stored && self.shared.store.is_some() {
            ops.push(Op::Session(client_id.clone(), None));
        }
        let mut trie = self.subscriptions_mut();
        for filter in filters {
            self.remove_slot(&mut trie, &filter, client_id);
        }
    }

    /// Takes a subscription out of the trie (a shared one also resets its
    /// group's cursor, so cursors do not outlive their groups).
    fn remove_slot(&self, trie: &mut Trie<Subscriber>, filter: &str, client_id: &Arc<str>) {
        let (at, key, share) = slot(filter, client_id);
        let gone = trie.remove(at, &key).is_some();
        if let Some(peers) = self.shared.peers.get().filter(|_| gone) {
            peers.subscription_removed(route_of(at, &share));
        }
        if let Some(share) = share {
            lock(&self.shared.share_cursors).remove(&share.group);
        }
    }

    /// Adds or replaces subscriptions (MQTT-3.8.4-3) and queues the retained
    /// messages they match (MQTT-3.3.1-6) as their Retain Handling says
    /// (5.0: 1 only for a new subscription, 2 never); returns one code per
    /// filter, or `None` if connection `conn` no longer owns the session
    /// (takeover). The trie is updated under the session lock, so a
    /// takeover that discards the session cannot leave a subscription behind.
    ///
    /// Identical filters in one SUBSCRIBE replace each other (the last one
    /// counts), and each retained message goes out once, at the highest QoS
    /// of the filters that match it. Retained messages go through the
    /// session's queue limits like live ones; `pressed` gets the session
    /// if they filled it (see [`Offer::Pressed`]).
    pub fn subscribe(
        &self,
        client_id: &Arc<str>,
        session: &Arc<SessionHandle>,
        conn: u64,
        filters: &[(String, Subscription)],
        pressed: &mut Vec<Arc<SessionHandle>>,
    ) -> Option<(Vec<ReasonCode>, Ticket)> {
        let mut unique: Vec<(&str, Subscription)> = Vec::with_capacity(filters.len());
        {
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(filters.len());
            for (filter, sub) in filters {
                match seen.get(filter.as_str()) {
                    Some(&i) => unique[i].1 = *sub,
                    None => {
                        seen.insert(filter, unique.len());
                        unique.push((filter, *sub));
                    }
                }
            }
        }
        let (mut ticket, send_retained) = {
            let mut s = session.lock_owned(conn)?;
            let mut send_retained = Vec::with_capacity(unique.len());
            for (filter, sub) in &unique {
                let existed = s.session.subscribe(filter, *sub);
                let send = match sub.options.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscription => !existed,
                    RetainHandling::Never => false,
                };
                // No retained messages for a shared subscription (4.8.2).
                if send && topic::shared(filter).is_none() {
                    send_retained.push((*filter, *sub));
                }
            }
            let mut trie = self.subscriptions_mut();
            for (filter, sub) in &unique {
                let (at, key, share) = slot(filter, client_id);
                if let Some(peers) = self.shared.peers.get()
                    && !trie.contains(at, &key)
                {
                    peers.subscription_added(route_of(at, &share));
                }
                trie.insert(at, key, Subscriber { sub: *sub, session: session.clone(), share });
            }
            (s.commit(), send_retained)
        };
        let security = self.acl();
        let _hold = self.shared.store.as_ref().map(Persistence::hold);
        for message in self.retained_for(&send_retained) {
            let (offer, t) = session.deliver(message, security.as_deref(), None);
            self.count_offer(offer, session, pressed);
            ticket = ticket.max(t);
        }
        Some((filters.iter().map(|(_, sub)| ReasonCode::granted(sub.options.qos)).collect(), ticket))
    }

    /// The retained messages matching any of `filters`, each once at the
    /// highest QoS among the filters that match it, in topic order. The
    /// retained lock is taken for a bounded scan at a time, never for the
    /// whole set, and what is collected never exceeds the retained set, however
    /// many filters match the same topics.
    fn retained_for(&self, filters: &[(&str, Subscription)]) -> Vec<Message> {
        /// Topics looked at per hold of the retained lock.
        const SCAN_BUDGET: usize = 1024;
        let mut found: Vec<Message> = Vec::new();
        // With more than one filter, a topic's place in `found`.
        let mut seen: HashMap<Arc<str>, usize> = HashMap::new();
        let now_ms = crate::packet::now_ms();
        for (filter, sub) in filters {
            let mut from = None;
            loop {
                let scan = read(&self.shared.retained).scan(filter, from.as_ref(), SCAN_BUDGET, |m| {
                    // A retained message past its expiry is not sent (MQTT-3.3.2-5).
                    if m.expired(now_ms) {
                        return;
                    }
                    let qos = m.qos.min(sub.options.qos);
                    if filters.len() == 1 {
                        return found.push(Message { qos, subscription_id: sub.id, ..m.clone() });
                    }
                    match seen.get(&m.topic) {
                        // One SUBSCRIBE has one identifier for all its filters.
                        Some(&i) => found[i].qos = found[i].qos.max(qos),
                        None => {
                            seen.insert(m.topic.clone(), found.len());
                            found.push(Message { qos, subscription_id: sub.id, ..m.clone() });
                        }
                    }
                });
                match scan {
                    Scan::Done => break,
                    Scan::After(topic) => from = Some(topic),
                }
            }
        }
        if filters.len() > 1 {
            found.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        }
        found
    }

    /// Counts a drop, or notes a session that holds its publisher back.
    pub(crate) fn count_offer(
        &self,
        offer: Offer,
        session: &Arc<SessionHandle>,
        pressed: &mut Vec<Arc<SessionHandle>>,
    ) {
        match offer {
            Offer::Dropped(cause) => self.shared.stats.dropped(cause, 1),
            Offer::Pressed => pressed.push(session.clone()),
            _ => {}
        }
    }

    /// Removes subscriptions; unknown filters are not an error (MQTT-3.10.4-5).
    /// Returns whether each existed, or `None` if connection `conn` no
    /// longer owns the session.
    pub fn unsubscribe(
        &self,
        client_id: &Arc<str>,
        session: &SessionHandle,
        conn: u64,
        filters: &[String],
    ) -> Option<(Vec<bool>, Ticket)> {
        let mut s = session.lock_owned(conn)?;
        let existed = filters.iter().map(|f| s.session.unsubscribe(f)).collect();
        let mut trie = self.subscriptions_mut();
        for filter in filters {
            self.remove_slot(&mut trie, filter, client_id);
        }
        Some((existed, s.commit()))
    }

    /// The subscriptions, to change them; the change is counted.
    fn subscriptions_mut(&self) -> RwLockWriteGuard<'_, Trie<Subscriber>> {
        let trie = write(&self.shared.subscriptions);
        self.shared.subscriptions_changed.fetch_add(1, Ordering::AcqRel);
        trie
    }

    /// The rules deliveries are checked against, when an ACL is in force.
    pub(crate) fn acl(&self) -> Option<Arc<Security>> {
        Some(read(&self.shared.security).clone()).filter(|s| s.has_acl())
    }

    /// Routes a message to every matching subscription, once per client at
    /// the highest QoS among its matching subscriptions (MQTT-3.3.5-1),
    /// reduced to the published QoS. `retain` also stores it as retained.
    /// The ticket says when every durable copy is committed. Publishers
    /// that do not wait for full queues (the will, `$SYS`) use this.
    pub fn publish(&self, message: Message, retain: bool) -> Ticket {
        let routing = self.publish_from(None, message, retain, None, &mut Vec::new(), false);
        routing.retained.max(routing.copies)
    }

    /// [`Broker::publish`] for a client's PUBLISH: `pressed` gets every
    /// session whose full queue took the message anyway because its client
    /// is reading ([`Offer::Pressed`]); the publisher's connection stops
    /// reading until they have room. Everything the message changes in the
    /// store commits in one transaction. A subscription with No Local does
    /// not get what its own client (`from`) published (MQTT-3.8.3-3); with
    /// Retain As Published a copy keeps the RETAIN flag (3.8.3.1); each copy
    /// carries the identifiers of the client's matching subscriptions
    /// (MQTT-3.3.4-3). A `receipt` slot gets one once a QoS 1 copy is
    /// stored; it counts the stored copies, which
    /// the PUBACK may wait for instead of their commit (see [`Receipt`]).
    /// With `defer`, inside a connection's [`Turn`](crate::deferred::Turn),
    /// QoS 0 and 1 copies are delivered at the turn's end, and a stored
    /// copy's commit is the turn's (see [`crate::deferred`]).
    pub fn publish_from(
        &self,
        from: Option<&str>,
        message: Message,
        retain: bool,
        receipt: Option<&mut Option<Arc<Receipt>>>,
        pressed: &mut Vec<Arc<SessionHandle>>,
        defer: bool,
    ) -> Routing {
        let Some(peers) = self.shared.peers.get() else {
            return self.route(message, retain, receipt, pressed, defer, Scope::Local { from, except: &[] });
        };
        let _gate = self.gate();
        let Forward { receipt: forwarded, elsewhere } = peers.forward(&message, retain);
        let scope = Scope::Local { from, except: &elsewhere };
        Routing { forwarded, ..self.route(message, retain, receipt, pressed, defer, scope) }
    }

    /// [`Broker::publish_from`] on this node only.
    fn route(
        &self,
        message: Message,
        retain: bool,
        mut receipt: Option<&mut Option<Arc<Receipt>>>,
        pressed: &mut Vec<Arc<SessionHandle>>,
        defer: bool,
        scope: Scope<'_>,
    ) -> Routing {
        // QoS 0 copies are never stored: only a retained or QoS 1/2 message
        // can change the store in more than one append.
        let stored = retain || message.qos != QoS::AtMostOnce;
        let _hold = self.shared.store.as_ref().filter(|_| stored).map(Persistence::hold);
        let mut ticket = Ticket::default();
        let mut retained_ticket = Ticket::default();
        if retain {
            retained_ticket = self.keep_retained(&message);
        }
        // In a connection's turn, a message to the same topic as the last
        // goes to the same sessions unless a subscription changed since.
        let defer = defer && crate::deferred::open();
        if defer {
            let generation = self.shared.subscriptions_changed.load(Ordering::Acquire);
            if let Some(routed) =
                crate::deferred::defer_again(self, &message, generation, receipt.as_deref_mut(), pressed)
            {
                return Routing {
                    retained: retained_ticket,
                    copies: deferred_copies(&receipt),
                    routed,
                    forwarded: None,
                };
            }
        }
        let mut targets: Vec<Target> = Vec::new();
        let mut shared: Vec<SharedMatch> = Vec::new();
        let generation = {
            let trie = read(&self.shared.subscriptions);
            trie.for_each_match(&message.topic, |client, s| match &s.share {
                None if scope.plain()
                    && scope.admits(client)
                    && !(s.sub.options.no_local && scope.from() == Some(&**client)) =>
                {
                    targets.push((s.session.clone(), s.sub))
                }
                None => {}
                Some(share) if scope.group(&share.group) && scope.admits(&share.client) => {
                    shared.push((share.group.clone(), s.session.clone(), s.sub, share.client.clone()))
                }
                Some(_) => {}
            });
            // Read under the lock that every change takes to write.
            self.shared.subscriptions_changed.load(Ordering::Acquire)
        };
        targets.sort_unstable_by_key(|(s, sub)| (Arc::as_ptr(s), sub.id, std::cmp::Reverse(sub.options.qos)));
        if defer && shared.is_empty() {
            match crate::deferred::defer_matched(self, &message, generation, targets, receipt.as_deref_mut(), pressed) {
                Ok(routed) => {
                    return Routing {
                        retained: retained_ticket,
                        copies: deferred_copies(&receipt),
                        routed,
                        forwarded: None,
                    };
                }
                Err(back) => targets = back,
            }
        }
        // What an earlier message deferred goes first: a session gets one
        // publisher's messages in order.
        crate::deferred::flush(self, pressed);
        let security = self.acl();
        let mut routed = 0;
        if !shared.is_empty() {
            // One copy per group (4.8.2), to the member the strategy picks.
            shared.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.3.cmp(&b.3)));
            for group in shared.chunk_by(|a, b| a.0 == b.0) {
                let pick = self.pick(&group[0].0, group.iter().map(|(_, session, ..)| session));
                let (name, session, sub, _) = &group[pick];
                let copy = Message {
                    qos: message.qos.min(sub.options.qos),
                    retain: sub.options.retain_as_published && message.retain,
                    subscription_id: sub.id,
                    shared: Some(name.clone()),
                    ..message.clone()
                };
                let (offer, t) = session.deliver(copy, security.as_deref(), None);
                self.count_offer(offer, session, pressed);
                ticket = ticket.max(t);
                routed += 1;
            }
        }
        for (session, copy) in copies(&targets, &message) {
            let (offer, t) = session.deliver(copy, security.as_deref(), receipt.as_deref_mut());
            self.count_offer(offer, session, pressed);
            ticket = ticket.max(t);
            routed += 1;
        }
        Routing { retained: retained_ticket, copies: ticket, routed, forwarded: None }
    }

    /// The member of shared subscription `group` that gets the next message,
    /// by the configured strategy: among `members`, those connected with
    /// room in their queue first, then connected ones, then any.
    fn pick<'a>(&self, group: &Arc<str>, members: impl Iterator<Item = &'a Arc<SessionHandle>>) -> usize {
        let ranks: Vec<u8> = members
            .map(|session| {
                let s = session.lock();
                match (s.owner != 0, s.session.has_room()) {
                    (true, true) => 2,
                    (true, false) => 1,
                    (false, _) => 0,
                }
            })
            .collect();
        let best = ranks.iter().copied().max().unwrap_or(0);
        let n = ranks.len();
        let mut cursors = lock(&self.shared.share_cursors);
        let cursor = cursors.entry(group.clone()).or_insert(0);
        let start = match self.shared.config.shared_subscription_strategy {
            ShareStrategy::Random => random_below(n),
            ShareStrategy::RoundRobin | ShareStrategy::Sticky => *cursor % n,
        };
        let chosen = (0..n).map(|i| (start + i) % n).find(|&i| ranks[i] == best).unwrap_or(0);
        *cursor = match self.shared.config.shared_subscription_strategy {
            ShareStrategy::Sticky => chosen,
            _ => chosen + 1,
        };
        chosen
    }

    /// Hands messages a leaving member of a shared subscription had not
    /// finished with to another member of their group (4.8.2); with no
    /// other member, back to `leaving` (kept if its session persists).
    fn reroute(&self, leaving: &Arc<SessionHandle>, messages: Vec<Message>) {
        let security = self.acl();
        for message in messages {
            let Some(group) = message.shared.clone() else { continue };
            let mut members: Vec<(Arc<SessionHandle>, Subscription, Arc<str>)> = Vec::new();
            read(&self.shared.subscriptions).for_each_match(&message.topic, |_, s| {
                if let Some(share) = &s.share
                    && share.group == group
                    && !Arc::ptr_eq(&s.session, leaving)
                {
                    members.push((s.session.clone(), s.sub, share.client.clone()));
                }
            });
            members.sort_unstable_by(|a, b| a.2.cmp(&b.2));
            let (target, qos) = match members.is_empty() {
                true => (leaving.clone(), message.qos),
                false => {
                    let pick = self.pick(&group, members.iter().map(|(session, ..)| session));
                    (members[pick].0.clone(), message.qos.min(members[pick].1.options.qos))
                }
            };
            let (offer, _) = target.deliver(Message { qos, ..message }, security.as_deref(), None);
            if let Offer::Dropped(cause) = offer {
                self.shared.stats.dropped(cause, 1);
            }
        }
    }
}

/// A number below `n` (at least 1), for the random share strategy: not
/// cryptographic, only spread.
fn random_below(n: usize) -> usize {
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    (x % n.max(1) as u64) as usize
}

/// The copies of `message` for its matched `targets` (sorted by session,
/// identifier, then QoS from the highest): one per session and
/// Subscription Identifier, at the highest QoS of those matching
/// subscriptions (the first after the sort). A 3.1.1 session (no
/// identifiers) gets one copy (MQTT-3.3.5-1); a 5.0 one with overlapping
/// identified subscriptions one copy each, every copy with its one
/// identifier (MQTT-3.3.4-5), as Mosquitto sends them: libmosquitto
/// refuses a PUBLISH with more than one.
pub(crate) fn copies<'a>(
    targets: &'a [Target],
    message: &'a Message,
) -> impl Iterator<Item = (&'a Arc<SessionHandle>, Message)> + 'a {
    groups(targets).map(move |group| {
        let (session, first) = &group[0];
        let rap = group.iter().any(|(_, sub)| sub.options.retain_as_published);
        let copy = Message {
            qos: message.qos.min(first.options.qos),
            retain: rap && message.retain,
            subscription_id: first.id,
            ..message.clone()
        };
        (session, copy)
    })
}

/// What deferred copies' acknowledgement waits for: the turn's commit
/// ([`crate::deferred::TURN`]) once a receipt counts stored copies.
fn deferred_copies(receipt: &Option<&mut Option<Arc<Receipt>>>) -> Ticket {
    match receipt.as_deref() {
        Some(Some(_)) => crate::deferred::TURN,
        _ => Ticket::default(),
    }
}

/// A matched session, and the subscription that matched.
pub(crate) type Target = (Arc<SessionHandle>, Subscription);

/// The matched targets that get one copy: the same session and identifier.
pub(crate) fn groups(targets: &[Target]) -> std::slice::ChunkBy<'_, Target, impl FnMut(&Target, &Target) -> bool> {
    targets.chunk_by(|a, b| Arc::ptr_eq(&a.0, &b.0) && a.1.id == b.1.id)
}

/// Where a routed message went, and the commits its acknowledgement waits for.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// The commit of its retained copy (must be durable before the PUBACK).
    pub retained: Ticket,
    /// The commit of its copies in persistent sessions.
    pub copies: Ticket,
    /// Sessions it was routed to.
    pub routed: usize,
    /// Completed once the other nodes of a cluster can read it (a QoS 1
    /// or 2 message forwarded to any).
    pub forwarded: Option<Arc<Receipt>>,
}
