//! Rails' view of a request's parameters, as MOR X8 (Rack 1.x, Rails 4 era)
//! builds them: form pairs separated by `&` or `;`, nested names (`a[]`,
//! `a[b]`), JSON bodies keeping JSON types, and the merge order
//! body < query < path. Plus Ruby's `to_s` of each value, which is what MOR
//! concatenates into a hash.
//!
//! Choices where Rack/Rails leave room (all answer HTTP 400 in the simulator):
//! an invalid `%` escape (Rack raises "invalid %-encoding"), a name used both
//! as a scalar and as a list or hash (Rack's `ParameterTypeError`), nesting
//! deeper than 100 levels, and an invalid JSON body.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::json;

/// One parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string: form values are the raw bytes after percent-decoding, JSON
    /// strings are UTF-8.
    Str(Vec<u8>),
    /// A JSON integer, as its canonical decimal text (any size, like Ruby).
    Int(String),
    /// A JSON number with a fraction or an exponent (a Ruby Float).
    Float(f64),
    /// JSON `true` / `false`.
    Bool(bool),
    /// JSON `null`, or a form name without `=` (Rack gives `nil`).
    Null,
    /// `a[]=..` pairs, or a JSON array.
    List(Vec<Value>),
    /// `a[b]=..` pairs, or a JSON object.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Ruby truthiness: everything but `nil` and `false`.
    pub fn truthy(&self) -> bool {
        !matches!(self, Value::Null | Value::Bool(false))
    }

    /// Ruby's `to_s` of a scalar; `None` for a list or a hash (their `to_s`
    /// never reproduces a client's hash, so a hashed list is a mismatch).
    pub fn to_s(&self) -> Option<Cow<'_, [u8]>> {
        match self {
            Value::Str(b) => Some(Cow::Borrowed(b.as_slice())),
            Value::Int(t) => Some(Cow::Borrowed(t.as_bytes())),
            Value::Float(f) => Some(Cow::Owned(ruby_float(*f).into_bytes())),
            Value::Bool(true) => Some(Cow::Borrowed(b"true")),
            Value::Bool(false) => Some(Cow::Borrowed(b"false")),
            Value::Null => Some(Cow::Borrowed(b"")),
            Value::List(_) | Value::Map(_) => None,
        }
    }
}

/// Ruby's `Float#to_s` (1.9 and later): the shortest digits that read back
/// as the same float; fixed notation when the decimal exponent is in
/// -4 < decpt <= 16, else `d.ddde+XX`. Always a `.` (`5.0`, `1.0e+16`).
pub fn ruby_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` prints the shortest round-trip digits, like Ruby's dtoa
    // mode 0: "1.5e0", "1e16", "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let decpt = exp + 1;
    let body = if decpt > 0 && decpt <= 16 {
        let d = decpt as usize;
        if digits.len() <= d {
            format!("{digits}{}.0", "0".repeat(d - digits.len()))
        } else {
            format!("{}.{}", &digits[..d], &digits[d..])
        }
    } else if decpt <= 0 && decpt > -4 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{first}.{rest}e{es}{:02}", exp.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// Why the parameters could not be built (Rails answers 400 Bad Request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A name used as two different shapes (`a=1&a[]=2`).
    TypeConflict(String),
    /// Nesting deeper than [`DEPTH_LIMIT`].
    TooDeep,
    /// The JSON body does not parse.
    BadJson(String),
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamError::BadEscape => f.write_str("invalid %-encoding"),
            ParamError::TypeConflict(k) => write!(f, "conflicting types for param `{k}'"),
            ParamError::TooDeep => f.write_str("parameters nested too deeply"),
            ParamError::BadJson(e) => write!(f, "invalid JSON: {e}"),
        }
    }
}

/// Rack's `param_depth_limit` (and the JSON gem's `max_nesting`).
pub const DEPTH_LIMIT: usize = 100;

