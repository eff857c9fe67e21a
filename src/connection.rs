//! One task per socket: CONNECT under a timeout, then a loop over the next
//! packet, queued deliveries, takeover, shutdown and the keepalive deadline;
//! the will on the way out.
//!
//! Generic over `futures::io`, so TCP, TLS or an in-memory pipe all work.

use crate::broker::Broker;
use crate::codec::MqttCodec;
use crate::deferred;
use crate::error::{Error, Refusal, Violation};
use crate::gate::ReadGate;
use crate::handle::{self, Admitted, Client, Drained, Flow, Peer};
use crate::outbox::Outbox;
use crate::packet::{Connack, Connect, Disconnect, Packet, Properties, Protocol, ReasonCode};
use crate::runtime::{Runtime, within};
use crate::security::{AuthStep, ConnectInfo};
use crate::session::Receipt;
use crate::session_handle::Waiting;
use crate::signal::{Kick, Signal};
use crate::stats::DropCause;
use crate::store::{Persistence, Ticket, TicketStatus};
use async_channel::Receiver;
use asynchronous_codec::FramedRead;
use bytes::Bytes;
use bytes::BytesMut;
use futures::future::{self, Either, Fuse, FutureExt, select};
use futures::io::{AsyncRead, AsyncWrite};
use futures::{StreamExt, pin_mut};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use std::{fmt, io};

/// A client's socket: asynchronous-codec framing for what it sends, an
/// [`Outbox`] for what it is sent.
struct Transport<S> {
    /// Reads only: writes go through the outbox to the stream underneath.
    framed: FramedRead<ReadGate<S, Kick>, MqttCodec>,
    outbox: Outbox,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    /// asynchronous-codec's 8 KiB read buffer is swapped for an empty one
    /// that grows on demand: an idle connection then holds only what its
    /// last packets needed, not 8 KiB.
    fn new(stream: S, max_packet_size: usize, kick: Arc<Kick>) -> Transport<S> {
        let framed = FramedRead::new(ReadGate::with(stream, kick), MqttCodec::new(max_packet_size));
        let mut parts = framed.into_parts();
        parts.buffer = BytesMut::new();
        Transport { framed: FramedRead::from_parts(parts), outbox: Outbox::new() }
    }

    /// Encodes every packet in `out` into the outbox.
    fn push(&mut self, out: &mut Vec<Packet>) -> Result<(), Error> {
        for packet in out.drain(..) {
            self.outbox.push(&packet)?;
        }
        Ok(())
    }

    /// Writes every packet in `out` with one flush: one syscall for a batch.
    async fn write(&mut self, out: &mut Vec<Packet>) -> Result<(), Error> {
        self.push(out)?;
        Ok(self.outbox.write_to(&mut *self.framed).await?)
    }

