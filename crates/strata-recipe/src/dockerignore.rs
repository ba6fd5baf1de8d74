//! `.dockerignore`: which files of the build context a build may not see.
//!
//! The file is a list of patterns, one per line, read the way BuildKit reads it
//! (moby/patternmatcher's `ignorefile.ReadAll` and `patternmatcher.New`): a leading byte-order
//! mark is dropped, lines *starting* with `#` are comments, every other line is trimmed, blank
//! lines are skipped, a leading `!` makes the pattern an *exception* (it re-includes what earlier
//! patterns excluded), and the pattern is normalised like Go's `filepath.Clean` (`./a/../b` is
//! `b`, `docs/` is `docs`) with a leading `/` dropped, since every path is relative to the
//! context anyway.
//!
//! A pattern is a glob over `/`-separated paths: `*` is any run of characters except `/`, `?`
//! one character except `/`, `[a-c]`/`[^a-c]` a class, `\` escapes the next character, and `**`
//! any number of directories (also zero). A pattern matches a path if it matches the path itself
//! *or any of its parent directories*, so excluding `docs` excludes `docs/README.md` too. The
//! patterns are tried in order and the *last* one that matches decides; an exception only
//! matters for paths an earlier pattern excluded. Each pattern is compiled once when the file is
//! parsed, into a literal comparison where possible (as patternmatcher does) or otherwise into a
//! small automaton that answers "does it match the path or a parent" in one left-to-right pass,
//! so checking a path costs no allocation per pattern and no backtracking.
//!
//! The glob is first translated into the same regular expression patternmatcher builds and that
//! expression is then compiled here, so odd inputs (a `*` inside `[...]`, a `^` outside one,
//! `\d`) mean what they mean to BuildKit. Patterns BuildKit would only reject when it first uses
//! them (an escape Go's regexp does not know, such as `\é`) are rejected by [`DockerIgnore::parse`],
//! and so are the few escapes Go knows but this compiler does not (`\p{..}`, `\x41`, octal,
//! `\Q..\E`, `\b`), which nobody writes in an ignore file.

use std::borrow::Cow;

use crate::error::{ParseError, ParseErrorKind, Span};

/// The parsed contents of a `.dockerignore` file: an ordered list of [`Pattern`]s.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
    has_exceptions: bool,
    max_insts: usize,
}

/// One pattern of a `.dockerignore` file, compiled.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    line: usize,
    matcher: Matcher,
    /// For exceptions: one matcher per `/`-separated component (see `dir_may_have_inclusions`).
    components: Vec<Component>,
}

impl Pattern {
    /// The cleaned pattern, without the leading `!` of an exception.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True for an exception (`!pattern`), which re-includes what it matches.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// The 1-based line of the file the pattern came from.
    pub fn line(&self) -> usize {
        self.line
    }

