//! Forwarding a verified call to MOR, one path for every body size: pick a
//! server (round robin, healthy first), connect (a failed connect moves on to
//! the next server: nothing was sent), send the request with the verified
//! body, read MOR's final answer header, stream the answer back with the
//! RateLimit headers, return the connection to the keep-alive pool. Every
//! step is measured.
//!
//! Owned in place of pingora's proxy loop. Mirrors pingora-proxy 0.9.1
//! (pinned exactly in Cargo.toml): `src/lib.rs` (`proxy_to_upstream`: the
//! retry of an idempotent request whose reused connection failed,
//! `ProxyHttp::error_while_proxy`'s `decide_reuse`) and `src/proxy_h1.rs`
//! (`proxy_to_h1_upstream`: request header, body, response header, body).
//! Kept: keep-alive (connections kept in [`super::pool`] instead of
//! pingora's pool; the HTTP/1 client session is made here on the stream,
//! so that a request with a body goes out in one write where pingora's
//! client flushes the header first; pingora's
//! `Connector::release_http_session` is followed on the way back); one
//! more try on a
//! new connection for a GET or HEAD when MOR closed a reused one before
//! answering (pingora's `RetryType::ReusedOnly`); informational answers
//! read past (pingora's client returns each 1xx header on its own).
//! Left out on purpose: informational answers are not relayed to the
//! client (skipped; 101 refused: no tunnels); no retry of a POST, of a
//! timeout or after any byte of the answer; no HTTP/2 or custom upstream
//! protocol; no cache, compression, upstream modules or filters; the body
//! is the verified one, whole, never streamed from the client. On a pingora
//! upgrade, compare these files' versions before moving the pin.

use std::time::Instant;

use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as Http1Session};
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, RetryType};
use tokio::io::AsyncWriteExt;

use super::context::Ctx;
use super::state::{Shared, State};
use super::upstreams::{local_exhaustion, peer_for, Call};
use crate::config::ForwardedFor;
use crate::core::decision::Signer;
use crate::core::judge::{self, Judged, Judgement, MorAnswer, Peek};
use crate::core::reply::{self, Reason};
use crate::core::request_id;

/// Counts an upstream error by kind (and for passive ejection).
fn count_error(shared: &Shared, ctx: &Ctx, e: &Error, connect: bool) {
    if let Some(u) = ctx.upstream {
        let (kind, call) = if timeout_kind(e) {
            ("timeout", Some(Call::TimedOut))
        } else if connect {
            ("connect", Some(Call::ConnectFailed))
        } else {
            ("other", None)
        };
        if let (Some(st), Some(call)) = (&ctx.state, call) {
            st.upstreams.called(u, call);
        }
        shared
            .metrics
            .upstream_errors
            .with_label_values(&[&u.to_string(), kind])
            .inc();
    }
}

/// A failed write of MOR's answer to the client: the client's fault
/// (`client.send_timeout` passed while it did not read, or it left); MOR's
/// connection is dropped with the request.
fn client_fault(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    ctx.refused = Some(if timeout_kind(&e) {
        Reason::ClientTimeout
    } else {
        Reason::ClientClosed
    });
    e.as_down();
    e
}

/// End-to-end headers passed to MOR as the client sent them; everything
/// else (hop-by-hop, `Connection`-nominated, client-address variants such as
/// `Forwarded`, `Client-IP`, `True-Client-IP`, `X_Forwarded_For`) is dropped.
const PASSED: &[header::HeaderName] = &[
    header::HOST,
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::ACCEPT_ENCODING,
    header::USER_AGENT,
];

/// Also passed on paths forwarded without a hash check (REST v2, web UI).
const PASSED_THROUGH: &[header::HeaderName] = &[header::AUTHORIZATION, header::COOKIE];

