//! The pure decision core: everything that decides about a request without
//! I/O. [`decision`] is its entry point; the rest are its parts.

pub mod access;
pub mod answer;
pub mod catalog;
pub mod client;
pub mod decision;
pub mod directory;
pub mod framing;
pub mod judge;
pub mod layers;
pub mod limits;
pub mod params;
pub mod policy;
pub mod reply;
pub mod request_id;
pub mod route;
pub mod signature;
