//! An in-memory, bounded, two-way byte stream: the bridge speaks MQTT to
//! its own broker over one, through the same connection handler as every
//! TCP client, so the bridge's session is an ordinary durable session.

use futures::io::{AsyncRead, AsyncWrite};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Bytes one direction holds before its writer waits (backpressure, as a
/// socket buffer gives it).
const CAPACITY: usize = 256 * 1024;

#[derive(Default)]
struct Direction {
    bytes: VecDeque<u8>,
    /// Either end was dropped or closed this direction.
    closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

type Shared = Arc<Mutex<Direction>>;

/// One end of a [`pipe`].
pub struct PipeEnd {
    read: Shared,
    write: Shared,
}

/// Two connected ends: what one writes, the other reads.
pub fn pipe() -> (PipeEnd, PipeEnd) {
    let (a, b) = (Shared::default(), Shared::default());
    (PipeEnd { read: a.clone(), write: b.clone() }, PipeEnd { read: b, write: a })
}

fn lock(d: &Shared) -> std::sync::MutexGuard<'_, Direction> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(d: &Shared) {
    let mut d = lock(d);
    d.closed = true;
    d.reader.take().into_iter().chain(d.writer.take()).for_each(Waker::wake);
}

impl AsyncRead for PipeEnd {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut d = lock(&self.read);
        if d.bytes.is_empty() {
            if d.closed {
                return Poll::Ready(Ok(0));
            }
            d.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(d.bytes.len());
        let (front, back) = d.bytes.as_slices();
        let from_front = n.min(front.len());
        buf[..from_front].copy_from_slice(&front[..from_front]);
        buf[from_front..n].copy_from_slice(&back[..n - from_front]);
        d.bytes.drain(..n);
        if let Some(w) = d.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut d = lock(&self.write);
        if d.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = CAPACITY.saturating_sub(d.bytes.len());
        if room == 0 {
            d.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        d.bytes.extend(&buf[..n]);
        if let Some(w) = d.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        close(&self.write);
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        close(&self.read);
        close(&self.write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bytes_cross_both_ways_and_a_dropped_end_is_end_of_stream() {
        futures::executor::block_on(async {
            let (mut a, mut b) = pipe();
            a.write_all(b"ping").await.unwrap();
            let mut buf = [0; 4];
            b.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            b.write_all(b"pong").await.unwrap();
            a.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
            drop(a);
            assert_eq!(b.read(&mut buf).await.unwrap(), 0);
            assert!(b.write_all(b"x").await.is_err());
        });
    }

    #[test]
    fn a_full_direction_makes_the_writer_wait() {
        let (mut a, mut b) = pipe();
        let big = vec![7u8; CAPACITY + 10];
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let written = match Pin::new(&mut a).poll_write(&mut cx, &big) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(written, CAPACITY);
        assert!(Pin::new(&mut a).poll_write(&mut cx, &big[written..]).is_pending());
        let mut buf = vec![0; CAPACITY];
        assert!(matches!(Pin::new(&mut b).poll_read(&mut cx, &mut buf), Poll::Ready(Ok(n)) if n == CAPACITY));
        assert!(matches!(Pin::new(&mut a).poll_write(&mut cx, &big[written..]), Poll::Ready(Ok(10))));
    }
}
