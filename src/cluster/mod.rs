//! A node of a cluster on Redis (the `cluster` feature; `docs/cluster.md`
//! has the design and what is not built yet).
//!
//! Redis is reached with the `redis` crate's synchronous client on three
//! threads of the cluster's own, so no async runtime (and no tokio crate)
//! comes with it and an embedder's executor never runs a blocking call:
//! - `midge-cluster-routes` renews this node's lease, keeps the replica of
//!   the other nodes' routes (their filters) and follows their changes;
//! - `midge-cluster-out` writes this node's route changes and forwards
//!   messages, one stream entry per destination node and batch;
//! - `midge-cluster-in` reads this node's stream with a consumer group and
//!   routes what arrives to the local subscribers only;
//! - `midge-cluster-lease` closes this node's clients once its lease would
//!   have run out without a renewal (it lost Redis), until it is back.
//!
//! The broker talks to it through [`Peers`]: calls that only read the
//! replica and hand work to a channel, never waiting for Redis.

mod handover;
mod store;

pub use store::RedisStore;

use crate::broker::{Broker, Claimed, Forward, Peers};
use crate::packet::QoS;
use crate::session::{Message, Receipt};
use crate::store::{Ticket, TicketStatus};
use crate::trie::Trie;
use redis::streams::StreamReadReply;
use redis::{Connection, RedisResult, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How often the lease is renewed (and the membership read).
const BEAT: Duration = Duration::from_secs(1);
/// Longest a blocking stream read waits before the thread looks around.
const BLOCK: Duration = Duration::from_secs(1);
/// Longest any other Redis call may take before the connection is given
/// up and made again.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages per forwarded stream entry (and items per pipeline).
const MAX_BATCH: usize = 512;
/// QoS 0 messages waiting for the forwarder; beyond it they are dropped
/// and counted (Redis is gone or too slow), not queued without bound.
/// QoS 1 and 2 messages are never dropped: each holds its publisher's
/// acknowledgement until it is written, which slows the publisher.
const MAX_WAITING: usize = 100_000;
/// Entries kept in the route log (approximately: Redis trims in blocks).
const ROUTE_LOG_LEN: usize = 100_000;
/// Entries kept in a node's incoming stream.
const STREAM_LEN: usize = 100_000;
/// Entries a live node's stream may hold unread before the forwarder waits
/// for it to read them (which slows the publishers of QoS 1 and 2 here,
/// their acknowledgements waiting for the forwarder): far below
/// `STREAM_LEN`, so that a live node's stream is never trimmed.
const MAX_BEHIND: u64 = 1000;
/// The consumer group every node reads its own stream with.
const GROUP: &str = "midge";
/// Largest message a forwarded batch may declare.
const MAX_MESSAGE: usize = 256 << 20;

const NODES: &str = "midge:nodes";
/// Every node that ever joined (whose routes may be in Redis).
const MEMBERS: &str = "midge:members";
const ROUTE_LOG: &str = "midge:routelog";
/// Topic → the cluster's retained message (encoded as in the store).
const RETAINED: &str = "midge:retained";
/// Every change of `RETAINED`, in the order Redis made them.
const RETAIN_LOG: &str = "midge:retainlog";

fn routes_key(node: &str) -> String {
    format!("midge:routes:{node}")
}

fn stream_key(node: &str) -> String {
    format!("midge:in:{node}")
}

/// The wills of a node's connections: field `{life}:{conn}:{client id}`,
/// value [`encode_will`].
fn wills_key(node: &str) -> String {
    format!("midge:wills:{node}")
}

/// A will as the cluster keeps it: delay (seconds, 4 bytes), retain (1
/// byte), the message as the store encodes it (its expiry is set anew when
/// it is published).
fn encode_will(message: &Message, retain: bool, delay: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + message.topic.len() + message.payload.len());
    out.extend_from_slice(&delay.to_be_bytes());
    out.push(u8::from(retain));
    let timeless = Message { expires: None, ..message.clone() };
    crate::store::encode_message_into(&timeless, &mut out);
    out
}

/// [`encode_will`] read back: the message (its expiry from now), retain, delay.
fn decode_will(bytes: &[u8]) -> Option<(Message, bool, u32)> {
    let (delay, rest) = bytes.split_first_chunk::<4>()?;
    let (&retain, rest) = rest.split_first()?;
    let mut message = crate::store::decode_message(rest)?;
    let expiry = message.properties.as_ref().and_then(|p| p.message_expiry);
    message.expires = expiry.map(crate::packet::expires_in);
    message.retain = false;
    Some((message, retain == 1, u32::from_be_bytes(*delay)))
}

