//! The lockout admin interface, served on the metrics listener:
//! `GET /lockouts` lists the (client address, user) pairs locked out after
//! failed hashes, with the seconds each has left; `POST
//! /lockouts/clear?ip=ADDR&user=NAME` unlocks one pair (its failure count
//! too), logged at info level with the caller's address. JSON answers; no
//! key, hash or password is ever in them.
//!
//! Only callers whose own address (the TCP peer: no header is believed
//! here) is in `metrics.admin_allow` (default: loopback) are answered. In
//! shared mode (`[limits.shared]`) the pairs come from Redis and from this
//! gateway's own table (used while Redis was down), and a clear removes the
//! pair from both.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header;
use ipnet::IpNet;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use serde::Serialize;

use crate::core::client::canonical;
use crate::core::params::{encode, Params};
use crate::core::reply::ceil_secs;
use crate::edge::state::Shared;

/// The paths this module answers.
pub const LIST: &str = "/lockouts";
/// See [`LIST`].
pub const CLEAR: &str = "/lockouts/clear";

/// Whether a caller at `peer` may use the interface: its address
/// (IPv4-mapped IPv6 taken as IPv4) is in `allow`. No address (not a TCP
/// peer): refused.
pub fn admitted(peer: Option<IpAddr>, allow: &[IpNet]) -> bool {
    peer.map(canonical)
        .is_some_and(|ip| allow.iter().any(|n| n.contains(&ip)))
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON text.
    pub body: String,
}

fn json(status: u16, v: &impl Serialize) -> Reply {
    Reply {
        status,
        body: serde_json::to_string(v).unwrap_or_else(|_| "{}".into()) + "\n",
    }
}

fn error(status: u16, msg: &str) -> Reply {
    json(status, &serde_json::json!({ "error": msg }))
}

/// One locked pair.
#[derive(Debug, Serialize)]
struct Locked {
    ip: String,
    user: String,
    seconds_left: u64,
    /// `local` (this gateway's table) or `redis`.
    #[serde(rename = "where")]
    at: &'static str,
}

/// The listing.
#[derive(Debug, Serialize)]
struct Listing {
    /// `off` (no `[limits.lockout]`), `local` or `shared`.
    mode: &'static str,
    lockouts: Vec<Locked>,
    /// Why Redis' locks are missing from the list (shared mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_error: Option<String>,
    /// Redis holds more locks than one listing shows (shared mode).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// Answers a request for `path` (None: not this module's path) from
/// `peer`.
pub async fn answer(
    shared: &Shared,
    method: &str,
    path: &str,
    query: Option<&str>,
    peer: Option<IpAddr>,
) -> Option<Reply> {
    if path != LIST && path != CLEAR {
        return None;
    }
    let st = shared.state.load_full();
    if !admitted(peer, &st.settings.metrics_admin_allow) {
        return Some(error(
            403,
            "the lockout interface answers only metrics.admin_allow",
        ));
    }
    let peer = peer.map_or_else(|| "-".to_string(), |p| canonical(p).to_string());
    Some(match (method, path) {
        ("GET" | "HEAD", LIST) => list(&st).await,
        ("POST", CLEAR) => match pair(query) {
            Ok((ip, user)) => clear(&st, &peer, ip, &user).await,
            Err(e) => error(400, e),
        },
        (_, LIST) => error(405, "GET /lockouts"),
        _ => error(405, "POST /lockouts/clear?ip=ADDR&user=NAME"),
    })
}

fn mode(st: &crate::edge::state::State) -> &'static str {
    match (&st.settings.limits.lockout, &st.shared_limits) {
        (None, _) => "off",
        (Some(_), None) => "local",
        (Some(_), Some(_)) => "shared",
    }
}

