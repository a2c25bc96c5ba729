//! The network edge: pingora glue around the decision core.

pub mod body;
pub mod connections;
pub mod forward;
pub mod local_limits;
pub mod mirror;
pub mod mor_db;
pub mod proxy;
pub mod proxy_protocol;
pub mod shared_limits;
pub mod tls;
pub mod upstreams;
