//! Command-line arguments (argh) and their validation into a [`Config`].

use crate::auth::PasswordFile;
use crate::codec::MAX_REMAINING_LENGTH;
use crate::config::{Config, Listener};
use crate::config_file;
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
    /// a TOML configuration file with mosquitto.conf key names (see examples/midge.toml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// address to listen on (repeatable; default 127.0.0.1:1883)
    #[argh(option)]
    pub bind: Vec<SocketAddr>,
    /// address of a plain MQTT over WebSockets listener, path /mqtt (repeatable; replaces the default listener as --bind does)
    #[argh(option)]
    pub bind_ws: Vec<SocketAddr>,
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
    /// payload bytes queued per client; 0 for no limit (default 67108864)
    #[argh(option)]
    pub max_queued_bytes: Option<usize>,
    /// deepest topic name or filter accepted, in levels (default 128)
    #[argh(option)]
    pub max_topic_levels: Option<usize>,
    /// seconds a connected subscriber with a full queue may make no progress before its publishers stop waiting for it (default 5)
    #[argh(option)]
    pub slow_consumer_timeout: Option<u64>,
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
    /// a subcommand instead of running the broker
    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    /// Add or update a user in a password file.
    Passwd(Passwd),
}

/// Add or update a user in a mosquitto_passwd file; the password is read
/// from the terminal (asked twice) or from standard input, never from the
/// command line.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "passwd")]
pub struct Passwd {
    /// the password file (created if missing)
    #[argh(positional)]
    pub file: PathBuf,
    /// the user name
    #[argh(positional)]
    pub user: String,
}

/// Runs `midge passwd`: returns what to tell the user.
pub fn passwd(args: &Passwd) -> Result<String, String> {
    let mut file = match std::fs::read_to_string(&args.file) {
        Ok(text) => PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", args.file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PasswordFile::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", args.file.display())),
    };
    let password = read_password()?;
    let existed = file.contains(&args.user);
    file.set(&args.user, password.as_bytes()).map_err(|e| e.to_string())?;
    std::fs::write(&args.file, file.to_file_string())
        .map_err(|e| format!("cannot write {}: {e}", args.file.display()))?;
    let verb = if existed { "updated" } else { "added" };
    Ok(format!("{verb} user {} in {}", args.user, args.file.display()))
}

/// Reads a password: twice, without echo, on a terminal; one line otherwise.
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let read_line = || {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
        Ok::<_, String>(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    if !stdin.is_terminal() {
        return read_line().and_then(|p| if p.is_empty() { Err("empty password".into()) } else { Ok(p) });
    }
    let echo = |on: bool| {
        let _ = std::process::Command::new("stty").arg(if on { "echo" } else { "-echo" }).status();
    };
    let ask = |prompt: &str| {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        echo(false);
        let line = read_line();
        echo(true);
        eprintln!();
        line
    };
    let first = ask("Password: ")?;
    let again = ask("Reenter password: ")?;
    match (first.is_empty(), first == again) {
        (true, _) => Err("empty password".into()),
        (false, false) => Err("passwords do not match".into()),
        (false, true) => Ok(first),
    }
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
    /// The configuration file (if any) first, then the flags given on top.
    pub fn settings(self) -> Result<Settings, String> {
        let (mut config, file_log_level) = match &self.config {
            Some(path) => {
                let file = config_file::load(path).map_err(|e| e.to_string())?;
                (file.config, file.log_level)
            }
            None => (Config::default(), None),
        };
        if !self.bind.is_empty() || !self.bind_ws.is_empty() {
            let ws = self.bind_ws.into_iter().map(Listener::websockets);
            config.listeners = self.bind.into_iter().map(Listener::tcp).chain(ws).collect();
        }
        if let Some(n) = self.max_packet_size {
            config.max_packet_size = match n {
                n if (2..=MAX_REMAINING_LENGTH + 5).contains(&n) => n,
                n => {
                    return Err(format!("--max-packet-size {n}: must be between 2 and {}", MAX_REMAINING_LENGTH + 5));
                }
            };
        }
        if let Some(n) = self.max_inflight {
            config.max_inflight = positive("--max-inflight", n)?;
        }
        if let Some(n) = self.max_queued_messages {
            config.max_queued = n;
        }
        if let Some(n) = self.max_queued_bytes {
            config.max_queued_bytes = n;
        }
        if let Some(n) = self.max_topic_levels {
            config.max_topic_levels = positive("--max-topic-levels", n)?;
        }
        if let Some(seconds) = self.slow_consumer_timeout {
            config.slow_consumer_timeout = match seconds {
                0 => return Err("--slow-consumer-timeout 0: must be at least 1 second".into()),
                n => Duration::from_secs(n),
            };
        }
        config.queue_qos0 |= self.queue_qos0_messages;
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
        match self.session_expiry {
            Some(0) => return Err("--session-expiry 0: must be at least 1 second".into()),
            Some(seconds) => config.session_expiry = Some(Duration::from_secs(seconds)),
            None => {}
        }
        let threads = match self.threads {
            Some(n) => positive("--threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let log_level = match (self.log_level, self.verbose) {
            (Some(level), _) => level,
            (None, true) => LevelFilter::Debug,
            (None, false) => file_log_level.unwrap_or(LevelFilter::Info),
        };
        let runtime = self.runtime.unwrap_or_else(RuntimeKind::default_compiled);
        Ok(Settings { config, runtime, threads, log_level })
    }
}
