use crate::support::TestBroker;
use crate::support::client::TIMEOUT;
use crate::support::packets::{self, DISCONNECT, PINGREQ, PINGRESP, PUBACK, ack};
use std::time::{Duration, Instant};

fn small_windows(c: &mut midge::Config) {
    c.max_inflight = 2;
    c.max_queued = 10;
    c.sys_interval = std::time::Duration::from_millis(50);
}

runtime_test!(
    /// A subscriber that does not acknowledge gets at most `max_inflight`
    /// QoS 1 messages; `max_queued` more wait. Once its queue is full, the
    /// publisher is held back (its PUBACKs wait) for `slow_consumer_timeout`;
    /// the subscriber made no progress, so it is marked stuck: the publisher
    /// goes on and the rest are dropped and counted. Acknowledging releases
    /// the queue in order.
    inflight_window_and_queue_limit,
    |c: &mut midge::Config| {
        small_windows(c);
        c.slow_consumer_timeout = Duration::from_millis(300);
    },
    |b: &TestBroker| {
        let mut sub = b.client("slow");
        sub.subscribe(1, &[("f", 1)]);
        let mut publisher = b.client("pub");
        let start = Instant::now();
        for i in 1..=50u16 {
            publisher.send(&packets::publish("f", &i.to_be_bytes(), 1, i));
            publisher.expect(&ack(PUBACK, i));
        }
        assert!(start.elapsed() >= Duration::from_millis(300), "held back for the slow-consumer timeout");
        let mut received = Vec::new();
        let mut inflight = Vec::new();
        for _ in 0..2 {
            let (_, pid, payload) = sub.recv().publish();
            inflight.push(pid.unwrap());
            received.push(u16::from_be_bytes([payload[0], payload[1]]));
        }
        sub.expect_nothing_queued();
        // Acknowledge whatever arrives until a PINGREQ round trip with
        // nothing to acknowledge brings nothing more.
        loop {
            let acked = inflight.len();
            inflight.drain(..).for_each(|pid| sub.send(&ack(PUBACK, pid)));
            sub.send(&PINGREQ);
            let before = received.len();
            loop {
                let p = sub.recv();
                if p.header == PINGRESP[0] {
                    break;
                }
                let (_, pid, payload) = p.publish();
                inflight.push(pid.unwrap());
                received.push(u16::from_be_bytes([payload[0], payload[1]]));
            }
            if acked == 0 && received.len() == before {
                break;
            }
        }
        let n = received.len() as u16;
        assert!((12..=14).contains(&n), "2 inflight, 10 queued, at most 2 more taken while held back: got {n}");
        assert_eq!(received, (1..=n).collect::<Vec<_>>());
        let dropped = (50 - n).to_string();
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/broker/publish/messages/dropped", 0)]);
        watcher.recv_until(TIMEOUT, &format!("$SYS/broker/publish/messages/dropped = {dropped}"), |p| {
            (p.publish().2 == dropped.as_bytes()).then_some(())
        });
    }
);

