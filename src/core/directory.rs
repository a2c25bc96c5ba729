//! MOR's directory as the decision core reads it: who each caller is, whose
//! settings apply to it ("owner for API"), and each owner's API key and
//! switches (Allow API, hash checking). Built once per refresh from MOR's
//! `users` and `conflines` rows ([`Directory::from_rows`]) or from the
//! static config ([`Directory::from_config`]), then read-only: the core never
//! does I/O, it is handed a snapshot.
//!
//! MOR's rules (shared/mor-api/mor-db.md, mor-x8.toml `[keys]`):
//! - the owner for API of `admin` (id 0) and `accountant` users is 0, of a
//!   `reseller` its own id, of `user` and `partner` their `owner_id`;
//! - a setting is the `value` of the first row with that name and owner;
//!   "1" is on, anything else (or no row) off;
//! - Allow API off refuses the owner's users; a reseller itself is also let
//!   in while owner 0's is on;
//! - hash checking is off for an owner's users while its Allow API and
//!   Disable hash checking are both on; a reseller itself is also unchecked
//!   while owner 0's two are on;
//! - a reseller itself may sign with its own key or (owner 0's Allow API on)
//!   the admin's; everyone else with its owner's key only.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::policy::Secret;

/// A MOR user id (`users.id`); the admin is 0.
pub type UserId = u64;

/// The admin's id, owner of the system settings.
pub const ADMIN: UserId = 0;

/// The settings MOR keeps per owner, as the gateway needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerSettings {
    /// The owner's username (for logs and `signer`; never secret).
    pub name: Arc<str>,
    /// `API_Secret_Key`; `None` when empty.
    pub key: Option<Secret>,
    /// `Allow_API` = "1".
    pub allow_api: bool,
    /// `API_Disable_hash_checking` = "1".
    pub hash_off: bool,
}

/// A known caller: whose settings apply, and whether it is a reseller
/// itself (which may also use the admin's key and switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Owner for API.
    pub owner: UserId,
    /// The caller is the reseller `owner` itself.
    pub reseller_itself: bool,
}

/// What the directory says of a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A known user.
    Known(Caller),
    /// Not in the directory, which is complete (MOR's own database): MOR
    /// has no current user and answers "Access Denied".
    Unknown,
    /// Not listed in a partial directory (the static config): any
    /// configured key may sign, the admin's switches apply.
    Unlisted,
}

/// Where a directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[resellers]]` and `[api]` of the config file.
    Config,
    /// A snapshot of MOR's database.
    Database,
}

/// One `users` row (the five columns the gateway may read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// `id`.
    pub id: UserId,
    /// `username`.
    pub username: String,
    /// `usertype`.
    pub usertype: String,
    /// `owner_id`.
    pub owner_id: UserId,
    /// `uniquehash`.
    pub uniquehash: Option<String>,
}

/// One `conflines` row of the five API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfRow {
    /// `name`.
    pub name: String,
    /// `value` (NULL read as empty).
    pub value: Vec<u8>,
    /// `owner_id`.
    pub owner_id: UserId,
}

/// The `conflines` names the gateway reads (the view keeps only these).
pub const CONF_NAMES: [&str; 5] = [
    "API_Secret_Key",
    "Allow_API",
    "API_Disable_hash_checking",
    "Allow_GET_API",
    "Devices_Check_Ballance",
];

