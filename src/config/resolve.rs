//! From the file as written ([`schema::File`]) to the runtime [`Settings`]:
//! every check, and all the I/O a configuration needs (secrets from the
//! environment or files, the catalogue file, DNS of the upstreams). The
//! environment is passed in ([`Env`]), so tests never change the process's.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::schema::{self, LogMode};
use pingora::tls::pkey::PKey;
use pingora::tls::x509::X509;

use super::MorDbSettings;
use super::{
    invalid, CaBundle, CertKey, ClientSettings, ConfigError, Probe, SecretSource, Settings,
    SharedLimitSettings, TlsListen, Upstream,
};
use crate::core::access::{Access, Lists};
use crate::core::catalog::Catalog;
use crate::core::directory::{ConfigOwner, Directory};
use crate::core::limits::{LimitSettings, Lockout, QuotaSpec};
use crate::core::policy::{Policy, Secret};

/// Where `*_env` secrets are looked up.
pub trait Env {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<OsString> {
        self.get(name).map(OsString::from)
    }
}

/// Reads a secret from its source. `key` names the config key for errors.
fn read_secret(env: &dyn Env, key: &str, source: &SecretSource) -> Result<Secret, ConfigError> {
    let bytes = match source {
        SecretSource::Env(var) => match env.var(var) {
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

/// A PEM file of CA certificates (at least one): its bytes and the certificates.
fn ca_file(key: &str, p: &Path) -> Result<(Vec<u8>, Vec<X509>), ConfigError> {
    let pem =
        std::fs::read(p).map_err(|e| invalid(key, format!("cannot read {}: {e}", p.display())))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| invalid(key, format!("{}: not PEM certificates: {e}", p.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{} holds no certificate", p.display()),
        ));
    }
    Ok((pem, certs))
}

pub(crate) fn parse_listen(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>()
        .map_err(|_| invalid(key, format!("'{s}' is not an IP:port address")))
}

/// A quota governor can build: a positive rate whose cell interval fits in
/// nanoseconds, a burst of at least one, and a burst window (interval ×
/// burst, which governor computes in u64 nanoseconds) that fits too.
fn quota_ok(key: &str, q: &QuotaSpec) -> Result<(), ConfigError> {
    if !(q.per_second.is_finite() && q.per_second > 0.0) {
        return Err(invalid(key, "per_second must be a positive number"));
    }
    if 1.0 / q.per_second > (u64::MAX / 1_000_000_000) as f64 {
        return Err(invalid(
            key,
            "per_second is too small (at least one request per 500 years)",
        ));
    }
    if q.burst == 0 {
        return Err(invalid(key, "burst must be at least 1"));
    }
    // The same bound for the burst window: 1 / per_second × burst seconds.
    if f64::from(q.burst) / q.per_second > (u64::MAX / 1_000_000_000) as f64 {
        return Err(invalid(
            key,
            format!(
                "burst / per_second is {:.3e} seconds, more than 500 years: raise per_second or lower burst",
                f64::from(q.burst) / q.per_second
            ),
        ));
    }
    Ok(())
}

fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be more than 0"));
    }
    Ok(d)
}

