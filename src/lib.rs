//! mor-gateway: a verifying reverse proxy for the Kolmisoft MOR billing API.
//!
//! Layers, each a folder:
//! - [`core`]: the pure decision core: a request view in, a verdict out; no I/O.
//! - [`config`]: the TOML file (schema), its resolution (secrets, files,
//!   DNS) and the runtime settings.
//! - [`edge`]: the pingora glue: reading the request, forwarding to MOR.
//! - [`ops`]: running it: the server, metrics, access log.
//! - [`sim`]: the embedded MOR simulator (demo and tests).

pub mod config;
pub mod core;
pub mod edge;
pub mod ops;
pub mod sim;
