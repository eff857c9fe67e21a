//! A small, self-contained MQTT 3.1.1 and 5.0 client codec: just what the
//! load generator needs, hand-written so the measurements do not depend on
//! midge's own code. Encoders append to a `Vec<u8>`; [`FrameReader`] splits a
//! TCP stream into frames without copying.
//!
//! The protocol level is chosen once per run ([`use_protocol`]). At 5.0 the
//! packets carry what 5.0 adds: a property length (CONNECT, PUBLISH,
//! SUBSCRIBE; a persistent session asks for Session Expiry 0xFFFFFFFF), an
//! options byte per filter, and with `--topic-alias` a Topic Alias in
//! PUBLISH and a Topic Alias Maximum in CONNECT. From the broker, CONNACK
//! properties give its [`Limits`], PUBACK and SUBACK reason codes from 0x80
//! count as refusals, a PUBLISH's properties are skipped without allocating
//! (its alias resolved in [`Aliases`]), and a DISCONNECT ends the connection
//! with an error naming its reason code. The hot path allocates no more than
//! at 3.1.1: a delivery without properties costs one extra byte compare.
//!
//! With `--transport ws` the same bytes go over WebSockets (RFC 6455,
//! hand-written here too): the upgrade with the `mqtt` subprotocol, each
//! write one masked binary frame ([`Writer`]), and the broker's frames
//! taken apart before the MQTT framing ([`Deframer`]).

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use std::fmt::Write as _;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
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
    /// What the broker's CONNACK announced.
    pub limits: Limits,
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
pub const DISCONNECT: u8 = 14;

/// The protocol level every connection of this run speaks: 4 (MQTT 3.1.1)
/// or 5 (MQTT 5.0).
static LEVEL: AtomicU8 = AtomicU8::new(4);
/// MQTT 5.0: whether publishers send topic aliases and subscribers announce
/// a Topic Alias Maximum.
static TOPIC_ALIASES: AtomicBool = AtomicBool::new(false);
/// MQTT 5.0 with topic aliases: the Topic Alias Maximum every connection
/// announces in CONNECT (the broker may alias deliveries up to it).
pub const ALIASES_IN: u16 = 1024;
/// Inbound deliveries that named their topic by an alias only (an empty
/// topic), summed by [`Aliases::count`] after each batch a connection reads.
static ALIASED_IN: AtomicU64 = AtomicU64::new(0);
/// The limits the first CONNACK of the run announced.
static FIRST_LIMITS: OnceLock<Limits> = OnceLock::new();

/// Makes every connection of this run speak protocol `level` (4 or 5);
/// `topic_aliases` (5 only) turns topic aliases on both ways.
pub fn use_protocol(level: u8, topic_aliases: bool) {
    LEVEL.store(level, Relaxed);
    TOPIC_ALIASES.store(topic_aliases && level == 5, Relaxed);
}

/// Whether this run speaks MQTT 5.0.
pub fn v5() -> bool {
    LEVEL.load(Relaxed) == 5
}

fn topic_aliases() -> bool {
    TOPIC_ALIASES.load(Relaxed)
}

/// Deliveries received with an alias in place of the topic.
pub fn aliased_in() -> u64 {
    ALIASED_IN.load(Relaxed)
}

/// The limits the first CONNACK announced (3.1.1: none).
pub fn first_limits() -> Option<Limits> {
    FIRST_LIMITS.get().copied()
}

/// What the broker announced in its CONNACK (MQTT 5.0; for 3.1.1 the
/// defaults, which mean no limit but the protocol's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Receive Maximum: QoS 1 and 2 PUBLISHes it takes unacknowledged.
    pub receive_max: u16,
    /// Topic Alias Maximum: the highest alias it accepts (0: none).
    pub topic_alias_max: u16,
    /// Maximum Packet Size (0: not announced).
    pub max_packet_size: u32,
    /// Maximum QoS.
    pub max_qos: u8,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { receive_max: u16::MAX, topic_alias_max: 0, max_packet_size: 0, max_qos: 2 }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("malformed {what} from broker"))
}

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

/// A variable byte integer at the start of `b`: (value, its length).
fn read_vbi(b: &[u8], what: &str) -> io::Result<(usize, usize)> {
    let mut v = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        v |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(bad(what))
}

