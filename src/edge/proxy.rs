//! The pingora `ProxyHttp` glue: reads the request (headers, then the whole
//! body up to the limit), asks the decision core, then either answers at the
//! edge or forwards to a MOR upstream. Nothing reaches MOR before the verdict.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::Settings;
use crate::core::decision::{self, CallInfo, Forward, Head, Signer, Verdict};
use crate::core::limits::Limits;
use crate::core::reply::{self, Reason, Refusal, XML_CONTENT_TYPE};
use crate::ops::accesslog::{redact_query, AccessLog, Record};
use crate::ops::metrics::Metrics;

/// pingora replays a buffered body of at most this size through its proxy
/// path; larger (verified) bodies are forwarded by [`Gateway`] itself.
const PINGORA_REPLAY_LIMIT: usize = 64 * 1024;

/// How long an upstream that failed to connect is skipped while others are up.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Settings and limiter state swapped together on reload.
pub struct State {
    /// The configuration in force.
    pub settings: Arc<Settings>,
    /// Limiters built from it.
    pub limits: Arc<Limits>,
}

/// Passive upstream health: an upstream that failed is skipped for a while.
#[derive(Default)]
pub struct Health {
    down_until: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Health {
    /// True unless the upstream failed within [`DOWN_FOR`].
    pub fn is_up(&self, a: &SocketAddr) -> bool {
        match self.down_until.lock() {
            Ok(m) => m.get(a).is_none_or(|t| *t <= Instant::now()),
            Err(_) => true,
        }
    }
    /// Records whether `a` answered its last attempt.
    pub fn set(&self, a: SocketAddr, up: bool) {
        if let Ok(mut m) = self.down_until.lock() {
            if up {
                m.remove(&a);
            } else {
                m.insert(a, Instant::now() + DOWN_FOR);
            }
        }
    }
}

/// State shared by every request.
pub struct Shared {
    /// Settings + limits, swapped on reload.
    pub state: ArcSwap<State>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Access log.
    pub access_log: AccessLog,
    /// Upstream health.
    pub health: Health,
    rr: AtomicUsize,
    connector: Connector,
}

impl Shared {
    /// Creates shared state for `settings`.
    pub fn new(settings: Arc<Settings>, metrics: Arc<Metrics>, access_log: AccessLog) -> Shared {
        let limits = Limits::new(&settings.limits)
            .with_observer(Arc::new(crate::ops::metrics::LimitMetrics(metrics.clone())));
        register_settings(&metrics, &settings);
        Shared {
            state: ArcSwap::from_pointee(State {
                settings,
                limits: Arc::new(limits),
            }),
            metrics,
            access_log,
            health: Health::default(),
            rr: AtomicUsize::new(0),
            connector: Connector::new(None),
        }
    }

    /// Installs new settings, keeping limiter buckets whose quotas did not change.
    pub fn reload(&self, settings: Arc<Settings>) {
        let old = self.state.load();
        let limits = old.limits.reconfigure(&settings.limits);
        register_settings(&self.metrics, &settings);
        self.state.store(Arc::new(State {
            settings,
            limits: Arc::new(limits),
        }));
    }

    /// Records an upstream's health, in the skip list and the `upstream_up` gauge.
    pub fn set_upstream_health(&self, addr: SocketAddr, up: bool) {
        self.health.set(addr, up);
        self.metrics
            .upstream_up
            .with_label_values(&[&addr.to_string()])
            .set(i64::from(up));
    }

