//! The crash-safe store: one redb file, every commit fsync'd before it
//! returns (redb's `Durability::Immediate`).

use super::{Op, Progress, Snapshot, Store, StoreError, StoredMessage};
use crate::packet::QoS;
use ::redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, Table, TableDefinition, WriteTransaction,
};
use bytes::Bytes;
use std::path::{Path, PathBuf};
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
/// What the file is: `format` = [`FORMAT`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The store's layout version. 1: the tables above, as midge has written
/// them since its first releases (68c325b), which had no `meta` table: a
/// file without one is format 1. A layout change bumps this and migrates
/// older files in [`RedbStore::open`]; a file from a newer midge is refused.
pub const FORMAT: u64 = 1;

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
    fn format(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(corrupt)?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(1),
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
        txn.open_table(META).map_err(corrupt)?.insert("format", FORMAT).map_err(write_error)?;
        txn.open_table(RETAINED).map_err(corrupt)?;
        txn.open_table(SESSIONS).map_err(corrupt)?;
        txn.open_table(SUBSCRIPTIONS).map_err(corrupt)?;
        txn.open_table(MESSAGES).map_err(corrupt)?;
        txn.open_table(PROGRESS).map_err(corrupt)?;
        txn.open_table(INCOMING).map_err(corrupt)?;
        txn.commit().map_err(write_error)
    }
}

fn aside_name(path: &Path) -> PathBuf {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    path.with_extension(format!("redb.damaged-{secs}"))
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
}

impl Tables<'_> {
    fn apply(&mut self, op: &Op) -> Result<(), ::redb::Error> {
        match op {
            Op::Retain(topic, Some((qos, payload))) => {
                let value = [&[*qos as u8], &payload[..]].concat();
                self.retained.insert(&**topic, value.as_slice())?;
            }
            Op::Retain(topic, None) => drop(self.retained.remove(&**topic)?),
            Op::Session(id, Some(seen)) => drop(self.sessions.insert(&**id, seen)?),
            Op::Session(id, None) => self.delete_session(id)?,
            _ if !self.has_session(op)? => {}
            Op::Subscription(id, filter, Some(qos)) => {
                self.subscriptions.insert((&**id, filter.as_str()), *qos as u8)?;
            }
            Op::Subscription(id, filter, None) => drop(self.subscriptions.remove((&**id, filter.as_str()))?),
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
            Op::Subscription(id, ..) | Op::Message(id, ..) | Op::Progress(id, ..) | Op::Incoming(id, ..) => id,
            Op::Retain(..) | Op::Session(..) => return Ok(true),
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
        }
        self.messages.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        self.progress.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        self.incoming.retain_in((id, 0)..=(id, u16::MAX), |_, _| false)?;
        Ok(())
    }
}

/// `qos, retain, topic length (u16), topic, payload`.
fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + m.topic.len() + m.payload.len());
    out.push(m.qos as u8);
    out.push(u8::from(m.retain));
    out.extend_from_slice(&(m.topic.len() as u16).to_be_bytes());
    out.extend_from_slice(m.topic.as_bytes());
    out.extend_from_slice(&m.payload);
    out
}

fn decode_message(bytes: &[u8]) -> Option<StoredMessage> {
    let (&[qos, retain, hi, lo], rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let topic = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some(StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(&rest[len..]),
        qos: QoS::from_u8(qos)?,
        retain: retain == 1,
    })
}

fn load(db: &Database) -> Result<Snapshot, ::redb::Error> {
    let txn = db.begin_read()?;
    let mut snapshot = Snapshot::default();
    for entry in txn.open_table(RETAINED)?.iter()? {
        let (topic, value) = entry?;
        let value = value.value();
        let Some((&qos, payload)) = value.split_first() else { continue };
        let Some(qos) = QoS::from_u8(qos) else { continue };
        snapshot.retained.insert(topic.value().into(), (qos, Bytes::copy_from_slice(payload)));
    }
    for entry in txn.open_table(SESSIONS)?.iter()? {
        let (id, seen) = entry?;
        snapshot.sessions.entry(id.value().into()).or_default().last_seen = seen.value();
    }
    for entry in txn.open_table(SUBSCRIPTIONS)?.iter()? {
        let (key, qos) = entry?;
        let (id, filter) = key.value();
        if let (Some(s), Some(qos)) = (snapshot.sessions.get_mut(id), QoS::from_u8(qos.value())) {
            s.subscriptions.insert(filter.to_owned(), qos);
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
