//! The soak scenario: mixed traffic for `--duration` seconds, checked message
//! by message.
//!
//! Three groups run at once, `--clients` (default 4) wide:
//! - fan-in: N publishers on `soak/in/<i>` → one clean subscriber of `soak/in/#`;
//! - fan-out: one publisher on `soak/out` → N clean subscribers;
//! - persistent: N subscribers (clean session 0, QoS 1) of `soak/p/<i>`, each
//!   fed by its own publisher, that go offline and come back at random
//!   intervals: a DISCONNECT, an abrupt close (no DISCONNECT) or a takeover (a
//!   new connection with the same client id while the old one is online: the
//!   broker must close the old one, and the new one continues the session).
//!
//! Every publisher mixes QoS 0 and QoS 1 (half each) and small (16–64 B) and
//! large (64–256 KiB, one in 500) payloads. Every subscription is QoS 1, so a
//! message arrives at the QoS it was published with, except the first
//! fan-out subscriber's: it subscribes at QoS 0, gets every copy at QoS 0 and
//! sends nothing after its SUBSCRIBE (nothing it sends wakes its connection
//! in the broker). The payload carries the stream (publisher), the sequence
//! number and the subscriber generation it was sent in, and every receipt is
//! recorded in a bit set per (subscriber, stream), so at the end each
//! message is either received, or lost for a reason:
//! - `acked_lost`: QoS 1, PUBACKed by the broker, never reached a subscriber
//!   that was subscribed (online, or persistent and offline). Must be 0.
//! - `qos0_lost`: QoS 0 to a subscriber that stayed online. Must be 0 for a
//!   broker that applies backpressure instead of dropping.
//! - `qos0_offline_lost`: QoS 0 to a persistent subscriber sent in a connection
//!   that then went away (or while it was away): allowed.
//!
//! Duplicates are counted apart: `redelivered` (QoS 1, allowed after a
//! reconnect) and `qos0_duplicates` (must be 0).
//!
//! Pacing is end to end as in the other scenarios, with credits weighted by
//! size (a message costs 1 + length / 16 KiB credits of the subscriber's
//! `--window`, at most 400 for a persistent one): a publisher stops while its
//! subscriber has that much outstanding, also while the subscriber is
//! offline. QoS 0 credits outstanding when a persistent subscriber goes
//! offline or comes back are written off (those copies may never come), so
//! an offline session has at most 400 QoS 1 messages queued, plus at most
//! 400 QoS 0 ones left from its last connection (~12 MiB at the very most):
//! within the default `max_queued_messages` (1000) and `max_queued_bytes`
//! (64 MiB), so a broker is allowed no drops.
//!
//! With `--window` above the broker's queue limit (e.g. 5000 against 1000),
//! online subscribers' queues overflow instead: that tests backpressure (a
//! broker that drops for a connected, reading subscriber shows `acked_lost`
//! and `qos0_lost`; one that stalls shows `credit_stalls`). Persistent
//! subscribers stay at 400 credits.
//!
//! The broker's own count, `$SYS/broker/publish/messages/dropped`, is read at
//! the end: a value published after the drain, waiting up to 11.5 s (one
//! default `sys_interval`), else the last one (`broker_dropped_fresh` false;
//! Mosquitto publishes a `$SYS` value only when it changes). With
//! `--broker-pid` the broker's VmRSS is sampled every duration / 30 s (1 to
//! 10 s) into `rss_mb`, and `rss_levelled` says whether the last third's
//! maximum is within 10 % (or 4 MiB) of the middle third's.

use crate::mqtt::{self, FrameReader, Writer};
use crate::scenarios::{
    FLUSH_AT, acquire_within, await_acks, by_deadline, connect_publisher, flush, inflight_window, rss_bytes,
};
use crate::{Ctx, Report};
use event_listener::Event;
use futures::FutureExt as _;
use smol::channel::{Receiver, Sender};
use smol::lock::Semaphore;
use smol::{Task, Timer};
use std::fmt::Write as _;
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Small payloads: uniform in this range (bytes).
const SMALL: (usize, usize) = (16, 64);
/// Large payloads: uniform in this range (bytes).
const LARGE: (usize, usize) = (64 * 1024, 256 * 1024);
/// One message in this many is large.
const LARGE_ONE_IN: u64 = 500;
/// Share of QoS 1 messages, in percent.
const QOS1_PERCENT: u64 = 50;
/// Payload header: stream index (u32), sequence number (u64), generation (u32).
const HEADER: usize = 16;
/// Credits of a persistent subscriber at most (its offline queue bound).
const PERSISTENT_WINDOW: usize = 400;
/// A subscriber that is online and delivers nothing for this long while a
/// publisher waits for its credits is assumed to have lost what is
/// outstanding: a stall is counted and the credits refilled.
const STALL: Duration = Duration::from_secs(3);
/// How long after a takeover's CONNACK the old connection must be closed.
const TAKEOVER_CLOSE: Duration = Duration::from_secs(5);
/// Time online, and offline, of a persistent subscriber between changes (s).
const ONLINE_S: (f64, f64) = (0.5, 4.0);
const OFFLINE_S: (f64, f64) = (0.2, 2.5);
/// Publishers note (sequence, generation, time) at least this often.
const MARK_EVERY: u64 = 4096;

/// Credits a message of `len` payload bytes costs.
fn weight(len: usize) -> i64 {
    1 + (len / (16 * 1024)) as i64
}

/// xorshift64*: enough randomness for traffic mixes, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
    fn secs(&mut self, (lo, hi): (f64, f64)) -> Duration {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(lo + (hi - lo) * unit)
    }
}

