//! The local limiters: the [`Gate`] of governor's GCRA buckets and a
//! failed-hash table, in this process. Asked directly when limits are not
//! shared, and when Redis is not usable ([`super::shared_limits`]).
//!
//! Keyed state is bounded: each keyed limiter tracks at most
//! `max_tracked_keys` keys; a key first seen while the store is full shares
//! one overflow bucket (same quota) with every other such key until the
//! periodic [`Limits::sweep`] frees room. Keys already tracked keep their own
//! buckets, so a flood of new keys cannot reset or evict real users.
//! A poisoned failure table (a panic while it was held) fails open: the
//! lockout stops applying, the rate layers still do, and it is logged once.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, RateLimiter, StateStore};
use governor::Quota;

use crate::core::limits::{
    limited, locked_out, Allowance, Answer, Gate, Layer, LimitSettings, LimitTrace, Lockout,
    Question, QuotaSpec,
};
use crate::core::reply::Refusal;

/// A governor state store with a hard cap on tracked keys (see module docs).
pub struct CappedStore<K: Hash + Eq + Clone> {
    map: DashMapStateStore<K>,
    overflow: InMemoryState,
    cap: usize,
}

impl<K: Hash + Eq + Clone> CappedStore<K> {
    fn new(cap: usize) -> Self {
        CappedStore {
            map: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            cap,
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for CappedStore<K> {
    type Key = K;
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.map.len() >= self.cap && !self.map.contains_key(key) {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for CappedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
    }
    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Keyed<K> = RateLimiter<K, CappedStore<K>, DefaultClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A governor quota from the config's rate and burst.
pub fn quota(q: &QuotaSpec) -> Quota {
    let period = Duration::from_secs_f64(1.0 / q.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

fn keyed<K: Hash + Eq + Clone>(q: &QuotaSpec, cap: usize) -> Keyed<K> {
    RateLimiter::<K, CappedStore<K>, DefaultClock, StateInformationMiddleware>::new(
        quota(q),
        CappedStore::new(cap),
        DefaultClock::default(),
    )
}

fn direct(q: &QuotaSpec) -> Direct {
    RateLimiter::direct(quota(q)).with_middleware::<StateInformationMiddleware>()
}

#[derive(Debug)]
struct FailState {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Live limiter state built from [`LimitSettings`].
pub struct Limits {
    settings: LimitSettings,
    clock: DefaultClock,
    ip: Option<Arc<Keyed<IpAddr>>>,
    user: Option<Arc<Keyed<String>>>,
    method: HashMap<String, Arc<Direct>>,
    method_user: HashMap<String, Arc<Keyed<String>>>,
    fails: Arc<Mutex<HashMap<(IpAddr, String), FailState>>>,
    /// Set once a poisoned failure table was logged.
    poisoned: Arc<AtomicBool>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("settings", &self.settings)
            .finish()
    }
}

fn snapshot_allowance(s: &governor::middleware::StateSnapshot) -> Allowance {
    let q = s.quota();
    let limit = q.burst_size().get();
    let remaining = s.remaining_burst_capacity();
    Allowance {
        limit,
        remaining,
        reset: q.replenish_interval() * (limit - remaining.min(limit)),
    }
}

impl Limits {
    /// Builds limiters for `settings`.
    pub fn new(settings: &LimitSettings) -> Limits {
        let cap = settings.max_tracked_keys;
        Limits {
            settings: settings.clone(),
            clock: DefaultClock::default(),
            ip: settings.per_ip.as_ref().map(|q| Arc::new(keyed(q, cap))),
            user: settings.per_user.as_ref().map(|q| Arc::new(keyed(q, cap))),
            method: settings
                .per_method
                .iter()
                .map(|(m, q)| (m.clone(), Arc::new(direct(q))))
                .collect(),
            method_user: settings
                .per_method_user
                .iter()
                .map(|(m, q)| (m.clone(), Arc::new(keyed(q, cap))))
                .collect(),
            fails: Arc::new(Mutex::new(HashMap::new())),
            poisoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Builds limiters for new settings, keeping the buckets of every layer
    /// whose quota did not change (config reload).
    pub fn reconfigure(&self, settings: &LimitSettings) -> Limits {
        let mut next = Limits::new(settings);
        let old = &self.settings;
        let same_cap = old.max_tracked_keys == settings.max_tracked_keys;
        if old.per_ip == settings.per_ip && same_cap {
            next.ip.clone_from(&self.ip);
        }
        if old.per_user == settings.per_user && same_cap {
            next.user.clone_from(&self.user);
        }
        for (m, lim) in next.method.iter_mut() {
            if let (true, Some(kept)) = (
                old.per_method.get(m) == settings.per_method.get(m),
                self.method.get(m),
            ) {
                *lim = Arc::clone(kept);
            }
        }
        for (m, lim) in next.method_user.iter_mut() {
            if let (true, Some(kept)) = (
                old.per_method_user.get(m) == settings.per_method_user.get(m) && same_cap,
                self.method_user.get(m),
            ) {
                *lim = Arc::clone(kept);
            }
        }
        if old.lockout == settings.lockout {
            next.fails = Arc::clone(&self.fails);
            next.poisoned = Arc::clone(&self.poisoned);
        }
        next
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    fn refusal(&self, nu: &governor::NotUntil<governor::clock::QuantaInstant>) -> Refusal {
        limited(nu.wait_time_from(self.clock.now()))
    }

    fn check_keyed<K: Hash + Eq + Clone>(
        &self,
        lim: &Keyed<K>,
        key: &K,
        layer: Layer,
        trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        let checked = lim.check_key(key);
        trace.push(layer, checked.is_ok());
        match checked {
            Ok(s) => Ok(Some(snapshot_allowance(&s))),
            Err(nu) => Err(self.refusal(&nu)),
        }
    }

    fn check_direct(
        &self,
        lim: &Direct,
        layer: Layer,
        trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        let checked = lim.check();
        trace.push(layer, checked.is_ok());
        match checked {
            Ok(s) => Ok(Some(snapshot_allowance(&s))),
            Err(nu) => Err(self.refusal(&nu)),
        }
    }

    /// The failure table; None (fail open, logged once) when a panic
    /// poisoned it.
    fn fails(&self) -> Option<MutexGuard<'_, HashMap<(IpAddr, String), FailState>>> {
        match self.fails.lock() {
            Ok(f) => Some(f),
            Err(_) => {
                if !self.poisoned.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        "limits: the failed-hash table is poisoned (a panic while it was held); the lockout no longer applies until a restart"
                    );
                }
                None
            }
        }
    }

    /// Whether the failure table was found poisoned (the lockout fails open).
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Drops idle keys and expired lockouts and returns memory; call periodically.
    pub fn sweep(&self) {
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in self.method_user.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        if let (Some(lo), Some(mut fails)) = (self.settings.lockout, self.fails()) {
            fails.retain(|_, f| {
                f.locked_until.is_some_and(|t| t > now)
                    || now.duration_since(f.window_start) < lo.window
            });
            fails.shrink_to_fit();
        }
    }

    /// How many (IP, user) pairs are locked out now.
    pub fn active_lockouts(&self) -> usize {
        let now = Instant::now();
        self.fails().map_or(0, |f| {
            f.values()
                .filter(|f| f.locked_until.is_some_and(|t| t > now))
                .count()
        })
    }

    /// The (IP, user) pairs locked out now, with the time each has left
    /// (IPv6 addresses as their network, the lockout's key).
    pub fn locked_pairs(&self) -> Vec<(IpAddr, String, Duration)> {
        let now = Instant::now();
        let mut v: Vec<_> = self.fails().map_or_else(Vec::new, |f| {
            f.iter()
                .filter_map(|((ip, user), f)| {
                    let until = f.locked_until.filter(|t| *t > now)?;
                    Some((*ip, user.clone(), until - now))
                })
                .collect()
        });
        v.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        v
    }

    /// Forgets the pair of `ip` (taken as the lockout's key: an IPv6
    /// address as its network) and `user`: its lock and its failure count.
    /// True when it was locked.
    pub fn unlock(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        let key = (self.settings.key(ip), user.to_string());
        self.fails()
            .and_then(|mut f| f.remove(&key))
            .is_some_and(|f| f.locked_until.is_some_and(|t| t > now))
    }

    /// Keys tracked across keyed limiters and the lockout table.
    pub fn tracked_keys(&self) -> usize {
        self.ip.as_ref().map_or(0, |l| l.len())
            + self.user.as_ref().map_or(0, |l| l.len())
            + self.method_user.values().map(|l| l.len()).sum::<usize>()
            + self.fails().map_or(0, |f| f.len())
    }

    /// Checks the (ip, user) pair's lock, then records the hash's outcome.
    fn lockout(&self, ip: IpAddr, user: &str, rule: Lockout, good: bool) -> Result<(), Refusal> {
        let now = Instant::now();
        let Some(mut fails) = self.fails() else {
            return Ok(());
        };
        let key = (ip, user.to_string());
        if let Some(until) = fails
            .get(&key)
            .and_then(|f| f.locked_until)
            .filter(|t| *t > now)
        {
            return Err(locked_out(until - now));
        }
        if good {
            fails.remove(&key);
            return Ok(());
        }
        if !fails.contains_key(&key) && fails.len() >= self.settings.max_tracked_keys {
            // Full: the pair is not tracked until a sweep frees room; the
            // per-IP layer still bounds what it can try.
            return Ok(());
        }
        let f = fails.entry(key).or_insert(FailState {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if f.locked_until.is_some_and(|t| t <= now)
            || now.duration_since(f.window_start) >= rule.window
        {
            f.window_start = now;
            f.failures = 0;
            f.locked_until = None;
        }
        f.failures += 1;
        if f.failures >= rule.failures && f.locked_until.is_none() {
            f.locked_until = Some(now + rule.cooloff);
        }
        Ok(())
    }

    fn step(
        &self,
        q: &Question<'_>,
        layer: Layer,
        trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        match (layer, q.user) {
            (Layer::Ip, _) => match &self.ip {
                Some(l) => self.check_keyed(l, &q.ip, layer, trace),
                None => Ok(None),
            },
            (Layer::User, Some(u)) => match &self.user {
                Some(l) => self.check_keyed(l, &u.to_string(), layer, trace),
                None => Ok(None),
            },
            (Layer::Method, _) => match self.method.get(q.method) {
                Some(l) => self.check_direct(l, layer, trace),
                None => Ok(None),
            },
            (Layer::MethodUser, Some(u)) => match self.method_user.get(q.method) {
                Some(l) => self.check_keyed(l, &u.to_string(), layer, trace),
                None => Ok(None),
            },
            (Layer::User | Layer::MethodUser, None) => Ok(None),
        }
    }
}

impl Gate for Limits {
    fn answer(&self, q: &Question<'_>) -> Answer {
        let mut trace = LimitTrace::default();
        let mut locked = false;
        let outcome = 'ask: {
            if let Some(p) = q.lockout {
                match self.lockout(q.ip, q.pair_user(), p.rule, p.good) {
                    Err(r) if p.enforce => break 'ask Err(r),
                    Err(_) => locked = true,
                    Ok(()) => {}
                }
            }
            let mut best = None;
            for s in q.steps() {
                // A reporting step over its quota is traced and consumes
                // nothing (governor counts only what it allows).
                match self.step(q, s.layer, &mut trace) {
                    Ok(a) => best = Allowance::tighter(best, a),
                    Err(r) if s.enforce => break 'ask Err(r),
                    Err(_) => {}
                }
            }
            Ok(best)
        };
        Answer {
            outcome,
            trace,
            locked,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::layers::Modes;
    use crate::core::limits::HashCheck;
    use crate::core::reply::Reason;

    fn settings() -> LimitSettings {
        LimitSettings {
            exempt: vec!["10.9.0.0/16".parse().unwrap()],
            per_ip: Some(QuotaSpec {
                per_second: 1.0,
                burst: 3,
            }),
            per_user: Some(QuotaSpec {
                per_second: 1.0,
                burst: 2,
            }),
            per_method: HashMap::new(),
            per_method_user: HashMap::new(),
            max_tracked_keys: 4,
            headers: true,
            lockout: Some(Lockout {
                failures: 2,
                window: Duration::from_secs(60),
                cooloff: Duration::from_secs(60),
            }),
            ipv6_prefix: 64,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn check_ip(l: &Limits, a: &str) -> Result<Option<Allowance>, Refusal> {
        l.answer(&l.settings().ip_question(ip(a), Modes::ENFORCE))
            .outcome
    }

    fn call(l: &Limits, a: &str, user: &str) -> Result<Option<Allowance>, Refusal> {
        let q =
            l.settings()
                .call_question(ip(a), Some(user), "m", HashCheck::Skipped, Modes::ENFORCE);
        l.answer(&q).outcome
    }

    /// A hash outcome for (a, user): the lock checked, then recorded.
    fn hash(l: &Limits, a: &str, user: &str, good: bool) -> Result<(), Refusal> {
        let h = if good {
            HashCheck::Good
        } else {
            HashCheck::Bad
        };
        let q = l
            .settings()
            .call_question(ip(a), Some(user), "m", h, Modes::ENFORCE);
        l.answer(&q).outcome.map(|_| ())
    }

    /// Whether (a, user) is locked now (without recording anything).
    fn locked(l: &Limits, a: &str, user: &str) -> bool {
        let key = (l.settings().key(ip(a)), user.to_string());
        l.fails
            .lock()
            .unwrap()
            .get(&key)
            .and_then(|f| f.locked_until)
            .is_some_and(|t| t > Instant::now())
    }

    #[test]
    fn ip_burst_then_limited_with_retry_after() {
        let l = Limits::new(&settings());
        for i in 0..3 {
            let a = check_ip(&l, "1.1.1.1").unwrap().unwrap();
            assert_eq!(a.remaining, 2 - i);
        }
        let r = check_ip(&l, "1.1.1.1").unwrap_err();
        assert_eq!(r.reason, Reason::Limited);
        assert!(r.retry_after.unwrap() <= Duration::from_secs(1));
        assert!(check_ip(&l, "1.1.1.2").is_ok());
    }

    #[test]
    fn the_trace_names_the_layers_that_decided() {
        let l = Limits::new(&settings());
        let q = l.settings().ip_question(ip("1.1.1.1"), Modes::ENFORCE);
        assert_eq!(
            l.answer(&q).trace.iter().collect::<Vec<_>>(),
            [(Layer::Ip, true)]
        );
        for _ in 0..2 {
            call(&l, "1.1.1.1", "ann").unwrap();
        }
        let q = l.settings().call_question(
            ip("1.1.1.1"),
            Some("ann"),
            "m",
            HashCheck::Skipped,
            Modes::ENFORCE,
        );
        let a = l.answer(&q);
        assert_eq!(a.outcome.unwrap_err().reason, Reason::Limited);
        assert_eq!(a.trace.iter().collect::<Vec<_>>(), [(Layer::User, false)]);
    }

    #[test]
    fn ipv6_clients_share_their_network_s_bucket_and_lockout() {
        let l = Limits::new(&settings());
        for host in 1..=3 {
            assert!(check_ip(&l, &format!("2001:db8:1:2::{host}")).is_ok());
        }
        // A fourth address of the same /64: the network's burst is spent.
        assert!(check_ip(&l, "2001:db8:1:2:ffff::9").is_err());
        assert!(check_ip(&l, "2001:db8:1:3::1").is_ok());
        // Failed hashes from two addresses of one /64 add up.
        hash(&l, "2001:db8:9:9::1", "john", false).unwrap();
        hash(&l, "2001:db8:9:9::2", "john", false).unwrap();
        assert!(locked(&l, "2001:db8:9:9::3", "john"));
        assert!(!locked(&l, "2001:db8:9:8::3", "john"));
    }

    #[test]
    fn exempt_never_limited() {
        let l = Limits::new(&settings());
        for _ in 0..50 {
            assert!(check_ip(&l, "10.9.3.4").is_ok());
            assert!(call(&l, "10.9.3.4", "u").is_ok());
        }
    }

    #[test]
    fn users_are_independent() {
        let l = Limits::new(&settings());
        assert!(call(&l, "1.1.1.1", "a").is_ok());
        assert!(call(&l, "1.1.1.1", "a").is_ok());
        assert!(call(&l, "1.1.1.1", "a").is_err());
        assert!(call(&l, "1.1.1.1", "b").is_ok());
    }

    #[test]
    fn cap_sends_new_keys_to_overflow_and_keeps_tracked_ones() {
        let l = Limits::new(&settings());
        for i in 0..4 {
            check_ip(&l, &format!("2.0.0.{i}")).unwrap();
        }
        assert_eq!(l.ip.as_ref().unwrap().len(), 4);
        // New keys now share one overflow bucket of burst 3.
        let ok = (10..20)
            .filter(|i| check_ip(&l, &format!("2.0.0.{i}")).is_ok())
            .count();
        assert_eq!(ok, 3);
        assert_eq!(l.ip.as_ref().unwrap().len(), 4);
        // A tracked key still has its own bucket (2 left).
        assert!(check_ip(&l, "2.0.0.0").is_ok());
    }

    #[test]
    fn lockout_trips_and_success_resets() {
        let l = Limits::new(&settings());
        let a = "3.3.3.3";
        hash(&l, a, "bob", false).unwrap();
        assert!(!locked(&l, a, "bob"));
        hash(&l, a, "bob", true).unwrap();
        hash(&l, a, "bob", false).unwrap();
        assert!(!locked(&l, a, "bob"), "success reset the count");
        hash(&l, a, "bob", false).unwrap();
        assert!(locked(&l, a, "bob"));
        // Locked: even a good hash is refused, with the time left.
        let r = hash(&l, a, "bob", true).unwrap_err();
        assert_eq!(r.reason, Reason::LockedOut);
        assert!(r.retry_after.unwrap() > Duration::from_secs(50));
        assert!(
            hash(&l, "3.3.3.4", "bob", true).is_ok(),
            "other IP unaffected"
        );
        assert!(hash(&l, a, "alice", true).is_ok(), "other user unaffected");
    }

    #[test]
    fn locked_pairs_are_listed_and_one_is_unlocked() {
        let l = Limits::new(&settings());
        for _ in 0..2 {
            hash(&l, "6.6.6.6", "bob", false).unwrap();
            hash(&l, "6.6.6.6", "eve", false).unwrap();
            hash(&l, "2001:db8:1:2::5", "bob", false).unwrap();
        }
        hash(&l, "6.6.6.7", "bob", false).unwrap();
        let pairs: Vec<(String, String)> = l
            .locked_pairs()
            .into_iter()
            .map(|(ip, u, left)| {
                assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
                (ip.to_string(), u)
            })
            .collect();
        let want = |a: &str, u: &str| (a.to_string(), u.to_string());
        // One failure is not a lock; IPv6 shown as its /64.
        assert_eq!(
            pairs,
            [
                want("6.6.6.6", "bob"),
                want("6.6.6.6", "eve"),
                want("2001:db8:1:2::", "bob")
            ]
        );
        assert!(l.unlock(ip("6.6.6.6"), "bob"));
        assert!(!l.unlock(ip("6.6.6.6"), "bob"), "already unlocked");
        assert!(!l.unlock(ip("6.6.6.7"), "bob"), "counted, not locked");
        // Any address of the network unlocks it.
        assert!(l.unlock(ip("2001:db8:1:2::99"), "bob"));
        assert!(hash(&l, "6.6.6.6", "bob", true).is_ok(), "served again");
        assert!(hash(&l, "6.6.6.6", "eve", true).is_err(), "the other stays");
        assert_eq!(l.active_lockouts(), 1);
        // Its failure count went with the lock: one more bad hash does not
        // lock it again at once.
        hash(&l, "6.6.6.6", "bob", false).unwrap();
        assert!(!locked(&l, "6.6.6.6", "bob"));
    }

    #[test]
    fn a_poisoned_failure_table_fails_open_and_says_so() {
        let l = Limits::new(&settings());
        hash(&l, "5.5.5.5", "eve", false).unwrap();
        hash(&l, "5.5.5.5", "eve", false).unwrap();
        assert!(hash(&l, "5.5.5.5", "eve", true).is_err(), "locked");
        let fails = Arc::clone(&l.fails);
        let _ = std::thread::spawn(move || {
            let _held = fails.lock().unwrap();
            panic!("poison the table");
        })
        .join();
        assert!(!l.poisoned());
        // The lockout no longer applies; the rate layers still do.
        assert!(hash(&l, "5.5.5.5", "eve", true).is_ok());
        assert!(l.poisoned());
        for _ in 0..3 {
            check_ip(&l, "5.5.5.6").unwrap();
        }
        assert!(check_ip(&l, "5.5.5.6").is_err());
        assert_eq!(l.active_lockouts(), 0);
    }

    #[test]
    fn reconfigure_keeps_unchanged_buckets() {
        let l = Limits::new(&settings());
        for _ in 0..3 {
            check_ip(&l, "4.4.4.4").unwrap();
        }
        let mut s = settings();
        s.per_user = Some(QuotaSpec {
            per_second: 5.0,
            burst: 9,
        });
        let l = l.reconfigure(&s);
        assert!(check_ip(&l, "4.4.4.4").is_err(), "ip bucket kept");
        let mut s2 = s.clone();
        s2.per_ip = Some(QuotaSpec {
            per_second: 1.0,
            burst: 10,
        });
        let l = l.reconfigure(&s2);
        assert!(
            check_ip(&l, "4.4.4.4").is_ok(),
            "changed layer starts fresh"
        );
    }
}