/// The snapshot.
#[derive(Debug, Clone)]
pub struct Directory {
    users: HashMap<Box<str>, Caller>,
    by_uniquehash: HashMap<Box<str>, Caller>,
    owners: HashMap<UserId, OwnerSettings>,
    /// Owner 0's settings (also in `owners`), kept at hand.
    admin: OwnerSettings,
    /// A caller not listed: `Unknown` (complete) or `Unlisted` (partial).
    complete: bool,
    /// Keys an unlisted caller may sign with (partial directories): the
    /// admin's first, then every other owner's, by owner id.
    any_keys: Vec<UserId>,
    /// `Allow_GET_API` of owner 0 (MOR's is global).
    pub allow_get: bool,
    /// `Devices_Check_Ballance` of owner 0 (MOR answers "Feature disabled"
    /// itself when off; shown by `check`).
    pub balance_over_http: bool,
    /// Some owner has Allow API on (else every API call is refused).
    any_api: bool,
    /// Where it came from.
    pub source: Source,
    /// False for the stand-in used before the first snapshot when the
    /// config says to refuse calls then.
    pub available: bool,
    /// Users with an owner for API (not counting those without a username).
    pub user_count: usize,
    /// Owners with at least one setting row (or configured).
    pub owner_count: usize,
}

/// A reseller as the static config gives it.
#[derive(Debug, Clone)]
pub struct ConfigOwner {
    /// Its username.
    pub name: String,
    /// Its key.
    pub key: Secret,
    /// Its users' usernames.
    pub users: Vec<String>,
    /// Its uniquehash, if configured.
    pub uniquehash: Option<String>,
    /// MOR's Allow API for it.
    pub allow_api: bool,
    /// MOR's "Disable hash checking" for its users.
    pub hash_off: bool,
}

fn on(v: &[u8]) -> bool {
    v == b"1"
}

