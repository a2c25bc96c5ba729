//! The method catalogue: how MOR authenticates each API action (MOR X8's
//! model: one global hash order with type filters, a few own lists, actions
//! answered without a hash), canonical names, legacy aliases, error envelopes.
//! `config/catalog.toml` documents the format.

use std::collections::{BTreeMap, HashSet};

use fnv::{FnvHashMap, FnvHashSet};

use serde::Deserialize;

/// The catalogue shipped in `config/catalog.toml`, embedded at build time.
pub const EMBEDDED: &str = include_str!("../../config/catalog.toml");

/// Which server product the gateway fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum Product {
    /// Kolmisoft MOR.
    #[serde(rename = "MOR")]
    Mor,
    /// Kolmisoft M4.
    #[serde(rename = "M4")]
    M4,
}

/// Which MOR release's rule an entry describes, where MOR X8 and the newer
/// wiki pages disagree (`api.mor_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MorVersion {
    /// MOR X8 (2017), the server model of shared/mor-api/mor-x8.toml.
    X8,
    /// Current MOR, as the newest wiki pages document it.
    #[default]
    Current,
}

impl MorVersion {
    /// The name used in the config.
    pub fn label(self) -> &'static str {
        match self {
            MorVersion::X8 => "x8",
            MorVersion::Current => "current",
        }
    }
}

/// How MOR authenticates an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Hash of the global order's present names, after filters.
    #[default]
    Global,
    /// Hash of the method's own list, raw values.
    Own,
    /// No hash; MOR checks `u` + `p` itself.
    Login,
    /// Balance over HTTP: no user, no hash, GET always allowed.
    Balance,
    /// No hash and no Allow-API check.
    NoAuth,
    /// MOR serves it with `u` alone; refused at the edge.
    UsernameOnly,
    /// Forwarded without a hash.
    Unsigned,
    /// Always refused at the edge.
    Refuse,
    /// Hash-checked by MOR, but the public documentation does not settle
    /// which parameters are hashed: `api.undetermined` decides.
    Undetermined,
}

impl Auth {
    /// True when the gateway verifies a hash for this rule.
    pub fn hashed(self) -> bool {
        matches!(self, Auth::Global | Auth::Own)
    }

    /// The name used in the catalogue file.
    pub fn label(self) -> &'static str {
        match self {
            Auth::Global => "global",
            Auth::Own => "own",
            Auth::Login => "login",
            Auth::Balance => "balance",
            Auth::NoAuth => "no_auth",
            Auth::UsernameOnly => "username_only",
            Auth::Unsigned => "unsigned",
            Auth::Refuse => "refuse",
            Auth::Undetermined => "undetermined",
        }
    }
}

/// Whose owner's key signs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    /// The user named by `u`.
    #[default]
    U,
    /// The user named by `username`.
    Username,
    /// The user whose uniquehash is `id`.
    UniquehashId,
}

/// Where MOR puts the error element for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// `<status><error>…</error></status>`.
    #[default]
    Status,
    /// `<page><status><error>…</error></status></page>`.
    PageStatus,
    /// `<page><error>…</error></page>`.
    Page,
}

/// A named filter kind (see `config/catalog.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// Digits (empty passes), hashed as an integer.
    Integer,
    /// One or more digits, hashed as sent.
    Digits,
    /// Digits or `all`.
    DigitsOrAll,
    /// Only `0-9 . - +`.
    NumberChars,
    /// A string with some line exactly postpaid/prepaid/all/`[0-9,]+`.
    UsersLines,
    /// A string containing `true` or `false`.
    ContainsBool,
    /// A string of digits, or any JSON non-string.
    DigitsOrNonstring,
}

/// A type filter on one hash-covered name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Filter {
    /// A named kind.
    Kind(FilterKind),
    /// Exactly one of these strings.
    OneOf {
        /// The accepted values.
        one_of: Vec<String>,
    },
}

