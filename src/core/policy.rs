//! What the decision core needs to know of the configuration: MOR's API
//! policies, the keys, who owns which user, and the method catalogue. Built
//! by [`crate::config`]; read-only while requests are decided.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::core::catalog::Catalog;

/// What to do with a request whose path is not a catalogued API method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathPolicy {
    /// Answer with a refusal; nothing is forwarded.
    Refuse,
    /// Forward (for unknown API methods: after verifying the hash by the global order).
    Forward,
}

/// An API secret key. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps key bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Secret(Arc::from(bytes))
    }
    /// The key bytes, for signing only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A reseller tenant: its own key and the usernames it owns.
#[derive(Debug, Clone)]
pub struct Reseller {
    /// The reseller's own MOR username.
    pub name: String,
    /// Its API secret key.
    pub key: Secret,
    /// Usernames of its users.
    pub users: Vec<String>,
    /// Its uniquehash (the `id` of user_register), if configured.
    pub uniquehash: Option<String>,
}

/// The core's view of the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// API path prefix without trailing slash, e.g. `/billing/api`.
    pub prefix: String,
    /// MOR "Allow API".
    pub allow_api: bool,
    /// MOR "Allow GET API".
    pub allow_get: bool,
    /// Verify hashes (MOR "Disable hash checking" off).
    pub verify_hash: bool,
    /// Unknown API methods.
    pub unknown_methods: PathPolicy,
    /// `<prefix>/v2/...` REST paths.
    pub rest_v2: PathPolicy,
    /// Paths outside the API prefix.
    pub other_paths: PathPolicy,
    /// Admin (system) API key.
    pub admin_key: Secret,
    /// Reseller tenants.
    pub resellers: Vec<Reseller>,
    /// Username -> index in `resellers` (the reseller itself and its users).
    pub reseller_of: HashMap<String, usize>,
    /// Uniquehash -> index in `resellers`.
    pub reseller_by_uniquehash: HashMap<String, usize>,
    /// Method catalogue (with configured aliases and patches merged).
    pub catalog: Catalog,
}
