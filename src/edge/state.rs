//! The gateway's runtime state: the settings in force with the limiters and
//! upstreams built from them (swapped whole on reload), and what lives
//! across reloads (metrics, access log, body budget, certificates, MOR's
//! directory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::connectors::TransportConnector;

use crate::config::{CertKey, Settings};
use crate::core::request_id::IdSource;
use crate::edge::body::Budget;
use crate::edge::local_limits::Limits;
use crate::edge::mirror::Mirror;
use crate::edge::pool::Pool;
use crate::edge::shared_limits::SharedLimits;
use crate::edge::upstreams::Upstreams;
use crate::ops::accesslog::AccessLog;
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
    /// New connections to MOR (`edge::forward`).
    pub(crate) connector: TransportConnector,
    /// Kept-alive connections to MOR.
    pub(crate) pool: Pool,
    /// Bytes of request bodies buffered before their verdicts, now.
    pub(crate) budget: Arc<Budget>,
    /// The HTTPS listeners' certificate, swapped on reload.
    pub(crate) certs: Option<Arc<ArcSwap<CertKey>>>,
    /// MOR's directory in force (static config or a database snapshot).
    pub mirror: Mirror,
    /// Draining (SIGUSR2): calls are served, `/readyz` answers 503, and
    /// each connection closes after its next answer.
    draining: AtomicBool,
    /// Where request ids come from when a client sends none.
    pub(crate) request_ids: IdSource,
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
        // The pool size is read once: `upstream.keepalive_pool_size` takes
        // effect on restart.
        let pool = Pool::new(settings.upstream.keepalive_pool_size);
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
            connector: TransportConnector::new(None),
            pool,
            budget: Arc::new(Budget::default()),
            certs: settings_certs,
            draining: AtomicBool::new(false),
            request_ids: IdSource::default(),
        })
    }

    /// True while the gateway drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or ends draining; returns the new state.
    pub fn toggle_drain(&self) -> bool {
        let now = !self.draining.fetch_xor(true, Ordering::Relaxed);
        self.metrics.draining.set(i64::from(now));
        now
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
    metrics
        .config_loaded
        .set(crate::ops::metrics::unix_now().as_secs_f64());
    let expiry = settings
        .tls
        .as_ref()
        .and_then(|t| t.material.chain.first())
        .and_then(|leaf| not_after(leaf.not_after()));
    metrics.config_in_force(&settings.digest, expiry);
}

/// An ASN.1 time as a Unix time.
fn not_after(t: &openssl::asn1::Asn1TimeRef) -> Option<f64> {
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
    let d = now.diff(t).ok()?;
    Some(
        crate::ops::metrics::unix_now().as_secs_f64().floor()
            + f64::from(d.days) * 86400.0
            + f64::from(d.secs),
    )
}
