//! Static checks over the library's source tree for the rules in DESIGN.md ("Architecture
//! invariants") and ARCHITECTURE.md that the compiler does not enforce. They run with every
//! test run, so a change that breaks a rule fails here instead of in review:
//!
//! - `module_imports_have_no_cycles`: no import cycle between the files of `src/`, except a
//!   module with its own submodules (`hub` ↔ `hub::outbox`). Modules in a cycle can be neither
//!   understood, tested nor replaced one at a time.
//! - `imports_point_down_the_layers`: every import points down (or sideways) the layer table
//!   [`LAYERS`], every module has a place in that table, only `app` and `config` import
//!   `config`, and `transport` imports nothing from `http`.
//! - `functions_fit_on_a_screen`: no function is longer than [`MAX_FUNCTION_LINES`] lines unless
//!   the comment right above it says why, with a `long: <reason>` marker.
//!
//! No database, no network: the checks read the files under `src/` and parse them with the
//! small lexer below, which drops comments and keeps string and char literals as opaque tokens
//! (so a `{` or a `crate::` inside either never counts). Code under `#[cfg(test)]` is left out,
//! and so are the files only declared as `#[cfg(test)] mod tests;`: tests may import anything.
//!
//! An import of module `m` is a `use` of a path into `m` (grouped or nested, `pub use`, starting
//! with `crate`, `self`, `super` or a submodule's name) or such a path written in code
//! (`crate::m::f()`, `super::X`, or `m::f()` after a `use` brought the module `m` into scope).
//! A path counts against the longest module prefix that is a file: `crate::hub::Outbox` is an
//! import of `hub`, `crate::auth::rules::ClassRules` one of `auth::rules`. `src/main.rs` and
//! `src/bin/` are binaries, outside the library's graph; only the function check reads them.
//!
//! Known limits of the deliberately simple parser: `#[path]` attributes and `include!` are not
//! followed, macro bodies are read as ordinary tokens, names brought in by `use` are tracked per
//! file rather than per block, and `#![cfg(test)]` inner attributes are not recognised.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// The library's source directory.
const SRC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The layers, lowest first, as in DESIGN.md: imports point down. A module may import from its
/// own layer (the cycle check keeps that acyclic) and from the layers below, never from above.
/// A module belongs to the longest entry it is in: `auth::access` is layer 0, the rest of `auth`
/// layer 1, `hub::index` is `hub`. An entry without a file (yet) matches nothing. The crate root
/// (`lib.rs`) is exempt: it only declares the modules.
const LAYERS: &[&[&str]] = &[
    &["position", "value", "protocol", "query", "auth::access"],
    &["auth", "database", "telemetry", "heap"],
    &["hub"],
    &["feed", "catchup", "snapshot"],
    &["admission", "quota", "session"],
    &["transport"],
    &["http"],
    &["app", "config"],
];

/// (module, the only modules that may import it).
const ONLY_IMPORTED_BY: &[(&str, &[&str])] = &[("config", &["app", "config"])];

/// (importer, imported): imports that are never allowed, whatever the layers say.
const NEVER_IMPORTS: &[(&str, &str)] = &[("transport", "http")];

/// A function longer than this (from the `fn` line to its closing brace) needs a reason.
const MAX_FUNCTION_LINES: usize = 60;

/// The marker that states why a function may be longer than [`MAX_FUNCTION_LINES`].
const LONG_MARKER: &str = "long:";

#[test]
fn module_imports_have_no_cycles() {
    let files = library_files();
    let edges = import_edges(&files);
    let cycles: Vec<String> = strongly_connected_components(&adjacency(files.len(), &edges))
        .into_iter()
        .filter(|component| component.len() > 1)
        .flat_map(|component| forbidden_cycles(&files, &edges, &component))
        .map(|cycle| describe_cycle(&files, &edges, &cycle))
        .collect();
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) between modules of src/ (a module may only form a cycle with its own \
         submodules); break each by moving the shared piece down a layer:\n\n{}",
        cycles.len(),
        cycles.join("\n\n")
    );
}

#[test]
fn imports_point_down_the_layers() {
    let files = library_files();
    let edges = import_edges(&files);
    let mut problems = unplaced_modules(&files);
    problems.extend(upward_imports(&files, &edges));
    problems.extend(restricted_imports(&files, &edges));
    problems.extend(never_imports(&files, &edges));
    assert!(
        problems.is_empty(),
        "{} layering problem(s) (layers, lowest first: {}):\n{}",
        problems.len(),
        describe_layers(),
        problems.join("\n")
    );
}

#[test]
fn functions_fit_on_a_screen() {
    let offenders: Vec<String> = all_crate_files()
        .iter()
        .flat_map(|file| functions(file).into_iter().map(move |function| (file, function)))
        .filter(|(_, function)| function.lines > MAX_FUNCTION_LINES && function.long_reason.is_none())
        .map(|(file, f)| format!("  {}:{} fn {} ({} lines)", file.name, f.line, f.name, f.lines))
        .collect();
    assert!(
        offenders.is_empty(),
        "{} function(s) longer than {MAX_FUNCTION_LINES} lines; split them, or say why in a \
         comment right above the function (`// {LONG_MARKER} <reason>`):\n{}",
        offenders.len(),
        offenders.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Lexer: tokens without comments; string and char literals as single opaque tokens.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Lifetime,
    Literal,
    Punct,
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    text: String,
    /// 1-based line of the token's first character.
    line: usize,
}

impl Token {
    fn is(&self, text: &str) -> bool {
        self.text == text
    }
}

/// A `//` or `/* */` comment (doc comments included).
#[derive(Debug)]
struct Comment {
    text: String,
    first_line: usize,
    last_line: usize,
    /// Only whitespace precedes it on its first line (it is not trailing code).
    starts_line: bool,
}

#[derive(Default)]
struct Lexed {
    tokens: Vec<Token>,
    comments: Vec<Comment>,
}

fn lex(source: &str) -> Lexed {
    let mut lexer = Lexer { src: source.as_bytes(), pos: 0, line: 1, line_start: 0, out: Lexed::default() };
    while lexer.pos < lexer.src.len() {
        lexer.next_token();
    }
    lexer.out
}

struct Lexer<'s> {
    src: &'s [u8],
    pos: usize,
    line: usize,
    /// Offset of the current line's first byte.
    line_start: usize,
    out: Lexed,
}