    /// Writes what the socket takes now, without waiting.
    fn write_now(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.outbox.poll_write_to(&mut *self.framed, &mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Goes on writing what waits in the outbox, and reads the next packet
    /// if `read`: writes are part of the connection's event loop, so a client
    /// that stops reading never keeps the connection from its keepalive,
    /// takeover or shutdown.
    fn poll_io(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<Event> {
        if !self.outbox.is_empty()
            && let Poll::Ready(written) = self.outbox.poll_write_to(&mut *self.framed, cx)
        {
            return Poll::Ready(Event::Written(written));
        }
        match read {
            true => self.framed.poll_next_unpin(cx).map(Event::Packet),
            false => Poll::Pending,
        }
    }

    /// Adds the bytes read and written to the broker's counters.
    fn account(&mut self, broker: &Broker) {
        let received = self.framed.decoder_mut().take_received();
        broker.stats().bytes(received, self.outbox.take_sent());
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client sent DISCONNECT with reason 0x04 (5.0): publish the will.
    DisconnectWithWill,
    /// The peer closed the socket.
    PeerClosed,
    /// The socket failed.
    Io(std::io::Error),
    /// The client broke a protocol rule.
    Violation(Violation),
    /// A newer connection took over the client id (MQTT-3.1.4-2).
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// This cluster node lost Redis for its lease: it gives its clients up
    /// (another node fires their wills from Redis).
    CutOff,
    /// The store could not commit what the client sent.
    StoreFailed,
}

impl Close {
    /// The will is published on every close not preceded by DISCONNECT
    /// (MQTT-3.1.2-8/-10), a broker shutdown included: it goes to
    /// persistent sessions and the store before the store closes.
    fn publishes_will(&self) -> bool {
        !matches!(self, Close::Disconnect | Close::CutOff)
    }

    /// The reason code of the DISCONNECT a 5.0 client is sent before the
    /// close, when the broker ends the connection (MQTT-4.13.2-1): 0x8E
    /// taken over, 0x8B shutting down, the violation's code (0x8D keep
    /// alive, 0x95 too large, 0x81, 0x82 ...), 0x80 when the store failed.
    fn reason_code(&self) -> Option<ReasonCode> {
        match self {
            Close::TakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::CutOff => Some(ReasonCode::USE_ANOTHER_SERVER),
            Close::Violation(v) => Some(v.reason_code()),
            Close::StoreFailed => Some(ReasonCode::UNSPECIFIED_ERROR),
            Close::Disconnect | Close::DisconnectWithWill | Close::PeerClosed | Close::Io(_) => None,
        }
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Close::Disconnect => f.write_str("client sent DISCONNECT"),
            Close::DisconnectWithWill => f.write_str("client sent DISCONNECT asking for its will"),
            Close::PeerClosed => f.write_str("connection closed by peer"),
            Close::Io(e) => write!(f, "i/o error: {e}"),
            Close::Violation(v) => write!(f, "protocol violation: {v}"),
            Close::TakenOver => f.write_str("taken over by a new connection with the same client id"),
            Close::Shutdown => f.write_str("broker shutting down"),
            Close::CutOff => f.write_str("this cluster node lost Redis for its lease: use another node"),
            Close::StoreFailed => f.write_str("store write failed, not acknowledging what the client sent"),
        }
    }
}

impl From<Error> for Close {
    fn from(e: Error) -> Close {
        match e {
            Error::Violation(v) => Close::Violation(v),
            Error::Io(e) => Close::Io(e),
        }
    }
}

/// Serves one client connection until it ends.
pub fn run<R, S>(
    rt: R,
    broker: Broker,
    stream: S,
    peer: Peer,
    shutdown: Receiver<()>,
) -> impl Future<Output = ()> + Send
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    run_holding(rt, broker, stream, peer, shutdown, ())
}

/// [`run`], keeping `held` (e.g. the listener's connection slot) until the
/// connection ends.
///
/// The future is what every connection's task is made of, idle or not, so
/// it is built with care: the stream goes into its transport before the
/// future exists (an `async fn` keeps its arguments apart from what they
/// were moved into, for its whole life), the captured values are only ever
/// borrowed, the peer is boxed until CONNECT is done, what runs before and
/// after the connection loop is boxed or not `async` at all, and the loop
/// itself is boxed while active and dropped while the connection is parked.
pub(crate) fn run_holding<R, S, H>(
    rt: R,
    broker: Broker,
    stream: S,
    peer: Peer,
    shutdown: Receiver<()>,
    held: H,
) -> impl Future<Output = ()> + Send
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Send,
{
    let kick = Arc::new(Kick::new());
    let mut link = Transport::new(stream, broker.config().max_packet_size, kick.clone());
    let peer = Box::new(peer);
    let conn = broker.next_connection_id();
    async move {
        // Boxed: the CONNECT phase (credentials, a password check on a blocking
        // thread) is needed once; inline, its state would stay in every
        // connection's task for the connection's whole life.
        let mut accepted = {
            let mut out = Vec::new();
            Box::pin(accept(&rt, &broker, &mut link, &peer, conn, kick.clone(), &mut out)).await
        };
        let listener_stats = peer.listener_stats.clone();
        drop(peer);
        // The CONNACK's bytes are not kept by a connection that goes idle.
        link.outbox.release_idle();
        let Some(client) = accepted.as_mut() else {
            Box::pin(close(&rt, &mut link)).await;
            link.account(&broker);
            drop(held);
            return;
        };
        broker.stats().connected();
        let level = client.protocol.level();
        if let Some(listener) = &listener_stats {
            listener.connected(level);
        }
        // What the loop keeps while parked; the rest of its state is boxed
        // and exists only while the connection is active (see park).
        let mut steady = Steady::new(&rt, &broker, client, &kick);
        let mut wake = Wake::Queued;
        let reason = loop {
            match Box::pin(serve(&rt, &broker, client, &mut link, &kick, &shutdown, &mut steady, wake)).await {
                Step::Closed(close) => break close,
                Step::Parked => {
                    // A parked connection holds no buffers: its session's
                    // queues and its outbox are made again when needed.
                    client.session.lock().session.release_idle(Instant::now());
                    link.outbox.release_idle();
                    match park(&broker, client, &mut link, &kick, &shutdown, &mut steady).await {
                        Ok(next) => wake = next,
                        Err(close) => break close,
                    }
                }
            }
        };
        broker.deadlines().disarm(client.conn, steady.deadline);
        // A cluster node cut off from Redis ends its connections as a
        // takeover does, with a reason of its own.
        let reason = match reason {
            Close::TakenOver if broker.peers().is_some_and(|p| !p.serving()) => Close::CutOff,
            other => other,
        };
        finish(&rt, &broker, client, &mut link, reason);
        broker.stats().disconnected();
        if let Some(listener) = &listener_stats {
            listener.disconnected(level);
        }
        Box::pin(close(&rt, &mut link)).await;
        link.account(&broker);
        drop(held);
    }
}

/// After the connection loop: the log line, a 5.0 client's DISCONNECT, the
/// will (now or delayed), and the session's detach.
fn finish<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    broker: &Broker,
    client: &mut Client,
    link: &mut Transport<S>,
    reason: Close,
) {
    let conn = client.conn;
    if link.framed.decoder().refused_oversized_publish() {
        broker.stats().dropped(DropCause::TooLarge, 1);
    }
    let addr = client.peer;
    match &reason {
        Close::Violation(_) => {
            let id = client.id();
            crate::limited!("protocol violation", log::Level::Warn, "client {id} ({addr}) disconnected: {reason}")
        }
        _ => log::info!("client {} ({addr}) disconnected: {reason}", client.id()),
    }
    if client.protocol == Protocol::V5
        && let Some(code) = reason.reason_code()
    {
        // The Reason String names the rule (5.0 allows it on DISCONNECT).
        let properties = Properties { reason_string: Some(reason.to_string().into()), ..Properties::default() };
        let _ = link.push(&mut vec![Packet::Disconnect(Box::new(Disconnect { reason: code, properties }))]);
    }
    let mut delayed = None;
    // The cluster's copy of the will goes, unless another node is to fire it.
    if client.will.is_some()
        && !matches!(reason, Close::CutOff)
        && let Some(peers) = broker.peers()
    {
        let _ = peers.keep_will(conn, client.id(), None);
    }
    if let Some(will) = client.will.take().filter(|_| reason.publishes_will()) {
        let message = handle::will_message(&will);
        // A shutdown publishes every will now.
        let delay = match reason {
            Close::Shutdown => 0,
            _ => handle::will_delay(broker, &will, client.session_expiry),
        };
        // The same rules as a PUBLISH: `$SYS`, the ACL and the hooks.
        if handle::allowed(broker, &client.info(), &message, true) {
            match delay {
                0 => drop(broker.publish(message, will.retain)),
                secs => delayed = Some((message, will.retain, Duration::from_secs(u64::from(secs)))),
            }
        }
    }
    broker.detach(client.id(), conn);
    if let Some((message, retain, delay)) = delayed {
        match broker.delay_will(client.id(), &client.session, conn) {
            // A connection already resumed the session (a takeover).
            None => {}
            Some(None) => drop(broker.publish(message, retain)),
            Some(Some(pending)) => {
                let (timer, broker, id) = (rt.clone(), broker.clone(), client.id().clone());
                rt.spawn(async move {
                    {
                        let sleep = timer.sleep(delay);
                        let decided = pending.decided();
                        pin_mut!(sleep, decided);
                        select(sleep, decided).await;
                    }
                    if pending.send() {
                        log::info!("client {id}: will delay of {delay:?} over or session ended, publishing its will");
                        broker.publish(message, retain);
                    }
                    broker.forget_will(&id, &pending);
                });
            }
        }
    }
}

/// How long the last writes of a closing connection (what was answered
/// before a protocol violation, a TLS close) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes what is still waiting and closes the socket, within
/// [`CLOSE_TIMEOUT`]: a client that does not read cannot hold the task.
async fn close<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(rt: &R, link: &mut Transport<S>) {
    let flushed = within(rt, CLOSE_TIMEOUT, async {
        if !link.outbox.is_empty() {
            link.outbox.write_to(&mut *link.framed).await?;
        }
        futures::AsyncWriteExt::close(&mut *link.framed).await
    });
    if flushed.await.is_none() {
        log::debug!("closing a connection whose client does not read: not waiting for its last writes");
    }
}

/// Waits for CONNECT (MQTT-3.1.0-1) within the connect timeout and answers it.
async fn accept<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    broker: &Broker,
    link: &mut Transport<S>,
    peer: &Peer,
    conn: u64,
    kick: Arc<Kick>,
    out: &mut Vec<Packet>,
) -> Option<Client> {
    let (timeout, addr) = (broker.config().connect_timeout, peer.addr);
    let first = {
        let next = link.framed.next();
        let deadline = rt.sleep(timeout);
        pin_mut!(deadline);
        match select(next, deadline).await {
            Either::Left((packet, _)) => packet,
            Either::Right(_) => {
                crate::limited!("CONNECT timeout", log::Level::Info, "{addr}: no CONNECT within {timeout:?}, closing");
                return None;
            }
        }
    };
    let result = match first {
        Some(Ok(Packet::Connect(connect))) => {
            let aliases = connect.properties.topic_alias_maximum.unwrap_or(0);
            link.outbox.set_protocol(connect.protocol, aliases);
            link.outbox.set_max_packet_size(connect.properties.maximum_packet_size);
            let deadline = Instant::now() + timeout;
            match authenticate_enhanced(rt, broker, link, peer, &connect, deadline).await {
                Ok(auth) => admit(rt, broker, *connect, peer, conn, kick, auth, out).await,
                Err(refusal) => Err(refusal),
            }
        }
        Some(Ok(_)) => Err(Refusal::Violation(Violation::FirstPacketNotConnect)),
        Some(Err(Error::Violation(v))) => Err(Refusal::Violation(v)),
        Some(Err(Error::Io(e))) => {
            log::debug!("{addr}: i/o error before CONNECT: {e}");
            return None;
        }
        None => {
            log::debug!("{addr}: closed before CONNECT");
            return None;
        }
    };
    match result {
        Ok(client) if !durable(rt, broker, &client).await => {
            log::warn!("client {} ({addr}): store write failed, refusing the connection", client.id());
            broker.detach(client.id(), conn);
            None
        }
        // CONNACK and the resent messages go out within the connect
        // timeout, or the client is not reading and is dropped.
        Ok(client) => {
            let why = match within(rt, timeout, link.write(out)).await {
                Some(Ok(())) => return Some(client),
                Some(Err(e)) => Close::from(e).to_string(),
                None => format!("CONNACK not taken within {timeout:?}"),
            };
            log::info!("client {} ({addr}): {why}", client.id());
            broker.detach(client.id(), conn);
            None
        }
        Err(refusal) => {
            if link.framed.decoder().speaks_v5() {
                // A 5.0 CONNECT is refused with its 5.0 reason code
                // (MQTT-3.2.2-6/-7), the rule in the Reason String.
                link.outbox.set_protocol(Protocol::V5, 0);
                let (reason, why) = match &refusal {
                    Refusal::Violation(v) => (v.reason_code(), v.to_string()),
                    Refusal::Policy(code, why) => (ReasonCode::from_connect_code(*code), why.clone()),
                };
                crate::limited!(
                    "CONNECT refused",
                    log::Level::Warn,
                    "{addr}: CONNECT refused: {why} (CONNACK {reason})"
                );
                let properties = Properties { reason_string: Some(why.into()), ..Properties::default() };
                out.push(Packet::Connack(Box::new(Connack { session_present: false, reason, properties })));
                let _ = link.push(out);
            } else {
                crate::limited!("CONNECT refused", log::Level::Warn, "{addr}: CONNECT refused: {refusal}");
                if let Some(code) = refusal.connack() {
                    let reason = ReasonCode::from_connect_code(code);
                    let connack = Connack { session_present: false, reason, properties: Properties::default() };
                    out.push(Packet::Connack(Box::new(connack)));
                    let _ = link.push(out);
                }
            }
            None
        }
    }
}

