use crate::support::client::TIMEOUT;
use crate::support::packets::{self, Connect, DISCONNECT, PUBACK, ack};
use crate::support::process::Process;
use crate::support::{TempDir, TestBroker, free_port};
use midge::packet::ConnectCode;
use midge::security::{ClientInfo, ConnectInfo, Hooks};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An HTTP listener on a free port.
fn with_http(c: &mut midge::Config) {
    c.http_listener = Some("127.0.0.1:0".parse().unwrap());
}

fn http_addr(b: &TestBroker) -> SocketAddr {
    b.http.expect("http_listener is set")
}

/// An HTTP answer: status code, head (status line and headers) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// A TCP connection with a deadline on every read and write.
fn open(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Sends `request` as it is and reads the answer until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = open(addr);
    stream.write_all(request).expect("send the request");
    read_answer(&mut stream)
}

fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read the answer until the server closes");
    let text = String::from_utf8(bytes).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status in {head:?}"));
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: midge\r\n\r\n").as_bytes())
}

/// `GET /metrics`: every sample by its name and labels as written.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(answer.head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"), "{}", answer.head);
    samples(&answer.body)
}

fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            (key.to_owned(), value.parse().unwrap_or_else(|_| panic!("value in {l:?}")))
        })
        .collect()
}

/// Scrapes until `check` is content with the samples; panics with the last
/// scrape after [`TIMEOUT`]. (Connections end on their own tasks: what a
/// DISCONNECT changes shows a moment after it was sent.)
fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let samples = scrape(addr);
        if check(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}; last scrape: {samples:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

/// Refuses the user "intruder" and every PUBLISH to "forbidden".
struct Gatekeeper;

impl Hooks for Gatekeeper {
    fn authenticate(&self, connect: &ConnectInfo<'_>) -> Result<(), ConnectCode> {
        match connect.username {
            Some("intruder") => Err(ConnectCode::BadUsernamePassword),
            _ => Ok(()),
        }
    }

    fn authorize_publish(&self, _client: &ClientInfo<'_>, topic: &str) -> bool {
        topic != "forbidden"
    }
}

runtime_kind_test!(
    /// The counters move with traffic, and `/metrics` and `$SYS` read the
    /// same ones: connections by listener and protocol version, sessions,
    /// subscriptions, queued messages, messages and payload bytes by QoS,
    /// drops by cause (a full offline queue, an ACL refusal), an auth
    /// failure, store commits and their latency histogram.
    metrics_follow_traffic,
    |kind| {
        let data = TempDir::new("metrics");
        let b = TestBroker::start(kind, |c| {
            with_http(c);
            c.data_dir = Some(data.0.clone());
            c.max_queued = 1;
            c.sys_interval = Duration::from_millis(50);
        });
        b.broker.set_hooks(Arc::new(Gatekeeper));
        let http = http_addr(&b);
        let mut sub = b.persistent("sub", false);
        sub.subscribe(1, &[("a/#", 1)]);
        sub.send(&DISCONNECT);
        sub.expect_closed();
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("a/0", b"zero"));
        publisher.send(&packets::publish("a/1", b"one", 1, 1));
        publisher.expect(&ack(PUBACK, 1));
        // The offline session's queue (max_queued 1) is full: dropped.
        publisher.send(&packets::publish("a/2", b"two!", 1, 2));
        publisher.expect(&ack(PUBACK, 2));
        // Refused by the hooks: acknowledged, not delivered.
        publisher.send(&packets::publish("forbidden", b"no", 1, 3));
        publisher.expect(&ack(PUBACK, 3));
        let mut intruder = b.raw();
        intruder.send(&Connect { client_id: "x", username: Some("intruder"), ..Connect::default() }.bytes());
        intruder.expect(&[0x20, 2, 0, 4]);
        let mut old = b.raw();
        old.send(&Connect { protocol: "MQIsdp", level: 3, client_id: "old", ..Connect::default() }.bytes());
        old.expect(&packets::CONNACK_ACCEPTED);

        let listener = |protocol: &str| format!("{{listener=\"{}\",kind=\"mqtt\",protocol=\"{protocol}\"}}", b.addr);
        let m = scrape_until(http, "the subscriber's disconnect", |m| {
            m.get("midge_sessions{state=\"offline\"}") == Some(&1.0)
        });
        assert_eq!(value(&m, &format!("midge_connections_total{}", listener("3.1.1"))), 2.0, "sub and pub");
        assert_eq!(value(&m, &format!("midge_connections_total{}", listener("3.1"))), 1.0);
        assert_eq!(value(&m, &format!("midge_clients_connected{}", listener("3.1.1"))), 1.0, "pub");
        assert_eq!(value(&m, &format!("midge_clients_connected{}", listener("3.1"))), 1.0, "old");
        assert_eq!(value(&m, "midge_sessions{state=\"online\"}"), 2.0);
        assert_eq!(value(&m, "midge_sessions_persistent"), 1.0);
        assert_eq!(value(&m, "midge_subscriptions"), 1.0);
        assert_eq!(value(&m, "midge_queued_messages"), 1.0, "a/1 waits for the subscriber");
        assert_eq!(value(&m, "midge_messages_received_total{qos=\"0\"}"), 1.0);
        assert_eq!(value(&m, "midge_messages_received_total{qos=\"1\"}"), 3.0);
        assert_eq!(value(&m, "midge_payload_received_bytes_total{qos=\"0\"}"), 4.0);
        assert_eq!(value(&m, "midge_payload_received_bytes_total{qos=\"1\"}"), 9.0);
        assert_eq!(value(&m, "midge_messages_dropped_total{cause=\"queue_full\"}"), 1.0);
        assert_eq!(value(&m, "midge_messages_dropped_total{cause=\"acl\"}"), 1.0);
        assert_eq!(value(&m, "midge_messages_dropped_total{cause=\"slow_consumer\"}"), 0.0);
        assert_eq!(value(&m, "midge_auth_failures_total"), 1.0);
        assert!(value(&m, "midge_received_bytes_total") > 0.0);
        assert!(value(&m, "midge_store_commits_total") >= 1.0, "the persistent session and its message");
        let commits = value(&m, "midge_store_commits_total");
        assert_eq!(value(&m, "midge_store_commit_duration_seconds_count"), commits);
        assert_eq!(value(&m, "midge_store_commit_duration_seconds_bucket{le=\"+Inf\"}"), commits);

        // The subscriber comes back for its message: sent, and no longer queued.
        let mut sub = b.persistent("sub", true);
        let message = sub.recv();
        assert_eq!(message.publish().0, "a/1");
        sub.send(&ack(PUBACK, message.publish().1.unwrap()));
        sub.ping();
        let m = scrape_until(http, "the queued message sent", |m| m.get("midge_queued_messages") == Some(&0.0));
        assert_eq!(value(&m, "midge_messages_sent_total{qos=\"1\"}"), 1.0);
        assert_eq!(value(&m, "midge_payload_sent_bytes_total{qos=\"1\"}"), 3.0);

        // `$SYS` reads the same counters: its next updates show the scraped
        // values (queue drops only, as Mosquitto counts them).
        let received: f64 = (0..3).map(|q| value(&m, &format!("midge_messages_received_total{{qos=\"{q}\"}}"))).sum();
        let dropped = value(&m, "midge_messages_dropped_total{cause=\"queue_full\"}")
            + value(&m, "midge_messages_dropped_total{cause=\"slow_consumer\"}");
        let expected = HashMap::from([
            ("$SYS/broker/messages/received".to_owned(), received.to_string()),
            ("$SYS/broker/publish/messages/dropped".to_owned(), dropped.to_string()),
        ]);
        let mut watcher = b.client("watcher");
        watcher.subscribe(2, &[("$SYS/broker/publish/messages/dropped", 0), ("$SYS/broker/messages/received", 0)]);
        let mut sys = HashMap::new();
        watcher.recv_until(TIMEOUT, "$SYS values equal to the scraped ones", |p| {
            let (topic, _, payload) = p.publish();
            sys.insert(topic, String::from_utf8(payload).unwrap());
            (sys == expected).then_some(())
        });
        drop((sub, publisher, old, watcher));
    }
);

