//! Observability: metrics, the access log, the process's own log. Nothing
//! here knows the edge: the composition root ([`crate::server`]) wires them.

pub(crate) mod accesslog;
pub mod logging;
pub(crate) mod metrics;
