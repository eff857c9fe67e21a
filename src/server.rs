//! The accept loop: bind every listener, spawn one task per connection, and
//! stop cleanly on shutdown.

use crate::broker::Broker;
use crate::config::{Listener, TlsFiles};
use crate::handle::Peer;
use crate::runtime::{Runtime, within};
use crate::stats::ListenerStats;
use crate::tls::TlsAcceptor;
use crate::{bridge, connection, expiry, http, logging, sys, ws};
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
    /// The HTTP endpoint's bound address, when configured.
    http_addr: Option<SocketAddr>,
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
        let http = match broker.config().http_listener {
            Some(addr) => Some(
                rt.bind(addr)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (http_listener): {e}")))?,
            ),
            None => None,
        };
        // Before any client can publish: what it sends for a bridge queues.
        bridge::prepare(&broker);
        if let Some(cluster) = &broker.config().cluster {
            join_cluster(&broker, cluster)?;
        }
        let total = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = async_channel::bounded(1);
        let (alive, done) = async_channel::bounded(1);
        let mut local_addrs = Vec::new();
        for (index, (listener, config, acceptor)) in listeners.into_iter().enumerate() {
            let addr = R::local_addr(&listener)?;
            let (kind, label) = match (&config.websockets, acceptor.is_some()) {
                (None, false) => ("MQTT".to_owned(), "mqtt"),
                (None, true) => ("MQTT over TLS".to_owned(), "mqtt+tls"),
                (Some(w), false) => (format!("MQTT over WebSockets, {}", ws_path(w)), "ws"),
                (Some(w), true) => (format!("MQTT over secure WebSockets, {}", ws_path(w)), "wss"),
            };
            log::info!("listening on {addr} ({kind}, runtime {})", rt.name());
            local_addrs.push(addr);
            let counters = broker.stats().add_listener(addr.to_string(), label);
            rt.spawn(accept_loop(Accepting {
                rt: rt.clone(),
                broker: broker.clone(),
                listener,
                index,
                config: Arc::new(config),
                tls: acceptor,
                open: Arc::new(AtomicUsize::new(0)),
                total: total.clone(),
                counters,
                stopped: stopped.clone(),
                alive: alive.clone(),
            }));
        }
        let mut http_addr = None;
        if let Some(listener) = http {
            let addr = R::local_addr(&listener)?;
            log::info!("listening on {addr} (HTTP: /metrics, /healthz)");
            http_addr = Some(addr);
            rt.spawn(http::run(rt.clone(), broker.clone(), listener, stopped.clone(), alive.clone()));
        }
        for bridge in &broker.config().bridges {
            log::info!(
                "bridge {}: forwarding to {}",
                bridge.name,
                bridge.addresses.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>().join(", ")
            );
            rt.spawn(bridge::run(rt.clone(), broker.clone(), bridge.clone(), stopped.clone(), alive.clone()));
        }
        rt.spawn(sys::run(rt.clone(), broker.clone(), stopped.clone()));
        rt.spawn(expiry::run(rt.clone(), broker.clone(), stopped.clone()));
        rt.spawn(report_suppressed(rt.clone(), stopped));
        Ok(Server { rt, broker, local_addrs, http_addr, stop, done, tls })
    }

    /// The bound addresses, in configuration order (real ports for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The HTTP endpoint's address (`http_listener`; the real port for port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
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
        self.broker.stop_connections();
        let all_done = self.done.recv();
        let grace = self.rt.sleep(SHUTDOWN_GRACE);
        pin_mut!(all_done, grace);
        if let Either::Right(_) = select(all_done, grace).await {
            log::warn!("shutdown: some connections did not end within {SHUTDOWN_GRACE:?}");
        }
        // After the connections: what their ends change (the routes of
        // clean sessions) reaches the cluster first.
        if let Some(peers) = self.broker.peers() {
            peers.stop();
        }
        self.broker.close();
        logging::flush_suppressed();
        log::info!("broker stopped");
    }
}

/// Joins the cluster the configuration names (once per broker).
#[cfg(feature = "cluster")]
fn join_cluster(broker: &Broker, cluster: &crate::config::Cluster) -> io::Result<()> {
    if broker.peers().is_none() {
        crate::cluster::start(broker, cluster).map_err(io::Error::other)?;
    }
    Ok(())
}

#[cfg(not(feature = "cluster"))]
fn join_cluster(_: &Broker, cluster: &crate::config::Cluster) -> io::Result<()> {
    Err(io::Error::other(format!(
        "cluster_redis {}: this midge was built without the cluster feature (cargo build --features cluster)",
        cluster.redis
    )))
}

/// A WebSocket listener's path, for the log line at start.
fn ws_path(w: &crate::config::WebSockets) -> String {
    match &w.path {
        Some(path) => format!("path {path}"),
        None => "any path".into(),
    }
}

