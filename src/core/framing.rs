//! Request framing and header hygiene, decided before anything else: a
//! request whose length, body type, host or connection handling could be
//! read two ways is refused (400, connection closed), so that what MOR
//! receives can only be what the gateway verified. The checks read the
//! header lines as received ([`header_lines`]: pingora drops a
//! Content-Length sent with Transfer-Encoding from its parsed view), and
//! the request line as it arrived on the wire ([`LineScan`]: pingora
//! percent-encodes control characters in the target before anyone sees it).
//! Pure: bytes in, a verdict out.

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
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// A GET or HEAD request with a body (RFC 9110 §9.3.1: no defined meaning).
    #[error("a GET or HEAD request carries no body")]
    BodyNotAllowed,
    /// Control characters or spaces in the request target.
    #[error("control characters in the request target")]
    Target,
}

fn is_digits(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(u8::is_ascii_digit)
}

/// What [`check`] needs of the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The HTTP method, as received.
    pub method: &'a str,
    /// HTTP/1.1 (false: HTTP/1.0).
    pub http11: bool,
    /// A call under the API prefix.
    pub api: bool,
}

/// The header lines of a raw request head (request line, header lines, blank
/// line; CRLF or bare LF endings) as (name, value) pairs, exactly as
/// received. A line without a colon (pingora has refused those already)
/// yields an empty name, which matches no rule.
pub fn header_lines(raw: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    let mut lines = raw
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // Empty lines before the request line are allowed (RFC 9112 §2.2).
    let _request_line = lines.by_ref().find(|l| !l.is_empty());
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| match l.iter().position(|&b| b == b':') {
            Some(i) => (std::str::from_utf8(&l[..i]).unwrap_or(""), &l[i + 1..]),
            None => ("", l),
        })
}

/// Checks a request head: `line` is its request line, `headers` its
/// (name, value) pairs as received (any case, see [`header_lines`]).
pub fn check<'a, I>(line: Line<'_>, headers: I) -> Result<(), FramingError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let (mut lengths, mut codings, mut types, mut hosts) = (0, 0, 0, 0);
    let mut upgrade = false;
    let mut body = false;
    for (name, value) in headers {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if lengths > 1 || !is_digits(value) {
                return Err(FramingError::ContentLength);
            }
            body |= value.iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            if codings > 1 || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::TransferEncoding);
            }
            body = true;
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
                let t = String::from_utf8_lossy(token.trim_ascii()).to_ascii_lowercase();
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
    if upgrade && line.api {
        return Err(FramingError::Upgrade);
    }
    if hosts == 0 && line.http11 {
        return Err(FramingError::MissingHost);
    }
    let get = line.method.eq_ignore_ascii_case("GET") || line.method.eq_ignore_ascii_case("HEAD");
    if get && body {
        return Err(FramingError::BodyNotAllowed);
    }
    Ok(())
}

/// Reads a request line as its bytes arrive, in any pieces, and tells
/// whether its target holds a control character or a space: the lines
/// pingora would percent-encode and serve (`METHOD TARGET HTTP/x.y`, its
/// target holding bytes its parser refuses). Empty lines before it are
/// skipped; bytes after its end are ignored. No buffer: a few counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineScan {
    state: ScanState,
    /// Bytes of the method token so far.
    method: u16,
    /// Spaces after the method.
    spaces: u32,
    /// A control character seen after the method (a CR only counts when
    /// another byte follows it).
    ctl: bool,
    cr: bool,
    /// The last bytes of the line (for its ` HTTP/x.y` end), newest in the
    /// low byte: shifted in, not copied along.
    tail: u128,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ScanState {
    /// Before the first byte of the line.
    #[default]
    Start,
    /// In the method token.
    Method,
    /// After the method's space, before the line's end.
    Rest,
    /// The line ended; `bool`: its target is bad.
    Done(bool),
    /// Not a request line this scan can judge.
    Unknown,
}

