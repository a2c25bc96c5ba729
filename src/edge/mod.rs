//! The network edge: pingora glue around the decision core.
//!
//! A connection: [`connections`] (accept, [`caps`], PROXY protocol, [`tls`])
//! → [`http1`] (the keep-alive loop and each request's run through the
//! hooks, over a [`guarded`] stream that shares the [`phase`] marker) →
//! [`proxy`] (the `ProxyHttp` hooks, one [`context`] per request, the head
//! read by [`request`], the [`body`]) → [`forward`] to MOR ([`upstreams`],
//! the HTTP/1 exchange in [`mor_http`], kept-alive connections in the [`pool`]).
//! [`state`] holds what every request shares; [`cut`] is why a connection
//! ends early. MOR's directory: [`mor_db`] reads it, [`mirror`] keeps it.
//! The core's limit questions: [`local_limits`] (governor) or
//! [`shared_limits`] (Redis) answer them; [`lockout_admin`] lists and
//! clears their lockouts.

pub mod body;
pub mod caps;
pub mod connections;
pub mod context;
pub mod cut;
pub mod forward;
pub mod guarded;
pub mod http1;
pub mod local_limits;
pub mod lockout_admin;
pub mod mirror;
pub mod mor_db;
pub mod mor_http;
pub mod phase;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod request;
pub mod shared_limits;
pub mod state;
pub mod tls;
pub mod upstreams;

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data of a poisoned lock as it is (a panic while
/// counting connections must not stop the gateway from counting them).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Glue-test helpers: real pingora sessions over a mock client.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use pingora::proxy::Session;

    use super::state::Shared;

    /// The state a gateway with the least config (one MOR server, an admin
    /// key) shares between its requests.
    pub(crate) fn shared() -> Arc<Shared> {
        let text = "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"K\"\n";
        let env = std::collections::HashMap::from([("K", "k")]);
        let settings = Arc::new(crate::config::Settings::from_toml(text, None, &env).unwrap());
        Arc::new(
            Shared::new(
                settings,
                Arc::new(crate::ops::metrics::Metrics::new()),
                crate::ops::accesslog::AccessLog::open(crate::config::LogMode::Off, None).unwrap(),
            )
            .unwrap(),
        )
    }

    /// A pingora session that has read the request `raw` from a mock client.
    pub(crate) async fn session_of(raw: &[u8]) -> Session {
        let io = tokio_test::io::Builder::new().read(raw).build();
        let mut s = Session::new_h1(Box::new(io));
        assert!(s.read_request().await.unwrap());
        s
    }
}
