//! Prometheus metrics (`mor_gateway_*`). Labels are bounded: API methods are
//! catalogue names or `other`, never usernames or raw paths.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::decision::{CallInfo, Skipped};
use crate::core::judge::{Disagreement, Judged, Judgement, MorAnswer};
use crate::core::layers::Guard;
use crate::core::limits::Layer;
use crate::core::reply::Reason;

/// Access-log lines not written, by reason: `queue_full` (the writer's
/// queue was full; a request never waits for the disk) or `write_error`.
/// Process-wide: the access log's writer thread counts here, and every
/// [`Metrics`] registry exports it.
pub(crate) static ACCESS_LOG_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    static_metric(IntCounterVec::new(
        Opts::new(
            "access_log_dropped_total",
            "Access-log lines not written, by reason (queue_full, write_error).",
        ),
        &["reason"],
    ))
});

/// pingora log lines of expected noise of healthy operation (connection-pool
/// races, upgrade hand-off retries) that were not written to stderr. Process-wide, like
/// [`ACCESS_LOG_DROPPED`].
pub(crate) static LOG_SUPPRESSED: LazyLock<IntCounter> = LazyLock::new(|| {
    static_metric(IntCounter::new(
        "log_suppressed_total",
        "pingora log lines of expected noise (connection-pool races, upgrade retries), not written to stderr.",
    ))
});

/// Wall-clock time since the Unix epoch (zero if the clock is set before
/// it), for the timestamp gauges.
pub fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The registry of the `process_*` metrics (Linux; elsewhere empty).
fn process_registry() -> Registry {
    let r = Registry::new();
    let _ = r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    r
}

/// A metric from a static definition.
#[allow(
    clippy::expect_used,
    reason = "static names and labels, fixed at build time and unit-tested"
)]
fn static_metric<M>(m: prometheus::Result<M>) -> M {
    m.expect("static metric definition")
}

/// The `reason` labels of `mor_gateway_connections_refused_total`:
/// - `max_connections`: `client.max_connections` were open (503);
/// - `max_connections_per_address`: as many from that client address (503);
/// - `header_timeout`: the request header did not arrive within
///   `client.header_timeout` (408, or closed if no byte came);
/// - `header_too_large`: the request header exceeded `client.max_header_bytes` (431);
/// - `proxy_protocol`: a missing or invalid PROXY header, or one from a
///   peer not in `client.trusted_proxies` (closed);
/// - `max_handshakes_per_address`: as many TLS handshakes from that client
///   address are not done yet (`tls.max_handshakes_per_address`; closed);
/// - `closed_mid_header`: the client closed or reset the connection in the
///   middle of a request header (a slowloris giving up; nothing to answer,
///   no log line).
///
/// On the HTTPS listeners the caps close the connection before its
/// handshake, unanswered.
pub const CONNECTION_REFUSALS: [&str; 7] = [
    "max_connections",
    "max_connections_per_address",
    "header_timeout",
    "header_too_large",
    "proxy_protocol",
    "max_handshakes_per_address",
    "closed_mid_header",
];

/// The `reason` labels of `mor_gateway_tls_handshake_failures_total`:
/// - `timeout`: not done within `tls.handshake_timeout` (a silent
///   connection, a partial ClientHello);
/// - `closed`: the client closed or reset the connection mid-handshake
///   (e.g. after refusing the certificate without an alert);
/// - `error`: not TLS, no common version or cipher, an alert, a malformed
///   message.
///
/// A connection closed before sending a byte (a TCP health check) is not a
/// failure.
pub const TLS_HANDSHAKE_FAILURES: [&str; 3] = ["timeout", "closed", "error"];

