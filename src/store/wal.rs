//! The durable store (format 3 and on): an append-only log of every commit, fsync'd
//! before the commit returns, and a redb checkpoint that a background thread
//! brings up to date from the log.
//!
//! A commit is one frame appended to the current segment file
//! (`wal-NNNNNNNNNNNNNNNNNNNN.log`) and one `fdatasync`: no B-tree insert and
//! delete per stored copy on the commit path. The ops of every commit since
//! the last checkpoint are kept in memory and folded ([`Folder`]): a copy
//! queued and acknowledged between two checkpoints cancels out and never
//! reaches the checkpoint at all. When a segment passes its size, the writer
//! starts the next one and hands the folded ops to the checkpoint thread,
//! which applies them to redb and records the next segment's number in the
//! same transaction, then deletes the segments it holds.
//!
//! Recovery reads the checkpoint, then replays the segments from the number
//! it records, in order. A crash at any point of a checkpoint leaves either
//! the old checkpoint (and every segment it needs) or the new one (and
//! segments it already holds, which are skipped and deleted). A frame torn
//! by the crash ends the last segment: it was never acknowledged.
//!
//! Frame: `body length (u32 LE), checksum of the body (u64 LE), body`; the
//! body is the commit's ops, each a tag byte and its fields.

use super::redb::{
    aside_name, decode_message, decode_options, decode_owner, decode_retained, encode_message_into, encode_owner,
    encode_retained_into,
};
use super::{Folder, Op, Progress, RedbStore, SessionOwner, Snapshot, Store, StoreError};
use crate::packet::Subscription;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// A segment's size after which the writer starts the next one and the
/// checkpoint thread takes the finished one (unless it is still busy with
/// the one before: then the segment grows until it is free).
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Overrides [`SEGMENT_BYTES`] (tests make segments tiny, so that
/// checkpoints run all the time).
pub const SEGMENT_BYTES_ENV: &str = "MIDGE_STORE_SEGMENT_BYTES";

const HEADER: usize = 12;

/// The log and its checkpoint in a data directory.
pub struct WalStore {
    dir: PathBuf,
    file: File,
    /// The number of the segment being written.
    segment: u64,
    /// Bytes in it.
    written: u64,
    segment_bytes: u64,
    buf: Vec<u8>,
    bodies: Bodies,
    /// Every op since the segments the checkpoint thread has or had.
    delta: Vec<Op>,
    /// `delta`'s length at which it is folded next.
    fold_at: usize,
    folder: Folder,
    /// A failed write could not be undone: the segment's end is unknown,
    /// and every later commit fails.
    broken: bool,
    checkpointer: Option<Checkpointer>,
    /// What [`WalStore::open`] read, until the first commit.
    opened: Mutex<Option<Snapshot>>,
}

struct Checkpointer {
    jobs: Sender<Job>,
    busy: Arc<AtomicBool>,
    /// Locked while a checkpoint commits and deletes segments, and while
    /// [`WalStore::load`] reads the files.
    checkpoint: Arc<Mutex<RedbStore>>,
    /// Test hook: jobs are dropped uncommitted, as a crash before each
    /// checkpoint's commit would leave them.
    #[cfg_attr(not(test), allow(dead_code))]
    discard: Arc<AtomicBool>,
    /// [`SPARE`] is ready to become the next segment.
    spare: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

struct Job {
    ops: Vec<Op>,
    /// The first segment not covered by `ops`.
    upto: u64,
}

fn segment_name(n: u64) -> String {
    format!("wal-{n:020}.log")
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()
}

/// The segment files in `dir`, by number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::Io(format!("cannot read {}: {e}", dir.display())))? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments a log replays, as read, and where the last one's good
/// frames end.
struct Replay {
    ops: Vec<Op>,
    last: Option<(u64, PathBuf, u64)>,
    /// A segment with bytes after its last whole frame that are not zeros
    /// (a torn write), and where its whole frames end.
    torn: Option<(PathBuf, u64)>,
    /// Commits read.
    frames: usize,
}

/// Reads the segments from `start` on into `snapshot` (and `ops`). A bad
/// frame in the last segment that holds anything but zeros ends the log (a
/// torn write; later segments are unwritten: a rotation that failed, or
/// was cut short by the crash); anywhere else the log is damaged. So is a
/// frame whose checksum holds but whose ops cannot be read.
fn replay(dir: &Path, start: u64, snapshot: &mut Snapshot, keep_ops: bool) -> Result<Replay, StoreError> {
    let all = segments(dir)?;
    let live: Vec<_> = all.into_iter().filter(|(n, _)| *n >= start).collect();
    if let Some((first, path)) = live.first()
        && *first != start
    {
        let shown = path.display();
        return Err(StoreError::Corrupted(format!("log segment {start} is missing (the next is {shown})")));
    }
    for pair in live.windows(2) {
        if pair[0].0 + 1 != pair[1].0 {
            return Err(StoreError::Corrupted(format!("log segment before {} is missing", pair[1].1.display())));
        }
    }
    let mut files = Vec::with_capacity(live.len());
    for (n, path) in live {
        let bytes = fs::read(&path).map_err(|e| StoreError::Io(format!("cannot read {}: {e}", path.display())))?;
        files.push((n, path, bytes));
    }
    let last_written = files.iter().rposition(|(.., bytes)| bytes.iter().any(|&b| b != 0)).unwrap_or(0);
    let mut out = Replay { ops: Vec::new(), last: None, torn: None, frames: 0 };
    let mut ids = HashSet::new();
    for (i, (n, path, bytes)) in files.into_iter().enumerate() {
        let mut at = 0;
        let mut ops = Vec::new();
        while at < bytes.len() {
            match frame(&bytes[at..], &mut ids, &mut ops) {
                Frame::Whole(len) => {
                    out.frames += 1;
                    snapshot.apply(&ops);
                    if keep_ops {
                        out.ops.append(&mut ops);
                    }
                    ops.clear();
                    at += len;
                }
                Frame::Undecodable => {
                    let shown = path.display();
                    return Err(StoreError::Corrupted(format!(
                        "log segment {shown} has an unreadable commit at byte {at}"
                    )));
                }
                // The zeros a segment is made of before it is written.
                Frame::Torn if bytes[at..].iter().all(|&b| b == 0) => break,
                Frame::Torn if i >= last_written => {
                    let dropped = bytes.len() - at;
                    log::warn!(
                        "store log {}: dropping {dropped} byte(s) after the last whole commit (written when midge stopped; never acknowledged)",
                        path.display()
                    );
                    out.torn = Some((path.clone(), at as u64));
                    break;
                }
                Frame::Torn => {
                    let shown = path.display();
                    return Err(StoreError::Corrupted(format!("log segment {shown} is damaged at byte {at}")));
                }
            }
        }
        out.last = Some((n, path, at as u64));
    }
    Ok(out)
}

impl WalStore {
    /// Opens (or creates) the store in `dir`, reading the checkpoint and the
    /// log. With `recover`, damaged files are renamed aside (never deleted)
    /// and an empty store started.
    pub fn open(dir: &Path, recover: bool) -> Result<WalStore, StoreError> {
        let segment_bytes = std::env::var(SEGMENT_BYTES_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(SEGMENT_BYTES);
        Self::open_with(dir, recover, segment_bytes)
    }

    /// [`WalStore::open`] with a segment size.
    pub fn open_with(dir: &Path, recover: bool, segment_bytes: u64) -> Result<WalStore, StoreError> {
        let checkpoint = RedbStore::open(dir, recover)?;
        match Self::read(dir, checkpoint, segment_bytes) {
            Err((StoreError::Corrupted(why), checkpoint)) if recover => {
                drop(checkpoint);
                let mut moved = Vec::new();
                let mut files: Vec<PathBuf> = segments(dir)?.into_iter().map(|(_, p)| p).collect();
                files.push(dir.join(super::FILE_NAME));
                for path in files {
                    let aside = aside_name(&path);
                    fs::rename(&path, &aside)?;
                    moved.push(aside.display().to_string());
                }
                log::warn!(
                    "store {} is damaged ({why}); moved {} aside and starting empty",
                    dir.display(),
                    moved.join(", ")
                );
                let checkpoint = RedbStore::open(dir, false)?;
                Self::read(dir, checkpoint, segment_bytes).map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    #[allow(clippy::result_large_err)]
    fn read(dir: &Path, checkpoint: RedbStore, segment_bytes: u64) -> Result<WalStore, (StoreError, RedbStore)> {
        let step = |checkpoint: &RedbStore| -> Result<(Snapshot, u64, Replay), StoreError> {
            let start = checkpoint.checkpoint_start()?;
            for (n, path) in segments(dir)? {
                if n < start {
                    // Already in the checkpoint: the crash came between its
                    // commit and these deletions.
                    fs::remove_file(&path)?;
                }
            }
            let mut snapshot = checkpoint.load()?;
            let replayed = replay(dir, start, &mut snapshot, true)?;
            Ok((snapshot, start, replayed))
        };
        let (snapshot, start, replayed) = match step(&checkpoint) {
            Ok(read) => read,
            Err(e) => return Err((e, checkpoint)),
        };
        if let Some((last, ..)) = &replayed.last {
            log::info!(
                "store {}: replayed {} commit(s) from log segments {start} to {last} over the checkpoint",
                dir.display(),
                replayed.frames
            );
        }
        let spare = Arc::new(AtomicBool::new(false));
        prepare_spare(dir, segment_bytes, &spare);
        let opened = (|| -> Result<(File, u64, u64), StoreError> {
            Ok(match &replayed.last {
                // Appends go on after the last whole frame.
                Some((n, path, good)) => {
                    if let Some((torn, from)) = &replayed.torn {
                        // Zeros over the torn frame: nothing of it can be
                        // read as a frame once new ones are written before it.
                        let mut file = OpenOptions::new().write(true).open(torn)?;
                        let end = file.metadata()?.len();
                        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(*from))?;
                        write_zeros(&mut file, end - from)?;
                        file.sync_data()?;
                    }
                    let mut file = OpenOptions::new().write(true).open(path)?;
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(*good))?;
                    (file, *n, *good)
                }
                None if spare.swap(false, Ordering::AcqRel) => (use_spare(dir, start)?, start, 0),
                None => (create_segment(dir, start)?, start, 0),
            })
        })();
        let (file, segment, written) = match opened {
            Ok(opened) => opened,
            Err(e) => return Err((e, checkpoint)),
        };
        let mut store = WalStore {
            dir: dir.to_owned(),
            file,
            segment,
            written,
            segment_bytes: segment_bytes.max(1),
            buf: Vec::new(),
            bodies: Bodies::default(),
            delta: replayed.ops,
            fold_at: 0,
            folder: Folder::default(),
            broken: false,
            checkpointer: None,
            opened: Mutex::new(Some(snapshot)),
        };
        store.folder.fold(&mut store.delta);
        store.fold_at = (2 * store.delta.len()).max(4096);
        store.checkpointer = Some(Checkpointer::start(dir.to_owned(), checkpoint, store.segment_bytes, spare));
        // What the log held goes to the checkpoint at once: the next start
        // has less to replay.
        if segment > start || written > 0 {
            store.rotate();
        }
        Ok(store)
    }

    /// Starts the next segment and hands everything up to it to the
    /// checkpoint thread, if that is free.
    fn rotate(&mut self) {
        let Some(checkpointer) = &self.checkpointer else { return };
        if checkpointer.busy.load(Ordering::Acquire) {
            return;
        }
        let next = self.segment + 1;
        let spare = checkpointer.spare.swap(false, Ordering::AcqRel);
        let started = match spare {
            true => use_spare(&self.dir, next),
            false => create_segment(&self.dir, next),
        };
        match started {
            Ok(file) => {
                self.file = file;
                self.segment = next;
                self.written = 0;
                let ops = std::mem::take(&mut self.delta);
                self.fold_at = 4096;
                checkpointer.busy.store(true, Ordering::Release);
                if checkpointer.jobs.send(Job { ops, upto: next }).is_err() {
                    checkpointer.busy.store(false, Ordering::Release);
                    log::error!("store: the checkpoint thread is gone; the log keeps growing");
                }
            }
            Err(e) => log::error!("store: cannot start log segment {next} in {}: {e}", self.dir.display()),
        }
    }

    /// Appends one frame and makes it durable; on failure the segment is cut
    /// back to where it was.
    fn write_frame(&mut self) -> Result<(), StoreError> {
        let result = self.file.write_all(&self.buf).and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            // Zeros over whatever of the frame was written: its commit
            // failed, and it must not come back on the next start.
            let len = self.buf.len() as u64;
            let seek = |file: &mut File, at| std::io::Seek::seek(file, std::io::SeekFrom::Start(at)).map(drop);
            let undone = seek(&mut self.file, self.written)
                .and_then(|()| write_zeros(&mut self.file, len))
                .and_then(|()| self.file.sync_data())
                .and_then(|()| seek(&mut self.file, self.written));
            if let Err(undo) = undone {
                // The segment's end is unknown: no more commits go into
                // this log (they fail) until midge is restarted.
                log::error!("store: log segment {} cannot be repaired after a failed write ({undo})", self.segment);
                self.broken = true;
            }
            return Err(StoreError::Io(format!("cannot write log segment {}: {e}", self.segment)));
        }
        self.written += self.buf.len() as u64;
        Ok(())
    }

    /// Stops the checkpoint thread; with `last`, it first takes everything
    /// (a clean stop leaves no log to replay).
    fn stop(&mut self, last: bool) {
        let Some(checkpointer) = self.checkpointer.take() else { return };
        if last && (!self.delta.is_empty() || self.written > 0) {
            let ops = std::mem::take(&mut self.delta);
            let _ = checkpointer.jobs.send(Job { ops, upto: self.segment + 1 });
        }
        drop(checkpointer.jobs);
        let _ = checkpointer.thread.join();
    }

    /// Test hook: stops as a crash would, with no last checkpoint (the log
    /// stays as written).
    #[doc(hidden)]
    pub fn crash(mut self) {
        self.stop(false);
    }
}

/// The next segment, written with zeros in advance by the checkpoint
/// thread: a commit that overwrites zeros in place needs no file-size
/// change, so its `fdatasync` skips the file system's journal (about half
/// the time of an append on ext4 here).
const SPARE: &str = "wal-next.tmp";

fn write_zeros(file: &mut File, mut len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    while len > 0 {
        let n = len.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// Makes [`SPARE`] unless it is ready; a failure only costs speed.
fn prepare_spare(dir: &Path, bytes: u64, ready: &AtomicBool) {
    if ready.load(Ordering::Acquire) {
        return;
    }
    // Written under another name and renamed when whole: the writer may
    // be renaming the previous spare into the log at this moment, and a
    // file it opens as a segment must never be truncated or written here.
    let (path, part) = (dir.join(SPARE), dir.join(format!("{SPARE}.part")));
    let made = File::create(&part).and_then(|mut file| {
        write_zeros(&mut file, bytes)?;
        file.sync_all()?;
        fs::rename(&part, &path)
    });
    match made {
        Ok(()) => ready.store(true, Ordering::Release),
        Err(e) => log::warn!("store: cannot prepare the next log segment {}: {e}", path.display()),
    }
}

/// [`SPARE`] renamed to segment `n`.
fn use_spare(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(n));
    fs::rename(dir.join(SPARE), &path)?;
    sync_dir(dir)?;
    Ok(OpenOptions::new().write(true).open(&path)?)
}

fn create_segment(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(n));
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    // The new name must survive a crash before any commit in it returns.
    sync_dir(dir)?;
    Ok(file)
}

impl Drop for WalStore {
    fn drop(&mut self) {
        self.stop(true);
    }
}

impl Store for WalStore {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(StoreError::Io(format!(
                "log segment {} could not be repaired after a failed write",
                self.segment
            )));
        }
        *self.opened.get_mut().unwrap_or_else(PoisonError::into_inner) = None;
        encode_frame(ops, &mut self.buf, &mut self.bodies);
        if self.buf.len() - HEADER > u32::MAX as usize {
            let size = self.buf.len();
            return Err(StoreError::Io(format!(
                "a commit of {size} bytes is larger than a log frame can hold (4 GiB)"
            )));
        }
        self.write_frame()?;
        self.delta.extend(ops.iter().cloned());
        if self.delta.len() >= self.fold_at {
            self.folder.fold(&mut self.delta);
            self.fold_at = (2 * self.delta.len()).max(4096);
        }
        if self.written >= self.segment_bytes {
            self.rotate();
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        if let Some(snapshot) = self.opened.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Ok(snapshot);
        }
        // After commits: read the files as a restart would, while no
        // checkpoint changes them.
        let checkpointer = self.checkpointer.as_ref().expect("the checkpoint thread runs while the store is open");
        let checkpoint = checkpointer.checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
        let mut snapshot = checkpoint.load()?;
        replay(&self.dir, checkpoint.checkpoint_start()?, &mut snapshot, false)?;
        Ok(snapshot)
    }
}

impl Checkpointer {
    fn start(dir: PathBuf, checkpoint: RedbStore, segment_bytes: u64, spare: Arc<AtomicBool>) -> Checkpointer {
        let (jobs, received): (Sender<Job>, Receiver<Job>) = channel();
        let busy = Arc::new(AtomicBool::new(false));
        let checkpoint = Arc::new(Mutex::new(checkpoint));
        let discard = Arc::new(AtomicBool::new(false));
        let (flag, lock, discarding, ready) = (busy.clone(), checkpoint.clone(), discard.clone(), spare.clone());
        let thread = thread::Builder::new()
            .name("midge-checkpoint".into())
            .spawn(move || {
                // Ops a failed checkpoint could not take: the next one does
                // (their segments are still there).
                let mut carry: Vec<Op> = Vec::new();
                let mut folder = Folder::default();
                prepare_spare(&dir, segment_bytes, &ready);
                for job in received {
                    if discarding.load(Ordering::Acquire) {
                        flag.store(false, Ordering::Release);
                        continue;
                    }
                    carry.extend(job.ops);
                    folder.fold(&mut carry);
                    let mut checkpoint = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    match checkpoint.checkpoint(&carry, job.upto) {
                        Ok(()) => {
                            carry.clear();
                            carry.shrink_to(4096);
                            remove_segments_before(&dir, job.upto);
                        }
                        Err(e) => log::error!(
                            "store: checkpoint failed ({e}); the log keeps what it holds and the next checkpoint retries"
                        ),
                    }
                    drop(checkpoint);
                    prepare_spare(&dir, segment_bytes, &ready);
                    flag.store(false, Ordering::Release);
                }
            })
            .expect("spawn store checkpoint thread");
        Checkpointer { jobs, busy, checkpoint, discard, spare, thread }
    }
}

fn remove_segments_before(dir: &Path, upto: u64) {
    let Ok(found) = segments(dir) else { return };
    for (n, path) in found {
        if n < upto
            && let Err(e) = fs::remove_file(&path)
        {
            log::warn!("store: cannot remove {} (already checkpointed): {e}", path.display());
        }
    }
}

/// A 64-bit checksum of a frame's body: it tells a torn or damaged frame
/// from a whole one (not an adversary's: only midge writes the log).
fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (bytes.len() as u64).wrapping_mul(K) ^ 0x6D69_6467_6521;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 31)
}

