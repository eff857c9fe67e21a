//! Independent clients against midge: the Eclipse Paho Python client
//! (paho-mqtt 2.x) running `tests/paho/interop.py`, modelled on the Paho
//! interoperability tests (basic, retained, zero-length client id, offline
//! queueing, overlapping subscriptions, keepalive, redelivery, `$` topics,
//! unsubscribe, wills).

use crate::support::TestBroker;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The interoperability script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/interop.py");

/// The script finishes in about 10 s; this bounds it on a loaded machine.
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

/// Runs the script against `b` (bounded) and returns its exit code, stdout
/// and stderr.
fn run_script(b: &TestBroker) -> (Option<i32>, String, String) {
    let port = b.addr.port().to_string();
    let mut child = Command::new("python3")
        .args([SCRIPT, "--host", "127.0.0.1", "--port", &port, "--verbose"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {SCRIPT} ({e}); pip install paho-mqtt==2.2.0"));
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
            panic!("{SCRIPT} did not finish within {SCRIPT_TIMEOUT:?}; output so far:\n{}", stdout.join().unwrap());
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
        let (code, stdout, stderr) = run_script(b);
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