fn upstream(u: schema::Upstream) -> Result<Upstream, ConfigError> {
    if u.servers.is_empty() {
        return Err(invalid(
            "upstream.servers",
            "at least one MOR server is required",
        ));
    }
    let mut servers = Vec::new();
    let mut tls_servers = HashMap::new();
    for (i, s) in u.servers.iter().enumerate() {
        let key = format!("upstream.servers[{i}]");
        // "https://host[:port]" is TLS (443 by default), "http://host[:port]"
        // or "host:port" plain.
        let (tls, rest) = match s.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            Some((scheme, _)) => {
                return Err(invalid(
                    &key,
                    format!("scheme '{scheme}' is not http or https"),
                ))
            }
            None => (false, s.as_str()),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(invalid(
                &key,
                format!("'{s}' must be host[:port], without a path"),
            ));
        }
        let has_port = rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !rest.ends_with(']');
        let hostport = if has_port {
            rest.to_string()
        } else {
            format!("{rest}:{}", if tls { 443 } else { 80 })
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| invalid(&key, format!("'{s}' does not resolve: {e}")))?
            .next()
            .ok_or_else(|| invalid(&key, format!("'{s}' resolves to no address")))?;
        if servers.contains(&addr) {
            return Err(invalid(&key, format!("'{s}' is listed twice")));
        }
        if tls {
            let host = hostport
                .rsplit_once(':')
                .map_or(hostport.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            tls_servers.insert(addr, host.to_string());
        }
        servers.push(addr);
    }
    let ca = match &u.ca_file {
        None => None,
        Some(p) => {
            let (_, certs) = ca_file("upstream.ca_file", p)?;
            Some(CaBundle {
                path: p.clone(),
                certs: Arc::new(certs.into_boxed_slice()),
            })
        }
    };
    Ok(Upstream {
        servers,
        connect_timeout: positive("upstream.connect_timeout", u.connect_timeout)?,
        read_timeout: positive("upstream.read_timeout", u.read_timeout)?,
        write_timeout: positive("upstream.write_timeout", u.write_timeout)?,
        idle_timeout: u.idle_timeout,
        keepalive_pool_size: u.keepalive_pool_size,
        health_check_interval: positive("upstream.health_check_interval", u.health_check_interval)?,
        probe: probe(&u)?,
        health_check_fails: at_least_one("upstream.health_check_fails", u.health_check_fails)?,
        health_check_passes: at_least_one("upstream.health_check_passes", u.health_check_passes)?,
        eject_after_failures: u.eject_after_failures,
        x_forwarded_for: u.x_forwarded_for,
        pass_headers: pass_headers(&u.pass_headers)?,
        tls_servers,
        ca,
    })
}

/// A count that must be at least 1.
fn at_least_one(key: &str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(n)
}

/// `upstream.health_check*`: the probe.
fn probe(u: &schema::Upstream) -> Result<Probe, ConfigError> {
    match u.health_check.as_str() {
        "tcp" => return Ok(Probe::Tcp),
        "http" => {}
        other => {
            return Err(invalid(
                "upstream.health_check",
                format!("'{other}' is not \"http\" or \"tcp\""),
            ))
        }
    }
    let method = match u.health_check_method.as_str() {
        "GET" => http::Method::GET,
        "HEAD" => http::Method::HEAD,
        other => {
            return Err(invalid(
                "upstream.health_check_method",
                format!("'{other}' is not GET or HEAD (a probe must not change anything)"),
            ))
        }
    };
    let path = &u.health_check_path;
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(invalid(
            "upstream.health_check_path",
            format!("'{path}' is not a path starting with '/', such as \"/billing/api/system_version_get\""),
        ));
    }
    if let Some(h) = &u.health_check_host {
        if h.is_empty() || http::HeaderValue::from_str(h).is_err() || h.contains(['/', ' ']) {
            return Err(invalid(
                "upstream.health_check_host",
                format!("'{h}' is not a host name"),
            ));
        }
    }
    let status = http::StatusCode::from_u16(u.health_check_status)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
        .ok_or_else(|| {
            invalid(
                "upstream.health_check_status",
                format!("{} is not an HTTP status of 200-599", u.health_check_status),
            )
        })?;
    let body = u.health_check_body.clone().filter(|b| !b.is_empty());
    if body.is_some() && method == http::Method::HEAD {
        return Err(invalid(
            "upstream.health_check_body",
            "a HEAD probe has no body to look in (use GET)",
        ));
    }
    let timeout = positive("upstream.health_check_timeout", u.health_check_timeout)?;
    Ok(Probe::Http {
        method,
        path: path.clone(),
        host: u.health_check_host.clone(),
        status,
        body,
        timeout,
    })
}

