//! The first parsing layer: recipe text to [`Ast`], the way BuildKit's `parser` package does it.
//!
//! The recipe is read line by line. Lines at the very top that look like `# name=value` with a
//! known name are parser directives; the first line that is not one (a blank line, another
//! comment, an instruction) ends them for good. Every other comment line is dropped, but is
//! remembered as the "previous comment" of the next instruction. An instruction is one logical
//! line: physical lines whose last non-blank character is the escape character are joined,
//! the escape removed, while comment lines and blank lines inside such a continuation are
//! skipped (blank ones earn a warning, as in BuildKit). The first word of the logical line picks
//! the instruction; leading `--` words are its flags; the rest is broken up by that
//! instruction's argument grammar (JSON array or shell form, whitespace-separated words,
//! `key=value` pairs...). Finally, `RUN`, `COPY` and `ADD` in shell form may open heredocs
//! (`<<EOF`), whose bodies are the physical lines that follow, read in order.
//!
//! Everything here is a faithful model of BuildKit's behaviour, quirks included, because the
//! same Dockerfile must mean the same thing to both tools (it was checked by differential
//! fuzzing against BuildKit's Go parser). The deliberate differences: an unknown instruction,
//! also as an `ONBUILD` trigger, and a chained `ONBUILD ONBUILD` are rejected here instead of
//! one layer later (BuildKit only notices an unknown trigger when the image is used as a base),
//! yet only after the whole file has passed every check BuildKit's parser makes, so the error a
//! user sees first is the one BuildKit would show first; words are split on whole characters,
//! where BuildKit splits flags and `HEALTHCHECK` types on bytes (mangling non-ASCII text
//! there); a node's line is that of its keyword, where BuildKit counts from a lone escape line
//! that may precede it; and BuildKit's 64 KiB limit on a physical line is not imposed. The
//! algorithm is linear in the size of the input and never recurses on user input.

// `ParseError` is deliberately rich (kind, span, file, line text); it is built once per failed
// parse, so its size costs nothing that matters.

use crate::ast::{Ast, Directive, Heredoc, Node, Warning};
use crate::error::{ParseError, ParseErrorKind, Span};

/// How an instruction's arguments are broken up (BuildKit's dispatch table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grammar {
    /// JSON array (exec form), else the whole text as one argument.
    MaybeJson,
    /// JSON array, else whitespace-separated words.
    MaybeJsonList,
    /// Whitespace-separated words.
    Words,
    /// The whole text as one argument.
    Whole,
    /// `k=v ...` or the legacy `k v`, as `key, value, sep` triples.
    NameVal,
    /// Shell-quoted words, each `name` or `name=value`.
    NameOrNameVal,
    /// A type word, then like [`Grammar::MaybeJson`].
    Health,
    /// Another instruction (ONBUILD's trigger).
    SubCommand,
}

/// The 18 instructions, lower case, with their grammar.
const INSTRUCTIONS: [(&str, Grammar); 18] = [
    ("add", Grammar::MaybeJsonList),
    ("arg", Grammar::NameOrNameVal),
    ("cmd", Grammar::MaybeJson),
    ("copy", Grammar::MaybeJsonList),
    ("entrypoint", Grammar::MaybeJson),
    ("env", Grammar::NameVal),
    ("expose", Grammar::Words),
    ("from", Grammar::Words),
    ("healthcheck", Grammar::Health),
    ("label", Grammar::NameVal),
    ("maintainer", Grammar::Whole),
    ("onbuild", Grammar::SubCommand),
    ("run", Grammar::MaybeJson),
    ("shell", Grammar::MaybeJson),
    ("stopsignal", Grammar::Whole),
    ("user", Grammar::Whole),
    ("volume", Grammar::MaybeJsonList),
    ("workdir", Grammar::Whole),
];

/// Instructions that may open heredocs.
const HEREDOC_INSTRUCTIONS: [&str; 3] = ["add", "copy", "run"];

/// Go's `strings.ToLower` as far as it can turn a word into an ASCII keyword: besides ASCII,
/// only KELVIN SIGN and LATIN CAPITAL I WITH DOT lower-case to ASCII letters in Go.
fn fold_keyword(word: &str) -> String {
    word.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{0130}' => 'i',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn lookup(word: &str) -> Option<(&'static str, Grammar)> {
    let folded = fold_keyword(word);
    INSTRUCTIONS.iter().find(|(name, _)| *name == folded).copied()
}

/// BuildKit's `reWhitespace` class: `[\t\v\f\r ]`.
fn is_ascii_blank(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Where BuildKit's byte-wise scanners (flags, the `HEALTHCHECK` type) see a space: ASCII
/// white space, or a character whose UTF-8 form holds byte 0x85 or 0xA0 (NEL and NBSP in
/// Latin-1); BuildKit splits inside such a character, here the whole character is the space.
fn is_byte_space(c: char) -> bool {
    let mut utf8 = [0; 4];
    is_go_ascii_space(c)
        || (!c.is_ascii() && c.encode_utf8(&mut utf8).bytes().any(|b| b == 0x85 || b == 0xA0))
}

/// Go's `unicode.IsSpace` restricted to ASCII: `[\t\n\v\f\r ]`.
fn is_go_ascii_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Go RE2's `\s`: `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing line-continuation escape (and the blanks after it). Returns the line
/// and whether the logical line ends here. An escape preceded by another escape is literal.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some("") => ("", false),
        Some(before) if before.ends_with(escape) => (line, true),
        Some(before) => (before, false),
        None => (line, true),
    }
}

/// Splits on runs of [`is_ascii_blank`], like Go's `regexp.Split(s, n)` (`n < 0`: no limit).
fn split_blanks(s: &str, limit: Option<usize>) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = s;
    loop {
        if limit.is_some_and(|n| parts.len() + 1 >= n) {
            break;
        }
        let Some(start) = rest.find(is_ascii_blank) else { break };
        let after = &rest[start..];
        let run = after.len() - after.trim_start_matches(is_ascii_blank).len();
        parts.push(&rest[..start]);
        rest = &rest[start + run..];
    }
    parts.push(rest);
    parts
}

