//! The durability promise under `kill -9`: a QoS 1 or QoS 2 message whose
//! PUBACK / PUBCOMP the publisher received is delivered to a persistent
//! subscriber after the broker is killed at any instant and restarted
//! (QoS 2 exactly once), and acknowledged retained messages are still there.

use crate::binary::start_with_env;
use crate::support::TempDir;
use crate::support::client::{Raw, Received};
use crate::support::packets::{self, PUBACK, PUBCOMP, PUBREC, PUBREL, ack};
use crate::support::process::run;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

/// Messages published per round at most; the kill comes long before.
const MESSAGES: u32 = 20_000;
/// The promise covers messages that land in the subscriber's queue: make
/// room for all of them (past the limit, midge drops and counts).
const QUEUE_ALL: &[&str] = &["--max-queued-messages", "100000"];
/// Unacknowledged publishes the publisher keeps in flight.
const WINDOW: usize = 16;

/// Message `i`: QoS 1 or 2 alternately, every tenth retained on its own topic.
pub fn message(i: u32) -> (String, u8, bool) {
    let qos = 1 + (i % 2) as u8;
    match i % 10 {
        0 => (format!("crash/retained/{i}"), qos, true),
        _ => ("crash/data".to_owned(), qos, false),
    }
}

/// Streams messages with a window, completing QoS 2 handshakes, until the
/// connection dies; reports once `signal_at` are acknowledged. Returns the
/// acknowledged message numbers.
fn publish_until_killed(addr: SocketAddr, signal_at: usize, progress: mpsc::Sender<()>) -> Vec<u32> {
    publish_stream(addr, MESSAGES, signal_at, progress)
}

/// [`publish_until_killed`] that also ends once `messages` are acknowledged.
pub fn publish_stream(addr: SocketAddr, messages: u32, signal_at: usize, progress: mpsc::Sender<()>) -> Vec<u32> {
    let mut c = Raw::connect(addr);
    c.send(&packets::connect("crash-pub", true, 0));
    c.expect(&packets::CONNACK_ACCEPTED);
    let (mut next, mut outstanding, mut acked) = (0u32, 0usize, Vec::new());
    loop {
        if acked.len() == messages as usize {
            return acked;
        }
        while outstanding < WINDOW && next < messages {
            let (topic, qos, retain) = message(next);
            let pid = next as u16 + 1;
            c.send(&packets::publish_with(&topic, &next.to_be_bytes(), qos, Some(pid), retain, false));
            next += 1;
            outstanding += 1;
        }
        let Ok(p) = c.try_recv() else { return acked };
        let pid = u16::from_be_bytes([p.body[0], p.body[1]]);
        match p.header {
            0x40 | 0x70 => {
                acked.push(u32::from(pid) - 1);
                outstanding -= 1;
                if acked.len() == signal_at {
                    let _ = progress.send(());
                }
            }
            0x50 => c.send(&ack(PUBREL, pid)),
            other => panic!("publisher got {other:#x}"),
        }
    }
}

/// A persistent subscriber's view: what it delivered to the application,
/// and the QoS 2 packet ids it has PUBREC'd but not yet seen released.
#[derive(Default)]
pub struct Subscriber {
    pub delivered: Vec<(u32, u8)>,
    unreleased: HashSet<u16>,
}

impl Subscriber {
    fn connect(addr: SocketAddr) -> (Raw, bool) {
        Self::connect_as(addr, "crash-sub")
    }

    /// Connects the persistent session `id`: the client and Session Present.
    pub fn connect_as(addr: SocketAddr, id: &str) -> (Raw, bool) {
        let mut c = Raw::connect(addr);
        c.send(&packets::connect(id, false, 0));
        let connack = c.recv();
        assert_eq!((connack.header, connack.body[1]), (0x20, 0), "CONNACK accepted");
        (c, connack.body[0] == 1)
    }

    /// Handles one packet as an MQTT receiver; `false` for PINGRESP.
    pub fn handle(&mut self, c: &mut Raw, p: Received) -> bool {
        match p.header >> 4 {
            3 => {
                let (_, pid, payload) = p.publish();
                let (pid, n) = (pid.unwrap(), u32::from_be_bytes(payload[..4].try_into().unwrap()));
                if p.qos() == 2 {
                    // MQTT-4.3.3-2 on the receiving side: a PUBLISH with an id
                    // not yet released is the same message again.
                    if self.unreleased.insert(pid) {
                        self.delivered.push((n, 2));
                    }
                    c.send(&ack(PUBREC, pid));
                } else {
                    self.delivered.push((n, 1));
                    c.send(&ack(PUBACK, pid));
                }
                true
            }
            6 => {
                let pid = u16::from_be_bytes([p.body[0], p.body[1]]);
                self.unreleased.remove(&pid);
                c.send(&ack(PUBCOMP, pid));
                true
            }
            13 => false,
            other => panic!("subscriber got packet type {other}"),
        }
    }

    /// Receives until the connection dies (the broker is killed).
    pub fn receive_until_killed(&mut self, mut c: Raw) {
        while let Ok(p) = c.try_recv() {
            self.handle(&mut c, p);
        }
    }