/// Loads and checks the HTTPS listeners' certificate and key.
fn tls(t: schema::Tls) -> Result<Option<TlsListen>, ConfigError> {
    if t.listen.is_empty() {
        if t.cert_file.is_some() || t.key_file.is_some() {
            return Err(invalid(
                "tls.listen",
                "cert_file and key_file need at least one address",
            ));
        }
        return Ok(None);
    }
    let listen = t
        .listen
        .iter()
        .enumerate()
        .map(|(i, s)| parse_listen(&format!("tls.listen[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let (Some(cert_file), Some(key_file)) = (t.cert_file, t.key_file) else {
        return Err(invalid(
            "tls.cert_file",
            "TLS listeners need cert_file and key_file",
        ));
    };
    let material = load_cert_key(&cert_file, &key_file)?;
    Ok(Some(TlsListen {
        listen,
        cert_file,
        key_file,
        material: Arc::new(material),
        proxy_protocol: t.proxy_protocol,
        handshake_timeout: match positive("tls.handshake_timeout", t.handshake_timeout)? {
            d if d > Duration::from_secs(60) => return Err(invalid(
                "tls.handshake_timeout",
                "at most 60s (a handshake takes milliseconds; longer only holds the connection)",
            )),
            d => d,
        },
        max_handshakes_per_address: t.max_handshakes_per_address,
    }))
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_cert_key(cert_file: &Path, key_file: &Path) -> Result<CertKey, ConfigError> {
    let pem = std::fs::read(cert_file).map_err(|e| {
        invalid(
            "tls.cert_file",
            format!("cannot read {}: {e}", cert_file.display()),
        )
    })?;
    let chain = X509::stack_from_pem(&pem)
        .map_err(|e| invalid("tls.cert_file", format!("{}: {e}", cert_file.display())))?;
    let leaf = chain.first().ok_or_else(|| {
        invalid(
            "tls.cert_file",
            format!("{} holds no certificate", cert_file.display()),
        )
    })?;
    let kpem = std::fs::read(key_file).map_err(|e| {
        invalid(
            "tls.key_file",
            format!("cannot read {}: {e}", key_file.display()),
        )
    })?;
    let key = PKey::private_key_from_pem(&kpem).map_err(|_| {
        invalid(
            "tls.key_file",
            format!("{}: not a PEM private key", key_file.display()),
        )
    })?;
    let matches = leaf
        .public_key()
        .map(|p| key.public_eq(&p))
        .unwrap_or(false);
    if !matches {
        return Err(invalid(
            "tls.key_file",
            format!(
                "{} is not the key of {}",
                key_file.display(),
                cert_file.display()
            ),
        ));
    }
    Ok(CertKey { chain, key })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the gateway's own: never passed.
const NEVER_PASSED: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "http2-settings",
    "expect",
];

fn pass_headers(names: &[String]) -> Result<Vec<http::HeaderName>, ConfigError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let key = format!("upstream.pass_headers[{i}]");
            let h = http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| invalid(&key, format!("'{n}' is not a header name")))?;
            let lower = h.as_str();
            if NEVER_PASSED.contains(&lower)
                || crate::core::framing::PROTECTED.contains(&lower)
                || lower.starts_with("x-forwarded")
            {
                return Err(invalid(
                    key,
                    format!("'{n}' is set by the gateway or hop-by-hop; it cannot be passed"),
                ));
            }
            Ok(h)
        })
        .collect()
}

