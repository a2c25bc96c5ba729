//! `mor-gateway`: run, check, sign, demo and sim subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use mor_gateway::config::Settings;
use mor_gateway::core::catalog::{Catalog, Product, EMBEDDED};
use mor_gateway::core::params::Params;
use mor_gateway::core::signature;
use mor_gateway::ops::server::{self, Plan};
use mor_gateway::sim::SimSettings;

mod manpage;

#[derive(Parser)]
#[command(
    name = "mor-gateway",
    version,
    about = "Verifying API gateway for Kolmisoft MOR",
    long_about = "A reverse proxy in front of a Kolmisoft MOR billing server. It re-verifies \
MOR's SHA1 request hash as MOR X8 does, enforces MOR's API policies, refuses ambiguous \
requests, rate-limits, rewrites legacy method names, and forwards only what passed, answering \
refusals in MOR's own XML. Prometheus metrics and health checks are served on the metrics \
listener; one JSON access-log line is written per request."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a config file (SIGHUP reloads it).
    Run {
        /// Config file (see config/gateway.toml).
        #[arg(short, long)]
        config: PathBuf,
        /// Zero-downtime upgrade: take the listening sockets over from the
        /// running gateway (via `upgrade_sock`), then send the old process
        /// SIGQUIT; it stops accepting and finishes its calls in flight.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and print what would be served (like nginx -t).
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Print the effective rule of this method (canonical name or alias).
        #[arg(long)]
        method: Option<String>,
    },
    /// Print the hash MOR expects for a call (filters applied) and a curl
    /// line that works with the config's allow_get.
    Sign {
        /// Environment variable holding the secret key.
        #[arg(long)]
        key_env: String,
        /// Config file whose catalogue and allow_get to use (default: built in, MOR, POST).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Base URL of the API.
        #[arg(long, default_value = "http://127.0.0.1:8080/billing/api")]
        base: String,
        /// The call, e.g. 'user_details_get?u=admin&user_id=123'.
        call: String,
    },
    /// Start the gateway and the embedded MOR simulator on loopback and
    /// print curl lines to try; serves until Ctrl-C.
    Demo {
        /// Gateway port; the simulator uses port+1, metrics port+2.
        #[arg(long, default_value_t = 8480)]
        port: u16,
    },
    /// Run only the embedded MOR simulator.
    Sim {
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
    },
    /// Print the manual page (roff), or write every page into --dir.
    #[command(hide = true)]
    Manpage {
        /// Write mor-gateway.8 and one page per command into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEMO_KEY: &str = "456789";
const DEMO_RESELLER_KEY: &str = "resellerkey";

fn env_key(var: &str) -> Result<Vec<u8>, String> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Ok(v.into_encoded_bytes()),
        Some(_) => Err(format!("environment variable {var} is empty")),
        None => Err(format!("environment variable {var} is not set")),
    }
}

fn sign(key_env: &str, config: Option<PathBuf>, base: &str, call: &str) -> Result<(), String> {
    let key = env_key(key_env)?;
    let (catalog, allow_get) = match &config {
        Some(p) => {
            let s = Settings::load(p).map_err(|e| e.to_string())?;
            (s.policy.catalog.clone(), s.policy.directory.allow_get)
        }
        None => (
            Catalog::parse(EMBEDDED, Product::Mor).map_err(|e| e.to_string())?,
            false,
        ),
    };
    let (method, query) = call.split_once('?').unwrap_or((call, ""));
    let method = method.trim_start_matches('/');
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("hash"))
        .collect();
    let query = kept.join("&");
    let mut params = Params::new();
    params
        .add_form(query.as_bytes())
        .map_err(|e| e.to_string())?;
    let found = catalog.lookup(method);
    let m = found.map(|f| f.method);
    match m {
        Some(m) => println!("method  {} (rule: {})", m.name, m.auth.label()),
        None => println!("method  {method} (not catalogued: MOR's global order)"),
    }
    let sep = if query.is_empty() { "" } else { "&" };
    let url = format!("{}/{method}", base.trim_end_matches('/'));
    let signed = if m.is_none_or(|m| m.auth.hashed()) {
        let parts = signature::hashed_parts(&catalog, m, &params).map_err(|e| e.to_string())?;
        let h = signature::digest(&parts, &key);
        let shown: Vec<String> = parts.iter().map(|(n, t)| format!("{n}={t}")).collect();
        println!(
            "hashed  {} + key",
            if shown.is_empty() {
                "(nothing)".to_string()
            } else {
                shown.join(" + ")
            }
        );
        println!("hash    {}", h.as_str());
        format!("{query}{sep}hash={}", h.as_str())
    } else {
        println!("hashed  nothing: this action takes no hash");
        query.clone()
    };
    let get_ok = allow_get || m.is_some_and(|m| m.get_always);
    if get_ok {
        println!("curl -s '{url}?{signed}'");
    } else {
        println!("curl -s -X POST '{url}' -d '{signed}'");
    }
    Ok(())
}

