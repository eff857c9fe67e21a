//! Logging: the binary's logger, and a per-cause rate limit for the lines a
//! client can trigger.
//!
//! **The binary's logger** ([`init`]) formats each line in the caller and
//! hands it to a dedicated writer thread through a bounded queue, so a slow
//! or blocked stdout never holds up an executor thread: when the queue is
//! full the line is counted as lost, and the writer reports the count when
//! it catches up. Pretty lines on a terminal, ndjson otherwise (femme's two
//! formats, whatever the build profile; ndjson fields `level`, `time`, `msg`).
//! Library embedders keep their own logger.
//!
//! **Rate limits** ([`limited!`](crate::limited), [`RateLimit`]): a client
//! that floods the broker with refused packets must not flood the log, so the
//! lines it can trigger go through a limit per cause: at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`], then one line "N similar
//! message(s) suppressed (cause)" once the window has passed — either at the
//! cause's next line or from the server's reporting task
//! ([`pending`] / [`report_suppressed`]), whichever comes first.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[doc(hidden)]
pub use log as __log;

/// Lines one cause may log per [`WINDOW`] before the rest are only counted.
pub const LINES_PER_WINDOW: u32 = 10;
/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Lines the binary's logger queues for its writer thread; beyond that they
/// are counted as lost (the callers never wait for stdout).
pub const QUEUE_LINES: usize = 1024;
/// The longest [`Log::flush`] waits for the writer thread (at exit).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Logs at most [`LINES_PER_WINDOW`] lines per [`WINDOW`] for `cause` (a
/// string literal naming the kind of event, e.g. `"denied publish"`), then
/// counts the rest and reports them in one line
/// "N similar message(s) suppressed (cause)". Each call site has its own
/// limit; the arguments after the level are those of `log::log!`.
///
/// ```
/// midge::limited!("denied publish", log::Level::Info, "client {} may not publish to {}", "c1", "a/b");
/// ```
#[macro_export]
macro_rules! limited {
    ($cause:literal, $level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit =
            $crate::logging::RateLimit::new($cause, ::core::module_path!(), $level);
        if $crate::logging::__log::log_enabled!($level) && LIMIT.admit() {
            $crate::logging::__log::log!($level, $($arg)+);
        }
    }};
}

/// A rate limit for one cause of log lines: fixed windows, at most `lines`
/// per window, the rest counted. [`RateLimit::check`] takes the time, so
/// tests can drive it with a clock of their own.
#[derive(Debug)]
pub struct RateLimit {
    cause: &'static str,
    target: &'static str,
    level: Level,
    lines: u32,
    window: Duration,
    state: Mutex<Window>,
    /// Whether it is in [`LIMITS`], where the reporting task finds it.
    registered: AtomicBool,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    /// Lines suppressed and not yet reported.
    suppressed: u64,
}

/// What [`RateLimit::check`] decided about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log the line, after a summary of `suppressed` lines if that is not 0
    /// (what an earlier window suppressed and nobody has reported yet).
    Log {
        /// Lines of an ended window still to report.
        suppressed: u64,
    },
    /// Count the line instead; `first` for the first one of its window.
    Suppress {
        /// Whether this is the window's first suppressed line.
        first: bool,
    },
}

impl RateLimit {
    /// A limit of [`LINES_PER_WINDOW`] per [`WINDOW`] for `cause`; its
    /// summary lines go out at `level` with `target` (a module path).
    pub const fn new(cause: &'static str, target: &'static str, level: Level) -> RateLimit {
        RateLimit::with_limit(cause, target, level, LINES_PER_WINDOW, WINDOW)
    }

    /// A limit of `lines` per `window`.
    pub const fn with_limit(
        cause: &'static str,
        target: &'static str,
        level: Level,
        lines: u32,
        window: Duration,
    ) -> RateLimit {
        RateLimit {
            cause,
            target,
            level,
            lines,
            window,
            state: Mutex::new(Window { start: None, logged: 0, suppressed: 0 }),
            registered: AtomicBool::new(false),
        }
    }