fn catalog(
    api: &schema::Api,
    product: crate::core::catalog::Product,
    base: &Path,
) -> Result<(Catalog, Option<PathBuf>), ConfigError> {
    let mut catalog = Catalog::parse_for(crate::core::catalog::EMBEDDED, product, api.mor_version)?;
    let file = match &api.catalog_file {
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
    Ok((catalog, file))
}

struct Tenants {
    resellers: Vec<ConfigOwner>,
    sources: Vec<SecretSource>,
    reseller_of: HashMap<String, usize>,
    by_uniquehash: HashMap<String, usize>,
}

fn resellers(
    env: &dyn Env,
    raw: Vec<schema::Reseller>,
    api: &schema::Api,
) -> Result<Tenants, ConfigError> {
    let mut t = Tenants {
        resellers: Vec::new(),
        sources: Vec::new(),
        reseller_of: HashMap::new(),
        by_uniquehash: HashMap::new(),
    };
    for (i, r) in raw.into_iter().enumerate() {
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
        let secret = read_secret(env, &format!("{key}.key"), &source)?;
        for (j, user) in std::iter::once(&r.name).chain(r.users.iter()).enumerate() {
            if user.is_empty() {
                return Err(invalid(format!("{key}.users"), "empty username"));
            }
            if let Some(prev) = t.reseller_of.insert(user.clone(), i) {
                if prev != i || j > 0 {
                    return Err(invalid(
                        format!("{key}.users"),
                        format!("username '{user}' is listed twice (one owner per user)"),
                    ));
                }
            }
        }
        if let Some(uh) = &r.uniquehash {
            if uh.is_empty() || t.by_uniquehash.insert(uh.clone(), i).is_some() {
                return Err(invalid(
                    format!("{key}.uniquehash"),
                    "must be non-empty and differ from every other reseller's",
                ));
            }
        }
        t.resellers.push(ConfigOwner {
            name: r.name,
            key: secret,
            users: r.users,
            uniquehash: r.uniquehash,
            allow_api: r.allow_api.unwrap_or(api.allow_api),
            hash_off: !r.verify_hash.unwrap_or(api.verify_hash),
        });
        t.sources.push(source);
    }
    Ok(t)
}

fn cidrs(key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(format!("{key}[{i}]"), format!("'{s}' is not a CIDR or IP")))
        })
        .collect()
}

/// Client networks for an allow or deny list: a CIDR whose host bits are
/// zero, or one address; an IPv4-mapped IPv6 network is taken as the IPv4
/// network it maps (client addresses are compared as IPv4 then).
pub(crate) fn networks(key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let at = || format!("{key}[{i}]");
            let net = match s.parse::<IpNet>() {
                Ok(n) if n.trunc() != n => {
                    return Err(invalid(
                        at(),
                        format!("'{s}' has host bits set (the network is {})", n.trunc()),
                    ))
                }
                Ok(n) => n,
                Err(_) => s
                    .parse::<std::net::IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| {
                        invalid(
                            at(),
                            format!("'{s}' is not a CIDR (like 192.0.2.0/24) or an address"),
                        )
                    })?,
            };
            Ok(match net {
                IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                    Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                        .map(IpNet::V4)
                        .unwrap_or(net),
                    None => net,
                },
                n => n,
            })
        })
        .collect()
}

fn access(raw: schema::Access) -> Result<Access, ConfigError> {
    let global = Lists {
        allow: networks("access.allow", &raw.allow)?,
        deny: networks("access.deny", &raw.deny)?,
    };
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut owners = Vec::new();
    for (name, l) in raw.owners {
        let key = format!("access.owners.{name}");
        if name.trim().is_empty() {
            return Err(invalid(key, "an owner name must not be empty"));
        }
        let folded = name.trim_end_matches(' ').to_lowercase();
        if let Some(prev) = seen.insert(folded, name.clone()) {
            return Err(invalid(
                key,
                format!("names the same owner as access.owners.{prev} (names compare like MOR's usernames)"),
            ));
        }
        let lists = Lists {
            allow: networks(&format!("{key}.allow"), &l.allow)?,
            deny: networks(&format!("{key}.deny"), &l.deny)?,
        };
        owners.push((name, lists));
    }
    Ok(Access::new(global, owners))
}

/// pingora's own cap on a request header (bytes); `max_header_bytes` stays below it.
pub const PINGORA_MAX_HEADER_BYTES: usize = 1_048_575;

