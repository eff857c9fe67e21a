//! The async-std adapter: the global async-std executor and its TCP types.
//!
//! async-std is discontinued upstream in favour of smol; this adapter stays
//! fully supported but nothing new is built on async-std's extras.

use crate::runtime::Runtime;
use async_std::net::{TcpListener, TcpStream};
use std::{future::Future, io, net::SocketAddr, time::Duration};

/// Runs midge on async-std's global executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl AsyncStd {
    /// Sizes async-std's global executor to `threads` worker threads. Call it
    /// before anything else uses async-std; later calls have no effect.
    pub fn init(threads: usize) {
        let config =
            async_global_executor::GlobalExecutorConfig::default().with_min_threads(threads).with_max_threads(threads);
        async_global_executor::init_with_config(config);
    }

    /// Blocks the current thread on `future` (for the binary and tests; an
    /// embedding application uses its own executor).
    pub fn block_on<T>(future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }
}

impl Runtime for AsyncStd {
    type Listener = TcpListener;
    type Stream = TcpStream;

    fn name(&self) -> &'static str {
        "async-std"
    }

    async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    fn local_addr(listener: &TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn accept(&self, listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Dropping an async-std JoinHandle detaches the task.
        drop(async_std::task::spawn(task));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        async_std::task::sleep(duration)
    }
}
