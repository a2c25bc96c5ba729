//! Access control by client address (`[access]`): allow and deny lists of
//! networks, one global pair and one pair per owner (the admin or a
//! reseller, named as the directory names it). Pure: an address and the
//! lists in, admitted or not out.
//!
//! Semantics: **deny wins**. An address is admitted by a pair of lists when
//! no `deny` network contains it and `allow` is empty or one of its
//! networks contains it (so `allow = ["10.0.0.0/8"]`, `deny =
//! ["10.0.0.66/32"]` admits 10.0.0.1 and refuses 10.0.0.66, whatever order
//! they are written in). IPv4-mapped IPv6 addresses are taken as IPv4
//! ([`crate::core::client::canonical`]).
//!
//! Where they apply: the global pair in the first stage
//! ([`crate::core::decision::admit`]), before any per-IP token is taken and
//! before the body is read; an owner's pair in the second stage, as soon as
//! the caller's owner is known and before any key is tried. An unlisted
//! caller of a partial directory (the static config; there the admin's own
//! users are unlisted) has no owner before a key matches: it is refused
//! before any key is tried when no owner whose key could sign admits the
//! address, else held to the lists of the owner whose key signed it.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::core::client::canonical;
use crate::core::directory::{self, Directory, UserId};
use crate::core::reply::{Reason, Refusal};

/// One allow list and one deny list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lists {
    /// Networks admitted (empty: every address not denied).
    pub allow: Vec<IpNet>,
    /// Networks refused, whatever `allow` says.
    pub deny: Vec<IpNet>,
}

impl Lists {
    /// Whether `ip` is admitted: no deny entry contains it, and the allow
    /// list is empty or an entry contains it.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }

    /// Whether the lists restrict nothing.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// The name `[access.owners]` gives owner 0 whatever its username is.
pub const ADMIN_NAME: &str = "admin";

/// A name as the directory compares usernames (case-insensitive, trailing
/// spaces ignored).
fn key(name: &str) -> String {
    name.trim_end_matches(' ').to_lowercase()
}

/// Every list of `[access]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Applies to every call.
    pub global: Lists,
    /// By owner name as the config wrote it, in the config's order.
    owners: Vec<(String, Lists)>,
    /// Folded name → index in `owners`.
    by_name: HashMap<String, usize>,
}

/// The refusal of an address the lists do not admit: MOR's own text for a
/// caller it will not serve.
pub fn denied() -> Refusal {
    Refusal::new(Reason::AddressDenied)
}

