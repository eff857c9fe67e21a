use crate::support::TestBroker;
use crate::support::client::TIMEOUT;
use crate::support::packets::{self, DISCONNECT, PUBACK, ack};

fn small_windows(c: &mut midge::Config) {
    c.max_inflight = 2;
    c.max_queued = 10;
    c.sys_interval = std::time::Duration::from_millis(50);
}

runtime_test!(
    /// A subscriber that does not acknowledge gets at most `max_inflight`
    /// QoS 1 messages; `max_queued` more wait; the rest are dropped and
    /// counted, while the publisher keeps getting PUBACKs. Acknowledging
    /// releases the queue in order.
    inflight_window_and_queue_limit,
    small_windows,
    |b: &TestBroker| {
        let mut sub = b.client("slow");
        sub.subscribe(1, &[("f", 1)]);
        let mut publisher = b.client("pub");
        for i in 1..=50u16 {
            publisher.send(&packets::publish("f", &i.to_be_bytes(), 1, i));
            publisher.expect(&ack(PUBACK, i));
        }
        let mut received = Vec::new();
        let mut inflight = Vec::new();
        for _ in 0..2 {
            let (_, pid, payload) = sub.recv().publish();
            inflight.push(pid.unwrap());
            received.push(u16::from_be_bytes([payload[0], payload[1]]));
        }
        sub.expect_nothing_queued();
        while received.len() < 12 {
            sub.send(&ack(PUBACK, inflight.remove(0)));
            let (_, pid, payload) = sub.recv().publish();
            inflight.push(pid.unwrap());
            received.push(u16::from_be_bytes([payload[0], payload[1]]));
        }
        inflight.into_iter().for_each(|pid| sub.send(&ack(PUBACK, pid)));
        sub.expect_nothing_queued();
        assert_eq!(received, (1..=12).collect::<Vec<_>>());
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("$SYS/broker/publish/messages/dropped", 0)]);
        watcher.recv_until(TIMEOUT, "$SYS/broker/publish/messages/dropped = 38", |p| {
            (p.publish().2 == b"38").then_some(())
        });
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
    /// Retained messages sent for a new subscription are not cut at
    /// `max_queued`: a wildcard subscriber gets every one.
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
    /// A subscriber that never reads does not stall the publisher or another
    /// subscriber: once its socket and its queue are full, messages to it are
    /// dropped and counted in `$SYS/broker/publish/messages/dropped`, while
    /// the publisher keeps going and a reading subscriber gets everything.
    never_reading_subscriber_stalls_nobody,
    |c: &mut midge::Config| c.sys_interval = std::time::Duration::from_millis(50),
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
