//! The accept loop: bind every listener, spawn one task per connection, and
//! stop cleanly on shutdown.

use crate::broker::Broker;
use crate::runtime::Runtime;
use crate::{connection, expiry, sys};
use async_channel::{Receiver, Sender};
use futures::future::{Either, select};
use futures::pin_mut;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// How long shutdown waits for connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running broker: its listeners' addresses and the handle to stop it.
pub struct Server<R: Runtime> {
    rt: R,
    broker: Broker,
    local_addrs: Vec<SocketAddr>,
    /// Closed to tell the accept loops and connections to stop.
    stop: Sender<()>,
    /// Fails to receive once every task holding a `Sender` clone has ended.
    done: Receiver<()>,
}

impl<R: Runtime> Server<R> {
    /// Binds every address in the broker's configuration and starts accepting
    /// connections on `rt`. Fails if any address cannot be bound.
    pub async fn start(rt: R, broker: Broker) -> io::Result<Server<R>> {
        let mut listeners = Vec::new();
        for addr in broker.config().listeners.iter().map(|l| l.bind) {
            let listener =
                rt.bind(addr).await.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(listener);
        }
        let (stop, stopped) = async_channel::bounded(1);
        let (alive, done) = async_channel::bounded(1);
        let mut local_addrs = Vec::new();
        for listener in listeners {
            let addr = R::local_addr(&listener)?;
            log::info!("listening on {addr} (runtime {})", rt.name());
            local_addrs.push(addr);
            let task = accept_loop(rt.clone(), broker.clone(), listener, stopped.clone(), alive.clone());
            rt.spawn(task);
        }
        rt.spawn(sys::run(rt.clone(), broker.clone(), stopped.clone()));
        rt.spawn(expiry::run(rt.clone(), broker.clone(), stopped));
        Ok(Server { rt, broker, local_addrs, stop, done })
    }

    /// The bound addresses, in configuration order (real ports for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The broker's shared state.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops accepting, closes every connection and waits up to
    /// [`SHUTDOWN_GRACE`] for their tasks to end.
    pub async fn shutdown(self) {
        self.stop.close();
        let all_done = self.done.recv();
        let grace = self.rt.sleep(SHUTDOWN_GRACE);
        pin_mut!(all_done, grace);
        if let Either::Right(_) = select(all_done, grace).await {
            log::warn!("shutdown: some connections did not end within {SHUTDOWN_GRACE:?}");
        }
        self.broker.close();
        log::info!("broker stopped");
    }
}

async fn accept_loop<R: Runtime>(
    rt: R,
    broker: Broker,
    listener: R::Listener,
    stopped: Receiver<()>,
    alive: Sender<()>,
) {
    loop {
        let accepted = {
            let accept = rt.accept(&listener);
            let stop = stopped.recv();
            pin_mut!(accept, stop);
            match select(accept, stop).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => return,
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let (broker, stopped, alive) = (broker.clone(), stopped.clone(), alive.clone());
                let rt2 = rt.clone();
                rt.spawn(async move {
                    connection::run(rt2, broker, stream, peer, stopped).await;
                    drop(alive);
                });
            }
            Err(e) => {
                log::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                rt.sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
