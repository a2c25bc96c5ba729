//! One HTTP/1 exchange with a MOR server, on a kept-alive or new
//! connection: the request goes out in one write (header and body
//! together, one segment as nginx sends it); MOR's answer header is parsed
//! with httparse, configured as pingora's client configures it, and its
//! body read by the framing [`crate::core::answer`] decides, each piece
//! handed on as it came. In place of pingora's HTTP/1 client, which
//! flushes a request's header before its body, allocates a 4 KiB header
//! buffer and a 64 KiB body buffer per answer and needs a header map
//! built per request: here one buffer per exchange, grown only when MOR
//! sends more than fits. The connection is reusable once the answer was
//! read whole, MOR keeps it and sent nothing past it (as pingora's
//! `respect_keepalive` and `reuse`).

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result, RetryType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::answer::{self, Body, Chunks, Framed, Step};

/// Informational answers (1xx but 101) skipped before MOR's final answer;
/// one more is MOR's fault (a server that never ends its 1xx stream).
const MAX_INFORMATIONAL: usize = 8;

/// Header lines of one answer read at most (pingora's client: 256).
const MAX_HEADERS: usize = 256;

/// Bytes of one answer header read at most.
const HEADER_MAX: usize = 64 * 1024;

/// Header lines the gateway and pingora may add to an answer.
const ADDED: usize = 6;

/// The buffer an exchange starts with: a whole MOR answer to most calls.
const FIRST_BUF: usize = 4 * 1024;

/// What the buffer grows by when MOR sends more than fits.
const GROW: usize = 16 * 1024;

/// An exchange with MOR on one connection.
pub(crate) struct MorHttp {
    stream: Stream,
    /// Bytes read from MOR and not handed on yet.
    buf: BytesMut,
    read_timeout: Option<Duration>,
    /// The final answer's framing, once its header was read.
    framed: Option<Framed>,
    /// Body bytes still due (a length-delimited body).
    left: u64,
    chunks: Chunks,
    /// The body was read to its end.
    ended: bool,
}

/// An I/O failure while reading MOR's answer. While waiting for the
/// header with nothing read yet, the end of the stream or an OS error means
/// MOR closed a kept-alive connection before it read the request
/// (pingora's `RetryType::ReusedOnly`, see `forward::stale`).
fn read_failed(e: std::io::Error, waiting: bool) -> Box<Error> {
    let mut err = if e.kind() == std::io::ErrorKind::TimedOut {
        Error::because(ErrorType::ReadTimedout, "while reading MOR's answer", e)
    } else {
        let os = e.raw_os_error().is_some();
        let mut err = Error::because(ErrorType::ReadError, "while reading MOR's answer", e);
        if os && waiting {
            err.retry = RetryType::ReusedOnly;
        }
        err
    };
    err.as_up();
    err
}

/// MOR closed the connection: before any byte of the answer (`waiting`),
/// or before the answer's end.
fn closed(waiting: bool) -> Box<Error> {
    let mut e = if waiting {
        let mut e = Error::explain(
            ErrorType::ConnectionClosed,
            "MOR closed the connection before answering",
        );
        e.retry = RetryType::ReusedOnly;
        e
    } else {
        Error::explain(
            ErrorType::ConnectionClosed,
            "MOR closed the connection before its answer's end",
        )
    };
    e.as_up();
    e
}

/// MOR's answer cannot be read (its fault: a bad gateway).
fn invalid(why: impl Into<pingora::ImmutStr>) -> Box<Error> {
    let mut e = Error::explain(ErrorType::InvalidHTTPHeader, why);
    e.as_up();
    e
}

