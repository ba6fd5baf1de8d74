//! `strata check` and `strata build --check` end to end: exit codes, the text report, the
//! JSON shape, the `# check=` directive, and that `--check` builds nothing.

use std::path::Path;
use std::process::{Command, Output};

fn strata(args: &[&str], cwd: &Path, store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .arg("--store")
        .arg(store)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// A context directory holding `files`, and a store path that does not exist yet.
fn context(files: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let store = dir.path().join("store");
    (dir, store)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn clean_recipe_exits_0() {
    let (dir, store) = context(&[("Dockerfile", "FROM alpine\nCMD [\"sh\"]\n")]);
    let out = strata(&["check"], dir.path(), &store);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), "Check complete, no warnings found.\n");
    assert!(!store.exists(), "checking creates no store");
}

#[test]
fn warnings_exit_1_with_rule_page_and_the_line_at_fault() {
    let (dir, store) =
        context(&[("Dockerfile", "FROM alpine AS Build\nMAINTAINER me\nCMD echo hi\n")]);
    let out = strata(&["check", "."], dir.path(), &store);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(
            "WARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n\
             JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n"
        ),
        "{text}"
    );
    assert!(text.contains("   3 | >>> CMD echo hi\n"), "{text}");
    assert!(text.contains("WARNING: StageNameCasing"), "{text}");
    assert!(text.contains("WARNING: MaintainerDeprecated"), "{text}");
    assert!(text.ends_with("Check complete, 3 warnings have been found!\n"), "{text}");
}

#[test]
fn json_output_has_the_documented_shape() {
    let (dir, store) = context(&[("Containerfile", "FROM alpine\nENV name value\n")]);
    let out = strata(&["check", "--json"], dir.path(), &store);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    assert!(doc["file"].as_str().unwrap().ends_with("Containerfile"));
    assert_eq!(
        doc["warnings"],
        serde_json::json!([{
            "rule": "LegacyKeyValueFormat",
            "description": "Legacy key/value format with whitespace separator should not be used",
            "url": "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
            "message": "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format",
            "line": 2,
            "column": 1
        }])
    );
    let (dir, store) = context(&[("Dockerfile", "FROM alpine\n")]);
    let out = strata(&["check", "--json"], dir.path(), &store);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["warnings"], serde_json::json!([]));
}

#[test]
fn directive_and_build_arg_decide_what_runs() {
    let body = "FROM alpine\nMAINTAINER me\nCMD echo\n";
    let (dir, store) = context(&[(
        "Dockerfile",
        &format!("# check=skip=JSONArgsRecommended,MaintainerDeprecated\n{body}"),
    )]);
    assert_eq!(strata(&["check"], dir.path(), &store).status.code(), Some(0));
    let (dir, store) = context(&[("Dockerfile", body)]);
    let out = strata(
        &["check", "--json", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=MaintainerDeprecated"],
        dir.path(),
        &store,
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(doc["warnings"][0]["rule"], "JSONArgsRecommended");
    let (dir, store) = context(&[("Dockerfile", &format!("# check=error=true\n{body}"))]);
    let out = strata(&["check"], dir.path(), &store);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(
        "check=error=true: a build fails with lint violation found for rules: JSONArgsRecommended, MaintainerDeprecated"
    ));
}

#[test]
fn malformed_directive_is_an_error_naming_the_line() {
    let (dir, store) = context(&[("Dockerfile", "# check=skip\nFROM alpine\n")]);
    let out = strata(&["check"], dir.path(), &store);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid parser directive `check`: invalid check option \"skip\""),
        "{err}"
    );
    assert!(err.contains("Dockerfile:1:1"), "{err}");
}

#[test]
fn dockerignore_and_target_reach_the_checks() {
    let recipe = "FROM scratch AS one\nCOPY secret.txt /\nFROM scratch AS two\nCMD echo\n";
    let (dir, store) = context(&[("Dockerfile", recipe), (".dockerignore", "secret.txt\n")]);
    let rules = |args: &[&str]| -> Vec<String> {
        let out = strata(args, dir.path(), &store);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["warnings"].as_array().unwrap().iter().map(|w| w["rule"].to_string()).collect()
    };
    assert_eq!(rules(&["check", "--json"]), ["\"CopyIgnoredFile\"", "\"JSONArgsRecommended\""]);
    assert_eq!(rules(&["check", "--json", "--target", "one"]), ["\"CopyIgnoredFile\""]);
}

#[test]
fn build_check_reports_and_builds_nothing() {
    let (dir, store) =
        context(&[("Dockerfile", "FROM scratch\nCOPY a /a\nCMD echo\n"), ("a", "A")]);
    let out = strata(&["build", "--check", "-t", "x:1", "."], dir.path(), &store);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("WARNING: JSONArgsRecommended"), "{text}");
    assert!(text.ends_with("Check complete, 1 warning has been found!\n"), "{text}");
    assert!(!store.exists(), "--check builds nothing");

    let (dir, store) = context(&[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "A")]);
    let out = strata(&["build", "--check", "."], dir.path(), &store);
    assert_eq!(out.status.code(), Some(0));
    assert!(!store.exists());
}

/// A normal build prints the warnings and builds; with `# check=error=true` it fails first,
/// exit 1, naming the rules (BuildKit's message).
#[test]
fn build_warns_or_fails_as_the_directive_says() {
    let (dir, store) =
        context(&[("Dockerfile", "FROM scratch\nCOPY a /a\nCMD echo\n"), ("a", "A")]);
    let out = strata(&["build", "--progress", "plain", "-t", "x:1", "."], dir.path(), &store);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("WARNING: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 3)"),
        "{err}"
    );

    let recipe = "# check=error=true\nFROM scratch\nCOPY a /a\nCMD echo\n";
    let (dir, store) = context(&[("Dockerfile", recipe), ("a", "A")]);
    let out = strata(&["build", "--progress", "plain", "-t", "x:1", "."], dir.path(), &store);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lint violation found for rules: JSONArgsRecommended"), "{err}");
    let images = strata(&["images"], dir.path(), &store);
    assert!(!String::from_utf8_lossy(&images.stdout).contains("x "), "nothing tagged");
}
