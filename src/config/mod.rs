//! The gateway's configuration, in three steps: [`schema`] is the TOML file
//! as written (unknown keys refused, documented defaults), [`resolve`] does
//! every check and all the I/O (secrets, the catalogue file, DNS), and
//! [`Settings`] is what the running gateway reads. Secret values are never
//! printed.

pub mod envfile;
pub mod resolve;
pub mod schema;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use resolve::{Env, ProcessEnv};
pub use schema::{ForwardedFor, LogMode, WithoutSnapshot};

use pingora::tls::pkey::{PKey, Private};
use pingora::tls::x509::X509;

use crate::core::catalog::{Auth, CatalogError, Product};
use crate::core::directory::ConfigOwner;
use crate::core::limits::LimitSettings;
use crate::core::policy::Policy;
use crate::core::reply::ReplyMode;

/// Why a configuration could not be loaded. Every message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// File that failed.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A key has a value the gateway cannot use.
    #[error("{key}: {why}")]
    Invalid {
        /// Dotted key path, e.g. `upstream.servers[1]`.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The method catalogue is inconsistent.
    #[error("catalogue: {0}")]
    Catalog(#[from] CatalogError),
}

pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable, by name.
    Env(String),
    /// A file, whose content (minus one trailing newline) is the key.
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(v) => write!(f, "env {v}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// Upstream connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// MOR servers, used round-robin.
    pub servers: Vec<SocketAddr>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout (per read, waiting for MOR).
    pub read_timeout: Duration,
    /// Write timeout.
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Idle upstream connections kept per process.
    pub keepalive_pool_size: usize,
    /// How often each server is probed.
    pub health_check_interval: Duration,
    /// What a probe asks.
    pub probe: Probe,
    /// Failed probes in a row that take a server out.
    pub health_check_fails: usize,
    /// Passed probes in a row that bring a server back.
    pub health_check_passes: usize,
    /// Failed calls in a row that eject a server (0: never).
    pub eject_after_failures: u32,
    /// `X-Forwarded-For` handling.
    pub x_forwarded_for: ForwardedFor,
    /// Extra end-to-end request headers passed to MOR as sent.
    pub pass_headers: Vec<http::HeaderName>,
    /// Servers reached over TLS, with the name they are verified by (SNI).
    pub tls_servers: HashMap<SocketAddr, String>,
    /// CA certificates `https://` servers are verified against (None: system store).
    pub ca: Option<CaBundle>,
}

/// A health probe of one MOR server.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// A TCP connect (a TLS handshake for `https://` servers).
    Tcp,
    /// An HTTP request whose answer must have `status` and contain `body`.
    Http {
        /// `GET` or `HEAD`.
        method: http::Method,
        /// Path and query.
        path: String,
        /// `Host` (None: the server's TLS name or address).
        host: Option<String>,
        /// The expected status.
        status: http::StatusCode,
        /// Text the body must contain.
        body: Option<String>,
        /// Longest wait for the whole answer.
        timeout: Duration,
    },
}

/// CA certificates loaded from a file.
#[derive(Clone)]
pub struct CaBundle {
    /// The file.
    pub path: PathBuf,
    /// Its certificates.
    pub certs: Arc<Box<[X509]>>,
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.certs.len() == other.certs.len()
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// A certificate chain and its private key, as loaded (never printed).
pub struct CertKey {
    /// Leaf first.
    pub chain: Vec<X509>,
    /// The private key.
    pub key: PKey<Private>,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CertKey({} certificates, key redacted)",
            self.chain.len()
        )
    }
}

/// HTTPS listeners and their certificate.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// Addresses served with TLS.
    pub listen: Vec<SocketAddr>,
    /// Certificate chain file.
    pub cert_file: PathBuf,
    /// Private key file.
    pub key_file: PathBuf,
    /// What was loaded from them.
    pub material: Arc<CertKey>,
    /// A PROXY protocol header precedes the TLS handshake.
    pub proxy_protocol: bool,
    /// The handshake must be done within this long of the connection's start.
    pub handshake_timeout: Duration,
    /// Connections of one client address whose handshake is not done yet
    /// (0: only `client.max_connections_per_address` bounds them).
    pub max_handshakes_per_address: usize,
}