fn client(c: schema::Client) -> Result<ClientSettings, ConfigError> {
    if !(1024..=PINGORA_MAX_HEADER_BYTES).contains(&c.max_header_bytes) {
        return Err(invalid(
            "client.max_header_bytes",
            format!("must be between 1024 and {PINGORA_MAX_HEADER_BYTES}"),
        ));
    }
    if c.max_connections != 0 && c.max_connections_per_address > c.max_connections {
        return Err(invalid(
            "client.max_connections_per_address",
            "must not exceed client.max_connections (0 is unlimited)",
        ));
    }
    if !(16..=128).contains(&c.ipv6_prefix) {
        return Err(invalid(
            "client.ipv6_prefix",
            "must be between 16 and 128 (bits of an IPv6 address that name one client)",
        ));
    }
    Ok(ClientSettings {
        trusted_proxies: cidrs("client.trusted_proxies", &c.trusted_proxies)?,
        read_timeout: positive("client.read_timeout", c.read_timeout)?,
        send_timeout: positive("client.send_timeout", c.send_timeout)?,
        body_timeout: positive("client.body_timeout", c.body_timeout)?,
        body_min_rate: match c.body_min_rate {
            0 => {
                return Err(invalid(
                    "client.body_min_rate",
                    "must be at least 1 (bytes per second)",
                ))
            }
            n => n,
        },
        keepalive_timeout: positive("client.keepalive_timeout", c.keepalive_timeout)?,
        header_timeout: positive("client.header_timeout", c.header_timeout)?,
        max_header_bytes: c.max_header_bytes,
        max_connections: c.max_connections,
        max_connections_per_address: c.max_connections_per_address,
        ipv6_prefix: c.ipv6_prefix,
    })
}

/// `[limits.shared]`: the Redis client is built here (address, password,
/// CA bundle), so what `check` accepts connects the same way in `run`.
fn shared_limits(
    env: &dyn Env,
    sh: schema::SharedLimits,
) -> Result<SharedLimitSettings, ConfigError> {
    use redis::IntoConnectionInfo;
    const KEY: &str = "limits.shared.url";
    if !(sh.url.starts_with("redis://") || sh.url.starts_with("rediss://")) {
        return Err(invalid(KEY, "must start with redis:// or rediss:// (TLS)"));
    }
    let info = sh
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| invalid(KEY, format!("not a Redis URL: {e}")))?;
    if info.redis_settings().password().is_some() || info.redis_settings().username().is_some() {
        return Err(invalid(
            KEY,
            "no credentials in the URL: use limits.shared.username and password_env or password_file",
        ));
    }
    let mut redis_info = info.redis_settings().clone();
    if let Some(u) = &sh.username {
        redis_info = redis_info.set_username(u);
    }
    let password = match (sh.password_env, sh.password_file) {
        (None, None) => None,
        (env_var, file) => {
            let source = secret_source(
                "limits.shared.password_env",
                env_var,
                "limits.shared.password_file",
                file,
            )?;
            Some(read_secret(env, "limits.shared.password", &source)?)
        }
    };
    if let Some(p) = &password {
        let text = std::str::from_utf8(p.expose()).map_err(|_| {
            invalid(
                "limits.shared.password",
                "the Redis password is not UTF-8 text",
            )
        })?;
        redis_info = redis_info.set_password(text);
    }
    let info = info.set_redis_settings(redis_info);
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let client = match &sh.ca_file {
        Some(_) if !tls => {
            return Err(invalid(
                "limits.shared.ca_file",
                "only used with a rediss:// URL",
            ))
        }
        Some(path) => {
            let (pem, _) = ca_file("limits.shared.ca_file", path)?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => redis::Client::open(info),
    }
    .map_err(|e| invalid(KEY, format!("cannot use this Redis address: {e}")))?;
    if sh.key_prefix.len() > 64 {
        return Err(invalid("limits.shared.key_prefix", "at most 64 bytes"));
    }
    Ok(SharedLimitSettings {
        client,
        url: sh.url,
        key_prefix: sh.key_prefix,
        timeout: positive("limits.shared.timeout", sh.timeout)?,
        retry_interval: positive("limits.shared.retry_interval", sh.retry_interval)?,
        per_ip: sh.per_ip,
    })
}

