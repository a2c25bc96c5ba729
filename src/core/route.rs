//! Path normalisation: a request path is decoded and checked once, then
//! matched. Empty segments (`//`, trailing `/`) collapse as Rails' router
//! does; `.`/`..` segments, encoded slashes and broken escapes are refused;
//! `/<id>` and `.<format>` suffixes are recognised so they are verified too
//! (which names take a `/<id>` is the catalogue's to say).

use std::borrow::Cow;

use crate::core::catalog::{valid_name, Catalog};
use crate::core::params::encode;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `.` or `..` segment.
    #[error("path traversal segments are not allowed")]
    Traversal,
    /// An escape that decodes to `/`, `\`, or a control character.
    #[error("encoded slash or control character in path")]
    EncodedSeparator,
    /// A `%` not followed by two hex digits, or non-UTF-8.
    #[error("invalid %-encoding in path")]
    BadEscape,
    /// Not a name MOR routes.
    #[error("invalid API method name")]
    BadName,
    /// More segments than `<method>/<id>`.
    #[error("no such API path")]
    TooDeep,
    /// A format suffix that is not a plain word, or a second dot.
    #[error("unsupported format suffix")]
    BadFormat,
    /// The prefix itself, without a method.
    #[error("no API method in path")]
    NoMethod,
    /// Not an absolute path.
    #[error("request target is not an absolute path")]
    NotAbsolute,
}

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// `<prefix>/<method>[/<id>][.xml]`.
    Api(ApiPath),
    /// `<prefix>/v2/...` (MOR's REST API; JWT, no SHA1 hash).
    RestV2,
    /// Anything outside the prefix.
    Other,
}

/// A legacy API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    /// Method name as requested (may be an alias).
    pub method: String,
    /// `/<id>` suffix, decoded (Rails' `params[:id]`).
    pub id: Option<String>,
    /// `.<format>` suffix (Rails' `params[:format]`; MOR ignores it).
    pub format: Option<String>,
}

fn decode_segment(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    // A segment without an escape (the usual one) is its own text.
    let s = if raw.contains('%') {
        let b = raw.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let h = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let l = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                match (h, l) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(RouteError::BadEscape),
                }
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Cow::Owned(String::from_utf8(out).map_err(|_| RouteError::BadEscape)?)
    } else {
        Cow::Borrowed(raw)
    };
    if s.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(RouteError::EncodedSeparator);
    }
    if s == "." || s == ".." {
        return Err(RouteError::Traversal);
    }
    Ok(s)
}

fn split_format(seg: &str) -> Result<(&str, Option<String>), RouteError> {
    match seg.split_once('.') {
        None => Ok((seg, None)),
        Some((name, f))
            if !f.is_empty()
                && f.len() <= 32
                && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok((name, Some(f.to_string())))
        }
        Some(_) => Err(RouteError::BadFormat),
    }
}

/// Classifies `path` (no query string) against the API `prefix`.
pub fn route(path: &str, prefix: &str) -> Result<PathKind, RouteError> {
    if !path.starts_with('/') {
        return Err(RouteError::NotAbsolute);
    }
    // Every segment is decoded (and its error returned) before the prefix
    // is compared.
    let mut segs = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        segs.push(decode_segment(raw)?);
    }
    let pre = prefix.split('/').filter(|s| !s.is_empty());
    let pre_len = pre.clone().count();
    if segs.len() < pre_len || segs.iter().zip(pre).any(|(a, b)| a != b) {
        return Ok(PathKind::Other);
    }
    let rest = &segs[pre_len..];
    match rest {
        [] => Err(RouteError::NoMethod),
        [first, ..] if first == "v2" => Ok(PathKind::RestV2),
        [m] => {
            let (name, format) = split_format(m)?;
            api(name, None, format)
        }
        [m, id] => {
            if m.contains('.') {
                return Err(RouteError::BadFormat);
            }
            let (id, format) = split_format(id)?;
            if id.is_empty() {
                return Err(RouteError::TooDeep);
            }
            api(m, Some(id.to_string()), format)
        }
        _ => Err(RouteError::TooDeep),
    }
}

fn api(name: &str, id: Option<String>, format: Option<String>) -> Result<PathKind, RouteError> {
    if !valid_name(name) {
        return Err(RouteError::BadName);
    }
    Ok(PathKind::Api(ApiPath {
        method: name.to_string(),
        id,
        format,
    }))
}

/// What is shown of a path in logs: the path, except that everything after
/// the action's name is `[redacted]` when the action's `/<id>` is a secret
/// (a SIP password). Judged on the path as sent, whether it routes or not.
pub fn redact_path<'a>(path: &'a str, prefix: &str, catalog: &Catalog) -> Cow<'a, str> {
    let pre = prefix.split('/').filter(|s| !s.is_empty()).count();
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    let Some(action) = segs.nth(pre) else {
        return Cow::Borrowed(path);
    };
    if segs.next().is_none() || !secret_action(action, catalog) {
        return Cow::Borrowed(path);
    }
    let keep = path.find(action).map_or(0, |i| i + action.len());
    Cow::Owned(format!("{}/[redacted]", &path[..keep]))
}

