//! The HTTP/1 keep-alive loop of a gateway connection, and each request's
//! run through the gateway's `ProxyHttp` hooks ([`super::proxy::Gateway`]).
//!
//! The gateway runs both itself, in place of pingora-proxy's `HttpProxy`
//! application: it knows where each request's header begins, can end the
//! connection when the header breaks a limit, and a request carries only
//! the state of the one path the gateway takes (its `request_filter`
//! answers every request), not `HttpProxy`'s whole proxy, cache and
//! subrequest machinery (a 10 KB future, boxed and copied per request).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;

use std::time::Duration;

use http::Method;
use pingora::apps::HttpPersistentSettings;
use pingora::protocols::http::{ReusableHttpStream, ServerSession};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};

use super::cut::Cut;
use super::guarded::{Guarded, Waited};
use super::lock;
use super::phase::{self, Conn, IDLE};
use super::proxy::Gateway;
use crate::core::framing::LineScan;

/// pingora's wait for the first request on a new connection (seconds), as
/// in its own HTTP/1 loop; `client.header_timeout` bounds it too.
const FIRST_REQUEST_KEEPALIVE: u64 = 60;

/// A served request's connection, to be reused: the stream (with the bytes
/// of a pipelined next request already read) and the settings the next
/// request's session takes over.
type Reused = (ReusableHttpStream, HttpPersistentSettings);

/// The HTTP/1 keep-alive loop: one request at a time through
/// [`serve_one`], each request's header phase marked, a cut header ending
/// the connection.
///
/// Mirrors pingora-core 0.9.1 (pinned exactly in Cargo.toml),
/// `src/apps/mod.rs`, `impl ServerApp for T: HttpServerApp`, the HTTP/1
/// branch of `process_new`: keep-alive 60 s for the first request (none
/// once shutting down), each reused stream's persistent settings applied
/// to the next session. Left out on purpose: the h2c preface peek and
/// HTTP/2 (the gateway offers HTTP/1 only, see `Connections::serve`),
/// `force_custom` sessions and `keepalive_request_limit` (pingora's server
/// options, which the gateway never sets). Added: the check for the
/// connection's cut (header deadline or size), the request-line reset
/// between requests, and the wait for each request's header before its
/// session is built ([`Guarded::wait_header`], `idle` =
/// `client.keepalive_timeout` between requests): a connection between
/// requests, or one sending its header slowly, holds its socket, the header
/// bytes that came and this loop's small state, not a session and a
/// request's future (those exist only while a request is served).
/// On a pingora upgrade, compare that function before moving the pin.
pub(crate) async fn keepalive_loop(
    gateway: &Gateway,
    mut stream: Box<Guarded>,
    shutdown: &ShutdownWatch,
    conn: &Conn,
    idle: Duration,
) -> Option<Cut> {
    let mut persistent: Option<HttpPersistentSettings> = None;
    let mut first = true;
    // The last request's session read bytes of the next one with it.
    let mut pipelined = false;
    loop {
        let stopping = *shutdown.borrow();
        // Shutting down since the last answer was sent (after pingora chose
        // to keep the connection): a connection between requests is closed
        // now, not after its keep-alive wait. A pipelined request already
        // read with the previous one is parsed at once: no wait for bytes
        // the client has already sent.
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
        // Boxed: only while a request is served; the loop keeps the box
        // across the request, not the session it is built from.
        let mut served = Box::pin(serve_one(
            gateway,
            stream,
            first,
            stopping,
            persistent.take(),
        ));
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
        let (reusable, mut settings) = match reused {
            Ok(r) => r?,
            Err(why) => return Some(why),
        };
        let (next, prefix) = reusable.into_parts();
        pipelined = prefix.is_some();
        if let Some(prefix) = prefix {
            settings.set_pipelined_prefix(prefix);
        }
        // The guarded stream comes back as it went in.
        stream = next.into_any().downcast::<Guarded>().ok()?;
        persistent = Some(settings);
        conn.phase.store(IDLE, Ordering::Relaxed);
        // A pipelined next request may be parsed without a read: no
        // verdict of this one's request line may carry over to it.
        *lock(&conn.line) = LineScan::default();
    }
}

