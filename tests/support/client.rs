//! A blocking byte-level client with a deadline on every read.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest any single expectation waits.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A received packet: first byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub header: u8,
    pub body: Vec<u8>,
}

impl Received {
    /// For a PUBLISH: (topic, packet id, payload).
    pub fn publish(&self) -> (String, Option<u16>, Vec<u8>) {
        assert_eq!(self.header >> 4, 3, "expected PUBLISH, got {self:?}");
        let len = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let topic = String::from_utf8(self.body[2..2 + len].to_vec()).unwrap();
        let mut at = 2 + len;
        let pid = (self.qos() > 0).then(|| {
            at += 2;
            u16::from_be_bytes([self.body[at - 2], self.body[at - 1]])
        });
        (topic, pid, self.body[at..].to_vec())
    }

    pub fn qos(&self) -> u8 {
        (self.header >> 1) & 3
    }

    pub fn retain(&self) -> bool {
        self.header & 1 == 1
    }

    pub fn dup(&self) -> bool {
        self.header & 8 == 8
    }

    /// A short description for failure messages: topic and payload (as
    /// text) for a PUBLISH, the bytes otherwise.
    pub fn summary(&self) -> String {
        match self.header >> 4 {
            3 => {
                let (topic, _, payload) = self.publish();
                format!("PUBLISH {topic:?} {:?}", String::from_utf8_lossy(&payload))
            }
            _ => format!("{:02x} {:02x?}", self.header, self.body),
        }
    }
}

fn describe(packet: &Option<Received>) -> String {
    packet.as_ref().map_or_else(|| "none".into(), Received::summary)
}

/// A TCP connection to the broker speaking raw bytes.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    /// Connects (TCP only; no MQTT packet is sent).
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("tcp connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        // A broker that stops reading must not hang a test in a write either.
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    /// A second handle on the same connection (to write from another thread).
    pub fn try_clone(&self) -> Raw {
        Raw { stream: self.stream.try_clone().expect("clone the socket") }
    }

    /// Sends bytes; an error means the broker closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Asserts the broker closed the connection; packets it sent before
    /// (or a reset, if it closed with unread bytes) are skipped.
    pub fn expect_closed_or_reset(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected close, got {e}"),
            }
        }
    }

    /// Sends bytes; a broker that already closed may make this fail, which
    /// is ignored (the next expectation tells).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads exactly `expected.len()` bytes and compares.
    pub fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        self.stream.read_exact(&mut got).unwrap_or_else(|e| panic!("expected {expected:02x?}: {e}"));
        assert_eq!(got, expected);
    }

    /// Reads one whole packet.
    pub fn recv(&mut self) -> Received {
        self.try_recv().unwrap_or_else(|e| panic!("expected a packet: {e}"))
    }

    /// Reads one whole packet, or the error that ended the connection.
    pub fn try_recv(&mut self) -> std::io::Result<Received> {
        let mut byte = [0u8];
        self.stream.read_exact(&mut byte)?;
        let header = byte[0];
        let mut len = 0usize;
        for i in 0..4 {
            self.stream.read_exact(&mut byte)?;
            len |= usize::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        Ok(Received { header, body })
    }

    /// Reads packets until `accept` returns `Some`, and returns that; panics
    /// naming `what` (and the last packet seen) if `within` passes first.
    /// For waits on values that arrive repeatedly (`$SYS` updates), where a
    /// per-read timeout alone never fires.
    pub fn recv_until<T>(&mut self, within: Duration, what: &str, mut accept: impl FnMut(&Received) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        let mut last: Option<Received> = None;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            self.stream.set_read_timeout(Some(left.min(TIMEOUT))).unwrap();
            match self.try_recv() {
                Ok(packet) => match accept(&packet) {
                    Some(value) => break Some(value),
                    None => last = Some(packet),
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break None,
                Err(e) => panic!("waiting for {what}: {e} (last packet: {})", describe(&last)),
            }
        };
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        found.unwrap_or_else(|| panic!("no {what} within {within:?} (last packet: {})", describe(&last)))
    }

    /// Asserts the broker closes the connection (EOF or reset) without
    /// sending anything more.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("expected close, got bytes {:02x?}", &buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got {e}"),
        }
    }

    /// Asserts no message is waiting for this client: routing is synchronous
    /// in the publisher's task, and the connection drains its queue after
    /// every packet, so anything queued arrives between two PINGRESPs.
    /// (The publisher must have had its acknowledgement or PINGRESP first.)
    pub fn expect_nothing_queued(&mut self) {
        self.ping();
        self.ping();
    }

    /// PINGREQ → PINGRESP: proves every earlier packet was processed.
    pub fn ping(&mut self) {
        self.send(&super::packets::PINGREQ);
        self.expect(&super::packets::PINGRESP);
    }

    /// SUBSCRIBE and expect SUBACK granting the requested QoS levels.
    pub fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)]) {
        self.send(&super::packets::subscribe(pid, filters));
        let codes: Vec<u8> = filters.iter().map(|(_, q)| *q).collect();
        self.expect(&super::packets::suback(pid, &codes));
    }
}
