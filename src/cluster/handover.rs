//! A persistent session moving between two live nodes without losing what
//! is published meanwhile (`docs/cluster.md`, "Sessions").
//!
//! The other nodes learn that the new owner subscribes to the session's
//! filters a moment after the CONNECT there took it: until they do, they
//! send what matches to the old owner only. So the old owner keeps, for
//! [`WINDOW`], a note of each session it handed over ([`Handed`]) and its
//! routes for those filters, and passes on to the new owner what matches
//! and the publishing node did not send there itself. The new owner, for
//! its part, routes nothing from its stream while a claim of its that may
//! have taken a session is unanswered or not adopted yet ([`Claims`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long (in the old owner's stream: by the Redis time of its entries)
/// a session handed over is passed on: far longer than a route change
/// takes to reach every node and what they decided before it to be
/// written, even behind a slow node.
pub(super) const WINDOW: Duration = Duration::from_secs(60);

/// Sessions handed over at most (a note beyond it is not kept: what a
/// node still sends here for it is not passed on).
const MAX_HANDED: usize = 100_000;

/// Where a message for a session handed over goes: its new owner, its
/// client id, and the fencing token of the claim that took it (the new
/// owner routes it only while that claim is its newest of the id).
#[derive(Clone)]
pub(super) struct To {
    pub owner: Arc<str>,
    pub id: Arc<str>,
    pub token: u64,
}

/// A session this node held that a CONNECT at `owner` took over.
pub(super) struct Handed {
    pub to: To,
    /// Its subscriptions that are not shared (this node keeps routing them
    /// here meanwhile).
    pub filters: Vec<String>,
    /// Where the takeover notice is in this node's stream.
    pub notice: (u64, u64),
    pub at: Instant,
    /// Whether the new owner's marker was read ([`super::Out::Adopted`]):
    /// what it published after it routed to the session itself.
    pub adopted: bool,
}

impl Handed {
    fn matches(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| crate::topic::matches(f, topic))
    }

    /// Whether a message on `topic` from node `from` (`None`: published
    /// here), sent there to the nodes for which `direct` is true, goes on
    /// to the new owner from here.
    pub fn passes_on(&self, topic: &str, from: Option<&str>, direct: impl Fn(&str) -> bool) -> bool {
        if !self.matches(topic) {
            return false;
        }
        match from {
            Some(from) if *from == *self.to.owner => !self.adopted,
            _ => !direct(&self.to.owner),
        }
    }

    /// Whether the note is past its window: an entry of this node's stream
    /// at `reached` (Redis time), or (with nothing read) wall time twice
    /// over.
    fn over(&self, reached: Option<(u64, u64)>) -> bool {
        let window = WINDOW.as_millis() as u64;
        match reached {
            Some((ms, _)) => ms >= self.notice.0.saturating_add(window),
            None => self.at.elapsed() >= WINDOW * 2,
        }
    }
}

/// The sessions handed over from here, newest last.
#[derive(Default)]
pub(super) struct Handing {
    notes: Mutex<Vec<Handed>>,
    /// Whether there is any (read on every publish).
    any: std::sync::atomic::AtomicBool,
}

impl Handing {
    fn notes(&self) -> std::sync::MutexGuard<'_, Vec<Handed>> {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps `handed`; gives it back if there are too many.
    pub fn add(&self, handed: Handed) -> Result<(), Handed> {
        let mut notes = self.notes();
        if notes.len() >= MAX_HANDED {
            return Err(handed);
        }
        notes.push(handed);
        self.any.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Takes out the notes `gone` says, returns them.
    pub fn take(&self, mut gone: impl FnMut(&Handed) -> bool) -> Vec<Handed> {
        if !self.any() {
            return Vec::new();
        }
        let mut notes = self.notes();
        let mut taken = Vec::new();
        let mut at = 0;
        while at < notes.len() {
            match gone(&notes[at]) {
                true => taken.push(notes.remove(at)),
                false => at += 1,
            }
        }
        self.any.store(!notes.is_empty(), std::sync::atomic::Ordering::Release);
        taken
    }

    /// The notes past their window (see [`Handed::over`]).
    pub fn expired(&self, reached: Option<(u64, u64)>) -> Vec<Handed> {
        if !self.any() {
            return Vec::new();
        }
        self.take(|h| h.over(reached))
    }

    /// Each session handed over that a message on `topic` from `from` goes
    /// on to (see [`Handed::passes_on`]).
    pub fn passed_on(&self, topic: &str, from: Option<&str>, direct: impl Fn(&str) -> bool) -> Vec<To> {
        if !self.any() {
            return Vec::new();
        }
        let notes = self.notes();
        notes.iter().filter(|h| h.passes_on(topic, from, &direct)).map(|h| h.to.clone()).collect()
    }

    /// Where `id` went, if it was handed over from here.
    pub fn owner_of(&self, id: &str) -> Option<To> {
        if !self.any() {
            return None;
        }
        self.notes().iter().rev().find(|h| *h.to.id == *id).map(|h| h.to.clone())
    }

    /// The new owner's marker for `id` was read.
    pub fn adopted(&self, id: &str) {
        if let Some(h) = self.notes().iter_mut().rev().find(|h| *h.to.id == *id) {
            h.adopted = true;
        }
    }
}

/// This node's claims that may take a session, unanswered or not adopted
/// yet, by number.
#[derive(Default)]
pub(super) struct Claims {
    state: Mutex<(u64, BTreeSet<u64>)>,
    done: Condvar,
}

/// One claim of [`Claims`]: it ends when dropped.
pub(super) struct InFlight {
    number: u64,
    of: Arc<Claims>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.of.state.lock().unwrap_or_else(PoisonError::into_inner).1.remove(&self.number);
        self.of.done.notify_all();
    }
}

impl Claims {
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        let number = state.0;
        state.1.insert(number);
        InFlight { number, of: self.clone() }
    }

    /// Waits, up to `timeout`, until every claim made before now has
    /// ended: entries read from the stream before this call may have been
    /// written after such a claim took a session, and must reach it. Later
    /// claims are not waited for (what was read came before them).
    /// `false` if the time ran out.
    pub fn wait_for_earlier(&self, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let before = state.0;
        let earlier = |s: &mut (u64, BTreeSet<u64>)| s.1.first().is_some_and(|&n| n <= before);
        let waited = self.done.wait_timeout_while(state, timeout, earlier).unwrap_or_else(PoisonError::into_inner);
        !waited.1.timed_out()
    }
}
