//! MQTT over TLS (rustls): Debian's mosquitto clients against a TLS listener,
//! with server-only TLS and with client certificates used as user names.

use crate::support::TestBroker;
use crate::support::process::{Process, run};
use midge::config::{Listener, TlsFiles};
use std::path::PathBuf;

fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/").to_owned() + name
}

fn tls_listener(client_certificates: bool) -> impl FnOnce(&mut midge::Config) {
    move |c| {
        let tls = TlsFiles {
            certfile: PathBuf::from(fixture("server.pem")),
            keyfile: PathBuf::from(fixture("server.key")),
            cafile: client_certificates.then(|| PathBuf::from(fixture("ca.pem"))),
            require_certificate: client_certificates,
            use_identity_as_username: client_certificates,
        };
        c.listeners = vec![Listener { tls: Some(tls), ..Listener::tcp("127.0.0.1:0".parse().unwrap()) }];
    }
}

/// mosquitto_sub then mosquitto_pub with `tls_args`, one message on `topic`.
fn round_trip(b: &TestBroker, tls_args: &[&str], topic: &str) {
    let port = b.addr.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "-t", topic, "-q", "1"];
    let mut sub_args: Vec<&str> = base.to_vec();
    sub_args.extend(["-C", "1", "-W", "20", "-d"]);
    sub_args.extend(tls_args);
    let mut sub = Process::mosquitto_sub(&sub_args);
    sub.wait_for("Subscribed (mid");
    let mut pub_args: Vec<&str> = base.to_vec();
    pub_args.extend(["-m", "over tls"]);
    pub_args.extend(tls_args);
    assert_eq!(run("mosquitto_pub", &pub_args), Some(0));
    sub.wait_for("over tls");
    assert_eq!(sub.wait_exit(), Some(0));
}

runtime_test!(
    /// A TLS listener serves mosquitto clients that trust its CA.
    tls_listener_serves_mosquitto_clients,
    tls_listener(false),
    |b: &TestBroker| round_trip(b, &["--cafile", &fixture("ca.pem")], "secure/t")
);

runtime_test!(
    /// Mutual TLS: a client certificate is required, and its Common Name
    /// ("alice") is the user name the ACL sees; a client without a
    /// certificate fails the handshake.
    mutual_tls_uses_the_certificate_identity,
    |c: &mut midge::Config| {
        tls_listener(true)(c);
        // Each runtime's test gets its own file: they run at the same time.
        let acl = crate::support::TempDir::new("tls-acl");
        let path = acl.0.join("acl");
        std::fs::write(&path, "user alice\ntopic readwrite alice/#\n").unwrap();
        std::mem::forget(acl); // the broker reads it at start and on reload
        c.acl_file = Some(path);
    },
    |b: &TestBroker| {
        let (ca, cert, key) = (fixture("ca.pem"), fixture("client.pem"), fixture("client.key"));
        round_trip(b, &["--cafile", &ca, "--cert", &cert, "--key", &key], "alice/t");
        let port = b.addr.port().to_string();
        let refused = run("mosquitto_pub", &["-h", "127.0.0.1", "-p", &port, "--cafile", &ca, "-t", "alice/t", "-m", "x"]);
        assert_ne!(refused, Some(0), "a client without a certificate must fail");
    }
);