/// True for a table or view name MySQL takes unquoted: `name` or
/// `database.name`, letters, digits, `_` and `$`.
fn sql_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
                && !p.bytes().all(|b| b.is_ascii_digit())
        })
}

/// `[directory]`: the MySQL options are built here (address, password, TLS
/// roots), so what `check` accepts connects the same way in `run`.
fn mor_db(env: &dyn Env, d: schema::Directory) -> Result<MorDbSettings, ConfigError> {
    const KEY: &str = "directory.url";
    if !d.url.starts_with("mysql://") {
        return Err(invalid(KEY, "must start with mysql://"));
    }
    let opts = mysql_async::Opts::from_url(&d.url)
        .map_err(|e| invalid(KEY, format!("not a MySQL URL: {e}")))?;
    if opts.pass().is_some() {
        return Err(invalid(
            KEY,
            "no password in the URL: use directory.password_env or password_file",
        ));
    }
    if opts.user().is_none() {
        return Err(invalid(KEY, "name the account: mysql://USER@host/database"));
    }
    let Some(database) = opts.db_name().map(str::to_string) else {
        return Err(invalid(
            KEY,
            "name MOR's database: mysql://user@host/DATABASE",
        ));
    };
    let password = match (d.password_env, d.password_file) {
        (None, None) => None,
        (env_var, file) => {
            let source = secret_source(
                "directory.password_env",
                env_var,
                "directory.password_file",
                file,
            )?;
            let p = read_secret(env, "directory.password", &source)?;
            Some(
                String::from_utf8(p.expose().to_vec())
                    .map_err(|_| invalid("directory.password", "the password is not UTF-8 text"))?,
            )
        }
    };
    for (key, name) in [
        ("directory.users_table", &d.users_table),
        ("directory.settings_view", &d.settings_view),
    ] {
        if !sql_name(name) {
            return Err(invalid(
                key,
                format!("'{name}' must be NAME or DATABASE.NAME (letters, digits, _)"),
            ));
        }
    }
    let mut b = mysql_async::OptsBuilder::from_opts(opts)
        .pass(password)
        .prefer_socket(false)
        .stmt_cache_size(0);
    match (&d.ca_file, d.tls) {
        (Some(_), false) => {
            return Err(invalid("directory.ca_file", "only used with tls = true"));
        }
        (ca, true) => {
            let mut ssl = mysql_async::SslOpts::default();
            if let Some(path) = ca {
                let (pem, _) = ca_file("directory.ca_file", path)?;
                ssl = ssl.with_root_certs(vec![pem.into()]);
            }
            b = b.ssl_opts(ssl);
        }
        (None, false) => {}
    }
    if d.refresh_interval < Duration::from_secs(1) {
        return Err(invalid("directory.refresh_interval", "at least 1s"));
    }
    Ok(MorDbSettings {
        opts: b.into(),
        url: d.url,
        database,
        tls: d.tls,
        users_table: d.users_table,
        settings_view: d.settings_view,
        refresh_interval: d.refresh_interval,
        timeout: positive("directory.timeout", d.timeout)?,
        without_snapshot: d.without_snapshot,
    })
}

/// `[rollout]`: the layers' modes; methods by their canonical names.
fn rollout(
    r: &schema::Rollout,
    catalog: &Catalog,
) -> Result<crate::core::layers::Enforcement, ConfigError> {
    for m in r.methods.keys() {
        let key = format!("rollout.methods.{m}");
        let found = catalog
            .lookup(m)
            .ok_or_else(|| invalid(&key, format!("'{m}' is not a method in the catalogue")))?;
        if found.alias.is_some() {
            return Err(invalid(
                &key,
                format!(
                    "'{m}' is a legacy name of {}: name the method by that name",
                    found.method.name
                ),
            ));
        }
    }
    crate::core::layers::Enforcement::new(&r.layers, &r.methods, &r.owners)
        .map_err(|(key, why)| invalid(key, why))
}

