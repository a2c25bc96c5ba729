//! The caps on a listener's connections: open connections in total and per
//! client address, refused connections lingering after their answer, TLS
//! handshakes pending per address. A slot is held by a guard and released
//! when the guard drops, whichever way the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

use super::lock;

/// A count of connections in some state (open, lingering after a refusal),
/// in total and per client address. Entries leave the map when their count
/// drops to 0, so it holds at most one entry per counted connection.
#[derive(Default)]
pub struct Counts {
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection in the total; released when dropped.
pub(crate) struct TotalSlot {
    counts: Arc<Counts>,
    gauge: Option<IntGauge>,
}

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// One connection of a client address; released when dropped.
pub(crate) struct AddressSlot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.counts.per_address);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Counts {
    /// Connections counted now.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Client addresses with a (per-address counted) connection.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.per_address).len()
    }

    /// A slot in the total if fewer than `max` are taken (0: no cap);
    /// `gauge` follows the count.
    pub(crate) fn take_total(
        self: &Arc<Self>,
        max: usize,
        gauge: Option<&IntGauge>,
    ) -> Option<TotalSlot> {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        if let Some(g) = gauge {
            g.inc();
        }
        Some(TotalSlot {
            counts: self.clone(),
            gauge: gauge.cloned(),
        })
    }

    pub(crate) fn take_address(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut m = lock(&self.per_address);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// Refused connections that may linger after their answer at once, in
/// total; the others get their answer only if the socket takes it at once,
/// and are closed.
pub(crate) const LINGER_TOTAL: usize = 256;
/// ... and per client address (so that one address can hold at most its
/// own cap of open connections plus this many refused ones).
pub(crate) const LINGER_PER_ADDRESS: u32 = 4;

/// A refused connection's right to linger ([`super::cut::refuse`]).
pub(crate) struct Linger {
    pub(crate) _total: TotalSlot,
    pub(crate) _address: Option<AddressSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let counts = Arc::new(Counts::default());
        let gauge = IntGauge::new("g", "g").unwrap();
        let g = Some(&gauge);
        let a = counts.take_total(2, g).unwrap();
        let b = counts.take_total(2, g).unwrap();
        assert!(counts.take_total(2, g).is_none());
        assert_eq!((counts.total(), gauge.get()), (2, 2));
        drop(a);
        let _c = counts.take_total(2, g).unwrap();
        drop(b);
        assert_eq!((counts.total(), gauge.get()), (1, 1));
        assert!(counts.take_total(0, g).is_some(), "0 is unlimited");

        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let x = counts.take_address(ip, 1).unwrap();
        assert!(counts.take_address(ip, 1).is_none());
        let other = counts.take_address("198.51.100.8".parse().unwrap(), 1);
        assert!(other.is_some());
        assert_eq!(counts.addresses(), 2);
        drop((x, other));
        assert_eq!(counts.addresses(), 0, "entries leave the map at 0");
        let _y = counts.take_address(ip, 1).unwrap();
    }
}
