//! The pingora `ProxyHttp` glue: reads the request (headers, then the whole
//! body up to the limit), asks the decision core, then either answers at the
//! edge or forwards to a MOR upstream through [`super::forward`], one path for
//! every body size. Nothing reaches MOR before the verdict.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::connectors::http::Connector;
use pingora::connectors::TransportConnector;
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::{CertKey, Settings};
use crate::core::catalog::Envelope;
use crate::core::decision::{self, CallInfo, Checked, Forward, Head, Rejected, Signer, Verdict};
use crate::core::framing;
use crate::core::limits::{LimitTrace, Limits};
use crate::core::reply::{self, Reason, Refusal, ReplyMode, XML_CONTENT_TYPE};
use crate::core::route::redact_path;
use crate::edge::body::{self, BodyError, Budget, Reservation};
use crate::edge::mirror::Mirror;
use crate::edge::shared_limits::{DecidedIp, SharedLimits};
use crate::edge::upstreams::Upstreams;
use crate::ops::accesslog::{micros, redact_query_also, AccessLog, Record, Timestamp};
use crate::ops::metrics::Metrics;

/// Settings, limiter state and upstreams, swapped together on reload.
pub struct State {
    /// The configuration in force.
    pub settings: Arc<Settings>,
    /// Limiters built from it.
    pub limits: Arc<Limits>,
    /// Its MOR servers.
    pub upstreams: Arc<Upstreams>,
    /// The limits shared through Redis, when `[limits.shared]` is on.
    pub shared_limits: Option<Arc<SharedLimits>>,
}

/// State shared by every request.
pub struct Shared {
    /// Settings + limits + upstreams, swapped on reload.
    pub state: ArcSwap<State>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Access log.
    pub access_log: AccessLog,
    pub(crate) connector: Connector,
    /// New upstream connections past the pool: the one retry of a GET or
    /// HEAD whose kept-alive connection MOR had closed (`edge::forward`).
    pub(crate) fresh: TransportConnector,
    /// Bytes of request bodies buffered before their verdicts, now.
    budget: Arc<Budget>,
    /// The HTTPS listeners' certificate, swapped on reload.
    pub(crate) certs: Option<Arc<ArcSwap<CertKey>>>,
    /// MOR's directory in force (static config or a database snapshot).
    pub mirror: Mirror,
}

impl Shared {
    /// Creates shared state for `settings`.
    pub fn new(
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
    ) -> std::io::Result<Shared> {
        let limits = Limits::new(&settings.limits);
        let upstreams = Upstreams::new(&settings.upstream, metrics.clone())?;
        let settings_certs = settings
            .tls
            .as_ref()
            .map(|t| Arc::new(ArcSwap::new(t.material.clone())));
        register_settings(&metrics, &settings);
        let shared_limits = shared_limits(&settings, &metrics);
        let mirror = Mirror::new(&settings);
        metrics.mirror_directory(settings.mor_db.as_ref().map(|d| d.refresh_interval));
        Ok(Shared {
            mirror,
            state: ArcSwap::from_pointee(State {
                settings,
                limits: Arc::new(limits),
                upstreams: Arc::new(upstreams),
                shared_limits,
            }),
            metrics,
            access_log,
            connector: Connector::new(None),
            fresh: TransportConnector::new(None),
            budget: Arc::new(Budget::default()),
            certs: settings_certs,
        })
    }

    /// Installs new settings, keeping limiter buckets whose quotas did not
    /// change and the upstream set (with its health) when it did not change.
    /// The access log is reopened with the new mode and path; if it cannot
    /// be opened, nothing changes.
    pub fn reload(&self, settings: Arc<Settings>) -> std::io::Result<()> {
        let old = self.state.load();
        let upstreams = if old.upstreams.settings == settings.upstream {
            old.upstreams.clone()
        } else {
            Arc::new(Upstreams::new(&settings.upstream, self.metrics.clone())?)
        };
        self.access_log
            .configure(settings.access_log, settings.access_log_path.as_deref())
            .map_err(|e| std::io::Error::new(e.kind(), format!("access log: {e}")))?;
        let limits = old.limits.reconfigure(&settings.limits);
        if let (Some(swap), Some(t)) = (&self.certs, &settings.tls) {
            swap.store(t.material.clone());
        }
        register_settings(&self.metrics, &settings);
        // A new Redis client each time: the address or password may have changed.
        let shared_limits = shared_limits(&settings, &self.metrics);
        self.mirror.configure(&settings, &self.metrics);
        self.state.store(Arc::new(State {
            settings,
            limits: Arc::new(limits),
            upstreams,
            shared_limits,
        }));
        Ok(())
    }
}

/// The Redis side of the limits, when the settings turn it on.
fn shared_limits(settings: &Settings, metrics: &Arc<Metrics>) -> Option<Arc<SharedLimits>> {
    metrics.share_limits(settings.shared_limits.is_some());
    settings
        .shared_limits
        .clone()
        .map(|cfg| Arc::new(SharedLimits::new(cfg, metrics.clone())))
}

/// Pre-creates the series of a configuration's methods and stamps its load time.
fn register_settings(metrics: &Metrics, settings: &Settings) {
    metrics.register_methods(
        settings
            .policy
            .catalog
            .methods()
            .iter()
            .map(|m| m.name.as_str()),
    );
    metrics.config_loaded.set(unix_now());
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A path as logs show it, and whether its action's id is a secret (then
/// its `id` query values are redacted too).
fn shown_path<'a>(shared: &Shared, path: &'a str) -> (std::borrow::Cow<'a, str>, bool) {
    let st = shared.state.load();
    let p = &st.settings.policy;
    let shown = redact_path(path, &p.prefix, &p.catalog);
    let pre = p.prefix.split('/').filter(|s| !s.is_empty()).count();
    let secret = path
        .split('/')
        .filter(|s| !s.is_empty())
        .nth(pre)
        .is_some_and(|a| crate::core::route::secret_action(a, &p.catalog));
    (shown, secret)
}

