//! The pingora `ProxyHttp` glue: reads the request (headers, then the whole
//! body up to the limit), asks the decision core, then either answers at the
//! edge or forwards to a MOR upstream through [`super::forward`], one path for
//! every body size. Nothing reaches MOR before the verdict. The hooks run in
//! [`super::http1`], on the one path they take (`request_filter` answers
//! every request).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType};

use crate::core::catalog::Envelope;
use crate::core::decision::{self, Checked, Rejected, Signer, Verdict};
use crate::core::framing;
use crate::core::reply::{self, Reason, Refusal, ReplyMode, XML_CONTENT_TYPE};
use crate::core::request_id;
use crate::edge::body::{self, Reservation};
use crate::edge::context::{Ctx, InFlight};
use crate::edge::forward::timeout_kind;
use crate::edge::phase;
use crate::edge::request::{client_ip, head_of, shown_path};
use crate::edge::shared_limits;
use crate::edge::state::Shared;
use crate::ops::accesslog::{micros, redact_query_also, Record, Timestamp};

/// The gateway service.
pub struct Gateway {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// What the client is told when handling its call failed with `e`:
/// nothing when the client caused it (it left, it was too slow) or an
/// answer has begun; the gateway's own lack of sockets as a 503 that is not
/// MOR's fault; MOR's failures as a timeout or a bad gateway.
fn failure_answer(e: &Error, answer_begun: bool) -> Option<Refusal> {
    if e.esource() == &ErrorSource::Downstream || answer_begun {
        return None;
    }
    if super::upstreams::local_exhaustion(e) {
        let mut r = Refusal::new(Reason::NoSocket);
        r.retry_after = Some(std::time::Duration::from_secs(1));
        return Some(r);
    }
    Some(Refusal::new(if timeout_kind(e) {
        Reason::UpstreamTimeout
    } else {
        Reason::UpstreamError
    }))
}

impl Gateway {
    /// Answers with a refusal in the call's envelope; returns the status sent.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<u16> {
        ctx.refused = Some(r.reason);
        // One line per refusal at debug level (MOR_GATEWAY_LOG=mor_gateway=debug):
        // never a parameter value, a hash or a key.
        tracing::debug!(
            "refused (request id {}): {} ({}{}){}{} method {} user {}",
            ctx.request_id,
            r.reason.label(),
            r.reason.text(),
            r.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            ctx.info
                .limits
                .iter()
                .find(|(_, allowed)| !allowed)
                .map(|(l, _)| format!(" (limit layer {})", l.label()))
                .unwrap_or_default(),
            ctx.info
                .mismatch
                .as_ref()
                .map(|m| format!(" (hash: {m})"))
                .unwrap_or_default(),
            ctx.info.label(),
            ctx.info.user.as_deref().unwrap_or("-"),
        );
        let mode = ctx
            .state
            .as_ref()
            .map_or(ReplyMode::Mor, |s| s.settings.reply_mode);
        // Boxed: pingora's writers' state (a kilobyte) is carried only by
        // a refusal, not by every call's `request_filter`.
        Box::pin(write_refusal(
            session,
            mode,
            ctx.info.envelope,
            &r,
            &ctx.request_id,
        ))
        .await?;
        Ok(r.reason.status(mode))
    }
}