/// A growable bit set of sequence numbers.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; true if it was not set.
    fn insert(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            let len = (w + 1).max(self.0.len() * 3 / 2);
            self.0.resize(len, 0);
        }
        let new = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        new
    }
    fn contains(&self, i: u64) -> bool {
        self.0.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

// ------------------------------------------------------------- subscribers --

/// A subscriber: its credits, its connection generation and what it received.
struct Target {
    name: String,
    client_id: String,
    filter: String,
    /// Subscription QoS: 1, or 0 for a subscriber that never acknowledges
    /// anything (every copy reaches it at QoS 0).
    qos: u8,
    persistent: bool,
    window: i64,
    state: Mutex<TargetState>,
    event: Event,
}

struct TargetState {
    /// Credits spent and not yet returned.
    outstanding: i64,
    /// Odd while online, even while offline (or between connections); a new
    /// value at every change.
    generation: u32,
    online: bool,
    /// Credits of QoS 1 copies sent, and of those received (first copies).
    q1_sent_w: i64,
    q1_recv_w: i64,
    /// Received sequence numbers, by stream index.
    recv: Vec<Bits>,
    /// Deliveries, first copies, QoS 1 duplicates, QoS 0 duplicates, others.
    received: u64,
    unique: u64,
    redelivered: u64,
    qos0_dups: u64,
    foreign: u64,
    last_progress: Instant,
}

/// One received PUBLISH, parsed.
struct Got {
    idx: u32,
    seq: u64,
    generation: u32,
    qos1: bool,
    w: i64,
}

impl Target {
    fn new(
        name: String,
        client_id: String,
        filter: String,
        qos: u8,
        persistent: bool,
        window: usize,
        streams: usize,
    ) -> Self {
        Target {
            name,
            client_id,
            filter,
            qos,
            persistent,
            window: window as i64,
            state: Mutex::new(TargetState {
                outstanding: 0,
                generation: 0,
                online: false,
                q1_sent_w: 0,
                q1_recv_w: 0,
                recv: (0..streams).map(|_| Bits::default()).collect(),
                received: 0,
                unique: 0,
                redelivered: 0,
                qos0_dups: 0,
                foreign: 0,
                last_progress: Instant::now(),
            }),
            event: Event::new(),
        }
    }

    /// Goes online or offline: a new generation. QoS 0 copies outstanding
    /// from the previous one will not come (or not for sure): their credits
    /// are written off, and a late one returns none.
    fn transition(&self, online: bool) -> u32 {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        s.online = online;
        s.outstanding = (s.q1_sent_w - s.q1_recv_w).max(0);
        s.last_progress = Instant::now();
        let g = s.generation;
        drop(s);
        self.event.notify(usize::MAX);
        g
    }

    /// Spends `w` credits if there are that many (or none is outstanding);
    /// returns the generation the copy is sent in.
    fn try_spend(&self, w: i64, qos1: bool) -> Option<u32> {
        let mut s = self.state.lock().unwrap();
        if s.outstanding == 0 || s.outstanding + w <= self.window {
            s.outstanding += w;
            if qos1 && self.qos > 0 {
                s.q1_sent_w += w;
            }
            Some(s.generation)
        } else {
            None
        }
    }

    /// Waits for credits; `None` when the run stops.
    async fn spend(&self, ctx: &Ctx, stalls: &AtomicU64, w: i64, qos1: bool) -> Option<u32> {
        let started = Instant::now();
        loop {
            let listener = self.event.listen();
            if let Some(g) = self.try_spend(w, qos1) {
                return Some(g);
            }
            {
                let mut s = self.state.lock().unwrap();
                if s.online && started.elapsed() >= STALL && s.last_progress.elapsed() >= STALL {
                    if stalls.fetch_add(1, Relaxed) == 0 {
                        eprintln!(
                            "loadgen: {}: online, no delivery for {STALL:?} with {} credits outstanding; assuming them lost",
                            self.name, s.outstanding
                        );
                    }
                    s.outstanding = 0;
                    s.q1_sent_w = s.q1_recv_w;
                    s.last_progress = Instant::now();
                    continue;
                }
            }
            if ctx.stop.load(Relaxed) {
                return None;
            }
            smol::future::or(listener, Timer::after(Duration::from_millis(50)).map(drop)).await;
        }
    }

    fn record(&self, got: &[Got]) {
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        for g in got {
            s.received += 1;
            let Some(bits) = s.recv.get_mut(g.idx as usize) else {
                s.foreign += 1;
                continue;
            };
            if !bits.insert(g.seq) {
                if g.qos1 {
                    s.redelivered += 1;
                } else {
                    s.qos0_dups += 1;
                }
                continue;
            }
            s.unique += 1;
            if g.qos1 {
                s.outstanding -= g.w;
                s.q1_recv_w += g.w;
            } else if g.generation == s.generation {
                s.outstanding -= g.w;
            }
        }
        s.outstanding = s.outstanding.max(0);
        s.last_progress = Instant::now();
        self.event.notify(usize::MAX);
    }
}

enum Cmd {
    Disconnect,
    Abort,
}

/// How a subscriber connection ended.
enum End {
    /// Closed by the broker (or failed).
    Closed(io::Error),
    /// Closed by us, on a [`Cmd`].
    Commanded,
}

/// A subscriber connection being read.
struct Live {
    cmds: Sender<Cmd>,
    task: Task<End>,
}

fn spawn_reader(ctx: &Arc<Ctx>, r: FrameReader, w: Writer, t: &Arc<Target>, initial: Vec<u8>) -> Live {
    let (cmds, rx) = smol::channel::bounded(1);
    let task = ctx.ex.spawn(sub_reader(r, w, t.clone(), rx, initial));
    Live { cmds, task }
}

async fn sub_reader(r: FrameReader, w: Writer, t: Arc<Target>, cmds: Receiver<Cmd>, initial: Vec<u8>) -> End {
    match sub_reader_inner(r, w, &t, cmds, initial).await {
        Ok(()) => End::Commanded,
        Err(e) => End::Closed(e),
    }
}

async fn sub_reader_inner(
    mut r: FrameReader,
    mut w: Writer,
    t: &Target,
    cmds: Receiver<Cmd>,
    initial: Vec<u8>,
) -> io::Result<()> {
    if !initial.is_empty() {
        w.write_all(&initial).await?;
    }
    let mut acks = Vec::new();
    let mut got = Vec::new();
    let mut aliases = mqtt::Aliases::new();
    enum Next {
        Data,
        Cmd(Option<Cmd>),
    }
    loop {
        while let Some((first, body)) = r.next_buffered()? {
            match first >> 4 {
                mqtt::PUBLISH => {
                    let p = mqtt::parse_publish(first, body, &mut aliases)?;
                    if p.qos == 1 {
                        mqtt::puback(&mut acks, p.pid);
                    }
                    let b = p.payload;
                    if b.len() >= HEADER {
                        got.push(Got {
                            idx: u32::from_le_bytes(b[0..4].try_into().unwrap()),
                            seq: u64::from_le_bytes(b[4..12].try_into().unwrap()),
                            generation: u32::from_le_bytes(b[12..16].try_into().unwrap()),
                            qos1: p.qos >= 1,
                            w: weight(b.len()),
                        });
                    } else {
                        got.push(Got { idx: u32::MAX, seq: 0, generation: 0, qos1: false, w: 0 });
                    }
                }
                mqtt::SUBACK => {
                    mqtt::check_suback(body).map_err(|e| io::Error::new(e.kind(), format!("resubscription: {e}")))?
                }
                _ => {}
            }
        }
        if !got.is_empty() {
            t.record(&got);
            got.clear();
            aliases.count();
        }
        if !acks.is_empty() {
            w.write_all(&acks).await?;
            acks.clear();
        }
        let next = smol::future::or(async { r.fill().await.map(|()| Next::Data) }, async {
            Ok(Next::Cmd(cmds.recv().await.ok()))
        })
        .await?;
        if let Next::Cmd(cmd) = next {
            if !matches!(cmd, Some(Cmd::Abort)) {
                let mut buf = Vec::new();
                mqtt::disconnect(&mut buf);
                let _ = mqtt::timeout(Duration::from_secs(2), "DISCONNECT", async { w.write_all(&buf).await }).await;
            }
            let _ = w.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}

/// Connects `t`'s client and subscribes (QoS 1), waiting for the SUBACK.
async fn setup_target(ctx: Arc<Ctx>, t: Arc<Target>) -> io::Result<Live> {
    let (r, w) = by_deadline(&ctx, "subscriber setup", async {
        let (mut r, mut w) =
            mqtt::open(ctx.addr, ctx.source(), &t.client_id, ctx.keepalive(), 64 * 1024, t.persistent).await?;
        let mut buf = Vec::new();
        mqtt::subscribe(&mut buf, 1, std::iter::once(t.filter.as_bytes()), t.qos);
        w.write_all(&buf).await?;
        loop {
            let (first, body) = mqtt::timeout(Duration::from_secs(10), "SUBACK", r.next()).await?;
            if first >> 4 == mqtt::SUBACK {
                mqtt::check_suback(&body)?;
                return Ok((r, w));
            }
        }
    })
    .await?;
    t.transition(true);
    Ok(spawn_reader(&ctx, r, w, &t, Vec::new()))
}

// ------------------------------------------------------------- publishers --

/// A publisher's stream of messages and what became of them.
struct Stream {
    idx: u32,
    topic: String,
    targets: Vec<Arc<Target>>,
    sent: AtomicU64,
    sent_q1: AtomicU64,
    acked: AtomicU64,
    large: AtomicU64,
    bytes: AtomicU64,
    /// Sequence numbers sent at QoS 1, and those PUBACKed.
    q1: Mutex<Bits>,
    acked_set: Mutex<Bits>,
    /// (first sequence, generation of the first target, ns since the epoch),
    /// at every change of generation and every [`MARK_EVERY`] messages.
    marks: Mutex<Vec<(u64, u32, u64)>>,
}

impl Stream {
    fn new(idx: usize, topic: String, targets: Vec<Arc<Target>>) -> Self {
        Stream {
            idx: idx as u32,
            topic,
            targets,
            sent: AtomicU64::new(0),
            sent_q1: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            large: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            q1: Mutex::new(Bits::default()),
            acked_set: Mutex::new(Bits::default()),
            marks: Mutex::new(Vec::new()),
        }
    }

    /// (generation, approximate send time in s) of message `seq`.
    fn mark_of(&self, seq: u64) -> (u32, f64) {
        let marks = self.marks.lock().unwrap();
        let i = marks.partition_point(|m| m.0 <= seq);
        marks.get(i.wrapping_sub(1)).map(|m| (m.1, m.2 as f64 / 1e9)).unwrap_or((0, 0.0))
    }
}

#[derive(Default)]
struct Counters {
    stalls: AtomicU64,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    aborts: AtomicU64,
    takeovers: AtomicU64,
    takeover_closes: AtomicU64,
    takeover_not_closed: AtomicU64,
    session_lost: AtomicU64,
    resubscribes: AtomicU64,
    unexpected_closes: AtomicU64,
}

async fn publisher(ctx: Arc<Ctx>, s: Arc<Stream>, c: Arc<Counters>, seed: u64, ready: Sender<bool>) {
    if let Err(e) = publisher_inner(&ctx, &s, &c, seed, ready).await
        && !ctx.closing.load(Relaxed)
    {
        ctx.error(&format!("publisher {}", s.topic), &e);
    }
}

async fn pub_reader(
    ctx: Arc<Ctx>,
    mut r: FrameReader,
    s: Arc<Stream>,
    inflight: Arc<Semaphore>,
    pids: Arc<Vec<AtomicU64>>,
) {
    let result: io::Result<()> = async {
        let mut seqs = Vec::new();
        loop {
            while let Some((first, body)) = r.next_buffered()? {
                if first >> 4 == mqtt::PUBACK {
                    // A refused message (5.0: reason code from 0x80) is not acked.
                    let (pid, accepted) = mqtt::parse_puback(body)?;
                    seqs.push(if accepted { pids[pid as usize].load(Relaxed) } else { 0 });
                }
            }
            if !seqs.is_empty() {
                let mut acked = s.acked_set.lock().unwrap();
                let new = seqs.iter().filter(|&&q| q > 0 && acked.insert(q)).count();
                drop(acked);
                s.acked.fetch_add(new as u64, Relaxed);
                inflight.add_permits(seqs.len());
                seqs.clear();
            }
            r.fill().await?;
        }
    }
    .await;
    if let Err(e) = result
        && !ctx.stop.load(Relaxed)
    {
        ctx.error(&format!("publisher {}", s.topic), &e);
    }
}

async fn publisher_inner(
    ctx: &Arc<Ctx>,
    s: &Arc<Stream>,
    c: &Counters,
    seed: u64,
    ready: Sender<bool>,
) -> io::Result<()> {
    let (r, mut w) = connect_publisher(ctx, &ready).await?;
    let window = inflight_window(ctx, &w);
    let inflight = Arc::new(Semaphore::new(window));
    let pids: Arc<Vec<AtomicU64>> = Arc::new((0..65536).map(|_| AtomicU64::new(0)).collect());
    let reader = ctx.ex.spawn(pub_reader(ctx.clone(), r, s.clone(), inflight.clone(), pids.clone()));
    let mut rng = Rng::new(seed);
    let mut buf = Vec::with_capacity(FLUSH_AT + LARGE.1 + 256);
    let topic = s.topic.clone().into_bytes();
    let mut aliases = mqtt::OutAliases::new(&w.limits);
    let (mut seq, mut pid) = (0u64, 0u16);
    let mut last_mark: Option<(u64, u32)> = None;
    'run: while !ctx.stop.load(Relaxed) {
        let large = rng.below(LARGE_ONE_IN) == 0;
        let len = if large { rng.range(LARGE.0, LARGE.1) } else { rng.range(SMALL.0, SMALL.1) };
        let qos1 = rng.below(100) < QOS1_PERCENT;
        let w8 = weight(len);
        let mut generation = 0;
        for (i, t) in s.targets.iter().enumerate() {
            let g = match t.try_spend(w8, qos1) {
                Some(g) => g,
                None => {
                    flush(&mut w, &mut buf).await?;
                    match t.spend(ctx, &c.stalls, w8, qos1).await {
                        Some(g) => g,
                        None => break 'run,
                    }
                }
            };
            if i == 0 {
                generation = g;
            }
        }
        if qos1 {
            match inflight.try_acquire() {
                Some(g) => g.forget(),
                None => {
                    flush(&mut w, &mut buf).await?;
                    loop {
                        if acquire_within(&inflight, Duration::from_millis(50)).await {
                            break;
                        }
                        if ctx.stop.load(Relaxed) {
                            break 'run;
                        }
                    }
                }
            }
            pid = if pid == u16::MAX { 1 } else { pid + 1 };
        }
        seq += 1;
        if last_mark.is_none_or(|(at, g)| g != generation || seq - at >= MARK_EVERY) {
            s.marks.lock().unwrap().push((seq, generation, ctx.now_ns()));
            last_mark = Some((seq, generation));
        }
        if qos1 {
            pids[pid as usize].store(seq, Relaxed);
            s.q1.lock().unwrap().insert(seq);
            s.sent_q1.fetch_add(1, Relaxed);
        }
        let idx = s.idx;
        mqtt::publish(&mut buf, aliases.topic(0, &topic), qos1 as u8, false, pid, len, |b| {
            b.extend_from_slice(&idx.to_le_bytes());
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&generation.to_le_bytes());
            let filled = b.len() + len - HEADER;
            b.resize(filled, b'x');
        });
        s.sent.fetch_add(1, Relaxed);
        s.bytes.fetch_add(len as u64, Relaxed);
        if large {
            s.large.fetch_add(1, Relaxed);
        }
        if buf.len() >= FLUSH_AT {
            flush(&mut w, &mut buf).await?;
        }
    }
    flush(&mut w, &mut buf).await?;
    await_acks(ctx, &inflight, window).await;
    mqtt::close(&mut w).await;
    drop(reader);
    Ok(())
}

// ------------------------------------------------------------- persistent --

/// Sleeps `d`; false (early) if the run stops.
async fn sleep_unless_stop(ctx: &Ctx, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if ctx.stop.load(Relaxed) {
            return false;
        }
        Timer::at(until.min(Instant::now() + Duration::from_millis(50))).await;
    }
    !ctx.stop.load(Relaxed)
}

