//! MQTT over WebSockets (RFC 6455; MQTT 3.1.1 section 6): the server side
//! of the handshake, and [`WsStream`], which turns a WebSocket connection
//! back into the byte stream [`crate::connection::run`] reads, so every rule,
//! limit and test of TCP holds over WebSockets unchanged.
//!
//! - Binary messages carry the bytes; where one ends and the next begins
//!   means nothing (MQTT-6.0.0-2): a packet may span messages and a message
//!   may hold several packets. A text message closes the connection
//!   (MQTT-6.0.0-1). Ping and Pong are answered by tungstenite; a Close reads
//!   as the end of the stream.
//! - The handshake names the configured path (404 otherwise) and offers the
//!   `mqtt` subprotocol (MQTT-6.0.0-3; `mqttv3.1` for MQTT 3.1 clients);
//!   without one it gets 400. The server answers the one it chose
//!   (MQTT-6.0.0-4).
//! - What a peer can make the broker hold is bounded: the handshake request
//!   by [`MAX_HANDSHAKE`] bytes (431 beyond; its time by the caller's
//!   connect timeout), a frame and a message by `max_packet_size` plus
//!   [`FRAMING_SLACK`] (close 1009 beyond), queued pongs by the write buffer
//!   limit (one message and a few pongs; past it tungstenite keeps one
//!   pending pong, each new one replacing the last), and the control frames
//!   handled per read by [`CONTROL_PER_POLL`].
//!
//! Built on async-tungstenite's runtime-neutral API over `futures::io`: it
//! serves every runtime adapter, over TCP and over TLS (`wss://`).

use crate::config::WebSockets;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes, coding::CloseCode};
use async_tungstenite::tungstenite::{self, Message};
use bytes::{Buf, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncWrite, IoSlice};
use futures::{Sink, Stream, ready};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Largest handshake request accepted, in bytes (headers included); a
/// larger one gets 431 and is closed. Browsers send well under 2 KiB
/// without cookies.
pub const MAX_HANDSHAKE: usize = 16 * 1024;

/// What a frame or message may hold beyond `max_packet_size`: the start of
/// the next packet when a client packs several into one message.
pub const FRAMING_SLACK: usize = 1024;

/// Largest binary message one write sends; a longer write is split.
const MAX_WRITE: usize = 64 * 1024;

/// Ping, Pong or empty messages handled in one read before the task yields,
/// so a ping flood cannot hold an executor thread.
pub const CONTROL_PER_POLL: usize = 64;

/// The subprotocols answered, in order of preference: MQTT 3.1.1's, and
/// the one MQTT 3.1 clients offer.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Runs the server side of the WebSocket handshake on `stream` and returns
/// the connection as a byte stream, with the client's address: `addr`, or
/// the first address of `X-Forwarded-For` when the listener trusts it.
///
/// Refusals and failures are logged (rate-limited) and give `None`. There
/// is no time limit here: the caller races it against the connect timeout.
// The callback's result type is tungstenite's (`Callback::on_request`).
#[allow(clippy::result_large_err)]
pub async fn accept<S>(
    stream: S,
    settings: &WebSockets,
    addr: SocketAddr,
    max_packet_size: usize,
) -> Option<(WsStream<S>, SocketAddr)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut outcome = Outcome::default();
    let callback = |request: &Request, response: Response| check(request, response, settings, &mut outcome);
    let handshake =
        async_tungstenite::accept_hdr_async_with_config(Capped::new(stream), callback, Some(config(max_packet_size)));
    match handshake.await {
        Ok(mut ws) => {
            ws.get_mut().lift();
            let client = match outcome.forwarded_for {
                Some(ip) => {
                    log::debug!("{addr}: WebSocket client forwarded for {ip}");
                    SocketAddr::new(ip, 0)
                }
                None => addr,
            };
            if let Some(bad) = outcome.bad_forwarded_for {
                crate::limited!(
                    "bad X-Forwarded-For",
                    log::Level::Warn,
                    "{addr}: X-Forwarded-For {bad:?} is not an IP address; using the connection's address"
                );
            }
            Some((WsStream::new(ws, client), client))
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status();
            let why = outcome.refused.unwrap_or_default();
            crate::limited!(
                "WebSocket handshake refused",
                log::Level::Warn,
                "{addr}: WebSocket handshake refused ({status}): {why}"
            );
            None
        }
        Err(tungstenite::Error::Io(e)) if e.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) => {
            crate::limited!("WebSocket handshake too large", log::Level::Warn, "{addr}: {e}, closing (431)");
            None
        }
        Err(e) => {
            crate::limited!("WebSocket handshake failed", log::Level::Warn, "{addr}: WebSocket handshake failed: {e}");
            None
        }
    }
}

