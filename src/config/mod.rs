//! The gateway's TOML configuration: parsing (unknown keys refused), secret
//! resolution (`*_env` / `*_file`, never printed) and validation into the
//! resolved [`Settings`] the rest of the gateway reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::core::catalog::{Auth, Catalog, CatalogError, MethodPatch, Product};

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

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// How refusals are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyMode {
    /// Like MOR: HTTP 200 with the XML error (transport errors keep 413/502).
    Mor,
    /// Proper status codes (400/403/404/405/413/429/502) with the same XML body.
    Http,
}

/// What to do with a request whose path is not a catalogued API method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathPolicy {
    /// Answer with a refusal; nothing is forwarded.
    Refuse,
    /// Forward (for unknown API methods: after verifying the hash by the global order).
    Forward,
}

/// Where the access log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// No access log.
    Off,
    /// One JSON line per request on standard output.
    Stdout,
    /// One JSON line per request appended to `access_log.path`.
    File,
}

/// The file as written (see `config/gateway.toml` for every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_product")]
    product: Product,
    listen: Vec<String>,
    #[serde(default = "default_reply_mode")]
    reply_mode: ReplyMode,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default = "d_read_buffer")]
    read_buffer_bytes: usize,
    #[serde(default)]
    work_stealing: bool,
    upstream: RawUpstream,
    #[serde(default)]
    api: RawApi,
    secrets: RawSecrets,
    #[serde(default)]
    resellers: Vec<RawReseller>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    access_log: RawAccessLog,
}

fn d_read_buffer() -> usize {
    0
}
fn default_product() -> Product {
    Product::Mor
}
fn default_reply_mode() -> ReplyMode {
    ReplyMode::Mor
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    servers: Vec<String>,
    #[serde(default = "d_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "d_read_ms")]
    read_timeout_ms: u64,
    #[serde(default = "d_write_ms")]
    write_timeout_ms: u64,
    #[serde(default = "d_idle_s")]
    idle_timeout_s: u64,
    #[serde(default = "d_pool")]
    keepalive_pool_size: usize,
    #[serde(default = "d_xff")]
    x_forwarded_for: ForwardedFor,
}

/// How `X-Forwarded-For` is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedFor {
    /// The client's address only: the gateway is the edge, anything the
    /// client sent is dropped (it could be spoofed).
    Replace,
    /// Append the client's address to the incoming header (behind a trusted
    /// load balancer that sets it).
    Append,
}

fn d_xff() -> ForwardedFor {
    ForwardedFor::Replace
}
fn d_connect_ms() -> u64 {
    2000
}
fn d_read_ms() -> u64 {
    30_000
}
fn d_write_ms() -> u64 {
    30_000
}
fn d_idle_s() -> u64 {
    60
}
fn d_pool() -> usize {
    128
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default = "d_prefix")]
    prefix: String,
    #[serde(default = "d_true")]
    allow_api: bool,
    #[serde(default)]
    allow_get: bool,
    #[serde(default = "d_true")]
    verify_hash: bool,
    #[serde(default = "d_forward")]
    unknown_methods: PathPolicy,
    #[serde(default = "d_refuse")]
    rest_v2: PathPolicy,
    #[serde(default = "d_refuse")]
    other_paths: PathPolicy,
    #[serde(default = "d_body")]
    max_body_bytes: usize,
    #[serde(default)]
    catalog_file: Option<PathBuf>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    methods: BTreeMap<String, MethodPatch>,
}
impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            prefix: d_prefix(),
            allow_api: true,
            allow_get: false,
            verify_hash: true,
            unknown_methods: d_forward(),
            rest_v2: d_refuse(),
            other_paths: d_refuse(),
            max_body_bytes: d_body(),
            catalog_file: None,
            aliases: BTreeMap::new(),
            methods: BTreeMap::new(),
        }
    }
}
fn d_prefix() -> String {
    "/billing/api".into()
}
fn d_true() -> bool {
    true
}
fn d_forward() -> PathPolicy {
    PathPolicy::Forward
}
fn d_refuse() -> PathPolicy {
    PathPolicy::Refuse
}
fn d_body() -> usize {
    1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default)]
    admin_key_env: Option<String>,
    #[serde(default)]
    admin_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReseller {
    name: String,
    #[serde(default)]
    key_env: Option<String>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    uniquehash: Option<String>,
}

