//! MOR X8's authentication rules, read from the facts files, and the pure
//! decision for one call: "Allow API", "Allow GET API", the caller, the
//! signing keys and the expected hash.
//!
//! `facts/mor-x8.toml` is the authority. `facts/endpoints.toml` (the public
//! wiki) is read only for two things: the hash lists of the methods newer
//! than X8 (the MOR endpoints whose name is neither an X8 action nor an X8
//! alias), and each action's error envelope (`error_wrapper`).
//!
//! Three rules exist only in the prose of mor-x8.toml and are written here as
//! code: `card_from_group_sell` leaves `number` out of the global walk,
//! `quickstats_get` with `u=admin` hashes nothing, and `user_register`
//! without an `id` is checked with the admin key.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use sha1::{Digest, Sha1};

use super::rails::{Params, Value};

/// MOR X8's server model (embedded).
pub const X8_FACTS: &str = include_str!("facts/mor-x8.toml");
/// The public wiki's per-method facts (embedded).
pub const WIKI_FACTS: &str = include_str!("facts/endpoints.toml");
/// The wiki's actions newer than X8 (embedded).
pub const NEWER_FACTS: &str = include_str!("facts/newer-actions.toml");

/// "API Requests are disabled".
pub const API_DISABLED: &str = "API Requests are disabled";
/// "GET Requests are disabled".
pub const GET_DISABLED: &str = "GET Requests are disabled";
/// "Incorrect hash".
pub const INCORRECT_HASH: &str = "Incorrect hash";
/// "Access Denied".
pub const ACCESS_DENIED: &str = "Access Denied";
/// "API must have Secret Key".
pub const NO_SECRET_KEY: &str = "API must have Secret Key";

/// Which MOR the simulator plays where MOR X8 and the newer wiki pages
/// disagree (`[[x8_differs]]` of newer-actions.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// MOR X8.
    X8,
    /// Current MOR, as the newest wiki pages show it.
    #[default]
    Current,
}

/// The `[[x8_differs]]` prose, as code: (action, what current MOR does).
/// did_subscription_stop hashes `did_id` (the page) instead of X8's own
/// list `dids_id`; did_device_assign answers every error in
/// `<page><status>`; dids_get prints errors as `<page><error>`.
const CURRENT_LISTS: &[(&str, &[&str])] = &[("did_subscription_stop", &["did_id"])];
const CURRENT_ENVELOPES: &[(&str, Envelope)] = &[
    ("did_device_assign", Envelope::PageStatus),
    ("dids_get", Envelope::Page),
];
/// MOR X8 answers did_device_assign's hash refusal from its before_filter,
/// at the root (`<status><error>`), whatever endpoints.toml's page shows.
const X8_ENVELOPES: &[(&str, Envelope)] = &[("did_device_assign", Envelope::Status)];

/// How MOR handles an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `[actions].hash_checked`: caller + key + hash (own list or global walk).
    HashChecked,
    /// A method newer than X8: caller + key + the wiki's `hash_params` (any
    /// of the revisions' lists where they disagree).
    WikiHashed,
    /// `[actions].login`: `u` + `p` against the password; no hash.
    Login,
    /// `[actions].balance_over_http`: no user, no hash.
    BalanceOverHttp,
    /// `[actions].no_auth`: not even the Allow-API check.
    NoAuth,
    /// `[actions].by_username_only`: served with `u` alone.
    ByUsernameOnly,
    /// Named in the facts but in no group: answered without a hash.
    Open,
}

/// Where an action's `<error>` sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `<status><error>..</error></status>` (most actions).
    Status,
    /// `<page><status><error>..</error></status></page>`.
    PageStatus,
    /// `<page><error>..</error></page>`.
    Page,
}

/// Which parameter names the caller ("current user").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerBy {
    /// The user whose username is `u` (default).
    U,
    /// The user whose username is `username`.
    Username,
    /// The user whose uniquehash is `id`.
    UniquehashId,
}

impl CallerBy {
    /// The parameter that names the caller.
    pub fn param(self) -> &'static str {
        match self {
            CallerBy::U => "u",
            CallerBy::Username => "username",
            CallerBy::UniquehashId => "id",
        }
    }
}

/// A caller as the key rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Username.
    pub username: String,
    /// The system admin or an accountant.
    pub staff: bool,
    /// The owner's username; `None` for the admin's own users.
    pub owner: Option<String>,
}

/// Finds callers in the dataset.
pub trait Directory {
    /// The user named by `value` in the way `by` says, if any.
    fn find(&self, by: CallerBy, value: &[u8]) -> Option<Principal>;
}

/// The server settings the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The admin (system) API key.
    pub admin_key: &'a [u8],
    /// Resellers: (username, own key; empty: none set).
    pub resellers: &'a [(String, Vec<u8>)],
    /// The admin's "Allow API".
    pub allow_api: bool,
    /// "Allow GET API" (global).
    pub allow_get: bool,
    /// The admin's hash checking on ("Disable hash checking" off).
    pub check_hash: bool,
    /// Resellers' own switches: (username, Allow API, Disable hash
    /// checking); a reseller not listed has Allow API on, hash checked.
    pub reseller_switches: &'a [(String, bool, bool)],
}

/// The outcome of the authentication stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run the action (which may still answer an error of its own).
    Serve,
    /// Answer this error text in the action's envelope.
    Refuse(&'static str),
}

