//! CONNECT: client-id rules, session attach or takeover, CONNACK, resend.

use super::{Client, Peer};
use crate::broker::Broker;
use crate::error::{Refusal, Violation};
use crate::packet::{Connect, ConnectCode, Packet, Protocol};
use crate::security::ConnectInfo;
use crate::signal::Signal;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// MQTT 3.1 (MQIsdp) limits client ids to 1 to 23 characters.
const MQTT31_MAX_CLIENT_ID: usize = 23;

/// Accepts a CONNECT: attaches the client to its session (taking over any
/// connection with the same id) and queues CONNACK, then every unacknowledged
/// message of a resumed session (MQTT-4.4.0-1); queued ones follow from the
/// connection loop.
pub fn connect(
    broker: &Broker,
    connect: Connect,
    admitted: Admitted,
    kick: Arc<Signal>,
    out: &mut Vec<Packet>,
) -> Client {
    let Admitted { id, username, conn, listener } = admitted;
    let attachment = broker.attach_on(listener, &id, username.clone(), connect.clean_session, conn, kick);
    // MQTT 3.1 has no Session Present flag: that byte is reserved there.
    let session_present = attachment.session_present && connect.protocol == Protocol::V311;
    out.push(Packet::Connack { session_present, code: ConnectCode::Accepted });
    let client = Client {
        id,
        username,
        conn,
        listener,
        session: attachment.session,
        will: connect.will,
        keep_alive: connect.keep_alive,
        protocol: connect.protocol,
        ticket: AtomicU64::new(attachment.ticket.0),
        pressed: Default::default(),
    };
    client.with_session(|s| s.resend(out));
    client
}

/// A CONNECT that passed every check: who the client is.
#[derive(Debug)]
pub struct Admitted {
    /// Client id, assigned if the client sent none.
    pub id: Arc<str>,
    /// User name (or TLS identity) the client authenticated as.
    pub username: Option<Arc<str>>,
    /// The connection's id.
    pub conn: u64,
    /// The index of the listener it came in on.
    pub listener: usize,
}

/// The checks on a CONNECT before its credentials: client id rules and the
/// broker's limits. Returns the client id to use.
pub fn admit(broker: &Broker, connect: &Connect, conn: u64) -> Result<Arc<str>, Refusal> {
    let id = client_id(connect, conn).map_err(Refusal::Violation)?;
    if let Some(will) = &connect.will {
        super::check_depth(broker, &will.topic).map_err(Refusal::Violation)?;
        super::check_retain(broker, will.retain).map_err(Refusal::Violation)?;
    }
    if let Some(max) = broker.config().max_keepalive
        && (connect.keep_alive == 0 || connect.keep_alive > max)
    {
        let why = format!("keepalive {}s not allowed (max_keepalive {max}s)", connect.keep_alive);
        return Err(Refusal::Policy(ConnectCode::IdentifierRejected, why));
    }
    Ok(id)
}

/// Checks the credentials (password file, then the hooks): the user name
/// to use, or the CONNACK code to refuse with. The password check runs on
/// a blocking thread: PBKDF2 is slow on purpose.
pub async fn authenticate(
    broker: &Broker,
    connect: &Connect,
    id: &str,
    peer: &Peer,
) -> Result<Option<Arc<str>>, Refusal> {
    let guards = broker.guards();
    if peer.identity_required && peer.identity.is_none() {
        broker.stats().auth_failed();
        let why = "no client certificate identity (use_identity_as_username)".into();
        return Err(Refusal::Policy(ConnectCode::BadUsernamePassword, why));
    }
    let username: Option<Arc<str>> = match &peer.identity {
        Some(identity) => Some(identity.as_str().into()),
        None => connect.username.as_deref().map(Into::into),
    };
    let files = guards.files.clone();
    let (user, password, listener) = (username.clone(), connect.password.clone(), peer.listener);
    let checked = match (&peer.identity, files.checks_passwords(listener) && user.is_some()) {
        (None, true) => {
            blocking::unblock(move || files.authenticate(listener, user.as_deref(), password.as_deref())).await
        }
        (Some(_), _) => Ok(()),
        (None, false) => files.authenticate(listener, user.as_deref(), password.as_deref()),
    };
    let info = ConnectInfo {
        client_id: id,
        username: username.as_deref(),
        password: connect.password.as_deref(),
        peer: peer.addr,
    };
    checked.and_then(|()| guards.hooks.as_ref().map_or(Ok(()), |h| h.authenticate(&info))).map_err(|code| {
        broker.stats().auth_failed();
        Refusal::Policy(code, refusal_reason(code).into())
    })?;
    Ok(username)
}

fn refusal_reason(code: ConnectCode) -> &'static str {
    match code {
        ConnectCode::BadUsernamePassword => "bad user name or password",
        ConnectCode::NotAuthorized => "not authorized",
        ConnectCode::IdentifierRejected => "identifier rejected",
        ConnectCode::ServerUnavailable => "server unavailable",
        _ => "refused",
    }
}

/// The client id to use: the client's own, or one assigned for an empty id
/// with clean session 1 (MQTT-3.1.3-6); an empty id with clean session 0 is
/// refused (MQTT-3.1.3-8). MQTT 3.1 requires 1 to 23 characters and never
/// assigns one: anything else is refused with CONNACK 2.
fn client_id(connect: &Connect, conn: u64) -> Result<Arc<str>, Violation> {
    match (&*connect.client_id, connect.clean_session, connect.protocol) {
        ("", _, Protocol::V31) => Err(Violation::ClientIdRejected),
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
