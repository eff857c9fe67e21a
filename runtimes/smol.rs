//! The smol adapter: an `Executor` owned by midge or by the embedding
//! application, and async-net's TCP types.
//!
//! `smol::spawn` alone runs on one thread, so the binary drives its own
//! executor with one thread per core ([`Smol::block_on`]).

use crate::runtime::Runtime;
use smol::net::{TcpListener, TcpStream};
use smol::{Executor, Timer};
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

impl Runtime for Smol {
    type Listener = TcpListener;
    type Stream = TcpStream;

    fn name(&self) -> &'static str {
        "smol"
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
