//! The writer thread: ops appended by any task are committed in batches
//! (group commit), and tasks wait on tickets without blocking an executor.

use super::{Op, Store};
use event_listener::Event;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

/// The batch a set of ops was appended to; 0 means "nothing to wait for".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Where a ticket's batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketStatus {
    /// Not committed yet.
    Pending,
    /// Durable.
    Committed,
    /// The commit failed: what it covered is not durable.
    Failed,
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Persistence {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = self.shared.done.load(Ordering::Relaxed);
        f.debug_struct("Persistence").field("committed_batches", &done).finish()
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when ops are appended or on stop.
    wake: Condvar,
    /// Highest batch number processed (committed or failed).
    done: AtomicU64,
    /// Batches whose commit failed (rare; kept for their waiters).
    failed: Mutex<BTreeSet<u64>>,
    /// Notified after every commit.
    committed: Event,
}

struct Pending {
    ops: Vec<Op>,
    /// Number of the batch being filled.
    batch: u64,
    stop: bool,
    thread: Option<thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Persistence {
    /// Starts the writer thread over `store`.
    pub fn start(store: Box<dyn Store>) -> Persistence {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { ops: Vec::new(), batch: 1, stop: false, thread: None }),
            wake: Condvar::new(),
            done: AtomicU64::new(0),
            failed: Mutex::default(),
            committed: Event::new(),
        });
        let writer = shared.clone();
        let thread = thread::Builder::new()
            .name("midge-store".into())
            .spawn(move || writer.run(store))
            .expect("spawn store writer thread");
        lock(&shared.pending).thread = Some(thread);
        Persistence { shared }
    }

    /// Appends ops to the batch being filled; the ticket is committed when
    /// that batch is.
    pub fn append(&self, ops: impl IntoIterator<Item = Op>) -> Ticket {
        let mut pending = lock(&self.shared.pending);
        let before = pending.ops.len();
        pending.ops.extend(ops);
        if pending.ops.len() == before {
            return Ticket::default();
        }
        if before == 0 {
            self.shared.wake.notify_one();
        }
        Ticket(pending.batch)
    }

    /// Whether a ticket's batch is durable yet.
    pub fn status(&self, ticket: Ticket) -> TicketStatus {
        if ticket.0 > self.shared.done.load(Ordering::Acquire) {
            TicketStatus::Pending
        } else if lock(&self.shared.failed).contains(&ticket.0) {
            TicketStatus::Failed
        } else {
            TicketStatus::Committed
        }
    }

    /// Waits (without blocking a thread) until the ticket is no longer pending.
    pub async fn wait(&self, ticket: Ticket) -> TicketStatus {
        loop {
            match self.status(ticket) {
                TicketStatus::Pending => {}
                done => return done,
            }
            let listener = self.shared.committed.listen();
            if self.status(ticket) != TicketStatus::Pending {
                continue;
            }
            listener.await;
        }
    }

    /// Commits what is pending and stops the writer thread.
    pub fn stop(&self) {
        let thread = {
            let mut pending = lock(&self.shared.pending);
            pending.stop = true;
            self.shared.wake.notify_one();
            pending.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn run(&self, mut store: Box<dyn Store>) {
        loop {
            let (ops, batch) = {
                let mut pending = lock(&self.pending);
                while pending.ops.is_empty() && !pending.stop {
                    pending = self.wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
                }
                if pending.ops.is_empty() {
                    return;
                }
                let batch = pending.batch;
                pending.batch += 1;
                (std::mem::take(&mut pending.ops), batch)
            };
            if let Err(e) = store.apply(&ops) {
                log::error!("store commit of {} change(s) failed: {e}; those messages are not acknowledged", ops.len());
                lock(&self.failed).insert(batch);
            }
            self.done.store(batch, Ordering::Release);
            self.committed.notify(usize::MAX);
        }
    }
}
