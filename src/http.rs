//! The optional HTTP endpoint (`http_listener`): `GET /metrics` in the
//! Prometheus text format and `GET /healthz`, on the broker's own runtime.
//!
//! A deliberately small HTTP/1.x responder: one request per connection
//! (`Connection: close`), a request head of at most [`MAX_HEAD`] bytes
//! (431 beyond), the whole exchange within the connect timeout (408), a
//! malformed request line 400, an unknown path 404, a method other than
//! GET or HEAD 405 with `Allow`, and at most [`MAX_CONNECTIONS`] open at once.

use crate::broker::Broker;
use crate::metrics;
use crate::runtime::{Runtime, within};
use async_channel::{Receiver, Sender};
use futures::future::{Either, select};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::pin_mut;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Largest request head (request line and headers) read; 431 beyond.
pub const MAX_HEAD: usize = 8 * 1024;
/// HTTP connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed to write an error answer after the request time ran out,
/// and to read what the client sent beyond the head before closing.
const LAST_WRITE: Duration = Duration::from_secs(1);
/// Bytes beyond the head read (and dropped) before closing, at most.
const MAX_DISCARD: usize = 64 * 1024;
/// Pause after a failed accept before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one connection's task shares with the others.
struct Endpoint {
    broker: Broker,
    registry: Registry,
    open: AtomicUsize,
}

