//! The configuration file (`midge --config midge.toml`): TOML whose key
//! names follow `mosquitto.conf` wherever Mosquitto has one, read into a
//! [`Config`]. `examples/midge.toml` documents every key.
//!
//! Values keep Mosquitto's meaning, sentinels included: `max_connections =
//! -1` is no limit, `max_packet_size = 0` the protocol maximum,
//! `max_inflight_messages = 0` 65535 and `max_queued_messages = 0` no limit;
//! `persistent_client_expiration` takes Mosquitto's durations (`2d`, `1w`).
//! Relative paths are relative to the file's directory. An unknown key or a
//! bad value is an error that names the key and its line.
//!
//! A `[[bridge]]` table is mosquitto.conf's `connection NAME` block: `name`,
//! then the block's keys under their Mosquitto names (`address` or
//! `addresses`, `remote_clientid`, `bridge_cafile`, ...), its `topic` lines
//! as `[[bridge.topic]]` tables (or inline tables in `topic = [...]`) of
//! `pattern`, `direction`, `qos`, `local_prefix` and `remote_prefix`, and
//! durations in seconds (`restart_timeout = 20` or `[5, 30]`). The checks
//! are Mosquitto's, shared with [`crate::mosquitto_conf`], but where
//! Mosquitto raises a too-small value to its minimum (a keepalive under 5
//! seconds), this file refuses it, as it does elsewhere.

use crate::codec::MAX_REMAINING_LENGTH;
use crate::config::{
    Bridge, BridgeDirection, BridgeTls, BridgeTopic, Config, Listener, StartType, TlsFiles, WebSockets,
};
use crate::logging::Destination;
use crate::packet::{Protocol, QoS};
use log::LevelFilter;
use serde::Deserialize;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, io};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Largest `max_packet_size`: the protocol's, fixed header included.
const PROTOCOL_MAX_PACKET_SIZE: usize = MAX_REMAINING_LENGTH + 5;

/// What a configuration file sets.
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// The broker configuration: the defaults, overridden by the file.
    pub config: Config,
    /// `log_level` (TOML) or what `log_type` lines add up to (mosquitto.conf).
    pub log_level: Option<LevelFilter>,
    /// `log_dest` (mosquitto.conf): where the log goes.
    pub log_dest: Option<Destination>,
    /// `log_timestamp` (mosquitto.conf): a time on every line.
    pub log_timestamp: Option<bool>,
    /// `pid_file` (mosquitto.conf): written at start, removed at exit.
    pub pid_file: Option<PathBuf>,
    /// `user` (mosquitto.conf): the user to become after binding, when started as root.
    pub user: Option<String>,
    /// `per_listener_settings true` was given: security is per listener
    /// ([`Config::listener_security`]).
    pub per_listener_settings: bool,
    /// Mosquitto options read but not acted on, for one warning at start.
    pub ignored: Vec<Ignored>,
    /// Options accepted that need nothing from midge, with why (logged at info).
    pub notes: Vec<String>,
    /// Read from a mosquitto.conf (Mosquitto's log defaults apply: stderr, timestamps).
    pub mosquitto: bool,
}

impl FileSettings {
    /// Settings with `config` and nothing else.
    pub fn new(config: Config) -> FileSettings {
        FileSettings {
            config,
            log_level: None,
            log_dest: None,
            log_timestamp: None,
            pid_file: None,
            user: None,
            per_listener_settings: false,
            ignored: Vec::new(),
            notes: Vec::new(),
            mosquitto: false,
        }
    }
}

/// A Mosquitto option midge read but does not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The key (with its first value where that is what is unsupported, e.g. `log_dest syslog`).
    pub key: String,
    /// The included file it is in; `None`: the main file.
    pub file: Option<PathBuf>,
    /// Its 1-based line.
    pub line: usize,
    /// Why it is ignored.
    pub why: String,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{} ({} line {})", self.key, file.display(), self.line),
            None => write!(f, "{} (line {})", self.key, self.line),
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Io(PathBuf, io::Error),
    /// The file is not TOML, has an unknown key, or a value is wrong.
    Invalid {
        /// The file, when known ([`load`] sets it, [`parse`] does not).
        file: Option<PathBuf>,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error is on, if it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io(..) => None,
            ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// Names `path` in an error that names no file yet.
    pub(crate) fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid { file: None, line, message } => {
                ConfigError::Invalid { file: Some(path.to_owned()), line, message }
            }
            e => e,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            ConfigError::Invalid { file, line, message } => {
                match (file, line) {
                    (Some(file), Some(line)) => write!(f, "{} line {line}: ", file.display())?,
                    (Some(file), None) => write!(f, "{}: ", file.display())?,
                    (None, Some(line)) => write!(f, "line {line}: ")?,
                    (None, None) => {}
                }
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io(_, e) => Some(e),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// The file's keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    allow_anonymous: Option<bool>,
    password_file: Option<Spanned<PathBuf>>,
    acl_file: Option<Spanned<PathBuf>>,
    persistence: Option<bool>,
    persistence_location: Option<Spanned<PathBuf>>,
    max_connections: Option<Spanned<i64>>,
    max_packet_size: Option<Spanned<u64>>,
    max_keepalive: Option<Spanned<u16>>,
    max_inflight_messages: Option<u16>,
    max_queued_messages: Option<u64>,
    max_queued_bytes: Option<u64>,
    max_topic_levels: Option<Spanned<u64>>,
    slow_consumer_timeout: Option<Spanned<u64>>,
    queue_qos0_messages: Option<bool>,
    sys_interval: Option<u64>,
    persistent_client_expiration: Option<Spanned<String>>,
    max_publish_rate: Option<Spanned<u32>>,
    retain_available: Option<bool>,
    max_topic_alias: Option<u16>,
    response_information: Option<String>,
    shared_subscription_strategy: Option<Spanned<String>>,
    message_size_limit: Option<Spanned<u64>>,
    log_level: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<u64>>,
    http_listener: Option<Spanned<String>>,
    cluster_redis: Option<String>,
    node_id: Option<String>,
    cluster_lease: Option<u64>,
    #[serde(default)]
    listener: Vec<ListenerTable>,
    #[serde(default)]
    bridge: Vec<Spanned<BridgeTable>>,
}

/// One `[[listener]]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTable {
    bind: Spanned<String>,
    max_connections: Option<Spanned<i64>>,
    certfile: Option<Spanned<PathBuf>>,
    keyfile: Option<Spanned<PathBuf>>,
    cafile: Option<Spanned<PathBuf>>,
    require_certificate: Option<Spanned<bool>>,
    use_identity_as_username: Option<Spanned<bool>>,
    protocol: Option<Spanned<String>>,
    websockets_path: Option<Spanned<String>>,
    websockets_trust_forwarded_for: Option<Spanned<bool>>,
}

/// One `[[bridge]]` table, as written: mosquitto.conf's `connection NAME`
/// block, its keys under the same names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeTable {
    name: Spanned<String>,
    address: Option<Spanned<String>>,
    addresses: Option<Spanned<Vec<String>>>,
    round_robin: Option<bool>,
    #[serde(default)]
    topic: Vec<TopicTable>,
    bridge_protocol_version: Option<Spanned<String>>,
    remote_clientid: Option<String>,
    local_clientid: Option<String>,
    remote_username: Option<String>,
    remote_password: Option<Spanned<String>>,
    cleansession: Option<bool>,
    keepalive_interval: Option<Spanned<u16>>,
    restart_timeout: Option<Spanned<RestartTimeout>>,
    start_type: Option<Spanned<String>>,
    threshold: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<u64>>,
    notifications: Option<bool>,
    notification_topic: Option<Spanned<String>>,
    try_private: Option<bool>,
    bridge_cafile: Option<Spanned<PathBuf>>,
    bridge_capath: Option<Spanned<PathBuf>>,
    bridge_certfile: Option<Spanned<PathBuf>>,
    bridge_keyfile: Option<Spanned<PathBuf>>,
    bridge_insecure: Option<Spanned<bool>>,
    max_queued_messages: Option<u64>,
    max_queued_bytes: Option<u64>,
}

/// One topic of a `[[bridge]]` (`[[bridge.topic]]`, or an inline table in
/// `topic = [...]`): mosquitto.conf's `topic` line, its words named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicTable {
    pattern: Spanned<String>,
    direction: Option<Spanned<String>>,
    qos: Option<Spanned<u64>>,
    local_prefix: Option<Spanned<String>>,
    remote_prefix: Option<Spanned<String>>,
}

/// Reads and parses the file at `path`; relative paths in it are relative to
/// its directory, and errors name it.
pub fn load(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse(&text, base_dir).map_err(|e| e.in_file(path))
}

