//! Request bodies before their verdict: read whole (nothing reaches MOR
//! before it), within a budget one client cannot spend.
//!
//! - The bytes buffered are reserved as they arrive, never as declared: a
//!   header announcing a megabyte holds nothing until the megabyte comes.
//! - All bodies together stay within `api.max_buffered_bytes` (503,
//!   `overloaded`), the bodies of one client address (IPv6 by its network)
//!   within `api.max_buffered_bytes_per_address` (429,
//!   `overloaded_address`); a trusted balancer is not one client.
//! - The whole body must arrive within `client.body_timeout` plus one second
//!   per `client.body_min_rate` bytes received (408, `body_too_slow`): a
//!   byte every 50 s, each read in time for a per-read timeout, cannot hold
//!   its share for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType};

use crate::core::reply::{Reason, Refusal};
use tokio::time::Instant;

/// The bytes of bodies buffered before their verdicts, now: in total and
/// per client address. Entries leave the map at 0.
#[derive(Debug, Default)]
pub struct Budget {
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Budget {
    /// Bytes reserved now, in total.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How much may be buffered, and how fast it must come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Largest body (413 beyond).
    pub max_body: usize,
    /// All bodies together.
    pub total: usize,
    /// The bodies of one client address together.
    pub per_address: usize,
    /// The whole body's time before `min_rate` adds to it.
    pub timeout: Duration,
    /// Bytes per second of body that buy one more second.
    pub min_rate: u64,
}

impl Rules {
    /// When a body whose first `received` bytes arrived, having started at
    /// `start`, must have its next bytes.
    pub fn deadline(&self, start: Instant, received: usize) -> Instant {
        let rate = self.min_rate.max(1) as f64;
        start + self.timeout + Duration::from_secs_f64(received as f64 / rate)
    }
}

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Over `max_body` (declared or read).
    TooLarge,
    /// All bodies together are at their budget.
    Overloaded,
    /// This client address's bodies are at their share.
    AddressOverloaded,
    /// Slower than the minimum rate.
    TooSlow,
    /// The read failed (the client closed, stalled, or sent bad framing).
    Io(Box<Error>),
}

impl BodyError {
    /// The refusal a failed body read is answered with, or the error when
    /// the client left (nobody to answer).
    pub fn answer(self) -> Result<Refusal, Box<Error>> {
        let busy = |reason| {
            let mut r = Refusal::new(reason);
            r.retry_after = Some(Duration::from_secs(1));
            r
        };
        Ok(match self {
            BodyError::TooLarge => Refusal::new(Reason::BodyTooLarge),
            BodyError::Overloaded => busy(Reason::Overloaded),
            BodyError::AddressOverloaded => busy(Reason::AddressOverloaded),
            BodyError::TooSlow => Refusal::new(Reason::BodyTooSlow),
            BodyError::Io(e) => match io_fault(&e) {
                Reason::ClientClosed => return Err(e),
                reason => Refusal::with(reason, "the request body could not be read"),
            },
        })
    }
}

/// What a failed body read was: the client's fault in every case.
fn io_fault(e: &Error) -> Reason {
    match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError => Reason::ClientClosed,
        ErrorType::ReadTimedout => Reason::ClientTimeout,
        _ => Reason::BadFraming,
    }
}

/// One request's share of the [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    /// The client's key (None: a trusted balancer, counted in the total only).
    key: Option<IpAddr>,
    bytes: usize,
}

impl Reservation {
    /// An empty reservation of the client `key`.
    pub fn new(budget: Arc<Budget>, key: Option<IpAddr>) -> Reservation {
        Reservation {
            budget,
            key,
            bytes: 0,
        }
    }

    /// Takes `more` bytes if the client's share and the total allow them.
    pub fn grow(&mut self, more: usize, rules: &Rules) -> Result<(), BodyError> {
        let mut map = self.budget.lock();
        if let Some(k) = self.key {
            let mine = map.get(&k).copied().unwrap_or(0);
            if mine.checked_add(more).is_none_or(|n| n > rules.per_address) {
                return Err(BodyError::AddressOverloaded);
            }
        }
        self.budget
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                t.checked_add(more).filter(|n| *n <= rules.total)
            })
            .map_err(|_| BodyError::Overloaded)?;
        if let Some(k) = self.key {
            *map.entry(k).or_insert(0) += more;
        }
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut map = self.budget.lock();
        self.budget.total.fetch_sub(self.bytes, Ordering::AcqRel);
        if let Some(k) = self.key {
            if let Some(n) = map.get_mut(&k) {
                *n = n.saturating_sub(self.bytes);
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
    }
}

/// Reads the whole request body of `ds` into memory, reserving its bytes in
/// `res` as they arrive, within `rules`.
pub async fn read(
    ds: &mut ServerSession,
    res: &mut Reservation,
    rules: &Rules,
) -> Result<Bytes, BodyError> {
    let declared = ds
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > rules.max_body as u64) {
        return Err(BodyError::TooLarge);
    }
    if ds.is_body_empty() {
        return Ok(Bytes::new());
    }
    let expects_continue = ds
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        ds.write_continue_response().await.map_err(BodyError::Io)?;
    }
    let start = Instant::now();
    let mut buf = BytesMut::new();
    loop {
        let deadline = rules.deadline(start, buf.len());
        let chunk = match tokio::time::timeout_at(deadline, ds.read_request_body()).await {
            Err(_) => return Err(BodyError::TooSlow),
            Ok(read) => read.map_err(BodyError::Io)?,
        };
        let Some(chunk) = chunk else {
            return Ok(buf.freeze());
        };
        if buf.len() + chunk.len() > rules.max_body {
            return Err(BodyError::TooLarge);
        }
        res.grow(chunk.len(), rules)?;
        buf.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        max_body: 100,
        total: 250,
        per_address: 150,
        timeout: Duration::from_secs(10),
        min_rate: 100,
    };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn shares_and_total() {
        let b = Arc::new(Budget::default());
        let mut a1 = Reservation::new(b.clone(), ip("192.0.2.1"));
        let mut a2 = Reservation::new(b.clone(), ip("192.0.2.1"));
        a1.grow(100, &RULES).unwrap();
        a2.grow(50, &RULES).unwrap();
        // The address's share is spent; another address still has room.
        assert!(matches!(
            a2.grow(1, &RULES),
            Err(BodyError::AddressOverloaded)
        ));
        let mut other = Reservation::new(b.clone(), ip("192.0.2.2"));
        other.grow(100, &RULES).unwrap();
        // The total (250) is spent; a balancer (no key) meets only it.
        let mut lb = Reservation::new(b.clone(), None);
        assert!(matches!(lb.grow(1, &RULES), Err(BodyError::Overloaded)));
        drop(a1);
        assert_eq!(b.total(), 150);
        lb.grow(100, &RULES).unwrap();
        drop((a2, other, lb));
        assert_eq!(b.total(), 0);
        assert!(b.lock().is_empty(), "entries leave the map at 0");
    }

    #[test]
    fn the_deadline_grows_with_what_arrived() {
        let t = Instant::now();
        assert_eq!(RULES.deadline(t, 0), t + Duration::from_secs(10));
        assert_eq!(RULES.deadline(t, 250), t + Duration::from_millis(12_500));
    }
}