/// Lua: `now`, Redis's clock in milliseconds (the nodes' clocks do not matter).
macro_rules! lua_now {
    () => {
        "
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Takes the wills to fire off Redis: every will of a member node whose
/// lease ended, and with `ARGV[3]` = 1 those of this node (`ARGV[1]`)
/// kept by an earlier life than `ARGV[2]` (before a crash, or before it was
/// cut off). Returns `node, client id, will, owner now` for each, so that
/// a delayed will of a client that connected again is not fired. One
/// script: of the nodes that see a lease end, one takes each will.
const TAKE_WILLS_SCRIPT: &str = concat!(
    lua_now!(),
    r"
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', 'midge:members')) do
  local mine = m == ARGV[1]
  local lease = redis.call('ZSCORE', 'midge:nodes', m)
  if (mine and ARGV[3] == '1') or (not mine and (not lease or tonumber(lease) < now)) then
    local key = 'midge:wills:' .. m
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      local life, id = string.match(all[i], '^(%d+):%d+:(.*)$')
      if life and (not mine or tonumber(life) < tonumber(ARGV[2])) then
        redis.call('HDEL', key, all[i])
        local owner = redis.call('HGET', 'midge:owner:' .. id, 'node') or ''
        table.insert(out, m)
        table.insert(out, id)
        table.insert(out, all[i + 1])
        table.insert(out, owner)
      end
    end
  end
end
return out
"
);

/// Takes over, for node `ARGV[1]`, the persistent sessions of every node
/// whose lease ended (owned by it still: a client that connected elsewhere
/// took its own), and removes that node's routes (logged, before this
/// node routes the sessions' subscriptions: no node ever routes to both).
/// Returns, per node: its id, its last applied stream entry, and each
/// session's fields, at most `ARGV[3]` sessions in all (it is called
/// again until it returns nothing). One script: of the nodes that see a
/// lease end, one takes each session.
const TAKE_SESSIONS_SCRIPT: &str = concat!(
    lua_now!(),
    r"
local out = {}
local budget = tonumber(ARGV[3])
for _, m in ipairs(redis.call('SMEMBERS', 'midge:members')) do
  local lease = redis.call('ZSCORE', 'midge:nodes', m)
  if budget > 0 and m ~= ARGV[1] and (not lease or tonumber(lease) < now) then
    local index = 'midge:sessions:' .. m
    local keys = redis.call('SRANDMEMBER', index, budget)
    budget = budget - #keys
    if #keys > 0 then
      local routes = 'midge:routes:' .. m
      for _, filter in ipairs(redis.call('SMEMBERS', routes)) do
        redis.call('XADD', 'midge:routelog', 'MAXLEN', '~', ARGV[2], '*', 'node', m, 'op', '-', 'filter', filter)
      end
      redis.call('DEL', routes)
      local taken = {m, redis.call('HGET', 'midge:marks:' .. m, 'cluster:applied:midge:in:' .. m) or ''}
      for _, key in ipairs(keys) do
        local id = redis.call('HGET', key, 'id')
        if id and redis.call('HGET', 'midge:owner:' .. id, 'node') == m then
          redis.call('HSET', 'midge:owner:' .. id, 'node', ARGV[1], 'token', redis.call('INCR', 'midge:fence'))
          redis.call('SADD', 'midge:sessions:' .. ARGV[1], key)
          table.insert(taken, redis.call('HGETALL', key))
        end
        redis.call('SREM', index, key)
      end
      table.insert(out, taken)
    end
  end
end
return out
"
);

/// Renews `ARGV[1]`'s lease by `ARGV[2]` ms on Redis's clock and returns
/// the nodes whose lease has not ended.
const BEAT_SCRIPT: &str = concat!(
    lua_now!(),
    r"
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"
);

/// Takes a client id for `ARGV[1]` (the node) with a new fencing token
/// and tells the previous owner, if another node, to end its connection
/// (an entry on its stream, naming this node if the session is taken). A
/// persistent session that node held (`KEYS[3]`) becomes this node's with
/// `ARGV[4]` = `1` (its fields are returned), and is deleted otherwise (a
/// clean start). Returns the token,
/// whether another node owned the id, that node and the id of the notice
/// on its stream, and the fields.
const CLAIM_SCRIPT: &str = r"
local prev = redis.call('HGET', KEYS[1], 'node')
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', token)
local session = {}
local moved, kick = 0, ''
if prev and prev ~= ARGV[1] then
  moved = 1
  local take = ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1
  local notice = {'XADD', 'midge:in:' .. prev, 'MAXLEN', '~', ARGV[3], '*', 'kick', ARGV[2], 'token', token}
  if take then
    table.insert(notice, 'by')
    table.insert(notice, ARGV[1])
  end
  kick = redis.call(unpack(notice))
  redis.call('SREM', 'midge:sessions:' .. prev, KEYS[3])
  if take then
    redis.call('SADD', 'midge:sessions:' .. ARGV[1], KEYS[3])
    redis.call('HSET', KEYS[3], 'from', prev)
    session = redis.call('HGETALL', KEYS[3])
  else
    redis.call('DEL', KEYS[3])
  end
end
return {token, moved, prev or '', kick, session}
";

/// Sessions a node whose lease ended gives up per reply of
/// [`TAKE_SESSIONS_SCRIPT`] (it is called until none is left).
const TAKE_BATCH: usize = 1000;

/// Claims of client ids this node remembers, at most (completed ones are
/// forgotten beyond it).
const MAX_CLAIMS: usize = 100_000;

/// This node's claims of one client id.
#[derive(Default)]
struct Claim {
    /// Claims sent and not answered yet.
    pending: u32,
    /// The newest answered claim's fencing token.
    token: u64,
    /// The newest answered clean start's token (it made a new session).
    clean: u64,
    /// The newest takeover notice's token that came while claims were
    /// pending, the node that sent it and where it is in this node's
    /// stream.
    notice: u64,
    notice_by: Option<(Arc<str>, (u64, u64))>,
}

/// This node in the cluster.
pub struct Cluster {
    node: Arc<str>,
    /// Client ids connected here and this node's claims of them: a
    /// takeover notice with an older token than this node's newest claim is
    /// stale and ignored; one that comes while a claim is not answered yet
    /// is decided when it is.
    claims: std::sync::Mutex<HashMap<Arc<str>, Claim>>,
    client: redis::Client,
    replica: RwLock<Replica>,
    out: Sender<Out>,
    /// How long this node counts as alive after a renewal.
    lease: Duration,
    /// Whether this node serves clients: not once its lease would have
    /// run out without a renewal, until Redis answers again.
    serving: AtomicBool,
    /// When the last renewal that Redis answered was sent, in ms after
    /// `epoch`.
    renewed: AtomicU64,
    epoch: Instant,
    /// This node's subscriptions by route (filter, or a shared one's
    /// group): the first adds the route in Redis, the last removes it.
    local: std::sync::Mutex<HashMap<Box<str>, u32>>,
    /// Where each shared subscription group spanning nodes gets its next
    /// message: the node after the last one picked.
    cursors: std::sync::Mutex<HashMap<Arc<str>, usize>>,
    /// This node's life: a fencing token taken at start and on rejoining
    /// after being cut off. A will kept by an earlier life is fired.
    life: AtomicU64,
    /// Messages handed to the forwarder and not yet written.
    waiting: AtomicUsize,
    /// Everything handed to the forwarder and not yet written.
    queued: AtomicUsize,
    stopping: AtomicBool,
    /// Messages written to other nodes' streams.
    pub forwarded: AtomicU64,
    /// Messages read from this node's stream.
    pub received: AtomicU64,
    /// Messages not forwarded because too many were waiting.
    pub dropped: AtomicU64,
    /// Persistent sessions taken from another node by a CONNECT here:
    /// that node, the client id, where the claim's notice (then the marker
    /// written once the session was live here, [`Out::Adopted`]) is in
    /// that node's stream, and when. Should that node's lease end, what
    /// its stream held for the session before that is delivered here
    /// ([`drain_moved`]). Forgotten after two leases.
    moved: std::sync::Mutex<Vec<Moved>>,
    /// Sessions taken from here by a CONNECT at another node, for a while
    /// ([`handover`]).
    handing: handover::Handing,
    /// This node's claims that may take a session, until adopted.
    taking: Arc<handover::Claims>,
    /// While this node takes over a dead node's sessions: completes once
    /// they are here ([`Claimed::after`]).
    taking_over: std::sync::Mutex<Option<Arc<Receipt>>>,
}

/// Sessions taken from one node: client id, where what that node held
/// for it ends in its stream.
type MovedFrom = Vec<(Arc<str>, (u64, u64))>;

/// See [`Cluster::moved`].
struct Moved {
    from: Arc<str>,
    id: Arc<str>,
    kick: (u64, u64),
    at: Instant,
}

/// What the other nodes subscribe to, as this node last read it.
#[derive(Default)]
struct Replica {
    /// Filter, then node id; for a shared subscription group, its inner
    /// filter, then `{node}\0{group}`, with the group.
    routes: Trie<Option<Arc<str>>>,
    /// Each node's routes (to drop a node's routes at once).
    by_node: HashMap<Arc<str>, HashSet<String>>,
    /// Nodes whose lease has not ended, this one excluded.
    live: HashSet<Arc<str>>,
}

/// Where in the replica's trie a route sits: its filter, its key, its
/// group.
fn replica_slot<'r>(node: &Arc<str>, route: &'r str) -> (&'r str, Arc<str>, Option<Arc<str>>) {
    match crate::topic::shared(route) {
        Some((_, inner)) => (inner, format!("{node}\0{route}").into(), Some(route.into())),
        None => (route, node.clone(), None),
    }
}

/// Where a message goes beyond this node: each destination once, with
/// whether its subscriptions that are not shared get it and the shared
/// subscription groups it delivers for.
type Destinations = Vec<(Arc<str>, bool, Vec<Arc<str>>)>;

impl Replica {
    fn add(&mut self, node: &Arc<str>, route: &str) {
        if self.by_node.entry(node.clone()).or_default().insert(route.to_owned()) {
            let (at, key, group) = replica_slot(node, route);
            self.routes.insert(at, key, group);
        }
    }

    fn remove(&mut self, node: &str, route: &str) {
        let Some((node, routes)) = self.by_node.get_key_value(node) else { return };
        if !routes.contains(route) {
            return;
        }
        let node = node.clone();
        let (at, key, _) = replica_slot(&node, route);
        self.routes.remove(at, &key);
        if let Some(routes) = self.by_node.get_mut(&node) {
            routes.remove(route);
        }
    }

    /// The nodes with a route matching `topic`, each once: whether a
    /// subscription there that is not shared matches, and the shared
    /// subscription groups there that match. Live or not (a node that is
    /// down finds what was sent meanwhile in its stream).
    fn matches(&self, topic: &str) -> Destinations {
        let mut nodes: Destinations = Vec::new();
        self.routes.for_each_match(topic, |key, group| {
            let node = key_node(key);
            let at = match nodes.iter().position(|(n, ..)| **n == *node) {
                Some(at) => at,
                None => {
                    let node = self.by_node.get_key_value(node).map_or_else(|| node.into(), |(n, _)| n.clone());
                    nodes.push((node, false, Vec::new()));
                    nodes.len() - 1
                }
            };
            match group {
                None => nodes[at].1 = true,
                Some(group) => nodes[at].2.push(group.clone()),
            }
        });
        nodes
    }

    fn nodes_for(&self, topic: &str) -> Vec<Arc<str>> {
        self.matches(topic).into_iter().map(|(node, ..)| node).collect()
    }
}

/// The node of a replica trie's key.
fn key_node(key: &str) -> &str {
    key.split_once('\0').map_or(key, |(node, _)| node)
}

/// Work for the forwarder, in the order it was handed over.
enum Out {
    /// This node's first subscription to a filter (`true`) or its last
    /// unsubscription (`false`).
    Route(bool, String),
    /// A client id connecting here, whether it takes a persistent session
    /// another node held, and what its CONNECT waits for.
    Claim(Arc<str>, bool, Arc<Claimed>),
    /// A connection's will (encoded) as it connected, or its end: the
    /// life it connected in, the connection, its client id, and the
    /// receipt its CONNACK waits for.
    Will(u64, u64, Arc<str>, Option<Vec<u8>>, Option<Arc<Receipt>>),
    /// A session taken from that node is live here (after its routes): a
    /// marker on that node's stream, where what it held for the session
    /// ends ([`drain_moved`]).
    Adopted(Arc<str>, Arc<str>),
    /// A message for these nodes, whether it is the topic's retained
    /// message now, the receipt its publisher's acknowledgement waits for
    /// (QoS 1 and 2), and the sessions handed over from here it goes on
    /// to (their new owner, their client id).
    Message(Destinations, Message, bool, Option<Arc<Receipt>>, Vec<handover::To>),
}

fn read(replica: &RwLock<Replica>) -> std::sync::RwLockReadGuard<'_, Replica> {
    replica.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(replica: &RwLock<Replica>) -> std::sync::RwLockWriteGuard<'_, Replica> {
    replica.write().unwrap_or_else(PoisonError::into_inner)
}

/// Joins the cluster `config` names: checks that Redis answers, starts the
/// node's threads and tells the broker. An unreachable Redis is an error
/// here (at start); later it is retried.
pub fn start(broker: &Broker, config: &crate::config::Cluster) -> Result<Arc<Cluster>, String> {
    let redis = &config.redis;
    let client = redis::Client::open(redis.as_str()).map_err(|e| format!("cluster Redis {redis}: {e}"))?;
    let mut con = connect(&client).map_err(|e| format!("cluster Redis {redis}: {e}"))?;
    let node: Arc<str> = config.node_id.as_str().into();
    // Routes an earlier life of this node left that its sessions no longer
    // have go; the ones they still have stay (so that what other nodes
    // sent while it was down waits in its stream), and join adds the rest.
    let now: HashSet<String> = broker.subscribed_filters().into_iter().collect();
    let old: RedisResult<Vec<String>> = redis::cmd("SMEMBERS").arg(routes_key(&node)).query(&mut con);
    let old = old.map_err(|e| format!("cluster Redis {redis}: {e}"))?;
    let mut pipe = redis::pipe();
    pipe.atomic().sadd(MEMBERS, &*node).ignore();
    for filter in old.iter().filter(|f| !now.contains(*f)) {
        pipe.srem(routes_key(&node), filter).ignore().add_command(log_entry(&node, "-", filter)).ignore();
    }
    let cleaned: RedisResult<()> = pipe.query(&mut con);
    cleaned.map_err(|e| format!("cluster Redis {redis}: {e}"))?;
    let life: RedisResult<u64> = redis::cmd("INCR").arg("midge:fence").query(&mut con);
    let life = life.map_err(|e| format!("cluster Redis {redis}: {e}"))?;
    let (out, queue) = mpsc::channel();
    let cluster = Arc::new(Cluster {
        node: node.clone(),
        claims: std::sync::Mutex::new(HashMap::new()),
        client,
        replica: RwLock::new(Replica::default()),
        out,
        lease: config.lease,
        local: std::sync::Mutex::new(HashMap::new()),
        cursors: std::sync::Mutex::new(HashMap::new()),
        serving: AtomicBool::new(true),
        // The first beat comes before the lease thread looks.
        renewed: AtomicU64::new(0),
        epoch: Instant::now(),
        life: AtomicU64::new(life),
        waiting: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        forwarded: AtomicU64::new(0),
        received: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        moved: std::sync::Mutex::new(Vec::new()),
        handing: handover::Handing::default(),
        taking: Arc::default(),
        taking_over: std::sync::Mutex::new(None),
    });
    let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name.into()).spawn(run).map(drop).map_err(|e| format!("{name}: {e}"))
    };
    let c = cluster.clone();
    let b = broker.clone();
    spawn("midge-cluster-routes", Box::new(move || follow_routes(&c, &b, Some(con))))?;
    let c = cluster.clone();
    let b = broker.clone();
    spawn("midge-cluster-out", Box::new(move || forward_out(&c, &b, &queue)))?;
    let (c, b) = (cluster.clone(), broker.clone());
    spawn("midge-cluster-in", Box::new(move || receive(&c, &b)))?;
    let (c, b) = (cluster.clone(), broker.clone());
    spawn("midge-cluster-lease", Box::new(move || watch_lease(&c, &b)))?;
    if !broker.join(cluster.clone()) {
        return Err("the broker is in a cluster already".into());
    }
    log::info!("cluster: node {node} joined through {redis} (lease {}s)", config.lease.as_secs());
    Ok(cluster)
}

