//! A cluster node's store: its persistent sessions live in Redis, where
//! another node can take them over (docs/cluster.md, "Sessions").
//!
//! The broker's store ops ([`Op`]) for a session become fields of one
//! hash per session, `midge:session:{client id}`; every commit is one
//! script, atomic in Redis, that applies an op only while this node owns
//! the client id (`midge:owner:{id}`, written by the claim a CONNECT makes
//! before its session is attached): a node that lost an id can never
//! dequeue, acknowledge or overwrite what its new owner has. The set
//! `midge:sessions:{node}` names the sessions a node holds, read on start.
//! A bridge's local session exists on every node that runs the bridge and
//! is the node's own (`midge:bridge-session:{node}:{id}`, not fenced).
//! Retained messages are the cluster's table already: their ops are not
//! written here.

use crate::store::{Op, Progress, Snapshot, Store, StoreError, StoredSession};
use bytes::Bytes;
use redis::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sessions a node holds (the keys of their hashes).
pub(super) fn sessions_key(node: &str) -> String {
    format!("midge:sessions:{node}")
}

/// A client's persistent session.
pub(super) fn session_key(id: &str) -> String {
    format!("midge:session:{id}")
}

fn bridge_session_key(node: &str, id: &str) -> String {
    format!("midge:bridge-session:{node}:{id}")
}

/// A node's marks ([`Op::Mark`]).
pub(super) fn marks_key(node: &str) -> String {
    format!("midge:marks:{node}")
}

/// Applies a commit's ops: `ARGV[1]` is the node, then five arguments per
/// op: kind, hash, client id (empty: not fenced), field, value. Kinds: `S`
/// a session made or refreshed, `X` deleted, `H` / `D` a field set /
/// removed (`D`: the value names a second field removed), `P` a message's progress (only while the message is there),
/// `K` / `k` a mark set / removed. A field op on a session that does not
/// exist does nothing (as in every store). A message queued for a session
/// another node owns now (it took the session over while this node still
/// routed to it) is sent on to that node's stream for that session
/// (`to`, `m`) instead of being lost, if the session there is the one
/// taken from this node (`from`, written by the claim; not a new one after
/// a clean start). Returns how many ops were refused.
const APPLY_SCRIPT: &str = r"
local node, index, marks, len = ARGV[1], KEYS[1], KEYS[2], ARGV[2]
local owner, exists = {}, {}
local refused = 0
local i = 3
while i + 4 <= #ARGV do
  local kind, key, id, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local ok = true
  if id ~= '' then
    if owner[id] == nil then
      owner[id] = redis.call('HGET', 'midge:owner:' .. id, 'node') or ''
    end
    ok = owner[id] == node
  end
  if not ok then
    refused = refused + 1
    if kind == 'H' and string.sub(field, 1, 4) == 'msg:' and owner[id] ~= '' and redis.call('HGET', key, 'from') == node then
      redis.call('XADD', 'midge:in:' .. owner[id], 'MAXLEN', '~', len, '*', 'to', id, 'm', value)
    end
  elseif kind == 'S' then
    redis.call('HSET', key, 'seen', value, 'id', field)
    redis.call('SADD', index, key)
    exists[key] = true
  elseif kind == 'X' then
    redis.call('DEL', key)
    redis.call('SREM', index, key)
    exists[key] = false
  elseif kind == 'K' then
    redis.call('HSET', marks, field, value)
  elseif kind == 'k' then
    redis.call('HDEL', marks, field)
  else
    if exists[key] == nil then
      exists[key] = redis.call('EXISTS', key) == 1
    end
    if not exists[key] then
    elseif kind == 'H' then
      redis.call('HSET', key, field, value)
    elseif kind == 'D' and value ~= '' then
      redis.call('HDEL', key, field, value)
    elseif kind == 'D' then
      redis.call('HDEL', key, field)
    elseif kind == 'P' and redis.call('HEXISTS', key, 'msg:' .. field) == 1 then
      redis.call('HSET', key, 'prog:' .. field, value)
    end
  end