/// The WebSocket settings of a connection: frames and messages bounded by
/// the packet size, a small read buffer, writes sent at once.
fn config(max_packet_size: usize) -> WebSocketConfig {
    let max_message = max_packet_size.saturating_add(FRAMING_SLACK);
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        // One message (its header: at most 14 bytes) and a few pongs.
        .max_write_buffer_size(MAX_WRITE + 14 + 4 * 127)
        .max_frame_size(Some(max_message))
        .max_message_size(Some(max_message))
}

/// What the handshake callback found.
#[derive(Default)]
struct Outcome {
    /// Why the request was refused, for the log line.
    refused: Option<String>,
    /// The trusted `X-Forwarded-For` client address.
    forwarded_for: Option<IpAddr>,
    /// A trusted `X-Forwarded-For` that is not an address.
    bad_forwarded_for: Option<String>,
}

/// Checks the path and the subprotocol and answers the chosen subprotocol.
#[allow(clippy::result_large_err)] // tungstenite's `Callback::on_request`
fn check(
    request: &Request,
    mut response: Response,
    settings: &WebSockets,
    outcome: &mut Outcome,
) -> Result<Response, ErrorResponse> {
    let mut refuse = |status: StatusCode, why: String| {
        let mut error = ErrorResponse::new(Some(format!("{why}\n")));
        *error.status_mut() = status;
        outcome.refused = Some(why);
        Err(error)
    };
    let path = request.uri().path();
    if let Some(wanted) = settings.path.as_deref().filter(|wanted| path != *wanted) {
        return refuse(StatusCode::NOT_FOUND, format!("path {path:?} is not {wanted:?}"));
    }
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
        let why = format!("Sec-WebSocket-Protocol {offered:?} has neither mqtt nor mqttv3.1 [MQTT-6.0.0-3]");
        return refuse(StatusCode::BAD_REQUEST, why);
    };
    response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
    if settings.trust_forwarded_for
        && let Some(value) = request.headers().get("x-forwarded-for")
    {
        let first = value.to_str().unwrap_or("").split(',').next().unwrap_or("").trim();
        match parse_forwarded(first) {
            Some(ip) => outcome.forwarded_for = Some(ip),
            None => outcome.bad_forwarded_for = Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        }
    }
    Ok(response)
}

/// An address as proxies write it in `X-Forwarded-For`: `203.0.113.7`,
/// `2001:db8::1`, and with a port, `203.0.113.7:4711` or `[2001:db8::1]:4711`.
fn parse_forwarded(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// A stream whose reads are capped at [`MAX_HANDSHAKE`] bytes until
/// [`Capped::lift`]: tungstenite buffers the whole request before parsing it.
#[derive(Debug)]
pub struct Capped<S> {
    inner: S,
    /// Bytes left to read; `usize::MAX` once lifted.
    left: usize,
}

/// The error of a read past [`MAX_HANDSHAKE`].
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket handshake request larger than {MAX_HANDSHAKE} bytes")
    }
}

impl std::error::Error for TooLarge {}

/// Answer to an oversized handshake, written once, best effort.
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

impl<S> Capped<S> {
    fn new(inner: S) -> Capped<S> {
        Capped { inner, left: MAX_HANDSHAKE }
    }

    fn lifted(inner: S) -> Capped<S> {
        Capped { inner, left: usize::MAX }
    }

    /// Ends the cap (the handshake is done).
    fn lift(&mut self) {
        self.left = usize::MAX;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Capped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.left == usize::MAX {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.left == 0 {
            // The socket's send buffer is empty during a handshake: this
            // write takes it all or nothing is lost by not retrying.
            let _ = Pin::new(&mut this.inner).poll_write(cx, TOO_LARGE);
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, TooLarge)));
        }
        let n = buf.len().min(this.left);
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n]))?;
        this.left -= read;
        Poll::Ready(Ok(read))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A WebSocket connection as a byte stream: reads return the bytes of
