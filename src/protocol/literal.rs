//! The number literals of a JSON text, each with where it stands in a frame (the top-level
//! `requestId`, inside `query.where`, elsewhere), found by a small lexer rather than a parser.
//!
//! serde_json keeps no literal's text and refuses a whole text over one literal beyond f64
//! (`1e400`, which JavaScript reads as Infinity): `decode` asks this lexer which literals those
//! are and where they stand, and what a fractional or huge `requestId` was written as (serde_json
//! reads those digits only approximately; `str::parse` rounds them as JavaScript does).
//!
//! The lexer skips strings (escapes included), tracks objects, arrays and the current key of
//! each object, and takes a number to be a maximal run of `0-9 + - . e E` starting with `-` or a
//! digit ([`Literal::is_number`] checks JSON's grammar). On text that is not JSON it still ends,
//! with meaningless places.

use std::borrow::Cow;

/// Where a literal stands in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// The value of the top-level object's `requestId`.
    RequestId,
    /// Inside (not at) the value of `where` in the top-level `query` object.
    Where,
    Elsewhere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Literal<'a> {
    pub text: &'a str,
    /// Byte offset in the lexed text.
    pub start: usize,
    pub place: Place,
}

impl Literal<'_> {
    /// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    pub fn is_number(&self) -> bool {
        let bytes = self.text.as_bytes();
        let mut at = usize::from(bytes.first() == Some(&b'-'));
        match bytes.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => at = digits(bytes, at),
            _ => return false,
        }
        if bytes.get(at) == Some(&b'.') {
            let first = at + 1;
            at = digits(bytes, first);
            if at == first {
                return false;
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1 + usize::from(matches!(bytes.get(at + 1), Some(b'+' | b'-')));
            let first = at;
            at = digits(bytes, first);
            if at == first {
                return false;
            }
        }
        at == bytes.len()
    }

    /// A JSON number serde_json cannot read, its value being beyond f64 (JavaScript reads
    /// ±Infinity); serde_json's judgement, as it is serde_json that refused the frame.
    pub fn overflows(&self) -> bool {
        self.is_number() && serde_json::from_str::<serde_json::Number>(self.text).is_err()
    }

    /// Its value as JavaScript reads it (the nearest f64), when that is finite.
    pub fn value(&self) -> Option<f64> {
        self.text.parse::<f64>().ok().filter(|value| self.is_number() && value.is_finite())
    }

    fn end(&self) -> usize {
        self.start + self.text.len()
    }
}

/// The index after the run of ASCII digits starting at `at`.
fn digits(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// An open object or array.
struct Open<'a> {
    object: bool,
    /// An object's key being read or whose value is being read.
    key: Option<Cow<'a, str>>,
    /// In an object, between `{` or `,` and `:`.
    expects_key: bool,
}

impl Open<'_> {
    fn is_at(&self, key: &str) -> bool {
        self.object && !self.expects_key && self.key.as_deref() == Some(key)
    }
}

/// The number literals of `text`, in order.
pub(super) fn literals(text: &str) -> Literals<'_> {
    Literals { text, at: 0, open: Vec::new() }
}

