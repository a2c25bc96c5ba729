//! The client stream of a connection of the gateway listeners: it reads
//! exactly as the stream it wraps, except while a request header is being
//! read (then it caps the bytes and watches the deadline, and cuts the
//! connection when either is broken), and forwards every pingora stream
//! trait to the stream inside.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::cut::Cut;
use super::lock;
use super::phase::{Conn, BODY, HEADER, IDLE};
use crate::config::ClientSettings;
use crate::core::framing::LineScan;

/// A client stream that reads exactly like the stream it wraps, except that
/// while a request header is read it never reads more than
/// `max_header_bytes` for it and gives up at its deadline.
pub struct Guarded {
    inner: Option<Stream>,
    conn: Arc<Conn>,
    timeout: Duration,
    max_bytes: usize,
    /// Header bytes read for the header being read.
    read: usize,
    /// When the header being read must be complete.
    deadline: Instant,
    /// The connection's one timer: armed when a header read has to wait
    /// (slow clients) and for the wait between requests.
    timer: Option<Pin<Box<Sleep>>>,
    /// The next request's header, read by [`Guarded::wait_header`] while
    /// no session existed, handed out before the stream's own bytes.
    stash: Vec<u8>,
    /// Bytes of `stash` already handed out.
    stashed_out: usize,
}

/// The most a wait for a request's header reads at once (on the stack of
/// one poll, never held while waiting).
const FIRST_READ: usize = 2048;

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("read", &self.read)
            .finish()
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection cut")
}

impl Guarded {
    pub(crate) fn new(inner: Stream, conn: Arc<Conn>, client: &ClientSettings) -> Guarded {
        Guarded {
            inner: Some(inner),
            conn,
            timeout: client.header_timeout,
            max_bytes: client.max_header_bytes,
            read: 0,
            deadline: Instant::now() + client.header_timeout,
            timer: None,
            stash: Vec::new(),
            stashed_out: 0,
        }
    }

    /// Hands out up to `max` stashed bytes into `buf`; the stash is freed
    /// once empty.
    fn unstash(&mut self, buf: &mut ReadBuf<'_>, max: usize) {
        let n = (self.stash.len() - self.stashed_out)
            .min(max)
            .min(buf.remaining());
        buf.put_slice(&self.stash[self.stashed_out..self.stashed_out + n]);
        self.stashed_out += n;
        if self.stashed_out == self.stash.len() {
            self.stash = Vec::new();
            self.stashed_out = 0;
        }
    }

