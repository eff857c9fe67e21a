//! MQTT over WebSockets (section 6): the byte-level client over `ws://` and
//! `wss://` (each write one binary message), the handshake's rules, bad
//! input on every new surface, and MQTT.js (3.1.1 and 5.0) under Node and in
//! headless Chromium. Each broker has a WebSocket listener first
//! (`TestBroker::raw` connects to it) and a TCP listener second.

use crate::support::client::{Raw, TIMEOUT, WebSocket, tcp, ws_handshake, ws_handshake_over, ws_handshake_with};
use crate::support::process::{Process, run};
use crate::support::{TempDir, TestBroker, packets};
use async_tungstenite::tungstenite::{self, Message, protocol::frame::coding::CloseCode};
use midge::config::{Listener, TlsFiles, WebSockets};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A WebSocket listener (path /mqtt) and a TCP listener.
fn ws_and_tcp(c: &mut midge::Config) {
    c.listeners = vec![Listener::websockets(local()), Listener::tcp(local())];
}

/// A client on the TCP listener, after CONNACK.
fn tcp_client(b: &TestBroker, id: &str) -> Raw {
    let mut raw = Raw::connect(b.addrs[1]);
    raw.send(&packets::connect(id, true, 60));
    raw.expect(&packets::CONNACK_ACCEPTED);
    raw
}

/// A TCP subscriber to `still/#` that must keep receiving while an
/// offender is dealt with; [`still_served`] checks it.
fn bystander(b: &TestBroker) -> Raw {
    let mut bystander = tcp_client(b, "bystander");
    bystander.subscribe(1, &[("still/#", 0)]);
    bystander
}

/// A new WebSocket client publishes to the bystander, which receives it.
fn still_served(b: &TestBroker, bystander: &mut Raw) {
    let mut publisher = b.client("publisher");
    publisher.send(&packets::publish0("still/here", b"ok"));
    assert_eq!(bystander.recv().publish().2, b"ok");
}

/// Reads until the broker's Close frame and returns its code; fails on
/// anything but messages of the connection's past, or a timeout.
fn close_code(ws: &mut WebSocket) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => {}
            Err(e) => panic!("expected a Close frame, got {e}"),
        }
    }
}

/// The HTTP status of a refused handshake.
fn refused_status(result: Result<(WebSocket, Option<String>), tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

runtime_test!(
    /// CONNECT and CONNACK over WebSockets; PINGREQ answered.
    ws_connect_connack_and_ping,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut c = b.client("ws-client");
        c.ping();
        c.send(&packets::DISCONNECT);
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-6.0.0-4: the server answers the `mqtt` subprotocol when offered
    /// (among others), and `mqttv3.1` to MQTT 3.1 clients that offer only it.
    mqtt_6_0_0_4_server_answers_mqtt_subprotocol,
    ws_and_tcp,
    |b: &TestBroker| {
        for (offered, chosen) in
            [(&["chat", "mqtt"][..], "mqtt"), (&["mqtt", "mqttv3.1"], "mqtt"), (&["mqttv3.1"], "mqttv3.1")]
        {
            let (ws, answered) = ws_handshake(b.addr, "/mqtt", offered).expect("handshake");
            assert_eq!(answered.as_deref(), Some(chosen), "offered {offered:?}");
            let mut c = Raw::over(ws);
            c.send(&packets::connect("sub-protocol", true, 60));
            c.expect(&packets::CONNACK_ACCEPTED);
        }
    }
);

runtime_test!(
    /// MQTT-6.0.0-3: an upgrade that offers no `mqtt` subprotocol (none at
    /// all, or others only) is refused with 400; other clients carry on.
    mqtt_6_0_0_3_upgrade_without_subprotocol_is_refused,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        assert_eq!(refused_status(ws_handshake(b.addr, "/mqtt", &[])), 400);
        assert_eq!(refused_status(ws_handshake(b.addr, "/mqtt", &["chat", "MQTT"])), 400);
        still_served(b, &mut bystander);
    }
);

