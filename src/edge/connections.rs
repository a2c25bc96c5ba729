//! Every client connection of the gateway listeners, from its accept to its
//! close: the caps on open connections (in total and per client address),
//! the PROXY protocol on plain listeners, and the total deadline and size
//! cap of each request header (slowloris, oversized headers).
//!
//! [`Connections`] is the pingora application of the gateway service: it
//! wraps pingora's HTTP proxy and runs its HTTP/1 keep-alive loop itself
//! (pingora's own loop, with the same session settings), so that it knows
//! when a connection opens, when each request ends and when it closes.
//! Each stream is wrapped in [`Guarded`], which reads exactly as the stream
//! does except while a request header is being read: then it caps the bytes
//! read and watches the deadline. The proxy says when a header is complete
//! ([`header_complete`], from `early_request_filter`, through a task-local:
//! pingora runs the whole connection in one task). A header over its limits
//! cuts the connection: the request future is dropped (pingora logs nothing),
//! the socket is recovered from the dropped stream, and a short MOR-shaped
//! answer (408, 431) is written before the close. What pingora parses,
//! verifies and forwards is unchanged: the wrapper only limits how many
//! header bytes are read.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::config::ClientSettings;
use crate::core::catalog::Envelope;
use crate::core::client::group;
use crate::core::framing::LineScan;
use crate::core::reply::{error_xml, XML_CONTENT_TYPE};
use crate::edge::proxy::Shared;
use crate::edge::proxy_protocol::{self, Refused};
use crate::edge::tls::Tls;

/// How long a refused or cut connection is still read (and discarded) after
/// its answer, so that the client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
/// At most this much is discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// pingora's wait for the first request on a new connection (seconds), as
/// in its own HTTP/1 loop; `client.header_timeout` bounds it too.
const FIRST_REQUEST_KEEPALIVE: u64 = 60;

/// Why a connection is refused or cut (the `reason` label of
/// `mor_gateway_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `client.max_connections` are open.
    Total,
    /// `client.max_connections_per_address` are open from this address.
    PerAddress,
    /// The header did not arrive within `client.header_timeout`.
    HeaderTimeout,
    /// Nothing arrived within `client.header_timeout` on a new connection.
    Silent,
    /// The header exceeds `client.max_header_bytes`.
    HeaderTooLarge,
    /// No valid PROXY header from a trusted peer.
    ProxyProtocol,
    /// `tls.max_handshakes_per_address` handshakes from this address are
    /// not done yet.
    Handshakes,
    /// The client closed or reset the connection in the middle of a header.
    ClosedMidHeader,
}

impl Cut {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cut::Total => "max_connections",
            Cut::PerAddress => "max_connections_per_address",
            Cut::HeaderTimeout | Cut::Silent => "header_timeout",
            Cut::HeaderTooLarge => "header_too_large",
            Cut::ProxyProtocol => "proxy_protocol",
            Cut::Handshakes => "max_handshakes_per_address",
            Cut::ClosedMidHeader => "closed_mid_header",
        }
    }

    /// The answer sent before the close, if any: status line and error text.
    fn answer(self) -> Option<(&'static str, &'static str)> {
        match self {
            Cut::Total | Cut::PerAddress => {
                Some(("503 Service Unavailable", "Too many connections, try later"))
            }
            Cut::HeaderTimeout => Some(("408 Request Timeout", "Request timeout")),
            Cut::HeaderTooLarge => Some((
                "431 Request Header Fields Too Large",
                "Request header too large",
            )),
            Cut::Silent | Cut::ProxyProtocol | Cut::Handshakes | Cut::ClosedMidHeader => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Cut::Total => 1,
            Cut::PerAddress => 2,
            Cut::HeaderTimeout => 3,
            Cut::Silent => 4,
            Cut::HeaderTooLarge => 5,
            Cut::ProxyProtocol => 6,
            Cut::Handshakes => 7,
            Cut::ClosedMidHeader => 8,
        }
    }

    fn from_code(c: u8) -> Option<Cut> {
        [
            Cut::Total,
            Cut::PerAddress,
            Cut::HeaderTimeout,
            Cut::Silent,
            Cut::HeaderTooLarge,
            Cut::ProxyProtocol,
            Cut::Handshakes,
            Cut::ClosedMidHeader,
        ]
        .into_iter()
        .find(|k| k.code() == c)
    }
}

