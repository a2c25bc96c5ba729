//! The configuration file as written: one struct per TOML table, unknown keys
//! refused, one `Default` per section (the documented defaults of
//! `config/gateway.toml`), durations written with a unit ("500ms", "30s").
//! No I/O and no validation here: [`super::resolve`] does both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::core::catalog::{MethodPatch, MorVersion, Product};
use crate::core::limits::QuotaSpec;
use crate::core::policy::{PathPolicy, Undetermined, UnknownMethods};
use crate::core::reply::ReplyMode;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Which product's catalogue entries are served.
    #[serde(default = "mor")]
    pub product: Product,
    /// Gateway listen addresses (plain HTTP).
    #[serde(default)]
    pub listen: Vec<String>,
    /// The plain `listen` addresses expect a PROXY protocol header (v1 or v2) first.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// How refusals are answered.
    #[serde(default = "mor_replies")]
    pub reply_mode: ReplyMode,
    /// Worker threads (absent: one per CPU).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Per-connection read buffer of the gateway listeners (0: unbuffered).
    #[serde(default)]
    pub read_buffer_bytes: usize,
    /// Work-stealing tokio runtime.
    #[serde(default)]
    pub work_stealing: bool,
    /// How long calls in flight may take to finish after SIGTERM or an upgrade.
    #[serde(default = "grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The socket a `run --upgrade` process receives the listeners on.
    #[serde(default = "upgrade_sock")]
    pub upgrade_sock: PathBuf,
    /// `[client]`.
    #[serde(default)]
    pub client: Client,
    /// `[upstream]`.
    pub upstream: Upstream,
    /// `[tls]`.
    #[serde(default)]
    pub tls: Tls,
    /// `[api]`.
    #[serde(default)]
    pub api: Api,
    /// `[secrets]`.
    pub secrets: Secrets,
    /// `[[resellers]]`.
    #[serde(default)]
    pub resellers: Vec<Reseller>,
    /// `[directory]`: MOR's users, owners, keys and switches from its database.
    #[serde(default)]
    pub directory: Option<Directory>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: Limits,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: Metrics,
    /// `[access_log]`.
    #[serde(default)]
    pub access_log: AccessLog,
    /// `[rollout]`: which refusing layers enforce and which only report.
    #[serde(default)]
    pub rollout: Rollout,
    /// `[access]`: allow and deny lists of client addresses.
    #[serde(default)]
    pub access: Access,
}

/// One allow list and one deny list of client networks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLists {
    /// Networks admitted (CIDRs or addresses; empty: every address).
    pub allow: Vec<String>,
    /// Networks refused (wins over `allow`).
    pub deny: Vec<String>,
}

/// `[access]`: the global lists, and `[access.owners.<name>]` per owner.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// Networks admitted (CIDRs or addresses; empty: every address).
    pub allow: Vec<String>,
    /// Networks refused (wins over `allow`).
    pub deny: Vec<String>,
    /// Per owner (the admin as `admin`, a reseller by its username).
    pub owners: BTreeMap<String, AccessLists>,
}

fn mor() -> Product {
    Product::Mor
}

fn grace() -> Duration {
    Duration::from_secs(10)
}

fn upgrade_sock() -> PathBuf {
    PathBuf::from("/tmp/mor-gateway-upgrade.sock")
}

/// `[client]`: how the gateway treats client connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Client {
    /// Balancers whose `X-Forwarded-For` is believed (CIDRs or IPs).
    pub trusted_proxies: Vec<String>,
    /// Longest wait for each read of a request's header or body (408 beyond).
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest wait for each write of an answer to the client.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// The whole body's time, before `body_min_rate` adds to it.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Each this many body bytes received add one second to `body_timeout`.
    pub body_min_rate: u64,
    /// An idle keep-alive connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// The whole request header must arrive within this long.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest request header (request line and header lines), in bytes.
    pub max_header_bytes: usize,
    /// Open client connections, in total (0: unlimited).
    pub max_connections: usize,
    /// Open client connections per client address (0: unlimited).
    pub max_connections_per_address: usize,
    /// IPv6 clients count as one address per network of this prefix length.
    pub ipv6_prefix: u8,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            trusted_proxies: Vec::new(),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
            keepalive_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_address: 256,
            ipv6_prefix: 64,
        }
    }
}

