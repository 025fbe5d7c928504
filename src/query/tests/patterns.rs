//! `$regex` patterns: sharing, freeing, the memory budgets, and a differential test against the
//! `regex` crate as the matcher used it before (same matches, same refusals, same messages).

use std::sync::{Arc, Weak};
use std::time::Instant;

use serde_json::{json, Value};

use super::{obj, quote};
use crate::query::budget::size;
use crate::query::pattern::{translate_quoting, Pattern, Table};
use crate::query::{Node, Query, QueryError, QueryLimits, Test};
use crate::testing::Rng;

/// A table of its own, so that the memory figures are this test's alone (the process-wide one
/// is shared by every test running at the same time).
fn table() -> &'static Table {
    Box::leak(Box::new(Table::new()))
}

fn compile_in(table: &'static Table, where_: Value, limits: QueryLimits) -> Result<Query, QueryError> {
    Query::compile_in(&obj(where_), limits, table)
}

/// Every compiled pattern a query holds, in order, repeats included.
fn patterns(query: &Query) -> Vec<Arc<Pattern>> {
    let mut found = Vec::new();
    collect(&query.root, &mut found);
    found
}

fn collect(nodes: &[Node], found: &mut Vec<Arc<Pattern>>) {
    for node in nodes {
        match node {
            Node::And(branches) | Node::Or(branches) | Node::Nor(branches) => {
                branches.iter().for_each(|branch| collect(branch, found));
            }
            Node::Field { tests, .. } => {
                for test in tests {
                    match test {
                        Test::Regex(pattern) => found.push(Arc::clone(pattern)),
                        Test::AllMatch(all) => found.extend(all.iter().cloned()),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The memory one pattern accounts for, measured in a table of its own.
fn memory_of(pattern: &str) -> usize {
    table().share(pattern, "", 1_024).unwrap().pattern.memory()
}

#[test]
fn identical_patterns_share_one_compiled_regex() {
    let table = table();
    let first = table.share(r"^\Qab\E", "", 100).unwrap();
    assert!(first.compiled);
    // The same text after translation, and `u` (always on) changes nothing.
    let second = table.share("^ab", "u", 100).unwrap();
    assert!(!second.compiled);
    assert!(Arc::ptr_eq(&first.pattern, &second.pattern));
    assert_eq!(table.live_memory(), first.pattern.memory());
    // Other flags make another pattern.
    let insensitive = table.share("^ab", "i", 100).unwrap();
    assert!(insensitive.compiled && !Arc::ptr_eq(&first.pattern, &insensitive.pattern));
    assert_eq!(table.live_memory(), first.pattern.memory() + insensitive.pattern.memory());

    // In queries, through the process-wide table: 32 uses of a pattern in one query and in
    // another are one compiled regex, counted once per query.
    let unique = r"^identical_patterns_share_\w";
    let many: Vec<Value> = (0..32).map(|_| json!({"$regex": unique})).collect();
    let one = Query::compile(&obj(json!({"a": {"$all": many}})), QueryLimits::default()).unwrap();
    let other = Query::compile(&obj(json!({"b": {"$regex": unique}})), QueryLimits::default()).unwrap();
    let (one_patterns, other_patterns) = (patterns(&one), patterns(&other));
    assert_eq!(one_patterns.len(), 32);
    assert!(one_patterns.iter().chain(&other_patterns).all(|p| Arc::ptr_eq(p, &other_patterns[0])));
    assert_eq!(one.regex_memory(), other_patterns[0].memory());
    assert_eq!(other.regex_memory(), other_patterns[0].memory());
    assert_eq!(Query::compile(&obj(json!({"a": 1})), QueryLimits::default()).unwrap().regex_memory(), 0);
}

#[test]
fn dropped_queries_free_their_patterns() {
    let table = table();
    let limits = QueryLimits::default();
    let first =
        compile_in(table, json!({"a": {"$regex": "^x"}, "b": {"$all": [{"$regex": "^x"}, {"$regex": "y$"}]}}), limits)
            .unwrap();
    assert_eq!(table.live_memory(), first.regex_memory());
    assert_eq!(first.regex_memory(), memory_of("^x") + memory_of("y$"));
    let copy = first.clone();
    let second = compile_in(table, json!({"c": {"$regex": "y$"}}), limits).unwrap();
    assert_eq!(table.live_memory(), first.regex_memory(), "the second query's pattern is shared");
    let weak: Vec<Weak<Pattern>> = patterns(&first).iter().map(Arc::downgrade).collect();
    drop(first);
    assert_eq!(table.live_memory(), copy.regex_memory(), "a clone holds the patterns");
    drop(copy);
    assert_eq!(table.live_memory(), second.regex_memory());
    assert!(weak[0].upgrade().is_none(), "^x is freed with its last query");
    drop(second);
    assert_eq!(table.live_memory(), 0);
    assert!(weak.iter().all(|w| w.upgrade().is_none()));
    // Compiling it again makes a new pattern, accounted again.
    let again = compile_in(table, json!({"a": {"$regex": "^x"}}), limits).unwrap();
    assert_eq!(table.live_memory(), again.regex_memory());
}

#[test]
fn per_query_budget_refuses_with_the_figures() {
    let table = table();
    let limits = QueryLimits { max_regex_memory_per_query: 100 << 10, ..QueryLimits::default() };
    let (a, b) = (memory_of("^a"), memory_of("^b"));
    assert!(a <= 100 << 10 && a + b > 100 << 10, "{a} {b}");
    // One pattern used five times is counted once.
    let five: Vec<Value> = (0..5).map(|_| json!({"$regex": "^a"})).collect();
    assert!(compile_in(table, json!({"s": {"$all": five}}), limits).is_ok());
    let refused = compile_in(table, json!({"s": {"$regex": "^a"}, "t": {"$regex": "^b"}}), limits).unwrap_err();
    assert_eq!(
        refused.0,
        format!(
            "$regex patterns of this query need {}, more than limits.regex_memory_per_query (100 KiB)",
            size(a + b, true)
        )
    );
    assert_eq!(table.live_memory(), 0, "a refused query's patterns are freed");
    // Shared patterns count too: the budget is the query's, whatever else is live.
    let held = compile_in(table, json!({"s": {"$regex": "^b"}}), limits).unwrap();
    assert!(compile_in(table, json!({"s": {"$regex": "^a"}, "t": {"$regex": "^b"}}), limits).is_err());
    drop(held);
}

#[test]
fn total_budget_refuses_new_patterns_only() {
    let table = table();
    let limits = QueryLimits { max_regex_memory_total: 100 << 10, ..QueryLimits::default() };
    let (a, b) = (memory_of("^a"), memory_of("^b"));
    let held = compile_in(table, json!({"s": {"$regex": "^a"}}), limits).unwrap();
    let refused = compile_in(table, json!({"s": {"$regex": "^b"}}), limits).unwrap_err();
    assert_eq!(
        refused.0,
        format!(
            "compiled $regex patterns would take {} in all, more than limits.regex_memory_total (100 KiB); try again later",
            size(a + b, true)
        )
    );
    assert_eq!(table.live_memory(), a, "the refused query's new pattern is freed");
    // A pattern that is live costs nothing new, even with no room at all.
    let full = QueryLimits { max_regex_memory_total: 1, ..QueryLimits::default() };
    let shared = compile_in(table, json!({"t": {"$regex": "^a"}}), full).unwrap();
    assert_eq!(shared.regex_memory(), a);
    assert!(compile_in(table, json!({"t": {"$regex": "^a"}, "u": {"$regex": "^c"}}), full).is_err());
    assert_eq!(table.live_memory(), a);
    drop((held, shared));
    assert_eq!(table.live_memory(), 0);
}

#[test]
fn sizes_read_in_mib_with_one_decimal() {
    assert_eq!(size(16 << 20, false), "16 MiB");
    assert_eq!(size(16 << 20, true), "16 MiB");
    assert_eq!(size((16 << 20) + 1, true), "16.1 MiB");
    assert_eq!(size((17 << 20) + (1 << 20) / 5, true), "17.2 MiB");
    assert_eq!(size((257 << 20) - 1, true), "257 MiB");
    assert_eq!(size((256 << 20) + 1, false), "256 MiB");
    assert_eq!(size(100 << 10, false), "100 KiB");
    assert_eq!(size((64 << 10) + 1_000, true), "65 KiB");
    assert_eq!(size(0, true), "0 KiB");
}

/// The matcher before the meta engine: the `regex` crate with the limits it was given.
fn regex_crate(pattern: &str, options: &str, max_bytes: usize) -> Result<regex::Regex, String> {
    if pattern.len() > max_bytes {
        return Err(format!("pattern is {} bytes, more than the limit of {max_bytes}", pattern.len()));
    }
    let mut builder = regex::RegexBuilder::new(&translate_quoting(pattern));
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
    builder.size_limit(512 * 1024).dfa_size_limit(512 * 1024).nest_limit(64);
    builder.build().map_err(|error| match error {
        regex::Error::CompiledTooBig(limit) => format!("pattern compiles to more than {limit} bytes"),
        other => {
            let text = other.to_string();
            let reason = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")).unwrap_or(text.trim());
            format!("invalid regular expression: {reason}")
        }
    })
}

/// Patterns written out: the SDK's quoting, flags, Unicode case folding, anchors, classes, the
/// size and nesting limits, and syntax the crate refuses.
fn written_patterns() -> Vec<(String, &'static str)> {
    let mut patterns: Vec<(String, &str)> = [
        ("^Play", ""),
        ("player", "i"),
        ("^é", "i"),
        ("ÉCOLE", "i"),
        ("straße", "i"),
        ("STRASSE", "i"),
        ("σ", "i"),
        ("Σ", "i"),
        ("ς", "i"),
        ("k", "i"),
        ("\u{212A}", "i"),
        ("ǅ", "i"),
        ("ǆ", "i"),
        ("^b", "m"),
        ("^b$", "m"),
        ("a.b", "s"),
        ("a.b", ""),
        ("a b # c", "x"),
        (r"\Qa b\E", "x"),
        (r"\Qa b\E", "xu"),
        ("", ""),
        ("^$", "m"),
        (r"\bfoo\b", ""),
        (r"\Bo", ""),
        (r"\w+@\w+\.com", ""),
        (r"\d{3}-\d{4}", ""),
        (r"[[:alpha:]]+", ""),
        (r"\p{Greek}+", "i"),
        (r"\pL\pN", ""),
        (r"[^\s]+$", ""),
        (r"(?i)abc(?-i)D", ""),
        (r"(?s:.)", ""),
        ("(a+)+b", ""),
        ("(a|aa)+$", ""),
        (r"\x{1F600}", ""),
        (r"[\u{e9}-\u{ff}]", ""),
        ("\\Qa.b", ""),
        ("a\\\\Qb", ""),
        ("a\\Eb", ""),
        (r"\Q\E", ""),
        (r"\w{10}", ""),
        (r"\w{200}", ""),
        (r"\w{1000}", ""),
        ("a{1000}{1000}", ""),
        ("(", ""),
        (")", ""),
        ("[z-a]", ""),
        (r"(a)\1", ""),
        ("(?=a)", ""),
        ("(?<!a)b", ""),
        (r"\p{Nope}", ""),
        ("a**", ""),
        ("x{2,1}", ""),
        ("(?P<n>a)(?P<n>b)", ""),
        ("[", ""),
        (r"\", ""),
        ("a\\", ""),
        (r"\k<x>", ""),
        ("abc", "g"),
        ("abc", "iq"),
    ]
    .iter()
    .map(|(p, o)| (p.to_string(), *o))
    .collect();
    patterns.push(("(".repeat(100) + &")".repeat(100), ""));
    patterns.push(("(".repeat(60) + "a" + &")".repeat(60), ""));
    patterns.push(("x".repeat(1025), ""));
    for text in ["Play", " 1", "d-7", "h \\E", "h \\Ee", "h \\Q and", "é ü.*", "a+b?", "[x]", "(?i)"] {
        let quoted = quote(text);
        patterns.extend([(format!("^{quoted}"), ""), (format!("{quoted}$"), "i"), (quoted, "x")]);
    }
    patterns
}

const FRAGMENTS: &[&str] = &[
    "a", "b", "é", "É", "ß", ".", "^", "$", r"\w", r"\d", r"\s", r"\b", "[a-c]", "[^a]", "(", ")", "|", "*", "+", "?",
    "{2}", "{1,3}", r"\Q", r"\E", r"\.", " ", "#", "\n", "(?i)", "(?-i)", r"\pL", "k", "σ", "\\",
];

const SUBJECTS: &[&str] = &[
    "",
    "a",
    "ab",
    "abc",
    "Player 1",
    "player",
    "École",
    "école",
    "ÉCOLE",
    "Straße",
    "STRASSE",
    "strasse",
    "Σίσυφος",
    "σς",
    "K",
    "k",
    "\u{212A}",
    "ǅ",
    "ǆ",
    "Ǆ",
    "a\nb",
    "a b",
    "ab # c",
    "xa.b",
    "axb",
    "a\\Qb",
    "Slash \\E",
    "Slash \\Q and more",
    "Android-7",
    "555-1234",
    "a@b.com",
    "😀",
    "aaaaaaaaaaaaaaaaaaaac",
    "foo bar",
    "ébène",
    "h \\Ee",
    "1 2 3",
    "\u{e9}\u{ff}",
    "D",
    "abcD",
    "ABCd",
    "\n",
];

/// Random patterns out of fragments (many are invalid), with random options.
fn random_patterns(rng: &mut Rng, count: usize) -> Vec<(String, &'static str)> {
    const OPTIONS: &[&str] = &["", "", "i", "m", "s", "x", "im", "isx", "u", "iu", "g"];
    (0..count)
        .map(|_| {
            let pattern: String = (0..1 + rng.below(6)).map(|_| *rng.pick(FRAGMENTS)).collect();
            (pattern, *rng.pick(OPTIONS))
        })
        .collect()
}

/// The same refusal with the same message, or the same answer on every subject.
#[test]
fn matches_and_refuses_as_the_regex_crate_did() {
    let table = table();
    let mut rng = Rng::new(7);
    let mut cases = written_patterns();
    cases.extend(random_patterns(&mut rng, 1_500));
    let (mut compiled, mut refused) = (0, 0);
    for (pattern, options) in &cases {
        let before = regex_crate(pattern, options, 1_024);
        let now = table.share(pattern, options, 1_024).map(|shared| shared.pattern);
        match (&before, &now) {
            (Ok(before), Ok(now)) => {
                compiled += 1;
                for subject in SUBJECTS {
                    assert_eq!(
                        before.is_match(subject),
                        now.is_match(subject),
                        "{pattern:?} {options:?} on {subject:?}"
                    );
                }
            }
            (Err(before), Err(now)) => {
                refused += 1;
                assert_eq!(before, now, "{pattern:?} {options:?}");
            }
            _ => panic!("{pattern:?} {options:?}: {before:?} then {now:?}"),
        }
    }
    assert!(compiled > 500 && refused > 300, "{compiled} compiled, {refused} refused");
}

/// Wheres of 32 `\w{10}(?:q1_N)` patterns (N in 0..4), as in the incident: compile time and
/// accounted memory now. `cargo test --release --lib query -- --ignored --nocapture incident`
#[test]
#[ignore = "timing; run on a release build"]
fn incident_compile_and_match_now() {
    let before = crate::query::pattern::live_memory();
    let wheres = incident_wheres(3_200);
    let rss = rss_mib();
    let started = Instant::now();
    let queries: Vec<Query> = wheres.iter().map(|w| Query::compile(w, QueryLimits::default()).unwrap()).collect();
    let compiling = started.elapsed();
    let after = crate::query::pattern::live_memory();
    let uses: Vec<Arc<Pattern>> = queries[..100].iter().flat_map(patterns).collect();
    let rows = incident_rows();
    let subjects: Vec<&str> = rows.iter().filter_map(|row| row.get("s").and_then(Value::as_str)).collect();
    let started = Instant::now();
    let matched: usize = subjects.iter().map(|s| uses.iter().filter(|p| p.is_match(s)).count()).sum();
    let matching = started.elapsed() / subjects.len() as u32;
    println!("now: RSS {rss:.1} MiB → {:.1} MiB after compiling and matching", rss_mib());
    println!(
        "now: {} wheres × 32 patterns compiled in {compiling:?}; live_memory {before} → {after} bytes \
         ({} per query); one row against the 3,200 patterns of 100 wheres: {matching:?} ({matched} matches)",
        queries.len(),
        queries[0].regex_memory()
    );
    let distinct: Vec<Value> = (0..32).map(|i| json!({"$regex": format!(r"\w{{10}}(?:x{i})")})).collect();
    let refused = Query::compile(&obj(json!({"s": {"$all": distinct}})), QueryLimits::default()).unwrap_err();
    println!("32 distinct \\w{{10}} patterns in one where: {refused}");
}

/// The same wheres' patterns compiled with the `regex` crate, one regex per use, as before.
#[test]
#[ignore = "timing; run on a release build"]
fn incident_compile_and_match_before() {
    let uses = 100 * 32;
    let rss = rss_mib();
    let started = Instant::now();
    let regexes: Vec<regex::Regex> =
        (0..uses).map(|i| regex_crate(&format!(r"\w{{10}}(?:q1_{})", i % 4), "", 1_024).unwrap()).collect();
    let compiling = started.elapsed();
    let compiled_rss = rss_mib();
    let rows = incident_rows();
    let subjects: Vec<&str> = rows.iter().filter_map(|row| row.get("s").and_then(Value::as_str)).collect();
    let started = Instant::now();
    let matched: usize = subjects.iter().map(|s| regexes.iter().filter(|r| r.is_match(s)).count()).sum();
    let matching = started.elapsed() / subjects.len() as u32;
    println!("before: RSS {rss:.1} MiB → {compiled_rss:.1} MiB compiled → {:.1} MiB after matching", rss_mib());
    let accounted = table().share(r"\w{10}(?:q1_0)", "", 1_024).unwrap().pattern.memory();
    println!(
        "before: 100 wheres × 32 patterns ({uses} regexes) compiled in {compiling:?} (×32 for 3,200 wheres); \
         the same accounting would say {} bytes; one row against the {uses}: {matching:?} ({matched} matches)",
        uses * accounted
    );
}

fn incident_wheres(count: usize) -> Vec<serde_json::Map<String, Value>> {
    (0..count)
        .map(|q| {
            let all: Vec<Value> =
                (0..32).map(|i| json!({"$regex": format!(r"\w{{10}}(?:q1_{})", (q + i) % 4)})).collect();
            obj(json!({"s": {"$all": all}}))
        })
        .collect()
}

fn incident_rows() -> Vec<serde_json::Map<String, Value>> {
    (0..30)
        .map(|i| obj(json!({"s": format!("row {i}: some words, then abcdefghijq1_{} and a few more words", i % 4)})))
        .collect()
}

/// This process's resident set, from `/proc/self/status` (0 where there is none).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok());
    kib.map_or(0.0, |kib: f64| kib / 1024.0)
}
