//! `mor-sim`: a MOR simulator, a development tool (a real upstream for
//! `mor-gateway demo`, the tests and the benchmarks). Never shipped: it is
//! its own binary, outside the library and the `mor-gateway` binary, and no
//! package holds it.
//!
//! It decides every call from MOR's facts files (`facts/mor-x8.toml`, and
//! `facts/endpoints.toml` for methods newer than X8) with its own code —
//! its own Rails parameter parser ([`rails`]), rules and hashing
//! ([`rules`]), routing and XML ([`simulator`], [`xml`]) — and imports none
//! of the gateway's modules, so that the end-to-end tests compare two
//! separate readings of MOR's rules. With `--db-url-env` it reads MOR's
//! users and conflines tables per call ([`db`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a development tool: the gateway's no-panic rule guards what clients reach"
)]

mod data;
mod db;
mod json;
mod rails;
mod rules;
mod simulator;
mod xml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use simulator::{SimSettings, Simulator};

/// The command line.
#[derive(Parser)]
#[command(
    name = "mor-sim",
    version = env!("MOR_GATEWAY_VERSION"),
    about = "A MOR API simulator for mor-gateway's demo and tests (a development tool)"
)]
struct Cli {
    /// Listen address.
    #[arg(long)]
    listen: SocketAddr,
    /// Environment variable holding the admin secret key.
    #[arg(long)]
    key_env: String,
    /// Reseller as NAME=ENV_VAR (its key from that variable); repeatable.
    #[arg(long = "reseller")]
    resellers: Vec<String>,
    /// Refuse GET like MOR with "Allow GET API" off.
    #[arg(long)]
    no_get: bool,
    /// Refuse every API call like MOR with the admin's "Allow API" off.
    #[arg(long)]
    no_api: bool,
    /// Serve wrongly signed calls like MOR with the admin's "Disable hash
    /// checking" on.
    #[arg(long)]
    no_hash_check: bool,
    /// The text of `system_version_get`'s `<version>` (default: the
    /// simulator's own name).
    #[arg(long, value_name = "TEXT")]
    version_text: Option<String>,
    /// Answer every API call with one fixed document (benchmarks).
    #[arg(long)]
    fixed_reply: bool,
    /// A reseller's switches as NAME=ALLOW_API,DISABLE_HASH_CHECKING
    /// (each 0 or 1, MOR's values); repeatable.
    #[arg(long = "reseller-switches")]
    reseller_switches: Vec<String>,
    /// The MOR played where X8 and the newer wiki pages disagree.
    #[arg(long, default_value = "current", value_parser = ["x8", "current"])]
    mor_version: String,
    /// Environment variable holding MOR's database URL
    /// (mysql://user:password@host:port/database): callers and API
    /// settings are read from its users and conflines tables per call.
    #[arg(long)]
    db_url_env: Option<String>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

/// The non-empty value of environment variable `var`.
fn env_key(var: &str) -> Result<Vec<u8>, String> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Ok(v.into_encoded_bytes()),
        Some(_) => Err(format!("environment variable {var} is empty")),
        None => Err(format!("environment variable {var} is not set")),
    }
}

/// The simulator's settings from the command line.
fn settings(cli: &Cli) -> Result<SimSettings, String> {
    let mut st = SimSettings::new(&env_key(&cli.key_env)?);
    st.allow_get = !cli.no_get;
    st.allow_api = !cli.no_api;
    st.check_hash = !cli.no_hash_check;
    st.version_text = cli.version_text.clone();
    st.fixed_reply = cli.fixed_reply;
    if cli.mor_version == "x8" {
        st.version = rules::Version::X8;
    }
    for r in &cli.reseller_switches {
        let parsed = r.split_once('=').and_then(|(n, v)| {
            let (a, h) = v.split_once(',')?;
            Some((n.to_string(), a == "1", h == "1"))
        });
        st.reseller_switches.push(parsed.ok_or_else(|| {
            format!("--reseller-switches takes NAME=ALLOW_API,DISABLE_HASH_CHECKING, got '{r}'")
        })?);
    }
    if let Some(var) = &cli.db_url_env {
        let url = env_key(var)?;
        st.db_url = Some(String::from_utf8(url).map_err(|_| format!("{var} is not UTF-8"))?);
    }
    for r in &cli.resellers {
        let (name, var) = r
            .split_once('=')
            .ok_or_else(|| format!("--reseller takes NAME=ENV_VAR, got '{r}'"))?;
        st.resellers.push((name.to_string(), env_key(var)?));
    }
    Ok(st)
}

/// Serves `sim` on `addr` (over TLS with `tls`) until a signal. Blocks.
fn serve(
    addr: SocketAddr,
    sim: Simulator,
    threads: usize,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<(), String> {
    // pingora would retry a busy address forever: fail at once, naming it.
    std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let conf = ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = Service::new("mor-simulator".to_string(), HttpServer::new_app(sim));
    match tls {
        Some((cert, key)) => svc
            .add_tls(
                &addr.to_string(),
                &cert.display().to_string(),
                &key.display().to_string(),
            )
            .map_err(|e| format!("TLS: {e}"))?,
        None => svc.add_tcp(&addr.to_string()),
    }
    server.add_service(svc);
    server.run(RunArgs::default());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            eprintln!("mor-sim: --tls-cert and --tls-key go together");
            return ExitCode::FAILURE;
        }
    };
    let result =
        settings(&cli).and_then(|st| serve(cli.listen, Simulator::new(st), cli.threads, tls));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mor-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