    /// The cause this limit counts.
    pub fn cause(&self) -> &'static str {
        self.cause
    }

    /// Decides about one line at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if w.start.is_none_or(|start| now.saturating_duration_since(start) >= self.window) {
            let suppressed = std::mem::take(&mut w.suppressed);
            *w = Window { start: Some(now), logged: 1, suppressed: 0 };
            return Verdict::Log { suppressed };
        }
        if w.logged < self.lines {
            w.logged += 1;
            return Verdict::Log { suppressed: 0 };
        }
        w.suppressed += 1;
        Verdict::Suppress { first: w.suppressed == 1 }
    }

    /// Takes the count of suppressed lines once their window has ended at
    /// `now` (or at once with `force`), for a summary line; 0 if there is
    /// nothing to report yet.
    pub fn take_suppressed(&self, now: Instant, force: bool) -> u64 {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ended = w.start.is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        match ended || force {
            true => std::mem::take(&mut w.suppressed),
            false => 0,
        }
    }

    fn has_suppressed(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).suppressed > 0
    }

    /// Checks a line now: whether to log it. Logs the summary of an ended
    /// window first; on a window's first suppressed line, wakes the
    /// reporting task ([`pending`]) so the summary comes even if the cause
    /// falls silent.
    pub fn admit(&'static self) -> bool {
        match self.check(Instant::now()) {
            Verdict::Log { suppressed } => {
                self.summary(suppressed);
                true
            }
            Verdict::Suppress { first } => {
                if first {
                    if !self.registered.swap(true, Ordering::AcqRel) {
                        LIMITS.lock().unwrap_or_else(PoisonError::into_inner).push(self);
                    }
                    SUPPRESSED.notify(usize::MAX);
                }
                false
            }
        }
    }

    fn summary(&self, suppressed: u64) {
        if suppressed > 0 {
            log::log!(target: self.target, self.level, "{suppressed} similar message(s) suppressed ({})", self.cause);
        }
    }
}

/// Every limit that has suppressed a line at some point.
static LIMITS: Mutex<Vec<&'static RateLimit>> = Mutex::new(Vec::new());
/// Notified on each window's first suppressed line.
static SUPPRESSED: event_listener::Event = event_listener::Event::new();

fn limits() -> Vec<&'static RateLimit> {
    LIMITS.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Resolves once some line has been suppressed and not yet reported; the
/// summary is due at most one [`WINDOW`] later ([`report_suppressed`]).
pub async fn pending() {
    loop {
        let listener = SUPPRESSED.listen();
        if limits().iter().any(|l| l.has_suppressed()) {
            return;
        }
        listener.await;
    }
}

/// Logs the summary of every window that has ended by `now` with lines
/// suppressed and not yet reported.
pub fn report_suppressed(now: Instant) {
    for limit in limits() {
        limit.summary(limit.take_suppressed(now, false));
    }
}

/// Logs every suppressed count at once, ended window or not (at shutdown).
pub fn flush_suppressed() {
    for limit in limits() {
        limit.summary(limit.take_suppressed(Instant::now(), true));
    }
}

/// Where the binary's log goes (Mosquitto's `log_dest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard output (midge's default).
    Stdout,
    /// Standard error (Mosquitto's default).
    Stderr,
    /// Appended to this file.
    File(std::path::PathBuf),
    /// Nowhere.
    None,
}

/// How the binary logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The most verbose level written.
    pub level: LevelFilter,
    /// Where lines go.
    pub destination: Destination,
    /// Start pretty (terminal) lines with the Unix time in seconds, as
    /// Mosquitto does; ndjson lines always carry their `time`.
    pub timestamp: bool,
}

/// Starts the binary's logging at `level` on stdout: see [`init_with`].
pub fn init(level: LevelFilter) {
    let _ = init_with(&Options { level, destination: Destination::Stdout, timestamp: false });
}

/// Starts the binary's logging: lines are formatted by the caller and
/// written by a thread of their own (see the module docs); pretty lines on
/// a terminal, ndjson otherwise (a file is ndjson). Does nothing if a
/// logger is already set. Fails only if the log file cannot be opened.
pub fn init_with(options: &Options) -> std::io::Result<()> {
    let (out, pretty): (Box<dyn Write + Send>, bool) = match &options.destination {
        Destination::None => {
            log::set_max_level(LevelFilter::Off);
            return Ok(());
        }
        Destination::Stdout => (Box::new(std::io::stdout()), std::io::stdout().is_terminal()),
        Destination::Stderr => (Box::new(std::io::stderr()), std::io::stderr().is_terminal()),
        Destination::File(path) => {
            let file =
                std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open log file {}: {e}", path.display()))
                })?;
            (Box::new(file), false)
        }
    };
    let (mut logger, mut queue) = Logger::new(pretty, QUEUE_LINES);
    logger.timestamp = options.timestamp && pretty;
    if let Destination::File(path) = &options.destination {
        queue.reopen = Some(path.clone());
    }
    if log::set_boxed_logger(Box::new(logger)).is_err() {
        return Ok(());
    }
    let spawned = std::thread::Builder::new().name("midge-log".into()).spawn(move || queue.write_to(out));
    if spawned.is_ok() {
        log::set_max_level(options.level);
    }
    Ok(())
}

