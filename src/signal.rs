//! A raised/lowered flag that tasks can await: the session's doorbell and a
//! connection's takeover notice. An atomic and an `event_listener::Event`
//! (allocated on first wait) instead of a channel: an async-channel is
//! cache-padded to about 700 bytes, and every idle connection had two.

use event_listener::{Event, EventListener};
use futures::ready;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// A flag to raise, wait for, and (as a doorbell) take down again.
#[derive(Debug, Default)]
pub struct Signal {
    raised: AtomicBool,
    event: Event,
}

impl Signal {
    /// A lowered signal.
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Raises the signal and wakes every waiter. Raising a raised signal
    /// wakes no one: its waiters were woken when it went up (a connection
    /// busy writing does not take its bell, and is not woken again for
    /// every message queued meanwhile).
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            self.event.notify(usize::MAX);
        }
    }

    /// Wakes every waiter without raising the signal (see [`Signal::take_unless`]).
    pub fn notify(&self) {
        self.event.notify(usize::MAX);
    }

    /// Whether the signal is raised now.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Waits until the signal is raised and lowers it (coalescing: several
    /// raises before the wait wake it once). Cancel-safe: a raise is never lost.
    pub fn take(&self) -> Wait<'_> {
        Wait { signal: self, lower: true, listener: None }
    }

    /// Waits until the signal is raised; it stays raised.
    pub fn raised(&self) -> Wait<'_> {
        Wait { signal: self, lower: false, listener: None }
    }
}

impl Signal {
    /// Waits until `stop` is raised (`true`) or, if `take`, this signal is
    /// raised and lowered (`false`): one listener, on this signal, for both.
    /// Whoever raises `stop` must then [`notify`](Signal::notify) this
    /// signal. A connection waits so on its session's bell and its takeover
    /// notice: an idle connection holds one listener instead of two.
    pub fn take_unless<'a>(&'a self, stop: &'a Signal, take: bool) -> TakeUnless<'a> {
        TakeUnless { bell: self, stop, take, listener: None }
    }
}

/// The future of [`Signal::take_unless`].
#[derive(Debug)]
pub struct TakeUnless<'a> {
    bell: &'a Signal,
    stop: &'a Signal,
    take: bool,
    listener: Option<EventListener>,
}

impl Future for TakeUnless<'_> {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            if self.stop.is_raised() {
                self.listener = None;
                return Poll::Ready(true);
            }
            if self.take && self.bell.raised.swap(false, Ordering::AcqRel) {
                self.listener = None;
                return Poll::Ready(false);
            }
            // Checked again once listening: a raise in between is not lost.
            match &mut self.listener {
                None => self.listener = Some(self.bell.event.listen()),
                Some(listener) => {
                    ready!(Pin::new(listener).poll(cx));
                    self.listener = None;
                }
            }
        }
    }
}

/// The future of [`Signal::take`] and [`Signal::raised`]: written out by
/// hand, it is 24 bytes, where nested `async fn`s made every idle
/// connection's task 48 to 96 bytes larger per wait.
#[derive(Debug)]
pub struct Wait<'a> {
    signal: &'a Signal,
    /// Lower the signal when it is seen raised ([`Signal::take`]).
    lower: bool,
    listener: Option<EventListener>,
}

impl Wait<'_> {
    fn check(&self) -> bool {
        match self.lower {
            true => self.signal.raised.swap(false, Ordering::AcqRel),
            false => self.signal.raised.load(Ordering::Acquire),
        }
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.check() {
                self.listener = None;
                return Poll::Ready(());
            }
            // Checked again once listening: a raise in between is not lost.
            match &mut self.listener {
                None => self.listener = Some(self.signal.event.listen()),
                Some(listener) => {
                    ready!(Pin::new(listener).poll(cx));
                    self.listener = None;
                }
            }
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
}
