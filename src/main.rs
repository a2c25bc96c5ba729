//! `mor-gateway`: run, check, sign and demo subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use mor_gateway::config::envfile::EnvFile;
use mor_gateway::config::{Env, Settings};
use mor_gateway::core::decision::{self, Checked, Head, Verdict};
use mor_gateway::core::limits::Answer;
use mor_gateway::core::params::Params;
use mor_gateway::core::signature;
use mor_gateway::server::{self, Plan};

/// `println!` through [`emit`].
macro_rules! say {
    ($($t:tt)*) => { emit(format_args!($($t)*), true) };
}

/// `print!` through [`emit`].
macro_rules! say_raw {
    ($($t:tt)*) => { emit(format_args!($($t)*), false) };
}

mod manpage;

#[derive(Parser)]
#[command(
    name = "mor-gateway",
    version = env!("MOR_GATEWAY_VERSION"),
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
        /// Config file (every key: /usr/share/doc/mor-gateway/gateway.toml.reference).
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
        /// Read the secrets' variables from this systemd EnvironmentFile (as
        /// the service gets them), e.g. /etc/mor-gateway/secrets.env.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
        /// Print the effective rule of this method (canonical name or alias).
        #[arg(long)]
        method: Option<String>,
    },
    /// Check the config against the MOR it fronts, live, with harmless
    /// read-only calls: each upstream reachable (TLS verified), the admin
    /// key, Allow API, hash checking, Allow GET API, MOR's version, each
    /// reseller key with a listed user, MOR's database. One line per check
    /// (OK, MISMATCH, UNREACHABLE, SKIPPED); exit status 1 unless all are OK
    /// or SKIPPED. No key or valid hash is printed.
    Doctor {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Read the secrets' variables from this systemd EnvironmentFile.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// List the (client address, user) pairs the running gateway has locked
    /// out after failed hashes, or clear one, through its metrics listener
    /// (`GET /lockouts`, `POST /lockouts/clear`; it answers only
    /// metrics.admin_allow, loopback by default). Exit status 1 when the
    /// gateway cannot be asked or the pair to clear is not locked.
    Lockouts {
        /// The running gateway's config file (only metrics.listen is read).
        #[arg(short, long)]
        config: PathBuf,
        /// Unlock this pair (USER "" for calls without u).
        #[arg(long, num_args = 2, value_names = ["IP", "USER"])]
        clear: Option<Vec<String>>,
    },
    /// Explain the gateway's decision about one call, as the client sent
    /// it: route and alias, the action's rule, caller and owner, the
    /// parameters hashed in order and those left out, the keys tried, the
    /// layers and whether each enforces or reports, the verdict and the
    /// exact reply. Never prints a key; the expected hash only with
    /// --show-expected-hash. Exit status 0 when forwarded, 1 when refused.
    Explain {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Read the secrets' variables from this systemd EnvironmentFile.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
        /// Also print the hash the gateway expects with each key tried.
        #[arg(long)]
        show_expected_hash: bool,
        /// The body as sent (form or JSON).
        #[arg(short = 'd', long, value_name = "BODY", conflicts_with = "data_file")]
        data: Option<String>,
        /// Read the body from this file.
        #[arg(long, value_name = "FILE")]
        data_file: Option<PathBuf>,
        /// The Content-Type sent (default: form with a body, none without).
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// The client's address.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        /// HTTP method, e.g. POST.
        method: String,
        /// The URL or path with its query, e.g. '/billing/api/user_details_get?u=admin&...'.
        url: String,
    },
    /// Print the hash MOR expects for a call (filters applied) and a curl
    /// line to the gateway that the config lets through (none, and exit
    /// status 1, for a call the gateway would refuse).
    Sign {
        /// Environment variable holding the secret key.
        #[arg(long)]
        key_env: String,
        /// Config file whose catalogue, policies, listen address and API
        /// prefix to use (default: built in, MOR, POST only, port 8080).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Read variables (the key, the config's secrets) from this systemd
        /// EnvironmentFile, e.g. /etc/mor-gateway/secrets.env.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
        /// Base URL of the API (default: the config's first listener and
        /// api.prefix, or http://127.0.0.1:8080/billing/api).
        #[arg(long)]
        base: Option<String>,
        /// The call, e.g. 'user_details_get?u=admin&user_id=123'.
        call: String,
    },
    /// Start the gateway and the MOR simulator (`mor-sim`, a development
    /// tool, run as a process of its own) on loopback and print curl lines
    /// to try; serves until Ctrl-C.
    Demo {
        /// Gateway port; the simulator uses port+1, metrics port+2.
        #[arg(long, default_value_t = 8480)]
        port: u16,
        /// The simulator's binary (build it with `cargo build --bin
        /// mor-sim`); default: `mor-sim` beside this binary.
        #[arg(long, value_name = "PATH")]
        sim: Option<PathBuf>,
    },
    /// Print the manual page (roff), or write every page into --dir.
    #[command(hide = true)]
    Manpage {
        /// Write mor-gateway.8 and one page per command into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// With --dir: write the pages gzipped (NAME.8.gz, no name or time
        /// in the header, like gzip -9n), replacing earlier ones.
        #[arg(long, requires = "dir")]
        gzip: bool,
    },
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEMO_KEY: &str = "456789";
const DEMO_RESELLER_KEY: &str = "resellerkey";

/// Where variables come from: the process, or an `--env-file` over it.
fn environment(env_file: Option<&PathBuf>) -> Result<Box<dyn Env>, String> {
    match env_file {
        Some(p) => Ok(Box::new(EnvFile::load(p).map_err(|e| e.to_string())?)),
        None => Ok(Box::new(mor_gateway::config::ProcessEnv)),
    }
}

fn env_key(env: &dyn Env, var: &str) -> Result<Vec<u8>, String> {
    match env.var(var) {
        Some(v) if !v.is_empty() => Ok(v.into_encoded_bytes()),
        Some(_) => Err(format!("environment variable {var} is empty")),
        None => Err(format!("environment variable {var} is not set")),
    }
}

/// Loads a config file with variables from `env`.
fn load(path: &std::path::Path, env: &dyn Env) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Settings::from_toml(&text, Some(path), env).map_err(|e| e.to_string())
}