impl Lexer<'_> {
    fn at(&self, offset: usize) -> Option<u8> {
        self.src.get(self.pos + offset).copied()
    }

    fn bump(&mut self) {
        if self.src[self.pos] == b'\n' {
            self.line += 1;
            self.line_start = self.pos + 1;
        }
        self.pos += 1;
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            if self.pos < self.src.len() {
                self.bump();
            }
        }
    }

    fn next_token(&mut self) {
        let (start, line) = (self.pos, self.line);
        let kind = match (self.src[self.pos], self.at(1)) {
            (b'/', Some(b'/')) => return self.line_comment(),
            (b'/', Some(b'*')) => return self.block_comment(),
            (c, _) if c.is_ascii_whitespace() => return self.bump(),
            (b'"', _) => {
                self.quoted();
                Kind::Literal
            }
            (b'\'', _) => self.char_or_lifetime(),
            (c, _) if c.is_ascii_digit() => {
                self.number();
                Kind::Literal
            }
            (c, _) if is_ident_byte(c) => self.word(),
            _ => {
                self.punct();
                Kind::Punct
            }
        };
        let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
        self.out.tokens.push(Token { kind, text, line });
    }

    fn push_comment(&mut self, start: usize, first_line: usize, starts_line: bool) {
        let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
        self.out.comments.push(Comment { text, first_line, last_line: self.line, starts_line });
    }

    fn starts_line(&self) -> bool {
        self.src[self.line_start..self.pos].iter().all(u8::is_ascii_whitespace)
    }

    fn line_comment(&mut self) {
        let (start, line, starts_line) = (self.pos, self.line, self.starts_line());
        while self.at(0).is_some_and(|c| c != b'\n') {
            self.bump();
        }
        self.push_comment(start, line, starts_line);
    }

    /// `/* .. */`, which nests in Rust.
    fn block_comment(&mut self) {
        let (start, line, starts_line) = (self.pos, self.line, self.starts_line());
        let mut depth = 0;
        while self.pos < self.src.len() {
            match (self.src[self.pos], self.at(1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.bump_n(2);
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    self.bump_n(2);
                    if depth == 0 {
                        break;
                    }
                }
                _ => self.bump(),
            }
        }
        self.push_comment(start, line, starts_line);
    }

    /// A `"..."` or `'...'` literal with backslash escapes, from its opening quote.
    fn quoted(&mut self) {
        let quote = self.src[self.pos];
        self.bump();
        while let Some(c) = self.at(0) {
            if c == b'\\' {
                self.bump_n(2);
            } else {
                self.bump();
                if c == quote {
                    return;
                }
            }
        }
    }

    /// `'x'`, `'\n'`, `'é'` are char literals; `'a` and `'outer` (no closing quote right after
    /// one character) are lifetimes or labels.
    fn char_or_lifetime(&mut self) -> Kind {
        if self.at(1) == Some(b'\\') {
            self.quoted();
            return Kind::Literal;
        }
        let width = self.at(1).map_or(1, utf8_width);
        if self.at(1 + width) == Some(b'\'') {
            self.bump_n(2 + width);
            return Kind::Literal;
        }
        self.bump();
        while self.at(0).is_some_and(is_ident_byte) {
            self.bump();
        }
        Kind::Lifetime
    }

    /// An identifier or keyword, or the literal it prefixes (`r"..."`, `r#"..."#`, `br".."`,
    /// `b"..."`, `c"..."`, `b'x'`); `r#type` is a raw identifier.
    fn word(&mut self) -> Kind {
        let src = self.src;
        let start = self.pos;
        while self.at(0).is_some_and(is_ident_byte) {
            self.bump();
        }
        match (&src[start..self.pos], self.at(0)) {
            (b"r" | b"br" | b"cr", Some(b'"' | b'#')) if self.raw_string() => Kind::Literal,
            (b"b" | b"c", Some(b'"')) => {
                self.quoted();
                Kind::Literal
            }
            (b"b", Some(b'\'')) => {
                self.char_or_lifetime();
                Kind::Literal
            }
            (b"r", Some(b'#')) => {
                self.bump();
                while self.at(0).is_some_and(is_ident_byte) {
                    self.bump();
                }
                Kind::Ident
            }
            _ => Kind::Ident,
        }
    }

    /// The rest of a raw string, from its `#`s or opening quote; false (nothing consumed) if
    /// this is not one, as in the raw identifier `r#match`.
    fn raw_string(&mut self) -> bool {
        let hashes = (0..).take_while(|&i| self.at(i) == Some(b'#')).count();
        if self.at(hashes) != Some(b'"') {
            return false;
        }
        self.bump_n(hashes + 1);
        while self.pos < self.src.len() {
            let closes = self.at(0) == Some(b'"') && (1..=hashes).all(|i| self.at(i) == Some(b'#'));
            if closes {
                self.bump_n(hashes + 1);
                return true;
            }
            self.bump();
        }
        true
    }

    /// Digits, suffixes and one decimal point at a time: `1_000u64`, `0x1F`, `2.5`.
    fn number(&mut self) {
        loop {
            while self.at(0).is_some_and(is_ident_byte) {
                self.bump();
            }
            if self.at(0) == Some(b'.') && self.at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
            } else {
                return;
            }
        }
    }

    /// `::`, `->` and `=>` are one token each; any other punctuation is a token per character.
    fn punct(&mut self) {
        let pair = [self.src[self.pos], self.at(1).unwrap_or(b' ')];
        let width = if matches!(&pair, b"::" | b"->" | b"=>") { 2 } else { 1 };
        self.bump_n(width);
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn utf8_width(lead: u8) -> usize {
    match lead {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Token helpers: brackets, attributes, items, `#[cfg(test)]`.

fn ident(token: Option<&Token>) -> Option<String> {
    token.filter(|t| t.kind == Kind::Ident).map(|t| t.text.clone())
}

/// The index of the bracket closing the one at `open`; `(`, `[` and `{` all nest.
fn matching_close(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len() - 1
}

/// The index of the bracket opening the one closing at `close`.
fn matching_open(tokens: &[Token], close: usize) -> usize {
    let mut depth = 0;
    for i in (0..=close).rev() {
        match tokens[i].text.as_str() {
            ")" | "]" | "}" => depth += 1,
            "(" | "[" | "{" => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    0
}

/// If an outer attribute `#[...]` starts at `at`, the index just past it.
fn attribute_end(tokens: &[Token], at: usize) -> Option<usize> {
    let starts = tokens.get(at)?.is("#") && tokens.get(at + 1)?.is("[");
    starts.then(|| matching_close(tokens, at + 1) + 1)
}

fn skip_attributes(tokens: &[Token], mut at: usize) -> usize {
    while let Some(end) = attribute_end(tokens, at) {
        at = end;
    }
    at
}

/// Whether an attribute is `#[cfg(test)]` or `#[cfg(all(test, ..))]`: its item exists in test
/// builds only.
fn is_test_cfg(attribute: &[Token]) -> bool {
    let texts: Vec<&str> = attribute.iter().map(|t| t.text.as_str()).collect();
    match texts.as_slice() {
        ["#", "[", "cfg", "(", "test", ")", "]"] => true,
        ["#", "[", "cfg", "(", "all", "(", arguments @ .., ")", ")", "]"] => {
            arguments.split(|t| *t == ",").any(|argument| argument == ["test"])
        }
        _ => false,
    }
}

/// Keywords that make what follows an item or statement rather than a field, variant or arm.
const ITEM_KEYWORDS: &[&str] = &[
    "fn",
    "impl",
    "mod",
    "struct",
    "enum",
    "union",
    "trait",
    "type",
    "const",
    "static",
    "use",
    "let",
    "extern",
    "macro_rules",
];

/// The end (exclusive) of the item, statement, field or match arm that starts at `start`: a `;`
/// at its top level, the `}` closing its first top-level block (with a `;` right after it), the
/// bracket that closes the list it is in, or, for a field, variant or arm, a top-level `,`.
/// After a top-level `=` (`const X: S = S { .. };`) only the `;` ends it.
fn item_end(tokens: &[Token], start: usize) -> usize {
    let is_item = tokens[start..]
        .iter()
        .take_while(|t| t.kind == Kind::Ident || t.is("(") || t.is(")"))
        .any(|t| ITEM_KEYWORDS.contains(&t.text.as_str()));
    let (mut depth, mut angles, mut assigned) = (0, 0, false);
    for i in start..tokens.len() {
        match tokens[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" if depth == 0 => return i,
            ")" | "]" => depth -= 1,
            "}" if depth == 0 => return i,
            "}" => {
                depth -= 1;
                if depth == 0 && !assigned {
                    return if tokens.get(i + 1).is_some_and(|t| t.is(";")) { i + 2 } else { i + 1 };
                }
            }
            ";" if depth == 0 => return i + 1,
            "=" if depth == 0 => assigned = true,
            "<" if depth == 0 => angles += 1,
            ">" if depth == 0 => angles -= 1,
            "," if depth == 0 && angles <= 0 && !is_item => return i + 1,
            _ => {}
        }
    }
    tokens.len()
}

/// The tokens without the items under `#[cfg(test)]` (attributes and item alike).
fn without_test_items(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        match attribute_end(&tokens, i) {
            Some(end) if is_test_cfg(&tokens[i..end]) => i = item_end(&tokens, skip_attributes(&tokens, end)),
            _ => {
                kept.push(tokens[i].clone());
                i += 1;
            }
        }
    }
    kept
}

/// The index of the `{` that opens the body of the item whose header starts at `from`, or None
/// if a `;` (or the end of the enclosing block) comes first: a declaration without a body.
fn body_start(tokens: &[Token], from: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, token) in tokens.iter().enumerate().skip(from) {
        match token.text.as_str() {
            "{" if depth == 0 => return Some(i),
            ";" | "}" if depth == 0 => return None,
            "(" | "[" => depth += 1,
            ")" | "]" => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The indices of the tokens outside angle brackets (`<`, `>` themselves left out).
fn outside_angles(tokens: &[Token]) -> Vec<usize> {
    let mut depth = 0;
    let mut outside = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "<" => depth += 1,
            ">" => depth -= 1,
            _ if depth == 0 => outside.push(i),
            _ => {}
        }
    }
    outside
}

// ---------------------------------------------------------------------------------------------
// Source files and the module tree.

/// A module's path from the crate root: `[]` is the root, `["auth", "rules"]` is `auth::rules`.
type ModulePath = Vec<String>;

fn module_name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Whether `module` is `entry` (written `a::b`) or inside it.
fn is_within(module: &[String], entry: &str) -> bool {
    let entry: Vec<&str> = entry.split("::").collect();
    module.len() >= entry.len() && module.iter().zip(&entry).all(|(m, e)| m == e)
}

fn is_ancestor(ancestor: &[String], module: &[String]) -> bool {
    module.len() > ancestor.len() && module.starts_with(ancestor)
}

/// One file of a crate, parsed.
struct SourceFile {
    /// The path messages use, e.g. `src/hub/mod.rs`.
    name: String,
    module: ModulePath,
    /// The code outside `#[cfg(test)]` items, without comments.
    tokens: Vec<Token>,
    comments: Vec<Comment>,
}

impl SourceFile {
    fn parse(name: &str, module: ModulePath, text: &str) -> SourceFile {
        let lexed = lex(text);
        let tokens = without_test_items(lexed.tokens);
        SourceFile { name: name.to_string(), module, tokens, comments: lexed.comments }
    }

    fn read(path: &Path, module: ModulePath) -> SourceFile {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        SourceFile::parse(&display_name(path), module, &text)
    }

    /// The files of the submodules this file declares (`mod name;` outside `#[cfg(test)]`).
    fn submodule_files(&self, path: &Path) -> Vec<(PathBuf, ModulePath)> {
        let dir = match path.file_name() {
            _ if self.module.is_empty() => path.with_file_name(""),
            Some(name) if name == "mod.rs" => path.with_file_name(""),
            _ => path.with_extension(""),
        };
        let file_of = |relative: &ModulePath| {
            submodule_file(&dir, relative)
                .unwrap_or_else(|| panic!("{}: no file for `mod {}` (a #[path]?)", self.name, relative.join("::")))
        };
        let declared = declared_submodules(&self.tokens);
        declared.iter().map(|relative| (file_of(relative), [self.module.clone(), relative.clone()].concat())).collect()
    }
}

/// `dir/a/b.rs` or `dir/a/b/mod.rs` for the submodule `a::b` of the file whose directory is `dir`.
fn submodule_file(dir: &Path, relative: &[String]) -> Option<PathBuf> {
    let base = relative.iter().fold(dir.to_path_buf(), |dir, segment| dir.join(segment));
    [base.with_extension("rs"), base.join("mod.rs")].into_iter().find(|file| file.is_file())
}

fn display_name(path: &Path) -> String {
    match path.strip_prefix(SRC_DIR) {
        Ok(relative) => format!("src/{}", relative.display()),
        Err(_) => path.display().to_string(),
    }
}

/// An inline `mod name { .. }`: its name and the indices of its braces.
struct InlineModule {
    name: String,
    open: usize,
    close: usize,
}

fn inline_modules(tokens: &[Token]) -> Vec<InlineModule> {
    (0..tokens.len().saturating_sub(2))
        .filter(|&i| tokens[i].is("mod") && tokens[i + 1].kind == Kind::Ident && tokens[i + 2].is("{"))
        .map(|i| InlineModule { name: tokens[i + 1].text.clone(), open: i + 2, close: matching_close(tokens, i + 2) })
        .collect()
}

/// The inline modules around token `at`, outermost first.
fn enclosing_modules(inline: &[InlineModule], at: usize) -> ModulePath {
    inline.iter().filter(|m| m.open < at && at < m.close).map(|m| m.name.clone()).collect()
}

/// The submodules declared with `mod name;`, relative to the file (`["a", "b"]` for a `mod b;`
/// inside an inline `mod a { .. }`).
fn declared_submodules(tokens: &[Token]) -> Vec<ModulePath> {
    let inline = inline_modules(tokens);
    (0..tokens.len().saturating_sub(2))
        .filter(|&i| tokens[i].is("mod") && tokens[i + 1].kind == Kind::Ident && tokens[i + 2].is(";"))
        .map(|i| [enclosing_modules(&inline, i), vec![tokens[i + 1].text.clone()]].concat())
        .collect()
}

/// The files of the crate rooted at `root`: the root and every file it declares, recursively.
fn crate_files(root: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut pending = vec![(root.to_path_buf(), ModulePath::new())];
    while let Some((path, module)) = pending.pop() {
        let file = SourceFile::read(&path, module);
        pending.extend(file.submodule_files(&path));
        files.push(file);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// The library: `src/lib.rs` and its modules.
fn library_files() -> Vec<SourceFile> {
    crate_files(&Path::new(SRC_DIR).join("lib.rs"))
}

/// Every crate under `src/`: the library, `main.rs` and the binaries in `bin/`.
fn all_crate_files() -> Vec<SourceFile> {
    let src = Path::new(SRC_DIR);
    let mut roots = vec![src.join("lib.rs"), src.join("main.rs")];
    if let Ok(entries) = fs::read_dir(src.join("bin")) {
        let paths = entries.filter_map(Result::ok).map(|entry| entry.path());
        roots.extend(paths.map(|path| if path.is_dir() { path.join("main.rs") } else { path }));
    }
    roots.retain(|root| root.is_file() && root.extension().is_some_and(|e| e == "rs"));
    roots.iter().flat_map(|root| crate_files(root)).collect()
}

// ---------------------------------------------------------------------------------------------
// Imports: `use` declarations and paths in code, resolved to files.

/// One path a `use` declaration names, flattened out of its groups.
#[derive(Debug, PartialEq)]
struct UsePath {
    /// As written, e.g. `crate::hub::Outbox`; a trailing `self` is dropped, a glob (`::*`)
    /// keeps its prefix.
    segments: Vec<String>,
    /// The name it brings into scope (None for a glob or `as _`).
    binding: Option<String>,
    line: usize,
}

/// A `use` declaration: its paths and its tokens, from `use` to `;`.
struct UseDecl {
    paths: Vec<UsePath>,
    start: usize,
    end: usize,
}

fn use_declarations(tokens: &[Token]) -> Vec<UseDecl> {
    let mut decls = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // `use<'a, T>` in `impl Trait + use<..>` captures, it does not import.
        if !tokens[i].is("use") || tokens.get(i + 1).is_some_and(|t| t.is("<")) {
            i += 1;
            continue;
        }
        let mut parser = UseParser { tokens, pos: i + 1, paths: Vec::new() };
        parser.tree(&[]);
        let end = (parser.pos..tokens.len()).find(|&j| tokens[j].is(";")).unwrap_or(tokens.len());
        decls.push(UseDecl { paths: parser.paths, start: i, end });
        i = end;
    }
    decls
}

struct UseParser<'t> {
    tokens: &'t [Token],
    pos: usize,
    paths: Vec<UsePath>,
}

impl UseParser<'_> {
    fn peek(&self) -> &str {
        self.tokens.get(self.pos).map_or("", |t| t.text.as_str())
    }

    /// `a::b`, `a::b as c`, `a::*` or `a::{tree, ..}`, each after `prefix`.
    fn tree(&mut self, prefix: &[String]) {
        let mut segments = prefix.to_vec();
        if self.peek() == "::" {
            self.pos += 1;
        }
        loop {
            match self.peek() {
                "{" => return self.group(&segments),
                "*" => {
                    self.pos += 1;
                    return self.push(segments, None);
                }
                _ => {}
            }
            let Some(segment) = ident(self.tokens.get(self.pos)) else { return };
            segments.push(segment);
            self.pos += 1;
            if self.peek() != "::" {
                break;
            }
            self.pos += 1;
        }
        if segments.last().is_some_and(|s| s == "self") {
            segments.pop();
        }
        let binding = if self.peek() == "as" {
            let rename = ident(self.tokens.get(self.pos + 1));
            self.pos += 2;
            rename.filter(|name| name != "_")
        } else {
            segments.last().cloned()
        };
        self.push(segments, binding);
    }

    fn group(&mut self, prefix: &[String]) {
        self.pos += 1;
        loop {
            match self.peek() {
                "}" => {
                    self.pos += 1;
                    return;
                }
                "" | ";" => return,
                _ => {}
            }
            let before = self.pos;
            self.tree(prefix);
            if self.peek() == "," {
                self.pos += 1;
            } else if self.pos == before {
                return;
            }
        }
    }

    fn push(&mut self, segments: Vec<String>, binding: Option<String>) {
        let line = self.tokens[self.pos.saturating_sub(1).min(self.tokens.len() - 1)].line;
        self.paths.push(UsePath { segments, binding, line });
    }
}

/// The path written in code from `start` (`a::b::c`), if a path of two or more segments starts
/// there (and not in the middle of one).
fn code_path(tokens: &[Token], start: usize) -> Option<Vec<String>> {
    if start > 0 && tokens[start - 1].is("::") {
        return None;
    }
    let mut segments = vec![ident(tokens.get(start))?];
    let mut i = start + 1;
    while tokens.get(i).is_some_and(|t| t.is("::")) {
        let Some(segment) = ident(tokens.get(i + 1)) else { break };
        segments.push(segment);
        i += 2;
    }
    (segments.len() > 1).then_some(segments)
}

/// The library's modules, by path.
struct ModuleIndex(HashMap<ModulePath, usize>);

impl ModuleIndex {
    fn new(files: &[SourceFile]) -> ModuleIndex {
        ModuleIndex(files.iter().enumerate().map(|(i, file)| (file.module.clone(), i)).collect())
    }

    /// The file of the longest prefix of `path` that is a module.
    fn file_of(&self, path: &[String]) -> Option<usize> {
        (0..=path.len()).rev().find_map(|len| self.0.get(&path[..len]).copied())
    }

    fn is_module(&self, path: &[String]) -> bool {
        self.0.contains_key(path)
    }
}

/// Turns the paths one file writes into paths from the crate root.
struct Resolver<'f> {
    file: &'f SourceFile,
    inline: Vec<InlineModule>,
    /// Names in scope that stand for modules: submodules, and modules a `use` brought in.
    modules: HashMap<String, ModulePath>,
}

impl<'f> Resolver<'f> {
    fn new(file: &'f SourceFile, decls: &[UseDecl], index: &ModuleIndex) -> Resolver<'f> {
        let inline = inline_modules(&file.tokens);
        let submodules = declared_submodules(&file.tokens).into_iter().filter(|relative| relative.len() == 1);
        let modules = submodules.map(|relative| (relative[0].clone(), [file.module.clone(), relative].concat()));
        let mut resolver = Resolver { file, inline, modules: modules.collect() };
        for decl in decls {
            for path in &decl.paths {
                let absolute = resolver.absolute(&path.segments, decl.start);
                if let (Some(name), Some(absolute)) = (&path.binding, absolute) {
                    if index.is_module(&absolute) {
                        resolver.modules.insert(name.clone(), absolute);
                    }
                }
            }
        }
        resolver
    }

    /// `segments`, written at token `at`, as a path from the crate root; None if it does not
    /// start inside this crate (`std::..`, a local enum's variant, ..).
    fn absolute(&self, segments: &[String], at: usize) -> Option<ModulePath> {
        let current = [self.file.module.clone(), enclosing_modules(&self.inline, at)].concat();
        let supers = segments.iter().take_while(|s| *s == "super").count();
        let (base, rest) = match segments.first()?.as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "self" => (current, &segments[1..]),
            "super" => (current[..current.len().checked_sub(supers)?].to_vec(), &segments[supers..]),
            name => (self.modules.get(name)?.clone(), &segments[1..]),
        };
        Some([base, rest.to_vec()].concat())
    }
}

/// One import: file `from` refers to file `to` with `path` (as written) on `line`.
#[derive(Debug)]
struct Edge {
    from: usize,
    to: usize,
    path: String,
    line: usize,
}

/// Every import between the library's files (none to the file itself), one per distinct path.
fn import_edges(files: &[SourceFile]) -> Vec<Edge> {
    let index = ModuleIndex::new(files);
    let mut seen = BTreeSet::new();
    let mut edges = Vec::new();
    for (from, file) in files.iter().enumerate() {
        for (absolute, path, line) in written_paths(file, &index) {
            let Some(to) = index.file_of(&absolute) else { continue };
            if to != from && seen.insert((from, to, path.clone())) {
                edges.push(Edge { from, to, path, line });
            }
        }
    }
    edges
}

/// The crate paths a file writes, in `use` declarations and in code: (path from the crate
/// root, path as written, line).
fn written_paths(file: &SourceFile, index: &ModuleIndex) -> Vec<(ModulePath, String, usize)> {
    let decls = use_declarations(&file.tokens);
    let resolver = Resolver::new(file, &decls, index);
    let mut paths = Vec::new();
    for decl in &decls {
        for path in &decl.paths {
            if let Some(absolute) = resolver.absolute(&path.segments, decl.start) {
                paths.push((absolute, path.segments.join("::"), path.line));
            }
        }
    }
    let in_use = |i: usize| decls.iter().any(|decl| decl.start <= i && i <= decl.end);
    for i in (0..file.tokens.len()).filter(|&i| !in_use(i)) {
        let Some(segments) = code_path(&file.tokens, i) else { continue };
        if let Some(absolute) = resolver.absolute(&segments, i) {
            paths.push((absolute, segments.join("::"), file.tokens[i].line));
        }
    }
    paths
}

/// Successor lists, without duplicates.
fn adjacency(nodes: usize, edges: &[Edge]) -> Vec<Vec<usize>> {
    let mut successors = vec![BTreeSet::new(); nodes];
    for edge in edges {
        successors[edge.from].insert(edge.to);
    }
    successors.into_iter().map(|set| set.into_iter().collect()).collect()
}

/// `path (line N)` for up to four distinct paths, then how many more.
fn cite(edges: &[&Edge]) -> String {
    let mut cited: Vec<String> = edges.iter().take(4).map(|e| format!("{} (line {})", e.path, e.line)).collect();
    if edges.len() > 4 {
        cited.push(format!("and {} more", edges.len() - 4));
    }
    cited.join(", ")
}

/// The edges grouped by (from, to), in file order.
fn by_file_pair<'e>(edges: impl Iterator<Item = &'e Edge>) -> BTreeMap<(usize, usize), Vec<&'e Edge>> {
    let mut pairs: BTreeMap<(usize, usize), Vec<&Edge>> = BTreeMap::new();
    for edge in edges {
        pairs.entry((edge.from, edge.to)).or_default().push(edge);
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// Cycles.

/// Tarjan's strongly connected components, each sorted.
fn strongly_connected_components(successors: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let nodes = successors.len();
    let mut tarjan = Tarjan {
        successors,
        index: vec![None; nodes],
        low: vec![0; nodes],
        on_stack: vec![false; nodes],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for node in 0..nodes {
        if tarjan.index[node].is_none() {
            tarjan.visit(node);
        }
    }
    tarjan.components
}

struct Tarjan<'g> {
    successors: &'g [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, node: usize) {
        self.index[node] = Some(self.next);
        self.low[node] = self.next;
        self.next += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for &next in &self.successors[node] {
            match self.index[next] {
                None => {
                    self.visit(next);
                    self.low[node] = self.low[node].min(self.low[next]);
                }
                Some(index) if self.on_stack[next] => self.low[node] = self.low[node].min(index),
                Some(_) => {}
            }
        }
        if Some(self.low[node]) == self.index[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            component.sort_unstable();
            self.components.push(component);
        }
    }
}

/// The cycles a component of several files stands for that are not allowed. A module with
/// its own submodules may import each other; anything else in a cycle may not. So a component
/// is fine when one member is an ancestor of all the others, and no cycle remains among its
/// members once the imports between a module and its ancestors are set aside (siblings).
fn forbidden_cycles(files: &[SourceFile], edges: &[Edge], component: &[usize]) -> Vec<Vec<usize>> {
    let module = |i: usize| &files[i].module;
    let has_root =
        component.iter().any(|&root| component.iter().all(|&m| m == root || is_ancestor(module(root), module(m))));
    if !has_root {
        return vec![component.to_vec()];
    }
    let related = |e: &Edge| is_ancestor(module(e.from), module(e.to)) || is_ancestor(module(e.to), module(e.from));
    let mut successors = vec![Vec::new(); files.len()];
    for edge in edges.iter().filter(|e| component.contains(&e.from) && component.contains(&e.to)) {
        if !related(edge) {
            successors[edge.from].push(edge.to);
        }
    }
    strongly_connected_components(&successors).into_iter().filter(|c| c.len() > 1).collect()
}

/// The shortest cycle through `start` using only edges between `members`.
fn shortest_cycle(successors: &[Vec<usize>], members: &[usize], start: usize) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in successors[node].iter().filter(|n| members.contains(n)) {
            if next == start {
                let mut cycle = vec![node];
                while let Some(&previous) = parent.get(cycle.last().unwrap()) {
                    cycle.push(previous);
                }
                cycle.reverse();
                return cycle;
            }
            if let Entry::Vacant(slot) = parent.entry(next) {
                slot.insert(node);
                queue.push_back(next);
            }
        }
    }
    vec![start]
}

