//! `midge -c mosquitto.conf`: Debian's file and the annotated example,
//! `midge check-config`, bad input, and agreement with the Mosquitto binary
//! run on the same file (same listeners answer, same clients refused, same
//! messages delivered). Also `retain_available` and `message_size_limit`.

use crate::support::client::Raw;
use crate::support::packets::{self, CONNACK_ACCEPTED, Connect, PUBACK, ack};
use crate::support::process::{LINE_TIMEOUT, Process, run};
use crate::support::{TempDir, TestBroker, free_port};
use midge::RuntimeKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIDGE: &str = env!("CARGO_BIN_EXE_midge");
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const DEBIAN_CONF: &str = "/etc/mosquitto/mosquitto.conf";
const EXAMPLE_CONF: &str = "/usr/share/doc/mosquitto/examples/mosquitto.conf";

/// Runs `midge ARGS` to completion: exit code, stdout, stderr.
fn midge(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(MIDGE).args(args).stdin(Stdio::null()).output().expect("run midge");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn mosquitto_installed() {
    assert!(
        Path::new(MOSQUITTO).exists() && Path::new(DEBIAN_CONF).exists(),
        "{MOSQUITTO} and {DEBIAN_CONF} are needed: apt-get install mosquitto (.ci/run installs it)"
    );
}

/// The CONNACK return code a CONNECT gets (`None`: closed without one).
fn connack_code(addr: SocketAddr, connect: &Connect<'_>) -> (Raw, Option<u8>) {
    let mut raw = Raw::connect(addr);
    raw.send(&connect.bytes());
    let code = raw.try_recv().ok().filter(|p| p.header == 0x20).and_then(|p| p.body.get(1).copied());
    (raw, code)
}

fn anonymous(id: &str) -> Connect<'_> {
    Connect { client_id: id, ..Connect::default() }
}

/// Starts midge on `file` and waits until its `listeners` listen; its
/// lines are read from stdout (the files say `log_dest stdout`).
fn start_midge(kind: RuntimeKind, file: &Path, listeners: usize) -> (Process, Vec<SocketAddr>) {
    let args = ["-c", file.to_str().unwrap(), "--runtime", kind.name(), "--threads", "2"];
    let mut p = Process::spawn(MIDGE, &args);
    let addrs = (0..listeners).map(|_| listening(&p.wait_for("listening on "))).collect();
    (p, addrs)
}

