//! CONNECT: client-id rules, session attach or takeover, CONNACK, resend.

use super::{Client, Peer};
use crate::broker::{Attach, Broker};
use crate::error::{Refusal, Violation};
use crate::packet::{Connack, Connect, ConnectCode, Packet, Properties, Protocol, ReasonCode};
use crate::security::ConnectInfo;
use crate::session::ClientLimits;
use crate::signal::Kick;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
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
    kick: Arc<Kick>,
    out: &mut Vec<Packet>,
) -> Client {
    let Admitted { id, username, conn, listener, assigned, auth, peer } = admitted;
    let v5 = connect.protocol == Protocol::V5;
    let props = &connect.properties;
    let how = match v5 {
        false => Attach::v3(listener, username.clone(), connect.clean_session),
        true => Attach {
            listener,
            username: username.clone(),
            clean_start: connect.clean_session,
            // 0 or absent: the session ends with the connection; 0xFFFFFFFF: never.
            expiry: match props.session_expiry.unwrap_or(0) {
                u32::MAX => None,
                n => Some(n),
            },
            client: ClientLimits {
                // Never 0: the codec refuses that CONNECT (a Protocol Error, 3.1.2.11.3).
                receive_maximum: props.receive_maximum.and_then(std::num::NonZeroU16::new),
                maximum_packet_size: props.maximum_packet_size,
                v5: true,
            },
        },
    };
    let session_expiry = how.expiry;
    let attachment = broker.attach_with(&id, how, conn, kick);
    // The cluster keeps a copy of the will: another node fires it if this
    // one dies (a will the ACL refuses now is not kept). The CONNACK waits
    // for it: once connected, the will is there.
    let mut will_kept = None;
    if let (Some(peers), Some(will)) = (broker.peers(), &connect.will)
        && listener != crate::bridge::BRIDGE_LISTENER
    {
        let message = super::will_message(will);
        let who = crate::security::ClientInfo { client_id: &id, username: username.as_deref(), listener };
        if !message.topic.starts_with("$SYS") && broker.guards().allow_publish(&who, &message) {
            let delay = super::will_delay(broker, will, session_expiry);
            will_kept = peers.keep_will(conn, &id, Some((&message, will.retain, delay)));
        }
    }
    // MQTT 3.1 has no Session Present flag: that byte is reserved there.
    let session_present = attachment.session_present && connect.protocol != Protocol::V31;
    let config = broker.config();
    let keep_alive = server_keep_alive(broker, &connect, listener);
    // A bridge relays what its remote sends, under the remote's own window.
    let receive_maximum = match listener == crate::bridge::BRIDGE_LISTENER {
        true => u16::MAX,
        false => u16::try_from(config.max_inflight).unwrap_or(u16::MAX).max(1),
    };
    let properties = match v5 {
        false => Properties::default(),
        true => Properties {
            receive_maximum: (receive_maximum != u16::MAX).then_some(receive_maximum),
            topic_alias_maximum: (config.max_topic_alias > 0).then_some(config.max_topic_alias),
            maximum_packet_size: u32::try_from(config.max_packet_size).ok().filter(|&m| m < MAX_PACKET),
            retain_available: (!config.retain_available).then_some(false),
            assigned_client_id: assigned.then(|| id.clone()),
            server_keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
            response_info: match (props.request_response_info, &config.response_information) {
                (Some(true), Some(prefix)) => Some(prefix.as_str().into()),
                _ => None,
            },
            auth_method: auth.as_ref().map(|a| a.method.clone()),
            auth_data: auth.as_ref().and_then(|a| a.data.clone()),
            ..Properties::default()
        },
    };
    out.push(Packet::Connack(Box::new(Connack { session_present, reason: ReasonCode::SUCCESS, properties })));
    let max_alias = if v5 { usize::from(config.max_topic_alias) } else { 0 };
    let client = Client {
        username,
        conn,
        // An index into the listeners (or BRIDGE_LISTENER, 65535): it fits.
        listener: listener as u32,
        session: attachment.session,
        will: connect.will.map(Box::new),
        keep_alive,
        protocol: connect.protocol,
        session_expiry,
        v5: v5.then(|| {
            Box::new(super::V5State {
                aliases: Mutex::new(vec![None; max_alias]),
                auth_method: auth.map(|a| a.method),
                reauth: Mutex::new(None),
                receive_maximum,
            })
        }),
        peer,
        ticket: AtomicU64::new(attachment.ticket.0),
        noted: Mutex::new(None),
    };
    client.with_session(|s| s.resend(out));
    // The CONNACK waits for the cluster's copy of the will, as it waits for
    // the store (see connection::durable).
    if let Some(kept) = will_kept {
        client.wait_for_forward(kept);
    }
    client
}

