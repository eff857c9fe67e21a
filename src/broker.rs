//! The shared broker state: the session registry, the subscription trie,
//! retained messages and counters, and routing between them.
//!
//! Locks are `std::sync` locks held for short sections and never across an
//! `.await`. Order: registry, then a session or the trie; a session lock and
//! the trie lock are never held together.

use crate::config::Config;
use crate::packet::{QoS, SubackCode};
use crate::retain::Retained;
use crate::session::{Message, Offer, Session};
use crate::stats::Stats;
use crate::trie::Trie;
use async_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

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
}

struct Entry {
    session: Arc<SessionHandle>,
    connection: Option<Attached>,
}

/// The connection currently attached to a session.
struct Attached {
    id: u64,
    /// Closing it tells the connection to end (client takeover).
    kick: Sender<()>,
}

struct Subscriber {
    qos: QoS,
    session: Arc<SessionHandle>,
}

/// A session shared between its connection and the publishers routing to it.
#[derive(Debug)]
pub struct SessionHandle {
    /// The client this session belongs to, for log lines.
    client_id: Arc<str>,
    state: Mutex<Owned>,
    /// Rung (capacity 1, coalescing) when a message is queued for an online client.
    bell: (Sender<()>, Receiver<()>),
}

/// A session and the id of the connection that owns it (0: offline).
#[derive(Debug)]
pub struct Owned {
    /// The connection attached, or 0.
    pub owner: u64,
    /// The MQTT session state.
    pub session: Session,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SessionHandle {
    fn new(client_id: Arc<str>, session: Session) -> Arc<SessionHandle> {
        let state = Mutex::new(Owned { owner: 0, session });
        Arc::new(SessionHandle {
            client_id,
            state,
            bell: async_channel::bounded(1),
        })
    }

    /// Locks the session if connection `conn` still owns it; `None` means the
    /// client was taken over by a newer connection.
    pub fn lock_owned(&self, conn: u64) -> Option<MutexGuard<'_, Owned>> {
        let guard = lock(&self.state);
        (guard.owner == conn).then_some(guard)
    }

    /// A receiver that wakes when messages are queued for the session.
    pub fn bell(&self) -> Receiver<()> {
        self.bell.1.clone()
    }

    /// Offers a message and rings the bell if an online client should send
    /// it; drops are logged at most once per second per client.
    fn deliver(&self, message: Message) -> Offer {
        let (offer, online, report) = {
            let mut s = lock(&self.state);
            let offer = s.session.offer(message);
            let report = (offer == Offer::Dropped).then(|| s.session.drop_report(Instant::now()));
            (offer, s.owner != 0, report.flatten())
        };
        if offer == Offer::Queued && online {
            let _ = self.bell.0.try_send(());
        }
        if let Some(count) = report {
            log::warn!(
                "client {}: queue full, {count} message(s) dropped",
                self.client_id
            );
        }
        offer
    }
}

/// The session a new connection gets.
pub struct Attachment {
    /// The session, persistent or fresh.
    pub session: Arc<SessionHandle>,
    /// Whether an existing session was resumed (CONNACK Session Present).
    pub session_present: bool,
}