/// Authentication exchanges take at most this many AUTH round trips.
const MAX_AUTH_STEPS: usize = 16;

/// Runs the enhanced authentication exchange (MQTT 5.0, section 4.12) a
/// CONNECT with an Authentication Method asks for, through the hooks'
/// [`start_auth`](crate::security::Hooks::start_auth), within the connect
/// timeout: AUTH 0x18 packets both ways until the hooks accept or refuse.
/// Returns the method and the final data for CONNACK (MQTT-4.12.0-5).
async fn authenticate_enhanced<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    broker: &Broker,
    link: &mut Transport<S>,
    peer: &Peer,
    connect: &Connect,
    deadline: Instant,
) -> Result<Option<handle::Authenticated>, Refusal> {
    let Some(method) = connect.properties.auth_method.clone() else { return Ok(None) };
    let info = ConnectInfo {
        client_id: &connect.client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer: peer.addr,
    };
    let exchange = broker.guards().hooks.and_then(|h| h.start_auth(&method, &info));
    let Some(mut exchange) = exchange else {
        broker.stats().auth_failed();
        return Err(Refusal::Violation(Violation::V5(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "MQTT-4.12.0-1",
            "authentication method not supported",
        )));
    };
    let mut data = connect.properties.auth_data.clone();
    for _ in 0..MAX_AUTH_STEPS {
        match exchange.step(data.as_deref()) {
            AuthStep::Success(data) => {
                return Ok(Some(handle::Authenticated { method, data: data.map(Bytes::from) }));
            }
            AuthStep::Fail => break,
            AuthStep::Continue(challenge) => {
                let auth = handle::auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, &method, challenge);
                let left = deadline.saturating_duration_since(Instant::now());
                let next = within(rt, left, async {
                    link.write(&mut vec![auth]).await?;
                    link.framed.next().await.transpose()
                });
                data = match next.await {
                    Some(Ok(Some(Packet::Auth(a))))
                        if a.reason == ReasonCode::CONTINUE_AUTHENTICATION
                            && a.properties.auth_method.as_deref() == Some(&*method) =>
                    {
                        a.properties.auth_data
                    }
                    Some(Ok(Some(_))) => {
                        return Err(Refusal::Violation(Violation::V5(
                            ReasonCode::PROTOCOL_ERROR,
                            "MQTT-4.12.0-3",
                            "expected AUTH 0x18 with the same authentication method",
                        )));
                    }
                    Some(Err(Error::Violation(v))) => return Err(Refusal::Violation(v)),
                    Some(Ok(None)) | Some(Err(Error::Io(_))) | None => {
                        return Err(Refusal::Policy(
                            crate::packet::ConnectCode::NotAuthorized,
                            "authentication exchange not finished within the connect timeout".into(),
                        ));
                    }
                };
            }
        }
    }
    broker.stats().auth_failed();
    Err(Refusal::Policy(crate::packet::ConnectCode::NotAuthorized, "enhanced authentication refused".into()))
}

