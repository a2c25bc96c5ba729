//! Running the gateway: the pingora server and its lifecycle, metrics and
//! health endpoints, the access log, the process's own log.

pub(crate) mod accesslog;
pub mod logging;
pub(crate) mod metrics;
pub mod server;
