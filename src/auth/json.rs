//! A strict JSON parser for the flat objects of a JWT header and claims set.
//!
//! Accepted (RFC 8259 grammar, restricted): one object whose members are
//! strings, numbers, `true`/`false`/`null`, or arrays of strings. Nested
//! objects, arrays of anything but strings, duplicate member names, bytes
//! after the object and more than [`MAX_MEMBERS`] members (or
//! [`MAX_ARRAY`] array items) are refused. Why a hand-written subset rather
//! than a crate: the input is at most a few kilobytes of attacker-chosen bytes,
//! the shape a token needs is flat, and refusing every other shape up front
//! keeps the parser small enough to fuzz to exhaustion, with no recursion and
//! no allocation beyond the strings it returns.
//!
//! Numbers are kept as `f64` (JWT NumericDate may carry a fraction); the claim
//! checks turn them into whole seconds and refuse what does not fit. Strings
//! without escapes borrow from the input (a token check is on the connection
//! path: allocation is most of its cost); the input is validated as UTF-8 once,
//! so every slice between ASCII delimiters is valid UTF-8 too.

use std::borrow::Cow;

/// Most members in one object.
pub const MAX_MEMBERS: usize = 64;
/// Most items in one array.
pub const MAX_ARRAY: usize = 256;

/// One member's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// A number.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An array of strings.
    Strs(Vec<Cow<'a, str>>),
}

/// Why the bytes are not an accepted object; `&'static str` so the error never
/// echoes attacker input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonError(pub &'static str);

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parse `input` as one flat object into (name, value) pairs in input order.
pub fn parse_object(input: &[u8]) -> Result<Vec<(Cow<'_, str>, Value<'_>)>, JsonError> {
    let text = std::str::from_utf8(input).map_err(|_| JsonError("not UTF-8"))?;
    let mut p = Parser {
        s: input,
        t: text,
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut members: Vec<(Cow<'_, str>, Value<'_>)> = Vec::with_capacity(8);
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let name = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = p.value()?;
            if members.iter().any(|(n, _)| *n == name) {
                return Err(JsonError("duplicate member"));
            }
            if members.len() == MAX_MEMBERS {
                return Err(JsonError("too many members"));
            }
            members.push((name, value));
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(JsonError("expected , or }")),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(JsonError("bytes after the object"));
    }
    Ok(members)
}

struct Parser<'a> {
    s: &'a [u8],
    /// `s` as text (validated once).
    t: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonError> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(JsonError("unexpected byte"))
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(JsonError("bad literal"))
        }
    }

    fn value(&mut self) -> Result<Value<'a>, JsonError> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Num),
            Some(b't') => self.literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Value::Null),
            Some(b'[') => self.strings().map(Value::Strs),
            Some(b'{') => Err(JsonError("nested objects are not accepted")),
            _ => Err(JsonError("expected a value")),
        }
    }

    fn strings(&mut self) -> Result<Vec<Cow<'a, str>>, JsonError> {
        self.expect(b'[')?;
        let mut out = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(JsonError("arrays may hold only strings"));
            }
            if out.len() == MAX_ARRAY {
                return Err(JsonError("array too long"));
            }
            out.push(self.string()?);
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => return Ok(out),
                _ => return Err(JsonError("expected , or ]")),
            }
        }
    }

    /// RFC 8259 number grammar, checked byte by byte, then handed to the
    /// standard float parser (which accepts a superset, so the check matters).
    fn number(&mut self) -> Result<f64, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(JsonError("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(JsonError("bad number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(JsonError("bad number"));
            }
            self.digits();
        }
        // The slice is ASCII by construction.
        let text =
            std::str::from_utf8(&self.s[start..self.i]).map_err(|_| JsonError("bad number"))?;
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or(JsonError("bad number"))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.next() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(JsonError("bad \\u escape")),
            };
            v = v << 4 | u32::from(d);
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.expect(b'"')?;
        let first = self.i;
        while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
            self.i += 1;
        }
        if self.peek() == Some(b'"') {
            self.i += 1;
            // Between two ASCII bytes of valid UTF-8: a char boundary on both ends.
            return self
                .t
                .get(first..self.i - 1)
                .map(Cow::Borrowed)
                .ok_or(JsonError("string is not UTF-8"));
        }
        let mut out = String::from(
            self.t
                .get(first..self.i)
                .ok_or(JsonError("string is not UTF-8"))?,
        );
        loop {
            let start = self.i;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.i += 1;
            }
            out.push_str(
                self.t
                    .get(start..self.i)
                    .ok_or(JsonError("string is not UTF-8"))?,
            );
            match self.next() {
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                                    return Err(JsonError("lone surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(JsonError("lone surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or(JsonError("lone surrogate"))?
                        }
                        _ => return Err(JsonError("bad escape")),
                    };
                    out.push(c);
                }
                Some(_) => return Err(JsonError("control character in a string")),
                None => return Err(JsonError("unterminated string")),
            }
        }
        Ok(Cow::Owned(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<(String, Value<'static>)> {
        parse_object(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
                    Value::Strs(v) => {
                        Value::Strs(v.into_iter().map(|s| Cow::Owned(s.into_owned())).collect())
                    }
                    Value::Num(n) => Value::Num(n),
                    Value::Bool(b) => Value::Bool(b),
                    Value::Null => Value::Null,
                };
                (k.into_owned(), v)
            })
            .collect()
    }

    #[test]
    fn flat_objects_parse() {
        assert_eq!(ok("{}"), vec![]);
        assert_eq!(
            ok(
                r#" { "a" : "x\"\u00e9\ud83d\ude00" , "n":-1.5e2,"t":true,"f":false,"z":null,"r":["a", "b"],"e":[] } "#
            ),
            vec![
                ("a".into(), Value::Str("x\"é😀".into())),
                ("n".into(), Value::Num(-150.0)),
                ("t".into(), Value::Bool(true)),
                ("f".into(), Value::Bool(false)),
                ("z".into(), Value::Null),
                ("r".into(), Value::Strs(vec!["a".into(), "b".into()])),
                ("e".into(), Value::Strs(vec![])),
            ]
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1}x",
            "{\"a\":{}}",
            "{\"a\":[1]}",
            "{\"a\":[\"x\",]}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\n\"}",
            "{\"a\":1,\"a\":2}",
            "{'a':1}",
            "{\"a\":1e999}",
        ] {
            assert!(parse_object(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_object(b"{\"a\":\"\xff\"}").is_err());
    }

    #[test]
    fn sizes_are_bounded() {
        let many: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("\"k{i}\":1")).collect();
        assert!(parse_object(format!("{{{}}}", many.join(",")).as_bytes()).is_err());
        let fits: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("\"k{i}\":1")).collect();
        assert!(parse_object(format!("{{{}}}", fits.join(",")).as_bytes()).is_ok());
        let long = vec!["\"x\""; MAX_ARRAY + 1].join(",");
        assert!(parse_object(format!("{{\"a\":[{long}]}}").as_bytes()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_object(&bytes);
        }

        #[test]
        fn strings_round_trip(s in "\\PC{0,40}") {
            let mut enc = String::from("{\"k\":\"");
            super::super::token::push_json_str(&mut enc, &s);
            enc.push_str("\"}");
            proptest::prop_assert_eq!(ok(&enc), vec![("k".to_string(), Value::Str(s.into()))]);
        }
    }
}
