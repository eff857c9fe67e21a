//! A raised/lowered flag that tasks can await: the session's doorbell and a
//! connection's takeover notice. An atomic and an `event_listener::Event`
//! (allocated on first wait) instead of a channel: an async-channel is
//! cache-padded to about 700 bytes, and every idle connection had two.

use event_listener::Event;
use std::sync::atomic::{AtomicBool, Ordering};

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

    /// Raises the signal and wakes every waiter.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    /// Whether the signal is raised now.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Waits until the signal is raised and lowers it (coalescing: several
    /// raises before the wait wake it once). Cancel-safe: a raise is never lost.
    pub async fn take(&self) {
        self.wait(|raised| raised.swap(false, Ordering::AcqRel)).await;
    }

    /// Waits until the signal is raised; it stays raised.
    pub async fn raised(&self) {
        self.wait(|raised| raised.load(Ordering::Acquire)).await;
    }

    async fn wait(&self, check: impl Fn(&AtomicBool) -> bool) {
        loop {
            if check(&self.raised) {
                return;
            }
            let listener = self.event.listen();
            if check(&self.raised) {
                return;
            }
            listener.await;
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
