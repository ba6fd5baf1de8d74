//! `.dockerignore` patterns: `DockerIgnore::parse`, `is_excluded`, `dir_may_have_inclusions`.
//!
//! Input: `PATTERNS\0PATH\nPATH...`, or just `PATTERNS` (then a fixed set of paths). Asserts,
//! beyond "no panic, no hang": every error names a line of the file; for a clean path,
//! `is_excluded` is "the last pattern that matches decides" (`Pattern::matches` one by one), and
//! the path with a leading `/` or `./` gets the same verdict; and `dir_may_have_inclusions` is
//! conservative: whenever a directory is excluded but a path below it is not, it says true
//! (a context walker that believed it would skip a re-included file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_recipe::DockerIgnore;

const PATHS: &str =
    "a\na/b\na/b/c.log\nnode_modules/m/index.js\nsrc/tmp/x\n.git/HEAD\nDockerfile\nx y/z\n";

/// `/`-separated, relative, without empty, `.` or `..` components.
fn is_clean(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (patterns, paths) = text.split_once('\0').unwrap_or((text, PATHS));
    let ignore = match DockerIgnore::parse(patterns) {
        Ok(i) => i,
        Err(e) => {
            let lines = patterns.split('\n').count();
            assert!((1..=lines).contains(&e.span.line), "error at line {} of {lines}", e.span.line);
            return;
        }
    };
    let _ = ignore.dir_may_have_inclusions(".");
    for path in paths.lines().take(64) {
        let excluded = ignore.is_excluded(path);
        if !is_clean(path) {
            continue;
        }
        let last = ignore.patterns().filter(|p| p.matches(path)).last();
        assert_eq!(
            excluded,
            last.is_some_and(|p| !p.is_exclusion()),
            "is_excluded({path:?}) disagrees with the last matching pattern {:?}",
            last.map(|p| p.text())
        );
        assert_eq!(excluded, ignore.is_excluded(&format!("/{path}")), "leading / changes {path:?}");
        assert_eq!(
            excluded,
            ignore.is_excluded(&format!("./{path}")),
            "leading ./ changes {path:?}"
        );
        if excluded {
            continue;
        }
        // Every excluded ancestor must admit that something below it may be included.
        let mut dir = path;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if ignore.is_excluded(parent) {
                assert!(
                    ignore.dir_may_have_inclusions(parent),
                    "{parent:?} is excluded and said to have no inclusions, but {path:?} is included"
                );
            }
            dir = parent;
        }
    }
});
