//! The configuration file (`midge --config midge.toml`): TOML whose key
//! names follow `mosquitto.conf` wherever Mosquitto has one, read into a
//! [`Config`]. `examples/midge.toml` documents every key.

use crate::codec::MAX_REMAINING_LENGTH;
use crate::config::{Config, Listener, TlsFiles};
use log::LevelFilter;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, io};
use toml::Spanned;

/// What a configuration file sets.
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// The broker configuration: defaults, overridden by the file.
    pub config: Config,
    /// `log_level`, if the file sets it.
    pub log_level: Option<LevelFilter>,
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Io(PathBuf, io::Error),
    /// A key is unknown or its value is wrong.
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the offending key, when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            ConfigError::Invalid { file, line: Some(line), message } => write!(f, "{file} line {line}: {message}"),
            ConfigError::Invalid { file, line: None, message } => write!(f, "{file}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    persistence: Option<bool>,
    persistence_location: Option<PathBuf>,
    max_connections: Option<i64>,
    max_packet_size: Option<Spanned<u64>>,
    max_keepalive: Option<u16>,
    max_inflight_messages: Option<u16>,
    max_queued_messages: Option<u64>,
    queue_qos0_messages: Option<bool>,
    sys_interval: Option<u64>,
    persistent_client_expiration: Option<Spanned<String>>,
    max_publish_rate: Option<u32>,
    connect_timeout: Option<Spanned<u64>>,
    log_level: Option<Spanned<String>>,
    #[serde(default)]
    listener: Vec<Spanned<ListenerTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTable {
    bind: Spanned<String>,
    max_connections: Option<i64>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cafile: Option<PathBuf>,
    require_certificate: Option<bool>,
    use_identity_as_username: Option<bool>,
}

/// Reads and parses `path`; relative paths in it are relative to its directory.
pub fn load(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, &path.display().to_string())
}

/// Parses configuration text; `base` resolves relative paths, `name` is the
/// file's name for error messages.
pub fn parse(text: &str, base: &Path, name: &str) -> Result<FileSettings, ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
        file: name.to_owned(),
        line: Some(text[..span.start.min(text.len())].matches('\n').count() + 1),
        message,
    };
    let file: File = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => at(span, e.message().to_owned()),
        None => ConfigError::Invalid { file: name.to_owned(), line: None, message: e.message().to_owned() },
    })?;
    let path = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let mut config = Config {
        allow_anonymous: file.allow_anonymous,
        password_file: file.password_file.map(path),
        acl_file: file.acl_file.map(path),
        ..Config::default()
    };
    if let Some(location) = file.persistence_location {
        config.data_dir = Some(path(location));
    }
    if file.persistence == Some(false) {
        config.data_dir = None;
    }
    config.max_connections = file.max_connections.and_then(unlimited);
    if let Some(size) = file.max_packet_size {
        let max = (MAX_REMAINING_LENGTH + 5) as u64;
        config.max_packet_size = match *size.get_ref() {
            0 => max as usize,
            n if (2..=max).contains(&n) => n as usize,
            n => {
                return Err(at(
                    size.span(),
                    format!("max_packet_size: {n} is not between 2 and {max} (0: the maximum)"),
                ));
            }
        };
    }
    config.max_keepalive = file.max_keepalive;
    if let Some(n) = file.max_inflight_messages {
        config.max_inflight = if n == 0 { usize::from(u16::MAX) } else { usize::from(n) };
    }
    if let Some(n) = file.max_queued_messages {
        config.max_queued = if n == 0 { usize::MAX } else { usize::try_from(n).unwrap_or(usize::MAX) };
    }
    config.queue_qos0 = file.queue_qos0_messages.unwrap_or(false);
    if let Some(seconds) = file.sys_interval {
        config.sys_interval = Duration::from_secs(seconds);
    }
    if let Some(expiry) = file.persistent_client_expiration {
        let parsed = mosquitto_duration(expiry.get_ref());
        let message =
            || format!("persistent_client_expiration: {:?} is not a duration like 2h, 14d, 1w", expiry.get_ref());
        config.session_expiry = Some(parsed.ok_or_else(|| at(expiry.span(), message()))?);
    }
    config.max_publish_rate = file.max_publish_rate;
    if let Some(seconds) = file.connect_timeout {
        match *seconds.get_ref() {
            0 => return Err(at(seconds.span(), "connect_timeout: must be at least 1 second".into())),
            n => config.connect_timeout = Duration::from_secs(n),
        }
    }
    let log_level = match file.log_level {
        Some(level) => Some(level.get_ref().parse::<LevelFilter>().map_err(|_| {
            at(level.span(), format!("log_level: {:?} is not one of error, warn, info, debug, trace", level.get_ref()))
        })?),
        None => None,
    };
    if !file.listener.is_empty() {
        config.listeners = file.listener.into_iter().map(|l| listener(l, &path, &at)).collect::<Result<_, _>>()?;
    }
    Ok(FileSettings { config, log_level })
}

