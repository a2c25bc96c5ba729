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

use super::proxy::{timeout_kind, Ctx, Shared};
use crate::config::ForwardedFor;
use crate::core::reply;

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

/// The request header sent upstream: the client's, with the canonical path,
/// the gateway's client-address headers, and no `Expect` (the gateway
/// answered any 100-continue itself).
fn upstream_request(session: &Session, ctx: &Ctx) -> Result<RequestHeader> {
    let mut req = session.req_header().clone();
    if let Some(f) = &ctx.forward {
        let uri: http::Uri = f
            .path_and_query
            .parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "forward uri", e))?;
        req.set_uri(uri);
    }
    let ip = ctx.ip.map(|i| i.to_string()).unwrap_or_default();
    let append = ctx
        .state
        .as_ref()
        .is_some_and(|s| s.settings.upstream.x_forwarded_for == ForwardedFor::Append);
    let prev = req
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
    req.remove_header(&header::EXPECT);
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
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.write_timeout = Some(u.write_timeout);
        peer.options.idle_timeout = Some(u.idle_timeout);
        match shared.connector.get_http_session(&peer).await {
            Ok((up, _reused)) => break (up, peer),
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
        up.write_request_header(Box::new(upstream_request(session, ctx)?))
            .await?;
        up.write_request_body(body, true).await?;
        up.finish_request_body().await?;
        up.read_response_header().await?;
        up.response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no upstream header"))
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
    if st.settings.limits.headers {
        if let Some(a) = ctx.forward.as_ref().and_then(|f| f.allowance) {
            resp.insert_header("RateLimit-Limit", a.limit.to_string())?;
            resp.insert_header("RateLimit-Remaining", a.remaining.to_string())?;
            resp.insert_header("RateLimit-Reset", reply::ceil_secs(a.reset).to_string())?;
        }
    }
    session.write_response_header(Box::new(resp), false).await?;
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => session.write_response_body(Some(chunk), false).await?,
            Ok(None) => break,
            Err(e) => {
                count_error(shared, ctx, &e, false);
                return Err(e);
            }
        }
    }
    session.write_response_body(None, true).await?;
    shared
        .connector
        .release_http_session(up, &peer, peer.options.idle_timeout)
        .await;
    Ok(())
}
