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
//! A `connection NAME` line starts a bridge ([`crate::config::Bridge`]): the
//! bridge options after it (`address`, `topic`, `remote_*`, `bridge_*`,
//! ...) are that bridge's, up to the next `connection` or the end of the
//! file, as in Mosquitto, where a bridge option in an included file needs a
//! `connection` in that file. Every other option after a `connection` line
//! stays what it is before one (a `listener` line does not end the bridge),
//! except `max_queued_messages` and `max_queued_bytes`, which set the
//! bridge's own queue there (noted, as Mosquitto would set every client's).
//!
//! Three kinds of lines are not simply read:
//! - keys midge does not know at all: an error naming the line (a typo);
//! - Mosquitto keys midge does not support whose absence cannot weaken
//!   security (`max_qos`, `memory_limit`, `log_dest syslog`,
//!   `bridge_tls_version`, ...): listed in [`FileSettings::ignored`] with
//!   their lines, for one warning at start;
//! - Mosquitto keys whose absence would weaken security or lose data
//!   (plugins, PSK, `mount_point`, `crlfile`, `bridge_require_ocsp true`,
//!   ...): an error naming the line, so midge never runs more open than the
//!   file asks.

use crate::auth::{Acl, PasswordFile};
use crate::config::{Bridge, BridgeDirection, BridgeTls, Config, Listener, ListenerSecurity, TlsFiles, WebSockets};
use crate::config_file::{self, ConfigError, FileSettings, Ignored};
use crate::logging::Destination;
use crate::packet::QoS;
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

    /// One of the shared checks' results, its error naming this line.
    fn check<T>(&self, result: Result<T, String>) -> Result<T, ConfigError> {
        result.map_err(|m| self.error(m))
    }
}

/// Keys whose absence would weaken security or lose data: refused, with why.
fn refused(key: &str) -> Option<&'static str> {
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
        "bridge_identity" | "bridge_psk" => {
            "TLS with pre-shared keys is not supported (rustls has no PSK); use bridge_cafile, and \
             bridge_certfile with bridge_keyfile for a client certificate"
        }
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

/// Keys of a `connection NAME` block: they need a `connection` line before
/// them (in the same file, as in Mosquitto) and apply to that bridge.
fn bridge_key(key: &str) -> bool {
    matches!(
        key,
        "address"
            | "addresses"
            | "round_robin"
            | "topic"
            | "bridge_protocol_version"
            | "remote_clientid"
            | "clientid"
            | "local_clientid"
            | "remote_username"
            | "username"
            | "remote_password"
            | "password"
            | "cleansession"
            | "local_cleansession"
            | "keepalive_interval"
            | "restart_timeout"
            | "start_type"
            | "threshold"
            | "idle_timeout"
            | "notifications"
            | "notification_topic"
            | "try_private"
            | "bridge_cafile"
            | "bridge_capath"
            | "bridge_certfile"
            | "bridge_keyfile"
            | "bridge_insecure"
            | "bridge_require_ocsp"
    ) || unsupported_bridge_key(key)
}