fn demo(port: u16) -> Result<(), String> {
    let (gw, sim, met) = (
        port,
        port.checked_add(1).ok_or("port too high")?,
        port.checked_add(2).ok_or("port too high")?,
    );
    let env = std::collections::HashMap::from([
        ("MOR_GATEWAY_DEMO_KEY", DEMO_KEY),
        ("MOR_GATEWAY_DEMO_RESELLER_KEY", DEMO_RESELLER_KEY),
    ]);
    let text = include_str!("../config/demo.toml")
        .replace("127.0.0.1:8480", &format!("127.0.0.1:{gw}"))
        .replace("127.0.0.1:8481", &format!("127.0.0.1:{sim}"))
        .replace("127.0.0.1:8482", &format!("127.0.0.1:{met}"));
    let settings = Settings::from_toml(&text, None, &env).map_err(|e| e.to_string())?;
    let mut sim_settings = SimSettings::new(DEMO_KEY.as_bytes());
    sim_settings.resellers = vec![("res1".into(), DEMO_RESELLER_KEY.as_bytes().to_vec())];
    let base = format!("http://127.0.0.1:{gw}/billing/api");
    let h_get = signature::compute(&["user_id"], |_| Some("123"), DEMO_KEY.as_bytes());
    let h_upd = signature::compute(
        &["user_id", "u15"],
        |n| Some(if n == "user_id" { "123" } else { "0" }),
        DEMO_KEY.as_bytes(),
    );
    let h_res = signature::compute(&["user_id"], |_| Some("5"), DEMO_KEY_RES);
    println!(
        r#"mor-gateway demo
  gateway   http://127.0.0.1:{gw}  (verifies, then forwards)
  MOR sim   http://127.0.0.1:{sim}  (embedded MOR simulator, admin key {DEMO_KEY})
  metrics   http://127.0.0.1:{met}/metrics

Paste these in another terminal:

# 1. a good call (MOR's own documented example: user_id=123, key 456789)
curl -s -X POST {base}/user_details_get -d 'u=admin&user_id=123&hash={h_get}'; echo

# 2. the same with a bad hash: refused at the edge, MOR never sees it
curl -s -X POST {base}/user_details_get -d 'u=admin&user_id=123&hash=0000000000000000000000000000000000000000'; echo

# 3. a legacy alias: user_details is rewritten to user_details_get
curl -s -X POST {base}/user_details -d 'u=admin&user_id=123&hash={h_get}'; echo

# 4. a JSON body, as real clients send (user_details_update, u15=0: unblock)
curl -s -H 'Content-Type: application/json' {base}/user_details_update -d '{{"u":"admin","user_id":123,"u15":0,"hash":"{h_upd}"}}'; echo

# 5. GET refused ("Allow GET API" is off at the edge)
curl -s '{base}/user_details_get?u=admin&user_id=123&hash={h_get}'; echo

# 6. a rate-limited burst: user_calls_get allows 3 at once, then 1 per 2 s
for i in 1 2 3 4 5; do curl -s -X POST {base}/user_calls_get -d 'u=admin&s_user=123&hash={h_get}' | head -c 150; echo; done

# 7. a reseller's user, signed with the reseller's own key ({DEMO_RESELLER_KEY})
curl -s -X POST {base}/user_details_get -d 'u=ruser&user_id=5&hash={h_res}'; echo

# 8. user_devices: MOR answers it with `u` alone, SIP passwords included; closed at the edge
curl -s -X POST {base}/user_devices -d 'u=john'; echo

# 9. the hash MOR expects for any call, filters applied (run from the repository root)
MOR_GATEWAY_DEMO_KEY={DEMO_KEY} target/release/mor-gateway sign --key-env MOR_GATEWAY_DEMO_KEY --base {base} 'user_calls?u=admin&s_user=all&period_start=1700000000'

# 10. what the gateway measured (non-zero request counters)
curl -s http://127.0.0.1:{met}/metrics | grep '^mor_gateway_requests_total' | grep -v ' 0$'

Ctrl-C stops the demo."#,
        h_get = h_get.as_str(),
        h_upd = h_upd.as_str(),
        h_res = h_res.as_str(),
    );
    server::run(Plan {
        settings: Arc::new(settings),
        config_path: None,
        sim: Some((SocketAddr::from(([127, 0, 0, 1], sim)), sim_settings)),
        upgrade: false,
    })
    .map_err(|e| e.to_string())
}

