//! The crash-safe store: one redb file, every commit fsync'd before it
//! returns (redb's `Durability::Immediate`).

use super::{Op, Progress, SessionOwner, Snapshot, Store, StoreError, StoredMessage};
use crate::packet::{Message, QoS, RetainHandling, Subscription, SubscriptionOptions};
use crate::v5;
use ::redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, Table, TableDefinition, WriteTransaction,
};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file inside the data directory.
pub const FILE_NAME: &str = "midge.redb";
/// redb's page cache: enough for the working set of sessions and retained
/// messages; the default (1 GiB) is far more than a broker needs.
const CACHE_BYTES: usize = 64 << 20;

const RETAINED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("sessions");
const SUBSCRIPTIONS: TableDefinition<'_, (&str, &str), u8> = TableDefinition::new("subscriptions");
const MESSAGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("messages");
const PROGRESS: TableDefinition<'_, (&str, u64), u8> = TableDefinition::new("progress");
const INCOMING: TableDefinition<'_, (&str, u16), ()> = TableDefinition::new("incoming");
/// Format 2: a persistent session's listener, user name and 5.0 expiry.
const OWNERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("owners");
/// Format 2: the Subscription Identifier of a subscription (5.0).
const SUBSCRIPTION_IDS: TableDefinition<'_, (&str, &str), u32> = TableDefinition::new("subscription_ids");
/// Format 4: [`Op::Mark`]'s values.
const MARKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("marks");
/// What the file is: `format` = [`FORMAT`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The store's layout version.
/// - 1: the tables up to `incoming`, as midge has written them since its
///   first releases (68c325b), which had no `meta` table: a file without
///   one is format 1.
/// - 2 (MQTT 5.0): `owners` and `subscription_ids`; a subscription's byte
///   is its whole options byte (format 1's QoS values are the same options
///   with no flag set); a message or retained message with 5.0 properties,
///   an expiry or subscription identifiers sets bit 7 of its QoS byte and
///   carries them (format 1 records read unchanged, so upgrading a file is
///   creating the new tables).
///
/// - 3 (the append-only log): the tables are a checkpoint; the state is
///   the checkpoint plus the log segments from number `meta.wal` on, in
///   the same directory (see [`super::wal`]). A format 1 or 2 file is
///   upgraded by recording `wal` = 1: no segment exists yet. A midge that
///   reads only format 2 refuses it (it would not read the log).
/// - 4 (the cluster): `marks`, and their log records; upgrading is
///   creating the table. A midge that reads only format 3 refuses it (its
///   log may hold records it does not know).
///
/// A file from a newer midge is refused.
pub const FORMAT: u64 = 4;

/// The first log segment not in the checkpoint (format 3).
const WAL_KEY: &str = "wal";

/// A redb database in a data directory.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`. With `recover`, a damaged file
    /// is renamed aside (never deleted) and an empty store started.
    pub fn open(dir: &Path, recover: bool) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        match Self::open_file(&path) {
            Err(StoreError::Corrupted(why)) if recover => {
                let aside = aside_name(&path);
                std::fs::rename(&path, &aside)?;
                log::warn!(
                    "store {} is damaged ({why}); moved to {} and starting empty",
                    path.display(),
                    aside.display()
                );
                Self::open_file(&path)
            }
            other => other,
        }
    }

    fn open_file(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| open_error(path, e))?;
        let store = RedbStore { db };
        store.create_tables(path)?;
        Ok(store)
    }

    /// The format a file is in: format 1 files may have no `meta` table.
    pub(super) fn format(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(corrupt)?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            // A file with no table at all is new: nothing to upgrade.
            Err(::redb::TableError::TableDoesNotExist(_)) => {
                let new = txn.list_tables().map_err(corrupt)?.next().is_none();
                return Ok(if new { FORMAT } else { 1 });
            }
            Err(e) => return Err(corrupt(e)),
        };
        Ok(meta.get("format").map_err(corrupt)?.map_or(1, |v| v.value()))
    }

    /// Checks the format and creates what is missing (every table, in a new
    /// file), recording [`FORMAT`].
    fn create_tables(&self, path: &Path) -> Result<(), StoreError> {
        let found = self.format()?;
        if found > FORMAT {
            return Err(StoreError::NewerFormat { path: path.display().to_string(), found, known: FORMAT });
        }
        let txn = self.db.begin_write().map_err(corrupt)?;
        if found < FORMAT {
            log::info!("store {}: upgrading from format {found} to {FORMAT}", path.display());
        }
        {
            let mut meta = txn.open_table(META).map_err(corrupt)?;
            meta.insert("format", FORMAT).map_err(write_error)?;
            if meta.get(WAL_KEY).map_err(corrupt)?.is_none() {
                meta.insert(WAL_KEY, 1).map_err(write_error)?;
            }
        }
        txn.open_table(RETAINED).map_err(corrupt)?;
        txn.open_table(SESSIONS).map_err(corrupt)?;
        txn.open_table(SUBSCRIPTIONS).map_err(corrupt)?;
        txn.open_table(MESSAGES).map_err(corrupt)?;
        txn.open_table(PROGRESS).map_err(corrupt)?;
        txn.open_table(INCOMING).map_err(corrupt)?;
        txn.open_table(OWNERS).map_err(corrupt)?;
        txn.open_table(SUBSCRIPTION_IDS).map_err(corrupt)?;
        txn.open_table(MARKS).map_err(corrupt)?;
        txn.commit().map_err(write_error)
    }
}