/// Applies the client-id rules, limits and credentials to a CONNECT, then
/// attaches the client to its session.
#[allow(clippy::too_many_arguments)]
async fn admit<R: Runtime>(
    rt: &R,
    broker: &Broker,
    connect: Connect,
    peer: &Peer,
    conn: u64,
    kick: Arc<Kick>,
    auth: Option<handle::Authenticated>,
    out: &mut Vec<Packet>,
) -> Result<Client, Refusal> {
    let id = handle::admit(broker, &connect, conn)?;
    let username = handle::authenticate(broker, &connect, &id, peer).await?;
    // A cluster node claims the id before the session is attached: the
    // other nodes end their connections with it, and the session's writes
    // to Redis, fenced by the claim, come after it. A bridge's own client
    // exists on every node that runs the bridge: it claims nothing.
    let claim = broker
        .peers()
        .filter(|_| peer.listener != crate::bridge::BRIDGE_LISTENER)
        .and_then(|p| p.claim(&id, !connect.clean_session));
    if let Some(claim) = claim {
        let answered = within(rt, CLAIM_WAIT, claim.receipt.acknowledged()).await.is_some();
        let taking = claim.after.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(taking) = taking.filter(|_| answered)
            && within(rt, CLAIM_WAIT, taking.acknowledged()).await.is_none()
        {
            log::warn!("client {id}: this node took over a dead node's sessions for more than {CLAIM_WAIT:?}");
        }
        if !answered {
            log::warn!("client {id}: the cluster's Redis did not answer within {CLAIM_WAIT:?}; connected anyway");
        } else if let Some(stored) = claim.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            if stored.is_some() {
                log::info!("client {id}: its session was at another node of the cluster; it is this node's now");
            }
            broker.adopt_from_cluster(&id, stored);
        }
    }
    let (clean, keep_alive) = (connect.clean_session, connect.keep_alive);
    let assigned = connect.client_id.is_empty();
    let admitted = Admitted { id, username, conn, listener: peer.listener, assigned, auth, peer: peer.addr };
    let client = handle::connect(broker, connect, admitted, kick, out);
    let user = client.username.as_deref().map(|u| format!(", user {u}")).unwrap_or_default();
    let version = match client.protocol {
        Protocol::V31 => "MQTT 3.1",
        Protocol::V311 => "MQTT 3.1.1",
        Protocol::V5 => "MQTT 5.0",
    };
    log::info!(
        "client {} connected from {} ({version}, clean {} {clean}, keepalive {keep_alive}s{user})",
        client.id(),
        peer.addr,
        if client.protocol == Protocol::V5 { "start" } else { "session" },
    );
    Ok(client)
}

/// Longest a CONNACK waits for a cluster's claim of the client id: a node
/// cut off from Redis still serves its clients.
pub(crate) const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// Waits until what CONNECT changed (a new persistent session) is durable,
/// and (for a cluster node) Redis has the will, for a bounded time.
async fn durable<R: Runtime>(rt: &R, broker: &Broker, client: &Client) -> bool {
    if let Some(kept) = client.take_forwarded()
        && within(rt, CLAIM_WAIT, kept.acknowledged()).await.is_none()
    {
        log::warn!(
            "client {}: the cluster's Redis did not answer within {CLAIM_WAIT:?}; connected anyway",
            client.id()
        );
    }
    let ticket = client.take_ticket();
    match broker.store() {
        Some(store) => store.wait(ticket).await != TicketStatus::Failed,
        None => true,
    }
}

enum Event {
    Packet(Option<Result<Packet, Error>>),
    Written(io::Result<()>),
    Committed,
    Queued,
    Kicked,
    Shutdown,
    Keepalive,
    Relieved,
    RateOver,
}

/// Responses waiting for the store, at most, before the connection stops
/// reading from its client (the store is slow: fsync stalls).
const MAX_HELD: usize = 1024;

/// Response bytes encoded while earlier writes are unfinished, at most,
/// before the connection stops reading from a client that sends but does
/// not read what it is sent. (Deliveries are not counted: they are taken
/// from the session only once the outbox is written.)
const MAX_UNWRITTEN: usize = 256 * 1024;

/// Completes once every session in `pressure` has room again, or is marked
/// stuck after making no progress for `timeout` (then its publishers go on
/// and what does not fit in its queue is dropped).
async fn relief<R: Runtime>(rt: &R, pressure: &mut Vec<Waiting>, timeout: Duration) {
    while let Some(w) = pressure.last_mut() {
        match w.look(timeout) {
            None => drop(pressure.pop()),
            Some((listener, left)) => {
                let deadline = rt.sleep(left);
                pin_mut!(deadline);
                select(listener, deadline).await;
            }
        }
    }
}