/// One commit's frame, in `buf` (cleared first).
fn encode_frame(ops: &[Op], buf: &mut Vec<u8>, bodies: &mut Bodies) {
    buf.clear();
    buf.resize(HEADER, 0);
    bodies.clear();
    for op in ops {
        encode_op(op, buf, bodies);
    }
    let body_len = buf.len() - HEADER;
    let sum = checksum(&buf[HEADER..]);
    buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[4..HEADER].copy_from_slice(&sum.to_le_bytes());
}

/// The copies of one message (its topic, payload and properties, shared by
/// pointer) already written whole in the frame being encoded, by the index
/// of that record: a message queued for a hundred persistent sessions is
/// written once per commit, and each further copy refers to it.
type Bodies = std::collections::HashMap<BodyKey, u32, super::BuildKey>;

/// Pointers (only compared: the ops being encoded keep them alive, so equal
/// pointers mean equal contents), the payload's length and the expiry.
type BodyKey = (usize, usize, usize, usize, Option<u64>);

fn body_key(m: &crate::packet::Message) -> BodyKey {
    let properties = m.properties.as_ref().map_or(0, |p| Arc::as_ptr(p) as usize);
    (Arc::as_ptr(&m.topic).cast::<u8>() as usize, m.payload.as_ptr() as usize, m.payload.len(), properties, m.expires)
}