impl Broker {
    /// A broker with no clients, sessions or retained messages.
    pub fn new(config: Config) -> Broker {
        let shared = Shared {
            config,
            registry: Mutex::default(),
            subscriptions: RwLock::default(),
            retained: RwLock::default(),
            stats: Stats::default(),
            next_connection: AtomicU64::new(1),
        };
        Broker {
            shared: Arc::new(shared),
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

    /// Clients known to the broker: connected, plus persistent sessions
    /// waiting for their client.
    pub fn client_count(&self) -> usize {
        lock(&self.shared.registry).len()
    }

    /// (filter, client) subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.shared
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Retained messages.
    pub fn retained_count(&self) -> usize {
        self.shared
            .retained
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Attaches connection `conn` to `client_id`'s session: takes over (kicks)
    /// any connection already using the id (MQTT-3.1.4-2), resumes a
    /// persistent session unless `clean`, otherwise starts a new one
    /// (MQTT-3.1.2-4/-6).
    pub fn attach(
        &self,
        client_id: &Arc<str>,
        clean: bool,
        conn: u64,
        kick: Sender<()>,
    ) -> Attachment {
        let mut registry = lock(&self.shared.registry);
        let previous = registry.remove(client_id);
        if let Some(Attached { kick, .. }) = previous.as_ref().and_then(|e| e.connection.as_ref()) {
            kick.close();
        }
        let (session, session_present) = match previous {
            Some(e) if !clean && !lock(&e.session.state).session.clean => (e.session, true),
            other => {
                if let Some(e) = other {
                    self.drop_subscriptions(client_id, &e.session);
                }
                (
                    SessionHandle::new(
                        client_id.clone(),
                        Session::new(clean, self.shared.config.limits()),
                    ),
                    false,
                )
            }
        };
        {
            let mut s = lock(&session.state);
            s.owner = conn;
            s.session.set_online(true);
        }
        let connection = Some(Attached { id: conn, kick });
        registry.insert(
            client_id.clone(),
            Entry {
                session: session.clone(),
                connection,
            },
        );
        Attachment {
            session,
            session_present,
        }
    }

    /// Detaches connection `conn` from `client_id`'s session, unless a newer
    /// connection took it over. A clean session is discarded (MQTT-3.1.2-6);
    /// a persistent one stays, collecting messages for its client.
    pub fn detach(&self, client_id: &Arc<str>, conn: u64) {
        let mut registry = lock(&self.shared.registry);
        let Some(entry) = registry.get_mut(client_id) else {
            return;
        };
        if entry.connection.as_ref().map(|a| a.id) != Some(conn) {
            return;
        }
        entry.connection = None;
        let clean = {
            let mut s = lock(&entry.session.state);
            s.owner = 0;
            s.session.set_online(false);
            s.session.clean
        };
        if clean {
            let entry = registry.remove(client_id).expect("entry exists");
            self.drop_subscriptions(client_id, &entry.session);
        }
    }

    fn drop_subscriptions(&self, client_id: &Arc<str>, session: &SessionHandle) {
        let filters: Vec<String> = lock(&session.state)
            .session
            .filters()
            .map(str::to_owned)
            .collect();
        let mut trie = self
            .shared
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for filter in filters {
            trie.remove(&filter, client_id);
        }
    }

    /// Adds or replaces subscriptions (MQTT-3.8.4-3) and queues the retained
    /// messages they match (MQTT-3.3.1-6); returns one code per filter.
    pub fn subscribe(
        &self,
        client_id: &Arc<str>,
        session: &Arc<SessionHandle>,
        filters: &[(String, QoS)],
    ) -> Vec<SubackCode> {
        {
            let mut s = lock(&session.state);
            filters
                .iter()
                .for_each(|(f, qos)| s.session.subscribe(f, *qos));
        }
        {
            let mut trie = self
                .shared
                .subscriptions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (filter, qos) in filters {
                let subscriber = Subscriber {
                    qos: *qos,
                    session: session.clone(),
                };
                trie.insert(filter, client_id.clone(), subscriber);
            }
        }
        let retained = self
            .shared
            .retained
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (filter, qos) in filters {
            retained.for_each_match(filter, |m| {
                session.deliver(Message {
                    qos: m.qos.min(*qos),
                    ..m.clone()
                });
            });
        }
        filters
            .iter()
            .map(|(_, qos)| SubackCode::Granted(*qos))
            .collect()
    }

    /// Removes subscriptions; unknown filters are not an error (MQTT-3.10.4-5).
    pub fn unsubscribe(&self, client_id: &Arc<str>, session: &SessionHandle, filters: &[String]) {
        {
            let mut s = lock(&session.state);
            filters.iter().for_each(|f| s.session.unsubscribe(f));
        }
        let mut trie = self
            .shared
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for filter in filters {
            trie.remove(filter, client_id);
        }
    }

    /// Routes a message to every matching subscription, once per client at
    /// the highest QoS among its matching subscriptions (MQTT-3.3.5-1),
    /// reduced to the published QoS. `retain` also stores it as retained.
    pub fn publish(&self, message: Message, retain: bool) {
        if retain {
            self.shared
                .retained
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .set(&message);
        }
        let mut targets: Vec<(Arc<SessionHandle>, QoS)> = Vec::new();
        {
            let trie = self
                .shared
                .subscriptions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            trie.for_each_match(&message.topic, |_, s| {
                targets.push((s.session.clone(), s.qos))
            });
        }
        targets.sort_unstable_by_key(|(s, qos)| (Arc::as_ptr(s), std::cmp::Reverse(*qos)));
        targets.dedup_by(|later, first| Arc::ptr_eq(&later.0, &first.0));
        for (session, qos) in targets {
            let copy = Message {
                qos: message.qos.min(qos),
                retain: false,
                ..message.clone()
            };
            if session.deliver(copy) == Offer::Dropped {
                self.shared.stats.dropped();
            }
        }
    }
}
