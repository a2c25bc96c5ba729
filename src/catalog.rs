//! The method catalogue: canonical names, legacy aliases and each method's
//! hash-covered parameters in the order MOR concatenates them.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

/// The catalogue shipped in `config/catalog.toml`, embedded at build time.
pub const EMBEDDED: &str = include_str!("../config/catalog.toml");

/// Which server product the gateway fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Product {
    /// Kolmisoft MOR.
    #[serde(rename = "MOR")]
    Mor,
    /// Kolmisoft M4.
    #[serde(rename = "M4")]
    M4,
}

/// How a method authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// SHA1 hash over the covered params and the key.
    #[default]
    Hash,
    /// MOR answers without a hash (e.g. user_login).
    None,
}

/// One API method.
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
    /// Hash-covered params in server order.
    pub hash: Vec<String>,
    /// Authentication kind.
    #[serde(default)]
    pub auth: Auth,
    /// Why the entry departs from the wiki list, if it does.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    global_order: Vec<String>,
    #[serde(rename = "method")]
    methods: Vec<Method>,
}

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// TOML syntax, unknown key or wrong type.
    #[error("{0}")]
    Parse(String),
    /// A name is malformed or used twice.
    #[error("{0}")]
    Invalid(String),
}

/// Result of looking a request's method name up.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    /// The catalogued method.
    pub method: &'a Method,
    /// The alias used, if the request named one.
    pub alias: Option<&'a str>,
}

/// The loaded catalogue for one product.
#[derive(Debug, Clone)]
pub struct Catalog {
    methods: Vec<Method>,
    /// name or alias -> (index, alias name if an alias)
    index: HashMap<String, (usize, bool)>,
    global_order: Vec<String>,
    aliases: usize,
}

/// True for names MOR routes can carry: lower-case letters, digits, `_`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Catalog {
    /// Parses catalogue TOML and keeps the entries of `product`.
    pub fn parse(text: &str, product: Product) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        let mut global_order = Vec::new();
        let mut seen = HashSet::new();
        for p in raw.global_order {
            if p.is_empty() {
                return Err(CatalogError::Invalid(
                    "global_order has an empty name".into(),
                ));
            }
            // MOR's published list repeats an entry; a value is hashed once.
            if seen.insert(p.clone()) {
                global_order.push(p);
            }
        }
        let mut cat = Catalog {
            methods: Vec::new(),
            index: HashMap::new(),
            global_order,
            aliases: 0,
        };
        for m in raw.methods {
            if !m.products.contains(&product) {
                continue;
            }
            if !valid_name(&m.name) {
                return Err(CatalogError::Invalid(format!(
                    "method name '{}' must be lower-case letters, digits and _",
                    m.name
                )));
            }
            let mut hs = HashSet::new();
            for h in &m.hash {
                if h.is_empty() || !hs.insert(h) {
                    return Err(CatalogError::Invalid(format!(
                        "method {}: hash list has an empty or repeated name '{h}'",
                        m.name
                    )));
                }
            }
            let idx = cat.methods.len();
            cat.insert(&m.name, idx, false)?;
            for a in &m.aliases {
                if !valid_name(a) {
                    return Err(CatalogError::Invalid(format!(
                        "method {}: alias '{a}' is not a valid name",
                        m.name
                    )));
                }
                cat.insert(a, idx, true)?;
                cat.aliases += 1;
            }
            cat.methods.push(m);
        }
        Ok(cat)
    }

    fn insert(&mut self, name: &str, idx: usize, alias: bool) -> Result<(), CatalogError> {
        if self.index.insert(name.to_string(), (idx, alias)).is_some() {
            return Err(CatalogError::Invalid(format!(
                "name '{name}' is used by two methods or aliases"
            )));
        }
        Ok(())
    }

    /// Adds a configured alias for an existing method.
    pub fn add_alias(&mut self, alias: &str, target: &str) -> Result<(), CatalogError> {
        if !valid_name(alias) {
            return Err(CatalogError::Invalid(format!(
                "alias '{alias}' must be lower-case letters, digits and _"
            )));
        }
        let (idx, target_is_alias) = *self.index.get(target).ok_or_else(|| {
            CatalogError::Invalid(format!("target '{target}' is not a catalogued method"))
        })?;
        if target_is_alias {
            return Err(CatalogError::Invalid(format!(
                "target '{target}' is itself an alias; name the canonical method"
            )));
        }
        self.insert(alias, idx, true)?;
        self.methods[idx].aliases.push(alias.to_string());
        self.aliases += 1;
        Ok(())
    }

    /// Finds a method by canonical name or alias.
    pub fn lookup(&self, name: &str) -> Option<Found<'_>> {
        let (idx, is_alias) = *self.index.get(name)?;
        let method = &self.methods[idx];
        let alias = if is_alias {
            method
                .aliases
                .iter()
                .find(|a| *a == name)
                .map(String::as_str)
        } else {
            None
        };
        Some(Found { method, alias })
    }

    /// The server-wide order used for methods not in the catalogue.
    pub fn global_order(&self) -> &[String] {
        &self.global_order
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
        self.aliases
    }

    /// All methods, in file order.
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalogue_loads_for_both_products() {
        let mor = Catalog::parse(EMBEDDED, Product::Mor).unwrap();
        let m4 = Catalog::parse(EMBEDDED, Product::M4).unwrap();
        assert!(mor.len() >= 60, "{}", mor.len());
        assert!(m4.len() >= 5);
        assert_eq!(
            mor.lookup("users_get").unwrap().method.hash,
            ["u", "p", "uniquehash"]
        );
        assert_eq!(
            m4.lookup("users_get").unwrap().method.hash,
            ["u", "user_id"]
        );
    }

    #[test]
    fn legacy_aliases_resolve() {
        let c = Catalog::parse(EMBEDDED, Product::Mor).unwrap();
        for (alias, name) in [
            ("user_details", "user_details_get"),
            ("user_update_api", "user_details_update"),
            ("user_calls", "user_calls_get"),
            ("get_version", "system_version_get"),
        ] {
            let f = c.lookup(alias).unwrap();
            assert_eq!(f.method.name, name);
            assert_eq!(f.alias, Some(alias));
        }
        assert!(c.lookup("user_details_get").unwrap().alias.is_none());
        assert!(c.lookup("no_such_method").is_none());
    }

    #[test]
    fn global_order_is_deduplicated() {
        let c = Catalog::parse(EMBEDDED, Product::Mor).unwrap();
        let g = c.global_order();
        let set: HashSet<_> = g.iter().collect();
        assert_eq!(set.len(), g.len());
        assert_eq!(g[0], "user_id");
    }

    #[test]
    fn duplicate_alias_refused() {
        let text = r#"
global_order = ["a"]
[[method]]
name = "x_get"
products = ["MOR"]
aliases = ["y"]
hash = []
[[method]]
name = "y"
products = ["MOR"]
hash = []
"#;
        let e = Catalog::parse(text, Product::Mor).unwrap_err().to_string();
        assert!(e.contains("'y'"), "{e}");
    }

    #[test]
    fn configured_alias_added_and_checked() {
        let mut c = Catalog::parse(EMBEDDED, Product::Mor).unwrap();
        c.add_alias("my_details", "user_details_get").unwrap();
        assert_eq!(
            c.lookup("my_details").unwrap().method.name,
            "user_details_get"
        );
        assert!(c.add_alias("x", "user_details").is_err());
        assert!(c.add_alias("user_calls", "user_details_get").is_err());
        assert!(c.add_alias("Bad-Name", "user_details_get").is_err());
    }
}