fn connect(client: &redis::Client) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    con.set_read_timeout(Some(IO_TIMEOUT + BLOCK))?;
    Ok(con)
}

/// A route log entry: `node` added (`+`) or removed (`-`) `filter`.
fn log_entry(node: &str, op: &str, filter: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(ROUTE_LOG).arg("MAXLEN").arg("~").arg(ROUTE_LOG_LEN).arg("*");
    cmd.arg("node").arg(node).arg("op").arg(op).arg("filter").arg(filter);
    cmd
}

impl Cluster {
    /// Ends the notes of sessions handed over (their routes here go, if
    /// nothing else here subscribes).
    fn forget(&self, notes: Vec<handover::Handed>) {
        for note in notes {
            for filter in &note.filters {
                self.subscription_removed(filter);
            }
        }
    }

    /// Whether a clean start here made a new session of `id` after the
    /// claim with `token`.
    fn newer_claim(&self, id: &str, token: u64) -> bool {
        let claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.get(id).is_some_and(|claim| claim.clean > token)
    }

    /// Keeps a note of session `id` that `owner` took over (its notice at
    /// `notice` in this node's stream), and this node's routes for its
    /// `filters`, while they are released here (see [`handover`]).
    fn handing_over(&self, id: &str, owner: Arc<str>, token: u64, notice: (u64, u64), filters: Vec<String>) {
        self.forget(self.handing.take(|h| *h.to.id == *id));
        if filters.is_empty() || owner == self.node {
            return;
        }
        for filter in &filters {
            self.subscription_added(filter);
        }
        let (id, at) = (Arc::<str>::from(id), Instant::now());
        let to = handover::To { owner, id: id.clone(), token };
        let note = handover::Handed { to, filters, notice, at, adopted: false };
        if let Err(note) = self.handing.add(note) {
            crate::limited!(
                "cluster handover notes",
                log::Level::Warn,
                "cluster: too many sessions handed over at once: what still comes here for {id} is not passed on"
            );
            self.forget(vec![note]);
        }
    }

    fn remember_move(&self, from: Arc<str>, id: Arc<str>, kick: (u64, u64)) {
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        let forget = self.lease * 2;
        moved.retain(|m| m.at.elapsed() < forget);
        if moved.len() < MAX_CLAIMS {
            moved.push(Moved { from, id, kick, at: Instant::now() });
        }
    }

    /// Where the marker of a session taken from `from` is in its stream.
    fn marked(&self, from: &str, id: &str, marker: (u64, u64)) {
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = moved.iter_mut().rev().find(|m| *m.id == *id && *m.from == *from) {
            m.kick = m.kick.max(marker);
        }
    }

    /// The sessions taken from nodes that are not live (see
    /// [`Cluster::moved`]), by node; forgotten here.
    fn moved_from_dead(&self) -> HashMap<Arc<str>, MovedFrom> {
        let live = read(&self.replica).live.clone();
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        let mut from: HashMap<Arc<str>, Vec<_>> = HashMap::new();
        moved.retain(|m| match live.contains(&m.from) {
            true => true,
            false => {
                from.entry(m.from.clone()).or_default().push((m.id.clone(), m.kick));
                false
            }
        });
        from
    }

    /// Hands work to the forwarder.
    fn send(&self, out: Out) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.out.send(out).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits `d`, or less when the node stops.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    }
}

impl Cluster {
    /// Picks, for each shared subscription group in `nodes`, the one node
    /// whose members get the message (this one too, if it has members),
    /// each in turn; the other nodes' entries lose the group (and a node
    /// left with nothing to deliver goes). Returns the groups another node
    /// delivers.
    fn pick_for_groups(&self, nodes: &mut Destinations) -> Vec<Arc<str>> {
        if nodes.iter().all(|(_, _, groups)| groups.is_empty()) {
            return Vec::new();
        }
        let mut groups: Vec<Arc<str>> = nodes.iter().flat_map(|(_, _, g)| g.iter().cloned()).collect();
        groups.sort_unstable();
        groups.dedup();
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        if cursors.len() >= MAX_CLAIMS {
            cursors.clear();
        }
        let mut elsewhere = Vec::new();
        for group in groups {
            // The candidates in a fixed order: this node (if it has
            // members), then the others by name.
            let mut at: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].2.contains(&group)).collect();
            at.sort_unstable_by(|&a, &b| nodes[a].0.cmp(&nodes[b].0));
            let here = local.contains_key(&*group);
            let cursor = cursors.entry(group.clone()).or_insert(0);
            let n = at.len() + usize::from(here);
            let pick = *cursor % n;
            *cursor = cursor.wrapping_add(1);
            let chosen = match here {
                true if pick == 0 => None,
                true => Some(at[pick - 1]),
                false => Some(at[pick]),
            };
            for &i in &at {
                if Some(i) != chosen {
                    nodes[i].2.retain(|g| *g != group);
                }
            }
            if chosen.is_some() {
                elsewhere.push(group);
            }
        }
        nodes.retain(|(_, plain, groups)| *plain || !groups.is_empty());
        elsewhere
    }
}

impl Peers for Cluster {
    fn forward(&self, message: &Message, retain: bool) -> Forward {
        // $SYS is each node's own.
        if message.topic.starts_with("$SYS") {
            return Forward::default();
        }
        let mut nodes = read(&self.replica).matches(&message.topic);
        let elsewhere = self.pick_for_groups(&mut nodes);
        let direct = |owner: &str| nodes.iter().any(|(n, plain, _)| **n == *owner && *plain);
        let passed = self.handing.passed_on(&message.topic, None, direct);
        if nodes.is_empty() && passed.is_empty() && !retain {
            return Forward { receipt: None, elsewhere };
        }
        if message.qos != QoS::AtMostOnce || retain {
            let receipt = (message.qos != QoS::AtMostOnce).then(|| Receipt::waiting(1));
            self.waiting.fetch_add(1, Ordering::AcqRel);
            self.send(Out::Message(nodes, message.clone(), retain, receipt.clone(), passed));
            return Forward { receipt, elsewhere };
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::limited!(
                "cluster forward dropped",
                log::Level::Warn,
                "cluster: {MAX_WAITING} messages wait for Redis already: a message to {} not forwarded",
                message.topic
            );
            return Forward { receipt: None, elsewhere };
        }
        self.send(Out::Message(nodes, message.clone(), false, None, passed));
        Forward { receipt: None, elsewhere }
    }

    fn adopted(&self, client_id: &Arc<str>) {
        let moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = moved.iter().rev().find(|m| m.id == *client_id) {
            self.send(Out::Adopted(m.from.clone(), client_id.clone()));
        }
    }

    fn subscription_added(&self, route: &str) {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let count = local.entry(route.into()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.send(Out::Route(true, route.to_owned()));
        }
    }

    fn subscription_removed(&self, route: &str) {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(count) = local.get_mut(route) else { return };
        *count -= 1;
        if *count == 0 {
            local.remove(route);
            self.send(Out::Route(false, route.to_owned()));
        }
    }

    fn figures(&self) -> crate::broker::ClusterFigures {
        let replica = read(&self.replica);
        let routes = replica.live.iter().map(|n| replica.by_node.get(n).map_or(0, HashSet::len)).sum::<usize>();
        crate::broker::ClusterFigures {
            nodes: replica.live.len() as u64 + 1,
            routes: routes as u64,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed) as u64,
        }
    }

    fn claim(&self, client_id: &Arc<str>, take_session: bool) -> Option<Arc<Claimed>> {
        {
            let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
            if claims.len() >= MAX_CLAIMS {
                claims.retain(|_, claim| claim.pending > 0);
            }
            claims.entry(client_id.clone()).or_default().pending += 1;
        }
        // The session comes back here, or ends: nothing more goes on.
        self.forget(self.handing.take(|h| h.to.id == *client_id));
        let guard = take_session.then(|| Box::new(self.taking.begin()) as Box<dyn std::any::Any + Send + Sync>);
        let claimed = Arc::new(Claimed { guard, ..Claimed::default() });
        self.send(Out::Claim(client_id.clone(), take_session, claimed.clone()));
        Some(claimed)
    }

    fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    fn keep_will(&self, conn: u64, client_id: &Arc<str>, will: Option<(&Message, bool, u32)>) -> Option<Arc<Receipt>> {
        let life = self.life.load(Ordering::Acquire);
        let encoded = will.map(|(message, retain, delay)| encode_will(message, retain, delay));
        let receipt = encoded.as_ref().map(|_| Receipt::waiting(1));
        self.send(Out::Will(life, conn, client_id.clone(), encoded, receipt.clone()));
        receipt
    }

    fn nodes_for(&self, topic: &str) -> Vec<String> {
        let mut nodes: Vec<String> = read(&self.replica).nodes_for(topic).iter().map(|n| n.to_string()).collect();
        nodes.sort();
        nodes
    }

    fn stop(&self) {
        // What is handed to the forwarder goes out first (for at most a
        // few seconds): the route changes of the connections that ended.
        let until = Instant::now() + IO_TIMEOUT;
        while self.queued.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Leave at once rather than when the lease runs out. The routes of
        // the persistent sessions here stay: what other nodes send them
        // waits in this node's stream until it is back.
        let left: RedisResult<()> =
            connect(&self.client).and_then(|mut con| redis::cmd("ZREM").arg(NODES).arg(&*self.node).query(&mut con));
        match left {
            Ok(()) => log::info!("cluster: node {} left", self.node),
            Err(e) => log::warn!("cluster: node {} could not tell Redis it leaves ({e}); its lease ends it", self.node),
        }
    }
}

