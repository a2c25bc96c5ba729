//! The gateway's background duties: SIGHUP reloads, SIGUSR1 access-log
//! reopens, SIGUSR2 drain, limiter and idle-connection sweeps, upstream
//! health checks, Redis probes, and the prompt exit after SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Settings;
use crate::edge::state::Shared;

/// SIGHUP reloads, SIGUSR1 access-log reopens, SIGUSR2 drains, limiter
/// sweeps and upstream health checks.
pub struct Housekeeping {
    pub(super) shared: Arc<Shared>,
    pub(super) config_path: Option<PathBuf>,
    pub(super) on_exit: Option<super::OnExit>,
}

/// How often idle limiter keys and idle MOR connections are swept.
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
        let mut usr2 = watch(SignalKind::user_defined2(), "SIGUSR2 (drain)");
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut next_check = tokio::time::Instant::now();
        let mut next_probe = tokio::time::Instant::now();
        loop {
            tokio::select! {
                Some(()) = next(&mut hup) => self.reload(),
                Some(()) = next(&mut usr1) => reopen_access_log(&self.shared),
                Some(()) = next(&mut usr2) => toggle_drain(&self.shared),
                _ = sweep.tick() => {
                    self.shared.state.load().limits.sweep();
                    self.shared.pool.sweep();
                }
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
        self.exit_when_idle().await;
    }
}

/// SIGUSR2: starts draining (calls are served, `/readyz` answers 503 so a
/// balancer moves traffic away, each connection closes after its next
/// answer), or ends it.
fn toggle_drain(shared: &Shared) {
    if shared.toggle_drain() {
        tracing::info!("SIGUSR2: draining: calls are served, /readyz answers 503, connections close after their answer (SIGUSR2 again ends it)");
    } else {
        tracing::info!("SIGUSR2: drain ended: /readyz answers as before, keep-alive as configured");
    }
}

impl Housekeeping {
    /// After SIGTERM (or SIGQUIT, once an upgraded process holds the
    /// listeners) pingora accepts no more connections and ends idle
    /// keep-alive ones; connections with a call in flight close after their
    /// answer. The process exits as soon as no client connection is left,
    /// instead of waiting out all of `shutdown_grace` (pingora's own wait,
    /// which still bounds this one).
    async fn exit_when_idle(&self) {
        let grace = self.shared.state.load().settings.shutdown_grace;
        let end = tokio::time::Instant::now() + grace;
        let m = &self.shared.metrics;
        while tokio::time::Instant::now() < end {
            if m.connections_open.get() <= 0 && m.in_flight.get() <= 0 {
                tracing::info!("stopping: no client connection left");
                // What `run` does after pingora returns.
                self.shared.access_log.flush(Duration::from_secs(2));
                if let Some(f) = &self.on_exit {
                    f();
                }
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
