//! Write coalescing for HTTP/2 client connections. The h2 server writes
//! each frame as it goes and flushes after every DATA frame larger than
//! 256 bytes (it chains the payload instead of copying it), and rustls turns
//! every write into a TLS record and a `writev`: ten 1 KiB responses on one
//! connection meant ten records and ten syscalls where nginx and HAProxy
//! send one. [`Coalesce`] collects writes (up to one TLS record's worth,
//! [`MAX_PENDING`]) and, with [`Coalesce::deferring_flush`], turns a flush
//! into "before this task next reads": it wakes its own task and writes
//! everything that piled up meanwhile at the start of the next poll, so all
//! the frames one poll of the connection produced leave as one record and
//! one syscall, one scheduler round later.
//!
//! A deferred flush is only deferred while the socket takes data: once a
//! write would block, flushes are real again (backpressure), so a full
//! socket never makes the task spin.
//!
//! Under TLS, during the handshake only: the server's last handshake
//! message (TLS 1.3's session ticket, sent after the client's `Finished`)
//! then waits for the first response instead of costing a syscall and a
//! client wake-up of its own; with a new connection per request that is
//! one `writev` in four.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes kept back: one TLS record's plaintext. Larger writes go
/// straight through (after what is already waiting).
pub const MAX_PENDING: usize = 16 * 1024;

/// A stream whose writes are held until flush (or [`MAX_PENDING`]).
#[derive(Debug)]
pub struct Coalesce<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed to `inner`.
    pos: usize,
    /// Flushes wait for the task's next read (see the module docs).
    defer: bool,
    /// A flush was deferred and has not happened yet.
    flush_pending: bool,
    /// The last write or flush to `inner` would have blocked.
    blocked: bool,
    /// What is waiting goes out with the next write (see
    /// [`Coalesce::hold_until_write`]).
    hold: bool,
    /// ... and a read does not send it either.
    hold_across_reads: bool,
}

impl<S> Coalesce<S> {
    /// Wraps `inner`; a flush writes what is waiting, then flushes `inner`.
    pub fn new(inner: S) -> Coalesce<S> {
        Coalesce {
            inner,
            buf: Vec::new(),
            pos: 0,
            defer: false,
            flush_pending: false,
            blocked: false,
            hold: false,
            hold_across_reads: false,
        }
    }

