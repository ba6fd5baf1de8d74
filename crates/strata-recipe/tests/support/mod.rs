//! Test helpers shared by the recipe tests: BuildKit's `Node.Dump` format, with Go's quoting.
//!
//! BuildKit's parser tests compare an AST dump against golden `result` files. The dump prints
//! each instruction as `(keyword ["--flag" ...] "arg" ...)`, every string quoted by Go's
//! `strconv.Quote`, whose escaping differs from Rust's `{:?}` (`\x00` rather than `\0`,
//! `\u00a0` for non-printable characters, printable Unicode kept as is), so it is reimplemented
//! here.
#![allow(dead_code)]

mod go_print;

use std::fmt::Write as _;
use std::path::PathBuf;

use strata_recipe::{Ast, Node};

/// Whether Go's `strconv.IsPrint` is true for `c`.
pub fn go_is_print(c: char) -> bool {
    let cp = c as u32;
    let idx = go_print::PRINTABLE.partition_point(|&(first, _)| first <= cp);
    idx > 0 && cp <= go_print::PRINTABLE[idx - 1].1
}

/// `s` quoted as Go's `strconv.Quote` does.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if go_is_print(c) => out.push(c),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// One node as BuildKit's `Node.Dump` prints it (without the surrounding parentheses).
pub fn dump_node(node: &Node) -> String {
    let mut out = node.keyword.to_lowercase();
    if !node.flags.is_empty() {
        let flags: Vec<String> = node.flags.iter().map(|f| go_quote(f)).collect();
        let _ = write!(out, " [{}]", flags.join(" "));
    }
    if let Some(child) = &node.child {
        let _ = write!(out, " ({})", dump_node(child));
    }
    for arg in &node.args {
        out.push(' ');
        out.push_str(&go_quote(arg));
    }
    out.trim().to_string()
}

/// The whole tree as BuildKit's root `Node.Dump` prints it, plus the final newline the golden
/// `result` files have.
pub fn dump(ast: &Ast) -> String {
    let mut out = String::new();
    for node in &ast.nodes {
        let _ = writeln!(out, "({})", dump_node(node));
    }
    format!("{}\n", out.trim())
}

/// `<workspace>/../shared/compat/<sub>`, or `None` (after saying why) when it is absent.
/// Under `STRATA_TEST_STRICT=1` an absent directory is a failure.
#[allow(clippy::print_stderr)]
pub fn compat_dir(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/compat").join(sub);
    if dir.is_dir() {
        return Some(dir);
    }
    let msg = format!("skipping: compat corpus {} is absent", dir.display());
    if std::env::var("STRATA_TEST_STRICT").as_deref() == Ok("1") {
        panic!("{msg} (STRATA_TEST_STRICT=1)");
    }
    eprintln!("{msg}");
    None
}