/// `text` with each of `literals` (of that text, in order) replaced by `null`.
pub(super) fn with_nulls(text: &str, literals: &[Literal<'_>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for literal in literals {
        out.push_str(text.get(copied..literal.start).unwrap_or_default());
        out.push_str("null");
        copied = literal.end();
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

pub(super) struct Literals<'a> {
    text: &'a str,
    at: usize,
    open: Vec<Open<'a>>,
}

impl<'a> Iterator for Literals<'a> {
    type Item = Literal<'a>;

    fn next(&mut self) -> Option<Literal<'a>> {
        while let Some(&byte) = self.text.as_bytes().get(self.at) {
            match byte {
                b'"' => self.string(),
                b'-' | b'0'..=b'9' => return Some(self.number()),
                b'{' | b'[' => {
                    let object = byte == b'{';
                    self.open.push(Open { object, key: None, expects_key: object });
                }
                b'}' | b']' => {
                    self.open.pop();
                }
                b':' => {
                    if let Some(open) = self.open.last_mut() {
                        open.expects_key = false;
                    }
                }
                b',' => {
                    if let Some(open) = self.open.last_mut().filter(|open| open.object) {
                        open.expects_key = true;
                        open.key = None;
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
        None
    }
}

impl<'a> Literals<'a> {
    /// Skips the string at `self.at`, up to its closing quote (left for `next` to step over);
    /// an object's key is remembered, unescaped.
    fn string(&mut self) {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut at = start + 1;
        let mut escaped = false;
        while let Some(&byte) = bytes.get(at) {
            match byte {
                b'\\' => {
                    escaped = true;
                    at += 1;
                }
                b'"' => break,
                _ => {}
            }
            at += 1;
        }
        self.at = at.min(bytes.len());
        if let Some(open) = self.open.last_mut().filter(|open| open.object && open.expects_key) {
            let quoted = self.text.get(start..=self.at).unwrap_or_default();
            open.key = if escaped {
                serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
            } else {
                quoted.get(1..quoted.len().saturating_sub(1)).map(Cow::Borrowed)
            };
        }
    }

    /// The number at `self.at`; leaves `self.at` on the byte after it.
    fn number(&mut self) -> Literal<'a> {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut end = start;
        while bytes.get(end).is_some_and(|b| matches!(b, b'0'..=b'9' | b'+' | b'-' | b'.' | b'e' | b'E')) {
            end += 1;
        }
        self.at = end;
        Literal { text: self.text.get(start..end).unwrap_or_default(), start, place: self.place() }
    }

    fn place(&self) -> Place {
        match self.open.as_slice() {
            [top] if top.is_at("requestId") => Place::RequestId,
            [top, query, _, ..] if top.is_at("query") && query.is_at("where") => Place::Where,
            _ => Place::Elsewhere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(&str, Place)> {
        literals(text).map(|l| (l.text, l.place)).collect()
    }

    #[test]
    fn places_in_a_frame() {
        let frame = r#"{"op":"subscribe","requestId":1e15,"query":{"className":"A","where":{"n":-1e400,
            "$or":[{"m":{"$in":[1,2.5]}}]},"keys":["a"]},"x":[3,{"requestId":4}],"y":5}"#;
        assert_eq!(
            found(frame),
            [
                ("1e15", Place::RequestId),
                ("-1e400", Place::Where),
                ("1", Place::Where),
                ("2.5", Place::Where),
                ("3", Place::Elsewhere),
                ("4", Place::Elsewhere),
                ("5", Place::Elsewhere),
            ]
        );
        // The value of `where` itself is not inside it; a `where` elsewhere is not the query's.
        assert_eq!(found(r#"{"query":{"where":7}}"#), [("7", Place::Elsewhere)]);
        assert_eq!(found(r#"{"x":{"where":{"n":7}}}"#), [("7", Place::Elsewhere)]);
        assert_eq!(found(r#"[{"requestId":7}]"#), [("7", Place::Elsewhere)]);
    }

    #[test]
    fn strings_are_skipped_and_keys_unescaped() {
        assert_eq!(found(r#"{"a":"1e400","b\"":"x\\","c":2}"#), [("2", Place::Elsewhere)]);
        assert_eq!(found(r#"{"request\u0049d":8}"#), [("8", Place::RequestId)]);
        assert_eq!(found(r#"{"requestId":"requestId","z":9}"#), [("9", Place::Elsewhere)]);
        assert_eq!(found(r#"{"q":"é\"1","requestId":0}"#), [("0", Place::RequestId)]);
        // Unterminated and garbage: ends, without panicking.
        assert_eq!(found(r#"{"a":"1e400"#), []);
        assert_eq!(found("}}]]:,1"), [("1", Place::Elsewhere)]);
        assert_eq!(found(r#"{"\"#), []);
    }

    #[test]
    fn overflow_follows_json_grammar_and_f64() {
        fn literal(text: &str) -> Literal<'_> {
            Literal { text, start: 0, place: Place::Elsewhere }
        }
        for text in ["1e400", "-1e400", "1E+309", "-0.5e99999", &"9".repeat(400)] {
            assert!(literal(text).overflows(), "{text}");
        }
        for text in
            ["1e308", "1.7976931348623157e308", "1e-400", "-0", "0", "12.5e-3", "1.", ".5", "01e400", "1e", "+1"]
        {
            assert!(!literal(text).overflows(), "{text}");
        }
        for text in ["1.", ".5", "01", "1e", "1e+", "--1", "-", "1.e5", "1e5.5", "+1"] {
            assert!(!literal(text).is_number(), "{text}");
        }
        assert_eq!(literal("123456789012345678901234567890123456789").value(), Some(1.2345678901234568e38));
        assert_eq!(literal("1e400").value(), None);
        assert_eq!(literal("1.").value(), None);
    }

    #[test]
    fn overflowing_literals_become_null() {
        let text = r#"{"a":[1e400,2,-1e999],"b":"1e400"}"#;
        let overflowing: Vec<_> = literals(text).filter(Literal::overflows).collect();
        assert_eq!(with_nulls(text, &overflowing), r#"{"a":[null,2,null],"b":"1e400"}"#);
        assert_eq!(with_nulls(text, &[]), text);
    }
}