/// binary messages, each write sends one binary message.
#[derive(Debug)]
pub struct WsStream<S> {
    /// Boxed: inline, its few hundred bytes would be copied into several
    /// states of the connection's task (measured: 5.6 KiB against 1.8 KiB
    /// for TCP).
    ws: Box<WebSocketStream<Capped<S>>>,
    /// What is left of the binary message being read.
    reading: Bytes,
    /// The client, for log lines.
    addr: SocketAddr,
    /// The Close frame owed to the peer for bad input, sent on close.
    close: Option<CloseFrame>,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<Capped<S>>, addr: SocketAddr) -> WsStream<S> {
        WsStream { ws: Box::new(ws), reading: Bytes::new(), addr, close: None }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The client side: runs the handshake for `url` (`ws://host:port/path`)
    /// offering `subprotocol`, for the load generator and the tests.
    pub async fn connect(stream: S, url: &str, subprotocol: &str) -> Result<WsStream<S>, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        let offered = HeaderValue::from_str(subprotocol).map_err(tungstenite::http::Error::from)?;
        request.headers_mut().insert("sec-websocket-protocol", offered);
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        let (ws, _) = async_tungstenite::client_async(request, Capped::lifted(stream)).await?;
        Ok(WsStream::new(ws, addr))
    }

    /// Ends the read with an error after bad input, owing the peer a Close
    /// frame with `code`.
    fn fail(&mut self, code: CloseCode, reason: &'static str, error: String) -> io::Error {
        self.close = Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) });
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let addr = this.addr;
        for _ in 0..CONTROL_PER_POLL {
            if !this.reading.is_empty() {
                let n = buf.len().min(this.reading.len());
                buf[..n].copy_from_slice(&this.reading[..n]);
                this.reading.advance(n);
                if this.reading.is_empty() {
                    // The message shares tungstenite's read buffer: let go
                    // of it, or the next read must allocate a new one.
                    this.reading = Bytes::new();
                }
                return Poll::Ready(Ok(n));
            }
            let error = match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                // An empty message would read as the end of the stream.
                Some(Ok(Message::Binary(bytes))) => {
                    this.reading = bytes;
                    continue;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(0)),
                Some(Ok(Message::Text(_))) => {
                    crate::limited!(
                        "WebSocket text frame",
                        log::Level::Warn,
                        "{addr}: text frame received, closing: MQTT over WebSockets is sent in binary frames [MQTT-6.0.0-1]"
                    );
                    this.fail(CloseCode::Unsupported, "binary frames only", "text frame [MQTT-6.0.0-1]".into())
                }
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    crate::limited!(
                        "WebSocket message too large",
                        log::Level::Warn,
                        "{addr}: WebSocket {e} (max_packet_size), closing"
                    );
                    this.fail(CloseCode::Size, "message too large", format!("WebSocket {e}"))
                }
                Some(Err(tungstenite::Error::Protocol(e))) => {
                    crate::limited!(
                        "WebSocket protocol error",
                        log::Level::Warn,
                        "{addr}: WebSocket protocol error: {e}, closing"
                    );
                    this.fail(CloseCode::Protocol, "protocol error", format!("WebSocket protocol error: {e}"))
                }
                Some(Err(e)) => io_error(e),
            };
            return Poll::Ready(Err(error));
        }
        // Many control frames in a row: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends `message` once what was sent before is written out, so the
    /// write buffer never holds more than one message (and a few pongs).
    fn poll_send(&mut self, cx: &mut Context<'_>, message: impl FnOnce() -> Message) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Pin::new(&mut self.ws).start_send(message()).map_err(io_error))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_WRITE);
        ready!(self.poll_send(cx, || Message::Binary(Bytes::copy_from_slice(&buf[..n]))))?;
        Poll::Ready(Ok(n))
    }

    /// The slices go out as one message (one copy, as for a plain write).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(MAX_WRITE);
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let message = || {
            let mut joined = BytesMut::with_capacity(total);
            for b in bufs {
                let room = total - joined.len();
                joined.extend_from_slice(&b[..b.len().min(room)]);
            }
            Message::Binary(joined.freeze())
        };
        ready!(self.poll_send(cx, message))?;
        Poll::Ready(Ok(total))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    /// Sends a Close frame (with the code owed for bad input, if any), then
    /// closes the stream underneath (for TLS: its close_notify).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(frame) = &this.close {
            let frame = frame.clone();
            // Best effort: the peer may have gone.
            let _ = ready!(this.poll_send(cx, || Message::Close(Some(frame))));
            this.close = None;
        }
        let _ = ready!(Pin::new(&mut this.ws).poll_close(cx));
        Pin::new(this.ws.get_mut()).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses() {
        assert_eq!(parse_forwarded("203.0.113.7"), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(parse_forwarded("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_forwarded("203.0.113.7:4711"), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(parse_forwarded("[2001:db8::1]:4711"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_forwarded("unknown"), None);
        assert_eq!(parse_forwarded(""), None);
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    /// The callback's answer: the chosen subprotocol or the refusal's
    /// status, and what it found.
    fn answer(settings: &WebSockets, path: &str, headers: &[(&str, &str)]) -> (Result<String, StatusCode>, Outcome) {
        let mut outcome = Outcome::default();
        let result = check(&request(path, headers), Response::default(), settings, &mut outcome);
        let result =
            result.map(|r| r.headers()["sec-websocket-protocol"].to_str().unwrap().to_owned()).map_err(|e| e.status());
        (result, outcome)
    }

    #[test]
    fn the_handshake_needs_the_path_and_an_mqtt_subprotocol() {
        let ws = WebSockets::default();
        let mqtt = [("Sec-WebSocket-Protocol", "mqtt")];
        assert_eq!(answer(&ws, "/mqtt", &mqtt).0, Ok("mqtt".into()));
        assert_eq!(answer(&ws, "/mqtt?x=1", &mqtt).0, Ok("mqtt".into()), "the query is not the path");
        assert_eq!(answer(&ws, "/other", &mqtt).0, Err(StatusCode::NOT_FOUND));
        assert_eq!(answer(&ws, "/mqtt", &[("Sec-WebSocket-Protocol", "mqttv3.1, mqtt")]).0, Ok("mqtt".into()));
        let two_headers = [("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "mqttv3.1")];
        assert_eq!(answer(&ws, "/mqtt", &two_headers).0, Ok("mqttv3.1".into()));
        let (result, outcome) = answer(&ws, "/mqtt", &[("Sec-WebSocket-Protocol", "chat")]);
        assert_eq!(result, Err(StatusCode::BAD_REQUEST));
        assert!(outcome.refused.unwrap().contains("[MQTT-6.0.0-3]"));
        assert_eq!(answer(&ws, "/mqtt", &[]).0, Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn x_forwarded_for_is_taken_only_when_trusted() {
        let headers = [("Sec-WebSocket-Protocol", "mqtt"), ("X-Forwarded-For", "203.0.113.7, 10.0.0.1")];
        let (_, outcome) = answer(&WebSockets::default(), "/mqtt", &headers);
        assert_eq!(outcome.forwarded_for, None, "not trusted by default");
        let trusted = WebSockets { trust_forwarded_for: true, ..WebSockets::default() };
        let (_, outcome) = answer(&trusted, "/mqtt", &headers);
        assert_eq!(outcome.forwarded_for, Some("203.0.113.7".parse().unwrap()), "the first address");
        let (_, outcome) = answer(&trusted, "/mqtt", &[("Sec-WebSocket-Protocol", "mqtt"), ("X-Forwarded-For", "x")]);
        assert_eq!((outcome.forwarded_for, outcome.bad_forwarded_for.as_deref()), (None, Some("x")));
    }

    #[test]
    fn frames_and_messages_are_bounded_by_the_packet_size() {
        let c = config(4096);
        assert_eq!((c.max_frame_size, c.max_message_size), (Some(4096 + FRAMING_SLACK), Some(4096 + FRAMING_SLACK)));
        assert!(c.max_write_buffer_size > MAX_WRITE + 14, "a whole message fits");
        assert_eq!(config(usize::MAX).max_message_size, Some(usize::MAX));
    }
}