    /// True if the pattern matches `path` itself or one of its parent directories. `path` is
    /// taken as given (`/`-separated, relative to the context, already clean).
    pub fn matches(&self, path: &str) -> bool {
        let mut scratch = Scratch::new(self.matcher.insts());
        self.matcher.matches(path, true, &mut scratch)
    }
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file. Fails on the first invalid pattern, with the
    /// line number in the error's span; attach the file with [`ParseError::with_source`].
    // The crate's one error type is returned unboxed everywhere, like `parse_ast`; parsing an
    // ignore file happens once per build.
    pub fn parse(text: &str) -> Result<DockerIgnore, ParseError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut out = DockerIgnore::default();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.starts_with('#') {
                continue;
            }
            let written = line.trim();
            if written.is_empty() {
                continue;
            }
            let err = |reason: &str| {
                let column = line.find(written).map_or(1, |b| line[..b].chars().count() + 1);
                ParseError::new(
                    ParseErrorKind::InvalidIgnorePattern {
                        pattern: written.to_owned(),
                        reason: reason.to_owned(),
                    },
                    Span::new(line_no, column),
                )
                .with_len(written.chars().count())
            };
            // ignorefile.ReadAll: clean what follows a `!` and drop a leading `/`.
            let (invert, rest) = match written.strip_prefix('!') {
                Some(r) => (true, r.trim()),
                None => (false, written),
            };
            let mut pattern = String::new();
            if !rest.is_empty() {
                let cleaned = clean(rest);
                let cleaned = if cleaned.len() > 1 && cleaned.starts_with('/') {
                    &cleaned[1..]
                } else {
                    cleaned.as_str()
                };
                pattern.push_str(cleaned);
            }
            if invert {
                pattern.insert(0, '!');
            }
            // patternmatcher.New: trim and clean again, then split off the `!`.
            let pattern = clean(pattern.trim());
            let (exclusion, body) = match pattern.strip_prefix('!') {
                Some("") => return Err(err("an exception `!` needs a pattern after it")),
                Some(b) => (true, b),
                None => (false, pattern.as_str()),
            };
            check_glob_syntax(body).map_err(|r| err(&r))?;
            let matcher = Matcher::compile(body).map_err(|r| err(&r))?;
            let components = if exclusion && may_cross_slash(body) {
                vec![Component::AnyDepth]
            } else if exclusion {
                body.split('/').map(Component::compile).collect()
            } else {
                Vec::new()
            };
            out.has_exceptions |= exclusion;
            out.max_insts = out.max_insts.max(matcher.insts());
            out.patterns.push(Pattern {
                text: body.to_owned(),
                exclusion,
                line: line_no,
                matcher,
                components,
            });
        }
        Ok(out)
    }

    /// The two files a build looks for, in order, next to the Dockerfile named
    /// `dockerfile_name` (as given to the build): `<name>.dockerignore`, then `.dockerignore`.
    /// The first that exists is used; reading them is up to the caller.
    pub fn candidate_files(dockerfile_name: &str) -> [String; 2] {
        [format!("{dockerfile_name}.dockerignore"), ".dockerignore".to_owned()]
    }

    /// The patterns, in file order.
    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.patterns.iter()
    }

    /// True if there are no patterns (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True if any pattern is an exception (`!...`).
    pub fn has_exceptions(&self) -> bool {
        self.has_exceptions
    }

    /// True if `path` (relative to the context, `/`-separated) is excluded from the context:
    /// the last pattern matching it or one of its parent directories is not an exception.
    /// The path is cleaned first and a leading `/` ignored; the context root itself (`.`, ``,
    /// `/`) is never excluded.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = context_path(path);
        if path == "." || self.patterns.is_empty() {
            return false;
        }
        let mut scratch = Scratch::new(self.max_insts);
        let mut excluded = false;
        for p in &self.patterns {
            // An exception can only change an excluded path, an exclusion an included one.
            if p.exclusion != excluded {
                continue;
            }
            if p.matcher.matches(&path, true, &mut scratch) {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// True if an exception could re-include something below the directory `dir`, so a walker
    /// that found `dir` excluded must still descend into it; false means the whole subtree can
    /// be skipped. Conservative: it may say true when nothing below is re-included, never false
    /// when something is.
    pub fn dir_may_have_inclusions(&self, dir: &str) -> bool {
        if !self.has_exceptions {
            return false;
        }
        let dir = context_path(dir);
        if dir == "." {
            return true;
        }
        let parts: Vec<&str> = dir.split('/').collect();
        let mut scratch = Scratch::new(self.max_insts);
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            for (i, part) in parts.iter().enumerate() {
                match p.components.get(i) {
                    // The exception names `dir` or one of its parents.
                    None => return true,
                    Some(Component::AnyDepth | Component::Unknown) => return true,
                    Some(Component::Glob(m)) => {
                        if !m.matches(part, false, &mut scratch) {
                            return false;
                        }
                    }
                }
            }
            true
        })
    }
}

/// Whether a pattern may match a `/` with something other than a `/` of its own, so that its
/// `/`-separated parts say nothing about a path's components. moby's matcher turns the
/// pattern into a regular expression and keeps `\X` and `[...]` as they are, so `\D` (any
/// non-digit), `\S`, `\W` and a bracket such as `[^x]` or `[!-0]` match a `/` too (found by
/// the dockerignore fuzz target: `!*\Do*` re-includes `a/otke`).
fn may_cross_slash(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' => return true,
            '\\' if chars.next().is_some_and(|n| n.is_ascii_alphanumeric()) => return true,
            _ => {}
        }
    }
    false
}

/// How an exception's path component is compared with a directory name.
#[derive(Debug, Clone)]
enum Component {
    /// Contains `**`: may match any number of directories.
    AnyDepth,
    /// Compiles on its own.
    Glob(Matcher),
    /// Cannot be judged on its own (e.g. a `[...]` split by a `/`): assume it may match.
    Unknown,
}