impl RedbStore {
    /// The first log segment the checkpoint does not hold (format 3).
    pub(super) fn checkpoint_start(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(corrupt)?;
        let meta = txn.open_table(META).map_err(corrupt)?;
        Ok(meta.get(WAL_KEY).map_err(corrupt)?.map_or(1, |v| v.value()))
    }

    /// Applies `ops` (the log's, up to segment `upto`, exclusive) and
    /// records `upto` as the log's new start, in one durable transaction:
    /// a crash leaves either the old checkpoint or the new one.
    pub(super) fn checkpoint(&mut self, ops: &[Op], upto: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(write_error)?;
        apply_ops(&txn, ops).map_err(write_error)?;
        txn.open_table(META).map_err(write_error)?.insert(WAL_KEY, upto).map_err(write_error)?;
        txn.commit().map_err(write_error)
    }
}

#[cfg(test)]
impl RedbStore {
    /// Makes the file look as an older midge left it: `format` recorded
    /// and no log start (formats 1 and 2 had no log).
    pub(super) fn make_format(&self, format: u64) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", format).unwrap();
            meta.remove(WAL_KEY).unwrap();
        }
        txn.commit().unwrap();
    }

    /// Makes the file look as a format 3 midge left it: no `marks` table.
    pub(super) fn make_format_3(&self) {
        let txn = self.db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 3).unwrap();
        txn.delete_table(MARKS).unwrap();
        txn.commit().unwrap();
    }
}

pub(super) fn aside_name(path: &Path) -> PathBuf {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = path.file_name().map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!("{name}.damaged-{secs}"))
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let shown = path.display();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked(shown.to_string())
        }
        DatabaseError::Storage(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupted(format!("{shown}: {e}"))
        }
        DatabaseError::Storage(StorageError::Io(e)) => StoreError::Io(format!("cannot open {shown}: {e}")),
        DatabaseError::Storage(StorageError::Corrupted(why)) => StoreError::Corrupted(format!("{shown}: {why}")),
        other => StoreError::Corrupted(format!("{shown}: {other}")),
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupted(e.to_string())
}

fn write_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Store for RedbStore {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(write_error)?;
        apply_ops(&txn, ops).map_err(write_error)?;
        txn.commit().map_err(write_error)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        load(&self.db).map_err(corrupt)
    }
}

fn apply_ops(txn: &WriteTransaction, ops: &[Op]) -> Result<(), ::redb::Error> {
    let mut t = Tables {
        retained: txn.open_table(RETAINED)?,
        sessions: txn.open_table(SESSIONS)?,
        subscriptions: txn.open_table(SUBSCRIPTIONS)?,
        messages: txn.open_table(MESSAGES)?,
        progress: txn.open_table(PROGRESS)?,
        incoming: txn.open_table(INCOMING)?,
        owners: txn.open_table(OWNERS)?,
        subscription_ids: txn.open_table(SUBSCRIPTION_IDS)?,
        marks: txn.open_table(MARKS)?,
    };
    for op in ops {
        t.apply(op)?;
    }
    Ok(())
}

