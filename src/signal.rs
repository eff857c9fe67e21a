//! A raised/lowered flag that one task can await: the session's doorbell,
//! a connection's takeover notice, a delayed will's verdict. An atomic and
//! one waker held inline, so waiting allocates nothing. (A channel is
//! cache-padded to about 700 bytes; an `event_listener::Event` allocated
//! its shared state and a listener per waiter, 144 bytes of every idle
//! connection.)
//!
//! One task waits at a time. A session's bell is claimed by the connection
//! attached to it ([`Signal::claim`], under the broker's registry lock):
//! only that connection's waits register on it or take its ring, so a
//! connection taken over never takes the bell from its successor, even
//! when it polls once more on its way out, whichever connection id is higher.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// A flag to raise, wait for, and (as a doorbell) take down again.
#[derive(Debug, Default)]
pub struct Signal {
    raised: AtomicBool,
    waiter: Mutex<Waiter>,
}

/// A connection's takeover notice (the [`Signal`] it derefs to) and its
/// read gate's state, in one allocation: two `Arc`s of every connection
/// cost 32 bytes more. Waking it as a waker opens the gate.
#[derive(Debug, Default)]
pub struct Kick {
    signal: Signal,
    readable: crate::gate::Readable,
}

impl Kick {
    /// A lowered notice and an open gate.
    pub fn new() -> Kick {
        Kick::default()
    }
}

impl std::ops::Deref for Kick {
    type Target = Signal;
    fn deref(&self) -> &Signal {
        &self.signal
    }
}

impl AsRef<crate::gate::Readable> for Kick {
    fn as_ref(&self) -> &crate::gate::Readable {
        &self.readable
    }
}

impl futures::task::ArcWake for Kick {
    fn wake_by_ref(arc_self: &std::sync::Arc<Self>) {
        arc_self.readable.open();
    }
}

/// The task to wake, and who may wait ([`ANYONE`], or the claimant).
#[derive(Debug)]
struct Waiter {
    claimant: u64,
    waker: Option<Waker>,
}

impl Default for Waiter {
    fn default() -> Waiter {
        Waiter { claimant: ANYONE, waker: None }
    }
}

/// A signal no one claimed: any task may wait on it.
const ANYONE: u64 = u64::MAX;

impl Signal {
    /// A lowered signal.
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Raises the signal and wakes its waiter. Raising a raised signal
    /// wakes no one: its waiter was woken when it went up (a connection
    /// busy writing does not take its bell, and is not woken again for
    /// every message queued meanwhile).
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Wakes the waiter without raising the signal: it looks at whatever
    /// else it waits for (a connection, at the broker's shutdown flag).
    pub fn wake(&self) {
        let waker = self.waiter.lock().unwrap_or_else(PoisonError::into_inner).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the signal is raised now.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// From now on only waits by `claimant` register (see
    /// [`Signal::take_unless`]); the last waiter's waker is let go.
    pub fn claim(&self, claimant: u64) {
        let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
        *waiter = Waiter { claimant, waker: None };
    }

    /// Makes `waker` the one a raise wakes, if `who` may wait here; says
    /// whether it may.
    fn register(&self, who: u64, waker: &Waker) -> bool {
        let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
        if waiter.claimant != ANYONE && waiter.claimant != who {
            return false;
        }
        match &mut waiter.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        true
    }

    /// Waits until the signal is raised and lowers it (coalescing: several
    /// raises before the wait wake it once). Cancel-safe: a raise is never lost.
    pub fn take(&self) -> Wait<'_> {
        Wait { signal: self, lower: true }
    }

    /// Waits until the signal is raised; it stays raised.
    pub fn raised(&self) -> Wait<'_> {
        Wait { signal: self, lower: false }
    }

    /// Waits, as `claimant`, until `stop` is raised (`true`) or, if `take`,
    /// this signal is raised and lowered (`false`); a claimant this signal
    /// no longer names waits only for `stop`. A connection waits so on its
    /// session's bell and its takeover notice.
    pub fn take_unless<'a>(&'a self, stop: &'a Signal, take: bool, claimant: u64) -> TakeUnless<'a> {
        TakeUnless { bell: self, stop, take, claimant }
    }
}

/// The future of [`Signal::take_unless`].
#[derive(Debug)]
pub struct TakeUnless<'a> {
    bell: &'a Signal,
    stop: &'a Signal,
    take: bool,
    claimant: u64,
}