end
return refused
";

/// How long a commit keeps trying while Redis does not answer (then it
/// fails, as a disk that fails would): the writer waits, and the clients
/// whose acknowledgements need it are slowed, not answered early.
const PATIENCE: Duration = Duration::from_secs(30);

/// The store of a cluster node.
pub struct RedisStore {
    client: redis::Client,
    con: Option<Connection>,
    node: Arc<str>,
    /// Whether a client id is a bridge's local session.
    is_bridge: Box<dyn Fn(&str) -> bool + Send>,
}

impl RedisStore {
    /// A store on the cluster's Redis for node `node`; `is_bridge` tells a
    /// bridge's local session (every node has its own) from a client's.
    pub fn open(
        redis: &str,
        node: &str,
        is_bridge: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(redis).map_err(|e| StoreError::Io(format!("cluster Redis {redis}: {e}")))?;
        let con = super::connect(&client).map_err(|e| StoreError::Io(format!("cluster Redis {redis}: {e}")))?;
        Ok(RedisStore { client, con: Some(con), node: node.into(), is_bridge: Box::new(is_bridge) })
    }

    /// The hash and the fencing id (empty: none) of a session.
    fn key(&self, id: &str) -> (String, String) {
        match (self.is_bridge)(id) {
            true => (bridge_session_key(&self.node, id), String::new()),
            false => (session_key(id), id.to_owned()),
        }
    }

    fn script(&self, ops: &[Op]) -> Option<redis::Cmd> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPLY_SCRIPT).arg(2).arg(sessions_key(&self.node)).arg(marks_key(&self.node)).arg(&*self.node);
        cmd.arg(super::STREAM_LEN);
        let mut any = false;
        let mut push = |kind: &str, (key, fence): &(String, String), field: &[u8], value: &[u8]| {
            cmd.arg(kind).arg(key).arg(fence).arg(field).arg(value);
            any = true;
        };
        for op in ops {
            match op {
                Op::Retain(..) => {}
                Op::Session(id, Some(seen)) => push("S", &self.key(id), id.as_bytes(), seen.to_string().as_bytes()),
                Op::Session(id, None) => push("X", &self.key(id), b"", b""),
                Op::Subscription(id, filter, Some(sub)) => {
                    let mut value = vec![sub.options.to_byte()];
                    if let Some(n) = sub.id {
                        value.extend_from_slice(&n.to_be_bytes());
                    }
                    push("H", &self.key(id), format!("sub:{filter}").as_bytes(), &value);
                }
                Op::Subscription(id, filter, None) => push("D", &self.key(id), format!("sub:{filter}").as_bytes(), b""),
                Op::Owner(id, owner) => push("H", &self.key(id), b"owner", &crate::store::encode_owner(owner)),
                Op::Message(id, seq, Some(m)) => {
                    let key = self.key(id);
                    let mut value = Vec::with_capacity(8 + m.topic.len() + m.payload.len());
                    crate::store::encode_message_into(m, &mut value);
                    // A message's number is new in its session: no
                    // progress of an earlier one is left under it.
                    push("H", &key, format!("msg:{seq}").as_bytes(), &value);
                }
                Op::Message(id, seq, None) => {
                    let fields = (format!("msg:{seq}"), format!("prog:{seq}"));
                    push("D", &self.key(id), fields.0.as_bytes(), fields.1.as_bytes());
                }
                Op::Progress(id, seq, progress) => {
                    push("P", &self.key(id), seq.to_string().as_bytes(), &[b'0' + *progress as u8])
                }
                Op::Incoming(id, pid, true) => push("H", &self.key(id), format!("in:{pid}").as_bytes(), b"1"),
                Op::Incoming(id, pid, false) => push("D", &self.key(id), format!("in:{pid}").as_bytes(), b""),
                Op::Mark(key, Some(value)) => push("K", &(String::new(), String::new()), key.as_bytes(), value),
                Op::Mark(key, None) => push("k", &(String::new(), String::new()), key.as_bytes(), b""),
            }
        }
        any.then_some(cmd)
    }
}

