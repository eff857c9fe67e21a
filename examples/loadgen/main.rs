//! cargo run --release --example loadgen --features smol -- --scenario fanin
//!
//! A load generator for MQTT 3.1.1 and (`--protocol 5`) MQTT 5.0 brokers. It
//! brings its own small client (`mqtt.rs`: hand-written packets over TCP) and
//! uses nothing from midge, so it measures Mosquitto, rumqttd and midge the
//! same way (only its unit tests check its 5.0 packets against `midge::v5`). Each run is bounded
//! in time (hard limit: duration + 30 s) and prints one human line and one
//! JSON line on stdout; diagnostics go to stderr.
//!
//! Throughput is what the subscribers receive per second over the measured
//! window (after the warm-up). Publishers are paced end to end: each
//! subscriber grants `--window` credits, a publisher spends one per copy it
//! sends to that subscriber and the subscriber returns it on receipt, so no
//! broker queue (Mosquitto's and midge's hold 1000 messages) overflows and
//! socket buffers do not fill up. At QoS 1 a publisher additionally keeps at
//! most `--inflight` messages unacknowledged. `lost` is (acked at QoS 1, sent
//! at QoS 0) × copies − received, counted after a drain: it must be 0 at QoS 1.

mod mqtt;
mod rawsock;
mod scenarios;
mod soak;

use argh::FromArgs;
use smol::Executor;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// loadgen: load generator for MQTT 3.1.1 and 5.0 brokers (fanin, fanout,
/// pairs, latency, conns, subs, retained, soak).
#[derive(FromArgs, Debug, Clone)]
pub struct Args {
    /// scenario: fanin, fanout, pairs, latency, conns, subs, retained or soak (default fanin)
    #[argh(option, default = "String::from(\"fanin\")")]
    pub scenario: String,
    /// broker host (default 127.0.0.1)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    pub host: String,
    /// broker port (default 1883)
    #[argh(option, default = "1883")]
    pub port: u16,
    /// fanin, fanout, pairs: subscribers connect to this port instead (a
    /// second broker, bridged to the first) (default: --port)
    #[argh(option)]
    pub sub_port: Option<u16>,
    /// qos of publications and subscriptions: 0 or 1 (default 0)
    #[argh(option, default = "0")]
    pub qos: u8,
    /// payload size in bytes (default 64; at least 20 carries sequence numbers and timestamps)
    #[argh(option, default = "64")]
    pub payload: usize,
    /// clients: publishers (fanin, subs), subscribers (fanout), pairs, connections (conns), or the width of each group (soak); default 10, conns 10000, subs/retained 1, soak 4
    #[argh(option)]
    pub clients: Option<usize>,
    /// measured seconds after the warm-up (default 10); soak: the whole run, no warm-up
    #[argh(option, default = "10.0")]
    pub duration: f64,
    /// warm-up seconds before measuring (default 1.5)
    #[argh(option, default = "1.5")]
    pub warmup: f64,
    /// at QoS 1: unacknowledged messages per publisher (default 100)
    #[argh(option, default = "100")]
    pub inflight: usize,
    /// end-to-end credits per subscriber: messages sent to it but not yet received (default 500)
    #[argh(option, default = "500")]
    pub window: usize,
    /// executor threads (default: number of cores)
    #[argh(option)]
    pub threads: Option<usize>,
    /// free text copied into the output (e.g. the broker's name)
    #[argh(option, default = "String::new()")]
    pub label: String,
    /// latency: messages per second (default 10000)
    #[argh(option, default = "10000")]
    pub rate: u64,
    /// conns, soak: broker process id, to read its VmRSS from /proc
    #[argh(option)]
    pub broker_pid: Option<u32>,
    /// subs: distinct subscriptions (default 100000)
    #[argh(option, default = "100000")]
    pub subscriptions: usize,
    /// subs: topic filters per SUBSCRIBE packet (default 100)
    #[argh(option, default = "100")]
    pub filters_per_subscribe: usize,
    /// retained: retained messages on distinct topics (default 100000)
    #[argh(option, default = "100000")]
    pub retained: usize,
    /// retained: clear the retained messages again at the end
    #[argh(switch)]
    pub clear_retained: bool,
    /// conns: connection attempts in flight at once (default 200)
    #[argh(option, default = "200")]
    pub connect_concurrency: usize,
    /// spread client source addresses over 127.0.0.1..=127.0.0.K (default: 1, or enough for 20000 connections each)
    #[argh(option)]
    pub source_addrs: Option<u8>,
    /// print progress once a second on stderr
    #[argh(switch)]
    pub progress: bool,
    /// subscribers connect with clean session 0 (persistent sessions, which a
    /// durable broker writes to its store)
    #[argh(switch)]
    pub persistent: bool,
    /// transport: tcp, or ws (MQTT over WebSockets, path --ws-path) (default tcp)
    #[argh(option, default = "String::from(\"tcp\")")]
    pub transport: String,
    /// ws: the WebSocket path (default /mqtt)
    #[argh(option, default = "String::from(\"/mqtt\")")]
    pub ws_path: String,
    /// soak: seed of the traffic mix and the on/offline schedule (default: from the clock; printed)
    #[argh(option)]
    pub seed: Option<u64>,
    /// protocol level: 4 (MQTT 3.1.1) or 5 (MQTT 5.0) (default 4)
    #[argh(option, default = "4")]
    pub protocol: u8,
    /// with --protocol 5: publishers send each topic once with a topic alias, then the
    /// alias alone (up to the broker's Topic Alias Maximum), and every
    /// connection announces a Topic Alias Maximum of 1024 so the broker may
    /// alias deliveries
    #[argh(switch)]
    pub topic_alias: bool,
}