struct Tables<'t> {
    retained: Table<'t, &'static str, &'static [u8]>,
    sessions: Table<'t, &'static str, u64>,
    subscriptions: Table<'t, (&'static str, &'static str), u8>,
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    progress: Table<'t, (&'static str, u64), u8>,
    incoming: Table<'t, (&'static str, u16), ()>,
    owners: Table<'t, &'static str, &'static [u8]>,
    subscription_ids: Table<'t, (&'static str, &'static str), u32>,
    marks: Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_> {
    fn apply(&mut self, op: &Op) -> Result<(), ::redb::Error> {
        match op {
            Op::Retain(topic, Some(m)) => {
                self.retained.insert(&**topic, encode_retained(m).as_slice())?;
            }
            Op::Retain(topic, None) => drop(self.retained.remove(&**topic)?),
            Op::Session(id, Some(seen)) => drop(self.sessions.insert(&**id, seen)?),
            Op::Session(id, None) => self.delete_session(id)?,
            Op::Mark(key, Some(value)) => drop(self.marks.insert(&**key, &**value)?),
            Op::Mark(key, None) => drop(self.marks.remove(&**key)?),
            _ if !self.has_session(op)? => {}
            Op::Subscription(id, filter, Some(sub)) => {
                self.subscriptions.insert((&**id, filter.as_str()), sub.options.to_byte())?;
                match sub.id {
                    Some(sub_id) => drop(self.subscription_ids.insert((&**id, filter.as_str()), sub_id)?),
                    None => drop(self.subscription_ids.remove((&**id, filter.as_str()))?),
                }
            }
            Op::Subscription(id, filter, None) => {
                self.subscriptions.remove((&**id, filter.as_str()))?;
                self.subscription_ids.remove((&**id, filter.as_str()))?;
            }
            Op::Owner(id, owner) => drop(self.owners.insert(&**id, encode_owner(owner).as_slice())?),
            Op::Message(id, seq, Some(m)) => {
                self.messages.insert((&**id, *seq), encode_message(m).as_slice())?;
                self.progress.remove((&**id, *seq))?;
            }
            Op::Message(id, seq, None) => {
                self.messages.remove((&**id, *seq))?;
                self.progress.remove((&**id, *seq))?;
            }
            Op::Progress(id, seq, progress) => {
                if self.messages.get((&**id, *seq))?.is_some() {
                    self.progress.insert((&**id, *seq), *progress as u8)?;
                }
            }
            Op::Incoming(id, pid, true) => drop(self.incoming.insert((&**id, *pid), ())?),
            Op::Incoming(id, pid, false) => drop(self.incoming.remove((&**id, *pid))?),
        }
        Ok(())
    }

    fn has_session(&self, op: &Op) -> Result<bool, ::redb::Error> {
        let id = match op {
            Op::Subscription(id, ..)
            | Op::Message(id, ..)
            | Op::Progress(id, ..)
            | Op::Incoming(id, ..)
            | Op::Owner(id, _) => id,
            Op::Retain(..) | Op::Session(..) | Op::Mark(..) => return Ok(true),
        };
        Ok(self.sessions.get(&**id)?.is_some())
    }

    fn delete_session(&mut self, id: &str) -> Result<(), ::redb::Error> {
        self.sessions.remove(id)?;
        let filters: Vec<String> = self
            .subscriptions
            .range((id, "")..)?
            .map_while(|entry| {
                let key = entry.ok()?.0;
                let (owner, filter) = key.value();
                (owner == id).then(|| filter.to_owned())
            })
            .collect();
        for filter in filters {
            self.subscriptions.remove((id, filter.as_str()))?;
            self.subscription_ids.remove((id, filter.as_str()))?;
        }
        self.owners.remove(id)?;
        self.messages.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        self.progress.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        self.incoming.retain_in((id, 0)..=(id, u16::MAX), |_, _| false)?;
        Ok(())
    }
}

/// Set in a record's QoS byte when 5.0 fields follow (see [`encode_extra`]).
const EXTENDED: u8 = 0x80;

/// `qos, retain, topic length (u16), topic, [5.0 fields], payload`.
fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + m.topic.len() + m.payload.len());
    encode_message_into(m, &mut out);
    out
}

/// [`encode_message`] appended to `out`.
pub(crate) fn encode_message_into(m: &StoredMessage, out: &mut Vec<u8>) {
    let qos_at = out.len();
    out.push(m.qos as u8);
    out.push(u8::from(m.retain));
    out.extend_from_slice(&(m.topic.len() as u16).to_be_bytes());
    out.extend_from_slice(m.topic.as_bytes());
    encode_extra(m, out, qos_at);
    out.extend_from_slice(&m.payload);
}

