//! The limit plan: which rate-limit layers and which lockout a call is
//! asked about, in which order, under which keys and quotas. Pure: the
//! decision core asks a [`Question`], a [`Gate`] answers it. Two gates
//! exist in the gateway, both in `edge/`: the local governor limiters
//! (`edge::local_limits`) and Redis (`edge::shared_limits`, a Lua script).
//!
//! Two questions per call, each after the stage that makes it askable:
//! - after routing, the per-IP layer ([`LimitSettings::ip_question`]);
//! - after the hash, the lockout of the (IP, user) pair (checked, then the
//!   hash's outcome recorded), then per user, per method and per
//!   method+user ([`LimitSettings::call_question`]).
//!
//! Exempt sources are asked no quota layer (the lockout still applies). A
//! call whose hash did not match is asked only the lockout: its refusal is
//! the hash's, unless the pair is locked (or, when the hash layer only
//! reports, the call goes on and the quota layers are asked too).
//!
//! Each step and the lockout say whether they enforce
//! ([`crate::core::layers`]): a gate refuses at the first enforcing step
//! over its quota; a reporting step over its quota is traced as refused,
//! consumes nothing, and the later steps are still asked; a locked pair
//! whose lockout reports is answered [`Answer::locked`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::core::layers::{Guard, Modes};
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
    /// Per client IP, asked after routing, before the body is read.
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

/// A limit layer. Its name (the `layer` label of the metrics) is
/// [`Layer::label`], and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Per client IP (IPv6 by network), before the body is read.
    Ip,
    /// Per verified user.
    User,
    /// Per canonical method, all users together.
    Method,
    /// Per canonical method and user.
    MethodUser,
}

impl Layer {
    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Layer::Ip => "ip",
            Layer::User => "user",
            Layer::Method => "method",
            Layer::MethodUser => "method_user",
        }
    }
}

/// How the hash comparison of a call came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCheck {
    /// No hash was compared (no hash needed): the lockout does not apply.
    Skipped,
    /// The hash matched.
    Good,
    /// The hash did not match.
    Bad,
}

/// One quota a question counts against: the layer (which says which of
/// the question's key parts name the bucket) and its quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The layer.
    pub layer: Layer,
    /// Its quota.
    pub quota: QuotaSpec,
    /// Whether going over the quota refuses the call (else it is traced).
    pub enforce: bool,
}

/// The lockout part of a [`Question`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairCheck {
    /// The lockout rule.
    pub rule: Lockout,
    /// Whether the hash matched (a failure is recorded when not).
    pub good: bool,
    /// Whether a locked pair is refused (else [`Answer::locked`]).
    pub enforce: bool,
}

/// What a [`Gate`] is asked about one call, in order: the lockout (when
/// set), then each step; the first step over its quota refuses the call
/// and the later ones are not counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Question<'a> {
    /// The client's key: IPv4 as is, IPv6 grouped by network.
    pub ip: IpAddr,
    /// `u` when given, the key part of the user layers and the lockout.
    pub user: Option<&'a str>,
    /// The method's label, the key part of the method layers.
    pub method: &'a str,
    /// The lockout: the pair is checked, then the hash's outcome recorded.
    pub lockout: Option<PairCheck>,
    steps: [Option<Step>; 3],
}

