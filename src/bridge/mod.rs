//! Bridges: midge connects to another broker as a client, forwards its
//! `out` topics there and brings the remote's `in` topics here, as
//! Mosquitto's `connection` blocks do ([`crate::config::Bridge`]).
//!
//! A bridge is a relay between two MQTT connections and keeps no message
//! state of its own, so a crash of either side loses nothing acknowledged:
//!
//! - **Here**, it is an ordinary MQTT 5.0 client of this broker over an
//!   in-memory [`pipe`], served by the same connection handler as every TCP
//!   client, with a persistent session (`local_clientid`, never expiring)
//!   subscribed to the `out` topics with No Local. While the remote is
//!   unreachable, that session queues what is to be forwarded in the
//!   durable store, bounded by the bridge's `max_queued_messages` (drops
//!   are counted as for any session); after a crash it is restored.
//! - **There**, it is a client with `cleansession false` by default, so the
//!   remote keeps its in-flight state too.
//! - Each direction keeps the packet identifiers: what this broker sends the
//!   bridge with id N goes to the remote with id N, and the remote's
//!   PUBACK / PUBREC / PUBCOMP for N comes back here as the same packet. So
//!   this broker removes a message only once the remote acknowledged it, a
//!   QoS 2 message stays exactly once across reconnects (the remote
//!   recognises a re-sent id), and what the remote sends is acknowledged to
//!   it only once this broker acknowledged it: after it is durable here.
//! - The link is both connections: when either ends, both are closed and
//!   opened again after a backoff; on reconnection this broker re-sends
//!   what was in flight (MQTT-4.4.0-1), and so does the remote.
//! - Loops: the local subscriptions have No Local, so what the bridge
//!   brings in is not sent back out; at the remote, No Local (5.0) or
//!   `try_private` (3.1.1, protocol level | 0x80, which Mosquitto and midge
//!   take as "a bridge: do not echo") does the same.
//!
//! The bridge is one task on the broker's runtime (no thread of its own),
//! so it runs the same standalone and embedded.

pub mod client;
pub mod pipe;

use crate::broker::Broker;
use crate::config::{Bridge, BridgeDirection, BridgeTopic, StartType};
use crate::handle::Peer;
use crate::packet::{
    Ack, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscriptionOptions, Will,
};
use crate::runtime::{Runtime, within};
use crate::session::Message;
use crate::stats::BridgeStats;
use crate::{connection, topic};
use async_channel::{Receiver, Sender};
use asynchronous_codec::{FramedRead, FramedWrite};
use client::ClientCodec;
use futures::future::{Either, select};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use futures::lock::Mutex;
use futures::{FutureExt, SinkExt, StreamExt, pin_mut};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The listener index a bridge's own connection to this broker carries: it
/// is trusted (no password, no ACL) and not counted on any listener.
/// (`u16::MAX`: the store keeps a session's listener as 16 bits.)
pub const BRIDGE_LISTENER: usize = u16::MAX as usize;

/// How long connecting (TCP, TLS, CONNECT to CONNACK, SUBSCRIBE to SUBACK)
/// may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet accepted from the remote.
const MAX_PACKET: usize = 256 << 20;
/// Packets that may arrive while a SUBACK is awaited before the link is
/// given up (the peer's in-flight window bounds them in practice).
const MAX_EARLY: usize = 10_000;
/// Payload bytes that may arrive before a SUBACK.
const MAX_EARLY_BYTES: usize = 64 << 20;
/// A link that stayed up this long starts its next backoff from the base.
const STABLE: Duration = Duration::from_secs(60);

/// This machine's host name (Mosquitto's default client id is
/// `HOSTNAME.NAME`).
pub fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "midge".to_owned())
    })
}

/// Anything the bridge can speak MQTT over: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

type Reader<S> = FramedRead<ReadHalf<S>, ClientCodec>;
type Writer<S> = Mutex<FramedWrite<WriteHalf<S>, ClientCodec>>;

/// Everything a link needs, shared by its two directions.
struct Context<R: Runtime> {
    rt: R,
    broker: Broker,
    bridge: Arc<Bridge>,
    stats: Arc<BridgeStats>,
    tls: Option<futures_rustls::TlsConnector>,
    /// The bridge's session's client id here.
    local_id: Arc<str>,
    /// Longest a write may wait for the peer to read.
    write_timeout: Duration,
    /// The topic lines with their filters.
    lines: Vec<Line>,
    /// When a message last crossed (lazy bridges stop when idle; only
    /// they keep it).
    last_traffic: std::sync::Mutex<Instant>,
    /// Closed when the server stops: ends the bridge's local connection too.
    shutdown: Receiver<()>,
    /// Held by the bridge and its local connections: the server's shutdown
    /// waits for them.
    alive: Sender<()>,
    /// The largest packet the remote accepts (its 5.0 CONNACK's Maximum
    /// Packet Size), for the current link.
    remote_max_packet: AtomicUsize,
    /// The remote takes retained messages (a 5.0 CONNACK may say it does not).
    remote_retains: AtomicBool,
    /// A 3.1.1 CONNECT carries the bridge mark (`try_private`, until a
    /// remote refuses it).
    private: AtomicBool,
    /// No link has been up yet in this process: the first asks this
    /// broker for the retained messages of the `out` topics.
    first_link: AtomicBool,
}

