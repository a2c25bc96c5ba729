//! Rate limits (GCRA via governor) and the failed-hash lockout.
//!
//! Layers: per client IP (before the hash is checked), per verified user,
//! per method and per method+user (after). Exempt CIDRs skip every rate
//! layer. Keyed state is bounded: each keyed limiter tracks at most
//! `max_tracked_keys` keys; a key first seen while the store is full shares
//! one overflow bucket (same quota) with every other such key until the
//! periodic [`Limits::sweep`] frees room. Keys already tracked keep their own
//! buckets, so a flood of new keys cannot reset or evict real users.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, RateLimiter, StateStore};
use governor::Quota;
use ipnet::IpNet;

use serde::Deserialize;

use crate::core::reply::{Reason, Refusal};

/// A GCRA quota: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

/// Failed-hash lockout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Failures that trip the lockout.
    pub failures: u32,
    /// Window the failures are counted in.
    pub window: Duration,
    /// How long the pair is refused once tripped.
    pub cooloff: Duration,
}

/// Rate-limit configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Sources never limited.
    pub exempt: Vec<IpNet>,
    /// Per client IP, checked before the hash.
    pub per_ip: Option<QuotaSpec>,
    /// Per verified user (`u`).
    pub per_user: Option<QuotaSpec>,
    /// Per canonical method, all users together.
    pub per_method: HashMap<String, QuotaSpec>,
    /// Per canonical method and verified user.
    pub per_method_user: HashMap<String, QuotaSpec>,
    /// Hard cap on tracked keys per keyed limiter.
    pub max_tracked_keys: usize,
    /// Send RateLimit-* headers on allowed calls.
    pub headers: bool,
    /// Failed-hash lockout by (IP, user).
    pub lockout: Option<Lockout>,
    /// IPv6 clients are one key per network of this prefix length
    /// ([`crate::core::client::group`]).
    pub ipv6_prefix: u8,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            exempt: Vec::new(),
            per_ip: None,
            per_user: None,
            per_method: HashMap::new(),
            per_method_user: HashMap::new(),
            max_tracked_keys: 100_000,
            headers: false,
            lockout: None,
            ipv6_prefix: 64,
        }
    }
}

impl LimitSettings {
    /// The key of `ip` in the per-IP layer and the lockout: IPv6 grouped by
    /// `ipv6_prefix`.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        crate::core::client::group(ip, self.ipv6_prefix)
    }

    /// Whether `ip` (IPv4-mapped IPv6 taken as IPv4) skips the rate layers.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.exempt.iter().any(|n: &IpNet| n.contains(&ip))
    }
}

/// The layers that decided about one call, in order (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitTrace {
    n: usize,
    items: [(&'static str, bool); 4],
}

impl LimitTrace {
    /// Records one layer's decision (at most four are kept).
    pub fn push(&mut self, layer: &'static str, allowed: bool) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = (layer, allowed);
            self.n += 1;
        }
    }

    /// Each decision as (layer, allowed).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        self.items[..self.n].iter().copied()
    }
}

/// What an allowed call may still do at its tightest layer (for RateLimit-* headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Burst size of the layer.
    pub limit: u32,
    /// Calls left right now.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

impl Allowance {
    /// The one with fewer calls left (either, if only one is known).
    pub fn tighter(a: Option<Allowance>, b: Option<Allowance>) -> Option<Allowance> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y.remaining < x.remaining { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

/// The limiting decisions the decision core asks for. Each layer a gate
/// does not implement allows everything ([`Open`] implements none).
pub trait Gate {
    /// Per-IP layer, before the hash is checked.
    fn check_ip(&self, _ip: IpAddr, _trace: &mut LimitTrace) -> Result<Option<Allowance>, Refusal> {
        Ok(None)
    }
    /// Is (ip, user) locked out after failed hashes?
    fn check_lockout(&self, _ip: IpAddr, _user: &str) -> Result<(), Refusal> {
        Ok(())
    }
    /// Records a hash verdict for (ip, user).
    fn record_hash(&self, _ip: IpAddr, _user: &str, _ok: bool) {}
    /// User, method and method+user layers, after the hash verified.
    fn check_call(
        &self,
        _ip: IpAddr,
        _user: Option<&str>,
        _method: &str,
        _trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        Ok(None)
    }
}

/// A gate that never limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Open;

impl Gate for Open {}

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

/// The refusal of a call over the quota of `layer`, free again after `retry`.
pub fn limited(layer: &'static str, retry: Duration) -> Refusal {
    let mut r = Refusal::new(Reason::Limited);
    r.retry_after = Some(retry);
    r.layer = Some(layer);
    r
}

/// The refusal of a locked-out (IP, user) pair, free again after `retry`.
pub fn locked_out(retry: Duration) -> Refusal {
    let mut r = Refusal::new(Reason::LockedOut);
    r.retry_after = Some(retry);
    r.layer = Some("lockout");
    r
}

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
        }
        next
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.settings.is_exempt(ip)
    }

    fn refusal(
        &self,
        layer: &'static str,
        nu: &governor::NotUntil<governor::clock::QuantaInstant>,
    ) -> Refusal {
        limited(layer, nu.wait_time_from(self.clock.now()))
    }

    fn check_keyed<K: Hash + Eq + Clone>(
        &self,
        lim: &Keyed<K>,
        key: &K,
        layer: &'static str,
        trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        let checked = lim.check_key(key);
        trace.push(layer, checked.is_ok());
        match checked {
            Ok(s) => Ok(Some(snapshot_allowance(&s))),
            Err(nu) => Err(self.refusal(layer, &nu)),
        }
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
        if let (Some(lo), Ok(mut fails)) = (self.settings.lockout, self.fails.lock()) {
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
        self.fails.lock().map_or(0, |f| {
            f.values()
                .filter(|f| f.locked_until.is_some_and(|t| t > now))
                .count()
        })
    }

    /// Keys tracked across keyed limiters and the lockout table.
    pub fn tracked_keys(&self) -> usize {
        self.ip.as_ref().map_or(0, |l| l.len())
            + self.user.as_ref().map_or(0, |l| l.len())
            + self.method_user.values().map(|l| l.len()).sum::<usize>()
            + self.fails.lock().map(|f| f.len()).unwrap_or(0)
    }

    fn lockout(&self) -> Option<Lockout> {
        self.settings.lockout
    }
}

