//! The accept loop: bind every listener, spawn one task per connection, and
//! stop cleanly on shutdown.

use crate::broker::Broker;
use crate::config::{Listener, TlsFiles};
use crate::handle::Peer;
use crate::runtime::Runtime;
use crate::tls::TlsAcceptor;
use crate::{connection, expiry, logging, sys, ws};
use async_channel::{Receiver, Sender};
use futures::future::{Either, select};
use futures::pin_mut;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    /// TLS listeners' acceptors and files, for reloads.
    tls: Vec<(Arc<TlsAcceptor>, TlsFiles)>,
}

impl<R: Runtime> Server<R> {
    /// Binds every address in the broker's configuration and starts accepting
    /// connections on `rt`. Fails if any address cannot be bound.
    pub async fn start(rt: R, broker: Broker) -> io::Result<Server<R>> {
        let mut listeners = Vec::new();
        let mut tls = Vec::new();
        for config in &broker.config().listeners {
            let addr = config.bind;
            let acceptor = match &config.tls {
                Some(files) => {
                    let acceptor =
                        TlsAcceptor::new(files).map_err(|e| io::Error::other(format!("listener {addr}: {e}")))?;
                    let acceptor = Arc::new(acceptor);
                    tls.push((acceptor.clone(), files.clone()));
                    Some(acceptor)
                }
                None => None,
            };
            let listener =
                rt.bind(addr).await.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push((listener, config.clone(), acceptor));
        }
        let total = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = async_channel::bounded(1);
        let (alive, done) = async_channel::bounded(1);
        let mut local_addrs = Vec::new();
        for (listener, config, acceptor) in listeners {
            let addr = R::local_addr(&listener)?;
            let kind = match (&config.websockets, acceptor.is_some()) {
                (None, false) => "MQTT".to_owned(),
                (None, true) => "MQTT over TLS".to_owned(),
                (Some(w), false) => format!("MQTT over WebSockets, path {}", w.path),
                (Some(w), true) => format!("MQTT over secure WebSockets, path {}", w.path),
            };
            log::info!("listening on {addr} ({kind}, runtime {})", rt.name());
            local_addrs.push(addr);
            rt.spawn(accept_loop(Accepting {
                rt: rt.clone(),
                broker: broker.clone(),
                listener,
                config: Arc::new(config),
                tls: acceptor,
                open: Arc::new(AtomicUsize::new(0)),
                total: total.clone(),
                stopped: stopped.clone(),
                alive: alive.clone(),
            }));
        }
        rt.spawn(sys::run(rt.clone(), broker.clone(), stopped.clone()));
        rt.spawn(expiry::run(rt.clone(), broker.clone(), stopped.clone()));
        rt.spawn(report_suppressed(rt.clone(), stopped));
        Ok(Server { rt, broker, local_addrs, stop, done, tls })
    }

    /// The bound addresses, in configuration order (real ports for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Re-reads the password and ACL files (SIGHUP); on an error what was in
    /// force stays.
    pub fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.broker.reload_security() {
            errors.push(e);
        }
        for (acceptor, files) in &self.tls {
            if let Err(e) = acceptor.reload(files) {
                errors.push(e.to_string());
            }
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors.join("; ")),
        }
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
        logging::flush_suppressed();
        log::info!("broker stopped");
    }
}

/// The server side of a TLS handshake and the peer it makes; failures are
/// logged.
async fn tls_handshake<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin>(
    tls: &TlsAcceptor,
    stream: S,
    addr: SocketAddr,
    use_identity: bool,
) -> Option<(futures_rustls::server::TlsStream<S>, Peer)> {
    match tls.accept(stream).await {
        Ok(connection) => {
            let identity = connection.identity.filter(|_| use_identity);
            Some((connection.stream, Peer { addr, identity, identity_required: use_identity }))
        }
        Err(e) => {
            crate::limited!("TLS handshake failed", log::Level::Warn, "{addr}: TLS handshake failed: {e}");
            None
        }
    }
}