/// Runs one bridge until `stopped` closes: connects, relays, and reconnects
/// after failures with backoff. Its session here is made by [`prepare`],
/// which [`Server::start`](crate::server::Server::start) calls before any
/// listener opens.
pub async fn run<R: Runtime>(rt: R, broker: Broker, bridge: Bridge, stopped: Receiver<()>, alive: Sender<()>) {
    let name = bridge.name.clone();
    let tls = match &bridge.tls {
        Some(files) => match crate::tls::client_config(files) {
            Ok(config) => Some(futures_rustls::TlsConnector::from(config)),
            Err(e) => {
                log::error!("bridge {name}: TLS: {e}; the bridge does not run");
                return;
            }
        },
        None => None,
    };
    let local_id: Arc<str> = bridge.local_id().into();
    let keepalive = Duration::from_secs(u64::from(bridge.keepalive));
    let bridge_private = bridge.try_private && bridge.protocol != Protocol::V5;
    let cx = Context {
        stats: broker.stats().add_bridge(&name, &local_id),
        rt,
        broker,
        tls,
        local_id,
        write_timeout: if keepalive.is_zero() { Duration::from_secs(60) } else { keepalive * 3 / 2 },
        last_traffic: std::sync::Mutex::new(Instant::now()),
        lines: bridge.topics.iter().map(Line::new).collect(),
        bridge: Arc::new(bridge),
        shutdown: stopped.clone(),
        alive,
        remote_max_packet: AtomicUsize::new(usize::MAX),
        remote_retains: AtomicBool::new(true),
        private: AtomicBool::new(bridge_private),
        first_link: AtomicBool::new(true),
    };
    let stop = stopped.recv();
    pin_mut!(stop);
    let work = supervise(&cx);
    pin_mut!(work);
    if let Either::Right(_) = select(work, stop).await {
        log::info!("bridge {name}: stopped");
    }
    cx.stats.connected.store(0, Relaxed);
    notify_local(&cx, false);
}

/// The reconnect loop.
async fn supervise<R: Runtime>(cx: &Context<R>) {
    let bridge = &cx.bridge;
    let name = &bridge.name;
    // The session and its subscriptions exist from before the listeners
    // opened ([`prepare`]), so what is published for the remote queues
    // even while it was never reached.
    notify_local(cx, false);
    let mut failures = 0u32;
    let mut address = 0usize;
    loop {
        if bridge.start_type == StartType::Lazy {
            wait_for_threshold(cx).await;
        }
        let (host, port) = &bridge.addresses[address];
        let started = Instant::now();
        let outcome = link(cx, host, *port).await;
        let up = cx.stats.connected.swap(0, Relaxed) == 1;
        if up {
            notify_local(cx, false);
        }
        match outcome {
            Ok(Ended::Idle) => {
                log::info!(
                    "bridge {name}: idle for {:?}, disconnected from {host}:{port} (start_type lazy)",
                    bridge.idle_timeout
                );
                failures = 0;
                continue;
            }
            Err(reason) if up => log::warn!("bridge {name}: connection to {host}:{port} lost: {reason}"),
            Err(reason) => log::warn!("bridge {name}: cannot connect to {host}:{port}: {reason}"),
        }
        if bridge.start_type == StartType::Once {
            log::warn!("bridge {name}: not restarted (start_type once)");
            std::future::pending::<()>().await;
        }
        if up && started.elapsed() >= STABLE {
            failures = 0;
        }
        // After a failure, the next address; a bridge without round_robin
        // goes back to its first address once a link to another one ends.
        address = match (up, bridge.round_robin) {
            (true, false) => 0,
            (true, true) => address,
            (false, _) => (address + 1) % bridge.addresses.len(),
        };
        let delay = backoff(bridge.restart_timeout, failures);
        failures = failures.saturating_add(1);
        log::info!("bridge {name}: reconnecting in {:.1} s", delay.as_secs_f64());
        cx.rt.sleep(delay).await;
    }
}

/// The wait before reconnect attempt `failures + 1`: the base, doubled per
/// failure up to the cap, with up to half of it taken off at random so a
/// fleet does not reconnect in step. A constant `restart_timeout` (base ==
/// cap) gets the same jitter.
fn backoff((base, cap): (Duration, Duration), failures: u32) -> Duration {
    let full = base.saturating_mul(1u32 << failures.min(16)).min(cap.max(base));
    let mut byte = [0u8; 2];
    let r = getrandom::fill(&mut byte).map_or(0, |()| u16::from_le_bytes(byte));
    full.mul_f64(1.0 - f64::from(r) / f64::from(u16::MAX) / 2.0)
}

