//! The writer thread: ops appended by any task are committed in batches
//! (group commit), and tasks wait on tickets without blocking an executor.

use super::{Op, Store};
use crate::stats::StoreStats;
use event_listener::Event;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

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
    /// Whether `failed` has ever held a batch: until then a status costs
    /// no lock (it is asked for every held response on every wake).
    any_failed: AtomicBool,
    /// Notified after every commit: `committed[b % 2]` after batch `b`'s.
    /// A waiter for the batch being filled is not woken by the commit
    /// running meanwhile (the one before it), only by its own.
    committed: [Event; 2],
    /// Open [`Hold`]s: the batch is not taken while one is open. An atomic,
    /// not a field under `pending`: a hold costs no lock. Taking the batch
    /// reads it under `pending`'s lock, and an append takes that lock after
    /// its hold began, so an append inside a hold can never land in a batch
    /// taken while the hold was open.
    holds: AtomicUsize,
    /// The writer waits for holds to end (a released last hold wakes it).
    waiting_for_holds: AtomicBool,
    /// Mirrors `Pending::eager`, for the hold's release.
    eager: AtomicBool,
    /// Commits and their latency, for the metrics.
    stats: StoreStats,
    /// The highest batch someone waits for with [`Persistence::wait`]: a
    /// batch nobody waits for yet lingers (see [`LINGER`]).
    urgent: AtomicU64,
}

/// How long the writer may leave a batch open while nobody waits for it:
/// the PUBACK of a QoS 1 message whose copies are all acknowledged waits
/// for no commit, and a copy queued and acknowledged within one batch is
/// never written ([`super::fold`]). A waiter ends the linger at once.
pub const LINGER: Duration = Duration::from_millis(5);

/// Ops a lingering batch may gather before it is committed anyway.
const LINGER_OPS: usize = 200_000;

struct Pending {
    ops: Vec<Op>,
    /// Number of the batch being filled.
    batch: u64,
    /// Test mode: each append (or hold) is applied as its own commit, as if
    /// the writer took the batch between any two appends.
    eager: bool,
    /// In eager mode, where each append's ops end in `ops`.
    cuts: Vec<usize>,
    stop: bool,
    thread: Option<thread::JoinHandle<()>>,
    /// When the first op of the batch being filled was appended.
    opened: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Persistence {
    /// Starts the writer thread over `store`.
    pub fn start(store: Box<dyn Store>) -> Persistence {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                batch: 1,
                eager: false,
                cuts: Vec::new(),
                stop: false,
                thread: None,
                opened: None,
            }),
            wake: Condvar::new(),
            done: AtomicU64::new(0),
            failed: Mutex::default(),
            any_failed: AtomicBool::new(false),
            committed: [Event::new(), Event::new()],
            holds: AtomicUsize::new(0),
            waiting_for_holds: AtomicBool::new(false),
            eager: AtomicBool::new(false),
            stats: StoreStats::default(),
            urgent: AtomicU64::new(0),
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
        let held = self.shared.holds.load(Ordering::SeqCst) > 0;
        if pending.eager && !held {
            let end = pending.ops.len();
            pending.cuts.push(end);
        }
        // Woken even inside a hold: it then waits for the hold to end.
        if before == 0 {
            pending.opened = Some(Instant::now());
            self.shared.wake.notify_one();
        }
        Ticket(pending.batch)
    }

    /// Keeps the batch being filled open until the hold is dropped: every
    /// append in between commits in one transaction (the inbound QoS 2
    /// packet id and the copies of its PUBLISH, say), so a crash cannot
    /// keep one without the other. Holds are short (one packet's routing)
    /// and may nest; the writer waits for the last to end.
    pub fn hold(&self) -> Hold<'_> {
        self.shared.holds.fetch_add(1, Ordering::SeqCst);
        Hold { persistence: self }
    }

    /// Test mode: each append outside a hold is committed on its own, as
    /// if the writer took the batch between any two appends.
    #[doc(hidden)]
    pub fn commit_each_append(&self) {
        lock(&self.shared.pending).eager = true;
        self.shared.eager.store(true, Ordering::SeqCst);
    }

    /// The writer's counters: commits, failures, commit latency.
    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Ops appended and not yet taken by the writer for a commit.
    pub fn pending_ops(&self) -> usize {
        lock(&self.shared.pending).ops.len()
    }

    /// Whether a ticket's batch is durable yet.
    pub fn status(&self, ticket: Ticket) -> TicketStatus {
        if ticket.0 > self.shared.done.load(Ordering::Acquire) {
            TicketStatus::Pending
        } else if self.shared.any_failed.load(Ordering::Acquire) && lock(&self.shared.failed).contains(&ticket.0) {
            TicketStatus::Failed
        } else {
            TicketStatus::Committed
        }
    }

    /// Waits (without blocking a thread) until the ticket is no longer
    /// pending; its batch is committed without lingering.
    pub async fn wait(&self, ticket: Ticket) -> TicketStatus {
        if self.status(ticket) == TicketStatus::Pending
            && self.shared.urgent.fetch_max(ticket.0, Ordering::SeqCst) < ticket.0
        {
            // Under the lock: the writer cannot miss it between its look
            // at `urgent` and its wait.
            let _pending = lock(&self.shared.pending);
            self.shared.wake.notify_one();
        }
        self.wait_lazily(ticket).await
    }

    /// [`Persistence::wait`] that lets the batch linger: for a commit
    /// that something else (acknowledgements) will usually make moot.
    pub async fn wait_lazily(&self, ticket: Ticket) -> TicketStatus {
        loop {
            match self.status(ticket) {
                TicketStatus::Pending => {}
                done => return done,
            }
            let listener = self.shared.committed[(ticket.0 % 2) as usize].listen();
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

/// An open hold on the batch being filled (see [`Persistence::hold`]).
pub struct Hold<'a> {
    persistence: &'a Persistence,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let shared = &self.persistence.shared;
        if shared.eager.load(Ordering::SeqCst) {
            let mut pending = lock(&shared.pending);
            if shared.holds.load(Ordering::SeqCst) == 1 && pending.cuts.last() != Some(&pending.ops.len()) {
                let end = pending.ops.len();
                pending.cuts.push(end);
            }
        }
        if shared.holds.fetch_sub(1, Ordering::SeqCst) == 1 && shared.waiting_for_holds.load(Ordering::SeqCst) {
            let _pending = lock(&shared.pending);
            shared.wake.notify_one();
        }
    }
}

