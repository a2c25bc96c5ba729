//! The HTTP/1 keep-alive loop of a gateway connection: pingora's own loop
//! (`ServerApp for HttpServerApp`), run by the gateway so that it knows
//! where each request's header begins and can end the connection when the
//! header breaks a limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use std::time::Duration;

use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use super::cut::Cut;
use super::guarded::{Guarded, Waited};
use super::lock;
use super::phase::{Conn, IDLE};
use crate::core::framing::LineScan;

/// pingora's wait for the first request on a new connection (seconds), as
/// in its own HTTP/1 loop; `client.header_timeout` bounds it too.
const FIRST_REQUEST_KEEPALIVE: u64 = 60;

/// pingora's HTTP/1 keep-alive loop, one request per `process_new_http`,
/// with each request's header phase marked and a cut header ending the
/// connection.
///
/// Mirrors pingora-core 0.9.1 (pinned exactly in Cargo.toml),
/// `src/apps/mod.rs`, `impl ServerApp for T: HttpServerApp`, the HTTP/1
/// branch of `process_new`: keep-alive 60 s (none once shutting down),
/// `keepalive_request_limit`, each reused stream's persistent settings
/// applied to the next session. Left out on purpose: the h2c preface peek
/// and HTTP/2 (the gateway offers HTTP/1 only; an h2 or custom ALPN goes to
/// pingora's own `process_new`, see `Connections::serve`) and
/// `force_custom` sessions. Added: the check for the connection's cut
/// (header deadline or size), the request-line reset between requests, and
/// the wait for each request's header before its session is built
/// ([`Guarded::wait_header`], `idle` = `client.keepalive_timeout` between
/// requests): a connection between requests, or one sending its header
/// slowly, holds its socket, the header bytes that came and this loop's
/// small state, not a session and a request's future (those exist only
/// while a request is served).
/// On a pingora upgrade, compare that function before moving the pin.
pub(crate) async fn keepalive_loop<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    mut stream: Box<Guarded>,
    shutdown: &ShutdownWatch,
    conn: &Conn,
    idle: Duration,
) -> Option<Cut> {
    let mut persistent: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        let stopping = *shutdown.borrow();
        // A pipelined request already read with the previous one is parsed
        // at once: no wait for bytes the client has already sent.
        let pipelined = persistent.as_ref().is_some_and(pipelined_prefix);
        // Shutting down since the last answer was sent (after pingora chose
        // to keep the connection): a connection between requests is closed
        // now, not after its keep-alive wait.
        if stopping && !first && !pipelined {
            return None;
        }
        if !pipelined {
            let mut watch = shutdown.clone();
            let waited = tokio::select! {
                biased;
                // Shutting down: a connection between requests is closed.
                _ = watch.changed(), if !stopping && !first => return None,
                w = stream.wait_header((!first).then_some(idle)) => w,
            };
            match waited {
                Waited::Header => {}
                Waited::Idle => return None,
                Waited::Cut(why) => return Some(why),
            }
        }
        // Only the boxed future is kept across the wait (not the 680-byte
        // session it was built from).
        let mut served = serve_one(app, stream, first, stopping, persistent.take(), shutdown);
        first = false;
        // A cut is made by the guarded stream inside a poll of the request
        // (its reads return Pending from then on): checked after each poll
        // that did not finish it, no waiter to register.
        let reused = std::future::poll_fn(|cx| match served.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Ok(r)),
            Poll::Pending => match Cut::from_code(conn.cut.load(Ordering::Acquire)) {
                Some(why) => Poll::Ready(Err(why)),
                None => Poll::Pending,
            },
        })
        .await;
        let reused = match reused {
            Ok(r) => r,
            Err(why) => return Some(why),
        };
        let (next, settings) = reused?.consume();
        // The guarded stream comes back as it went in.
        stream = next.into_any().downcast::<Guarded>().ok()?;
        persistent = settings;
        conn.phase.store(IDLE, Ordering::Relaxed);
        // A pipelined next request may be parsed without a read: no
        // verdict of this one's request line may carry over to it.
        *lock(&conn.line) = LineScan::default();
    }
}

/// One request's session on `stream` (pingora's keep-alive settings for
/// the first request, the previous one's persistent settings after it),
/// handed to pingora: the returned future is boxed.
fn serve_one<'a, A: HttpServerApp + Send + Sync + 'static>(
    app: &'a Arc<A>,
    stream: Box<Guarded>,
    first: bool,
    stopping: bool,
    persistent: Option<HttpPersistentSettings>,
    shutdown: &'a ShutdownWatch,
) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
    let mut session = ServerSession::new_http1(stream);
    if first {
        session.set_keepalive((!stopping).then_some(FIRST_REQUEST_KEEPALIVE));
        session.set_keepalive_reuses_remaining(
            app.server_options().and_then(|o| o.keepalive_request_limit),
        );
    } else if let Some(p) = persistent {
        p.apply_to_session(&mut session);
    }
    app.process_new_http(session, shutdown)
}

/// Whether `p` carries bytes of a pipelined next request. pingora keeps them
/// private; its derived `Debug` writes the field's name as one piece, then
/// `: `, then `None` or `Some`, and this reads those pieces as they are
/// written (no allocation) and stops the formatting at the answer: the rest
/// (the prefix's bytes, escaped one by one) is never formatted. Checked by a
/// test, so a pingora or std upgrade that changes the form fails it; should
/// the field's name not be seen at all, the answer is "yes", which only
/// skips the wait for the next request's first byte (pingora reads it, with
/// its keep-alive timeout), where a wrong "no" would leave a pipelined
/// request waiting for bytes the client has already sent.
fn pipelined_prefix(p: &HttpPersistentSettings) -> bool {
    const FIELD: &str = "pipelined_prefix";
    /// Whether the last piece was the field's name, and the answer.
    struct Find {
        after_name: bool,
        answer: Option<bool>,
    }
    impl std::fmt::Write for Find {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if !self.after_name {
                self.after_name = s == FIELD;
                return Ok(());
            }
            if s == ": " {
                return Ok(());
            }
            self.answer = Some(s != "None");
            // Stop formatting: the answer is known.
            Err(std::fmt::Error)
        }
    }
    let mut f = Find {
        after_name: false,
        answer: None,
    };
    let _ = std::fmt::write(&mut f, format_args!("{p:?}"));
    f.answer.unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[tokio::test]
    async fn a_pipelined_prefix_is_seen_in_the_persistent_settings() {
        let (a, _b) = tokio::net::UnixStream::pair().expect("socket pair");
        let stream: pingora::protocols::Stream =
            Box::new(pingora::protocols::l4::stream::Stream::from(a));
        let mut session = ServerSession::new_http1(stream);
        // A `Some(` before the field: only the field's own counts.
        session.set_keepalive(Some(75));
        let mut p = HttpPersistentSettings::for_session(&session);
        assert!(format!("{p:?}").contains("Some(75)"), "{p:?}");
        assert!(format!("{p:?}").contains("pipelined_prefix: None"), "{p:?}");
        assert!(!pipelined_prefix(&p));
        p.set_pipelined_prefix(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(pipelined_prefix(&p));
    }
}