/// Latency buckets for MOR: 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Round-trip buckets for Redis: 100 µs to 250 ms.
pub const SHARED_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by api_method, http_method, outcome, reason.
    pub requests: IntCounterVec,
    /// End-to-end latency by api_method.
    pub duration: HistogramVec,
    /// Upstream latency (request sent to response header) by api_method.
    pub upstream_duration: HistogramVec,
    /// Hash verification failures by api_method.
    pub hash_failures: IntCounterVec,
    /// Alias rewrites by alias.
    pub alias_rewrites: IntCounterVec,
    /// Rate-limit decisions by layer, api_method, decision.
    pub limit_decisions: IntCounterVec,
    /// Active lockouts.
    pub lockouts_active: IntGauge,
    /// Upstream errors by upstream and kind (connect, timeout, other).
    pub upstream_errors: IntCounterVec,
    /// Upstream health (1 in rotation, 0 out) by upstream.
    pub upstream_up: IntGaugeVec,
    /// Passive ejections (failed real calls in a row) by upstream.
    pub upstream_ejections: IntCounterVec,
    /// Requests in flight.
    pub in_flight: IntGauge,
    /// 1 while the gateway drains (SIGUSR2): serving, `/readyz` 503.
    pub draining: IntGauge,
    /// Client connections open now (gateway listeners).
    pub connections_open: IntGauge,
    /// Client connections refused or cut before a request reached the
    /// gateway, by reason ([`CONNECTION_REFUSALS`]).
    pub connections_refused: IntCounterVec,
    /// TLS handshakes on the HTTPS listeners that failed, by reason
    /// ([`TLS_HANDSHAKE_FAILURES`]).
    pub tls_handshake_failures: IntCounterVec,
    /// Request body bytes by api_method.
    pub request_bytes: IntCounterVec,
    /// Response body bytes by api_method.
    pub response_bytes: IntCounterVec,
    /// Config reloads by result (ok, failed).
    pub reloads: IntCounterVec,
    /// Unix time the config in force was loaded.
    pub config_loaded: Gauge,
    /// 1 when the last reload succeeded (or none was tried), 0 while the
    /// configuration in force is older than a refused reload.
    pub last_reload_ok: IntGauge,
    /// The configuration in force: its digest as a label, always 1.
    pub config_info: IntGaugeVec,
    /// Unix time the HTTPS listeners' certificate expires (absent without TLS).
    pub tls_cert_expiry: Gauge,
    /// `process_*` (RSS, CPU, open and maximum file descriptors, start
    /// time), without the `mor_gateway_` prefix as every exporter has them.
    process: Registry,
    /// Build information (always 1).
    pub build_info: IntGaugeVec,
    /// Shared limits: 1 when Redis answered the last decision or probe, 0
    /// while decisions fall back to the local limiters (absent when off).
    pub shared_limits_up: IntGauge,
    /// Decisions settled by the local limiters because Redis was not
    /// usable, by reason (timeout, error, down).
    pub shared_limits_fallbacks: IntCounterVec,
    /// Round trip of one shared-limit decision to Redis.
    pub shared_limits_duration: Histogram,
    /// Calls MOR hash-checks that were forwarded without the gateway's
    /// check, by reason ([`Skipped::label`]).
    pub unchecked: IntCounterVec,
    /// Forwarded calls a reporting layer would have refused, by layer and
    /// reason ([`Guard::label`], [`Reason::label`]).
    pub would_refuse: IntCounterVec,
    /// Forwarded API calls by the gateway's side ([`Judged::label`]) and
    /// MOR's answer ([`MorAnswer::label`]): MOR as the judge.
    pub mor_answers: IntCounterVec,
    /// The forwarded calls where the gateway and MOR disagree, by kind
    /// ([`Disagreement::label`]) and api_method.
    pub mor_disagreements: IntCounterVec,
    /// MOR's directory (exported while `[directory]` is on): users in the
    /// snapshot in force.
    pub directory_users: IntGauge,
    /// Owners with settings in the snapshot in force.
    pub directory_owners: IntGauge,
    /// Unix time of the last good snapshot.
    pub directory_loaded: Gauge,
    /// Seconds since the last good snapshot (since start if none yet).
    pub directory_age: Gauge,
    /// The configured refresh interval, in seconds.
    pub directory_interval: Gauge,
    /// How long the last refresh took, in seconds.
    pub directory_refresh_seconds: Gauge,
    /// Refreshes by result (ok, failed).
    pub directory_refreshes: IntCounterVec,
}

/// Registers a metric built from static definitions and returns it.
#[allow(
    clippy::expect_used,
    reason = "static names and labels, fixed at build time and unit-tested; start-up only"
)]
fn reg<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<M>,
) -> M {
    let m = m.expect("static metric definition");
    r.register(Box::new(m.clone())).expect("unique metric name");
    m
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        ),
    )
}

