//! Test support: the per-runtime test macro, brokers on port 0, and a
//! byte-level client.

pub mod client;
pub mod packets;
pub mod process;

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
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[cfg(feature = "async-std")]
            #[test]
            fn async_std() {
                let broker = $crate::support::TestBroker::start(midge::RuntimeKind::AsyncStd, $configure);
                ($body)(&broker);
            }

            #[cfg(feature = "smol")]
            #[test]
            fn smol() {
                let broker = $crate::support::TestBroker::start(midge::RuntimeKind::Smol, $configure);
                ($body)(&broker);
            }
        }
    };
}

/// A broker listening on 127.0.0.1 on a free port, shut down on drop.
pub struct TestBroker {
    /// The address clients connect to.
    pub addr: SocketAddr,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl TestBroker {
    /// Starts a broker on `runtime` with the test defaults adjusted by `configure`.
    pub fn start(runtime: RuntimeKind, configure: impl FnOnce(&mut Config)) -> TestBroker {
        let _ = femme_once();
        let mut config = Config {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        configure(&mut config);
        let broker = Broker::new(config);
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
        let server = futures::executor::block_on(Server::start(rt, broker)).expect("start broker");
        let addr = server.local_addrs()[0];
        let stop = Box::new(move || futures::executor::block_on(server.shutdown()));
        TestBroker {
            addr,
            stop: Some(stop),
        }
    }

    /// A raw client connected over TCP, before any packet is sent.
    pub fn raw(&self) -> client::Raw {
        client::Raw::connect(self.addr)
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
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// One smol executor with two threads shared by every smol test.
#[cfg(feature = "smol")]
fn smol_runtime() -> midge::Smol {
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
