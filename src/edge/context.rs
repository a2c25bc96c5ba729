//! The per-request context of the gateway's `ProxyHttp` hooks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use prometheus::IntGauge;

use crate::core::decision::{CallInfo, Forward};
use crate::core::judge::Judgement;
use crate::core::reply::Reason;
use crate::edge::body::Reservation;
use crate::edge::state::State;

/// Per-request context: created for each request by [`super::http1`],
/// filled in by `request_filter`, read by `logging`.
pub struct Ctx {
    /// When the request began (its header was read).
    pub(crate) start: Instant,
    /// The state in force when the request was taken up (loaded once).
    pub(crate) state: Option<Arc<State>>,
    /// The call's id (`X-Request-Id`), set as the call is taken up.
    pub(crate) request_id: String,
    /// The client's address.
    pub(crate) ip: Option<IpAddr>,
    /// What is known of the call (labels, log fields).
    pub(crate) info: CallInfo,
    /// Why it was refused at the edge, if it was.
    pub(crate) refused: Option<Reason>,
    /// The verdict to forward, once decided.
    pub(crate) forward: Option<Forward>,
    /// A forwarded API call judged: the gateway's side and MOR's answer
    /// (set once MOR's answer was relayed whole).
    pub(crate) judged: Option<Judgement>,
    /// The MOR server that answered (or was tried last).
    pub(crate) upstream: Option<SocketAddr>,
    /// The MOR servers tried for this call.
    pub(crate) tried: Vec<SocketAddr>,
    /// Request body bytes read.
    pub(crate) req_bytes: usize,
    /// Held while the request is in `in_flight_requests`; a request that
    /// never reached `request_filter` is neither counted nor logged.
    pub(crate) in_flight: Option<InFlight>,
    /// The body budget held for this request.
    pub(crate) reserved: Option<Reservation>,
}

impl Ctx {
    /// A context for a request whose header was just read.
    pub fn new() -> Ctx {
        Ctx {
            start: Instant::now(),
            state: None,
            request_id: String::new(),
            ip: None,
            info: CallInfo::default(),
            refused: None,
            forward: None,
            judged: None,
            upstream: None,
            tried: Vec::new(),
            req_bytes: 0,
            in_flight: None,
            reserved: None,
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

/// One request counted in a gauge (`in_flight_requests`); it leaves the
/// gauge when dropped, whichever way the request ends.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Counts one request in `gauge`.
    pub fn enter(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_leaves_the_gauge_when_dropped() {
        let g = IntGauge::new("g", "g").unwrap();
        let mut ctx = Ctx::new();
        ctx.in_flight = Some(InFlight::enter(&g));
        assert_eq!(g.get(), 1);
        drop(ctx);
        assert_eq!(g.get(), 0);
    }
}
