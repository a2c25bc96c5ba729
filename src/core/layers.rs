//! The refusing layers and whether each enforces or only reports.
//!
//! A layer ([`Guard`]) is one of the checks that may refuse a call MOR
//! would answer: the hash and key, MOR's two API switches, the
//! username-only closure, unknown methods, the lockout and each rate-limit
//! layer. Each is set to [`Mode::Enforce`] (the default) or
//! [`Mode::Report`]: a reporting layer that would refuse a call lets it
//! through and the call carries the would-be refusal ([`WouldRefuse`]) to
//! the access log and the metrics. The setting is global, per method and
//! per owner, the most specific winning ([`Enforcement`]).
//!
//! Framing, path, size, connection and body-budget refusals are not layers:
//! nothing faithful could be forwarded after them, so they always enforce.
//! Neither are the refusals the config asks for by name (an action set to
//! `refuse`, `api.undetermined = "refuse"`, the address lists of
//! `[access]`), the HTTP methods MOR has no route for, nor the wait for
//! MOR's directory.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::core::limits::{Layer, Pairs};
use crate::core::reply::Reason;

/// A layer that may refuse a call MOR would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    /// The caller, its owner's key and the hash: `Incorrect hash`, an
    /// unknown caller, an owner without a key.
    Hash,
    /// MOR's "Allow API" (the owner's or, before the caller is known, all
    /// owners').
    AllowApi,
    /// MOR's "Allow GET API".
    AllowGet,
    /// The actions MOR serves with `u` alone, closed at the gateway.
    UsernameOnly,
    /// Actions not in the catalogue (`api.unknown_methods = "refuse"`).
    UnknownMethod,
    /// The failed-hash lockout of an (IP, user) pair.
    Lockout,
    /// A rate-limit layer.
    Quota(Layer),
}

impl Guard {
    /// Every layer, in the order a call meets them.
    pub const ALL: [Guard; 10] = [
        Guard::Quota(Layer::Ip),
        Guard::AllowApi,
        Guard::AllowGet,
        Guard::UsernameOnly,
        Guard::UnknownMethod,
        Guard::Hash,
        Guard::Lockout,
        Guard::Quota(Layer::User),
        Guard::Quota(Layer::Method),
        Guard::Quota(Layer::MethodUser),
    ];

    /// The config key and metric label.
    pub fn label(self) -> &'static str {
        match self {
            Guard::Hash => "hash",
            Guard::AllowApi => "allow_api",
            Guard::AllowGet => "allow_get",
            Guard::UsernameOnly => "username_only",
            Guard::UnknownMethod => "unknown_method",
            Guard::Lockout => "lockout",
            Guard::Quota(l) => l.label(),
        }
    }

    /// The layer a config key names.
    pub fn from_label(s: &str) -> Option<Guard> {
        Guard::ALL.into_iter().find(|g| g.label() == s)
    }

    /// The reasons this layer refuses with (the metric's label pairs).
    pub fn reasons(self) -> &'static [Reason] {
        match self {
            Guard::Hash => &[Reason::BadHash, Reason::UnknownUser, Reason::NoSecretKey],
            Guard::AllowApi => &[Reason::ApiDisabled],
            Guard::AllowGet => &[Reason::GetDisabled],
            Guard::UsernameOnly => &[Reason::UsernameOnly],
            Guard::UnknownMethod => &[Reason::UnknownMethod],
            Guard::Lockout => &[Reason::LockedOut],
            Guard::Quota(_) => &[Reason::Limited],
        }
    }

    fn bit(self) -> u16 {
        let i = Guard::ALL.iter().position(|g| *g == self).unwrap_or(0);
        1 << i
    }

    /// Whether the layer is decided before the caller is known, so that it
    /// cannot be set per owner.
    pub fn before_caller(self) -> bool {
        self == Guard::Quota(Layer::Ip)
    }
}

/// Whether a layer refuses or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the call (the default).
    Enforce,
    /// Forward the call and record the would-be refusal.
    Report,
}

const ALL_BITS: u16 = (1 << Guard::ALL.len()) - 1;

/// The modes in force for one call: which layers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    report: u16,
}

impl Modes {
    /// Every layer enforces.
    pub const ENFORCE: Modes = Modes { report: 0 };

    /// Whether `g` enforces.
    pub fn enforces(self, g: Guard) -> bool {
        self.report & g.bit() == 0
    }

