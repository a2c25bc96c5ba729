//! `mor-gateway explain`: one call, as a client sent it, taken through the
//! decision step by step with the functions the proxy runs (route, the
//! catalogue's rule, the parameter view, the caller's lookup, the hash walk,
//! the layers' modes), then the verdict of the proxy's own route
//! ([`decision::decide_now`]) and the exact reply. No key is ever printed;
//! the hash the gateway expects only with `--show-expected-hash` (the output
//! lands in tickets). The rate-limit layers are listed, not asked: explain
//! spends no token and trips no lockout.

use std::fmt::Write;
use std::net::IpAddr;

use crate::config::Settings;
use crate::core::catalog::{Auth, Caller};
use crate::core::decision::{self, Check, Head, Verdict};
use crate::core::directory::{Directory, Lookup};
use crate::core::layers::Guard;
use crate::core::limits::{Answer, Layer, Open};
use crate::core::params::Params;
use crate::core::reply;
use crate::core::route::{route, PathKind};
use crate::core::signature::{self, Fate};
use crate::ops::accesslog::{is_secret_name, redact_query_also};

/// One call as the client sent it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path and query (`/billing/api/x?u=...`), or a whole URL.
    pub url: &'a str,
    /// `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
    /// The client's address (per-address policies).
    pub client_ip: IpAddr,
}

/// What `explain` found: its lines and the verdict.
#[derive(Debug)]
pub struct Explained {
    /// The report, one step per line (continuations indented).
    pub lines: Vec<String>,
    /// The verdict of the proxy's route.
    pub verdict: Verdict,
}

/// The directory the gateway would decide with: MOR's database when the
/// config mirrors it (read once, within `directory.timeout`), else the
/// static config's.
pub fn directory(settings: &Settings) -> Result<std::sync::Arc<Directory>, String> {
    let Some(db) = &settings.mor_db else {
        return Ok(settings.policy.directory.clone());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        match tokio::time::timeout(db.timeout, crate::edge::mor_db::read(db, None)).await {
            Ok(Ok((crate::edge::mor_db::Read::Fresh(d), _))) => Ok(std::sync::Arc::new(*d)),
            Ok(Ok(_)) => Err("MOR's database gave no snapshot".into()),
            Ok(Err(e)) => Err(format!("cannot read MOR's database: {e}")),
            Err(_) => Err(format!(
                "MOR's database did not answer within {:?}",
                db.timeout
            )),
        }
    })
}

/// The path and query of `url` (a whole URL or a path).
fn target(url: &str) -> (&str, Option<&str>) {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => url,
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    }
}

/// A value as it may be shown: secrets redacted, a given hash shortened.
fn shown(name: &str, text: &str) -> String {
    if name == "hash" {
        let head: String = text.chars().take(8).collect();
        return format!("{head}... ({} characters)", text.chars().count());
    }
    if is_secret_name(name) {
        return "[redacted]".into();
    }
    let t: String = text.chars().take(80).collect();
    if t.len() < text.len() {
        format!("{t:?}...")
    } else {
        format!("{t:?}")
    }
}

/// Explains `call` under `settings` with the directory `dir`.
pub fn explain(
    settings: &Settings,
    dir: &Directory,
    call: &Call<'_>,
    show_hash: bool,
) -> Explained {
    let s = &settings.policy;
    let mut out = Vec::new();
    let (path, query) = target(call.url);
    let head = Head {
        method: call.method,
        path,
        query,
        content_type: call.content_type,
        client_ip: call.client_ip,
    };
    out.push(format!(
        "request    {} {path}{}{} ({} body bytes, from {})",
        call.method,
        if query.is_some() { "?" } else { "" },
        query
            .map(|q| redact_query_also(q, false))
            .unwrap_or_default(),
        call.body.len(),
        call.client_ip
    ));
    // The verdict first computed by the proxy's own route; the steps below
    // show how it came about.
    let verdict = decision::decide_now(s, dir, &settings.limits, &Open, &head, call.body);
    steps(settings, dir, &head, call.body, show_hash, &mut out);
    verdict_lines(settings, &verdict, &mut out);
    Explained {
        lines: out,
        verdict,
    }
}