mod tag {
    pub const RETAIN: u8 = 1;
    pub const UNRETAIN: u8 = 2;
    pub const SESSION: u8 = 3;
    pub const END_SESSION: u8 = 4;
    pub const SUBSCRIBE: u8 = 5;
    pub const UNSUBSCRIBE: u8 = 6;
    pub const OWNER: u8 = 7;
    pub const MESSAGE: u8 = 8;
    pub const REMOVE: u8 = 9;
    pub const PROGRESS: u8 = 10;
    pub const INCOMING: u8 = 11;
    /// A copy of a message written whole earlier in the same frame.
    pub const COPY: u8 = 12;
    /// Format 4: [`super::Op::Mark`] (key, 0 or 1, then the value).
    pub const MARK: u8 = 13;
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// A length-prefixed (u32) blob written by `fill`.
fn put_blob(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn encode_op(op: &Op, out: &mut Vec<u8>, bodies: &mut Bodies) {
    match op {
        Op::Retain(topic, Some(m)) => {
            out.push(tag::RETAIN);
            put_str(out, topic);
            put_blob(out, |out| encode_retained_into(m, out));
        }
        Op::Retain(topic, None) => {
            out.push(tag::UNRETAIN);
            put_str(out, topic);
        }
        Op::Session(id, Some(seen)) => {
            out.push(tag::SESSION);
            put_str(out, id);
            out.extend_from_slice(&seen.to_le_bytes());
        }
        Op::Session(id, None) => {
            out.push(tag::END_SESSION);
            put_str(out, id);
        }
        Op::Subscription(id, filter, Some(sub)) => {
            out.push(tag::SUBSCRIBE);
            put_str(out, id);
            put_str(out, filter);
            out.push(sub.options.to_byte());
            match sub.id {
                Some(n) => {
                    out.push(1);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                None => out.push(0),
            }
        }
        Op::Subscription(id, filter, None) => {
            out.push(tag::UNSUBSCRIBE);
            put_str(out, id);
            put_str(out, filter);
        }
        Op::Owner(id, owner) => {
            out.push(tag::OWNER);
            put_str(out, id);
            put_blob(out, |out| out.extend_from_slice(&encode_owner(owner)));
        }
        Op::Message(id, seq, Some(m)) => {
            let next = bodies.len() as u32;
            match bodies.entry(body_key(m)) {
                std::collections::hash_map::Entry::Occupied(whole) => {
                    out.push(tag::COPY);
                    put_str(out, id);
                    out.extend_from_slice(&seq.to_le_bytes());
                    out.extend_from_slice(&whole.get().to_le_bytes());
                    out.push(m.qos as u8);
                    out.push(u8::from(m.retain));
                    match m.subscription_id {
                        Some(n) => {
                            out.push(1);
                            out.extend_from_slice(&n.to_le_bytes());
                        }
                        None => out.push(0),
                    }
                }
                std::collections::hash_map::Entry::Vacant(first) => {
                    first.insert(next);
                    out.push(tag::MESSAGE);
                    put_str(out, id);
                    out.extend_from_slice(&seq.to_le_bytes());
                    put_blob(out, |out| encode_message_into(m, out));
                }
            }
        }
        Op::Message(id, seq, None) => {
            out.push(tag::REMOVE);
            put_str(out, id);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Op::Progress(id, seq, progress) => {
            out.push(tag::PROGRESS);
            put_str(out, id);
            out.extend_from_slice(&seq.to_le_bytes());
            out.push(*progress as u8);
        }
        Op::Incoming(id, pid, received) => {
            out.push(tag::INCOMING);
            put_str(out, id);
            out.extend_from_slice(&pid.to_le_bytes());
            out.push(u8::from(*received));
        }
        Op::Mark(key, value) => {
            out.push(tag::MARK);
            put_str(out, key);
            out.push(u8::from(value.is_some()));
            if let Some(value) = value {
                put_blob(out, |out| out.extend_from_slice(value));
            }
        }
    }
}

/// What the start of a segment's remaining bytes holds.
enum Frame {
    /// A frame of this many bytes, its ops read.
    Whole(usize),
    /// No whole frame: incomplete, zeros, or a checksum that fails.
    Torn,
    /// A frame whose checksum holds but whose ops cannot be read.
    Undecodable,
}

/// Reads one frame at the start of `bytes` into `ops`.
fn frame(bytes: &[u8], ids: &mut HashSet<Arc<str>>, ops: &mut Vec<Op>) -> Frame {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER>() else { return Frame::Torn };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let sum = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
    let Some(body) = rest.get(..len).filter(|body| !body.is_empty()) else { return Frame::Torn };
    if checksum(body) != sum {
        return Frame::Torn;
    }
    let mut r = Reader { bytes: body, ids, bodies: Vec::new() };
    while !r.bytes.is_empty() {
        match r.op() {
            Some(op) => ops.push(op),
            None => {
                ops.clear();
                return Frame::Undecodable;
            }
        }
    }
    Frame::Whole(HEADER + len)
}

struct Reader<'a, 'i> {
    bytes: &'a [u8],
    /// Client ids read so far: one allocation each, as the broker has.
    ids: &'i mut HashSet<Arc<str>>,
    /// The frame's messages written whole, for its [`tag::COPY`] records.
    bodies: Vec<crate::packet::Message>,
}

impl<'a> Reader<'a, '_> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.bytes.get(..n)?, self.bytes.get(n..)?);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn id(&mut self) -> Option<Arc<str>> {
        let id = self.str()?;
        if let Some(known) = self.ids.get(id) {
            return Some(known.clone());
        }
        let id: Arc<str> = id.into();
        self.ids.insert(id.clone());
        Some(id)
    }

    fn blob(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn op(&mut self) -> Option<Op> {
        Some(match self.u8()? {
            tag::RETAIN => {
                let topic = self.str()?;
                let m = decode_retained(topic, self.blob()?)?;
                Op::Retain(m.topic.clone(), Some(m))
            }
            tag::UNRETAIN => Op::Retain(self.str()?.into(), None),
            tag::SESSION => Op::Session(self.id()?, Some(self.u64()?)),
            tag::END_SESSION => Op::Session(self.id()?, None),
            tag::SUBSCRIBE => {
                let (id, filter) = (self.id()?, self.str()?.to_owned());
                let options = decode_options(self.u8()?)?;
                let sub_id = match self.u8()? {
                    0 => None,
                    _ => Some(self.u32()?),
                };
                Op::Subscription(id, filter, Some(Subscription { options, id: sub_id }))
            }
            tag::UNSUBSCRIBE => Op::Subscription(self.id()?, self.str()?.to_owned(), None),
            tag::OWNER => {
                let id = self.id()?;
                let owner: SessionOwner = decode_owner(self.blob()?)?;
                Op::Owner(id, owner)
            }
            tag::MESSAGE => {
                let (id, seq) = (self.id()?, self.u64()?);
                let m = decode_message(self.blob()?)?;
                self.bodies.push(m.clone());
                Op::Message(id, seq, Some(m))
            }
            tag::COPY => {
                let (id, seq) = (self.id()?, self.u64()?);
                let whole = self.u32()? as usize;
                let (qos, retain) = (crate::packet::QoS::from_u8(self.u8()?)?, self.u8()? == 1);
                let subscription_id = match self.u8()? {
                    0 => None,
                    _ => Some(self.u32()?),
                };
                let m = crate::packet::Message { qos, retain, subscription_id, ..self.bodies.get(whole)?.clone() };
                Op::Message(id, seq, Some(m))
            }
            tag::REMOVE => Op::Message(self.id()?, self.u64()?, None),
            tag::PROGRESS => {
                let (id, seq) = (self.id()?, self.u64()?);
                let progress = match self.u8()? {
                    0 => Progress::Queued,
                    1 => Progress::Sent,
                    2 => Progress::Released,
                    _ => return None,
                };
                Op::Progress(id, seq, progress)
            }
            tag::INCOMING => {
                let (id, pid) = (self.id()?, self.u16()?);
                Op::Incoming(id, pid, self.u8()? == 1)
            }
            tag::MARK => {
                let key: Arc<str> = self.str()?.into();
                match self.u8()? {
                    0 => Op::Mark(key, None),
                    1 => Op::Mark(key, Some(bytes::Bytes::copy_from_slice(self.blob()?))),
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Message, QoS};
    use crate::store::contract;
    use bytes::Bytes;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
            Dir(std::env::temp_dir().join(format!("midge-wal-{name}-{}-{nanos}", std::process::id())))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn message(n: u64) -> Message {
        Message::new(format!("t/{n}").into(), Bytes::from(n.to_be_bytes().to_vec()), QoS::AtLeastOnce, false)
    }

    /// Commits as the broker makes them: sessions, subscriptions, messages
    /// queued, progressed and acknowledged, retained messages.
    fn commits(seed: u64, count: usize) -> Vec<Vec<Op>> {
        let mut next = crate::store::random(seed);
        let ids: Vec<Arc<str>> = (0..4).map(|i| format!("c{i}").into()).collect();
        let mut live: Vec<Vec<u64>> = vec![Vec::new(); ids.len()];
        let mut seq = 0;
        let mut out = vec![ids.iter().map(|id| Op::Session(id.clone(), Some(1))).collect::<Vec<_>>()];
        for _ in 0..count {
            let mut commit = Vec::new();
            for _ in 0..1 + next(6) {
                let c = next(ids.len() as u64) as usize;
                let id = ids[c].clone();
                commit.push(match next(12) {
                    0..=4 => {
                        seq += 1;
                        live[c].push(seq);
                        Op::Message(id, seq, Some(message(seq)))
                    }
                    5..=7 if !live[c].is_empty() => Op::Message(id, live[c].remove(0), None),
                    8 if !live[c].is_empty() => Op::Progress(id, live[c][0], Progress::Sent),
                    9 => {
                        let topic: Arc<str> = format!("r/{}", next(3)).into();
                        let retained = Message { topic: topic.clone(), retain: true, ..message(seq) };
                        Op::Retain(topic, (next(3) > 0).then_some(retained))
                    }
                    10 => Op::Subscription(id, format!("f/{}", next(3)), Some(Subscription::qos(QoS::AtLeastOnce))),
                    11 if next(3) == 0 => {
                        Op::Mark(format!("m/{}", next(2)).into(), (next(3) > 0).then(|| Bytes::from(seq.to_string())))
                    }
                    _ => Op::Incoming(id, next(5) as u16 + 1, next(2) == 0),
                });
            }
            out.push(commit);
        }
        out
    }

    fn expected(commits: &[Vec<Op>]) -> Snapshot {
        let mut s = Snapshot::default();
        commits.iter().for_each(|c| s.apply(c));
        s
    }

    /// Asserts two snapshots are equal, naming the first difference.
    #[track_caller]
    fn same(got: &Snapshot, want: &Snapshot, context: &str) {
        if got == want {
            return;
        }
        let mut got = got.clone();
        for s in got.sessions.values_mut() {
            s.incoming.sort_unstable();
        }
        let mut want = want.clone();
        for s in want.sessions.values_mut() {
            s.incoming.sort_unstable();
        }
        let (got, want) = (&got, &want);
        if got == want {
            return;
        }
        assert_eq!(got.marks, want.marks, "{context}: marks");
        if got.retained != want.retained {
            panic!("{context}: retained differ: {:?} vs {:?}", got.retained.keys(), want.retained.keys());
        }
        for (id, w) in &want.sessions {
            let Some(g) = got.sessions.get(id) else { panic!("{context}: session {id} missing") };
            let (gk, wk): (Vec<_>, Vec<_>) = (g.messages.keys().collect(), w.messages.keys().collect());
            assert_eq!(gk, wk, "{context}: session {id}'s message numbers");
            for (seq, (m, p)) in &w.messages {
                assert_eq!(&g.messages[seq], &(m.clone(), *p), "{context}: session {id} message {seq}");
            }
            assert_eq!(g.subscriptions, w.subscriptions, "{context}: session {id}'s subscriptions");
            assert_eq!(g.incoming, w.incoming, "{context}: session {id}'s incoming ids");
            assert_eq!((g.last_seen, &g.owner), (w.last_seen, &w.owner), "{context}: session {id}");
        }
        panic!("{context}: extra sessions: {:?} vs {:?}", got.sessions.keys(), want.sessions.keys());
    }

    fn reopen(dir: &Path) -> Snapshot {
        WalStore::open_with(dir, false, 1 << 20).unwrap().load().unwrap()
    }

    #[test]
    fn wal_store_follows_the_contract_and_survives_reopening() {
        for segment_bytes in [1, 1 << 20] {
            let dir = Dir::new("contract");
            contract::check(&mut WalStore::open_with(&dir.0, false, segment_bytes).unwrap());
            assert_eq!(reopen(&dir.0), contract::scenario().1);
        }
    }

    #[test]
    fn many_checkpoints_give_the_reference_state() {
        for seed in 1..6 {
            let dir = Dir::new("many");
            let all = commits(seed * 7919, 400);
            let mut store = WalStore::open_with(&dir.0, false, 512).unwrap();
            for (i, c) in all.iter().enumerate() {
                store.apply(c).unwrap();
                if i % 97 == 0 {
                    same(&store.load().unwrap(), &expected(&all[..=i]), &format!("seed {seed}, commit {i}"));
                }
            }
            store.crash();
            same(&reopen(&dir.0), &expected(&all), &format!("seed {seed}: after a crash"));
            same(&reopen(&dir.0), &expected(&all), &format!("seed {seed}: after a clean stop"));
            let left = segments(&dir.0).unwrap();
            assert_eq!(left.len(), 1, "a clean stop leaves one unwritten segment: {left:?}");
            assert!(fs::read(&left[0].1).unwrap().iter().all(|&b| b == 0), "the segment is unwritten");
        }
    }

    /// A crash while checkpoints are pending (their jobs taken, nothing
    /// committed): the old checkpoint and every segment since are on disk.
    #[test]
    fn a_crash_before_a_checkpoint_commits_replays_every_segment() {
        let dir = Dir::new("pending");
        let all = commits(11, 300);
        let mut store = WalStore::open_with(&dir.0, false, 256).unwrap();
        let (first, rest) = all.split_at(100);
        first.iter().for_each(|c| store.apply(c).unwrap());
        let start = store.checkpointer.as_ref().unwrap().checkpoint.lock().unwrap().checkpoint_start().unwrap();
        assert!(start > 1, "checkpoints ran");
        store.checkpointer.as_ref().unwrap().discard.store(true, Ordering::Release);
        rest.iter().for_each(|c| store.apply(c).unwrap());
        store.crash();
        assert!(segments(&dir.0).unwrap().len() >= 2, "the segments of the lost checkpoints are kept");
        same(&reopen(&dir.0), &expected(&all), "after the crash");
        same(&reopen(&dir.0), &expected(&all), "after a clean stop");
    }

    /// A crash after a checkpoint committed and before it deleted the
    /// segments it holds: they are skipped, not applied twice.
    #[test]
    fn a_crash_between_a_checkpoint_and_its_deletions_skips_the_checkpointed_segments() {
        let dir = Dir::new("deleted");
        let all = commits(23, 300);
        let mut store = WalStore::open_with(&dir.0, false, 256).unwrap();
        let mut saved = std::collections::BTreeMap::new();
        for c in &all {
            store.apply(c).unwrap();
            for (n, path) in segments(&dir.0).unwrap() {
                if let Ok(bytes) = fs::read(&path) {
                    saved.insert(n, bytes);
                }
            }
        }
        store.crash();
        let start = segments(&dir.0).unwrap()[0].0;
        let restored = saved.range(..start).count();
        assert!(restored > 3, "checkpoints ran and removed segments");
        for (n, bytes) in saved.range(..start) {
            fs::write(dir.0.join(segment_name(*n)), bytes).unwrap();
        }
        same(&reopen(&dir.0), &expected(&all), "");
        assert!(segments(&dir.0).unwrap().iter().all(|(n, _)| *n >= start), "checkpointed segments removed");
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_appends_go_on_after_the_last_whole_one() {
        let dir = Dir::new("torn");
        let all = commits(5, 50);
        let mut store = WalStore::open_with(&dir.0, false, 1 << 20).unwrap();
        all.iter().for_each(|c| store.apply(c).unwrap());
        store.crash();
        let (_, last) = segments(&dir.0).unwrap().pop().unwrap();
        let whole = fs::metadata(&last).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&last).unwrap();
        file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, tag::MESSAGE, 2]).unwrap();
        drop(file);
        let mut store = WalStore::open_with(&dir.0, false, 1 << 20).unwrap();
        same(&store.load().unwrap(), &expected(&all), "");
        let more = commits(6, 20);
        more.iter().for_each(|c| store.apply(c).unwrap());
        store.crash();
        assert!(fs::metadata(&last).map_or(true, |m| m.len() >= whole));
        let mut both = all.clone();
        both.extend(more);
        same(&reopen(&dir.0), &expected(&both), "");
    }

    /// Writes segment `n` by hand, one frame per commit.
    fn write_segment(dir: &Path, n: u64, commits: &[Vec<Op>]) {
        fs::create_dir_all(dir).unwrap();
        let mut bytes = Vec::new();
        let mut buf = Vec::new();
        for c in commits {
            encode_frame(c, &mut buf, &mut Bodies::default());
            bytes.extend_from_slice(&buf);
        }
        fs::write(dir.join(segment_name(n)), bytes).unwrap();
    }

    #[test]
    fn segments_written_by_hand_replay_in_order() {
        let dir = Dir::new("by-hand");
        let all = commits(7, 60);
        write_segment(&dir.0, 1, &all[..30]);
        write_segment(&dir.0, 2, &all[30..]);
        same(&reopen(&dir.0), &expected(&all), "");
    }

    #[test]
    fn a_damaged_segment_before_the_last_is_refused_then_moved_aside_with_recover() {
        let dir = Dir::new("damaged");
        let all = commits(7, 60);
        write_segment(&dir.0, 1, &all[..30]);
        write_segment(&dir.0, 2, &all[30..]);
        let first = dir.0.join(segment_name(1));
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 3] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let refused = WalStore::open_with(&dir.0, false, 1 << 20).err().expect("refused");
        assert!(matches!(refused, StoreError::Corrupted(_)), "{refused}");
        assert!(refused.to_string().contains("--recover-store"), "{refused}");
        let store = WalStore::open_with(&dir.0, true, 1 << 20).unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
        drop(store);
        let names: Vec<String> =
            fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        for kept in [segment_name(1), segment_name(2), super::super::FILE_NAME.to_owned()] {
            assert!(names.iter().any(|n| n.starts_with(&format!("{kept}.damaged-"))), "{kept} kept aside: {names:?}");
        }
    }

    #[test]
    fn a_missing_segment_is_damage() {
        let all = commits(9, 40);
        let gap = Dir::new("gap");
        write_segment(&gap.0, 1, &all[..20]);
        write_segment(&gap.0, 3, &all[20..]);
        let refused = WalStore::open_with(&gap.0, false, 1 << 20).err().expect("a gap is refused");
        assert!(matches!(refused, StoreError::Corrupted(_)), "{refused}");
        let late = Dir::new("late");
        write_segment(&late.0, 2, &all);
        let refused = WalStore::open_with(&late.0, false, 1 << 20).err().expect("a missing first segment is refused");
        assert!(matches!(refused, StoreError::Corrupted(_)), "{refused}");
    }

    #[test]
    fn a_format_2_store_opens_intact_and_is_upgraded() {
        let dir = Dir::new("format2");
        {
            let mut old = RedbStore::open(&dir.0, false).unwrap();
            old.apply(&contract::scenario().0).unwrap();
            old.make_format(2);
        }
        let mut store = WalStore::open_with(&dir.0, false, 512).unwrap();
        same(&store.load().unwrap(), &contract::scenario().1, "format 2 as read");
        let more = commits(3, 100);
        more.iter().for_each(|c| store.apply(c).unwrap());
        store.crash();
        let mut want = contract::scenario().1;
        more.iter().for_each(|c| want.apply(c));
        same(&reopen(&dir.0), &want, "after commits in format 4");
        assert_eq!(RedbStore::open(&dir.0, false).unwrap().format().unwrap(), super::super::redb::FORMAT);
    }

    #[test]
    fn a_format_3_store_and_its_log_open_intact_and_are_upgraded() {
        let dir = Dir::new("format3");
        let unmarked = |commits: Vec<Vec<Op>>| -> Vec<Vec<Op>> {
            commits.into_iter().map(|c| c.into_iter().filter(|op| !matches!(op, Op::Mark(..))).collect()).collect()
        };
        let old = unmarked(commits(5, 200));
        {
            let mut store = WalStore::open_with(&dir.0, false, 512).unwrap();
            old.iter().for_each(|c| store.apply(c).unwrap());
            store.crash();
        }
        assert!(!segments(&dir.0).unwrap().is_empty(), "the log has segments to replay");
        RedbStore::open(&dir.0, false).unwrap().make_format_3();
        let mut store = WalStore::open_with(&dir.0, false, 512).unwrap();
        same(&store.load().unwrap(), &expected(&old), "format 3 as read");
        let more = commits(6, 100);
        more.iter().for_each(|c| store.apply(c).unwrap());
        store.crash();
        let mut want = expected(&old);
        more.iter().for_each(|c| want.apply(c));
        same(&reopen(&dir.0), &want, "after commits in format 4");
        assert_eq!(RedbStore::open(&dir.0, false).unwrap().format().unwrap(), super::super::redb::FORMAT);
    }

    #[test]
    fn a_format_1_store_opens_intact_and_is_upgraded() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-68c325b").join(super::super::FILE_NAME);
        let copy = |name| {
            let dir = Dir::new(name);
            fs::create_dir_all(&dir.0).unwrap();
            fs::copy(&fixture, dir.0.join(super::super::FILE_NAME)).unwrap();
            dir
        };
        // The same file read through the tables alone, as a reference.
        let before = RedbStore::open(&copy("format1-ref").0, false).unwrap().load().unwrap();
        assert!(!before.sessions.is_empty() && !before.retained.is_empty());
        let dir = copy("format1");
        let mut store = WalStore::open_with(&dir.0, false, 512).unwrap();
        same(&store.load().unwrap(), &before, "format 1 as read");
        let more = commits(4, 100);
        more.iter().for_each(|c| store.apply(c).unwrap());
        drop(store);
        let mut want = before;
        more.iter().for_each(|c| want.apply(c));
        same(&reopen(&dir.0), &want, "after commits in format 4");
    }

    #[test]
    fn copies_of_one_message_are_written_once_per_commit() {
        let dir = Dir::new("copies");
        let ids: Vec<Arc<str>> = (0..50).map(|i| format!("fan-{i}").into()).collect();
        let mut commits = vec![ids.iter().map(|id| Op::Session(id.clone(), Some(1))).collect::<Vec<_>>()];
        let properties = crate::packet::Properties { content_type: Some("text/plain".into()), ..Default::default() };
        let one = Message {
            properties: Some(Arc::new(properties)),
            expires: Some(1_900_000_000_000),
            ..Message::new("fan/out".into(), Bytes::from(vec![7u8; 4000]), QoS::ExactlyOnce, false)
        };
        let copies: Vec<Op> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let copy = Message {
                    qos: if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce },
                    retain: i % 3 == 0,
                    subscription_id: (i % 4 == 0).then_some(i as u32 + 1),
                    ..one.clone()
                };
                Op::Message(id.clone(), 1, Some(copy))
            })
            .collect();
        commits.push(copies);
        // The same contents in another allocation: written whole again.
        commits.push(vec![Op::Message(
            ids[0].clone(),
            2,
            Some(Message { payload: Bytes::from(vec![7u8; 4000]), ..one }),
        )]);
        let mut store = WalStore::open_with(&dir.0, false, 1 << 20).unwrap();
        commits.iter().for_each(|c| store.apply(c).unwrap());
        let written = store.written;
        store.crash();
        assert!(written < 3 * 4000 + 50 * 64, "{written} bytes: each commit wrote the payload once");
        same(&reopen(&dir.0), &expected(&commits), "after reopening");
    }