impl LineScan {
    /// Feeds the next bytes of the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.state {
                ScanState::Done(_) | ScanState::Unknown => return,
                ScanState::Start => {
                    if b != b'\r' && b != b'\n' {
                        self.state = ScanState::Method;
                        self.method = 0;
                        self.byte_in_method(b);
                    }
                }
                ScanState::Method => self.byte_in_method(b),
                ScanState::Rest => self.byte_in_rest(b),
            }
        }
    }

    fn byte_in_method(&mut self, b: u8) {
        if b == b' ' && self.method > 0 {
            self.state = ScanState::Rest;
        } else if (b.is_ascii_alphanumeric() || b == b'_') && self.method < 64 {
            self.method += 1;
        } else {
            self.state = ScanState::Unknown;
        }
    }

    fn byte_in_rest(&mut self, b: u8) {
        if b == b'\n' {
            self.state = ScanState::Done(self.ends_like_http() && (self.ctl || self.spaces > 1));
            return;
        }
        if self.cr {
            // A CR not followed by LF.
            self.ctl = true;
        }
        self.cr = b == b'\r';
        if b == b' ' {
            self.spaces += 1;
        } else if (b < 0x20 && b != b'\r') || b == 0x7f {
            self.ctl = true;
        }
        if !self.cr {
            self.tail = (self.tail << 8) | u128::from(b);
        }
    }

    /// The line so far ends with ` HTTP/d.d` or ` HTTP/d` (the version
    /// pingora's own escaping looks for).
    fn ends_like_http(&self) -> bool {
        let bytes = self.tail.to_be_bytes();
        // The newest nine, oldest first.
        let t = &bytes[7..];
        let long = t[0] == b' '
            && &t[1..6] == b"HTTP/"
            && t[6].is_ascii_digit()
            && t[7] == b'.'
            && t[8].is_ascii_digit();
        let short = &t[2..4] == b" H" && &t[4..8] == b"TTP/" && t[8].is_ascii_digit();
        long || short
    }

    /// `Some(true)`: the whole line arrived and its target holds a control
    /// character or a space; `Some(false)`: it arrived and is clean; `None`:
    /// not (yet) known.
    pub fn bad_target(&self) -> Option<bool> {
        match self.state {
            ScanState::Done(bad) => Some(bad),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST: Line<'static> = Line {
        method: "POST",
        http11: false,
        api: true,
    };

    fn run(h: &[(&str, &str)]) -> Result<(), FramingError> {
        check(POST, h.iter().map(|(k, v)| (*k, v.as_bytes())))
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
        let other = Line { api: false, ..POST };
        assert!(check(other, [("Upgrade", b"h2c".as_slice())]).is_ok());
        assert_eq!(
            run(&[("Connection", "close, Content-Type")]),
            Err(FramingError::Nominated("content-type".into()))
        );
        assert!(run(&[("Connection", "X-Forwarded-For")]).is_err());
        assert!(run(&[("Connection", "host")]).is_err());
    }

    #[test]
    fn raw_lines_keep_what_pingora_drops() {
        let raw = b"\r\nPOST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 3\nTransfer-Encoding: chunked\r\n\r\nbody: no";
        let lines: Vec<(&str, &[u8])> = header_lines(raw).collect();
        assert_eq!(
            lines,
            vec![
                ("Host", b" m".as_slice()),
                ("Content-Length", b" 3".as_slice()),
                ("Transfer-Encoding", b" chunked".as_slice()),
            ]
        );
        let http11 = Line {
            http11: true,
            ..POST
        };
        assert_eq!(
            check(http11, header_lines(raw)),
            Err(FramingError::TransferEncoding)
        );
    }

    #[test]
    fn host_required_for_http11_only() {
        let http11 = Line {
            http11: true,
            ..POST
        };
        assert_eq!(check(http11, []), Err(FramingError::MissingHost));
        assert!(check(http11, [("host", b"m".as_slice())]).is_ok());
        assert!(check(POST, []).is_ok(), "HTTP/1.0 may omit it");
    }

    #[test]
    fn get_and_head_carry_no_body() {
        for method in ["GET", "head"] {
            let l = Line { method, ..POST };
            assert_eq!(
                check(l, [("Content-Length", b"3".as_slice())]),
                Err(FramingError::BodyNotAllowed)
            );
            assert_eq!(
                check(l, [("Transfer-Encoding", b"chunked".as_slice())]),
                Err(FramingError::BodyNotAllowed)
            );
            assert!(check(l, [("Content-Length", b"0".as_slice())]).is_ok());
            assert!(check(l, []).is_ok());
        }
        assert!(check(POST, [("Content-Length", b"3".as_slice())]).is_ok());
    }

    fn scan(pieces: &[&[u8]]) -> Option<bool> {
        let mut s = LineScan::default();
        for p in pieces {
            s.feed(p);
        }
        s.bad_target()
    }

    #[test]
    fn request_line_scan() {
        let ok: &[u8] = b"POST /billing/api/x?a=%0D%20b HTTP/1.1\r\nHost: m\r\n";
        assert_eq!(scan(&[ok]), Some(false));
        // In any pieces, after empty lines, bare LF.
        let pieces: Vec<&[u8]> = ok.chunks(1).collect();
        assert_eq!(scan(&pieces), Some(false));
        assert_eq!(scan(&[b"\r\n\r\nGET / HTTP/1.0\n"]), Some(false));
        assert_eq!(scan(&[b"GET / HTTP/1\r\n"]), Some(false));
        for bad in [
            b"GET /a\rb HTTP/1.1\r\n".as_slice(),
            b"GET /a\0b HTTP/1.1\r\n",
            b"GET /a\tb HTTP/1.1\r\n",
            b"GET /a\x7fb HTTP/1.1\r\n",
            b"GET /a b HTTP/1.1\r\n",
            b"GET /a HTTP/1.1 HTTP/1.1\n",
        ] {
            assert_eq!(
                scan(&[bad]),
                Some(true),
                "{:?}",
                bad.escape_ascii().to_string()
            );
            let pieces: Vec<&[u8]> = bad.chunks(3).collect();
            assert_eq!(scan(&pieces), Some(true));
        }
        // Not yet complete, or not a request line: no verdict, or clean.
        assert_eq!(scan(&[b"GET /a\0b HTTP/1.1"]), None);
        assert_eq!(scan(&[b"Host: m\r\n"]), None);
        assert_eq!(scan(&[b"lue\tmore text\r\n"]), None);
    }
}