/// Renews the lease; the live nodes, this one excluded.
fn beat(con: &mut Connection, node: &Arc<str>, lease: Duration) -> RedisResult<HashSet<Arc<str>>> {
    let live: Vec<String> =
        redis::cmd("EVAL").arg(BEAT_SCRIPT).arg(1).arg(NODES).arg(&**node).arg(lease.as_millis() as u64).query(con)?;
    Ok(live.into_iter().filter(|n| **n != **node).map(Arc::from).collect())
}

/// Reads the whole route table of the `live` nodes; returns the route log
/// id it is current at (changes after it are read from the log).
fn load_routes(con: &mut Connection, live: &HashSet<Arc<str>>, me: &str) -> RedisResult<(Replica, String)> {
    // The log's position first: a change made while the sets are read is
    // then read again from the log, which is harmless (set semantics).
    let last: Value = redis::cmd("XREVRANGE").arg(ROUTE_LOG).arg("+").arg("-").arg("COUNT").arg(1).query(con)?;
    let last = match last {
        Value::Array(entries) => entries.first().and_then(entry_id),
        _ => None,
    };
    let mut replica = Replica { live: live.clone(), ..Replica::default() };
    let members: Vec<String> = redis::cmd("SMEMBERS").arg(MEMBERS).query(con)?;
    for node in members.into_iter().filter(|n| n != me) {
        let filters: Vec<String> = redis::cmd("SMEMBERS").arg(routes_key(&node)).query(con)?;
        let node: Arc<str> = node.into();
        for filter in filters {
            replica.add(&node, &filter);
        }
    }
    Ok((replica, last.unwrap_or_else(|| "0-0".into())))
}