/// The request sent upstream, rebuilt from the verified view: the method,
/// the canonical path and query, the body's Content-Type exactly as it was
/// verified and its real length, the allow-listed headers, and the gateway's
/// own client-address headers.
fn upstream_request(session: &Session, ctx: &Ctx, body_len: usize) -> Result<RequestHeader> {
    let client = session.req_header();
    let f = ctx
        .forward
        .as_ref()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no verdict"))?;
    let mut req = RequestHeader::build(client.method.clone(), b"/", Some(12))?;
    req.set_uri(http::Uri::from(f.path_and_query.clone()));
    let through = f.signer == Signer::PassThrough;
    let extra = ctx
        .state
        .as_ref()
        .map_or(&[][..], |s| &s.settings.upstream.pass_headers[..]);
    let names = PASSED
        .iter()
        .chain(PASSED_THROUGH.iter().filter(|_| through))
        .chain(extra)
        .chain(std::iter::once(&header::CONTENT_TYPE));
    for name in names {
        // Framing checks left at most one Host and one Content-Type.
        for v in client.headers.get_all(name) {
            req.append_header(name.clone(), v.clone())?;
        }
    }
    if body_len > 0 || client.method == http::Method::POST {
        req.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    }
    let ip = ctx.ip.map(|i| i.to_string()).unwrap_or_default();
    let append = ctx
        .state
        .as_ref()
        .is_some_and(|s| s.settings.upstream.x_forwarded_for == ForwardedFor::Append);
    let prev = client
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .filter(|p| append && !p.trim().is_empty());
    let xff = match prev {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.clone(),
    };
    req.insert_header("X-Forwarded-For", xff)?;
    req.insert_header("X-Real-IP", ip)?;
    if !ctx.request_id.is_empty() {
        req.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
    }
    Ok(req)
}

/// Informational answers (1xx but 101) skipped before MOR's final answer;
/// one more is MOR's fault (a server that never ends its 1xx stream).
const MAX_INFORMATIONAL: usize = 8;

/// A connection to one MOR server, pooled (`reused`) or new, before the
/// request is sent on it.
struct Upstream {
    stream: Stream,
    peer: HttpPeer,
    reused: bool,
}

/// Picks a server (round robin, healthy first) and connects; a failed
/// connect moves on to the next untried server (nothing was sent yet, so
/// any method may go elsewhere).
async fn connect(shared: &Shared, st: &State, ctx: &mut Ctx) -> Result<Upstream> {
    loop {
        let addr = st
            .upstreams
            .pick(&ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no MOR upstream"))?;
        ctx.upstream = Some(addr);
        ctx.tried.push(addr);
        let peer = peer_for(addr, &st.settings.upstream);
        // A pooled connection first; a new one's connect (TCP, TLS:
        // kilobytes of future state) is boxed so that only that path
        // carries it.
        let got = match shared.pool.take(&peer) {
            Some(stream) => Ok((stream, true)),
            None => Box::pin(shared.connector.new_stream(&peer))
                .await
                .map(|s| (s, false)),
        };
        match got {
            Ok((stream, reused)) => {
                return Ok(Upstream {
                    stream,
                    peer,
                    reused,
                })
            }
            // The gateway's own fault (no descriptor, no local port): not
            // MOR's, and no other server would fare better.
            Err(e) if local_exhaustion(&e) => return Err(e),
            Err(e) => {
                count_error(shared, ctx, &e, true);
                if !st.upstreams.more_than(&ctx.tried) {
                    return Err(e);
                }
            }
        }
    }
}

/// A new connection to `peer`, past the keep-alive pool (it goes back into
/// the pool like any other when the answer is read).
async fn fresh(shared: &Shared, ctx: &Ctx, peer: &HttpPeer) -> Result<Stream> {
    Box::pin(shared.connector.new_stream(peer))
        .await
        .inspect_err(|e| {
            if !local_exhaustion(e) {
                count_error(shared, ctx, e, true);
            }
        })
}

/// Writes `req` with `body` on `stream` and returns the HTTP/1 session that
/// reads MOR's answer (with the peer's read and write timeouts). A request
/// with a body goes out in one write, header and body together (one
/// segment on the wire, as nginx sends it; pingora's client flushes the
/// header on its own first); one without a body, or a HEAD (whose answer
/// pingora's reader frames by the request it wrote), is written by
/// pingora's client.
async fn send(
    mut stream: Stream,
    peer: &HttpPeer,
    req: RequestHeader,
    body: &Bytes,
) -> Result<HttpSession> {
    if body.is_empty() || req.method == http::Method::HEAD {
        // Boxed: pingora's writers' state is carried only on this path.
        return Box::pin(async move {
            let mut s = session(stream, peer);
            s.write_request_header(Box::new(req)).await?;
            s.write_request_body(body.clone(), true).await?;
            s.finish_request_body().await?;
            Ok(s)
        })
        .await;
    }
    let mut wire = http_req_header_to_wire(&req)
        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "request line not writable"))?;
    wire.extend_from_slice(body);
    let write = async {
        stream.write_all(&wire).await?;
        stream.flush().await
    };
    let written = match peer.options.write_timeout {
        Some(t) => tokio::time::timeout(t, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    written.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => Error::because(
            ErrorType::WriteTimedout,
            "while writing the request (timeout)",
            e,
        ),
        _ => Error::because(ErrorType::WriteError, "while writing the request", e),
    })?;
    Ok(session(stream, peer))
}

