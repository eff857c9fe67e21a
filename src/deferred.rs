//! Deliveries deferred over one turn of a publisher's connection: the
//! copies of every PUBLISH it handles before writing its responses are
//! gathered per subscriber session, then queued with one lock of each
//! session and one ring of its bell. A fan-out publisher's turn of 64
//! PUBLISHes to 100 subscribers takes 100 locks instead of 6400, and each
//! subscriber's connection, on another core, is woken once with all of
//! them.
//!
//! QoS 0 and QoS 1 copies wait so, for messages with no shared
//! subscription. A QoS 1 copy for a persistent session is stored by the
//! turn's end: the PUBLISH's acknowledgement waits for that commit (or for
//! the copies' acknowledgements, see [`Receipt`]), which the turn
//! tells its connection ([`Turn::ticket`], the copies' [`TURN`] until
//! then). A QoS 2 message to a persistent session, whose packet id must
//! commit with its copies, and a shared subscription's copy (its member is
//! picked by queue room) are delivered at once, after what was deferred
//! before them, so each session still gets one publisher's messages in
//! the order they arrived. What is deferred is delivered
//! before the connection writes the turn's acknowledgements, before it
//! handles any packet other than a PUBLISH, and when the turn ends in any
//! way (see [`Turn`]); at most [`MAX_PENDING`] copies wait.
//!
//! The copies wait in a thread-local: a connection's turn runs on one
//! thread without a wait, so nothing is kept per connection.

use crate::broker::{Broker, Target, copies};
use crate::handle::Client;
use crate::packet::QoS;
use crate::session::{Message, Receipt};
use crate::session_handle::SessionHandle;
use crate::store::Ticket;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Copies deferred at most before they are delivered.
pub const MAX_PENDING: usize = 8192;

/// What a deferred stored copy's acknowledgement waits for until the turn
/// ends: never committed. [`Turn::ticket`] says the real ticket.
pub const TURN: Ticket = Ticket(u64::MAX);

/// A deferred copy, with the receipt of a QoS 1 copy for a persistent session.
pub struct Copy {
    /// The copy, at its subscription's QoS.
    pub message: Message,
    /// Counts the copy if it is stored (see [`Receipt`]).
    pub receipt: Option<Arc<Receipt>>,
}

/// Emptied copy lists kept for reuse, at most, and the largest kept.
const SPARE_LISTS: usize = 128;
const SPARE_CAPACITY: usize = 64;

#[derive(Default)]
struct Pending {
    /// Turns open on this thread.
    open: usize,
    /// Each session's copies in arrival order.
    slots: Vec<(Arc<SessionHandle>, Vec<Copy>)>,
    /// A session's address → its slot.
    index: HashMap<usize, usize>,
    /// The slots of the last message's targets, in target order: a
    /// publisher's next message usually goes to the same sessions.
    last: Vec<usize>,
    /// Copies waiting.
    count: usize,
    spare: Vec<Vec<Copy>>,
    /// The turn's last match, for its next message to the same topic.
    matched: Option<Matched>,
    /// The commit of what the turn delivered so far.
    ticket: Ticket,
}

/// The sessions a topic matched, sorted for [`copies`], while the
/// subscriptions were at `generation` (the broker's count of changes to them).
struct Matched {
    generation: u64,
    topic: Arc<str>,
    targets: Vec<Target>,
    /// Whether any of them journals (then QoS 2 is not deferred).
    journals: bool,
    /// Copies per message.
    routed: usize,
}

impl Pending {
    /// Adds the copy for the `k`-th target of the current message.
    fn add(&mut self, k: usize, session: &Arc<SessionHandle>, copy: Copy) {
        let key = Arc::as_ptr(session) as usize;
        let known =
            self.last.get(k).copied().filter(|&i| self.slots.get(i).is_some_and(|s| Arc::as_ptr(&s.0) as usize == key));
        let slot = match known {
            Some(i) => i,
            None => {
                let (slots, spare) = (&mut self.slots, &mut self.spare);
                let i = *self.index.entry(key).or_insert_with(|| {
                    slots.push((session.clone(), spare.pop().unwrap_or_default()));
                    slots.len() - 1
                });
                match self.last.get_mut(k) {
                    Some(at) => *at = i,
                    None => self.last.push(i),
                }
                i
            }
        };
        self.slots[slot].1.push(copy);
        self.count += 1;
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::default();
}

/// A connection's turn: while it is open, [`defer_matched`] and
/// [`defer_again`] gather copies on this thread; they are delivered when it ends (or earlier, see [`flush`]),
/// and the sessions whose full queues took them are noted on the client.
pub struct Turn<'a> {
    broker: &'a Broker,
    client: &'a Client,
    /// A cluster node's sessions neither come nor go during a turn: its
    /// deferred copies reach the sessions they were matched to.
    _gate: Option<crate::broker::Gate<'a>>,
}

