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
    /// Authentication on every listener without its own.
    auth: Auth,
    /// Authentication per listener index (`per_listener_settings`).
    listeners: Vec<Auth>,
    acl: Option<Acl>,
}

/// Who may connect: a password file and the anonymous rule.
#[derive(Debug, Default)]
struct Auth {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
}

impl Auth {
    fn load(allow_anonymous: Option<bool>, password_file: Option<&Path>, key: &str) -> Result<Auth, String> {
        let passwords = match password_file {
            Some(path) => Some(PasswordFile::load(path).map_err(|e| file_error(key, path, e))?),
            None => None,
        };
        let allow_anonymous = allow_anonymous.unwrap_or(passwords.is_none());
        Ok(Auth { passwords, allow_anonymous })
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
}

impl Security {
    /// Reads the files the configuration names.
    pub fn load(config: &Config) -> Result<Security, String> {
        let auth = Auth::load(config.allow_anonymous, config.password_file.as_deref(), "password_file")?;
        let listeners = config
            .listener_auth
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let key = format!("password_file of listener {}", i + 1);
                Auth::load(l.allow_anonymous, l.password_file.as_deref(), &key)
            })
            .collect::<Result<_, _>>()?;
        let acl = match &config.acl_file {
            Some(path) => Some(Acl::load(path).map_err(|e| file_error("acl_file", path, e))?),
            None => None,
        };
        Ok(Security { auth, listeners, acl })
    }

    /// The authentication of the listener at `index` in the configuration.
    fn auth(&self, listener: usize) -> &Auth {
        self.listeners.get(listener).unwrap_or(&self.auth)
    }

    /// Checks CONNECT credentials on the listener at index `listener`. This
    /// is slow on purpose (PBKDF2): run it off the executor threads.
    pub fn authenticate(
        &self,
        listener: usize,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectCode> {
        let auth = self.auth(listener);
        match (username, &auth.passwords) {
            (None, _) if auth.allow_anonymous => Ok(()),
            (None, _) => Err(ConnectCode::NotAuthorized),
            (Some(_), None) => Ok(()),
            (Some(user), Some(file)) if file.verify(user, password.unwrap_or_default()) => Ok(()),
            (Some(_), Some(_)) => Err(ConnectCode::BadUsernamePassword),
        }
    }

    /// Whether a password check is needed on the listener (it is the slow part).
    pub fn checks_passwords(&self, listener: usize) -> bool {
        self.auth(listener).passwords.is_some()
    }

    /// Whether the client may publish to `topic`.
    pub fn can_write(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| acl.can_write(client.client_id, client.username, topic))
    }

    /// Whether the client may receive a message on `topic`.
    pub fn can_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| acl.can_read(client_id, username, topic))
    }

    /// Whether the client may subscribe to `filter`.
    pub fn can_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| acl.can_subscribe(client.client_id, client.username, filter))
    }

    /// Whether deliveries need a read check at all.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
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
