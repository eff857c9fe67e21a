//! midge: an MQTT 3.1.1 broker that runs on async-std or smol, standalone or
//! inside your own program.
//!
//! Build a [`Broker`] from a [`Config`], start a [`Server`] on a runtime
//! adapter ([`Smol`] with your executor, or [`AsyncStd`]), and call
//! [`Server::shutdown`] when you are done:
//!
//! ```no_run
//! # #[cfg(feature = "smol")] {
//! use std::sync::Arc;
//! use midge::{Broker, Config, Server, Smol};
//!
//! let executor = Arc::new(smol::Executor::new());
//! let config = Config { bind: vec!["127.0.0.1:0".parse().unwrap()], ..Config::default() };
//! smol::block_on(executor.run(async {
//!     let server = Server::start(Smol::with_executor(executor.clone()), Broker::new(config)).await?;
//!     println!("MQTT on {}", server.local_addrs()[0]);
//!     server.shutdown().await;
//!     Ok::<_, std::io::Error>(())
//! }))
//! .unwrap();
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod broker;
pub mod cli;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod handle;
pub mod packet;
pub mod retain;
pub mod runtime;
pub mod server;
pub mod session;
pub mod stats;
pub mod topic;
pub mod trie;
pub mod validate;

pub use broker::Broker;
pub use config::Config;
#[cfg(feature = "async-std")]
pub use runtime::AsyncStd;
#[cfg(feature = "smol")]
pub use runtime::Smol;
pub use runtime::{Runtime, RuntimeKind};
pub use server::Server;
