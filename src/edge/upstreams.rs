//! The MOR servers, on pingora-load-balancing: round robin over the servers
//! that are up, with a per-request failover list.
//!
//! A server is up when it passes its probes and is not ejected:
//! - the probe (`upstream.health_check`, run by the housekeeping task every
//!   `health_check_interval`) is an HTTP request whose answer must have the
//!   configured status and body text (or a TCP connect); `health_check_fails`
//!   failed probes in a row take a server out, `health_check_passes` passed
//!   ones bring it back;
//! - passive ejection: `eject_after_failures` real calls in a row that MOR
//!   answered 5xx, that timed out or whose connect failed take a server out
//!   at once, until it passes `health_check_passes` probes (Envoy's outlier
//!   detection; nginx's max_fails). The last server in rotation is never
//!   ejected: a flood of calls that make MOR fail must not leave the gateway
//!   with no server at all.
//!
//! Every change is one log line naming the server and why, and is written
//! to the `upstream_up` gauge; ejections are counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::{Probe as ProbeSettings, Upstream};
use crate::ops::logging::LB_FLIP_PREFIX;
use crate::ops::metrics::Metrics;

/// The `User-Agent` of a probe (MOR's access log tells them apart).
pub const PROBE_AGENT: &str = "mor-gateway health check";

/// The most of a probe's answer read when looking for the expected text.
const PROBE_BODY_MAX: usize = 64 * 1024;

/// One server's passive-ejection state.
#[derive(Default)]
struct Outlier {
    /// Failed calls in a row.
    fails: AtomicU32,
    /// Out of rotation until it passes its probes.
    ejected: AtomicBool,
    /// Probes passed in a row since the ejection.
    passes: AtomicU32,
}

/// The passive-ejection state of every server, and what the probes found.
struct Health {
    servers: HashMap<SocketAddr, Outlier>,
    /// The probes' verdict (true: passing), as pingora-load-balancing flips it.
    probed_up: HashMap<SocketAddr, AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Health {
    fn ejected(&self, addr: &SocketAddr) -> bool {
        self.servers
            .get(addr)
            .is_some_and(|o| o.ejected.load(Ordering::Relaxed))
    }

    /// In rotation: passing its probes and not ejected.
    fn in_rotation(&self, addr: &SocketAddr) -> bool {
        !self.ejected(addr)
            && self
                .probed_up
                .get(addr)
                .is_some_and(|u| u.load(Ordering::Relaxed))
    }

    /// Writes `upstream_up` for `addr`.
    fn publish(&self, addr: &SocketAddr) {
        self.metrics
            .upstream_up
            .with_label_values(&[&addr.to_string()])
            .set(i64::from(self.in_rotation(addr)));
    }
}

/// Records the probes' flips and writes them to `mor_gateway_upstream_up`.
struct FlipObserver(Arc<Health>);

#[async_trait]
impl HealthObserve for FlipObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if let Some(a) = target.addr.as_inet() {
            if let Some(u) = self.0.probed_up.get(a) {
                u.store(healthy, Ordering::Relaxed);
            }
            self.0.publish(a);
        }
    }
}

/// The pingora peer for MOR server `addr`: TLS verified against the
/// configured CA (or the system store) by its name, the upstream timeouts.
pub fn peer_for(
    addr: std::net::SocketAddr,
    u: &crate::config::Upstream,
) -> pingora::prelude::HttpPeer {
    let sni = u.tls_servers.get(&addr);
    let mut peer =
        pingora::prelude::HttpPeer::new(addr, sni.is_some(), sni.cloned().unwrap_or_default());
    if sni.is_some() {
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.ca = u.ca.as_ref().map(|c| c.certs.clone());
    }
    peer.options.connection_timeout = Some(u.connect_timeout);
    peer.options.read_timeout = Some(u.read_timeout);
    peer.options.write_timeout = Some(u.write_timeout);
    peer.options.idle_timeout = Some(u.idle_timeout);
    peer
}