runtime_test!(
    /// Backpressure instead of loss: three publishers pipeline QoS 1 and
    /// QoS 0 messages into one subscriber whose queue holds 10 and whose
    /// window is 2. The subscriber reads and acknowledges everything, so
    /// the publishers are slowed to its pace and nothing they were
    /// acknowledged is dropped: every message arrives, in each publisher's
    /// order, and the drop counter stays 0.
    a_full_queue_slows_publishers_and_loses_nothing_while_the_subscriber_reads,
    small_windows,
    |b: &TestBroker| {
        const PER_PUBLISHER: u16 = 1000;
        let mut sub = b.client("sink");
        sub.subscribe(1, &[("in/#", 1)]);
        let reader = std::thread::spawn(move || {
            let mut next = [[0u16; 2]; 3];
            for _ in 0..u32::from(PER_PUBLISHER) * 6 {
                let got = sub.recv();
                let (topic, pid, payload) = got.publish();
                let publisher = usize::from(topic.as_bytes()[3] - b'0');
                let qos = usize::from(got.qos());
                let n = u16::from_be_bytes([payload[0], payload[1]]);
                assert_eq!(n, next[publisher][qos], "{topic} QoS {qos} in order, none lost");
                next[publisher][qos] += 1;
                if let Some(pid) = pid {
                    sub.send(&ack(PUBACK, pid));
                }
            }
            sub.expect_nothing_queued();
            next
        });
        let publishers: Vec<_> = (0..3u8)
            .map(|p| {
                let mut publisher = b.client(&format!("pub{p}"));
                std::thread::spawn(move || {
                    let topic = format!("in/{p}");
                    for i in 0..PER_PUBLISHER {
                        publisher.send(&packets::publish(&topic, &i.to_be_bytes(), 1, i + 1));
                        publisher.send(&packets::publish0(&topic, &i.to_be_bytes()));
                    }
                    for i in 0..PER_PUBLISHER {
                        publisher.expect(&ack(PUBACK, i + 1));
                    }
                })
            })
            .collect();
        publishers.into_iter().for_each(|p| p.join().expect("every publish acknowledged"));
        let next = reader.join().expect("the subscriber got everything");
        assert_eq!(next, [[PER_PUBLISHER; 2]; 3]);
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/broker/publish/messages/dropped", 0)]);
        assert_eq!(watcher.recv().publish().2, b"0", "nothing dropped");
    }
);

runtime_test!(
    /// Publishers held back by a full queue are woken when it drains, every
    /// time: pure QoS 0 fan-in (no acknowledgements to wake anything else)
    /// from three pipelining publishers into a queue of 10, with a
    /// slow-consumer timeout so long that one missed wake-up stalls the test
    /// past the client's 10 s read timeout.
    held_back_qos0_publishers_are_always_woken,
    |c: &mut midge::Config| {
        small_windows(c);
        c.slow_consumer_timeout = Duration::from_secs(60);
    },
    |b: &TestBroker| {
        const PER_PUBLISHER: u32 = 5000;
        let mut sub = b.client("sink");
        sub.subscribe(1, &[("q0/#", 0)]);
        let reader = std::thread::spawn(move || {
            let mut next = [0u32; 3];
            for _ in 0..PER_PUBLISHER * 3 {
                let (topic, _, payload) = sub.recv().publish();
                let publisher = usize::from(topic.as_bytes()[3] - b'0');
                assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), next[publisher], "{topic} in order");
                next[publisher] += 1;
            }
            next
        });
        let publishers: Vec<_> = (0..3u8)
            .map(|p| {
                let mut publisher = b.client(&format!("pub{p}"));
                std::thread::spawn(move || {
                    let topic = format!("q0/{p}");
                    let bytes: Vec<u8> =
                        (0..PER_PUBLISHER).flat_map(|i| packets::publish0(&topic, &i.to_be_bytes())).collect();
                    publisher.send(&bytes);
                    publisher.ping();
                })
            })
            .collect();
        publishers.into_iter().for_each(|p| p.join().expect("publisher answered"));
        assert_eq!(reader.join().expect("every message, none stalled"), [PER_PUBLISHER; 3]);
    }
);

runtime_test!(
    /// With `queue_qos0`, QoS 0 messages wait for an offline persistent
    /// session too.
    queue_qos0_option_keeps_qos0_for_offline_sessions,
    |c: &mut midge::Config| c.queue_qos0 = true,
    |b: &TestBroker| {
        let mut sub = b.persistent("offline", false);
        sub.subscribe(1, &[("q0", 0)]);
        sub.send(&DISCONNECT);
        sub.expect_closed();
        let mut publisher = b.client("pub");
        publisher.send(&packets::publish0("q0", b"waiting"));
        publisher.ping();
        let mut sub = b.persistent("offline", true);
        assert_eq!(sub.recv().publish().2, b"waiting");
    }
);

