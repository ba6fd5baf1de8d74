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

/// Splits recipe text into its syntax tree (first layer only: no variable expansion, no
/// semantic checks beyond what BuildKit's parser itself rejects).
pub fn parse_ast(src: &str) -> Result<Ast, ParseError> {
    parser::parse(src)
}