/// Maps byte offsets in a joined logical line back to physical line and column.
struct LineMap {
    /// `(offset in the joined line, line, column)` where each physical piece starts.
    pieces: Vec<(usize, usize, usize)>,
}

impl LineMap {
    fn span(&self, joined: &str, offset: usize) -> Span {
        let idx = self.pieces.partition_point(|p| p.0 <= offset).saturating_sub(1);
        match self.pieces.get(idx) {
            Some(&(start, line, column)) => {
                let chars = joined.get(start..offset).map_or(0, |s| s.chars().count());
                Span::new(line, column + chars)
            }
            None => Span::new(1, 1),
        }
    }
}

/// An instruction line cut into keyword, flags and arguments (BuildKit's `splitCommand`).
struct Split<'a> {
    keyword: &'a str,
    keyword_at: usize,
    flags: Vec<String>,
    args: &'a str,
    args_at: usize,
}

fn split_command(line: &str, escape: char) -> Split<'_> {
    let trimmed = line.trim_start();
    let lead = line.len() - trimmed.len();
    let trimmed = trimmed.trim_end();
    let (keyword, after) = match trimmed.find(is_ascii_blank) {
        Some(i) => {
            let after = trimmed[i..].trim_start_matches(is_ascii_blank);
            (&trimmed[..i], Some(after))
        }
        None => (trimmed, None),
    };
    let (flags, args, args_at) = match after {
        Some(after) => {
            let after_at = lead + (trimmed.len() - after.len());
            let (rest_at, flags) = extract_flags(after, escape);
            let rest = &after[rest_at..];
            let args = rest.trim();
            let args_at = after_at + rest_at + (rest.len() - rest.trim_start().len());
            (flags, args, args_at)
        }
        None => (Vec::new(), "", lead + trimmed.len()),
    };
    Split { keyword, keyword_at: lead, flags, args, args_at }
}

/// Where a word scanner is: between words, in a word, or inside a quote.
#[derive(PartialEq)]
enum Phase {
    Spaces,
    Word,
    Quote(char),
}