/// Writes a refusal in MOR's XML shape.
pub async fn write_refusal(
    session: &mut Session,
    mode: ReplyMode,
    envelope: Envelope,
    r: &Refusal,
    request_id: &str,
) -> Result<()> {
    let out = reply::render(r, envelope, mode);
    let mut h = ResponseHeader::build(out.status, Some(5))?;
    if !request_id.is_empty() {
        h.insert_header(request_id::HEADER, request_id)?;
    }
    h.insert_header(header::CONTENT_TYPE, XML_CONTENT_TYPE)?;
    let mut n = itoa::Buffer::new();
    h.insert_header(header::CONTENT_LENGTH, n.format(out.body.len()))?;
    if let Some(s) = out.retry_after {
        h.insert_header(header::RETRY_AFTER, n.format(s))?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(out.body)), true)
        .await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// The whole request is handled here: refused, or forwarded by
    /// [`super::forward::forward`]; pingora's own proxy phases never run
    /// (the header is complete when this runs: [`super::http1`] marked it).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.in_flight = Some(InFlight::enter(&self.shared.metrics.in_flight));
        // Pipelined requests are answered one after the other, in order
        // (pingora's default drops them with the connection).
        session.as_downstream_mut().set_pipelining_enabled(true);
        let sent_ids = session.req_header().headers.get_all(request_id::HEADER);
        // One sane id is kept; none or several: a new one.
        let sent = match (sent_ids.iter().next(), sent_ids.iter().nth(1)) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        };
        ctx.request_id = self.shared.request_ids.of(sent);
        let st = self.shared.state.load_full();
        ctx.state = Some(st.clone());
        let dir = self.shared.mirror.load();
        let s = &st.settings;
        let ip = client_ip(session, s);
        ctx.ip = Some(ip);
        let ds = session.as_downstream_mut();
        ds.set_read_timeout(Some(s.client.read_timeout));
        // A client that does not read its answer is cut (and MOR's
        // connection with it) after this long without progress.
        ds.set_write_timeout(Some(s.client.send_timeout));
        // Keep-alive only where HTTP allows it: pingora has turned it off
        // for HTTP/1.0 without `Connection: keep-alive`, for
        // `Connection: close` and for a length sent with Transfer-Encoding.
        if self.shared.draining() {
            // Draining: this answer says `Connection: close`.
            ds.set_keepalive(None);
        } else if ds.get_keepalive().is_some() {
            ds.set_keepalive(Some(s.client.keepalive_timeout.as_secs().max(1)));
        }
        let req = session.req_header();
        let line = framing::Line {
            method: req.method.as_str(),
            http11: req.version == http::Version::HTTP_11,
            api: req.uri.path().starts_with(s.policy.prefix.as_str()),
        };
        // The header lines as received: pingora's parsed view has already
        // dropped a Content-Length sent with Transfer-Encoding.
        let raw = session.as_downstream().to_h1_raw();
        let framed = if phase::request_target_bad() {
            Err(framing::FramingError::Target)
        } else {
            framing::check(line, framing::header_lines(&raw))
        };
        if let Err(e) = framed {
            session.set_keepalive(None);
            self.refuse(
                session,
                ctx,
                Refusal::with(Reason::BadFraming, e.to_string()),
            )
            .await?;
            return Ok(true);
        }
        let sh = st.shared_limits.as_deref();
        let admitted = match decision::admit(&s.policy, &dir, &head_of(session, ip)) {
            Ok(a) => {
                let q = a.question(&s.limits);
                let answer = shared_limits::answer(sh, &st.limits, &q).await;
                a.conclude(answer)
            }
            Err(r) => Err(r),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(r) => {
                let Rejected { refusal, info } = *r;
                ctx.info = info;
                self.refuse(session, ctx, refusal).await?;
                return Ok(true);
            }
        };
        // What is known of the call labels a body that fails too.
        ctx.info = admitted.info().clone();
        let rules = body::Rules {
            max_body: s.max_body_bytes,
            total: s.max_buffered_bytes,
            per_address: s.max_buffered_bytes_per_address,
            timeout: s.client.body_timeout,
            min_rate: s.client.body_min_rate,
        };
        // The client's share; a trusted balancer is not one client.
        let key = Some(ip)
            .filter(|ip| !s.client.trusted_proxies.iter().any(|n| n.contains(ip)))
            .map(|ip| crate::core::client::group(ip, s.client.ipv6_prefix));
        let res = ctx
            .reserved
            .get_or_insert_with(|| Reservation::new(self.shared.budget.clone(), key));
        let read = body::read(session.as_downstream_mut(), res, &rules).await;
        let body = match read {
            Ok(b) => b,
            Err(fault) => {
                session.set_keepalive(None);
                match fault.answer() {
                    Ok(r) => self.refuse(session, ctx, r).await?,
                    Err(mut e) => {
                        // Nobody to answer: the connection is dropped.
                        ctx.refused = Some(Reason::ClientClosed);
                        e.as_down();
                        return Err(e);
                    }
                };
                return Ok(true);
            }
        };
        ctx.req_bytes = body.len();
        let verdict =
            match decision::verify(&s.policy, &dir, &head_of(session, ip), admitted, &body) {
                Checked::Done(v) => v,
                Checked::Pending(p) => {
                    let answer =
                        shared_limits::answer(sh, &st.limits, &p.question(&s.limits)).await;
                    p.conclude(answer)
                }
            };
        match verdict {
            Verdict::Refuse(r, info) => {
                ctx.info = info;
                self.refuse(session, ctx, r).await?;
            }
            Verdict::Forward(f, info) => {
                ctx.info = info;
                ctx.forward = Some(f);
                // Boxed: a refused call (a bad hash, a limit) does not
                // build and copy the forward's state with its own.
                Box::pin(super::forward::forward(&self.shared, session, ctx, body)).await?;
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // request_filter always answers; pingora's proxy path is never taken.
        Err(Error::explain(
            ErrorType::InternalError,
            "the gateway forwards in request_filter",
        ))
    }

    /// What pingora's own error lines say of a request: method and path,
    /// and the query with its secrets redacted (never the raw URI).
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        let (path, id_secret) = shown_path(&self.shared, req.uri.path());
        let line = match req.uri.query() {
            Some(q) => format!("{} {path}?{}", req.method, redact_query_also(q, id_secret)),
            None => format!("{} {path}", req.method),
        };
        if ctx.request_id.is_empty() {
            line
        } else {
            format!("{line} (request id {})", ctx.request_id)
        }
    }

    /// A client that went away is not an error of the gateway's or MOR's.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        matches!(
            ctx.refused,
            Some(Reason::ClientClosed | Reason::ClientTimeout)
        )
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match failure_answer(e, session.response_written().is_some()) {
            Some(r) => self.refuse(session, ctx, r).await.unwrap_or(0),
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        // Out of the in-flight gauge now (and on any other way out).
        if ctx.in_flight.take().is_none() {
            return;
        }
        let m = &self.shared.metrics;
        let elapsed = ctx.start.elapsed();
        let label = ctx.info.label();
        let req = session.req_header();
        let http_method = req.method.as_str();
        let skipped = ctx.forward.as_ref().and_then(|f| f.skipped);
        m.observe_request(
            &ctx.info,
            http_method,
            ctx.refused,
            skipped,
            elapsed.as_secs_f64(),
        );
        m.request_bytes
            .with_label_values(&[label])
            .inc_by(ctx.req_bytes as u64);
        m.response_bytes
            .with_label_values(&[label])
            .inc_by(session.as_downstream().body_bytes_sent() as u64);
        let log = &self.shared.access_log;
        if !log.enabled() {
            return;
        }
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .unwrap_or(0);
        let (verdict, reason) = Reason::labels(ctx.refused);
        let (path, id_secret) = shown_path(&self.shared, req.uri.path());
        let signer = ctx.forward.as_ref().map(|f| match &f.signer {
            Signer::Admin => "admin".to_string(),
            Signer::Reseller(n) => format!("reseller:{n}"),
            Signer::Unchecked => "unchecked".to_string(),
            Signer::PassThrough => "pass_through".to_string(),
        });
        log.write(&Record {
            ts: Timestamp::now(),
            client_ip: ctx.ip.map(|i| i.to_string()).unwrap_or_default(),
            http_method,
            path: &path,
            query: req.uri.query().map(|q| redact_query_also(q, id_secret)),
            api_method: ctx.info.method.as_deref(),
            alias: ctx.info.alias.as_deref(),
            user: ctx.info.user.as_deref(),
            verdict,
            reason: (!reason.is_empty()).then_some(reason),
            status,
            latency_us: micros(elapsed),
            upstream: ctx.upstream.map(|u| u.to_string()),
            signer,
            would_refuse: ctx.info.would_refuse.describe(),
            request_id: (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
            judge: ctx.judged.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_who_is_at_fault() {
        let up = |t: ErrorType| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        let reason = |e: &Error, begun| failure_answer(e, begun).map(|r| r.reason);
        assert_eq!(
            reason(&up(ErrorType::ConnectTimedout), false),
            Some(Reason::UpstreamTimeout)
        );
        assert_eq!(
            reason(&up(ErrorType::ReadTimedout), false),
            Some(Reason::UpstreamTimeout)
        );
        assert_eq!(
            reason(&up(ErrorType::ConnectRefused), false),
            Some(Reason::UpstreamError)
        );
        assert_eq!(
            reason(&up(ErrorType::InvalidHTTPHeader), false),
            Some(Reason::UpstreamError)
        );
        // An answer has begun: nothing more can be said.
        assert_eq!(reason(&up(ErrorType::ReadTimedout), true), None);
        // The client's own fault is never answered as MOR's.
        let mut down = Error::new(ErrorType::ReadTimedout);
        down.as_down();
        assert_eq!(reason(&down, false), None);
        // No descriptor left: the gateway's fault, 503 with Retry-After.
        let emfile = Error::because(
            ErrorType::ConnectError,
            "connect",
            std::io::Error::from_raw_os_error(24),
        );
        let mut emfile = emfile;
        emfile.as_up();
        let r = failure_answer(&emfile, false).unwrap();
        assert_eq!(r.reason, Reason::NoSocket);
        assert!(r.retry_after.is_some());
    }
}