    /// True when at least one configured upstream is considered up.
    pub fn any_upstream_up(&self) -> bool {
        let st = self.state.load();
        st.settings
            .upstream
            .servers
            .iter()
            .any(|a| self.health.is_up(a))
    }
}

/// Pre-creates the series of a configuration's upstreams and methods and
/// stamps its load time.
fn register_settings(metrics: &Metrics, settings: &Settings) {
    metrics.register_upstreams(&settings.upstream.servers);
    metrics.register_methods(settings.catalog.methods().iter().map(|m| m.name.as_str()));
    metrics.config_loaded.set(unix_now());
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Per-request context.
pub struct Ctx {
    start: Instant,
    state: Option<Arc<State>>,
    ip: Option<IpAddr>,
    info: CallInfo,
    refused: Option<Reason>,
    forward: Option<Forward>,
    upstream: Option<SocketAddr>,
    tried: Vec<SocketAddr>,
    upstream_sent: Option<Instant>,
    req_bytes: usize,
    counted: bool,
}

/// The gateway service.
pub struct Gateway {
    /// Shared state.
    pub shared: Arc<Shared>,
}

fn client_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| match a.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn head_of(session: &Session, ip: IpAddr) -> Head<'_> {
    let req = session.req_header();
    Head {
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query(),
        content_type: req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        client_ip: ip,
    }
}

enum BodyError {
    TooLarge,
    Io(Box<Error>),
}

fn timeout_kind(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

impl Gateway {
    /// Answers with a refusal; returns the status sent.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<u16> {
        ctx.refused = Some(r.reason);
        let mode = ctx
            .state
            .as_ref()
            .map(|s| s.settings.reply_mode)
            .unwrap_or(crate::config::ReplyMode::Mor);
        write_refusal(session, mode, ctx.info.envelope, &r).await?;
        Ok(r.reason.status(mode))
    }

    async fn read_body(
        &self,
        session: &mut Session,
        max: usize,
    ) -> std::result::Result<Bytes, BodyError> {
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(BodyError::TooLarge);
        }
        let ds = session.as_downstream_mut();
        if ds.is_body_empty() {
            return Ok(Bytes::new());
        }
        let expects_continue = ds
            .req_header()
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            ds.write_continue_response().await.map_err(BodyError::Io)?;
        }
        // pingora keeps this copy and replays it upstream after the verdict.
        ds.enable_retry_buffering();
        let mut buf = BytesMut::new();
        while let Some(chunk) = ds.read_request_body().await.map_err(BodyError::Io)? {
            if buf.len() + chunk.len() > max {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    fn pick_peer(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let st = ctx
            .state
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no state"))?;
        let u = &st.settings.upstream;
        let n = u.servers.len();
        let start = self.shared.rr.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n).map(|i| u.servers[(start + i) % n]);
        let addr = candidates
            .clone()
            .find(|a| !ctx.tried.contains(a) && self.shared.health.is_up(a))
            .or_else(|| candidates.clone().find(|a| !ctx.tried.contains(a)))
            .unwrap_or(u.servers[start % n]);
        ctx.upstream = Some(addr);
        ctx.tried.push(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.write_timeout = Some(u.write_timeout);
        peer.options.idle_timeout = Some(u.idle_timeout);
        Ok(Box::new(peer))
    }

    fn rewrite(&self, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
        if let Some(f) = &ctx.forward {
            let uri: http::Uri = f
                .path_and_query
                .parse()
                .map_err(|e| Error::because(ErrorType::InternalError, "forward uri", e))?;
            req.set_uri(uri);
        }
        let ip = ctx.ip.map(|i| i.to_string()).unwrap_or_default();
        let append = ctx.state.as_ref().is_some_and(|s| {
            s.settings.upstream.x_forwarded_for == crate::config::ForwardedFor::Append
        });
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
        // The gateway already answered any 100-continue itself.
        req.remove_header(&header::EXPECT);
        Ok(())
    }

    /// Forwards a verified request whose body is larger than pingora replays.
    async fn forward_buffered(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        body: Bytes,
    ) -> Result<()> {
        let peer = self.pick_peer(ctx)?;
        let mut req = session.req_header().clone();
        self.rewrite(&mut req, ctx)?;
        let (mut up, _reused) = self.shared.connector.get_http_session(&*peer).await?;
        up.set_read_timeout(peer.options.read_timeout);
        up.set_write_timeout(peer.options.write_timeout);
        ctx.upstream_sent = Some(Instant::now());
        up.write_request_header(Box::new(req)).await?;
        up.write_request_body(body, true).await?;
        up.finish_request_body().await?;
        up.read_response_header().await?;
        self.mark_upstream_ok(ctx);
        let resp = up
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no upstream header"))?;
        session.write_response_header(Box::new(resp), false).await?;
        while let Some(chunk) = up.read_response_body().await? {
            session.write_response_body(Some(chunk), false).await?;
        }
        session.write_response_body(None, true).await?;
        let idle = peer.options.idle_timeout;
        self.shared
            .connector
            .release_http_session(up, &*peer, idle)
            .await;
        Ok(())
    }

    fn mark_upstream_ok(&self, ctx: &Ctx) {
        if let Some(u) = ctx.upstream {
            self.shared.set_upstream_health(u, true);
        }
        if let Some(t) = ctx.upstream_sent {
            self.shared
                .metrics
                .upstream_duration
                .with_label_values(&[ctx.info.label()])
                .observe(t.elapsed().as_secs_f64());
        }
    }

    fn count_upstream_error(&self, ctx: &Ctx, e: &Error, connect: bool) {
        if let Some(u) = ctx.upstream {
            let kind = if timeout_kind(e) {
                "timeout"
            } else if connect {
                "connect"
            } else {
                "other"
            };
            self.shared
                .metrics
                .upstream_errors
                .with_label_values(&[&u.to_string(), kind])
                .inc();
            if connect {
                self.shared.set_upstream_health(u, false);
            }
        }
    }
}

/// Writes a refusal in MOR's XML shape.
pub async fn write_refusal(
    session: &mut Session,
    mode: crate::config::ReplyMode,
    envelope: crate::core::catalog::Envelope,
    r: &Refusal,
) -> Result<()> {
    let out = reply::render(r, envelope, mode);
    let mut h = ResponseHeader::build(out.status, Some(4))?;
    h.insert_header(header::CONTENT_TYPE, XML_CONTENT_TYPE)?;
    h.insert_header(header::CONTENT_LENGTH, out.body.len().to_string())?;
    if let Some(s) = out.retry_after {
        h.insert_header(header::RETRY_AFTER, s.to_string())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(out.body)), true)
        .await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules: MOR's answers pass byte for byte (pingora's
    /// default adds a disabled compression module that still runs per request).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            state: None,
            ip: None,
            info: CallInfo::default(),
            refused: None,
            forward: None,
            upstream: None,
            tried: Vec::new(),
            upstream_sent: None,
            req_bytes: 0,
            counted: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.shared.metrics.in_flight.inc();
        ctx.counted = true;
        let st = self.shared.state.load_full();
        ctx.state = Some(st.clone());
        let ip = client_ip(session);
        ctx.ip = Some(ip);
        let s = &st.settings;
        let admitted = decision::admit(s, &*st.limits, &head_of(session, ip));
        let admitted = match admitted {
            Ok(a) => a,
            Err(rejected) => {
                let (r, info) = *rejected;
                ctx.info = info;
                self.refuse(session, ctx, r).await?;
                return Ok(true);
            }
        };
        let body = match self.read_body(session, s.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                session.set_keepalive(None);
                self.refuse(session, ctx, Refusal::new(Reason::BodyTooLarge))
                    .await?;
                return Ok(true);
            }
            Err(BodyError::Io(e)) => return Err(e),
        };
        ctx.req_bytes = body.len();
        let verdict = decision::finish(s, &*st.limits, &head_of(session, ip), admitted, &body);
        match verdict {
            Verdict::Refuse(r, info) => {
                ctx.info = info;
                self.refuse(session, ctx, r).await?;
                Ok(true)
            }
            Verdict::Forward(f, info) => {
                if let Some(a) = &info.alias {
                    self.shared
                        .metrics
                        .alias_rewrites
                        .with_label_values(&[a])
                        .inc();
                }
                ctx.info = info;
                ctx.forward = Some(f);
                if body.len() > PINGORA_REPLAY_LIMIT {
                    self.forward_buffered(session, ctx, body).await?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.pick_peer(ctx)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.rewrite(upstream_request, ctx)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.mark_upstream_ok(ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let headers_on = ctx
            .state
            .as_ref()
            .is_some_and(|s| s.settings.limits.headers);
        if let (true, Some(a)) = (headers_on, ctx.forward.as_ref().and_then(|f| f.allowance)) {
            resp.insert_header("RateLimit-Limit", a.limit.to_string())?;
            resp.insert_header("RateLimit-Remaining", a.remaining.to_string())?;
            resp.insert_header("RateLimit-Reset", reply::ceil_secs(a.reset).to_string())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.count_upstream_error(ctx, &e, true);
        let more = ctx.state.as_ref().is_some_and(|s| {
            s.settings
                .upstream
                .servers
                .iter()
                .any(|a| !ctx.tried.contains(a))
        });
        // Nothing was sent yet: trying another upstream is safe for any method.
        e.set_retry(more);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.esource() {
            ErrorSource::Downstream => 0,
            _ if session.response_written().is_some() => 0,
            src => {
                let reason = if timeout_kind(e) {
                    Reason::UpstreamTimeout
                } else {
                    Reason::UpstreamError
                };
                if *src == ErrorSource::Upstream && ctx.upstream_sent.is_some() {
                    self.count_upstream_error(ctx, e, false);
                }
                self.refuse(session, ctx, Refusal::new(reason))
                    .await
                    .unwrap_or(0)
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if !ctx.counted {
            return;
        }
        let m = &self.shared.metrics;
        m.in_flight.dec();
        let elapsed = ctx.start.elapsed();
        let label = ctx.info.label();
        let req = session.req_header();
        let http_method = req.method.as_str();
        m.observe_request(label, http_method, ctx.refused, elapsed.as_secs_f64());
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
        let signer = ctx.forward.as_ref().map(|f| match &f.signer {
            Signer::Admin => "admin".to_string(),
            Signer::Reseller(n) => format!("reseller:{n}"),
            Signer::Unchecked => "unchecked".to_string(),
            Signer::PassThrough => "pass_through".to_string(),
        });
        log.write(&Record {
            ts: unix_now(),
            client_ip: ctx.ip.map(|i| i.to_string()).unwrap_or_default(),
            http_method,
            path: req.uri.path(),
            query: req.uri.query().map(redact_query),
            api_method: ctx.info.method.as_deref(),
            alias: ctx.info.alias.as_deref(),
            user: ctx.info.user.as_deref(),
            verdict,
            reason: (!reason.is_empty()).then_some(reason),
            status,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: ctx.upstream.map(|u| u.to_string()),
            signer,
        });
    }
}
