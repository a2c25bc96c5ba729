//! Assembles the pingora server: the gateway proxy service, the metrics and
//! health listener, and housekeeping
//! (SIGHUP reload, SIGUSR1 access-log reopen, limiter sweeps, upstream
//! health checks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{LogMode, Settings, WithoutSnapshot};
use crate::edge::connections::Connections;
use crate::edge::mirror::Refresher;
use crate::edge::mor_db::{self, DbError};
use crate::edge::proxy::{Gateway, Shared};
use crate::edge::tls::Tls;
use crate::ops::accesslog::{self, AccessLog};
use crate::ops::metrics::Metrics;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The access log file could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// The upstream set could not be built.
    #[error("upstreams: {0}")]
    Upstreams(std::io::Error),
    /// The TLS listeners could not be set up.
    #[error("tls: {0}")]
    Tls(String),
    /// MOR's database could not be read at start and the config says not
    /// to start without it (`directory.without_snapshot = "exit"`).
    #[error("directory: cannot read MOR's database at start: {0} (directory.without_snapshot = \"exit\")")]
    Directory(DbError),
    /// A listener cannot bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What to serve.
pub struct Plan {
    /// Gateway settings.
    pub settings: Arc<Settings>,
    /// Config file to re-read on SIGHUP (None: reload disabled).
    pub config_path: Option<PathBuf>,
    /// Take the listening sockets over from a running gateway (zero-downtime
    /// upgrade: start this, then send the old process SIGQUIT).
    pub upgrade: bool,
}

/// Every address this plan listens on.
fn addresses(plan: &Plan) -> Vec<SocketAddr> {
    let s = &plan.settings;
    s.listen
        .iter()
        .chain(s.tls.iter().flat_map(|t| t.listen.iter()))
        .chain(s.metrics_listen.iter())
        .copied()
        .collect()
}

/// Fails at once, naming the address, when a listener cannot bind (pingora
/// would bind later, in a service thread, and leave a half-serving process).
fn probe_binds(addrs: &[SocketAddr]) -> Result<(), ServerError> {
    for &addr in addrs {
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    }
    Ok(())
}

