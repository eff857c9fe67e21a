//! Protocol rules, one file per packet family: plain functions over the
//! client's state and the broker that push the packets to send into `out`.
//! No IO here; the connection task does the reading and writing.

mod connect;
mod publish;
mod subscribe;

pub use connect::{Admitted, admit, authenticate, connect};
pub use publish::{allowed, check_depth, check_retain};

use crate::broker::Broker;
use crate::error::Violation;
use crate::packet::{Auth, Packet, Properties, Protocol, ReasonCode, Will};
use crate::security::{AuthExchange, AuthStep, ClientInfo, ConnectInfo};
use crate::session::{Receipt, Session};
use crate::session_handle::SessionHandle;
use crate::stats::ListenerStats;
use crate::store::{Ticket, TicketStatus};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A connected client: what the connection knows beyond its session.
pub struct Client {
    /// The user name it authenticated as (or its TLS identity).
    pub username: Option<Arc<str>>,
    /// This connection's id; the session belongs to it until a takeover.
    pub conn: u64,
    /// The index of the listener it connected on (a `u32`: 8 bytes less
    /// in every connection, with the fields beside it).
    pub listener: u32,
    /// The session, shared with publishers routing to it.
    pub session: Arc<SessionHandle>,
    /// Published if the connection ends without DISCONNECT (boxed: most
    /// clients have none, and it lives as long as the connection).
    pub will: Option<Box<Will>>,
    /// Keepalive in seconds (0: none).
    pub keep_alive: u16,
    /// The protocol the client spoke in CONNECT.
    pub protocol: crate::packet::Protocol,
    /// The Session Expiry Interval CONNECT asked for (5.0): a DISCONNECT may
    /// change it, but not from 0 (MQTT-3.14.2-2).
    pub session_expiry: Option<u32>,
    /// What only a 5.0 client has (boxed: 72 bytes that a 3.1.1
    /// connection would carry for its whole life).
    pub v5: Option<Box<V5State>>,
    /// Its address (for the hooks, on re-authentication).
    pub peer: std::net::SocketAddr,
    /// The store commit the packets being answered wait for: responses go
    /// out only once what they acknowledge is durable.
    pub ticket: AtomicU64,
    /// What a publishing client's turn noted for its connection (boxed on
    /// first use and kept: a client that never publishes to a persistent
    /// or full session carries 8 bytes instead of 48).
    pub noted: Mutex<Option<Box<Noted>>>,
}

/// What [`Client::noted`] holds.
#[derive(Default)]
pub struct Noted {
    /// The commit of the stored copies of the QoS 1 message being answered,
    /// and their receipt: its PUBACK waits for either.
    copies: Option<(Ticket, Arc<Receipt>)>,
    /// The forward of that message to a cluster's other nodes: its
    /// acknowledgement waits for it too.
    forwarded: Option<Arc<Receipt>>,
    /// Sessions whose full queues took this client's messages because
    /// their clients are reading: the connection stops reading from this
    /// client until they have room (backpressure instead of loss).
    pressed: Vec<Arc<SessionHandle>>,
}

/// A 5.0 client's topic aliases and enhanced authentication.
pub struct V5State {
    /// Inbound topic aliases: alias − 1 → topic, at most the Topic Alias
    /// Maximum announced in CONNACK.
    pub aliases: Mutex<Vec<Option<Arc<str>>>>,
    /// The Authentication Method of its enhanced authentication, which a
    /// re-authentication must use (MQTT-4.12.1-1).
    pub auth_method: Option<Arc<str>>,
    /// A re-authentication in progress.
    pub reauth: Mutex<Option<Box<dyn AuthExchange>>>,
    /// The Receive Maximum announced to the client: QoS 1/2 PUBLISHes it
    /// may have unacknowledged at once.
    pub receive_maximum: u16,
}

impl Client {
    /// Client identifier (assigned by the broker when the client sent
    /// none): its session's, kept there once for both.
    pub fn id(&self) -> &Arc<str> {
        self.session.client_id()
    }