fn string(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

fn be(b: &[u8]) -> u32 {
    b.iter().fold(0, |v, &x| v << 8 | x as u32)
}

/// The value of one MQTT 5.0 property.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prop<'a> {
    /// A byte, two- or four-byte integer or variable byte integer.
    Int(u32),
    /// A string or binary data (a user property: its name).
    Bytes(&'a [u8]),
}

/// Walks the MQTT 5.0 property block at the start of `b` (its length
/// first), calling `f` for each property; returns the bytes after it.
/// Unknown identifiers and values past the block are malformed.
fn properties<'a>(b: &'a [u8], what: &str, mut f: impl FnMut(u8, Prop<'a>)) -> io::Result<&'a [u8]> {
    let (len, n) = read_vbi(b, what)?;
    let rest = b.get(n..).filter(|r| r.len() >= len).ok_or_else(|| bad(what))?;
    let (mut p, after) = rest.split_at(len);
    while let Some((&id, tail)) = p.split_first() {
        let fixed = |k: usize| tail.get(..k).map(|v| (Prop::Int(be(v)), k));
        let prefixed = |at: usize| {
            let l = be(tail.get(at..at + 2)?) as usize;
            tail.get(at + 2..at + 2 + l).map(|v| (v, at + 2 + l))
        };
        let (value, used) = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => fixed(1),
            0x13 | 0x21 | 0x22 | 0x23 => fixed(2),
            0x02 | 0x11 | 0x18 | 0x27 => fixed(4),
            0x0B => read_vbi(tail, what).ok().map(|(v, k)| (Prop::Int(v as u32), k)),
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                prefixed(0).map(|(v, k)| (Prop::Bytes(v), k))
            }
            0x26 => prefixed(0).and_then(|(name, k)| prefixed(k).map(|(_, k)| (Prop::Bytes(name), k))),
            _ => return Err(io::Error::new(ErrorKind::InvalidData, format!("unknown property 0x{id:02x} in {what}"))),
        }
        .ok_or_else(|| bad(what))?;
        f(id, value);
        p = &tail[used..];
    }
    Ok(after)
}

/// The name of an MQTT 5.0 reason code the broker may send.
fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x04 => "disconnect with will",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x92 => "packet identifier not found",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "other",
    }
}

/// "0x8E (session taken over)", with the Reason String if the broker sent one.
fn describe_reason(code: u8, reason_string: Option<&[u8]>) -> String {
    let mut s = format!("0x{code:02X} ({})", reason_name(code));
    if let Some(r) = reason_string {
        let _ = write!(s, ": {}", String::from_utf8_lossy(r));
    }
    s
}

/// The error for a DISCONNECT from the broker (MQTT 5.0): its reason code
/// and Reason String.
fn disconnect_error(body: &[u8]) -> io::Error {
    let code = body.first().copied().unwrap_or(0);
    let mut reason = None;
    if body.len() > 1 {
        let _ = properties(&body[1..], "DISCONNECT", |id, v| {
            if let (0x1F, Prop::Bytes(s)) = (id, v) {
                reason = Some(s);
            }
        });
    }
    io::Error::new(ErrorKind::ConnectionAborted, format!("broker sent DISCONNECT {}", describe_reason(code, reason)))
}

/// CONNECT, no will, no credentials; clean session (3.1.1) / Clean Start
/// (5.0) unless `persistent`. MQTT 5.0: a persistent session never expires
/// (Session Expiry Interval 0xFFFFFFFF, what 3.1.1's clean session 0 means),
/// and with topic aliases the CONNECT announces [`ALIASES_IN`].
pub fn connect(buf: &mut Vec<u8>, client_id: &str, keepalive: u16, persistent: bool) {
    let mut props = [0u8; 8];
    let mut n = 0;
    if persistent {
        props[..5].copy_from_slice(&[0x11, 0xff, 0xff, 0xff, 0xff]);
        n = 5;
    }
    if topic_aliases() {
        props[n] = 0x22;
        props[n + 1..n + 3].copy_from_slice(&ALIASES_IN.to_be_bytes());
        n += 3;
    }
    let v5 = v5();
    buf.push(0x10);
    remaining_length(buf, 10 + if v5 { 1 + n } else { 0 } + 2 + client_id.len());
    string(buf, b"MQTT");
    buf.push(if v5 { 5 } else { 4 });
    buf.push(if persistent { 0x00 } else { 0x02 });
    buf.extend_from_slice(&keepalive.to_be_bytes());
    if v5 {
        buf.push(n as u8);
        buf.extend_from_slice(&props[..n]);
    }
    string(buf, client_id.as_bytes());
}