impl Component {
    fn compile(part: &str) -> Component {
        if part.contains("**") {
            return Component::AnyDepth;
        }
        match check_glob_syntax(part).and_then(|()| Matcher::compile(part)) {
            Ok(m) => Component::Glob(m),
            Err(_) => Component::Unknown,
        }
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A path relative to the context as patternmatcher expects it: leading `/`s dropped (patterns
/// drop theirs too), then cleaned; allocates only when the path is not clean already.
fn context_path(path: &str) -> Cow<'_, str> {
    let path = path.trim_start_matches('/');
    let is_clean =
        !path.is_empty() && path.split('/').all(|p| !(p.is_empty() || p == "." || p == ".."));
    if is_clean {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(clean(path))
    }
}

/// Rejects what Go's `filepath.Match` calls a malformed pattern: a bad `[...]` class or a
/// trailing `\`.
fn check_glob_syntax(pattern: &str) -> Result<(), String> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => i += 1,
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("the pattern ends with an escape `\\`".to_owned());
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if p.get(i) == Some(&'^') {
                    i += 1;
                }
                let mut ranges = 0;
                loop {
                    if p.get(i) == Some(&']') && ranges > 0 {
                        i += 1;
                        break;
                    }
                    i = class_char(&p, i)?;
                    if p.get(i) == Some(&'-') {
                        i = class_char(&p, i + 1)?;
                    }
                    ranges += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// One character of a `[...]` class in `filepath.Match` syntax; returns the index after it.
fn class_char(p: &[char], i: usize) -> Result<usize, String> {
    let bad = || Err("malformed `[...]` class".to_owned());
    let mut i = i;
    match p.get(i) {
        None | Some('-' | ']') => return bad(),
        Some('\\') => i += 1,
        Some(_) => {}
    }
    if i >= p.len() {
        return bad();
    }
    i += 1;
    // Go also requires something (at least the closing `]`) after the character.
    if i >= p.len() {
        return bad();
    }
    Ok(i)
}

/// How one pattern is checked, chosen at compile time like patternmatcher's `matchType`.
#[derive(Debug, Clone)]
enum Matcher {
    /// Only literal characters: compare.
    Exact(String),
    /// `literal**`: a prefix test.
    Prefix(String),
    /// `**literal`: a suffix test (`**/x` also matches `x`).
    Suffix(String),
    /// Anything else: the automaton.
    Program(Program),
}

/// Characters patternmatcher escapes because they are special to regexps but not to globs.
fn should_escape(c: char) -> bool {
    matches!(c, '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$')
}

impl Matcher {
    fn compile(pattern: &str) -> Result<Matcher, String> {
        #[derive(PartialEq)]
        enum Kind {
            Exact,
            Prefix,
            Suffix,
            Regex,
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut re = String::from("^");
        let mut kind = Kind::Exact;
        let mut k = 0;
        let mut first = true;
        while k < chars.len() {
            let ch = chars[k];
            k += 1;
            match ch {
                '*' if chars.get(k) == Some(&'*') => {
                    k += 1;
                    if chars.get(k) == Some(&'/') {
                        k += 1;
                    }
                    if k == chars.len() {
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            re.push_str(".*");
                            kind = Kind::Regex;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        kind = Kind::Regex;
                    }
                    if first {
                        kind = Kind::Suffix;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    kind = Kind::Regex;
                }
                '?' => {
                    re.push_str("[^/]");
                    kind = Kind::Regex;
                }
                c if should_escape(c) => {
                    re.push('\\');
                    re.push(c);
                }
                '\\' => {
                    re.push('\\');
                    if let Some(&n) = chars.get(k) {
                        k += 1;
                        re.push(n);
                        kind = Kind::Regex;
                    }
                }
                '[' | ']' => {
                    re.push(ch);
                    kind = Kind::Regex;
                }
                c => re.push(c),
            }
            first = false;
        }
        Ok(match kind {
            Kind::Exact => Matcher::Exact(pattern.to_owned()),
            // Both strip the two `*` bytes.
            Kind::Prefix => Matcher::Prefix(
                pattern.get(..pattern.len().saturating_sub(2)).unwrap_or_default().to_owned(),
            ),
            Kind::Suffix => Matcher::Suffix(pattern.get(2..).unwrap_or_default().to_owned()),
            Kind::Regex => {
                re.push('$');
                Matcher::Program(Program::compile(&re)?)
            }
        })
    }

    fn insts(&self) -> usize {
        match self {
            Matcher::Program(p) => p.insts.len(),
            _ => 0,
        }
    }

    /// Does the pattern match `path`, or (with `parents`) a parent directory of it?
    fn matches(&self, path: &str, parents: bool, scratch: &mut Scratch) -> bool {
        match self {
            Matcher::Exact(p) => {
                path == p
                    || (parents
                        && path.len() > p.len()
                        && path.starts_with(p.as_str())
                        && path.as_bytes()[p.len()] == b'/')
            }
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => {
                let one = |q: &str| q.ends_with(s.as_str()) || s.strip_prefix('/') == Some(q);
                one(path) || (parents && boundaries(path).any(|e| one(&path[..e])))
            }
            Matcher::Program(prog) => prog.matches(path, parents, scratch),
        }
    }
}

/// Byte offsets of the `/`s of `path`: the ends of its parent directories.
fn boundaries(path: &str) -> impl Iterator<Item = usize> + '_ {
    path.bytes().enumerate().filter(|(_, b)| *b == b'/').map(|(i, _)| i)
}

// ---- the regular-expression subset patternmatcher produces, as a Thompson automaton ----

/// A set of characters in Go regexp syntax: ranges and named classes, possibly negated.
#[derive(Debug, Clone, Default)]
struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
    named: Vec<(Named, bool)>,
}

/// POSIX and Perl named classes (ASCII, as in Go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Alnum,
    Alpha,
    Ascii,
    Blank,
    Cntrl,
    Digit,
    Graph,
    Lower,
    Print,
    Punct,
    Space,
    PerlSpace,
    Upper,
    Word,
    Xdigit,
}

impl Named {
    fn from_posix(name: &str) -> Option<Named> {
        Some(match name {
            "alnum" => Named::Alnum,
            "alpha" => Named::Alpha,
            "ascii" => Named::Ascii,
            "blank" => Named::Blank,
            "cntrl" => Named::Cntrl,
            "digit" => Named::Digit,
            "graph" => Named::Graph,
            "lower" => Named::Lower,
            "print" => Named::Print,
            "punct" => Named::Punct,
            "space" => Named::Space,
            "upper" => Named::Upper,
            "word" => Named::Word,
            "xdigit" => Named::Xdigit,
            _ => return None,
        })
    }

    fn from_perl(c: char) -> Option<(Named, bool)> {
        Some(match c {
            'd' => (Named::Digit, false),
            'D' => (Named::Digit, true),
            's' => (Named::PerlSpace, false),
            'S' => (Named::PerlSpace, true),
            'w' => (Named::Word, false),
            'W' => (Named::Word, true),
            _ => return None,
        })
    }

    fn contains(self, c: char) -> bool {
        match self {
            Named::Alnum => c.is_ascii_alphanumeric(),
            Named::Alpha => c.is_ascii_alphabetic(),
            Named::Ascii => c.is_ascii(),
            Named::Blank => c == ' ' || c == '\t',
            Named::Cntrl => c.is_ascii_control(),
            Named::Digit => c.is_ascii_digit(),
            Named::Graph => c.is_ascii_graphic(),
            Named::Lower => c.is_ascii_lowercase(),
            Named::Print => c.is_ascii_graphic() || c == ' ',
            Named::Punct => c.is_ascii_punctuation(),
            Named::Space => matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'),
            Named::PerlSpace => matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c'),
            Named::Upper => c.is_ascii_uppercase(),
            Named::Word => c.is_ascii_alphanumeric() || c == '_',
            Named::Xdigit => c.is_ascii_hexdigit(),
        }
    }
}

impl CharClass {
    fn contains(&self, c: char) -> bool {
        let hit = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
            || self.named.iter().any(|&(n, neg)| n.contains(c) != neg);
        hit != self.negated
    }
}

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    Class(CharClass),
    /// `.`: any character but a newline.
    Any,
    Begin,
    End,
    Group(Vec<Node>),
    Star(Box<Node>),
    Plus(Box<Node>),
    Quest(Box<Node>),
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Class(Box<CharClass>),
    Any,
    Begin,
    End,
    Split(usize, usize),
    Jmp(usize),
    Match,
}

#[derive(Debug, Clone)]
struct Program {
    insts: Vec<Inst>,
    /// Every match starts with this.
    lit_prefix: String,
    /// Every match ends with this.
    lit_suffix: String,
}

/// Parser for the regexp text built by [`Matcher::compile`] (Go RE2 syntax, the subset that can
/// occur there).
struct ReParser {
    s: Vec<char>,
    i: usize,
}

impl ReParser {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} in the expression BuildKit derives from it"))
    }

    fn seq(&mut self, depth: usize) -> Result<Vec<Node>, String> {
        let mut out: Vec<Node> = Vec::new();
        let mut lazy_marked = false;
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            if !matches!(c, '*' | '+' | '?') {
                lazy_marked = false;
            }
            match c {
                '(' => {
                    if depth > 64 {
                        return self.err("too deeply nested groups");
                    }
                    let inner = self.seq(depth + 1)?;
                    if self.s.get(self.i) != Some(&')') {
                        return self.err("missing `)`");
                    }
                    self.i += 1;
                    out.push(Node::Group(inner));
                }
                ')' => {
                    if depth == 0 {
                        return self.err("unexpected `)`");
                    }
                    self.i -= 1;
                    return Ok(out);
                }
                '*' | '+' | '?' => {
                    let Some(prev) = out.pop() else {
                        return self.err("missing argument to a repetition");
                    };
                    if matches!(prev, Node::Star(_) | Node::Plus(_) | Node::Quest(_)) {
                        // `x*?` is a lazy repetition: the same set of matches.
                        if c == '?' && !lazy_marked {
                            lazy_marked = true;
                            out.push(prev);
                            continue;
                        }
                        return self.err("nested repetition");
                    }
                    lazy_marked = false;
                    let b = Box::new(prev);
                    out.push(match c {
                        '*' => Node::Star(b),
                        '+' => Node::Plus(b),
                        _ => Node::Quest(b),
                    });
                }
                '|' => return self.err("alternation"),
                '{' => return self.err("a repetition count"),
                '[' => out.push(Node::Class(self.class()?)),
                '.' => out.push(Node::Any),
                '^' => out.push(Node::Begin),
                '$' => out.push(Node::End),
                '\\' => out.push(self.escape(false)?.into_node()),
                c => out.push(Node::Char(c)),
            }
        }
        if depth > 0 {
            return self.err("missing `)`");
        }
        Ok(out)
    }

    fn escape(&mut self, in_class: bool) -> Result<Escaped, String> {
        let Some(&c) = self.s.get(self.i) else {
            return self.err("a trailing `\\`");
        };
        self.i += 1;
        if c.is_ascii_punctuation() {
            return Ok(Escaped::Char(c));
        }
        if let Some((n, neg)) = Named::from_perl(c) {
            return Ok(Escaped::Class(n, neg));
        }
        Ok(Escaped::Char(match c {
            'a' => '\x07',
            'f' => '\x0c',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            'v' => '\x0b',
            'A' if !in_class => return Ok(Escaped::Begin),
            'z' if !in_class => return Ok(Escaped::End),
            _ => return self.err(&format!("the unsupported escape `\\{c}`")),
        }))
    }

    fn class(&mut self) -> Result<CharClass, String> {
        let mut class = CharClass::default();
        if self.s.get(self.i) == Some(&'^') {
            class.negated = true;
            self.i += 1;
        }
        let mut first = true;
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("missing `]`");
            };
            if c == ']' && !first {
                self.i += 1;
                return Ok(class);
            }
            first = false;
            if c == '[' && self.s.get(self.i + 1) == Some(&':') {
                if let Some(end) = (self.i + 2..self.s.len().saturating_sub(1))
                    .find(|&j| self.s[j] == ':' && self.s[j + 1] == ']')
                {
                    let name: String = self.s[self.i + 2..end].iter().collect();
                    let (neg, name) = match name.strip_prefix('^') {
                        Some(n) => (true, n.to_owned()),
                        None => (false, name),
                    };
                    let Some(n) = Named::from_posix(&name) else {
                        return self.err("an unknown `[:class:]`");
                    };
                    class.named.push((n, neg));
                    self.i = end + 2;
                    continue;
                }
            }
            let lo = match self.class_char()? {
                Escaped::Char(c) => c,
                Escaped::Class(n, neg) => {
                    class.named.push((n, neg));
                    continue;
                }
                Escaped::Begin | Escaped::End => return self.err("an assertion in a class"),
            };
            let mut hi = lo;
            if self.s.get(self.i) == Some(&'-') && self.s.get(self.i + 1).is_some_and(|c| *c != ']')
            {
                self.i += 1;
                hi = match self.class_char()? {
                    Escaped::Char(c) => c,
                    _ => return self.err("a bad range in a class"),
                };
                if hi < lo {
                    return self.err("a reversed range in a class");
                }
            }
            class.ranges.push((lo, hi));
        }
    }

    fn class_char(&mut self) -> Result<Escaped, String> {
        let Some(&c) = self.s.get(self.i) else {
            return self.err("missing `]`");
        };
        self.i += 1;
        if c == '\\' {
            return self.escape(true);
        }
        Ok(Escaped::Char(c))
    }
}

