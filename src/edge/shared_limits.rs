//! Limits shared by several gateways through Redis (`[limits.shared]`).
//!
//! The core's limit questions ([`Question`]: the per-IP layer after
//! routing; the lockout, user, method and method+user layers after the
//! hash) are answered in one round trip each by a Lua script
//! (`shared_limits.lua`): GCRA buckets on Redis' clock, keys that expire by
//! themselves. The script knows no layer names: it counts the question's
//! steps in order and names the first refusing one by its position. The
//! per-IP layer stays local unless `per_ip = true`; a question with nothing
//! to ask costs no round trip. When Redis is slow or down the
//! same questions go to the local limiters (counted in
//! `shared_limits_fallbacks_total`, `shared_limits_up` = 0) and Redis is
//! tried again after `retry_interval`, or sooner when a housekeeping probe
//! finds it back.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha1::{Digest, Sha1};

use crate::config::SharedLimitSettings;
use crate::core::limits::{
    limited, locked_out, Allowance, Answer, Gate, Layer, LimitTrace, PairCheck, Question, Step,
};
use crate::core::reply::{Reason, Refusal};
use crate::edge::local_limits::Limits;
use crate::ops::metrics::Metrics;

const SCRIPT: &str = include_str!("shared_limits.lua");

/// Counts the pairs locked now (and forgets the expired ones).
const COUNT_LOCKS: &str = r"
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('ZCARD', KEYS[1])
";

/// Most lock keys one listing returns.
pub const MAX_LISTED: usize = 10_000;

/// Most `SCAN` steps one listing takes (each asks for 1000 keys).
pub const MAX_SCANS: usize = 1_000;

/// `s` with the glob characters of a `SCAN ... MATCH` pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Why a decision was settled locally (the `reason` label).
type Fallback = &'static str;

/// One step of a question and its bucket's key in Redis.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    step: Step,
    key: String,
}

