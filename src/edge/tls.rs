//! The HTTPS listeners' TLS, run by the gateway itself: pingora serves
//! their addresses as plain TCP, and [`super::connections`] calls
//! [`Tls::handshake`] once the connection holds its slots (total, per
//! address, a pending handshake of its address). pingora would run the
//! handshake before handing the connection over, so that an HTTPS
//! connection counted against no cap until it was done, for up to 60 s,
//! with an ERROR line for every failure.
//!
//! The handshake is pingora's own server side (its `SslStream::accept`, the
//! stream type the rest of pingora reads; Mozilla's intermediate profile,
//! TLS 1.2 and 1.3, ALPN `http/1.1` only) with the certificate in force
//! (reloaded on SIGHUP) set on each session before it starts. No TLS state
//! exists before the client's first record (its ClientHello) has arrived
//! whole: a silent client, or one that stalls inside its ClientHello, costs
//! its socket, its task and the bytes it sent. The whole handshake has
//! `tls.handshake_timeout`. Failures are counted by reason, logged each at
//! debug and summed up in at most one line a minute.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::SslStream;
use pingora::protocols::Stream;
use pingora::tls::ssl::{self, select_next_proto, AlpnError, Ssl, SslAcceptor, SslMethod, SslMode};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::config::CertKey;
use crate::ops::metrics::Metrics;

/// The first byte of every TLS connection: a handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;
/// At most one summary line of failed handshakes per this long.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// ALPN: HTTP/1.1 only (wire format).
const H1: &[u8] = b"\x08http/1.1";
/// A TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// The largest TLS record (plaintext, RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
/// The first record's buffer grows by at most this much per read.
const READ_STEP: usize = 1024;
/// OpenSSL 3's reason for a connection closed in the middle of a record
/// (`SSL_R_UNEXPECTED_EOF_WHILE_READING`).
const UNEXPECTED_EOF: i32 = 294;

/// Why a handshake did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection closed before its first byte (a TCP health check):
    /// not counted.
    Quiet,
    /// Not done within the deadline.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Closed(String),
    /// Not TLS, or a TLS error (version, cipher, alert, malformed message).
    Error(String),
}

impl Failure {
    /// The `reason` label ([`crate::ops::metrics::TLS_HANDSHAKE_FAILURES`]),
    /// None for a connection that sent nothing and closed.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Failure::Quiet => None,
            Failure::Timeout => Some("timeout"),
            Failure::Closed(_) => Some("closed"),
            Failure::Error(_) => Some("error"),
        }
    }

    fn detail(&self) -> &str {
        match self {
            Failure::Quiet => "closed before its first byte",
            Failure::Timeout => "not done in time",
            Failure::Closed(d) | Failure::Error(d) => d,
        }
    }
}

/// What a handshake error says: the client went away, or TLS failed.
fn classify(e: &ssl::Error) -> Failure {
    let detail = e.to_string();
    let eof_in_record = e.ssl_error().is_some_and(|st| {
        st.errors()
            .iter()
            .any(|x| x.reason_code() == UNEXPECTED_EOF)
    });
    if e.io_error().is_some()
        || eof_in_record
        || matches!(
            e.code(),
            ssl::ErrorCode::SYSCALL | ssl::ErrorCode::ZERO_RETURN
        )
    {
        Failure::Closed(detail)
    } else {
        Failure::Error(detail)
    }
}

/// The length of the TLS record whose 5-byte header starts `h`: a
/// handshake record of a TLS version (3.x), at most 2^14 bytes (RFC 8446
/// §5.1); None for anything else.
fn record_len(h: &[u8]) -> Option<usize> {
    match h {
        [HANDSHAKE_RECORD, 3, _, hi, lo, ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            (1..=MAX_RECORD).contains(&len).then_some(len)
        }
        _ => None,
    }
}

/// Reads the client's first TLS record whole (and whatever came with it),
/// growing its buffer only as bytes arrive, until `deadline`.
async fn first_record(l4: &mut L4Stream, deadline: Instant) -> Result<Vec<u8>, Failure> {
    let mut buf: Vec<u8> = Vec::new();
    let mut want = RECORD_HEADER;
    while buf.len() < want {
        buf.reserve((want - buf.len()).min(READ_STEP));
        let n = match tokio::time::timeout_at(deadline, l4.read_buf(&mut buf)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return Err(Failure::Quiet),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(Failure::Closed(format!("in its first record: {e}"))),
        };
        if n == 0 {
            return Err(Failure::Closed("closed in its first record".into()));
        }
        if buf[0] != HANDSHAKE_RECORD {
            return Err(Failure::Error(format!(
                "not a TLS handshake (first byte {:#04x})",
                buf[0]
            )));
        }
        if want == RECORD_HEADER && buf.len() >= RECORD_HEADER {
            let len = record_len(&buf)
                .ok_or_else(|| Failure::Error("not a TLS handshake record".into()))?;
            want = RECORD_HEADER + len;
        }
    }
    Ok(buf)
}

/// Failed handshakes since the last summary line.
#[derive(Default)]
struct Summary {
    last: Option<Instant>,
    counts: [u64; 3],
}

/// The HTTPS listeners: their addresses and TLS acceptor.
pub struct Tls {
    listen: Vec<SocketAddr>,
    acceptor: SslAcceptor,
    /// The certificate, replaced on reload: each handshake takes the one in
    /// force when it starts.
    certs: Arc<ArcSwap<CertKey>>,
    summary: Mutex<Summary>,
}

