//! `mor-gateway doctor`: the configuration checked against the MOR it
//! fronts, live, with harmless read-only calls (`system_version_get`, which
//! MOR hashes as the key alone). One line per check: OK, MISMATCH (and what
//! to change), UNREACHABLE or SKIPPED. No key and no valid hash is printed.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;

use crate::config::Settings;
use crate::core::catalog::MorVersion;
use crate::core::directory::{Directory, OwnerSettings};
use crate::core::judge::{self, MorAnswer};
use crate::core::params::Params;
use crate::core::signature;
use crate::edge::mor_db;
use crate::edge::upstreams::peer_for;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// MOR and the configuration agree.
    Ok,
    /// They disagree: the line says what to change.
    Mismatch,
    /// MOR (or its database) could not be asked.
    Unreachable,
    /// Not checked (nothing to check it with).
    Skipped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "OK",
            Status::Mismatch => "MISMATCH",
            Status::Unreachable => "UNREACHABLE",
            Status::Skipped => "SKIPPED",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Its verdict.
    pub status: Status,
    /// What was checked (`admin key @ 127.0.0.1:8081`).
    pub check: String,
    /// What was found, and what to change on a mismatch.
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<12}{:<34} {}", self.status, self.check, self.text)
    }
}

/// How many findings are neither OK nor SKIPPED.
pub fn failures(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| !matches!(f.status, Status::Ok | Status::Skipped))
        .count()
}

/// One answer of MOR's: its status and the start of its body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn class(&self) -> MorAnswer {
        judge::classify(self.status, &self.body)
    }
}

/// Asks MOR server `addr` one call; `Err` says why it could not be asked.
async fn ask(
    connector: &Connector,
    settings: &Settings,
    addr: SocketAddr,
    get: bool,
    query: &str,
) -> Result<Answer, String> {
    let u = &settings.upstream;
    let peer: HttpPeer = peer_for(addr, u);
    let (mut s, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| short(&e))?;
    s.set_read_timeout(Some(u.read_timeout));
    s.set_write_timeout(Some(u.write_timeout));
    let path = format!("{}/system_version_get", settings.policy.prefix);
    let target = if get { format!("{path}?{query}") } else { path };
    let method = if get { "GET" } else { "POST" };
    let mut req =
        RequestHeader::build(method, target.as_bytes(), Some(4)).map_err(|e| e.to_string())?;
    let host = u
        .tls_servers
        .get(&addr)
        .cloned()
        .unwrap_or(addr.to_string());
    req.insert_header(header::HOST, host)
        .map_err(|e| e.to_string())?;
    let body = if get { "" } else { query };
    if !get {
        req.insert_header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .map_err(|e| e.to_string())?;
        req.insert_header(header::CONTENT_LENGTH, body.len().to_string())
            .map_err(|e| e.to_string())?;
    }
    s.write_request_header(Box::new(req))
        .await
        .map_err(|e| e.to_string())?;
    s.write_request_body(Bytes::copy_from_slice(body.as_bytes()), true)
        .await
        .map_err(|e| e.to_string())?;
    s.finish_request_body().await.map_err(|e| e.to_string())?;
    s.read_response_header().await.map_err(|e| e.to_string())?;
    let status = s.response_header().map_or(0, |h| h.status.as_u16());
    let mut out = Vec::new();
    while out.len() < judge::PEEK_BYTES {
        match s.read_response_body().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Answer { status, body: out })
}

/// pingora's error in a line: its kind and the root cause.
fn short(e: &pingora::Error) -> String {
    format!("{}: {}", e.etype().as_str(), e.root_cause())
}

/// The query of a `system_version_get` call by `user`, signed with `key`
/// (`None`: a hash no key makes).
fn signed(settings: &Settings, user: &str, key: Option<&[u8]>) -> String {
    let cat = &settings.policy.catalog;
    let method = cat.lookup("system_version_get").map(|f| f.method);
    let mut params = Params::new();
    let u = format!("u={user}");
    // A username from the config: form-encoded as given (MOR usernames are
    // plain words).
    let _ = params.add_form(u.as_bytes());
    let hash = match key {
        Some(k) => signature::hashed_parts(cat, method, &params)
            .map(|parts| signature::digest(&parts, k).as_str().to_string())
            .unwrap_or_default(),
        None => "0".repeat(40),
    };
    format!("{u}&hash={hash}")
}