/// A GCRA quota: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    exempt: Vec<String>,
    #[serde(default)]
    per_ip: Option<QuotaSpec>,
    #[serde(default)]
    per_user: Option<QuotaSpec>,
    #[serde(default)]
    per_method: BTreeMap<String, QuotaSpec>,
    #[serde(default)]
    per_method_user: BTreeMap<String, QuotaSpec>,
    #[serde(default = "d_max_keys")]
    max_tracked_keys: usize,
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    lockout: Option<RawLockout>,
}
fn d_max_keys() -> usize {
    100_000
}
impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            exempt: Vec::new(),
            per_ip: None,
            per_user: None,
            per_method: BTreeMap::new(),
            per_method_user: BTreeMap::new(),
            max_tracked_keys: d_max_keys(),
            headers: false,
            lockout: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockout {
    failures: u32,
    window_s: u64,
    cooloff_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "d_metrics_listen")]
    listen: Option<String>,
}
impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: d_metrics_listen(),
        }
    }
}
fn d_metrics_listen() -> Option<String> {
    Some("127.0.0.1:9464".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    #[serde(default = "d_log_mode")]
    mode: LogMode,
    #[serde(default)]
    path: Option<PathBuf>,
}
impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog {
            mode: d_log_mode(),
            path: None,
        }
    }
}
fn d_log_mode() -> LogMode {
    LogMode::Stdout
}

/// An API secret key. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps key bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Secret(Arc::from(bytes))
    }
    /// The key bytes, for signing only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
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

/// A reseller tenant: its own key and the usernames it owns.
#[derive(Debug, Clone)]
pub struct Reseller {
    /// The reseller's own MOR username.
    pub name: String,
    /// Its API secret key.
    pub key: Secret,
    /// Where the key came from (for `check`).
    pub key_source: SecretSource,
    /// Usernames of its users.
    pub users: Vec<String>,
    /// Its uniquehash (the `id` of user_register), if configured.
    pub uniquehash: Option<String>,
}

/// Upstream connection settings.
#[derive(Debug, Clone)]
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
    /// `X-Forwarded-For` handling.
    pub x_forwarded_for: ForwardedFor,
}

/// Rate-limit configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Sources never limited.
    pub exempt: Vec<IpNet>,
    /// Per client IP, checked before the hash.
    pub per_ip: Option<QuotaSpec>,
    /// Per verified user (`u`).
    pub per_user: Option<QuotaSpec>,
    /// Per canonical method, all users together.
    pub per_method: HashMap<String, QuotaSpec>,
    /// Per canonical method and verified user.
    pub per_method_user: HashMap<String, QuotaSpec>,
    /// Hard cap on tracked keys per keyed limiter.
    pub max_tracked_keys: usize,
    /// Send RateLimit-* headers on allowed calls.
    pub headers: bool,
    /// Failed-hash lockout by (IP, user).
    pub lockout: Option<Lockout>,
}

/// Failed-hash lockout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Failures that trip the lockout.
    pub failures: u32,
    /// Window the failures are counted in.
    pub window: Duration,
    /// How long the pair is refused once tripped.
    pub cooloff: Duration,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// File it was loaded from (None: built in).
    pub source: Option<PathBuf>,
    /// Product whose catalogue entries are served.
    pub product: Product,
    /// Gateway listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker threads (None: one per CPU).
    pub threads: Option<usize>,
    /// Per-connection L4 read buffer of the gateway listeners (0: unbuffered).
    pub read_buffer_bytes: usize,
    /// Work-stealing tokio runtime (false: pingora's per-thread runtimes).
    pub work_stealing: bool,
    /// Reply mode.
    pub reply_mode: ReplyMode,
    /// Upstream MOR servers and timeouts.
    pub upstream: Upstream,
    /// API path prefix without trailing slash, e.g. `/billing/api`.
    pub prefix: String,
    /// MOR "Allow API".
    pub allow_api: bool,
    /// MOR "Allow GET API".
    pub allow_get: bool,
    /// Verify hashes (MOR "Disable hash checking" off).
    pub verify_hash: bool,
    /// Unknown API methods.
    pub unknown_methods: PathPolicy,
    /// `/api/v2/...` REST paths.
    pub rest_v2: PathPolicy,
    /// Paths outside the API prefix.
    pub other_paths: PathPolicy,
    /// Largest request body buffered (413 beyond).
    pub max_body_bytes: usize,
    /// Admin (system) API key.
    pub admin_key: Secret,
    /// Where the admin key came from.
    pub admin_key_source: SecretSource,
    /// Reseller tenants.
    pub resellers: Vec<Reseller>,
    /// Username -> index in `resellers` (the reseller itself and its users).
    pub reseller_of: HashMap<String, usize>,
    /// Uniquehash -> index in `resellers`.
    pub reseller_by_uniquehash: HashMap<String, usize>,
    /// Method catalogue (with configured aliases merged).
    pub catalog: Arc<Catalog>,
    /// The catalogue extension file merged into the built-in one, if any.
    pub catalog_file: Option<PathBuf>,
    /// Rate limits.
    pub limits: LimitSettings,
    /// Metrics listener (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Access log mode.
    pub access_log: LogMode,
    /// Access log file (mode = file).
    pub access_log_path: Option<PathBuf>,
}