/// Shared state of one run.
pub struct Ctx {
    pub args: Args,
    pub addr: SocketAddr,
    /// Where subscribers connect (`--sub-port`; else `addr`).
    pub sub_addr: SocketAddr,
    pub ex: Arc<Executor<'static>>,
    pub epoch: Instant,
    /// Soft deadline: phases give up here so the run can still report.
    pub deadline: Instant,
    pub stop: AtomicBool,
    pub closing: AtomicBool,
    pub measuring: AtomicBool,
    pub errors: AtomicU64,
    pub error_lines: Mutex<Vec<String>>,
    pub stalls: AtomicU64,
    /// Whether a publisher's window was capped by the broker's Receive Maximum.
    pub inflight_capped: AtomicBool,
    pub source_addrs: u8,
    next_source: AtomicUsize,
    next_id: AtomicUsize,
}

impl Ctx {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Records a connection error (the first few are printed on stderr).
    pub fn error(&self, who: &str, e: &std::io::Error) {
        let n = self.errors.fetch_add(1, Relaxed);
        let line = format!("{who}: {e}");
        if n < 5 {
            eprintln!("loadgen: {line}");
        }
        let mut lines = self.error_lines.lock().unwrap();
        if lines.len() < 3 {
            lines.push(line);
        }
    }

    /// Source address for the next connection, when spreading them.
    pub fn source(&self) -> Option<Ipv4Addr> {
        if self.source_addrs <= 1 {
            return None;
        }
        let i = self.next_source.fetch_add(1, Relaxed) % self.source_addrs as usize;
        Some(Ipv4Addr::new(127, 0, 0, 1 + i as u8))
    }

    /// A client id unique to this process (at most 23 characters).
    pub fn client_id(&self, role: char) -> String {
        format!("lg{}{}{}", std::process::id(), role, self.next_id.fetch_add(1, Relaxed))
    }

    /// Keepalive for load clients: longer than any run, so no PINGREQ is needed.
    pub fn keepalive(&self) -> u16 {
        (self.args.duration + self.args.warmup + 600.0).min(65535.0) as u16
    }

