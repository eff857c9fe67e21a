//! The `midge` binary: arguments → configuration → runtime → broker, until
//! SIGINT or SIGTERM (SIGHUP reloads the password and ACL files); or the
//! `midge passwd` subcommand.

use async_signal::{Signal, Signals};
use futures::StreamExt;
use midge::cli::{Args, Command, Settings};
use midge::{Broker, Runtime, RuntimeKind, Server};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Args = argh::from_env();
    if let Some(Command::Passwd(passwd)) = args.command.take() {
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
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("midge: {message}");
            return ExitCode::from(2);
        }
    };
    midge::logging::init(settings.log_level);
    log::info!(
        "midge {} starting on runtime {} with {} threads",
        env!("CARGO_PKG_VERSION"),
        settings.runtime,
        settings.threads
    );
    let code = match run(settings) {
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

/// Opens the store, then blocks on the broker with the chosen runtime adapter.
fn run(settings: Settings) -> std::io::Result<()> {
    let Settings { config, runtime, threads, .. } = settings;
    let broker = Broker::open(config).map_err(std::io::Error::other)?;
    memory::start();
    match runtime {
        #[cfg(feature = "smol")]
        RuntimeKind::Smol => midge::Smol::block_on(threads, |rt| serve(rt, broker)),
        #[cfg(feature = "async-std")]
        RuntimeKind::AsyncStd => {
            midge::AsyncStd::init(threads);
            midge::AsyncStd::block_on(serve(midge::AsyncStd, broker))
        }
        #[allow(unreachable_patterns)]
        other => unreachable!("runtime {other} is refused when arguments are parsed"),
    }
}

/// Serves until SIGINT or SIGTERM, then shuts down cleanly; SIGHUP
/// re-reads the password and ACL files (a file that fails to parse keeps the
/// old one in force).
async fn serve<R: Runtime>(rt: R, broker: Broker) -> std::io::Result<()> {
    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])?;
    let server = Server::start(rt, broker).await?;
    while let Some(signal) = signals.next().await {
        match signal? {
            Signal::Hup => match server.reload() {
                Ok(()) => log::info!("received SIGHUP: reloaded password, ACL and TLS files"),
                Err(e) => log::error!("received SIGHUP: reload failed, keeping the files in force: {e}"),
            },
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
