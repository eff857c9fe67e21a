//! A blocking byte-level client with a deadline on every read, over TCP or
//! over WebSockets (each write one binary message).

use async_tungstenite::tungstenite;
use midge::ws::SUBPROTOCOLS;
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

/// Reads one whole MQTT packet from `from`.
pub fn read_packet(from: &mut impl Read) -> std::io::Result<Received> {
    let mut byte = [0u8];
    from.read_exact(&mut byte)?;
    let header = byte[0];
    let mut len = 0usize;
    for i in 0..4 {
        from.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    from.read_exact(&mut body)?;
    Ok(Received { header, body })
}

/// What a WebSocket client runs over: TCP, or TLS over TCP (`wss://`).
pub trait Socket: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A blocking WebSocket client (tungstenite's own, synchronous).
pub type WebSocket = tungstenite::WebSocket<Box<dyn Socket>>;

/// What a [`Raw`] client speaks over.
pub enum Conn {
    Tcp(TcpStream),
    /// A WebSocket and what is left of the binary message being read.
    Ws(Box<WebSocket>, Vec<u8>),
}

/// A TCP socket with the test timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("tcp connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // A broker that stops reading must not hang a test in a write either.
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The WebSocket handshake on `path` offering `subprotocols` (none if
/// empty): the WebSocket and the subprotocol the broker chose, or the
/// broker's answer if it refused.
pub fn ws_handshake(
    addr: SocketAddr,
    path: &str,
    subprotocols: &[&str],
) -> Result<(WebSocket, Option<String>), tungstenite::Error> {
    ws_handshake_over(Box::new(tcp(addr)), &format!("ws://{addr}{path}"), subprotocols)
}

/// The handshake for `url` over `socket` (TCP or TLS).
pub fn ws_handshake_over(
    socket: Box<dyn Socket>,
    url: &str,
    subprotocols: &[&str],
) -> Result<(WebSocket, Option<String>), tungstenite::Error> {
    ws_handshake_with(socket, url, subprotocols, &[])
}

/// [`ws_handshake_over`] with extra request headers.
pub fn ws_handshake_with(
    socket: Box<dyn Socket>,
    url: &str,
    subprotocols: &[&str],
    headers: &[(&'static str, &str)],
) -> Result<(WebSocket, Option<String>), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    if !subprotocols.is_empty() {
        let offered = subprotocols.join(", ").parse().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", offered);
    }
    match tungstenite::client(request, socket) {
        Ok((ws, response)) => {
            let chosen = response.headers().get("sec-websocket-protocol");
            Ok((ws, chosen.map(|v| v.to_str().unwrap().to_owned())))
        }
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake timed out"),
    }
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Ws(ws, _) => ws.get_ref().tcp(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (ws, pending) = match self {
            Conn::Tcp(s) => return s.read(buf),
            Conn::Ws(ws, pending) => (ws, pending),
        };
        while pending.is_empty() {
            match ws.read() {
                Ok(tungstenite::Message::Binary(bytes)) => pending.extend_from_slice(&bytes),
                Ok(tungstenite::Message::Close(_)) => return Ok(0),
                Ok(tungstenite::Message::Text(t)) => panic!("the broker sent a text frame: {t}"),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(0),
                Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Err(ErrorKind::ConnectionReset.into());
                }
                Err(tungstenite::Error::Io(e)) => return Err(e),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(pending.len());
        buf[..n].copy_from_slice(&pending[..n]);
        pending.drain(..n);
        Ok(n)
    }
}

impl Write for Conn {
    /// Over WebSockets, one binary message.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Ws(ws, _) => match ws.send(tungstenite::Message::binary(buf.to_vec())) {
                Ok(()) => Ok(buf.len()),
                Err(tungstenite::Error::Io(e)) => Err(e),
                Err(e) => Err(std::io::Error::new(ErrorKind::BrokenPipe, e)),
            },
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Ws(ws, _) => ws.flush().map_err(std::io::Error::other),
        }
    }
}

/// A connection to the broker speaking raw bytes.
pub struct Raw {
    stream: Conn,
}

impl Raw {
    /// Connects (TCP only; no MQTT packet is sent).
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw { stream: Conn::Tcp(tcp(addr)) }
    }

    /// Connects over WebSockets on `path` with the `mqtt` subprotocol (no
    /// MQTT packet is sent).
    pub fn connect_ws(addr: SocketAddr, path: &str) -> Raw {
        let (ws, _) =
            ws_handshake(addr, path, &SUBPROTOCOLS[..1]).unwrap_or_else(|e| panic!("WebSocket handshake: {e}"));
        Raw::over(ws)
    }

    /// A client over a WebSocket whose handshake is done.
    pub fn over(ws: WebSocket) -> Raw {
        Raw { stream: Conn::Ws(Box::new(ws), Vec::new()) }
    }

    /// The WebSocket underneath, to send frames of other kinds.
    pub fn websocket(&mut self) -> &mut WebSocket {
        match &mut self.stream {
            Conn::Ws(ws, _) => ws,
            Conn::Tcp(_) => panic!("not a WebSocket client"),
        }
    }

    /// A second handle on the same connection (to write from another thread).
    pub fn try_clone(&self) -> Raw {
        match &self.stream {
            Conn::Tcp(s) => Raw { stream: Conn::Tcp(s.try_clone().expect("clone the socket")) },
            Conn::Ws(..) => panic!("a WebSocket client cannot be cloned"),
        }
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
        read_packet(&mut self.stream)
    }

    /// Sets the time one read may wait (default [`TIMEOUT`]).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.socket().set_read_timeout(Some(timeout)).unwrap();
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
            self.stream.socket().set_read_timeout(Some(left.min(TIMEOUT))).unwrap();
            match self.try_recv() {
                Ok(packet) => match accept(&packet) {
                    Some(value) => break Some(value),
                    None => last = Some(packet),
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break None,
                Err(e) => panic!("waiting for {what}: {e} (last packet: {})", describe(&last)),
            }
        };
        self.stream.socket().set_read_timeout(Some(TIMEOUT)).unwrap();
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

    /// Receives `n` PUBLISH packets (a broker sends its inflight window
    /// without waiting), then completes each one's acknowledgement (PUBACK;
    /// PUBREC, PUBREL, PUBCOMP); (topic, qos, payload, retain) of each, in
    /// the order received.
    pub fn receive_and_ack(&mut self, n: usize) -> Vec<(String, u8, Vec<u8>, bool)> {
        use super::packets::{PUBACK, PUBCOMP, PUBREC, PUBREL, ack};
        let got: Vec<_> = (0..n).map(|_| self.recv()).collect();
        got.iter()
            .map(|got| {
                let (topic, pid, payload) = got.publish();
                match (got.qos(), pid) {
                    (1, Some(pid)) => self.send(&ack(PUBACK, pid)),
                    (2, Some(pid)) => {
                        self.send(&ack(PUBREC, pid));
                        self.expect(&ack(PUBREL, pid));
                        self.send(&ack(PUBCOMP, pid));
                    }
                    _ => {}
                }
                (topic, got.qos(), payload, got.retain())
            })
            .collect()
    }
}