/// Reads a CONNACK's body: the session-present flag and the broker's
/// limits; a refusal is an error naming its code.
pub fn parse_connack(body: &[u8]) -> io::Result<(bool, Limits)> {
    if body.len() < 2 {
        return Err(bad("CONNACK"));
    }
    let mut limits = Limits::default();
    if v5() && body.len() > 2 {
        let mut reason = None;
        properties(&body[2..], "CONNACK", |id, v| match (id, v) {
            (0x21, Prop::Int(n)) => limits.receive_max = n as u16,
            (0x22, Prop::Int(n)) => limits.topic_alias_max = n as u16,
            (0x27, Prop::Int(n)) => limits.max_packet_size = n,
            (0x24, Prop::Int(n)) => limits.max_qos = n as u8,
            (0x1F, Prop::Bytes(s)) => reason = Some(s),
            _ => {}
        })?;
        if body[1] >= 0x80 {
            let why = describe_reason(body[1], reason);
            return Err(io::Error::new(ErrorKind::ConnectionRefused, format!("CONNACK reason code {why}")));
        }
    } else if body[1] != 0 {
        // A 3.1.1 CONNACK, also what a broker without 5.0 answers a 5.0 CONNECT.
        let hint = if v5() && body[1] == 1 { " (unacceptable protocol version: no MQTT 5.0?)" } else { "" };
        return Err(io::Error::new(ErrorKind::ConnectionRefused, format!("CONNACK return code {}{hint}", body[1])));
    }
    if limits.receive_max == 0 {
        return Err(io::Error::new(ErrorKind::InvalidData, "CONNACK with Receive Maximum 0"));
    }
    let _ = FIRST_LIMITS.set(limits);
    Ok((body[0] & 1 == 1, limits))
}

/// A topic as sent in a PUBLISH: its name (empty when the alias stands for
/// it) and a Topic Alias (MQTT 5.0; 0: none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Topic<'a> {
    pub name: &'a [u8],
    pub alias: u16,
}

impl<'a> Topic<'a> {
    /// A topic sent in full, without an alias.
    pub fn name(name: &'a [u8]) -> Topic<'a> {
        Topic { name, alias: 0 }
    }
}

/// A publisher's topic aliases (MQTT 5.0): topic number `key` gets alias
/// `key % max + 1`; the topic name goes with it only when that alias last
/// stood for another topic (or for none yet).
pub struct OutAliases {
    /// For each alias, 1 + the key it stands for (0: none yet).
    slots: Vec<usize>,
}

impl OutAliases {
    /// Aliases for a connection to a broker with these limits: none unless
    /// topic aliases are on and the broker takes some.
    pub fn new(limits: &Limits) -> OutAliases {
        let n = if topic_aliases() { limits.topic_alias_max as usize } else { 0 };
        OutAliases { slots: vec![0; n] }
    }

    /// How to send topic number `key`, named `name`.
    pub fn topic<'a>(&mut self, key: usize, name: &'a [u8]) -> Topic<'a> {
        if self.slots.is_empty() {
            return Topic::name(name);
        }
        let slot = key % self.slots.len();
        let alias = slot as u16 + 1;
        if self.slots[slot] == key + 1 {
            Topic { name: b"", alias }
        } else {
            self.slots[slot] = key + 1;
            Topic { name, alias }
        }
    }
}