/// Reads a secret from its source. `key` names the config key for errors.
fn read_secret(key: &str, source: &SecretSource) -> Result<Secret, ConfigError> {
    let bytes = match source {
        SecretSource::Env(var) => match std::env::var_os(var) {
            Some(v) => v.into_encoded_bytes(),
            None => {
                return Err(invalid(
                    key,
                    format!("environment variable {var} is not set"),
                ))
            }
        },
        SecretSource::File(path) => {
            let mut b = std::fs::read(path).map_err(|e| {
                invalid(key, format!("cannot read key file {}: {e}", path.display()))
            })?;
            if b.last() == Some(&b'\n') {
                b.pop();
                if b.last() == Some(&b'\r') {
                    b.pop();
                }
            }
            b
        }
    };
    if bytes.is_empty() {
        return Err(invalid(
            key,
            "the secret key is empty (MOR refuses to enable the API without one)",
        ));
    }
    Ok(Secret::new(&bytes))
}

fn secret_source(
    key_env: &str,
    env: Option<String>,
    key_file: &str,
    file: Option<PathBuf>,
) -> Result<SecretSource, ConfigError> {
    match (env, file) {
        (Some(v), None) if !v.is_empty() => Ok(SecretSource::Env(v)),
        (None, Some(p)) => Ok(SecretSource::File(p)),
        (Some(_), Some(_)) => Err(invalid(
            key_env,
            format!("set either {key_env} or {key_file}, not both"),
        )),
        _ => Err(invalid(
            key_env,
            format!("a secret key is required: set {key_env} (variable name) or {key_file}"),
        )),
    }
}

fn parse_listen(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>()
        .map_err(|_| invalid(key, format!("'{s}' is not an IP:port address")))
}

fn quota_ok(key: &str, q: &QuotaSpec) -> Result<(), ConfigError> {
    if !(q.per_second.is_finite() && q.per_second > 0.0) {
        return Err(invalid(key, "per_second must be a positive number"));
    }
    if q.burst == 0 {
        return Err(invalid(key, "burst must be at least 1"));
    }
    Ok(())
}