impl<'a> Turn<'a> {
    /// Opens a turn. It must end before the task waits (drop it first).
    pub fn open(broker: &'a Broker, client: &'a Client) -> Turn<'a> {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            p.open += 1;
            p.ticket = Ticket::default();
        });
        Turn { broker, client, _gate: broker.gate() }
    }

    /// Delivers what was deferred, and says what the acknowledgements
    /// waiting for [`TURN`] wait for: the commit of every stored copy
    /// the turn delivered.
    pub fn ticket(&self) -> Ticket {
        self.flush();
        PENDING.with(|p| p.borrow().ticket)
    }

    /// Delivers what was deferred so far.
    pub fn flush(&self) {
        let mut pressed = Vec::new();
        flush(self.broker, &mut pressed);
        self.client.press(pressed);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.flush();
        // The match is kept for one turn (one publisher): it holds sessions.
        let matched = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            p.open -= 1;
            p.matched.take()
        });
        drop(matched);
    }
}

/// Whether a turn is open on this thread.
pub fn open() -> bool {
    PENDING.with(|p| p.borrow().open > 0)
}

/// Defers the copies of `message` if it goes where the turn's last message
/// went: the same topic, and no subscription changed since (`generation`,
/// the broker's count of changes). Returns the number of copies; a QoS 1
/// message's `receipt` slot gets the receipt its stored copies count.
pub fn defer_again(
    broker: &Broker,
    message: &Message,
    generation: u64,
    receipt: Option<&mut Option<Arc<Receipt>>>,
    pressed: &mut Vec<Arc<SessionHandle>>,
) -> Option<usize> {
    let (routed, full) = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let p = &mut *p;
        let m = p.matched.as_ref().filter(|m| m.generation == generation && m.topic == message.topic)?;
        let receipt = counted(message, m.journals, receipt)?;
        let routed = m.routed;
        let targets = std::mem::take(&mut p.matched.as_mut().expect("matched").targets);
        add_all(p, &targets, message, receipt.as_ref());
        p.matched.as_mut().expect("matched").targets = targets;
        Some((routed, p.count >= MAX_PENDING))
    })?;
    if full {
        flush(broker, pressed);
    }
    Some(routed)
}

/// Defers the copies of `message` for `targets`, which `topic` matched
/// at `generation`, unless a QoS 2 copy would be stored; the match is kept
/// for the turn's next message. Returns the number of copies, or the
/// targets back when they must be delivered at once.
pub fn defer_matched(
    broker: &Broker,
    message: &Message,
    generation: u64,
    targets: Vec<Target>,
    receipt: Option<&mut Option<Arc<Receipt>>>,
    pressed: &mut Vec<Arc<SessionHandle>>,
) -> Result<usize, Vec<Target>> {
    let journals = targets.iter().any(|(s, _)| s.journals());
    let Some(receipt) = counted(message, journals, receipt) else {
        return Err(targets);
    };
    let routed = crate::broker::groups(&targets).count();
    let full = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        add_all(&mut p, &targets, message, receipt.as_ref());
        let old = p.matched.replace(Matched { generation, topic: message.topic.clone(), targets, journals, routed });
        (p.count >= MAX_PENDING, old)
    });
    if full.0 {
        flush(broker, pressed);
    }
    Ok(routed)
}

/// Whether a message may be deferred to targets of which some are
/// journaled (`journals`), and the receipt its stored copies count:
/// `Some(None)` when no copy is stored, `None` when it may not wait.
fn counted(message: &Message, journals: bool, slot: Option<&mut Option<Arc<Receipt>>>) -> Option<Option<Arc<Receipt>>> {
    match (message.qos, journals, slot) {
        (QoS::AtMostOnce, ..) | (_, false, _) => Some(None),
        (QoS::AtLeastOnce, true, Some(slot)) => Some(Some(slot.get_or_insert_with(Arc::default).clone())),
        _ => None,
    }
}

fn add_all(p: &mut Pending, targets: &[Target], message: &Message, receipt: Option<&Arc<Receipt>>) {
    for (k, (session, copy)) in copies(targets, message).enumerate() {
        let receipt = receipt.filter(|_| session.journals()).cloned();
        p.add(k, session, Copy { message: copy, receipt });
    }
}

/// Delivers what was deferred on this thread, each session's copies with
/// one lock; sessions that hold the publisher back go to `pressed`.
pub fn flush(broker: &Broker, pressed: &mut Vec<Arc<SessionHandle>>) {
    let mut slots = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.count == 0 {
            return Vec::new();
        }
        p.count = 0;
        p.index.clear();
        p.last.clear();
        std::mem::take(&mut p.slots)
    });
    if slots.is_empty() {
        return;
    }
    let security = broker.acl();
    let mut ticket = Ticket::default();
    for (session, mut copies) in slots.drain(..) {
        let t =
            session.deliver_all(&mut copies, security.as_deref(), |offer| broker.count_offer(offer, &session, pressed));
        ticket = ticket.max(t);
        if copies.capacity() <= SPARE_CAPACITY {
            PENDING.with(|p| {
                let spare = &mut p.borrow_mut().spare;
                if spare.len() < SPARE_LISTS {
                    spare.push(copies);
                }
            });
        }
    }
    // The emptied list keeps its capacity for the next turn; the lookups
    // grown for a turn to very many sessions are given back.
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        p.ticket = p.ticket.max(ticket);
        if p.slots.is_empty() && slots.capacity() <= MAX_PENDING {
            p.slots = slots;
        }
        if p.index.capacity() > SPARE_LISTS * SPARE_CAPACITY {
            p.index = HashMap::new();
        }
        if p.last.capacity() > MAX_PENDING {
            p.last = Vec::new();
        }
    });
}
