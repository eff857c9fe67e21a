//! Authentication, authorization and limits: Mosquitto's password and ACL
//! files, the embedder's hooks, max_keepalive, max_connections, reloads.

use crate::support::client::Raw;
use crate::support::packets::{self, CONNACK_ACCEPTED, Connect, PUBACK, ack};
use crate::support::{TempDir, TestBroker};
use midge::auth::PasswordFile;
use midge::packet::{ConnectCode, QoS};
use midge::security::{ClientInfo, ConnectInfo, Hooks};
use midge::session::Message;
use std::path::PathBuf;
use std::sync::Arc;

fn connack(code: u8) -> [u8; 4] {
    [0x20, 0x02, 0x00, code]
}

/// A password file with alice/wonderland and bob/builder, made with the
/// same code `midge passwd` uses.
pub(crate) fn password_file(dir: &TempDir) -> PathBuf {
    let mut file = PasswordFile::default();
    file.set("alice", b"wonderland").unwrap();
    file.set("bob", b"builder").unwrap();
    let path = dir.0.join("passwd");
    std::fs::write(&path, file.to_file_string()).unwrap();
    path
}

fn login(b: &TestBroker, id: &str, user: Option<&str>, password: Option<&[u8]>) -> Raw {
    let mut c = b.raw();
    c.send(&Connect { client_id: id, username: user, password, ..Connect::default() }.bytes());
    c
}

const ACL: &str = "\
user alice
topic readwrite alice/#
topic deny alice/secret
topic read shared/#

user bob
topic write alice/inbox
topic readwrite bob/#
";

runtime_kind_test!(
    /// With a password file: right credentials get CONNACK 0, a wrong
    /// password or unknown user CONNACK 4, no user name CONNACK 5 (anonymous
    /// access is off once a password file is configured).
    password_file_authenticates,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("passwd");
        let path = password_file(&dir);
        let b = TestBroker::start(kind, |c| c.password_file = Some(path));
        let mut ok = login(&b, "a", Some("alice"), Some(b"wonderland"));
        ok.expect(&CONNACK_ACCEPTED);
        for (user, password) in [("alice", &b"wrong"[..]), ("mallory", b"wonderland")] {
            let mut c = login(&b, "x", Some(user), Some(password));
            c.expect(&connack(4));
            c.expect_closed();
        }
        let mut anonymous = login(&b, "anon", None, None);
        anonymous.expect(&connack(5));
        anonymous.expect_closed();
        ok.ping();
    }
);

runtime_kind_test!(
    /// `allow_anonymous = true` lets clients without a user name in while
    /// still checking the passwords of those who give one.
    allow_anonymous_with_password_file,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("anon");
        let path = password_file(&dir);
        let b = TestBroker::start(kind, |c| {
            c.password_file = Some(path);
            c.allow_anonymous = Some(true);
        });
        login(&b, "anon", None, None).expect(&CONNACK_ACCEPTED);
        login(&b, "bad", Some("bob"), Some(b"nope")).expect(&connack(4));
    }
);

