//! The connection phase marker: what the guarded stream, the proxy's hooks
//! and the HTTP/1 loop of one client connection share (whether a request
//! header is being read, why the connection was cut, the request line as it
//! arrived, whether it began with a PROXY header). pingora runs a whole
//! connection in one task: the marker is a task-local.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use pingora::protocols::Stream;

use super::lock;
use crate::core::framing::LineScan;

/// The phase of the request being read on a connection.
pub(crate) const IDLE: u8 = 0;
pub(crate) const HEADER: u8 = 1;
pub(crate) const BODY: u8 = 2;

/// What [`super::guarded::Guarded`], the proxy and the connection loop share.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `IDLE` (between requests; the next byte starts a header), `HEADER`
    /// (a header is being read: capped and timed), `BODY` (the header is
    /// complete: reads are not watched).
    pub(crate) phase: AtomicU8,
    /// Set (a [`super::cut::Cut::code`]) when the header broke a limit;
    /// the HTTP/1 loop reads it after each poll of the request.
    pub(crate) cut: AtomicU8,
    /// The socket of a cut connection, given back by the dropped [`super::guarded::Guarded`].
    pub(crate) salvage: Mutex<Option<Stream>>,
    /// The request line of the request being read, as it arrived (pingora
    /// percent-encodes control characters in the target before parsing).
    pub(crate) line: Mutex<LineScan>,
    /// The connection began with a PROXY protocol header.
    pub(crate) proxied: bool,
}

tokio::task_local! {
    pub(crate) static CONN: Arc<Conn>;
}

/// Tells the connection that its request header is complete (called by the
/// HTTP/1 loop once a request's header is read, before any hook runs).
/// Outside a connection of [`super::connections::Connections`] it does
/// nothing.
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
/// pipelined request), and outside a connection of [`super::connections::Connections`].
pub fn request_target_bad() -> bool {
    CONN.try_with(|c| lock(&c.line).bad_target() == Some(true))
        .unwrap_or(false)
}
