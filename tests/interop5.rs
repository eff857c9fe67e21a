//! Independent MQTT 5.0 clients against midge: Debian's mosquitto_sub /
//! mosquitto_pub with `-V mqttv5`, properties set with `-D` and read back
//! with `-F` (`%P` user properties, `%C` content type, `%R` response topic,
//! `%D` correlation data, `%E` message expiry, `%A` topic alias, `%S`
//! subscription identifier, `%F` payload format), beside 3.1.1 clients.

use crate::support::TestBroker;
use crate::support::process::{Process, run};
use std::collections::BTreeMap;
use std::time::Duration;

/// mosquitto_sub's `-F` format: one line per message, `msg ` then
/// `key=value` fields split by `|` (see [`fields`]).
const FORMAT: &str = "msg t=%t|p=%p|q=%q|r=%r|P=%P|C=%C|R=%R|D=%D|E=%E|A=%A|S=%S|F=%F";

/// The properties every test publisher sets (`-D publish ...`).
const PUBLISH_PROPERTIES: &[&str] = &[
    "-D",
    "publish",
    "user-property",
    "k1",
    "v1",
    "-D",
    "publish",
    "user-property",
    "k2",
    "v2",
    "-D",
    "publish",
    "user-property",
    "k1",
    "v3",
    "-D",
    "publish",
    "content-type",
    "text/plain",
    "-D",
    "publish",
    "response-topic",
    "reply/to",
    "-D",
    "publish",
    "correlation-data",
    "corr-42",
    "-D",
    "publish",
    "message-expiry-interval",
    "60",
    "-D",
    "publish",
    "payload-format-indicator",
    "1",
];

