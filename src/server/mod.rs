//! The composition root: assembles the pingora server from the edge (the
//! gateway proxy service inside its connection caps), the metrics and
//! health listener ([`status_http`]), MOR's directory refresher and
//! [`housekeeping`]; `check` ([`check`])
//! builds the same state without listening.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::http_app::HttpServer;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::RunArgs;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Settings, WithoutSnapshot};
use crate::edge::connections::Connections;
use crate::edge::mirror::Refresher;
use crate::edge::mor_db::DbError;
use crate::edge::proxy::Gateway;
use crate::edge::state::Shared;
use crate::edge::tls::Tls;
use crate::ops::accesslog::AccessLog;
use crate::ops::metrics::Metrics;

mod check;
mod housekeeping;
mod status_http;

pub use check::{check, check_directory, check_rollout};
pub use housekeeping::{Housekeeping, SWEEP_EVERY};
pub use status_http::MetricsApp;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The access log file could not be opened.
    #[error("access_log.path: {0}")]
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
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        /// The config key that names it (`listen`, `tls.listen`, `metrics.listen`).
        key: &'static str,
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
    /// Run once as the process ends, however it ends after a stop signal
    /// (the demo stops its simulator with it).
    pub on_exit: Option<OnExit>,
}

/// A last duty of the process (see [`Plan::on_exit`]).
pub type OnExit = Arc<dyn Fn() + Send + Sync>;

/// Every address this plan listens on, with the config key that names it.
fn addresses(plan: &Plan) -> Vec<(&'static str, SocketAddr)> {
    let s = &plan.settings;
    let keyed =
        |key: &'static str, v: &[SocketAddr]| v.iter().map(move |a| (key, *a)).collect::<Vec<_>>();
    let mut out = keyed("listen", &s.listen);
    if let Some(t) = &s.tls {
        out.extend(keyed("tls.listen", &t.listen));
    }
    out.extend(s.metrics_listen.iter().map(|a| ("metrics.listen", *a)));
    out
}

/// Fails at once, naming the key and the address, when a listener cannot
/// bind (pingora would bind later, in a service thread, and leave a
/// half-serving process).
fn probe_binds(addrs: &[(&'static str, SocketAddr)]) -> Result<(), ServerError> {
    for &(key, addr) in addrs {
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind {
            key,
            addr,
            source,
        })?;
    }
    Ok(())
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

    // The gateway's hooks inside the connection caps and header limits.
    let gateway = Gateway {
        shared: shared.clone(),
    };
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
            on_exit: plan.on_exit.clone(),
        },
    ));
    tracing::info!("mor-gateway listening on {:?}", s.listen);
    server.run(RunArgs::default());
    // The last lines of calls that finished during the shutdown.
    shared.access_log.flush(Duration::from_secs(2));
    if let Some(f) = &plan.on_exit {
        f();
    }
    Ok(())
}
