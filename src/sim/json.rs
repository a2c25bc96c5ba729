//! A small strict JSON reader (RFC 8259) into [`Value`], keeping what Ruby's
//! JSON gem keeps: integers of any size as integers (their text), numbers
//! with a fraction or exponent as floats, `true`/`false`/`null`, and for a
//! repeated object member the last one.
//!
//! Refused (the simulator answers 400): invalid UTF-8, control characters
//! inside strings, lone surrogate escapes, comments, `NaN`/`Infinity`,
//! trailing garbage, and nesting deeper than the limit.

use std::collections::BTreeMap;

use super::rails::Value;

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(input: &[u8], depth_limit: usize) -> Result<Value, String> {
    let text = std::str::from_utf8(input).map_err(|_| "body is not UTF-8".to_string())?;
    let mut r = Reader {
        s: text.as_bytes(),
        i: 0,
        limit: depth_limit,
    };
    r.ws();
    let v = r.value(0)?;
    r.ws();
    if r.i != r.s.len() {
        return Err(format!("unexpected data at byte {}", r.i));
    }
    Ok(v)
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
    limit: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, String> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("invalid literal")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::Str(self.string()?.into_bytes())),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        if depth > self.limit {
            return self.err("nesting too deep");
        }
        self.i += 1;
        let mut map = BTreeMap::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Map(map));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return self.err("expected a member name");
            }
            let k = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return self.err("expected ':'");
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth)?;
            map.insert(k, v);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Map(map));
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        if depth > self.limit {
            return self.err("nesting too deep");
        }
        self.i += 1;
        let mut list = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::List(list));
        }
        loop {
            self.ws();
            list.push(self.value(depth)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::List(list));
                }
                _ => return self.err("expected ',' or ']'"),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let Some(h) = self.s.get(self.i..self.i + 4) else {
            return self.err("short \\u escape");
        };
        let h = std::str::from_utf8(h).map_err(|_| "bad \\u escape".to_string())?;
        let n = u32::from_str_radix(h, 16).map_err(|_| format!("bad \\u escape at {}", self.i))?;
        self.i += 4;
        Ok(n)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters (the input is valid UTF-8).
            let start = self.i;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(&String::from_utf8_lossy(&self.s[start..self.i]));
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(e) = self.peek() else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return self.err("lone surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("lone surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(c) {
                                Some(ch) => out.push(ch),
                                None => return self.err("lone surrogate"),
                            }
                        }
                        _ => return self.err("invalid escape"),
                    }
                }
                Some(_) => return self.err("control character in string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        let n = self.digits();
        if n == 0 || (n > 1 && self.s[int_start] == b'0') {
            return self.err("invalid number");
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
            float = true;
        }
        let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        if float {
            text.parse::<f64>()
                .map(Value::Float)
                .map_err(|_| format!("invalid number at {start}"))
        } else if text == "-0" {
            // Ruby: -0 is the integer 0.
            Ok(Value::Int("0".into()))
        } else {
            Ok(Value::Int(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Value, String> {
        parse(s.as_bytes(), 100)
    }

    #[test]
    fn scalars_and_numbers() {
        assert_eq!(p(" true "), Ok(Value::Bool(true)));
        assert_eq!(p("null"), Ok(Value::Null));
        assert_eq!(p("-0"), Ok(Value::Int("0".into())));
        assert_eq!(
            p("123456789012345678901234567890"),
            Ok(Value::Int("123456789012345678901234567890".into()))
        );
        assert_eq!(p("1e2"), Ok(Value::Float(100.0)));
        assert_eq!(p("-1.5"), Ok(Value::Float(-1.5)));
        for bad in ["01", "1.", ".5", "+1", "1e", "NaN", "tru", "1 2", ""] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strings() {
        assert_eq!(
            p(r#""a\"\\\/\n\u00e9\ud83d\ude00""#),
            Ok(Value::Str("a\"\\/\né😀".as_bytes().to_vec()))
        );
        assert!(p(r#""\ud83d""#).is_err());
        assert!(p("\"a\u{1}\"").is_err());
        assert!(p(r#""\x""#).is_err());
        assert!(parse(b"\"\xff\"", 100).is_err());
    }

    #[test]
    fn objects_last_member_wins_and_depth() {
        let Ok(Value::Map(m)) = p(r#"{"a":1,"a":2,"b":[{},[]]}"#) else {
            panic!()
        };
        assert_eq!(m.get("a"), Some(&Value::Int("2".into())));
        assert!(p(r#"{"a":1,}"#).is_err());
        assert!(p(&format!("{}{}", "[".repeat(100), "]".repeat(100))).is_ok());
        assert!(p(&format!("{}{}", "[".repeat(101), "]".repeat(101))).is_err());
    }
}