/// The version text in MOR's answer, if any.
fn version_of(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("<version>")? + "<version>".len();
    let end = text[start..].find("</version>")? + start;
    Some(text[start..end].trim().to_string())
}

/// What `api.mor_version` should say for MOR's version text, when the text
/// tells: "X8" (or 8.x) is X8; X9, X10 or later, or 9+ as a number, is
/// current.
fn version_class(text: &str) -> Option<MorVersion> {
    let t = text.to_ascii_lowercase();
    let number = t
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
        .find_map(|w| {
            let w = w.strip_prefix('x').unwrap_or(w);
            w.split('.').next()?.parse::<u32>().ok()
        })?;
    match number {
        8 => Some(MorVersion::X8),
        n if n >= 9 => Some(MorVersion::Current),
        _ => None,
    }
}

/// Whether the running gateway's copy of MOR's directory is fresh: its
/// `/metrics` (at `metrics.listen`) tell the snapshot's age and the refresh
/// interval; older than three intervals is stale (its refreshes fail).
async fn mirror_freshness(addr: SocketAddr) -> (Status, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scrape = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: doctor\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = Vec::new();
        s.take(16 << 20).read_to_end(&mut text).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&text).into_owned())
    };
    let text = match tokio::time::timeout(std::time::Duration::from_secs(3), scrape).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return (
                Status::Skipped,
                format!("no gateway answers at metrics.listen {addr} ({e}): the running mirror not checked"),
            )
        }
        Err(_) => {
            return (
                Status::Skipped,
                format!("the gateway at metrics.listen {addr} did not answer: the running mirror not checked"),
            )
        }
    };
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    let (Some(age), Some(every), Some(at)) = (
        value("mor_gateway_directory_snapshot_age_seconds"),
        value("mor_gateway_directory_refresh_interval_seconds"),
        value("mor_gateway_directory_snapshot_timestamp_seconds"),
    ) else {
        return (
            Status::Skipped,
            format!("the gateway at {addr} exports no directory metrics (is [directory] on in the running config?)"),
        );
    };
    if at == 0.0 {
        (
            Status::Mismatch,
            format!("STALE: the running gateway never loaded MOR's directory ({age:.0} s since it started); see its log and mor_gateway_directory_refreshes_total{{result=\"failed\"}}"),
        )
    } else if age > 3.0 * every.max(1.0) {
        (
            Status::Mismatch,
            format!("STALE: the running gateway decides with a snapshot {age:.0} s old (refresh every {every:.0} s): its refreshes fail; see its log and mor_gateway_directory_refreshes_total{{result=\"failed\"}}"),
        )
    } else {
        (
            Status::Ok,
            format!(
                "the running gateway's snapshot is {age:.0} s old (refresh every {every:.0} s)"
            ),
        )
    }
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Runs every check; the findings in order.
pub fn run(settings: &Settings) -> Vec<Finding> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![Finding {
                status: Status::Unreachable,
                check: "runtime".into(),
                text: e.to_string(),
            }]
        }
    };
    rt.block_on(run_async(settings))
}