impl Gate for Limits {
    fn check_ip(&self, ip: IpAddr, trace: &mut LimitTrace) -> Result<Option<Allowance>, Refusal> {
        match &self.ip {
            Some(l) if !self.exempt(ip) => self.check_keyed(l, &self.settings.key(ip), "ip", trace),
            _ => Ok(None),
        }
    }

    fn check_lockout(&self, ip: IpAddr, user: &str) -> Result<(), Refusal> {
        if self.lockout().is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(fails) = self.fails.lock() else {
            return Ok(());
        };
        if let Some(until) = fails
            .get(&(self.settings.key(ip), user.to_string()))
            .and_then(|f| f.locked_until)
            .filter(|t| *t > now)
        {
            return Err(locked_out(until - now));
        }
        Ok(())
    }

    fn record_hash(&self, ip: IpAddr, user: &str, ok: bool) {
        let Some(lo) = self.lockout() else { return };
        let now = Instant::now();
        let Ok(mut fails) = self.fails.lock() else {
            return;
        };
        let key = (self.settings.key(ip), user.to_string());
        if ok {
            fails.remove(&key);
            return;
        }
        if !fails.contains_key(&key) && fails.len() >= self.settings.max_tracked_keys {
            // Full: the pair is not tracked until a sweep frees room; the
            // per-IP layer still bounds what it can try.
            return;
        }
        let f = fails.entry(key).or_insert(FailState {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if f.locked_until.is_some_and(|t| t <= now)
            || now.duration_since(f.window_start) >= lo.window
        {
            f.window_start = now;
            f.failures = 0;
            f.locked_until = None;
        }
        f.failures += 1;
        if f.failures >= lo.failures && f.locked_until.is_none() {
            f.locked_until = Some(now + lo.cooloff);
        }
    }

    fn check_call(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        method: &str,
        trace: &mut LimitTrace,
    ) -> Result<Option<Allowance>, Refusal> {
        if self.exempt(ip) {
            return Ok(None);
        }
        let mut best = None;
        if let (Some(l), Some(u)) = (&self.user, user) {
            best = Allowance::tighter(best, self.check_keyed(l, &u.to_string(), "user", trace)?);
        }
        if let Some(l) = self.method.get(method) {
            let checked = l.check();
            trace.push("method", checked.is_ok());
            match checked {
                Ok(s) => best = Allowance::tighter(best, Some(snapshot_allowance(&s))),
                Err(nu) => return Err(self.refusal("method", &nu)),
            }
        }
        if let (Some(l), Some(u)) = (self.method_user.get(method), user) {
            best = Allowance::tighter(
                best,
                self.check_keyed(l, &u.to_string(), "method_user", trace)?,
            );
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ip_burst_then_limited_with_retry_after() {
        let l = Limits::new(&settings());
        for i in 0..3 {
            let a = l
                .check_ip(ip("1.1.1.1"), &mut LimitTrace::default())
                .unwrap()
                .unwrap();
            assert_eq!(a.remaining, 2 - i);
        }
        let r = l
            .check_ip(ip("1.1.1.1"), &mut LimitTrace::default())
            .unwrap_err();
        assert_eq!(r.reason, Reason::Limited);
        assert!(r.retry_after.unwrap() <= Duration::from_secs(1));
        assert!(l
            .check_ip(ip("1.1.1.2"), &mut LimitTrace::default())
            .is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_network_s_bucket_and_lockout() {
        let l = Limits::new(&settings());
        for host in 1..=3 {
            let a = ip(&format!("2001:db8:1:2::{host}"));
            assert!(l.check_ip(a, &mut LimitTrace::default()).is_ok());
        }
        // A fourth address of the same /64: the network's burst is spent.
        let r = l.check_ip(ip("2001:db8:1:2:ffff::9"), &mut LimitTrace::default());
        assert!(r.is_err());
        assert!(l
            .check_ip(ip("2001:db8:1:3::1"), &mut LimitTrace::default())
            .is_ok());
        // Failed hashes from two addresses of one /64 add up.
        l.record_hash(ip("2001:db8:9:9::1"), "john", false);
        l.record_hash(ip("2001:db8:9:9::2"), "john", false);
        assert!(l.check_lockout(ip("2001:db8:9:9::3"), "john").is_err());
        assert!(l.check_lockout(ip("2001:db8:9:8::3"), "john").is_ok());
    }

    #[test]
    fn exempt_never_limited() {
        let l = Limits::new(&settings());
        for _ in 0..50 {
            assert!(l
                .check_ip(ip("10.9.3.4"), &mut LimitTrace::default())
                .is_ok());
            assert!(l
                .check_call(ip("10.9.3.4"), Some("u"), "x", &mut LimitTrace::default())
                .is_ok());
        }
    }

    #[test]
    fn users_are_independent() {
        let l = Limits::new(&settings());
        assert!(l
            .check_call(ip("1.1.1.1"), Some("a"), "m", &mut LimitTrace::default())
            .is_ok());
        assert!(l
            .check_call(ip("1.1.1.1"), Some("a"), "m", &mut LimitTrace::default())
            .is_ok());
        assert!(l
            .check_call(ip("1.1.1.1"), Some("a"), "m", &mut LimitTrace::default())
            .is_err());
        assert!(l
            .check_call(ip("1.1.1.1"), Some("b"), "m", &mut LimitTrace::default())
            .is_ok());
    }

    #[test]
    fn cap_sends_new_keys_to_overflow_and_keeps_tracked_ones() {
        let l = Limits::new(&settings());
        for i in 0..4 {
            l.check_ip(ip(&format!("2.0.0.{i}")), &mut LimitTrace::default())
                .unwrap();
        }
        assert_eq!(l.ip.as_ref().unwrap().len(), 4);
        // New keys now share one overflow bucket of burst 3.
        let mut ok = 0;
        for i in 10..20 {
            if l.check_ip(ip(&format!("2.0.0.{i}")), &mut LimitTrace::default())
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 3);
        assert_eq!(l.ip.as_ref().unwrap().len(), 4);
        // A tracked key still has its own bucket (2 left).
        assert!(l
            .check_ip(ip("2.0.0.0"), &mut LimitTrace::default())
            .is_ok());
    }

    #[test]
    fn lockout_trips_and_success_resets() {
        let l = Limits::new(&settings());
        let a = ip("3.3.3.3");
        l.record_hash(a, "bob", false);
        assert!(l.check_lockout(a, "bob").is_ok());
        l.record_hash(a, "bob", true);
        l.record_hash(a, "bob", false);
        assert!(l.check_lockout(a, "bob").is_ok(), "success reset the count");
        l.record_hash(a, "bob", false);
        let r = l.check_lockout(a, "bob").unwrap_err();
        assert_eq!(r.reason, Reason::LockedOut);
        assert!(r.retry_after.unwrap() > Duration::from_secs(50));
        assert!(
            l.check_lockout(ip("3.3.3.4"), "bob").is_ok(),
            "other IP unaffected"
        );
        assert!(l.check_lockout(a, "alice").is_ok(), "other user unaffected");
    }

    #[test]
    fn reconfigure_keeps_unchanged_buckets() {
        let l = Limits::new(&settings());
        for _ in 0..3 {
            l.check_ip(ip("4.4.4.4"), &mut LimitTrace::default())
                .unwrap();
        }
        let mut s = settings();
        s.per_user = Some(QuotaSpec {
            per_second: 5.0,
            burst: 9,
        });
        let l = l.reconfigure(&s);
        assert!(
            l.check_ip(ip("4.4.4.4"), &mut LimitTrace::default())
                .is_err(),
            "ip bucket kept"
        );
        let mut s2 = s.clone();
        s2.per_ip = Some(QuotaSpec {
            per_second: 1.0,
            burst: 10,
        });
        let l = l.reconfigure(&s2);
        assert!(
            l.check_ip(ip("4.4.4.4"), &mut LimitTrace::default())
                .is_ok(),
            "changed layer starts fresh"
        );
    }
}