/// `lockouts`: asks the running gateway's lockout interface.
fn lockouts(config: &std::path::Path, clear: Option<&[String]>) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let addr = mor_gateway::config::metrics_listen_of(&text, config)
        .map_err(|e| e.to_string())?
        .ok_or("metrics.listen is off in this config: the lockout interface is served there")?;
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let pair = match clear {
        Some([ip, user]) => Some((ip.as_str(), user.as_str())),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let lines = rt.block_on(mor_gateway::edge::lockout_admin::ask(addr, pair))?;
    for l in lines {
        say!("{l}");
    }
    Ok(())
}

/// The built-in policy `sign` uses without a config: MOR's defaults, the
/// signing key as the admin key.
struct KeyOnly(Vec<u8>);

impl Env for KeyOnly {
    fn var(&self, _: &str) -> Option<std::ffi::OsString> {
        Some(std::os::unix::ffi::OsStringExt::from_vec(self.0.clone()))
    }
}

const SIGN_DEFAULT: &str = "listen = [\"127.0.0.1:8080\"]\n\
    [upstream]\nservers = [\"127.0.0.1:8081\"]\n\
    [secrets]\nadmin_key_env = \"KEY\"\n";

/// The URL of the config's API as a local client reaches it: the first
/// plain listener (else the first HTTPS one), a wildcard address as
/// loopback, and `api.prefix`.
fn base_of(s: &Settings) -> String {
    let (scheme, addr, default_port) = match (s.listen.first(), &s.tls) {
        (Some(a), _) => ("http", *a, 80),
        (None, Some(t)) if !t.listen.is_empty() => ("https", t.listen[0], 443),
        _ => ("http", SocketAddr::from(([127, 0, 0, 1], 80)), 80),
    };
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    let port = if addr.port() == default_port {
        String::new()
    } else {
        format!(":{}", addr.port())
    };
    format!("{scheme}://{host}{port}{}", s.policy.prefix)
}

