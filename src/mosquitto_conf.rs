//! Mosquitto's own configuration format (`midge -c /etc/mosquitto/mosquitto.conf`),
//! read into the same [`FileSettings`] as midge's TOML file.
//!
//! One `key value...` per line; `#` starts a comment line. Options after a
//! `listener PORT [HOST]` line apply to that listener; before the first one,
//! `port`, `bind_address` and the listener options configure Mosquitto's
//! default listener. Values keep Mosquitto's meaning, sentinels included
//! (the checks are the TOML file's, [`crate::config_file`]), and Mosquitto
//! 2.0's defaults apply: with no listener configured, local-only mode
//! (127.0.0.1:1883, anonymous clients allowed); with one, `allow_anonymous`
//! is false unless set; `persistence` is off unless set. Paths are used as
//! written (relative ones to the working directory), as Mosquitto does.
//!
//! Three kinds of lines are not simply read:
//! - keys midge does not know at all: an error naming the line (a typo);
//! - Mosquitto keys midge does not support whose absence cannot weaken
//!   security (`max_qos`, `memory_limit`, `log_dest syslog`, ...): listed in
//!   [`FileSettings::ignored`] with their lines, for one warning at start;
//! - Mosquitto keys whose absence would weaken security or lose data
//!   (plugins, PSK, `mount_point`, `crlfile`, bridges, ...): an error naming
//!   the line, so midge never runs more open than the file asks.

use crate::auth::{Acl, PasswordFile};
use crate::config::{Config, Listener, ListenerSecurity, TlsFiles, WebSockets};
use crate::config_file::{self, ConfigError, FileSettings, Ignored};
use crate::logging::Destination;
use log::LevelFilter;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mosquitto's port when none is given.
const DEFAULT_PORT: u16 = 1883;

/// Where a line is: the file (`None`: the main file) and its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct At {
    file: Option<PathBuf>,
    line: usize,
}

impl At {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.clone(), line: Some(self.line), message: message.into() }
    }
}

/// Keys whose absence would weaken security or lose data: refused, with why.
fn refused(key: &str) -> Option<&'static str> {
    const BRIDGE: &str = "bridges are not supported yet, and a bridge that silently did not run would lose \
                          the messages it should carry; remove the bridge or keep running it in Mosquitto";
    const PLUGIN: &str = "midge runs no Mosquitto plugins, and running without the checks the plugin makes \
                          would let in clients it refuses; use password_file and acl_file";
    let why = match key {
        "plugin" | "auth_plugin" | "global_plugin" => PLUGIN,
        k if k.starts_with("auth_opt_") || k.starts_with("plugin_opt_") => PLUGIN,
        "auth_plugin_deny_special_chars" => PLUGIN,
        "psk_hint" | "psk_file" => "TLS with pre-shared keys is not supported",
        "capath" => "a CA directory is not supported; name the CA certificates in one cafile",
        "crlfile" => {
            "certificate revocation lists are not supported, and without one revoked client \
                      certificates would be accepted"
        }
        "mount_point" => {
            "mount points are not supported, and without one the listener's clients would see \
                          every topic"
        }
        "bind_interface" => {
            "binding to an interface is not supported, and without it the listener would \
                             listen on every interface; use listener PORT ADDRESS"
        }
        "use_subject_as_username" => {
            "the certificate subject as user name is not supported; \
                                      use_identity_as_username takes the Common Name"
        }
        "use_username_as_clientid" => {
            "use_username_as_clientid is not supported, and without it a client \
                                       could take another user's client id"
        }
        "clientid_prefixes" => {
            "clientid_prefixes is not supported, and without it every client id would be \
                                let in"
        }
        "tls_engine" | "tls_engine_kpass_sha1" | "tls_keyform" => "OpenSSL engines are not supported (rustls)",
        "connection"
        | "address"
        | "addresses"
        | "cleansession"
        | "idle_timeout"
        | "keepalive_interval"
        | "local_cleansession"
        | "local_clientid"
        | "local_password"
        | "local_username"
        | "notifications"
        | "notifications_local_only"
        | "notification_topic"
        | "remote_clientid"
        | "remote_password"
        | "remote_username"
        | "restart_timeout"
        | "round_robin"
        | "start_type"
        | "threshold"
        | "topic"
        | "try_private" => BRIDGE,
        k if k.starts_with("bridge_") => BRIDGE,
        _ => return None,
    };
    Some(why)
}

/// Mosquitto keys midge accepts but does not act on.
fn unsupported(key: &str) -> bool {
    matches!(
        key,
        "allow_duplicate_messages"
            | "allow_zero_length_clientid"
            | "auto_id_prefix"
            | "check_retain_source"
            | "ciphers"
            | "ciphers_tls1.3"
            | "dhparamfile"
            | "http_dir"
            | "log_facility"
            | "log_timestamp_format"
            | "max_inflight_bytes"
            | "max_qos"
            | "memory_limit"
            | "upgrade_outgoing_qos"
            | "websockets_headers_size"
            | "websockets_log_level"
    )
}

/// Settings that follow Mosquitto's `per_listener_settings`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Security {
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
}

/// A listener as the file describes it.
#[derive(Debug, Default)]
struct Draft {
    /// Whether any option set it (the default listener starts only then).
    touched: bool,
    port: Option<u16>,
    host: Option<(String, At)>,
    ipv6: bool,
    max_connections: Option<usize>,
    websockets: bool,
    certfile: Option<(PathBuf, At)>,
    keyfile: Option<(PathBuf, At)>,
    cafile: Option<(PathBuf, At)>,
    require_certificate: Option<(bool, At)>,
    use_identity_as_username: Option<(bool, At)>,
    security: Security,
}