runtime_kind_test!(
    /// The ACL file: a filter no read rule covers gets 0x80 in SUBACK; a
    /// denied PUBLISH is acknowledged but not delivered; a subscription never
    /// receives a topic its client may not read.
    acl_file_authorizes,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("acl");
        let (passwords, acl) = (password_file(&dir), dir.0.join("acl"));
        std::fs::write(&acl, ACL).unwrap();
        let b = TestBroker::start(kind, |c| {
            c.password_file = Some(passwords);
            c.acl_file = Some(acl);
        });
        let mut alice = login(&b, "alice-1", Some("alice"), Some(b"wonderland"));
        alice.expect(&CONNACK_ACCEPTED);
        alice.send(&packets::subscribe(1, &[("alice/#", 1), ("#", 0), ("bob/#", 0)]));
        alice.expect(&packets::suback(1, &[1, 0x80, 0x80]));
        let mut bob = login(&b, "bob-1", Some("bob"), Some(b"builder"));
        bob.expect(&CONNACK_ACCEPTED);
        bob.send(&packets::publish("alice/secret", b"no", 1, 1));
        bob.expect(&ack(PUBACK, 1));
        bob.send(&packets::publish("alice/other", b"not allowed to write", 1, 2));
        bob.expect(&ack(PUBACK, 2));
        bob.send(&packets::publish("alice/inbox", b"hello", 1, 3));
        bob.expect(&ack(PUBACK, 3));
        let got = alice.recv();
        assert_eq!(got.publish().0, "alice/inbox");
        alice.send(&ack(PUBACK, got.publish().1.unwrap()));
        alice.send(&packets::publish("alice/secret", b"mine", 1, 9));
        alice.expect(&ack(PUBACK, 9));
        alice.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// SIGHUP's reload: a changed ACL takes effect; an ACL that fails to
    /// parse keeps the old one in force.
    acl_reload_keeps_old_rules_on_error,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("reload");
        let (passwords, acl) = (password_file(&dir), dir.0.join("acl"));
        std::fs::write(&acl, ACL).unwrap();
        let acl_path = acl.clone();
        let b = TestBroker::start(kind, |c| {
            c.password_file = Some(passwords);
            c.acl_file = Some(acl_path);
        });
        let subscribe_bob = |b: &TestBroker, expected: u8| {
            let mut alice = login(b, "alice-r", Some("alice"), Some(b"wonderland"));
            alice.expect(&CONNACK_ACCEPTED);
            alice.send(&packets::subscribe(1, &[("bob/news", 0)]));
            alice.expect(&packets::suback(1, &[expected]));
        };
        subscribe_bob(&b, 0x80);
        std::fs::write(&acl, format!("{ACL}\nuser alice\ntopic read bob/#\n")).unwrap();
        b.broker.reload_security().unwrap();
        subscribe_bob(&b, 0);
        std::fs::write(&acl, "topci read typo\n").unwrap();
        let error = b.broker.reload_security().unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        subscribe_bob(&b, 0);
    }
);

runtime_test!(
    /// max_keepalive: a 3.1.1 client asking for a longer keepalive, or for
    /// none, is refused with CONNACK 2, as Mosquitto does.
    max_keepalive_refuses_longer_or_no_keepalive,
    |c: &mut midge::Config| c.max_keepalive = Some(60),
    |b: &TestBroker| {
        for keep_alive in [0, 61] {
            let mut c = b.raw();
            c.send(&packets::connect("k", true, keep_alive));
            c.expect(&connack(2));
            c.expect_closed();
        }
        let mut c = b.raw();
        c.send(&packets::connect("k", true, 60));
        c.expect(&CONNACK_ACCEPTED);
    }
);

runtime_test!(
    /// max_connections: a connection over the limit is closed at once; a slot
    /// frees when a client leaves.
    max_connections_closes_extra_connections,
    |c: &mut midge::Config| c.max_connections = Some(2),
    |b: &TestBroker| {
        let first = b.client("one");
        let mut second = b.client("two");
        let mut third = b.raw();
        third.expect_closed();
        drop(first);
        second.ping();
        // The freed slot shows up once the server notices the close: retry, bounded.
        let retry = (0..1000).find_map(|_| {
            let mut c = b.raw();
            c.send(&packets::connect("three", true, 60));
            c.try_recv().ok().map(|_| c)
        });
        retry.expect("a slot freed after a client left").ping();
    }
);

/// Hooks of an embedding application: refuse user "eve", drop messages on
/// `drop/#`, refuse subscriptions to `private/#`.
pub(crate) struct AppHooks;

impl Hooks for AppHooks {
    fn authenticate(&self, connect: &ConnectInfo<'_>) -> Result<(), ConnectCode> {
        match connect.username {
            Some("eve") => Err(ConnectCode::NotAuthorized),
            _ => Ok(()),
        }
    }

    fn authorize_subscribe(&self, _: &ClientInfo<'_>, filter: &str, _: QoS) -> bool {
        !filter.starts_with("private")
    }

    fn on_message(&self, _: &ClientInfo<'_>, message: &Message) -> bool {
        !message.topic.starts_with("drop/")
    }
}

