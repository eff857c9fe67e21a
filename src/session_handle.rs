//! A session shared between its connection and the publishers routing to
//! it: the lock, the bell that wakes the connection, and the hand-off of the
//! session's journaled changes to the store whenever the lock is released.

use crate::security::Security;
use crate::session::{Message, Offer, Receipt, Session};
use crate::signal::Signal;
use crate::stats::DropCause;
use crate::store::{Persistence, Ticket};
use event_listener::{Event, EventListener};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// One client's session behind a lock.
#[derive(Debug)]
pub struct SessionHandle {
    /// The client this session belongs to, for log lines.
    client_id: Arc<str>,
    state: Mutex<Owned>,
    /// Rung (coalescing) when a message is queued for an online client.
    bell: Signal,
    /// Notified when publishers held back by this session may go on.
    room: Event,
    /// Where journaled changes go (persistent sessions with a store).
    store: Option<Persistence>,
}

/// A session and the id of the connection that owns it (0: offline).
#[derive(Debug)]
pub struct Owned {
    /// The connection attached, or 0.
    pub owner: u64,
    /// The user name of the last connection (ACL checks on delivery).
    pub username: Option<Arc<str>>,
    /// The listener of the last connection (its ACL, with per-listener settings).
    pub listener: usize,
    /// The MQTT session state.
    pub session: Session,
}

/// The locked session; its journal goes to the store when the guard is
/// committed or dropped, so no change is ever left behind.
pub struct Guard<'a> {
    guard: MutexGuard<'a, Owned>,
    store: Option<&'a Persistence>,
}

impl Guard<'_> {
    /// Hands the journal to the store and unlocks; the ticket says when the
    /// changes are durable.
    pub fn commit(mut self) -> Ticket {
        self.flush()
    }

    /// Hands the journal to the store, keeping the lock.
    pub fn flush(&mut self) -> Ticket {
        let store = self.store;
        // Most unlocks change nothing durable (clean sessions, QoS 0): an
        // empty journal skips the store's lock, which every connection
        // shares.
        self.guard.session.drain_journal(|ops| match store {
            Some(store) => store.append(ops),
            None => Ticket::default(),
        })
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Deref for Guard<'_> {
    type Target = Owned;
    fn deref(&self) -> &Owned {
        &self.guard
    }
}

impl DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Owned {
        &mut self.guard
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.guard.fmt(f)
    }
}

impl SessionHandle {
    /// Wraps a session; `store` receives its journal (kept only for a
    /// durable session: no other is ever journaled).
    pub fn new(client_id: Arc<str>, session: Session, store: Option<Persistence>) -> Arc<SessionHandle> {
        let store = store.filter(|_| session.is_durable());
        let state = Mutex::new(Owned { owner: 0, username: None, listener: 0, session });
        Arc::new(SessionHandle { client_id, state, bell: Signal::new(), room: Event::new(), store })
    }

