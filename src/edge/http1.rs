//! The HTTP/1 keep-alive loop of a gateway connection: pingora's own loop
//! (`ServerApp for HttpServerApp`), run by the gateway so that it knows
//! where each request's header begins and can end the connection when the
//! header breaks a limit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::cut::Cut;
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
/// `force_custom` sessions. Added: the race with the connection's cut
/// (header deadline or size) and the request-line reset between requests.
/// On a pingora upgrade, compare that function before moving the pin.
pub(crate) async fn keepalive_loop<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    conn: &Conn,
) -> Option<Cut> {
    let mut session = ServerSession::new_http1(stream);
    let stopping = *shutdown.borrow();
    session.set_keepalive((!stopping).then_some(FIRST_REQUEST_KEEPALIVE));
    session.set_keepalive_reuses_remaining(
        app.server_options().and_then(|o| o.keepalive_request_limit),
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
            r = app.process_new_http(session, shutdown) => r,
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