/// An HTTP/1 client session on `stream` with `peer`'s options and timeouts.
fn session(stream: Stream, peer: &HttpPeer) -> HttpSession {
    let mut s = HttpSession::H1(Http1Session::new_with_options(stream, peer));
    s.set_read_timeout(peer.options.read_timeout);
    s.set_write_timeout(peer.options.write_timeout);
    s
}

/// True when `e` shows that MOR closed a kept-alive connection before it
/// read the request (pingora's `RetryType::ReusedOnly`: end of stream or an
/// OS error while waiting for the answer's header; or the request's write
/// failing), on a reused connection, for a GET or HEAD: then MOR acted on
/// nothing, and one more try on a new connection is safe. Never a POST:
/// MOR may have acted on it.
fn stale(e: &Error, reused: bool, method: &http::Method) -> bool {
    reused
        && (method == http::Method::GET || method == http::Method::HEAD)
        && (e.retry == RetryType::ReusedOnly || e.etype == ErrorType::WriteError)
}

/// Reads MOR's final answer header: informational answers (100 Continue,
/// 103 Early Hints, any 1xx but 101) are skipped; 101 is refused: the
/// gateway never turns a connection into an unverified tunnel.
async fn answer(up: &mut HttpSession) -> Result<ResponseHeader> {
    for _ in 0..=MAX_INFORMATIONAL {
        up.read_response_header().await?;
        let resp = up
            .response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no upstream header"))?;
        match resp.status.as_u16() {
            101 => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "MOR answered 101 Switching Protocols",
                ))
            }
            100..=199 => continue,
            _ => return Ok(resp.clone()),
        }
    }
    Err(Error::explain(
        ErrorType::InvalidHTTPHeader,
        "MOR sent informational answers without end",
    ))
}

/// Sends the request on `stream` and reads MOR's final answer header
/// ([`send`], [`answer`]).
async fn exchange(
    stream: Stream,
    peer: &HttpPeer,
    req: RequestHeader,
    body: &Bytes,
) -> Result<(HttpSession, ResponseHeader)> {
    let mut s = send(stream, peer, req, body).await?;
    let resp = answer(&mut s).await?;
    Ok((s, resp))
}

/// Streams MOR's answer (`resp`, then the body) to the client, each chunk
/// as soon as it came; with `peek`, the start of the body is kept to judge
/// it (never held back: the chunk is sent, the peek keeps a reference or a
/// copy of at most [`judge::PEEK_BYTES`]).
async fn relay(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut HttpSession,
    resp: ResponseHeader,
    mut peek: Option<&mut Peek>,
) -> Result<()> {
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(|e| client_fault(ctx, e))?;
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => {
                if let Some(p) = peek.as_deref_mut() {
                    p.add(&chunk);
                }
                session
                    .write_response_body(Some(chunk), false)
                    .await
                    .map_err(|e| client_fault(ctx, e))?
            }
            Ok(None) => break,
            Err(e) => {
                count_error(shared, ctx, &e, false);
                return Err(e);
            }
        }
    }
    session
        .write_response_body(None, true)
        .await
        .map_err(|e| client_fault(ctx, e))
}