/// The fields of a [`FORMAT`] line.
fn fields(line: &str) -> BTreeMap<String, String> {
    let rest = line.strip_prefix("msg ").unwrap_or_else(|| panic!("not a message line: {line}"));
    rest.split('|')
        .map(|f| f.split_once('=').unwrap_or_else(|| panic!("bad field {f:?} in {line}")))
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// The Message Expiry Interval of a delivery, which must be there.
fn expiry(message: &BTreeMap<String, String>) -> u32 {
    message["E"].parse().unwrap_or_else(|_| panic!("no Message Expiry Interval: {message:?}"))
}

/// Starts mosquitto_sub on `filter` at QoS 1 speaking `version` (`mqttv5`
/// or `mqttv311`) with `extra` arguments, for `count` messages, and waits
/// for its SUBACK.
fn subscriber(b: &TestBroker, version: &str, filter: &str, count: usize, extra: &[&str]) -> Process {
    let (port, count) = (b.addr.port().to_string(), count.to_string());
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-V", version, "-t", filter, "-q", "1"];
    args.extend(["-C", &count, "-W", "20", "-d", "-F", FORMAT]);
    args.extend(extra);
    let mut sub = Process::mosquitto_sub(&args);
    sub.wait_for("Subscribed (mid");
    sub
}

/// Runs mosquitto_pub speaking `version` on `topic` at QoS 1 with `extra`
/// arguments (the message among them) and checks it exits 0.
fn publish(b: &TestBroker, version: &str, topic: &str, extra: &[&str]) {
    let port = b.addr.port().to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-V", version, "-t", topic, "-q", "1"];
    args.extend(extra);
    assert_eq!(run("mosquitto_pub", &args), Some(0), "mosquitto_pub {args:?}");
}

/// The next message line of `sub`, as fields.
fn next_message(sub: &mut Process) -> BTreeMap<String, String> {
    fields(&sub.wait_for("msg t="))
}

/// The fields of a 3.1.1-shaped delivery: every property empty.
fn without_properties(topic: &str, payload: &str) -> BTreeMap<String, String> {
    let line = format!("msg t={topic}|p={payload}|q=1|r=0|P=|C=|R=|D=|E=|A=|S=|F=");
    fields(&line)
}

runtime_test!(
    /// A mosquitto_pub 5.0 message's properties reach a 5.0 mosquitto_sub
    /// unaltered, User Properties in order with a repeated name
    /// (MQTT-3.3.2-17, -18), Payload Format Indicator, Content Type,
    /// Response Topic, Correlation Data (MQTT-3.3.2-4, -20, -15, -16), the
    /// Message Expiry Interval less the time waited (MQTT-3.3.2-6), and the
    /// subscription's identifier (MQTT-3.3.4-3); a 3.1.1 mosquitto_sub gets
    /// the same message without them.
    mqtt_3_3_2_17_mosquitto_v5_properties_reach_v5_and_are_stripped_for_v311,
    |b: &TestBroker| {
        let mut v5 = subscriber(b, "mqttv5", "props/#", 1, &["-D", "subscribe", "subscription-identifier", "7"]);
        let mut v311 = subscriber(b, "mqttv311", "props/#", 1, &[]);
        let mut args = vec!["-m", "hello"];
        args.extend(PUBLISH_PROPERTIES);
        publish(b, "mqttv5", "props/a", &args);
        let mut got = next_message(&mut v5);
        let left = expiry(&got);
        assert!((58..=60).contains(&left), "Message Expiry Interval {left}, sent 60 (MQTT-3.3.2-6)");
        got.remove("E");
        let line = "msg t=props/a|p=hello|q=1|r=0|P=k1:v1 k2:v2 k1:v3|C=text/plain|R=reply/to|D=corr-42|A=|S=7|F=1";
        assert_eq!(got, fields(line), "5.0 subscriber");
        assert_eq!(next_message(&mut v311), without_properties("props/a", "hello"), "3.1.1 subscriber");
        assert_eq!(v5.wait_exit(), Some(0));
        assert_eq!(v311.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// A 3.1.1 mosquitto_pub message reaches a 5.0 mosquitto_sub with no
    /// properties but its subscription's identifier (MQTT-3.3.4-3), and a
    /// 3.1.1 mosquitto_sub as it was sent.
    mqtt_3_3_4_3_mosquitto_v311_publisher_to_v5_and_v311_subscribers,
    |b: &TestBroker| {
        let mut v5 = subscriber(b, "mqttv5", "plain/#", 1, &["-D", "subscribe", "subscription-identifier", "9"]);
        let mut v311 = subscriber(b, "mqttv311", "plain/#", 1, &[]);
        publish(b, "mqttv311", "plain/a", &["-m", "from 3.1.1"]);
        let mut expected = without_properties("plain/a", "from 3.1.1");
        assert_eq!(next_message(&mut v311), expected, "3.1.1 subscriber");
        expected.insert("S".into(), "9".into());
        assert_eq!(next_message(&mut v5), expected, "5.0 subscriber");
        assert_eq!(v5.wait_exit(), Some(0));
        assert_eq!(v311.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// mosquitto_pub -l with `-D publish topic-alias 1` sets the alias on
    /// its first PUBLISH and sends the next ones with an empty topic
    /// (section 3.3.2.3.4, MQTT-3.3.2-12); 5.0 and 3.1.1 subscribers get
    /// every message on the full topic, and the 5.0 one, which announced no
    /// Topic Alias Maximum, no alias (MQTT-3.1.2-27).
    mqtt_3_3_2_12_mosquitto_pub_topic_alias_reaches_every_subscriber_resolved,
    |b: &TestBroker| {
        let mut v5 = subscriber(b, "mqttv5", "alias/#", 3, &[]);
        let mut v311 = subscriber(b, "mqttv311", "alias/#", 3, &[]);
        let port = b.addr.port().to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-t", "alias/a", "-q", "1", "-l", "-d"];
        let args = [&args[..], &["-D", "publish", "topic-alias", "1"]].concat();
        let mut publisher = Process::spawn_with_input("mosquitto_pub", &args, b"one\ntwo\nthree\n");
        publisher.wait_for("sending PUBLISH (d0, q1, r0, m2, '(null)'");
        assert_eq!(publisher.wait_exit(), Some(0), "mosquitto_pub -l: {:#?}", publisher.seen);
        for payload in ["one", "two", "three"] {
            assert_eq!(next_message(&mut v5), without_properties("alias/a", payload), "5.0 subscriber");
            assert_eq!(next_message(&mut v311), without_properties("alias/a", payload), "3.1.1 subscriber");
        }
        assert_eq!(v5.wait_exit(), Some(0));
        assert_eq!(v311.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// mosquitto_sub -V mqttv5 -c -x 60 keeps its session (Session Expiry
    /// Interval 60) while away: QoS 1 messages published meanwhile arrive
    /// when it comes back (MQTT-3.1.2-23).
    mqtt_3_1_2_23_mosquitto_v5_session_expiry_keeps_messages_while_away,
    |b: &TestBroker| {
        let port = b.addr.port().to_string();
        let session = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-i", "away5", "-c", "-x", "60"];
        let subscribe = [&session[..], &["-t", "away/#", "-q", "1", "-E"]].concat();
        assert_eq!(run("mosquitto_sub", &subscribe), Some(0), "mosquitto_sub -E");
        publish(b, "mqttv5", "away/1", &["-m", "first", "-D", "publish", "user-property", "n", "1"]);
        publish(b, "mqttv311", "away/2", &["-m", "second"]);
        let back = [&session[..], &["-t", "away/#", "-q", "1", "-C", "2", "-W", "20", "-F", FORMAT]].concat();
        let mut sub = Process::mosquitto_sub(&back);
        let mut first = without_properties("away/1", "first");
        first.insert("P".into(), "n:1".into());
        assert_eq!(next_message(&mut sub), first);
        assert_eq!(next_message(&mut sub), without_properties("away/2", "second"));
        assert_eq!(sub.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// A retained message whose Message Expiry Interval (1 s) has passed is
    /// not sent to a new subscriber (MQTT-3.3.2-5); one with 60 s is, with
    /// what is left of it (MQTT-3.3.2-6).
    mqtt_3_3_2_5_mosquitto_v5_retained_message_expires,
    |b: &TestBroker| {
        publish(b, "mqttv5", "expire/short", &["-r", "-m", "short", "-D", "publish", "message-expiry-interval", "1"]);
        publish(b, "mqttv5", "expire/long", &["-r", "-m", "long", "-D", "publish", "message-expiry-interval", "60"]);
        // The interval itself must pass: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(2200));
        let mut sub = subscriber(b, "mqttv5", "expire/#", 2, &[]);
        publish(b, "mqttv5", "expire/sentinel", &["-m", "live"]);
        let retained = next_message(&mut sub);
        assert_eq!((retained["t"].as_str(), retained["r"].as_str()), ("expire/long", "1"), "{retained:?}");
        let left = expiry(&retained);
        assert!((50..=58).contains(&left), "Message Expiry Interval {left} after 2.2 s of 60 (MQTT-3.3.2-6)");
        assert_eq!(next_message(&mut sub)["t"], "expire/sentinel", "the expired retained message was sent");
        assert_eq!(sub.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// A mosquitto_sub that announced Maximum Packet Size 100 is not sent a
    /// 500-byte message (MQTT-3.1.2-24) and gets the next one
    /// (MQTT-3.1.2-25); a 3.1.1 subscriber gets both.
    mqtt_3_1_2_24_mosquitto_v5_maximum_packet_size,
    |b: &TestBroker| {
        let mut small = subscriber(b, "mqttv5", "size/#", 1, &["-D", "connect", "maximum-packet-size", "100"]);
        let mut v311 = subscriber(b, "mqttv311", "size/#", 2, &[]);
        let large = "x".repeat(500);
        publish(b, "mqttv5", "size/large", &["-m", &large]);
        publish(b, "mqttv5", "size/small", &["-m", "fits"]);
        assert_eq!(next_message(&mut small), without_properties("size/small", "fits"), "{:#?}", small.seen);
        assert_eq!(next_message(&mut v311), without_properties("size/large", &large));
        assert_eq!(next_message(&mut v311), without_properties("size/small", "fits"));
        assert_eq!(small.wait_exit(), Some(0));
        assert_eq!(v311.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// PUBACK reason codes as mosquitto_pub -d reports them: 0x10 (16) No
    /// matching subscribers, 0x99 (153) Payload format invalid for a
    /// payload said to be UTF-8 that is not (section 3.4.2.1), 0x00 when a
    /// subscriber matched.
    mqtt_3_4_2_1_mosquitto_v5_puback_reason_codes,
    |b: &TestBroker| {
        let port = b.addr.port().to_string();
        let dir = crate::support::TempDir::new("interop5-payload");
        let bad = dir.0.join("bad");
        std::fs::write(&bad, b"\xff\xfe not utf-8").unwrap();
        let mut sub = subscriber(b, "mqttv5", "rc/matched", 1, &[]);
        let base = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-d"];
        let cases: [(&[&str], &str); 3] = [
            (&["-t", "rc/nobody", "-m", "x"], "RC:16)"),
            (&["-t", "rc/matched", "-f", bad.to_str().unwrap(), "-D", "publish", "payload-format-indicator", "1"], "RC:153)"),
            (&["-t", "rc/matched", "-m", "ok"], "RC:0)"),
        ];
        for (args, reason) in cases {
            let mut publisher = Process::spawn("mosquitto_pub", &[&base[..], args].concat());
            let line = publisher.wait_for("received PUBACK");
            assert!(line.ends_with(reason), "{args:?}: {line}, expected {reason}");
            publisher.wait_exit();
        }
        assert_eq!(next_message(&mut sub)["p"], "ok", "the ill-formed payload was delivered");
        assert_eq!(sub.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// The will of a mosquitto_sub -V mqttv5 killed with SIGKILL is
    /// published with its will properties, User Properties in order
    /// (MQTT-3.1.3-10, MQTT-3.1.2-8).
    mqtt_3_1_3_10_mosquitto_v5_will_properties,
    |b: &TestBroker| {
        let mut watcher = subscriber(b, "mqttv5", "will5/#", 1, &[]);
        let will = [
            "--will-topic", "will5/gone", "--will-payload", "bye", "--will-qos", "1", "-D", "will", "user-property", "b",
            "2", "-D", "will", "user-property", "a", "1", "-D", "will", "content-type", "text/x", "-D", "will",
            "response-topic", "will5/reply", "-D", "will", "correlation-data", "c1", "-D", "will",
            "payload-format-indicator", "1", "-D", "will", "message-expiry-interval", "100",
        ];
        let dying = subscriber(b, "mqttv5", "unrelated", 1, &will);
        drop(dying); // SIGKILL: no DISCONNECT
        let mut got = fields(&watcher.wait_for("msg t=will5/gone"));
        let left = expiry(&got);
        assert!((98..=100).contains(&left), "will Message Expiry Interval {left}, sent 100");
        got.remove("E");
        let line = "msg t=will5/gone|p=bye|q=1|r=0|P=b:2 a:1|C=text/x|R=will5/reply|D=c1|A=|S=|F=1";
        assert_eq!(got, fields(line));
        assert_eq!(watcher.wait_exit(), Some(0));
    }
);

runtime_test!(
    /// Two overlapping subscriptions made by one SUBSCRIBE share its
    /// Subscription Identifier 3: mosquitto_sub gets the message (once or
    /// once per subscription) with identifier 3 (MQTT-3.3.4-3, -4, -5),
    /// and stays connected.
    mqtt_3_3_4_4_mosquitto_v5_overlapping_subscriptions_sharing_an_identifier,
    |b: &TestBroker| {
        let id = ["-D", "subscribe", "subscription-identifier", "3"];
        let mut sub = subscriber(b, "mqttv5", "overlap/#", 1, &[&["-t", "overlap/+"][..], &id].concat());
        publish(b, "mqttv5", "overlap/a", &["-m", "twice matched"]);
        let got = sub.wait_for_within("msg t=", Duration::from_secs(5));
        let mut expected = without_properties("overlap/a", "twice matched");
        expected.insert("S".into(), "3".into());
        assert_eq!(fields(&got), expected);
        assert_eq!(sub.wait_exit(), Some(0));
        let reconnects = sub.seen.iter().filter(|l| l.contains("sending CONNECT")).count();
        assert_eq!(reconnects, 1, "mosquitto_sub had to reconnect: {:#?}", sub.seen);
    }
);

runtime_test!(
    /// A refused 5.0 CONNECT gets a 5.0 reason code, which mosquitto_pub
    /// exits with: an anonymous client where anonymous clients are not
    /// allowed gets 0x87 Not authorized (135) or 0x86 Bad User Name or
    /// Password (134); a 3.1.1 one gets return code 5 (section 3.2.2.2).
    mosquitto_v5_refused_connect_exits_with_the_v5_reason_code,
    |c: &mut midge::Config| c.allow_anonymous = Some(false),
    |b: &TestBroker| {
        let port = b.addr.port().to_string();
        let code = |version| run("mosquitto_pub", &["-h", "127.0.0.1", "-p", &port, "-V", version, "-t", "t", "-m", "x"]);
        let v5 = code("mqttv5");
        assert!(matches!(v5, Some(134 | 135)), "5.0 refusal: mosquitto_pub exited {v5:?}, expected 135 or 134");
        assert_eq!(code("mqttv311"), Some(5), "3.1.1 refusal");
    }
);

runtime_test!(
    /// A shared subscription held by a 5.0 and a 3.1.1 mosquitto_sub gets
    /// each of four messages once for the group, two to each member in turn
    /// (round_robin, the default; section 4.8.2).
    mqtt_4_8_2_mosquitto_shared_subscription_with_v5_and_v311_members,
    |b: &TestBroker| {
        let filter = "$share/group/shared/#";
        let mut members = [subscriber(b, "mqttv5", filter, 2, &[]), subscriber(b, "mqttv311", filter, 2, &[])];
        for i in 0..4 {
            publish(b, "mqttv5", &format!("shared/{i}"), &["-m", &i.to_string()]);
        }
        let mut got: Vec<String> = Vec::new();
        for member in &mut members {
            got.extend([next_message(member)["p"].clone(), next_message(member)["p"].clone()]);
            assert_eq!(member.wait_exit(), Some(0));
        }
        got.sort();
        assert_eq!(got, ["0", "1", "2", "3"], "each message once for the group");
    }
);

runtime_test!(
    /// Will Delay Interval 2 s (`-D will will-delay-interval 2`, Session
    /// Expiry 10 s): a killed mosquitto_sub's will is published after the
    /// delay, not at once; one whose session a new connection resumes within
    /// the delay has no will published (MQTT-3.1.3-9).
    mqtt_3_1_3_9_mosquitto_v5_will_delay_interval,
    |b: &TestBroker| {
        let port = b.addr.port().to_string();
        let watch = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-t", "delayed/#", "-C", "2", "-W", "5", "-d"];
        let mut watcher = Process::mosquitto_sub(&[&watch[..], &["-F", FORMAT]].concat());
        watcher.wait_for("Subscribed (mid");
        let will = |id: &'static str| {
            let topic = format!("delayed/{id}");
            let args = ["-i", id, "-c", "-x", "10", "--will-topic", &topic, "--will-payload", id, "-D", "will"];
            subscriber(b, "mqttv5", "unrelated", 1, &[&args[..], &["will-delay-interval", "2"]].concat())
        };
        let (late, back) = (will("late"), will("back"));
        drop(late); // SIGKILL: no DISCONNECT
        drop(back);
        let start = std::time::Instant::now();
        let resume = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-i", "back", "-c", "-x", "10", "-t", "x", "-E"];
        assert_eq!(run("mosquitto_sub", &resume), Some(0), "resuming the session of back");
        let got = next_message(&mut watcher);
        let elapsed = start.elapsed();
        assert_eq!(got["t"], "delayed/late", "{got:?}");
        assert!(elapsed >= Duration::from_millis(1800), "will published {elapsed:?} after the close, its delay is 2 s");
        // -W 5 ends it ("Timed out" is on stderr), unless a second will came.
        watcher.wait_for("sending DISCONNECT");
        let wills: Vec<_> = watcher.seen.iter().filter(|l| l.starts_with("msg ")).collect();
        assert_eq!(wills.len(), 1, "the will of the resumed session was published (MQTT-3.1.3-9): {wills:#?}");
    }
);

runtime_test!(
    /// A 5.0 CONNECT with an Authentication Method no hook handles gets
    /// CONNACK 0x8C Bad authentication method, mosquitto_pub's exit status
    /// (MQTT-4.12.0-1).
    mqtt_4_12_0_1_mosquitto_v5_unknown_authentication_method_gets_0x8c,
    |b: &TestBroker| {
        let port = b.addr.port().to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-t", "t", "-m", "x"];
        let method = ["-D", "connect", "authentication-method", "SCRAM-SHA-1"];
        assert_eq!(run("mosquitto_pub", &[&args[..], &method].concat()), Some(0x8C));
    }
);

runtime_test!(
    /// A mosquitto_sub announcing Receive Maximum 1 (`-D connect
    /// receive-maximum 1`) gets five QoS 1 messages sent back to back, in
    /// order: one in flight at a time (MQTT-3.3.4-9), none lost.
    mqtt_3_3_4_9_mosquitto_v5_receive_maximum_1,
    |b: &TestBroker| {
        let mut sub = subscriber(b, "mqttv5", "window/#", 5, &["-D", "connect", "receive-maximum", "1"]);
        let port = b.addr.port().to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-t", "window/t", "-q", "1", "-l"];
        let mut publisher = Process::spawn_with_input("mosquitto_pub", &args, b"0\n1\n2\n3\n4\n");
        assert_eq!(publisher.wait_exit(), Some(0), "mosquitto_pub -l");
        for i in 0..5 {
            assert_eq!(next_message(&mut sub), without_properties("window/t", &i.to_string()));
        }
        assert_eq!(sub.wait_exit(), Some(0));
    }
);
