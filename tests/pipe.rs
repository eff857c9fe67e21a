//! The connection handler over an in-memory stream instead of TCP: it is
//! generic over `futures::io::{AsyncRead, AsyncWrite}`.

use crate::support::packets::{self, CONNACK_ACCEPTED, DISCONNECT, PINGREQ, PINGRESP};
use futures::io::{AsyncRead, AsyncWrite, Cursor};
use midge::handle::Peer;
use midge::{Broker, Config, Runtime};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Reads a fixed script of bytes, then end of stream; keeps what is written.
struct Scripted {
    input: Cursor<Vec<u8>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Scripted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.output.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// CONNECT, SUBSCRIBE, a PUBLISH to itself, PINGREQ and DISCONNECT in one
/// read; the exact bytes written back are CONNACK, SUBACK, PINGRESP and the
/// PUBLISH, and the connection ends.
fn scripted_session<R: Runtime>(rt: R) {
    let script = [
        packets::connect("memory", true, 60),
        packets::subscribe(1, &[("self", 0)]),
        packets::publish0("self", b"loop"),
        PINGREQ.to_vec(),
        DISCONNECT.to_vec(),
    ]
    .concat();
    let output = Arc::new(Mutex::new(Vec::new()));
    let stream = Scripted { input: Cursor::new(script), output: output.clone() };
    let (_stop, stopped) = async_channel::bounded(1);
    let peer = Peer::plain("127.0.0.1:9".parse().unwrap());
    let broker = Broker::in_memory(Config::default()).unwrap();
    futures::executor::block_on(midge::connection::run(rt, broker, stream, peer, stopped));
    // The packets of one read are answered together, deliveries after the
    // responses: SUBACK, PINGRESP, then the message routed back.
    let expected =
        [CONNACK_ACCEPTED.to_vec(), packets::suback(1, &[0]), PINGRESP.to_vec(), packets::publish0("self", b"loop")]
            .concat();
    assert_eq!(*output.lock().unwrap(), expected);
}

#[cfg(feature = "async-std")]
#[test]
fn in_memory_stream_on_async_std() {
    scripted_session(midge::AsyncStd);
}

#[cfg(feature = "smol")]
#[test]
fn in_memory_stream_on_smol() {
    scripted_session(midge::Smol::with_threads(1));
}
