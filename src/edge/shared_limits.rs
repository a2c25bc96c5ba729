//! Limits shared by several gateways through Redis (`[limits.shared]`).
//!
//! The user, method and method+user quotas and the failed-hash lockout of a
//! call are decided in one round trip by a Lua script (`shared_limits.lua`):
//! GCRA buckets on Redis' clock, keys that expire by themselves. The per-IP
//! layer stays local unless `per_ip = true`. When Redis is slow or down the
//! same questions go to the local limiters (counted in
//! `shared_limits_fallbacks_total`, `shared_limits_up` = 0) and Redis is
//! tried again after `retry_interval`, or sooner when a housekeeping probe
//! finds it back.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha1::{Digest, Sha1};

use crate::config::SharedLimitSettings;
use crate::core::decision::{HashCheck, Pending, Verdict};
use crate::core::limits::{
    limited, locked_out, Allowance, Gate, LimitSettings, LimitTrace, Limits, Lockout, QuotaSpec,
};
use crate::core::reply::{Reason, Refusal};
use crate::ops::metrics::Metrics;

const SCRIPT: &str = include_str!("shared_limits.lua");

/// Counts the pairs locked now (and forgets the expired ones).
const COUNT_LOCKS: &str = r"
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('ZCARD', KEYS[1])
";

/// Why a decision was settled locally (the `reason` label).
type Fallback = &'static str;

/// One quota a call is counted against in Redis.
#[derive(Debug, Clone, PartialEq)]
struct Layer {
    name: &'static str,
    key: String,
    quota: QuotaSpec,
}

/// The lockout's keys for one (IP, user) pair, and the rule.
struct PairKeys {
    /// Failure counter.
    fail: String,
    /// Lock.
    lock: String,
    /// The pair's name in the set of locked pairs.
    pair: String,
    rule: Lockout,
}

/// The Redis side of the limits; one per configuration in force.
pub struct SharedLimits {
    cfg: SharedLimitSettings,
    script: redis::Script,
    count_locks: redis::Script,
    /// The sorted set of locked pairs.
    locks_key: String,
    /// For decisions: made by the first request, so that its driver task
    /// runs on the proxy's runtime (no hand-off to another thread per call).
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// For housekeeping probes and the lockout count at scrape time.
    probe_conn: tokio::sync::OnceCell<ConnectionManager>,
    epoch: Instant,
    /// Decisions stay local until this many ms after `epoch`.
    down_until_ms: AtomicU64,
    /// What was last logged: 0 nothing yet, 1 up, 2 down.
    logged: AtomicU8,
    metrics: Arc<Metrics>,
}

/// A key part from client-controlled text: itself when short, else its SHA1
/// (keys stay bounded whatever a caller sends as `u`).
fn part(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= 128 {
        s.into()
    } else {
        format!("#{}", hex::encode(Sha1::digest(s.as_bytes()))).into()
    }
}

/// The quota layers a call counts against, in the local limiters' order:
/// user, method, method+user (none for an exempt source).
fn layers(
    prefix: &str,
    l: &LimitSettings,
    ip: IpAddr,
    user: Option<&str>,
    method: &str,
) -> Vec<Layer> {
    let mut out = Vec::new();
    if l.is_exempt(ip) {
        return out;
    }
    if let (Some(q), Some(u)) = (l.per_user, user) {
        out.push(Layer {
            name: "user",
            key: format!("{prefix}q:user|{}", part(u)),
            quota: q,
        });
    }
    if let Some(q) = l.per_method.get(method) {
        out.push(Layer {
            name: "method",
            key: format!("{prefix}q:method|{method}"),
            quota: *q,
        });
    }
    if let (Some(q), Some(u)) = (l.per_method_user.get(method), user) {
        out.push(Layer {
            name: "method_user",
            key: format!("{prefix}q:mu|{method}|{}", part(u)),
            quota: *q,
        });
    }
    out
}

fn micros(d: i64) -> Duration {
    Duration::from_micros(u64::try_from(d).unwrap_or(0))
}