fn limits(
    l: schema::Limits,
    catalog: &Catalog,
    ipv6_prefix: u8,
) -> Result<LimitSettings, ConfigError> {
    let exempt = cidrs("limits.exempt", &l.exempt)?;
    if let Some(q) = &l.per_ip {
        quota_ok("limits.per_ip", q)?;
    }
    if let Some(q) = &l.per_user {
        quota_ok("limits.per_user", q)?;
    }
    let mut tables = [HashMap::new(), HashMap::new()];
    for ((table, map), out) in [
        ("limits.per_method", &l.per_method),
        ("limits.per_method_user", &l.per_method_user),
    ]
    .into_iter()
    .zip(tables.iter_mut())
    {
        // The name each method was given by, to refuse a second name of it.
        let mut named: HashMap<String, &str> = HashMap::new();
        for (m, q) in map {
            let key = format!("{table}.{m}");
            quota_ok(&key, q)?;
            let found = catalog
                .lookup(m)
                .ok_or_else(|| invalid(&key, format!("'{m}' is not a method in the catalogue")))?;
            let canonical = &found.method.name;
            if let Some(first) = named.insert(canonical.clone(), m) {
                return Err(invalid(
                    &key,
                    format!(
                        "'{first}' and '{m}' are the same method ({canonical}): one quota each, keep one of them"
                    ),
                ));
            }
            // Aliases share their method's bucket.
            out.insert(canonical.clone(), *q);
        }
    }
    if l.max_tracked_keys == 0 {
        return Err(invalid("limits.max_tracked_keys", "must be at least 1"));
    }
    let lockout = match l.lockout {
        None => None,
        Some(lo) => {
            if lo.failures == 0 {
                return Err(invalid("limits.lockout.failures", "must be at least 1"));
            }
            Some(Lockout {
                failures: lo.failures,
                window: positive("limits.lockout.window", lo.window)?,
                cooloff: positive("limits.lockout.cooloff", lo.cooloff)?,
            })
        }
    };
    let [per_method, per_method_user] = tables;
    Ok(LimitSettings {
        exempt,
        per_ip: l.per_ip,
        per_user: l.per_user,
        per_method,
        per_method_user,
        max_tracked_keys: l.max_tracked_keys,
        headers: l.headers,
        lockout,
        ipv6_prefix,
    })
}

