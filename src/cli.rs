//! Command-line arguments (argh) and their validation into a [`Config`].

use crate::auth::PasswordFile;
use crate::codec::MAX_REMAINING_LENGTH;
use crate::config::{Bridge, BridgeDirection, Config, Listener, StartType};
use crate::config_file::{self, ConfigError, FileSettings};
use crate::logging::Destination;
use crate::mosquitto_conf;
use crate::packet::Protocol;
use crate::runtime::RuntimeKind;
use argh::FromArgs;
use log::LevelFilter;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn positive(flag: &str, n: usize) -> Result<usize, String> {
    match n {
        0 => Err(format!("{flag} 0: must be at least 1")),
        n => Ok(n),
    }
}

/// midge: an MQTT 5.0, 3.1.1 and 3.1 broker on async-std or smol.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// a configuration file: a .toml file is midge's TOML (see examples/midge.toml), any other is read as Mosquitto's mosquitto.conf
    #[argh(option, short = 'c')]
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
    /// serve GET /metrics (Prometheus) and GET /healthz over HTTP on this address (default: off)
    #[argh(option)]
    pub http_listener: Option<SocketAddr>,
    /// join a cluster through this Redis server, redis://HOST:PORT (with --node-id; needs the cluster feature)
    #[argh(option)]
    pub cluster_redis: Option<String>,
    /// this node's name in the cluster (with --cluster-redis)
    #[argh(option)]
    pub node_id: Option<String>,
    /// seconds a cluster node counts as alive without renewing its lease in Redis (default 10)
    #[argh(option)]
    pub cluster_lease: Option<u64>,
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
    /// Print what midge will do with a configuration file.
    CheckConfig(CheckConfig),
}

/// Print what midge will do with a configuration file (midge's TOML or a
/// mosquitto.conf): listeners, authentication, limits, persistence and the
/// options it ignores. Exits non-zero if the file cannot be used.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check-config")]
pub struct CheckConfig {
    /// the configuration file
    #[argh(positional)]
    pub file: PathBuf,
}

/// Reads a configuration file: `.toml` is midge's TOML, anything else
/// Mosquitto's `mosquitto.conf` format.
pub fn load_file(path: &Path) -> Result<FileSettings, ConfigError> {
    match path.extension().is_some_and(|e| e == "toml") {
        true => config_file::load(path),
        false => mosquitto_conf::load(path),
    }
}

/// What `midge check-config` found in a usable file.
#[derive(Debug)]
pub struct Checked {
    /// The report to print.
    pub report: String,
    /// The `user` the file names, for the binary to look up (an unknown
    /// user makes the file unusable).
    pub user: Option<String>,
}

