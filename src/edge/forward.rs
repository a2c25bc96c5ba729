//! Forwarding a verified call to MOR, one path for every body size: pick a
//! server (round robin, healthy first), connect (a failed connect moves on to
//! the next server: nothing was sent), send the request with the verified
//! body, stream MOR's answer back with the RateLimit headers, return the
//! connection to the keep-alive pool. Every step is measured.

use std::time::Instant;

use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::{Error, ErrorType};

use super::context::Ctx;
use super::state::Shared;
use super::upstreams::{local_exhaustion, peer_for};
use crate::config::ForwardedFor;
use crate::core::decision::Signer;
use crate::core::reply::{self, Reason};
use crate::core::request_id;

/// Counts an upstream error by kind.
fn count_error(shared: &Shared, ctx: &Ctx, e: &Error, connect: bool) {
    if let Some(u) = ctx.upstream {
        let kind = if timeout_kind(e) {
            "timeout"
        } else if connect {
            "connect"
        } else {
            "other"
        };
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
    let u = &st.settings.upstream;
    let (mut up, peer) = loop {
        let addr = st
            .upstreams
            .pick(&ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no MOR upstream"))?;
        ctx.upstream = Some(addr);
        ctx.tried.push(addr);
        let peer = peer_for(addr, u);
        match shared.connector.get_http_session(&peer).await {
            Ok((up, _reused)) => break (up, peer),
            // The gateway's own fault (no descriptor, no local port): not
            // MOR's, and no other server would fare better.
            Err(e) if local_exhaustion(&e) => return Err(e),
            Err(e) => {
                count_error(shared, ctx, &e, true);
                // Nothing was sent yet: another server is safe for any method.
                if !st.upstreams.more_than(&ctx.tried) {
                    return Err(e);
                }
            }
        }
    };
    up.set_read_timeout(peer.options.read_timeout);
    up.set_write_timeout(peer.options.write_timeout);
    let sent = Instant::now();
    let answered = async {
        up.write_request_header(Box::new(upstream_request(session, ctx, body.len())?))
            .await?;
        up.write_request_body(body, true).await?;
        up.finish_request_body().await?;
        up.read_response_header().await?;
        let resp = up
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no upstream header"))?;
        // The gateway never turns a connection into an unverified tunnel.
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "MOR answered 101 Switching Protocols",
            ));
        }
        Ok(resp)
    }
    .await;
    let mut resp = match answered {
        Ok(r) => r,
        Err(e) => {
            count_error(shared, ctx, &e, false);
            return Err(e);
        }
    };
    shared
        .metrics
        .upstream_duration
        .with_label_values(&[ctx.info.label()])
        .observe(sent.elapsed().as_secs_f64());
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
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(|e| client_fault(ctx, e))?;
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => session
                .write_response_body(Some(chunk), false)
                .await
                .map_err(|e| client_fault(ctx, e))?,
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
        .map_err(|e| client_fault(ctx, e))?;
    shared
        .connector
        .release_http_session(up, &peer, peer.options.idle_timeout)
        .await;
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
}