fn entry_id(entry: &Value) -> Option<String> {
    match entry {
        Value::Array(parts) => match parts.first()? {
            Value::BulkString(id) => String::from_utf8(id.clone()).ok(),
            Value::SimpleString(id) => Some(id.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Makes this node's retained messages the cluster's table; returns the
/// retained log's id it is current at.
fn load_retained(con: &mut Connection, broker: &Broker) -> RedisResult<String> {
    let last: Value = redis::cmd("XREVRANGE").arg(RETAIN_LOG).arg("+").arg("-").arg("COUNT").arg(1).query(con)?;
    let last = match last {
        Value::Array(entries) => entries.first().and_then(entry_id),
        _ => None,
    };
    let table: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL").arg(RETAINED).query(con)?;
    let mut kept = HashSet::new();
    for (_, bytes) in table {
        if let Some(message) = crate::store::decode_message(&bytes) {
            kept.insert(message.topic.clone());
            broker.retain_from_cluster(&message);
        }
    }
    // What the cluster cleared while this node was away goes here too.
    for topic in broker.retained_topics().into_iter().filter(|t| !kept.contains(t)) {
        broker.retain_from_cluster(&Message::new(topic, bytes::Bytes::new(), QoS::AtMostOnce, true));
    }
    Ok(last.unwrap_or_else(|| "0-0".into()))
}

/// The `midge-cluster-routes` thread.
fn follow_routes(c: &Arc<Cluster>, broker: &Broker, con: Option<Connection>) {
    let mut position: Option<String> = None;
    let mut retained_at: Option<String> = None;
    let mut next_beat = Instant::now();
    let mut link = Link { con, failures: 0 };
    // Wills an earlier life of this node kept are taken on start and on
    // rejoining; those of nodes whose lease ended, after every beat.
    let mut take_own = true;
    let mut delayed: Vec<DelayedWill> = Vec::new();
    while !c.stopping() {
        // A new connection reads the tables whole again.
        if link.con.is_none() {
            (position, retained_at) = (None, None);
        }
        let Some(conn) = link.get(c, no_setup) else { continue };
        let turn = (|| -> RedisResult<()> {
            let mut beaten = false;
            if Instant::now() >= next_beat {
                let sent = Instant::now();
                let live = beat(conn, &c.node, c.lease)?;
                c.renewed.store(sent.duration_since(c.epoch).as_millis() as u64, Ordering::Release);
                beaten = true;
                next_beat = Instant::now() + BEAT;
                if !c.serving() && !take_own {
                    // Back after being cut off: a new life, whose wills are
                    // told from those of the connections just closed.
                    let life: u64 = redis::cmd("INCR").arg("midge:fence").query(conn)?;
                    c.life.store(life, Ordering::Release);
                    take_own = true;
                }
                let mut replica = write(&c.replica);
                if replica.live != live {
                    let joined: Vec<_> = live.difference(&replica.live).cloned().collect();
                    let gone: Vec<_> = replica.live.difference(&live).cloned().collect();
                    for node in &joined {
                        log::info!("cluster: node {node} is live");
                    }
                    for node in &gone {
                        log::info!("cluster: node {node} left or its lease ended");
                    }
                    replica.live = live;
                    // A node that joined: its routes are read whole.
                    if !joined.is_empty() {
                        position = None;
                    }
                }
            }
            let from = match position.clone() {
                Some(p) => p,
                None => {
                    let live = read(&c.replica).live.clone();
                    let (replica, at) = load_routes(conn, &live, &c.node)?;
                    *write(&c.replica) = replica;
                    position = Some(at.clone());
                    at
                }
            };
            let retained_from = match retained_at.clone() {
                Some(p) => p,
                None => {
                    let at = load_retained(conn, broker)?;
                    retained_at = Some(at.clone());
                    at
                }
            };
            if beaten {
                take_wills(c, broker, conn, take_own, &mut delayed)?;
                take_sessions(c, broker, conn)?;
                drain_moved_from_dead(c, broker);
                if std::mem::take(&mut take_own) && !c.serving.swap(true, Ordering::AcqRel) {
                    log::warn!("cluster: node {} has Redis again: serving clients again", c.node);
                }
            }
            fire_due_wills(c, broker, conn, &mut delayed)?;
            let mut wake = next_beat;
            if let Some(first) = delayed.iter().map(|d| d.due).min() {
                wake = wake.min(first);
            }
            let block = BLOCK.min(wake.saturating_duration_since(Instant::now())).as_millis().max(1) as u64;
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(ROUTE_LOG)
                .arg(RETAIN_LOG)
                .arg(&from)
                .arg(&retained_from)
                .query(conn)?;
            let (mut routes, mut retained) = (Vec::new(), Vec::new());
            for key in reply.into_iter().flat_map(|r| r.keys) {
                match key.key.as_str() {
                    ROUTE_LOG => routes.extend(key.ids),
                    _ => retained.extend(key.ids),
                }
            }
            // This node's own changes too: the log's order is the cluster's.
            for entry in retained {
                if let Some(Value::BulkString(bytes)) = entry.map.get("m")
                    && let Some(message) = crate::store::decode_message(bytes)
                {
                    broker.retain_from_cluster(&message);
                }
                retained_at = Some(entry.id);
            }
            let mut replica = write(&c.replica);
            for entry in routes {
                let node = text(entry.map.get("node"));
                let (op, filter) = (text(entry.map.get("op")), text(entry.map.get("filter")));
                position = Some(entry.id);
                let (Some(node), Some(op), Some(filter)) = (node, op, filter) else { continue };
                if *node == *c.node {
                    continue;
                }
                let node: Arc<str> = node.into();
                match op.as_str() {
                    "+" => replica.add(&node, &filter),
                    _ => replica.remove(&node, &filter),
                }
            }
            Ok(())
        })();
        link.done(c, turn);
    }
}

/// A will taken from a node that died, waiting for its delay.
struct DelayedWill {
    due: Instant,
    /// The node it was kept by and its client id: it is fired only if that
    /// node still owns the id then (the client did not connect again).
    node: String,
    id: String,
    message: Message,
    retain: bool,
}

/// Takes the wills to fire (see [`TAKE_WILLS_SCRIPT`]): publishes each now
/// or, with a delay, keeps it in `delayed`.
fn take_wills(
    c: &Cluster,
    broker: &Broker,
    conn: &mut Connection,
    own: bool,
    delayed: &mut Vec<DelayedWill>,
) -> RedisResult<()> {
    let life = c.life.load(Ordering::Acquire);
    let taken: Vec<Value> =
        redis::cmd("EVAL").arg(TAKE_WILLS_SCRIPT).arg(0).arg(&*c.node).arg(life).arg(u8::from(own)).query(conn)?;
    for will in taken.chunks_exact(4) {
        let (Some(node), Some(id), Some(owner)) = (text(Some(&will[0])), text(Some(&will[1])), text(Some(&will[3])))
        else {
            continue;
        };
        let Some((message, retain, delay)) = (match &will[2] {
            Value::BulkString(bytes) => decode_will(bytes),
            _ => None,
        }) else {
            log::warn!("cluster: the will of client {id} (node {node}) does not decode; not published");
            continue;
        };
        match delay {
            0 => {
                log::info!("cluster: node {node} ended without client {id}'s connection ending: publishing its will");
                broker.publish(message, retain);
            }
            // The client connected again (somewhere): its will waits no more.
            _ if !owner.is_empty() && owner != node => {}
            secs => {
                let due = Instant::now() + Duration::from_secs(u64::from(secs));
                delayed.push(DelayedWill { due, node, id, message, retain });
            }
        }
    }
    Ok(())
}

/// Publishes the delayed wills whose delay is over, unless their client
/// connected again meanwhile.
fn fire_due_wills(
    c: &Cluster,
    broker: &Broker,
    conn: &mut Connection,
    delayed: &mut Vec<DelayedWill>,
) -> RedisResult<()> {
    let now = Instant::now();
    while let Some(at) = delayed.iter().position(|d| d.due <= now) {
        let owner: Option<String> =
            redis::cmd("HGET").arg(format!("midge:owner:{}", delayed[at].id)).arg("node").query(conn)?;
        let will = delayed.swap_remove(at);
        // This node owning it by taking the dead node's sessions over is
        // not the client connecting again (that claims the id here).
        let taken_over = owner.as_deref() == Some(&*c.node)
            && !c.claims.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&*will.id);
        if owner.is_none_or(|o| o == will.node) || taken_over {
            log::info!(
                "cluster: client {}'s will delay is over (node {} ended): publishing its will",
                will.id,
                will.node
            );
            broker.publish(will.message, will.retain);
        }
    }
    Ok(())
}

/// The `midge-cluster-lease` thread: once this node's lease would have run
/// out without a renewal (less a margin: the other nodes must not see it
/// end while this node still serves), it closes its clients and refuses new
/// ones until a renewal goes through again (`follow_routes`).
fn watch_lease(c: &Cluster, broker: &Broker) {
    let margin = Duration::from_secs(1).min(c.lease / 5);
    let mut told = Instant::now();
    while !c.stopping() {
        c.pause(Duration::from_millis(100));
        let renewed = c.epoch + Duration::from_millis(c.renewed.load(Ordering::Acquire));
        if renewed.elapsed() + margin < c.lease {
            continue;
        }
        if c.serving.swap(false, Ordering::AcqRel) {
            let n = broker.end_connections_cut_off();
            log::warn!(
                "cluster: node {} could not renew its lease for {:?}: closing its {n} clients (use another node) until Redis answers",
                c.node,
                renewed.elapsed()
            );
            told = Instant::now();
        } else if told.elapsed() >= BEAT {
            // One that came in as the node was cut off.
            broker.end_connections_cut_off();
            told = Instant::now();
        }
    }
}

/// A thread's connection to Redis, made again (after a pause growing from
/// 100 ms to 2 s) whenever a call on it failed.
#[derive(Default)]
struct Link {
    con: Option<Connection>,
    failures: u32,
}

impl Link {
    /// The connection, made (and set up) if there is none; `None`, after
    /// a pause, while Redis does not answer.
    fn get(&mut self, c: &Cluster, setup: impl FnOnce(&mut Connection) -> RedisResult<()>) -> Option<&mut Connection> {
        if self.con.is_none() {
            match connect(&c.client).and_then(|mut fresh| setup(&mut fresh).map(|()| fresh)) {
                Ok(fresh) => self.con = Some(fresh),
                Err(e) => {
                    crate::limited!("cluster redis", log::Level::Warn, "cluster: Redis unreachable: {e}");
                    self.pause(c);
                    return None;
                }
            }
        }
        self.con.as_mut()
    }

    /// Whether `result` of a call on the connection is a success; a
    /// failure gives the connection up.
    fn done(&mut self, c: &Cluster, result: RedisResult<()>) -> bool {
        match result {
            Ok(()) => {
                self.failures = 0;
                true
            }
            Err(e) => {
                crate::limited!("cluster redis", log::Level::Warn, "cluster: Redis: {e}; connecting again");
                self.con = None;
                self.pause(c);
                false
            }
        }
    }

    fn pause(&mut self, c: &Cluster) {
        self.failures = (self.failures + 1).min(5);
        c.pause(Duration::from_millis(100 << (self.failures - 1)).min(Duration::from_secs(2)));
    }
}

fn no_setup(_: &mut Connection) -> RedisResult<()> {
    Ok(())
}

/// The `midge-cluster-out` thread.
fn forward_out(c: &Cluster, broker: &Broker, queue: &Receiver<Out>) {
    let mut link = Link::default();
    let mut batch: Vec<Out> = Vec::new();
    // What follows a marker in what was taken from the queue: the next batch.
    let mut after_marker: Vec<Out> = Vec::new();
    // Live nodes that stopped reading their stream: not waited for.
    let mut not_reading: HashSet<Arc<str>> = HashSet::new();
    loop {
        if batch.is_empty() && !after_marker.is_empty() {
            batch = std::mem::take(&mut after_marker);
        }
        if batch.is_empty() {
            match queue.recv_timeout(Duration::from_millis(200)) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) if !c.stopping() => continue,
                Err(_) => return,
            }
            batch.extend(std::iter::from_fn(|| queue.try_recv().ok()).take(MAX_BATCH - 1));
        }
        // A batch ends at a marker (written after the batch's messages):
        // what was queued after it goes in the stream after it.
        if let Some(at) = batch.iter().position(|o| matches!(o, Out::Adopted(..)))
            && at + 1 < batch.len()
        {
            let mut rest = batch.split_off(at + 1);
            rest.append(&mut after_marker);
            after_marker = rest;
        }
        if c.stopping() {
            return;
        }
        let Some(conn) = link.get(c, no_setup) else { continue };
        let (pipe, messages, dests) = pipeline(&c.node, c.life.load(Ordering::Acquire), &batch);
        // On a failure the batch is sent again on a new connection (a route
        // change twice is harmless; a message twice is at most a duplicate).
        let sent = pipe.query::<Vec<Value>>(conn);
        let mut replies = sent.as_ref().map_or_else(|_| Vec::new(), Clone::clone);
        if link.done(c, sent.map(drop)) {
            // The claims' answers, each destination's stream length, the
            // markers' ids.
            let adopted = batch.iter().filter(|o| matches!(o, Out::Adopted(..))).count();
            let markers = replies.split_off(replies.len().saturating_sub(adopted));
            let lengths = replies.split_off(replies.len().saturating_sub(dests.len()));
            let mut behind = Vec::new();
            for (dest, len) in dests.into_iter().zip(lengths.iter().map(int)) {
                match len > MAX_BEHIND {
                    true if !not_reading.contains(&dest) => behind.push(dest),
                    true => {}
                    false => drop(not_reading.remove(&dest)),
                }
            }
            c.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            let mut markers = markers.into_iter();
            for item in &batch {
                if let Out::Adopted(from, id) = item
                    && let Some(marker) = text(markers.next().as_ref()).as_deref().and_then(entry_order)
                {
                    c.marked(from, id, marker);
                }
            }
            let claimed = batch.iter().filter_map(|o| match o {
                Out::Claim(id, take, done) => Some((id, *take, done)),
                _ => None,
            });
            let mut kicked = Vec::new();
            let mut claims = c.claims.lock().unwrap_or_else(PoisonError::into_inner);
            for ((id, take, claimed), reply) in claimed.zip(replies) {
                let ClaimReply { token, moved, from, session } = claim_reply(reply);
                if let (Some((node, kick)), Some(_)) = (from, &session) {
                    c.remember_move(node, id.clone(), kick);
                }
                if moved {
                    *claimed.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
                }
                let taking = c.taking_over.lock().unwrap_or_else(PoisonError::into_inner).clone();
                *claimed.after.lock().unwrap_or_else(PoisonError::into_inner) = taking;
                if let Some(claim) = claims.get_mut(id) {
                    claim.pending = claim.pending.saturating_sub(1);
                    claim.token = claim.token.max(token);
                    if !take {
                        claim.clean = claim.clean.max(token);
                    }
                    // A notice that came meanwhile, newer than every claim.
                    if claim.pending == 0 && claim.notice > claim.token {
                        let (notice, by) = (claim.notice, claim.notice_by.take());
                        claims.remove(id);
                        kicked.push((id.clone(), notice, by));
                    }
                }
            }
            drop(claims);
            for (id, notice, by) in kicked {
                end_taken_over(c, broker, &id, notice, by);
            }
            let mut taken = 0;
            for item in batch.drain(..) {
                match &item {
                    Out::Claim(_, _, claimed) => claimed.receipt.complete(),
                    Out::Will(.., Some(receipt)) => receipt.complete(),
                    _ => {}
                }
                if let Out::Message(_, _, _, receipt, _) = item {
                    taken += 1;
                    if let Some(receipt) = receipt {
                        receipt.complete();
                    }
                }
            }
            c.waiting.fetch_sub(taken, Ordering::AcqRel);
            c.forwarded.fetch_add(messages, Ordering::Relaxed);
            let timeout = broker.config().slow_consumer_timeout;
            for dest in behind {
                if !wait_until_read(c, &mut link, &dest, timeout) {
                    not_reading.insert(dest);
                }
            }
        }
    }
}

/// Waits while live node `dest` has more than [`MAX_BEHIND`] entries unread
/// in its stream: it is slower than what is sent to it, and the publishers
/// here are slowed rather than its stream trimmed. A node that is down
/// (its lease ended) is not waited for: its stream keeps what it is sent, up
/// to `STREAM_LEN` entries (the oldest go beyond that). Nor is a node
/// that reads nothing for `timeout` (`slow_consumer_timeout`): `false`
/// then, and it is not waited for again until it has caught up.
fn wait_until_read(c: &Cluster, link: &mut Link, dest: &Arc<str>, timeout: Duration) -> bool {
    let key = stream_key(dest);
    let mut least = (u64::MAX, Instant::now());
    while !c.stopping() && read(&c.replica).live.contains(dest) {
        let Some(conn) = link.get(c, no_setup) else { return true };
        let len: RedisResult<u64> = redis::cmd("XLEN").arg(&key).query(conn);
        let Ok(len) = len else {
            link.done(c, len.map(drop));
            return true;
        };
        if len <= MAX_BEHIND / 2 {
            return true;
        }
        if len < least.0 {
            least = (len, Instant::now());
        } else if least.1.elapsed() >= timeout {
            log::warn!(
                "cluster: node {dest} read nothing of its {len} waiting entries for {timeout:?} (slow_consumer_timeout): forwarding no longer waits for it"
            );
            return false;
        }
        crate::limited!(
            "cluster behind",
            log::Level::Warn,
            "cluster: node {dest} has {len} entries unread: forwarding waits (publishers here are slowed)"
        );
        c.pause(Duration::from_millis(10));
    }
    true
}

/// One transaction for a batch: route changes and retained messages in
/// order, then one stream entry per destination node with its messages in
/// order. Also returns the number of message copies. A transaction, so
/// that the retained table and its log change in one order for all.
/// A will kept in an earlier `life` than this one is not written: its
/// connection was closed when the node was cut off.
/// The destinations, in the order their stream lengths are answered.
fn pipeline(node: &str, life: u64, batch: &[Out]) -> (redis::Pipeline, u64, Vec<Arc<str>>) {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut per_node: Vec<(Arc<str>, Vec<u8>)> = Vec::new();
    let mut copies = 0;
    for item in batch {
        match item {
            Out::Route(add, filter) => {
                match add {
                    true => pipe.sadd(routes_key(node), filter).ignore(),
                    false => pipe.srem(routes_key(node), filter).ignore(),
                };
                pipe.add_command(log_entry(node, if *add { "+" } else { "-" }, filter)).ignore();
            }
            // Written last, after the batches (see below).
            Out::Adopted(..) => {}
            Out::Will(at, conn, id, will, _) => {
                let field = format!("{at}:{conn}:{id}");
                match will {
                    Some(will) if *at == life => pipe.hset(wills_key(node), field, will).ignore(),
                    Some(_) => continue,
                    None => pipe.hdel(wills_key(node), field).ignore(),
                };
            }
            // The one command whose answer is kept: the claim's token.
            Out::Claim(id, take, _) => {
                pipe.cmd("EVAL").arg(CLAIM_SCRIPT).arg(3).arg(format!("midge:owner:{id}")).arg("midge:fence");
                pipe.arg(store::session_key(id)).arg(node).arg(&**id).arg(STREAM_LEN).arg(if *take {
                    "1"
                } else {
                    "0"
                });
            }
            Out::Message(nodes, message, retain, _, passed) => {
                let mut encoded = Vec::new();
                crate::store::encode_message_into(message, &mut encoded);
                for to in passed {
                    pass_on(&mut pipe, to, &encoded);
                }
                if *retain {
                    match message.payload.is_empty() {
                        true => pipe.hdel(RETAINED, &*message.topic).ignore(),
                        false => pipe.hset(RETAINED, &*message.topic, &encoded).ignore(),
                    };
                    pipe.cmd("XADD").arg(RETAIN_LOG).arg("MAXLEN").arg("~").arg(ROUTE_LOG_LEN).arg("*");
                    pipe.arg("m").arg(&encoded).ignore();
                }
                // Each destination's place in this batch, and which of
                // them get it as plain (told to each).
                let place =
                    |per_node: &[(Arc<str>, Vec<u8>)], dest: &Arc<str>| per_node.iter().position(|(n, _)| n == dest);
                let mut direct = 0u64;
                for (dest, plain, _) in nodes {
                    let at = place(&per_node, dest).unwrap_or_else(|| {
                        per_node.push((dest.clone(), Vec::new()));
                        per_node.len() - 1
                    });
                    if *plain && at < 64 {
                        direct |= 1 << at;
                    }
                }
                for (dest, plain, groups) in nodes {
                    let Some(at) = place(&per_node, dest) else { continue };
                    encode_record(&mut per_node[at].1, *plain, direct, groups, &encoded);
                    copies += 1;
                }
            }
        }
    }
    let mut dests = Vec::with_capacity(per_node.len());
    let names = per_node.iter().map(|(n, _)| &**n).collect::<Vec<_>>().join("\n");
    for (dest, messages) in per_node {
        pipe.cmd("XADD")
            .arg(stream_key(&dest))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg("from")
            .arg(node)
            .arg("d")
            .arg(&names)
            .arg("b")
            .arg(messages)
            .ignore();
        pipe.cmd("XLEN").arg(stream_key(&dest));
        dests.push(dest);
    }
    // A marker goes after the batch entries of the messages queued before
    // it (an answer kept: the marker's id).
    for item in batch {
        if let Out::Adopted(from, id) = item {
            pipe.cmd("XADD").arg(stream_key(from)).arg("MAXLEN").arg("~").arg(STREAM_LEN).arg("*");
            pipe.arg("adopted").arg(&**id);
        }
    }
    (pipe, copies, dests)
}

/// A message for the session `id` only, at its new owner (see
/// [`handover`]).
fn pass_on(pipe: &mut redis::Pipeline, to: &handover::To, encoded: &[u8]) {
    pipe.cmd("XADD").arg(stream_key(&to.owner)).arg("MAXLEN").arg("~").arg(STREAM_LEN).arg("*");
    pipe.arg("to").arg(&*to.id).arg("token").arg(to.token).arg("m").arg(encoded).ignore();
}

/// One message of a forwarded batch: its length (4 bytes, what follows),
/// whether the destination's subscriptions that are not shared get it (1
/// byte), which of the batch's destinations (the entry's `d`, by place,
/// the first 64) get it so (8 bytes), the shared subscription groups it
/// delivers for (a count, 4 bytes, then each as 2 bytes of length and the
/// name), the message as the store encodes it.
fn encode_record(buf: &mut Vec<u8>, plain: bool, direct: u64, groups: &[Arc<str>], encoded: &[u8]) {
    let len = 13 + groups.iter().map(|g| 2 + g.len()).sum::<usize>() + encoded.len();
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(u8::from(plain));
    buf.extend_from_slice(&direct.to_be_bytes());
    buf.extend_from_slice(&(groups.len() as u32).to_be_bytes());
    for group in groups {
        // A filter is at most 65,535 bytes (MQTT-1.5.4).
        buf.extend_from_slice(&(group.len() as u16).to_be_bytes());
        buf.extend_from_slice(group.as_bytes());
    }
    buf.extend_from_slice(encoded);
}

/// A forwarded message: whether the subscriptions here that are not
/// shared get it, which of its entry's destinations get it so, and the
/// shared subscription groups it is for.
type Record = (Message, bool, u64, Vec<Arc<str>>);

/// The messages of a forwarded batch ([`encode_record`]); decoding stops at
/// the first one that does not fit what is left.
fn decode_batch(mut bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() || len > MAX_MESSAGE {
            log::warn!("cluster: a forwarded batch is cut short ({len} bytes declared, {} left)", rest.len());
            break;
        }
        match decode_record(&rest[..len]) {
            Some(r) => records.push(r),
            None => log::warn!("cluster: a forwarded message does not decode; skipped"),
        }
        bytes = &rest[len..];
    }
    records
}