/// Per-request context.
pub struct Ctx {
    start: Instant,
    pub(crate) state: Option<Arc<State>>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) info: CallInfo,
    pub(crate) refused: Option<Reason>,
    pub(crate) forward: Option<Forward>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) tried: Vec<SocketAddr>,
    req_bytes: usize,
    counted: bool,
    reserved: Option<Reservation>,
}

/// The gateway service.
pub struct Gateway {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// The client's address: the peer (the PROXY protocol's client, when the
/// connection began with a PROXY header), or behind a trusted balancer the
/// right-most untrusted `X-Forwarded-For` address ([`crate::core::client`]).
fn client_ip(session: &Session, settings: &Settings) -> IpAddr {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let xff = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes());
    crate::core::client::address(
        peer,
        xff,
        &settings.client.trusted_proxies,
        super::connections::proxy_protocol_used(),
    )
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

/// What a failed body read was: the client's fault in every case.
fn body_fault(e: &Error) -> Reason {
    match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError => Reason::ClientClosed,
        ErrorType::ReadTimedout => Reason::ClientTimeout,
        _ => Reason::BadFraming,
    }
}

pub(crate) fn timeout_kind(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

impl Gateway {
    /// Answers with a refusal in the call's envelope; returns the status sent.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<u16> {
        ctx.refused = Some(r.reason);
        let mode = ctx
            .state
            .as_ref()
            .map_or(ReplyMode::Mor, |s| s.settings.reply_mode);
        write_refusal(session, mode, ctx.info.envelope, &r).await?;
        Ok(r.reason.status(mode))
    }
}

/// Writes a refusal in MOR's XML shape.
pub async fn write_refusal(
    session: &mut Session,
    mode: ReplyMode,
    envelope: Envelope,
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
            req_bytes: 0,
            counted: false,
            reserved: None,
        }
    }

    /// The header is complete: its deadline and size cap no longer apply
    /// ([`super::connections`]).
    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        super::connections::header_complete();
        Ok(())
    }

    /// The whole request is handled here: refused, or forwarded by
    /// [`super::forward::forward`]; pingora's own proxy phases never run.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.shared.metrics.in_flight.inc();
        ctx.counted = true;
        // Pipelined requests are answered one after the other, in order
        // (pingora's default drops them with the connection).
        session.as_downstream_mut().set_pipelining_enabled(true);
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
        if ds.get_keepalive().is_some() {
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
        let framed = if super::connections::request_target_bad() {
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
        let admitted = match &st.shared_limits {
            Some(sh) if sh.per_ip() => {
                let mut trace = LimitTrace::default();
                let answer = sh.check_ip(ip, &st.limits, &mut trace).await;
                decision::admit(
                    &s.policy,
                    &dir,
                    &DecidedIp(answer, trace),
                    &head_of(session, ip),
                )
            }
            _ => decision::admit(&s.policy, &dir, &*st.limits, &head_of(session, ip)),
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
                let busy = |reason| {
                    let mut r = Refusal::new(reason);
                    r.retry_after = Some(std::time::Duration::from_secs(1));
                    r
                };
                let r = match fault {
                    BodyError::TooLarge => Refusal::new(Reason::BodyTooLarge),
                    BodyError::Overloaded => busy(Reason::Overloaded),
                    BodyError::AddressOverloaded => busy(Reason::AddressOverloaded),
                    BodyError::TooSlow => Refusal::new(Reason::BodyTooSlow),
                    BodyError::Io(mut e) => match body_fault(&e) {
                        Reason::ClientClosed => {
                            // Nobody to answer: the connection is dropped.
                            ctx.refused = Some(Reason::ClientClosed);
                            e.as_down();
                            return Err(e);
                        }
                        reason => Refusal::with(reason, "the request body could not be read"),
                    },
                };
                self.refuse(session, ctx, r).await?;
                return Ok(true);
            }
        };
        ctx.req_bytes = body.len();
        let verdict =
            match decision::verify(&s.policy, &dir, &head_of(session, ip), admitted, &body) {
                Checked::Done(v) => v,
                Checked::Pending(p) => match &st.shared_limits {
                    Some(sh) => sh.settle(p, &st.limits).await,
                    None => p.settle(&*st.limits),
                },
            };
        match verdict {
            Verdict::Refuse(r, info) => {
                ctx.info = info;
                self.refuse(session, ctx, r).await?;
            }
            Verdict::Forward(f, info) => {
                ctx.info = info;
                ctx.forward = Some(f);
                super::forward::forward(&self.shared, session, ctx, body).await?;
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
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        let (path, id_secret) = shown_path(&self.shared, req.uri.path());
        match req.uri.query() {
            Some(q) => format!("{} {path}?{}", req.method, redact_query_also(q, id_secret)),
            None => format!("{} {path}", req.method),
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
        let code = match e.esource() {
            ErrorSource::Downstream => 0,
            _ if session.response_written().is_some() => 0,
            _ if super::upstreams::local_exhaustion(e) => {
                let mut r = Refusal::new(Reason::NoSocket);
                r.retry_after = Some(std::time::Duration::from_secs(1));
                self.refuse(session, ctx, r).await.unwrap_or(0)
            }
            _ => {
                let reason = if timeout_kind(e) {
                    Reason::UpstreamTimeout
                } else {
                    Reason::UpstreamError
                };
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
        });
    }
}