runtime_test!(
    /// A handshake on another path than the listener's gets 404; the path
    /// is configurable.
    ws_wrong_path_gets_404,
    |c: &mut midge::Config| {
        let ws = WebSockets { path: Some("/brokers/mqtt".into()), trust_forwarded_for: false };
        c.listeners = vec![Listener { websockets: Some(ws), ..Listener::tcp(local()) }, Listener::tcp(local())];
    },
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        assert_eq!(refused_status(ws_handshake(b.addr, "/mqtt", &["mqtt"])), 404);
        assert_eq!(refused_status(ws_handshake(b.addr, "/", &["mqtt"])), 404);
        still_served(b, &mut bystander);
    }
);

runtime_test!(
    /// A listener without a path (`websockets_path = "*"`, and every
    /// websockets listener read from a mosquitto.conf) takes a handshake on
    /// any path, as Mosquitto's do: pages written for Mosquitto keep working.
    ws_listener_without_path_takes_any_path,
    |c: &mut midge::Config| {
        let ws = WebSockets { path: None, trust_forwarded_for: false };
        c.listeners = vec![Listener { websockets: Some(ws), ..Listener::tcp(local()) }];
    },
    |b: &TestBroker| {
        for (i, path) in ["/", "/mqtt", "/some/page?x=1"].into_iter().enumerate() {
            let mut c = Raw::connect_ws(b.addr, path);
            c.send(&packets::connect(&format!("any-path-{i}"), true, 60));
            c.expect(&packets::CONNACK_ACCEPTED);
        }
    }
);

runtime_test!(
    /// MQTT-6.0.0-1: a text frame closes the connection, with Close code
    /// 1003 (unsupported data); other clients carry on.
    mqtt_6_0_0_1_text_frame_closes,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        let mut offender = b.client("offender");
        offender.websocket().send(Message::text("\u{10}\u{0c}\0\u{4}MQTT")).unwrap();
        assert_eq!(close_code(offender.websocket()), Some(CloseCode::Unsupported));
        offender.expect_closed();
        // Before CONNECT, too.
        let mut early = b.raw();
        early.websocket().send(Message::text("hello")).unwrap();
        assert_eq!(close_code(early.websocket()), Some(CloseCode::Unsupported));
        still_served(b, &mut bystander);
    }
);

runtime_test!(
    /// MQTT-6.0.0-2: packets are not aligned on frames: CONNECT split over
    /// three messages (one byte alone), then SUBSCRIBE, PUBLISH and PINGREQ
    /// in one message, a PUBLISH split mid-payload, and empty messages.
    mqtt_6_0_0_2_packets_span_and_share_frames,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut c = b.raw();
        let connect = packets::connect("split", true, 60);
        c.send(&connect[..1]);
        c.send(&connect[1..5]);
        c.send(&[]);
        c.send(&connect[5..]);
        c.expect(&packets::CONNACK_ACCEPTED);
        let mut several = packets::subscribe(1, &[("t/#", 0)]);
        several.extend(packets::publish0("t/1", b"in one frame"));
        several.extend(packets::PINGREQ);
        c.send(&several);
        c.expect(&packets::suback(1, &[0]));
        // The PINGRESP and the delivery of the client's own PUBLISH, in either order.
        let mut two = [c.recv(), c.recv()];
        two.sort_by_key(|p| p.header);
        assert_eq!(two[0].publish(), ("t/1".into(), None, b"in one frame".to_vec()));
        assert_eq!(two[1].header, packets::PINGRESP[0]);
        let publish = packets::publish0("t/2", &[7u8; 3000]);
        for piece in publish.chunks(1000) {
            c.send(piece);
        }
        assert_eq!(c.recv().publish().2, vec![7u8; 3000]);
    }
);