    /// Receives until a PINGREQ round trip brings nothing new.
    pub fn drain(&mut self, c: &mut Raw) {
        for _ in 0..100_000 {
            c.send(&packets::PINGREQ);
            let mut active = false;
            loop {
                let p = c.recv();
                if !self.handle(c, p) {
                    break;
                }
                active = true;
            }
            if !active && self.unreleased.is_empty() {
                return;
            }
        }
        panic!("QoS 2 packet ids never released by the broker: {:?}", self.unreleased);
    }
}

fn crash_round(runtime: &str, kill_after: usize, subscriber_online: bool) {
    crash_round_with(runtime, kill_after, subscriber_online, &[]);
}

fn crash_round_with(runtime: &str, kill_after: usize, subscriber_online: bool, env: &[(&str, &str)]) {
    let data = TempDir::new("crash");
    let (midge, addr) = start_with_env(runtime, &data, QUEUE_ALL, env);
    let mut subscriber = Subscriber::default();
    let (mut sub, _) = Subscriber::connect(addr);
    sub.subscribe(1, &[("crash/#", 2)]);
    let online = if subscriber_online {
        Some(std::thread::spawn(move || {
            let mut s = Subscriber::default();
            s.receive_until_killed(sub);
            s
        }))
    } else {
        sub.send(&packets::DISCONNECT);
        sub.expect_closed();
        None
    };
    let (progress, reached) = mpsc::channel();
    let publisher = std::thread::spawn(move || publish_until_killed(addr, kill_after, progress));
    reached.recv_timeout(Duration::from_secs(60)).expect("publisher made progress");
    assert_eq!(run("kill", &["-KILL", &midge.id().to_string()]), Some(0));
    let acked = publisher.join().unwrap();
    if let Some(online) = online {
        subscriber = online.join().unwrap();
    }
    drop(midge);
    if !env.is_empty() {
        // Segments were started and checkpointed while the stream ran.
        let newest = std::fs::read_dir(&data.0)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok())
            .max()
            .unwrap_or(0u64);
        assert!(newest > 1, "only {newest} log segment(s) by the kill (after {kill_after} acks)");
        eprintln!("killed after {kill_after} acks in log segment {newest}");
    }

    let (_midge, addr) = start_with_env(runtime, &data, QUEUE_ALL, env);
    let (mut sub, present) = Subscriber::connect(addr);
    assert!(present, "MQTT-3.2.2-2: the persistent session survived the kill");
    subscriber.drain(&mut sub);

    let mut counts: HashMap<u32, usize> = HashMap::new();
    subscriber.delivered.iter().for_each(|(n, _)| *counts.entry(*n).or_default() += 1);
    for n in &acked {
        assert!(counts.contains_key(n), "acknowledged message {n} lost (killed after {kill_after} acks)");
    }
    for (n, qos) in &subscriber.delivered {
        if *qos == 2 {
            assert_eq!(counts[n], 1, "QoS 2 message {n} delivered twice");
        }
    }
    let mut reader = Raw::connect(addr);
    reader.send(&packets::connect("crash-retained", true, 0));
    reader.expect(&packets::CONNACK_ACCEPTED);
    reader.send(&packets::subscribe(1, &[("crash/retained/#", 0)]));
    reader.expect(&packets::suback(1, &[0]));
    let mut retained = HashSet::new();
    let expected: Vec<u32> = acked.iter().copied().filter(|n| message(*n).2).collect();
    reader.send(&packets::PINGREQ);
    loop {
        let p = reader.recv();
        if p.header == 0xd0 {
            break;
        }
        retained.insert(u32::from_be_bytes(p.publish().2[..4].try_into().unwrap()));
    }
    for n in expected {
        assert!(retained.contains(&n), "acknowledged retained message {n} lost");
    }
    assert!(acked.len() >= kill_after);
}

fn crash_rounds(runtime: &str) {
    for (kill_after, online) in [(20, false), (300, true), (1500, false), (3000, true)] {
        crash_round(runtime, kill_after, online);
    }
}

/// The same rounds with log segments of 4 KiB: the store starts a new
/// segment and checkpoints the one before every few dozen commits, so the
/// kill lands while a checkpoint is being written or its segments deleted
/// as often as between them.
fn crash_rounds_during_checkpoints(runtime: &str) {
    let env = [(midge::store::SEGMENT_BYTES_ENV, "4096")];
    for (kill_after, online) in [(200, false), (700, true), (2000, false), (3500, true)] {
        crash_round_with(runtime, kill_after, online, &env);
    }
}

#[cfg(feature = "smol")]
#[test]
fn kill_9_during_checkpoints_loses_nothing_acknowledged_smol() {
    crash_rounds_during_checkpoints("smol");
}

#[cfg(feature = "async-std")]
#[test]
fn kill_9_during_checkpoints_loses_nothing_acknowledged_async_std() {
    crash_rounds_during_checkpoints("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn kill_9_loses_nothing_acknowledged_smol() {
    crash_rounds("smol");
}

#[cfg(feature = "async-std")]
#[test]
fn kill_9_loses_nothing_acknowledged_async_std() {
    crash_rounds("async-std");
}