/// The shortest cycle among `members` that is more than a module with its own submodules.
fn example_cycle(files: &[SourceFile], edges: &[Edge], members: &[usize]) -> Vec<usize> {
    let successors = adjacency(files.len(), edges);
    let cycles = members.iter().map(|&start| shortest_cycle(&successors, members, start));
    let family = |cycle: &Vec<usize>| {
        cycle.iter().any(|&root| cycle.iter().all(|&m| m == root || is_ancestor(&files[root].module, &files[m].module)))
    };
    let cycles: Vec<Vec<usize>> = cycles.collect();
    let unrelated = cycles.iter().filter(|cycle| !family(cycle)).min_by_key(|cycle| cycle.len());
    unrelated.or(cycles.first()).cloned().unwrap_or_default()
}

fn describe_cycle(files: &[SourceFile], edges: &[Edge], members: &[usize]) -> String {
    let names: Vec<&str> = members.iter().map(|&i| files[i].name.as_str()).collect();
    let example = example_cycle(files, edges, members);
    let example: Vec<&str> = example.iter().chain(&example[..1]).map(|&i| files[i].name.as_str()).collect();
    let inside = edges.iter().filter(|e| members.contains(&e.from) && members.contains(&e.to));
    let imports: Vec<String> = by_file_pair(inside)
        .into_iter()
        .map(|((from, to), edges)| format!("    {} → {}: {}", files[from].name, files[to].name, cite(&edges)))
        .collect();
    format!(
        "cycle between {} files: {}\n  for example: {}\n  imports inside the cycle:\n{}",
        members.len(),
        names.join(", "),
        example.join(" → "),
        imports.join("\n")
    )
}

