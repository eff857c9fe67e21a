//! CONNECT: client-id rules, session attach or takeover, CONNACK, resend.

use super::Client;
use crate::broker::Broker;
use crate::error::Violation;
use crate::packet::{Connect, ConnectCode, Packet, Protocol};
use async_channel::Sender;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// MQTT 3.1 (MQIsdp) limits client ids to 23 characters.
const MQTT31_MAX_CLIENT_ID: usize = 23;

/// Accepts a CONNECT: attaches the client to its session (taking over any
/// connection with the same id) and queues CONNACK, then every unacknowledged
/// message of a resumed session (MQTT-4.4.0-1); queued ones follow from the
/// connection loop.
pub fn connect(
    broker: &Broker,
    connect: Connect,
    conn: u64,
    kick: Sender<()>,
    out: &mut Vec<Packet>,
) -> Result<Client, Violation> {
    let id = client_id(&connect, conn)?;
    let attachment = broker.attach(&id, connect.clean_session, conn, kick);
    // MQTT 3.1 has no Session Present flag: that byte is reserved there.
    let session_present = attachment.session_present && connect.protocol == Protocol::V311;
    out.push(Packet::Connack { session_present, code: ConnectCode::Accepted });
    let client = Client {
        id,
        conn,
        session: attachment.session,
        will: connect.will,
        keep_alive: connect.keep_alive,
        ticket: AtomicU64::new(attachment.ticket.0),
    };
    client.with_session(|s| s.resend(out));
    Ok(client)
}

/// The client id to use: the client's own, or one assigned for an empty id
/// with clean session 1 (MQTT-3.1.3-6); an empty id with clean session 0 is
/// refused (MQTT-3.1.3-8).
fn client_id(connect: &Connect, conn: u64) -> Result<Arc<str>, Violation> {
    match (&*connect.client_id, connect.clean_session, connect.protocol) {
        ("", false, _) => Err(Violation::EmptyClientIdPersistent),
        ("", true, _) => Ok(format!("auto-{:08x}-{conn}", process_nonce()).into()),
        (id, _, Protocol::V31) if id.chars().count() > MQTT31_MAX_CLIENT_ID => Err(Violation::ClientIdRejected),
        (id, _, _) => Ok(id.into()),
    }
}

/// A per-process value so assigned ids differ across restarts.
fn process_nonce() -> u32 {
    static NONCE: OnceLock<u32> = OnceLock::new();
    *NONCE.get_or_init(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        now.subsec_nanos() ^ now.as_secs() as u32 ^ std::process::id()
    })
}