/// True when `e` is the gateway's own lack of resources to open a socket
/// (file descriptors, local ports, buffers), not a fault of the server it
/// was connecting to.
pub fn local_exhaustion(e: &pingora::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL (Linux numbers).
    const LOCAL: [i32; 5] = [24, 23, 105, 12, 99];
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|code| LOCAL.contains(&code))
}

/// How a probe asks.
#[allow(
    clippy::large_enum_variant,
    reason = "one per upstream set, built on load and never moved after"
)]
enum Ask {
    Tcp(Box<TcpHealthCheck>),
    Http {
        settings: ProbeSettings,
        connector: Connector,
        /// The peer of each server (its TLS name and verification, timeouts).
        peers: HashMap<SocketAddr, HttpPeer>,
    },
}

/// The probe of every server: asks ([`Ask`]), keeps each server's last
/// verdict when the gateway could not run the probe for its own lack of
/// resources ([`local_exhaustion`]: not MOR's fault), logs each flip as one
/// line, and brings an ejected server back once it passed its probes.
struct Probe {
    ask: Ask,
    /// Each server's last verdict and why it failed.
    last: Mutex<HashMap<SocketAddr, Result<(), String>>>,
    health: Arc<Health>,
    fails: usize,
    passes: usize,
    observer: FlipObserver,
}

/// One HTTP probe of `peer`: the request, then the status and (when asked)
/// the body text. The error says what was wrong in words.
async fn http_probe(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    status: http::StatusCode,
    body: Option<&str>,
) -> pingora::Result<()> {
    let fail = |why: String| Error::explain(ErrorType::CustomCode("probe", 0), why);
    let (mut s, _) = connector.get_http_session(peer).await?;
    s.write_request_header(Box::new(req)).await?;
    s.finish_request_body().await?;
    s.read_response_header().await?;
    let got = s
        .response_header()
        .map(|r| r.status)
        .ok_or_else(|| fail("no answer".into()))?;
    if got != status {
        return Err(fail(format!(
            "answered {}, expected {}",
            got.as_u16(),
            status.as_u16()
        )));
    }
    let Some(want) = body else {
        return Ok(());
    };
    let mut seen = Vec::new();
    while let Some(chunk) = s.read_response_body().await? {
        seen.extend_from_slice(&chunk);
        if seen.len() >= PROBE_BODY_MAX {
            break;
        }
    }
    if seen.windows(want.len()).any(|w| w == want.as_bytes()) {
        Ok(())
    } else {
        Err(fail(format!(
            "answered {} without \"{want}\" in its body",
            got.as_u16()
        )))
    }
}

/// A probe's failure in words: the probe's own reason, or pingora's error
/// kind and its cause.
fn words(e: &Error) -> String {
    match e.etype() {
        ErrorType::CustomCode("probe", _) => e
            .context
            .as_ref()
            .map_or_else(String::new, |c| c.as_str().to_string()),
        t => match e.root_cause().to_string() {
            c if c.is_empty() => t.as_str().to_string(),
            c => format!("{} ({c})", t.as_str()),
        },
    }
}

