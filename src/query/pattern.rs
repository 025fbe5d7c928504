//! `$regex` with `$options`: Parse's pattern text compiled with `regex-automata`'s meta engine
//! (the engine behind the `regex` crate, configured as `regex::RegexBuilder` configures it, so the
//! matches and error messages are the crate's), whose matching time is linear in the subject
//! whatever the pattern (no catastrophic backtracking), whose compiled size is capped here, and
//! which reports the memory it holds.
//!
//! Identical patterns are compiled once per process: a `Table` maps (pattern text after the
//! `\Q…\E` translation, flags) to a `Weak` reference, so every query using a pattern shares one
//! compiled regex (and its per-thread matching caches), asking for a pattern that is live costs a
//! hash lookup, and a pattern is freed when the last query holding it is dropped. Each pattern
//! accounts for [`Pattern::memory`]; [`live_memory`] is the total over the live patterns.
//!
//! Parse's SDK quotes user text as `\Q…\E` (Perl's quoting, which JavaScript lacks); it is
//! translated with Perl's semantics: everything between `\Q` and the next `\E` is literal, a `\Q`
//! without `\E` quotes to the end of the pattern, a stray `\E` is ignored, and `\\Q` is an escaped
//! backslash followed by `Q`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use regex_automata::meta::{self, BuildError};
use regex_automata::util::syntax;
use regex_automata::MatchKind;

/// Upper bound on each compiled NFA (forward and reverse), in bytes; the `regex` crate's default
/// is 10 MiB. For scale: `\w+` compiles to about 50 KB, an e-mail pattern to 150 KB, `\w{10}`
/// (Unicode classes are large) to 490 KB. A pattern that needs more is refused. With both
/// directions and its cache, `\w{10}` accounts for about 1 MiB, `^abc` for 65 KiB.
const COMPILED_SIZE_LIMIT: usize = 512 * 1024;
/// Bounds of the lazy DFA's cache capacity, per thread that matches (the crate's default is
/// 2 MiB); see [`cache_capacity`]. A cache that fills is cleared, and one cleared too often
/// falls back to a slower engine that is still linear.
const MIN_CACHE: usize = 64 * 1024;
const MAX_CACHE: usize = 512 * 1024;
/// Parenthesis/repetition nesting the parser accepts (the crate's default is 250).
const NEST_LIMIT: u32 = 64;
/// Dead entries of a [`Table`] are swept when an insert finds it holding this many entries or
/// twice the number the previous sweep left, whichever is more: the map holds at most twice the
/// patterns that were live at the last sweep (or this many), at an amortised constant cost per
/// insert.
const MIN_SWEEP: usize = 64;

/// The `$options` flags that change what a pattern means (`u` does not: Unicode is always on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Flags {
    case_insensitive: bool,
    multi_line: bool,
    dot_matches_new_line: bool,
    ignore_whitespace: bool,
}

/// What identifies a compiled pattern: its translated text and its flags.
type Key = (String, Flags);

/// A compiled `$regex`, shared by every query that uses the same pattern and options.
pub struct Pattern {
    regex: meta::Regex,
    memory: usize,
    /// The live total of the table that made it, which dropping the pattern lowers.
    live: &'static AtomicUsize,
}

impl Pattern {
    pub fn is_match(&self, subject: &str) -> bool {
        self.regex.is_match(subject)
    }

    /// The memory this pattern accounts for: the compiled regex (`memory_usage()`: its NFAs,
    /// prefilter, one-pass and full DFAs) plus its lazy-DFA cache capacity, the bound on what
    /// matching adds per thread in the usual case (the lazy DFA runs nearly every search; each
    /// thread matching concurrently has caches of its own, and a search the lazy DFA gives up
    /// on uses the PikeVM or backtracker, whose scratch grows with the compiled size and, for
    /// the backtracker, is capped at 256 KiB).
    pub fn memory(&self) -> usize {
        self.memory
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pattern").field("memory", &self.memory).finish_non_exhaustive()
    }
}

impl Drop for Pattern {
    fn drop(&mut self) {
        self.live.fetch_sub(self.memory, Ordering::SeqCst);
    }
}

