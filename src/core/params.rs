//! The parameter view MOR (Rails/Rack) builds from a request: query string,
//! form or JSON body, path parameters. Anything Rails would resolve by
//! "last one wins" is refused when the values differ, so the gateway never
//! verifies one value while MOR acts on another.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};

/// Most parameters accepted in one request (Rack's own limits are similar).
pub const MAX_PARAMS: usize = 1024;

/// Why a request's parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A `%` not followed by two hex digits.
    #[error("invalid %-encoding in parameter {0}")]
    BadEscape(String),
    /// Decoded bytes are not UTF-8.
    #[error("parameter {0} is not valid UTF-8")]
    BadUtf8(String),
    /// The same name carries different values.
    #[error("parameter {0} is given more than once with different values")]
    Conflict(String),
    /// A name where a single value is needed carries a list, a map or null.
    #[error("parameter {0} must be a single value")]
    NotScalar(String),
    /// Body is not parseable for its content type.
    #[error("request body is not valid {0}")]
    BadBody(&'static str),
    /// Body content type MOR would parse differently (multipart, XML, ...).
    #[error("unsupported request body type {0}; send form or JSON")]
    UnsupportedBody(String),
    /// Too many parameters.
    #[error("too many parameters (limit {MAX_PARAMS})")]
    TooMany,
    /// A JSON number whose Ruby text form cannot be reproduced safely.
    #[error("parameter {0} has a number MOR would format differently; send it as a string")]
    NumberFormat(String),
    /// An empty parameter name.
    #[error("empty parameter name")]
    EmptyName,
}

/// One parameter's value as Rails would hold it. JSON bodies keep their
/// types, which MOR's hash filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string (query, form, path, or a JSON string).
    Str(String),
    /// A JSON number, as Ruby's `to_s` prints it.
    Num(String),
    /// A JSON boolean.
    Bool(bool),
    /// JSON null (Rails keeps nil).
    Null,
    /// A list or map (`a[]=`, `a[b]=`, JSON arrays and objects). Kept as its
    /// canonical text so that duplicates can be compared.
    Structured(String),
}

impl Value {
    /// Ruby's `to_s` of a scalar (`nil` is ""); `None` for lists and maps.
    pub fn ruby_text(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Num(s) => Some(s),
            Value::Bool(true) => Some("true"),
            Value::Bool(false) => Some("false"),
            Value::Null => Some(""),
            Value::Structured(_) => None,
        }
    }

    /// False for JSON `false` and `null` (Ruby's falsy values).
    pub fn truthy(&self) -> bool {
        !matches!(self, Value::Null | Value::Bool(false))
    }

    /// True for strings (form values are always strings).
    pub fn is_string(&self) -> bool {
        matches!(self, Value::Str(_))
    }

    fn same_text(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Structured(a), Value::Structured(b)) => a == b,
            (Value::Structured(_), _) | (_, Value::Structured(_)) => false,
            (a, b) => a.ruby_text() == b.ruby_text(),
        }
    }
}

/// The merged parameter view.
#[derive(Debug, Default, Clone)]
pub struct Params {
    /// Ordered by name: no hashing per lookup, one node for a call's few
    /// names, O(log n) up to [`MAX_PARAMS`].
    map: BTreeMap<String, Value>,
}

impl Params {
    /// An empty view.
    pub fn new() -> Self {
        Params::default()
    }

    /// Adds a value. Sources are added in Rails' precedence, lowest first
    /// (body, then query, then path): a later value with the same text
    /// replaces the earlier one (a JSON `1` under a query `"1"` becomes the
    /// string, as in Rails); a different text is a conflict.
    pub fn insert(
        &mut self,
        name: impl Into<String> + AsRef<str>,
        value: Value,
    ) -> Result<(), ParamError> {
        let key = name.as_ref();
        if key.is_empty() {
            return Err(ParamError::EmptyName);
        }
        if let Some(old) = self.map.get_mut(key) {
            if !old.same_text(&value) {
                return Err(ParamError::Conflict(key.to_string()));
            }
            *old = value;
            return Ok(());
        }
        if self.map.len() >= MAX_PARAMS {
            return Err(ParamError::TooMany);
        }
        self.map.insert(name.into(), value);
        Ok(())
    }