/// One API action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Canonical name, forwarded to MOR.
    pub name: String,
    /// Products that have this entry.
    pub products: Vec<Product>,
    /// Legacy names rewritten to `name`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// How it authenticates.
    #[serde(default)]
    pub auth: Auth,
    /// With [`Auth::Own`]: the names hashed, in order.
    #[serde(default)]
    pub hash: Vec<String>,
    /// With [`Auth::Global`]: names of the order this action skips.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// With [`Auth::Own`]: when these params have these values, only the key is hashed.
    #[serde(default)]
    pub hash_nothing_when: BTreeMap<String, String>,
    /// Whose owner's key signs.
    #[serde(default)]
    pub caller: Caller,
    /// Error envelope.
    #[serde(default)]
    pub envelope: Envelope,
    /// Served over GET even when Allow GET API is off.
    #[serde(default)]
    pub get_always: bool,
    /// Legacy aliases MOR also routes with a `/<id>` suffix (the canonical
    /// name always takes one: MOR's generic route).
    #[serde(default)]
    pub id_routes: Vec<String>,
    /// The `/<id>` (params `id`) is a secret (a SIP password): never logged.
    #[serde(default)]
    pub secret_id: bool,
    /// Takes a file: a `multipart/form-data` body is read (strictly).
    #[serde(default)]
    pub multipart: bool,
    /// With [`Auth::Undetermined`]: the hash lists the documentation gives
    /// (one per revision), for `api.undetermined = "candidates"`.
    #[serde(default)]
    pub candidates: Vec<Vec<String>>,
    /// The MOR versions this entry describes (empty: every version).
    #[serde(default)]
    pub mor: Vec<MorVersion>,
    /// Why the entry is as it is.
    #[serde(default)]
    pub note: Option<String>,
}

/// Changes to one method, from `[api.methods.NAME]` in the gateway config.
/// Absent fields keep the catalogued value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodPatch {
    /// New rule.
    pub auth: Option<Auth>,
    /// New own list (implies `auth = "own"` when `auth` is not given).
    pub hash: Option<Vec<String>>,
    /// New global-order exclusions.
    pub exclude: Option<Vec<String>>,
    /// New caller rule.
    pub caller: Option<Caller>,
    /// New envelope.
    pub envelope: Option<Envelope>,
    /// New GET exemption.
    pub get_always: Option<bool>,
    /// Extra aliases.
    pub aliases: Option<Vec<String>>,
    /// New hash lists for an undetermined rule.
    pub candidates: Option<Vec<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    global_order: Option<Vec<String>>,
    #[serde(default)]
    never_hashed: Option<Vec<String>>,
    #[serde(default)]
    filters: Option<BTreeMap<String, Filter>>,
    #[serde(default, rename = "method")]
    methods: Vec<Method>,
}

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// TOML syntax, unknown key or wrong type.
    #[error("{0}")]
    Parse(String),
    /// A name is malformed or used twice, or fields do not fit the rule.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> CatalogError {
    CatalogError::Invalid(msg.into())
}

/// Result of looking a request's method name up.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    /// Index, for [`Catalog::get`].
    pub index: usize,
    /// The catalogued method.
    pub method: &'a Method,
    /// The alias used, if the request named one.
    pub alias: Option<&'a str>,
}

/// The loaded catalogue for one product.
#[derive(Debug, Clone)]
pub struct Catalog {
    product: Product,
    version: MorVersion,
    methods: Vec<Method>,
    // The maps below are looked up once or more per call with names a
    // client chose, and hold only the catalogue's own names: hashed with
    // FNV (short keys, no per-map seed needed: a client inserts nothing, so
    // it cannot flood a map with colliding keys), not SipHash.
    /// name or alias -> (index, is an alias)
    index: FnvHashMap<String, (usize, bool)>,
    global_order: Vec<String>,
    /// Position of each hashable name in the global order.
    position: FnvHashMap<String, usize>,
    never_hashed: FnvHashSet<String>,
    filters: FnvHashMap<String, Filter>,
}

