//! Running the gateway: the pingora server and its lifecycle, metrics and
//! health endpoints, the access log.

pub(crate) mod accesslog;
pub(crate) mod metrics;
pub mod server;