runtime_test!(
    /// Retained messages sent for a new subscription count against
    /// `max_queued` too, but a subscriber that reads is held back (midge
    /// stops reading from it) instead of losing them: it gets every one.
    retained_messages_are_not_limited_by_the_queue,
    small_windows,
    |b: &TestBroker| {
        let mut publisher = b.client("pub");
        for i in 0..50u8 {
            publisher.send(&packets::publish_with(&format!("many/{i}"), &[i], 0, None, true, false));
        }
        publisher.ping();
        let mut sub = b.client("sub");
        sub.send(&packets::subscribe(1, &[("many/#", 0)]));
        sub.expect(&packets::suback(1, &[0]));
        let mut seen: Vec<u8> = (0..50).map(|_| sub.recv().publish().2[0]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }
);

runtime_test!(
    /// Retained QoS 1 messages for a new subscription, more than the queue
    /// and the inflight window hold, arrive without a stall while the
    /// subscriber acknowledges them: midge keeps reading its PUBACKs (its
    /// own full queue does not pause its reads), so nothing waits for the
    /// slow-consumer timeout (30 s here; the test's reads wait 5 s at most).
    retained_qos1_beyond_the_queue_flow_while_acknowledged,
    |c: &mut midge::Config| {
        c.max_inflight = 10;
        c.max_queued = 20;
        c.slow_consumer_timeout = Duration::from_secs(30);
    },
    |b: &TestBroker| {
        let mut publisher = b.client("pub");
        for i in 0..200u8 {
            publisher.send(&packets::publish_with(&format!("many/{i}"), &[i], 1, Some(u16::from(i) + 1), true, false));
            publisher.expect(&ack(PUBACK, u16::from(i) + 1));
        }
        let mut sub = b.client("sub");
        sub.send(&packets::subscribe(1, &[("many/#", 1)]));
        sub.expect(&packets::suback(1, &[1]));
        let mut seen: Vec<u8> = (0..200).map(|_| sub.receive_and_ack(1).remove(0).2[0]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }
);

runtime_test!(
    /// A subscriber that never reads does not stall the publisher or another
    /// subscriber: once its socket and its queue are full, it holds the
    /// publisher back for `slow_consumer_timeout` at most; then it is stuck,
    /// messages to it are dropped and counted in
    /// `$SYS/broker/publish/messages/dropped`, while the publisher keeps
    /// going and a reading subscriber gets everything.
    never_reading_subscriber_stalls_nobody,
    |c: &mut midge::Config| {
        c.sys_interval = Duration::from_millis(50);
        c.slow_consumer_timeout = Duration::from_millis(500);
    },
    |b: &TestBroker| {
        const MESSAGES: u32 = 6000;
        let payload = vec![7u8; 8192];
        let mut stuck = b.client("stuck");
        stuck.subscribe(1, &[("flood/#", 0)]);
        let mut healthy = b.client("healthy");
        healthy.subscribe(1, &[("flood/#", 0)]);
        // The reader reports each message, so the publisher can stay within
        // 200 messages of it: QoS 0 to a reader slower than the publisher is
        // dropped once its queue is full, and the point here is the subscriber
        // that never reads.
        let (progress, reached) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::with_capacity(MESSAGES as usize);
            for _ in 0..MESSAGES {
                let n = u32::from_be_bytes(healthy.recv().publish().2[..4].try_into().unwrap());
                got.push(n);
                let _ = progress.send(n);
            }
            got
        });
        let mut publisher = b.client("pub");
        let mut read_up_to = 0;
        for i in 0..MESSAGES {
            let mut body = i.to_be_bytes().to_vec();
            body.extend_from_slice(&payload);
            publisher.send(&packets::publish0("flood/x", &body));
            if i % 100 == 99 {
                publisher.ping(); // the publisher is never held up by the stuck subscriber
                while read_up_to + 200 < i {
                    read_up_to = reached.recv_timeout(TIMEOUT).expect("the reading subscriber keeps getting messages");
                }
            }
        }
        let got = reader.join().unwrap();
        assert_eq!(got, (0..MESSAGES).collect::<Vec<_>>(), "the reading subscriber got every message, in order");
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/broker/publish/messages/dropped", 0)]);
        watcher.recv_until(TIMEOUT, "$SYS/broker/publish/messages/dropped > 0", |p| {
            let dropped: u64 = String::from_utf8(p.publish().2).unwrap().parse().unwrap();
            (dropped > 0).then_some(())
        });
        drop(stuck);
    }
);