async fn run_async(settings: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut find = |status, check: String, text: String| {
        out.push(Finding {
            status,
            check,
            text,
        })
    };
    // MOR's database first, when the config mirrors it: then its keys and
    // switches are what the gateway decides with.
    let mirrored: Option<Directory> = match &settings.mor_db {
        None => None,
        Some(db) => match tokio::time::timeout(db.timeout, mor_db::read(db, None)).await {
            Ok(Ok((mor_db::Read::Fresh(d), _))) => {
                find(
                    Status::Ok,
                    "MOR's database".into(),
                    format!("read: {} users, {} owners", d.user_count, d.owner_count),
                );
                Some(*d)
            }
            Ok(Ok((mor_db::Read::Unchanged, _))) => None,
            Ok(Err(e)) => {
                find(
                    Status::Unreachable,
                    "MOR's database".into(),
                    format!("{e} (directory.url, its user's grants)"),
                );
                None
            }
            Err(_) => {
                find(
                    Status::Unreachable,
                    "MOR's database".into(),
                    format!("no answer within {:?} (directory.timeout)", db.timeout),
                );
                None
            }
        },
    };
    if settings.mor_db.is_some() {
        if let Some(addr) = settings.metrics_listen {
            let (status, text) = mirror_freshness(addr).await;
            find(status, "directory mirror".into(), text);
        }
    }
    let dir = mirrored.as_ref().unwrap_or(&settings.policy.directory);
    let source = if mirrored.is_some() {
        "MOR's database"
    } else {
        "the config"
    };
    let admin: &OwnerSettings = dir.admin();
    let connector = Connector::new(None);
    for &addr in &settings.upstream.servers {
        let at = |what: &str| format!("{what} @ {addr}");
        let admin_name = admin.name.to_string();
        // 1. Reachable, and the admin key.
        let key = admin.key.as_ref().map(|k| k.expose());
        let first = tokio::time::timeout(
            settings.upstream.connect_timeout + settings.upstream.read_timeout,
            ask(
                &connector,
                settings,
                addr,
                false,
                &signed(settings, &admin_name, key),
            ),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()));
        let first = match first {
            Ok(a) => a,
            Err(e) => {
                let tls = if settings.upstream.tls_servers.contains_key(&addr) {
                    " (HTTPS: upstream.ca_file must hold the CA of MOR's certificate)"
                } else {
                    ""
                };
                find(Status::Unreachable, at("MOR"), format!("{e}{tls}"));
                continue;
            }
        };
        find(
            Status::Ok,
            at("MOR"),
            format!("answers HTTP {}", first.status),
        );
        let class = first.class();
        match class {
            MorAnswer::Served => find(
                Status::Ok,
                at("admin key"),
                format!("MOR served a call signed with {source}'s admin key"),
            ),
            MorAnswer::IncorrectHash => find(
                Status::Mismatch,
                at("admin key"),
                format!("MOR answered \"Incorrect hash\" to a call signed with {source}'s admin key: set the gateway's admin key (secrets.admin_key_env / admin_key_file) to MOR's API Secret Key"),
            ),
            MorAnswer::ApiDisabled if admin.allow_api => find(
                Status::Mismatch,
                at("Allow API"),
                format!("MOR answered \"API Requests are disabled\"; {source} has Allow API on: set api.allow_api = false, or turn Allow API on in MOR"),
            ),
            MorAnswer::NoSecretKey => find(
                Status::Mismatch,
                at("admin key"),
                "MOR answered \"API must have Secret Key\": MOR has no API Secret Key".into(),
            ),
            MorAnswer::HttpError => find(
                Status::Mismatch,
                at("API path"),
                format!("MOR answered HTTP {} at {}/system_version_get: is api.prefix right, and upstream.servers MOR's web server?", first.status, settings.policy.prefix),
            ),
            other => find(
                Status::Mismatch,
                at("admin key"),
                format!("MOR answered {} to a signed system_version_get", other.label()),
            ),
        }
        if class == MorAnswer::ApiDisabled {
            if !admin.allow_api {
                find(
                    Status::Ok,
                    at("Allow API"),
                    "off in MOR and in the config".into(),
                );
            }
            // Nothing else can be asked of a MOR whose API is off.
            continue;
        }
        if class == MorAnswer::Served && !admin.allow_api {
            find(
                Status::Mismatch,
                at("Allow API"),
                format!("MOR serves API calls; {source} has Allow API off: set api.allow_api = true (or the gateway refuses every call MOR would serve)"),
            );
        } else if class == MorAnswer::Served {
            find(
                Status::Ok,
                at("Allow API"),
                "on in MOR and in the config".into(),
            );
        }
        // 2. Does MOR check hashes at all?
        let wrong = ask(
            &connector,
            settings,
            addr,
            false,
            &signed(settings, &admin_name, None),
        )
        .await;
        match wrong.map(|a| a.class()) {
            Ok(MorAnswer::Served) if !admin.hash_off => find(
                Status::Mismatch,
                at("hash checking"),
                format!("MOR served a call with a wrong hash (its hash checking is off); {source} has it on: the gateway refuses calls MOR serves (set api.disable_hash_checking = true, or turn hash checking on in MOR)"),
            ),
            Ok(MorAnswer::IncorrectHash) if admin.hash_off => find(
                Status::Mismatch,
                at("hash checking"),
                format!("MOR refuses a wrong hash; {source} has hash checking off: the gateway forwards calls unchecked (set api.disable_hash_checking = false)"),
            ),
            Ok(MorAnswer::Served | MorAnswer::IncorrectHash) => find(
                Status::Ok,
                at("hash checking"),
                format!("{} in MOR and in the config", on(!admin.hash_off)),
            ),
            Ok(other) => find(
                Status::Mismatch,
                at("hash checking"),
                format!("MOR answered {} to a wrongly signed call", other.label()),
            ),
            Err(e) => find(Status::Unreachable, at("hash checking"), e),
        }
        // 3. Allow GET API (asked with a call MOR serves over POST).
        if class != MorAnswer::Served {
            find(
                Status::Skipped,
                at("Allow GET API"),
                "the admin key is not MOR's: not asked".into(),
            );
            continue;
        }
        let got = ask(
            &connector,
            settings,
            addr,
            true,
            &signed(settings, &admin_name, key),
        )
        .await;
        match got.map(|a| a.class()) {
            Ok(MorAnswer::GetDisabled) if dir.allow_get => find(
                Status::Mismatch,
                at("Allow GET API"),
                format!("MOR answered \"GET Requests are disabled\"; {source} has it on: set api.allow_get = false"),
            ),
            Ok(MorAnswer::Served) if !dir.allow_get => find(
                Status::Mismatch,
                at("Allow GET API"),
                format!("MOR serves GET; {source} has it off: the gateway refuses GET calls MOR serves (set api.allow_get = true)"),
            ),
            Ok(MorAnswer::GetDisabled | MorAnswer::Served) => find(
                Status::Ok,
                at("Allow GET API"),
                format!("{} in MOR and in the config", on(dir.allow_get)),
            ),
            Ok(other) => find(
                Status::Mismatch,
                at("Allow GET API"),
                format!("MOR answered {} to a signed GET", other.label()),
            ),
            Err(e) => find(Status::Unreachable, at("Allow GET API"), e),
        }
        // 4. MOR's version against the catalogue's.
        let want = settings.policy.catalog.version();
        match first.body.as_slice() {
            b if class == MorAnswer::Served => match version_of(b) {
                Some(v) => match version_class(&v) {
                    Some(found) if found != want => find(
                        Status::Mismatch,
                        at("MOR version"),
                        format!(
                            "MOR says \"{v}\"; api.mor_version = \"{}\": set it to \"{}\"",
                            want.label(),
                            found.label()
                        ),
                    ),
                    Some(_) => find(
                        Status::Ok,
                        at("MOR version"),
                        format!("\"{v}\", api.mor_version = \"{}\"", want.label()),
                    ),
                    None => find(
                        Status::Skipped,
                        at("MOR version"),
                        format!(
                            "\"{v}\" does not say X8 or later; api.mor_version = \"{}\"",
                            want.label()
                        ),
                    ),
                },
                None => find(
                    Status::Skipped,
                    at("MOR version"),
                    "no <version> in MOR's answer".into(),
                ),
            },
            _ => {}
        }
        // 5. The resellers' keys, where a user of theirs is known.
        if mirrored.is_some() {
            continue;
        }
        for r in &settings.resellers {
            let check = at(&format!("reseller {} key", r.name));
            let Some(user) = r.users.first() else {
                find(Status::Skipped, check, "no user listed to sign with".into());
                continue;
            };
            let q = signed(settings, user, Some(r.key.expose()));
            match ask(&connector, settings, addr, false, &q).await.map(|a| a.class()) {
                Ok(MorAnswer::IncorrectHash) if !r.hash_off => find(
                    Status::Mismatch,
                    check,
                    format!("MOR answered \"Incorrect hash\" for {user} signed with the reseller's key: set its key to the reseller's API Secret Key in MOR"),
                ),
                Ok(MorAnswer::ApiDisabled) if r.allow_api => find(
                    Status::Mismatch,
                    check,
                    format!("MOR answered \"API Requests are disabled\" for {user}; the config has the reseller's Allow API on"),
                ),
                Ok(c) => find(Status::Ok, check, format!("MOR's answer for {user}: {} (not a key refusal)", c.label())),
                Err(e) => find(Status::Unreachable, check, e),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_x8_or_current() {
        assert_eq!(version_class("MOR X8 (build 1234)"), Some(MorVersion::X8));
        assert_eq!(version_class("8.0.3"), Some(MorVersion::X8));
        assert_eq!(version_class("MOR X10"), Some(MorVersion::Current));
        assert_eq!(version_class("MOR 2024 9.1"), Some(MorVersion::Current));
        assert_eq!(version_class("MOR simulator (mor-gateway)"), None);
        assert_eq!(
            version_of(b"<page><version> X8 </version></page>").as_deref(),
            Some("X8")
        );
    }
}