/// Parses configuration text, starting from [`Config::default`]; relative
/// paths are resolved against `base_dir` (the file's directory).
pub fn parse(text: &str, base_dir: &Path) -> Result<FileSettings, ConfigError> {
    let at = Locator { text };
    let document = DeTable::parse(text).map_err(|e| at.syntax_error(e.span(), e.message()))?;
    let file = File::deserialize(toml::de::Deserializer::from(document.clone()))
        .map_err(|e| at.serde_error(document.get_ref(), e.span(), e.message()))?;
    let path = |key: &str, p: Spanned<PathBuf>| {
        let span = p.span();
        match p.into_inner() {
            p if p.as_os_str().is_empty() => Err(at.error(Some(span), format!("{key}: empty path"))),
            p if p.is_absolute() => Ok(p),
            p => Ok(base_dir.join(p)),
        }
    };
    let optional_path = |key: &str, p: Option<Spanned<PathBuf>>| p.map(|p| path(key, p)).transpose();

    let mut config = Config {
        allow_anonymous: file.allow_anonymous,
        password_file: optional_path("password_file", file.password_file)?,
        acl_file: optional_path("acl_file", file.acl_file)?,
        ..Config::default()
    };
    if let Some(location) = optional_path("persistence_location", file.persistence_location)? {
        config.data_dir = Some(location);
    }
    if file.persistence == Some(false) {
        config.data_dir = None;
    }
    if let Some(n) = file.max_connections {
        config.max_connections = at.check(n, |n| connection_limit("max_connections", n))?;
    }
    if let Some(size) = file.max_packet_size {
        config.max_packet_size = at.check(size, |n| packet_size("max_packet_size", n))?;
    }
    if let Some(seconds) = file.max_keepalive {
        config.max_keepalive = Some(at.check(seconds, |n| keepalive("max_keepalive", n))?);
    }
    if let Some(n) = file.max_inflight_messages {
        config.max_inflight = inflight(n);
    }
    if let Some(n) = file.max_queued_messages {
        config.max_queued = queued(n);
    }
    if let Some(n) = file.max_queued_bytes {
        config.max_queued_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(available) = file.retain_available {
        config.retain_available = available;
    }
    if let Some(n) = file.max_topic_alias {
        config.max_topic_alias = n;
    }
    if let Some(prefix) = file.response_information {
        config.response_information = Some(prefix);
    }
    if let Some(strategy) = file.shared_subscription_strategy {
        config.shared_subscription_strategy = at.check(strategy, |s: String| s.parse())?;
    }
    if let Some(n) = file.message_size_limit {
        config.message_size_limit = at.check(n, |n| message_size_limit("message_size_limit", n))?;
    }
    if let Some(levels) = file.max_topic_levels {
        config.max_topic_levels = match *levels.get_ref() {
            0 => return Err(at.error(Some(levels.span()), "max_topic_levels: must be at least 1".into())),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
    }
    if let Some(seconds) = file.slow_consumer_timeout {
        config.slow_consumer_timeout = match *seconds.get_ref() {
            0 => {
                let message = "slow_consumer_timeout: must be at least 1 second";
                return Err(at.error(Some(seconds.span()), message.into()));
            }
            n => Duration::from_secs(n),
        };
    }
    if let Some(queue) = file.queue_qos0_messages {
        config.queue_qos0 = queue;
    }
    if let Some(seconds) = file.sys_interval {
        config.sys_interval = Duration::from_secs(seconds);
    }
    if let Some(expiry) = file.persistent_client_expiration {
        let span = expiry.span();
        let expiry = expiry.into_inner();
        config.session_expiry =
            Some(client_expiration("persistent_client_expiration", &expiry).map_err(|m| at.error(Some(span), m))?);
    }
    if let Some(rate) = file.max_publish_rate {
        config.max_publish_rate = match *rate.get_ref() {
            0 => {
                let message = "max_publish_rate: must be at least 1; leave it out for no limit";
                return Err(at.error(Some(rate.span()), message.into()));
            }
            n => Some(n),
        };
    }
    if let Some(seconds) = file.connect_timeout {
        config.connect_timeout = match *seconds.get_ref() {
            0 => return Err(at.error(Some(seconds.span()), "connect_timeout: must be at least 1 second".into())),
            n => Duration::from_secs(n),
        };
    }
    if let Some(addr) = file.http_listener {
        let parsed = addr.get_ref().trim().parse().map_err(|_| {
            let message =
                format!("http_listener: {:?} is not an IP address and port like 127.0.0.1:9090", addr.get_ref());
            at.error(Some(addr.span()), message)
        })?;
        config.http_listener = Some(parsed);
    }
    config.cluster = crate::config::Cluster::from_parts(file.cluster_redis, file.node_id, file.cluster_lease)
        .map_err(|e| at.error(None, e))?;
    let log_level = match file.log_level {
        None => None,
        Some(level) => Some(log_level(level.get_ref()).ok_or_else(|| {
            let message = format!("log_level: {:?} is not one of error, warn, info, debug, trace", level.get_ref());
            at.error(Some(level.span()), message)
        })?),
    };
    if !file.listener.is_empty() {
        config.listeners = file.listener.into_iter().map(|l| listener(&at, l, &path)).collect::<Result<_, _>>()?;
    }
    for table in file.bridge {
        let name_span = table.get_ref().name.span();
        let b = bridge(&at, table, &path)?;
        if config.bridges.iter().any(|other| other.name == b.name) {
            let message = format!("name in [[bridge]]: {:?} is the name of another bridge", b.name);
            return Err(at.error(Some(name_span), message));
        }
        if let Some(id) = known_local_clientid(&b)
            && config.bridges.iter().any(|other| known_local_clientid(other).as_ref() == Some(&id))
        {
            let message = format!(
                "[[bridge]] {:?}: its local client id {id:?} is another bridge's too; set local_clientid",
                b.name
            );
            return Err(at.error(Some(name_span), message));
        }
        config.bridges.push(b);
    }
    Ok(FileSettings { log_level, ..FileSettings::new(config) })
}

/// One `[[listener]]` table into a [`Listener`].
fn listener(
    at: &Locator<'_>,
    l: ListenerTable,
    path: &impl Fn(&str, Spanned<PathBuf>) -> Result<PathBuf, ConfigError>,
) -> Result<Listener, ConfigError> {
    let bind: SocketAddr = l.bind.get_ref().trim().parse().map_err(|_| {
        let message = format!(
            "bind in [[listener]]: {:?} is not an IP address and port like 127.0.0.1:1883 or [::]:1883",
            l.bind.get_ref()
        );
        at.error(Some(l.bind.span()), message)
    })?;
    let max_connections = match l.max_connections {
        Some(n) => at.check(n, |n| connection_limit("max_connections in [[listener]]", n))?,
        None => None,
    };
    let tls = match (l.certfile, l.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let require_certificate = l.require_certificate.as_ref().is_some_and(|r| *r.get_ref());
            if require_certificate && l.cafile.is_none() {
                let span = l.require_certificate.map(|r| r.span());
                let message = "require_certificate in [[listener]]: needs a cafile to check client certificates";
                return Err(at.error(span, message.into()));
            }
            Some(TlsFiles {
                certfile: path("certfile in [[listener]]", certfile)?,
                keyfile: path("keyfile in [[listener]]", keyfile)?,
                cafile: l.cafile.map(|c| path("cafile in [[listener]]", c)).transpose()?,
                require_certificate,
                use_identity_as_username: l.use_identity_as_username.is_some_and(|u| u.into_inner()),
            })
        }
        (Some(given), None) | (None, Some(given)) => {
            let message = "[[listener]]: TLS needs both certfile and keyfile";
            return Err(at.error(Some(given.span()), message.into()));
        }
        (None, None) => {
            let tls_only = [
                l.cafile.map(|c| ("cafile", c.span())),
                l.require_certificate.map(|r| ("require_certificate", r.span())),
                l.use_identity_as_username.map(|u| ("use_identity_as_username", u.span())),
            ];
            if let Some((key, span)) = tls_only.into_iter().flatten().next() {
                let message = format!("{key} in [[listener]]: TLS needs certfile and keyfile");
                return Err(at.error(Some(span), message));
            }
            None
        }
    };
    let websockets = websockets(at, l.protocol, l.websockets_path, l.websockets_trust_forwarded_for)?;
    Ok(Listener { bind, max_connections, tls, websockets })
}

/// A listener's `protocol` (Mosquitto's key: `mqtt`, the default, or
/// `websockets`) and the WebSocket keys, which need `websockets`.
fn websockets(
    at: &Locator<'_>,
    protocol: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    trust_forwarded_for: Option<Spanned<bool>>,
) -> Result<Option<WebSockets>, ConfigError> {
    let websockets = match protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("mqtt", _)) => false,
        Some(("websockets", _)) => true,
        Some((other, span)) => {
            let message = format!("protocol in [[listener]]: {other:?} is not one of mqtt, websockets");
            return Err(at.error(Some(span), message));
        }
    };
    if !websockets {
        let ws_only = [
            path.map(|p| ("websockets_path", p.span())),
            trust_forwarded_for.map(|t| ("websockets_trust_forwarded_for", t.span())),
        ];
        if let Some((key, span)) = ws_only.into_iter().flatten().next() {
            let message = format!("{key} in [[listener]]: needs protocol = \"websockets\"");
            return Err(at.error(Some(span), message));
        }
        return Ok(None);
    }
    let mut ws = WebSockets::default();
    if let Some(path) = path {
        ws.path = match path.get_ref().as_str() {
            "*" => None,
            p if p.starts_with('/') && !p.contains(char::is_whitespace) => Some(p.to_owned()),
            p => {
                let message = format!("websockets_path in [[listener]]: {p:?} is not a path like /mqtt (or * for any)");
                return Err(at.error(Some(path.span()), message));
            }
        };
    }
    ws.trust_forwarded_for = trust_forwarded_for.is_some_and(|t| t.into_inner());
    Ok(Some(ws))
}