/// How client connections are treated.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Balancers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest wait for each read of a request (408 beyond).
    pub read_timeout: Duration,
    /// Longest wait for each write of an answer to the client.
    pub send_timeout: Duration,
    /// The whole body's time before `body_min_rate` adds to it (408 beyond).
    pub body_timeout: Duration,
    /// Each this many body bytes received add a second to `body_timeout`.
    pub body_min_rate: u64,
    /// Idle keep-alive connections are closed after this long.
    pub keepalive_timeout: Duration,
    /// The whole request header must arrive within this long (408 beyond).
    pub header_timeout: Duration,
    /// Largest request header in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Open client connections in total (0: unlimited; 503 beyond).
    pub max_connections: usize,
    /// Open client connections per client address (0: unlimited; 503
    /// beyond). A peer in `trusted_proxies` is not counted per address.
    pub max_connections_per_address: usize,
    /// IPv6 clients are one address per network of this prefix length, for
    /// every per-address decision ([`crate::core::client::group`]).
    pub ipv6_prefix: u8,
}

/// Where and how the limits are shared (`[limits.shared]`).
#[derive(Clone)]
pub struct SharedLimitSettings {
    /// The Redis client (address, credentials, TLS roots; connects lazily).
    pub client: redis::Client,
    /// The URL as configured (it never holds the password).
    pub url: String,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Longest wait per decision.
    pub timeout: Duration,
    /// Decisions stay local this long after a failure.
    pub retry_interval: Duration,
    /// The per-IP layer is shared too.
    pub per_ip: bool,
}

impl fmt::Debug for SharedLimitSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimitSettings")
            .field("url", &self.url)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry_interval)
            .field("per_ip", &self.per_ip)
            .finish_non_exhaustive()
    }
}

/// Where MOR's directory is read from (`[directory]`).
#[derive(Clone)]
pub struct MorDbSettings {
    /// The client options (address, account, password, TLS); never printed.
    pub opts: mysql_async::Opts,
    /// The URL as configured (it never holds the password).
    pub url: String,
    /// MOR's database (from the URL).
    pub database: String,
    /// TLS on.
    pub tls: bool,
    /// The users table.
    pub users_table: String,
    /// The view over the five conflines rows.
    pub settings_view: String,
    /// How often the snapshot is refreshed.
    pub refresh_interval: Duration,
    /// Longest a refresh may take.
    pub timeout: Duration,
    /// Before the first snapshot.
    pub without_snapshot: WithoutSnapshot,
}

impl fmt::Debug for MorDbSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MorDbSettings")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("users_table", &self.users_table)
            .field("settings_view", &self.settings_view)
            .field("refresh_interval", &self.refresh_interval)
            .field("timeout", &self.timeout)
            .field("without_snapshot", &self.without_snapshot)
            .finish_non_exhaustive()
    }
}

/// The metrics listener a configuration text names (None: off), read
/// without its secrets or any other key's checks: for `mor-gateway
/// lockouts`, which only talks to the running gateway.
pub fn metrics_listen_of(text: &str, path: &Path) -> Result<Option<SocketAddr>, ConfigError> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        metrics: schema::Metrics,
    }
    let raw: Only = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: parse_message(text, &e),
    })?;
    match raw.metrics.listen.as_str() {
        "" => Ok(None),
        s => resolve::parse_listen("metrics.listen", s).map(Some),
    }
}

