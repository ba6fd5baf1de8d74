//! Shell-word lexing and `${var...}` expansion, as BuildKit's Dockerfile frontend does it.
//!
//! Inside instructions a Dockerfile uses a small subset of the POSIX shell word language:
//! single and double quotes, an escape character (`\`, or `` ` `` under `# escape=`` ` ``), and
//! parameter expansion (`$v`, `${v}`, `${v:-word}`, `${v#pattern}`, `${v/pattern/replacement}`...).
//! There is no command substitution, arithmetic or field splitting on `IFS`: the lexer walks the
//! word once, left to right, and either returns it as one string with the quotes removed
//! ([`ShellLexer::expand_word`], BuildKit's `ProcessWord`) or splits it into words after the
//! expansion ([`ShellLexer::expand_words`], BuildKit's `ProcessWords`), where only the text that
//! came out of an *unquoted* `$` expansion or unquoted literal whitespace separates words.
//!
//! The behaviour follows BuildKit's `frontend/dockerfile/shell` package, quirks included, so that
//! the same Dockerfile means the same thing to both:
//! - `$` followed by something that is not a name (`$.`, `$` at the end) stays a literal `$`;
//!   `$1`, `$001` (digits) and the special parameters `$@ $* $# $? $- $$ $! $0` are looked up
//!   like any name (and are normally unset, so they expand to nothing).
//! - `${v#p}`, `${v%p}` and `${v/p/r}` patterns are shell globs with `*` and `?` (neither
//!   matches a newline) and `\`-escapes of `*`, `?` and `\`; as in BuildKit there are no
//!   bracket expressions, so `[` and `]` are literal characters. Inside `${v#..}`, `${v%..}` and
//!   `${v/../..}` the escape character is kept in the text so the pattern can see it.
//! - `${v//p/r}` replaces every match the way Go's `Regexp.ReplaceAllString` does, so `$0` in
//!   the (already expanded) replacement stands for the match.
//! - In [`ShellLexer::expand_words`] a nested `${v:-...}`-style expansion discards the part of
//!   the current word that preceded it (`a${x:-b}` gives `["b"]`): BuildKit shares one word
//!   buffer between nesting levels, and this lexer reproduces that so both split alike.
//!
//! Non-ASCII names are classified with Rust's Unicode `Alphabetic`/`Numeric` properties where
//! Go uses the `Letter`/`Nd` categories; they differ only for rare characters (combining marks,
//! letter-like numerals). Nothing here panics, whatever the input; `${...}` nested more than 200
//! deep is rejected as a bad substitution instead of growing the stack without bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::ParseErrorKind;

/// Where the lexer reads variable values from.
///
/// Implemented for the usual maps and for lists of `(name, value)` pairs, where the *last*
/// occurrence of a name wins (as with `ENV` lines and Go's `EnvsFromSlice`).
pub trait Lookup {
    /// The value of `name`, or `None` if it is unset. An empty value is *set*.
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Lookup for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Lookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Lookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Lookup for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<T: Lookup + ?Sized> Lookup for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// The result of [`ShellLexer::expand_word`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expanded {
    /// The word with quotes removed and variables substituted.
    pub value: String,
    /// Variables the word referenced that were set (possibly to the empty string).
    pub used: BTreeSet<String>,
    /// Variables the word referenced that were unset.
    pub unset: BTreeSet<String>,
}

/// The shell-word lexer, configured once per recipe (the escape character comes from the
/// `# escape=` directive) and reusable for any number of words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellLexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_process_quotes: bool,
    skip_unset_env: bool,
}

impl Default for ShellLexer {
    fn default() -> Self {
        ShellLexer::new('\\')
    }
}