    /// The raw entry for a name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// The text of a name that must be single-valued; absent or JSON null
    /// is `Ok(None)`, a list or map is an error.
    pub fn scalar(&self, name: &str) -> Result<Option<&str>, ParamError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Structured(_)) => Err(ParamError::NotScalar(name.to_string())),
            Some(v) => Ok(v.ruby_text()),
        }
    }

    /// Every name with its value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Parses a query string or `application/x-www-form-urlencoded` body
    /// into the view. `&` and `;` both separate pairs, as in MOR's Rack.
    pub fn add_form(&mut self, input: &[u8]) -> Result<(), ParamError> {
        // Names seen in this input in bracket form, collected so that a list
        // (`a[]=1&a[]=2`) is one structured value rather than a conflict.
        let mut structured: Vec<(String, String)> = Vec::new();
        let mut slots: HashMap<String, usize> = HashMap::new();
        for pair in input.split(|&b| b == b'&' || b == b';') {
            if pair.is_empty() {
                continue;
            }
            let (rawk, rawv) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let key = decode(rawk)?;
            let val = decode(rawv).map_err(|e| match e {
                ParamError::BadEscape(_) => ParamError::BadEscape(key.clone()),
                ParamError::BadUtf8(_) => ParamError::BadUtf8(key.clone()),
                other => other,
            })?;
            if key.is_empty() {
                // Rack drops pairs with an empty name.
                continue;
            }
            match key.find('[') {
                Some(0) => return Err(ParamError::EmptyName),
                Some(i) => {
                    let base = &key[..i];
                    if let Some(&slot) = slots.get(base) {
                        let text = &mut structured[slot].1;
                        text.push('&');
                        text.push_str(&key[i..]);
                        text.push('=');
                        text.push_str(&val);
                    } else {
                        if structured.len() >= MAX_PARAMS {
                            return Err(ParamError::TooMany);
                        }
                        slots.insert(base.to_string(), structured.len());
                        structured.push((base.to_string(), format!("{}={val}", &key[i..])));
                    }
                }
                None => self.insert(key, Value::Str(val))?,
            }
        }
        for (base, text) in structured {
            self.insert(base, Value::Structured(text))?;
        }
        Ok(())
    }

    /// Parses a JSON object body into the view (Rails' JSON params parser).
    pub fn add_json(&mut self, body: &[u8]) -> Result<(), ParamError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let pairs: JsonPairs =
            serde_json::from_slice(body).map_err(|_| ParamError::BadBody("JSON"))?;
        for (k, v) in pairs.0 {
            let value = match v {
                serde_json::Value::String(s) => Value::Str(s),
                serde_json::Value::Bool(b) => Value::Bool(b),
                serde_json::Value::Null => Value::Null,
                serde_json::Value::Number(n) => Value::Num(ruby_number(&k, &n)?),
                other @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                    Value::Structured(other.to_string())
                }
            };
            self.insert(k, value)?;
        }
        Ok(())
    }

    /// Parses a `multipart/form-data` body strictly: each part has a
    /// `Content-Disposition: form-data; name="..."` (and optionally a
    /// `filename`, which makes the part a file: a structured value, never
    /// hashed) and at most a `Content-Type`; text parts must be UTF-8.
    /// Anything Rack might read another way (escapes or `*=` parameters,
    /// other part headers, bracket names, text outside the parts) is refused.
    pub fn add_multipart(&mut self, content_type: &str, body: &[u8]) -> Result<(), ParamError> {
        const BAD: ParamError = ParamError::BadBody("multipart/form-data");
        let boundary = content_type
            .split(';')
            .skip(1)
            .find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"').to_string())
            })
            .filter(|b| {
                !b.is_empty()
                    && b.len() <= 70
                    && b.bytes().all(|c| c.is_ascii_graphic() && c != b'"')
            })
            .ok_or(BAD)?;
        let delim = format!("--{boundary}");
        let next_delim = format!("\r\n{delim}");
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        let mut rest = body.strip_prefix(delim.as_bytes()).ok_or(BAD)?;
        loop {
            if let Some(end) = rest.strip_prefix(b"--") {
                if !end.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    return Err(BAD);
                }
                return Ok(());
            }
            rest = rest.strip_prefix(b"\r\n").ok_or(BAD)?;
            let head_end = find(rest, b"\r\n\r\n").ok_or(BAD)?;
            let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| BAD)?;
            let after = &rest[head_end + 4..];
            let n = find(after, next_delim.as_bytes()).ok_or(BAD)?;
            let content = &after[..n];
            rest = &after[n + next_delim.len()..];
            let (mut name, mut filename) = (None, None);
            for line in head.split("\r\n") {
                let (k, v) = line.split_once(':').ok_or(BAD)?;
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-type" => {}
                    "content-disposition" => {
                        let mut fields = v.split(';');
                        if !fields
                            .next()
                            .is_some_and(|f| f.trim().eq_ignore_ascii_case("form-data"))
                        {
                            return Err(BAD);
                        }
                        for f in fields {
                            let (fk, fv) = f.trim().split_once('=').ok_or(BAD)?;
                            let fv = fv
                                .strip_prefix('"')
                                .and_then(|x| x.strip_suffix('"'))
                                .ok_or(BAD)?;
                            if fv.contains(['"', '\\']) {
                                return Err(BAD);
                            }
                            match fk.to_ascii_lowercase().as_str() {
                                "name" if name.is_none() => name = Some(fv.to_string()),
                                "filename" if filename.is_none() => filename = Some(fv.to_string()),
                                _ => return Err(BAD),
                            }
                        }
                    }
                    _ => return Err(BAD),
                }
            }
            let name = name
                .filter(|n| !n.is_empty() && !n.contains('['))
                .ok_or(BAD)?;
            let value = match filename {
                Some(f) => Value::Structured(format!("file:{f}:{}", content.len())),
                None => Value::Str(String::from_utf8(content.to_vec()).map_err(|_| BAD)?),
            };
            self.insert(name, value)?;
        }
    }

    /// Parses a request body according to its `Content-Type`, as Rack would.
    /// `is_post` matters because Rack treats a POST without a type as a form;
    /// `multipart` allows `multipart/form-data` (the actions that take a file).
    pub fn add_body(
        &mut self,
        content_type: Option<&str>,
        body: &[u8],
        is_post: bool,
        multipart: bool,
    ) -> Result<(), ParamError> {
        let media = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|m| !m.is_empty());
        match media.as_deref() {
            Some("application/x-www-form-urlencoded") => self.add_form(body),
            None if is_post => self.add_form(body),
            Some(m) if m == "application/json" || m.ends_with("+json") => self.add_json(body),
            Some("multipart/form-data") if multipart => {
                self.add_multipart(content_type.unwrap_or(""), body)
            }
            _ if body.is_empty() => Ok(()),
            // Rack parses a typeless body only for POST; MOR ignores it otherwise.
            None => Ok(()),
            Some(m) => Err(ParamError::UnsupportedBody(m.chars().take(64).collect())),
        }
    }
}