fn decode_record(bytes: &[u8]) -> Option<Record> {
    let (&plain, rest) = bytes.split_first()?;
    let (direct, rest) = rest.split_first_chunk::<8>()?;
    let (count, mut rest) = rest.split_first_chunk::<4>()?;
    // Each group takes 2 bytes at least: a count past that is not believed.
    let count = u32::from_be_bytes(*count) as usize;
    let mut groups = Vec::with_capacity(count.min(rest.len() / 2));
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        groups.push(std::str::from_utf8(after.get(..len)?).ok()?.into());
        rest = &after[len..];
    }
    Some((crate::store::decode_message(rest)?, plain == 1, u64::from_be_bytes(*direct), groups))
}

/// The `midge-cluster-in` thread.
/// An integer reply (0 if it is not one).
fn int(value: &Value) -> u64 {
    match value {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// A claim's answer: its fencing token, whether another node owned the
/// id, and the session taken over.
fn claim_reply(reply: Value) -> ClaimReply {
    let Value::Array(mut parts) = reply else { return ClaimReply::default() };
    let last = parts.pop();
    let (token, moved) = (parts.first().map_or(0, int), parts.get(1).map_or(0, int) == 1);
    let from = match (text(parts.get(2)), text(parts.get(3)).as_deref().and_then(entry_order)) {
        (Some(node), Some(kick)) if moved => Some((Arc::from(node), kick)),
        _ => None,
    };
    let session = match last {
        Some(Value::Array(fields)) if !fields.is_empty() => session_fields(fields).map(|(_, session)| session),
        _ => None,
    };
    ClaimReply { token, moved, from, session }
}

/// A claim's answer ([`CLAIM_SCRIPT`]).
#[derive(Default)]
struct ClaimReply {
    token: u64,
    /// Another node owned the id.
    moved: bool,
    /// That node, and where the claim's notice is in its stream.
    from: Option<(Arc<str>, (u64, u64))>,
    /// The persistent session taken over.
    session: Option<crate::store::StoredSession>,
}

/// A session's hash as a script returns it (`HGETALL`: field, value, ...).
fn session_fields(fields: Vec<Value>) -> Option<(Arc<str>, crate::store::StoredSession)> {
    let mut pairs = Vec::with_capacity(fields.len() / 2);
    let mut fields = fields.into_iter();
    while let (Some(Value::BulkString(field)), Some(Value::BulkString(value))) = (fields.next(), fields.next()) {
        pairs.push((field, value));
    }
    store::decode_session(pairs)
}

/// Takes over the persistent sessions of the nodes whose lease ended (see
/// [`TAKE_SESSIONS_SCRIPT`]), and delivers to them what waits in those
/// nodes' streams (a thread per node, [`drain_dead_stream`]).
fn take_sessions(c: &Arc<Cluster>, broker: &Broker, conn: &mut Connection) -> RedisResult<()> {
    // A CONNECT here whose claim finds the session this node's already
    // waits until it is here (see `Claimed::after`).
    struct Taking<'c>(&'c Cluster, Arc<Receipt>);
    impl Drop for Taking<'_> {
        fn drop(&mut self) {
            *self.0.taking_over.lock().unwrap_or_else(PoisonError::into_inner) = None;
            self.1.complete();
        }
    }
    let taking = Taking(c, Receipt::waiting(1));
    *c.taking_over.lock().unwrap_or_else(PoisonError::into_inner) = Some(taking.1.clone());
    // Each dead node once, with every session taken from it (in replies of
    // at most TAKE_BATCH sessions each).
    let mut dead: Vec<(String, Option<String>, HashSet<Arc<str>>)> = Vec::new();
    loop {
        let taken: Vec<Value> = redis::cmd("EVAL")
            .arg(TAKE_SESSIONS_SCRIPT)
            .arg(0)
            .arg(&*c.node)
            .arg(ROUTE_LOG_LEN)
            .arg(TAKE_BATCH)
            .query(conn)?;
        if taken.is_empty() {
            break;
        }
        for from in taken {
            let Value::Array(parts) = from else { continue };
            let mut parts = parts.into_iter();
            let (Some(node), mark) = (text(parts.next().as_ref()), text(parts.next().as_ref())) else { continue };
            let at = match dead.iter().position(|(n, ..)| *n == node) {
                Some(at) => at,
                None => {
                    dead.push((node.clone(), mark, HashSet::new()));
                    dead.len() - 1
                }
            };
            for fields in parts {
                let Value::Array(fields) = fields else { continue };
                match session_fields(fields) {
                    Some((id, session)) => {
                        broker.adopt_from_cluster(&id, Some(session));
                        dead[at].2.insert(id);
                    }
                    None => log::warn!("cluster: a session of node {node} in Redis cannot be read; skipped"),
                }
            }
        }
    }
    drop(taking);
    for (node, mark, only) in dead {
        log::info!("cluster: node {node}'s lease ended: its {} persistent session(s) are this node's now", only.len());
        let applied = mark.as_deref().and_then(entry_order);
        let (c, b) = (c.clone(), broker.clone());
        let spawned = std::thread::Builder::new()
            .name("midge-cluster-take".into())
            .spawn(move || drain_dead_stream(&c, &b, &node, only, applied));
        if let Err(e) = spawned {
            log::error!("cluster: cannot start a thread to deliver what waits for the sessions taken over: {e}");
        }
    }
    Ok(())
}

