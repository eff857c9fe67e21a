//! The scenarios: throughput flows (fanin, fanout, pairs, subs), latency,
//! idle connections (conns) and retained messages.

use crate::mqtt::{self, FrameReader, Writer};
use crate::{Ctx, Report};
use smol::lock::Semaphore;
use smol::{Task, Timer};
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Publishers write once this much is buffered (or when they must wait).
pub(crate) const FLUSH_AT: usize = 8 * 1024;
/// A subscriber that delivers nothing for this long is considered to have
/// lost the outstanding messages: its credits are refilled and a stall counted.
const STALL: Duration = Duration::from_secs(2);

pub async fn run(ctx: Arc<Ctx>) -> io::Result<Report> {
    match ctx.args.scenario.as_str() {
        "conns" => conns(ctx).await,
        "retained" => retained(ctx).await,
        "soak" => crate::soak::soak(ctx).await,
        _ => flows(ctx).await,
    }
}

fn deadline_error(what: &str) -> io::Error {
    io::Error::new(ErrorKind::TimedOut, format!("{what}: run deadline reached"))
}

/// `f`, or a TimedOut error at the run's soft deadline.
pub(crate) async fn by_deadline<T>(ctx: &Ctx, what: &str, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    let deadline = ctx.deadline;
    smol::future::or(f, async move {
        Timer::at(deadline).await;
        Err(deadline_error(what))
    })
    .await
}

// ---------------------------------------------------------------- flows --

struct SubState {
    received: AtomicU64,
    gaps: AtomicU64,
    out_of_order: AtomicU64,
    foreign: AtomicU64,
    credits: Semaphore,
    window: usize,
    collect_latency: bool,
    latencies: Mutex<Vec<u64>>,
}

#[derive(Default)]
struct PubState {
    sent: AtomicU64,
    acked: AtomicU64,
    /// MQTT 5.0: PUBACKs with a reason code from 0x80 (not counted as acked).
    refused: AtomicU64,
}

enum Topics {
    Fixed(Vec<u8>),
    Cycle { prefix: String, n: usize, next: usize },
}

impl Topics {
    /// Writes the next topic to `out`; returns its number among this
    /// publisher's topics (the key of its topic alias).
    fn write(&mut self, out: &mut Vec<u8>) -> usize {
        match self {
            Topics::Fixed(t) => {
                if out.as_slice() != t.as_slice() {
                    out.clear();
                    out.extend_from_slice(t);
                }
                0
            }
            Topics::Cycle { prefix, n, next } => {
                let key = *next;
                out.clear();
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(key.to_string().as_bytes());
                *next = (key + 1) % *n;
                key
            }
        }
    }
}

struct PubSpec {
    idx: u32,
    topics: Topics,
    targets: Vec<Arc<SubState>>,
    rate: Option<u64>,
}

/// Payload: publisher index, sequence number and send time (ns since the
/// run's epoch), little-endian, then filler.
fn fill_payload(buf: &mut Vec<u8>, idx: u32, seq: u64, ts: u64, len: usize) {
    let start = buf.len();
    if len >= 20 {
        buf.extend_from_slice(&idx.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&ts.to_le_bytes());
    }
    buf.resize(start + len, b'x');
}

fn sum<T>(items: &[Arc<T>], f: impl Fn(&T) -> &AtomicU64) -> u64 {
    items.iter().map(|i| f(i).load(Relaxed)).sum()
}

pub(crate) async fn flush(w: &mut Writer, buf: &mut Vec<u8>) -> io::Result<()> {
    if !buf.is_empty() {
        w.write_all(buf).await?;
        buf.clear();
    }
    Ok(())
}

/// Takes one permit (kept taken) if one comes within `wait`.
pub async fn acquire_within(sem: &Semaphore, wait: Duration) -> bool {
    let acquired = async {
        sem.acquire().await.forget();
        true
    };
    smol::future::or(acquired, async {
        Timer::after(wait).await;
        false
    })
    .await
}

