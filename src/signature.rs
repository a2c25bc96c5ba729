//! MOR's request hash: SHA1 (hex) of the values of the method's hash-covered
//! parameters that are present, concatenated in server order, then the key.
//! Verification compares in constant time, hex case-insensitively.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// A lower-case hex SHA1 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; 40]);

impl HexDigest {
    /// The digest as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Constant-time comparison with a client-supplied hash (any hex case).
    /// The length is not secret and is checked first.
    pub fn matches(&self, given: &str) -> bool {
        let g = given.as_bytes();
        if g.len() != 40 {
            return false;
        }
        let mut lower = [0u8; 40];
        for (d, s) in lower.iter_mut().zip(g) {
            *d = s.to_ascii_lowercase();
        }
        bool::from(self.0.ct_eq(&lower))
    }
}

impl std::fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Computes the hash for `order`, taking each present value from `value_of`.
pub fn compute<'v, S, F>(order: &[S], mut value_of: F, key: &[u8]) -> HexDigest
where
    S: AsRef<str>,
    F: FnMut(&str) -> Option<&'v str>,
{
    let mut h = Sha1::new();
    for name in order {
        if let Some(v) = value_of(name.as_ref()) {
            h.update(v.as_bytes());
        }
    }
    h.update(key);
    let out = h.finalize();
    let mut hex_out = [0u8; 40];
    // 20 bytes always encode into 40 hex digits.
    let _ = hex::encode_to_slice(out, &mut hex_out);
    HexDigest(hex_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sign(order: &[&str], params: &[(&str, &str)], key: &str) -> String {
        let m: HashMap<&str, &str> = params.iter().copied().collect();
        compute(order, |n| m.get(n).copied(), key.as_bytes())
            .as_str()
            .to_string()
    }

    #[test]
    fn documented_construction_example() {
        // "MOR API hash construction": "123"+"1252454580"+"answered"+key.
        let h = sign(
            &["user_id", "period_start", "calltype"],
            &[
                ("user_id", "123"),
                ("period_start", "1252454580"),
                ("calltype", "answered"),
            ],
            "Very Sercet Key",
        );
        assert!(h.starts_with("b93c35d5"), "{h}");
    }

    #[test]
    fn seed_vectors() {
        assert_eq!(
            sign(&["user_id", "username"], &[("user_id", "123")], "456789"),
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
        assert_eq!(
            sign(
                &["user_id", "u15"],
                &[("user_id", "123"), ("u15", "1")],
                "456789"
            ),
            "0ab3ede4e93a55c38855a2cc9b9e169d35442c48"
        );
        assert_eq!(
            sign(&[], &[("devices_id", "6")], "secret"),
            "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4"
        );
    }

    #[test]
    fn compare_is_case_insensitive_and_length_checked() {
        let d = compute(&["a"], |_| Some("1"), b"k");
        assert!(d.matches(d.as_str()));
        assert!(d.matches(&d.as_str().to_ascii_uppercase()));
        assert!(!d.matches(&d.as_str()[..39]));
        assert!(!d.matches(""));
        let mut wrong = d.as_str().to_string();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(39.., last);
        assert!(!d.matches(&wrong));
    }
}