fn listening(line: &str) -> SocketAddr {
    line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// Starts Mosquitto on `file` and waits for "running" (every listener is open by then).
fn start_mosquitto(file: &Path) -> Process {
    mosquitto_installed();
    // Line-buffered: Mosquitto fully buffers a pipe otherwise (stdbuf
    // execs it, so the process killed on drop is Mosquitto itself).
    let mut p = Process::spawn("stdbuf", &["-oL", MOSQUITTO, "-c", file.to_str().unwrap()]);
    p.wait_for("running");
    p
}

/// Both brokers on the same configuration `template` (`{port0}`, `{port1}`
/// replaced by free ports, different for each broker): midge's listener
/// addresses and Mosquitto's, in the template's port order, and the guards.
struct Both {
    midge: Vec<SocketAddr>,
    mosquitto: Vec<SocketAddr>,
    _processes: (Process, Process),
}

impl Both {
    fn start(kind: RuntimeKind, dir: &TempDir, template: &str) -> Both {
        let ports = template.matches("{port").count();
        let write = |name: &str| {
            let chosen: Vec<u16> = (0..ports).map(|_| free_port()).collect();
            let mut text = format!("log_dest stdout\n{template}");
            for (i, port) in chosen.iter().enumerate() {
                text = text.replace(&format!("{{port{i}}}"), &port.to_string());
            }
            let path = dir.0.join(name);
            std::fs::write(&path, text).unwrap();
            (path, chosen)
        };
        let (mosquitto_file, mosquitto_ports) = write("mosquitto.conf");
        let (midge_file, midge_ports) = write("midge.conf");
        let mosquitto = start_mosquitto(&mosquitto_file);
        let (midge, bound) = start_midge(kind, &midge_file, ports);
        let local = |ports: &[u16]| ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect::<Vec<_>>();
        let mut sorted_bound: Vec<u16> = bound.iter().map(SocketAddr::port).collect();
        sorted_bound.sort();
        let mut expected = midge_ports.clone();
        expected.sort();
        assert_eq!(sorted_bound, expected, "midge listens on the file's ports");
        Both { midge: local(&midge_ports), mosquitto: local(&mosquitto_ports), _processes: (midge, mosquitto) }
    }

    /// Runs `check` against each broker and asserts both give the same answer.
    fn agree<T: PartialEq + std::fmt::Debug>(&self, what: &str, check: impl Fn(&[SocketAddr]) -> T) -> T {
        let from_mosquitto = check(&self.mosquitto);
        let from_midge = check(&self.midge);
        assert_eq!(from_midge, from_mosquitto, "{what}: midge and Mosquitto differ");
        from_midge
    }
}

/// A password file with alice/wonderland, written by `midge passwd`.
fn password_file(dir: &TempDir) -> PathBuf {
    let path = dir.0.join("passwd");
    let mut child = Command::new(MIDGE)
        .args(["passwd", path.to_str().unwrap(), "alice"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"wonderland\n").unwrap();
    assert!(child.wait().unwrap().success());
    path
}

runtime_kind_test!(
    /// A listener without `allow_anonymous`: both refuse an anonymous
    /// client with CONNACK 5 (Mosquitto 2.0's default); with
    /// `allow_anonymous true` both accept it.
    agreement_anonymous_refused_then_allowed,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-anon");
        let both = Both::start(kind, &dir, "listener {port0} 127.0.0.1\n");
        both.agree("anonymous, no allow_anonymous", |a| connack_code(a[0], &anonymous("c1")).1);
        assert_eq!(connack_code(both.midge[0], &anonymous("c1")).1, Some(5));
        drop(both);
        let both = Both::start(kind, &dir, "listener {port0} 127.0.0.1\nallow_anonymous true\n");
        assert_eq!(both.agree("anonymous allowed", |a| connack_code(a[0], &anonymous("c1")).1), Some(0));
    }
);

runtime_kind_test!(
    /// A password file made with `midge passwd`: both accept the right
    /// password and refuse a wrong one and an anonymous client. (Mosquitto
    /// 2.0 answers a wrong password with CONNACK 5, midge with 4, the
    /// spec's "bad user name or password"; both refuse.)
    agreement_password_file,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-passwd");
        let passwd = password_file(&dir);
        let conf = format!("listener {{port0}} 127.0.0.1\npassword_file {}\n", passwd.display());
        let both = Both::start(kind, &dir, &conf);
        let user = |password: &'static [u8]| Connect {
            client_id: "p1",
            username: Some("alice"),
            password: Some(password),
            ..Connect::default()
        };
        assert_eq!(both.agree("right password", |a| connack_code(a[0], &user(b"wonderland")).1), Some(0));
        let refused = both.agree("wrong password", |a| connack_code(a[0], &user(b"nope")).1.is_some_and(|c| c != 0));
        assert!(refused);
        assert_eq!(both.agree("anonymous", |a| connack_code(a[0], &anonymous("p2")).1), Some(5));
    }
);

