//! The `midge` binary: arguments → configuration → runtime → broker, until
//! SIGINT or SIGTERM (SIGHUP reloads the password and ACL files); or the
//! `midge passwd` and `midge check-config` subcommands.

use async_signal::{Signal, Signals};
use futures::StreamExt;
use midge::cli::{Args, Command, Settings};
use midge::{Broker, Runtime, RuntimeKind, Server};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Args = argh::from_env();
    match args.command.take() {
        Some(Command::Passwd(passwd)) => {
            return match midge::cli::passwd(&passwd) {
                Ok(message) => {
                    eprintln!("{message}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("midge passwd: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::CheckConfig(check)) => {
            let checked = midge::cli::check_config(&check).and_then(|checked| match &checked.user {
                Some(name) => privileges::lookup(name).map(|_| checked).map_err(|e| e.to_string()),
                None => Ok(checked),
            });
            return match checked {
                Ok(checked) => {
                    print!("{}", checked.report);
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("midge check-config: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("midge: {message}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = midge::logging::init_with(&settings.log) {
        eprintln!("midge: {e}");
        return ExitCode::FAILURE;
    }
    log::info!(
        "midge {} starting on runtime {} with {} threads",
        env!("CARGO_PKG_VERSION"),
        settings.runtime,
        settings.threads
    );
    for warning in &settings.warnings {
        log::warn!("{warning}");
    }
    for note in &settings.notes {
        log::info!("{note}");
    }
    let code = match start(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("midge: {e}");
            ExitCode::FAILURE
        }
    };
    // The log's writer thread may still hold the last lines.
    log::logger().flush();
    code
}

/// Checks the `user` to become, writes the pid file (removed again when
/// this returns), then runs the broker.
fn start(settings: Settings) -> std::io::Result<()> {
    let user = match &settings.user {
        Some(name) => Some(privileges::lookup(name)?),
        None => None,
    };
    let _pid_file = match &settings.pid_file {
        Some(path) => Some(PidFile::write(path)?),
        None => None,
    };
    run(settings, user)
}

/// A pid file, removed on drop.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> std::io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write pid_file {}: {e}", path.display())))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            log::warn!("cannot remove pid_file {}: {e}", self.0.display());
        }
    }
}

/// Opens the store, then blocks on the broker with the chosen runtime adapter.
fn run(settings: Settings, user: Option<privileges::User>) -> std::io::Result<()> {
    let Settings { config, runtime, threads, .. } = settings;
    let broker = Broker::open(config).map_err(std::io::Error::other)?;
    memory::start();
    match runtime {
        #[cfg(feature = "smol")]
        RuntimeKind::Smol => midge::Smol::block_on(threads, |rt| serve(rt, broker, user)),
        #[cfg(feature = "async-std")]
        RuntimeKind::AsyncStd => {
            midge::AsyncStd::init(threads);
            midge::AsyncStd::block_on(serve(midge::AsyncStd, broker, user))
        }
        #[allow(unreachable_patterns)]
        other => unreachable!("runtime {other} is refused when arguments are parsed"),
    }
}

/// Serves until SIGINT or SIGTERM, then shuts down cleanly; SIGHUP
/// re-reads the password and ACL files (a file that fails to parse keeps the
/// old one in force) and reopens the log file. Becomes `user` once the
/// listeners are bound.
async fn serve<R: Runtime>(rt: R, broker: Broker, user: Option<privileges::User>) -> std::io::Result<()> {
    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])?;
    let server = Server::start(rt, broker).await?;
    if let Some(user) = user
        && let Err(e) = privileges::become_user(&user)
    {
        server.shutdown().await;
        return Err(e);
    }
    while let Some(signal) = signals.next().await {
        match signal? {
            Signal::Hup => {
                // The log file (log_dest file) is reopened before this line.
                midge::logging::reopen();
                match server.reload() {
                    Ok(()) => log::info!("received SIGHUP: reloaded password, ACL and TLS files"),
                    Err(e) => log::error!("received SIGHUP: reload failed, keeping the files in force: {e}"),
                }
            }
            signal => {
                log::info!("received {signal:?}, shutting down");
                break;
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

/// Giving memory back to the OS after a burst (a connect storm, large
/// messages): midge frees its buffers, but glibc keeps freed memory in its
/// arenas, and after a large buffer is freed it raises its mmap threshold so
/// the next large buffers come from the heap and are never returned either.
/// The trim runs on a thread of its own: it walks and locks glibc's arenas,
/// which must not hold up an executor thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod memory {
    use std::time::Duration;

    /// How often freed memory is trimmed.
    const TRIM_EVERY: Duration = Duration::from_secs(5);
    /// Allocations at least this large are mmap'd, so freeing them returns
    /// them at once (glibc's initial value, kept fixed).
    const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

    pub fn start() {
        // SAFETY: mallopt and malloc_trim only tune and trim glibc's own
        // allocator; they take plain integers and touch no Rust memory.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if let Err(e) = std::thread::Builder::new().name("midge-trim".into()).spawn(trim) {
            log::warn!("cannot start the memory trim thread: {e}");
        }
    }

    fn trim() {
        loop {
            std::thread::sleep(TRIM_EVERY);
            // SAFETY: as in `start`.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod memory {
    pub fn start() {}
}

/// `user NAME`: when started as root, become that user (its primary group
/// and supplementary groups too) once the listeners are bound, as Mosquitto
/// does. Not root: nothing to do.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod privileges {
    use std::ffi::{CStr, CString};
    use std::io;

    /// A user found in the system's user database.
    pub struct User {
        name: CString,
        uid: libc::uid_t,
        gid: libc::gid_t,
    }

    /// Finds `name`; an unknown user is an error.
    pub fn lookup(name: &str) -> io::Result<User> {
        let c_name = CString::new(name).map_err(|_| io::Error::other(format!("user {name:?}: not a user name")))?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: passwd is plain data that getpwnam_r fills in; every
        // pointer passed is valid for the sizes given, and the strings it
        // points to live in `buf`, which outlives every use below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "user {name}: cannot look it up: {}",
                io::Error::from_raw_os_error(rc)
            )));
        }
        if found.is_null() {
            return Err(io::Error::other(format!("user {name}: no such user")));
        }
        // SAFETY: getpwnam_r succeeded, so pw_name points to a NUL-terminated string in `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_owned();
        Ok(User { name, uid: pwd.pw_uid, gid: pwd.pw_gid })
    }

    /// Drops root for `user`; does nothing unless running as root.
    pub fn become_user(user: &User) -> io::Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            log::info!("user {}: not running as root, nothing to change", user.name.to_string_lossy());
            return Ok(());
        }
        let fail = |what: &str| {
            let e = io::Error::last_os_error();
            io::Error::new(e.kind(), format!("cannot become user {}: {what}: {e}", user.name.to_string_lossy()))
        };
        // SAFETY: plain system calls on integers and a NUL-terminated name.
        // The group changes come first: after setuid they are no longer allowed.
        unsafe {
            if libc::setgid(user.gid) != 0 {
                return Err(fail("setgid"));
            }
            if libc::initgroups(user.name.as_ptr(), user.gid) != 0 {
                return Err(fail("initgroups"));
            }
            if libc::setuid(user.uid) != 0 {
                return Err(fail("setuid"));
            }
        }
        log::info!("now running as user {} (uid {}, gid {})", user.name.to_string_lossy(), user.uid, user.gid);
        Ok(())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod privileges {
    /// A user to become (not supported on this platform).
    pub struct User(String);

    pub fn lookup(name: &str) -> std::io::Result<User> {
        Ok(User(name.to_owned()))
    }

    pub fn become_user(user: &User) -> std::io::Result<()> {
        log::warn!("user {}: changing user is only supported on Linux (glibc); not changed", user.0);
        Ok(())
    }
}
