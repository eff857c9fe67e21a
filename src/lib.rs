//! midge: an MQTT 5.0, 3.1.1 and 3.1 broker that runs on async-std or smol, standalone or
//! inside your own program.
//!
//! Build a [`Broker`] from a [`Config`], start a [`Server`] on a runtime
//! adapter, and call [`Server::shutdown`] when you are done. With smol, hand
//! midge your own executor with `Smol::with_executor(Arc<Executor>)`, or let
//! it start threads with `Smol::with_threads(n)`; with async-std, use
//! `AsyncStd`. The embedding examples listed in the README show
//! a whole program.
//!
//! ```
//! # #[cfg(feature = "smol")] {
//! use midge::{Broker, Config, Server, Smol};
//!
//! let config = Config::listening_on("127.0.0.1:0".parse().unwrap());
//! futures::executor::block_on(async {
//!     let server = Server::start(Smol::with_threads(1), Broker::in_memory(config).map_err(std::io::Error::other)?).await?;
//!     println!("MQTT on {}", server.local_addrs()[0]);
//!     server.shutdown().await;
//!     Ok::<_, std::io::Error>(())
//! })
//! .unwrap();
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod deferred;
pub mod error;
pub mod expiry;
pub mod gate;
pub mod handle;
pub mod http;
pub mod keepalive;
pub mod logging;
pub mod metrics;
pub mod mosquitto_conf;
pub mod outbox;
pub mod packet;
pub mod retain;
pub mod runtime;
pub mod security;
pub mod server;
pub mod session;
pub mod session_handle;
pub mod signal;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tls;
pub mod topic;
pub mod trie;
pub mod v5;
pub mod validate;
pub mod ws;

pub use broker::Broker;
pub use config::Config;
#[cfg(feature = "async-std")]
pub use runtime::AsyncStd;
#[cfg(feature = "smol")]
pub use runtime::Smol;
pub use runtime::{Runtime, RuntimeKind};
pub use server::Server;