impl Access {
    /// The lists: `global`, and `owners` by name (names compared like
    /// MOR's usernames; `admin` is owner 0).
    pub fn new(global: Lists, owners: Vec<(String, Lists)>) -> Access {
        let by_name = owners
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (key(n), i))
            .collect();
        Access {
            global,
            owners,
            by_name,
        }
    }

    /// Whether no list restricts anything.
    pub fn is_open(&self) -> bool {
        self.global.is_open() && self.owners.iter().all(|(_, l)| l.is_open())
    }

    /// The owners named, as written.
    pub fn owner_names(&self) -> impl Iterator<Item = &str> {
        self.owners.iter().map(|(n, _)| n.as_str())
    }

    /// The first stage's check: the global lists.
    pub fn screen(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.global.admits(ip) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// The lists of owner `id` of `dir`: those named by its username, or
    /// for owner 0 by [`ADMIN_NAME`] too.
    fn of_owner(&self, dir: &Directory, id: UserId) -> Option<&Lists> {
        let by = |n: &str| self.by_name.get(&key(n)).map(|i| &self.owners[*i].1);
        let named = dir.owner(id).and_then(|o| by(&o.name));
        match (id, named) {
            (directory::ADMIN, None) => by(ADMIN_NAME),
            (_, n) => n,
        }
    }

    /// The second stage's check: the lists of the caller's owner `id`
    /// (none configured: admitted).
    pub fn owner(&self, dir: &Directory, id: UserId, ip: IpAddr) -> Result<(), Refusal> {
        // No owner has lists (the usual case): nothing to look up.
        if self.owners.is_empty() {
            return Ok(());
        }
        match self.of_owner(dir, id) {
            Some(l) if !l.admits(ip) => Err(denied()),
            _ => Ok(()),
        }
    }

    /// Whether the lists of one of the owners `ids` admit `ip` (an unlisted
    /// caller may be any of theirs until a key matches).
    pub fn any_admits(&self, dir: &Directory, ids: &[UserId], ip: IpAddr) -> bool {
        ids.iter().any(|id| self.owner(dir, *id, ip).is_ok())
    }

    /// The owner names no owner of `dir` has (for `check`): a list that
    /// never applies.
    pub fn unknown_owners(&self, dir: &Directory) -> Vec<&str> {
        let known: std::collections::HashSet<String> = dir
            .owner_names()
            .map(key)
            .collect::<std::collections::HashSet<_>>();
        self.owner_names()
            .filter(|n| key(n) != ADMIN_NAME && !known.contains(&key(n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::directory::ConfigOwner;
    use crate::core::policy::Secret;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lists(allow: &[&str], deny: &[&str]) -> Lists {
        Lists {
            allow: allow.iter().map(|s| net(s)).collect(),
            deny: deny.iter().map(|s| net(s)).collect(),
        }
    }

    #[test]
    fn empty_lists_admit_everyone() {
        let l = Lists::default();
        assert!(l.admits(ip("203.0.113.9")));
        assert!(l.admits(ip("2001:db8::1")));
        assert!(l.is_open());
    }

    #[test]
    fn deny_wins_over_allow_whatever_the_order() {
        let l = lists(&["10.0.0.0/8"], &["10.0.0.66/32"]);
        assert!(l.admits(ip("10.0.0.1")));
        assert!(!l.admits(ip("10.0.0.66")));
        // Not in a non-empty allow list.
        assert!(!l.admits(ip("192.0.2.1")));
        // A deny list alone admits everything else.
        let d = lists(&[], &["192.0.2.0/24"]);
        assert!(!d.admits(ip("192.0.2.200")));
        assert!(d.admits(ip("192.0.3.1")));
        // The same address in both: denied.
        assert!(!lists(&["192.0.2.1/32"], &["192.0.2.1/32"]).admits(ip("192.0.2.1")));
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let l = lists(&["2001:db8:1::/48", "198.51.100.0/24"], &[]);
        assert!(l.admits(ip("2001:db8:1:ffff::1")));
        assert!(!l.admits(ip("2001:db8:2::1")));
        // IPv4-mapped IPv6 is the IPv4 address.
        assert!(l.admits(ip("::ffff:198.51.100.7")));
        assert!(!l.admits(ip("::ffff:198.51.101.7")));
        let d = lists(&[], &["198.51.100.7/32"]);
        assert!(!d.admits(ip("::ffff:198.51.100.7")));
        // An IPv4 network never contains a (non-mapped) IPv6 address.
        assert!(!lists(&["0.0.0.0/0"], &[]).admits(ip("2001:db8::1")));
    }

    fn config_dir() -> Directory {
        let owner = |name: &str| ConfigOwner {
            name: name.into(),
            key: Secret::new(b"k"),
            users: vec![format!("{name}-user")],
            uniquehash: None,
            allow_api: true,
            hash_off: false,
        };
        Directory::from_config(
            Secret::new(b"a"),
            true,
            false,
            false,
            &[owner("Res1"), owner("res2")],
        )
    }

    #[test]
    fn owner_lists_by_name_admin_included() {
        let dir = config_dir();
        let a = Access::new(
            Lists::default(),
            vec![
                ("RES1".into(), lists(&["192.0.2.0/24"], &[])),
                ("admin".into(), lists(&[], &["198.51.100.0/24"])),
            ],
        );
        // res1 is owner 1 (config order); names compare case-insensitively.
        assert!(a.owner(&dir, 1, ip("192.0.2.5")).is_ok());
        assert_eq!(
            a.owner(&dir, 1, ip("198.51.100.5")).unwrap_err().reason,
            Reason::AddressDenied
        );
        // res2 has no lists: admitted.
        assert!(a.owner(&dir, 2, ip("198.51.100.5")).is_ok());
        // The admin's.
        assert!(a.owner(&dir, directory::ADMIN, ip("198.51.100.5")).is_err());
        assert!(a.owner(&dir, directory::ADMIN, ip("192.0.2.5")).is_ok());
        // An owner the directory does not have: no lists.
        assert!(a.owner(&dir, 99, ip("198.51.100.5")).is_ok());
    }

    #[test]
    fn the_admin_of_a_database_is_found_by_its_username_or_as_admin() {
        use crate::core::directory::{ConfRow, UserRow};
        let users = [UserRow {
            id: 0,
            username: "root".into(),
            usertype: "admin".into(),
            owner_id: 0,
            uniquehash: None,
        }];
        let conf = [ConfRow {
            name: "Allow_API".into(),
            value: b"1".to_vec(),
            owner_id: 0,
        }];
        let dir = Directory::from_rows(&users, &conf);
        let by_admin = Access::new(
            Lists::default(),
            vec![("admin".into(), lists(&["192.0.2.0/24"], &[]))],
        );
        assert!(by_admin.owner(&dir, 0, ip("198.51.100.1")).is_err());
        assert!(by_admin.unknown_owners(&dir).is_empty());
        let by_name = Access::new(
            Lists::default(),
            vec![("root".into(), lists(&["192.0.2.0/24"], &[]))],
        );
        assert!(by_name.owner(&dir, 0, ip("198.51.100.1")).is_err());
        assert!(by_name.owner(&dir, 0, ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn lists_naming_no_owner_are_reported() {
        let dir = config_dir();
        let a = Access::new(
            Lists::default(),
            vec![
                ("res2".into(), Lists::default()),
                ("admin".into(), Lists::default()),
                ("nobody".into(), Lists::default()),
            ],
        );
        assert_eq!(a.unknown_owners(&dir), vec!["nobody"]);
    }

    #[test]
    fn the_global_screen() {
        let a = Access::new(lists(&[], &["203.0.113.0/24"]), vec![]);
        assert_eq!(
            a.screen(ip("203.0.113.9")).unwrap_err().reason,
            Reason::AddressDenied
        );
        assert!(a.screen(ip("192.0.2.1")).is_ok());
        assert!(Access::default().is_open());
        assert!(!a.is_open());
    }
}

/// The lists at work in the decision core's two stages.
#[cfg(test)]
mod stage_tests {
    use std::cell::RefCell;

    use sha1::{Digest, Sha1};

    use crate::core::decision::{admit, decide_now, Head, Verdict};
    use crate::core::limits::{Answer, Gate, LimitSettings, Question};
    use crate::core::policy::Policy;
    use crate::core::reply::Reason;

    /// A gate that allows everything and records what it was asked.
    #[derive(Default)]
    struct Recording(RefCell<Vec<(bool, Option<String>)>>);

    impl Gate for Recording {
        fn answer(&self, q: &Question<'_>) -> Answer {
            self.0
                .borrow_mut()
                .push((q.lockout.is_some(), q.user.map(str::to_string)));
            Answer::default()
        }
    }

    fn policy(access: &str) -> Policy {
        let text = format!(
            r#"
listen = ["127.0.0.1:0"]
[upstream]
servers = ["127.0.0.1:1"]
[secrets]
admin_key_env = "A"
[[resellers]]
name = "res1"
key_env = "R"
users = ["ruser"]
{access}
"#
        );
        let env = std::collections::HashMap::from([("A", "456789"), ("R", "resellerkey")]);
        let s = crate::config::Settings::from_toml(&text, None, &env).unwrap();
        (*s.policy).clone()
    }

    fn limits() -> LimitSettings {
        LimitSettings {
            lockout: Some(crate::core::limits::Lockout {
                failures: 3,
                window: std::time::Duration::from_secs(60),
                cooloff: std::time::Duration::from_secs(60),
            }),
            ..LimitSettings::default()
        }
    }

    /// A signed user_details_get query for `user` with `key`.
    fn query(user: &str, key: &str) -> String {
        let hash = hex::encode(Sha1::digest(format!("123{key}").as_bytes()));
        format!("u={user}&user_id=123&hash={hash}")
    }

    fn call(p: &Policy, from: &str, q: &str) -> (Verdict, Recording) {
        let gate = Recording::default();
        let head = Head {
            method: "POST",
            path: "/billing/api/user_details_get",
            query: Some(q),
            content_type: None,
            client_ip: from.parse().unwrap(),
        };
        let v = decide_now(p, &p.directory, &limits(), &gate, &head, b"");
        (v, gate)
    }

    fn reason(v: &Verdict) -> Option<Reason> {
        match v {
            Verdict::Refuse(r, _) => Some(r.reason),
            Verdict::Forward(..) => None,
        }
    }

    #[test]
    fn a_globally_denied_address_is_refused_before_any_limit_is_asked() {
        let p = policy(
            "[access]\nallow = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ndeny = [\"192.0.2.66\"]\n",
        );
        let q = query("admin", "456789");
        for from in [
            "198.51.100.1",
            "192.0.2.66",
            "::ffff:192.0.2.66",
            "2001:db9::1",
        ] {
            let (v, gate) = call(&p, from, &q);
            assert_eq!(reason(&v), Some(Reason::AddressDenied), "{from}");
            assert!(gate.0.borrow().is_empty(), "{from}: no per-IP token");
        }
        // Refused in the first stage: before the body is read.
        let head = Head {
            method: "POST",
            path: "/billing/api/user_details_get",
            query: None,
            content_type: None,
            client_ip: "198.51.100.1".parse().unwrap(),
        };
        let r = admit(&p, &p.directory, &head).unwrap_err();
        assert_eq!(r.refusal.reason, Reason::AddressDenied);
        assert_eq!(r.info.method.as_deref(), Some("user_details_get"));
        for from in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::5"] {
            let (v, gate) = call(&p, from, &q);
            assert_eq!(reason(&v), None, "{from}");
            assert_eq!(gate.0.borrow().len(), 2, "per-IP, then the call's layers");
        }
        // Pass-through paths too (when forwarded at all).
        let p =
            policy("[api]\nother_paths = \"forward\"\n[access]\ndeny = [\"198.51.100.0/24\"]\n");
        let head = Head {
            path: "/elsewhere",
            ..head
        };
        assert_eq!(
            admit(&p, &p.directory, &head).unwrap_err().refusal.reason,
            Reason::AddressDenied
        );
    }

    #[test]
    fn an_owners_lists_apply_to_its_users_only_and_before_the_hash() {
        let p = policy(
            "[access.owners.res1]\nallow = [\"192.0.2.0/24\"]\n[access.owners.admin]\ndeny = [\"203.0.113.0/24\"]\n",
        );
        let res = query("ruser", "resellerkey");
        let adm = query("admin", "456789");
        // res1's user from outside res1's list: refused, and the lockout is
        // never asked (no key was tried, no failure counted).
        let (v, gate) = call(&p, "198.51.100.1", &res);
        assert_eq!(reason(&v), Some(Reason::AddressDenied));
        assert!(gate.0.borrow().iter().all(|(lockout, _)| !lockout));
        // A wrong hash from there is refused the same way (no hash oracle).
        let (v, _) = call(&p, "198.51.100.1", &query("ruser", "guess"));
        assert_eq!(reason(&v), Some(Reason::AddressDenied));
        // The reseller itself too.
        let (v, _) = call(&p, "198.51.100.1", &query("res1", "resellerkey"));
        assert_eq!(reason(&v), Some(Reason::AddressDenied));
        // From inside: served.
        let (v, _) = call(&p, "192.0.2.9", &res);
        assert_eq!(reason(&v), None);
        // The admin's users are not held to res1's list...
        let (v, _) = call(&p, "198.51.100.1", &adm);
        assert_eq!(reason(&v), None);
        // ...but to the admin's.
        let (v, _) = call(&p, "203.0.113.5", &adm);
        assert_eq!(reason(&v), Some(Reason::AddressDenied));
        let (v, _) = call(&p, "203.0.113.5", &res);
        assert_eq!(
            reason(&v),
            Some(Reason::AddressDenied),
            "not in res1's allow"
        );
    }

    #[test]
    fn an_unlisted_caller_is_held_to_the_lists_of_the_owner_whose_key_signed() {
        let p = policy("[access.owners.res1]\nallow = [\"192.0.2.0/24\"]\n");
        // `someone` is in no list of the static directory: any key may sign.
        let (v, _) = call(&p, "198.51.100.1", &query("someone", "resellerkey"));
        assert_eq!(reason(&v), Some(Reason::AddressDenied));
        let (v, _) = call(&p, "192.0.2.1", &query("someone", "resellerkey"));
        assert_eq!(reason(&v), None);
        let (v, _) = call(&p, "198.51.100.1", &query("someone", "456789"));
        assert_eq!(reason(&v), None, "signed by the admin, who has no lists");
        let (v, _) = call(&p, "198.51.100.1", &query("someone", "guess"));
        assert_eq!(reason(&v), Some(Reason::BadHash));
        // When no owner whose key could sign admits the address, no key is
        // tried at all: refused whatever the hash, and no failure counted.
        let p = policy(
            "[access.owners.res1]\nallow = [\"192.0.2.0/24\"]\n[access.owners.admin]\nallow = [\"192.0.2.0/24\"]\n",
        );
        for key in ["456789", "resellerkey", "guess"] {
            let (v, gate) = call(&p, "198.51.100.1", &query("someone", key));
            assert_eq!(reason(&v), Some(Reason::AddressDenied), "{key}");
            assert!(gate.0.borrow().iter().all(|(lockout, _)| !lockout));
        }
        let (v, _) = call(&p, "192.0.2.1", &query("someone", "resellerkey"));
        assert_eq!(reason(&v), None);
    }
}
