//! One task per socket: CONNECT under a timeout, then a loop over the next
//! packet, queued deliveries, takeover, shutdown and the keepalive deadline;
//! the will on the way out.
//!
//! Generic over `futures::io`, so TCP, TLS or an in-memory pipe all work.

use crate::broker::Broker;
use crate::codec::MqttCodec;
use crate::error::{Error, Refusal, Violation};
use crate::gate::ReadGate;
use crate::handle::{self, Admitted, Client, Drained, Flow, Peer};
use crate::outbox::Outbox;
use crate::packet::{Connect, Packet};
use crate::runtime::Runtime;
use crate::session::Message;
use crate::signal::Signal;
use crate::store::{Ticket, TicketStatus};
use async_channel::Receiver;
use asynchronous_codec::Framed;
use bytes::BytesMut;
use futures::future::{self, Either, Fuse, FutureExt, select};
use futures::io::{AsyncRead, AsyncWrite};
use futures::{SinkExt, StreamExt, pin_mut};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client's socket: asynchronous-codec framing for what it sends, an
/// [`Outbox`] for what it is sent.
struct Transport<S> {
    framed: Framed<ReadGate<S>, MqttCodec>,
    outbox: Outbox,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    /// asynchronous-codec's 8 KiB read and write buffers are swapped for
    /// empty ones that grow on demand: an idle connection then holds only
    /// what its last packets needed, not 16 KiB. (The write buffer stays
    /// empty: writes go through the outbox.)
    fn new(stream: S, max_packet_size: usize) -> Transport<S> {
        let framed = Framed::new(ReadGate::new(stream), MqttCodec::new(max_packet_size));
        let mut parts = framed.into_parts();
        parts.read_buffer = BytesMut::new();
        parts.write_buffer = BytesMut::new();
        Transport { framed: Framed::from_parts(parts), outbox: Outbox::new() }
    }

    /// Writes every packet in `out` with one flush: one syscall for a batch.
    async fn write(&mut self, out: &mut Vec<Packet>) -> Result<(), Error> {
        for packet in out.drain(..) {
            self.outbox.push(&packet)?;
        }
        if self.outbox.is_empty() {
            return Ok(());
        }
        Ok(self.outbox.write_to(&mut *self.framed).await?)
    }

    /// Adds the bytes read and written to the broker's counters.
    fn account(&mut self, broker: &Broker) {
        let received = self.framed.codec_mut().take_received();
        broker.stats().bytes(received, self.outbox.take_sent());
    }

    async fn close(&mut self) {
        let _ = self.framed.close().await;
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Disconnect,
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
    /// The store could not commit what the client sent.
    StoreFailed,
}

impl Close {
    /// The will is published on every close not preceded by DISCONNECT
    /// (MQTT-3.1.2-8/-10), a broker shutdown included: it goes to
    /// persistent sessions and the store before the store closes.
    fn publishes_will(&self) -> bool {
        !matches!(self, Close::Disconnect)
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Close::Disconnect => f.write_str("client sent DISCONNECT"),
            Close::PeerClosed => f.write_str("connection closed by peer"),
            Close::Io(e) => write!(f, "i/o error: {e}"),
            Close::Violation(v) => write!(f, "protocol violation: {v}"),
            Close::TakenOver => f.write_str("taken over by a new connection with the same client id"),
            Close::Shutdown => f.write_str("broker shutting down"),
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
pub async fn run<R, S>(rt: R, broker: Broker, stream: S, peer: Peer, shutdown: Receiver<()>)
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut link = Transport::new(stream, broker.config().max_packet_size);
    let mut out = Vec::new();
    let kick = Arc::new(Signal::new());
    let conn = broker.next_connection_id();
    // Boxed: the CONNECT phase (credentials, a password check on a blocking
    // thread) is needed once; inline, its state would stay in every
    // connection's task for the connection's whole life.
    let accepted = Box::pin(accept(&rt, &broker, &mut link, &peer, conn, kick.clone(), &mut out)).await;
    out = Vec::new();
    let Some(mut client) = accepted else {
        link.close().await;
        link.account(&broker);
        return;
    };
    broker.stats().connected();
    let reason = serve(&rt, &broker, &client, &mut link, &mut out, &kick, shutdown).await;
    let addr = peer.addr;
    match &reason {
        Close::Violation(_) => log::warn!("client {} ({addr}) disconnected: {reason}", client.id),
        _ => log::info!("client {} ({addr}) disconnected: {reason}", client.id),
    }
    if let Some(will) = client.will.take().filter(|_| reason.publishes_will()) {
        let message = Message { topic: will.topic, payload: will.payload, qos: will.qos, retain: false };
        match broker.guards().allow_publish(&client.info(), &message) {
            true => drop(broker.publish(message, will.retain)),
            false => log::info!("client {}: will on {} not allowed, not published", client.id, message.topic),
        }
    }
    broker.detach(&client.id, conn);
    broker.stats().disconnected();
    link.close().await;
    link.account(&broker);
}

/// Waits for CONNECT (MQTT-3.1.0-1) within the connect timeout and answers it.
async fn accept<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    broker: &Broker,
    link: &mut Transport<S>,
    peer: &Peer,
    conn: u64,
    kick: Arc<Signal>,
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
                log::info!("{addr}: no CONNECT within {timeout:?}, closing");
                return None;
            }
        }
    };
    let result = match first {
        Some(Ok(Packet::Connect(connect))) => admit(broker, *connect, peer, conn, kick, out).await,
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
        Ok(client) if !durable(broker, &client).await => {
            log::warn!("client {} ({addr}): store write failed, refusing the connection", client.id);
            broker.detach(&client.id, conn);
            None
        }
        Ok(client) => match link.write(out).await {
            Ok(()) => Some(client),
            Err(e) => {
                log::info!("client {} ({addr}): {}", client.id, Close::from(e));
                broker.detach(&client.id, conn);
                None
            }
        },
        Err(refusal) => {
            log::warn!("{addr}: CONNECT refused: {refusal}");
            if let Some(code) = refusal.connack() {
                out.push(Packet::Connack { session_present: false, code });
                let _ = link.write(out).await;
            }
            None
        }
    }
}