/// Runs `midge check-config`: the report, or why the file cannot be used.
/// Beyond parsing, the password and ACL files are read (as the broker
/// will) and the TLS certificates loaded.
pub fn check_config(args: &CheckConfig) -> Result<Checked, String> {
    use std::fmt::Write as _;
    let settings = load_file(&args.file).map_err(|e| e.to_string())?;
    let c = &settings.config;
    crate::security::Security::load(c)?;
    for l in &c.listeners {
        if let Some(files) = &l.tls {
            crate::tls::TlsAcceptor::new(files).map_err(|e| format!("listener {}: {e}", l.bind))?;
        }
    }
    let mut out = format!("{}: usable\n", args.file.display());
    let _ = writeln!(out, "listeners:");
    for l in &c.listeners {
        let protocol = if l.websockets.is_some() { "MQTT over WebSockets" } else { "MQTT" };
        let tls = match &l.tls {
            None => "no TLS".to_owned(),
            Some(t) => format!(
                "TLS (certfile {}, client certificates {}{})",
                t.certfile.display(),
                if t.require_certificate { "required" } else { "not required" },
                if t.use_identity_as_username { ", Common Name as user name" } else { "" }
            ),
        };
        let limit = l.max_connections.map_or("no connection limit".to_owned(), |n| format!("at most {n} connections"));
        let _ = writeln!(out, "  {} {protocol}, {tls}, {limit}", l.bind);
    }
    let shown = |p: &Option<PathBuf>| p.as_ref().map_or("none".to_owned(), |p| p.display().to_string());
    let anonymous = |allow: Option<bool>, passwords: &Option<PathBuf>| match allow.unwrap_or(passwords.is_none()) {
        true => "allowed",
        false => "refused",
    };
    match c.listener_security.is_empty() {
        true => {
            let _ = writeln!(out, "auth:");
            let _ = writeln!(out, "  anonymous clients: {}", anonymous(c.allow_anonymous, &c.password_file));
            let _ = writeln!(out, "  password_file: {}", shown(&c.password_file));
        }
        false => {
            let _ = writeln!(out, "auth (per_listener_settings):");
            for (l, own) in c.listeners.iter().zip(&c.listener_security) {
                let allowed = anonymous(own.allow_anonymous, &own.password_file);
                let (passwords, acl) = (shown(&own.password_file), shown(&own.acl_file));
                let _ = writeln!(
                    out,
                    "  {}: anonymous clients {allowed}, password_file {passwords}, acl_file {acl}",
                    l.bind
                );
            }
        }
    }
    if c.listener_security.is_empty() {
        let _ = writeln!(out, "  acl_file: {}", shown(&c.acl_file));
    }
    let unlimited = |n: Option<usize>| n.map_or("no limit".to_owned(), |n| n.to_string());
    let _ = writeln!(out, "limits:");
    let _ = writeln!(out, "  max_connections (all listeners): {}", unlimited(c.max_connections));
    let _ = writeln!(out, "  max_packet_size: {}", c.max_packet_size);
    let _ = writeln!(out, "  max_inflight_messages: {}", c.max_inflight);
    let _ = writeln!(out, "  max_queued_messages: {}", unlimited(Some(c.max_queued).filter(|n| *n != usize::MAX)));
    let _ = writeln!(out, "  max_queued_bytes: {}", unlimited(Some(c.max_queued_bytes).filter(|n| *n != 0)));
    let _ = writeln!(out, "  max_keepalive: {}", c.max_keepalive.map_or("no limit".to_owned(), |n| n.to_string()));
    let _ = writeln!(out, "  message_size_limit: {}", unlimited(c.message_size_limit));
    let _ = writeln!(out, "  retain_available: {}", c.retain_available);
    let _ = writeln!(out, "  sys_interval: {}s", c.sys_interval.as_secs());
    match &c.data_dir {
        Some(dir) => {
            let file = dir.join(crate::store::FILE_NAME);
            let log = dir.join("wal-*.log");
            let shown = format!("{} and {}", file.display(), log.display());
            let _ = writeln!(out, "persistence: on, in {shown} (never mosquitto.db)");
        }
        None => drop(writeln!(out, "persistence: off (in memory)")),
    }
    if let Some(cluster) = &c.cluster {
        let _ = writeln!(out, "cluster: node {} through {}", cluster.node_id, cluster.redis);
    }
    if let Some(addr) = c.http_listener {
        let _ = writeln!(out, "http_listener: {addr}");
    }
    if !c.bridges.is_empty() {
        let _ = writeln!(out, "bridges:");
        for b in &c.bridges {
            let _ = writeln!(out, "  {}", describe_bridge(b));
            for t in &b.topics {
                let word = |s: &str| if s.is_empty() { "\"\"".to_owned() } else { s.to_owned() };
                let direction = match t.direction {
                    BridgeDirection::In => "in",
                    BridgeDirection::Out => "out",
                    BridgeDirection::Both => "both",
                };
                let (pattern, local, remote) = (word(&t.pattern), word(&t.local_prefix), word(&t.remote_prefix));
                let _ = writeln!(out, "    topic {pattern} {direction} {} {local} {remote}", t.qos as u8);
            }
        }
    }
    if let Some(user) = &settings.user {
        let _ = writeln!(out, "user: {user} (after binding, when started as root)");
    }
    if let Some(pid_file) = &settings.pid_file {
        let _ = writeln!(out, "pid_file: {}", pid_file.display());
    }
    let _ = writeln!(out, "log: {}", describe_log(&settings));
    match settings.ignored.is_empty() {
        true => drop(writeln!(out, "ignored: nothing")),
        false => {
            let _ = writeln!(out, "ignored (not supported by midge):");
            for ignored in &settings.ignored {
                let _ = writeln!(out, "  {ignored}: {}", ignored.why);
            }
        }
    }
    for note in &settings.notes {
        let _ = writeln!(out, "note: {note}");
    }
    Ok(Checked { report: out, user: settings.user })
}