enum Escaped {
    Char(char),
    Class(Named, bool),
    Begin,
    End,
}

impl Escaped {
    fn into_node(self) -> Node {
        match self {
            Escaped::Char(c) => Node::Char(c),
            Escaped::Class(n, neg) => {
                Node::Class(CharClass { negated: false, ranges: Vec::new(), named: vec![(n, neg)] })
            }
            Escaped::Begin => Node::Begin,
            Escaped::End => Node::End,
        }
    }
}

impl Program {
    fn compile(re: &str) -> Result<Program, String> {
        let mut parser = ReParser { s: re.chars().collect(), i: 0 };
        let nodes = parser.seq(0)?;
        let mut insts = Vec::new();
        for n in &nodes {
            emit(&mut insts, n);
        }
        insts.push(Inst::Match);
        // Literal prefix/suffix for quick rejection: top-level characters after `^`/before `$`.
        let mut lit_prefix = String::new();
        for n in nodes.iter().skip_while(|n| matches!(n, Node::Begin)) {
            match n {
                Node::Char(c) => lit_prefix.push(*c),
                _ => break,
            }
        }
        let mut rev = Vec::new();
        for n in nodes.iter().rev().skip_while(|n| matches!(n, Node::End)) {
            match n {
                Node::Char(c) => rev.push(*c),
                _ => break,
            }
        }
        let all_literal =
            nodes.iter().all(|n| matches!(n, Node::Char(_) | Node::Begin | Node::End));
        let lit_suffix = if all_literal { String::new() } else { rev.iter().rev().collect() };
        Ok(Program { insts, lit_prefix, lit_suffix })
    }

