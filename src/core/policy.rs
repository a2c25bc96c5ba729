//! What the decision core needs to know of the configuration: the path
//! policies, the method catalogue, and the static directory (owners, keys,
//! switches; [`crate::core::directory`]). Built by [`crate::config`];
//! read-only while requests are decided.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::core::access::Access;
use crate::core::catalog::Catalog;
use crate::core::directory::Directory;

/// What to do with a request whose path is not a catalogued API method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathPolicy {
    /// Answer with a refusal; nothing is forwarded.
    Refuse,
    /// Forward (for unknown API methods: after verifying the hash by the global order).
    Forward,
}

/// What to do with an API method that is not in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMethods {
    /// Answer "Unknown API method"; nothing is forwarded.
    Refuse,
    /// Verify the hash by MOR's global order, then forward.
    Forward,
    /// Forward without the gateway's own hash check (MOR checks it);
    /// counted as unchecked.
    Unchecked,
}

/// What to do with an action whose hash list the documentation does not
/// settle (catalogue `auth = "undetermined"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Undetermined {
    /// Forward without the gateway's own hash check (MOR checks it);
    /// counted as unchecked.
    Unchecked,
    /// Forward when the hash matches one of the lists the documentation's
    /// revisions give; an action with none documented is forwarded
    /// unchecked.
    Candidates,
    /// Refuse at the edge.
    Refuse,
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

/// The core's view of the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// API path prefix without trailing slash, e.g. `/billing/api`.
    pub prefix: String,
    /// Unknown API methods.
    pub unknown_methods: UnknownMethods,
    /// Actions whose hash list is undetermined.
    pub undetermined: Undetermined,
    /// `<prefix>/v2/...` REST paths.
    pub rest_v2: PathPolicy,
    /// Paths outside the API prefix.
    pub other_paths: PathPolicy,
    /// The directory of the static config (owners, keys, switches); the
    /// running gateway may decide with a snapshot of MOR's database instead.
    pub directory: Arc<Directory>,
    /// Method catalogue (with configured aliases and patches merged).
    pub catalog: Catalog,
    /// Allow and deny lists of client addresses (`[access]`).
    pub access: Access,
    /// Which refusing layers enforce and which only report (`[rollout]`).
    pub rollout: crate::core::layers::Enforcement,
}