impl Store for RedisStore {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let Some(cmd) = self.script(ops) else { return Ok(()) };
        // Every op is idempotent in order: a commit whose answer was lost
        // is sent again whole.
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.con.is_none() {
                self.con = super::connect(&self.client).ok();
            }
            let error = match self.con.as_mut().map(|con| cmd.query::<u64>(con)) {
                Some(Ok(refused)) => {
                    if refused > 0 {
                        crate::limited!(
                            "cluster fenced",
                            log::Level::Warn,
                            "cluster: {refused} session write(s) refused: another node owns their client id now (messages queued for it are sent on to that node)"
                        );
                    }
                    return Ok(());
                }
                Some(Err(e)) => {
                    self.con = None;
                    e.to_string()
                }
                None => "no connection".to_owned(),
            };
            if Instant::now() >= deadline {
                return Err(StoreError::Io(format!("cluster Redis did not take the sessions' writes: {error}")));
            }
            crate::limited!(
                "cluster store",
                log::Level::Warn,
                "cluster: Redis does not take the sessions' writes ({error}); trying again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let failed = |e: redis::RedisError| StoreError::Io(format!("cluster Redis: {e}"));
        let mut con = super::connect(&self.client).map_err(failed)?;
        let mut snapshot = Snapshot::default();
        let keys: Vec<String> = redis::cmd("SMEMBERS").arg(sessions_key(&self.node)).query(&mut con).map_err(failed)?;
        for key in keys {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL").arg(&key).query(&mut con).map_err(failed)?;
            match decode_session(fields) {
                Some((id, session)) => drop(snapshot.sessions.insert(id, session)),
                None => log::warn!("cluster: session {key} in Redis cannot be read; skipped"),
            }
        }
        let marks: Vec<(String, Vec<u8>)> =
            redis::cmd("HGETALL").arg(marks_key(&self.node)).query(&mut con).map_err(failed)?;
        snapshot.marks = marks.into_iter().map(|(k, v)| (k.into(), Bytes::from(v))).collect();
        Ok(snapshot)
    }
}

/// A session's hash as Redis returns it (`HGETALL`): its client id and
/// state, `None` if it has no id or seen time (it does not exist).
pub(super) fn decode_session(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Option<(Arc<str>, StoredSession)> {
    let mut id = None;
    let mut seen = None;
    let mut session = StoredSession::default();
    let mut progress = Vec::new();
    let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<u64>().ok();
    for (field, value) in fields {
        let Ok(field) = std::str::from_utf8(&field) else { continue };
        match field.split_once(':') {
            None if field == "id" => id = std::str::from_utf8(&value).ok().map(Arc::<str>::from),
            None if field == "seen" => seen = number(&value),
            None if field == "owner" => session.owner = crate::store::decode_owner(&value),
            Some(("sub", filter)) => {
                let Some((&options, rest)) = value.split_first() else { continue };
                let Some(options) = crate::store::decode_options(options) else { continue };
                let sub_id = rest.try_into().ok().map(u32::from_be_bytes);
                session.subscriptions.insert(filter.to_owned(), crate::packet::Subscription { options, id: sub_id });
            }
            Some(("msg", seq)) => {
                if let (Ok(seq), Some(m)) = (seq.parse(), crate::store::decode_message(&value)) {
                    session.messages.insert(seq, (m, Progress::Queued));
                }
            }
            Some(("prog", seq)) => {
                if let (Ok(seq), Some(&p)) = (seq.parse::<u64>(), value.first()) {
                    progress.push((seq, Progress::from_u8(p.wrapping_sub(b'0'))));
                }
            }
            Some(("in", pid)) => {
                if let Ok(pid) = pid.parse() {
                    session.incoming.push(pid);
                }
            }
            _ => {}
        }
    }
    for (seq, p) in progress {
        if let Some((_, at)) = session.messages.get_mut(&seq) {
            *at = p;
        }
    }
    session.last_seen = seen?;
    Some((id?, session))
}
