//! The shared broker state: the session registry, the subscription trie,
//! retained messages, counters and the store, and routing between them.
//!
//! Locks are `std::sync` locks held for short sections and never across an
//! `.await`. Order: registry, then a session, then the trie; routing takes
//! the trie (read) and sessions one after the other, never nested.

use crate::config::Config;
use crate::error::OpenError;
use crate::packet::{QoS, SubackCode};
use crate::retain::{Retained, Scan};
use crate::security::{Guards, Hooks, Security};
use crate::session::{Message, Offer, Session};
use crate::session_handle::SessionHandle;
use crate::signal::Signal;
use crate::stats::{DropCause, Stats};
use crate::store::{Op, Persistence, RedbStore, Snapshot, Store, Ticket};
use crate::trie::Trie;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A handle to one broker's state; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// Client id → session, and the connection attached to it.
    registry: Mutex<HashMap<Arc<str>, Entry>>,
    /// Read on every PUBLISH, written on SUBSCRIBE: a read-mostly lock.
    subscriptions: RwLock<Trie<Subscriber>>,
    retained: RwLock<Retained>,
    stats: Stats,
    /// Source of connection ids; 0 means "no connection".
    next_connection: AtomicU64,
    /// Durable state, unless the broker runs in memory.
    store: Option<Persistence>,
    /// Password and ACL files in force; replaced on reload.
    security: RwLock<Arc<Security>>,
    /// The embedding application's hooks.
    hooks: RwLock<Option<Arc<dyn Hooks>>>,
}

struct Entry {
    session: Arc<SessionHandle>,
    /// A clean session (discarded when its connection ends).
    clean: bool,
    connection: Option<Attached>,
    /// When the last connection left (persistent sessions; for expiry).
    left: Option<SystemTime>,
}

/// The connection currently attached to a session.
struct Attached {
    id: u64,
    /// Raising it tells the connection to end (client takeover).
    kick: Arc<Signal>,
}