runtime_test!(
    /// A PUBLISH larger than `max_packet_size` closes its connection and is
    /// counted as dropped (`too_large`).
    metrics_count_an_oversized_publish,
    |c: &mut midge::Config| {
        with_http(c);
        c.max_packet_size = 64;
    },
    |b: &TestBroker| {
        let mut publisher = b.client("big");
        publisher.send(&packets::publish0("a", &[0; 100]));
        publisher.expect_closed_or_reset();
        scrape_until(http_addr(b), "the too_large drop", |m| {
            m.get("midge_messages_dropped_total{cause=\"too_large\"}") == Some(&1.0)
        });
    }
);

runtime_test!(
    /// Without `http_listener` there is no HTTP endpoint (off by default).
    http_listener_is_off_by_default,
    |b: &TestBroker| {
        assert_eq!(b.http, None);
    }
);

runtime_test!(
    /// `GET /healthz` answers 200 `ok` while the broker runs; HEAD gets the
    /// same head without a body; a query string is ignored.
    http_healthz_and_head,
    with_http,
    |b: &TestBroker| {
        let answer = get(http_addr(b), "/healthz");
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"), "{}", answer.head);
        assert!(answer.head.contains("\r\nConnection: close"), "{}", answer.head);
        let head = exchange(http_addr(b), b"HEAD /healthz HTTP/1.0\r\n\r\n");
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        assert!(head.head.contains("\r\nContent-Length: 3"), "{}", head.head);
        assert_eq!(get(http_addr(b), "/metrics?name=x").status, 200);
    }
);