/// The parser's state across the main file and its includes.
struct Reader {
    config: Config,
    settings: FileSettings,
    global: Security,
    per_listener: Option<bool>,
    /// The first security option's line, for `per_listener_settings` after it.
    first_security: Option<At>,
    default_listener: Draft,
    listeners: Vec<Draft>,
    persistence: bool,
    persistence_location: Option<PathBuf>,
    log_types: Option<LevelFilter>,
}

/// Reads `path` (and what its `include_dir` lines name).
pub fn load(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
    parse(&text).map_err(|e| e.in_file(path))
}

/// Parses the text of a main configuration file.
pub fn parse(text: &str) -> Result<FileSettings, ConfigError> {
    let config = Config { data_dir: None, ..Config::default() };
    let mut reader = Reader {
        settings: FileSettings::new(config.clone()),
        config,
        global: Security::default(),
        per_listener: None,
        first_security: None,
        default_listener: Draft::default(),
        listeners: Vec::new(),
        persistence: false,
        persistence_location: None,
        log_types: None,
    };
    reader.read(text, None)?;
    reader.finish()
}

impl Reader {
    /// Reads one file's lines; `file` is `None` for the main file.
    fn read(&mut self, text: &str, file: Option<&Path>) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = At { file: file.map(Path::to_owned), line: i + 1 };
            let (key, value) = match line.split_once([' ', '\t']) {
                Some((key, value)) => (key, value.trim()),
                None => (line, ""),
            };
            if value.starts_with('=') || line.starts_with('[') {
                let message = format!(
                    "{line:?} is TOML, not mosquitto.conf: midge reads a file as its TOML only when the name ends \
                     in .toml"
                );
                return Err(at.error(message));
            }
            self.option(key, value, &at)?;
        }
        Ok(())
    }

    /// The listener options apply to: the last `listener`, or the default one.
    fn current(&mut self) -> &mut Draft {
        match self.listeners.last_mut() {
            Some(listener) => listener,
            None => &mut self.default_listener,
        }
    }

    /// Where security options go: the current listener with
    /// `per_listener_settings true`, otherwise every listener. Before the
    /// first `listener` line they set the default listener's, and a
    /// `password_file` there starts it (Mosquitto 2.0's rule; an
    /// `allow_anonymous` or `acl_file` alone does not).
    fn security(&mut self, at: &At, starts_default: bool) -> &mut Security {
        self.first_security.get_or_insert_with(|| at.clone());
        match self.per_listener == Some(true) {
            true => {
                let current = self.current();
                current.touched |= starts_default;
                &mut current.security
            }
            false => &mut self.global,
        }
    }

    fn option(&mut self, key: &str, value: &str, at: &At) -> Result<(), ConfigError> {
        if let Some(why) = refused(key) {
            return Err(at.error(format!("{key}: {why}")));
        }
        if unsupported(key) {
            self.ignore(key, at, "not supported");
            return Ok(());
        }
        match key {
            "listener" => self.listener(value, at)?,
            "port" => {
                let port = port(key, value, at)?;
                let default = &mut self.default_listener;
                (default.port, default.touched) = (Some(port), true);
            }
            "bind_address" => {
                let host = text(key, value, at)?;
                let default = &mut self.default_listener;
                (default.host, default.touched) = (Some((host.to_owned(), at.clone())), true);
            }
            "socket_domain" => {
                let ipv6 = match value {
                    "ipv4" => false,
                    "ipv6" => true,
                    _ => return Err(at.error(format!("{key}: {value:?} is not ipv4 or ipv6"))),
                };
                let current = self.current();
                (current.ipv6, current.touched) = (ipv6, true);
            }
            "protocol" => {
                let websockets = match value {
                    "mqtt" => false,
                    "websockets" => true,
                    _ => return Err(at.error(format!("{key}: {value:?} is not mqtt or websockets"))),
                };
                let current = self.current();
                current.websockets = websockets;
                current.touched |= websockets;
            }
            "max_connections" => {
                let n = integer(key, value, at)?;
                let limit = config_file::connection_limit(key, n).map_err(|m| at.error(m))?;
                let current = self.current();
                current.max_connections = limit;
                current.touched |= limit.is_some();
            }
            "certfile" | "keyfile" | "cafile" => {
                let path = (path(key, value, at)?, at.clone());
                let current = self.current();
                current.touched = true;
                match key {
                    "certfile" => current.certfile = Some(path),
                    "keyfile" => current.keyfile = Some(path),
                    _ => current.cafile = Some(path),
                }
            }
            "require_certificate" | "use_identity_as_username" => {
                let flag = (boolean(key, value, at)?, at.clone());
                let current = self.current();
                current.touched = true;
                match key {
                    "require_certificate" => current.require_certificate = Some(flag),
                    _ => current.use_identity_as_username = Some(flag),
                }
            }
            "tls_version" => match value {
                "tlsv1.2" => {}
                "tlsv1.3" => {
                    let message = "tls_version tlsv1.3: midge cannot refuse TLS 1.2 yet (it allows TLS 1.2 and \
                                   1.3); remove the line to allow both";
                    return Err(at.error(message));
                }
                "tlsv1.1" | "tlsv1" => {
                    let message = format!("tls_version {value}: midge's TLS (rustls) allows only TLS 1.2 and 1.3");
                    return Err(at.error(message));
                }
                _ => return Err(at.error(format!("tls_version: {value:?} is not tlsv1.3, tlsv1.2 or tlsv1.1"))),
            },
            "per_listener_settings" => {
                if let Some(first) = &self.first_security {
                    let message = format!(
                        "per_listener_settings must come before the security options (the first is at {})",
                        describe(first)
                    );
                    return Err(at.error(message));
                }
                self.per_listener = Some(boolean(key, value, at)?);
            }
            "allow_anonymous" => {
                let allow = boolean(key, value, at)?;
                self.security(at, false).allow_anonymous = Some(allow);
            }
            "password_file" | "acl_file" => {
                let path = path(key, value, at)?;
                readable(key, &path, at)?;
                let security = self.security(at, key == "password_file");
                match key {
                    "password_file" => security.password_file = Some(path),
                    _ => security.acl_file = Some(path),
                }
            }
            "persistence" => self.persistence = boolean(key, value, at)?,
            "persistence_location" => self.persistence_location = Some(path(key, value, at)?),
            "persistence_file" => self.note(key, at, "midge keeps its own store, midge.redb, beside it"),
            "autosave_interval" | "autosave_on_changes" => {
                self.note(key, at, "unnecessary: midge commits every acknowledged message")
            }
            "set_tcp_nodelay" => {
                boolean(key, value, at)?;
                self.note(key, at, "midge always sets TCP_NODELAY");
            }
            "connection_messages" => {
                boolean(key, value, at)?;
                self.note(key, at, "midge always logs connects and disconnects");
            }
            "persistent_client_expiration" => {
                let expiry = config_file::client_expiration(key, value).map_err(|m| at.error(m))?;
                self.config.session_expiry = Some(expiry);
            }
            "max_queued_messages" => self.config.max_queued = config_file::queued(integer(key, value, at)?),
            "max_queued_bytes" => {
                self.config.max_queued_bytes = usize::try_from(integer::<u64>(key, value, at)?).unwrap_or(usize::MAX)
            }
            "max_inflight_messages" => self.config.max_inflight = config_file::inflight(integer(key, value, at)?),
            "max_packet_size" => {
                let n = integer(key, value, at)?;
                self.config.max_packet_size = config_file::packet_size(key, n).map_err(|m| at.error(m))?;
            }
            "max_keepalive" => {
                let n = integer(key, value, at)?;
                self.config.max_keepalive = Some(config_file::keepalive(key, n).map_err(|m| at.error(m))?);
            }
            "message_size_limit" => {
                let n = integer(key, value, at)?;
                self.config.message_size_limit = config_file::message_size_limit(key, n).map_err(|m| at.error(m))?;
            }
            "queue_qos0_messages" => self.config.queue_qos0 = boolean(key, value, at)?,
            "retain_available" => self.config.retain_available = boolean(key, value, at)?,
            "max_topic_alias" => self.config.max_topic_alias = integer(key, value, at)?,
            "sys_interval" => self.config.sys_interval = Duration::from_secs(integer(key, value, at)?),
            "include_dir" => self.include_dir(value, at)?,
            "log_dest" => self.log_dest(value, at)?,
            "log_type" => {
                let level = log_type(value).ok_or_else(|| {
                    at.error(format!(
                        "log_type: {value:?} is not one of debug, error, warning, notice, information, \
                         subscribe, unsubscribe, websockets, none, all"
                    ))
                })?;
                self.log_types = Some(self.log_types.map_or(level, |l| l.max(level)));
            }
            "log_timestamp" => self.settings.log_timestamp = Some(boolean(key, value, at)?),
            "user" => self.settings.user = Some(text(key, value, at)?.to_owned()),
            "pid_file" => self.settings.pid_file = Some(path(key, value, at)?),
            "http_listener" => {
                let addr = value.parse().map_err(|_| {
                    at.error(format!("http_listener: {value:?} is not an IP address and port like 127.0.0.1:9090"))
                })?;
                self.config.http_listener = Some(addr);
            }
            _ => return Err(at.error(format!("unknown key {key:?}"))),
        }
        Ok(())
    }

    fn ignore(&mut self, key: &str, at: &At, why: &str) {
        let (file, line) = (at.file.clone(), at.line);
        self.settings.ignored.push(Ignored { key: key.to_owned(), file, line, why: why.to_owned() });
    }

    fn note(&mut self, key: &str, at: &At, why: &str) {
        self.settings.notes.push(format!("{key} ({}): {why}", describe(at)));
    }

    fn listener(&mut self, value: &str, at: &At) -> Result<(), ConfigError> {
        let mut words = value.split_whitespace();
        let port = port("listener", words.next().unwrap_or(""), at)?;
        let host = words.next().map(|h| (h.to_owned(), at.clone()));
        if words.next().is_some() {
            return Err(at.error("listener: expected PORT [ADDRESS]"));
        }
        let draft = Draft { touched: true, port: Some(port), host, ..Draft::default() };
        self.listeners.push(draft);
        Ok(())
    }

    fn include_dir(&mut self, value: &str, at: &At) -> Result<(), ConfigError> {
        // Mosquitto reads include_dir only in the main file; so does midge,
        // which also bounds the nesting to one level.
        if at.file.is_some() {
            return Err(at.error("include_dir: only the main configuration file may include a directory"));
        }
        let dir = path("include_dir", value, at)?;
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| at.error(format!("include_dir {}: cannot read the directory: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| at.error(format!("include_dir: cannot read {}: {e}", file.display())))?;
            self.read(&text, Some(&file))?;
        }
        Ok(())
    }

    fn log_dest(&mut self, value: &str, at: &At) -> Result<(), ConfigError> {
        let (kind, rest) = value.split_once([' ', '\t']).map_or((value, ""), |(k, r)| (k, r.trim()));
        let dest = match kind {
            "stdout" => Destination::Stdout,
            "stderr" => Destination::Stderr,
            "none" => Destination::None,
            "file" => Destination::File(path("log_dest file", rest, at)?),
            "syslog" | "topic" | "dlt" => {
                self.ignore(&format!("log_dest {kind}"), at, "not supported");
                return Ok(());
            }
            _ => return Err(at.error(format!("log_dest: {kind:?} is not stdout, stderr, file, syslog, topic or none"))),
        };
        match &self.settings.log_dest {
            Some(first) if *first != dest => {
                self.ignore(&format!("log_dest {kind}"), at, "midge logs to one destination, the first given");
            }
            _ => self.settings.log_dest = Some(dest),
        }
        Ok(())
    }

    /// Mosquitto's defaults and the listeners, into the settings.
    fn finish(mut self) -> Result<FileSettings, ConfigError> {
        let mut drafts = std::mem::take(&mut self.listeners);
        let default_listener = std::mem::take(&mut self.default_listener);
        if default_listener.touched {
            drafts.push(default_listener);
        }
        let per_listener = self.per_listener == Some(true);
        let mut listeners = Vec::new();
        if drafts.is_empty() {
            listeners.push(Listener::tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT)));
            // Mosquitto's local-only mode lets anonymous clients in;
            // midge keeps an explicit `allow_anonymous false`.
            self.global.allow_anonymous.get_or_insert(true);
        }
        // Mosquitto 2.0: anonymous clients are refused on a configured
        // listener unless allowed.
        self.global.allow_anonymous.get_or_insert(false);
        for draft in &drafts {
            listeners.push(listener(draft)?);
            if per_listener {
                let own = draft.security.clone();
                self.config.listener_security.push(ListenerSecurity {
                    allow_anonymous: Some(own.allow_anonymous.unwrap_or(false)),
                    password_file: own.password_file,
                    acl_file: own.acl_file,
                });
            }
        }
        self.config.listeners = listeners;
        self.config.allow_anonymous = self.global.allow_anonymous;
        self.config.password_file = self.global.password_file.take();
        self.config.acl_file = self.global.acl_file.take();
        if !self.config.listener_security.is_empty() {
            // Every listener has its own; an index without one is refused.
            self.config.allow_anonymous = Some(false);
        }
        self.settings.per_listener_settings = self.per_listener == Some(true);
        self.config.data_dir = match self.persistence {
            true => Some(self.persistence_location.take().unwrap_or_else(|| PathBuf::from("."))),
            false => None,
        };
        if self.persistence_location.is_some() && !self.persistence {
            self.settings.notes.push("persistence_location: persistence is off, nothing is stored".to_owned());
        }
        self.settings.log_level = self.log_types;
        self.settings.log_timestamp.get_or_insert(true);
        self.settings.mosquitto = true;
        self.settings.config = self.config;
        Ok(self.settings)
    }
}