impl ShellLexer {
    /// A lexer whose escape character is `escape` (`\` by default; `` ` `` is the other value
    /// Dockerfiles allow, but any character works).
    pub fn new(escape: char) -> Self {
        ShellLexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output instead of removing them (BuildKit's `RawQuotes`).
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit's `RawEscapes`).
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit's `SkipProcessQuotes`).
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Leave references to unset variables as written, `$v`/`${v...}`, instead of expanding
    /// them (BuildKit's `SkipUnsetEnv`).
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Expands `word` as one word: quotes removed, escapes resolved, variables substituted from
    /// `env`; also reports which variables were referenced (BuildKit's `ProcessWord`).
    pub fn expand_word(&self, word: &str, env: &dyn Lookup) -> Result<Expanded, ParseErrorKind> {
        let mut run = Run::new(self, word, env, true);
        let raw = self.raw_escapes;
        let (value, _) = run.process_stop_on(None, raw)?;
        Ok(Expanded { value, used: run.used, unset: run.unset })
    }

    /// Expands `word` and splits it into words (BuildKit's `ProcessWords`): whitespace that is
    /// literal and unquoted, or that comes out of an unquoted `$` expansion, separates words;
    /// quoted and escaped whitespace does not. Empty words are dropped.
    pub fn expand_words(
        &self,
        word: &str,
        env: &dyn Lookup,
    ) -> Result<Vec<String>, ParseErrorKind> {
        let mut run = Run::new(self, word, env, false);
        let raw = self.raw_escapes;
        let (_, words) = run.process_stop_on(None, raw)?;
        Ok(words)
    }
}

/// Words being split, BuildKit's `wordsStruct`. The buffer of the current word lives in
/// [`Run::words_buf`], shared with nested levels, like BuildKit's.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, buf: &mut String, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(buf, ch);
        }
    }

    fn add_raw_char(&mut self, buf: &mut String, ch: char) {
        buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, buf: &mut String, s: &str) {
        for ch in s.chars() {
            self.add_char(buf, ch);
        }
    }

    fn add_raw_string(&mut self, buf: &mut String, s: &str) {
        buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
        }
        self.words
    }
}

/// One expansion in progress: the input as characters and a cursor into it.
struct Run<'a> {
    lx: &'a ShellLexer,
    src: Vec<char>,
    pos: usize,
    env: &'a dyn Lookup,
    capture: bool,
    used: BTreeSet<String>,
    unset: BTreeSet<String>,
    words_buf: String,
    /// How many `${...}` enclose the cursor.
    depth: usize,
}

/// Deepest `${...}` nesting accepted; deeper input is rejected rather than risking the stack.
const MAX_NESTING: usize = 200;

