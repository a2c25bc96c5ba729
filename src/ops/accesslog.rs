//! The access log: one JSON line per request, secrets redacted.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::config::LogMode;

/// One access-log record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Unix time, seconds with milliseconds.
    pub ts: f64,
    /// Client IP.
    pub client_ip: String,
    /// HTTP method.
    pub http_method: &'a str,
    /// Request path as received (no query).
    pub path: &'a str,
    /// Query string with secret values redacted.
    pub query: Option<String>,
    /// Canonical API method, if catalogued.
    pub api_method: Option<&'a str>,
    /// Alias used, if any.
    pub alias: Option<&'a str>,
    /// `u`.
    pub user: Option<&'a str>,
    /// forwarded, refused, limited or upstream_error.
    pub verdict: &'a str,
    /// Refusal reason label, if refused.
    pub reason: Option<&'a str>,
    /// HTTP status sent.
    pub status: u16,
    /// Gateway latency in milliseconds.
    pub latency_ms: f64,
    /// Upstream used, if any.
    pub upstream: Option<String>,
    /// Key that signed (admin, reseller:NAME, unchecked).
    pub signer: Option<String>,
}

/// True for parameter names whose values must never be logged.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "hash" | "p" | "pswd" | "uniquehash" | "key" | "token" | "password2"
    ) || n.contains("password")
        || n.contains("secret")
        || n.contains("passwd")
}

/// A query string with the values of secret names replaced by `[redacted]`.
/// Pairs are split on `&` and `;` as MOR splits them; a name is judged by its
/// base (`p[]`, `hash[x]` are `p`, `hash`); a name that does not decode is
/// treated as secret. Separators and the other pairs are kept as sent.
pub fn redact_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut rest = q;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        let secret = match crate::core::params::decode(name.as_bytes()) {
            Ok(n) => is_secret_name(n.split('[').next().unwrap_or("")),
            Err(_) => true,
        };
        if secret && pair.contains('=') {
            out.push_str(name);
            out.push_str("=[redacted]");
        } else {
            out.push_str(pair);
        }
        match rest[end..].chars().next() {
            Some(sep) => {
                out.push(sep);
                rest = &rest[end + 1..];
            }
            None => return out,
        }
    }
}

/// Where records go.
pub struct AccessLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl AccessLog {
    /// Opens the log for `mode` (appending to `path` for file mode).
    pub fn open(mode: LogMode, path: Option<&Path>) -> std::io::Result<AccessLog> {
        let out: Option<Box<dyn Write + Send>> = match (mode, path) {
            (LogMode::Off, _) => None,
            (LogMode::Stdout, _) => Some(Box::new(LineWriter::new(std::io::stdout()))),
            (LogMode::File, Some(p)) => Some(Box::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            ))),
            (LogMode::File, None) => None,
        };
        Ok(AccessLog {
            out: out.map(Mutex::new),
        })
    }

    /// True when records are written somewhere.
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Writes one record (errors are dropped: logging never fails a request).
    pub fn write(&self, rec: &Record<'_>) {
        if let Some(out) = &self.out {
            if let Ok(mut line) = serde_json::to_vec(rec) {
                line.push(b'\n');
                if let Ok(mut w) = out.lock() {
                    let _ = w.write_all(&line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secrets_keeps_rest() {
        let q = "u=admin&p=pw&hash=abc&user_id=5&pswd=x&new_password=y&api_secret=z&h%61sh=q";
        let r = redact_query(q);
        assert_eq!(
            r,
            "u=admin&p=[redacted]&hash=[redacted]&user_id=5&pswd=[redacted]&new_password=[redacted]&api_secret=[redacted]&h%61sh=[redacted]"
        );
    }

    #[test]
    fn redacts_list_forms_semicolons_and_undecodable_names() {
        assert_eq!(
            redact_query("p[]=pw&hash[x]=h;u=a;p=q&%ZZ=v&%FF=w&user_id=1"),
            "p[]=[redacted]&hash[x]=[redacted];u=a;p=[redacted]&%ZZ=[redacted]&%FF=[redacted]&user_id=1"
        );
        assert_eq!(redact_query(""), "");
        assert_eq!(redact_query("&&hash"), "&&hash");
    }
}