/// Leading `--` words (BuildKit's `extractBuilderFlags`). Returns where the rest starts.
fn extract_flags(line: &str, escape: char) -> (usize, Vec<String>) {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut chars = line.char_indices().peekable();
    while let Some((pos, ch)) = chars.next() {
        let next = chars.peek().map(|&(_, c)| c);
        if phase == Phase::Spaces {
            if is_go_ascii_space(ch) {
                continue;
            }
            if ch != '-' || next != Some('-') {
                return (pos, words);
            }
            phase = Phase::Word;
        }
        match phase {
            Phase::Word => {
                if is_byte_space(ch) {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (pos, words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    continue;
                }
                if ch == escape {
                    match chars.next() {
                        Some((_, c)) => word.push(c),
                        None => continue,
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                    continue;
                }
                if ch == escape {
                    match chars.next() {
                        Some((_, c)) => word.push(c),
                        None => phase = Phase::Word,
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Spaces => {}
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    (line.len(), words)
}

/// Shell-like words with quotes and escapes kept (BuildKit's `parseWords`).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut chars = rest.chars().peekable();
    while let Some(mut ch) = chars.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    match chars.next() {
                        Some(c) => {
                            word.push(ch);
                            ch = c;
                        }
                        None => continue,
                    }
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                }
                if ch == escape && quote != '\'' {
                    match chars.next() {
                        Some(c) => {
                            word.push(ch);
                            ch = c;
                        }
                        None => {
                            phase = Phase::Word;
                            continue;
                        }
                    }
                }
                word.push(ch);
            }
            Phase::Spaces => {}
        }
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Why an instruction's arguments were rejected.
enum ArgError {
    /// A JSON array holding something other than strings.
    NotStrings,
    /// `ENV name` / `LABEL name` with no value.
    MissingValue,
    /// A `k=v` list with a word lacking `=`.
    NoEquals(String),
}

/// Arguments broken up by a grammar: the values and whether they came from JSON.
type Args = (Vec<String>, bool);

fn apply_grammar(grammar: Grammar, rest: &str, escape: char) -> Result<Args, ArgError> {
    match grammar {
        Grammar::MaybeJson => maybe_json(rest),
        Grammar::MaybeJsonList => match parse_json_array(rest) {
            Json::Strings(v) => Ok((v, true)),
            Json::NotStrings => Err(ArgError::NotStrings),
            Json::Invalid => Ok((blank_words(rest), false)),
        },
        Grammar::Words => Ok((blank_words(rest), false)),
        Grammar::Whole | Grammar::SubCommand => Ok((whole(rest), false)),
        Grammar::NameVal => name_val(rest, escape).map(|v| (v, false)),
        Grammar::NameOrNameVal => Ok((parse_words(rest, escape), false)),
        Grammar::Health => {
            let end = rest.find(is_byte_space).unwrap_or(rest.len());
            if end == 0 {
                return Ok((Vec::new(), false));
            }
            let (kind, cmd) = rest.split_at(end);
            let mut cmd = cmd.chars();
            cmd.next();
            let cmd = cmd.as_str().trim_start_matches(is_go_ascii_space);
            let (mut cmd, json) = maybe_json(cmd)?;
            cmd.insert(0, kind.to_string());
            Ok((cmd, json))
        }
    }
}

fn whole(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        Vec::new()
    } else {
        vec![rest.to_string()]
    }
}

fn blank_words(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_blanks(rest, None).into_iter().map(str::to_string).collect()
}

fn maybe_json(rest: &str) -> Result<Args, ArgError> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json_array(rest) {
        Json::Strings(v) => Ok((v, true)),
        Json::NotStrings => Err(ArgError::NotStrings),
        Json::Invalid => Ok((vec![rest.to_string()], false)),
    }
}

fn name_val(rest: &str, escape: char) -> Result<Vec<String>, ArgError> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else { return Ok(Vec::new()) };
    if !first.contains('=') {
        let parts = split_blanks(rest, Some(2));
        return match parts.as_slice() {
            [key, value] => Ok(vec![key.to_string(), value.to_string(), String::new()]),
            _ => Err(ArgError::MissingValue),
        };
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ArgError::NoEquals(word));
        };
        out.extend([key.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// What Go's `json.Unmarshal` into `[]any` makes of an argument starting with `[`.
enum Json {
    /// A valid array of strings.
    Strings(Vec<String>),
    /// Valid JSON, but some element is not a string: BuildKit rejects the instruction.
    NotStrings,
    /// Not JSON (or a number Go cannot hold): BuildKit falls back to the shell form.
    Invalid,
}

/// Go's `encoding/json` nesting limit.
const JSON_MAX_DEPTH: usize = 10_000;

fn parse_json_array(text: &str) -> Json {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return Json::Invalid;
    }
    json_scan(text).unwrap_or(Json::Invalid)
}

fn skip_json_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Validates a whole JSON document iteratively, collecting the top array's string elements.
/// `None` means Go would report an error other than "not an array of strings".
fn json_scan(text: &str) -> Option<Json> {
    #[derive(Clone, Copy, PartialEq)]
    enum Want {
        Value,
        ValueOrClose,
        CommaOrClose,
        Key,
        KeyOrClose,
        Colon,
    }
    let b = text.as_bytes();
    let mut stack: Vec<u8> = Vec::new();
    let mut strings = Vec::new();
    let mut all_strings = true;
    let mut want = Want::Value;
    let mut i = 0;
    loop {
        i = skip_json_ws(b, i);
        let c = *b.get(i)?;
        let mut done_value = false;
        match want {
            Want::Value | Want::ValueOrClose => {
                let top_element = stack.len() == 1;
                if want == Want::ValueOrClose && c == b']' {
                    stack.pop();
                    i += 1;
                    done_value = true;
                } else {
                    match c {
                        b'[' | b'{' => {
                            stack.push(c);
                            if stack.len() > JSON_MAX_DEPTH {
                                return None;
                            }
                            all_strings &= !top_element;
                            want = if c == b'[' { Want::ValueOrClose } else { Want::KeyOrClose };
                            i += 1;
                        }
                        b'"' => {
                            let (s, next) = json_string(text, i)?;
                            if top_element {
                                strings.push(s);
                            }
                            i = next;
                            done_value = true;
                        }
                        b't' | b'f' | b'n' => {
                            let lit: &[u8] = match c {
                                b't' => b"true",
                                b'f' => b"false",
                                _ => b"null",
                            };
                            if !b[i..].starts_with(lit) {
                                return None;
                            }
                            all_strings &= !top_element;
                            i += lit.len();
                            done_value = true;
                        }
                        b'-' | b'0'..=b'9' => {
                            i = json_number(text, i)?;
                            all_strings &= !top_element;
                            done_value = true;
                        }
                        _ => return None,
                    }
                }
            }
            Want::CommaOrClose => {
                let open = *stack.last()?;
                match (open, c) {
                    (b'[', b',') => want = Want::Value,
                    (b'{', b',') => want = Want::Key,
                    (b'[', b']') | (b'{', b'}') => {
                        stack.pop();
                        done_value = true;
                    }
                    _ => return None,
                }
                i += 1;
            }
            Want::Key | Want::KeyOrClose => {
                if want == Want::KeyOrClose && c == b'}' {
                    stack.pop();
                    i += 1;
                    done_value = true;
                } else if c == b'"' {
                    i = json_string(text, i)?.1;
                    want = Want::Colon;
                } else {
                    return None;
                }
            }
            Want::Colon => {
                if c != b':' {
                    return None;
                }
                i += 1;
                want = Want::Value;
            }
        }
        if done_value {
            if stack.is_empty() {
                return (skip_json_ws(b, i) == b.len()).then_some(if all_strings {
                    Json::Strings(strings)
                } else {
                    Json::NotStrings
                });
            }
            want = Want::CommaOrClose;
        }
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    if !s.bytes().all(|d| d.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// A JSON string starting at `start` (the quote): its decoded value and the index after it.
/// Lone surrogates decode to U+FFFD, as in Go.
fn json_string(text: &str, start: usize) -> Option<(String, usize)> {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let c = *b.get(i)?;
        match c {
            b'"' => return Some((out, i + 1)),
            b'\\' => {
                let e = *b.get(i + 1)?;
                i += 2;
                match e {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'b' => out.push('\x08'),
                    b'f' => out.push('\x0c'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let unit = hex4(b, i)?;
                        i += 4;
                        if (0xD800..0xDC00).contains(&unit) && b.get(i..i + 2) == Some(b"\\u") {
                            if let Some(low) =
                                hex4(b, i + 2).filter(|l| (0xDC00..0xE000).contains(l))
                            {
                                let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                                i += 6;
                                continue;
                            }
                        }
                        out.push(char::from_u32(unit).unwrap_or('\u{FFFD}'));
                    }
                    _ => return None,
                }
            }
            0..=0x1f => return None,
            _ => {
                let ch = text.get(i..)?.chars().next()?;
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
}

/// A JSON number starting at `start`; the index after it. `None` if malformed, or if Go could
/// not hold it in a float64 (its `Unmarshal` then fails, which BuildKit treats as "not JSON").
fn json_number(text: &str, start: usize) -> Option<usize> {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i)?,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    let value: f64 = text.get(start..i)?.parse().ok()?;
    value.is_finite().then_some(i)
}

/// What the heredoc lexer could not read.
enum LexError {
    /// A quote was not closed.
    Quote(char),
    /// A `${...}` was malformed.
    Substitution,
}

/// A word found by [`ShellLexer`], with the byte offset where it started.
type LexWord = (String, usize);

/// The subset of BuildKit's shell lexer its parser uses to find heredocs: word splitting with
/// quotes, backslash escapes and `$` references kept literally (no variables are set), and
/// `<<` glued to the word after it. Always uses `\` as escape, like BuildKit here.
struct ShellLexer<'a> {
    src: &'a str,
    pos: usize,
    raw_quotes: bool,
    /// Shared by nested `${...}` reads, as in BuildKit (a quirk that drops a partial word).
    buf: String,
    buf_start: usize,
}

struct WordList {
    words: Vec<LexWord>,
    in_word: bool,
}

impl<'a> ShellLexer<'a> {
    fn new(src: &'a str, raw_quotes: bool) -> Self {
        // Go's text/scanner skips a byte-order mark at the start.
        let pos = if src.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
        ShellLexer { src, pos, raw_quotes, buf: String::new(), buf_start: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn words(mut self, raw_escapes: bool) -> Result<Vec<LexWord>, LexError> {
        self.read_until(None, raw_escapes).map(|(_, words)| words)
    }

    fn add_raw_char(&mut self, list: &mut WordList, c: char, at: usize) {
        if self.buf.is_empty() {
            self.buf_start = at;
        }
        self.buf.push(c);
        list.in_word = true;
    }

    fn add_char(&mut self, list: &mut WordList, c: char, at: usize) {
        if c.is_whitespace() {
            if list.in_word && !self.buf.is_empty() {
                list.words.push((std::mem::take(&mut self.buf), self.buf_start));
                list.in_word = false;
            }
        } else {
            self.add_raw_char(list, c, at);
        }
    }

    fn add_raw_str(&mut self, list: &mut WordList, s: &str, at: usize) {
        if self.buf.is_empty() {
            self.buf_start = at;
        }
        self.buf.push_str(s);
        list.in_word = true;
    }

    fn finish(&mut self, list: &mut WordList) {
        if !self.buf.is_empty() {
            list.words.push((std::mem::take(&mut self.buf), self.buf_start));
            list.in_word = false;
        }
    }

    fn read_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<LexWord>), LexError> {
        let mut result = String::new();
        self.buf.clear();
        let mut list = WordList { words: Vec::new(), in_word: false };
        while let Some(ch) = self.peek() {
            let at = self.pos;
            if Some(ch) == stop {
                self.bump();
                self.finish(&mut list);
                return Ok((result, list.words));
            }
            match ch {
                '$' => {
                    let text = self.dollar()?;
                    result.push_str(&text);
                    for c in text.chars() {
                        self.add_char(&mut list, c, at);
                    }
                }
                '<' | '\'' | '"' => {
                    let text = match ch {
                        '<' => self.possible_heredoc(),
                        '\'' => self.single_quote()?,
                        _ => self.double_quote(raw_escapes)?,
                    };
                    result.push_str(&text);
                    self.add_raw_str(&mut list, &text, at);
                }
                _ => {
                    self.bump();
                    if ch == '\\' {
                        if raw_escapes {
                            self.add_raw_char(&mut list, ch, at);
                            result.push(ch);
                        }
                        let Some(next) = self.bump() else { break };
                        self.add_raw_char(&mut list, next, at);
                        result.push(next);
                    } else {
                        self.add_char(&mut list, ch, at);
                        result.push(ch);
                    }
                }
            }
        }
        if stop.is_some() {
            return Err(LexError::Substitution);
        }
        self.finish(&mut list);
        Ok((result, list.words))
    }

    fn single_quote(&mut self) -> Result<String, LexError> {
        let mut out = String::new();
        self.bump();
        if self.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.bump() {
                None => return Err(LexError::Quote('\'')),
                Some('\'') => {
                    if self.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self, raw_escapes: bool) -> Result<String, LexError> {
        let mut out = String::new();
        self.bump();
        if self.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(LexError::Quote('"')),
                Some('"') => {
                    self.bump();
                    if self.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let text = self.dollar()?;
                    out.push_str(&text);
                }
                Some(_) => {
                    let mut ch = self.bump().unwrap_or('\\');
                    if ch == '\\' {
                        if raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some('"' | '$' | '\\') => ch = self.bump().unwrap_or('\\'),
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn possible_heredoc(&mut self) -> String {
        self.bump();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.bump();
        let mut out = String::from("<<");
        while let Some(c @ ('\t' | '\r' | ' ')) = self.peek() {
            out.push(c);
            self.bump();
        }
        out
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.bump();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.bump();
                return c.to_string();
            }
            if !c.is_alphanumeric() && c != '_' {
                break;
            }
            name.push(c);
            self.bump();
        }
        name
    }

    /// A `$` reference; nothing is set, so it always stays as written.
    fn dollar(&mut self) -> Result<String, LexError> {
        self.bump();
        if self.peek() != Some('{') {
            let name = self.name();
            return Ok(format!("${name}"));
        }
        self.bump();
        if matches!(self.peek(), None | Some('{' | '}' | ':')) {
            return Err(LexError::Substitution);
        }
        let name = self.name();
        match self.bump() {
            Some('}') => Ok(format!("${{{name}}}")),
            Some(c @ (':' | '+' | '-' | '?' | '#' | '%')) => {
                let mut ops = c.to_string();
                let mut op = Some(c);
                if c == ':' {
                    op = self.bump();
                    ops.push(op.unwrap_or('\u{FFFD}'));
                }
                let raw = matches!(op, Some('#' | '%'));
                if c == ':' && raw {
                    return Err(LexError::Substitution);
                }
                let (word, _) = self.read_until(Some('}'), raw)?;
                Ok(format!("${{{name}{ops}{word}}}"))
            }
            Some('/') => {
                if self.peek() == Some('/') {
                    self.bump();
                }
                let (pattern, _) = self.read_until(Some('/'), true)?;
                let (replacement, _) = self.read_until(Some('}'), true)?;
                Ok(format!("${{{name}/{pattern}/{replacement}}}"))
            }
            _ => Err(LexError::Substitution),
        }
    }
}

/// A heredoc opener found on an instruction line, before its body is read.
struct HeredocHead {
    name: String,
    expand: bool,
    chomp: bool,
    /// Byte offset of the `<<` word in the line.
    at: usize,
}

/// The heredoc a word opens, if any (`[fd]<<[-][blanks]word`, where word has no `<`).
fn heredoc_of_word(word: &str, at: usize) -> Result<Option<HeredocHead>, ParseErrorKind> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = rest.strip_prefix("<<") else { return Ok(None) };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_re_space);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let lex_error = |e: LexError| match e {
        LexError::Quote(quote) => ParseErrorKind::UnterminatedQuote { quote },
        LexError::Substitution => ParseErrorKind::BadSubstitution { text: rest.to_string() },
    };
    let cooked = ShellLexer::new(rest, false).words(false).map_err(lex_error)?;
    let [(name, _)] = cooked.as_slice() else { return Ok(None) };
    let raw = ShellLexer::new(rest, true).words(false).map_err(lex_error)?;
    let [(raw_name, _)] = raw.as_slice() else {
        return Err(ParseErrorKind::InvalidArgument {
            instruction: "heredoc".to_string(),
            reason: format!("cannot read the heredoc delimiter {rest:?}"),
        });
    };
    let quotes = |s: &str| s.chars().filter(|c| matches!(c, '\'' | '"')).count();
    Ok(Some(HeredocHead {
        name: name.clone(),
        expand: quotes(name) == quotes(raw_name),
        chomp,
        at,
    }))
}

/// Every heredoc opened on `line`. A line the lexer cannot read opens none, as in BuildKit.
fn heredocs_of_line(line: &str) -> Result<Vec<HeredocHead>, ParseErrorKind> {
    let words = ShellLexer::new(line, true).words(true).unwrap_or_default();
    let mut heads = Vec::new();
    for (word, at) in words {
        if let Some(head) = heredoc_of_word(&word, at)? {
            heads.push(head);
        }
    }
    Ok(heads)
}

/// Value of a `# name=value` line (already left-trimmed) if it is a known directive.
fn directive_of(line: &str) -> Option<(String, String)> {
    let s = line.strip_prefix('#')?.trim_start();
    let name_len = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(s.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let after = s[name_len..].trim_start_matches(is_re_space).strip_prefix('=')?;
    let value = match after.trim_start_matches(is_re_space) {
        "" => after.chars().last()?.to_string(),
        v => v.trim_end_matches(is_re_space).to_string(),
    };
    let name = s[..name_len].to_ascii_lowercase();
    matches!(name.as_str(), "syntax" | "escape" | "check").then_some((name, value))
}

/// The line-by-line reader and what it has found so far.
struct Parser<'a> {
    lines: Vec<&'a str>,
    next: usize,
    escape: char,
    directives_done: bool,
    directives: Vec<Directive>,
    nodes: Vec<Node>,
    warnings: Vec<Warning>,
    /// First error BuildKit would only report after its parser (unknown instruction...).
    deferred: Option<ParseError>,
}

pub(crate) fn parse(src: &str) -> Result<Ast, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut parser = Parser {
        lines: src.split_inclusive('\n').collect(),
        next: 0,
        escape: '\\',
        directives_done: false,
        directives: Vec::new(),
        nodes: Vec::new(),
        warnings: Vec::new(),
        deferred: None,
    };
    parser.run()?;
    if let Some(err) = parser.deferred {
        return Err(err);
    }
    if parser.nodes.is_empty() {
        return Err(ParseError::new(ParseErrorKind::NoStages, Span::default()));
    }
    Ok(Ast {
        directives: parser.directives,
        escape: parser.escape,
        nodes: parser.nodes,
        warnings: parser.warnings,
    })
}

impl Parser<'_> {
    fn defer(&mut self, err: ParseError) {
        if self.deferred.is_none() {
            self.deferred = Some(err);
        }
    }

    fn run(&mut self) -> Result<(), ParseError> {
        let mut comments: Vec<String> = Vec::new();
        while self.next < self.lines.len() {
            let line_no = self.next + 1;
            let raw = self.lines[self.next];
            self.next += 1;
            if is_comment(raw) {
                let mut chars = raw.chars();
                chars.next();
                let comment = chars.as_str().trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_string());
                }
            }
            let unterminated = trim_newline(raw);
            let body = unterminated.trim_start();
            let lead = unterminated[..unterminated.len() - body.len()].chars().count();
            if !self.directives_done {
                if self.directive(body, Span::new(line_no, lead + 1))? {
                    comments.pop();
                } else {
                    self.directives_done = true;
                }
            }
            let content = if is_comment(body) { "" } else { body };
            let (first, mut ended) = trim_continuation(content, self.escape);
            if ended && first.is_empty() {
                continue;
            }
            let mut joined = first.to_string();
            let mut map = LineMap { pieces: vec![(0, line_no, lead + 1)] };
            let mut current = line_no;
            let mut empty_continuation = false;
            while !ended && self.next < self.lines.len() {
                let raw = self.lines[self.next];
                self.next += 1;
                current = self.next;
                if is_comment(raw) {
                    continue;
                }
                let line = trim_newline(raw);
                if line.trim_start().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (piece, end) = trim_continuation(line, self.escape);
                ended = end;
                map.pieces.push((joined.len(), current, 1));
                joined.push_str(piece);
            }
            if empty_continuation {
                self.warnings.push(Warning {
                    span: Span::new(current, 1),
                    message: format!("Empty continuation line found in: {joined}"),
                });
            }
            let node = self.node_of_line(&joined, &map, std::mem::take(&mut comments), current)?;
            if let Some(mut node) = node {
                self.read_heredocs(&mut node, &joined, &map)?;
                self.nodes.push(node);
            }
        }
        Ok(())
    }

    /// Handles a possible directive line. Returns whether it was one.
    fn directive(&mut self, body: &str, span: Span) -> Result<bool, ParseError> {
        let Some((name, value)) = directive_of(body) else { return Ok(false) };
        let len = body.chars().count();
        let invalid = |reason: String| {
            ParseError::new(ParseErrorKind::InvalidDirective { name: name.clone(), reason }, span)
                .with_len(len)
        };
        if self.directives.iter().any(|d| d.name == name) {
            return Err(invalid(format!("only one {name} parser directive can be used")));
        }
        if name == "escape" {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(invalid(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    )))
                }
            };
        }
        self.directives.push(Directive { name, value, span });
        Ok(true)
    }

    /// Builds the node for one logical line; `None` when an error was deferred instead.
    fn node_of_line(
        &mut self,
        line: &str,
        map: &LineMap,
        comments: Vec<String>,
        end_line: usize,
    ) -> Result<Option<Node>, ParseError> {
        let split = split_command(line, self.escape);
        let span = map.span(line, split.keyword_at);
        let Some((keyword, grammar)) = lookup(split.keyword) else {
            let name = split.keyword.to_string();
            let len = name.chars().count();
            self.defer(
                ParseError::new(ParseErrorKind::UnknownInstruction { name }, span).with_len(len),
            );
            return Ok(None);
        };
        let mut node = Node {
            keyword: keyword.to_string(),
            flags: split.flags,
            args: Vec::new(),
            json: false,
            original: line.to_string(),
            heredocs: Vec::new(),
            child: None,
            span,
            end_line,
            comments,
        };
        if grammar != Grammar::SubCommand {
            let (args, json) =
                self.arguments(grammar, line, split.args, split.args_at, &node, map)?;
            node.args = args;
            node.json = json;
            return Ok(Some(node));
        }
        if split.args.is_empty() {
            return Ok(Some(node));
        }
        // ONBUILD: the trigger is parsed like a line of its own. Chaining is refused right
        // here (BuildKit does it one layer later), so the tree is never deeper than two.
        let base = split.args_at;
        let inner = split_command(split.args, self.escape);
        let inner_span = map.span(line, base + inner.keyword_at);
        let inner_len = inner.keyword.chars().count().max(1);
        let (inner_keyword, inner_grammar) = match lookup(inner.keyword) {
            Some((_, Grammar::SubCommand)) => {
                self.defer(
                    ParseError::new(
                        ParseErrorKind::InvalidOnbuild { trigger: "ONBUILD".to_string() },
                        inner_span,
                    )
                    .with_len(inner_len),
                );
                return Ok(None);
            }
            Some(found) => found,
            None => {
                let name = inner.keyword.to_string();
                self.defer(
                    ParseError::new(ParseErrorKind::UnknownInstruction { name }, inner_span)
                        .with_len(inner_len),
                );
                return Ok(None);
            }
        };
        let mut child = Node {
            keyword: inner_keyword.to_string(),
            flags: inner.flags,
            args: Vec::new(),
            json: false,
            original: split.args.to_string(),
            heredocs: Vec::new(),
            child: None,
            span: inner_span,
            end_line,
            comments: Vec::new(),
        };
        let (args, json) =
            self.arguments(inner_grammar, line, inner.args, base + inner.args_at, &child, map)?;
        child.args = args;
        child.json = json;
        node.child = Some(Box::new(child));
        Ok(Some(node))
    }

    fn arguments(
        &self,
        grammar: Grammar,
        line: &str,
        args: &str,
        args_at: usize,
        node: &Node,
        map: &LineMap,
    ) -> Result<Args, ParseError> {
        let instruction = node.keyword.to_ascii_uppercase();
        apply_grammar(grammar, args, self.escape).map_err(|e| {
            let kind = match e {
                ArgError::NotStrings => ParseErrorKind::InvalidJson { instruction },
                ArgError::MissingValue => ParseErrorKind::MissingArguments {
                    instruction,
                    expected: "two arguments: a name and a value".to_string(),
                },
                ArgError::NoEquals(word) => ParseErrorKind::InvalidArgument {
                    instruction,
                    reason: format!(
                        "syntax error - can't find = in {word:?}. Must be of the form: name=value"
                    ),
                },
            };
            ParseError::new(kind, map.span(line, args_at)).with_len(args.chars().count())
        })
    }

    /// Reads the bodies of the heredocs the node's line opens, in order.
    fn read_heredocs(
        &mut self,
        node: &mut Node,
        line: &str,
        map: &LineMap,
    ) -> Result<(), ParseError> {
        let target = node.child.as_deref().unwrap_or(&*node);
        let allowed = HEREDOC_INSTRUCTIONS.contains(&target.keyword.as_str()) && !target.json;
        if !allowed || !line.contains("<<") {
            return Ok(());
        }
        let heads = heredocs_of_line(line)
            .map_err(|kind| ParseError::new(kind, node.span).with_len(node.keyword.len()))?;
        for head in heads {
            let mut content = String::new();
            let mut terminated = false;
            while self.next < self.lines.len() {
                let raw = self.lines[self.next];
                self.next += 1;
                node.end_line = self.next;
                let mut candidate = trim_newline(raw);
                if head.chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == head.name {
                    terminated = true;
                    break;
                }
                content.push_str(if head.chomp { raw.trim_start_matches('\t') } else { raw });
            }
            if !terminated {
                let span = map.span(line, head.at);
                let len = line
                    .get(head.at..)
                    .map_or(1, |s| s.chars().take_while(|c| !c.is_whitespace()).count());
                return Err(ParseError::new(
                    ParseErrorKind::UnterminatedHeredoc { delimiter: head.name },
                    span,
                )
                .with_len(len));
            }
            node.heredocs.push(Heredoc {
                name: head.name,
                content,
                expand: head.expand,
                chomp: head.chomp,
            });
        }
        if let Some(child) = node.child.as_deref_mut() {
            child.end_line = node.end_line;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Ast {
        match parse(src) {
            Ok(ast) => ast,
            Err(err) => panic!("{src:?} failed: {err}"),
        }
    }

    fn err(src: &str) -> ParseError {
        match parse(src) {
            Ok(ast) => panic!("{src:?} parsed: {ast:?}"),
            Err(err) => err,
        }
    }

    fn args(node: &Node) -> Vec<&str> {
        node.args.iter().map(String::as_str).collect()
    }

    fn heredoc(name: &str, content: &str, expand: bool, chomp: bool) -> Heredoc {
        Heredoc { name: name.into(), content: content.into(), expand, chomp }
    }

    #[test]
    fn heredoc_plain_and_lines() {
        let ast = ok("FROM a\nRUN <<EOF\necho hi\n  two\nEOF\nRUN b\n");
        let run = &ast.nodes[1];
        assert_eq!(run.heredocs, vec![heredoc("EOF", "echo hi\n  two\n", true, false)]);
        assert_eq!((run.span.line, run.end_line), (2, 5));
        assert_eq!(args(run), ["<<EOF"]);
        assert_eq!(ast.nodes[2].span.line, 6);
    }

    #[test]
    fn heredoc_chomp_strips_tabs_and_matches_indented_delimiter() {
        let ast = ok("FROM a\nRUN <<-EOF\n\tone\n\t\ttwo\n  three\n\tEOF\n");
        assert_eq!(ast.nodes[1].heredocs, vec![heredoc("EOF", "one\ntwo\n  three\n", true, true)]);
    }

    #[test]
    fn heredoc_quoted_delimiters_do_not_expand() {
        for (line, name) in [
            ("RUN <<\"EOF\"", "EOF"),
            ("RUN <<'EOF'", "EOF"),
            ("RUN <<E\"O\"F", "EOF"),
            ("RUN <<-'EOF'", "EOF"),
        ] {
            let ast = ok(&format!("FROM a\n{line}\n$x\n{name}\n"));
            let doc = &ast.nodes[1].heredocs[0];
            assert_eq!((doc.name.as_str(), doc.expand), (name, false), "{line}");
        }
        let ast = ok("FROM a\nRUN <<eo\\'f\nx\neo'f\n");
        assert_eq!(ast.nodes[1].heredocs, vec![heredoc("eo'f", "x\n", true, false)]);
    }

    #[test]
    fn several_heredocs_read_in_order() {
        let ast = ok("FROM a\nCOPY <<X 3<<Y /dest\nY\nX\nX\nY\nRUN c\n");
        let copy = &ast.nodes[1];
        assert_eq!(
            copy.heredocs,
            vec![heredoc("X", "Y\n", true, false), heredoc("Y", "X\n", true, false)]
        );
        assert_eq!(args(copy), ["<<X", "3<<Y", "/dest"]);
        assert_eq!(copy.end_line, 6);
        assert_eq!(ast.nodes[2].span.line, 7);
    }

    #[test]
    fn heredoc_only_where_allowed() {
        // Exec form, quoted text and other instructions open no heredoc.
        let ast = ok("FROM a\nRUN [\"<<EOF\"]\nRUN echo \"<<EOF\"\nADD <<EOF /x\nhi\nEOF\n");
        assert!(ast.nodes[1].heredocs.is_empty());
        assert!(ast.nodes[2].heredocs.is_empty());
        assert_eq!(ast.nodes[3].heredocs.len(), 1);
        // USER takes no heredoc, so the next line is an instruction of its own.
        let e = err("FROM a\nUSER <<EOF\nEOF\n");
        assert_eq!(e.kind, ParseErrorKind::UnknownInstruction { name: "EOF".into() });
        assert_eq!(e.span, Span::new(3, 1));
    }

    #[test]
    fn onbuild_heredoc_attaches_to_the_onbuild_node() {
        let ast = ok("FROM a\nONBUILD RUN <<EOF\nhi\nEOF\n");
        let onbuild = &ast.nodes[1];
        assert_eq!(onbuild.heredocs, vec![heredoc("EOF", "hi\n", true, false)]);
        let child = onbuild.child.as_deref().unwrap_or_else(|| panic!("no trigger"));
        assert_eq!((child.keyword.as_str(), child.span), ("run", Span::new(2, 9)));
        assert_eq!((onbuild.end_line, child.end_line), (4, 4));
    }

    #[test]
    fn unterminated_heredoc() {
        let e = err("FROM a\nRUN cat <<EOF >x\nline\n");
        assert_eq!(e.kind, ParseErrorKind::UnterminatedHeredoc { delimiter: "EOF".into() });
        assert_eq!((e.span, e.len), (Span::new(2, 9), 5));
    }

    #[test]
    fn crlf_line_endings() {
        let ast = ok("FROM a\r\nRUN echo \\\r\n  b\r\nCOPY <<EOF /x\r\nhi\r\nEOF\r\n");
        assert_eq!(args(&ast.nodes[1]), ["echo   b"]);
        assert_eq!(ast.nodes[2].heredocs[0].content, "hi\r\n");
        assert_eq!(ast.nodes[2].end_line, 6);
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let ast = ok("\u{feff}# escape=`\nFROM a\nRUN x `\n y\n");
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.nodes[0].span, Span::new(2, 1));
        assert_eq!(args(&ast.nodes[1]), ["x  y"]);
    }

    #[test]
    fn escape_directive_backtick() {
        let ast = ok("# Escape = `\n\nFROM a\nRUN dir c:\\ `\n  && echo \\\nWORKDIR c:\\w\n");
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.directives.len(), 1);
        assert_eq!(
            (ast.directives[0].name.as_str(), ast.directives[0].value.as_str()),
            ("escape", "`")
        );
        assert_eq!(args(&ast.nodes[1]), ["dir c:\\   && echo \\"]);
        assert_eq!(args(&ast.nodes[2]), ["c:\\w"]);
    }

    #[test]
    fn directives_rules() {
        let ast = ok("# syntax=docker/dockerfile:1\n#CHECK = skip=all\n# escape=\\\nFROM a\n");
        let found: Vec<(&str, &str)> =
            ast.directives.iter().map(|d| (d.name.as_str(), d.value.as_str())).collect();
        assert_eq!(
            found,
            [("syntax", "docker/dockerfile:1"), ("check", "skip=all"), ("escape", "\\")]
        );
        assert!(ast.nodes[0].comments.is_empty());

        let e = err("# escape=`\n# ESCAPE=\\\nFROM a\n");
        assert!(
            matches!(e.kind, ParseErrorKind::InvalidDirective { ref name, .. } if name == "escape")
        );
        assert_eq!(e.span, Span::new(2, 1));

        let e = err("# escape=x\nFROM a\n");
        assert!(matches!(e.kind, ParseErrorKind::InvalidDirective { .. }));
        assert_eq!(e.span, Span::new(1, 1));
    }

    #[test]
    fn directive_after_instruction_or_comment_is_a_comment() {
        let ast = ok("FROM a\n# escape=`\nRUN x \\\n y\n");
        assert_eq!(ast.escape, '\\');
        assert!(ast.directives.is_empty());
        assert_eq!(ast.nodes[1].comments, ["escape=`"]);
        assert_eq!(args(&ast.nodes[1]), ["x  y"]);

        let ast = ok("# hello\n# escape=`\nFROM a\n");
        assert_eq!((ast.escape, ast.directives.len()), ('\\', 0));
        let ast = ok("\n# escape=`\nFROM a\n");
        assert_eq!((ast.escape, ast.directives.len()), ('\\', 0));
    }

    #[test]
    fn unknown_instruction_span_on_line_3() {
        let e = err("FROM a\nRUN ok\n   FRUM b c\n");
        assert_eq!(e.kind, ParseErrorKind::UnknownInstruction { name: "FRUM".into() });
        assert_eq!((e.span, e.len), (Span::new(3, 4), 4));
    }

    #[test]
    fn parser_errors_come_before_unknown_instructions() {
        let e = err("FROM a\nFRUM b\nENV x\n");
        assert!(matches!(e.kind, ParseErrorKind::MissingArguments { .. }), "{e:?}");
        assert_eq!(e.span, Span::new(3, 5));
    }

    #[test]
    fn onbuild_chaining_and_unknown_triggers_are_refused() {
        let e = err("FROM a\nONBUILD ONBUILD RUN x\n");
        assert_eq!(e.kind, ParseErrorKind::InvalidOnbuild { trigger: "ONBUILD".into() });
        assert_eq!(e.span, Span::new(2, 9));
        let e = err("FROM a\nONBUILD NOPE x\n");
        assert_eq!(e.kind, ParseErrorKind::UnknownInstruction { name: "NOPE".into() });
    }

    #[test]
    fn empty_continuation_lines_warn_and_comments_are_skipped() {
        let ast = ok("FROM a\nRUN a \\\n\n  b \\\n# c\n  d\n");
        assert_eq!(args(&ast.nodes[1]), ["a   b   d"]);
        assert_eq!(ast.warnings.len(), 1);
        assert_eq!(ast.warnings[0].span.line, 6);
        assert_eq!(ast.nodes[1].end_line, 6);
    }

    #[test]
    fn trailing_escape_at_eof() {
        let ast = ok("FROM a\nRUN x \\");
        assert_eq!(args(&ast.nodes[1]), ["x"]);
        assert_eq!(ast.nodes[1].original, "RUN x ");
    }

    #[test]
    fn grammars() {
        let ast = ok(concat!(
            "FROM --platform=$P img AS b\n",
            "ENV a=1 b=\"x y\" c\\ d=e\n",
            "LABEL k v w\n",
            "ARG x y=\"1 2\"\n",
            "CMD [\"a\", \"\\u00e9\"]\n",
            "CMD [\"a\", ]\n",
            "COPY --chown=\"a b\" -- --x y\n",
            "HEALTHCHECK --retries=3 CMD [\"c\"]\n",
            "EXPOSE 80\t443\n",
            "volume [\"/v\"]\n",
        ));
        let got: Vec<(Vec<&str>, Vec<&str>, bool)> = ast
            .nodes
            .iter()
            .map(|n| (n.flags.iter().map(String::as_str).collect(), args(n), n.json))
            .collect();
        let none: Vec<&str> = Vec::new();
        assert_eq!(
            got,
            vec![
                (vec!["--platform=$P"], vec!["img", "AS", "b"], false),
                (none.clone(), vec!["a", "1", "=", "b", "\"x y\"", "=", "c\\ d", "e", "="], false),
                (none.clone(), vec!["k", "v w", ""], false),
                (none.clone(), vec!["x", "y=\"1 2\""], false),
                (none.clone(), vec!["a", "é"], true),
                (none.clone(), vec!["[\"a\", ]"], false),
                (vec!["--chown=a b"], vec!["--x", "y"], false),
                (vec!["--retries=3"], vec!["CMD", "c"], true),
                (none.clone(), vec!["80", "443"], false),
                (none, vec!["/v"], true),
            ]
        );
        assert_eq!(ast.nodes[9].keyword, "volume");
    }

    #[test]
    fn json_with_non_strings_is_an_error() {
        let e = err("FROM a\nCMD [\"a\", 1]\n");
        assert_eq!(e.kind, ParseErrorKind::InvalidJson { instruction: "CMD".into() });
        assert_eq!(e.span, Span::new(2, 5));
        // Go's decoder cannot hold 1e400, so this is "not JSON": shell form.
        assert_eq!(args(&ok("FROM a\nCMD [\"a\", 1e400]\n").nodes[1]), ["[\"a\", 1e400]"]);
        // Lone surrogates become U+FFFD, as in Go.
        assert_eq!(args(&ok("FROM a\nCMD [\"\\ud800x\"]\n").nodes[1]), ["\u{fffd}x"]);
        let deep = format!("FROM a\nCMD [{}{}]\n", "[".repeat(20_000), "]".repeat(20_000));
        assert!(!ok(&deep).nodes[1].json);
    }

    #[test]
    fn comments_are_kept_until_the_next_instruction() {
        let ast = ok("# one\n\n# two\nFROM a\n#\n# three\nRUN b\n");
        assert_eq!(ast.nodes[0].comments, ["one", "two"]);
        assert_eq!(ast.nodes[1].comments, ["three"]);
    }

    #[test]
    fn no_instructions() {
        for src in ["", "\n\n", "# only\n", "\\\n"] {
            let e = err(src);
            assert!(
                matches!(
                    e.kind,
                    ParseErrorKind::NoStages | ParseErrorKind::UnknownInstruction { .. }
                ),
                "{src:?}: {e:?}"
            );
        }
    }

    /// BuildKit scans HEALTHCHECK's type and flags byte by byte: only ASCII white space
    /// (including \v) separates, so a leading NBSP belongs to the command.
    #[test]
    fn byte_wise_scanners_split_on_ascii_space_only() {
        let ast = ok("FROM a\nHEALTHCHECK CMD \x0b\u{a0}x\nCOPY --a=\u{2003}b c d\n");
        assert_eq!(args(&ast.nodes[1]), ["CMD", "\u{a0}x"]);
        assert_eq!(
            (ast.nodes[2].flags.clone(), args(&ast.nodes[2])),
            (vec!["--a=\u{2003}b".to_string()], vec!["c", "d"])
        );
    }
}