    fn matches(&self, path: &str, parents: bool, sc: &mut Scratch) -> bool {
        if !path.starts_with(self.lit_prefix.as_str()) {
            return false;
        }
        if !self.lit_suffix.is_empty() {
            let s = self.lit_suffix.as_str();
            let ok =
                path.ends_with(s) || (parents && boundaries(path).any(|e| path[..e].ends_with(s)));
            if !ok {
                return false;
            }
        }
        sc.reset(self.insts.len());
        let (mut cur, mut next) = (std::mem::take(&mut sc.cur), std::mem::take(&mut sc.next));
        cur.clear();
        self.add(&mut cur, sc, 0, true);
        let mut found = false;
        for (i, c) in path.char_indices() {
            if parents && c == '/' && self.accepts_at_end(&cur, sc, i == 0) {
                found = true;
                break;
            }
            next.clear();
            sc.generation += 1;
            for &pc in &cur {
                let ok = match &self.insts[pc] {
                    Inst::Char(x) => *x == c,
                    Inst::Class(cl) => cl.contains(c),
                    Inst::Any => c != '\n',
                    _ => false,
                };
                if ok {
                    self.add(&mut next, sc, pc + 1, false);
                }
            }
            std::mem::swap(&mut cur, &mut next);
            if cur.is_empty() {
                break;
            }
        }
        if !found && !cur.is_empty() {
            found = self.accepts_at_end(&cur, sc, path.is_empty());
        }
        sc.cur = cur;
        sc.next = next;
        found
    }