/// The server side of a TLS handshake, and `peer` with the client
/// certificate's identity when its listener uses it; failures are counted
/// and logged.
async fn tls_handshake<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin>(
    broker: &Broker,
    tls: &TlsAcceptor,
    stream: S,
    peer: Peer,
) -> Option<(futures_rustls::server::TlsStream<S>, Peer)> {
    /// Counts a failed handshake when dropped unfinished: on an error, or
    /// when the connect timeout cancels the handshake (for `wss://`, only a
    /// timeout in the TLS part, not in the WebSocket one after it).
    struct Unfinished<'a>(Option<&'a Broker>);
    impl Drop for Unfinished<'_> {
        fn drop(&mut self) {
            if let Some(broker) = self.0 {
                broker.stats().tls_handshake_failed();
            }
        }
    }
    let mut unfinished = Unfinished(Some(broker));
    match tls.accept(stream).await {
        Ok(connection) => {
            unfinished.0 = None;
            let identity = connection.identity.filter(|_| peer.identity_required);
            Some((connection.stream, Peer { identity, ..peer }))
        }
        Err(e) => {
            drop(unfinished);
            let addr = peer.addr;
            crate::limited!("TLS handshake failed", log::Level::Warn, "{addr}: TLS handshake failed: {e}");
            None
        }
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
    match within(&rt, timeout, handshakes).await {
        Some(Some((stream, peer))) => connection::run(rt, broker, stream, peer, stopped).await,
        Some(None) => {}
        None => crate::limited!(
            "handshake timeout",
            log::Level::Warn,
            "{addr}: {kind} handshake not done within {timeout:?}, closing"
        ),
    }
}

/// The WebSocket handshake of a connection to `listener`; `peer` gets the
/// client's address from `X-Forwarded-For` where the listener trusts it.
async fn ws_handshake<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin>(
    stream: S,
    listener: &Listener,
    peer: Peer,
    max_packet_size: usize,
) -> Option<(ws::WsStream<S>, Peer)> {
    let settings = listener.websockets.as_ref()?;
    let (stream, client) = ws::accept(stream, settings, peer.addr, max_packet_size).await?;
    Some((stream, Peer { addr: client, ..peer }))
}

/// The TLS handshake, then the WebSocket one, of a `wss://` connection.
async fn wss_handshakes<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin>(
    broker: &Broker,
    tls: &TlsAcceptor,
    stream: S,
    listener: &Listener,
    peer: Peer,
) -> Option<(ws::WsStream<futures_rustls::server::TlsStream<S>>, Peer)> {
    let (stream, peer) = tls_handshake(broker, tls, stream, peer).await?;
    ws_handshake(stream, listener, peer, broker.config().max_packet_size).await
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
    /// Its index in the configuration's listeners.
    index: usize,
    config: Arc<Listener>,
    /// The TLS acceptor of a TLS listener.
    tls: Option<Arc<TlsAcceptor>>,
    /// Open connections on this listener.
    open: Arc<AtomicUsize>,
    /// Open connections on every listener.
    total: Arc<AtomicUsize>,
    /// This listener's connection counters.
    counters: Arc<ListenerStats>,
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
                let tls = a.tls.clone();
                let peer = Peer {
                    identity_required: a.config.tls.as_ref().is_some_and(|t| t.use_identity_as_username),
                    listener_stats: Some(a.counters.clone()),
                    ..Peer::plain(addr).on_listener(a.index)
                };
                let listener = a.config.websockets.is_some().then(|| a.config.clone());
                let held = (slot, alive);
                match (tls, listener) {
                    // The connection's own future is the task: wrapped in
                    // another, what it captures would be stored twice.
                    (None, None) => a.rt.spawn(connection::run_holding(rt, broker, stream, peer, stopped, held)),
                    // Boxed: a TLS or WebSocket connection's state is
                    // several KiB, and inline it would make every plain
                    // connection's task as big. The handshakes are boxed
                    // apart, so the task keeps none of their state.
                    (Some(tls), None) => a.rt.spawn(async move {
                        let handshake = Box::pin(tls_handshake(&broker, &tls, stream, peer));
                        Box::pin(serve_after(rt, broker.clone(), handshake, "TLS", addr, stopped)).await;
                        drop(held);
                    }),
                    (None, Some(listener)) => a.rt.spawn(async move {
                        let max = broker.config().max_packet_size;
                        let handshake = Box::pin(ws_handshake(stream, &listener, peer, max));
                        Box::pin(serve_after(rt, broker, handshake, "WebSocket", addr, stopped)).await;
                        drop(held);
                    }),
                    (Some(tls), Some(listener)) => a.rt.spawn(async move {
                        let handshakes = Box::pin(wss_handshakes(&broker, &tls, stream, &listener, peer));
                        let kind = "TLS and WebSocket";
                        Box::pin(serve_after(rt, broker.clone(), handshakes, kind, addr, stopped)).await;
                        drop(held);
                    }),
                }
            }
            Err(e) => {
                log::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                a.rt.sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
