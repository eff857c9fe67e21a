//! Broker configuration, with Mosquitto-like defaults.

use crate::session::Limits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default listener: Mosquitto 2's local-only default.
pub const DEFAULT_BIND: &str = "127.0.0.1:1883";
/// Default maximum packet size: 1 MiB, so one client cannot make the broker
/// buffer more than that for a single packet.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1 << 20;
/// How long a new socket may take to send CONNECT before it is closed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound QoS 1/2 messages in flight per client (Mosquitto's default).
pub const DEFAULT_MAX_INFLIGHT: usize = 20;
/// Messages queued per client behind the inflight window (Mosquitto's default).
pub const DEFAULT_MAX_QUEUED: usize = 1000;
/// Bytes of payload queued per client behind the inflight window. Mosquitto
/// has no byte limit by default; midge bounds it so that 1000 queued 1 MiB
/// messages cannot take 1 GiB for one session.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;
/// Deepest topic name or filter accepted, in levels. MQTT allows 32,768
/// levels in a 65,535-byte string; deeper than this is refused.
pub const DEFAULT_MAX_TOPIC_LEVELS: usize = 128;
/// How long a connected subscriber with a full queue may make no progress
/// before it stops holding its publishers back (and its messages drop).
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(5);
/// Where durable state lives unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "midge-data";
/// How often `$SYS` statistics are published (Mosquitto's default).
pub const DEFAULT_SYS_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the broker can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect.
    pub listeners: Vec<Listener>,
    /// Largest packet accepted from a client, fixed header included.
    pub max_packet_size: usize,
    /// Time allowed between accept and CONNECT.
    pub connect_timeout: Duration,
    /// Outbound QoS 1/2 messages in flight per client.
    pub max_inflight: usize,
    /// Messages queued per client.
    pub max_queued: usize,
    /// Payload bytes queued per client (0: no limit).
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0: bool,
    /// Deepest topic name or filter accepted, in levels.
    pub max_topic_levels: usize,
    /// How long a connected subscriber whose queue is full may make no
    /// progress before its publishers stop waiting for it.
    pub slow_consumer_timeout: Duration,
    /// `$SYS` publishing interval; zero turns it off.
    pub sys_interval: Duration,
    /// Directory of the durable store; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Move a damaged store aside and start empty instead of refusing to start.
    pub recover_store: bool,
    /// Remove persistent sessions whose client has been away this long.
    pub session_expiry: Option<Duration>,
    /// Whether clients without a user name may connect; `None`: yes, unless
    /// a password file is configured (Mosquitto's rule).
    pub allow_anonymous: Option<bool>,
    /// A `mosquitto_passwd` file of user names and password hashes.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto ACL file.
    pub acl_file: Option<PathBuf>,
    /// Security per listener (Mosquitto's `per_listener_settings true`), by
    /// index in `listeners`: each listener's own `allow_anonymous`,
    /// `password_file` and `acl_file` in place of the three above. Empty
    /// (the default): the three above, on every listener.
    pub listener_security: Vec<ListenerSecurity>,
    /// Most clients connected at once, over all listeners.
    pub max_connections: Option<usize>,
    /// Longest keepalive a client may ask for; longer (or 0) is refused with
    /// CONNACK 2, as Mosquitto does for MQTT 3.1.1.
    pub max_keepalive: Option<u16>,
    /// Most PUBLISH packets per second accepted from one client.
    pub max_publish_rate: Option<u32>,
    /// Whether retained messages are supported (Mosquitto's
    /// `retain_available`); when `false` a PUBLISH or a will with RETAIN set
    /// closes the connection, as Mosquitto does for MQTT 3.1.1.
    pub retain_available: bool,
    /// Largest PUBLISH payload accepted, in bytes (Mosquitto's
    /// `message_size_limit`); a larger one is acknowledged but dropped.
    /// `None`: any size the packet limit lets through.
    pub message_size_limit: Option<usize>,
    /// Where the HTTP endpoint (`GET /metrics`, `GET /healthz`) listens;
    /// `None` (the default): no HTTP listener.
    pub http_listener: Option<SocketAddr>,
    /// Topic aliases an MQTT 5.0 client may set on its PUBLISHes (the Topic
    /// Alias Maximum in CONNACK; Mosquitto's `max_topic_alias`, default 10;
    /// 0 turns them off).
    pub max_topic_alias: u16,
    /// The Response Information sent to an MQTT 5.0 client that asks for it
    /// (a topic prefix for its responses); `None`: not sent.
    pub response_information: Option<String>,
    /// How a shared subscription's group picks the member that gets a
    /// message.
    pub shared_subscription_strategy: ShareStrategy,
}

/// How a shared subscription (`$share/{name}/{filter}`) picks the one member
/// of its group that gets each message. Members whose client is connected
/// and has room in its queue come first, then connected ones, then any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShareStrategy {
    /// Each member in turn (the default).
    #[default]
    RoundRobin,
    /// A member picked at random.
    Random,
    /// The same member while it is eligible, the next one when it is not.
    Sticky,
}