/// A global-order filter, one per `[filters]` entry (see [`filter_named`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Digits only (empty passes); hashed as an integer ("007" -> "7", "" -> "0").
    Integer,
    /// Digits only; hashed as sent.
    Digits,
    /// Digits only, or "all"; hashed as sent.
    DigitsOrAll,
    /// Exactly one of these words; hashed as sent.
    OneOf(&'static [&'static str]),
    /// Only the characters 0-9 . - +; hashed as sent.
    BalanceChars,
    /// A string with some line exactly postpaid|prepaid|all|[0-9,]+.
    Users,
    /// A string containing "true" or "false".
    Block,
    /// A string of digits, or any non-string JSON scalar (hashed as to_s).
    Mtype,
}

const CALLTYPES: &[&str] = &[
    "all",
    "answered",
    "busy",
    "no_answer",
    "failed",
    "missed",
    "missed_inc",
    "missed_inc_all",
    "missed_not_processed_inc",
];

/// The implementation of each `[filters]` entry's prose, name by name.
pub fn filter_named(name: &str) -> Option<Filter> {
    Some(match name {
        "user_id" | "period_start" | "period_end" | "tariff_id" | "only_did" => Filter::Integer,
        "direction" => Filter::OneOf(&["outgoing", "incoming"]),
        "calltype" => Filter::OneOf(CALLTYPES),
        "device" | "s_device" | "s_provider" | "s_hgc" | "s_did" => Filter::DigitsOrAll,
        "balance" => Filter::BalanceChars,
        "users" => Filter::Users,
        "block" => Filter::Block,
        "mtype" => Filter::Mtype,
        "s_user" | "s_user_id" | "s_from" | "s_till" => Filter::Digits,
        _ => return None,
    })
}

/// Every name [`filter_named`] knows (checked against the facts both ways).
const FILTERED: &[&str] = &[
    "user_id",
    "period_start",
    "period_end",
    "tariff_id",
    "only_did",
    "direction",
    "calltype",
    "device",
    "s_device",
    "s_provider",
    "s_hgc",
    "s_did",
    "balance",
    "users",
    "block",
    "mtype",
    "s_user",
    "s_user_id",
    "s_from",
    "s_till",
];

/// Prose rule: the global walk of these actions skips these names.
const WALK_SKIPS: &[(&str, &str)] = &[("card_from_group_sell", "number")];

fn all_digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

/// One global-order entry's contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Left out.
    Skip,
    /// Appended.
    Text(Vec<u8>),
    /// Hashed, but with no reproducible text (a list or hash): no hash matches.
    Unmatchable,
}