/// Ruby's `to_s` of a JSON number as Rails parsed it. Integers keep their
/// digits; floats are reproduced in the plain range, refused elsewhere.
fn ruby_number(name: &str, n: &serde_json::Number) -> Result<String, ParamError> {
    if n.is_i64() || n.is_u64() {
        return Ok(n.to_string());
    }
    let text = n.to_string();
    let f = n
        .as_f64()
        .ok_or_else(|| ParamError::NumberFormat(name.to_string()))?;
    // Ruby prints floats in [1e-4, 1e16) as plain decimals, shortest
    // round-trip digits, with ".0" for whole values; outside it uses
    // exponent notation whose exact form we do not reproduce.
    let a = f.abs();
    if f == 0.0 {
        return Ok(if text.starts_with('-') { "-0.0" } else { "0.0" }.into());
    }
    if !(1e-4..1e16).contains(&a) {
        return Err(ParamError::NumberFormat(name.to_string()));
    }
    let s = format!("{f}");
    Ok(if s.contains('.') { s } else { format!("{s}.0") })
}

/// A JSON object's entries in order, keeping duplicates (serde_json's map would
/// silently keep the last).
struct JsonPairs(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for JsonPairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonPairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<JsonPairs, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    if out.len() >= MAX_PARAMS {
                        return Err(de::Error::custom("too many parameters"));
                    }
                    out.push((k, v));
                }
                Ok(JsonPairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Strict form decoding: `+` is a space, `%XX` must be two hex digits, the
/// result must be UTF-8.
pub fn decode(input: &[u8]) -> Result<String, ParamError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).and_then(|b| hexval(*b));
                let lo = input.get(i + 2).and_then(|b| hexval(*b));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(ParamError::BadEscape(lossy_name(input))),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ParamError::BadUtf8(lossy_name(input)))
}

