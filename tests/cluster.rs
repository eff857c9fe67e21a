//! A cluster of nodes on Redis (issue 15, in progress; docs/cluster.md):
//! three nodes on one `redis-server` of the test's own, each node a broker
//! on either runtime. What is built so far: routes replicated through
//! Redis, a publish on any node delivered once to every matching
//! subscriber on every node, a node's last unsubscription and its leaving
//! taking its routes away.

use crate::support::{TempDir, TestBroker, packets, process, process::Process};
use midge::RuntimeKind;
use midge::config::Cluster;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A `redis-server` on a free port with its own directory, killed on drop.
struct Redis {
    process: Option<Process>,
    port: u16,
    dir: TempDir,
    /// Its append-only file is fsync'd on every write (the settings
    /// docs/cluster.md recommends), so that a restart keeps what it said
    /// it had.
    durable: bool,
}

impl Redis {
    fn start() -> Redis {
        Self::with(false)
    }

    /// With `appendonly yes` and `appendfsync always`.
    fn durable() -> Redis {
        Self::with(true)
    }

    fn with(durable: bool) -> Redis {
        let dir = TempDir::new("redis");
        // redis-server has no "port 0".
        let port = crate::support::free_port();
        let mut redis = Redis { process: None, port, dir, durable };
        redis.run();
        redis
    }

    fn run(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", "", "--dir", self.dir.arg()];
        args.extend_from_slice(match self.durable {
            true => &["--appendonly", "yes", "--appendfsync", "always"],
            false => &["--appendonly", "no"],
        });
        let mut process = Process::spawn("redis-server", &args);
        process.wait_for("Ready to accept connections");
        self.process = Some(process);
    }

    /// kill -9, then a new server on the same port and directory.
    fn kill_and_restart(&mut self) {
        let old = self.process.take().expect("running");
        assert_eq!(process::run("kill", &["-KILL", &old.id().to_string()]), Some(0));
        drop(old);
        self.run();
    }

    /// Runs `redis-cli` against this server.
    fn cli(&self, args: &[&str]) {
        let port = self.port.to_string();
        let mut all = vec!["-p", &port];
        all.extend_from_slice(args);
        assert_eq!(process::run("redis-cli", &all), Some(0), "redis-cli {args:?}");
    }

    /// `redis-cli ARGS`' output.
    fn query(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli").arg("-p").arg(self.port.to_string()).args(args).output();
        String::from_utf8_lossy(&out.expect("redis-cli runs").stdout).trim().to_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A node; its queues take a whole test's stream (past the default 1000,
/// a persistent session's queue drops and counts what does not fit).
fn node(kind: RuntimeKind, redis: &Redis, id: &str) -> TestBroker {
    node_at(kind, &redis.url(), id, Cluster::LEASE)
}

/// A node reaching Redis at `url`, with `lease`.
fn node_at(kind: RuntimeKind, url: &str, id: &str, lease: Duration) -> TestBroker {
    TestBroker::start(kind, |c| {
        c.cluster = Some(Cluster { lease, ..Cluster::new(url, id) });
        c.max_queued = 100_000;
    })
}

/// A TCP relay to a Redis server that the test can cut (every connection
/// through it closed, new ones closed as they come) and restore: a node
/// reaching Redis through it is cut off from the cluster.
struct Relay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(redis: &Redis) -> Relay {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = ("127.0.0.1", redis.port);
        let relay = Relay { port, cut: Default::default(), open: Default::default() };
        let (cut, open) = (relay.cut.clone(), relay.open.clone());
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream) else { continue };
                let mut open = open.lock().unwrap();
                open.extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    })
                };
                pipe(down.try_clone().unwrap(), up.try_clone().unwrap());
                pipe(up, down);
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Waits until `from` forwards a message on `topic` to exactly `nodes`
/// (the route table and membership travel through Redis on their own
/// threads; there is no event to await from outside).
fn wait_for_routes(from: &TestBroker, topic: &str, nodes: &[&str]) {
    wait_for_routes_as(from, topic, nodes, |now| now == nodes);
}

/// Waits until `from` routes `topic` to `nodes` at least (a node a
/// session left keeps its routes for a while, see docs/cluster.md).
fn wait_for_routes_including(from: &TestBroker, topic: &str, nodes: &[&str]) {
    wait_for_routes_as(from, topic, nodes, |now| nodes.iter().all(|n| now.iter().any(|m| m == n)));
}

fn wait_for_routes_as(from: &TestBroker, topic: &str, nodes: &[&str], done: impl Fn(&[String]) -> bool) {
    let peers = from.broker.peers().expect("a cluster node");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = peers.nodes_for(topic);
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}: routes to {now:?}, not {nodes:?}, after 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until each of `nodes` has read and acknowledged every entry of its
/// stream, all at one moment (one script): what was forwarded to them is
/// in their sessions (a node acknowledges an entry once it applied it),
/// and so is what one of them passed on to another.
fn wait_for_applied(redis: &Redis, nodes: &[&str]) {
    const ALL_APPLIED: &str = "
for _, key in ipairs(KEYS) do
  local s = redis.call('XINFO', 'STREAM', key)
  local last
  for j = 1, #s, 2 do if s[j] == 'last-generated-id' then last = s[j + 1] end end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local delivered, pending
    for j = 1, #g, 2 do
      if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
      if g[j] == 'pending' then pending = g[j + 1] end
    end
    if delivered ~= last or pending ~= 0 then return 0 end
  end
end
return 1";
    let keys: Vec<String> = nodes.iter().map(|n| format!("midge:in:{n}")).collect();
    let count = keys.len().to_string();
    let mut args = vec!["EVAL", ALL_APPLIED, &count];
    args.extend(keys.iter().map(String::as_str));
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.query(&args) != "1" {
        assert!(Instant::now() < deadline, "{nodes:?} have not applied their streams after 15 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// QoS 0, 1 and 2 PUBLISHes from `publisher`, each acknowledged as its QoS
/// says, then a QoS 0 marker.
fn publish_all(publisher: &mut crate::support::client::Raw, prefix: &str) {
    publisher.send(&packets::publish0("s/1", format!("{prefix}0").as_bytes()));
    publisher.send(&packets::publish("s/1", format!("{prefix}1").as_bytes(), 1, 1));
    publisher.expect(&packets::ack(0x40, 1));
    publisher.send(&packets::publish("s/1", format!("{prefix}2").as_bytes(), 2, 2));
    publisher.expect(&packets::ack(0x50, 2));
    publisher.send(&packets::ack(0x62, 2));
    publisher.expect(&packets::ack(0x70, 2));
    publisher.send(&packets::publish0("s/1", format!("{prefix}-end").as_bytes()));
}

fn payloads(received: Vec<(String, u8, Vec<u8>, bool)>) -> Vec<(String, u8)> {
    received.into_iter().map(|(_, qos, payload, _)| (String::from_utf8(payload).unwrap(), qos)).collect()
}

runtime_kind_test!(
    /// MQTT-3.3.5-1 across nodes: a message published on any node reaches
    /// every matching subscription on every node, once per client at the
    /// subscription's QoS (a client with two matching filters gets one
    /// copy), in the publisher's order; the publisher's own node delivers
    /// locally and forwards once per other node.
    cluster_mqtt_3_3_5_1_a_publish_on_any_node_reaches_every_matching_subscriber_once,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b, c) = (node(kind, &redis, "a"), node(kind, &redis, "b"), node(kind, &redis, "c"));
        let mut on_b = b.client("sub-b");
        on_b.subscribe(1, &[("s/+", 1)]);
        let mut on_c = c.client("sub-c");
        on_c.subscribe(1, &[("s/#", 2), ("s/1", 0)]);
        wait_for_routes(&a, "s/1", &["b", "c"]);
        wait_for_routes(&b, "s/1", &["c"]);

        let mut publisher = a.client("pub-a");
        publish_all(&mut publisher, "a");
        let expected = |p: &str, top: u8| {
            vec![(format!("{p}0"), 0), (format!("{p}1"), 1), (format!("{p}2"), 2.min(top)), (format!("{p}-end"), 0)]
        };
        assert_eq!(payloads(on_b.receive_and_ack(4)), expected("a", 1));
        assert_eq!(payloads(on_c.receive_and_ack(4)), expected("a", 2));

        // From b: b's own subscriber gets it here, c's through the cluster.
        let mut publisher = b.client("pub-b");
        publish_all(&mut publisher, "b");
        assert_eq!(payloads(on_b.receive_and_ack(4)), expected("b", 1));
        assert_eq!(payloads(on_c.receive_and_ack(4)), expected("b", 2));
        on_b.expect_nothing_queued();
        on_c.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// MQTT-3.10.4-6 across nodes: once a node's last subscription to a
    /// filter goes (UNSUBSCRIBE), other nodes stop forwarding to it; a node
    /// that stops leaves the cluster at once, without waiting for its lease.
    cluster_mqtt_3_10_4_6_unsubscribing_and_leaving_take_a_nodes_routes_away,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let mut first = b.client("first");
        first.subscribe(1, &[("u/#", 0)]);
        let mut second = b.client("second");
        second.subscribe(1, &[("u/#", 0)]);
        wait_for_routes(&a, "u/1", &["b"]);
        // One of two subscribers leaving keeps the route.
        first.send(&packets::unsubscribe(2, &["u/#"]));
        first.expect(&packets::ack(0xb0, 2));
        let mut publisher = a.client("pub");
        publisher.send(&packets::publish("u/1", b"still", 1, 1));
        publisher.expect(&packets::ack(0x40, 1));
        assert_eq!(payloads(second.receive_and_ack(1)), vec![("still".to_owned(), 0)]);
        second.send(&packets::unsubscribe(2, &["u/#"]));
        second.expect(&packets::ack(0xb0, 2));
        wait_for_routes(&a, "u/1", &[]);

        let mut again = b.client("again");
        again.subscribe(1, &[("u/+", 0)]);
        wait_for_routes(&a, "u/1", &["b"]);
        drop(again);
        drop(b);
        wait_for_routes(&a, "u/1", &[]);
    }
);

runtime_kind_test!(
    /// MQTT-4.3.2-2 (QoS 1) and MQTT-4.3.3-2 (QoS 2) across nodes: the
    /// PUBACK / PUBREC means the message is where the other nodes read it.
    /// While Redis accepts no writes (`CLIENT PAUSE … WRITE`), a publish
    /// to a filter another node has is not acknowledged; once Redis takes
    /// it, the acknowledgement comes and the other node's subscriber gets
    /// the message.
    cluster_mqtt_4_3_2_2_the_acknowledgement_waits_until_redis_has_the_forward,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("w/#", 2)]);
        wait_for_routes(&a, "w/1", &["b"]);
        let mut publisher = a.client("pub");
        redis.cli(&["CLIENT", "PAUSE", "60000", "WRITE"]);
        publisher.send(&packets::publish("w/1", b"one", 1, 7));
        publisher.send(&packets::publish("w/2", b"two", 2, 8));
        publisher.set_read_timeout(Duration::from_millis(500));
        match publisher.try_recv() {
            Ok(p) => panic!("acknowledged while Redis took no writes: {}", p.summary()),
            Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
        }
        publisher.set_read_timeout(Duration::from_secs(20));
        redis.cli(&["CLIENT", "UNPAUSE"]);
        publisher.expect(&packets::ack(0x40, 7));
        publisher.expect(&packets::ack(0x50, 8));
        publisher.send(&packets::ack(0x62, 8));
        publisher.expect(&packets::ack(0x70, 8));
        assert_eq!(payloads(sub.receive_and_ack(2)), vec![("one".to_owned(), 1), ("two".to_owned(), 2)]);
    }
);