/// `restart_timeout`: a number of seconds (a constant wait) or `[BASE, CAP]`
/// (a backoff from BASE up to CAP), as mosquitto.conf's one or two numbers.
struct RestartTimeout(u64, Option<u64>);

impl<'de> Deserialize<'de> for RestartTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RestartTimeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or [BASE, CAP] in seconds")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RestartTimeout, E> {
                let n = u64::try_from(n).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))?;
                Ok(RestartTimeout(n, None))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RestartTimeout, E> {
                Ok(RestartTimeout(n, None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RestartTimeout, A::Error> {
                let base = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                let cap = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(1, &self))?;
                if seq.next_element::<u64>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(3, &self));
                }
                Ok(RestartTimeout(base, Some(cap)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One `[[bridge]]` table into a [`Bridge`].
fn bridge(
    at: &Locator<'_>,
    table: Spanned<BridgeTable>,
    path: &impl Fn(&str, Spanned<PathBuf>) -> Result<PathBuf, ConfigError>,
) -> Result<Bridge, ConfigError> {
    let span = table.span();
    let b = table.into_inner();
    let name = b.name.get_ref().clone();
    if name.is_empty() || name.contains(char::is_whitespace) {
        let message = format!("name in [[bridge]]: {name:?} is not one word (mosquitto.conf's connection NAME)");
        return Err(at.error(Some(b.name.span()), message));
    }
    if name.contains(['+', '#']) {
        let message =
            format!("name in [[bridge]]: {name:?} may not contain + or # (it names the bridge's $SYS topics)");
        return Err(at.error(Some(b.name.span()), message));
    }
    let addresses = match (b.address, b.addresses) {
        (Some(_), Some(list)) => {
            return Err(
                at.error(Some(list.span()), "addresses in [[bridge]]: give address or addresses, not both".into())
            );
        }
        (Some(one), None) => vec![at.check(one, |a| bridge_address("address in [[bridge]]", &a))?],
        (None, Some(list)) => {
            let span = list.span();
            let addresses = list.into_inner();
            if addresses.is_empty() {
                return Err(at.error(Some(span), "addresses in [[bridge]]: empty".into()));
            }
            let parse = |a: &String| bridge_address("addresses in [[bridge]]", a);
            addresses.iter().map(parse).collect::<Result<_, _>>().map_err(|m| at.error(Some(span), m))?
        }
        (None, None) => return Err(at.error(Some(span), format!("[[bridge]] {name:?} needs address or addresses"))),
    };
    if b.topic.is_empty() {
        return Err(at.error(Some(span), format!("[[bridge]] {name:?} needs at least one topic")));
    }
    let topics = b.topic.into_iter().map(|t| bridge_topic_table(at, t)).collect::<Result<_, _>>()?;
    let mut bridge = Bridge::new(name, "", 0, topics);
    bridge.addresses = addresses;
    bridge.round_robin = b.round_robin.unwrap_or(bridge.round_robin);
    if let Some(version) = b.bridge_protocol_version {
        bridge.protocol = at.check(version, |v| bridge_protocol("bridge_protocol_version in [[bridge]]", &v))?;
    }
    bridge.remote_clientid = b.remote_clientid;
    bridge.local_clientid = b.local_clientid;
    if let (Some(password), None) = (&b.remote_password, &b.remote_username) {
        let message = "remote_password in [[bridge]]: needs remote_username";
        return Err(at.error(Some(password.span()), message.into()));
    }
    bridge.remote_username = b.remote_username;
    bridge.remote_password = b.remote_password.map(Spanned::into_inner);
    bridge.clean_session = b.cleansession.unwrap_or(bridge.clean_session);
    if let Some(seconds) = b.keepalive_interval {
        bridge.keepalive = match *seconds.get_ref() {
            n if n < 5 => {
                let message = "keepalive_interval in [[bridge]]: must be at least 5 seconds (Mosquitto's minimum)";
                return Err(at.error(Some(seconds.span()), message.into()));
            }
            n => n,
        };
    }
    if let Some(timeout) = b.restart_timeout {
        let key = "restart_timeout in [[bridge]]";
        bridge.restart_timeout = at.check(timeout, |RestartTimeout(base, cap)| match base {
            0 => Err(format!("{key}: must be at least 1 second")),
            base => restart_timeout(key, base, cap),
        })?;
    }
    if let Some(start) = b.start_type {
        bridge.start_type = at.check(start, |s| start_type("start_type in [[bridge]]", &s))?;
    }
    if let Some(n) = b.threshold {
        bridge.threshold = at.check(n, |n| match n {
            0 => Err("threshold in [[bridge]]: must be at least 1 message".to_owned()),
            n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        })?;
    }
    if let Some(seconds) = b.idle_timeout {
        bridge.idle_timeout = at.check(seconds, |n| match n {
            0 => Err("idle_timeout in [[bridge]]: must be at least 1 second".to_owned()),
            n => Ok(Duration::from_secs(n)),
        })?;
    }
    bridge.notifications = b.notifications.unwrap_or(bridge.notifications);
    if let Some(topic) = b.notification_topic {
        bridge.notification_topic =
            Some(at.check(topic, |t| notification_topic("notification_topic in [[bridge]]", &t))?);
    }
    bridge.try_private = b.try_private.unwrap_or(bridge.try_private);
    let file = |key: &str, p: Option<Spanned<PathBuf>>| p.map(|p| path(&format!("{key} in [[bridge]]"), p)).transpose();
    let (certfile_span, keyfile_span) =
        (b.bridge_certfile.as_ref().map(|c| c.span()), b.bridge_keyfile.as_ref().map(|k| k.span()));
    let has_ca = b.bridge_cafile.is_some() || b.bridge_capath.is_some();
    let tls_only = [
        certfile_span.clone().map(|s| ("bridge_certfile", s)),
        keyfile_span.clone().map(|s| ("bridge_keyfile", s)),
        b.bridge_insecure.as_ref().map(|i| ("bridge_insecure", i.span())),
    ];
    match (&certfile_span, &keyfile_span) {
        (Some(span), None) => {
            let message = "bridge_certfile in [[bridge]]: needs bridge_keyfile too";
            return Err(at.error(Some(span.clone()), message.into()));
        }
        (None, Some(span)) => {
            let message = "bridge_keyfile in [[bridge]]: needs bridge_certfile too";
            return Err(at.error(Some(span.clone()), message.into()));
        }
        _ => {}
    }
    if !has_ca && let Some((key, span)) = tls_only.into_iter().flatten().next() {
        let message = format!("{key} in [[bridge]]: TLS needs bridge_cafile or bridge_capath");
        return Err(at.error(Some(span), message));
    }
    bridge.tls = match has_ca {
        false => None,
        true => Some(BridgeTls {
            cafile: file("bridge_cafile", b.bridge_cafile)?,
            capath: file("bridge_capath", b.bridge_capath)?,
            certfile: file("bridge_certfile", b.bridge_certfile)?,
            keyfile: file("bridge_keyfile", b.bridge_keyfile)?,
            insecure: b.bridge_insecure.is_some_and(Spanned::into_inner),
        }),
    };
    bridge.max_queued = b.max_queued_messages.map(queued);
    bridge.max_queued_bytes = b.max_queued_bytes.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(bridge)
}

/// One topic of a `[[bridge]]` into a [`BridgeTopic`].
fn bridge_topic_table(at: &Locator<'_>, t: TopicTable) -> Result<BridgeTopic, ConfigError> {
    let key = "topic in [[bridge]]";
    let direction = match t.direction {
        Some(d) => at.check(d, |d| bridge_direction(key, &d))?,
        None => BridgeDirection::Out,
    };
    let qos = match t.qos {
        Some(q) => at.check(q, |q| bridge_qos(key, q))?,
        None => QoS::AtMostOnce,
    };
    let span = t.pattern.span();
    let text = |p: Option<Spanned<String>>| p.map(Spanned::into_inner).unwrap_or_default();
    let (local, remote) = (text(t.local_prefix), text(t.remote_prefix));
    bridge_topic(key, t.pattern.get_ref(), direction, qos, &local, &remote).map_err(|m| at.error(Some(span), m))
}

/// Mosquitto's connection limit: -1 (any negative) is no limit; 0 would
/// refuse every client, so it is refused.
pub(crate) fn connection_limit(key: &str, n: i64) -> Result<Option<usize>, String> {
    match n {
        0 => Err(format!("{key}: 0 would refuse every client; -1 means no limit")),
        n => Ok(usize::try_from(n).ok()),
    }
}

/// `max_packet_size`: 0 is the protocol maximum.
pub(crate) fn packet_size(key: &str, n: u64) -> Result<usize, String> {
    let max = PROTOCOL_MAX_PACKET_SIZE as u64;
    match n {
        0 => Ok(PROTOCOL_MAX_PACKET_SIZE),
        n if (2..=max).contains(&n) => Ok(n as usize),
        n => Err(format!("{key}: {n} is not between 2 and {max} (0: the protocol maximum)")),
    }
}

/// `max_keepalive`: 0 would refuse every client.
pub(crate) fn keepalive(key: &str, n: u16) -> Result<u16, String> {
    match n {
        0 => Err(format!("{key}: 0 would refuse every client; leave it out for no limit")),
        n => Ok(n),
    }
}

/// `max_inflight_messages`: 0 is no maximum, which MQTT caps at 65535.
pub(crate) fn inflight(n: u16) -> usize {
    match n {
        0 => usize::from(u16::MAX),
        n => usize::from(n),
    }
}

/// `max_queued_messages`: 0 is no maximum.
pub(crate) fn queued(n: u64) -> usize {
    match n {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// `message_size_limit`: 0 is no limit; at most MQTT's largest payload.
pub(crate) fn message_size_limit(key: &str, n: u64) -> Result<Option<usize>, String> {
    const MAX_PAYLOAD: u64 = MAX_REMAINING_LENGTH as u64;
    match n {
        0 => Ok(None),
        n if n <= MAX_PAYLOAD => Ok(Some(n as usize)),
        n => Err(format!("{key}: {n} is larger than MQTT's largest payload, {MAX_PAYLOAD} (0: no limit)")),
    }
}

/// `persistent_client_expiration`: Mosquitto's duration syntax.
pub(crate) fn client_expiration(key: &str, text: &str) -> Result<Duration, String> {
    mosquitto_duration(text)
        .ok_or_else(|| format!("{key}: {text:?} is not a duration like 1h, 2d, 1w, 1m (30 days) or 1y"))
}

/// Mosquitto's port for a bridge address without one.
const BRIDGE_DEFAULT_PORT: u16 = 1883;

/// A bridge's remote, `host[:port]` (port 1883 unless given). An IPv6
/// address is written `[::1]:1883` or, as Mosquitto reads it, `::1:1883`:
/// without brackets the port after its last colon is required.
pub(crate) fn bridge_address(key: &str, text: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("{key}: {text:?} is not HOST[:PORT] ({why})");
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("no ] after the IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in the brackets"));
            }
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(|| bad("expected : and a port after ]"))?)),
            }
        }
        None => match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() => {
                return Err(bad("an IPv6 address needs a port: write [ADDRESS]:PORT or ADDRESS:PORT"));
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("no host"));
    }
    let port = match port {
        None => BRIDGE_DEFAULT_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(bad("the port is not from 1 to 65535")),
        },
    };
    Ok((host.to_owned(), port))
}