// ---------------------------------------------------------------------------------------------
// Layers.

/// The layer of a module and the entry of [`LAYERS`] it matched (the longest one).
fn layer_of(module: &[String]) -> Option<(usize, &'static str)> {
    let entries = LAYERS.iter().enumerate().flat_map(|(layer, entries)| entries.iter().map(move |e| (layer, *e)));
    entries.filter(|(_, entry)| is_within(module, entry)).max_by_key(|(_, entry)| entry.split("::").count())
}

fn describe_layers() -> String {
    let layers: Vec<String> =
        LAYERS.iter().enumerate().map(|(i, entries)| format!("{i}: {}", entries.join(", "))).collect();
    layers.join("; ")
}

fn describe_module(file: &SourceFile) -> String {
    match layer_of(&file.module) {
        Some((layer, _)) => format!("{} (`{}`, layer {layer})", file.name, module_name(&file.module)),
        None => format!("{} (`{}`)", file.name, module_name(&file.module)),
    }
}

/// Modules (other than the crate root) that no entry of [`LAYERS`] covers.
fn unplaced_modules(files: &[SourceFile]) -> Vec<String> {
    files
        .iter()
        .filter(|file| !file.module.is_empty() && layer_of(&file.module).is_none())
        .map(|file| {
            format!(
                "  {}: module `{}` has no layer; add it to LAYERS in tests/integration/architecture.rs \
                     (and to DESIGN.md)",
                file.name,
                module_name(&file.module)
            )
        })
        .collect()
}

