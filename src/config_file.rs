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

use crate::codec::MAX_REMAINING_LENGTH;
use crate::config::{Config, Listener, TlsFiles, WebSockets};
use crate::logging::Destination;
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
    #[serde(default)]
    listener: Vec<ListenerTable>,
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
                // Reported on the table: the rest of `keys` is whatever it contains.
                Some(table) => format!("[[{table}]] needs {name:?}"),
                None => format!("missing key {name:?}"),
            }
        } else if keys.as_slice() == ["listener"] && message.contains("expected a sequence") {
            "listener: write each listener as a [[listener]] table".to_owned()
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

/// " in [[listener]]" for a key inside a listener table; "" at top level.
fn context(outer: &[String]) -> String {
    match outer.first() {
        Some(table) => format!(" in [[{table}]]"),
        None => String::new(),
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
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("[[{key}]]"))
            });
            assert!(documented, "examples/midge.toml does not show {key}");
        }
    }
}