runtime_test!(
    /// QoS 0, 1 and 2 between a WebSocket client and a TCP client, both ways.
    ws_publish_subscribe_qos_0_1_2,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut ws_sub = b.client("ws-sub");
        ws_sub.subscribe(1, &[("to/ws", 2)]);
        let mut tcp_sub = tcp_client(b, "tcp-sub");
        tcp_sub.subscribe(1, &[("to/tcp", 2)]);
        let mut tcp_pub = tcp_client(b, "tcp-pub");
        let mut ws_pub = b.client("ws-pub");
        for qos in 0..=2u8 {
            let payload = format!("qos {qos}");
            for (publisher, subscriber, topic) in
                [(&mut tcp_pub, &mut ws_sub, "to/ws"), (&mut ws_pub, &mut tcp_sub, "to/tcp")]
            {
                let pid = 10 + u16::from(qos);
                let id = (qos > 0).then_some(pid);
                publisher.send(&packets::publish_with(topic, payload.as_bytes(), qos, id, false, false));
                match qos {
                    1 => publisher.expect(&packets::ack(packets::PUBACK, pid)),
                    2 => {
                        publisher.expect(&packets::ack(packets::PUBREC, pid));
                        publisher.send(&packets::ack(packets::PUBREL, pid));
                        publisher.expect(&packets::ack(packets::PUBCOMP, pid));
                    }
                    _ => {}
                }
                let got = subscriber.recv();
                assert_eq!(got.qos(), qos);
                let (t, id, body) = got.publish();
                assert_eq!((t.as_str(), body.as_slice()), (topic, payload.as_bytes()));
                match (qos, id) {
                    (1, Some(id)) => subscriber.send(&packets::ack(packets::PUBACK, id)),
                    (2, Some(id)) => {
                        subscriber.send(&packets::ack(packets::PUBREC, id));
                        subscriber.expect(&packets::ack(packets::PUBREL, id));
                        subscriber.send(&packets::ack(packets::PUBCOMP, id));
                    }
                    _ => {}
                }
            }
        }
        ws_sub.expect_nothing_queued();
    }
);

runtime_test!(
    /// A retained message published over TCP reaches a WebSocket subscriber
    /// with RETAIN set.
    ws_retained_message_is_delivered,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut publisher = tcp_client(b, "retainer");
        publisher.send(&packets::publish_with("kept/t", b"kept", 1, Some(1), true, false));
        publisher.expect(&packets::ack(packets::PUBACK, 1));
        let mut c = b.client("ws-late");
        c.subscribe(1, &[("kept/#", 1)]);
        let got = c.recv();
        assert!(got.retain());
        assert_eq!(got.publish().2, b"kept");
    }
);

runtime_test!(
    /// `max_packet_size` holds over WebSockets: a packet declaring more
    /// closes, as over TCP; a frame or message larger than the packet size
    /// (plus a little) gets Close 1009 before it is buffered.
    ws_oversized_packet_and_message_close,
    |c: &mut midge::Config| {
        ws_and_tcp(c);
        c.max_packet_size = 1024;
    },
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        let mut offender = b.client("offender");
        offender.send(&[0x30, 0x80, 0x08]); // declares 1024 + header > 1024
        offender.expect_closed_or_reset();
        let mut offender = b.client("big-message");
        offender.send(&vec![0x30; 4096]); // one message of 4 KiB
        assert_eq!(close_code(offender.websocket()), Some(CloseCode::Size));
        still_served(b, &mut bystander);
    }
);

runtime_test!(
    /// MQTT-3.1.2-24 over WebSockets: a client silent past 1.5 × its
    /// keepalive (1 s) is closed, WebSocket pings or not.
    ws_keepalive_expiry_closes,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut c = b.raw();
        // Timed from before CONNECT: the broker's clock starts when it has
        // read it, so the close cannot come sooner than 1.5 s after this.
        let since = Instant::now();
        c.send(&packets::connect("ws-idle", true, 1));
        c.expect(&packets::CONNACK_ACCEPTED);
        c.websocket().send(Message::Ping(vec![1].into())).unwrap();
        c.expect_closed_or_reset();
        let silent = since.elapsed();
        assert!(silent >= Duration::from_millis(1500), "closed after {silent:?}");
        assert!(silent < Duration::from_secs(5), "closed after {silent:?}");
    }
);

runtime_test!(
    /// A handshake not finished within the connect timeout is closed, with
    /// a log line; other clients carry on.
    ws_slow_handshake_is_closed,
    |c: &mut midge::Config| {
        ws_and_tcp(c);
        c.connect_timeout = Duration::from_secs(1);
    },
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        // Timed from before the connect: the broker's clock starts after it.
        let since = Instant::now();
        let mut slow = tcp(b.addr);
        slow.write_all(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(slow.read(&mut buf), Ok(0) | Err(_)), "closed without an answer");
        let waited = since.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited < TIMEOUT, "closed after {waited:?}");
        still_served(b, &mut bystander);
    }
);

