//! Every client connection of the gateway listeners, from its accept to its
//! close: the caps on open connections ([`super::caps`]: in total and per
//! client address), the PROXY protocol on plain listeners, the HTTPS
//! handshake after the caps ([`super::tls`]), then the HTTP/1 loop
//! ([`super::http1`]) with the total deadline and size cap of each request
//! header (slowloris, oversized headers).
//!
//! [`Connections`] is the pingora application of the gateway service: it
//! runs the HTTP/1 keep-alive loop and each request's run through the
//! gateway's `ProxyHttp` hooks itself ([`super::http1`]: pingora's HTTP/1
//! session, with pingora's session settings), so that it knows when a
//! connection opens, when each request ends and when it closes.
//! Each stream is wrapped in [`Guarded`], which reads exactly as the stream
//! does except while a request header is being read: then it caps the bytes
//! read and watches the deadline. The loop says when a header is complete
//! ([`super::phase::header_complete`], through a task-local: pingora runs
//! the whole connection in one task). A header over its limits
//! cuts the connection: the request future is dropped (nothing is logged),
//! the socket is recovered from the dropped stream, and a short MOR-shaped
//! answer (408, 431) is written before the close. What pingora parses,
//! verifies and forwards is unchanged: the wrapper only limits how many
//! header bytes are read.

use std::net::IpAddr;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::time::Instant;

use super::caps::{Counts, Linger, LINGER_PER_ADDRESS, LINGER_TOTAL};
use super::cut::{refuse, Cut};
use super::guarded::Guarded;
use super::lock;
use super::phase::{Conn, CONN, HEADER};
use crate::config::ClientSettings;
use crate::core::client::group;
use crate::core::framing::LineScan;
use crate::edge::proxy::Gateway;
use crate::edge::proxy_protocol::{self, Refused};
use crate::edge::state::Shared;
use crate::edge::tls::Tls;

/// The connection's local address (which listener it came in on).
fn local_addr(stream: &Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
}

/// The peer's address and port as the connection knows it.
fn peer_addr(stream: &Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// The peer's address as the connection knows it (the PROXY source behind a
/// balancer that sends the PROXY protocol).
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .map(crate::core::client::canonical)
}

/// The gateway listeners' application: the [`Gateway`]'s hooks run on each
/// HTTP/1 request ([`super::http1`]), with the connection caps, the plain
/// listeners' PROXY protocol and the header limits around them.
pub struct Connections {
    gateway: Gateway,
    shared: Arc<Shared>,
    /// Open connections (each holds its slots until it closes).
    counts: Arc<Counts>,
    /// Refused or cut connections lingering after their answer (their open
    /// slots already released).
    lingering: Arc<Counts>,
    /// HTTPS connections whose TLS handshake is not done yet (per address).
    handshakes: Arc<Counts>,
    /// The HTTPS listeners, if any.
    tls: Option<Arc<Tls>>,
}

impl Connections {
    /// Serves `gateway`; `tls` serves the HTTPS listeners (pingora listens on
    /// them as plain TCP). Limits come from `shared`'s settings in force when
    /// each connection opens.
    pub fn new(gateway: Gateway, shared: Arc<Shared>, tls: Option<Tls>) -> Self {
        Connections {
            gateway,
            shared,
            counts: Arc::new(Counts::default()),
            lingering: Arc::new(Counts::default()),
            handshakes: Arc::new(Counts::default()),
            tls: tls.map(Arc::new),
        }
    }
}

impl Connections {
    fn count(&self, cut: Cut) {
        self.shared
            .metrics
            .connections_refused
            .with_label_values(&[cut.label()])
            .inc();
    }