async fn list(st: &crate::edge::state::State) -> Reply {
    let mut lockouts: Vec<Locked> = Vec::new();
    let mut redis_error = None;
    let mut truncated = false;
    if let Some(sh) = &st.shared_limits {
        match sh.locked_pairs().await {
            Ok((pairs, cut)) => {
                truncated = cut;
                lockouts.extend(pairs.into_iter().map(|(ip, user, left)| Locked {
                    ip,
                    user,
                    seconds_left: ceil_secs(left),
                    at: "redis",
                }));
            }
            Err(e) => redis_error = Some(e),
        }
    }
    lockouts.extend(
        st.limits
            .locked_pairs()
            .into_iter()
            .map(|(ip, user, left)| Locked {
                ip: ip.to_string(),
                user,
                seconds_left: ceil_secs(left),
                at: "local",
            }),
    );
    json(
        200,
        &Listing {
            mode: mode(st),
            lockouts,
            redis_error,
            truncated,
        },
    )
}

/// `ip` and `user` of a clear request's query (`user` may be empty: calls
/// without `u`).
fn pair(query: Option<&str>) -> Result<(IpAddr, String), &'static str> {
    let mut p = Params::new();
    p.add_form(query.unwrap_or("").as_bytes())
        .map_err(|_| "a query like ?ip=ADDR&user=NAME, each once")?;
    let ip = p
        .scalar("ip")
        .map_err(|_| "ip once")?
        .ok_or("ip=ADDR is required")?
        .parse::<IpAddr>()
        .map_err(|_| "ip is not an address")?;
    let user = p
        .scalar("user")
        .map_err(|_| "user once")?
        .ok_or("user=NAME is required (empty for calls without u)")?;
    Ok((canonical(ip), user.to_string()))
}

async fn clear(st: &crate::edge::state::State, peer: &str, ip: IpAddr, user: &str) -> Reply {
    let key = st.settings.limits.key(ip);
    let local = st.limits.unlock(ip, user);
    let redis = match &st.shared_limits {
        Some(sh) => Some(sh.unlock(key, user).await),
        None => None,
    };
    let cleared = local || matches!(redis, Some(Ok(true)));
    let at = match (local, &redis) {
        (true, Some(Ok(true))) => "local and redis",
        (true, _) => "local",
        (false, Some(Ok(true))) => "redis",
        _ => "nowhere",
    };
    tracing::info!(
        "lockouts: {peer} cleared the lock of ip {key} user {user:?}: {}",
        if cleared {
            format!("unlocked ({at})")
        } else {
            "it was not locked".to_string()
        }
    );
    if let Some(Err(e)) = redis {
        return json(
            503,
            &serde_json::json!({
                "cleared": cleared,
                "ip": key.to_string(),
                "user": user,
                "error": format!("Redis: {e}"),
            }),
        );
    }
    json(
        if cleared { 200 } else { 404 },
        &serde_json::json!({ "cleared": cleared, "ip": key.to_string(), "user": user }),
    )
}

/// The `mor-gateway lockouts` command's side: asks the running gateway's
/// metrics listener at `addr` (from loopback, like an admin on the host)
/// for the list, or to clear `clear` = (ip, user); the lines to print, or
/// why not (a pair not locked is an error too).
pub async fn ask(addr: SocketAddr, clear: Option<(&str, &str)>) -> Result<Vec<String>, String> {
    let (method, target) = match clear {
        None => ("GET", LIST.to_string()),
        Some((ip, user)) => (
            "POST",
            format!("{CLEAR}?ip={}&user={}", encode(ip), encode(user)),
        ),
    };
    let (status, body) = request(addr, method, &target).await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| format!("{addr} answered {status}, not the lockout interface"))?;
    let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match (clear, status) {
        (_, 200) if clear.is_some() => Ok(vec![format!(
            "cleared: ip {} user {:?}",
            text("ip"),
            text("user")
        )]),
        (Some(_), 404) => Err(format!(
            "not locked: ip {} user {:?}",
            text("ip"),
            text("user")
        )),
        (None, 200) => {
            let mut out = vec![format!("lockout mode: {}", text("mode"))];
            if let Some(e) = v["redis_error"].as_str() {
                out.push(format!("WARNING: Redis' locks not listed: {e}"));
            }
            if v["truncated"] == true {
                out.push("WARNING: Redis holds more locks than one listing shows".into());
            }
            let list = v["lockouts"].as_array().cloned().unwrap_or_default();
            for p in &list {
                out.push(format!(
                    "{}  {:?}  {}s left  ({})",
                    p["ip"].as_str().unwrap_or(""),
                    p["user"].as_str().unwrap_or(""),
                    p["seconds_left"].as_u64().unwrap_or(0),
                    p["where"].as_str().unwrap_or("")
                ));
            }
            out.push(format!("{} locked pair(s)", list.len()));
            Ok(out)
        }
        _ => Err(format!(
            "{addr} answered {status}: {}",
            v["error"].as_str().unwrap_or("")
        )),
    }
}