impl<'a> Question<'a> {
    fn new(ip: IpAddr, user: Option<&'a str>, method: &'a str) -> Question<'a> {
        Question {
            ip,
            user,
            method,
            lockout: None,
            steps: [None; 3],
        }
    }

    fn push(&mut self, layer: Layer, quota: Option<QuotaSpec>, modes: Modes) {
        if let (Some(quota), Some(slot)) = (quota, self.steps.iter_mut().find(|s| s.is_none())) {
            *slot = Some(Step {
                layer,
                quota,
                enforce: modes.enforces(Guard::Quota(layer)),
            });
        }
    }

    /// The quota steps, in the order they are counted.
    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps.iter().map_while(|s| *s)
    }

    /// Whether there is nothing to ask (no step, no lockout).
    pub fn is_empty(&self) -> bool {
        self.lockout.is_none() && self.steps[0].is_none()
    }

    /// The (IP, user) pair's user part (empty when no `u`).
    pub fn pair_user(&self) -> &'a str {
        self.user.unwrap_or("")
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
        let ip = crate::core::client::canonical(ip);
        self.exempt.iter().any(|n: &IpNet| n.contains(&ip))
    }

    /// The question asked after routing: the per-IP layer.
    pub fn ip_question(&self, ip: IpAddr, modes: Modes) -> Question<'static> {
        let mut q = Question::new(self.key(ip), None, "");
        if !self.is_exempt(ip) {
            q.push(Layer::Ip, self.per_ip, modes);
        }
        q
    }

    /// The question asked after the hash: the lockout (when a hash was
    /// compared), then the user, method and method+user layers (none for
    /// an exempt source, nor for a hash that did not match while the hash
    /// layer enforces).
    pub fn call_question<'a>(
        &self,
        ip: IpAddr,
        user: Option<&'a str>,
        method: &'a str,
        hash: HashCheck,
        modes: Modes,
    ) -> Question<'a> {
        let mut q = Question::new(self.key(ip), user, method);
        if hash != HashCheck::Skipped {
            q.lockout = self.lockout.map(|rule| PairCheck {
                rule,
                good: hash == HashCheck::Good,
                enforce: modes.enforces(Guard::Lockout),
            });
        }
        if (hash == HashCheck::Bad && modes.enforces(Guard::Hash)) || self.is_exempt(ip) {
            return q;
        }
        if user.is_some() {
            q.push(Layer::User, self.per_user, modes);
        }
        q.push(Layer::Method, self.per_method.get(method).copied(), modes);
        if user.is_some() {
            q.push(
                Layer::MethodUser,
                self.per_method_user.get(method).copied(),
                modes,
            );
        }
        q
    }
}

/// A few (at most four) pairs recorded in order, without allocating: what
/// the layers decided about one call ([`LimitTrace`]) or would have refused
/// ([`crate::core::layers::WouldRefuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairs<A: Copy, B: Copy> {
    n: usize,
    items: [Option<(A, B)>; 4],
}

impl<A: Copy, B: Copy> Default for Pairs<A, B> {
    fn default() -> Self {
        Pairs {
            n: 0,
            items: [None; 4],
        }
    }
}

impl<A: Copy, B: Copy> Pairs<A, B> {
    /// Records one pair (at most four are kept).
    pub fn push(&mut self, a: A, b: B) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = Some((a, b));
            self.n += 1;
        }
    }

    /// Each pair, in the order recorded.
    pub fn iter(&self) -> impl Iterator<Item = (A, B)> + '_ {
        self.items.iter().map_while(|i| *i)
    }

    /// These pairs followed by `later`'s.
    pub fn then(mut self, later: Self) -> Self {
        for (a, b) in later.iter() {
            self.push(a, b);
        }
        self
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// The layers that decided about one call, in order (for metrics): each
/// as (layer, allowed).
pub type LimitTrace = Pairs<Layer, bool>;

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

/// A gate's answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The tightest allowance (None: no quota applied), or the refusal.
    pub outcome: Result<Option<Allowance>, Refusal>,
    /// The layers that decided, in order (a reporting layer over its quota
    /// is traced as refused while the outcome allows).
    pub trace: LimitTrace,
    /// The pair is locked out and its lockout only reports.
    pub locked: bool,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            outcome: Ok(None),
            trace: LimitTrace::default(),
            locked: false,
        }
    }
}

