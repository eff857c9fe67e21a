//! Who may connect and where they may publish and subscribe: Mosquitto's
//! password and ACL files (reloadable), and the embedder's [`Hooks`] on top.

use crate::auth::{Acl, PasswordFile};
use crate::config::Config;
use crate::packet::{ConnectCode, QoS};
use crate::session::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The file-based rules in force: replaced as a whole on reload.
#[derive(Debug, Default)]
pub struct Security {
    /// The rules on every listener without its own.
    all: Rules,
    /// The rules per listener index (`per_listener_settings`).
    listeners: Vec<Rules>,
}

/// Who may connect (a password file and the anonymous rule) and what they
/// may do (an ACL).
#[derive(Debug, Default)]
struct Rules {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
    acl: Option<Acl>,
}

impl Rules {
    fn load(
        allow_anonymous: Option<bool>,
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
        on: &str,
    ) -> Result<Rules, String> {
        let passwords = match password_file {
            Some(path) => {
                Some(PasswordFile::load(path).map_err(|e| file_error(&format!("password_file{on}"), path, e))?)
            }
            None => None,
        };
        let acl = match acl_file {
            Some(path) => Some(Acl::load(path).map_err(|e| file_error(&format!("acl_file{on}"), path, e))?),
            None => None,
        };
        let allow_anonymous = allow_anonymous.unwrap_or(passwords.is_none());
        Ok(Rules { passwords, allow_anonymous, acl })
    }
}

/// A CONNECT as the hooks see it.
#[derive(Debug)]
pub struct ConnectInfo<'a> {
    /// The client id (possibly assigned by the broker).
    pub client_id: &'a str,
    /// User name from CONNECT, or the TLS certificate identity.
    pub username: Option<&'a str>,
    /// Password from CONNECT.
    pub password: Option<&'a [u8]>,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// A connected client as the hooks see it.
#[derive(Debug)]
pub struct ClientInfo<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The user name the client authenticated with, if any.
    pub username: Option<&'a str>,
    /// The index (in `Config::listeners`) of the listener it connected on.
    pub listener: usize,
}

/// One step of an enhanced authentication exchange (MQTT 5.0, section 4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send the client this Authentication Data (an AUTH packet, reason
    /// 0x18 Continue authentication) and wait for its answer.
    Continue(Vec<u8>),
    /// Authenticated: CONNACK (or, on re-authentication, AUTH 0x00)
    /// carries this Authentication Data, if any.
    Success(Option<Vec<u8>>),
    /// Refused: CONNACK 0x87 Not authorized (on re-authentication,
    /// DISCONNECT 0x87).
    Fail,
}

/// The state of one enhanced authentication exchange, made by
/// [`Hooks::start_auth`] for a CONNECT or a re-authentication.
pub trait AuthExchange: Send {
    /// The next step, given the Authentication Data the client sent (its
    /// CONNECT's or AUTH's; `None` if it sent none).
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// Decisions an embedding application makes, in place of or on top of the
/// password and ACL files: every hook must allow what the files allow.
/// Hooks run on executor threads: keep them quick, or do slow work (a
/// database lookup) on a thread pool of your own.
pub trait Hooks: Send + Sync + 'static {
    /// Accepts or refuses a CONNECT: `Ok(())`, or the CONNACK code to refuse
    /// with (`BadUsernamePassword` = 4, `NotAuthorized` = 5, ...).
    fn authenticate(&self, connect: &ConnectInfo<'_>) -> Result<(), ConnectCode> {
        let _ = connect;
        Ok(())
    }

    /// Whether the client may publish to `topic` (a refused PUBLISH is
    /// acknowledged but not delivered).
    fn authorize_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }

    /// Whether the client may subscribe to `filter` at `qos` (a refused
    /// filter gets 0x80 in SUBACK).
    fn authorize_subscribe(&self, client: &ClientInfo<'_>, filter: &str, qos: QoS) -> bool {
        let _ = (client, filter, qos);
        true
    }

    /// Sees every message before routing; `false` drops it.
    fn on_message(&self, client: &ClientInfo<'_>, message: &Message) -> bool {
        let _ = (client, message);
        true
    }

    /// Starts an enhanced authentication exchange (MQTT 5.0 AUTH) for a
    /// CONNECT, or a re-authentication, naming Authentication Method
    /// `method`; `None` if the method is not supported (CONNACK 0x8C Bad
    /// authentication method). [`Hooks::authenticate`] still runs after a
    /// successful exchange.
    fn start_auth(&self, method: &str, connect: &ConnectInfo<'_>) -> Option<Box<dyn AuthExchange>> {
        let _ = (method, connect);
        None
    }
}

