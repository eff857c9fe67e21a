//! A small, self-contained MQTT 3.1.1 client codec: just what the load
//! generator needs, hand-written so the measurements do not depend on midge's
//! own code. Encoders append to a `Vec<u8>`; [`FrameReader`] splits a TCP
//! stream into frames without copying.
//!
//! With `--transport ws` the same bytes go over WebSockets (RFC 6455,
//! hand-written here too): the upgrade with the `mqtt` subprotocol, each
//! write one masked binary frame ([`Writer`]), and the broker's frames
//! taken apart before the MQTT framing ([`Deframer`]).

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

/// The WebSocket path when the transport is WebSockets; unset: plain TCP.
static WS_PATH: OnceLock<String> = OnceLock::new();

/// Makes every connection of this run speak MQTT over WebSockets on `path`.
pub fn use_websockets(path: String) {
    WS_PATH.set(path).expect("transport set once");
}

/// Sends the broker's bytes over TCP, or as masked binary WebSocket frames.
#[derive(Clone)]
pub struct Writer {
    stream: TcpStream,
    /// The masking key of a WebSocket connection.
    mask: Option<[u8; 4]>,
    frame: Vec<u8>,
}

impl Writer {
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let Some(mask) = self.mask else { return self.stream.write_all(buf).await };
        if buf.is_empty() {
            return Ok(());
        }
        self.frame.clear();
        self.frame.push(0x82); // FIN, binary
        match buf.len() {
            n if n < 126 => self.frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                self.frame.push(0x80 | 126);
                self.frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.frame.push(0x80 | 127);
                self.frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.frame.extend_from_slice(&mask);
        let start = self.frame.len();
        self.frame.extend_from_slice(buf);
        for (i, b) in self.frame[start..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        self.stream.write_all(&self.frame).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.flush().await
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
}

/// Takes the broker's WebSocket frames apart: binary and continuation
/// payloads are MQTT bytes; pings and pongs are skipped; a close or a text
/// frame ends the connection.
pub struct Deframer {
    /// Bytes read from the socket; the first `filled` are valid.
    raw: Vec<u8>,
    filled: usize,
    /// Payload bytes still to come of the current frame, and whether they
    /// are MQTT bytes (or a control frame's, to skip).
    left: usize,
    data: bool,
}

impl Deframer {
    fn new() -> Deframer {
        Deframer { raw: vec![0; 64 * 1024], filled: 0, left: 0, data: false }
    }

    /// Where the next read goes.
    fn room(&mut self) -> &mut [u8] {
        &mut self.raw[self.filled..]
    }

    /// Moves the MQTT bytes of what was read to `out`; what is kept is a
    /// partial frame header.
    fn decode(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut at = 0;
        loop {
            if self.left > 0 {
                let n = self.left.min(self.filled - at);
                if self.data {
                    out.extend_from_slice(&self.raw[at..at + n]);
                }
                self.left -= n;
                at += n;
                if self.left > 0 {
                    break;
                }
                continue;
            }
            let head = &self.raw[at..self.filled];
            if head.len() < 2 {
                break;
            }
            let (len, header) = match head[1] & 0x7f {
                126 if head.len() >= 4 => (u16::from_be_bytes([head[2], head[3]]) as usize, 4),
                127 if head.len() >= 10 => (u64::from_be_bytes(head[2..10].try_into().unwrap()) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let bad = |what: &str| Err(io::Error::new(ErrorKind::InvalidData, format!("broker sent a {what} frame")));
            match head[0] & 0x0f {
                0x0 | 0x2 => self.data = true,
                0x9 | 0xa => self.data = false,
                0x8 => return Err(io::Error::new(ErrorKind::UnexpectedEof, "broker closed the WebSocket")),
                0x1 => return bad("text"),
                _ => return bad("reserved"),
            }
            if head[1] & 0x80 != 0 {
                return bad("masked");
            }
            at += header;
            self.left = len;
        }
        self.raw.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(())
    }
}

/// Next masking key: distinct per connection (the broker unmasks every
/// frame all the same).
fn next_mask() -> [u8; 4] {
    static N: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    N.fetch_add(0x7f4a_7c15, Relaxed).to_le_bytes()
}

/// The WebSocket upgrade on `stream`; fails unless the broker answers 101
/// with the `mqtt` subprotocol.
async fn upgrade(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> io::Result<()> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // Byte by byte up to the blank line: nothing of the WebSocket stream is
    // read past the response.
    let mut response = Vec::new();
    let mut byte = [0u8];
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() > 8192 || stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(ErrorKind::InvalidData, "no WebSocket upgrade response"));
        }
        response.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    if !text.starts_with("http/1.1 101") || !text.contains("sec-websocket-protocol: mqtt\r\n") {
        let first = text.lines().next().unwrap_or("").to_owned();
        return Err(io::Error::new(ErrorKind::ConnectionRefused, format!("WebSocket upgrade refused: {first}")));
    }
    Ok(())
}

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;

fn remaining_length(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn string(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// CONNECT, protocol level 4, no will, no credentials; clean session unless
/// `persistent`.
pub fn connect(buf: &mut Vec<u8>, client_id: &str, keepalive: u16, persistent: bool) {
    buf.push(0x10);
    remaining_length(buf, 10 + 2 + client_id.len());
    string(buf, b"MQTT");
    buf.push(4);
    buf.push(if persistent { 0x00 } else { 0x02 });
    buf.extend_from_slice(&keepalive.to_be_bytes());
    string(buf, client_id.as_bytes());
}

/// PUBLISH; `pid` is ignored at QoS 0. `payload` writes the payload into the
/// buffer and must write exactly `payload_len` bytes.
pub fn publish(
    buf: &mut Vec<u8>,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pid: u16,
    payload_len: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) {
    buf.push(0x30 | (qos << 1) | retain as u8);
    let id_len = if qos > 0 { 2 } else { 0 };
    remaining_length(buf, 2 + topic.len() + id_len + payload_len);
    string(buf, topic);
    if qos > 0 {
        buf.extend_from_slice(&pid.to_be_bytes());
    }
    let before = buf.len();
    payload(buf);
    debug_assert_eq!(buf.len() - before, payload_len);
}

pub fn puback(buf: &mut Vec<u8>, pid: u16) {
    buf.extend_from_slice(&[0x40, 0x02]);
    buf.extend_from_slice(&pid.to_be_bytes());
}

pub fn subscribe<'a>(buf: &mut Vec<u8>, pid: u16, filters: impl Iterator<Item = &'a [u8]> + Clone, qos: u8) {
    let len: usize = 2 + filters.clone().map(|f| 2 + f.len() + 1).sum::<usize>();
    buf.push(0x82);
    remaining_length(buf, len);
    buf.extend_from_slice(&pid.to_be_bytes());
    for f in filters {
        string(buf, f);
        buf.push(qos);
    }
}

pub fn pingreq(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xc0, 0x00]);
}

pub fn disconnect(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xe0, 0x00]);
}