/// 12 hex digits of the SHA-1 of a configuration text.
pub fn digest(text: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = hex::encode(Sha1::digest(text.as_bytes()));
    h.truncate(12);
    h
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A short digest of the configuration text (12 hex digits of its
    /// SHA-1; secrets are never in the text), to tell configurations apart.
    pub digest: String,
    /// Product whose catalogue entries are served.
    pub product: Product,
    /// Gateway listen addresses (plain HTTP).
    pub listen: Vec<SocketAddr>,
    /// A PROXY protocol header precedes each request on the plain listeners.
    pub proxy_protocol: bool,
    /// HTTPS listeners (None: no TLS).
    pub tls: Option<TlsListen>,
    /// Worker threads (None: one per CPU).
    pub threads: Option<usize>,
    /// Per-connection L4 read buffer of the gateway listeners (0: unbuffered).
    pub read_buffer_bytes: usize,
    /// Work-stealing tokio runtime (false: pingora's per-thread runtimes).
    pub work_stealing: bool,
    /// How long calls in flight may take to finish after SIGTERM or an upgrade.
    pub shutdown_grace: Duration,
    /// Where a `run --upgrade` process receives the listening sockets.
    pub upgrade_sock: PathBuf,
    /// Client connections: trusted balancers, timeouts.
    pub client: ClientSettings,
    /// Reply mode.
    pub reply_mode: ReplyMode,
    /// Upstream MOR servers and timeouts.
    pub upstream: Upstream,
    /// Largest request body buffered (413 beyond).
    pub max_body_bytes: usize,
    /// All request bodies buffered before their verdicts, together (503 beyond).
    pub max_buffered_bytes: usize,
    /// The bodies of one client address, together (429 beyond).
    pub max_buffered_bytes_per_address: usize,
    /// What the decision core reads: policies, keys, owners, catalogue.
    pub policy: Arc<Policy>,
    /// Where the admin key came from.
    pub admin_key_source: SecretSource,
    /// The configured resellers (the static directory's owners).
    pub resellers: Vec<ConfigOwner>,
    /// Where each reseller's key came from (same order as `resellers`).
    pub reseller_key_sources: Vec<SecretSource>,
    /// MOR's database, when `[directory]` is set.
    pub mor_db: Option<MorDbSettings>,
    /// The catalogue extension file merged into the built-in one, if any.
    pub catalog_file: Option<PathBuf>,
    /// Rate limits.
    pub limits: LimitSettings,
    /// Limits shared through Redis (`[limits.shared]`), if on.
    pub shared_limits: Option<SharedLimitSettings>,
    /// Metrics listener (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Client networks the lockout admin interface answers (default: loopback).
    pub metrics_admin_allow: Vec<ipnet::IpNet>,
    /// Access log mode.
    pub access_log: LogMode,
    /// Access log file (mode = file).
    pub access_log_path: Option<PathBuf>,
}

impl Settings {
    /// Loads and validates a config file, secrets from the process environment.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, Some(path), &ProcessEnv)
    }

    /// Parses and validates config text; `path` is used in messages and to
    /// resolve a relative `catalog_file`; `*_env` secrets come from `env`.
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        env: &dyn Env,
    ) -> Result<Settings, ConfigError> {
        let shown = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<built-in>"));
        let raw: schema::File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown,
            message: parse_message(text, &e),
        })?;
        let mut s = resolve::resolve(raw, path, env)?;
        s.digest = digest(text);
        Ok(s)
    }

    /// The keys read only when the gateway starts whose values differ
    /// between `self` (in force) and `new` (a reload): they take effect on
    /// restart, and a reload says so, naming them.
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let tls_listen = |s: &Settings| s.tls.as_ref().map(|t| t.listen.clone());
        [
            ("listen", self.listen != new.listen),
            ("tls.listen", tls_listen(self) != tls_listen(new)),
            ("metrics.listen", self.metrics_listen != new.metrics_listen),
            ("threads", self.threads != new.threads),
            ("work_stealing", self.work_stealing != new.work_stealing),
            ("shutdown_grace", self.shutdown_grace != new.shutdown_grace),
            ("upgrade_sock", self.upgrade_sock != new.upgrade_sock),
            (
                "read_buffer_bytes",
                self.read_buffer_bytes != new.read_buffer_bytes,
            ),
            (
                "upstream.keepalive_pool_size",
                self.upstream.keepalive_pool_size != new.upstream.keepalive_pool_size,
            ),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect()
    }

    /// A human summary of what would be served (for `check`); no secret values.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let p = &self.policy;
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "product        {}", word(&self.product));
        let _ = writeln!(
            s,
            "listen         {}{}",
            list(&self.listen),
            if self.proxy_protocol {
                " (PROXY protocol)"
            } else {
                ""
            }
        );
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "tls listen     {} (TLS 1.2/1.3, certificate {}, key {}; reloaded on SIGHUP; handshake within {}, {} pending per client address)",
                list(&t.listen),
                t.cert_file.display(),
                t.key_file.display(),
                humantime::format_duration(t.handshake_timeout),
                match t.max_handshakes_per_address {
                    0 => "unlimited".to_string(),
                    n => n.to_string(),
                }
            );
        }
        if !self.upstream.tls_servers.is_empty() {
            let _ = writeln!(
                s,
                "upstream tls   {} server(s) over HTTPS, verified against {}",
                self.upstream.tls_servers.len(),
                self.upstream
                    .ca
                    .as_ref()
                    .map_or("the system store".to_string(), |c| c
                        .path
                        .display()
                        .to_string())
            );
        }
        let _ = writeln!(
            s,
            "upstreams      {} (round-robin)",
            list(&self.upstream.servers)
        );
        let _ = writeln!(
            s,
            "timeouts       connect {}, read {}, write {}, idle {}",
            dur(self.upstream.connect_timeout),
            dur(self.upstream.read_timeout),
            dur(self.upstream.write_timeout),
            dur(self.upstream.idle_timeout)
        );
        let _ = writeln!(s, "api prefix     {}", p.prefix);
        let d = &p.directory;
        let a = d.admin();
        let _ = writeln!(
            s,
            "policy         unknown_methods = {}, undetermined = {}, rest_v2 = {}, other_paths = {}",
            word(&p.unknown_methods),
            word(&p.undetermined),
            word(&p.rest_v2),
            word(&p.other_paths)
        );
        let _ = writeln!(
            s,
            "mor version    {} (where MOR X8 and newer wiki pages differ: did_subscription_stop, did_device_assign, dids_get)",
            p.catalog.version().label()
        );
        let on = |b: bool| if b { "on" } else { "off" };
        let _ = writeln!(
            s,
            "switches       static config: admin: Allow API {}, hash checking {}; Allow GET API {} (global)",
            on(a.allow_api),
            on(!a.hash_off),
            on(d.allow_get)
        );
        let _ = writeln!(s, "reply mode     {}", word(&self.reply_mode));
        let c = &self.client;
        let _ = writeln!(
            s,
            "clients        header within {} and {} bytes, read timeout {}, keep-alive {}, {} trusted balancer(s); shutdown grace {}; upgrade socket {}",
            dur(c.header_timeout),
            c.max_header_bytes,
            dur(c.read_timeout),
            dur(c.keepalive_timeout),
            c.trusted_proxies.len(),
            dur(self.shutdown_grace),
            self.upgrade_sock.display()
        );
        let cap = |n: usize| {
            if n == 0 {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        let _ = writeln!(
            s,
            "connections    {} open at most, {} per client address (IPv6: per /{})",
            cap(c.max_connections),
            cap(c.max_connections_per_address),
            c.ipv6_prefix
        );
        let _ = writeln!(
            s,
            "max body       {} bytes; {} buffered at most, {} per client address; within {} + 1s per {} bytes",
            self.max_body_bytes,
            self.max_buffered_bytes,
            self.max_buffered_bytes_per_address,
            humantime::format_duration(c.body_timeout),
            c.body_min_rate
        );
        let _ = writeln!(
            s,
            "admin key      from {} (value not shown)",
            self.admin_key_source
        );
        for (r, src) in self.resellers.iter().zip(&self.reseller_key_sources) {
            let _ = writeln!(
                s,
                "reseller       {} key from {src} (value not shown), {} users{}; Allow API {}, hash checking {}",
                r.name,
                r.users.len(),
                if r.uniquehash.is_some() {
                    ", uniquehash set"
                } else {
                    ""
                },
                on(r.allow_api),
                on(!r.hash_off)
            );
        }
        let _ = writeln!(
            s,
            "unlisted users checked against the admin key and the {} reseller key(s) (static config)",
            self.resellers.len()
        );
        if let Some(db) = &self.mor_db {
            let _ = writeln!(
                s,
                "directory      {} (TLS {}), tables {} and {}, refreshed every {} (timeout {}); before the first snapshot: {}",
                db.url,
                on(db.tls),
                db.users_table,
                db.settings_view,
                dur(db.refresh_interval),
                dur(db.timeout),
                word(&db.without_snapshot)
            );
        }
        let _ = writeln!(
            s,
            "catalogue      {} methods, {} aliases (built in{})",
            p.catalog.len(),
            p.catalog.alias_count(),
            self.catalog_file
                .as_ref()
                .map(|p| format!(", extended by {}", p.display()))
                .unwrap_or_default()
        );
        let by_rule = |a: Auth| {
            let names: Vec<&str> = self
                .policy
                .catalog
                .methods()
                .iter()
                .filter(|m| m.auth == a)
                .map(|m| m.name.as_str())
                .collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        let _ = writeln!(
            s,
            "username-only  refused (MOR serves them with u alone): {}",
            by_rule(Auth::UsernameOnly)
        );
        let _ = writeln!(s, "refused        {}", by_rule(Auth::Refuse));
        let _ = writeln!(
            s,
            "no hash        login: {}; balance: {}; no_auth: {}; unsigned: {}",
            by_rule(Auth::Login),
            by_rule(Auth::Balance),
            by_rule(Auth::NoAuth),
            by_rule(Auth::Unsigned)
        );
        let _ = writeln!(
            s,
            "undetermined   hash list not documented, api.undetermined = {}: {}",
            word(&p.undetermined),
            by_rule(Auth::Undetermined)
        );
        let l = &self.limits;
        if let Some(sh) = &self.shared_limits {
            let _ = writeln!(
                s,
                "shared limits  {}, key prefix \"{}\", timeout {}, retry every {}, per-IP limit {}",
                sh.url,
                sh.key_prefix,
                dur(sh.timeout),
                dur(sh.retry_interval),
                if sh.per_ip { "shared" } else { "local" }
            );
        }
        let _ = writeln!(
            s,
            "limits         per IP {}; per user {}; {} per-method and {} per-method-user quota(s); {} exempt; lockout {}; {} keys tracked at most",
            quota(l.per_ip.as_ref()),
            quota(l.per_user.as_ref()),
            l.per_method.len(),
            l.per_method_user.len(),
            l.exempt.len(),
            l.lockout.as_ref().map_or("off".to_string(), |k| format!(
                "after {} failed hashes within {}, for {}",
                k.failures,
                dur(k.window),
                dur(k.cooloff)
            )),
            l.max_tracked_keys
        );
        let nets = |v: &[ipnet::IpNet]| match v.len() {
            0 => "none".to_string(),
            _ => v
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let acc = &p.access;
        let _ = writeln!(
            s,
            "access         global: allow {}, deny {}; {} owner(s) with lists{}",
            if acc.global.allow.is_empty() {
                "every address".to_string()
            } else {
                nets(&acc.global.allow)
            },
            nets(&acc.global.deny),
            acc.owner_names().count(),
            match acc.owner_names().collect::<Vec<_>>() {
                v if v.is_empty() => String::new(),
                v => format!(" ({})", v.join(", ")),
            }
        );
        let _ = writeln!(
            s,
            "metrics        {}; lockout admin (/lockouts) answers {}",
            self.metrics_listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            nets(&self.metrics_admin_allow)
        );
        let _ = writeln!(
            s,
            "access log     {}{}",
            word(&self.access_log),
            self.access_log_path
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default()
        );
        s
    }
}

/// toml's message, with the key named in full and an example when the
/// value was meant to be a duration.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let mut m = e.to_string().trim_end().to_string();
    if m.contains("expected a duration") {
        let key = e.span().and_then(|s| key_at(text, s.start));
        m.push_str(&format!(
            "\n{}a duration is a quoted number with its unit, e.g. \"30s\", \"500ms\", \"2m\" or \"1h 30m\"",
            key.map(|k| format!("{k}: ")).unwrap_or_default()
        ));
    }
    m
}

/// The dotted key whose value starts at byte `at` of `text` (its table
/// header and the name before `=` on that line), when the line has one.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (name, _) = text.get(line_start..at)?.split_once('=')?;
    let name = name.trim().trim_matches('"');
    if name.is_empty() {
        return None;
    }
    let table = before[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .map(|t| t.trim_matches('[').trim().to_string())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{name}"),
        _ => name.to_string(),
    })
}

