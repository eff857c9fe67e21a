//! Child processes for tests: the `midge` binary and the mosquitto clients,
//! with their output read line by line under a deadline, killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a test waits for one line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child whose stdout lines arrive on a channel.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    /// Set while the child's stdout is not read ([`Process::pause`]).
    paused: Arc<(Mutex<bool>, Condvar)>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl Process {
    /// Starts `program` with `args`; panics with a hint if it is missing.
    pub fn spawn(program: &str, args: &[&str]) -> Process {
        Self::start(program, args, None, &[])
    }

    /// [`Process::spawn`] with environment variables set for the child.
    pub fn spawn_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        Self::start(program, args, None, env)
    }

    /// [`Process::spawn`] with `input` on the child's stdin (then closed).
    pub fn spawn_with_input(program: &str, args: &[&str], input: &[u8]) -> Process {
        Self::start(program, args, Some(input), &[])
    }

    fn start(program: &str, args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {program} ({e}); .ci/run installs it (apt-get install mosquitto-clients)")
            });
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input).unwrap_or_else(|e| panic!("{program}: writing its stdin: {e}"));
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        let paused = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = paused.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
                let (flag, resumed) = &*gate;
                let _unpaused = resumed.wait_while(flag.lock().unwrap(), |paused| *paused).unwrap();
            }
        });
        Process { child, lines, paused, seen: Vec::new() }
    }

    /// Stops reading the child's stdout (after at most one more line), so
    /// that its writes block once the pipe is full.
    pub fn pause(&self) {
        *self.paused.0.lock().unwrap() = true;
    }

    /// Reads the child's stdout again.
    pub fn resume(&self) {
        *self.paused.0.lock().unwrap() = false;
        self.paused.1.notify_all();
    }

    /// Waits for the next line and returns it.
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!("no next line ({e}); saw {:#?}", self.seen),
        }
    }

    /// Starts `mosquitto_sub` with line-buffered output (it fully buffers a
    /// pipe otherwise, and its lines would only arrive at exit).
    pub fn mosquitto_sub(args: &[&str]) -> Process {
        let mut full = vec!["-oL", "mosquitto_sub"];
        full.extend_from_slice(args);
        Process::spawn("stdbuf", &full)
    }

    /// Waits for a line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_within(needle, LINE_TIMEOUT)
    }

    /// [`Process::wait_for`] with a time limit of its own (e.g. for a
    /// browser's start on a loaded machine).
    pub fn wait_for_within(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line containing {needle:?} ({e}); saw {:#?}", self.seen),
            }
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the child to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("child {} did not exit", self.child.id());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion (bounded) and returns its exit code.
pub fn run(program: &str, args: &[&str]) -> Option<i32> {
    let mut p = Process::spawn(program, args);
    p.wait_exit()
}