/// A PUBLISH as received.
pub struct Publish<'a> {
    pub qos: u8,
    pub retain: bool,
    pub pid: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

pub fn parse_publish(first: u8, body: &[u8]) -> io::Result<Publish<'_>> {
    let bad = || io::Error::new(ErrorKind::InvalidData, "malformed PUBLISH from broker");
    let qos = (first >> 1) & 3;
    if body.len() < 2 {
        return Err(bad());
    }
    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2 + tlen;
    if body.len() < at {
        return Err(bad());
    }
    let topic = &body[2..at];
    let mut pid = 0;
    if qos > 0 {
        if body.len() < at + 2 {
            return Err(bad());
        }
        pid = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
    }
    Ok(Publish { qos, retain: first & 1 == 1, pid, topic, payload: &body[at..] })
}

/// Splits a byte stream into MQTT frames.
pub struct FrameReader {
    stream: TcpStream,
    /// A WebSocket connection's frames, before the MQTT framing.
    ws: Option<Box<Deframer>>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read so far.
    pub bytes: u64,
}

impl FrameReader {
    /// `capacity`: initial buffer size; it grows to hold larger frames.
    pub fn new(stream: TcpStream, capacity: usize) -> Self {
        FrameReader { stream, ws: None, buf: vec![0; capacity.max(16)], start: 0, end: 0, bytes: 0 }
    }

    /// (first byte, header length, total frame length) of the buffered frame, if complete.
    fn frame_bounds(&self) -> io::Result<Option<(u8, usize, usize)>> {
        let data = &self.buf[self.start..self.end];
        if data.len() < 2 {
            return Ok(None);
        }
        let mut len = 0usize;
        let mut shift = 0;
        for i in 1..5 {
            if i >= data.len() {
                return Ok(None);
            }
            len |= ((data[i] & 0x7f) as usize) << shift;
            if data[i] & 0x80 == 0 {
                let header = i + 1;
                return Ok(if data.len() >= header + len { Some((data[0], header, header + len)) } else { None });
            }
            shift += 7;
        }
        Err(io::Error::new(ErrorKind::InvalidData, "bad remaining length from broker"))
    }

