//! A small, self-contained MQTT 3.1.1 client codec: just what the load
//! generator needs, hand-written so the measurements do not depend on midge's
//! own code. Encoders append to a `Vec<u8>`; [`FrameReader`] splits a TCP
//! stream into frames without copying.

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read so far.
    pub bytes: u64,
}

impl FrameReader {
    /// `capacity`: initial buffer size; it grows to hold larger frames.
    pub fn new(stream: TcpStream, capacity: usize) -> Self {
        FrameReader { stream, buf: vec![0; capacity.max(16)], start: 0, end: 0, bytes: 0 }
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
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "broker closed the connection"));
        }
        self.end += n;
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
) -> io::Result<(FrameReader, TcpStream)> {
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
) -> io::Result<(FrameReader, TcpStream, bool)> {
    let stream = timeout(Duration::from_secs(10), "TCP connect", async {
        match source {
            Some(src) => crate::rawsock::connect_from(src, addr).await,
            None => TcpStream::connect(addr).await,
        }
    })
    .await?;
    stream.set_nodelay(true)?;
    let mut writer = stream.clone();
    let mut buf = Vec::with_capacity(64);
    connect(&mut buf, client_id, keepalive, persistent);
    writer.write_all(&buf).await?;
    let mut reader = FrameReader::new(stream, read_buffer);
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
pub async fn close(writer: &mut TcpStream) {
    let mut buf = Vec::with_capacity(2);
    disconnect(&mut buf);
    let _ = timeout(Duration::from_secs(2), "DISCONNECT", async {
        writer.write_all(&buf).await?;
        writer.flush().await
    })
    .await;
    let _ = writer.shutdown(std::net::Shutdown::Both);
}