/// A stream entry id (`{ms}-{seq}`) as numbers, in Redis's order.
fn entry_order(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The store key ([`crate::store::Op::Mark`]) of the last entry of `stream`
/// whose copies this node committed.
fn applied_key(stream: &str) -> Arc<str> {
    format!("cluster:applied:{stream}").into()
}

/// Test hook: a receiving node that has committed the copies an entry made
/// for its persistent sessions stops there, before acknowledging the entry
/// to Redis, and says so, so that a test can kill it at that point.
pub const STALL_BEFORE_ACK_ENV: &str = "MIDGE_TEST_CLUSTER_STALL_BEFORE_ACK";

/// What a node applies from one stream: its own, or a dead node's whose
/// sessions it took over.
struct Applier {
    key: String,
    /// Where the last entry applied is committed ([`applied_key`]).
    mark: Arc<str>,
    /// The last entry whose copies were committed.
    applied: Option<(u64, u64)>,
    /// Only these sessions get the messages (a dead node's stream).
    only: Option<HashSet<Arc<str>>>,
}

impl Applier {
    /// Reads up to 64 entries of the stream as this node's consumer:
    /// from `from` (`0`: what it read and did not acknowledge; `>`: new
    /// ones, waiting up to [`BLOCK`] for some).
    fn read(&self, c: &Cluster, conn: &mut Connection, from: &str) -> RedisResult<Vec<redis::streams::StreamId>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&*c.node)
            .arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(from)
            .query(conn)?;
        Ok(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect())
    }

    /// Routes `entries` here, each entry's copies and its mark in one
    /// commit, waits for the store, and acknowledges and deletes them in
    /// Redis. Exactly once across a crash between the commit and the
    /// XACK: an entry read `again` (after a restart, or a connection lost
    /// before the XACK's answer) at or below the last one applied is
    /// acknowledged without being routed again. Only entries read again: a
    /// new entry at or below it would mean Redis lost the stream (a reset,
    /// a failover to a replica behind), and it is routed as any other.
    /// The sessions whose queue is full are added to `pressed`. `Ok(false)`:
    /// the store failed (the entries stay in Redis).
    fn apply(
        &mut self,
        c: &Cluster,
        broker: &Broker,
        conn: &mut Connection,
        entries: Vec<redis::streams::StreamId>,
        again: bool,
        pressed: &mut Vec<Arc<crate::session_handle::SessionHandle>>,
    ) -> RedisResult<bool> {
        let (mut ids, mut ticket, mut last) = (Vec::new(), Ticket::default(), self.applied);
        // What goes on to sessions handed over from here (this node's own
        // stream only): new owner, client id, the message encoded.
        let mut passed: Vec<(handover::To, Vec<u8>)> = Vec::new();
        let own = self.only.is_none();
        for entry in entries {
            let order = entry_order(&entry.id);
            if again && order.is_some() && order <= self.applied {
                log::debug!("cluster: entry {} of {} was applied before: not routed again", entry.id, self.key);
                ids.push(entry.id);
                continue;
            }
            if own {
                c.forget(c.handing.expired(order));
            }
            if let (Some(id), Some(token), true) = (text(entry.map.get("kick")), text(entry.map.get("token")), own) {
                let by = text(entry.map.get("by")).zip(order).map(|(by, at)| (Arc::<str>::from(by), at));
                taken_over(c, broker, &id, token.parse().unwrap_or(0), by);
            }
            if let (Some(id), true) = (text(entry.map.get("adopted")), own) {
                c.handing.adopted(&id);
            }
            // A message queued at another node for a session this one took
            // over meanwhile: for that session only (or on to the node it
            // went to from here).
            let to = match (text(entry.map.get("to")), entry.map.get("m")) {
                (Some(id), Some(Value::BulkString(bytes))) => match c.handing.owner_of(&id).filter(|_| own) {
                    Some(to) => {
                        passed.push((to, bytes.clone()));
                        None
                    }
                    // Passed on for the session a claim here took: not for
                    // one a later clean start here made.
                    None if text(entry.map.get("token"))
                        .and_then(|t| t.parse::<u64>().ok())
                        .is_some_and(|token| c.newer_claim(&id, token)) =>
                    {
                        log::debug!("cluster: a message passed on for {id}'s session taken before: not delivered");
                        None
                    }
                    None => crate::store::decode_message(bytes).map(|m| (id, m)),
                },
                _ => None,
            };
            // The copies and the mark in one commit.
            let hold = broker.store().map(crate::store::Persistence::hold);
            let mut made = Ticket::default();
            if let Some((id, message)) = to.filter(|(id, _)| self.only.as_ref().is_none_or(|o| o.contains(id.as_str())))
            {
                let only = HashSet::from([Arc::<str>::from(id)]);
                made = made.max(broker.publish_forwarded(message, true, &[], Some(&only), pressed));
            }
            if let Some(Value::BulkString(bytes)) = entry.map.get("b") {
                let from = text(entry.map.get("from"));
                let names = text(entry.map.get("d")).unwrap_or_default();
                let names: Vec<&str> = names.split('\n').collect();
                for (message, plain, direct, groups) in decode_batch(bytes) {
                    c.received.fetch_add(1, Ordering::Relaxed);
                    let handed = match own && plain && c.handing.any() {
                        true => {
                            let sent = |owner: &str| {
                                names
                                    .iter()
                                    .position(|n| *n == owner)
                                    .is_some_and(|at| at < 64 && direct >> at & 1 == 1)
                            };
                            c.handing.passed_on(&message.topic, from.as_deref(), sent)
                        }
                        false => Vec::new(),
                    };
                    if !handed.is_empty() {
                        let mut encoded = Vec::new();
                        crate::store::encode_message_into(&message, &mut encoded);
                        passed.extend(handed.into_iter().map(|to| (to, encoded.clone())));
                    }
                    made = made.max(broker.publish_forwarded(message, plain, &groups, self.only.as_ref(), pressed));
                }
            }
            if let Some(store) = broker.store().filter(|_| made != Ticket::default()) {
                let value = bytes::Bytes::from(entry.id.clone());
                made = made.max(store.append([crate::store::Op::Mark(self.mark.clone(), Some(value))]));
            }
            drop(hold);
            ticket = ticket.max(made);
            last = last.max(order);
            ids.push(entry.id);
        }
        if ids.is_empty() {
            return Ok(true);
        }
        // The entries go from Redis only once this node's persistent
        // sessions have their copies durably: a crash before that reads
        // them again (at least once).
        if let Some(store) = broker.store()
            && block_on(store.wait(ticket)) == TicketStatus::Failed
        {
            crate::limited!(
                "cluster store failed",
                log::Level::Error,
                "cluster: the store failed to commit forwarded messages; they stay in Redis to be read again"
            );
            return Ok(false);
        }
        self.applied = last;
        static STALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if ticket != Ticket::default() && *STALL.get_or_init(|| std::env::var_os(STALL_BEFORE_ACK_ENV).is_some()) {
            log::warn!("cluster: {STALL_BEFORE_ACK_ENV}: copies committed, stalling before the XACK");
            loop {
                std::thread::park();
            }
        }
        let key = &self.key;
        // What goes on to a session handed over leaves with the entries it
        // came in (one transaction).
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (to, encoded) in &passed {
            pass_on(&mut pipe, to, encoded);
        }
        pipe.cmd("XACK").arg(key).arg(GROUP).arg(&ids).ignore();
        pipe.cmd("XDEL").arg(key).arg(&ids).ignore();
        pipe.query::<()>(conn)?;
        Ok(true)
    }
}

/// Backpressure: nothing more is read from a stream while a reading
/// subscriber here has a full queue (what waits stays in Redis, and the
/// publishing nodes slow down once it grows, see [`MAX_BEHIND`]).
fn wait_for_room(broker: &Broker, mut pressed: Vec<Arc<crate::session_handle::SessionHandle>>) {
    pressed.sort_unstable_by_key(Arc::as_ptr);
    pressed.dedup_by(|a, b| Arc::ptr_eq(a, b));
    crate::session_handle::Waiting::wait_all(pressed, broker.config().slow_consumer_timeout);
}

fn receive(c: &Cluster, broker: &Broker) {
    let key = stream_key(&c.node);
    let mark = applied_key(&key);
    let applied = broker.mark_at_start(&mark).and_then(|v| std::str::from_utf8(v).ok()).and_then(entry_order);
    let mut applier = Applier { key, mark, applied, only: None };
    let mut link = Link::default();
    // After a restart, first what was read and not acknowledged before.
    let mut backlog = true;
    while !c.stopping() {
        // On every new connection too: a read whose answer was lost with
        // the old one left its entries pending for this consumer.
        backlog |= link.con.is_none();
        let Some(conn) = link.get(c, |con| create_group(con, &applier.key)) else { continue };
        let turn = (|| -> RedisResult<()> {
            let entries = applier.read(c, conn, if backlog { "0" } else { ">" })?;
            if entries.is_empty() {
                backlog = false;
                c.forget(c.handing.expired(None));
                return Ok(());
            }
            // An entry may have been written after a claim here took its
            // session: it is routed once the session is here.
            if !c.taking.wait_for_earlier(crate::connection::CLAIM_WAIT) {
                log::warn!(
                    "cluster: a claim here took more than {:?}: what came meanwhile is routed anyway",
                    crate::connection::CLAIM_WAIT
                );
            }
            let mut pressed = Vec::new();
            if !applier.apply(c, broker, conn, entries, backlog, &mut pressed)? {
                return Ok(());
            }
            wait_for_room(broker, pressed);
            Ok(())
        })();
        link.done(c, turn);
    }
}

