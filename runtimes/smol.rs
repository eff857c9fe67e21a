//! The smol adapter: an `Executor` owned by midge or by the embedding
//! application, and async-io's TCP sockets (what `smol::net` wraps).
//!
//! `smol::spawn` alone runs on one thread, so the binary drives its own
//! executor with one thread per core ([`Smol::block_on`]).

use crate::runtime::Runtime;
use futures::io::{AsyncRead, AsyncWrite, IoSlice, IoSliceMut};
use smol::{Async, Executor, Timer};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::{future::Future, io, net::SocketAddr, sync::Arc, thread, time::Duration};

/// Runs midge on a smol [`Executor`].
#[derive(Debug, Clone)]
pub struct Smol {
    /// Where connection tasks are spawned; shared with the application.
    executor: Arc<Executor<'static>>,
}

impl Smol {
    /// Uses an executor the application already drives.
    pub fn with_executor(executor: Arc<Executor<'static>>) -> Smol {
        Smol { executor }
    }

    /// A new executor driven by `threads` background threads for the life of
    /// the process (for tests and applications without an executor).
    pub fn with_threads(threads: usize) -> Smol {
        let smol = Smol { executor: Arc::new(Executor::new()) };
        for i in 0..threads.max(1) {
            let executor = smol.executor.clone();
            let name = format!("midge-smol-{i}");
            let run = move || smol::block_on(executor.run(std::future::pending::<()>()));
            thread::Builder::new().name(name).spawn(run).expect("spawn executor thread");
        }
        smol
    }

    /// Runs `main` on a new executor driven by `threads` threads (the calling
    /// thread and `threads - 1` helpers), and stops the helpers when it ends.
    pub fn block_on<F, T>(threads: usize, main: impl FnOnce(Smol) -> F) -> T
    where
        F: Future<Output = T>,
    {
        let smol = Smol { executor: Arc::new(Executor::new()) };
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let helpers: Vec<_> = (1..threads.max(1))
            .map(|i| {
                let (executor, stopped) = (smol.executor.clone(), stopped.clone());
                let run = move || smol::block_on(executor.run(stopped.recv()));
                thread::Builder::new().name(format!("midge-smol-{i}")).spawn(run)
            })
            .collect::<io::Result<_>>()
            .expect("spawn executor threads");
        let executor = smol.executor.clone();
        let output = smol::block_on(executor.run(main(smol)));
        stop.close();
        helpers.into_iter().for_each(|h| drop(h.join()));
        output
    }
}

/// A TCP connection: async-io's `Async<TcpStream>` rather than
/// `smol::net::TcpStream`, which adds an `Arc` and two pending readiness
/// futures (112 bytes in every connection's task) and parks each read's
/// waker in a list that grows an allocation per connection; `Async`'s own
/// reads keep the one waker in place. Closing shuts the write side down, as
/// `smol::net::TcpStream` does.
#[derive(Debug)]
pub struct SmolStream(Async<TcpStream>);

impl AsyncRead for SmolStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for SmolStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown(Shutdown::Write))
    }
}

impl Runtime for Smol {
    type Listener = Async<TcpListener>;
    type Stream = SmolStream;

    fn name(&self) -> &'static str {
        "smol"
    }

    async fn bind(&self, addr: SocketAddr) -> io::Result<Async<TcpListener>> {
        Async::<TcpListener>::bind(addr)
    }

    fn local_addr(listener: &Async<TcpListener>) -> io::Result<SocketAddr> {
        listener.get_ref().local_addr()
    }

    async fn accept(&self, listener: &Async<TcpListener>) -> io::Result<(SmolStream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        stream.get_ref().set_nodelay(true)?;
        Ok((SmolStream(stream), peer))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<SmolStream> {
        let stream = Async::<TcpStream>::connect(addr).await?;
        stream.get_ref().set_nodelay(true)?;
        Ok(SmolStream(stream))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Dropping a smol Task cancels it: detach so it outlives its spawner.
        self.executor.spawn(task).detach();
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let timer = Timer::after(duration);
        async move {
            timer.await;
        }
    }
}