    /// Adds `pc` and everything reachable from it without reading a character; `$` is left
    /// in the list (it only holds where the text ends, see `accepts_at_end`).
    fn add(&self, list: &mut Vec<usize>, sc: &mut Scratch, pc: usize, at_start: bool) {
        sc.stack.clear();
        sc.stack.push(pc);
        while let Some(pc) = sc.stack.pop() {
            if sc.mark[pc] == sc.generation {
                continue;
            }
            sc.mark[pc] = sc.generation;
            match &self.insts[pc] {
                Inst::Jmp(t) => sc.stack.push(*t),
                Inst::Split(a, b) => {
                    sc.stack.push(*b);
                    sc.stack.push(*a);
                }
                Inst::Begin => {
                    if at_start {
                        sc.stack.push(pc + 1);
                    }
                }
                _ => list.push(pc),
            }
        }
    }

    /// Would the text read so far match if it ended here?
    fn accepts_at_end(&self, list: &[usize], sc: &mut Scratch, at_start: bool) -> bool {
        sc.generation += 1;
        let mut stack = std::mem::take(&mut sc.stack);
        stack.clear();
        stack.extend(list.iter().copied());
        let mut found = false;
        while let Some(pc) = stack.pop() {
            if sc.mark[pc] == sc.generation {
                continue;
            }
            sc.mark[pc] = sc.generation;
            match &self.insts[pc] {
                Inst::Match => {
                    found = true;
                    break;
                }
                Inst::End => stack.push(pc + 1),
                Inst::Jmp(t) => stack.push(*t),
                Inst::Split(a, b) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Inst::Begin if at_start => stack.push(pc + 1),
                _ => {}
            }
        }
        sc.stack = stack;
        found
    }
}