/// `Some(Some(value))`: `fut` gave a value within `timeout`; `Some(None)`:
/// it failed (and logged why); `None`: the time ran out.
async fn bounded<R: Runtime, T>(
    rt: &R,
    timeout: Duration,
    fut: impl std::future::Future<Output = Option<T>>,
) -> Option<Option<T>> {
    let deadline = rt.sleep(timeout);
    pin_mut!(fut, deadline);
    match select(fut, deadline).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// Runs `handshakes` (TLS; WebSocket; for `wss://` both) within the connect
/// timeout, on the connection's own task so a slow handshake never holds up
/// the accept loop, then the MQTT connection over the stream they made.
/// `kind` names them in the log line of a timeout. Each kind of listener has
/// its own instance (a `ws://` task is not sized for TLS state), and the
/// caller boxes `handshakes`, so their state (2.3 KiB for `ws://`) is freed
/// once done instead of staying in the task.
async fn serve_after<R, S>(
    rt: R,
    broker: Broker,
    handshakes: impl std::future::Future<Output = Option<(S, Peer)>>,
    kind: &'static str,
    addr: SocketAddr,
    stopped: Receiver<()>,
) where
    R: Runtime,
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + Send,
{
    let timeout = broker.config().connect_timeout;
    let accepted = bounded(&rt, timeout, handshakes).await;
    match accepted {
        Some(Some((stream, peer))) => connection::run(rt, broker, stream, peer, stopped).await,
        Some(None) => {}
        None => crate::limited!(
            "handshake timeout",
            log::Level::Warn,
            "{addr}: {kind} handshake not done within {timeout:?}, closing"
        ),
    }
}

/// The WebSocket handshake of a connection to `listener`.
async fn ws_handshake<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin>(
    stream: S,
    listener: &Listener,
    addr: SocketAddr,
    max_packet_size: usize,
) -> Option<(ws::WsStream<S>, Peer)> {
    let settings = listener.websockets.as_ref()?;
    let (stream, client) = ws::accept(stream, settings, addr, max_packet_size).await?;
    Some((stream, Peer::plain(client)))
}

/// The TLS handshake, then the WebSocket one, of a `wss://` connection.
async fn wss_handshakes<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin>(
    tls: &TlsAcceptor,
    stream: S,
    listener: &Listener,
    addr: SocketAddr,
    max_packet_size: usize,
) -> Option<(ws::WsStream<futures_rustls::server::TlsStream<S>>, Peer)> {
    let use_identity = listener.tls.as_ref().is_some_and(|t| t.use_identity_as_username);
    let (stream, peer) = tls_handshake(tls, stream, addr, use_identity).await?;
    let (stream, client) = ws_handshake(stream, listener, addr, max_packet_size).await?;
    Some((stream, Peer { addr: client.addr, ..peer }))
}

/// Logs the counts of rate-limited log lines (see [`logging`]) once their
/// window has passed, so a flood that stops is still reported.
async fn report_suppressed<R: Runtime>(rt: R, stopped: Receiver<()>) {
    loop {
        let pending = logging::pending();
        let stop = stopped.recv();
        pin_mut!(pending, stop);
        if let Either::Right(_) = select(pending, stop).await {
            return;
        }
        let window = rt.sleep(logging::WINDOW);
        let stop = stopped.recv();
        pin_mut!(window, stop);
        if let Either::Right(_) = select(window, stop).await {
            return;
        }
        logging::report_suppressed(Instant::now());
    }
}

/// A connection counted against its listener's and the broker's limits;
/// the counts go down when it is dropped.
struct Slot {
    counters: [Arc<AtomicUsize>; 2],
}

impl Slot {
    /// Takes a slot unless a limit is reached.
    fn take(counters: [&Arc<AtomicUsize>; 2], limits: [Option<usize>; 2]) -> Option<Slot> {
        let slot = Slot { counters: counters.map(Arc::clone) };
        let taken = slot.counters.iter().map(|c| c.fetch_add(1, Ordering::AcqRel) + 1);
        let within = taken.zip(limits).all(|(n, limit)| limit.is_none_or(|max| n <= max));
        within.then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        for counter in &self.counters {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What an accept loop needs to know about its listener.
struct Accepting<R: Runtime> {
    rt: R,
    broker: Broker,
    listener: R::Listener,
    config: Arc<Listener>,
    /// The TLS acceptor of a TLS listener.
    tls: Option<Arc<TlsAcceptor>>,
    /// Open connections on this listener.
    open: Arc<AtomicUsize>,
    /// Open connections on every listener.
    total: Arc<AtomicUsize>,
    stopped: Receiver<()>,
    alive: Sender<()>,
}

async fn accept_loop<R: Runtime>(a: Accepting<R>) {
    let limits = [a.config.max_connections, a.broker.config().max_connections];
    loop {
        let accepted = {
            let accept = a.rt.accept(&a.listener);
            let stop = a.stopped.recv();
            pin_mut!(accept, stop);
            match select(accept, stop).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => return,
            }
        };
        match accepted {
            Ok((stream, addr)) => {
                let Some(slot) = Slot::take([&a.open, &a.total], limits) else {
                    let bind = a.config.bind;
                    crate::limited!(
                        "max_connections",
                        log::Level::Warn,
                        "{addr}: connection refused on {bind}: max_connections reached"
                    );
                    continue;
                };
                let (broker, stopped, alive, rt) = (a.broker.clone(), a.stopped.clone(), a.alive.clone(), a.rt.clone());
                let (tls, use_identity) =
                    (a.tls.clone(), a.config.tls.as_ref().is_some_and(|t| t.use_identity_as_username));
                let listener = a.config.websockets.is_some().then(|| a.config.clone());
                a.rt.spawn(async move {
                    match (tls, listener) {
                        (None, None) => connection::run(rt, broker, stream, Peer::plain(addr), stopped).await,
                        // Boxed: a TLS or WebSocket connection's state is
                        // several KiB, and inline it would make every plain
                        // connection's task as big. The handshakes are boxed
                        // apart, so the task keeps none of their state.
                        (Some(tls), None) => {
                            let handshake = Box::pin(tls_handshake(&tls, stream, addr, use_identity));
                            Box::pin(serve_after(rt, broker, handshake, "TLS", addr, stopped)).await
                        }
                        (None, Some(listener)) => {
                            let max = broker.config().max_packet_size;
                            let handshake = Box::pin(ws_handshake(stream, &listener, addr, max));
                            Box::pin(serve_after(rt, broker, handshake, "WebSocket", addr, stopped)).await
                        }
                        (Some(tls), Some(listener)) => {
                            let max = broker.config().max_packet_size;
                            let handshakes = Box::pin(wss_handshakes(&tls, stream, &listener, addr, max));
                            Box::pin(serve_after(rt, broker, handshakes, "TLS and WebSocket", addr, stopped)).await
                        }
                    }
                    drop((slot, alive));
                });
            }
            Err(e) => {
                log::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                a.rt.sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