/// Waits until the bridge's session has `threshold` messages for the remote.
async fn wait_for_threshold<R: Runtime>(cx: &Context<R>) {
    loop {
        let queued = cx.broker.session_queue(&cx.local_id).map_or(0, |(q, _)| q);
        if queued >= cx.bridge.threshold {
            log::info!("bridge {}: {queued} message(s) queued, connecting (start_type lazy)", cx.bridge.name);
            return;
        }
        cx.rt.sleep(Duration::from_secs(1)).await;
    }
}

/// Why a link ended without an error.
enum Ended {
    /// A lazy bridge had nothing to carry for `idle_timeout`.
    Idle,
}

/// Publishes the bridge's state here, retained (`notifications`).
fn notify_local<R: Runtime>(cx: &Context<R>, up: bool) {
    if cx.bridge.notifications {
        let payload = if up { "1" } else { "0" };
        let message = Message::new(cx.bridge.state_topic().into(), payload.into(), QoS::AtLeastOnce, true);
        cx.broker.publish(message, true);
    }
}

/// A topic line with its whole filter on each side (prefix and pattern),
/// made once: every relayed message is matched against them.
struct Line {
    topic: BridgeTopic,
    /// `local_prefix` + pattern.
    local: String,
    /// `remote_prefix` + pattern.
    remote: String,
}

impl Line {
    fn new(topic: &BridgeTopic) -> Line {
        let (local, remote) =
            (format!("{}{}", topic.local_prefix, topic.pattern), format!("{}{}", topic.remote_prefix, topic.pattern));
        Line { topic: topic.clone(), local, remote }
    }

    /// Whether it carries messages from the remote (`true`) or to it.
    fn carries(&self, from_remote: bool) -> bool {
        let wanted = if from_remote { BridgeDirection::In } else { BridgeDirection::Out };
        self.topic.direction == wanted || self.topic.direction == BridgeDirection::Both
    }
}

/// The filters the bridge subscribes to on one side, at most at `max_qos`
/// (what a 5.0 remote takes), retained messages sent as `retained` says.
fn filters(lines: &[Line], remote: bool, max_qos: QoS, retained: RetainHandling) -> Vec<(String, SubscriptionOptions)> {
    let options = |qos: QoS| SubscriptionOptions {
        qos: qos.min(max_qos),
        no_local: true,
        retain_as_published: true,
        retain_handling: retained,
    };
    let filter = |l: &Line| if remote { l.remote.clone() } else { l.local.clone() };
    lines.iter().filter(|l| l.carries(remote)).map(|l| (filter(l), options(l.topic.qos))).collect()
}

/// The topic a message on `name` has on the other side, through the first
/// topic line whose filter on this side matches it: this side's prefix is
/// replaced by the other's. `None`: no line matches.
fn remap(lines: &[Line], name: &str, from_remote: bool) -> Option<String> {
    lines.iter().filter(|l| l.carries(from_remote)).find_map(|l| {
        let t = &l.topic;
        let (here, there, filter) = match from_remote {
            true => (&t.remote_prefix, &t.local_prefix, &l.remote),
            false => (&t.local_prefix, &t.remote_prefix, &l.local),
        };
        let rest = name.strip_prefix(here.as_str())?;
        let matched = if t.pattern.is_empty() { rest.is_empty() } else { topic::matches(filter, name) };
        matched.then(|| format!("{there}{rest}"))
    })
}

/// CONNECT for the bridge's session here; `receive_maximum`: what the
/// remote accepts in flight, so this broker never sends the bridge more.
fn local_connect(local_id: &str, receive_maximum: Option<u16>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        keep_alive: 0,
        client_id: local_id.to_owned(),
        clean_session: false,
        will: None,
        username: None,
        password: None,
        properties: Properties { session_expiry: Some(u32::MAX), receive_maximum, ..Properties::default() },
    }))
}

/// Opens the bridge's connection to this broker: CONNECT, CONNACK, and the
/// `out` subscriptions (SUBACK awaited; packets before it are kept, in order).
async fn open_local<R: Runtime>(
    cx: &Context<R>,
    receive_maximum: Option<u16>,
    max_qos: QoS,
    retained: RetainHandling,
) -> Result<(Reader<pipe::PipeEnd>, Writer<pipe::PipeEnd>, Vec<Packet>), String> {
    let (ours, theirs) = pipe::pipe();
    let peer = Peer { listener: BRIDGE_LISTENER, ..Peer::plain(SocketAddr::from(([127, 0, 0, 1], 0))) };
    // It ends when the bridge drops its end of the pipe, or at shutdown.
    let (rt, broker, shutdown, alive) = (cx.rt.clone(), cx.broker.clone(), cx.shutdown.clone(), cx.alive.clone());
    cx.rt.spawn(connection::run_holding(rt, broker, theirs, peer, shutdown, alive));
    let (read, write) = ours.split();
    let mut reader = FramedRead::new(read, ClientCodec::new(Protocol::V5, MAX_PACKET, false));
    let writer = Mutex::new(FramedWrite::new(write, ClientCodec::new(Protocol::V5, MAX_PACKET, false)));
    let filters = filters(&cx.lines, false, max_qos, retained);
    let connect = local_connect(&cx.local_id, receive_maximum);
    let (_, early) = handshake(cx, &mut reader, &writer, connect, filters, "this broker").await?;
    Ok((reader, writer, early))
}