/// Waits for one permit. With `refill`, a stall (no permit for [`STALL`])
/// counts and refills the semaphore to that many permits. False on stop.
async fn wait_credit(ctx: &Ctx, sem: &Semaphore, refill: Option<usize>) -> bool {
    let mut started = Instant::now();
    loop {
        if acquire_within(sem, Duration::from_millis(50)).await {
            return true;
        }
        if ctx.stop.load(Relaxed) {
            return false;
        }
        if let Some(window) = refill
            && started.elapsed() >= STALL
        {
            if ctx.stalls.fetch_add(1, Relaxed) == 0 {
                eprintln!("loadgen: no delivery for {STALL:?} with messages outstanding; assuming them lost");
            }
            sem.add_permits(window.saturating_sub(sem.available_permits()));
            started = Instant::now();
        }
    }
}

async fn subscribe_all(ctx: &Ctx, r: &mut FrameReader, w: &mut Writer, filters: &[String]) -> io::Result<()> {
    let chunks: Vec<&[String]> = filters.chunks(ctx.args.filters_per_subscribe.max(1)).collect();
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut buf = Vec::new();
    while acked < chunks.len() {
        while sent < chunks.len() && sent - acked < 16 {
            let pid = (sent % 65535) as u16 + 1;
            mqtt::subscribe(&mut buf, pid, chunks[sent].iter().map(|f| f.as_bytes()), ctx.args.qos);
            sent += 1;
        }
        flush(w, &mut buf).await?;
        let (first, body) = mqtt::timeout(Duration::from_secs(10), "SUBACK", r.next()).await?;
        if first >> 4 == mqtt::SUBACK {
            mqtt::check_suback(&body)?;
            acked += 1;
        }
    }
    Ok(())
}

async fn setup_subscriber(ctx: Arc<Ctx>, filters: Vec<String>) -> io::Result<(FrameReader, Writer)> {
    by_deadline(&ctx, "subscriber setup", async {
        let (mut r, mut w) = mqtt::open(
            ctx.sub_addr,
            ctx.source(),
            &ctx.client_id('s'),
            ctx.keepalive(),
            64 * 1024,
            ctx.args.persistent,
        )
        .await?;
        subscribe_all(&ctx, &mut r, &mut w, &filters).await?;
        Ok((r, w))
    })
    .await
}

async fn receive(ctx: Arc<Ctx>, r: FrameReader, w: Writer, st: Arc<SubState>, publishers: usize) {
    if let Err(e) = receive_inner(&ctx, r, w, &st, publishers).await
        && !ctx.closing.load(Relaxed)
    {
        ctx.error("subscriber", &e);
    }
}

async fn receive_inner(
    ctx: &Ctx,
    mut r: FrameReader,
    mut w: Writer,
    st: &SubState,
    publishers: usize,
) -> io::Result<()> {
    let mut last = vec![0u64; publishers];
    let mut acks = Vec::new();
    let mut lats = Vec::new();
    let mut aliases = mqtt::Aliases::new();
    loop {
        let measuring = st.collect_latency && ctx.measuring.load(Relaxed);
        let now = if measuring { ctx.now_ns() } else { 0 };
        let (mut n, mut gaps, mut ooo, mut foreign) = (0u64, 0u64, 0u64, 0u64);
        while let Some((first, body)) = r.next_buffered()? {
            if first >> 4 != mqtt::PUBLISH {
                continue;
            }
            let p = mqtt::parse_publish(first, body, &mut aliases)?;
            n += 1;
            if p.qos == 1 {
                mqtt::puback(&mut acks, p.pid);
            }
            if p.payload.len() >= 20 {
                let b = p.payload;
                let idx = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
                let seq = u64::from_le_bytes(b[4..12].try_into().unwrap());
                let ts = u64::from_le_bytes(b[12..20].try_into().unwrap());
                match last.get_mut(idx) {
                    Some(l) => {
                        if seq > *l + 1 {
                            if st.gaps.load(Relaxed) + gaps == 0 {
                                eprintln!(
                                    "loadgen: first sequence gap at {:.3} s: publisher {idx} jumped from {} to {seq} ({} missing)",
                                    ctx.now_ns() as f64 / 1e9,
                                    *l,
                                    seq - *l - 1
                                );
                            }
                            gaps += seq - *l - 1;
                        } else if seq <= *l {
                            ooo += 1;
                        }
                        *l = (*l).max(seq);
                    }
                    None => foreign += 1,
                }
                if measuring {
                    lats.push(now.saturating_sub(ts));
                }
            }
        }
        if n > 0 {
            st.received.fetch_add(n, Relaxed);
            st.credits.add_permits(n as usize);
            aliases.count();
        }
        for (counter, v) in [(&st.gaps, gaps), (&st.out_of_order, ooo), (&st.foreign, foreign)] {
            if v > 0 {
                counter.fetch_add(v, Relaxed);
            }
        }
        if !lats.is_empty() {
            st.latencies.lock().unwrap().append(&mut lats);
        }
        if !acks.is_empty() {
            w.write_all(&acks).await?;
            acks.clear();
        }
        r.fill().await?;
    }
}