/// Git revision baked in at build time, if the build saw one.
pub const GIT_SHA: &str = match option_env!("MOR_GATEWAY_GIT_SHA") {
    Some(s) => s,
    None => "unknown",
};

impl Metrics {
    /// Creates and registers every metric.
    #[allow(
        clippy::expect_used,
        reason = "a static prefix, unit-tested; start-up only"
    )]
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("mor_gateway".into()), None).expect("valid prefix");
        let m = Metrics {
            requests: counter(
                &r,
                "requests_total",
                "Requests by API method, HTTP method, outcome and refusal reason.",
                &["api_method", "http_method", "outcome", "reason"],
            ),
            duration: histogram(
                &r,
                "request_duration_seconds",
                "End-to-end request latency at the gateway, by API method and outcome (the latency SLO counts forwarded and upstream_error: the calls MOR was asked).",
                &["api_method", "outcome"],
            ),
            upstream_duration: histogram(
                &r,
                "upstream_duration_seconds",
                "Time from sending upstream to MOR's response header.",
                &["api_method"],
            ),
            hash_failures: counter(
                &r,
                "hash_failures_total",
                "Calls refused for a missing or incorrect hash.",
                &["api_method"],
            ),
            alias_rewrites: counter(
                &r,
                "alias_rewrites_total",
                "Legacy alias names rewritten to canonical names.",
                &["alias"],
            ),
            limit_decisions: counter(
                &r,
                "ratelimit_decisions_total",
                "Rate-limit decisions by layer, API method and decision.",
                &["layer", "api_method", "decision"],
            ),
            lockouts_active: reg(
                &r,
                IntGauge::new("lockouts_active", "(IP, user) pairs locked out now."),
            ),
            upstream_errors: counter(
                &r,
                "upstream_errors_total",
                "Upstream failures by upstream and kind (connect, timeout, other).",
                &["upstream", "kind"],
            ),
            upstream_up: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "upstream_up",
                        "1 when the upstream is in rotation: passing its health probes and not ejected.",
                    ),
                    &["upstream"],
                ),
            ),
            upstream_ejections: counter(
                &r,
                "upstream_ejections_total",
                "Upstreams taken out of rotation for failing real calls in a row (5xx, timeouts, refused connects), by upstream.",
                &["upstream"],
            ),
            in_flight: reg(
                &r,
                IntGauge::new("in_flight_requests", "Requests being handled now."),
            ),
            draining: reg(
                &r,
                IntGauge::new(
                    "draining",
                    "1 while the gateway drains (SIGUSR2): it serves, /readyz answers 503, connections close after their answer.",
                ),
            ),
            connections_open: reg(
                &r,
                IntGauge::new(
                    "connections_open",
                    "Client connections open now on the gateway listeners.",
                ),
            ),
            connections_refused: counter(
                &r,
                "connections_refused_total",
                "Client connections refused, cut or abandoned before a request reached the gateway, by reason.",
                &["reason"],
            ),
            tls_handshake_failures: counter(
                &r,
                "tls_handshake_failures_total",
                "TLS handshakes on the HTTPS listeners that failed, by reason (timeout, closed, error).",
                &["reason"],
            ),
            request_bytes: counter(
                &r,
                "request_bytes_total",
                "Request body bytes received.",
                &["api_method"],
            ),
            response_bytes: counter(
                &r,
                "response_bytes_total",
                "Response body bytes sent to clients.",
                &["api_method"],
            ),
            reloads: counter(
                &r,
                "config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            config_loaded: reg(
                &r,
                Gauge::new(
                    "config_loaded_timestamp_seconds",
                    "Unix time the configuration in force was loaded.",
                ),
            ),
            last_reload_ok: reg(
                &r,
                IntGauge::new(
                    "config_last_reload_successful",
                    "1 when the last configuration reload succeeded (or none was tried), 0 while the configuration in force is older than a refused reload.",
                ),
            ),
            config_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "config_info",
                        "The configuration in force; digest: 12 hex digits of the SHA-1 of its file. Always 1.",
                    ),
                    &["digest"],
                ),
            ),
            tls_cert_expiry: static_metric(Gauge::new(
                "tls_certificate_expiry_timestamp_seconds",
                "Unix time the HTTPS listeners' certificate (its leaf) expires.",
            )),
            process: process_registry(),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("build_info", "Build information; always 1."),
                    &["version", "git_sha"],
                ),
            ),
            // Registered only while shared limits are on (see `share_limits`).
            shared_limits_up: static_metric(IntGauge::new(
                "shared_limits_up",
                "1 when Redis answered the last shared-limit decision or probe; 0 while the local limiters decide.",
            )),
            shared_limits_fallbacks: counter(
                &r,
                "shared_limits_fallbacks_total",
                "Limit decisions settled by the local limiters because Redis was not usable, by reason (timeout, error, down).",
                &["reason"],
            ),
            shared_limits_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shared_limits_duration_seconds",
                        "Round trip of one shared-limit decision to Redis.",
                    )
                    .buckets(SHARED_BUCKETS.to_vec()),
                ),
            ),
            unchecked: counter(
                &r,
                "unchecked_total",
                "Calls MOR hash-checks that the gateway forwarded without its own check, by reason (hash_checking_off, unknown_method, undetermined).",
                &["reason"],
            ),
            would_refuse: counter(
                &r,
                "would_refuse_total",
                "Forwarded calls a layer set to report would have refused, by layer and reason.",
                &["layer", "reason"],
            ),
            mor_answers: counter(
                &r,
                "mor_answers_total",
                "Forwarded API calls by the gateway's side (verified, unchecked, would_refuse) and MOR's answer (served, or the class of MOR's error text), read from the answer's first 4 KiB.",
                &["gateway", "mor"],
            ),
            mor_disagreements: counter(
                &r,
                "mor_disagreements_total",
                "Forwarded API calls where the gateway and MOR disagree, by kind (would_break: a report-only layer would refuse a call MOR served; drift: MOR refused a verified call for its hash, key or API switch; mor_caught: the same for an unchecked call) and API method.",
                &["kind", "api_method"],
            ),
            // The directory's series are registered only while [directory]
            // is on (see `mirror_directory`).
            directory_users: static_metric(IntGauge::new(
                "directory_users",
                "Users in MOR's directory snapshot in force.",
            )),
            directory_owners: static_metric(IntGauge::new(
                "directory_owners",
                "Owners with API settings in MOR's directory snapshot in force.",
            )),
            directory_loaded: static_metric(Gauge::new(
                "directory_snapshot_timestamp_seconds",
                "Unix time the directory snapshot in force was read from MOR's database (0: never).",
            )),
            directory_age: static_metric(Gauge::new(
                "directory_snapshot_age_seconds",
                "Seconds since the directory snapshot in force was read (since start if never).",
            )),
            directory_interval: static_metric(Gauge::new(
                "directory_refresh_interval_seconds",
                "The configured directory refresh interval.",
            )),
            directory_refresh_seconds: static_metric(Gauge::new(
                "directory_refresh_duration_seconds",
                "How long the last directory refresh took (connect, both queries, building the snapshot).",
            )),
            directory_refreshes: static_metric(IntCounterVec::new(
                Opts::new(
                    "directory_refreshes_total",
                    "Directory refreshes from MOR's database by result (ok, failed).",
                ),
                &["result"],
            )),
            registry: r,
        };
        for k in Skipped::ALL {
            m.unchecked.with_label_values(&[k.label()]);
        }
        for g in Guard::ALL {
            for r in g.reasons() {
                m.would_refuse.with_label_values(&[g.label(), r.label()]);
            }
        }
        for g in Judged::ALL {
            for a in MorAnswer::ALL {
                m.mor_answers.with_label_values(&[g.label(), a.label()]);
            }
        }
        for d in Disagreement::ALL {
            m.mor_disagreements.with_label_values(&[d.label(), "other"]);
        }
        reg(&m.registry, Ok(ACCESS_LOG_DROPPED.clone()));
        reg(&m.registry, Ok(LOG_SUPPRESSED.clone()));
        for reason in ["queue_full", "write_error"] {
            ACCESS_LOG_DROPPED.with_label_values(&[reason]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_SHA])
            .set(1);
        for result in ["ok", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        m.last_reload_ok.set(1);
        for reason in CONNECTION_REFUSALS {
            m.connections_refused.with_label_values(&[reason]);
        }
        for reason in TLS_HANDSHAKE_FAILURES {
            m.tls_handshake_failures.with_label_values(&[reason]);
        }
        m
    }

    /// The configuration in force: its digest, and the expiry of its HTTPS
    /// certificate (`not_after`, a Unix time; None: no TLS listener, the
    /// series is not exported).
    pub fn config_in_force(&self, digest: &str, cert_expiry: Option<f64>) {
        self.config_info.reset();
        self.config_info.with_label_values(&[digest]).set(1);
        let c = Box::new(self.tls_cert_expiry.clone());
        match cert_expiry {
            Some(t) => {
                self.tls_cert_expiry.set(t);
                let _ = self.registry.register(c);
            }
            None => {
                let _ = self.registry.unregister(c);
            }
        }
    }

    /// Exports `shared_limits_up` while shared limits are on, and not at all
    /// when they are off (so its alert cannot fire for a single gateway).
    pub fn share_limits(&self, on: bool) {
        if on {
            // Already registered after a reload: nothing to do.
            let _ = self
                .registry
                .register(Box::new(self.shared_limits_up.clone()));
            for reason in ["timeout", "error", "down"] {
                self.shared_limits_fallbacks.with_label_values(&[reason]);
            }
        } else {
            let _ = self
                .registry
                .unregister(Box::new(self.shared_limits_up.clone()));
        }
    }

    /// Exports the directory's series while `[directory]` is on (with its
    /// refresh interval), and none of them when it is off.
    pub fn mirror_directory(&self, interval: Option<std::time::Duration>) {
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(self.directory_users.clone()),
            Box::new(self.directory_owners.clone()),
            Box::new(self.directory_loaded.clone()),
            Box::new(self.directory_age.clone()),
            Box::new(self.directory_interval.clone()),
            Box::new(self.directory_refresh_seconds.clone()),
            Box::new(self.directory_refreshes.clone()),
        ];
        for c in collectors {
            // Registering twice (a reload) or removing what is not there
            // changes nothing.
            let _ = match interval {
                Some(_) => self.registry.register(c),
                None => self.registry.unregister(c),
            };
        }
        if let Some(i) = interval {
            self.directory_interval.set(i.as_secs_f64());
            for result in ["ok", "failed"] {
                self.directory_refreshes.with_label_values(&[result]);
            }
        }
    }

    /// Pre-creates series for configured upstreams so they show from the start.
    pub fn register_upstreams(&self, upstreams: &[SocketAddr]) {
        for u in upstreams {
            let name = u.to_string();
            self.upstream_up.with_label_values(&[&name]).set(1);
            self.upstream_ejections.with_label_values(&[&name]);
            for kind in ["connect", "timeout", "other"] {
                self.upstream_errors.with_label_values(&[&name, kind]);
            }
        }
    }

    /// Pre-creates the main counter series at 0 for every catalogued method
    /// (and `other`), so that `rate()`/`increase()` see their first event.
    pub fn register_methods<'a>(&self, methods: impl Iterator<Item = &'a str>) {
        let mut names: Vec<&str> = methods.collect();
        names.push("other");
        for m in names {
            for http in ["GET", "POST"] {
                self.requests.with_label_values(&[m, http, "forwarded", ""]);
            }
            self.requests
                .with_label_values(&[m, "POST", "refused", Reason::BadHash.label()]);
            self.requests.with_label_values(&[
                m,
                "POST",
                "upstream_error",
                Reason::UpstreamError.label(),
            ]);
            self.hash_failures.with_label_values(&[m]);
            for d in Disagreement::ALL {
                self.mor_disagreements.with_label_values(&[d.label(), m]);
            }
        }
        for r in Reason::ALL {
            self.requests
                .with_label_values(&["other", "POST", r.outcome(), r.label()]);
        }
    }

    /// Records one finished request: the request counter and latency, the
    /// hash failure, the alias rewrite and every rate-limit layer's decision.
    /// The one place per-request metrics are emitted (but MOR's answer to a
    /// forwarded call: [`Metrics::observe_judgement`], by the forward).
    pub fn observe_request(
        &self,
        info: &CallInfo,
        http_method: &str,
        reason: Option<Reason>,
        skipped: Option<Skipped>,
        seconds: f64,
    ) {
        if let Some(k) = skipped {
            self.unchecked.with_label_values(&[k.label()]).inc();
        }
        if reason.is_none() {
            for (g, r) in info.would_refuse.iter() {
                self.would_refuse
                    .with_label_values(&[g.label(), r.label()])
                    .inc();
            }
        }
        let api_method = info.label();
        let (outcome, reason_label) = Reason::labels(reason);
        let http_method = match http_method {
            "GET" | "HEAD" | "POST" => http_method,
            _ => "other",
        };
        self.requests
            .with_label_values(&[api_method, http_method, outcome, reason_label])
            .inc();
        self.duration
            .with_label_values(&[api_method, outcome])
            .observe(seconds);
        match (reason, &info.alias) {
            (Some(Reason::BadHash), _) => self.hash_failures.with_label_values(&[api_method]).inc(),
            (None, Some(a)) => self.alias_rewrites.with_label_values(&[a]).inc(),
            _ => {}
        }
        for (layer, allowed) in info.limits.iter() {
            // The per-IP layer is checked before the method is known.
            let m = if layer == Layer::Ip {
                "all"
            } else {
                api_method
            };
            self.limit_decisions
                .with_label_values(&[
                    layer.label(),
                    m,
                    if allowed { "allowed" } else { "limited" },
                ])
                .inc();
        }
    }

    /// Records MOR's answer to one forwarded API call (by the forward, once
    /// the answer was relayed): the answer counter, and the disagreement by
    /// method.
    pub fn observe_judgement(&self, j: Judgement, api_method: &str) {
        self.mor_answers
            .with_label_values(&[j.gateway.label(), j.mor.label()])
            .inc();
        if let Some(d) = j.disagreement() {
            self.mor_disagreements
                .with_label_values(&[d.label(), api_method])
                .inc();
        }
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefix_and_outcomes() {
        let m = Metrics::new();
        let call = CallInfo {
            method: Some("user_details_get".into()),
            ..CallInfo::default()
        };
        m.observe_request(&call, "POST", None, Some(Skipped::Undetermined), 0.01);
        m.observe_request(
            &CallInfo::default(),
            "PUT",
            Some(Reason::MethodNotAllowed),
            None,
            0.001,
        );
        m.observe_request(&call, "POST", Some(Reason::BadHash), None, 0.001);
        m.mirror_directory(Some(std::time::Duration::from_secs(10)));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"mor_gateway_requests_total{api_method="user_details_get",http_method="POST",outcome="forwarded",reason=""} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"http_method="other",outcome="refused",reason="method_not_allowed""#)
        );
        assert!(
            text.contains(r#"mor_gateway_hash_failures_total{api_method="user_details_get"} 1"#)
        );
        assert!(text.contains("mor_gateway_build_info{"));
        assert!(text.contains(r#"mor_gateway_unchecked_total{reason="undetermined"} 1"#));
        assert!(text.contains("mor_gateway_directory_refresh_interval_seconds 10"));
        assert!(text.contains(r#"mor_gateway_access_log_dropped_total{reason="queue_full"}"#));
        assert!(text.contains("mor_gateway_log_suppressed_total "));
        // Process-wide counters are shared by every registry.
        assert!(String::from_utf8(Metrics::new().render())
            .unwrap()
            .contains("mor_gateway_log_suppressed_total "));
    }

    #[test]
    fn process_config_certificate_and_outcome_series() {
        let m = Metrics::new();
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            "mor_gateway_config_last_reload_successful 1",
            "\nprocess_open_fds ",
            "\nprocess_max_fds ",
            "\nprocess_resident_memory_bytes ",
            "\nprocess_start_time_seconds ",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("tls_certificate_expiry"));
        m.config_in_force("0123456789ab", Some(1.9e9));
        m.config_in_force("ba9876543210", Some(2e9));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"mor_gateway_config_info{digest="ba9876543210"} 1"#));
        assert!(
            !text.contains("0123456789ab"),
            "one digest: the one in force"
        );
        assert!(text.contains("mor_gateway_tls_certificate_expiry_timestamp_seconds 2000000000"));
        m.config_in_force("ba9876543210", None);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("tls_certificate_expiry"));
        let call = CallInfo::default();
        m.observe_request(&call, "POST", Some(Reason::BadHash), None, 0.001);
        m.observe_request(&call, "POST", None, None, 0.2);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"mor_gateway_request_duration_seconds_count{api_method="other",outcome="refused"} 1"#), "{text}");
        assert!(text.contains(r#"mor_gateway_request_duration_seconds_count{api_method="other",outcome="forwarded"} 1"#));
    }
}