impl std::str::FromStr for ShareStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<ShareStrategy, String> {
        match s {
            "round_robin" => Ok(ShareStrategy::RoundRobin),
            "random" => Ok(ShareStrategy::Random),
            "sticky" => Ok(ShareStrategy::Sticky),
            other => Err(format!("unknown shared subscription strategy {other:?} (round_robin, random or sticky)")),
        }
    }
}

/// Mosquitto's default `max_topic_alias`.
pub const DEFAULT_MAX_TOPIC_ALIAS: u16 = 10;

/// The security settings of one listener (`per_listener_settings`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerSecurity {
    /// Whether clients without a user name may connect on this listener;
    /// `None`: yes, unless it has a password file.
    pub allow_anonymous: Option<bool>,
    /// The listener's `mosquitto_passwd` file.
    pub password_file: Option<PathBuf>,
    /// The listener's ACL file: it rules what clients that connected on this
    /// listener may publish, subscribe to and receive (a persistent session
    /// keeps the listener its client last connected on, as in Mosquitto).
    pub acl_file: Option<PathBuf>,
}

/// One listener: an address, optionally TLS, optionally its own limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Address to bind.
    pub bind: SocketAddr,
    /// Most clients connected at once on this listener.
    pub max_connections: Option<usize>,
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<TlsFiles>,
    /// MQTT over WebSockets (RFC 6455) instead of bare MQTT; over TLS when
    /// `tls` is set too (`wss://`).
    pub websockets: Option<WebSockets>,
}

/// How a WebSocket listener accepts its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSockets {
    /// The request path the handshake must name (default `/mqtt`); `None`:
    /// any path, as Mosquitto's WebSocket listeners accept (the default for
    /// a listener read from a mosquitto.conf, so existing pages keep working).
    pub path: Option<String>,
    /// Take the client's address from `X-Forwarded-For` (only behind a
    /// proxy that sets it; otherwise any client could claim any address).
    pub trust_forwarded_for: bool,
}

/// The WebSocket path Mosquitto's clients and MQTT.js use by default.
pub const DEFAULT_WEBSOCKETS_PATH: &str = "/mqtt";

impl Default for WebSockets {
    fn default() -> Self {
        WebSockets { path: Some(DEFAULT_WEBSOCKETS_PATH.into()), trust_forwarded_for: false }
    }
}

impl Listener {
    /// A plain TCP listener with no limit of its own.
    pub fn tcp(bind: SocketAddr) -> Listener {
        Listener { bind, max_connections: None, tls: None, websockets: None }
    }

    /// A plain MQTT over WebSockets listener (`ws://`, path `/mqtt`) with no
    /// limit of its own.
    pub fn websockets(bind: SocketAddr) -> Listener {
        Listener { websockets: Some(WebSockets::default()), ..Listener::tcp(bind) }
    }
}

/// Certificate files of a TLS listener (Mosquitto's key names).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate chain of the server.
    pub certfile: PathBuf,
    /// PEM private key of the server.
    pub keyfile: PathBuf,
    /// PEM CA certificates that client certificates must chain to.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a valid certificate (mutual TLS).
    pub require_certificate: bool,
    /// Use the client certificate's Common Name as the user name.
    pub use_identity_as_username: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![Listener::tcp(DEFAULT_BIND.parse().expect("valid default address"))],
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            queue_qos0: false,
            max_topic_levels: DEFAULT_MAX_TOPIC_LEVELS,
            slow_consumer_timeout: DEFAULT_SLOW_CONSUMER_TIMEOUT,
            sys_interval: DEFAULT_SYS_INTERVAL,
            data_dir: Some(DEFAULT_DATA_DIR.into()),
            recover_store: false,
            session_expiry: None,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            listener_security: Vec::new(),
            max_connections: None,
            max_keepalive: None,
            max_publish_rate: None,
            retain_available: true,
            message_size_limit: None,
            http_listener: None,
            max_topic_alias: DEFAULT_MAX_TOPIC_ALIAS,
            response_information: None,
            shared_subscription_strategy: ShareStrategy::RoundRobin,
        }
    }
}

impl Config {
    /// The defaults with a single plain listener on `bind` (e.g. port 0).
    pub fn listening_on(bind: SocketAddr) -> Config {
        Config { listeners: vec![Listener::tcp(bind)], ..Config::default() }
    }

    /// The session limits this configuration sets.
    pub fn limits(&self) -> Limits {
        Limits {
            max_inflight: self.max_inflight,
            max_queued: self.max_queued,
            max_queued_bytes: match self.max_queued_bytes {
                0 => usize::MAX,
                n => n,
            },
            queue_qos0: self.queue_qos0,
            slow_consumer_timeout: self.slow_consumer_timeout,
        }
    }
}