/// True for names MOR routes can carry: lower-case letters, digits, `_`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_list(what: &str, method: &str, list: &[String]) -> Result<(), CatalogError> {
    let mut seen = HashSet::new();
    for h in list {
        if h.is_empty() || !seen.insert(h) {
            return Err(invalid(format!(
                "method {method}: {what} has an empty or repeated name '{h}'"
            )));
        }
    }
    Ok(())
}

fn check_method(m: &Method) -> Result<(), CatalogError> {
    if !valid_name(&m.name) {
        return Err(invalid(format!(
            "method name '{}' must be lower-case letters, digits and _",
            m.name
        )));
    }
    if m.products.is_empty() {
        return Err(invalid(format!("method {}: products is empty", m.name)));
    }
    check_list("hash", &m.name, &m.hash)?;
    check_list("exclude", &m.name, &m.exclude)?;
    if m.auth != Auth::Own && (!m.hash.is_empty() || !m.hash_nothing_when.is_empty()) {
        return Err(invalid(format!(
            "method {}: hash and hash_nothing_when go with auth = \"own\" (auth is \"{}\")",
            m.name,
            m.auth.label()
        )));
    }
    if m.auth != Auth::Undetermined && !m.candidates.is_empty() {
        return Err(invalid(format!(
            "method {}: candidates go with auth = \"undetermined\"",
            m.name
        )));
    }
    for c in &m.candidates {
        check_list("candidates", &m.name, c)?;
    }
    if m.auth != Auth::Global && !m.exclude.is_empty() {
        return Err(invalid(format!(
            "method {}: exclude goes with auth = \"global\"",
            m.name
        )));
    }
    for r in &m.id_routes {
        if *r != m.name && !m.aliases.contains(r) {
            return Err(invalid(format!(
                "method {}: id route '{r}' is neither its name nor an alias",
                m.name
            )));
        }
    }
    Ok(())
}

impl Catalog {
    /// Parses catalogue TOML and keeps the entries of `product` for current
    /// MOR.
    pub fn parse(text: &str, product: Product) -> Result<Catalog, CatalogError> {
        Catalog::parse_for(text, product, MorVersion::Current)
    }

    /// Parses catalogue TOML and keeps the entries of `product` that
    /// describe `version`.
    pub fn parse_for(
        text: &str,
        product: Product,
        version: MorVersion,
    ) -> Result<Catalog, CatalogError> {
        let mut cat = Catalog {
            product,
            version,
            methods: Vec::new(),
            index: FnvHashMap::default(),
            global_order: Vec::new(),
            position: FnvHashMap::default(),
            never_hashed: FnvHashSet::default(),
            filters: FnvHashMap::default(),
        };
        cat.extend(text)?;
        if cat.global_order.is_empty() {
            return Err(invalid("global_order is missing or empty"));
        }
        Ok(cat)
    }

