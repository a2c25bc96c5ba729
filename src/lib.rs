//! mor-gateway: a verifying reverse proxy for the Kolmisoft MOR billing API.
//!
//! The decision core ([`decision`]) is pure: it sees a request view and
//! returns a verdict. [`proxy`] is the thin pingora glue around it.

pub mod accesslog;
pub mod catalog;
pub mod config;
pub mod decision;
pub mod limits;
pub mod metrics;
pub mod params;
pub mod proxy;
pub mod reply;
pub mod route;
pub mod server;
pub mod signature;
pub mod sim;