/// MOR's answer to a forwarded API call, judged once it was relayed whole
/// (an answer cut short is not judged): classified from its status and the
/// first bytes of its body when it is identity-encoded, from its status alone
/// when MOR compressed it ([`MorAnswer::unread`]); counted and kept for the
/// access line.
fn judge(shared: &Shared, ctx: &mut Ctx, gateway: Judged, status: u16, peek: Option<&Peek>) {
    let mor = peek.map_or(MorAnswer::unread(status), |p| p.classify(status));
    let j = Judgement { gateway, mor };
    shared.metrics.observe_judgement(j, ctx.info.label());
    ctx.judged = Some(j);
}

/// The call's request id and the RateLimit headers of the caller's
/// allowance, when configured.
fn add_allowance(st: &State, ctx: &Ctx, resp: &mut ResponseHeader) -> Result<()> {
    if !ctx.request_id.is_empty() {
        resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
    }
    if st.settings.limits.headers {
        if let Some(a) = ctx.forward.as_ref().and_then(|f| f.allowance) {
            resp.insert_header("RateLimit-Limit", a.limit.to_string())?;
            resp.insert_header("RateLimit-Remaining", a.remaining.to_string())?;
            resp.insert_header("RateLimit-Reset", reply::ceil_secs(a.reset).to_string())?;
        }
    }
    Ok(())
}

/// Forwards the verified call in `ctx` with `body` and answers the client.
pub async fn forward(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut Ctx,
    body: Bytes,
) -> Result<()> {
    let st = ctx
        .state
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no state"))?;
    let Upstream {
        stream,
        peer,
        reused,
    } = connect(shared, &st, ctx).await?;
    let sent = Instant::now();
    let req = upstream_request(session, ctx, body.len())?;
    let mut answered = exchange(stream, &peer, req, &body).await;
    if let Err(e) = &answered {
        if stale(e, reused, &session.req_header().method) {
            tracing::debug!("MOR closed a kept-alive connection: sent again on a new one: {e}");
            let stream = fresh(shared, ctx, &peer).await?;
            let req = upstream_request(session, ctx, body.len())?;
            answered = exchange(stream, &peer, req, &body).await;
        }
    }
    let (mut up, mut resp) = answered.inspect_err(|e| count_error(shared, ctx, e, false))?;
    if let Some(u) = ctx.upstream {
        st.upstreams.called(u, Call::Answered(resp.status.as_u16()));
    }
    shared
        .metrics
        .upstream_duration
        .with_label_values(&[ctx.info.label()])
        .observe(sent.elapsed().as_secs_f64());
    add_allowance(&st, ctx, &mut resp)?;
    // API calls are judged (pass-through paths are not); an answer MOR
    // compressed is counted, not read.
    let judging = ctx.forward.as_ref().and_then(|f| Judged::of(f, &ctx.info));
    let status = resp.status.as_u16();
    let encoding = resp.headers.get(header::CONTENT_ENCODING);
    let mut peek =
        (judging.is_some() && judge::readable(encoding.map(|v| v.as_bytes()))).then(Peek::default);
    relay(shared, session, ctx, &mut up, resp, peek.as_mut()).await?;
    if let Some(gateway) = judging {
        judge(shared, ctx, gateway, status, peek.as_ref());
    }
    // Back to the pool when MOR keeps it open and its answer was read whole
    // (as pingora's `Connector::release_http_session`).
    if let HttpSession::H1(mut h1) = up {
        h1.respect_keepalive();
        if let Some(stream) = h1.reuse().await {
            shared.pool.give(&peer, stream, peer.options.idle_timeout);
        }
    }
    Ok(())
}

