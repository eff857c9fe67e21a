//! The runtime seam: what the broker needs from an executor, and which
//! adapters are compiled in. The only place outside `runtimes/` that names
//! a runtime crate's module.

use futures::io::{AsyncRead, AsyncWrite};
use std::{fmt, future::Future, io, net::SocketAddr, str::FromStr, time::Duration};

#[cfg(not(any(feature = "async-std", feature = "smol")))]
compile_error!("midge needs a runtime: enable the `async-std` feature, the `smol` feature, or both");

#[cfg(feature = "async-std")]
#[path = "../runtimes/async_std.rs"]
mod async_std_rt;
#[cfg(feature = "async-std")]
pub use async_std_rt::AsyncStd;

#[cfg(feature = "smol")]
#[path = "../runtimes/smol.rs"]
mod smol_rt;
#[cfg(feature = "smol")]
pub use smol_rt::{Smol, SmolStream};

/// An executor and reactor the broker can run on. Methods take `&self` so a
/// value can carry an executor (the smol adapter holds one).
pub trait Runtime: Clone + Send + Sync + 'static {
    /// A bound TCP listener.
    type Listener: Send + Sync + 'static;
    /// An accepted TCP connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The runtime's name, for log lines.
    fn name(&self) -> &'static str;
    /// Binds a TCP listener.
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    /// The address a listener is bound to (the real port after binding port 0).
    fn local_addr(listener: &Self::Listener) -> io::Result<SocketAddr>;
    /// Accepts one connection, with `TCP_NODELAY` set.
    fn accept(&self, listener: &Self::Listener) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    /// Opens a TCP connection to `addr`, with `TCP_NODELAY` set (bridges).
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Runs a task to completion in the background (detached).
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;
}

/// Runs `fut` for at most `timeout` on `rt`'s timers: `None` if it did not finish.
pub async fn within<R: Runtime, T>(rt: &R, timeout: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let deadline = rt.sleep(timeout);
    futures::pin_mut!(fut, deadline);
    match futures::future::select(fut, deadline).await {
        futures::future::Either::Left((value, _)) => Some(value),
        futures::future::Either::Right(_) => None,
    }
}

/// The runtimes midge knows, whether or not compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// async-std (deprecated upstream; still fully supported).
    AsyncStd,
    /// smol, on midge's own multi-threaded executor.
    Smol,
}

impl RuntimeKind {
    /// The runtimes compiled into this build, smol first.
    pub const COMPILED: &'static [RuntimeKind] = &[
        #[cfg(feature = "smol")]
        RuntimeKind::Smol,
        #[cfg(feature = "async-std")]
        RuntimeKind::AsyncStd,
    ];

    /// The default: smol when it is compiled in, otherwise async-std.
    pub fn default_compiled() -> RuntimeKind {
        Self::COMPILED[0]
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::AsyncStd => "async-std",
            RuntimeKind::Smol => "smol",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let kind = match s {
            "async-std" | "async_std" => RuntimeKind::AsyncStd,
            "smol" => RuntimeKind::Smol,
            _ => return Err(format!("unknown runtime {s:?}: expected async-std or smol")),
        };
        if !Self::COMPILED.contains(&kind) {
            return Err(format!(
                "runtime {kind} is not compiled in (this build has: {}); rebuild with --features {kind}",
                Self::COMPILED.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(kind)
    }
}