impl Probe {
    async fn ask(&self, addr: SocketAddr, target: &Backend) -> pingora::Result<()> {
        match &self.ask {
            Ask::Tcp(tcp) => tcp.check(target).await,
            Ask::Http {
                settings:
                    ProbeSettings::Http {
                        method,
                        path,
                        host,
                        status,
                        body,
                        timeout,
                    },
                connector,
                peers,
            } => {
                let peer = peers
                    .get(&addr)
                    .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown server"))?;
                let host = host
                    .clone()
                    .or_else(|| (!peer.sni.is_empty()).then(|| peer.sni.clone()))
                    .unwrap_or_else(|| addr.to_string());
                let mut req = RequestHeader::build(method.clone(), path.as_bytes(), Some(3))?;
                req.insert_header(http::header::HOST, host)?;
                req.insert_header(http::header::USER_AGENT, PROBE_AGENT)?;
                req.insert_header(http::header::CONNECTION, "close")?;
                let probe = http_probe(connector, peer, req, *status, body.as_deref());
                match tokio::time::timeout(*timeout, probe).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::explain(
                        ErrorType::CustomCode("probe", 0),
                        format!(
                            "no whole answer within {}",
                            humantime::format_duration(*timeout)
                        ),
                    )),
                }
            }
            Ask::Http { .. } => Err(Error::explain(
                ErrorType::InternalError,
                "not an HTTP probe",
            )),
        }
    }

    /// An ejected server that passed this probe: back after
    /// `health_check_passes` in a row.
    fn after_ejection(&self, addr: &SocketAddr, passed: bool) {
        let Some(o) = self.health.servers.get(addr) else {
            return;
        };
        if !o.ejected.load(Ordering::Relaxed) {
            return;
        }
        if !passed {
            o.passes.store(0, Ordering::Relaxed);
            return;
        }
        let n = o.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if n as usize >= self.passes {
            o.passes.store(0, Ordering::Relaxed);
            o.fails.store(0, Ordering::Relaxed);
            o.ejected.store(false, Ordering::Relaxed);
            self.health.publish(addr);
            if self.health.in_rotation(addr) {
                tracing::info!(
                    "MOR server {addr} is back in rotation: passed {n} probe(s) after its ejection"
                );
            }
        }
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Ok(());
        };
        let res = self.ask(addr, target).await;
        let verdict = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match res {
                Err(e) if local_exhaustion(&e) => {
                    tracing::debug!("probe of {addr} not run: {e}");
                    if last.get(&addr).is_none_or(Result::is_ok) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }
                res => {
                    last.insert(addr, res.as_ref().map(|_| ()).map_err(|e| words(e)));
                    res
                }
            }
        };
        self.after_ejection(&addr, verdict.is_ok());
        verdict
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.observer.observe(target, healthy).await;
        let Some(addr) = target.addr.as_inet() else {
            return;
        };
        let why = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned();
        if healthy {
            tracing::info!(
                "MOR server {addr} is up: passed {} probe(s) in a row{}",
                self.passes,
                if self.health.ejected(addr) {
                    " (still ejected)"
                } else {
                    ""
                }
            );
        } else {
            let why = why.and_then(Result::err).unwrap_or_default();
            tracing::warn!(
                "MOR server {addr} is down: failed {} probe(s) in a row, last: {why}",
                self.fails
            );
        }
    }

    /// The name in pingora-load-balancing's own flip line, which
    /// [`crate::ops::logging`] drops (the line above says it in words).
    fn backend_summary(&self, target: &Backend) -> String {
        format!("{LB_FLIP_PREFIX}{}", target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.passes
        } else {
            self.fails
        }
    }
}

/// How a real call to a server ended, for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// MOR answered with this status.
    Answered(u16),
    /// The connect failed (not for the gateway's own lack of sockets).
    ConnectFailed,
    /// A connect, read or write timed out.
    TimedOut,
}

impl Call {
    /// True for the outcomes that count towards an ejection.
    fn failed(self) -> bool {
        match self {
            Call::Answered(s) => s >= 500,
            Call::ConnectFailed | Call::TimedOut => true,
        }
    }
}

/// The upstream set of one configuration.
pub struct Upstreams {
    lb: LoadBalancer<RoundRobin>,
    health: Arc<Health>,
    /// What they were built from (a reload with the same keeps them).
    pub settings: Upstream,
}