/// Connects the persistent client again (retrying), checks that the broker
/// kept its session and goes online; sometimes subscribes again (the same
/// filter, which replaces the subscription).
async fn reconnect(ctx: &Arc<Ctx>, t: &Arc<Target>, c: &Counters, rng: &mut Rng) -> Option<Live> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let opened = by_deadline(
            ctx,
            "persistent reconnect",
            mqtt::open_session(ctx.addr, ctx.source(), &t.client_id, ctx.keepalive(), 64 * 1024, true),
        )
        .await;
        match opened {
            Ok((r, w, present)) => {
                c.reconnects.fetch_add(1, Relaxed);
                let mut initial = Vec::new();
                if !present {
                    c.session_lost.fetch_add(1, Relaxed);
                    eprintln!(
                        "loadgen: {} ({}): CONNACK with session present 0 on reconnect at {:.3} s: the broker lost the session",
                        t.name,
                        t.client_id,
                        ctx.now_ns() as f64 / 1e9
                    );
                }
                if !present || rng.below(4) == 0 {
                    c.resubscribes.fetch_add(1, Relaxed);
                    mqtt::subscribe(&mut initial, 2, std::iter::once(t.filter.as_bytes()), t.qos);
                }
                t.transition(true);
                return Some(spawn_reader(ctx, r, w, t, initial));
            }
            Err(e) => {
                if attempt >= 50 || ctx.past_deadline() {
                    ctx.error(&format!("{} reconnect", t.name), &e);
                    return None;
                }
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Takes a persistent subscriber on and offline until the run stops, then
/// leaves it online and returns its connection.
async fn cycler(ctx: Arc<Ctx>, t: Arc<Target>, mut live: Live, c: Arc<Counters>, seed: u64) -> Option<Live> {
    let mut rng = Rng::new(seed);
    loop {
        let online_for = rng.secs(ONLINE_S);
        if !sleep_unless_stop(&ctx, online_for).await {
            return Some(live);
        }
        if live.task.is_finished() {
            if let End::Closed(e) = live.task.await {
                c.unexpected_closes.fetch_add(1, Relaxed);
                ctx.error(&format!("{} (closed by the broker while online)", t.name), &e);
            }
            t.transition(false);
            live = reconnect(&ctx, &t, &c, &mut rng).await?;
            continue;
        }
        let action = rng.below(10);
        if action < 3 {
            // Takeover: a second connection with the same client id.
            c.takeovers.fetch_add(1, Relaxed);
            t.transition(false);
            let new = reconnect(&ctx, &t, &c, &mut rng).await?;
            let old = std::mem::replace(&mut live, new);
            let ended = mqtt::timeout(TAKEOVER_CLOSE, "takeover", async { Ok(old.task.await) }).await;
            match ended {
                Ok(End::Closed(_)) => {
                    c.takeover_closes.fetch_add(1, Relaxed);
                }
                Ok(End::Commanded) => {}
                Err(_) => {
                    // Dropping the task closes our side.
                    if c.takeover_not_closed.fetch_add(1, Relaxed) < 5 {
                        eprintln!(
                            "loadgen: {} ({}): old connection still open {TAKEOVER_CLOSE:?} after a takeover at {:.3} s",
                            t.name,
                            t.client_id,
                            ctx.now_ns() as f64 / 1e9
                        );
                    }
                }
            }
        } else {
            // 50 %: DISCONNECT; 20 %: the socket just closes.
            let abrupt = action >= 8;
            t.transition(false);
            let _ = live.cmds.send(if abrupt { Cmd::Abort } else { Cmd::Disconnect }).await;
            let ended = mqtt::timeout(Duration::from_secs(5), "close", async { Ok((&mut live.task).await) }).await;
            if let Ok(End::Closed(e)) = ended {
                c.unexpected_closes.fetch_add(1, Relaxed);
                ctx.error(&format!("{} (closed by the broker while online)", t.name), &e);
            }
            if abrupt { &c.aborts } else { &c.disconnects }.fetch_add(1, Relaxed);
            let offline_for = rng.secs(OFFLINE_S);
            sleep_unless_stop(&ctx, offline_for).await;
            live = reconnect(&ctx, &t, &c, &mut rng).await?;
        }
    }
}

// ------------------------------------------------------------------ $SYS --

const SYS_DROPPED: &str = "$SYS/broker/publish/messages/dropped";

#[derive(Default)]
struct SysState {
    /// Latest value and when it arrived.
    dropped: Mutex<Option<(u64, Instant)>>,
    updates: AtomicU64,
}

async fn sys_monitor(ctx: Arc<Ctx>) -> io::Result<(Arc<SysState>, Writer, Task<()>)> {
    let (mut r, w) = by_deadline(&ctx, "$SYS monitor", async {
        let (r, mut w) = mqtt::open(ctx.addr, ctx.source(), &ctx.client_id('m'), ctx.keepalive(), 4096, false).await?;
        let mut buf = Vec::new();
        mqtt::subscribe(&mut buf, 1, std::iter::once(SYS_DROPPED.as_bytes()), 0);
        w.write_all(&buf).await?;
        Ok((r, w))
    })
    .await?;
    let st = Arc::new(SysState::default());
    let st2 = st.clone();
    let task = ctx.ex.spawn(async move {
        let mut aliases = mqtt::Aliases::new();
        let _: io::Result<()> = async {
            loop {
                while let Some((first, body)) = r.next_buffered()? {
                    if first >> 4 != mqtt::PUBLISH {
                        continue;
                    }
                    let p = mqtt::parse_publish(first, body, &mut aliases)?;
                    if p.topic == SYS_DROPPED.as_bytes()
                        && let Some(v) = std::str::from_utf8(p.payload).ok().and_then(|s| s.trim().parse().ok())
                    {
                        *st2.dropped.lock().unwrap() = Some((v, Instant::now()));
                        st2.updates.fetch_add(1, Relaxed);
                    }
                }
                r.fill().await?;
            }
        }
        .await;
    });
    Ok((st, w, task))
}

// ------------------------------------------------------------------- run --

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn max_of(v: &[u64]) -> u64 {
    v.iter().copied().max().unwrap_or(0)
}

pub async fn soak(ctx: Arc<Ctx>) -> io::Result<Report> {
    let a = ctx.args.clone();
    let n = a.clients.unwrap_or(4).max(1);
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("loadgen: soak seed {seed}");
    let c = Arc::new(Counters::default());

    // The $SYS monitor first, so it sees every update.
    let monitor = match sys_monitor(ctx.clone()).await {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("loadgen: $SYS monitor: {e} (no broker drop count)");
            None
        }
    };

    // Subscribers: fan-in, fan-out, persistent. Streams: fan-in publishers
    // 0..n, the fan-out publisher n, persistent publishers n+1..=2n.
    let nstreams = 2 * n + 1;
    let window = a.window;
    let fanin =
        Arc::new(Target::new("fanin".into(), ctx.client_id('s'), "soak/in/#".into(), 1, false, window, nstreams));
    let fanout: Vec<Arc<Target>> = (0..n)
        .map(|i| {
            // The first fan-out subscriber is a QoS 0 one: it never sends a packet.
            let qos = (i > 0) as u8;
            Arc::new(Target::new(
                format!("fanout-{i}"),
                ctx.client_id('s'),
                "soak/out".into(),
                qos,
                false,
                window,
                nstreams,
            ))
        })
        .collect();
    let persistent: Vec<Arc<Target>> = (0..n)
        .map(|i| {
            Arc::new(Target::new(
                format!("persistent-{i}"),
                ctx.client_id('P'),
                format!("soak/p/{i}"),
                1,
                true,
                window.min(PERSISTENT_WINDOW),
                nstreams,
            ))
        })
        .collect();
    let clean: Vec<Arc<Target>> = std::iter::once(fanin.clone()).chain(fanout.iter().cloned()).collect();
    let all_targets: Vec<Arc<Target>> = clean.iter().chain(&persistent).cloned().collect();
    let setups: Vec<Task<io::Result<Live>>> =
        all_targets.iter().map(|t| ctx.ex.spawn(setup_target(ctx.clone(), t.clone()))).collect();
    let mut lives = Vec::new();
    for s in setups {
        match s.await {
            Ok(l) => lives.push(l),
            Err(e) => {
                ctx.closing.store(true, Relaxed);
                return Err(e);
            }
        }
    }
    let mut persistent_lives: Vec<Live> = lives.split_off(clean.len());
    let clean_lives = lives;

    let mut streams: Vec<Arc<Stream>> = Vec::new();
    for i in 0..n {
        streams.push(Arc::new(Stream::new(i, format!("soak/in/{i}"), vec![fanin.clone()])));
    }
    streams.push(Arc::new(Stream::new(n, "soak/out".into(), fanout.clone())));
    for (i, t) in persistent.iter().enumerate() {
        streams.push(Arc::new(Stream::new(n + 1 + i, format!("soak/p/{i}"), vec![t.clone()])));
    }

    // RSS sampler.
    let rss_interval = (a.duration / 30.0).clamp(1.0, 10.0);
    let rss: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = a.broker_pid.map(|pid| {
        let (rss, sampling) = (rss.clone(), sampling.clone());
        ctx.ex.spawn(async move {
            let start = Instant::now();
            let mut k = 0u32;
            while sampling.load(Relaxed) {
                if let Some(b) = rss_bytes(Some(pid)) {
                    rss.lock().unwrap().push(b);
                }
                k += 1;
                let next = start + Duration::from_secs_f64(rss_interval * k as f64);
                while sampling.load(Relaxed) && Instant::now() < next {
                    Timer::at(next.min(Instant::now() + Duration::from_millis(100))).await;
                }
            }
        })
    });

    // Publishers.
    let (ready_tx, ready_rx) = smol::channel::unbounded();
    let pub_tasks: Vec<Task<()>> = streams
        .iter()
        .map(|s| {
            let seed = seed ^ (s.idx as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            ctx.ex.spawn(publisher(ctx.clone(), s.clone(), c.clone(), seed, ready_tx.clone()))
        })
        .collect();
    drop(ready_tx);
    let mut connected = 0;
    for _ in 0..streams.len() {
        match ready_rx.recv().await {
            Ok(ok) => connected += ok as usize,
            Err(_) => break,
        }
    }
    if connected < streams.len() {
        ctx.closing.store(true, Relaxed);
        ctx.stop.store(true, Relaxed);
        return Err(io::Error::new(ErrorKind::ConnectionRefused, "not every publisher could connect"));
    }

    // Persistent subscribers go on and offline.
    let cyclers: Vec<Task<Option<Live>>> = persistent
        .iter()
        .zip(persistent_lives.drain(..))
        .enumerate()
        .map(|(i, (t, live))| {
            let seed = seed ^ (i as u64 + 1).wrapping_mul(0x9FB2_1C65_1E98_DF25);
            ctx.ex.spawn(cycler(ctx.clone(), t.clone(), live, c.clone(), seed))
        })
        .collect();

    // The run.
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.duration);
    let totals = |streams: &[Arc<Stream>], targets: &[Arc<Target>]| {
        let sent: u64 = streams.iter().map(|s| s.sent.load(Relaxed)).sum();
        let received: u64 = targets.iter().map(|t| t.state.lock().unwrap().received).sum();
        (sent, received)
    };
    let mut prev = (totals(&streams, &all_targets), Instant::now());
    while Instant::now() < end {
        Timer::at(end.min(Instant::now() + Duration::from_secs(1))).await;
        if a.progress {
            let now = (totals(&streams, &all_targets), Instant::now());
            let dt = now.1.duration_since(prev.1).as_secs_f64().max(1e-9);
            let rss_now = rss.lock().unwrap().last().map(|&b| format!(", broker RSS {:.1} MiB", mb(b)));
            eprintln!(
                "loadgen: soak {:.0} s: sent {:.0}/s received {:.0}/s, reconnects {}, takeovers {}{}",
                t0.elapsed().as_secs_f64(),
                (now.0.0 - prev.0.0) as f64 / dt,
                (now.0.1 - prev.0.1) as f64 / dt,
                c.reconnects.load(Relaxed),
                c.takeovers.load(Relaxed),
                rss_now.unwrap_or_default()
            );
            prev = now;
        }
    }
    let (sent_run, received_run) = totals(&streams, &all_targets);
    let secs = t0.elapsed().as_secs_f64();
    ctx.stop.store(true, Relaxed);
    sampling.store(false, Relaxed);
    if let Some(s) = sampler {
        s.await;
    }

    // Publishers finish (their PUBACKs come in); persistent subscribers end
    // online; then everything drains.
    for t in pub_tasks {
        let _ = smol::future::or(t.map(Some), Timer::at(ctx.deadline).map(|_| None)).await;
    }
    let mut finals: Vec<(Live, &Arc<Target>)> = clean_lives.into_iter().zip(&clean).collect();
    for (task, t) in cyclers.into_iter().zip(&persistent) {
        if let Some(Some(live)) = smol::future::or(task.map(Some), Timer::at(ctx.deadline).map(|_| None)).await {
            finals.push((live, t));
        }
    }
    let mut last = (0i64, Instant::now());
    loop {
        let outstanding: i64 = all_targets.iter().map(|t| t.state.lock().unwrap().outstanding).sum();
        let received: u64 = all_targets.iter().map(|t| t.state.lock().unwrap().received).sum();
        if outstanding == 0 || ctx.past_deadline() || last.1.elapsed() >= Duration::from_secs(3) {
            break;
        }
        if received as i64 != last.0 {
            last = (received as i64, Instant::now());
        }
        Timer::after(Duration::from_millis(20)).await;
    }
    let drained_at = Instant::now();

    // The broker's count: a value published after the drain.
    let mut broker_dropped: Option<(u64, bool)> = None;
    if let Some((st, _, _)) = &monitor {
        let budget = ctx.deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_secs(4));
        let until = Instant::now() + budget.min(Duration::from_secs_f64(11.5));
        loop {
            let v = *st.dropped.lock().unwrap();
            match v {
                Some((d, at)) if at >= drained_at => {
                    broker_dropped = Some((d, true));
                    break;
                }
                _ if Instant::now() >= until => {
                    broker_dropped = v.map(|(d, _)| (d, false));
                    break;
                }
                _ => {
                    Timer::after(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let rss_end = rss_bytes(a.broker_pid);

    // Close everything; a clean subscriber the broker closed is an error.
    ctx.closing.store(true, Relaxed);
    for (live, t) in finals {
        let _ = live.cmds.send(Cmd::Disconnect).await;
        let ended = mqtt::timeout(Duration::from_secs(3), "close", async { Ok(live.task.await) }).await;
        if let Ok(End::Closed(e)) = ended {
            ctx.error(&format!("{} (closed by the broker)", t.name), &e);
        }
    }
    // Remove the persistent sessions from the broker.
    for t in &persistent {
        if let Ok((_, mut w)) = by_deadline(
            &ctx,
            "session cleanup",
            mqtt::open(ctx.addr, ctx.source(), &t.client_id, ctx.keepalive(), 64, false),
        )
        .await
        {
            mqtt::close(&mut w).await;
        }
    }
    let monitor_updates = monitor.as_ref().map_or(0, |m| m.0.updates.load(Relaxed));
    if let Some((_, mut w, task)) = monitor {
        mqtt::close(&mut w).await;
        drop(task);
    }

    let loss = account(&streams);
    for e in &loss.examples {
        eprintln!("loadgen: {e}");
    }
    let Loss { acked_lost, q1_unacked_missing, qos0_lost, qos0_offline, expected_q1, .. } = loss;

    let sum_t = |f: &dyn Fn(&TargetState) -> u64, ts: &[Arc<Target>]| -> u64 {
        ts.iter().map(|t| f(&t.state.lock().unwrap())).sum()
    };
    let sum_s = |f: &dyn Fn(&Stream) -> u64| -> u64 { streams.iter().map(|s| f(s)).sum() };
    let sent_total = sum_s(&|s| s.sent.load(Relaxed));
    let sent_q1 = sum_s(&|s| s.sent_q1.load(Relaxed));
    let acked_total = sum_s(&|s| s.acked.load(Relaxed));
    let large_sent = sum_s(&|s| s.large.load(Relaxed));
    let bytes_sent = sum_s(&|s| s.bytes.load(Relaxed));
    let received_total = sum_t(&|s| s.received, &all_targets);
    let unique = sum_t(&|s| s.unique, &all_targets);
    let redelivered = sum_t(&|s| s.redelivered, &all_targets);
    let qos0_dups = sum_t(&|s| s.qos0_dups, &all_targets);
    let foreign = sum_t(&|s| s.foreign, &all_targets);
    let ld = |x: &AtomicU64| x.load(Relaxed);

    let mut r = Report {
        sent_per_s: sent_run as f64 / secs,
        received_per_s: received_run as f64 / secs,
        lost: (acked_lost + qos0_lost) as i64,
        ..Report::default()
    };
    r.int("seed", seed);
    r.int("fanin_publishers", n as u64);
    r.int("fanout_subscribers", n as u64);
    r.int("persistent_subscribers", n as u64);
    r.num("measured_s", secs);
    r.int("sent_total", sent_total);
    r.int("sent_qos1", sent_q1);
    r.int("acked_total", acked_total);
    r.int("large_sent", large_sent);
    r.int("bytes_sent", bytes_sent);
    r.int("received_total", received_total);
    r.int("received_unique", unique);
    r.int("fanin_received", sum_t(&|s| s.received, std::slice::from_ref(&fanin)));
    r.int("fanout_received", sum_t(&|s| s.received, &fanout));
    r.int("persistent_received", sum_t(&|s| s.received, &persistent));
    r.int("expected_qos1", expected_q1);
    r.int("acked_lost", acked_lost);
    r.int("qos1_unacked", sent_q1 - acked_total.min(sent_q1));
    r.int("qos1_unacked_missing", q1_unacked_missing);
    r.int("redelivered", redelivered);
    r.int("qos0_lost", qos0_lost);
    r.int("qos0_offline_lost", qos0_offline);
    r.int("qos0_duplicates", qos0_dups);
    r.int("foreign", foreign);
    r.int("reconnects", ld(&c.reconnects));
    r.int("disconnects", ld(&c.disconnects));
    r.int("abrupt_closes", ld(&c.aborts));
    r.int("takeovers", ld(&c.takeovers));
    r.int("takeover_closes_seen", ld(&c.takeover_closes));
    r.int("takeover_not_closed", ld(&c.takeover_not_closed));
    r.int("session_lost", ld(&c.session_lost));
    r.int("resubscribes", ld(&c.resubscribes));
    r.int("unexpected_closes", ld(&c.unexpected_closes));
    r.int("credit_stalls", ld(&c.stalls));
    r.int("window", window as u64);
    r.int("inflight", a.inflight as u64);
    r.int("sys_updates", monitor_updates);
    match broker_dropped {
        Some((d, fresh)) => {
            r.int("broker_dropped", d);
            r.extra.push(("broker_dropped_fresh", fresh.to_string()));
        }
        None => r.extra.push(("broker_dropped", "null".into())),
    }
    if !loss.by_target.is_empty() {
        let list: Vec<String> = loss.by_target.iter().map(|(t, k)| format!("{}:{k}", crate::json_string(t))).collect();
        r.extra.push(("lost_by_subscriber", format!("{{{}}}", list.join(","))));
    }

    let mut human = format!(
        "acked_lost {acked_lost}, qos0_lost {qos0_lost} (online) + {qos0_offline} (offline, allowed), redelivered {redelivered}"
    );
    if qos0_dups + foreign + q1_unacked_missing > 0 {
        let _ = write!(
            human,
            ", QoS 0 duplicates {qos0_dups}, foreign {foreign}, unacked QoS 1 missing {q1_unacked_missing}"
        );
    }
    let _ = write!(
        human,
        "; {} reconnects ({} DISCONNECT, {} abrupt, {} takeovers: {} old connections closed{})",
        ld(&c.reconnects),
        ld(&c.disconnects),
        ld(&c.aborts),
        ld(&c.takeovers),
        ld(&c.takeover_closes),
        match ld(&c.takeover_not_closed) {
            0 => String::new(),
            k => format!(", {k} NOT closed"),
        }
    );
    if ld(&c.session_lost) > 0 {
        let _ = write!(human, ", {} sessions lost", ld(&c.session_lost));
    }
    let _ = write!(human, "; {large_sent} large of {sent_total} sent");
    match broker_dropped {
        Some((d, fresh)) => {
            let _ = write!(
                human,
                "; broker dropped {d}{}",
                if fresh { "" } else { " (last value published, before the drain: none came after it)" }
            );
        }
        None => human.push_str("; broker drop count unavailable ($SYS)"),
    }

    // RSS over time.
    let samples = std::mem::take(&mut *rss.lock().unwrap());
    if a.broker_pid.is_some() {
        let series: Vec<String> = samples.iter().map(|&b| format!("{:.1}", mb(b))).collect();
        r.num("rss_interval_s", rss_interval);
        r.extra.push(("rss_mb", format!("[{}]", series.join(","))));
        if let Some(e) = rss_end {
            r.num("rss_end_mb", (mb(e) * 10.0).round() / 10.0);
        }
        let m = samples.len();
        if m >= 6 {
            let mid = max_of(&samples[m / 3..2 * m / 3]);
            let tail = max_of(&samples[2 * m / 3..]);
            let levelled = (tail as f64) <= (mid as f64 * 1.10).max(mid as f64 + 4.0 * 1048576.0);
            r.num("rss_max_mb", (mb(max_of(&samples)) * 10.0).round() / 10.0);
            r.num("rss_mid_third_max_mb", (mb(mid) * 10.0).round() / 10.0);
            r.num("rss_last_third_max_mb", (mb(tail) * 10.0).round() / 10.0);
            r.extra.push(("rss_levelled", levelled.to_string()));
            let _ = write!(
                human,
                "; broker RSS {:.1} -> max {:.1} MiB, last third max {:.1} vs middle third {:.1}: {}",
                mb(samples[0]),
                mb(max_of(&samples)),
                mb(tail),
                mb(mid),
                if levelled { "levelled off" } else { "STILL GROWING" }
            );
        } else {
            r.extra.push(("rss_levelled", "null".into()));
            let _ = write!(human, "; broker RSS: {} samples, too few to judge", m);
        }
    }
    r.human = human;
    Ok(r)
}

/// What became of every message sent, against what each target received.
#[derive(Default)]
struct Loss {
    acked_lost: u64,
    q1_unacked_missing: u64,
    qos0_lost: u64,
    qos0_offline: u64,
    expected_q1: u64,
    /// Unallowed losses by subscriber name.
    by_target: Vec<(String, u64)>,
    /// The first few, described.
    examples: Vec<String>,
}

fn account(streams: &[Arc<Stream>]) -> Loss {
    let mut l = Loss::default();
    for s in streams {
        let sent = s.sent.load(Relaxed);
        let q1 = s.q1.lock().unwrap();
        let acked = s.acked_set.lock().unwrap();
        for t in &s.targets {
            let st = t.state.lock().unwrap();
            let bits = &st.recv[s.idx as usize];
            let mut lost_here = 0;
            for seq in 1..=sent {
                // A QoS 0 subscriber gets every copy at QoS 0.
                let (is_q1, is_acked) = (t.qos > 0 && q1.contains(seq), acked.contains(seq));
                l.expected_q1 += (is_q1 && is_acked) as u64;
                if bits.contains(seq) {
                    continue;
                }
                if is_q1 && !is_acked {
                    l.q1_unacked_missing += 1;
                    continue;
                }
                let (g, at) = s.mark_of(seq);
                let what = if is_q1 {
                    l.acked_lost += 1;
                    "acked but lost: QoS 1, PUBACKed"
                } else if t.persistent && g != st.generation {
                    // Sent while offline, or in a connection that went away.
                    l.qos0_offline += 1;
                    continue;
                } else {
                    l.qos0_lost += 1;
                    "QoS 0 lost while online"
                };
                lost_here += 1;
                if l.examples.len() < 10 {
                    l.examples.push(format!(
                        "{what}: {} ({}) never got {} seq {seq} (sent at ~{at:.1} s in subscriber generation {g}, now {})",
                        t.name, t.client_id, s.topic, st.generation
                    ));
                }
            }
            if lost_here > 0 {
                match l.by_target.iter_mut().find(|(name, _)| *name == t.name) {
                    Some((_, k)) => *k += lost_here,
                    None => l.by_target.push((t.name.clone(), lost_here)),
                }
            }
        }
    }
    l
}
