//! `strata parse` end to end: exit codes, diagnostics, JSON shape, Dockerfile discovery.

use std::path::Path;
use std::process::{Command, Output};

fn strata(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).current_dir(cwd).output().unwrap()
}

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn plans_the_lamp_example() {
    let out = strata(&["parse", "examples/lamp"], workspace());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("stage 0 FROM lamp-base:latest (target)"), "{text}");
    assert!(text.contains("COPY app/ /var/www/html/"), "{text}");
}

#[test]
fn parse_error_exits_1_with_caret_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM busybox\nRUN true\nFORM x\n").unwrap();
    let out = strata(&["parse"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown instruction: FORM"), "{err}");
    assert!(err.contains("Dockerfile:3:1"), "{err}");
    assert!(err.contains("3 | FORM x\n  | ^^^^"), "{err}");
}

#[test]
fn containerfile_is_found_when_no_dockerfile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Containerfile"), "FROM scratch\nENV a=b\n").unwrap();
    let out = strata(&["parse", "--json", "."], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    assert!(doc["file"].as_str().unwrap().ends_with("Containerfile"));
    assert_eq!(doc["stages"][0]["base"], "scratch");
    let step = &doc["stages"][0]["steps"][0];
    assert_eq!(step["line"], 2);
    assert_eq!(step["instruction"]["instruction"], "ENV");
    assert_eq!(step["instruction"]["args"][0]["value"], "b");
}

#[test]
fn build_args_and_target_shape_the_plan() {
    let out = strata(
        &[
            "parse",
            "--json",
            "--build-arg",
            "VERSION=9.9",
            "--target",
            "base",
            "testdata/recipes/arg-scoping",
        ],
        workspace(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["stages"][0]["base"]["image"], "alpine:9.9");
    assert_eq!(doc["target"], 0);
    assert_eq!(doc["order"], serde_json::json!([0]));
    assert_eq!(doc["stages"][1]["needed"], false);
}

#[test]
fn unknown_target_and_missing_recipe_fail() {
    let out = strata(&["parse", "--target", "nope", "testdata/recipes/arg-scoping"], workspace());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown stage `nope`"));
    let dir = tempfile::tempdir().unwrap();
    let out = strata(&["parse"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Dockerfile or Containerfile"));
}

#[test]
fn required_variable_unset_is_an_error() {
    let out = strata(&["parse", "testdata/recipes/required-var"], workspace());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REQUIRED: must be set"));
}

#[test]
fn encoding_errors_have_a_line_and_column_and_long_lines_are_elided() {
    // Issue 15 point 9: a non-UTF-8 recipe names where; a 100 kB offending line is not echoed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), b"FROM scratch\nLABEL a=\xff\xfe\n").unwrap();
    for cmd in [&["parse"][..], &["build", "--store", "s"][..]] {
        let mut args = cmd.to_vec();
        args.push(".");
        let out = strata(&args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not UTF-8") && err.contains("Dockerfile:2:9"), "{args:?}: {err}");
    }
    let long = format!("FROM scratch\nCOPY --bogus={} a b\n", "x".repeat(100_000));
    std::fs::write(dir.path().join("Dockerfile"), long).unwrap();
    let out = strata(&["parse", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.len() < 1_000, "{} bytes of error", out.stderr.len());
    assert!(String::from_utf8_lossy(&out.stderr).contains('…'));
}