impl Upstreams {
    /// Builds the set (all servers start up) with its probe.
    pub fn new(settings: &Upstream, metrics: Arc<Metrics>) -> std::io::Result<Upstreams> {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(settings.servers.iter().copied())?;
        let health = Arc::new(Health {
            servers: settings
                .servers
                .iter()
                .map(|a| (*a, Outlier::default()))
                .collect(),
            probed_up: settings
                .servers
                .iter()
                .map(|a| (*a, AtomicBool::new(true)))
                .collect(),
            metrics: metrics.clone(),
        });
        let ask = match &settings.probe {
            ProbeSettings::Tcp => {
                let mut hc = TcpHealthCheck::new();
                hc.peer_template.options.connection_timeout = Some(settings.connect_timeout);
                Ask::Tcp(hc)
            }
            p @ ProbeSettings::Http { timeout, .. } => Ask::Http {
                settings: p.clone(),
                connector: Connector::new(None),
                peers: settings
                    .servers
                    .iter()
                    .map(|a| {
                        let mut peer = peer_for(*a, settings);
                        peer.options.read_timeout = Some(*timeout);
                        peer.options.write_timeout = Some(*timeout);
                        (*a, peer)
                    })
                    .collect(),
            },
        };
        lb.set_health_check(Box::new(Probe {
            ask,
            last: Mutex::new(HashMap::new()),
            health: health.clone(),
            fails: settings.health_check_fails,
            passes: settings.health_check_passes,
            observer: FlipObserver(health.clone()),
        }));
        metrics.register_upstreams(&settings.servers);
        Ok(Upstreams {
            lb,
            health,
            settings: settings.clone(),
        })
    }

    /// The next server to try: round robin among the servers in rotation
    /// not yet tried by this request, else any not yet tried (the probe may
    /// lag).
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.settings.servers.len().max(1) * 2;
        let untried = |b: &Backend| b.addr.as_inet().is_some_and(|a| !tried.contains(a));
        let ejected = |b: &Backend| b.addr.as_inet().is_some_and(|a| self.health.ejected(a));
        self.lb
            .select_with(b"", n, |b, healthy| healthy && !ejected(b) && untried(b))
            .or_else(|| self.lb.select_with(b"", n, |b, _| untried(b)))
            .and_then(|b| b.addr.as_inet().copied())
    }

    /// True while some server is not yet tried by this request.
    pub fn more_than(&self, tried: &[SocketAddr]) -> bool {
        self.settings.servers.iter().any(|a| !tried.contains(a))
    }

    /// True when at least one server is in rotation (passing its probes,
    /// not ejected).
    pub fn any_up(&self) -> bool {
        self.settings
            .servers
            .iter()
            .any(|a| self.health.in_rotation(a))
    }

    /// Passive ejection: how a real call to `addr` ended. The
    /// `eject_after_failures`-th failure in a row ejects the server, unless
    /// it is the last one in rotation.
    pub fn called(&self, addr: SocketAddr, call: Call) {
        let limit = self.settings.eject_after_failures;
        let Some(o) = self.health.servers.get(&addr).filter(|_| limit > 0) else {
            return;
        };
        if !call.failed() {
            o.fails.store(0, Ordering::Relaxed);
            return;
        }
        let n = o.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < limit || o.ejected.load(Ordering::Relaxed) {
            return;
        }
        let others = self
            .settings
            .servers
            .iter()
            .any(|a| *a != addr && self.health.in_rotation(a));
        if !others {
            if n == limit {
                tracing::warn!("MOR server {addr} failed {n} calls in a row ({}), not ejected: it is the last server in rotation", call_words(call));
            }
            return;
        }
        if o.ejected.swap(true, Ordering::Relaxed) {
            return;
        }
        o.passes.store(0, Ordering::Relaxed);
        self.health.publish(&addr);
        self.health
            .metrics
            .upstream_ejections
            .with_label_values(&[&addr.to_string()])
            .inc();
        tracing::warn!(
            "MOR server {addr} ejected: failed {n} calls in a row, last: {}; back after {} passed probe(s)",
            call_words(call),
            self.settings.health_check_passes
        );
    }

    /// One probe pass over every server, in parallel.
    pub async fn check(&self) {
        self.lb.backends().run_health_check(true).await;
    }
}

fn call_words(c: Call) -> String {
    match c {
        Call::Answered(s) => format!("answered {s}"),
        Call::ConnectFailed => "connect failed".into(),
        Call::TimedOut => "timed out".into(),
    }
}