/// Waits until `node` holds a retained message on `topic` (`true`) or none.
fn wait_for_retained(node: &TestBroker, topic: &str, held: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.broker.retained_topics().iter().any(|t| &**t == topic) != held {
        assert!(Instant::now() < deadline, "{topic}: retained here is not {held} after 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

runtime_kind_test!(
    /// MQTT-3.3.1-6 and MQTT-3.3.1-10 across nodes: a retained message
    /// published on one node is sent to a new subscription on any node,
    /// including a node that joins later; an empty retained message
    /// published on another node clears it everywhere.
    cluster_mqtt_3_3_1_6_retained_messages_are_the_clusters,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let mut publisher = a.client("pub");
        publisher.send(&packets::publish_with("r/1", b"kept", 1, Some(1), true, false));
        publisher.expect(&packets::ack(0x40, 1));
        wait_for_retained(&b, "r/1", true);
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("r/#", 1)]);
        let got = sub.receive_and_ack(1);
        assert_eq!((got[0].0.as_str(), got[0].2.as_slice(), got[0].3), ("r/1", &b"kept"[..], true));

        let c = node(kind, &redis, "c");
        wait_for_retained(&c, "r/1", true);
        let mut late = c.client("late");
        late.subscribe(1, &[("r/1", 0)]);
        assert_eq!(late.receive_and_ack(1)[0].2, b"kept");

        // Cleared from c: a and b lose it too.
        let mut clearing = c.client("clear");
        clearing.send(&packets::publish_with("r/1", b"", 1, Some(2), true, false));
        clearing.expect(&packets::ack(0x40, 2));
        wait_for_retained(&a, "r/1", false);
        wait_for_retained(&b, "r/1", false);
        let mut fresh = a.client("fresh");
        fresh.subscribe(1, &[("r/#", 1)]);
        fresh.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// MQTT-3.1.4-2 across nodes: a client connecting at one node with a
    /// client id connected at another takes it over; the other node closes
    /// its connection. Taking it back works the same way.
    cluster_mqtt_3_1_4_2_a_client_id_connected_at_another_node_is_taken_over,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let mut first = a.client("roaming");
        let mut second = b.client("roaming");
        first.expect_closed_or_reset();
        second.ping();
        let mut third = a.client("roaming");
        second.expect_closed_or_reset();
        third.ping();
        // Still connected once both nodes' notices were handled: a client
        // on b that takes nothing over is answered after them.
        let mut other = b.client("someone-else");
        other.ping();
        third.ping();
    }
);

/// Connects the persistent session `id` at `node`: the client and Session Present.
fn persistent(node: &TestBroker, id: &str) -> (crate::support::client::Raw, bool) {
    let mut c = node.raw();
    c.send(&packets::connect(id, false, 60));
    let connack = c.recv();
    assert_eq!((connack.header, connack.body[1]), (0x20, 0), "CONNACK accepted");
    (c, connack.body[0] == 1)
}

/// Publishes `payload` on `topic` at QoS 1 from `publisher` and waits for its PUBACK.
fn publish_1(publisher: &mut crate::support::client::Raw, topic: &str, payload: &str, pid: u16) {
    publisher.send(&packets::publish(topic, payload.as_bytes(), 1, pid));
    publisher.expect(&packets::ack(0x40, pid));
}

runtime_kind_test!(
    /// MQTT-3.2.2-2 across nodes: a persistent session follows its client
    /// to whichever node it connects to (Session Present 1): its
    /// subscriptions, what was queued for it while it was away, and what
    /// was sent and not acknowledged (sent again, DUP set, MQTT-4.4.0-1).
    /// The node it left no longer delivers to it (each message comes once),
    /// and connecting back moves it again.
    cluster_mqtt_3_2_2_2_a_persistent_session_moves_to_the_node_its_client_connects_to,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let (mut mover, present) = persistent(&a, "mover");
        assert!(!present);
        mover.subscribe(1, &[("move/#", 1)]);
        mover.send(&packets::DISCONNECT);
        mover.expect_closed();
        let mut publisher = a.client("publisher");
        for n in 1..=3 {
            publish_1(&mut publisher, "move/q", &format!("queued {n}"), n);
        }

        // At b: the session, its queue, and its subscription now routed to b.
        let (mut mover, present) = persistent(&b, "mover");
        assert!(present, "Session Present: the session came from a");
        let queued: Vec<String> =
            mover.receive_and_ack(3).into_iter().map(|(_, _, p, _)| String::from_utf8(p).unwrap()).collect();
        assert_eq!(queued, ["queued 1", "queued 2", "queued 3"]);
        wait_for_routes(&a, "move/q", &["b"]);
        publish_1(&mut publisher, "move/q", "live", 4);
        let live = mover.recv();
        assert_eq!(live.publish().2, b"live", "a message published at a reaches the session at b, once");
        mover.expect_nothing_queued();

        // Back at a with "live" sent and not acknowledged: it comes again.
        // (Once b has recorded that it sent it: a write b makes after a
        // claims the id is refused, see docs/cluster.md.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.query(&["HGET", "midge:session:mover", "prog:4"]) != "1" {
            assert!(Instant::now() < deadline, "b never recorded that it sent the message");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(mover);
        let (mut mover, present) = persistent(&a, "mover");
        assert!(present, "Session Present: the session came back from b");
        let again = mover.recv();
        assert_eq!((again.publish().2.as_slice(), again.dup()), (&b"live"[..], true), "the unacknowledged one, DUP");
        let (_, pid, _) = again.publish();
        mover.send(&packets::ack(0x40, pid.unwrap()));
        wait_for_routes(&b, "move/q", &["a"]);
        let mut from_b = b.client("publisher-b");
        publish_1(&mut from_b, "move/q", "from b", 1);
        assert_eq!(mover.recv().publish().2, b"from b");
        mover.expect_nothing_queued();
    }
);

/// A thread that publishes `1` to `n` (as text) on `topic` at QoS 1, each
/// after the last's PUBACK (which may wait up to 60 s), and the count
/// acknowledged so far.
fn publish_numbered(
    addr: std::net::SocketAddr,
    id: &'static str,
    topic: &'static str,
    n: usize,
) -> (std::sync::Arc<AtomicUsize>, std::thread::JoinHandle<()>) {
    let acked = std::sync::Arc::new(AtomicUsize::new(0));
    let count = acked.clone();
    let publisher = std::thread::spawn(move || {
        let mut p = crate::support::client::Raw::connect(addr);
        p.send(&packets::connect(id, true, 0));
        p.expect(&packets::CONNACK_ACCEPTED);
        p.set_read_timeout(Duration::from_secs(60));
        for i in 1..=n {
            let pid = (i % 60_000 + 1) as u16;
            p.send(&packets::publish(topic, i.to_string().as_bytes(), 1, pid));
            p.expect(&packets::ack(0x40, pid));
            count.store(i, Ordering::SeqCst);
        }
    });
    (acked, publisher)
}

