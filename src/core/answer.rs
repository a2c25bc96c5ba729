//! How MOR's answer is framed (RFC 9112 §6.3) and whether its connection
//! may carry the next call (§9.3), decided from its status and header
//! lines; [`Chunks`] takes a chunked body apart. Pure: bytes in, framing
//! out; the reading is [`crate::edge::mor_http`]'s.

/// Why MOR's answer cannot be read: MOR's fault, answered as a bad gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Lengths that disagree, or one that is not a number.
    #[error("MOR's answer has an unreadable Content-Length")]
    ContentLength,
    /// A chunk size line or chunk end that is not HTTP's.
    #[error("MOR's chunked answer is malformed")]
    Chunk,
    /// Trailer lines without end.
    #[error("MOR's chunked answer has trailers over {TRAILERS_MAX} bytes")]
    Trailers,
}

/// Bytes of trailer lines (after the last chunk) read at most.
pub const TRAILERS_MAX: usize = 16 * 1024;

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body: an answer to HEAD, 1xx, 204, 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until MOR closes the connection.
    UntilClose,
}

/// An answer's framing: its body, and whether its connection can be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// How its body ends.
    pub body: Body,
    /// MOR keeps the connection for the next call (once the body is read whole).
    pub keep_alive: bool,
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Frames an answer to a request (`head`: it was a HEAD) from its status,
/// its version (`http11`: HTTP/1.1, else 1.0) and its header lines as
/// received. Transfer-Encoding wins over Content-Length (the caller drops
/// the length from what it relays); a coding that does not end in
/// `chunked`, or no length at all, runs until MOR closes. Identical
/// repeated lengths count once; lengths that disagree are refused.
pub fn frame<'a, I>(
    status: u16,
    http11: bool,
    head: bool,
    headers: I,
) -> Result<Framed, AnswerError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut length: Option<u64> = None;
    let (mut codings, mut chunked_last) = (false, false);
    let (mut close, mut keep) = (false, false);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            let mut any = false;
            for t in tokens(value) {
                any = true;
                let n = Some(t)
                    .filter(|t| t.iter().all(u8::is_ascii_digit))
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(AnswerError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(AnswerError::ContentLength);
                }
                length = Some(n);
            }
            if !any {
                return Err(AnswerError::ContentLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for t in tokens(value) {
                codings = true;
                chunked_last = t.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // HTTP/1.1 keeps the connection unless told not to; 1.0 only when told
    // to, and never with a transfer coding (RFC 9112 §6.1).
    let mut keep_alive = !close && (http11 || (keep && !codings));
    let body = if head || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::Empty
    } else if codings && chunked_last {
        Body::Chunked
    } else if codings {
        Body::UntilClose
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        Body::UntilClose
    };
    if body == Body::UntilClose {
        keep_alive = false;
    }
    Ok(Framed { body, keep_alive })
}

/// What [`Chunks::step`] found at the start of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    More,
    /// This many framing bytes (a size line, a chunk's CRLF, a trailer
    /// line) are consumed: drop them.
    Skip(usize),
    /// This many bytes of body data: relay them.
    Data(usize),
    /// The body ended; this many framing bytes were its last.
    Done(usize),
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum At {
    /// Before a chunk size line.
    #[default]
    Size,
    /// Inside a chunk, this many data bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines, this many bytes so far.
    Trailers(usize),
    /// Ended.
    Done,
}

/// Takes a chunked body apart as its bytes arrive, in any pieces.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chunks {
    at: At,
}

/// A size line is read whole before it is parsed; one longer than this
/// (extensions without end) is refused.
pub const SIZE_LINE_MAX: usize = 4096;