/// A request's parameters (Rails `params`): top-level names to values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    map: BTreeMap<String, Value>,
}

/// How the body is read, from its Content-Type (Rack/Rails rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`, or a POST without a Content-Type.
    Form,
    /// `application/json` or any `*/*+json`.
    Json,
    /// `multipart/form-data` (Rack's multipart parser).
    Multipart,
    /// Anything else: the body adds no parameters.
    Ignored,
}

/// The body kind for a Content-Type header and HTTP method.
pub fn body_kind(content_type: Option<&str>, method: &str) -> BodyKind {
    // Rack: the media type is the part before `;` or `,`, lower-cased; an
    // empty header counts as none.
    let media = content_type
        .map(|c| {
            c.split([';', ','])
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty());
    match media.as_deref() {
        None if method.eq_ignore_ascii_case("POST") => BodyKind::Form,
        None => BodyKind::Ignored,
        Some("application/x-www-form-urlencoded") => BodyKind::Form,
        Some("application/json") => BodyKind::Json,
        Some("multipart/form-data") => BodyKind::Multipart,
        Some(m) if m.ends_with("+json") && m.contains('/') => BodyKind::Json,
        Some(_) => BodyKind::Ignored,
    }
}

impl Params {
    /// No parameters.
    pub fn new() -> Params {
        Params::default()
    }

    /// The value of a top-level name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// A present, non-null scalar as text (lossy UTF-8), for dataset look-ups.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => v.to_s().map(|b| String::from_utf8_lossy(&b).into_owned()),
        }
    }

    /// Sets a top-level name (a path parameter: it wins over everything).
    pub fn set(&mut self, name: &str, value: Value) {
        self.map.insert(name.to_string(), value);
    }

    /// Ruby `Hash#merge`: `other`'s top-level names win.
    pub fn merge(mut self, other: Params) -> Params {
        self.map.extend(other.map);
        self
    }

    /// Rack's `parse_nested_query` of a query string or form body.
    pub fn from_form(input: &[u8]) -> Result<Params, ParamError> {
        let mut map = BTreeMap::new();
        for pair in split_pairs(input) {
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], Some(&pair[i + 1..])),
                None => (pair, None),
            };
            let key = String::from_utf8_lossy(&unescape(k)?).into_owned();
            let value = match v {
                Some(v) => Value::Str(unescape(v)?),
                None => Value::Null,
            };
            normalize(&mut map, &key, value, DEPTH_LIMIT)?;
        }
        Ok(Params { map })
    }

    /// A JSON body: an object gives its members; any other JSON value is
    /// put under `_json` (Rails). An empty body gives nothing.
    pub fn from_json(input: &[u8]) -> Result<Params, ParamError> {
        if input.is_empty() {
            return Ok(Params::new());
        }
        let v = json::parse(input, DEPTH_LIMIT).map_err(ParamError::BadJson)?;
        let map = match v {
            Value::Map(m) => m,
            other => BTreeMap::from([("_json".to_string(), other)]),
        };
        Ok(Params { map })
    }

    /// The body's parameters for its Content-Type and the HTTP method.
    pub fn from_body(
        content_type: Option<&str>,
        method: &str,
        body: &[u8],
    ) -> Result<Params, ParamError> {
        match body_kind(content_type, method) {
            BodyKind::Form => Params::from_form(body),
            BodyKind::Json => Params::from_json(body),
            BodyKind::Multipart => Params::from_multipart(content_type.unwrap_or(""), body),
            BodyKind::Ignored => Ok(Params::new()),
        }
    }

    /// A multipart/form-data body: each part's `name` from its
    /// Content-Disposition; a part with a `filename` becomes a hash (Rack's
    /// uploaded file: filename, type), the others strings.
    pub fn from_multipart(content_type: &str, body: &[u8]) -> Result<Params, ParamError> {
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_string())
            .ok_or_else(|| ParamError::BadJson("multipart body without a boundary".into()))?;
        let delim = format!("--{boundary}").into_bytes();
        let mut p = Params::new();
        let mut pieces = Vec::new();
        let mut i = 0;
        while let Some(at) = body[i..]
            .windows(delim.len())
            .position(|w| w == delim.as_slice())
        {
            pieces.push(&body[i..i + at]);
            i += at + delim.len();
        }
        for piece in pieces.into_iter().skip(1) {
            let piece = piece.strip_prefix(b"\r\n").unwrap_or(piece);
            let piece = piece.strip_suffix(b"\r\n").unwrap_or(piece);
            let Some(split) = piece.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&piece[..split]).into_owned();
            let content = &piece[split + 4..];
            let field = |key: &str| {
                head.split([';', '\n']).find_map(|f| {
                    let (k, v) = f.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case(key)
                        .then(|| v.trim().trim_matches('"').to_string())
                })
            };
            let Some(name) = field("name") else {
                continue;
            };
            let value = match field("filename") {
                Some(f) => {
                    let mut m = BTreeMap::new();
                    m.insert("filename".to_string(), Value::Str(f.into_bytes()));
                    m.insert("tempfile".to_string(), Value::Str(content.to_vec()));
                    Value::Map(m)
                }
                None => Value::Str(content.to_vec()),
            };
            p.set(&name, value);
        }
        Ok(p)
    }

    /// Rails `params`: body, then the query over it, then the path's
    /// parameters over both.
    pub fn from_request(
        method: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
        path: &[(&str, &str)],
    ) -> Result<Params, ParamError> {
        let body = Params::from_body(content_type, method, body)?;
        let query = Params::from_form(query.unwrap_or("").as_bytes())?;
        let mut p = body.merge(query);
        for (k, v) in path {
            p.set(k, Value::Str(v.as_bytes().to_vec()));
        }
        Ok(p)
    }
}