/// Reads and acknowledges QoS 1 PUBLISHes on `c` until the broker closes
/// it or `until` says enough, collecting their payloads as numbers.
fn read_numbers(
    c: &mut crate::support::client::Raw,
    got: &mut std::collections::BTreeSet<u32>,
    until: impl Fn(&std::collections::BTreeSet<u32>) -> bool,
) {
    while !until(got) {
        let Ok(p) = c.try_recv() else { return };
        if p.header >> 4 != 3 {
            continue;
        }
        let (_, pid, payload) = p.publish();
        let _ = c.try_send(&packets::ack(0x40, pid.expect("QoS 1")));
        got.insert(String::from_utf8(payload).unwrap().parse().unwrap());
    }
}

/// A persistent session moves from a to b while a publisher at `at` (a,
/// b, or a third node c) publishes to it without pause: every message
/// acknowledged to the publisher reaches the client, at a before the
/// takeover or at b after (MQTT-4.3.2-2 across a takeover; a copy may
/// come twice, at least once).
fn takeover_under_flow(kind: RuntimeKind, at: &str) {
    let redis = Redis::start();
    let (a, b, c) = (node(kind, &redis, "a"), node(kind, &redis, "b"), node(kind, &redis, "c"));
    let publishing = match at {
        "a" => &a,
        "b" => &b,
        _ => &c,
    };
    let (mut old, _) = persistent(&a, "flowing");
    old.subscribe(1, &[("flow/#", 1)]);
    wait_for_routes(&c, "flow/1", &["a"]);
    wait_for_routes(&b, "flow/1", &["a"]);
    const N: u32 = 3000;
    let (_, publisher) = publish_numbered(publishing.addr, "flow-pub", "flow/1", N as usize);
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let old_seen = seen.clone();
    let old_reader = std::thread::spawn(move || {
        let mut got = std::collections::BTreeSet::new();
        read_numbers(&mut old, &mut got, |got| {
            old_seen.store(got.len(), Ordering::SeqCst);
            false
        });
        got
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::SeqCst) < 500 {
        assert!(Instant::now() < deadline, "the subscriber at a got too little in 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut new, present) = persistent(&b, "flowing");
    assert!(present, "Session Present: the session came from a");
    let mut got = std::collections::BTreeSet::new();
    let new_reader_deadline = Instant::now() + Duration::from_secs(60);
    read_numbers(&mut new, &mut got, |got| got.contains(&N) || Instant::now() > new_reader_deadline);
    publisher.join().unwrap();
    got.extend(old_reader.join().unwrap());
    // What came after N's copy (copies again of what the old connection
    // had and did not acknowledge, a message that travelled longer).
    new.set_read_timeout(Duration::from_millis(500));
    read_numbers(&mut new, &mut got, |_| false);
    let lost: Vec<u32> = (1..=N).filter(|n| !got.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost across the takeover: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}

runtime_kind_test!(
    /// See [`takeover_under_flow`]: the publisher at the node the session
    /// leaves.
    cluster_mqtt_4_3_2_2_a_session_taken_over_mid_stream_loses_nothing_published_where_it_was,
    |kind: RuntimeKind| takeover_under_flow(kind, "a")
);

runtime_kind_test!(
    /// See [`takeover_under_flow`]: the publisher at the node the session
    /// goes to.
    cluster_mqtt_4_3_2_2_a_session_taken_over_mid_stream_loses_nothing_published_where_it_goes,
    |kind: RuntimeKind| takeover_under_flow(kind, "b")
);

runtime_kind_test!(
    /// See [`takeover_under_flow`]: the publisher at a third node.
    cluster_mqtt_4_3_2_2_a_session_taken_over_mid_stream_loses_nothing_published_elsewhere,
    |kind: RuntimeKind| takeover_under_flow(kind, "c")
);

runtime_kind_test!(
    /// A node whose lease ended with thousands of persistent sessions: one
    /// live node takes every one of them (in replies of at most 1,000), and
    /// each resumes there with Session Present 1 (MQTT-3.2.2-2), also a
    /// client that connects there while it takes them.
    cluster_mqtt_3_2_2_2_thousands_of_a_dead_nodes_sessions_are_all_taken_over,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let seen = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
        // What a node "ghost" that died left: 2,500 sessions it owned.
        let made = "for i = 1, tonumber(ARGV[1]) do
              local id = 'ghost-' .. i
              redis.call('HSET', 'midge:session:' .. id, 'id', id, 'seen', ARGV[2])
              redis.call('SADD', 'midge:sessions:ghost', 'midge:session:' .. id)
              redis.call('HSET', 'midge:owner:' .. id, 'node', 'ghost', 'token', 1)
            end
            return redis.call('SADD', 'midge:members', 'ghost')";
        assert_eq!(redis.query(&["EVAL", made, "0", "2500", &seen]), "1");
        let a = node(kind, &redis, "a");
        // Clients that connect while a takes the sessions over (before,
        // their claim takes theirs; meanwhile, it waits for a to have it).
        for i in (1..=2500).step_by(25) {
            let id = format!("ghost-{i}");
            let (_, present) = persistent(&a, &id);
            assert!(present, "{id}: Session Present, connecting while a takes the sessions over");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while redis.query(&["SCARD", "midge:sessions:a"]) != "2500" {
            let left = redis.query(&["SCARD", "midge:sessions:ghost"]);
            assert!(Instant::now() < deadline, "a took {} of 2500 sessions in 15 s", 2500 - left.parse::<i32>().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(redis.query(&["SCARD", "midge:sessions:ghost"]), "0");
        for id in ["ghost-1", "ghost-1234", "ghost-2500"] {
            assert_eq!(redis.query(&["HGET", &format!("midge:owner:{id}"), "node"]), "a");
            let (_, present) = persistent(&a, id);
            assert!(present, "{id}: Session Present, its session is a's now");
        }
    }
);

runtime_kind_test!(
    /// A clean start at another node ends the session the client had
    /// elsewhere (MQTT-3.1.2-4 across nodes): nothing of it comes back.
    cluster_mqtt_3_1_2_4_a_clean_start_at_another_node_ends_the_session_there,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let (mut mover, _) = persistent(&a, "cleaner");
        mover.subscribe(1, &[("clean/#", 1)]);
        drop(mover);
        let mut publisher = a.client("publisher");
        publish_1(&mut publisher, "clean/1", "old", 1);
        let mut fresh = b.raw();
        fresh.send(&packets::connect("cleaner", true, 60));
        fresh.expect(&packets::CONNACK_ACCEPTED);
        drop(fresh);
        let (mut back, present) = persistent(&a, "cleaner");
        assert!(!present, "the session a had is gone");
        back.expect_nothing_queued();
    }
);

runtime_kind_test!(
    /// MQTT-3.1.2-23 across nodes: a session whose Session Expiry Interval
    /// passed while its client was away ends (in Redis too): its client
    /// connecting to another node afterwards finds none (Session Present
    /// 0), while one that has not expired moves with its client.
    cluster_mqtt_3_1_2_23_a_session_expires_wherever_its_client_connects_next,
    |kind: RuntimeKind| {
        use crate::support::v5::V5;
        let redis = Redis::start();
        let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
        let expiring = |addr, id: &str, secs| {
            V5::accepted(addr, id, |c| {
                c.clean_start = false;
                c.properties.session_expiry = Some(secs);
            })
        };
        let (mut short, _) = expiring(a.addr, "short", 1);
        short.subscribe("exp/#", 1);
        short.disconnect();
        let (mut long, _) = expiring(a.addr, "long", 60);
        long.subscribe("exp/#", 1);
        long.disconnect();
        let deadline = Instant::now() + Duration::from_secs(15);
        while redis.query(&["EXISTS", "midge:session:short"]) != "0" {
            assert!(Instant::now() < deadline, "the expired session is still in Redis");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_short, connack) = expiring(b.addr, "short", 60);
        assert!(!connack.session_present, "the expired session came back");
        let (_long, connack) = expiring(b.addr, "long", 60);
        assert!(connack.session_present, "the session that had not expired moved to b");
    }
);

/// Fencing: a node's writes to a persistent session in Redis are applied
/// only while the node owns the client id. Once another node claimed it,
/// the first can neither queue, acknowledge nor delete anything of it (a
/// message it queued for it goes to the new owner's stream, for that
/// session, instead of being lost); its writes to sessions it still owns
/// go through in the same commit.
#[test]
fn cluster_a_node_that_lost_a_client_id_cannot_write_its_session() {
    use midge::session::Message;
    use midge::store::{Op, Store};
    let redis = Redis::start();
    let mut store = midge::cluster::RedisStore::open(&redis.url(), "a", |_| false).expect("Redis");
    let (mine, lost): (std::sync::Arc<str>, std::sync::Arc<str>) = ("mine".into(), "lost".into());
    redis.cli(&["HSET", "midge:owner:mine", "node", "a", "token", "1"]);
    redis.cli(&["HSET", "midge:owner:lost", "node", "a", "token", "2"]);
    let message = |topic: &str| {
        Message::new(topic.into(), bytes::Bytes::from_static(b"m"), midge::packet::QoS::AtLeastOnce, false)
    };
    for id in [&mine, &lost] {
        store.apply(&[Op::Session(id.clone(), Some(1)), Op::Message(id.clone(), 1, Some(message("t/1")))]).unwrap();
    }
    // Node b claims "lost" (as the claim script does: owner, and where the
    // session came from).
    redis.cli(&["HSET", "midge:owner:lost", "node", "b", "token", "3"]);
    redis.cli(&["HSET", "midge:session:lost", "from", "a"]);
    store
        .apply(&[
            Op::Message(lost.clone(), 1, None),
            Op::Message(lost.clone(), 2, Some(message("t/2"))),
            Op::Message(mine.clone(), 2, Some(message("t/2"))),
            Op::Session(lost.clone(), None),
        ])
        .unwrap();
    let fields = |id: &str| {
        let mut f: Vec<String> = redis
            .query(&["HKEYS", &format!("midge:session:{id}")])
            .lines()
            .filter(|l| l.starts_with("msg:"))
            .map(str::to_owned)
            .collect();
        f.sort();
        f
    };
    assert_eq!(fields("lost"), ["msg:1"], "b's session is as a left it when b claimed it");
    assert_eq!(fields("mine"), ["msg:1", "msg:2"], "a's own session took its write");
    assert_eq!(redis.query(&["SISMEMBER", "midge:sessions:a", "midge:session:lost"]), "1", "not deleted by a");
    let sent_on = redis.query(&["XRANGE", "midge:in:b", "-", "+"]);
    assert!(sent_on.contains("to") && sent_on.contains("lost") && sent_on.contains("t/2"), "sent on to b: {sent_on}");
}

/// `GET /metrics` from `addr`: each sample line's name (with labels) and value.
fn metrics(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

runtime_kind_test!(
    /// The cluster in `$SYS` and on the metrics endpoint: live nodes (this
    /// one included), the other nodes' filters in the route table, the
    /// messages forwarded.
    cluster_membership_routes_and_forwarding_show_in_sys_and_metrics,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let url = redis.url();
        let a = TestBroker::start(kind, |c| {
            c.cluster = Some(Cluster::new(url, "a"));
            c.http_listener = Some("127.0.0.1:0".parse().unwrap());
            c.sys_interval = Duration::from_secs(1);
        });
        let (b, _c) = (node(kind, &redis, "b"), node(kind, &redis, "c"));
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("m/#", 0)]);
        wait_for_routes(&a, "m/1", &["b"]);
        let mut publisher = a.client("pub");
        publisher.send(&packets::publish("m/1", b"x", 1, 1));
        publisher.expect(&packets::ack(0x40, 1));
        assert_eq!(payloads(sub.receive_and_ack(1)), vec![("x".to_owned(), 0)]);

        let mut watcher = a.client("watcher");
        watcher.subscribe(1, &[("$SYS/broker/cluster/#", 0)]);
        let shows = |topic: &'static str, value: &'static [u8]| {
            move |p: &crate::support::client::Received| {
                let (t, _, v) = p.publish();
                (t == topic && v == value).then_some(())
            }
        };
        watcher.recv_until(Duration::from_secs(15), "3 nodes in $SYS", shows("$SYS/broker/cluster/nodes", b"3"));
        watcher.recv_until(Duration::from_secs(15), "1 route in $SYS", shows("$SYS/broker/cluster/routes", b"1"));
        let forwarded = "$SYS/broker/cluster/messages/forwarded";
        watcher.recv_until(Duration::from_secs(15), "1 forwarded in $SYS", shows(forwarded, b"1"));
        let m = metrics(a.http.expect("http_listener is set"));
        assert_eq!(m.get("midge_cluster_nodes"), Some(&3.0), "{m:?}");
        assert_eq!(m.get("midge_cluster_routes"), Some(&1.0));
        assert_eq!(m.get("midge_cluster_forwarded_messages_total"), Some(&1.0));
        assert_eq!(m.get("midge_cluster_dropped_messages_total"), Some(&0.0));
    }
);

/// Publishes QoS 0 probes at node `from` until a subscriber at node `to`
/// receives one: then `from` routes to `to` every filter `to` had before
/// (route changes of one node are applied in order).
fn wait_until_routed(from: std::net::SocketAddr, to: std::net::SocketAddr) {
    let clean = |addr, id| {
        let mut c = crate::support::client::Raw::connect(addr);
        c.send(&packets::connect(id, true, 0));
        c.expect(&packets::CONNACK_ACCEPTED);
        c
    };
    let (mut watcher, mut prober) = (clean(to, "watcher"), clean(from, "prober"));
    watcher.subscribe(1, &[("probe", 0)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    watcher.set_read_timeout(Duration::from_millis(50));
    loop {
        assert!(Instant::now() < deadline, "probes from {from} never reached {to}");
        prober.send(&packets::publish0("probe", b"probe"));
        if watcher.try_recv().is_ok() {
            return;
        }
    }
}

/// Connects the persistent session `crash-sub` at `addr` again (Session
/// Present) and receives until every message in `acked` has come (at most
/// 30 s; forwarded ones may still be on their way), then until nothing
/// more comes; panics naming `when` if one is missing.
fn receive_every_acknowledged(
    addr: std::net::SocketAddr,
    subscriber: &mut crate::crash::Subscriber,
    acked: &[u32],
    when: &str,
) {
    let (mut sub, present) = crate::crash::Subscriber::connect_as(addr, "crash-sub");
    assert!(present, "the persistent session is still there");
    let missing = |s: &crate::crash::Subscriber| {
        let seen: std::collections::HashSet<u32> = s.delivered.iter().map(|(n, _)| *n).collect();
        acked.iter().filter(|n| !seen.contains(n)).count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    sub.set_read_timeout(Duration::from_millis(200));
    while missing(subscriber) > 0 && Instant::now() < deadline {
        if let Ok(p) = sub.try_recv() {
            subscriber.handle(&mut sub, p);
        }
    }
    sub.set_read_timeout(Duration::from_secs(20));
    subscriber.drain(&mut sub);
    let seen: std::collections::HashSet<u32> = subscriber.delivered.iter().map(|(n, _)| *n).collect();
    let lost: Vec<u32> = acked.iter().copied().filter(|n| !seen.contains(n)).take(20).collect();
    assert_eq!(missing(subscriber), 0, "acknowledged messages lost ({when}), the first: {lost:?}");
}

/// Two midge processes on one Redis, for the kill -9 tests: node b with
/// the persistent session `crash-sub` (QoS 2 on `crash/#`), its client
/// left reading in a thread until b dies (`online`) or disconnected, then
/// node a, whose routes reach b. `extra` goes on both nodes' command line,
/// `b_env` in b's environment.
struct Pair {
    redis: Redis,
    runtime: &'static str,
    extra: Vec<&'static str>,
    /// Node a's data directory, kept for as long as a runs.
    _data_a: TempDir,
    data_b: TempDir,
    a: Process,
    addr_a: std::net::SocketAddr,
    b: Process,
    addr_b: std::net::SocketAddr,
    online: Option<std::thread::JoinHandle<crate::crash::Subscriber>>,
}

impl Pair {
    fn start(
        runtime: &'static str,
        redis: Redis,
        extra: &[&'static str],
        b_env: &[(&str, &str)],
        online: bool,
    ) -> Pair {
        use crate::crash::Subscriber;
        let (data_a, data_b) = (TempDir::new("cluster-a"), TempDir::new("cluster-b"));
        let (b, addr_b) = Self::run(runtime, &redis, extra, &data_b, "b", b_env);
        let (mut sub, _) = Subscriber::connect_as(addr_b, "crash-sub");
        sub.subscribe(1, &[("crash/#", 2)]);
        let online = match online {
            true => Some(std::thread::spawn(move || {
                let mut s = Subscriber::default();
                s.receive_until_killed(sub);
                s
            })),
            false => {
                sub.send(&packets::DISCONNECT);
                sub.expect_closed();
                None
            }
        };
        let (a, addr_a) = Self::run(runtime, &redis, extra, &data_a, "a", &[]);
        wait_until_routed(addr_a, addr_b);
        Pair { redis, runtime, extra: extra.to_vec(), _data_a: data_a, data_b, a, addr_a, b, addr_b, online }
    }

    fn run(
        runtime: &str,
        redis: &Redis,
        extra: &[&str],
        data: &TempDir,
        id: &str,
        env: &[(&str, &str)],
    ) -> (Process, std::net::SocketAddr) {
        let url = redis.url();
        let mut args = vec!["--cluster-redis", url.as_str(), "--node-id", id];
        args.extend_from_slice(extra);
        crate::binary::start_with_env(runtime, data, &args, env)
    }

    /// Starts node b again on its data directory.
    fn restart_b(&mut self) {
        (self.b, self.addr_b) = Self::run(self.runtime, &self.redis, &self.extra, &self.data_b, "b", &[]);
    }

    /// What the online client of `crash-sub` received until b died.
    fn online_received(&mut self) -> crate::crash::Subscriber {
        self.online.take().expect("an online subscriber").join().unwrap()
    }
}

fn kill_9(p: &Process) {
    assert_eq!(process::run("kill", &["-KILL", &p.id().to_string()]), Some(0));
}

/// kill -9 of the node a publisher is connected to, mid-stream and while
/// Redis takes no writes: every QoS 1 and QoS 2 message it acknowledged
/// reaches a persistent subscriber on another node (QoS 2 once), because
/// the acknowledgement waited for Redis.
fn kill_9_of_the_publishing_node(runtime: &'static str, kill_after: usize) {
    use crate::crash::{Subscriber, publish_stream};
    let pair = Pair::start(runtime, Redis::start(), &["--max-queued-messages", "100000"], &[], false);
    let (redis, addr_a, addr_b) = (&pair.redis, pair.addr_a, pair.addr_b);

    let (progress, reached) = std::sync::mpsc::channel();
    let publisher = std::thread::spawn(move || publish_stream(addr_a, 20_000, kill_after, progress));
    reached.recv_timeout(Duration::from_secs(60)).expect("publisher made progress");
    // The kill lands while Redis takes no writes: whatever a acknowledged
    // in that time and had not forwarded would be lost. (Time passing is
    // the point here: there is no event to wait for.)
    redis.cli(&["CLIENT", "PAUSE", "2000", "WRITE"]);
    std::thread::sleep(Duration::from_millis(150));
    kill_9(&pair.a);
    let acked = publisher.join().unwrap();
    redis.cli(&["CLIENT", "UNPAUSE"]);

    // What a acknowledged is in Redis: b delivers it, however late.
    let mut subscriber = Subscriber::default();
    receive_every_acknowledged(addr_b, &mut subscriber, &acked, &format!("killed after {kill_after} acks"));
    qos_2_once(&subscriber);
    assert!(acked.len() >= kill_after);
}

/// Every QoS 2 message `subscriber` received came once.
#[track_caller]
fn qos_2_once(subscriber: &crate::crash::Subscriber) {
    let mut counts = std::collections::HashMap::new();
    subscriber.delivered.iter().for_each(|(n, _)| *counts.entry(*n).or_insert(0) += 1);
    for (n, qos) in &subscriber.delivered {
        if *qos == 2 {
            assert_eq!(counts[n], 1, "QoS 2 message {n} delivered twice");
        }
    }
}

#[cfg(feature = "smol")]
#[test]
fn cluster_kill_9_of_the_publishing_node_loses_nothing_acknowledged_smol() {
    for kill_after in [50, 2000] {
        kill_9_of_the_publishing_node("smol", kill_after);
    }
}

#[cfg(feature = "async-std")]
#[test]
fn cluster_kill_9_of_the_publishing_node_loses_nothing_acknowledged_async_std() {
    for kill_after in [50, 2000] {
        kill_9_of_the_publishing_node("async-std", kill_after);
    }
}

/// kill -9 of the node a persistent subscriber is on, mid-stream from a
/// publisher on another node, then a restart on the same store: every
/// message the publisher's node acknowledged reaches the subscriber, those
/// sent while its node was down included (they wait in its stream), and
/// every QoS 2 message once.
fn kill_9_of_the_receiving_node(runtime: &'static str, kill_after: usize) {
    use crate::crash::publish_stream;
    let mut pair = Pair::start(runtime, Redis::start(), &["--max-queued-messages", "100000"], &[], true);
    let addr_a = pair.addr_a;
    let (progress, reached) = std::sync::mpsc::channel();
    let publisher = std::thread::spawn(move || publish_stream(addr_a, 4000, kill_after, progress));
    reached.recv_timeout(Duration::from_secs(60)).expect("publisher made progress");
    kill_9(&pair.b);
    let mut subscriber = pair.online_received();
    pair.restart_b();
    let acked = publisher.join().unwrap();
    assert_eq!(acked.len(), 4000, "the publisher's node acknowledged everything while b was down and back");

    receive_every_acknowledged(pair.addr_b, &mut subscriber, &acked, &format!("b killed after {kill_after} acks"));
    qos_2_once(&subscriber);
}

/// MQTT-4.3.3-2 (exactly once) across the cluster: the receiving node is
/// killed at the worst moment, after the copies a forwarded entry made for
/// a persistent session are committed and before the entry is
/// acknowledged to Redis (the test hook stalls it there). After a restart
/// Redis hands the entry over again; the node knows it applied it (the
/// entry's id was committed with the copies) and does not queue its
/// messages twice (QoS 1 ones neither). Nothing acknowledged is lost.
fn kill_9_between_commit_and_xack(runtime: &'static str) {
    use crate::crash::{Subscriber, publish_stream};
    let stall = [(midge::cluster::STALL_BEFORE_ACK_ENV, "1")];
    let mut pair = Pair::start(runtime, Redis::start(), &[], &stall, false);
    let (progress, _) = std::sync::mpsc::channel();
    let acked = publish_stream(pair.addr_a, 200, 0, progress);
    assert_eq!(acked.len(), 200, "a acknowledged every message (Redis has them)");
    pair.b.wait_for("stalling before the XACK");
    kill_9(&pair.b);
    pair.restart_b();

    let mut subscriber = Subscriber::default();
    receive_every_acknowledged(pair.addr_b, &mut subscriber, &acked, "b killed between its commit and its XACK");
    assert!(subscriber.delivered.iter().any(|(_, qos)| *qos == 2), "QoS 2 messages were among them");
    qos_2_once(&subscriber);
    // The session was offline throughout: nothing was sent twice, so a
    // second copy of any message (QoS 1 too) is the entry routed again.
    let mut numbers: Vec<u32> = subscriber.delivered.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), subscriber.delivered.len(), "a message was queued twice: {:?}", subscriber.delivered);
}

/// kill -9 of the node a persistent subscriber's session is on: its
/// client connects to another node and gets every message that node had
/// received for it (its queue is in Redis), QoS 2 once. (What was still
/// in the killed node's stream: `kill_9_mid_stream_and_failover`.)
fn kill_9_and_reconnect_elsewhere(runtime: &'static str) {
    use crate::crash::{Subscriber, publish_stream};
    let pair = Pair::start(runtime, Redis::durable(), &[], &[], false);
    let (progress, _) = std::sync::mpsc::channel();
    let acked = publish_stream(pair.addr_a, 500, 0, progress);
    assert_eq!(acked.len(), 500);
    // b has every message once its stream is read and acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pair.redis.query(&["XLEN", "midge:in:b"]) != "0" {
        assert!(Instant::now() < deadline, "b never read its stream");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_9(&pair.b);

    let mut subscriber = Subscriber::default();
    receive_every_acknowledged(pair.addr_a, &mut subscriber, &acked, "b killed, the client at a");
    qos_2_once(&subscriber);
}

/// kill -9 of the node a persistent subscriber's session is on, mid-stream
/// from a publisher on another node, and no restart: the client connecting
/// to the publisher's node gets every message that node acknowledged,
/// before the kill and after, QoS 2 once; whether it connects once the
/// dead node's lease ended (the publisher's node took the session over
/// with what waited in the dead node's stream) or `at_once` (it takes the
/// session itself, and gets what waited there once the lease ends).
fn kill_9_mid_stream_and_failover(runtime: &'static str, kill_after: usize, at_once: bool) {
    use crate::crash::publish_stream;
    let extra = ["--cluster-lease", "3", "--max-queued-messages", "100000"];
    let mut pair = Pair::start(runtime, Redis::durable(), &extra, &[], true);
    let addr_a = pair.addr_a;
    let (progress, reached) = std::sync::mpsc::channel();
    let publisher = std::thread::spawn(move || publish_stream(addr_a, 3000, kill_after, progress));
    reached.recv_timeout(Duration::from_secs(60)).expect("publisher made progress");
    kill_9(&pair.b);
    let mut subscriber = pair.online_received();
    if at_once {
        // Back before the publisher is done, and before b's lease ends.
        let (c, present) = crate::crash::Subscriber::connect_as(addr_a, "crash-sub");
        assert!(present, "the session came from Redis");
        drop(c);
    }
    let acked = publisher.join().unwrap();
    assert_eq!(acked.len(), 3000, "a acknowledged everything, b dead or not");
    if !at_once {
        pair.a.wait_for_within("persistent session(s) are this node's now", Duration::from_secs(30));
    }
    let when = format!("b killed after {kill_after} acks, client back {}", if at_once { "at once" } else { "later" });
    receive_every_acknowledged(addr_a, &mut subscriber, &acked, &when);
    qos_2_once(&subscriber);
}

#[cfg(feature = "smol")]
#[test]
fn cluster_kill_9_mid_stream_the_sessions_fail_over_with_nothing_lost_smol() {
    for (kill_after, at_once) in [(50, false), (1500, false), (50, true), (1500, true)] {
        kill_9_mid_stream_and_failover("smol", kill_after, at_once);
    }
}

#[cfg(feature = "async-std")]
#[test]
fn cluster_kill_9_mid_stream_the_sessions_fail_over_with_nothing_lost_async_std() {
    for (kill_after, at_once) in [(50, false), (1500, false), (50, true), (1500, true)] {
        kill_9_mid_stream_and_failover("async-std", kill_after, at_once);
    }
}

#[cfg(feature = "smol")]
#[test]
fn cluster_mqtt_3_2_2_2_kill_9_of_a_sessions_node_and_its_client_reconnects_elsewhere_smol() {
    kill_9_and_reconnect_elsewhere("smol");
}

#[cfg(feature = "async-std")]
#[test]
fn cluster_mqtt_3_2_2_2_kill_9_of_a_sessions_node_and_its_client_reconnects_elsewhere_async_std() {
    kill_9_and_reconnect_elsewhere("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn cluster_mqtt_4_3_3_2_kill_9_between_commit_and_xack_queues_nothing_twice_smol() {
    kill_9_between_commit_and_xack("smol");
}

#[cfg(feature = "async-std")]
#[test]
fn cluster_mqtt_4_3_3_2_kill_9_between_commit_and_xack_queues_nothing_twice_async_std() {
    kill_9_between_commit_and_xack("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn cluster_kill_9_of_the_receiving_node_loses_nothing_acknowledged_smol() {
    for kill_after in [50, 2000] {
        kill_9_of_the_receiving_node("smol", kill_after);
    }
}

#[cfg(feature = "async-std")]
#[test]
fn cluster_kill_9_of_the_receiving_node_loses_nothing_acknowledged_async_std() {
    for kill_after in [50, 2000] {
        kill_9_of_the_receiving_node("async-std", kill_after);
    }
}

/// kill -9 of Redis mid-stream and a restart on its append-only file
/// (`appendfsync always`): the nodes connect again by themselves, and every
/// message the publisher's node acknowledged, before and after, reaches a
/// persistent subscriber on another node (at least once: a batch whose
/// answer the crash cut off is sent again).
fn redis_restart(kind: RuntimeKind) {
    use crate::crash::{Subscriber, publish_stream};
    let mut redis = Redis::durable();
    let (a, b) = (node(kind, &redis, "a"), node(kind, &redis, "b"));
    let (mut sub, _) = Subscriber::connect_as(b.addr, "crash-sub");
    sub.subscribe(1, &[("crash/#", 1)]);
    sub.send(&packets::DISCONNECT);
    sub.expect_closed();
    wait_for_routes(&a, "crash/data", &["b"]);
    let (progress, reached) = std::sync::mpsc::channel();
    let addr_a = a.addr;
    let publisher = std::thread::spawn(move || publish_stream(addr_a, 3000, 300, progress));
    reached.recv_timeout(Duration::from_secs(60)).expect("publisher made progress");
    redis.kill_and_restart();
    let acked = publisher.join().unwrap();
    assert_eq!(acked.len(), 3000, "the publisher's node acknowledged everything once Redis was back");

    let mut subscriber = Subscriber::default();
    receive_every_acknowledged(b.addr, &mut subscriber, &acked, "across the Redis restart");
}

runtime_kind_test!(
    /// See [`redis_restart`].
    cluster_a_redis_restart_loses_nothing_acknowledged,
    redis_restart
);

/// A CONNECT for `id` with a QoS 1 will on `topic` (MQTT 3.1.1).
fn with_will(id: &str, topic: &str) -> Vec<u8> {
    packets::Connect { client_id: id, will: Some((topic, b"gone", 1, false)), ..packets::Connect::default() }.bytes()
}

runtime_kind_test!(
    /// A node cut off from Redis (a relay the test cuts) serves its clients
    /// until its lease would run out, then closes them (5.0: DISCONNECT
    /// 0x9C, use another server) and refuses new ones with CONNACK 0x03
    /// (server unavailable) rather than risk two owners; its clients' wills
    /// are fired once, by the node that sees its lease end (MQTT-3.1.2-8
    /// across nodes). Once Redis answers again it serves by itself, and
    /// messages cross between the nodes again.
    cluster_a_node_cut_off_from_redis_gives_its_clients_up_after_its_lease_and_rejoins,
    |kind: RuntimeKind| {
        use crate::support::client::Raw;
        use crate::support::v5::V5;
        let redis = Redis::start();
        let relay = Relay::to(&redis);
        let lease = Duration::from_secs(3);
        let a = node_at(kind, &redis.url(), "a", lease);
        let b = node_at(kind, &relay.url(), "b", lease);
        let mut heir = a.client("heir");
        heir.subscribe(1, &[("will/#", 1)]);
        wait_for_routes(&b, "will/b", &["a"]);
        // Its CONNACK means the cluster has its will.
        let mut doomed = Raw::connect(b.addr);
        doomed.send(&with_will("doomed", "will/b"));
        doomed.expect(&packets::CONNACK_ACCEPTED);
        let (mut doomed5, _) = V5::accepted(b.addr, "doomed5", |_| {});
        doomed.ping();

        let cut = Instant::now();
        relay.cut();
        doomed.expect_closed_or_reset();
        doomed5.expect_disconnect(midge::v5::ReasonCode::USE_ANOTHER_SERVER);
        // Kept serving for a while, and at most its lease and a beat.
        assert!(cut.elapsed() >= Duration::from_millis(500), "closed {:?} after the cut", cut.elapsed());
        assert!(cut.elapsed() <= lease + Duration::from_secs(2), "closed {:?} after the cut", cut.elapsed());
        let got = heir.receive_and_ack(1);
        assert_eq!((got[0].0.as_str(), got[0].2.as_slice()), ("will/b", &b"gone"[..]), "a fired b's client's will");
        let mut refused = Raw::connect(b.addr);
        refused.send(&packets::connect("late", true, 60));
        refused.expect(&[0x20, 2, 0, 3]);
        refused.expect_closed_or_reset();

        relay.restore();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut back = loop {
            let mut c = Raw::connect(b.addr);
            c.send(&packets::connect("back", true, 60));
            let answer = c.recv();
            if (answer.header, answer.body.as_slice()) == (0x20, &[0u8, 0][..]) {
                break c;
            }
            assert!(Instant::now() < deadline, "b still refuses clients 20 s after Redis is back");
            std::thread::sleep(Duration::from_millis(100));
        };
        back.subscribe(1, &[("x/#", 1)]);
        wait_for_routes(&a, "x/1", &["b"]);
        let mut publisher = a.client("pub");
        publisher.send(&packets::publish("x/1", b"again", 1, 1));
        publisher.expect(&packets::ack(0x40, 1));
        assert_eq!(payloads(back.receive_and_ack(1)), vec![("again".to_owned(), 1)]);
        // The will came once: b's own look at its wills found it taken.
        publisher.send(&packets::publish("will/marker", b"m", 1, 2));
        publisher.expect(&packets::ack(0x40, 2));
        assert_eq!(heir.receive_and_ack(1)[0].0, "will/marker");
    }
);

/// kill -9 of a node: the node that sees its lease end fires its clients'
/// wills (MQTT-3.1.2-8 across nodes), one with a Will Delay Interval after
/// its delay (MQTT-3.1.3-9), none for a client that connected again at
/// another node within its delay.
fn wills_of_a_killed_node(runtime: &str) {
    use crate::binary::start_with;
    use crate::support::client::Raw;
    use crate::support::v5::V5;
    use midge::v5::{Properties, Will};
    let redis = Redis::start();
    let url = redis.url();
    let (data_a, data_b) = (TempDir::new("cluster-a"), TempDir::new("cluster-b"));
    let node_args = |id: &'static str| ["--cluster-redis", url.as_str(), "--node-id", id, "--cluster-lease", "3"];
    let (_a, addr_a) = start_with(runtime, &data_a, &node_args("a"));
    let (b, addr_b) = start_with(runtime, &data_b, &node_args("b"));
    let mut heir = Raw::connect(addr_a);
    heir.send(&packets::connect("heir", true, 0));
    heir.expect(&packets::CONNACK_ACCEPTED);
    heir.subscribe(1, &[("will/#", 1)]);
    wait_until_routed(addr_b, addr_a);
    let mut now = Raw::connect(addr_b);
    now.send(&with_will("now", "will/now"));
    now.expect(&packets::CONNACK_ACCEPTED);
    let delayed = |id: &str, delay: u32| {
        V5::accepted(addr_b, id, |c| {
            c.clean_start = false;
            c.properties.session_expiry = Some(60);
            let properties = std::sync::Arc::new(Properties { will_delay: Some(delay), ..Properties::default() });
            let (topic, payload) = (format!("will/{id}").into(), bytes::Bytes::from_static(b"late"));
            c.will = Some(Will { topic, payload, qos: midge::packet::QoS::AtLeastOnce, retain: false, properties });
        })
        .0
    };
    let (_later, _back) = (delayed("later", 2), delayed("back", 3));

    let killed = Instant::now();
    assert_eq!(process::run("kill", &["-KILL", &b.id().to_string()]), Some(0));
    drop(b);
    let (_again, _) = V5::accepted(addr_a, "back", |c| {
        c.clean_start = false;
        c.properties.session_expiry = Some(60);
    });
    let got = heir.receive_and_ack(1);
    assert_eq!((got[0].0.as_str(), got[0].2.as_slice()), ("will/now", &b"gone"[..]));
    let got = heir.receive_and_ack(1);
    assert_eq!(got[0].0, "will/later");
    assert!(killed.elapsed() >= Duration::from_secs(2), "will/later came {:?} after the kill", killed.elapsed());
    // will/back would be due a second after will/later: it must not come.
    // (Time passing is the point: there is no event to await.)
    std::thread::sleep(Duration::from_millis(1500));
    heir.expect_nothing_queued();

    // Killed and back within its lease (10 s here): the node itself fires
    // what its earlier life kept, before the others could see it gone.
    let long = ["--cluster-redis", url.as_str(), "--node-id", "b"];
    let (b, addr_b) = start_with(runtime, &data_b, &long);
    wait_until_routed(addr_b, addr_a);
    let mut quick = Raw::connect(addr_b);
    quick.send(&with_will("quick", "will/quick"));
    quick.expect(&packets::CONNACK_ACCEPTED);
    assert_eq!(process::run("kill", &["-KILL", &b.id().to_string()]), Some(0));
    drop(b);
    let restarted = Instant::now();
    let (_b, _) = start_with(runtime, &data_b, &long);
    let got = heir.receive_and_ack(1);
    assert_eq!(got[0].0, "will/quick");
    assert!(restarted.elapsed() < Duration::from_secs(8), "fired {:?} after the restart", restarted.elapsed());
}

#[cfg(feature = "smol")]
#[test]
fn cluster_mqtt_3_1_2_8_a_killed_nodes_wills_fire_on_another_node_smol() {
    wills_of_a_killed_node("smol");
}

#[cfg(feature = "async-std")]
#[test]
fn cluster_mqtt_3_1_2_8_a_killed_nodes_wills_fire_on_another_node_async_std() {
    wills_of_a_killed_node("async-std");
}

runtime_kind_test!(
    /// MQTT-4.8.2-3 across nodes: a shared subscription group with members
    /// on three nodes gets each message once, at one member of one node
    /// (the nodes take turns), while a subscription that is not shared
    /// still gets every message; members on one node share that node's
    /// turns.
    cluster_mqtt_4_8_2_3_a_shared_subscription_group_spanning_nodes_gets_each_message_once,
    |kind: RuntimeKind| {
        let redis = Redis::start();
        let (a, b, c) = (node(kind, &redis, "a"), node(kind, &redis, "b"), node(kind, &redis, "c"));
        let mut members = Vec::new();
        for (at, id) in [(&a, "m-a"), (&b, "m-b1"), (&b, "m-b2"), (&c, "m-c")] {
            let mut member = at.client(id);
            member.subscribe(1, &[("$share/g/s/#", 1)]);
            members.push(member);
        }
        let mut plain = c.client("plain");
        plain.subscribe(1, &[("s/#", 1)]);
        // A node's route changes arrive in order: once its last one is
        // at a, so are the others.
        let mut probes = Vec::new();
        for (at, name) in [(&b, "b"), (&c, "c")] {
            let mut probe = at.client(&format!("probe-{name}"));
            probe.subscribe(1, &[(&format!("probe/{name}"), 0)]);
            wait_for_routes(&a, &format!("probe/{name}"), &[name]);
            probes.push(probe);
        }
        let mut publisher = a.client("pub");
        const N: u16 = 30;
        for i in 1..=N {
            publisher.send(&packets::publish("s/1", i.to_string().as_bytes(), 1, i));
            publisher.expect(&packets::ack(0x40, i));
        }
        let every: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
        // In tens: more than the inflight window unacknowledged stalls.
        let got: Vec<String> = (0..N / 10).flat_map(|_| payloads(plain.receive_and_ack(10))).map(|(p, _)| p).collect();
        assert_eq!(got, every, "the subscription that is not shared gets every message, in order");

        let mut seen: Vec<Vec<String>> = vec![Vec::new(); members.len()];
        let deadline = Instant::now() + Duration::from_secs(20);
        for m in &mut members {
            m.set_read_timeout(Duration::from_millis(50));
        }
        while seen.iter().map(Vec::len).sum::<usize>() < every.len() {
            assert!(Instant::now() < deadline, "the group got {seen:?} of {N} after 20 s");
            for (m, seen) in members.iter_mut().zip(&mut seen) {
                if let Ok(p) = m.try_recv() {
                    let (_, pid, payload) = p.publish();
                    m.send(&packets::ack(0x40, pid.expect("QoS 1")));
                    seen.push(String::from_utf8(payload).unwrap());
                }
            }
        }
        for m in &mut members {
            m.set_read_timeout(Duration::from_secs(20));
            m.expect_nothing_queued();
        }
        let mut all: Vec<String> = seen.concat();
        all.sort_by_key(|p| p.parse::<u16>().unwrap());
        assert_eq!(all, every, "each message once in the group: {seen:?}");
        let per_node = [seen[0].len(), seen[1].len() + seen[2].len(), seen[3].len()];
        assert!(per_node.iter().all(|&n| n > 0), "every node's members took turns: {seen:?}");
    }
);

/// A subscriber on node b that reads nothing (its window and its queue of
/// 10 full) stops b reading its stream; once the stream holds a thousand
/// entries node a's forwarder waits, so the publisher on a is no longer
/// acknowledged: slowed, not dropped. With `a_gives_up` (a's
/// slow_consumer_timeout of 1 s, not 120 s), a stops waiting for b once b
/// read nothing that long, and the publisher finishes while the subscriber
/// still reads nothing. Either way, once the subscriber reads, every
/// message arrives, in order, and nothing was dropped on either node.
fn backpressure(kind: RuntimeKind, a_gives_up: bool) {
    let redis = Redis::start();
    let url = redis.url();
    let a_timeout = Duration::from_secs(if a_gives_up { 1 } else { 120 });
    let a = TestBroker::start(kind, |c| {
        c.cluster = Some(Cluster::new(url.clone(), "a"));
        c.slow_consumer_timeout = a_timeout;
    });
    let b = TestBroker::start(kind, |c| {
        c.cluster = Some(Cluster::new(url, "b"));
        c.max_queued = 10;
        c.slow_consumer_timeout = Duration::from_secs(120);
    });
    let mut sub = b.client("slow");
    sub.subscribe(1, &[("bp/#", 1)]);
    wait_for_routes(&a, "bp/1", &["b"]);
    // a waits only for a node it sees live (a node that is down keeps
    // what it is sent in its stream).
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.broker.peers().unwrap().figures().nodes < 2 {
        assert!(Instant::now() < deadline, "a does not see b live after 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    const N: usize = 3000;
    let (acked, publisher) = publish_numbered(a.addr, "bp-pub", "bp/1", N);
    if a_gives_up {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < N {
            let now = acked.load(Ordering::SeqCst);
            assert!(Instant::now() < deadline, "{now} of {N} acknowledged after 60 s: a still waits for b");
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        // The publisher stalls: its count stands still for half a second.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (0, Instant::now());
        loop {
            let now = acked.load(Ordering::SeqCst);
            assert!(now < N, "all {N} acknowledged while the subscriber read nothing");
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() > Duration::from_millis(500) {
                break;
            }
            assert!(Instant::now() < deadline, "the publisher neither finished nor stalled in 60 s ({now})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let got: Vec<String> = (0..N / 10).flat_map(|_| payloads(sub.receive_and_ack(10))).map(|(p, _)| p).collect();
    publisher.join().unwrap();
    let every: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    assert!(got == every, "every message once, in order ({} received)", got.len());
    assert_eq!(b.broker.stats().queue_drops(), 0, "nothing dropped on b");
    assert_eq!(a.broker.peers().unwrap().figures().dropped, 0);
}

runtime_kind_test!(
    /// See [`backpressure`]: the publisher is slowed.
    cluster_a_subscriber_that_does_not_read_slows_the_publisher_on_another_node,
    |kind: RuntimeKind| backpressure(kind, false)
);

runtime_kind_test!(
    /// See [`backpressure`]: a node that reads nothing for the publishing
    /// node's slow_consumer_timeout is no longer waited for.
    cluster_a_node_that_reads_nothing_for_the_slow_consumer_timeout_is_no_longer_waited_for,
    |kind: RuntimeKind| backpressure(kind, true)
);

/// The model of [`cluster_model_based_routing_and_ownership_across_three_nodes`].
#[derive(Default, Clone)]
struct Owed {
    /// The node its session is on (`None`: no session).
    at: Option<usize>,
    online: bool,
    clean: bool,
    filters: std::collections::BTreeSet<&'static str>,
    /// Messages queued while offline, in order.
    queued: Vec<u32>,
    /// Every message it received (a QoS 1 copy may come again after its
    /// session moved: at least once).
    seen: std::collections::HashSet<u32>,
}

const MODEL_FILTERS: [&str; 4] = ["m/0", "m/1", "m/+", "m/#"];
const MODEL_TOPICS: [&str; 3] = ["m/0", "m/1", "m/2"];

fn model_matches(filter: &str, topic: &str) -> bool {
    filter == topic || filter == "m/#" || (filter == "m/+" && topic.starts_with("m/"))
}

/// Receives the PUBLISH of message `n` (a QoS 1 copy of one seen before may
/// come first, once its session moved), acknowledges it.
fn model_receive(c: &mut crate::support::client::Raw, owed: &mut Owed, n: u32, who: &str) {
    loop {
        let p = c.recv();
        assert_eq!(p.header >> 4, 3, "{who}: a PUBLISH, not {:#x}", p.header);
        let (_, pid, payload) = p.publish();
        c.send(&packets::ack(0x40, pid.expect("QoS 1")));
        let got: u32 = String::from_utf8(payload).unwrap().parse().unwrap();
        if got == n {
            owed.seen.insert(n);
            return;
        }
        assert!(owed.seen.contains(&got), "{who}: got message {got}, expected {n}");
    }
}

/// Reads until a PINGRESP (after a PINGREQ) or, with `closing`, until the
/// broker closes: only copies of messages `owed` saw before may come
/// meanwhile (a QoS 1 copy again after its session moved).
fn model_settle(c: &mut crate::support::client::Raw, owed: &Owed, closing: bool, who: &str) {
    if !closing {
        c.send(&packets::PINGREQ);
    }
    model_settle_until(c, owed, if closing { 0 } else { 13 }, who);
}

/// Reads until a packet of type `until` (0: until the broker closes),
/// acknowledging copies of messages `owed` saw before that come meanwhile.
fn model_settle_until(c: &mut crate::support::client::Raw, owed: &Owed, until: u8, who: &str) {
    let closing = until == 0;
    loop {
        let p = match c.try_recv() {
            Ok(p) => p,
            Err(_) if closing => return,
            Err(e) => panic!("{who}: {e}"),
        };
        match p.header >> 4 {
            kind if kind == until => return,
            3 => {
                let (_, pid, payload) = p.publish();
                let got: u32 = String::from_utf8(payload).unwrap().parse().unwrap();
                assert!(owed.seen.contains(&got), "{who}: message {got} nobody was owed");
                if !closing {
                    c.send(&packets::ack(0x40, pid.unwrap()));
                }
            }
            other => panic!("{who}: packet type {other}"),
        }
    }
}

runtime_kind_test!(
    /// A model-based test of routing and client id ownership across three
    /// nodes: random CONNECTs (clean or persistent, at any node, taking
    /// over a connection at another), SUBSCRIBEs, QoS 1 PUBLISHes and
    /// DISCONNECTs by five clients, checked against a reference model of
    /// where each session is and what each client is owed: every message
    /// reaches every matching session once (MQTT-3.3.5-1) wherever its
    /// client is connected, an offline persistent session gets what was
    /// published meanwhile when its client comes back at any node with
    /// Session Present 1 (MQTT-3.2.2-2), a clean one starts empty. Before a
    /// PUBLISH the test waits until the publisher's node routes the topic
    /// to the nodes the model says (the route table travels through
    /// Redis), after it until those nodes applied what they were forwarded;
    /// nothing else is waited for.
    cluster_model_based_routing_and_ownership_across_three_nodes,
    |kind: RuntimeKind| {
        for seed in 1..=6 {
            model_run(kind, seed);
        }
    }
);

/// One random sequence of [`cluster_model_based_routing_and_ownership_across_three_nodes`].
fn model_run(kind: RuntimeKind, seed: u64) {
    {
        let redis = Redis::start();
        let names = ["n0", "n1", "n2"];
        let nodes: Vec<TestBroker> = names.iter().map(|n| node(kind, &redis, n)).collect();
        let clients = 5;
        let mut model: Vec<Owed> = vec![Owed::default(); clients];
        let mut conns: Vec<Option<crate::support::client::Raw>> = (0..clients).map(|_| None).collect();
        let mut next = midge::store::random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ kind.name().len() as u64);
        let (mut message, mut pid) = (0u32, 0u16);
        for step in 0..120 {
            let c = next(clients as u64) as usize;
            let id = format!("model-{c}");
            let who = format!("seed {seed}, step {step}, {id}");
            match next(10) {
                // CONNECT at a random node (a takeover if connected).
                0..=2 => {
                    let (n, clean) = (next(3) as usize, next(3) == 0);
                    let mut raw = nodes[n].raw();
                    raw.send(&packets::connect(&id, clean, 0));
                    let connack = raw.recv();
                    assert_eq!((connack.header, connack.body[1]), (0x20, 0), "{who}: CONNACK");
                    let owed = &mut model[c];
                    let had = owed.at.is_some() && !owed.clean && !clean;
                    assert_eq!(connack.body[0] == 1, had, "{who}: Session Present");
                    if !had {
                        owed.filters.clear();
                        owed.queued.clear();
                    }
                    (owed.at, owed.online, owed.clean) = (Some(n), true, clean);
                    conns[c] = None;
                    for q in std::mem::take(&mut owed.queued) {
                        model_receive(&mut raw, owed, q, &who);
                    }
                    conns[c] = Some(raw);
                }
                3 | 4 if model[c].online => {
                    let filter = MODEL_FILTERS[next(4) as usize];
                    pid = pid % 60000 + 1;
                    let raw = conns[c].as_mut().unwrap();
                    raw.send(&packets::subscribe(pid, &[(filter, 1)]));
                    model_settle_until(raw, &model[c], 9, &who);
                    model[c].filters.insert(filter);
                }
                5..=8 if model[c].online => {
                    let topic = MODEL_TOPICS[next(3) as usize];
                    let from = model[c].at.unwrap();
                    let mut to: Vec<&str> = (0..names.len())
                        .filter(|&n| n != from)
                        .filter(|&n| {
                            model.iter().any(|o| o.at == Some(n) && o.filters.iter().any(|f| model_matches(f, topic)))
                        })
                        .map(|n| names[n])
                        .collect();
                    to.sort();
                    wait_for_routes_including(&nodes[from], topic, &to);
                    message += 1;
                    pid = pid % 60000 + 1;
                    let publisher = conns[c].as_mut().unwrap();
                    publisher.send(&packets::publish(topic, message.to_string().as_bytes(), 1, pid));
                    // Its own copy (it may be subscribed) can come before the PUBACK.
                    let mut acked = false;
                    let self_copy = model[c].filters.iter().any(|f| model_matches(f, topic));
                    let mut own_seen = !self_copy;
                    while !(acked && own_seen) {
                        let p = publisher.recv();
                        match p.header >> 4 {
                            4 => acked = true,
                            3 => {
                                let (_, got_pid, payload) = p.publish();
                                publisher.send(&packets::ack(0x40, got_pid.unwrap()));
                                let got: u32 = String::from_utf8(payload).unwrap().parse().unwrap();
                                if got == message {
                                    own_seen = true;
                                    model[c].seen.insert(got);
                                } else {
                                    assert!(model[c].seen.contains(&got), "{who}: got {got}, publishing {message}");
                                }
                            }
                            other => panic!("{who}: packet type {other}"),
                        }
                    }
                    // What the other nodes were forwarded is in their sessions
                    // before the model says so (a message still on its way
                    // is matched when it arrives: to a subscription made
                    // meanwhile, behind a message queued meanwhile). Every
                    // other node: one a session left keeps its routes a while.
                    let others: Vec<&str> = (0..names.len()).filter(|&n| n != from).map(|n| names[n]).collect();
                    wait_for_applied(&redis, &others);
                    for d in (0..clients).filter(|&d| d != c) {
                        let owed = &mut model[d];
                        if owed.at.is_none() || !owed.filters.iter().any(|f| model_matches(f, topic)) {
                            continue;
                        }
                        match owed.online {
                            true => model_receive(conns[d].as_mut().unwrap(), owed, message, &format!("{who} -> {d}")),
                            false => owed.queued.push(message),
                        }
                    }
                }
                9 if model[c].online => {
                    let mut raw = conns[c].take().unwrap();
                    raw.send(&packets::DISCONNECT);
                    model_settle(&mut raw, &model[c], true, &who);
                    let owed = &mut model[c];
                    owed.online = false;
                    if owed.clean {
                        *owed = Owed { seen: std::mem::take(&mut owed.seen), ..Owed::default() };
                    }
                }
                _ => {}
            }
        }
        for (c, conn) in conns.iter_mut().enumerate() {
            if let Some(conn) = conn {
                model_settle(conn, &model[c], false, "at the end");
                model_settle(conn, &model[c], false, "at the end");
            }
        }
    }
}