/// One request on `stream`: its session (pingora's keep-alive for the first
/// request, the previous one's persistent settings after it), its header
/// read, then the gateway's hooks; the connection back when it may serve
/// another request.
///
/// Mirrors pingora-proxy 0.9.1's `HttpProxy` (`src/lib.rs`) on the one
/// path a `ProxyHttp` whose `request_filter` answers every request takes:
/// `process_new_http` and `handle_new_request` (the header read: a header
/// that does not parse gets pingora's 400, any other read error closes the
/// connection; CONNECT gets 405, as with pingora's default server
/// options; no keep-alive once shutting down), `process_request` (the
/// request filter, then `logging`, then the session finished for reuse)
/// and `handle_error` (`fail_to_proxy`, the error line unless suppressed,
/// `logging`, the connection closed unless the hook says it may be
/// reused). No downstream modules (pingora's `Session::new_h1` builds
/// none, so MOR's answers pass byte for byte; pingora-proxy's default adds
/// a disabled compression module that still runs per request), no
/// subrequests, no cache: those steps are left out.
pub(super) async fn serve_one(
    gw: &Gateway,
    stream: Box<Guarded>,
    first: bool,
    stopping: bool,
    persistent: Option<HttpPersistentSettings>,
) -> Option<Reused> {
    let mut session = Session::new_h1(stream);
    let ds = &mut session.downstream_session;
    if first {
        ds.set_keepalive((!stopping).then_some(FIRST_REQUEST_KEEPALIVE));
    } else if let Some(p) = persistent {
        p.apply_to_session(ds);
    }
    match ds.read_request().await {
        Ok(true) => {}
        Ok(false) => return None,
        // Boxed, as the answers below: a rare path's state is not carried
        // by every request's future.
        Err(e) => return Box::pin(unread(ds, e)).await,
    }
    // The header is complete: its deadline and size cap no longer apply
    // ([`super::guarded`]).
    phase::header_complete();
    if ds.req_header().method == Method::CONNECT {
        return Box::pin(refuse_connect(ds)).await;
    }
    if stopping {
        ds.set_keepalive(None);
    }
    let mut ctx = gw.new_ctx();
    let answered = match gw.request_filter(&mut session, &mut ctx).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::explain(
            ErrorType::InternalError,
            "request_filter did not answer",
        )),
        Err(e) => Err(e),
    };
    if let Err(e) = answered {
        return Box::pin(failed(gw, session, &mut ctx, e)).await;
    }
    gw.logging(&mut session, None, &mut ctx).await;
    reuse(session).await
}

/// pingora-proxy's answer to a request header it could not read (`e`): a
/// header that does not parse gets pingora's 400, any other read error
/// (the connection broke under its header: the client's side) closes it.
async fn unread(ds: &mut ServerSession, mut e: Box<Error>) -> Option<Reused> {
    e.as_down();
    if matches!(e.etype, ErrorType::InvalidHTTPHeader) {
        tracing::debug!("request header refused: {e}");
        if let Err(e) = ds.respond_error(400).await {
            tracing::debug!("the answer to a bad request header failed: {e}");
        }
    } else {
        tracing::debug!("request header not read: {e}");
    }
    ds.shutdown().await;
    None
}

/// pingora-proxy's answer to CONNECT with its default server options: 405,
/// and the connection closed.
async fn refuse_connect(ds: &mut ServerSession) -> Option<Reused> {
    if let Err(e) = ds.respond_error(405).await {
        tracing::debug!("the answer to a CONNECT request failed: {e}");
    }
    ds.shutdown().await;
    None
}

/// pingora-proxy's `handle_error` for a request whose filter failed with
/// `e`: the hook's answer, the error line, the access record, and the
/// connection reused only when the hook allows it.
async fn failed(
    gw: &Gateway,
    mut session: Session,
    ctx: &mut <Gateway as ProxyHttp>::CTX,
    e: Box<Error>,
) -> Option<Reused> {
    let res = gw.fail_to_proxy(&mut session, &e, ctx).await;
    if !gw.suppress_error_log(&session, ctx, &e) {
        tracing::error!(
            "Fail to filter request: {e}, status: {}, {}",
            res.error_code,
            gw.request_summary(&session, ctx)
        );
    }
    gw.logging(&mut session, Some(&e), ctx).await;
    session.downstream_session.on_proxy_failure(e);
    if res.can_reuse_downstream {
        reuse(session).await
    } else {
        None
    }
}

/// The session finished (its answer flushed) and its connection, when
/// HTTP allows another request on it, with the settings the next session
/// takes over.
async fn reuse(session: Session) -> Option<Reused> {
    let settings = HttpPersistentSettings::for_session(&session);
    let reusable = session.downstream_session.finish().await.ok().flatten()?;
    Some((reusable, settings))
}