/// Whatever answers the core's limit questions.
pub trait Gate {
    /// Answers `q`: lockout first (checked, then recorded), then each step;
    /// see the module's note on reporting steps.
    fn answer(&self, q: &Question<'_>) -> Answer;
}

/// A gate that never limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Open;

impl Gate for Open {
    fn answer(&self, _: &Question<'_>) -> Answer {
        Answer::default()
    }
}

/// The refusal of a call over a layer's quota, free again after `retry`.
pub fn limited(retry: Duration) -> Refusal {
    let mut r = Refusal::new(Reason::Limited);
    r.retry_after = Some(retry);
    r
}

/// The refusal of a locked-out (IP, user) pair, free again after `retry`.
pub fn locked_out(retry: Duration) -> Refusal {
    let mut r = Refusal::new(Reason::LockedOut);
    r.retry_after = Some(retry);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
            lockout: Some(Lockout {
                failures: 2,
                window: Duration::from_secs(60),
                cooloff: Duration::from_secs(60),
            }),
            ..LimitSettings::default()
        }
    }

    fn pair(s: &LimitSettings, good: bool) -> PairCheck {
        PairCheck {
            rule: s.lockout.unwrap(),
            good,
            enforce: true,
        }
    }

    fn layers(q: &Question<'_>) -> Vec<Layer> {
        q.steps().map(|s| s.layer).collect()
    }

    #[test]
    fn the_plan_in_order() {
        let s = settings();
        let ip = "192.0.2.1".parse().unwrap();
        let c = s.call_question(
            ip,
            Some("john"),
            "user_details_get",
            HashCheck::Good,
            Modes::ENFORCE,
        );
        assert_eq!(layers(&c), [Layer::User, Layer::Method, Layer::MethodUser]);
        assert_eq!(c.lockout, Some(pair(&s, true)));
        assert_eq!(layers(&s.ip_question(ip, Modes::ENFORCE)), [Layer::Ip]);
        // No user: the user layers are not asked.
        let c = s.call_question(
            ip,
            None,
            "user_details_get",
            HashCheck::Skipped,
            Modes::ENFORCE,
        );
        assert_eq!(layers(&c), [Layer::Method]);
        assert_eq!(c.lockout, None, "no hash compared: no lockout");
        // A bad hash: only the lockout.
        let c = s.call_question(
            ip,
            Some("john"),
            "user_details_get",
            HashCheck::Bad,
            Modes::ENFORCE,
        );
        assert_eq!(layers(&c), []);
        assert_eq!(c.lockout, Some(pair(&s, false)));
        // Exempt: no quota, the lockout still.
        let ex = "10.1.2.3".parse().unwrap();
        assert!(s.ip_question(ex, Modes::ENFORCE).is_empty());
        let c = s.call_question(
            ex,
            Some("john"),
            "user_details_get",
            HashCheck::Good,
            Modes::ENFORCE,
        );
        assert_eq!(layers(&c), []);
        assert!(!c.is_empty());
        // IPv4-mapped IPv6 is the IPv4 address, exempt included.
        assert!(s
            .ip_question("::ffff:10.1.2.3".parse().unwrap(), Modes::ENFORCE)
            .is_empty());
        // IPv6 by network.
        let v6 = s.ip_question("2001:db8:1:2::9".parse().unwrap(), Modes::ENFORCE);
        assert_eq!(v6.ip, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn reporting_layers_are_marked_and_a_reported_bad_hash_asks_the_quotas() {
        use crate::core::layers::{Enforcement, Mode, ModeTable};
        let s = settings();
        let ip = "192.0.2.1".parse().unwrap();
        let table: ModeTable = [("hash", Mode::Report), ("method", Mode::Report)]
            .into_iter()
            .map(|(k, m)| (k.to_string(), m))
            .collect();
        let e = Enforcement::new(&table, &Default::default(), &Default::default()).unwrap();
        let modes = e.modes("user_details_get", None);
        let c = s.call_question(ip, Some("john"), "user_details_get", HashCheck::Bad, modes);
        assert_eq!(layers(&c), [Layer::User, Layer::Method, Layer::MethodUser]);
        let enforce: Vec<bool> = c.steps().map(|s| s.enforce).collect();
        assert_eq!(enforce, [true, false, true]);
        assert_eq!(c.lockout.map(|p| (p.good, p.enforce)), Some((false, true)));
    }

    #[test]
    fn traces_concatenate() {
        let mut a = LimitTrace::default();
        a.push(Layer::Ip, true);
        let mut b = LimitTrace::default();
        b.push(Layer::User, true);
        b.push(Layer::Method, false);
        assert_eq!(
            a.then(b).iter().collect::<Vec<_>>(),
            [
                (Layer::Ip, true),
                (Layer::User, true),
                (Layer::Method, false)
            ]
        );
    }
}