    fn overlay(self, s: &Scope) -> Modes {
        Modes {
            report: (self.report & !s.mask) | (s.report & s.mask),
        }
    }
}

/// One table of settings: the layers it names and which of them report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Scope {
    mask: u16,
    report: u16,
}

impl Scope {
    /// From a config table: `all` first, then each named layer.
    fn parse(table: &BTreeMap<String, Mode>, owner: bool) -> Result<Scope, String> {
        let mut s = Scope::default();
        let usable = if owner {
            ALL_BITS & !Guard::Quota(Layer::Ip).bit()
        } else {
            ALL_BITS
        };
        if let Some(m) = table.get("all") {
            s.mask = usable;
            s.report = if *m == Mode::Report { usable } else { 0 };
        }
        for (k, m) in table {
            if k == "all" {
                continue;
            }
            let g = Guard::from_label(k).ok_or_else(|| {
                let names: Vec<&str> = Guard::ALL.iter().map(|g| g.label()).collect();
                format!("unknown layer `{k}` (layers: all, {})", names.join(", "))
            })?;
            if owner && g.before_caller() {
                return Err(format!(
                    "`{k}` is decided before the caller is known and cannot be set per owner; set it globally or per method"
                ));
            }
            s.mask |= g.bit();
            s.report = (s.report & !g.bit()) | if *m == Mode::Report { g.bit() } else { 0 };
        }
        Ok(s)
    }
}

/// Which layers enforce: global, per method (canonical name) and per
/// owner (its username); the owner's table wins over the method's, the
/// method's over the global one, and within a table a named layer over
/// `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforcement {
    global: Scope,
    methods: HashMap<String, Scope>,
    owners: HashMap<String, Scope>,
    /// The layers some owner's table sets.
    by_owner: u16,
}

/// A config table of modes: layer name (or `all`) to mode.
pub type ModeTable = BTreeMap<String, Mode>;

impl Enforcement {
    /// From the config's tables; an error names the offending entry.
    pub fn new(
        global: &ModeTable,
        methods: &BTreeMap<String, ModeTable>,
        owners: &BTreeMap<String, ModeTable>,
    ) -> Result<Enforcement, (String, String)> {
        let mut e = Enforcement {
            global: Scope::parse(global, false).map_err(|m| ("rollout.layers".into(), m))?,
            ..Enforcement::default()
        };
        for (name, t) in methods {
            let s = Scope::parse(t, false).map_err(|m| (format!("rollout.methods.{name}"), m))?;
            e.methods.insert(name.clone(), s);
        }
        for (name, t) in owners {
            let s = Scope::parse(t, true).map_err(|m| (format!("rollout.owners.{name}"), m))?;
            e.by_owner |= s.mask;
            e.owners.insert(name.clone(), s);
        }
        Ok(e)
    }

    /// Whether every layer enforces everywhere (the default).
    pub fn enforces_all(&self) -> bool {
        self.global.report == 0
            && self.methods.values().all(|s| s.report == 0)
            && self.owners.values().all(|s| s.report == 0)
    }

    /// The modes for a call of `method` (its label) by a caller of `owner`.
    pub fn modes(&self, method: &str, owner: Option<&str>) -> Modes {
        let mut m = Modes::ENFORCE.overlay(&self.global);
        if let Some(s) = self.methods.get(method) {
            m = m.overlay(s);
        }
        if let Some(s) = owner.and_then(|o| self.owners.get(o)) {
            m = m.overlay(s);
        }
        m
    }

    /// Whether `g`'s mode may depend on the caller's owner (some owner's
    /// table sets it): a refusal by it before the caller is known waits
    /// for the caller.
    pub fn per_owner(&self, g: Guard) -> bool {
        self.by_owner & g.bit() != 0
    }

