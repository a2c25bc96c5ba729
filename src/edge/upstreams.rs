//! The MOR servers, on pingora-load-balancing: round robin over the servers
//! its TCP health check finds up, with a per-request failover list. The
//! check runs from the housekeeping task every `health_check_interval`, and
//! every flip of a server's health is written to the `upstream_up` gauge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};

use crate::config::Upstream;
use crate::ops::metrics::Metrics;

/// Writes health flips to `mor_gateway_upstream_up`.
struct GaugeObserver(Arc<Metrics>);

#[async_trait]
impl HealthObserve for GaugeObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if let Some(a) = target.addr.as_inet() {
            self.0
                .upstream_up
                .with_label_values(&[&a.to_string()])
                .set(i64::from(healthy));
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

/// pingora's TCP health check, except that a check the gateway could not
/// run for its own lack of resources ([`local_exhaustion`]) keeps the
/// server's last verdict instead of marking it down (which would page for
/// MOR when the gateway is at fault).
struct Probe {
    tcp: TcpHealthCheck,
    last: Mutex<HashMap<String, bool>>,
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let key = format!("{}", target.addr);
        let res = self.tcp.check(target).await;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Err(e) if local_exhaustion(&e) => {
                tracing::debug!("health check of {key} not run: {e}");
                if last.get(&key).copied().unwrap_or(true) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            res => {
                last.insert(key, res.is_ok());
                res
            }
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.tcp.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.tcp.health_threshold(success)
    }
}

/// The upstream set of one configuration.
pub struct Upstreams {
    lb: LoadBalancer<RoundRobin>,
    /// What they were built from (a reload with the same keeps them).
    pub settings: Upstream,
}

impl Upstreams {
    /// Builds the set (all servers start healthy) with its health check.
    pub fn new(settings: &Upstream, metrics: Arc<Metrics>) -> std::io::Result<Upstreams> {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(settings.servers.iter().copied())?;
        let mut hc = TcpHealthCheck::new();
        hc.peer_template.options.connection_timeout = Some(settings.connect_timeout);
        hc.health_changed_callback = Some(Box::new(GaugeObserver(metrics.clone())));
        lb.set_health_check(Box::new(Probe {
            tcp: *hc,
            last: Mutex::new(HashMap::new()),
        }));
        metrics.register_upstreams(&settings.servers);
        Ok(Upstreams {
            lb,
            settings: settings.clone(),
        })
    }

    /// The next server to try: round robin among the healthy ones not yet
    /// tried by this request, else any not yet tried (the check may lag).
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.settings.servers.len().max(1) * 2;
        let untried = |b: &Backend| b.addr.as_inet().is_some_and(|a| !tried.contains(a));
        self.lb
            .select_with(b"", n, |b, healthy| healthy && untried(b))
            .or_else(|| self.lb.select_with(b"", n, |b, _| untried(b)))
            .and_then(|b| b.addr.as_inet().copied())
    }

    /// True while some server is not yet tried by this request.
    pub fn more_than(&self, tried: &[SocketAddr]) -> bool {
        self.settings.servers.iter().any(|a| !tried.contains(a))
    }

    /// True when the health check considers at least one server up.
    pub fn any_up(&self) -> bool {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .any(|b| self.lb.backends().ready(b))
    }

    /// One health-check pass over every server, in parallel.
    pub async fn check(&self) {
        self.lb.backends().run_health_check(true).await;
    }
}