/// Imports from a module into one of a higher layer.
fn upward_imports(files: &[SourceFile], edges: &[Edge]) -> Vec<String> {
    let layer = |i: usize| layer_of(&files[i].module).map(|(layer, _)| layer);
    let upward = edges.iter().filter(|e| matches!((layer(e.from), layer(e.to)), (Some(from), Some(to)) if to > from));
    by_file_pair(upward)
        .into_iter()
        .map(|((from, to), edges)| {
            format!(
                "  {} imports {}, a higher layer: {}",
                describe_module(&files[from]),
                describe_module(&files[to]),
                cite(&edges)
            )
        })
        .collect()
}

/// Imports of a module of [`ONLY_IMPORTED_BY`] from outside the modules allowed to.
fn restricted_imports(files: &[SourceFile], edges: &[Edge]) -> Vec<String> {
    let mut problems = Vec::new();
    for &(target, allowed) in ONLY_IMPORTED_BY {
        let importer_allowed = |e: &Edge| allowed.iter().any(|a| is_within(&files[e.from].module, a));
        let bad = edges.iter().filter(|e| is_within(&files[e.to].module, target) && !files[e.from].module.is_empty());
        for ((from, to), edges) in by_file_pair(bad.filter(|e| !importer_allowed(e))) {
            problems.push(format!(
                "  {} imports {}; only {} may import `{target}`: {}",
                describe_module(&files[from]),
                files[to].name,
                allowed.join(", "),
                cite(&edges)
            ));
        }
    }
    problems
}

