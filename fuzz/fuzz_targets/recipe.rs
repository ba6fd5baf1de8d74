//! The recipe parser, stage formation and expansion, and the build checks.
//!
//! Input: `HEADER\0DOCKERFILE`, or just `DOCKERFILE` (no NUL). Each header line is `K=V` (a
//! build arg) or `@TARGET` (the stage to plan for). Asserts, beyond "no panic, no hang":
//! `parse` succeeding implies `parse_ast` succeeds and agrees with it; parsing is
//! deterministic; every span lies inside the text; a plan's order is duplicate-free, ends with
//! its target, and names only stages that exist and have their dependencies recorded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_recipe::check::{self, CheckOptions};
use strata_recipe::{parse, parse_ast, BuildArgs, Span};

fn span_inside(span: Span, lines: usize) {
    // Span::default() (0:0) marks "no position" (e.g. NoStages).
    assert!(span.line <= lines + 1, "span {span} past the end ({lines} lines)");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (header, src) = match text.split_once('\0') {
        Some((h, s)) => (h, s),
        None => ("TAG=1.0\nbuildno=7", text),
    };
    let mut args = BuildArgs::new();
    let mut target = None;
    for line in header.lines() {
        if let Some(t) = line.strip_prefix('@') {
            target = Some(t);
        } else if let Some((k, v)) = line.split_once('=') {
            args.set(k, v);
        }
    }
    let lines = src.lines().count();

    let ast = parse_ast(src);
    if let Err(e) = &ast {
        span_inside(e.span, lines);
        assert!(!e.to_string().is_empty());
    }
    let recipe = match parse(src) {
        Ok(r) => r,
        Err(e) => {
            span_inside(e.span, lines);
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let ast = ast.expect("parse succeeded but parse_ast failed");
    assert_eq!(&ast, recipe.ast(), "parse and parse_ast disagree");
    assert_eq!(parse(src).ok().as_ref(), Some(&recipe), "parsing is not deterministic");
    for step in recipe.steps() {
        span_inside(step.span, lines);
    }

    if let Ok(stages) = recipe.stages(&args) {
        assert!(!stages.is_empty());
        for (i, stage) in stages.iter().enumerate() {
            assert_eq!(stage.index, i);
            span_inside(stage.span, lines);
            let _ = stage.expand(&[("PATH".into(), "/bin".into())], &args, recipe.escape());
            let _ = stage.dependencies(&stages, &args, recipe.escape());
        }
    }
    for t in [target, None] {
        let Ok(plan) = recipe.plan(&args, t) else { continue };
        assert_eq!(plan.order.last(), Some(&plan.target), "plan does not end with its target");
        let mut seen = std::collections::BTreeSet::new();
        for i in &plan.order {
            assert!(*i < plan.stages.len(), "plan names stage {i} of {}", plan.stages.len());
            assert!(seen.insert(*i), "stage {i} twice in the plan");
            let deps = plan.dependencies.get(i).expect("a planned stage without dependencies");
            assert!(deps.iter().all(|d| *d < plan.stages.len()));
        }
        let _ = plan.expand_all(&args, recipe.escape(), &|_| vec![("HOME".into(), "/".into())]);
    }
    let opts =
        CheckOptions { build_args: args, target: target.map(str::to_owned), ..Default::default() };
    if let Ok(report) = check::run(&recipe, &opts) {
        for w in &report.warnings {
            span_inside(w.span, lines);
        }
    }
});