pub(crate) fn decode_message(bytes: &[u8]) -> Option<StoredMessage> {
    let (&[qos, retain, hi, lo], rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let topic = std::str::from_utf8(rest.get(..len)?).ok()?;
    let mut message = Message::new(topic.into(), Bytes::new(), QoS::from_u8(qos & !EXTENDED)?, retain == 1);
    let payload = match qos & EXTENDED {
        0 => &rest[len..],
        _ => decode_extra(&rest[len..], &mut message)?,
    };
    message.payload = Bytes::copy_from_slice(payload);
    Some(message)
}

/// `qos, [5.0 fields], payload` (format 1: `qos, payload`).
fn encode_retained(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + m.payload.len());
    encode_retained_into(m, &mut out);
    out
}

/// [`encode_retained`] appended to `out`.
pub(super) fn encode_retained_into(m: &Message, out: &mut Vec<u8>) {
    let qos_at = out.len();
    out.push(m.qos as u8);
    encode_extra(m, out, qos_at);
    out.extend_from_slice(&m.payload);
}

pub(super) fn decode_retained(topic: &str, bytes: &[u8]) -> Option<Message> {
    let (&qos, rest) = bytes.split_first()?;
    let mut message = Message::new(topic.into(), Bytes::new(), QoS::from_u8(qos & !EXTENDED)?, true);
    let payload = match qos & EXTENDED {
        0 => rest,
        _ => decode_extra(rest, &mut message)?,
    };
    message.payload = Bytes::copy_from_slice(payload);
    Some(message)
}

/// A message's 5.0 fields, if it has any, after the QoS byte at `qos_at`
/// (which gets [`EXTENDED`]): their length (u32), the expiry (u64
/// milliseconds since the epoch, 0 for none), the subscription identifier
/// count (u16) and identifiers (u32 each), then the PUBLISH property section.
fn encode_extra(m: &Message, out: &mut Vec<u8>, qos_at: usize) {
    if m.properties.is_none() && m.expires.is_none() && m.subscription_id.is_none() {
        return;
    }
    out[qos_at] |= EXTENDED;
    let properties = m.properties.as_deref().map(v5::encode_message_properties).unwrap_or_default();
    let ids = m.subscription_id.as_slice();
    let len = 8 + 2 + 4 * ids.len() + properties.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&m.expires.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(&properties);
}

/// Reads what [`encode_extra`] wrote into `m`; the payload that follows.
fn decode_extra<'a>(bytes: &'a [u8], m: &mut Message) -> Option<&'a [u8]> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    let (extra, payload) = (rest.get(..len)?, rest.get(len..)?);
    let (expires, extra) = extra.split_first_chunk::<8>()?;
    m.expires = Some(u64::from_be_bytes(*expires)).filter(|&at| at != 0);
    let (count, mut extra) = extra.split_first_chunk::<2>()?;
    for _ in 0..u16::from_be_bytes(*count) {
        let (id, rest) = extra.split_first_chunk::<4>()?;
        m.subscription_id.get_or_insert(u32::from_be_bytes(*id));
        extra = rest;
    }
    if !extra.is_empty() {
        m.properties = Some(Arc::new(v5::decode_message_properties(extra)?));
    }
    Some(payload)
}

