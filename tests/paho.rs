//! Independent clients against midge: the Eclipse Paho Python client
//! (paho-mqtt 2.x). `tests/paho/interop.py` over MQTT 3.1.1, modelled on the
//! Paho interoperability tests (basic, retained, zero-length client id,
//! offline queueing, overlapping subscriptions, keepalive, redelivery, `$`
//! topics, unsubscribe, wills); `tests/paho/interop5.py` over MQTT 5.0 with
//! paho's `MQTTv5`, modelled on the Paho MQTT 5.0 interoperability tests
//! (properties, reason codes, session expiry, subscription options, flow
//! control).

use crate::support::TestBroker;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The MQTT 3.1.1 interoperability script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/interop.py");

/// The MQTT 5.0 interoperability script.
const SCRIPT5: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/interop5.py");

/// The scripts finish in about 10 s (3.1.1) and 20 s (5.0); this bounds
/// them on a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Panics with an install hint unless python3 can import paho-mqtt 2.x.
fn require_paho() {
    let check = Command::new("python3")
        .args(["-c", "import paho.mqtt.client as m; m.CallbackAPIVersion.VERSION2"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Python 3, then pip install paho-mqtt==2.2.0"));
    assert!(
        check.status.success(),
        "python3 cannot import paho-mqtt 2.x: pip install paho-mqtt==2.2.0\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Reads a child's pipe to the end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `script` with `extra` arguments against `b` (bounded) and returns
/// its exit code, stdout and stderr.
fn run_script(b: &TestBroker, script: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let port = b.addr.port().to_string();
    let mut child = Command::new("python3")
        .args([script, "--host", "127.0.0.1", "--port", &port, "--verbose"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {script} ({e}); pip install paho-mqtt==2.2.0"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}; output so far:\n{}", stdout.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, stdout.join().unwrap(), stderr.join().unwrap())
}

runtime_test!(
    /// paho-mqtt 2.x (MQTT 3.1.1) passes every scenario of tests/paho/interop.py:
    /// QoS 0/1/2 round trips at min(published, granted) QoS (MQTT-3.8.4-6),
    /// retained messages and their clearing (MQTT-3.3.1-6, -8, -10), a
    /// zero-length client id (MQTT-3.1.3-6, -8), offline queueing
    /// (MQTT-3.1.2-5), overlapping subscriptions (MQTT-3.3.5-1), keepalive
    /// expiry (MQTT-3.1.2-24), redelivery with DUP (MQTT-4.4.0-1, MQTT-3.3.1-1),
    /// `$` topics (MQTT-4.7.2-1), unsubscribe (MQTT-3.10.4-2) and wills
    /// (MQTT-3.1.2-8, -10).
    paho_interoperability_suite,
    |b: &TestBroker| {
        require_paho();
        let (code, stdout, stderr) = run_script(b, SCRIPT, &[]);
        assert!(
            stdout.lines().any(|l| l.ends_with(" passed, 0 failed")),
            "paho interoperability failures:\n{stdout}\n{stderr}"
        );
        assert_eq!(
            code,
            Some(0),
            "{SCRIPT} exited with {code:?}:\n{stdout}\n{stderr}"
        );
    }
);

/// The scenarios of tests/paho/interop5.py, each with the statements it
/// checks; every one must print `ok NAME`.
const SCENARIOS5: &[(&str, &str)] = &[
    ("basic", "QoS 0/1/2 round trips over 5.0"),
    ("retained_messages", "retained messages and their clearing (MQTT-3.3.1-5, -6)"),
    ("dollar_topics", "wildcards do not match $ topics (MQTT-4.7.2-1)"),
    ("unsubscribe", "no delivery after UNSUBACK (MQTT-3.10.4-2)"),
    ("will_message", "will on abrupt close, none after DISCONNECT 0x00 (MQTT-3.1.2-8, MQTT-3.14.4-3)"),
    ("connack_properties", "Receive Maximum, Topic Alias Maximum, Server Keep Alive (MQTT-3.2.2-22)"),
    ("zero_length_client_id", "Assigned Client Identifier (MQTT-3.1.3-6, -7, MQTT-3.2.2-16)"),
    ("session_expiry", "Session Expiry Interval 60, 0 and 1 s (MQTT-3.1.2-23, MQTT-4.1.0-2)"),
    ("subscription_identifiers", "overlapping subscriptions' identifiers (MQTT-3.3.4-3, -4, -5)"),
    ("keepalive", "DISCONNECT 0x8D after 1.5 x keepalive, will published (MQTT-3.1.2-22)"),
    ("redelivery_on_resume", "unacknowledged messages resent with DUP (MQTT-4.4.0-1, MQTT-3.3.1-1)"),
    ("unsubscribe_reason_codes", "UNSUBACK 0x00 and 0x11 per filter (3.11.3)"),
    ("will_properties", "will properties in order (MQTT-3.1.3-10); DISCONNECT 0x04 publishes the will"),
    ("user_properties_in_order", "User Properties unaltered and in order (MQTT-3.3.2-17, -18)"),
    (
        "message_properties",
        "PFI, Content Type, Response Topic, Correlation Data (MQTT-3.3.2-4, -15, -16, -20); PUBACK 0x99, 0x10",
    ),
    ("message_expiry", "expired messages not delivered, what is left forwarded (MQTT-3.3.2-5, -6)"),
    (
        "topic_aliases",
        "aliases in, out within the client's maximum, 0x94 above ours (MQTT-3.3.2-12, MQTT-3.1.2-26, -27)",
    ),
    ("no_local", "No Local (MQTT-3.8.3-3)"),
    ("retain_as_published", "Retain As Published (MQTT-3.3.1-12, -13)"),
    ("retain_handling", "Retain Handling 0, 1, 2 (MQTT-3.3.1-9, -10, -11)"),
    ("receive_maximum", "at most the client's Receive Maximum unacknowledged (MQTT-3.3.4-9)"),
    ("maximum_packet_size", "nothing over the client's Maximum Packet Size (MQTT-3.1.2-24, -25)"),
    ("response_information", "Response Information only when asked (MQTT-3.1.2-28)"),
    ("shared_subscriptions", "one delivery per group, round robin, 5.0 and 3.1.1 members, no retained (4.8.2)"),
    ("shared_subscription_member_leaves", "a leaving member's unacknowledged message goes to another (4.8.2)"),
    ("will_delay", "Will Delay Interval, no will when the session resumes in time (MQTT-3.1.3-9)"),
];

runtime_test!(
    /// paho-mqtt 2.x with `MQTTv5` passes every scenario of
    /// tests/paho/interop5.py (listed in [`SCENARIOS5`] with the statements
    /// each checks), against a broker with `max_keepalive` 30 and a
    /// `response_information` prefix.
    paho_mqtt5_interoperability_suite,
    |c: &mut midge::Config| {
        c.max_keepalive = Some(30);
        c.response_information = Some("responses/".into());
    },
    |b: &TestBroker| {
        require_paho();
        let (code, stdout, stderr) =
            run_script(b, SCRIPT5, &["--max-keepalive", "30", "--response-information", "responses/"]);
        let failed: Vec<_> = SCENARIOS5
            .iter()
            .filter(|(name, _)| !stdout.lines().any(|l| l == format!("ok {name}")))
            .map(|(name, checks)| format!("{name} ({checks})"))
            .collect();
        assert!(failed.is_empty(), "paho MQTT 5.0 scenarios not passed: {failed:#?}\n{stdout}\n{stderr}");
        assert!(stdout.lines().any(|l| l.ends_with(" passed, 0 failed")), "{stdout}\n{stderr}");
        assert_eq!(code, Some(0), "{SCRIPT5} exited with {code:?}:\n{stdout}\n{stderr}");
    }
);