/// Imports that [`NEVER_IMPORTS`] rules out.
fn never_imports(files: &[SourceFile], edges: &[Edge]) -> Vec<String> {
    let mut problems = Vec::new();
    for &(importer, imported) in NEVER_IMPORTS {
        let bad = edges
            .iter()
            .filter(|e| is_within(&files[e.from].module, importer) && is_within(&files[e.to].module, imported));
        for ((from, to), edges) in by_file_pair(bad) {
            problems.push(format!(
                "  {} imports {}; `{importer}` must import nothing from `{imported}`: {}",
                files[from].name,
                files[to].name,
                cite(&edges)
            ));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Functions.

/// A function item with a body.
#[derive(Debug)]
struct Function {
    /// `name`, or `Type::name` inside an `impl` or `trait` block.
    name: String,
    /// The line of the `fn` keyword.
    line: usize,
    /// Lines from the `fn` keyword to the closing brace, both included.
    lines: usize,
    /// The reason a `long:` marker right above it gives.
    long_reason: Option<String>,
}

fn functions(file: &SourceFile) -> Vec<Function> {
    let owners = owner_blocks(&file.tokens);
    (0..file.tokens.len()).filter_map(|i| function_at(file, &owners, i)).collect()
}

/// The function whose `fn` keyword is token `at`: `fn name` followed, after the signature,
/// by a body (`fn(u8)` pointer types and bodiless declarations are not functions here).
fn function_at(file: &SourceFile, owners: &[Owner], at: usize) -> Option<Function> {
    let tokens = &file.tokens;
    if !tokens[at].is("fn") {
        return None;
    }
    let name = ident(tokens.get(at + 1))?;
    let close = matching_close(tokens, body_start(tokens, at + 2)?);
    let line = tokens[at].line;
    let item_line = tokens[item_start(tokens, at)].line;
    let owner = owners.iter().filter(|o| o.open < at && at < o.close).max_by_key(|o| o.open);
    Some(Function {
        name: owner.map_or(name.clone(), |owner| format!("{}::{name}", owner.name)),
        line,
        lines: tokens[close].line - line + 1,
        long_reason: long_reason(&file.comments, item_line, line),
    })
}

/// The first token of the item whose `fn` is at `at`: back over `pub(..)`, `async`, `const`,
/// `unsafe`, `extern "C"` and outer attributes.
fn item_start(tokens: &[Token], at: usize) -> usize {
    let mut start = at;
    while start > 0 {
        let previous = &tokens[start - 1];
        start = match previous.text.as_str() {
            "pub" | "async" | "const" | "unsafe" | "extern" | "default" => start - 1,
            _ if previous.kind == Kind::Literal && start >= 2 && tokens[start - 2].is("extern") => start - 1,
            ")" | "]" => {
                let open = matching_open(tokens, start - 1);
                let keyword = if previous.is(")") { "pub" } else { "#" };
                if open > 0 && tokens[open - 1].is(keyword) {
                    open - 1
                } else {
                    break;
                }
            }
            _ => break,
        };
    }
    start
}

/// The comments right above an item: those between its attributes, and the unbroken run of
/// whole-line comments that ends on the line before it.
fn comments_above(comments: &[Comment], item_line: usize, fn_line: usize) -> Vec<&Comment> {
    let mut above: Vec<&Comment> =
        comments.iter().filter(|c| c.first_line >= item_line && c.last_line < fn_line).collect();
    let mut next = item_line;
    while let Some(comment) = comments.iter().find(|c| c.starts_line && c.last_line + 1 == next) {
        above.push(comment);
        next = comment.first_line;
    }
    above
}

fn long_reason(comments: &[Comment], item_line: usize, fn_line: usize) -> Option<String> {
    comments_above(comments, item_line, fn_line).into_iter().find_map(|c| marker_reason(&c.text))
}

/// The text after a `long:` marker (a word of its own), if there is any.
fn marker_reason(comment: &str) -> Option<String> {
    let (at, _) = comment
        .match_indices(LONG_MARKER)
        .find(|(at, _)| !comment[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))?;
    let reason = comment[at + LONG_MARKER.len()..].trim().trim_end_matches("*/").trim();
    (!reason.is_empty()).then(|| reason.to_string())
}

/// An `impl` or `trait` block: the type or trait it is for, and the indices of its braces.
struct Owner {
    name: String,
    open: usize,
    close: usize,
}

fn owner_blocks(tokens: &[Token]) -> Vec<Owner> {
    (0..tokens.len()).filter_map(|i| owner_at(tokens, i)).collect()
}

fn owner_at(tokens: &[Token], at: usize) -> Option<Owner> {
    let keyword = &tokens[at];
    let item_position = at == 0
        || matches!(tokens[at - 1].text.as_str(), "}" | ";" | "{" | "]" | ")" | "pub" | "unsafe" | "default" | "auto");
    if !(keyword.is("impl") || keyword.is("trait")) || !item_position {
        return None;
    }
    let open = body_start(tokens, at + 1)?;
    let header = &tokens[at + 1..open];
    let name = if keyword.is("trait") { ident(header.first())? } else { impl_type_name(header)? };
    Some(Owner { name, open, close: matching_close(tokens, open) })
}

/// The type an `impl` header is for: `<T> fmt::Display for Wrapper<T> where ..` → `Wrapper`.
fn impl_type_name(header: &[Token]) -> Option<String> {
    let outside = outside_angles(header);
    let end = outside.iter().position(|&i| header[i].is("where")).unwrap_or(outside.len());
    let outside = &outside[..end];
    let self_type = match outside.iter().position(|&i| header[i].is("for")) {
        Some(for_at) => &outside[for_at + 1..],
        None => outside,
    };
    let mut names = self_type.iter().rev().map(|&i| &header[i]);
    names.find(|t| t.kind == Kind::Ident && !t.is("mut") && !t.is("dyn")).map(|t| t.text.clone())
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests, on small inline snippets.

mod checker {
    use super::*;

    fn texts(source: &str) -> Vec<String> {
        lex(source).tokens.into_iter().map(|t| t.text).collect()
    }

    fn kinds(source: &str) -> Vec<Kind> {
        lex(source).tokens.into_iter().map(|t| t.kind).collect()
    }

    fn use_paths(source: &str) -> Vec<String> {
        let tokens = without_test_items(lex(source).tokens);
        let decls = use_declarations(&tokens);
        decls.iter().flat_map(|d| d.paths.iter().map(|p| p.segments.join("::"))).collect()
    }

    fn module(path: &str) -> ModulePath {
        path.split("::").filter(|s| !s.is_empty()).map(String::from).collect()
    }

    /// Files for the modules given as (module path, source); "" is the crate root.
    fn tree(modules: &[(&str, &str)]) -> Vec<SourceFile> {
        modules.iter().map(|(path, source)| SourceFile::parse(path, module(path), source)).collect()
    }

    /// The imports of a tree, as `from → to via path`.
    fn imports(files: &[SourceFile]) -> Vec<String> {
        let edges = import_edges(files);
        edges.iter().map(|e| format!("{} → {} via {}", files[e.from].name, files[e.to].name, e.path)).collect()
    }

    #[test]
    fn a_brace_in_a_string_or_char_is_not_a_brace() {
        assert_eq!(texts(r#"f("{", '{', '}') {}"#), ["f", "(", r#""{""#, ",", "'{'", ",", "'}'", ")", "{", "}"]);
        assert_eq!(texts(r#"let s = "a \" { \\"; }"#), ["let", "s", "=", r#""a \" { \\""#, ";", "}"]);
    }

    #[test]
    fn lifetimes_are_not_char_literals() {
        let source = "fn f<'a>(x: &'a str) -> char { 'x: loop { break 'x '{' } }";
        let lifetimes: Vec<String> =
            lex(source).tokens.into_iter().filter(|t| t.kind == Kind::Lifetime).map(|t| t.text).collect();
        assert_eq!(lifetimes, ["'a", "'a", "'x", "'x"]);
        assert_eq!(texts(source).iter().filter(|t| *t == "{").count(), 2);
        assert_eq!(kinds(r"'\'' '\\' '\u{7f}' 'é' b'{'"), [Kind::Literal; 5]);
    }

    #[test]
    fn raw_strings_end_at_their_own_hashes() {
        assert_eq!(texts(r###"r#"a "quoted" { brace"# }"###), [r###"r#"a "quoted" { brace"#"###, "}"]);
        assert_eq!(texts(r#"br"{" r#match"#), [r#"br"{""#, "r#match"]);
    }

    #[test]
    fn comments_are_dropped_but_kept_aside() {
        let lexed = lex("a // x {\n/* outer /* inner { */ } */ b\n/// doc\nc");
        let texts: Vec<&str> = lexed.tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        let comments: Vec<(usize, bool)> = lexed.comments.iter().map(|c| (c.first_line, c.starts_line)).collect();
        assert_eq!(comments, [(1, false), (2, true), (3, true)]);
    }

    #[test]
    fn lines_survive_multi_line_literals_and_comments() {
        let lines: Vec<usize> = lex("a \"x\ny\" /*\n\n*/ b\nc").tokens.iter().map(|t| t.line).collect();
        assert_eq!(lines, [1, 1, 4, 5]);
    }

    #[test]
    fn nested_and_multi_line_use_groups_are_flattened() {
        assert_eq!(use_paths("use crate::{a::{b, c}, d};"), ["crate::a::b", "crate::a::c", "crate::d"]);
        assert_eq!(
            use_paths("pub use super::x::{\n    self,\n    Y as Z,\n    w::*,\n};\nuse ::std::io;"),
            ["super::x", "super::x::Y", "super::x::w", "std::io"]
        );
    }

    #[test]
    fn use_bindings_are_the_names_brought_into_scope() {
        let tokens = lex("use crate::hub::{self, Hub as H, x::*, y as _};").tokens;
        let bindings: Vec<Option<String>> =
            use_declarations(&tokens)[0].paths.iter().map(|p| p.binding.clone()).collect();
        assert_eq!(bindings, [Some("hub".into()), Some("H".into()), None, None]);
    }

    #[test]
    fn test_only_items_are_skipped() {
        let source = "#[cfg(test)]\nmod tests {\n    use crate::x;\n}\n#[cfg(test)] mod more;\n\
                      #[cfg(all(test, unix))] #[allow(unused)] use crate::z::{a, b};\nuse crate::y;";
        assert_eq!(use_paths(source), ["crate::y"]);
        assert!(declared_submodules(&without_test_items(lex(source).tokens)).is_empty());
        assert_eq!(use_paths("#[cfg(not(test))] use crate::kept;"), ["crate::kept"]);
    }

    #[test]
    fn a_test_only_field_ends_at_its_comma() {
        let tokens = without_test_items(lex("struct S { #[cfg(test)] a: Vec<u8, A>, b: crate::hub::Hub }").tokens);
        let texts: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["struct", "S", "{", "b", ":", "crate", "::", "hub", "::", "Hub", "}"]);
    }

    #[test]
    fn paths_count_against_the_longest_module_that_is_a_file() {
        let files = tree(&[
            ("", "pub mod auth; pub mod hub;"),
            ("auth", "pub mod rules;"),
            ("auth::rules", "use super::Identity;\nfn f() { crate::hub::Outbox::new(); let s = \"crate::x::y\"; }"),
            ("hub", "mod outbox;\npub use outbox::Outbox;\nfn g() { crate::auth::rules::ClassRules::new(); }"),
            ("hub::outbox", "use super::Payload; use self::inner::X; // crate::auth\nfn h() { hub::x() }"),
        ]);
        assert_eq!(
            imports(&files),
            [
                "auth::rules → auth via super::Identity",
                "auth::rules → hub via crate::hub::Outbox::new",
                "hub → hub::outbox via outbox::Outbox",
                "hub → auth::rules via crate::auth::rules::ClassRules::new",
                "hub::outbox → hub via super::Payload",
            ]
        );
    }

    #[test]
    fn a_module_used_by_name_resolves_paths_written_through_it() {
        let files = tree(&[
            ("", "mod auth; mod session;"),
            ("auth", "mod rules;"),
            ("auth::rules", ""),
            ("session", "use crate::auth;\nfn f() { auth::rules::check(); }"),
        ]);
        assert_eq!(imports(&files), ["session → auth via crate::auth", "session → auth::rules via auth::rules::check"]);
    }

    #[test]
    fn super_inside_an_inline_module_is_the_file_itself() {
        let files =
            tree(&[("", "mod a; mod b;"), ("a", "mod inner { use super::X; use super::super::b::Y; }"), ("b", "")]);
        assert_eq!(imports(&files), ["a → b via super::super::b::Y"]);
    }

    #[test]
    fn components_are_found_and_family_cycles_allowed() {
        let components = strongly_connected_components(&[vec![1], vec![2], vec![0], vec![0]]);
        assert!(components.contains(&vec![0, 1, 2]) && components.contains(&vec![3]), "{components:?}");
        let files = tree(&[
            ("", ""),
            ("hub", "use outbox::X; use index::Y; mod outbox; mod index;"),
            ("hub::outbox", "use super::P;"),
            ("hub::index", "use super::Q;"),
        ]);
        let edges = import_edges(&files);
        assert!(forbidden_cycles(&files, &edges, &[1, 2, 3]).is_empty());
        let siblings = tree(&[("", ""), ("hub", ""), ("hub::a", "use super::b::X;"), ("hub::b", "use super::a::Y;")]);
        let edges = import_edges(&siblings);
        assert_eq!(forbidden_cycles(&siblings, &edges, &[2, 3]), [vec![2, 3]]);
    }

    #[test]
    fn layers_use_the_longest_entry() {
        assert_eq!(layer_of(&module("auth::access")), Some((0, "auth::access")));
        assert_eq!(layer_of(&module("auth::rules")), Some((1, "auth")));
        assert_eq!(layer_of(&module("hub::index")), Some((2, "hub")));
        assert_eq!(layer_of(&module("transport::ws")), Some((5, "transport")));
        assert_eq!(layer_of(&module("authz")), None);
    }

    #[test]
    fn only_function_items_with_bodies_count() {
        let source = "fn a() {\n}\nstruct S { f: fn(u8) -> u8 }\nfn b(f: impl Fn(u8)) -> Box<dyn Fn()> {\n  \
                      let s = \"}\";\n  '}';\n}\ntrait T { fn decl(&self); fn provided(&self) { } }\n\
                      impl<T: Clone> fmt::Display for Wrapper<T> where T: Copy {\n  fn fmt(&self) {}\n}";
        let file = SourceFile::parse("x.rs", module("x"), source);
        let found: Vec<(String, usize, usize)> =
            functions(&file).into_iter().map(|f| (f.name, f.line, f.lines)).collect();
        assert_eq!(
            found,
            [("a".into(), 1, 2), ("b".into(), 4, 4), ("T::provided".into(), 8, 1), ("Wrapper::fmt".into(), 10, 1)]
        );
    }

    #[test]
    fn test_only_functions_do_not_count() {
        let file = SourceFile::parse("x.rs", module("x"), "#[cfg(test)]\nmod tests {\n  fn t() {}\n}\nfn real() {}");
        let names: Vec<String> = functions(&file).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["real"]);
    }

    #[test]
    fn a_long_marker_needs_a_reason_right_above_the_function() {
        let reason = |source: &str| {
            let file = SourceFile::parse("x.rs", module("x"), source);
            functions(&file).pop().and_then(|f| f.long_reason)
        };
        let marked = "/// Doc.\n// long: one match over every message type\n#[inline]\npub(crate) async fn f() {}";
        assert_eq!(reason(marked).as_deref(), Some("one match over every message type"));
        assert_eq!(reason("#[inline]\n/* long: a table */\nfn f() {}").as_deref(), Some("a table"));
        assert_eq!(reason("// long:\nfn f() {}"), None);
        assert_eq!(reason("// long: too far\n\nfn f() {}"), None);
        assert_eq!(reason("let a = 1; // long: trailing code\nfn f() {}"), None);
        assert_eq!(reason("// belong: not a marker\nfn f() {}"), None);
    }
}