    /// Runs `f` on the session if this connection still owns it; `None`
    /// means a newer connection with the same client id took over.
    pub fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let mut owned = self.session.lock_owned(self.conn)?;
        let result = f(&mut owned.session);
        self.wait_for(owned.commit());
        Some(result)
    }

    /// [`Client::with_session`] whose changes no response waits for.
    pub fn with_session_unheld<T>(&self, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let mut owned = self.session.lock_owned(self.conn)?;
        let result = f(&mut owned.session);
        owned.commit();
        Some(result)
    }

    /// Holds the current responses until `ticket` is committed.
    pub fn wait_for(&self, ticket: Ticket) {
        self.ticket.fetch_max(ticket.0, Ordering::Relaxed);
    }

    /// Holds the current responses until the copies of a QoS 1 message
    /// are committed or all acknowledged.
    pub fn wait_for_copies(&self, ticket: Ticket, receipt: Arc<Receipt>) {
        self.note(|n| n.copies = Some((ticket, receipt)));
    }

    /// Holds the current responses until the message is forwarded to the
    /// cluster's other nodes.
    pub fn wait_for_forward(&self, receipt: Arc<Receipt>) {
        self.note(|n| n.forwarded = Some(receipt));
    }

    /// What [`Client::wait_for_forward`] noted since the last call.
    pub fn take_forwarded(&self) -> Option<Arc<Receipt>> {
        self.noted.lock().unwrap_or_else(PoisonError::into_inner).as_mut()?.forwarded.take()
    }

    /// What [`Client::wait_for_copies`] noted since the last call.
    pub fn take_copies(&self) -> Option<(Ticket, Arc<Receipt>)> {
        self.noted.lock().unwrap_or_else(PoisonError::into_inner).as_mut()?.copies.take()
    }

    /// Notes sessions to wait for (see [`Noted::pressed`]).
    pub fn press(&self, sessions: Vec<Arc<SessionHandle>>) {
        if sessions.is_empty() {
            return;
        }
        // Repeats are dropped where the connection takes them.
        self.note(|n| n.pressed.extend(sessions));
    }

    /// Whether no session was noted since the last [`Client::take_pressed`].
    pub fn pressed_is_empty(&self) -> bool {
        self.noted.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_none_or(|n| n.pressed.is_empty())
    }

    /// The sessions noted since the last call.
    pub fn take_pressed(&self) -> Vec<Arc<SessionHandle>> {
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        noted.as_mut().map(|n| std::mem::take(&mut n.pressed)).unwrap_or_default()
    }

    /// [`Client::noted`], boxed on first use.
    fn note(&self, f: impl FnOnce(&mut Noted)) {
        f(self.noted.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(Box::default));
    }

    /// The ticket the current responses wait for, resetting it.
    pub fn take_ticket(&self) -> Ticket {
        Ticket(self.ticket.swap(0, Ordering::Relaxed))
    }
}

/// The other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The Common Name of its TLS client certificate, when the listener
    /// uses it as the user name (`use_identity_as_username`).
    pub identity: Option<String>,
    /// The listener uses certificate identities as user names: a client
    /// without one is refused (CONNACK 4), as Mosquitto does.
    pub identity_required: bool,
    /// The counters of the listener it came in on (none over a pipe).
    pub listener_stats: Option<Arc<ListenerStats>>,
    /// The index of the listener it came in on (in `Config::listeners`),
    /// for per-listener authentication.
    pub listener: usize,
}

impl Peer {
    /// A peer on the first listener, without certificate identities.
    pub fn plain(addr: std::net::SocketAddr) -> Peer {
        Peer { addr, identity: None, identity_required: false, listener_stats: None, listener: 0 }
    }

    /// The same peer, on the listener at `index`.
    pub fn on_listener(self, index: usize) -> Peer {
        Peer { listener: index, ..self }
    }
}

impl Client {
    /// The client as hooks and ACL checks see it.
    pub fn info(&self) -> ClientInfo<'_> {
        ClientInfo { client_id: self.id(), username: self.username.as_deref(), listener: self.listener as usize }
    }
}

/// What the connection does after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The client sent DISCONNECT: close without publishing the will.
    Disconnect,
    /// The client sent DISCONNECT with reason 0x04 (5.0): close and
    /// publish the will.
    DisconnectWithWill,
    /// Another connection took the client id over: close.
    TakenOver,
}