runtime_test!(
    /// An unknown path gets 404.
    http_unknown_path_is_404,
    with_http,
    |b: &TestBroker| {
        for path in ["/", "/metrics/", "/nope", "/healthz/x"] {
            assert_eq!(get(http_addr(b), path).status, 404, "{path}");
        }
    }
);

runtime_test!(
    /// Another method than GET or HEAD gets 405 with `Allow: GET, HEAD`;
    /// a request body is read and dropped, not reset.
    http_wrong_method_is_405_with_allow,
    with_http,
    |b: &TestBroker| {
        for request in [
            &b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"DELETE /healthz HTTP/1.1\r\n\r\n",
            b"PUT /metrics HTTP/1.0\r\n\r\n",
        ] {
            let answer = exchange(http_addr(b), request);
            assert_eq!(answer.status, 405, "{}", String::from_utf8_lossy(request));
            assert!(answer.head.contains("\r\nAllow: GET, HEAD"), "{}", answer.head);
        }
    }
);

runtime_test!(
    /// A malformed request line gets 400 (and an unsupported HTTP version
    /// 505); the broker goes on serving.
    http_malformed_request_is_400,
    with_http,
    |b: &TestBroker| {
        for request in [
            &b"HELLO\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\x00\xff\xfe\r\n\r\n",
            b"GET /metrics MQTT/3.1\r\n\r\n",
        ] {
            assert_eq!(exchange(http_addr(b), request).status, 400, "{:?}", String::from_utf8_lossy(request));
        }
        assert_eq!(exchange(http_addr(b), b"GET /metrics HTTP/2.0\r\n\r\n").status, 505);
        assert_eq!(get(http_addr(b), "/healthz").status, 200);
    }
);

runtime_test!(
    /// A request head that does not end within 8 KiB gets 431: the server
    /// reads no more than that for it.
    http_oversized_head_is_431,
    with_http,
    |b: &TestBroker| {
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        request.resize(9000, b'a');
        let answer = exchange(http_addr(b), &request);
        assert_eq!(answer.status, 431, "{}", answer.head);
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.resize(1 << 20, b'a');
        let mut stream = open(http_addr(b));
        // The server stops reading: the write may fail (reset) or stall.
        let _ = stream.write_all(&huge);
        let mut first = [0u8; 12];
        match stream.read_exact(&mut first) {
            Ok(()) => assert_eq!(&first, b"HTTP/1.1 431"),
            Err(e) => assert!(matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof), "{e}"),
        }
        assert_eq!(get(http_addr(b), "/healthz").status, 200);
    }
);

runtime_test!(
    /// A request that does not arrive within the connect timeout gets 408
    /// and is closed.
    http_slow_request_is_408,
    |c: &mut midge::Config| {
        with_http(c);
        c.connect_timeout = Duration::from_millis(300);
    },
    |b: &TestBroker| {
        let started = Instant::now();
        let mut stream = open(http_addr(b));
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: mid").unwrap();
        let answer = read_answer(&mut stream);
        assert_eq!(answer.status, 408, "{}", answer.head);
        assert!(started.elapsed() >= Duration::from_millis(250), "answered after {:?}", started.elapsed());
        assert_eq!(read_answer(&mut open(http_addr(b))).status, 408, "a connection that sends nothing");
    }
);