/// One line on a bridge for `check-config`: where it connects and how (never
/// its password).
fn describe_bridge(b: &Bridge) -> String {
    let addresses: Vec<String> = b
        .addresses
        .iter()
        .map(|(host, port)| match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        })
        .collect();
    let protocol = match b.protocol {
        Protocol::V31 => "MQTT 3.1",
        Protocol::V311 => "MQTT 3.1.1",
        Protocol::V5 => "MQTT 5.0",
    };
    let tls = match &b.tls {
        None => "no TLS".to_owned(),
        Some(t) => {
            let mut parts = Vec::new();
            parts.extend(t.cafile.as_ref().map(|f| format!("bridge_cafile {}", f.display())));
            parts.extend(t.capath.as_ref().map(|d| format!("bridge_capath {}", d.display())));
            parts.extend(t.certfile.as_ref().map(|f| format!("client certificate {}", f.display())));
            if t.insecure {
                parts.push("host name not checked".to_owned());
            }
            format!("TLS ({})", parts.join(", "))
        }
    };
    let start = match b.start_type {
        StartType::Automatic => "automatic".to_owned(),
        StartType::Lazy => format!("lazy (threshold {}, idle_timeout {}s)", b.threshold, b.idle_timeout.as_secs()),
        StartType::Once => "once".to_owned(),
    };
    let user = b.remote_username.as_ref().map_or("no user name".to_owned(), |u| format!("user {u}"));
    let unlimited = |n: usize, none: usize| if n == none { "no limit".to_owned() } else { n.to_string() };
    let mut queue = String::new();
    if let Some(n) = b.max_queued {
        queue += &format!(", max_queued_messages {}", unlimited(n, usize::MAX));
    }
    if let Some(n) = b.max_queued_bytes {
        queue += &format!(", max_queued_bytes {}", unlimited(n, 0));
    }
    format!(
        "{}: {}{}, {protocol}, {tls}, {user}, start_type {start}, cleansession {}{queue}",
        b.name,
        addresses.join(" "),
        if b.round_robin { " (round_robin)" } else { "" },
        b.clean_session
    )
}

fn describe_log(settings: &FileSettings) -> String {
    let dest = match settings.log_dest.as_ref().unwrap_or(&default_destination(settings)) {
        Destination::Stdout => "stdout".to_owned(),
        Destination::Stderr => "stderr".to_owned(),
        Destination::File(p) => format!("file {}", p.display()),
        Destination::None => "none".to_owned(),
    };
    format!("{dest}, level {}", settings.log_level.unwrap_or(LevelFilter::Info))
}

/// Where the log goes when the file does not say: Mosquitto's stderr for a
/// mosquitto.conf, midge's stdout otherwise.
fn default_destination(settings: &FileSettings) -> Destination {
    match settings.mosquitto {
        true => Destination::Stderr,
        false => Destination::Stdout,
    }
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
    /// Where the log goes, and whether lines carry a timestamp.
    pub log: crate::logging::Options,
    /// A file to write the process id to at start (removed at exit).
    pub pid_file: Option<PathBuf>,
    /// The user to become once the listeners are bound, when run as root.
    pub user: Option<String>,
    /// Lines to log at start: warnings (options ignored) and notes.
    pub warnings: Vec<String>,
    /// Notes on options that need nothing from midge.
    pub notes: Vec<String>,
}