    /// A rotation that failed (or was cut short) leaves an unwritten next
    /// segment: a torn frame before it still just ends the log.
    #[test]
    fn a_torn_frame_before_unwritten_segments_ends_the_log() {
        let dir = Dir::new("torn-before-empty");
        let all = commits(12, 40);
        write_segment(&dir.0, 1, &all);
        let first = dir.0.join(segment_name(1));
        let mut file = OpenOptions::new().append(true).open(&first).unwrap();
        file.write_all(&[200, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, tag::MESSAGE]).unwrap();
        drop(file);
        fs::write(dir.0.join(segment_name(2)), [0u8; 4096]).unwrap();
        fs::write(dir.0.join(segment_name(3)), []).unwrap();
        let mut store = WalStore::open_with(&dir.0, false, 1 << 20).unwrap();
        same(&store.load().unwrap(), &expected(&all), "the whole frames");
        let more = commits(13, 20);
        more.iter().for_each(|c| store.apply(c).unwrap());
        store.crash();
        let mut both = all.clone();
        both.extend(more);
        same(&reopen(&dir.0), &expected(&both), "after more commits");
    }

    #[test]
    fn a_whole_frame_that_cannot_be_read_is_damage_even_at_the_end() {
        let dir = Dir::new("unreadable");
        write_segment(&dir.0, 1, &commits(14, 10));
        let body = [0xEEu8, 1, 2, 3];
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&checksum(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let mut file = OpenOptions::new().append(true).open(dir.0.join(segment_name(1))).unwrap();
        file.write_all(&frame).unwrap();
        drop(file);
        let refused = WalStore::open_with(&dir.0, false, 1 << 20).err().expect("refused");
        assert!(matches!(refused, StoreError::Corrupted(_)), "{refused}");
    }
}