/// True when a path segment names (leniently decoded, format dropped) an
/// action whose id is a secret.
pub fn secret_action(segment: &str, catalog: &Catalog) -> bool {
    let name = decode_segment(segment).unwrap_or(Cow::Borrowed(segment));
    let name = name.split('.').next().unwrap_or("");
    catalog.lookup(name).is_some_and(|f| f.method.secret_id)
}

/// The canonical path forwarded to MOR.
pub fn forward_path(prefix: &str, method: &str, id: Option<&str>, format: Option<&str>) -> String {
    let mut p = String::with_capacity(prefix.len() + method.len() + 16);
    p.push_str(prefix);
    p.push('/');
    p.push_str(method);
    if let Some(id) = id {
        p.push('/');
        p.push_str(&encode(id));
    }
    if let Some(f) = format {
        p.push('.');
        p.push_str(f);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/billing/api";

    fn api_of(path: &str) -> ApiPath {
        match route(path, P) {
            Ok(PathKind::Api(a)) => a,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn plain_and_equivalent_forms_resolve_to_same_method() {
        for p in [
            "/billing/api/user_details_get",
            "/billing/api/user_details_get/",
            "//billing//api///user_details_get",
            "/billing/api/user%5Fdetails_get",
        ] {
            let a = api_of(p);
            assert_eq!(a.method, "user_details_get", "{p}");
            assert_eq!(a.id, None);
        }
    }

    #[test]
    fn id_and_format_suffixes() {
        let a = api_of("/billing/api/user_details_get.xml");
        assert_eq!(
            (a.method.as_str(), a.format.as_deref()),
            ("user_details_get", Some("xml"))
        );
        let a = api_of("/billing/api/user_balance_get_by_username/101");
        assert_eq!(a.id.as_deref(), Some("101"));
        let a = api_of("/billing/api/card_group_get/5.xml");
        assert_eq!(
            (a.id.as_deref(), a.format.as_deref()),
            (Some("5"), Some("xml"))
        );
        assert_eq!(
            api_of("/billing/api/x.json").format.as_deref(),
            Some("json")
        );
        assert_eq!(route("/billing/api/x.a.b", P), Err(RouteError::BadFormat));
        assert_eq!(route("/billing/api/x.", P), Err(RouteError::BadFormat));
        assert_eq!(route("/billing/api/x.a-b", P), Err(RouteError::BadFormat));
        assert_eq!(route("/billing/api/x.xml/5", P), Err(RouteError::BadFormat));
        assert_eq!(route("/billing/api/x/5/6", P), Err(RouteError::TooDeep));
    }

    #[test]
    fn traversal_and_encoded_separators_refused() {
        for p in [
            "/billing/api/../api/user_details_get",
            "/billing/api/./user_details_get",
            "/billing/api/%2e%2e/x",
            "/billing/../billing/api/user_details_get",
        ] {
            assert_eq!(route(p, P), Err(RouteError::Traversal), "{p}");
        }
        assert_eq!(
            route("/billing/api%2Fuser_details_get", P),
            Err(RouteError::EncodedSeparator)
        );
        assert_eq!(
            route("/billing/api/a%5Cb", P),
            Err(RouteError::EncodedSeparator)
        );
        assert_eq!(
            route("/billing/api/a%00", P),
            Err(RouteError::EncodedSeparator)
        );
        assert_eq!(route("/billing/api/a%zz", P), Err(RouteError::BadEscape));
        assert_eq!(
            route("/billing/api/User_Details_Get", P),
            Err(RouteError::BadName)
        );
    }

    #[test]
    fn other_and_v2() {
        assert_eq!(route("/billing/callc/login", P), Ok(PathKind::Other));
        assert_eq!(route("/", P), Ok(PathKind::Other));
        assert_eq!(route("/billing/api/v2/calls", P), Ok(PathKind::RestV2));
        assert_eq!(route("/billing/api", P), Err(RouteError::NoMethod));
        assert_eq!(
            route("/billing/apix/user_details_get", P),
            Ok(PathKind::Other)
        );
        assert_eq!(route("*", P), Err(RouteError::NotAbsolute));
    }

    #[test]
    fn secret_ids_are_redacted_for_logs() {
        let c = Catalog::parse(
            crate::core::catalog::EMBEDDED,
            crate::core::catalog::Product::Mor,
        )
        .unwrap();
        for p in [
            "/billing/api/user_balance_get_by_psw/s3cr3t-pw",
            "/billing/api/user_balance_get_by_psw/s3cr3t-pw.xml",
            "//billing/api/user_balance_get_by%5Fpsw/s3cr3t-pw/more",
        ] {
            let r = redact_path(p, P, &c);
            assert!(!r.contains("s3cr3t"), "{r}");
            assert!(r.ends_with("/[redacted]"), "{r}");
        }
        for p in [
            "/billing/api/user_balance_get_by_username/john_sip",
            "/billing/api/user_balance_get_by_psw",
            "/billing/api/card_group_get/5",
        ] {
            assert_eq!(redact_path(p, P, &c), p);
        }
    }

    #[test]
    fn forward_path_is_canonical() {
        assert_eq!(
            forward_path(P, "user_details_get", None, None),
            "/billing/api/user_details_get"
        );
        assert_eq!(
            forward_path(P, "card_group_get", Some("a b"), Some("xml")),
            "/billing/api/card_group_get/a%20b.xml"
        );
    }
}