/// Applies the client-id rules, limits and credentials to a CONNECT, then
/// attaches the client to its session.
async fn admit(
    broker: &Broker,
    connect: Connect,
    peer: &Peer,
    conn: u64,
    kick: Arc<Signal>,
    out: &mut Vec<Packet>,
) -> Result<Client, Refusal> {
    let id = handle::admit(broker, &connect, conn)?;
    let username = handle::authenticate(broker, &connect, &id, peer).await?;
    let (clean, keep_alive) = (connect.clean_session, connect.keep_alive);
    let client = handle::connect(broker, connect, Admitted { id, username, conn }, kick, out);
    let user = client.username.as_deref().map(|u| format!(", user {u}")).unwrap_or_default();
    log::info!(
        "client {} connected from {} (clean session {clean}, keepalive {keep_alive}s{user})",
        client.id,
        peer.addr
    );
    Ok(client)
}

/// Waits until what CONNECT changed (a new persistent session) is durable.
async fn durable(broker: &Broker, client: &Client) -> bool {
    let ticket = client.take_ticket();
    match broker.store() {
        Some(store) => store.wait(ticket).await != TicketStatus::Failed,
        None => true,
    }
}

enum Event {
    Packet(Option<Result<Packet, Error>>),
    Committed,
    Queued,
    Kicked,
    Shutdown,
    Keepalive,
}

