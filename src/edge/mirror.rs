//! MOR's directory at run time: the snapshot in force, swapped whole
//! (arc-swap: a call takes it without a lock and without a database round
//! trip), refreshed from MOR's database in the background every
//! `directory.refresh_interval` and at once on SIGHUP. A failed refresh keeps
//! the last good snapshot; its age, the refreshes and the counts are metrics.
//! Without `[directory]` the static config's directory is in force.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::mor_db::{self, DbError, Fingerprint, Read};
use super::state::Shared;
use crate::config::{MorDbSettings, Settings, WithoutSnapshot};
use crate::core::directory::Directory;
use crate::ops::metrics::Metrics;

fn unix_ms() -> u64 {
    u64::try_from(crate::ops::metrics::unix_now().as_millis()).unwrap_or(u64::MAX)
}

/// The directory in force and what is known of its freshness.
pub struct Mirror {
    current: ArcSwap<Directory>,
    /// Unix milliseconds of the last good snapshot (0: never).
    loaded_ms: AtomicU64,
    /// Refreshes failed in a row (for the log: the first one and the
    /// recovery are logged, not each retry).
    failing: AtomicU64,
    /// When the gateway started waiting for its first snapshot.
    since: Instant,
    /// Asks the refresher for a refresh now (SIGHUP).
    pub(crate) wake: tokio::sync::Notify,
    /// What the last good read saw, and the reads since the last full one
    /// (a full read is made at least every [`FULL_READ_EVERY`] refreshes,
    /// whatever the fingerprint says).
    last: std::sync::Mutex<Option<(Fingerprint, u32)>>,
}

/// Refreshes between two full reads when the fingerprint does not change.
pub const FULL_READ_EVERY: u32 = 6;

/// What is in force for `settings` when no snapshot of MOR's database was
/// ever read.
fn without_snapshot(settings: &Settings) -> Arc<Directory> {
    match settings.mor_db.as_ref().map(|d| d.without_snapshot) {
        Some(WithoutSnapshot::Refuse) => Arc::new(Directory::unavailable()),
        _ => settings.policy.directory.clone(),
    }
}

impl Mirror {
    /// The directory for `settings` before any refresh.
    pub fn new(settings: &Settings) -> Mirror {
        Mirror {
            current: ArcSwap::new(without_snapshot(settings)),
            loaded_ms: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            since: Instant::now(),
            wake: tokio::sync::Notify::new(),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The directory in force (no lock, no I/O).
    pub fn load(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    /// A snapshot of MOR's database was installed at least once.
    pub fn ever_loaded(&self) -> bool {
        self.loaded_ms.load(Ordering::Acquire) != 0
    }

    /// Seconds since the last good snapshot (since start, if none yet).
    pub fn age(&self) -> f64 {
        match self.loaded_ms.load(Ordering::Acquire) {
            0 => self.since.elapsed().as_secs_f64(),
            ms => unix_ms().saturating_sub(ms) as f64 / 1000.0,
        }
    }

    /// A reload: without `[directory]` the new static config is in force;
    /// with it, the last snapshot stays (or the policy before the first one)
    /// and a refresh is asked for at once.
    pub fn configure(&self, settings: &Settings, metrics: &Metrics) {
        metrics.mirror_directory(settings.mor_db.as_ref().map(|d| d.refresh_interval));
        // The next read is a full one (the database may have changed).
        if let Ok(mut l) = self.last.lock() {
            *l = None;
        }
        if settings.mor_db.is_none() {
            self.loaded_ms.store(0, Ordering::Release);
            self.current.store(settings.policy.directory.clone());
            return;
        }
        if !self.ever_loaded() {
            self.current.store(without_snapshot(settings));
        }
        self.wake.notify_one();
    }

    /// Installs a snapshot read from MOR's database.
    pub fn install(&self, dir: Directory, metrics: &Metrics) {
        metrics
            .directory_users
            .set(i64::try_from(dir.user_count).unwrap_or(i64::MAX));
        metrics
            .directory_owners
            .set(i64::try_from(dir.owner_count).unwrap_or(i64::MAX));
        self.current.store(Arc::new(dir));
        let now = unix_ms();
        self.loaded_ms.store(now, Ordering::Release);
        metrics.directory_loaded.set(now as f64 / 1000.0);
        metrics.directory_age.set(0.0);
    }

    /// Reads MOR's database once; on success the snapshot is swapped in,
    /// on failure the last one stays. Counted and logged either way.
    pub async fn refresh(&self, db: &MorDbSettings, metrics: &Metrics) -> Result<(), DbError> {
        let t0 = Instant::now();
        let last = self
            .last
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .filter(|(_, n)| *n + 1 < FULL_READ_EVERY && self.ever_loaded());
        let read =
            match tokio::time::timeout(db.timeout, mor_db::read(db, last.as_ref().map(|(f, _)| f)))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(DbError::Timeout(db.timeout)),
            };
        let result = read.map(|(r, fp)| {
            let since_full = match (&r, last) {
                (Read::Unchanged, Some((_, n))) => n + 1,
                _ => 0,
            };
            if let Ok(mut l) = self.last.lock() {
                *l = Some((fp, since_full));
            }
            r
        });
        match result {
            Ok(Read::Unchanged) => {
                let now = unix_ms();
                self.loaded_ms.store(now, Ordering::Release);
                metrics.directory_loaded.set(now as f64 / 1000.0);
                metrics.directory_age.set(0.0);
                metrics.directory_refreshes.with_label_values(&["ok"]).inc();
                let failed = self.failing.swap(0, Ordering::AcqRel);
                if failed > 0 {
                    tracing::info!(
                        "directory: {} unchanged (after {failed} failed refreshes)",
                        db.url
                    );
                }
                Ok(())
            }
            Ok(Read::Fresh(dir)) => {
                let (users, owners) = (dir.user_count, dir.owner_count);
                let first = !self.ever_loaded();
                self.install(*dir, metrics);
                metrics.directory_refreshes.with_label_values(&["ok"]).inc();
                let failed = self.failing.swap(0, Ordering::AcqRel);
                if first || failed > 0 {
                    tracing::info!(
                        "directory: {users} users, {owners} owners read from {} in {} ms{}",
                        db.url,
                        t0.elapsed().as_millis(),
                        if failed > 0 {
                            format!(" (after {failed} failed refreshes)")
                        } else {
                            String::new()
                        }
                    );
                }
                Ok(())
            }
            Err(e) => {
                metrics
                    .directory_refreshes
                    .with_label_values(&["failed"])
                    .inc();
                metrics.directory_age.set(self.age());
                if self.failing.fetch_add(1, Ordering::AcqRel) == 0 {
                    tracing::warn!(
                        "directory: cannot read {}: {e}; {}",
                        db.url,
                        if self.ever_loaded() {
                            "keeping the last snapshot"
                        } else {
                            "no snapshot yet"
                        }
                    );
                }
                Err(e)
            }
        }
    }
}

/// Refreshes the directory every `refresh_interval`, and on demand.
pub struct Refresher {
    /// The gateway's shared state.
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mirror = &self.shared.mirror;
        loop {
            let st = self.shared.state.load_full();
            let wait = match &st.settings.mor_db {
                Some(db) => {
                    let _ = mirror.refresh(db, &self.shared.metrics).await;
                    db.refresh_interval
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = mirror.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}
