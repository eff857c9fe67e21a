//! Command-line arguments (argh) and their validation into a [`Config`].

use crate::codec::MAX_REMAINING_LENGTH;
use crate::config::{Config, DEFAULT_MAX_PACKET_SIZE, Listener};
use crate::runtime::RuntimeKind;
use argh::FromArgs;
use log::LevelFilter;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn positive(flag: &str, n: usize) -> Result<usize, String> {
    match n {
        0 => Err(format!("{flag} 0: must be at least 1")),
        n => Ok(n),
    }
}

/// midge: an MQTT 3.1.1 broker on async-std or smol.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// address to listen on (repeatable; default 127.0.0.1:1883)
    #[argh(option)]
    pub bind: Vec<SocketAddr>,
    /// runtime: smol or async-std (default: smol when compiled in)
    #[argh(option)]
    pub runtime: Option<RuntimeKind>,
    /// executor threads (default: number of cores)
    #[argh(option)]
    pub threads: Option<usize>,
    /// largest packet accepted, in bytes (default 1048576)
    #[argh(option)]
    pub max_packet_size: Option<usize>,
    /// outbound QoS 1/2 messages in flight per client (default 20)
    #[argh(option)]
    pub max_inflight: Option<usize>,
    /// messages queued per client behind the inflight window (default 1000)
    #[argh(option)]
    pub max_queued_messages: Option<usize>,
    /// also queue QoS 0 messages for offline persistent sessions
    #[argh(switch)]
    pub queue_qos0_messages: bool,
    /// seconds between $SYS updates; 0 turns them off (default 10)
    #[argh(option)]
    pub sys_interval: Option<u64>,
    /// directory of the durable store (default ./midge-data)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// keep everything in memory: nothing survives a restart
    #[argh(switch)]
    pub in_memory: bool,
    /// if the store is damaged, move its files aside (kept) and start empty
    #[argh(switch)]
    pub recover_store: bool,
    /// remove persistent sessions whose client has been away this many seconds (default: never)
    #[argh(option)]
    pub session_expiry: Option<u64>,
    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option)]
    pub log_level: Option<LevelFilter>,
    /// log at debug level (same as --log-level debug)
    #[argh(switch, short = 'v')]
    pub verbose: bool,
}

/// What the binary runs: a broker configuration and how to run it.
#[derive(Debug)]
pub struct Settings {
    /// The broker configuration.
    pub config: Config,
    /// The runtime chosen.
    pub runtime: RuntimeKind,
    /// Executor threads.
    pub threads: usize,
    /// Log level.
    pub log_level: LevelFilter,
}

impl Args {
    /// Validates the arguments; the error is a message for the user.
    pub fn settings(self) -> Result<Settings, String> {
        let mut config = Config::default();
        if !self.bind.is_empty() {
            config.listeners = self.bind.into_iter().map(Listener::tcp).collect();
        }
        config.max_packet_size = match self.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET_SIZE) {
            n if (2..=MAX_REMAINING_LENGTH + 5).contains(&n) => n,
            n => {
                return Err(format!("--max-packet-size {n}: must be between 2 and {}", MAX_REMAINING_LENGTH + 5));
            }
        };
        if let Some(n) = self.max_inflight {
            config.max_inflight = positive("--max-inflight", n)?;
        }
        if let Some(n) = self.max_queued_messages {
            config.max_queued = n;
        }
        config.queue_qos0 = self.queue_qos0_messages;
        if let Some(seconds) = self.sys_interval {
            config.sys_interval = Duration::from_secs(seconds);
        }
        config.data_dir = match (self.in_memory, self.data_dir) {
            (true, Some(_)) => return Err("--in-memory and --data-dir exclude each other".into()),
            (true, None) => None,
            (false, Some(dir)) => Some(dir),
            (false, None) => config.data_dir,
        };
        config.recover_store = self.recover_store;
        config.session_expiry = match self.session_expiry {
            Some(0) => return Err("--session-expiry 0: must be at least 1 second".into()),
            seconds => seconds.map(Duration::from_secs),
        };
        let threads = match self.threads {
            Some(n) => positive("--threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let log_level = match (self.log_level, self.verbose) {
            (Some(level), _) => level,
            (None, true) => LevelFilter::Debug,
            (None, false) => LevelFilter::Info,
        };
        let runtime = self.runtime.unwrap_or_else(RuntimeKind::default_compiled);
        Ok(Settings { config, runtime, threads, log_level })
    }
}
