//! `GatherWrites`: the bytes an accepted connection's HTTP/2 (or HTTP/1)
//! side writes within one scheduler turn leave in one write. Does I/O only
//! through the stream it wraps; read `AsyncWrite for GatherWrites` first.
//!
//! Why: each response on a server connection is finished by a task of its
//! own (hyper's per-stream task; for a watch, the session task before it).
//! Its frame wakes the connection's task, which tokio runs straight away
//! from the worker's LIFO slot, so without this every answer cost a
//! `writev` of its own: under watch fan-out that was 30% of the members'
//! CPU (perf profile, BENCHMARKS.md commentary).
//!
//! How: writes go into a buffer. The first flush of newly buffered bytes
//! wakes the task and returns `Pending` instead of writing; tokio puts a
//! task that woke itself at the back of its worker's queue, so the tasks
//! about to answer on the connection's other streams run first and h2 adds
//! their frames to the same buffer. The next flush writes everything. A
//! flush is put off at most once in a row, and only while under
//! `GATHER_BELOW` bytes wait (more is already a good write), so the write
//! always happens on the next poll; a write waits for the stream once
//! `GATHER_LIMIT` bytes are buffered, so memory stays bounded. A write of `GATHER_LIMIT` bytes or
//! more into an empty buffer goes straight through (large ranges, snapshot
//! chunks are not copied).
//!
//! This does in Nod's own code what an earlier patch to h2 did inside the
//! crate (h2 is kept as released, but for etcd compatibility).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered before a write waits for the buffer to be written.
pub const GATHER_LIMIT: usize = 256 * 1024;

/// A flush is put off only while fewer bytes than this wait: h2 flushes
/// when its 16 KiB buffer is full, and so much is already a good write.
pub const GATHER_BELOW: usize = 16 * 1024;

/// A stream whose writes of one scheduler turn are gathered into one.
pub struct GatherWrites<S> {
    inner: S,
    /// Accepted from the writer, not yet written to `inner`; its first
    /// `written` bytes already were.
    buf: Vec<u8>,
    written: usize,
    /// The last flush of a non-empty buffer was put off.
    yielded: bool,
}

impl<S> GatherWrites<S> {
    pub fn new(inner: S) -> Self {
        GatherWrites {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes accepted and not yet written to the stream.
    fn pending(&self) -> usize {
        self.buf.len() - self.written
    }
}

impl<S: AsyncWrite + Unpin> GatherWrites<S> {
    /// Writes everything buffered to the stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // One burst of large frames must not pin its memory for the
        // connection's life.
        if self.buf.capacity() > 2 * GATHER_LIMIT {
            self.buf.shrink_to(GATHER_LIMIT);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatherWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatherWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.pending() >= GATHER_LIMIT {
            ready!(me.poll_drain(cx))?;
        }
        if me.pending() == 0 && data.len() >= GATHER_LIMIT {
            return Pin::new(&mut me.inner).poll_write(cx, data);
        }
        me.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.pending() >= GATHER_LIMIT {
            ready!(me.poll_drain(cx))?;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if me.pending() == 0 && total >= GATHER_LIMIT {
            return Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        }
        me.buf.reserve(total);
        for b in bufs {
            me.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    /// No: h2 then copies DATA payloads under 1 KiB into its own 16 KiB
    /// write buffer instead of chaining each one, and so flushes once a
    /// buffer (or a larger payload) rather than once a chained payload,
    /// which would put a flush off for every message over 256 bytes.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pending() > 0 && !me.yielded && me.pending() < GATHER_BELOW {
            me.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(me.poll_drain(cx))?;
        me.yielded = false;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A sink that takes at most `max_write` bytes a call and counts calls.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        writes: usize,
        flushes: usize,
        max_write: usize,
        blocked: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.blocked {
                return Poll::Pending;
            }
            let n = data.len().min(self.max_write.max(1));
            self.got.extend_from_slice(&data[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn sink(max_write: usize) -> GatherWrites<Sink> {
        GatherWrites::new(Sink {
            max_write,
            ..Sink::default()
        })
    }

    #[test]
    fn a_flush_is_put_off_once_and_then_writes_everything_gathered() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut s = sink(usize::MAX);
        let mut g = Pin::new(&mut s);

        assert!(matches!(
            g.as_mut().poll_write(&mut cx, b"one "),
            Poll::Ready(Ok(4))
        ));
        // The first flush wakes the task and waits one turn; nothing is written.
        assert!(g.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(g.inner.writes, 0);
        // Other streams add their frames meanwhile.
        let bufs = [io::IoSlice::new(b"two "), io::IoSlice::new(b"three")];
        assert!(matches!(
            g.as_mut().poll_write_vectored(&mut cx, &bufs),
            Poll::Ready(Ok(9))
        ));
        // The next flush writes all of it in one write.
        assert!(matches!(
            g.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(g.inner.got, b"one two three");
        assert_eq!((g.inner.writes, g.inner.flushes), (1, 1));
        // Nothing buffered: a flush goes straight to the stream.
        assert!(matches!(
            g.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!((g.inner.writes, g.inner.flushes), (1, 2));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_and_big_writes_go_through() {
        let waker = Arc::new(CountWakes(AtomicUsize::new(0))).into();
        let mut cx = Context::from_waker(&waker);
        let mut s = sink(usize::MAX);
        let mut g = Pin::new(&mut s);

        // A write as large as the limit into an empty buffer is not copied.
        let big = vec![7u8; GATHER_LIMIT];
        assert!(matches!(
            g.as_mut().poll_write(&mut cx, &big),
            Poll::Ready(Ok(n)) if n == GATHER_LIMIT
        ));
        assert_eq!(g.inner.writes, 1);
        assert_eq!(g.pending(), 0);

        // Small writes fill the buffer; past GATHER_BELOW the flush
        // writes at once instead of waiting a turn.
        let piece = vec![1u8; 1000];
        while g.pending() < GATHER_BELOW {
            assert!(g.as_mut().poll_write(&mut cx, &piece).is_ready());
        }
        assert!(matches!(
            g.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(g.pending(), 0);
        assert_eq!(
            g.inner.got.len(),
            GATHER_LIMIT + GATHER_BELOW.div_ceil(1000) * 1000
        );

        // Past GATHER_LIMIT a write first waits for the buffer to be written.
        while g.pending() < GATHER_LIMIT {
            assert!(g.as_mut().poll_write(&mut cx, &piece).is_ready());
        }
        let before = g.inner.writes;
        assert!(g.as_mut().poll_write(&mut cx, &piece).is_ready());
        assert_eq!(g.inner.writes, before + 1);
        assert_eq!(g.pending(), piece.len());
    }

    #[test]
    fn partial_writes_and_a_blocked_stream_lose_and_reorder_nothing() {
        let waker = Arc::new(CountWakes(AtomicUsize::new(0))).into();
        let mut cx = Context::from_waker(&waker);
        let mut s = sink(7);
        let mut g = Pin::new(&mut s);
        let mut sent = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1 + i as usize * 3];
            assert!(g.as_mut().poll_write(&mut cx, &chunk).is_ready());
            sent.extend_from_slice(&chunk);
        }
        g.inner.blocked = true;
        assert!(g.as_mut().poll_flush(&mut cx).is_pending()); // put off
        assert!(g.as_mut().poll_flush(&mut cx).is_pending()); // blocked
        assert!(g.inner.got.is_empty());
        g.inner.blocked = false;
        assert!(matches!(
            g.as_mut().poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(g.inner.got, sent);
    }
}