/// The lockout's keys for one (IP, user) pair, the rule and the hash's
/// outcome.
struct PairKeys {
    /// Failure counter.
    fail: String,
    /// Lock.
    lock: String,
    /// The pair's name in the set of locked pairs.
    pair: String,
    check: PairCheck,
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

/// The Redis key of each step of `q`, in order.
fn buckets(prefix: &str, q: &Question<'_>) -> Vec<Bucket> {
    q.steps()
        .map(|step| {
            let key = match step.layer {
                Layer::Ip => format!("{prefix}q:ip|{}", q.ip),
                Layer::User => format!("{prefix}q:user|{}", part(q.pair_user())),
                Layer::Method => format!("{prefix}q:method|{}", q.method),
                Layer::MethodUser => {
                    format!("{prefix}q:mu|{}|{}", q.method, part(q.pair_user()))
                }
            };
            Bucket { step, key }
        })
        .collect()
}

/// The lockout's keys for `q`'s pair, when it asks the lockout.
fn pair_keys(prefix: &str, q: &Question<'_>) -> Option<PairKeys> {
    let check = q.lockout?;
    let pair = format!("{}|{}", q.ip, part(q.pair_user()));
    Some(PairKeys {
        fail: format!("{prefix}lo:f|{pair}"),
        lock: format!("{prefix}lo:l|{pair}"),
        pair,
        check,
    })
}

fn micros(d: i64) -> Duration {
    Duration::from_micros(u64::try_from(d).unwrap_or(0))
}

/// Reads the script's reply into the core's answer. None: a reply the
/// script never gives.
fn interpret(reply: &[i64], buckets: &[Bucket]) -> Option<Answer> {
    let mut trace = LimitTrace::default();
    let mut locked = false;
    let outcome = match reply {
        [1, retry_ms] => Err(locked_out(Duration::from_millis(
            u64::try_from(*retry_ms).unwrap_or(0),
        ))),
        [2, _] => Err(Refusal::new(Reason::BadHash)),
        [3, at, retry_us] => {
            let at = usize::try_from(*at).ok()?.checked_sub(1)?;
            let refused = buckets.get(at)?;
            for b in &buckets[..at] {
                trace.push(b.step.layer, true);
            }
            trace.push(refused.step.layer, false);
            Err(limited(micros(*retry_us)))
        }
        [0, lock, rest @ ..] if rest.len() == 2 * buckets.len() => {
            locked = *lock == 1;
            let mut best = None;
            for (b, pair) in buckets.iter().zip(rest.chunks_exact(2)) {
                // A reporting layer over its quota.
                if pair[0] < 0 {
                    trace.push(b.step.layer, false);
                    continue;
                }
                trace.push(b.step.layer, true);
                let limit = b.step.quota.burst.max(1);
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
            Ok(best)
        }
        _ => return None,
    };
    Some(Answer {
        outcome,
        trace,
        locked,
    })
}

/// Answers `q`: in Redis when limits are shared and Redis holds its
/// layers, else (and whenever Redis is not usable) by the local limiters.
pub async fn answer(shared: Option<&SharedLimits>, local: &Limits, q: &Question<'_>) -> Answer {
    match shared {
        // Boxed: the Redis exchange's state is carried only where limits
        // are shared, not by every call's future.
        Some(sh) => Box::pin(sh.answer(q, local)).await,
        None => local.answer(q),
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
        lockout: Option<&PairKeys>,
        buckets: &[Bucket],
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
        let (fail, lock, pair, lo) = match lockout {
            Some(k) => (
                k.fail.as_str(),
                k.lock.as_str(),
                k.pair.as_str(),
                Some(k.check),
            ),
            None => ("", "", "", None),
        };
        call.key(fail).key(lock).key(self.locks_key.as_str());
        for b in buckets {
            call.key(&b.key);
        }
        call.arg(match lo {
            None => 0,
            Some(p) if p.good => 1,
            Some(_) => 2,
        });
        match lo.map(|p| p.rule) {
            Some(lo) => call
                .arg(lo.failures)
                .arg(lo.window.as_millis().max(1) as u64)
                .arg(lo.cooloff.as_millis().max(1) as u64),
            None => call.arg(0).arg(0).arg(0),
        };
        call.arg(pair).arg(u8::from(lo.is_none_or(|p| p.enforce)));
        for b in buckets {
            call.arg(format!("{:.3}", 1e6 / b.step.quota.per_second))
                .arg(b.step.quota.burst.max(1))
                .arg(u8::from(b.step.enforce));
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

    /// Answers `q` in Redis, or by `local` when Redis is not usable or does
    /// not hold `q`'s layers (the per-IP layer without `per_ip = true`). A
    /// question with nothing to ask costs no round trip. The answer has
    /// the same shape either way.
    pub async fn answer(&self, q: &Question<'_>, local: &Limits) -> Answer {
        if q.is_empty() {
            return Answer::default();
        }
        if !self.cfg.per_ip && q.steps().any(|s| s.layer == Layer::Ip) {
            return local.answer(q);
        }
        let prefix = &self.cfg.key_prefix;
        let buckets = buckets(prefix, q);
        let lockout = pair_keys(prefix, q);
        let reply = match self.eval(lockout.as_ref(), &buckets).await {
            Ok(reply) => reply,
            Err(why) => {
                self.fallback(why);
                return local.answer(q);
            }
        };
        match interpret(&reply, &buckets) {
            Some(answer) => answer,
            None => {
                tracing::error!("shared limits: unexpected script reply {reply:?}");
                self.fallback("error");
                local.answer(q)
            }
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

    /// The (IP, user) pairs locked in Redis now, with the time each has
    /// left: the lock keys found by `SCAN ... MATCH` (never `KEYS`), at
    /// most [`MAX_LISTED`] of them and [`MAX_SCANS`] cursor steps; the pair
    /// as the key names it (the user part hashed when over 128 bytes).
    /// An error when Redis does not answer; the flag says a bound cut the
    /// listing short.
    pub async fn locked_pairs(&self) -> Result<(Vec<(String, String, Duration)>, bool), String> {
        let mut conn = self
            .connection(&self.probe_conn)
            .await
            .map_err(|e| e.to_string())?;
        let head = format!("{}lo:l|", self.cfg.key_prefix);
        let pattern = format!("{}*", glob_escape(&head));
        let wait = self.admin_timeout();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        let mut complete = false;
        for _ in 0..MAX_SCANS {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, found): (u64, Vec<String>) =
                tokio::time::timeout(wait, cmd.query_async(&mut conn))
                    .await
                    .map_err(|_| "Redis did not answer".to_string())?
                    .map_err(|e| e.to_string())?;
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                complete = true;
                break;
            }
            if keys.len() >= MAX_LISTED {
                break;
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let truncated = !complete || keys.len() > MAX_LISTED;
        keys.truncate(MAX_LISTED);
        if keys.is_empty() {
            return Ok((Vec::new(), truncated));
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("PTTL").arg(k);
        }
        let ttls: Vec<i64> = tokio::time::timeout(wait, pipe.query_async(&mut conn))
            .await
            .map_err(|_| "Redis did not answer".to_string())?
            .map_err(|e| e.to_string())?;
        let pairs = keys
            .iter()
            .zip(ttls)
            .filter(|(_, ttl)| *ttl > 0)
            .filter_map(|(k, ttl)| {
                let (ip, user) = k.strip_prefix(&head)?.split_once('|')?;
                Some((
                    ip.to_string(),
                    user.to_string(),
                    Duration::from_millis(ttl.unsigned_abs()),
                ))
            })
            .collect();
        Ok((pairs, truncated))
    }

    /// Unlocks the pair of `ip` (the lockout's key: an IPv6 address as its
    /// network, `key`) and `user` in Redis: its lock, its failure count and
    /// its entry in the set of locks, in one transaction. True when it was
    /// locked.
    pub async fn unlock(&self, ip: std::net::IpAddr, user: &str) -> Result<bool, String> {
        let mut conn = self
            .connection(&self.probe_conn)
            .await
            .map_err(|e| e.to_string())?;
        let prefix = &self.cfg.key_prefix;
        let pair = format!("{ip}|{}", part(user));
        let (locks, _, _): (i64, i64, i64) = tokio::time::timeout(
            self.admin_timeout(),
            redis::pipe()
                .atomic()
                .del(format!("{prefix}lo:l|{pair}"))
                .del(format!("{prefix}lo:f|{pair}"))
                .zrem(self.locks_key.as_str(), &pair)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| "Redis did not answer".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(locks > 0)
    }

    /// An admin request's wait for Redis: the decision timeout, at least 2 s.
    fn admin_timeout(&self) -> Duration {
        self.cfg.timeout.max(Duration::from_secs(2))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::layers::Modes;
    use crate::core::limits::{HashCheck, LimitSettings, QuotaSpec};
    use std::collections::HashMap;

    fn q(per_second: f64, burst: u32) -> QuotaSpec {
        QuotaSpec { per_second, burst }
    }

    fn settings() -> LimitSettings {
        LimitSettings {
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            per_ip: Some(q(1.0, 3)),
            per_user: Some(q(1.0, 5)),
            per_method: HashMap::from([("user_details_get".to_string(), q(10.0, 50))]),
            per_method_user: HashMap::from([("user_details_get".to_string(), q(1.0, 2))]),
            ..LimitSettings::default()
        }
    }

    fn call<'a>(user: Option<&'a str>, method: &'a str) -> Question<'a> {
        let ip = "192.0.2.1".parse().unwrap();
        settings().call_question(ip, user, method, HashCheck::Good, Modes::ENFORCE)
    }

    #[test]
    fn a_key_prefix_is_matched_literally() {
        assert_eq!(glob_escape("gw:lo:l|"), "gw:lo:l|");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn keys_in_the_plan_s_order_and_bounded() {
        let b = buckets("p:", &call(Some("john"), "user_details_get"));
        let names: Vec<_> = b.iter().map(|b| (b.step.layer, b.key.as_str())).collect();
        assert_eq!(
            names,
            [
                (Layer::User, "p:q:user|john"),
                (Layer::Method, "p:q:method|user_details_get"),
                (Layer::MethodUser, "p:q:mu|user_details_get|john")
            ]
        );
        let long = "x".repeat(10_000);
        let b = buckets("p:", &call(Some(&long), "other"));
        assert_eq!(b.len(), 1);
        assert!(b[0].key.len() < 60, "{}", b[0].key);
        assert_eq!(buckets("p:", &call(None, "user_details_get")).len(), 1);
        let ip = settings().ip_question("2001:db8:1:2::7".parse().unwrap(), Modes::ENFORCE);
        assert_eq!(
            buckets("p:", &ip)
                .iter()
                .map(|b| b.key.as_str())
                .collect::<Vec<_>>(),
            ["p:q:ip|2001:db8:1:2::"]
        );
    }

    #[test]
    fn replies_become_the_cores_answers() {
        let b = buckets("p:", &call(Some("john"), "user_details_get"));
        let a = interpret(&[0, 0, 4, 1_000_000, 49, 100_000, 0, 2_000_000], &b).unwrap();
        let allowed = a.outcome.unwrap().unwrap();
        assert_eq!((allowed.limit, allowed.remaining), (2, 0));
        assert_eq!(allowed.reset, Duration::from_secs(2));
        assert_eq!(a.trace.iter().filter(|(_, ok)| *ok).count(), 3);
        assert!(!a.locked);

        // A reporting layer over its quota, a locked pair that reports.
        let a = interpret(&[0, 1, 4, 1_000_000, -1, 300, 1, 2_000_000], &b).unwrap();
        let allowed = a.outcome.unwrap().unwrap();
        assert_eq!(
            allowed.remaining, 1,
            "the reporting layer gives no allowance"
        );
        assert_eq!(
            a.trace.iter().collect::<Vec<_>>(),
            [
                (Layer::User, true),
                (Layer::Method, false),
                (Layer::MethodUser, true)
            ]
        );
        assert!(a.locked);

        let a = interpret(&[3, 2, 250_000], &b).unwrap();
        let r = a.outcome.unwrap_err();
        assert_eq!(r.reason, Reason::Limited);
        assert_eq!(r.retry_after, Some(Duration::from_millis(250)));
        assert_eq!(
            a.trace.iter().collect::<Vec<_>>(),
            [(Layer::User, true), (Layer::Method, false)]
        );

        let r = interpret(&[1, 1500], &b).unwrap().outcome.unwrap_err();
        assert_eq!(r.reason, Reason::LockedOut);
        assert_eq!(r.retry_after, Some(Duration::from_millis(1500)));
        let r = interpret(&[2, 0], &b).unwrap().outcome.unwrap_err();
        assert_eq!(r.reason, Reason::BadHash);

        for bad in [&[][..], &[0, 0, 1], &[2], &[3, 4, 1], &[3, 0, 1], &[9]] {
            assert!(interpret(bad, &b).is_none(), "{bad:?}");
        }
    }
}