/// One plain HTTP request to the metrics listener; its status and body.
async fn request(addr: SocketAddr, method: &str, target: &str) -> Result<(u16, Vec<u8>), String> {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(5));
    peer.options.read_timeout = Some(Duration::from_secs(10));
    let connector = Connector::new(None);
    let (mut s, _) = connector.get_http_session(&peer).await.map_err(|e| {
        format!(
            "cannot reach the metrics listener at {addr}: {}",
            e.etype().as_str()
        )
    })?;
    let mut req =
        RequestHeader::build(method, target.as_bytes(), Some(3)).map_err(|e| e.to_string())?;
    let fail = |e: Box<pingora::Error>| e.to_string();
    req.insert_header(header::HOST, addr.to_string())
        .map_err(fail)?;
    req.insert_header(header::CONTENT_LENGTH, "0")
        .map_err(fail)?;
    s.write_request_header(Box::new(req)).await.map_err(fail)?;
    s.finish_request_body().await.map_err(fail)?;
    s.read_response_header().await.map_err(fail)?;
    let status = s.response_header().map_or(0, |h| h.status.as_u16());
    let mut body = Vec::new();
    while let Some(chunk) = s.read_response_body().await.map_err(fail)? {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 * 1024 {
            return Err("answer too large".into());
        }
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_the_allowed_networks_are_answered() {
        let loopback = nets(&["127.0.0.0/8", "::1/128"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(admitted(ip("127.0.0.1"), &loopback));
        assert!(admitted(ip("127.0.0.2"), &loopback));
        assert!(admitted(ip("::1"), &loopback));
        assert!(admitted(ip("::ffff:127.0.0.1"), &loopback));
        assert!(!admitted(ip("192.0.2.1"), &loopback));
        assert!(!admitted(ip("10.0.0.1"), &loopback));
        assert!(!admitted(ip("2001:db8::1"), &loopback));
        assert!(!admitted(None, &loopback));
        let wider = nets(&["127.0.0.0/8", "10.1.0.0/16"]);
        assert!(admitted(ip("10.1.2.3"), &wider));
        assert!(!admitted(ip("10.2.0.1"), &wider));
        assert!(!admitted(ip("127.0.0.1"), &[]));
    }

    #[test]
    fn a_clear_names_one_pair() {
        assert_eq!(
            pair(Some("ip=192.0.2.1&user=al%20ice")).unwrap(),
            ("192.0.2.1".parse().unwrap(), "al ice".to_string())
        );
        assert_eq!(
            pair(Some("ip=::ffff:192.0.2.1&user=")).unwrap(),
            ("192.0.2.1".parse().unwrap(), String::new())
        );
        assert!(pair(Some("ip=192.0.2.1")).is_err());
        assert!(pair(Some("user=bob")).is_err());
        assert!(pair(Some("ip=nonsense&user=bob")).is_err());
        assert!(pair(Some("ip=192.0.2.1&ip=192.0.2.2&user=bob")).is_err());
        assert!(pair(None).is_err());
    }
}
