//! Keepalive deadlines, swept for the whole broker by one task, as
//! Mosquitto checks them in its main loop: a connection's deadline is an
//! entry here (a key and its takeover notice's `Arc`) instead of a timer of
//! its own (a 120-byte boxed timer and its entry in the reactor's timer
//! tree, in every idle connection).
//!
//! The sweep only wakes a connection whose deadline passed; the connection
//! looks at the clock itself and closes or arms its next deadline. So a
//! wake-up that comes late, early or twice changes nothing but when it
//! looks: the keepalive rule is the connection's (MQTT-3.1.2-24).

use crate::broker::Broker;
use crate::runtime::Runtime;
use crate::signal::Kick;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the sweep looks: a silent client is closed at most this long
/// after its deadline.
pub const SWEEP: Duration = Duration::from_millis(100);

/// Every armed deadline, by when it falls (milliseconds since the broker
/// started) and connection id.
pub struct Deadlines {
    base: Instant,
    due: Mutex<BTreeMap<(u64, u64), Arc<Kick>>>,
    /// A sweep task runs (see [`start_sweep`]).
    sweeping: AtomicBool,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines { base: Instant::now(), due: Mutex::default(), sweeping: AtomicBool::new(false) }
    }
}

impl Deadlines {
    /// Milliseconds since the broker started (never 0 for an armed deadline).
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Arms connection `conn`'s deadline `after` from now, in place of the
    /// one armed at `old` (0: none); woken through `kick`. The new key.
    pub fn arm(&self, conn: u64, old: u64, after: Duration, kick: &Arc<Kick>) -> u64 {
        let at = (self.now() + after.as_millis() as u64).max(1);
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        if old != 0 {
            due.remove(&(old, conn));
        }
        due.insert((at, conn), kick.clone());
        at
    }

    /// Removes connection `conn`'s deadline armed at `at` (0: none).
    pub fn disarm(&self, conn: u64, at: u64) {
        if at != 0 {
            self.due.lock().unwrap_or_else(PoisonError::into_inner).remove(&(at, conn));
        }
    }

    /// Wakes (and forgets) every connection whose deadline passed; how many.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let passed = {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            let later = due.split_off(&(now + 1, 0));
            std::mem::replace(&mut *due, later)
        };
        for kick in passed.values() {
            kick.wake();
        }
        passed.len()
    }

    /// Deadlines armed now.
    pub fn len(&self) -> usize {
        self.due.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no deadline is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Starts `broker`'s sweep on `rt` unless one runs. Called by every
/// connection with a keepalive, so an embedder that runs connections
/// without a [`Server`](crate::Server) gets it too. The task ends when the
/// broker is gone; if its executor drops it first, the next connection
/// starts another.
pub fn start_sweep<R: Runtime>(rt: &R, broker: &Broker) {
    let deadlines = broker.deadlines();
    if deadlines.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    let (rt2, weak) = (rt.clone(), broker.downgrade());
    rt.spawn(async move {
        // Lowered however the task ends.
        struct Running(crate::broker::WeakBroker);
        impl Drop for Running {
            fn drop(&mut self) {
                if let Some(broker) = self.0.upgrade() {
                    broker.deadlines().sweeping.store(false, Ordering::Release);
                }
            }
        }
        let running = Running(weak);
        loop {
            rt2.sleep(SWEEP).await;
            let Some(broker) = running.0.upgrade() else { return };
            broker.deadlines().sweep();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_wakes_only_what_passed_and_forgets_it() {
        let d = Deadlines::default();
        let (early, late) = (Arc::new(Kick::new()), Arc::new(Kick::new()));
        let at = d.arm(1, 0, Duration::ZERO, &early);
        d.arm(2, 0, Duration::from_secs(3600), &late);
        while d.now() < at {
            std::thread::yield_now();
        }
        assert_eq!(d.sweep(), 1);
        assert_eq!(d.len(), 1, "the late deadline stays");
        assert_eq!(d.sweep(), 0, "a passed deadline is woken once");
        assert!(!early.is_raised(), "a wake-up, not a takeover");
    }

    #[test]
    fn arming_again_replaces_the_old_deadline() {
        let d = Deadlines::default();
        let kick = Arc::new(Kick::new());
        let first = d.arm(7, 0, Duration::from_secs(60), &kick);
        let second = d.arm(7, first, Duration::from_secs(90), &kick);
        assert_eq!(d.len(), 1);
        d.disarm(7, second);
        assert!(d.is_empty());
        assert_eq!(Arc::strong_count(&kick), 1, "no connection's notice is kept");
    }
}