impl Future for TakeUnless<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        // Registered before the flags are looked at: a raise in between wakes us.
        self.stop.register(ANYONE, cx.waker());
        if self.stop.is_raised() {
            return Poll::Ready(true);
        }
        // A connection taken over leaves the ring to its successor: taking
        // it would lose it.
        if self.take && self.bell.register(self.claimant, cx.waker()) && self.bell.raised.swap(false, Ordering::AcqRel)
        {
            return Poll::Ready(false);
        }
        Poll::Pending
    }
}

/// The future of [`Signal::take`] and [`Signal::raised`]: written out by
/// hand, it is 16 bytes, where nested `async fn`s made every idle
/// connection's task 48 to 96 bytes larger per wait. It waits as anyone.
#[derive(Debug)]
pub struct Wait<'a> {
    signal: &'a Signal,
    /// Lower the signal when it is seen raised ([`Signal::take`]).
    lower: bool,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is looked at: a raise in between wakes us.
        self.signal.register(ANYONE, cx.waker());
        let raised = match self.lower {
            true => self.signal.raised.swap(false, Ordering::AcqRel),
            false => self.signal.raised.load(Ordering::Acquire),
        };
        match raised {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn take_lowers_and_raised_stays() {
        let bell = Signal::new();
        assert!(bell.take().now_or_never().is_none());
        bell.raise();
        bell.raise();
        assert!(bell.take().now_or_never().is_some());
        assert!(bell.take().now_or_never().is_none(), "raises coalesce");
        let kick = Signal::new();
        kick.raise();
        assert!(kick.raised().now_or_never().is_some());
        assert!(kick.raised().now_or_never().is_some(), "stays raised");
    }

    #[test]
    fn a_waiter_wakes_on_raise() {
        let signal = std::sync::Arc::new(Signal::new());
        let raiser = signal.clone();
        let thread = std::thread::spawn(move || raiser.raise());
        futures::executor::block_on(signal.take());
        thread.join().unwrap();
    }

    #[test]
    fn take_unless_wakes_on_either_signal() {
        let (bell, stop) = (std::sync::Arc::new(Signal::new()), std::sync::Arc::new(Signal::new()));
        let raiser = bell.clone();
        let thread = std::thread::spawn(move || raiser.raise());
        assert!(!futures::executor::block_on(bell.take_unless(&stop, true, 1)), "the bell");
        thread.join().unwrap();
        let raiser = stop.clone();
        let thread = std::thread::spawn(move || raiser.raise());
        assert!(futures::executor::block_on(bell.take_unless(&stop, false, 1)), "the stop, bell not taken");
        thread.join().unwrap();
    }

    #[test]
    fn only_the_claimant_waits_on_a_claimed_bell() {
        let (bell, old_stop, new_stop) = (Signal::new(), Signal::new(), Signal::new());
        let (new_wakes, old_wakes) = (std::sync::Arc::new(Count::default()), std::sync::Arc::new(Count::default()));
        let (new_waker, old_waker) = (Waker::from(new_wakes.clone()), Waker::from(old_wakes.clone()));
        // Connection 2 attached first; connection 1 (an older id) took it over.
        bell.claim(2);
        let mut old = std::pin::pin!(bell.take_unless(&old_stop, true, 2));
        assert!(old.as_mut().poll(&mut Context::from_waker(&old_waker)).is_pending());
        bell.claim(1);
        let mut new = std::pin::pin!(bell.take_unless(&new_stop, true, 1));
        assert!(new.as_mut().poll(&mut Context::from_waker(&new_waker)).is_pending());
        // The connection taken over polls once more, before it sees its
        // takeover notice.
        assert!(old.as_mut().poll(&mut Context::from_waker(&old_waker)).is_pending());
        bell.raise();
        assert_eq!(old_wakes.0.load(Ordering::Relaxed), 0);
        assert!(
            old.as_mut().poll(&mut Context::from_waker(&old_waker)).is_pending(),
            "the ring is left to the claimant"
        );
        assert_eq!(new_wakes.0.load(Ordering::Relaxed), 1, "the claimant hears its bell");
        assert_eq!(new.as_mut().poll(&mut Context::from_waker(&new_waker)), Poll::Ready(false));
        // Its takeover notice still wakes the old one.
        old_stop.raise();
        assert_eq!(old_wakes.0.load(Ordering::Relaxed), 1);
        assert_eq!(old.as_mut().poll(&mut Context::from_waker(&old_waker)), Poll::Ready(true));
    }

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
