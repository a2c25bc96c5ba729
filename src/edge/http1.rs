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

/// pingora's HTTP/1 keep-alive loop (`ServerApp for HttpServerApp`), one
/// request per `process_new_http`, with each request's header phase
/// marked and a cut header ending the connection.
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
