//! The one error type of this crate.
//!
//! Every failure carries the position it is about ([`Span`]) and, once the source text is
//! attached with [`ParseError::with_source`], renders like a rustc diagnostic: a headline, the
//! `--> file:line:column` pointer, the offending line and a caret under the column.

use std::fmt;

use serde::Serialize;

/// A position in the recipe text: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Span {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in Unicode scalar values.
    pub column: usize,
}

impl Span {
    /// A span at `line`, `column` (both 1-based).
    pub fn new(line: usize, column: usize) -> Self {
        Span { line, column }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// What went wrong. Each distinct mistake a user can make has its own variant so tools can
/// match on it; the message is in [`fmt::Display`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// A parser directive (`# syntax=`, `# escape=`, `# check=`) is malformed or repeated.
    InvalidDirective {
        /// Directive name as written.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The first word of an instruction is not one of the 18 instructions.
    UnknownInstruction {
        /// The word as written.
        name: String,
    },
    /// An instruction was given no arguments, or too few.
    MissingArguments {
        /// The instruction, upper case.
        instruction: String,
        /// What was expected.
        expected: String,
    },
    /// A `--flag` is unknown for the instruction, repeated, or has a bad value.
    InvalidFlag {
        /// The instruction, upper case.
        instruction: String,
        /// The flag name without dashes.
        flag: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A heredoc (`<<EOF`) was opened but its delimiter line never came.
    UnterminatedHeredoc {
        /// The delimiter that was expected.
        delimiter: String,
    },
    /// A quote opened in a word was not closed.
    UnterminatedQuote {
        /// The quote character.
        quote: char,
    },
    /// A `${` was not closed, or its operator is not a valid substitution.
    BadSubstitution {
        /// The text of the substitution, as far as it was read.
        text: String,
    },
    /// An instruction that only accepts the JSON exec form got something else.
    InvalidJson {
        /// The instruction, upper case.
        instruction: String,
    },
    /// A malformed argument: `ENV` without a value, a bad `HEALTHCHECK`, a bad key=value pair...
    InvalidArgument {
        /// The instruction, upper case.
        instruction: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `${name:?message}` or `${name?message}` with `name` unset (or empty, for `:?`).
    RequiredVariable {
        /// The variable name.
        name: String,
        /// The message from the recipe (may be empty).
        message: String,
    },
    /// `ONBUILD` given a trigger that is not allowed (`ONBUILD`, `FROM`, `MAINTAINER`).
    InvalidOnbuild {
        /// The forbidden trigger, upper case.
        trigger: String,
    },
    /// The recipe has no `FROM`, or an instruction other than `ARG` comes before the first `FROM`.
    NoStages,
    /// The recipe is not UTF-8 text; the span is the first byte that is not.
    InvalidUtf8 {
        /// That byte.
        byte: u8,
    },
    /// An instruction other than `ARG` appears before the first `FROM`.
    InstructionBeforeFrom {
        /// The instruction, upper case.
        instruction: String,
    },
    /// A stage name is all digits: `--from=N` and `--target N` would read it as an index.
    /// (Names BuildKit refuses but buildah accepts are allowed; see [`crate::check`].)
    InvalidStageName {
        /// The name, lower-cased.
        name: String,
    },
    /// `--from` (or a mount's `from=`) names a stage that is defined only after the stage
    /// using it, as BuildKit refuses it.
    StageDefinedLater {
        /// The name as given.
        name: String,
    },
    /// `--target` or `--from` names a stage that does not exist.
    UnknownStage {
        /// The name or index as given.
        name: String,
    },
    /// A COPY/ADD `--chmod` value is neither an octal mode up to `07777` nor a symbolic mode
    /// (see [`crate::chmod`]); the error's span is the instruction's.
    InvalidChmod {
        /// The value as given (after expansion).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `.dockerignore` line is not a valid pattern (bad `[...]` class, trailing `\`, a lone
    /// `!`); the line number is in the error's span.
    InvalidIgnorePattern {
        /// The pattern as written on the line, trimmed.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParseErrorKind::*;
        match self {
            InvalidDirective { name, reason } => {
                write!(f, "invalid parser directive `{name}`: {reason}")
            }
            UnknownInstruction { name } => write!(f, "unknown instruction: {name}"),
            MissingArguments { instruction, expected } => {
                write!(f, "{instruction} requires {expected}")
            }
            InvalidFlag { instruction, flag, reason } => {
                write!(f, "invalid flag --{flag} for {instruction}: {reason}")
            }
            UnterminatedHeredoc { delimiter } => {
                write!(f, "unterminated heredoc: no line `{delimiter}` closes it")
            }
            UnterminatedQuote { quote } => write!(f, "unterminated quote: missing closing {quote}"),
            BadSubstitution { text } => write!(f, "bad substitution: {text}"),
            InvalidJson { instruction } => {
                write!(f, "{instruction} requires the arguments to be a JSON array of strings")
            }
            InvalidArgument { instruction, reason } => write!(f, "{instruction}: {reason}"),
            RequiredVariable { name, message } => {
                if message.is_empty() {
                    write!(f, "{name}: is not allowed to be unset")
                } else {
                    write!(f, "{name}: {message}")
                }
            }
            InvalidOnbuild { trigger } => {
                write!(f, "{trigger} isn't allowed as an ONBUILD trigger")
            }
            NoStages => write!(f, "the recipe has no build stage: it needs a FROM instruction"),
            InvalidUtf8 { byte } => {
                write!(f, "the recipe is not UTF-8 text: byte 0x{byte:02x} is not valid here")
            }
            InstructionBeforeFrom { instruction } => {
                write!(f, "{instruction} before the first FROM: only ARG may come first")
            }
            InvalidStageName { name } => write!(
                f,
                "invalid stage name `{name}`: a name of digits only would be read as a stage index"
            ),
            StageDefinedLater { name } => write!(
                f,
                "cannot copy from stage `{name}`: it needs to be defined before the current stage"
            ),
            UnknownStage { name } => write!(f, "unknown stage `{name}`"),
            InvalidChmod { value, reason } => {
                write!(f, "invalid --chmod value '{value}': {reason}")
            }
            InvalidIgnorePattern { pattern, reason } => {
                write!(f, "invalid .dockerignore pattern `{pattern}`: {reason}")
            }
        }
    }
}

/// An error with its position, and (optionally) the file name and line text for rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// Where. Line 0 means "the recipe as a whole" (e.g. [`ParseErrorKind::NoStages`]).
    pub span: Span,
    /// Number of characters the caret should underline (at least 1).
    pub len: usize,
    /// File name and offending line, once attached; boxed to keep `Result`s small.
    source: Option<Box<SourceText>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceText {
    file: String,
    line: Option<String>,
}

impl ParseError {
    /// An error of `kind` at `span`, underlining one character.
    pub fn new(kind: ParseErrorKind, span: Span) -> Self {
        ParseError { kind, span, len: 1, source: None }
    }

    /// Sets how many characters the caret underlines.
    pub fn with_len(mut self, len: usize) -> Self {
        self.len = len.max(1);
        self
    }

    /// Attaches the file name and picks the offending line out of `source`, for rendering.
    pub fn with_source(mut self, file: impl Into<String>, source: &str) -> Self {
        let line = (self.span.line > 0)
            .then(|| {
                source
                    .trim_start_matches('\u{feff}')
                    .split('\n')
                    .nth(self.span.line - 1)
                    .map(|l| l.trim_end_matches('\r').to_string())
            })
            .flatten();
        self.source = Some(Box::new(SourceText { file: file.into(), line }));
        self
    }

    /// The file name attached with [`ParseError::with_source`].
    pub fn file(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.file.as_str())
    }

    /// The text of the offending line, when the source was attached.
    pub fn line_text(&self) -> Option<&str> {
        self.source.as_ref().and_then(|s| s.line.as_deref())
    }
}

/// How much of the offending input an error shows (the rest is elided, issue 15 point 9).
const SHOWN: usize = 200;

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", strata_types::elide(&self.kind.to_string(), SHOWN))?;
        let file = self.file().unwrap_or("Dockerfile");
        if self.span.line == 0 {
            return write!(f, "\n --> {file}");
        }
        write!(f, "\n --> {file}:{}:{}", self.span.line, self.span.column)?;
        if let Some(text) = self.line_text() {
            let num = self.span.line.to_string();
            let pad = " ".repeat(num.len());
            // A long line shows a window of SHOWN characters around the column.
            let chars: Vec<char> = text.chars().collect();
            let col = self.span.column.saturating_sub(1).min(chars.len());
            let start = col.saturating_sub(SHOWN / 2).min(chars.len().saturating_sub(SHOWN));
            let end = (start + SHOWN).min(chars.len());
            let (open, close) =
                (if start > 0 { "…" } else { "" }, if end < chars.len() { "…" } else { "" });
            let shown: String = chars[start..end].iter().collect();
            let lead: String = std::iter::once(open)
                .map(|o| " ".repeat(o.chars().count()))
                .chain(chars[start..col].iter().map(|c| {
                    if *c == '\t' {
                        "\t".to_string()
                    } else {
                        " ".to_string()
                    }
                }))
                .collect();
            let carets = self.len.min(SHOWN);
            write!(
                f,
                "\n{pad} |\n{num} | {open}{shown}{close}\n{pad} | {lead}{}",
                "^".repeat(carets)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}
