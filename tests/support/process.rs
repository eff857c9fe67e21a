//! Child processes for tests: the `midge` binary and the mosquitto clients,
//! with their output read line by line under a deadline, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The longest a test waits for one line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child whose stdout lines arrive on a channel.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl Process {
    /// Starts `program` with `args`; panics with a hint if it is missing.
    pub fn spawn(program: &str, args: &[&str]) -> Process {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {program} ({e}); .ci/run installs it (apt-get install mosquitto-clients)")
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines, seen: Vec::new() }
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
        let deadline = Instant::now() + LINE_TIMEOUT;
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