impl Security {
    /// Reads the files the configuration names.
    pub fn load(config: &Config) -> Result<Security, String> {
        let (password_file, acl_file) = (config.password_file.as_deref(), config.acl_file.as_deref());
        let all = Rules::load(config.allow_anonymous, password_file, acl_file, "")?;
        let listeners = config
            .listener_security
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let on = format!(" of listener {}", i + 1);
                Rules::load(l.allow_anonymous, l.password_file.as_deref(), l.acl_file.as_deref(), &on)
            })
            .collect::<Result<_, _>>()?;
        Ok(Security { all, listeners })
    }

    /// The rules of the listener at `index` in the configuration.
    fn rules(&self, listener: usize) -> &Rules {
        // A bridge's own session in the broker is trusted: no password, no ACL.
        static BRIDGE: Rules = Rules { passwords: None, allow_anonymous: true, acl: None };
        if listener == crate::bridge::BRIDGE_LISTENER {
            return &BRIDGE;
        }
        self.listeners.get(listener).unwrap_or(&self.all)
    }

    /// Checks CONNECT credentials on the listener at index `listener`. This
    /// is slow on purpose (PBKDF2): run it off the executor threads.
    pub fn authenticate(
        &self,
        listener: usize,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectCode> {
        let rules = self.rules(listener);
        match (username, &rules.passwords) {
            (None, _) if rules.allow_anonymous => Ok(()),
            (None, _) => Err(ConnectCode::NotAuthorized),
            (Some(_), None) => Ok(()),
            (Some(user), Some(file)) if file.verify(user, password.unwrap_or_default()) => Ok(()),
            (Some(_), Some(_)) => Err(ConnectCode::BadUsernamePassword),
        }
    }

    /// Whether a password check is needed on the listener (it is the slow part).
    pub fn checks_passwords(&self, listener: usize) -> bool {
        self.rules(listener).passwords.is_some()
    }

    /// Whether the client may publish to `topic`.
    pub fn can_write(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        let acl = self.rules(client.listener).acl.as_ref();
        acl.is_none_or(|acl| acl.can_write(client.client_id, client.username, topic))
    }

    /// Whether the client, last connected on `listener`, may receive a
    /// message on `topic`.
    pub fn can_read(&self, listener: usize, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.rules(listener).acl.as_ref().is_none_or(|acl| acl.can_read(client_id, username, topic))
    }

    /// Whether the client may subscribe to `filter`.
    pub fn can_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        let acl = self.rules(client.listener).acl.as_ref();
        acl.is_none_or(|acl| acl.can_subscribe(client.client_id, client.username, filter))
    }

    /// Whether deliveries need a read check at all (an ACL on any listener).
    pub fn has_acl(&self) -> bool {
        self.all.acl.is_some() || self.listeners.iter().any(|r| r.acl.is_some())
    }
}

fn file_error(key: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{key} {}: {e}", path.display())
}

/// The hooks and file rules in force, as one value to pass around.
#[derive(Clone)]
pub struct Guards {
    /// File-based rules.
    pub files: Arc<Security>,
    /// The embedder's hooks.
    pub hooks: Option<Arc<dyn Hooks>>,
}

impl Guards {
    /// Whether `client` may publish `message` (ACL and hooks).
    pub fn allow_publish(&self, client: &ClientInfo<'_>, message: &Message) -> bool {
        self.files.can_write(client, &message.topic)
            && self
                .hooks
                .as_ref()
                .is_none_or(|h| h.authorize_publish(client, &message.topic) && h.on_message(client, message))
    }

    /// Whether `client` may subscribe to `filter` at `qos`.
    pub fn allow_subscribe(&self, client: &ClientInfo<'_>, filter: &str, qos: QoS) -> bool {
        self.files.can_subscribe(client, filter)
            && self.hooks.as_ref().is_none_or(|h| h.authorize_subscribe(client, filter, qos))
    }
}
