//! strata-recipe: Dockerfile and Containerfile text to typed stages and steps.
//!
//! Parsing happens in layers, the way BuildKit's Dockerfile frontend does it, so that the same
//! text means the same thing to both. [`ast`] splits the text into instructions (directives,
//! comments, continuations, heredocs) without interpreting them; [`shell`] implements the
//! shell-word language used inside instructions (`$var`, `${var:-default}`, quoting); then
//! [`instruction`] gives each node its typed meaning and [`stage`] forms build stages, scoping
//! `ARG`s and expanding variables with the build arguments supplied. [`dockerignore`] implements
//! the context exclusion patterns, [`chmod`] the `COPY --chmod` modes, and [`check`] the build
//! checks (BuildKit's lint rules and strata's own) over a parsed recipe. Nothing here does I/O:
//! callers hand in text.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ast;
pub mod check;
pub mod chmod;
pub mod dockerignore;
pub mod error;
pub mod instruction;
mod parser;
pub mod shell;
pub mod stage;

pub use ast::{Ast, Directive, Heredoc, Node};
pub use check::{CheckConfig, CheckOptions, CheckReport, CheckWarning, Rule, RULES};
pub use chmod::{Chmod, ChmodFlag};
pub use dockerignore::DockerIgnore;
pub use error::{ParseError, ParseErrorKind, Span};
pub use instruction::{Command, CopySpec, Instruction, KeyValue, Mount, MountType, Source};
pub use stage::{parse, Base, BuildArgs, ExpandedStage, Plan, Recipe, Scope, Stage, Step};

/// A recipe file's bytes as text: UTF-8 (a leading byte-order mark is the parser's to skip),
/// or an error at the line and column of the first byte that is not.
pub fn decode(bytes: Vec<u8>) -> Result<String, ParseError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let valid = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        ParseError::new(ParseErrorKind::InvalidUtf8 { byte: bytes[at] }, Span { line, column })
    })
}

/// Splits recipe text into its syntax tree (first layer only: no variable expansion, no
/// semantic checks beyond what BuildKit's parser itself rejects).
pub fn parse_ast(src: &str) -> Result<Ast, ParseError> {
    parser::parse(src)
}