/// Reads the script's reply into the answer the core expects, recording
/// the layers that decided in `trace`. None: a reply the script never gives.
fn interpret(
    reply: &[i64],
    layers: &[Layer],
    trace: &mut LimitTrace,
) -> Option<Result<Option<Allowance>, Refusal>> {
    match reply {
        [1, retry_ms] => Some(Err(locked_out(Duration::from_millis(
            u64::try_from(*retry_ms).unwrap_or(0),
        )))),
        [2] => Some(Err(Refusal::new(Reason::BadHash))),
        [3, at, retry_us] => {
            let at = usize::try_from(*at).ok()?.checked_sub(1)?;
            let layer = layers.get(at)?;
            for l in &layers[..at] {
                trace.push(l.name, true);
            }
            trace.push(layer.name, false);
            Some(Err(limited(layer.name, micros(*retry_us))))
        }
        [0, rest @ ..] if rest.len() == 2 * layers.len() => {
            let mut best = None;
            for (l, pair) in layers.iter().zip(rest.chunks_exact(2)) {
                trace.push(l.name, true);
                let limit = l.quota.burst.max(1);
                let remaining = u32::try_from(pair[0].max(0)).unwrap_or(u32::MAX).min(limit);
                best = Allowance::tighter(
                    best,
                    Some(Allowance {
                        limit,
                        remaining,
                        reset: micros(pair[1]),
                    }),
                );
            }
            Some(Ok(best))
        }
        _ => None,
    }
}

impl SharedLimits {
    /// Prepares the Redis side; nothing connects until the first decision.
    /// The gauge keeps its value across a reload (an outage stays one
    /// outage for the alert); the first probe or decision sets it.
    pub fn new(cfg: SharedLimitSettings, metrics: Arc<Metrics>) -> SharedLimits {
        let logged = u8::from(metrics.shared_limits_up.get() == 1);
        SharedLimits {
            script: redis::Script::new(SCRIPT),
            count_locks: redis::Script::new(COUNT_LOCKS),
            locks_key: format!("{}lo:active", cfg.key_prefix),
            cfg,
            conn: tokio::sync::OnceCell::new(),
            probe_conn: tokio::sync::OnceCell::new(),
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            logged: AtomicU8::new(logged),
            metrics,
        }
    }

    /// Whether the per-IP layer is decided here too.
    pub fn per_ip(&self) -> bool {
        self.cfg.per_ip
    }