fn sign(
    key_env: &str,
    config: Option<PathBuf>,
    env_file: Option<PathBuf>,
    base: Option<String>,
    call: &str,
) -> Result<(), String> {
    let env = environment(env_file.as_ref())?;
    let key = env_key(env.as_ref(), key_env)?;
    let settings = match &config {
        Some(p) => load(p, env.as_ref())?,
        None => Settings::from_toml(SIGN_DEFAULT, None, &KeyOnly(key.clone()))
            .map_err(|e| e.to_string())?,
    };
    let policy = &settings.policy;
    let catalog = &policy.catalog;
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
        Some(m) => say!("method  {} (rule: {})", m.name, m.auth.label()),
        None => say!("method  {method} (not catalogued: MOR's global order)"),
    }
    let sep = if query.is_empty() { "" } else { "&" };
    let base = base.unwrap_or_else(|| base_of(&settings));
    let url = format!("{}/{method}", base.trim_end_matches('/'));
    let signed = if m.is_none_or(|m| m.auth.hashed()) {
        let parts = signature::hashed_parts(catalog, m, &params).map_err(|e| e.to_string())?;
        let h = signature::digest(&parts, &key);
        let shown: Vec<String> = parts.iter().map(|(n, t)| format!("{n}={t}")).collect();
        say!(
            "hashed  {} + key",
            if shown.is_empty() {
                "(nothing)".to_string()
            } else {
                shown.join(" + ")
            }
        );
        say!("hash    {}", h.as_str());
        format!("{query}{sep}hash={}", h.as_str())
    } else {
        say!("hashed  nothing: this action takes no hash");
        query.clone()
    };
    let get_ok = policy.directory.allow_get || m.is_some_and(|m| m.get_always);
    // The call as the printed curl line sends it, through the gateway's own
    // decision (no rate limits): a line for a call it refuses helps nobody.
    let path = format!("{}/{method}", policy.prefix);
    let head = Head {
        method: if get_ok { "GET" } else { "POST" },
        path: &path,
        query: get_ok.then_some(signed.as_str()),
        content_type: (!get_ok).then_some("application/x-www-form-urlencoded"),
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let body = if get_ok { "" } else { signed.as_str() };
    // The proxy's route, every limit question answered "allowed".
    let dir = &policy.directory;
    let verdict =
        match decision::admit(policy, dir, &head).and_then(|a| a.conclude(Answer::default())) {
            Err(r) => Verdict::Refuse(r.refusal, r.info),
            Ok(a) => match decision::verify(policy, dir, &head, a, body.as_bytes()) {
                Checked::Done(v) => v,
                Checked::Pending(p) => p.conclude(Answer::default()),
            },
        };
    if let Verdict::Refuse(r, _) = verdict {
        let source = config.as_ref().map_or_else(
            || "the built-in defaults".to_string(),
            |p| p.display().to_string(),
        );
        let whence = if r.reason == mor_gateway::core::reply::Reason::AddressDenied {
            " (the curl line would come from this host, 127.0.0.1, which [access] does not admit)"
        } else {
            ""
        };
        return Err(format!(
            "the gateway refuses this call ({}: {}){whence} with {source}: no curl line",
            r.reason.label(),
            r.message()
        ));
    }
    if get_ok {
        say!("curl -s '{url}?{signed}'");
    } else {
        say!("curl -s -X POST '{url}' -d '{signed}'");
    }
    Ok(())
}

fn demo(port: u16, sim_bin: Option<PathBuf>) -> Result<(), String> {
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
    let sim_proc = start_simulator(sim_bin, SocketAddr::from(([127, 0, 0, 1], sim)), &env)?;
    let base = format!("http://127.0.0.1:{gw}/billing/api");
    let h_get = signature::compute(&["user_id"], |_| Some("123"), DEMO_KEY.as_bytes());
    let h_upd = signature::compute(
        &["user_id", "u15"],
        |n| Some(if n == "user_id" { "123" } else { "0" }),
        DEMO_KEY.as_bytes(),
    );
    let h_res = signature::compute(&["user_id"], |_| Some("5"), DEMO_KEY_RES);
    say!(
        r#"mor-gateway demo
  gateway   http://127.0.0.1:{gw}  (verifies, then forwards)
  MOR sim   http://127.0.0.1:{sim}  (mor-sim, pid {sim_pid}, admin key {DEMO_KEY})
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
        sim_pid = sim_proc.id(),
    );
    // The simulator this demo started is stopped by its pid as the demo
    // ends, however it ends.
    let sim_proc = std::sync::Mutex::new(Some(sim_proc));
    let stop_sim: server::OnExit = Arc::new(move || {
        let child = sim_proc.lock().ok().and_then(|mut c| c.take());
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    });
    server::run(Plan {
        settings: Arc::new(settings),
        config_path: None,
        upgrade: false,
        on_exit: Some(stop_sim),
    })
    .map_err(|e| e.to_string())
}