impl Chunks {
    /// Whether the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.at == At::Done
    }

    /// The next step over `buf`, the bytes not consumed yet.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, AnswerError> {
        match self.at {
            At::Done => Ok(Step::Done(0)),
            At::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.at = At::Trailers(0);
                    Ok(Step::Skip(used))
                }
                Ok(httparse::Status::Complete((used, n))) => {
                    self.at = At::Data(n);
                    Ok(Step::Skip(used))
                }
                Ok(httparse::Status::Partial) if buf.len() < SIZE_LINE_MAX => Ok(Step::More),
                _ => Err(AnswerError::Chunk),
            },
            At::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - n as u64;
                self.at = if left == 0 {
                    At::DataEnd
                } else {
                    At::Data(left)
                };
                Ok(Step::Data(n))
            }
            At::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    self.at = At::Size;
                    Ok(Step::Skip(2))
                }
                [b'\n', ..] => {
                    self.at = At::Size;
                    Ok(Step::Skip(1))
                }
                [] | [b'\r'] => Ok(Step::More),
                _ => Err(AnswerError::Chunk),
            },
            At::Trailers(seen) => match buf.iter().position(|&b| b == b'\n') {
                // The blank line: the end.
                Some(0) => {
                    self.at = At::Done;
                    Ok(Step::Done(1))
                }
                Some(1) if buf[0] == b'\r' => {
                    self.at = At::Done;
                    Ok(Step::Done(2))
                }
                Some(i) if seen + i < TRAILERS_MAX => {
                    self.at = At::Trailers(seen + i + 1);
                    Ok(Step::Skip(i + 1))
                }
                None if seen + buf.len() < TRAILERS_MAX => Ok(Step::More),
                _ => Err(AnswerError::Trailers),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(
        status: u16,
        http11: bool,
        head: bool,
        h: &[(&str, &str)],
    ) -> Result<Framed, AnswerError> {
        frame(
            status,
            http11,
            head,
            h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        )
    }

    fn body(h: &[(&str, &str)]) -> Result<Body, AnswerError> {
        framed(200, true, false, h).map(|f| f.body)
    }

    #[test]
    fn a_body_is_delimited_as_http_says() {
        assert_eq!(body(&[("Content-Length", "12")]), Ok(Body::Length(12)));
        // Identical repeats count once, as one line or several.
        assert_eq!(
            body(&[("content-length", "7, 7"), ("Content-Length", " 7 ")]),
            Ok(Body::Length(7))
        );
        assert_eq!(body(&[("Transfer-Encoding", "chunked")]), Ok(Body::Chunked));
        assert_eq!(
            body(&[
                ("Transfer-Encoding", "gzip"),
                ("Transfer-Encoding", "Chunked")
            ]),
            Ok(Body::Chunked)
        );
        // The coding wins over a length.
        assert_eq!(
            body(&[("Content-Length", "3"), ("Transfer-Encoding", "chunked")]),
            Ok(Body::Chunked)
        );
        // Not ending in chunked, or no length: until MOR closes.
        assert_eq!(
            body(&[("Transfer-Encoding", "chunked, gzip")]),
            Ok(Body::UntilClose)
        );
        assert_eq!(body(&[]), Ok(Body::UntilClose));
        // No body whatever the headers say.
        for (status, head) in [(204, false), (304, false), (100, false), (200, true)] {
            let f = framed(status, true, head, &[("Content-Length", "5")]).unwrap();
            assert_eq!(f.body, Body::Empty, "{status} {head}");
        }
    }

    #[test]
    fn unreadable_lengths_are_refused() {
        for v in ["7, 8", "-1", "0x10", "1 2", "", "99999999999999999999999"] {
            assert_eq!(
                body(&[("Content-Length", v)]),
                Err(AnswerError::ContentLength),
                "{v}"
            );
        }
        assert_eq!(
            body(&[("Content-Length", "7"), ("Content-Length", "8")]),
            Err(AnswerError::ContentLength)
        );
    }

    #[test]
    fn the_connection_is_kept_only_where_http_keeps_it() {
        let keep = |http11, h: &[(&str, &str)]| framed(200, http11, false, h).unwrap().keep_alive;
        let cl = ("Content-Length", "1");
        assert!(keep(true, &[cl]));
        assert!(!keep(true, &[cl, ("Connection", "Close")]));
        assert!(!keep(true, &[cl, ("Connection", "keep-alive, close")]));
        assert!(!keep(false, &[cl]));
        assert!(keep(false, &[cl, ("Connection", "Keep-Alive")]));
        // Read until close: never kept.
        assert!(!keep(true, &[]));
        // HTTP/1.0 with a transfer coding: closed after it.
        assert!(!keep(
            false,
            &[
                ("Connection", "keep-alive"),
                ("Transfer-Encoding", "chunked")
            ]
        ));
    }

    /// Feeds `wire` to a decoder in pieces of `piece` bytes, as a reader
    /// would: the data, and the bytes left after the body.
    fn dechunk(wire: &[u8], piece: usize) -> Result<(Vec<u8>, usize), AnswerError> {
        let mut c = Chunks::default();
        let (mut buf, mut data, mut fed) = (Vec::new(), Vec::new(), 0);
        loop {
            match c.step(&buf)? {
                Step::More => {
                    assert!(fed < wire.len(), "ran out of bytes");
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Step::Skip(n) => {
                    buf.drain(..n);
                }
                Step::Data(n) => {
                    data.extend(buf.drain(..n));
                }
                Step::Done(n) => {
                    buf.drain(..n);
                    assert!(c.done());
                    return Ok((data, buf.len() + wire.len() - fed));
                }
            }
        }
    }

    #[test]
    fn a_chunked_body_is_taken_apart_in_any_pieces() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (data, left) = dechunk(wire, piece).unwrap();
            assert_eq!(data, b"hello, world", "{piece}");
            // Nothing past the body is taken.
            assert_eq!(left, 4, "{piece}");
        }
        // A bare LF after a chunk's data and at the trailers' end.
        assert_eq!(dechunk(b"2\r\nab\n0\r\n\n", 1).unwrap().0, b"ab");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        assert_eq!(dechunk(b"zz\r\n", 10), Err(AnswerError::Chunk));
        // Data longer than its size.
        assert_eq!(
            dechunk(b"2\r\nabc\r\n0\r\n\r\n", 10),
            Err(AnswerError::Chunk)
        );
        // A size line without end.
        let long = format!("1;{}", "e".repeat(SIZE_LINE_MAX));
        assert_eq!(dechunk(long.as_bytes(), 512), Err(AnswerError::Chunk));
        // Trailers without end.
        let trailers = format!("0\r\n{}", "X: y\r\n".repeat(TRAILERS_MAX / 6 + 1));
        assert_eq!(
            dechunk(trailers.as_bytes(), 512),
            Err(AnswerError::Trailers)
        );
    }
}
