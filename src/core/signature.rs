//! MOR's request hash. The values MOR hashes for an action ([`hashed_parts`]:
//! the global order's present names after type filters, or the action's own
//! list of raw values) are concatenated, the key is appended, and the SHA1 is
//! compared, as lower-case hex exactly and in constant time, with `hash`.

use std::borrow::Cow;

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::core::catalog::{Auth, Catalog, Filter, FilterKind, Method};
use crate::core::params::{ParamError, Params, Value};

/// A lower-case hex SHA1 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; 40]);

impl HexDigest {
    /// The digest as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Constant-time comparison with a client-supplied hash. Like MOR, only
    /// the exact lower-case form matches; the length is not secret.
    pub fn matches(&self, given: &str) -> bool {
        let g = given.as_bytes();
        g.len() == 40 && bool::from(self.0.ct_eq(g))
    }
}

impl std::fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hashed value: the parameter's name and the text that is hashed.
pub type Part<'a> = (&'a str, Cow<'a, str>);

/// SHA1 of the parts' texts, in order, then the key.
pub fn digest(parts: &[Part<'_>], key: &[u8]) -> HexDigest {
    let mut h = Sha1::new();
    for (_, text) in parts {
        h.update(text.as_bytes());
    }
    h.update(key);
    let out = h.finalize();
    let mut hex_out = [0u8; 40];
    // 20 bytes always encode into 40 hex digits.
    let _ = hex::encode_to_slice(out, &mut hex_out);
    HexDigest(hex_out)
}

/// The hash of raw `values` in order, then the key (the wiki's plain rule).
pub fn compute<'v, S, F>(order: &[S], mut value_of: F, key: &[u8]) -> HexDigest
where
    S: AsRef<str>,
    F: FnMut(&str) -> Option<&'v str>,
{
    let parts: Vec<Part<'_>> = order
        .iter()
        .filter_map(|n| value_of(n.as_ref()).map(|v| (n.as_ref(), Cow::Borrowed(v))))
        .collect();
    digest(&parts, key)
}

fn digits(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

fn users_line(l: &str) -> bool {
    matches!(l, "postpaid" | "prepaid" | "all")
        || (!l.is_empty() && l.bytes().all(|b| b.is_ascii_digit() || b == b','))
}

/// The text MOR hashes for `value` under `filter`, or `None` when the value
/// fails the filter (and is left out of the hash).
pub fn filtered<'a>(filter: Option<&Filter>, value: &Value, text: &'a str) -> Option<Cow<'a, str>> {
    let pass = match filter {
        None => true,
        Some(Filter::OneOf { one_of }) => one_of.iter().any(|o| o == text),
        Some(Filter::Kind(k)) => match k {
            FilterKind::Integer => {
                if !text.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let t = text.trim_start_matches('0');
                return Some(Cow::Borrowed(if t.is_empty() { "0" } else { t }));
            }
            FilterKind::Digits => digits(text),
            FilterKind::DigitsOrAll => text == "all" || digits(text),
            FilterKind::NumberChars => text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+')),
            FilterKind::UsersLines => value.is_string() && text.split('\n').any(users_line),
            FilterKind::ContainsBool => {
                value.is_string() && (text.contains("true") || text.contains("false"))
            }
            FilterKind::DigitsOrNonstring => !value.is_string() || digits(text),
        },
    };
    pass.then_some(Cow::Borrowed(text))
}

fn text_of<'a>(name: &str, v: &'a Value) -> Result<&'a str, ParamError> {
    v.ruby_text()
        .ok_or_else(|| ParamError::NotScalar(name.to_string()))
}

/// Why a parameter the caller sent is not in the hash, or that it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Hashed (at this position of the order or list).
    Hashed,
    /// Not in the global order, or not in the action's own list.
    NotHashedName,
    /// Blank (nil, empty): MOR skips it.
    Blank,
    /// Excluded from the global order by the action.
    Excluded,
    /// Its value fails the name's type filter.
    Filtered,
    /// The action hashes nothing for this call (`hash_nothing_when`).
    NothingHashed,
}

impl Fate {
    /// A short explanation.
    pub fn describe(self) -> &'static str {
        match self {
            Fate::Hashed => "hashed",
            Fate::NotHashedName => "not a hashed name for this action",
            Fate::Blank => "blank: MOR leaves blank values out",
            Fate::Excluded => "excluded from the global order by this action",
            Fate::Filtered => "its value fails the name's type filter",
            Fate::NothingHashed => "this call hashes nothing",
        }
    }
}

/// The raw values of `list`'s present names, in order (an own list).
pub fn own_parts<'a>(list: &'a [String], params: &'a Params) -> Result<Vec<Part<'a>>, ParamError> {
    let mut parts = Vec::with_capacity(list.len());
    for name in list {
        if let Some(v) = params.get(name) {
            parts.push((name.as_str(), Cow::Borrowed(text_of(name, v)?)));
        }
    }
    Ok(parts)
}

