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
    /// Bridges to other brokers (mosquitto.conf `connection NAME` blocks).
    pub bridges: Vec<Bridge>,
    /// The cluster this broker is a node of (`--cluster-redis`, the
    /// `cluster` feature; see docs/cluster.md); `None`: a single broker.
    pub cluster: Option<Cluster>,
}

/// A node's place in a cluster on Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The Redis (or Valkey) server the nodes share: `redis://HOST:PORT`.
    pub redis: String,
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// How long the node counts as alive after its last renewal in Redis
    /// (renewed every second): the other nodes take its wills over once
    /// it ends, and a node that could not renew it closes its clients just
    /// before.
    pub lease: std::time::Duration,
}

impl Cluster {
    /// The lease unless configured: 10 s.
    pub const LEASE: std::time::Duration = std::time::Duration::from_secs(10);

    /// A node `node_id` of the cluster on `redis`, with the default lease.
    pub fn new(redis: impl Into<String>, node_id: impl Into<String>) -> Cluster {
        Cluster { redis: redis.into(), node_id: node_id.into(), lease: Cluster::LEASE }
    }

    /// Checks a node id: 1 to 64 letters, digits, `-`, `_` or `.` (it is
    /// part of Redis key names).
    pub fn check_node_id(id: &str) -> Result<(), String> {
        let ok = (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        match ok {
            true => Ok(()),
            false => Err(format!("node id {id:?}: 1 to 64 letters, digits, '-', '_' or '.'")),
        }
    }

    /// Both halves, or neither: a node id without a Redis server (or the
    /// reverse) is a mistake, not a single broker.
    /// A lease, in seconds, from 3 to 3600 (the lease is renewed every
    /// second), and only for a cluster.
    pub fn from_parts(
        redis: Option<String>,
        node_id: Option<String>,
        lease: Option<u64>,
    ) -> Result<Option<Cluster>, String> {
        if let Some(secs) = lease
            && !(3..=3600).contains(&secs)
        {
            return Err(format!("cluster lease {secs}s: from 3 to 3600 seconds"));
        }
        match (redis, node_id) {
            (None, None) if lease.is_some() => Err("a cluster lease needs a cluster (--cluster-redis)".into()),
            (None, None) => Ok(None),
            (Some(redis), Some(node_id)) => {
                Cluster::check_node_id(&node_id)?;
                if !redis.starts_with("redis://") {
                    return Err(format!("cluster Redis address {redis:?}: expected redis://HOST:PORT"));
                }
                let lease = lease.map_or(Cluster::LEASE, std::time::Duration::from_secs);
                Ok(Some(Cluster { lease, ..Cluster::new(redis, node_id) }))
            }
            (Some(_), None) => Err("a cluster needs this node's id too (--node-id / node_id)".into()),
            (None, Some(_)) => {
                Err("a node id needs the cluster's Redis server too (--cluster-redis / cluster_redis)".into())
            }
        }
    }
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

/// A bridge: midge connects to a remote broker as a client and forwards
/// topics out to it and in from it (Mosquitto's `connection NAME` block).
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    /// The connection's name (`connection NAME`).
    pub name: String,
    /// Remote brokers, tried in order (`address host[:port] ...`; port 1883
    /// unless given).
    pub addresses: Vec<(String, u16)>,
    /// `round_robin true`: after a failure try the next address and stay
    /// there; `false` (the default): the first address is the main one,
    /// returned to when it is back.
    pub round_robin: bool,
    /// What is forwarded (`topic` lines, at least one).
    pub topics: Vec<BridgeTopic>,
    /// The protocol spoken to the remote (`bridge_protocol_version`,
    /// `mqttv311` by default, or `mqttv50`).
    pub protocol: crate::packet::Protocol,
    /// Client id at the remote (`remote_clientid`; default `HOSTNAME.NAME`).
    pub remote_clientid: Option<String>,
    /// Client id of the bridge's session in midge itself (`local_clientid`;
    /// default `local.` and the remote client id).
    pub local_clientid: Option<String>,
    /// User name at the remote (`remote_username`).
    pub remote_username: Option<String>,
    /// Password at the remote (`remote_password`).
    pub remote_password: Option<String>,
    /// `cleansession` at the remote (default `false`: the remote keeps the
    /// bridge's subscriptions and in-flight messages across reconnects).
    pub clean_session: bool,
    /// Keepalive at the remote (`keepalive_interval`, default 60 s).
    pub keepalive: u16,
    /// Reconnect backoff (`restart_timeout base [cap]`): waits start at the
    /// first, double up to the second, with jitter. Default 5 s and 30 s.
    pub restart_timeout: (Duration, Duration),
    /// When the bridge connects (`start_type`).
    pub start_type: StartType,
    /// `start_type lazy`: messages queued for the remote that start the
    /// bridge (`threshold`, default 10).
    pub threshold: usize,
    /// `start_type lazy`: a bridge idle this long stops (`idle_timeout`,
    /// default 60 s).
    pub idle_timeout: Duration,
    /// Publish the bridge's state (1 connected, 0 not), retained, on the
    /// notification topic (`notifications`, default `true`).
    pub notifications: bool,
    /// The notification topic (`notification_topic`; default
    /// `$SYS/broker/connection/REMOTE_CLIENTID/state`).
    pub notification_topic: Option<String>,
    /// Tell a 3.1.1 remote that this is a bridge (protocol level | 0x80), so
    /// a Mosquitto or midge remote does not echo what the bridge publishes
    /// (`try_private`, default `true`).
    pub try_private: bool,
    /// TLS to the remote (`bridge_cafile` and the rest); `None`: plain TCP.
    pub tls: Option<BridgeTls>,
    /// Messages the bridge's session queues for the remote while it is
    /// unreachable (`max_queued_messages` inside the block); `None`: the
    /// broker's `max_queued_messages`.
    pub max_queued: Option<usize>,
    /// Payload bytes queued likewise (`max_queued_bytes`); `None`: the
    /// broker's.
    pub max_queued_bytes: Option<usize>,
}

impl Bridge {
    /// A bridge to `host:port` forwarding `topics`, every other setting at
    /// Mosquitto's default.
    pub fn new(name: impl Into<String>, host: impl Into<String>, port: u16, topics: Vec<BridgeTopic>) -> Bridge {
        Bridge {
            name: name.into(),
            addresses: vec![(host.into(), port)],
            round_robin: false,
            topics,
            protocol: crate::packet::Protocol::V311,
            remote_clientid: None,
            local_clientid: None,
            remote_username: None,
            remote_password: None,
            clean_session: false,
            keepalive: 60,
            restart_timeout: (Duration::from_secs(5), Duration::from_secs(30)),
            start_type: StartType::Automatic,
            threshold: 10,
            idle_timeout: Duration::from_secs(60),
            notifications: true,
            notification_topic: None,
            try_private: true,
            tls: None,
            max_queued: None,
            max_queued_bytes: None,
        }
    }
}

impl Bridge {
    /// The client id at the remote: `remote_clientid`, or Mosquitto's
    /// default `HOSTNAME.NAME`.
    pub fn remote_id(&self) -> String {
        self.remote_clientid.clone().unwrap_or_else(|| format!("{}.{}", crate::bridge::hostname(), self.name))
    }