impl Filter {
    /// Applies the filter to a present, truthy value.
    fn apply(self, v: &Value) -> Piece {
        match self {
            // "a non-string value never passes".
            Filter::Users | Filter::Block => {
                let Value::Str(s) = v else {
                    return Piece::Skip;
                };
                let pass = if self == Filter::Users {
                    s.split(|b| *b == b'\n').any(|line| {
                        matches!(line, b"postpaid" | b"prepaid" | b"all")
                            || (!line.is_empty()
                                && line.iter().all(|b| b.is_ascii_digit() || *b == b','))
                    })
                } else {
                    contains(s, b"true") || contains(s, b"false")
                };
                if pass {
                    Piece::Text(s.clone())
                } else {
                    Piece::Skip
                }
            }
            Filter::Mtype => match v {
                Value::Str(s) if !s.is_empty() && all_digits(s) => Piece::Text(s.clone()),
                Value::Str(_) => Piece::Skip,
                other => match other.to_s() {
                    Some(t) => Piece::Text(t.into_owned()),
                    None => Piece::Unmatchable,
                },
            },
            _ => {
                // The remaining filters test the value's text; a list or a
                // hash is not a string of digits/words, so it never passes.
                let Some(t) = v.to_s() else {
                    return Piece::Skip;
                };
                let t = t.as_ref();
                let pass = match self {
                    Filter::Integer => all_digits(t),
                    Filter::Digits => !t.is_empty() && all_digits(t),
                    Filter::DigitsOrAll => t == b"all" || (!t.is_empty() && all_digits(t)),
                    Filter::OneOf(words) => words.iter().any(|w| w.as_bytes() == t),
                    Filter::BalanceChars => t
                        .iter()
                        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+')),
                    Filter::Users | Filter::Block | Filter::Mtype => false,
                };
                if !pass {
                    Piece::Skip
                } else if self == Filter::Integer {
                    let n = t
                        .iter()
                        .position(|b| *b != b'0')
                        .map_or(&b"0"[..], |i| &t[i..]);
                    Piece::Text(n.to_vec())
                } else {
                    Piece::Text(t.to_vec())
                }
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Deserialize)]
struct X8File {
    global: GlobalT,
    filters: BTreeMap<String, String>,
    own_lists: BTreeMap<String, Vec<String>>,
    actions: ActionsT,
    caller: CallerT,
    aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct GlobalT {
    order: Vec<String>,
    never_hashed: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionsT {
    hash_checked: Vec<String>,
    login: Vec<String>,
    balance_over_http: Vec<String>,
    no_auth: Vec<String>,
    by_username_only: Vec<String>,
    get_always_allowed: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerT {
    by_uniquehash_id: Vec<String>,
    by_username: Vec<String>,
}

#[derive(Deserialize)]
struct WikiFile {
    endpoint: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    name: String,
    product: Option<String>,
    #[serde(default)]
    hash_params: Vec<String>,
    #[serde(default)]
    no_hash: bool,
    error_wrapper: Option<String>,
}

#[derive(Deserialize)]
struct NewerFile {
    endpoint: Vec<NewerEndpoint>,
}

#[derive(Deserialize)]
struct NewerEndpoint {
    name: String,
    #[serde(default)]
    hash_params: Vec<String>,
    #[serde(default)]
    hash_params_by_revision: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    undetermined: bool,
    error_wrapper: Option<String>,
}

fn envelope_named(action: &str, wrapper: &str) -> Result<Envelope, String> {
    match wrapper {
        "page/status" => Ok(Envelope::PageStatus),
        "page" => Ok(Envelope::Page),
        other => Err(format!("{action}: unknown error_wrapper '{other}'")),
    }
}

/// The rules, read from the facts.
#[derive(Debug, Clone)]
pub struct Rules {
    kinds: HashMap<String, Kind>,
    aliases: HashMap<String, String>,
    get_always: HashSet<String>,
    callers: HashMap<String, CallerBy>,
    /// The global order without `never_hashed`, each with its filter.
    order: Vec<(String, Option<Filter>)>,
    own_lists: HashMap<String, Vec<String>>,
    /// Newer than X8: every list MOR may use (several where the wiki's
    /// revisions disagree; the simulator accepts any of them).
    wiki_lists: HashMap<String, Vec<Vec<String>>>,
    envelopes: HashMap<String, Envelope>,
}

fn dup_free(what: &str, names: &[String]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n.as_str()) {
            return Err(format!("{what}: `{n}` listed twice"));
        }
    }
    Ok(())
}

impl Rules {
    /// The rules from the embedded facts files, for current MOR.
    #[cfg(test)]
    pub fn embedded() -> Result<Rules, String> {
        Rules::embedded_for(Version::Current)
    }

    /// The rules from the embedded facts files, for `version`.
    pub fn embedded_for(version: Version) -> Result<Rules, String> {
        let mut r = Rules::parse(X8_FACTS, WIKI_FACTS)?;
        r.add_newer(NEWER_FACTS)?;
        if version == Version::Current {
            for (a, list) in CURRENT_LISTS {
                let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
                r.own_lists.insert(a.to_string(), list);
            }
            for (a, env) in CURRENT_ENVELOPES {
                r.envelopes.insert(a.to_string(), *env);
            }
        } else {
            for (a, env) in X8_ENVELOPES {
                r.envelopes.insert(a.to_string(), *env);
            }
        }
        Ok(r)
    }

    /// Adds the actions of newer-actions.toml: each hashes its page's list
    /// (raw values, in the page's order); where the wiki does not settle the
    /// list, any list a revision gives (none documented: the key alone).
    pub fn add_newer(&mut self, text: &str) -> Result<(), String> {
        let n: NewerFile = toml::from_str(text).map_err(|e| format!("newer-actions.toml: {e}"))?;
        for e in n.endpoint {
            if self.kinds.contains_key(&e.name) {
                return Err(format!("newer action `{}` is already an X8 action", e.name));
            }
            let mut lists: Vec<Vec<String>> = Vec::new();
            if e.undetermined {
                for l in e.hash_params_by_revision.into_values() {
                    if !lists.contains(&l) {
                        lists.push(l);
                    }
                }
                if lists.is_empty() {
                    lists.push(Vec::new());
                }
            } else {
                lists.push(e.hash_params);
            }
            if let Some(w) = &e.error_wrapper {
                self.envelopes
                    .insert(e.name.clone(), envelope_named(&e.name, w)?);
            }
            self.kinds.insert(e.name.clone(), Kind::WikiHashed);
            self.wiki_lists.insert(e.name, lists);
        }
        Ok(())
    }

    /// True for a canonical action name (not an alias).
    pub fn is_action(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

    /// Reads the rules from mor-x8.toml and endpoints.toml texts.
    pub fn parse(x8: &str, wiki: &str) -> Result<Rules, String> {
        let x: X8File = toml::from_str(x8).map_err(|e| format!("mor-x8.toml: {e}"))?;
        let w: WikiFile = toml::from_str(wiki).map_err(|e| format!("endpoints.toml: {e}"))?;

        dup_free("[global].order", &x.global.order)?;
        let never: HashSet<&str> = x.global.never_hashed.iter().map(String::as_str).collect();
        for n in &never {
            if !x.global.order.iter().any(|o| o == n) {
                return Err(format!("never_hashed `{n}` is not in [global].order"));
            }
        }
        for name in x.filters.keys() {
            if filter_named(name).is_none() {
                return Err(format!("[filters].{name} has no implementation"));
            }
        }
        for name in FILTERED {
            if !x.filters.contains_key(*name) {
                return Err(format!(
                    "filter `{name}` is implemented but not in [filters]"
                ));
            }
        }
        let order = x
            .global
            .order
            .iter()
            .filter(|n| !never.contains(n.as_str()))
            .map(|n| (n.clone(), filter_named(n)))
            .collect();

        let mut kinds = HashMap::new();
        let a = &x.actions;
        for (list, kind) in [
            (&a.hash_checked, Kind::HashChecked),
            (&a.login, Kind::Login),
            (&a.balance_over_http, Kind::BalanceOverHttp),
            (&a.no_auth, Kind::NoAuth),
            (&a.by_username_only, Kind::ByUsernameOnly),
        ] {
            for name in list {
                if kinds.insert(name.clone(), kind).is_some() {
                    return Err(format!("action `{name}` is in two groups"));
                }
            }
        }
        for name in x.own_lists.keys() {
            if kinds.get(name) != Some(&Kind::HashChecked) {
                return Err(format!("[own_lists].{name} is not hash_checked"));
            }
        }
        let mut callers = HashMap::new();
        for n in &x.caller.by_uniquehash_id {
            callers.insert(n.clone(), CallerBy::UniquehashId);
        }
        for n in &x.caller.by_username {
            callers.insert(n.clone(), CallerBy::Username);
        }
        // Every other name the facts mention is an action answered openly.
        let mentioned = a
            .get_always_allowed
            .iter()
            .chain(callers.keys())
            .chain(x.aliases.values());
        for name in mentioned {
            kinds.entry(name.clone()).or_insert(Kind::Open);
        }
        for alias in x.aliases.keys() {
            if kinds.contains_key(alias) {
                return Err(format!("alias `{alias}` is also an action name"));
            }
        }

        let mut wiki_lists = HashMap::new();
        let mut envelopes = HashMap::new();
        for e in w
            .endpoint
            .iter()
            .filter(|e| matches!(e.product.as_deref(), Some("MOR" | "MOR and M4")))
        {
            if let Some(wrapper) = &e.error_wrapper {
                let env = match wrapper.as_str() {
                    "page/status" => Envelope::PageStatus,
                    "page" => Envelope::Page,
                    other => return Err(format!("{}: unknown error_wrapper '{other}'", e.name)),
                };
                envelopes.insert(e.name.clone(), env);
            }
            if kinds.contains_key(&e.name) || x.aliases.contains_key(&e.name) {
                continue;
            }
            if e.no_hash {
                kinds.insert(e.name.clone(), Kind::Open);
            } else {
                kinds.insert(e.name.clone(), Kind::WikiHashed);
                wiki_lists.insert(e.name.clone(), vec![e.hash_params.clone()]);
            }
        }

        Ok(Rules {
            kinds,
            aliases: x.aliases.into_iter().collect(),
            get_always: a.get_always_allowed.iter().cloned().collect(),
            callers,
            order,
            own_lists: x.own_lists.into_iter().collect(),
            wiki_lists,
            envelopes,
        })
    }

    /// The canonical action for a route name (an action or an alias).
    pub fn resolve(&self, name: &str) -> Option<&str> {
        let target = self.aliases.get(name).map_or(name, String::as_str);
        self.kinds.get_key_value(target).map(|(k, _)| k.as_str())
    }

    /// How the action is handled (`Open` for a name not in the facts).
    pub fn kind(&self, action: &str) -> Kind {
        self.kinds.get(action).copied().unwrap_or(Kind::Open)
    }

    /// Which parameter names the caller.
    pub fn caller_by(&self, action: &str) -> CallerBy {
        self.callers.get(action).copied().unwrap_or(CallerBy::U)
    }

    /// The action's error envelope.
    pub fn envelope(&self, action: &str) -> Envelope {
        self.envelopes
            .get(action)
            .copied()
            .unwrap_or(Envelope::Status)
    }

    /// The methods newer than X8 (hash lists from the wiki), sorted.
    #[cfg(test)]
    pub fn wiki_methods(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.wiki_lists.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The text MOR hashes (before the key) for this call; `None` when a
    /// hashed parameter is a list or a hash, so that no hash can match.
    pub fn hashed_text(&self, action: &str, params: &Params) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(list) = self.own_lists.get(action) {
            // Prose rule: quickstats_get with u=admin hashes nothing.
            let admin_u = params.get("u").and_then(Value::to_s).as_deref() == Some(b"admin");
            if action == "quickstats_get" && admin_u {
                return Some(out);
            }
            for name in list {
                match params.get(name) {
                    None => {}
                    Some(v) => out.extend_from_slice(&v.to_s()?),
                }
            }
            return Some(out);
        }
        if let Some(lists) = self.wiki_lists.get(action) {
            for name in lists.first().map_or(&[][..], |l| &l[..]) {
                if let Some(v) = params.get(name) {
                    out.extend_from_slice(&v.to_s()?);
                }
            }
            return Some(out);
        }
        for (name, filter) in &self.order {
            if WALK_SKIPS.contains(&(action, name.as_str())) {
                continue;
            }
            let Some(v) = params.get(name).filter(|v| v.truthy()) else {
                continue;
            };
            let piece = match filter {
                Some(f) => f.apply(v),
                None => v
                    .to_s()
                    .map_or(Piece::Unmatchable, |t| Piece::Text(t.into_owned())),
            };
            match piece {
                Piece::Skip => {}
                Piece::Text(t) => out.extend_from_slice(&t),
                Piece::Unmatchable => return None,
            }
        }
        Some(out)
    }

    /// Every text MOR may hash for this call (one, or one per list of an
    /// undetermined newer action); `None` as [`Rules::hashed_text`].
    pub fn hashed_texts(&self, action: &str, params: &Params) -> Option<Vec<Vec<u8>>> {
        match self.wiki_lists.get(action) {
            Some(lists) if lists.len() > 1 => lists
                .iter()
                .map(|l| {
                    let mut out = Vec::new();
                    for name in l {
                        if let Some(v) = params.get(name) {
                            out.extend_from_slice(&v.to_s()?);
                        }
                    }
                    Some(out)
                })
                .collect(),
            _ => self.hashed_text(action, params).map(|t| vec![t]),
        }
    }

    /// Allow API, Allow GET API, then (for signed actions) caller, keys and
    /// hash. Other groups pass here; their actions check the rest.
    pub fn decide(
        &self,
        action: &str,
        http_method: &str,
        params: &Params,
        policy: &Policy<'_>,
        dir: &dyn Directory,
    ) -> Verdict {
        let kind = self.kind(action);
        if kind == Kind::NoAuth {
            return Verdict::Serve;
        }
        let get =
            http_method.eq_ignore_ascii_case("GET") || http_method.eq_ignore_ascii_case("HEAD");
        let by = self.caller_by(action);
        let named = params.get(by.param());
        let caller = named.and_then(Value::to_s).and_then(|v| dir.find(by, &v));
        let signed = matches!(kind, Kind::HashChecked | Kind::WikiHashed);
        // Whose Allow API: the caller's owner where MOR knows the caller
        // (signed actions, login, a uniquehash), else the admin's.
        let owner = match &caller {
            Some(p) if signed || kind == Kind::Login || by == CallerBy::UniquehashId => {
                owner_of(p, policy)
            }
            _ => Owner::admin(policy),
        };
        if !owner.allow_api {
            return Verdict::Refuse(API_DISABLED);
        }
        if get && !policy.allow_get && !self.get_always.contains(action) {
            return Verdict::Refuse(GET_DISABLED);
        }
        if !signed {
            return Verdict::Serve;
        }
        let owner = match &caller {
            Some(_) => owner,
            // Prose rule: user_register without an id is signed by the admin.
            None if action == "user_register" && id_blank(named) => Owner::admin(policy),
            None => return Verdict::Refuse(ACCESS_DENIED),
        };
        if owner.hash_off {
            return Verdict::Serve;
        }
        let keys: Vec<&[u8]> = owner.keys.into_iter().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return Verdict::Refuse(NO_SECRET_KEY);
        }
        let Some(texts) = self.hashed_texts(action, params) else {
            return Verdict::Refuse(INCORRECT_HASH);
        };
        let given = params.get("hash").and_then(Value::to_s).unwrap_or_default();
        let ok = keys.iter().any(|k| {
            texts
                .iter()
                .any(|t| sha1_hex(t, k).as_bytes() == given.as_ref())
        });
        if ok {
            Verdict::Serve
        } else {
            Verdict::Refuse(INCORRECT_HASH)
        }
    }
}

/// A caller's owner as the checks need it (`[keys]` of mor-x8.toml).
struct Owner<'a> {
    allow_api: bool,
    hash_off: bool,
    keys: Vec<&'a [u8]>,
}

impl<'a> Owner<'a> {
    fn admin(policy: &Policy<'a>) -> Owner<'a> {
        Owner {
            allow_api: policy.allow_api,
            hash_off: policy.allow_api && !policy.check_hash,
            keys: vec![policy.admin_key],
        }
    }
}

/// A reseller's own switches (Allow API, Disable hash checking).
fn switches(policy: &Policy<'_>, name: &str) -> (bool, bool) {
    policy
        .reseller_switches
        .iter()
        .find(|(n, _, _)| n == name)
        .map_or((true, false), |(_, a, h)| (*a, *h))
}

/// The owner whose settings apply to `p`: the admin for staff and the
/// admin's users; a reseller for itself (the admin's Allow API, key and
/// hash switch count too) and for its users (its own only).
fn owner_of<'a>(p: &Principal, policy: &Policy<'a>) -> Owner<'a> {
    let key_of = |name: &str| {
        policy
            .resellers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_slice())
    };
    let admin = Owner::admin(policy);
    if p.staff {
        return admin;
    }
    if let Some(own) = key_of(&p.username) {
        let (allow, off) = switches(policy, &p.username);
        let mut keys = vec![own];
        if policy.allow_api {
            keys.push(policy.admin_key);
        }
        return Owner {
            allow_api: allow || policy.allow_api,
            hash_off: (allow && off) || admin.hash_off,
            keys,
        };
    }
    match p.owner.as_deref().and_then(|o| key_of(o).map(|k| (o, k))) {
        Some((name, key)) => {
            let (allow, off) = switches(policy, name);
            Owner {
                allow_api: allow,
                hash_off: allow && off,
                keys: vec![key],
            }
        }
        None => admin,
    }
}