enum Message {
    Line(String),
    /// Write out what came before, then answer.
    Flush(SyncSender<()>),
}

/// The sending side: formats, queues, never waits.
struct Logger {
    pretty: bool,
    /// Start each line with the Unix time in seconds (pretty lines only).
    timestamp: bool,
    queue: SyncSender<Message>,
    lost: Arc<AtomicU64>,
}

/// The writer thread's side of the queue.
struct Queue {
    pretty: bool,
    lines: Receiver<Message>,
    lost: Arc<AtomicU64>,
    /// The log file, opened again when [`reopen`] asks.
    reopen: Option<std::path::PathBuf>,
}

/// Set by [`reopen`], taken by the writer thread.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Closes and reopens the log file before the next line is written (SIGHUP,
/// as Mosquitto does, so that logrotate can move the file away). Does
/// nothing when the log does not go to a file.
pub fn reopen() {
    REOPEN.store(true, Ordering::Relaxed);
}

impl Logger {
    fn new(pretty: bool, capacity: usize) -> (Logger, Queue) {
        let (queue, lines) = sync_channel(capacity);
        let lost = Arc::new(AtomicU64::new(0));
        (Logger { pretty, timestamp: false, queue, lost: lost.clone() }, Queue { pretty, lines, lost, reopen: None })
    }

    /// Formats the line and queues it, or counts it as lost if the queue is full.
    fn queue_line(&self, record: &Record<'_>) {
        let mut line = format_line(self.pretty, record.level(), record.target(), record.args());
        if self.timestamp {
            let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            line.insert_str(0, &format!("{seconds}: "));
        }
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => drop(self.lost.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.queue_line(record);
        }
    }

    /// Waits (bounded) until the writer thread has written every line
    /// queued so far: for the last lines before the process exits.
    fn flush(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let (done, written) = sync_channel(1);
        let mut message = Message::Flush(done);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Queue {
    /// Writes queued lines to `out` until every sender is gone, flushing
    /// whenever the queue runs empty, and reports lost lines when it has
    /// caught up. Write errors (a closed stdout) lose the lines, nothing more.
    fn write_to<'a>(self, out: impl Write + Send + 'a) {
        let mut out: std::io::BufWriter<Box<dyn Write + Send + 'a>> = std::io::BufWriter::new(Box::new(out));
        while let Ok(first) = self.lines.recv() {
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Line(line) => {
                        // Checked per line: a reopen asked for mid-batch
                        // applies to the lines that follow it.
                        self.reopen_if_asked(&mut out);
                        drop(out.write_all(line.as_bytes()))
                    }
                    Message::Flush(done) => {
                        self.report_lost(&mut out);
                        let _ = out.flush();
                        let _ = done.try_send(());
                    }
                }
                next = self.lines.try_recv().ok();
            }
            self.report_lost(&mut out);
            let _ = out.flush();
        }
    }

    /// Opens the log file again if [`reopen`] asked; if it cannot be
    /// opened, the old one stays, with a line saying why.
    fn reopen_if_asked<'a>(&self, out: &mut std::io::BufWriter<Box<dyn Write + Send + 'a>>) {
        let Some(path) = &self.reopen else { return };
        if !REOPEN.swap(false, Ordering::Relaxed) {
            return;
        }
        let _ = out.flush();
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => *out = std::io::BufWriter::new(Box::new(file)),
            Err(e) => {
                let message =
                    format_args!("cannot reopen log file {}: {e}; still writing to the old one", path.display());
                let _ = out.write_all(format_line(self.pretty, Level::Error, module_path!(), &message).as_bytes());
            }
        }
    }

    fn report_lost(&self, out: &mut impl Write) {
        let lost = self.lost.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let message = format_args!("{lost} log line(s) lost: the log output did not keep up");
            let _ = out.write_all(format_line(self.pretty, Level::Warn, module_path!(), &message).as_bytes());
        }
    }
}

fn format_line(pretty: bool, level: Level, target: &str, message: &dyn fmt::Display) -> String {
    match pretty {
        true => pretty_line(level, target, message),
        false => ndjson(level, message),
    }
}

/// femme's pretty format: the target in bold, coloured by level, then the message.
fn pretty_line(level: Level, target: &str, message: &dyn fmt::Display) -> String {
    let color = match level {
        Level::Error => "\x1b[31m",
        Level::Warn => "\x1b[33m",
        _ => "\x1b[32m",
    };
    format!("{color}\x1b[1m{target}\x1b[0m {message}\n")
}