    /// A slot to linger after a refusal for the connection from `ip`
    /// (grouped; a trusted balancer only counts in the total), if one is free.
    fn linger(&self, ip: Option<IpAddr>, client: &ClientSettings) -> Option<Linger> {
        let total = self.lingering.take_total(LINGER_TOTAL, None)?;
        let address = match ip {
            Some(ip) if !client.trusted_proxies.iter().any(|n| n.contains(&ip)) => Some(
                self.lingering
                    .take_address(group(ip, client.ipv6_prefix), LINGER_PER_ADDRESS)?,
            ),
            _ => None,
        };
        Some(Linger {
            _total: total,
            _address: address,
        })
    }

    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let settings = self.shared.state.load().settings.clone();
        let client = &settings.client;
        let metrics = &self.shared.metrics;
        // An HTTPS listener's connection: no HTTP answer before its TLS, so
        // refusals close it unanswered.
        let tls = self
            .tls
            .as_ref()
            .filter(|t| local_addr(&stream).is_some_and(|a| t.serves(a)));
        let tls_settings = settings.tls.as_ref().filter(|_| tls.is_some());
        let Some(total) = self
            .counts
            .take_total(client.max_connections, Some(&metrics.connections_open))
        else {
            self.count(Cut::Total);
            if tls.is_some() {
                return;
            }
            let linger = self.linger(peer_ip(&stream), client);
            return Box::pin(refuse(stream, Cut::Total, linger)).await;
        };
        let proxied = match tls_settings {
            Some(t) => t.proxy_protocol,
            None => settings.proxy_protocol,
        };
        let stream = if proxied {
            match Box::pin(proxy_protocol::accept_plain(
                &client.trusted_proxies,
                stream,
            ))
            .await
            {
                Ok(s) => s,
                Err(Refused::Closed) => return,
                Err(Refused::Invalid(why)) => {
                    tracing::debug!("connection dropped: {why}");
                    return self.count(Cut::ProxyProtocol);
                }
            }
        } else {
            stream
        };
        let max_per_address = u32::try_from(client.max_connections_per_address).unwrap_or(u32::MAX);
        let ip = peer_ip(&stream);
        // The per-address key of a client that is not a trusted balancer.
        let key = ip
            .filter(|ip| !client.trusted_proxies.iter().any(|n| n.contains(ip)))
            .map(|ip| group(ip, client.ipv6_prefix));
        let address = match key {
            Some(key) if max_per_address > 0 => {
                match self.counts.take_address(key, max_per_address) {
                    Some(slot) => Some(slot),
                    None => {
                        self.count(Cut::PerAddress);
                        // Its total slot is free again at once.
                        drop(total);
                        if tls.is_some() {
                            return;
                        }
                        let linger = self.linger(ip, client);
                        return Box::pin(refuse(stream, Cut::PerAddress, linger)).await;
                    }
                }
            }
            _ => None,
        };
        let stream = match (tls, tls_settings) {
            (Some(tls), Some(t)) => {
                let max = u32::try_from(t.max_handshakes_per_address).unwrap_or(u32::MAX);
                let pending = match key {
                    Some(key) if max > 0 => match self.handshakes.take_address(key, max) {
                        Some(slot) => Some(slot),
                        None => return self.count(Cut::Handshakes),
                    },
                    _ => None,
                };
                let deadline = Instant::now() + t.handshake_timeout;
                let peer = peer_addr(&stream);
                match Box::pin(tls.handshake(stream, deadline)).await {
                    Ok(s) => {
                        drop(pending);
                        s
                    }
                    Err(f) => return tls.failed(&f, peer, metrics),
                }
            }
            _ => stream,
        };
        if matches!(
            stream.selected_alpn_proto(),
            Some(ALPN::H2) | Some(ALPN::Custom(_))
        ) {
            // Not HTTP/1: the gateway's TLS offers `http/1.1` alone, so a
            // client cannot have chosen another protocol; closed unanswered.
            tracing::debug!("connection closed: an ALPN protocol the gateway does not offer");
            return;
        }
        let conn = Arc::new(Conn {
            phase: AtomicU8::new(HEADER),
            cut: AtomicU8::new(0),
            salvage: Mutex::new(None),
            line: Mutex::new(LineScan::default()),
            proxied,
        });
        let guarded = Box::new(Guarded::new(stream, conn.clone(), client));
        let idle = client.keepalive_timeout;
        drop(settings);
        // On the heap: a connection still before its handshake (or its
        // PROXY header) holds a task sized for what it waits on, not for the
        // HTTP/1 loop's state.
        let cut = Box::pin(CONN.scope(
            conn.clone(),
            super::http1::keepalive_loop(&self.gateway, guarded, shutdown, &conn, idle),
        ))
        .await;
        if let Some(cut) = cut {
            self.count(cut);
            // Its slots are free again at once; lingering is counted apart.
            drop((total, address));
            let socket = lock(&conn.salvage).take();
            if let Some(socket) = socket {
                let settings = self.shared.state.load().settings.clone();
                let linger = self.linger(ip, &settings.client);
                Box::pin(refuse(socket, cut, linger)).await;
            }
        }
    }
}

#[async_trait]
impl ServerApp for Connections {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve(stream, shutdown).await;
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What a connection's futures weigh: the connection's own task (its
    /// state while waiting for a request), the HTTP/1 loop (on the heap for
    /// the connection's life) and a request's future (on the heap only
    /// while it is served). Printed (`--nocapture`) for benches/results.md.
    #[tokio::test]
    async fn a_waiting_connection_holds_small_futures() {
        let shared = crate::edge::testing::shared();
        let client = shared.state.load().settings.client.clone();
        let gateway = Gateway {
            shared: shared.clone(),
        };
        let c = Arc::new(Connections::new(gateway, shared, None));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let stream = || -> Stream {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            std::mem::forget(b);
            Box::new(pingora::protocols::l4::stream::Stream::from(a))
        };
        let serve = c.serve(stream(), &rx);
        let conn = Conn {
            phase: AtomicU8::new(HEADER),
            cut: AtomicU8::new(0),
            salvage: Mutex::new(None),
            line: Mutex::new(LineScan::default()),
            proxied: false,
        };
        let conn = Arc::new(conn);
        let guarded = || Box::new(Guarded::new(stream(), conn.clone(), &client));
        let looped = super::super::http1::keepalive_loop(
            &c.gateway,
            guarded(),
            &rx,
            &conn,
            std::time::Duration::from_secs(1),
        );
        let request = super::super::http1::serve_one(&c.gateway, guarded(), true, false, None);
        let sizes = (
            std::mem::size_of_val(&serve),
            std::mem::size_of_val(&looped),
            std::mem::size_of_val(&request),
        );
        println!(
            "future sizes: connection task {} B, HTTP/1 loop {} B, one request {} B",
            sizes.0, sizes.1, sizes.2
        );
        // Debug-build figures; a release build's are smaller.
        // The handshake, PROXY header and refusal futures are boxed (only
        // on their paths), and the loop keeps a request's boxed future, not
        // the session it was built from: 720 and 984 B before.
        assert!(sizes.0 <= 384, "{sizes:?}");
        assert!(sizes.1 <= 640, "{sizes:?}");
        // A request's own future, boxed by the loop while the request is
        // served: 5,616 B (most of it pingora's `finish`, 3,736 B), where
        // pingora-proxy's `process_new_http` was 10,080 B.
        assert!(sizes.2 <= 6144, "{sizes:?}");
    }
}