    /// Merges catalogue TOML into this one: an entry with an existing name
    /// replaces that entry, new names are added; `global_order`,
    /// `never_hashed` and `filters` replace the current ones when given.
    pub fn extend(&mut self, text: &str) -> Result<(), CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        if let Some(order) = raw.global_order {
            let mut seen = HashSet::new();
            for p in &order {
                if p.is_empty() || !seen.insert(p.as_str()) {
                    return Err(invalid(format!(
                        "global_order has an empty or repeated name '{p}'"
                    )));
                }
            }
            self.global_order = order;
        }
        if let Some(n) = raw.never_hashed {
            self.never_hashed = n.into_iter().collect();
        }
        if let Some(f) = raw.filters {
            self.filters = f.into_iter().collect();
        }
        self.position = self
            .global_order
            .iter()
            .enumerate()
            .filter(|(_, n)| !self.never_hashed.contains(*n))
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut seen = HashSet::new();
        for m in raw.methods {
            if !m.products.contains(&self.product)
                || !(m.mor.is_empty() || m.mor.contains(&self.version))
            {
                continue;
            }
            check_method(&m)?;
            if !seen.insert(m.name.clone()) {
                return Err(invalid(format!("method '{}' is listed twice", m.name)));
            }
            self.put(m)?;
        }
        Ok(())
    }

    /// Adds `m`, replacing an entry of the same name (and its aliases).
    fn put(&mut self, m: Method) -> Result<(), CatalogError> {
        let idx = match self.index.get(&m.name) {
            Some(&(i, false)) => {
                let old = std::mem::take(&mut self.methods[i].aliases);
                for a in old {
                    self.index.remove(&a);
                }
                i
            }
            Some(&(_, true)) => {
                return Err(invalid(format!(
                    "method name '{}' is already an alias",
                    m.name
                )))
            }
            None => {
                self.methods.push(m.clone());
                self.index
                    .insert(m.name.clone(), (self.methods.len() - 1, false));
                self.methods.len() - 1
            }
        };
        for a in &m.aliases {
            self.insert_alias(a, idx)?;
        }
        self.methods[idx] = m;
        Ok(())
    }

    fn insert_alias(&mut self, alias: &str, idx: usize) -> Result<(), CatalogError> {
        if !valid_name(alias) {
            return Err(invalid(format!(
                "alias '{alias}' must be lower-case letters, digits and _"
            )));
        }
        match self.index.get(alias) {
            Some(&(i, true)) if i == idx => Ok(()),
            Some(_) => Err(invalid(format!(
                "name '{alias}' is used by two methods or aliases"
            ))),
            None => {
                self.index.insert(alias.to_string(), (idx, true));
                Ok(())
            }
        }
    }

    /// Adds a configured alias for an existing method.
    pub fn add_alias(&mut self, alias: &str, target: &str) -> Result<(), CatalogError> {
        let (idx, target_is_alias) = *self
            .index
            .get(target)
            .ok_or_else(|| invalid(format!("target '{target}' is not a catalogued method")))?;
        if target_is_alias {
            return Err(invalid(format!(
                "target '{target}' is itself an alias; name the canonical method"
            )));
        }
        self.insert_alias(alias, idx)?;
        self.methods[idx].aliases.push(alias.to_string());
        Ok(())
    }

    /// Applies a config patch to `name`, creating the method (global rule)
    /// when it is not catalogued.
    pub fn patch(&mut self, name: &str, p: &MethodPatch) -> Result<(), CatalogError> {
        let mut m = match self.index.get(name) {
            Some(&(i, false)) => self.methods[i].clone(),
            Some(&(_, true)) => {
                return Err(invalid(format!(
                    "'{name}' is an alias; name the canonical method"
                )))
            }
            None => Method {
                name: name.to_string(),
                products: vec![self.product],
                aliases: Vec::new(),
                auth: Auth::Global,
                hash: Vec::new(),
                exclude: Vec::new(),
                hash_nothing_when: BTreeMap::new(),
                caller: Caller::U,
                envelope: Envelope::Status,
                get_always: false,
                id_routes: Vec::new(),
                secret_id: false,
                multipart: false,
                candidates: Vec::new(),
                mor: Vec::new(),
                note: Some("added by the gateway config".into()),
            },
        };
        if let Some(h) = &p.hash {
            m.hash = h.clone();
            m.auth = Auth::Own;
        }
        if let Some(c) = &p.candidates {
            m.candidates = c.clone();
            m.auth = Auth::Undetermined;
        }
        if let Some(a) = p.auth {
            m.auth = a;
        }
        if m.auth != Auth::Undetermined {
            m.candidates.clear();
        }
        if m.auth != Auth::Own {
            m.hash.clear();
            m.hash_nothing_when.clear();
        }
        if let Some(x) = &p.exclude {
            m.exclude = x.clone();
        }
        if m.auth != Auth::Global {
            m.exclude.clear();
        }
        if let Some(c) = p.caller {
            m.caller = c;
        }
        if let Some(e) = p.envelope {
            m.envelope = e;
        }
        if let Some(g) = p.get_always {
            m.get_always = g;
        }
        if let Some(extra) = &p.aliases {
            for a in extra {
                if !m.aliases.contains(a) {
                    m.aliases.push(a.clone());
                }
            }
        }
        m.note = Some(match m.note.take() {
            Some(n) if !n.contains("gateway config") => {
                format!("{n}; changed by the gateway config")
            }
            Some(n) => n,
            None => "changed by the gateway config".into(),
        });
        check_method(&m)?;
        self.put(m)
    }

    /// Finds a method by canonical name or alias.
    pub fn lookup(&self, name: &str) -> Option<Found<'_>> {
        let (index, is_alias) = *self.index.get(name)?;
        let method = &self.methods[index];
        let alias = if is_alias {
            method
                .aliases
                .iter()
                .find(|a| *a == name)
                .map(String::as_str)
        } else {
            None
        };
        Some(Found {
            index,
            method,
            alias,
        })
    }

    /// The method at `index` (from [`Found::index`]).
    pub fn get(&self, index: usize) -> Option<&Method> {
        self.methods.get(index)
    }

    /// The MOR version whose entries were kept.
    pub fn version(&self) -> MorVersion {
        self.version
    }

    /// The server-wide order of hash-covered names.
    pub fn global_order(&self) -> &[String] {
        &self.global_order
    }

    /// Position of `name` in the global order, unless it is never hashed.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.position.get(name).copied()
    }

    /// The filter on `name`, if any.
    pub fn filter(&self, name: &str) -> Option<&Filter> {
        self.filters.get(name)
    }

    /// Number of methods.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// True if no methods were loaded.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Number of aliases.
    pub fn alias_count(&self) -> usize {
        self.index.values().filter(|(_, a)| *a).count()
    }

    /// All methods, in file order.
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// A human description of a method's effective rule (for `check --method`).
    pub fn describe(&self, name: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let Some(f) = self.lookup(name) else {
            let _ = writeln!(
                s,
                "{name}: not catalogued; hashed by the global order (unknown_methods decides)"
            );
            return s;
        };
        let m = f.method;
        if let Some(a) = f.alias {
            let _ = writeln!(s, "{a}: legacy alias of {}", m.name);
        }
        let _ = writeln!(s, "method     {}", m.name);
        if !m.aliases.is_empty() {
            let _ = writeln!(s, "aliases    {}", m.aliases.join(", "));
        }
        let rule = match m.auth {
            Auth::Global => {
                let mut t =
                    "hash: every present name of the global order, after filters".to_string();
                if !m.exclude.is_empty() {
                    let _ = write!(t, ", except {}", m.exclude.join(", "));
                }
                t
            }
            Auth::Own => {
                let mut t = format!("hash: own list [{}], raw values", m.hash.join(", "));
                for (k, v) in &m.hash_nothing_when {
                    let _ = write!(t, "; nothing when {k}={v}");
                }
                t
            }
            Auth::Login => "no hash: MOR checks u + p (login)".into(),
            Auth::Balance => "no hash: balance over HTTP".into(),
            Auth::NoAuth => "no hash, no Allow-API check".into(),
            Auth::UsernameOnly => {
                "refused: MOR would serve it with u alone (set auth = \"unsigned\" to forward)"
                    .into()
            }
            Auth::Unsigned => "forwarded without a hash".into(),
            Auth::Refuse => "refused at the edge".into(),
            Auth::Undetermined => {
                let lists: Vec<String> = m
                    .candidates
                    .iter()
                    .map(|c| format!("[{}]", c.join(", ")))
                    .collect();
                format!(
                    "hash: undetermined (api.undetermined decides); documented lists: {}",
                    if lists.is_empty() {
                        "none".to_string()
                    } else {
                        lists.join(" or ")
                    }
                )
            }
        };
        let _ = writeln!(s, "rule       {rule}");
        if m.auth.hashed() || m.auth == Auth::Undetermined {
            let caller = match m.caller {
                Caller::U => "the user named by u",
                Caller::Username => "the user named by username",
                Caller::UniquehashId => "the owner of the uniquehash in id",
            };
            let _ = writeln!(s, "signed by  the key of the owner of {caller}");
        }
        let env = match m.envelope {
            Envelope::Status => "<status><error>",
            Envelope::PageStatus => "<page><status><error>",
            Envelope::Page => "<page><error>",
        };
        let _ = writeln!(s, "errors     {env}");
        if m.get_always {
            let _ = writeln!(s, "GET        always allowed");
        }
        let _ = writeln!(
            s,
            "/<id>      {}/<id> (params id){}{}",
            m.name,
            if m.id_routes.is_empty() {
                String::new()
            } else {
                format!(", and under {}", m.id_routes.join(", "))
            },
            if m.secret_id {
                "; the id is a secret, never logged"
            } else {
                ""
            }
        );
        if !m.mor.is_empty() {
            let v: Vec<&str> = m.mor.iter().map(|v| v.label()).collect();
            let _ = writeln!(s, "version    MOR {}", v.join(", "));
        }
        if let Some(n) = &m.note {
            let _ = writeln!(s, "note       {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X8: &str = include_str!("../sim/facts/mor-x8.toml");

    fn mor() -> Catalog {
        Catalog::parse(EMBEDDED, Product::Mor).unwrap()
    }

    fn x8() -> Catalog {
        Catalog::parse_for(EMBEDDED, Product::Mor, MorVersion::X8).unwrap()
    }

    fn strings(v: &toml::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn embedded_catalogue_loads_for_both_products() {
        let m4 = Catalog::parse(EMBEDDED, Product::M4).unwrap();
        assert_eq!(
            m4.lookup("users_get").unwrap().method.hash,
            ["u", "user_id"]
        );
        assert_eq!(mor().lookup("users_get").unwrap().method.hash, ["u", "p"]);
    }

    /// The catalogue restates MOR X8's facts: every action in its group,
    /// the own lists, callers, GET exemptions, aliases and the order.
    #[test]
    fn catalogue_matches_the_x8_facts() {
        let x: toml::Value = toml::from_str(X8).unwrap();
        let c = x8();
        assert_eq!(c.global_order(), strings(&x["global"]["order"]).as_slice());
        let actions = &x["actions"];
        for (group, auth) in [
            ("hash_checked", None),
            ("login", Some(Auth::Login)),
            ("balance_over_http", Some(Auth::Balance)),
            ("no_auth", Some(Auth::NoAuth)),
            ("by_username_only", Some(Auth::UsernameOnly)),
        ] {
            for n in strings(&actions[group]) {
                let m = c.lookup(&n).unwrap_or_else(|| panic!("{n} missing")).method;
                assert_eq!(m.name, n);
                match auth {
                    Some(a) => assert_eq!(m.auth, a, "{n}"),
                    None => assert!(m.auth.hashed(), "{n}"),
                }
            }
        }
        let own = x["own_lists"].as_table().unwrap();
        for m in c.methods().iter().filter(|m| m.auth == Auth::Own) {
            if let Some(list) = own.get(&m.name) {
                assert_eq!(m.hash, strings(list), "{}", m.name);
            }
        }
        for (n, list) in own {
            assert_eq!(c.lookup(n).unwrap().method.auth, Auth::Own, "{n}");
            assert_eq!(c.lookup(n).unwrap().method.hash, strings(list), "{n}");
        }
        for n in strings(&actions["get_always_allowed"]) {
            assert!(c.lookup(&n).unwrap().method.get_always, "{n}");
        }
        for n in strings(&x["caller"]["by_uniquehash_id"]) {
            assert_eq!(c.lookup(&n).unwrap().method.caller, Caller::UniquehashId);
        }
        for n in strings(&x["caller"]["by_username"]) {
            assert_eq!(c.lookup(&n).unwrap().method.caller, Caller::Username);
        }
        let aliases = x["aliases"].as_table().unwrap();
        for (a, t) in aliases {
            let f = c.lookup(a).unwrap_or_else(|| panic!("alias {a}"));
            assert_eq!(f.alias, Some(a.as_str()));
            assert_eq!(f.method.name, t.as_str().unwrap());
        }
        assert_eq!(c.alias_count(), aliases.len());
        assert_eq!(c.alias_count(), 31);
        for n in strings(&x["global"]["never_hashed"]) {
            assert_eq!(c.position(&n), None);
        }
        for name in x["filters"].as_table().unwrap().keys() {
            assert!(c.filter(name).is_some(), "filter {name}");
        }
        assert!(c.filter("lcr_id").is_none());
    }

    #[test]
    fn extension_replaces_and_adds() {
        let mut c = mor();
        c.extend(
            r#"
[[method]]
name = "user_details_get"
products = ["MOR"]
aliases = ["my_details"]
auth = "own"
hash = ["user_id"]
[[method]]
name = "brand_new_get"
products = ["MOR"]
"#,
        )
        .unwrap();
        let f = c.lookup("my_details").unwrap();
        assert_eq!(f.method.hash, ["user_id"]);
        assert!(c.lookup("user_details").is_none(), "old alias replaced");
        assert_eq!(c.lookup("brand_new_get").unwrap().method.auth, Auth::Global);
        assert!(c.lookup("user_calls").is_some(), "the rest is kept");
    }

    #[test]
    fn bad_entries_refused() {
        let mut c = mor();
        let e = c
            .extend("[[method]]\nname = \"x_get\"\nproducts = [\"MOR\"]\nhash = [\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth = \"own\""), "{e}");
        let e = c
            .extend("[[method]]\nname = \"y\"\nproducts = [\"MOR\"]\naliases = [\"user_calls\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'user_calls'"), "{e}");
    }

    #[test]
    fn patches_apply() {
        let mut c = mor();
        c.patch(
            "user_devices",
            &MethodPatch {
                auth: Some(Auth::Unsigned),
                ..MethodPatch::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.lookup("user_devices").unwrap().method.auth,
            Auth::Unsigned
        );
        c.patch(
            "user_details_get",
            &MethodPatch {
                hash: Some(vec!["user_id".into()]),
                ..MethodPatch::default()
            },
        )
        .unwrap();
        let m = c.lookup("user_details").unwrap().method;
        assert_eq!(
            (m.auth, m.hash.as_slice()),
            (Auth::Own, &["user_id".to_string()][..])
        );
        assert!(c.patch("user_details", &MethodPatch::default()).is_err());
        c.patch("new_action_get", &MethodPatch::default()).unwrap();
        assert!(c.lookup("new_action_get").is_some());
    }

    #[test]
    fn configured_alias_added_and_checked() {
        let mut c = mor();
        c.add_alias("my_details", "user_details_get").unwrap();
        assert_eq!(
            c.lookup("my_details").unwrap().method.name,
            "user_details_get"
        );
        assert!(c.add_alias("x", "user_details").is_err());
        assert!(c.add_alias("user_calls", "user_details_get").is_err());
        assert!(c.add_alias("Bad-Name", "user_details_get").is_err());
    }

    #[test]
    fn describe_names_the_rule() {
        let c = mor();
        assert!(c
            .describe("user_calls")
            .contains("legacy alias of user_calls_get"));
        assert!(c
            .describe("voucher_use")
            .contains("own list [voucher_number]"));
        assert!(c.describe("user_devices").contains("refused"));
        assert!(c.describe("nope").contains("not catalogued"));
    }
}