/// One drafted listener into a [`Listener`].
fn listener(draft: &Draft) -> Result<Listener, ConfigError> {
    let port = draft.port.unwrap_or(DEFAULT_PORT);
    let bind = match &draft.host {
        Some((host, at)) => resolve(host, port, at)?,
        None if draft.ipv6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    };
    let tls = match (&draft.certfile, &draft.keyfile) {
        (Some((certfile, _)), Some((keyfile, _))) => {
            let require_certificate = draft.require_certificate.as_ref().is_some_and(|(r, _)| *r);
            if let (true, Some((_, at)), None) = (require_certificate, &draft.require_certificate, &draft.cafile) {
                return Err(at.error("require_certificate: needs a cafile to check client certificates"));
            }
            Some(TlsFiles {
                certfile: certfile.clone(),
                keyfile: keyfile.clone(),
                cafile: draft.cafile.as_ref().map(|(c, _)| c.clone()),
                require_certificate,
                use_identity_as_username: draft.use_identity_as_username.as_ref().is_some_and(|(u, _)| *u),
            })
        }
        (Some((_, at)), None) | (None, Some((_, at))) => {
            return Err(at.error("TLS needs both certfile and keyfile on the listener"));
        }
        (None, None) => {
            let tls_only = [
                draft.cafile.as_ref().map(|(_, at)| ("cafile", at)),
                draft.require_certificate.as_ref().map(|(_, at)| ("require_certificate", at)),
                draft.use_identity_as_username.as_ref().map(|(_, at)| ("use_identity_as_username", at)),
            ];
            if let Some((key, at)) = tls_only.into_iter().flatten().next() {
                return Err(at.error(format!("{key}: TLS needs certfile and keyfile on the listener")));
            }
            None
        }
    };
    // Mosquitto's WebSocket listeners take any path.
    let websockets = draft.websockets.then(|| WebSockets { path: None, ..WebSockets::default() });
    Ok(Listener { bind, max_connections: draft.max_connections, tls, websockets })
}