impl Settings {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, Some(path))
    }

    /// Parses and validates config text; `path` is used in messages and to
    /// resolve a relative `catalog_file`.
    pub fn from_toml(text: &str, path: Option<&Path>) -> Result<Settings, ConfigError> {
        let shown = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<built-in>"));
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
        Self::validate(raw, path, base)
    }

    fn validate(raw: RawConfig, path: Option<&Path>, base: &Path) -> Result<Settings, ConfigError> {
        if raw.listen.is_empty() {
            return Err(invalid("listen", "at least one address is required"));
        }
        let listen = raw
            .listen
            .iter()
            .enumerate()
            .map(|(i, s)| parse_listen(&format!("listen[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.threads == Some(0) {
            return Err(invalid("threads", "must be at least 1"));
        }
        if raw.read_buffer_bytes != 0 && !(1024..=1024 * 1024).contains(&raw.read_buffer_bytes) {
            return Err(invalid(
                "read_buffer_bytes",
                "must be 0 (unbuffered) or between 1024 and 1048576",
            ));
        }

        let u = raw.upstream;
        if u.servers.is_empty() {
            return Err(invalid(
                "upstream.servers",
                "at least one MOR server is required",
            ));
        }
        let mut servers = Vec::new();
        for (i, s) in u.servers.iter().enumerate() {
            let key = format!("upstream.servers[{i}]");
            let addr = s
                .to_socket_addrs()
                .map_err(|e| invalid(&key, format!("'{s}' does not resolve: {e}")))?
                .next()
                .ok_or_else(|| invalid(&key, format!("'{s}' resolves to no address")))?;
            servers.push(addr);
        }
        for (k, v) in [
            ("upstream.connect_timeout_ms", u.connect_timeout_ms),
            ("upstream.read_timeout_ms", u.read_timeout_ms),
            ("upstream.write_timeout_ms", u.write_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(k, "must be at least 1"));
            }
        }
        let upstream = Upstream {
            servers,
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            write_timeout: Duration::from_millis(u.write_timeout_ms),
            idle_timeout: Duration::from_secs(u.idle_timeout_s),
            keepalive_pool_size: u.keepalive_pool_size,
            x_forwarded_for: u.x_forwarded_for,
        };

        let api = raw.api;
        let prefix = api.prefix.trim_end_matches('/').to_string();
        if !api.prefix.starts_with('/')
            || prefix.is_empty()
            || prefix.contains("//")
            || prefix.split('/').any(|s| s == "." || s == "..")
        {
            return Err(invalid(
                "api.prefix",
                format!(
                    "'{}' must be an absolute path like /billing/api",
                    api.prefix
                ),
            ));
        }
        if api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be at least 1"));
        }

        let mut catalog = Catalog::parse(crate::core::catalog::EMBEDDED, raw.product)?;
        let catalog_file = match &api.catalog_file {
            Some(p) => {
                let full = if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                };
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    invalid(
                        "api.catalog_file",
                        format!("cannot read {}: {e}", full.display()),
                    )
                })?;
                catalog
                    .extend(&text)
                    .map_err(|e| invalid("api.catalog_file", format!("{}: {e}", full.display())))?;
                Some(full)
            }
            None => None,
        };
        for (name, patch) in &api.methods {
            catalog
                .patch(name, patch)
                .map_err(|e| invalid(format!("api.methods.{name}"), e.to_string()))?;
        }
        for (alias, target) in &api.aliases {
            catalog
                .add_alias(alias, target)
                .map_err(|e| invalid(format!("api.aliases.{alias}"), e.to_string()))?;
        }

        let admin_key_source = secret_source(
            "secrets.admin_key_env",
            raw.secrets.admin_key_env,
            "secrets.admin_key_file",
            raw.secrets.admin_key_file,
        )?;
        let admin_key = read_secret("secrets.admin_key", &admin_key_source)?;

        let mut resellers = Vec::new();
        let mut reseller_of = HashMap::new();
        let mut reseller_by_uniquehash = HashMap::new();
        for (i, r) in raw.resellers.into_iter().enumerate() {
            let key = format!("resellers[{i}]");
            if r.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            let source = secret_source(
                &format!("{key}.key_env"),
                r.key_env,
                &format!("{key}.key_file"),
                r.key_file,
            )?;
            let secret = read_secret(&format!("{key}.key"), &source)?;
            for (j, user) in std::iter::once(&r.name).chain(r.users.iter()).enumerate() {
                if user.is_empty() {
                    return Err(invalid(format!("{key}.users"), "empty username"));
                }
                if let Some(prev) = reseller_of.insert(user.clone(), i) {
                    if prev != i || j > 0 {
                        return Err(invalid(
                            format!("{key}.users"),
                            format!("username '{user}' is listed twice (one owner per user)"),
                        ));
                    }
                }
            }
            if let Some(uh) = &r.uniquehash {
                if uh.is_empty() || reseller_by_uniquehash.insert(uh.clone(), i).is_some() {
                    return Err(invalid(
                        format!("{key}.uniquehash"),
                        "must be non-empty and differ from every other reseller's",
                    ));
                }
            }
            resellers.push(Reseller {
                name: r.name,
                key: secret,
                key_source: source,
                users: r.users,
                uniquehash: r.uniquehash,
            });
        }

        let l = raw.limits;
        let mut exempt = Vec::new();
        for (i, s) in l.exempt.iter().enumerate() {
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("limits.exempt[{i}]"),
                        format!("'{s}' is not a CIDR or IP"),
                    )
                })?;
            exempt.push(net);
        }
        if let Some(q) = &l.per_ip {
            quota_ok("limits.per_ip", q)?;
        }
        if let Some(q) = &l.per_user {
            quota_ok("limits.per_user", q)?;
        }
        for (table, map) in [
            ("limits.per_method", &l.per_method),
            ("limits.per_method_user", &l.per_method_user),
        ] {
            for (m, q) in map {
                let key = format!("{table}.{m}");
                quota_ok(&key, q)?;
                if catalog.lookup(m).is_none() {
                    return Err(invalid(
                        key,
                        format!("'{m}' is not a method in the catalogue"),
                    ));
                }
            }
        }
        let canon = |m: &HashMap<String, QuotaSpec>, src: &BTreeMap<String, QuotaSpec>| {
            let mut out = m.clone();
            for (k, q) in src {
                if let Some(found) = catalog.lookup(k) {
                    out.insert(found.method.name.clone(), *q);
                }
            }
            out
        };
        let per_method = canon(&HashMap::new(), &l.per_method);
        let per_method_user = canon(&HashMap::new(), &l.per_method_user);
        if l.max_tracked_keys == 0 {
            return Err(invalid("limits.max_tracked_keys", "must be at least 1"));
        }
        let lockout = match l.lockout {
            None => None,
            Some(lo) => {
                if lo.failures == 0 {
                    return Err(invalid("limits.lockout.failures", "must be at least 1"));
                }
                if lo.window_s == 0 || lo.cooloff_s == 0 {
                    return Err(invalid(
                        "limits.lockout",
                        "window_s and cooloff_s must be at least 1",
                    ));
                }
                Some(Lockout {
                    failures: lo.failures,
                    window: Duration::from_secs(lo.window_s),
                    cooloff: Duration::from_secs(lo.cooloff_s),
                })
            }
        };
        let limits = LimitSettings {
            exempt,
            per_ip: l.per_ip,
            per_user: l.per_user,
            per_method,
            per_method_user,
            max_tracked_keys: l.max_tracked_keys,
            headers: l.headers,
            lockout,
        };

        let metrics_listen = match raw.metrics.listen.as_deref() {
            None | Some("") => None,
            Some(s) => Some(parse_listen("metrics.listen", s)?),
        };
        let access_log = raw.access_log.mode;
        if access_log == LogMode::File && raw.access_log.path.is_none() {
            return Err(invalid(
                "access_log.path",
                "required when access_log.mode = \"file\"",
            ));
        }
        let mut seen = HashSet::new();
        for a in listen.iter().chain(metrics_listen.iter()) {
            if a.port() != 0 && !seen.insert(*a) {
                return Err(invalid("listen", format!("address {a} is used twice")));
            }
        }

        Ok(Settings {
            source: path.map(Path::to_path_buf),
            product: raw.product,
            listen,
            threads: raw.threads,
            read_buffer_bytes: raw.read_buffer_bytes,
            work_stealing: raw.work_stealing,
            reply_mode: raw.reply_mode,
            upstream,
            prefix,
            allow_api: api.allow_api,
            allow_get: api.allow_get,
            verify_hash: api.verify_hash,
            unknown_methods: api.unknown_methods,
            rest_v2: api.rest_v2,
            other_paths: api.other_paths,
            max_body_bytes: api.max_body_bytes,
            admin_key,
            admin_key_source,
            resellers,
            reseller_of,
            reseller_by_uniquehash,
            catalog: Arc::new(catalog),
            catalog_file,
            limits,
            metrics_listen,
            access_log,
            access_log_path: raw.access_log.path,
        })
    }

    /// A human summary of what would be served (for `check`); no secret values.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "product        {:?}", self.product);
        let _ = writeln!(s, "listen         {}", list(&self.listen));
        let _ = writeln!(
            s,
            "upstreams      {} (round-robin)",
            list(&self.upstream.servers)
        );
        let _ = writeln!(
            s,
            "timeouts       connect {:?}, read {:?}, write {:?}, idle {:?}",
            self.upstream.connect_timeout,
            self.upstream.read_timeout,
            self.upstream.write_timeout,
            self.upstream.idle_timeout
        );
        let _ = writeln!(s, "api prefix     {}", self.prefix);
        let _ = writeln!(
            s,
            "policy         allow_api={} allow_get={} verify_hash={} unknown_methods={:?} rest_v2={:?} other_paths={:?}",
            self.allow_api, self.allow_get, self.verify_hash, self.unknown_methods, self.rest_v2, self.other_paths
        );
        let _ = writeln!(s, "reply mode     {:?}", self.reply_mode);
        let _ = writeln!(s, "max body       {} bytes", self.max_body_bytes);
        let _ = writeln!(
            s,
            "admin key      from {} (value not shown)",
            self.admin_key_source
        );
        for r in &self.resellers {
            let _ = writeln!(
                s,
                "reseller       {} key from {} (value not shown), {} users",
                r.name,
                r.key_source,
                r.users.len()
            );
        }
        let _ = writeln!(
            s,
            "catalogue      {} methods, {} aliases (built in{})",
            self.catalog.len(),
            self.catalog.alias_count(),
            self.catalog_file
                .as_ref()
                .map(|p| format!(", extended by {}", p.display()))
                .unwrap_or_default()
        );
        let by_rule = |a: Auth| {
            let names: Vec<&str> = self
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
        let l = &self.limits;
        let _ = writeln!(
            s,
            "limits         per_ip={:?} per_user={:?} per_method={} per_method_user={} exempt={} lockout={:?} max_tracked_keys={}",
            l.per_ip,
            l.per_user,
            l.per_method.len(),
            l.per_method_user.len(),
            l.exempt.len(),
            l.lockout,
            l.max_tracked_keys
        );
        let _ = writeln!(
            s,
            "metrics        {}",
            self.metrics_listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into())
        );
        let _ = writeln!(s, "access log     {:?}", self.access_log);
        s
    }
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

    fn with_key() {
        std::env::set_var("MORGW_TEST_KEY", "456789");
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        with_key();
        let s = Settings::from_toml(&base(""), None).unwrap();
        assert_eq!(s.prefix, "/billing/api");
        assert!(s.allow_api && !s.allow_get && s.verify_hash);
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert_eq!(s.admin_key.expose(), b"456789");
        assert_eq!(s.reply_mode, ReplyMode::Mor);
    }

    #[test]
    fn unknown_key_is_named() {
        with_key();
        let err = Settings::from_toml(&base("[api]\nalow_get = true\n"), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("alow_get"), "{msg}");
    }

    #[test]
    fn secret_never_in_debug_or_summary() {
        with_key();
        let s = Settings::from_toml(&base(""), None).unwrap();
        assert!(!format!("{s:?}").contains("456789"));
        assert!(!s.summary().contains("456789"));
    }

    #[test]
    fn missing_env_secret_is_named() {
        let text = base("").replace("MORGW_TEST_KEY", "MORGW_SURELY_UNSET_VAR");
        let msg = Settings::from_toml(&text, None).unwrap_err().to_string();
        assert!(msg.contains("MORGW_SURELY_UNSET_VAR"), "{msg}");
    }

    #[test]
    fn reseller_users_must_be_unique() {
        with_key();
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
        let msg = Settings::from_toml(&base(extra), None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("resellers[1].users") && msg.contains("'a'"),
            "{msg}"
        );
    }

    #[test]
    fn alias_to_unknown_method_refused() {
        with_key();
        let msg = Settings::from_toml(&base("[api.aliases]\nold = \"nope_get\"\n"), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("api.aliases.old"), "{msg}");
    }

    #[test]
    fn bad_limits_are_named() {
        with_key();
        let msg = Settings::from_toml(
            &base("[limits.per_method]\nuser_calls_get = { per_second = 0, burst = 1 }\n"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("limits.per_method.user_calls_get"), "{msg}");
        let msg = Settings::from_toml(
            &base("[limits.per_method]\nno_such = { per_second = 1, burst = 1 }\n"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("no_such"), "{msg}");
    }

    #[test]
    fn alias_limit_keys_are_canonicalised() {
        with_key();
        let s = Settings::from_toml(
            &base("[limits.per_method]\nuser_calls = { per_second = 1, burst = 2 }\n"),
            None,
        )
        .unwrap();
        assert!(s.limits.per_method.contains_key("user_calls_get"));
    }
}