runtime_kind_test!(
    /// An ACL: bob may read `a/#` but not write; alice may read and write.
    /// Bob's PUBLISH to a/x is acknowledged and not delivered, alice's to
    /// a/y is, on both brokers.
    agreement_acl,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-acl");
        let acl = dir.0.join("acl");
        std::fs::write(&acl, "user alice\ntopic readwrite a/#\n\nuser bob\ntopic read a/#\n").unwrap();
        let conf = format!("listener {{port0}} 127.0.0.1\nallow_anonymous true\nacl_file {}\n", acl.display());
        let both = Both::start(kind, &dir, &conf);
        let delivered = both.agree("ACL deliveries", |a| {
            let login = |id: &'static str, user: &'static str| {
                let (raw, code) = connack_code(a[0], &Connect { client_id: id, username: Some(user), ..Connect::default() });
                assert_eq!(code, Some(0));
                raw
            };
            let mut sub = login("sub", "bob");
            sub.subscribe(1, &[("a/#", 0)]);
            let mut bob = login("bob-pub", "bob");
            bob.send(&packets::publish("a/x", b"from bob", 1, 1));
            bob.expect(&ack(PUBACK, 1));
            let mut alice = login("alice-pub", "alice");
            alice.send(&packets::publish("a/y", b"from alice", 1, 1));
            alice.expect(&ack(PUBACK, 1));
            let (topic, _, payload) = sub.recv().publish();
            (topic, payload)
        });
        assert_eq!(delivered, ("a/y".to_owned(), b"from alice".to_vec()));
    }
);

runtime_kind_test!(
    /// Two listeners with `per_listener_settings true`: anonymous clients
    /// allowed on the first, a password file on the second. On both
    /// brokers an anonymous client gets CONNACK 0 on the first and 5 on
    /// the second, alice gets 0 on the second, and a message crosses from
    /// one listener to the other.
    agreement_two_listeners_per_listener_settings,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-two");
        let passwd = password_file(&dir);
        let conf = format!(
            "per_listener_settings true\nlistener {{port0}} 127.0.0.1\nallow_anonymous true\n\
             listener {{port1}} 127.0.0.1\npassword_file {}\n",
            passwd.display()
        );
        let both = Both::start(kind, &dir, &conf);
        let got = both.agree("two listeners", |a| {
            let (mut sub, open) = connack_code(a[0], &anonymous("s"));
            sub.subscribe(1, &[("t", 1)]);
            let (_, anonymous_on_second) = connack_code(a[1], &anonymous("x"));
            let alice = Connect {
                client_id: "p",
                username: Some("alice"),
                password: Some(b"wonderland"),
                ..Connect::default()
            };
            let (mut publisher, alice_on_second) = connack_code(a[1], &alice);
            publisher.send(&packets::publish("t", b"across", 1, 7));
            publisher.expect(&ack(PUBACK, 7));
            (open, anonymous_on_second, alice_on_second, sub.recv().publish().2)
        });
        assert_eq!(got, (Some(0), Some(5), Some(0), b"across".to_vec()));
    }
);

runtime_kind_test!(
    /// `per_listener_settings true` with an ACL on the first listener only
    /// (anonymous clients may read `t/#`, not write): on both brokers a
    /// PUBLISH from the first listener is acknowledged and not delivered,
    /// one from the second (no ACL) is, to a subscriber on the first.
    agreement_per_listener_acl,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-acl-listener");
        let acl = dir.0.join("acl");
        std::fs::write(&acl, "topic read t/#\n").unwrap();
        let conf = format!(
            "per_listener_settings true\nlistener {{port0}} 127.0.0.1\nallow_anonymous true\nacl_file {}\n\
             listener {{port1}} 127.0.0.1\nallow_anonymous true\n",
            acl.display()
        );
        let both = Both::start(kind, &dir, &conf);
        let got = both.agree("per-listener ACL", |a| {
            let (mut sub, _) = connack_code(a[0], &anonymous("s0"));
            sub.subscribe(1, &[("t/#", 0)]);
            let (mut first, _) = connack_code(a[0], &anonymous("p0"));
            first.send(&packets::publish("t/first", b"denied", 1, 1));
            first.expect(&ack(PUBACK, 1));
            let (mut second, _) = connack_code(a[1], &anonymous("p1"));
            second.send(&packets::publish("t/second", b"allowed", 1, 1));
            second.expect(&ack(PUBACK, 1));
            sub.recv().publish().0
        });
        assert_eq!(got, "t/second");
    }
);