impl<'a> Run<'a> {
    fn new(lx: &'a ShellLexer, word: &str, env: &'a dyn Lookup, capture: bool) -> Self {
        let src: Vec<char> = word.chars().collect();
        // Go's text/scanner ignores a byte-order mark at the very start.
        let pos = usize::from(src.first() == Some(&'\u{feff}'));
        Run {
            lx,
            src,
            pos,
            env,
            capture,
            used: BTreeSet::new(),
            unset: BTreeSet::new(),
            words_buf: String::new(),
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn text_from(&self, start: usize) -> String {
        let end = self.pos.min(self.src.len());
        self.src.get(start..end).map(|s| s.iter().collect()).unwrap_or_default()
    }

    fn bad(&self, start: usize) -> ParseErrorKind {
        ParseErrorKind::BadSubstitution { text: self.text_from(start) }
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let v = self.env.lookup(name).map(str::to_owned);
        if self.capture {
            if v.is_some() {
                self.used.insert(name.to_owned());
            } else {
                self.unset.insert(name.to_owned());
            }
        }
        v
    }

    /// Reads up to `stop` (consumed) or the end; `stop == None` means "to the end".
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ParseErrorKind> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut words = Words::default();
        let quotes = !self.lx.skip_process_quotes;
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                let w = words.finish(&mut self.words_buf);
                return Ok((result, w));
            }
            match ch {
                '$' => {
                    let tmp = self.dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&mut self.words_buf, &tmp);
                }
                '<' => {
                    let tmp = self.possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                '\'' if quotes => {
                    let tmp = self.single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                '"' if quotes => {
                    let tmp = self.double_quote(raw_escapes)?;
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                _ => {
                    self.next();
                    let mut c = ch;
                    if c == self.lx.escape {
                        if raw_escapes {
                            words.add_raw_char(&mut self.words_buf, c);
                            result.push(c);
                        }
                        match self.next() {
                            // An escape at the very end is dropped.
                            None => break,
                            Some(n) => {
                                c = n;
                                words.add_raw_char(&mut self.words_buf, c);
                            }
                        }
                    } else {
                        words.add_char(&mut self.words_buf, c);
                    }
                    result.push(c);
                }
            }
        }
        match stop {
            // The caller turns this into a message about its own construct.
            Some(c) => Err(ParseErrorKind::BadSubstitution { text: format!("missing '{c}'") }),
            None => Ok((result, words.finish(&mut self.words_buf))),
        }
    }

    fn single_quote(&mut self) -> Result<String, ParseErrorKind> {
        let mut out = String::new();
        self.next();
        if self.lx.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.next() {
                None => return Err(ParseErrorKind::UnterminatedQuote { quote: '\'' }),
                Some('\'') => {
                    if self.lx.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self, raw_escapes: bool) -> Result<String, ParseErrorKind> {
        let mut out = String::new();
        self.next();
        if self.lx.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(ParseErrorKind::UnterminatedQuote { quote: '"' }),
                Some('"') => {
                    self.next();
                    if self.lx.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                }
                Some(_) => {
                    let Some(mut ch) = self.next() else { continue };
                    if ch == self.lx.escape {
                        if raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lx.escape => {
                                self.next();
                                ch = n;
                            }
                            // Any other escape stays as written (twice under raw escapes,
                            // as in BuildKit).
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.next();
        let mut out = "<<".to_owned();
        while let Some(c @ ('\t' | '\r' | ' ')) = self.peek() {
            out.push(c);
            self.next();
        }
        out
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|c| is_digit(*c)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                name.push(ch);
                return name;
            }
            if !(is_letter(ch) || is_digit(ch) || ch == '_') {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, ParseErrorKind> {
        let start = self.pos;
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lx.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None | Some('{' | '}' | ':') => {
                self.next();
                return Err(self.bad(start));
            }
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(first) = self.next() else {
            return Err(self.bad(start));
        };
        if self.depth >= MAX_NESTING {
            return Err(ParseErrorKind::BadSubstitution {
                text: format!("more than {MAX_NESTING} nested ${{...}}"),
            });
        }
        self.depth += 1;
        let result = self.substitution(start, name, first);
        self.depth -= 1;
        result
    }

    /// The rest of `${name...}` once `name` and the character after it were read.
    fn substitution(
        &mut self,
        start: usize,
        name: String,
        first: char,
    ) -> Result<String, ParseErrorKind> {
        match first {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lx.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => self.modifier(start, name, first),
            '/' => self.replace(start, name),
            _ => Err(self.bad(start)),
        }
    }

    /// `${name<op>word}` for the operators `- + ? # %` and their `:` forms.
    fn modifier(
        &mut self,
        start: usize,
        name: String,
        first: char,
    ) -> Result<String, ParseErrorKind> {
        let null_is_unset = first == ':';
        let mut op_text = first.to_string();
        let op = if null_is_unset {
            let op = self.next();
            op_text.extend(op);
            op
        } else {
            Some(first)
        };
        let raw = matches!(op, Some('#' | '%'));
        if null_is_unset && raw {
            return Err(self.bad(start));
        }
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) => return Err(if self.peek().is_none() { self.bad(start) } else { e }),
        };
        let value = self.get_env(&name);
        if value.is_none() && self.lx.skip_unset_env {
            return Ok(format!("${{{name}{op_text}{word}}}"));
        }
        let empty_or_unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            Some('-') => Ok(if empty_or_unset { word } else { value.unwrap_or_default() }),
            Some('+') => Ok(if empty_or_unset { String::new() } else { word }),
            Some('?') => match value {
                None => Err(ParseErrorKind::RequiredVariable { name, message: word }),
                Some(v) if null_is_unset && v.is_empty() => {
                    let message = if word.is_empty() {
                        "is not allowed to be empty".to_owned()
                    } else {
                        word
                    };
                    Err(ParseErrorKind::RequiredVariable { name, message })
                }
                Some(v) => Ok(v),
            },
            Some(c @ ('#' | '%')) => {
                let (greedy, pat) = match word.strip_prefix(c) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let value = value.unwrap_or_default();
                let bad = |_| ParseErrorKind::BadSubstitution { text: self.text_from(start) };
                if c == '#' {
                    trim_prefix(pat, &value, greedy).map_err(bad)
                } else {
                    trim_suffix(pat, &value, greedy).map_err(bad)
                }
            }
            _ => Err(self.bad(start)),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn replace(&mut self, start: usize, name: String) -> Result<String, ParseErrorKind> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((w, _)) => w,
            Err(e) => return Err(if self.peek().is_none() { self.bad(start) } else { e }),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((w, _)) => w,
            Err(e) => return Err(if self.peek().is_none() { self.bad(start) } else { e }),
        };
        let value = self.get_env(&name);
        if value.is_none() && self.lx.skip_unset_env {
            let slashes = if all { "//" } else { "/" };
            return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
        }
        let value: Vec<char> = value.unwrap_or_default().chars().collect();
        let glob = Glob::compile(&pattern, true).map_err(|_| self.bad(start))?;
        let mut memo = Memo::new(glob.segs.len(), value.len());
        if !all {
            return Ok(match glob.find(&value, 0, &mut memo) {
                Some((a, b)) => {
                    let mut out: String = value[..a].iter().collect();
                    out.push_str(&replacement);
                    out.extend(&value[b..]);
                    out
                }
                None => value.iter().collect(),
            });
        }
        // Go's Regexp.ReplaceAllString: empty matches right after a match are skipped and the
        // search always advances by at least one character.
        let mut out = String::new();
        let (mut last_end, mut search) = (0usize, 0usize);
        while search <= value.len() {
            let Some((a, b)) = glob.find(&value, search, &mut memo) else { break };
            out.extend(&value[last_end..a]);
            if b > last_end || a == 0 {
                expand_template(&mut out, &replacement, &value[a..b]);
            }
            last_end = b;
            search = if search < value.len() && search < b { b } else { search + 1 };
        }
        out.extend(value.get(last_end..).unwrap_or_default());
        Ok(out)
    }
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `Regexp.Expand` for a pattern without groups: `$$` is `$`, `$0`/`${0}` the match,
/// other well-formed references nothing, malformed ones a literal `$`.
fn expand_template(out: &mut String, template: &str, matched: &[char]) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (brace, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let name_len: usize = body
            .chars()
            .take_while(|c| c.is_alphabetic() || is_digit(*c) || *c == '_')
            .map(char::len_utf8)
            .sum();
        if name_len == 0 {
            out.push('$');
            continue;
        }
        let name = &body[..name_len];
        let after = &body[name_len..];
        let after = if brace {
            match after.strip_prefix('}') {
                Some(a) => a,
                None => {
                    out.push('$');
                    continue;
                }
            }
        } else {
            after
        };
        if name == "0" {
            out.extend(matched);
        }
        rest = after;
    }
    out.push_str(rest);
}

/// A compiled `${v#..}`/`${v%..}`/`${v/..}` pattern: fixed runs of characters (`None` is `?`)
/// separated by stars.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Fixed(Vec<Option<char>>),
    Star,
}

#[derive(Debug)]
struct Glob {
    segs: Vec<Seg>,
    greedy: bool,
}

/// A pattern BuildKit's `convertShellPatternToRegex` would reject.
#[derive(Debug)]
struct BadPattern;

impl Glob {
    fn compile(pattern: &str, greedy: bool) -> Result<Glob, BadPattern> {
        let mut segs: Vec<Seg> = Vec::new();
        let mut fixed: Vec<Option<char>> = Vec::new();
        let mut it = pattern.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '*' => {
                    if !fixed.is_empty() {
                        segs.push(Seg::Fixed(std::mem::take(&mut fixed)));
                    }
                    // `**` and `*` match the same strings with the same preference.
                    if segs.last() != Some(&Seg::Star) {
                        segs.push(Seg::Star);
                    }
                }
                '?' => fixed.push(None),
                '\\' => match it.peek() {
                    // `\}` and `\/` only protect the ${} syntax; the next round adds the char.
                    Some('}' | '/') => {}
                    Some(&n @ ('*' | '?' | '\\')) => {
                        it.next();
                        fixed.push(Some(n));
                    }
                    _ => return Err(BadPattern),
                },
                _ => fixed.push(Some(c)),
            }
        }
        if !fixed.is_empty() {
            segs.push(Seg::Fixed(fixed));
        }
        Ok(Glob { segs, greedy })
    }