    /// Wraps `inner`; a flush is carried out at the next read (the task is
    /// woken so that there is one), or at once when the socket is full.
    pub fn deferring_flush(inner: S) -> Coalesce<S> {
        Coalesce {
            defer: true,
            ..Coalesce::new(inner)
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Stops deferring flushes, but keeps what is waiting (the end of a
    /// TLS handshake) until the next write joins it, or shutdown: a flush
    /// with nothing new to say does not write it on its own. A read writes
    /// it too unless `across_reads` (for what no peer waits for before it
    /// speaks: TLS 1.3's session ticket, not TLS 1.2's `Finished`).
    pub fn hold_until_write(&mut self, across_reads: bool) {
        self.defer = false;
        self.hold = self.pos < self.buf.len();
        self.hold_across_reads = self.hold && across_reads;
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Hands everything waiting to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pos..]) {
                Poll::Pending => {
                    self.blocked = true;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        self.buf.clear();
        self.pos = 0;
        self.blocked = false;
        self.hold = false;
        self.hold_across_reads = false;
        Poll::Ready(Ok(()))
    }

    /// A real flush: what is waiting, then `inner`.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => {
                self.blocked = true;
                Poll::Pending
            }
            Poll::Ready(r) => {
                self.blocked = false;
                self.flush_pending = false;
                Poll::Ready(r)
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flush_pending && !this.hold_across_reads {
            // Pending means the socket is full: its wake-up is registered
            // and later flushes are real; reading goes on meanwhile.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.hold = false;
        this.hold_across_reads = false;
        if this.buf.len() + data.len() > MAX_PENDING {
            ready!(this.poll_drain(cx))?;
        }
        if data.len() >= MAX_PENDING {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.hold = false;
        this.hold_across_reads = false;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > MAX_PENDING {
            ready!(this.poll_drain(cx))?;
        }
        if total >= MAX_PENDING {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold {
            // Nothing new: keep it for the next write (a read also sends it).
            this.flush_pending = true;
            return Poll::Ready(Ok(()));
        }
        if !this.defer || this.blocked || this.pos == this.buf.len() {
            return this.poll_write_out(cx);
        }
        this.flush_pending = true;
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records every write it gets; accepts at most `limit` bytes per write
    /// and says Pending every other call when `flaky`.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        limit: Option<usize>,
        flaky: bool,
        calls: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            if this.flaky && this.calls % 2 == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = this.limit.unwrap_or(usize::MAX).min(data.len());
            this.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(())) // end of stream
        }
    }

    fn joined(r: &Recorder) -> Vec<u8> {
        r.writes.concat()
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_flush() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(b"frame one;").await.unwrap();
        c.write_all(b"frame two;").await.unwrap();
        let n = c
            .write_vectored(&[IoSlice::new(b"head;"), IoSlice::new(b"body")])
            .await
            .unwrap();
        assert_eq!(n, 9, "small vectored writes are taken whole");
        assert!(
            c.get_ref().writes.is_empty(),
            "nothing written before flush"
        );
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes.len(), 1);
        assert_eq!(joined(c.get_ref()), b"frame one;frame two;head;body");
        assert_eq!(c.get_ref().flushes, 1);
    }

    #[tokio::test]
    async fn large_writes_pass_through_in_order() {
        let mut c = Coalesce::new(Recorder::default());
        let big = vec![7u8; MAX_PENDING + 10];
        c.write_all(b"small").await.unwrap();
        c.write_all(&big).await.unwrap();
        c.write_all(b"tail").await.unwrap();
        c.shutdown().await.unwrap();
        let mut want = b"small".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(joined(c.get_ref()), want);
        assert_eq!(c.get_ref().writes.len(), 3);
    }

    #[tokio::test]
    async fn never_holds_more_than_a_record() {
        let mut c = Coalesce::new(Recorder::default());
        let chunk = vec![1u8; 6000];
        for _ in 0..5 {
            c.write_all(&chunk).await.unwrap();
            assert!(c.buf.len() <= MAX_PENDING);
        }
        c.flush().await.unwrap();
        assert_eq!(joined(c.get_ref()).len(), 30_000);
        assert!(c.get_ref().writes.iter().all(|w| w.len() <= MAX_PENDING));
    }

    #[tokio::test]
    async fn short_and_pending_writes_lose_nothing() {
        let mut c = Coalesce::new(Recorder {
            limit: Some(3),
            flaky: true,
            ..Default::default()
        });
        let mut want = Vec::new();
        for i in 0..50u8 {
            let piece = vec![i; (i as usize * 37) % 900 + 1];
            c.write_all(&piece).await.unwrap();
            want.extend_from_slice(&piece);
            if i % 7 == 0 {
                c.flush().await.unwrap();
            }
        }
        c.flush().await.unwrap();
        assert_eq!(joined(c.get_ref()), want);
    }

    #[tokio::test]
    async fn a_deferred_flush_happens_at_the_next_read() {
        use tokio::io::AsyncReadExt;
        let mut c = Coalesce::deferring_flush(Recorder::default());
        c.write_all(b"headers;").await.unwrap();
        c.flush().await.unwrap();
        c.write_all(b"data one;").await.unwrap();
        c.flush().await.unwrap();
        c.write_all(b"data two").await.unwrap();
        c.flush().await.unwrap();
        assert!(
            c.get_ref().writes.is_empty(),
            "flushes wait for the next read"
        );
        let mut sink = [0u8; 8];
        let _ = c.read(&mut sink).await.unwrap();
        assert_eq!(c.get_ref().writes.len(), 1, "one write for all three");
        assert_eq!(joined(c.get_ref()), b"headers;data one;data two");
        assert_eq!(c.get_ref().flushes, 1);
    }

    #[tokio::test]
    async fn a_deferred_flush_wakes_its_task() {
        let mut c = Coalesce::deferring_flush(Recorder::default());
        c.write_all(b"x").await.unwrap();
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let w = std::task::Waker::from(std::sync::Arc::new(Flag(woken.clone())));
        let mut cx = Context::from_waker(&w);
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert!(
            woken.load(std::sync::atomic::Ordering::SeqCst),
            "woken to flush soon"
        );
        // Shutdown always writes everything out first.
        c.shutdown().await.unwrap();
        assert_eq!(joined(c.get_ref()), b"x");
    }

    #[tokio::test]
    async fn a_full_socket_makes_flushes_real() {
        use tokio::io::AsyncReadExt;
        let mut c = Coalesce::deferring_flush(Recorder {
            flaky: true,
            ..Default::default()
        });
        c.write_all(b"abc").await.unwrap();
        c.flush().await.unwrap(); // deferred
        let mut sink = [0u8; 1];
        let _ = c.read(&mut sink).await.unwrap(); // the write would block
        assert!(c.blocked);
        // Now a flush waits for the socket instead of deferring again.
        c.flush().await.unwrap();
        assert!(!c.blocked);
        assert_eq!(joined(c.get_ref()), b"abc");
    }

    #[tokio::test]
    async fn what_the_handshake_held_back_leaves_with_the_first_response() {
        let mut c = Coalesce::deferring_flush(Recorder::default());
        // The handshake's last message, flushed while deferring.
        c.write_all(b"ticket;").await.unwrap();
        c.flush().await.unwrap();
        assert!(c.get_ref().writes.is_empty());
        c.hold_until_write(true);
        // HTTP/1 flushes, and reads ahead, before it has anything to
        // say: still held.
        c.flush().await.unwrap();
        let mut sink = [0u8; 8];
        let _ = tokio::io::AsyncReadExt::read(&mut c, &mut sink)
            .await
            .unwrap();
        assert!(c.get_ref().writes.is_empty());
        c.write_all(b"response").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes.len(), 1, "one write for both");
        assert_eq!(joined(c.get_ref()), b"ticket;response");
        // No longer deferring: the next flush writes at once.
        c.write_all(b"next").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes.len(), 2);
    }

    #[tokio::test]
    async fn what_is_held_leaves_at_the_next_read() {
        use tokio::io::AsyncReadExt;
        // TLS 1.2: the client waits for the server's Finished before it
        // sends its request, so reading must not wait for a response.
        let mut c = Coalesce::deferring_flush(Recorder::default());
        c.write_all(b"finished").await.unwrap();
        c.flush().await.unwrap();
        c.hold_until_write(false);
        c.flush().await.unwrap();
        assert!(c.get_ref().writes.is_empty());
        let mut sink = [0u8; 8];
        let _ = c.read(&mut sink).await.unwrap();
        assert_eq!(joined(c.get_ref()), b"finished");
    }
}