/// Makes the bridges' sessions here and their subscriptions exist before
/// any listener opens, so that what a client publishes for a remote from
/// the first moment queues for it, on a bridge's very first start too
/// (the bridge's own task connects to its session later). As the bridge's
/// SUBSCRIBE over its connection does, without retained messages.
pub fn prepare(broker: &Broker) {
    for bridge in &broker.config().bridges {
        let local_id: Arc<str> = bridge.local_id().into();
        let lines: Vec<Line> = bridge.topics.iter().map(Line::new).collect();
        let max_levels = broker.config().max_topic_levels;
        let subscriptions: Vec<(String, crate::packet::Subscription)> =
            filters(&lines, false, QoS::ExactlyOnce, RetainHandling::Never)
                .into_iter()
                .filter(|(filter, _)| !topic::deeper_than(filter, max_levels))
                .map(|(filter, options)| (filter, crate::packet::Subscription { options, id: None }))
                .collect();
        let conn = broker.next_connection_id();
        let how = crate::broker::Attach {
            listener: BRIDGE_LISTENER,
            username: None,
            clean_start: false,
            expiry: None,
            client: crate::session::ClientLimits {
                receive_maximum: std::num::NonZeroU16::new(1),
                maximum_packet_size: None,
                v5: true,
            },
        };
        let attachment = broker.attach_with(&local_id, how, conn, Arc::new(crate::signal::Kick::new()));
        if broker.subscribe(&local_id, &attachment.session, conn, &subscriptions, &mut Vec::new()).is_none() {
            log::warn!("bridge {}: its session here was taken over while it was made", bridge.name);
        }
        broker.detach(&local_id, conn);
    }
}

/// CONNECT, CONNACK, then SUBSCRIBE and SUBACK (if there are filters). What
/// the peer sends before the SUBACK is returned, to be relayed first.
async fn handshake<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    cx: &Context<R>,
    reader: &mut Reader<S>,
    writer: &Writer<S>,
    connect: Packet,
    filters: Vec<(String, SubscriptionOptions)>,
    side: &str,
) -> Result<(Box<crate::packet::Connack>, Vec<Packet>), String> {
    let name = &cx.bridge.name;
    let protocol = match &connect {
        Packet::Connect(c) => c.protocol,
        _ => Protocol::V5,
    };
    send(cx, writer, connect).await?;
    let connack = match within(&cx.rt, CONNECT_TIMEOUT, reader.next()).await {
        None => return Err(format!("no CONNACK from {side} within {CONNECT_TIMEOUT:?}")),
        Some(None) => return Err(format!("{side} closed the connection before CONNACK")),
        Some(Some(Err(e))) => return Err(format!("bad packet from {side}: {e}")),
        Some(Some(Ok(Packet::Connack(c)))) if c.reason == ReasonCode::SUCCESS => c,
        Some(Some(Ok(Packet::Connack(c))))
            if c.reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION && cx.private.load(Relaxed) =>
        {
            // Mosquitto's rule: a broker that refuses the bridge mark gets a
            // plain 3.1.1 CONNECT next time.
            cx.private.store(false, Relaxed);
            return Err(format!("{side} refused the bridge mark (try_private); retrying without it"));
        }
        Some(Some(Ok(Packet::Connack(c)))) => {
            return Err(format!("{side} refused the connection: {}", connack_reason(c.reason, protocol)));
        }
        Some(Some(Ok(other))) => return Err(format!("{side} sent {} instead of CONNACK", other.name())),
    };
    let (mut early, mut early_bytes) = (Vec::new(), 0usize);
    if filters.is_empty() {
        return Ok((connack, early));
    }
    let wanted: Vec<String> = filters.iter().map(|(f, _)| f.clone()).collect();
    send(cx, writer, Packet::Subscribe(Box::new(Subscribe { pid: 1, filters, id: None }))).await?;
    let deadline = cx.rt.sleep(CONNECT_TIMEOUT);
    pin_mut!(deadline);
    loop {
        let next = reader.next();
        pin_mut!(next);
        let packet = match select(next, deadline.as_mut()).await {
            Either::Right(_) => return Err(format!("no SUBACK from {side} within {CONNECT_TIMEOUT:?}")),
            Either::Left((None, _)) => return Err(format!("{side} closed the connection before SUBACK")),
            Either::Left((Some(Err(e)), _)) => return Err(format!("bad packet from {side}: {e}")),
            Either::Left((Some(Ok(p)), _)) => p,
        };
        match packet {
            Packet::Suback(1, codes) => {
                for (filter, code) in wanted.iter().zip(&codes) {
                    if code.0 >= 0x80 {
                        log::warn!(
                            "bridge {name}: {side} refused the subscription to {filter:?} (reason 0x{:02x})",
                            code.0
                        );
                    }
                }
                return Ok((connack, early));
            }
            other if early.len() < MAX_EARLY && early_bytes < MAX_EARLY_BYTES => {
                if let Packet::Publish(p) = &other {
                    early_bytes += p.payload.len() + p.topic.len();
                }
                early.push(other)
            }
            _ => {
                return Err(format!(
                    "{side} sent more than {MAX_EARLY} packets or {MAX_EARLY_BYTES} bytes before its SUBACK"
                ));
            }
        }
    }
}