/// How a spell of the connection loop ended.
enum Step {
    /// Idle: parked until something wakes it ([`park`]).
    Parked,
    Closed(Close),
}

/// What woke a parked connection: the first event of its next spell.
enum Wake {
    /// Its bell rang (or the loop starts): drain the session's queue.
    Queued,
    /// Boxed: a packet inline would make every parked connection larger.
    Packet(Box<Packet>),
    Keepalive,
}

/// A connection whose waits come at least this far apart is parked between
/// them; a busier one keeps its loop (boxing it anew each time costs an
/// allocation).
const PARK_AFTER: Duration = Duration::from_secs(1);

/// MQTT-3.1.2-24: a client is closed after one and a half keepalive periods
/// of silence.
fn keepalive(client: &Client) -> Duration {
    Duration::from_millis(u64::from(client.keep_alive) * 1500)
}

/// The part of the connection loop's state that outlives a spell: the rest
/// is made afresh each time the connection wakes from being parked.
struct Steady {
    /// When the keepalive deadline falls (its key in
    /// [`crate::keepalive::Deadlines`]; 0: keepalive 0), re-armed only when
    /// it passes.
    deadline: u64,
    /// When the last packet arrived, on the same clock (8 bytes, not an
    /// `Instant`'s 16, in every connection).
    last_packet: u64,
    /// Boxed: most brokers set no max_publish_rate.
    rate: Option<Box<PublishRate>>,
    /// Which wait is polled first (see [`serve`]).
    first_polled: u8,
    /// Set when the connection may park at its next idle wait: it just
    /// started, its keepalive timer fired, or its last wait was long.
    may_park: bool,
}

impl Steady {
    fn new<R: Runtime>(rt: &R, broker: &Broker, client: &Client, kick: &Arc<Kick>) -> Steady {
        let mut steady = Steady {
            deadline: 0,
            last_packet: broker.deadlines().now(),
            rate: broker.config().max_publish_rate.map(|r| Box::new(PublishRate::new(r))),
            first_polled: 0,
            may_park: true,
        };
        if client.keep_alive != 0 {
            crate::keepalive::start_sweep(rt, broker);
            steady.arm(broker, client.conn, kick, keepalive(client));
        }
        steady
    }

    fn arm(&mut self, broker: &Broker, conn: u64, kick: &Arc<Kick>, after: Duration) {
        self.deadline = broker.deadlines().arm(conn, self.deadline, after, kick);
    }

    /// Whether the keepalive deadline passed (never without one): looked at
    /// on every wake-up, one of which the sweep makes when it passes. Re-armed
    /// (or the connection closed) by whoever sees it.
    fn deadline_passed(&self, broker: &Broker) -> bool {
        self.deadline != 0 && broker.deadlines().now() >= self.deadline
    }
}

/// A parked connection's wait: nothing to write, nothing in flight towards
/// the store, its loop's state dropped. What ends it starts the next spell
/// (or the close): the bell, a packet, the keepalive timer, takeover or
/// shutdown. Small, as every idle connection's task is made of it: written
/// out, it is half the size of the same wait as an async block.
fn park<'a, S: AsyncRead + AsyncWrite + Unpin>(
    broker: &'a Broker,
    client: &'a Client,
    link: &'a mut Transport<S>,
    kicked: &'a Signal,
    shutdown: &'a Receiver<()>,
    steady: &'a mut Steady,
) -> Park<'a, S> {
    let bell = client.session.rung_unless(kicked, true, client.conn);
    Park { broker, link, shutdown, steady, bell, began: broker.deadlines().now() }
}

/// The future of [`park`].
struct Park<'a, S> {
    broker: &'a Broker,
    link: &'a mut Transport<S>,
    shutdown: &'a Receiver<()>,
    steady: &'a mut Steady,
    bell: crate::signal::TakeUnless<'a>,
    /// When the wait began, on the keepalive clock.
    began: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Park<'_, S> {
    type Output = Result<Wake, Close>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Wake, Close>> {
        let this = &mut *self;
        // The bell first: it registers the waker a shutdown wakes.
        let woken = if let Poll::Ready(taken_over) = Pin::new(&mut this.bell).poll(cx) {
            if taken_over { Err(Close::TakenOver) } else { Ok(Wake::Queued) }
        } else if stopped(this.shutdown, this.broker) {
            Err(Close::Shutdown)
        } else if let Poll::Ready(read) = this.link.framed.poll_next_unpin(cx) {
            match read {
                Some(Ok(packet)) => Ok(Wake::Packet(Box::new(packet))),
                Some(Err(e)) => Err(e.into()),
                None => Err(Close::PeerClosed),
            }
        } else if this.steady.deadline_passed(this.broker) {
            Ok(Wake::Keepalive)
        } else {
            return Poll::Pending;
        };
        this.steady.may_park =
            this.broker.deadlines().now().saturating_sub(this.began) >= PARK_AFTER.as_millis() as u64;
        Poll::Ready(woken)
    }
}