/// An IP address, or a host name resolved (its first IPv4 address if it has one).
fn resolve(host: &str, port: u16, at: &At) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| at.error(format!("cannot resolve listener address {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| at.error(format!("listener address {host:?} resolves to nothing")))
}

/// "line N" in the main file, "FILE line N" in an included one.
fn describe(at: &At) -> String {
    match &at.file {
        Some(file) => format!("{} line {}", file.display(), at.line),
        None => format!("line {}", at.line),
    }
}

/// The password or ACL file must be readable and well-formed now: a file
/// that failed at start would otherwise be found only when the broker opens.
fn readable(key: &str, path: &Path, at: &At) -> Result<(), ConfigError> {
    let result = match key {
        "password_file" => PasswordFile::load(path).map(drop),
        _ => Acl::load(path).map(drop),
    };
    result.map_err(|e| at.error(format!("{key} {}: {e}", path.display())))
}

fn text<'a>(key: &str, value: &'a str, at: &At) -> Result<&'a str, ConfigError> {
    match value {
        "" => Err(at.error(format!("{key}: missing value"))),
        v => Ok(v),
    }
}

fn path(key: &str, value: &str, at: &At) -> Result<PathBuf, ConfigError> {
    text(key, value, at).map(PathBuf::from)
}

fn boolean(key: &str, value: &str, at: &At) -> Result<bool, ConfigError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(at.error(format!("{key}: {value:?} is not true or false"))),
    }
}