/// A name as MySQL's default collations compare it (case-insensitive,
/// trailing spaces ignored): the form both the maps and the lookups use.
/// Allocates only for a name that needs folding.
fn fold(name: &str) -> std::borrow::Cow<'_, str> {
    let t = name.trim_end_matches(' ');
    if t.chars().any(char::is_uppercase) {
        std::borrow::Cow::Owned(t.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

impl Directory {
    fn finish(
        users: HashMap<Box<str>, Caller>,
        by_uniquehash: HashMap<Box<str>, Caller>,
        owners: HashMap<UserId, OwnerSettings>,
        complete: bool,
        source: Source,
    ) -> Directory {
        let admin = owners
            .get(&ADMIN)
            .cloned()
            .unwrap_or_else(|| OwnerSettings {
                name: "admin".into(),
                ..OwnerSettings::default()
            });
        let mut any_keys: Vec<UserId> = owners
            .iter()
            .filter(|(_, o)| o.key.is_some())
            .map(|(id, _)| *id)
            .collect();
        any_keys.sort_unstable();
        let any_api = owners.values().any(|o| o.allow_api);
        Directory {
            user_count: users.len(),
            owner_count: owners.len(),
            users,
            by_uniquehash,
            owners,
            admin,
            complete,
            any_keys,
            allow_get: false,
            balance_over_http: true,
            any_api,
            source,
            available: true,
        }
    }

    /// The stand-in before MOR's database was ever read, when the config
    /// says to refuse API calls until then.
    pub fn unavailable() -> Directory {
        let mut d = Directory::finish(
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            true,
            Source::Database,
        );
        d.available = false;
        d
    }

    /// The static directory: the admin (owner 0) with `[api]`'s switches and
    /// key, and each `[[resellers]]` entry with its users. Callers not listed
    /// may sign with any configured key.
    pub fn from_config(
        admin_key: Secret,
        allow_api: bool,
        allow_get: bool,
        hash_off: bool,
        resellers: &[ConfigOwner],
    ) -> Directory {
        let mut owners = HashMap::new();
        owners.insert(
            ADMIN,
            OwnerSettings {
                name: "admin".into(),
                key: Some(admin_key),
                allow_api,
                hash_off,
            },
        );
        let mut users = HashMap::new();
        let mut by_uniquehash = HashMap::new();
        for (i, r) in resellers.iter().enumerate() {
            // Owner ids of the static config are positions; MOR's ids are
            // never seen in this mode.
            let id = i as UserId + 1;
            owners.insert(
                id,
                OwnerSettings {
                    name: r.name.as_str().into(),
                    key: Some(r.key.clone()),
                    allow_api: r.allow_api,
                    hash_off: r.hash_off,
                },
            );
            let itself = Caller {
                owner: id,
                reseller_itself: true,
            };
            users.insert(fold(&r.name).into(), itself);
            if let Some(uh) = &r.uniquehash {
                by_uniquehash.insert(fold(uh).into(), itself);
            }
            for u in &r.users {
                users.insert(
                    fold(u).into(),
                    Caller {
                        owner: id,
                        reseller_itself: false,
                    },
                );
            }
        }
        let mut d = Directory::finish(users, by_uniquehash, owners, false, Source::Config);
        d.allow_get = allow_get;
        d
    }

    /// A snapshot of MOR's database: every user with its owner for API, and
    /// every owner's settings (the first row of each name and owner wins;
    /// `users` and `conf` must come in MOR's row order, by id).
    pub fn from_rows(users: &[UserRow], conf: &[ConfRow]) -> Directory {
        let mut b = Builder::new(conf, users.len());
        for u in users {
            b.user(
                u.id,
                &u.username,
                &u.usertype,
                u.owner_id,
                u.uniquehash.as_deref(),
            );
        }
        b.finish()
    }

    /// The caller named by a username.
    pub fn by_username(&self, name: &str) -> Lookup {
        match self.users.get(fold(name).as_ref()) {
            Some(c) => Lookup::Known(*c),
            None if self.complete => Lookup::Unknown,
            None => Lookup::Unlisted,
        }
    }

    /// The caller whose uniquehash this is.
    pub fn by_uniquehash(&self, uh: &str) -> Lookup {
        match self.by_uniquehash.get(fold(uh).as_ref()) {
            Some(c) => Lookup::Known(*c),
            None if self.complete => Lookup::Unknown,
            None => Lookup::Unlisted,
        }
    }

    /// An owner's settings (an owner without rows has every setting empty).
    pub fn owner(&self, id: UserId) -> Option<&OwnerSettings> {
        self.owners.get(&id)
    }

    /// Every owner's name (for `check`: lists naming no owner).
    pub fn owner_names(&self) -> impl Iterator<Item = &str> {
        self.owners.values().map(|o| &*o.name)
    }

    /// Owner 0's settings.
    pub fn admin(&self) -> &OwnerSettings {
        &self.admin
    }

    /// Every MOR user is in it (a snapshot of MOR's database): a caller
    /// not found is unknown to MOR too.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Some owner has Allow API on.
    pub fn any_api(&self) -> bool {
        self.any_api
    }

    /// Whether MOR lets this caller use the API.
    pub fn allow_api(&self, c: Caller) -> bool {
        self.owner(c.owner).is_some_and(|o| o.allow_api)
            || (c.reseller_itself && self.admin.allow_api)
    }

    /// Whether MOR skips the hash check for this caller.
    pub fn hash_off(&self, c: Caller) -> bool {
        self.owner(c.owner)
            .is_some_and(|o| o.allow_api && o.hash_off)
            || (c.reseller_itself && self.admin.allow_api && self.admin.hash_off)
    }

    /// The owners whose keys may sign this caller's calls, in order of
    /// preference (own owner first).
    pub fn signers(&self, c: Caller) -> Signers {
        let mut s = Signers::default();
        if self.owner(c.owner).is_some_and(|o| o.key.is_some()) {
            s.push(c.owner);
        }
        if c.reseller_itself && c.owner != ADMIN && self.admin.allow_api && self.admin.key.is_some()
        {
            s.push(ADMIN);
        }
        s
    }

    /// Every owner with a key, the admin first (an unlisted caller of a
    /// partial directory).
    pub fn any_signers(&self) -> &[UserId] {
        &self.any_keys
    }

    /// Owners whose switches differ from "API on, hash checked", for `check`.
    pub fn unusual_owners(&self) -> Vec<(UserId, &OwnerSettings)> {
        let mut v: Vec<_> = self
            .owners
            .iter()
            .filter(|(_, o)| !o.allow_api || o.hash_off || o.key.is_none())
            .map(|(id, o)| (*id, o))
            .collect();
        v.sort_unstable_by_key(|(id, _)| *id);
        v
    }
}

/// Builds a snapshot of MOR's database row by row (the users streamed as
/// they arrive, never held as a list): the settings first, then each user in
/// MOR's order (by id).
#[derive(Debug)]
pub struct Builder {
    by_name: HashMap<Box<str>, Caller>,
    by_uniquehash: HashMap<Box<str>, Caller>,
    owners: HashMap<UserId, OwnerSettings>,
    allow_get: bool,
    balance: bool,
}

impl Builder {
    /// Starts from the settings rows (MOR's order: the first row of a name
    /// and owner wins), with room for about `users` users.
    pub fn new(conf: &[ConfRow], users: usize) -> Builder {
        let mut owners: HashMap<UserId, OwnerSettings> = HashMap::new();
        let mut seen: std::collections::HashSet<(&str, UserId)> = Default::default();
        let (mut allow_get, mut balance) = (false, false);
        for r in conf {
            if !seen.insert((r.name.as_str(), r.owner_id)) {
                continue;
            }
            let o = owners.entry(r.owner_id).or_insert_with(|| OwnerSettings {
                // Named when its user row comes.
                name: format!("#{}", r.owner_id).into(),
                ..OwnerSettings::default()
            });
            match r.name.as_str() {
                "API_Secret_Key" => {
                    o.key = (!r.value.is_empty()).then(|| Secret::new(&r.value));
                }
                "Allow_API" => o.allow_api = on(&r.value),
                "API_Disable_hash_checking" => o.hash_off = on(&r.value),
                "Allow_GET_API" if r.owner_id == ADMIN => allow_get = on(&r.value),
                "Devices_Check_Ballance" if r.owner_id == ADMIN => balance = on(&r.value),
                _ => {}
            }
        }
        Builder {
            by_name: HashMap::with_capacity(users),
            by_uniquehash: HashMap::with_capacity(users),
            owners,
            allow_get,
            balance,
        }
    }

    /// One `users` row.
    pub fn user(
        &mut self,
        id: UserId,
        username: &str,
        usertype: &str,
        owner_id: UserId,
        uniquehash: Option<&str>,
    ) {
        if let Some(o) = self.owners.get_mut(&id) {
            if o.name.starts_with('#') {
                o.name = username.into();
            }
        }
        let (owner, itself) = match usertype {
            "admin" | "accountant" => (ADMIN, false),
            "reseller" => (id, true),
            // user, partner, and any type MOR may add: their owner_id.
            _ => (owner_id, false),
        };
        let c = Caller {
            owner,
            reseller_itself: itself,
        };
        // MOR finds the first row (by id) whose name matches.
        if !username.is_empty() {
            self.by_name.entry(fold(username).into()).or_insert(c);
        }
        if let Some(uh) = uniquehash.filter(|s| !s.is_empty()) {
            self.by_uniquehash.entry(fold(uh).into()).or_insert(c);
        }
    }

    /// The snapshot.
    pub fn finish(self) -> Directory {
        let mut d = Directory::finish(
            self.by_name,
            self.by_uniquehash,
            self.owners,
            true,
            Source::Database,
        );
        d.allow_get = self.allow_get;
        d.balance_over_http = self.balance;
        d
    }
}

/// At most two candidate signers (own owner, then the admin): no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signers {
    ids: [UserId; 2],
    len: usize,
}

impl Signers {
    fn push(&mut self, id: UserId) {
        if self.len < 2 {
            self.ids[self.len] = id;
            self.len += 1;
        }
    }
    /// The owner ids.
    pub fn ids(&self) -> &[UserId] {
        &self.ids[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: UserId, name: &str, t: &str, owner: UserId) -> UserRow {
        UserRow {
            id,
            username: name.into(),
            usertype: t.into(),
            owner_id: owner,
            uniquehash: Some(format!("{name}uniq")),
        }
    }

    fn conf(name: &str, value: &str, owner: UserId) -> ConfRow {
        ConfRow {
            name: name.into(),
            value: value.as_bytes().to_vec(),
            owner_id: owner,
        }
    }

    fn mor() -> Directory {
        Directory::from_rows(
            &[
                user(0, "admin", "admin", 0),
                user(2, "john", "user", 0),
                user(3, "acc", "accountant", 0),
                user(4, "res1", "reseller", 0),
                user(5, "ruser", "user", 4),
                user(6, "part", "partner", 4),
                user(7, "res2", "reseller", 0),
                user(8, "r2user", "user", 7),
            ],
            &[
                conf("API_Secret_Key", "adminkey", 0),
                conf("Allow_API", "1", 0),
                conf("Allow_GET_API", "1", 0),
                conf("API_Secret_Key", "reskey", 4),
                conf("Allow_API", "1", 4),
                // The first row of a name and owner wins.
                conf("Allow_API", "0", 4),
                conf("API_Disable_hash_checking", "1", 4),
                conf("Allow_API", "0", 7),
                conf("API_Secret_Key", "", 7),
            ],
        )
    }

    fn known(l: Lookup) -> Caller {
        match l {
            Lookup::Known(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn owner_for_api_by_usertype() {
        let d = mor();
        assert_eq!(known(d.by_username("admin")).owner, 0);
        assert_eq!(known(d.by_username("acc")).owner, 0);
        assert_eq!(known(d.by_username("john")).owner, 0);
        let r = known(d.by_username("res1"));
        assert_eq!((r.owner, r.reseller_itself), (4, true));
        assert_eq!(known(d.by_username("ruser")).owner, 4);
        assert_eq!(known(d.by_username("part")).owner, 4);
        assert_eq!(known(d.by_uniquehash("ruseruniq")).owner, 4);
        assert_eq!(d.by_username("ghost"), Lookup::Unknown);
        // MySQL's collation: case and trailing spaces do not matter.
        assert_eq!(known(d.by_username("RUser ")).owner, 4);
        assert!(d.allow_get && !d.balance_over_http);
        assert_eq!((d.user_count, d.owner_count), (8, 3));
    }

    #[test]
    fn switches_and_signers_as_mor() {
        let d = mor();
        let (res1, ruser) = (known(d.by_username("res1")), known(d.by_username("ruser")));
        let (res2, r2user) = (known(d.by_username("res2")), known(d.by_username("r2user")));
        assert!(d.allow_api(ruser) && d.hash_off(ruser));
        assert_eq!(d.signers(ruser).ids(), [4]);
        assert_eq!(d.signers(res1).ids(), [4, 0]);
        // res2 has Allow API off: its users are refused, res2 itself is let
        // in by the admin's switch and may sign with the admin key only.
        assert!(!d.allow_api(r2user));
        assert!(d.allow_api(res2));
        assert_eq!(d.signers(res2).ids(), [0]);
        assert!(!d.hash_off(res2));
        let john = known(d.by_username("john"));
        assert_eq!(d.signers(john).ids(), [0]);
        assert!(!d.hash_off(john));
    }

    #[test]
    fn static_config_lists_some_users_only() {
        let d = Directory::from_config(
            Secret::new(b"a"),
            true,
            false,
            false,
            &[ConfigOwner {
                name: "res1".into(),
                key: Secret::new(b"r"),
                users: vec!["ruser".into()],
                uniquehash: Some("res1uniq".into()),
                allow_api: true,
                hash_off: true,
            }],
        );
        assert_eq!(d.by_username("nobody"), Lookup::Unlisted);
        assert_eq!(d.any_signers(), [0, 1]);
        let ruser = known(d.by_username("ruser"));
        assert!(d.hash_off(ruser));
        assert_eq!(known(d.by_uniquehash("res1uniq")).owner, 1);
    }
}