fn lossy_name(input: &[u8]) -> String {
    String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned()
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a value for a query string or form body (unreserved kept).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod multipart_tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn parse(body: &str) -> Result<Params, ParamError> {
        let mut p = Params::new();
        p.add_multipart(CT, body.as_bytes())?;
        Ok(p)
    }

    #[test]
    fn text_and_file_parts() {
        let p = parse("--XyZ\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n7\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"n.csv\"\r\nContent-Type: text/csv\r\n\r\n1\n2\r\n--XyZ--\r\n").unwrap();
        assert_eq!(p.scalar("id").unwrap(), Some("7"));
        assert!(matches!(p.get("file"), Some(Value::Structured(_))));
    }

    #[test]
    fn anything_ambiguous_is_refused() {
        for bad in [
            "--XyZ\r\nContent-Disposition: form-data; name*=UTF-8''id\r\n\r\n7\r\n--XyZ--",
            "--XyZ\r\nContent-Disposition: form-data; name=\"i\\\"d\"\r\n\r\n7\r\n--XyZ--",
            "--XyZ\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\nNw==\r\n--XyZ--",
            "--XyZ\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n7\r\n--XyZ",
            "junk--XyZ\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n7\r\n--XyZ--",
            "--XyZ\r\nContent-Disposition: form-data; name=\"a[]\"\r\n\r\n7\r\n--XyZ--",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Two parts with one name and different values: a conflict.
        assert!(parse("--XyZ\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n7\r\n--XyZ\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n8\r\n--XyZ--").is_err());
        // Not allowed where the action takes no file.
        let mut p = Params::new();
        assert!(p.add_body(Some(CT), b"--XyZ--", true, false).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Result<Params, ParamError> {
        let mut p = Params::new();
        p.add_form(s.as_bytes())?;
        Ok(p)
    }

    fn s(p: &Params, k: &str) -> Option<String> {
        p.scalar(k).unwrap().map(str::to_string)
    }

    #[test]
    fn query_decoding() {
        let p = form("u=admin&user_id=123&name=a+b%20c&e=&flag").unwrap();
        assert_eq!(s(&p, "u").as_deref(), Some("admin"));
        assert_eq!(s(&p, "name").as_deref(), Some("a b c"));
        assert_eq!(s(&p, "e").as_deref(), Some(""));
        assert_eq!(s(&p, "flag").as_deref(), Some(""));
        assert_eq!(s(&p, "missing"), None);
    }

    #[test]
    fn broken_escapes_and_utf8_refused() {
        assert!(matches!(form("a=%zz"), Err(ParamError::BadEscape(k)) if k == "a"));
        assert!(matches!(form("a=%4"), Err(ParamError::BadEscape(_))));
        assert!(matches!(form("a=%ff%fe"), Err(ParamError::BadUtf8(_))));
        assert_eq!(s(&form("a=%C3%A9").unwrap(), "a").as_deref(), Some("é"));
    }

    #[test]
    fn duplicates_same_value_ok_different_refused() {
        assert!(form("user_id=1&user_id=1").is_ok());
        assert_eq!(
            form("user_id=1&user_id=2").unwrap_err(),
            ParamError::Conflict("user_id".into())
        );
    }

    #[test]
    fn bracket_forms_are_structured_and_conflict_with_scalars() {
        let p = form("a[]=1&a[]=2").unwrap();
        assert!(matches!(p.get("a"), Some(Value::Structured(_))));
        assert_eq!(p.scalar("a"), Err(ParamError::NotScalar("a".into())));
        assert!(matches!(form("a=1&a[]=2"), Err(ParamError::Conflict(_))));
        assert!(matches!(form("a[]=2&a=1"), Err(ParamError::Conflict(_))));
    }

    #[test]
    fn semicolons_separate_pairs_like_mor() {
        let p = form("a=1;b=2").unwrap();
        assert_eq!(
            (s(&p, "a").as_deref(), s(&p, "b").as_deref()),
            (Some("1"), Some("2"))
        );
        assert_eq!(s(&form("a=1%3Bb").unwrap(), "a").as_deref(), Some("1;b"));
        assert!(matches!(form("a=1;a=2"), Err(ParamError::Conflict(_))));
    }

    #[test]
    fn json_scalars_stringified_like_ruby() {
        let mut p = Params::new();
        p.add_json(br#"{"user_id":123,"u15":true,"x":1.5,"y":2.0,"z":null,"w":"s","l":[1]}"#)
            .unwrap();
        assert_eq!(s(&p, "user_id").as_deref(), Some("123"));
        assert_eq!(s(&p, "u15").as_deref(), Some("true"));
        assert_eq!(s(&p, "x").as_deref(), Some("1.5"));
        assert_eq!(s(&p, "y").as_deref(), Some("2.0"));
        assert_eq!(s(&p, "w").as_deref(), Some("s"));
        assert_eq!(p.get("z"), Some(&Value::Null));
        assert_eq!(p.get("u15"), Some(&Value::Bool(true)));
        assert_eq!(p.get("user_id"), Some(&Value::Num("123".into())));
        assert_eq!(s(&p, "z"), None);
        assert!(p.scalar("l").is_err());
        let mut p = Params::new();
        assert!(matches!(
            p.add_json(br#"{"big":1e300}"#),
            Err(ParamError::NumberFormat(_))
        ));
    }

    #[test]
    fn json_duplicate_keys_conflict() {
        let mut p = Params::new();
        assert!(matches!(
            p.add_json(br#"{"user_id":"1","user_id":"2"}"#),
            Err(ParamError::Conflict(_))
        ));
        // The same text: Rails keeps the last one, and so does the view.
        let mut p = Params::new();
        assert!(p.add_json(br#"{"user_id":"1","user_id":1}"#).is_ok());
        assert_eq!(p.get("user_id"), Some(&Value::Num("1".into())));
    }

    #[test]
    fn json_must_be_object() {
        let mut p = Params::new();
        assert_eq!(p.add_json(b"[1,2]"), Err(ParamError::BadBody("JSON")));
        assert_eq!(p.add_json(b"{bad"), Err(ParamError::BadBody("JSON")));
    }

    #[test]
    fn query_and_body_conflict_refused_equal_ok() {
        // Body first, then query: the query's string wins over a JSON number.
        let mut p = Params::new();
        p.add_body(
            Some("application/json; charset=utf-8"),
            br#"{"user_id":1}"#,
            true,
            false,
        )
        .unwrap();
        p.add_form(b"user_id=1").unwrap();
        assert_eq!(p.get("user_id"), Some(&Value::Str("1".into())));
        assert!(matches!(
            p.add_body(
                Some("application/x-www-form-urlencoded"),
                b"user_id=2",
                true,
                false
            ),
            Err(ParamError::Conflict(_))
        ));
    }

    #[test]
    fn body_types() {
        let mut p = Params::new();
        p.add_body(None, b"a=1", true, false).unwrap();
        assert_eq!(s(&p, "a").as_deref(), Some("1"));
        assert!(matches!(
            Params::new().add_body(Some("multipart/form-data; boundary=x"), b"--x", true, false),
            Err(ParamError::UnsupportedBody(_))
        ));
        assert!(Params::new()
            .add_body(Some("text/plain"), b"", true, false)
            .is_ok());
        let mut p = Params::new();
        p.add_body(None, b"a=1", false, false).unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn encode_roundtrip() {
        for v in ["a b", "é/&=+%", "", "plain-._~"] {
            assert_eq!(decode(encode(v).as_bytes()).unwrap(), v);
        }
    }
}