/// True for the errors that are timeouts (connect, read or write).
pub(crate) fn timeout_kind(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Forward;
    use crate::edge::testing::session_of;

    fn verified(path_and_query: &str, signer: Signer) -> Ctx {
        let mut ctx = Ctx::new();
        ctx.ip = Some("198.51.100.7".parse().unwrap());
        ctx.forward = Some(Forward {
            path_and_query: path_and_query.parse().unwrap(),
            signer,
            skipped: None,
            allowance: None,
        });
        ctx
    }

    fn names(req: &RequestHeader) -> Vec<String> {
        let mut v: Vec<String> = req.headers.keys().map(|k| k.as_str().to_string()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn the_upstream_request_is_rebuilt_from_the_verified_view() {
        let raw = b"POST /billing/api/user_details?u=admin HTTP/1.1\r\nHost: mor\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\
Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nForwarded: for=6.6.6.6\r\n\
Client-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nCookie: s=1\r\nAuthorization: Basic x\r\n\
Accept: */*\r\nUser-Agent: t\r\n\r\nu=a";
        let session = session_of(raw).await;
        let ctx = verified("/billing/api/user_details_get?u=admin", Signer::Admin);
        let req = upstream_request(&session, &ctx, 3).unwrap();
        // The verified path (the alias rewritten), not the client's.
        assert_eq!(req.uri.to_string(), "/billing/api/user_details_get?u=admin");
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(
            names(&req),
            [
                "accept",
                "content-length",
                "content-type",
                "host",
                "user-agent",
                "x-forwarded-for",
                "x-real-ip"
            ]
        );
        let h = |n: &str| req.headers.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("content-length"), "3");
        assert_eq!(h("content-type"), "application/x-www-form-urlencoded");
        // The gateway's reading of the client, not the client's claim.
        assert_eq!(h("x-forwarded-for"), "198.51.100.7");
        assert_eq!(h("x-real-ip"), "198.51.100.7");

        // Paths forwarded without a hash check keep the client's credentials.
        let ctx = verified("/billing/api/v2/x", Signer::PassThrough);
        let req = upstream_request(&session, &ctx, 0).unwrap();
        assert!(req.headers.get("cookie").is_some() && req.headers.get("authorization").is_some());
        // A POST always says its length, even 0.
        assert_eq!(req.headers.get("content-length").unwrap(), "0");
    }

    #[tokio::test]
    async fn a_get_without_a_body_gets_no_length() {
        let session = session_of(b"GET /billing/api/x?u=a HTTP/1.1\r\nHost: mor\r\n\r\n").await;
        let req =
            upstream_request(&session, &verified("/billing/api/x?u=a", Signer::Admin), 0).unwrap();
        assert!(req.headers.get("content-length").is_none());
    }

    /// A call's futures carry the paths every call takes, not the rare
    /// ones' state (a new connection's connect, pingora's request writers,
    /// the Redis exchange are boxed on their own paths; the forward is
    /// boxed apart from `request_filter`, so a refusal does not carry it):
    /// each call builds and copies less. Debug-build sizes, printed
    /// (`--nocapture`) for benches/results.md; forward 5,040 B, connect
    /// 2,736 B before.
    #[tokio::test]
    async fn a_calls_futures_leave_rare_paths_boxed() {
        use pingora::proxy::ProxyHttp;
        let shared = crate::edge::testing::shared();
        let mut session = session_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let mut ctx = Ctx::new();
        let st = shared.state.load_full();
        let connect = {
            let c = connect(&shared, &st, &mut ctx);
            std::mem::size_of_val(&c)
        };
        let forward =
            std::mem::size_of_val(&forward(&shared, &mut session, &mut ctx, Bytes::new()));
        let gateway = super::super::proxy::Gateway {
            shared: shared.clone(),
        };
        // async_trait boxes it: the size of what the box holds.
        let filter = std::mem::size_of_val(&*gateway.request_filter(&mut session, &mut ctx));
        println!(
            "future sizes: request_filter {filter} B, forward {forward} B, connect {connect} B"
        );
        assert!(forward <= 4096, "{forward}");
        assert!(connect <= 1024, "{connect}");
        assert!(filter <= 4096, "{filter}");
    }
}