async fn publisher(ctx: Arc<Ctx>, spec: PubSpec, st: Arc<PubState>, ready: smol::channel::Sender<bool>) {
    if let Err(e) = publisher_inner(&ctx, spec, &st, ready).await
        && !ctx.closing.load(Relaxed)
    {
        ctx.error("publisher", &e);
    }
}

async fn pub_reader(ctx: Arc<Ctx>, mut r: FrameReader, st: Arc<PubState>, inflight: Arc<Semaphore>) {
    let result: io::Result<()> = async {
        loop {
            let (mut n, mut refused) = (0u64, 0u64);
            while let Some((first, body)) = r.next_buffered()? {
                if first >> 4 == mqtt::PUBACK {
                    n += 1;
                    refused += !mqtt::parse_puback(body)?.1 as u64;
                }
            }
            if n > 0 {
                st.acked.fetch_add(n - refused, Relaxed);
                if refused > 0 && st.refused.fetch_add(refused, Relaxed) == 0 {
                    eprintln!("loadgen: the broker refused a QoS 1 PUBLISH (PUBACK reason code from 0x80)");
                }
                inflight.add_permits(n as usize);
            }
            r.fill().await?;
        }
    }
    .await;
    if let Err(e) = result
        && !ctx.stop.load(Relaxed)
    {
        ctx.error("publisher", &e);
    }
}

/// Connects a publisher (clean session) and tells `ready` whether it did.
pub async fn connect_publisher(ctx: &Ctx, ready: &smol::channel::Sender<bool>) -> io::Result<(FrameReader, Writer)> {
    let opened = by_deadline(
        ctx,
        "publisher connect",
        mqtt::open(ctx.addr, ctx.source(), &ctx.client_id('p'), ctx.keepalive(), 4096, false),
    )
    .await;
    let _ = ready.send(opened.is_ok()).await;
    opened
}

async fn publisher_inner(
    ctx: &Arc<Ctx>,
    mut spec: PubSpec,
    st: &Arc<PubState>,
    ready: smol::channel::Sender<bool>,
) -> io::Result<()> {
    let (r, mut w) = connect_publisher(ctx, &ready).await?;
    let qos = ctx.args.qos;
    let payload_len = ctx.args.payload;
    let window = inflight_window(ctx, &w);
    let inflight = Arc::new(Semaphore::new(window));
    let reader = ctx.ex.spawn(pub_reader(ctx.clone(), r, st.clone(), inflight.clone()));
    let mut buf = Vec::with_capacity(FLUSH_AT + payload_len + 256);
    let mut topic = Vec::new();
    let mut aliases = mqtt::OutAliases::new(&w.limits);
    let (mut seq, mut pid) = (0u64, 0u16);
    let start = Instant::now();
    'run: while !ctx.stop.load(Relaxed) {
        if let Some(rate) = spec.rate {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if seq >= due {
                flush(&mut w, &mut buf).await?;
                Timer::at(start + Duration::from_secs_f64((seq + 1) as f64 / rate as f64)).await;
                continue;
            }
        }
        for t in &spec.targets {
            match t.credits.try_acquire() {
                Some(g) => g.forget(),
                None => {
                    flush(&mut w, &mut buf).await?;
                    if !wait_credit(ctx, &t.credits, Some(t.window)).await {
                        break 'run;
                    }
                }
            }
        }
        if qos > 0 {
            match inflight.try_acquire() {
                Some(g) => g.forget(),
                None => {
                    flush(&mut w, &mut buf).await?;
                    if !wait_credit(ctx, &inflight, None).await {
                        break 'run;
                    }
                }
            }
            pid = if pid == u16::MAX { 1 } else { pid + 1 };
        }
        seq += 1;
        let key = spec.topics.write(&mut topic);
        let ts = ctx.now_ns();
        mqtt::publish(&mut buf, aliases.topic(key, &topic), qos, false, pid, payload_len, |b| {
            fill_payload(b, spec.idx, seq, ts, payload_len)
        });
        st.sent.fetch_add(1, Relaxed);
        if buf.len() >= FLUSH_AT {
            flush(&mut w, &mut buf).await?;
        }
    }
    flush(&mut w, &mut buf).await?;
    if qos > 0 {
        await_acks(ctx, &inflight, window).await;
    }
    mqtt::close(&mut w).await;
    drop(reader);
    Ok(())
}