/// PUBLISH; `pid` is ignored at QoS 0. `payload` writes the payload into the
/// buffer and must write exactly `payload_len` bytes. MQTT 5.0: the only
/// property is the topic alias, if any.
pub fn publish(
    buf: &mut Vec<u8>,
    topic: Topic<'_>,
    qos: u8,
    retain: bool,
    pid: u16,
    payload_len: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) {
    let v5 = v5();
    debug_assert!(v5 || topic.alias == 0);
    let props = if topic.alias > 0 { 3 } else { 0 };
    buf.push(0x30 | (qos << 1) | retain as u8);
    let id_len = if qos > 0 { 2 } else { 0 };
    remaining_length(buf, 2 + topic.name.len() + id_len + if v5 { 1 + props } else { 0 } + payload_len);
    string(buf, topic.name);
    if qos > 0 {
        buf.extend_from_slice(&pid.to_be_bytes());
    }
    if v5 {
        buf.push(props as u8);
        if topic.alias > 0 {
            buf.push(0x23);
            buf.extend_from_slice(&topic.alias.to_be_bytes());
        }
    }
    let before = buf.len();
    payload(buf);
    debug_assert_eq!(buf.len() - before, payload_len);
}

/// PUBACK (remaining length 2: success, in 3.1.1 and 5.0 alike).
pub fn puback(buf: &mut Vec<u8>, pid: u16) {
    buf.extend_from_slice(&[0x40, 0x02]);
    buf.extend_from_slice(&pid.to_be_bytes());
}

/// The packet identifier of a PUBACK's body and whether the broker accepted
/// the message (MQTT 5.0: a reason code below 0x80; 3.1.1: always).
pub fn parse_puback(body: &[u8]) -> io::Result<(u16, bool)> {
    match body {
        [a, b, rest @ ..] => Ok((u16::from_be_bytes([*a, *b]), rest.first().is_none_or(|&c| c < 0x80))),
        _ => Err(bad("PUBACK")),
    }
}

/// SUBSCRIBE, every filter at `qos` (MQTT 5.0: no properties, the options
/// byte is the maximum QoS alone).
pub fn subscribe<'a>(buf: &mut Vec<u8>, pid: u16, filters: impl Iterator<Item = &'a [u8]> + Clone, qos: u8) {
    let v5 = v5() as usize;
    let len: usize = 2 + v5 + filters.clone().map(|f| 2 + f.len() + 1).sum::<usize>();
    buf.push(0x82);
    remaining_length(buf, len);
    buf.extend_from_slice(&pid.to_be_bytes());
    if v5 == 1 {
        buf.push(0);
    }
    for f in filters {
        string(buf, f);
        buf.push(qos);
    }
}

/// Checks a SUBACK's body: an error if the broker refused any filter
/// (3.1.1: 0x80; 5.0: any reason code from 0x80, with its Reason String).
pub fn check_suback(body: &[u8]) -> io::Result<()> {
    let mut reason = None;
    let codes = match body.get(2..) {
        Some(rest) if v5() => properties(rest, "SUBACK", |id, v| {
            if let (0x1F, Prop::Bytes(s)) = (id, v) {
                reason = Some(s);
            }
        })?,
        Some(rest) => rest,
        None => return Err(bad("SUBACK")),
    };
    match codes.iter().find(|&&c| c >= 0x80) {
        None if !codes.is_empty() => Ok(()),
        None => Err(bad("SUBACK")),
        Some(&c) => Err(io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "subscription refused (SUBACK {})",
                if v5() { describe_reason(c, reason) } else { format!("0x{c:02X}") }
            ),
        )),
    }
}

pub fn pingreq(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xc0, 0x00]);
}

/// DISCONNECT (remaining length 0: normal disconnection in 5.0 too).
pub fn disconnect(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xe0, 0x00]);
}

/// A PUBLISH as received; `topic` is resolved from the alias if the broker
/// sent one.
pub struct Publish<'a> {
    pub qos: u8,
    pub retain: bool,
    pub pid: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// A connection's inbound topic aliases (MQTT 5.0): what each alias the
/// broker set stands for.
pub struct Aliases {
    max: u16,
    table: Vec<Vec<u8>>,
    /// Deliveries that carried the alias alone.
    aliased: u64,
}

impl Aliases {
    /// The table for one connection; with topic aliases off, any alias from
    /// the broker is an error (none was announced).
    pub fn new() -> Aliases {
        Aliases { max: if topic_aliases() { ALIASES_IN } else { 0 }, table: Vec::new(), aliased: 0 }
    }

