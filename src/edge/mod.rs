//! The network edge: pingora glue around the decision core.

pub mod proxy;
