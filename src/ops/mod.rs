//! Running the gateway: the pingora server and its lifecycle, metrics and
//! health endpoints, the access log.

pub mod accesslog;
pub mod metrics;
pub mod server;