/// Checks `raw` and builds the runtime settings; `path` is the file it came
/// from (messages, and the base of a relative `catalog_file`).
pub fn resolve(
    mut raw: schema::File,
    path: Option<&Path>,
    env: &dyn Env,
) -> Result<Settings, ConfigError> {
    let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
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
    let upstream = upstream(raw.upstream)?;
    let tls = tls(raw.tls)?;
    if let Some(t) = &tls {
        let per_address = raw.client.max_connections_per_address;
        if per_address != 0 && t.max_handshakes_per_address > per_address {
            return Err(invalid(
                "tls.max_handshakes_per_address",
                "must not exceed client.max_connections_per_address (0 is unlimited)",
            ));
        }
    }
    if tls.as_ref().is_some_and(|t| t.proxy_protocol) && raw.client.trusted_proxies.is_empty() {
        return Err(invalid(
            "tls.proxy_protocol",
            "needs client.trusted_proxies: the balancers whose PROXY headers are believed",
        ));
    }
    if raw.proxy_protocol {
        if listen.is_empty() {
            return Err(invalid(
                "proxy_protocol",
                "applies to the plain listen addresses, and there are none (tls.proxy_protocol is the HTTPS listeners')",
            ));
        }
        if raw.client.trusted_proxies.is_empty() {
            return Err(invalid(
                "proxy_protocol",
                "needs client.trusted_proxies: the balancers whose PROXY headers are believed",
            ));
        }
    }
    if listen.is_empty() && tls.is_none() {
        return Err(invalid(
            "listen",
            "at least one address is required (here or in tls.listen)",
        ));
    }

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
    if api.max_buffered_bytes < api.max_body_bytes {
        return Err(invalid(
            "api.max_buffered_bytes",
            "must be at least api.max_body_bytes",
        ));
    }
    let per_address = match api.max_buffered_bytes_per_address {
        None => (4 * 1024 * 1024)
            .max(api.max_body_bytes)
            .min(api.max_buffered_bytes),
        Some(n) if n < api.max_body_bytes => {
            return Err(invalid(
                "api.max_buffered_bytes_per_address",
                "must be at least api.max_body_bytes",
            ))
        }
        Some(n) if n > api.max_buffered_bytes => {
            return Err(invalid(
                "api.max_buffered_bytes_per_address",
                "must not exceed api.max_buffered_bytes",
            ))
        }
        Some(n) => n,
    };
    let (catalog, catalog_file) = catalog(&api, raw.product, base)?;

    let admin_key_source = secret_source(
        "secrets.admin_key_env",
        raw.secrets.admin_key_env,
        "secrets.admin_key_file",
        raw.secrets.admin_key_file,
    )?;
    let admin_key = read_secret(env, "secrets.admin_key", &admin_key_source)?;
    let tenants = resellers(env, raw.resellers, &api)?;
    let mor_db = match raw.directory.take() {
        Some(d) => Some(mor_db(env, d)?),
        None => None,
    };
    let directory = Directory::from_config(
        admin_key,
        api.allow_api,
        api.allow_get,
        !api.verify_hash,
        &tenants.resellers,
    );
    let shared_limits = match raw.limits.shared.take() {
        Some(sh) => Some(shared_limits(env, sh)?),
        None => None,
    };
    let client = client(raw.client)?;
    let limits = limits(raw.limits, &catalog, client.ipv6_prefix)?;
    let rollout = rollout(&raw.rollout, &catalog)?;

    let access = access(raw.access)?;
    let metrics_admin_allow = networks("metrics.admin_allow", &raw.metrics.admin_allow)?;
    let metrics_listen = match raw.metrics.listen.as_str() {
        "" => None,
        s => Some(parse_listen("metrics.listen", s)?),
    };
    if raw.access_log.mode == LogMode::File && raw.access_log.path.is_none() {
        return Err(invalid(
            "access_log.path",
            "required when access_log.mode = \"file\"",
        ));
    }
    let mut seen = HashSet::new();
    let tls_listen = tls.as_ref().map_or(&[][..], |t| &t.listen[..]);
    for a in listen.iter().chain(tls_listen).chain(metrics_listen.iter()) {
        if a.port() != 0 && !seen.insert(*a) {
            return Err(invalid("listen", format!("address {a} is used twice")));
        }
    }

    Ok(Settings {
        digest: String::new(),
        product: raw.product,
        listen,
        proxy_protocol: raw.proxy_protocol,
        tls,
        threads: raw.threads,
        read_buffer_bytes: raw.read_buffer_bytes,
        work_stealing: raw.work_stealing,
        shutdown_grace: raw.shutdown_grace,
        upgrade_sock: raw.upgrade_sock,
        client,
        reply_mode: raw.reply_mode,
        upstream,
        max_body_bytes: api.max_body_bytes,
        max_buffered_bytes: api.max_buffered_bytes,
        max_buffered_bytes_per_address: per_address,
        policy: Arc::new(Policy {
            prefix,
            unknown_methods: api.unknown_methods,
            undetermined: api.undetermined,
            rest_v2: api.rest_v2,
            other_paths: api.other_paths,
            directory: Arc::new(directory),
            catalog,
            access,
            rollout,
        }),
        resellers: tenants.resellers,
        mor_db,
        admin_key_source,
        reseller_key_sources: tenants.sources,
        catalog_file,
        limits,
        shared_limits,
        metrics_listen,
        metrics_admin_allow,
        access_log: raw.access_log.mode,
        access_log_path: raw.access_log.path,
    })
}