/// Accepts HTTP connections until `stopped` closes.
pub async fn run<R: Runtime>(rt: R, broker: Broker, listener: R::Listener, stopped: Receiver<()>, alive: Sender<()>) {
    let endpoint =
        Arc::new(Endpoint { registry: metrics::registry(broker.clone()), broker, open: AtomicUsize::new(0) });
    loop {
        let accepted = {
            let accept = rt.accept(&listener);
            let stop = stopped.recv();
            pin_mut!(accept, stop);
            match select(accept, stop).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => return,
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("HTTP accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                rt.sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&endpoint) else {
            crate::limited!(
                "HTTP connections",
                log::Level::Warn,
                "{peer}: HTTP connection refused: {MAX_CONNECTIONS} already open"
            );
            continue;
        };
        let (rt2, stopped, alive) = (rt.clone(), stopped.clone(), alive.clone());
        rt.spawn(async move {
            {
                let stop = stopped.recv();
                let served = serve(&rt2, &slot.0, stream, peer);
                pin_mut!(stop, served);
                select(served, stop).await;
            }
            drop((slot, alive));
        });
    }
}

/// One open HTTP connection, counted against [`MAX_CONNECTIONS`].
struct Slot(Arc<Endpoint>);

impl Slot {
    fn take(endpoint: &Arc<Endpoint>) -> Option<Slot> {
        let slot = Slot(endpoint.clone());
        (endpoint.open.fetch_add(1, Ordering::AcqRel) < MAX_CONNECTIONS).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads one request and answers it, all within the connect timeout.
async fn serve<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    endpoint: &Arc<Endpoint>,
    mut stream: S,
    peer: SocketAddr,
) {
    let timeout = endpoint.broker.config().connect_timeout;
    let exchange = async {
        let response = match read_head(&mut stream).await {
            Ok(Some(head)) => answer(endpoint, &head, peer).await,
            Ok(None) => {
                bad_request(peer, "request head larger than 8 KiB");
                Response::error(431, "Request Header Fields Too Large")
            }
            Err(e) => {
                log::debug!("{peer}: HTTP request not read: {e}");
                return;
            }
        };
        write(&mut stream, &response).await;
    };
    if within(rt, timeout, exchange).await.is_none() {
        bad_request(peer, &format!("request not complete within {timeout:?}"));
        within(rt, LAST_WRITE, write(&mut stream, &Response::error(408, "Request Timeout"))).await;
    }
    // What the client sent beyond the head (a body, the rest of an
    // oversized head) is read and dropped before the socket closes: closed
    // with unread bytes, it would be reset, and the client could lose the
    // answer. Bounded in time and bytes.
    within(rt, LAST_WRITE, discard(&mut stream)).await;
}

/// Reads and drops up to [`MAX_DISCARD`] bytes, until the client closes.
async fn discard<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 1024];
    let mut left = MAX_DISCARD;
    while left > 0 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Logs a refused request (rate-limited: any peer can cause it).
fn bad_request(peer: SocketAddr, why: &str) {
    crate::limited!("bad HTTP request", log::Level::Warn, "{peer}: bad HTTP request: {why}");
}

/// Reads until the blank line ending the head: the head, or `None` if it
/// did not end within [`MAX_HEAD`] bytes. A peer that closes first is an error.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = vec![0; MAX_HEAD];
    let mut filled = 0;
    loop {
        if filled == MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut head[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // The end may straddle two reads: look from a little before.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(end) = head_end(&head[from..filled]) {
            head.truncate(from + end);
            return Ok(Some(head));
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or a bare `\n\n`), past the blank line.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A response: status, extra headers and body.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    allow: bool,
    /// HEAD: the headers of a GET, no body.
    head_only: bool,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, reason: &'static str, content_type: &'static str, body: Vec<u8>) -> Response {
        Response { status, reason, content_type, allow: false, head_only: false, body }
    }

    fn error(status: u16, reason: &'static str) -> Response {
        Response::new(status, reason, "text/plain; charset=utf-8", format!("{status} {reason}\n").into_bytes())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Writes the response and closes the connection; errors end it anyway.
async fn write<S: AsyncWrite + Unpin>(stream: &mut S, response: &Response) {
    let _ = stream.write_all(&response.bytes()).await;
    let _ = stream.close().await;
}

/// The answer to a complete request head. The metrics are encoded on a
/// blocking thread: counting queued messages locks every session in turn.
async fn answer(endpoint: &Arc<Endpoint>, head: &[u8], peer: SocketAddr) -> Response {
    let (method, path) = match parse_request_line(head) {
        Ok(request) => request,
        Err((status, reason, why)) => {
            bad_request(peer, why);
            return Response::error(status, reason);
        }
    };
    if !matches!(path, "/metrics" | "/healthz") {
        log::debug!("{peer}: HTTP {method} {path}: not found");
        return Response::error(404, "Not Found");
    }
    if !matches!(method, "GET" | "HEAD") {
        bad_request(peer, &format!("method {method} not allowed on {path}"));
        return Response { allow: true, ..Response::error(405, "Method Not Allowed") };
    }
    let text = "text/plain; charset=utf-8";
    let response = match path {
        "/metrics" => {
            let endpoint = endpoint.clone();
            let text = blocking::unblock(move || metrics::encode(&endpoint.registry)).await;
            Response::new(200, "OK", metrics::CONTENT_TYPE, text.into_bytes())
        }
        _ if endpoint.broker.store().is_some_and(|s| s.stats().failing()) => {
            Response::new(503, "Service Unavailable", text, b"store failing\n".to_vec())
        }
        _ => Response::new(200, "OK", text, b"ok\n".to_vec()),
    };
    Response { head_only: method == "HEAD", ..response }
}

/// The method and path (query dropped) of `METHOD SP TARGET SP HTTP/1.x`,
/// or the status to refuse it with and why.
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), (u16, &'static str, &'static str)> {
    const BAD: (u16, &str) = (400, "Bad Request");
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| (BAD.0, BAD.1, "request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((BAD.0, BAD.1, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Err((BAD.0, BAD.1, "malformed request line"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err((505, "HTTP Version Not Supported", "HTTP version not supported")),
        _ => return Err((BAD.0, BAD.1, "malformed request line")),
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(("GET", "/metrics")));
        assert_eq!(parse_request_line(b"HEAD /healthz?x=1 HTTP/1.0\n\n"), Ok(("HEAD", "/healthz")));
        for bad in
            [&b"GET\r\n\r\n"[..], b"GET /metrics\r\n\r\n", b"get / HTTP/1.1\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n"]
        {
            assert_eq!(parse_request_line(bad).unwrap_err().0, 400, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_request_line(b"GET  /metrics HTTP/1.1\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(parse_request_line(b"GET / HTTP/2.0\r\n\r\n").unwrap_err().0, 505);
        assert_eq!(parse_request_line(b"GET / FTP/1.0\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(parse_request_line(b"GET /\xff HTTP/1.1\r\n\r\n").unwrap_err().0, 400);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn a_head_response_has_the_headers_of_a_get_and_no_body() {
        let get = Response::new(200, "OK", "text/plain", b"ok\n".to_vec());
        let head = Response { head_only: true, ..Response::new(200, "OK", "text/plain", b"ok\n".to_vec()) };
        let (get, head) = (String::from_utf8(get.bytes()).unwrap(), String::from_utf8(head.bytes()).unwrap());
        assert_eq!(get, format!("{head}ok\n"));
        assert!(head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        let refused = Response { allow: true, ..Response::error(405, "Method Not Allowed") };
        assert!(String::from_utf8(refused.bytes()).unwrap().contains("\r\nAllow: GET, HEAD\r\n"));
    }
}