runtime_test!(
    /// At most 16 HTTP connections are served at once: the 17th is closed
    /// without an answer, and once the others end a new one is served.
    http_connections_are_bounded,
    with_http,
    |b: &TestBroker| {
        let addr = http_addr(b);
        let idle: Vec<TcpStream> = (0..midge::http::MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut extra = open(addr);
        let mut buf = [0u8; 16];
        match extra.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "the 17th connection got an answer"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
        drop(idle);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut stream = open(addr);
            stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            let mut bytes = Vec::new();
            if stream.read_to_end(&mut bytes).is_ok() && bytes.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "no connection served after the idle ones closed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
);

/// Runs `promtool check metrics` on `text`: its exit code and output.
fn promtool_check(text: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}); .ci/run installs it (apt-get install prometheus)"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), said)
}

runtime_test!(
    /// `promtool check metrics` (Debian's prometheus package) finds nothing
    /// to complain about in a real scrape, lint warnings included.
    promtool_check_metrics_passes,
    with_http,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.subscribe(1, &[("t", 1)]);
        c.send(&packets::publish("t", b"x", 1, 1));
        c.expect(&ack(PUBACK, 1));
        let answer = get(http_addr(b), "/metrics");
        assert_eq!(answer.status, 200);
        let (code, said) = promtool_check(&answer.body);
        assert_eq!(code, Some(0), "promtool check metrics failed: {said}\n{}", answer.body);
        assert_eq!(said.trim(), "", "promtool warnings");
        let (code, _) = promtool_check("# TYPE x counter\nx{ 1\n");
        assert_ne!(code, Some(0), "promtool must refuse a broken exposition");
    }
);