/// A pattern from a [`Table`], and whether this request compiled it (`false`: it was live, and
/// costs nothing new).
pub(super) struct Shared {
    pub pattern: Arc<Pattern>,
    pub compiled: bool,
}

/// Compiled patterns by [`Key`], held weakly, and the memory the live ones account for.
pub(super) struct Table {
    entries: Mutex<Entries>,
    live: AtomicUsize,
}

struct Entries {
    map: HashMap<Key, Weak<Pattern>>,
    sweep_at: usize,
}

/// The process-wide table the queries compile their patterns in.
static SHARED: LazyLock<Table> = LazyLock::new(Table::new);

pub(super) fn shared() -> &'static Table {
    &SHARED
}

/// The memory accounted for by the distinct live patterns of the process (see
/// [`Pattern::memory`]).
pub fn live_memory() -> usize {
    SHARED.live_memory()
}

impl Table {
    pub fn new() -> Table {
        Table { entries: Mutex::new(Entries { map: HashMap::new(), sweep_at: MIN_SWEEP }), live: AtomicUsize::new(0) }
    }

    pub fn live_memory(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// A `$regex` with its `$options`: `i` case-insensitive, `m` `^`/`$` at line ends, `s` `.`
    /// matches `\n`, `x` whitespace and `#` comments ignored, `u` Unicode (always on; accepted
    /// because JavaScript users send it). Any other flag is refused. The live pattern when there
    /// is one; otherwise compiled without holding the table's lock (two threads compiling the
    /// same new pattern at once both compile it, and the second to finish takes the first's).
    pub fn share(&'static self, pattern: &str, options: &str, max_bytes: usize) -> Result<Shared, String> {
        if pattern.len() > max_bytes {
            return Err(format!("pattern is {} bytes, more than the limit of {max_bytes}", pattern.len()));
        }
        let key = (translate_quoting(pattern), flags(options)?);
        if let Some(pattern) = self.lookup(&key) {
            return Ok(Shared { pattern, compiled: false });
        }
        let (regex, cache) = build(&key.0, key.1)?;
        Ok(self.insert(key, regex, cache))
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Every update of the map is a single call, so a panic elsewhere cannot leave it torn.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self, key: &Key) -> Option<Arc<Pattern>> {
        self.entries().map.get(key).and_then(Weak::upgrade)
    }

    /// Files a newly compiled regex, unless another thread filed the same pattern meanwhile.
    fn insert(&'static self, key: Key, regex: meta::Regex, cache: usize) -> Shared {
        let mut entries = self.entries();
        if let Some(pattern) = entries.map.get(&key).and_then(Weak::upgrade) {
            return Shared { pattern, compiled: false };
        }
        if entries.map.len() >= entries.sweep_at {
            entries.map.retain(|_, pattern| pattern.strong_count() > 0);
            entries.sweep_at = MIN_SWEEP.max(2 * entries.map.len());
        }
        let memory = regex.memory_usage() + cache;
        self.live.fetch_add(memory, Ordering::SeqCst);
        let pattern = Arc::new(Pattern { regex, memory, live: &self.live });
        entries.map.insert(key, Arc::downgrade(&pattern));
        Shared { pattern, compiled: true }
    }
}

fn flags(options: &str) -> Result<Flags, String> {
    let mut flags = Flags::default();
    for flag in options.chars() {
        match flag {
            'i' => flags.case_insensitive = true,
            'm' => flags.multi_line = true,
            's' => flags.dot_matches_new_line = true,
            'x' => flags.ignore_whitespace = true,
            'u' => {}
            other => return Err(format!("unknown option {other:?} (allowed: i, m, s, u, x)")),
        }
    }
    Ok(flags)
}

/// The compiled regex and its lazy-DFA cache capacity. Built with the smallest cache first;
/// a pattern whose compiled size calls for a larger one is built again with it.
fn build(pattern: &str, flags: Flags) -> Result<(meta::Regex, usize), String> {
    let regex = build_with(pattern, flags, MIN_CACHE)?;
    let cache = cache_capacity(regex.memory_usage());
    if cache == MIN_CACHE {
        return Ok((regex, cache));
    }
    Ok((build_with(pattern, flags, cache)?, cache))
}

/// The lazy DFA's cache capacity for a regex whose compiled parts take `compiled` bytes: that
/// rounded up to a power of two, within [`MIN_CACHE`, `MAX_CACHE`]. The lazy DFA refuses to run
/// with less than room for a few states, which grows with the NFA (measured: up to 1.2 ×
/// `memory_usage()`, e.g. between 256 and 512 KiB for `\w{10}`); without it every search runs
/// the backtracker or the PikeVM, 20 to 75 times slower. Small patterns get small caches.
fn cache_capacity(compiled: usize) -> usize {
    compiled.checked_next_power_of_two().unwrap_or(MAX_CACHE).clamp(MIN_CACHE, MAX_CACHE)
}

/// The meta regex as `regex::RegexBuilder::build` makes it (leftmost-first, UTF-8 haystacks and
/// empty matches, the crate's default engines and their limits), with the flags and the limits
/// above.
fn build_with(pattern: &str, flags: Flags, cache: usize) -> Result<meta::Regex, String> {
    let syntax = syntax::Config::new()
        .utf8(true)
        .unicode(true)
        .case_insensitive(flags.case_insensitive)
        .multi_line(flags.multi_line)
        .dot_matches_new_line(flags.dot_matches_new_line)
        .ignore_whitespace(flags.ignore_whitespace)
        .nest_limit(NEST_LIMIT);
    let config = meta::Config::new()
        .match_kind(MatchKind::LeftmostFirst)
        .utf8_empty(true)
        .nfa_size_limit(Some(COMPILED_SIZE_LIMIT))
        .hybrid_cache_capacity(cache);
    meta::Builder::new().configure(config).syntax(syntax).build(pattern).map_err(describe)
}

/// One line out of the engine's (multi-line, caret-annotated) error text, read as the `regex`
/// crate reads it.
fn describe(error: BuildError) -> String {
    if let Some(limit) = error.size_limit() {
        return format!("pattern compiles to more than {limit} bytes");
    }
    let text = match error.syntax_error() {
        Some(syntax) => syntax.to_string(),
        None => error.to_string(),
    };
    let reason = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")).unwrap_or(text.trim());
    format!("invalid regular expression: {reason}")
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

    /// One pattern from the process-wide table.
    fn compile(pattern: &str, options: &str, max_bytes: usize) -> Result<Arc<Pattern>, String> {
        shared().share(pattern, options, max_bytes).map(|shared| shared.pattern)
    }

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

    /// Dead entries are swept as the table grows: it stays within twice its live patterns.
    #[test]
    fn table_sweeps_dead_entries() {
        let table: &'static Table = Box::leak(Box::new(Table::new()));
        let kept: Vec<Shared> = (0..10).map(|i| table.share(&format!("^kept{i}"), "", 100).unwrap()).collect();
        for i in 0..1_000 {
            let shared = table.share(&format!("^gone{i}"), "", 100).unwrap();
            assert!(shared.compiled);
            assert!(table.entries().map.len() <= 2 * MIN_SWEEP, "{} entries", table.entries().map.len());
        }
        assert_eq!(table.live_memory(), kept.iter().map(|shared| shared.pattern.memory()).sum::<usize>());
        assert!((0..10).all(|i| !table.share(&format!("^kept{i}"), "", 100).unwrap().compiled), "live ones stay");
        drop(kept);
        assert_eq!(table.live_memory(), 0);
    }

    #[test]
    fn cache_capacity_follows_the_compiled_size() {
        assert_eq!(cache_capacity(0), MIN_CACHE);
        assert_eq!(cache_capacity(40 << 10), MIN_CACHE);
        assert_eq!(cache_capacity(111 << 10), 128 << 10);
        assert_eq!(cache_capacity(219 << 10), 256 << 10);
        assert_eq!(cache_capacity(548 << 10), MAX_CACHE);
        assert_eq!(cache_capacity(usize::MAX), MAX_CACHE);
        // Small patterns get the small cache, `\w{10}` the largest.
        assert_eq!(
            compile("^abc", "", 100).unwrap().memory() - compile("^abc", "", 100).unwrap().regex.memory_usage(),
            MIN_CACHE
        );
        let word = compile(r"\w{10}", "", 100).unwrap();
        assert_eq!(word.memory() - word.regex.memory_usage(), MAX_CACHE);
    }
}
