//! The process's own log on stderr: the level from `MOR_GATEWAY_LOG`
//! (`tracing_subscriber::EnvFilter` syntax), colour only when stderr is a
//! terminal (never in files or journald), no timestamp of its own when
//! stderr is the journal (journald stamps each line), and pingora's expected
//! connection-pool races kept out.
//!
//! pingora logs through the `log` crate; tracing-subscriber's `try_init`
//! installs tracing-log's `LogTracer`, which turns each record into an event
//! of target `log` with the real target in its `log.target` field. The
//! [`PoolNoise`] layer reads that field and the message and drops exactly the
//! lines listed in [`NOISE`] (connection-pool races, upgrade hand-off
//! retries), counting them in
//! `mor_gateway_log_suppressed_total`.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::ops::metrics::LOG_SUPPRESSED;

/// The environment variable holding the log filter.
pub const ENV: &str = "MOR_GATEWAY_LOG";

/// The filter when `MOR_GATEWAY_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "warn,mor_gateway=info";

/// How the upstream probe names a server to pingora-load-balancing, whose
/// own flip line (with the probe's error) is then dropped.
pub const LB_FLIP_PREFIX: &str = "probe of MOR server ";

/// pingora lines that healthy operation produces, as (target prefix,
/// message prefix):
/// - races of its upstream connection pool that end in a new connection,
///   not in an error: an idle connection taken while its idle watcher still
///   holds it; the pool's LRU evicting a connection its group already
///   dropped (calls use the gateway's own pool, `edge::pool`; pingora's
///   still holds the health probes' connections);
/// - the load balancer's line on a health flip, said again in words by
///   the probe;
/// - the retries of a zero-downtime upgrade while the old and the new
///   process find each other (a hand-off that fails for good is still
///   logged: "Bootstrap failed", "Max retry ... reached").
pub const NOISE: &[(&str, &str)] = &[
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
    ),
    ("pingora_pool", "Fail to get pool node"),
    (
        "pingora_core::server::transfer_fd",
        "No incoming socket transfer, sleep",
    ),
    (
        "pingora_core::server::transfer_fd",
        "server not ready, will try again",
    ),
    // The load balancer's own line on a health flip (a Debug dump of the
    // server): edge/upstreams.rs logs each flip as one line in words.
    ("pingora_load_balancing", LB_FLIP_PREFIX),
];

/// True when a line of `target` saying `message` is expected noise.
pub fn is_noise(target: &str, message: &str) -> bool {
    NOISE
        .iter()
        .any(|(t, m)| target.starts_with(t) && message.starts_with(m))
}

/// Drops the [`NOISE`] lines (warn and error level only) before any layer
/// formats them.
pub struct PoolNoise;

#[derive(Default)]
struct Fields {
    target: Option<String>,
    message: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.target = Some(value.to_string()),
            "message" => self.message = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "log.target" => self.target = Some(format!("{value:?}")),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for PoolNoise {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // More verbose than WARN: not an alarm, keep.
        if *meta.level() > Level::WARN {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let target = f.target.as_deref().unwrap_or(meta.target());
        if is_noise(target, f.message.as_deref().unwrap_or("")) {
            LOG_SUPPRESSED.inc();
            return false;
        }
        true
    }
}

/// True when stderr should carry ANSI colour: a terminal, and `NO_COLOR`
/// unset.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// True when stderr is the journal: systemd sets `JOURNAL_STREAM` to the
/// `device:inode` of the stream it connected (a child whose stderr was
/// redirected elsewhere inherits the variable, so the two are compared).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}

/// Installs the stderr logger (once; later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter).with(PoolNoise);
    let _ = if stderr_is_journal() {
        registry.with(fmt.without_time()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_exactly_the_listed_lines() {
        assert!(is_noise(
            "pingora_core::connectors",
            "failed to acquire reusable stream"
        ));
        assert!(is_noise(
            "pingora_pool::connection",
            "Fail to get pool node for ConnectionMeta { key: 1, id: 2 }"
        ));
        assert!(!is_noise("pingora_core::connectors", "connect timeout"));
        assert!(!is_noise(
            "pingora_proxy",
            "failed to acquire reusable stream"
        ));
        assert!(!is_noise("mor_gateway::server", "reload refused"));
        assert!(is_noise(
            "pingora_core::server::transfer_fd",
            "No incoming socket transfer, sleep 1s and try again"
        ));
        assert!(!is_noise(
            "pingora_core::server::transfer_fd",
            "Max retry: 5 reached. Giving up sending socket to: /tmp/x"
        ));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(std::ffi::OsStr::new("1"))));
        assert!(colour(true, Some(std::ffi::OsStr::new(""))));
    }
}