/// femme's ndjson format: `{"level":30,"time":<ms>,"msg":"..."}`.
fn ndjson(level: Level, message: &dyn fmt::Display) -> String {
    let level = match level {
        Level::Trace => 10,
        Level::Debug => 20,
        Level::Info => 30,
        Level::Warn => 40,
        Level::Error => 50,
    };
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut line = format!("{{\"level\":{level},\"time\":{time},\"msg\":\"");
    for c in message.to_string().chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c if c < ' ' => drop(write!(line, "\\u{:04x}", c as u32)),
            c => line.push(c),
        }
    }
    line.push_str("\"}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_are_escaped_json() {
        let line = ndjson(Level::Warn, &format_args!("client \"a\\b\"\n{}", '\u{1}'));
        assert!(line.starts_with("{\"level\":40,\"time\":"), "{line}");
        assert!(line.ends_with("\"msg\":\"client \\\"a\\\\b\\\"\\n\\u0001\"}\n"), "{line}");
    }

    #[test]
    fn pretty_lines_colour_the_target_by_level() {
        let line = pretty_line(Level::Warn, "midge::connection", &"refused");
        assert_eq!(line, "\x1b[33m\x1b[1mmidge::connection\x1b[0m refused\n");
    }

    /// At most `lines` per window, the rest counted; the count is reported
    /// once, by the next line after the window or by `take_suppressed`.
    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let limit = RateLimit::with_limit("test", "midge", Level::Info, 3, Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let verdicts: Vec<Verdict> = (0..6).map(|i| limit.check(at(i * 100))).collect();
        use Verdict::{Log, Suppress};
        assert_eq!(
            verdicts,
            [
                Log { suppressed: 0 },
                Log { suppressed: 0 },
                Log { suppressed: 0 },
                Suppress { first: true },
                Suppress { first: false },
                Suppress { first: false },
            ]
        );
        assert_eq!(limit.take_suppressed(at(999), false), 0, "the window has not ended");
        assert_eq!(limit.check(at(1000)), Log { suppressed: 3 });
        assert_eq!(limit.take_suppressed(at(5000), false), 0, "reported once");
        // A new window, reported by take_suppressed once it has ended.
        for ms in [1001, 1002, 1003, 1500] {
            limit.check(at(ms));
        }
        assert_eq!(limit.take_suppressed(at(1999), false), 0);
        assert_eq!(limit.take_suppressed(at(2000), false), 2);
        assert_eq!(limit.check(at(2100)), Log { suppressed: 0 });
        // Forced (at shutdown): at once, mid-window.
        for ms in [2101, 2102, 2103] {
            limit.check(at(ms));
        }
        assert_eq!(limit.take_suppressed(at(2200), true), 1);
        assert_eq!(limit.check(at(2300)), Suppress { first: true });
    }

    /// A full queue loses lines instead of blocking the caller; the writer
    /// reports how many once it has caught up.
    #[test]
    fn a_full_queue_counts_lost_lines_without_blocking() {
        let (logger, queue) = Logger::new(false, 2);
        for i in 0..5 {
            let args = format_args!("line {i}");
            logger.queue_line(&Record::builder().args(args).level(Level::Error).target("midge").build());
        }
        drop(logger);
        let mut out = Vec::new();
        queue.write_to(&mut out);
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains("\"msg\":\"line 0\"") && lines[1].contains("\"msg\":\"line 1\""), "{out}");
        assert!(lines[2].contains("\"level\":40") && lines[2].contains("3 log line(s) lost"), "{out}");
    }

    /// After [`reopen`], lines go to a new file at the log file's path; the
    /// lines before it stay in the old one (moved away, as logrotate does).
    #[test]
    fn reopen_moves_to_a_new_file() {
        let dir = std::env::temp_dir().join(format!("midge-log-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, moved) = (dir.join("midge.log"), dir.join("midge.log.1"));
        let (logger, mut queue) = Logger::new(false, 8);
        queue.reopen = Some(path.clone());
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let writer = std::thread::spawn(move || queue.write_to(file));
        let line = |text: &str| {
            logger.queue_line(&Record::builder().args(format_args!("{text}")).level(Level::Info).target("m").build());
            logger.flush();
        };
        line("before");
        std::fs::rename(&path, &moved).unwrap();
        reopen();
        line("after");
        drop(logger);
        writer.join().unwrap();
        let (old, new) = (std::fs::read_to_string(&moved).unwrap(), std::fs::read_to_string(&path).unwrap());
        assert!(old.contains("before") && !old.contains("after"), "{old}");
        assert!(new.contains("after") && !new.contains("before"), "{new}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