/// True when something accepts a TCP connection on every gateway listener.
async fn listeners_serving(listen: &[SocketAddr]) -> bool {
    for a in listen {
        let mut target = *a;
        if target.ip().is_unspecified() {
            target.set_ip(match a {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(target),
        )
        .await;
        if !matches!(connected, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

/// Serves `/metrics`, `/healthz` and `/readyz`.
pub struct MetricsApp {
    shared: Arc<Shared>,
}

fn text_response(status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                let m = &self.shared.metrics;
                let st = self.shared.state.load_full();
                let shared = match &st.shared_limits {
                    Some(sh) => sh.active_lockouts().await,
                    None => None,
                };
                let n = shared.unwrap_or_else(|| st.limits.active_lockouts());
                m.lockouts_active.set(i64::try_from(n).unwrap_or(i64::MAX));
                if st.settings.mor_db.is_some() {
                    m.directory_age.set(self.shared.mirror.age());
                }
                text_response(200, "text/plain; version=0.0.4; charset=utf-8", m.render())
            }
            "/healthz" => text_response(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let st = self.shared.state.load_full();
                let no_snapshot = st
                    .settings
                    .mor_db
                    .as_ref()
                    .filter(|_| !self.shared.mirror.ever_loaded())
                    .map(|d| d.without_snapshot);
                if !listeners_serving(&st.settings.listen).await {
                    text_response(503, "text/plain", b"a listener is not serving\n".to_vec())
                } else if no_snapshot == Some(WithoutSnapshot::Refuse) {
                    text_response(
                        503,
                        "text/plain",
                        b"MOR's directory was never read: API calls are refused until it is\n"
                            .to_vec(),
                    )
                } else if no_snapshot.is_some() && st.upstreams.any_up() {
                    text_response(
                        200,
                        "text/plain",
                        b"ready (MOR's directory was never read: deciding with the static config)\n"
                            .to_vec(),
                    )
                } else if st.upstreams.any_up() {
                    text_response(200, "text/plain", b"ready\n".to_vec())
                } else {
                    text_response(503, "text/plain", b"no upstream is up\n".to_vec())
                }
            }
            _ => text_response(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// SIGHUP reloads, SIGUSR1 access-log reopens (SIGUSR2 is ignored), limiter
/// sweeps and upstream health checks.
pub struct Housekeeping {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
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
            let o = &old.settings;
            if new.listen != o.listen
                || new.metrics_listen != o.metrics_listen
                || new.threads != o.threads
                || new.shutdown_grace != o.shutdown_grace
                || new.upgrade_sock != o.upgrade_sock
            {
                tracing::warn!(
                    "listen, metrics.listen, threads, shutdown_grace or upgrade_sock changed in {}: \
                     they take effect on restart",
                    path.display()
                );
            }
            self.shared.reload(Arc::new(new)).map_err(|e| e.to_string())
        }));
        let m = &self.shared.metrics;
        let why = match attempt {
            Ok(Ok(())) => {
                m.reloads.with_label_values(&["ok"]).inc();
                tracing::info!("configuration reloaded from {}", path.display());
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => "building the new configuration panicked".to_string(),
        };
        m.reloads.with_label_values(&["failed"]).inc();
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

/// pingora settings shared by every server here: `threads` workers and a
/// prompt shutdown (no grace period, 1 s to finish requests in flight).
fn base_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// Builds everything `run` builds from `settings` except the listeners and
/// the access log file (limiters, the upstream set; the log's file or
/// directory is checked, not created), so that a configuration `check`
/// accepts also starts (`mor-gateway check`).
pub fn check(settings: &Settings) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    // Whether `run` can write it, creating nothing (check often runs as
    // root, before the service ever did).
    accesslog::check_target(settings.access_log, settings.access_log_path.as_deref())
        .map_err(ServerError::AccessLog)?;
    let log = AccessLog::open(LogMode::Off, None).map_err(ServerError::AccessLog)?;
    Shared::new(Arc::new(settings.clone()), metrics, log).map_err(ServerError::Upstreams)?;
    Ok(())
}

/// What `check` finds in MOR's database (with `[directory]`): a snapshot's
/// counts and switches, and whether the account can read more than it
/// needs. Lines to print; the database being unreachable is reported, not
/// an error (the gateway can start without it if the config says so).
pub fn check_directory(settings: &Settings) -> Vec<String> {
    use std::fmt::Write;
    let Some(db) = &settings.mor_db else {
        return Vec::new();
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("directory      not checked: {e}")],
    };
    let mut out = Vec::new();
    rt.block_on(async {
        let read = tokio::time::timeout(db.timeout, mor_db::read(db, None)).await;
        match read {
            Ok(Ok((mor_db::Read::Fresh(d), _))) => {
                let on = |b: bool| if b { "on" } else { "off" };
                out.push(format!(
                    "directory      read: {} users, {} owners; admin: Allow API {}, hash checking {}, key {}; Allow GET API {}; Devices_Check_Ballance {}",
                    d.user_count,
                    d.owner_count,
                    on(d.admin().allow_api),
                    on(!d.admin().hash_off),
                    if d.admin().key.is_some() { "set" } else { "EMPTY" },
                    on(d.allow_get),
                    on(d.balance_over_http)
                ));
                let unusual = d.unusual_owners();
                let mut line = format!(
                    "owners         {} with Allow API off, hash checking off or no key",
                    unusual.len()
                );
                for (id, o) in unusual.iter().take(20) {
                    let _ = write!(
                        line,
                        "\n               {} (id {id}): Allow API {}, hash checking {}, key {}",
                        o.name,
                        on(o.allow_api),
                        on(!(o.allow_api && o.hash_off)),
                        if o.key.is_some() { "set" } else { "empty" }
                    );
                }
                if unusual.len() > 20 {
                    let _ = write!(line, "\n               ... and {} more", unusual.len() - 20);
                }
                out.push(line);
            }
            Ok(Ok((mor_db::Read::Unchanged, _))) => {}
            Ok(Err(e)) => out.push(format!("directory      WARNING: cannot read MOR's database: {e}")),
            Err(_) => out.push(format!(
                "directory      WARNING: MOR's database did not answer within {:?}",
                db.timeout
            )),
        }
        match tokio::time::timeout(db.timeout, mor_db::grants(db)).await {
            Ok(Ok(lines)) => {
                let extra = mor_db::excess(&lines, &db.database, &db.users_table, &db.settings_view);
                if extra.is_empty() {
                    out.push("grants         least privilege: the five users columns and the settings view only".into());
                } else {
                    let mut line = "grants         WARNING: the account can read more than it needs (README: \"Mirroring MOR's settings\"):".to_string();
                    for g in extra {
                        let _ = write!(line, "\n               {g}");
                    }
                    out.push(line);
                }
            }
            Ok(Err(e)) => out.push(format!("grants         not checked: {e}")),
            Err(_) => out.push("grants         not checked: no answer".into()),
        }
    });
    out
}

/// The first read of MOR's database, before the server starts: installed
/// when it works; when it fails, `without_snapshot` decides.
fn first_snapshot(shared: &Shared, settings: &Settings) -> Result<(), ServerError> {
    let Some(db) = &settings.mor_db else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Directory(DbError::Row(e.to_string())))?;
    match rt.block_on(shared.mirror.refresh(db, &shared.metrics)) {
        Ok(()) => Ok(()),
        Err(e) if db.without_snapshot == WithoutSnapshot::Exit => Err(ServerError::Directory(e)),
        Err(_) => Ok(()),
    }
}

/// Installs the process's handlers for SIGHUP, SIGUSR1 and SIGUSR2 at once
/// (their default action ends the process); until housekeeping watches
/// them, a delivery is recorded and dropped. tokio keeps a handler installed
/// for the rest of the process once it was asked for one.
pub fn hold_signals() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
    match rt {
        Ok(rt) => rt.block_on(async {
            for kind in [
                SignalKind::hangup(),
                SignalKind::user_defined1(),
                SignalKind::user_defined2(),
            ] {
                if let Err(e) = signal(kind) {
                    tracing::warn!("cannot install a handler for {kind:?}: {e}");
                }
            }
        }),
        Err(e) => tracing::warn!("cannot install the signal handlers early: {e}"),
    }
}

/// Builds and runs the server until SIGTERM/SIGINT. Blocks.
pub fn run(plan: Plan) -> Result<(), ServerError> {
    let s = plan.settings.clone();
    if !plan.upgrade {
        probe_binds(&addresses(&plan))?;
    }
    let metrics = Arc::new(Metrics::new());
    let log = AccessLog::open(s.access_log, s.access_log_path.as_deref())
        .map_err(ServerError::AccessLog)?;
    let shared = Arc::new(Shared::new(s.clone(), metrics, log).map_err(ServerError::Upstreams)?);
    first_snapshot(&shared, &s)?;

    let conf = ServerConf {
        upstream_keepalive_pool_size: s.upstream.keepalive_pool_size,
        work_stealing: s.work_stealing,
        // SIGTERM/SIGQUIT: listeners close at once, calls in flight get the grace.
        grace_period_seconds: Some(s.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        ..base_conf(
            s.threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        )
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: plan.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    // pingora's HTTP proxy inside the connection caps and header limits.
    let gateway = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway {
            shared: shared.clone(),
        },
    );
    // HTTPS: pingora listens as for plain TCP; the gateway runs the TLS
    // handshake itself once the connection holds its slots.
    let tls = match (&s.tls, &shared.certs) {
        (Some(t), Some(certs)) => {
            Some(Tls::new(&t.listen, certs.clone()).map_err(ServerError::Tls)?)
        }
        _ => None,
    };
    let mut proxy = Service::new(
        "mor-gateway".to_string(),
        Connections::new(gateway, shared.clone(), tls),
    );
    let tls_listen = s.tls.iter().flat_map(|t| t.listen.iter());
    for a in s.listen.iter().chain(tls_listen) {
        proxy.add_listener(
            ListenerConfig::tcp(a.to_string()).l4_buffer(L4BufferSettings {
                read: Some(s.read_buffer_bytes),
                write: None,
            }),
        );
    }
    server.add_service(proxy);

    if let Some(addr) = s.metrics_listen {
        let mut svc = Service::new(
            "metrics".to_string(),
            HttpServer::new_app(MetricsApp {
                shared: shared.clone(),
            }),
        );
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }

    server.add_service(background_service(
        "directory",
        Refresher {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "housekeeping",
        Housekeeping {
            shared: shared.clone(),
            config_path: plan.config_path,
        },
    ));
    tracing::info!("mor-gateway listening on {:?}", s.listen);
    server.run(RunArgs::default());
    // The last lines of calls that finished during the shutdown.
    shared.access_log.flush(Duration::from_secs(2));
    Ok(())
}