/// What MOR hashes for a call to `method` (`None`: an uncatalogued action,
/// hashed by the global order), in order. A list or map where a value is
/// hashed is refused: its Ruby text form is not reproduced.
pub fn hashed_parts<'a>(
    cat: &Catalog,
    method: Option<&'a Method>,
    params: &'a Params,
) -> Result<Vec<Part<'a>>, ParamError> {
    walk(cat, method, params, |_, _| {})
}

/// Each parameter of a call and its fate in the hash.
pub type Fates<'a> = Vec<(&'a str, Fate)>;

/// [`hashed_parts`], and the fate of every parameter the call has (for
/// `explain`), in the call's order.
pub fn explain_parts<'a>(
    cat: &Catalog,
    method: Option<&'a Method>,
    params: &'a Params,
) -> Result<(Vec<Part<'a>>, Fates<'a>), ParamError> {
    let mut fates = Vec::new();
    let parts = walk(cat, method, params, |name, fate| fates.push((name, fate)))?;
    Ok((parts, fates))
}

/// The one walk over a call's parameters that decides the hash; `seen` is
/// told each parameter's fate.
fn walk<'a>(
    cat: &Catalog,
    method: Option<&'a Method>,
    params: &'a Params,
    mut seen: impl FnMut(&'a str, Fate),
) -> Result<Vec<Part<'a>>, ParamError> {
    if let Some(m) = method.filter(|m| m.auth == Auth::Own) {
        let nothing = !m.hash_nothing_when.is_empty()
            && m.hash_nothing_when
                .iter()
                .all(|(k, v)| params.scalar(k).ok().flatten() == Some(v.as_str()));
        for (name, _) in params.iter() {
            let fate = if nothing {
                Fate::NothingHashed
            } else if m.hash.iter().any(|h| h == name) {
                Fate::Hashed
            } else {
                Fate::NotHashedName
            };
            seen(name, fate);
        }
        if nothing {
            return Ok(Vec::new());
        }
        return own_parts(&m.hash, params);
    }
    let exclude: &[String] = method.map_or(&[], |m| &m.exclude);
    let mut found: Vec<(usize, Part<'a>)> = Vec::with_capacity(params.len());
    for (name, v) in params.iter() {
        let Some(pos) = cat.position(name) else {
            seen(name, Fate::NotHashedName);
            continue;
        };
        if !v.truthy() {
            seen(name, Fate::Blank);
            continue;
        }
        if exclude.iter().any(|x| x == name) {
            seen(name, Fate::Excluded);
            continue;
        }
        match filtered(cat.filter(name), v, text_of(name, v)?) {
            Some(t) => {
                seen(name, Fate::Hashed);
                found.push((pos, (name, t)));
            }
            None => seen(name, Fate::Filtered),
        }
    }
    found.sort_unstable_by_key(|(pos, _)| *pos);
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalog::{Product, EMBEDDED};

    fn cat() -> Catalog {
        Catalog::parse(EMBEDDED, Product::Mor).unwrap()
    }

    fn form(q: &str) -> Params {
        let mut p = Params::new();
        p.add_form(q.as_bytes()).unwrap();
        p
    }

    fn json(b: &str) -> Params {
        let mut p = Params::new();
        p.add_json(b.as_bytes()).unwrap();
        p
    }

    /// The concatenated hashed text for `method` over `p`.
    fn input(method: &str, p: &Params) -> String {
        let c = cat();
        let m = c.lookup(method).map(|f| f.method);
        hashed_parts(&c, m, p)
            .unwrap()
            .iter()
            .map(|(_, t)| t.as_ref())
            .collect()
    }

    #[test]
    fn documented_construction_example() {
        // "MOR API hash construction": "123"+"1252454580"+"answered"+key.
        let p = form("user_id=123&period_start=1252454580&calltype=answered");
        let c = cat();
        let h = digest(&hashed_parts(&c, None, &p).unwrap(), b"Very Sercet Key");
        assert!(h.as_str().starts_with("b93c35d5"), "{h:?}");
    }

    #[test]
    fn seed_vectors() {
        let c = cat();
        let sign = |m: &str, q: &str, key: &str| {
            let p = form(q);
            let m = c.lookup(m).map(|f| f.method);
            digest(&hashed_parts(&c, m, &p).unwrap(), key.as_bytes())
                .as_str()
                .to_string()
        };
        assert_eq!(
            sign("user_details_get", "u=admin&user_id=123", "456789"),
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
        assert_eq!(
            sign("user_details_update", "u=admin&user_id=123&u15=1", "456789"),
            "0ab3ede4e93a55c38855a2cc9b9e169d35442c48"
        );
        assert_eq!(
            sign("user_calls_get", "u=admin&s_user=123", "456789"),
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
        assert_eq!(
            sign(
                "device_clis_get",
                "u=admin&devices_id=6&users_id=3",
                "secret"
            ),
            "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4"
        );
        assert_eq!(
            sign("users_get", "u=admin&p=admin1&test=1", "secret"),
            "c420ef706a02e6449994b7575b25ef5f74cc722b"
        );
    }

    #[test]
    fn filters_leave_failing_values_out() {
        assert_eq!(input("user_details_get", &form("user_id=007")), "7");
        assert_eq!(input("user_details_get", &form("user_id=")), "0");
        assert_eq!(input("user_details_get", &form("user_id=12a")), "");
        assert_eq!(input("user_calls_get", &form("s_user=all")), "");
        assert_eq!(input("user_calls_get", &form("s_user=0123")), "0123");
        assert_eq!(input("user_details_update", &form("block=1")), "");
        assert_eq!(
            input("user_details_update", &form("block=xtruex")),
            "xtruex"
        );
        assert_eq!(
            input("user_calls_get", &form("direction=outgoing")),
            "outgoing"
        );
        assert_eq!(input("user_calls_get", &form("direction=out")), "");
        assert_eq!(
            input("user_calls_get", &form("calltype=missed_inc")),
            "missed_inc"
        );
        assert_eq!(
            input("user_calls_get", &form("device=all&s_device=x")),
            "all"
        );
        assert_eq!(input("user_balance_update", &form("balance=-1.5e")), "");
        assert_eq!(
            input("user_balance_update", &form("balance=%2B1.5")),
            "+1.5"
        );
        assert_eq!(input("sms_send", &form("lcr_id=abc")), "abc");
    }

    #[test]
    fn users_filter_uses_line_anchors_and_strings_only() {
        assert_eq!(
            input("invoices_get", &form("users=x%0Apostpaid")),
            "x\npostpaid"
        );
        assert_eq!(input("invoices_get", &form("users=1,2")), "1,2");
        assert_eq!(input("invoices_get", &form("users=x%20postpaid")), "");
        assert_eq!(input("invoices_get", &json(r#"{"users":5}"#)), "");
    }

    #[test]
    fn json_types() {
        assert_eq!(
            input(
                "user_details_update",
                &json(r#"{"user_id":5,"u15":false,"u16":null,"u17":true,"u18":5.0}"#)
            ),
            "5true5.0"
        );
        assert_eq!(input("sms_send", &json(r#"{"mtype":3}"#)), "3");
        assert_eq!(input("sms_send", &json(r#"{"mtype":true}"#)), "true");
        assert_eq!(input("sms_send", &form("mtype=x")), "");
        assert_eq!(input("user_details_update", &json(r#"{"block":true}"#)), "");
    }

    #[test]
    fn global_order_not_request_order() {
        // period_start and period_end come before s_user.
        assert_eq!(
            input(
                "user_calls_get",
                &form("s_user=5&period_end=9&period_start=1")
            ),
            "195"
        );
        // did is hashed by did_create (the wiki's X3 example leaves it out).
        assert_eq!(input("did_create", &form("did=370&provider_id=2")), "2370");
    }

    #[test]
    fn own_lists_raw_and_special_cases() {
        assert_eq!(
            input("voucher_use", &form("voucher_number=007&user_id=1")),
            "007"
        );
        assert_eq!(
            input(
                "subscription_delete",
                &json(r#"{"subscription_id":1,"subscription_delete_action":false}"#)
            ),
            "1false"
        );
        assert_eq!(input("quickstats_get", &form("u=admin")), "");
        assert_eq!(input("quickstats_get", &form("u=john")), "john");
        assert_eq!(
            input("card_from_group_sell", &form("id=1&number=5&quantity=2")),
            "12"
        );
        assert_eq!(
            input(
                "device_update",
                &form("port=5060&device=7&host=h&username=u&authentication=1")
            ),
            "71uh5060"
        );
    }

    #[test]
    fn never_hashed_and_structured() {
        assert_eq!(
            input(
                "user_details_update",
                &form("pgui=1&user_warning_email_hour=2")
            ),
            ""
        );
        let c = cat();
        let p = form("user_id[]=1");
        assert!(hashed_parts(&c, c.lookup("user_details_get").map(|f| f.method), &p).is_err());
        let p = form("other[]=1&user_id=2");
        assert!(hashed_parts(&c, None, &p).is_ok());
    }

    #[test]
    fn compare_is_exact_lower_case() {
        let d = compute(&["a"], |_| Some("1"), b"k");
        assert!(d.matches(d.as_str()));
        assert!(!d.matches(&d.as_str().to_ascii_uppercase()));
        assert!(!d.matches(&d.as_str()[..39]));
        assert!(!d.matches(""));
        let mut wrong = d.as_str().to_string();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(39.., last);
        assert!(!d.matches(&wrong));
    }
}