    /// Locks the session.
    pub fn lock(&self) -> Guard<'_> {
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Guard { guard, store: self.store.as_ref() }
    }

    /// Locks the session if connection `conn` still owns it; `None` means the
    /// client was taken over by a newer connection.
    pub fn lock_owned(&self, conn: u64) -> Option<Guard<'_>> {
        Some(self.lock()).filter(|g| g.owner == conn)
    }

    /// Completes when `kicked` is raised (`true`) or, if `take`, messages
    /// were queued (`false`), for connection `conn`: the bell wakes only
    /// the connection that claimed it last (see [`SessionHandle::claim_bell`]).
    pub fn rung_unless<'a>(&'a self, kicked: &'a Signal, take: bool, conn: u64) -> crate::signal::TakeUnless<'a> {
        self.bell.take_unless(kicked, take, conn)
    }

    /// Makes connection `conn` the one the bell wakes (on attach, under the
    /// broker's registry lock).
    pub fn claim_bell(&self, conn: u64) {
        self.bell.claim(conn);
    }

    /// Whether messages were queued since the bell was last taken (a cheap
    /// look, without taking it).
    pub fn is_rung(&self) -> bool {
        self.bell.is_raised()
    }

    /// Whether the session's changes may go to the store (it was made
    /// durable); a session that does not changes nothing durable on delivery.
    pub fn journals(&self) -> bool {
        self.store.is_some()
    }

    /// The client this session belongs to.
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// Starts listening for room (see [`SessionHandle::wake_publishers`]);
    /// check [`Session::has_room`] after this, then await the listener.
    pub fn listen_for_room(&self) -> EventListener {
        self.room.listen()
    }

    /// Wakes every publisher waiting for room in this session.
    pub fn wake_publishers(&self) {
        self.room.notify(usize::MAX);
    }

    /// Offers a message and rings the bell if an online client should send
    /// it; drops are logged at most once per second per client. With an ACL,
    /// a message the client may not read is dropped (cause `acl`), not logged.
    pub fn deliver(
        &self,
        message: Message,
        acl: Option<&Security>,
        receipt: Option<&mut Option<Arc<Receipt>>>,
    ) -> (Offer, Ticket) {
        let (offer, online, report, ticket) = {
            let mut s = self.lock();
            let offer = self.offer(&mut s, message, acl, receipt);
            let report = matches!(offer, Offer::Dropped(c) if c != DropCause::Acl)
                .then(|| s.session.drop_report(Instant::now()));
            let online = s.owner != 0;
            // Appended under the session's lock: a later change to the same
            // session (its sending, its acknowledgement) is appended after.
            let ticket = s.flush();
            if matches!(offer, Offer::Queued | Offer::Pressed) {
                s.session.stamp_last(ticket);
            }
            (offer, online, report.flatten(), ticket)
        };
        if matches!(offer, Offer::Queued | Offer::Pressed) && online {
            self.bell.raise();
        }
        self.report(report);
        (offer, ticket)
    }

    /// [`SessionHandle::deliver`] for several copies with one lock, one
    /// append of what they journal (the ticket says when it is durable)
    /// and at most one ring; `counted` sees each one's offer.
    pub fn deliver_all(
        &self,
        copies: &mut Vec<crate::deferred::Copy>,
        acl: Option<&Security>,
        mut counted: impl FnMut(Offer),
    ) -> Ticket {
        let (ring, report, ticket) = {
            let mut s = self.lock();
            let (mut queued, mut dropped) = (false, false);
            for copy in copies.drain(..) {
                let mut slot = copy.receipt;
                let receipt = if slot.is_some() { Some(&mut slot) } else { None };
                let offer = self.offer(&mut s, copy.message, acl, receipt);
                queued |= matches!(offer, Offer::Queued | Offer::Pressed);
                dropped |= matches!(offer, Offer::Dropped(c) if c != DropCause::Acl);
                counted(offer);
            }
            let report = dropped.then(|| s.session.drop_report(Instant::now())).flatten();
            // Appended under the session's lock, as in `deliver`.
            let ticket = s.flush();
            (queued && s.owner != 0, report, ticket)
        };
        if ring {
            self.bell.raise();
        }
        self.report(report);
        ticket
    }

    /// Offers one message to the locked session; with an ACL, a message
    /// the client may not read is dropped (cause `acl`).
    fn offer(
        &self,
        s: &mut Guard<'_>,
        message: Message,
        acl: Option<&Security>,
        receipt: Option<&mut Option<Arc<Receipt>>>,
    ) -> Offer {
        if let Some(acl) = acl
            && !acl.can_read(s.listener, &self.client_id, s.username.as_deref(), &message.topic)
        {
            return Offer::Dropped(DropCause::Acl);
        }
        s.session.offer_counted(message, receipt)
    }

    fn report(&self, dropped: Option<u64>) {
        if let Some(count) = dropped {
            log::warn!("client {}: queue full, {count} message(s) dropped", self.client_id);
        }
    }
}

/// A publisher held back by a session whose queue it filled
/// ([`Offer::Pressed`]), until the session has room again or is marked
/// stuck.
pub struct Waiting {
    /// The session with a full queue.
    pub session: Arc<SessionHandle>,
    /// Its progress count when last looked at, and since when it stands.
    progress: u64,
    since: Instant,
}

impl Waiting {
    /// Waiting for `session`, from now.
    pub fn new(session: Arc<SessionHandle>) -> Waiting {
        let progress = session.lock().session.progress();
        Waiting { session, progress, since: Instant::now() }
    }

    /// `None` once the session has room, or once it made no progress for
    /// `timeout` (it is marked stuck then: its publishers go on and what
    /// does not fit in its queue is dropped); otherwise what to wait on,
    /// for at most how long, before looking again.
    pub fn look(&mut self, timeout: std::time::Duration) -> Option<(EventListener, std::time::Duration)> {
        let listener = self.session.listen_for_room();
        let (room, progress) = {
            let mut s = self.session.lock();
            let room = s.session.has_room();
            if !room {
                // Whoever drains the queue next wakes us, even if another
                // publisher's wake-up already went by.
                s.session.expect_waiter();
            }
            (room, s.session.progress())
        };
        if room {
            return None;
        }
        if progress != self.progress {
            (self.progress, self.since) = (progress, Instant::now());
        }
        let waited = self.since.elapsed();
        if waited < timeout {
            return Some((listener, timeout - waited));
        }
        if self.session.lock().session.mark_stuck() {
            log::warn!(
                "client {}: queue full and no progress for {timeout:?} (slow_consumer_timeout): publishers no longer wait for it, what does not fit is dropped",
                self.session.client_id()
            );
        }
        self.session.wake_publishers();
        None
    }

    /// Blocks this (non-async) thread until every session in `pressure` has
    /// room or is marked stuck, as a connection's reads pause.
    pub fn wait_all(pressure: Vec<Arc<SessionHandle>>, timeout: std::time::Duration) {
        use event_listener::Listener;
        // All from now, so that each one's timeout runs at once.
        let mut pressure: Vec<Waiting> = pressure.into_iter().map(Waiting::new).collect();
        while let Some(w) = pressure.last_mut() {
            match w.look(timeout) {
                None => drop(pressure.pop()),
                Some((listener, left)) => drop(listener.wait_timeout(left)),
            }
        }
    }
}