fn tls_fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/").to_owned() + name
}

runtime_kind_test!(
    /// A TLS listener with `require_certificate` and
    /// `use_identity_as_username` and an ACL for the certificate's Common
    /// Name (alice): on both brokers mosquitto_sub and mosquitto_pub with
    /// alice's certificate make a round trip on alice/t, and a client
    /// without a certificate is refused.
    agreement_tls_client_certificates,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-tls");
        let acl = dir.0.join("acl");
        std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").unwrap();
        let conf = format!(
            "listener {{port0}} 127.0.0.1\ncertfile {}\nkeyfile {}\ncafile {}\nrequire_certificate true\n\
             use_identity_as_username true\ntls_version tlsv1.2\nacl_file {}\n",
            tls_fixture("server.pem"),
            tls_fixture("server.key"),
            tls_fixture("ca.pem"),
            acl.display()
        );
        let both = Both::start(kind, &dir, &conf);
        let (ca, cert, key) = (tls_fixture("ca.pem"), tls_fixture("client.pem"), tls_fixture("client.key"));
        let got = both.agree("TLS with client certificates", |a| {
            let port = a[0].port().to_string();
            let tls = ["-h", "127.0.0.1", "-p", &port, "--cafile", &ca, "-t", "alice/t", "-q", "1"];
            let with_cert = [&tls[..], &["--cert", &cert, "--key", &key]].concat();
            let mut sub = Process::mosquitto_sub(&[&with_cert[..], &["-C", "1", "-W", "20", "-d"]].concat());
            sub.wait_for("Subscribed (mid");
            let published = run("mosquitto_pub", &[&with_cert[..], &["-m", "over tls"]].concat());
            sub.wait_for("over tls");
            let refused = run("mosquitto_pub", &[&tls[..], &["-m", "no cert"]].concat());
            (published, sub.wait_exit(), refused != Some(0))
        });
        assert_eq!(got, (Some(0), Some(0), true));
    }
);

runtime_kind_test!(
    /// `retain_available false` and `message_size_limit 5`, on both: a
    /// retained PUBLISH closes the 3.1.1 client; a 6-byte payload is
    /// acknowledged and dropped, a 5-byte one delivered.
    agreement_retain_available_and_message_size_limit,
    |kind: RuntimeKind| {
        let dir = TempDir::new("agree-retain");
        let conf = "listener {port0} 127.0.0.1\nallow_anonymous true\nretain_available false\nmessage_size_limit 5\n";
        let both = Both::start(kind, &dir, conf);
        let got = both.agree("retain and size", |a| {
            let (mut sub, _) = connack_code(a[0], &anonymous("s"));
            sub.subscribe(1, &[("t", 1)]);
            let (mut publisher, _) = connack_code(a[0], &anonymous("p"));
            publisher.send(&packets::publish("t", b"123456", 1, 1));
            publisher.expect(&ack(PUBACK, 1));
            publisher.send(&packets::publish("t", b"12345", 1, 2));
            publisher.expect(&ack(PUBACK, 2));
            let delivered = sub.recv().publish().2;
            let (mut retainer, _) = connack_code(a[0], &anonymous("r"));
            retainer.send(&packets::publish_with("t", b"kept", 1, Some(3), true, false));
            let closed = retainer.try_recv().is_err();
            (delivered, closed)
        });
        assert_eq!(got, (b"12345".to_vec(), true));
    }
);