/// The connection loop after CONNACK.
///
/// Reads pause, and TCP flow control slows the client down, while:
/// sessions it filled have no room yet (backpressure instead of loss);
/// responses wait for the store beyond [`MAX_HELD`]; it does not read its
/// responses beyond [`MAX_UNWRITTEN`]; it is over its publish rate. Writes,
/// keepalive, takeover and shutdown go on all the while.
///
/// One spell of it: it returns [`Step::Parked`] at a wait with nothing to
/// write and nothing awaited when the connection may park (it just started,
/// its keepalive timer fired, or its last wait took [`PARK_AFTER`]); `wake`
/// is its first event.
// Not an async fn: one would keep its arguments twice (see [`run_holding`]).
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
fn serve<'a, R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &'a R,
    broker: &'a Broker,
    client: &'a Client,
    link: &'a mut Transport<S>,
    kicked: &'a Arc<Kick>,
    shutdown: &'a Receiver<()>,
    steady: &'a mut Steady,
    wake: Wake,
) -> impl Future<Output = Step> + 'a {
    // An async block, not an async fn: its captures are not stored twice.
    async move {
        // The packets to send, encoded into the outbox before each wait.
        let mut packets = Vec::new();
        let out = &mut packets;
        let keepalive = keepalive(client);
        // Response bytes encoded while earlier ones were still unwritten: a
        // client that sends without reading what it is sent.
        let mut unanswered = 0;
        // Responses waiting for the store commit of what they acknowledge, in order.
        let mut held: VecDeque<Held> = VecDeque::new();
        let mut pressure: Vec<Waiting> = Vec::new();
        // A packet read but not handled yet: the batch ended, or reads paused.
        // Boxed: rarely used, and a packet inline would grow every connection.
        let mut stash: Option<Box<Packet>> = None;
        let mut held_back = false;
        // Held back only by its own full session: acknowledgements are still
        // read (they are what drains it), anything else waits.
        let mut acks_only = false;
        // What the next wait is for: reading the socket, and a store commit the
        // queue waits for. Set at the end of each turn.
        let mut reading = false;
        let mut blocked: Option<Ticket> = None;
        // The stash is handled next, without waiting.
        let mut replay = false;
        let mut wake = Some(wake);
        loop {
            // The event is made only after the wait: kept across it, it would
            // make every active connection's task a packet larger.
            let event = if let Some(wake) = wake.take() {
                match wake {
                    Wake::Queued => Event::Queued,
                    Wake::Packet(packet) => Event::Packet(Some(Ok(*packet))),
                    Wake::Keepalive => Event::Keepalive,
                }
            } else if std::mem::take(&mut replay) {
                Event::Packet(stash.take().map(|p| Ok(*p)))
            } else {
                let writing = !link.outbox.is_empty();
                let idle = !writing
                    && held.is_empty()
                    && pressure.is_empty()
                    && stash.is_none()
                    && blocked.is_none()
                    && reading
                    && steady.rate.as_ref().is_none_or(|r| r.until.is_none());
                if std::mem::take(&mut steady.may_park) && idle {
                    return Step::Parked;
                }
                // Timed only when it could lead to a park.
                let began = idle.then(Instant::now);
                let io = future::poll_fn(|cx| link.poll_io(cx, reading)).fuse();
                // The takeover notice, and (unless writing: the queue is
                // drained once the outbox is written, Event::Written) queued
                // messages: one waker, registered inline on both signals.
                let bell = client.session.rung_unless(kicked, !writing, client.conn).fuse();
                // A front whose commit is done waits only for its forward
                // (which may have completed since the last release: then
                // the wait ends at once).
                let forwarding = held
                    .front()
                    .filter(|h| h.forwarding().is_some() || h.stored(broker) == TicketStatus::Committed)
                    .and_then(|h| h.forwarded.clone());
                let front_stored =
                    held.front().filter(|h| forwarding.is_none() || h.stored(broker) == TicketStatus::Pending);
                let (front, receipt) = match front_stored.map(|h| h.awaiting(broker)) {
                    Some((ticket, receipt)) => (Some(ticket), receipt),
                    None => (None, None),
                };
                // A QoS 2 delivery waiting for its commit makes it urgent.
                let receipt = receipt.filter(|_| blocked.is_none());
                let awaited = front.into_iter().chain(blocked).min();
                // Completes once the store has committed (or failed) the
                // ticket, or the receipt's copies are all acknowledged.
                let committed = match (broker.store(), awaited, receipt) {
                    (Some(store), Some(ticket), None) => Either::Left(store.wait(ticket)).fuse(),
                    // Boxed: only QoS 1 publishers to persistent sessions wait so.
                    (Some(store), Some(ticket), Some(receipt)) => {
                        Either::Right(Box::pin(copies_committed(store, ticket, receipt))).fuse()
                    }
                    _ => Fuse::terminated(),
                };
                // Boxed, and only while needed: inline, their timers and
                // listeners would make every idle connection's task larger.
                let relieved = match pressure.is_empty() {
                    true => Fuse::terminated(),
                    false => Box::pin(relief(rt, &mut pressure, broker.config().slow_consumer_timeout)).fuse(),
                };
                // Boxed: only a cluster node's QoS 1/2 publishers wait so.
                let forwarded: Fuse<Pin<Box<dyn Future<Output = ()> + Send>>> = match forwarding {
                    Some(f) => (Box::pin(async move { f.acknowledged().await })
                        as Pin<Box<dyn Future<Output = ()> + Send>>)
                        .fuse(),
                    None => Fuse::terminated(),
                };
                let rate_over = match steady.rate.as_ref().and_then(|r| r.until) {
                    None => Fuse::terminated(),
                    Some(until) => Box::pin(rt.sleep(until.saturating_duration_since(Instant::now()))).fuse(),
                };
                pin_mut!(io, bell, committed, relieved, rate_over, forwarded);
                // Polled in turn from a different one each time, as select!
                // would at random: none is starved by another always ready.
                // Written out: select!'s branch table made every idle
                // connection's task larger.
                steady.first_polled = (steady.first_polled + 1) % 7;
                let first_polled = steady.first_polled;
                let timer = &mut *steady;
                let event = future::poll_fn(|cx| {
                    // The bell is polled first: it registers the waker a
                    // shutdown wakes (Broker::stop_connections). A ring it
                    // takes while another event is returned is not lost:
                    // it is taken only with the outbox empty, and then the
                    // queue is drained after any event.
                    let mut rung = bell.as_mut().poll(cx).map(|k| if k { Event::Kicked } else { Event::Queued });
                    if stopped(shutdown, broker) {
                        return Poll::Ready(Event::Shutdown);
                    }
                    for i in 0..7 {
                        let event = match (first_polled + i) % 7 {
                            0 => io.as_mut().poll(cx),
                            1 => std::mem::replace(&mut rung, Poll::Pending),
                            2 => match timer.deadline_passed(broker) {
                                true => Poll::Ready(Event::Keepalive),
                                false => Poll::Pending,
                            },
                            3 => committed.as_mut().poll(cx).map(|_| Event::Committed),
                            4 => relieved.as_mut().poll(cx).map(|()| Event::Relieved),
                            5 => forwarded.as_mut().poll(cx).map(|()| Event::Committed),
                            _ => rate_over.as_mut().poll(cx).map(|()| Event::RateOver),
                        };
                        if event.is_ready() {
                            return event;
                        }
                    }
                    Poll::Pending
                })
                .await;
                steady.may_park = began.is_some_and(|b| b.elapsed() >= PARK_AFTER);
                event
            };
            // Set when a packet in the batch ends the connection: what was
            // answered before it is still written.
            let mut closing = None;
            match event {
                Event::Packet(Some(Ok(packet))) => {
                    steady.last_packet = broker.deadlines().now();
                    // What was queued before this packet arrived goes out before
                    // its answer: a PINGRESP or PUBACK never overtakes a
                    // delivery already waiting (select! may have seen the packet
                    // first).
                    if link.outbox.is_empty()
                        && out.is_empty()
                        && handle::drain(client, broker, out) == Drained::TakenOver
                    {
                        return Step::Closed(Close::TakenOver);
                    }
                    let mut next = Some(packet);
                    // The turn's deliveries to each subscriber go together,
                    // before its acknowledgements are written (see deferred).
                    let turn = deferred::Turn::open(broker, client);
                    // Handle every packet already received before writing once:
                    // a pipelining publisher gets its acknowledgements in one write.
                    for _ in 0..BATCH {
                        let Some(packet) = next.take() else { break };
                        if acks_only && !drains_own_session(&packet) {
                            next = Some(packet);
                            break;
                        }
                        // MQTT-3.1.4-2: once taken over, nothing more this
                        // connection read is handled, however fast it arrives.
                        if kicked.is_raised() {
                            return Step::Closed(Close::TakenOver);
                        }
                        let subscribe = matches!(packet, Packet::Subscribe(..));
                        let publish = matches!(packet, Packet::Publish(_));
                        if !publish {
                            turn.flush();
                        }
                        if let Err(close) = on_packet(client, broker, packet, out, &mut held) {
                            closing = Some(close);
                            break;
                        }
                        if publish
                            && let Some(r) = steady.rate.as_mut()
                            && let now = Instant::now()
                            && let Some(wait) = r.take(now, 1)
                        {
                            // Over its publish rate: stop reading from this client for a while.
                            r.until = Some(now + wait);
                            break;
                        }
                        // A SUBSCRIBE's retained messages can fill the session
                        // alone: they drain before the next packet is handled.
                        if (subscribe && !client.pressed_is_empty()) || held.len() >= MAX_HELD {
                            break;
                        }
                        next = match link.framed.next().now_or_never() {
                            Some(Some(Ok(packet))) => Some(packet),
                            Some(Some(Err(e))) => {
                                closing = Some(e.into());
                                None
                            }
                            Some(None) => {
                                closing = Some(Close::PeerClosed);
                                None
                            }
                            None => None,
                        };
                    }
                    stash = next.map(Box::new);
                    // The stored copies the turn deferred are appended now:
                    // their acknowledgements wait for that commit.
                    let ticket = turn.ticket();
                    drop(turn);
                    for h in held.iter_mut() {
                        if let Some((copies, _)) = &mut h.copies
                            && *copies == deferred::TURN
                        {
                            *copies = ticket;
                        }
                    }
                }
                Event::Packet(Some(Err(e))) => return Step::Closed(e.into()),
                Event::Packet(None) => return Step::Closed(Close::PeerClosed),
                Event::Written(Err(e)) => return Step::Closed(Close::Io(e)),
                Event::Written(Ok(())) => unanswered = 0,
                Event::Queued | Event::Committed | Event::Relieved => {}
                Event::RateOver => {
                    if let Some(r) = steady.rate.as_mut() {
                        r.until = None;
                    }
                }
                Event::Kicked => return Step::Closed(Close::TakenOver),
                Event::Shutdown => return Step::Closed(Close::Shutdown),
                Event::Keepalive => {
                    let idle = Duration::from_millis(broker.deadlines().now().saturating_sub(steady.last_packet));
                    // Silence while midge itself holds the client back is not the
                    // client's (a client that does not read is not held back by
                    // midge: it is closed as any silent one).
                    if idle >= keepalive && !held_back {
                        return Step::Closed(Close::Violation(Violation::KeepaliveTimeout));
                    }
                    let next = if idle >= keepalive { keepalive } else { keepalive - idle };
                    steady.arm(broker, client.conn, kicked, next);
                    // A connection its keepalive timer wakes is idle enough.
                    steady.may_park = true;
                    // What the last packets grew (a PINGRESP's Vec and
                    // outbox bytes) is given back: this runs once per 1.5
                    // keepalive periods, so an idle connection keeps none
                    // and a busy one hardly notices.
                    if out.is_empty() {
                        *out = Vec::new();
                    }
                    link.outbox.release_idle();
                }
            }
            for session in client.take_pressed() {
                if !pressure.iter().any(|w| Arc::ptr_eq(&w.session, &session)) {
                    pressure.push(Waiting::new(session));
                }
            }
            if !release(broker, &mut held, out) {
                return Step::Closed(Close::StoreFailed);
            }
            // Deliveries are taken from the session only once what was taken
            // before is written: the queue, not the outbox, holds what a slow
            // client has not read, under the queue's limits.
            blocked = None;
            if link.outbox.is_empty() {
                blocked = match handle::drain(client, broker, out) {
                    Drained::TakenOver => return Step::Closed(Close::TakenOver),
                    Drained::Waiting(ticket) => Some(ticket),
                    Drained::Sent => None,
                };
            }
            // PUBLISH packets and payload bytes by QoS, for the counters.
            let mut sent = [(0, 0); 3];
            for packet in out.iter() {
                if let Packet::Publish(p) = packet {
                    let slot = &mut sent[p.qos as usize];
                    *slot = (slot.0 + 1, slot.1 + p.payload.len() as u64);
                }
            }
            let (backlog, before) = (!link.outbox.is_empty(), link.outbox.waiting());
            if let Err(e) = link.push(out) {
                return Step::Closed(e.into());
            }
            if backlog {
                unanswered += link.outbox.waiting() - before;
            }
            broker.stats().sent(&sent);
            let written = link.write_now();
            link.account(broker);
            if let Err(e) = written {
                return Step::Closed(Close::Io(e));
            }
            if link.outbox.is_empty() {
                unanswered = 0;
            }
            if let Some(close) = closing {
                return Step::Closed(close);
            }
            // Paused by midge itself: the client's silence meanwhile is not its own.
            let paused = steady.rate.as_ref().is_some_and(|r| r.until.is_some());
            let was_held_back =
                std::mem::replace(&mut held_back, !pressure.is_empty() || held.len() >= MAX_HELD || paused);
            if was_held_back && !held_back {
                steady.last_packet = broker.deadlines().now();
            }
            acks_only = held_back
                && held.len() < MAX_HELD
                && !paused
                && pressure.iter().all(|w| Arc::ptr_eq(&w.session, &client.session));
            reading = (!held_back || (acks_only && stash.is_none())) && unanswered <= MAX_UNWRITTEN;
            if reading && stash.is_some() {
                if stopped(shutdown, broker) {
                    return Step::Closed(Close::Shutdown);
                }
                replay = true;
            }
        }
    }
}