/// `id` absent, null or empty.
fn id_blank(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Str(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// Lower-case hex SHA1 of `text` followed by `key`.
pub fn sha1_hex(text: &[u8], key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(text);
    h.update(key);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::embedded().expect("embedded facts parse")
    }

    fn form(q: &str) -> Params {
        Params::from_form(q.as_bytes()).unwrap()
    }

    fn json(j: &str) -> Params {
        Params::from_json(j.as_bytes()).unwrap()
    }

    fn text(r: &Rules, action: &str, p: &Params) -> Option<String> {
        r.hashed_text(action, p)
            .map(|t| String::from_utf8(t).unwrap())
    }

    /// admin (staff), john (admin's), res1 (reseller), ruser (res1's).
    struct Dir;
    impl Directory for Dir {
        fn find(&self, by: CallerBy, v: &[u8]) -> Option<Principal> {
            let v = std::str::from_utf8(v).ok()?;
            let name = match by {
                CallerBy::UniquehashId => v.strip_suffix("uniq")?,
                _ => v,
            };
            let (staff, owner) = match name {
                "admin" | "acc1" => (true, None),
                "john" | "res1" => (false, None),
                "ruser" => (false, Some("res1".to_string())),
                _ => return None,
            };
            Some(Principal {
                username: name.into(),
                staff,
                owner,
            })
        }
    }

    fn resellers() -> Vec<(String, Vec<u8>)> {
        vec![("res1".into(), b"reskey".to_vec())]
    }

    fn policy(res: &[(String, Vec<u8>)]) -> Policy<'_> {
        Policy {
            admin_key: b"admin-key",
            resellers: res,
            allow_api: true,
            allow_get: true,
            check_hash: true,
            reseller_switches: &[],
        }
    }

    fn signed(q: &str, key: &[u8], r: &Rules, action: &str) -> Params {
        let p = form(q);
        let h = sha1_hex(&r.hashed_text(action, &p).unwrap(), key);
        form(&format!("{q}&hash={h}"))
    }

    #[test]
    fn facts_parse_and_groups() {
        let r = rules();
        assert_eq!(r.kind("user_details_get"), Kind::HashChecked);
        assert_eq!(r.kind("user_login"), Kind::Login);
        assert_eq!(r.kind("user_simple_balance_get"), Kind::BalanceOverHttp);
        assert_eq!(r.kind("invoice_xlsx_generate"), Kind::NoAuth);
        assert_eq!(r.kind("user_devices"), Kind::ByUsernameOnly);
        for open in [
            "get_otp",
            "verify_otp",
            "check_rs_user_count",
            "monitoring_addon_activate",
        ] {
            assert_eq!(r.kind(open), Kind::Open, "{open}");
        }
        let wiki = r.wiki_methods();
        for m in [
            "active_calls_get",
            "did_close",
            "did_rates_details_get",
            "did_rates_details_update",
            "ivr_dial_plan_update",
            "local_calls_get",
            "location_rule_get",
            "provider_rules_get",
            "reseller_groups_get",
            "tariffs_get",
            "user_delete",
            "did_terminate",
            "number_pool_create",
            "autodialer_upload_numbers",
        ] {
            assert!(wiki.contains(&m), "{m}");
        }
        // endpoints.toml's eleven, and the 46 of newer-actions.toml.
        assert_eq!(wiki.len(), 11 + 46);
        assert_eq!(r.order.len(), 209 - 3);
    }

    #[test]
    fn aliases_resolve() {
        let r = rules();
        assert_eq!(r.resolve("user_details"), Some("user_details_get"));
        assert_eq!(r.resolve("ma_activate"), Some("monitoring_addon_activate"));
        assert_eq!(r.resolve("simple_balance"), Some("user_simple_balance_get"));
        assert_eq!(r.resolve("login"), Some("user_login"));
        assert_eq!(r.resolve("user_delete"), Some("user_delete"));
        assert_eq!(r.resolve("no_such_method"), None);
        // Wiki-only aliases are not X8 routes.
        assert_eq!(r.resolve("registration"), None);
    }

    #[test]
    fn envelopes_from_the_wiki() {
        let r = rules();
        for a in [
            "did_create",
            "did_device_assign",
            "did_close",
            "did_rates_details_get",
            "did_rates_details_update",
            "ivr_dial_plan_update",
        ] {
            assert_eq!(r.envelope(a), Envelope::PageStatus, "{a}");
        }
        assert_eq!(r.envelope("rate_get"), Envelope::Page);
        assert_eq!(r.envelope("provider_rules_get"), Envelope::Page);
        assert_eq!(r.envelope("user_details_get"), Envelope::Status);
        assert_eq!(r.envelope("system_version_get"), Envelope::Status);
    }

    #[test]
    fn documented_seeds() {
        let r = rules();
        let h = |a: &str, q: &str, k: &[u8]| sha1_hex(&r.hashed_text(a, &form(q)).unwrap(), k);
        assert_eq!(
            h("user_details_get", "u=admin&user_id=123", b"456789"),
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
        assert_eq!(
            h(
                "user_details_update",
                "u=admin&user_id=123&u15=1",
                b"456789"
            ),
            "0ab3ede4e93a55c38855a2cc9b9e169d35442c48"
        );
        assert_eq!(
            h("user_calls_get", "u=admin&s_user=123", b"456789"),
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
        assert_eq!(
            h(
                "device_clis_get",
                "u=admin&devices_id=6&users_id=3",
                b"secret"
            ),
            "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4"
        );
        assert_eq!(
            h("users_get", "u=admin&p=admin1&test=1", b"secret"),
            "c420ef706a02e6449994b7575b25ef5f74cc722b"
        );
    }

    #[test]
    fn global_walk_order_and_filters() {
        let r = rules();
        let t = |q: &str| text(&r, "user_calls_get", &form(q));
        // period_* come before s_user; s_user=all is not hashed.
        assert_eq!(
            t("s_user=5&period_end=9&period_start=1").as_deref(),
            Some("195")
        );
        assert_eq!(t("s_user=all&s_device=all").as_deref(), Some("all"));
        assert_eq!(t("user_id=007").as_deref(), Some("7"));
        assert_eq!(t("user_id=").as_deref(), Some("0"));
        assert_eq!(t("user_id=12a").as_deref(), Some(""));
        assert_eq!(t("period_start=000").as_deref(), Some("0"));
        assert_eq!(t("only_did=01").as_deref(), Some("1"));
        assert_eq!(t("block=1").as_deref(), Some(""));
        assert_eq!(t("block=xtruex").as_deref(), Some("xtruex"));
        assert_eq!(
            t("direction=outgoing&calltype=busy").as_deref(),
            Some("outgoingbusy")
        );
        assert_eq!(t("direction=out&calltype=x").as_deref(), Some(""));
        assert_eq!(t("device=all&balance=-1.5e").as_deref(), Some("all"));
        assert_eq!(t("balance=%2B1.5").as_deref(), Some("+1.5"));
        assert_eq!(t("mtype=12&tariff_id=0042").as_deref(), Some("1242"));
        assert_eq!(t("mtype=1a").as_deref(), Some(""));
        assert_eq!(t("lcr_id=0x1").as_deref(), Some("0x1"), "lcr_id is raw");
        // never_hashed names are skipped; names outside the order too.
        assert_eq!(
            t("pgui=1&device_calerid=2&u=admin&hash=x").as_deref(),
            Some("")
        );
        // A pair without `=` is nil: left out.
        assert_eq!(t("email").as_deref(), Some(""));
        assert_eq!(t("email=").as_deref(), Some(""));
    }

    #[test]
    fn users_filter_line_anchors() {
        let r = rules();
        let t = |q: &str| text(&r, "users_get_x", &form(q));
        assert_eq!(t("users=postpaid").as_deref(), Some("postpaid"));
        assert_eq!(t("users=1,2,3").as_deref(), Some("1,2,3"));
        assert_eq!(t("users=x%0Aall").as_deref(), Some("x\nall"));
        assert_eq!(t("users=all%0Ax").as_deref(), Some("all\nx"));
        assert_eq!(t("users=x%0Ay").as_deref(), Some(""));
        assert_eq!(t("users=all%0D").as_deref(), Some(""), "\\r is no line end");
        assert_eq!(t("users=").as_deref(), Some(""));
        assert_eq!(text(&r, "x", &json(r#"{"users":5}"#)).as_deref(), Some(""));
        assert_eq!(
            text(&r, "x", &json(r#"{"users":["all"]}"#)).as_deref(),
            Some("")
        );
        assert_eq!(
            text(&r, "x", &json(r#"{"block":true}"#)).as_deref(),
            Some("")
        );
    }

    #[test]
    fn json_types_in_the_walk() {
        let r = rules();
        let t = |j: &str| text(&r, "user_details_update", &json(j));
        assert_eq!(
            t(r#"{"u0":false,"u1":null,"u2":true}"#).as_deref(),
            Some("true")
        );
        assert_eq!(t(r#"{"credit":5.0,"u3":1.5}"#).as_deref(), Some("1.55.0"));
        assert_eq!(t(r#"{"user_id":123,"u15":0}"#).as_deref(), Some("1230"));
        assert_eq!(t(r#"{"user_id":"007"}"#).as_deref(), Some("7"));
        assert_eq!(t(r#"{"user_id":1.0}"#).as_deref(), Some(""), "not digits");
        assert_eq!(t(r#"{"mtype":5.0}"#).as_deref(), Some("5.0"));
        assert_eq!(t(r#"{"mtype":true}"#).as_deref(), Some("true"));
        assert_eq!(t(r#"{"mtype":"x"}"#).as_deref(), Some(""));
        // A list or hash where a value is hashed: no hash can match.
        assert_eq!(t(r#"{"u0":[1]}"#), None);
        assert_eq!(t(r#"{"u0":{"a":1}}"#), None);
        assert_eq!(t(r#"{"mtype":[1]}"#), None);
        assert_eq!(text(&r, "x", &form("email[]=a")), None);
        // ...but a list failing a filter is simply not hashed.
        assert_eq!(t(r#"{"user_id":[1]}"#).as_deref(), Some(""));
        assert_eq!(t(r#"{"pgui":[1]}"#).as_deref(), Some(""), "never hashed");
    }

    #[test]
    fn own_lists_raw_in_order() {
        let r = rules();
        assert_eq!(
            text(&r, "users_get", &form("p=admin1&u=admin&user_id=7")).as_deref(),
            Some("adminadmin1")
        );
        assert_eq!(
            text(&r, "voucher_use", &form("voucher_number=007&user_id=5")).as_deref(),
            Some("007")
        );
        assert_eq!(
            text(&r, "device_update", &form("port=5060&device=3&host=h")).as_deref(),
            Some("3h5060")
        );
        assert_eq!(
            text(&r, "subscriptions_get", &form("user_id=5")).as_deref(),
            Some("")
        );
        assert_eq!(
            text(
                &r,
                "subscription_delete",
                &json(r#"{"subscription_id":false,"subscription_delete_action":null}"#)
            )
            .as_deref(),
            Some("false")
        );
        assert_eq!(text(&r, "voucher_use", &form("voucher_number[]=1")), None);
        assert_eq!(
            text(&r, "quickstats_get", &form("u=admin")).as_deref(),
            Some("")
        );
        assert_eq!(
            text(&r, "quickstats_get", &form("u=john")).as_deref(),
            Some("john")
        );
    }

    #[test]
    fn card_from_group_sell_leaves_number_out() {
        let r = rules();
        let p = form("id=5&quantity=2&number=99");
        assert_eq!(text(&r, "card_from_group_sell", &p).as_deref(), Some("52"));
        assert_eq!(text(&r, "card_balance_get", &p).as_deref(), Some("9952"));
    }

    #[test]
    fn wiki_lists_for_newer_methods() {
        let r = rules();
        assert_eq!(
            text(&r, "local_calls_get", &form("s_user=all&till=2&from=1&x=9")).as_deref(),
            Some("12all")
        );
        assert_eq!(
            text(&r, "active_calls_get", &form("u=admin&s_did=1")).as_deref(),
            Some("admin")
        );
        assert_eq!(
            text(
                &r,
                "ivr_dial_plan_update",
                &form("ivr_dial_plan_id=1&u=admin")
            )
            .as_deref(),
            Some("admin1")
        );
        assert_eq!(
            text(&r, "user_delete", &form("user_id=007")).as_deref(),
            Some("007"),
            "raw"
        );
    }

    #[test]
    fn gates() {
        let r = rules();
        let res = resellers();
        let mut pol = policy(&res);
        pol.allow_get = false;
        let p = form("u=admin");
        let d = |a: &str, m: &str, pol: &Policy| r.decide(a, m, &p, pol, &Dir);
        assert_eq!(
            d("user_details_get", "GET", &pol),
            Verdict::Refuse(GET_DISABLED)
        );
        assert_eq!(
            d("user_details_get", "head", &pol),
            Verdict::Refuse(GET_DISABLED)
        );
        assert_eq!(d("user_login", "GET", &pol), Verdict::Refuse(GET_DISABLED));
        assert_eq!(d("user_simple_balance_get", "GET", &pol), Verdict::Serve);
        assert_eq!(d("get_otp", "GET", &pol), Verdict::Serve);
        assert_eq!(
            d("user_details_get", "POST", &pol),
            Verdict::Refuse(INCORRECT_HASH)
        );
        pol.allow_api = false;
        assert_eq!(d("user_login", "POST", &pol), Verdict::Refuse(API_DISABLED));
        assert_eq!(
            d("user_simple_balance_get", "GET", &pol),
            Verdict::Refuse(API_DISABLED)
        );
        assert_eq!(d("invoice_xlsx_generate", "GET", &pol), Verdict::Serve);
    }

    #[test]
    fn hash_compare_is_exact_lower_hex() {
        let r = rules();
        let res = resellers();
        let pol = policy(&res);
        let good = signed("u=admin&user_id=123", b"admin-key", &r, "user_details_get");
        assert_eq!(
            r.decide("user_details_get", "POST", &good, &pol, &Dir),
            Verdict::Serve
        );
        let h = sha1_hex(b"123", b"admin-key");
        for bad in [
            h.to_uppercase(),
            h[..39].to_string(),
            format!("{h}0"),
            String::new(),
        ] {
            let p = form(&format!("u=admin&user_id=123&hash={bad}"));
            assert_eq!(
                r.decide("user_details_get", "POST", &p, &pol, &Dir),
                Verdict::Refuse(INCORRECT_HASH),
                "{bad}"
            );
        }
        let mut off = pol;
        off.check_hash = false;
        let p = form("u=admin&user_id=123&hash=nope");
        assert_eq!(
            r.decide("user_details_get", "POST", &p, &off, &Dir),
            Verdict::Serve
        );
    }

    #[test]
    fn owner_keys() {
        let r = rules();
        let res = resellers();
        let pol = policy(&res);
        let a = "user_details_get";
        let d = |q: &str, k: &[u8]| r.decide(a, "POST", &signed(q, k, &r, a), &pol, &Dir);
        assert_eq!(
            d("u=ruser&user_id=5", b"admin-key"),
            Verdict::Refuse(INCORRECT_HASH)
        );
        assert_eq!(d("u=ruser&user_id=5", b"reskey"), Verdict::Serve);
        assert_eq!(d("u=res1&user_id=5", b"reskey"), Verdict::Serve);
        assert_eq!(d("u=res1&user_id=5", b"admin-key"), Verdict::Serve);
        assert_eq!(d("u=john&user_id=5", b"admin-key"), Verdict::Serve);
        assert_eq!(
            d("u=john&user_id=5", b"reskey"),
            Verdict::Refuse(INCORRECT_HASH)
        );
        assert_eq!(d("u=acc1&user_id=5", b"admin-key"), Verdict::Serve);
        // Unknown or missing caller: no hash check, Access Denied.
        assert_eq!(
            d("u=nobody&user_id=5", b"admin-key"),
            Verdict::Refuse(ACCESS_DENIED)
        );
        assert_eq!(d("user_id=5", b"admin-key"), Verdict::Refuse(ACCESS_DENIED));
        // No resellers configured: ruser counts as the admin's.
        let none = policy(&[]);
        let p = signed("u=ruser&user_id=5", b"admin-key", &r, a);
        assert_eq!(r.decide(a, "POST", &p, &none, &Dir), Verdict::Serve);
    }

    #[test]
    fn callers_by_other_params() {
        let r = rules();
        let res = resellers();
        let pol = policy(&res);
        // user_balance_get: the caller is `username` (ruser: reseller key only).
        let a = "user_balance_get";
        let p = signed("u=admin&username=ruser", b"reskey", &r, a);
        assert_eq!(r.decide(a, "POST", &p, &pol, &Dir), Verdict::Serve);
        let p = signed("u=admin&username=ruser", b"admin-key", &r, a);
        assert_eq!(
            r.decide(a, "POST", &p, &pol, &Dir),
            Verdict::Refuse(INCORRECT_HASH)
        );
        // user_register: the caller is the owner whose uniquehash is `id`.
        let a = "user_register";
        let p = signed("id=res1uniq&username=x", b"reskey", &r, a);
        assert_eq!(r.decide(a, "POST", &p, &pol, &Dir), Verdict::Serve);
        let p = signed("id=nouniq&username=x", b"admin-key", &r, a);
        assert_eq!(
            r.decide(a, "POST", &p, &pol, &Dir),
            Verdict::Refuse(ACCESS_DENIED)
        );
        // ...and without an id, the admin key.
        let p = signed("username=x", b"admin-key", &r, a);
        assert_eq!(r.decide(a, "POST", &p, &pol, &Dir), Verdict::Serve);
        let p = signed("username=x", b"reskey", &r, a);
        assert_eq!(
            r.decide(a, "POST", &p, &pol, &Dir),
            Verdict::Refuse(INCORRECT_HASH)
        );
    }

    #[test]
    fn facts_errors_are_reported() {
        let bad = X8_FACTS.replace("mtype = ", "mystery = ");
        assert!(Rules::parse(&bad, WIKI_FACTS).is_err());
        let bad = X8_FACTS.replace("login = [\n", "surprise = [\n");
        assert!(Rules::parse(&bad, WIKI_FACTS).is_err());
        let bad = WIKI_FACTS.replace("error_wrapper = \"page\"", "error_wrapper = \"body\"");
        assert!(Rules::parse(X8_FACTS, &bad).is_err());
    }
}
