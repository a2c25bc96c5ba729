//! mor-gateway: a verifying reverse proxy for the Kolmisoft MOR billing API.
//!
//! Layers, each a folder:
//! - [`core`]: the pure decision core: a request view in, a verdict out; no I/O.
//! - [`config`]: the TOML file (schema), its resolution (secrets, files,
//!   DNS) and the runtime settings.
//! - [`edge`]: the pingora glue: reading the request, forwarding to MOR.
//! - [`ops`]: observability: metrics, the access log, the process's log.
//! - [`doctor`]: `mor-gateway doctor`, the config checked against the live MOR.
//! - [`server`]: the composition root: the pingora server, its services,
//!   housekeeping and `check`.
//!
//! The MOR simulator (`src/sim/`, demo and tests) is a binary of its own,
//! `mor-sim`: no part of this library.

pub mod config;
pub mod core;
pub mod doctor;
pub mod edge;
pub mod explain;
pub mod ops;
pub mod server;