impl Shared {
    /// How much longer the batch being filled may stay open: nobody waits
    /// for it, it is small, and it opened less than [`LINGER`] ago.
    fn linger(&self, pending: &Pending) -> Option<Duration> {
        if pending.stop || pending.eager || pending.ops.len() >= LINGER_OPS {
            return None;
        }
        if self.urgent.load(Ordering::SeqCst) >= pending.batch {
            return None;
        }
        LINGER.checked_sub(pending.opened?.elapsed()).filter(|left| !left.is_zero())
    }

    fn run(&self, mut store: Box<dyn Store>) {
        // Kept from batch to batch: a commit allocates nothing new.
        let mut ops: Vec<Op> = Vec::new();
        let mut part: Vec<Op> = Vec::new();
        let mut folder = super::Folder::default();
        loop {
            let (cuts, batch) = {
                let mut pending = lock(&self.pending);
                loop {
                    if pending.ops.is_empty() && !pending.stop {
                        pending = self.wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
                    } else if let Some(left) = self.linger(&pending) {
                        pending = self.wake.wait_timeout(pending, left).unwrap_or_else(PoisonError::into_inner).0;
                    } else if self.holds.load(Ordering::SeqCst) > 0 {
                        // Holds last one packet's routing. A release that
                        // sees the flag wakes us; the timeout covers one
                        // that read it just before it was set.
                        self.waiting_for_holds.store(true, Ordering::SeqCst);
                        let timeout = Duration::from_micros(200);
                        pending = self.wake.wait_timeout(pending, timeout).unwrap_or_else(PoisonError::into_inner).0;
                        self.waiting_for_holds.store(false, Ordering::SeqCst);
                    } else {
                        break;
                    }
                }
                if pending.ops.is_empty() {
                    return;
                }
                let batch = pending.batch;
                pending.batch += 1;
                std::mem::swap(&mut pending.ops, &mut ops);
                (std::mem::take(&mut pending.cuts), batch)
            };
            let total = ops.len();
            let mut start = 0;
            for end in cuts.into_iter().chain([total]).filter(|&end| end > 0) {
                if end <= start {
                    continue;
                }
                // Test mode cuts the batch into commits; otherwise it is one.
                let commit = match (start, end) {
                    (0, end) if end == total => &mut ops,
                    _ => {
                        part.clear();
                        part.extend(ops[start..end].iter().cloned());
                        &mut part
                    }
                };
                start = end;
                // What the same commit undoes is never written; a commit
                // left with nothing costs no write at all.
                folder.fold(commit);
                if commit.is_empty() {
                    continue;
                }
                let began = Instant::now();
                let applied = store.apply(commit);
                self.stats.commit(began.elapsed(), applied.is_ok());
                if let Err(e) = applied {
                    let count = commit.len();
                    log::error!("store commit of {count} change(s) failed: {e}; those messages are not acknowledged");
                    lock(&self.failed).insert(batch);
                    self.any_failed.store(true, Ordering::Release);
                }
            }
            ops.clear();
            part.clear();
            self.done.store(batch, Ordering::Release);
            self.committed[(batch % 2) as usize].notify(usize::MAX);
        }
    }
}