fn connack_reason(reason: ReasonCode, protocol: Protocol) -> String {
    // A 3.1.1 CONNACK's return code, as it was on the wire.
    let code = match protocol {
        Protocol::V5 => reason.0,
        _ => reason.to_connect_code() as u8,
    };
    let what = match reason.0 {
        0x01 | 0x84 => "unacceptable protocol version",
        0x02 | 0x85 => "client identifier rejected",
        0x03 | 0x88 => "server unavailable",
        0x04 | 0x86 => "bad user name or password",
        0x05 | 0x87 => "not authorized",
        0x8a => "banned",
        _ => "refused",
    };
    format!("{what} (0x{code:02x})")
}

/// A write that may wait at most the write timeout for the peer to read.
async fn bounded<R: Runtime>(cx: &Context<R>, write: impl Future<Output = io::Result<()>>) -> Result<(), String> {
    match within(&cx.rt, cx.write_timeout, write).await {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(format!("write failed: {e}")),
        None => Err(format!("the peer read nothing for {:?}", cx.write_timeout)),
    }
}

/// Writes one packet (and what was queued before it).
async fn send<R: Runtime, S: AsyncWrite + Unpin>(
    cx: &Context<R>,
    writer: &Writer<S>,
    packet: Packet,
) -> Result<(), String> {
    bounded(cx, writer.lock().await.send(&packet)).await
}

/// Queues one packet in the writer (written once its buffer fills, or at
/// the next [`flush`]).
async fn feed<R: Runtime, S: AsyncWrite + Unpin>(
    cx: &Context<R>,
    writer: &Writer<S>,
    packet: Packet,
) -> Result<(), String> {
    bounded(cx, writer.lock().await.feed(&packet)).await
}

/// Writes out what [`feed`] queued.
async fn flush<R: Runtime, S: AsyncWrite + Unpin>(cx: &Context<R>, writer: &Writer<S>) -> Result<(), String> {
    bounded(cx, SinkExt::<&Packet>::flush(&mut *writer.lock().await)).await
}

/// Packets relayed before the writers are flushed: what one read brought
/// goes out in one write.
const BATCH: usize = 64;