/// A bridge topic's direction, `in`, `out` or `both` (in any case, as
/// Mosquitto reads it).
pub(crate) fn bridge_direction(key: &str, text: &str) -> Result<BridgeDirection, String> {
    match text.to_ascii_lowercase().as_str() {
        "in" => Ok(BridgeDirection::In),
        "out" => Ok(BridgeDirection::Out),
        "both" => Ok(BridgeDirection::Both),
        _ => Err(format!("{key}: direction {text:?} is not in, out or both")),
    }
}

/// A bridge topic's QoS, 0, 1 or 2.
pub(crate) fn bridge_qos(key: &str, n: u64) -> Result<QoS, String> {
    u8::try_from(n).ok().and_then(QoS::from_u8).ok_or_else(|| format!("{key}: QoS {n} is not 0, 1 or 2"))
}

/// A bridge topic, checked by Mosquitto's rules: the prefixes are topic
/// names (no wildcards); an empty pattern needs both prefixes (it maps one
/// local topic to one remote topic); each prefix followed by the pattern is
/// a valid filter.
pub(crate) fn bridge_topic(
    key: &str,
    pattern: &str,
    direction: BridgeDirection,
    qos: QoS,
    local_prefix: &str,
    remote_prefix: &str,
) -> Result<BridgeTopic, String> {
    for (side, prefix) in [("local", local_prefix), ("remote", remote_prefix)] {
        if prefix.contains(['+', '#']) {
            return Err(format!("{key}: the {side} prefix {prefix:?} must not contain a wildcard (+ or #)"));
        }
    }
    if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
        let message = "an empty pattern (\"\") needs both a local and a remote prefix (it maps the one topic \
                       LOCAL_PREFIX to REMOTE_PREFIX)";
        return Err(format!("{key}: {message}"));
    }
    for (side, prefix) in [("local", local_prefix), ("remote", remote_prefix)] {
        let filter = format!("{prefix}{pattern}");
        if crate::topic::validate_filter(&filter).is_err() {
            let what = match prefix.is_empty() {
                true => format!("the pattern {filter:?}"),
                false => format!("the {side} prefix and pattern, {filter:?},"),
            };
            return Err(format!("{key}: {what} is not a valid topic filter"));
        }
    }
    Ok(BridgeTopic {
        pattern: pattern.to_owned(),
        direction,
        qos,
        local_prefix: local_prefix.to_owned(),
        remote_prefix: remote_prefix.to_owned(),
    })
}

/// `bridge_protocol_version`: `mqttv31`, `mqttv311` or `mqttv50`.
pub(crate) fn bridge_protocol(key: &str, text: &str) -> Result<Protocol, String> {
    match text {
        "mqttv31" => Ok(Protocol::V31),
        "mqttv311" => Ok(Protocol::V311),
        "mqttv50" => Ok(Protocol::V5),
        _ => Err(format!("{key}: {text:?} is not mqttv50, mqttv311 or mqttv31")),
    }
}

/// `start_type`: `automatic`, `lazy` or `once`.
pub(crate) fn start_type(key: &str, text: &str) -> Result<StartType, String> {
    match text {
        "automatic" => Ok(StartType::Automatic),
        "lazy" => Ok(StartType::Lazy),
        "once" => Ok(StartType::Once),
        "manual" => Err(format!("{key}: manual is not supported (nor by Mosquitto): use automatic, lazy or once")),
        _ => Err(format!("{key}: {text:?} is not automatic, lazy or once")),
    }
}

/// `restart_timeout BASE [CAP]`: one number is a constant wait.
pub(crate) fn restart_timeout(key: &str, base: u64, cap: Option<u64>) -> Result<(Duration, Duration), String> {
    let cap = cap.unwrap_or(base);
    if cap < base {
        return Err(format!("{key}: the cap, {cap} s, is lower than the base, {base} s"));
    }
    Ok((Duration::from_secs(base), Duration::from_secs(cap)))
}

/// A bridge's `notification_topic`: a topic name, without wildcards.
pub(crate) fn notification_topic(key: &str, topic: &str) -> Result<String, String> {
    match crate::topic::validate_name(topic) {
        Ok(()) => Ok(topic.to_owned()),
        Err(_) => Err(format!("{key}: {topic:?} is not a topic name (not empty, no + or #)")),
    }
}

/// The client id a bridge's session has in midge, when it can be known
/// before start: `local_clientid`, or `local.` and `remote_clientid`
/// (Mosquitto's default; without a remote_clientid it depends on the host
/// name, and differs between bridges as their names do).
pub(crate) fn known_local_clientid(bridge: &Bridge) -> Option<String> {
    match (&bridge.local_clientid, &bridge.remote_clientid) {
        (Some(local), _) => Some(local.clone()),
        (None, Some(remote)) => Some(format!("local.{remote}")),
        (None, None) => None,
    }
}

/// One of the five level names, in any case.
pub(crate) fn log_level(name: &str) -> Option<LevelFilter> {
    match name.to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Mosquitto's duration syntax: a positive number followed by h, d, w, m
/// (30 days) or y (365 days).
fn mosquitto_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let hours: u64 = match unit {
        'h' => 1,
        'd' => 24,
        'w' => 24 * 7,
        'm' => 24 * 30,
        'y' => 24 * 365,
        _ => return None,
    };
    let seconds = n.checked_mul(hours)?.checked_mul(3600)?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Turns byte spans into line numbers and serde's messages into ones that
/// name the key.
struct Locator<'a> {
    text: &'a str,
}

