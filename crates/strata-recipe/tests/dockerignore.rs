//! `.dockerignore` matching: moby/patternmatcher's behaviour as table cases, the file-reading
//! rules of its `ignorefile` reader, and the golden cases under `testdata/dockerignore/`.

use std::path::PathBuf;

use proptest::prelude::*;
use strata_recipe::{DockerIgnore, ParseErrorKind};

fn ignore(patterns: &[&str]) -> DockerIgnore {
    DockerIgnore::parse(&patterns.join("\n"))
        .unwrap_or_else(|e| panic!("patterns {patterns:?} rejected: {e}"))
}

/// (pattern, path, excluded) — a pattern matches the path or one of its parent directories.
const SINGLE: &[(&str, &str, bool)] = &[
    ("*", "fileutils.go", true),
    ("*.go", "fileutils.go", true),
    ("**", "file", true),
    ("**", "file/", true),
    ("**/", "file", true),
    ("**/", "file/", true),
    // The context root is never excluded; a leading `/` is ignored like in patterns.
    ("**", "/", false),
    ("**/", "/", false),
    ("docs", "/docs/x", true),
    ("**", "dir/file", true),
    ("**/", "dir/file", true),
    ("**", "dir/file/", true),
    ("**/**", "dir/file", true),
    ("**/**", "dir/file/", true),
    ("dir/**", "dir/file", true),
    ("dir/**", "dir/dir2/file/", true),
    ("**/dir", "dir", true),
    ("**/dir", "dir/file", true),
    ("**/dir2/*", "dir/dir2/file", true),
    ("**/dir2/**", "dir/dir2/dir3/file", true),
    ("**file", "file", true),
    ("**file", "dir/file", true),
    ("**/file", "dir/file", true),
    ("**file", "dir/dir/file", true),
    ("**/file", "dir/dir/file", true),
    ("**/file*", "dir/dir/file", true),
    ("**/file*", "dir/dir/file.txt", true),
    ("**/file*txt", "dir/dir/file.txt", true),
    ("**/file*.txt", "dir/dir/file.txt", true),
    ("**/file*.txt*", "dir/dir/file.txt", true),
    ("**/**/*.txt", "dir/dir/file.txt", true),
    ("**/**/*.txt2", "dir/dir/file.txt", false),
    ("**/*.txt", "file.txt", true),
    ("**/**/*.txt", "file.txt", true),
    ("a**/*.txt", "a/file.txt", true),
    ("a**/*.txt", "a/dir/file.txt", true),
    ("a**/*.txt", "a/dir/dir/file.txt", true),
    ("a/*.txt", "a/dir/file.txt", false),
    ("a/*.txt", "a/file.txt", true),
    ("a/*.txt**", "a/file.txt", true),
    ("a[b-d]e", "ae", false),
    ("a[b-d]e", "ace", true),
    ("a[b-d]e", "aae", false),
    ("a[^b-d]e", "aze", true),
    ("a[^b-d]e", "ace", false),
    (".*", ".foo", true),
    (".*", "foo", false),
    ("abc.def", "abcdef", false),
    ("abc.def", "abc.def", true),
    ("abc.def", "abcZdef", false),
    ("abc?def", "abcZdef", true),
    ("abc?def", "abcdef", false),
    ("abc?def", "abc/def", false),
    ("a\\\\", "a\\", true),
    ("a\\*b", "a*b", true),
    ("a\\*b", "axb", false),
    ("**/foo/bar", "foo/bar", true),
    ("**/foo/bar", "dir/foo/bar", true),
    ("**/foo/bar", "dir/dir2/foo/bar", true),
    ("abc/**", "abc", false),
    ("abc/**", "abc/def", true),
    ("abc/**", "abc/def/ghi", true),
    ("**/.foo", ".foo", true),
    ("**/.foo", "bar.foo", false),
    ("a(b)c/def", "a(b)c/def", true),
    ("a(b)c/def", "a(b)c/xyz", false),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true),
    // A pattern matching a parent directory excludes everything below it.
    ("docs", "docs/a/b/c.md", true),
    ("docs", "docsx/a", false),
    ("*/generated", "src/generated/x/y.go", true),
    ("a/*/c", "a/b/c/d", true),
    ("a/*/c", "a/b/x/c", false),
    // Odd inputs mean what the regexp patternmatcher builds from them means.
    ("[a*]", "a]", true),
    ("[a*]", "a", false),
    ("x^y", "x^y", true),
    // ... but once the pattern needs the regexp, a `^` is an anchor there and never matches.
    ("x^y*", "x^yz", false),
    ("\\d", "7", true),
    ("\\d", "d", false),
    ("é*", "éa", true),
];