fn mor_replies() -> ReplyMode {
    ReplyMode::Mor
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

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// MOR servers, `host:port`.
    pub servers: Vec<String>,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for each read from MOR.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest wait for each write to MOR.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Idle keep-alive connections to MOR are closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Idle connections kept for reuse.
    pub keepalive_pool_size: usize,
    /// How often each server is probed.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// What a probe is: `"http"` (a request, its answer checked) or `"tcp"`
    /// (a connect).
    pub health_check: String,
    /// The HTTP probe's method (`GET` or `HEAD`).
    pub health_check_method: String,
    /// The HTTP probe's path and query.
    pub health_check_path: String,
    /// The HTTP probe's `Host` header (absent: the server's name or address).
    pub health_check_host: Option<String>,
    /// The status a passing HTTP probe answers.
    pub health_check_status: u16,
    /// Text a passing HTTP probe's body contains (absent: any body).
    pub health_check_body: Option<String>,
    /// Longest wait for a probe's whole answer.
    #[serde(with = "humantime_serde")]
    pub health_check_timeout: Duration,
    /// Failed probes in a row that take a server out.
    pub health_check_fails: usize,
    /// Passed probes in a row that bring a server back (also after an
    /// ejection).
    pub health_check_passes: usize,
    /// Failed calls in a row (5xx, timeout, refused connect) that eject a
    /// server until it passes its probes; 0: no passive ejection.
    pub eject_after_failures: u32,
    /// `X-Forwarded-For` handling.
    pub x_forwarded_for: ForwardedFor,
    /// Extra end-to-end request headers passed to MOR as sent.
    pub pass_headers: Vec<String>,
    /// CA certificates (PEM) that `https://` servers are verified against
    /// (absent: the system store).
    pub ca_file: Option<PathBuf>,
}

/// `[tls]`: HTTPS listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Addresses served with TLS.
    pub listen: Vec<String>,
    /// Certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// Private key, PEM.
    pub key_file: Option<PathBuf>,
    /// The TLS listeners expect a PROXY protocol header (v1 or v2) first.
    pub proxy_protocol: bool,
    /// The TLS handshake must be done within this long of the connection's
    /// start (after its PROXY header, if any).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections of one client address whose handshake is not done yet.
    pub max_handshakes_per_address: usize,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            listen: Vec::new(),
            cert_file: None,
            key_file: None,
            proxy_protocol: false,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes_per_address: 32,
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            servers: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            keepalive_pool_size: 128,
            health_check_interval: Duration::from_secs(5),
            health_check: "http".into(),
            health_check_method: "GET".into(),
            health_check_path: "/billing/api/system_version_get".into(),
            health_check_host: None,
            health_check_status: 200,
            health_check_body: None,
            health_check_timeout: Duration::from_secs(3),
            health_check_fails: 1,
            health_check_passes: 1,
            eject_after_failures: 5,
            x_forwarded_for: ForwardedFor::Replace,
            pass_headers: Vec::new(),
            ca_file: None,
        }
    }
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Path prefix of MOR's API.
    pub prefix: String,
    /// MOR's "Allow API".
    pub allow_api: bool,
    /// MOR's "Allow GET API".
    pub allow_get: bool,
    /// Verify hashes at the edge (the admin's "Disable hash checking" off).
    pub verify_hash: bool,
    /// API methods not in the catalogue.
    pub unknown_methods: UnknownMethods,
    /// Actions whose hash list the documentation does not settle.
    pub undetermined: Undetermined,
    /// Which MOR's rule applies where X8 and the newer wiki pages disagree.
    pub mor_version: MorVersion,
    /// `<prefix>/v2/...`.
    pub rest_v2: PathPolicy,
    /// Paths outside the prefix.
    pub other_paths: PathPolicy,
    /// Largest body buffered before the verdict.
    pub max_body_bytes: usize,
    /// All bodies buffered before their verdicts, together.
    pub max_buffered_bytes: usize,
    /// The bodies of one client address, together (absent: 4 MiB, or
    /// `max_body_bytes` if larger).
    pub max_buffered_bytes_per_address: Option<usize>,
    /// A catalogue file that extends the built-in one.
    pub catalog_file: Option<PathBuf>,
    /// Extra legacy names: alias -> canonical method.
    pub aliases: BTreeMap<String, String>,
    /// Per-method patches of the catalogue.
    pub methods: BTreeMap<String, MethodPatch>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            prefix: "/billing/api".into(),
            allow_api: true,
            allow_get: false,
            verify_hash: true,
            unknown_methods: UnknownMethods::Forward,
            undetermined: Undetermined::Unchecked,
            mor_version: MorVersion::Current,
            rest_v2: PathPolicy::Refuse,
            other_paths: PathPolicy::Refuse,
            max_body_bytes: 1024 * 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_buffered_bytes_per_address: None,
            catalog_file: None,
            aliases: BTreeMap::new(),
            methods: BTreeMap::new(),
        }
    }
}

/// `[rollout]`: each refusing layer enforces or reports, globally, per
/// method and per owner.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// Global: layer name (or `all`) to mode.
    pub layers: crate::core::layers::ModeTable,
    /// Per canonical method name.
    pub methods: BTreeMap<String, crate::core::layers::ModeTable>,
    /// Per owner (username of the reseller, or of the admin).
    pub owners: BTreeMap<String, crate::core::layers::ModeTable>,
}

/// `[secrets]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// Environment variable holding the admin key.
    pub admin_key_env: Option<String>,
    /// File holding the admin key.
    pub admin_key_file: Option<PathBuf>,
}