/// Debian's shipped file and the annotated example both pass
/// `midge check-config`, as they are; so does midge's example TOML.
#[test]
fn check_config_accepts_debians_file_and_the_annotated_example() {
    mosquitto_installed();
    let (code, out, err) = midge(&["check-config", DEBIAN_CONF]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("127.0.0.1:1883 MQTT, no TLS"), "{out}");
    assert!(out.contains("anonymous clients: allowed"), "{out}");
    assert!(
        out.contains(
            "persistence: on, in /var/lib/mosquitto/midge.redb and /var/lib/mosquitto/wal-*.log (never mosquitto.db)"
        ),
        "{out}"
    );
    assert!(out.contains("log: file /var/log/mosquitto/mosquitto.log"), "{out}");
    assert!(out.contains("pid_file: /run/mosquitto/mosquitto.pid"), "{out}");
    let (code, out, err) = midge(&["check-config", EXAMPLE_CONF]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("persistence: off (in memory)") && out.contains("ignored: nothing"), "{out}");
    // midge's own TOML too (its default store is on).
    let toml = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/midge.toml");
    let (code, out, err) = midge(&["check-config", toml]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("persistence: on, in midge-data/midge.redb") && out.contains("log: stdout"), "{out}");
}

/// `check-config` lists listeners, auth, limits and what was ignored.
#[test]
fn check_config_reports_what_midge_will_do() {
    let dir = TempDir::new("check-report");
    let passwd = password_file(&dir);
    let file = dir.0.join("m.conf");
    let text = format!(
        "per_listener_settings true\nlistener 1884 127.0.0.1\npassword_file {p}\nmax_connections 10\n\
         listener 9001 127.0.0.1\nprotocol websockets\npassword_file {p}\nmax_qos 1\nmemory_limit 1000\n\
         max_inflight_messages 5\nautosave_interval 60\nhttp_listener 127.0.0.1:9090\n",
        p = passwd.display()
    );
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = midge(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    for needle in [
        "127.0.0.1:1884 MQTT, no TLS, at most 10 connections",
        "127.0.0.1:9001 MQTT over WebSockets, no TLS, no connection limit",
        "auth (per_listener_settings):",
        &format!("127.0.0.1:1884: anonymous clients refused, password_file {}", passwd.display()),
        "max_inflight_messages: 5",
        "http_listener: 127.0.0.1:9090",
        "max_qos (line 8): not supported",
        "memory_limit (line 9): not supported",
        "note: autosave_interval (line 11): unnecessary: midge commits every acknowledged message",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    // Per-listener authentication belongs to the file's listeners.
    let (code, _, err) = midge(&["-c", file.to_str().unwrap(), "--bind", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--bind cannot replace the listeners of a file with per_listener_settings true"), "{err}");
}

/// Bad files: each error names the file and line, and both
/// `midge check-config` and `midge -c` exit non-zero.
#[test]
fn bad_mosquitto_conf_is_refused_naming_the_line() {
    let dir = TempDir::new("check-bad");
    let cases = [
        ("unknown.conf", "listener 1883\nallow_anonymus true\n", "line 2: unknown key \"allow_anonymus\""),
        (
            "include.conf",
            "listener 1883\ninclude_dir /nonexistent/midge.d\n",
            "line 2: include_dir /nonexistent/midge.d: cannot read the directory",
        ),
        (
            "plugin.conf",
            "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\n",
            "line 1: plugin: midge runs no Mosquitto plugins",
        ),
        (
            "acl.conf",
            "listener 1883\n\nacl_file /nonexistent/midge.acl\n",
            "line 3: acl_file /nonexistent/midge.acl: cannot read file",
        ),
        (
            "range.conf",
            "listener 1883\nmax_keepalive 70000\n",
            "line 2: max_keepalive: \"70000\" is not an integer from 0 to 65535",
        ),
        (
            "bridge.conf",
            "connection other\naddress 10.0.0.1\n",
            "line 1: connection other: no topic (at least one topic line is required)",
        ),
    ];
    // The file errors are found while reading the arguments (midge -c
    // exits 2); an unknown user only when the broker starts (exit 1).
    let user = ("user.conf", "listener 1883\nuser no-such-user-midge\n", "user no-such-user-midge: no such user");
    for (name, text, needle) in cases.into_iter().chain([user]) {
        let run_code = if name == "user.conf" { 1 } else { 2 };
        let file = dir.0.join(name);
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        let expected = match name {
            "user.conf" => needle.to_owned(),
            _ => format!("{path} {needle}"),
        };
        let (code, out, err) = midge(&["check-config", path]);
        assert_eq!(code, Some(1), "{name}: {out}{err}");
        assert!(err.contains(&expected), "{name}: {err}");
        let (code, out, err) = midge(&["-c", path, "--bind", "127.0.0.1:0", "--in-memory"]);
        assert_eq!(code, Some(run_code), "{name}: {out}{err}");
        assert!(err.contains(&expected), "{name}: {err}");
    }
}

/// Waits (bounded) until `path` contains `needle`; the file is written by
/// another process, so it is read again as it grows.
fn wait_for_in_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {}: {text}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

runtime_kind_test!(
    /// Debian's file, copied with its paths moved to a temp dir and a
    /// listener added in its conf.d (with `user nobody`): midge writes the
    /// pid file, logs to the file, keeps its store as midge.redb in the
    /// persistence_location (no mosquitto.db), becomes `nobody` after
    /// binding (when run as root), serves, reopens its log file on SIGHUP
    /// (logrotate), and removes the pid file on SIGTERM.
    debians_file_runs,
    |kind: RuntimeKind| {
        mosquitto_installed();
        let dir = TempDir::new("debian");
        // The broker becomes nobody: it must still be able to remove its pid file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (conf_d, store, log, pid) =
            (dir.0.join("conf.d"), dir.0.join("store"), dir.0.join("mosquitto.log"), dir.0.join("mosquitto.pid"));
        std::fs::create_dir_all(&conf_d).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        let port = free_port();
        std::fs::write(conf_d.join("local.conf"), format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser nobody\nmax_qos 1\n"))
            .unwrap();
        let debian = std::fs::read_to_string(DEBIAN_CONF)
            .unwrap()
            .replace("/run/mosquitto/mosquitto.pid", pid.to_str().unwrap())
            .replace("/var/lib/mosquitto/", &format!("{}/", store.display()))
            .replace("/var/log/mosquitto/mosquitto.log", log.to_str().unwrap())
            .replace("/etc/mosquitto/conf.d", conf_d.to_str().unwrap());
        let file = dir.0.join("mosquitto.conf");
        std::fs::write(&file, debian).unwrap();
        let (code, out, _) = midge(&["check-config", file.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{out}");
        let mut broker = Process::spawn(MIDGE, &["-c", file.to_str().unwrap(), "--runtime", kind.name()]);
        let uid = |pid: &str| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_owned()
        };
        match uid("self").split_whitespace().nth(1) == Some("0") {
            // As root, midge becomes nobody once its listeners are bound.
            true => {
                wait_for_in_file(&log, "now running as user nobody");
                let uids = uid(&broker.id().to_string());
                assert!(uids.split_whitespace().skip(1).all(|u| u == "65534"), "{uids}");
            }
            // Otherwise there is nothing to change, as in Mosquitto.
            false => drop(wait_for_in_file(&log, "user nobody: not running as root, nothing to change")),
        }
        let pid_text = std::fs::read_to_string(&pid).unwrap();
        assert_eq!(pid_text.trim(), broker.id().to_string());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (mut client, code) = connack_code(addr, &Connect { client_id: "d", clean: false, ..Connect::default() });
        assert_eq!(code, Some(0));
        client.subscribe(1, &[("t", 1)]);
        assert!(store.join("midge.redb").exists() && !store.join("mosquitto.db").exists());
        // logrotate: the file is moved away, SIGHUP reopens it at its path.
        let rotated = dir.0.join("mosquitto.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        assert_eq!(run("kill", &["-HUP", &broker.id().to_string()]), Some(0));
        wait_for_in_file(&log, "received SIGHUP");
        assert_eq!(run("kill", &["-TERM", &broker.id().to_string()]), Some(0));
        assert_eq!(broker.wait_exit(), Some(0));
        assert!(!pid.exists(), "pid file removed at exit");
        wait_for_in_file(&log, "shutting down");
        let text = std::fs::read_to_string(&rotated).unwrap();
        assert!(text.contains(&format!("listening on 127.0.0.1:{port}")), "{text}");
        let ignored = format!("options not supported by midge, ignored: max_qos ({} line 4)", conf_d.join("local.conf").display());
        assert!(text.contains(&ignored), "{text}");
    }
);

runtime_test!(
    /// `retain_available false`: a retained PUBLISH closes a 3.1.1 client
    /// (as Mosquitto does), a plain one is delivered; a will with RETAIN
    /// closes the connection before CONNACK.
    retain_available_false_closes_a_retained_publish,
    |c: &mut midge::Config| c.retain_available = false,
    |b: &TestBroker| {
        let mut sub = b.client("s");
        sub.subscribe(1, &[("t", 0)]);
        let mut p = b.client("p");
        p.send(&packets::publish0("t", b"plain"));
        assert_eq!(sub.recv().publish().2, b"plain");
        p.send(&packets::publish_with("t", b"kept", 0, None, true, false));
        p.expect_closed();
        let mut w = b.raw();
        w.send(&Connect { client_id: "w", will: Some(("w", b"gone", 0, true)), ..Connect::default() }.bytes());
        w.expect_closed();
        sub.expect_nothing_queued();
        let mut ok = b.raw();
        ok.send(&Connect { client_id: "w2", will: Some(("w", b"gone", 0, false)), ..Connect::default() }.bytes());
        ok.expect(&CONNACK_ACCEPTED);
    }
);

runtime_test!(
    /// `message_size_limit`: a larger payload is acknowledged (QoS 1) and
    /// dropped, one at the limit is delivered, as in Mosquitto.
    message_size_limit_drops_larger_payloads,
    |c: &mut midge::Config| c.message_size_limit = Some(4),
    |b: &TestBroker| {
        let mut sub = b.client("s");
        sub.subscribe(1, &[("t", 1)]);
        let mut p = b.client("p");
        p.send(&packets::publish("t", b"12345", 1, 1));
        p.expect(&ack(PUBACK, 1));
        p.send(&packets::publish("t", b"1234", 1, 2));
        p.expect(&ack(PUBACK, 2));
        assert_eq!(sub.recv().publish().2, b"1234");
        sub.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// A `protocol websockets` listener: on both brokers it answers MQTT over
    /// WebSockets on any path (a page written for Mosquitto keeps working),
    /// with the same CONNACK as the plain listener beside it; anonymous
    /// clients refused on both without `allow_anonymous`, accepted with it.
    agreement_websockets_listener,
    |kind: RuntimeKind| {
        let ws_connack = |addr: SocketAddr, path: &str| {
            let mut raw = Raw::connect_ws(addr, path);
            raw.send(&anonymous("ws1").bytes());
            raw.try_recv().ok().filter(|p| p.header == 0x20).and_then(|p| p.body.get(1).copied())
        };
        let dir = TempDir::new("agree-ws");
        let conf = "listener {port0} 127.0.0.1\nlistener {port1} 127.0.0.1\nprotocol websockets\n";
        let both = Both::start(kind, &dir, conf);
        assert_eq!(both.agree("ws, anonymous refused", |a| ws_connack(a[1], "/mqtt")), Some(5));
        drop(both);
        let both = Both::start(kind, &dir, &format!("allow_anonymous true\n{conf}"));
        for path in ["/", "/mqtt", "/any/page"] {
            assert_eq!(both.agree(&format!("ws on {path}"), |a| ws_connack(a[1], path)), Some(0));
        }
        assert_eq!(both.agree("tcp beside it", |a| connack_code(a[0], &anonymous("t1")).1), Some(0));
    }
);