impl From<Option<()>> for Flow {
    fn from(owned: Option<()>) -> Flow {
        owned.map_or(Flow::TakenOver, |()| Flow::Continue)
    }
}

/// Handles one packet received after CONNECT.
pub fn packet(client: &Client, broker: &Broker, packet: Packet, out: &mut Vec<Packet>) -> Result<Flow, Violation> {
    Ok(match packet {
        Packet::Publish(p) => publish::publish(client, broker, p, out)?,
        // A QoS 1 delivery's removal from the store answers nothing: the
        // connection's next answers do not wait for its commit (a crash
        // before it sends the message once more, at least once). A QoS 2
        // one's does: a PUBREL sent again after PUBCOMP would be for an id
        // the client has forgotten.
        Packet::Puback(a) => client.with_session_unheld(|s| s.puback(a.pid)).into(),
        Packet::Pubrec(a) => client.with_session(|s| s.pubrec(a, out)).into(),
        Packet::Pubrel(a) => client.with_session(|s| s.pubrel(a.pid, out)).into(),
        Packet::Pubcomp(a) => client.with_session(|s| s.pubcomp(a.pid)).into(),
        Packet::Subscribe(sub) => subscribe::subscribe(client, broker, *sub, out),
        Packet::Unsubscribe(pid, filters) => subscribe::unsubscribe(client, broker, pid, &filters, out),
        Packet::Pingreq => pong(out),
        Packet::Disconnect(d) => disconnect(client, broker, &d)?,
        Packet::Auth(a) => reauthenticate(client, broker, *a, out)?,
        Packet::Connect(_) => return Err(Violation::SecondConnect),
        _ => return Err(Violation::ServerOnlyPacket),
    })
}

/// What [`drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Sent what the inflight window allows.
    Sent,
    /// The next message waits for this store commit.
    Waiting(Ticket),
    /// Another connection took the client id over.
    TakenOver,
}

/// Moves queued messages into `out` as far as the inflight window allows.
/// Deliveries need not wait for the store, except QoS 2 ones (see
/// [`Session::next_packets`]): a "sent" mark only decides DUP after a crash,
/// and the packet id is fixed by the stored sequence number.
pub fn drain(client: &Client, broker: &Broker, out: &mut Vec<Packet>) -> Drained {
    let Some(mut owned) = client.session.lock_owned(client.conn) else { return Drained::TakenOver };
    let durable = |t| broker.store().is_none_or(|s| s.status(t) != TicketStatus::Pending);
    let waiting = owned.session.next_packets(out, durable);
    let room = owned.session.take_room();
    let unsent = owned.session.take_unsent();
    drop(owned);
    for cause in unsent {
        broker.stats().dropped(cause, 1);
    }
    if room {
        client.session.wake_publishers();
    }
    match waiting {
        Some(ticket) => Drained::Waiting(ticket),
        None => Drained::Sent,
    }
}

/// A finished enhanced authentication: its method and the data CONNACK
/// carries (MQTT-4.12.0-5).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The Authentication Method.
    pub method: Arc<str>,
    /// The final Authentication Data, if any.
    pub data: Option<Bytes>,
}

/// An AUTH packet with `reason`, `method` and `data`.
pub fn auth_packet(reason: ReasonCode, method: &Arc<str>, data: impl Into<Option<Vec<u8>>>) -> Packet {
    let properties = Properties {
        auth_method: Some(method.clone()),
        auth_data: data.into().map(Bytes::from),
        ..Properties::default()
    };
    Packet::Auth(Box::new(Auth { reason, properties }))
}

