//! Kept-alive connections to MOR, reused most recent first.
//!
//! In place of pingora's connection pool, which spawns a task per released
//! connection to watch it while it is idle (a task, a timer, a lock and an
//! `Arc<Mutex>` per call, and a `getpeername` per reuse). Here an idle
//! connection is looked at when it is taken and when housekeeping sweeps:
//! one MOR closed, or that sent bytes nobody asked for, is dropped (the
//! kernel has told tokio already: no system call unless it did); one idle
//! past `upstream.idle_timeout` is closed. At most
//! `upstream.keepalive_pool_size` are kept; a connection released beyond
//! that is closed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora::prelude::HttpPeer;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use tokio::io::{AsyncRead, ReadBuf};

use super::lock;

/// One idle connection and when it stops being reusable.
struct Idle {
    stream: Stream,
    until: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now >= u)
    }
}

#[derive(Default)]
struct Held {
    /// Per peer (address and TLS settings: pingora's reuse hash), the most
    /// recently released last.
    by_peer: HashMap<u64, Vec<Idle>>,
    count: usize,
}

/// The idle connections to MOR's servers.
pub struct Pool {
    held: Mutex<Held>,
    cap: usize,
}

impl Pool {
    /// A pool keeping at most `cap` idle connections (0: none).
    pub fn new(cap: usize) -> Pool {
        Pool {
            held: Mutex::default(),
            cap,
        }
    }

    /// The most recently released usable connection to `peer`; the stale
    /// ones met on the way are closed.
    pub fn take(&self, peer: &HttpPeer) -> Option<Stream> {
        let key = peer.reuse_hash();
        let now = Instant::now();
        loop {
            let mut idle = {
                let mut h = lock(&self.held);
                let idle = h.by_peer.get_mut(&key)?.pop()?;
                h.count -= 1;
                idle
            };
            if !idle.expired(now) && usable(&mut idle.stream) {
                return Some(idle.stream);
            }
            // Dropped here, outside the lock: the socket is closed.
        }
    }

    /// Keeps `stream` (its answer read whole, MOR keeping it open) for
    /// `peer` during `idle`; closes it when it is not usable or the pool is
    /// full.
    pub fn give(&self, peer: &HttpPeer, mut stream: Stream, idle: Option<Duration>) {
        if self.cap == 0 || !usable(&mut stream) {
            return;
        }
        let until = idle.map(|d| Instant::now() + d);
        let mut h = lock(&self.held);
        if h.count >= self.cap {
            drop(h);
            return;
        }
        h.count += 1;
        h.by_peer
            .entry(peer.reuse_hash())
            .or_default()
            .push(Idle { stream, until });
    }

    /// Closes the idle connections that expired, that MOR closed or that
    /// sent unasked bytes (a housekeeping duty).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut h = lock(&self.held);
        for list in h.by_peer.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if list[i].expired(now) || !usable(&mut list[i].stream) {
                    closed.push(list.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        h.by_peer.retain(|_, list| !list.is_empty());
        h.count -= closed.len();
        drop(h);
        // The sockets close here, outside the lock.
        drop(closed);
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        lock(&self.held).count
    }
}

/// True while an idle connection has nothing to read: MOR neither closed it
/// nor sent anything (a server does not speak first on an idle HTTP/1
/// connection). Tokio knows from the kernel whether the socket became
/// readable, so a quiet connection costs no system call here.
fn usable(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the gateway's end as a pingora stream, MOR's end.
    async fn pair() -> (Stream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(a), l.accept());
        let s: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(ours.unwrap()));
        (s, theirs.unwrap().0)
    }

    fn peer(port: u16) -> HttpPeer {
        HttpPeer::new(("127.0.0.1", port), false, String::new())
    }

    /// Lets the reactor see what the kernel has for the sockets.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn the_most_recent_connection_is_taken_first_and_per_peer() {
        let pool = Pool::new(8);
        let (a, _ma) = pair().await;
        let (b, _mb) = pair().await;
        let (c, _mc) = pair().await;
        let (ida, idb) = (a.id(), b.id());
        pool.give(&peer(1), a, None);
        pool.give(&peer(1), b, None);
        pool.give(&peer(2), c, None);
        assert_eq!(pool.idle(), 3);
        assert_eq!(pool.take(&peer(1)).map(|s| s.id()), Some(idb));
        assert_eq!(pool.take(&peer(1)).map(|s| s.id()), Some(ida));
        assert!(pool.take(&peer(1)).is_none());
        assert!(pool.take(&peer(2)).is_some());
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn a_connection_mor_closed_or_spoke_on_is_never_handed_out() {
        let pool = Pool::new(8);
        let (closed, mor_closed) = pair().await;
        let (spoke, mut mor_spoke) = pair().await;
        let (fine, _mor_fine) = pair().await;
        let fine_id = fine.id();
        pool.give(&peer(1), fine, None);
        pool.give(&peer(1), closed, None);
        pool.give(&peer(1), spoke, None);
        drop(mor_closed);
        mor_spoke
            .write_all(b"HTTP/1.1 408 x\r\n\r\n")
            .await
            .unwrap();
        settle().await;
        // The two stale ones (taken first: most recent) are closed on the
        // way to the good one.
        assert_eq!(pool.take(&peer(1)).map(|s| s.id()), Some(fine_id));
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn idle_connections_expire_and_the_sweep_closes_them() {
        let pool = Pool::new(8);
        let (a, mut mor_a) = pair().await;
        let (b, _mor_b) = pair().await;
        let (c, mor_c) = pair().await;
        pool.give(&peer(1), a, Some(Duration::from_millis(30)));
        pool.give(&peer(1), b, Some(Duration::from_secs(60)));
        pool.give(&peer(1), c, Some(Duration::from_secs(60)));
        drop(mor_c);
        settle().await;
        pool.sweep();
        assert_eq!(pool.idle(), 1, "the expired and the closed one go");
        // MOR sees the expired connection closed by the gateway.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut mor_a, &mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(n, 0);
        assert!(pool.take(&peer(1)).is_some());
        // An expired one is not handed out even before a sweep.
        let (d, _mor_d) = pair().await;
        pool.give(&peer(1), d, Some(Duration::from_millis(1)));
        settle().await;
        assert!(pool.take(&peer(1)).is_none());
    }

    #[tokio::test]
    async fn a_full_pool_closes_what_it_cannot_keep() {
        let pool = Pool::new(1);
        let (a, _ma) = pair().await;
        let (b, mut mor_b) = pair().await;
        pool.give(&peer(1), a, None);
        pool.give(&peer(1), b, None);
        assert_eq!(pool.idle(), 1);
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut mor_b, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, 0, "the connection beyond the cap is closed");
        let none = Pool::new(0);
        let (c, _mc) = pair().await;
        none.give(&peer(1), c, None);
        assert_eq!(none.idle(), 0);
    }
}
