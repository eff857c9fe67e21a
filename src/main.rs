//! The `midge` binary: arguments → configuration → runtime → broker, until
//! SIGINT or SIGTERM.

use async_signal::{Signal, Signals};
use futures::StreamExt;
use midge::cli::{Args, Settings};
use midge::{Broker, Runtime, RuntimeKind, Server};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("midge: {message}");
            return ExitCode::from(2);
        }
    };
    femme::with_level(settings.log_level);
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

/// Serves until SIGINT or SIGTERM, then shuts down cleanly.
async fn serve<R: Runtime>(rt: R, broker: Broker) -> std::io::Result<()> {
    let mut signals = Signals::new([Signal::Term, Signal::Int])?;
    let server = Server::start(rt, broker).await?;
    if let Some(signal) = signals.next().await {
        log::info!("received {:?}, shutting down", signal?);
    }
    server.shutdown().await;
    Ok(())
}
