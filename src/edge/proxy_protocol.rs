//! The PROXY protocol (HAProxy, v1 text and v2 binary) on listeners behind
//! an L4 balancer: the balancer's header names the real client, which then
//! is the connection's peer for every decision. A header is believed only
//! from a peer in `client.trusted_proxies`; a connection without a valid
//! header is dropped. [`super::connections`] reads it ([`accept_plain`]) when
//! pingora hands the connection over, before the TLS handshake on the HTTPS
//! listeners.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use std::os::unix::io::AsRawFd;
use tokio::io::AsyncReadExt;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header (RFC: 107 bytes).
const V1_MAX: usize = 107;

/// What a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// A complete header of `len` bytes; `source` is the client (None for
    /// `LOCAL`/`UNKNOWN`: the connection's own peer stands).
    Done {
        /// Bytes the header takes.
        len: usize,
        /// The client it names.
        source: Option<SocketAddr>,
    },
    /// More bytes are needed.
    Incomplete,
    /// Not a PROXY header.
    Invalid,
}

/// Parses a PROXY header (v1 or v2) at the start of `b`.
pub fn parse(b: &[u8]) -> Header {
    if b.len() >= 12 && &b[..12] == V2_SIG {
        return parse_v2(b);
    }
    if V2_SIG.starts_with(b) && b.len() < 12 {
        return Header::Incomplete;
    }
    parse_v1(b)
}

fn parse_v1(b: &[u8]) -> Header {
    if !b"PROXY ".starts_with(&b[..b.len().min(6)]) {
        return Header::Invalid;
    }
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= V1_MAX {
            Header::Invalid
        } else {
            Header::Incomplete
        };
    };
    if end + 2 > V1_MAX {
        return Header::Invalid;
    }
    let Ok(line) = std::str::from_utf8(&b[..end]) else {
        return Header::Invalid;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let source = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let (Ok(ip), Ok(port)) = (src.parse::<IpAddr>(), sport.parse::<u16>()) else {
                return Header::Invalid;
            };
            if (*fam == "TCP4") != ip.is_ipv4() {
                return Header::Invalid;
            }
            Some(SocketAddr::new(ip, port))
        }
        _ => return Header::Invalid,
    };
    Header::Done {
        len: end + 2,
        source,
    }
}

fn parse_v2(b: &[u8]) -> Header {
    if b.len() < 16 {
        return Header::Incomplete;
    }
    let (ver_cmd, fam) = (b[12], b[13]);
    let len = 16 + usize::from(u16::from_be_bytes([b[14], b[15]]));
    if ver_cmd >> 4 != 2 {
        return Header::Invalid;
    }
    if b.len() < len {
        return Header::Incomplete;
    }
    let body = &b[16..len];
    let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    let source = match (ver_cmd & 0x0f, fam) {
        (0, _) => None,
        (1, 0x11) if body.len() >= 12 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3])),
            port(8),
        )),
        (1, 0x21) if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port(32)))
        }
        (1, _) => None,
        _ => return Header::Invalid,
    };
    Header::Done { len, source }
}

/// Why a connection is dropped before its first request.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The peer closed the connection before sending a byte (a TCP health
    /// check, a readiness probe): not an attack, nothing to count.
    Closed,
    /// No valid header from a trusted peer.
    Invalid(&'static str),
}

/// How long a balancer may take to send its header.
const HEADER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the PROXY header at the start of `stream`, believes it only from a
/// peer in `trusted`, makes its source the connection's peer address (a new
/// socket digest) and puts back whatever followed it.
pub async fn accept(trusted: &[IpNet], stream: &mut Stream) -> std::result::Result<(), Refused> {
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .map(crate::core::client::canonical);
    if !peer.is_some_and(|p| trusted.iter().any(|n| n.contains(&p))) {
        return Err(Refused::Invalid(
            "PROXY protocol from a peer not in client.trusted_proxies",
        ));
    }
    let mut buf = Vec::with_capacity(232);
    let mut chunk = [0u8; 232];
    let deadline = tokio::time::Instant::now() + HEADER_WITHIN;
    loop {
        match parse(&buf) {
            Header::Done { len, source } => {
                stream.rewind(&buf[len..]);
                if let (Some(src), Some(d)) = (source, stream.get_socket_digest()) {
                    let fresh = SocketDigest::from_raw_fd(stream.as_raw_fd());
                    let _ = fresh.peer_addr.set(Some(PSocketAddr::Inet(src)));
                    if let Some(local) = d.local_addr() {
                        let _ = fresh.local_addr.set(Some(local.clone()));
                    }
                    stream.set_socket_digest(fresh);
                }
                return Ok(());
            }
            Header::Invalid => return Err(Refused::Invalid("not a PROXY protocol header")),
            Header::Incomplete if buf.len() >= 232 => {
                return Err(Refused::Invalid("PROXY protocol header too long"))
            }
            Header::Incomplete => {}
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| Refused::Invalid("no PROXY protocol header in time"))?
            .map_err(|_| Refused::Invalid("connection failed before its PROXY header"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Refused::Closed
            } else {
                Refused::Invalid("connection closed inside its PROXY header")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// [`accept`] on a connection as pingora hands it to the application (a
/// boxed stream of a plain listener). Streams of other kinds are returned
/// untouched.
pub async fn accept_plain(
    trusted: &[IpNet],
    stream: pingora::protocols::Stream,
) -> std::result::Result<pingora::protocols::Stream, Refused> {
    if !stream.as_any().is::<Stream>() {
        return Ok(stream);
    }
    let mut l4 = stream
        .into_any()
        .downcast::<Stream>()
        .map_err(|_| Refused::Invalid("not a TCP stream"))?;
    accept(trusted, &mut l4).await?;
    Ok(l4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x20 | cmd, fam]);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Header::Done {
                len: 44,
                source: Some("198.51.100.7:40000".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            Header::Done {
                len: 40,
                source: Some("[2001:db8::1]:1".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Header::Done {
                len: 15,
                source: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Header::Incomplete);
        assert_eq!(parse(b"PRO"), Header::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Header::Invalid);
        assert_eq!(parse(b"PROXY TCP4 ::1 ::2 1 2\r\n"), Header::Invalid);
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"),
            Header::Invalid
        );
        assert_eq!(parse(&[b'P'; 200]), Header::Invalid);
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![198, 51, 100, 7, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&h),
            Header::Done {
                len: h.len(),
                source: Some("198.51.100.7:40000".parse().unwrap())
            }
        );
        assert_eq!(parse(&h[..20]), Header::Incomplete);
        assert_eq!(
            parse(&v2(0, 0, &[])),
            Header::Done {
                len: 16,
                source: None
            }
        );
        let mut bad = h.clone();
        bad[12] = 0x31;
        assert_eq!(parse(&bad), Header::Invalid);
    }
}