/// `listener (u16), expiry flag (u8) and interval (u32), user name length
/// (u16, 0xFFFF for none) and user name`.
pub(crate) fn encode_owner(o: &SessionOwner) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + o.username.as_ref().map_or(0, |u| u.len()));
    out.extend_from_slice(&(o.listener.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.push(u8::from(o.expiry.is_some()));
    out.extend_from_slice(&o.expiry.unwrap_or(0).to_be_bytes());
    match &o.username {
        Some(u) => {
            out.extend_from_slice(&(u.len().min(usize::from(u16::MAX - 1)) as u16).to_be_bytes());
            out.extend_from_slice(u.as_bytes());
        }
        None => out.extend_from_slice(&u16::MAX.to_be_bytes()),
    }
    out
}

pub(crate) fn decode_owner(bytes: &[u8]) -> Option<SessionOwner> {
    let (&[l0, l1, has_expiry, e0, e1, e2, e3, u0, u1], rest) = bytes.split_first_chunk::<9>()?;
    let username = match u16::from_be_bytes([u0, u1]) {
        u16::MAX => None,
        len => Some(std::str::from_utf8(rest.get(..usize::from(len))?).ok()?.into()),
    };
    Some(SessionOwner {
        listener: usize::from(u16::from_be_bytes([l0, l1])),
        username,
        expiry: (has_expiry == 1).then(|| u32::from_be_bytes([e0, e1, e2, e3])),
    })
}

/// A subscription options byte (section 3.8.3.1); format 1 stored the QoS alone.
pub(crate) fn decode_options(byte: u8) -> Option<SubscriptionOptions> {
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscription,
        2 => RetainHandling::Never,
        _ => return None,
    };
    Some(SubscriptionOptions {
        qos: QoS::from_u8(byte & 0x03)?,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn load(db: &Database) -> Result<Snapshot, ::redb::Error> {
    let txn = db.begin_read()?;
    let mut snapshot = Snapshot::default();
    for entry in txn.open_table(RETAINED)?.iter()? {
        let (topic, value) = entry?;
        if let Some(m) = decode_retained(topic.value(), value.value()) {
            snapshot.retained.insert(m.topic.clone(), m);
        }
    }
    for entry in txn.open_table(MARKS)?.iter()? {
        let (key, value) = entry?;
        snapshot.marks.insert(key.value().into(), Bytes::copy_from_slice(value.value()));
    }
    for entry in txn.open_table(SESSIONS)?.iter()? {
        let (id, seen) = entry?;
        snapshot.sessions.entry(id.value().into()).or_default().last_seen = seen.value();
    }
    for entry in txn.open_table(SUBSCRIPTIONS)?.iter()? {
        let (key, options) = entry?;
        let (id, filter) = key.value();
        if let (Some(s), Some(options)) = (snapshot.sessions.get_mut(id), decode_options(options.value())) {
            s.subscriptions.insert(filter.to_owned(), Subscription { options, id: None });
        }
    }
    for entry in txn.open_table(SUBSCRIPTION_IDS)?.iter()? {
        let (key, sub_id) = entry?;
        let (id, filter) = key.value();
        let sub = snapshot.sessions.get_mut(id).and_then(|s| s.subscriptions.get_mut(filter));
        if let Some(sub) = sub {
            sub.id = Some(sub_id.value());
        }
    }
    for entry in txn.open_table(OWNERS)?.iter()? {
        let (id, value) = entry?;
        if let Some(s) = snapshot.sessions.get_mut(id.value()) {
            s.owner = decode_owner(value.value());
        }
    }
    for entry in txn.open_table(MESSAGES)?.iter()? {
        let (key, value) = entry?;
        let (id, seq) = key.value();
        if let (Some(s), Some(m)) = (snapshot.sessions.get_mut(id), decode_message(value.value())) {
            s.messages.insert(seq, (m, Progress::Queued));
        }
    }
    for entry in txn.open_table(PROGRESS)?.iter()? {
        let (key, progress) = entry?;
        let (id, seq) = key.value();
        let message = snapshot.sessions.get_mut(id).and_then(|s| s.messages.get_mut(&seq));
        if let Some((_, p)) = message {
            *p = Progress::from_u8(progress.value());
        }
    }
    for entry in txn.open_table(INCOMING)?.iter()? {
        let (key, ()) = (entry?.0, ());
        let (id, pid) = key.value();
        if let Some(s) = snapshot.sessions.get_mut(id) {
            s.incoming.push(pid);
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod format_tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("midge-format-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn set_format(dir: &Path, format: u64) {
        let store = RedbStore::open(dir, false).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", format).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_new_store_records_its_format() {
        let dir = temp_dir("new");
        assert_eq!(RedbStore::open(&dir, false).unwrap().format().unwrap(), FORMAT);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_without_a_format_is_format_1_and_is_upgraded() {
        let dir = temp_dir("fixture");
        std::fs::create_dir_all(&dir).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-68c325b").join(FILE_NAME);
        std::fs::copy(fixture, dir.join(FILE_NAME)).unwrap();
        {
            let db = Database::open(dir.join(FILE_NAME)).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(matches!(txn.open_table(META), Err(::redb::TableError::TableDoesNotExist(_))));
        }
        let store = RedbStore::open(&dir, false).unwrap();
        assert_eq!(store.format().unwrap(), FORMAT);
        assert!(!store.load().unwrap().sessions.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_from_a_newer_midge_is_refused_and_never_moved_aside() {
        let dir = temp_dir("newer");
        set_format(&dir, FORMAT + 1);
        for recover in [false, true] {
            match RedbStore::open(&dir, recover) {
                Err(StoreError::NewerFormat { found, known, .. }) => assert_eq!((found, known), (FORMAT + 1, FORMAT)),
                Err(e) => panic!("expected NewerFormat, got {e}"),
                Ok(_) => panic!("a newer store opened"),
            }
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "nothing moved aside or created");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