/// The whole answer to a refused or cut connection: MOR's XML error shape,
/// `Connection: close`, and `Retry-After: 1` on the connection caps.
pub fn answer_bytes(cut: Cut) -> Option<Vec<u8>> {
    let (status, text) = cut.answer()?;
    let body = error_xml(Envelope::Status, text);
    let retry = if matches!(cut, Cut::Total | Cut::PerAddress) {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    Some(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {XML_CONTENT_TYPE}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A count of connections in some state (open, lingering after a refusal),
/// in total and per client address. Entries leave the map when their count
/// drops to 0, so it holds at most one entry per counted connection.
#[derive(Default)]
pub struct Counts {
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection in the total; released when dropped.
struct TotalSlot {
    counts: Arc<Counts>,
    gauge: Option<IntGauge>,
}

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// One connection of a client address; released when dropped.
struct AddressSlot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.counts.per_address);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Counts {
    /// Connections counted now.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Client addresses with a (per-address counted) connection.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.per_address).len()
    }

    /// A slot in the total if fewer than `max` are taken (0: no cap);
    /// `gauge` follows the count.
    fn take_total(self: &Arc<Self>, max: usize, gauge: Option<&IntGauge>) -> Option<TotalSlot> {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        if let Some(g) = gauge {
            g.inc();
        }
        Some(TotalSlot {
            counts: self.clone(),
            gauge: gauge.cloned(),
        })
    }

    fn take_address(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut m = lock(&self.per_address);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// Refused connections that may linger after their answer at once, in
/// total; the others get their answer only if the socket takes it at once,
/// and are closed.
const LINGER_TOTAL: usize = 256;
/// ... and per client address (so that one address can hold at most its
/// own cap of open connections plus this many refused ones).
const LINGER_PER_ADDRESS: u32 = 4;

/// A refused connection's right to linger ([`refuse`]).
struct Linger {
    _total: TotalSlot,
    _address: Option<AddressSlot>,
}

/// The phase of the request being read on a connection.
const IDLE: u8 = 0;
const HEADER: u8 = 1;
const BODY: u8 = 2;

/// What [`Guarded`], the proxy and the connection loop share.
#[derive(Debug)]
struct Conn {
    /// `IDLE` (between requests; the next byte starts a header), `HEADER`
    /// (a header is being read: capped and timed), `BODY` (the header is
    /// complete: reads are not watched).
    phase: AtomicU8,
    /// Set (a [`Cut::code`]) when the header broke a limit.
    cut: AtomicU8,
    /// Wakes the connection loop when `cut` is set.
    notify: Notify,
    /// The socket of a cut connection, given back by the dropped [`Guarded`].
    salvage: Mutex<Option<Stream>>,
    /// The request line of the request being read, as it arrived (pingora
    /// percent-encodes control characters in the target before parsing).
    line: Mutex<LineScan>,
    /// The connection began with a PROXY protocol header.
    proxied: bool,
}

tokio::task_local! {
    static CONN: Arc<Conn>;
}

/// Tells the connection that its request header is complete (called by the
/// proxy before any other phase of each request). Outside a connection of
/// [`Connections`] it does nothing.
pub fn header_complete() {
    let _ = CONN.try_with(|c| c.phase.store(BODY, Ordering::Relaxed));
}

/// True when the current connection began with a PROXY protocol header
/// (then it alone names the client, whatever `X-Forwarded-For` says).
pub fn proxy_protocol_used() -> bool {
    CONN.try_with(|c| c.proxied).unwrap_or(false)
}

/// True when the request line of the current request arrived with a
/// control character or a space in its target. Unknown (false) for a request
/// whose header came whole in the bytes read with the previous request (a
/// pipelined request), and outside a connection of [`Connections`].
pub fn request_target_bad() -> bool {
    CONN.try_with(|c| lock(&c.line).bad_target() == Some(true))
        .unwrap_or(false)
}

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
    /// Armed only when a header read has to wait (slow clients).
    timer: Option<Pin<Box<Sleep>>>,
}

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
    fn new(inner: Stream, conn: Arc<Conn>, client: &ClientSettings) -> Guarded {
        Guarded {
            inner: Some(inner),
            conn,
            timeout: client.header_timeout,
            max_bytes: client.max_header_bytes,
            read: 0,
            deadline: Instant::now() + client.header_timeout,
            timer: None,
        }
    }

    /// Records the cut and wakes the connection loop, which drops the
    /// request; the read never completes.
    fn cut(&self, why: Cut) -> Poll<std::io::Result<()>> {
        self.conn.cut.store(why.code(), Ordering::Release);
        self.conn.notify.notify_one();
        Poll::Pending
    }

    /// True when the header's deadline has passed (arming the timer so that
    /// the task wakes at the deadline).
    fn late(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
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
        let res = if buf.remaining() <= room {
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

/// The connection's local address (which listener it came in on).
fn local_addr(stream: &Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
}

/// The peer's address and port as the connection knows it.
fn peer_addr(stream: &Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// The peer's address as the connection knows it (the PROXY source behind a
/// balancer that sends the PROXY protocol).
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .map(crate::core::client::canonical)
}

/// Writes `cut`'s answer and closes (at once when `cut` has no answer).
/// With a [`Linger`] slot, the sending side is closed and what the client
/// still sends is read for up to [`LINGER`], so that the client reads the
/// answer instead of a reset; without one, the answer is written only if
/// the socket takes it at once.
async fn refuse(mut stream: Stream, cut: Cut, linger: Option<Linger>) {
    let Some(answer) = answer_bytes(cut) else {
        return;
    };
    let Some(_linger) = linger else {
        let _ = tokio::time::timeout(Duration::ZERO, async {
            stream.write_all(&answer).await?;
            stream.flush().await
        })
        .await;
        return;
    };
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(&answer).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    })
    .await;
    let _ = tokio::time::timeout(LINGER, async {
        // On the heap: an array here would enlarge every connection's future.
        let mut scratch = vec![0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// The gateway listeners' application: pingora's HTTP proxy `A`, with the
/// connection caps, the plain listeners' PROXY protocol and the header
/// limits around it.
pub struct Connections<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    /// Open connections (each holds its slots until it closes).
    counts: Arc<Counts>,
    /// Refused or cut connections lingering after their answer (their open
    /// slots already released).
    lingering: Arc<Counts>,
    /// HTTPS connections whose TLS handshake is not done yet (per address).
    handshakes: Arc<Counts>,
    /// The HTTPS listeners, if any.
    tls: Option<Arc<Tls>>,
}

impl<A> Connections<A> {
    /// Wraps `inner`; `tls` serves the HTTPS listeners (pingora listens on
    /// them as plain TCP). Limits come from `shared`'s settings in force when
    /// each connection opens.
    pub fn new(inner: A, shared: Arc<Shared>, tls: Option<Tls>) -> Self {
        Connections {
            inner: Arc::new(inner),
            shared,
            counts: Arc::new(Counts::default()),
            lingering: Arc::new(Counts::default()),
            handshakes: Arc::new(Counts::default()),
            tls: tls.map(Arc::new),
        }
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Connections<A> {
    fn count(&self, cut: Cut) {
        self.shared
            .metrics
            .connections_refused
            .with_label_values(&[cut.label()])
            .inc();
    }

    /// A slot to linger after a refusal for the connection from `ip`
    /// (grouped; a trusted balancer only counts in the total), if one is free.
    fn linger(&self, ip: Option<IpAddr>, client: &ClientSettings) -> Option<Linger> {
        let total = self.lingering.take_total(LINGER_TOTAL, None)?;
        let address = match ip {
            Some(ip) if !client.trusted_proxies.iter().any(|n| n.contains(&ip)) => Some(
                self.lingering
                    .take_address(group(ip, client.ipv6_prefix), LINGER_PER_ADDRESS)?,
            ),
            _ => None,
        };
        Some(Linger {
            _total: total,
            _address: address,
        })
    }

    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let settings = self.shared.state.load().settings.clone();
        let client = &settings.client;
        let metrics = &self.shared.metrics;
        // An HTTPS listener's connection: no HTTP answer before its TLS, so
        // refusals close it unanswered.
        let tls = self
            .tls
            .as_ref()
            .filter(|t| local_addr(&stream).is_some_and(|a| t.serves(a)));
        let tls_settings = settings.tls.as_ref().filter(|_| tls.is_some());
        let Some(total) = self
            .counts
            .take_total(client.max_connections, Some(&metrics.connections_open))
        else {
            self.count(Cut::Total);
            if tls.is_some() {
                return;
            }
            let linger = self.linger(peer_ip(&stream), client);
            return refuse(stream, Cut::Total, linger).await;
        };
        let proxied = match tls_settings {
            Some(t) => t.proxy_protocol,
            None => settings.proxy_protocol,
        };
        let stream = if proxied {
            match proxy_protocol::accept_plain(&client.trusted_proxies, stream).await {
                Ok(s) => s,
                Err(Refused::Closed) => return,
                Err(Refused::Invalid(why)) => {
                    tracing::debug!("connection dropped: {why}");
                    return self.count(Cut::ProxyProtocol);
                }
            }
        } else {
            stream
        };
        let max_per_address = u32::try_from(client.max_connections_per_address).unwrap_or(u32::MAX);
        let ip = peer_ip(&stream);
        // The per-address key of a client that is not a trusted balancer.
        let key = ip
            .filter(|ip| !client.trusted_proxies.iter().any(|n| n.contains(ip)))
            .map(|ip| group(ip, client.ipv6_prefix));
        let address = match key {
            Some(key) if max_per_address > 0 => {
                match self.counts.take_address(key, max_per_address) {
                    Some(slot) => Some(slot),
                    None => {
                        self.count(Cut::PerAddress);
                        // Its total slot is free again at once.
                        drop(total);
                        if tls.is_some() {
                            return;
                        }
                        let linger = self.linger(ip, client);
                        return refuse(stream, Cut::PerAddress, linger).await;
                    }
                }
            }
            _ => None,
        };
        let stream = match (tls, tls_settings) {
            (Some(tls), Some(t)) => {
                let max = u32::try_from(t.max_handshakes_per_address).unwrap_or(u32::MAX);
                let pending = match key {
                    Some(key) if max > 0 => match self.handshakes.take_address(key, max) {
                        Some(slot) => Some(slot),
                        None => return self.count(Cut::Handshakes),
                    },
                    _ => None,
                };
                let deadline = Instant::now() + t.handshake_timeout;
                let peer = peer_addr(&stream);
                match tls.handshake(stream, deadline).await {
                    Ok(s) => {
                        drop(pending);
                        s
                    }
                    Err(f) => return tls.failed(&f, peer, metrics),
                }
            }
            _ => stream,
        };
        if matches!(
            stream.selected_alpn_proto(),
            Some(ALPN::H2) | Some(ALPN::Custom(_))
        ) {
            // Not HTTP/1 (the gateway offers only h1): pingora's own path.
            ServerApp::process_new(&self.inner, stream, shutdown).await;
            return;
        }
        let conn = Arc::new(Conn {
            phase: AtomicU8::new(HEADER),
            cut: AtomicU8::new(0),
            notify: Notify::new(),
            salvage: Mutex::new(None),
            line: Mutex::new(LineScan::default()),
            proxied,
        });
        let guarded: Stream = Box::new(Guarded::new(stream, conn.clone(), client));
        drop(settings);
        // On the heap: a connection still before its handshake (or its
        // PROXY header) holds a task sized for what it waits on, not for the
        // HTTP/1 loop's state.
        let cut = Box::pin(CONN.scope(conn.clone(), self.http1(guarded, shutdown, &conn))).await;
        if let Some(cut) = cut {
            self.count(cut);
            // Its slots are free again at once; lingering is counted apart.
            drop((total, address));
            let socket = lock(&conn.salvage).take();
            if let Some(socket) = socket {
                let settings = self.shared.state.load().settings.clone();
                let linger = self.linger(ip, &settings.client);
                refuse(socket, cut, linger).await;
            }
        }
    }

    /// pingora's HTTP/1 keep-alive loop, one request per
    /// `process_new_http`, with each request's header phase marked and a
    /// cut header ending the connection.
    ///
    /// Mirrors pingora-core 0.9.1 (pinned exactly in Cargo.toml),
    /// `src/apps/mod.rs`, `impl ServerApp for T: HttpServerApp`, the HTTP/1
    /// branch of `process_new`: keep-alive 60 s (none once shutting down),
    /// `keepalive_request_limit`, each reused stream's persistent settings
    /// applied to the next session. Left out on purpose: the h2c preface
    /// peek and HTTP/2 (the gateway offers HTTP/1 only; an h2 or custom
    /// ALPN goes to pingora's own `process_new`, see `serve`) and
    /// `force_custom` sessions. Added: the race with the connection's cut
    /// (header deadline or size) and the request-line reset between
    /// requests. On a pingora upgrade, compare that function before moving
    /// the pin.
    async fn http1(&self, stream: Stream, shutdown: &ShutdownWatch, conn: &Conn) -> Option<Cut> {
        let mut session = ServerSession::new_http1(stream);
        let stopping = *shutdown.borrow();
        session.set_keepalive((!stopping).then_some(FIRST_REQUEST_KEEPALIVE));
        session.set_keepalive_reuses_remaining(
            self.inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        // One waiter for the whole connection (not one per request).
        let cut = conn.notify.notified();
        tokio::pin!(cut);
        loop {
            let reused = tokio::select! {
                biased;
                () = &mut cut => {
                    return Cut::from_code(conn.cut.load(Ordering::Acquire));
                }
                r = self.inner.process_new_http(session, shutdown) => r,
            };
            let (stream, persistent) = reused?.consume();
            conn.phase.store(IDLE, Ordering::Relaxed);
            // A pipelined next request may be parsed without a read: no
            // verdict of this one's request line may carry over to it.
            *lock(&conn.line) = LineScan::default();
            session = ServerSession::new_http1(stream);
            if let Some(p) = persistent {
                p.apply_to_session(&mut session);
            }
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let counts = Arc::new(Counts::default());
        let gauge = IntGauge::new("g", "g").unwrap();
        let g = Some(&gauge);
        let a = counts.take_total(2, g).unwrap();
        let b = counts.take_total(2, g).unwrap();
        assert!(counts.take_total(2, g).is_none());
        assert_eq!((counts.total(), gauge.get()), (2, 2));
        drop(a);
        let _c = counts.take_total(2, g).unwrap();
        drop(b);
        assert_eq!((counts.total(), gauge.get()), (1, 1));
        assert!(counts.take_total(0, g).is_some(), "0 is unlimited");

        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let x = counts.take_address(ip, 1).unwrap();
        assert!(counts.take_address(ip, 1).is_none());
        let other = counts.take_address("198.51.100.8".parse().unwrap(), 1);
        assert!(other.is_some());
        assert_eq!(counts.addresses(), 2);
        drop((x, other));
        assert_eq!(counts.addresses(), 0, "entries leave the map at 0");
        let _y = counts.take_address(ip, 1).unwrap();
    }

    #[test]
    fn the_refusal_future_stays_small() {
        // Every connection's future holds room for it: no buffer inside.
        let s: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
        assert!(std::mem::size_of_val(&refuse(s, Cut::Total, None)) < 512);
    }

    #[test]
    fn answers_are_mor_shaped_and_close() {
        let a = String::from_utf8(answer_bytes(Cut::Total).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
        assert!(a.contains("\r\nRetry-After: 1\r\n") && a.contains("\r\nConnection: close\r\n"));
        assert!(a.ends_with("<status><error>Too many connections, try later</error></status>"));
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let a = String::from_utf8(answer_bytes(Cut::HeaderTooLarge).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 431 ") && !a.contains("Retry-After"));
        assert!(answer_bytes(Cut::Silent).is_none());
        assert!(answer_bytes(Cut::ProxyProtocol).is_none());
        for c in [
            Cut::Total,
            Cut::PerAddress,
            Cut::HeaderTimeout,
            Cut::Silent,
            Cut::HeaderTooLarge,
            Cut::ProxyProtocol,
            Cut::Handshakes,
            Cut::ClosedMidHeader,
        ] {
            assert_eq!(Cut::from_code(c.code()), Some(c));
            assert!(crate::ops::metrics::CONNECTION_REFUSALS.contains(&c.label()));
        }
    }
}