impl Locator<'_> {
    /// Checks a value with one of the shared checks; its error gets the
    /// value's line.
    fn check<T, U>(&self, value: Spanned<T>, check: impl FnOnce(T) -> Result<U, String>) -> Result<U, ConfigError> {
        let span = value.span();
        check(value.into_inner()).map_err(|m| self.error(Some(span), m))
    }

    fn error(&self, span: Option<Range<usize>>, message: String) -> ConfigError {
        let line = span.map(|span| self.text[..span.start.min(self.text.len())].matches('\n').count() + 1);
        ConfigError::Invalid { file: None, line, message }
    }

    /// Text that is not TOML.
    fn syntax_error(&self, span: Option<Range<usize>>, message: &str) -> ConfigError {
        let quoted = span.as_ref().and_then(|span| self.text.get(span.clone())).map(str::trim);
        let message = match quoted {
            Some(key) if message == "duplicate key" && !key.is_empty() => format!("duplicate key {key:?}"),
            _ => format!("invalid TOML: {message}"),
        };
        self.error(span, message)
    }

    /// A deserialization error: finds the key at `span` in `document` and
    /// says what is wrong with it.
    fn serde_error(&self, document: &DeTable<'_>, span: Option<Range<usize>>, message: &str) -> ConfigError {
        let mut keys = span.as_ref().and_then(|span| keys_at(document, span.start)).unwrap_or_default();
        let quoted = |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split('`').next());
        let message = if let Some(name) = quoted("unknown field `") {
            // The span is the unknown key's; what encloses it is the context.
            keys.pop();
            format!("unknown key {name:?}{}", context(&keys))
        } else if let Some(name) = quoted("missing field `") {
            match keys.first() {
                // Reported on the table: the rest of `keys` is whatever it
                // contains, but for a bridge's topic table.
                Some(table) if table == "bridge" && keys.get(1).is_some_and(|k| k == "topic") => {
                    format!("[[bridge.topic]] needs {name:?}")
                }
                Some(table) => format!("[[{table}]] needs {name:?}"),
                None => format!("missing key {name:?}"),
            }
        } else if keys.len() == 1
            && ["listener", "bridge"].contains(&keys[0].as_str())
            && message.contains("expected a sequence")
        {
            format!("{0}: write each {0} as a [[{0}]] table", keys[0])
        } else {
            let message = friendly_types(message);
            match keys.split_last() {
                Some((key, outer)) => format!("{key}{}: {message}", context(outer)),
                None => message,
            }
        };
        self.error(span, message)
    }
}

/// " in [[listener]]" for a key inside a listener table, " in
/// [[bridge.topic]]" for one in a bridge's topic; "" at top level.
fn context(outer: &[String]) -> String {
    match outer.is_empty() {
        false => format!(" in [[{}]]", outer.join(".")),
        true => String::new(),
    }
}

/// The keys, outermost first, of the innermost key whose key or value
/// covers byte `pos`. Spans of tables written as `[[listener]]` cover only
/// their header, so every table is searched, not just the covering ones.
fn keys_at(table: &DeTable<'_>, pos: usize) -> Option<Vec<String>> {
    for (key, value) in table.iter() {
        let found = match value_keys_at(value, pos) {
            Some(inner) => Some(inner),
            None if covers(key.span(), pos) || covers(value.span(), pos) => Some(Vec::new()),
            None => None,
        };
        if let Some(mut keys) = found {
            keys.insert(0, key.get_ref().to_string());
            return Some(keys);
        }
    }
    None
}

/// The keys inside `value` (a table, or an array of them) at byte `pos`:
/// empty if `value` is an item of an array covering `pos` itself.
fn value_keys_at(value: &Spanned<DeValue<'_>>, pos: usize) -> Option<Vec<String>> {
    match value.get_ref() {
        DeValue::Table(table) => keys_at(table, pos),
        DeValue::Array(items) => {
            items.iter().find_map(|item| value_keys_at(item, pos).or_else(|| covers(item.span(), pos).then(Vec::new)))
        }
        _ => None,
    }
}

fn covers(span: Range<usize>, pos: usize) -> bool {
    span.contains(&pos) || (span.is_empty() && span.start == pos)
}

