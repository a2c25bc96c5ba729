//! The MOR servers, on pingora-load-balancing: round robin over the servers
//! its TCP health check finds up, with a per-request failover list. The
//! check runs from the housekeeping task every `health_check_interval`, and
//! every flip of a server's health is written to the `upstream_up` gauge.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
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
        lb.set_health_check(hc);
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