fn listener(
    table: Spanned<ListenerTable>,
    path: &impl Fn(PathBuf) -> PathBuf,
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<Listener, ConfigError> {
    let span = table.span();
    let l = table.into_inner();
    let bind = l.bind.get_ref().parse().map_err(|_| {
        at(l.bind.span(), format!("listener bind: {:?} is not an address like 127.0.0.1:1883", l.bind.get_ref()))
    })?;
    let tls = match (l.certfile, l.keyfile) {
        (Some(certfile), Some(keyfile)) => Some(TlsFiles {
            certfile: path(certfile),
            keyfile: path(keyfile),
            cafile: l.cafile.map(path),
            require_certificate: l.require_certificate.unwrap_or(false),
            use_identity_as_username: l.use_identity_as_username.unwrap_or(false),
        }),
        (None, None) if l.cafile.is_none() && l.require_certificate.is_none() => None,
        _ => return Err(at(span, "listener: TLS needs both certfile and keyfile".into())),
    };
    Ok(Listener { bind, max_connections: l.max_connections.and_then(unlimited), tls })
}

/// Mosquitto's `-1` (or any negative) means no limit.
fn unlimited(n: i64) -> Option<usize> {
    usize::try_from(n).ok()
}

/// Mosquitto's duration syntax: a number followed by h, d, w, m (30 days) or y.
fn mosquitto_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let n: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let hours = match unit {
        'h' => 1,
        'd' => 24,
        'w' => 24 * 7,
        'm' => 24 * 30,
        'y' => 24 * 365,
        _ => return None,
    };
    (n > 0).then(|| Duration::from_secs(n * hours * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> FileSettings {
        parse(text, Path::new("/etc/midge"), "midge.toml").unwrap()
    }

    fn error(text: &str) -> String {
        parse(text, Path::new("/etc/midge"), "midge.toml").unwrap_err().to_string()
    }

    #[test]
    fn every_key() {
        let s = parse_ok(
            r#"
allow_anonymous = true
password_file = "passwd"
acl_file = "/abs/acl"
persistence_location = "data"
max_connections = 100
max_packet_size = 4096
max_keepalive = 300
max_inflight_messages = 10
max_queued_messages = 50
queue_qos0_messages = true
sys_interval = 0
persistent_client_expiration = "2d"
max_publish_rate = 500
connect_timeout = 5
log_level = "debug"

[[listener]]
bind = "0.0.0.0:1883"
max_connections = 10

[[listener]]
bind = "127.0.0.1:8883"
certfile = "server.pem"
keyfile = "/keys/server.key"
cafile = "ca.pem"
require_certificate = true
use_identity_as_username = true
"#,
        );
        let c = s.config;
        assert_eq!(s.log_level, Some(LevelFilter::Debug));
        assert_eq!(c.allow_anonymous, Some(true));
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/midge/passwd")));
        assert_eq!(c.acl_file, Some(PathBuf::from("/abs/acl")));
        assert_eq!(c.data_dir, Some(PathBuf::from("/etc/midge/data")));
        assert_eq!((c.max_connections, c.max_packet_size, c.max_keepalive), (Some(100), 4096, Some(300)));
        assert_eq!((c.max_inflight, c.max_queued, c.queue_qos0), (10, 50, true));
        assert_eq!(c.sys_interval, Duration::ZERO);
        assert_eq!(c.session_expiry, Some(Duration::from_secs(2 * 86400)));
        assert_eq!((c.max_publish_rate, c.connect_timeout), (Some(500), Duration::from_secs(5)));
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.listeners[0],
            Listener { max_connections: Some(10), ..Listener::tcp("0.0.0.0:1883".parse().unwrap()) }
        );
        let tls = c.listeners[1].tls.clone().unwrap();
        assert_eq!(tls.certfile, PathBuf::from("/etc/midge/server.pem"));
        assert_eq!(tls.keyfile, PathBuf::from("/keys/server.key"));
        assert_eq!(tls.cafile, Some(PathBuf::from("/etc/midge/ca.pem")));
        assert!(tls.require_certificate && tls.use_identity_as_username);
    }

    #[test]
    fn defaults_and_mosquitto_sentinels() {
        let s = parse_ok("");
        assert_eq!(s.config.listeners, Config::default().listeners);
        let c = parse_ok("persistence = false\nmax_connections = -1\nmax_packet_size = 0\nmax_queued_messages = 0\nmax_inflight_messages = 0\n").config;
        assert_eq!(c.data_dir, None);
        assert_eq!(c.max_connections, None);
        assert_eq!(c.max_packet_size, MAX_REMAINING_LENGTH + 5);
        assert_eq!((c.max_queued, c.max_inflight), (usize::MAX, 65535));
    }

    #[test]
    fn durations() {
        assert_eq!(mosquitto_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(mosquitto_duration("2w"), Some(Duration::from_secs(14 * 86400)));
        assert_eq!(mosquitto_duration("1y"), Some(Duration::from_secs(365 * 86400)));
        assert_eq!(mosquitto_duration("5"), None);
        assert_eq!(mosquitto_duration("0d"), None);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = error("allow_anonymous = true\n\nmax_conections = 5\n");
        assert!(e.starts_with("midge.toml line 3:") && e.contains("max_conections"), "{e}");
        let e = error("sys_interval = \"ten\"\n");
        assert!(e.starts_with("midge.toml line 1:"), "{e}");
        let e = error("\npersistent_client_expiration = \"soon\"\n");
        assert!(e.starts_with("midge.toml line 2:") && e.contains("persistent_client_expiration"), "{e}");
        let e = error("log_level = \"loud\"\n");
        assert!(e.contains("log_level"), "{e}");
        let e = error("[[listener]]\nmax_connections = 1\n");
        assert!(e.contains("bind"), "{e}");
        let e = error("[[listener]]\nbind = \"nowhere\"\n");
        assert!(e.starts_with("midge.toml line 2:") && e.contains("listener bind"), "{e}");
        let e = error("[[listener]]\nbind = \"127.0.0.1:8883\"\ncertfile = \"a.pem\"\n");
        assert!(e.contains("certfile and keyfile"), "{e}");
    }

    #[test]
    fn the_example_file_parses() {
        let s = parse(include_str!("../examples/midge.toml"), Path::new("."), "midge.toml").unwrap();
        assert_eq!(s.config.listeners, Config::default().listeners);
    }
}
