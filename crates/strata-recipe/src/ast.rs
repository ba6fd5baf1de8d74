//! The syntax tree: a recipe as BuildKit's parser sees it, before any meaning is given.
//!
//! The parser works in two layers, as BuildKit's does. This first layer only splits the text
//! into instructions, handles directives, comments, line continuations and heredocs, and breaks
//! each instruction's arguments the way that instruction's grammar says (JSON array, whitespace
//! words, key=value pairs...). Variable expansion and all semantic checks happen later, in
//! [`crate::instruction`] and [`crate::stage`], because they depend on build arguments.

use serde::Serialize;

use crate::error::Span;

/// A parser directive from the top of the file, e.g. `# escape=``.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Directive name, lower case (`syntax`, `escape`, `check`).
    pub name: String,
    /// The value after `=`, trimmed.
    pub value: String,
    /// Where the directive's line starts.
    pub span: Span,
}

/// A here-document attached to an instruction (`RUN <<EOF`, `COPY <<a.txt /dst`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word without quotes or the `-` (e.g. `EOF`).
    pub name: String,
    /// The body: every line after the instruction up to the delimiter, each ending in `\n`.
    /// With `<<-`, leading tabs are already stripped.
    pub content: String,
    /// False when the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): no variable expansion.
    pub expand: bool,
    /// True for `<<-`: leading tabs were stripped from each body line.
    pub chomp: bool,
}

/// One instruction as parsed. Mirrors BuildKit's `parser.Node` for a top-level instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction keyword, lower case (`from`, `run`, ...). Unknown keywords are
    /// rejected by the parser, so this is always one of the 18 instructions.
    pub keyword: String,
    /// `--name=value` / `--name` flags, exactly as written (with the dashes), in order.
    pub flags: Vec<String>,
    /// The arguments after the flags, as BuildKit's `Next` chain. For ENV and LABEL they come in
    /// triples `key, value, sep` where `sep` is `"="` for `k=v` and `""` for the legacy `k v`.
    /// For ONBUILD this is empty and [`Node::child`] holds the trigger.
    pub args: Vec<String>,
    /// True when the arguments were given as a JSON array (exec form).
    pub json: bool,
    /// The original text of the instruction: its lines joined after removing continuations.
    pub original: String,
    /// Heredocs opened on this instruction's line, in order.
    pub heredocs: Vec<Heredoc>,
    /// For ONBUILD: the trigger instruction.
    pub child: Option<Box<Node>>,
    /// Position of the instruction keyword.
    pub span: Span,
    /// Last line (1-based) the instruction occupies, including continuation lines and heredocs.
    pub end_line: usize,
    /// Comment lines directly above the instruction (without `#`), as BuildKit's `PrevComment`.
    pub comments: Vec<String>,
}

/// A whole parsed recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ast {
    /// Parser directives found at the top.
    pub directives: Vec<Directive>,
    /// The escape character in force (`\` or `` ` ``).
    pub escape: char,
    /// The instructions, in order.
    pub nodes: Vec<Node>,
    /// Non-fatal findings (e.g. empty continuation lines), as BuildKit reports them.
    pub warnings: Vec<Warning>,
}

/// A non-fatal finding of the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Where.
    pub span: Span,
    /// What, in one sentence.
    pub message: String,
}