/// A setting's value as the config file spells it (`"forward"`, `"MOR"`).
fn word<T: serde::Serialize>(v: &T) -> String {
    match toml::Value::try_from(v) {
        Ok(toml::Value::String(w)) => w,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// A duration as the config file spells it (`30s`, `1m 30s`, `250ms`).
fn dur(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A rate limit in words: `10/s, bursts of 20`, or `off`.
fn quota(q: Option<&crate::core::limits::QuotaSpec>) -> String {
    q.map_or("off".to_string(), |q| {
        format!("{}/s, bursts of {}", q.per_second, q.burst)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(extra: &str) -> String {
        format!(
            r#"
listen = ["127.0.0.1:0"]
[upstream]
servers = ["127.0.0.1:1"]
[secrets]
admin_key_env = "MORGW_TEST_KEY"
{extra}
"#
        )
    }

    fn env() -> std::collections::HashMap<&'static str, &'static str> {
        std::collections::HashMap::from([("MORGW_TEST_KEY", "456789")])
    }

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, None, &env())
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let s = load(&base("")).unwrap();
        assert_eq!(s.policy.prefix, "/billing/api");
        let d = &s.policy.directory;
        assert!(d.admin().allow_api && !d.allow_get && !d.admin().hash_off);
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert_eq!(
            s.policy.directory.admin().key.as_ref().map(|k| k.expose()),
            Some(&b"456789"[..])
        );
        assert_eq!(s.reply_mode, ReplyMode::Mor);
    }

    #[test]
    fn a_quota_governor_would_overflow_is_refused() {
        // 1e-9/s with a burst of 20: 2e10 s of burst window, past u64 ns.
        let q = "[limits.per_ip]\nper_second = 1e-9\nburst = 20\n";
        let msg = load(&base(q)).unwrap_err().to_string();
        assert!(
            msg.contains("limits.per_ip") && msg.contains("burst"),
            "{msg}"
        );
        // The largest window that fits still loads.
        let q = "[limits.per_ip]\nper_second = 1e-8\nburst = 1\n";
        assert!(load(&base(q)).is_ok());
    }

    #[test]
    fn an_alias_and_its_method_in_one_table_are_refused_naming_both() {
        for table in ["per_method", "per_method_user"] {
            let q = format!(
                "[limits.{table}]\nuser_details = {{ per_second = 1.0, burst = 1 }}\nuser_details_get = {{ per_second = 5.0, burst = 5 }}\n"
            );
            let msg = load(&base(&q)).unwrap_err().to_string();
            assert!(
                msg.contains("user_details'") && msg.contains("'user_details_get'"),
                "{table}: {msg}"
            );
        }
        let q = "[limits.per_method]\nuser_details = { per_second = 1.0, burst = 1 }\n[limits.per_method_user]\nuser_details_get = { per_second = 1.0, burst = 1 }\n";
        assert!(load(&base(q)).is_ok(), "one name per table is fine");
    }

    #[test]
    fn a_duration_without_its_unit_names_the_key_and_shows_an_example() {
        for v in ["30", "\"30\"", "\"30 parsecs\""] {
            let text = base(&format!("[client]\nheader_timeout = {v}\n"));
            let msg = load(&text).unwrap_err().to_string();
            assert!(msg.contains("client.header_timeout: "), "{msg}");
            assert!(msg.contains("\"30s\""), "{msg}");
        }
    }

    #[test]
    fn every_restart_only_key_is_named_when_it_changes() {
        let old = load(&base("")).unwrap();
        assert!(old.restart_only_changes(&old.clone()).is_empty());
        let edits = [
            ("listen", base("").replace("127.0.0.1:0", "127.0.0.1:1")),
            (
                "metrics.listen",
                base("[metrics]\nlisten = \"127.0.0.1:9\"\n"),
            ),
            ("threads", format!("threads = 3\n{}", base(""))),
            (
                "work_stealing",
                format!("work_stealing = true\n{}", base("")),
            ),
            (
                "shutdown_grace",
                format!("shutdown_grace = \"3s\"\n{}", base("")),
            ),
            (
                "upgrade_sock",
                format!("upgrade_sock = \"/tmp/x.sock\"\n{}", base("")),
            ),
            (
                "read_buffer_bytes",
                format!("read_buffer_bytes = 131072\n{}", base("")),
            ),
            (
                "upstream.keepalive_pool_size",
                base("").replace("[upstream]\n", "[upstream]\nkeepalive_pool_size = 7\n"),
            ),
        ];
        for (key, text) in edits {
            let new = load(&text).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(old.restart_only_changes(&new), vec![key], "{key}");
        }
        // A key that reloads live is not named.
        let new = load(&base("[client]\nmax_connections = 500\n")).unwrap();
        assert!(old.restart_only_changes(&new).is_empty());
    }

    #[test]
    fn the_summary_speaks_in_the_config_words() {
        let text = base("[limits.per_ip]\nper_second = 10.0\nburst = 20\n[limits.lockout]\nfailures = 5\nwindow = \"1m\"\ncooloff = \"5m\"\n");
        let s = load(&text).unwrap().summary();
        for debug in [
            "Some(",
            "QuotaSpec",
            "Lockout {",
            "Forward",
            "Unchecked",
            "Mor\n",
            "Stdout",
        ] {
            assert!(!s.contains(debug), "{debug} in:\n{s}");
        }
        assert!(s.contains("per IP 10/s, bursts of 20"), "{s}");
        assert!(
            s.contains("lockout after 5 failed hashes within 1m, for 5m"),
            "{s}"
        );
        assert!(s.contains("unknown_methods = forward"), "{s}");
        assert!(s.contains("product        MOR"), "{s}");
        assert!(s.contains("access log     stdout"), "{s}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&base("[api]\nalow_get = true\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("alow_get"), "{msg}");
    }

    #[test]
    fn secret_never_in_debug_or_summary() {
        let s = load(&base("")).unwrap();
        assert!(!format!("{s:?}").contains("456789"));
        assert!(!s.summary().contains("456789"));
    }

    #[test]
    fn missing_env_secret_is_named() {
        let text = base("").replace("MORGW_TEST_KEY", "MORGW_SURELY_UNSET_VAR");
        let msg = load(&text).unwrap_err().to_string();
        assert!(msg.contains("MORGW_SURELY_UNSET_VAR"), "{msg}");
    }

    #[test]
    fn reseller_users_must_be_unique() {
        let extra = r#"
[[resellers]]
name = "r1"
key_env = "MORGW_TEST_KEY"
users = ["a"]
[[resellers]]
name = "r2"
key_env = "MORGW_TEST_KEY"
users = ["a"]
"#;
        let msg = load(&base(extra)).unwrap_err().to_string();
        assert!(
            msg.contains("resellers[1].users") && msg.contains("'a'"),
            "{msg}"
        );
    }

    #[test]
    fn access_lists_are_checked_naming_the_key() {
        let err = |extra: &str| load(&base(extra)).unwrap_err().to_string();
        let msg = err("[access]\nallow = [\"10.0.0.0/8\", \"10.1.2.3/8\"]\n");
        assert!(
            msg.contains("access.allow[1]")
                && msg.contains("host bits")
                && msg.contains("10.0.0.0/8"),
            "{msg}"
        );
        let msg = err("[access]\ndeny = [\"10.0.0.300\"]\n");
        assert!(
            msg.contains("access.deny[0]") && msg.contains("not a CIDR"),
            "{msg}"
        );
        let msg = err("[access.owners.res1]\nallow = [\"2001:db8::1/32\"]\n");
        assert!(msg.contains("access.owners.res1.allow[0]"), "{msg}");
        let msg = err("[access.owners.Res1]\n[access.owners.res1]\n");
        assert!(
            msg.contains("access.owners.res1") && msg.contains("same owner"),
            "{msg}"
        );
        let msg = err("[access]\nallowed = []\n");
        assert!(msg.contains("allowed"), "{msg}");
        let msg = err("[metrics]\nadmin_allow = [\"localhost\"]\n");
        assert!(msg.contains("metrics.admin_allow[0]"), "{msg}");
        let s = load(&base(
            "[access]\nallow = [\"192.0.2.7\", \"::ffff:198.51.100.0/120\", \"2001:db8::/32\"]\n[access.owners.admin]\ndeny = [\"0.0.0.0/0\"]\n",
        ))
        .unwrap();
        let a = &s.policy.access;
        let shown: Vec<String> = a.global.allow.iter().map(|n| n.to_string()).collect();
        // A bare address is its own network; a mapped network is IPv4.
        assert_eq!(shown, ["192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32"]);
        assert_eq!(a.owner_names().collect::<Vec<_>>(), ["admin"]);
        assert!(s.summary().contains("1 owner(s) with lists (admin)"));
        // Loopback only by default.
        let d = load(&base("")).unwrap();
        let nets: Vec<String> = d
            .metrics_admin_allow
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
        assert!(d.policy.access.is_open());
    }

    #[test]
    fn alias_to_unknown_method_refused() {
        let msg = load(&base("[api.aliases]\nold = \"nope_get\"\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("api.aliases.old"), "{msg}");
    }

    #[test]
    fn bad_limits_are_named() {
        let msg = load(&base(
            "[limits.per_method]\nuser_calls_get = { per_second = 0, burst = 1 }\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("limits.per_method.user_calls_get"), "{msg}");
        let msg = load(&base(
            "[limits.per_method]\nno_such = { per_second = 1, burst = 1 }\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("no_such"), "{msg}");
    }

    #[test]
    fn alias_limit_keys_are_canonicalised() {
        let s = load(&base(
            "[limits.per_method]\nuser_calls = { per_second = 1, burst = 2 }\n",
        ))
        .unwrap();
        assert!(s.limits.per_method.contains_key("user_calls_get"));
    }

    #[test]
    fn shared_limits_are_checked_and_never_show_the_password() {
        let env = std::collections::HashMap::from([
            ("MORGW_TEST_KEY", "456789"),
            ("MORGW_REDIS_PW", "redis-pw-123"),
        ]);
        let s = Settings::from_toml(
            &base("[limits.shared]\nurl = \"redis://10.0.0.5:6380/2\"\npassword_env = \"MORGW_REDIS_PW\"\n"),
            None,
            &env,
        )
        .unwrap();
        let sh = s.shared_limits.as_ref().unwrap();
        assert_eq!(sh.url, "redis://10.0.0.5:6380/2");
        assert_eq!(sh.key_prefix, "mor-gateway:");
        assert_eq!(sh.timeout, Duration::from_millis(50));
        assert_eq!(sh.retry_interval, Duration::from_secs(1));
        assert!(!sh.per_ip);
        let shown = format!("{s:?}{}", s.summary());
        assert!(shown.contains("redis://10.0.0.5:6380/2"), "{shown}");
        assert!(!shown.contains("redis-pw-123"), "{shown}");
        assert!(
            load(&base("")).unwrap().shared_limits.is_none(),
            "off by default"
        );

        for (table, key) in [
            ("url = \"http://x\"", "limits.shared.url"),
            ("url = \"redis://:pw@h:1\"", "limits.shared.url"),
            ("url = \"redis://u:pw@h:1\"", "limits.shared.url"),
            (
                "url = \"redis://h\"\ntimeout = \"0s\"",
                "limits.shared.timeout",
            ),
            (
                "url = \"redis://h\"\nretry_interval = \"0s\"",
                "limits.shared.retry_interval",
            ),
            (
                "url = \"redis://h\"\npassword_env = \"UNSET_VAR_X\"",
                "limits.shared.password",
            ),
            (
                "url = \"redis://h\"\nca_file = \"/etc/hostname\"",
                "limits.shared.ca_file",
            ),
            (
                "url = \"rediss://h\"\nca_file = \"/no/such.pem\"",
                "limits.shared.ca_file",
            ),
            (
                "url = \"redis://h\"\nkey_prefix = \"{}\"",
                "limits.shared.key_prefix",
            ),
            ("url = \"redis://h\"\nno_such_key = 1", "no_such_key"),
        ] {
            let table = table.replace("{}", &"x".repeat(65));
            let msg = load(&base(&format!("[limits.shared]\n{table}\n")))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{table}: {msg}");
        }
    }

    #[test]
    fn nonsense_health_settings_are_refused_naming_the_key() {
        let up = |k: &str| base("").replace("[upstream]\n", &format!("[upstream]\n{k}\n"));
        for (k, key) in [
            ("health_check = \"ping\"", "upstream.health_check"),
            (
                "health_check_method = \"POST\"",
                "upstream.health_check_method",
            ),
            (
                "health_check_path = \"billing\"",
                "upstream.health_check_path",
            ),
            ("health_check_host = \"a b\"", "upstream.health_check_host"),
            ("health_check_status = 99", "upstream.health_check_status"),
            ("health_check_status = 600", "upstream.health_check_status"),
            (
                "health_check_timeout = \"0s\"",
                "upstream.health_check_timeout",
            ),
            ("health_check_fails = 0", "upstream.health_check_fails"),
            ("health_check_passes = 0", "upstream.health_check_passes"),
            (
                "health_check_method = \"HEAD\"\nhealth_check_body = \"x\"",
                "upstream.health_check_body",
            ),
        ] {
            let msg = load(&up(k)).unwrap_err().to_string();
            assert!(msg.contains(key), "{k}: {msg}");
        }
        let s = load(&base("")).unwrap();
        assert!(matches!(
            &s.upstream.probe,
            Probe::Http { path, status, .. } if path == "/billing/api/system_version_get" && status.as_u16() == 200
        ));
        assert_eq!(s.upstream.eject_after_failures, 5);
        let s = load(&up("health_check = \"tcp\"\neject_after_failures = 0")).unwrap();
        assert_eq!(
            (s.upstream.probe, s.upstream.eject_after_failures),
            (Probe::Tcp, 0)
        );
    }
}
