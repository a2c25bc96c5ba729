//! Why a connection is refused or cut before a request of it reaches the
//! proxy, and the short MOR-shaped answer it gets before the close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pingora::protocols::Stream;

use super::caps::Linger;
use crate::core::catalog::Envelope;
use crate::core::reply::{error_xml, XML_CONTENT_TYPE};

/// How long a refused or cut connection is still read (and discarded) after
/// its answer, so that the client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
/// At most this much is discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// Why a connection is refused or cut (the `reason` label of
/// `mor_gateway_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `client.max_connections` are open.
    Total,
    /// `client.max_connections_per_address` are open from this address.
    PerAddress,
    /// The header did not arrive within `client.header_timeout`.
    HeaderTimeout,
    /// Nothing arrived within `client.header_timeout` on a new connection.
    Silent,
    /// The header exceeds `client.max_header_bytes`.
    HeaderTooLarge,
    /// No valid PROXY header from a trusted peer.
    ProxyProtocol,
    /// `tls.max_handshakes_per_address` handshakes from this address are
    /// not done yet.
    Handshakes,
    /// The client closed or reset the connection in the middle of a header.
    ClosedMidHeader,
}

impl Cut {
    /// Every kind of cut.
    pub const ALL: [Cut; 8] = [
        Cut::Total,
        Cut::PerAddress,
        Cut::HeaderTimeout,
        Cut::Silent,
        Cut::HeaderTooLarge,
        Cut::ProxyProtocol,
        Cut::Handshakes,
        Cut::ClosedMidHeader,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cut::Total => "max_connections",
            Cut::PerAddress => "max_connections_per_address",
            Cut::HeaderTimeout | Cut::Silent => "header_timeout",
            Cut::HeaderTooLarge => "header_too_large",
            Cut::ProxyProtocol => "proxy_protocol",
            Cut::Handshakes => "max_handshakes_per_address",
            Cut::ClosedMidHeader => "closed_mid_header",
        }
    }

    /// The answer sent before the close, if any: status line and error text.
    fn answer(self) -> Option<(&'static str, &'static str)> {
        match self {
            Cut::Total | Cut::PerAddress => {
                Some(("503 Service Unavailable", "Too many connections, try later"))
            }
            Cut::HeaderTimeout => Some(("408 Request Timeout", "Request timeout")),
            Cut::HeaderTooLarge => Some((
                "431 Request Header Fields Too Large",
                "Request header too large",
            )),
            Cut::Silent | Cut::ProxyProtocol | Cut::Handshakes | Cut::ClosedMidHeader => None,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Cut::Total => 1,
            Cut::PerAddress => 2,
            Cut::HeaderTimeout => 3,
            Cut::Silent => 4,
            Cut::HeaderTooLarge => 5,
            Cut::ProxyProtocol => 6,
            Cut::Handshakes => 7,
            Cut::ClosedMidHeader => 8,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Cut> {
        Cut::ALL.into_iter().find(|k| k.code() == c)
    }
}

/// The whole answer to a refused or cut connection: MOR's XML error shape,
/// `Connection: close`, and `Retry-After: 1` on the connection caps.
pub fn answer_bytes(cut: Cut) -> Option<Vec<u8>> {
    let (status, text) = cut.answer()?;
    let body = error_xml(Envelope::Status, text);
    let retry = if matches!(cut, Cut::Total | Cut::PerAddress) {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    Some(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {XML_CONTENT_TYPE}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Writes `cut`'s answer and closes (at once when `cut` has no answer).
/// With a [`Linger`] slot, the sending side is closed and what the client
/// still sends is read for up to [`LINGER`], so that the client reads the
/// answer instead of a reset; without one, the answer is written only if
/// the socket takes it at once.
pub(crate) async fn refuse(mut stream: Stream, cut: Cut, linger: Option<Linger>) {
    let Some(answer) = answer_bytes(cut) else {
        return;
    };
    let Some(_linger) = linger else {
        let _ = tokio::time::timeout(Duration::ZERO, async {
            stream.write_all(&answer).await?;
            stream.flush().await
        })
        .await;
        return;
    };
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(&answer).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    })
    .await;
    let _ = tokio::time::timeout(LINGER, async {
        // On the heap: an array here would enlarge every connection's future.
        let mut scratch = vec![0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_future_stays_small() {
        // Every connection's future holds room for it: no buffer inside.
        let s: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
        assert!(std::mem::size_of_val(&refuse(s, Cut::Total, None)) < 512);
    }

    #[test]
    fn answers_are_mor_shaped_and_close() {
        let a = String::from_utf8(answer_bytes(Cut::Total).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
        assert!(a.contains("\r\nRetry-After: 1\r\n") && a.contains("\r\nConnection: close\r\n"));
        assert!(a.ends_with("<status><error>Too many connections, try later</error></status>"));
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let a = String::from_utf8(answer_bytes(Cut::HeaderTooLarge).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 431 ") && !a.contains("Retry-After"));
        assert!(answer_bytes(Cut::Silent).is_none());
        assert!(answer_bytes(Cut::ProxyProtocol).is_none());
        for c in Cut::ALL {
            assert_eq!(Cut::from_code(c.code()), Some(c));
            assert!(crate::ops::metrics::CONNECTION_REFUSALS.contains(&c.label()));
        }
    }
}
