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
/// Where durable state lives unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "midge-data";
/// How often `$SYS` statistics are published (Mosquitto's default).
pub const DEFAULT_SYS_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the broker can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP listeners.
    pub bind: Vec<SocketAddr>,
    /// Largest packet accepted from a client, fixed header included.
    pub max_packet_size: usize,
    /// Time allowed between accept and CONNECT.
    pub connect_timeout: Duration,
    /// Outbound QoS 1/2 messages in flight per client.
    pub max_inflight: usize,
    /// Messages queued per client.
    pub max_queued: usize,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0: bool,
    /// `$SYS` publishing interval; zero turns it off.
    pub sys_interval: Duration,
    /// Directory of the durable store; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Move a damaged store aside and start empty instead of refusing to start.
    pub recover_store: bool,
    /// Remove persistent sessions whose client has been away this long.
    pub session_expiry: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: vec![DEFAULT_BIND.parse().expect("valid default address")],
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            queue_qos0: false,
            sys_interval: DEFAULT_SYS_INTERVAL,
            data_dir: Some(DEFAULT_DATA_DIR.into()),
            recover_store: false,
            session_expiry: None,
        }
    }
}

impl Config {
    /// The session limits this configuration sets.
    pub fn limits(&self) -> Limits {
        Limits { max_inflight: self.max_inflight, max_queued: self.max_queued, queue_qos0: self.queue_qos0 }
    }
}