    /// What reports, one line per table that sets a layer to report (for
    /// `check` and `explain`); empty when every layer enforces.
    pub fn describe(&self) -> Vec<String> {
        let list = |s: &Scope| {
            Guard::ALL
                .into_iter()
                .filter(|g| s.mask & g.bit() != 0)
                .map(|g| {
                    let m = if s.report & g.bit() != 0 {
                        "report"
                    } else {
                        "enforce"
                    };
                    format!("{}={m}", g.label())
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        if self.enforces_all() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.global.mask != 0 {
            out.push(format!("global: {}", list(&self.global)));
        }
        let mut named: Vec<(String, &Scope)> = self
            .methods
            .iter()
            .map(|(k, s)| (format!("method {k}"), s))
            .chain(self.owners.iter().map(|(k, s)| (format!("owner {k}"), s)))
            .filter(|(_, s)| s.mask != 0)
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, s) in named {
            out.push(format!("{name}: {}", list(s)));
        }
        out
    }

    /// The owner names the tables name (for `check`).
    pub fn owner_names(&self) -> impl Iterator<Item = &str> {
        self.owners.keys().map(String::as_str)
    }
}

/// The refusals reporting layers would have made of one call, as (layer,
/// reason), in the order met (at most four are kept; a call rarely meets
/// more than one).
pub type WouldRefuse = Pairs<Guard, Reason>;

impl WouldRefuse {
    /// For the access log: `layer:reason` joined by `,`.
    pub fn describe(&self) -> Option<String> {
        (!self.is_empty()).then(|| {
            self.iter()
                .map(|(g, r)| format!("{}:{}", g.label(), r.label()))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(pairs: &[(&str, Mode)]) -> ModeTable {
        pairs.iter().map(|(k, m)| (k.to_string(), *m)).collect()
    }

    use Mode::{Enforce, Report};

    #[test]
    fn labels_are_unique_and_round_trip() {
        let set: std::collections::HashSet<_> = Guard::ALL.iter().map(|g| g.label()).collect();
        assert_eq!(set.len(), Guard::ALL.len());
        for g in Guard::ALL {
            assert_eq!(Guard::from_label(g.label()), Some(g));
        }
    }

    #[test]
    fn the_most_specific_table_wins() {
        let e = Enforcement::new(
            &table(&[("all", Report), ("ip", Enforce)]),
            &BTreeMap::from([("user_details_get".to_string(), table(&[("hash", Enforce)]))]),
            &BTreeMap::from([("res1".to_string(), table(&[("all", Enforce)]))]),
        )
        .unwrap();
        let other = e.modes("user_balance_get", Some("res2"));
        assert!(!other.enforces(Guard::Hash));
        assert!(!other.enforces(Guard::Quota(Layer::User)));
        assert!(
            other.enforces(Guard::Quota(Layer::Ip)),
            "named wins over all"
        );
        let m = e.modes("user_details_get", None);
        assert!(m.enforces(Guard::Hash), "the method's table wins");
        assert!(!m.enforces(Guard::AllowApi));
        let o = e.modes("user_details_get", Some("res1"));
        for g in Guard::ALL {
            assert!(o.enforces(g), "the owner's table wins: {g:?}");
        }
        assert!(e.per_owner(Guard::Hash));
        assert!(
            !e.per_owner(Guard::Quota(Layer::Ip)),
            "owner's all skips ip"
        );
        assert!(!e.enforces_all());
    }

    #[test]
    fn default_enforces_everything() {
        let e = Enforcement::default();
        assert!(e.enforces_all());
        assert_eq!(e.modes("x", Some("y")), Modes::ENFORCE);
        for g in Guard::ALL {
            assert!(Modes::ENFORCE.enforces(g));
            assert!(!e.per_owner(g));
        }
    }

    #[test]
    fn nonsense_is_refused_with_its_place() {
        let bad = Enforcement::new(
            &table(&[("hsah", Report)]),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let (at, msg) = bad.unwrap_err();
        assert_eq!(at, "rollout.layers");
        assert!(msg.contains("hsah") && msg.contains("hash"), "{msg}");
        let ip = Enforcement::new(
            &ModeTable::new(),
            &BTreeMap::new(),
            &BTreeMap::from([("res1".to_string(), table(&[("ip", Report)]))]),
        );
        assert_eq!(ip.unwrap_err().0, "rollout.owners.res1");
    }

    #[test]
    fn would_refuse_keeps_four_in_order() {
        let mut w = WouldRefuse::default();
        assert_eq!(w.describe(), None);
        w.push(Guard::AllowGet, Reason::GetDisabled);
        w.push(Guard::Hash, Reason::BadHash);
        assert_eq!(
            w.describe().as_deref(),
            Some("allow_get:get_disabled,hash:bad_hash")
        );
        for _ in 0..5 {
            w.push(Guard::Lockout, Reason::LockedOut);
        }
        assert_eq!(w.iter().count(), 4);
    }
}
