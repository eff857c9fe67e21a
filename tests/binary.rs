//! The `midge` binary itself: start-up on each runtime, log lines, a
//! mosquitto round trip, and a clean exit on SIGTERM.

use crate::support::TempDir;
use crate::support::client::Raw;
use crate::support::packets;
use crate::support::process::{Process, run};

/// Starts the binary on `runtime` with its store in `data`.
pub fn start(runtime: &str, data: &TempDir) -> (Process, std::net::SocketAddr) {
    start_with(runtime, data, &[])
}

/// [`start`] with extra arguments.
pub fn start_with(runtime: &str, data: &TempDir, extra: &[&str]) -> (Process, std::net::SocketAddr) {
    start_with_env(runtime, data, extra, &[])
}

/// [`start_with`] with environment variables for the broker.
pub fn start_with_env(
    runtime: &str,
    data: &TempDir,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Process, std::net::SocketAddr) {
    let mut args = vec!["--runtime", runtime, "--bind", "127.0.0.1:0", "--threads", "2", "--data-dir", data.arg()];
    args.extend_from_slice(extra);
    let mut midge = Process::spawn_env(env!("CARGO_BIN_EXE_midge"), &args, env);
    midge.wait_for(&format!("runtime {runtime}"));
    let line = midge.wait_for("listening on ");
    let addr = line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap();
    (midge, addr.parse().unwrap())
}

fn serves_logs_and_stops(runtime: &str) {
    let data = TempDir::new("binary");
    let (mut midge, addr) = start(runtime, &data);
    let port = addr.port().to_string();
    let mut sub = Process::mosquitto_sub(&["-p", &port, "-t", "a/#", "-q", "1", "-C", "1", "-W", "20", "-d"]);
    sub.wait_for("Subscribed (mid");
    assert_eq!(run("mosquitto_pub", &["-p", &port, "-t", "a/b", "-q", "1", "-m", "hi"]), Some(0));
    sub.wait_for("hi");
    assert_eq!(sub.wait_exit(), Some(0));
    midge.wait_for("connected from 127.0.0.1");
    midge.wait_for("disconnected: client sent DISCONNECT");
    let mut bad = Raw::connect(addr);
    bad.send(&packets::PINGREQ);
    bad.expect_closed();
    let warn = midge.wait_for("MQTT-3.1.0-1");
    assert!(warn.contains("\x1b[33m") || warn.contains("\"level\":40"), "not at warn level: {warn:?}");
    assert_eq!(run("kill", &["-TERM", &midge.id().to_string()]), Some(0));
    midge.wait_for("shutting down");
    assert_eq!(midge.wait_exit(), Some(0));
}

#[cfg(feature = "async-std")]
#[test]
fn binary_serves_on_async_std() {
    serves_logs_and_stops("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn binary_serves_on_smol() {
    serves_logs_and_stops("smol");
}

/// A runtime name that is not known is refused with exit code 2.
#[test]
fn binary_refuses_unknown_runtime() {
    assert_eq!(run(env!("CARGO_BIN_EXE_midge"), &["--runtime", "tokio"]), Some(1));
}

/// A data directory in use by a running midge is refused with a clear
/// error and a non-zero exit; a data directory that is a file too.
#[test]
fn binary_refuses_a_locked_or_unusable_store() {
    let data = TempDir::new("locked");
    let runtime = midge::RuntimeKind::default_compiled().name();
    let (_first, _) = start(runtime, &data);
    let mut second = Process::spawn(env!("CARGO_BIN_EXE_midge"), &["--bind", "127.0.0.1:0", "--data-dir", data.arg()]);
    second.wait_for("in use by another running midge");
    assert_eq!(second.wait_exit(), Some(1));
    let file = data.0.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut third =
        Process::spawn(env!("CARGO_BIN_EXE_midge"), &["--bind", "127.0.0.1:0", "--data-dir", file.to_str().unwrap()]);
    third.wait_for("cannot create data directory");
    assert_eq!(third.wait_exit(), Some(1));
}

/// `midge passwd FILE USER` writes a `$7$` entry (password from standard
/// input, never argv) that the broker then accepts; SIGHUP re-reads the
/// file, so a user added later can connect without a restart.
#[test]
fn binary_passwd_and_sighup_reload() {
    use std::io::Write;
    let data = TempDir::new("passwd-bin");
    let file = data.0.join("passwd");
    let add = |user: &str, password: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_midge"))
            .args(["passwd", file.to_str().unwrap(), user])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    add("alice", "wonderland");
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("alice:$7$"));
    let config = data.0.join("midge.toml");
    std::fs::write(&config, format!("password_file = {:?}\n", file.to_str().unwrap())).unwrap();
    let runtime = midge::RuntimeKind::default_compiled().name();
    let (midge, addr) = start_with(runtime, &data, &["--config", config.to_str().unwrap()]);
    let connect = |user: &str, password: &[u8]| {
        let mut c = Raw::connect(addr);
        let packet =
            packets::Connect { client_id: user, username: Some(user), password: Some(password), ..Default::default() };
        c.send(&packet.bytes());
        c.recv().body[1]
    };
    assert_eq!(connect("alice", b"wonderland"), 0);
    assert_eq!(connect("bob", b"builder"), 4);
    add("bob", "builder");
    assert_eq!(run("kill", &["-HUP", &midge.id().to_string()]), Some(0));
    let mut midge = midge;
    midge.wait_for("reloaded");
    assert_eq!(connect("bob", b"builder"), 0);
}

