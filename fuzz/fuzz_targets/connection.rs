//! `midge::connection::run` over an in-memory stream whose read side is the
//! fuzz input, then end of stream (the idea of tests/pipe.rs's `Scripted`).
//! When the first byte is odd a valid CONNECT goes first, so the fuzzer
//! reaches the packet loop (SUBSCRIBE, PUBLISH to itself, acknowledgements,
//! wills, a second CONNECT, ...) without having to find a CONNECT itself.
//! Every run gets a fresh in-memory broker; the smol executor is shared.

#![no_main]

use futures::io::{AsyncRead, AsyncWrite, Cursor};
use libfuzzer_sys::fuzz_target;
use midge::handle::Peer;
use midge::{Broker, Config, Smol};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// CONNECT, MQTT 3.1.1, clean session, keepalive 60, client id "fuzz".
const CONNECT: &[u8] = &[0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'f', b'u', b'z', b'z'];

/// Reads a fixed script of bytes, then end of stream; counts what is written.
struct Scripted {
    input: Cursor<Vec<u8>>,
    written: Arc<AtomicUsize>,
}

impl AsyncRead for Scripted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.written.fetch_add(buf.len(), Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> Smol {
    static RT: OnceLock<Smol> = OnceLock::new();
    RT.get_or_init(|| Smol::with_threads(1)).clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let script = match mode & 1 {
        1 => [CONNECT, input].concat(),
        _ => input.to_vec(),
    };
    let config = Config {
        connect_timeout: Duration::from_millis(50),
        sys_interval: Duration::ZERO,
        data_dir: None,
        ..Config::default()
    };
    let broker = Broker::in_memory(config).expect("an in-memory broker");
    let (len, written) = (script.len() as u64, Arc::new(AtomicUsize::new(0)));
    let stream = Scripted { input: Cursor::new(script), written: written.clone() };
    let (_stop, stopped) = async_channel::bounded(1);
    let peer = Peer::plain("127.0.0.1:9".parse().unwrap());
    futures::executor::block_on(midge::connection::run(runtime(), broker.clone(), stream, peer, stopped));
    // The connection is over and accounted for: nothing counts as connected,
    // and the byte counters match the stream.
    let stats = broker.stats();
    assert_eq!(stats.clients_connected.load(Ordering::Relaxed), 0, "a client still counted as connected");
    assert_eq!(stats.bytes_sent.load(Ordering::Relaxed), written.load(Ordering::Relaxed) as u64, "bytes sent");
    assert!(stats.bytes_received.load(Ordering::Relaxed) <= len, "more bytes received than sent");
});