    /// The topic of a PUBLISH naming `topic` and `alias` (0: none).
    fn resolve<'a>(&'a mut self, topic: &'a [u8], alias: u16) -> io::Result<&'a [u8]> {
        if alias == 0 {
            return if topic.is_empty() { Err(bad("PUBLISH (empty topic, no alias)")) } else { Ok(topic) };
        }
        if alias > self.max {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("broker sent topic alias {alias}, above the Topic Alias Maximum {} announced", self.max),
            ));
        }
        let i = alias as usize - 1;
        if self.table.len() <= i {
            self.table.resize_with(i + 1, Vec::new);
        }
        let slot = &mut self.table[i];
        if topic.is_empty() {
            if slot.is_empty() {
                return Err(io::Error::new(ErrorKind::InvalidData, format!("broker sent unknown topic alias {alias}")));
            }
            self.aliased += 1;
        } else if slot.as_slice() != topic {
            slot.clear();
            slot.extend_from_slice(topic);
        }
        Ok(slot)
    }
}

impl Default for Aliases {
    fn default() -> Aliases {
        Aliases::new()
    }
}

impl Aliases {
    /// Adds the deliveries by alias read since the last call to the run's
    /// count ([`aliased_in`]): once a batch, not once a message.
    pub fn count(&mut self) {
        if self.aliased > 0 {
            ALIASED_IN.fetch_add(std::mem::take(&mut self.aliased), Relaxed);
        }
    }
}

/// Reads a PUBLISH (its first byte and body); MQTT 5.0: skips the
/// properties and resolves the topic alias in `aliases`.
pub fn parse_publish<'a>(first: u8, body: &'a [u8], aliases: &'a mut Aliases) -> io::Result<Publish<'a>> {
    let qos = (first >> 1) & 3;
    if body.len() < 2 {
        return Err(bad("PUBLISH"));
    }
    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2 + tlen;
    if body.len() < at {
        return Err(bad("PUBLISH"));
    }
    let mut topic = &body[2..at];
    let mut pid = 0;
    if qos > 0 {
        if body.len() < at + 2 {
            return Err(bad("PUBLISH"));
        }
        pid = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
    }
    let mut payload = &body[at..];
    if v5() {
        let mut alias = 0;
        // The common case, no properties, without the walk.
        payload = match payload.split_first() {
            Some((0, rest)) => rest,
            _ => properties(payload, "PUBLISH", |id, v| {
                if let (0x23, Prop::Int(a)) = (id, v) {
                    alias = a as u16;
                }
            })?,
        };
        if alias > 0 || topic.is_empty() {
            topic = aliases.resolve(topic, alias)?;
        }
    }
    Ok(Publish { qos, retain: first & 1 == 1, pid, topic, payload })
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

    /// The next frame already in the buffer: (first byte, body). A DISCONNECT
    /// from the broker (MQTT 5.0) is an error naming its reason code.
    pub fn next_buffered(&mut self) -> io::Result<Option<(u8, &[u8])>> {
        match self.frame_bounds()? {
            None => Ok(None),
            Some((first, header, total)) => {
                let s = self.start;
                self.start += total;
                let body = &self.buf[s + header..s + total];
                if first >> 4 == DISCONNECT {
                    return Err(disconnect_error(body));
                }
                Ok(Some((first, body)))
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
    let mut writer = Writer { stream: stream.clone(), limits: Limits::default(), mask, frame: Vec::new() };
    let mut buf = Vec::with_capacity(64);
    connect(&mut buf, client_id, keepalive, persistent);
    writer.write_all(&buf).await?;
    let mut reader = FrameReader::new(stream, read_buffer);
    reader.ws = ws.map(|_| Box::new(Deframer::new()));
    let (first, body) = timeout(Duration::from_secs(10), "CONNACK", reader.next()).await?;
    if first >> 4 != CONNACK || (!v5() && body.len() != 2) {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("expected CONNACK, got packet type {}", first >> 4),
        ));
    }
    let (present, limits) = parse_connack(&body)?;
    writer.limits = limits;
    Ok((reader, writer, present))
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

#[cfg(test)]
#[path = "mqtt_tests.rs"]
mod tests;