#[test]
fn patternmatcher_single_pattern_cases() {
    let mut failures = Vec::new();
    for &(pattern, path, want) in SINGLE {
        let got = ignore(&[pattern]).is_excluded(path);
        if got != want {
            failures.push(format!("pattern {pattern:?} path {path:?}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn patternmatcher_multi_pattern_cases() {
    let whl = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";
    let cases: &[(&[&str], &str, bool)] = &[
        (&["!fileutils.go", "*.go"], "fileutils.go", true),
        (&["*.go", "!fileutils.go"], "fileutils.go", false),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/other.md", true),
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (&["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", true),
        (&["**", &format!("!{whl}")], whl, false),
        (&["**", "!dist/*.whl"], whl, false),
        (&["*.go"], ".", false),
        (&[], "any/path/there", false),
    ];
    for &(patterns, path, want) in cases {
        assert_eq!(ignore(patterns).is_excluded(path), want, "{patterns:?} on {path:?}");
    }
}

#[test]
fn malformed_patterns_are_errors_with_line_numbers() {
    for (text, line) in [
        ("ok\n!", 2),
        ("[", 1),
        ("a\n\n  ! \n", 3),
        ("x[a-]", 1),
        ("trailing\\", 1),
        ("# c\n\\é", 2),
        ("a[]b", 1),
    ] {
        let err = DockerIgnore::parse(text).err().unwrap_or_else(|| panic!("{text:?} accepted"));
        assert_eq!(err.span.line, line, "{text:?}");
        assert!(matches!(err.kind, ParseErrorKind::InvalidIgnorePattern { .. }), "{text:?}");
    }
    let err =
        DockerIgnore::parse("a\n  [x\n").unwrap_err().with_source(".dockerignore", "a\n  [x\n");
    let shown = err.to_string();
    assert!(shown.contains(".dockerignore:2:3"), "{shown}");
    assert!(shown.contains("`[x`"), "{shown}");
}

#[test]
fn file_reading_rules() {
    let di = DockerIgnore::parse(
        "\u{feff}# comment\r\n  spaced  \r\n\r\n! /abs/./x/\n #notcomment\n/\n./a/../b\n",
    )
    .unwrap();
    let got: Vec<(bool, &str, usize)> =
        di.patterns().map(|p| (p.is_exclusion(), p.text(), p.line())).collect();
    assert_eq!(
        got,
        [
            (false, "spaced", 2),
            (true, "abs/x", 4),
            (false, "#notcomment", 5),
            (false, "/", 6),
            (false, "b", 7),
        ]
    );
    assert!(di.has_exceptions());
    assert!(!DockerIgnore::parse("").unwrap().has_exceptions());
    assert!(DockerIgnore::parse("\n# x\n   \n").unwrap().is_empty());
}

#[test]
fn candidate_files_prefer_the_dockerfile_specific_one() {
    assert_eq!(
        DockerIgnore::candidate_files("Dockerfile"),
        ["Dockerfile.dockerignore", ".dockerignore"]
    );
    assert_eq!(
        DockerIgnore::candidate_files("build/app.Containerfile"),
        ["build/app.Containerfile.dockerignore", ".dockerignore"]
    );
}

#[test]
fn dir_may_have_inclusions_is_conservative() {
    let di = ignore(&["*", "!src/keep/*.rs", "!**/important"]);
    assert!(di.dir_may_have_inclusions("src"));
    assert!(di.dir_may_have_inclusions("src/keep"));
    // `**/important` could be anywhere.
    assert!(di.dir_may_have_inclusions("target"));
    let di = ignore(&["*", "!src/keep/*.rs"]);
    assert!(di.dir_may_have_inclusions("src"));
    assert!(!di.dir_may_have_inclusions("target"));
    assert!(!di.dir_may_have_inclusions("src/other"));
    assert!(!di.dir_may_have_inclusions("src/keep/deeper"));
    // A directory the exception names itself is re-included whole.
    assert!(di.dir_may_have_inclusions("src/keep/lib.rs"));
    assert!(!ignore(&["target"]).dir_may_have_inclusions("target"));
    // A class holding a `/` cannot be judged per component: assume it may match.
    assert!(ignore(&["*", "!a[/]b"]).dir_may_have_inclusions("zzz"));
    assert!(ignore(&["*", "!x"]).dir_may_have_inclusions("./"));
}

/// Runs every `testdata/dockerignore/<case>/` directory: `dockerignore` is the file, `paths`
/// lists `excluded <path>`, `included <path>`, `descend <dir>` or `skip <dir>` (what
/// `dir_may_have_inclusions` must say).
#[test]
fn golden_cases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/dockerignore");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "only {} golden cases", dirs.len());
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in &dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(dir.join("dockerignore")).expect("read dockerignore");
        let paths = std::fs::read_to_string(dir.join("paths")).expect("read paths");
        let di = DockerIgnore::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, line) in paths.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (verdict, path) =
                line.split_once(' ').unwrap_or_else(|| panic!("{name}/paths:{}: bad line", i + 1));
            let (got, want) = match verdict {
                "excluded" => (di.is_excluded(path), true),
                "included" => (di.is_excluded(path), false),
                "descend" => (di.dir_may_have_inclusions(path), true),
                "skip" => (di.dir_may_have_inclusions(path), false),
                other => panic!("{name}/paths:{}: unknown verdict {other:?}", i + 1),
            };
            checked += 1;
            if got != want {
                failures.push(format!("{name}/paths:{}: {line}", i + 1));
            }
        }
    }
    assert!(checked > 50, "only {checked} golden lines");
    assert!(failures.is_empty(), "failing golden lines:\n{}", failures.join("\n"));
}

/// A reference matcher straight from the definition: a pattern matches a path or a parent
/// directory; `*` and `?` stay within a component, `**` spans any number of them.
fn reference_match(pattern: &[u8], path: &[u8]) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = if p.get(2) == Some(&b'/') { &p[3..] } else { &p[2..] };
                if rest.is_empty() {
                    return true;
                }
                // `**/` = any number of whole directories (also none).
                (0..=s.len()).any(|i| (i == 0 || s[i - 1] == b'/') && glob(rest, &s[i..]))
            }
            Some(b'*') => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| glob(&p[1..], &s[i..])),
            Some(b'?') => s.first().is_some_and(|c| *c != b'/') && glob(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
        }
    }
    glob(pattern, path)
        || path.iter().enumerate().any(|(i, c)| *c == b'/' && glob(pattern, &path[..i]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Agrees with the reference on patterns made of `a`, `b`, `/`, `*`, `?` (where `**` is only
    /// used as a whole component, the case the reference defines).
    #[test]
    fn agrees_with_reference(
        parts in prop::collection::vec(prop_oneof![
            Just("a"), Just("b"), Just("*"), Just("?"), Just("a*"), Just("*b"), Just("**"),
        ], 1..4),
        path in "[ab]{1,2}(/[ab]{1,2}){0,3}",
    ) {
        let pattern = parts.join("/");
        let di = DockerIgnore::parse(&pattern).unwrap();
        prop_assert_eq!(
            di.is_excluded(&path),
            reference_match(pattern.as_bytes(), path.as_bytes()),
            "pattern {:?} path {:?}", pattern, path
        );
    }

    #[test]
    fn never_panics(text in "[-a-z*?\\[\\]^!\\\\/. \\n#{}()|+$é]{0,40}", path in "[-a-z*/.\\\\]{0,20}") {
        if let Ok(di) = DockerIgnore::parse(&text) {
            let _ = di.is_excluded(&path);
            let _ = di.dir_may_have_inclusions(&path);
            for p in di.patterns() {
                let _ = p.matches(&path);
            }
        }
    }
}