fn integer<T: std::str::FromStr>(key: &str, value: &str, at: &At) -> Result<T, ConfigError> {
    value.parse().map_err(|_| {
        let kind = std::any::type_name::<T>();
        let range = match kind {
            "u16" => "an integer from 0 to 65535",
            "i64" => "an integer",
            _ => "a non-negative integer",
        };
        at.error(format!("{key}: {value:?} is not {range}"))
    })
}

fn port(key: &str, value: &str, at: &At) -> Result<u16, ConfigError> {
    match value.parse::<u16>() {
        Ok(0) => Err(at.error(format!("{key}: port 0 (a unix socket) is not supported"))),
        Ok(port) => Ok(port),
        Err(_) => Err(at.error(format!("{key}: {value:?} is not a port from 1 to 65535"))),
    }
}

/// A `log_type` as a level: the most verbose line given wins.
fn log_type(value: &str) -> Option<LevelFilter> {
    Some(match value {
        "none" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warning" => LevelFilter::Warn,
        "notice" | "information" | "subscribe" | "unsubscribe" | "websockets" => LevelFilter::Info,
        "debug" | "all" => LevelFilter::Debug,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> FileSettings {
        parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn config(text: &str) -> Config {
        parse_ok(text).config
    }

    /// The error's message and its line.
    fn error(text: &str) -> (String, Option<usize>) {
        let e = parse(text).expect_err("should be refused");
        (e.to_string(), e.line())
    }

    /// A temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("midge-mosquitto-conf-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn file(&self, name: &str, text: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ports(c: &Config) -> Vec<u16> {
        c.listeners.iter().map(|l| l.bind.port()).collect()
    }

    #[test]
    fn an_empty_file_is_mosquittos_local_only_mode() {
        let s = parse_ok("# nothing\n\n");
        let c = &s.config;
        assert_eq!(c.listeners, vec![Listener::tcp(addr("127.0.0.1:1883"))]);
        assert_eq!(c.allow_anonymous, Some(true));
        assert_eq!(c.data_dir, None, "persistence is off unless set");
        assert_eq!((c.max_inflight, c.max_queued), (20, 1000));
        assert!(c.retain_available && c.message_size_limit.is_none());
        assert_eq!((s.log_dest.clone(), s.log_timestamp, s.log_level), (None, Some(true), None));
        assert!(s.mosquitto && s.ignored.is_empty() && s.notes.is_empty());
        // Local-only mode allows anonymous clients; an explicit false is kept.
        assert_eq!(config("allow_anonymous false").allow_anonymous, Some(false));
    }

    #[test]
    fn a_listener_makes_anonymous_clients_refused_unless_allowed() {
        let c = config("listener 1884\n");
        assert_eq!(c.listeners, vec![Listener::tcp(addr("0.0.0.0:1884"))]);
        assert_eq!(c.allow_anonymous, Some(false));
        assert_eq!(config("allow_anonymous true\nlistener 1884").allow_anonymous, Some(true));
        assert_eq!(config("port 1885").listeners, vec![Listener::tcp(addr("0.0.0.0:1885"))]);
        assert_eq!(config("port 1885").allow_anonymous, Some(false));
        assert_eq!(config("bind_address 127.0.0.2").listeners, vec![Listener::tcp(addr("127.0.0.2:1883"))]);
    }

    #[test]
    fn listeners_and_their_options() {
        let c = config(
            "max_connections 5\nport 1890\n\
             listener 1891 127.0.0.1\nmax_connections -1\nprotocol websockets\n\
             listener 8883 ::1\nsocket_domain ipv6\ncertfile /tls/cert.pem\nkeyfile /tls/key.pem\n\
             cafile /tls/ca.pem\nrequire_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n\
             listener 1892 localhost\nprotocol mqtt\nlistener 1893\nsocket_domain ipv6\n",
        );
        let bound: Vec<SocketAddr> = c.listeners.iter().map(|l| l.bind).collect();
        assert_eq!(
            bound,
            [
                addr("127.0.0.1:1891"),
                addr("[::1]:8883"),
                addr("127.0.0.1:1892"),
                addr("[::]:1893"),
                addr("0.0.0.0:1890")
            ]
        );
        let default = &c.listeners[4];
        assert_eq!((default.max_connections, default.websockets.is_some()), (Some(5), false));
        assert_eq!(c.listeners[0].websockets, Some(WebSockets { path: None, trust_forwarded_for: false }));
        assert_eq!(c.listeners[0].max_connections, None);
        assert_eq!(
            c.listeners[1].tls,
            Some(TlsFiles {
                certfile: "/tls/cert.pem".into(),
                keyfile: "/tls/key.pem".into(),
                cafile: Some("/tls/ca.pem".into()),
                require_certificate: true,
                use_identity_as_username: true,
            })
        );
        assert!(c.listeners[2].tls.is_none() && c.listeners[2].websockets.is_none());
    }

    #[test]
    fn every_global_key() {
        let dir = Dir::new("every");
        let passwd = dir.file("passwd", "");
        let acl = dir.file("acl", "topic read a/#\n");
        let s = parse_ok(&format!(
            "per_listener_settings false\nallow_anonymous true\npassword_file {passwd}\nacl_file {acl}\n\
             persistence true\npersistence_location /var/lib/mosquitto/\npersistence_file mosquitto.db\n\
             autosave_interval 1800\nautosave_on_changes false\nmax_queued_messages 0\nmax_queued_bytes 1000\n\
             max_inflight_messages 0\nmax_packet_size 4096\nmax_keepalive 300\nmessage_size_limit 100\n\
             queue_qos0_messages true\nretain_available false\nsys_interval 0\n\
             persistent_client_expiration 2d\nlog_dest stdout\nlog_type error\nlog_type warning\n\
             log_timestamp false\nuser mosquitto\npid_file /run/midge.pid\nhttp_listener 127.0.0.1:9090\n\
             set_tcp_nodelay true\nconnection_messages true\nlistener 1883\n"
        ));
        let c = &s.config;
        assert_eq!(c.allow_anonymous, Some(true));
        assert_eq!(c.password_file.as_deref(), Some(Path::new(&passwd)));
        assert_eq!(c.acl_file.as_deref(), Some(Path::new(&acl)));
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/mosquitto/")));
        assert_eq!((c.max_queued, c.max_queued_bytes, c.max_inflight), (usize::MAX, 1000, 65535));
        assert_eq!((c.max_packet_size, c.max_keepalive, c.message_size_limit), (4096, Some(300), Some(100)));
        assert!(c.queue_qos0 && !c.retain_available);
        assert_eq!(c.sys_interval, Duration::ZERO);
        assert_eq!(c.session_expiry, Some(Duration::from_secs(2 * 86400)));
        assert_eq!(c.http_listener, Some(addr("127.0.0.1:9090")));
        assert_eq!(s.log_dest, Some(Destination::Stdout));
        assert_eq!((s.log_level, s.log_timestamp), (Some(LevelFilter::Warn), Some(false)));
        assert_eq!((s.user.as_deref(), s.pid_file.as_deref()), (Some("mosquitto"), Some(Path::new("/run/midge.pid"))));
        assert!(!s.per_listener_settings && s.ignored.is_empty(), "{:?}", s.ignored);
        let notes = s.notes.join("\n");
        assert!(notes.contains("autosave_interval (line 8): unnecessary: midge commits every acknowledged message"));
        assert!(notes.contains("persistence_file (line 7)") && notes.contains("set_tcp_nodelay (line 27)"), "{notes}");
    }

    #[test]
    fn persistence_is_off_unless_set() {
        assert_eq!(config("persistence_location /var/lib/x/").data_dir, None);
        assert_eq!(config("persistence false").data_dir, None);
        assert_eq!(config("persistence true").data_dir, Some(PathBuf::from(".")));
    }

    #[test]
    fn log_options() {
        let level = |text: &str| parse_ok(text).log_level;
        assert_eq!(level("log_type none"), Some(LevelFilter::Off));
        assert_eq!(level("log_type information\nlog_type debug"), Some(LevelFilter::Debug));
        assert_eq!(level("log_type all"), Some(LevelFilter::Debug));
        assert_eq!(level("log_type subscribe"), Some(LevelFilter::Info));
        let dest = |text: &str| parse_ok(text).log_dest;
        assert_eq!(dest("log_dest stderr"), Some(Destination::Stderr));
        assert_eq!(dest("log_dest none"), Some(Destination::None));
        assert_eq!(dest("log_dest file /var/log/m.log"), Some(Destination::File("/var/log/m.log".into())));
        let s = parse_ok("log_dest syslog\nlog_dest stdout\nlog_dest topic\nlog_dest file /x.log\n");
        assert_eq!(s.log_dest, Some(Destination::Stdout));
        let ignored: Vec<String> = s.ignored.iter().map(ToString::to_string).collect();
        assert_eq!(ignored, ["log_dest syslog (line 1)", "log_dest topic (line 3)", "log_dest file (line 4)"]);
        assert_eq!(error("log_type loud").1, Some(1));
        assert_eq!(error("log_dest file").0, "line 1: log_dest file: missing value");
    }

    #[test]
    fn unsupported_keys_are_listed_with_their_lines() {
        let s = parse_ok("max_qos 1\n\nmemory_limit 100\nlistener 1883\nhttp_dir /www\nallow_anonymous true\n");
        let ignored: Vec<String> = s.ignored.iter().map(ToString::to_string).collect();
        assert_eq!(ignored, ["max_qos (line 1)", "memory_limit (line 3)", "http_dir (line 5)"]);
    }

    #[test]
    fn a_toml_file_is_told_apart() {
        let (e, line) = error("# midge\nallow_anonymous = true\n");
        assert_eq!(line, Some(2));
        assert!(e.contains("\"allow_anonymous = true\" is TOML, not mosquitto.conf"), "{e}");
        assert_eq!(error("[[listener]]\n").1, Some(1));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_its_line() {
        let (e, line) = error("listener 1883\n\nmax_conections 5\n");
        assert_eq!((e.as_str(), line), ("line 3: unknown key \"max_conections\"", Some(3)));
    }

    #[test]
    fn options_whose_absence_weakens_security_are_refused() {
        for (text, needle) in [
            ("plugin /usr/lib/x.so", "midge runs no Mosquitto plugins"),
            ("auth_plugin /usr/lib/x.so", "plugins"),
            ("auth_opt_db_host localhost", "plugins"),
            ("plugin_opt_x y", "plugins"),
            ("listener 8883\npsk_hint hint", "pre-shared keys"),
            ("psk_file /etc/psk", "pre-shared keys"),
            ("listener 1883\nmount_point a/", "mount points"),
            ("capath /etc/ssl/certs", "one cafile"),
            ("crlfile /etc/crl.pem", "revoked"),
            ("bind_interface eth0", "every interface"),
            ("use_subject_as_username true", "Common Name"),
            ("use_username_as_clientid true", "client id"),
            ("clientid_prefixes abc", "client id"),
            ("connection bridge1", "bridges are not supported yet"),
            ("address 10.0.0.1:1883", "bridges are not supported yet"),
            ("bridge_cafile /ca.pem", "lose the messages"),
            ("tls_version tlsv1.3", "cannot refuse TLS 1.2"),
            ("tls_version tlsv1.1", "only TLS 1.2 and 1.3"),
        ] {
            let (e, line) = error(text);
            assert_eq!(line, Some(text.lines().count()), "{text}: {e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_line() {
        for (text, message) in [
            (
                "listener 1883\nmax_connections 0",
                "line 2: max_connections: 0 would refuse every client; -1 means no limit",
            ),
            (
                "max_packet_size 1",
                "line 1: max_packet_size: 1 is not between 2 and 268435460 (0: the protocol maximum)",
            ),
            ("max_keepalive 0", "line 1: max_keepalive: 0 would refuse every client; leave it out for no limit"),
            ("max_keepalive 70000", "line 1: max_keepalive: \"70000\" is not an integer from 0 to 65535"),
            ("max_inflight_messages -1", "line 1: max_inflight_messages: \"-1\" is not an integer from 0 to 65535"),
            ("sys_interval ten", "line 1: sys_interval: \"ten\" is not a non-negative integer"),
            ("allow_anonymous yes", "line 1: allow_anonymous: \"yes\" is not true or false"),
            ("listener 0 /tmp/sock", "line 1: listener: port 0 (a unix socket) is not supported"),
            ("listener 70000", "line 1: listener: \"70000\" is not a port from 1 to 65535"),
            ("listener 1883 a b", "line 1: listener: expected PORT [ADDRESS]"),
            ("port", "line 1: port: \"\" is not a port from 1 to 65535"),
            ("protocol http", "line 1: protocol: \"http\" is not mqtt or websockets"),
            (
                "message_size_limit 268435456",
                "line 1: message_size_limit: 268435456 is larger than MQTT's largest payload, 268435455 (0: no limit)",
            ),
            (
                "persistent_client_expiration soon",
                "line 1: persistent_client_expiration: \"soon\" is not a duration like 1h, 2d, 1w, 1m (30 days) or 1y",
            ),
            ("http_listener 9090", "line 1: http_listener: \"9090\" is not an IP address and port like 127.0.0.1:9090"),
            ("listener 8883\ncertfile /c.pem", "line 2: TLS needs both certfile and keyfile on the listener"),
            ("listener 8883\ncafile /ca.pem", "line 2: cafile: TLS needs certfile and keyfile on the listener"),
            (
                "listener 8883\ncertfile /c\nkeyfile /k\nrequire_certificate true",
                "line 4: require_certificate: needs a cafile to check client certificates",
            ),
        ] {
            assert_eq!(error(text).0, message, "{text}");
        }
        assert_eq!(config("message_size_limit 0").message_size_limit, None);
        assert_eq!(config("max_packet_size 0").max_packet_size, 268_435_460);
    }

    #[test]
    fn password_and_acl_files_must_be_readable() {
        let (e, line) = error("listener 1883\nacl_file /nonexistent/midge-acl\n");
        assert_eq!(line, Some(2));
        assert!(e.starts_with("line 2: acl_file /nonexistent/midge-acl: cannot read file: "), "{e}");
        let dir = Dir::new("unreadable");
        let bad = dir.file("acl", "topic read a\nwhatever\n");
        let (e, _) = error(&format!("acl_file {bad}"));
        assert!(e.starts_with(&format!("line 1: acl_file {bad}: line 2: ")), "{e}");
        let (e, _) = error("password_file /nonexistent/midge-passwd");
        assert!(e.starts_with("line 1: password_file /nonexistent/midge-passwd: cannot read file"), "{e}");
    }

    #[test]
    fn per_listener_settings() {
        let dir = Dir::new("per-listener");
        let passwd = dir.file("passwd", "");
        let acl = dir.file("acl", "topic read a/#\n");
        let s = parse_ok(&format!(
            "per_listener_settings true\nlistener 1883 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n\
             listener 1884\npassword_file {passwd}\nlistener 1885\n"
        ));
        assert!(s.per_listener_settings);
        let c = &s.config;
        let own = |allow, passwords: Option<&str>, acl: Option<&str>| ListenerSecurity {
            allow_anonymous: Some(allow),
            password_file: passwords.map(Into::into),
            acl_file: acl.map(Into::into),
        };
        let expected = [own(true, None, Some(&acl)), own(false, Some(&passwd), None), own(false, None, None)];
        assert_eq!(c.listener_security, expected);
        assert_eq!((c.allow_anonymous, c.password_file.as_ref(), c.acl_file.as_ref()), (Some(false), None, None));
        // Options before the first listener belong to the default listener;
        // a password_file starts it, an allow_anonymous alone does not.
        let c = config(&format!("per_listener_settings true\npassword_file {passwd}\nlistener 1884\n"));
        assert_eq!(ports(&c), [1884, 1883]);
        assert_eq!(c.listener_security, [own(false, None, None), own(false, Some(&passwd), None)]);
        let c = config("per_listener_settings true\nallow_anonymous true\nlistener 1884\n");
        assert_eq!(ports(&c), [1884]);
        assert_eq!(c.listener_security, [own(false, None, None)]);
        // Without per_listener_settings, the options apply to every listener.
        let c = config("listener 1883\nallow_anonymous true\nlistener 1884\n");
        assert!(c.listener_security.is_empty() && c.allow_anonymous == Some(true));
        // It must come before the security options, as in Mosquitto.
        let (e, line) = error("allow_anonymous true\nper_listener_settings true\n");
        assert_eq!(line, Some(2));
        assert!(e.contains("must come before the security options (the first is at line 1)"), "{e}");
    }

    #[test]
    fn include_dir_reads_every_conf_file_sorted() {
        let dir = Dir::new("include");
        let conf_d = dir.0.join("conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        std::fs::write(conf_d.join("b.conf"), "listener 1884\nmax_qos 1\n").unwrap();
        std::fs::write(conf_d.join("a.conf"), "listener 1883\n").unwrap();
        std::fs::write(conf_d.join("c.txt"), "not read\n").unwrap();
        let s = parse_ok(&format!("allow_anonymous true\ninclude_dir {}\n", conf_d.display()));
        assert_eq!(ports(&s.config), [1883, 1884]);
        assert_eq!(s.ignored[0].to_string(), format!("max_qos ({} line 2)", conf_d.join("b.conf").display()));
        // An error in an included file names that file and its line.
        std::fs::write(conf_d.join("c.conf"), "\nnot_a_key 1\n").unwrap();
        let (e, _) = error(&format!("include_dir {}\n", conf_d.display()));
        assert_eq!(e, format!("{} line 2: unknown key \"not_a_key\"", conf_d.join("c.conf").display()));
        // Nesting is refused; a missing directory names the line.
        std::fs::write(conf_d.join("c.conf"), format!("include_dir {}\n", conf_d.display())).unwrap();
        let (e, _) = error(&format!("include_dir {}\n", conf_d.display()));
        assert!(e.ends_with("include_dir: only the main configuration file may include a directory"), "{e}");
        let (e, line) = error("listener 1883\ninclude_dir /nonexistent/midge.d\n");
        assert_eq!(line, Some(2));
        assert!(e.starts_with("line 2: include_dir /nonexistent/midge.d: cannot read the directory: "), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = Dir::new("load");
        let file = dir.file("mosquitto.conf", "listener 1883\nbogus 1\n");
        let e = load(Path::new(&file)).unwrap_err().to_string();
        assert_eq!(e, format!("{file} line 2: unknown key \"bogus\""));
    }

    #[test]
    fn debians_and_the_annotated_example_parse() {
        // Debian's file as shipped, with its include_dir pointed at a copy.
        let dir = Dir::new("debian");
        let conf_d = dir.0.join("conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        let debian = include_str!("../tests/fixtures/mosquitto/debian.conf")
            .replace("/etc/mosquitto/conf.d", conf_d.to_str().unwrap());
        let s = parse_ok(&debian);
        assert_eq!(s.config.data_dir, Some(PathBuf::from("/var/lib/mosquitto/")));
        assert_eq!(s.log_dest, Some(Destination::File("/var/log/mosquitto/mosquitto.log".into())));
        assert_eq!(s.pid_file, Some(PathBuf::from("/run/mosquitto/mosquitto.pid")));
        assert_eq!(s.config.listeners, vec![Listener::tcp(addr("127.0.0.1:1883"))]);
        // The annotated example: everything commented out, Mosquitto's defaults.
        let s = parse_ok(include_str!("../tests/fixtures/mosquitto/example.conf"));
        assert_eq!(s.config.listeners, vec![Listener::tcp(addr("127.0.0.1:1883"))]);
        assert_eq!((s.config.allow_anonymous, s.config.data_dir.clone()), (Some(true), None));
        assert!(s.ignored.is_empty() && s.notes.is_empty());
    }
}