struct Subscriber {
    qos: QoS,
    session: Arc<SessionHandle>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Broker {
    /// Opens a broker as configured: reads the password and ACL files, and
    /// is durable in `data_dir` (restoring what is stored there), or in
    /// memory when `data_dir` is `None`.
    pub fn open(config: Config) -> Result<Broker, OpenError> {
        match config.data_dir.clone() {
            Some(dir) => {
                let security = Security::load(&config).map_err(OpenError::Config)?;
                let store = RedbStore::open(&dir, config.recover_store)?;
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
        for (topic, (qos, payload)) in snapshot.retained {
            retained.set(&Message { topic, payload, qos, retain: true });
        }
        let mut registry = HashMap::new();
        let mut trie = Trie::default();
        let now = SystemTime::now();
        for (id, stored) in snapshot.sessions {
            let left = now.checked_sub(Duration::from_secs(epoch_seconds(now).saturating_sub(stored.last_seen)));
            let session = Session::restore(id.clone(), stored, config.limits());
            let handle = SessionHandle::new(id.clone(), session, store.clone());
            for (filter, qos) in handle.lock().session.subscriptions() {
                trie.insert(filter, id.clone(), Subscriber { qos, session: handle.clone() });
            }
            registry.insert(id, Entry { session: handle, clean: false, connection: None, left });
        }
        let shared = Shared {
            config,
            registry: Mutex::new(registry),
            subscriptions: RwLock::new(trie),
            retained: RwLock::new(retained),
            stats: Stats::default(),
            next_connection: AtomicU64::new(1),
            store,
            security: RwLock::new(Arc::new(security)),
            hooks: RwLock::new(None),
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

    /// The store, when the broker is durable.
    pub fn store(&self) -> Option<&Persistence> {
        self.shared.store.as_ref()
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
        let online = registry.values().filter(|e| e.connection.is_some()).count();
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
        kick: Arc<Signal>,
    ) -> Attachment {
        self.attach_on(0, client_id, username, clean, conn, kick)
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
        kick: Arc<Signal>,
    ) -> Attachment {
        let mut registry = lock(&self.shared.registry);
        let previous = registry.remove(client_id);
        if let Some(Attached { kick, .. }) = previous.as_ref().and_then(|e| e.connection.as_ref()) {
            kick.raise();
        }
        let mut ops = Vec::new();
        let (session, session_present) = match previous {
            Some(e) if !clean && !e.session.lock().session.clean => (e.session, true),
            other => {
                if let Some(e) = other {
                    self.discard(client_id, &e.session, &mut ops);
                }
                let durable = !clean && self.shared.store.is_some();
                if durable {
                    ops.push(Op::Session(client_id.clone(), Some(epoch_seconds(SystemTime::now()))));
                }
                let session = Session::new(client_id.clone(), clean, self.shared.config.limits(), durable);
                (SessionHandle::new(client_id.clone(), session, self.shared.store.clone()), false)
            }
        };
        {
            let mut s = session.lock();
            s.owner = conn;
            s.username = username;
            s.listener = listener;
            s.session.set_online(true);
        }
        let ticket = self.append(ops);
        // A resumed session is persistent, as the CONNECT asked: `clean` either way.
        let entry =
            Entry { session: session.clone(), clean, connection: Some(Attached { id: conn, kick }), left: None };
        registry.insert(client_id.clone(), entry);
        Attachment { session, session_present, ticket }
    }

    /// Detaches connection `conn` from `client_id`'s session, unless a newer
    /// connection took it over. A clean session is discarded (MQTT-3.1.2-6);
    /// a persistent one stays, collecting messages for its client.
    pub fn detach(&self, client_id: &Arc<str>, conn: u64) {
        let mut registry = lock(&self.shared.registry);
        let Some(entry) = registry.get_mut(client_id) else { return };
        if entry.connection.as_ref().map(|a| a.id) != Some(conn) {
            return;
        }
        entry.connection = None;
        let clean = {
            let mut s = entry.session.lock();
            s.owner = 0;
            s.session.set_online(false);
            s.session.clean
        };
        // Publishers waiting for this client's queue to drain go on: an
        // offline session keeps what fits and drops the rest.
        entry.session.wake_publishers();
        let mut ops = Vec::new();
        if clean {
            let entry = registry.remove(client_id).expect("entry exists");
            self.discard(client_id, &entry.session, &mut ops);
        } else {
            let now = SystemTime::now();
            entry.left = Some(now);
            if self.shared.store.is_some() {
                ops.push(Op::Session(client_id.clone(), Some(epoch_seconds(now))));
            }
        }
        self.append(ops);
    }

    /// Removes persistent sessions whose client has been gone longer than
    /// `max_age` (Mosquitto's `persistent_client_expiration`).
    pub fn expire_sessions(&self, max_age: Duration) -> usize {
        let mut registry = lock(&self.shared.registry);
        let now = SystemTime::now();
        let expired: Vec<Arc<str>> = registry
            .iter()
            .filter(|(_, e)| e.left.is_some_and(|left| now.duration_since(left).unwrap_or_default() >= max_age))
            .map(|(id, _)| id.clone())
            .collect();
        let mut ops = Vec::new();
        for id in &expired {
            let entry = registry.remove(id).expect("listed above");
            let pending = entry.session.lock().session.pending();
            self.shared.stats.dropped(DropCause::Expired, pending as u64);
            self.discard(id, &entry.session, &mut ops);
            log::info!("session of client {id} expired after {max_age:?} offline");
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
        let mut trie = write(&self.shared.subscriptions);
        for filter in filters {
            trie.remove(&filter, client_id);
        }
    }

    /// Adds or replaces subscriptions (MQTT-3.8.4-3) and queues the retained
    /// messages they match (MQTT-3.3.1-6); returns one code per filter, or
    /// `None` if connection `conn` no longer owns the session (takeover).
    /// The trie is updated under the session lock, so a takeover that
    /// discards the session cannot leave a subscription behind.
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
        filters: &[(String, QoS)],
        pressed: &mut Vec<Arc<SessionHandle>>,
    ) -> Option<(Vec<SubackCode>, Ticket)> {
        let mut unique: Vec<(&str, QoS)> = Vec::with_capacity(filters.len());
        {
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(filters.len());
            for (filter, qos) in filters {
                match seen.get(filter.as_str()) {
                    Some(&i) => unique[i].1 = *qos,
                    None => {
                        seen.insert(filter, unique.len());
                        unique.push((filter, *qos));
                    }
                }
            }
        }
        let mut ticket = {
            let mut s = session.lock_owned(conn)?;
            unique.iter().for_each(|(f, qos)| s.session.subscribe(f, *qos));
            let mut trie = write(&self.shared.subscriptions);
            for (filter, qos) in &unique {
                trie.insert(filter, client_id.clone(), Subscriber { qos: *qos, session: session.clone() });
            }
            s.commit()
        };
        let security = self.acl();
        let _hold = self.shared.store.as_ref().map(Persistence::hold);
        for message in self.retained_for(&unique) {
            let (offer, t) = session.deliver(message, security.as_deref());
            self.count_offer(offer, session, pressed);
            ticket = ticket.max(t);
        }
        Some((filters.iter().map(|(_, qos)| SubackCode::Granted(*qos)).collect(), ticket))
    }

    /// The retained messages matching any of `filters`, each once at the
    /// highest QoS among the filters that match it, in topic order. The
    /// retained lock is taken for a bounded scan at a time, never for the
    /// whole set, and what is collected never exceeds the retained set, however
    /// many filters match the same topics.
    fn retained_for(&self, filters: &[(&str, QoS)]) -> Vec<Message> {
        /// Topics looked at per hold of the retained lock.
        const SCAN_BUDGET: usize = 1024;
        let mut found: Vec<Message> = Vec::new();
        // With more than one filter, a topic's place in `found`.
        let mut seen: HashMap<Arc<str>, usize> = HashMap::new();
        for (filter, qos) in filters {
            let mut from = None;
            loop {
                let scan = read(&self.shared.retained).scan(filter, from.as_ref(), SCAN_BUDGET, |m| {
                    let qos = m.qos.min(*qos);
                    if filters.len() == 1 {
                        return found.push(Message { qos, ..m.clone() });
                    }
                    match seen.get(&m.topic) {
                        Some(&i) => found[i].qos = found[i].qos.max(qos),
                        None => {
                            seen.insert(m.topic.clone(), found.len());
                            found.push(Message { qos, ..m.clone() });
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
    fn count_offer(&self, offer: Offer, session: &Arc<SessionHandle>, pressed: &mut Vec<Arc<SessionHandle>>) {
        match offer {
            Offer::Dropped(cause) => self.shared.stats.dropped(cause, 1),
            Offer::Pressed => pressed.push(session.clone()),
            _ => {}
        }
    }

    /// Removes subscriptions; unknown filters are not an error (MQTT-3.10.4-5).
    /// `None` if connection `conn` no longer owns the session.
    pub fn unsubscribe(
        &self,
        client_id: &Arc<str>,
        session: &SessionHandle,
        conn: u64,
        filters: &[String],
    ) -> Option<Ticket> {
        let mut s = session.lock_owned(conn)?;
        filters.iter().for_each(|f| s.session.unsubscribe(f));
        let mut trie = write(&self.shared.subscriptions);
        for filter in filters {
            trie.remove(filter, client_id);
        }
        Some(s.commit())
    }

    /// The rules deliveries are checked against, when an ACL is in force.
    fn acl(&self) -> Option<Arc<Security>> {
        Some(read(&self.shared.security).clone()).filter(|s| s.has_acl())
    }

    /// Routes a message to every matching subscription, once per client at
    /// the highest QoS among its matching subscriptions (MQTT-3.3.5-1),
    /// reduced to the published QoS. `retain` also stores it as retained.
    /// The ticket says when every durable copy is committed. Publishers
    /// that do not wait for full queues (the will, `$SYS`) use this.
    pub fn publish(&self, message: Message, retain: bool) -> Ticket {
        self.publish_from(message, retain, &mut Vec::new())
    }

    /// [`Broker::publish`] for a client's PUBLISH: `pressed` gets every
    /// session whose full queue took the message anyway because its client
    /// is reading ([`Offer::Pressed`]); the publisher's connection stops
    /// reading until they have room. Everything the message changes in the
    /// store commits in one transaction.
    pub fn publish_from(&self, message: Message, retain: bool, pressed: &mut Vec<Arc<SessionHandle>>) -> Ticket {
        // QoS 0 copies are never stored: only a retained or QoS 1/2 message
        // can change the store in more than one append.
        let stored = retain || message.qos != QoS::AtMostOnce;
        let _hold = self.shared.store.as_ref().filter(|_| stored).map(Persistence::hold);
        let mut ticket = Ticket::default();
        if retain {
            let mut retained = write(&self.shared.retained);
            retained.set(&message);
            let kept = (!message.payload.is_empty()).then(|| (message.qos, message.payload.clone()));
            ticket = self.append(vec![Op::Retain(message.topic.clone(), kept)]);
        }
        let security = self.acl();
        let mut targets: Vec<(Arc<SessionHandle>, QoS)> = Vec::new();
        read(&self.shared.subscriptions)
            .for_each_match(&message.topic, |_, s| targets.push((s.session.clone(), s.qos)));
        targets.sort_unstable_by_key(|(s, qos)| (Arc::as_ptr(s), std::cmp::Reverse(*qos)));
        targets.dedup_by(|later, first| Arc::ptr_eq(&later.0, &first.0));
        for (session, qos) in targets {
            let copy = Message { qos: message.qos.min(qos), retain: false, ..message.clone() };
            let (offer, t) = session.deliver(copy, security.as_deref());
            self.count_offer(offer, &session, pressed);
            ticket = ticket.max(t);
        }
        ticket
    }
}