/// How long the stream of a dead node whose sessions this node took over
/// is read after nothing more came: the other nodes route to this one
/// instead once they read the route changes, a moment later.
const DRAIN_QUIET: Duration = Duration::from_secs(5);

/// Delivers what waits in the stream of `dead` (whose persistent sessions,
/// `only`, this node took over) to those sessions: first what it had read
/// and not acknowledged (its last applied entry `applied` and those before
/// it excepted: their copies are in the sessions already), then what it
/// never read, until nothing came for [`DRAIN_QUIET`].
fn drain_dead_stream(c: &Cluster, broker: &Broker, dead: &str, only: HashSet<Arc<str>>, applied: Option<(u64, u64)>) {
    let key = stream_key(dead);
    let mark = applied_key(&key);
    let mut applier = Applier { key, mark, applied, only: Some(only) };
    let mut link = Link::default();
    let mut quiet_since = Instant::now();
    let mut claimed_all = false;
    while !c.stopping() && quiet_since.elapsed() < DRAIN_QUIET {
        // Back: it reads its stream itself (for the sessions it has now).
        if read(&c.replica).live.contains(dead) {
            log::warn!("cluster: node {dead} is back: what is left in its stream is its own to read");
            return;
        }
        let Some(conn) = link.get(c, |con| create_group(con, &applier.key)) else {
            quiet_since = Instant::now();
            continue;
        };
        let turn = (|| -> RedisResult<()> {
            let (entries, again) = if claimed_all {
                (applier.read(c, conn, ">")?, false)
            } else {
                // What any consumer read and did not acknowledge (the dead
                // node, or this one before a lost answer), as this node's.
                let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&applier.key)
                    .arg(GROUP)
                    .arg(&*c.node)
                    .arg(0)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(64)
                    .query(conn)?;
                claimed_all = reply.claimed.is_empty();
                (reply.claimed, true)
            };
            if !entries.is_empty() {
                quiet_since = Instant::now();
            }
            let mut pressed = Vec::new();
            applier.apply(c, broker, conn, entries, again, &mut pressed)?;
            wait_for_room(broker, pressed);
            Ok(())
        })();
        // Quiet means read and found empty, not Redis gone.
        if turn.is_err() {
            quiet_since = Instant::now();
        }
        link.done(c, turn);
    }
    log::info!("cluster: the stream of node {dead} is delivered to the sessions taken from it");
}

/// Starts [`drain_moved`] for every node that is not live and had sessions
/// taken from it here.
fn drain_moved_from_dead(c: &Arc<Cluster>, broker: &Broker) {
    for (node, moved) in c.moved_from_dead() {
        let (c, b) = (c.clone(), broker.clone());
        let spawned = std::thread::Builder::new()
            .name("midge-cluster-moved".into())
            .spawn(move || drain_moved(&c, &b, &node, &moved));
        if let Err(e) = spawned {
            log::error!("cluster: cannot start a thread to deliver what waits for moved sessions: {e}");
        }
    }
}

/// Delivers to the sessions CONNECTs here took from `dead` (`moved`: each
/// client id and where its marker is in the dead node's stream) what that
/// stream held for them and the dead node never applied: its entries
/// after the last one it applied and before each marker (what came after
/// it was routed here directly: the marker follows the session's routes). The
/// stream is read, not consumed: a node that takes the dead node's other
/// sessions over reads it too, for those.
fn drain_moved(c: &Cluster, broker: &Broker, dead: &str, moved: &[(Arc<str>, (u64, u64))]) {
    let key = stream_key(dead);
    let Some(end) = moved.iter().map(|(_, kick)| *kick).max() else { return };
    let delivered = (|| -> RedisResult<usize> {
        let mut con = connect(&c.client)?;
        let mark: Option<String> =
            redis::cmd("HGET").arg(store::marks_key(dead)).arg(&*applied_key(&key)).query(&mut con)?;
        let applied = mark.as_deref().and_then(entry_order);
        let (mut from, mut delivered, mut ticket) = ("-".to_owned(), 0, Ticket::default());
        let mut pressed = Vec::new();
        loop {
            let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg(format!("{}-{}", end.0, end.1))
                .arg("COUNT")
                .arg(64)
                .query(&mut con)?;
            if page.ids.is_empty() {
                break;
            }
            for entry in page.ids {
                from = format!("({}", entry.id);
                let order = entry_order(&entry.id);
                let Some(Value::BulkString(bytes)) = entry.map.get("b").filter(|_| order > applied) else { continue };
                let only: HashSet<Arc<str>> =
                    moved.iter().filter(|(_, kick)| order < Some(*kick)).map(|(id, _)| id.clone()).collect();
                if only.is_empty() {
                    continue;
                }
                for (message, plain, _, groups) in decode_batch(bytes) {
                    ticket = ticket.max(broker.publish_forwarded(message, plain, &groups, Some(&only), &mut pressed));
                    delivered += 1;
                }
            }
        }
        if let Some(store) = broker.store() {
            block_on(store.wait(ticket));
        }
        wait_for_room(broker, pressed);
        Ok(delivered)
    })();
    match delivered {
        Ok(n) => log::info!(
            "cluster: {n} message(s) node {dead} had not delivered went to the {} session(s) taken from it here",
            moved.len()
        ),
        Err(e) => log::warn!("cluster: reading what node {dead} had not delivered failed: {e}"),
    }
}

/// Another node took `id` with fencing token `token`: the connection here
/// ends, unless this node claimed the id again since (a newer token, or a
/// claim not answered yet, which Redis orders after that one).
/// A takeover notice for `id` with fencing `token`, from node `by` (at
/// that place in this node's stream).
fn taken_over(c: &Cluster, broker: &Broker, id: &str, token: u64, by: Option<(Arc<str>, (u64, u64))>) {
    let mut claims = c.claims.lock().unwrap_or_else(PoisonError::into_inner);
    match claims.get_mut(id) {
        Some(claim) if claim.pending > 0 => {
            if token > claim.notice {
                (claim.notice, claim.notice_by) = (token, by);
            }
            return;
        }
        Some(claim) if claim.token > token => return,
        _ => claims.remove(id),
    };
    drop(claims);
    end_taken_over(c, broker, id, token, by);
}

/// Ends what is here of `id` for a claim elsewhere with `token`: with `by`
/// (the claiming node, and where its notice is here), it took the session.
fn end_taken_over(c: &Cluster, broker: &Broker, id: &str, token: u64, by: Option<(Arc<str>, (u64, u64))>) {
    let released = broker.hand_over_to_cluster(id, |filters| {
        if let Some((owner, notice)) = by {
            c.handing_over(id, owner, token, notice, filters);
        }
    });
    if released {
        log::info!("cluster: client {id} connected at another node: its connection here ends");
    }
}

/// Runs `future` to completion on this (cluster) thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Makes the consumer group of this node's stream (and the stream), unless
/// they exist.
fn create_group(con: &mut Connection, key: &str) -> RedisResult<()> {
    let made: RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(key).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
    match made {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::QoS;

    #[test]
    fn a_replica_matches_each_node_once_live_or_not() {
        let mut r = Replica::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        r.add(&a, "s/+");
        r.add(&a, "s/#");
        r.add(&b, "s/1");
        r.live.insert(a.clone());
        let mut nodes = r.nodes_for("s/1");
        nodes.sort();
        assert_eq!(nodes, vec![a.clone(), b.clone()], "b is down: its stream keeps what it is sent");
        r.remove("a", "s/+");
        assert_eq!(r.nodes_for("s/2"), vec![a.clone()], "s/# is still there");
        r.remove("a", "s/#");
        assert!(r.nodes_for("s/2").is_empty());
        assert_eq!(r.nodes_for("s/1"), vec![b.clone()]);

        // Shared subscription groups: under their inner filter, each node
        // once with the groups it has.
        r.add(&a, "$share/g/s/#");
        r.add(&b, "$share/g/s/+");
        r.add(&b, "$share/h/s/1");
        let mut m = r.matches("s/1");
        m.sort();
        m.iter_mut().for_each(|(_, _, groups)| groups.sort());
        let group = |g: &str| -> Arc<str> { g.into() };
        let b_groups = vec![group("$share/g/s/+"), group("$share/h/s/1")];
        assert_eq!(m, vec![(a.clone(), false, vec![group("$share/g/s/#")]), (b.clone(), true, b_groups)]);
        r.remove("b", "$share/h/s/1");
        r.remove("b", "s/1");
        assert_eq!(r.matches("s/1").len(), 2);
        r.remove("b", "$share/g/s/+");
        assert_eq!(r.matches("s/1"), vec![(a, false, vec![group("$share/g/s/#")])]);
    }

    #[test]
    fn a_batch_decodes_what_was_encoded_and_stops_at_a_short_one() {
        let m = Message::new("t/1".into(), bytes::Bytes::from_static(b"hello"), QoS::AtLeastOnce, true);
        let mut one = Vec::new();
        crate::store::encode_message_into(&m, &mut one);
        let mut batch = Vec::new();
        encode_record(&mut batch, true, 0b101, &[], &one);
        encode_record(&mut batch, false, 1 << 63, &["$share/g/t/+".into(), "$share/h/#".into()], &one);
        let decoded = decode_batch(&batch);
        assert_eq!(decoded.len(), 2);
        let (m, plain, direct, groups) = &decoded[1];
        assert_eq!((&*m.topic, &m.payload[..], m.qos, m.retain), ("t/1", &b"hello"[..], QoS::AtLeastOnce, true));
        assert_eq!((decoded[0].1, decoded[0].2, decoded[0].3.len()), (true, 0b101, 0));
        assert_eq!(*direct, 1 << 63);
        assert_eq!(
            (*plain, groups.iter().map(|g| &**g).collect::<Vec<_>>()),
            (false, vec!["$share/g/t/+", "$share/h/#"])
        );
        batch.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_batch(&batch).len(), 2, "a declared length past the end is not read");
    }
}