    /// The next frame already in the buffer: (first byte, body).
    pub fn next_buffered(&mut self) -> io::Result<Option<(u8, &[u8])>> {
        match self.frame_bounds()? {
            None => Ok(None),
            Some((first, header, total)) => {
                let s = self.start;
                self.start += total;
                Ok(Some((first, &self.buf[s + header..s + total])))
            }
        }
    }

    /// Reads more bytes from the socket; EOF is an error.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < 4096 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let new_len = self.buf.len() * 2;
            self.buf.resize(new_len, 0);
        }
        let n = match &mut self.ws {
            None => {
                let n = self.stream.read(&mut self.buf[self.end..]).await?;
                self.end += n;
                n
            }
            Some(ws) => {
                let n = self.stream.read(ws.room()).await?;
                ws.filled += n;
                // The MQTT bytes go after what is buffered; the buffer keeps
                // at least its length (it was compacted above).
                let len = self.buf.len();
                self.buf.truncate(self.end);
                ws.decode(&mut self.buf)?;
                self.end = self.buf.len();
                self.buf.resize(len.max(self.end), 0);
                n
            }
        };
        if n == 0 {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "broker closed the connection"));
        }
        self.bytes += n as u64;
        Ok(())
    }

    /// Waits for the next frame; returns (first byte, body).
    pub async fn next(&mut self) -> io::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((first, body)) = self.next_buffered()? {
                return Ok((first, body.to_vec()));
            }
            self.fill().await?;
        }
    }
}

/// Runs `f` with a time limit; `TimedOut` when it runs out.
pub async fn timeout<T>(d: Duration, what: &str, f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    let what = what.to_string();
    smol::future::or(f, async move {
        smol::Timer::after(d).await;
        Err(io::Error::new(ErrorKind::TimedOut, format!("{what}: no answer within {d:?}")))
    })
    .await
}

/// Opens a TCP connection (from `source` if given), sends CONNECT and waits
/// for a successful CONNACK. Returns the reader and a writer handle.
pub async fn open(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    client_id: &str,
    keepalive: u16,
    read_buffer: usize,
    persistent: bool,
) -> io::Result<(FrameReader, Writer)> {
    let (reader, writer, _) = open_session(addr, source, client_id, keepalive, read_buffer, persistent).await?;
    Ok((reader, writer))
}

/// [`open`], also returning the CONNACK's session-present flag.
pub async fn open_session(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    client_id: &str,
    keepalive: u16,
    read_buffer: usize,
    persistent: bool,
) -> io::Result<(FrameReader, Writer, bool)> {
    let mut stream = timeout(Duration::from_secs(10), "TCP connect", async {
        match source {
            Some(src) => crate::rawsock::connect_from(src, addr).await,
            None => TcpStream::connect(addr).await,
        }
    })
    .await?;
    stream.set_nodelay(true)?;
    let ws = WS_PATH.get();
    if let Some(path) = ws {
        timeout(Duration::from_secs(10), "WebSocket upgrade", upgrade(&mut stream, addr, path)).await?;
    }
    let mask = ws.map(|_| next_mask());
    let mut writer = Writer { stream: stream.clone(), mask, frame: Vec::new() };
    let mut buf = Vec::with_capacity(64);
    connect(&mut buf, client_id, keepalive, persistent);
    writer.write_all(&buf).await?;
    let mut reader = FrameReader::new(stream, read_buffer);
    reader.ws = ws.map(|_| Box::new(Deframer::new()));
    let (first, body) = timeout(Duration::from_secs(10), "CONNACK", reader.next()).await?;
    if first >> 4 != CONNACK || body.len() != 2 {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("expected CONNACK, got packet type {}", first >> 4),
        ));
    }
    if body[1] != 0 {
        return Err(io::Error::new(ErrorKind::ConnectionRefused, format!("CONNACK return code {}", body[1])));
    }
    Ok((reader, writer, body[0] & 1 == 1))
}

/// Sends DISCONNECT and shuts the socket down; errors are ignored.
pub async fn close(writer: &mut Writer) {
    let mut buf = Vec::with_capacity(2);
    disconnect(&mut buf);
    let _ = timeout(Duration::from_secs(2), "DISCONNECT", async {
        writer.write_all(&buf).await?;
        writer.flush().await
    })
    .await;
    let _ = writer.shutdown(std::net::Shutdown::Both);
}