    /// How long decisions stay local after a failure (also the probe period).
    pub fn retry_interval(&self) -> Duration {
        self.cfg.retry_interval
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark(&self, up: bool, why: &str) {
        self.metrics.shared_limits_up.set(i64::from(up));
        if up {
            self.down_until_ms.store(0, Ordering::Release);
        } else {
            let until = self.now_ms().saturating_add(
                u64::try_from(self.cfg.retry_interval.as_millis()).unwrap_or(u64::MAX),
            );
            self.down_until_ms.store(until, Ordering::Release);
        }
        let state = if up { 1 } else { 2 };
        if self.logged.swap(state, Ordering::AcqRel) != state {
            if up {
                tracing::info!(
                    "shared limits: Redis at {} answers; the limits are shared",
                    self.cfg.url
                );
            } else {
                tracing::warn!(
                    "shared limits: Redis at {} not usable ({why}); the local limiters decide, retry in {:?}",
                    self.cfg.url,
                    self.cfg.retry_interval
                );
            }
        }
    }

    async fn connection(
        &self,
        cell: &tokio::sync::OnceCell<ConnectionManager>,
    ) -> Result<ConnectionManager, redis::RedisError> {
        cell.get_or_try_init(|| async {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.cfg.timeout))
                .set_response_timeout(Some(self.cfg.timeout))
                .set_number_of_retries(1)
                .set_max_delay(self.cfg.retry_interval);
            ConnectionManager::new_lazy_with_config(self.cfg.client.clone(), config)
        })
        .await
        .cloned()
    }

    /// Runs the script, within the timeout; a failure marks Redis down.
    async fn eval(
        &self,
        hash: HashCheck,
        lockout: Option<PairKeys>,
        layers: &[Layer],
    ) -> Result<Vec<i64>, Fallback> {
        if self.now_ms() < self.down_until_ms.load(Ordering::Acquire) {
            return Err("down");
        }
        let mut conn = match self.connection(&self.conn).await {
            Ok(c) => c,
            Err(e) => {
                self.mark(false, &e.to_string());
                return Err("error");
            }
        };
        let mut call = self.script.prepare_invoke();
        let (fail, lock, pair, lo) = match &lockout {
            Some(k) => (
                k.fail.as_str(),
                k.lock.as_str(),
                k.pair.as_str(),
                Some(k.rule),
            ),
            None => ("", "", "", None),
        };
        call.key(fail).key(lock).key(self.locks_key.as_str());
        for l in layers {
            call.key(&l.key);
        }
        call.arg(match hash {
            HashCheck::Skipped => 0,
            HashCheck::Good => 1,
            HashCheck::Bad => 2,
        });
        match lo {
            Some(lo) => call
                .arg(lo.failures)
                .arg(lo.window.as_millis().max(1) as u64)
                .arg(lo.cooloff.as_millis().max(1) as u64),
            None => call.arg(0).arg(0).arg(0),
        };
        call.arg(pair);
        for l in layers {
            call.arg(format!("{:.3}", 1e6 / l.quota.per_second))
                .arg(l.quota.burst.max(1));
        }
        let start = Instant::now();
        let r =
            tokio::time::timeout(self.cfg.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await;
        self.metrics
            .shared_limits_duration
            .observe(start.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => {
                self.mark(true, "");
                Ok(v)
            }
            // The client's own response timeout is ours too.
            Ok(Err(e)) if e.is_timeout() => {
                self.mark(false, "timed out");
                Err("timeout")
            }
            Ok(Err(e)) => {
                self.mark(false, &e.to_string());
                Err("error")
            }
            Err(_) => {
                self.mark(false, "timed out");
                Err("timeout")
            }
        }
    }

    fn fallback(&self, why: Fallback) {
        self.metrics
            .shared_limits_fallbacks
            .with_label_values(&[why])
            .inc();
    }

    /// Settles a verified call: in Redis, or by `local` when Redis is not
    /// usable. The answer has the same shape either way.
    pub async fn settle(&self, p: Pending, local: &Limits) -> Verdict {
        let settings = local.settings();
        let prefix = &self.cfg.key_prefix;
        let layers = layers(prefix, settings, p.ip(), p.user(), p.method());
        let lockout = match (settings.lockout, p.hash()) {
            (Some(lo), HashCheck::Good | HashCheck::Bad) => {
                let pair = format!("{}|{}", settings.key(p.ip()), part(p.user().unwrap_or("")));
                Some(PairKeys {
                    fail: format!("{prefix}lo:f|{pair}"),
                    lock: format!("{prefix}lo:l|{pair}"),
                    pair,
                    rule: lo,
                })
            }
            _ => None,
        };
        if layers.is_empty() && lockout.is_none() {
            // Nothing shared to decide (an exempt source, no quota).
            return p.settle(local);
        }
        let mut trace = p.trace();
        match self.decide(p.hash(), lockout, &layers, &mut trace).await {
            Some(answer) => p.conclude(answer, trace),
            None => p.settle(local),
        }
    }

    /// Redis' answer, the layers that decided recorded in `trace`; None
    /// (counted, `trace` untouched) when the local limiters must decide.
    async fn decide(
        &self,
        hash: HashCheck,
        lockout: Option<PairKeys>,
        layers: &[Layer],
        trace: &mut LimitTrace,
    ) -> Option<Result<Option<Allowance>, Refusal>> {
        let reply = match self.eval(hash, lockout, layers).await {
            Ok(reply) => reply,
            Err(why) => {
                self.fallback(why);
                return None;
            }
        };
        let answer = interpret(&reply, layers, trace);
        if answer.is_none() {
            tracing::error!("shared limits: unexpected script reply {reply:?}");
            self.fallback("error");
        }
        answer
    }

    /// The per-IP layer in Redis (when `per_ip = true`), or by `local` when
    /// Redis is not usable.
    pub async fn check_ip(
        &self,
        ip: IpAddr,
        local: &Limits,
        trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        let settings = local.settings();
        let Some(q) = settings.per_ip.filter(|_| !settings.is_exempt(ip)) else {
            return Ok(None);
        };
        let layer = [Layer {
            name: "ip",
            key: format!("{}q:ip|{}", self.cfg.key_prefix, settings.key(ip)),
            quota: q,
        }];
        match self.decide(HashCheck::Skipped, None, &layer, trace).await {
            Some(answer) => answer,
            None => local.check_ip(ip, trace),
        }
    }

    /// (IP, user) pairs locked out now across the gateways; None when Redis
    /// does not answer (the caller shows the local count).
    pub async fn active_lockouts(&self) -> Option<usize> {
        let mut conn = self.connection(&self.probe_conn).await.ok()?;
        let mut call = self.count_locks.prepare_invoke();
        call.key(self.locks_key.as_str());
        let n = tokio::time::timeout(self.cfg.timeout, call.invoke_async::<i64>(&mut conn))
            .await
            .ok()?
            .ok()?;
        usize::try_from(n).ok()
    }

    /// Pings Redis (housekeeping): marks it up again as soon as it answers.
    pub async fn probe(&self) {
        let Ok(mut conn) = self.connection(&self.probe_conn).await else {
            return;
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.cfg.timeout.max(Duration::from_millis(200)), ping).await {
            Ok(Ok(_)) => self.mark(true, ""),
            Ok(Err(e)) => self.mark(false, &e.to_string()),
            Err(_) => self.mark(false, "timed out"),
        }
    }
}