    pub fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// Result of a run: headline numbers plus scenario-specific fields.
#[derive(Default)]
pub struct Report {
    pub sent_per_s: f64,
    pub received_per_s: f64,
    pub lost: i64,
    /// (name, JSON value) pairs.
    pub extra: Vec<(&'static str, String)>,
    /// Human summary of the scenario-specific part.
    pub human: String,
}

impl Report {
    pub fn num(&mut self, name: &'static str, v: f64) {
        let s = if v.is_finite() {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                let s = format!("{v:.4}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        } else {
            "null".to_string()
        };
        self.extra.push((name, s));
    }
    pub fn int(&mut self, name: &'static str, v: impl Into<i128>) {
        self.extra.push((name, v.into().to_string()));
    }
}

pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let mut args: Args = argh::from_env();
    let scenario = args.scenario.clone();
    if !["fanin", "fanout", "pairs", "latency", "conns", "subs", "retained", "soak"].contains(&scenario.as_str()) {
        eprintln!("loadgen: unknown --scenario {scenario}");
        std::process::exit(2);
    }
    match args.transport.as_str() {
        "tcp" => {}
        "ws" => mqtt::use_websockets(args.ws_path.clone()),
        other => {
            eprintln!("loadgen: --transport {other}: expected tcp or ws");
            std::process::exit(2);
        }
    }
    if args.qos > 1 {
        eprintln!("loadgen: --qos must be 0 or 1");
        std::process::exit(2);
    }
    match (args.protocol, args.topic_alias) {
        (5, _) | (4, false) => mqtt::use_protocol(args.protocol, args.topic_alias),
        (4, true) => {
            eprintln!("loadgen: --topic-alias needs --protocol 5");
            std::process::exit(2);
        }
        (p, _) => {
            eprintln!("loadgen: --protocol {p}: expected 4 (MQTT 3.1.1) or 5 (MQTT 5.0)");
            std::process::exit(2);
        }
    }
    if scenario == "latency" && args.payload < 20 {
        eprintln!("loadgen: latency needs --payload of at least 20 bytes (for the timestamp)");
        std::process::exit(2);
    }
    if args.duration.is_nan()
        || args.duration <= 0.0
        || args.warmup < 0.0
        || args.window == 0
        || args.inflight == 0
        || args.inflight > 65535
    {
        eprintln!("loadgen: --duration must be positive, --window and --inflight (at most 65535) at least 1");
        std::process::exit(2);
    }
    let clients = args.clients.unwrap_or(match scenario.as_str() {
        "conns" => 10000,
        "subs" | "retained" | "latency" => 1,
        "soak" => 4,
        _ => 10,
    });
    args.clients = Some(clients.max(1));
    let addr = match (args.host.as_str(), args.port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            eprintln!("loadgen: cannot resolve {}:{}", args.host, args.port);
            std::process::exit(2);
        }
    };
    let source_addrs = args.source_addrs.unwrap_or(if scenario == "conns" && addr.ip().is_loopback() {
        (clients / 20000 + 1).min(250) as u8
    } else {
        1
    });
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);

    // Hard limit: whatever happens, the process ends at duration + 30 s.
    let hard = Duration::from_secs_f64(args.duration + 30.0);
    {
        let (scenario, label) = (scenario.clone(), args.label.clone());
        std::thread::spawn(move || {
            std::thread::sleep(hard);
            println!("{scenario} [{label}]: hard timeout after {hard:?}, aborted");
            println!(
                "{{\"scenario\":{},\"label\":{},\"error\":\"hard timeout\"}}",
                json_string(&scenario),
                json_string(&label)
            );
            std::process::exit(3);
        });
    }

    let ex = Arc::new(Executor::new());
    let (shutdown, shutdown_rx) = smol::channel::unbounded::<()>();
    let workers: Vec<_> = (1..threads)
        .map(|_| {
            let (ex, rx) = (ex.clone(), shutdown_rx.clone());
            std::thread::spawn(move || smol::block_on(ex.run(rx.recv())))
        })
        .collect();