fn steps(
    settings: &Settings,
    dir: &Directory,
    head: &Head<'_>,
    body: &[u8],
    show_hash: bool,
    out: &mut Vec<String>,
) {
    let s = &settings.policy;
    let api = match route(head.path, &s.prefix) {
        Err(e) => {
            out.push(format!("route      refused: {e}"));
            return;
        }
        Ok(PathKind::Api(a)) => a,
        Ok(PathKind::RestV2) => {
            out.push(format!(
                "route      a REST v2 path: api.rest_v2 = {:?}",
                s.rest_v2
            ));
            return;
        }
        Ok(PathKind::Other) => {
            out.push(format!(
                "route      outside {}: api.other_paths = {:?}",
                s.prefix, s.other_paths
            ));
            return;
        }
    };
    let found = s.catalog.lookup(&api.method);
    let method = found.map(|f| f.method);
    let mut line = format!("route      API action {:?}", api.method);
    if let Some(f) = found {
        match f.alias {
            Some(a) => {
                let _ = write!(line, ", legacy alias of {}", f.method.name);
                let _ = write!(
                    line,
                    " (forwarded as {} unless a /<id> route keeps {a})",
                    f.method.name
                );
            }
            None => line.push_str(", catalogued"),
        }
    } else {
        let _ = write!(
            line,
            ", not in the catalogue (api.unknown_methods = {:?})",
            s.unknown_methods
        );
    }
    if let Some(id) = &api.id {
        let _ = write!(line, "; /<id> = {}", shown("id", id));
    }
    out.push(line);
    let label = found.map_or("other", |f| f.method.name.as_str());
    match method {
        Some(m) => {
            out.push(format!("action     {} in the catalogue:", m.name));
            for l in s.catalog.describe(&m.name).lines() {
                if !l.starts_with("method") {
                    out.push(format!("             {l}"));
                }
            }
        }
        None => out.push("action     not catalogued: hashed by the global order".into()),
    }
    // The first stage as the proxy runs it (the per-IP layer not asked).
    match decision::admit(s, dir, head).map(|a| a.conclude(Answer::default())) {
        Err(r) | Ok(Err(r)) => {
            out.push(format!(
                "stage one  refused before the body is read: {} ({})",
                r.refusal.reason.label(),
                r.refusal.message()
            ));
            if let Some(w) = r.info.would_refuse.describe() {
                out.push(format!("           reported on the way: {w}"));
            }
        }
        Ok(Ok(a)) => {
            let mut line = format!(
                "stage one  passed: HTTP method, Allow API (any owner), Allow GET API ({}), the action's rule",
                if dir.allow_get { "on" } else { "off" }
            );
            if let Some(w) = a.info().would_refuse.describe() {
                let _ = write!(line, "; would refuse but reports: {w}");
            }
            out.push(line);
            for (g, r) in a.waiting() {
                out.push(format!(
                    "           {} ({}) waits for the caller's owner: layer {} is set per owner",
                    r.reason.label(),
                    r.message(),
                    g.label()
                ));
            }
        }
    }

    let params = match decision::view(head, &api, method, body) {
        Ok(p) => p,
        Err(e) => {
            out.push(format!("parameters refused: {e}"));
            return;
        }
    };
    params_lines(&params, out);

    let lookup = match decision::lookup(dir, method, &params) {
        Ok(l) => l,
        Err(e) => {
            out.push(format!("caller     refused: {e}"));
            return;
        }
    };
    let by = match method.map_or(Caller::U, |m| m.caller) {
        Caller::U => "u",
        Caller::Username => "username",
        Caller::UniquehashId => "id (the owner's uniquehash)",
    };
    let owner = match lookup {
        Lookup::Known(c) => {
            let o = dir.owner(c.owner);
            let name = o.map_or("?", |o| &o.name);
            out.push(format!(
                "caller     found by {by}; owner {name}{}",
                if c.reseller_itself {
                    " (the caller is that reseller)"
                } else {
                    ""
                }
            ));
            if let Some(o) = o {
                out.push(format!(
                    "owner      {name}: Allow API {}, hash checking {}, key {}",
                    if dir.allow_api(c) { "on" } else { "off" },
                    if dir.hash_off(c) { "off" } else { "on" },
                    if o.key.is_some() { "set" } else { "EMPTY" }
                ));
            }
            Some(name.to_string())
        }
        Lookup::Unknown => {
            out.push(format!(
                "caller     by {by}: not in MOR's directory (MOR has no current user)"
            ));
            None
        }
        Lookup::Unlisted => {
            out.push(format!(
                "caller     by {by}: not listed in the static config: the admin's switches apply and any configured key may sign"
            ));
            None
        }
    };

    // The address lists of [access] (the global ones decided in stage one).
    if !s.access.is_open() {
        let global = if s.access.global.admits(head.client_ip) {
            "admit"
        } else {
            "refuse"
        };
        let of_owner = match lookup {
            Lookup::Known(c) => match s.access.owner(dir, c.owner, head.client_ip) {
                Ok(()) => "; the owner's lists (if any) admit it".to_string(),
                Err(_) => "; the owner's lists refuse it (address_denied)".to_string(),
            },
            Lookup::Unlisted => {
                "; an unlisted caller is held to the lists of the owner whose key signs".into()
            }
            Lookup::Unknown => String::new(),
        };
        out.push(format!(
            "access     client {}: the global lists {global} it{of_owner}",
            head.client_ip
        ));
    }
    let check = decision::check_of(s, method);
    match check {
        Check::None => out.push(format!(
            "hash       none: {}",
            method.map_or("", |m| m.auth.label())
        )),
        Check::Skip(why) => out.push(format!(
            "hash       not checked by the gateway ({}); MOR checks it",
            why.label()
        )),
        Check::Rule | Check::Lists(_) => hash_lines(
            settings, dir, method, &params, lookup, check, show_hash, out,
        ),
    }
    if method.is_some_and(|m| m.auth == Auth::UsernameOnly) {
        out.push("hash       MOR serves this action with u alone; the gateway closes it (layer username_only)".into());
    }

    let modes = s.rollout.modes(label, owner.as_deref());
    let mut line = "layers    ".to_string();
    for g in Guard::ALL {
        let configured = match g {
            Guard::Quota(Layer::Ip) => settings.limits.per_ip.is_some(),
            Guard::Quota(Layer::User) => settings.limits.per_user.is_some(),
            Guard::Quota(Layer::Method) => settings.limits.per_method.contains_key(label),
            Guard::Quota(Layer::MethodUser) => settings.limits.per_method_user.contains_key(label),
            Guard::Lockout => settings.limits.lockout.is_some(),
            _ => true,
        };
        if configured {
            let _ = write!(
                line,
                " {}={}",
                g.label(),
                if modes.enforces(g) {
                    "enforce"
                } else {
                    "report"
                }
            );
        }
    }
    out.push(line);
    if settings.limits.is_exempt(head.client_ip) {
        out.push("           the client is in limits.exempt: no quota applies".into());
    }
    out.push(
        "           (quotas and the lockout are listed, not asked: explain spends no token)".into(),
    );
}

