//! Build checks around a build: warnings are reported as events before any step, a recipe
//! with `# check=error=true` and a warning fails before anything is built, and
//! `strata_build::check` lints without building, knowing the environment of stored bases.

mod common;

use common::{can_run, env};
use strata_build::{BuildError, BuildEvent, BuildOptions};

fn check_events(events: &[BuildEvent]) -> Vec<(String, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::CheckWarning { rule, line, .. } => Some((rule.clone(), *line)),
            _ => None,
        })
        .collect()
}

#[test]
fn build_reports_check_warnings_before_its_steps_and_builds() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx =
        e.context("ctx", &[("a", "A"), ("Dockerfile", "FROM scratch\nCOPY a /a\nCMD echo hi\n")]);
    let (r, events) = e.build_with(&BuildOptions::new(&ctx));
    r.unwrap();
    assert_eq!(check_events(&events), [("JSONArgsRecommended".to_string(), 3)]);
    let first_step = events.iter().position(|e| matches!(e, BuildEvent::StepStart { .. }));
    let warning = events.iter().position(|e| matches!(e, BuildEvent::CheckWarning { .. }));
    assert!(warning < first_step, "warnings come before the build runs");
}

#[test]
fn check_error_true_fails_the_build_before_any_step() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "# check=error=true\nFROM scratch\nCOPY a /a\nCMD echo hi\nMAINTAINER me\n";
    let ctx = e.context("ctx", &[("a", "A"), ("Dockerfile", recipe)]);
    let before = e.store.list_blobs().unwrap();
    let (r, events) = e.build_with(&BuildOptions::new(&ctx));
    match r {
        Err(BuildError::CheckFailed { rules }) => {
            assert_eq!(rules, ["JSONArgsRecommended", "MaintainerDeprecated"])
        }
        other => panic!("expected CheckFailed, got {other:?}"),
    }
    assert_eq!(check_events(&events).len(), 2);
    assert!(!events.iter().any(|e| matches!(e, BuildEvent::StepStart { .. })));
    assert_eq!(e.store.list_blobs().unwrap(), before, "nothing written");
}

/// A build lints only the stages it builds; `check` without a target lints them all.
#[test]
fn build_checks_only_the_stages_it_builds() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM scratch AS unused\nCMD echo unused\nFROM scratch\nCOPY a /a\n";
    let ctx = e.context("ctx", &[("a", "A"), ("Dockerfile", recipe)]);
    let (r, events) = e.build_with(&BuildOptions::new(&ctx));
    r.unwrap();
    assert!(check_events(&events).is_empty());
    let report = strata_build::check(Some(&e.store), &BuildOptions::new(&ctx)).unwrap();
    assert_eq!(report.rules_violated(), ["JSONArgsRecommended"]);
}

/// `UndefinedVar` knows a stored base image's environment (here `PATH`), and does not guess
/// about a base the store lacks.
#[test]
fn check_knows_the_environment_of_stored_bases() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nENV A=$PATH B=$NOPE\nFROM elsewhere:1\nENV C=$NOPE\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let report = strata_build::check(Some(&e.store), &BuildOptions::new(&ctx)).unwrap();
    let found: Vec<(&str, usize, &str)> =
        report.warnings.iter().map(|w| (w.rule, w.span.line, w.message.as_str())).collect();
    assert_eq!(found, [("UndefinedVar", 2, "Usage of undefined variable '$NOPE'")]);
    let without_store = strata_build::check(None, &BuildOptions::new(&ctx)).unwrap();
    assert!(without_store.warnings.is_empty());
}

/// The context's `.dockerignore` reaches `CopyIgnoredFile`.
#[test]
fn check_reads_the_dockerignore_of_the_context() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join(".dockerignore"), "secret.txt\n").unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY secret.txt /\n").unwrap();
    let report = strata_build::check(None, &BuildOptions::new(ctx.path())).unwrap();
    assert_eq!(report.rules_violated(), ["CopyIgnoredFile"]);
}

/// Issue 15 point 5: a `--build-arg PASSWORD=...` for `ARG PASSWORD` ends up in the image's
/// history (as in BuildKit); the build says so before it runs (BuildKit's rule).
#[test]
fn a_secret_looking_build_arg_is_warned_about() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nARG DB_PASSWORD\nRUN test -n \"$DB_PASSWORD\"\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let mut opts = BuildOptions::new(&ctx);
    opts.build_args = [("DB_PASSWORD", "hunter2")].into_iter().collect();
    let (r, events) = e.build_with(&opts);
    r.unwrap();
    assert_eq!(check_events(&events), [("SecretsUsedInArgOrEnv".to_string(), 2)]);
}