/// Bridge keys midge accepts but does not act on (listed in
/// [`FileSettings::ignored`]): tuning whose absence loses nothing and opens
/// nothing.
fn unsupported_bridge_key(key: &str) -> bool {
    matches!(
        key,
        "notifications_local_only"
            | "bridge_attempt_unsubscribe"
            | "bridge_outgoing_retain"
            | "local_username"
            | "local_password"
            | "bridge_max_packet_size"
            | "bridge_tls_version"
            | "bridge_alpn"
            | "bridge_bind_address"
            | "bridge_ciphers"
            | "bridge_ciphers_tls1.3"
            | "bridge_max_topic_alias"
            | "bridge_receive_maximum"
            | "bridge_session_expiry_interval"
            | "bridge_tcp_keepalive"
            | "bridge_tcp_user_timeout"
            | "bridge_reload_type"
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

/// A bridge as its `connection` block describes it, with the lines of the
/// options checked once the block is complete.
#[derive(Debug)]
struct BridgeDraft {
    bridge: Bridge,
    /// The `connection` line.
    at: At,
    address: Option<At>,
    remote_password: Option<At>,
    local_cleansession: Option<(bool, At)>,
    cafile: Option<(PathBuf, At)>,
    capath: Option<(PathBuf, At)>,
    certfile: Option<(PathBuf, At)>,
    keyfile: Option<(PathBuf, At)>,
    insecure: Option<(bool, At)>,
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
    /// midge's own `cluster_redis` and `node_id` lines, and where the
    /// last of them was (for an error about the pair).
    cluster: (Option<String>, Option<String>, Option<At>),
    /// midge's own `cluster_lease` line (seconds).
    cluster_lease: Option<u64>,
    bridges: Vec<BridgeDraft>,
    /// The bridge the current file's bridge options go to: its last
    /// `connection`, by index in `bridges` (Mosquitto keeps one per file).
    bridge: Option<usize>,
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
        cluster: (None, None, None),
        cluster_lease: None,
        bridges: Vec::new(),
        bridge: None,
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
        if key == "connection" {
            return self.connection(value, at);
        }
        if bridge_key(key) {
            return self.bridge_option(key, value, at);
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
            "cluster_redis" => (self.cluster.0, self.cluster.2) = (Some(value.to_owned()), Some(at.clone())),
            "node_id" => (self.cluster.1, self.cluster.2) = (Some(value.to_owned()), Some(at.clone())),
            "cluster_lease" => {
                (self.cluster_lease, self.cluster.2) = (Some(integer(key, value, at)?), Some(at.clone()))
            }
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
            "max_queued_messages" | "max_queued_bytes" if self.bridge.is_some() => self.bridge_queue(key, value, at)?,
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

    /// `connection NAME`: starts a bridge; the bridge options after it, in
    /// this file, are its own (every other option stays global).
    fn connection(&mut self, value: &str, at: &At) -> Result<(), ConfigError> {
        let name = text("connection", value, at)?;
        if name.contains(char::is_whitespace) {
            return Err(at.error(format!("connection: {name:?} is not one word; expected connection NAME")));
        }
        if name.contains(['+', '#']) {
            let why = "it names the bridge's $SYS topics, where + and # are wildcards";
            return Err(at.error(format!("connection: {name:?} may not contain + or #: {why}")));
        }
        if let Some(other) = self.bridges.iter().find(|d| d.bridge.name == name) {
            let message = format!("connection {name}: a bridge of that name is already at {}", describe(&other.at));
            return Err(at.error(message));
        }
        let mut bridge = Bridge::new(name, "", 0, Vec::new());
        bridge.addresses.clear();
        self.bridges.push(BridgeDraft {
            bridge,
            at: at.clone(),
            address: None,
            remote_password: None,
            local_cleansession: None,
            cafile: None,
            capath: None,
            certfile: None,
            keyfile: None,
            insecure: None,
        });
        self.bridge = Some(self.bridges.len() - 1);
        Ok(())
    }

    /// An option of the current `connection` block.
    fn bridge_option(&mut self, key: &str, value: &str, at: &At) -> Result<(), ConfigError> {
        let Some(index) = self.bridge else {
            let message = format!("{key}: a bridge option, but no connection NAME line comes before it in this file");
            return Err(at.error(message));
        };
        if unsupported_bridge_key(key) {
            // The value is still checked, as Mosquitto would.
            match key {
                "notifications_local_only" | "bridge_attempt_unsubscribe" | "bridge_outgoing_retain" => {
                    boolean(key, value, at)?;
                }
                "bridge_max_packet_size" => {
                    integer::<i64>(key, value, at)?;
                }
                _ => {
                    text(key, value, at)?;
                }
            }
            self.ignore(key, at, "not supported for bridges");
            return Ok(());
        }
        let mut notes = Vec::new();
        let draft = &mut self.bridges[index];
        let name = draft.bridge.name.clone();
        let b = &mut draft.bridge;
        // Mosquitto refuses a text option given twice in one block.
        let once = |slot: &mut Option<String>, value: &str| match slot {
            Some(_) => Err(at.error(format!("{key}: given twice in connection {name}"))),
            None => {
                *slot = Some(text(key, value, at)?.to_owned());
                Ok(())
            }
        };
        let once_path = |slot: &mut Option<(PathBuf, At)>, value: &str| match slot {
            Some(_) => Err(at.error(format!("{key}: given twice in connection {name}"))),
            None => {
                *slot = Some((path(key, value, at)?, at.clone()));
                Ok(())
            }
        };
        match key {
            "address" | "addresses" => {
                if draft.address.is_some() {
                    return Err(at.error(format!("{key}: connection {name} has its addresses already")));
                }
                // Mosquitto ends the list at a word starting with #.
                let words = value.split_whitespace().take_while(|w| !w.starts_with('#'));
                let addresses: Vec<_> =
                    words.map(|w| at.check(config_file::bridge_address(key, w))).collect::<Result<_, _>>()?;
                if addresses.is_empty() {
                    return Err(at.error(format!("{key}: missing value")));
                }
                (b.addresses, draft.address) = (addresses, Some(at.clone()));
            }
            "round_robin" => b.round_robin = boolean(key, value, at)?,
            "topic" => {
                let topic = topic(value, at)?;
                // Mosquitto skips a topic given twice.
                match b.topics.contains(&topic) {
                    true => notes.push("the same topic is already in this connection: skipped".to_owned()),
                    false => b.topics.push(topic),
                }
            }
            "bridge_protocol_version" => b.protocol = at.check(config_file::bridge_protocol(key, value))?,
            "remote_clientid" | "clientid" => once(&mut b.remote_clientid, value)?,
            "local_clientid" => once(&mut b.local_clientid, value)?,
            "remote_username" | "username" => once(&mut b.remote_username, value)?,
            "remote_password" | "password" => {
                once(&mut b.remote_password, value)?;
                draft.remote_password = Some(at.clone());
            }
            "cleansession" => b.clean_session = boolean(key, value, at)?,
            "local_cleansession" => draft.local_cleansession = Some((boolean(key, value, at)?, at.clone())),
            "keepalive_interval" => {
                b.keepalive = match integer::<u64>(key, value, at)? {
                    n if n > u64::from(u16::MAX) => {
                        return Err(at.error(format!("{key}: {n} is more than 65535 seconds")));
                    }
                    n if n < 5 => {
                        notes.push("too low, using 5 seconds (Mosquitto's minimum)".to_owned());
                        5
                    }
                    n => n as u16,
                }
            }
            "restart_timeout" => {
                let mut words = value.split_whitespace();
                let mut base: u64 = integer(key, words.next().unwrap_or(""), at)?;
                let cap = words.next().map(|w| integer::<u64>(key, w, at)).transpose()?;
                if words.next().is_some() {
                    return Err(at.error(format!("{key}: expected BASE [CAP] in seconds")));
                }
                if base == 0 {
                    notes.push("too low, using 1 second".to_owned());
                    base = 1;
                }
                b.restart_timeout = at.check(config_file::restart_timeout(key, base, cap))?;
            }
            "start_type" => b.start_type = at.check(config_file::start_type(key, value))?,
            "threshold" => {
                b.threshold = match integer::<usize>(key, value, at)? {
                    0 => {
                        notes.push("too low, using 1 message".to_owned());
                        1
                    }
                    n => n,
                }
            }
            "idle_timeout" => {
                b.idle_timeout = match integer::<u64>(key, value, at)? {
                    0 => {
                        notes.push("too low, using 1 second".to_owned());
                        Duration::from_secs(1)
                    }
                    n => Duration::from_secs(n),
                }
            }
            "notifications" => b.notifications = boolean(key, value, at)?,
            "notification_topic" => {
                if b.notification_topic.is_some() {
                    return Err(at.error(format!("{key}: given twice in connection {name}")));
                }
                b.notification_topic = Some(at.check(config_file::notification_topic(key, value))?);
            }
            "try_private" => b.try_private = boolean(key, value, at)?,
            "bridge_cafile" => once_path(&mut draft.cafile, value)?,
            "bridge_capath" => once_path(&mut draft.capath, value)?,
            "bridge_certfile" => once_path(&mut draft.certfile, value)?,
            "bridge_keyfile" => once_path(&mut draft.keyfile, value)?,
            "bridge_insecure" => {
                let insecure = boolean(key, value, at)?;
                draft.insecure = Some((insecure, at.clone()));
                if insecure {
                    notes.push("the remote's certificate is not checked against its host name".to_owned());
                }
            }
            "bridge_require_ocsp" => {
                if boolean(key, value, at)? {
                    let message = "bridge_require_ocsp true: OCSP is not supported, and without it a revoked \
                                   remote certificate would be accepted";
                    return Err(at.error(message));
                }
            }
            _ => unreachable!("{key} is a bridge key"),
        }
        for note in notes {
            self.note(key, at, &format!("connection {name}: {note}"));
        }
        Ok(())
    }

    /// `max_queued_messages` or `max_queued_bytes` inside a connection block:
    /// the bridge's own queue.
    fn bridge_queue(&mut self, key: &str, value: &str, at: &At) -> Result<(), ConfigError> {
        let n: u64 = integer(key, value, at)?;
        let Some(index) = self.bridge else { unreachable!("only inside a connection block") };
        let bridge = &mut self.bridges[index].bridge;
        match key {
            "max_queued_messages" => bridge.max_queued = Some(config_file::queued(n)),
            _ => bridge.max_queued_bytes = Some(usize::try_from(n).unwrap_or(usize::MAX)),
        }
        let name = bridge.name.clone();
        let why = format!(
            "inside connection {name}: sets that bridge's queue only (Mosquitto would set every client's); \
             put it before the first connection line for every client"
        );
        self.note(key, at, &why);
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
        // Bridge options belong to a connection in the same file.
        let outer = self.bridge.take();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| at.error(format!("include_dir: cannot read {}: {e}", file.display())))?;
            self.bridge = None;
            self.read(&text, Some(&file))?;
        }
        self.bridge = outer;
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
        let (redis, node_id, at) = std::mem::take(&mut self.cluster);
        self.config.cluster = crate::config::Cluster::from_parts(redis, node_id, self.cluster_lease)
            .map_err(|m| at.expect("a cluster line was read").error(m))?;
        if self.persistence_location.is_some() && !self.persistence {
            self.settings.notes.push("persistence_location: persistence is off, nothing is stored".to_owned());
        }
        for draft in std::mem::take(&mut self.bridges) {
            let at = draft.at.clone();
            let b = bridge(draft)?;
            // Mosquitto refuses two bridges with one local client id.
            if let Some(id) = config_file::known_local_clientid(&b)
                && self
                    .config
                    .bridges
                    .iter()
                    .any(|other| config_file::known_local_clientid(other).as_ref() == Some(&id))
            {
                let message = format!(
                    "connection {}: its local client id {id:?} is another bridge's too; set local_clientid",
                    b.name
                );
                return Err(at.error(message));
            }
            self.config.bridges.push(b);
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

/// `topic PATTERN [[[in|out|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]`; `""` is
/// an empty pattern or prefix. A word starting with `#` after the direction
/// ends the line, as in Mosquitto.
fn topic(value: &str, at: &At) -> Result<crate::config::BridgeTopic, ConfigError> {
    let mut words: Vec<&str> = value.split_whitespace().collect();
    if let Some(comment) = words.iter().skip(2).position(|w| w.starts_with('#')) {
        words.truncate(comment + 2);
    }
    let unquote = |w: &str| if w == "\"\"" { String::new() } else { w.to_owned() };
    let (pattern, direction, qos, local, remote) = match words.as_slice() {
        [] => return Err(at.error("topic: missing value")),
        [pattern, rest @ ..] if rest.len() <= 4 => {
            let direction = match rest.first() {
                Some(d) => config_file::bridge_direction("topic", d).map_err(|m| at.error(m))?,
                None => BridgeDirection::Out,
            };
            let qos = match rest.get(1) {
                Some(q) => {
                    let n = q.parse().map_err(|_| at.error(format!("topic: QoS {q:?} is not 0, 1 or 2")))?;
                    config_file::bridge_qos("topic", n).map_err(|m| at.error(m))?
                }
                None => QoS::AtMostOnce,
            };
            let prefix = |i: usize| rest.get(i).map_or(String::new(), |w| unquote(w));
            (unquote(pattern), direction, qos, prefix(2), prefix(3))
        }
        _ => return Err(at.error("topic: expected PATTERN [[[in|out|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]")),
    };
    config_file::bridge_topic("topic", &pattern, direction, qos, &local, &remote).map_err(|m| at.error(m))
}

/// One drafted bridge into a [`Bridge`], its block checked as a whole.
fn bridge(draft: BridgeDraft) -> Result<Bridge, ConfigError> {
    let BridgeDraft { mut bridge, at, address, remote_password, local_cleansession, .. } = draft;
    let name = bridge.name.clone();
    if address.is_none() {
        return Err(at.error(format!("connection {name}: no address (address HOST[:PORT] is required)")));
    }
    if bridge.topics.is_empty() {
        return Err(at.error(format!("connection {name}: no topic (at least one topic line is required)")));
    }
    if let (Some(at), None) = (&remote_password, &bridge.remote_username) {
        return Err(at.error(format!("remote_password: needs remote_username (connection {name})")));
    }
    if let Some((local, at)) = local_cleansession
        && local != bridge.clean_session
    {
        let message = format!(
            "local_cleansession {local}: a local session apart from the remote one is not supported; midge's \
             side of connection {name} follows cleansession ({})",
            bridge.clean_session
        );
        return Err(at.error(message));
    }
    let (cafile, capath, certfile, keyfile) = (draft.cafile, draft.capath, draft.certfile, draft.keyfile);
    match (&certfile, &keyfile) {
        (Some((_, at)), None) => {
            return Err(at.error(format!("bridge_certfile: needs bridge_keyfile too (connection {name})")));
        }
        (None, Some((_, at))) => {
            return Err(at.error(format!("bridge_keyfile: needs bridge_certfile too (connection {name})")));
        }
        _ => {}
    }
    if cafile.is_none() && capath.is_none() {
        let tls_only = [
            certfile.as_ref().map(|(_, at)| ("bridge_certfile", at)),
            keyfile.as_ref().map(|(_, at)| ("bridge_keyfile", at)),
            draft.insecure.as_ref().map(|(_, at)| ("bridge_insecure", at)),
        ];
        if let Some((key, at)) = tls_only.into_iter().flatten().next() {
            let message = format!("{key}: TLS needs bridge_cafile or bridge_capath (connection {name})");
            return Err(at.error(message));
        }
        return Ok(bridge);
    }
    bridge.tls = Some(BridgeTls {
        cafile: cafile.map(|(p, _)| p),
        capath: capath.map(|(p, _)| p),
        certfile: certfile.map(|(p, _)| p),
        keyfile: keyfile.map(|(p, _)| p),
        insecure: draft.insecure.is_some_and(|(i, _)| i),
    });
    Ok(bridge)
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
    use crate::config::{BridgeTopic, StartType};
    use crate::packet::Protocol;

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

    fn topic(pattern: &str, direction: BridgeDirection, qos: QoS, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    fn out0(pattern: &str) -> BridgeTopic {
        topic(pattern, BridgeDirection::Out, QoS::AtMostOnce, "", "")
    }

    #[test]
    fn a_connection_block_with_every_key() {
        let s = parse_ok(
            "listener 1883\nallow_anonymous true\n\
             connection cloud\n\
             addresses broker.example.com:8883 10.0.0.2 [::1]:1884 2001:db8::1:1885\n\
             round_robin true\n\
             topic sensors/# out 1 site/ remote/site/\n\
             topic cmd/+ in 2\n\
             topic \"\" both 0 local/one remote/one\n\
             bridge_protocol_version mqttv50\n\
             remote_clientid site-1\nlocal_clientid local-site-1\n\
             remote_username bridge\nremote_password s3cret with spaces\n\
             cleansession true\nlocal_cleansession true\nkeepalive_interval 30\nrestart_timeout 2 60\n\
             start_type lazy\nthreshold 5\nidle_timeout 120\nnotifications false\n\
             notification_topic bridges/cloud/state\ntry_private false\n\
             bridge_cafile /tls/ca.pem\nbridge_capath /tls/certs\nbridge_certfile tls/bridge.pem\n\
             bridge_keyfile tls/bridge.key\nbridge_insecure true\nbridge_require_ocsp false\n\
             max_queued_messages 0\nmax_queued_bytes 4096\n",
        );
        let expected = Bridge {
            name: "cloud".into(),
            addresses: vec![
                ("broker.example.com".into(), 8883),
                ("10.0.0.2".into(), 1883),
                ("::1".into(), 1884),
                ("2001:db8::1".into(), 1885),
            ],
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
            remote_password: Some("s3cret with spaces".into()),
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
                cafile: Some("/tls/ca.pem".into()),
                capath: Some("/tls/certs".into()),
                certfile: Some("tls/bridge.pem".into()),
                keyfile: Some("tls/bridge.key".into()),
                insecure: true,
            }),
            max_queued: Some(usize::MAX),
            max_queued_bytes: Some(4096),
        };
        assert_eq!(s.config.bridges, [expected]);
        // The broker's own queue limits are untouched; the block's are noted.
        assert_eq!((s.config.max_queued, s.config.max_queued_bytes), (1000, 64 << 20));
        let notes = s.notes.join("\n");
        assert!(notes.contains("max_queued_messages (line 30): inside connection cloud: sets that bridge's queue"));
        assert!(notes.contains("bridge_insecure (line 28): connection cloud: the remote's certificate is not checked"));
        assert!(s.ignored.is_empty(), "{:?}", s.ignored);
        assert_eq!(s.config.listeners, vec![Listener::tcp(addr("0.0.0.0:1883"))]);
    }

    #[test]
    fn a_connection_block_has_mosquittos_defaults() {
        let c = config("connection b\naddress 192.0.2.1\ntopic #\n");
        assert_eq!(c.bridges, [Bridge::new("b", "192.0.2.1", 1883, vec![out0("#")])]);
        let b = &c.bridges[0];
        assert_eq!(
            (b.protocol, b.keepalive, b.clean_session, b.start_type),
            (Protocol::V311, 60, false, StartType::Automatic)
        );
        assert_eq!(b.restart_timeout, (Duration::from_secs(5), Duration::from_secs(30)));
        assert!(b.notifications && b.try_private && b.tls.is_none() && b.remote_clientid.is_none());
        // No listener, so Mosquitto's local-only mode, as without the bridge.
        assert_eq!(c.listeners, vec![Listener::tcp(addr("127.0.0.1:1883"))]);
        // One restart_timeout is a constant wait; values below Mosquitto's
        // minimums are raised to them, and noted.
        let s = parse_ok(
            "connection b\naddress h\ntopic #\nrestart_timeout 20\nkeepalive_interval 1\nthreshold 0\nidle_timeout 0\n",
        );
        let b = &s.config.bridges[0];
        assert_eq!(b.restart_timeout, (Duration::from_secs(20), Duration::from_secs(20)));
        assert_eq!((b.keepalive, b.threshold, b.idle_timeout), (5, 1, Duration::from_secs(1)));
        assert_eq!(s.notes.len(), 3, "{:?}", s.notes);
        assert!(s.notes[0].starts_with("keepalive_interval (line 5): connection b: too low, using 5 seconds"));
        assert_eq!(
            config("connection b\naddress h\ntopic #\nrestart_timeout 0 9").bridges[0].restart_timeout.0,
            Duration::from_secs(1)
        );
        // The old names of remote_clientid, remote_username and remote_password.
        let b = &config("connection b\naddress h\ntopic #\nclientid c\nusername u\npassword p\n").bridges[0];
        assert_eq!((b.remote_clientid.as_deref(), b.remote_username.as_deref()), (Some("c"), Some("u")));
        assert_eq!(b.remote_password.as_deref(), Some("p"));
        assert_eq!(
            config("connection b\naddress h\ntopic #\nbridge_protocol_version mqttv31").bridges[0].protocol,
            Protocol::V31
        );
        let tls = config("connection b\naddress h\ntopic #\nbridge_capath /certs\n").bridges[0].tls.clone();
        assert_eq!(
            tls,
            Some(BridgeTls {
                cafile: None,
                capath: Some("/certs".into()),
                certfile: None,
                keyfile: None,
                insecure: false
            })
        );
    }

    #[test]
    fn two_blocks_with_global_options_between() {
        let s = parse_ok(
            "max_queued_messages 100\n\
             connection a\naddress a.example\ntopic a/#\n\
             listener 1884\nallow_anonymous true\ntopic more/# in\nmax_queued_messages 7\n\
             connection b\naddress b.example:1999\ntopic b/# both 1\nsys_interval 0\n",
        );
        let c = &s.config;
        let mut a = Bridge::new(
            "a",
            "a.example",
            1883,
            vec![out0("a/#"), topic("more/#", BridgeDirection::In, QoS::AtMostOnce, "", "")],
        );
        a.max_queued = Some(7);
        let b =
            Bridge::new("b", "b.example", 1999, vec![topic("b/#", BridgeDirection::Both, QoS::AtLeastOnce, "", "")]);
        assert_eq!(c.bridges, [a, b]);
        // Options that are not a bridge's stay global after a connection line.
        assert_eq!(c.listeners, vec![Listener::tcp(addr("0.0.0.0:1884"))]);
        assert_eq!((c.allow_anonymous, c.sys_interval, c.max_queued), (Some(true), Duration::ZERO, 100));
    }

    #[test]
    fn topic_lines() {
        let topics = |lines: &str| config(&format!("connection b\naddress h\n{lines}")).bridges[0].topics.clone();
        assert_eq!(topics("topic a/b\n"), [out0("a/b")]);
        assert_eq!(topics("topic a/# IN\n"), [topic("a/#", BridgeDirection::In, QoS::AtMostOnce, "", "")]);
        assert_eq!(topics("topic a/# both 2\n"), [topic("a/#", BridgeDirection::Both, QoS::ExactlyOnce, "", "")]);
        assert_eq!(topics("topic # out 1 \"\" r/\n"), [topic("#", BridgeDirection::Out, QoS::AtLeastOnce, "", "r/")]);
        assert_eq!(topics("topic # out 1 l/\n"), [topic("#", BridgeDirection::Out, QoS::AtLeastOnce, "l/", "")]);
        // Mosquitto's example, and a comment after the direction.
        assert_eq!(
            topics("topic clients/total in 0 test/mosquitto/org/ $SYS/broker/\n"),
            [topic("clients/total", BridgeDirection::In, QoS::AtMostOnce, "test/mosquitto/org/", "$SYS/broker/")]
        );
        assert_eq!(
            topics("topic a/# in 1 # the rest\n"),
            [topic("a/#", BridgeDirection::In, QoS::AtLeastOnce, "", "")]
        );
        // A topic given twice is kept once (Mosquitto skips it), and noted.
        let s = parse_ok("connection b\naddress h\ntopic a\ntopic a\n");
        assert_eq!(s.config.bridges[0].topics, [out0("a")]);
        assert!(s.notes[0].starts_with("topic (line 4): connection b: the same topic"), "{:?}", s.notes);
        for (line, message) in [
            ("topic", "topic: missing value"),
            ("topic a sideways", "topic: direction \"sideways\" is not in, out or both"),
            ("topic a out 3", "topic: QoS 3 is not 0, 1 or 2"),
            ("topic a out one", "topic: QoS \"one\" is not 0, 1 or 2"),
            ("topic a out 1 l/ r/ extra", "topic: expected PATTERN [[[in|out|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]"),
            ("topic a/#/b", "topic: the pattern \"a/#/b\" is not a valid topic filter"),
            ("topic a+ in", "topic: the pattern \"a+\" is not a valid topic filter"),
            ("topic # in 0 l/+/ r/", "topic: the local prefix \"l/+/\" must not contain a wildcard (+ or #)"),
            ("topic # in 0 l/ r#", "topic: the remote prefix \"r#\" must not contain a wildcard (+ or #)"),
            ("topic # in 0 l r/", "topic: the local prefix and pattern, \"l#\", is not a valid topic filter"),
            ("topic \"\"", "topic: an empty pattern (\"\") needs both a local and a remote prefix"),
            ("topic \"\" out 0 l \"\"", "topic: an empty pattern (\"\") needs both a local and a remote prefix"),
            ("topic \"\" out 0 \"\" r", "topic: an empty pattern (\"\") needs both a local and a remote prefix"),
        ] {
            let (e, at) = error(&format!("connection b\naddress h\n{line}\n"));
            assert_eq!(at, Some(3), "{line}: {e}");
            assert!(e.starts_with(&format!("line 3: {message}")), "{line}: {e}");
        }
    }

    #[test]
    fn bridge_addresses() {
        let addresses =
            |value: &str| config(&format!("connection b\naddress {value}\ntopic #\n")).bridges[0].addresses.clone();
        assert_eq!(addresses("h # a comment"), [("h".to_owned(), 1883)]);
        assert_eq!(addresses("[2001:db8::1]"), [("2001:db8::1".to_owned(), 1883)]);
        for (value, why) in [
            ("h:0", "the port is not from 1 to 65535"),
            ("h:x", "the port is not from 1 to 65535"),
            ("h:", "the port is not from 1 to 65535"),
            (":1883", "no host"),
            ("::1", "an IPv6 address needs a port: write [ADDRESS]:PORT or ADDRESS:PORT"),
            ("[::1", "no ] after the IPv6 address"),
            ("[nope]:1", "not an IPv6 address in the brackets"),
            ("[::1]1883", "expected : and a port after ]"),
        ] {
            let (e, _) = error(&format!("connection b\naddress {value}\ntopic #\n"));
            assert_eq!(e, format!("line 2: address: {value:?} is not HOST[:PORT] ({why})"), "{value}");
        }
    }

    #[test]
    fn bridge_errors_name_the_line() {
        let block = "connection b\naddress h\ntopic #\n";
        for (text, message) in [
            ("address h", "line 1: address: a bridge option, but no connection NAME line comes before it in this file"),
            ("listener 1883\ntopic #", "line 2: topic: a bridge option, but no connection NAME line"),
            ("remote_username u", "line 1: remote_username: a bridge option"),
            ("username u", "line 1: username: a bridge option"),
            ("bridge_attempt_unsubscribe false", "line 1: bridge_attempt_unsubscribe: a bridge option"),
            ("connection", "line 1: connection: missing value"),
            ("connection a b", "line 1: connection: \"a b\" is not one word"),
            ("connection a+b", "line 1: connection: \"a+b\" may not contain + or #"),
            ("connection b\ntopic #\n", "line 1: connection b: no address (address HOST[:PORT] is required)"),
            ("connection b\naddress h\n", "line 1: connection b: no topic (at least one topic line is required)"),
            (
                "connection b\naddress h\ntopic #\nconnection b\n",
                "line 4: connection b: a bridge of that name is already at line 1",
            ),
            ("connection b\naddress h\naddress i\n", "line 3: address: connection b has its addresses already"),
            (
                &format!("{block}local_clientid x\nconnection c\naddress h\ntopic #\nlocal_clientid x\n"),
                "line 5: connection c: its local client id \"x\" is another bridge's too; set local_clientid",
            ),
            (
                &format!("{block}remote_clientid x\nconnection c\naddress h\ntopic #\nlocal_clientid local.x\n"),
                "line 5: connection c: its local client id \"local.x\" is another bridge's too",
            ),
            ("connection b\naddress\n", "line 2: address: missing value"),
            ("connection b\naddress # none\n", "line 2: address: missing value"),
            (&format!("{block}remote_clientid a\nclientid b"), "line 5: clientid: given twice in connection b"),
            (
                &format!("{block}bridge_cafile /a\nbridge_cafile /b"),
                "line 5: bridge_cafile: given twice in connection b",
            ),
            (&format!("{block}remote_password p"), "line 4: remote_password: needs remote_username (connection b)"),
            (
                &format!("{block}bridge_protocol_version mqttv5"),
                "line 4: bridge_protocol_version: \"mqttv5\" is not mqttv50",
            ),
            (&format!("{block}start_type manual"), "line 4: start_type: manual is not supported"),
            (
                &format!("{block}start_type sometimes"),
                "line 4: start_type: \"sometimes\" is not automatic, lazy or once",
            ),
            (
                &format!("{block}keepalive_interval 70000"),
                "line 4: keepalive_interval: 70000 is more than 65535 seconds",
            ),
            (
                &format!("{block}keepalive_interval -1"),
                "line 4: keepalive_interval: \"-1\" is not a non-negative integer",
            ),
            (
                &format!("{block}restart_timeout 10 5"),
                "line 4: restart_timeout: the cap, 5 s, is lower than the base, 10 s",
            ),
            (&format!("{block}restart_timeout 1 2 3"), "line 4: restart_timeout: expected BASE [CAP] in seconds"),
            (&format!("{block}restart_timeout"), "line 4: restart_timeout: \"\" is not a non-negative integer"),
            (&format!("{block}round_robin yes"), "line 4: round_robin: \"yes\" is not true or false"),
            (&format!("{block}notification_topic a/#"), "line 4: notification_topic: \"a/#\" is not a topic name"),
            (
                &format!("{block}bridge_certfile /c.pem"),
                "line 4: bridge_certfile: needs bridge_keyfile too (connection b)",
            ),
            (
                &format!("{block}bridge_keyfile /k.pem"),
                "line 4: bridge_keyfile: needs bridge_certfile too (connection b)",
            ),
            (
                &format!("{block}bridge_certfile /c.pem\nbridge_keyfile /k.pem"),
                "line 4: bridge_certfile: TLS needs bridge_cafile or bridge_capath (connection b)",
            ),
            (
                &format!("{block}bridge_insecure false"),
                "line 4: bridge_insecure: TLS needs bridge_cafile or bridge_capath",
            ),
            (
                &format!("{block}local_cleansession true"),
                "line 4: local_cleansession true: a local session apart from the remote one is not supported",
            ),
            (
                &format!("{block}bridge_outgoing_retain maybe"),
                "line 4: bridge_outgoing_retain: \"maybe\" is not true or false",
            ),
            (&format!("{block}bridge_tls_version"), "line 4: bridge_tls_version: missing value"),
            (&format!("{block}bridge_frobnicate 1"), "line 4: unknown key \"bridge_frobnicate\""),
        ] {
            let (e, _) = error(text);
            assert!(e.starts_with(message), "{text:?}: {e}");
        }
        // local_cleansession is accepted when it is what midge does anyway.
        assert!(parse(&format!("{block}cleansession true\nlocal_cleansession true")).is_ok());
    }

    #[test]
    fn unsupported_bridge_keys_are_listed_with_their_lines() {
        let s = parse_ok(
            "connection b\naddress h\ntopic #\nnotifications_local_only true\nbridge_attempt_unsubscribe false\n\
             bridge_outgoing_retain false\nlocal_username u\nlocal_password p\nbridge_max_packet_size 1000\n\
             bridge_tls_version tlsv1.3\nbridge_alpn mqtt\nbridge_bind_address 10.0.0.1\n",
        );
        let ignored: Vec<String> = s.ignored.iter().map(ToString::to_string).collect();
        assert_eq!(
            ignored,
            [
                "notifications_local_only (line 4)",
                "bridge_attempt_unsubscribe (line 5)",
                "bridge_outgoing_retain (line 6)",
                "local_username (line 7)",
                "local_password (line 8)",
                "bridge_max_packet_size (line 9)",
                "bridge_tls_version (line 10)",
                "bridge_alpn (line 11)",
                "bridge_bind_address (line 12)",
            ]
        );
        assert!(s.ignored.iter().all(|i| i.why == "not supported for bridges"));
        assert_eq!(s.config.bridges.len(), 1);
    }

    #[test]
    fn a_bridge_option_needs_a_connection_in_its_own_file() {
        let dir = Dir::new("bridge-include");
        let conf_d = dir.0.join("conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        std::fs::write(conf_d.join("a.conf"), "connection inner\naddress i\ntopic i/#\n").unwrap();
        // After the include, the main file's lines go to its own connection.
        let c = config(&format!("connection outer\naddress o\ninclude_dir {}\ntopic o/#\n", conf_d.display()));
        let names: Vec<(&str, usize)> = c.bridges.iter().map(|b| (b.name.as_str(), b.topics.len())).collect();
        assert_eq!(names, [("outer", 1), ("inner", 1)]);
        assert_eq!(c.bridges[0].topics, [out0("o/#")]);
        std::fs::write(conf_d.join("a.conf"), "topic i/#\n").unwrap();
        let (e, _) = error(&format!("connection outer\naddress o\ntopic o\ninclude_dir {}\n", conf_d.display()));
        assert!(e.starts_with(&format!("{} line 1: topic: a bridge option", conf_d.join("a.conf").display())), "{e}");
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
            ("connection b\naddress h\ntopic #\nbridge_psk 00ff", "pre-shared keys"),
            ("connection b\naddress h\ntopic #\nbridge_identity me", "pre-shared keys"),
            ("connection b\naddress h\ntopic #\nbridge_require_ocsp true", "revoked remote certificate"),
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

    #[test]
    fn cluster_lines_name_the_redis_and_the_node() {
        let c = config("cluster_redis redis://127.0.0.1:6379\nnode_id edge-1\n").cluster.unwrap();
        assert_eq!((c.redis.as_str(), c.node_id.as_str()), ("redis://127.0.0.1:6379", "edge-1"));
        let c = config("cluster_redis redis://h:1\nnode_id n\ncluster_lease 4\n").cluster.unwrap();
        assert_eq!(c.lease, std::time::Duration::from_secs(4));
        let (e, line) = error("sys_interval 10\nnode_id edge-1\n");
        assert!(e.contains("needs the cluster's Redis server"), "{e}");
        assert_eq!(line, Some(2));
    }
}