runtime_test!(
    /// A handshake request larger than 16 KiB gets 431 and is closed.
    ws_oversized_handshake_gets_431,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        let mut big = tcp(b.addr);
        let request = format!(
            "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n",
            "a".repeat(midge::ws::MAX_HANDSHAKE)
        );
        let _ = big.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = big.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431 "), "answer: {answer:?}");
        still_served(b, &mut bystander);
    }
);

runtime_test!(
    /// A ping flood from a client that does not read: the broker keeps
    /// reading, holds one pending pong instead of queuing one per ping
    /// (fewer pongs than pings arrive), and the connection still works.
    ws_ping_flood_is_bounded,
    ws_and_tcp,
    |b: &TestBroker| {
        let mut bystander = bystander(b);
        let mut c = b.client("flooder");
        const PINGS: usize = 120_000;
        // Masked with a zero key (the payload stays as written): 131 bytes each.
        let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
        ping.extend([b'p'; 125]);
        let batch = ping.repeat(1000);
        let mut socket = c.websocket().get_ref().tcp().try_clone().unwrap();
        small_receive_buffer(&socket);
        for _ in 0..PINGS / 1000 {
            socket.write_all(&batch).unwrap();
        }
        c.send(&packets::PINGREQ);
        let mut pongs = 0;
        loop {
            match c.websocket().read().expect("the connection survives the flood") {
                Message::Pong(_) => pongs += 1,
                Message::Binary(bytes) if bytes[..] == packets::PINGRESP => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pongs < PINGS, "{pongs} pongs for {PINGS} pings: one queued per ping");
        still_served(b, &mut bystander);
    }
);

/// Caps the kernel's receive buffer of `socket` at 64 KiB (no autotuning),
/// so what the broker cannot send stays with the broker.
fn small_receive_buffer(socket: &std::net::TcpStream) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 64 * 1024;
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt SO_RCVBUF");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = socket;
}

fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/").to_owned() + name
}

/// A client over `wss://` that trusts the fixtures' CA, after CONNACK.
fn wss_client(b: &TestBroker, id: &str) -> Raw {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tls = rustls::StreamOwned::new(connection, tcp(b.addr));
    let url = format!("wss://localhost:{}/mqtt", b.addr.port());
    let (ws, chosen) = ws_handshake_over(Box::new(tls), &url, &["mqtt"]).expect("wss handshake");
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    let mut c = Raw::over(ws);
    c.send(&packets::connect(id, true, 60));
    c.expect(&packets::CONNACK_ACCEPTED);
    c
}

/// A `wss://` listener with the certificate and key at `dir`.
fn wss_listener(dir: &std::path::Path) -> impl FnOnce(&mut midge::Config) {
    let tls = TlsFiles {
        certfile: dir.join("server.pem"),
        keyfile: dir.join("server.key"),
        cafile: None,
        require_certificate: false,
        use_identity_as_username: false,
    };
    move |c| c.listeners = vec![Listener { tls: Some(tls), ..Listener::websockets(local()) }]
}

runtime_test!(
    /// `wss://`: a WebSocket listener with TLS serves a client that trusts
    /// its CA, subscribe and publish round trip.
    wss_listener_round_trip,
    wss_listener(&PathBuf::from(fixture(""))),
    |b: &TestBroker| {
        let mut c = wss_client(b, "wss");
        c.subscribe(1, &[("secure/#", 1)]);
        c.send(&packets::publish("secure/t", b"over wss", 1, 7));
        c.expect(&packets::ack(packets::PUBACK, 7));
        assert_eq!(c.recv().publish().2, b"over wss");
    }
);

runtime_kind_test!(
    /// A `wss://` listener's certificate is re-read on reload (SIGHUP), as
    /// a TLS listener's: a file that fails keeps the one in force, and
    /// clients connect throughout.
    wss_certificate_reload,
    |kind| {
        let dir = crate::support::TempDir::new("wss-reload");
        for file in ["server.pem", "server.key"] {
            std::fs::copy(fixture(file), dir.0.join(file)).unwrap();
        }
        let b = TestBroker::start(kind, wss_listener(&dir.0));
        wss_client(&b, "before");
        b.reload().expect("reload with the same files");
        std::fs::write(dir.0.join("server.pem"), "not a certificate").unwrap();
        let error = b.reload().unwrap_err();
        assert!(error.contains("certfile") && error.contains("server.pem"), "{error}");
        wss_client(&b, "after-failed-reload");
        std::fs::copy(fixture("server.pem"), dir.0.join("server.pem")).unwrap();
        b.reload().expect("reload with the files restored");
        wss_client(&b, "after-reload");
    }
);