const DEMO_KEY_RES: &[u8] = DEMO_RESELLER_KEY.as_bytes();

fn main() -> ExitCode {
    let cli = Cli::parse();
    mor_gateway::ops::logging::init();
    let result = match cli.cmd {
        Cmd::Run { config, upgrade } => {
            // Before anything slow: a SIGHUP/SIGUSR1/SIGUSR2 (logrotate)
            // during start-up must not end the process.
            server::hold_signals();
            Settings::load(&config)
                .map_err(|e| format!("{}: {e}", config.display()))
                .and_then(|s| {
                    server::run(Plan {
                        settings: Arc::new(s),
                        config_path: Some(config),
                        sim: None,
                        upgrade,
                    })
                    .map_err(|e| e.to_string())
                })
        }
        Cmd::Check { config, method } => match Settings::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|s| server::check(&s).map(|()| s).map_err(|e| e.to_string()))
        {
            Ok(s) => {
                match method {
                    Some(m) => print!("{}", s.policy.catalog.describe(&m)),
                    None => {
                        print!("{}", s.summary());
                        for line in server::check_directory(&s) {
                            println!("{line}");
                        }
                    }
                }
                println!("mor-gateway: configuration {} is valid", config.display());
                Ok(())
            }
            Err(e) => Err(format!(
                "configuration {} is invalid: {e}",
                config.display()
            )),
        },
        Cmd::Sign {
            key_env,
            config,
            base,
            call,
        } => sign(&key_env, config, &base, &call),
        Cmd::Demo { port } => demo(port),
        Cmd::Manpage { dir } => match dir {
            Some(d) => manpage::write_all(Cli::command(), &d).map(|files| {
                for f in files {
                    println!("{}", f.display());
                }
            }),
            None => manpage::main_page(Cli::command(), &mut std::io::stdout().lock()),
        }
        .map_err(|e| format!("manpage: {e}")),
        Cmd::Sim {
            listen,
            key_env,
            resellers,
            no_get,
            fixed_reply,
            reseller_switches,
            mor_version,
            db_url_env,
            threads,
            tls_cert,
            tls_key,
        } => {
            (|| {
                let mut st = SimSettings::new(&env_key(&key_env)?);
                st.allow_get = !no_get;
                st.fixed_reply = fixed_reply;
                if mor_version == "x8" {
                    st.version = mor_gateway::sim::rules::Version::X8;
                }
                for r in reseller_switches {
                    let parsed = r.split_once('=').and_then(|(n, v)| {
                        let (a, h) = v.split_once(',')?;
                        Some((n.to_string(), a == "1", h == "1"))
                    });
                    st.reseller_switches.push(parsed.ok_or_else(|| {
                    format!("--reseller-switches takes NAME=ALLOW_API,DISABLE_HASH_CHECKING, got '{r}'")
                })?);
                }
                if let Some(var) = db_url_env {
                    let url = env_key(&var)?;
                    st.db_url =
                        Some(String::from_utf8(url).map_err(|_| format!("{var} is not UTF-8"))?);
                }
                for r in resellers {
                    let (name, var) = r
                        .split_once('=')
                        .ok_or_else(|| format!("--reseller takes NAME=ENV_VAR, got '{r}'"))?;
                    st.resellers.push((name.to_string(), env_key(var)?));
                }
                let tls = match (tls_cert, tls_key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => return Err("--tls-cert and --tls-key go together".to_string()),
                };
                server::run_simulator(listen, st, threads, tls).map_err(|e| e.to_string())
            })()
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mor-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
