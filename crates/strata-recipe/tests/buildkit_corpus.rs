//! BuildKit's own parser corpus, checked the way BuildKit checks it (see the corpus NOTICE.md):
//! every positive case must parse and dump exactly to its `result` file, every negative case
//! must fail, and `testfile-line` must give the documented start and end lines.
//!
//! The corpus lives outside the repository, at `<workspace>/../shared/compat/buildkit`; when it
//! is absent the tests say so and pass, unless `STRATA_TEST_STRICT=1`.

mod support;

use std::path::PathBuf;

use strata_recipe::parse_ast;

fn parser_dir() -> Option<PathBuf> {
    support::compat_dir("buildkit").map(|d| d.join("frontend/dockerfile/parser"))
}

fn read(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => panic!("reading {}: {err}", path.display()),
    }
}

/// A line-by-line diff of expected and actual dumps, marking only the differing lines.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => out.push_str(&format!("  {x}\n")),
            (x, y) => {
                if let Some(x) = x {
                    out.push_str(&format!("- {x}\n"));
                }
                if let Some(y) = y {
                    out.push_str(&format!("+ {y}\n"));
                }
            }
        }
    }
    out
}

fn check_positive(case: &str) {
    let Some(dir) = parser_dir() else { return };
    let case_dir = dir.join("testfiles").join(case);
    let src = read(&case_dir.join("Dockerfile"));
    let expected = read(&case_dir.join("result"));
    let ast = match parse_ast(&src) {
        Ok(ast) => ast,
        Err(err) => panic!("case {case}: parse failed: {err}"),
    };
    let actual = support::dump(&ast);
    assert!(
        actual == expected,
        "case {case}: dump differs (- expected, + actual):\n{}",
        diff(&expected, &actual)
    );
}

fn check_negative(case: &str) {
    let Some(dir) = parser_dir() else { return };
    let src = read(&dir.join("testfiles-negative").join(case).join("Dockerfile"));
    if let Ok(ast) = parse_ast(&src) {
        panic!("case {case}: expected a parse error, got:\n{}", support::dump(&ast));
    }
}

macro_rules! positive {
    ($($name:ident => $case:literal,)*) => {
        /// Every positive case this file covers, to notice cases added to the corpus.
        const POSITIVE: &[&str] = &[$($case),*];
        $(#[test] fn $name() { check_positive($case); })*
    };
}

macro_rules! negative {
    ($($name:ident => $case:literal,)*) => {
        /// Every negative case this file covers.
        const NEGATIVE: &[&str] = &[$($case),*];
        $(#[test] fn $name() { check_negative($case); })*
    };
}

positive! {
    add_copy_with_json => "ADD-COPY-with-JSON",
    args => "args",
    brimstone_consuldock => "brimstone-consuldock",
    brimstone_docker_consul => "brimstone-docker-consul",
    continue_at_eof => "continue-at-eof",
    continue_indent => "continueIndent",
    cpuguy83_nagios => "cpuguy83-nagios",
    docker => "docker",
    env => "env",
    escape => "escape",
    escape_after_comment => "escape-after-comment",
    escape_nonewline => "escape-nonewline",
    escape_with_syntax => "escape-with-syntax",
    escapes => "escapes",
    flags => "flags",
    health => "health",
    influxdb => "influxdb",
    jeztah_invalid_json_json_inside_string => "jeztah-invalid-json-json-inside-string",
    jeztah_invalid_json_json_inside_string_double => "jeztah-invalid-json-json-inside-string-double",
    jeztah_invalid_json_single_quotes => "jeztah-invalid-json-single-quotes",
    jeztah_invalid_json_unterminated_bracket => "jeztah-invalid-json-unterminated-bracket",
    jeztah_invalid_json_unterminated_string => "jeztah-invalid-json-unterminated-string",
    json => "json",
    kartar_entrypoint_oddities => "kartar-entrypoint-oddities",
    lk4d4_the_edge_case_generator => "lk4d4-the-edge-case-generator",
    mail => "mail",
    multiple_volumes => "multiple-volumes",
    mumble => "mumble",
    nginx => "nginx",
    tf2 => "tf2",
    trailing_backslash => "trailing-backslash",
    weechat => "weechat",
    znc => "znc",
}

negative! {
    negative_empty_dockerfile => "empty_dockerfile",
    negative_env_no_value => "env_no_value",
    negative_only_comments => "only_comments",
    negative_shykes_nested_json => "shykes-nested-json",
}

/// The corpus holds exactly the cases above: a case added upstream must get its own test.
#[test]
fn corpus_has_no_unlisted_cases() {
    let Some(dir) = parser_dir() else { return };
    for (sub, listed) in [("testfiles", POSITIVE), ("testfiles-negative", NEGATIVE)] {
        let mut found: Vec<String> = std::fs::read_dir(dir.join(sub))
            .unwrap_or_else(|e| panic!("listing {sub}: {e}"))
            .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        found.sort();
        let mut listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(found, listed, "cases in {sub}");
    }
}

/// Start and end lines of each instruction, as BuildKit's `TestParseIncludesLineNumbers`.
#[test]
fn testfile_line_numbers() {
    let Some(dir) = parser_dir() else { return };
    let src = read(&dir.join("testfile-line/Dockerfile"));
    let ast = parse_ast(&src).unwrap_or_else(|e| panic!("testfile-line: {e}"));
    let lines: Vec<(usize, usize)> = ast.nodes.iter().map(|n| (n.span.line, n.end_line)).collect();
    assert_eq!(lines, vec![(5, 5), (11, 12), (17, 31)]);
}