/// AUTH after CONNACK: a re-authentication (MQTT 5.0, 4.12.1) with the
/// method the client authenticated with, through the hooks. An AUTH from
/// a client that did not use enhanced authentication is a Protocol Error
/// (MQTT-4.12.0-7); a refused re-authentication closes with 0x87
/// (MQTT-4.12.1-2).
fn reauthenticate(client: &Client, broker: &Broker, auth: Auth, out: &mut Vec<Packet>) -> Result<Flow, Violation> {
    let Some((v5, method)) = client.v5.as_ref().and_then(|v5| Some((v5, v5.auth_method.as_ref()?))) else {
        return Err(Violation::V5(
            ReasonCode::PROTOCOL_ERROR,
            "MQTT-4.12.0-7",
            "AUTH from a client that did not use enhanced authentication",
        ));
    };
    if auth.properties.auth_method.as_deref() != Some(&**method) {
        return Err(Violation::V5(
            ReasonCode::PROTOCOL_ERROR,
            "MQTT-4.12.1-1",
            "re-authentication with another authentication method",
        ));
    }
    let mut reauth = v5.reauth.lock().unwrap_or_else(PoisonError::into_inner);
    if auth.reason == ReasonCode::RE_AUTHENTICATE {
        let info = ConnectInfo {
            client_id: client.id(),
            username: client.username.as_deref(),
            password: None,
            peer: client.peer,
        };
        *reauth = broker.guards().hooks.and_then(|h| h.start_auth(method, &info));
    } else if auth.reason != ReasonCode::CONTINUE_AUTHENTICATION || reauth.is_none() {
        return Err(Violation::V5(
            ReasonCode::PROTOCOL_ERROR,
            "MQTT-4.12.1-1",
            "AUTH that neither starts nor continues a re-authentication",
        ));
    }
    let step = match reauth.as_mut() {
        Some(exchange) => exchange.step(auth.properties.auth_data.as_deref()),
        None => AuthStep::Fail,
    };
    match step {
        AuthStep::Continue(data) => out.push(auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, method, data)),
        AuthStep::Success(data) => {
            *reauth = None;
            log::info!("client {}: re-authenticated ({method})", client.id());
            out.push(auth_packet(ReasonCode::SUCCESS, method, data));
        }
        AuthStep::Fail => {
            broker.stats().auth_failed();
            return Err(Violation::V5(ReasonCode::NOT_AUTHORIZED, "MQTT-4.12.1-2", "re-authentication refused"));
        }
    }
    Ok(Flow::Continue)
}

/// DISCONNECT: 5.0 may change the Session Expiry Interval, except from 0
/// (MQTT-3.14.2-2), and reason 0x04 asks for the will to be published.
fn disconnect(client: &Client, broker: &Broker, d: &crate::packet::Disconnect) -> Result<Flow, Violation> {
    if client.protocol != Protocol::V5 {
        return Ok(Flow::Disconnect);
    }
    if let Some(expiry) = d.properties.session_expiry {
        // `None` is "never" (0xFFFFFFFF): only an expiry of 0 may not change.
        if client.session_expiry == Some(0) && expiry != 0 {
            return Err(Violation::V5(
                ReasonCode::PROTOCOL_ERROR,
                "MQTT-3.14.2-2",
                "DISCONNECT sets a session expiry interval although CONNECT's was 0",
            ));
        }
        broker.set_session_expiry(client.id(), client.conn, (expiry != u32::MAX).then_some(expiry));
    }
    Ok(match d.reason == ReasonCode::DISCONNECT_WITH_WILL {
        true => Flow::DisconnectWithWill,
        false => Flow::Disconnect,
    })
}

/// PINGREQ is answered by PINGRESP (MQTT-3.12.4-1).
fn pong(out: &mut Vec<Packet>) -> Flow {
    out.push(Packet::Pingresp);
    Flow::Continue
}

/// The message a will publishes, expiring its Message Expiry Interval from
/// now.
pub fn will_message(will: &Will) -> crate::session::Message {
    let expires = will.properties.as_ref().and_then(|p| p.message_expiry);
    crate::session::Message {
        properties: will.properties.clone(),
        expires: expires.map(crate::packet::expires_in),
        ..crate::session::Message::new(will.topic.clone(), will.payload.clone(), will.qos, false)
    }
}

/// A will's delay in seconds: its Will Delay Interval, cut short by the
/// session's own end (3.1.3.2.2) and the broker's session expiry.
pub fn will_delay(broker: &Broker, will: &Will, session_expiry: Option<u32>) -> u32 {
    let cap = broker.config().session_expiry.map_or(u32::MAX, |d| d.as_secs().min(u64::from(u32::MAX)) as u32);
    will.delay.unwrap_or(0).min(session_expiry.unwrap_or(u32::MAX)).min(cap)
}