/// A child process killed (by its PID) and reaped when dropped, also when
/// the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A query through Prometheus' HTTP API: the first result's value, if any.
fn query(prometheus: SocketAddr, expr: &str) -> Option<f64> {
    let mut stream = TcpStream::connect_timeout(&prometheus, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = format!("GET /api/v1/query?query={expr} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{..},"value":[1700000000.1,"5"]}]}}
    let after = text.split_once("\"value\":[")?.1;
    let quoted = after.split_once(",\"")?.1;
    quoted.split_once('"')?.0.parse().ok()
}

runtime_test!(
    /// A real Prometheus server (Debian's `prometheus`) scrapes midge every
    /// second; after traffic, midge's counter reads back through
    /// Prometheus' query API.
    prometheus_scrapes_midge,
    with_http,
    |b: &TestBroker| {
        let dir = TempDir::new("prometheus");
        let target = http_addr(b);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: midge\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run prometheus ({e}); .ci/run installs it (apt-get install prometheus)"));
        let _prometheus = Killed(child);
        let mut c = b.client("c");
        for pid in 1..=5 {
            c.send(&packets::publish("t", b"x", 1, pid));
            c.expect(&ack(PUBACK, pid));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let expr = "sum(midge_messages_received_total)";
        loop {
            if query(web, expr).is_some_and(|v| v >= 5.0) {
                break;
            }
            let log = std::fs::read_to_string(dir.0.join("prometheus.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "{expr} never reached 5 through Prometheus; its log:\n{log}");
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(c);
    }
);

runtime_kind_test!(
    /// `midge --http-listener ADDR` serves the endpoint and says where.
    binary_http_listener_flag,
    |kind: midge::RuntimeKind| {
        let args = ["--runtime", kind.name(), "--bind", "127.0.0.1:0", "--in-memory", "--http-listener", "127.0.0.1:0"];
        let mut midge = Process::spawn(env!("CARGO_BIN_EXE_midge"), &args);
        let line = midge.wait_for("(HTTP: /metrics, /healthz)");
        let addr: SocketAddr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        assert_eq!(get(addr, "/healthz").status, 200);
        let m = scrape(addr);
        assert!(m.contains_key("midge_messages_received_total{qos=\"0\"}"), "{m:#?}");
    }
);

runtime_test!(
    /// A TLS handshake that fails (plain MQTT sent to a TLS listener) is
    /// counted, and one that the connect timeout cuts short (a client that
    /// sends nothing) too; the listener is labelled `mqtt+tls`.
    metrics_count_tls_handshake_failures,
    |c: &mut midge::Config| {
        with_http(c);
        c.connect_timeout = std::time::Duration::from_millis(300);
        let fixture = |name: &str| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name);
        let tls = midge::config::TlsFiles {
            certfile: fixture("server.pem"),
            keyfile: fixture("server.key"),
            cafile: None,
            require_certificate: false,
            use_identity_as_username: false,
        };
        c.listeners = vec![midge::config::Listener { tls: Some(tls), ..midge::config::Listener::tcp("127.0.0.1:0".parse().unwrap()) }];
    },
    |b: &TestBroker| {
        let mut plain = b.raw();
        plain.send(&packets::connect("plain", true, 60));
        plain.expect_closed_or_reset();
        scrape_until(http_addr(b), "the failed handshake", |m| {
            m.get("midge_tls_handshake_failures_total") == Some(&1.0)
        });
        let mut silent = b.raw();
        silent.expect_closed_or_reset();
        let m = scrape_until(http_addr(b), "the timed-out handshake", |m| {
            m.get("midge_tls_handshake_failures_total") == Some(&2.0)
        });
        let key = format!("midge_connections_total{{listener=\"{}\",kind=\"mqtt+tls\",protocol=\"3.1.1\"}}", b.addr);
        assert_eq!(value(&m, &key), 0.0);
    }
);

runtime_test!(
    /// Messages queued in a persistent session that expires
    /// (`persistent_client_expiration`) are counted as dropped (`expired`).
    metrics_count_messages_of_expired_sessions,
    |c: &mut midge::Config| {
        with_http(c);
        c.session_expiry = Some(Duration::from_secs(1));
    },
    |b: &TestBroker| {
        let mut away = b.persistent("away", false);
        away.subscribe(1, &[("t", 1)]);
        away.send(&DISCONNECT);
        away.expect_closed();
        let mut publisher = b.client("pub");
        for pid in 1..=2 {
            publisher.send(&packets::publish("t", b"x", 1, pid));
            publisher.expect(&ack(PUBACK, pid));
        }
        let m = scrape_until(http_addr(b), "the expired session's messages", |m| {
            m.get("midge_messages_dropped_total{cause=\"expired\"}") == Some(&2.0)
        });
        assert_eq!(value(&m, "midge_sessions_persistent"), 0.0);
        assert_eq!(value(&m, "midge_queued_messages"), 0.0);
    }
);

runtime_kind_test!(
    /// A bridge's state, queue and counts in `/metrics` (promtool-clean) and
    /// in `$SYS/broker/bridge/NAME/...`, connected and then cut off.
    bridge_state_and_counts_in_metrics_and_sys,
    |kind: midge::RuntimeKind| {
        use crate::bridge::{bridge_to, publish, topic, wait_until_up};
        use midge::config::BridgeDirection;
        use midge::packet::QoS;
        let central = TestBroker::start(kind, |_| {});
        let out = vec![topic("data/#", BridgeDirection::Out, QoS::AtLeastOnce, "", "")];
        let edge = TestBroker::start(kind, |c| {
            with_http(c);
            c.sys_interval = Duration::from_millis(200);
            c.bridges = vec![bridge_to(central.addr, out)];
        });
        wait_until_up(&edge);
        let mut far = central.client("far");
        far.subscribe(1, &[("data/#", 1)]);
        let mut near = edge.client("near");
        for pid in 1..=3 {
            publish(&mut near, "data/x", b"v", 1, pid, false);
            far.receive_and_ack(1);
        }
        let http = http_addr(&edge);
        let samples = scrape_until(http, "3 forwarded", |s| {
            s.get("midge_bridge_forwarded_messages_total{bridge=\"edge\"}") == Some(&3.0)
        });
        assert_eq!(value(&samples, "midge_bridge_connected{bridge=\"edge\"}"), 1.0);
        assert_eq!(value(&samples, "midge_bridge_connects_total{bridge=\"edge\"}"), 1.0);
        assert_eq!(value(&samples, "midge_bridge_queued_messages{bridge=\"edge\"}"), 0.0);
        let (code, out) = promtool_check(&get(http, "/metrics").body);
        assert_eq!(code, Some(0), "promtool: {out}");
        let mut sys = edge.client("sys-watch");
        sys.subscribe(1, &[("$SYS/broker/bridge/edge/messages/forwarded", 0)]);
        sys.recv_until(TIMEOUT, "$SYS forwarded 3", |p| (p.publish().2 == b"3").then_some(()));

        drop(far);
        drop(central);
        scrape_until(http, "disconnected", |s| s.get("midge_bridge_connected{bridge=\"edge\"}") == Some(&0.0));
        publish(&mut near, "data/x", b"queued", 1, 9, false);
        scrape_until(http, "1 queued", |s| s.get("midge_bridge_queued_messages{bridge=\"edge\"}") == Some(&1.0));
        let mut state = edge.client("state-watch");
        state.subscribe(1, &[("$SYS/broker/bridge/edge/state", 0)]);
        state.recv_until(TIMEOUT, "$SYS state 0", |p| (p.publish().2 == b"0").then_some(()));
    }
);