/// Connects to the remote (TCP, then TLS when configured).
async fn dial<R: Runtime>(cx: &Context<R>, host: &str, port: u16) -> Result<Stream, String> {
    let target = (host.to_owned(), port);
    let addrs: Vec<SocketAddr> = blocking::unblock(move || target.to_socket_addrs().map(Iterator::collect))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match within(&cx.rt, CONNECT_TIMEOUT, cx.rt.connect(addr)).await {
            Some(Ok(stream)) => {
                let Some(tls) = &cx.tls else { return Ok(Box::new(stream)) };
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
                return match within(&cx.rt, CONNECT_TIMEOUT, tls.connect(name, stream)).await {
                    Some(Ok(stream)) => Ok(Box::new(stream)),
                    Some(Err(e)) => Err(format!("TLS handshake with {addr} failed: {e}")),
                    None => Err(format!("TLS handshake with {addr} did not finish within {CONNECT_TIMEOUT:?}")),
                };
            }
            Some(Err(e)) => last = format!("{addr}: {e}"),
            None => last = format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// The largest packet the bridge takes from its remote: what this broker
/// takes, and room for a longer prefix.
fn max_packet(broker: &Broker) -> usize {
    broker.config().max_packet_size.saturating_add(64 * 1024).min(MAX_PACKET)
}

fn remote_connect(bridge: &Bridge, max_packet: usize) -> Packet {
    let v5 = bridge.protocol == Protocol::V5;
    let will = bridge.notifications.then(|| Will {
        topic: bridge.state_topic().into(),
        payload: "0".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: None,
        delay: None,
    });
    Packet::Connect(Box::new(Connect {
        protocol: bridge.protocol,
        keep_alive: bridge.keepalive,
        client_id: bridge.remote_id(),
        clean_session: bridge.clean_session,
        will,
        username: bridge.remote_username.clone(),
        password: bridge.remote_password.as_deref().map(|p| p.as_bytes().to_vec().into()),
        properties: Properties {
            // 5.0: a session kept across reconnects needs an expiry interval.
            session_expiry: (v5 && !bridge.clean_session).then_some(u32::MAX),
            maximum_packet_size: v5.then_some(max_packet as u32),
            ..Properties::default()
        },
    }))
}

/// One link: both connections, relayed until either ends.
async fn link<R: Runtime>(cx: &Context<R>, host: &str, port: u16) -> Result<Ended, String> {
    let bridge = &cx.bridge;
    let stream = dial(cx, host, port).await?;
    let (read, write) = stream.split();
    let try_private = cx.private.load(Relaxed);
    let max = max_packet(&cx.broker);
    let mut remote_reader = FramedRead::new(read, ClientCodec::new(bridge.protocol, max, try_private));
    let remote_writer = Mutex::new(FramedWrite::new(write, ClientCodec::new(bridge.protocol, max, try_private)));
    let in_filters = filters(&cx.lines, true, QoS::ExactlyOnce, RetainHandling::OnNewSubscription);
    let (connack, remote_early) =
        handshake(cx, &mut remote_reader, &remote_writer, remote_connect(bridge, max), in_filters, "the remote")
            .await?;
    if !connack.session_present {
        // The remote starts over: packet ids of its QoS 2 messages that this
        // broker still remembers (released by a PUBREL that never came)
        // would make new messages with those ids look like duplicates.
        cx.broker.forget_incoming(&cx.local_id);
    }
    // 5.0: what the remote takes (Maximum Packet Size, Receive Maximum,
    // Maximum QoS, Retain Available).
    let remote = &connack.properties;
    cx.remote_max_packet.store(remote.maximum_packet_size.map_or(usize::MAX, |m| m as usize), Relaxed);
    cx.remote_retains.store(remote.retain_available != Some(false), Relaxed);
    let max_qos = remote.maximum_qos.unwrap_or(QoS::ExactlyOnce);
    let retained = match cx.first_link.swap(false, Relaxed) {
        true => RetainHandling::OnSubscribe,
        false => RetainHandling::OnNewSubscription,
    };
    let (mut local_reader, local_writer, local_early) =
        open_local(cx, remote.receive_maximum, max_qos, retained).await?;
    cx.stats.connected.store(1, Relaxed);
    cx.stats.connects.fetch_add(1, Relaxed);
    let version = match bridge.protocol {
        Protocol::V5 => "MQTT 5.0",
        Protocol::V31 => "MQTT 3.1",
        Protocol::V311 => "MQTT 3.1.1",
    };
    log::info!("bridge {}: connected to {host}:{port} ({version}, client id {:?})", bridge.name, bridge.remote_id());
    notify_local(cx, true);
    if bridge.notifications {
        let up = Publish::new(bridge.state_topic().into(), "1".into(), QoS::AtMostOnce, None, true);
        send(cx, &remote_writer, Packet::Publish(up)).await?;
    }
    *cx.last_traffic.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    for packet in local_early {
        outward(cx, packet, &local_writer, &remote_writer).await?;
    }
    for packet in remote_early {
        inward(cx, packet, &local_writer, &remote_writer).await?;
    }
    flush(cx, &remote_writer).await?;
    flush(cx, &local_writer).await?;
    let out = async {
        loop {
            let first = local_reader.next().await;
            let relay = |p| outward(cx, p, &local_writer, &remote_writer);
            relay_batch(&mut local_reader, first, "this broker", "closed the bridge's session", relay).await?;
            flush(cx, &remote_writer).await?;
            flush(cx, &local_writer).await?;
        }
    };
    // MQTT-3.2.2-21: a 5.0 server's keepalive is the one to use.
    let keepalive = Duration::from_secs(u64::from(remote.server_keep_alive.unwrap_or(bridge.keepalive)));
    let silence = if keepalive.is_zero() { None } else { Some(keepalive * 3 / 2) };
    let inn = async {
        loop {
            let next = match silence {
                Some(limit) => within(&cx.rt, limit, remote_reader.next())
                    .await
                    .ok_or_else(|| format!("nothing from the remote for {limit:?} (keepalive)"))?,
                None => remote_reader.next().await,
            };
            let relay = |p| inward(cx, p, &local_writer, &remote_writer);
            relay_batch(&mut remote_reader, next, "the remote", "closed the connection", relay).await?;
            flush(cx, &local_writer).await?;
            flush(cx, &remote_writer).await?;
        }
    };
    let ping = async {
        loop {
            let tick = match keepalive.is_zero() {
                true => Duration::from_secs(1),
                false => (keepalive / 2).max(Duration::from_millis(500)),
            };
            cx.rt.sleep(tick).await;
            if !keepalive.is_zero() {
                send(cx, &remote_writer, Packet::Pingreq).await?;
            }
            if bridge.start_type == StartType::Lazy {
                let last = *cx.last_traffic.lock().unwrap_or_else(|e| e.into_inner());
                let queued = cx.broker.session_queue(&cx.local_id).map_or(0, |(q, _)| q);
                if queued == 0 && last.elapsed() >= bridge.idle_timeout {
                    return Ok::<Ended, String>(Ended::Idle);
                }
            }
        }
    };
    pin_mut!(out, inn, ping);
    let directions = select(out, inn);
    let ended = match select(directions, ping).await {
        Either::Left((Either::Left((result, _)) | Either::Right((result, _)), _)) => result,
        Either::Right((result, _)) => result,
    };
    if ended.is_ok() {
        // A normal DISCONNECT drops the will: say "0" ourselves.
        if bridge.notifications {
            let down = Publish::new(bridge.state_topic().into(), "0".into(), QoS::AtMostOnce, None, true);
            let _ = send(cx, &remote_writer, Packet::Publish(down)).await;
        }
        let _ = send(cx, &remote_writer, Packet::Disconnect(Box::default())).await;
    }
    let _ = send(cx, &local_writer, Packet::Disconnect(Box::default())).await;
    ended
}

/// Relays `first` and what else `reader` has ready, up to [`BATCH`]
/// packets, through `relay`; an error names `side`, and the end of the
/// stream says it `closed`.
async fn relay_batch<S: AsyncRead + Unpin, F: Future<Output = Result<(), String>>>(
    reader: &mut Reader<S>,
    first: Option<io::Result<Packet>>,
    side: &str,
    closed: &str,
    mut relay: impl FnMut(Packet) -> F,
) -> Result<(), String> {
    let (mut next, mut relayed) = (Some(first), 0);
    while let Some(item) = next.take() {
        match item {
            Some(Ok(packet)) => relay(packet).await?,
            Some(Err(e)) => return Err(format!("bad packet from {side}: {e}")),
            None => return Err(format!("{side} {closed}")),
        }
        relayed += 1;
        // Only fetched when it will be relayed in this batch.
        if relayed < BATCH {
            next = reader.next().now_or_never();
        }
    }
    Ok(())
}

/// The whole PUBLISH's size on the wire in `protocol`.
fn packet_len(protocol: Protocol, p: &Publish) -> usize {
    crate::codec::packet_len(crate::codec::publish_remaining_length_for(protocol, p))
}

/// Acknowledges a PUBLISH that is not relayed (PUBACK, or PUBREC: the
/// PUBREL that follows is relayed and answered by the other side).
async fn acknowledge<R: Runtime, S: AsyncWrite + Unpin>(
    cx: &Context<R>,
    to: &Writer<S>,
    p: &Publish,
) -> Result<(), String> {
    match (p.qos, p.pid) {
        (QoS::AtLeastOnce, Some(pid)) => feed(cx, to, Packet::Puback(Ack::ok(pid))).await,
        (QoS::ExactlyOnce, Some(pid)) => feed(cx, to, Packet::Pubrec(Ack::ok(pid))).await,
        _ => Ok(()),
    }
}

fn touch<R: Runtime>(cx: &Context<R>) {
    if cx.bridge.start_type == StartType::Lazy {
        *cx.last_traffic.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// A packet this broker sent the bridge, relayed to the remote.
async fn outward<R: Runtime, L: AsyncWrite + Unpin, T: AsyncWrite + Unpin>(
    cx: &Context<R>,
    packet: Packet,
    local: &Writer<L>,
    remote: &Writer<T>,
) -> Result<(), String> {
    match packet {
        Packet::Publish(p) => {
            let forward = remap(&cx.lines, &p.topic, false).map(|topic| Publish {
                topic: topic.into(),
                topic_alias: None,
                subscription_id: None,
                // A 5.0 remote without retained messages closes on a retained PUBLISH.
                retain: p.retain && cx.remote_retains.load(Relaxed),
                ..p.clone()
            });
            match forward {
                Some(f)
                    if f.topic.len() <= usize::from(u16::MAX)
                        && packet_len(cx.bridge.protocol, &f) <= cx.remote_max_packet.load(Relaxed) =>
                {
                    touch(cx);
                    cx.stats.forwarded.fetch_add(1, Relaxed);
                    feed(cx, remote, Packet::Publish(f)).await
                }
                Some(f) => {
                    // Sending it would only get the link closed, again and again.
                    cx.broker.stats().dropped(crate::stats::DropCause::TooLarge, 1);
                    let name = &cx.bridge.name;
                    log::warn!("bridge {name}: a message on {:?} is larger than the remote accepts; dropped", f.topic);
                    acknowledge(cx, local, &p).await
                }
                None => {
                    // A subscription left from an earlier configuration.
                    log::debug!("bridge {}: {:?} matches no out topic; not forwarded", cx.bridge.name, p.topic);
                    acknowledge(cx, local, &p).await
                }
            }
        }
        // Acknowledgements of what the remote sent, and QoS 2 releases.
        p @ (Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubrel(_) | Packet::Pubcomp(_)) => {
            feed(cx, remote, p).await
        }
        Packet::Disconnect(d) => Err(format!("this broker disconnected the bridge (reason 0x{:02x})", d.reason.0)),
        _ => Ok(()),
    }
}

/// A packet the remote sent, relayed to this broker.
async fn inward<R: Runtime, L: AsyncWrite + Unpin, T: AsyncWrite + Unpin>(
    cx: &Context<R>,
    packet: Packet,
    local: &Writer<L>,
    remote: &Writer<T>,
) -> Result<(), String> {
    match packet {
        Packet::Publish(p) => {
            let config = cx.broker.config();
            // What this broker would close the bridge's connection for
            // (again and again, as the remote re-sends it) is refused here.
            let bring = remap(&cx.lines, &p.topic, true)
                .filter(|topic| {
                    topic.len() <= usize::from(u16::MAX)
                        && topic::validate_name(topic).is_ok()
                        && !topic::deeper_than(topic, config.max_topic_levels)
                })
                .map(|topic| Publish { topic: topic.into(), retain: p.retain && config.retain_available, ..p.clone() });
            match bring {
                Some(b) if packet_len(Protocol::V5, &b) <= config.max_packet_size => {
                    touch(cx);
                    cx.stats.received.fetch_add(1, Relaxed);
                    feed(cx, local, Packet::Publish(b)).await
                }
                other => {
                    cx.stats.refused.fetch_add(1, Relaxed);
                    let why = match other {
                        Some(_) => "is larger than this broker's max_packet_size",
                        None => "matches no in topic, or mapped is not a topic this broker takes",
                    };
                    let name = &cx.bridge.name;
                    log::warn!("bridge {name}: the remote sent a message on {:?}, which {why}; dropped", p.topic);
                    acknowledge(cx, remote, &p).await
                }
            }
        }
        // Quota exceeded: the remote did not take the message and would
        // take it later; relayed, this broker would count it as delivered.
        Packet::Puback(a) | Packet::Pubrec(a) if a.reason == ReasonCode::QUOTA_EXCEEDED => {
            Err(format!("the remote refused message {} for its quota (0x97); it is sent again on reconnection", a.pid))
        }
        // Acknowledgements of what was forwarded, and QoS 2 releases.
        p @ (Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubrel(_) | Packet::Pubcomp(_)) => {
            if let Packet::Puback(a) | Packet::Pubrec(a) = &p
                && a.reason.0 >= 0x80
            {
                log::warn!(
                    "bridge {}: the remote refused message {} (reason 0x{:02x}); not sent again",
                    cx.bridge.name,
                    a.pid,
                    a.reason.0
                );
            }
            feed(cx, local, p).await
        }
        Packet::Suback(_, codes) => {
            if codes.iter().any(|c| c.0 >= 0x80) {
                log::warn!("bridge {}: the remote refused a subscription", cx.bridge.name);
            }
            Ok(())
        }
        Packet::Pingresp | Packet::Unsuback(..) => Ok(()),
        Packet::Disconnect(d) => Err(format!("the remote disconnected the bridge (reason 0x{:02x})", d.reason.0)),
        other => Err(format!("the remote sent {}, which a server may not send", other.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(pattern: &str, direction: BridgeDirection, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: QoS::AtLeastOnce,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn prefixes_are_swapped_as_mosquitto_documents() {
        let topics: Vec<Line> = [
            topic("sensors/#", BridgeDirection::Out, "edge/", "site1/"),
            topic("cmd/+", BridgeDirection::In, "", "central/"),
            topic("", BridgeDirection::Both, "local/exact", "remote/exact"),
        ]
        .iter()
        .map(Line::new)
        .collect();
        assert_eq!(remap(&topics, "edge/sensors/t1", false).unwrap(), "site1/sensors/t1");
        assert_eq!(remap(&topics, "sensors/t1", false), None);
        assert_eq!(remap(&topics, "central/cmd/reboot", true).unwrap(), "cmd/reboot");
        assert_eq!(remap(&topics, "central/cmd/a/b", true), None);
        assert_eq!(remap(&topics, "remote/exact", true).unwrap(), "local/exact");
        assert_eq!(remap(&topics, "local/exact", false).unwrap(), "remote/exact");
        assert_eq!(remap(&topics, "local/exact/more", false), None);
    }

    #[test]
    fn filters_follow_direction_and_prefix() {
        let lines: Vec<Line> = [
            topic("a/#", BridgeDirection::Out, "l/", "r/"),
            topic("b", BridgeDirection::In, "l/", "r/"),
            topic("c", BridgeDirection::Both, "", ""),
        ]
        .iter()
        .map(Line::new)
        .collect();
        let names = |remote| {
            filters(&lines, remote, QoS::ExactlyOnce, RetainHandling::OnSubscribe)
                .into_iter()
                .map(|(f, o)| (f, o.no_local))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), [("l/a/#".to_owned(), true), ("c".to_owned(), true)]);
        assert_eq!(names(true), [("r/b".to_owned(), true), ("c".to_owned(), true)]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let t = (Duration::from_secs(5), Duration::from_secs(30));
        for failures in 0..40 {
            let d = backoff(t, failures);
            let full = Duration::from_secs(5 * (1u64 << failures.min(16))).min(Duration::from_secs(30));
            assert!(d <= full && d >= full / 2, "{failures}: {d:?}");
        }
    }
}
