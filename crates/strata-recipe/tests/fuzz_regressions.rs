//! One test per defect found by the fuzz targets in `fuzz/`, named after it; each input is
//! also in `fuzz/corpus/<target>/`.

use strata_recipe::DockerIgnore;

/// moby's matcher keeps `\X` as a regular-expression escape, so in `!*\Do*` the `\D` is "any
/// non-digit" and matches a `/`: the exception re-includes `a/otke`. strata matched it the same
/// way, but `dir_may_have_inclusions("a")` judged the exception one path component at a
/// time and said no, so a context walk would have skipped the re-included file.
#[test]
fn regression_fuzz_dockerignore_escape_class_crosses_slash() {
    let ig = DockerIgnore::parse("*\n!*\\Do*\n").unwrap();
    assert!(!ig.is_excluded("\u{97}rcg/otke"));
    assert!(ig.is_excluded("\u{97}rcg"));
    assert!(ig.dir_may_have_inclusions("\u{97}rcg"));
    // The same for a bracket that matches a `/`.
    let ig = DockerIgnore::parse("*\n!a[^x]b\n").unwrap();
    assert!(!ig.is_excluded("a/b"));
    assert!(ig.dir_may_have_inclusions("a"));
    // An escaped punctuation character stays literal: no walk into unrelated directories.
    let ig = DockerIgnore::parse("*\n!keep\\*\n").unwrap();
    assert!(!ig.dir_may_have_inclusions("other"));
}
