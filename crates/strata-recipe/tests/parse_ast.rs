//! `parse_ast` through the public API: robustness on arbitrary input, and a few properties
//! that tie the tree to the text (spans point at keywords, heredoc bodies come back intact).

mod support;

use proptest::prelude::*;
use strata_recipe::{parse_ast, ParseErrorKind};

/// Pieces of Dockerfile syntax, glued together at random to reach the parser's corners.
const TOKENS: &[&str] = &[
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "LABEL",
    "ARG",
    "ONBUILD",
    "HEALTHCHECK",
    "CMD",
    "SHELL",
    "VOLUME",
    "EXPOSE",
    "USER",
    "WORKDIR",
    "MAINTAINER",
    "STOPSIGNAL",
    "ENTRYPOINT",
    "onbuild",
    "NOPE",
    "\n",
    "\r\n",
    "\n\n",
    " ",
    "\t",
    "\\",
    "`",
    "\\\n",
    "`\n",
    "#",
    "# escape=`",
    "# syntax=x",
    "# check=y",
    "# escape=\\",
    "<<",
    "<<-",
    "<<EOF",
    "<<'EOF'",
    "<<\"EOF\"",
    "EOF",
    "\tEOF",
    "2<<X",
    "X",
    "--",
    "--mount=type=cache",
    "--flag=\"a b\"",
    "[",
    "]",
    "\"",
    "'",
    ",",
    "[\"a\"]",
    "[\"a\", 1]",
    "[[[[",
    "\\u00",
    "\\ud800",
    "=",
    "k=v",
    "k=\"v w\"",
    "$",
    "${",
    "}",
    "${x:-y}",
    "${x/",
    "\u{feff}",
    "\u{a0}",
    "é",
    "\u{212a}",
    "\0",
    "CMD [",
    "ONBUILD ONBUILD",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(src in any::<String>()) {
        let _ = parse_ast(&src);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_ast(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup_never_panics_and_spans_are_sane(src in soup()) {
        let line_count = src.split('\n').count();
        match parse_ast(&src) {
            Ok(ast) => {
                prop_assert!(!ast.nodes.is_empty());
                let mut last = 0;
                for node in &ast.nodes {
                    prop_assert!(node.span.line > last, "nodes out of order: {:?}", ast.nodes);
                    prop_assert!(node.span.line <= node.end_line && node.end_line <= line_count);
                    prop_assert!(node.span.column >= 1);
                    last = node.end_line;
                    let _ = support::dump_node(node);
                }
            }
            Err(err) => {
                prop_assert!(err.span.line <= line_count, "{err:?}");
                prop_assert!(err.len >= 1);
                let _ = err.with_source("Dockerfile", &src).to_string();
            }
        }
    }

    /// The keyword's span points at the keyword, whatever indentation precedes it.
    #[test]
    fn span_points_at_keyword(blank_lines in 0usize..4, indent in "[ \t]{0,4}", word in "[a-z]{1,8}") {
        let src = format!("FROM a\n{}{indent}RUN {word}\n", "\n".repeat(blank_lines));
        let ast = parse_ast(&src).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let run = &ast.nodes[1];
        prop_assert_eq!(run.span.line, 2 + blank_lines);
        prop_assert_eq!(run.span.column, indent.chars().count() + 1);
        prop_assert_eq!(&run.args, &vec![word]);
    }

    /// A heredoc body without its delimiter line comes back byte for byte.
    #[test]
    fn heredoc_body_round_trips(lines in prop::collection::vec("[^\n]{0,20}", 0..6)) {
        prop_assume!(lines.iter().all(|l| l.trim_end_matches('\r') != "EOF"));
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let src = format!("FROM a\nCOPY <<EOF /f\n{body}EOF\nRUN z\n");
        let ast = parse_ast(&src).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&ast.nodes[1].heredocs[0].content, &body);
        prop_assert_eq!(ast.nodes[2].span.line, lines.len() + 4);
    }
}

/// The algorithm is linear: these shapes would take minutes if any step were quadratic, so a
/// regression shows up as a hung test rather than a timing assertion.
#[test]
fn large_inputs_parse() {
    let many = "RUN echo hi\n".repeat(10_000);
    assert_eq!(parse_ast(&format!("FROM a\n{many}")).map(|a| a.nodes.len()).ok(), Some(10_001));

    let continued = format!("FROM a\nRUN a{}\n", " \\\n b".repeat(20_000));
    let ast = parse_ast(&continued).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ast.nodes[1].end_line, 20_002);

    let flags = format!("FROM a\nCOPY {}. /\n", "--x=1 ".repeat(20_000));
    assert_eq!(parse_ast(&flags).map(|a| a.nodes[1].flags.len()).ok(), Some(20_000));

    let heredocs: String = (0..2_000).map(|i| format!("<<E{i} ")).collect();
    let bodies: String = (0..2_000).map(|i| format!("body\nE{i}\n")).collect();
    let src = format!("FROM a\nRUN {heredocs}\n{bodies}");
    assert_eq!(parse_ast(&src).map(|a| a.nodes[1].heredocs.len()).ok(), Some(2_000));

    let onbuilds = format!("FROM a\nONBUILD {}RUN x\n", "ONBUILD ".repeat(50_000));
    let err = parse_ast(&onbuilds).err().map(|e| e.kind);
    assert_eq!(err, Some(ParseErrorKind::InvalidOnbuild { trigger: "ONBUILD".into() }));
}

#[test]
fn go_quote_matches_go() {
    use support::go_quote;
    assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(go_quote("\0\x07\x08\x0b\x1b\x7f"), r#""\x00\a\b\v\x1b\x7f""#);
    assert_eq!(go_quote("♥ é 한"), "\"♥ é 한\"");
    assert_eq!(go_quote("\u{a0}\u{ad}\u{feff}\u{2028}"), r#""\u00a0\u00ad\ufeff\u2028""#);
    assert_eq!(go_quote("\u{e000}\u{10ffff}😀"), "\"\\ue000\\U0010ffff😀\"");
}
