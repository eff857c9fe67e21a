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
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("midge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store, then blocks on the broker with the chosen runtime adapter.
fn run(settings: Settings) -> std::io::Result<()> {
    let Settings { config, runtime, threads, .. } = settings;
    let broker = Broker::open(config).map_err(std::io::Error::other)?;
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