/// Rack's `DEFAULT_SEP = /[&;] */`: pairs split on `&` or `;`, spaces right
/// after a separator dropped, empty pieces skipped.
fn split_pairs(input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'&' || input[i] == b';' {
            out.push(&input[start..i]);
            i += 1;
            while i < input.len() && input[i] == b' ' {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&input[start..]);
    out.retain(|p| !p.is_empty());
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `URI.decode_www_form_component`: `+` is a space, `%XX` a byte, and any
/// other `%` is an error.
pub fn unescape(s: &[u8]) -> Result<Vec<u8>, ParamError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex_val);
                let lo = s.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h * 16 + l),
                    _ => return Err(ParamError::BadEscape),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A path segment's unescape (Journey): `%XX` decoded, `+` kept, an invalid
/// `%` left as it is.
pub fn unescape_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a name like Rack's `/\A[\[\]]*([^\[\]]+)\]*/`: leading brackets
/// skipped, the key (non-bracket run), trailing `]`s consumed; returns
/// (key, after). `None` when there is no key.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let s = name.trim_start_matches(['[', ']']);
    let end = s.find(['[', ']']).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let key = &s[..end];
    let after = s[end..].trim_start_matches(']');
    Some((key, after))
}

/// `after` = `[]` + child: `^\[\]\[([^\[\]]+)\]$` or `^\[\](.+)$`.
fn list_child(after: &str) -> Option<&str> {
    let rest = after.strip_prefix("[]")?;
    if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if !inner.is_empty() && !inner.contains(['[', ']']) {
            return Some(inner);
        }
    }
    (!rest.is_empty()).then_some(rest)
}