/// A [`Gate`] whose per-IP answer was decided beforehand (in Redis); the
/// other layers are not asked of it (the first stage only asks per IP).
pub struct DecidedIp(pub Result<Option<Allowance>, Refusal>, pub LimitTrace);

impl Gate for DecidedIp {
    fn check_ip(&self, _: IpAddr, trace: &mut LimitTrace) -> Result<Option<Allowance>, Refusal> {
        for (layer, ok) in self.1.iter() {
            trace.push(layer, ok);
        }
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn q(per_second: f64, burst: u32) -> QuotaSpec {
        QuotaSpec { per_second, burst }
    }

    fn settings() -> LimitSettings {
        LimitSettings {
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            per_user: Some(q(1.0, 5)),
            per_method: HashMap::from([("user_details_get".to_string(), q(10.0, 50))]),
            per_method_user: HashMap::from([("user_details_get".to_string(), q(1.0, 2))]),
            ..LimitSettings::default()
        }
    }

    #[test]
    fn layers_in_local_order_with_bounded_keys() {
        let ip = "192.0.2.1".parse().unwrap();
        let l = layers("p:", &settings(), ip, Some("john"), "user_details_get");
        let names: Vec<_> = l.iter().map(|l| (l.name, l.key.as_str())).collect();
        assert_eq!(
            names,
            [
                ("user", "p:q:user|john"),
                ("method", "p:q:method|user_details_get"),
                ("method_user", "p:q:mu|user_details_get|john")
            ]
        );
        let long = "x".repeat(10_000);
        let l = layers("p:", &settings(), ip, Some(&long), "other");
        assert_eq!(l.len(), 1);
        assert!(l[0].key.len() < 60, "{}", l[0].key);
        assert!(layers(
            "p:",
            &settings(),
            "10.1.2.3".parse().unwrap(),
            Some("john"),
            "x"
        )
        .is_empty());
        assert_eq!(
            layers("p:", &settings(), ip, None, "user_details_get").len(),
            1
        );
    }

    #[test]
    fn replies_become_the_cores_answers() {
        let ip = "192.0.2.1".parse().unwrap();
        let l = layers("p:", &settings(), ip, Some("john"), "user_details_get");
        let mut t = LimitTrace::default();
        let a = interpret(&[0, 4, 1_000_000, 49, 100_000, 0, 2_000_000], &l, &mut t)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((a.limit, a.remaining), (2, 0));
        assert_eq!(a.reset, Duration::from_secs(2));
        assert_eq!(t.iter().filter(|(_, ok)| *ok).count(), 3);

        let mut t = LimitTrace::default();
        let r = interpret(&[3, 2, 250_000], &l, &mut t)
            .unwrap()
            .unwrap_err();
        assert_eq!(r.reason, Reason::Limited);
        assert_eq!(r.layer, Some("method"));
        assert_eq!(r.retry_after, Some(Duration::from_millis(250)));
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            [("user", true), ("method", false)]
        );

        let r = interpret(&[1, 1500], &l, &mut LimitTrace::default())
            .unwrap()
            .unwrap_err();
        assert_eq!(r.reason, Reason::LockedOut);
        assert_eq!(r.retry_after, Some(Duration::from_millis(1500)));
        let r = interpret(&[2], &l, &mut LimitTrace::default())
            .unwrap()
            .unwrap_err();
        assert_eq!(r.reason, Reason::BadHash);

        for bad in [&[][..], &[0, 1], &[3, 4, 1], &[3, 0, 1], &[9]] {
            assert!(
                interpret(bad, &l, &mut LimitTrace::default()).is_none(),
                "{bad:?}"
            );
        }
    }
}
