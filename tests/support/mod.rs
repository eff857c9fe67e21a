//! Test support: the per-runtime test macro, brokers on port 0, and a
//! byte-level client.

pub mod client;
pub mod packets;
pub mod process;
pub mod v5;

use midge::{Broker, Config, Runtime, RuntimeKind, Server};
use std::net::SocketAddr;
use std::sync::OnceLock;

/// Defines one `#[test]` per compiled runtime for a test body taking a
/// `&TestBroker`: `runtime_test!(name, |broker| { ... });` expands to
/// `mod name { fn async_std(); fn smol(); }` (each behind its feature).
/// A second form takes a closure that adjusts the `Config` first.
macro_rules! runtime_test {
    ($(#[$meta:meta])* $name:ident, $body:expr) => {
        runtime_test!($(#[$meta])* $name, |_config| {}, $body);
    };
    ($(#[$meta:meta])* $name:ident, $configure:expr, $body:expr) => {
        runtime_kind_test!($(#[$meta])* $name, |kind: midge::RuntimeKind| {
            let broker = $crate::support::TestBroker::start(kind, $configure);
            ($body)(&broker);
        });
    };
}

/// Defines one `#[test]` per compiled runtime for a body that takes the
/// `RuntimeKind` itself (for tests that start and stop brokers). Attributes
/// (doc comments, `#[ignore = "why"]`) go on each generated test.
macro_rules! runtime_kind_test {
    ($(#[$meta:meta])* $name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            #[cfg(feature = "async-std")]
            #[test]
            fn async_std() {
                ($body)(midge::RuntimeKind::AsyncStd);
            }

            $(#[$meta])*
            #[cfg(feature = "smol")]
            #[test]
            fn smol() {
                ($body)(midge::RuntimeKind::Smol);
            }
        }
    };
}

/// A broker listening on 127.0.0.1 on a free port, shut down on drop.
pub struct TestBroker {
    /// The address clients connect to (the first listener's).
    pub addr: SocketAddr,
    /// The HTTP endpoint's address, when `http_listener` is set.
    pub http: Option<SocketAddr>,
    /// Every listener's address, in configuration order.
    pub addrs: Vec<SocketAddr>,
    /// The first listener's WebSocket path, if it is a WebSocket listener:
    /// then [`TestBroker::raw`] connects over WebSockets.
    pub ws_path: Option<String>,
    /// The broker's shared state (hooks, reloads).
    pub broker: Broker,
    /// The server's reload (SIGHUP): security files and TLS certificates.
    reload: Option<Box<dyn Fn() -> Result<(), String> + Send + Sync>>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl TestBroker {
    /// Starts a broker on `runtime` with the test defaults adjusted by `configure`.
    pub fn start(runtime: RuntimeKind, configure: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Self::config();
        configure(&mut config);
        Self::with_broker(runtime, Broker::open(config).expect("open broker"))
    }

    /// The test defaults: port 0 on 127.0.0.1, in memory.
    pub fn config() -> Config {
        Config { data_dir: None, ..Config::listening_on("127.0.0.1:0".parse().unwrap()) }
    }

    /// Starts an already built broker on `runtime`.
    pub fn with_broker(runtime: RuntimeKind, broker: Broker) -> TestBroker {
        let _ = femme_once();
        match runtime {
            #[cfg(feature = "async-std")]
            RuntimeKind::AsyncStd => Self::start_on(midge::AsyncStd, broker),
            #[cfg(feature = "smol")]
            RuntimeKind::Smol => Self::start_on(smol_runtime(), broker),
            #[allow(unreachable_patterns)]
            other => panic!("runtime {other} not compiled in"),
        }
    }

    fn start_on<R: Runtime>(rt: R, broker: Broker) -> TestBroker {
        let server = futures::executor::block_on(Server::start(rt, broker.clone())).expect("start broker");
        let (addrs, http) = (server.local_addrs().to_vec(), server.http_addr());
        let ws_path = broker.config().listeners[0].websockets.as_ref().map(|w| w.path.clone().unwrap_or("/".into()));
        let server = std::sync::Arc::new(server);
        let reloading = server.clone();
        let reload = Box::new(move || reloading.reload());
        let stop = Box::new(move || {
            let server = std::sync::Arc::into_inner(server).expect("the reload handle is dropped first");
            futures::executor::block_on(server.shutdown())
        });
        TestBroker { addr: addrs[0], addrs, http, ws_path, broker, reload: Some(reload), stop: Some(stop) }
    }

    /// What SIGHUP does: re-reads the security files and TLS certificates.
    pub fn reload(&self) -> Result<(), String> {
        (self.reload.as_ref().expect("running"))()
    }

    /// A raw client connected to the first listener (over TCP, or over
    /// WebSockets for a WebSocket listener), before any packet is sent.
    pub fn raw(&self) -> client::Raw {
        match &self.ws_path {
            None => client::Raw::connect(self.addr),
            Some(path) => client::Raw::connect_ws(self.addr, path),
        }
    }

    /// A client of a persistent session (clean session 0, keepalive 60 s),
    /// after CONNACK 0 with Session Present `present`.
    pub fn persistent(&self, id: &str, present: bool) -> client::Raw {
        let mut raw = self.raw();
        raw.send(&packets::connect(id, false, 60));
        raw.expect(if present { &packets::CONNACK_SESSION_PRESENT } else { &packets::CONNACK_ACCEPTED });
        raw
    }

    /// A client that has sent CONNECT (clean session, keepalive 60 s) and
    /// received CONNACK 0.
    pub fn client(&self, id: &str) -> client::Raw {
        let mut raw = self.raw();
        raw.send(&packets::connect(id, true, 60));
        raw.expect(&packets::CONNACK_ACCEPTED);
        raw
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.reload = None;
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// One smol executor with two threads shared by every smol test.
#[cfg(feature = "smol")]
pub fn smol_runtime() -> midge::Smol {
    static RT: OnceLock<midge::Smol> = OnceLock::new();
    RT.get_or_init(|| midge::Smol::with_threads(2)).clone()
}

/// Logs to stdout (captured by the test harness) when `MIDGE_TEST_LOG` is set.
fn femme_once() -> Option<()> {
    static ONCE: OnceLock<()> = OnceLock::new();
    std::env::var_os("MIDGE_TEST_LOG")?;
    ONCE.get_or_init(|| femme::with_level(log::LevelFilter::Debug));
    Some(())
}

/// A port for a program that must be told one in its arguments or
/// configuration file (redis-server, Mosquitto, a `mosquitto.conf`): free
/// when probed, and drawn at random from below the system's ephemeral range
/// (32768–60999 on Linux), so that no other test's port-0 listener or
/// outgoing connection takes it between the probe and the program's bind.
/// Never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_768;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen: HashSet<u16> = given.iter().copied().collect();
    let random = RandomState::new();
    for attempt in 0u64.. {
        let draw = random.hash_one((std::process::id(), attempt, std::time::Instant::now()));
        let port = LOW + (draw % u64::from(HIGH - LOW)) as u16;
        if seen.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
        assert!(attempt < 10_000, "no free port in {LOW}..{HIGH}");
    }
    unreachable!()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `midge-test-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("midge-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The path as a string, for command lines.
    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