/// Whether the connection is to end for a shutdown: its own shutdown
/// channel closed, or the broker stopping every connection (what wakes it).
fn stopped(shutdown: &Receiver<()>, broker: &Broker) -> bool {
    shutdown.is_closed() || broker.is_stopping()
}

/// Whether a packet drains the client's own session (or costs nothing): what
/// a client held back by its own full queue may still send.
fn drains_own_session(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubcomp(_) | Packet::Pingreq | Packet::Disconnect(_)
    )
}

/// Completes once the store has committed (or failed) the copies'
/// `ticket`, or every copy `receipt` counts was acknowledged. The commit
/// may linger: the acknowledgements usually come first.
async fn copies_committed(store: &Persistence, ticket: Ticket, receipt: Arc<Receipt>) -> TicketStatus {
    let acknowledged = receipt.acknowledged();
    let commit = store.wait_lazily(ticket);
    pin_mut!(acknowledged, commit);
    match select(acknowledged, commit).await {
        Either::Left(((), _)) => TicketStatus::Committed,
        Either::Right((status, _)) => status,
    }
}

/// Responses waiting for what they acknowledge to be durable.
struct Held {
    /// The commit they wait for (0: none, only earlier responses).
    ticket: Ticket,
    /// A QoS 1 message's stored copies: their commit, or every copy
    /// acknowledged, whichever comes first.
    copies: Option<(Ticket, Arc<Receipt>)>,
    /// The message's forward to a cluster's other nodes.
    forwarded: Option<Arc<Receipt>>,
    packets: Vec<Packet>,
}

