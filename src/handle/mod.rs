//! Protocol rules, one file per packet family: plain functions over the
//! client's state and the broker that push the packets to send into `out`.
//! No IO here; the connection task does the reading and writing.

mod connect;
mod publish;
mod subscribe;

pub use connect::connect;

use crate::broker::{Broker, SessionHandle};
use crate::error::Violation;
use crate::packet::{Packet, Will};
use crate::session::Session;
use std::sync::Arc;

/// A connected client: what the connection knows beyond its session.
pub struct Client {
    /// Client identifier (assigned by the broker when the client sent none).
    pub id: Arc<str>,
    /// This connection's id; the session belongs to it until a takeover.
    pub conn: u64,
    /// The session, shared with publishers routing to it.
    pub session: Arc<SessionHandle>,
    /// Published if the connection ends without DISCONNECT.
    pub will: Option<Will>,
    /// Keepalive in seconds (0: none).
    pub keep_alive: u16,
}

impl Client {
    /// Runs `f` on the session if this connection still owns it; `None`
    /// means a newer connection with the same client id took over.
    pub fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.session
            .lock_owned(self.conn)
            .map(|mut owned| f(&mut owned.session))
    }
}

/// What the connection does after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The client sent DISCONNECT: close without publishing the will.
    Disconnect,
    /// Another connection took the client id over: close.
    TakenOver,
}

impl From<Option<()>> for Flow {
    fn from(owned: Option<()>) -> Flow {
        owned.map_or(Flow::TakenOver, |()| Flow::Continue)
    }
}

/// Handles one packet received after CONNECT.
pub fn packet(
    client: &Client,
    broker: &Broker,
    packet: Packet,
    out: &mut Vec<Packet>,
) -> Result<Flow, Violation> {
    Ok(match packet {
        Packet::Publish(p) => publish::publish(client, broker, p, out),
        Packet::Puback(pid) => client.with_session(|s| s.puback(pid)).into(),
        Packet::Pubrec(pid) => client.with_session(|s| s.pubrec(pid, out)).into(),
        Packet::Pubrel(pid) => client.with_session(|s| s.pubrel(pid, out)).into(),
        Packet::Pubcomp(pid) => client.with_session(|s| s.pubcomp(pid)).into(),
        Packet::Subscribe(pid, filters) => subscribe::subscribe(client, broker, pid, &filters, out),
        Packet::Unsubscribe(pid, filters) => {
            subscribe::unsubscribe(client, broker, pid, &filters, out)
        }
        Packet::Pingreq => pong(out),
        Packet::Disconnect => Flow::Disconnect,
        Packet::Connect(_) => return Err(Violation::SecondConnect),
        _ => return Err(Violation::ServerOnlyPacket),
    })
}

/// Moves queued messages into `out` as far as the inflight window allows.
pub fn drain(client: &Client, out: &mut Vec<Packet>) -> Flow {
    client.with_session(|s| s.next_packets(out)).into()
}

/// PINGREQ is answered by PINGRESP (MQTT-3.12.4-1).
fn pong(out: &mut Vec<Packet>) -> Flow {
    out.push(Packet::Pingresp);
    Flow::Continue
}