/// Rack's `normalize_params`. Returns false where Rack returns `nil` (no
/// key in `name`).
fn normalize(
    params: &mut BTreeMap<String, Value>,
    name: &str,
    v: Value,
    depth: usize,
) -> Result<bool, ParamError> {
    if depth == 0 {
        return Err(ParamError::TooDeep);
    }
    let Some((k, after)) = split_name(name) else {
        return Ok(false);
    };
    let conflict = || ParamError::TypeConflict(k.to_string());
    // Rack's `params[k] ||= x`: nil (our Null) counts as unset.
    let unset = |p: &BTreeMap<String, Value>| matches!(p.get(k), None | Some(Value::Null));
    if after.is_empty() {
        params.insert(k.to_string(), v);
    } else if after == "[" {
        params.insert(name.to_string(), v);
    } else if after == "[]" {
        if unset(params) {
            params.insert(k.to_string(), Value::List(Vec::new()));
        }
        match params.get_mut(k) {
            Some(Value::List(l)) => l.push(v),
            _ => return Err(conflict()),
        }
    } else if let Some(child) = list_child(after) {
        if unset(params) {
            params.insert(k.to_string(), Value::List(Vec::new()));
        }
        let Some(Value::List(list)) = params.get_mut(k) else {
            return Err(conflict());
        };
        match list.last_mut() {
            Some(Value::Map(last)) if !last.contains_key(child) => {
                normalize(last, child, v, depth - 1)?;
            }
            _ => {
                let mut fresh = BTreeMap::new();
                let got = normalize(&mut fresh, child, v, depth - 1)?;
                list.push(if got { Value::Map(fresh) } else { Value::Null });
            }
        }
    } else {
        if unset(params) {
            params.insert(k.to_string(), Value::Map(BTreeMap::new()));
        }
        let Some(Value::Map(inner)) = params.get_mut(k) else {
            return Err(conflict());
        };
        if !normalize(inner, after, v, depth - 1)? {
            params.insert(k.to_string(), Value::Null);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.as_bytes().to_vec())
    }

    fn form(q: &str) -> Params {
        Params::from_form(q.as_bytes()).unwrap()
    }

    #[test]
    fn pairs_and_separators() {
        let p = form("a=1&b=2;c=3&& d=4;  e=5");
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")] {
            assert_eq!(p.get(k), Some(&s(v)), "{k}");
        }
        // A space before a separator stays part of the value.
        assert_eq!(form("a=1 &b=2").get("a"), Some(&s("1 ")));
    }

    #[test]
    fn decoding() {
        let p = form("a=x+y%20z&b%5B%5D=1&c=%e2%82%ac&d=");
        assert_eq!(p.get("a"), Some(&s("x y z")));
        assert_eq!(p.get("b"), Some(&Value::List(vec![s("1")])));
        assert_eq!(p.get("c"), Some(&s("€")));
        assert_eq!(p.get("d"), Some(&s("")));
        assert_eq!(form("flag").get("flag"), Some(&Value::Null));
        assert_eq!(
            Params::from_form(b"a=%zz"),
            Err(ParamError::BadEscape),
            "invalid escapes are refused (400)"
        );
        assert_eq!(Params::from_form(b"a=100%"), Err(ParamError::BadEscape));
        assert_eq!(unescape_path("a%2Fb%zz+c"), "a/b%zz+c");
    }

    #[test]
    fn last_duplicate_wins() {
        assert_eq!(form("a=1&a=2;a=3").get("a"), Some(&s("3")));
        assert_eq!(form("a[]=1&a=2").get("a"), Some(&s("2")));
    }

    #[test]
    fn nested_names() {
        let p = form("a[]=1&a[]=2&h[x]=3&h[y][z]=4&l[][n]=5&l[][m]=6&l[][n]=7&k]=8&[j]=9&e[=10");
        assert_eq!(p.get("a"), Some(&Value::List(vec![s("1"), s("2")])));
        let Some(Value::Map(h)) = p.get("h") else {
            panic!("h")
        };
        assert_eq!(h.get("x"), Some(&s("3")));
        assert!(matches!(h.get("y"), Some(Value::Map(_))));
        let Some(Value::List(l)) = p.get("l") else {
            panic!("l")
        };
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(p.get("k"), Some(&s("8")));
        assert_eq!(p.get("j"), Some(&s("9")));
        assert_eq!(p.get("e["), Some(&s("10")));
        assert!(form("[]=1&=2").map.is_empty());
    }

    #[test]
    fn shape_conflicts_refused() {
        assert!(matches!(
            Params::from_form(b"a=1&a[]=2"),
            Err(ParamError::TypeConflict(_))
        ));
        assert!(matches!(
            Params::from_form(b"a=1&a[b]=2"),
            Err(ParamError::TypeConflict(_))
        ));
        // nil is replaced (Rack's ||=).
        assert_eq!(form("a&a[]=2").get("a"), Some(&Value::List(vec![s("2")])));
        let deep = format!("a{}=1", "[x]".repeat(DEPTH_LIMIT));
        assert_eq!(Params::from_form(deep.as_bytes()), Err(ParamError::TooDeep));
    }

    #[test]
    fn merge_order_query_over_body_path_over_both() {
        let p = Params::from_request(
            "POST",
            Some("a=q&id=q"),
            None,
            b"a=b&b=b&id=b",
            &[("id", "path")],
        )
        .unwrap();
        assert_eq!(p.get("a"), Some(&s("q")));
        assert_eq!(p.get("b"), Some(&s("b")));
        assert_eq!(p.get("id"), Some(&s("path")));
    }

    #[test]
    fn body_kinds() {
        assert_eq!(body_kind(None, "POST"), BodyKind::Form);
        assert_eq!(body_kind(Some(""), "POST"), BodyKind::Form);
        assert_eq!(body_kind(None, "GET"), BodyKind::Ignored);
        assert_eq!(
            body_kind(
                Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
                "GET"
            ),
            BodyKind::Form
        );
        assert_eq!(body_kind(Some("application/json"), "POST"), BodyKind::Json);
        assert_eq!(
            body_kind(Some("application/vnd.api+json"), "POST"),
            BodyKind::Json
        );
        assert_eq!(body_kind(Some("text/plain"), "POST"), BodyKind::Ignored);
        let p = Params::from_request("POST", None, Some("text/plain"), b"a=1", &[]).unwrap();
        assert_eq!(p.get("a"), None);
    }

    #[test]
    fn json_keeps_types() {
        let p = Params::from_json(
            br#"{"s":"x","i":5,"f":5.0,"t":true,"n":null,"b":false,"l":[1],"o":{"k":"v"}}"#,
        )
        .unwrap();
        assert_eq!(p.get("s"), Some(&s("x")));
        assert_eq!(p.get("i"), Some(&Value::Int("5".into())));
        assert_eq!(p.get("f"), Some(&Value::Float(5.0)));
        assert_eq!(p.get("t"), Some(&Value::Bool(true)));
        assert_eq!(p.get("n"), Some(&Value::Null));
        assert!(!p.get("b").unwrap().truthy() && !p.get("n").unwrap().truthy());
        assert!(matches!(p.get("l"), Some(Value::List(_))));
        assert!(matches!(p.get("o"), Some(Value::Map(_))));
        assert_eq!(
            Params::from_json(b"[1]").unwrap().get("_json"),
            Some(&Value::List(vec![Value::Int("1".into())]))
        );
        assert!(Params::from_json(b"{").is_err());
        assert_eq!(Params::from_json(b"").unwrap(), Params::new());
    }

    #[test]
    fn ruby_to_s() {
        let t = |v: Value| String::from_utf8(v.to_s().unwrap().into_owned()).unwrap();
        assert_eq!(t(Value::Bool(true)), "true");
        assert_eq!(t(Value::Bool(false)), "false");
        assert_eq!(t(Value::Null), "");
        assert_eq!(t(Value::Int("-12".into())), "-12");
        assert!(Value::List(vec![]).to_s().is_none());
        for (f, r) in [
            (5.0, "5.0"),
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1.0e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1.0e+16"),
            (1.5e300, "1.5e+300"),
            (123456789.125, "123456789.125"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(ruby_float(f), r, "{f}");
        }
    }
}
