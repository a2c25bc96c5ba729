//! Request framing and header hygiene, decided before anything else: a
//! request whose length, body type, host or connection handling could be
//! read two ways is refused (400, connection closed), so that what MOR
//! receives can only be what the gateway verified. Pure: headers in, a
//! verdict out.

/// Headers the gateway sets or forwards itself; a client may not nominate
/// them in `Connection:` (a hop-by-hop removal would change the request after
/// its verdict).
pub const PROTECTED: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "accept",
    "accept-language",
    "accept-encoding",
    "user-agent",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
];

/// Why a request's framing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// More than one `Content-Length`, or one that is not a plain number.
    #[error("ambiguous Content-Length")]
    ContentLength,
    /// `Transfer-Encoding` other than exactly one `chunked`, or with a length.
    #[error("ambiguous Transfer-Encoding")]
    TransferEncoding,
    /// A header that must be single is repeated.
    #[error("repeated {0} header")]
    Repeated(&'static str),
    /// A protocol upgrade (WebSocket, h2c) on an API call.
    #[error("protocol upgrades are not served")]
    Upgrade,
    /// `Connection:` names a header the verdict depends on.
    #[error("Connection header nominates {0}")]
    Nominated(String),
}

fn is_digits(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(u8::is_ascii_digit)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// Checks a request head: `headers` are (name, value) pairs as received
/// (any case); `api` is true for calls under the API prefix.
pub fn check<'a, I>(headers: I, api: bool) -> Result<(), FramingError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let (mut lengths, mut codings, mut types, mut hosts) = (0, 0, 0, 0);
    let mut upgrade = false;
    for (name, value) in headers {
        let value = trim(value);
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if lengths > 1 || !is_digits(value) {
                return Err(FramingError::ContentLength);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            if codings > 1 || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::TransferEncoding);
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            types += 1;
            if types > 1 {
                return Err(FramingError::Repeated("Content-Type"));
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(FramingError::Repeated("Host"));
            }
        } else if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("http2-settings")
        {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let t = String::from_utf8_lossy(trim(token)).to_ascii_lowercase();
                if t == "upgrade" || t == "http2-settings" {
                    upgrade = true;
                } else if PROTECTED.contains(&t.as_str()) {
                    return Err(FramingError::Nominated(t));
                }
            }
        }
    }
    if lengths > 0 && codings > 0 {
        return Err(FramingError::TransferEncoding);
    }
    if upgrade && api {
        return Err(FramingError::Upgrade);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &[(&str, &str)]) -> Result<(), FramingError> {
        check(h.iter().map(|(k, v)| (*k, v.as_bytes())), true)
    }

    #[test]
    fn plain_requests_pass() {
        assert!(run(&[
            ("Host", "mor"),
            ("Content-Length", "7"),
            ("Content-Type", "a/b")
        ])
        .is_ok());
        assert!(run(&[
            ("Transfer-Encoding", "Chunked"),
            ("Connection", "keep-alive, close")
        ])
        .is_ok());
        assert!(run(&[("Connection", "x-custom")]).is_ok());
    }

    #[test]
    fn ambiguous_framing_refused() {
        for h in [
            vec![("Content-Length", "7, 7")],
            vec![("Content-Length", "7"), ("content-length", "7")],
            vec![("Content-Length", "+7")],
            vec![("Content-Length", "")],
            vec![("Transfer-Encoding", "chunked, chunked")],
            vec![
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
            vec![("Transfer-Encoding", "gzip")],
            vec![("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
            vec![("Content-Type", "a/b"), ("Content-Type", "a/b")],
            vec![("Host", "a"), ("HOST", "a")],
        ] {
            assert!(run(&h).is_err(), "{h:?}");
        }
    }

    #[test]
    fn upgrades_and_nominations_refused() {
        assert_eq!(run(&[("Upgrade", "websocket")]), Err(FramingError::Upgrade));
        assert_eq!(
            run(&[("Connection", "Upgrade, HTTP2-Settings")]),
            Err(FramingError::Upgrade)
        );
        assert!(check([("Upgrade", b"h2c".as_slice())], false).is_ok());
        assert_eq!(
            run(&[("Connection", "close, Content-Type")]),
            Err(FramingError::Nominated("content-type".into()))
        );
        assert!(run(&[("Connection", "X-Forwarded-For")]).is_err());
        assert!(run(&[("Connection", "host")]).is_err());
    }
}