/// A configuration file with an unknown key or a bad value is refused with
/// a message naming the key and its line, and a non-zero exit.
#[test]
fn binary_refuses_a_bad_config_file() {
    let data = TempDir::new("config");
    for (text, key, line) in
        [("sys_interval = 5\nmax_conections = 5\n", "max_conections", 2), ("log_level = \"loud\"\n", "log_level", 1)]
    {
        let file = data.0.join("midge.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_midge"))
            .args(["--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr.contains(key) && stderr.contains(&format!("line {line}")), "{stderr}");
    }
}

/// A client flooding the broker with refused packets does not flood the
/// log: 2000 PUBLISHes the ACL refuses give at most 10 "may not publish"
/// lines per second, and the rest are counted in "N similar message(s)
/// suppressed (denied publish)" lines, which account for every one of them.
fn rate_limits_denied_publish_lines(runtime: &str) {
    const FLOOD: u16 = 2000;
    let data = TempDir::new("flood");
    let acl = data.0.join("acl");
    std::fs::write(&acl, "topic readwrite open/#\n").unwrap();
    let config = data.0.join("midge.toml");
    std::fs::write(&config, format!("acl_file = {:?}\n", acl.to_str().unwrap())).unwrap();
    let (mut midge, addr) = start_with(runtime, &data, &["--config", config.to_str().unwrap()]);
    let started = std::time::Instant::now();
    let mut c = Raw::connect(addr);
    c.send(&packets::connect("flooder", true, 60));
    c.expect(&packets::CONNACK_ACCEPTED);
    let flood: Vec<u8> = (1..=FLOOD).flat_map(|pid| packets::publish("closed/x", b"x", 1, pid)).collect();
    c.send(&flood);
    for pid in 1..=FLOOD {
        c.expect(&packets::ack(packets::PUBACK, pid));
    }
    let (mut logged, mut suppressed) = (0u64, 0u64);
    while logged + suppressed < u64::from(FLOOD) {
        let line = midge.next_line();
        if line.contains("client flooder may not publish to closed/x: not delivered") {
            logged += 1;
        } else if let Some(at) = line.find(" similar message(s) suppressed (denied publish)") {
            let count = line[..at].rsplit(|c: char| !c.is_ascii_digit()).next().unwrap();
            suppressed += count.parse::<u64>().unwrap();
        }
    }
    let windows = started.elapsed().as_secs() + 2;
    assert!(logged <= 10 * windows, "{logged} lines logged in at most {windows} one-second windows");
    assert!(suppressed > 0 && logged + suppressed == u64::from(FLOOD), "{logged} logged, {suppressed} suppressed");
}

#[cfg(feature = "async-std")]
#[test]
fn binary_rate_limits_client_triggered_lines_on_async_std() {
    rate_limits_denied_publish_lines("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn binary_rate_limits_client_triggered_lines_on_smol() {
    rate_limits_denied_publish_lines("smol");
}

/// Log lines never wait for stdout: with nobody reading the binary's
/// output, 800 clients whose connect and disconnect lines are 2 KB each
/// (far more than the pipe and the log queue hold) are all served; the
/// lines that did not fit are counted, and the count is logged once stdout
/// drains again.
fn serves_while_stdout_is_blocked(runtime: &str) {
    let data = TempDir::new("blocked-stdout");
    let (mut midge, addr) = start(runtime, &data);
    midge.pause();
    let long = "x".repeat(2000);
    for i in 0..800 {
        let mut c = Raw::connect(addr);
        c.send(&packets::connect(&format!("c{i}-{long}"), true, 60));
        c.expect(&packets::CONNACK_ACCEPTED);
        c.send(&packets::DISCONNECT);
        c.expect_closed();
    }
    midge.resume();
    let lost = midge.wait_for("log line(s) lost");
    assert!(lost.contains("\"level\":40"), "not at warn level: {lost:?}");
}

#[cfg(feature = "async-std")]
#[test]
fn binary_serves_while_stdout_is_blocked_on_async_std() {
    serves_while_stdout_is_blocked("async-std");
}

#[cfg(feature = "smol")]
#[test]
fn binary_serves_while_stdout_is_blocked_on_smol() {
    serves_while_stdout_is_blocked("smol");
}