    let epoch = Instant::now();
    let ctx = Arc::new(Ctx {
        addr,
        sub_addr: SocketAddr::new(addr.ip(), args.sub_port.unwrap_or(addr.port())),
        ex: ex.clone(),
        epoch,
        deadline: epoch + Duration::from_secs_f64(args.duration + 25.0),
        stop: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        error_lines: Mutex::new(Vec::new()),
        stalls: AtomicU64::new(0),
        inflight_capped: AtomicBool::new(false),
        source_addrs,
        next_source: AtomicUsize::new(0),
        next_id: AtomicUsize::new(0),
        args: args.clone(),
    });

    let result = smol::block_on(ex.run(scenarios::run(ctx.clone())));
    drop(shutdown);
    for w in workers {
        let _ = w.join();
    }

    let report = match result {
        Ok(r) => r,
        Err(e) => {
            ctx.error("run", &e);
            Report { lost: 0, human: format!("failed: {e}"), ..Report::default() }
        }
    };
    let errors = ctx.errors.load(Relaxed);
    let stalls = ctx.stalls.load(Relaxed);
    let label = if args.label.is_empty() { String::new() } else { format!(" [{}]", args.label) };
    // The soak mixes QoS 0 and 1, small and large payloads.
    let soak = scenario == "soak";
    let (qos, payload) = if soak {
        ("0+1".to_string(), "16-64+65536-262144".to_string())
    } else {
        (args.qos.to_string(), args.payload.to_string())
    };
    let protocol = match (args.protocol, args.topic_alias) {
        (5, true) => " mqtt=5.0+aliases",
        (5, false) => " mqtt=5.0",
        _ => "",
    };
    let mut human = format!(
        "{scenario}{label}{protocol} qos={qos} payload={payload}B clients={clients} duration={}s: received {:.0}/s, sent {:.0}/s, lost {}",
        args.duration, report.received_per_s, report.sent_per_s, report.lost
    );
    if !report.human.is_empty() {
        human.push_str(", ");
        human.push_str(&report.human);
    }
    if errors > 0 {
        let _ = write!(human, ", {errors} connection errors (first: {})", ctx.error_lines.lock().unwrap().join("; "));
    }
    if stalls > 0 {
        let _ = write!(human, ", {stalls} stalls (2 s without a delivery; credits refilled)");
    }
    let limits = mqtt::first_limits().filter(|_| mqtt::v5());
    let aliased_in = mqtt::aliased_in();
    if let Some(l) = limits {
        let _ = write!(human, ", broker: Receive Maximum {}, Topic Alias Maximum {}", l.receive_max, l.topic_alias_max);
        if args.topic_alias {
            let _ = write!(human, ", {aliased_in} deliveries by alias");
        }
    }
    println!("{human}");

    let mut json = format!(
        "{{\"scenario\":{},\"label\":{},\"qos\":{},\"payload\":{},\"clients\":{},\"duration_s\":{},\"threads\":{},\"sent_per_s\":{:.1},\"received_per_s\":{:.1},\"lost\":{}",
        json_string(&scenario),
        json_string(&args.label),
        if soak { json_string(&qos) } else { qos },
        if soak { json_string(&payload) } else { payload },
        clients,
        args.duration,
        threads,
        report.sent_per_s,
        report.received_per_s,
        report.lost
    );
    for (k, v) in &report.extra {
        let _ = write!(json, ",{}:{}", json_string(k), v);
    }
    let _ = write!(json, ",\"protocol\":{},\"topic_alias\":{}", args.protocol, args.topic_alias);
    if let Some(l) = limits {
        let _ = write!(
            json,
            ",\"broker_receive_max\":{},\"broker_topic_alias_max\":{},\"broker_max_packet_size\":{},\"aliased_in\":{aliased_in}",
            l.receive_max, l.topic_alias_max, l.max_packet_size
        );
    }
    let _ = write!(json, ",\"errors\":{errors},\"stalls\":{stalls}");
    if let Some(first) = ctx.error_lines.lock().unwrap().first() {
        let _ = write!(json, ",\"first_error\":{}", json_string(first));
    }
    json.push('}');
    println!("{json}");
    std::process::exit(if errors > 0 { 1 } else { 0 });
}