/// A publisher's QoS 1 window: `--inflight`, or the broker's Receive
/// Maximum (MQTT 5.0) if that is smaller (noted once on stderr).
pub fn inflight_window(ctx: &Ctx, w: &Writer) -> usize {
    let max = w.limits.receive_max as usize;
    if max < ctx.args.inflight && !ctx.inflight_capped.swap(true, Relaxed) {
        eprintln!("loadgen: the broker's Receive Maximum {max} is below --inflight {}: using {max}", ctx.args.inflight);
    }
    ctx.args.inflight.min(max)
}

/// Waits (at most 5 s, and not past the run's deadline) for a publisher's
/// outstanding PUBACKs: every permit of its inflight `window` is back.
pub async fn await_acks(ctx: &Ctx, inflight: &Semaphore, window: usize) {
    let until = (Instant::now() + Duration::from_secs(5)).min(ctx.deadline);
    while inflight.available_permits() < window && Instant::now() < until {
        Timer::after(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

async fn flows(ctx: Arc<Ctx>) -> io::Result<Report> {
    let a = &ctx.args;
    let n = a.clients.unwrap_or(1);
    let scenario = a.scenario.as_str();
    // Subscribers' filters, and per publisher (topics, target subscribers).
    let mut sub_filters: Vec<Vec<String>> = Vec::new();
    let mut pubs: Vec<(Topics, Vec<usize>)> = Vec::new();
    let mut rate = None;
    let fixed = |t: String| Topics::Fixed(t.into_bytes());
    match scenario {
        "fanin" => {
            sub_filters.push(vec!["bench/fanin/#".into()]);
            pubs.extend((0..n).map(|i| (fixed(format!("bench/fanin/{i}")), vec![0])));
        }
        "fanout" => {
            sub_filters.extend((0..n).map(|_| vec!["bench/fanout".to_string()]));
            pubs.push((fixed("bench/fanout".into()), (0..n).collect()));
        }
        "pairs" => {
            sub_filters.extend((0..n).map(|i| vec![format!("bench/pairs/{i}")]));
            pubs.extend((0..n).map(|i| (fixed(format!("bench/pairs/{i}")), vec![i])));
        }
        "latency" => {
            sub_filters.push(vec!["bench/latency".into()]);
            pubs.push((fixed("bench/latency".into()), vec![0]));
            rate = Some(a.rate.max(1));
        }
        "subs" => {
            let s = a.subscriptions.max(1);
            sub_filters.push((0..s).map(|i| format!("bench/subs/{i}")).collect());
            pubs.extend(
                (0..n).map(|i| (Topics::Cycle { prefix: "bench/subs/".into(), n: s, next: i * s / n }, vec![0])),
            );
        }
        _ => unreachable!(),
    }
    let window = if rate.is_some() { a.window.max(a.rate as usize) } else { a.window };
    let subs: Vec<Arc<SubState>> = sub_filters
        .iter()
        .map(|_| {
            Arc::new(SubState {
                received: AtomicU64::new(0),
                gaps: AtomicU64::new(0),
                out_of_order: AtomicU64::new(0),
                foreign: AtomicU64::new(0),
                credits: Semaphore::new(window),
                window,
                collect_latency: rate.is_some(),
                latencies: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let total_filters: usize = sub_filters.iter().map(|f| f.len()).sum();

    // Subscribers first: connect and subscribe, all at once.
    let t_sub = Instant::now();
    let setups: Vec<Task<io::Result<(FrameReader, Writer)>>> =
        sub_filters.into_iter().map(|f| ctx.ex.spawn(setup_subscriber(ctx.clone(), f))).collect();
    let mut conns = Vec::new();
    for t in setups {
        conns.push(t.await?);
    }
    let subscribe_s = t_sub.elapsed().as_secs_f64();
    let mut writers = Vec::new();
    let mut receivers = Vec::new();
    for ((r, w), st) in conns.into_iter().zip(&subs) {
        writers.push(w.clone());
        receivers.push(ctx.ex.spawn(receive(ctx.clone(), r, w, st.clone(), pubs.len())));
    }

    // Then the publishers.
    let copies: Vec<u64> = pubs.iter().map(|(_, t)| t.len() as u64).collect();
    let pub_states: Vec<Arc<PubState>> = pubs.iter().map(|_| Arc::new(PubState::default())).collect();
    let (ready_tx, ready_rx) = smol::channel::unbounded();
    let npubs = pubs.len();
    let mut pub_tasks = Vec::new();
    for (i, ((topics, targets), st)) in pubs.into_iter().zip(&pub_states).enumerate() {
        let spec = PubSpec { idx: i as u32, topics, targets: targets.iter().map(|&t| subs[t].clone()).collect(), rate };
        pub_tasks.push(ctx.ex.spawn(publisher(ctx.clone(), spec, st.clone(), ready_tx.clone())));
    }
    drop(ready_tx);
    let mut connected = 0;
    for _ in 0..npubs {
        match ready_rx.recv().await {
            Ok(ok) => connected += ok as usize,
            Err(_) => break,
        }
    }
    if connected == 0 {
        ctx.closing.store(true, Relaxed);
        return Err(io::Error::new(ErrorKind::ConnectionRefused, "no publisher could connect"));
    }

    let snapshot = || (sum(&pub_states, |p| &p.sent), sum(&subs, |s| &s.received), Instant::now());
    let progress = |label: &str, secs: f64| {
        let label = label.to_string();
        let ctx = ctx.clone();
        let (pub_states, subs) = (pub_states.clone(), subs.clone());
        async move {
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut prev = (sum(&pub_states, |p| &p.sent), sum(&subs, |s| &s.received), Instant::now());
            while Instant::now() < end {
                Timer::at((Instant::now() + Duration::from_secs(1)).min(end)).await;
                if ctx.args.progress {
                    let now = (sum(&pub_states, |p| &p.sent), sum(&subs, |s| &s.received), Instant::now());
                    let dt = now.2.duration_since(prev.2).as_secs_f64().max(1e-9);
                    eprintln!(
                        "loadgen: {label}: sent {:.0}/s received {:.0}/s",
                        (now.0 - prev.0) as f64 / dt,
                        (now.1 - prev.1) as f64 / dt
                    );
                    prev = now;
                }
            }
        }
    };
    progress("warm-up", a.warmup).await;
    let s0 = snapshot();
    ctx.measuring.store(true, Relaxed);
    progress("measuring", a.duration).await;
    let s1 = snapshot();
    ctx.measuring.store(false, Relaxed);
    ctx.stop.store(true, Relaxed);

    // Publishers finish (QoS 1: their PUBACKs come in), then subscribers drain.
    for t in pub_tasks {
        let _ = smol::future::or(
            async {
                let _: () = t.await;
                Some(())
            },
            async {
                Timer::at(ctx.deadline).await;
                None
            },
        )
        .await;
    }
    let qos1 = a.qos > 0;
    let expected: u64 = pub_states
        .iter()
        .zip(&copies)
        .map(|(p, c)| c * if qos1 { p.acked.load(Relaxed) } else { p.sent.load(Relaxed) })
        .sum();
    let mut last = (sum(&subs, |s| &s.received), Instant::now());
    loop {
        let received = sum(&subs, |s| &s.received);
        if received >= expected || ctx.past_deadline() || last.1.elapsed() >= Duration::from_secs(2) {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        }
        Timer::after(Duration::from_millis(20)).await;
    }
    let received_total = sum(&subs, |s| &s.received);
    ctx.closing.store(true, Relaxed);
    futures::future::join_all(writers.iter_mut().map(mqtt::close)).await;
    drop(receivers);

    let secs = s1.2.duration_since(s0.2).as_secs_f64();
    let sent_total = sum(&pub_states, |p| &p.sent);
    let acked_total = sum(&pub_states, |p| &p.acked);
    let refused_total = sum(&pub_states, |p| &p.refused);
    let mut r = Report {
        sent_per_s: (s1.0 - s0.0) as f64 / secs,
        received_per_s: (s1.1 - s0.1) as f64 / secs,
        lost: expected as i64 - received_total as i64,
        ..Report::default()
    };
    r.int("publishers", npubs as u64);
    r.int("publishers_connected", connected as u64);
    r.int("subscribers", subs.len() as u64);
    r.num("measured_s", secs);
    r.int("sent_total", sent_total);
    if qos1 {
        r.int("acked_total", acked_total);
        r.int("puback_refused", refused_total);
    }
    r.int("expected_total", expected);
    r.int("received_total", received_total);
    let gaps = sum(&subs, |s| &s.gaps);
    let ooo = sum(&subs, |s| &s.out_of_order);
    let foreign = sum(&subs, |s| &s.foreign);
    r.int("gaps", gaps);
    r.int("out_of_order", ooo);
    r.int("foreign", foreign);
    r.int("window", window as u64);
    if qos1 {
        r.int("inflight", a.inflight as u64);
    }
    let mut notes = Vec::new();
    if qos1 && acked_total + refused_total < sent_total {
        notes.push(format!("{} unacked", sent_total - acked_total - refused_total));
    }
    if refused_total > 0 {
        notes.push(format!("{refused_total} refused by the broker (PUBACK reason code from 0x80)"));
    }
    if gaps + ooo + foreign > 0 {
        notes.push(format!("sequence gaps {gaps}, out of order {ooo}, foreign {foreign}"));
    }
    match scenario {
        "latency" => {
            let mut l = std::mem::take(&mut *subs[0].latencies.lock().unwrap());
            l.sort_unstable();
            let (p50, p99, p999, max) =
                (percentile(&l, 0.5), percentile(&l, 0.99), percentile(&l, 0.999), percentile(&l, 1.0));
            r.int("rate", a.rate);
            r.int("samples", l.len() as u64);
            r.num("p50_us", p50);
            r.num("p99_us", p99);
            r.num("p999_us", p999);
            r.num("max_us", max);
            notes.insert(
                0,
                format!(
                    "latency p50 {p50:.0} us, p99 {p99:.0} us, p99.9 {p999:.0} us, max {max:.0} us ({} samples)",
                    l.len()
                ),
            );
        }
        "subs" => {
            r.int("subscriptions", total_filters as u64);
            r.num("subscribe_s", subscribe_s);
            r.num("subscribe_per_s", total_filters as f64 / subscribe_s);
            notes.insert(
                0,
                format!(
                    "{total_filters} subscriptions in {subscribe_s:.2} s ({:.0}/s)",
                    total_filters as f64 / subscribe_s
                ),
            );
        }
        _ => {}
    }
    r.human = notes.join(", ");
    Ok(r)
}

// ---------------------------------------------------------------- conns --

pub(crate) fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn conns(ctx: Arc<Ctx>) -> io::Result<Report> {
    let n = ctx.args.clients.unwrap_or(1);
    let pid = ctx.args.broker_pid;
    let rss_before = rss_bytes(pid);
    let gate = Arc::new(Semaphore::new(ctx.args.connect_concurrency.max(1)));
    let t0 = Instant::now();
    let tasks: Vec<Task<io::Result<(FrameReader, Writer)>>> = (0..n)
        .map(|_| {
            let (ctx, gate) = (ctx.clone(), gate.clone());
            ctx.ex.clone().spawn(async move {
                let _permit = gate.acquire_arc().await;
                if ctx.past_deadline() {
                    return Err(deadline_error("connect"));
                }
                by_deadline(
                    &ctx,
                    "connect",
                    mqtt::open(ctx.addr, ctx.source(), &ctx.client_id('c'), ctx.keepalive(), 64, false),
                )
                .await
            })
        })
        .collect();
    let mut open = Vec::with_capacity(n);
    let mut failed = 0u64;
    for t in tasks {
        match t.await {
            Ok(c) => open.push(c),
            Err(e) => {
                failed += 1;
                ctx.error("connect", &e);
            }
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let ok = open.len();
    Timer::after(Duration::from_secs(1)).await;
    let rss_after = rss_bytes(pid);

    // Are they all still served? One PINGREQ each.
    let tasks: Vec<Task<(bool, Writer)>> = open
        .into_iter()
        .map(|(mut r, mut w)| {
            let (ctx, gate) = (ctx.clone(), gate.clone());
            ctx.ex.clone().spawn(async move {
                let _permit = gate.acquire_arc().await;
                let ok = by_deadline(&ctx, "ping", async {
                    let mut buf = Vec::new();
                    mqtt::pingreq(&mut buf);
                    w.write_all(&buf).await?;
                    loop {
                        let (first, _) = mqtt::timeout(Duration::from_secs(10), "PINGRESP", r.next()).await?;
                        if first >> 4 == mqtt::PINGRESP {
                            return Ok(());
                        }
                    }
                })
                .await;
                if let Err(e) = &ok {
                    ctx.error("ping", e);
                }
                (ok.is_ok(), w)
            })
        })
        .collect();
    let mut pings_ok = 0u64;
    let mut writers = Vec::with_capacity(ok);
    for t in tasks {
        let (good, w) = t.await;
        pings_ok += good as u64;
        writers.push(w);
    }
    ctx.closing.store(true, Relaxed);
    for chunk in writers.chunks_mut(500) {
        futures::future::join_all(chunk.iter_mut().map(mqtt::close)).await;
    }
    drop(writers);

    let mut r = Report::default();
    let rate = ok as f64 / connect_s;
    r.int("connections", ok as u64);
    r.int("failed", failed);
    r.num("connect_s", connect_s);
    r.num("connect_per_s", rate);
    r.int("pings_ok", pings_ok);
    r.int("source_addrs", ctx.source_addrs as u64);
    let mut human = format!("{ok} connections in {connect_s:.2} s ({rate:.0}/s), {pings_ok} answered PINGREQ");
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => {
            let per = if ok > 0 { (a as f64 - b as f64) / ok as f64 } else { f64::NAN };
            r.int("rss_before_bytes", b);
            r.int("rss_after_bytes", a);
            r.num("rss_per_conn_bytes", per.round());
            human.push_str(&format!(
                ", broker RSS {:.1} -> {:.1} MiB ({per:.0} B/connection)",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0
            ));
        }
        _ => {
            r.extra.push(("rss_per_conn_bytes", "null".into()));
            if pid.is_some() {
                human.push_str(", broker RSS unreadable");
            }
        }
    }
    r.human = human;
    Ok(r)
}

// ------------------------------------------------------------- retained --

/// Publishes `n` messages on `prefix{i}` (retained), QoS 1 with the inflight
/// window; at QoS 0 a PINGREQ round trip ends it, so the broker has handled
/// every PUBLISH before this returns.
async fn publish_many(
    ctx: &Ctx,
    r: &mut FrameReader,
    w: &mut Writer,
    n: usize,
    qos: u8,
    payload_len: usize,
) -> io::Result<()> {
    let window = inflight_window(ctx, w);
    let mut aliases = mqtt::OutAliases::new(&w.limits);
    let mut buf = Vec::with_capacity(70 * 1024);
    let (mut i, mut inflight) = (0usize, 0usize);
    while i < n || inflight > 0 {
        if ctx.past_deadline() {
            return Err(deadline_error("publishing retained messages"));
        }
        while i < n && (qos == 0 || inflight < window) && buf.len() < 64 * 1024 {
            let topic = format!("bench/retained/{i}");
            let pid = (i % 65535) as u16 + 1;
            mqtt::publish(&mut buf, aliases.topic(i, topic.as_bytes()), qos, true, pid, payload_len, |b| {
                fill_payload(b, 0, i as u64 + 1, 0, payload_len)
            });
            i += 1;
            inflight += (qos > 0) as usize;
        }
        flush(w, &mut buf).await?;
        if inflight > 0 && (inflight >= window || i == n) {
            loop {
                let mut acks = 0;
                while let Some((first, _)) = r.next_buffered()? {
                    acks += (first >> 4 == mqtt::PUBACK) as usize;
                }
                if acks > 0 {
                    inflight -= acks.min(inflight);
                    break;
                }
                mqtt::timeout(Duration::from_secs(10), "PUBACK", r.fill()).await?;
            }
        }
    }
    mqtt::pingreq(&mut buf);
    flush(w, &mut buf).await?;
    loop {
        let (first, _) = mqtt::timeout(Duration::from_secs(20), "PINGRESP", r.next()).await?;
        if first >> 4 == mqtt::PINGRESP {
            return Ok(());
        }
    }
}

async fn retained(ctx: Arc<Ctx>) -> io::Result<Report> {
    let n = ctx.args.retained.max(1);
    let qos = ctx.args.qos;
    let (mut pr, mut pw) =
        mqtt::open(ctx.addr, ctx.source(), &ctx.client_id('p'), ctx.keepalive(), 4096, false).await?;
    let t0 = Instant::now();
    publish_many(&ctx, &mut pr, &mut pw, n, qos, ctx.args.payload).await?;
    let publish_s = t0.elapsed().as_secs_f64();

    let (mut sr, mut sw) =
        mqtt::open(ctx.addr, ctx.source(), &ctx.client_id('s'), ctx.keepalive(), 64 * 1024, ctx.args.persistent)
            .await?;
    let mut buf = Vec::new();
    let mut aliases = mqtt::Aliases::new();
    mqtt::subscribe(&mut buf, 1, std::iter::once(&b"bench/retained/#"[..]), qos);
    let t1 = Instant::now();
    flush(&mut sw, &mut buf).await?;
    let (mut got, mut live, mut last_at) = (0usize, 0usize, t1);
    let mut suback = false;
    let mut end_reason = "all received";
    while got < n {
        let mut acks = Vec::new();
        while let Some((first, body)) = sr.next_buffered()? {
            match first >> 4 {
                mqtt::PUBLISH => {
                    let p = mqtt::parse_publish(first, body, &mut aliases)?;
                    if p.qos == 1 {
                        mqtt::puback(&mut acks, p.pid);
                    }
                    if p.retain && p.topic.starts_with(b"bench/retained/") { got += 1 } else { live += 1 }
                }
                mqtt::SUBACK => {
                    mqtt::check_suback(body)?;
                    suback = true;
                }
                _ => {}
            }
        }
        last_at = Instant::now();
        aliases.count();
        flush(&mut sw, &mut acks).await?;
        if got >= n {
            break;
        }
        if ctx.past_deadline() {
            end_reason = "run deadline reached";
            break;
        }
        match mqtt::timeout(Duration::from_secs(5), "retained", sr.fill()).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                end_reason = "nothing more for 5 s";
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let receive_s = last_at.duration_since(t1).as_secs_f64();
    ctx.closing.store(true, Relaxed);
    mqtt::close(&mut sw).await;
    if ctx.args.clear_retained {
        publish_many(&ctx, &mut pr, &mut pw, n, 0, 0).await?;
    }
    mqtt::close(&mut pw).await;

    let mut r = Report {
        sent_per_s: n as f64 / publish_s,
        received_per_s: got as f64 / receive_s.max(1e-9),
        lost: n as i64 - got as i64,
        ..Report::default()
    };
    r.int("retained", n as u64);
    r.int("retained_received", got as u64);
    r.num("publish_s", publish_s);
    r.num("receive_s", receive_s);
    r.int("non_retained_received", live as u64);
    r.human = format!(
        "{n} retained published in {publish_s:.2} s, {got} received in {receive_s:.2} s ({end_reason}{})",
        if suback { "" } else { ", no SUBACK" }
    );
    Ok(r)
}