fn emit(insts: &mut Vec<Inst>, node: &Node) {
    match node {
        Node::Char(c) => insts.push(Inst::Char(*c)),
        Node::Class(cl) => insts.push(Inst::Class(Box::new(cl.clone()))),
        Node::Any => insts.push(Inst::Any),
        Node::Begin => insts.push(Inst::Begin),
        Node::End => insts.push(Inst::End),
        Node::Group(nodes) => {
            for n in nodes {
                emit(insts, n);
            }
        }
        Node::Star(inner) => {
            let split = insts.len();
            insts.push(Inst::Jmp(0));
            emit(insts, inner);
            insts.push(Inst::Jmp(split));
            let after = insts.len();
            insts[split] = Inst::Split(split + 1, after);
        }
        Node::Plus(inner) => {
            let start = insts.len();
            emit(insts, inner);
            let after = insts.len() + 1;
            insts.push(Inst::Split(start, after));
        }
        Node::Quest(inner) => {
            let split = insts.len();
            insts.push(Inst::Jmp(0));
            emit(insts, inner);
            let after = insts.len();
            insts[split] = Inst::Split(split + 1, after);
        }
    }
}

/// Reusable buffers for running programs, sized for the largest one.
struct Scratch {
    cur: Vec<usize>,
    next: Vec<usize>,
    stack: Vec<usize>,
    mark: Vec<u32>,
    generation: u32,
}

impl Scratch {
    fn new(insts: usize) -> Self {
        Scratch {
            cur: Vec::with_capacity(insts),
            next: Vec::with_capacity(insts),
            stack: Vec::with_capacity(insts),
            mark: vec![0; insts],
            generation: 0,
        }
    }

    fn reset(&mut self, insts: usize) {
        if self.mark.len() < insts {
            self.mark.resize(insts, 0);
        }
        if self.generation > u32::MAX / 2 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.generation = 0;
        }
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_go_filepath_clean() {
        for (i, o) in [
            ("", "."),
            (".", "."),
            ("./a/../b", "b"),
            ("a//b/", "a/b"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("a/../..", ".."),
            ("/", "/"),
            ("//x/./y/..", "/x"),
        ] {
            assert_eq!(clean(i), o, "clean({i:?})");
        }
    }

    #[test]
    fn compile_chooses_literal_matchers() {
        assert!(matches!(Matcher::compile("a/b.c").unwrap(), Matcher::Exact(_)));
        assert!(matches!(Matcher::compile("a/**").unwrap(), Matcher::Prefix(p) if p == "a/"));
        assert!(matches!(Matcher::compile("**/x.go").unwrap(), Matcher::Suffix(s) if s == "/x.go"));
        assert!(matches!(Matcher::compile("**/*.go").unwrap(), Matcher::Program(_)));
    }

    #[test]
    fn glob_syntax_errors() {
        for bad in ["[", "a\\", "[]", "[a", "[-a]", "[a-]", "[^]", "x[z-"] {
            assert!(check_glob_syntax(bad).is_err(), "{bad:?}");
        }
        for good in ["[a]", "[^a-c]x", "\\[", "a*b?", "[\\]]", "]"] {
            assert!(check_glob_syntax(good).is_ok(), "{good:?}");
        }
    }
}