/// One `[[resellers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reseller {
    /// The reseller's own username.
    pub name: String,
    /// Environment variable holding its key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// File holding its key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Usernames it owns.
    #[serde(default)]
    pub users: Vec<String>,
    /// Its uniquehash.
    #[serde(default)]
    pub uniquehash: Option<String>,
    /// MOR's "Allow API" for it and its users (default: `api.allow_api`).
    #[serde(default)]
    pub allow_api: Option<bool>,
    /// Verify its users' hashes (MOR's "Disable hash checking" off;
    /// default: `api.verify_hash`).
    #[serde(default)]
    pub verify_hash: Option<bool>,
}

/// What the gateway does before MOR's database was ever read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WithoutSnapshot {
    /// Do not start: `run` ends with the database's error.
    Exit,
    /// Start, and refuse API calls (503) until the first snapshot.
    Refuse,
    /// Start, and decide with the static config until the first snapshot.
    Static,
}

/// `[directory]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// `mysql://user@host[:port]/database`; no password in it.
    pub url: String,
    /// Environment variable holding the database password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the database password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Connect over TLS (the server's certificate verified).
    #[serde(default)]
    pub tls: bool,
    /// CA certificates (PEM) the server is verified against (default: the
    /// system store).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The users table (its five columns are read).
    #[serde(default = "users_table")]
    pub users_table: String,
    /// The view over the five conflines rows.
    #[serde(default = "settings_view")]
    pub settings_view: String,
    /// How often the snapshot is refreshed.
    #[serde(default = "refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Longest a refresh may take (connect and both queries).
    #[serde(default = "db_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Before the first snapshot.
    #[serde(default = "without_snapshot")]
    pub without_snapshot: WithoutSnapshot,
}

fn users_table() -> String {
    "users".into()
}

fn settings_view() -> String {
    "gateway_conflines".into()
}

fn refresh_interval() -> Duration {
    Duration::from_secs(10)
}

fn db_timeout() -> Duration {
    Duration::from_secs(5)
}

fn without_snapshot() -> WithoutSnapshot {
    WithoutSnapshot::Exit
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sources never limited (CIDRs or IPs).
    pub exempt: Vec<String>,
    /// Per client IP, before the hash.
    pub per_ip: Option<QuotaSpec>,
    /// Per verified user.
    pub per_user: Option<QuotaSpec>,
    /// Per method, all users together.
    pub per_method: BTreeMap<String, QuotaSpec>,
    /// Per method and user.
    pub per_method_user: BTreeMap<String, QuotaSpec>,
    /// Hard cap on tracked keys per keyed limiter.
    pub max_tracked_keys: usize,
    /// Send RateLimit-* headers on allowed calls.
    pub headers: bool,
    /// `[limits.lockout]`.
    pub lockout: Option<Lockout>,
    /// `[limits.shared]`: decide the limits in Redis, shared by gateways.
    pub shared: Option<SharedLimits>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            exempt: Vec::new(),
            per_ip: None,
            per_user: None,
            per_method: BTreeMap::new(),
            per_method_user: BTreeMap::new(),
            max_tracked_keys: 100_000,
            headers: false,
            lockout: None,
            shared: None,
        }
    }
}

/// `[limits.lockout]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockout {
    /// Failures that trip it.
    pub failures: u32,
    /// Window the failures are counted in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long the pair is refused.
    #[serde(with = "humantime_serde")]
    pub cooloff: Duration,
}

/// `[limits.shared]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedLimits {
    /// `redis://host[:port][/db]` or `rediss://` (TLS); no password in it.
    pub url: String,
    /// ACL user name (Redis 6+), if any.
    pub username: Option<String>,
    /// Environment variable holding the Redis password.
    pub password_env: Option<String>,
    /// File holding the Redis password.
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `rediss://` (default: the system store).
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key the gateway writes.
    #[serde(default = "shared_prefix")]
    pub key_prefix: String,
    /// Longest wait for Redis per decision before the local limiters decide.
    #[serde(default = "shared_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// After a failure, how long decisions stay local before Redis is tried again.
    #[serde(default = "shared_retry", with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Share the per-IP layer too (default: it stays local).
    #[serde(default)]
    pub per_ip: bool,
}

fn shared_prefix() -> String {
    "mor-gateway:".to_string()
}

fn shared_timeout() -> Duration {
    Duration::from_millis(50)
}

fn shared_retry() -> Duration {
    Duration::from_secs(1)
}

/// `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Listener for /metrics, /healthz, /readyz ("" turns it off).
    pub listen: String,
    /// Client networks the lockout admin interface (`/lockouts`) answers.
    pub admin_allow: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:9464".into(),
            admin_allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// No access log.
    Off,
    /// One JSON line per request on standard output.
    Stdout,
    /// One JSON line per request appended to `access_log.path`.
    File,
}

/// `[access_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// Where it goes.
    pub mode: LogMode,
    /// The file, with mode = "file".
    pub path: Option<PathBuf>,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            mode: LogMode::Stdout,
            path: None,
        }
    }
}