impl Tls {
    /// TLS for the listeners at `listen`, with the certificate from `certs`.
    pub fn new(listen: &[SocketAddr], certs: Arc<ArcSwap<CertKey>>) -> Result<Tls, String> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(|e| format!("TLS acceptor: {e}"))?;
        b.set_alpn_select_callback(|_, offered| {
            select_next_proto(H1, offered).ok_or(AlpnError::NOACK)
        });
        // Idle connections give their TLS record buffers back.
        b.set_mode(SslMode::RELEASE_BUFFERS);
        Ok(Tls {
            listen: listen.to_vec(),
            acceptor: b.build(),
            certs,
            summary: Mutex::new(Summary::default()),
        })
    }

    /// True when `local` (a connection's local address) is an HTTPS listener.
    pub fn serves(&self, local: SocketAddr) -> bool {
        let ip = crate::core::client::canonical(local.ip());
        self.listen.iter().any(|l| {
            l.port() == local.port()
                && (l.ip().is_unspecified() || crate::core::client::canonical(l.ip()) == ip)
        })
    }

    /// Runs the server side of the handshake on `stream` (a plain
    /// listener's connection, its PROXY header read) until `deadline`.
    pub async fn handshake(&self, stream: Stream, deadline: Instant) -> Result<Stream, Failure> {
        let mut l4 = stream
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| Failure::Error("not a TCP stream".into()))?;
        // No TLS state before the client's whole first record (its
        // ClientHello) is here: a silent or stalled client holds its bytes.
        let first = first_record(&mut l4, deadline).await?;
        l4.rewind(&first);
        drop(first);
        let mut tls = self.session(*l4)?;
        match tokio::time::timeout_at(deadline, tls.accept()).await {
            Ok(Ok(())) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// A server-side TLS session over `l4` with the certificate in force.
    fn session(&self, l4: L4Stream) -> Result<SslStream<L4Stream>, Failure> {
        let internal =
            |e: pingora::tls::error::ErrorStack| Failure::Error(format!("TLS session: {e}"));
        let mut ssl = Ssl::new(self.acceptor.context()).map_err(internal)?;
        let ck = self.certs.load();
        if let Some((leaf, rest)) = ck.chain.split_first() {
            ssl.set_certificate(leaf).map_err(internal)?;
            for c in rest {
                ssl.add_chain_cert(c.clone()).map_err(internal)?;
            }
            ssl.set_private_key(&ck.key).map_err(internal)?;
        }
        SslStream::new(ssl, l4).map_err(|e| Failure::Error(format!("TLS session: {e}")))
    }

    /// Counts a failed handshake, logs it at debug, and at most once a
    /// minute a summary line.
    pub fn failed(&self, f: &Failure, peer: Option<SocketAddr>, metrics: &Metrics) {
        let Some(label) = f.label() else {
            tracing::debug!("TLS connection from {peer:?} closed before its first byte");
            return;
        };
        metrics
            .tls_handshake_failures
            .with_label_values(&[label])
            .inc();
        tracing::debug!(
            "TLS handshake from {peer:?} failed ({label}): {}",
            f.detail()
        );
        let mut s = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = crate::ops::metrics::TLS_HANDSHAKE_FAILURES
            .iter()
            .position(|l| *l == label)
        {
            s.counts[i] += 1;
        }
        let now = Instant::now();
        if s.last
            .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
        {
            let [timeout, closed, error] = s.counts;
            let since = s.last.map_or_else(
                || "start".to_string(),
                |t| format!("{}s ago", now.duration_since(t).as_secs()),
            );
            tracing::info!(
                "TLS handshakes failed since {since}: {} (timeout {timeout}, closed {closed}, error {error}); \
                 each is counted in mor_gateway_tls_handshake_failures_total, MOR_GATEWAY_LOG=mor_gateway=debug logs each",
                timeout + closed + error
            );
            *s = Summary {
                last: Some(now),
                counts: [0; 3],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_addresses_match_local_addresses() {
        let t = |l: &[&str]| Tls {
            listen: l.iter().map(|a| a.parse().unwrap()).collect(),
            acceptor: SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
                .unwrap()
                .build(),
            certs: Arc::new(ArcSwap::from_pointee(CertKey {
                chain: Vec::new(),
                key: pingora::tls::pkey::PKey::generate_ed25519().unwrap(),
            })),
            summary: Mutex::new(Summary::default()),
        };
        let any = t(&["0.0.0.0:8443"]);
        assert!(any.serves("127.0.0.1:8443".parse().unwrap()));
        assert!(!any.serves("127.0.0.1:8080".parse().unwrap()));
        let one = t(&["127.0.0.1:8443", "[::1]:9443"]);
        assert!(one.serves("127.0.0.1:8443".parse().unwrap()));
        assert!(one.serves("[::ffff:127.0.0.1]:8443".parse().unwrap()));
        assert!(!one.serves("127.0.0.2:8443".parse().unwrap()));
        assert!(one.serves("[::1]:9443".parse().unwrap()));
    }

    #[test]
    fn record_headers() {
        assert_eq!(record_len(&[0x16, 3, 1, 0x02, 0x00]), Some(512));
        assert_eq!(record_len(&[0x16, 3, 3, 0x40, 0x00, 9]), Some(16384));
        assert_eq!(record_len(&[0x16, 3, 3, 0x40, 0x01]), None, "over 2^14");
        assert_eq!(record_len(&[0x16, 3, 1, 0, 0]), None, "empty");
        assert_eq!(record_len(&[0x16, 2, 0, 0, 9]), None, "SSL 2");
        assert_eq!(record_len(b"POST "), None);
    }

    #[test]
    fn failures_have_their_labels() {
        for f in [
            Failure::Timeout,
            Failure::Closed("x".into()),
            Failure::Error("y".into()),
        ] {
            let l = f.label().unwrap();
            assert!(crate::ops::metrics::TLS_HANDSHAKE_FAILURES.contains(&l));
        }
        assert_eq!(Failure::Quiet.label(), None);
    }
}