/// The largest packet MQTT can express: a Maximum Packet Size at or above
/// it is not announced.
const MAX_PACKET: u32 = 268_435_460;

/// The keepalive in force: the client's, or for a 5.0 client asking none or
/// more than `max_keepalive`, that maximum (sent as Server Keep Alive,
/// MQTT-3.2.2-21; a 3.1.1 client is refused instead, see [`admit`]).
fn server_keep_alive(broker: &Broker, connect: &Connect, listener: usize) -> u16 {
    match broker.config().max_keepalive {
        // A bridge's own connection over its pipe needs no keepalive.
        _ if listener == crate::bridge::BRIDGE_LISTENER => connect.keep_alive,
        Some(max) if connect.protocol == Protocol::V5 && (connect.keep_alive == 0 || connect.keep_alive > max) => max,
        _ => connect.keep_alive,
    }
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
    /// The broker assigned the client id (the client sent an empty one).
    pub assigned: bool,
    /// Its enhanced authentication (5.0), if it used one.
    pub auth: Option<super::Authenticated>,
    /// Its address.
    pub peer: std::net::SocketAddr,
}

/// The checks on a CONNECT before its credentials: client id rules and the
/// broker's limits. Returns the client id to use.
pub fn admit(broker: &Broker, connect: &Connect, conn: u64) -> Result<Arc<str>, Refusal> {
    let id = client_id(connect, conn).map_err(Refusal::Violation)?;
    if let Some(will) = &connect.will {
        super::check_depth(broker, &will.topic).map_err(Refusal::Violation)?;
        super::check_retain(broker, will.retain).map_err(Refusal::Violation)?;
        // A will whose payload is not what its Payload Format Indicator
        // says is refused with 0x99 (3.1.3.2.3).
        if will.properties.as_ref().is_some_and(|p| p.payload_format_utf8 == Some(true))
            && std::str::from_utf8(&will.payload).is_err()
        {
            return Err(Refusal::Violation(Violation::V5(
                ReasonCode::PAYLOAD_FORMAT_INVALID,
                "3.1.3.2.3",
                "will payload is not UTF-8 although its payload format indicator says so",
            )));
        }
    }
    if let Some(max) = broker.config().max_keepalive
        && connect.protocol != Protocol::V5
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
    if peer.listener == crate::bridge::BRIDGE_LISTENER {
        return Ok(None);
    }
    // A cluster node cut off from Redis serves no one: the client is to
    // use another node (a bridge's own client above is this node's).
    if broker.peers().is_some_and(|p| !p.serving()) {
        let why = "this cluster node lost Redis: use another node".into();
        return Err(Refusal::Policy(ConnectCode::ServerUnavailable, why));
    }
    // A bridge's own session is the bridge's: a client taking it over would
    // discard or read what waits for the remote.
    if let Some(b) = broker.config().bridge_of_session(id) {
        let why = format!("client id {id:?} is the session of bridge {}", b.name);
        return Err(Refusal::Policy(ConnectCode::IdentifierRejected, why));
    }
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
        // 5.0 assigns one whatever Clean Start says (MQTT-3.1.3-6/-7).
        ("", false, Protocol::V311) => Err(Violation::EmptyClientIdPersistent),
        ("", _, _) => Ok(format!("auto-{:08x}-{conn}", process_nonce()).into()),
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