/// The address in a "listening on ADDR (...)" line.
fn listening_on(line: &str) -> SocketAddr {
    line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

runtime_kind_test!(
    /// The binary with WebSocket listeners from its TOML file: each logs its
    /// kind and path; on the one with `websockets_trust_forwarded_for` the
    /// client is named by the first `X-Forwarded-For` address, on the other
    /// by its socket's, whatever the header says.
    binary_websocket_listeners_from_toml_and_x_forwarded_for,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("ws-toml");
        let file = dir.0.join("midge.toml");
        std::fs::write(
            &file,
            "persistence = false\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"websockets\"\nwebsockets_path = \"/ws\"\n\
             websockets_trust_forwarded_for = true\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"websockets\"\n",
        )
        .unwrap();
        let args = ["--config", file.to_str().unwrap(), "--runtime", kind.name(), "--threads", "2"];
        let mut midge = Process::spawn(env!("CARGO_BIN_EXE_midge"), &args);
        let runtime = kind.name();
        let trusting = midge.wait_for("listening on ");
        assert!(trusting.contains(&format!("(MQTT over WebSockets, path /ws, runtime {runtime})")), "{trusting}");
        let plain = midge.wait_for("listening on ");
        assert!(plain.contains(&format!("(MQTT over WebSockets, path /mqtt, runtime {runtime})")), "{plain}");
        let forwarded = [("x-forwarded-for", "203.0.113.7, 10.0.0.1")];
        for (addr, path, id) in [(listening_on(&trusting), "/ws", "behind-proxy"), (listening_on(&plain), "/mqtt", "direct")] {
            let url = format!("ws://{addr}{path}");
            let (ws, _) = ws_handshake_with(Box::new(tcp(addr)), &url, &["mqtt"], &forwarded).expect("handshake");
            let mut c = Raw::over(ws);
            c.send(&packets::connect(id, true, 60));
            c.expect(&packets::CONNACK_ACCEPTED);
        }
        midge.wait_for("client behind-proxy connected from 203.0.113.7:0 ");
        midge.wait_for("client direct connected from 127.0.0.1:");
        assert_eq!(run("kill", &["-TERM", &midge.id().to_string()]), Some(0));
        assert_eq!(midge.wait_exit(), Some(0));
    }
);

/// tests/js, with its node_modules (`(cd tests/js && npm ci)`; .ci/run does).
fn js_script() -> String {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js"));
    for package in ["mqtt", "playwright-core"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "tests/js/node_modules/{package} is missing: run `(cd tests/js && npm ci)` (.ci/run does)"
        );
    }
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is missing: apt-get install nodejs npm (.ci/run does)");
    dir.join("mqttjs.mjs").to_str().unwrap().to_owned()
}

/// Runs tests/js/mqttjs.mjs (`node` or `browser`) against `url`: MQTT.js
/// subscribes, receives what mosquitto_pub publishes over TCP, and
/// publishes a message that a TCP subscriber receives.
fn mqttjs_exchange(b: &TestBroker, place: &str, url: &str) {
    let script = js_script();
    let mut watcher = tcp_client(b, "tcp-watcher");
    watcher.subscribe(1, &[("from/js", 1)]);
    let mut js = Process::spawn("node", &[&script, place, url]);
    // Chromium may take a while to start while the rest of the suite runs.
    js.wait_for_within("READY", Duration::from_secs(60));
    let port = b.addrs[1].port().to_string();
    let published = run("mosquitto_pub", &["-h", "127.0.0.1", "-p", &port, "-t", "to/js", "-q", "1", "-m", "over tcp"]);
    assert_eq!(published, Some(0), "mosquitto_pub");
    js.wait_for("GOT to/js over tcp");
    js.wait_for("PUBLISHED");
    let got = watcher.recv();
    let (topic, pid, payload) = got.publish();
    assert_eq!((topic.as_str(), String::from_utf8(payload).unwrap()), ("from/js", format!("hello from {place}")));
    watcher.send(&packets::ack(packets::PUBACK, pid.expect("QoS 1")));
    assert_eq!(js.wait_exit(), Some(0), "MQTT.js in {place}: {:#?}", js.seen);
}