fn params_lines(params: &Params, out: &mut Vec<String>) {
    let mut names: Vec<(&str, String)> = params
        .iter()
        .map(|(n, v)| {
            let text = v
                .ruby_text()
                .map_or_else(|| "(a list or map)".to_string(), |t| shown(n, t));
            (n, text)
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    if names.is_empty() {
        out.push("parameters none".into());
        return;
    }
    let mut first = true;
    for (n, t) in names {
        out.push(format!(
            "{}{n} = {t}",
            if first { "parameters " } else { "           " }
        ));
        first = false;
    }
}

#[allow(clippy::too_many_arguments)]
fn hash_lines(
    settings: &Settings,
    dir: &Directory,
    method: Option<&crate::core::catalog::Method>,
    params: &Params,
    lookup: Lookup,
    check: Check<'_>,
    show_hash: bool,
    out: &mut Vec<String>,
) {
    let cat = &settings.policy.catalog;
    let lists: Vec<Vec<signature::Part<'_>>> = match check {
        Check::Lists(lists) => {
            out.push(format!(
                "hash       undetermined action: any of {} candidate lists (api.undetermined = \"candidates\")",
                lists.len()
            ));
            let mut v = Vec::new();
            for l in lists {
                match signature::own_parts(l, params) {
                    Ok(p) => v.push(p),
                    Err(e) => {
                        out.push(format!("hash       refused: {e}"));
                        return;
                    }
                }
            }
            v
        }
        _ => match signature::explain_parts(cat, method, params) {
            Ok((parts, fates)) => {
                for (n, f) in fates {
                    if f != Fate::Hashed && n != "hash" {
                        let filter = match (f, cat.filter(n)) {
                            (Fate::Filtered, Some(crate::core::catalog::Filter::Kind(k))) => {
                                format!(" ({k:?})")
                            }
                            (
                                Fate::Filtered,
                                Some(crate::core::catalog::Filter::OneOf { one_of }),
                            ) => {
                                format!(" (one of {})", one_of.join(", "))
                            }
                            _ => String::new(),
                        };
                        out.push(format!("left out   {n}: {}{filter}", f.describe()));
                    }
                }
                vec![parts]
            }
            Err(e) => {
                out.push(format!("hash       refused: {e}"));
                return;
            }
        },
    };
    for (i, parts) in lists.iter().enumerate() {
        let mut text = String::new();
        let mut line = if lists.len() > 1 {
            format!("hashed     list {}:", i + 1)
        } else {
            "hashed    ".to_string()
        };
        for (n, t) in parts {
            let _ = write!(line, " {n}={}", shown(n, t));
            text.push_str(if is_secret_name(n) { "[redacted]" } else { t });
        }
        if parts.is_empty() {
            line.push_str(" nothing (the key alone)");
        }
        out.push(line);
        out.push(format!(
            "           SHA1 of {:?} + the key",
            text.chars().take(200).collect::<String>()
        ));
    }
    let given = params.scalar("hash").ok().flatten();
    if given.is_none() {
        out.push("given      no hash".into());
    }
    let ids: Vec<_> = match lookup {
        Lookup::Known(c) => dir.signers(c).ids().to_vec(),
        Lookup::Unlisted => dir.any_signers().to_vec(),
        Lookup::Unknown => Vec::new(),
    };
    if ids.is_empty() {
        out.push("keys       none to try (no owner key)".into());
    }
    // The gateway's own trial of the keys, each digest seen and compared
    // by the digest's own rule.
    let mut tried: Vec<(crate::core::directory::UserId, bool, Vec<String>)> = Vec::new();
    let _ = decision::signed_by(dir, &ids, &lists, given.unwrap_or(""), |id, d| {
        let hit = given.is_some_and(|g| d.matches(g));
        match tried.last_mut() {
            Some((last, matched, digests)) if *last == id => {
                *matched |= hit;
                digests.push(d.as_str().to_string());
            }
            _ => tried.push((id, hit, vec![d.as_str().to_string()])),
        }
    });
    for (id, matched, digests) in tried {
        let Some(o) = dir.owner(id) else { continue };
        let mut line = format!(
            "key        of {}: {}",
            o.name,
            match (given, matched) {
                (None, _) => "not compared",
                (Some(_), true) => "MATCHES",
                (Some(_), false) => "does not match",
            }
        );
        if show_hash {
            let _ = write!(line, "; expected hash {}", digests.join(" or "));
        }
        out.push(line);
    }
}

fn verdict_lines(settings: &Settings, v: &Verdict, out: &mut Vec<String>) {
    match v {
        Verdict::Forward(f, info) => {
            out.push(format!(
                "verdict    FORWARD as {} (signer {:?})",
                redact_path_and_query(f.path_and_query.as_str()),
                f.signer
            ));
            if let Some(w) = info.would_refuse.describe() {
                out.push(format!(
                    "           a layer set to report would refuse it: {w}"
                ));
            }
            if let Some(k) = f.skipped {
                out.push(format!(
                    "           the gateway did not check its hash: {}",
                    k.label()
                ));
            }
        }
        Verdict::Refuse(r, info) => {
            out.push(format!(
                "verdict    REFUSE: {} ({})",
                r.reason.label(),
                r.message()
            ));
            if let Some(w) = info.would_refuse.describe() {
                out.push(format!("           reported on the way: {w}"));
            }
            let rendered = reply::render(r, info.envelope, settings.reply_mode);
            out.push(format!(
                "reply      HTTP {}{}",
                rendered.status,
                rendered
                    .retry_after
                    .map(|s| format!(", Retry-After: {s}"))
                    .unwrap_or_default()
            ));
            out.push(format!("           {}", rendered.body));
        }
    }
}

fn redact_path_and_query(pq: &str) -> String {
    match pq.split_once('?') {
        Some((p, q)) => format!("{p}?{}", redact_query_also(q, false)),
        None => pq.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_urls_and_paths() {
        assert_eq!(
            target("http://gw:8080/billing/api/x?u=a#f"),
            ("/billing/api/x", Some("u=a"))
        );
        assert_eq!(target("/billing/api/x"), ("/billing/api/x", None));
        assert_eq!(target("https://gw"), ("/", None));
    }

    #[test]
    fn secrets_are_never_shown() {
        assert_eq!(shown("p", "pw"), "[redacted]");
        assert!(
            shown("hash", "f7c3bc1d808e04732adf679965ccc34ca7ae3441").starts_with("f7c3bc1d...")
        );
        assert!(!shown("hash", "f7c3bc1d808e04732adf679965ccc34ca7ae3441").contains("808e"));
    }
}