/// A complete answer header at the start of `buf`, taken off it: the
/// header to relay and its framing; `None` when more bytes are needed.
/// The names and values keep the bytes MOR sent (no copy).
fn parse(buf: &mut BytesMut, head: bool) -> Result<Option<(ResponseHeader, Framed)>> {
    // Uninitialised: httparse writes only the lines it finds (no 8 KiB
    // cleared per answer).
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut lines) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < HEADER_MAX => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(invalid(format!(
                "MOR's answer header is over {HEADER_MAX} bytes"
            )))
        }
        Err(e) => return Err(invalid(format!("MOR's answer header: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let framed = answer::frame(
        code,
        http11,
        head,
        resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    )
    .map_err(|e| invalid(e.to_string()))?;
    // Room for what is added before it is relayed (the request id, the
    // RateLimit headers, pingora's Date and Connection): the map is not
    // grown per answer.
    let mut header = ResponseHeader::build(code, Some(resp.headers.len() + ADDED))?;
    header.set_version(if http11 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    });
    header.set_reason_phrase(resp.reason)?;
    // Where each name and value lies in the header's bytes.
    let base = buf.as_ptr() as usize;
    let spans: Vec<(usize, usize, usize, usize)> = resp
        .headers
        .iter()
        .map(|h| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect();
    let raw = buf.split_to(len).freeze();
    for (n0, n1, v0, v1) in spans {
        let value = pingora::http::header_value_from_raw(raw.slice(v0..v1));
        header.append_header(raw.slice(n0..n1), value)?;
    }
    // The coding frames the body: a length beside it is not relayed
    // (RFC 9112 §6.3).
    if header.headers.contains_key(header::TRANSFER_ENCODING) {
        header.remove_header(&header::CONTENT_LENGTH);
    }
    Ok(Some((header, framed)))
}

/// `io`, given `timeout` at most (none: no limit); running out is a
/// `TimedOut` error. The timeouts are pingora's (as its client's): an I/O
/// that is ready at once arms no timer, and one that waits shares a coarse
/// timer with the other waits, where a tokio timer per read or write wakes
/// the runtime's driver (a system call) each time it is armed.
async fn within<T>(
    timeout: Option<Duration>,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match timeout {
        Some(t) => pingora::time::timeout(t, io)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => io.await,
    }
}

impl MorHttp {
    /// An exchange on `stream`; each read waits `read_timeout` at most.
    pub(crate) fn new(stream: Stream, read_timeout: Option<Duration>) -> Self {
        MorHttp {
            stream,
            buf: BytesMut::new(),
            read_timeout,
            framed: None,
            left: 0,
            chunks: Chunks::default(),
            ended: false,
        }
    }

    /// Writes the whole request (`wire`: header and body) in one write,
    /// waiting `timeout` at most. A failure is a `WriteError` (MOR may
    /// have closed a kept-alive connection) or a `WriteTimedout`.
    pub(crate) async fn send(&mut self, wire: &[u8], timeout: Option<Duration>) -> Result<()> {
        let write = async {
            self.stream.write_all(wire).await?;
            self.stream.flush().await
        };
        within(timeout, write).await.map_err(|e| {
            let mut e = match e.kind() {
                std::io::ErrorKind::TimedOut => Error::because(
                    ErrorType::WriteTimedout,
                    "while writing the request (timeout)",
                    e,
                ),
                _ => Error::because(ErrorType::WriteError, "while writing the request", e),
            };
            e.as_up();
            e
        })
    }

    /// Reads more of MOR's answer into the buffer; 0 at its end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(FIRST_BUF);
        } else if self.buf.capacity() - self.buf.len() < FIRST_BUF / 4 {
            self.buf.reserve(GROW);
        }
        within(self.read_timeout, self.stream.read_buf(&mut self.buf)).await
    }

    /// Reads MOR's final answer header to a request (`head`: a HEAD):
    /// informational answers (100 Continue, 103 Early Hints, any 1xx but
    /// 101) are skipped; 101 is refused: the gateway never turns a
    /// connection into an unverified tunnel.
    pub(crate) async fn answer(&mut self, head: bool) -> Result<ResponseHeader> {
        let mut informational = 0;
        let mut waiting = true;
        loop {
            if let Some((header, framed)) = parse(&mut self.buf, head)? {
                match header.status.as_u16() {
                    101 => return Err(invalid("MOR answered 101 Switching Protocols")),
                    100..=199 if informational < MAX_INFORMATIONAL => {
                        informational += 1;
                        continue;
                    }
                    100..=199 => return Err(invalid("MOR sent informational answers without end")),
                    _ => {}
                }
                if let Body::Length(n) = framed.body {
                    self.left = n;
                }
                self.framed = Some(framed);
                return Ok(header);
            }
            let empty = waiting && self.buf.is_empty();
            match self.fill().await {
                Ok(0) => return Err(closed(empty)),
                Ok(_) => waiting = false,
                Err(e) => return Err(read_failed(e, empty)),
            }
        }
    }

    /// The next piece of the answer's body as it came (`None` at its end).
    pub(crate) async fn body(&mut self) -> Result<Option<Bytes>> {
        let framed = self
            .framed
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no answer header read"))?;
        loop {
            // Whether the body needs more bytes (false: it has ended).
            let more = match framed.body {
                Body::Empty => false,
                Body::Length(_) if self.left == 0 => false,
                Body::Length(_) if !self.buf.is_empty() => {
                    let n = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    self.left -= n as u64;
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                Body::Chunked => match self.chunks.step(&self.buf) {
                    Ok(Step::More) => true,
                    Ok(Step::Skip(n)) => {
                        self.buf.advance(n);
                        continue;
                    }
                    Ok(Step::Data(n)) => return Ok(Some(self.buf.split_to(n).freeze())),
                    Ok(Step::Done(n)) => {
                        self.buf.advance(n);
                        false
                    }
                    Err(e) => return Err(invalid(e.to_string())),
                },
                Body::UntilClose if !self.buf.is_empty() => {
                    return Ok(Some(self.buf.split().freeze()));
                }
                Body::Length(_) | Body::UntilClose => true,
            };
            if !more {
                self.ended = true;
                return Ok(None);
            }
            match self.fill().await {
                // The end of a body that runs until MOR closes.
                Ok(0) if framed.body == Body::UntilClose => {
                    self.ended = true;
                    return Ok(None);
                }
                Ok(0) => return Err(closed(false)),
                Ok(_) => {}
                Err(e) => return Err(read_failed(e, false)),
            }
        }
    }

    /// The connection, when it can carry the next call: the answer was
    /// read to its end, MOR keeps the connection and sent nothing past
    /// the answer. Otherwise it is closed here.
    pub(crate) fn reusable(self) -> Option<Stream> {
        let kept = self.framed.is_some_and(|f| f.keep_alive);
        (kept && self.ended && self.buf.is_empty()).then_some(self.stream)
    }
}