/// Starts the simulator binary (`path`, or `mor-sim` beside this binary)
/// on `addr` with the demo's keys from `env`, and waits until it listens.
fn start_simulator(
    path: Option<PathBuf>,
    addr: SocketAddr,
    env: &std::collections::HashMap<&str, &str>,
) -> Result<std::process::Child, String> {
    let path = match path {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary's directory: {e}"))?
            .with_file_name("mor-sim"),
    };
    let mut child = std::process::Command::new(&path)
        .args(["--listen", &addr.to_string()])
        .args(["--key-env", "MOR_GATEWAY_DEMO_KEY"])
        .args(["--reseller", "res1=MOR_GATEWAY_DEMO_RESELLER_KEY"])
        .envs(env.iter())
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start the MOR simulator {}: {e} (build it with `cargo build --bin mor-sim`, \
                 or name it with --sim PATH)",
                path.display()
            )
        })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the MOR simulator {} exited: {status}",
                path.display()
            ));
        }
        let probe =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200));
        if probe.is_ok() {
            return Ok(child);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the MOR simulator does not listen on {addr}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

const DEMO_KEY_RES: &[u8] = DEMO_RESELLER_KEY.as_bytes();

/// A binary with OpenSSL compiled in (feature `static`) would look for CA
/// certificates where that OpenSSL was built to (/usr/local/ssl), not where
/// this host keeps them (/etc/pki/tls on RHEL, /etc/ssl on Debian): point
/// it at the host's store with SSL_CERT_FILE / SSL_CERT_DIR, unless they
/// are set, before any thread starts. `https://` upstreams without
/// `upstream.ca_file` are verified against it (Redis' native-tls probes the
/// same places itself).
#[cfg(feature = "static")]
fn use_host_ca_store() {
    if openssl_probe::has_ssl_cert_env_vars() {
        return;
    }
    let found = openssl_probe::probe();
    if let Some(f) = found.cert_file {
        std::env::set_var("SSL_CERT_FILE", f);
    }
    if let Ok(dirs) = std::env::join_paths(found.cert_dir) {
        if !dirs.is_empty() {
            std::env::set_var("SSL_CERT_DIR", dirs);
        }
    }
}

/// Writes to standard output; a reader that has gone (`check ... | head -1`)
/// ends the process quietly with status 0, any other write error with a
/// message and status 1 (never a panic).
fn emit(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("mor-gateway: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "static")]
    use_host_ca_store();
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
                        upgrade,
                        on_exit: None,
                    })
                    .map_err(|e| e.to_string())
                })
        }
        Cmd::Check {
            config,
            env_file,
            method,
        } => match environment(env_file.as_ref())
            .and_then(|env| load(&config, env.as_ref()))
            .and_then(|s| server::check(&s).map(|()| s).map_err(|e| e.to_string()))
        {
            Ok(s) => {
                match method {
                    Some(m) => say_raw!("{}", s.policy.catalog.describe(&m)),
                    None => {
                        say_raw!("{}", s.summary());
                        if s.mor_db.is_none() {
                            for line in server::check_rollout(&s, &s.policy.directory) {
                                say!("{line}");
                            }
                        }
                        for line in server::check_directory(&s) {
                            say!("{line}");
                        }
                    }
                }
                say!("mor-gateway: configuration {} is valid", config.display());
                Ok(())
            }
            Err(e) => Err(format!(
                "configuration {} is invalid: {e}",
                config.display()
            )),
        },
        Cmd::Explain {
            config,
            env_file,
            show_expected_hash,
            data,
            data_file,
            content_type,
            client_ip,
            method,
            url,
        } => environment(env_file.as_ref())
            .and_then(|env| load(&config, env.as_ref()))
            .and_then(|s| {
                let body = match (data, data_file) {
                    (Some(d), _) => d.into_bytes(),
                    (None, Some(f)) => std::fs::read(&f)
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))?,
                    (None, None) => Vec::new(),
                };
                let content_type = content_type.or_else(|| {
                    (!body.is_empty()).then(|| "application/x-www-form-urlencoded".to_string())
                });
                let dir = mor_gateway::explain::directory(&s)?;
                let call = mor_gateway::explain::Call {
                    method: &method,
                    url: &url,
                    content_type: content_type.as_deref(),
                    body: &body,
                    client_ip,
                };
                let e = mor_gateway::explain::explain(&s, &dir, &call, show_expected_hash);
                for l in &e.lines {
                    say!("{l}");
                }
                match e.verdict {
                    Verdict::Forward(..) => Ok(()),
                    Verdict::Refuse(..) => Err("explain: the gateway refuses this call".into()),
                }
            }),
        Cmd::Doctor { config, env_file } => environment(env_file.as_ref())
            .and_then(|env| load(&config, env.as_ref()))
            .and_then(|s| {
                let findings = mor_gateway::doctor::run(&s);
                for f in &findings {
                    say!("{f}");
                }
                match mor_gateway::doctor::failures(&findings) {
                    0 => Ok(()),
                    n => Err(format!(
                        "doctor: {n} of {} checks failed against MOR",
                        findings.len()
                    )),
                }
            }),
        Cmd::Sign {
            key_env,
            config,
            env_file,
            base,
            call,
        } => sign(&key_env, config, env_file, base, &call),
        Cmd::Demo { port, sim } => demo(port, sim),
        Cmd::Lockouts { config, clear } => lockouts(&config, clear.as_deref()),
        Cmd::Manpage { dir, gzip } => match dir {
            Some(d) => manpage::write_all(Cli::command(), &d, gzip).map(|files| {
                for f in files {
                    say!("{}", f.display());
                }
            }),
            None => manpage::main_page(Cli::command(), &mut std::io::stdout().lock()),
        }
        .map_err(|e| format!("manpage: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mor-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