impl Args {
    /// Validates the arguments; the error is a message for the user.
    /// The configuration file (if any) first, then the flags given on top.
    pub fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => load_file(path).map_err(|e| e.to_string())?,
            None => FileSettings::new(Config::default()),
        };
        let destination = file.log_dest.clone().unwrap_or_else(|| default_destination(&file));
        let FileSettings {
            mut config, log_level: file_log_level, log_timestamp, pid_file, user, ignored, notes, ..
        } = file;
        // A bridge whose TLS files cannot be used would not run: refuse now.
        for bridge in &config.bridges {
            if let Some(tls) = &bridge.tls {
                crate::tls::client_config(tls).map_err(|e| format!("bridge {}: {e}", bridge.name))?;
            }
        }
        let mut warnings = Vec::new();
        if !ignored.is_empty() {
            let list: Vec<String> = ignored.iter().map(ToString::to_string).collect();
            warnings.push(format!("options not supported by midge, ignored: {}", list.join(", ")));
        }
        if !self.bind.is_empty() || !self.bind_ws.is_empty() {
            if !config.listener_security.is_empty() {
                return Err("--bind cannot replace the listeners of a file with per_listener_settings true: \
                            their security settings belong to them"
                    .into());
            }
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
        if let Some(addr) = self.http_listener {
            config.http_listener = Some(addr);
        }
        if self.cluster_redis.is_some() || self.node_id.is_some() || self.cluster_lease.is_some() {
            let file = config.cluster.take();
            let redis = self.cluster_redis.or_else(|| file.as_ref().map(|c| c.redis.clone()));
            let lease = self.cluster_lease.or_else(|| file.as_ref().map(|c| c.lease.as_secs()));
            let node_id = self.node_id.or_else(|| file.map(|c| c.node_id));
            config.cluster = crate::config::Cluster::from_parts(redis, node_id, lease)?;
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
        let log = crate::logging::Options { level: log_level, destination, timestamp: log_timestamp.unwrap_or(false) };
        Ok(Settings { config, runtime, threads, log_level, log, pid_file, user, warnings, notes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        Args::from_args(&["midge"], args).map_err(|e| e.output)?.settings()
    }

    #[test]
    fn http_listener_is_off_unless_given() {
        assert_eq!(settings(&[]).unwrap().config.http_listener, None);
        let s = settings(&["--http-listener", "127.0.0.1:9090", "--in-memory"]).unwrap();
        assert_eq!(s.config.http_listener, Some("127.0.0.1:9090".parse().unwrap()));
        let e = settings(&["--http-listener", "9090"]).err().unwrap();
        assert!(e.contains("--http-listener"), "{e}");
    }

    #[test]
    fn a_file_with_a_bridge_is_checked_and_its_tls_files_must_load() {
        let dir = std::env::temp_dir().join(format!("midge-cli-bridge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bridge.conf");
        std::fs::write(
            &file,
            "connection cloud\naddress broker.example.com:8883 [::1]\ntopic sensors/# out 1 \"\" site/\n\
             topic \"\" in 0 l/one r/one\nremote_username u\nremote_password secret\nbridge_cafile /ca.pem\nmax_queued_messages 0\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let e = settings(&["-c", path]).err().unwrap();
        assert!(e.starts_with("bridge cloud: bridge_cafile /ca.pem: "), "{e}");
        let report = check_config(&CheckConfig { file: file.clone() }).unwrap().report;
        assert!(report.contains("bridges:\n"), "{report}");
        let expected = "  cloud: broker.example.com:8883 [::1]:1883, MQTT 3.1.1, TLS (bridge_cafile /ca.pem), user u, \
                        start_type automatic, cleansession false, max_queued_messages no limit\n    topic sensors/# out 1 \"\" site/\n    \
                        topic \"\" in 0 l/one r/one\n";
        assert!(report.contains(expected), "{report}");
        assert!(!report.contains("secret"), "{report}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
