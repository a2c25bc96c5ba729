//! The request id: the one a client (or its balancer) sent in
//! `X-Request-Id` when it is sane, else one made here. It follows the call
//! to MOR, back to the client, into the access line and the log lines about
//! the call.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The header that carries it, both ways.
pub const HEADER: &str = "x-request-id";

/// The longest id taken from a client.
pub const MAX_LEN: usize = 128;

/// The client's id if it is sane: 1 to [`MAX_LEN`] bytes of letters,
/// digits and `-_.:` (UUIDs, hex, balancer ids), nothing a log line or a
/// header could be confused by.
pub fn sane(v: &[u8]) -> Option<&str> {
    let ok = !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// Makes ids unique to this process: a random 64-bit prefix drawn once,
/// then a counter (32 hex digits in all).
#[derive(Debug)]
pub struct IdSource {
    prefix: u64,
    next: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        // std's per-process random SipHash keys: no extra crate for 64 bits.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x6d6f_722d_6777);
        IdSource {
            prefix: h.finish(),
            next: AtomicU64::new(0),
        }
    }
}

impl IdSource {
    /// The next id.
    pub fn make(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // 32 lowercase hex digits, without the formatting machinery.
        let mut digits = [0u8; 32];
        let raw = (u128::from(self.prefix) << 64 | u128::from(n)).to_be_bytes();
        let mut id = String::with_capacity(32);
        if hex::encode_to_slice(raw, &mut digits).is_ok() {
            id.extend(digits.iter().map(|&b| char::from(b)));
        }
        id
    }

    /// The id of a call: the client's if sane, else a new one.
    pub fn of(&self, sent: Option<&[u8]>) -> String {
        match sent.and_then(sane) {
            Some(id) => id.to_string(),
            None => self.make(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        let ids = IdSource::default();
        for good in ["3f2b6c1e-8d4a-4c2b-9a7e-0b1c2d3e4f50", "abc", "lb:7.42_x"] {
            assert_eq!(ids.of(Some(good.as_bytes())), good);
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "a b",
            "x\r\nSet-Cookie: y",
            "\"quoted\"",
            "ü",
            long.as_str(),
        ] {
            let made = ids.of(Some(bad.as_bytes()));
            assert_ne!(made, bad);
            assert_eq!(made.len(), 32, "{made}");
        }
        assert_eq!(ids.of(None).len(), 32);
    }

    #[test]
    fn made_ids_differ_within_and_across_sources() {
        let (a, b) = (IdSource::default(), IdSource::default());
        let (a1, a2, b1) = (a.make(), a.make(), b.make());
        assert_ne!(a1, a2);
        assert_ne!(a1, b1, "each process draws its own prefix");
        assert!(a1.bytes().all(|c| c.is_ascii_hexdigit()));
        // The prefix, then the count: 16 lowercase digits each.
        assert_eq!(a1, format!("{:016x}{:016x}", a.prefix, 0));
        assert_eq!(a2, format!("{:016x}{:016x}", a.prefix, 1));
    }
}