/// serde's Rust type names in "expected ..." made readable.
fn friendly_types(message: &str) -> String {
    const NAMES: [(&str, &str); 5] = [
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected u64", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected path string", "expected a path string"),
    ];
    let mut message = message.trim_end().to_owned();
    for (rust, readable) in NAMES {
        if message.ends_with(rust) {
            message.replace_range(message.len() - rust.len().., readable);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/etc/midge";

    fn parse_ok(text: &str) -> FileSettings {
        parse(text, Path::new(BASE)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn config(text: &str) -> Config {
        parse_ok(text).config
    }

    /// The error's message and its line.
    fn error(text: &str) -> (String, Option<usize>) {
        let e = parse(text, Path::new(BASE)).expect_err("should be refused");
        (e.to_string(), e.line())
    }

    #[test]
    fn every_key() {
        let s = parse_ok(
            r#"
allow_anonymous = true
password_file = "passwd"
acl_file = "/abs/acl"
persistence = true
persistence_location = "data"
max_connections = 100
max_packet_size = 4096
max_keepalive = 300
max_inflight_messages = 10
max_queued_messages = 50
max_queued_bytes = 1000000
max_topic_levels = 16
slow_consumer_timeout = 2
queue_qos0_messages = true
sys_interval = 0
persistent_client_expiration = "2d"
max_publish_rate = 500
log_level = "debug"
connect_timeout = 5
http_listener = "127.0.0.1:9090"

[[listener]]
bind = "0.0.0.0:1883"
max_connections = 10

[[listener]]
bind = "[::1]:8883"
certfile = "server.pem"
keyfile = "/keys/server.key"
cafile = "ca.pem"
require_certificate = true
use_identity_as_username = true

[[listener]]
bind = "0.0.0.0:8083"
protocol = "websockets"
websockets_path = "/ws"
websockets_trust_forwarded_for = true
"#,
        );
        let c = s.config;
        assert_eq!(s.log_level, Some(LevelFilter::Debug));
        assert_eq!(c.allow_anonymous, Some(true));
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/midge/passwd")));
        assert_eq!(c.acl_file, Some(PathBuf::from("/abs/acl")));
        assert_eq!(c.data_dir, Some(PathBuf::from("/etc/midge/data")));
        assert_eq!(c.max_connections, Some(100));
        assert_eq!(c.max_packet_size, 4096);
        assert_eq!(c.max_keepalive, Some(300));
        assert_eq!((c.max_inflight, c.max_queued, c.queue_qos0), (10, 50, true));
        assert_eq!((c.max_queued_bytes, c.max_topic_levels), (1_000_000, 16));
        assert_eq!(c.slow_consumer_timeout, Duration::from_secs(2));
        assert_eq!(c.sys_interval, Duration::ZERO);
        assert_eq!(c.session_expiry, Some(Duration::from_secs(2 * 86400)));
        assert_eq!(c.max_publish_rate, Some(500));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.http_listener, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[2].websockets, Some(WebSockets { path: Some("/ws".into()), trust_forwarded_for: true }));
        assert_eq!(c.listeners[1].websockets, None);
        assert_eq!(
            c.listeners[0],
            Listener { max_connections: Some(10), ..Listener::tcp("0.0.0.0:1883".parse().unwrap()) }
        );
        assert_eq!(c.listeners[1].bind, "[::1]:8883".parse().unwrap());
        assert_eq!(c.listeners[1].max_connections, None);
        assert_eq!(
            c.listeners[1].tls,
            Some(TlsFiles {
                certfile: PathBuf::from("/etc/midge/server.pem"),
                keyfile: PathBuf::from("/keys/server.key"),
                cafile: Some(PathBuf::from("/etc/midge/ca.pem")),
                require_certificate: true,
                use_identity_as_username: true,
            })
        );
    }

    fn topic(pattern: &str, direction: BridgeDirection, qos: QoS, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn a_bridge_with_every_key() {
        let c = config(
            r#"
[[bridge]]
name = "cloud"
addresses = ["broker.example.com:8883", "10.0.0.2", "[::1]:1884"]
round_robin = true
bridge_protocol_version = "mqttv50"
remote_clientid = "site-1"
local_clientid = "local-site-1"
remote_username = "bridge"
remote_password = "s3cret"
cleansession = true
keepalive_interval = 30
restart_timeout = [2, 60]
start_type = "lazy"
threshold = 5
idle_timeout = 120
notifications = false
notification_topic = "bridges/cloud/state"
try_private = false
bridge_cafile = "ca.pem"
bridge_capath = "/tls/certs"
bridge_certfile = "bridge.pem"
bridge_keyfile = "bridge.key"
bridge_insecure = true
max_queued_messages = 0
max_queued_bytes = 4096

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = 1
local_prefix = "site/"
remote_prefix = "remote/site/"

[[bridge.topic]]
pattern = "cmd/+"
direction = "in"
qos = 2

[[bridge.topic]]
pattern = ""
direction = "both"
local_prefix = "local/one"
remote_prefix = "remote/one"
"#,
        );
        let expected = Bridge {
            name: "cloud".into(),
            addresses: vec![("broker.example.com".into(), 8883), ("10.0.0.2".into(), 1883), ("::1".into(), 1884)],
            round_robin: true,
            topics: vec![
                topic("sensors/#", BridgeDirection::Out, QoS::AtLeastOnce, "site/", "remote/site/"),
                topic("cmd/+", BridgeDirection::In, QoS::ExactlyOnce, "", ""),
                topic("", BridgeDirection::Both, QoS::AtMostOnce, "local/one", "remote/one"),
            ],
            protocol: Protocol::V5,
            remote_clientid: Some("site-1".into()),
            local_clientid: Some("local-site-1".into()),
            remote_username: Some("bridge".into()),
            remote_password: Some("s3cret".into()),
            clean_session: true,
            keepalive: 30,
            restart_timeout: (Duration::from_secs(2), Duration::from_secs(60)),
            start_type: StartType::Lazy,
            threshold: 5,
            idle_timeout: Duration::from_secs(120),
            notifications: false,
            notification_topic: Some("bridges/cloud/state".into()),
            try_private: false,
            tls: Some(BridgeTls {
                cafile: Some("/etc/midge/ca.pem".into()),
                capath: Some("/tls/certs".into()),
                certfile: Some("/etc/midge/bridge.pem".into()),
                keyfile: Some("/etc/midge/bridge.key".into()),
                insecure: true,
            }),
            max_queued: Some(usize::MAX),
            max_queued_bytes: Some(4096),
        };
        assert_eq!(c.bridges, [expected]);
        assert_eq!((c.max_queued, c.max_queued_bytes), (1000, 64 << 20), "the broker's own limits are untouched");
    }

    #[test]
    fn a_bridge_has_mosquittos_defaults() {
        let c = config("[[bridge]]\nname = \"b\"\naddress = \"192.0.2.1\"\ntopic = [{ pattern = \"#\" }]\n");
        let out = topic("#", BridgeDirection::Out, QoS::AtMostOnce, "", "");
        assert_eq!(c.bridges, [Bridge::new("b", "192.0.2.1", 1883, vec![out])]);
        assert_eq!(c.listeners, Config::default().listeners);
        assert!(config("").bridges.is_empty());
        let restart = |value: &str| {
            let c = config(&format!(
                "[[bridge]]\nname = \"b\"\naddress = \"h\"\nrestart_timeout = {value}\ntopic = [{{ pattern = \"#\" }}]\n"
            ));
            c.bridges[0].restart_timeout
        };
        assert_eq!(restart("20"), (Duration::from_secs(20), Duration::from_secs(20)), "one number: a constant wait");
        assert_eq!(restart("[1, 1]"), (Duration::from_secs(1), Duration::from_secs(1)));
        let protocol = |v: &str| {
            config(&format!("[[bridge]]\nname = \"b\"\naddress = \"h\"\nbridge_protocol_version = \"{v}\"\ntopic = [{{ pattern = \"#\" }}]\n")).bridges[0].protocol
        };
        assert_eq!((protocol("mqttv31"), protocol("mqttv311")), (Protocol::V31, Protocol::V311));
    }

    #[test]
    fn two_bridges_and_inline_topics() {
        let c = config(
            r#"
[[bridge]]
name = "a"
address = "a.example"
topic = [
  { pattern = "a/#", direction = "BOTH", qos = 1 },
  { pattern = "b/#", direction = "in", remote_prefix = "r/" },
]

[[bridge]]
name = "b"
address = "b.example:1999"
topic = [{ pattern = "c" }]
"#,
        );
        let a = Bridge::new(
            "a",
            "a.example",
            1883,
            vec![
                topic("a/#", BridgeDirection::Both, QoS::AtLeastOnce, "", ""),
                topic("b/#", BridgeDirection::In, QoS::AtMostOnce, "", "r/"),
            ],
        );
        let b = Bridge::new("b", "b.example", 1999, vec![topic("c", BridgeDirection::Out, QoS::AtMostOnce, "", "")]);
        assert_eq!(c.bridges, [a, b]);
    }

    #[test]
    fn bridge_errors_name_the_line() {
        // Keys from line 4, then a topic.
        let bridge = |keys: &str| {
            format!("[[bridge]]\nname = \"b\"\naddress = \"h\"\n{keys}\n[[bridge.topic]]\npattern = \"#\"\n")
        };
        // A topic's keys from line 5.
        let topic = |keys: &str| format!("[[bridge]]\nname = \"b\"\naddress = \"h\"\n[[bridge.topic]]\n{keys}\n");
        for (text, expected) in [
            ("[[bridge]]\naddress = \"h\"\n".to_owned(), "line 1: [[bridge]] needs \"name\""),
            (
                "[[bridge]]\nname = \"b\"\ntopic = [{ pattern = \"#\" }]\n".to_owned(),
                "line 1: [[bridge]] \"b\" needs address or addresses",
            ),
            (
                "[[bridge]]\nname = \"b\"\naddress = \"h\"\n".to_owned(),
                "line 1: [[bridge]] \"b\" needs at least one topic",
            ),
            ("[bridge]\nname = \"b\"\n".to_owned(), "line 1: bridge: write each bridge as a [[bridge]] table"),
            (bridge("port = 1883"), "line 4: unknown key \"port\" in [[bridge]]"),
            (topic("pattern = \"a\"\nqos = 1\nretain = true"), "line 7: unknown key \"retain\" in [[bridge.topic]]"),
            (topic("qos = 1"), "line 4: [[bridge.topic]] needs \"pattern\""),
            (
                "[[bridge]]\nname = \"a b\"\naddress = \"h\"\n".to_owned(),
                "line 2: name in [[bridge]]: \"a b\" is not one word",
            ),
            (bridge("addresses = [\"i\"]"), "line 4: addresses in [[bridge]]: give address or addresses, not both"),
            ("[[bridge]]\nname = \"b\"\naddresses = []\n".to_owned(), "line 3: addresses in [[bridge]]: empty"),
            (
                "[[bridge]]\nname = \"b\"\naddresses = [\"h\", \"i:0\"]\n".to_owned(),
                "line 3: addresses in [[bridge]]: \"i:0\" is not HOST[:PORT]",
            ),
            (
                "[[bridge]]\nname = \"b\"\naddress = \"::1\"\n".to_owned(),
                "line 3: address in [[bridge]]: \"::1\" is not HOST[:PORT]",
            ),
            (
                "[[bridge]]\nname = \"b\"\naddress = [\"h\"]\n".to_owned(),
                "line 3: address in [[bridge]]: invalid type: sequence",
            ),
            (
                format!("{}{}", bridge(""), bridge("")),
                "line 8: name in [[bridge]]: \"b\" is the name of another bridge",
            ),
            (
                format!(
                    "{}{}",
                    bridge("local_clientid = \"x\""),
                    bridge("local_clientid = \"x\"").replace("\"b\"", "\"c\"")
                ),
                "line 8: [[bridge]] \"c\": its local client id \"x\" is another bridge's too; set local_clientid",
            ),
            (
                format!(
                    "{}{}",
                    bridge("remote_clientid = \"x\""),
                    bridge("local_clientid = \"local.x\"").replace("\"b\"", "\"c\"")
                ),
                "line 8: [[bridge]] \"c\": its local client id \"local.x\" is another bridge's too",
            ),
            (
                topic("pattern = \"a\"\ndirection = \"up\""),
                "line 6: topic in [[bridge]]: direction \"up\" is not in, out or both",
            ),
            (topic("pattern = \"a\"\nqos = 3"), "line 6: topic in [[bridge]]: QoS 3 is not 0, 1 or 2"),
            (topic("pattern = \"a\"\nqos = -1"), "line 6: qos in [[bridge.topic]]: invalid value: integer `-1`"),
            (
                topic("pattern = \"a/#/b\""),
                "line 5: topic in [[bridge]]: the pattern \"a/#/b\" is not a valid topic filter",
            ),
            (
                topic("pattern = \"#\"\nlocal_prefix = \"a/+/\""),
                "line 5: topic in [[bridge]]: the local prefix \"a/+/\" must not contain a wildcard",
            ),
            (
                topic("pattern = \"\"\nremote_prefix = \"r\""),
                "line 5: topic in [[bridge]]: an empty pattern (\"\") needs both a local and a remote prefix",
            ),
            (
                bridge("bridge_protocol_version = \"5\""),
                "line 4: bridge_protocol_version in [[bridge]]: \"5\" is not mqttv50",
            ),
            (bridge("keepalive_interval = 4"), "line 4: keepalive_interval in [[bridge]]: must be at least 5 seconds"),
            (
                bridge("keepalive_interval = 70000"),
                "line 4: keepalive_interval in [[bridge]]: invalid value: integer `70000`, expected an integer from 0 to 65535",
            ),
            (bridge("restart_timeout = 0"), "line 4: restart_timeout in [[bridge]]: must be at least 1 second"),
            (
                bridge("restart_timeout = [10, 5]"),
                "line 4: restart_timeout in [[bridge]]: the cap, 5 s, is lower than the base, 10 s",
            ),
            (
                bridge("restart_timeout = [1, 2, 3]"),
                "line 4: restart_timeout in [[bridge]]: invalid length 3, expected a number of seconds or [BASE, CAP]",
            ),
            (
                bridge("restart_timeout = \"5s\""),
                "line 4: restart_timeout in [[bridge]]: invalid type: string \"5s\", expected a number of seconds or [BASE, CAP]",
            ),
            (bridge("start_type = \"manual\""), "line 4: start_type in [[bridge]]: manual is not supported"),
            (bridge("threshold = 0"), "line 4: threshold in [[bridge]]: must be at least 1 message"),
            (bridge("idle_timeout = 0"), "line 4: idle_timeout in [[bridge]]: must be at least 1 second"),
            (bridge("notification_topic = \"\""), "line 4: notification_topic in [[bridge]]: \"\" is not a topic name"),
            (bridge("remote_password = \"p\""), "line 4: remote_password in [[bridge]]: needs remote_username"),
            (
                bridge("bridge_cafile = \"ca.pem\"\nbridge_certfile = \"c.pem\""),
                "line 5: bridge_certfile in [[bridge]]: needs bridge_keyfile too",
            ),
            (
                bridge("bridge_cafile = \"ca.pem\"\nbridge_keyfile = \"k.pem\""),
                "line 5: bridge_keyfile in [[bridge]]: needs bridge_certfile too",
            ),
            (
                bridge("bridge_certfile = \"c.pem\"\nbridge_keyfile = \"k.pem\""),
                "line 4: bridge_certfile in [[bridge]]: TLS needs bridge_cafile or bridge_capath",
            ),
            (
                bridge("bridge_insecure = true"),
                "line 4: bridge_insecure in [[bridge]]: TLS needs bridge_cafile or bridge_capath",
            ),
            (bridge("bridge_cafile = \"\""), "line 4: bridge_cafile in [[bridge]]: empty path"),
        ] {
            let (e, _) = error(&text);
            assert!(e.starts_with(expected), "{text}\n{e}");
        }
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let s = parse_ok("");
        let (c, d) = (s.config, Config::default());
        assert_eq!(s.log_level, None);
        assert_eq!(c.listeners, d.listeners);
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!((c.max_packet_size, c.max_inflight, c.max_queued), (d.max_packet_size, 20, 1000));
        assert_eq!((c.sys_interval, c.connect_timeout, c.session_expiry), (d.sys_interval, d.connect_timeout, None));
        assert_eq!(
            (c.allow_anonymous, c.max_connections, c.max_keepalive, c.max_publish_rate),
            (None, None, None, None)
        );
        assert!(!c.queue_qos0 && c.password_file.is_none() && c.acl_file.is_none());
        assert_eq!(c.http_listener, None, "no HTTP listener unless asked for");
    }

    #[test]
    fn http_listener_takes_an_address_and_port() {
        assert_eq!(config("http_listener = \"[::1]:9100\"").http_listener, Some("[::1]:9100".parse().unwrap()));
        for bad in ["\"9090\"", "\"localhost:9090\"", "\"127.0.0.1\"", "\"\""] {
            let (e, line) = error(&format!("sys_interval = 1\nhttp_listener = {bad}\n"));
            assert_eq!(line, Some(2), "{e}");
            assert!(e.starts_with("line 2: http_listener: ") && e.contains("is not an IP address and port"), "{e}");
        }
        let (e, _) = error("http_listener = 9090\n");
        assert!(e.starts_with("line 1: http_listener: invalid type: integer"), "{e}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let c = config(
            "password_file = \"conf/passwd\"\nacl_file = \"../acl\"\npersistence_location = \"/var/lib/midge\"\n\
             [[listener]]\nbind = \"127.0.0.1:8883\"\ncertfile = \"tls/cert.pem\"\nkeyfile = \"tls/key.pem\"\n",
        );
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/midge/conf/passwd")));
        assert_eq!(c.acl_file, Some(PathBuf::from("/etc/midge/../acl")));
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/midge")));
        let tls = c.listeners[0].tls.clone().unwrap();
        assert_eq!((tls.certfile, tls.keyfile), ("/etc/midge/tls/cert.pem".into(), "/etc/midge/tls/key.pem".into()));
        assert_eq!((tls.cafile, tls.require_certificate, tls.use_identity_as_username), (None, false, false));
        let c = parse("persistence_location = \"store\"", Path::new("conf")).unwrap().config;
        assert_eq!(c.data_dir, Some(PathBuf::from("conf/store")));
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("midge-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("midge.toml");
        std::fs::write(&file, "acl_file = \"acl\"\n").unwrap();
        assert_eq!(load(&file).unwrap().config.acl_file, Some(dir.join("acl")));
        std::fs::write(&file, "acl_file = \"acl\"\nmax_keepalive = -5\n").unwrap();
        let e = load(&file).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{} line 2: max_keepalive: ", file.display())), "{e}");
        let missing = dir.join("missing.toml");
        let e = load(&missing).unwrap_err();
        assert!(matches!(&e, ConfigError::Io(path, _) if *path == missing));
        assert!(e.to_string().starts_with(&format!("cannot read {}: ", missing.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn persistence_false_keeps_everything_in_memory() {
        assert_eq!(config("persistence = false").data_dir, None);
        assert_eq!(config("persistence = false\npersistence_location = \"data\"").data_dir, None);
        assert_eq!(config("persistence = true").data_dir, Config::default().data_dir);
    }

    #[test]
    fn mosquitto_sentinels() {
        let c = config(
            "max_connections = -1\nmax_packet_size = 0\nmax_inflight_messages = 0\nmax_queued_messages = 0\n\
             sys_interval = 0\n[[listener]]\nbind = \"127.0.0.1:1883\"\nmax_connections = -1\n",
        );
        assert_eq!(c.max_connections, None);
        assert_eq!(c.max_packet_size, 268_435_460);
        assert_eq!((c.max_inflight, c.max_queued), (65535, usize::MAX));
        assert_eq!(c.sys_interval, Duration::ZERO);
        assert_eq!(c.listeners[0].max_connections, None);
    }

    #[test]
    fn durations() {
        let hours = |h: u64| Some(Duration::from_secs(h * 3600));
        assert_eq!(mosquitto_duration("1h"), hours(1));
        assert_eq!(mosquitto_duration("2d"), hours(48));
        assert_eq!(mosquitto_duration("2w"), hours(14 * 24));
        assert_eq!(mosquitto_duration("1m"), hours(30 * 24));
        assert_eq!(mosquitto_duration("1y"), hours(365 * 24));
        for bad in ["", "5", "h", "0d", "-1d", "+1d", "1.5h", "1 h", "1s", "99999999999999999999y", "1hh"] {
            assert_eq!(mosquitto_duration(bad), None, "{bad:?}");
        }
        assert_eq!(config("persistent_client_expiration = \"1w\"").session_expiry, hours(7 * 24));
        let (e, line) = error("\npersistent_client_expiration = \"soon\"\n");
        assert_eq!(line, Some(2));
        assert!(e.starts_with("line 2: persistent_client_expiration: \"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn log_levels() {
        for (name, level) in [("error", LevelFilter::Error), ("warn", LevelFilter::Warn), ("TRACE", LevelFilter::Trace)]
        {
            assert_eq!(parse_ok(&format!("log_level = {name:?}")).log_level, Some(level));
        }
        for bad in ["off", "loud", "warning"] {
            let (e, line) = error(&format!("log_level = {bad:?}"));
            assert!(e.starts_with("line 1: log_level: ") && line == Some(1), "{e}");
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let (e, _) = error("allow_anonymous = true\n\nmax_conections = 5\n");
        assert_eq!(e, "line 3: unknown key \"max_conections\"");
        let (e, _) = error("[[listener]]\nbind = \"127.0.0.1:1883\"\nport = 1883\n");
        assert_eq!(e, "line 3: unknown key \"port\" in [[listener]]");
        let (e, _) = error("sys_interval = 1\n[mqtt]\nport = 1883\n");
        assert_eq!(e, "line 2: unknown key \"mqtt\"");
    }

    #[test]
    fn a_bad_value_is_named_with_its_line() {
        let (e, _) = error("sys_interval = \"ten\"\n");
        assert_eq!(e, "line 1: sys_interval: invalid type: string \"ten\", expected a non-negative integer");
        let (e, _) = error("allow_anonymous = true\nmax_keepalive = 70000\n");
        assert_eq!(e, "line 2: max_keepalive: invalid value: integer `70000`, expected an integer from 0 to 65535");
        let (e, _) = error("allow_anonymous = \"yes\"\n");
        assert!(e.starts_with("line 1: allow_anonymous: invalid type: string \"yes\""), "{e}");
        let (e, _) = error("password_file = 5\n");
        assert!(e.starts_with("line 1: password_file: invalid type: integer"), "{e}");
        let (e, _) = error(
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n\n[[listener]]\nbind = \"127.0.0.1:1884\"\nmax_connections = \"many\"\n",
        );
        assert!(e.starts_with("line 6: max_connections in [[listener]]: invalid type: string"), "{e}");
        let (e, _) = error("[[listener]]\nbind = \"nowhere\"\n");
        assert!(e.starts_with("line 2: bind in [[listener]]: \"nowhere\" is not an IP address and port"), "{e}");
        let (e, _) = error("[listener]\nbind = \"127.0.0.1:1883\"\n");
        assert_eq!(e, "line 1: listener: write each listener as a [[listener]] table");
        let (e, line) = error("sys_interval = \n");
        assert_eq!(line, Some(1), "{e}");
    }

    #[test]
    fn values_mosquitto_refuses_or_that_would_refuse_everyone() {
        for (text, key) in [
            ("max_packet_size = 1", "max_packet_size"),
            ("max_packet_size = 268435461", "max_packet_size"),
            ("max_connections = 0", "max_connections"),
            ("max_keepalive = 0", "max_keepalive"),
            ("max_publish_rate = 0", "max_publish_rate"),
            ("max_topic_levels = 0", "max_topic_levels"),
            ("slow_consumer_timeout = 0", "slow_consumer_timeout"),
            ("connect_timeout = 0", "connect_timeout"),
            ("password_file = \"\"", "password_file"),
            ("[[listener]]\nbind = \"127.0.0.1:1\"\nmax_connections = 0", "max_connections in [[listener]]"),
        ] {
            let (e, line) = error(text);
            assert_eq!(line, Some(text.lines().count()), "{e}");
            assert!(e.contains(&format!(": {key}: ")), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_listener_needs_bind() {
        let (e, line) = error("sys_interval = 1\n[[listener]]\nmax_connections = 1\n");
        assert_eq!(e, "line 2: [[listener]] needs \"bind\"");
        assert_eq!(line, Some(2));
    }

    #[test]
    fn half_configured_tls_is_refused() {
        let listener = |keys: &str| format!("[[listener]]\nbind = \"127.0.0.1:8883\"\n{keys}\n");
        let (e, _) = error(&listener("certfile = \"a.pem\""));
        assert_eq!(e, "line 3: [[listener]]: TLS needs both certfile and keyfile");
        let (e, _) = error(&listener("keyfile = \"a.key\""));
        assert_eq!(e, "line 3: [[listener]]: TLS needs both certfile and keyfile");
        let (e, _) = error(&listener("cafile = \"ca.pem\""));
        assert_eq!(e, "line 3: cafile in [[listener]]: TLS needs certfile and keyfile");
        let (e, _) = error(&listener("use_identity_as_username = true"));
        assert_eq!(e, "line 3: use_identity_as_username in [[listener]]: TLS needs certfile and keyfile");
        let (e, _) = error(&listener("certfile = \"a.pem\"\nkeyfile = \"a.key\"\nrequire_certificate = true"));
        assert_eq!(e, "line 5: require_certificate in [[listener]]: needs a cafile to check client certificates");
    }

    #[test]
    fn websocket_listeners() {
        let listener = |keys: &str| format!("[[listener]]\nbind = \"127.0.0.1:8083\"\n{keys}\n");
        let c = config(&listener("protocol = \"websockets\""));
        assert_eq!(c.listeners[0].websockets, Some(WebSockets::default()));
        assert_eq!(c.listeners[0].websockets.as_ref().unwrap().path.as_deref(), Some("/mqtt"));
        let c = config(&listener("protocol = \"mqtt\""));
        assert_eq!(c.listeners[0].websockets, None);
        let c = config(&listener("protocol = \"websockets\"\ncertfile = \"a.pem\"\nkeyfile = \"a.key\""));
        assert!(c.listeners[0].websockets.is_some() && c.listeners[0].tls.is_some(), "wss");
        let (e, _) = error(&listener("protocol = \"ws\""));
        assert_eq!(e, "line 3: protocol in [[listener]]: \"ws\" is not one of mqtt, websockets");
        let (e, _) = error(&listener("websockets_path = \"/ws\""));
        assert_eq!(e, "line 3: websockets_path in [[listener]]: needs protocol = \"websockets\"");
        let (e, _) = error(&listener("protocol = \"mqtt\"\nwebsockets_trust_forwarded_for = true"));
        assert_eq!(e, "line 4: websockets_trust_forwarded_for in [[listener]]: needs protocol = \"websockets\"");
        let (e, _) = error(&listener("protocol = \"websockets\"\nwebsockets_path = \"mqtt\""));
        assert_eq!(e, "line 4: websockets_path in [[listener]]: \"mqtt\" is not a path like /mqtt (or * for any)");
        let any = parse(&listener("protocol = \"websockets\"\nwebsockets_path = \"*\""), Path::new("/")).unwrap();
        assert_eq!(any.config.listeners[0].websockets.as_ref().unwrap().path, None);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let (e, line) = error("sys_interval = 1\nmax_connections = = 2\n");
        assert_eq!(line, Some(2), "{e}");
        assert!(e.starts_with("line 2: invalid TOML: "), "{e}");
        let (e, _) = error("sys_interval = 1\nsys_interval = 2\n");
        assert_eq!(e, "line 2: duplicate key \"sys_interval\"");
    }

    #[test]
    fn the_example_file_parses() {
        let s = parse(include_str!("../examples/midge.toml"), Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.config.listeners, Config::default().listeners);
        assert_eq!(s.config.data_dir, Some(PathBuf::from("midge-data")));
        assert_eq!(s.log_level, None);
    }

    #[test]
    fn the_example_file_uncommented_parses() {
        // Every commented-out key and the TLS listener, uncommented.
        let uncommented: String = include_str!("../examples/midge.toml")
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with("[[") || rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => l,
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        let s = parse(&uncommented, Path::new("/etc/midge")).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let (c, d) = (s.config, Config::default());
        assert_eq!(s.log_level, Some(LevelFilter::Info));
        assert_eq!(
            (c.max_packet_size, c.max_inflight, c.max_queued),
            (d.max_packet_size, d.max_inflight, d.max_queued)
        );
        assert_eq!(
            (c.sys_interval, c.connect_timeout, c.queue_qos0),
            (d.sys_interval, d.connect_timeout, d.queue_qos0)
        );
        assert_eq!((c.allow_anonymous, c.max_connections), (Some(true), None));
        assert_eq!(c.http_listener, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.data_dir, Some(PathBuf::from("/etc/midge/midge-data")));
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[0], Config::default().listeners[0]);
        assert_eq!(c.listeners[2].websockets, Some(crate::config::WebSockets::default()));
        let tls = c.listeners[1].tls.clone().unwrap();
        assert_eq!(tls.certfile, PathBuf::from("/etc/midge/server.pem"));
        assert_eq!(tls.cafile, Some(PathBuf::from("/etc/midge/ca.pem")));
        // The bridge shows Mosquitto's defaults where the defaults are values.
        let [b] = c.bridges.as_slice() else { panic!("{:?}", c.bridges) };
        let d = Bridge::new("cloud", "", 0, Vec::new());
        assert_eq!(b.addresses, [("broker.example.com".into(), 8883), ("backup.example.com".into(), 8883)]);
        assert_eq!(
            (b.round_robin, b.protocol, b.clean_session, b.keepalive),
            (d.round_robin, d.protocol, d.clean_session, d.keepalive)
        );
        assert_eq!(
            (b.restart_timeout, b.start_type, b.threshold, b.idle_timeout),
            (d.restart_timeout, d.start_type, d.threshold, d.idle_timeout)
        );
        assert_eq!((b.notifications, b.try_private), (d.notifications, d.try_private));
        assert_eq!(b.topics, [topic("sensors/#", BridgeDirection::Out, QoS::AtLeastOnce, "", "site1/")]);
        assert_eq!(b.tls.as_ref().unwrap().keyfile, Some(PathBuf::from("/etc/midge/bridge.key")));
    }

    #[test]
    fn the_example_file_documents_every_key() {
        let example = include_str!("../examples/midge.toml");
        let source = include_str!("config_file.rs");
        let structs = &source[source.find("struct File {").unwrap()..source.find("/// Reads and parses").unwrap()];
        let keys: Vec<&str> = structs
            .lines()
            .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
            .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !k.is_empty())
            .collect();
        assert!(keys.len() > 20, "{keys:?}");
        for key in keys {
            let documented = example.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[[{key}]]"))
                    || (l.starts_with("[[") && l.ends_with(&format!(".{key}]]")))
            });
            assert!(documented, "examples/midge.toml does not show {key}");
        }
    }

    #[test]
    fn a_cluster_needs_both_its_redis_and_a_node_id() {
        let c = config("cluster_redis = \"redis://127.0.0.1:6379\"\nnode_id = \"n1\"").cluster.unwrap();
        assert_eq!((c.redis.as_str(), c.node_id.as_str()), ("redis://127.0.0.1:6379", "n1"));
        assert_eq!(config("").cluster, None);
        assert!(error("node_id = \"n1\"").0.contains("needs the cluster's Redis server"));
        assert!(error("cluster_redis = \"redis://h:1\"").0.contains("needs this node's id"));
        assert!(error("cluster_redis = \"h:1\"\nnode_id = \"n\"").0.contains("expected redis://HOST:PORT"));
        assert!(error("cluster_redis = \"redis://h:1\"\nnode_id = \"a b\"").0.contains("letters, digits"));
        assert_eq!(c.lease, std::time::Duration::from_secs(10), "the default lease");
        let short = config("cluster_redis = \"redis://h:1\"\nnode_id = \"n\"\ncluster_lease = 3").cluster.unwrap();
        assert_eq!(short.lease, std::time::Duration::from_secs(3));
        assert!(
            error("cluster_redis = \"redis://h:1\"\nnode_id = \"n\"\ncluster_lease = 1").0.contains("from 3 to 3600")
        );
        assert!(error("cluster_lease = 5").0.contains("needs a cluster"));
    }
}