    /// Leftmost-first match starting exactly at `start`, like an anchored Go regexp: returns
    /// the end of the match the regexp engine would report.
    fn match_at(&self, text: &[char], start: usize, memo: &mut Memo) -> Option<usize> {
        struct Frame {
            seg: usize,
            pos: usize,
            cur: usize,
            hi: usize,
        }
        let mut stack: Vec<Frame> = Vec::new();
        let (mut si, mut pos) = (0usize, start);
        loop {
            // Descend as far as possible.
            let failed = loop {
                if si == self.segs.len() {
                    return Some(pos);
                }
                if memo.failed(si, pos) {
                    break true;
                }
                match &self.segs[si] {
                    Seg::Fixed(f) => {
                        let ok = f.len() <= text.len().saturating_sub(pos)
                            && f.iter().zip(&text[pos..]).all(|(p, t)| match p {
                                Some(c) => c == t,
                                None => *t != '\n',
                            });
                        if !ok {
                            memo.set(si, pos);
                            break true;
                        }
                        pos += f.len();
                        si += 1;
                    }
                    Seg::Star => {
                        let hi = pos + text[pos..].iter().take_while(|c| **c != '\n').count();
                        let cur = if self.greedy { hi } else { pos };
                        stack.push(Frame { seg: si, pos, cur, hi });
                        si += 1;
                        pos = cur;
                    }
                }
            };
            debug_assert!(failed);
            // Backtrack to the most recent star with candidates left.
            loop {
                let fr = stack.last_mut()?;
                memo.set(fr.seg + 1, fr.cur);
                let next = if self.greedy {
                    (fr.cur > fr.pos).then(|| fr.cur - 1)
                } else {
                    (fr.cur < fr.hi).then(|| fr.cur + 1)
                };
                match next {
                    Some(n) => {
                        fr.cur = n;
                        si = fr.seg + 1;
                        pos = n;
                        break;
                    }
                    None => {
                        memo.set(fr.seg, fr.pos);
                        stack.pop();
                    }
                }
            }
        }
    }