/// The connection loop after CONNACK.
async fn serve<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    broker: &Broker,
    client: &Client,
    link: &mut Transport<S>,
    out: &mut Vec<Packet>,
    kicked: &Signal,
    shutdown: Receiver<()>,
) -> Close {
    // MQTT-3.1.2-24: close after one and a half keepalive periods of silence.
    let keepalive = Duration::from_millis(u64::from(client.keep_alive) * 1500);
    let mut last_packet = Instant::now();
    // One timer per connection, re-armed only when it fires early.
    let mut timer = match client.keep_alive {
        0 => Fuse::terminated(),
        _ => Box::pin(rt.sleep(keepalive)).fuse(),
    };
    let mut rate = broker.config().max_publish_rate.map(PublishRate::new);
    // Responses waiting for the store commit of what they acknowledge, in order.
    let mut held: VecDeque<(Ticket, Vec<Packet>)> = VecDeque::new();
    let mut event = Event::Queued;
    loop {
        let mut pending_packet = false;
        // Set when a packet in the batch ends the connection: what was
        // answered before it is still written.
        let mut closing = None;
        match std::mem::replace(&mut event, Event::Queued) {
            Event::Packet(Some(Ok(packet))) => {
                last_packet = Instant::now();
                let mut publishes = 0;
                let mut next = Some(packet);
                // Handle every packet already received before writing once:
                // a pipelining publisher gets its acknowledgements in one write.
                for _ in 0..BATCH {
                    let Some(packet) = next.take() else { break };
                    publishes += usize::from(matches!(packet, Packet::Publish(_)));
                    if let Err(close) = on_packet(client, broker, packet, out, &mut held) {
                        closing = Some(close);
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
                if let Some(packet) = next {
                    event = Event::Packet(Some(Ok(packet)));
                    pending_packet = true;
                }
                if let Some(wait) = rate.as_mut().and_then(|r| r.take(last_packet, publishes)) {
                    // Over its publish rate: stop reading from this client for a while.
                    rt.sleep(wait).await;
                }
            }
            Event::Packet(Some(Err(e))) => return e.into(),
            Event::Packet(None) => return Close::PeerClosed,
            Event::Queued | Event::Committed => {}
            Event::Kicked => return Close::TakenOver,
            Event::Shutdown => return Close::Shutdown,
            Event::Keepalive => {
                let idle = last_packet.elapsed();
                if idle >= keepalive {
                    return Close::Violation(Violation::KeepaliveTimeout);
                }
                timer = Box::pin(rt.sleep(keepalive - idle)).fuse();
            }
        }
        if !release(broker, &mut held, out) {
            return Close::StoreFailed;
        }
        // The store commit the next queued delivery waits for, if any.
        let blocked = match handle::drain(client, broker, out) {
            Drained::TakenOver => return Close::TakenOver,
            Drained::Waiting(ticket) => Some(ticket),
            Drained::Sent => None,
        };
        let sent = out.iter().filter(|p| matches!(p, Packet::Publish(_))).count();
        let written = link.write(out).await;
        link.account(broker);
        if let Err(e) = written {
            return e.into();
        }
        broker.stats().sent(sent as u64);
        if let Some(close) = closing {
            return close;
        }
        if pending_packet {
            continue;
        }
        event = {
            let next = link.framed.next().fuse();
            let queued = client.session.rung().fuse();
            let kicked = kicked.raised().fuse();
            let stop = shutdown.recv().fuse();
            let awaited = held.front().map(|(t, _)| *t).into_iter().chain(blocked).min();
            let committed = committed(broker, awaited).fuse();
            pin_mut!(next, queued, kicked, stop, committed);
            futures::select! {
                packet = next => Event::Packet(packet),
                _ = queued => Event::Queued,
                _ = kicked => Event::Kicked,
                _ = stop => Event::Shutdown,
                () = timer => Event::Keepalive,
                () = committed => Event::Committed,
            }
        };
    }
}

/// Completes once the store has committed (or failed) `ticket`; never
/// without one.
async fn committed(broker: &Broker, ticket: Option<Ticket>) {
    match (broker.store(), ticket) {
        (Some(store), Some(ticket)) => drop(store.wait(ticket).await),
        _ => future::pending().await,
    }
}

/// Moves responses whose commit is done from `held` to `out`, in order;
/// `false` if a commit failed (nothing it covered may be acknowledged).
fn release(broker: &Broker, held: &mut VecDeque<(Ticket, Vec<Packet>)>, out: &mut Vec<Packet>) -> bool {
    while let Some((ticket, _)) = held.front() {
        let status = broker.store().map_or(TicketStatus::Committed, |s| s.status(*ticket));
        match status {
            TicketStatus::Pending => break,
            TicketStatus::Failed => return false,
            TicketStatus::Committed => out.extend(held.pop_front().expect("front exists").1),
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
    held: &mut VecDeque<(Ticket, Vec<Packet>)>,
) -> Result<(), Close> {
    let mark = out.len();
    match handle::packet(client, broker, packet, out) {
        Ok(Flow::Continue) => {}
        Ok(Flow::Disconnect) => return Err(Close::Disconnect),
        Ok(Flow::TakenOver) => return Err(Close::TakenOver),
        Err(v) => return Err(Close::Violation(v)),
    }
    let ticket = client.take_ticket();
    if ticket != Ticket::default() || !held.is_empty() {
        held.push_back((ticket, out.split_off(mark)));
    }
    Ok(())
}

/// A token bucket for `max_publish_rate`: one second's worth of burst.
struct PublishRate {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl PublishRate {
    fn new(per_second: u32) -> PublishRate {
        let per_second = f64::from(per_second.max(1));
        PublishRate { per_second, tokens: per_second, last: Instant::now() }
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