    /// Reads what has arrived into the stash, on the stack of this poll;
    /// Ready(Ok(true)) once the stash holds a whole header (or as many bytes
    /// as a header may have), Ready(Ok(false)) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        loop {
            if header_end(&self.stash) || self.stash.len() >= self.max_bytes {
                return Poll::Ready(Ok(true));
            }
            let Some(io) = self.inner.as_mut() else {
                return Poll::Ready(Err(gone()));
            };
            // Not zeroed: the read fills what it says it filled.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
            let room = (self.max_bytes - self.stash.len()).min(FIRST_READ);
            let mut buf = ReadBuf::uninit(&mut chunk[..room]);
            match Pin::new(io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => self.stash.extend_from_slice(buf.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Waits for the next request's header with nothing held but the
    /// socket and the bytes that came: first for its first byte (`idle`
    /// between requests; for the first request the header's deadline,
    /// counted from the connection's start), then for the rest of the header
    /// within `client.header_timeout`. Its bytes stay in the stash, read
    /// again by the session. A header that breaks a limit is cut as the
    /// session's read would cut it.
    pub(crate) async fn wait_header(&mut self, idle: Option<Duration>) -> Waited {
        let first = match idle {
            Some(d) => Instant::now() + d,
            None => self.deadline,
        };
        let got = self.until(first, Guarded::poll_first).await;
        match got {
            None if idle.is_some() => return Waited::Idle,
            None => return self.cut_now(Cut::Silent),
            Some(Ok(true)) => {}
            Some(Ok(false) | Err(_)) => return Waited::Idle,
        }
        let deadline = match idle {
            Some(_) => Instant::now() + self.timeout,
            None => self.deadline,
        };
        let rest = self.until(deadline, Guarded::poll_fill).await;
        match rest {
            Some(Ok(true)) => Waited::Header,
            None => self.cut_now(Cut::HeaderTimeout),
            Some(Ok(false) | Err(_)) => self.cut_now(Cut::ClosedMidHeader),
        }
    }

    /// `read` until it is ready (Some) or `at` passes first (None), on the
    /// connection's one timer.
    async fn until(
        &mut self,
        at: Instant,
        read: fn(&mut Self, &mut Context<'_>) -> Poll<std::io::Result<bool>>,
    ) -> Option<std::io::Result<bool>> {
        std::future::poll_fn(|cx| match read(self, cx) {
            Poll::Pending if self.elapsed(cx, at) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => Poll::Ready(Some(r)),
        })
        .await
    }

    /// Ready(Ok(true)) once at least one byte is in the stash.
    fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if !self.stash.is_empty() {
            return Poll::Ready(Ok(true));
        }
        match self.poll_fill(cx) {
            Poll::Pending if !self.stash.is_empty() => Poll::Ready(Ok(true)),
            Poll::Ready(Ok(false)) if !self.stash.is_empty() => Poll::Ready(Ok(true)),
            other => other,
        }
    }

    /// Records the cut, which the connection loop finds as this poll
    /// returns and then drops the request; the read never completes.
    fn cut(&self, why: Cut) -> Poll<std::io::Result<()>> {
        self.conn.cut.store(why.code(), Ordering::Release);
        Poll::Pending
    }

    /// True when the header's deadline has passed (arming the timer so that
    /// the task wakes at the deadline).
    fn late(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.deadline;
        self.elapsed(cx, deadline)
    }

    /// True once `at` has passed; else the connection's one timer is armed
    /// for `at`. The waits of a kept-alive connection move it later, which
    /// tokio does in place (no timer-wheel work, no driver wake-up per
    /// request, as a new timer per wait costs).
    fn elapsed(&mut self, cx: &mut Context<'_>, at: Instant) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Records the cut for the connection loop.
    fn cut_now(&self, why: Cut) -> Waited {
        self.conn.cut.store(why.code(), Ordering::Release);
        Waited::Cut(why)
    }
}

/// How a wait for a request's header ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The header (or as much as a header may be) is in the stash.
    Header,
    /// No request came: kept alive long enough, or the client left.
    Idle,
    /// The header broke a limit; the cut is recorded.
    Cut(Cut),
}

/// Whether `b` holds the end of a request header (an empty line; a bare
/// LF is taken as a line end, as the parser does).
fn header_end(b: &[u8]) -> bool {
    // Each LF (found by memchr, a word or vector at a time) followed by LF
    // or by CR LF.
    memchr::memchr_iter(b'\n', b).any(|i| match b.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => b.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.conn.cut.load(Ordering::Acquire) != 0 {
            if let Some(s) = self.inner.take() {
                *lock(&self.conn.salvage) = Some(s);
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let phase = this.conn.phase.load(Ordering::Relaxed);
        if phase == BODY {
            if this.stashed_out < this.stash.len() {
                this.unstash(buf, usize::MAX);
                return Poll::Ready(Ok(()));
            }
            return Pin::new(io).poll_read(cx, buf);
        }
        if this.conn.cut.load(Ordering::Acquire) != 0 {
            return Poll::Pending;
        }
        let used = if phase == HEADER { this.read } else { 0 };
        let room = this.max_bytes.saturating_sub(used);
        if room == 0 {
            // pingora asks for more: the header is not complete within the cap.
            return this.cut(Cut::HeaderTooLarge);
        }
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let stashed = this.stash.len() - this.stashed_out;
        let res = if stashed > 0 {
            // The bytes a wait for this request read first.
            this.unstash(buf, room);
            Poll::Ready(Ok(()))
        } else if buf.remaining() <= room {
            Pin::new(io).poll_read(cx, buf)
        } else {
            let (res, n) = {
                let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
                let res = Pin::new(io).poll_read(cx, &mut part);
                (res, part.filled().len())
            };
            buf.advance(n);
            res
        };
        // The client left in the middle of a header: pingora would log an
        // error line for it; the connection is ended here instead.
        let mid_header = phase == HEADER && this.read > 0;
        match res {
            Poll::Ready(Ok(())) if mid_header && asked && buf.filled().len() == before => {
                this.cut(Cut::ClosedMidHeader)
            }
            Poll::Ready(Err(_)) if mid_header => this.cut(Cut::ClosedMidHeader),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    let mut line = lock(&this.conn.line);
                    if phase == IDLE {
                        // The first byte of a kept-alive request.
                        this.conn.phase.store(HEADER, Ordering::Relaxed);
                        this.read = 0;
                        this.deadline = Instant::now() + this.timeout;
                        *line = LineScan::default();
                    }
                    line.feed(&buf.filled()[before..]);
                    this.read += n;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if phase == HEADER && this.late(cx) => this.cut(if this.read == 0 {
                Cut::Silent
            } else {
                Cut::HeaderTimeout
            }),
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|io| io.is_write_vectored())
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        if let Some(io) = self.inner.as_mut() {
            Shutdown::shutdown(io.as_mut()).await;
        }
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.as_ref().map_or(-1, |io| io.id())
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.as_ref().and_then(|io| io.get_ssl())
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.as_ref().and_then(|io| io.get_ssl_digest())
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.as_ref().and_then(|io| io.selected_alpn_proto())
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner
            .as_ref()
            .map_or_else(Vec::new, |io| io.get_timing_digest())
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |io| io.get_read_pending_time())
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |io| io.get_write_pending_time())
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.as_ref().and_then(|io| io.get_proxy_digest())
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        if let Some(io) = self.inner.as_mut() {
            io.set_proxy_digest(digest);
        }
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.as_ref().and_then(|io| io.get_socket_digest())
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        if let Some(io) = self.inner.as_mut() {
            io.set_socket_digest(digest);
        }
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        match self.inner.as_mut() {
            Some(io) => io.try_peek(buf).await,
            None => Err(gone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::header_end;

    #[test]
    fn a_header_ends_at_its_empty_line() {
        assert!(header_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(header_end(b"GET / HTTP/1.1\nHost: a\n\nbody"));
        assert!(!header_end(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!header_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
        assert!(!header_end(b""));
    }
}