impl Held {
    fn status(&self, broker: &Broker) -> TicketStatus {
        match self.stored(broker) {
            TicketStatus::Committed if self.forwarding().is_some() => TicketStatus::Pending,
            other => other,
        }
    }

    /// The forward still to complete, if any.
    fn forwarding(&self) -> Option<&Arc<Receipt>> {
        self.forwarded.as_ref().filter(|f| !f.is_done())
    }

    /// What the store says of what these responses acknowledge.
    fn stored(&self, broker: &Broker) -> TicketStatus {
        let status = |t| broker.store().map_or(TicketStatus::Committed, |s| s.status(t));
        match (status(self.ticket), &self.copies) {
            (TicketStatus::Committed, Some((_, receipt))) if receipt.is_done() => TicketStatus::Committed,
            (TicketStatus::Committed, Some((copies, _))) => status(*copies),
            (other, _) => other,
        }
    }

    /// What to wait for while it is pending: a commit, and a receipt.
    fn awaiting(&self, broker: &Broker) -> (Ticket, Option<Arc<Receipt>>) {
        let pending = broker.store().is_some_and(|s| s.status(self.ticket) == TicketStatus::Pending);
        match &self.copies {
            Some((copies, receipt)) if !pending => (*copies, Some(receipt.clone())),
            _ => (self.ticket, None),
        }
    }
}

/// Moves responses whose commit is done from `held` to `out`, in order;
/// `false` if a commit failed (nothing it covered may be acknowledged).
fn release(broker: &Broker, held: &mut VecDeque<Held>, out: &mut Vec<Packet>) -> bool {
    while let Some(front) = held.front() {
        match front.status(broker) {
            TicketStatus::Pending => break,
            TicketStatus::Failed => return false,
            TicketStatus::Committed => out.extend(held.pop_front().expect("front exists").packets),
        }
    }
    true
}

/// Packets handled before the responses are written, at most.
const BATCH: usize = 64;

/// Handles one packet after CONNECT; the responses wait in `held` when what
/// they acknowledge is not durable yet (or earlier responses wait).
fn on_packet(
    client: &Client,
    broker: &Broker,
    packet: Packet,
    out: &mut Vec<Packet>,
    held: &mut VecDeque<Held>,
) -> Result<(), Close> {
    let mark = out.len();
    match handle::packet(client, broker, packet, out) {
        Ok(Flow::Continue) => {}
        Ok(Flow::Disconnect) => return Err(Close::Disconnect),
        Ok(Flow::DisconnectWithWill) => return Err(Close::DisconnectWithWill),
        Ok(Flow::TakenOver) => return Err(Close::TakenOver),
        Err(v) => return Err(Close::Violation(v)),
    }
    let ticket = client.take_ticket();
    let copies = client.take_copies();
    let forwarded = client.take_forwarded();
    if ticket != Ticket::default() || copies.is_some() || forwarded.is_some() || !held.is_empty() {
        held.push_back(Held { ticket, copies, forwarded, packets: out.split_off(mark) });
    }
    Ok(())
}

/// A token bucket for `max_publish_rate`: one second's worth of burst.
struct PublishRate {
    per_second: f64,
    tokens: f64,
    last: Instant,
    /// Reads pause until then: the client went over its rate.
    until: Option<Instant>,
}

impl PublishRate {
    fn new(per_second: u32) -> PublishRate {
        let per_second = f64::from(per_second.max(1));
        PublishRate { per_second, tokens: per_second, last: Instant::now(), until: None }
    }

    /// Takes tokens for `count` PUBLISH packets received at `now`; how long
    /// to pause reading when the bucket is empty.
    fn take(&mut self, now: Instant, count: usize) -> Option<Duration> {
        if count == 0 {
            return None;
        }
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second) - count as f64;
        self.last = now;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.per_second))
    }
}