runtime_test!(
    /// MQTT.js 5 under Node over ws:// and over plain TCP: subscribe,
    /// receive a mosquitto_pub message, publish to a TCP subscriber.
    mqttjs_node_over_ws_and_tcp,
    ws_and_tcp,
    |b: &TestBroker| {
        mqttjs_exchange(b, "node", &format!("ws://{}/mqtt", b.addr));
        mqttjs_exchange(b, "node", &format!("mqtt://{}", b.addrs[1]));
    }
);

runtime_test!(
    /// A real browser: MQTT.js's browser bundle in a page in Debian's
    /// headless Chromium (driven by playwright-core) connects over ws://,
    /// subscribes, receives a mosquitto_pub message and publishes one that a
    /// TCP subscriber receives.
    mqttjs_in_headless_chromium_over_ws,
    ws_and_tcp,
    |b: &TestBroker| {
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: apt-get install chromium (.ci/run does)"
        );
        mqttjs_exchange(b, "browser", &format!("ws://{}/mqtt", b.addr));
    }
);

/// The checks tests/js/mqttjs.mjs makes over MQTT 5.0 (`exchange5`), each
/// printed as `OK <name>`.
const MQTTJS5_CHECKS: &[&str] = &[
    "connack_properties",
    "suback_granted",
    "suback_reason_codes",
    "properties_round_trip",
    "message_expiry_forwarded",
    "subscription_identifier",
    "topic_alias_inbound",
    "topic_alias_outbound",
    "puback_no_matching_subscribers",
    "no_local",
];

/// Runs tests/js/mqttjs.mjs over MQTT 5.0 (`node` or `browser`) against
/// `url` and checks every one of [`MQTTJS5_CHECKS`] passed.
fn mqttjs5_exchange(place: &str, url: &str) {
    let script = js_script();
    let mut js = Process::spawn("node", &[&script, place, url, "5"]);
    // Chromium may take a while to start while the rest of the suite runs.
    js.wait_for_within("OK connack_properties", Duration::from_secs(60));
    js.wait_for("DONE");
    assert_eq!(js.wait_exit(), Some(0), "MQTT.js 5.0 in {place}: {:#?}", js.seen);
    let missing: Vec<_> = MQTTJS5_CHECKS.iter().filter(|c| !js.seen.contains(&format!("OK {c}"))).collect();
    assert!(missing.is_empty(), "MQTT.js 5.0 in {place}: checks not passed {missing:?}: {:#?}", js.seen);
}

/// WebSocket and TCP listeners, and `max_topic_levels` 5 for the SUBACK
/// 0x8F check of tests/js/mqttjs.mjs.
fn ws_and_tcp_five_levels(c: &mut midge::Config) {
    ws_and_tcp(c);
    c.max_topic_levels = 5;
}

runtime_test!(
    /// MQTT.js with `protocolVersion: 5` under Node over ws:// and plain TCP:
    /// CONNACK's Receive Maximum and Topic Alias Maximum, SUBACK reason
    /// codes (granted QoS, 0x8F), message properties round trip
    /// (MQTT-3.3.2-4, -15, -16, -17, -20) with the remaining expiry
    /// (MQTT-3.3.2-6) and the Subscription Identifier (MQTT-3.3.4-3), topic
    /// aliases in (MQTT-3.3.2-12) and out within the client's maximum
    /// (MQTT-3.1.2-26), PUBACK 0x10, No Local (MQTT-3.8.3-3).
    mqttjs5_node_over_ws_and_tcp,
    ws_and_tcp_five_levels,
    |b: &TestBroker| {
        mqttjs5_exchange("node", &format!("ws://{}/mqtt", b.addr));
        mqttjs5_exchange("node", &format!("mqtt://{}", b.addrs[1]));
    }
);

runtime_test!(
    /// The same MQTT 5.0 checks with MQTT.js's browser bundle in a page in
    /// Debian's headless Chromium over ws://.
    mqttjs5_in_headless_chromium_over_ws,
    ws_and_tcp_five_levels,
    |b: &TestBroker| {
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: apt-get install chromium (.ci/run does)"
        );
        mqttjs5_exchange("browser", &format!("ws://{}/mqtt", b.addr));
    }
);
