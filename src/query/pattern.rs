//! `$regex` with `$options`: Parse's pattern text compiled for the `regex` crate, whose matching
//! time is linear in the subject whatever the pattern (no catastrophic backtracking), and whose
//! compiled size is capped here.
//!
//! Parse's SDK quotes user text as `\Q…\E` (Perl's quoting, which JavaScript lacks); it is
//! translated with Perl's semantics: everything between `\Q` and the next `\E` is literal, a `\Q`
//! without `\E` quotes to the end of the pattern, a stray `\E` is ignored, and `\\Q` is an escaped
//! backslash followed by `Q`.

use regex::{Regex, RegexBuilder};

/// Upper bound on a compiled program and on each lazy-DFA cache, in bytes (the crate's defaults
/// are 10 MiB and 2 MiB). For scale: `\w+` compiles to about 50 KB, an e-mail pattern to 150 KB,
/// `\w{10}` (Unicode classes are large) to 490 KB. A pattern that needs more is refused; a cache
/// that fills falls back to a slower engine that is still linear.
const COMPILED_SIZE_LIMIT: usize = 512 * 1024;
const DFA_SIZE_LIMIT: usize = 512 * 1024;
/// Parenthesis/repetition nesting the parser accepts (the crate's default is 250).
const NEST_LIMIT: u32 = 64;

/// A `$regex` with its `$options`: `i` case-insensitive, `m` `^`/`$` at line ends, `s` `.`
/// matches `\n`, `x` whitespace and `#` comments ignored, `u` Unicode (always on; accepted because
/// JavaScript users send it). Any other flag is refused.
pub fn compile(pattern: &str, options: &str, max_bytes: usize) -> Result<Regex, String> {
    if pattern.len() > max_bytes {
        return Err(format!("pattern is {} bytes, more than the limit of {max_bytes}", pattern.len()));
    }
    let mut builder = RegexBuilder::new(&translate_quoting(pattern));
    for flag in options.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            'u' => builder.unicode(true),
            other => return Err(format!("unknown option {other:?} (allowed: i, m, s, u, x)")),
        };
    }
    builder.size_limit(COMPILED_SIZE_LIMIT).dfa_size_limit(DFA_SIZE_LIMIT).nest_limit(NEST_LIMIT);
    builder.build().map_err(describe)
}

/// One line out of the crate's (multi-line, caret-annotated) error text.
fn describe(error: regex::Error) -> String {
    match error {
        regex::Error::CompiledTooBig(limit) => {
            format!("pattern compiles to more than {limit} bytes")
        }
        other => {
            let text = other.to_string();
            let reason = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")).unwrap_or(text.trim());
            format!("invalid regular expression: {reason}")
        }
    }
}

/// Rewrites `\Q…\E` blocks as escaped literals; leaves every other escape as written.
pub fn translate_quoting(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(backslash) = rest.find('\\') {
        out.push_str(&rest[..backslash]);
        let after = &rest[backslash + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing lone backslash: kept, so the regex parser reports it.
            out.push('\\');
            return out;
        };
        let tail = &after[next.len_utf8()..];
        match next {
            'Q' => match tail.find("\\E") {
                Some(end) => {
                    push_literal(&mut out, &tail[..end]);
                    rest = &tail[end + 2..];
                }
                None => {
                    push_literal(&mut out, tail);
                    return out;
                }
            },
            'E' => rest = tail,
            other => {
                out.push('\\');
                out.push(other);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Each character literally: letters, digits and `_` as themselves, anything else as a `\x{…}`
/// escape (which stays literal under the `x` flag too).
fn push_literal(out: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_perl() {
        assert_eq!(translate_quoting(r"^\Qa.b\E$"), r"^a\x{2E}b$");
        assert_eq!(translate_quoting(r"\Qa.b"), r"a\x{2E}b");
        assert_eq!(translate_quoting(r"\Q"), "");
        assert_eq!(translate_quoting(r"a\Eb"), "ab");
        assert_eq!(translate_quoting(r"\\Q"), r"\\Q");
        assert_eq!(translate_quoting(r"\Qh \Q\E"), r"h\x{20}\x{5C}Q");
        assert_eq!(translate_quoting(r"\d+\Q*\E\w"), r"\d+\x{2A}\w");
        assert_eq!(translate_quoting("é\\Qé ü\\E"), r"éé\x{20}ü");
        assert_eq!(translate_quoting("a\\"), "a\\");
    }

    #[test]
    fn options_and_limits() {
        assert!(compile("A", "i", 10).unwrap().is_match("a"));
        assert!(compile("^b", "m", 10).unwrap().is_match("a\nb"));
        assert!(compile("a.b", "s", 10).unwrap().is_match("a\nb"));
        assert!(compile("a b # comment", "x", 100).unwrap().is_match("ab"));
        assert!(compile(r"\Qa b\E", "x", 100).unwrap().is_match("a b"));
        assert_eq!(compile("a", "g", 10).unwrap_err(), "unknown option 'g' (allowed: i, m, s, u, x)");
        assert_eq!(compile("aaaa", "", 3).unwrap_err(), "pattern is 4 bytes, more than the limit of 3");
        assert!(compile("(", "", 10).unwrap_err().starts_with("invalid regular expression: "));
        assert!(compile(r"(a)\1", "", 10).unwrap_err().contains("backreferences are not supported"));
        assert!(compile(r"\w{10}", "", 100).is_ok());
        assert!(compile(r"\w{1000}", "", 100).unwrap_err().contains("compiles to more than"));
    }
}