    /// The client id of the bridge's session in midge: `local_clientid`, or
    /// Mosquitto's default `local.` and the remote client id.
    pub fn local_id(&self) -> String {
        self.local_clientid.clone().unwrap_or_else(|| format!("local.{}", self.remote_id()))
    }

    /// Where the bridge's state is published: `notification_topic`, or
    /// Mosquitto's default `$SYS/broker/connection/REMOTE_CLIENTID/state`.
    pub fn state_topic(&self) -> String {
        self.notification_topic.clone().unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.remote_id()))
    }
}

/// A bridge's `topic PATTERN [in|out|both] [QOS] [LOCAL_PREFIX] [REMOTE_PREFIX]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeTopic {
    /// The filter, without the prefixes (may be empty when a prefix is the
    /// whole topic).
    pub pattern: String,
    /// Which way messages go.
    pub direction: BridgeDirection,
    /// Highest QoS forwarded (a message goes at the lower of this and its own).
    pub qos: crate::packet::QoS,
    /// Prepended to the pattern on midge's side.
    pub local_prefix: String,
    /// Prepended to the pattern on the remote's side.
    pub remote_prefix: String,
}

/// Which way a bridge topic's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeDirection {
    /// Remote to midge.
    In,
    /// Midge to remote (the default).
    Out,
    /// Both ways.
    Both,
}

/// When a bridge connects (`start_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartType {
    /// At start, and again after every failure (the default).
    Automatic,
    /// When `threshold` messages are queued for the remote; it stops after
    /// `idle_timeout` with nothing to send.
    Lazy,
    /// At start only; not restarted after it fails.
    Once,
}

/// TLS to a bridge's remote.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeTls {
    /// CA certificates the remote's certificate must chain to
    /// (`bridge_cafile`); `None`: the PEM files in `capath`.
    pub cafile: Option<PathBuf>,
    /// A directory of PEM CA certificates (`bridge_capath`).
    pub capath: Option<PathBuf>,
    /// Client certificate (`bridge_certfile`), with `keyfile`.
    pub certfile: Option<PathBuf>,
    /// Client key (`bridge_keyfile`).
    pub keyfile: Option<PathBuf>,
    /// `bridge_insecure true`: the remote's certificate is not checked
    /// against the host name (its chain still is).
    pub insecure: bool,
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
            bridges: Vec::new(),
            cluster: None,
        }
    }
}

impl Config {
    /// The defaults with a single plain listener on `bind` (e.g. port 0).
    pub fn listening_on(bind: SocketAddr) -> Config {
        Config { listeners: vec![Listener::tcp(bind)], ..Config::default() }
    }

    /// The bridge whose own session `client_id` is, if any.
    pub fn bridge_of_session(&self, client_id: &str) -> Option<&Bridge> {
        self.bridges.iter().find(|b| b.local_id() == client_id)
    }

    /// The session limits of the session `client_id`: a bridge's own
    /// session has its bridge's queue limits.
    pub fn limits_for(&self, client_id: &str) -> Limits {
        let mut limits = self.limits();
        if let Some(bridge) = self.bridge_of_session(client_id) {
            limits.max_queued = bridge.max_queued.unwrap_or(limits.max_queued);
            limits.max_queued_bytes = match bridge.max_queued_bytes {
                Some(0) => usize::MAX,
                Some(n) => n,
                None => limits.max_queued_bytes,
            };
        }
        limits
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
