//! The gateway's background duties: SIGHUP reloads, SIGUSR1 access-log
//! reopens, limiter sweeps, upstream health checks and Redis probes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Settings;
use crate::edge::state::Shared;

/// SIGHUP reloads, SIGUSR1 access-log reopens (SIGUSR2 is ignored), limiter
/// sweeps and upstream health checks.
pub struct Housekeeping {
    pub(super) shared: Arc<Shared>,
    pub(super) config_path: Option<PathBuf>,
}

/// How often idle limiter keys are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Housekeeping {
    /// Re-reads the config file. Any failure, even a panic while building
    /// the new state, is a counted failed reload: the running configuration
    /// stays and housekeeping goes on.
    fn reload(&self) {
        let Some(path) = &self.config_path else {
            tracing::warn!("SIGHUP ignored: no config file to reload");
            return;
        };
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let new = Settings::load(path).map_err(|e| e.to_string())?;
            let old = self.shared.state.load();
            let later = old.settings.restart_only_changes(&new);
            if !later.is_empty() {
                tracing::warn!(
                    "{} changed in {}: they take effect on restart",
                    later.join(", "),
                    path.display()
                );
            }
            self.shared.reload(Arc::new(new)).map_err(|e| e.to_string())
        }));
        let m = &self.shared.metrics;
        let why = match attempt {
            Ok(Ok(())) => {
                m.reloads.with_label_values(&["ok"]).inc();
                m.last_reload_ok.set(1);
                tracing::info!("configuration reloaded from {}", path.display());
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => "building the new configuration panicked".to_string(),
        };
        m.reloads.with_label_values(&["failed"]).inc();
        m.last_reload_ok.set(0);
        tracing::error!("reload refused, keeping the running configuration: {why}");
    }
}

/// Watches `kind`; None (logged) when the handler cannot be installed.
fn watch(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot watch {name}: {e}");
            None
        }
    }
}

/// The next delivery of a watched signal (never, if not watched).
async fn next(s: &mut Option<Signal>) -> Option<()> {
    match s.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGUSR1: reopen the access log (after logrotate renamed it).
fn reopen_access_log(shared: &Shared) {
    match shared.access_log.reopen() {
        Ok(()) => tracing::info!("SIGUSR1: access log reopened"),
        Err(e) => {
            tracing::error!("SIGUSR1: cannot reopen the access log, keeping the old file: {e}")
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = watch(SignalKind::hangup(), "SIGHUP (reload)");
        let mut usr1 = watch(SignalKind::user_defined1(), "SIGUSR1 (access-log reopen)");
        let mut usr2 = watch(SignalKind::user_defined2(), "SIGUSR2");
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut next_check = tokio::time::Instant::now();
        let mut next_probe = tokio::time::Instant::now();
        loop {
            tokio::select! {
                Some(()) = next(&mut hup) => self.reload(),
                Some(()) = next(&mut usr1) => reopen_access_log(&self.shared),
                Some(()) = next(&mut usr2) => tracing::info!("SIGUSR2 ignored (SIGUSR1 reopens the access log, SIGHUP reloads)"),
                _ = sweep.tick() => self.shared.state.load().limits.sweep(),
                _ = tokio::time::sleep_until(next_check) => {
                    let st = self.shared.state.load_full();
                    st.upstreams.check().await;
                    next_check = tokio::time::Instant::now() + st.settings.upstream.health_check_interval;
                }
                _ = tokio::time::sleep_until(next_probe) => {
                    // Shared limits: Redis is pinged every retry_interval, so
                    // the gauge is true without traffic and recovery is prompt.
                    let st = self.shared.state.load_full();
                    let every = match &st.shared_limits {
                        Some(sh) => {
                            sh.probe().await;
                            sh.retry_interval()
                        }
                        None => Duration::from_secs(1),
                    };
                    next_probe = tokio::time::Instant::now() + every;
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