    /// The leftmost match starting at or after `from`.
    fn find(&self, text: &[char], from: usize, memo: &mut Memo) -> Option<(usize, usize)> {
        (from..=text.len()).find_map(|s| self.match_at(text, s, memo).map(|e| (s, e)))
    }
}

/// States `(segment, position)` known not to lead to a match; keeps matching linear.
struct Memo {
    width: usize,
    bits: Vec<u64>,
}

impl Memo {
    fn new(segs: usize, len: usize) -> Self {
        let width = len + 1;
        let n = (segs + 1).saturating_mul(width);
        Memo { width, bits: vec![0; n.div_ceil(64)] }
    }

    fn failed(&self, seg: usize, pos: usize) -> bool {
        let i = seg * self.width + pos;
        self.bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, seg: usize, pos: usize) {
        let i = seg * self.width + pos;
        if let Some(w) = self.bits.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, BadPattern> {
    let glob = Glob::compile(pattern, greedy)?;
    let text: Vec<char> = value.chars().collect();
    let mut memo = Memo::new(glob.segs.len(), text.len());
    Ok(match glob.match_at(&text, 0, &mut memo) {
        Some(end) => text[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// Reverses a pattern keeping each `\x` pair in order, so `a\*c` becomes `c\*a`.
fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; p.len()];
    let last = p.len().saturating_sub(1);
    let mut i = 0;
    while i < p.len() {
        let o = last - i;
        if p[i] == '\\' && i != last {
            out[o - 1] = '\\';
            out[o] = p[i + 1];
            i += 2;
        } else {
            out[o] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, BadPattern> {
    // Shortest/longest rightmost match == leftmost match on the reversed strings.
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_pattern_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
        assert_eq!(reverse_pattern(""), "");
    }

    #[test]
    fn invalid_pattern_escapes() {
        for p in ["\\", "\\x", "\\\\\\"] {
            assert!(Glob::compile(p, true).is_err(), "{p}");
        }
        assert!(Glob::compile("\\*\\?\\\\", true).is_ok());
    }

    #[test]
    fn template_expansion() {
        let m: Vec<char> = "ab".chars().collect();
        let mut s = String::new();
        expand_template(&mut s, "<$0|${0}|$$|$1|$.|${x|$>", &m);
        assert_eq!(s, "<ab|ab|$||$.|${x|$>");
    }
}