runtime_test!(
    /// Hooks decide on top of the files: CONNECT refused with the hook's
    /// code, a subscription refused with 0x80, a message dropped before routing.
    hooks_authenticate_authorize_and_filter,
    |b: &TestBroker| {
        b.broker.set_hooks(Arc::new(AppHooks));
        let mut eve = login(b, "eve-1", Some("eve"), Some(b"x"));
        eve.expect(&connack(5));
        eve.expect_closed();
        let mut c = b.client("app");
        c.send(&packets::subscribe(1, &[("private/#", 0), ("#", 0)]));
        c.expect(&packets::suback(1, &[0x80, 0]));
        let mut p = b.client("pub");
        p.send(&packets::publish0("drop/x", b"dropped"));
        p.send(&packets::publish0("keep/x", b"kept"));
        assert_eq!(c.recv().publish().0, "keep/x");
    }
);

runtime_kind_test!(
    /// A password file made by Debian's `mosquitto_passwd` is read unchanged:
    /// the right password gets CONNACK 0, a wrong one CONNACK 4.
    mosquitto_passwd_file_is_accepted_unchanged,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("mosquitto-passwd");
        let path = dir.0.join("passwd");
        let made = std::process::Command::new("mosquitto_passwd")
            .args(["-c", "-b", path.to_str().unwrap(), "carol", "s3cret"])
            .status()
            .expect("mosquitto_passwd (apt-get install mosquitto) makes the file");
        assert!(made.success());
        let b = TestBroker::start(kind, |c| c.password_file = Some(path));
        login(&b, "c1", Some("carol"), Some(b"s3cret")).expect(&CONNACK_ACCEPTED);
        let mut bad = login(&b, "c2", Some("carol"), Some(b"guess"));
        bad.expect(&connack(4));
        bad.expect_closed();
    }
);

runtime_kind_test!(
    /// ACL `pattern` rules with `%c` and `%u`: each client may publish only
    /// under its own client id and read only under its own user name, for
    /// PUBLISH and SUBSCRIBE alike.
    acl_patterns_substitute_client_id_and_username,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("acl-pattern");
        let (passwords, acl) = (password_file(&dir), dir.0.join("acl"));
        std::fs::write(&acl, "pattern write devices/%c/#\npattern read users/%u/#\nuser bob\ntopic read devices/#\n").unwrap();
        let b = TestBroker::start(kind, |c| {
            c.password_file = Some(passwords);
            c.acl_file = Some(acl);
        });
        let mut alice = login(&b, "alice-phone", Some("alice"), Some(b"wonderland"));
        alice.expect(&CONNACK_ACCEPTED);
        alice.send(&packets::subscribe(1, &[("users/alice/#", 0), ("users/bob/#", 0)]));
        alice.expect(&packets::suback(1, &[0, 0x80]));
        let mut bob = login(&b, "bob-laptop", Some("bob"), Some(b"builder"));
        bob.expect(&CONNACK_ACCEPTED);
        bob.send(&packets::subscribe(1, &[("devices/#", 0)]));
        bob.expect(&packets::suback(1, &[0]));
        alice.send(&packets::publish0("devices/someone-else/state", b"denied"));
        alice.send(&packets::publish0("devices/alice-phone/state", b"allowed"));
        alice.ping();
        let got = bob.recv();
        assert_eq!((got.publish().0.as_str(), got.publish().2.as_slice()), ("devices/alice-phone/state", &b"allowed"[..]));
        bob.expect_nothing_queued();
    }
);

runtime_test!(
    /// max_publish_rate: a client over its rate is slowed down (midge stops
    /// reading from it), not disconnected: 60 PUBLISH at 20/s, with one
    /// second's burst, take at least two seconds to be answered.
    max_publish_rate_slows_a_fast_publisher,
    |c: &mut midge::Config| c.max_publish_rate = Some(20),
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("rate", 0)]);
        let mut fast = b.client("fast");
        let start = std::time::Instant::now();
        for i in 0..60u8 {
            fast.send(&packets::publish0("rate", &[i]));
        }
        fast.ping();
        let took = start.elapsed();
        assert!(took >= std::time::Duration::from_millis(1900), "60 publishes at 20/s answered after {took:?}");
        for i in 0..60u8 {
            assert_eq!(sub.recv().publish().2, [i], "nothing is dropped");
        }
    }
);
